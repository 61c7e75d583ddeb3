use std::io;
use std::path::{Path, PathBuf};

/// Errors of this crate. Every variant names the path it is about, so a
/// message shown to a pipeline author points at the offending file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: no such file or directory", path.display())]
    NotFound { path: PathBuf },
    #[error("{}: not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("{}: not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{}: changed since it was hashed", path.display())]
    Changed { path: PathBuf },
    #[error("{}: too many levels of symbolic links", path.display())]
    SymlinkLoop { path: PathBuf },
    #[error("{}: invalid filter pattern {pattern:?}: {message}", path.display())]
    Filter {
        path: PathBuf,
        pattern: String,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    Walk { path: PathBuf, message: String },
    #[error("{}: invalid tree entry path: {reason}", path.display())]
    InvalidPath { path: PathBuf, reason: &'static str },
    #[error("{}: destination directory is not empty", path.display())]
    NotEmpty { path: PathBuf },
}

impl Error {
    /// The path this error is about.
    pub fn path(&self) -> &Path {
        match self {
            Error::Io { path, .. }
            | Error::NotFound { path }
            | Error::NotAFile { path }
            | Error::NotADirectory { path }
            | Error::Changed { path }
            | Error::SymlinkLoop { path }
            | Error::Filter { path, .. }
            | Error::Walk { path, .. }
            | Error::InvalidPath { path, .. }
            | Error::NotEmpty { path } => path,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: impl Into<io::Error>) -> Error {
        Error::Io {
            path: path.into(),
            source: source.into(),
        }
    }
}

/// `map_err` adapter: `.map_err(io_at(&path))`.
pub(crate) fn io_at<E: Into<io::Error>>(path: &Path) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::io(path, e)
}
