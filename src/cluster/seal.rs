//! The sealed session token: `Claims` in a compact binary form, boxed with XChaCha20-Poly1305
//! under the cluster's session key, written as base64url without padding.
//!
//! Token, before base64url (format 1):
//!
//! ```text
//! format u8 (= 1) | key hint u8 | nonce [u8; 24] | ciphertext of the claims | tag [u8; 16]
//! ```
//!
//! The format byte and the key hint (the first byte of SHA-256 of the key) are the AEAD's
//! associated data: readable before decryption, but a change to them is a forgery. `open`
//! refuses an unknown format without decrypting and tries only the keys whose hint matches.
//!
//! The claims (the plaintext), every integer one byte unless said:
//!
//! ```text
//! node_len | node | shard | version | issued_s u64 LE | subject | member_count | members
//! subject, sid:  0 (absent)  or  1 | len | bytes
//! member:        server | upstream | sid
//! ```
//!
//! The nonce is 24 random bytes per token. Nodes share a key and no counter, so nonces cannot
//! be sequenced; with 192 random bits a repeat is negligible (2^-96 after 2^48 tokens under
//! one key), where the 96-bit nonce of plain ChaCha20-Poly1305 would allow far fewer.
//!
//! Measured lengths (the unit test `token_lengths` prints them), a 20-byte node name, no
//! subject: 1 member with a 32-character upstream session id (the Python SDK's) is 148
//! characters, 3 such members 244; a session over one sessionless server is 104.
//!
//! Invariants: every token `seal` makes is at most `MAX_TOKEN_BYTES` of base64url (visible
//! ASCII, never a `.`), and `open` gives back exactly the claims sealed. `open` never panics,
//! and decodes one canonical form: a token it accepts re-seals, with its own nonce and key, to
//! the same text. A claim out of bounds is refused by `seal` and by `open` alike.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use super::{is_node_name, MAX_NODE_BYTES};
use crate::mcp::KNOWN_VERSIONS;

/// Bytes of a session key.
pub const KEY_BYTES: usize = 32;
/// Bytes of a token's nonce (XChaCha20).
pub const NONCE_BYTES: usize = 24;
/// Members of a session: one per federated server (and its upstream), as many as config lets
/// a route hold (`config::MAX_ROUTE_SERVERS`).
pub const MAX_MEMBERS: usize = 64;
/// The longest upstream session id carried (one length byte).
pub const MAX_UPSTREAM_SID_BYTES: usize = 255;
/// The longest subject carried (one length byte).
pub const MAX_SUBJECT_BYTES: usize = 255;
/// The longest token `seal` makes (and `open` reads): 4 KiB, half of the 8 KiB a header line
/// may take in nginx (`large_client_header_buffers`) and a quarter of HAProxy's 16 KiB buffer
/// for a whole head. Claims at every bound at once do not fit: `seal` refuses them
/// (`SealError::TooLong`); 64 members with 32-character session ids fit.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// The format `seal` writes, the token's first byte.
pub const FORMAT: u8 = 1;

const TAG_BYTES: usize = 16;
const HEADER_BYTES: usize = 2 + NONCE_BYTES;
const OVERHEAD_BYTES: usize = HEADER_BYTES + TAG_BYTES;
/// The shortest claims: a 1-byte node, no subject, no member.
const MIN_CLAIMS_BYTES: usize = 2 + 1 + 1 + 8 + 1 + 1;
/// The largest claims that fit a token of `MAX_TOKEN_BYTES` characters.
const MAX_CLAIMS_BYTES: usize = MAX_TOKEN_BYTES / 4 * 3 - OVERHEAD_BYTES;
const MIN_TOKEN_BYTES: usize = base64_len(OVERHEAD_BYTES + MIN_CLAIMS_BYTES);

const fn base64_len(bytes: usize) -> usize {
    (bytes * 4).div_ceil(3)
}

/// What a node needs to adopt a session another node began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The node that began the session (`[cluster] node_id`).
    pub node: String,
    /// Its shard there.
    pub shard: u8,
    /// The session's protocol version, an index into `mcp::KNOWN_VERSIONS`.
    pub version: u8,
    /// When the session began, unix seconds (its age bounds it on every node).
    pub issued_s: u64,
    /// The authenticated subject the session belongs to, when auth is on.
    pub subject: Option<String>,
    /// The upstream sessions behind it, one per server.
    pub members: Vec<Member>,
}

/// One upstream session of a gateway session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The federated server's index (0 when not federated).
    pub server: u8,
    /// The upstream's index within that server (its replica).
    pub upstream: u8,
    /// The upstream's `Mcp-Session-Id`; `None` for a sessionless server.
    pub sid: Option<String>,
}

/// Why `seal` made no token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    /// A claim breaks a bound; names it.
    Claim(&'static str),
    /// The claims fit their bounds, but the token would exceed `MAX_TOKEN_BYTES`.
    TooLong,
    /// The OS gave no random nonce (`seal_random`).
    NoRandom,
}

/// Why `open` refused a token. Each means the client's session id is unknown here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Not a token: not base64url, too short or too long, or an unknown format.
    Malformed,
    /// No key opens it: tampered with, or sealed under a key this node does not hold.
    Forged,
    /// It opened, but its claims do not parse or break a bound (a bug of the sealing node,
    /// or a node of another build).
    Invalid,
}

impl std::fmt::Display for SealError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SealError::Claim(what) => write!(f, "session claims: {what}"),
            SealError::TooLong => write!(f, "session token over {MAX_TOKEN_BYTES} bytes"),
            SealError::NoRandom => f.write_str("no random nonce from the OS"),
        }
    }
}

impl OpenError {
    /// As `shardcat_cluster_ids_refused_total` names it.
    pub fn label(self) -> &'static str {
        match self {
            OpenError::Malformed => "malformed",
            OpenError::Forged => "forged",
            OpenError::Invalid => "invalid",
        }
    }
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OpenError::Malformed => "not a session token",
            OpenError::Forged => "session token not sealed by this cluster",
            OpenError::Invalid => "session token holds invalid claims",
        })
    }
}

impl std::error::Error for SealError {}
impl std::error::Error for OpenError {}

/// The cluster's session keys: `current` seals and opens; `previous`, during a rotation,
/// only opens (tokens sealed before the rotation).
#[derive(Clone)]
pub struct SessionKeys {
    current: [u8; KEY_BYTES],
    previous: Option<[u8; KEY_BYTES]>,
    /// Each key's hint, computed once (`hint`).
    hints: (u8, Option<u8>),
}

/// Keys are secrets: only their hints are shown.
impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("current_hint", &self.hints.0)
            .field("previous_hint", &self.hints.1)
            .finish()
    }
}

impl SessionKeys {
    pub fn new(current: [u8; KEY_BYTES], previous: Option<[u8; KEY_BYTES]>) -> SessionKeys {
        let hints = (hint(&current), previous.as_ref().map(hint));
        SessionKeys {
            current,
            previous,
            hints,
        }
    }

    /// The token for `claims`, under the current key with this nonce (random in use:
    /// `seal_random`; fixed in tests).
    pub fn seal(&self, claims: &Claims, nonce: [u8; NONCE_BYTES]) -> Result<String, SealError> {
        check(claims).map_err(SealError::Claim)?;
        let mut raw = Vec::with_capacity(OVERHEAD_BYTES + claims_len(claims));
        raw.extend_from_slice(&[FORMAT, self.hints.0]);
        raw.extend_from_slice(&nonce);
        encode_claims(claims, &mut raw);
        if raw.len() - HEADER_BYTES > MAX_CLAIMS_BYTES {
            return Err(SealError::TooLong);
        }
        let (header, body) = raw.split_at_mut(HEADER_BYTES);
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&self.current));
        // Encryption fails only for a message over 256 GiB; the claims are at most 3 KiB.
        let tag = cipher
            .encrypt_in_place_detached(XNonce::from_slice(&header[2..]), &header[..2], body)
            .map_err(|_| SealError::TooLong)?;
        raw.extend_from_slice(&tag);
        let token = URL_SAFE_NO_PAD.encode(&raw);
        debug_assert!(token.len() <= MAX_TOKEN_BYTES && !token.contains('.'));
        Ok(token)
    }

    /// `seal` with a nonce from the OS CSPRNG, but for its first byte: the claims' shard, so
    /// that a node finds the shard serving a token without opening it (`token_shard`). 184
    /// random bits stay, far more than XChaCha20's nonces need; the byte is authenticated
    /// like the rest of the nonce, so a token whose routing byte was changed does not open.
    pub fn seal_random(&self, claims: &Claims) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::getrandom(&mut nonce).map_err(|_| SealError::NoRandom)?;
        nonce[0] = claims.shard;
        self.seal(claims, nonce)
    }

    /// The claims a token carries, if one of the keys sealed it (the current key first).
    pub fn open(&self, token: &str) -> Result<Claims, OpenError> {
        if !(MIN_TOKEN_BYTES..=MAX_TOKEN_BYTES).contains(&token.len()) {
            return Err(OpenError::Malformed);
        }
        let mut raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| OpenError::Malformed)?;
        if raw[0] != FORMAT {
            return Err(OpenError::Malformed);
        }
        let keys = std::iter::once((&self.current, self.hints.0))
            .chain(self.previous.as_ref().zip(self.hints.1));
        // A key with another hint did not seal it: the hint is authenticated.
        let sealed_by = raw[1];
        let key = keys
            .filter(|&(_, h)| h == sealed_by)
            .find(|(k, _)| decrypt(k, &mut raw))
            .ok_or(OpenError::Forged)?;
        debug_assert!(hint(key.0) == raw[1]);
        decode_claims(&raw[HEADER_BYTES..raw.len() - TAG_BYTES]).ok_or(OpenError::Invalid)
    }
}

/// The shard byte a token's nonce starts with (`seal_random`), read from its first four
/// characters without opening it; `None` when they are not a token's. Routing only: a node
/// opens the token before it trusts anything in it.
pub fn token_shard(token: &[u8]) -> Option<u8> {
    let head = token.get(..4)?;
    let mut bytes = [0u8; 3];
    let n = URL_SAFE_NO_PAD.decode_slice(head, &mut bytes).ok()?;
    (n == 3 && bytes[0] == FORMAT).then_some(bytes[2])
}

/// Opens `raw` (a whole token) in place under `key`; on failure `raw` is left as it was, so
/// the next key can try.
fn decrypt(key: &[u8; KEY_BYTES], raw: &mut [u8]) -> bool {
    let (header, rest) = raw.split_at_mut(HEADER_BYTES);
    let (body, tag) = rest.split_at_mut(rest.len() - TAG_BYTES);
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    let nonce = XNonce::from_slice(&header[2..]);
    cipher
        .decrypt_in_place_detached(nonce, &header[..2], body, Tag::from_slice(tag))
        .is_ok()
}

/// The first byte of the key's SHA-256: which key sealed a token, without trying each.
fn hint(key: &[u8; KEY_BYTES]) -> u8 {
    Sha256::digest(key)[0]
}

/// Whether the claims fit their bounds; else the claim at fault.
fn check(c: &Claims) -> Result<(), &'static str> {
    let visible = |s: &str| s.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if !is_node_name(&c.node, MAX_NODE_BYTES) {
        return Err("node: 1 to 32 of a-z, 0-9, -");
    }
    if usize::from(c.version) >= KNOWN_VERSIONS.len() {
        return Err("version: not an index into mcp::KNOWN_VERSIONS");
    }
    if c.subject
        .as_ref()
        .is_some_and(|s| s.len() > MAX_SUBJECT_BYTES)
    {
        return Err("subject: over 255 bytes");
    }
    if c.members.len() > MAX_MEMBERS {
        return Err("members: over 64");
    }
    let sid_ok = |s: &String| s.len() <= MAX_UPSTREAM_SID_BYTES && visible(s);
    if !c.members.iter().all(|m| m.sid.as_ref().is_none_or(sid_ok)) {
        return Err("members: a sid over 255 bytes or not visible ASCII");
    }
    Ok(())
}

/// Bytes `encode_claims` writes.
fn claims_len(c: &Claims) -> usize {
    let opt = |s: &Option<String>| 1 + s.as_ref().map_or(0, |s| 1 + s.len());
    let members: usize = c.members.iter().map(|m| 2 + opt(&m.sid)).sum();
    1 + c.node.len() + 2 + 8 + opt(&c.subject) + 1 + members
}

/// Appends the claims' binary form (the module comment's layout). The claims were `check`ed:
/// every length fits its byte.
pub fn encode_claims(c: &Claims, out: &mut Vec<u8>) {
    let start = out.len();
    let put_str = |out: &mut Vec<u8>, s: &str| {
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    };
    let put_opt = |out: &mut Vec<u8>, s: &Option<String>| match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    };
    put_str(out, &c.node);
    out.extend_from_slice(&[c.shard, c.version]);
    out.extend_from_slice(&c.issued_s.to_le_bytes());
    put_opt(out, &c.subject);
    out.push(c.members.len() as u8);
    for m in &c.members {
        out.extend_from_slice(&[m.server, m.upstream]);
        put_opt(out, &m.sid);
    }
    debug_assert_eq!(out.len() - start, claims_len(c));
}

/// The claims in `bytes` (all of them), if they parse and fit their bounds: exactly what
/// `encode_claims` writes, so one set of claims has one form.
pub fn decode_claims(bytes: &[u8]) -> Option<Claims> {
    let mut r = Reader(bytes);
    let node = r.string()?;
    let [shard, version] = r.take::<2>()?;
    let issued_s = u64::from_le_bytes(r.take::<8>()?);
    let subject = r.opt_string()?;
    let count = r.byte()?;
    let members = (0..count)
        .map(|_| {
            let [server, upstream] = r.take::<2>()?;
            let sid = r.opt_string()?;
            Some(Member {
                server,
                upstream,
                sid,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let claims = Claims {
        node,
        shard,
        version,
        issued_s,
        subject,
        members,
    };
    (r.0.is_empty() && check(&claims).is_ok()).then_some(claims)
}

/// Reads the claims front to back; every read past the end is `None`.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }

    fn string(&mut self) -> Option<String> {
        let len = usize::from(self.byte()?);
        let (s, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        String::from_utf8(s.to_vec()).ok()
    }

    fn opt_string(&mut self) -> Option<Option<String>> {
        match self.byte()? {
            0 => Some(None),
            1 => self.string().map(Some),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: [u8; NONCE_BYTES] = [7; NONCE_BYTES];
    const SDK_SID: &str = "8f2b6c1e4d3a4b5c9e7f0a1b2c3d4e5f";

    fn keys() -> SessionKeys {
        SessionKeys::new([1; KEY_BYTES], None)
    }

    fn member(server: u8, sid: Option<&str>) -> Member {
        Member {
            server,
            upstream: server / 2,
            sid: sid.map(String::from),
        }
    }

    fn claims(members: Vec<Member>, subject: Option<&str>) -> Claims {
        Claims {
            node: "gw-eu-west-1a-node07".into(),
            shard: 3,
            version: 2,
            issued_s: 1_796_000_000,
            subject: subject.map(String::from),
            members,
        }
    }

    fn three() -> Claims {
        let m = (0..3).map(|i| member(i, Some(SDK_SID))).collect();
        claims(m, None)
    }

    #[test]
    fn claims_round_trip() {
        let k = keys();
        let sets = [
            claims(vec![], None),
            claims(vec![member(0, Some(SDK_SID))], Some("alice@example.com")),
            claims(vec![member(0, None)], None),
            three(),
            claims(three().members, Some("")),
        ];
        for c in sets {
            let t = k.seal(&c, NONCE).unwrap();
            assert!(t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(k.open(&t), Ok(c.clone()));
            assert_ne!(k.seal_random(&c).unwrap(), t, "a random nonce");
            assert_eq!(k.open(&k.seal_random(&c).unwrap()), Ok(c));
        }
    }

    #[test]
    fn a_random_token_names_its_shard_in_the_clear() {
        let k = keys();
        for shard in [0u8, 1, 3, 200, 255] {
            let c = Claims { shard, ..three() };
            let t = k.seal_random(&c).unwrap();
            assert_eq!(token_shard(t.as_bytes()), Some(shard));
            assert_eq!(k.open(&t).unwrap().shard, shard);
        }
        assert_eq!(token_shard(b"AQ"), None, "too short");
        assert_eq!(token_shard(b"Ag__rest"), None, "another format byte");
        assert_eq!(token_shard(b"A.__"), None, "not base64url");
    }

    #[test]
    fn every_byte_flip_is_refused() {
        let k = keys();
        let t = k
            .seal(&claims(vec![member(1, Some(SDK_SID))], None), NONCE)
            .unwrap();
        let mut forged = 0;
        for i in 0..t.len() {
            for x in 1..=255u8 {
                let mut b = t.clone().into_bytes();
                b[i] ^= x;
                let Ok(s) = String::from_utf8(b) else {
                    continue;
                };
                match k.open(&s) {
                    Err(OpenError::Forged) => forged += 1,
                    Err(OpenError::Malformed) => {}
                    other => panic!("flip {x:#x} at {i}: {other:?}"),
                }
            }
        }
        assert!(forged > t.len() * 50, "{forged}: most flips reach the AEAD");
    }

    #[test]
    fn cut_and_extended_tokens_are_refused() {
        let k = keys();
        let t = k.seal(&three(), NONCE).unwrap();
        for n in 0..t.len() {
            assert!(k.open(&t[..n]).is_err(), "cut at {n}");
        }
        for tail in ["A", "AA", "AAA", "AAAA", "_", "=", "==", ".x"] {
            assert!(k.open(&format!("{t}{tail}")).is_err(), "{tail}");
        }
        assert_eq!(
            k.open(&"A".repeat(MAX_TOKEN_BYTES + 4)),
            Err(OpenError::Malformed)
        );
        assert_eq!(k.open(""), Err(OpenError::Malformed));
    }

    #[test]
    fn rotation_and_foreign_keys() {
        let (old, new) = ([1; KEY_BYTES], [2; KEY_BYTES]);
        let c = three();
        let t = SessionKeys::new(old, None).seal(&c, NONCE).unwrap();
        let rotated = SessionKeys::new(new, Some(old));
        assert_eq!(rotated.open(&t), Ok(c.clone()));
        let fresh = rotated.seal(&c, NONCE).unwrap();
        assert_ne!(fresh, t, "sealed under the new key");
        assert_eq!(SessionKeys::new(new, None).open(&t), Err(OpenError::Forged));
        assert_eq!(SessionKeys::new(new, None).open(&fresh), Ok(c.clone()));
        assert_eq!(
            SessionKeys::new([3; 32], Some([4; 32])).open(&t),
            Err(OpenError::Forged)
        );
        // Same hint as the sealing key, other key: the AEAD refuses it.
        let same_hint = (0..=255u8)
            .map(|b| [b; KEY_BYTES])
            .find(|k| *k != old && hint(k) == hint(&old));
        if let Some(k) = same_hint {
            assert_eq!(SessionKeys::new(k, None).open(&t), Err(OpenError::Forged));
        }
    }

    #[test]
    fn bounds_are_refused_on_both_sides() {
        let k = keys();
        let mut c = three();
        c.members = vec![member(0, None); MAX_MEMBERS + 1];
        assert!(matches!(k.seal(&c, NONCE), Err(SealError::Claim(_))));
        c.members = vec![member(0, Some(&"s".repeat(40))); MAX_MEMBERS];
        assert!(
            k.seal(&c, NONCE).is_ok(),
            "64 members with 40-character ids fit"
        );
        c.members = vec![member(0, Some(&"s".repeat(MAX_UPSTREAM_SID_BYTES))); MAX_MEMBERS];
        assert_eq!(k.seal(&c, NONCE), Err(SealError::TooLong));
        let mut c = three();
        c.members[1].sid = Some("has space".into());
        assert!(matches!(k.seal(&c, NONCE), Err(SealError::Claim(_))));
        let mut c = three();
        c.version = KNOWN_VERSIONS.len() as u8;
        assert!(matches!(k.seal(&c, NONCE), Err(SealError::Claim(_))));
        let mut c = three();
        c.node = "gw.1".into();
        assert!(matches!(k.seal(&c, NONCE), Err(SealError::Claim(_))));
        // Encoded but out of bounds (as another build might seal it): opens as Invalid.
        let mut c = three();
        c.version = 200;
        let mut plain = Vec::new();
        encode_claims(&c, &mut plain);
        assert_eq!(decode_claims(&plain), None);
        plain.truncate(0);
        encode_claims(&three(), &mut plain);
        assert_eq!(decode_claims(&plain), Some(three()));
        plain.push(0);
        assert_eq!(decode_claims(&plain), None, "trailing bytes");
    }

    #[test]
    fn invalid_claims_that_open_are_invalid() {
        let k = [5; KEY_BYTES];
        let mut raw = vec![FORMAT, hint(&k)];
        raw.extend_from_slice(&NONCE);
        raw.extend_from_slice(&[0; MIN_CLAIMS_BYTES]);
        let (header, body) = raw.split_at_mut(HEADER_BYTES);
        let tag = XChaCha20Poly1305::new(Key::from_slice(&k))
            .encrypt_in_place_detached(XNonce::from_slice(&header[2..]), &header[..2], body)
            .unwrap();
        raw.extend_from_slice(&tag);
        let token = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(
            SessionKeys::new(k, None).open(&token),
            Err(OpenError::Invalid)
        );
        let mut other = raw.clone();
        other[0] = 2;
        let unknown = URL_SAFE_NO_PAD.encode(&other);
        assert_eq!(
            SessionKeys::new(k, None).open(&unknown),
            Err(OpenError::Malformed)
        );
    }

    #[test]
    fn token_lengths() {
        let k = keys();
        let one = k
            .seal(&claims(vec![member(0, Some(SDK_SID))], None), NONCE)
            .unwrap();
        let three = k.seal(&three(), NONCE).unwrap();
        let sessionless = k.seal(&claims(vec![member(0, None)], None), NONCE).unwrap();
        println!(
            "token lengths, 20-byte node: 1 member {}, 3 members {}, 1 sessionless {}",
            one.len(),
            three.len(),
            sessionless.len()
        );
        assert_eq!((one.len(), three.len(), sessionless.len()), (148, 244, 104));
        assert_eq!(MAX_CLAIMS_BYTES, 3030);
    }
}
