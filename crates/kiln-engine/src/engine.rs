//! The engine handle: the open store, the runtime, in-process memo of solved
//! values, registered secrets and event subscribers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use futures::future::{BoxFuture, Shared};
use kiln_graph::{Filter, Key, SecretNode, SecretSource};
use kiln_scrub::Redactor;
use kiln_store::Store;
use tokio::sync::{watch, Semaphore};

use crate::error::{Error, Result};
use crate::events::{Event, StepId};
use crate::solve::Solved;

/// How to open an engine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// The store directory (see `Store::default_root`).
    pub store: PathBuf,
    /// The OCI runtime binary: runc, or a compatible one (crun, youki).
    pub runtime: PathBuf,
    /// How many steps may run at once.
    pub max_parallel_steps: usize,
    /// How image references resolve: lock pins, registries, offline.
    pub images: crate::ImagePolicy,
    /// Build graphs but solve nothing: solving, and resolving an image,
    /// fail with [`Error::PlanOnly`](crate::Error::PlanOnly). `kiln lock`
    /// evaluates a pipeline this way to learn which images it uses.
    pub plan_only: bool,
    /// Show a cached step's kept output again, as [`Event::Output`] with
    /// `replayed`, right after its [`Event::Cached`]: a runner's job log is
    /// then complete whichever attempt or machine ran the step.
    pub replay_cached: bool,
    /// Limits of every step that sets none of its own (`--memory`,
    /// `--cpus`, `--pids`, a per-step timeout). Unset fields are
    /// unlimited, except pids ([`kiln_exec::StepLimits::DEFAULT_PIDS`]).
    pub default_limits: kiln_graph::Limits,
}

impl Default for EngineOptions {
    fn default() -> EngineOptions {
        EngineOptions {
            store: Store::default_root(),
            runtime: std::env::var_os("KILN_RUNTIME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(kiln_exec::default_runtime),
            // Steps are mostly waiting on I/O or on each other (a test suite
            // waiting for a service), so allow more than one per core.
            max_parallel_steps: std::thread::available_parallelism()
                .map(|n| n.get() * 4)
                .unwrap_or(8)
                .max(8),
            images: crate::ImagePolicy::default(),
            plan_only: false,
            replay_cached: false,
            default_limits: kiln_graph::Limits::default(),
        }
    }
}

/// A handle on the engine. Cheap to clone; every clone is the same engine.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) type SolveFuture = Shared<BoxFuture<'static, Result<Arc<Solved>>>>;

pub(crate) struct Inner {
    pub store: Store,
    pub runtime: kiln_exec::Runtime,
    pub steps: Semaphore,
    /// In-process results by key, so a value used twice is solved once.
    pub memo: Mutex<HashMap<Key, SolveFuture>>,
    pub images: Mutex<HashMap<String, Arc<kiln_oci::Image>>>,
    pub image_policy: crate::ImagePolicy,
    pub plan_only: bool,
    pub replay_cached: bool,
    pub default_limits: kiln_graph::Limits,
    /// Every reference given to `container()`, as written.
    pub image_references: Mutex<BTreeSet<String>>,
    /// Every tag resolved (normalised) and the digest it meant.
    pub resolved_images: Mutex<BTreeMap<String, kiln_store::Digest>>,
    /// Snapshots of host directories, one per (path, filter) for the
    /// engine's life; a cell is filled once, by whoever asks first (a
    /// prefetch or the solver), and others wait for it.
    pub host_trees: Mutex<HashMap<(PathBuf, Filter), HostSnapshot>>,
    pub secrets: Mutex<HashMap<SecretNode, Arc<Vec<u8>>>>,
    pub redactor: RwLock<Redactor>,
    subscribers: Mutex<Vec<crate::events::Subscriber>>,
    /// Wakes steps held back by a subscriber's output backlog.
    drained: Arc<tokio::sync::Notify>,
    next_step: AtomicU64,
    /// Set once by [`Engine::cancel`]; every running step waits on it.
    cancelled: watch::Sender<bool>,
    pub services: crate::services::Services,
}

pub(crate) type HostSnapshot = Arc<OnceLock<Result<Arc<kiln_fs::HostTree>>>>;

static GLOBAL: OnceLock<Result<Engine>> = OnceLock::new();

impl Engine {
    /// Opens the store and checks the runtime. Cleans up after kiln
    /// processes that were killed mid-step (their mounts and containers).
    pub fn open(options: EngineOptions) -> Result<Engine> {
        let store = Store::open(&options.store)?;
        let runtime = kiln_exec::Runtime::new(options.runtime.clone(), store.runtime_state_dir());
        let namespaces = kiln_exec::cleanup_stale_namespaces(Path::new(crate::services::NETNS_DIR));
        if namespaces > 0 {
            tracing::info!(
                count = namespaces,
                "removed network namespaces of killed kiln processes"
            );
        }
        match crate::solve::cleanup_stale_runs(&store, &runtime) {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "cleaned up steps left by killed kiln processes"),
            Err(e) => {
                tracing::warn!(error = %e, "could not clean up steps left by killed kiln processes")
            }
        }
        Ok(Engine {
            inner: Arc::new(Inner {
                store,
                runtime,
                steps: Semaphore::new(options.max_parallel_steps.max(1)),
                memo: Mutex::new(HashMap::new()),
                images: Mutex::new(HashMap::new()),
                image_policy: options.images,
                plan_only: options.plan_only,
                replay_cached: options.replay_cached,
                default_limits: options.default_limits,
                image_references: Mutex::new(BTreeSet::new()),
                resolved_images: Mutex::new(BTreeMap::new()),
                host_trees: Mutex::new(HashMap::new()),
                secrets: Mutex::new(HashMap::new()),
                redactor: RwLock::new(Redactor::empty()),
                subscribers: Mutex::new(Vec::new()),
                drained: Arc::new(tokio::sync::Notify::new()),
                next_step: AtomicU64::new(1),
                cancelled: watch::Sender::new(false),
                services: crate::services::Services::default(),
            }),
        })
    }

    /// The process-wide engine used by `Container::from` and friends, opened
    /// on first use with [`EngineOptions::default`] unless
    /// [`Engine::set_global`] installed one first.
    pub fn global() -> Result<Engine> {
        GLOBAL
            .get_or_init(|| Engine::open(EngineOptions::default()))
            .clone()
    }

    /// Installs `engine` as the process-wide engine. Returns false if one
    /// was already in use.
    pub fn set_global(engine: Engine) -> bool {
        GLOBAL.set(Ok(engine)).is_ok()
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Whether this engine only builds graphs (see [`EngineOptions::plan_only`]).
    pub fn is_plan_only(&self) -> bool {
        self.inner.plan_only
    }

    /// A stand-in secret for evaluating a pipeline without running it: it
    /// has a name and no value, and nothing can read it (a plan-only engine
    /// never solves). On an engine that runs things it is an error to use.
    pub fn plan_secret(&self, name: &str) -> crate::Secret {
        crate::Secret {
            node: Arc::new(SecretNode {
                name: name.to_owned(),
                source: SecretSource::Env(format!("KILN_PLAN_PLACEHOLDER_{name}")),
            }),
        }
    }

    /// Forgets the snapshots of host directories taken so far, so the next
    /// solve reads them again. An engine reads each host directory once
    /// (one consistent view per run); a long-lived engine calls this
    /// between runs.
    pub fn refresh_host_directories(&self) {
        lock(&self.inner.host_trees).clear();
    }

    /// Starts reading a host directory (all files, no filter) in the
    /// background, so that a pipeline that uses it finds it hashed. Front
    /// ends call this for directory arguments before the pipeline is even
    /// loaded; the work is shared with, never repeated by, the solver.
    pub fn prefetch_host_directory(&self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name("kiln-prefetch".into())
            .spawn(move || {
                let _ = inner.host_snapshot(&path, &Filter::default());
            });
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "no prefetch thread; the directory is read when needed");
        }
    }

    /// Progress events from now on. Dropping the subscription unsubscribes.
    /// A subscriber must keep reading while steps run: once more than 8 MiB
    /// of output waits for it, steps are held back (their pipes fill) until
    /// it catches up, so memory stays bounded whatever steps print.
    pub fn subscribe(&self) -> crate::events::Subscription {
        let (subscriber, subscription) = crate::events::subscription(self.inner.drained.clone());
        lock(&self.inner.subscribers).push(subscriber);
        subscription
    }

    /// Registers a secret read from an environment variable. The value is
    /// read now, so a missing variable is reported before anything runs.
    pub fn secret_from_env(&self, var: &str) -> Result<crate::Secret> {
        self.secret(SecretNode {
            name: var.to_owned(),
            source: SecretSource::Env(var.to_owned()),
        })
    }

    /// Registers a secret read from a file.
    pub fn secret_from_file(&self, path: impl AsRef<Path>) -> Result<crate::Secret> {
        let path = path.as_ref();
        self.secret(SecretNode {
            name: path.display().to_string(),
            source: SecretSource::File(path.to_owned()),
        })
    }

    fn secret(&self, node: SecretNode) -> Result<crate::Secret> {
        self.inner.resolve_secret(&node)?;
        Ok(crate::Secret {
            node: Arc::new(node),
        })
    }

    /// Stops everything this engine runs, for good: every running step's
    /// container is killed, steps waiting for a slot and steps not started
    /// yet fail with [`Error::Cancelled`], and so does every later solve.
    /// Meant for an engine that serves one run (a CI job); open a new one
    /// for the next.
    ///
    /// This works however the solve is driven: from an async task, or from
    /// a blocking thread (Starlark's solving methods), where dropping a
    /// future is not an option. Solves nobody polls any more (their caller
    /// was dropped) are dropped here, which kills their containers; so this
    /// call may block for as long as a container teardown takes.
    pub fn cancel(&self) {
        self.inner.cancelled.send_replace(true);
        self.inner.services.stop_all();
        // The memo holds a clone of every shared solve; a solve whose
        // callers are gone would otherwise live, unpolled, with its
        // container running until the engine is dropped.
        let abandoned = std::mem::take(&mut *lock(&self.inner.memo));
        drop(abandoned);
    }

    /// Stops the engine's services and waits (bounded) until their
    /// containers and network are gone. Front ends call it when a run ends;
    /// the engine stays usable (a later step that binds a service starts
    /// it again).
    pub async fn shutdown(&self) {
        self.inner.services.shutdown().await;
    }

    /// [`Engine::shutdown`] from a thread without an async runtime.
    pub fn shutdown_blocking(&self) {
        let inner = self.inner.clone();
        let stopped = std::thread::Builder::new()
            .name("kiln-shutdown".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(inner.services.shutdown()),
                    Err(e) => tracing::warn!(error = %e, "no runtime to stop services on"),
                }
            });
        if let Ok(thread) = stopped {
            let _ = thread.join();
        }
    }

    /// Whether [`Engine::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }

    /// Scrubs registered secret values from text, for front ends that print
    /// messages built from step output.
    pub fn redact(&self, text: &str) -> String {
        read(&self.inner.redactor).redact_str(text)
    }
}

impl Inner {
    /// The engine's snapshot of a host directory, taking it if this is the
    /// first request: hashed with the store's metadata index, so unchanged
    /// files cost a `stat`, not a read.
    pub fn host_snapshot(&self, path: &Path, filter: &Filter) -> Result<Arc<kiln_fs::HostTree>> {
        let cell = lock(&self.host_trees)
            .entry((path.to_owned(), filter.clone()))
            .or_default()
            .clone();
        cell.get_or_init(|| {
            let fs_filter = kiln_fs::Filter {
                include: filter.include.clone(),
                exclude: filter.exclude.clone(),
            };
            let index_path = self.store.index_path(path);
            let mut index = kiln_fs::MetadataIndex::load(&index_path);
            let tree = kiln_fs::hash_host_dir_indexed(path, &fs_filter, Some(&mut index))?;
            if let Err(e) = index.save(&index_path) {
                tracing::debug!(error = %e, "could not save the metadata index (only speed is lost)");
            }
            Ok(Arc::new(tree))
        })
        .clone()
    }

    pub fn is_cancelled(&self) -> bool {
        *self.cancelled.borrow()
    }

    /// Fails with [`Error::Cancelled`] once the engine is cancelled; a
    /// step selects on this next to its container.
    pub async fn cancelled(&self) -> Error {
        let mut watching = self.cancelled.subscribe();
        // The sender lives in `self`, so waiting cannot fail.
        let _ = watching.wait_for(|cancelled| *cancelled).await;
        Error::Cancelled
    }

    /// Watches [`Engine::cancel`] (true once called).
    pub fn cancelled_watch(&self) -> watch::Receiver<bool> {
        self.cancelled.subscribe()
    }

    /// `Err(Cancelled)` once the engine is cancelled: checked before
    /// starting work.
    pub fn check_cancelled(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    pub fn emit(&self, event: Event) {
        lock(&self.subscribers).retain(|s| s.send(&event));
    }

    /// Whether some subscriber has more output waiting than it may.
    pub fn output_backlogged(&self) -> bool {
        lock(&self.subscribers).iter().any(|s| s.backlogged())
    }

    /// Returns once no subscriber is over its output backlog.
    pub async fn output_drained(&self) {
        loop {
            let drained = self.drained.notified();
            if !self.output_backlogged() {
                return;
            }
            drained.await;
        }
    }

    pub fn next_step(&self) -> StepId {
        StepId(self.next_step.fetch_add(1, Ordering::Relaxed))
    }

    /// The value of a secret, read once and remembered; registering it
    /// updates the redactor before any step can print it.
    pub fn resolve_secret(&self, node: &SecretNode) -> Result<Arc<Vec<u8>>> {
        if let Some(value) = lock(&self.secrets).get(node) {
            return Ok(value.clone());
        }
        let value = match &node.source {
            SecretSource::Env(var) => std::env::var_os(var)
                .map(std::os::unix::ffi::OsStringExt::into_vec)
                .ok_or_else(|| Error::Secret {
                    name: node.name.clone(),
                    why: format!("environment variable {var} is not set"),
                })?,
            SecretSource::File(path) => std::fs::read(path).map_err(|e| Error::Secret {
                name: node.name.clone(),
                why: format!("cannot read {}: {e}", path.display()),
            })?,
        };
        let value = Arc::new(value);
        let mut secrets = lock(&self.secrets);
        secrets.insert(node.clone(), value.clone());
        // A value read from a file usually ends in a newline that a step
        // will not print along with it; mask the trimmed form as well.
        let redactor = Redactor::new(secrets.values().flat_map(|v| {
            let trimmed = v.strip_suffix(b"\n").unwrap_or(v);
            let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
            [v.as_slice(), trimmed]
        }));
        *self.redactor.write().unwrap_or_else(|e| e.into_inner()) = redactor;
        Ok(value)
    }

    pub fn redactor(&self) -> Redactor {
        read(&self.redactor).clone()
    }
}

/// Locks a mutex, recovering from poisoning: the maps it guards stay
/// consistent because every update is a single insert.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}
