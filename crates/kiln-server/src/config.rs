//! How the server runs: where it listens, where its state lives, and the
//! database named by `kiln server --db`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The database the server keeps its state in.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DbUrl {
    /// An SQLite file, created if missing.
    Sqlite(PathBuf),
}

/// A `--db` value that names no database kiln can use. The value itself is
/// not repeated: a PostgreSQL URL may carry a password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DbUrlError {
    #[error("the database URL is empty; give sqlite://PATH or a file path")]
    Empty,
    #[error(
        "PostgreSQL is not supported yet; the schema and queries are written so it can follow"
    )]
    PostgresNotSupported,
    #[error("unknown database URL scheme {scheme:?}; give sqlite://PATH or a file path")]
    UnknownScheme { scheme: String },
}

/// Parses a `--db` value: `sqlite://PATH` or a plain path is an SQLite file
/// (`sqlite:///var/lib/kiln.db` is absolute, `sqlite://kiln.db` relative);
/// `postgres://...` is refused until PostgreSQL is supported.
pub fn parse_db_url(value: &str) -> Result<DbUrl, DbUrlError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(DbUrlError::Empty);
    }
    let Some((scheme, rest)) = value.split_once("://") else {
        return Ok(DbUrl::Sqlite(PathBuf::from(value)));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "sqlite" if rest.is_empty() => Err(DbUrlError::Empty),
        "sqlite" => Ok(DbUrl::Sqlite(PathBuf::from(rest))),
        "postgres" | "postgresql" => Err(DbUrlError::PostgresNotSupported),
        _ => Err(DbUrlError::UnknownScheme {
            // Only the scheme: whatever follows may hold credentials.
            scheme: scheme.to_owned(),
        }),
    }
}

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen; loopback unless the operator chooses otherwise.
    pub listen: SocketAddr,
    /// Holds `admin.token`, and `kiln.db` unless `db` says otherwise.
    pub data_dir: PathBuf,
    /// The database; [`ServerConfig::new`] puts it at `DATA/kiln.db`.
    pub db: DbUrl,
    /// The runner timeout: a runner not heard from for this long loses its
    /// running jobs to the queue, and a job assigned this long ago that its
    /// runner's heartbeat does not list goes back too.
    pub lost_after: Duration,
}

impl ServerConfig {
    /// Defaults: `127.0.0.1:8420`, `DATA/kiln.db`, a 10 s runner timeout.
    pub fn new(data_dir: impl Into<PathBuf>) -> ServerConfig {
        let data_dir = data_dir.into();
        ServerConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8420)),
            db: DbUrl::Sqlite(data_dir.join("kiln.db")),
            data_dir,
            lost_after: Duration::from_secs(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_and_plain_paths() {
        assert_eq!(
            parse_db_url("sqlite:///var/lib/kiln/kiln.db"),
            Ok(DbUrl::Sqlite("/var/lib/kiln/kiln.db".into()))
        );
        assert_eq!(
            parse_db_url("sqlite://state/kiln.db"),
            Ok(DbUrl::Sqlite("state/kiln.db".into()))
        );
        assert_eq!(
            parse_db_url("/srv/kiln.db"),
            Ok(DbUrl::Sqlite("/srv/kiln.db".into()))
        );
        assert_eq!(parse_db_url("kiln.db"), Ok(DbUrl::Sqlite("kiln.db".into())));
    }

    #[test]
    fn postgres_is_refused_without_repeating_the_url() {
        for url in [
            "postgres://kiln:hunter2@db/kiln",
            "postgresql://kiln:hunter2@db/kiln",
            "POSTGRES://kiln:hunter2@db/kiln",
        ] {
            let err = parse_db_url(url).unwrap_err();
            assert_eq!(err, DbUrlError::PostgresNotSupported);
            let message = err.to_string();
            assert!(message.starts_with("PostgreSQL is not supported yet"));
            assert!(!message.contains("hunter2"));
        }
        let err = parse_db_url("mysql://root:hunter2@db/kiln").unwrap_err();
        assert!(err.to_string().contains("\"mysql\""), "{err}");
        assert!(!err.to_string().contains("hunter2"));
        assert_eq!(parse_db_url("  "), Err(DbUrlError::Empty));
        assert_eq!(parse_db_url("sqlite://"), Err(DbUrlError::Empty));
    }

    #[test]
    fn default_config_listens_on_loopback() {
        let config = ServerConfig::new("/tmp/x");
        assert!(config.listen.ip().is_loopback());
        assert_eq!(config.listen.port(), 8420);
        assert_eq!(config.lost_after, Duration::from_secs(10));
        assert_eq!(config.db, DbUrl::Sqlite("/tmp/x/kiln.db".into()));
    }
}
