//! cluster_seal: `cluster::SessionKeys::open` on a client's `Mcp-Session-Id`, `seal`, and the
//! claims' binary form (`decode_claims`, `encode_claims`).
//!
//! Invariants:
//! - `open` never panics, and accepts a token only when it round-trips: sealing its claims
//!   again under the key that opened it, with its own nonce, gives the same text;
//! - `seal` makes a token exactly when the claims fit the bounds (checked by a reference
//!   written apart, with the length the layout predicts); the token is base64url of at most
//!   `MAX_TOKEN_BYTES`, holds no `.` (it is not a pinned id), opens to the same claims, is
//!   refused under another key, and with any one byte changed is refused;
//! - `decode_claims` accepts only what `encode_claims` writes back byte for byte.
//!
//! Input: a mode byte (mod 3: 0 the rest is a token; 1 the rest makes claims, a nonce and a
//! byte to flip; 2 the rest is a claims plaintext).

use arbitrary::Unstructured;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use shardcat::cluster::{
    decode_claims, encode_claims, pinned_node, Claims, Member, OpenError, SealError, SessionKeys,
    MAX_MEMBERS, MAX_SUBJECT_BYTES, MAX_TOKEN_BYTES, MAX_UPSTREAM_SID_BYTES, NONCE_BYTES,
};
use shardcat::mcp::KNOWN_VERSIONS;

#[path = "common.rs"]
mod common;

/// The keys of the fuzz cluster; the seeds' tokens are sealed under them (`fuzz/seeds.py`).
pub const CURRENT: [u8; 32] = [0x11; 32];
pub const PREVIOUS: [u8; 32] = [0x22; 32];

pub fn run(input: &[u8]) {
    let Some((mode, rest)) = input.split_first() else {
        return;
    };
    match mode % 3 {
        0 => open(&String::from_utf8_lossy(rest)),
        1 => seal(&mut Unstructured::new(rest)),
        _ => plaintext(rest),
    }
}

fn open(token: &str) {
    let keys = SessionKeys::new(CURRENT, Some(PREVIOUS));
    let Ok(claims) = keys.open(token) else {
        return;
    };
    let raw = URL_SAFE_NO_PAD
        .decode(token)
        .expect("an opened token is base64url");
    let nonce: [u8; NONCE_BYTES] = raw[2..2 + NONCE_BYTES].try_into().expect("24 bytes");
    let again = [CURRENT, PREVIOUS].map(|k| SessionKeys::new(k, None).seal(&claims, nonce));
    assert!(
        again.iter().any(|t| t.as_deref() == Ok(token)),
        "{token} opens but does not re-seal to itself: {again:?}"
    );
}

fn seal(u: &mut Unstructured<'_>) {
    let claims = claims(u);
    let nonce: [u8; NONCE_BYTES] = common::take(u);
    let flip: (u16, u8) = common::take(u);
    let keys = SessionKeys::new(CURRENT, Some(PREVIOUS));
    let sealed = keys.seal(&claims, nonce);
    // Which error, not its text: the reference does not name the claim.
    let kind = |e: &SealError| std::mem::discriminant(e);
    assert_eq!(
        sealed.as_ref().err().map(kind),
        reference(&claims).err().as_ref().map(kind),
        "{claims:?}: {sealed:?}"
    );
    let Ok(token) = sealed else { return };
    assert!(token.len() <= MAX_TOKEN_BYTES);
    let b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    assert!(token.bytes().all(b64), "{token}");
    assert_eq!(pinned_node(&token), None);
    assert_eq!(keys.open(&token).as_ref(), Ok(&claims));
    let foreign = SessionKeys::new([0x33; 32], None);
    assert_eq!(foreign.open(&token), Err(OpenError::Forged));
    let mut bytes = token.clone().into_bytes();
    let at = usize::from(flip.0) % bytes.len();
    bytes[at] ^= flip.1.max(1);
    if let Ok(tampered) = String::from_utf8(bytes) {
        assert!(keys.open(&tampered).is_err(), "{tampered} opens");
    }
}

fn plaintext(bytes: &[u8]) {
    if let Some(c) = decode_claims(bytes) {
        let mut out = Vec::new();
        encode_claims(&c, &mut out);
        assert_eq!(out, bytes, "not canonical: {c:?}");
    }
}

/// Claims from the input: names mostly drawn from their own alphabets, so most fit.
fn claims(u: &mut Unstructured<'_>) -> Claims {
    let node = text(u, b"abz09-.A", 40);
    let count = usize::from(common::take::<u8>(u)) % (MAX_MEMBERS + 8);
    let members = (0..count)
        .map(|_| Member {
            server: common::take(u),
            upstream: common::take(u),
            sid: common::take::<bool>(u).then(|| text(u, b"0123456789abcdef-_~!", 300)),
        })
        .collect();
    Claims {
        node,
        shard: common::take(u),
        version: common::take::<u8>(u) % 8,
        issued_s: common::take(u),
        subject: common::take::<bool>(u).then(|| text(u, b"al@.x \xc3\xa9", 300)),
        members,
    }
}

/// A string of up to `max` bytes: mapped onto `alphabet`, or (with a flag) any UTF-8.
fn text(u: &mut Unstructured<'_>, alphabet: &[u8], max: usize) -> String {
    let (raw, len): (bool, u16) = common::take(u);
    if raw {
        return common::take(u);
    }
    let len = usize::from(len) % max;
    let bytes: Vec<u8> = (0..len)
        .map(|_| alphabet[usize::from(common::take::<u8>(u)) % alphabet.len()])
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// What `seal` must say, from the bounds and the layout written out apart.
fn reference(c: &Claims) -> Result<(), SealError> {
    let node_ok = (1..=32).contains(&c.node.len())
        && c.node
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'));
    let visible = |s: &str| s.bytes().all(|b| (b'!'..=b'~').contains(&b));
    let sids_ok = c.members.iter().all(|m| {
        m.sid
            .as_ref()
            .is_none_or(|s| s.len() <= MAX_UPSTREAM_SID_BYTES && visible(s))
    });
    let fits = node_ok
        && usize::from(c.version) < KNOWN_VERSIONS.len()
        && c.subject
            .as_ref()
            .is_none_or(|s| s.len() <= MAX_SUBJECT_BYTES)
        && c.members.len() <= MAX_MEMBERS
        && sids_ok;
    if !fits {
        return Err(SealError::Claim(""));
    }
    let opt = |s: &Option<String>| s.as_ref().map_or(1, |s| 2 + s.len());
    let plain = 1 + c.node.len() + 1 + 1 + 8 + opt(&c.subject) + 1;
    let plain = plain + c.members.iter().map(|m| 2 + opt(&m.sid)).sum::<usize>();
    // format, hint, nonce, claims, tag; base64url without padding.
    let chars = (2 + 24 + plain + 16) * 4;
    if chars.div_ceil(3) > MAX_TOKEN_BYTES {
        return Err(SealError::TooLong);
    }
    Ok(())
}
