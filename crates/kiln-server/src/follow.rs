//! `GET /api/jobs/{id}/logs?follow=true`: a job's log as server-sent events,
//! sent as chunks arrive and closed once the job has finished.
//!
//! Each wake-up (an append, finish, cancel or requeue notifies
//! `job_events`; a timer covers anything missed) reads the job and the chunks
//! after the last one sent, under the store's lock, so status and chunks agree.

use crate::server::{ApiError, AppState};
use crate::store::{JobStatus, LogChunk};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// How long a follower waits without a wake-up before looking anyway.
const FALLBACK_POLL: Duration = Duration::from_secs(1);

/// Starts following the log of job `id` from the chunk after `after` of its
/// current attempt (`-1`: from the start).
pub(crate) async fn follow_logs(
    shared: AppState,
    id: i64,
    after: i64,
) -> Result<Response, ApiError> {
    let job = shared
        .db(move |store| store.job(id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
    let follower = Follower {
        shared,
        id,
        attempt: job.attempt,
        last_sent: after,
        pending: VecDeque::new(),
        done: false,
    };
    let events = futures::stream::unfold(follower, Follower::next_event);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

struct Follower {
    shared: AppState,
    id: i64,
    /// The attempt whose chunks are being sent.
    attempt: i64,
    /// The seq of the last chunk sent; `-1` before the first.
    last_sent: i64,
    /// Events read but not yet handed to the stream.
    pending: VecDeque<Event>,
    /// Nothing follows what is pending.
    done: bool,
}

/// What one look at the job found.
struct Progress {
    status: JobStatus,
    attempt: i64,
    chunks: Vec<LogChunk>,
}

impl Follower {
    async fn next_event(mut self) -> Option<(Result<Event, Infallible>, Follower)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.done {
                return None;
            }
            let shared = Arc::clone(&self.shared);
            // Registered before looking, so an append between the look and
            // the wait still wakes us.
            let woken = shared.job_events.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            self.look().await;
            if self.pending.is_empty() && !self.done {
                tokio::select! {
                    _ = &mut woken => {}
                    _ = tokio::time::sleep(FALLBACK_POLL) => {}
                }
            }
        }
    }

    /// Reads what is new and queues its events.
    async fn look(&mut self) {
        let (id, known_attempt, last_sent) = (self.id, self.attempt, self.last_sent);
        let found = self
            .shared
            .db(move |store| {
                let Some(job) = store.job(id)? else {
                    return Ok(None);
                };
                // A new attempt starts again from seq 0.
                let after = if job.attempt == known_attempt {
                    last_sent
                } else {
                    -1
                };
                let chunks = store.logs_after(id, job.attempt, after)?;
                Ok(Some(Progress {
                    status: job.status,
                    attempt: job.attempt,
                    chunks,
                }))
            })
            .await;
        let progress = match found {
            Ok(Some(progress)) => progress,
            // The job is gone, or the store failed (logged by `db`): nothing
            // more can be sent.
            Ok(None) | Err(_) => {
                self.done = true;
                return;
            }
        };
        if progress.attempt != self.attempt {
            self.attempt = progress.attempt;
            self.last_sent = -1;
            self.pending.push_back(json_event(
                "attempt",
                &serde_json::json!({ "attempt": progress.attempt }),
            ));
        }
        let finished = progress.status.is_finished();
        for chunk in progress.chunks {
            // While the job runs, a chunk after a gap waits for the gap to
            // fill (a runner may send out of order). A finished job gets no
            // more chunks, so then whatever is there is sent.
            if !finished && chunk.seq != self.last_sent + 1 {
                break;
            }
            self.last_sent = chunk.seq;
            self.pending
                .push_back(json_event("log", &chunk).id(chunk.seq.to_string()));
        }
        if finished {
            self.pending.push_back(json_event(
                "end",
                &serde_json::json!({ "status": progress.status }),
            ));
            self.done = true;
        }
    }
}

fn json_event(name: &str, data: &impl serde::Serialize) -> Event {
    match Event::default().event(name).json_data(data) {
        Ok(event) => event,
        Err(err) => {
            // Serializing plain structs does not fail; if it ever does, the
            // event still goes out, without its data.
            tracing::error!(error = %err, event = name, "cannot serialize an event");
            Event::default().event(name)
        }
    }
}
