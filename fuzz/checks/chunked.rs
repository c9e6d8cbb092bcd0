//! chunked: `codec::http::ChunkedDecoder` on a chunked body from a client or an upstream.
//!
//! Invariants: fed in arbitrary pieces (unconsumed bytes kept, new ones appended, as a
//! connection's buffer does) it decodes the same bytes and ends the same way (done after the
//! same number of bytes, waiting with the same bytes left, or the same error) as fed whole;
//! every step makes progress and stays inside its input; what it decoded, re-encoded with
//! `encode_chunk` (in arbitrary pieces) and `LAST_CHUNK`, decodes to the same bytes, all
//! consumed.
//!
//! Input: piece lengths (`common`), then the body bytes.

use arbitrary::Unstructured;
use shardcat::codec::http::{encode_chunk, ChunkStep, ChunkedDecoder, HttpError, LAST_CHUNK};

#[path = "common.rs"]
mod common;

#[derive(Debug, PartialEq, Eq)]
enum End {
    Done { consumed: usize },
    Waiting { left: usize },
    Failed(HttpError),
}

/// Decodes `pieces` as they arrive; the body bytes and how decoding ended.
fn decode(pieces: &[&[u8]]) -> (Vec<u8>, End) {
    let mut d = ChunkedDecoder::default();
    let mut buf = Vec::new();
    let mut pos = 0;
    let mut out = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            let step = match d.decode(&buf[pos..]) {
                Ok(s) => s,
                Err(e) => return (out, End::Failed(e)),
            };
            match step {
                ChunkStep::Data(b, n) => {
                    assert!(n > 0 && b.len() == n, "data step of {n} bytes");
                    out.extend_from_slice(b);
                    pos += n;
                }
                ChunkStep::Skip(n) => {
                    assert!(n > 0, "a skip makes progress");
                    pos += n;
                }
                ChunkStep::NeedMore => break,
                ChunkStep::End(n) => {
                    assert!(d.is_done());
                    return (out, End::Done { consumed: pos + n });
                }
            }
            assert!(pos <= buf.len(), "consumed past the input");
        }
    }
    (
        out,
        End::Waiting {
            left: buf.len() - pos,
        },
    )
}

pub fn run(input: &[u8]) {
    let mut u = Unstructured::new(input);
    let lens = common::lens_then_data(&mut u);
    let data = u.take_rest();
    let whole = decode(&[data]);
    let split = decode(&common::pieces(data, &lens));
    assert_eq!(whole, split, "decoding depends on how the body was cut");
    if let (body, End::Done { consumed }) = &whole {
        assert!(*consumed <= data.len() && body.len() <= *consumed);
        let mut wire = Vec::new();
        for piece in common::pieces(body, &lens) {
            encode_chunk(&mut wire, piece);
        }
        wire.extend_from_slice(LAST_CHUNK);
        let again = decode(&common::pieces(&wire, &lens));
        let want = End::Done {
            consumed: wire.len(),
        };
        assert_eq!(again, (body.clone(), want), "re-encoded body");
    }
}
