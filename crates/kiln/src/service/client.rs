//! The HTTP client of the service's API: bearer token, JSON bodies, and
//! errors that say what the server answered or that it could not be reached.

use std::fmt;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Where the admin token is, for error messages (the server prints it once).
const WHERE_THE_ADMIN_TOKEN_IS: &str = "the admin token was printed when `kiln server` first \
     started and is saved as admin.token in its data directory, /var/lib/kiln-server when run as \
     root";

/// A secret given on the command line or through the environment. Its
/// `Debug` never shows the value, so it cannot leak through `{:?}`.
#[derive(Clone)]
pub struct SecretArg(String);

impl SecretArg {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretArg {
    fn from(value: String) -> SecretArg {
        SecretArg(value)
    }
}

impl fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How a client command reaches the server.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The server's URL.
    #[arg(
        long,
        env = "KILN_SERVER",
        default_value = "http://127.0.0.1:8420",
        value_name = "URL"
    )]
    pub server: String,
    /// An admin or API token (better in KILN_TOKEN than on the command line,
    /// where it lands in shell history). `kiln server` prints the admin token
    /// on its first start and saves it as DATA/admin.token.
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<SecretArg>,
}

/// An authenticated connection to one server.
pub struct ApiClient {
    base: String,
    token: SecretArg,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(args: &ClientArgs) -> Result<ApiClient> {
        let base = args.server.trim().trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!(
                "--server {base:?} is not an http:// or https:// URL (e.g. http://127.0.0.1:8420)"
            );
        }
        let token = args
            .token
            .clone()
            .filter(|token| !token.expose().trim().is_empty())
            .ok_or_else(|| {
                anyhow!("no token: pass --token or set KILN_TOKEN; {WHERE_THE_ADMIN_TOKEN_IS}")
            })?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        Ok(ApiClient { base, token, http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token.expose())
    }

    /// Sends `request` and returns the answer if it is 2xx; otherwise the
    /// error names the server's message and the status.
    pub async fn send(&self, request: RequestBuilder) -> Result<Response> {
        let response = request.send().await.map_err(|err| self.unreachable(err))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|value| value.get("error")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| body.trim().chars().take(200).collect());
        let hint = if status == StatusCode::UNAUTHORIZED {
            format!(" (check --token / KILN_TOKEN; {WHERE_THE_ADMIN_TOKEN_IS})")
        } else {
            String::new()
        };
        bail!(
            "the server at {} answered {status}: {message}{hint}",
            self.base
        )
    }

    fn unreachable(&self, err: reqwest::Error) -> anyhow::Error {
        let what = if err.is_connect() {
            "cannot connect to"
        } else if err.is_timeout() {
            "timed out talking to"
        } else {
            "lost the connection to"
        };
        anyhow::Error::new(Unreachable(format!(
            "{what} the kiln server at {} (is `kiln server` running there? set --server or \
             KILN_SERVER): {}",
            self.base,
            error_chain(&err)
        )))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let response = self.send(self.request(Method::GET, path)).await?;
        self.json(response).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: Option<&Value>) -> Result<T> {
        let mut request = self.request(Method::POST, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.send(request).await?;
        self.json(response).await
    }

    /// A GET whose body is read as a stream (server-sent events).
    pub async fn get_stream(&self, path: &str) -> Result<Response> {
        self.send(
            self.request(Method::GET, path)
                .header(reqwest::header::ACCEPT, "text/event-stream"),
        )
        .await
    }

    async fn json<T: DeserializeOwned>(&self, response: Response) -> Result<T> {
        let url = response.url().path().to_owned();
        let bytes = response
            .bytes()
            .await
            .map_err(|err| self.unreachable(err))?;
        serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "the server at {} answered {url} with something other than the expected JSON",
                self.base
            )
        })
    }
}

/// The server could not be reached or the connection broke: worth trying
/// again, unlike an answer.
#[derive(Debug)]
pub struct Unreachable(String);

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// `err` and its causes on one line: reqwest's own message is often just
/// "error sending request".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
