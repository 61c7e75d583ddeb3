//! A parser for `text/event-stream` bodies: bytes in, complete events out.
//! Only what the log stream uses: `event`, `id`, `data` fields and comments.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `message` when the server named none.
    pub event: String,
    pub id: Option<String>,
    /// The `data` lines joined with `\n`.
    pub data: String,
}

/// Collects bytes as they arrive; lines are decoded only once complete, so
/// a UTF-8 character split between two network reads is not mangled.
#[derive(Default)]
pub struct SseParser {
    pending: Vec<u8>,
    event: Option<String>,
    id: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Feeds `bytes` and returns every event they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(newline) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + newline;
            let mut line = &self.pending[start..end];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            let line = String::from_utf8_lossy(line).into_owned();
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
            start = end + 1;
        }
        self.pending.drain(..start);
        events
    }

    fn line(&mut self, line: &str) -> Option<Event> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None; // a comment, e.g. a keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "id" => self.id = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            _ => {} // `retry` and unknown fields: not used here
        }
        None
    }

    /// A blank line ends an event; one without data is dropped, as the
    /// SSE specification says.
    fn dispatch(&mut self) -> Option<Event> {
        let event = self.event.take();
        let id = self.id.take();
        let data = self.data.take()?;
        Some(Event {
            event: event.unwrap_or_else(|| "message".to_owned()),
            id,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let body = "event: log\nid: 0\ndata: {\"seq\":0,\"data\":\"h\u{e9}\"}\n\n: keep-alive\n\nevent: end\r\ndata: {\"status\":\"succeeded\"}\r\n\r\n";
        let bytes = body.as_bytes();
        // Every split point, including inside the two-byte é.
        for cut in 0..bytes.len() {
            let mut parser = SseParser::default();
            let mut events = parser.push(&bytes[..cut]);
            events.extend(parser.push(&bytes[cut..]));
            assert_eq!(events.len(), 2, "cut at {cut}: {events:?}");
            assert_eq!(events[0].event, "log");
            assert_eq!(events[0].id.as_deref(), Some("0"));
            assert_eq!(events[0].data, "{\"seq\":0,\"data\":\"h\u{e9}\"}");
            assert_eq!(events[1].event, "end");
            assert_eq!(events[1].id, None);
            assert_eq!(events[1].data, "{\"status\":\"succeeded\"}");
        }
    }

    #[test]
    fn data_lines_join_and_unnamed_events_are_messages() {
        let mut parser = SseParser::default();
        let events = parser.push(b"data: a\ndata:b\ndata\n\nevent: nodata\n\n");
        assert_eq!(
            events,
            vec![Event {
                event: "message".to_owned(),
                id: None,
                data: "a\nb\n".to_owned(),
            }]
        );
    }

    #[test]
    fn an_unfinished_event_is_not_dispatched() {
        let mut parser = SseParser::default();
        assert!(parser.push(b"event: log\ndata: {}\n").is_empty());
        assert_eq!(parser.push(b"\n").len(), 1);
    }
}
