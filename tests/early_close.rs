//! A client that closes its initialize answer early. The official Python SDK client reads the
//! SSE event carrying the initialize result and closes the response before its last chunk;
//! the session must stand. A client that never got the result must not leave a session behind.
//!
//! The upstream here answers initialize with SSE on a schedule (head, result event, last
//! chunk), so each close point is reached for certain: before the head, after the head, after
//! the result event, after the last chunk.

#[path = "support/process.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use support::*;

/// When the upstream sends each part of its initialize answer.
#[derive(Clone, Copy)]
struct Schedule {
    before_head: Duration,
    before_result: Duration,
    before_end: Duration,
}

const NOW: Duration = Duration::ZERO;
const LATER: Duration = Duration::from_millis(400);

/// An upstream whose initialize answer is an SSE stream sent on `schedule`; its sessions are
/// `up-1`, `up-2`, ... Other POSTs get a JSON result; DELETEs are reported on the channel.
fn sse_initialize_upstream(schedule: Schedule) -> (SocketAddr, mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (i, s) in l.incoming().enumerate() {
            let Ok(s) = s else { return };
            let (n, tx) = (i + 1, tx.clone());
            std::thread::spawn(move || serve(s, schedule, n, tx));
        }
    });
    (addr, rx)
}

fn serve(mut s: TcpStream, schedule: Schedule, n: usize, tx: mpsc::Sender<String>) {
    let mut buf = Vec::new();
    while let Some((head, body)) = read_request(&mut s, &mut buf) {
        let lower = head.to_ascii_lowercase();
        if lower.starts_with("delete") {
            let sid = lower
                .lines()
                .find_map(|l| l.strip_prefix("mcp-session-id:"))
                .unwrap_or("")
                .trim()
                .to_string();
            let _ = tx.send(sid);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        } else if body.contains("\"initialize\"") {
            if !initialize_answer(&mut s, schedule, n) {
                return;
            }
        } else {
            let ok = r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[]}}"#;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ok}",
                ok.len()
            );
            if s.write_all(resp.as_bytes()).is_err() {
                return;
            }
        }
    }
}

/// Writes the initialize answer of session `up-n` in three parts. False once the gateway left.
fn initialize_answer(s: &mut TcpStream, schedule: Schedule, n: usize) -> bool {
    let result = r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"sse-init","version":"1"}}}"#;
    let event = format!("event: message\ndata: {result}\n\n");
    std::thread::sleep(schedule.before_head);
    let head = format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nmcp-session-id: up-{n}\r\ntransfer-encoding: chunked\r\n\r\n");
    if s.write_all(head.as_bytes()).is_err() {
        return false;
    }
    std::thread::sleep(schedule.before_result);
    let chunk = format!("{:x}\r\n{event}\r\n", event.len());
    if s.write_all(chunk.as_bytes()).is_err() {
        return false;
    }
    std::thread::sleep(schedule.before_end);
    s.write_all(b"0\r\n\r\n").is_ok()
}

/// Where the client closes its connection.
#[derive(Debug, Clone, Copy)]
enum Close {
    BeforeHead,
    AfterHead,
    AfterResult,
    AfterLastChunk,
}

/// Reads from `c` until `buf` holds `needle`; the bytes read so far.
fn read_until(c: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while !buf.windows(needle.len()).any(|w| w == needle) {
        match c.read(&mut tmp) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    buf
}

/// Sends initialize, closes at `at`; returns the gateway's session id when the head was read.
fn initialize_and_close(addr: SocketAddr, at: Close) -> Option<String> {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\naccept: application/json, text/event-stream\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{INIT}",
        INIT.len()
    );
    c.write_all(req.as_bytes()).unwrap();
    let read = match at {
        Close::BeforeHead => return None,
        Close::AfterHead => read_until(&mut c, b"\r\n\r\n"),
        Close::AfterResult => read_until(&mut c, b"}}\n\n"),
        Close::AfterLastChunk => read_until(&mut c, b"\r\n0\r\n\r\n"),
    };
    let head = String::from_utf8_lossy(&read).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{at:?}: {head}");
    if matches!(at, Close::AfterResult | Close::AfterLastChunk) {
        assert!(head.contains("\"result\""), "{at:?}: {head}");
    }
    head.lines()
        .find_map(|l| l.strip_prefix("mcp-session-id:"))
        .map(|v| v.trim().to_string())
}

fn schedule_for(at: Close) -> Schedule {
    match at {
        Close::BeforeHead => Schedule {
            before_head: LATER,
            before_result: NOW,
            before_end: NOW,
        },
        Close::AfterHead => Schedule {
            before_head: NOW,
            before_result: LATER,
            before_end: NOW,
        },
        Close::AfterResult => Schedule {
            before_head: NOW,
            before_result: NOW,
            before_end: LATER,
        },
        Close::AfterLastChunk => Schedule {
            before_head: NOW,
            before_result: NOW,
            before_end: NOW,
        },
    }
}

/// A client that never got the result: the session is ended here and upstream.
fn missed(at: Close) {
    let (up, deletes) = sse_initialize_upstream(schedule_for(at));
    let gw = gateway(&format!("http://{up}/mcp"), 2, None);
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    initialize_and_close(addr, at);
    let deleted = deletes.recv_timeout(Duration::from_secs(5));
    assert_eq!(deleted.as_deref(), Ok("up-1"), "{at:?}: upstream DELETE");
    assert!(
        eventually(Duration::from_secs(3), || metric(
            admin,
            "shardcat_sessions"
        ) == 0.0),
        "{at:?}: no session is left"
    );
    assert!(gw.stderr().contains("client missed its initialize answer"));
}

/// A client that got the result and then closed: the session stands and serves requests.
fn stands(at: Close) {
    let (up, deletes) = sse_initialize_upstream(schedule_for(at));
    let gw = gateway(&format!("http://{up}/mcp"), 2, None);
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let sid = initialize_and_close(addr, at).expect("session id");
    // The upstream finishes its answer (LATER) and the gateway sees the close; then the
    // session must still be there.
    std::thread::sleep(LATER + Duration::from_millis(200));
    assert_eq!(
        deletes.try_recv().ok(),
        None,
        "{at:?}: the session was ended upstream"
    );
    let s = ("mcp-session-id", sid.as_str());
    let v = ("mcp-protocol-version", "2025-06-18");
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let r = post(addr, &[s, v], list);
    assert_eq!(r.status, 200, "{at:?}: {}", r.text());
    assert_eq!(metric(admin, "shardcat_sessions"), 1.0);
    assert!(
        !gw.stderr().contains("client missed"),
        "{at:?}: {}",
        gw.stderr()
    );
    assert_eq!(delete(addr, &sid).status, 200);
    assert_eq!(
        deletes.recv_timeout(Duration::from_secs(5)).as_deref(),
        Ok("up-1")
    );
}

#[test]
fn closed_before_the_head_costs_the_session() {
    missed(Close::BeforeHead);
}

#[test]
fn closed_after_the_head_costs_the_session() {
    missed(Close::AfterHead);
}

#[test]
fn closed_after_the_result_event_keeps_the_session() {
    stands(Close::AfterResult);
}

#[test]
fn closed_after_the_last_chunk_keeps_the_session() {
    stands(Close::AfterLastChunk);
}
