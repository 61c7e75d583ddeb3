use std::fs::{File, OpenOptions};
use std::path::Path;

use rustix::fs::{flock, FlockOperation};

use crate::error::{IoContext, Result};

/// An advisory lock (flock) held for as long as the value lives. flock locks
/// vanish with the process, so a killed kiln never leaves a lock behind.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    fn open(path: &Path) -> Result<File> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .ctx("open lock file", path)
    }

    pub fn exclusive(path: &Path) -> Result<FileLock> {
        let file = Self::open(path)?;
        flock(&file, FlockOperation::LockExclusive)
            .map_err(std::io::Error::from)
            .ctx("lock", path)?;
        Ok(FileLock { file })
    }

    pub fn shared(path: &Path) -> Result<FileLock> {
        let file = Self::open(path)?;
        flock(&file, FlockOperation::LockShared)
            .map_err(std::io::Error::from)
            .ctx("lock", path)?;
        Ok(FileLock { file })
    }

    /// Takes the lock exclusively if nobody else holds it; `None` when busy.
    pub fn try_exclusive(path: &Path) -> Result<Option<FileLock>> {
        let file = Self::open(path)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(FileLock { file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(std::io::Error::from(e)).ctx("lock", path),
        }
    }

    /// Whether an existing lock file is free (nobody holds it). A missing
    /// file counts as free. The probe lock is released before returning.
    pub fn try_exclusive_existing(path: &Path) -> Result<bool> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(e).ctx("open lock file", path),
        };
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
            Err(e) => Err(std::io::Error::from(e)).ctx("lock", path),
        }
    }

    /// Converts this lock in place (shared <-> exclusive), waiting if needed.
    pub(crate) fn convert(&self, exclusive: bool, path: &Path) -> Result<()> {
        let op = if exclusive {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::LockShared
        };
        flock(&self.file, op)
            .map_err(std::io::Error::from)
            .ctx("lock", path)
    }

    pub(crate) fn try_convert_exclusive(&self, path: &Path) -> Result<bool> {
        match flock(&self.file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
            Err(e) => Err(std::io::Error::from(e)).ctx("lock", path),
        }
    }
}
