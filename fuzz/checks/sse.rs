//! sse: `codec::sse::SseSplitter` on an upstream's event stream, `sse_fields` and
//! `parse_sse_event` on each event, and `shard::sse::rename` (the gateway's own event ids).
//!
//! Invariants: fed in arbitrary pieces the splitter yields the same events, fails the same
//! way and keeps the same unterminated rest as fed whole, and never holds more than
//! `max_event_bytes` between calls; the events are those of a reference splitter written
//! apart (an event ends at a line terminator right after another; CRLF, LF and CR all end a
//! line, and a CR at the end of the bytes so far waits, since an LF may follow); no event is
//! longer than `max_event_bytes`. Each event's fields are those of the WHATWG rules (checked
//! by a reference parser); renamed, an event keeps its data and `retry` and carries exactly
//! the gateway's id.
//!
//! Input: 1 byte event bound selector, piece lengths (`common`), then the stream bytes.

use arbitrary::Unstructured;
use shardcat::codec::sse::{self, SseFields, SseSplitter};

#[path = "common.rs"]
mod common;

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Vec<u8>>,
    /// The splitter refused an event over the bound.
    failed: bool,
    /// The unterminated rest when the stream ends (none after a failure).
    rest: Vec<u8>,
}

fn split(max: usize, pieces: &[&[u8]]) -> Outcome {
    let mut s = SseSplitter::new(max);
    let mut events = Vec::new();
    for piece in pieces {
        s.push(piece);
        loop {
            match s.next_event() {
                Ok(Some(e)) => events.push(e.to_vec()),
                Ok(None) => break,
                Err(_) => {
                    return Outcome {
                        events,
                        failed: true,
                        rest: Vec::new(),
                    }
                }
            }
        }
        assert!(s.buffered() <= max, "{} bytes held", s.buffered());
    }
    let rest = s.take_rest().to_vec();
    Outcome {
        events,
        failed: false,
        rest,
    }
}

/// A line terminator at `buf[i]`: its length, `None` when it is not one, `Some(0)` when it is
/// a CR at the end of `buf` (undecided).
fn terminator(buf: &[u8], i: usize) -> Option<usize> {
    match (buf[i], buf.get(i + 1)) {
        (b'\n', _) => Some(1),
        (b'\r', None) => Some(0),
        (b'\r', Some(b'\n')) => Some(2),
        (b'\r', Some(_)) => Some(1),
        _ => None,
    }
}

/// Where the reference splitter ends the first event of `buf`.
fn reference_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    let mut after_terminator = false;
    while i < buf.len() {
        match terminator(buf, i) {
            None => {
                after_terminator = false;
                i += 1;
            }
            Some(0) => return None,
            Some(n) if after_terminator => return Some(i + n),
            Some(n) => {
                after_terminator = true;
                i += n;
            }
        }
    }
    None
}

fn reference(max: usize, data: &[u8]) -> Outcome {
    let mut events = Vec::new();
    let mut rest = data;
    while let Some(end) = reference_end(rest) {
        if end > max {
            return Outcome {
                events,
                failed: true,
                rest: Vec::new(),
            };
        }
        events.push(rest[..end].to_vec());
        rest = &rest[end..];
    }
    Outcome {
        events,
        failed: rest.len() > max,
        rest: if rest.len() > max {
            Vec::new()
        } else {
            rest.to_vec()
        },
    }
}

/// The lines of an event, terminators removed (CRLF, LF or CR; a final CR ends a line too).
fn lines(event: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < event.len() {
        match terminator(event, i) {
            None => i += 1,
            Some(n) => {
                out.push(&event[start..i]);
                i += n.max(1);
                start = i;
            }
        }
    }
    if start < event.len() {
        out.push(&event[start..]);
    }
    out
}

/// WHATWG "interpret an event stream", for the fields MCP uses: `data` lines joined with LF,
/// the last `id` without NUL, the last `retry` of ASCII digits only.
fn reference_fields(event: &[u8]) -> SseFields {
    let mut f = SseFields::default();
    let mut has_data = false;
    for line in lines(event) {
        if line.is_empty() || line[0] == b':' {
            continue;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                if has_data {
                    f.data.push(b'\n');
                }
                f.data.extend_from_slice(value);
                has_data = true;
            }
            b"id" if !value.contains(&0) => {
                f.id = Some(String::from_utf8_lossy(value).into_owned());
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                if let Ok(ms) = std::str::from_utf8(value).unwrap_or("").parse() {
                    f.retry_ms = Some(ms);
                }
            }
            _ => {}
        }
    }
    f
}

pub fn run(input: &[u8]) {
    let mut u = Unstructured::new(input);
    let max = match common::take::<u8>(&mut u) {
        255 => 1 << 20,
        b => 1 + 8 * usize::from(b),
    };
    let lens = common::lens_then_data(&mut u);
    let data = u.take_rest();
    let whole = split(max, &[data]);
    let cut = split(max, &common::pieces(data, &lens));
    assert_eq!(whole, cut, "splitting depends on how the stream was cut");
    assert_eq!(
        whole,
        reference(max, data),
        "splitting differs from the reference"
    );
    for event in &whole.events {
        check_event(event);
    }
    if !whole.rest.is_empty() {
        check_event(&whole.rest);
    }
}

fn check_event(event: &[u8]) {
    for (name, _) in sse::sse_fields(event) {
        assert!(!name.is_empty() && !name.contains(&b':'));
        assert!(!name.iter().any(|&b| b == b'\r' || b == b'\n'));
    }
    let fields = sse::parse_sse_event(event);
    assert_eq!(fields, reference_fields(event), "fields of {event:?}");
    let (stream, seq) = (u32::MAX, u64::MAX);
    let renamed = shardcat::shard::sse::rename(event, stream, seq, None);
    let again = sse::parse_sse_event(&renamed);
    assert_eq!(
        again.id,
        Some(format!("{stream}-{seq}")),
        "renamed {renamed:?}"
    );
    assert_eq!((again.data, again.retry_ms), (fields.data, fields.retry_ms));
}
