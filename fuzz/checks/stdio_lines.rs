//! stdio_lines: `upstream::stdio::LineFramer`, the framing step of a stdio child's stdout
//! (`child::read_loop` runs it on every read), and the SSE event a line becomes
//! (`upstream::stdio::sse_event`).
//!
//! Invariants: fed in arbitrary pieces it delivers the same lines and counts the same oversized
//! ones as a reference framer written apart (split at LF, drop one CR before it, skip blank
//! lines, skip and count once each line longer than `max_line`); it never holds more than
//! `max_line` bytes between reads. Each line, as the SSE event the gateway sends, is one event
//! whose data is the line (a raw CR, which JSON allows only as whitespace, read as a space).
//!
//! Input: 1 byte line bound selector, piece lengths (`common`), then the stdout bytes.

use arbitrary::Unstructured;
use shardcat::codec::http::ReadBuf;
use shardcat::codec::sse::{self, SseSplitter};
use shardcat::upstream::stdio::{self, Line, LineFramer};

#[path = "common.rs"]
mod common;

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    lines: Vec<Vec<u8>>,
    oversized: usize,
}

fn frame(max: usize, pieces: &[&[u8]]) -> Outcome {
    let mut framer = LineFramer::default();
    let mut rb = ReadBuf::default();
    let mut out = Outcome {
        lines: Vec::new(),
        oversized: 0,
    };
    for piece in pieces {
        let mut v = rb.into_vec();
        v.extend_from_slice(piece);
        rb = ReadBuf::from_vec(v);
        framer.split(&mut rb, max, &mut |line| match line {
            Line::Message(l) => out.lines.push(l.to_vec()),
            Line::Oversized => out.oversized += 1,
        });
        assert!(rb.data().len() <= max, "{} bytes held", rb.data().len());
    }
    out
}

fn reference(max: usize, data: &[u8]) -> Outcome {
    let mut out = Outcome {
        lines: Vec::new(),
        oversized: 0,
    };
    let mut rest = data;
    while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..nl];
        if line.len() > max {
            out.oversized += 1;
        } else {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !line.iter().all(u8::is_ascii_whitespace) {
                out.lines.push(line.to_vec());
            }
        }
        rest = &rest[nl + 1..];
    }
    out
}

pub fn run(input: &[u8]) {
    let mut u = Unstructured::new(input);
    let max = match common::take::<u8>(&mut u) {
        255 => 4 << 20,
        b => 1 + usize::from(b),
    };
    let lens = common::lens_then_data(&mut u);
    // The stream ends with a newline, so that every line is decided.
    let mut data = u.take_rest().to_vec();
    data.push(b'\n');
    let whole = frame(max, &[&data]);
    assert_eq!(
        whole,
        frame(max, &common::pieces(&data, &lens)),
        "depends on the cut"
    );
    assert_eq!(whole, reference(max, &data), "differs from the reference");
    for line in &whole.lines {
        as_event(line);
    }
}

fn as_event(line: &[u8]) {
    let event = stdio::sse_event(line);
    let mut s = SseSplitter::new(event.len() + 1);
    s.push(&event);
    let first = s.next_event().expect("bounded").expect("one whole event");
    assert_eq!(first, event, "the line's event split in two");
    let data = sse::parse_sse_event(&first).data;
    let want: Vec<u8> = line
        .iter()
        .map(|&b| if b == b'\r' { b' ' } else { b })
        .collect();
    assert_eq!(data, want, "the event's data");
}
