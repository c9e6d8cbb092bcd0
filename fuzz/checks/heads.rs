//! What the head checks share: limits in the range the config accepts, and RFC 9112 framing
//! and persistence recomputed from the raw fields (an oracle written apart from the codec).
#![allow(dead_code)]

use shardcat::codec::http::{BodyKind, HeadLimits, Headers, HttpError};

/// Head limits as `config::validate_limits` allows them: 512..=65535 bytes, 8..=128 fields.
/// Half the selectors land below 2 KiB, where fuzz inputs can reach the bound.
pub fn limits(size: u16, count: u8) -> HeadLimits {
    let size = usize::from(size);
    HeadLimits {
        max_head_bytes: if size & 1 == 0 {
            512 + (size >> 1) % 1536
        } else {
            size.max(512)
        },
        max_headers: if count >= 121 {
            128
        } else {
            8 + usize::from(count)
        },
    }
}

/// The fields as owned pairs, in order.
pub fn fields(h: &Headers) -> Vec<(Vec<u8>, Vec<u8>)> {
    h.iter_raw()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect()
}

/// RFC 9110 token characters (field names).
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b' ' && b != b'\t');
    let end = s.iter().rposition(|&b| b != b' ' && b != b'\t');
    match (start, end) {
        (Some(a), Some(b)) => &s[a..=b],
        _ => &[],
    }
}

/// The comma-separated list elements of every field named `name`, trimmed, empty ones left out.
fn list<'a>(fields: &'a [(Vec<u8>, Vec<u8>)], name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    fields
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .map(trim_ows)
}

/// RFC 9112 §6.1–6.3: `Err` for framing a recipient must reject, `Ok(None)` for no framing
/// field. Content-Length: digits only (at most 18), all values equal. Transfer-Encoding: not
/// in HTTP/1.0, never with Content-Length, and `chunked` as the only coding (the gateway
/// implements no other).
pub fn framing(fields: &[(Vec<u8>, Vec<u8>)], minor: u8) -> Result<Option<BodyKind>, ()> {
    let has = |name: &str| {
        fields
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
    };
    let mut lengths = Vec::new();
    for d in list(fields, "content-length") {
        if d.is_empty() || d.len() > 18 || !d.iter().all(u8::is_ascii_digit) {
            return Err(());
        }
        let n = d.iter().fold(0u64, |a, &c| a * 10 + u64::from(c - b'0'));
        lengths.push(n);
    }
    if has("transfer-encoding") {
        let codings: Vec<&[u8]> = list(fields, "transfer-encoding")
            .filter(|c| !c.is_empty())
            .collect();
        let chunked = matches!(codings[..], [c] if c.eq_ignore_ascii_case(b"chunked"));
        return if minor == 0 || !lengths.is_empty() || !chunked {
            Err(())
        } else {
            Ok(Some(BodyKind::Chunked))
        };
    }
    match lengths.first() {
        None => Ok(None),
        Some(&n) if lengths.iter().all(|&m| m == n) => Ok(Some(match n {
            0 => BodyKind::None,
            n => BodyKind::Length(n),
        })),
        Some(_) => Err(()),
    }
}

/// Whether the connection persists: `close` always ends it, HTTP/1.0 needs `keep-alive`.
pub fn keep_alive(fields: &[(Vec<u8>, Vec<u8>)], minor: u8) -> bool {
    let tokens: Vec<&[u8]> = list(fields, "connection").collect();
    if tokens.iter().any(|t| t.eq_ignore_ascii_case(b"close")) {
        return false;
    }
    minor == 1 || tokens.iter().any(|t| t.eq_ignore_ascii_case(b"keep-alive"))
}

/// What httparse alone makes of a head under `limits`, before any framing rule.
#[derive(Debug)]
pub enum Raw {
    /// Needs more bytes, and the bound still allows them.
    Partial,
    /// Over a bound (431).
    TooLarge,
    /// Not HTTP (400).
    Bad,
    Complete {
        len: usize,
        minor: u8,
        status: u16,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

fn raw(
    res: Result<httparse::Status<usize>, httparse::Error>,
    buffered: usize,
    limits: HeadLimits,
) -> Result<usize, Raw> {
    match res {
        Ok(httparse::Status::Complete(n)) if n > limits.max_head_bytes => Err(Raw::TooLarge),
        Ok(httparse::Status::Complete(n)) => Ok(n),
        Ok(httparse::Status::Partial) if buffered >= limits.max_head_bytes => Err(Raw::TooLarge),
        Ok(httparse::Status::Partial) => Err(Raw::Partial),
        Err(httparse::Error::TooManyHeaders) => Err(Raw::TooLarge),
        Err(_) => Err(Raw::Bad),
    }
}

fn owned(h: &[httparse::Header<'_>]) -> Vec<(Vec<u8>, Vec<u8>)> {
    h.iter()
        .map(|h| (h.name.as_bytes().to_vec(), h.value.to_vec()))
        .collect()
}

pub fn raw_request(data: &[u8], limits: HeadLimits) -> Raw {
    let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut storage);
    match raw(req.parse(data), data.len(), limits) {
        Ok(len) => Raw::Complete {
            len,
            minor: req.version.unwrap_or(1),
            status: 0,
            fields: owned(req.headers),
        },
        Err(r) => r,
    }
}

pub fn raw_response(data: &[u8], limits: HeadLimits) -> Raw {
    let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut resp = httparse::Response::new(&mut storage);
    match raw(resp.parse(data), data.len(), limits) {
        Ok(len) => Raw::Complete {
            len,
            minor: resp.version.unwrap_or(1),
            status: resp.code.unwrap_or(0),
            fields: owned(resp.headers),
        },
        Err(r) => r,
    }
}

/// An outcome as the checks compare it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    More,
    /// Accepted: the head's length and its body framing.
    Head(usize, BodyKind),
    TooLarge,
    /// Malformed or an unsupported coding.
    Rejected,
}

pub fn class(r: &Result<Option<(usize, BodyKind)>, HttpError>) -> Class {
    match r {
        Ok(None) => Class::More,
        Ok(Some((len, kind))) => Class::Head(*len, *kind),
        Err(HttpError::HeadTooLarge) => Class::TooLarge,
        Err(_) => Class::Rejected,
    }
}
