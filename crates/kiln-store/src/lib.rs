//! The content-addressed store: everything kiln keeps on disk between runs.
//!
//! ```text
//! STORE/             0700: nothing below is reachable by other users
//!   lock               shared by every process using the store, exclusive for prune
//!   salt               32 random bytes (0600) keying secret hashes; never leaves the store
//!   blobs/sha256/HEX   immutable blobs (image layers, manifests, configs, step output)
//!   layers/ID/         immutable unpacked layer directories, in overlayfs format
//!   files/HASH[-x]     content objects that host-directory layers hardlink to
//!   index/ROOT         metadata indexes of host directories (speed only, never trusted for keys alone)
//!   ac/KEY             action cache: cache key -> result record, checksummed
//!   images/NAME.json   image tags: name -> manifest digest (+ the blobs it pins)
//!   volumes/NAME/      cache volumes (mutable by design, never part of a key)
//!   tmp/SESSION/       staging for one open store handle; removed when its owner is gone
//!   runs/              container bundles of running steps (owned by kiln-exec)
//!   runc/              the OCI runtime's state root
//! ```
//!
//! Invariants:
//! - Nothing is written in place. Every entry is built under `tmp/` and put in
//!   place with one `rename`, so a process killed at any point leaves either no
//!   entry or a complete one. When two processes build the same entry, the
//!   first rename wins and the loser discards its copy.
//! - A blob is verified against its digest every time it is opened for use;
//!   a corrupt blob is deleted and reported as [`Error::CorruptBlob`], so the
//!   caller rebuilds or refetches it. Action-cache records carry a checksum
//!   and are dropped when it does not match.
//! - Last use is recorded in each entry's mtime, which is what `prune` orders by.
//! - The store never interprets image formats: callers tell it which blobs an
//!   image tag pins.

mod digest;
mod error;
mod gc;
mod lock;
mod private;

use std::fs::{self, File};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use digest::{Digest, DigestWriter};
pub use error::{Error, Result};
pub use gc::{KindUsage, PruneOptions, PruneReport, Usage};
pub use lock::FileLock;
pub use private::ensure_private_dir;

use error::IoContext;

const AC_MAGIC: &str = "kiln-ac-v1";

/// An open store. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    salt: [u8; 32],
    session_tmp: PathBuf,
    // Held for the life of the handle: a shared lock on STORE/lock keeps
    // prune out, and an exclusive lock on our tmp session marks it live.
    store_lock: FileLock,
    _session_lock: FileLock,
}

impl Store {
    /// The store location when none is given: `KILN_STORE`, else
    /// `/var/lib/kiln` for root, else `$XDG_DATA_HOME/kiln` (or
    /// `~/.local/share/kiln`).
    pub fn default_root() -> PathBuf {
        if let Some(dir) = std::env::var_os("KILN_STORE").filter(|v| !v.is_empty()) {
            return PathBuf::from(dir);
        }
        if rustix::process::geteuid().is_root() {
            return PathBuf::from("/var/lib/kiln");
        }
        if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(xdg).join("kiln");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
        PathBuf::from(home).join(".local/share/kiln")
    }

    /// Opens (creating if needed) the store at `root`, and clears staging
    /// areas left by processes that died.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        // The root is what keeps other local users out: layers hold setuid
        // binaries from images, files/ copies of private host files.
        ensure_private_dir(&root)?;
        for dir in [
            "blobs/sha256",
            "layers",
            "files",
            "index",
            "ac",
            "images",
            "volumes",
            "tmp",
            "runs",
            "runc",
        ] {
            let path = root.join(dir);
            fs::create_dir_all(&path).ctx("create store directory", &path)?;
        }
        let store_lock = FileLock::shared(&root.join("lock"))?;
        let salt = load_or_create_salt(&root.join("salt"))?;
        clean_dead_sessions(&root.join("tmp"));
        let (session_tmp, session_lock) = new_session(&root.join("tmp"))?;
        Ok(Store {
            root,
            salt,
            session_tmp,
            store_lock,
            _session_lock: session_lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The per-store key for hashing secret values into cache keys: a key
    /// computed in one store reveals nothing usable in another.
    pub fn secret_salt(&self) -> &[u8; 32] {
        &self.salt
    }

    /// Content objects shared by host-directory layers (see kiln-fs).
    pub fn files_dir(&self) -> PathBuf {
        self.root.join("files")
    }

    /// Where the metadata index of host directory `host_root` is kept. The
    /// host path only names the file; it never enters a key.
    pub fn index_path(&self, host_root: &Path) -> PathBuf {
        let id = blake3::hash(host_root.as_os_str().as_encoded_bytes()).to_hex();
        self.root.join("index").join(&id[..32])
    }

    /// Where container bundles of running steps live.
    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }

    /// The OCI runtime's `--root` for kiln's containers.
    pub fn runtime_state_dir(&self) -> PathBuf {
        self.root.join("runc")
    }

    /// A fresh empty directory in the store's filesystem for building an
    /// entry; removed when dropped unless committed.
    pub fn stage_dir(&self) -> Result<Staged> {
        let dir = tempfile::Builder::new()
            .prefix("d-")
            .tempdir_in(&self.session_tmp)
            .ctx("create staging directory in", &self.session_tmp)?;
        Ok(Staged { dir: Some(dir) })
    }

    // ---- blobs -------------------------------------------------------

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Whether the blob is present. Does not verify it: use
    /// [`Store::open_blob`] before trusting its bytes.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Starts writing a blob; bytes are hashed as they go.
    pub fn blob_writer(&self) -> Result<BlobWriter<'_>> {
        let file = tempfile::Builder::new()
            .prefix("b-")
            .tempfile_in(&self.session_tmp)
            .ctx("create staging file in", &self.session_tmp)?;
        Ok(BlobWriter {
            store: self,
            file,
            digest: DigestWriter::default(),
        })
    }

    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest> {
        let mut writer = self.blob_writer()?;
        writer
            .write_all(bytes)
            .ctx("write blob", &self.session_tmp)?;
        writer.commit(None)
    }

    /// Copies `reader` into the store, failing if it does not hash to
    /// `expected` (when given). Nothing is stored on a mismatch.
    pub fn put_blob_from(
        &self,
        reader: &mut dyn Read,
        expected: Option<&Digest>,
    ) -> Result<Digest> {
        if let Some(expected) = expected {
            if self.verify_blob(expected).is_ok() {
                return Ok(expected.clone());
            }
        }
        let mut writer = self.blob_writer()?;
        std::io::copy(reader, &mut writer).ctx("copy blob into", &self.session_tmp)?;
        writer.commit(expected)
    }

    /// Moves a file the caller wrote in [`Store::staging_root`] into place
    /// as the blob `digest`, which the caller computed while writing it.
    /// No copy and no fsync: every read of a blob checks it against its
    /// digest ([`Store::open_blob`]), so one damaged by a power cut is
    /// found and removed, and what referred to it is rebuilt. A blob
    /// already there is replaced by the same bytes, which also repairs one
    /// that was damaged.
    pub fn adopt_blob(&self, staged: &Path, digest: &Digest) -> Result<()> {
        if !staged.starts_with(&self.session_tmp) {
            return Err(Error::Io {
                action: "adopt a blob from outside the store's staging area",
                path: staged.to_owned(),
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            });
        }
        set_mode(staged, 0o644)?;
        let target = self.blob_path(digest);
        fs::rename(staged, &target).ctx("put blob in place", &target)
    }

    /// Where this handle stages what it builds: in the store's filesystem
    /// (so entries are renamed into place) and removed with the handle.
    pub fn staging_root(&self) -> &Path {
        &self.session_tmp
    }

    /// Opens a blob after checking its bytes against its digest. A corrupt
    /// blob is removed so the next attempt refetches or rebuilds it.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.blob_path(digest);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::MissingBlob(digest.to_string()))
            }
            Err(e) => return Err(e).ctx("open blob", &path),
        };
        let actual = hash_reader(&mut file).ctx("read blob", &path)?;
        if &actual != digest {
            tracing::warn!(%digest, %actual, "corrupt blob removed from the store");
            let _ = fs::remove_file(&path);
            return Err(Error::CorruptBlob {
                digest: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        file.rewind().ctx("rewind blob", &path)?;
        touch(&path);
        Ok(file)
    }

    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut file = self.open_blob(digest)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .ctx("read blob", self.blob_path(digest))?;
        Ok(bytes)
    }

    /// Verifies a blob without reading it into memory.
    pub fn verify_blob(&self, digest: &Digest) -> Result<()> {
        self.open_blob(digest).map(drop)
    }

    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.blob_path(digest)).ok().map(|m| m.len())
    }

    // ---- layers --------------------------------------------------------

    pub fn layer_path(&self, id: &str) -> PathBuf {
        self.root.join("layers").join(id)
    }

    pub fn has_layer(&self, id: &str) -> bool {
        self.layer_path(id).is_dir()
    }

    /// Marks a layer as used now, for least-recently-used pruning.
    pub fn touch_layer(&self, id: &str) {
        touch(&self.layer_path(id));
    }

    /// Puts a fully built directory in place as layer `id`. If another
    /// process committed the same layer first, ours is discarded: layers are
    /// content-addressed, so both are the same.
    pub fn commit_layer(&self, staged: Staged, id: &str) -> Result<PathBuf> {
        validate_name("layer", id)?;
        let target = self.layer_path(id);
        let source = staged.into_path();
        // A staged dir has the tempdir's 0700 mode; layers are read by
        // containers running as any user.
        set_mode(&source, 0o755)?;
        match fs::rename(&source, &target) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ENOTEMPTY)) => {
                remove_tree(&source);
            }
            Err(e) => {
                remove_tree(&source);
                return Err(e).ctx("commit layer", &target);
            }
        }
        touch(&target);
        Ok(target)
    }

    // ---- action cache ----------------------------------------------------

    fn ac_path(&self, key: &str) -> PathBuf {
        self.root.join("ac").join(key)
    }

    /// The record stored under `key`, if any and intact. A record that fails
    /// its checksum (torn by a crash, or damaged on disk) is removed.
    pub fn ac_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        validate_name("cache key", key)?;
        let path = self.ac_path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx("read action cache entry", &path),
        };
        match decode_ac(&bytes) {
            Some(payload) => {
                touch(&path);
                Ok(Some(payload.to_vec()))
            }
            None => {
                tracing::warn!(key, "corrupt action cache entry removed");
                let _ = fs::remove_file(&path);
                Ok(None)
            }
        }
    }

    /// Records `payload` under `key`, without an fsync: every record carries
    /// a checksum and [`Store::ac_get`] drops one that fails it, so a record
    /// torn or lost by a power cut is a cache miss, never a wrong result.
    /// (A kill of the process loses nothing: the page cache outlives it.)
    pub fn ac_put(&self, key: &str, payload: &[u8]) -> Result<()> {
        validate_name("cache key", key)?;
        let mut record = format!("{AC_MAGIC} {}\n", blake3::hash(payload).to_hex()).into_bytes();
        record.extend_from_slice(payload);
        self.write_staged(&self.ac_path(key), &record, false)
    }

    /// Forgets one action-cache entry (its result turned out unusable).
    pub fn ac_remove(&self, key: &str) {
        let _ = fs::remove_file(self.ac_path(key));
    }

    // ---- image tags --------------------------------------------------------

    fn tag_path(&self, name: &str) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{}.json", escape_name(name)))
    }

    /// Records `name` -> `manifest`, pinning `blobs` (the manifest, config
    /// and layers) so that pruning keeps them while the tag exists.
    pub fn tag_image(&self, name: &str, manifest: &Digest, blobs: &[Digest]) -> Result<()> {
        if name.is_empty() || name.len() > 512 {
            return Err(Error::InvalidName {
                kind: "image",
                name: name.to_owned(),
                why: "must be 1 to 512 characters",
            });
        }
        let record = ImageTag {
            name: name.to_owned(),
            manifest: manifest.clone(),
            blobs: blobs.to_vec(),
        };
        let bytes = serde_json::to_vec_pretty(&record).map_err(|e| Error::BadIndex {
            path: self.tag_path(name),
            why: e.to_string(),
        })?;
        self.write_atomically(&self.tag_path(name), &bytes)
    }

    pub fn resolve_tag(&self, name: &str) -> Result<Option<ImageTag>> {
        let path = self.tag_path(name);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::BadIndex {
                    path,
                    why: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("read image tag", &path),
        }
    }

    pub fn list_tags(&self) -> Result<Vec<ImageTag>> {
        let dir = self.root.join("images");
        let mut tags = Vec::new();
        for entry in fs::read_dir(&dir).ctx("list", &dir)? {
            let path = entry.ctx("list", &dir)?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let bytes = fs::read(&path).ctx("read image tag", &path)?;
                match serde_json::from_slice::<ImageTag>(&bytes) {
                    Ok(tag) => tags.push(tag),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "unreadable image tag skipped")
                    }
                }
            }
        }
        tags.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(tags)
    }

    pub fn untag_image(&self, name: &str) -> Result<bool> {
        let path = self.tag_path(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).ctx("remove image tag", &path),
        }
    }

    // ---- cache volumes ---------------------------------------------------

    /// The directory backing cache volume `name`, created on first use.
    pub fn volume_dir(&self, name: &str) -> Result<PathBuf> {
        validate_name("cache volume", name)?;
        let path = self.root.join("volumes").join(name);
        fs::create_dir_all(&path).ctx("create cache volume", &path)?;
        touch(&path);
        Ok(path)
    }

    /// Exclusive use of a cache volume, for steps that ask for a locked mount.
    pub fn lock_volume(&self, name: &str) -> Result<FileLock> {
        validate_name("cache volume", name)?;
        FileLock::exclusive(&self.root.join("volumes").join(format!(".{name}.lock")))
    }

    // ---- helpers ----------------------------------------------------------

    /// Writes a small file by staging, fsync and rename.
    pub fn write_atomically(&self, target: &Path, bytes: &[u8]) -> Result<()> {
        self.write_staged(target, bytes, true)
    }

    /// Writes a small file by staging and rename, fsyncing it first if
    /// `sync`.
    fn write_staged(&self, target: &Path, bytes: &[u8], sync: bool) -> Result<()> {
        let mut file = tempfile::Builder::new()
            .prefix("f-")
            .tempfile_in(&self.session_tmp)
            .ctx("create staging file in", &self.session_tmp)?;
        file.write_all(bytes).ctx("write", file.path().to_owned())?;
        if sync {
            file.as_file()
                .sync_all()
                .ctx("sync", file.path().to_owned())?;
        }
        file.persist(target)
            .map_err(|e| e.error)
            .ctx("put in place", target)?;
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        remove_tree(&self.session_tmp);
    }
}

/// An image tag record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageTag {
    pub name: String,
    pub manifest: Digest,
    pub blobs: Vec<Digest>,
}

/// A directory being built in the store's staging area.
#[derive(Debug)]
pub struct Staged {
    dir: Option<tempfile::TempDir>,
}

impl Staged {
    pub fn path(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).unwrap_or(Path::new(""))
    }

    fn into_path(mut self) -> PathBuf {
        self.dir.take().map(|d| d.keep()).unwrap_or_default()
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // TempDir removes itself, whiteout device nodes included.
        drop(self.dir.take());
    }
}

/// Writes one blob; [`BlobWriter::commit`] verifies and puts it in place.
pub struct BlobWriter<'a> {
    store: &'a Store,
    file: tempfile::NamedTempFile,
    digest: DigestWriter,
}

impl BlobWriter<'_> {
    pub fn commit(mut self, expected: Option<&Digest>) -> Result<Digest> {
        self.file
            .flush()
            .ctx("write blob", self.file.path().to_owned())?;
        let actual = self.digest.finish();
        if let Some(expected) = expected {
            if expected != &actual {
                return Err(Error::DigestMismatch {
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        let target = self.store.blob_path(&actual);
        self.file
            .as_file()
            .sync_all()
            .ctx("sync blob", self.file.path().to_owned())?;
        let staged = self.file.into_temp_path();
        set_mode(&staged, 0o644)?;
        staged
            .persist(&target)
            .map_err(|e| e.error)
            .ctx("put blob in place", &target)?;
        Ok(actual)
    }

    pub fn len(&self) -> u64 {
        self.digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digest.is_empty()
    }
}

impl Write for BlobWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.digest.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn hash_reader(reader: &mut dyn Read) -> std::io::Result<Digest> {
    let mut digest = DigestWriter::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(digest.finish());
        }
        digest.update(&buf[..n]);
    }
}

fn decode_ac(bytes: &[u8]) -> Option<&[u8]> {
    let newline = bytes.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&bytes[..newline]).ok()?;
    let checksum = header.strip_prefix(AC_MAGIC)?.strip_prefix(' ')?;
    let payload = &bytes[newline + 1..];
    (blake3::hash(payload).to_hex().as_str() == checksum).then_some(payload)
}

fn load_or_create_salt(path: &Path) -> Result<[u8; 32]> {
    if let Ok(bytes) = fs::read(path) {
        if let Ok(salt) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(salt);
        }
        tracing::warn!(path = %path.display(), "store salt unreadable; making a new one (secret-keyed cache entries will miss once)");
    }
    let mut salt = [0u8; 32];
    getrandom::getrandom(&mut salt).map_err(|e| Error::Io {
        action: "generate salt for",
        path: path.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    // tempfile creates 0600 files, which is what the salt needs.
    let mut staging = tempfile::Builder::new()
        .prefix(".salt-")
        .tempfile_in(dir)
        .ctx("create salt in", dir)?;
    staging
        .write_all(&salt)
        .ctx("write", staging.path().to_owned())?;
    staging
        .as_file()
        .sync_all()
        .ctx("sync", staging.path().to_owned())?;
    // Two processes opening a new store race here; the no-clobber link fails
    // for the loser, which then reads the winner's salt so both agree.
    match staging.persist_noclobber(path) {
        Ok(_) => Ok(salt),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
            let bytes = fs::read(path).ctx("read", path)?;
            <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| Error::BadIndex {
                path: path.to_owned(),
                why: "salt must be 32 bytes".into(),
            })
        }
        Err(e) => Err(e.error).ctx("put salt in place", path),
    }
}

/// Creates this handle's staging session. It is built and locked under a
/// hidden name and only then renamed into view, so a cleaner never sees a
/// session that is live but not yet locked.
fn new_session(tmp: &Path) -> Result<(PathBuf, FileLock)> {
    let hidden = tempfile::Builder::new()
        .prefix(".new-")
        .tempdir_in(tmp)
        .ctx("create staging directory in", tmp)?
        .keep();
    let lock = FileLock::exclusive(&hidden.join(".lock"))?;
    let name = hidden
        .file_name()
        .map(|n| n.to_string_lossy().replacen(".new-", "s-", 1))
        .unwrap_or_default();
    let session = tmp.join(name);
    fs::rename(&hidden, &session).ctx("create staging directory", &session)?;
    Ok((session, lock))
}

/// Removes staging sessions whose owning process is gone (its flock is free).
fn clean_dead_sessions(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let dead = if name.starts_with("s-") {
            FileLock::try_exclusive_existing(&path.join(".lock")).unwrap_or(false)
        } else {
            // A session killed before it was renamed into view: its owner
            // may still be about to rename it, so wait until it is clearly old.
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 3600)
        };
        if dead {
            remove_tree(&path);
        }
    }
}

pub(crate) fn remove_tree(path: &Path) {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    };
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "could not remove");
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).ctx("set permissions on", path)
}

/// Records a use of an entry by setting its mtime to now.
pub(crate) fn touch(path: &Path) {
    let _ = filetime::set_symlink_file_times(
        path,
        filetime::FileTime::from_system_time(SystemTime::now()),
        filetime::FileTime::from_system_time(SystemTime::now()),
    );
}

/// Names used as file names inside the store (layer ids, cache keys,
/// volume names): no separators, no dot-files. Public so that code which
/// builds store paths from names it was given can check them first.
pub fn validate_name(kind: &'static str, name: &str) -> Result<()> {
    let why = if name.is_empty() || name.len() > 200 {
        Some("must be 1 to 200 characters")
    } else if name.starts_with('.') {
        Some("must not start with '.'")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        Some("only letters, digits, '-', '_' and '.' are allowed")
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::InvalidName {
            kind,
            name: name.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

/// A reversible, file-name-safe spelling of an image name.
fn escape_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.starts_with('.') {
        out.replace_range(0..1, "%2E");
    }
    out
}
