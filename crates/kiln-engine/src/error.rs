use std::sync::Arc;

/// Errors from solving a graph. Cloneable because one failed step fails
/// every consumer waiting on it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error("image {reference} is not in the store at {store}; pull it with `kiln image pull {reference}` or import it with `kiln image import PATH --tag {reference}`")]
    ImageNotFound { reference: String, store: String },
    #[error("{reference} is not pinned in kiln.lock, and --locked forbids resolving it: run `kiln lock` to pin it")]
    NotLocked { reference: String },
    #[error(
        "{what} is not possible while only planning (the pipeline is being evaluated, not run)"
    )]
    PlanOnly { what: String },
    #[error("{0}")]
    Registry(Arc<kiln_registry::Error>),
    #[error("cannot pull {reference}: {cause}")]
    Pull {
        reference: String,
        cause: Arc<kiln_registry::Error>,
    },
    #[error("image {reference} is not in the store at {store}, and pulling it failed: {cause}\n(without a registry, bring it in with `kiln image import PATH --tag {reference}`)")]
    ImageUnavailable {
        reference: String,
        store: String,
        cause: Arc<kiln_registry::Error>,
    },
    #[error("--offline forbids pulling {reference}; bring it in with `kiln image import PATH --tag {reference}`")]
    Offline { reference: String },
    #[error("{0}")]
    Oci(Arc<kiln_oci::Error>),
    #[error("{0}")]
    Store(Arc<kiln_store::Error>),
    #[error("{0}")]
    Fs(Arc<kiln_fs::Error>),
    #[error("{0}")]
    Exec(Arc<kiln_exec::Error>),
    #[error("{}", failure_message(.0))]
    StepFailed(Arc<StepFailure>),
    #[error("secret {name}: {why}")]
    Secret { name: String, why: String },
    /// A service failed to start, to become ready, or ended on its own.
    #[error("{service} {why}{}", log_section(.log_tail))]
    Service {
        /// "service `COMMAND`"
        service: String,
        why: String,
        /// The last lines of its output, scrubbed of secrets.
        log_tail: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{what} {path} does not exist")]
    NotFound { what: &'static str, path: String },
    #[error("could not open the engine: {0}")]
    Open(String),
    /// [`Engine::cancel`](crate::Engine::cancel) was called: running steps
    /// were killed and nothing new starts.
    #[error("cancelled")]
    Cancelled,
    #[error("internal error: {0}")]
    Internal(String),
}

/// A step that exited other than expected: its command, status and the
/// tail of its output (already scrubbed of secrets).
#[derive(Debug)]
pub struct StepFailure {
    pub command: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Why it ended, as the events say it.
    pub ending: crate::Ending,
    pub expected: kiln_graph::Expect,
    pub output_tail: String,
    /// What happened to services the step was bound to, when one ended
    /// while it ran: the likely cause of the failure.
    pub services: Vec<String>,
}

/// How many lines of a failed step's output an error shows.
pub const TAIL_LINES: usize = 30;

fn failure_message(f: &StepFailure) -> String {
    let status = match (&f.ending, f.exit_code, f.signal) {
        (crate::Ending::TimedOut { timeout_s }, _, _) => {
            format!("timed out after {} and was killed", seconds(*timeout_s))
        }
        (
            crate::Ending::OomKilled {
                memory_limit_bytes, ..
            },
            _,
            _,
        ) => format!(
            "ran out of memory: the kernel's OOM killer killed a process at its memory limit of {}",
            bytes(*memory_limit_bytes)
        ),
        (crate::Ending::Cancelled, _, _) => "was cancelled".to_owned(),
        (_, _, Some(sig)) => format!("was killed by signal {sig}"),
        (_, Some(code), None) => format!("exited with code {code}"),
        (_, None, None) => "ended without an exit status".to_owned(),
    };
    let expectation = match f.expected {
        kiln_graph::Expect::Failure => " (a failure was expected)",
        _ => "",
    };
    let mut msg = format!("step `{}` {status}{expectation}", f.command);
    if !f.output_tail.is_empty() {
        msg.push_str(&format!(
            "\n--- last {TAIL_LINES} lines of output ---\n{}",
            f.output_tail.trim_end()
        ));
    }
    for note in &f.services {
        msg.push_str(&format!("\n{note}"));
    }
    msg
}

fn log_section(tail: &str) -> String {
    if tail.trim().is_empty() {
        " (it printed nothing)".to_owned()
    } else {
        format!("\n--- last lines of its output ---\n{}", tail.trim_end())
    }
}

/// `90 s`, `1.5 s`: whole seconds without decimals.
pub(crate) fn seconds(s: f64) -> String {
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

/// `512 MiB`, `4 GiB`, `1.5 GiB`, `100 bytes`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        if n >= 1 << shift {
            let value = n as f64 / (1u64 << shift) as f64;
            return if value.fract() == 0.0 {
                format!("{value:.0} {unit}")
            } else {
                format!("{value:.1} {unit}")
            };
        }
    }
    format!("{n} bytes")
}

macro_rules! from_arc {
    ($variant:ident, $ty:ty) => {
        impl From<$ty> for Error {
            fn from(e: $ty) -> Error {
                Error::$variant(Arc::new(e))
            }
        }
    };
}
from_arc!(Oci, kiln_oci::Error);
from_arc!(Store, kiln_store::Error);
from_arc!(Fs, kiln_fs::Error);
from_arc!(Exec, kiln_exec::Error);
from_arc!(Registry, kiln_registry::Error);

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Error {
        Error::Internal(format!("background task failed: {e}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
