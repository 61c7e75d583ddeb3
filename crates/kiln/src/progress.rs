//! Renders engine events for people (plain lines) and machines (JSON lines).

use std::io::Write;

use clap::ValueEnum;
use kiln_engine::{Engine, Event, Outcome, Stream};
use tokio::task::JoinHandle;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// One line per event on stderr, prefixed by step number.
    Plain,
    /// Events as JSON lines on stderr.
    Json,
    /// Nothing.
    Quiet,
}

pub struct Renderer {
    task: JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Renderer {
    /// Stops after draining the events already emitted.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

pub fn spawn(engine: &Engine, mode: ProgressMode) -> Renderer {
    let mut events = engine.subscribe();
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                Some(event) = events.recv() => render(mode, &event),
                _ = &mut stopped => {
                    while let Ok(event) = events.try_recv() {
                        render(mode, &event);
                    }
                    break;
                }
            }
        }
    });
    Renderer { task, stop }
}

fn render(mode: ProgressMode, event: &Event) {
    let mut err = std::io::stderr().lock();
    match mode {
        ProgressMode::Quiet => {}
        ProgressMode::Json => {
            if let Ok(line) = serde_json::to_string(event) {
                let _ = writeln!(err, "{line}");
            }
        }
        ProgressMode::Plain => {
            let _ = match event {
                Event::Started { step, name, .. } => writeln!(err, "#{} {name}", step.0),
                Event::Cached { step, name, .. } => writeln!(err, "#{} CACHED {name}", step.0),
                Event::Output { step, stream, data } => {
                    let tag = match stream {
                        Stream::Stdout => "",
                        Stream::Stderr => " stderr",
                    };
                    let text = String::from_utf8_lossy(data);
                    let mut result = Ok(());
                    for line in text.lines() {
                        result = writeln!(err, "#{}{tag} | {line}", step.0);
                    }
                    result
                }
                Event::Finished {
                    step,
                    duration,
                    outcome,
                    ..
                } => match outcome {
                    Outcome::Succeeded { .. } => {
                        writeln!(err, "#{} DONE {:.2}s", step.0, duration.as_secs_f64())
                    }
                    Outcome::Failed { message } => {
                        let first = message.lines().next().unwrap_or("");
                        writeln!(
                            err,
                            "#{} FAILED {:.2}s: {first}",
                            step.0,
                            duration.as_secs_f64()
                        )
                    }
                },
            };
        }
    }
}
