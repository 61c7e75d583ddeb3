//! The kiln engine: solves a graph of container operations in real OCI
//! containers, re-running only what changed.
//!
//! Layers below: `kiln-graph` (values and keys), `kiln-store` (the
//! content-addressed store), `kiln-oci` (images), `kiln-fs` (trees, views,
//! export), `kiln-exec` (runc on overlayfs), `kiln-scrub` (secret redaction).
//!
//! The solver ([`solve`](crate::solve)) keys the whole requested graph first
//! (hashing host directories by content), then walks it from the top:
//! a node whose key is in the action cache is done without touching its
//! inputs; others solve their inputs concurrently and run. Progress is a
//! stream of [`Event`]s from [`Engine::subscribe`]. Every byte of step output
//! passes through a streaming redactor holding all secrets registered with
//! the engine before it reaches an event, the cache or an error.
//! [`Engine::cancel`] stops an engine's run for good: running steps' containers
//! are killed however the solve is driven (an async task, or a blocking
//! thread as Starlark's solving methods use), and nothing new starts.

mod api;
mod config;
mod engine;
mod error;
mod events;
mod images;
mod lines;
pub mod lockfile;
mod services;
mod solve;

pub use api::{
    CacheVolume, Container, ContainerConfig, Directory, ExecOptions, File, Secret, Service,
    ServiceOptions,
};
pub use engine::{Engine, EngineOptions};
pub use error::{Error, Result, StepFailure, TAIL_LINES};
pub use events::{Ending, Event, Outcome, StepId, Stream, Subscription};
pub use images::ImagePolicy;
/// What `with_hostname` and `with_ulimit` accept, as the runtime checks it.
pub use kiln_exec::{default_runtime, valid_hostname, Rlimit};
pub use kiln_graph::{
    parse_cpus, parse_duration, parse_memory, Expect, Limits, Readiness, Sharing,
};
pub use lines::{LineAssembler, Lines, LINE_CAP, LINE_WAIT};
pub use lockfile::{LockFile, LOCK_FILE};
pub use services::{service_hostname, DEFAULT_READY_TIMEOUT};
