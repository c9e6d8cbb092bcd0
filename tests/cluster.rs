//! Several shardcat nodes behind HAProxy (issue 16, scale-out), through real processes: three
//! gateway nodes on 127.0.0.2-4 with a shared session key, HAProxy in front of them on
//! 127.0.0.1 (its config rendered from `scripts/cluster/haproxy.cfg.in`), and the demo
//! upstream or the official Python SDK server behind them.
//!
//! Covered: the shipped `scripts/cluster/haproxy.cfg` is the template's rendering; HAProxy's
//! routing and failover as such (round robin without a session id, pinned ids to their node,
//! consistent hashing of other ids, a dead node's requests redispatched, time to mark a node
//! down and up); and, against the sealed-id wiring of the gateway: 50 sessions surviving a
//! SIGKILLed node without a new initialize (demo and Python SDK upstreams), an SSE stream
//! resumed on another node with `Last-Event-ID` and no gap in the upstream's numbering, stdio
//! sessions pinned to their node (404 once it is gone, then a new session), and key rotation.
//!
//! Every response through HAProxy names the node that answered (`x-shardcat-node`, set by the
//! template), which is how the tests see where a request went.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/interop.rs"]
mod peers;
#[path = "support/process.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cluster::{Cluster, NodeAddrs};
use serde_json::Value;
use support::*;

/// The protocol version of the raw sessions (as `support::INIT`).
const VERSION: &str = "2025-06-18";
/// Shards per node: the issue asks for concurrency across 2.
const SHARDS: usize = 2;
/// How long one exchange may take through HAProxy (a Python SDK upstream on 2 cores included).
const EXCHANGE: Duration = Duration::from_secs(15);
const ADOPTED: &str = "shardcat_cluster_sessions_adopted_total";

// ---------------------------------------------------------------------------------------------
// Raw MCP over HTTP through HAProxy.

/// One exchange on a fresh connection: POST `body` with the session id if any.
fn exchange(fe: SocketAddr, sid: Option<&str>, body: &str) -> std::io::Result<Response> {
    let stream = TcpStream::connect_timeout(&fe, EXCHANGE)?;
    let mut c = Client::from_stream(stream);
    c.stream.set_read_timeout(Some(EXCHANGE))?;
    let mut headers = vec![("connection", "close")];
    if let Some(s) = sid {
        headers.push(("mcp-session-id", s));
        headers.push(("mcp-protocol-version", VERSION));
    }
    c.post(fe, &headers, body)
}

/// The node that answered (HAProxy's `x-shardcat-node`), "-" when HAProxy answered itself.
fn node_of(r: &Response) -> String {
    r.header("x-shardcat-node").unwrap_or("-").to_string()
}

/// The JSON-RPC message answering a request: the JSON body, or the SSE event that holds a
/// result or an error.
fn answer(r: &Response) -> Option<Value> {
    let text = r.text();
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        return Some(v);
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("result").is_some() || v.get("error").is_some())
}

/// Whether `r` is echo's answer of `text`.
fn echoed(r: &Response, text: &str) -> bool {
    r.status == 200
        && answer(r).is_some_and(|v| v["result"]["content"][0]["text"].as_str() == Some(text))
}

fn short(r: &Response) -> String {
    let t = r.text();
    let t = if t.len() > 300 { &t[..300] } else { &t[..] };
    format!("{} via {}: {t}", r.status, node_of(r))
}

/// initialize + notifications/initialized through HAProxy; the session id and the node that
/// took the initialize.
fn open_session(fe: SocketAddr) -> (String, String) {
    let r = exchange(fe, None, INIT).expect("initialize through HAProxy");
    assert_eq!(r.status, 200, "initialize: {}", short(&r));
    let sid = r
        .header("mcp-session-id")
        .unwrap_or_else(|| panic!("initialize without Mcp-Session-Id: {:?}", r.headers))
        .to_string();
    let node = node_of(&r);
    let n = exchange(fe, Some(&sid), INITIALIZED).expect("initialized");
    assert_eq!(
        n.status,
        202,
        "notifications/initialized of a session opened on {node} (id {}; a sealed id opens \
         on any node, a pinned one goes back to its node): {}",
        sample_sid(&sid),
        short(&n)
    );
    (sid, node)
}

/// tools/call echo in session `sid`; the response or the transport error.
fn call(fe: SocketAddr, sid: &str, id: u64) -> Result<Response, String> {
    exchange(fe, Some(sid), &echo_call(id, &format!("t{id}"))).map_err(|e| e.to_string())
}

fn demo_toml(demo: &Proc) -> String {
    format!("[[upstream]]\nurl = {:?}\n", demo_url(demo))
}

/// The official Python SDK server over Streamable HTTP (sessions on).
fn python_server() -> peers::Server {
    let p = peers::peers();
    let cmd = vec![
        p.python.display().to_string(),
        p.py("peer_server.py"),
        "--transport".into(),
        "http".into(),
        "--port".into(),
        "0".into(),
    ];
    peers::Server::start(&format!("cluster-py-{}", std::process::id()), &cmd)
}

fn sample_sid(sid: &str) -> String {
    let n = sid.len().min(24);
    format!("{}...({} chars)", &sid[..n], sid.len())
}

// ---------------------------------------------------------------------------------------------
// The HAProxy side alone (no sealed ids needed).

/// The shipped config is the template rendered for n1-n3 on 127.0.0.2-4:8080 (admin :9090),
/// and HAProxy accepts it.
#[test]
fn shipped_haproxy_cfg_is_the_template_for_three_nodes() {
    let nodes: Vec<NodeAddrs> = (1..=3)
        .map(|i| NodeAddrs {
            name: format!("n{i}"),
            listen: format!("127.0.0.{}:8080", 1 + i).parse().unwrap(),
            admin: format!("127.0.0.{}:9090", 1 + i).parse().unwrap(),
        })
        .collect();
    let want = cluster::render(
        &cluster::template(),
        &nodes,
        "127.0.0.1:8000",
        "/tmp/shardcat-haproxy.sock",
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster/haproxy.cfg");
    let shipped = std::fs::read_to_string(path).expect("scripts/cluster/haproxy.cfg");
    assert!(
        shipped == want,
        "scripts/cluster/haproxy.cfg is not the template's rendering: run \
         scripts/cluster/render-haproxy.sh 3 > scripts/cluster/haproxy.cfg"
    );
    let out = std::process::Command::new(cluster::haproxy())
        .args(["-c", "-f", path])
        .output()
        .expect("haproxy -c");
    assert!(
        out.status.success(),
        "haproxy -c {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// HAProxy's own behaviour in front of three nodes: round robin without a session id, a
/// pinned id to its node, a hashed id always to one node; a killed node marked down in about
/// a second, its pinned ids then answered by another node (404), requests to it in the window
/// before it is marked down redispatched rather than failed, only its hashed ids moving; and
/// back once restarted.
#[test]
fn haproxy_routes_by_prefix_hashes_and_fails_over() {
    let demo = demo();
    let mut c = Cluster::start(3, SHARDS, &demo_toml(&demo));
    let fe = c.frontend;

    // No session id: round robin over the three. With hash-type consistent HAProxy walks the
    // hash ring for it, so the spread is even over a cycle but not strictly alternating.
    let mut first = BTreeMap::<String, usize>::new();
    for _ in 0..12 {
        let r = exchange(fe, None, INIT).expect("initialize");
        assert_eq!(r.status, 200, "{}", short(&r));
        *first.entry(node_of(&r)).or_default() += 1;
    }
    eprintln!("12 initializes without a session id: {first:?}");
    assert!(
        first.len() == 3 && first.values().all(|&n| n >= 2),
        "12 initializes without a session id reach every node: {first:?}"
    );

    // Pinned ids go to the node named before the first '.'.
    let pinned = |node: &str| format!("{node}.{}", "0".repeat(42));
    for node in ["n1", "n2", "n3"] {
        for _ in 0..3 {
            let r = exchange(fe, Some(&pinned(node)), &echo_call(1, "x")).expect("pinned");
            assert_eq!(node_of(&r), node, "pinned id {node}.*: {}", short(&r));
        }
    }

    // Other ids are hashed: each always lands on one node.
    let ids: Vec<String> = (0..30)
        .map(|i| format!("sealedlike{i:04}abcdefgh"))
        .collect();
    let place = |id: &str| {
        let r = exchange(fe, Some(id), &echo_call(1, "x")).expect("hashed");
        node_of(&r)
    };
    let before: Vec<String> = ids.iter().map(|id| place(id)).collect();
    for (id, node) in ids.iter().zip(&before).take(5) {
        assert_eq!(&place(id), node, "id {id} moved while every node is up");
    }
    let on_n2 = before.iter().filter(|n| *n == "n2").count();
    assert!(on_n2 > 0, "no id of 30 hashed to n2: {before:?}");

    // Kill n2; before HAProxy sees it, a request bound for it is redispatched.
    let n2 = c.index_of("n2");
    let killed = Instant::now();
    c.kill_node(n2);
    let r = exchange(fe, Some(&pinned("n2")), &echo_call(1, "x")).expect("redispatched");
    assert!(
        node_of(&r) != "n2" && r.status != 502 && r.status != 503,
        "a POST to the killed node (not yet marked down: {}) is retried on another node: {}\n\
         haproxy log:\n{}",
        c.states(),
        short(&r),
        tail(&c.haproxy_log(), 3000)
    );
    c.wait_node_down(n2);
    let down_after = killed.elapsed();
    eprintln!("n2 marked down {down_after:?} after SIGKILL");
    assert!(
        down_after < Duration::from_secs(3),
        "failover took {down_after:?} (inter 500ms, fastinter 250ms, fall 2)"
    );
    let r = exchange(fe, Some(&pinned("n2")), &echo_call(1, "x")).expect("pinned, n2 down");
    assert!(
        node_of(&r) != "n2" && r.status == 404,
        "a pinned n2 id with n2 down: another node answers 404: {}",
        short(&r)
    );
    let after: Vec<String> = ids.iter().map(|id| place(id)).collect();
    for ((id, b), a) in ids.iter().zip(&before).zip(&after) {
        if b == "n2" {
            assert!(a != "n2", "{id} still on n2 while it is down");
        } else {
            assert_eq!(a, b, "{id} moved from {b} though only n2 went down");
        }
    }

    // Restart n2: it is back and its ids return to it.
    let restarted = Instant::now();
    c.restart_node(n2);
    c.wait_node_up(n2);
    eprintln!("n2 marked up {:?} after restart", restarted.elapsed());
    let back: Vec<String> = ids.iter().map(|id| place(id)).collect();
    assert_eq!(back, before, "ids return to their nodes once n2 is up");
}

// ---------------------------------------------------------------------------------------------
// a. Sessions survive a node crash.

#[derive(Debug, Default, Clone)]
struct Tally {
    ok_before: u64,
    /// Calls that started while the victim was being killed and still succeeded.
    ok_during: u64,
    failed_before: u64,
    failed_after: u64,
    ok_after: u64,
    /// 404s after the kill: the session would have to re-initialize.
    not_found: u64,
    nodes_before: BTreeSet<String>,
    nodes_after: BTreeSet<String>,
    last_error: String,
}

/// 50 sessions calling echo concurrently through HAProxy while one node is SIGKILLed: every
/// session's calls succeed after the kill without a new initialize, the survivors adopted
/// sessions, and the node, restarted, takes new sessions and its old ones again.
fn sessions_survive_a_node_crash(upstream_toml: &str, sessions: usize, pace: Duration) {
    let mut c = Cluster::start(3, SHARDS, upstream_toml);
    let fe = c.frontend;
    let sids: Vec<String> = (0..sessions).map(|_| open_session(fe).0).collect();
    let stop = Arc::new(AtomicBool::new(false));
    // Set as the kill begins, and once the dead node's port refuses connections. A call that
    // started between the two may have been answered by the victim, or cut by the kill.
    let killing: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let killed: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let ids = Arc::new(AtomicU64::new(100));
    let workers: Vec<_> = sids
        .iter()
        .cloned()
        .map(|sid| {
            let (stop, killing, killed, ids) =
                (stop.clone(), killing.clone(), killed.clone(), ids.clone());
            std::thread::spawn(move || {
                let mut t = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    let id = ids.fetch_add(1, Ordering::Relaxed);
                    // Started once the victim was gone: the victim cannot answer it.
                    let dead = killed.get().is_some();
                    let r = call(fe, &sid, id);
                    // Answered once the kill had begun: it may have been cut by it.
                    let after = killing.get().is_some();
                    match r {
                        Ok(r) if echoed(&r, &format!("t{id}")) => {
                            let n = node_of(&r);
                            if dead {
                                t.ok_after += 1;
                                t.nodes_after.insert(n);
                            } else if after {
                                t.ok_during += 1;
                            } else {
                                t.ok_before += 1;
                                t.nodes_before.insert(n);
                            }
                        }
                        other => {
                            let why = match &other {
                                Ok(r) => short(r),
                                Err(e) => e.clone(),
                            };
                            if !after {
                                t.failed_before += 1;
                            } else if matches!(&other, Ok(r) if r.status == 404) {
                                t.not_found += 1;
                            } else {
                                t.failed_after += 1;
                            }
                            t.last_error = why;
                        }
                    }
                    std::thread::sleep(pace);
                }
                (sid, t)
            })
        })
        .collect();

    std::thread::sleep(Duration::from_secs(2));
    let victim = c.index_of("n2");
    // Sessions already hop once before the kill (initialize is round robin, later requests
    // go to the hash owner), so only growth on the survivors counts.
    let survivors = [c.index_of("n1"), c.index_of("n3")];
    let adopted_before: f64 = survivors.iter().map(|&i| c.metric(i, ADOPTED)).sum();
    killing.set(Instant::now()).expect("killed once");
    c.kill_node(victim);
    killed.set(Instant::now()).expect("killed once");
    let down = c.wait_node_down(victim);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let tallies: Vec<(String, Tally)> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    eprintln!("n2 marked down {down:?} after SIGKILL");

    let on_victim = tallies
        .iter()
        .filter(|(_, t)| t.nodes_before.contains("n2"))
        .count();
    let summary = |t: &[(String, Tally)]| {
        t.iter()
            .filter(|(_, t)| {
                t.failed_before > 0 || t.ok_after == 0 || t.not_found > 0 || t.failed_after > 0
            })
            .take(8)
            .map(|(s, t)| format!("{}: {t:?}", sample_sid(s)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let failed_during: u64 = tallies.iter().map(|(_, t)| t.failed_after).sum();
    eprintln!(
        "{sessions} sessions, {on_victim} of them on n2 before the kill; {failed_during} calls \
         failed around the kill"
    );
    assert!(
        on_victim > 0,
        "no session was served by n2 before the kill: the kill tested nothing\n{}",
        summary(&tallies)
    );
    assert!(
        tallies.iter().all(|(_, t)| t.failed_before == 0),
        "calls failed before any node was killed:\n{}",
        summary(&tallies)
    );
    let lost: Vec<_> = tallies
        .iter()
        .filter(|(_, t)| t.ok_after == 0 || t.not_found > 0)
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {sessions} sessions had no successful call after the kill or got 404 (a new \
         initialize); adopted per node {:?}; e.g.:\n{}\nsurvivor n1 log tail:\n{}",
        lost.len(),
        c.metric_by_node(ADOPTED),
        summary(&tallies),
        tail(&c.node_log(0), 2000)
    );
    let adopted: f64 = survivors.iter().map(|&i| c.metric(i, ADOPTED)).sum();
    assert!(
        adopted > adopted_before,
        "the survivors adopted no session after the kill ({ADOPTED}: {adopted_before} before \
         on n1+n3, now {:?})",
        c.metric_by_node(ADOPTED)
    );
    for (sid, t) in &tallies {
        assert!(
            !t.nodes_after.contains("n2"),
            "{} was answered by the dead n2: {t:?}",
            sample_sid(sid)
        );
    }

    // Back: the restarted node takes new sessions (round robin) and its hashed ones again.
    c.restart_node(victim);
    c.wait_node_up(victim);
    let mut new_nodes = BTreeMap::<String, usize>::new();
    for _ in 0..6 {
        *new_nodes.entry(open_session(fe).1).or_default() += 1;
    }
    let inits = c.metric(victim, "shardcat_requests_total{method=\"initialize\"}");
    assert!(
        inits > 0.0 && new_nodes.contains_key("n2"),
        "the restarted n2 takes no new session: initialize count {inits}, new sessions by \
         node {new_nodes:?}"
    );
    let mut back_on_n2 = 0;
    for (i, sid) in sids.iter().enumerate() {
        let r = call(fe, sid, 10_000 + i as u64).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            echoed(&r, &format!("t{}", 10_000 + i)),
            "after n2 came back, {}: {}",
            sample_sid(sid),
            short(&r)
        );
        back_on_n2 += usize::from(node_of(&r) == "n2");
    }
    let calls = c.metric(victim, "shardcat_requests_total{method=\"tools/call\"}");
    assert!(
        back_on_n2 > 0 && calls > 0.0,
        "no old session returned to the restarted n2 ({back_on_n2} answered there, its \
         tools/call count {calls})"
    );
}

#[test]
fn sessions_survive_a_node_crash_demo() {
    let demo = demo();
    sessions_survive_a_node_crash(&demo_toml(&demo), 50, Duration::from_millis(50));
}

#[test]
fn sessions_survive_a_node_crash_python_sdk() {
    let py = python_server();
    let toml = format!("[[upstream]]\nurl = {:?}\n", py.url());
    sessions_survive_a_node_crash(&toml, 50, Duration::from_millis(300));
}

// ---------------------------------------------------------------------------------------------
// b. An SSE stream resumed on another node.

/// An SSE response read event by event (chunked or close-delimited body).
struct SseStream {
    stream: TcpStream,
    chunked: bool,
    /// Undecoded bytes off the socket.
    raw: Vec<u8>,
    /// Decoded body bytes not yet split into events.
    body: Vec<u8>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
struct Event {
    id: Option<String>,
    data: String,
}

impl SseStream {
    /// GET /mcp for session `sid` (with `Last-Event-ID` if given); reads the head.
    fn open(fe: SocketAddr, sid: &str, last_event_id: Option<&str>) -> std::io::Result<Self> {
        let mut stream = TcpStream::connect_timeout(&fe, EXCHANGE)?;
        stream.set_read_timeout(Some(EXCHANGE))?;
        let mut req = format!(
            "GET /mcp HTTP/1.1\r\nhost: {fe}\r\naccept: text/event-stream\r\n\
             mcp-session-id: {sid}\r\nmcp-protocol-version: {VERSION}\r\n"
        );
        if let Some(l) = last_event_id {
            req.push_str(&format!("last-event-id: {l}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        let mut tmp = [0u8; 8192];
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut hs);
            if let httparse::Status::Complete(n) =
                resp.parse(&raw).map_err(std::io::Error::other)?
            {
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        let v = String::from_utf8_lossy(h.value).into_owned();
                        (h.name.to_ascii_lowercase(), v)
                    })
                    .collect();
                let chunked = headers
                    .iter()
                    .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
                let status = resp.code.unwrap_or(0);
                raw.drain(..n);
                return Ok(SseStream {
                    stream,
                    chunked,
                    raw,
                    body: Vec::new(),
                    status,
                    headers,
                });
            }
            let k = stream.read(&mut tmp)?;
            if k == 0 {
                return Err(std::io::Error::other("closed before the response head"));
            }
            raw.extend_from_slice(&tmp[..k]);
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Moves complete chunks (or everything, close-delimited) from `raw` to `body`; false at
    /// the last chunk.
    fn decode(&mut self) -> bool {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return true;
        }
        loop {
            let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return true;
            };
            let line = String::from_utf8_lossy(&self.raw[..eol]).to_string();
            let size =
                usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
            if self.raw.len() < eol + 2 + size + 2 {
                return true;
            }
            if size == 0 {
                return false;
            }
            self.body
                .extend_from_slice(&self.raw[eol + 2..eol + 2 + size]);
            self.raw.drain(..eol + 2 + size + 2);
        }
    }

    /// The next event (comments and empty-data priming events included as they come);
    /// `Err` when the stream ends or breaks.
    fn next_event(&mut self) -> std::io::Result<Event> {
        let mut tmp = [0u8; 8192];
        loop {
            let more = self.decode();
            let text = String::from_utf8_lossy(&self.body).replace("\r\n", "\n");
            if let Some(end) = text.find("\n\n") {
                let block = text[..end].to_string();
                let used = block.len() + 2;
                let rest = text[used..].to_string();
                self.body = rest.into_bytes();
                let mut e = Event::default();
                for l in block.lines() {
                    if let Some(v) = l.strip_prefix("id:") {
                        e.id = Some(v.trim().to_string());
                    } else if let Some(v) = l.strip_prefix("data:") {
                        e.data.push_str(v.trim_start());
                    }
                }
                return Ok(e);
            }
            if !more {
                return Err(std::io::Error::other("the stream ended (last chunk)"));
            }
            let k = self.stream.read(&mut tmp)?;
            if k == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the stream was cut",
                ));
            }
            self.raw.extend_from_slice(&tmp[..k]);
        }
    }
}

/// The demo's sequence number in an event (`params.data.seq` of notifications/message).
fn seq_of(e: &Event) -> Option<u64> {
    let v: Value = serde_json::from_str(&e.data).ok()?;
    v.pointer("/params/data/seq")?.as_u64()
}

/// A GET stream through HAProxy, cut by killing its node, resumes through HAProxy on another
/// node with `Last-Event-ID` and continues with the upstream's next `seq`.
#[test]
fn sse_stream_resumes_on_another_node() {
    let demo = demo();
    let mut c = Cluster::start(3, SHARDS, &demo_toml(&demo));
    let fe = c.frontend;
    let (sid, _) = open_session(fe);
    let mut s = SseStream::open(fe, &sid, None).expect("GET stream");
    let node = s.header("x-shardcat-node").unwrap_or("-").to_string();
    assert_eq!(s.status, 200, "GET stream via {node}: {:?}", s.headers);
    let (mut last_id, mut last_seq, mut got) = (None::<String>, 0u64, Vec::new());
    while got.len() < 8 {
        let e = s.next_event().expect("events before the kill");
        if let Some(q) = seq_of(&e) {
            last_seq = q;
            last_id = e.id.clone();
            got.push(q);
        }
    }
    c.kill_node(c.index_of(&node));
    // Whatever was in flight before the cut still counts.
    while let Ok(e) = s.next_event() {
        if let Some(q) = seq_of(&e) {
            last_seq = q;
            last_id = e.id.clone();
            got.push(q);
        }
    }
    let last_id = last_id.expect("events carry ids");
    eprintln!("stream on {node} cut after seq {got:?}, last id {last_id:?}");

    let mut r = SseStream::open(fe, &sid, Some(&last_id)).expect("resume GET");
    let resumed_on = r.header("x-shardcat-node").unwrap_or("-").to_string();
    assert!(
        r.status == 200 && resumed_on != node,
        "resume with Last-Event-ID {last_id:?} after {node} died: {} via {resumed_on} \
         ({:?}); sse metrics per node: resumed {:?}, missed {:?}",
        r.status,
        r.headers,
        c.metric_by_node("shardcat_sse_resumed_upstream_total"),
        c.metric_by_node("shardcat_sse_resume_missed_total"),
    );
    let mut next = Vec::new();
    while next.len() < 3 {
        match r.next_event() {
            Ok(e) => next.extend(seq_of(&e)),
            Err(e) => panic!("resumed stream via {resumed_on} broke after {next:?}: {e}"),
        }
    }
    assert_eq!(
        next[0],
        last_seq + 1,
        "resumed on {resumed_on} after seq {last_seq} (id {last_id:?}): got {next:?}; \
         resumed {:?}, missed {:?}",
        c.metric_by_node("shardcat_sse_resumed_upstream_total"),
        c.metric_by_node("shardcat_sse_resume_missed_total"),
    );
    assert!(
        next.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap on the resumed stream: {next:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// c. Stdio sessions are pinned to their node.

/// Sessions on a stdio upstream (`shardcat forward http` in front of the demo, one child per
/// session) carry a pinned id naming their node and stay there; once that node is killed
/// they get 404 and a new initialize succeeds elsewhere.
#[test]
fn stdio_sessions_are_pinned_to_their_node() {
    let demo = demo();
    let toml = format!(
        "[[upstream]]\nkind = \"stdio\"\ncommand = {:?}\nargs = [\"forward\", \"http\", \
         \"--url\", {:?}]\nkill_grace_ms = 500\n",
        BIN,
        demo_url(&demo)
    );
    let mut c = Cluster::start(3, SHARDS, &toml);
    let fe = c.frontend;
    let sessions: Vec<(String, String)> = (0..6).map(|_| open_session(fe)).collect();
    let mut per_node = BTreeMap::<String, f64>::new();
    for (sid, node) in &sessions {
        let prefix = sid.split('.').next().unwrap_or("");
        assert!(
            sid.contains('.') && prefix == node,
            "a stdio session's id is pinned to the node that opened it ({node}): {}",
            sample_sid(sid)
        );
        for k in 0..5 {
            let r = call(fe, sid, 50 + k).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                echoed(&r, &format!("t{}", 50 + k)) && node_of(&r) == *node,
                "{} (opened on {node}): {}",
                sample_sid(sid),
                short(&r)
            );
        }
        *per_node.entry(node.clone()).or_default() += 5.0;
    }
    for i in 0..3 {
        let name = c.nodes[i].addrs.name.clone();
        let want = per_node.get(&name).copied().unwrap_or(0.0);
        // A request is counted once its answer was written: the last one may be counted a
        // moment after the client read it.
        let mut calls = 0.0;
        for _ in 0..50 {
            calls = c.metric(i, "shardcat_requests_total{method=\"tools/call\"}");
            if calls == want {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            calls, want,
            "{name} counted {calls} tools/call, its own sessions made {want}"
        );
    }

    let (sid, node) = sessions[0].clone();
    let victim = c.index_of(&node);
    c.kill_node(victim);
    c.wait_node_down(victim);
    let r = call(fe, &sid, 99).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        r.status == 404 && node_of(&r) != node,
        "a session pinned to the dead {node}: want 404 from another node, got {}",
        short(&r)
    );
    let (new_sid, new_node) = open_session(fe);
    assert!(new_node != node, "re-initialized on the dead node?");
    assert!(
        new_sid.starts_with(&format!("{new_node}.")),
        "{}",
        sample_sid(&new_sid)
    );
    let r = call(fe, &new_sid, 100).unwrap_or_else(|e| panic!("{e}"));
    assert!(echoed(&r, "t100"), "the new session: {}", short(&r));
    for (sid, n) in sessions.iter().filter(|(_, n)| *n != node) {
        let r = call(fe, sid, 101).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            echoed(&r, "t101") && node_of(&r) == *n,
            "{} on the surviving {n}: {}",
            sample_sid(sid),
            short(&r)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// d. Key rotation.

/// Every session answers one echo call; the failures.
fn call_all(fe: SocketAddr, sids: &[String], id: u64) -> Vec<String> {
    sids.iter()
        .filter_map(|sid| match call(fe, sid, id) {
            Ok(r) if echoed(&r, &format!("t{id}")) => None,
            Ok(r) => Some(format!("{}: {}", sample_sid(sid), short(&r))),
            Err(e) => Some(format!("{}: {e}", sample_sid(sid))),
        })
        .collect()
}

/// Nodes restarted one at a time with a new key and the old one as previous: every existing
/// session goes on. Restarted again with the new key alone: the old ids get 404.
#[test]
fn key_rotation_keeps_sessions_then_retires_the_old_key() {
    let demo = demo();
    let mut c = Cluster::start(3, SHARDS, &demo_toml(&demo));
    let fe = c.frontend;
    let sids: Vec<String> = (0..12).map(|_| open_session(fe).0).collect();
    let failed = call_all(fe, &sids, 1);
    assert!(
        failed.is_empty(),
        "before the rotation:\n{}",
        failed.join("\n")
    );

    let old = c.key_file().to_path_buf();
    let new = c.dir.join("session.key.new");
    cluster::gen_key(&new);
    c.set_keys(&new, Some(&old));
    for i in 0..3 {
        c.stop_node(i);
        c.restart_node(i);
        c.wait_node_up(i);
        let failed = call_all(fe, &sids, 10 + i as u64);
        assert!(
            failed.is_empty(),
            "after {} restarted with the new key and the old as previous ({}):\n{}",
            c.nodes[i].addrs.name,
            c.config_text(i),
            failed.join("\n")
        );
    }

    c.set_keys(&new, None);
    for i in 0..3 {
        c.stop_node(i);
        c.restart_node(i);
        c.wait_node_up(i);
    }
    for sid in &sids {
        let r = call(fe, sid, 20).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r.status,
            404,
            "an id sealed with the retired key, every node on the new key only: {} ({:?})",
            short(&r),
            c.metric_by_node("shardcat_cluster_ids_refused_total")
        );
    }
    let (sid, _) = open_session(fe);
    let failed = call_all(fe, &[sid], 30);
    assert!(failed.is_empty(), "a new session:\n{}", failed.join("\n"));
}

fn tail(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

// ---------------------------------------------------------------------------------------------
// e. Official SDK clients through a node crash.

/// Sessions per SDK client process.
const SDK_SESSIONS: usize = 10;
/// Python SDK sessions without the workaround for a cut POST, reported rather than judged.
const SDK_PLAIN: usize = 4;
/// How long each client may call echo once its sessions are in (the test stops them sooner,
/// `SDK_AFTER` past the kill, with their --stop-file), and how often.
const SDK_DURATION_S: u64 = 30;
const SDK_AFTER: Duration = Duration::from_secs(5);
const SDK_INTERVAL_MS: u64 = 100;
/// A call started this long after the kill must succeed (HAProxy marks a node down in ~1 s).
const SDK_SETTLE: Duration = Duration::from_secs(3);
/// A failure may start this long before the kill (the call in flight when it came).
const SDK_IN_FLIGHT: Duration = Duration::from_secs(1);

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs an SDK client script (tests/interop/*/cluster_client.*) in a thread: its report (the
/// last JSON line on stdout), or why there is none. Killed after `within`.
fn sdk_client(
    label: &'static str,
    cmd: Vec<String>,
    within: Duration,
) -> std::thread::JoinHandle<Result<Value, String>> {
    std::thread::spawn(move || {
        let mut child = std::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("{label}: cannot start {cmd:?}: {e}"))?;
        let read = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_string(&mut s);
                }
                s
            })
        };
        let out = read(
            child
                .stdout
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
        );
        let err = read(
            child
                .stderr
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
        );
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if started.elapsed() < within => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let (out, err) = (
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        );
        if !err.trim().is_empty() {
            eprintln!("{label} stderr (tail):\n{}", tail(&err, 1500));
        }
        out.lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .ok_or_else(|| {
                format!(
                    "{label}: no report (exit {status:?}, {:?}); stdout: {}; stderr: {}",
                    started.elapsed(),
                    tail(&out, 800),
                    tail(&err, 2000)
                )
            })
    })
}

/// One session's record in a client's report, as far as the test judges it.
struct SdkSession {
    label: String,
    v: Value,
}

impl SdkSession {
    fn u(&self, key: &str) -> u64 {
        self.v[key].as_u64().unwrap_or(0)
    }

    /// Calls that started at or after `at` (unix ms) and succeeded, from the 500 ms buckets
    /// wholly after it.
    fn ok_started_after(&self, t0: u64, width: u64, at: u64) -> u64 {
        let buckets = self.v["ok_buckets"].as_array().cloned().unwrap_or_default();
        buckets
            .iter()
            .enumerate()
            .filter(|(b, _)| t0 + *b as u64 * width >= at)
            .map(|(_, n)| n.as_u64().unwrap_or(0))
            .sum()
    }

    /// The GET stream opens after the first: `(unix ms, Last-Event-ID, status)`.
    fn reopens(&self) -> Vec<(u64, Option<String>, String)> {
        self.v["gets"]
            .as_array()
            .into_iter()
            .flatten()
            .skip(1)
            .map(|g| {
                (
                    g[0].as_u64().unwrap_or(0),
                    g[1].as_str().map(String::from),
                    g[2].to_string(),
                )
            })
            .collect()
    }

    fn brief(&self) -> String {
        let mut v = self.v.clone();
        for k in ["ok_buckets", "failed_buckets"] {
            v[k] = Value::String(
                v[k].as_array()
                    .into_iter()
                    .flatten()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        for k in ["sid_start", "sid_end"] {
            if let Some(s) = v[k].as_str() {
                v[k] = Value::String(sample_sid(s));
            }
        }
        format!("{} {v}", self.label)
    }
}

/// 10 sessions of the official Python SDK client and 10 of the TypeScript one, at once, each
/// calling echo every 100 ms through HAProxy while its GET stream takes the demo's numbered
/// notifications; about 2 s in, the node holding the most streams is SIGKILLed. Every session
/// keeps its one session id (no new initialize), calls again within a few seconds, fails only
/// around the kill, and its GET stream, reopened by the SDK with Last-Event-ID, goes on with
/// the upstream's next `seq` (no gap); the survivors count the streams they resumed from the
/// upstream.
#[test]
fn sdk_clients_keep_their_sessions_through_a_node_crash() {
    let p = peers::peers();
    let demo = Proc::start(&[
        "demo-upstream",
        "--listen",
        "127.0.0.1:0",
        "--push-interval-ms",
        "100",
    ]);
    let mut c = Cluster::start(3, SHARDS, &demo_toml(&demo));
    let url = format!("http://{}/mcp", c.frontend);
    let stop_file = c.dir.join("sdk-clients.stop");
    let stop = stop_file.display().to_string();
    let args = |label: &str, sessions: usize| {
        [
            "--url",
            &url,
            "--stop-file",
            &stop,
            "--sessions",
            &sessions.to_string(),
            "--interval-ms",
            &SDK_INTERVAL_MS.to_string(),
            "--duration-s",
            &SDK_DURATION_S.to_string(),
            "--label",
            label,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
    };
    let within = Duration::from_secs(SDK_DURATION_S + 30);
    // The Python SDK loses its whole Client when a POST's connection is cut (see
    // cluster_client.py): the 10 judged Python sessions use the documented workaround
    // (--post-errors-as-502), and a few plain ones show what the SDK does without it.
    let py = |label: &str, sessions: usize, workaround: bool| {
        let mut cmd = vec![p.python.display().to_string(), p.py("cluster_client.py")];
        cmd.extend(args(label, sessions));
        if workaround {
            cmd.push("--post-errors-as-502".into());
        }
        cmd
    };
    let mut ts_cmd = vec![p.node.display().to_string(), p.ts("cluster_client.mjs")];
    ts_cmd.extend(args("typescript", SDK_SESSIONS));
    let started = Instant::now();
    let clients = [
        (
            "python",
            sdk_client("python", py("python", SDK_SESSIONS, true), within),
        ),
        ("typescript", sdk_client("typescript", ts_cmd, within)),
        (
            "python-plain",
            sdk_client("python-plain", py("python-plain", SDK_PLAIN, false), within),
        ),
    ];

    // Every session is in once the nodes hold a GET stream for each (the SDKs open it after
    // notifications/initialized); the clients start calling then.
    let want = (2 * SDK_SESSIONS + SDK_PLAIN) as f64;
    let streams = |c: &Cluster| c.metric_by_node("shardcat_sse_streams");
    let total = |v: &[(String, f64)]| v.iter().map(|(_, n)| n).sum::<f64>();
    while total(&streams(&c)) < want {
        assert!(
            started.elapsed() < Duration::from_secs(40)
                && clients.iter().all(|(_, h)| !h.is_finished()),
            "the SDK clients did not open {want} GET streams: {:?} after {:?}",
            streams(&c),
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let all_in = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));

    // The victim: the node holding the most streams (their sessions' calls hash there too).
    let before = streams(&c);
    let calls_before = c.metric_by_node("shardcat_requests_total{method=\"tools/call\"}");
    let victim = (0..3)
        .max_by(|&a, &b| before[a].1.total_cmp(&before[b].1))
        .expect("three nodes");
    let name = c.nodes[victim].addrs.name.clone();
    assert!(
        before[victim].1 > 0.0 && calls_before[victim].1 > 0.0,
        "no session on {name} before the kill: streams {before:?}, tools/call {calls_before:?}"
    );
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    let resumed_series = "shardcat_sse_resumed_upstream_total";
    let resumed_before: f64 = survivors.iter().map(|&i| c.metric(i, resumed_series)).sum();
    let kill_ms = unix_ms();
    c.kill_node(victim);
    let down = c.wait_node_down(victim);
    eprintln!(
        "all {want} sessions in after {all_in:?}; killed {name} (streams {before:?}, tools/call \
         {calls_before:?}); HAProxy marked it down {down:?} later"
    );

    std::thread::sleep(SDK_AFTER.saturating_sub(Duration::from_millis(unix_ms() - kill_ms)));
    std::fs::write(&stop_file, "stop\n").expect("write the clients' stop file");
    let mut sessions = Vec::new();
    let mut clocks = BTreeMap::new();
    for (label, h) in clients {
        let want = if label == "python-plain" {
            SDK_PLAIN
        } else {
            SDK_SESSIONS
        };
        let report = h
            .join()
            .expect("client thread")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            report["connected"].as_u64(),
            Some(want as u64),
            "{label}: not every session connected: {report}"
        );
        let (t0, width) = (
            report["t0_ms"].as_u64().unwrap_or(0),
            report["bucket_ms"].as_u64().unwrap_or(500),
        );
        clocks.insert(label, (t0, width));
        for v in report["per_session"].as_array().into_iter().flatten() {
            sessions.push(SdkSession {
                label: label.to_string(),
                v: v.clone(),
            });
        }
    }
    assert_eq!(
        sessions.len(),
        2 * SDK_SESSIONS + SDK_PLAIN,
        "sessions reported"
    );
    let all = sessions
        .iter()
        .map(SdkSession::brief)
        .collect::<Vec<_>>()
        .join("\n");
    let settle = kill_ms + SDK_SETTLE.as_millis() as u64;
    let window = (kill_ms - SDK_IN_FLIGHT.as_millis() as u64)..=settle;
    let mut problems = Vec::new();
    let mut reopened = BTreeMap::<String, usize>::new();
    let mut failed_calls = BTreeMap::<String, u64>::new();
    let mut plain_lost = 0;
    for s in &sessions {
        let (t0, width) = clocks[s.label.as_str()];
        let who = format!("{} session {}", s.label, s.u("index"));
        let mut bad = |what: String| problems.push(format!("{who}: {what}"));
        // A plain Python session may end with the cut POST's transport error, around the
        // kill: the SDK's own limitation, counted. Up to then it is judged as the others.
        if s.label == "python-plain" && !s.v["error"].is_null() {
            let last_ok = s.u("last_ok_ms");
            let transport = s.v["error"]
                .as_str()
                .is_some_and(|e| e.contains("RemoteProtocolError") || e.contains("ReadError"));
            if !transport || !window.contains(&(last_ok + 1000)) {
                bad(format!(
                    "ended by {} with its last ok call at kill{:+} ms",
                    s.v["error"],
                    last_ok as i64 - kill_ms as i64
                ));
            }
            if s.u("initializes") != 1 || s.u("sids_sent") != 1 {
                bad("a new initialize".into());
            }
            plain_lost += 1;
            continue;
        }
        if !s.v["error"].is_null() {
            bad(format!("error {}", s.v["error"]));
        }
        // One session id throughout: no new initialize, the id sent is the one first given.
        if s.u("initializes") != 1 || s.u("sids_sent") != 1 || s.v["sid_start"] != s.v["sid_end"] {
            bad(format!(
                "session id changed: {} initializes, {} ids sent",
                s.u("initializes"),
                s.u("sids_sent")
            ));
        }
        if s.u("delete_status") != 200 {
            bad(format!("DELETE answered {}", s.v["delete_status"]));
        }
        if s.ok_started_after(t0, width, settle) == 0 {
            bad(format!(
                "no call started {SDK_SETTLE:?} after the kill succeeded (last ok at kill{:+} ms)",
                s.u("last_ok_ms") as i64 - kill_ms as i64
            ));
        }
        *failed_calls.entry(s.label.clone()).or_default() += s.u("failed");
        for f in s.v["failures"].as_array().into_iter().flatten() {
            let start = f[0].as_u64().unwrap_or(0);
            if !window.contains(&start) {
                bad(format!(
                    "a call failed outside the kill's window (started at kill{:+} ms): {}",
                    start as i64 - kill_ms as i64,
                    f[2]
                ));
            }
        }
        // The GET stream: numbered from 1 without a gap or a repeat, still going after the kill.
        let q = &s.v["seq"];
        if q["first"].as_u64() != Some(1)
            || q["contiguous"] != Value::Bool(true)
            || q["duplicates"].as_u64() != Some(0)
        {
            bad(format!("GET stream numbering: {q}"));
        }
        if q["last_at_ms"].as_u64().unwrap_or(0) < settle {
            bad(format!(
                "the GET stream stopped before kill + {SDK_SETTLE:?}: {q}"
            ));
        }
        let reopens = s.reopens();
        if !reopens.is_empty() {
            *reopened.entry(s.label.clone()).or_default() += 1;
        }
        for (at, last, status) in &reopens {
            if last.is_none() || status != "200" {
                bad(format!(
                    "GET stream reopened at kill{:+} ms with Last-Event-ID {last:?}: {status}",
                    *at as i64 - kill_ms as i64
                ));
            }
        }
    }
    let resumed: f64 = survivors.iter().map(|&i| c.metric(i, resumed_series)).sum();
    eprintln!(
        "{name} killed; sessions whose GET stream was reopened, by SDK: {reopened:?}; failed \
         calls by SDK: {failed_calls:?}; plain Python SDK sessions lost: {plain_lost} of \
         {SDK_PLAIN}; {resumed_series} on the survivors {resumed_before} -> {resumed}; \
         sessions:\n{all}"
    );
    assert!(
        problems.is_empty(),
        "{} problems (kill of {name} at unix ms {kill_ms}):\n{}\nsessions:\n{all}",
        problems.len(),
        problems.join("\n")
    );
    let reopened_total: usize = reopened.values().sum();
    assert!(
        reopened_total > 0,
        "no GET stream was reopened, though {name} held {} of them:\n{all}",
        before[victim].1
    );
    assert!(
        resumed - resumed_before >= reopened_total as f64,
        "{reopened_total} GET streams reopened with Last-Event-ID, but the survivors resumed \
         {} from the upstream ({resumed_series} by node {:?})",
        resumed - resumed_before,
        c.metric_by_node(resumed_series)
    );
}
