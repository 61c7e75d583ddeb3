//! Atomic export of merged trees to host paths.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{RenameFlags, CWD};
use rustix::io::Errno;

use crate::error::{io_at, Error};
use crate::merged::{build_tree, CopyOpts, MergedView};
use crate::util::{atime_of, fsync_dir, mtime_of, open_nofollow, remove_tree};

/// Splits `dest` into its (existing or to-be-created) parent and file name.
fn split_dest(dest: &Path) -> Result<(PathBuf, &OsStr), Error> {
    let name = dest.file_name().ok_or_else(|| Error::InvalidPath {
        path: dest.to_path_buf(),
        reason: "export destination has no file name",
    })?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_at(&parent))?;
    Ok((parent, name))
}

fn temp_prefix(name: &OsStr) -> String {
    format!(".{}.kiln-export-", name.to_string_lossy())
}

/// Removes a temporary path on drop unless disarmed, so every early return
/// cleans up after itself.
struct Cleanup(Option<PathBuf>);

impl Cleanup {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if let Err(e) = remove_tree(&p) {
                tracing::warn!(path = %p.display(), "could not remove temporary export: {e}");
            }
        }
    }
}

/// Export a merged subtree to a host path atomically.
///
/// The tree is copied (never hardlinked: the host copy must not share inodes
/// with the immutable store) into a temporary directory beside `dest`, every
/// file and directory is fsynced, and the result is put in place with one
/// `rename`. If `dest` already exists (as anything: it is not followed if it
/// is a symlink) the two are swapped with `renameat2(RENAME_EXCHANGE)` and
/// the old tree is removed afterwards. A crash at any point leaves either the
/// old or the new tree at `dest` (plus, at worst, a stray
/// `.NAME.kiln-export-*` directory beside it).
///
/// Permission bits are kept, but not setuid/setgid/sticky, and ownership is
/// not copied: the exporting user may not be root, and a setuid binary from
/// a container must not turn up on the host. Modification times are kept.
/// FIFOs, sockets and device nodes are skipped with a warning.
pub fn export_dir(view: &MergedView, subpath: &Path, dest: &Path) -> Result<(), Error> {
    export_dir_with_hook(view, subpath, dest, &|| {})
}

/// [`export_dir`] with a hook run between listing the view and copying it,
/// so tests can make the copy fail midway.
pub(crate) fn export_dir_with_hook(
    view: &MergedView,
    subpath: &Path,
    dest: &Path,
    before_copy: &dyn Fn(),
) -> Result<(), Error> {
    let (top, entries) = view.resolve_and_walk(subpath)?;
    let (parent, name) = split_dest(dest)?;
    let tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(name))
        .tempdir_in(&parent)
        .map_err(io_at(&parent))?;
    let tmp = Cleanup(Some(tmp.keep()));
    before_copy();
    let opts = CopyOpts {
        owner: false,
        mode_mask: 0o777,
        fsync: true,
        hardlink: false,
        special_files: false,
    };
    build_tree(tmp.path(), &top, &entries, &opts)?;

    match rustix::fs::renameat_with(CWD, tmp.path(), CWD, dest, RenameFlags::NOREPLACE) {
        Ok(()) => {
            let mut tmp = tmp;
            tmp.0 = None;
            fsync_dir(&parent)
        }
        Err(Errno::EXIST) => {
            rustix::fs::renameat_with(CWD, tmp.path(), CWD, dest, RenameFlags::EXCHANGE)
                .map_err(io_at(dest))?;
            // The temporary name now holds the old tree; make the swap
            // durable before deleting it. Dropping `tmp` removes it.
            fsync_dir(&parent)
        }
        Err(e) => Err(Error::io(dest, e)),
    }
}

/// Export one file (following symlinks inside the view) to `dest`
/// atomically: written to a temporary file beside `dest`, fsynced, renamed
/// over `dest`. Permission bits (without setuid/setgid/sticky) and the
/// modification time are kept; ownership is not.
pub fn export_file(view: &MergedView, path: &Path, dest: &Path) -> Result<(), Error> {
    let located = view.resolve_file(path)?;
    let src = &located.host_path;
    let (parent, name) = split_dest(dest)?;
    if already_exported(src, &located.metadata, dest) {
        return Ok(());
    }
    let mut from = open_nofollow(src).map_err(io_at(src))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(name))
        .tempfile_in(&parent)
        .map_err(io_at(&parent))?;
    let mut write = |tmp: &mut tempfile::NamedTempFile| -> io::Result<()> {
        io::copy(&mut from, tmp.as_file_mut())?;
        let f = tmp.as_file();
        f.set_permissions(fs::Permissions::from_mode(
            located.metadata.permissions().mode() & 0o777,
        ))?;
        filetime::set_file_handle_times(
            f,
            Some(atime_of(&located.metadata)),
            Some(mtime_of(&located.metadata)),
        )?;
        f.sync_all()
    };
    write(&mut tmp).map_err(io_at(dest))?;
    tmp.persist(dest).map_err(|e| Error::io(dest, e.error))?;
    fsync_dir(&parent)
}

/// Whether `dest` is already a regular file with the bytes, mode and mtime
/// an export would give it; re-running a cached pipeline then writes nothing.
fn already_exported(src: &Path, meta: &fs::Metadata, dest: &Path) -> bool {
    // Comparing costs a read of both; past this size, writing is as cheap.
    const MAX_COMPARED: u64 = 16 << 20;
    let Ok(existing) = fs::symlink_metadata(dest) else {
        return false;
    };
    let same_shape = existing.is_file()
        && existing.len() == meta.len()
        && meta.len() <= MAX_COMPARED
        && existing.permissions().mode() & 0o7777 == meta.permissions().mode() & 0o777
        && mtime_of(&existing) == mtime_of(meta);
    same_shape && matches!((fs::read(src), fs::read(dest)), (Ok(a), Ok(b)) if a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_midway_leaves_old_dest_intact() {
        let t = tempfile::tempdir().unwrap();
        let layer = t.path().join("layer");
        fs::create_dir_all(layer.join("d")).unwrap();
        for i in 0..20 {
            fs::write(layer.join(format!("d/f{i:02}")), format!("new {i}")).unwrap();
        }
        let dest = t.path().join("out");
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("old.txt"), "old").unwrap();

        let view = MergedView::new(vec![layer.clone()]);
        let victim = layer.join("d/f13");
        let err = export_dir_with_hook(&view, Path::new("/"), &dest, &|| {
            fs::remove_file(&victim).unwrap();
        })
        .unwrap_err();
        assert!(err.to_string().contains("f13"), "{err}");

        // The old tree is untouched and no temporary directory is left.
        let names: Vec<_> = fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["old.txt"]);
        assert_eq!(fs::read_to_string(dest.join("old.txt")).unwrap(), "old");
        let siblings: Vec<_> = fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            siblings.iter().all(|n| !n.contains("kiln-export")),
            "{siblings:?}"
        );
    }

    #[test]
    fn dest_without_name_is_rejected() {
        let t = tempfile::tempdir().unwrap();
        let view = MergedView::new(vec![t.path().to_path_buf()]);
        assert!(matches!(
            export_dir(&view, Path::new("/"), Path::new("/")),
            Err(Error::InvalidPath { .. })
        ));
    }
}
