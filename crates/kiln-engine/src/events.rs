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

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "outcome")]
pub enum Outcome {
    Succeeded { exit_code: i32 },
    Failed { message: String },
}

/// One thing that happened while solving. Output is already scrubbed of
/// secrets; nothing in an event carries a secret value.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
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
    /// Output of a running step, in the order it was produced.
    Output {
        step: StepId,
        stream: Stream,
        #[serde(serialize_with = "lossy")]
        data: Vec<u8>,
    },
    /// A step ended.
    Finished {
        step: StepId,
        name: String,
        #[serde(serialize_with = "millis")]
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
