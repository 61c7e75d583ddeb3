//! Progress events: what front ends render.

use std::time::Duration;

/// Identifies one step within an engine's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct StepId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "outcome")]
pub enum Outcome {
    Succeeded {
        exit_code: i32,
    },
    Failed {
        message: String,
        /// How the step's process ended, for steps that ran one.
        #[serde(skip_serializing_if = "Option::is_none")]
        ending: Option<Ending>,
    },
}

/// How a step's process ended when it failed: the facts failure diagnosis
/// starts from. In JSON, `{"reason": "oom_killed", ...}`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Ending {
    /// The process exited by itself with this code.
    Exited { exit_code: i32 },
    /// The process was killed by this signal, not by kiln.
    Signaled { signal: i32 },
    /// The step reached its memory limit and the kernel's OOM killer killed
    /// a process of it (from the cgroup's OOM event). The process's own
    /// end follows as `exit_code` or `signal`.
    OomKilled {
        memory_limit_bytes: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
    },
    /// The step ran past its timeout and kiln killed it.
    TimedOut { timeout_s: f64 },
    /// The run was cancelled (Ctrl-C, `--timeout`, the server) while the
    /// step ran; kiln killed it.
    Cancelled,
}

/// One thing that happened while solving. Output is already scrubbed of
/// secrets; nothing in an event carries a secret value.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "event")]
pub enum Event {
    /// A step began to run.
    Started {
        step: StepId,
        name: String,
        key: String,
    },
    /// A step's result came from the cache; it did not run.
    Cached {
        step: StepId,
        name: String,
        key: String,
    },
    /// Output of a running step, in the order it was produced; or, with
    /// `replayed`, the kept output of a cached step as it was when the step
    /// ran (right after its [`Event::Cached`]; see
    /// `EngineOptions::replay_cached`).
    Output {
        step: StepId,
        stream: Stream,
        #[serde(serialize_with = "lossy")]
        data: Vec<u8>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        replayed: bool,
    },
    /// A step ended.
    Finished {
        step: StepId,
        name: String,
        /// How long it ran; in JSON `duration_ms`, fractional milliseconds
        /// (a figure's unit is in its name).
        #[serde(rename = "duration_ms", serialize_with = "millis")]
        duration: Duration,
        #[serde(flatten)]
        outcome: Outcome,
    },
}

fn lossy<S: serde::Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(data))
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Output bytes a subscriber may have waiting before steps are held back:
/// a slow terminal or a runner waiting on its server then pauses the step
/// (its pipe fills, as under Docker) instead of the engine buffering
/// output without bound.
pub(crate) const SUBSCRIBER_BACKLOG_BYTES: usize = 8 << 20;

/// The engine's side of one subscription.
pub(crate) struct Subscriber {
    tx: tokio::sync::mpsc::UnboundedSender<Event>,
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Progress events from [`Engine::subscribe`](crate::Engine::subscribe).
/// Dropping it unsubscribes.
pub struct Subscription {
    rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    drained: std::sync::Arc<tokio::sync::Notify>,
}

pub(crate) fn subscription(
    drained: std::sync::Arc<tokio::sync::Notify>,
) -> (Subscriber, Subscription) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    (
        Subscriber {
            tx,
            queued: queued.clone(),
        },
        Subscription {
            rx,
            queued,
            drained,
        },
    )
}

fn output_len(event: &Event) -> usize {
    match event {
        Event::Output { data, .. } => data.len(),
        _ => 0,
    }
}

impl Subscriber {
    /// Sends; false once the subscription is gone.
    pub(crate) fn send(&self, event: &Event) -> bool {
        let len = output_len(event);
        // Counted before sending, so a fast receiver never goes below zero.
        self.queued
            .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
        self.tx.send(event.clone()).is_ok()
    }

    pub(crate) fn backlogged(&self) -> bool {
        !self.tx.is_closed()
            && self.queued.load(std::sync::atomic::Ordering::Relaxed) > SUBSCRIBER_BACKLOG_BYTES
    }
}

impl Subscription {
    pub async fn recv(&mut self) -> Option<Event> {
        let event = self.rx.recv().await?;
        self.received(&event);
        Some(event)
    }

    pub fn try_recv(&mut self) -> Result<Event, tokio::sync::mpsc::error::TryRecvError> {
        let event = self.rx.try_recv()?;
        self.received(&event);
        Ok(event)
    }

    fn received(&self, event: &Event) {
        let len = output_len(event);
        if len == 0 {
            return;
        }
        let before = self
            .queued
            .fetch_sub(len, std::sync::atomic::Ordering::Relaxed);
        if before > SUBSCRIBER_BACKLOG_BYTES {
            self.drained.notify_waiters();
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.rx.close();
        // A step held back for this subscriber must not wait for it.
        self.drained.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_figure_in_an_event_names_its_unit() {
        let finished = Event::Finished {
            step: StepId(3),
            name: "exec make".into(),
            duration: Duration::from_micros(1_500),
            outcome: Outcome::Succeeded { exit_code: 0 },
        };
        let json = serde_json::to_value(&finished).unwrap_or_default();
        assert_eq!(json["duration_ms"], 1.5, "{json}");
        assert!(json.get("duration").is_none(), "{json}");
    }
}
