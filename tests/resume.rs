//! SSE resumption through the gateway, with real processes: gateway-named event ids, a client
//! resuming a broken stream with `Last-Event-ID`, upstream streams that drop (reconnected with
//! the upstream's own last id), an upstream killed mid-stream, the SSE idle timeout, and
//! detached streams nobody resumes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[path = "support/process.rs"]
mod support;
use support::*;

const V: (&str, &str) = ("mcp-protocol-version", "2025-06-18");

/// One SSE event as the client sees it.
#[derive(Debug, Clone)]
struct Event {
    id: Option<String>,
    data: String,
}

/// Reads an SSE response incrementally over a raw socket.
struct SseReader {
    s: TcpStream,
    buf: Vec<u8>,
    body: Vec<u8>,
    pub status: u16,
    /// The response head, lowercased.
    head: String,
    /// `:` comments seen (keepalives).
    comments: usize,
    ended: bool,
}

impl SseReader {
    /// Sends `request` and reads the response head.
    fn open(addr: SocketAddr, request: &str) -> SseReader {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut r = SseReader {
            s,
            buf: Vec::new(),
            body: Vec::new(),
            status: 0,
            head: String::new(),
            comments: 0,
            ended: false,
        };
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = resp.parse(&r.buf) {
                r.status = resp.code.unwrap_or(0);
                r.head = String::from_utf8_lossy(&r.buf[..n]).to_ascii_lowercase();
                r.buf.drain(..n);
                return r;
            }
            assert!(r.fill(), "closed before the response head");
        }
    }

    fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 16384];
        match self.s.read(&mut tmp) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    /// Moves whole chunks from `buf` into `body`; notes the last chunk.
    fn dechunk(&mut self) {
        loop {
            let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = std::str::from_utf8(&self.buf[..eol])
                .ok()
                .and_then(|t| usize::from_str_radix(t.trim(), 16).ok())
                .expect("chunk size");
            if self.buf.len() < eol + 2 + size + 2 {
                return;
            }
            self.body
                .extend_from_slice(&self.buf[eol + 2..eol + 2 + size]);
            self.buf.drain(..eol + 2 + size + 2);
            if size == 0 {
                self.ended = true;
                return;
            }
        }
    }

    /// The next event with data or an id (comments skipped); `None` when the stream ended
    /// (cleanly or not).
    fn next(&mut self) -> Option<Event> {
        loop {
            self.dechunk();
            if let Some(end) = self.body.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.body.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&raw).into_owned();
                let mut ev = Event {
                    id: None,
                    data: String::new(),
                };
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        ev.data.push_str(v.trim_start());
                    }
                }
                if ev.id.is_some() || !ev.data.is_empty() {
                    return Some(ev);
                }
                if text.starts_with(':') {
                    self.comments += 1;
                }
                continue;
            }
            if self.ended || !self.fill() {
                return None;
            }
        }
    }

    /// Whether the stream ended with its last chunk (not a cut connection).
    fn ended_cleanly(&mut self) -> bool {
        while !self.ended {
            self.dechunk();
            if !self.ended && !self.fill() {
                break;
            }
        }
        self.ended
    }
}

fn post_request(addr: SocketAddr, sid: &str, body: &str) -> String {
    format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\nmcp-session-id: {sid}\r\nmcp-protocol-version: 2025-06-18\r\naccept: application/json, text/event-stream\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn get_request(addr: SocketAddr, sid: &str, last: Option<&str>) -> String {
    let last = last.map_or(String::new(), |l| format!("last-event-id: {l}\r\n"));
    format!(
        "GET /mcp HTTP/1.1\r\nhost: {addr}\r\nmcp-session-id: {sid}\r\nmcp-protocol-version: 2025-06-18\r\naccept: text/event-stream\r\n{last}\r\n"
    )
}

fn progress(id: u64, count: u64, interval_ms: u64, drop_after: Option<u64>) -> String {
    let drop = drop_after.map_or(String::new(), |k| format!(r#","drop_after":{k}"#));
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"progress","arguments":{{"count":{count},"interval_ms":{interval_ms}{drop}}},"_meta":{{"progressToken":"t{id}"}}}}}}"#
    )
}

/// `<stream>-<seq>` → (stream, seq).
fn split_id(id: &str) -> (u32, u64) {
    let (a, b) = id.split_once('-').expect("gateway event id");
    (a.parse().unwrap(), b.parse().unwrap())
}

fn json(data: &str) -> serde_json::Value {
    serde_json::from_str(data).unwrap_or_else(|e| panic!("bad event data {data}: {e}"))
}

#[test]
fn a_client_resumes_a_broken_post_stream_from_its_last_event_id() {
    let demo = demo();
    let gw = gateway(&demo_url(&demo), 2, None);
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let sid = initialize(addr);
    let mut first = SseReader::open(addr, &post_request(addr, &sid, &progress(5, 8, 60, None)));
    assert_eq!(first.status, 200);
    let a = first.next().expect("event 1");
    let b = first.next().expect("event 2");
    let (stream, s1) = split_id(a.id.as_deref().expect("gateway id"));
    assert_eq!(split_id(b.id.as_deref().unwrap()), (stream, s1 + 1));
    assert_eq!(json(&b.data)["params"]["progress"], 2);
    // The client's connection breaks; the gateway keeps reading the upstream for it.
    drop(first);
    std::thread::sleep(Duration::from_millis(200));
    let mut again = SseReader::open(addr, &get_request(addr, &sid, b.id.as_deref()));
    assert_eq!(again.status, 200);
    let mut seen = Vec::new();
    while let Some(ev) = again.next() {
        seen.push(ev);
    }
    assert!(again.ended, "a finished stream ends with its last chunk");
    let ids: Vec<(u32, u64)> = seen
        .iter()
        .map(|e| split_id(e.id.as_deref().unwrap()))
        .collect();
    let want: Vec<(u32, u64)> = (s1 + 2..=s1 + 8).map(|q| (stream, q)).collect();
    assert_eq!(ids, want, "events 3..8 and the result, once each, in order");
    let progress: Vec<u64> = seen[..6]
        .iter()
        .map(|e| json(&e.data)["params"]["progress"].as_u64().unwrap())
        .collect();
    assert_eq!(progress, [3, 4, 5, 6, 7, 8]);
    let last = json(&seen[6].data);
    assert_eq!(last["id"], 5);
    assert!(last["result"].is_object());
    assert!(metric(admin, "shardcat_sse_resumed_total") >= 1.0);
    // An id the gateway never issued opens a fresh GET stream instead.
    let mut fresh = SseReader::open(addr, &get_request(addr, &sid, Some("999-1")));
    assert_eq!(fresh.status, 200);
    let ev = fresh.next().expect("a new stream's event");
    assert_ne!(split_id(ev.id.as_deref().unwrap()).0, stream);
}

#[test]
fn an_upstream_stream_that_drops_is_reconnected_and_the_client_sees_one_stream() {
    let demo = demo();
    let gw = gateway(&demo_url(&demo), 1, None);
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let sid = initialize(addr);
    let body = progress(9, 6, 20, Some(2));
    let mut r = SseReader::open(addr, &post_request(addr, &sid, &body));
    assert_eq!(r.status, 200);
    let mut seen = Vec::new();
    while let Some(ev) = r.next() {
        seen.push(ev);
    }
    assert!(r.ended, "the stream ends cleanly after the result");
    assert_eq!(seen.len(), 7, "6 progress events and the result: {seen:?}");
    let progress: Vec<u64> = seen[..6]
        .iter()
        .map(|e| json(&e.data)["params"]["progress"].as_u64().unwrap())
        .collect();
    assert_eq!(progress, [1, 2, 3, 4, 5, 6], "nothing lost or repeated");
    assert_eq!(json(&seen[6].data)["id"], 9);
    let seqs: Vec<u64> = seen
        .iter()
        .map(|e| split_id(e.id.as_deref().unwrap()).1)
        .collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>(), "gateway ids run on");
    assert!(metric(admin, "shardcat_sse_upstream_reconnects_total") >= 1.0);
}

#[test]
fn a_get_stream_survives_its_upstream_breaking_off() {
    let demo = demo();
    let gw = gateway(&demo_url(&demo), 1, None);
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let sid = initialize(addr);
    let mut r = SseReader::open(addr, &get_request(addr, &sid, None));
    let seq = |e: &Event| json(&e.data)["params"]["data"]["seq"].as_u64().unwrap();
    let first: Vec<Event> = (0..3).map(|_| r.next().expect("event")).collect();
    let call = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"drop_streams","arguments":{}}}"#;
    assert_eq!(post(addr, &[("mcp-session-id", &sid), V], call).status, 200);
    let after: Vec<Event> = (0..4).map(|_| r.next().expect("event after")).collect();
    let seqs: Vec<u64> = first.iter().chain(&after).map(seq).collect();
    let base = seqs[0];
    assert_eq!(
        seqs,
        (base..base + 7).collect::<Vec<_>>(),
        "the upstream's numbering continues across the break"
    );
    let ids: Vec<u64> = first
        .iter()
        .chain(&after)
        .map(|e| split_id(e.id.as_deref().unwrap()).1)
        .collect();
    assert_eq!(ids, (1..=7).collect::<Vec<_>>());
    assert!(metric(admin, "shardcat_sse_upstream_reconnects_total") >= 1.0);
}

#[test]
fn an_upstream_killed_mid_stream_ends_the_stream_and_then_the_session() {
    let mut demo = demo();
    let demo_addr = demo.addr("demo");
    let toml =
        "[sse]\nreconnect_base_ms = 50\nreconnect_max_ms = 200\nreconnect_max_attempts = 40\n";
    let gw = gateway(&demo_url(&demo), 1, Some(toml));
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let sid = initialize(addr);
    let mut r = SseReader::open(addr, &get_request(addr, &sid, None));
    r.next().expect("first event");
    demo.child.kill().unwrap();
    demo.child.wait().unwrap();
    // Reconnects fail while it is down; a restarted upstream no longer knows the session.
    assert!(eventually(Duration::from_secs(5), || metric(
        admin,
        "shardcat_sse_upstream_reconnects_total"
    ) >= 2.0));
    let _restarted = Proc::start(&[
        "demo-upstream",
        "--listen",
        &demo_addr.to_string(),
        "--push-interval-ms",
        "50",
    ]);
    while r.next().is_some() {}
    let r2 = post(addr, &[("mcp-session-id", &sid), V], &echo_call(4, "x"));
    assert_eq!(r2.status, 404, "the client must re-initialize");
    assert!(eventually(Duration::from_secs(5), || metric(
        admin,
        "shardcat_sse_upstream_streams"
    ) == 0.0));
    assert_eq!(metric(admin, "shardcat_sessions"), 0.0);
}

#[test]
fn idle_upstream_streams_time_out_and_unresumed_ones_are_abandoned() {
    let demo = Proc::start(&[
        "demo-upstream",
        "--listen",
        "127.0.0.1:0",
        "--push-interval-ms",
        "60000",
    ]);
    let toml = "[timeouts]\nsse_idle_timeout_ms = 300\nsse_keepalive_ms = 50\n[sse]\nresume_window_ms = 300\n";
    let gw = gateway(&demo_url(&demo), 1, Some(toml));
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let sid = initialize(addr);
    // A GET stream that carries nothing: closed after the idle timeout, not held forever.
    let mut quiet = SseReader::open(addr, &get_request(addr, &sid, None));
    assert!(
        quiet.head.contains("x-accel-buffering: no"),
        "{}",
        quiet.head
    );
    assert!(quiet.next().is_none());
    assert!(
        quiet.comments >= 2,
        "keepalive comments while idle: {}",
        quiet.comments
    );
    assert!(quiet.ended_cleanly() || quiet.ended);
    assert!(metric(admin, "shardcat_sse_idle_timeouts_total") >= 1.0);
    // A long POST stream whose client leaves and never comes back is closed after the window.
    let mut long = SseReader::open(
        addr,
        &post_request(addr, &sid, &progress(7, 1000, 20, None)),
    );
    long.next().expect("first event");
    drop(long);
    assert!(eventually(Duration::from_secs(10), || metric(
        admin,
        "shardcat_sse_abandoned_total"
    ) >= 1.0));
    assert!(eventually(Duration::from_secs(5), || metric(
        admin,
        "shardcat_sse_upstream_streams"
    ) == 0.0));
    assert!(eventually(Duration::from_secs(5), || metric(
        admin,
        "shardcat_pool_open"
    ) == metric(
        admin,
        "shardcat_pool_idle"
    )));
}

#[test]
fn deleting_a_session_ends_its_streams() {
    let demo = demo();
    let gw = gateway(&demo_url(&demo), 2, None);
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let sid = initialize(addr);
    let mut r = SseReader::open(addr, &get_request(addr, &sid, None));
    r.next().expect("event");
    assert_eq!(delete(addr, &sid).status, 200);
    while r.next().is_some() {}
    assert!(eventually(Duration::from_secs(5), || metric(
        admin,
        "shardcat_sse_upstream_streams"
    ) == 0.0
        && metric(admin, "shardcat_sse_streams") == 0.0));
}

/// The rmcp stdio fixture, built by `cargo test --workspace` into this target directory.
fn stdio_fixture() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join("mcp-stdio-server");
    assert!(path.exists(), "run the tests with `cargo test --workspace`");
    path
}

#[test]
fn a_stdio_session_stream_resumes_and_its_request_is_not_cancelled() {
    let toml = format!(
        "[[upstream]]\nkind = \"stdio\"\ncommand = \"{}\"\nkill_grace_ms = 500\n",
        stdio_fixture().display()
    );
    let gw = gateway_config(1, &toml);
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let sid = initialize(addr);
    assert_eq!(
        post(addr, &[("mcp-session-id", &sid)], INITIALIZED).status,
        202
    );
    let mut r = SseReader::open(addr, &post_request(addr, &sid, &progress(11, 6, 80, None)));
    assert_eq!(r.status, 200);
    let a = r.next().expect("first progress event");
    let (stream, s1) = split_id(a.id.as_deref().expect("gateway id"));
    assert_eq!(json(&a.data)["params"]["progress"], 1.0);
    drop(r);
    std::thread::sleep(Duration::from_millis(150));
    let mut again = SseReader::open(addr, &get_request(addr, &sid, a.id.as_deref()));
    assert_eq!(again.status, 200);
    let mut seen = Vec::new();
    while let Some(ev) = again.next() {
        seen.push(ev);
    }
    assert!(again.ended);
    let ids: Vec<(u32, u64)> = seen
        .iter()
        .map(|e| split_id(e.id.as_deref().unwrap()))
        .collect();
    assert_eq!(
        ids,
        (s1 + 1..=s1 + 6).map(|q| (stream, q)).collect::<Vec<_>>()
    );
    let last = json(&seen[5].data);
    assert_eq!(last["id"], 11, "the request ran to its end: {last}");
    assert!(last["result"].is_object(), "{last}");
    assert_eq!(metric(admin, "shardcat_stdio_cancelled_total"), 0.0);
    // The session's GET stream: a second GET while the first is read gets 409.
    let g = SseReader::open(addr, &get_request(addr, &sid, None));
    assert_eq!(g.status, 200);
    let second = SseReader::open(addr, &get_request(addr, &sid, None));
    assert_eq!(second.status, 409);
    drop(g);
}
