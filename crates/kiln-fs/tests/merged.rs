mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{build_layers, expected_merged, is_root, mkdir, write, EXPECTED_PATHS};
use kiln_fs::{hash_host_dir, is_opaque, is_whiteout, Error, Filter, MergedView};

fn p(s: &str) -> &Path {
    Path::new(s)
}

#[test]
fn layer_markers_round_trip() {
    if !is_root() {
        return;
    }
    let f = build_layers();
    let [l0, l1, l2] = [&f.layers[0], &f.layers[1], &f.layers[2]];
    assert!(is_whiteout(
        &fs::symlink_metadata(l1.join("etc/removed")).unwrap()
    ));
    assert!(!is_whiteout(
        &fs::symlink_metadata(l2.join("etc/removed")).unwrap()
    ));
    assert!(is_opaque(&l0.join("opt/app")).unwrap());
    assert!(!is_opaque(&l2.join("opt/app")).unwrap());
    // A symlink is not followed to its target's xattrs.
    assert!(!is_opaque(&l0.join("dirlink")).unwrap());
}

#[test]
fn lookup_follows_overlay_rules() {
    if !is_root() {
        return;
    }
    let f = build_layers();
    let v = f.view();
    let loc = |s: &str| v.lookup(p(s)).unwrap();

    // Overridden in the top layer.
    let passwd = loc("/etc/passwd").unwrap();
    assert_eq!(passwd.layer_index, 0);
    assert_eq!(passwd.host_path, f.layers[0].join("etc/passwd"));
    assert!(passwd.metadata.is_file());
    // Overridden in the middle layer.
    assert_eq!(loc("/etc/hostname").unwrap().layer_index, 1);
    // Only in the bottom layer.
    assert_eq!(loc("/data/keep.txt").unwrap().layer_index, 2);
    // Whited out: a file, and a whole directory.
    assert!(loc("/etc/removed").is_none());
    assert!(loc("/data/olddir").is_none());
    assert!(loc("/data/olddir/x.txt").is_none());
    // Hidden by an opaque directory, from both layers below it.
    assert!(loc("/opt/app/old.txt").is_none());
    assert!(loc("/opt/app/mid.txt").is_none());
    assert!(loc("/opt/app/sub").is_none());
    assert_eq!(loc("/opt/app/new.txt").unwrap().layer_index, 0);
    // Type changes: an upper dir hides a lower file, an upper file a lower dir.
    assert!(loc("/data/kind").unwrap().metadata.is_dir());
    assert!(loc("/data/kind2").unwrap().metadata.is_file());
    assert!(loc("/data/kind2/child.txt").is_none());
    // A merged directory reports its topmost copy.
    let etc = loc("/etc").unwrap();
    assert_eq!((etc.layer_index, etc.metadata.is_dir()), (0, true));
    let root = loc("/").unwrap();
    assert_eq!(root.host_path, f.layers[0]);
    // Absent.
    assert!(loc("/nope").is_none());
    assert!(loc("/etc/passwd/below-a-file").is_none());
}

#[test]
fn lookup_symlinks() {
    if !is_root() {
        return;
    }
    let f = build_layers();
    let v = f.view();
    let loc = |s: &str| v.lookup(p(s)).unwrap();

    // The last component is not followed.
    let alt = loc("/etc/alt").unwrap();
    assert!(alt.metadata.file_type().is_symlink());
    assert_eq!(alt.layer_index, 1);
    // Intermediate relative symlink: /lib -> usr/lib.
    let libc = loc("/lib/libc.so").unwrap();
    assert_eq!(libc.host_path, f.layers[2].join("usr/lib/libc.so"));
    // Intermediate symlink to a merged directory.
    assert_eq!(loc("/dirlink/app/new.txt").unwrap().layer_index, 0);
    assert!(loc("/dirlink/app/old.txt").is_none());
    // `..` after a symlink is taken from the symlink's target.
    assert_eq!(
        loc("/lib/../bin/sh").unwrap().host_path,
        f.layers[0].join("usr/bin/sh")
    );
    // `..` is clamped at the root, and relative paths start there.
    assert_eq!(
        loc("/../../../etc/passwd").unwrap().host_path,
        passwd_top(&f)
    );
    assert_eq!(
        loc("etc/../etc/./passwd").unwrap().host_path,
        passwd_top(&f)
    );
    // lookup_follow follows the last component too.
    assert_eq!(
        v.lookup_follow(p("/etc/alt")).unwrap().unwrap().host_path,
        passwd_top(&f)
    );
    assert_eq!(
        v.lookup_follow(p("/usr/bin/sh"))
            .unwrap()
            .unwrap()
            .host_path,
        f.layers[2].join("bin/sh")
    );
}

fn passwd_top(f: &common::Fixture) -> PathBuf {
    f.layers[0].join("etc/passwd")
}

#[test]
fn symlinks_pointing_outside_are_clamped_inside_the_view() {
    if !is_root() {
        return;
    }
    let f = build_layers();
    let v = f.view();
    // On the host each of these links resolves to a readable file outside
    // the layers.
    let host = f.layers[0].join("escape");
    assert_eq!(
        fs::read_to_string(&host).unwrap(),
        "HOST FILE OUTSIDE THE LAYERS\n"
    );
    assert_eq!(
        fs::read_to_string(f.layers[0].join("abs_escape")).unwrap(),
        "HOST FILE OUTSIDE THE LAYERS\n"
    );
    assert_eq!(
        fs::read_to_string(f.layers[0].join("escape2")).unwrap(),
        "HOST SECRET\n"
    );
    // In the view they resolve inside it.
    for link in ["/escape", "/abs_escape"] {
        let err = v.read_file(p(link)).unwrap_err();
        assert!(
            matches!(&err, Error::NotFound { path } if path == p(link)),
            "{err:?}"
        );
        assert!(v.lookup_follow(p(link)).unwrap().is_none());
    }
    assert_eq!(v.read_file(p("/escape2")).unwrap(), b"view secret\n");
    // Also as an intermediate component.
    mkdir(&f.dir.path().join("layers/outdir"));
    write(&f.dir.path().join("layers/outdir/f"), "outside dir\n");
    assert!(v.lookup(p("/escape/../outdir/f")).unwrap().is_none());
}

#[test]
fn read_file_cases() {
    if !is_root() {
        return;
    }
    let f = build_layers();
    let v = f.view();
    assert_eq!(v.read_file(p("/etc/passwd")).unwrap(), b"root:x:0:0:top\n");
    assert_eq!(v.read_file(p("/etc/hostname")).unwrap(), b"middle\n");
    assert_eq!(v.read_file(p("/etc/alt")).unwrap(), b"root:x:0:0:top\n");
    assert_eq!(v.read_file(p("/usr/bin/sh")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(v.read_file(p("/lib/libc.so")).unwrap(), b"libc\n");

    let err = v.read_file(p("/etc/removed")).unwrap_err();
    assert!(matches!(&err, Error::NotFound { path } if path == p("/etc/removed")));
    assert!(err.to_string().contains("/etc/removed"), "{err}");
    let err = v.read_file(p("/etc")).unwrap_err();
    assert!(
        matches!(&err, Error::NotAFile { path } if path == p("/etc")),
        "{err:?}"
    );
    let err = v.read_file(p("/etc/loop1")).unwrap_err();
    assert!(
        matches!(&err, Error::SymlinkLoop { path } if path == p("/etc/loop1")),
        "{err:?}"
    );
}

#[test]
fn walk_lists_the_merged_tree() {
    if !is_root() {
        return;
    }
    let f = build_layers();
    let v = f.view();
    let walked = v.walk(p("/")).unwrap();
    let rels: Vec<&str> = walked.iter().map(|e| e.rel.to_str().unwrap()).collect();
    assert_eq!(rels, EXPECTED_PATHS);
    for e in &walked {
        assert!(!is_whiteout(&e.metadata), "{:?}", e.rel);
        assert_eq!(
            fs::symlink_metadata(&e.source).unwrap().ino(),
            e.metadata.ino()
        );
        assert_eq!(e.source, f.layers[e.layer_index].join(&e.rel));
    }

    // A subpath, reached through a symlink, lists relative to itself.
    let sub: Vec<PathBuf> = v
        .walk(p("/dirlink"))
        .unwrap()
        .into_iter()
        .map(|e| e.rel)
        .collect();
    assert_eq!(sub, [PathBuf::from("app"), "app/new.txt".into()]);

    assert!(matches!(
        v.walk(p("/etc/removed")),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        v.walk(p("/etc/passwd")),
        Err(Error::NotADirectory { .. })
    ));
}

#[test]
fn digest_equals_a_host_dir_with_the_same_content() {
    if !is_root() {
        return;
    }
    let f = build_layers();
    let v = f.view();
    let host = f.dir.path().join("expected");
    expected_merged(&host, &f.outside);
    let tree = hash_host_dir(&host, &Filter::default()).unwrap();
    let paths: Vec<&str> = tree
        .entries
        .iter()
        .map(|e| e.path.to_str().unwrap())
        .collect();
    assert_eq!(paths, EXPECTED_PATHS);
    assert_eq!(v.tree_entries(p("/")).unwrap(), tree.entries);
    assert_eq!(v.digest(p("/")).unwrap(), tree.digest);

    // Subtrees too.
    let etc = hash_host_dir(&host.join("etc"), &Filter::default()).unwrap();
    assert_eq!(v.digest(p("/etc")).unwrap(), etc.digest);
    // And a difference shows.
    fs::write(host.join("etc/hostname"), "other\n").unwrap();
    assert_ne!(
        v.digest(p("/")).unwrap(),
        hash_host_dir(&host, &Filter::default()).unwrap().digest
    );
}

#[test]
fn missing_layer_is_an_error_and_no_layers_is_empty() {
    let t = tempfile::tempdir().unwrap();
    let v = MergedView::new(vec![t.path().to_path_buf(), t.path().join("missing")]);
    let err = v.lookup(p("/x")).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    let empty = MergedView::new(vec![]);
    assert!(empty.lookup(p("/")).unwrap().is_none());
    assert!(matches!(empty.walk(p("/")), Err(Error::NotFound { .. })));
}
