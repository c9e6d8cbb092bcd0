//! session_id: `mcp::SessionId::decode` on a client's `Mcp-Session-Id`, and `encode`.
//!
//! Invariants: exactly the 42-character lowercase-hex strings decode; whatever decodes
//! re-encodes to the same bytes (one canonical form per id); every id encodes to 42 visible
//! ASCII characters that decode back to it.
//!
//! Input: the header value; its first 21 bytes also make an id to encode.

use arbitrary::Unstructured;
use shardcat::mcp::{SessionId, SESSION_ID_LEN};

#[path = "common.rs"]
mod common;

pub fn run(input: &[u8]) {
    let lower_hex = |b: &u8| matches!(b, b'0'..=b'9' | b'a'..=b'f');
    let decoded = SessionId::decode(input);
    assert_eq!(
        decoded.is_some(),
        input.len() == SESSION_ID_LEN && input.iter().all(lower_hex)
    );
    if let Some(id) = decoded {
        assert_eq!(id.encode().as_bytes(), input, "not canonical");
    }
    let mut u = Unstructured::new(input);
    let id = SessionId {
        shard: common::take(&mut u),
        slot: common::take(&mut u),
        secret: common::take(&mut u),
    };
    let s = id.encode();
    assert_eq!(s.len(), SESSION_ID_LEN);
    assert!(s.bytes().all(|b| lower_hex(&b)));
    assert_eq!(SessionId::decode(s.as_bytes()), Some(id));
}
