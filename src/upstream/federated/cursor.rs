//! The opaque cursor of a merged list: where each member of the route stands (not asked
//! yet, at a cursor of its own, or done), bound to the route it was made for.
//!
//! Form: base64url (no padding) of `version (1) · binding tag (8, LE) · member count (1) ·
//! one position per member`, a position being `0` (start), `1` (done) or `2 · LEB128 length ·
//! the server's cursor (UTF-8)`. The tag is FNV-1a 64 of the route path and its servers'
//! names, so a cursor from another route, or from before the route's servers changed, is
//! refused rather than sent to the wrong server. It is not a secret: a client that forges a
//! cursor can only send a server a cursor of its choosing, which it could do directly.
//!
//! Invariants: `decode` never panics and refuses, with a reason, anything but the one form
//! `encode` writes: text over `DEFAULT_MAX_CURSOR_BYTES`, non-canonical base64, another
//! version or binding, a truncated or over-long body, a non-minimal length. So
//! `decode(encode(c)) == c` and `encode(decode(s)) == s`. `encode` refuses to write what
//! `decode` would refuse (a server cursor too long to fit).

use std::fmt;

use crate::config::ServerConfig;

/// The longest cursor text the gateway writes or reads.
pub const DEFAULT_MAX_CURSOR_BYTES: usize = 8 * 1024;
/// The form's version byte.
const VERSION: u8 = 1;
const START: u8 = 0;
const DONE: u8 = 1;
const AT: u8 = 2;
/// Version, tag, member count.
const HEADER_BYTES: usize = 1 + 8 + 1;

/// Where one member's list stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// Not asked yet: its first page is asked without a cursor.
    Start,
    /// Asked again with its own cursor.
    At(String),
    /// No more pages (or left out): not asked again.
    Done,
}

/// What a cursor is bound to: a route and its servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    tag: u64,
    members: usize,
}

impl Binding {
    /// The binding of the route at `route_path` whose servers are `members` (route order).
    pub fn new(route_path: &str, members: &[&ServerConfig]) -> Binding {
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        Binding::of_names(route_path, &names)
    }

    /// The same from the servers' names.
    pub fn of_names(route_path: &str, members: &[&str]) -> Binding {
        let mut h = Fnv::new();
        h.write(route_path.as_bytes());
        for name in members {
            // 0xff never occurs in UTF-8: the fields cannot run into each other.
            h.write(&[0xff]);
            h.write(name.as_bytes());
        }
        Binding {
            tag: h.0,
            members: members.len(),
        }
    }

    pub fn members(&self) -> usize {
        self.members
    }

    /// The tag a cursor carries (tests and the fuzz target build raw cursors with it).
    pub fn tag(&self) -> u64 {
        self.tag
    }
}

/// FNV-1a, 64 bits: stable across builds and releases (a cursor outlives a restart).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Why a cursor was refused (answered as JSON-RPC -32602, invalid params).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorError {
    TooLong,
    NotBase64,
    Truncated,
    Version(u8),
    /// Made for another route, or for this route before its servers changed.
    OtherRoute,
    BadPosition(u8),
    NonMinimalLength,
    NotUtf8,
    /// Bytes after the last position.
    Trailing,
}

impl fmt::Display for CursorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CursorError::TooLong => write!(f, "cursor over {DEFAULT_MAX_CURSOR_BYTES} bytes"),
            CursorError::NotBase64 => write!(f, "cursor is not base64url"),
            CursorError::Truncated => write!(f, "cursor is truncated"),
            CursorError::Version(v) => write!(f, "cursor version {v} is not known"),
            CursorError::OtherRoute => write!(f, "cursor was not made for this route"),
            CursorError::BadPosition(p) => write!(f, "cursor holds an unknown position {p}"),
            CursorError::NonMinimalLength => write!(f, "cursor holds a non-minimal length"),
            CursorError::NotUtf8 => write!(f, "cursor holds a server cursor that is not UTF-8"),
            CursorError::Trailing => write!(f, "cursor has bytes after its last position"),
        }
    }
}

/// Where each member of a route stands in a merged list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    binding: Binding,
    positions: Vec<Position>,
}

impl Cursor {
    /// A list from its beginning (no cursor from the client).
    pub fn start(binding: Binding) -> Cursor {
        Cursor {
            binding,
            positions: vec![Position::Start; binding.members],
        }
    }

    /// A cursor of these positions; `None` unless there is one per member.
    pub fn from_positions(binding: Binding, positions: Vec<Position>) -> Option<Cursor> {
        (positions.len() == binding.members).then_some(Cursor { binding, positions })
    }

    pub fn binding(&self) -> Binding {
        self.binding
    }

    pub fn positions(&self) -> &[Position] {
        &self.positions
    }

    /// Member `member`'s position (`Done` past the last member).
    pub fn position(&self, member: usize) -> &Position {
        self.positions.get(member).unwrap_or(&Position::Done)
    }

    /// Sets member `member`'s position (ignored past the last member).
    pub fn set(&mut self, member: usize, position: Position) {
        if let Some(p) = self.positions.get_mut(member) {
            *p = position;
        }
    }

    /// Whether every member is done: the list has no next page.
    pub fn is_done(&self) -> bool {
        self.positions.iter().all(|p| *p == Position::Done)
    }

    /// The members to ask for this page, each with the cursor to send it (`None`: no cursor,
    /// its first page).
    pub fn requests(&self) -> impl Iterator<Item = (usize, Option<&str>)> {
        self.positions
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match p {
                Position::Start => Some((i, None)),
                Position::At(c) => Some((i, Some(c.as_str()))),
                Position::Done => None,
            })
    }

    /// The cursor's text; refused when it would exceed `DEFAULT_MAX_CURSOR_BYTES` (a server's
    /// cursor too long to carry).
    pub fn encode(&self) -> Result<String, CursorError> {
        let mut raw = Vec::with_capacity(HEADER_BYTES + self.positions.len());
        raw.push(VERSION);
        raw.extend_from_slice(&self.binding.tag.to_le_bytes());
        // At most MAX_ROUTE_SERVERS (64) members; a larger count cannot be decoded.
        raw.push(u8::try_from(self.positions.len()).map_err(|_| CursorError::TooLong)?);
        for p in &self.positions {
            match p {
                Position::Start => raw.push(START),
                Position::Done => raw.push(DONE),
                Position::At(c) => {
                    raw.push(AT);
                    write_len(&mut raw, c.len());
                    raw.extend_from_slice(c.as_bytes());
                }
            }
            if base64_len(raw.len()) > DEFAULT_MAX_CURSOR_BYTES {
                return Err(CursorError::TooLong);
            }
        }
        Ok(base64url(&raw))
    }

    /// Reads a client's cursor for the route `binding` names.
    pub fn decode(text: &str, binding: Binding) -> Result<Cursor, CursorError> {
        if text.len() > DEFAULT_MAX_CURSOR_BYTES {
            return Err(CursorError::TooLong);
        }
        let raw = unbase64url(text.as_bytes()).ok_or(CursorError::NotBase64)?;
        let mut r = Reader(&raw);
        let version = r.byte()?;
        if version != VERSION {
            return Err(CursorError::Version(version));
        }
        let tag = u64::from_le_bytes(r.take(8)?.try_into().map_err(|_| CursorError::Truncated)?);
        let count = usize::from(r.byte()?);
        if tag != binding.tag || count != binding.members {
            return Err(CursorError::OtherRoute);
        }
        let mut positions = Vec::with_capacity(count);
        for _ in 0..count {
            positions.push(match r.byte()? {
                START => Position::Start,
                DONE => Position::Done,
                AT => {
                    let len = r.len()?;
                    let bytes = r.take(len)?;
                    let s = std::str::from_utf8(bytes).map_err(|_| CursorError::NotUtf8)?;
                    Position::At(s.to_string())
                }
                other => return Err(CursorError::BadPosition(other)),
            });
        }
        if !r.0.is_empty() {
            return Err(CursorError::Trailing);
        }
        Ok(Cursor { binding, positions })
    }
}

/// LEB128.
fn write_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, CursorError> {
        let (&b, rest) = self.0.split_first().ok_or(CursorError::Truncated)?;
        self.0 = rest;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CursorError> {
        if n > self.0.len() {
            return Err(CursorError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// A LEB128 length: minimal, and no longer than what is left (so it cannot overflow).
    fn len(&mut self) -> Result<usize, CursorError> {
        let mut n: usize = 0;
        for shift in (0..).step_by(7).take(3) {
            let b = self.byte()?;
            n |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                if b == 0 && shift > 0 {
                    return Err(CursorError::NonMinimalLength);
                }
                return Ok(n);
            }
        }
        // Three 7-bit groups (2 MiB) exceed any cursor that fits the bound.
        Err(CursorError::TooLong)
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64_len(bytes: usize) -> usize {
    (bytes * 4).div_ceil(3)
}

fn base64url(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(base64_len(bytes.len()));
    for chunk in bytes.chunks(3) {
        let mut acc = [0u8; 3];
        acc[..chunk.len()].copy_from_slice(chunk);
        let n = u32::from(acc[0]) << 16 | u32::from(acc[1]) << 8 | u32::from(acc[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize] as char);
        }
    }
    out
}

/// Strict base64url without padding: only the alphabet, no `len % 4 == 1`, and the unused
/// low bits of the last character zero (one text per byte string).
fn unbase64url(text: &[u8]) -> Option<Vec<u8>> {
    let val = |c: u8| ALPHABET.iter().position(|a| *a == c).map(|v| v as u32);
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        let keep = chunk.len() - 1;
        if bytes[1 + keep..].iter().any(|b| *b != 0) {
            return None;
        }
        out.extend_from_slice(&bytes[1..1 + keep]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding() -> Binding {
        Binding::of_names("/mcp", &["a", "b"])
    }

    #[test]
    fn round_trips() {
        let mut c = Cursor::start(binding());
        assert_eq!(
            Cursor::decode(&c.encode().unwrap(), binding()),
            Ok(c.clone())
        );
        c.set(0, Position::At("page=2/é".into()));
        c.set(1, Position::Done);
        let text = c.encode().unwrap();
        assert!(text.bytes().all(|b| ALPHABET.contains(&b)), "{text}");
        assert_eq!(Cursor::decode(&text, binding()), Ok(c.clone()));
        let long = Position::At("x".repeat(300));
        c.set(1, long.clone());
        assert_eq!(
            Cursor::decode(&c.encode().unwrap(), binding())
                .unwrap()
                .positions()[1],
            long
        );
    }

    #[test]
    fn says_who_to_ask() {
        let mut c = Cursor::start(binding());
        c.set(1, Position::At("n".into()));
        let asks: Vec<_> = c.requests().collect();
        assert_eq!(asks, [(0, None), (1, Some("n"))]);
        c.set(0, Position::Done);
        assert!(!c.is_done());
        c.set(1, Position::Done);
        assert!(c.is_done());
        assert_eq!(c.requests().count(), 0);
    }

    #[test]
    fn refuses_another_route_or_server_set() {
        let text = Cursor::start(binding()).encode().unwrap();
        let other = Binding::of_names("/other", &["a", "b"]);
        assert_eq!(Cursor::decode(&text, other), Err(CursorError::OtherRoute));
        let changed = Binding::of_names("/mcp", &["a", "c"]);
        assert_eq!(Cursor::decode(&text, changed), Err(CursorError::OtherRoute));
        let fewer = Binding::of_names("/mcp", &["ab"]);
        assert_eq!(Cursor::decode(&text, fewer), Err(CursorError::OtherRoute));
    }

    #[test]
    fn refuses_malformed_text() {
        let b = binding();
        let good = Cursor::start(b).encode().unwrap();
        assert_eq!(Cursor::decode("", b), Err(CursorError::Truncated));
        assert_eq!(Cursor::decode("a", b), Err(CursorError::NotBase64));
        assert_eq!(Cursor::decode("ab+/", b), Err(CursorError::NotBase64));
        assert_eq!(
            Cursor::decode(&format!("{good}="), b),
            Err(CursorError::NotBase64)
        );
        let huge = "A".repeat(DEFAULT_MAX_CURSOR_BYTES + 4);
        assert_eq!(Cursor::decode(&huge, b), Err(CursorError::TooLong));
        let raw = |bytes: &[u8]| Cursor::decode(&base64url(bytes), b);
        let head = |v: u8| {
            let mut h = vec![v];
            h.extend_from_slice(&b.tag.to_le_bytes());
            h.push(2);
            h
        };
        assert_eq!(
            raw(&[head(1), vec![0, 9]].concat()),
            Err(CursorError::BadPosition(9))
        );
        assert_eq!(raw(&head(2)), Err(CursorError::Version(2)));
        assert_eq!(
            raw(&[head(1), vec![0]].concat()),
            Err(CursorError::Truncated)
        );
        assert_eq!(
            raw(&[head(1), vec![0, 1, 7]].concat()),
            Err(CursorError::Trailing)
        );
        assert_eq!(
            raw(&[head(1), vec![0, 2, 5, b'a']].concat()),
            Err(CursorError::Truncated)
        );
        assert_eq!(
            raw(&[head(1), vec![0, 2, 0x81, 0]].concat()),
            Err(CursorError::NonMinimalLength)
        );
        assert_eq!(
            raw(&[head(1), vec![0, 2, 0xff, 0xff, 0xff, 1]].concat()),
            Err(CursorError::TooLong)
        );
        assert_eq!(
            raw(&[head(1), vec![0, 2, 1, 0xff]].concat()),
            Err(CursorError::NotUtf8)
        );
        // Non-canonical base64: 14 bytes end in a character with 2 unused bits; set one.
        let mut c = Cursor::start(b);
        c.set(1, Position::At("x".into()));
        let mut odd = c.encode().unwrap().into_bytes();
        assert_eq!(odd.len() % 4, 3);
        let last = odd.pop().unwrap();
        let v = ALPHABET.iter().position(|a| *a == last).unwrap();
        odd.push(ALPHABET[v | 1]);
        let odd = String::from_utf8(odd).unwrap();
        assert_eq!(Cursor::decode(&odd, b), Err(CursorError::NotBase64));
    }

    #[test]
    fn refuses_to_write_what_it_would_not_read() {
        let mut c = Cursor::start(binding());
        c.set(0, Position::At("x".repeat(DEFAULT_MAX_CURSOR_BYTES)));
        assert_eq!(c.encode(), Err(CursorError::TooLong));
        c.set(
            0,
            Position::At("x".repeat(DEFAULT_MAX_CURSOR_BYTES * 3 / 4 - 20)),
        );
        let text = c.encode().unwrap();
        assert!(text.len() <= DEFAULT_MAX_CURSOR_BYTES);
        assert_eq!(Cursor::decode(&text, binding()), Ok(c));
    }

    #[test]
    fn base64url_matches_rfc_4648_vectors() {
        for (raw, text) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
        ] {
            assert_eq!(base64url(raw.as_bytes()), text);
            assert_eq!(unbase64url(text.as_bytes()).unwrap(), raw.as_bytes());
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }
}
