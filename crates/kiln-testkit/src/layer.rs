//! Layer tarballs built in memory, including deliberately hostile ones.
//!
//! The `tar` crate refuses to write paths with `..` or a leading `/`, which
//! is exactly what the unpacker's tests need, so headers are filled in byte
//! by byte here and long names go in PAX extended headers.

use std::io::Write;
use std::path::Path;

/// How a layer (or any blob) is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Gzip, Compression::Zstd];

    /// The OCI media type of a layer tar stored with this compression.
    pub fn layer_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// Compresses `bytes`. Output is deterministic (gzip header mtime is 0), so
/// fixtures have stable digests.
pub fn compress(bytes: &[u8], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::None => bytes.to_vec(),
        Compression::Gzip => {
            let mut enc = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::fast());
            enc.write_all(bytes).expect("gzip into memory");
            enc.finish().expect("gzip into memory")
        }
        Compression::Zstd => zstd::encode_all(bytes, 3).expect("zstd into memory"),
    }
}

/// Undoes [`compress`], detecting the format by magic bytes.
pub fn decompress(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .expect("gunzip fixture");
    } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        out = zstd::decode_all(bytes).expect("unzstd fixture");
    } else {
        out = bytes.to_vec();
    }
    out
}

/// Tar type flags, for [`RawEntry::entry_type`].
pub mod typeflag {
    pub const REGULAR: u8 = b'0';
    pub const HARDLINK: u8 = b'1';
    pub const SYMLINK: u8 = b'2';
    pub const CHAR: u8 = b'3';
    pub const BLOCK: u8 = b'4';
    pub const DIR: u8 = b'5';
    pub const FIFO: u8 = b'6';
}

/// One tar member exactly as it will be written: no validation at all, so
/// tests can describe any hostile entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntry {
    pub path: Vec<u8>,
    pub entry_type: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub link_name: Vec<u8>,
    pub data: Vec<u8>,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Extra PAX records (e.g. `SCHILY.xattr.user.x`), written in an `x`
    /// header before the entry.
    pub pax: Vec<(String, Vec<u8>)>,
}

/// The mtime given to entries unless a test sets one (fixed, so fixtures are
/// reproducible byte for byte).
pub const DEFAULT_MTIME: u64 = 1_600_000_000;

impl RawEntry {
    pub fn new(path: impl AsRef<[u8]>, entry_type: u8) -> RawEntry {
        let mode = match entry_type {
            typeflag::DIR => 0o755,
            typeflag::SYMLINK => 0o777,
            _ => 0o644,
        };
        RawEntry {
            path: path.as_ref().to_vec(),
            entry_type,
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            link_name: Vec::new(),
            data: Vec::new(),
            dev_major: 0,
            dev_minor: 0,
            pax: Vec::new(),
        }
    }
}

/// Builds a layer tar entry by entry, in the order given.
///
/// ```ignore
/// let tar = LayerBuilder::new()
///     .dir("etc", 0o755)
///     .file("etc/hostname", b"kiln\n", 0o644)
///     .symlink("etc/localtime", "/usr/share/zoneinfo/UTC")
///     .whiteout("etc/motd")
///     .build(Compression::Gzip);
/// ```
#[derive(Clone, Debug, Default)]
pub struct LayerBuilder {
    entries: Vec<RawEntry>,
}

impl LayerBuilder {
    pub fn new() -> LayerBuilder {
        LayerBuilder::default()
    }

    pub fn entries(&self) -> &[RawEntry] {
        &self.entries
    }

    pub fn dir(self, path: impl AsRef<[u8]>, mode: u32) -> LayerBuilder {
        let mut e = RawEntry::new(path, typeflag::DIR);
        e.mode = mode;
        self.raw_entry(e)
    }

    pub fn file(self, path: impl AsRef<[u8]>, bytes: impl AsRef<[u8]>, mode: u32) -> LayerBuilder {
        let mut e = RawEntry::new(path, typeflag::REGULAR);
        e.mode = mode;
        e.data = bytes.as_ref().to_vec();
        self.raw_entry(e)
    }

    pub fn symlink(self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> LayerBuilder {
        let mut e = RawEntry::new(path, typeflag::SYMLINK);
        e.link_name = target.as_ref().to_vec();
        self.raw_entry(e)
    }

    pub fn hardlink(self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> LayerBuilder {
        let mut e = RawEntry::new(path, typeflag::HARDLINK);
        e.link_name = target.as_ref().to_vec();
        self.raw_entry(e)
    }

    pub fn fifo(self, path: impl AsRef<[u8]>, mode: u32) -> LayerBuilder {
        let mut e = RawEntry::new(path, typeflag::FIFO);
        e.mode = mode;
        self.raw_entry(e)
    }

    pub fn char_device(self, path: impl AsRef<[u8]>, major: u32, minor: u32) -> LayerBuilder {
        let mut e = RawEntry::new(path, typeflag::CHAR);
        e.dev_major = major;
        e.dev_minor = minor;
        self.raw_entry(e)
    }

    pub fn block_device(self, path: impl AsRef<[u8]>, major: u32, minor: u32) -> LayerBuilder {
        let mut e = RawEntry::new(path, typeflag::BLOCK);
        e.dev_major = major;
        e.dev_minor = minor;
        self.raw_entry(e)
    }

    /// An OCI whiteout deleting `path` from lower layers: writes the entry
    /// `dir/.wh.name`.
    pub fn whiteout(self, path: &str) -> LayerBuilder {
        let (dir, name) = match path.trim_end_matches('/').rsplit_once('/') {
            Some((dir, name)) => (format!("{dir}/"), name),
            None => (String::new(), path.trim_end_matches('/')),
        };
        self.raw_entry(RawEntry::new(format!("{dir}.wh.{name}"), typeflag::REGULAR))
    }

    /// An OCI opaque marker for `dir`: writes `dir/.wh..wh..opq`.
    pub fn opaque(self, dir: &str) -> LayerBuilder {
        let dir = dir.trim_end_matches('/');
        let path = if dir.is_empty() {
            ".wh..wh..opq".to_owned()
        } else {
            format!("{dir}/.wh..wh..opq")
        };
        self.raw_entry(RawEntry::new(path, typeflag::REGULAR))
    }

    /// Appends an entry exactly as described, hostile or not.
    pub fn raw_entry(mut self, entry: RawEntry) -> LayerBuilder {
        self.entries.push(entry);
        self
    }

    /// Sets owner of the last entry.
    pub fn owner(mut self, uid: u64, gid: u64) -> LayerBuilder {
        if let Some(e) = self.entries.last_mut() {
            e.uid = uid;
            e.gid = gid;
        }
        self
    }

    /// Sets the mtime of the last entry.
    pub fn mtime(mut self, mtime: u64) -> LayerBuilder {
        if let Some(e) = self.entries.last_mut() {
            e.mtime = mtime;
        }
        self
    }

    /// Adds an extended attribute (as a `SCHILY.xattr.` PAX record) to the
    /// last entry.
    pub fn xattr(self, name: &str, value: impl AsRef<[u8]>) -> LayerBuilder {
        self.pax(&format!("SCHILY.xattr.{name}"), value)
    }

    /// Adds a raw PAX record to the last entry.
    pub fn pax(mut self, key: &str, value: impl AsRef<[u8]>) -> LayerBuilder {
        if let Some(e) = self.entries.last_mut() {
            e.pax.push((key.to_owned(), value.as_ref().to_vec()));
        }
        self
    }

    /// The uncompressed tar, then compressed as asked.
    pub fn build(&self, compression: Compression) -> Vec<u8> {
        compress(&self.tar(), compression)
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for entry in &self.entries {
            write_entry(&mut out, entry);
        }
        // End of archive: two zero blocks.
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

fn write_entry(out: &mut Vec<u8>, e: &RawEntry) {
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    if e.path.len() > 100 {
        pax.push(("path".into(), e.path.clone()));
    }
    if e.link_name.len() > 100 {
        pax.push(("linkpath".into(), e.link_name.clone()));
    }
    pax.extend(e.pax.iter().cloned());
    if !pax.is_empty() {
        let mut records = Vec::new();
        for (key, value) in &pax {
            records.extend_from_slice(&pax_record(key, value));
        }
        let mut name = b"PaxHeaders/".to_vec();
        name.extend_from_slice(&e.path[..e.path.len().min(80)]);
        let header = header(&name, b'x', 0o644, 0, 0, 0, b"", records.len() as u64, 0, 0);
        push_member(out, &header, &records);
    }
    let header = header(
        &e.path[..e.path.len().min(100)],
        e.entry_type,
        e.mode,
        e.uid,
        e.gid,
        e.mtime,
        &e.link_name[..e.link_name.len().min(100)],
        e.data.len() as u64,
        e.dev_major,
        e.dev_minor,
    );
    push_member(out, &header, &e.data);
}

fn push_member(out: &mut Vec<u8>, header: &tar::Header, data: &[u8]) {
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

#[allow(clippy::too_many_arguments)]
fn header(
    name: &[u8],
    entry_type: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link_name: &[u8],
    size: u64,
    dev_major: u32,
    dev_minor: u32,
) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(mtime);
    h.set_size(size);
    h.set_entry_type(tar::EntryType::new(entry_type));
    if matches!(entry_type, typeflag::CHAR | typeflag::BLOCK) {
        // Only fails for non-ustar headers, and this one is ustar.
        h.set_device_major(dev_major).expect("ustar header");
        h.set_device_minor(dev_minor).expect("ustar header");
    }
    {
        // Written directly: set_path would refuse the hostile names tests need.
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name);
        old.linkname = [0; 100];
        old.linkname[..link_name.len()].copy_from_slice(link_name);
    }
    h.set_cksum();
    h
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // The length prefix counts itself, so find the fixed point.
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while base + len.to_string().len() != len {
        len = base + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

/// A layer holding what [`crate::busybox_rootfs`] writes, with normalised
/// owners and mtimes so its digest is stable across runs on one host.
pub fn busybox_layer(compression: Compression) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir for busybox rootfs");
    crate::busybox_rootfs(dir.path());
    layer_from_dir(dir.path()).build(compression)
}

/// Entries for every file under `root`, sorted by path, owned by root, with
/// [`DEFAULT_MTIME`]. `tmp` gets mode 1777 as in any real root filesystem.
pub fn layer_from_dir(root: &Path) -> LayerBuilder {
    add_dir(LayerBuilder::new(), root, "")
}

fn add_dir(mut builder: LayerBuilder, dir: &Path, prefix: &str) -> LayerBuilder {
    use std::os::unix::fs::PermissionsExt;
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("read fixture dir")
        .map(|e| e.expect("read fixture dir entry").file_name())
        .collect();
    names.sort();
    for name in names {
        let name = name.to_str().expect("utf-8 fixture name").to_owned();
        let path = dir.join(&name);
        let rel = format!("{prefix}{name}");
        let meta = std::fs::symlink_metadata(&path).expect("stat fixture");
        builder = if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).expect("read fixture link");
            builder.symlink(&rel, target.to_str().expect("utf-8 link target"))
        } else if meta.is_dir() {
            let mode = if rel == "tmp" { 0o1777 } else { 0o755 };
            add_dir(
                builder.dir(format!("{rel}/"), mode),
                &path,
                &format!("{rel}/"),
            )
        } else {
            let bytes = std::fs::read(&path).expect("read fixture file");
            builder.file(&rel, bytes, meta.permissions().mode() & 0o7777)
        };
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_back(tar_bytes: &[u8]) -> Vec<(Vec<u8>, u8, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path_bytes().to_vec(),
                    e.header().entry_type().as_byte(),
                    e.link_name_bytes().map(|l| l.to_vec()).unwrap_or_default(),
                )
            })
            .collect()
    }

    #[test]
    fn hostile_names_are_written_verbatim() {
        let long = format!("d/{}", "x".repeat(300));
        let tar = LayerBuilder::new()
            .file("../escape", b"x", 0o644)
            .file("/abs", b"x", 0o644)
            .symlink("link", "/")
            .hardlink("h", "../../etc/passwd")
            .char_device("null", 1, 3)
            .whiteout("a/b")
            .opaque("a")
            .file(&long, b"long", 0o644)
            .tar();
        let entries = read_back(&tar);
        let paths: Vec<_> = entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.0).into_owned())
            .collect();
        assert_eq!(
            paths,
            [
                "../escape",
                "/abs",
                "link",
                "h",
                "null",
                "a/.wh.b",
                "a/.wh..wh..opq",
                long.as_str()
            ]
        );
        assert_eq!(entries[3].2, b"../../etc/passwd");
        assert_eq!(entries[4].1, typeflag::CHAR);
    }

    #[test]
    fn compression_round_trips_and_is_deterministic() {
        let layer = LayerBuilder::new().file("a", b"hello", 0o644);
        for c in Compression::ALL {
            let bytes = layer.build(c);
            assert_eq!(bytes, layer.build(c), "{c:?} output must be reproducible");
            assert_eq!(decompress(&bytes), layer.tar());
        }
    }

    #[test]
    fn xattrs_and_owner_reach_the_tar() {
        let tar = LayerBuilder::new()
            .file("f", b"", 0o4755)
            .owner(1000, 1001)
            .mtime(42)
            .xattr("user.k", b"v")
            .tar();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.header().uid().unwrap(), 1000);
        assert_eq!(entry.header().gid().unwrap(), 1001);
        assert_eq!(entry.header().mtime().unwrap(), 42);
        assert_eq!(entry.header().mode().unwrap(), 0o4755);
        let pax: Vec<_> = entry
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|r| r.unwrap().key().unwrap().to_owned())
            .collect();
        assert_eq!(pax, ["SCHILY.xattr.user.k"]);
    }

    #[test]
    fn busybox_layer_has_the_rootfs() {
        let tar = busybox_layer(Compression::None);
        let paths: Vec<_> = read_back(&tar)
            .into_iter()
            .map(|e| String::from_utf8_lossy(&e.0).into_owned())
            .collect();
        for want in [
            "bin/",
            "bin/busybox",
            "bin/sh",
            "etc/passwd",
            "etc/group",
            "tmp/",
            "root/",
        ] {
            assert!(
                paths.iter().any(|p| p == want),
                "{want} missing from {paths:?}"
            );
        }
        assert_eq!(
            busybox_layer(Compression::Gzip),
            busybox_layer(Compression::Gzip)
        );
    }
}
