//! response_head: `codec::http::parse_response` on what an upstream sends.
//!
//! Invariants: the outcome (need more, too large, rejected, or a head of this length and
//! framing) is the one RFC 9112 gives, recomputed from httparse's fields by an oracle written
//! apart from the codec: a status outside 100..=599 is rejected; no body after HEAD, 1xx, 204 and 304; otherwise the framing fields,
//! and with none the body runs to the close (and the connection cannot be reused). An accepted
//! head lies inside the input, parses the same alone or followed by more bytes, and every
//! shorter prefix asks for more.
//!
//! Input: 2 bytes head-size selector, 1 byte header-count selector, 1 byte flags (bit 0: the
//! request was HEAD), 2 bytes prefix cut, then the head bytes.

use arbitrary::Unstructured;
use shardcat::codec::http::{self, BodyKind, HeadLimits, ResponseHead};

#[path = "common.rs"]
mod common;
#[path = "heads.rs"]
mod heads;

pub fn run(input: &[u8]) {
    let mut u = Unstructured::new(input);
    let limits = heads::limits(common::take(&mut u), common::take(&mut u));
    let was_head = common::take::<u8>(&mut u) & 1 == 1;
    let cut = usize::from(common::take::<u16>(&mut u));
    let data = u.take_rest();
    let got = http::parse_response(data, limits, was_head);
    let class = heads::class(&got.clone().map(|h| h.map(|h| (h.head_len, h.body))));
    assert_eq!(class, expected(data, limits, was_head));
    let Ok(Some(head)) = got else {
        return;
    };
    let len = head.head_len;
    assert!(len <= data.len() && len <= limits.max_head_bytes);
    assert!((100..=599).contains(&head.status), "status {}", head.status);
    let seen = summary(&head);
    let alone = http::parse_response(&data[..len], limits, was_head);
    assert_eq!(
        alone.map(|h| h.map(|h| summary(&h))),
        Ok(Some(seen.clone()))
    );
    let mut more = data[..len].to_vec();
    more.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
    let followed = http::parse_response(&more, limits, was_head);
    assert_eq!(followed.map(|h| h.map(|h| summary(&h))), Ok(Some(seen)));
    for cut in [cut, len - 1] {
        let prefix = &data[..cut.min(len - 1)];
        let early = http::parse_response(prefix, limits, was_head).map(|h| h.is_some());
        assert_eq!(early, Ok(false), "a prefix of {} bytes", prefix.len());
    }
    let fields = heads::fields(&head.headers);
    let persists = heads::keep_alive(&fields, head.minor) && head.body != BodyKind::Close;
    assert_eq!(head.keep_alive, persists);
}

fn expected(data: &[u8], limits: HeadLimits, was_head: bool) -> heads::Class {
    match heads::raw_response(data, limits) {
        heads::Raw::Partial => heads::Class::More,
        heads::Raw::TooLarge => heads::Class::TooLarge,
        heads::Raw::Bad => heads::Class::Rejected,
        heads::Raw::Complete {
            len,
            minor,
            status,
            fields,
        } => {
            if !(100..=599).contains(&status) {
                return heads::Class::Rejected;
            }
            if was_head || status < 200 || status == 204 || status == 304 {
                return heads::Class::Head(len, BodyKind::None);
            }
            match heads::framing(&fields, minor) {
                Ok(kind) => heads::Class::Head(len, kind.unwrap_or(BodyKind::Close)),
                Err(()) => heads::Class::Rejected,
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    status: u16,
    minor: u8,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    body: BodyKind,
    keep_alive: bool,
    head_len: usize,
}

fn summary(h: &ResponseHead) -> Summary {
    Summary {
        status: h.status,
        minor: h.minor,
        fields: heads::fields(&h.headers),
        body: h.body,
        keep_alive: h.keep_alive,
        head_len: h.head_len,
    }
}
