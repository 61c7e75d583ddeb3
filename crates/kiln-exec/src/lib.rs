//! Runs one process in an OCI container (runc, crun or youki) on an overlayfs
//! snapshot of its parent layers, streaming its output.
//!
//! # Run lifecycle
//!
//! [`Runtime::run`] takes a [`RunSpec`] and an empty, caller-provided bundle
//! directory, and goes through these steps:
//!
//! 1. **Lock.** `BUNDLE/lock` is created already `flock`ed (written under a
//!    temporary name, locked, then hard-linked into place) and holds the
//!    container id. The lock is held for the whole run, so a lock file that
//!    can be locked by someone else means its owner died:
//!    [`Runtime::cleanup_stale`] relies on this.
//! 2. **Mount.** The lower layers (topmost first; an empty `BUNDLE/scratch`
//!    dir if there are none) are stacked with the step's upper and work dirs
//!    at `BUNDLE/rootfs` (see the `overlay` module for how long stacks fit).
//! 3. **Prepare.** The user is resolved from the image's own `/etc/passwd`
//!    and `/etc/group`; every mount target, the working directory and their
//!    ancestors are recorded (existing or not, in upper or not) so debris can
//!    be told from the process's writes afterwards; a missing working
//!    directory is created; `config.json` is written.
//! 4. **Run.** `RUNTIME --root STATE --log BUNDLE/runtime.log --log-format
//!    json run --bundle BUNDLE ID` is spawned with stdin `/dev/null`, stdout
//!    and stderr piped and read concurrently, in its own process group (the
//!    terminal's Ctrl-C reaches kiln, which decides), and with
//!    `PR_SET_PDEATHSIG(SIGKILL)` so it dies with kiln.
//! 5. **Tear down**, when the process exits: `delete --force`, unmount the
//!    rootfs, remove mount stubs from the upper dir, remove what the run put
//!    in the bundle (the lock last).
//!
//! # Invariants
//!
//! * **Nothing is mounted or running once `run` returns or its future is
//!   dropped.** Everything acquired is owned by a guard whose `Drop` tears
//!   down synchronously: `kill ID KILL`, SIGKILL to the runtime process,
//!   `delete --force`, unmount. Dropping the future is how callers cancel or
//!   time out a step. If even that fails (say, the runtime binary vanished),
//!   the bundle keeps its now-unlocked lock file and `cleanup_stale` finishes
//!   the job, as it does for runs whose whole process was killed.
//! * **The upper dir holds only the process's writes.** The runtime creates
//!   mount points (`/dev`, `/proc`, `/sys`, bind targets and their missing
//!   parents) in the rootfs, which is the overlay; such paths that did not
//!   exist before, and copied-up ancestors left unchanged, are removed after
//!   the unmount (see the `stubs` module), so a secret mounted at
//!   `/run/secrets/x` leaves nothing behind. The overlay is mounted with
//!   `redirect_dir`, `metacopy` and `index` off so that the upper dir is in
//!   plain overlay layer format: whiteouts and opaque dirs only.
//! * **After a successful run the bundle dir is empty again**, and can be
//!   removed or reused by the caller.
//!
//! # Exit status
//!
//! `runc run` exits with the process's status, or 128+N when it was killed
//! by signal N. The two cannot be told apart from outside, so codes 129..=192
//! are reported as signals ([`ExitStatus::signal`]), like a shell does;
//! a process that deliberately exits with e.g. 137 is reported as SIGKILL.
//! Failures of the runtime itself (such as `exec: "x": executable file not
//! found in $PATH`) are read from its JSON log and returned as
//! [`Error::Start`].

mod cgroup;
mod config;
mod netns;
mod overlay;
mod rootpath;
mod runc;
mod seccomp;
mod stubs;
mod user;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

pub use config::{valid_hostname, DEFAULT_HOSTNAME, DEFAULT_PATH};
pub use netns::{cleanup_stale_namespaces, NetError, NetNamespace, Outbound, SLIRP_NAMESERVER};

use crate::config::{ConfigInput, MountEntry};
use crate::stubs::StubPlan;
use crate::user::ResolvedUser;

/// The runtime used when none is named: crun when it is installed, since
/// it starts a container in about half runc's time (`bench/step-overhead`),
/// else runc.
pub fn default_runtime() -> PathBuf {
    let installed = |name: &str| {
        let path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    };
    installed("crun").unwrap_or_else(|| PathBuf::from("runc"))
}

/// The tracing target of per-step phase timings: `KILN_LOG=kiln_phases=debug`
/// prints one line per phase of every step, which `bench/step-overhead
/// --phases` sums up.
const PHASE_TARGET: &str = "kiln_phases";

/// Reports that one phase of a step took `took`.
pub fn phase_done(container: &str, phase: &'static str, took: Duration) {
    tracing::debug!(
        target: PHASE_TARGET,
        container,
        phase,
        ms = took.as_secs_f64() * 1e3,
        "step phase"
    );
}

/// Entries a run creates in its bundle dir.
const LOCK: &str = "lock";
const CONFIG: &str = "config.json";
const ROOTFS: &str = "rootfs";
const LINKS: &str = "l";
const SCRATCH: &str = "scratch";
const RUNTIME_LOG: &str = "runtime.log";
/// The step's `/etc/hosts` and `/etc/hostname`, bound read-only.
const HOSTS: &str = "hosts";
const HOSTNAME: &str = "hostname";
/// The step's `/etc/resolv.conf` on a joined network, bound read-only.
const RESOLV_CONF: &str = "resolv.conf";
const BUNDLE_ENTRIES: [&str; 9] = [
    LOCK,
    CONFIG,
    ROOTFS,
    LINKS,
    SCRATCH,
    RUNTIME_LOG,
    HOSTS,
    HOSTNAME,
    RESOLV_CONF,
];

/// How long a killed runtime process gets to exit during teardown.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long output pipes may stay open after the runtime has exited. They
/// close as soon as the container is gone; this only guards against a
/// misbehaving runtime keeping them open.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// Errors of this crate. Each says what was being done and to which
/// container or path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "cannot execute container runtime {}: {source}; install runc (Debian/Ubuntu: `apt-get install runc`) \
         or point kiln at a crun or youki binary",
        path.display()
    )]
    RuntimeUnavailable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "container runtime {} does not work: `--version` {status}: {stderr}; reinstall it \
         (Debian/Ubuntu: `apt-get install --reinstall runc`)",
        path.display()
    )]
    RuntimeBroken {
        path: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("invalid run spec for container {container_id}: {reason}")]
    InvalidSpec {
        container_id: String,
        reason: String,
    },
    #[error("bundle {} of container {container_id} is in use by another run (its lock is held)", bundle.display())]
    BundleBusy {
        container_id: String,
        bundle: PathBuf,
    },
    #[error("container {container_id}: {action} {}: {source}", path.display())]
    Io {
        container_id: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "container {container_id}: mounting the overlay rootfs at {} ({layers} lower layers, upper {}, work {}): {source}",
        target.display(), upper.display(), work.display()
    )]
    Mount {
        container_id: String,
        target: PathBuf,
        layers: usize,
        upper: PathBuf,
        work: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("container {container_id}: resolving user {user:?}: {reason}")]
    User {
        container_id: String,
        user: String,
        reason: String,
    },
    #[error("container {container_id}: writing OCI config {}: {source}", path.display())]
    Config {
        container_id: String,
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("container {container_id}: cannot apply its resource limits: {reason}")]
    Limits {
        container_id: String,
        reason: String,
    },
    #[error("container {container_id} failed to start: {message}")]
    Start {
        container_id: String,
        message: String,
    },
    #[error("container {container_id}: cleaning up bundle {}: {message}", bundle.display())]
    Cleanup {
        container_id: String,
        bundle: PathBuf,
        message: String,
    },
    #[error("cleaning up stale runs under {}: {cleaned} cleaned, but: {failures}", runs_root.display())]
    StaleCleanup {
        runs_root: PathBuf,
        cleaned: usize,
        failures: String,
    },
}

/// Which network the process sees.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Network {
    /// The host's network namespace; the host's `/etc/resolv.conf` and
    /// `/etc/hosts` are bound read-only when present.
    Host,
    /// A private network namespace with only loopback.
    None,
    /// A namespace made with [`NetNamespace`], shared with other containers.
    Joined(JoinedNetwork),
}

/// How a container joins a shared network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JoinedNetwork {
    /// The namespace's bind mount ([`NetNamespace::path`]).
    pub netns: PathBuf,
    /// Extra `/etc/hosts` lines: an address and the names it answers to.
    pub hosts: Vec<(String, Vec<String>)>,
    /// The step's `/etc/resolv.conf` names these; none means no
    /// resolv.conf is bound (the image's own stays).
    pub nameservers: Vec<String>,
}

/// A host path bound into the container (`rbind`, `rprivate`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BindMount {
    /// Absolute host path; a file or a directory.
    pub source: PathBuf,
    /// Absolute path in the container; created (and removed again after the
    /// run) if missing.
    pub target: String,
    pub readonly: bool,
}

/// One step to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Unique among live containers of the runtime's state root;
    /// `[A-Za-z0-9_.+-]`.
    pub container_id: String,
    /// Existing empty dir; the run creates `config.json`, `rootfs/`, `lock`
    /// etc. in it and removes them again.
    pub bundle_dir: PathBuf,
    /// Topmost first; may be empty (scratch).
    pub lower_layers: Vec<PathBuf>,
    /// Becomes the step's layer; on the same filesystem as `work_dir`.
    pub upper_dir: PathBuf,
    /// Overlay work dir.
    pub work_dir: PathBuf,
    pub args: Vec<String>,
    /// `KEY=VALUE`. `PATH` defaults to [`DEFAULT_PATH`], `HOME` to the
    /// user's home from the image's `/etc/passwd` (else `/`).
    pub env: Vec<String>,
    /// Absolute; created if missing (owned by the run's user), and removed
    /// again if the process leaves it empty.
    pub cwd: String,
    /// `uid`, `uid:gid`, `name` or `name:group`, resolved in the image.
    /// `None` is root.
    pub user: Option<String>,
    pub network: Network,
    pub mounts: Vec<BindMount>,
    /// `None` is [`DEFAULT_HOSTNAME`]. Either way the name resolves inside
    /// the container: it is added to the step's `/etc/hosts`.
    pub hostname: Option<String>,
    pub limits: StepLimits,
    /// Resource limits (`ulimit`) beyond the defaults; see [`Rlimit`].
    pub rlimits: Vec<Rlimit>,
    /// The container is killed when it runs longer, and the run ends with
    /// [`ExitStatus::timed_out`].
    pub timeout: Option<Duration>,
}

/// One POSIX resource limit of the step's processes, as `ulimit` or
/// `docker run --ulimit NAME=SOFT:HARD` sets it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rlimit {
    /// Lower-case, without `RLIMIT_`: `nofile`, `nproc`, `core`, `stack`, ...
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

impl Rlimit {
    /// The names [`Rlimit::name`] may take.
    pub const NAMES: [&'static str; 16] = [
        "as",
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
    ];
}

/// Resource limits of one step's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepLimits {
    /// Processes and threads the step may have at once (the pids cgroup):
    /// a fork bomb fails inside the step instead of filling the host's
    /// process table. `None` is unlimited.
    pub pids: Option<i64>,
    /// Bytes of memory (swap included) the step's processes may use
    /// together; past it the kernel's OOM killer kills one, and the run
    /// reports [`ExitStatus::oom_killed`]. `None` is unlimited.
    pub memory: Option<u64>,
    /// CPU time per wall-clock time, in thousandths of a CPU (2500 is
    /// `--cpus 2.5`): the CFS quota. `None` is unlimited.
    pub cpu_millis: Option<u64>,
}

impl StepLimits {
    /// Well above a parallel build's compilers and a JVM's threads.
    pub const DEFAULT_PIDS: i64 = 4096;
    pub const PIDS_ENV: &'static str = "KILN_STEP_PIDS_LIMIT";
}

impl Default for StepLimits {
    /// [`StepLimits::DEFAULT_PIDS`], or `KILN_STEP_PIDS_LIMIT` (a number, or
    /// `unlimited`) when set.
    fn default() -> StepLimits {
        let pids = match std::env::var(Self::PIDS_ENV) {
            Ok(v) if v.trim() == "unlimited" => None,
            Ok(v) => match v.trim().parse::<i64>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    tracing::warn!(value = %v, "{} is not a positive number or `unlimited`; using {}", Self::PIDS_ENV, Self::DEFAULT_PIDS);
                    Some(Self::DEFAULT_PIDS)
                }
            },
            Err(_) => Some(Self::DEFAULT_PIDS),
        };
        StepLimits {
            pids,
            memory: None,
            cpu_millis: None,
        }
    }
}

/// What an output callback returns: `Some(wait)` to stop reading the
/// step's pipes until `wait` completes (the step blocks once its pipe is
/// full), so a slow consumer holds the step back instead of output piling up
/// in memory.
pub type Backpressure = Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>;

/// Recognises the runtime's report that the step's command could not be
/// executed (`exec: "cmd": executable file not found in $PATH`), and gives
/// the exit code a shell would: 127 for a command that is not there, 126
/// for one that is there but cannot run.
fn exec_failure(runtime_error: &str) -> Option<i32> {
    // crun words it its own way: "executable file `x` not found in $PATH:
    // ..." and "open executable: Permission denied".
    if runtime_error.starts_with("executable file `") && runtime_error.contains("not found") {
        return Some(127);
    }
    if let Some(reason) = runtime_error.strip_prefix("open executable: ") {
        return matches!(
            reason.trim(),
            "Permission denied" | "Operation not permitted"
        )
        .then_some(126);
    }
    let at = runtime_error.find("exec: \"")?;
    let reason = runtime_error[at..].trim_end();
    let code = if reason.ends_with("executable file not found in $PATH")
        || reason.ends_with("no such file or directory")
    {
        127
    } else if reason.ends_with("permission denied")
        || reason.ends_with("is a directory")
        || reason.ends_with("exec format error")
    {
        126
    } else {
        return None;
    };
    Some(code)
}

/// Which pipe a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// How the process ended: exactly one of `code` and `signal` is set, and
/// `oom_killed`/`timed_out` say why, when kiln knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The step reached its memory limit and the kernel's OOM killer
    /// killed one of its processes (from the cgroup's OOM event, not
    /// guessed from a 137). The step may still have exited by itself.
    #[serde(default)]
    pub oom_killed: bool,
    /// The step ran past [`RunSpec::timeout`] and kiln killed it.
    #[serde(default)]
    pub timed_out: bool,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    /// Maps the runtime process's status back to the container process's.
    fn from_runtime(status: std::process::ExitStatus) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        // The runtime itself was killed (kiln never does that while the run
        // is awaited; someone else did).
        if let Some(signal) = status.signal() {
            return ExitStatus {
                signal: Some(signal),
                ..ExitStatus::default()
            };
        }
        Self::from_code(status.code().unwrap_or(-1))
    }

    fn from_code(code: i32) -> ExitStatus {
        // 128+N is how runc (and shells) report death by signal N; Linux
        // signals go up to 64 (SIGRTMAX).
        if (129..=128 + 64).contains(&code) {
            ExitStatus {
                signal: Some(code - 128),
                ..ExitStatus::default()
            }
        } else {
            ExitStatus {
                code: Some(code),
                ..ExitStatus::default()
            }
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.timed_out {
            return write!(f, "timed out (killed)");
        }
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}")?,
            (None, Some(signal)) => write!(f, "killed by signal {signal}")?,
            (None, None) => write!(f, "unknown exit status")?,
        }
        if self.oom_killed {
            write!(f, " (out of memory: the OOM killer killed a process)")?;
        }
        Ok(())
    }
}

/// An OCI runtime binary plus the state root kiln's containers live in.
#[derive(Debug, Clone)]
pub struct Runtime {
    binary: PathBuf,
    state_root: PathBuf,
    /// Detected on the first memory-limited run.
    cgroups: std::sync::Arc<std::sync::OnceLock<Result<cgroup::Layout, String>>>,
}

impl Runtime {
    /// `runtime_binary`: path to runc (crun and youki work too: only the
    /// common CLI is used). `state_root` is passed as `--root`, so kiln's
    /// containers are separate from anyone else's.
    pub fn new(runtime_binary: PathBuf, state_root: PathBuf) -> Runtime {
        Runtime {
            binary: runtime_binary,
            state_root,
            cgroups: Default::default(),
        }
    }

    fn cgroup_layout(&self) -> Result<cgroup::Layout, String> {
        self.cgroups
            .get_or_init(|| cgroup::Layout::detect().map_err(|e| e.to_string()))
            .clone()
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn state_root(&self) -> &Path {
        &self.state_root
    }

    /// Checks that the binary runs; returns its `--version` output.
    pub fn check(&self) -> Result<String, Error> {
        let out = std::process::Command::new(&self.binary)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::RuntimeUnavailable {
                path: self.binary.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::RuntimeBroken {
                path: self.binary.clone(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs one step and returns when its process has exited and everything
    /// is torn down (see the crate docs). Output is passed to `on_output`
    /// chunk by chunk as it arrives, in order per stream.
    ///
    /// Dropping the future kills the container (SIGKILL), deletes it and
    /// unmounts the rootfs before the drop returns. Must be polled within a
    /// tokio runtime. The future is `Send`, so it can be spawned.
    ///
    /// Preparation (mount, account lookup, `config.json`) and the fork of
    /// the runtime happen synchronously in the first poll, a few
    /// milliseconds of blocking: that way no resource is ever acquired
    /// across an await point before the guard that releases it owns it.
    pub async fn run(
        &self,
        spec: RunSpec,
        mut on_output: impl FnMut(OutputStream, &[u8]) -> Backpressure + Send,
    ) -> Result<ExitStatus, Error> {
        let id = spec.container_id.clone();
        let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::InvalidSpec {
            container_id: id.clone(),
            reason: "Runtime::run must be polled within a tokio runtime".into(),
        })?;
        // Synchronous on purpose: no await point between acquiring a
        // resource and handing it to the guard, so cancellation cannot leak.
        let mut guard = self.prepare(&spec)?;
        let started = Instant::now();
        let mut child = self.spawn_runtime(&guard, handle)?;
        let pipes = (child.stdout.take(), child.stderr.take());
        // From here on the guard owns the runtime process: dropping the
        // future kills it along with the container.
        guard.spawned = true;
        let child = guard.child.insert(child);
        let (Some(mut stdout), Some(mut stderr)) = pipes else {
            return Err(Error::Start {
                container_id: id,
                message: "the runtime process has no stdout/stderr pipes".into(),
            });
        };
        let bundle = guard.bundle.clone();
        let io_error = |action: &'static str, source: io::Error| Error::Io {
            container_id: id.clone(),
            action,
            path: bundle.clone(),
            source,
        };

        let mut out_buf = vec![0u8; 64 * 1024];
        let mut err_buf = vec![0u8; 64 * 1024];
        let (mut out_open, mut err_open) = (true, true);
        let mut exited: Option<(std::process::ExitStatus, tokio::time::Instant)> = None;
        // When to kill the container: at the timeout, then again every
        // second in case the runtime had not created it yet.
        let mut kill_at = spec.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut timed_out = false;
        let status = loop {
            if let (false, false, Some((status, _))) = (out_open, err_open, exited) {
                break status;
            }
            // Only polled once the runtime has exited (see DRAIN_WAIT).
            let drain_deadline =
                exited.map_or_else(tokio::time::Instant::now, |(_, at)| at + DRAIN_WAIT);
            tokio::select! {
                r = stdout.read(&mut out_buf), if out_open => match r {
                    Ok(0) => out_open = false,
                    Ok(n) => if let Some(wait) = on_output(OutputStream::Stdout, &out_buf[..n]) { wait.await },
                    Err(source) => return Err(io_error("reading the process's stdout in bundle", source)),
                },
                r = stderr.read(&mut err_buf), if err_open => match r {
                    Ok(0) => err_open = false,
                    Ok(n) => if let Some(wait) = on_output(OutputStream::Stderr, &err_buf[..n]) { wait.await },
                    Err(source) => return Err(io_error("reading the process's stderr in bundle", source)),
                },
                r = child.wait(), if exited.is_none() => {
                    let status = r.map_err(|source| io_error("waiting for the runtime process of bundle", source))?;
                    exited = Some((status, tokio::time::Instant::now()));
                }
                // Kill the container; `runc run` then exits and the loop
                // drains the pipes and reaps it as for any other end.
                _ = tokio::time::sleep_until(kill_at.unwrap_or_else(tokio::time::Instant::now)),
                    if kill_at.is_some() && exited.is_none() => {
                    timed_out = true;
                    tracing::debug!(container = %id, "timed out; killing");
                    runc::kill_async(&self.binary, &self.state_root, &id).await;
                    kill_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                }
                _ = tokio::time::sleep_until(drain_deadline), if exited.is_some() => {
                    tracing::warn!(container = %id, "output pipes still open {DRAIN_WAIT:?} after the runtime exited; not waiting longer");
                    if let Some((status, _)) = exited {
                        break status;
                    }
                }
            }
        };

        phase_done(&id, "runtime", started.elapsed());
        let runtime_errors = if status.success() {
            Vec::new()
        } else {
            runc::logged_errors(&guard.bundle.join(RUNTIME_LOG))
        };
        let oom_killed = guard.cgroup.as_ref().is_some_and(|c| c.oom_killed());
        let teardown = guard.teardown().await;
        if timed_out || oom_killed {
            teardown?;
            return Ok(ExitStatus {
                timed_out,
                oom_killed,
                ..ExitStatus::from_runtime(status)
            });
        }
        // A command that cannot be executed is the step's failure, not the
        // runtime's: report it as a shell (and Docker) does, with 127 or 126,
        // so tools and diagnosis see an exit code. The runtime has already
        // printed the reason on the step's stderr.
        if let Some(code) = runtime_errors.iter().find_map(|e| exec_failure(e)) {
            teardown?;
            return Ok(ExitStatus {
                code: Some(code),
                ..ExitStatus::default()
            });
        }
        if !runtime_errors.is_empty() {
            if let Err(e) = teardown {
                tracing::error!(container = %id, error = %e, "teardown after failed start");
            }
            return Err(Error::Start {
                container_id: id,
                message: runtime_errors.join("; "),
            });
        }
        teardown?;
        Ok(ExitStatus::from_runtime(status))
    }

    /// Everything up to a ready bundle; the guard undoes it on any error.
    fn prepare(&self, spec: &RunSpec) -> Result<RunGuard, Error> {
        let id = spec.container_id.as_str();
        let started = Instant::now();
        let checked = validate(spec)?;
        let bundle = checked.bundle.clone();
        let lock = acquire_lock(&bundle, id)?;
        let rootfs = bundle.join(ROOTFS);
        let mut guard = RunGuard {
            binary: self.binary.clone(),
            state_root: self.state_root.clone(),
            container_id: id.to_string(),
            bundle: bundle.clone(),
            rootfs: rootfs.clone(),
            upper: checked.upper.clone(),
            work: checked.work.clone(),
            lock: Some(lock),
            mounted: false,
            stubs: None,
            child: None,
            cgroup: None,
            spawned: false,
            done: false,
        };

        std::fs::create_dir(&rootfs)
            .map_err(|e| guard.io("creating rootfs mount point", &rootfs, e))?;
        let lowers = if checked.lowers.is_empty() {
            let scratch = bundle.join(SCRATCH);
            std::fs::create_dir(&scratch)
                .map_err(|e| guard.io("creating empty lower layer", &scratch, e))?;
            vec![scratch]
        } else {
            checked.lowers.clone()
        };
        let overlay = overlay::OverlaySpec {
            lowers: &lowers,
            upper: &checked.upper,
            work: &checked.work,
            link_dir: &bundle.join(LINKS),
            target: &rootfs,
        };
        overlay::mount(&overlay, overlay::Strategy::Auto).map_err(|source| Error::Mount {
            container_id: id.to_string(),
            target: rootfs.clone(),
            layers: lowers.len(),
            upper: checked.upper.clone(),
            work: checked.work.clone(),
            source,
        })?;
        guard.mounted = true;
        phase_done(id, "mount", started.elapsed());
        let started = Instant::now();

        let user = user::resolve(&rootfs, spec.user.as_deref()).map_err(|e| Error::User {
            container_id: id.to_string(),
            user: spec.user.clone().unwrap_or_else(|| "0".into()),
            reason: e.reason,
        })?;
        let hostname = spec.hostname.as_deref().unwrap_or(DEFAULT_HOSTNAME);
        let name_files = config::write_name_files(
            &bundle.join(HOSTS),
            &bundle.join(HOSTNAME),
            &bundle.join(RESOLV_CONF),
            &spec.network,
            hostname,
        )
        .map_err(|e| guard.io("writing /etc/hosts and /etc/hostname in", &bundle, e))?;
        let mounts = config::mounts(&spec.network, &name_files, &spec.mounts);
        let mut targets: Vec<String> = mounts.iter().map(|m| m.destination.clone()).collect();
        targets.push(spec.cwd.clone());
        guard.stubs = Some(
            StubPlan::record(&rootfs, &checked.upper, &targets)
                .map_err(|e| guard.io("recording mount points in", &rootfs, e))?,
        );
        create_cwd(&rootfs, &spec.cwd, &user)
            .map_err(|e| guard.io("creating the working directory in", &rootfs, e))?;

        let cgroups_path = match spec.limits.memory {
            None => None,
            Some(limit) => {
                let limit_error = |reason: String| Error::Limits {
                    container_id: id.to_string(),
                    reason,
                };
                let layout = self.cgroup_layout().map_err(limit_error)?;
                let runtime_path = layout.runtime_path(id);
                guard.cgroup = Some(
                    cgroup::StepCgroup::create(layout, id, limit)
                        .map_err(|e| limit_error(e.to_string()))?,
                );
                Some(runtime_path)
            }
        };
        let env = finalize_env(&spec.env, &user);
        let config_path = bundle.join(CONFIG);
        write_config(
            spec,
            &env,
            &user,
            &mounts,
            cgroups_path,
            hostname,
            &config_path,
        )
        .map_err(|source| Error::Config {
            container_id: id.to_string(),
            path: config_path.clone(),
            source,
        })?;
        phase_done(id, "bundle", started.elapsed());
        Ok(guard)
    }

    fn spawn_runtime(
        &self,
        guard: &RunGuard,
        handle: tokio::runtime::Handle,
    ) -> Result<tokio::process::Child, Error> {
        use std::os::unix::process::CommandExt;
        let mut cmd = runc::std_command(&self.binary, &self.state_root);
        cmd.arg("--log")
            .arg(guard.bundle.join(RUNTIME_LOG))
            .args(["--log-format", "json", "run", "--bundle"])
            .arg(&guard.bundle)
            .arg(&guard.container_id)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let parent = std::process::id();
        // SAFETY: the closure only makes async-signal-safe syscalls (prctl,
        // getppid) and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // kiln died between fork and prctl: the signal was missed.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        match runc::spawn(cmd, handle) {
            Ok(child) => Ok(child),
            Err(source)
                if matches!(
                    source.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
                ) =>
            {
                Err(Error::RuntimeUnavailable {
                    path: self.binary.clone(),
                    source,
                })
            }
            Err(source) => Err(guard.io(
                "starting the container runtime for bundle",
                &guard.bundle,
                source,
            )),
        }
    }

    /// Cleans up after runs whose process was killed mid-step. For every
    /// bundle dir under `runs_root` whose lock file exists but is not held:
    /// `kill` + `delete --force` its container, unmount its rootfs (lazily if
    /// busy), remove the bundle dir. Dirs without a lock file (never started,
    /// or already cleaned) are left alone, as are live runs. The upper dir of
    /// such a run is not cleaned of mount stubs: the step failed, its layer
    /// is not meant to be kept.
    ///
    /// Returns how many bundles were cleaned.
    pub fn cleanup_stale(&self, runs_root: &Path) -> Result<usize, Error> {
        let entries = match std::fs::read_dir(runs_root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => {
                return Err(Error::StaleCleanup {
                    runs_root: runs_root.to_path_buf(),
                    cleaned: 0,
                    failures: format!("listing {}: {e}", runs_root.display()),
                })
            }
        };
        let mut cleaned = 0;
        let mut failures = Vec::new();
        for entry in entries {
            let bundle = match entry {
                Ok(e) => e.path(),
                Err(e) => {
                    failures.push(format!("listing {}: {e}", runs_root.display()));
                    continue;
                }
            };
            if !std::fs::symlink_metadata(&bundle).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            match self.cleanup_bundle(&bundle) {
                Ok(true) => cleaned += 1,
                Ok(false) => {}
                Err(message) => failures.push(format!("{}: {message}", bundle.display())),
            }
        }
        if failures.is_empty() {
            Ok(cleaned)
        } else {
            Err(Error::StaleCleanup {
                runs_root: runs_root.to_path_buf(),
                cleaned,
                failures: failures.join("; "),
            })
        }
    }

    /// `Ok(false)`: not stale (live, or not a run bundle).
    fn cleanup_bundle(&self, bundle: &Path) -> Result<bool, String> {
        let lock_path = bundle.join(LOCK);
        let mut lock = match OpenOptions::new().read(true).write(true).open(&lock_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(format!("opening {}: {e}", lock_path.display())),
        };
        match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => return Ok(false),
            Err(e) => return Err(format!("locking {}: {e}", lock_path.display())),
        }
        // Another cleaner may have removed the bundle between our open and
        // flock; then the lock we hold is for a deleted file.
        if !same_file(&lock, &lock_path) {
            return Ok(false);
        }
        let mut id = String::new();
        lock.read_to_string(&mut id)
            .map_err(|e| format!("reading {}: {e}", lock_path.display()))?;
        let id = id.trim();
        if valid_id(id) {
            runc::kill_sync(&self.binary, &self.state_root, id);
            runc::delete_sync(&self.binary, &self.state_root, id)?;
            // A memory-limited step leaves kiln's parent cgroup behind.
            if let Ok(layout) = self.cgroup_layout() {
                cgroup::remove_step_dirs(&layout, id).map_err(|e| e.to_string())?;
            }
        } else {
            tracing::warn!(bundle = %bundle.display(), "stale lock names no valid container id; only unmounting");
        }
        let rootfs = bundle.join(ROOTFS);
        overlay::unmount(&rootfs).map_err(|e| e.to_string())?;
        // remove_dir_all must never descend into a live overlay: it would
        // write whiteouts into that run's upper dir.
        if overlay::is_mount_point(&rootfs)
            .map_err(|e| format!("inspecting {}: {e}", rootfs.display()))?
        {
            return Err(format!("{} is still mounted", rootfs.display()));
        }
        std::fs::remove_dir_all(bundle)
            .map_err(|e| format!("removing {}: {e}", bundle.display()))?;
        Ok(true)
    }
}

/// Owns everything a run has acquired and releases it, synchronously, when
/// dropped before [`RunGuard::teardown`] completed.
struct RunGuard {
    binary: PathBuf,
    state_root: PathBuf,
    container_id: String,
    bundle: PathBuf,
    rootfs: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    /// Held (flock) until the bundle is cleaned; released by closing.
    lock: Option<File>,
    mounted: bool,
    stubs: Option<StubPlan>,
    child: Option<tokio::process::Child>,
    /// The parent cgroup of a memory-limited step; removed after the
    /// runtime deleted the container's own.
    cgroup: Option<cgroup::StepCgroup>,
    /// The runtime was started: a container may exist.
    spawned: bool,
    done: bool,
}

impl RunGuard {
    fn io(&self, action: &'static str, path: &Path, source: io::Error) -> Error {
        Error::Io {
            container_id: self.container_id.clone(),
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Normal-path teardown after the runtime exited: the runtime call is
    /// awaited instead of blocking an executor thread.
    async fn teardown(&mut self) -> Result<(), Error> {
        if self.spawned {
            let started = Instant::now();
            // A runtime that exited by itself has destroyed the container
            // and its state unless something went wrong; only then is a
            // `delete` (a whole runtime process, ~10 ms for runc) needed.
            let exited = self
                .child
                .as_mut()
                .is_some_and(|child| matches!(child.try_wait(), Ok(Some(_))));
            if !exited || runc::has_state(&self.state_root, &self.container_id) {
                runc::delete_async(&self.binary, &self.state_root, &self.container_id)
                    .await
                    .map_err(|message| self.cleanup_error(message))?;
            }
            self.spawned = false;
            phase_done(&self.container_id, "delete", started.elapsed());
        }
        let started = Instant::now();
        let result = self
            .teardown_sync()
            .map_err(|message| self.cleanup_error(message));
        phase_done(&self.container_id, "teardown", started.elapsed());
        result
    }

    fn cleanup_error(&self, message: String) -> Error {
        Error::Cleanup {
            container_id: self.container_id.clone(),
            bundle: self.bundle.clone(),
            message,
        }
    }

    /// Idempotent: each step records its success, so a failed teardown can
    /// be retried (by `Drop`) without redoing what worked.
    fn teardown_sync(&mut self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.spawned {
            self.stop_runtime();
            match runc::delete_sync(&self.binary, &self.state_root, &self.container_id) {
                Ok(()) => self.spawned = false,
                Err(e) => problems.push(e),
            }
        }
        if self.mounted {
            match overlay::unmount(&self.rootfs) {
                Ok(overlay::Unmounted::Clean) => {
                    self.mounted = false;
                    overlay::forget_volatile(&self.work);
                }
                Ok(overlay::Unmounted::Lazily) => {
                    tracing::warn!(container = %self.container_id, rootfs = %self.rootfs.display(),
                        "rootfs was busy; detached lazily");
                    self.mounted = false;
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        if !self.spawned {
            if let Some(group) = self.cgroup.as_mut() {
                match group.remove() {
                    Ok(()) => self.cgroup = None,
                    Err(e) => problems.push(e.to_string()),
                }
            }
        }
        // The upper dir is only edited once no overlay uses it.
        if !self.mounted {
            if let Some(plan) = self.stubs.take() {
                match plan.remove(&self.upper) {
                    Ok(removed) => {
                        tracing::trace!(container = %self.container_id, ?removed, "removed mount stubs")
                    }
                    Err(e) => {
                        problems.push(format!(
                            "removing mount stubs from {}: {e}",
                            self.upper.display()
                        ));
                        self.stubs = Some(plan);
                    }
                }
            }
        }
        if problems.is_empty() {
            if let Err(e) = self.clear_bundle() {
                problems.push(e);
            }
        }
        if problems.is_empty() {
            self.done = true;
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Kills the container and the runtime process, if still running, and
    /// reaps the latter.
    fn stop_runtime(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        // Kill the container first: `runc run` then exits by itself and
        // destroys it. If the container does not exist yet, SIGKILL stops
        // the runtime before it can create one; a half-started init exits
        // when its sync pipe to the dead runtime closes, and the
        // `delete --force` that follows removes any state already written.
        runc::kill_sync(&self.binary, &self.state_root, &self.container_id);
        let _ = child.start_kill();
        let deadline = Instant::now() + KILL_WAIT;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                _ => return,
            }
        }
        tracing::error!(container = %self.container_id, "runtime process did not exit after SIGKILL");
    }

    /// Removes what the run created in the bundle, the lock last: a bundle
    /// with a lock file is one `cleanup_stale` may still need to visit.
    fn clear_bundle(&mut self) -> Result<(), String> {
        let remove = |name: &str| -> Result<(), String> {
            let path = self.bundle.join(name);
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(format!("inspecting {}: {e}", path.display())),
            };
            let result = if name == LINKS {
                // Only symlinks inside; remove_dir_all does not follow them.
                std::fs::remove_dir_all(&path)
            } else if meta.is_dir() {
                // rmdir, never a recursive delete: if anything were still
                // mounted here, it fails instead of deleting layer content.
                std::fs::remove_dir(&path)
            } else {
                std::fs::remove_file(&path)
            };
            result.map_err(|e| format!("removing {}: {e}", path.display()))
        };
        for name in [
            CONFIG,
            RUNTIME_LOG,
            HOSTS,
            HOSTNAME,
            RESOLV_CONF,
            ROOTFS,
            SCRATCH,
            LINKS,
            LOCK,
        ] {
            remove(name)?;
        }
        self.lock = None;
        Ok(())
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Err(message) = self.teardown_sync() {
            tracing::error!(container = %self.container_id, bundle = %self.bundle.display(), %message,
                "tearing down the run failed; cleanup_stale will retry once this process is gone");
        }
    }
}

/// Canonical, checked paths of a spec.
struct Checked {
    bundle: PathBuf,
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-'))
}

fn validate(spec: &RunSpec) -> Result<Checked, Error> {
    let id = &spec.container_id;
    let invalid = |reason: String| Error::InvalidSpec {
        container_id: id.clone(),
        reason,
    };
    if !valid_id(id) {
        return Err(invalid(format!(
            "container id {id:?} must be 1-1024 characters of [A-Za-z0-9_.+-]"
        )));
    }
    if !matches!(spec.args.first(), Some(a) if !a.is_empty()) {
        return Err(invalid("args is empty: nothing to run".into()));
    }
    if !spec.cwd.starts_with('/') {
        return Err(invalid(format!(
            "cwd {:?} is not an absolute path",
            spec.cwd
        )));
    }
    for var in &spec.env {
        if !matches!(var.split_once('='), Some((k, _)) if !k.is_empty()) {
            return Err(invalid(format!("env entry {var:?} is not KEY=VALUE")));
        }
    }
    if let Some(name) = &spec.hostname {
        if !config::valid_hostname(name) {
            return Err(invalid(format!(
                "hostname {name:?} must be 1-63 letters, digits and inner '-' or '.' (RFC 1123)"
            )));
        }
    }
    if spec.limits.memory.is_some_and(|m| m < 4 << 20) {
        return Err(invalid("memory limit must be at least 4 MiB".into()));
    }
    if spec.limits.cpu_millis == Some(0) {
        return Err(invalid("cpu limit must be more than 0".into()));
    }
    for r in &spec.rlimits {
        if !Rlimit::NAMES.contains(&r.name.as_str()) {
            return Err(invalid(format!(
                "unknown ulimit {:?}; known: {}",
                r.name,
                Rlimit::NAMES.join(", ")
            )));
        }
        if r.soft > r.hard {
            return Err(invalid(format!(
                "ulimit {}: soft limit {} is above hard limit {}",
                r.name, r.soft, r.hard
            )));
        }
    }
    for m in &spec.mounts {
        if !m.target.starts_with('/') || Path::new(&m.target).components().count() < 2 {
            return Err(invalid(format!(
                "mount target {:?} must be an absolute path other than /",
                m.target
            )));
        }
        if !m.source.is_absolute() {
            return Err(invalid(format!(
                "mount source {} must be an absolute host path",
                m.source.display()
            )));
        }
        if let Err(e) = std::fs::metadata(&m.source) {
            return Err(invalid(format!(
                "mount source {} (for {}): {e}",
                m.source.display(),
                m.target
            )));
        }
    }
    let dir = |what: &str, path: &Path| -> Result<PathBuf, Error> {
        let canonical = std::fs::canonicalize(path)
            .map_err(|e| invalid(format!("{what} {}: {e}", path.display())))?;
        if !canonical.is_dir() {
            return Err(invalid(format!(
                "{what} {} is not a directory",
                path.display()
            )));
        }
        Ok(canonical)
    };
    let bundle = dir("bundle dir", &spec.bundle_dir)?;
    let lowers = spec
        .lower_layers
        .iter()
        .map(|l| dir("lower layer", l))
        .collect::<Result<Vec<_>, _>>()?;
    let upper = dir("upper dir", &spec.upper_dir)?;
    let work = dir("work dir", &spec.work_dir)?;
    Ok(Checked {
        bundle,
        lowers,
        upper,
        work,
    })
}

/// Creates `BUNDLE/lock` already locked: a file is written, locked and
/// filled under a temporary name, then hard-linked into place (which fails
/// if a lock exists). `cleanup_stale` thus never sees an unlocked lock file
/// of a run that is merely starting.
fn acquire_lock(bundle: &Path, id: &str) -> Result<File, Error> {
    let lock_path = bundle.join(LOCK);
    let io_err = |action: &'static str, path: &Path, source: io::Error| Error::Io {
        container_id: id.to_string(),
        action,
        path: path.to_path_buf(),
        source,
    };
    if lock_path.exists() {
        return Err(existing_lock(bundle, id, &lock_path));
    }
    for name in BUNDLE_ENTRIES {
        if std::fs::symlink_metadata(bundle.join(name)).is_ok() {
            return Err(Error::InvalidSpec {
                container_id: id.to_string(),
                reason: format!(
                    "bundle dir {} is not empty: it already has {name}",
                    bundle.display()
                ),
            });
        }
    }
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = bundle.join(format!(".lock.{}.{n}.tmp", std::process::id()));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_err("creating lock file", &tmp, e))?;
    let prepared = rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive)
        .map_err(io::Error::from)
        .and_then(|()| file.write_all(id.as_bytes()))
        .and_then(|()| std::fs::hard_link(&tmp, &lock_path));
    let _ = std::fs::remove_file(&tmp);
    match prepared {
        Ok(()) => Ok(file),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(existing_lock(bundle, id, &lock_path))
        }
        Err(e) => Err(io_err("creating lock file", &lock_path, e)),
    }
}

fn existing_lock(bundle: &Path, id: &str, lock_path: &Path) -> Error {
    let held = OpenOptions::new()
        .read(true)
        .open(lock_path)
        .map(|f| rustix::fs::flock(&f, FlockOperation::NonBlockingLockShared).is_err())
        .unwrap_or(false);
    if held {
        Error::BundleBusy {
            container_id: id.to_string(),
            bundle: bundle.to_path_buf(),
        }
    } else {
        Error::InvalidSpec {
            container_id: id.to_string(),
            reason: format!(
                "bundle dir {} holds the lock of a dead run; run cleanup_stale first",
                bundle.display()
            ),
        }
    }
}

fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Creates a missing working directory through the mounted rootfs, so this
/// works the same whatever the runtime does about missing cwds. A directory
/// created here is owned by the run's user, who will want to write there.
fn create_cwd(rootfs: &Path, cwd: &str, user: &ResolvedUser) -> io::Result<()> {
    let rel = rootpath::resolve_in_root(rootfs, cwd)?;
    let mut current = rootfs.to_path_buf();
    let mut created_last = false;
    for component in rel.components() {
        current.push(component);
        match std::fs::symlink_metadata(&current) {
            Ok(m) if m.is_dir() => created_last = false,
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "cwd {cwd}: {} is not a directory",
                    current.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new().mode(0o755).create(&current)?;
                created_last = true;
            }
            Err(e) => return Err(e),
        }
    }
    if created_last && (user.uid, user.gid) != (0, 0) {
        std::os::unix::fs::chown(&current, Some(user.uid), Some(user.gid))?;
    }
    Ok(())
}

fn finalize_env(env: &[String], user: &ResolvedUser) -> Vec<String> {
    let has = |key: &str| {
        env.iter()
            .any(|e| e.split_once('=').is_some_and(|(k, _)| k == key))
    };
    let mut out = env.to_vec();
    if !has("PATH") {
        out.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has("HOME") {
        out.push(format!("HOME={}", user.home.as_deref().unwrap_or("/")));
    }
    out
}

fn write_config(
    spec: &RunSpec,
    env: &[String],
    user: &ResolvedUser,
    mounts: &[MountEntry],
    cgroups_path: Option<String>,
    hostname: &str,
    path: &Path,
) -> Result<(), oci_spec::OciSpecError> {
    let config = config::build(&ConfigInput {
        args: &spec.args,
        env,
        cwd: &spec.cwd,
        user,
        network: &spec.network,
        mounts,
        hostname,
        limits: spec.limits,
        rlimits: &spec.rlimits,
        cgroups_path,
    })?;
    config.save(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_map_back_to_signals() {
        assert_eq!(
            ExitStatus::from_code(0),
            ExitStatus {
                code: Some(0),
                ..ExitStatus::default()
            }
        );
        assert!(ExitStatus::from_code(0).success());
        assert_eq!(ExitStatus::from_code(7).code, Some(7));
        assert_eq!(ExitStatus::from_code(128).code, Some(128));
        assert_eq!(
            ExitStatus::from_code(137),
            ExitStatus {
                signal: Some(9),
                ..ExitStatus::default()
            }
        );
        assert_eq!(ExitStatus::from_code(143).signal, Some(15));
        assert_eq!(ExitStatus::from_code(192).signal, Some(64));
        assert_eq!(ExitStatus::from_code(255).code, Some(255));
        assert!(!ExitStatus::from_code(137).success());
        assert_eq!(ExitStatus::from_code(137).to_string(), "killed by signal 9");
    }

    #[test]
    fn env_gets_defaults_only_when_missing() {
        let root = ResolvedUser {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            home: Some("/root".into()),
        };
        let env = finalize_env(&["A=1".into()], &root);
        assert_eq!(
            env,
            vec![
                "A=1".to_string(),
                format!("PATH={DEFAULT_PATH}"),
                "HOME=/root".into()
            ]
        );
        let env = finalize_env(&["PATH=/x".into(), "HOME=/h".into()], &root);
        assert_eq!(env, vec!["PATH=/x".to_string(), "HOME=/h".into()]);
    }

    #[test]
    fn run_future_is_send() {
        fn assert_send<T: Send>(_: T) {}
        let runtime = Runtime::new("/nonexistent/runc".into(), "/nonexistent/state".into());
        let spec = RunSpec {
            container_id: "c".into(),
            bundle_dir: "/nonexistent".into(),
            lower_layers: vec![],
            upper_dir: "/nonexistent".into(),
            work_dir: "/nonexistent".into(),
            args: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            user: None,
            network: Network::None,
            mounts: vec![],
            hostname: None,
            limits: StepLimits::default(),
            rlimits: vec![],
            timeout: None,
        };
        // Never polled: only the type matters.
        assert_send(runtime.run(spec, |_, _| None));
    }

    #[test]
    fn ids_are_restricted() {
        assert!(valid_id("kiln-step_1.2+x"));
        for bad in ["", ".", "..", "a/b", "a b", "ä"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn lock_is_created_locked_and_excludes_others() {
        let dir = tempfile::tempdir().unwrap();
        let lock = acquire_lock(dir.path(), "c1").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(LOCK)).unwrap(),
            "c1"
        );
        let other = File::open(dir.path().join(LOCK)).unwrap();
        assert!(rustix::fs::flock(&other, FlockOperation::NonBlockingLockExclusive).is_err());
        assert!(matches!(
            acquire_lock(dir.path(), "c2"),
            Err(Error::BundleBusy { .. })
        ));
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(lock);
        assert!(matches!(
            acquire_lock(dir.path(), "c3"),
            Err(Error::InvalidSpec { .. })
        ));
    }
}
