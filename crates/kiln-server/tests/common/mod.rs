//! A real server on 127.0.0.1 with a real SQLite database in a temp dir.
#![allow(dead_code)] // each test binary uses part of this

use kiln_server::{Server, ServerConfig};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub admin: String,
    pub http: reqwest::Client,
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

pub fn config(dir: &Path, lost_after: Duration) -> ServerConfig {
    let mut config = ServerConfig::new(dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.lost_after = lost_after;
    config
}

/// Binds and serves on `dir`; returns the address, the task, and the
/// admin token if this bind created it.
pub async fn serve(
    dir: &Path,
    lost_after: Duration,
) -> (SocketAddr, tokio::task::JoinHandle<()>, Option<String>) {
    let mut server = Server::bind(config(dir, lost_after)).await.unwrap();
    let addr = server.local_addr().unwrap();
    let admin = server
        .take_initial_admin_token()
        .map(|token| token.expose().to_owned());
    let handle = tokio::spawn(async move { server.serve().await.unwrap() });
    (addr, handle, admin)
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(Duration::from_secs(10)).await
    }

    pub async fn start_with(lost_after: Duration) -> TestServer {
        TestServer::start_configured(|config| config.lost_after = lost_after).await
    }

    /// A server whose config `adjust` changes from the tests' defaults.
    pub async fn start_configured(adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path(), Duration::from_secs(10));
        adjust(&mut config);
        let mut server = Server::bind(config).await.unwrap();
        let addr = server.local_addr().unwrap();
        let admin = server
            .take_initial_admin_token()
            .map(|token| token.expose().to_owned())
            .unwrap();
        let handle = tokio::spawn(async move { server.serve().await.unwrap() });
        TestServer {
            dir,
            addr,
            admin,
            http: reqwest::Client::new(),
            handle,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends a request with an optional bearer token and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        call(&self.http, self.addr, method, path, token, body).await
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> Value {
        let (status, value) = self
            .call(Method::POST, path, Some(&self.admin), Some(body))
            .await;
        assert!(status.is_success(), "POST {path}: {status} {value}");
        value
    }

    pub async fn admin_get(&self, path: &str) -> Value {
        let (status, value) = self.call(Method::GET, path, Some(&self.admin), None).await;
        assert!(status.is_success(), "GET {path}: {status} {value}");
        value
    }

    pub async fn add_repo(&self, name: &str) {
        self.admin_post(
            "/api/repos",
            json!({ "name": name, "url": format!("https://git.example.test/{name}.git") }),
        )
        .await;
    }

    pub async fn queue(&self, repo: &str) -> i64 {
        let value = self
            .admin_post(
                &format!("/api/repos/{repo}/jobs"),
                json!({ "commit": "0123abcd" }),
            )
            .await;
        value["id"].as_i64().unwrap()
    }

    /// A registration token, then a runner registered with it: (runner_id, token).
    pub async fn register_runner(&self, name: &str) -> (i64, String) {
        let registration = self.admin_post("/api/runner-tokens", json!({})).await;
        let registration = registration["token"].as_str().unwrap().to_owned();
        let (status, value) = self
            .call(
                Method::POST,
                "/api/runners/register",
                Some(&registration),
                Some(json!({ "name": name, "labels": ["linux"] })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{value}");
        (
            value["runner_id"].as_i64().unwrap(),
            value["token"].as_str().unwrap().to_owned(),
        )
    }

    /// `GET /api/runner/next?wait_ms=N`: the job's JSON, or `None` on 204.
    pub async fn next(&self, runner_token: &str, wait_ms: u64) -> Option<Value> {
        next(&self.http, self.addr, runner_token, wait_ms).await
    }
}

pub async fn call(
    http: &reqwest::Client,
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = http.request(method, format!("http://{addr}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let bytes = response.bytes().await.unwrap();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)))
    };
    (status, value)
}

pub async fn next(
    http: &reqwest::Client,
    addr: SocketAddr,
    runner_token: &str,
    wait_ms: u64,
) -> Option<Value> {
    let (status, value) = call(
        http,
        addr,
        Method::GET,
        &format!("/api/runner/next?wait_ms={wait_ms}"),
        Some(runner_token),
        None,
    )
    .await;
    match status {
        StatusCode::OK => Some(value),
        StatusCode::NO_CONTENT => None,
        other => panic!("next: {other} {value}"),
    }
}

/// `sha256=HEX` of the HMAC-SHA256 of `body` under `secret`, as forges sign webhooks.
pub fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A GitHub push payload for `branch` of the repository at `clone_url`.
pub fn push_payload(name: &str, clone_url: &str, branch: &str, after: &str) -> Value {
    json!({
        "ref": format!("refs/heads/{branch}"),
        "before": "0000000000000000000000000000000000000000",
        "after": after,
        "deleted": false,
        "repository": {
            "name": name,
            "full_name": format!("someone/{name}"),
            "clone_url": clone_url,
            "ssh_url": format!("git@forge.example.test:someone/{name}.git"),
            "html_url": format!("https://forge.example.test/someone/{name}"),
        },
    })
}

/// Posts a webhook: `event_header` names the forge's event header
/// (`X-GitHub-Event`, ...), `signature` the `X-Hub-Signature-256` value.
/// `bearer` is sent too when given, to show it counts for nothing.
pub async fn post_hook(
    http: &reqwest::Client,
    addr: SocketAddr,
    event_header: &str,
    event: &str,
    body: &[u8],
    signature: Option<&str>,
    bearer: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = http
        .post(format!("http://{addr}/hooks/github"))
        .header(event_header, event)
        .header("Content-Type", "application/json")
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("X-Hub-Signature-256", signature);
    }
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let bytes = response.bytes().await.unwrap();
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    (status, value)
}

/// Every row of every table, as text: what "nothing changed" compares.
pub fn snapshot(data_dir: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(data_dir.join("kiln.db")).unwrap();
    let mut rows = Vec::new();
    for table in ["tokens", "repos", "runners", "jobs", "log_chunks", "steps"] {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2"))
            .unwrap();
        let columns = stmt.column_count();
        let mut query = stmt.query([]).unwrap();
        while let Some(row) = query.next().unwrap() {
            let mut line = format!("{table}:");
            for index in 0..columns {
                let value: rusqlite::types::Value = row.get(index).unwrap();
                line.push_str(&format!(" {value:?}"));
            }
            rows.push(line);
        }
    }
    rows
}
