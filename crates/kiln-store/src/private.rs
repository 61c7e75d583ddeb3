//! Directories that only their owner may enter.
//!
//! Everything kiln keeps under a store, a runner's work directory or the
//! tmpfs bundle area may hold setuid binaries from images, copies of private
//! host files and secret files mounted into steps. Other local users must not
//! be able to reach any of it, so each such root is 0700 from the moment it
//! exists (created with that mode, never chmod-ed after the fact) and is
//! repaired when an older kiln left it open.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// Creates `path` (and any missing parents, with default modes) so that the
/// last component is mode 0700 from its creation; an existing directory is
/// checked and its mode repaired.
///
/// Refuses a path that is a symlink or a non-directory, or that another user
/// owns: in a world-writable parent such as `/dev/shm`, another user could
/// have created it first to watch or swap what kiln puts inside.
pub fn ensure_private_dir(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).ctx("create directory", parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).ctx("create directory", path),
    }
    let meta = fs::symlink_metadata(path).ctx("inspect directory", path)?;
    if !meta.is_dir() {
        return Err(Error::Unsafe {
            path: path.to_owned(),
            why: "it is not a directory (a symlink or a file is in the way)".into(),
        });
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(Error::Unsafe {
            path: path.to_owned(),
            why: format!(
                "it is owned by uid {}, not by uid {me} running kiln; remove it or choose another location",
                meta.uid()
            ),
        });
    }
    if meta.mode() & 0o7777 != 0o700 {
        tracing::info!(path = %path.display(), mode = format!("{:o}", meta.mode() & 0o7777), "closing directory to other users (mode 0700)");
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .ctx("set permissions on", path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn created_closed_and_repaired_when_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/store");
        ensure_private_dir(&path).unwrap();
        assert_eq!(mode(&path), 0o700);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&path).unwrap();
        assert_eq!(mode(&path), 0o700);
    }

    #[test]
    fn a_symlink_or_file_in_the_way_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        fs::create_dir(&target).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = ensure_private_dir(&link).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        let file = dir.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(ensure_private_dir(&file).is_err());
    }

    #[test]
    fn a_directory_another_user_owns_is_refused() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root to chown");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("planted");
        fs::create_dir(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        let err = ensure_private_dir(&path).unwrap_err().to_string();
        assert!(err.contains("owned by uid 65534"), "{err}");
    }
}
