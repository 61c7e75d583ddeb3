//! A job's log and step records on their way to the server.
//!
//! Chunks are numbered when written (seq 0, 1, 2, ... without gaps, for
//! this attempt), kept in memory until the server acknowledges them, and
//! sent in batches at most every [`BATCH_WINDOW`]. A failed send is retried
//! with backoff for as long as it takes: a runner cut off from its server
//! keeps running the job and delivers everything once the server is back.
//! The server ignores a seq it already has, so re-sending a batch whose
//! answer was lost repeats nothing. Step records are sent the same way,
//! latest state per step.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::api::{Api, CallError, JobRef, LogChunk, StepRecord};
use super::Backoff;

/// How long chunks gather before a send: fewer, larger requests for chatty steps.
const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// The most log text one request carries (the server takes up to 2 MB).
const BATCH_BYTES: usize = 512 * 1024;

/// How delivery ended.
#[derive(Debug)]
pub enum Delivery {
    /// Every chunk and step record was acknowledged.
    Delivered,
    /// The server answered 404/409 (or 401): the job is not ours any more.
    Gone,
    /// The server refused a batch for another reason; nothing more is sent.
    Refused(String),
}

pub struct Outbox {
    shared: Arc<Shared>,
    sender: JoinHandle<Delivery>,
}

/// Writes to a job's log. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct LogWriter(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    /// Wakes the sender; a permit is kept if it is not waiting.
    wake: Notify,
}

#[derive(Default)]
struct State {
    next_seq: i64,
    unacked: VecDeque<LogChunk>,
    /// Step records not yet acknowledged, latest state per step.
    steps: BTreeMap<u64, StepRecord>,
    closed: bool,
}

impl Outbox {
    /// Starts the sender for this attempt of a job. `on_gone` is called as
    /// soon as the server says the attempt is no longer ours (requeued,
    /// cancelled, finished), so it can be stopped.
    pub fn start(api: Arc<Api>, job: JobRef, on_gone: impl FnOnce() + Send + 'static) -> Outbox {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        });
        let sender = tokio::spawn(deliver(api, job, shared.clone(), on_gone));
        Outbox { shared, sender }
    }

    pub fn writer(&self) -> LogWriter {
        LogWriter(self.shared.clone())
    }

    /// No more writes: waits until everything written is acknowledged.
    pub async fn close(self) -> Delivery {
        lock(&self.shared.state).closed = true;
        self.shared.wake.notify_one();
        match self.sender.await {
            Ok(delivery) => delivery,
            Err(e) => Delivery::Refused(format!("log sender failed: {e}")),
        }
    }

    /// Stops sending; what was not delivered is dropped.
    pub fn abandon(self) {
        self.sender.abort();
    }
}

impl LogWriter {
    /// Appends output of a step.
    pub fn output(&self, stream: &'static str, data: String) {
        if data.is_empty() {
            return;
        }
        let mut state = lock(&self.0.state);
        let seq = state.next_seq;
        state.next_seq += 1;
        state.unacked.push_back(LogChunk { seq, stream, data });
        drop(state);
        self.0.wake.notify_one();
    }

    /// Appends a line of the runner's own (`system` stream).
    pub fn system(&self, line: &str) {
        let mut data = line.to_owned();
        if !data.ends_with('\n') {
            data.push('\n');
        }
        self.output("system", data);
    }

    /// Records a step's latest state.
    pub fn step(&self, record: StepRecord) {
        lock(&self.0.state).steps.insert(record.step, record);
        self.0.wake.notify_one();
    }
}

async fn deliver(
    api: Arc<Api>,
    job: JobRef,
    shared: Arc<Shared>,
    on_gone: impl FnOnce() + Send + 'static,
) -> Delivery {
    let delivery = deliver_all(&api, job, &shared).await;
    if !matches!(delivery, Delivery::Delivered) {
        on_gone();
    }
    delivery
}

async fn deliver_all(api: &Api, job: JobRef, shared: &Shared) -> Delivery {
    let mut backoff = Backoff::new();
    loop {
        let closed = loop {
            {
                let state = lock(&shared.state);
                let pending = !state.unacked.is_empty() || !state.steps.is_empty();
                if pending {
                    break state.closed;
                }
                if state.closed {
                    return Delivery::Delivered;
                }
            }
            shared.wake.notified().await;
        };
        if !closed {
            tokio::time::sleep(BATCH_WINDOW).await;
        }
        let (chunks, steps) = {
            let state = lock(&shared.state);
            (batch(&state.unacked), state.steps.clone())
        };
        let mut failed = None;
        if let Some(last) = chunks.last().map(|c| c.seq) {
            match api.post_logs(job, &chunks).await {
                Ok(()) => {
                    let mut state = lock(&shared.state);
                    while state.unacked.front().is_some_and(|c| c.seq <= last) {
                        state.unacked.pop_front();
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        if failed.is_none() && !steps.is_empty() {
            let records: Vec<StepRecord> = steps.values().cloned().collect();
            match api.post_steps(job, &records).await {
                Ok(()) => {
                    // A step that changed while the request was out stays.
                    let mut state = lock(&shared.state);
                    for (step, sent) in &steps {
                        if state.steps.get(step) == Some(sent) {
                            state.steps.remove(step);
                        }
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            None => backoff.reset(),
            Some(CallError::Gone | CallError::Unauthorized) => return Delivery::Gone,
            Some(CallError::Rejected { status, message }) => {
                return Delivery::Refused(format!("{status}: {message}"))
            }
            // Printed once by the client; try again, for as long as it takes.
            Some(CallError::Unreachable(_)) => api.retry_after(&mut backoff).await,
        }
    }
}

/// The oldest unacknowledged chunks, up to [`BATCH_BYTES`] (at least one).
fn batch(unacked: &VecDeque<LogChunk>) -> Vec<LogChunk> {
    let mut bytes = 0;
    let mut chunks = Vec::new();
    for chunk in unacked {
        if !chunks.is_empty() && bytes + chunk.data.len() > BATCH_BYTES {
            break;
        }
        bytes += chunk.data.len();
        chunks.push(chunk.clone());
    }
    chunks
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seq: i64, len: usize) -> LogChunk {
        LogChunk {
            seq,
            stream: "stdout",
            data: "x".repeat(len),
        }
    }

    #[test]
    fn a_batch_stops_at_the_byte_limit_but_takes_at_least_one_chunk() {
        let unacked: VecDeque<_> = (0..4).map(|i| chunk(i, BATCH_BYTES / 3)).collect();
        assert_eq!(batch(&unacked).len(), 3);
        let huge: VecDeque<_> = [chunk(0, BATCH_BYTES * 2), chunk(1, 1)].into();
        let first = batch(&huge);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].seq, 0);
    }
}
