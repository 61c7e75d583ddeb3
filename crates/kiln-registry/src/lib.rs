//! kiln's client for OCI registries (the distribution API): pulling images
//! into the store, pushing them from it, and the credentials for both.
//!
//! # What it does
//!
//! - [`pull`] fetches a reference's manifest (an image index is resolved
//!   to this machine's platform, see `kiln_oci::host_platform`), then its
//!   config and layers, a few at a time, each streamed into the store and
//!   committed only if it hashes to its digest. A transfer that breaks is
//!   retried with backoff and resumed from the bytes already received with
//!   an HTTP `Range` request (from zero when the registry ignores it).
//!   The image is then tagged in the store under
//!   `Reference::name_in_store()`, pinning manifest, config and layers,
//!   exactly as `kiln image import` tags, so `kiln_oci::load_image` finds
//!   it. Blobs already in the store are not fetched again.
//! - [`resolve`] answers which manifest digest a reference names for this
//!   platform, without fetching blobs.
//! - [`push`] sends an image of the store: each blob is looked for with
//!   `HEAD` and uploaded only when missing, streamed from the store; the
//!   manifest goes up byte for byte, so the pushed digest is the stored one.
//! - [`login`] checks credentials against the registry and saves them;
//!   [`logout`] forgets them.
//! - [`blocking`] wraps the async calls for synchronous callers, including
//!   ones running inside a tokio runtime.
//!
//! # Rules
//!
//! - **HTTPS unless allowed otherwise.** Plain HTTP is used only for
//!   loopback registries (`localhost`, 127.0.0.0/8, `[::1]`, any port) and
//!   the hosts in [`RegistryOptions::insecure`]; those are tried over HTTPS
//!   first and fall back to HTTP when HTTPS gets no answer, as docker does.
//!   Anything else is HTTPS only: an explicit `http://` host, a token realm
//!   or a redirect to plain HTTP elsewhere is refused with
//!   [`Error::PlainHttpRefused`], which names `--insecure-registry HOST`.
//!   `docker.io` is reached at `registry-1.docker.io`.
//! - **Authentication follows the registry's challenge.** An anonymous
//!   `GET /v2/` tells whether the registry is open, wants basic
//!   credentials, or wants a bearer token from a realm; the token is
//!   fetched with the saved credentials (or anonymously) for the
//!   repository and operation at hand, and fetched again when it expires
//!   mid-transfer.
//! - **Credentials** come from kiln's file first (`$KILN_CONFIG_DIR/auth.json`,
//!   else `$XDG_CONFIG_HOME/kiln/auth.json`, else `~/.config/kiln/auth.json`),
//!   then Docker's `config.json` (`$DOCKER_CONFIG/config.json`, else
//!   `~/.docker/config.json`). Only `login` writes, only kiln's file,
//!   atomically and with mode 0600. Docker credential helpers are not run.
//! - **No secret leaves memory** except in a request to the registry (or
//!   its token realm) and in kiln's credential file: `Debug` of anything
//!   holding one prints `***`, and registry text quoted in errors is
//!   scrubbed of the secrets in use.
//! - **Nothing unverified is kept.** Manifests must hash to the digest
//!   asked for (or the one the registry announced); blobs to their
//!   descriptor's. On any failure nothing is tagged; blobs that did verify
//!   stay in the store, unpinned, for the next attempt.

pub mod blocking;
mod credentials;
mod error;
mod host;
mod manifest;
mod pull;
mod push;
mod session;

use std::path::PathBuf;
use std::time::Duration;

pub use credentials::{logout, lookup_credentials, Credentials, FoundCredentials, Secret};
pub use error::Error;
pub use pull::{pull, resolve, PullProgress, Pulled};
pub use push::push;
pub use session::login;

/// How kiln talks to registries. `Default` reads the environment for the
/// credential files; the other defaults suit interactive use.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Hosts (`host` for any port, or `host:port`) that may be reached
    /// over plain HTTP. Loopback hosts always may.
    pub insecure: Vec<String>,
    /// kiln's credential file, which `login` writes. `None` when no
    /// location could be found (no `HOME`): logins then fail.
    pub credentials_file: Option<PathBuf>,
    /// Docker's `config.json`, read for credentials kiln has none for;
    /// `None` to ignore it.
    pub docker_config_file: Option<PathBuf>,
    /// Tries of each request before a network failure is reported.
    pub attempts: u32,
    /// The pause after the first failed try; it doubles after each one
    /// (up to 30 s).
    pub retry_delay: Duration,
    /// Blobs transferred at once.
    pub parallel_blobs: usize,
    /// How long connecting, or a connection staying silent, may take
    /// before the request counts as failed.
    pub timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> RegistryOptions {
        RegistryOptions {
            insecure: Vec::new(),
            credentials_file: default_credentials_file(),
            docker_config_file: default_docker_config_file(),
            attempts: 5,
            retry_delay: Duration::from_millis(500),
            parallel_blobs: 4,
            timeout: Duration::from_secs(60),
        }
    }
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `$KILN_CONFIG_DIR/auth.json`, else `$XDG_CONFIG_HOME/kiln/auth.json`,
/// else `~/.config/kiln/auth.json`.
pub fn default_credentials_file() -> Option<PathBuf> {
    if let Some(dir) = env_path("KILN_CONFIG_DIR") {
        return Some(dir.join("auth.json"));
    }
    if let Some(dir) = env_path("XDG_CONFIG_HOME") {
        return Some(dir.join("kiln/auth.json"));
    }
    env_path("HOME").map(|home| home.join(".config/kiln/auth.json"))
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn default_docker_config_file() -> Option<PathBuf> {
    if let Some(dir) = env_path("DOCKER_CONFIG") {
        return Some(dir.join("config.json"));
    }
    env_path("HOME").map(|home| home.join(".docker/config.json"))
}
