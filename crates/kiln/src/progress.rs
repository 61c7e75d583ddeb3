//! Renders engine events: a live tree on a terminal, one line per event for
//! CI logs, or JSON lines for machines. Step output is read through
//! [`kiln_engine::Lines`], so every mode shows it in whole lines however the
//! step wrote it.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::ValueEnum;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_engine::{Ending, Engine, Event, Lines, Outcome, StepId, Stream};
use tokio::task::JoinHandle;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// A live tree on a terminal, plain lines otherwise.
    Auto,
    /// A live tree of steps with their state, duration and latest output.
    Tty,
    /// One line per event on stderr, prefixed by step number (for CI logs).
    Plain,
    /// Events as JSON lines on stdout.
    Json,
    /// Nothing.
    Quiet,
}

impl ProgressMode {
    pub fn resolve(self) -> ProgressMode {
        match self {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Tty,
            ProgressMode::Auto => ProgressMode::Plain,
            other => other,
        }
    }
}

pub struct Renderer {
    task: JoinHandle<Vec<CancelledStep>>,
    stop: tokio::sync::oneshot::Sender<()>,
}

/// A step the run's cancellation stopped, for the `result` event.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CancelledStep {
    pub step: StepId,
    pub name: String,
}

impl Renderer {
    /// Stops after drawing the events already emitted (output held for the
    /// end of its line included); returns the steps cancelled, if the
    /// engine was.
    pub async fn finish(self) -> Vec<CancelledStep> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

pub fn spawn(engine: &Engine, mode: ProgressMode, title: &str) -> Renderer {
    let mut events = Lines::new(engine.subscribe());
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let mut sink = Sink::new(mode.resolve(), title);
    let mut steps = Steps::new(engine.clone());
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                Some(event) = events.recv() => {
                    steps.note(&event);
                    sink.render(&event);
                }
                _ = &mut stopped => {
                    for event in events.drain() {
                        steps.note(&event);
                        sink.render(&event);
                    }
                    sink.close();
                    break;
                }
            }
        }
        steps.cancelled()
    });
    Renderer { task, stop }
}

/// Which steps a cancellation stopped: those that ended as cancelled, and
/// those still running at the end of a cancelled run.
struct Steps {
    engine: Engine,
    running: std::collections::BTreeMap<StepId, String>,
    cancelled: Vec<CancelledStep>,
}

impl Steps {
    fn new(engine: Engine) -> Steps {
        Steps {
            engine,
            running: Default::default(),
            cancelled: Vec::new(),
        }
    }

    fn note(&mut self, event: &Event) {
        match event {
            Event::Started { step, name, .. } => {
                self.running.insert(*step, name.clone());
            }
            Event::Finished {
                step,
                name,
                outcome,
                ..
            } => {
                self.running.remove(step);
                let stopped = match outcome {
                    Outcome::Succeeded { .. } => false,
                    Outcome::Failed {
                        ending: Some(ending),
                        ..
                    } => matches!(ending, Ending::Cancelled),
                    // Steps that run no process (a pull, a copy) say no
                    // ending: one failing once the run is cancelled was
                    // stopped by it.
                    Outcome::Failed { ending: None, .. } => self.engine.is_cancelled(),
                };
                if stopped {
                    self.cancelled.push(CancelledStep {
                        step: *step,
                        name: name.clone(),
                    });
                }
            }
            _ => {}
        }
    }

    fn cancelled(mut self) -> Vec<CancelledStep> {
        if !self.engine.is_cancelled() {
            return Vec::new();
        }
        let still = std::mem::take(&mut self.running);
        self.cancelled.extend(
            still
                .into_iter()
                .map(|(step, name)| CancelledStep { step, name }),
        );
        self.cancelled.sort_by_key(|c| c.step);
        self.cancelled
    }
}

enum Sink {
    Quiet,
    Plain,
    Json,
    Tree(Tree),
}

impl Sink {
    fn new(mode: ProgressMode, title: &str) -> Sink {
        match mode {
            ProgressMode::Quiet => Sink::Quiet,
            ProgressMode::Plain | ProgressMode::Auto => Sink::Plain,
            ProgressMode::Json => Sink::Json,
            ProgressMode::Tty => Sink::Tree(Tree::new(title)),
        }
    }

    fn render(&mut self, event: &Event) {
        match self {
            Sink::Quiet => {}
            Sink::Json => {
                if let Ok(line) = serde_json::to_string(event) {
                    let _ = writeln!(std::io::stdout().lock(), "{line}");
                }
            }
            Sink::Plain => plain(event),
            Sink::Tree(tree) => tree.render(event),
        }
    }

    fn close(&mut self) {
        if let Sink::Tree(tree) = self {
            tree.close();
        }
    }
}

fn plain(event: &Event) {
    let mut err = std::io::stderr().lock();
    let _ = match event {
        Event::Output {
            step, stream, data, ..
        } => {
            let tag = match stream {
                Stream::Stdout => "",
                Stream::Stderr => " stderr",
            };
            let text = String::from_utf8_lossy(data);
            // One line per event from `Lines`; split anyway, so no output
            // line is ever printed without its step's prefix.
            let mut result = Ok(());
            for line in text.split_inclusive('\n') {
                let line = line.strip_suffix('\n').unwrap_or(line);
                let line = line.strip_suffix('\r').unwrap_or(line);
                result = writeln!(err, "#{}{tag} | {line}", step.0);
            }
            result
        }
        other => match step_line(other) {
            Some(line) => writeln!(err, "{line}"),
            None => Ok(()),
        },
    };
}

/// The line `--progress plain` prints when a step starts, is cached or
/// ends (`None` for output); `kiln runner` writes the same lines to a job's log.
pub fn step_line(event: &Event) -> Option<String> {
    match event {
        Event::Started { step, name, .. } => Some(format!("#{} {name}", step.0)),
        Event::Cached { step, name, .. } => Some(format!("#{} CACHED {name}", step.0)),
        Event::Output { .. } => None,
        Event::Finished {
            step,
            duration,
            outcome,
            ..
        } => {
            let secs = duration.as_secs_f64();
            Some(match outcome {
                Outcome::Succeeded { .. } => format!("#{} DONE {secs:.2}s", step.0),
                Outcome::Failed { message, .. } => {
                    let first = message.lines().next().unwrap_or("");
                    format!("#{} FAILED {secs:.2}s: {first}", step.0)
                }
            })
        }
    }
}

/// The live view: one line per step under the function being run, each
/// with its state; a running step shows its latest line of output.
struct Tree {
    multi: MultiProgress,
    steps: HashMap<StepId, (ProgressBar, String)>,
}

impl Tree {
    fn new(title: &str) -> Tree {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let root = multi.add(ProgressBar::new_spinner());
        root.set_style(
            ProgressStyle::with_template("{msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        root.finish_with_message(format!("▶ {title}"));
        Tree {
            multi,
            steps: HashMap::new(),
        }
    }

    fn running_style() -> ProgressStyle {
        ProgressStyle::with_template("  ├─ {spinner} {msg} {elapsed:.dim}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
    }

    fn done_style() -> ProgressStyle {
        ProgressStyle::with_template("  ├─ {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
    }

    fn render(&mut self, event: &Event) {
        match event {
            Event::Started { step, name, .. } => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(Self::running_style());
                bar.enable_steady_tick(Duration::from_millis(100));
                bar.set_message(short(name, 70));
                self.steps.insert(*step, (bar, name.clone()));
            }
            Event::Cached { step, name, .. } => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(Self::done_style());
                bar.finish_with_message(format!("⚡ cached  {}", short(name, 70)));
                self.steps.insert(*step, (bar, name.clone()));
            }
            Event::Output { step, data, .. } => {
                if let Some((bar, name)) = self.steps.get(step) {
                    let text = String::from_utf8_lossy(data);
                    if let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty()) {
                        bar.set_message(format!(
                            "{} │ {}",
                            short(name, 50),
                            short(last.trim(), 60)
                        ));
                    }
                }
            }
            Event::Finished {
                step,
                duration,
                outcome,
                ..
            } => {
                if let Some((bar, name)) = self.steps.get(step) {
                    bar.set_style(Self::done_style());
                    let secs = duration.as_secs_f64();
                    let line = match outcome {
                        Outcome::Succeeded { .. } => {
                            format!("✔ done    {} ({secs:.2}s)", short(name, 70))
                        }
                        Outcome::Failed { .. } => {
                            format!("✘ failed  {} ({secs:.2}s)", short(name, 70))
                        }
                    };
                    bar.finish_with_message(line);
                }
            }
        }
    }

    fn close(&mut self) {
        for (bar, _) in self.steps.values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
        let _ = self.multi.clear();
        // Leave the final state on screen as plain lines.
        let mut ids: Vec<_> = self.steps.keys().copied().collect();
        ids.sort();
        let mut err = std::io::stderr().lock();
        for id in ids {
            if let Some((bar, _)) = self.steps.get(&id) {
                let _ = writeln!(err, "  {}", bar.message());
            }
        }
    }
}

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}
