//! last_event_id: `shard::sse::parse_event_id` on a client's `Last-Event-ID`.
//!
//! Invariants: it accepts exactly `<stream>-<seq>` (UTF-8, surrounding whitespace trimmed,
//! each part an optional `+` and decimal digits that fit a u32 and a u64), checked by a
//! reference parser; whatever it accepts prints back as `stream-seq` and parses to the same;
//! the id the gateway writes on an event (`shard::sse::rename`) parses to its stream and
//! sequence number.
//!
//! Input: the header value; its first 12 bytes also make a stream and sequence number.

use arbitrary::Unstructured;
use shardcat::codec::sse;
use shardcat::shard::sse::{parse_event_id, rename};

#[path = "common.rs"]
mod common;

fn number<T: std::str::FromStr>(s: &str) -> Option<T> {
    let digits = s.strip_prefix('+').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn reference(raw: &[u8]) -> Option<(u32, u64)> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    let (stream, seq) = text.split_once('-')?;
    Some((number(stream)?, number(seq)?))
}

pub fn run(input: &[u8]) {
    let got = parse_event_id(input);
    assert_eq!(got, reference(input));
    if let Some((stream, seq)) = got {
        assert_eq!(parse_event_id(format!("{stream}-{seq}").as_bytes()), got);
    }
    let mut u = Unstructured::new(input);
    let (stream, seq): (u32, u64) = (common::take(&mut u), common::take(&mut u));
    let event = rename(b"data: {}\n\n", stream, seq);
    let id = sse::parse_sse_event(&event)
        .id
        .expect("a renamed event has an id");
    assert_eq!(parse_event_id(id.as_bytes()), Some((stream, seq)));
}
