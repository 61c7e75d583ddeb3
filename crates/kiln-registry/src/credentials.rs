//! Registry credentials: kiln's own `auth.json` (written by `login`, mode
//! 0600) and Docker's `config.json` (read only).
//!
//! Both files have Docker's shape: `{"auths": {"HOST": {"auth":
//! "base64(user:password)"}}}`; Docker's entries may instead carry
//! `username` and `password`, and its keys may be `https://HOST/...`
//! (`https://index.docker.io/v1/` for Docker Hub). Keys are compared after
//! normalising them the way references are.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::host::RegistryHost;
use crate::{Error, RegistryOptions};

/// Docker writes padded base64, but hand-written files sometimes are not.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A password or token. Its `Debug` prints `***`, and comparisons take
/// the same time whatever the contents (only the length can show).
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        constant_time_eq(self.0.as_bytes(), other.0.as_bytes())
    }
}

impl Eq for Secret {}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// A user name and password for one registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

/// Credentials found for a registry, and the file they came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundCredentials {
    pub credentials: Credentials,
    pub file: PathBuf,
}

/// The credentials kiln would use for `host` (`docker.io`, `localhost:5000`,
/// `https://index.docker.io/v1/`): kiln's credential file first, then
/// Docker's `config.json`. A damaged kiln file is an error; a damaged
/// Docker file is skipped with a warning, since kiln does not own it.
pub fn lookup_credentials(
    host: &str,
    options: &RegistryOptions,
) -> Result<Option<FoundCredentials>, Error> {
    let host = RegistryHost::parse(host)?;
    find(&host.key, options)
}

pub(crate) fn find(
    key: &str,
    options: &RegistryOptions,
) -> Result<Option<FoundCredentials>, Error> {
    if let Some(path) = &options.credentials_file {
        if let Some(doc) = read_file(path)? {
            if let Some(credentials) = entry_for(&doc, key, path)? {
                return Ok(Some(FoundCredentials {
                    credentials,
                    file: path.clone(),
                }));
            }
        }
    }
    if let Some(path) = &options.docker_config_file {
        let found = read_file(path).and_then(|doc| match doc {
            Some(doc) => entry_for(&doc, key, path),
            None => Ok(None),
        });
        match found {
            Ok(Some(credentials)) => {
                return Ok(Some(FoundCredentials {
                    credentials,
                    file: path.clone(),
                }))
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "ignoring Docker's credential file"),
        }
    }
    Ok(None)
}

/// Reads a credential file; `None` when it does not exist.
fn read_file(path: &Path) -> Result<Option<Map<String, Value>>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::CredentialFile {
                path: path.to_owned(),
                why: format!("cannot read it: {e}"),
            })
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(Map::new()));
    }
    // serde_json's message names a line and column, never the content.
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(doc)) => Ok(Some(doc)),
        Ok(_) => Err(Error::CredentialFile {
            path: path.to_owned(),
            why: "it is not a JSON object".into(),
        }),
        Err(e) => Err(Error::CredentialFile {
            path: path.to_owned(),
            why: format!("it is not valid JSON ({e})"),
        }),
    }
}

fn auths<'a>(
    doc: &'a Map<String, Value>,
    path: &Path,
) -> Result<Option<&'a Map<String, Value>>, Error> {
    match doc.get("auths") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(auths)) => Ok(Some(auths)),
        Some(_) => Err(Error::CredentialFile {
            path: path.to_owned(),
            why: "\"auths\" is not an object".into(),
        }),
    }
}

/// Whether a key of `auths` names registry `key`.
fn key_matches(entry_key: &str, key: &str) -> bool {
    RegistryHost::parse(entry_key).is_ok_and(|h| h.key == key)
}

fn entry_for(
    doc: &Map<String, Value>,
    key: &str,
    path: &Path,
) -> Result<Option<Credentials>, Error> {
    let Some(auths) = auths(doc, path)? else {
        return Ok(None);
    };
    // The exact spelling wins over others naming the same registry.
    let mut candidates: Vec<(&String, &Value)> =
        auths.iter().filter(|(k, _)| key_matches(k, key)).collect();
    candidates.sort_by_key(|(k, _)| k.as_str() != key);
    for (entry_key, entry) in candidates {
        if let Some(credentials) = parse_entry(entry, entry_key, path)? {
            return Ok(Some(credentials));
        }
    }
    let helpers = doc
        .get("credHelpers")
        .and_then(Value::as_object)
        .is_some_and(|h| h.keys().any(|k| key_matches(k, key)));
    if helpers || doc.get("credsStore").is_some() {
        tracing::debug!(registry = key, file = %path.display(),
            "credential helpers are not supported; log in with `kiln registry login`");
    }
    Ok(None)
}

/// One `auths` entry. Error messages name the file and key, never the
/// value, which holds the secret.
fn parse_entry(entry: &Value, entry_key: &str, path: &Path) -> Result<Option<Credentials>, Error> {
    let bad = |why: &str| Error::CredentialFile {
        path: path.to_owned(),
        why: format!("the entry for {entry_key:?} {why}"),
    };
    let Value::Object(entry) = entry else {
        return Err(bad("is not an object"));
    };
    let text = |name: &str| {
        entry
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    if let Some(auth) = text("auth") {
        let decoded = LENIENT_BASE64
            .decode(auth.trim())
            .map_err(|_| bad("has an \"auth\" value that is not base64"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| bad("has an \"auth\" value that is not UTF-8"))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| bad("has an \"auth\" value that is not user:password"))?;
        return Ok(Some(Credentials {
            username: username.to_owned(),
            password: Secret::new(password),
        }));
    }
    if let (Some(username), Some(password)) = (text("username"), text("password")) {
        return Ok(Some(Credentials {
            username: username.to_owned(),
            password: Secret::new(password),
        }));
    }
    if text("identitytoken").is_some() {
        tracing::debug!(registry = entry_key, file = %path.display(),
            "identity tokens are not supported; log in with `kiln registry login`");
    }
    Ok(None)
}

pub(crate) fn encode_auth(credentials: &Credentials) -> String {
    STANDARD.encode(format!(
        "{}:{}",
        credentials.username,
        credentials.password.expose()
    ))
}

/// Takes the credential file's lock: logins and logouts of concurrent
/// kiln processes must not lose each other's entries.
fn lock(path: &Path) -> Result<(PathBuf, kiln_store::FileLock), Error> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::CredentialFile {
            path: path.to_owned(),
            why: format!("cannot create its directory: {e}"),
        })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "auth.json".into());
    let lock = kiln_store::FileLock::exclusive(&dir.join(format!(".{name}.lock")))?;
    Ok((dir, lock))
}

/// Writes the document in place atomically, readable by the owner only.
fn write_file(path: &Path, dir: &Path, doc: &Map<String, Value>) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |e: std::io::Error| Error::CredentialFile {
        path: path.to_owned(),
        why: format!("cannot write it: {e}"),
    };
    let mut bytes = serde_json::to_vec_pretty(doc).map_err(|e| Error::CredentialFile {
        path: path.to_owned(),
        why: format!("cannot encode it: {e}"),
    })?;
    bytes.push(b'\n');
    let mut staged = tempfile::Builder::new()
        .prefix(".auth-")
        .tempfile_in(dir)
        .map_err(fail)?;
    staged
        .as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(fail)?;
    staged.write_all(&bytes).map_err(fail)?;
    staged.as_file().sync_all().map_err(fail)?;
    staged.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

/// Records `credentials` for registry `key` in kiln's credential file,
/// keeping every other entry and field. A damaged file is left alone.
pub(crate) fn save(path: &Path, key: &str, credentials: &Credentials) -> Result<(), Error> {
    let (dir, _lock) = lock(path)?;
    let mut doc = read_file(path)?.unwrap_or_default();
    auths(&doc, path)?;
    let auths = doc
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    if auths.is_null() {
        *auths = Value::Object(Map::new());
    }
    if let Value::Object(auths) = auths {
        auths.retain(|k, _| !key_matches(k, key));
        let mut entry = Map::new();
        entry.insert("auth".into(), Value::String(encode_auth(credentials)));
        auths.insert(key.to_owned(), Value::Object(entry));
    }
    write_file(path, &dir, &doc)
}

/// Removes registry `host`'s entries from kiln's credential file. Returns
/// whether there were any. Docker's file is never changed.
pub fn logout(host: &str, options: &RegistryOptions) -> Result<bool, Error> {
    let host = RegistryHost::parse(host)?;
    let path = options
        .credentials_file
        .as_deref()
        .ok_or(Error::NoCredentialFile)?;
    if !path.exists() {
        return Ok(false);
    }
    let (dir, _lock) = lock(path)?;
    let Some(mut doc) = read_file(path)? else {
        return Ok(false);
    };
    auths(&doc, path)?;
    let removed = match doc.get_mut("auths") {
        Some(Value::Object(auths)) => {
            let before = auths.len();
            auths.retain(|k, _| !key_matches(k, &host.key));
            auths.len() != before
        }
        _ => false,
    };
    if removed {
        write_file(path, &dir, &doc)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn options(dir: &Path) -> RegistryOptions {
        RegistryOptions {
            credentials_file: Some(dir.join("kiln/auth.json")),
            docker_config_file: Some(dir.join("docker/config.json")),
            ..RegistryOptions::default()
        }
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn creds(user: &str, password: &str) -> Credentials {
        Credentials {
            username: user.into(),
            password: Secret::new(password),
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let c = creds("alice", "hunter2-very-secret");
        let text = format!("{c:?} {:?}", c.password);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("alice") && text.contains("***"), "{text}");
    }

    #[test]
    fn secrets_compare_by_content() {
        assert_eq!(Secret::new("abc"), Secret::new("abc"));
        assert_ne!(Secret::new("abc"), Secret::new("abd"));
        assert_ne!(Secret::new("abc"), Secret::new("abcd"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn reads_docker_config_in_its_spellings() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path());
        let docker = opts.docker_config_file.clone().unwrap();
        write(
            &docker,
            &format!(
                r#"{{"auths": {{
                    "https://index.docker.io/v1/": {{"auth": "{}"}},
                    "https://ghcr.io": {{"username": "gh", "password": "tok"}},
                    "quay.io": {{"auth": "{}"}},
                    "only-helper.io": {{}}
                }}, "credsStore": "desktop"}}"#,
                STANDARD.encode("hub:pw:with:colons"),
                STANDARD.encode("q:p").trim_end_matches('='),
            ),
        );
        let hub = lookup_credentials("docker.io", &opts).unwrap().unwrap();
        assert_eq!(hub.credentials, creds("hub", "pw:with:colons"));
        assert_eq!(hub.file, docker);
        assert_eq!(
            lookup_credentials("ghcr.io", &opts)
                .unwrap()
                .unwrap()
                .credentials,
            creds("gh", "tok")
        );
        assert_eq!(
            lookup_credentials("QUAY.io", &opts)
                .unwrap()
                .unwrap()
                .credentials,
            creds("q", "p")
        );
        assert!(lookup_credentials("only-helper.io", &opts)
            .unwrap()
            .is_none());
        assert!(lookup_credentials("other.io", &opts).unwrap().is_none());
    }

    #[test]
    fn kiln_file_comes_first_and_its_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path());
        write(
            opts.docker_config_file.as_ref().unwrap(),
            &format!(
                r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#,
                STANDARD.encode("d:1")
            ),
        );
        save(
            opts.credentials_file.as_ref().unwrap(),
            "r.io",
            &creds("k", "2"),
        )
        .unwrap();
        assert_eq!(
            lookup_credentials("r.io", &opts)
                .unwrap()
                .unwrap()
                .credentials,
            creds("k", "2")
        );
        write(opts.credentials_file.as_ref().unwrap(), "{not json");
        let err = lookup_credentials("r.io", &opts).unwrap_err();
        assert!(err.to_string().contains("auth.json"), "{err}");
        // A damaged Docker file is not kiln's to judge: skipped.
        write(opts.docker_config_file.as_ref().unwrap(), "[1]");
        std::fs::remove_file(opts.credentials_file.as_ref().unwrap()).unwrap();
        assert!(lookup_credentials("r.io", &opts).unwrap().is_none());
    }

    #[test]
    fn a_bad_entry_is_reported_without_its_value() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path());
        write(
            opts.credentials_file.as_ref().unwrap(),
            r#"{"auths":{"r.io":{"auth":"c2VjcmV0LXdpdGhvdXQtY29sb24="}}}"#,
        );
        let err = lookup_credentials("r.io", &opts).unwrap_err().to_string();
        assert!(
            err.contains("\"r.io\"") && err.contains("user:password"),
            "{err}"
        );
        assert!(
            !err.contains("c2VjcmV0") && !err.contains("secret"),
            "{err}"
        );
    }

    #[test]
    fn save_keeps_other_entries_and_writes_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg/auth.json");
        write(
            &path,
            r#"{"auths":{"a.io":{"auth":"YTpi"},"https://b.io/v2/":{"auth":"eDp5"}},"extra":1}"#,
        );
        save(&path, "b.io", &creds("new", "pw")).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(doc["extra"], 1);
        assert_eq!(doc["auths"]["a.io"]["auth"], "YTpi");
        assert!(doc["auths"].get("https://b.io/v2/").is_none());
        assert_eq!(doc["auths"]["b.io"]["auth"], STANDARD.encode("new:pw"));

        let opts = RegistryOptions {
            credentials_file: Some(path.clone()),
            docker_config_file: None,
            ..RegistryOptions::default()
        };
        assert!(logout("https://b.io", &opts).unwrap());
        assert!(!logout("b.io", &opts).unwrap());
        let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(doc["auths"]["a.io"]["auth"], "YTpi");
        assert!(doc["auths"].get("b.io").is_none());
    }

    #[test]
    fn save_refuses_to_replace_a_damaged_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        write(&path, r#"{"auths": []}"#);
        let err = save(&path, "b.io", &creds("u", "p")).unwrap_err();
        assert!(err.to_string().contains("auths"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), r#"{"auths": []}"#);
    }
}
