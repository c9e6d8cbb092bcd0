//! The legacy HTTP+SSE transport (2024-11-05) toward servers: `kind = "sse"` upstreams.
//!
//! - The official Python SDK's SSE server (`peer_server.py --transport sse`, what
//!   `MCPServer.run("sse")` serves) behind a gateway of 2 shards, driven by the Python SDK's
//!   Streamable HTTP client in every mode (legacy, auto, 2026-07-28) and by the TypeScript SDK's
//!   client, 20 sessions at once each: initialize or discover, tools, progress, a sampling round
//!   trip, a notification on the GET stream, DELETE. Afterwards no session, client connection or
//!   event stream beyond the shared stateless ones is left, on the gateway or on the server.
//! - An endpoint event naming another origin is refused: the client gets a JSON-RPC error, the
//!   refusal is counted, and nothing reaches the other origin.
//! - A server whose stream drops ends its sessions: the next request is a 404, counted.

#[path = "support/process.rs"]
mod support;

#[path = "support/interop.rs"]
mod peers;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use peers::{peers, run_all, run_client, Cell, Server};
use support::*;

const SESSIONS: usize = 20;
const CELL_LIMIT: Duration = Duration::from_secs(150);

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// The Python SDK's legacy SSE server.
fn python_sse_server(label: &str) -> Server {
    let p = peers();
    let cmd = vec![
        p.python.display().to_string(),
        p.py("peer_server.py"),
        "--transport".into(),
        "sse".into(),
    ];
    Server::start(label, &cmd)
}

fn sse_gateway(port: u16) -> Proc {
    gateway_config(
        2,
        &format!("[upstream]\nkind = \"sse\"\nurl = \"http://127.0.0.1:{port}/sse\"\n"),
    )
}

/// What the Python SSE server's `/sessions` reports: its event streams open now.
fn server_streams_open(port: u16) -> f64 {
    let r = get(([127, 0, 0, 1], port).into(), "/sessions");
    r.json()["open"].as_f64().unwrap_or(-1.0)
}

#[test]
fn sdk_clients_reach_a_python_sdk_sse_server() {
    let p = peers();
    let server = python_sse_server("python-sse");
    let gw = sse_gateway(server.port);
    let url = format!("http://{}/mcp", gw.addr("listen"));
    let mut jobs: Vec<Box<dyn FnOnce() -> Cell + Send>> = Vec::new();
    let common = |label: &str| {
        s(&[
            "--sessions",
            &SESSIONS.to_string(),
            "--label",
            label,
            "--timeout-s",
            "120",
            "--url",
            &url,
        ])
    };
    for mode in ["legacy", "auto", "2026-07-28"] {
        let label = format!("python {mode} -> python sse");
        let mut cmd = vec![p.python.display().to_string(), p.py("peer_client.py")];
        cmd.extend(common(&label));
        cmd.extend(s(&["--mode", mode]));
        jobs.push(Box::new(move || run_client(&label, &cmd, CELL_LIMIT)));
    }
    let label = "typescript -> python sse".to_string();
    let mut cmd = vec![p.node.display().to_string(), p.ts("peer_client.mjs")];
    cmd.extend(common(&label));
    jobs.push(Box::new(move || run_client(&label, &cmd, CELL_LIMIT)));
    let cells = run_all(2, jobs);
    let mut failed = Vec::new();
    for c in &cells {
        eprintln!(
            "{}: {}/{} ({} , {:.1} s) skipped: {:?}",
            c.label,
            c.passed,
            c.sessions,
            c.versions.join(" "),
            c.secs,
            c.skipped
        );
        if !c.ok() {
            failed.push(format!("{}: {}", c.label, c.failures.join(" | ")));
        }
    }
    assert!(
        failed.is_empty(),
        "failed cells:\n{}\n{}",
        failed.join("\n"),
        gw.stderr()
    );
    let admin = gw.addr("admin");
    // The shared stateless peers (one per shard at most) stay; everything else is gone.
    let ok = eventually(Duration::from_secs(15), || {
        metric(admin, "shardcat_sessions") == 0.0
            && metric(admin, "shardcat_connections") == 0.0
            && metric(admin, "shardcat_legacy_sse_streams") <= 2.0
            && server_streams_open(server.port) == metric(admin, "shardcat_legacy_sse_streams")
    });
    assert!(
        ok,
        "left over: sessions {}, connections {}, gateway streams {}, server streams {}\n{}",
        metric(admin, "shardcat_sessions"),
        metric(admin, "shardcat_connections"),
        metric(admin, "shardcat_legacy_sse_streams"),
        server_streams_open(server.port),
        gw.stderr()
    );
    let opened = metric(admin, "shardcat_legacy_sse_opened_total");
    assert!(
        opened >= (2 * SESSIONS) as f64,
        "only {opened} streams opened for {} handshake-era sessions",
        2 * SESSIONS
    );
    assert_eq!(metric(admin, "shardcat_legacy_sse_dropped_total"), 0.0);
    assert_eq!(
        metric(admin, "shardcat_legacy_sse_post_failures_total"),
        0.0
    );
}

/// A legacy SSE server of our own: answers `GET /sse` with an event stream whose first event is
/// `endpoint` naming `endpoint`; each POST gets 202 and its request is answered on the stream
/// (initialize with a result, anything else with an empty result); the stream is cut after
/// `cut_after` POSTs.
fn fake_sse_server(endpoint: String, cut_after: usize) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let posts = Arc::new(AtomicUsize::new(0));
    let seen = posts.clone();
    let endpoint = endpoint.replace("{port}", &port.to_string());
    std::thread::spawn(move || {
        let (tx, rx) = std::sync::mpsc::channel::<Option<String>>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = Vec::new();
            let Some((line, body)) = read_request(&mut conn, &mut buf) else {
                continue;
            };
            if line.starts_with("GET /sse") {
                let rx = rx.clone();
                let endpoint = endpoint.clone();
                std::thread::spawn(move || {
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n";
                    let _ = write!(conn, "{head}event: endpoint\ndata: {endpoint}\n\n");
                    let rx = rx.lock().expect("lock");
                    while let Ok(Some(msg)) = rx.recv() {
                        if write!(conn, "event: message\ndata: {msg}\n\n").is_err() {
                            return;
                        }
                    }
                    // Cut: the stream ends.
                });
                continue;
            }
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            let _ = conn.write_all(
                b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if let Some(id) = v.get("id") {
                let result = if v["method"] == "initialize" {
                    serde_json::json!({"protocolVersion": "2024-11-05", "capabilities": {},
                        "serverInfo": {"name": "fake-sse", "version": "1"}})
                } else {
                    serde_json::json!({})
                };
                let answer = serde_json::json!({"jsonrpc": "2.0", "id": id, "result": result});
                let _ = tx.send(Some(answer.to_string()));
            }
            if n >= cut_after {
                let _ = tx.send(None);
            }
        }
    });
    (port, posts)
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
const INIT_HEADERS: [(&str, &str); 1] = [("accept", "application/json, text/event-stream")];

#[test]
fn an_endpoint_on_another_origin_is_refused() {
    // Something listens on the other origin, to show that nothing reaches it.
    let other = TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    other.set_nonblocking(true).expect("nonblocking");
    let endpoint = format!(
        "http://127.0.0.2:{}/messages?session_id=x",
        other.local_addr().expect("addr").port()
    );
    let (port, posts) = fake_sse_server(endpoint, usize::MAX);
    let gw = sse_gateway(port);
    let r = post(gw.addr("listen"), &INIT_HEADERS, INIT);
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.rpc_code() < 0, "no JSON-RPC error: {}", r.text());
    let admin = gw.addr("admin");
    assert!(metric(admin, "shardcat_legacy_sse_refused_total") >= 1.0);
    assert!(
        gw.stderr().contains("is on another origin"),
        "{}",
        gw.stderr()
    );
    assert_eq!(metric(admin, "shardcat_legacy_sse_opened_total"), 0.0);
    assert_eq!(posts.load(Ordering::SeqCst), 0);
    let mut byte = [0u8; 1];
    match other.accept() {
        Ok((mut c, _)) => panic!("the other origin was reached: {:?}", c.read(&mut byte)),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
    }
    assert!(eventually(Duration::from_secs(5), || metric(
        admin,
        "shardcat_sessions"
    ) == 0.0));
}

#[test]
fn a_dropped_stream_ends_its_session() {
    // initialize and notifications/initialized are POSTed; then the stream is cut.
    let (port, posts) = fake_sse_server("/messages?session_id=x".into(), 2);
    let gw = sse_gateway(port);
    let addr = gw.addr("listen");
    let r = post(addr, &INIT_HEADERS, INIT);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["result"]["serverInfo"]["name"], "fake-sse");
    let sid = r.header("mcp-session-id").expect("session id").to_string();
    let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let headers = [
        ("accept", "application/json, text/event-stream"),
        ("mcp-session-id", sid.as_str()),
    ];
    assert_eq!(post(addr, &headers, note).status, 202);
    let admin = gw.addr("admin");
    assert!(
        eventually(Duration::from_secs(10), || metric(
            admin,
            "shardcat_legacy_sse_dropped_total"
        ) == 1.0),
        "{}",
        gw.stderr()
    );
    assert_eq!(posts.load(Ordering::SeqCst), 2);
    let r = post(addr, &headers, &echo_call(2, "after"));
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(metric(admin, "shardcat_sessions"), 0.0);
    assert!(
        gw.stderr().contains("event stream ended"),
        "{}",
        gw.stderr()
    );
    let _ = TcpStream::connect(("127.0.0.1", port));
}
