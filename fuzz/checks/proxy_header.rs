//! proxy_header: `codec::proxy::parse` on the first bytes of a connection when
//! `[server] proxy_protocol` is on (a balancer's PROXY protocol header, v1 or v2).
//!
//! Invariants: nothing panics; a header found is within the input and the bound
//! (`MAX_PROXY_HEADER_BYTES`); every cut of it short of its end is `Incomplete` (a header
//! arriving in pieces is never refused), and bytes after it change nothing (they are the
//! request); input that cannot begin a header is `Invalid` at once; a v2 header built from
//! the input's bytes names the client address it was built with, in one piece or cut.
//!
//! Input: the connection's first bytes; its first 7 bytes also make a client address and the
//! command of a v2 header.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use arbitrary::Unstructured;
use shardcat::codec::proxy::{parse, Proxied, MAX_PROXY_HEADER_BYTES};

#[path = "common.rs"]
mod common;

const V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

pub fn run(input: &[u8]) {
    let got = parse(input);
    let could_begin = |prefix: &[u8]| {
        let n = input.len().min(prefix.len());
        input[..n] == prefix[..n]
    };
    if !input.is_empty() && !could_begin(b"PROXY ") && !could_begin(V2) {
        assert_eq!(got, Proxied::Invalid);
    }
    if let Proxied::Done { len, .. } = got {
        assert!(len > 0 && len <= input.len() && len <= MAX_PROXY_HEADER_BYTES);
        check_whole(&input[..len], got);
    }
    let mut u = Unstructured::new(input);
    let ip: [u8; 4] = common::take(&mut u);
    let port: u16 = common::take(&mut u);
    let local: bool = common::take(&mut u);
    let mut h = V2.to_vec();
    h.extend_from_slice(&[if local { 0x20 } else { 0x21 }, 0x11, 0, 12]);
    // Source address, destination address, source port, destination port.
    h.extend_from_slice(&ip);
    h.extend_from_slice(&[127, 0, 0, 2]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&[0, 80]);
    let client = (!local).then(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port));
    let want = Proxied::Done {
        len: h.len(),
        client,
    };
    assert_eq!(parse(&h), want, "built {h:?}");
    check_whole(&h, want);
}

/// `header` parses to `whole`: every cut short of it waits, and what follows it is ignored.
fn check_whole(header: &[u8], whole: Proxied) {
    for cut in 0..header.len() {
        assert_eq!(parse(&header[..cut]), Proxied::Incomplete, "cut at {cut}");
    }
    let mut more = header.to_vec();
    more.extend_from_slice(b"POST /mcp HTTP/1.1\r\n\r\n");
    assert_eq!(parse(&more), whole, "bytes after the header");
}
