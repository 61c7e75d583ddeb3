//! Removing mount-point debris from a step's upper dir.
//!
//! To mount `/proc` or a bind target such as `/run/secrets/x`, the runtime
//! creates the mount point (and missing parents) in the rootfs, which is the
//! overlay, so they land in the upper dir: the step's future layer. Creating
//! `/run/secrets` also copies the existing `/run` up. None of that was written
//! by the step's process.
//!
//! Before the runtime starts, [`StubPlan::record`] notes, for every mount
//! target, the working directory and all their ancestors (resolved inside the
//! rootfs, as the runtime resolves them), whether each already existed in the
//! upper dir and in the merged view. After the overlay is unmounted,
//! [`StubPlan::remove`] deletes, deepest first, every recorded path that is
//! new in upper and still carries no content of its own:
//!
//! * absent from the merged view before: an empty dir or empty regular file
//!   is a stub (the process cannot have written *at* a mount point, it was
//!   covered; anything it wrote *below* an ancestor makes that non-empty);
//! * present before as a directory: an empty, non-opaque copy-up with
//!   unchanged mode and owner is only a side effect of creating a stub below
//!   it. Removing it reveals the identical lower directory; at most an mtime
//!   change the process made to that directory is lost.
//!
//! Paths already in upper before the run are never touched.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::rootpath::{prefixes, resolve_in_root};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Before {
    is_dir: bool,
    mode: u32,
    uid: u32,
    gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// Relative to the rootfs / upper dir; no symlink components.
    rel: PathBuf,
    /// What the merged view held there before the run.
    merged: Option<Before>,
}

/// Paths the runtime may create in upper, recorded before it starts.
#[derive(Debug, Default, Clone)]
pub(crate) struct StubPlan {
    /// Deepest first, so children go before their parents.
    entries: Vec<Entry>,
}

impl StubPlan {
    /// Records `targets` (container paths) and their ancestors. `rootfs` is
    /// the mounted overlay, `upper` its upper dir.
    pub(crate) fn record(rootfs: &Path, upper: &Path, targets: &[String]) -> io::Result<StubPlan> {
        let mut seen: BTreeMap<PathBuf, Option<Entry>> = BTreeMap::new();
        for target in targets {
            let rel = resolve_in_root(rootfs, target)?;
            for prefix in prefixes(&rel) {
                if seen.contains_key(&prefix) {
                    continue;
                }
                let entry = if exists(&upper.join(&prefix))? {
                    None
                } else {
                    let merged = match std::fs::symlink_metadata(rootfs.join(&prefix)) {
                        Ok(m) => Some(Before {
                            is_dir: m.is_dir(),
                            mode: m.permissions().mode(),
                            uid: m.uid(),
                            gid: m.gid(),
                        }),
                        Err(e) if is_absent(&e) => None,
                        Err(e) => return Err(e),
                    };
                    Some(Entry {
                        rel: prefix.clone(),
                        merged,
                    })
                };
                seen.insert(prefix, entry);
            }
        }
        let mut entries: Vec<Entry> = seen.into_values().flatten().collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.rel.components().count()));
        Ok(StubPlan { entries })
    }

    /// Deletes the debris from `upper`. The overlay must be unmounted: the
    /// upper dir is edited directly.
    pub(crate) fn remove(&self, upper: &Path) -> io::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for entry in &self.entries {
            let path = upper.join(&entry.rel);
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if is_absent(&e) => continue,
                Err(e) => return Err(with_path(e, "inspecting", &path)),
            };
            let removable = match entry.merged {
                None => {
                    (meta.is_dir() && is_empty_dir(&path)?) || (meta.is_file() && meta.len() == 0)
                }
                Some(before) => {
                    before.is_dir
                        && meta.is_dir()
                        && before.mode == meta.permissions().mode()
                        && before.uid == meta.uid()
                        && before.gid == meta.gid()
                        && is_empty_dir(&path)?
                        && !is_opaque(&path)
                }
            };
            if !removable {
                continue;
            }
            let result = if meta.is_dir() {
                std::fs::remove_dir(&path)
            } else {
                std::fs::remove_file(&path)
            };
            result.map_err(|e| with_path(e, "removing mount stub", &path))?;
            removed.push(entry.rel.clone());
        }
        Ok(removed)
    }
}

fn exists(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if is_absent(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// ENOTDIR counts as absent: a file where a parent directory was expected.
fn is_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

fn is_empty_dir(path: &Path) -> io::Result<bool> {
    let mut entries = std::fs::read_dir(path).map_err(|e| with_path(e, "listing", path))?;
    Ok(entries.next().is_none())
}

/// An opaque dir hides the lower one; removing it would resurrect content.
fn is_opaque(path: &Path) -> bool {
    let mut buf = [0u8; 8];
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|name| matches!(rustix::fs::lgetxattr(path, *name, &mut buf), Ok(n) if n > 0 && buf[0] == b'y'))
}

fn with_path(e: io::Error, action: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{action} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain directories stand in for the overlay: "merged" is what the plan
    /// records from, "upper" what it cleans.
    #[test]
    fn removes_only_untouched_stubs() {
        let dir = tempfile::tempdir().unwrap();
        let merged = dir.path().join("merged");
        let upper = dir.path().join("upper");
        for d in ["etc", "run", "data"] {
            std::fs::create_dir_all(merged.join(d)).unwrap();
        }
        std::fs::create_dir_all(upper.join("data")).unwrap();
        let plan = StubPlan::record(
            &merged,
            &upper,
            &[
                "/proc".into(),
                "/run/secrets/x".into(),
                "/etc/resolv.conf".into(),
                "/cache/deep".into(),
                "/data/mnt".into(),
                "/work".into(),
            ],
        )
        .unwrap();

        // What a runtime and a process would leave behind.
        std::fs::create_dir_all(upper.join("proc")).unwrap();
        std::fs::create_dir_all(upper.join("run/secrets")).unwrap();
        std::fs::write(upper.join("run/secrets/x"), "").unwrap();
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::write(upper.join("etc/resolv.conf"), "").unwrap();
        std::fs::write(upper.join("etc/written"), "by the process").unwrap();
        std::fs::create_dir_all(upper.join("cache/deep")).unwrap();
        std::fs::write(upper.join("cache/kept"), "by the process").unwrap();
        std::fs::create_dir_all(upper.join("data/mnt")).unwrap();
        std::fs::create_dir_all(upper.join("work")).unwrap();
        std::fs::write(upper.join("work/out"), "by the process").unwrap();
        // Matching modes make etc/run look like plain copy-ups.
        for d in ["etc", "run"] {
            let mode = std::fs::metadata(merged.join(d)).unwrap().permissions();
            std::fs::set_permissions(upper.join(d), mode).unwrap();
        }

        plan.remove(&upper).unwrap();
        let mut left: Vec<String> = walk(&upper);
        left.sort();
        assert_eq!(
            left,
            vec![
                "cache",
                "cache/kept",
                "data",
                "etc",
                "etc/written",
                "work",
                "work/out"
            ]
        );
    }

    #[test]
    fn keeps_copied_up_dirs_whose_metadata_changed() {
        let dir = tempfile::tempdir().unwrap();
        let merged = dir.path().join("merged");
        let upper = dir.path().join("upper");
        std::fs::create_dir_all(merged.join("run")).unwrap();
        std::fs::create_dir_all(&upper).unwrap();
        let plan = StubPlan::record(&merged, &upper, &["/run/x".into()]).unwrap();
        std::fs::create_dir_all(upper.join("run/x")).unwrap();
        std::fs::set_permissions(upper.join("run"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        std::fs::set_permissions(merged.join("run"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        plan.remove(&upper).unwrap();
        assert_eq!(walk(&upper), vec!["run".to_string()]);
    }

    fn walk(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(root).unwrap().display().to_string());
                if p.is_dir() {
                    stack.push(p);
                }
            }
        }
        out
    }
}
