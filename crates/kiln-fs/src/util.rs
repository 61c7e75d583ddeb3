//! Small helpers shared by the tree operations.

use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use filetime::FileTime;

use crate::error::{io_at, Error};

const BUF_SIZE: usize = 128 * 1024;

/// Runs `f` over `items` on up to `available_parallelism` threads (the
/// calling thread included) and returns the results in input order. Work
/// stops soon after any item fails; the error returned is the one of the
/// lowest failing index, so it does not depend more on scheduling than it
/// must. A thread that cannot be spawned only costs parallelism.
pub(crate) fn parallel_try<T, R, F>(items: &[T], f: F) -> Result<Vec<R>, Error>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> Result<R, Error> + Sync,
{
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let work = || {
        let mut done = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else { break };
            let r = f(item);
            if r.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            done.push((i, r));
        }
        done
    };
    let mut slots: Vec<Option<Result<R, Error>>> = Vec::with_capacity(items.len());
    slots.resize_with(items.len(), || None);
    std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| std::thread::Builder::new().spawn_scoped(s, work).ok())
            .collect();
        let mut all = vec![work()];
        for h in helpers {
            match h.join() {
                Ok(done) => all.push(done),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        for (i, r) in all.into_iter().flatten() {
            slots[i] = Some(r);
        }
    });
    // Slots are only empty after a failure, which the scan below finds.
    let mut out = Vec::with_capacity(items.len());
    for slot in slots.into_iter().flatten() {
        out.push(slot?);
    }
    Ok(out)
}

pub(crate) fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

pub(crate) fn is_executable(meta: &Metadata) -> bool {
    meta.mode() & 0o100 != 0
}

/// Opens a file for reading without following a symlink in the last
/// component, and without blocking if a FIFO was swapped in.
pub(crate) fn open_nofollow(path: &Path) -> io::Result<File> {
    File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

/// Opens `rel` below the directory `root_fd`, refusing to traverse any
/// symlink (or `..`), so a tree swapped under us cannot make us read files
/// outside it. Falls back to a plain no-follow open where openat2 is missing.
pub(crate) fn open_beneath(root_fd: &File, root: &Path, rel: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let flags =
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(root_fd, rel, flags, Mode::empty(), resolve) {
        Ok(fd) => Ok(File::from(fd)),
        Err(rustix::io::Errno::NOSYS) => open_nofollow(&root.join(rel)),
        Err(e) => Err(e.into()),
    }
}

/// Hashes everything readable from `src`, optionally writing it to `dst` as
/// it goes. Returns the byte count and the BLAKE3 hash.
pub(crate) fn hash_copy(src: &mut File, mut dst: Option<&mut File>) -> io::Result<(u64, [u8; 32])> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; BUF_SIZE];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        if let Some(d) = dst.as_deref_mut() {
            d.write_all(&buf[..n])?;
        }
        total += n as u64;
    }
    Ok((total, *hasher.finalize().as_bytes()))
}

/// Checks that an entry path from a tree is a plain relative path, so
/// joining it to a destination can never escape it.
pub(crate) fn check_rel(rel: &Path) -> Result<(), Error> {
    let mut any = false;
    for c in rel.components() {
        match c {
            Component::Normal(_) => any = true,
            Component::CurDir => {}
            _ => {
                return Err(Error::InvalidPath {
                    path: rel.to_path_buf(),
                    reason: "must be relative and free of `..`",
                })
            }
        }
    }
    if any {
        Ok(())
    } else {
        Err(Error::InvalidPath {
            path: rel.to_path_buf(),
            reason: "empty",
        })
    }
}

pub(crate) fn fsync_dir(path: &Path) -> Result<(), Error> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_at(path))
}

pub(crate) fn is_dir_empty(path: &Path) -> Result<bool, Error> {
    Ok(fs::read_dir(path).map_err(io_at(path))?.next().is_none())
}

pub(crate) fn mtime_of(meta: &Metadata) -> FileTime {
    FileTime::from_last_modification_time(meta)
}

pub(crate) fn atime_of(meta: &Metadata) -> FileTime {
    FileTime::from_last_access_time(meta)
}

/// Creates a directory that only we can write to while it is being filled;
/// its final mode is applied once its children exist.
pub(crate) fn create_work_dir(path: &Path, allow_existing: bool) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if allow_existing && e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = fs::symlink_metadata(path).map_err(io_at(path))?;
            if meta.is_dir() {
                Ok(())
            } else {
                Err(Error::io(path, e))
            }
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Removes a tree even if it contains directories without write permission
/// (exported trees keep their modes, and we may not be root).
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(first) => {
            use std::os::unix::fs::PermissionsExt;
            for entry in walkdir::WalkDir::new(path).follow_links(false) {
                let Ok(entry) = entry else { continue };
                if entry.file_type().is_dir() {
                    let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o700));
                }
            }
            fs::remove_dir_all(path).map_err(|_| first)
        }
    }
}
