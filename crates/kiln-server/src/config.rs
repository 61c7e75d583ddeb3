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
    /// How long a client has to send a whole request head (request line and
    /// headers): counted from the connection's accept for its first request,
    /// and from the first byte of each later one. A client that is slower
    /// (a slowloris) is disconnected. Default 10 s.
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may sit between requests, with no
    /// request in progress, before the server closes it. A request being
    /// answered never counts as idle: a runner's long-held `next` and a
    /// followed log stream stay open for as long as their answer lasts.
    /// Default 60 s, above any client's gap between two requests on one
    /// connection (runners re-poll at once and heartbeat every few seconds).
    pub idle_timeout: Duration,
    /// How long a request body may take to arrive, counted from the end of
    /// its head. A body still incomplete then is answered 408 and the
    /// connection closed, so a body trickled a byte at a time cannot hold a
    /// connection. Bodies are small (a webhook is at most 1 MiB, a runner's
    /// log batch far less), so the default 30 s needs only ~35 KiB/s.
    pub body_read_timeout: Duration,
    /// The most connections served at once. Beyond it the server stops
    /// accepting: new connections wait in the listen backlog until one
    /// closes. Every idle runner holds one connection (its `next`) and
    /// briefly a second (heartbeats), so the default 4096 leaves room for
    /// well over a thousand runners; keep the process's open-file limit
    /// (`ulimit -n`) above it.
    pub max_connections: usize,
    /// Directories under which API tokens may register local repositories
    /// (bare paths or `file://` URLs). Without one, only the admin token may
    /// add a repository that is not an `https://`, `http://`, `ssh://`,
    /// `git://` or scp-like `user@host:path` URL. Paths are compared
    /// component by component and may not contain `..`. Default: none.
    pub local_repo_roots: Vec<PathBuf>,
}

impl ServerConfig {
    /// Defaults: `127.0.0.1:8420`, `DATA/kiln.db`, a 10 s runner timeout,
    /// a 10 s header, 60 s idle and 30 s body timeout, 4096 connections,
    /// and local repositories for the admin token only.
    pub fn new(data_dir: impl Into<PathBuf>) -> ServerConfig {
        let data_dir = data_dir.into();
        ServerConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8420)),
            db: DbUrl::Sqlite(data_dir.join("kiln.db")),
            data_dir,
            lost_after: DEFAULT_RUNNER_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            local_repo_roots: Vec::new(),
        }
    }
}

/// The default [`ServerConfig::header_read_timeout`].
/// Four missed heartbeats (a busy runner sends one a second): a killed
/// runner's job is claimed again 3-4.5 s after the kill (`bench/requeue`),
/// while a runner on a machine loaded to twice its cores still never misses
/// four in a row. A false positive costs the attempt's work, never its
/// correctness: the old attempt's reports are refused.
pub const DEFAULT_RUNNER_TIMEOUT: Duration = Duration::from_secs(4);

pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The default [`ServerConfig::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The default [`ServerConfig::body_read_timeout`].
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The default [`ServerConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

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
        assert_eq!(config.lost_after, Duration::from_secs(4));
        assert_eq!(config.db, DbUrl::Sqlite("/tmp/x/kiln.db".into()));
        assert_eq!(config.header_read_timeout, Duration::from_secs(10));
        assert_eq!(config.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.body_read_timeout, Duration::from_secs(30));
        assert_eq!(config.max_connections, 4096);
        assert!(config.local_repo_roots.is_empty());
    }
}
