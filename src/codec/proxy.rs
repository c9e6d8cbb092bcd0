//! The PROXY protocol header (HAProxy's `send-proxy` and `send-proxy-v2`): what a balancer in
//! front of the gateway writes before a connection's first request, naming the client's
//! address. Parsing is the `ppp` crate's (both versions, TLVs skipped); this module bounds the
//! header and maps the answer to what the gateway needs.
//!
//! Invariants: `parse` never asks for more than `MAX_PROXY_HEADER_BYTES`; a `Done` length is
//! within the input; nothing here panics on what a peer sends.

use std::net::{IpAddr, SocketAddr};

use ppp::{v1, v2, PartialResult};

/// The longest header accepted: a v1 line is at most 107 bytes; a v2 header is 16 bytes and
/// the addresses and TLVs its length names. HAProxy's own (addresses, a unique id, TLS facts)
/// stay well under this.
pub const MAX_PROXY_HEADER_BYTES: usize = 1024;

/// What the start of a connection holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxied {
    /// A header, not whole yet: read more.
    Incomplete,
    /// A header of `len` bytes. `client`: the address it names; `None` for a `LOCAL` command
    /// (the balancer's own health check) or an `UNKNOWN` or unix address, where the
    /// connection's own peer is the client.
    Done {
        len: usize,
        client: Option<SocketAddr>,
    },
    /// Not a PROXY protocol header, or one over the bound.
    Invalid,
}

/// The longest v1 line, CRLF included (the specification's bound).
const V1_MAX_BYTES: usize = 107;

/// How each version's header begins.
const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Whether `buf` starts as `prefix` does, as far as it goes.
fn starts_as(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

/// The PROXY protocol header at the start of `buf`. Anything that cannot begin one (a plain
/// HTTP request) is `Invalid` at its first byte, without waiting for more.
pub fn parse(buf: &[u8]) -> Proxied {
    if buf.is_empty() {
        return Proxied::Incomplete;
    }
    if starts_as(buf, V1_PREFIX) {
        return parse_v1(buf);
    }
    if !starts_as(buf, V2_SIGNATURE) {
        return Proxied::Invalid;
    }
    let head = &buf[..buf.len().min(MAX_PROXY_HEADER_BYTES)];
    match v2::Header::try_from(head) {
        Ok(h) if (1..=head.len()).contains(&h.len()) => Proxied::Done {
            len: h.len(),
            client: v2_client(&h),
        },
        Err(e) if e.is_incomplete() && buf.len() < MAX_PROXY_HEADER_BYTES => Proxied::Incomplete,
        _ => Proxied::Invalid,
    }
}

/// A v1 line is judged once its CRLF is in (the parser would refuse a line cut short, a
/// header that arrived in two reads); none within 107 bytes: not a header.
fn parse_v1(buf: &[u8]) -> Proxied {
    let head = &buf[..buf.len().min(V1_MAX_BYTES)];
    let Some(end) = head.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX_BYTES {
            Proxied::Invalid
        } else {
            Proxied::Incomplete
        };
    };
    let line = &head[..end + 2];
    match v1::Header::try_from(line) {
        Ok(h) if h.header.len() == line.len() => Proxied::Done {
            len: line.len(),
            client: v1_client(&h.addresses),
        },
        _ => Proxied::Invalid,
    }
}

fn v1_client(a: &v1::Addresses) -> Option<SocketAddr> {
    match a {
        v1::Addresses::Tcp4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        v1::Addresses::Tcp6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        v1::Addresses::Unknown => None,
    }
}

fn v2_client(h: &v2::Header<'_>) -> Option<SocketAddr> {
    if h.command == v2::Command::Local {
        return None;
    }
    match &h.addresses {
        v2::Addresses::IPv4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        v2::Addresses::IPv6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &[u8] = V2_SIGNATURE;

    fn v2_tcp4(command: u8) -> Vec<u8> {
        let mut h = SIG.to_vec();
        h.extend_from_slice(&[0x20 | command, 0x11, 0, 12]);
        h.extend_from_slice(&[203, 0, 113, 7, 127, 0, 0, 2, 0x30, 0x39, 0x1f, 0x90]);
        h
    }

    #[test]
    fn both_versions_name_the_client() {
        let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.2 12345 8080\r\nPOST /mcp HTTP/1.1\r\n";
        let want: SocketAddr = "203.0.113.7:12345".parse().unwrap();
        assert_eq!(
            parse(v1),
            Proxied::Done {
                len: v1.iter().position(|&b| b == b'\n').unwrap() + 1,
                client: Some(want)
            }
        );
        let mut v2 = v2_tcp4(1);
        let len = v2.len();
        v2.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&v2),
            Proxied::Done {
                len,
                client: Some(want)
            }
        );
        let v6 = b"PROXY TCP6 2001:db8::1 ::1 443 8080\r\n";
        let six: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        assert_eq!(
            parse(v6),
            Proxied::Done {
                len: v6.len(),
                client: Some(six)
            }
        );
    }

    #[test]
    fn local_and_unknown_leave_the_peer_as_the_client() {
        let local = v2_tcp4(0);
        assert_eq!(
            parse(&local),
            Proxied::Done {
                len: local.len(),
                client: None
            }
        );
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            parse(unknown),
            Proxied::Done {
                len: unknown.len(),
                client: None
            }
        );
    }

    #[test]
    fn partial_headers_wait_and_others_are_refused() {
        let v2 = v2_tcp4(1);
        for cut in [1, 5, 12, 15, 20, v2.len() - 1] {
            assert_eq!(parse(&v2[..cut]), Proxied::Incomplete, "v2 cut at {cut}");
        }
        assert_eq!(parse(b"PROXY TCP4 203.0.113.7"), Proxied::Incomplete);
        assert_eq!(parse(b"POST /mcp HTTP/1.1\r\n\r\n"), Proxied::Invalid);
        assert_eq!(parse(b"P"), Proxied::Incomplete, "could still be PROXY");
        assert_eq!(parse(b"G"), Proxied::Invalid, "a plain request, at once");
        assert_eq!(parse(b"PROXY TCP4 nonsense\r\n"), Proxied::Invalid);
        // A v2 header naming 60000 bytes of TLVs: refused once the bound is read.
        let mut big = SIG.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xea, 0x60]);
        big.resize(MAX_PROXY_HEADER_BYTES, 0);
        assert_eq!(parse(&big[..100]), Proxied::Incomplete);
        assert_eq!(parse(&big), Proxied::Invalid);
    }
}
