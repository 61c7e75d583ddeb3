//! One conversation with a registry: which scheme it is reached over, how
//! it wants to be authenticated, the oci-client handle for the API calls,
//! and retrying what failed on the way.
//!
//! oci-client does the distribution API calls. The authentication
//! handshake (`GET /v2/`, then a token from the realm the challenge names)
//! is done here with reqwest, because oci-client follows whatever realm a
//! registry names (plain HTTP to another host included, with the password)
//! and drops token errors silently, turning "wrong password" into an
//! anonymous request. The token obtained is handed to oci-client as a
//! bearer credential.

use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciEnvelope, OciErrorCode};
use oci_client::secrets::RegistryAuth;

use crate::credentials::{self, Credentials, FoundCredentials, Secret};
use crate::host::{plain_http_allowed, RegistryHost, Scheme};
use crate::{Error, RegistryOptions};

const USER_AGENT: &str = concat!("kiln/", env!("CARGO_PKG_VERSION"));
/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How much of a registry's error body is quoted in an error.
const MAX_QUOTED: usize = 300;

/// What an operation does with the repository, for the token's scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Pull,
    Push,
}

/// Why one attempt failed, before it is known whether to try again.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The network or an overloaded registry: worth another attempt.
    Transient(String),
    /// 401/403: the credentials (or their absence) are not good enough.
    Unauthorized,
    NotFound,
    Mismatch {
        expected: String,
        actual: String,
    },
    /// The registry gave a final answer that is not one of the above.
    Fatal(String),
    /// Already a complete error.
    Error(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Error(e)
    }
}

impl From<kiln_store::Error> for Failure {
    fn from(e: kiln_store::Error) -> Failure {
        Failure::Error(e.into())
    }
}

/// The registry's answer to an anonymous `GET /v2/`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Challenge {
    /// The API is open.
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
    /// A scheme kiln does not speak; requests go out with basic credentials.
    Other(String),
}

struct State {
    client: oci_client::Client,
    auth: RegistryAuth,
    /// Every password and token in use, scrubbed from error text.
    secrets: Vec<String>,
}

/// What stays fixed for a session: where the registry is and how it wants
/// to be authenticated.
struct Link<'o> {
    options: &'o RegistryOptions,
    host: RegistryHost,
    scheme: Scheme,
    http: reqwest::Client,
    challenge: Challenge,
    credentials: Option<FoundCredentials>,
    scope: Option<String>,
}

pub(crate) struct Session<'o> {
    link: Link<'o>,
    state: Mutex<State>,
}

impl<'o> Session<'o> {
    /// Finds out how to reach `host` and authenticates for `access` to
    /// `repository`.
    pub(crate) async fn open(
        host: RegistryHost,
        repository: &str,
        access: Access,
        options: &'o RegistryOptions,
    ) -> Result<Session<'o>, Error> {
        let credentials = credentials::find(&host.key, options)?;
        if let Some(found) = &credentials {
            tracing::debug!(registry = %host.key, user = %found.credentials.username,
                file = %found.file.display(), "using saved credentials");
        }
        let http = http_client(options)?;
        let (scheme, challenge) = discover(&http, &host, options).await?;
        let actions = match access {
            Access::Pull => "pull",
            Access::Push => "pull,push",
        };
        let link = Link {
            options,
            host,
            scheme,
            http,
            challenge,
            credentials,
            scope: Some(format!("repository:{repository}:{actions}")),
        };
        let state = link.authorize().await?;
        Ok(Session {
            link,
            state: Mutex::new(state),
        })
    }

    pub(crate) fn options(&self) -> &'o RegistryOptions {
        self.link.options
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The oci-client handle and credential to use now (they change when
    /// an expired token is replaced).
    pub(crate) fn current(&self) -> (oci_client::Client, RegistryAuth) {
        let state = self.state();
        (state.client.clone(), state.auth.clone())
    }

    /// An oci-client reference to `repository` at this registry.
    pub(crate) fn reference(&self, repository: &str, tag_or_digest: &str) -> oci_client::Reference {
        if tag_or_digest.starts_with("sha256:") {
            oci_client::Reference::with_digest(
                self.link.host.api.clone(),
                repository.to_owned(),
                tag_or_digest.to_owned(),
            )
        } else {
            oci_client::Reference::with_tag(
                self.link.host.api.clone(),
                repository.to_owned(),
                tag_or_digest.to_owned(),
            )
        }
    }

    /// Gets a fresh token after a 401 (tokens expire, typically after five
    /// minutes, and a long pull outlives them). False when there is no
    /// token to refresh.
    pub(crate) async fn refresh(&self) -> Result<bool, Error> {
        if !matches!(self.link.challenge, Challenge::Bearer { .. }) {
            return Ok(false);
        }
        tracing::debug!(registry = %self.link.host.key, "refreshing the registry token");
        let fresh = self.link.authorize().await?;
        let mut state = self.state();
        let mut secrets = std::mem::take(&mut state.secrets);
        secrets.extend(fresh.secrets);
        *state = State { secrets, ..fresh };
        Ok(true)
    }

    /// Replaces every secret in use by `***`.
    pub(crate) fn scrub(&self, text: &str) -> String {
        scrub(text, &self.state().secrets)
    }

    pub(crate) async fn backoff(&self, attempt: u32) {
        tokio::time::sleep(backoff(self.link.options.retry_delay, attempt)).await;
    }

    /// Runs `op` until it succeeds, retrying transient failures with
    /// backoff and a 401 once with a fresh token. `what` names the object
    /// in "not found" and mismatch errors.
    pub(crate) async fn retry<T, F, Fut>(
        &self,
        action: &str,
        what: &str,
        mut op: F,
    ) -> Result<T, Error>
    where
        F: FnMut(oci_client::Client, RegistryAuth) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut attempt = 1;
        let mut refreshed = false;
        loop {
            let (client, auth) = self.current();
            match op(client, auth).await {
                Ok(value) => return Ok(value),
                Err(Failure::Transient(message)) if attempt < self.link.options.attempts => {
                    tracing::warn!(registry = %self.link.host.key, action, attempt,
                        error = %self.scrub(&message), "retrying");
                    self.backoff(attempt).await;
                    attempt += 1;
                }
                Err(Failure::Unauthorized) if !refreshed && self.refresh().await? => {
                    refreshed = true;
                }
                Err(failure) => return Err(self.error(action, what, failure, attempt)),
            }
        }
    }

    /// The error a failure becomes once no more attempts are made.
    pub(crate) fn error(&self, action: &str, what: &str, failure: Failure, attempts: u32) -> Error {
        let host = self.link.host.key.clone();
        match failure {
            Failure::Transient(last) => Error::Network {
                host,
                action: action.to_owned(),
                attempts,
                last: self.scrub(&last),
            },
            Failure::Unauthorized => Error::Unauthorized {
                host,
                why: match &self.link.credentials {
                    None => format!(
                        "anonymous access to {what} was denied and no credentials are saved for it"
                    ),
                    Some(found) => format!(
                        "user {} (credentials from {}) was denied access to {what}",
                        found.credentials.username,
                        found.file.display()
                    ),
                },
            },
            Failure::NotFound => Error::NotFound {
                host,
                what: what.to_owned(),
            },
            Failure::Mismatch { expected, actual } => Error::DigestMismatch {
                what: what.to_owned(),
                expected,
                actual,
            },
            Failure::Fatal(message) => Error::Registry {
                host,
                action: action.to_owned(),
                message: self.scrub(&message),
            },
            Failure::Error(e) => e,
        }
    }
}

impl Link<'_> {
    /// Builds the credential oci-client sends, and a client holding it.
    async fn authorize(&self) -> Result<State, Error> {
        let mut secrets = Vec::new();
        if let Some(found) = &self.credentials {
            secrets.push(found.credentials.password.expose().to_owned());
            secrets.push(credentials::encode_auth(&found.credentials));
        }
        let basic = |c: &FoundCredentials| {
            RegistryAuth::Basic(
                c.credentials.username.clone(),
                c.credentials.password.expose().to_owned(),
            )
        };
        let auth = match &self.challenge {
            Challenge::None => RegistryAuth::Anonymous,
            Challenge::Basic | Challenge::Other(_) => self
                .credentials
                .as_ref()
                .map(basic)
                .unwrap_or(RegistryAuth::Anonymous),
            Challenge::Bearer { realm, service } => {
                let token = fetch_token(
                    &self.http,
                    &self.host,
                    self.options,
                    realm,
                    service.as_deref(),
                    self.scope.as_deref(),
                    self.credentials.as_ref(),
                )
                .await?;
                secrets.push(token.expose().to_owned());
                RegistryAuth::Bearer(token.expose().to_owned())
            }
        };
        let client = oci_client(self.scheme, self.options)?;
        client.store_auth_if_needed(&self.host.api, &auth).await;
        secrets.retain(|s| s.len() >= 4);
        Ok(State {
            client,
            auth,
            secrets,
        })
    }
}

fn scrub(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_owned(), |text, secret| {
            text.replace(secret.as_str(), "***")
        })
}

pub(crate) fn backoff(first: Duration, attempt: u32) -> Duration {
    first
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

fn quote(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_QUOTED) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A reqwest error with its causes: reqwest's own text is only "error
/// sending request for url (...)", the cause says why.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Sorts an oci-client error into what to do about it.
pub(crate) fn classify(error: OciDistributionError) -> Failure {
    use OciDistributionError as E;
    match error {
        E::RequestError(e) => classify_reqwest(&e),
        E::IoError(e) => classify_io(e),
        E::DigestError(DigestError::VerificationError { expected, actual }) => {
            Failure::Mismatch { expected, actual }
        }
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => Failure::Unauthorized,
        E::RegistryError { envelope, .. } => classify_envelope(&envelope),
        E::ServerError { code, message, .. } => classify_status(code, &message),
        E::ImageManifestNotFoundError(_) => Failure::NotFound,
        other => Failure::Fatal(other.to_string()),
    }
}

fn classify_status(code: u16, message: &str) -> Failure {
    let detail = || match quote(message) {
        m if m.is_empty() => format!("HTTP status {code}"),
        m => format!("HTTP status {code}: {m}"),
    };
    match code {
        401 | 403 => Failure::Unauthorized,
        404 => Failure::NotFound,
        408 | 425 | 429 | 500..=599 => Failure::Transient(detail()),
        _ => Failure::Fatal(detail()),
    }
}

fn classify_envelope(envelope: &OciEnvelope) -> Failure {
    let has = |codes: &[OciErrorCode]| envelope.errors.iter().any(|e| codes.contains(&e.code));
    if has(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
        Failure::Unauthorized
    } else if has(&[
        OciErrorCode::BlobUnknown,
        OciErrorCode::ManifestUnknown,
        OciErrorCode::NameUnknown,
        OciErrorCode::NotFound,
    ]) {
        Failure::NotFound
    } else if has(&[OciErrorCode::Toomanyrequests]) {
        Failure::Transient(quote(&envelope.to_string()))
    } else {
        Failure::Fatal(quote(&envelope.to_string()))
    }
}

fn classify_reqwest(error: &reqwest::Error) -> Failure {
    if let Some(status) = error.status() {
        return classify_status(status.as_u16(), "");
    }
    if let Some(refused) = refused_redirect(error) {
        return Failure::Error(refused);
    }
    if error.is_builder() {
        return Failure::Fatal(error_chain(error));
    }
    Failure::Transient(error_chain(error))
}

fn classify_io(error: std::io::Error) -> Failure {
    if let Some(inner) = error.get_ref() {
        if let Some(DigestError::VerificationError { expected, actual }) =
            inner.downcast_ref::<DigestError>()
        {
            return Failure::Mismatch {
                expected: expected.clone(),
                actual: actual.clone(),
            };
        }
        if let Some(e) = inner.downcast_ref::<reqwest::Error>() {
            return classify_reqwest(e);
        }
    }
    Failure::Transient(error_chain(&error))
}

/// Raised by the redirect policy of kiln's own HTTP client.
#[derive(Debug)]
struct PlainHttpRedirect(String);

impl std::fmt::Display for PlainHttpRedirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redirected to plain HTTP at {}", self.0)
    }
}

impl std::error::Error for PlainHttpRedirect {}

fn refused_redirect(error: &reqwest::Error) -> Option<Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(PlainHttpRedirect(host)) = e.downcast_ref::<PlainHttpRedirect>() {
            return Some(Error::PlainHttpRefused { host: host.clone() });
        }
        source = e.source();
    }
    None
}

/// Whether an HTTPS attempt failed because the server speaks plain HTTP
/// (rustls reads an HTTP response where a TLS record should be).
pub(crate) fn looks_like_plain_http(error: &reqwest::Error) -> bool {
    let text = error_chain(error);
    text.contains("InvalidContentType") || text.contains("corrupt message")
}

/// `host[:port]` of a URL, as the plain-HTTP policy spells hosts.
fn authority(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// kiln's own HTTP client: the same timeouts as oci-client's, and
/// redirects never downgrade to plain HTTP where the policy forbids it.
pub(crate) fn http_client(options: &RegistryOptions) -> Result<reqwest::Client, Error> {
    let insecure = options.insecure.clone();
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 10 {
            return attempt.error("more than 10 redirects");
        }
        let target = authority(attempt.url());
        if attempt.url().scheme() != "https" && !plain_http_allowed(&target, &insecure) {
            return attempt.error(PlainHttpRedirect(target));
        }
        attempt.follow()
    });
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(options.timeout)
        .read_timeout(options.timeout)
        .redirect(policy)
        .build()
        .map_err(|e| {
            Error::Internal(format!(
                "cannot set up the HTTP client: {}",
                error_chain(&e)
            ))
        })
}

fn oci_client(scheme: Scheme, options: &RegistryOptions) -> Result<oci_client::Client, Error> {
    let parallel = options.parallel_blobs.max(1);
    let config = ClientConfig {
        protocol: match scheme {
            Scheme::Http => ClientProtocol::Http,
            Scheme::Https => ClientProtocol::Https,
        },
        // kiln picks the platform itself, and names the ones offered when
        // none fits.
        platform_resolver: None,
        // One PUT streaming the blob from the store: fewer round trips
        // than 4 MiB PATCHes, and still one buffer in memory at a time.
        use_monolithic_push: true,
        max_concurrent_download: parallel,
        max_concurrent_upload: parallel,
        read_timeout: Some(options.timeout),
        connect_timeout: Some(options.timeout),
        user_agent: USER_AGENT,
        ..ClientConfig::default()
    };
    oci_client::Client::try_from(config).map_err(|e| {
        Error::Internal(format!(
            "cannot set up the registry client: {}",
            error_chain(&e)
        ))
    })
}

/// Why a `GET /v2/` gave no challenge.
enum ProbeError {
    /// No HTTP answer at all.
    Transport(reqwest::Error),
    /// An answer that is not a registry's (or a busy one: `transient`).
    Status {
        status: u16,
        body: String,
        transient: bool,
    },
}

async fn probe(
    http: &reqwest::Client,
    scheme: Scheme,
    host: &RegistryHost,
) -> Result<Challenge, ProbeError> {
    let url = format!("{}://{}/v2/", scheme.as_str(), host.api);
    let response = http.get(&url).send().await.map_err(ProbeError::Transport)?;
    let status = response.status();
    if status.is_success() {
        return Ok(Challenge::None);
    }
    if status == reqwest::StatusCode::UNAUTHORIZED {
        let challenges: Vec<String> = response
            .headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        return Ok(parse_challenges(&challenges));
    }
    let body = response.text().await.unwrap_or_default();
    Err(ProbeError::Status {
        status: status.as_u16(),
        body: quote(&body),
        transient: matches!(status.as_u16(), 408 | 429 | 500..=599),
    })
}

/// Picks the challenge to answer: bearer (with a realm) over basic.
fn parse_challenges(headers: &[String]) -> Challenge {
    let mut found = Vec::new();
    for header in headers {
        match http_auth::parse_challenges(header) {
            Ok(challenges) => {
                for c in challenges {
                    let param = |name: &str| {
                        c.params
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.to_unescaped())
                    };
                    found.push(if c.scheme.eq_ignore_ascii_case("bearer") {
                        match param("realm") {
                            Some(realm) => Challenge::Bearer {
                                realm,
                                service: param("service"),
                            },
                            None => Challenge::Other("Bearer without a realm".into()),
                        }
                    } else if c.scheme.eq_ignore_ascii_case("basic") {
                        Challenge::Basic
                    } else {
                        Challenge::Other(c.scheme.to_owned())
                    });
                }
            }
            Err(e) => tracing::debug!(header, error = %e, "unparsable WWW-Authenticate header"),
        }
    }
    let rank = |c: &Challenge| match c {
        Challenge::Bearer { .. } => 0,
        Challenge::Basic => 1,
        _ => 2,
    };
    found.sort_by_key(rank);
    found
        .into_iter()
        .next()
        .unwrap_or_else(|| Challenge::Other("no WWW-Authenticate header".into()))
}

/// Probes `host` over `scheme`, retrying network failures.
async fn probe_retrying(
    http: &reqwest::Client,
    scheme: Scheme,
    host: &RegistryHost,
    options: &RegistryOptions,
    plain_allowed: bool,
) -> Result<Challenge, Error> {
    let action = format!(
        "checking the registry API at {}://{}/v2/",
        scheme.as_str(),
        host.api
    );
    let mut attempt = 1;
    loop {
        let last = match probe(http, scheme, host).await {
            Ok(challenge) => return Ok(challenge),
            Err(ProbeError::Transport(e)) => {
                if scheme == Scheme::Https && !plain_allowed && looks_like_plain_http(&e) {
                    return Err(Error::PlainHttpRefused {
                        host: host.key.clone(),
                    });
                }
                error_chain(&e)
            }
            Err(ProbeError::Status {
                status,
                body,
                transient: true,
            }) => format!("HTTP status {status}: {body}"),
            Err(ProbeError::Status { status, body, .. }) => {
                return Err(Error::Registry {
                    host: host.key.clone(),
                    action,
                    message: format!(
                        "HTTP status {status} (is this an OCI registry?){}",
                        if body.is_empty() {
                            String::new()
                        } else {
                            format!(": {body}")
                        }
                    ),
                })
            }
        };
        if attempt >= options.attempts {
            return Err(Error::Network {
                host: host.key.clone(),
                action,
                attempts: attempt,
                last,
            });
        }
        tracing::info!(registry = %host.key, attempt, error = %last, "registry unreachable; retrying");
        tokio::time::sleep(backoff(options.retry_delay, attempt)).await;
        attempt += 1;
    }
}

/// Works out the scheme: HTTPS, except that hosts allowed plain HTTP
/// (loopback, `insecure`) fall back to it when HTTPS gets no answer, as
/// docker and containerd do. A user who wrote `http://` gets HTTP, if
/// the policy allows it, and nothing else.
async fn discover(
    http: &reqwest::Client,
    host: &RegistryHost,
    options: &RegistryOptions,
) -> Result<(Scheme, Challenge), Error> {
    let allowed = plain_http_allowed(&host.api, &options.insecure)
        || plain_http_allowed(&host.key, &options.insecure);
    match (host.scheme, allowed) {
        (Some(Scheme::Http), false) => Err(Error::PlainHttpRefused {
            host: host.key.clone(),
        }),
        (Some(scheme), _) => {
            let challenge = probe_retrying(http, scheme, host, options, allowed).await?;
            Ok((scheme, challenge))
        }
        (None, true) => match probe(http, Scheme::Https, host).await {
            Ok(challenge) => Ok((Scheme::Https, challenge)),
            Err(ProbeError::Transport(e)) => {
                tracing::debug!(registry = %host.key, error = %error_chain(&e),
                    "no HTTPS answer; trying plain HTTP, which this host is allowed");
                let challenge = probe_retrying(http, Scheme::Http, host, options, true).await?;
                Ok((Scheme::Http, challenge))
            }
            Err(ProbeError::Status { .. }) => {
                let challenge = probe_retrying(http, Scheme::Https, host, options, true).await?;
                Ok((Scheme::Https, challenge))
            }
        },
        (None, false) => {
            let challenge = probe_retrying(http, Scheme::Https, host, options, false).await?;
            Ok((Scheme::Https, challenge))
        }
    }
}

/// Sends a request built by `build`, retrying network failures and busy
/// answers; any other answer is returned.
async fn send_retrying(
    options: &RegistryOptions,
    host: &RegistryHost,
    action: &str,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, Error> {
    let mut attempt = 1;
    loop {
        let last = match build().send().await {
            Ok(response) => {
                let code = response.status().as_u16();
                if !matches!(code, 408 | 429 | 500..=599) {
                    return Ok(response);
                }
                format!("HTTP status {code}")
            }
            Err(e) => {
                if let Some(refused) = refused_redirect(&e) {
                    return Err(refused);
                }
                error_chain(&e)
            }
        };
        if attempt >= options.attempts {
            return Err(Error::Network {
                host: host.key.clone(),
                action: action.to_owned(),
                attempts: attempt,
                last,
            });
        }
        tokio::time::sleep(backoff(options.retry_delay, attempt)).await;
        attempt += 1;
    }
}

/// Asks the token service a bearer challenge names for a token, with the
/// user's credentials when there are any.
async fn fetch_token(
    http: &reqwest::Client,
    host: &RegistryHost,
    options: &RegistryOptions,
    realm: &str,
    service: Option<&str>,
    scope: Option<&str>,
    credentials: Option<&FoundCredentials>,
) -> Result<Secret, Error> {
    let action = "getting a token for the registry";
    let bad_realm = |why: String| Error::Registry {
        host: host.key.clone(),
        action: action.to_owned(),
        message: why,
    };
    let url = reqwest::Url::parse(realm)
        .map_err(|e| bad_realm(format!("its token realm {realm:?} is not a URL ({e})")))?;
    match url.scheme() {
        "https" => {}
        "http" if plain_http_allowed(&authority(&url), &options.insecure) => {}
        "http" => {
            return Err(Error::PlainHttpRefused {
                host: authority(&url),
            })
        }
        other => return Err(bad_realm(format!("its token realm has scheme {other:?}"))),
    }
    let mut query = Vec::new();
    if let Some(service) = service {
        query.push(("service", service));
    }
    if let Some(scope) = scope {
        query.push(("scope", scope));
    }
    let response = send_retrying(options, host, action, || {
        let request = http.get(url.clone()).query(&query);
        match credentials {
            Some(found) => request.basic_auth(
                &found.credentials.username,
                Some(found.credentials.password.expose()),
            ),
            None => request,
        }
    })
    .await?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(Error::Unauthorized {
            host: host.key.clone(),
            why: match credentials {
                Some(found) => format!(
                    "its token service at {} rejected the credentials of user {} (from {})",
                    authority(&url),
                    found.credentials.username,
                    found.file.display()
                ),
                None => format!(
                    "its token service at {} refuses anonymous access and no credentials are saved for it",
                    authority(&url)
                ),
            },
        });
    }
    let body = response.bytes().await.map_err(|e| Error::Network {
        host: host.key.clone(),
        action: action.to_owned(),
        attempts: 1,
        last: error_chain(&e),
    })?;
    if !status.is_success() {
        return Err(bad_realm(format!(
            "its token service at {} answered HTTP status {}",
            authority(&url),
            status.as_u16()
        )));
    }
    #[derive(serde::Deserialize)]
    struct TokenResponse {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        access_token: Option<String>,
    }
    // The body holds the token: its parse error is not quoted.
    let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
        bad_realm(format!(
            "its token service at {} did not answer with a token",
            authority(&url)
        ))
    })?;
    parsed
        .token
        .filter(|t| !t.is_empty())
        .or(parsed.access_token.filter(|t| !t.is_empty()))
        .map(Secret::new)
        .ok_or_else(|| {
            bad_realm(format!(
                "its token service at {} answered without a token",
                authority(&url)
            ))
        })
}

/// Checks `username`/`password` against registry `host` and saves them in
/// kiln's credential file. Nothing is saved when the registry rejects them.
pub async fn login(
    host: &str,
    username: &str,
    password: &str,
    options: &RegistryOptions,
) -> Result<(), Error> {
    if username.is_empty() {
        return Err(Error::InvalidCredentials("the user name is empty".into()));
    }
    if username.contains(':') {
        return Err(Error::InvalidCredentials(
            "a user name cannot contain ':'".into(),
        ));
    }
    if password.is_empty() {
        return Err(Error::InvalidCredentials("the password is empty".into()));
    }
    let host = RegistryHost::parse(host)?;
    let path = options
        .credentials_file
        .clone()
        .ok_or(Error::NoCredentialFile)?;
    let found = FoundCredentials {
        credentials: Credentials {
            username: username.to_owned(),
            password: Secret::new(password),
        },
        file: path.clone(),
    };
    let http = http_client(options)?;
    let (scheme, challenge) = discover(&http, &host, options).await?;
    match challenge {
        Challenge::Bearer { realm, service } => {
            let token = fetch_token(
                &http,
                &host,
                options,
                &realm,
                service.as_deref(),
                None,
                Some(&found),
            )
            .await;
            match token {
                Ok(_) => {}
                Err(Error::Unauthorized { .. }) => {
                    return Err(Error::LoginRejected {
                        host: host.key.clone(),
                        username: username.to_owned(),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        Challenge::None | Challenge::Basic | Challenge::Other(_) => {
            let url = format!("{}://{}/v2/", scheme.as_str(), host.api);
            let response = send_retrying(options, &host, "checking the credentials", || {
                http.get(&url).basic_auth(username, Some(password))
            })
            .await?;
            let status = response.status();
            if status == reqwest::StatusCode::UNAUTHORIZED
                || status == reqwest::StatusCode::FORBIDDEN
            {
                return Err(Error::LoginRejected {
                    host: host.key.clone(),
                    username: username.to_owned(),
                });
            }
            if !status.is_success() {
                return Err(Error::Registry {
                    host: host.key.clone(),
                    action: "checking the credentials".into(),
                    message: format!("HTTP status {}", status.as_u16()),
                });
            }
        }
    }
    credentials::save(&path, &host.key, &found.credentials)?;
    tracing::info!(registry = %host.key, file = %path.display(), "registry credentials saved");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn challenges_prefer_bearer_and_unescape() {
        let c = parse_challenges(&[
            r#"Basic realm="Registry Realm""#.to_owned(),
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a\"b:pull""#.to_owned(),
        ]);
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
            }
        );
        assert_eq!(
            parse_challenges(&[r#"Basic realm="x""#.to_owned()]),
            Challenge::Basic
        );
        assert!(matches!(parse_challenges(&[]), Challenge::Other(_)));
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let first = Duration::from_millis(100);
        assert_eq!(backoff(first, 1), first);
        assert_eq!(backoff(first, 3), Duration::from_millis(400));
        assert_eq!(backoff(first, 40), MAX_BACKOFF);
    }

    #[test]
    fn scrub_removes_every_secret() {
        let secrets = vec!["hunter22".to_owned(), "tok-abc".to_owned()];
        assert_eq!(
            scrub("pw hunter22 and tok-abc, hunter22", &secrets),
            "pw *** and ***, ***"
        );
    }

    #[test]
    fn statuses_sort_into_retry_or_final() {
        assert!(matches!(classify_status(503, ""), Failure::Transient(_)));
        assert!(matches!(classify_status(429, ""), Failure::Transient(_)));
        assert!(matches!(classify_status(401, ""), Failure::Unauthorized));
        assert!(matches!(classify_status(404, ""), Failure::NotFound));
        assert!(matches!(classify_status(400, "x"), Failure::Fatal(m) if m.contains('x')));
        let envelope: OciEnvelope = serde_json::from_str(
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        )
        .unwrap();
        assert!(matches!(classify_envelope(&envelope), Failure::NotFound));
    }

    /// A real rustls handshake against a server answering in plain HTTP,
    /// as a registry without TLS does.
    #[tokio::test]
    async fn https_to_a_plain_http_server_is_recognised() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        });
        let http = http_client(&RegistryOptions::default()).unwrap();
        let err = http
            .get(format!("https://{addr}/v2/"))
            .send()
            .await
            .unwrap_err();
        server.join().unwrap();
        assert!(looks_like_plain_http(&err), "{}", error_chain(&err));
    }

    #[tokio::test]
    async fn explicit_plain_http_is_refused_before_connecting() {
        let options = RegistryOptions {
            credentials_file: None,
            docker_config_file: None,
            ..RegistryOptions::default()
        };
        let host = RegistryHost::parse("http://registry.invalid:5000").unwrap();
        let http = http_client(&options).unwrap();
        let err = discover(&http, &host, &options).await.unwrap_err();
        assert!(matches!(err, Error::PlainHttpRefused { .. }), "{err}");
    }

    #[tokio::test]
    async fn plain_http_token_realms_elsewhere_are_refused() {
        let host = RegistryHost::parse("registry.example.com").unwrap();
        let options = RegistryOptions::default();
        let http = http_client(&options).unwrap();
        let err = fetch_token(
            &http,
            &host,
            &options,
            "http://auth.example.com/token",
            None,
            None,
            None,
        )
        .await
        .unwrap_err();
        match err {
            Error::PlainHttpRefused { host } => assert_eq!(host, "auth.example.com"),
            other => panic!("{other}"),
        }
    }
}
