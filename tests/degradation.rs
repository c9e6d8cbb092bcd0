//! Degradation levels with a real gateway: sessions and idle connections fill the named bounds,
//! the level rises (new sessions refused, then only existing sessions served), and falls back
//! with hysteresis as they are released; visible in /health, /metrics and the log.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[path = "support/process.rs"]
mod support;
use support::*;

const V: (&str, &str) = ("mcp-protocol-version", "2025-06-18");

fn level(admin: SocketAddr) -> f64 {
    metric(admin, "shardcat_degradation_level")
}

fn stateless_status(addr: SocketAddr) -> u16 {
    let body = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"d"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    let headers = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "echo"),
    ];
    post(addr, &headers, body).status
}

#[test]
fn levels_follow_occupancy_with_hysteresis() {
    let demo = demo();
    let tapes = std::env::temp_dir().join(format!("shardcat-degrade-{}", std::process::id()));
    let toml = format!("[limits]\nmax_sessions = 10\nmax_connections = 20\n[timeouts]\nsession_evict_idle_ms = 0\n[degradation]\nrecording_shed_at = 0.5\nsessions_rejected_at = 0.7\nprotective_at = 0.9\nhysteresis = 0.1\ncheck_interval_ms = 20\n[tapes]\ndir = \"{}\"\n", tapes.display());
    let gw = gateway(&demo_url(&demo), 2, Some(&toml));
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let within = Duration::from_secs(5);
    assert_eq!(level(admin), 0.0);
    let mut sids: Vec<String> = (0..5).map(|_| initialize(addr)).collect();
    assert!(
        eventually(within, || level(admin) == 1.0),
        "recording_shed at 5/10 sessions"
    );
    sids.extend((0..2).map(|_| initialize(addr)));
    assert!(
        eventually(within, || level(admin) == 2.0),
        "sessions_rejected at 7/10"
    );
    let r = post(addr, &[], INIT);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.rpc_code(), -32000, "{}", r.text());
    assert!(metric(admin, "shardcat_rejections_total{reason=\"degraded\"}") >= 1.0);
    // Existing sessions and stateless requests are still served.
    let s = ("mcp-session-id", sids[0].as_str());
    let shed = |admin| metric(admin, "shardcat_tape_frames_shed_total");
    let before = shed(admin);
    assert_eq!(post(addr, &[s, V], &echo_call(2, "x")).status, 200);
    assert_eq!(stateless_status(addr), 200);
    assert!(
        shed(admin) >= before + 2.0,
        "recorded messages are shed, and counted"
    );
    // Idle connections push occupancy to 19/20: only existing sessions are served.
    let idle: Vec<TcpStream> = (0..19).map(|_| TcpStream::connect(addr).unwrap()).collect();
    assert!(
        eventually(within, || level(admin) == 3.0),
        "protective at 19/20 connections"
    );
    let health = get(admin, "/health").json();
    assert_eq!(health["level"], "protective", "{health}");
    assert_eq!(stateless_status(addr), 503);
    // That request's connection was the 20th: let the gateway see it close before the next,
    // or the next is refused at max_connections rather than served.
    assert!(eventually(within, || metric(admin, "shardcat_connections") == 19.0));
    assert_eq!(post(addr, &[s, V], &echo_call(3, "y")).status, 200);
    // Releasing the connections: back to 7/10 = 0.7, which is not below 0.7 - 0.1, so the level
    // stays at sessions_rejected instead of falling to full.
    drop(idle);
    assert!(eventually(within, || level(admin) == 2.0));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(level(admin), 2.0, "hysteresis holds the level");
    for sid in sids.drain(..5) {
        assert_eq!(delete(addr, &sid).status, 200);
    }
    assert!(
        eventually(within, || level(admin) == 0.0),
        "2/10 sessions: full again"
    );
    assert_eq!(post(addr, &[], INIT).status, 200);
    assert!(metric(admin, "shardcat_degradation_changes_total") >= 4.0);
    let log = gw.stderr();
    assert!(log.contains("degradation: full -> recording_shed"), "{log}");
    assert!(log.contains("-> full"), "{log}");
    drop(gw);
    let _ = std::fs::remove_dir_all(&tapes);
}
