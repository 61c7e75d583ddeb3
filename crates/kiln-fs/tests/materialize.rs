mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{link, mkdir, write, write_exec};
use kiln_fs::{
    hash_host_dir, materialize_host_tree, read_host_times, EntryKind, Error, Filter, HostTimes,
    HostTree, TreeEntry,
};

fn times(tree: &HostTree) -> HostTimes {
    read_host_times(tree).unwrap()
}

/// Seconds and nanoseconds of a path's own mtime (a symlink's, not its target's).
fn mtime(path: &Path) -> (i64, i64) {
    let m = fs::symlink_metadata(path).unwrap();
    (m.mtime(), m.mtime_nsec())
}

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
fn round_trip_gives_the_same_digest_normalised_owners_and_modes_and_host_times() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    sample(&src);
    // Times a build tool would compare, each different, one before 1980
    // (zip's limit) to show kiln keeps what the host has rather than
    // inventing anything.
    let when = |secs: i64, nanos: u32| filetime::FileTime::from_unix_time(secs, nanos);
    filetime::set_file_mtime(src.join("README"), when(1_700_000_000, 123_456_789)).unwrap();
    filetime::set_file_mtime(src.join("src/main.rs"), when(1_700_000_100, 1)).unwrap();
    filetime::set_symlink_file_times(src.join("bin/latest"), when(5, 0), when(300_000_000, 7))
        .unwrap();
    filetime::set_file_mtime(src.join("empty/nested"), when(1_600_000_000, 0)).unwrap();
    let tree = hash_host_dir(&src, &Filter::default()).unwrap();
    let host_times = times(&tree);

    // A not-yet-existing prefix below the layer is created.
    let layer = t.path().join("layer");
    let dest = layer.join("work/src");
    materialize_host_tree(&tree, &host_times, &dest).unwrap();

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
    assert_eq!(mtime(&dest.join("README")), (1_700_000_000, 123_456_789));
    assert_eq!(mtime(&dest.join("src/main.rs")), (1_700_000_100, 1));
    assert_eq!(mtime(&dest.join("bin/latest")), (300_000_000, 7));
    assert_eq!(mtime(&dest.join("empty/nested")), (1_600_000_000, 0));
    // Every entry, directories included (set after their children), and
    // the root: the host's times, to the nanosecond.
    for e in walkdir::WalkDir::new(&src) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(&src).unwrap();
        if rel == Path::new("x.o") {
            continue;
        }
        assert_eq!(mtime(&dest.join(rel)), mtime(e.path()), "{rel:?}");
        if rustix::process::geteuid().is_root() {
            let m = fs::symlink_metadata(dest.join(rel)).unwrap();
            assert_eq!((m.uid(), m.gid()), (0, 0));
        }
    }
    // Copies, not links to the host.
    assert_ne!(
        meta("README").ino(),
        fs::metadata(src.join("README")).unwrap().ino()
    );

    // Reproducible: a second copy with the same times is identical,
    // metadata included.
    let dest2 = t.path().join("layer2");
    materialize_host_tree(&tree, &host_times, &dest2).unwrap();
    for e in walkdir::WalkDir::new(&dest).min_depth(1) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(&dest).unwrap();
        let (a, b) = (
            e.metadata().unwrap(),
            fs::symlink_metadata(dest2.join(rel)).unwrap(),
        );
        assert_eq!(
            (a.mode(), a.uid(), a.mtime(), a.mtime_nsec()),
            (b.mode(), b.uid(), b.mtime(), b.mtime_nsec())
        );
    }
}

#[test]
fn host_times_are_read_for_every_entry_and_digested() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    sample(&src);
    let tree = hash_host_dir(&src, &Filter::default()).unwrap();
    let first = times(&tree);
    assert_eq!(first, times(&tree), "nothing moved: the same times");
    for (i, entry) in tree.entries.iter().enumerate() {
        let (secs, nanos) = mtime(&src.join(&entry.path));
        let got = first.entry(i).unwrap();
        assert_eq!(
            (got.unix_seconds(), got.nanoseconds() as i64),
            (secs, nanos)
        );
    }
    // A touch changes the times' digest and nothing else: the tree's
    // digest, hence every key, stays.
    filetime::set_file_mtime(
        src.join("README"),
        filetime::FileTime::from_unix_time(2_000_000_000, 0),
    )
    .unwrap();
    let touched = hash_host_dir(&src, &Filter::default()).unwrap();
    assert_eq!(touched.digest, tree.digest);
    assert_ne!(times(&touched).digest, first.digest);
    // An entry gone since hashing is a change, as materializing says.
    fs::remove_file(src.join("README")).unwrap();
    let err = read_host_times(&tree).unwrap_err();
    assert!(
        matches!(&err, Error::Changed { path } if path.ends_with("README")),
        "{err:?}"
    );
}

#[test]
fn file_modified_after_hashing_is_reported() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    sample(&src);
    let tree = hash_host_dir(&src, &Filter::default()).unwrap();
    let host_times = times(&tree);
    // Same size, different bytes: only re-hashing can notice.
    write(&src.join("src/main.rs"), "fn mainX) {}\n");
    let err = materialize_host_tree(&tree, &host_times, &t.path().join("dest")).unwrap_err();
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
    let host_times = times(&tree);

    fs::set_permissions(src.join("README"), fs::Permissions::from_mode(0o755)).unwrap();
    let err = materialize_host_tree(&tree, &host_times, &t.path().join("d1")).unwrap_err();
    assert!(
        matches!(&err, Error::Changed { path } if path.ends_with("README")),
        "{err:?}"
    );
    fs::set_permissions(src.join("README"), fs::Permissions::from_mode(0o644)).unwrap();

    fs::remove_file(src.join("bin/latest")).unwrap();
    link(&src.join("bin/latest"), "elsewhere");
    let err = materialize_host_tree(&tree, &host_times, &t.path().join("d2")).unwrap_err();
    assert!(
        matches!(&err, Error::Changed { path } if path.ends_with("bin/latest")),
        "{err:?}"
    );

    // A file replaced by a symlink is not followed.
    fs::remove_file(src.join("README")).unwrap();
    link(&src.join("README"), "/etc/passwd");
    let err = materialize_host_tree(&tree, &host_times, &t.path().join("d3")).unwrap_err();
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
    let host_times = times(&tree);
    let dest = t.path().join("dest");
    write(&dest.join("stale"), "");
    let err = materialize_host_tree(&tree, &host_times, &dest).unwrap_err();
    assert!(matches!(err, Error::NotEmpty { .. }), "{err:?}");
    // An existing empty directory is fine.
    let empty = t.path().join("empty");
    mkdir(&empty);
    materialize_host_tree(&tree, &host_times, &empty).unwrap();
}

#[test]
fn crafted_entries_cannot_escape_the_destination() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src.join("a/x"), "x");
    let good = hash_host_dir(&src, &Filter::default()).unwrap();
    let file_kind = good.entries[1].kind.clone();
    // Two entries' worth of times; the crafted trees below have at most two.
    let good_times = times(&good);
    let one_time = {
        let one = hash_host_dir(&src.join("a"), &Filter::default()).unwrap();
        times(&one)
    };

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
    let err = materialize_host_tree(&via_link, &good_times, &t.path().join("d1")).unwrap_err();
    assert!(matches!(err, Error::InvalidPath { .. }), "{err:?}");

    let dotdot = crafted(vec![TreeEntry {
        path: "../x".into(),
        kind: file_kind,
    }]);
    let err = materialize_host_tree(&dotdot, &one_time, &t.path().join("d2")).unwrap_err();
    assert!(matches!(err, Error::InvalidPath { .. }), "{err:?}");
    assert!(!t.path().join("x").exists());
}

#[test]
fn linked_materialization_shares_objects_only_between_equal_content_mode_and_time() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    let at = |secs: i64| filetime::FileTime::from_unix_time(secs, 500);
    std::fs::create_dir_all(root.join("d")).unwrap();
    for (name, bytes, secs) in [
        ("d/a.txt", "same", 1_700_000_000),
        ("d/b.txt", "same", 1_700_000_000),
        // Same bytes and mode, another time: must not share a's inode, or
        // one of the two would show the other's time.
        ("d/later.txt", "same", 1_700_000_999),
        ("c.txt", "other", 1_700_000_000),
    ] {
        std::fs::write(root.join(name), bytes).unwrap();
        filetime::set_file_mtime(root.join(name), at(secs)).unwrap();
    }
    // Same bytes and time as a.txt, executable.
    std::fs::write(root.join("d/run"), "same").unwrap();
    std::fs::set_permissions(root.join("d/run"), fs::Permissions::from_mode(0o755)).unwrap();
    filetime::set_file_mtime(root.join("d/run"), at(1_700_000_000)).unwrap();

    let objects = dir.path().join("objects");
    let tree = kiln_fs::hash_host_dir(&root, &kiln_fs::Filter::default()).unwrap();
    let one = dir.path().join("one");
    kiln_fs::materialize_host_tree_linked(&tree, &times(&tree), &one, &objects).unwrap();
    assert_eq!(
        std::fs::read_dir(&objects).unwrap().count(),
        4,
        "same/644/t0, same/644/t1, same/755/t0, other/644/t0"
    );
    let ino = |layer: &Path, p: &str| std::fs::metadata(layer.join(p)).unwrap().ino();
    assert_eq!(
        ino(&one, "d/a.txt"),
        ino(&one, "d/b.txt"),
        "equal files share one object"
    );
    assert_ne!(ino(&one, "d/a.txt"), ino(&one, "d/later.txt"));
    assert_ne!(ino(&one, "d/a.txt"), ino(&one, "d/run"));
    let a = std::fs::metadata(one.join("d/a.txt")).unwrap();
    assert_eq!(a.mode() & 0o777, 0o644);
    assert_eq!((a.mtime(), a.mtime_nsec()), (1_700_000_000, 500));
    assert_eq!(mtime(&one.join("d/later.txt")), (1_700_000_999, 500));
    assert_eq!(
        std::fs::metadata(one.join("d/run")).unwrap().mode() & 0o777,
        0o755
    );
    // The layer is the same tree as a plain copy would be.
    assert_eq!(
        kiln_fs::hash_host_dir(&one, &kiln_fs::Filter::default())
            .unwrap()
            .digest,
        tree.digest
    );

    // A second tree that changes one file stores one new object; files the
    // host left alone keep their times and so their objects.
    std::fs::write(root.join("c.txt"), "changed").unwrap();
    let tree2 = kiln_fs::hash_host_dir(&root, &kiln_fs::Filter::default()).unwrap();
    let two = dir.path().join("two");
    kiln_fs::materialize_host_tree_linked(&tree2, &times(&tree2), &two, &objects).unwrap();
    assert_eq!(std::fs::read_dir(&objects).unwrap().count(), 5);
    assert_eq!(
        ino(&two, "d/a.txt"),
        a.ino(),
        "unchanged content is linked, not copied"
    );
    assert_eq!(
        std::fs::read_to_string(two.join("c.txt")).unwrap(),
        "changed"
    );
    assert_eq!(mtime(&two.join("c.txt")), mtime(&root.join("c.txt")));

    // Touching a file (same bytes, new time) gives it a new object in the
    // next layer and leaves the earlier layers' files as they were.
    filetime::set_file_mtime(root.join("d/a.txt"), at(1_800_000_000)).unwrap();
    let tree3 = kiln_fs::hash_host_dir(&root, &kiln_fs::Filter::default()).unwrap();
    assert_eq!(
        tree3.digest, tree2.digest,
        "a touch is no change of content"
    );
    let three = dir.path().join("three");
    kiln_fs::materialize_host_tree_linked(&tree3, &times(&tree3), &three, &objects).unwrap();
    assert_eq!(mtime(&three.join("d/a.txt")), (1_800_000_000, 500));
    assert_ne!(ino(&three, "d/a.txt"), a.ino());
    assert_eq!(ino(&three, "d/b.txt"), a.ino());
    assert_eq!(mtime(&one.join("d/a.txt")), (1_700_000_000, 500));
    assert_eq!(mtime(&two.join("d/a.txt")), (1_700_000_000, 500));
}
