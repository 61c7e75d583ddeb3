//! The runner's side of the server's HTTP API (crates/kiln-server/API.md):
//! registration, the long-held `next`, heartbeats, logs, steps and finish.
//!
//! Every answer is sorted into what the runner does about it
//! ([`CallError`]): retry (no answer, or a 5xx), drop the job (404/409),
//! stop for good (401), or report a refusal. One line is printed when the
//! server stops answering and one when it answers again, however many
//! requests fail in between.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

/// How long a request other than `next` may take before it counts as lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How much longer than the asked wait a `next` request may take.
const NEXT_SLACK: Duration = Duration::from_secs(20);

/// Why a call did not succeed, sorted by what to do about it.
#[derive(Debug)]
pub enum CallError {
    /// No answer (refused, reset, timed out) or a server error: retry.
    Unreachable(String),
    /// 404 or 409: the job is no longer this runner's.
    Gone,
    /// 401: the token was refused (revoked, or never valid).
    Unauthorized,
    /// Any other answer: the request itself was refused.
    Rejected { status: u16, message: String },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(why) => write!(f, "server unreachable: {why}"),
            CallError::Gone => write!(f, "the job is no longer this runner's"),
            CallError::Unauthorized => write!(f, "the server refused the token"),
            CallError::Rejected { status, message } => {
                write!(f, "the server refused the request ({status}): {message}")
            }
        }
    }
}

/// A job handed to this runner (`ClaimedJob` in API.md).
#[derive(Clone, Debug, Deserialize)]
pub struct ClaimedJob {
    pub id: i64,
    pub repo: String,
    pub url: String,
    pub git_ref: String,
    pub commit: Option<String>,
    pub attempt: i64,
    /// The repository's defaults; a server without them sends none.
    #[serde(default)]
    pub limits: kiln_server::RepoLimits,
}

impl ClaimedJob {
    pub fn job_ref(&self) -> JobRef {
        JobRef {
            id: self.id,
            attempt: self.attempt,
        }
    }
}

/// One attempt of a job: what every report about a job names. A job
/// requeued while this runner was cut off may be claimed again by another
/// slot while its old attempt still runs here; the attempt tells the two
/// apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobRef {
    pub id: i64,
    pub attempt: i64,
}

/// A job the server's heartbeat answer says to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cancel {
    pub id: i64,
    /// The attempt to stop; `None` (a server that does not name attempts)
    /// stops every attempt of the job held.
    pub attempt: Option<i64>,
}

impl Cancel {
    pub fn covers(&self, job: JobRef) -> bool {
        self.id == job.id && self.attempt.is_none_or(|attempt| attempt == job.attempt)
    }
}

/// One piece of a job's log.
#[derive(Clone, Debug, Serialize)]
pub struct LogChunk {
    pub seq: i64,
    pub stream: &'static str,
    pub data: String,
}

/// One step of a job, as `Job.steps` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepRecord {
    pub step: u64,
    pub name: String,
    pub key: String,
    pub status: &'static str,
    pub cached: bool,
    pub duration_ms: Option<f64>,
}

/// The server, as this runner talks to it. No `Debug`: it holds a token.
pub struct Api {
    http: reqwest::Client,
    base: String,
    /// The runner token, set once by [`Api::register`]; kept in memory only.
    token: OnceLock<String>,
    down: AtomicBool,
    /// Wakes every retry waiting out a backoff once any request gets an
    /// answer again: a backlog goes out the moment the server is back.
    back: tokio::sync::Notify,
}

impl Api {
    pub fn new(server: &str) -> anyhow::Result<Api> {
        let base = server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!("--server {base:?}: expected an http:// or https:// URL");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("kiln-runner/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Api {
            http,
            base,
            token: OnceLock::new(),
            down: AtomicBool::new(false),
            back: tokio::sync::Notify::new(),
        })
    }

    pub fn server(&self) -> &str {
        &self.base
    }

    /// Registers with a registration token; the runner token it gets back
    /// is used for every later call. Returns the runner id.
    pub async fn register(
        &self,
        registration: &str,
        name: &str,
        labels: &[String],
    ) -> Result<i64, CallError> {
        #[derive(Deserialize)]
        struct Registered {
            runner_id: i64,
            token: String,
        }
        let request = self
            .http
            .post(self.url("/api/runners/register"))
            .bearer_auth(registration)
            .timeout(REQUEST_TIMEOUT)
            .json(&serde_json::json!({ "name": name, "labels": labels }));
        let body = self.send(request).await?;
        let registered: Registered = parse(&body)?;
        // A second registration (there is none) would keep the first token.
        let _ = self.token.set(registered.token);
        Ok(registered.runner_id)
    }

    /// Waits up to `wait` for a job; `None` when none came.
    pub async fn next(&self, wait: Duration) -> Result<Option<ClaimedJob>, CallError> {
        let path = format!("/api/runner/next?wait_ms={}", wait.as_millis());
        let request = self.runner(self.http.get(self.url(&path)), wait + NEXT_SLACK);
        let response = self.send_raw(request).await?;
        if response.0 == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        parse(&response.1).map(Some)
    }

    /// Reports the job attempts held; returns those among them to stop now.
    pub async fn heartbeat(&self, jobs: &[JobRef]) -> Result<Vec<Cancel>, CallError> {
        let ids: Vec<i64> = jobs.iter().map(|job| job.id).collect();
        let attempts: Vec<i64> = jobs.iter().map(|job| job.attempt).collect();
        let request = self.runner(
            self.http
                .post(self.url("/api/runner/heartbeat"))
                .json(&serde_json::json!({ "jobs": ids, "attempts": attempts })),
            REQUEST_TIMEOUT,
        );
        let body = self.send(request).await?;
        Ok(parse::<HeartbeatAnswer>(&body)?.cancels())
    }

    pub async fn post_logs(&self, job: JobRef, chunks: &[LogChunk]) -> Result<(), CallError> {
        let request = self.runner(
            self.http.post(self.job_url(job, "logs")).json(chunks),
            REQUEST_TIMEOUT,
        );
        self.send(request).await.map(drop)
    }

    pub async fn post_steps(&self, job: JobRef, steps: &[StepRecord]) -> Result<(), CallError> {
        let request = self.runner(
            self.http.post(self.job_url(job, "steps")).json(steps),
            REQUEST_TIMEOUT,
        );
        self.send(request).await.map(drop)
    }

    /// Reports the job's end, and the commit it built if it got that far.
    pub async fn finish(
        &self,
        job: JobRef,
        succeeded: bool,
        commit: Option<&str>,
    ) -> Result<(), CallError> {
        let status = if succeeded { "succeeded" } else { "failed" };
        let request = self.runner(
            self.http
                .post(self.job_url(job, "finish"))
                .json(&serde_json::json!({ "status": status, "commit": commit })),
            REQUEST_TIMEOUT,
        );
        self.send(request).await.map(drop)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A report about one attempt of a job: the server refuses it (404)
    /// once that attempt is not the job's current one.
    fn job_url(&self, job: JobRef, report: &str) -> String {
        self.url(&format!(
            "/api/runner/jobs/{}/{report}?attempt={}",
            job.id, job.attempt
        ))
    }

    fn runner(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> reqwest::RequestBuilder {
        let token = self.token.get().map(String::as_str).unwrap_or("");
        request.bearer_auth(token).timeout(timeout)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Vec<u8>, CallError> {
        self.send_raw(request).await.map(|(_, body)| body)
    }

    /// Sends, and sorts the answer: only 2xx comes back as `Ok`.
    async fn send_raw(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), CallError> {
        let answered = match request.send().await {
            Ok(response) => {
                let status = response.status();
                response.bytes().await.map(|body| (status, body.to_vec()))
            }
            Err(e) => Err(e),
        };
        let (status, body) = match answered {
            Ok(answer) => answer,
            Err(e) => return Err(self.unreachable(describe(e))),
        };
        if status.is_server_error() {
            return Err(self.unreachable(format!("{status}: {}", error_message(&body))));
        }
        self.reachable();
        match status {
            s if s.is_success() => Ok((s, body)),
            StatusCode::UNAUTHORIZED => Err(CallError::Unauthorized),
            StatusCode::NOT_FOUND | StatusCode::CONFLICT => Err(CallError::Gone),
            s => Err(CallError::Rejected {
                status: s.as_u16(),
                message: error_message(&body),
            }),
        }
    }

    fn unreachable(&self, why: String) -> CallError {
        if !self.down.swap(true, Ordering::SeqCst) {
            eprintln!(
                "kiln runner: cannot reach {} ({why}); retrying, running jobs carry on",
                self.base
            );
        }
        CallError::Unreachable(why)
    }

    fn reachable(&self) {
        if self.down.swap(false, Ordering::SeqCst) {
            eprintln!("kiln runner: {} answers again", self.base);
            self.back.notify_waiters();
        }
    }

    /// Waits before retrying a call that found the server unreachable: the
    /// backoff's delay, cut short as soon as any request gets through.
    pub(crate) async fn retry_after(&self, backoff: &mut super::Backoff) {
        let back = self.back.notified();
        if !self.down.load(Ordering::SeqCst) {
            // Another request got through since this one failed.
            return;
        }
        tokio::select! {
            _ = backoff.wait() => {}
            _ = back => {}
        }
    }
}

/// The heartbeat's answer: `cancel_attempts` is parallel to `cancel`.
#[derive(Deserialize)]
struct HeartbeatAnswer {
    #[serde(default)]
    cancel: Vec<i64>,
    #[serde(default)]
    cancel_attempts: Option<Vec<i64>>,
}

impl HeartbeatAnswer {
    fn cancels(self) -> Vec<Cancel> {
        // A server that does not say which attempt (or says it oddly) means
        // the job as a whole.
        let attempts = self
            .cancel_attempts
            .filter(|attempts| attempts.len() == self.cancel.len());
        match attempts {
            Some(attempts) => self
                .cancel
                .into_iter()
                .zip(attempts)
                .map(|(id, attempt)| Cancel {
                    id,
                    attempt: Some(attempt),
                })
                .collect(),
            None => self
                .cancel
                .into_iter()
                .map(|id| Cancel { id, attempt: None })
                .collect(),
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, CallError> {
    serde_json::from_slice(body).map_err(|e| CallError::Rejected {
        status: 200,
        message: format!("unexpected answer: {e}"),
    })
}

/// The `error` of an `{"error": "..."}` body, else the body itself.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => e.error,
        Err(_) => String::from_utf8_lossy(body).chars().take(200).collect(),
    }
}

/// A reqwest error with its causes ("connection refused" is a few levels
/// down from "error sending request").
/// The server's URL is said once in the line that reports it; not here.
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(&error);
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

#[cfg(test)]
mod tests {

    #[tokio::test]
    async fn a_retry_goes_out_as_soon_as_any_request_gets_through() {
        let api = Api::new("http://127.0.0.1:9").unwrap();
        let _ = api.unreachable("connection refused".into());
        // Backed off to its longest wait, as after a long outage.
        let mut backoff = super::super::Backoff {
            next: super::super::Backoff::MAX,
        };
        let started = std::time::Instant::now();
        let retry = async {
            api.retry_after(&mut backoff).await;
            started.elapsed()
        };
        let seen_again = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            api.reachable();
        };
        let (waited, ()) = tokio::join!(retry, seen_again);
        assert!(
            waited >= Duration::from_millis(290) && waited < Duration::from_millis(1500),
            "waited {waited:?}, not until the server was seen again (300 ms)"
        );
        // Once the server is known to answer, a retry does not wait at all.
        let started = std::time::Instant::now();
        api.retry_after(&mut backoff).await;
        assert!(started.elapsed() < Duration::from_millis(50));
    }

    use super::*;

    fn answer(json: &str) -> Vec<Cancel> {
        serde_json::from_str::<HeartbeatAnswer>(json)
            .unwrap()
            .cancels()
    }

    #[test]
    fn a_cancel_stops_the_attempt_named_or_all_when_none_is() {
        let (old, new) = (JobRef { id: 7, attempt: 1 }, JobRef { id: 7, attempt: 2 });
        let cancels = answer(r#"{"cancel": [7], "cancel_attempts": [1]}"#);
        assert_eq!(
            cancels,
            vec![Cancel {
                id: 7,
                attempt: Some(1)
            }]
        );
        assert!(cancels[0].covers(old));
        assert!(!cancels[0].covers(new));
        assert!(!cancels[0].covers(JobRef { id: 8, attempt: 1 }));

        for older_server in [
            r#"{"runner_id": 1, "cancel": [7]}"#,
            r#"{"cancel": [7], "cancel_attempts": [1, 2]}"#,
        ] {
            let cancels = answer(older_server);
            assert_eq!(
                cancels,
                vec![Cancel {
                    id: 7,
                    attempt: None
                }]
            );
            assert!(cancels[0].covers(old) && cancels[0].covers(new));
        }
    }
}
