mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{build_layers, is_root, write};
use filetime::FileTime;
use kiln_fs::{export_dir, export_file, hash_host_dir, is_opaque, Error, Filter, MergedView};

fn p(s: &str) -> &Path {
    Path::new(s)
}

fn digest_of(dir: &Path) -> [u8; 32] {
    hash_host_dir(dir, &Filter::default()).unwrap().digest
}

#[test]
fn link_into_hardlinks_files_and_recreates_the_rest() {
    if !is_root() {
        return;
    }
    let f = build_layers();
    let l0 = &f.layers[0];
    // Metadata that must survive.
    fs::set_permissions(l0.join("opt"), fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::lchown(l0.join("opt"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(l0.join("dirlink"), Some(42), Some(43)).unwrap();
    let old = FileTime::from_unix_time(1_500_000_000, 0);
    filetime::set_symlink_file_times(l0.join("dirlink"), old, old).unwrap();
    filetime::set_file_times(l0.join("opt"), old, old).unwrap();

    let v = f.view();
    let dest = f.dir.path().join("newlayer/rootfs");
    v.link_into(p("/"), &dest).unwrap();

    assert_eq!(digest_of(&dest), v.digest(p("/")).unwrap());
    for e in v.walk(p("/")).unwrap() {
        let got = fs::symlink_metadata(dest.join(&e.rel)).unwrap();
        let src = &e.metadata;
        assert_eq!(got.file_type(), src.file_type(), "{:?}", e.rel);
        assert_eq!(got.mode(), src.mode(), "{:?}", e.rel);
        assert_eq!(
            (got.uid(), got.gid()),
            (src.uid(), src.gid()),
            "{:?}",
            e.rel
        );
        assert_eq!(got.mtime(), src.mtime(), "{:?}", e.rel);
        if src.is_file() {
            assert_eq!(got.ino(), src.ino(), "{:?} not hardlinked", e.rel);
            assert_eq!(
                fs::read(dest.join(&e.rel)).unwrap(),
                fs::read(&e.source).unwrap()
            );
        } else {
            assert_ne!(got.ino(), src.ino());
        }
    }
    let opt = fs::metadata(dest.join("opt")).unwrap();
    assert_eq!(
        (opt.mode() & 0o7777, opt.uid(), opt.gid()),
        (0o750, 1234, 5678)
    );
    assert_eq!(opt.mtime(), 1_500_000_000);
    // No overlay markers in the plain result.
    assert!(!is_opaque(&dest.join("opt/app")).unwrap());
    assert!(!dest.join("etc/removed").exists());
    assert!(fs::symlink_metadata(dest.join("etc/removed")).is_err());
    assert!(!dest.join("opt/app/old.txt").exists());
    // The layers were not touched by the hardlinking.
    assert_eq!(fs::metadata(l0.join("opt")).unwrap().mtime(), 1_500_000_000);
}

#[test]
fn link_into_a_subpath() {
    if !is_root() {
        return;
    }
    let f = build_layers();
    let v = f.view();
    let dest = f.dir.path().join("sub");
    v.link_into(p("/etc"), &dest).unwrap();
    assert_eq!(digest_of(&dest), v.digest(p("/etc")).unwrap());
    assert_eq!(
        fs::symlink_metadata(dest).unwrap().mode(),
        v.lookup(p("/etc")).unwrap().unwrap().metadata.mode()
    );
}

#[test]
fn link_into_copies_across_filesystems() {
    if !is_root() {
        return;
    }
    // /dev/shm is a tmpfs: linking from the ext4 layers fails with EXDEV.
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("SKIPPED: no /dev/shm");
        return;
    }
    let f = build_layers();
    let v = f.view();
    let t = tempfile::tempdir_in(shm).unwrap();
    let dest = t.path().join("rootfs");
    v.link_into(p("/"), &dest).unwrap();
    assert_eq!(digest_of(&dest), v.digest(p("/")).unwrap());
    let src = v.lookup(p("/bin/sh")).unwrap().unwrap().metadata;
    let got = fs::metadata(dest.join("bin/sh")).unwrap();
    assert_ne!(got.dev(), src.dev());
    assert_eq!((got.mode(), got.mtime()), (src.mode(), src.mtime()));
}

#[test]
fn export_dir_copies_and_replaces_atomically() {
    let t = tempfile::tempdir().unwrap();
    let (upper, lower) = (t.path().join("upper"), t.path().join("lower"));
    write(&lower.join("a.txt"), "lower a\n");
    write(&lower.join("dir/b.txt"), "b\n");
    write(&upper.join("a.txt"), "upper a\n");
    fs::set_permissions(upper.join("a.txt"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::symlink("dir/b.txt", upper.join("link")).unwrap();
    let v = MergedView::new(vec![upper.clone(), lower.clone()]);

    // Into a fresh path, creating parents.
    let dest = t.path().join("host/out");
    export_dir(&v, p("/"), &dest).unwrap();
    assert_eq!(digest_of(&dest), v.digest(p("/")).unwrap());
    let a = fs::metadata(dest.join("a.txt")).unwrap();
    assert_ne!(a.ino(), fs::metadata(upper.join("a.txt")).unwrap().ino());
    assert_eq!(a.nlink(), 1);
    // setuid is dropped, the rest of the mode kept.
    assert_eq!(a.mode() & 0o7777, 0o755);
    assert_eq!(fs::read_link(dest.join("link")).unwrap(), p("dir/b.txt"));

    // Over an existing non-empty directory.
    write(&dest.join("stale.txt"), "old\n");
    write(&dest.join("dir/stale.txt"), "old\n");
    fs::write(upper.join("a.txt"), "upper a v2\n").unwrap();
    export_dir(&v, p("/"), &dest).unwrap();
    assert!(!dest.join("stale.txt").exists());
    assert!(!dest.join("dir/stale.txt").exists());
    assert_eq!(
        fs::read_to_string(dest.join("a.txt")).unwrap(),
        "upper a v2\n"
    );
    assert_eq!(digest_of(&dest), v.digest(p("/")).unwrap());
    // Nothing left beside it.
    let names: Vec<_> = fs::read_dir(t.path().join("host"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["out"]);

    // Over an existing file, and of a subpath.
    let file_dest = t.path().join("host/file");
    fs::write(&file_dest, "a file").unwrap();
    export_dir(&v, p("/dir"), &file_dest).unwrap();
    assert_eq!(fs::read_to_string(file_dest.join("b.txt")).unwrap(), "b\n");

    // Errors leave the destination alone.
    assert!(matches!(
        export_dir(&v, p("/missing"), &dest),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        export_dir(&v, p("/a.txt"), &dest),
        Err(Error::NotADirectory { .. })
    ));
    assert_eq!(digest_of(&dest), v.digest(p("/")).unwrap());
}

#[test]
fn export_dir_of_read_only_dirs_can_be_replaced() {
    let t = tempfile::tempdir().unwrap();
    let layer = t.path().join("layer");
    write(&layer.join("ro/f"), "f");
    fs::set_permissions(layer.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    let v = MergedView::new(vec![layer]);
    let dest = t.path().join("out");
    export_dir(&v, p("/"), &dest).unwrap();
    assert_eq!(fs::metadata(dest.join("ro")).unwrap().mode() & 0o777, 0o555);
    export_dir(&v, p("/"), &dest).unwrap();
    assert_eq!(fs::read_to_string(dest.join("ro/f")).unwrap(), "f");
    assert_eq!(fs::read_dir(t.path()).unwrap().count(), 2);
}

#[test]
fn export_file_writes_atomically() {
    let t = tempfile::tempdir().unwrap();
    let layer = t.path().join("layer");
    write(&layer.join("bin/tool"), "#!/bin/sh\n");
    fs::set_permissions(layer.join("bin/tool"), fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("/bin/tool", layer.join("tool-link")).unwrap();
    let v = MergedView::new(vec![layer.clone()]);

    let dest = t.path().join("out/tool");
    export_file(&v, p("/tool-link"), &dest).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), b"#!/bin/sh\n");
    let m = fs::metadata(&dest).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o750);
    assert_ne!(m.ino(), fs::metadata(layer.join("bin/tool")).unwrap().ino());

    fs::write(layer.join("bin/tool"), "v2").unwrap();
    export_file(&v, p("/bin/tool"), &dest).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), b"v2");
    assert_eq!(fs::read_dir(t.path().join("out")).unwrap().count(), 1);

    let err = export_file(&v, p("/bin"), &dest).unwrap_err();
    assert!(
        matches!(&err, Error::NotAFile { path } if path == p("/bin")),
        "{err:?}"
    );
    let err = export_file(&v, p("/nope"), &dest).unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { path } if path == p("/nope")),
        "{err:?}"
    );
    assert_eq!(fs::read(&dest).unwrap(), b"v2");
}

#[test]
fn exporting_an_identical_file_again_writes_nothing() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let layer = t.path().join("layer");
    std::fs::create_dir_all(&layer).unwrap();
    std::fs::write(layer.join("out.txt"), "result").unwrap();
    let view = kiln_fs::MergedView::new(vec![layer.clone()]);
    let dest = t.path().join("out.txt");
    kiln_fs::export_file(&view, std::path::Path::new("/out.txt"), &dest).unwrap();
    let first = std::fs::metadata(&dest).unwrap().ino();
    kiln_fs::export_file(&view, std::path::Path::new("/out.txt"), &dest).unwrap();
    assert_eq!(
        std::fs::metadata(&dest).unwrap().ino(),
        first,
        "identical: left alone"
    );
    std::fs::write(&dest, "edited by hand").unwrap();
    kiln_fs::export_file(&view, std::path::Path::new("/out.txt"), &dest).unwrap();
    assert_eq!(
        std::fs::read_to_string(&dest).unwrap(),
        "result",
        "different: replaced"
    );
}
