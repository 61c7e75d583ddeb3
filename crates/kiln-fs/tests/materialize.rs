mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{link, mkdir, write, write_exec};
use kiln_fs::{
    hash_host_dir, materialize_host_tree, EntryKind, Error, Filter, HostTree, TreeEntry,
};

fn sample(root: &Path) {
    write(&root.join("README"), "hello\n");
    write(&root.join("src/main.rs"), "fn main() {}\n");
    fs::set_permissions(root.join("src/main.rs"), fs::Permissions::from_mode(0o600)).unwrap();
    write_exec(&root.join("bin/run"), "#!/bin/sh\necho hi\n");
    link(&root.join("bin/latest"), "run");
    link(&root.join("abs"), "/etc/passwd");
    mkdir(&root.join("empty/nested"));
    write(&root.join(".gitignore"), "*.o\n");
    write(&root.join("x.o"), "ignored");
}

#[test]
fn round_trip_gives_the_same_digest_and_normalised_metadata() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    sample(&src);
    let tree = hash_host_dir(&src, &Filter::default()).unwrap();

    // A not-yet-existing prefix below the layer is created.
    let layer = t.path().join("layer");
    let dest = layer.join("work/src");
    materialize_host_tree(&tree, &dest).unwrap();

    let again = hash_host_dir(&dest, &Filter::default()).unwrap();
    assert_eq!(again.digest, tree.digest);
    assert!(!dest.join("x.o").exists(), "ignored file copied");

    let meta = |p: &str| fs::symlink_metadata(dest.join(p)).unwrap();
    assert_eq!(meta("README").mode() & 0o7777, 0o644);
    assert_eq!(meta("src/main.rs").mode() & 0o7777, 0o644);
    assert_eq!(meta("bin/run").mode() & 0o7777, 0o755);
    assert_eq!(meta("bin").mode() & 0o7777, 0o755);
    assert_eq!(meta("empty/nested").mode() & 0o7777, 0o755);
    assert_eq!(meta("").mode() & 0o7777, 0o755);
    assert_eq!(
        fs::read_link(dest.join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    for e in walkdir::WalkDir::new(&dest) {
        let m = e.unwrap().metadata().unwrap();
        assert_eq!(m.mtime(), 0, "mtime not reset");
        if rustix::process::geteuid().is_root() {
            assert_eq!((m.uid(), m.gid()), (0, 0));
        }
    }
    // Copies, not links to the host.
    assert_ne!(
        meta("README").ino(),
        fs::metadata(src.join("README")).unwrap().ino()
    );

    // Reproducible: a second copy is identical, metadata included.
    let dest2 = t.path().join("layer2");
    materialize_host_tree(&tree, &dest2).unwrap();
    for e in walkdir::WalkDir::new(&dest).min_depth(1) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(&dest).unwrap();
        let (a, b) = (
            e.metadata().unwrap(),
            fs::symlink_metadata(dest2.join(rel)).unwrap(),
        );
        assert_eq!(
            (a.mode(), a.uid(), a.mtime()),
            (b.mode(), b.uid(), b.mtime())
        );
    }
}

#[test]
fn file_modified_after_hashing_is_reported() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    sample(&src);
    let tree = hash_host_dir(&src, &Filter::default()).unwrap();
    // Same size, different bytes: only re-hashing can notice.
    write(&src.join("src/main.rs"), "fn mainX) {}\n");
    let err = materialize_host_tree(&tree, &t.path().join("dest")).unwrap_err();
    match &err {
        Error::Changed { path } => assert!(path.ends_with("src/main.rs"), "{err}"),
        other => panic!("expected Changed, got {other:?}"),
    }
    assert!(err.to_string().contains("src/main.rs"));
}

#[test]
fn other_changes_after_hashing_are_reported() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    sample(&src);
    let tree = hash_host_dir(&src, &Filter::default()).unwrap();

    fs::set_permissions(src.join("README"), fs::Permissions::from_mode(0o755)).unwrap();
    let err = materialize_host_tree(&tree, &t.path().join("d1")).unwrap_err();
    assert!(
        matches!(&err, Error::Changed { path } if path.ends_with("README")),
        "{err:?}"
    );
    fs::set_permissions(src.join("README"), fs::Permissions::from_mode(0o644)).unwrap();

    fs::remove_file(src.join("bin/latest")).unwrap();
    link(&src.join("bin/latest"), "elsewhere");
    let err = materialize_host_tree(&tree, &t.path().join("d2")).unwrap_err();
    assert!(
        matches!(&err, Error::Changed { path } if path.ends_with("bin/latest")),
        "{err:?}"
    );

    // A file replaced by a symlink is not followed.
    fs::remove_file(src.join("README")).unwrap();
    link(&src.join("README"), "/etc/passwd");
    let err = materialize_host_tree(&tree, &t.path().join("d3")).unwrap_err();
    assert!(
        matches!(&err, Error::Changed { path } if path.ends_with("README")),
        "{err:?}"
    );
}

#[test]
fn destination_must_be_empty() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    sample(&src);
    let tree = hash_host_dir(&src, &Filter::default()).unwrap();
    let dest = t.path().join("dest");
    write(&dest.join("stale"), "");
    let err = materialize_host_tree(&tree, &dest).unwrap_err();
    assert!(matches!(err, Error::NotEmpty { .. }), "{err:?}");
    // An existing empty directory is fine.
    let empty = t.path().join("empty");
    mkdir(&empty);
    materialize_host_tree(&tree, &empty).unwrap();
}

#[test]
fn crafted_entries_cannot_escape_the_destination() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src.join("a/x"), "x");
    let good = hash_host_dir(&src, &Filter::default()).unwrap();
    let file_kind = good.entries[1].kind.clone();

    let crafted = |entries: Vec<TreeEntry>| HostTree {
        root: good.root.clone(),
        entries,
        digest: [0; 32],
    };
    // "a" as a symlink to the outside, then a file below it.
    let via_link = crafted(vec![
        TreeEntry {
            path: "a".into(),
            kind: EntryKind::Symlink {
                target: t.path().to_path_buf(),
            },
        },
        TreeEntry {
            path: "a/x".into(),
            kind: file_kind.clone(),
        },
    ]);
    let err = materialize_host_tree(&via_link, &t.path().join("d1")).unwrap_err();
    assert!(matches!(err, Error::InvalidPath { .. }), "{err:?}");

    let dotdot = crafted(vec![TreeEntry {
        path: "../x".into(),
        kind: file_kind,
    }]);
    let err = materialize_host_tree(&dotdot, &t.path().join("d2")).unwrap_err();
    assert!(matches!(err, Error::InvalidPath { .. }), "{err:?}");
    assert!(!t.path().join("x").exists());
}

#[test]
fn linked_materialization_copies_each_content_once() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    std::fs::create_dir_all(root.join("d")).unwrap();
    std::fs::write(root.join("d/a.txt"), "same").unwrap();
    std::fs::write(root.join("d/b.txt"), "same").unwrap();
    std::fs::write(root.join("c.txt"), "other").unwrap();
    let objects = dir.path().join("objects");
    let tree = kiln_fs::hash_host_dir(&root, &kiln_fs::Filter::default()).unwrap();
    let one = dir.path().join("one");
    kiln_fs::materialize_host_tree_linked(&tree, &one, &objects).unwrap();
    assert_eq!(
        std::fs::read_dir(&objects).unwrap().count(),
        2,
        "two distinct contents"
    );
    let a = std::fs::metadata(one.join("d/a.txt")).unwrap();
    let b = std::fs::metadata(one.join("d/b.txt")).unwrap();
    assert_eq!(a.ino(), b.ino(), "identical files share one object");
    assert_eq!(a.mode() & 0o777, 0o644);
    assert_eq!(a.mtime(), 0);
    // The layer is the same tree as a plain copy would be.
    assert_eq!(
        kiln_fs::hash_host_dir(&one, &kiln_fs::Filter::default())
            .unwrap()
            .digest,
        tree.digest
    );

    // A second tree that changes one file stores one new object.
    std::fs::write(root.join("c.txt"), "changed").unwrap();
    let tree2 = kiln_fs::hash_host_dir(&root, &kiln_fs::Filter::default()).unwrap();
    let two = dir.path().join("two");
    kiln_fs::materialize_host_tree_linked(&tree2, &two, &objects).unwrap();
    assert_eq!(std::fs::read_dir(&objects).unwrap().count(), 3);
    assert_eq!(
        std::fs::metadata(two.join("d/a.txt")).unwrap().ino(),
        a.ino(),
        "unchanged content is linked, not copied"
    );
    assert_eq!(
        std::fs::read_to_string(two.join("c.txt")).unwrap(),
        "changed"
    );
}
