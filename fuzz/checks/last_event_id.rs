//! last_event_id: `shard::sse::parse_event_id` and `carried_id` on a client's
//! `Last-Event-ID`.
//!
//! Invariants: `parse_event_id` accepts exactly `<stream>-<seq>` before any `.` (UTF-8,
//! surrounding whitespace trimmed, each part an optional `+` and decimal digits that fit a u32
//! and a u64), checked by a reference parser; whatever it accepts prints back as `stream-seq`
//! and parses to the same. What `carried_id` accepts has a gateway id first, an upstream id
//! of 1 to 255 bytes with no control byte (it becomes a header value), and renames back to
//! an id carrying the same. The id the gateway writes on an event (`shard::sse::rename`, with
//! or without an upstream id) parses to its stream and sequence number, and to what it
//! carries.
//!
//! Input: the header value; its first bytes also make a stream, a sequence number, an
//! incarnation and an upstream id.

use arbitrary::Unstructured;
use shardcat::codec::sse;
use shardcat::shard::sse::{carried_id, parse_event_id, rename, Carried, StreamKind};

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
    let ours = text.split('.').next()?;
    let (stream, seq) = ours.split_once('-')?;
    Some((number(stream)?, number(seq)?))
}

pub fn run(input: &[u8]) {
    let got = parse_event_id(input);
    assert_eq!(got, reference(input));
    if let Some((stream, seq)) = got {
        assert_eq!(parse_event_id(format!("{stream}-{seq}").as_bytes()), got);
    }
    if let Some(c) = carried_id(input) {
        let (stream, seq) = got.expect("a carrying id is a gateway id first");
        assert!((1..=255).contains(&c.upstream_id.len()));
        assert!(c.upstream_id.iter().all(|&b| b >= 0x20 && b != 0x7f));
        let again = renamed_id(stream, seq, Some(c.clone()));
        assert_eq!(carried_id(again.as_bytes()), Some(c));
    }
    let mut u = Unstructured::new(input);
    let (stream, seq): (u32, u64) = (common::take(&mut u), common::take(&mut u));
    let id = renamed_id(stream, seq, None);
    assert_eq!(parse_event_id(id.as_bytes()), Some((stream, seq)));
    assert_eq!(carried_id(id.as_bytes()), None);
    let kind = if common::take::<bool>(&mut u) {
        StreamKind::Get
    } else {
        StreamKind::Post
    };
    let incarnation: u32 = common::take(&mut u);
    let upstream_id: Vec<u8> = u.bytes(u.len().min(300)).unwrap_or_default().to_vec();
    let carried = Carried {
        kind,
        incarnation,
        upstream_id,
    };
    let id = renamed_id(stream, seq, Some(carried.clone()));
    assert_eq!(parse_event_id(id.as_bytes()), Some((stream, seq)), "{id:?}");
    let sendable = (1..=255).contains(&carried.upstream_id.len())
        && carried.upstream_id.iter().all(|&b| b >= 0x20 && b != 0x7f);
    assert_eq!(
        carried_id(id.as_bytes()),
        sendable.then_some(carried),
        "{id:?}"
    );
}

/// The id `rename` gives an event.
fn renamed_id(stream: u32, seq: u64, carried: Option<Carried<Vec<u8>>>) -> String {
    let carried = carried.as_ref().map(|c| Carried {
        kind: c.kind,
        incarnation: c.incarnation,
        upstream_id: c.upstream_id.as_slice(),
    });
    let event = rename(b"data: {}\n\n", stream, seq, carried);
    sse::parse_sse_event(&event)
        .id
        .expect("a renamed event has an id")
}
