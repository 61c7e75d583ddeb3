//! `kiln runner`: runs jobs for a kiln server.
//!
//! # Life of a runner
//!
//! 1. **Register** with a registration token (`POST /api/runners/register`).
//!    The runner token that comes back is kept in memory only: a restarted
//!    runner registers again.
//! 2. **Wait for work** in `--concurrency` slots, each holding one
//!    `GET /api/runner/next?wait_ms=30000` open at a time. The server answers
//!    the moment a job is queued, so there is no sleep between polls. When
//!    the server cannot be reached a slot backs off (100 ms, doubling, at
//!    most 2 s); one line says the server is unreachable, one that it is back.
//! 3. **Check out** the job's commit into `WORK/job-ID-ATTEMPT`, a fresh
//!    directory removed after the job, from a bare mirror of the repository
//!    under `WORK/mirrors/` (see [`checkout`]): a commit the mirror has is
//!    not fetched again; otherwise a shallow fetch of the commit, or of the
//!    ref when the job names no commit, and a full fetch when the remote
//!    refuses a bare sha. A git failure fails the job, with git's stderr in
//!    the log. A lock file beside each checkout marks it live; a runner
//!    starting removes the checkouts of runners that were killed.
//! 4. **Run `ci`** through [`crate::pipeline::call_function`], the same path
//!    as `kiln run` (same engine setup and store, kiln.lock read the same
//!    way, `source` = the checkout), so a job's cache keys are those of a
//!    local `kiln run` of the same commit on the same store. Each job has
//!    its own engine; engines of one process share a store safely (as
//!    separate `kiln` processes do), but not in-process memo: two jobs
//!    running the same uncached step at once both run it.
//! 5. **Stream** the job to the server (see [`outbox`]): step output as
//!    `stdout`/`stderr` chunks, for each step a `system` line (as
//!    `--progress plain` prints it) and a step record, and the result or
//!    the (secret-scrubbed) error as `system` lines. Chunks are numbered from
//!    0 per attempt, batched, and re-sent until acknowledged: a runner cut
//!    off from its server runs on and delivers everything when it is back.
//!    Then `finish` reports succeeded or failed.
//! 6. **Heartbeat** every second while jobs run, every 5 s when idle,
//!    listing the jobs held, each with its attempt. A job in the answer's
//!    `cancel` is stopped: [`kiln_engine::Engine::cancel`] kills its running
//!    container at once. A 404/409 for a job's logs or finish means the
//!    server has taken it back: the runner stops it and drops it without
//!    reporting.
//!
//!    Every report names the job's attempt. A runner cut off for longer
//!    than the server's runner timeout has its jobs requeued; back, another
//!    of its slots may claim a job's next attempt while the old one still
//!    runs here. The server refuses the old attempt's reports and lists it
//!    (only it) in `cancel`, so the two never mix.
//!
//! Ctrl-C or SIGTERM stops taking jobs and lets the running ones finish;
//! a second one cancels them (reported as failed). Either way the runner
//! exits 0. A refused runner token (revoked) stops the runner with an error.

mod api;
mod checkout;
mod job;
mod outbox;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Notify};

use crate::images::EngineSetup;
use api::{Api, CallError, JobRef};
use job::{JobContext, JobControl, JobEnd, StopReason};

/// How long one `next` request waits for a job.
const NEXT_WAIT: Duration = Duration::from_secs(30);
/// Heartbeat periods while jobs run, and while idle.
const BUSY_HEARTBEAT: Duration = Duration::from_secs(1);
const IDLE_HEARTBEAT: Duration = Duration::from_secs(5);
/// After the second signal: how long cancelled jobs get to report.
const CANCEL_REPORT_WAIT: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  \
        kiln runner-token create   # on the server, prints a registration token\n  \
        KILN_RUNNER_TOKEN=... kiln runner --server http://ci.example.com:8420 --labels linux,x86_64")]
pub struct RunnerArgs {
    /// The server's URL.
    #[arg(long, env = "KILN_SERVER", value_name = "URL")]
    pub server: String,
    /// A runner registration token (made with `kiln runner-token`). Prefer
    /// the environment variable: a command line is visible to other users.
    #[arg(
        long,
        env = "KILN_RUNNER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: RegistrationToken,
    /// This runner's name on the server [default: the host name].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Labels describing this runner, comma-separated (e.g. linux,x86_64).
    #[arg(long, value_delimiter = ',', value_name = "LABEL,...")]
    pub labels: Vec<String>,
    /// How many jobs to run at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..), value_name = "N")]
    pub concurrency: u16,
    /// Where jobs are checked out, one fresh directory each [default: STORE/runner-work].
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
    /// Fail a job unless its kiln.lock pins exactly the images its pipeline
    /// uses (as `kiln run --locked`).
    #[arg(long)]
    pub locked: bool,
    /// Limits of every step of every job, unless its pipeline sets its own.
    #[command(flatten)]
    pub limits: crate::cli::LimitArgs,
    /// Wall time of a whole job (checkout included): past it the job's
    /// steps are killed and it fails, saying so. `0` for none.
    #[arg(long, env = "KILN_JOB_TIMEOUT", default_value = "1h", value_name = "DURATION", value_parser = parse_job_timeout)]
    pub job_timeout: JobTimeout,
}

/// `--job-timeout`: a duration, or none for `0`.
#[derive(Clone, Copy, Debug)]
pub struct JobTimeout(pub Option<std::time::Duration>);

fn parse_job_timeout(text: &str) -> Result<JobTimeout, String> {
    if text.trim() == "0" {
        return Ok(JobTimeout(None));
    }
    kiln_engine::parse_duration(text).map(|d| JobTimeout(Some(d)))
}

/// A registration token; never shown by `Debug`.
#[derive(Clone)]
pub struct RegistrationToken(String);

impl std::str::FromStr for RegistrationToken {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let token = s.trim();
        if token.is_empty() {
            return Err("the registration token is empty".into());
        }
        Ok(RegistrationToken(token.to_owned()))
    }
}

impl std::fmt::Debug for RegistrationToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistrationToken(<redacted>)")
    }
}

pub async fn run(mut setup: EngineSetup, args: RunnerArgs) -> Result<ExitCode> {
    // A job's log must hold its steps' output even when a step is a cache
    // hit (another attempt, another runner, or a laptop ran it).
    setup.replay_cached = true;
    setup.default_limits = args.limits.limits();
    let api = Arc::new(Api::new(&args.server)?);
    let name = match args.name {
        Some(name) => name,
        None => host_name(),
    };
    let work = args
        .work
        .clone()
        .unwrap_or_else(|| setup.store.join("runner-work"));
    // Checkouts may hold a repository's private files; other local users
    // must not reach them.
    kiln_store::ensure_private_dir(&work)
        .with_context(|| format!("creating the work directory {}", work.display()))?;
    let abandoned = job::remove_abandoned_checkouts(&work);
    if abandoned > 0 {
        eprintln!(
            "kiln runner: removed {abandoned} checkout(s) a stopped runner left in {}",
            work.display()
        );
    }
    let (phase, _) = watch::channel(Phase::Running);
    let phase = Arc::new(phase);
    let mut signals = Signals::new()?;

    let runner_id = tokio::select! {
        registered = register(&api, &args.token, &name, &args.labels) => registered?,
        _ = signals.next() => return Ok(ExitCode::SUCCESS),
    };
    eprintln!(
        "kiln runner: registered as {name} (runner {runner_id}) with {}; {} slot(s), checkouts in {}",
        api.server(),
        args.concurrency,
        work.display()
    );
    let runner = Arc::new(Runner {
        ctx: JobContext {
            api: api.clone(),
            setup,
            work,
            locked: args.locked,
            runner_name: name,
            job_timeout: args.job_timeout.0,
        },
        phase: phase.clone(),
        jobs: Mutex::new(HashMap::new()),
        jobs_changed: Notify::new(),
        fatal: Mutex::new(None),
    });

    tokio::spawn(watch_signals(signals, runner.clone()));
    let heartbeat = tokio::spawn(heartbeat(runner.clone()));
    let mut slots = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        slots.spawn(slot(runner.clone()));
    }
    let all_done = async { while slots.join_next().await.is_some() {} };
    tokio::pin!(all_done);
    let mut watching = phase.subscribe();
    tokio::select! {
        _ = &mut all_done => {}
        _ = watching.wait_for(|p| *p == Phase::Cancelling) => {
            // Cancelled jobs report as failed; if the server is away, they
            // do not hold the exit up for long.
            if tokio::time::timeout(CANCEL_REPORT_WAIT, &mut all_done).await.is_err() {
                eprintln!("kiln runner: leaving jobs whose end could not be reported");
            }
        }
    }
    heartbeat.abort();
    if let Some(why) = lock(&runner.fatal).take() {
        bail!("{why}");
    }
    eprintln!("kiln runner: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Where the runner is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// No new jobs; running ones finish.
    Draining,
    /// Running jobs are being cancelled.
    Cancelling,
}

struct Runner {
    ctx: JobContext,
    phase: Arc<watch::Sender<Phase>>,
    /// The job attempts held now. Two attempts of one job may be here at
    /// once: the old one until the server's heartbeat answer stops it.
    jobs: Mutex<HashMap<JobRef, Arc<JobControl>>>,
    /// Woken when a job is taken: the first heartbeat for it goes out now.
    jobs_changed: Notify,
    /// Why the runner must stop (its token was refused).
    fatal: Mutex<Option<String>>,
}

impl Runner {
    fn held(&self) -> Vec<JobRef> {
        let mut jobs: Vec<JobRef> = lock(&self.jobs).keys().copied().collect();
        jobs.sort_unstable();
        jobs
    }

    fn stop_all(&self, reason: StopReason) {
        for control in lock(&self.jobs).values() {
            control.stop(reason);
        }
    }

    /// The runner cannot go on: stop everything, exit with `why`.
    fn fail(&self, why: &str) {
        lock(&self.fatal).get_or_insert_with(|| why.to_owned());
        self.phase.send_replace(Phase::Cancelling);
        self.stop_all(StopReason::Shutdown);
    }

    async fn run_job(&self, job: api::ClaimedJob) {
        let id = job.id;
        let job_ref = job.job_ref();
        let control = Arc::new(JobControl::new());
        lock(&self.jobs).insert(job_ref, control.clone());
        self.jobs_changed.notify_one();
        if *self.phase.borrow() == Phase::Cancelling {
            control.stop(StopReason::Shutdown);
        }
        let target = job.commit.clone().unwrap_or_else(|| job.git_ref.clone());
        eprintln!(
            "kiln runner: job {id} (attempt {}): {} at {target}",
            job.attempt, job.repo
        );
        let attempt = job.attempt;
        let end = job::run(&self.ctx, job, control).await;
        lock(&self.jobs).remove(&job_ref);
        match end {
            JobEnd::Finished { succeeded, took } => eprintln!(
                "kiln runner: job {id} (attempt {attempt}) {} in {:.1}s",
                if succeeded { "succeeded" } else { "failed" },
                took.as_secs_f64()
            ),
            JobEnd::Dropped(why) => {
                eprintln!("kiln runner: job {id} (attempt {attempt}) dropped: {why}")
            }
        }
    }
}

/// Registers, retrying while the server cannot be reached.
async fn register(
    api: &Api,
    token: &RegistrationToken,
    name: &str,
    labels: &[String],
) -> Result<i64> {
    let mut backoff = Backoff::new();
    loop {
        match api.register(&token.0, name, labels).await {
            Ok(id) => return Ok(id),
            Err(CallError::Unreachable(_)) => backoff.wait().await,
            Err(CallError::Unauthorized) => bail!(
                "the server refused the registration token (unknown, revoked, or not a runner registration token)"
            ),
            Err(e) => bail!("registering with {}: {e}", api.server()),
        }
    }
}

/// One slot: takes a job, runs it, takes the next, until the runner stops.
async fn slot(runner: Arc<Runner>) {
    let mut phase = runner.phase.subscribe();
    let mut backoff = Backoff::new();
    loop {
        if *phase.borrow_and_update() != Phase::Running {
            return;
        }
        // Dropping a `next` whose answer was a job is safe: the job is not
        // in our heartbeats, so the server queues it again.
        let next = tokio::select! {
            next = runner.ctx.api.next(NEXT_WAIT) => next,
            _ = phase.changed() => return,
        };
        match next {
            Ok(Some(job)) => {
                backoff.reset();
                runner.run_job(job).await;
            }
            Ok(None) => backoff.reset(),
            Err(CallError::Unauthorized) => {
                runner.fail("the server refused this runner's token (was it revoked?)");
                return;
            }
            Err(e) => {
                if !matches!(e, CallError::Unreachable(_)) {
                    eprintln!("kiln runner: asking for a job: {e}");
                }
                tokio::select! {
                    _ = backoff.wait() => {}
                    _ = phase.changed() => return,
                }
            }
        }
    }
}

/// Tells the server which jobs this runner holds; stops those it cancels.
async fn heartbeat(runner: Arc<Runner>) {
    loop {
        let held = runner.held();
        match runner.ctx.api.heartbeat(&held).await {
            Ok(cancels) => {
                let jobs = lock(&runner.jobs);
                for cancel in cancels {
                    for (job, control) in jobs.iter().filter(|(job, _)| cancel.covers(**job)) {
                        if control.reason().is_none() {
                            eprintln!(
                                "kiln runner: job {} (attempt {}): the server asks to stop it",
                                job.id, job.attempt
                            );
                        }
                        control.stop(StopReason::Cancelled);
                    }
                }
            }
            Err(CallError::Unauthorized) => {
                runner.fail("the server refused this runner's token (was it revoked?)");
                return;
            }
            // Unreachable is reported by the client; the next beat retries.
            Err(_) => {}
        }
        let period = if runner.held().is_empty() {
            IDLE_HEARTBEAT
        } else {
            BUSY_HEARTBEAT
        };
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = runner.jobs_changed.notified() => {}
        }
    }
}

/// SIGINT and SIGTERM, as one stream.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("handling SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("handling SIGTERM")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// First signal: take no more jobs. Second: cancel the running ones.
async fn watch_signals(mut signals: Signals, runner: Arc<Runner>) {
    loop {
        signals.next().await;
        let phase = *runner.phase.borrow();
        match phase {
            Phase::Running => {
                runner.phase.send_replace(Phase::Draining);
                let running = runner.held().len();
                if running == 0 {
                    eprintln!("kiln runner: stopping");
                } else {
                    eprintln!(
                        "kiln runner: stopping: no new jobs; waiting for {running} running job(s) (signal again to cancel them)"
                    );
                }
            }
            Phase::Draining => {
                eprintln!("kiln runner: cancelling the running jobs");
                runner.phase.send_replace(Phase::Cancelling);
                runner.stop_all(StopReason::Shutdown);
            }
            Phase::Cancelling => {}
        }
    }
}

/// Waits between retries: 100 ms, doubling up to 2 s; reset by a success.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);

    pub(crate) fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Self::MAX);
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// The host's name, made fit for a runner name (A-Z a-z 0-9 - _ .).
fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    let name = name.trim_start_matches('.');
    if name.is_empty() {
        "kiln-runner".to_owned()
    } else {
        name.to_owned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registration_token_is_not_in_debug_output() {
        let token: RegistrationToken = "kiln_reg_s3cr3t".parse().unwrap();
        assert!(!format!("{token:?}").contains("s3cr3t"));
        assert!("  ".parse::<RegistrationToken>().is_err());
    }
}
