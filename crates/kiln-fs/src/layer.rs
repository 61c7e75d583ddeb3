//! Overlayfs layer markers: whiteouts and opaque directories.

use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rustix::fs::{FileType, Mode, XattrFlags, CWD};
use rustix::io::Errno;

use crate::error::{io_at, Error};

/// The xattr overlayfs reads to decide that a directory hides everything
/// below it. Only `trusted.*` is used: kiln mounts as root, and the
/// `user.overlay.*` namespace only applies to `userxattr` mounts.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// A whiteout is a character device with device number 0:0.
pub fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Whether `dir` carries `trusted.overlay.opaque=y`. Does not follow a
/// symlink at `dir`. Filesystems without xattr support, and callers without
/// the privilege to see `trusted.*` xattrs, read as "not opaque".
pub fn is_opaque(dir: &Path) -> Result<bool, Error> {
    let mut buf = [0u8; 8];
    match rustix::fs::lgetxattr(dir, OPAQUE_XATTR, &mut buf) {
        Ok(n) => Ok(buf.get(..n) == Some(b"y".as_slice())),
        // ERANGE: a value longer than our buffer cannot be "y". Newer
        // kernels also write "x" (a dir holding xattr whiteouts), which is
        // not opaque either.
        Err(Errno::NODATA | Errno::NOTSUP | Errno::RANGE) => Ok(false),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Creates a whiteout at `path` (needs CAP_MKNOD).
pub fn write_whiteout(path: &Path) -> Result<(), Error> {
    rustix::fs::mknodat(
        CWD,
        path,
        FileType::CharacterDevice,
        Mode::empty(),
        rustix::fs::makedev(0, 0),
    )
    .map_err(io_at(path))
}

/// Marks `dir` opaque (needs CAP_SYS_ADMIN for the `trusted.*` namespace).
pub fn set_opaque(dir: &Path) -> Result<(), Error> {
    rustix::fs::lsetxattr(dir, OPAQUE_XATTR, b"y", XattrFlags::empty()).map_err(io_at(dir))
}
