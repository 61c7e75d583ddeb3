use std::path::PathBuf;

/// Errors from the store. Every variant names the entry or path involved so a
/// user can tell which part of the store is at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("digest mismatch: expected {expected}, content hashes to {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("blob {digest} in the store is corrupt (content hashes to {actual}); it was removed and must be rebuilt or fetched again")]
    CorruptBlob { digest: String, actual: String },
    #[error("blob {0} is not in the store")]
    MissingBlob(String),
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),
    #[error("invalid {kind} name {name:?}: {why}")]
    InvalidName {
        kind: &'static str,
        name: String,
        why: &'static str,
    },
    #[error("refusing to use {path}: {why}")]
    Unsafe { path: PathBuf, why: String },
    #[error("store index entry {path} is unreadable: {why}")]
    BadIndex { path: PathBuf, why: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches the action and path to an I/O error.
pub(crate) trait IoContext<T> {
    fn ctx(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            action,
            path: path.into(),
            source,
        })
    }
}
