//! Unpacking one layer tar into a directory in overlayfs format.
//!
//! Layers come from anywhere, so every entry is treated as hostile. The
//! destination is only ever touched through directory file descriptors
//! opened one component at a time with `O_NOFOLLOW`, starting from the
//! destination itself: a symlink in the tree (planted by an earlier entry)
//! can never redirect a write, and `..` and absolute paths are refused
//! before any lookup. See the crate docs for the full rule set.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use kiln_store::Digest;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps, XattrFlags};
use rustix::io::Errno;

use crate::compression::{decompress, Compression};
use crate::error::{Error, IoContext, Result};
use crate::limits::{ImageBudget, Limit, Meter, MeteredReader, UnpackLimits};

/// Longest entry path (or link target) accepted, as Linux's `PATH_MAX`.
pub const MAX_PATH_LEN: usize = 4096;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// The xattr overlayfs reads to hide a lower directory's contents.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Where overlayfs in `userxattr` mode (rootless) looks for it.
const USER_OPAQUE_XATTR: &str = "user.overlay.opaque";
const XATTR_PAX_PREFIX: &str = "SCHILY.xattr.";
/// How many dropped device nodes [`UnpackStats::dropped_devices`] names.
const DROPPED_DEVICES_NAMED: usize = 5;

/// What one layer contained.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Tar members processed (whiteouts included, extension headers not).
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub fifos: u64,
    /// Overlay whiteouts created from `.wh.` entries.
    pub whiteouts: u64,
    /// Directories marked opaque from `.wh..wh..opq` entries.
    pub opaque_dirs: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
    /// Character and block devices left out: a container gets its devices
    /// from the runtime (`/dev` is a fresh tmpfs), and a device node
    /// anywhere else would open a host device to the step. A rootfs tarball
    /// of debootstrap output has a few dozen under `dev/`; `docker import`
    /// drops them too.
    pub devices_dropped: u64,
    /// The first few of them, as they were named in the layer.
    pub dropped_devices: Vec<String>,
    /// The layer's size as counted against [`UnpackLimits`]: its
    /// uncompressed tar stream, plus the holes of sparse files.
    pub unpacked_bytes: u64,
    /// The layer's compression, as detected.
    pub compression: Option<Compression>,
    /// The sha256 of the uncompressed tar stream: the layer's diff_id,
    /// which an image config lists in `rootfs.diff_ids`.
    pub diff_id: Option<Digest>,
}

/// How [`unpack_layer_with`] and [`crate::ensure_unpacked_with`] bound a
/// layer. The default has [`UnpackLimits::default`] (built-in limits, raised
/// or lowered by `KILN_MAX_LAYER_BYTES`, `KILN_MAX_IMAGE_BYTES` and
/// `KILN_MAX_LAYER_ENTRIES`) and no image budget.
#[derive(Clone, Debug, Default)]
pub struct UnpackOptions {
    pub limits: UnpackLimits,
    /// Shared by the unpacks of one image's layers so that
    /// `limits.max_image_bytes` caps their sum. `None` holds this layer
    /// alone to `max_image_bytes` as well as to `max_layer_bytes`.
    pub image_budget: Option<ImageBudget>,
}

/// Stream-unpacks one layer tar (uncompressed, gzip or zstd, detected by
/// magic) into the empty directory `dest`, in overlayfs format.
///
/// On error `dest` is left partly written; callers unpack into a staging
/// directory and throw it away on failure.
///
/// The layer is held to the default [`UnpackLimits`]; see
/// [`unpack_layer_with`].
pub fn unpack_layer(reader: impl Read, dest: &Path) -> Result<UnpackStats> {
    unpack_layer_with(reader, dest, &UnpackOptions::default())
}

/// [`unpack_layer`] with explicit limits. Unpacking stops as soon as the
/// layer passes one of them, with [`Error::TooLarge`]: at most
/// `max_layer_bytes` (or what the image budget has left) reach the disk,
/// and an entry whose header alone declares more is refused before
/// anything of it is written.
pub fn unpack_layer_with(
    reader: impl Read,
    dest: &Path,
    options: &UnpackOptions,
) -> Result<UnpackStats> {
    let root = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
    .ctx("open unpack destination", dest)?;
    if std::fs::read_dir(dest)
        .ctx("list unpack destination", dest)?
        .next()
        .is_some()
    {
        return Err(Error::Io {
            action: "unpack into",
            path: dest.to_owned(),
            source: io::Error::other("destination directory is not empty"),
        });
    }
    let meter = Meter::new(options.limits, options.image_budget.clone());
    let result = unpack_metered(reader, root, &meter);
    if result.is_err() {
        // The caller throws the partial layer away.
        meter.refund();
    }
    result
}

fn unpack_metered(reader: impl Read, root: OwnedFd, meter: &Meter) -> Result<UnpackStats> {
    let (compression, reader) = decompress(reader)?;
    let mut unpacker = Unpacker {
        root,
        is_root: rustix::process::geteuid().is_root(),
        stats: UnpackStats {
            compression: Some(compression),
            ..UnpackStats::default()
        },
        deferred_dirs: BTreeMap::new(),
        cached_parent: None,
        buf: vec![0u8; 128 * 1024],
        meter,
    };
    let mut archive = tar::Archive::new(MeteredReader {
        inner: reader,
        meter,
    });
    let mut last_entry = String::new();
    let failed = |last: &str, source: io::Error| match meter.tripped() {
        Some(limit) => too_large(
            meter,
            limit,
            if last.is_empty() {
                "before the first entry".to_owned()
            } else {
                format!("after entry {last:?}")
            },
        ),
        None => Error::CorruptLayer {
            context: if last.is_empty() {
                format!("{}, before the first entry", compression.name())
            } else {
                format!("{}, after entry {last:?}", compression.name())
            },
            source,
        },
    };
    // From here to each entry the tar reader reads headers, which it holds
    // in memory: the meter bounds them.
    meter.headers_start();
    let entries = archive.entries().map_err(|e| failed("", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| failed(&last_entry, e))?;
        meter.headers_end();
        last_entry = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        unpacker.entry(&mut entry, compression)?;
        // Whatever data the entry had and was not unpacked (a directory's,
        // say) is read here rather than while skipping to the next header.
        io::copy(&mut entry, &mut io::sink()).map_err(|e| failed(&last_entry, e))?;
        meter.headers_start();
    }
    meter.headers_end();
    // Read to the end so a gzip trailer (CRC and length) or a zstd frame end
    // is checked even though tar stopped at its end-of-archive blocks. The
    // meter counts (and hashes) these bytes too.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(|e| failed(&last_entry, e))?;
    unpacker.finish()?;
    let mut stats = unpacker.stats;
    stats.unpacked_bytes = meter.used();
    stats.diff_id = meter.finish_digest();
    Ok(stats)
}

fn too_large(meter: &Meter, limit: Limit, at: String) -> Error {
    Error::TooLarge {
        limit,
        value: meter.value(limit),
        at,
    }
}

/// Whether a layer directory's root is opaque: its tar had an opaque
/// marker (`.wh..wh..opq`) at the root, which the unpacker records as
/// `trusted.overlay.opaque=y` on the root (or overlayfs' rootless
/// `user.overlay.opaque=y`). A root that cannot be read says no.
pub fn layer_root_is_opaque(layer: &Path) -> bool {
    let mut buf = [0u8; 4];
    [OPAQUE_XATTR, USER_OPAQUE_XATTR]
        .into_iter()
        .any(|name| matches!(rustix::fs::lgetxattr(layer, name, &mut buf), Ok(1) if buf[0] == b'y'))
}

/// The part of a stack of layer directories (base first, as an image lists
/// them) that a container sees: from the topmost layer whose root is opaque
/// (see [`layer_root_is_opaque`]) up, or all of them.
///
/// An opaque marker at a layer's root hides every lower layer (OCI image
/// spec, "Opaque Whiteout"), but overlayfs never consults the opaque mark
/// on a layer's root: whoever builds the mount (or a merged view) must
/// leave the lower layers out, by stacking the slice this returns.
pub fn visible_layers<P: AsRef<Path>>(layers: &[P]) -> &[P] {
    let start = layers
        .iter()
        .rposition(|l| layer_root_is_opaque(l.as_ref()))
        .unwrap_or(0);
    &layers[start..]
}

/// An entry's path split into validated components (no `.`, `..` or empty
/// ones), with the original spelling for messages.
struct EntryPath {
    display: String,
    components: Vec<Vec<u8>>,
}

impl EntryPath {
    fn parent(&self) -> &[Vec<u8>] {
        &self.components[..self.components.len().saturating_sub(1)]
    }

    fn name(&self) -> &[u8] {
        self.components.last().map_or(&[], Vec::as_slice)
    }

    fn unsafe_entry(&self, why: impl Into<String>) -> Error {
        Error::UnsafeEntry {
            entry: self.display.clone(),
            why: why.into(),
        }
    }

    fn io(&self, action: &'static str, path: &[Vec<u8>], source: impl Into<io::Error>) -> Error {
        Error::Unpack {
            entry: self.display.clone(),
            action,
            path: show(path),
            source: source.into(),
        }
    }
}

fn show(components: &[Vec<u8>]) -> String {
    if components.is_empty() {
        // The layer root.
        return ".".to_owned();
    }
    String::from_utf8_lossy(&components.join(&b'/')).into_owned()
}

/// Splits and checks a path from the archive: relative, no `..`, bounded.
fn split_path(raw: &[u8], what: &str, display: &str) -> Result<Vec<Vec<u8>>> {
    let refuse = |why: String| Error::UnsafeEntry {
        entry: display.to_owned(),
        why,
    };
    if raw.len() > MAX_PATH_LEN {
        return Err(refuse(format!(
            "{what} is {} bytes long; the limit is {MAX_PATH_LEN}",
            raw.len()
        )));
    }
    if raw.is_empty() {
        return Err(refuse(format!("{what} is empty")));
    }
    if raw.first() == Some(&b'/') {
        return Err(refuse(format!("{what} is absolute")));
    }
    if raw.contains(&0) {
        return Err(refuse(format!("{what} contains a NUL byte")));
    }
    let mut components = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(refuse(format!("{what} has a '..' component"))),
            c => components.push(c.to_vec()),
        }
    }
    Ok(components)
}

#[derive(Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: rustix::fs::Timespec,
}

impl Meta {
    fn times(&self) -> Timestamps {
        Timestamps {
            last_access: self.mtime,
            last_modification: self.mtime,
        }
    }
}

struct Unpacker<'m> {
    root: OwnedFd,
    is_root: bool,
    stats: UnpackStats,
    /// Directory mode and mtime are applied last: creating children would
    /// bump the mtime, and a read-only mode could block those children.
    deferred_dirs: BTreeMap<Vec<Vec<u8>>, Meta>,
    /// The last parent directory opened, since tar lists siblings together.
    /// Dropped whenever anything is removed, so it never points at a
    /// directory that left the tree.
    cached_parent: Option<(Vec<Vec<u8>>, OwnedFd)>,
    buf: Vec<u8>,
    /// Counts the layer against its limits.
    meter: &'m Meter,
}

impl Unpacker<'_> {
    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        compression: Compression,
    ) -> Result<()> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            tracing::debug!(entry = %shown, "skipping PAX global header");
            return Ok(());
        }
        self.stats.entries += 1;
        if self.stats.entries > self.meter.limits().max_layer_entries {
            self.meter.set_tripped(Limit::LayerEntries);
            return Err(too_large(
                self.meter,
                Limit::LayerEntries,
                format!("at entry {shown:?}"),
            ));
        }
        let path = EntryPath {
            components: split_path(&raw_path, "path", &shown)?,
            display: shown,
        };

        if let Some(dir) = path
            .parent()
            .iter()
            .find(|c| c.starts_with(WHITEOUT_PREFIX))
        {
            // .wh. names are reserved for whiteouts, which never become
            // directories; one used as a parent is a malformed layer.
            return Err(path.unsafe_entry(format!(
                "path passes through the whiteout name {:?}",
                String::from_utf8_lossy(dir)
            )));
        }
        if let Some(marker) = path.name().strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout_entry(&path, marker);
        }

        let meta = self.read_meta(entry, &path)?;
        let xattrs = pax_xattrs(entry, &path)?;
        if path.components.is_empty() {
            // The layer root ("./"): its attributes belong to the staging
            // directory, which the store sets itself.
            return if kind.is_dir() {
                Ok(())
            } else {
                Err(path.unsafe_entry("a non-directory entry names the layer root"))
            };
        }

        let xattrs_possible = kind.is_file() || kind.is_dir() || kind == tar::EntryType::Continuous;
        if !xattrs.is_empty() && !xattrs_possible {
            // Linux allows user.* xattrs only on regular files and
            // directories; a hardlink shares its target's.
            tracing::debug!(entry = %path.display, "extended attributes on a non-file entry not applied");
        }
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.file(
                    entry,
                    &path,
                    meta,
                    &xattrs,
                    compression,
                    kind == tar::EntryType::GNUSparse,
                )
            }
            tar::EntryType::Directory => self.dir(&path, meta, &xattrs),
            tar::EntryType::Symlink => {
                let target = link_target(entry, &path)?;
                self.symlink(&path, &target, meta)
            }
            tar::EntryType::Link => {
                let target = link_target(entry, &path)?;
                self.hardlink(&path, &target)
            }
            tar::EntryType::Fifo => self.fifo(&path, meta),
            tar::EntryType::Char | tar::EntryType::Block => {
                self.stats.devices_dropped += 1;
                if self.stats.dropped_devices.len() < DROPPED_DEVICES_NAMED {
                    self.stats.dropped_devices.push(path.display.clone());
                }
                Ok(())
            }
            other => Err(path.unsafe_entry(format!(
                "unsupported tar entry type {:?}",
                other.as_byte() as char
            ))),
        }
    }

    fn read_meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, path: &EntryPath) -> Result<Meta> {
        let header = entry.header();
        let bad_header = |field: &str, e: io::Error| {
            path.unsafe_entry(format!("unreadable {field} in tar header: {e}"))
        };
        let mode = header.mode().map_err(|e| bad_header("mode", e))? & 0o7777;
        let id = |field: &str, v: io::Result<u64>| -> Result<u32> {
            let v = v.map_err(|e| bad_header(field, e))?;
            // u32::MAX means "leave unchanged" to chown, so it is no owner.
            u32::try_from(v)
                .ok()
                .filter(|&v| v != u32::MAX)
                .ok_or_else(|| path.unsafe_entry(format!("{field} {v} is out of range")))
        };
        let uid = id("uid", header.uid())?;
        let gid = id("gid", header.gid())?;
        let mut mtime = rustix::fs::Timespec {
            tv_sec: header.mtime().map_err(|e| bad_header("mtime", e))? as i64,
            tv_nsec: 0,
        };
        // PAX mtime carries sub-second precision (and dates past 2242).
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| bad_header("PAX header", e))?
        {
            for record in pax.flatten() {
                if record.key() == Ok("mtime") {
                    if let Some(ts) = record.value().ok().and_then(parse_pax_time) {
                        mtime = ts;
                    }
                }
            }
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
        })
    }

    // ---- entry kinds -------------------------------------------------------

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &EntryPath,
        meta: Meta,
        xattrs: &[(String, Vec<u8>)],
        compression: Compression,
        sparse: bool,
    ) -> Result<()> {
        // The size the header declares (for a sparse file, with its holes):
        // refused before anything is written if the limits cannot take it.
        let expected = entry.size();
        if let Some(limit) = self.meter.check_claim(expected) {
            self.meter.set_tripped(limit);
            return Err(too_large(
                self.meter,
                limit,
                format!(
                    "at entry {:?}, which declares {expected} bytes",
                    path.display
                ),
            ));
        }
        if sparse {
            // The holes are written out as zeros but never pass through the
            // meter under the tar reader.
            let stored = entry.header().entry_size().unwrap_or(0);
            if self.meter.charge(expected.saturating_sub(stored)).is_err() {
                let limit = self.meter.tripped().unwrap_or(Limit::LayerBytes);
                return Err(too_large(
                    self.meter,
                    limit,
                    format!("at sparse entry {:?}", path.display),
                ));
            }
        }
        let parent = self.open_parent(path)?;
        self.clear(parent.as_fd(), path)?;
        let fd = rustix::fs::openat(
            &parent,
            path.name(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| path.io("create file", &path.components, e))?;
        let mut file = File::from(fd);
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    if let Some(limit) = self.meter.tripped() {
                        return Err(too_large(
                            self.meter,
                            limit,
                            format!("at entry {:?}, after {written} bytes of it", path.display),
                        ));
                    }
                    return Err(Error::CorruptLayer {
                        context: format!("{}, in entry {:?}", compression.name(), path.display),
                        source,
                    });
                }
            };
            file.write_all(&self.buf[..n])
                .map_err(|e| path.io("write file", &path.components, e))?;
            written += n as u64;
        }
        if !sparse && written != expected {
            return Err(Error::CorruptLayer {
                context: format!("{}, in entry {:?}", compression.name(), path.display),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("archive ended after {written} of {expected} bytes"),
                ),
            });
        }
        self.apply_fd_meta(file.as_fd(), path, meta, xattrs, true)?;
        self.stats.files += 1;
        self.stats.bytes += written;
        Ok(())
    }

    fn dir(&mut self, path: &EntryPath, meta: Meta, xattrs: &[(String, Vec<u8>)]) -> Result<()> {
        let parent = self.open_parent(path)?;
        let existing = stat_nofollow(parent.as_fd(), path.name())
            .map_err(|e| path.io("inspect", &path.components, e))?;
        let mut replaced_whiteout = false;
        match existing {
            // A directory over a directory merges: earlier children stay.
            Some(st) if file_type(&st) == FileType::Directory => {}
            Some(st) => {
                replaced_whiteout = is_whiteout(&st);
                self.clear(parent.as_fd(), path)?;
                mkdir(parent.as_fd(), path)?;
            }
            None => mkdir(parent.as_fd(), path)?,
        }
        let fd = rustix::fs::openat(
            &parent,
            path.name(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| path.io("open directory", &path.components, e))?;
        if replaced_whiteout {
            // Deleted from the lower layers and recreated here: without the
            // opaque mark, overlayfs would show the old contents again.
            set_opaque(fd.as_fd(), path)?;
        }
        self.apply_fd_meta(fd.as_fd(), path, meta, xattrs, false)?;
        self.deferred_dirs.insert(path.components.clone(), meta);
        self.stats.dirs += 1;
        Ok(())
    }

    fn symlink(&mut self, path: &EntryPath, target: &[u8], meta: Meta) -> Result<()> {
        if target.is_empty() {
            return Err(path.unsafe_entry("symlink has an empty target"));
        }
        if target.len() > MAX_PATH_LEN {
            return Err(path.unsafe_entry(format!(
                "symlink target is {} bytes long; the limit is {MAX_PATH_LEN}",
                target.len()
            )));
        }
        if target.contains(&0) {
            return Err(path.unsafe_entry("symlink target contains a NUL byte"));
        }
        // Absolute targets are how images point at their own files
        // (/usr/share/zoneinfo/UTC): inside the container they resolve within
        // the root, and nothing here ever writes through a symlink.
        // Relative ones must stay inside the layer when resolved from the
        // link's own directory.
        if target[0] != b'/' {
            let mut depth = path.parent().len();
            for c in target.split(|&b| b == b'/') {
                match c {
                    b"" | b"." => {}
                    b".." if depth == 0 => {
                        return Err(path.unsafe_entry(format!(
                            "symlink target {:?} climbs above the image root",
                            String::from_utf8_lossy(target)
                        )))
                    }
                    b".." => depth -= 1,
                    _ => depth += 1,
                }
            }
        }
        let parent = self.open_parent(path)?;
        self.clear(parent.as_fd(), path)?;
        rustix::fs::symlinkat(target, &parent, path.name())
            .map_err(|e| path.io("create symlink", &path.components, e))?;
        if self.is_root {
            rustix::fs::chownat(
                &parent,
                path.name(),
                Some(uid(meta.uid)),
                Some(gid(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| path.io("set owner of", &path.components, e))?;
        }
        rustix::fs::utimensat(
            &parent,
            path.name(),
            &meta.times(),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| path.io("set mtime of", &path.components, e))?;
        self.stats.symlinks += 1;
        Ok(())
    }

    fn hardlink(&mut self, path: &EntryPath, target: &[u8]) -> Result<()> {
        let shown = String::from_utf8_lossy(target).into_owned();
        let target = EntryPath {
            components: split_path(target, &format!("hardlink target {shown:?}"), &path.display)?,
            display: shown,
        };
        if target.components.is_empty() {
            return Err(path.unsafe_entry("hardlink target is the layer root"));
        }
        if target.components == path.components {
            return Err(path.unsafe_entry("hardlink to itself"));
        }
        let parent = self.open_parent(path)?;
        self.clear(parent.as_fd(), path)?;
        // Resolved only after the clear above, which may have removed part of
        // the target's path; a missing target is an error, not a mkdir.
        let target_parent = self
            .walk(target.parent(), false)
            .map_err(|e| relabel(e, path, target.parent(), "hardlink target"))?;
        match stat_nofollow(target_parent.as_fd(), target.name())
            .map_err(|e| path.io("inspect hardlink target", &target.components, e))?
        {
            None => {
                return Err(path.unsafe_entry(format!(
                    "hardlink target {:?} is not in this layer",
                    target.display
                )))
            }
            Some(st)
                if matches!(
                    file_type(&st),
                    FileType::RegularFile | FileType::Symlink | FileType::Fifo
                ) => {}
            Some(_) => {
                return Err(path.unsafe_entry(format!(
                    "hardlink target {:?} is not a regular file, symlink or fifo",
                    target.display
                )))
            }
        }
        rustix::fs::linkat(
            &target_parent,
            target.name(),
            &parent,
            path.name(),
            AtFlags::empty(),
        )
        .map_err(|e| path.io("create hardlink", &path.components, e))?;
        self.stats.hardlinks += 1;
        Ok(())
    }

    fn fifo(&mut self, path: &EntryPath, meta: Meta) -> Result<()> {
        let parent = self.open_parent(path)?;
        self.clear(parent.as_fd(), path)?;
        rustix::fs::mknodat(
            &parent,
            path.name(),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .map_err(|e| path.io("create fifo", &path.components, e))?;
        if self.is_root {
            rustix::fs::chownat(
                &parent,
                path.name(),
                Some(uid(meta.uid)),
                Some(gid(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| path.io("set owner of", &path.components, e))?;
        }
        // chmodat follows symlinks, but the name was created as a fifo just
        // above and nothing else writes into the destination.
        rustix::fs::chmodat(
            &parent,
            path.name(),
            Mode::from_raw_mode(meta.mode),
            AtFlags::empty(),
        )
        .map_err(|e| path.io("set mode of", &path.components, e))?;
        rustix::fs::utimensat(
            &parent,
            path.name(),
            &meta.times(),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| path.io("set mtime of", &path.components, e))?;
        self.stats.fifos += 1;
        Ok(())
    }

    fn whiteout_entry(&mut self, path: &EntryPath, marker: &[u8]) -> Result<()> {
        if path.name() == OPAQUE_MARKER {
            let dir = path.parent();
            if dir.is_empty() {
                // The layer root: marked like any other opaque directory.
                // Overlayfs ignores the mark on a layer root, so stacking
                // honours it instead (see visible_layers).
                set_opaque(self.root.as_fd(), path)?;
                self.stats.opaque_dirs += 1;
                return Ok(());
            }
            let fd = self
                .walk(dir, true)
                .map_err(|e| relabel(e, path, dir, "opaque directory"))?;
            let fd = rustix::fs::openat(
                &fd,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| path.io("open directory", dir, e))?;
            set_opaque(fd.as_fd(), path)?;
            self.stats.opaque_dirs += 1;
            return Ok(());
        }
        if marker.starts_with(WHITEOUT_PREFIX) {
            // Other .wh..wh. names are aufs bookkeeping (e.g. .wh..wh.plnk)
            // with no meaning for overlayfs.
            tracing::debug!(entry = %path.display, "skipping aufs metadata entry");
            return Ok(());
        }
        if marker.is_empty() || marker == b"." || marker == b".." {
            return Err(path.unsafe_entry("whiteout names no file"));
        }
        let mut victim = path.parent().to_vec();
        victim.push(marker.to_vec());
        let victim = EntryPath {
            display: path.display.clone(),
            components: victim,
        };
        let parent = self.open_parent(&victim)?;
        self.clear(parent.as_fd(), &victim)?;
        rustix::fs::mknodat(
            &parent,
            victim.name(),
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .map_err(|e| path.io("create whiteout", &victim.components, e))?;
        self.stats.whiteouts += 1;
        Ok(())
    }

    // ---- metadata ----------------------------------------------------------

    /// Owner, then mode, then xattrs, then times: chown clears setuid bits
    /// and security.capability, so each step must follow the one it undoes.
    fn apply_fd_meta(
        &self,
        fd: BorrowedFd<'_>,
        path: &EntryPath,
        meta: Meta,
        xattrs: &[(String, Vec<u8>)],
        mode_and_times: bool,
    ) -> Result<()> {
        if self.is_root {
            rustix::fs::fchown(fd, Some(uid(meta.uid)), Some(gid(meta.gid)))
                .map_err(|e| path.io("set owner of", &path.components, e))?;
        }
        if mode_and_times {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))
                .map_err(|e| path.io("set mode of", &path.components, e))?;
        }
        for (name, value) in xattrs {
            if name.starts_with("user.") || name == "security.capability" {
                rustix::fs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty())
                    .map_err(|e| path.io("set extended attribute on", &path.components, e))?;
            } else {
                tracing::debug!(entry = %path.display, xattr = %name, "extended attribute not applied");
            }
        }
        if mode_and_times {
            rustix::fs::futimens(fd, &meta.times())
                .map_err(|e| path.io("set mtime of", &path.components, e))?;
        }
        Ok(())
    }

    /// Applies the deferred directory modes and mtimes, deepest first. A
    /// directory replaced or removed by a later entry is skipped.
    fn finish(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.deferred_dirs);
        for (components, meta) in dirs.iter().rev() {
            let Some(fd) = self.lookup_dir(components) else {
                continue;
            };
            let path = EntryPath {
                display: show(components),
                components: components.clone(),
            };
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode))
                .map_err(|e| path.io("set mode of", components, e))?;
            rustix::fs::futimens(&fd, &meta.times())
                .map_err(|e| path.io("set mtime of", components, e))?;
        }
        Ok(())
    }

    // ---- walking the tree --------------------------------------------------

    fn open_parent(&mut self, path: &EntryPath) -> Result<OwnedFd> {
        self.walk(path.parent(), true)
            .map_err(|e| relabel(e, path, path.parent(), "path"))
    }

    /// Opens the directory at `components` below the root without following
    /// any symlink, creating missing directories when `create` is set.
    fn walk(&mut self, components: &[Vec<u8>], create: bool) -> Result<OwnedFd, WalkError> {
        if let Some((cached, fd)) = &self.cached_parent {
            if cached.as_slice() == components {
                return fd.try_clone().map_err(|e| WalkError::Io(0, e));
            }
        }
        let mut fd = self.root.try_clone().map_err(|e| WalkError::Io(0, e))?;
        for (i, name) in components.iter().enumerate() {
            let st = stat_nofollow(fd.as_fd(), name).map_err(|e| WalkError::Io(i, e))?;
            match st {
                Some(st) if file_type(&st) == FileType::Directory => {}
                Some(st) if file_type(&st) == FileType::Symlink => {
                    return Err(WalkError::Symlink(i))
                }
                Some(st) if create && is_whiteout(&st) => {
                    // Deleted earlier in this layer, now a parent again: a
                    // fresh opaque directory, so lower contents stay hidden.
                    self.cached_parent = None;
                    rustix::fs::unlinkat(&fd, name.as_slice(), AtFlags::empty())
                        .map_err(|e| WalkError::Io(i, e.into()))?;
                    rustix::fs::mkdirat(&fd, name.as_slice(), Mode::from_raw_mode(0o755))
                        .map_err(|e| WalkError::Io(i, e.into()))?;
                    let dir = open_dir_nofollow(fd.as_fd(), name, OFlags::RDONLY)
                        .map_err(|e| WalkError::Io(i, e))?;
                    rustix::fs::fsetxattr(&dir, OPAQUE_XATTR, b"y", XattrFlags::empty())
                        .map_err(|e| WalkError::Io(i, e.into()))?;
                }
                Some(_) => return Err(WalkError::NotDir(i)),
                None if create => {
                    rustix::fs::mkdirat(&fd, name.as_slice(), Mode::from_raw_mode(0o755))
                        .map_err(|e| WalkError::Io(i, e.into()))?;
                }
                None => return Err(WalkError::Missing(i)),
            }
            // O_NOFOLLOW|O_DIRECTORY fails on a symlink, so even a swap after
            // the stat above could not lead outside the tree.
            fd = open_dir_nofollow(fd.as_fd(), name, OFlags::PATH)
                .map_err(|e| WalkError::Io(i, e))?;
        }
        if let Ok(clone) = fd.try_clone() {
            self.cached_parent = Some((components.to_vec(), clone));
        }
        Ok(fd)
    }

    fn lookup_dir(&self, components: &[Vec<u8>]) -> Option<OwnedFd> {
        let mut fd = self.root.try_clone().ok()?;
        for name in components {
            fd = open_dir_nofollow(fd.as_fd(), name, OFlags::PATH).ok()?;
        }
        rustix::fs::openat(
            &fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
    }

    /// Removes whatever is at the entry's path, so the entry replaces it.
    fn clear(&mut self, parent: BorrowedFd<'_>, path: &EntryPath) -> Result<()> {
        let Some(st) = stat_nofollow(parent, path.name())
            .map_err(|e| path.io("inspect", &path.components, e))?
        else {
            return Ok(());
        };
        self.cached_parent = None;
        let result = if file_type(&st) == FileType::Directory {
            remove_tree_at(parent, path.name())
        } else {
            rustix::fs::unlinkat(parent, path.name(), AtFlags::empty()).map_err(io::Error::from)
        };
        result.map_err(|e| path.io("replace", &path.components, e))
    }
}

/// Why a directory walk stopped, by component index.
enum WalkError {
    Symlink(usize),
    NotDir(usize),
    Missing(usize),
    Io(usize, io::Error),
}

/// Turns a walk failure into an error about the entry being unpacked;
/// `walked` is the directory path that was being opened.
fn relabel(e: WalkError, entry: &EntryPath, walked: &[Vec<u8>], what: &str) -> Error {
    let prefix = |i: usize| show(&walked[..(i + 1).min(walked.len())]);
    match e {
        WalkError::Symlink(i) => entry.unsafe_entry(format!(
            "{what} passes through the symlink {:?}; refusing to write through symlinks",
            prefix(i)
        )),
        WalkError::NotDir(i) => entry.unsafe_entry(format!(
            "{what} passes through {:?}, which is not a directory",
            prefix(i)
        )),
        WalkError::Missing(i) => entry.unsafe_entry(format!(
            "{what} passes through {:?}, which is not in this layer",
            prefix(i)
        )),
        WalkError::Io(i, source) => Error::Unpack {
            entry: entry.display.clone(),
            action: "open directory",
            path: prefix(i),
            source,
        },
    }
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>, path: &EntryPath) -> Result<Vec<u8>> {
    entry
        .link_name_bytes()
        .map(|l| l.into_owned())
        .ok_or_else(|| path.unsafe_entry("link entry has no target"))
}

fn pax_xattrs<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    path: &EntryPath,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut xattrs = Vec::new();
    let Some(pax) = entry
        .pax_extensions()
        .map_err(|e| path.unsafe_entry(format!("unreadable PAX header: {e}")))?
    else {
        return Ok(xattrs);
    };
    for record in pax {
        let record = record.map_err(|e| path.unsafe_entry(format!("malformed PAX record: {e}")))?;
        if let Ok(key) = record.key() {
            if let Some(name) = key.strip_prefix(XATTR_PAX_PREFIX) {
                xattrs.push((name.to_owned(), record.value_bytes().to_vec()));
            }
        }
    }
    Ok(xattrs)
}

/// Parses a PAX time, `seconds[.fraction]`.
fn parse_pax_time(s: &str) -> Option<rustix::fs::Timespec> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let tv_sec: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let tv_nsec = if digits.is_empty() {
        0
    } else {
        let n: i64 = digits.parse().ok()?;
        n * 10i64.pow(9 - digits.len() as u32)
    };
    // A negative time with a fraction counts back from the second.
    let (tv_sec, tv_nsec) = if tv_sec < 0 && tv_nsec > 0 {
        (tv_sec - 1, 1_000_000_000 - tv_nsec)
    } else {
        (tv_sec, tv_nsec)
    };
    Some(rustix::fs::Timespec {
        tv_sec,
        tv_nsec: tv_nsec as _,
    })
}

fn uid(raw: u32) -> rustix::fs::Uid {
    // SAFETY: from_raw is unsafe only because u32::MAX means "no change" to
    // chown; read_meta refuses that value.
    unsafe { rustix::fs::Uid::from_raw(raw) }
}

fn gid(raw: u32) -> rustix::fs::Gid {
    // SAFETY: as for uid().
    unsafe { rustix::fs::Gid::from_raw(raw) }
}

fn stat_nofollow(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<rustix::fs::Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn file_type(st: &rustix::fs::Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

fn is_whiteout(st: &rustix::fs::Stat) -> bool {
    file_type(st) == FileType::CharacterDevice && st.st_rdev == 0
}

fn open_dir_nofollow(dir: BorrowedFd<'_>, name: &[u8], access: OFlags) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        access | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

fn mkdir(parent: BorrowedFd<'_>, path: &EntryPath) -> Result<()> {
    // 0700 until finish() applies the real mode, so a half-unpacked tree is
    // never readable by others.
    rustix::fs::mkdirat(parent, path.name(), Mode::from_raw_mode(0o700))
        .map_err(|e| path.io("create directory", &path.components, e))
}

fn set_opaque(dir: BorrowedFd<'_>, path: &EntryPath) -> Result<()> {
    rustix::fs::fsetxattr(dir, OPAQUE_XATTR, b"y", XattrFlags::empty()).map_err(|e| {
        path.io(
            "mark opaque (needs CAP_SYS_ADMIN for trusted.* xattrs)",
            path.parent(),
            e,
        )
    })
}

/// Removes a directory tree below `parent` without following symlinks.
fn remove_tree_at(parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let dir = open_dir_nofollow(parent, name, OFlags::RDONLY)?;
    let mut children = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir)? {
        let entry = entry?;
        let child = entry.file_name().to_bytes();
        if child != b"." && child != b".." {
            children.push((child.to_vec(), entry.file_type()));
        }
    }
    for (child, kind) in children {
        let is_dir = match kind {
            FileType::Directory => true,
            FileType::Unknown => stat_nofollow(dir.as_fd(), &child)?
                .is_some_and(|st| file_type(&st) == FileType::Directory),
            _ => false,
        };
        if is_dir {
            remove_tree_at(dir.as_fd(), &child)?;
        } else {
            rustix::fs::unlinkat(&dir, child.as_slice(), AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_path_normalises_and_refuses() {
        let ok = |p: &str| split_path(p.as_bytes(), "path", p).unwrap();
        assert_eq!(ok("./a/b"), vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(ok("a//./b/"), vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(ok("./").is_empty());
        for bad in ["../x", "/abs", "a/../../x", "a/..", ""] {
            let err = split_path(bad.as_bytes(), "path", bad).unwrap_err();
            assert!(
                matches!(err, Error::UnsafeEntry { ref entry, .. } if entry == bad),
                "{bad}: {err}"
            );
        }
        let long = "a/".repeat(2049);
        assert!(split_path(long.as_bytes(), "path", &long).is_err());
    }

    #[test]
    fn pax_times() {
        let t = parse_pax_time("1700000000.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 500_000_000));
        let t = parse_pax_time("42").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (42, 0));
        let t = parse_pax_time("-1.25").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 750_000_000));
        assert!(parse_pax_time("soon").is_none());
    }
}
