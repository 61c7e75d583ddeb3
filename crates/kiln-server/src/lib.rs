//! kiln's CI service core: repositories, a durable job queue, and the HTTP
//! API that admins and pull-based runners use. The contract is `API.md`
//! beside this crate.
//!
//! State lives in SQLite, by default at `DATA/kiln.db` (WAL,
//! `synchronous=FULL`: a job the API accepted survives a crash). All SQL is
//! in [`store`] and plain enough for PostgreSQL to follow; until then
//! [`parse_db_url`] refuses `postgres://` URLs with a clear error.
//!
//! How jobs get queued: `POST /api/repos/{name}/jobs`, a signed push webhook
//! (`POST /hooks/github`, GitHub, Gitea or Forgejo), or polling: for a repo
//! with `poll_seconds > 0` the server runs `git ls-remote` every N seconds and
//! queues a job when the branch head moves.
//!
//! Runners pull: `GET /api/runner/next?wait_ms=N` returns the oldest queued job
//! at once, or holds the request until a job is queued (the queueing request
//! wakes it, there is no polling interval) or `wait_ms` passes (204). A job
//! is claimed in one transaction, so no two runners get the same one. A
//! runner's heartbeat lists the jobs it holds and learns which to stop
//! (cancelled, or no longer its own). A runner not heard from for
//! `lost_after` has its running jobs put back in the queue (`attempt + 1`);
//! so does a job assigned more than `lost_after` ago that its runner's
//! heartbeat does not list (the `next` answer was lost).
//!
//! Logs and steps belong to an attempt: a requeued job starts a fresh log
//! (seq from 0) and step list. `GET /api/jobs/{id}/logs?follow=true` streams
//! the log as server-sent events, woken by each append.
//!
//! Rules:
//! - Every `/api` endpoint needs a bearer token of the right kind
//!   ([`TokenKind`]); anything else is 401 and changes nothing. The webhook
//!   endpoint takes an HMAC-SHA256 signature instead, checked in constant time.
//! - Tokens are stored as sha256 only and compared in constant time. The
//!   first admin token is written to `DATA/admin.token` (0600, one line) and
//!   handed out once by [`Server::take_initial_admin_token`]. No token value
//!   or webhook secret reaches a log line, an error or a `Debug` output.
//! - The server listens on loopback unless configured otherwise.
//! - No connection is held for free: slow request heads, idle keep-alive
//!   connections and trickled bodies are cut after their timeouts, and at
//!   most `max_connections` are served at once (see [`ServerConfig`]). An
//!   answer in progress (a held `next`, a followed log) is never cut.
//! - Only the admin token may register a repository that is not a network
//!   URL (a local path, `file://`, a transport helper), unless it lies
//!   under one of `local_repo_roots`; nothing git would read as an option
//!   (url, host, branch, ref) is taken from anyone.
//! - A runner touches only the jobs it holds.

pub mod config;
mod conn;
mod follow;
mod poller;
mod repo_url;
pub mod server;
pub mod store;
pub mod token;
mod webhook;

pub use config::{parse_db_url, DbUrl, DbUrlError, ServerConfig};
pub use server::{Server, ServerError, MAX_WAIT, MAX_WEBHOOK_BODY};
pub use store::{Job, JobStatus, LogChunk, RepoLimits, Step, StepStatus, Store, StoreError};
pub use token::{Token, TokenHash, TokenKind};
