//! body: `codec::http::BodyDecoder` over a `ReadBuf`, the way `gateway::client::read_body`
//! and the upstream relays drive it, for each framing (none, a length, chunked, to the close).
//!
//! Invariants: fed in arbitrary pieces it hands out the same bytes, finishes (or fails) the
//! same way, leaves the same bytes for the next message on the connection, and judges an EOF
//! the same as fed whole. A length body is exactly the first `n` bytes; a close-delimited one
//! is every byte and ends only at EOF; no body consumes nothing.
//!
//! Input: 1 byte framing, 2 bytes length, piece lengths (`common`), then the bytes.

use arbitrary::Unstructured;
use shardcat::codec::http::{BodyDecoder, BodyKind, HttpError, ReadBuf};

#[path = "common.rs"]
mod common;

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    body: Vec<u8>,
    /// The last `decode` result: `Ok(true)` once complete.
    state: Result<bool, HttpError>,
    /// Bytes after the body: left in the buffer, and those never fed.
    after: Vec<u8>,
    /// What an EOF now would mean, while the body is incomplete.
    eof: Option<Result<(), HttpError>>,
}

fn decode(kind: BodyKind, pieces: &[&[u8]]) -> Outcome {
    let mut dec = BodyDecoder::new(kind);
    let mut rb = ReadBuf::default();
    let mut body = Vec::new();
    let mut state = dec.decode(&mut rb, &mut |d: &[u8]| body.extend_from_slice(d));
    let mut fed = 0;
    for piece in pieces {
        if state != Ok(false) {
            break;
        }
        let mut v = rb.into_vec();
        v.extend_from_slice(piece);
        rb = ReadBuf::from_vec(v);
        fed += 1;
        state = dec.decode(&mut rb, &mut |d: &[u8]| body.extend_from_slice(d));
        if let Ok(done) = state {
            assert_eq!(done, dec.is_done());
        }
    }
    let mut after = rb.data().to_vec();
    for piece in &pieces[fed..] {
        after.extend_from_slice(piece);
    }
    let eof = (state == Ok(false)).then(|| dec.clone().finish_on_eof());
    Outcome {
        body,
        state,
        after,
        eof,
    }
}

pub fn run(input: &[u8]) {
    let mut u = Unstructured::new(input);
    let selector: u8 = common::take(&mut u);
    let n = u64::from(common::take::<u16>(&mut u));
    let kind = match selector % 4 {
        0 => BodyKind::None,
        1 => BodyKind::Length(n),
        2 => BodyKind::Chunked,
        _ => BodyKind::Close,
    };
    let lens = common::lens_then_data(&mut u);
    let data = u.take_rest();
    let whole = decode(kind, &[data]);
    let split = decode(kind, &common::pieces(data, &lens));
    assert_eq!(
        whole, split,
        "{kind:?} body decoding depends on how it was cut"
    );
    match kind {
        BodyKind::None => {
            assert_eq!((&whole.body[..], whole.state.clone()), (&[][..], Ok(true)));
            assert_eq!(whole.after, data);
        }
        BodyKind::Length(n) => {
            let at = data.len().min(n as usize);
            assert_eq!(whole.body, &data[..at]);
            assert_eq!(whole.after, &data[at..]);
            assert_eq!(whole.state, Ok(data.len() as u64 >= n));
            if let Some(eof) = whole.eof {
                assert!(eof.is_err(), "a length body cut short is truncated");
            }
        }
        BodyKind::Close => {
            assert_eq!(
                (whole.body, whole.state, whole.eof),
                (data.to_vec(), Ok(false), Some(Ok(())))
            );
        }
        BodyKind::Chunked => {
            if whole.state == Ok(true) {
                assert!(whole.body.len() + whole.after.len() <= data.len());
                assert!(data.ends_with(&whole.after));
            }
        }
    }
}
