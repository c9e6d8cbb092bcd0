//! A fast seeded random smoke test of every parser facing a peer: random and mutated inputs must
//! never panic, and whatever is accepted must satisfy the parser's invariants. Deterministic
//! seeds, so failures reproduce. The coverage-guided fuzz targets are in `fuzz/`
//! (`scripts/fuzz.sh`, stable toolchain); the inputs they failed on are replayed by
//! `tests/fuzz_regressions.rs`.

use shardcat::codec::http::{
    self, BodyDecoder, BodyKind, ChunkStep, ChunkedDecoder, HeadLimits, ReadBuf,
};
use shardcat::codec::sse;
use shardcat::codec::sse::SseSplitter;
use shardcat::mcp::{self, SessionId};

/// xorshift64*: small, deterministic, good enough to spread inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, max: usize, alphabet: &[u8]) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len)
            .map(|_| alphabet[self.below(alphabet.len())])
            .collect()
    }
}

const HTTPISH: &[u8] = b"GETPOSTDELETE /mcp HTTP/1.01\r\n:; ,\tContent-LengthTransfer-Encodingchunked0123456789abcdefxyz\x00\x7f\xff";

/// Flips, inserts or deletes a few bytes of `base`.
fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(3) {
            0 if at < v.len() => v[at] = HTTPISH[rng.below(HTTPISH.len())],
            1 => v.insert(at, HTTPISH[rng.below(HTTPISH.len())]),
            _ if at < v.len() => {
                v.remove(at);
            }
            _ => {}
        }
    }
    v
}

const VALID_HEAD: &[u8] = b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:8080\r\ncontent-type: application/json\r\nmcp-session-id: 0100000000f6d87be531cf2719d9b3b12d919201e4\r\ncontent-length: 42\r\n\r\n";

#[test]
fn request_and_response_heads_never_panic() {
    let mut rng = Rng(0x5eed_0001);
    let limits = HeadLimits {
        max_head_bytes: 1024,
        max_headers: 16,
    };
    for i in 0..50_000 {
        let input = if i % 2 == 0 {
            mutate(&mut rng, VALID_HEAD)
        } else {
            rng.bytes(300, HTTPISH)
        };
        if let Ok(Some(h)) = http::parse_request(&input, limits) {
            assert!(h.head_len <= input.len() && h.head_len <= limits.max_head_bytes);
            assert!(h.headers.len() <= limits.max_headers);
            for (_, v) in h.headers.iter() {
                assert!(
                    !v.contains(&b'\n'),
                    "header values never carry a line break"
                );
            }
        }
        let resp = mutate(&mut rng, b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n");
        if let Ok(Some(h)) = http::parse_response(&resp, limits, false) {
            assert!(h.head_len <= resp.len());
        }
    }
}

#[test]
fn chunked_decoding_never_panics_and_never_overreads() {
    let mut rng = Rng(0x5eed_0002);
    let mut valid = Vec::new();
    for n in [5usize, 300, 1, 17] {
        http::encode_chunk(&mut valid, &vec![b'x'; n]);
    }
    valid.extend_from_slice(http::LAST_CHUNK);
    for i in 0..30_000 {
        let input = if i % 2 == 0 {
            mutate(&mut rng, &valid)
        } else {
            rng.bytes(200, HTTPISH)
        };
        let mut d = ChunkedDecoder::default();
        let mut pos = 0;
        let mut out = 0usize;
        for _ in 0..10_000 {
            match d.decode(&input[pos..]) {
                Ok(ChunkStep::Data(b, n)) => {
                    assert_eq!(b.len(), n);
                    out += n;
                    pos += n;
                }
                Ok(ChunkStep::Skip(n)) => {
                    assert!(n > 0, "a skip must make progress");
                    pos += n;
                }
                Ok(ChunkStep::End(n)) => {
                    assert!(pos + n <= input.len());
                    break;
                }
                Ok(ChunkStep::NeedMore) | Err(_) => break,
            }
            assert!(pos <= input.len());
        }
        assert!(out <= input.len());
    }
}

#[test]
fn body_decoder_reassembles_any_split() {
    let mut rng = Rng(0x5eed_0003);
    for _ in 0..2_000 {
        let payload = rng.bytes(2000, b"abcdefgh\r\n{}\":");
        let mut wire = Vec::new();
        let mut rest = &payload[..];
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len());
            http::encode_chunk(&mut wire, &rest[..n]);
            rest = &rest[n..];
        }
        wire.extend_from_slice(http::LAST_CHUNK);
        let mut dec = BodyDecoder::new(BodyKind::Chunked);
        let mut got = Vec::new();
        let mut fed = 0;
        let mut rb = ReadBuf::default();
        loop {
            let done = dec
                .decode(&mut rb, &mut |d: &[u8]| got.extend_from_slice(d))
                .expect("valid body");
            if done {
                break;
            }
            assert!(fed < wire.len(), "decoder wants more than the whole body");
            let n = 1 + rng.below(wire.len() - fed);
            let mut v = rb.into_vec();
            v.extend_from_slice(&wire[fed..fed + n]);
            rb = ReadBuf::from_vec(v);
            fed += n;
        }
        assert_eq!(got, payload);
    }
}

#[test]
fn sse_splitter_loses_and_invents_nothing() {
    let mut rng = Rng(0x5eed_0004);
    for _ in 0..5_000 {
        let stream = rng.bytes(600, b"data: x\r\n\n\r:id");
        let mut s = SseSplitter::new(1 << 20);
        let mut events = Vec::new();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len());
            s.push(&rest[..n]);
            rest = &rest[n..];
            while let Some(e) = s.next_event().expect("bounded") {
                assert!(!e.is_empty());
                events.push(e);
            }
        }
        let mut joined: Vec<u8> = events.concat();
        joined.extend_from_slice(&s.take_rest());
        assert_eq!(
            joined, stream,
            "events plus the tail must be the stream, byte for byte"
        );
    }
}

#[test]
fn jsonrpc_classification_and_session_ids_never_panic() {
    let mut rng = Rng(0x5eed_0005);
    let valid = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#;
    for i in 0..50_000 {
        let input = if i % 2 == 0 {
            mutate(&mut rng, valid)
        } else {
            rng.bytes(
                120,
                b"{}[]\":,0123456789.-eE truefalsnjsonrpcmethodidparams\\u",
            )
        };
        if let Ok(body) = mcp::classify(&input) {
            assert!(!body.messages().is_empty());
            for m in body.messages() {
                if let Some(id) = m.id {
                    assert!(
                        serde_json::from_str::<serde_json::Value>(id).is_ok(),
                        "id is raw JSON"
                    );
                }
            }
        }
        let id = rng.bytes(44, b"0123456789abcdefABCDEF-");
        if let Some(parsed) = SessionId::decode(&id) {
            assert_eq!(parsed.encode().as_bytes(), &id[..]);
        }
        let _ = mcp::decode_header_value(&String::from_utf8_lossy(
            &rng.bytes(40, b"=?base64?QUJD+/xyz"),
        ));
    }
}

#[test]
fn last_event_ids_and_sse_fields_never_panic_and_round_trip() {
    let mut rng = Rng(0x5eed_0006);
    const IDS: &[u8] = b"0123456789- \t-x\xff\x00";
    for _ in 0..50_000 {
        let raw = rng.bytes(24, IDS);
        if let Some((stream, seq)) = shardcat::shard::sse::parse_event_id(&raw) {
            // Whatever is accepted names a stream and a sequence number that print back.
            let again = format!("{stream}-{seq}");
            assert_eq!(
                shardcat::shard::sse::parse_event_id(again.as_bytes()),
                Some((stream, seq))
            );
        }
        let event = rng.bytes(64, b"data:id:retry: 12\n\r\nxyz{}\"");
        let fields: Vec<_> = sse::sse_fields(&event).collect();
        assert!(fields.iter().all(|(name, _)| !name.is_empty()));
        let _ = sse::parse_sse_event(&event);
    }
}
