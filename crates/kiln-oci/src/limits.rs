//! Bounds on what unpacking a layer may produce, against decompression
//! bombs: a few kilobytes of zstd or gzip can expand to terabytes of zeros,
//! and a tar can declare any number of entries or any size.
//!
//! A layer's size is counted as it is read: every byte of the uncompressed
//! tar stream (headers, file contents, padding and anything after the
//! end-of-archive blocks), plus the holes that GNU sparse entries expand to
//! on disk. The count stops the read the moment a limit is passed, so a
//! bomb never gets more than the limit onto disk.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kiln_store::{Digest, DigestWriter};

use crate::error::{Error, Result};

/// Caps on how much unpacking may produce, per layer and per image.
///
/// The defaults ([`UnpackLimits::default`]) are the built-in values below,
/// each overridden by its environment variable when that is set:
///
/// | field               | default         | environment variable     |
/// |---------------------|-----------------|--------------------------|
/// | `max_layer_bytes`   | 8 GiB           | `KILN_MAX_LAYER_BYTES`   |
/// | `max_image_bytes`   | 32 GiB          | `KILN_MAX_IMAGE_BYTES`   |
/// | `max_layer_entries` | 2097152 (2^21)  | `KILN_MAX_LAYER_ENTRIES` |
///
/// Values are byte counts, optionally with a binary suffix (`512M`, `8G`,
/// `8GiB`, `1T`; `k`, `m`, `g` and `t` are powers of 1024, as for
/// `docker run --memory`), or `unlimited`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Most bytes one layer may unpack to (its uncompressed tar, plus
    /// sparse holes).
    pub max_layer_bytes: u64,
    /// Most bytes the layers of one image may unpack to together.
    pub max_image_bytes: u64,
    /// Most tar members one layer may hold (each becomes an inode, and
    /// empty ones compress to almost nothing).
    pub max_layer_entries: u64,
}

/// Most bytes of extension headers (PAX records, GNU long names, sparse
/// maps) one entry may have. The tar reader holds them in memory; real
/// ones are a few kilobytes (a path is at most 4096 bytes, and Linux caps an
/// inode's extended attributes at 64 KiB), so this is not configurable.
pub const MAX_ENTRY_HEADER_BYTES: u64 = 1 << 20;

impl UnpackLimits {
    /// 8 GiB: about twice the biggest single layers of mainstream heavy
    /// images (CUDA and ML framework layers run to a few GiB unpacked),
    /// while a bomb is stopped long before it fills the disk of a CI
    /// machine with a few hundred GiB.
    pub const DEFAULT_MAX_LAYER_BYTES: u64 = 8 << 30;
    /// 32 GiB: development images for CUDA and ML frameworks reach well
    /// over 10 GiB unpacked, and they must run without configuration; four
    /// layers at the per-layer cap are as much as any image is allowed.
    pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 32 << 30;
    /// 2^21 (2097152): the largest real layers (language package trees, TeX
    /// distributions) hold a few hundred thousand entries, and two million
    /// empty files are what it takes to exhaust the inodes of a typical
    /// ext4 disk of a few tens of GiB.
    pub const DEFAULT_MAX_LAYER_ENTRIES: u64 = 1 << 21;

    pub const MAX_LAYER_BYTES_ENV: &'static str = "KILN_MAX_LAYER_BYTES";
    pub const MAX_IMAGE_BYTES_ENV: &'static str = "KILN_MAX_IMAGE_BYTES";
    pub const MAX_LAYER_ENTRIES_ENV: &'static str = "KILN_MAX_LAYER_ENTRIES";

    /// The built-in limits, ignoring the environment.
    pub const BUILTIN: UnpackLimits = UnpackLimits {
        max_layer_bytes: Self::DEFAULT_MAX_LAYER_BYTES,
        max_image_bytes: Self::DEFAULT_MAX_IMAGE_BYTES,
        max_layer_entries: Self::DEFAULT_MAX_LAYER_ENTRIES,
    };

    /// No limits at all, for trusted input.
    pub const UNLIMITED: UnpackLimits = UnpackLimits {
        max_layer_bytes: u64::MAX,
        max_image_bytes: u64::MAX,
        max_layer_entries: u64::MAX,
    };

    /// The built-in limits overridden by `KILN_MAX_LAYER_BYTES`,
    /// `KILN_MAX_IMAGE_BYTES` and `KILN_MAX_LAYER_ENTRIES` where they are set
    /// and not empty; a value that does not parse is an error naming it.
    pub fn from_env() -> Result<UnpackLimits> {
        Ok(UnpackLimits {
            max_layer_bytes: env_limit(Self::MAX_LAYER_BYTES_ENV, Self::DEFAULT_MAX_LAYER_BYTES)?,
            max_image_bytes: env_limit(Self::MAX_IMAGE_BYTES_ENV, Self::DEFAULT_MAX_IMAGE_BYTES)?,
            max_layer_entries: env_limit(
                Self::MAX_LAYER_ENTRIES_ENV,
                Self::DEFAULT_MAX_LAYER_ENTRIES,
            )?,
        })
    }
}

impl Default for UnpackLimits {
    /// The built-in limits overridden by the environment, as
    /// [`UnpackLimits::from_env`], except that a malformed variable is
    /// logged and its built-in value used.
    fn default() -> UnpackLimits {
        let lenient = |var: &'static str, default: u64| {
            env_limit(var, default).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "using the built-in limit {default}");
                default
            })
        };
        UnpackLimits {
            max_layer_bytes: lenient(Self::MAX_LAYER_BYTES_ENV, Self::DEFAULT_MAX_LAYER_BYTES),
            max_image_bytes: lenient(Self::MAX_IMAGE_BYTES_ENV, Self::DEFAULT_MAX_IMAGE_BYTES),
            max_layer_entries: lenient(
                Self::MAX_LAYER_ENTRIES_ENV,
                Self::DEFAULT_MAX_LAYER_ENTRIES,
            ),
        }
    }
}

/// One limit from the environment: `default` when unset or empty.
fn env_limit(var: &'static str, default: u64) -> Result<u64> {
    let Some(value) = std::env::var_os(var) else {
        return Ok(default);
    };
    let value = value.to_string_lossy();
    if value.trim().is_empty() {
        return Ok(default);
    }
    let sizes = var != UnpackLimits::MAX_LAYER_ENTRIES_ENV;
    parse_limit(&value, sizes).map_err(|why| Error::InvalidLimit {
        var,
        value: value.into_owned(),
        why,
    })
}

/// Parses a limit: a count, optionally (for sizes) with a binary suffix, or
/// `unlimited`.
fn parse_limit(value: &str, sizes: bool) -> Result<u64, String> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("unlimited") {
        return Ok(u64::MAX);
    }
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, suffix) = v.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| "expected a whole number, optionally with a suffix like 8G".to_owned())?;
    let suffix = suffix.trim().to_ascii_lowercase();
    let shift = match suffix.as_str() {
        "" | "b" => 0,
        _ if !sizes => return Err("expected a whole number (a count, not a size)".to_owned()),
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(format!("unknown suffix {other:?} (use K, M, G or T)")),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| "too large".to_owned())
}

/// The bytes unpacked so far for one image, shared by the unpacks of its
/// layers (it is a cheap handle: clones count into the same total, across
/// threads) so that [`UnpackLimits::max_image_bytes`] caps their sum. A
/// layer that fails gives its bytes back, since its staging directory is
/// thrown away.
#[derive(Clone, Debug, Default)]
pub struct ImageBudget {
    used: Arc<AtomicU64>,
}

impl ImageBudget {
    pub fn new() -> ImageBudget {
        ImageBudget::default()
    }

    /// Bytes counted so far.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn add(&self, n: u64) -> u64 {
        self.used.fetch_add(n, Ordering::Relaxed).saturating_add(n)
    }

    pub(crate) fn give_back(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }
}

/// Which limit a layer or image ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// [`UnpackLimits::max_layer_bytes`].
    LayerBytes,
    /// [`UnpackLimits::max_image_bytes`].
    ImageBytes,
    /// [`UnpackLimits::max_layer_entries`].
    LayerEntries,
    /// [`MAX_ENTRY_HEADER_BYTES`].
    EntryHeaderBytes,
}

impl Limit {
    /// The environment variable that raises this limit, if any.
    pub fn env_var(self) -> Option<&'static str> {
        match self {
            Limit::LayerBytes => Some(UnpackLimits::MAX_LAYER_BYTES_ENV),
            Limit::ImageBytes => Some(UnpackLimits::MAX_IMAGE_BYTES_ENV),
            Limit::LayerEntries => Some(UnpackLimits::MAX_LAYER_ENTRIES_ENV),
            Limit::EntryHeaderBytes => None,
        }
    }

    /// The [`UnpackLimits`] field, if any.
    pub fn field(self) -> Option<&'static str> {
        match self {
            Limit::LayerBytes => Some("max_layer_bytes"),
            Limit::ImageBytes => Some("max_image_bytes"),
            Limit::LayerEntries => Some("max_layer_entries"),
            Limit::EntryHeaderBytes => None,
        }
    }
}

/// The message of [`Error::TooLarge`].
pub(crate) fn limit_message(limit: Limit, value: u64, at: &str) -> String {
    let raise = |what: &str| {
        format!(
            "refused as a likely decompression bomb; if the image is trusted, raise the limit with {}=<{what}> (now {value})",
            limit.env_var().unwrap_or_default()
        )
    };
    match limit {
        Limit::LayerBytes => format!(
            "layer unpacks to more than {} ({at}); {}",
            human_bytes(value),
            raise("bytes, e.g. 16G")
        ),
        Limit::ImageBytes => format!(
            "image unpacks to more than {} over all its layers ({at}); {}",
            human_bytes(value),
            raise("bytes, e.g. 64G")
        ),
        Limit::LayerEntries => format!(
            "layer has more than {value} entries ({at}); {}",
            raise("count")
        ),
        Limit::EntryHeaderBytes => format!(
            "layer has more than {} of extension headers (PAX records or GNU long names) for one entry ({at}); no real layer needs that, so it is refused",
            human_bytes(value)
        ),
    }
}

/// `16 MiB`, `8 GiB`, `1.5 KiB`, `100 bytes`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n == u64::MAX {
        return "unlimited bytes".to_owned();
    }
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut unit = 0;
    let mut scaled = n as f64 / 1024.0;
    while scaled >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    let shown = format!("{scaled:.1}");
    let shown = shown.strip_suffix(".0").unwrap_or(&shown);
    format!("{shown} {}", UNITS[unit])
}

/// Counts (and hashes) one layer's uncompressed stream against the limits.
/// Shared by the [`MeteredReader`] under the tar reader and the unpacker,
/// which adds sparse holes and says when entry headers are being read.
pub(crate) struct Meter {
    limits: UnpackLimits,
    image: Option<ImageBudget>,
    used: Cell<u64>,
    /// Where the current run of entry headers started, while the tar
    /// reader is between entries.
    headers_from: Cell<Option<u64>>,
    tripped: Cell<Option<Limit>>,
    digest: RefCell<Option<DigestWriter>>,
}

impl Meter {
    pub(crate) fn new(limits: UnpackLimits, image: Option<ImageBudget>) -> Meter {
        Meter {
            limits,
            image,
            used: Cell::new(0),
            headers_from: Cell::new(None),
            tripped: Cell::new(None),
            digest: RefCell::new(Some(DigestWriter::default())),
        }
    }

    /// Bytes counted for this layer.
    pub(crate) fn used(&self) -> u64 {
        self.used.get()
    }

    /// The limit passed, if one was.
    pub(crate) fn tripped(&self) -> Option<Limit> {
        self.tripped.get()
    }

    pub(crate) fn limits(&self) -> &UnpackLimits {
        &self.limits
    }

    /// The value of a limit.
    pub(crate) fn value(&self, limit: Limit) -> u64 {
        match limit {
            Limit::LayerBytes => self.limits.max_layer_bytes,
            Limit::ImageBytes => self.limits.max_image_bytes,
            Limit::LayerEntries => self.limits.max_layer_entries,
            Limit::EntryHeaderBytes => MAX_ENTRY_HEADER_BYTES,
        }
    }

    fn trip(&self, limit: Limit) -> io::Error {
        if self.tripped.get().is_none() {
            self.tripped.set(Some(limit));
        }
        io::Error::other(LimitHit(limit))
    }

    /// Counts `n` more bytes; fails once a limit is passed.
    pub(crate) fn charge(&self, n: u64) -> io::Result<()> {
        if let Some(limit) = self.tripped.get() {
            return Err(io::Error::other(LimitHit(limit)));
        }
        let used = self.used.get().saturating_add(n);
        self.used.set(used);
        let image_total = match &self.image {
            Some(image) => image.add(n),
            None => used,
        };
        if used > self.limits.max_layer_bytes {
            return Err(self.trip(Limit::LayerBytes));
        }
        if image_total > self.limits.max_image_bytes {
            return Err(self.trip(Limit::ImageBytes));
        }
        if let Some(from) = self.headers_from.get() {
            if used - from > MAX_ENTRY_HEADER_BYTES {
                return Err(self.trip(Limit::EntryHeaderBytes));
            }
        }
        Ok(())
    }

    /// Refuses, before anything is written, an entry declaring more bytes
    /// than the limits have left.
    pub(crate) fn check_claim(&self, n: u64) -> Option<Limit> {
        let used = self.used.get();
        if n > self.limits.max_layer_bytes.saturating_sub(used) {
            return Some(Limit::LayerBytes);
        }
        let image_used = self.image.as_ref().map_or(used, ImageBudget::used);
        if n > self.limits.max_image_bytes.saturating_sub(image_used) {
            return Some(Limit::ImageBytes);
        }
        None
    }

    /// Records a limit passed outside the byte count (the entry count).
    pub(crate) fn set_tripped(&self, limit: Limit) {
        if self.tripped.get().is_none() {
            self.tripped.set(Some(limit));
        }
    }

    /// The tar reader is about to read the next entry's headers.
    pub(crate) fn headers_start(&self) {
        self.headers_from.set(Some(self.used.get()));
    }

    /// The tar reader has returned an entry; what follows is its data.
    pub(crate) fn headers_end(&self) {
        self.headers_from.set(None);
    }

    /// Counts without hashing, for a caller with no use for the digest.
    pub(crate) fn without_digest(self) -> Meter {
        self.digest.replace(None);
        self
    }

    /// Adds bytes read to the digest, unless hashing is off.
    fn hash(&self, bytes: &[u8]) {
        if let Some(d) = self.digest.borrow_mut().as_mut() {
            d.update(bytes);
        }
    }

    /// The sha256 of every byte read: the layer's diff_id.
    pub(crate) fn finish_digest(&self) -> Option<Digest> {
        self.digest.borrow_mut().take().map(DigestWriter::finish)
    }

    /// Gives this layer's bytes back to the image budget: it failed, so
    /// nothing of it stays on disk.
    pub(crate) fn refund(&self) {
        if let Some(image) = &self.image {
            image.give_back(self.used.get());
        }
    }
}

/// The payload of the I/O error a [`MeteredReader`] fails with.
#[derive(Debug)]
struct LimitHit(Limit);

impl fmt::Display for LimitHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unpack limit passed: {:?}", self.0)
    }
}

impl std::error::Error for LimitHit {}

/// Reads through a [`Meter`], counting and hashing every byte.
pub(crate) struct MeteredReader<'m, R> {
    pub(crate) inner: R,
    pub(crate) meter: &'m Meter,
}

impl<R: Read> Read for MeteredReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(limit) = self.meter.tripped() {
            return Err(io::Error::other(LimitHit(limit)));
        }
        let n = self.inner.read(buf)?;
        self.meter.charge(n as u64)?;
        self.meter.hash(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_with_binary_suffixes() {
        assert_eq!(parse_limit("123", true), Ok(123));
        assert_eq!(parse_limit(" 16M ", true), Ok(16 << 20));
        assert_eq!(parse_limit("8GiB", true), Ok(8 << 30));
        assert_eq!(parse_limit("8g", true), Ok(8 << 30));
        assert_eq!(parse_limit("1T", true), Ok(1 << 40));
        assert_eq!(parse_limit("64 KB", true), Ok(64 << 10));
        assert_eq!(parse_limit("unlimited", true), Ok(u64::MAX));
        assert_eq!(parse_limit("100", false), Ok(100));
        for bad in ["", "G", "-1", "1.5G", "8Q", "99999999999999999999T"] {
            assert!(parse_limit(bad, true).is_err(), "{bad}");
        }
        assert!(parse_limit("8G", false).is_err());
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(100), "100 bytes");
        assert_eq!(human_bytes(16 << 20), "16 MiB");
        assert_eq!(human_bytes(8 << 30), "8 GiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn the_meter_stops_at_the_first_limit_and_refunds_the_image() {
        let limits = UnpackLimits {
            max_layer_bytes: 100,
            max_image_bytes: 150,
            max_layer_entries: 10,
        };
        let budget = ImageBudget::new();
        let a = Meter::new(limits, Some(budget.clone()));
        a.charge(90).unwrap();
        let b = Meter::new(limits, Some(budget.clone()));
        b.charge(50).unwrap();
        assert_eq!(b.check_claim(20), Some(Limit::ImageBytes));
        assert!(b.charge(20).is_err());
        assert_eq!(b.tripped(), Some(Limit::ImageBytes));
        b.refund();
        assert_eq!(budget.used(), 90);
        assert!(a.charge(20).is_err());
        assert_eq!(a.tripped(), Some(Limit::LayerBytes));
        let m = limit_message(Limit::LayerBytes, 16 << 20, "at entry \"big\"");
        assert!(
            m.contains("16 MiB") && m.contains("KILN_MAX_LAYER_BYTES"),
            "{m}"
        );
    }
}
