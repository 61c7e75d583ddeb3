//! The HTTP API: routes, authentication, long-polling and the lost-runner reaper.

use crate::config::{DbUrl, ServerConfig};
use crate::store::{
    now_micros, ClaimedJob, FinishOutcome, Job, JobStatus, LogChunk, NewRepo, Principal, RunnerJob,
    Step, Store, StoreError,
};
use crate::token::{Token, TokenKind};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// The longest a runner's `next` request is held.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// The largest webhook body taken; GitHub's own limit for a payload is 25 MB,
/// but a push event is a few KiB and nothing here needs the file lists.
pub const MAX_WEBHOOK_BODY: usize = 1024 * 1024;

/// Failures starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

pub(crate) struct Shared {
    store: Mutex<Store>,
    /// Woken whenever a job enters the queue.
    pub(crate) queued: Notify,
    /// Woken whenever a job's log, status or attempt changes: what log
    /// followers wait on.
    pub(crate) job_events: Notify,
    lost_after: Duration,
    started: tokio::time::Instant,
    /// Where API tokens may register local repositories.
    local_repo_roots: Vec<PathBuf>,
}

pub(crate) type AppState = Arc<Shared>;

impl Shared {
    /// How stale a runner's `last_seen` may be before a request rewrites
    /// it: a twentieth of the runner timeout, so the reaper's view is off
    /// by at most 5 % while a runner's steady requests rarely commit.
    fn seen_fresh_for(&self) -> i64 {
        i64::try_from((self.lost_after / 20).as_micros()).unwrap_or(i64::MAX)
    }

    /// Runs `f` on the store from the blocking pool: SQLite calls fsync.
    pub(crate) async fn db<T, F>(self: &Arc<Self>, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    {
        let shared = Arc::clone(self);
        let joined = tokio::task::spawn_blocking(move || {
            let mut store = shared
                .store
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut store)
        })
        .await;
        match joined {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                tracing::error!(error = %err, "store failure");
                Err(ApiError::Internal)
            }
            Err(err) => {
                tracing::error!(error = %err, "store task failed");
                Err(ApiError::Internal)
            }
        }
    }
}

/// A bound server, not yet serving.
pub struct Server {
    listener: TcpListener,
    shared: AppState,
    admin_token: Option<Token>,
    limits: crate::conn::Limits,
    max_connections: usize,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.listener.local_addr().ok())
            .field("admin_token", &self.admin_token)
            .finish()
    }
}

impl Server {
    /// Opens the data directory and binds the listener.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        let data_dir = config.data_dir.clone();
        let DbUrl::Sqlite(db_path) = config.db.clone();
        let opened = tokio::task::spawn_blocking(move || Store::open_file(&db_path, &data_dir))
            .await
            .map_err(|err| ServerError::Serve(std::io::Error::other(err)))??;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        if !config.listen.ip().is_loopback() {
            tracing::warn!(addr = %config.listen, "listening beyond loopback");
        }
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                store: Mutex::new(opened.store),
                queued: Notify::new(),
                job_events: Notify::new(),
                lost_after: config.lost_after,
                started: tokio::time::Instant::now(),
                local_repo_roots: config.local_repo_roots,
            }),
            admin_token: opened.new_admin_token,
            limits: crate::conn::Limits {
                header_read: config.header_read_timeout,
                idle: config.idle_timeout,
                body_read: config.body_read_timeout,
            },
            max_connections: config.max_connections,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin token, if binding created the data directory's first one.
    /// It is also in `DATA/admin.token`.
    pub fn take_initial_admin_token(&mut self) -> Option<Token> {
        self.admin_token.take()
    }

    /// Serves until `shutdown` completes, then waits for the open
    /// connections to finish the requests they are answering.
    pub async fn serve_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        // Dropping this future (not only returning) must stop the reaper and the poller.
        let _reaper = AbortOnDrop(tokio::spawn(reap_lost_runners(Arc::clone(&self.shared))));
        let _poller = AbortOnDrop(tokio::spawn(crate::poller::poll_repos(Arc::clone(
            &self.shared,
        ))));
        let app = router(Arc::clone(&self.shared));
        crate::conn::serve(
            self.listener,
            app,
            self.limits,
            self.max_connections,
            shutdown,
        )
        .await;
        Ok(())
    }

    /// Serves forever.
    pub async fn serve(self) -> Result<(), ServerError> {
        self.serve_until(std::future::pending()).await
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn router(shared: AppState) -> Router {
    Router::new()
        .route("/api/repos", post(create_repo).get(list_repos))
        .route("/api/repos/{name}/jobs", post(trigger_job))
        .route("/api/jobs", get(list_jobs))
        .route("/api/jobs/{id}", get(get_job))
        .route("/api/jobs/{id}/logs", get(get_logs))
        .route("/api/jobs/{id}/cancel", post(cancel_job))
        .route("/api/jobs/{id}/retry", post(retry_job))
        .route("/api/runner-tokens", post(create_registration_token))
        .route("/api/api-tokens", post(create_api_token))
        .route("/api/tokens/revoke", post(revoke_token))
        .route("/api/runners/register", post(register_runner))
        .route("/api/runner/next", get(next_job))
        .route("/api/runner/heartbeat", post(heartbeat))
        .route("/api/runner/jobs/{id}/logs", post(append_logs))
        .route("/api/runner/jobs/{id}/steps", post(record_steps))
        .route("/api/runner/jobs/{id}/finish", post(finish_job))
        .route(
            "/hooks/github",
            post(crate::webhook::github_hook).layer(DefaultBodyLimit::max(MAX_WEBHOOK_BODY)),
        )
        .fallback(no_such_endpoint)
        .layer(axum::middleware::from_fn(errors_as_json))
        .with_state(shared)
}

async fn no_such_endpoint(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("endpoint {method} {}", uri.path()))
}

/// Gives the errors axum makes itself (a body that is not JSON, a path id that
/// is not a number, a wrong method) the `{"error": "..."}` shape every other
/// error has, keeping their status and headers.
async fn errors_as_json(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Rejection texts are a line or two; a longer body is not buffered but
    // replaced by the status's reason.
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    let body = serde_json::json!({ "error": message }).to_string();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// Every `lost_after / 8`, requeues the jobs of runners gone quiet (so a
/// lost runner is noticed at most an eighth late). Runners get a full
/// `lost_after` after the server starts to reach it again.
async fn reap_lost_runners(shared: AppState) {
    let period = (shared.lost_after / 8).max(Duration::from_millis(50));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if shared.started.elapsed() < shared.lost_after {
            continue;
        }
        let lost_after = i64::try_from(shared.lost_after.as_micros()).unwrap_or(i64::MAX);
        let cutoff = now_micros().saturating_sub(lost_after);
        match shared.db(move |store| store.requeue_lost(cutoff)).await {
            Ok(0) => {}
            Ok(requeued) => {
                tracing::warn!(requeued, "requeued the jobs of lost runners");
                shared.queued.notify_waiters();
                shared.job_events.notify_waiters();
            }
            Err(_) => {} // logged by `db`
        }
    }
}

/// Errors the API returns, as `{"error": "..."}`.
#[derive(Debug)]
pub(crate) enum ApiError {
    Unauthorized,
    /// A webhook delivery whose signature is missing, wrong or uncheckable.
    BadSignature(String),
    /// The token is valid but may not do this; the message says what would.
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    BadRequest(String),
    Internal,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A webhook's 401 is about its signature: no bearer token would help.
        let bearer_challenge = matches!(self, ApiError::Unauthorized);
        let (status, message) = match self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "missing, unknown, revoked or wrong kind of token".to_owned(),
            ),
            ApiError::BadSignature(why) => (StatusCode::UNAUTHORIZED, why),
            ApiError::Forbidden(why) => (StatusCode::FORBIDDEN, why),
            ApiError::NotFound(what) => (StatusCode::NOT_FOUND, format!("{what} not found")),
            ApiError::Conflict(why) => (StatusCode::CONFLICT, why),
            ApiError::BadRequest(why) => (StatusCode::BAD_REQUEST, why),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; see the server log".to_owned(),
            ),
        };
        let mut response = (status, Json(serde_json::json!({ "error": message }))).into_response();
        if bearer_challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

fn bearer(parts: &Parts) -> Result<String, ApiError> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(|token| token.trim().to_owned())
        .filter(|token| !token.is_empty())
        .ok_or(ApiError::Unauthorized)
}

async fn principal(parts: &Parts, shared: &AppState) -> Result<Principal, ApiError> {
    let presented = bearer(parts)?;
    shared
        .db(move |store| store.authenticate(&presented))
        .await?
        .ok_or(ApiError::Unauthorized)
}

/// When the request arrived, taken before anything else is done with it.
struct ArrivedAt(i64);

impl FromRequestParts<AppState> for ArrivedAt {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(_: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        Ok(ArrivedAt(now_micros()))
    }
}

/// Holder of the admin token (not an API token).
struct AdminOnlyAuth;

impl FromRequestParts<AppState> for AdminOnlyAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match principal(parts, state).await? {
            Principal::Admin => Ok(AdminOnlyAuth),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

/// Holder of an admin or API token.
struct AdminAuth {
    /// The admin token itself, not an API token.
    admin: bool,
}

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match principal(parts, state).await? {
            Principal::Admin => Ok(AdminAuth { admin: true }),
            Principal::Api => Ok(AdminAuth { admin: false }),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

/// Holder of a runner-registration token.
struct RegistrationAuth;

impl FromRequestParts<AppState> for RegistrationAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match principal(parts, state).await? {
            Principal::RunnerRegistration => Ok(RegistrationAuth),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

/// A registered runner; authenticating marks it seen.
struct RunnerAuth(i64);

impl FromRequestParts<AppState> for RunnerAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = bearer(parts)?;
        let fresh_for = state.seen_fresh_for();
        let runner = state
            .db(move |store| match store.authenticate(&presented)? {
                Some(Principal::Runner { runner_id }) => {
                    store.touch_runner(runner_id, fresh_for)?;
                    Ok(Some(runner_id))
                }
                _ => Ok(None),
            })
            .await?;
        runner.map(RunnerAuth).ok_or(ApiError::Unauthorized)
    }
}

fn rfc3339(micros: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_micros(micros.max(0) as u64);
    humantime::format_rfc3339_micros(at).to_string()
}

#[derive(Serialize)]
struct JobView {
    id: i64,
    repo: String,
    git_ref: String,
    commit: Option<String>,
    status: JobStatus,
    runner: Option<i64>,
    runner_name: Option<String>,
    attempt: i64,
    queued_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    /// Only in `GET /api/jobs/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<Vec<Step>>,
}

impl From<Job> for JobView {
    fn from(job: Job) -> JobView {
        JobView {
            id: job.id,
            repo: job.repo,
            git_ref: job.git_ref,
            commit: job.commit_sha,
            status: job.status,
            runner: job.runner,
            runner_name: job.runner_name,
            attempt: job.attempt,
            queued_at: rfc3339(job.queued_at),
            started_at: job.started_at.map(rfc3339),
            finished_at: job.finished_at.map(rfc3339),
            steps: None,
        }
    }
}

#[derive(Deserialize)]
struct CreateRepo {
    name: String,
    url: String,
    branch: Option<String>,
    poll_seconds: Option<i64>,
    webhook_secret: Option<String>,
    #[serde(default)]
    limits: crate::store::RepoLimits,
}

/// Names end up in URLs, paths and command lines: a leading '-' would read
/// as an option, a leading '.' as a hidden file or `..`.
fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "{what} {name:?} must be 1 to 100 of A-Z a-z 0-9 - _ . and not start with '-' or '.'"
        )))
    }
}

/// Whether the caller may register `url` for repo `name`: network URLs
/// anyone may; local paths and other transports only the admin token, or
/// API tokens for paths under a configured root.
fn check_repo_url(
    shared: &Shared,
    auth: &AdminAuth,
    name: &str,
    url: &str,
) -> Result<(), ApiError> {
    use crate::repo_url::{classify, is_under, UrlKind};
    // The url itself is not repeated: it may hold a password.
    let kind = classify(url)
        .map_err(|why| ApiError::BadRequest(format!("the url of repo {name:?} {why}")))?;
    if auth.admin {
        return Ok(());
    }
    let allowed_root = match &kind {
        UrlKind::Network => return Ok(()),
        UrlKind::Local(Some(path)) => is_under(path, &shared.local_repo_roots),
        UrlKind::Local(None) | UrlKind::Other => false,
    };
    if allowed_root {
        return Ok(());
    }
    let roots = if shared.local_repo_roots.is_empty() {
        "none are allowed now".to_owned()
    } else {
        let shown: Vec<String> = shared
            .local_repo_roots
            .iter()
            .map(|root| root.display().to_string())
            .collect();
        format!("allowed now: {}", shown.join(", "))
    };
    Err(ApiError::Forbidden(format!(
        "the url of repo {name:?} is not an https://, http://, ssh://, git:// or user@host:path \
         URL: only the admin token may add local paths, file:// URLs and other transports. \
         To let API tokens add local repositories, start the server with \
         --allow-local-repos DIR and give an absolute path under DIR ({roots})"
    )))
}

async fn create_repo(
    auth: AdminAuth,
    State(shared): State<AppState>,
    Json(body): Json<CreateRepo>,
) -> Result<impl IntoResponse, ApiError> {
    check_name("repo name", &body.name)?;
    check_repo_url(&shared, &auth, &body.name, &body.url)?;
    let branch = body.branch.unwrap_or_else(|| "main".to_owned());
    if let Some(problem) = crate::repo_url::ref_problem(&branch) {
        return Err(ApiError::BadRequest(format!(
            "branch {branch:?} of repo {:?} must be a branch name: it {problem}",
            body.name
        )));
    }
    let poll_seconds = body.poll_seconds.unwrap_or(0);
    if poll_seconds < 0 {
        return Err(ApiError::BadRequest(format!(
            "poll_seconds of repo {:?} must not be negative",
            body.name
        )));
    }
    if let Some(field) = body.limits.invalid_field() {
        return Err(ApiError::BadRequest(format!(
            "limits.{field} of repo {:?} must be a positive number",
            body.name
        )));
    }
    let repo = NewRepo {
        name: body.name,
        url: body.url,
        branch,
        poll_seconds,
        webhook_secret: body.webhook_secret.filter(|secret| !secret.is_empty()),
        limits: body.limits,
    };
    let name = repo.name.clone();
    if shared.db(move |store| store.add_repo(&repo)).await? {
        Ok((
            StatusCode::CREATED,
            Json(serde_json::json!({ "name": name })),
        ))
    } else {
        Err(ApiError::Conflict(format!("repo {name:?} exists already")))
    }
}

async fn list_repos(
    _: AdminAuth,
    State(shared): State<AppState>,
) -> Result<impl IntoResponse, ApiError> {
    let repos = shared.db(|store| store.repos()).await?;
    let repos: Vec<_> = repos
        .into_iter()
        .map(|repo| {
            serde_json::json!({
                "name": repo.name,
                "url": repo.url,
                "branch": repo.branch,
                "poll_seconds": repo.poll_seconds,
                "has_webhook_secret": repo.has_webhook_secret,
                "limits": repo.limits,
            })
        })
        .collect();
    Ok(Json(repos))
}

#[derive(Deserialize, Default)]
struct TriggerJob {
    git_ref: Option<String>,
    commit: Option<String>,
}

async fn trigger_job(
    // First, so the job is queued at the moment it was asked for.
    ArrivedAt(queued_at): ArrivedAt,
    _: AdminAuth,
    State(shared): State<AppState>,
    Path(name): Path<String>,
    body: Option<Json<TriggerJob>>,
) -> Result<impl IntoResponse, ApiError> {
    let body = body.map(|Json(body)| body).unwrap_or_default();
    if let Some(git_ref) = &body.git_ref {
        if let Some(problem) = crate::repo_url::ref_problem(git_ref) {
            return Err(ApiError::BadRequest(format!(
                "git_ref {git_ref:?} must be a branch, tag or ref name: it {problem}"
            )));
        }
    }
    if let Some(commit) = &body.commit {
        if commit.is_empty() || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ApiError::BadRequest(format!(
                "commit {commit:?} is not a hex object name"
            )));
        }
    }
    let repo = name.clone();
    let id = shared
        .db(move |store| {
            store.queue_job(
                &repo,
                body.git_ref.as_deref(),
                body.commit.as_deref(),
                queued_at,
            )
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("repo {name:?}")))?;
    shared.queued.notify_waiters();
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))))
}

async fn list_jobs(
    _: AdminAuth,
    State(shared): State<AppState>,
) -> Result<impl IntoResponse, ApiError> {
    let jobs = shared.db(|store| store.jobs()).await?;
    Ok(Json(
        jobs.into_iter().map(JobView::from).collect::<Vec<_>>(),
    ))
}

async fn get_job(
    _: AdminAuth,
    State(shared): State<AppState>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, ApiError> {
    let (job, steps) = shared
        .db(move |store| {
            Ok(match store.job(id)? {
                Some(job) => Some((job, store.steps(id)?)),
                None => None,
            })
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
    let mut view = JobView::from(job);
    view.steps = Some(steps);
    Ok(Json(view))
}

#[derive(Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
    /// Only chunks with a greater seq (of the current attempt).
    after: Option<i64>,
}

async fn get_logs(
    _: AdminAuth,
    State(shared): State<AppState>,
    Path(id): Path<i64>,
    Query(query): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let after = query.after.unwrap_or(-1);
    if query.follow {
        return crate::follow::follow_logs(shared, id, after).await;
    }
    let logs = shared
        .db(move |store| {
            Ok(match store.job(id)? {
                Some(job) => Some(store.logs_after(id, job.attempt, after)?),
                None => None,
            })
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
    Ok(Json(logs).into_response())
}

async fn cancel_job(
    _: AdminAuth,
    State(shared): State<AppState>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, ApiError> {
    match shared.db(move |store| store.cancel_job(id)).await? {
        None => Err(ApiError::NotFound(format!("job {id}"))),
        Some(false) => Err(ApiError::Conflict(format!("job {id} has finished already"))),
        Some(true) => {
            shared.job_events.notify_waiters();
            Ok(Json(serde_json::json!({ "id": id, "status": "cancelled" })))
        }
    }
}

async fn retry_job(
    ArrivedAt(queued_at): ArrivedAt,
    _: AdminAuth,
    State(shared): State<AppState>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, ApiError> {
    match shared
        .db(move |store| store.retry_job(id, queued_at))
        .await?
    {
        None => Err(ApiError::NotFound(format!("job {id}"))),
        Some(Err(status)) => Err(ApiError::Conflict(format!(
            "job {id} is {} and has not finished",
            status.as_str()
        ))),
        Some(Ok(new_id)) => {
            shared.queued.notify_waiters();
            Ok((
                StatusCode::CREATED,
                Json(serde_json::json!({ "id": new_id })),
            ))
        }
    }
}

async fn create_registration_token(
    _: AdminAuth,
    State(shared): State<AppState>,
) -> Result<impl IntoResponse, ApiError> {
    let token = shared
        .db(|store| store.create_token(TokenKind::RunnerRegistration))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "token": token.expose() })),
    ))
}

async fn create_api_token(
    _: AdminOnlyAuth,
    State(shared): State<AppState>,
) -> Result<impl IntoResponse, ApiError> {
    let token = shared
        .db(|store| store.create_token(TokenKind::Api))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "token": token.expose() })),
    ))
}

#[derive(Deserialize)]
struct RevokeToken {
    token: String,
}

async fn revoke_token(
    _: AdminAuth,
    State(shared): State<AppState>,
    Json(body): Json<RevokeToken>,
) -> Result<impl IntoResponse, ApiError> {
    if shared
        .db(move |store| store.revoke_token(&body.token))
        .await?
    {
        Ok(Json(serde_json::json!({ "revoked": true })))
    } else {
        Err(ApiError::NotFound("live token with that value".to_owned()))
    }
}

#[derive(Deserialize)]
struct RegisterRunner {
    name: String,
    #[serde(default)]
    labels: Vec<String>,
}

async fn register_runner(
    _: RegistrationAuth,
    State(shared): State<AppState>,
    Json(body): Json<RegisterRunner>,
) -> Result<impl IntoResponse, ApiError> {
    check_name("runner name", &body.name)?;
    for label in &body.labels {
        check_name("runner label", label)?;
    }
    let (runner_id, token) = shared
        .db(move |store| store.register_runner(&body.name, &body.labels))
        .await?;
    tracing::info!(runner_id, "registered a runner");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "runner_id": runner_id, "token": token.expose() })),
    ))
}

#[derive(Deserialize)]
struct NextQuery {
    #[serde(default)]
    wait_ms: u64,
}

fn claimed_view(claimed: ClaimedJob) -> serde_json::Value {
    serde_json::json!({
        "id": claimed.job.id,
        "repo": claimed.job.repo,
        "url": claimed.url,
        "git_ref": claimed.job.git_ref,
        "commit": claimed.job.commit_sha,
        "attempt": claimed.job.attempt,
        "limits": claimed.limits,
        "queued_at": rfc3339(claimed.job.queued_at),
        "started_at": claimed.job.started_at.map(rfc3339),
    })
}

/// Hands out the oldest queued job, waiting up to `wait_ms` for one.
async fn next_job(
    RunnerAuth(runner_id): RunnerAuth,
    State(shared): State<AppState>,
    Query(query): Query<NextQuery>,
) -> Result<Response, ApiError> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(query.wait_ms).min(MAX_WAIT);
    loop {
        // Registered before looking, so a job queued between the look and
        // the wait still wakes us.
        let woken = shared.queued.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if let Some(claimed) = shared.db(move |store| store.claim_next(runner_id)).await? {
            tracing::info!(runner_id, job = claimed.job.id, "job started");
            return Ok(Json(claimed_view(claimed)).into_response());
        }
        tokio::select! {
            _ = &mut woken => {}
            _ = tokio::time::sleep_until(deadline) => {
                // The runner waited; it was present all along.
                let fresh_for = shared.seen_fresh_for();
                shared
                    .db(move |store| store.touch_runner(runner_id, fresh_for))
                    .await?;
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
        }
    }
}

#[derive(Deserialize)]
struct HeartbeatBody {
    /// The jobs the runner is working on.
    jobs: Vec<i64>,
    /// The attempt of each of `jobs`, in the same order. Runners from before
    /// attempts were reported leave it out.
    #[serde(default)]
    attempts: Option<Vec<i64>>,
}

async fn heartbeat(
    RunnerAuth(runner_id): RunnerAuth,
    State(shared): State<AppState>,
    Json(body): Json<HeartbeatBody>,
) -> Result<impl IntoResponse, ApiError> {
    let held: Vec<RunnerJob> = match &body.attempts {
        None => body
            .jobs
            .iter()
            .copied()
            .map(RunnerJob::any_attempt)
            .collect(),
        Some(attempts) if attempts.len() == body.jobs.len() => body
            .jobs
            .iter()
            .zip(attempts)
            .map(|(&id, &attempt)| RunnerJob::attempt(id, attempt))
            .collect(),
        Some(attempts) => {
            return Err(ApiError::BadRequest(format!(
                "heartbeat lists {} jobs but {} attempts; expected one attempt per job",
                body.jobs.len(),
                attempts.len()
            )))
        }
    };
    let lost_after = i64::try_from(shared.lost_after.as_micros()).unwrap_or(i64::MAX);
    let assigned_before = now_micros().saturating_sub(lost_after);
    let outcome = shared
        .db(move |store| store.heartbeat(runner_id, &held, assigned_before))
        .await?;
    if !outcome.requeued.is_empty() {
        tracing::warn!(
            runner_id,
            jobs = ?outcome.requeued,
            "requeued jobs a runner's heartbeat did not list"
        );
        shared.queued.notify_waiters();
        shared.job_events.notify_waiters();
    }
    let cancel: Vec<i64> = outcome.cancel.iter().map(|job| job.id).collect();
    let mut answer = serde_json::json!({ "runner_id": runner_id, "cancel": cancel });
    // Parallel to `cancel`, for a runner that may hold two attempts of a job.
    if body.attempts.is_some() {
        let attempts: Vec<Option<i64>> = outcome.cancel.iter().map(|job| job.attempt).collect();
        answer["cancel_attempts"] = serde_json::json!(attempts);
    }
    Ok(Json(answer))
}

/// `?attempt=N` on a runner's posts about a job: which attempt they are for.
#[derive(Deserialize)]
struct AttemptQuery {
    attempt: Option<i64>,
}

impl AttemptQuery {
    fn job(&self, id: i64) -> RunnerJob {
        RunnerJob {
            id,
            attempt: self.attempt,
        }
    }
}

fn not_held(runner_id: i64, job: RunnerJob) -> ApiError {
    let id = job.id;
    ApiError::NotFound(match job.attempt {
        Some(attempt) => format!("running job {id} attempt {attempt} of runner {runner_id}"),
        None => format!("running job {id} of runner {runner_id}"),
    })
}

async fn append_logs(
    RunnerAuth(runner_id): RunnerAuth,
    State(shared): State<AppState>,
    Path(id): Path<i64>,
    Query(query): Query<AttemptQuery>,
    Json(chunks): Json<Vec<LogChunk>>,
) -> Result<impl IntoResponse, ApiError> {
    for chunk in &chunks {
        if chunk.seq < 0 {
            return Err(ApiError::BadRequest(format!(
                "log chunk seq {} of job {id} is negative",
                chunk.seq
            )));
        }
        if !matches!(chunk.stream.as_str(), "stdout" | "stderr" | "system") {
            return Err(ApiError::BadRequest(format!(
                "log chunk {} of job {id} names stream {:?}; expected stdout, stderr or system",
                chunk.seq, chunk.stream
            )));
        }
    }
    let count = chunks.len();
    let job = query.job(id);
    if !shared
        .db(move |store| store.append_logs(runner_id, job, &chunks))
        .await?
    {
        return Err(not_held(runner_id, job));
    }
    shared.job_events.notify_waiters();
    Ok(Json(serde_json::json!({ "received": count })))
}

async fn record_steps(
    RunnerAuth(runner_id): RunnerAuth,
    State(shared): State<AppState>,
    Path(id): Path<i64>,
    Query(query): Query<AttemptQuery>,
    Json(steps): Json<Vec<Step>>,
) -> Result<impl IntoResponse, ApiError> {
    for step in &steps {
        if step.step < 0 {
            return Err(ApiError::BadRequest(format!(
                "step number {} of job {id} is negative",
                step.step
            )));
        }
        if let Some(duration) = step.duration_ms {
            if !duration.is_finite() || duration < 0.0 {
                return Err(ApiError::BadRequest(format!(
                    "step {} of job {id} has duration_ms {duration}; expected a non-negative number",
                    step.step
                )));
            }
        }
    }
    let count = steps.len();
    let job = query.job(id);
    if !shared
        .db(move |store| store.record_steps(runner_id, job, &steps))
        .await?
    {
        return Err(not_held(runner_id, job));
    }
    Ok(Json(serde_json::json!({ "received": count })))
}

#[derive(Deserialize)]
struct FinishJob {
    status: JobStatus,
    /// The commit the runner built: kept for jobs queued without one.
    #[serde(default)]
    commit: Option<String>,
}

async fn finish_job(
    RunnerAuth(runner_id): RunnerAuth,
    State(shared): State<AppState>,
    Path(id): Path<i64>,
    Query(query): Query<AttemptQuery>,
    Json(body): Json<FinishJob>,
) -> Result<impl IntoResponse, ApiError> {
    if !matches!(body.status, JobStatus::Succeeded | JobStatus::Failed) {
        return Err(ApiError::BadRequest(format!(
            "job {id} can finish as succeeded or failed, not {}",
            body.status.as_str()
        )));
    }
    if let Some(commit) = &body.commit {
        let full_length = commit.len() == 40 || commit.len() == 64;
        if !full_length || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ApiError::BadRequest(format!(
                "job {id}: commit {commit:?} is not a full hex object name"
            )));
        }
    }
    let (status, commit) = (body.status, body.commit);
    let job = query.job(id);
    match shared
        .db(move |store| store.finish_job(runner_id, job, status, commit.as_deref()))
        .await?
    {
        FinishOutcome::Finished => {}
        FinishOutcome::NotHeld => return Err(not_held(runner_id, job)),
        FinishOutcome::NotRunning(now) => {
            return Err(ApiError::Conflict(format!(
                "job {id} is {}, not running",
                now.as_str()
            )))
        }
    }
    shared.job_events.notify_waiters();
    tracing::info!(
        runner_id,
        job = id,
        status = status.as_str(),
        "job finished"
    );
    Ok(Json(serde_json::json!({ "id": id, "status": status })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        assert_eq!(
            rfc3339(1_700_000_000_123_456),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("repo name", "kiln-app_1.x").is_ok());
        assert!(check_name("repo name", "").is_err());
        assert!(check_name("repo name", "../etc").is_err());
        assert!(check_name("repo name", "a b").is_err());
        assert!(check_name("repo name", "-rf").is_err());
        assert!(check_name("repo name", "--upload-pack=x").is_err());
        assert!(check_name("repo name", ".hidden").is_err());
        assert!(check_name("repo name", "a-b.c").is_ok());
    }
}
