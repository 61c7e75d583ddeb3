//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use kiln_oci::{unpack_layer, Error, UnpackStats};
use kiln_store::Store;
use kiln_testkit::{Compression, LayerBuilder};

/// A store in a fresh temporary directory.
pub fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("store")).expect("open store");
    (dir, store)
}

/// A scratch area: `base/dest` (empty, the unpack target) next to
/// `base/sentinel`, so tests can see whether anything landed outside dest.
pub struct Scratch {
    pub base: tempfile::TempDir,
    pub dest: PathBuf,
}

pub const SENTINEL: &str = "sentinel: must never change\n";

impl Scratch {
    pub fn new() -> Scratch {
        let base = tempfile::tempdir().expect("tempdir");
        let dest = base.path().join("dest");
        std::fs::create_dir(&dest).expect("create dest");
        std::fs::write(base.path().join("sentinel"), SENTINEL).expect("write sentinel");
        std::fs::create_dir(base.path().join("outside")).expect("create outside");
        Scratch { base, dest }
    }

    pub fn unpack(&self, layer: &LayerBuilder) -> Result<UnpackStats, Error> {
        unpack_layer(layer.build(Compression::None).as_slice(), &self.dest)
    }

    /// Asserts that nothing outside `dest` was created or changed.
    pub fn assert_outside_untouched(&self) {
        let mut names: Vec<_> = std::fs::read_dir(self.base.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["dest", "outside", "sentinel"],
            "something was written next to dest"
        );
        assert_eq!(
            std::fs::read_to_string(self.base.path().join("sentinel")).unwrap(),
            SENTINEL
        );
        assert_eq!(
            std::fs::read_dir(self.base.path().join("outside"))
                .unwrap()
                .count(),
            0,
            "something was written into the directory outside dest"
        );
    }
}

pub fn unpack_one(layer: &LayerBuilder) -> (Scratch, UnpackStats) {
    let scratch = Scratch::new();
    let stats = scratch.unpack(layer).expect("unpack");
    (scratch, stats)
}

pub fn is_whiteout(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

pub fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    rustix_xattr(path, name)
}

fn rustix_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = CString::new(name).ok()?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return None;
    }
    buf.truncate(len as usize);
    Some(buf)
}

/// Every path under `root`, relative, sorted.
pub fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
