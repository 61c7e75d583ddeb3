//! Resolving container paths against a root filesystem seen from the host.
//!
//! Anything kiln reads or creates inside a rootfs before the container runs
//! (`/etc/passwd`, the working directory, mount targets) must be looked up the
//! way the runtime will see it: symlinks in the image are interpreted relative
//! to the container's root, never the host's. An image whose `/etc/passwd` is
//! a symlink to `/etc/passwd` would otherwise make kiln read the host's file.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Linux's own limit on symlinks followed during one lookup.
const MAX_SYMLINKS: usize = 40;

/// Resolves `path` (a container path, absolute or not) inside `root` the way
/// the runtime's secure-join does: every symlink is followed relative to
/// `root`, and `..` never climbs above it. Components that do not exist are
/// kept verbatim, so the result names where a missing path *would* be created.
///
/// Returns the resolved path relative to `root` (empty for the root itself);
/// none of its components is a symlink at the time of the call.
pub(crate) fn resolve_in_root(root: &Path, path: &str) -> io::Result<PathBuf> {
    let mut pending: VecDeque<OsString> = components(Path::new(path));
    let mut resolved: Vec<OsString> = Vec::new();
    let mut followed = 0usize;
    while let Some(component) = pending.pop_front() {
        if component == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&component);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(io::Error::other(format!(
                        "too many levels of symbolic links resolving {path} in the container"
                    )));
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                let mut expanded = components(&target);
                expanded.extend(pending);
                pending = expanded;
            }
            // Missing (or not a directory): the rest of the path is taken
            // literally, as the runtime's MkdirAll would.
            _ => resolved.push(component),
        }
    }
    Ok(resolved.iter().collect())
}

fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Reads a file of the container image (e.g. `/etc/passwd`) through `root`.
/// `Ok(None)` when it does not exist.
pub(crate) fn read_container_file(root: &Path, path: &str) -> io::Result<Option<String>> {
    let rel = resolve_in_root(root, path)?;
    match std::fs::read(root.join(rel)) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every ancestor of `rel` and `rel` itself, shallowest first (`a`, `a/b`, `a/b/c`).
pub(crate) fn prefixes(rel: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut current = PathBuf::new();
    for c in rel.components() {
        current.push(c);
        out.push(current.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn follows_symlinks_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("run")).unwrap();
        std::fs::create_dir_all(root.join("var")).unwrap();
        symlink("/run", root.join("var/run")).unwrap();
        symlink("../../../../etc/shadow", root.join("escape")).unwrap();
        symlink("loop", root.join("loop")).unwrap();

        assert_eq!(
            resolve_in_root(root, "/var/run/secrets/x").unwrap(),
            PathBuf::from("run/secrets/x")
        );
        // `..` is clamped at the container root, like the kernel's chroot.
        assert_eq!(
            resolve_in_root(root, "/escape").unwrap(),
            PathBuf::from("etc/shadow")
        );
        assert_eq!(
            resolve_in_root(root, "/a/../../b/./c").unwrap(),
            PathBuf::from("b/c")
        );
        assert_eq!(resolve_in_root(root, "/").unwrap(), PathBuf::new());
        assert!(resolve_in_root(root, "/loop/x").is_err());
    }

    #[test]
    fn reads_files_through_absolute_symlinks_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::write(root.join("data/passwd"), "inside").unwrap();
        // Absolute target: must land in the image, never on the host.
        symlink("/data/passwd", root.join("etc/passwd")).unwrap();
        assert_eq!(
            read_container_file(root, "/etc/passwd").unwrap().as_deref(),
            Some("inside")
        );
        assert_eq!(read_container_file(root, "/etc/group").unwrap(), None);
    }

    #[test]
    fn prefixes_are_shallowest_first() {
        assert_eq!(
            prefixes(Path::new("a/b/c")),
            vec![
                PathBuf::from("a"),
                PathBuf::from("a/b"),
                PathBuf::from("a/b/c")
            ]
        );
        assert!(prefixes(Path::new("")).is_empty());
    }
}
