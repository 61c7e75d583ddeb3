#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln_fs::{set_opaque, write_whiteout};

pub fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

pub fn write_exec(path: &Path, bytes: impl AsRef<[u8]>) {
    write(path, bytes);
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

pub fn link(path: &Path, target: impl AsRef<Path>) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    symlink(target, path).unwrap();
}

pub fn mkdir(path: &Path) {
    fs::create_dir_all(path).unwrap();
}

/// Whiteouts need CAP_MKNOD and opaque dirs CAP_SYS_ADMIN; tests that build
/// layers skip (loudly) without them.
pub fn is_root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("SKIPPED: needs root (mknod whiteouts, trusted.* xattrs, mount)");
    }
    root
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    /// Topmost first.
    pub layers: Vec<PathBuf>,
    /// A host file outside the layers that symlinks in the layers point at.
    pub outside: PathBuf,
}

impl Fixture {
    pub fn view(&self) -> kiln_fs::MergedView {
        kiln_fs::MergedView::new(self.layers.clone())
    }
}

/// Three hand-built layers exercising whiteouts, opaque dirs, overrides,
/// type changes and symlinks. `expected_merged` writes the same merged
/// content as a plain host tree.
pub fn build_layers() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    let (l0, l1, l2) = (
        t.join("layers/l0"),
        t.join("layers/l1"),
        t.join("layers/l2"),
    );
    for l in [&l0, &l1, &l2] {
        mkdir(l);
    }
    // Files outside the layers that a naive resolver would read.
    let outside = t.join("layers/outside.txt");
    write(&outside, "HOST FILE OUTSIDE THE LAYERS\n");
    write(&t.join("secret.txt"), "HOST SECRET\n");

    // Bottom layer.
    write(&l2.join("etc/passwd"), "root:x:0:0:base\n");
    write(&l2.join("etc/hostname"), "base\n");
    write(&l2.join("etc/removed"), "gone\n");
    write(&l2.join("opt/app/old.txt"), "old\n");
    write(&l2.join("opt/app/sub/deep.txt"), "deep\n");
    write(&l2.join("data/keep.txt"), "keep\n");
    write(&l2.join("data/olddir/x.txt"), "x\n");
    write(&l2.join("data/kind"), "was a file\n");
    write(&l2.join("data/kind2/child.txt"), "hidden child\n");
    write_exec(&l2.join("bin/sh"), "#!/bin/sh\n");
    write(&l2.join("usr/lib/libc.so"), "libc\n");
    write(&l2.join("secret.txt"), "view secret\n");
    mkdir(&l2.join("emptydir"));

    // Middle layer.
    mkdir(&l1.join("etc"));
    write_whiteout(&l1.join("etc/removed")).unwrap();
    write(&l1.join("etc/hostname"), "middle\n");
    write(&l1.join("data/new.txt"), "new\n");
    write_whiteout(&l1.join("data/olddir")).unwrap();
    write(&l1.join("data/kind2"), "now a file\n");
    link(&l1.join("lib"), "usr/lib");
    link(&l1.join("etc/alt"), "/etc/passwd");
    write(&l1.join("opt/app/mid.txt"), "mid\n");

    // Top layer.
    mkdir(&l0.join("opt/app"));
    set_opaque(&l0.join("opt/app")).unwrap();
    write(&l0.join("opt/app/new.txt"), "new app\n");
    write(&l0.join("etc/passwd"), "root:x:0:0:top\n");
    write(&l0.join("data/kind/inner.txt"), "inner\n");
    // On the host these resolve to layers/outside.txt and layers/secret.txt.
    link(&l0.join("escape"), "../outside.txt");
    link(&l0.join("escape2"), "../../secret.txt");
    link(&l0.join("abs_escape"), &outside);
    link(&l0.join("etc/loop1"), "loop2");
    link(&l0.join("etc/loop2"), "loop1");
    link(&l0.join("usr/bin/sh"), "../../bin/sh");
    link(&l0.join("dirlink"), "opt");
    write(&l0.join(".hidden"), "h\n");

    Fixture {
        dir,
        layers: vec![l0, l1, l2],
        outside,
    }
}

/// What the merged view of `build_layers` must contain, as a host tree.
pub fn expected_merged(dest: &Path, outside: &Path) {
    mkdir(dest);
    write(&dest.join(".hidden"), "h\n");
    link(&dest.join("abs_escape"), outside);
    write_exec(&dest.join("bin/sh"), "#!/bin/sh\n");
    write(&dest.join("data/keep.txt"), "keep\n");
    write(&dest.join("data/new.txt"), "new\n");
    write(&dest.join("data/kind/inner.txt"), "inner\n");
    write(&dest.join("data/kind2"), "now a file\n");
    link(&dest.join("dirlink"), "opt");
    mkdir(&dest.join("emptydir"));
    link(&dest.join("escape"), "../outside.txt");
    link(&dest.join("escape2"), "../../secret.txt");
    link(&dest.join("etc/alt"), "/etc/passwd");
    write(&dest.join("etc/hostname"), "middle\n");
    link(&dest.join("etc/loop1"), "loop2");
    link(&dest.join("etc/loop2"), "loop1");
    write(&dest.join("etc/passwd"), "root:x:0:0:top\n");
    link(&dest.join("lib"), "usr/lib");
    write(&dest.join("opt/app/new.txt"), "new app\n");
    write(&dest.join("secret.txt"), "view secret\n");
    link(&dest.join("usr/bin/sh"), "../../bin/sh");
    write(&dest.join("usr/lib/libc.so"), "libc\n");
}

pub const EXPECTED_PATHS: &[&str] = &[
    ".hidden",
    "abs_escape",
    "bin",
    "bin/sh",
    "data",
    "data/keep.txt",
    "data/kind",
    "data/kind/inner.txt",
    "data/kind2",
    "data/new.txt",
    "dirlink",
    "emptydir",
    "escape",
    "escape2",
    "etc",
    "etc/alt",
    "etc/hostname",
    "etc/loop1",
    "etc/loop2",
    "etc/passwd",
    "lib",
    "opt",
    "opt/app",
    "opt/app/new.txt",
    "secret.txt",
    "usr",
    "usr/bin",
    "usr/bin/sh",
    "usr/lib",
    "usr/lib/libc.so",
];
