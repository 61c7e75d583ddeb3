//! Cross-checks MergedView against the kernel's overlayfs on the same layers.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{build_layers, is_root};
use rustix::mount::{MountFlags, UnmountFlags};

/// Unmounts on drop, so a failing assertion does not leak the mount.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if rustix::mount::unmount(&self.0, UnmountFlags::empty()).is_err() {
            let _ = rustix::mount::unmount(&self.0, UnmountFlags::DETACH);
        }
    }
}

#[derive(Debug, PartialEq)]
enum Seen {
    Dir,
    File { bytes: Vec<u8>, mode: u32 },
    Symlink(PathBuf),
}

fn describe(path: &Path, meta: &fs::Metadata) -> Seen {
    let ft = meta.file_type();
    if ft.is_dir() {
        Seen::Dir
    } else if ft.is_symlink() {
        Seen::Symlink(fs::read_link(path).unwrap())
    } else {
        assert!(ft.is_file(), "{path:?}");
        Seen::File {
            bytes: fs::read(path).unwrap(),
            mode: meta.mode() & 0o7777,
        }
    }
}

#[test]
fn walk_matches_a_kernel_overlay_mount() {
    if !is_root() {
        return;
    }
    let f = build_layers();
    assert!(f.layers.len() >= 3);
    let lower: Vec<&str> = f.layers.iter().map(|l| l.to_str().unwrap()).collect();
    let target = f.dir.path().join("mnt");
    fs::create_dir(&target).unwrap();
    rustix::mount::mount(
        "overlay",
        &target,
        "overlay",
        MountFlags::RDONLY,
        format!("lowerdir={}", lower.join(":")),
    )
    .expect("mounting overlayfs");
    let _guard = Mounted(target.clone());

    let mut kernel = BTreeMap::new();
    for e in walkdir::WalkDir::new(&target)
        .min_depth(1)
        .follow_links(false)
    {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(&target).unwrap().to_path_buf();
        kernel.insert(rel, describe(e.path(), &e.metadata().unwrap()));
    }

    let view = f.view();
    let ours: BTreeMap<PathBuf, Seen> = view
        .walk(Path::new("/"))
        .unwrap()
        .into_iter()
        .map(|e| {
            let seen = describe(&e.source, &e.metadata);
            (e.rel, seen)
        })
        .collect();

    let kernel_paths: Vec<_> = kernel.keys().collect();
    let our_paths: Vec<_> = ours.keys().collect();
    assert_eq!(our_paths, kernel_paths);
    assert_eq!(ours, kernel);

    // Single-file reads through relative symlinks agree too. (Absolute ones
    // such as /etc/alt differ by design: on the host the kernel resolves
    // them against the host's root, the view against its own.)
    for p in ["lib/libc.so", "usr/bin/sh", "dirlink/app/new.txt"] {
        let ours = view.read_file(&Path::new("/").join(p)).unwrap();
        let kernel = fs::read(target.join(p)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&kernel),
            "{p}"
        );
    }
}
