//! Upstream and client faults against the real gateway, with a misbehaving upstream process
//! (`fixtures/` `fault-upstream`): one that never answers, one that trickles, one that resets,
//! one that floods 100 slow clients; and clients that leave mid-request. Each test checks the
//! answer the client gets and that nothing leaks (pool, streams, fds).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/process.rs"]
mod support;
use support::*;

/// A `fault-upstream` process, killed on drop.
struct Fault {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Fault {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fault(mode: &str, extra: &[&str]) -> Fault {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join("fault-upstream");
    assert!(path.exists(), "run the tests with `cargo test --workspace`");
    let mut child = Command::new(path)
        .args(["--mode", mode])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fault-upstream");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("READY");
    let addr = line
        .trim()
        .strip_prefix("READY addr=")
        .and_then(|a| a.parse().ok())
        .expect("READY addr=");
    Fault { child, addr }
}

const STATELESS: [(&str, &str); 3] = [
    ("mcp-protocol-version", "2026-07-28"),
    ("mcp-method", "tools/call"),
    ("mcp-name", "echo"),
];

fn stateless_body(id: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"f"}},"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
    )
}

fn stateless_request(addr: SocketAddr, id: u64) -> String {
    let body = stateless_body(id);
    format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nmcp-protocol-version: 2026-07-28\r\nmcp-method: tools/call\r\nmcp-name: echo\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// No upstream connection in use, no stream left.
fn settled(admin: SocketAddr) -> bool {
    metric(admin, "shardcat_pool_open") == metric(admin, "shardcat_pool_idle")
        && metric(admin, "shardcat_sse_streams") == 0.0
        && metric(admin, "shardcat_sse_upstream_streams") == 0.0
        && metric(admin, "shardcat_sse_pending_events") == 0.0
}

fn gateway_for(f: &Fault, toml: &str) -> Proc {
    gateway(&format!("http://{}/mcp", f.addr), 1, Some(toml))
}

#[test]
fn an_upstream_that_never_answers_gets_504_and_nothing_leaks() {
    let f = fault("blackhole", &[]);
    let gw = gateway_for(&f, "[timeouts]\nupstream_request_timeout_ms = 400\n");
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    for i in 0..4 {
        let r = post(addr, &STATELESS, &stateless_body(i));
        assert_eq!(r.status, 504, "{}", r.text());
        assert_eq!(
            r.json()["id"],
            i,
            "the error answers the request: {}",
            r.text()
        );
        assert!(r.rpc_code() != 0);
    }
    assert!(eventually(Duration::from_secs(5), || settled(admin)));
    assert!(metric(admin, "shardcat_upstream_errors_total") >= 4.0);
}

#[test]
fn a_trickling_upstream_gets_504_for_its_head_and_an_idle_cut_for_its_body() {
    let f = fault("trickle", &["--interval-ms", "100"]);
    let gw = gateway_for(&f, "[timeouts]\nupstream_request_timeout_ms = 500\n");
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let started = Instant::now();
    let r = post(addr, &STATELESS, &stateless_body(1));
    assert_eq!(
        r.status,
        504,
        "a head trickled past the deadline: {}",
        r.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the whole head is bounded"
    );
    assert!(eventually(Duration::from_secs(5), || settled(admin)));
    // An SSE body that trickles: no whole event within sse_idle_timeout_ms ends the stream.
    let f = fault("trickle-body", &["--interval-ms", "100"]);
    let gw = gateway_for(&f, "[timeouts]\nsse_idle_timeout_ms = 400\n");
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    s.write_all(stateless_request(addr, 2).as_bytes()).unwrap();
    let mut got = Vec::new();
    let end = s.read_to_end(&mut got);
    assert!(
        end.is_ok(),
        "the gateway must close the stalled stream: {end:?}"
    );
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(metric(admin, "shardcat_sse_idle_timeouts_total") >= 1.0);
    assert!(eventually(Duration::from_secs(5), || settled(admin)));
}

#[test]
fn an_upstream_that_resets_gets_502_with_a_json_rpc_body() {
    let f = fault("reset", &[]);
    let gw = gateway_for(&f, "");
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let r = post(addr, &STATELESS, &stateless_body(5));
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["id"], 5);
    assert!(r.rpc_code() != 0);
    assert!(metric(admin, "shardcat_upstream_errors_total") >= 1.0);
    assert!(eventually(Duration::from_secs(5), || settled(admin)));
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn a_hundred_slow_clients_of_a_flooding_upstream_keep_rss_bounded() {
    let f = fault("flood", &["--bytes", "10485760", "--event-bytes", "16384"]);
    let gw = gateway_for(&f, "");
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let baseline = rss_bytes(gw.pid());
    let clients: Vec<TcpStream> = (0..100)
        .map(|i| {
            // A small receive buffer, so the client's kernel cannot absorb the stream for it.
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.set_recv_buffer_size(16 * 1024).unwrap();
            sock.connect(&addr.into()).unwrap();
            let mut s: TcpStream = sock.into();
            s.write_all(stateless_request(addr, i).as_bytes()).unwrap();
            s
        })
        .collect();
    // The clients read nothing: once their sockets' buffers are full, 100 × 10 MB wait
    // upstream, not in the gateway. Every stream ends up waiting for its client.
    let mut peak = 0;
    let until = Instant::now() + Duration::from_secs(30);
    let mut waits = 0.0;
    while Instant::now() < until && waits < 100.0 {
        peak = peak.max(rss_bytes(gw.pid()));
        waits = metric(admin, "shardcat_sse_backpressure_waits_total");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metric(admin, "shardcat_sse_streams"),
        100.0,
        "every client has its stream"
    );
    assert!(
        waits >= 100.0,
        "the streams should wait for their clients: {waits}"
    );
    for _ in 0..10 {
        peak = peak.max(rss_bytes(gw.pid()));
        std::thread::sleep(Duration::from_millis(50));
    }
    // Then each reads 1 MB, slowly, and leaves.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = 0;
                while got < 1024 * 1024 {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                got
            })
        })
        .collect();
    let mut delivered = 0;
    for r in readers {
        delivered += r.join().unwrap();
        peak = peak.max(rss_bytes(gw.pid()));
    }
    assert!(
        delivered >= 100 * 1024 * 1024,
        "each client got its megabyte: {delivered}"
    );
    let grown = peak.saturating_sub(baseline);
    eprintln!("gateway RSS: baseline {baseline} B, peak {peak} B, grown {grown} B");
    // Buffering the floods would take 1 GB; the bounds allow 100 × 256 KiB pending plus
    // buffers.
    assert!(grown < 96 * 1024 * 1024, "RSS grew by {grown} bytes");
    assert!(eventually(Duration::from_secs(10), || settled(admin)));
}

#[test]
fn clients_leaving_mid_request_release_everything() {
    let f = fault("flood", &["--bytes", "104857600"]);
    let gw = gateway_for(&f, "");
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    // Warm up once so lazily opened fds are in the baseline.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(stateless_request(addr, 0).as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    let _ = s.read(&mut buf);
    drop(s);
    assert!(eventually(Duration::from_secs(5), || settled(admin)
        && metric(admin, "shardcat_connections") == 0.0));
    let fds = gw.fd_count();
    for i in 0..20 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(stateless_request(addr, i).as_bytes()).unwrap();
        let _ = s.read(&mut buf);
        // Mid-stream: a 100 MB answer is far from done.
    }
    assert!(eventually(Duration::from_secs(10), || settled(admin)
        && metric(admin, "shardcat_connections") == 0.0));
    assert!(
        eventually(Duration::from_secs(5), || gw.fd_count() <= fds),
        "fds {fds} before, {} after:\n{}",
        gw.fd_count(),
        gw.fd_list()
    );
}
