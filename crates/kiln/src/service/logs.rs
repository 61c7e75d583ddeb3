//! `kiln jobs logs`: the stored log of a job, or its live stream.
//!
//! Output: the job's `stdout` and `stderr` chunks go to our stdout exactly as
//! the runner captured them (one stream, in the order they were produced, so
//! `> file` keeps the interleaving); `system` chunks (kiln's own lines about
//! steps, images, the runner) and our notes go to stderr.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use serde::Deserialize;

use super::client::{ApiClient, Unreachable};
use super::sse::{Event, SseParser};

#[derive(Deserialize, Debug)]
struct LogChunk {
    seq: i64,
    stream: String,
    data: String,
}

#[derive(Deserialize)]
struct JobAttempt {
    attempt: i64,
}

#[derive(Deserialize)]
struct AttemptEvent {
    attempt: i64,
}

#[derive(Deserialize)]
struct EndEvent {
    status: String,
}

/// Prints the stored chunks of the job's current attempt.
pub async fn print(client: &ApiClient, id: i64) -> Result<ExitCode> {
    let chunks: Vec<LogChunk> = client.get(&format!("/api/jobs/{id}/logs")).await?;
    for chunk in &chunks {
        if !write_chunk(chunk)? {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Follows the job's log until it finishes: 0 when it succeeded, 1 when it
/// failed or was cancelled. A dropped connection is resumed after the last
/// chunk printed.
pub async fn follow(client: &ApiClient, id: i64) -> Result<ExitCode> {
    let mut state = Follow {
        id,
        attempt: current_attempt(client, id).await?,
        last_seq: None,
    };
    let mut reconnecting = false;
    let mut backoff = Duration::from_millis(200);
    loop {
        if reconnecting {
            // The job may have been requeued while we were away: its seq
            // numbers then start again from 0, and `after` would skip them.
            match current_attempt(client, id).await {
                Ok(attempt) => state.note_attempt(attempt),
                Err(err) if err.is::<Unreachable>() => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(err) => return Err(err),
            }
        }
        let path = match state.last_seq {
            Some(seq) => format!("/api/jobs/{id}/logs?follow=true&after={seq}"),
            None => format!("/api/jobs/{id}/logs?follow=true"),
        };
        let response = match client.get_stream(&path).await {
            Ok(response) => response,
            Err(err) if reconnecting && err.is::<Unreachable>() => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(err) => return Err(err),
        };
        if reconnecting {
            eprintln!("kiln: reconnected");
            backoff = Duration::from_millis(200);
        }
        let mut body = response.bytes_stream();
        let mut parser = SseParser::default();
        while let Some(read) = body.next().await {
            let Ok(bytes) = read else { break };
            for event in parser.push(&bytes) {
                if let Some(code) = state.handle(event)? {
                    return Ok(code);
                }
            }
        }
        eprintln!(
            "kiln: the log stream of job {id} was cut before the job finished; reconnecting to {}",
            client.base()
        );
        reconnecting = true;
    }
}

async fn current_attempt(client: &ApiClient, id: i64) -> Result<i64> {
    let job: JobAttempt = client.get(&format!("/api/jobs/{id}")).await?;
    Ok(job.attempt)
}

struct Follow {
    id: i64,
    attempt: i64,
    /// The last chunk printed of the current attempt.
    last_seq: Option<i64>,
}

impl Follow {
    fn note_attempt(&mut self, attempt: i64) {
        if attempt != self.attempt {
            eprintln!(
                "kiln: job {} was requeued; attempt {attempt} starts over",
                self.id
            );
            self.attempt = attempt;
            self.last_seq = None;
        }
    }

    /// Prints what `event` carries; `Some(code)` once the job has ended.
    fn handle(&mut self, event: Event) -> Result<Option<ExitCode>> {
        match event.event.as_str() {
            "log" => {
                let chunk: LogChunk = serde_json::from_str(&event.data)
                    .with_context(|| format!("a log event of job {} is not a chunk", self.id))?;
                // A resumed stream never repeats a chunk, but be sure.
                if self.last_seq.is_some_and(|last| chunk.seq <= last) {
                    return Ok(None);
                }
                self.last_seq = Some(chunk.seq);
                if !write_chunk(&chunk)? {
                    return Ok(Some(ExitCode::SUCCESS)); // the reader went away
                }
                Ok(None)
            }
            "attempt" => {
                let next: AttemptEvent = serde_json::from_str(&event.data)
                    .with_context(|| format!("an attempt event of job {} is malformed", self.id))?;
                self.note_attempt(next.attempt);
                Ok(None)
            }
            "end" => {
                let end: EndEvent = serde_json::from_str(&event.data)
                    .with_context(|| format!("the end event of job {} is malformed", self.id))?;
                eprintln!("kiln: job {} {}", self.id, end.status);
                Ok(Some(if end.status == "succeeded" {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }))
            }
            _ => Ok(None), // newer servers may send more; nothing to show
        }
    }
}

/// Writes one chunk where it belongs (see the module comment). `false` when
/// stdout is a closed pipe (`| head`): stop quietly.
fn write_chunk(chunk: &LogChunk) -> Result<bool> {
    let written = if chunk.stream == "system" {
        let mut err = std::io::stderr().lock();
        err.write_all(chunk.data.as_bytes()).and_then(|()| {
            if chunk.data.ends_with('\n') {
                Ok(())
            } else {
                err.write_all(b"\n")
            }
        })
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(chunk.data.as_bytes())
            .and_then(|()| out.flush())
    };
    match written {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(err) => Err(err).context("writing the log"),
    }
}
