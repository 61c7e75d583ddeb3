//! A metadata index for host directories: what a file's content hashed to,
//! remembered with the metadata it had then, so an unchanged tree is re-keyed
//! from `stat` alone instead of reading every byte again.
//!
//! An entry is trusted only when size, mtime, ctime, inode, device and mode
//! all still match, and only if the file's timestamps were clearly older
//! than the moment it was hashed: a file written in the same instant it was
//! read could change again without its mtime moving ("racy" entries, as git
//! calls them), so those are hashed again next time. The index can only save
//! work; a missing, stale or damaged index gives the same digest, slower.

use std::collections::HashMap;
use std::fs::Metadata;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

const MAGIC: &[u8; 10] = b"kiln-mdx1\n";
/// Timestamps within this distance of the hashing moment are not trusted.
const RACY_NS: i64 = 2_000_000_000;

/// The metadata a file had when it was hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    dev: u64,
    mode: u32,
}

impl Stamp {
    /// From a raw `stat`, as taken relative to a directory descriptor.
    pub(crate) fn of_stat(st: &rustix::fs::Stat) -> Stamp {
        Stamp {
            size: st.st_size as u64,
            mtime_ns: st.st_mtime as i64 * 1_000_000_000 + st.st_mtime_nsec as i64,
            ctime_ns: st.st_ctime as i64 * 1_000_000_000 + st.st_ctime_nsec as i64,
            ino: st.st_ino,
            dev: st.st_dev,
            mode: st.st_mode,
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn is_executable(&self) -> bool {
        self.mode & 0o100 != 0
    }

    pub(crate) fn of(meta: &Metadata) -> Stamp {
        Stamp {
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            ino: meta.ino(),
            dev: meta.dev(),
            mode: meta.mode(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    stamp: Stamp,
    hashed_at_ns: i64,
    content: [u8; 32],
}

/// FxHash: the index's keys are the user's own paths, so a keyed hash's
/// resistance to crafted collisions buys nothing, and SipHash over tens of
/// thousands of paths is a visible share of re-keying a large tree.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl std::fmt::Debug for FxHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FxHasher")
    }
}

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FxHasher>>;

/// Content hashes of one host directory's files, by relative path.
#[derive(Debug, Default)]
pub struct MetadataIndex {
    // Keyed by the path's bytes: hashing a Path walks its components.
    entries: FastMap<Box<[u8]>, Entry>,
    changed: bool,
}

impl MetadataIndex {
    pub fn new() -> MetadataIndex {
        MetadataIndex::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Loads an index; a missing or unreadable file gives an empty one.
    pub fn load(path: &Path) -> MetadataIndex {
        match std::fs::read(path) {
            Ok(bytes) => decode(&bytes).unwrap_or_else(|| {
                tracing::debug!(path = %path.display(), "metadata index unreadable; starting afresh");
                MetadataIndex::default()
            }),
            Err(_) => MetadataIndex::default(),
        }
    }

    /// Writes the index atomically (temp file, then rename) if it changed.
    pub fn save(&mut self, path: &Path) -> std::io::Result<()> {
        if !self.changed {
            return Ok(());
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::Builder::new().prefix(".mdx-").tempfile_in(dir)?;
        tmp.write_all(&self.encode())?;
        tmp.persist(path).map_err(|e| e.error)?;
        self.changed = false;
        Ok(())
    }

    /// The remembered content hash, if `meta` still matches and the entry
    /// is not racy.
    pub(crate) fn lookup(&self, rel: &Path, stamp: Stamp) -> Option<[u8; 32]> {
        let entry = self.entries.get(rel.as_os_str().as_bytes())?;
        let settled = entry.stamp.mtime_ns < entry.hashed_at_ns - RACY_NS
            && entry.stamp.ctime_ns < entry.hashed_at_ns - RACY_NS;
        (entry.stamp == stamp && settled).then_some(entry.content)
    }

    pub(crate) fn record(
        &mut self,
        rel: PathBuf,
        stamp: Stamp,
        hashed_at_ns: i64,
        content: [u8; 32],
    ) {
        self.entries.insert(
            rel.into_os_string().into_vec().into_boxed_slice(),
            Entry {
                stamp,
                hashed_at_ns,
                content,
            },
        );
        self.changed = true;
    }

    /// Drops entries for paths no longer in the tree.
    pub(crate) fn retain_paths(&mut self, keep: &std::collections::HashSet<&[u8]>) {
        let before = self.entries.len();
        self.entries.retain(|p, _| keep.contains(&**p));
        self.changed |= self.entries.len() != before;
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.entries.len() * 120);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for (bytes, e) in &self.entries {
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
            for n in [e.stamp.size, e.stamp.ino, e.stamp.dev] {
                out.extend_from_slice(&n.to_le_bytes());
            }
            for n in [e.stamp.mtime_ns, e.stamp.ctime_ns, e.hashed_at_ns] {
                out.extend_from_slice(&n.to_le_bytes());
            }
            out.extend_from_slice(&e.stamp.mode.to_le_bytes());
            out.extend_from_slice(&e.content);
        }
        let checksum = blake3::hash(&out);
        out.extend_from_slice(checksum.as_bytes());
        out
    }
}

pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn decode(bytes: &[u8]) -> Option<MetadataIndex> {
    let (body, checksum) = bytes.split_at(bytes.len().checked_sub(32)?);
    if blake3::hash(body).as_bytes() != checksum {
        return None;
    }
    let mut r = Reader(body.strip_prefix(MAGIC.as_slice())?);
    let count = r.u64()?;
    let mut entries =
        FastMap::with_capacity_and_hasher(count.min(1 << 24) as usize, Default::default());
    for _ in 0..count {
        let len = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
        let path: Box<[u8]> = r.take(len)?.into();
        let (size, ino, dev) = (r.u64()?, r.u64()?, r.u64()?);
        let (mtime_ns, ctime_ns, hashed_at_ns) = (r.i64()?, r.i64()?, r.i64()?);
        let mode = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
        let content: [u8; 32] = r.take(32)?.try_into().ok()?;
        entries.insert(
            path,
            Entry {
                stamp: Stamp {
                    size,
                    mtime_ns,
                    ctime_ns,
                    ino,
                    dev,
                    mode,
                },
                hashed_at_ns,
                content,
            },
        );
    }
    r.0.is_empty().then_some(MetadataIndex {
        entries,
        changed: false,
    })
}

use std::os::unix::ffi::{OsStrExt, OsStringExt};

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}
