//! One job: check the commit out, run its `ci` exactly as `kiln run` does,
//! stream what happens to the server, and report how it ended.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kiln_engine::{Engine, Event, Lines, Outcome, StepId, Stream};
use kiln_starlark::Output;
use tokio::sync::watch;

use super::api::{Api, CallError, ClaimedJob, StepRecord};
use super::checkout::{checkout, shown_url};
use super::outbox::{Delivery, LogWriter, Outbox};
use super::Backoff;
use crate::images::EngineSetup;
use crate::pipeline::{self, Called, Watch};

/// How long a stopped job's pipeline gets to wind down (its engine kills
/// running steps at once) before it is dropped where it stands.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What every job of a runner shares.
pub struct JobContext {
    pub api: Arc<Api>,
    pub setup: EngineSetup,
    pub work: PathBuf,
    pub locked: bool,
    pub runner_name: String,
    /// `--job-timeout`: the wall time of one job.
    pub job_timeout: Option<Duration>,
}

/// Why a job was stopped before it ended by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The server listed it in a heartbeat's `cancel`.
    Cancelled,
    /// The server answered 404/409: it is no longer this runner's.
    Gone,
    /// The runner is shutting down and was told to cancel what runs.
    Shutdown,
    /// It ran past its job timeout (the runner's `--job-timeout`, or its
    /// repository's if shorter).
    TimedOut,
}

/// Stops a job from outside: the heartbeat, the log sender, a signal.
pub struct JobControl {
    state: Mutex<ControlState>,
    stopped: watch::Sender<bool>,
}

#[derive(Default)]
struct ControlState {
    reason: Option<StopReason>,
    engine: Option<Engine>,
}

impl JobControl {
    pub fn new() -> JobControl {
        JobControl {
            state: Mutex::new(ControlState::default()),
            stopped: watch::Sender::new(false),
        }
    }

    /// Stops the job (the first reason given sticks): its engine kills the
    /// running steps and starts no more.
    pub fn stop(&self, reason: StopReason) {
        let engine = {
            let mut state = lock(&self.state);
            if state.reason.is_some() {
                return;
            }
            state.reason = Some(reason);
            state.engine.clone()
        };
        self.stopped.send_replace(true);
        if let Some(engine) = engine {
            cancel(engine);
        }
    }

    pub fn reason(&self) -> Option<StopReason> {
        lock(&self.state).reason
    }

    /// The job's engine, once open: a stop from now on cancels it.
    fn attach(&self, engine: &Engine) {
        let stopped = {
            let mut state = lock(&self.state);
            state.engine = Some(engine.clone());
            state.reason.is_some()
        };
        if stopped {
            cancel(engine.clone());
        }
    }

    async fn stopped(&self) {
        let mut watching = self.stopped.subscribe();
        let _ = watching.wait_for(|stopped| *stopped).await;
    }
}

/// Cancelling may block on container teardown: not on an async worker.
fn cancel(engine: Engine) {
    tokio::task::spawn_blocking(move || engine.cancel());
}

/// How a job ended, for the runner's own output.
pub enum JobEnd {
    /// Reported to the server as succeeded or failed.
    Finished { succeeded: bool, took: Duration },
    /// Not reported: the server stopped it, or took it back.
    Dropped(String),
}

/// Runs one claimed job to its end.
pub async fn run(ctx: &JobContext, job: ClaimedJob, control: Arc<JobControl>) -> JobEnd {
    let started = Instant::now();
    let outbox = {
        let control = control.clone();
        Outbox::start(ctx.api.clone(), job.job_ref(), move || {
            control.stop(StopReason::Gone)
        })
    };
    let log = outbox.writer();
    let what = match &job.commit {
        Some(commit) => format!("commit {commit}"),
        None => format!("{} (no commit given)", job.git_ref),
    };
    log.system(&format!(
        "kiln runner {}: job {} attempt {}: {} {what} from {}",
        ctx.runner_name,
        job.id,
        job.attempt,
        job.repo,
        shown_url(&job.url)
    ));
    let dir = ctx.work.join(format!("job-{}-{}", job.id, job.attempt));
    // Held for as long as the checkout exists: a runner starting later
    // removes only checkouts whose lock nobody holds.
    let claim = match claim_checkout(&dir).await {
        Ok(claim) => Some(claim),
        Err(e) => {
            log.system(&format!("warning: {e:#}"));
            None
        }
    };
    let checked_out = OnceLock::new();
    let repo_timeout = job.limits.job_timeout_ms.and_then(millis);
    let (job_timeout, timeout_source) = job_timeout(ctx.job_timeout, repo_timeout);
    let timer = job_timeout.map(|timeout| {
        let control = control.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            control.stop(StopReason::TimedOut);
        })
    });
    let succeeded = {
        let execute = execute(ctx, &job, dir.clone(), &log, &control, &checked_out);
        let wound_down = async {
            control.stopped().await;
            tokio::time::sleep(STOP_GRACE).await;
        };
        tokio::select! {
            succeeded = execute => succeeded,
            _ = wound_down => false,
        }
    };
    if let Some(timer) = timer {
        timer.abort();
    }
    remove_checkout(dir.clone()).await;
    if claim.is_some() {
        let _ = std::fs::remove_file(checkout_lock(&dir));
    }
    drop(claim);
    match control.reason() {
        Some(StopReason::Cancelled) => {
            outbox.abandon();
            return JobEnd::Dropped("cancelled by the server".into());
        }
        Some(StopReason::Gone) => {
            outbox.abandon();
            return JobEnd::Dropped("the server no longer counts it as this runner's".into());
        }
        Some(StopReason::Shutdown) => log.system("cancelled: the runner is shutting down"),
        Some(StopReason::TimedOut) => log.system(&format!(
            "error: the job timed out after {} ({timeout_source}): its steps were killed",
            crate::pipeline::seconds(job_timeout.unwrap_or_default())
        )),
        None => {}
    }
    drop(log);
    match outbox.close().await {
        Delivery::Delivered => {}
        Delivery::Gone => {
            return JobEnd::Dropped("the server no longer counts it as this runner's".into())
        }
        Delivery::Refused(why) => {
            return JobEnd::Dropped(format!("the server refused its log: {why}"));
        }
    }
    let mut backoff = Backoff::new();
    loop {
        let commit = checked_out.get().map(String::as_str);
        match ctx.api.finish(job.job_ref(), succeeded, commit).await {
            Ok(()) => {
                return JobEnd::Finished {
                    succeeded,
                    took: started.elapsed(),
                }
            }
            Err(CallError::Unreachable(_)) => ctx.api.retry_after(&mut backoff).await,
            Err(CallError::Gone) => {
                return JobEnd::Dropped("the server no longer counts it as running".into())
            }
            Err(e) => return JobEnd::Dropped(format!("reporting its end: {e}")),
        }
    }
}

/// The repository's limits of steps that set none (`RepoLimits` in
/// API.md). The server only stores positive numbers; anything else counts
/// as unset.
fn step_defaults(limits: &kiln_server::RepoLimits) -> kiln_engine::Limits {
    let positive =
        |value: Option<i64>| value.and_then(|v| u64::try_from(v).ok()).filter(|v| *v > 0);
    kiln_engine::Limits {
        memory_bytes: positive(limits.step_memory_bytes),
        cpu_millis: positive(limits.step_cpu_millis),
        pids: None,
        timeout: limits.step_timeout_ms.and_then(millis),
    }
}

/// A positive number of milliseconds as a duration.
fn millis(ms: i64) -> Option<Duration> {
    u64::try_from(ms)
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

/// The shorter of the runner's and the repository's job timeouts, and
/// which one it is, for the log.
fn job_timeout(
    runner: Option<Duration>,
    repo: Option<Duration>,
) -> (Option<Duration>, &'static str) {
    match (runner, repo) {
        (Some(runner), Some(repo)) if runner <= repo => {
            (Some(runner), "the runner's --job-timeout")
        }
        (_, Some(repo)) => (Some(repo), "the repository's job timeout"),
        (runner, None) => (runner, "the runner's --job-timeout"),
    }
}

/// Checks out and runs `ci`; whether it succeeded. Everything worth
/// knowing goes to the log.
async fn execute(
    ctx: &JobContext,
    job: &ClaimedJob,
    dir: PathBuf,
    log: &LogWriter,
    control: &Arc<JobControl>,
    checked_out: &OnceLock<String>,
) -> bool {
    let mirrors = ctx.work.join("mirrors");
    let fetched = tokio::select! {
        fetched = checkout(&mirrors, &dir, &job.url, job.commit.as_deref(), &job.git_ref) => fetched,
        _ = control.stopped() => return false,
    };
    match fetched {
        Ok(head) => {
            log.system(&format!("checked out {head}"));
            let _ = checked_out.set(head);
        }
        Err(e) => {
            log.system(&format!("error: checking out the commit: {e:#}"));
            return false;
        }
    }
    let mut watch = JobWatch::new(control.clone(), log.clone());
    let started = Instant::now();
    // The repository's defaults replace the runner's, field by field.
    let setup = ctx
        .setup
        .clone()
        .with_limits(step_defaults(&job.limits).or(ctx.setup.default_limits));
    let called = pipeline::call_function(
        &setup,
        pipeline::ci_call(dir, ctx.locked, Vec::new()),
        &mut watch,
    )
    .await;
    // Also when the call ended early: every event that came is logged.
    watch.finish().await;
    match called {
        Err(e) => {
            log.system(&format!("error: {e:#}"));
            false
        }
        Ok(Called::Help(_)) => {
            log.system("error: `ci` was asked for help instead of run");
            false
        }
        Ok(Called::NotStarted { engine, error }) => {
            log.system(&failure(&engine, &error));
            false
        }
        Ok(Called::Ran {
            output: Ok(output), ..
        }) => {
            let took = started.elapsed().as_secs_f64();
            log.system(&format!("ci succeeded in {took:.2}s"));
            if let Some(text) = summary(&output) {
                log.system(&text);
            }
            true
        }
        Ok(Called::Ran {
            engine,
            output: Err(error),
            ..
        }) => {
            log.system(&failure(&engine, &error));
            false
        }
    }
}

/// A failure as `kiln run` prints it: secrets scrubbed, one `error:` prefix.
fn failure(engine: &Engine, error: &anyhow::Error) -> String {
    let message = engine.redact(&format!("{error:#}"));
    // Starlark's diagnostics already begin with "error:".
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    format!("error: {message}")
}

/// What `ci` returned, where text says something (a Container or Directory
/// is already described by its steps).
fn summary(output: &Output) -> Option<String> {
    let text = match output {
        Output::Str(s) => s.trim_end().to_owned(),
        Output::Int(n) => n.to_string(),
        Output::Bool(b) => b.to_string(),
        Output::Other(s) => s.clone(),
        Output::List(items) => items
            .iter()
            .filter_map(summary)
            .collect::<Vec<_>>()
            .join("\n"),
        Output::None | Output::Container(_) | Output::Directory(_) | Output::File(_) => {
            String::new()
        }
    };
    (!text.is_empty()).then_some(text)
}

fn checkout_lock(dir: &Path) -> PathBuf {
    dir.with_extension("lock")
}

/// Takes the lock that marks `dir` as a live checkout (released on drop).
async fn claim_checkout(dir: &Path) -> anyhow::Result<kiln_store::FileLock> {
    let lock = checkout_lock(dir);
    Ok(tokio::task::spawn_blocking(move || kiln_store::FileLock::exclusive(&lock)).await??)
}

/// Removes the checkouts a killed runner left in `work`: those whose lock
/// no live runner holds. Returns how many.
pub fn remove_abandoned_checkouts(work: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(work) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("job-") || name.ends_with(".lock") {
            continue;
        }
        let dir = entry.path();
        let lock = checkout_lock(&dir);
        let Ok(Some(_free)) = kiln_store::FileLock::try_exclusive(&lock) else {
            continue;
        };
        if std::fs::remove_dir_all(&dir).is_ok() {
            let _ = std::fs::remove_file(&lock);
            removed += 1;
        }
    }
    removed
}

async fn remove_checkout(dir: PathBuf) {
    let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("could not remove {}: {e}", dir.display())),
    })
    .await;
    if let Ok(Err(why)) = removed {
        eprintln!("kiln runner: {why}");
    }
}

/// Streams a job's engine events to its log: output as it comes, and for
/// each step a `system` line (as `--progress plain` prints it) and a step
/// record.
struct JobWatch {
    control: Arc<JobControl>,
    log: LogWriter,
    forwarder: Option<(
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    )>,
}

impl JobWatch {
    fn new(control: Arc<JobControl>, log: LogWriter) -> JobWatch {
        JobWatch {
            control,
            log,
            forwarder: None,
        }
    }
}

impl Watch for JobWatch {
    fn opened(&mut self, engine: &Engine) {
        self.control.attach(engine);
        // From the start: kiln.star may solve while it loads. Output in
        // pieces that end at line ends, so neither another step's output
        // nor a step line lands in the middle of a line in the job's log.
        let mut events = Lines::joined(engine.subscribe());
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let mut steps = StepLog::new(self.log.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    Some(event) = events.recv() => steps.record(event),
                    _ = &mut stopped => {
                        for event in events.drain() {
                            steps.record(event);
                        }
                        break;
                    }
                }
            }
        });
        self.forwarder = Some((task, stop));
    }

    async fn finish(&mut self) {
        if let Some((task, stop)) = self.forwarder.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}

/// Turns engine events into log chunks and step records.
struct StepLog {
    log: LogWriter,
    /// Each step's cache key, from its Started or Cached event, for its
    /// record when it ends.
    steps: HashMap<StepId, String>,
}

impl StepLog {
    fn new(log: LogWriter) -> StepLog {
        StepLog {
            log,
            steps: HashMap::new(),
        }
    }

    fn record(&mut self, event: Event) {
        // `Lines` sends a step's last output before its end.
        if let Some(line) = crate::progress::step_line(&event) {
            self.log.system(&line);
        }
        match event {
            Event::Started { step, name, key } => {
                self.steps.insert(step, key.clone());
                self.log.step(StepRecord {
                    step: step.0,
                    name,
                    key,
                    status: "running",
                    cached: false,
                    duration_ms: None,
                });
            }
            Event::Cached { step, name, key } => {
                self.steps.insert(step, key.clone());
                self.log.step(StepRecord {
                    step: step.0,
                    name,
                    key,
                    status: "cached",
                    cached: true,
                    duration_ms: None,
                });
            }
            Event::Output { stream, data, .. } => {
                // `Lines` cuts only between characters, so a character
                // split between two reads is whole here; only a stream
                // ending inside one shows U+FFFD.
                let text = String::from_utf8_lossy(&data).into_owned();
                self.log.output(stream_name(stream), text);
            }
            Event::Finished {
                step,
                name,
                duration,
                outcome,
            } => {
                let status = match outcome {
                    Outcome::Succeeded { .. } => "succeeded",
                    Outcome::Failed { .. } => "failed",
                };
                self.log.step(StepRecord {
                    step: step.0,
                    name,
                    key: self.steps.get(&step).cloned().unwrap_or_default(),
                    status,
                    cached: false,
                    duration_ms: Some(duration.as_secs_f64() * 1000.0),
                });
            }
        }
    }
}

fn stream_name(stream: Stream) -> &'static str {
    match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repositorys_limits_become_step_defaults_and_nonsense_is_unset() {
        let limits = kiln_server::RepoLimits {
            step_memory_bytes: Some(1 << 30),
            step_cpu_millis: Some(0),
            step_timeout_ms: Some(90_000),
            job_timeout_ms: Some(-5),
        };
        let steps = step_defaults(&limits);
        assert_eq!(steps.memory_bytes, Some(1 << 30));
        assert_eq!(steps.cpu_millis, None);
        assert_eq!(steps.pids, None);
        assert_eq!(steps.timeout, Some(Duration::from_secs(90)));
        assert_eq!(limits.job_timeout_ms.and_then(millis), None);
    }

    #[test]
    fn the_shorter_job_timeout_wins_and_is_named() {
        let minute = Some(Duration::from_secs(60));
        let hour = Some(Duration::from_secs(3600));
        assert_eq!(
            job_timeout(hour, minute),
            (minute, "the repository's job timeout")
        );
        assert_eq!(
            job_timeout(minute, hour),
            (minute, "the runner's --job-timeout")
        );
        assert_eq!(
            job_timeout(None, minute),
            (minute, "the repository's job timeout")
        );
        assert_eq!(
            job_timeout(hour, None),
            (hour, "the runner's --job-timeout")
        );
        assert_eq!(job_timeout(None, None).0, None);
    }

    #[test]
    fn results_worth_a_line_are_summarised() {
        assert_eq!(
            summary(&Output::Str("all good\n".into())).as_deref(),
            Some("all good")
        );
        assert_eq!(summary(&Output::None), None);
        assert_eq!(
            summary(&Output::List(vec![
                Output::Int(3),
                Output::None,
                Output::Bool(true)
            ]))
            .as_deref(),
            Some("3\ntrue")
        );
    }
}
