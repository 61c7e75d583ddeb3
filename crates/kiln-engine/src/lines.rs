//! Step output as people read it: whole lines.
//!
//! A step's output reaches [`Event::Output`] in whatever pieces the pipe
//! gave the engine, so one line may come in several events (`npm`, then
//! ` ERR! code EUSAGE`) and one event may hold many lines. Front ends that
//! show output line by line (`--progress plain`, the `--json` events, a
//! runner's job log) read events through [`Lines`] instead, which re-cuts
//! each step's output, per stream, into events of one line each:
//!
//! - a line is sent once its `\n` arrives, newline included;
//! - a line that has waited [`LINE_WAIT`] for its end (a prompt, a progress
//!   bar, `printf` without a newline) is sent as it is, and the rest of it
//!   follows in the next event of that stream;
//! - a line longer than [`LINE_CAP`] bytes is sent in pieces of that size;
//! - what is held of a step is sent before its [`Event::Finished`], and
//!   everything held when the subscription ends.
//!
//! Nothing is dropped or changed: the `data` of a stream's events,
//! concatenated, are exactly the bytes the engine emitted. A piece cut by
//! the wait or the cap ends on a whole UTF-8 character where there is one,
//! so text shown lossily never gets a replacement character the step did
//! not print.
//!
//! Joining chunks cannot undo secret masking: each step's stream is
//! scrubbed by one [`kiln_scrub::StreamRedactor`] before it becomes events,
//! and what such a redactor emits, concatenated, is the whole stream
//! redacted at once (it holds back any tail that could begin a secret until
//! it knows). Lines only ever join consecutive chunks of one step's stream,
//! in order, so every line is a piece of that one-shot redaction.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::events::{Event, StepId, Stream, Subscription};

/// How long the start of a line waits for its end before it is shown
/// without it. Long enough that a line written in several writes a moment
/// apart stays one line; short enough that a prompt or a progress bar
/// still shows within a second.
pub const LINE_WAIT: Duration = Duration::from_secs(1);

/// The most bytes of a line one event carries (its `\n` not counted):
/// output without newlines (a minified file, a binary) is shown in pieces
/// instead of being held without bound.
pub const LINE_CAP: usize = 16 << 10;

/// Re-cuts output events into lines; the clock is the caller's, so it can
/// be driven in tests and by [`Lines`].
pub struct LineAssembler {
    wait: Duration,
    cap: usize,
    /// Whole lines that arrive together go out as one event.
    join: bool,
    /// The unfinished line of each step's stream, oldest first.
    held: Vec<Held>,
}

struct Held {
    step: StepId,
    stream: Stream,
    replayed: bool,
    data: Vec<u8>,
    /// When the oldest byte held arrived; `None` when only the start of a
    /// UTF-8 character is held, which waits for the rest of it or the end.
    since: Option<Instant>,
}

impl Held {
    fn event(&self, data: Vec<u8>) -> Event {
        Event::Output {
            step: self.step,
            stream: self.stream,
            data,
            replayed: self.replayed,
        }
    }
}

impl Default for LineAssembler {
    fn default() -> Self {
        LineAssembler::new(LINE_WAIT, LINE_CAP)
    }
}

impl LineAssembler {
    /// A cap below 4 bytes is taken as 4, so a cut can always keep a UTF-8
    /// character whole.
    pub fn new(wait: Duration, cap: usize) -> LineAssembler {
        LineAssembler {
            wait,
            cap: cap.max(4),
            join: false,
            held: Vec::new(),
        }
    }

    /// Lines that arrive in one event leave in one event (still cut at
    /// the wait and the cap), for consumers that store output rather than
    /// show it line by line: a job log stays in pieces ending at line ends
    /// without costing a stored chunk per line.
    pub fn joined(self) -> LineAssembler {
        LineAssembler { join: true, ..self }
    }

    /// Takes the next event, received at `now`; returns what is ready to
    /// show, in order: partial lines whose wait is over, then whole lines of
    /// this event (or, for any event but output, the event itself).
    pub fn push(&mut self, event: Event, now: Instant) -> Vec<Event> {
        // Checked on every event, not only when a timer fires: a busy
        // stream of other events must not hold a quiet step's line back.
        let mut out = self.flush_due(now);
        match event {
            Event::Output {
                step,
                stream,
                data,
                replayed,
            } => {
                let at = match self
                    .held
                    .iter()
                    .position(|h| h.step == step && h.stream == stream)
                {
                    Some(at) => at,
                    None => {
                        self.held.push(Held {
                            step,
                            stream,
                            replayed,
                            data: Vec::new(),
                            since: None,
                        });
                        self.held.len() - 1
                    }
                };
                let held = &mut self.held[at];
                held.data.extend_from_slice(&data);
                let lines = take_lines(&mut held.data, self.cap);
                if !lines.is_empty() || held.since.is_none() {
                    // What is left came with this event.
                    held.since = Some(now);
                }
                if self.join && !lines.is_empty() {
                    out.push(held.event(lines.concat()));
                } else {
                    out.extend(lines.into_iter().map(|line| held.event(line)));
                }
                if held.data.is_empty() {
                    self.held.remove(at);
                }
            }
            Event::Finished { step, .. } => {
                // The engine emits all of a step's output before its end.
                out.extend(self.flush(|h| h.step == step));
                out.push(event);
            }
            other => out.push(other),
        }
        out
    }

    /// When the next held line's wait is over, if any line is held.
    pub fn deadline(&self) -> Option<Instant> {
        self.held
            .iter()
            .filter_map(|h| h.since)
            .min()
            .map(|since| since + self.wait)
    }

    /// The lines that have waited their time, as they are (but for the start
    /// of a UTF-8 character at their end, which stays for the rest of it).
    pub fn flush_due(&mut self, now: Instant) -> Vec<Event> {
        let mut out = Vec::new();
        let wait = self.wait;
        self.held.retain_mut(|h| {
            if h.since.is_none_or(|since| now < since + wait) {
                return true;
            }
            let whole = complete_utf8_len(&h.data);
            if whole > 0 {
                let rest = h.data.split_off(whole);
                let line = std::mem::replace(&mut h.data, rest);
                out.push(h.event(line));
            }
            h.since = None;
            !h.data.is_empty()
        });
        out
    }

    /// Everything held, for the end of the stream.
    pub fn flush_all(&mut self) -> Vec<Event> {
        self.flush(|_| true)
    }

    fn flush(&mut self, which: impl Fn(&Held) -> bool) -> Vec<Event> {
        let mut out = Vec::new();
        self.held.retain_mut(|h| {
            if !which(h) {
                return true;
            }
            let data = std::mem::take(&mut h.data);
            out.push(h.event(data));
            false
        });
        out
    }
}

/// Cuts the whole lines, and `cap`-byte pieces of a longer line, off the
/// front of `data`.
fn take_lines(data: &mut Vec<u8>, cap: usize) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let mut start = 0;
    loop {
        let rest = &data[start..];
        // A line of exactly `cap` bytes keeps its newline.
        let window = &rest[..rest.len().min(cap.saturating_add(1))];
        let end = match window.iter().position(|&b| b == b'\n') {
            Some(newline) => newline + 1,
            None if rest.len() > cap => match complete_utf8_len(&rest[..cap]) {
                0 => cap,
                whole => whole,
            },
            None => break,
        };
        lines.push(rest[..end].to_vec());
        start += end;
    }
    data.drain(..start);
    lines
}

/// How much of `bytes` is not an unfinished UTF-8 sequence at its end.
/// Invalid bytes elsewhere count as complete (they are shown as U+FFFD).
fn complete_utf8_len(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let at = bytes.len() - back;
        let byte = bytes[at];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: look further back
        }
        let needs = match byte {
            0xF0..=0xF7 => 4,
            0xE0..=0xEF => 3,
            0xC0..=0xDF => 2,
            _ => 1,
        };
        return if needs > back { at } else { bytes.len() };
    }
    bytes.len()
}

/// A [`Subscription`] whose output events are whole lines (see the module
/// docs). Other events pass through in order, a step's held output going
/// out before its [`Event::Finished`].
pub struct Lines {
    events: Subscription,
    assembler: LineAssembler,
    ready: VecDeque<Event>,
    closed: bool,
}

impl Lines {
    /// One line to an event.
    pub fn new(events: Subscription) -> Lines {
        Lines::with_assembler(events, LineAssembler::default())
    }

    /// Whole lines, several to an event when they came together (see
    /// [`LineAssembler::joined`]).
    pub fn joined(events: Subscription) -> Lines {
        Lines::with_assembler(events, LineAssembler::default().joined())
    }

    pub fn with_assembler(events: Subscription, assembler: LineAssembler) -> Lines {
        Lines {
            events,
            assembler,
            ready: VecDeque::new(),
            closed: false,
        }
    }

    /// The next event; `None` once the engine is gone and everything held
    /// has been sent. Cancel-safe: an event taken from the subscription is
    /// kept here until returned, so it may be raced in `select!`.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            if self.closed {
                return None;
            }
            let deadline = self.assembler.deadline();
            tokio::select! {
                biased;
                event = self.events.recv() => match event {
                    Some(event) => {
                        let ready = self.assembler.push(event, Instant::now());
                        self.ready.extend(ready);
                    }
                    None => {
                        self.closed = true;
                        self.ready.extend(self.assembler.flush_all());
                    }
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)),
                    if deadline.is_some() =>
                {
                    let ready = self.assembler.flush_due(Instant::now());
                    self.ready.extend(ready);
                }
            }
        }
    }

    /// What is left at the end of a run: the events emitted and not yet
    /// received, then every line still held, without waiting.
    pub fn drain(&mut self) -> Vec<Event> {
        let mut out: Vec<Event> = self.ready.drain(..).collect();
        while let Ok(event) = self.events.try_recv() {
            out.extend(self.assembler.push(event, Instant::now()));
        }
        out.extend(self.assembler.flush_all());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(200);

    fn output(step: u64, stream: Stream, data: &[u8]) -> Event {
        Event::Output {
            step: StepId(step),
            stream,
            data: data.to_vec(),
            replayed: false,
        }
    }

    fn out(data: &[u8]) -> Event {
        output(1, Stream::Stdout, data)
    }

    fn datas(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Output { data, .. } => String::from_utf8_lossy(data).into_owned(),
                other => format!("<{other:?}>"),
            })
            .collect()
    }

    fn finished(step: u64) -> Event {
        Event::Finished {
            step: StepId(step),
            name: "exec".into(),
            duration: Duration::from_millis(5),
            outcome: crate::Outcome::Succeeded { exit_code: 0 },
        }
    }

    #[test]
    fn a_line_written_in_pieces_is_one_event_and_chunks_are_cut_at_newlines() {
        let t = Instant::now();
        let mut lines = LineAssembler::new(WAIT, 64);
        assert!(lines.push(out(b"npm"), t).is_empty());
        assert_eq!(lines.deadline(), Some(t + WAIT));
        let got = lines.push(out(b" ERR! code EUSAGE\nnpm ERR! "), t + WAIT / 2);
        assert_eq!(datas(&got), ["npm ERR! code EUSAGE\n"]);
        // The rest came with the second chunk: its wait starts there.
        assert_eq!(lines.deadline(), Some(t + WAIT / 2 + WAIT));
        let got = lines.push(out(b"usage\n\nlast\n"), t + WAIT);
        assert_eq!(datas(&got), ["npm ERR! usage\n", "\n", "last\n"]);
        assert_eq!(lines.deadline(), None);
    }

    #[test]
    fn an_unfinished_character_at_the_end_is_found() {
        let euro = "€".as_bytes(); // three bytes
        assert_eq!(complete_utf8_len(b"ab"), 2);
        assert_eq!(complete_utf8_len(&[b'a', euro[0]]), 1);
        assert_eq!(complete_utf8_len(&[b'a', euro[0], euro[1]]), 1);
        assert_eq!(complete_utf8_len(&[b'a', euro[0], euro[1], euro[2]]), 4);
        assert_eq!(complete_utf8_len(&[b'a', 0xff]), 2);
        assert_eq!(complete_utf8_len(&[0x80, 0x80, 0x80, 0x80]), 4);
        assert_eq!(complete_utf8_len(&[]), 0);
    }

    #[test]
    fn joined_lines_that_came_together_leave_together() {
        let t = Instant::now();
        let mut lines = LineAssembler::new(WAIT, 8).joined();
        assert!(lines.push(out(b"np"), t).is_empty());
        let got = lines.push(out(b"m ERR!\nsecond\nthi"), t);
        assert_eq!(datas(&got), ["npm ERR!\nsecond\n"]);
        let got = lines.push(out(b"rd\n0123456789"), t);
        assert_eq!(datas(&got), ["third\n01234567"]);
        assert_eq!(datas(&lines.flush_all()), ["89"]);
    }

    #[test]
    fn a_line_that_waits_too_long_is_shown_without_its_end_and_continues() {
        let t = Instant::now();
        let mut lines = LineAssembler::new(WAIT, 64);
        assert!(lines.push(out(b"Downloading"), t).is_empty());
        // More of the same line does not restart the wait.
        assert!(lines.push(out(b"..."), t + WAIT / 2).is_empty());
        assert!(lines.flush_due(t + WAIT / 2).is_empty());
        assert_eq!(datas(&lines.flush_due(t + WAIT)), ["Downloading..."]);
        assert_eq!(lines.deadline(), None);
        let got = lines.push(out(b" done\n"), t + WAIT * 5);
        assert_eq!(datas(&got), [" done\n"]);
    }

    #[test]
    fn a_due_line_goes_out_with_the_next_event_of_any_step() {
        let t = Instant::now();
        let mut lines = LineAssembler::new(WAIT, 64);
        assert!(lines.push(out(b"quiet"), t).is_empty());
        let got = lines.push(output(2, Stream::Stdout, b"busy\n"), t + WAIT);
        assert_eq!(datas(&got), ["quiet", "busy\n"]);
    }

    #[test]
    fn a_long_line_is_cut_at_the_cap_on_a_character_boundary() {
        let t = Instant::now();
        let mut lines = LineAssembler::new(WAIT, 8);
        let got = lines.push(out(b"0123456789abcdefghij\n"), t);
        assert_eq!(datas(&got), ["01234567", "89abcdef", "ghij\n"]);
        // Exactly the cap, then its newline: one line.
        let got = lines.push(out(b"01234567\n"), t);
        assert_eq!(datas(&got), ["01234567\n"]);
        // "€" is three bytes: the cap falls inside the second one.
        let got = lines.push(out("abc€€€".as_bytes()), t);
        assert_eq!(datas(&got), ["abc€"]);
        assert_eq!(datas(&lines.flush_all()), ["€€"]);
        // No cap at all is a cap too, not an overflow.
        let mut uncapped = LineAssembler::new(WAIT, usize::MAX);
        assert_eq!(datas(&uncapped.push(out(b"a\nb"), t)), ["a\n"]);
    }

    #[test]
    fn a_waited_out_line_keeps_a_split_character_for_its_rest() {
        let t = Instant::now();
        let mut lines = LineAssembler::new(WAIT, 64);
        let euro = "€".as_bytes();
        assert!(lines.push(out(&[b'a', euro[0]]), t).is_empty());
        assert_eq!(datas(&lines.flush_due(t + WAIT)), ["a"]);
        // Only the character's start is held: it waits for no timer.
        assert_eq!(lines.deadline(), None);
        let got = lines.push(out(&[euro[1], euro[2], b'\n']), t + WAIT * 9);
        assert_eq!(datas(&got), ["€\n"]);
    }

    #[test]
    fn streams_and_steps_are_kept_apart_and_a_step_is_flushed_before_its_end() {
        let t = Instant::now();
        let mut lines = LineAssembler::new(WAIT, 64);
        assert!(lines.push(out(b"out "), t).is_empty());
        assert!(lines.push(output(1, Stream::Stderr, b"err "), t).is_empty());
        assert!(lines
            .push(output(2, Stream::Stdout, b"other "), t)
            .is_empty());
        let got = lines.push(finished(1), t);
        assert_eq!(datas(&got)[..2], ["out ", "err "]);
        assert!(matches!(got[2], Event::Finished { .. }));
        assert!(matches!(
            got[1],
            Event::Output {
                stream: Stream::Stderr,
                ..
            }
        ));
        let got = lines.push(output(2, Stream::Stdout, b"line\n"), t);
        assert_eq!(datas(&got), ["other line\n"]);
    }

    #[test]
    fn no_byte_is_lost_or_changed_whatever_the_chunks() {
        let text: Vec<u8> = (0..5000u32)
            .flat_map(|i| match i % 7 {
                0 => b"\n".to_vec(),
                1 => "€".as_bytes().to_vec(),
                2 => vec![0xff],
                _ => format!("{i}").into_bytes(),
            })
            .collect();
        for size in [1, 2, 3, 5, 64, 1000] {
            let t = Instant::now();
            let mut lines = LineAssembler::new(WAIT, 16);
            let mut events = Vec::new();
            for (i, chunk) in text.chunks(size).enumerate() {
                // Some chunks arrive after the wait.
                events.extend(lines.push(out(chunk), t + WAIT * (i as u32 / 3)));
            }
            events.extend(lines.flush_all());
            let mut joined = Vec::new();
            for event in &events {
                let Event::Output { data, .. } = event else {
                    panic!("{event:?}")
                };
                assert!(data.len() <= 17, "chunk size {size}: {} bytes", data.len());
                assert!(!data.is_empty());
                joined.extend_from_slice(data);
            }
            assert_eq!(joined, text, "chunk size {size}");
        }
    }

    #[test]
    fn joining_scrubbed_chunks_never_rebuilds_a_secret() {
        let secret = "s3cr3t-t0ken-value";
        let redactor = kiln_scrub::Redactor::new([secret]);
        let text = format!("token={secret}\nagain {secret} end\n");
        // The secret split at every place, as a pipe might split it.
        for cut in 1..text.len() {
            let mut scrub = redactor.stream();
            let mut lines = LineAssembler::new(WAIT, 8);
            let t = Instant::now();
            let mut events = lines.push(out(&scrub.push(&text.as_bytes()[..cut])), t);
            events.extend(lines.push(out(&scrub.push(&text.as_bytes()[cut..])), t));
            events.extend(lines.push(out(&scrub.finish()), t));
            events.extend(lines.flush_all());
            let shown = datas(&events).concat();
            assert_eq!(shown, "token=***\nagain *** end\n", "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn lines_sends_a_partial_line_after_the_wait_and_the_rest_at_the_end() {
        let drained = std::sync::Arc::new(tokio::sync::Notify::new());
        let (tx, rx) = crate::events::subscription(drained);
        let mut lines = Lines::with_assembler(rx, LineAssembler::new(WAIT, 64));
        assert!(tx.send(&out(b"one\ntw")));
        let first = lines.recv().await;
        assert_eq!(datas(&[first.unwrap()]), ["one\n"]);
        let started = Instant::now();
        let second = tokio::time::timeout(WAIT * 10, lines.recv()).await;
        let second = second.expect("the partial line was never sent");
        assert!(started.elapsed() >= WAIT / 2, "{:?}", started.elapsed());
        assert_eq!(datas(&[second.unwrap()]), ["tw"]);
        assert!(tx.send(&out(b"o")));
        assert!(tx.send(&finished(1)));
        assert!(tx.send(&out(b"three")));
        let got: Vec<Event> = [lines.recv().await.unwrap(), lines.recv().await.unwrap()].into();
        assert_eq!(datas(&got[..1]), ["o"]);
        assert!(matches!(got[1], Event::Finished { .. }));
        assert_eq!(datas(&lines.drain()), ["three"]);
    }
}
