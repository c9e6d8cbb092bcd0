//! Hostile clients over raw sockets: every malformed or hostile request of the table gets its
//! exact answer (status, and whether the connection closes), a body over the limit sent
//! without `Expect: 100-continue` still reaches its 413 (a lingering close, not a reset), and
//! hundreds of stalled heads are let go within the head timeout while good traffic goes on.

#[path = "support/process.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::*;

const V: (&str, &str) = ("mcp-protocol-version", "2025-06-18");

/// One row: what is sent, the status it must get, and whether the connection must close (it
/// must when the request's body was not read, or its head was bad).
struct Case {
    name: &'static str,
    request: String,
    status: u16,
    closes: bool,
}

fn case(name: &'static str, request: String, status: u16, closes: bool) -> Case {
    Case {
        name,
        request,
        status,
        closes,
    }
}

fn table(addr: SocketAddr, sid: &str) -> Vec<Case> {
    let post = |extra: &str, body: &str| {
        format!(
            "POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\n{extra}content-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let many: String = (0..40).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let forged = format!("mcp-session-id: {}\r\n", "7".repeat(sid.len()));
    let other_shard = {
        // The same session id, its shard byte changed: a session no shard holds.
        let mut s: Vec<char> = sid.chars().collect();
        s[1] = if s[1] == '1' { '0' } else { '1' };
        format!("mcp-session-id: {}\r\n", s.into_iter().collect::<String>())
    };
    vec![
        case(
            "CL and TE together",
            format!("POST /mcp HTTP/1.1\r\nhost: {addr}\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n"),
            400,
            true,
        ),
        case(
            "conflicting CL",
            format!("POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{{}}"),
            400,
            true,
        ),
        case(
            "negative CL",
            format!("POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-length: -1\r\n\r\n"),
            400,
            true,
        ),
        case(
            "huge header",
            format!("POST /mcp HTTP/1.1\r\nhost: {addr}\r\nx-pad: {}\r\n\r\n", "y".repeat(20_000)),
            431,
            true,
        ),
        case(
            "numerous headers",
            format!("POST /mcp HTTP/1.1\r\nhost: {addr}\r\n{many}\r\n"),
            431,
            true,
        ),
        case(
            "NUL byte in a header",
            format!("POST /mcp HTTP/1.1\r\nhost: {addr}\r\nx-a: b\0c\r\ncontent-length: 0\r\n\r\n"),
            400,
            true,
        ),
        case(
            "obsolete line folding",
            format!("POST /mcp HTTP/1.1\r\nhost: {addr}\r\nx-a: b\r\n  folded\r\ncontent-length: 0\r\n\r\n"),
            400,
            true,
        ),
        case("garbage request line", "GARBAGE\r\n\r\n".into(), 400, true),
        case(
            "unknown HTTP version",
            format!("POST /mcp HTTP/9.9\r\nhost: {addr}\r\n\r\n"),
            400,
            true,
        ),
        case(
            "absolute-form target of this gateway",
            post("", INIT).replacen("POST /mcp ", &format!("POST http://{addr}/mcp "), 1),
            200,
            false,
        ),
        case(
            "absolute-form target of another host",
            post("", ping).replacen("POST /mcp ", "POST http://evil.example/mcp ", 1),
            421,
            true,
        ),
        case(
            "bad chunk size",
            format!("POST /mcp HTTP/1.1\r\nhost: {addr}\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"),
            400,
            true,
        ),
        case(
            "chunk size past 64 bits",
            format!("POST /mcp HTTP/1.1\r\nhost: {addr}\r\ntransfer-encoding: chunked\r\n\r\n1ffffffffffffffff\r\n{{}}\r\n0\r\n\r\n"),
            400,
            true,
        ),
        case(
            "negative chunk size",
            format!("POST /mcp HTTP/1.1\r\nhost: {addr}\r\ntransfer-encoding: chunked\r\n\r\n-2\r\n{{}}\r\n0\r\n\r\n"),
            400,
            true,
        ),
        case(
            "foreign Host",
            post("", ping).replacen(&format!("host: {addr}"), "host: evil.example", 1),
            421,
            true,
        ),
        case("foreign Origin", post("origin: http://evil.example\r\n", ping), 403, true),
        case("forged session", post(&forged, ping), 404, false),
        case("session of no shard", post(&other_shard, ping), 404, false),
        case("unknown path", format!("GET /admin HTTP/1.1\r\nhost: {addr}\r\n\r\n"), 404, false),
        case(
            "unknown method",
            format!("PATCH /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\n\r\n"),
            405,
            false,
        ),
    ]
}

/// Sends one request on a fresh connection; returns the status and whether the gateway then
/// closed the connection.
fn answer(addr: SocketAddr, request: &[u8]) -> (u16, bool) {
    let mut c = Client::connect(addr);
    c.send_raw(request).expect("send");
    let status = c.read_response().map_or(0, |r| r.status);
    (status, c.is_closed())
}

#[test]
fn every_hostile_request_gets_its_exact_answer() {
    let demo = demo();
    let gw = gateway(
        &demo_url(&demo),
        2,
        Some("[limits]\nmax_head_bytes = 8192\nmax_headers = 32\n"),
    );
    let addr = gw.addr("listen");
    let sid = initialize(addr);
    // All at once (a connection kept open takes the whole read timeout to tell).
    let cases = table(addr, &sid);
    let wrong: Vec<String> = std::thread::scope(|scope| {
        let runs: Vec<_> = cases
            .iter()
            .map(|c| scope.spawn(move || (c, answer(addr, c.request.as_bytes()))))
            .collect();
        runs.into_iter()
            .filter_map(|r| {
                let (c, (status, closed)) = r.join().expect("case thread");
                (status != c.status || closed != c.closes).then(|| {
                    format!(
                        "{}: got {status} (closed: {closed}), want {} (closed: {})",
                        c.name, c.status, c.closes
                    )
                })
            })
            .collect()
    });
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    // The session is still served on both shards after all of that.
    let r = post(addr, &[("mcp-session-id", &sid), V], &echo_call(9, "alive"));
    assert_eq!(r.json()["result"]["content"][0]["text"], "alive");
}

/// Sends a head announcing `len` body bytes and then the body, as fast as the socket takes it,
/// without waiting for an answer; returns what the client reads, and how its read ended.
fn oversized_post(addr: SocketAddr, len: usize) -> (Vec<u8>, std::io::Result<()>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    );
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(head.as_bytes());
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent < len {
            let n = chunk.len().min(len - sent);
            if w.write_all(&chunk[..n]).is_err() {
                break;
            }
            sent += n;
        }
    });
    let mut got = Vec::new();
    let end = s.read_to_end(&mut got).map(|_| ());
    let _ = writer.join();
    (got, end)
}

#[test]
fn a_body_over_the_limit_without_expect_still_gets_its_413() {
    let demo = demo();
    let gw = gateway(&demo_url(&demo), 1, None);
    let addr = gw.addr("listen");
    // 8 MiB against the default max_body_bytes (4 MiB), several times: the answer must arrive
    // every time, and the connection end cleanly (EOF), not with a reset.
    for round in 0..5 {
        let (got, end) = oversized_post(addr, 8 * 1024 * 1024);
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 413"),
            "round {round}: the client read {:?} ({end:?})",
            &text[..text.len().min(80)]
        );
        assert!(end.is_ok(), "round {round}: the read ended with {end:?}");
        assert!(text.contains("connection: close"), "{text}");
    }
    assert_eq!(post(addr, &[], INIT).status, 200);
}

#[test]
fn stalled_heads_are_let_go_while_good_traffic_goes_on() {
    let demo = demo();
    let toml = "[timeouts]\nclient_head_timeout_ms = 1000\n";
    let gw = gateway(&demo_url(&demo), 2, Some(toml));
    let addr = gw.addr("listen");
    let mut stalled: Vec<TcpStream> = (0..300)
        .map(|i| {
            let mut s = TcpStream::connect(addr).expect("connect");
            // Half a head, never finished.
            let _ = write!(s, "POST /mcp HTTP/1.1\r\nhost: {addr}\r\nx-stall: {i}");
            s
        })
        .collect();
    // Good traffic is served meanwhile.
    let sid = initialize(addr);
    for i in 0..20 {
        let r = post(addr, &[("mcp-session-id", &sid), V], &echo_call(i, "go"));
        assert_eq!(r.status, 200);
    }
    // Every stalled connection gets its 408 and is closed (a connection the gateway kept would
    // time out this read instead).
    let mut let_go = 0;
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        if String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408") {
            let_go += 1;
        }
    }
    assert_eq!(let_go, 300, "stalled connections answered 408");
    let r = post(
        addr,
        &[("mcp-session-id", &sid), V],
        &echo_call(99, "after"),
    );
    assert_eq!(r.status, 200);
}
