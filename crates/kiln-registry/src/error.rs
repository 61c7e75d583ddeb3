use std::path::PathBuf;

/// Errors from talking to a registry. Each names the registry, image or
/// file involved. No variant ever holds a password or token: text that
/// comes from a registry is scrubbed of the secrets in use before it is put
/// in an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} not found in registry {host}")]
    NotFound { host: String, what: String },

    #[error("registry {host} refused access: {why}; log in with `kiln registry login {host}`")]
    Unauthorized { host: String, why: String },

    #[error(
        "registry {host} rejected the user name or password of user {username}; nothing was saved"
    )]
    LoginRejected { host: String, username: String },

    #[error(
        "refusing plain HTTP to {host}: kiln only uses HTTPS for registries that are not on \
         this machine; if {host} serves plain HTTP on a network you trust, pass \
         --insecure-registry {host}"
    )]
    PlainHttpRefused { host: String },

    #[error("{what} does not match its digest {expected}: the content hashes to {actual}, so it was not used")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    #[error("network error talking to registry {host} while {action}, after {attempts} attempt(s): {last}")]
    Network {
        host: String,
        action: String,
        attempts: u32,
        last: String,
    },

    #[error("{reference}: unsupported manifest type {media_type}: kiln pulls OCI and Docker v2 image manifests and indexes")]
    UnsupportedManifest {
        reference: String,
        media_type: String,
    },

    #[error(
        "{reference}: no image for this machine's platform {wanted}; the image offers {available}"
    )]
    NoPlatform {
        reference: String,
        wanted: String,
        available: String,
    },

    #[error("{reference}: bad manifest: {why}")]
    BadManifest { reference: String, why: String },

    #[error("registry {host} failed while {action}: {message}")]
    Registry {
        host: String,
        action: String,
        message: String,
    },

    #[error("invalid registry host {host:?}: {why}")]
    InvalidHost { host: String, why: String },

    #[error("invalid registry credentials: {0}")]
    InvalidCredentials(String),

    #[error("credential file {}: {why}", path.display())]
    CredentialFile { path: PathBuf, why: String },

    #[error(
        "no place for kiln's registry credentials: set KILN_CONFIG_DIR, XDG_CONFIG_HOME or HOME"
    )]
    NoCredentialFile,

    #[error(transparent)]
    Store(#[from] kiln_store::Error),

    #[error("registry client failure: {0}")]
    Internal(String),
}
