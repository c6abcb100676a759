//! Server-sent events: an incremental parser and a writer.
//!
//! Upstream streams arrive split at arbitrary byte boundaries (mid-line, mid-UTF-8, between
//! `\r` and `\n`). [`SseParser`] keeps only the unfinished line and the event being built, so
//! memory stays bounded by the largest single event, never the whole stream.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// All `data:` lines joined by `\n`.
    pub data: String,
}

/// Why a stream could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A single line grew past the limit: the upstream is broken or hostile.
    #[error("SSE line longer than {0} bytes")]
    LineTooLong(usize),
    /// Bytes that are not UTF-8.
    #[error("SSE stream is not valid UTF-8")]
    InvalidUtf8,
}

/// Largest line accepted (a base64 image in one event can be large; beyond this is abuse).
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Incremental SSE parser (WHATWG event-stream rules, `id`/`retry` ignored).
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    skip_lf: bool,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; complete events are appended to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let mut rest = bytes;
        if self.skip_lf && !rest.is_empty() {
            // A `\r` ended the previous chunk: a `\n` right after it belongs to the same break.
            self.skip_lf = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(pos) = memchr::memchr2(b'\n', b'\r', rest) {
            let (head, tail) = rest.split_at(pos);
            if self.line.is_empty() {
                // The whole line is in this chunk (the usual case): no copy.
                Self::check_len(head.len())?;
                self.process_line(head, out)?;
            } else {
                self.extend_line(head)?;
                // Keep the buffer's capacity for the next split line.
                let line = std::mem::take(&mut self.line);
                let processed = self.process_line(&line, out);
                self.line = line;
                self.line.clear();
                processed?;
            }
            if tail[0] == b'\r' {
                match tail.get(1) {
                    Some(b'\n') => rest = &tail[2..],
                    Some(_) => rest = &tail[1..],
                    None => {
                        self.skip_lf = true;
                        rest = &tail[1..];
                    }
                }
            } else {
                rest = &tail[1..];
            }
        }
        self.extend_line(rest)
    }

    /// Ends the stream: an event left without its blank line is dispatched anyway, since
    /// some servers close right after the last `data:` line.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, out)?;
        }
        self.dispatch(out);
        Ok(())
    }

    fn extend_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        Self::check_len(self.line.len() + bytes.len())?;
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn check_len(len: usize) -> Result<(), SseError> {
        if len > MAX_LINE_BYTES {
            return Err(SseError::LineTooLong(MAX_LINE_BYTES));
        }
        Ok(())
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        let line = std::str::from_utf8(line).map_err(|_| SseError::InvalidUtf8)?;
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take();
        if let Some(data) = self.data.take() {
            out.push(SseEvent { event, data });
        }
    }
}

/// Appends one SSE event (`event:` line optional) to `out`.
pub fn write_event(out: &mut Vec<u8>, event: Option<&str>, data: &str) {
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chunks(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, &mut out).unwrap();
        }
        p.finish(&mut out).unwrap();
        out
    }

    #[test]
    fn parses_events_with_names_and_multiline_data() {
        let s = b"event: ping\ndata: {}\n\n: comment\ndata: a\ndata: b\n\ndata:[DONE]\n\n";
        let events = parse_chunks(&[s]);
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].event.as_deref(), Some("ping"));
        assert_eq!(events[1].data, "a\nb");
        assert_eq!(events[2].data, "[DONE]");
    }

    #[test]
    fn every_split_and_line_ending_gives_the_same_events() {
        let unix = "event: x\ndata: {\"t\":\"héllo\"}\n\ndata: 2\n\n".as_bytes();
        let crlf = "event: x\r\ndata: {\"t\":\"héllo\"}\r\n\r\ndata: 2\r\n\r\n".as_bytes();
        let cr = "event: x\rdata: {\"t\":\"héllo\"}\r\rdata: 2\r\r".as_bytes();
        let expected = parse_chunks(&[unix]);
        assert_eq!(expected.len(), 2);
        for s in [unix, crlf, cr] {
            for i in 0..=s.len() {
                for j in i..=s.len() {
                    let got = parse_chunks(&[&s[..i], &s[i..j], &s[j..]]);
                    assert_eq!(got, expected, "split at {i},{j}");
                }
            }
        }
    }

    #[test]
    fn unterminated_last_event_is_dispatched_at_finish() {
        assert_eq!(parse_chunks(&[b"data: tail"])[0].data, "tail");
    }

    #[test]
    fn writer_round_trips() {
        let mut out = Vec::new();
        write_event(&mut out, Some("message_stop"), "{\"a\":\n1}");
        let events = parse_chunks(&[&out]);
        assert_eq!(events[0].event.as_deref(), Some("message_stop"));
        assert_eq!(events[0].data, "{\"a\":\n1}");
    }

    #[test]
    fn invalid_utf8_is_an_error_not_a_panic() {
        let mut p = SseParser::new();
        assert_eq!(
            p.push(b"data: \xff\n\n", &mut Vec::new()),
            Err(SseError::InvalidUtf8)
        );
    }
}
