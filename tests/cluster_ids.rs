//! Clustered session ids between real gateway nodes, without a balancer in front: each test
//! starts two or three nodes (`[cluster]`, one shared key file) on distinct loopback addresses
//! (127.0.0.2, 127.0.0.3, ...) and sends a session's requests to the node it chooses.
//!
//! Covered: a session begun on one node continued on another and back (24 sessions at once,
//! 2 shards per node, in front of the demo server and of the official Python SDK server);
//! DELETE on either node ends the session on both; tampered ids (every character changed,
//! truncated, extended) and foreign ones get 404 with a JSON-RPC error, counted by reason;
//! an SSE stream resumed on another node from the upstream's own event id, and a
//! `Last-Event-ID` that carried none counted as missed; stdio sessions pinned to their node;
//! key rotation (the previous key still opens, a node without it refuses); the maximum age
//! counted from the session's start on another node; a node's graceful shutdown leaving its
//! sealed sessions to the others. The tests through HAProxy are in `tests/cluster.rs`.

#[path = "support/interop.rs"]
mod peers;
#[path = "support/process.rs"]
mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use support::*;

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A key file written by `shardcat gen-key`.
fn key_file() -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardcat"))
        .arg("gen-key")
        .output()
        .expect("gen-key");
    assert!(out.status.success(), "gen-key failed");
    let path = std::env::temp_dir().join(format!(
        "shardcat-cluster-{}-{}.key",
        std::process::id(),
        unique()
    ));
    std::fs::write(&path, &out.stdout).expect("write key");
    path.display().to_string()
}

/// Node `name` on 127.0.0.`host` (port 0), 2 shards, with `upstream` (TOML) and the keys.
fn node(name: &str, host: u8, upstream: &str, key: &str, previous: Option<&str>) -> Proc {
    let previous = previous
        .map(|p| format!("previous_session_key_file = \"{p}\"\n"))
        .unwrap_or_default();
    node_with(
        name,
        host,
        upstream,
        &format!("session_key_file = \"{key}\"\n{previous}"),
    )
}

/// `node`, with `cluster` as the `[cluster]` table's lines beside `node_id`.
fn node_with(name: &str, host: u8, upstream: &str, cluster: &str) -> Proc {
    let toml = format!("{upstream}\n[cluster]\nnode_id = \"{name}\"\n{cluster}");
    let path = std::env::temp_dir().join(format!(
        "shardcat-cluster-{}-{}.toml",
        std::process::id(),
        unique()
    ));
    std::fs::write(&path, toml).expect("write config");
    let listen = format!("127.0.0.{host}:0");
    Proc::start(&[
        "serve",
        "--listen",
        &listen,
        "--admin",
        &listen,
        "--shards",
        "2",
        "--config",
        path.to_str().expect("utf-8 path"),
    ])
}

fn http_upstream(url: &str) -> String {
    format!("[upstream]\nurl = \"{url}\"\n")
}

/// The JSON-RPC message of an answer, whether JSON or an SSE stream (the last `data:`
/// holding a response).
fn message(r: &Response) -> serde_json::Value {
    if r.header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream"))
    {
        let text = r.text();
        let data = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .rfind(|d| d.contains("\"id\""))
            .unwrap_or_else(|| panic!("no response in the stream: {text}"));
        return serde_json::from_str(data).expect("event data is JSON");
    }
    r.json()
}

const V: &str = "2025-06-18";

fn in_session(addr: SocketAddr, sid: &str, body: &str) -> Response {
    post(
        addr,
        &[("mcp-session-id", sid), ("mcp-protocol-version", V)],
        body,
    )
}

/// Initializes on `addr` and sends `notifications/initialized`; the session id.
fn open(addr: SocketAddr) -> String {
    let sid = initialize(addr);
    let r = in_session(addr, &sid, INITIALIZED);
    assert_eq!(r.status, 202, "initialized: {}", r.text());
    sid
}

/// `echo` through `addr` in session `sid`: the text it returned, or the status.
fn echo(addr: SocketAddr, sid: &str, id: u64, text: &str) -> Result<String, u16> {
    let r = in_session(addr, sid, &echo_call(id, text));
    if r.status != 200 {
        return Err(r.status);
    }
    let m = message(&r);
    Ok(m["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no echo text: {m}"))
        .to_string())
}

fn refused(admin: SocketAddr, reason: &str) -> f64 {
    metric(
        admin,
        &format!("shardcat_cluster_ids_refused_total{{reason=\"{reason}\"}}"),
    )
}

/// 24 sessions at once, each begun on `a`, continued on `b`, then on `a` again; every echo
/// comes back. Returns the session ids.
fn continue_across(a: SocketAddr, b: SocketAddr, label: &str) -> Vec<String> {
    let threads: Vec<_> = (0..24)
        .map(|i| {
            let label = label.to_string();
            std::thread::spawn(move || {
                let sid = open(a);
                assert!(!sid.contains('.'), "an HTTP session's id is sealed: {sid}");
                for (n, at) in [(2, b), (3, a), (4, b)] {
                    let text = format!("{label}-{i}-{n}");
                    let got = echo(at, &sid, n, &text);
                    assert_eq!(got.as_deref(), Ok(text.as_str()), "session {i} call {n}");
                }
                sid
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("a session failed"))
        .collect()
}

#[test]
fn any_node_continues_a_session_another_began() {
    let demo = demo();
    let key = key_file();
    let up = http_upstream(&demo_url(&demo));
    let n1 = node("n1", 2, &up, &key, None);
    let n2 = node("n2", 3, &up, &key, None);
    let (a, b) = (n1.addr("listen"), n2.addr("listen"));
    let sids = continue_across(a, b, "demo");
    let len = sids.iter().map(String::len).max().unwrap_or(0);
    assert!(len <= 200, "a sealed id of one server stays short: {len}");
    let adopted = |n: &Proc| metric(n.addr("admin"), "shardcat_cluster_sessions_adopted_total");
    assert_eq!(adopted(&n2), 24.0, "each session adopted once by n2");
    assert_eq!(adopted(&n1), 0.0, "n1 began them all and still holds them");
    // DELETE on n2 ends half of them: refused on n2 (it saw the end) and on n1 (the upstream
    // forgot them); the other half go on.
    let (ended, kept) = sids.split_at(12);
    for sid in ended {
        assert_eq!(delete(b, sid).status, 200);
    }
    for (i, sid) in ended.iter().enumerate() {
        assert_eq!(echo(b, sid, 9, "x"), Err(404), "ended {i} on n2");
        assert_eq!(echo(a, sid, 9, "x"), Err(404), "ended {i} on n1");
    }
    assert_eq!(refused(n2.addr("admin"), "ended"), 12.0);
    for sid in kept {
        assert_eq!(echo(a, sid, 10, "on").as_deref(), Ok("on"));
        assert_eq!(echo(b, sid, 11, "on").as_deref(), Ok("on"));
    }
}

#[test]
fn sessions_of_the_python_sdk_server_continue_on_another_node() {
    let p = peers::peers();
    let cmd = vec![
        p.python.display().to_string(),
        p.py("peer_server.py"),
        "--transport".into(),
        "http".into(),
        "--port".into(),
        "0".into(),
    ];
    let server = peers::Server::start(&format!("cluster-py-{}", unique()), &cmd);
    let key = key_file();
    let up = http_upstream(&server.url());
    let n1 = node("n1", 2, &up, &key, None);
    let n2 = node("n2", 3, &up, &key, None);
    let sids = continue_across(n1.addr("listen"), n2.addr("listen"), "py");
    assert_eq!(sids.len(), 24);
    let adopted = metric(n2.addr("admin"), "shardcat_cluster_sessions_adopted_total");
    assert_eq!(adopted, 24.0);
    for sid in &sids {
        assert_eq!(delete(n2.addr("listen"), sid).status, 200);
    }
}

/// Every character of `token` changed, the token cut short and made longer.
fn tampered(token: &str) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..token.len() {
        let mut b = token.as_bytes().to_vec();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        out.push(String::from_utf8(b).expect("ascii"));
    }
    for n in [1, 4, token.len() / 2, token.len() - 1] {
        out.push(token[..n].to_string());
    }
    out.push(format!("{token}A"));
    out.push(format!("{token}AAAA"));
    out.push(format!("A{token}"));
    out.push("A".repeat(5000));
    out
}

#[test]
fn tampered_and_foreign_ids_get_404_and_are_counted() {
    let demo = demo();
    let (key, other) = (key_file(), key_file());
    let up = http_upstream(&demo_url(&demo));
    let n1 = node("n1", 2, &up, &key, None);
    let stranger = node("zz", 3, &up, &other, None);
    let addr = n1.addr("listen");
    let sid = open(addr);
    let bad = tampered(&sid);
    for (i, t) in bad.iter().enumerate() {
        let r = in_session(addr, t, &echo_call(7, "x"));
        assert_eq!(r.status, 404, "tampered id {i} ({t}): {}", r.text());
        assert!(r.json()["error"]["code"].is_i64(), "a JSON-RPC error");
    }
    // A sealed id of a cluster with another key, and another node's pinned id.
    let theirs = open(stranger.addr("listen"));
    assert_eq!(echo(addr, &theirs, 8, "x"), Err(404));
    let pinned = format!("zz.{}", "0".repeat(42));
    assert_eq!(echo(addr, &pinned, 8, "x"), Err(404));
    let admin = n1.addr("admin");
    let counted: f64 = ["malformed", "forged", "invalid"]
        .iter()
        .map(|r| refused(admin, r))
        .sum();
    assert_eq!(counted, bad.len() as f64 + 1.0, "each refusal counted once");
    assert_eq!(refused(admin, "foreign_node"), 1.0);
    // Nothing broke: the real id still works, on every shard.
    for i in 0..4 {
        assert_eq!(echo(addr, &sid, 20 + i, "ok").as_deref(), Ok("ok"));
    }
}

/// Reads SSE events from a GET stream on `addr` until `n` data events arrived: their ids and
/// the `seq` each carried (the demo's numbering).
fn read_events(addr: SocketAddr, sid: &str, last: Option<&str>, n: usize) -> Vec<(String, u64)> {
    let mut c = Client::connect(addr);
    let last = last
        .map(|l| format!("last-event-id: {l}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET /mcp HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\nmcp-session-id: {sid}\r\nmcp-protocol-version: {V}\r\n{last}\r\n"
    );
    c.send_raw(req.as_bytes()).expect("send");
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let mut out = Vec::new();
    while out.len() < n {
        let k = c.stream.read(&mut tmp).expect("read the stream");
        assert!(k > 0, "stream closed: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&tmp[..k]);
        let text = String::from_utf8_lossy(&buf).to_string();
        out = text
            .split("\n\n")
            .filter_map(|ev| {
                let id = ev.lines().find_map(|l| l.strip_prefix("id: "))?;
                let data = ev.lines().find_map(|l| l.strip_prefix("data: "))?;
                let v: serde_json::Value = serde_json::from_str(data).ok()?;
                Some((id.trim().to_string(), v["params"]["data"]["seq"].as_u64()?))
            })
            .collect();
    }
    out.truncate(n);
    out
}

#[test]
fn a_stream_resumes_on_another_node_from_the_upstream() {
    let demo = demo();
    let key = key_file();
    let up = http_upstream(&demo_url(&demo));
    let n1 = node("n1", 2, &up, &key, None);
    let n2 = node("n2", 3, &up, &key, None);
    let (a, b) = (n1.addr("listen"), n2.addr("listen"));
    let sid = open(a);
    let first = read_events(a, &sid, None, 3);
    let (last_id, last_seq) = first.last().cloned().expect("three events");
    assert!(
        last_id.contains('.'),
        "the id carries the upstream's: {last_id}"
    );
    let rest = read_events(b, &sid, Some(&last_id), 2);
    assert_eq!(
        rest.iter().map(|e| e.1).collect::<Vec<_>>(),
        vec![last_seq + 1, last_seq + 2],
        "n2 continues the upstream's numbering: {first:?} then {rest:?}"
    );
    let admin = n2.addr("admin");
    assert_eq!(metric(admin, "shardcat_sse_resumed_upstream_total"), 1.0);
    assert_eq!(metric(admin, "shardcat_sse_resume_missed_total"), 0.0);
    // n2 numbers its own streams from 1: n1's stream 1 is not n2's stream 1. Resuming from
    // the same id again goes to the upstream again, not to n2's stream of that number.
    let again = read_events(b, &sid, Some(&last_id), 1);
    assert_eq!(again[0].1, last_seq + 1, "{again:?}");
    assert_eq!(metric(admin, "shardcat_sse_resumed_upstream_total"), 2.0);
    // An id that carries nothing, of a stream n2 does not hold: a fresh stream, counted.
    let fresh = read_events(b, &sid, Some("77-3"), 1);
    assert_eq!(fresh.len(), 1);
    assert_eq!(metric(admin, "shardcat_sse_resume_missed_total"), 1.0);
}

#[test]
fn stdio_sessions_are_pinned_to_their_node() {
    let key = key_file();
    let up = format!(
        "[[upstream]]\nkind = \"stdio\"\ncommand = \"{}\"\nkill_grace_ms = 500\n",
        fixture_bin("mcp-stdio-server").display()
    );
    let n1 = node("n1", 2, &up, &key, None);
    let n2 = node("n2", 3, &up, &key, None);
    let (a, b) = (n1.addr("listen"), n2.addr("listen"));
    let sid = initialize(a);
    let (node, local) = sid.split_once('.').expect("a pinned id");
    assert_eq!((node, local.len()), ("n1", 42), "{sid}");
    assert_eq!(in_session(a, &sid, INITIALIZED).status, 202);
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    for _ in 0..4 {
        assert_eq!(in_session(a, &sid, list).status, 200, "on its node");
    }
    let r = in_session(b, &sid, list);
    assert_eq!(r.status, 404, "another node does not guess: {}", r.text());
    assert_eq!(refused(n2.addr("admin"), "foreign_node"), 1.0);
    assert_eq!(delete(a, &sid).status, 200);
}

#[test]
fn a_rotated_key_still_opens_old_ids_until_it_is_dropped() {
    let demo = demo();
    let (old, new) = (key_file(), key_file());
    let up = http_upstream(&demo_url(&demo));
    let before = node("n1", 2, &up, &old, None);
    let sid = open(before.addr("listen"));
    let rolled = node("n2", 3, &up, &new, Some(&old));
    let done = node("n3", 4, &up, &new, None);
    assert_eq!(
        echo(rolled.addr("listen"), &sid, 2, "rolled").as_deref(),
        Ok("rolled"),
        "the previous key opens ids sealed before the rotation"
    );
    assert_eq!(echo(done.addr("listen"), &sid, 3, "x"), Err(404));
    assert_eq!(refused(done.addr("admin"), "forged"), 1.0);
    // Ids sealed after the rotation open on both.
    let fresh = open(rolled.addr("listen"));
    assert_eq!(
        echo(done.addr("listen"), &fresh, 4, "new").as_deref(),
        Ok("new")
    );
}

#[test]
fn the_maximum_age_counts_from_the_start_on_another_node() {
    let demo = demo();
    let key = key_file();
    let up = format!(
        "{}\n[timeouts]\nsession_max_age_ms = 2000\n",
        http_upstream(&demo_url(&demo))
    );
    let n1 = node("n1", 2, &up, &key, None);
    let n2 = node("n2", 3, &up, &key, None);
    let sid = open(n1.addr("listen"));
    // Issue times are whole seconds: past 2 s of age for sure after 3.1 s.
    std::thread::sleep(Duration::from_millis(3100));
    assert_eq!(echo(n2.addr("listen"), &sid, 2, "x"), Err(404));
    assert_eq!(refused(n2.addr("admin"), "expired"), 1.0);
}

#[test]
fn a_node_that_stops_leaves_its_sessions_to_the_others() {
    let demo = demo();
    let key = key_file();
    let up = http_upstream(&demo_url(&demo));
    let mut n1 = node("n1", 2, &up, &key, None);
    let n2 = node("n2", 3, &up, &key, None);
    let sids: Vec<String> = (0..4).map(|_| open(n1.addr("listen"))).collect();
    assert_eq!(
        n1.terminate(Duration::from_secs(10)),
        Some(0),
        "graceful stop"
    );
    for (i, sid) in sids.iter().enumerate() {
        let got = echo(n2.addr("listen"), sid, 5, "after");
        assert_eq!(got.as_deref(), Ok("after"), "session {i} after n1 stopped");
    }
}

#[test]
fn a_federated_session_moves_with_every_server_in_its_id() {
    let demos = [demo(), demo(), demo()];
    let key = key_file();
    let mut up = String::from("[gateway]\n");
    for (name, d) in ["a", "b", "c"].iter().zip(&demos) {
        up.push_str(&format!(
            "[[server]]\nname = \"{name}\"\nurl = \"{}\"\n",
            demo_url(d)
        ));
    }
    up.push_str("[[route]]\npath = \"/mcp\"\nservers = [\"a\", \"b\", \"c\"]\n");
    // The `[cluster]` table follows the route's: `node` appends it.
    let n1 = node("n1", 2, &up, &key, None);
    let n2 = node("n2", 3, &up, &key, None);
    let (a, b) = (n1.addr("listen"), n2.addr("listen"));
    let sid = open(a);
    eprintln!(
        "sealed id with three servers: {} characters (one server: see the other tests)",
        sid.len()
    );
    assert!(!sid.contains('.') && sid.len() <= 300, "{sid}");
    for (i, server) in ["a", "b", "c"].iter().enumerate() {
        let call = format!(
            r#"{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"name":"{server}__echo","arguments":{{"text":"via-{server}"}}}}}}"#,
            10 + i
        );
        let r = in_session(b, &sid, &call);
        assert_eq!(r.status, 200, "{server} on n2: {}", r.text());
        let m = message(&r);
        assert_eq!(
            m["result"]["content"][0]["text"].as_str(),
            Some(format!("via-{server}").as_str()),
            "{m}"
        );
    }
    let adopted = metric(n2.addr("admin"), "shardcat_cluster_sessions_adopted_total");
    assert_eq!(adopted, 1.0);
    assert_eq!(delete(b, &sid).status, 200);
    // n1 still holds it: server a's answer (404, it ended there) ends it on n1 too.
    let call = r#"{"jsonrpc":"2.0","id":20,"method":"tools/call","params":{"name":"a__echo","arguments":{"text":"x"}}}"#;
    let r = in_session(a, &sid, call);
    assert_eq!(r.status, 404, "every server's session ended: {}", r.text());
}

/// `req` on a fresh connection to `addr`, after `proxy` (a PROXY protocol header).
fn proxied(addr: SocketAddr, proxy: &[u8], req: &[u8]) -> Response {
    let mut c = Client::connect(addr);
    let mut bytes = proxy.to_vec();
    bytes.extend_from_slice(req);
    c.send_raw(&bytes).expect("send");
    c.read_response().expect("response")
}

fn init_request(addr: SocketAddr) -> Vec<u8> {
    format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ncontent-length: {}\r\n\r\n{INIT}",
        INIT.len()
    )
    .into_bytes()
}

/// A PROXY protocol v2 header for a TCP4 client `ip`:`port` (`LOCAL` when `local`).
fn proxy_v2(ip: [u8; 4], port: u16, local: bool) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[if local { 0x20 } else { 0x21 }, 0x11, 0, 12]);
    h.extend_from_slice(&ip);
    h.extend_from_slice(&[127, 0, 0, 2]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&8080u16.to_be_bytes());
    h
}

#[test]
fn behind_a_balancer_the_proxy_header_names_the_client() {
    let demo = demo();
    let toml = format!(
        "[server]\nproxy_protocol = true\n{}[limits]\nmax_sessions_per_client = 1\n",
        http_upstream(&demo_url(&demo))
    );
    let gw = gateway_config(2, &toml);
    let addr = gw.addr("listen");
    let init = init_request(addr);
    // Two clients behind one balancer address: one session each, whichever version names
    // them; a second session of the first client is over its limit.
    let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.2 40000 8080\r\n";
    let a = proxied(addr, v1, &init);
    assert_eq!(a.status, 200, "{}", a.text());
    let b = proxied(addr, &proxy_v2([203, 0, 113, 8], 40001, false), &init);
    assert_eq!(b.status, 200, "another client: {}", b.text());
    let again = proxied(addr, &proxy_v2([203, 0, 113, 7], 40002, false), &init);
    assert_eq!(
        again.status,
        429,
        "the first client again: {}",
        again.text()
    );
    // A LOCAL header (the balancer's own check) leaves the connection's peer as the client.
    let local = proxied(addr, &proxy_v2([0, 0, 0, 0], 0, true), &init);
    assert_eq!(local.status, 200, "{}", local.text());
    // No header, or a broken one: 400 with a JSON-RPC error, and the gateway goes on.
    for bad in [&b""[..], b"PROXY TCP4 nonsense\r\n", b"PROXY UDP9 x\r\n"] {
        let r = proxied(addr, bad, &init);
        assert_eq!(
            r.status,
            400,
            "{:?}: {}",
            String::from_utf8_lossy(bad),
            r.text()
        );
        assert!(r.json()["error"]["code"].is_i64());
    }
    // The header is read once per connection: the next request on it has none.
    let mut c = Client::connect(addr);
    let mut first = proxy_v2([203, 0, 113, 9], 40003, false);
    first.extend_from_slice(&init);
    c.send_raw(&first).expect("send");
    let r = c.read_response().expect("response");
    assert_eq!(r.status, 200);
    let sid = r.header("mcp-session-id").expect("sid").to_string();
    let call = echo_call(2, "kept");
    let second = format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nmcp-session-id: {sid}\r\nmcp-protocol-version: {V}\r\ncontent-length: {}\r\n\r\n{call}",
        call.len()
    );
    c.send_raw(second.as_bytes()).expect("send");
    let r = c.read_response().expect("response");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("kept"));
}

#[test]
fn a_node_that_lets_a_sealed_session_idle_out_only_forgets_it() {
    let demo = demo();
    let key = key_file();
    let up = http_upstream(&demo_url(&demo));
    // Forgotten after 1 s unused, though sessions idle out after the default 5 minutes.
    let cluster = format!("session_key_file = \"{key}\"\nforget_idle_ms = 1000\n");
    let n1 = node_with("n1", 2, &up, &cluster);
    let (a, admin) = (n1.addr("listen"), n1.addr("admin"));
    let sid = open(a);
    assert!(
        eventually(Duration::from_secs(10), || metric(
            admin,
            "shardcat_sessions_expired_total"
        ) == 1.0),
        "n1 let the session idle out"
    );
    assert_eq!(metric(admin, "shardcat_sessions"), 0.0);
    // The upstream session was not ended: n1 adopts the id again and goes on with it.
    assert_eq!(echo(a, &sid, 2, "back").as_deref(), Ok("back"));
    assert_eq!(
        metric(admin, "shardcat_cluster_sessions_adopted_total"),
        1.0
    );
}
