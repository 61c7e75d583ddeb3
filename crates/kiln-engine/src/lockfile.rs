//! `kiln.lock`: the digest each image tag of a pipeline is pinned to.
//!
//! A tag is a request and a digest is the answer; the lock file records the
//! answer so every later run, on any machine, starts from the same bytes.
//! It is TOML, sorted by reference, and rendered the same way every time, so
//! it diffs cleanly in review:
//!
//! ```toml
//! # Written by `kiln lock` ...
//! version = 1
//!
//! [images]
//! "docker.io/library/alpine:3.20" = "sha256:..."
//! ```
//!
//! Keys are references in their normalised form (`alpine:3.20` is stored as
//! `docker.io/library/alpine:3.20`), so every spelling of a name finds its
//! pin. References that carry a digest already are never locked.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_oci::Reference;
use kiln_store::Digest;

/// The lock file's name, beside `kiln.star`.
pub const LOCK_FILE: &str = "kiln.lock";

const FORMAT_VERSION: u32 = 1;

const HEADER: &str = "\
# Written by `kiln lock`: the digest each image reference of this pipeline
# is pinned to. Every run uses these digests; `kiln call --locked` and
# `kiln run --locked` refuse to run if the pipeline and this file disagree.
# Move a pin on purpose with `kiln lock --update REF`.
";

/// Image pins: normalised reference -> manifest digest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockFile {
    pub images: BTreeMap<String, Digest>,
}

/// What can be wrong with a lock file. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a valid lock file: {why}; fix it or delete it and run `kiln lock`", path.display())]
    Invalid { path: PathBuf, why: String },
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    version: u32,
    #[serde(default)]
    images: BTreeMap<String, String>,
}

impl LockFile {
    /// Reads `path`; `Ok(None)` when there is no such file.
    pub fn load(path: &Path) -> Result<Option<LockFile>, LockError> {
        match std::fs::read_to_string(path) {
            Ok(text) => LockFile::parse(&text, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(LockError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses lock file text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<LockFile, LockError> {
        let invalid = |why: String| LockError::Invalid {
            path: path.to_owned(),
            why,
        };
        let doc: Document = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if doc.version != FORMAT_VERSION {
            return Err(invalid(format!(
                "version {} is not one this kiln reads (it reads {FORMAT_VERSION})",
                doc.version
            )));
        }
        let mut images = BTreeMap::new();
        for (reference, digest) in doc.images {
            let parsed: Reference = reference
                .parse()
                .map_err(|e| invalid(format!("image key {reference:?}: {e}")))?;
            if parsed.digest().is_some() {
                return Err(invalid(format!(
                    "image key {reference:?} already has a digest; only tags are locked"
                )));
            }
            let digest: Digest = digest.parse().map_err(|_| {
                invalid(format!("{reference:?} = {digest:?} is not a sha256 digest"))
            })?;
            let canonical = parsed.to_string();
            if images.insert(canonical.clone(), digest).is_some() {
                return Err(invalid(format!(
                    "{canonical} is pinned twice (under two spellings)"
                )));
            }
        }
        Ok(LockFile { images })
    }

    /// The file's text: header, version, then pins sorted by reference.
    pub fn render(&self) -> String {
        let doc = Document {
            version: FORMAT_VERSION,
            images: self
                .images
                .iter()
                .map(|(r, d)| (r.clone(), d.to_string()))
                .collect(),
        };
        // Serializing plain strings and an int cannot fail.
        let body = toml::to_string(&doc).unwrap_or_default();
        format!("{HEADER}{body}")
    }

    /// Writes the file atomically (a temporary file in the same directory,
    /// then a rename), so a crash leaves the old lock or the new one.
    pub fn save(&self, path: &Path) -> Result<(), LockError> {
        let write_err = |source| LockError::Write {
            path: path.to_owned(),
            source,
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new()
            .prefix(".kiln.lock.")
            .tempfile_in(dir)
            .map_err(write_err)?;
        tmp.write_all(self.render().as_bytes()).map_err(write_err)?;
        tmp.as_file().sync_all().map_err(write_err)?;
        tmp.persist(path).map_err(|e| write_err(e.error))?;
        Ok(())
    }

    /// The pin for `reference` (any spelling), if it is a tag and pinned.
    pub fn pin(&self, reference: &str) -> Option<&Digest> {
        let parsed: Reference = reference.parse().ok()?;
        if parsed.digest().is_some() {
            return None;
        }
        self.images.get(&parsed.to_string())
    }
}

/// The normalised form a reference is locked under, or `None` for one that
/// needs no lock (it names a digest already) or does not parse (the
/// solver reports that one).
pub fn lock_key(reference: &str) -> Option<String> {
    let parsed: Reference = reference.parse().ok()?;
    parsed.digest().is_none().then(|| parsed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    #[test]
    fn renders_sorted_and_parses_back() {
        let mut lock = LockFile::default();
        lock.images
            .insert("docker.io/library/busybox:1".into(), digest('b'));
        lock.images
            .insert("docker.io/library/alpine:3.20".into(), digest('a'));
        let text = lock.render();
        let alpine = text.find("alpine").unwrap();
        let busybox = text.find("busybox").unwrap();
        assert!(alpine < busybox, "{text}");
        assert!(text.starts_with("# Written by `kiln lock`"));
        assert_eq!(
            LockFile::parse(&text, Path::new("kiln.lock")).unwrap(),
            lock
        );
        assert_eq!(lock.render(), text, "rendering is stable");
    }

    #[test]
    fn any_spelling_finds_the_pin() {
        let mut lock = LockFile::default();
        lock.images
            .insert("docker.io/library/alpine:3.20".into(), digest('a'));
        assert_eq!(lock.pin("alpine:3.20"), Some(&digest('a')));
        assert_eq!(
            lock.pin("docker.io/library/alpine:3.20"),
            Some(&digest('a'))
        );
        assert_eq!(lock.pin("alpine:3.19"), None);
        assert_eq!(
            lock_key("busybox").as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(lock_key(&format!("alpine@{}", digest('c'))), None);
    }

    #[test]
    fn malformed_files_are_named_and_explained() {
        let path = Path::new("/repo/kiln.lock");
        let cases = [
            ("version = 2\n", "version 2"),
            (
                "version = 1\n[images]\n\"alpine:3.20\" = \"md5:00\"\n",
                "not a sha256 digest",
            ),
            (
                "version = 1\n[images]\n\"Bad Name\" = \"sha256:00\"\n",
                "image key",
            ),
            (
                "version = 1\n[images]\n\"alpine\" = \"x\"\n\"docker.io/library/alpine\" = \"y\"\n",
                "",
            ),
            ("version = 1\nsurprise = true\n", "surprise"),
            ("not toml at all", ""),
        ];
        for (text, expected) in cases {
            let err = LockFile::parse(text, path).unwrap_err().to_string();
            assert!(err.contains("/repo/kiln.lock"), "{err}");
            assert!(err.contains(expected), "{err}");
        }
        let twice = format!(
            "version = 1\n[images]\n\"alpine\" = \"{}\"\n\"docker.io/library/alpine:latest\" = \"{}\"\n",
            digest('a'),
            digest('b')
        );
        let err = LockFile::parse(&twice, path).unwrap_err().to_string();
        assert!(err.contains("pinned twice"), "{err}");
    }

    #[test]
    fn save_is_atomic_and_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        assert_eq!(LockFile::load(&path).unwrap(), None);
        let mut lock = LockFile::default();
        lock.images
            .insert("docker.io/library/alpine:3.20".into(), digest('a'));
        lock.save(&path).unwrap();
        assert_eq!(LockFile::load(&path).unwrap(), Some(lock));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from(LOCK_FILE)],
            "no temporary left"
        );
    }
}
