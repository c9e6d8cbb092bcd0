//! request_head: `codec::http::parse_request` under head limits in the range the config
//! accepts, then the Host and Origin checks the pipeline applies (`validate::host_and_origin`).
//!
//! Invariants of an accepted head: it lies inside the input and the limits; parsing only its
//! bytes, or them with anything after, gives the same head; every shorter prefix asks for more
//! bytes (a head's fate never depends on how TCP cut it); its framing is what RFC 9112 §6
//! says (never Content-Length with Transfer-Encoding; chunked only as the only coding; equal
//! Content-Length values), recomputed here from its fields; at most one Host (§3.2); no field
//! value carries CR, LF or NUL. Host and Origin pass exactly when the policy lists them or,
//! in loopback mode, when they name a loopback authority (checked here independently).
//!
//! Input: 2 bytes head-size selector, 1 byte header-count selector, 1 byte policy, 2 × 2
//! bytes prefix cuts, then the head bytes.

use arbitrary::Unstructured;
use shardcat::codec::http::{self, BodyKind, Headers, RequestHead};
use shardcat::config::OriginPolicy;
use shardcat::gateway::validate;

#[path = "common.rs"]
mod common;
#[path = "heads.rs"]
mod heads;

pub fn run(input: &[u8]) {
    let mut u = Unstructured::new(input);
    let limits = heads::limits(common::take(&mut u), common::take(&mut u));
    let policy = policy(common::take(&mut u));
    let cuts: [u16; 2] = [common::take(&mut u), common::take(&mut u)];
    let data = u.take_rest();
    let got = http::parse_request(data, limits);
    assert_eq!(
        heads::class(&got.clone().map(|h| h.map(|h| (h.head_len, h.body)))),
        expected(data, limits)
    );
    let Ok(Some(head)) = got else {
        return;
    };
    let len = head.head_len;
    assert!(
        len <= data.len() && len <= limits.max_head_bytes,
        "{len} bytes"
    );
    assert!(head.headers.len() <= limits.max_headers);
    assert!(head.minor <= 1);
    assert_eq!(data[len - 1], b'\n', "a head ends with its blank line");
    let seen = summary(&head);
    let alone = http::parse_request(&data[..len], limits);
    assert_eq!(
        alone.map(|h| h.map(|h| summary(&h))),
        Ok(Some(seen.clone()))
    );
    let mut more = data[..len].to_vec();
    more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    let followed = http::parse_request(&more, limits);
    assert_eq!(followed.map(|h| h.map(|h| summary(&h))), Ok(Some(seen)));
    for cut in cuts.map(usize::from).into_iter().chain([len - 1]) {
        let prefix = &data[..cut.min(len - 1)];
        let early = http::parse_request(prefix, limits).map(|h| h.is_some());
        assert_eq!(early, Ok(false), "a prefix of {} bytes", prefix.len());
    }
    check_fields(&head.headers);
    let fields = heads::fields(&head.headers);
    assert_eq!(head.keep_alive, heads::keep_alive(&fields, head.minor));
    check_host_and_origin(&policy, &head);
}

/// The outcome RFC 9112 asks for, from httparse's view of the head and the oracle's framing.
fn expected(data: &[u8], limits: http::HeadLimits) -> heads::Class {
    match heads::raw_request(data, limits) {
        heads::Raw::Partial => heads::Class::More,
        heads::Raw::TooLarge => heads::Class::TooLarge,
        heads::Raw::Bad => heads::Class::Rejected,
        heads::Raw::Complete {
            len, minor, fields, ..
        } => {
            let hosts = fields
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(b"host"))
                .count();
            match heads::framing(&fields, minor) {
                Ok(kind) if hosts <= 1 => heads::Class::Head(len, kind.unwrap_or(BodyKind::None)),
                _ => heads::Class::Rejected,
            }
        }
    }
}

/// What two parses of the same head must agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    method: http::Method,
    path: String,
    minor: u8,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    body: BodyKind,
    keep_alive: bool,
    head_len: usize,
}

fn summary(h: &RequestHead) -> Summary {
    Summary {
        method: h.method,
        path: h.path.clone(),
        minor: h.minor,
        fields: heads::fields(&h.headers),
        body: h.body,
        keep_alive: h.keep_alive,
        head_len: h.head_len,
    }
}

fn check_fields(headers: &Headers) {
    let mut hosts = 0;
    for (name, value) in headers.iter_raw() {
        assert!(!name.is_empty() && name.iter().all(|&b| heads::is_tchar(b)));
        assert!(!value.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)));
        hosts += usize::from(name.eq_ignore_ascii_case(b"host"));
    }
    assert!(
        hosts <= 1,
        "a request with {hosts} Host fields was accepted"
    );
}

/// Three policies: the loopback default, explicit lists, and any Host with no Origin allowed.
fn policy(selector: u8) -> OriginPolicy {
    let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    match selector % 3 {
        0 => OriginPolicy {
            origins: vec![],
            loopback_origins: true,
            hosts: vec![],
            loopback_hosts: true,
        },
        1 => OriginPolicy {
            origins: list(&["https://app.example.com", "http://localhost:3000"]),
            loopback_origins: false,
            hosts: list(&["mcp.example.com", "mcp.example.com:8443", "127.0.0.1:8080"]),
            loopback_hosts: false,
        },
        _ => OriginPolicy {
            origins: vec![],
            loopback_origins: false,
            hosts: vec![],
            loopback_hosts: false,
        },
    }
}

fn check_host_and_origin(policy: &OriginPolicy, head: &RequestHead) {
    let host = head.headers.get("host");
    let origin = head.headers.get("origin");
    let want_host = match host {
        None => head.minor == 0,
        Some(h) => std::str::from_utf8(h).is_ok_and(|h| host_allowed(policy, h.trim())),
    };
    let want_origin = match origin {
        None => true,
        Some(o) => std::str::from_utf8(o).is_ok_and(|o| origin_allowed(policy, o.trim())),
    };
    let got = validate::host_and_origin(policy, head);
    assert_eq!(
        got.is_ok(),
        want_host && want_origin,
        "host {:?} origin {:?}: {:?}",
        host.map(String::from_utf8_lossy),
        origin.map(String::from_utf8_lossy),
        got.err().map(|e| e.to_string())
    );
}

fn host_allowed(p: &OriginPolicy, host: &str) -> bool {
    let h = host.to_ascii_lowercase();
    if p.loopback_hosts {
        return loopback_authority(&h);
    }
    p.hosts.is_empty() || p.hosts.contains(&h)
}

fn origin_allowed(p: &OriginPolicy, origin: &str) -> bool {
    let o = origin.trim_end_matches('/').to_ascii_lowercase();
    if p.origins.contains(&o) {
        return true;
    }
    let authority = o
        .strip_prefix("http://")
        .or_else(|| o.strip_prefix("https://"));
    p.loopback_origins && authority.is_some_and(loopback_authority)
}

/// `localhost`, a 127/8 address or `[::1]`, with an optional port.
fn loopback_authority(a: &str) -> bool {
    let (host, port) = match a.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some(("::1", "")) => return true,
            Some(("::1", p)) => return p.strip_prefix(':').is_some_and(port_ok),
            _ => return false,
        },
        None => match a.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        },
    };
    let name_ok = host == "localhost"
        || (host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback()));
    name_ok && port.is_none_or(port_ok)
}

fn port_ok(p: &str) -> bool {
    // RFC 3986: port = *DIGIT; leading zeros allowed, the value must fit a u16.
    p.bytes().all(|b| b.is_ascii_digit()) && (p.is_empty() || p.parse::<u16>().is_ok())
}
