//! Packing a layer directory of the store into a deterministic, gzipped OCI
//! layer blob: the inverse of [`crate::unpack_layer`].
//!
//! The layer is read through directory file descriptors, never following a
//! symlink, in byte order of the archive paths; nothing about the host
//! (mtimes, atimes, inode numbers, directory order, user names) reaches the
//! tar. See the crate docs for the full rule set.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use kiln_store::{Digest, DigestWriter, Store};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use tar::{EntryType, Header};

use crate::error::{Error, Result};
use crate::unpack::OPAQUE_XATTR;

/// The media type of every layer [`pack_layer`] writes.
pub const LAYER_MEDIA_TYPE_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Bumped whenever the bytes `pack_layer` produces for a layer change, so
/// records of the old packing are never served for the new one.
const PACK_CACHE_PREFIX: &str = "oci-pack-v1";
/// Action-cache keys are file names in the store, at most this long.
const MAX_CACHE_KEY_LEN: usize = 200;
/// zlib's default: a fixed level is part of what makes the digest stable.
const GZIP_LEVEL: u32 = 6;
/// "Unknown" in the gzip header's OS byte, so the host's OS never shows.
const GZIP_OS_UNKNOWN: u8 = 255;
/// overlayfs in `userxattr` mode (rootless) marks opaque directories here.
const USER_OPAQUE_XATTR: &str = "user.overlay.opaque";
const CAPABILITY_XATTR: &str = "security.capability";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// The name of PAX extended headers; any fixed name will do, since readers
/// apply the records to the entry that follows.
const PAX_HEADER_NAME: &[u8] = b"PaxHeader";
const COPY_BUFFER: usize = 256 * 1024;

/// How to pack a layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PackOptions {
    /// The mtime of every entry, in seconds since 1970: `SOURCE_DATE_EPOCH`
    /// when the caller has one (see [`crate::source_date_epoch`]), else 0.
    pub mtime: u64,
}

/// A layer packed into a blob of the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PackedLayer {
    /// The digest of the compressed blob, as manifests list it.
    pub digest: Digest,
    /// The sha256 of the uncompressed tar, as image configs list it.
    pub diff_id: Digest,
    /// The size of the compressed blob in bytes.
    pub size: u64,
    pub media_type: String,
}

/// Packs layer `layer_id` of the store (an overlayfs-format directory) into
/// a gzipped OCI layer blob in the store.
///
/// The same layer contents and options give the same bytes on every run and
/// every machine. Layers are immutable, so the result is recorded in the
/// action cache and a second call returns it without reading the layer
/// again (unless its blob has since been pruned).
pub fn pack_layer(store: &Store, layer_id: &str, options: &PackOptions) -> Result<PackedLayer> {
    validate_layer_id(layer_id)?;
    let key = cache_key(layer_id, options);
    if let Some(recorded) = recorded_pack(store, &key)? {
        tracing::debug!(layer = layer_id, digest = %recorded.digest, "layer already packed");
        return Ok(recorded);
    }
    if !store.has_layer(layer_id) {
        return Err(Error::LayerNotFound {
            layer: layer_id.to_owned(),
            store: store.root().to_owned(),
        });
    }
    let packed = pack_uncached(store, layer_id, options)?;
    let record = serde_json::to_vec(&packed).map_err(|e| Error::Pack {
        layer: layer_id.to_owned(),
        action: "record the packing of",
        path: store.layer_path(layer_id).display().to_string(),
        source: io::Error::other(e),
    })?;
    store.ac_put(&key, &record)?;
    Ok(packed)
}

/// Layer ids name directories in the store, so they follow the store's
/// rules for names; anything else could point outside it.
fn validate_layer_id(layer_id: &str) -> Result<()> {
    kiln_store::validate_name("layer", layer_id).map_err(|e| match e {
        kiln_store::Error::InvalidName { why, .. } => Error::InvalidLayerId {
            layer: layer_id.to_owned(),
            why,
        },
        other => other.into(),
    })
}

/// `oci-pack-v1-<layer id>-<mtime>`: readable in the store, and unambiguous
/// because the mtime is all digits. An id too long for a key is hashed.
fn cache_key(layer_id: &str, options: &PackOptions) -> String {
    let key = format!("{PACK_CACHE_PREFIX}-{layer_id}-{}", options.mtime);
    if key.len() <= MAX_CACHE_KEY_LEN {
        return key;
    }
    let hashed = Digest::of(layer_id.as_bytes());
    format!("{PACK_CACHE_PREFIX}-{}-{}", hashed.hex(), options.mtime)
}

/// The recorded result for `key`, if there is one whose blob is still in
/// the store with the recorded size.
fn recorded_pack(store: &Store, key: &str) -> Result<Option<PackedLayer>> {
    let Some(bytes) = store.ac_get(key)? else {
        return Ok(None);
    };
    let packed: PackedLayer = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(key, error = %e, "unreadable layer pack record ignored");
            return Ok(None);
        }
    };
    if store.blob_size(&packed.digest) != Some(packed.size) {
        tracing::debug!(key, blob = %packed.digest, "packed layer blob is gone; packing again");
        return Ok(None);
    }
    Ok(Some(packed))
}

/// The writer chain: tar -> sha256 of the tar (diff_id) -> gzip -> blob.
type TarSink<'s> = HashingWriter<flate2::write::GzEncoder<BufWriter<kiln_store::BlobWriter<'s>>>>;

fn pack_uncached(store: &Store, layer_id: &str, options: &PackOptions) -> Result<PackedLayer> {
    let root_path = store.layer_path(layer_id);
    let pack_err = |action: &'static str, source: io::Error| Error::Pack {
        layer: layer_id.to_owned(),
        action,
        path: root_path.display().to_string(),
        source,
    };
    let root = rustix::fs::open(
        &root_path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| pack_err("open layer directory", e.into()))?;

    let blob = store.blob_writer()?;
    let gzip = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS_UNKNOWN)
        .write(
            BufWriter::with_capacity(COPY_BUFFER, blob),
            flate2::Compression::new(GZIP_LEVEL),
        );
    let sink = HashingWriter {
        inner: gzip,
        digest: DigestWriter::default(),
    };
    let mut packer = Packer {
        layer: layer_id,
        builder: tar::Builder::new(sink),
        mtime: options.mtime,
        keep_owners: rustix::process::geteuid().is_root(),
        first_link: HashMap::new(),
        stats: PackStats::default(),
    };
    packer.pack_tree(root)?;
    let stats = packer.stats;
    let sink: TarSink<'_> = packer
        .builder
        .into_inner()
        .map_err(|e| pack_err("finish the tar of", e))?;
    let diff_id = sink.digest.finish();
    let buffered = sink.inner.finish().map_err(|e| pack_err("compress", e))?;
    let blob = buffered
        .into_inner()
        .map_err(|e| pack_err("write the blob of", e.into_error()))?;
    let size = blob.len();
    let digest = blob.commit(None)?;
    tracing::debug!(layer = layer_id, %digest, %diff_id, size, ?stats, "layer packed");
    Ok(PackedLayer {
        digest,
        diff_id,
        size,
        media_type: LAYER_MEDIA_TYPE_GZIP.to_owned(),
    })
}

/// Passes bytes through, hashing them on the way.
struct HashingWriter<W> {
    inner: W,
    digest: DigestWriter,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digest.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct PackStats {
    files: u64,
    dirs: u64,
    symlinks: u64,
    hardlinks: u64,
    whiteouts: u64,
    opaque_dirs: u64,
    bytes: u64,
}

/// What a directory entry is, as far as packing cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    /// A character device 0:0: overlayfs's mark for a deleted path.
    Whiteout,
    Socket,
    Device,
}

/// The parts of a `stat` that go into the tar.
#[derive(Clone, Copy, Debug)]
struct EntryStat {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u64,
    /// (device, inode): which entries are hardlinks of one another.
    inode: (u64, u64),
}

impl EntryStat {
    // The widths of `stat` fields differ between architectures, so the
    // casts are needed on some and no-ops on others.
    #[allow(clippy::unnecessary_cast)]
    fn from_stat(st: &rustix::fs::Stat) -> EntryStat {
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => Kind::Dir,
            FileType::RegularFile => Kind::File,
            FileType::Symlink => Kind::Symlink,
            FileType::Fifo => Kind::Fifo,
            FileType::CharacterDevice if st.st_rdev == 0 => Kind::Whiteout,
            FileType::Socket => Kind::Socket,
            _ => Kind::Device,
        };
        EntryStat {
            kind,
            mode: (st.st_mode as u32) & 0o7777,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
            size: u64::try_from(st.st_size).unwrap_or(0),
            nlink: st.st_nlink as u64,
            inode: (st.st_dev as u64, st.st_ino as u64),
        }
    }
}

struct Child {
    name: Vec<u8>,
    stat: EntryStat,
    /// The child's last archive path component (`name/` for directories,
    /// `.wh.name` for whiteouts): siblings sorted by it make the whole
    /// archive sorted by path.
    sort_key: Vec<u8>,
}

/// A directory being written: its children, sorted descending so the next
/// one in archive order is popped off the end.
struct Frame {
    dir: OwnedFd,
    /// The directory's archive path with a trailing `/`; empty for the root.
    prefix: Vec<u8>,
    children: Vec<Child>,
}

struct Packer<'a, W: Write> {
    layer: &'a str,
    builder: tar::Builder<W>,
    mtime: u64,
    /// Owners are container owners only when kiln ran as root; otherwise
    /// every file belongs to the invoking user, which means root inside.
    keep_owners: bool,
    /// The archive path each multiply-linked inode was first written at.
    first_link: HashMap<(u64, u64), Vec<u8>>,
    stats: PackStats,
}

impl<W: Write> Packer<'_, W> {
    /// Writes every entry below the layer root, depth first, in path order.
    /// An explicit stack keeps deep trees off the call stack.
    fn pack_tree(&mut self, root: OwnedFd) -> Result<()> {
        if is_opaque(root.as_fd()).unwrap_or(false) {
            // The inverse of unpacking a `.wh..wh..opq` at the root, which
            // hides every lower layer: first, before any entry of the layer.
            self.append_empty_file(OPAQUE_MARKER)?;
            self.stats.opaque_dirs += 1;
        }
        let first = self.list(root, Vec::new())?;
        let mut stack = vec![first];
        while let Some(frame) = stack.last_mut() {
            let Some(child) = frame.children.pop() else {
                stack.pop();
                continue;
            };
            if let Some(sub) = self.entry(frame, child)? {
                stack.push(sub);
            }
        }
        Ok(())
    }

    /// Reads a directory's children and sorts them into archive order.
    fn list(&mut self, dir: OwnedFd, prefix: Vec<u8>) -> Result<Frame> {
        let shown = if prefix.is_empty() {
            ".".to_owned()
        } else {
            show(&prefix)
        };
        let read_err = |e: Errno| Error::Pack {
            layer: self.layer.to_owned(),
            action: "list directory",
            path: shown.clone(),
            source: e.into(),
        };
        let mut children = Vec::new();
        for entry in rustix::fs::Dir::read_from(&dir).map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = name.to_vec();
            let st = rustix::fs::statat(&dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| self.io("inspect", &prefix, &name, e.into()))?;
            let stat = EntryStat::from_stat(&st);
            let sort_key = match stat.kind {
                Kind::Dir => [name.as_slice(), b"/"].concat(),
                Kind::Whiteout => [WHITEOUT_PREFIX, name.as_slice()].concat(),
                _ => name.clone(),
            };
            if stat.kind != Kind::Whiteout && name.starts_with(WHITEOUT_PREFIX) {
                // Such a file would read back as a whiteout and delete
                // something instead of being there.
                return Err(self.refuse(
                    &prefix,
                    &name,
                    "has a name starting with \".wh.\", which OCI layers reserve for whiteouts; rename it",
                ));
            }
            children.push(Child {
                name,
                stat,
                sort_key,
            });
        }
        children.sort_unstable_by(|a, b| b.sort_key.cmp(&a.sort_key));
        Ok(Frame {
            dir,
            prefix,
            children,
        })
    }

    /// Writes one entry; for a directory, returns its frame to descend into.
    fn entry(&mut self, parent: &Frame, child: Child) -> Result<Option<Frame>> {
        let Child { name, stat, .. } = child;
        let prefix = &parent.prefix;
        let dir = parent.dir.as_fd();
        let path = [prefix.as_slice(), name.as_slice()].concat();
        match stat.kind {
            Kind::Whiteout => {
                let marker = [prefix.as_slice(), WHITEOUT_PREFIX, name.as_slice()].concat();
                self.append_empty_file(&marker)?;
                self.stats.whiteouts += 1;
                Ok(None)
            }
            Kind::Device => Err(self.refuse(
                prefix,
                &name,
                "is a device node; kiln never creates those in layers (a container gets its devices from the runtime)",
            )),
            Kind::Socket => {
                // A socket is only meaningful to the process that bound it,
                // and tar cannot hold one; docker skips them too.
                tracing::warn!(layer = self.layer, path = %show(&path), "socket left out of the packed layer");
                Ok(None)
            }
            Kind::Dir => {
                let fd = rustix::fs::openat(
                    dir,
                    name.as_slice(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.io("open directory", prefix, &name, e.into()))?;
                let opaque = is_opaque(fd.as_fd())
                    .map_err(|e| self.io("read extended attributes of", prefix, &name, e))?;
                let dir_path = [path.as_slice(), b"/"].concat();
                let mut header = self.header(EntryType::Directory, &stat, 0);
                self.append(&mut header, &dir_path, io::empty())?;
                self.stats.dirs += 1;
                if opaque {
                    // Right after the directory, before its children, so a
                    // reader that clears the directory on this marker can
                    // only clear lower layers' contents.
                    let marker = [dir_path.as_slice(), OPAQUE_MARKER].concat();
                    self.append_empty_file(&marker)?;
                    self.stats.opaque_dirs += 1;
                }
                Ok(Some(self.list(fd, dir_path)?))
            }
            Kind::File | Kind::Symlink | Kind::Fifo => {
                if stat.nlink > 1 {
                    if let Some(target) = self.first_link.get(&stat.inode) {
                        let target = target.clone();
                        let mut header = self.header(EntryType::Link, &stat, 0);
                        self.append_link(&mut header, &path, &target)?;
                        self.stats.hardlinks += 1;
                        return Ok(None);
                    }
                    self.first_link.insert(stat.inode, path.clone());
                }
                match stat.kind {
                    Kind::File => self.file(dir, prefix, &name, &path, &stat)?,
                    Kind::Symlink => {
                        let target = rustix::fs::readlinkat(dir, name.as_slice(), Vec::new())
                            .map_err(|e| self.io("read symlink", prefix, &name, e.into()))?;
                        let mut header = self.header(EntryType::Symlink, &stat, 0);
                        // The mode of a symlink means nothing on Linux and
                        // varies with the umask at creation.
                        header.set_mode(0o777);
                        self.append_link(&mut header, &path, target.as_bytes())?;
                        self.stats.symlinks += 1;
                    }
                    _ => {
                        let mut header = self.header(EntryType::Fifo, &stat, 0);
                        self.append(&mut header, &path, io::empty())?;
                    }
                }
                Ok(None)
            }
        }
    }

    fn file(
        &mut self,
        dir: BorrowedFd<'_>,
        prefix: &[u8],
        name: &[u8],
        path: &[u8],
        stat: &EntryStat,
    ) -> Result<()> {
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io("open file", prefix, name, e.into()))?;
        if let Some(caps) = get_xattr(fd.as_fd(), CAPABILITY_XATTR)
            .map_err(|e| self.io("read extended attributes of", prefix, name, e))?
        {
            let key = format!("SCHILY.xattr.{CAPABILITY_XATTR}");
            self.append_pax(&[(key.as_str(), caps.as_slice())], path)?;
        }
        let mut header = self.header(EntryType::Regular, stat, stat.size);
        let contents = ExactReader {
            inner: File::from(fd),
            remaining: stat.size,
        };
        self.append(&mut header, path, contents)?;
        self.stats.files += 1;
        self.stats.bytes += stat.size;
        Ok(())
    }

    // ---- tar output ----------------------------------------------------

    fn header(&self, kind: EntryType, stat: &EntryStat, size: u64) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(stat.mode);
        let (uid, gid) = if self.keep_owners {
            (stat.uid, stat.gid)
        } else {
            (0, 0)
        };
        header.set_uid(uid.into());
        header.set_gid(gid.into());
        header.set_size(size);
        header.set_mtime(self.mtime);
        header
    }

    fn append(&mut self, header: &mut Header, path: &[u8], data: impl Read) -> Result<()> {
        self.builder
            .append_data(header, as_path(path), data)
            .map_err(|e| self.io("add to the tar", &[], path, e))
    }

    /// A symlink or hardlink entry. Targets that fit the header go in byte
    /// for byte (the tar crate's own setter would normalise `a//b` and
    /// `a/./b`); longer ones use its GNU long-link extension.
    fn append_link(&mut self, header: &mut Header, path: &[u8], target: &[u8]) -> Result<()> {
        let slot = &mut header.as_old_mut().linkname;
        if target.len() <= slot.len() && !target.contains(&0) {
            slot[..target.len()].copy_from_slice(target);
            return self.append(header, path, io::empty());
        }
        self.builder
            .append_link(header, as_path(path), as_path(target))
            .map_err(|e| self.io("add to the tar", &[], path, e))
    }

    /// An empty regular file owned by root: whiteouts and opaque markers.
    fn append_empty_file(&mut self, path: &[u8]) -> Result<()> {
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(0);
        header.set_mtime(self.mtime);
        self.append(&mut header, path, io::empty())
    }

    /// A PAX extended header applying `records` to the next entry.
    fn append_pax(&mut self, records: &[(&str, &[u8])], for_path: &[u8]) -> Result<()> {
        let data: Vec<u8> = records
            .iter()
            .flat_map(|(key, value)| pax_record(key, value))
            .collect();
        let mut header = Header::new_ustar();
        header.as_old_mut().name[..PAX_HEADER_NAME.len()].copy_from_slice(PAX_HEADER_NAME);
        header.set_entry_type(EntryType::XHeader);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(data.len() as u64);
        header.set_mtime(self.mtime);
        header.set_cksum();
        self.builder
            .append(&header, data.as_slice())
            .map_err(|e| self.io("add to the tar", &[], for_path, e))
    }

    // ---- errors ----------------------------------------------------------

    fn io(&self, action: &'static str, prefix: &[u8], name: &[u8], source: io::Error) -> Error {
        Error::Pack {
            layer: self.layer.to_owned(),
            action,
            path: show(&[prefix, name].concat()),
            source,
        }
    }

    fn refuse(&self, prefix: &[u8], name: &[u8], why: &str) -> Error {
        Error::PackRefused {
            layer: self.layer.to_owned(),
            path: show(&[prefix, name].concat()),
            why: why.to_owned(),
        }
    }
}

/// One PAX record: `<length> <key>=<value>\n`, where the length counts the
/// whole record including its own digits.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = 1 + key.len() + 1 + value.len() + 1;
    let mut len = body;
    loop {
        let total = body + len.to_string().len();
        if total == len {
            break;
        }
        len = total;
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

/// Reads exactly `remaining` bytes: the size the tar header promised. A
/// file that shrank is an error rather than a corrupt archive.
struct ExactReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "file ended {} bytes early; it changed while being packed",
                    self.remaining
                ),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Whether overlayfs would treat the directory as opaque. Only `y` counts:
/// newer kernels write `x` for a directory that merely holds whiteouts.
fn is_opaque(dir: BorrowedFd<'_>) -> io::Result<bool> {
    for name in [OPAQUE_XATTR, USER_OPAQUE_XATTR] {
        if get_xattr(dir, name)?.is_some_and(|v| v == b"y") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// An extended attribute's value, or `None` when it is not set (or the
/// filesystem has none).
fn get_xattr(fd: BorrowedFd<'_>, name: &str) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    loop {
        match rustix::fs::fgetxattr(fd, name, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::NODATA) | Err(Errno::NOTSUP) => return Ok(None),
            Err(Errno::RANGE) => {
                let size = rustix::fs::fgetxattr(fd, name, &mut [])?;
                buf = vec![0u8; size.max(buf.len() * 2)];
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn as_path(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pax_records_count_their_own_length() {
        assert_eq!(pax_record("a", b"b"), b"6 a=b\n");
        // 10 bytes of body plus one digit would be 11, which has two: 12.
        assert_eq!(pax_record("key", b"xxxx"), b"12 key=xxxx\n");
        for len in 0..300 {
            let value = vec![b'v'; len];
            let record = pax_record("SCHILY.xattr.security.capability", &value);
            let text = String::from_utf8_lossy(&record);
            let declared: usize = text.split(' ').next().unwrap().parse().unwrap();
            assert_eq!(declared, record.len(), "value of {len} bytes");
        }
    }

    #[test]
    fn cache_keys_are_store_names() {
        let options = PackOptions {
            mtime: 1_700_000_000,
        };
        let hex = "a".repeat(64);
        assert_eq!(
            cache_key(&hex, &options),
            format!("oci-pack-v1-{hex}-1700000000")
        );
        let long = "b".repeat(200);
        let key = cache_key(&long, &options);
        assert!(key.len() <= MAX_CACHE_KEY_LEN, "{key}");
        assert_ne!(key, cache_key(&"c".repeat(200), &options));
        assert_ne!(
            cache_key(&hex, &options),
            cache_key(&hex, &PackOptions { mtime: 0 })
        );
    }

    #[test]
    fn layer_ids_are_checked() {
        for bad in ["", "../etc", "a/b", ".hidden", &"x".repeat(201)] {
            assert!(
                matches!(validate_layer_id(bad), Err(Error::InvalidLayerId { .. })),
                "{bad:?}"
            );
        }
        validate_layer_id(&"0".repeat(64)).unwrap();
        validate_layer_id("host-dir_1.2").unwrap();
    }

    /// Pins the bytes of a packed layer. If this fails, packing changed and
    /// every image kiln builds gets new digests: bump PACK_CACHE_PREFIX
    /// (and re-pin) only if that is intended. A different flate2 backend
    /// (zlib-ng instead of miniz_oxide) would also fail it.
    #[test]
    fn packed_bytes_are_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let staged = store.stage_dir().unwrap();
        let root = staged.path();
        std::fs::create_dir(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hostname"), "kiln\n").unwrap();
        std::fs::write(root.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
        std::os::unix::fs::symlink("run.sh", root.join("start")).unwrap();
        for (path, mode) in [("etc", 0o755), ("etc/hostname", 0o644), ("run.sh", 0o755)] {
            std::fs::set_permissions(root.join(path), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        store.commit_layer(staged, "pinned").unwrap();
        let packed = pack_layer(&store, "pinned", &PackOptions { mtime: 0 }).unwrap();
        assert_eq!(packed.media_type, LAYER_MEDIA_TYPE_GZIP);
        assert_eq!(
            (
                packed.diff_id.to_string(),
                packed.digest.to_string(),
                packed.size
            ),
            (
                "sha256:a0e487bc55a787c1ca233a06111c621dbde595a5ddb839c38deda06248248324"
                    .to_owned(),
                "sha256:d791ccb033f5f44e015f4f4d04ba5c804108f389ce62f1b4920a4eff5e22c117"
                    .to_owned(),
                175
            )
        );
    }
}
