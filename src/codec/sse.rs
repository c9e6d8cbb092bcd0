//! SSE framing: splitting a byte stream into whole events, and reading an event's fields.
//! No state beyond the bytes of the event in progress.
//!
//! Invariants:
//! - the splitter yields each event as soon as its terminating blank line arrives, so the
//!   relay can flush event by event;
//! - no event longer than `max_event_bytes` is yielded, and the bytes held for an event in
//!   progress are bounded by it.

use bytes::{Bytes, BytesMut};

use super::http::HttpError;

/// Splits an SSE byte stream into whole events (each including its blank-line terminator).
///
/// Bytes of an event still in progress are held until its terminator arrives; the held bytes
/// are bounded by `max_event_bytes`.
#[derive(Debug)]
pub struct SseSplitter {
    pending: BytesMut,
    /// Where the scan for the event's end resumes, and what it had seen there.
    scan: Scan,
    max_event_bytes: usize,
}

/// How far `pending` was already searched for the blank line ending an event.
#[derive(Debug, Clone, Copy, Default)]
struct Scan {
    at: usize,
    /// `pending[at]` comes right after a line terminator.
    after_terminator: bool,
}

impl SseSplitter {
    pub fn new(max_event_bytes: usize) -> SseSplitter {
        SseSplitter {
            pending: BytesMut::new(),
            scan: Scan::default(),
            max_event_bytes,
        }
    }

    /// Adds bytes read from the upstream.
    pub fn push(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
    }

    /// The next complete event, if one is buffered.
    pub fn next_event(&mut self) -> Result<Option<Bytes>, HttpError> {
        match find_event_end(&self.pending, self.scan) {
            // A whole event over the bound is refused as one still in progress would be: which
            // of the two it is depends only on how the upstream's bytes were cut into reads.
            Ok(end) if end > self.max_event_bytes => Err(HttpError::BodyTooLarge),
            Ok(end) => {
                self.scan = Scan::default();
                Ok(Some(self.pending.split_to(end).freeze()))
            }
            Err(scan) => {
                if self.pending.len() > self.max_event_bytes {
                    return Err(HttpError::BodyTooLarge);
                }
                self.scan = scan;
                Ok(None)
            }
        }
    }

    /// Bytes of an unterminated event left when the stream ended.
    pub fn take_rest(&mut self) -> Bytes {
        self.scan = Scan::default();
        self.pending.split().freeze()
    }

    pub fn buffered(&self) -> usize {
        self.pending.len()
    }
}

/// Index one past the blank line ending the first event in `buf`: a line terminator right
/// after another. Lines end in CRLF, LF or CR (WHATWG SSE); a CR at the end of `buf` is not
/// decided yet (an LF may follow), so the scan stops before it. `Err`: where to resume once
/// more bytes arrived.
fn find_event_end(buf: &[u8], mut scan: Scan) -> Result<usize, Scan> {
    while scan.at < buf.len() {
        let len = match (buf[scan.at], buf.get(scan.at + 1)) {
            (b'\n', _) => 1,
            (b'\r', None) => break,
            (b'\r', Some(b'\n')) => 2,
            (b'\r', Some(_)) => 1,
            _ => {
                scan.after_terminator = false;
                scan.at += 1;
                continue;
            }
        };
        if scan.after_terminator {
            return Ok(scan.at + len);
        }
        scan.after_terminator = true;
        scan.at += len;
    }
    Err(scan)
}

/// The lines of an event as `(line, line with its terminator)`; CRLF, LF and CR each end a
/// line (WHATWG SSE), and the last line may have none.
pub fn lines(event: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut rest = event;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (len, end) = match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            None => (rest.len(), rest.len()),
            Some(i) if rest[i..].starts_with(b"\r\n") => (i, i + 2),
            Some(i) => (i, i + 1),
        };
        let (whole, tail) = rest.split_at(end);
        rest = tail;
        Some((&whole[..len], whole))
    })
}

/// The fields of one SSE event that MCP uses.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SseFields {
    /// `data:` lines joined with `\n`.
    pub data: Vec<u8>,
    pub id: Option<String>,
    pub retry_ms: Option<u64>,
}

/// The `(name, value)` fields of one event, comments skipped, without allocating.
pub fn sse_fields(event: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    event
        .split(|&b| b == b'\n' || b == b'\r')
        .filter_map(|line| match line.iter().position(|&b| b == b':') {
            Some(0) => None,
            Some(i) => {
                let v = &line[i + 1..];
                Some((&line[..i], v.strip_prefix(b" ").unwrap_or(v)))
            }
            None if line.is_empty() => None,
            None => Some((line, &b""[..])),
        })
}

/// A `retry:` value: ASCII digits only (WHATWG; `+5` or ` 5` is no delay). An invalid one is
/// ignored, leaving any earlier one in force.
pub fn retry_ms(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Parses one whole event (as `SseSplitter` yields it). Comments and unknown fields are skipped.
pub fn parse_sse_event(event: &[u8]) -> SseFields {
    let mut f = SseFields::default();
    let mut has_data = false;
    for (name, value) in sse_fields(event) {
        match name {
            b"data" => {
                if has_data {
                    f.data.push(b'\n');
                }
                f.data.extend_from_slice(value);
                has_data = true;
            }
            // WHATWG: an id holding NUL is ignored (it could not be sent back in a header).
            b"id" if !value.contains(&0) => {
                f.id = Some(String::from_utf8_lossy(value).into_owned())
            }
            b"retry" => f.retry_ms = retry_ms(value).or(f.retry_ms),
            _ => {}
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_splits_events_with_any_line_ending() {
        let mut s = SseSplitter::new(1024);
        let f = parse_sse_event(
            b"event: message\nid: 7\nretry: 250\n: note\ndata: {\"a\":\ndata:1}\n\n",
        );
        assert_eq!(f.data, b"{\"a\":\n1}");
        assert_eq!((f.id.as_deref(), f.retry_ms), (Some("7"), Some(250)));
        assert_eq!(parse_sse_event(b"id: 1\ndata:\n\n").data, b"");
        s.push(b"data: a\n\ndata: b\r\n\r\ndata: c\r\rdata: d");
        assert_eq!(&s.next_event().unwrap().unwrap()[..], b"data: a\n\n");
        assert_eq!(&s.next_event().unwrap().unwrap()[..], b"data: b\r\n\r\n");
        assert_eq!(&s.next_event().unwrap().unwrap()[..], b"data: c\r\r");
        assert!(s.next_event().unwrap().is_none());
        s.push(b"\n");
        assert!(s.next_event().unwrap().is_none());
        s.push(b"\n");
        assert_eq!(&s.next_event().unwrap().unwrap()[..], b"data: d\n\n");
    }

    #[test]
    fn sse_mixed_line_endings_end_an_event_once() {
        // CRLF then LF is a blank line; LF then CR waits for the byte after the CR.
        let mut s = SseSplitter::new(1024);
        s.push(b"data: a\r\n\ndata: b\n\r");
        assert_eq!(&s.next_event().unwrap().unwrap()[..], b"data: a\r\n\n");
        assert!(s.next_event().unwrap().is_none());
        s.push(b"\ndata: c\n\n");
        assert_eq!(&s.next_event().unwrap().unwrap()[..], b"data: b\n\r\n");
        assert_eq!(&s.next_event().unwrap().unwrap()[..], b"data: c\n\n");
    }

    #[test]
    fn sse_byte_by_byte() {
        let stream = b"id: 1\r\ndata: x\r\n\r\n: keepalive\n\nevent: m\ndata: y\n\n";
        let mut s = SseSplitter::new(1024);
        let mut events = Vec::new();
        for b in stream {
            s.push(&[*b]);
            while let Some(e) = s.next_event().unwrap() {
                events.push(e);
            }
        }
        assert_eq!(events.len(), 3);
        assert_eq!(events.concat(), stream.to_vec());
    }

    #[test]
    fn sse_event_bound() {
        let mut s = SseSplitter::new(8);
        s.push(b"data: 0123456789");
        assert_eq!(s.next_event().unwrap_err(), HttpError::BodyTooLarge);
        // Whole in one read, too.
        let mut s = SseSplitter::new(8);
        s.push(b"data: 0123456789\n\n");
        assert_eq!(s.next_event().unwrap_err(), HttpError::BodyTooLarge);
    }
}
