//! The admin endpoint: `/health` (JSON) and `/metrics` (Prometheus text). It runs on its own
//! plain thread with blocking sockets, away from the shards: it only reads their atomic stats
//! and the latency snapshots they publish.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::shard::Shared;

/// Largest admin request head read.
const MAX_ADMIN_REQUEST_BYTES: usize = 8 * 1024;
/// An admin client that sends nothing for this long is dropped.
const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves admin requests until the listener fails. Runs on a dedicated thread.
pub fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut latest: Vec<Option<Histogram<u64>>> = vec![None; shared.stats.len()];
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                if let Err(e) = handle(s, &shared, &mut latest) {
                    log::debug!("admin: {e}");
                }
            }
            Err(e) => {
                log::warn!("admin: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn handle(
    mut s: TcpStream,
    shared: &Shared,
    latest: &mut [Option<Histogram<u64>>],
) -> std::io::Result<()> {
    s.set_read_timeout(Some(ADMIN_IO_TIMEOUT))?;
    s.set_write_timeout(Some(ADMIN_IO_TIMEOUT))?;
    let mut buf = vec![0u8; MAX_ADMIN_REQUEST_BYTES];
    let mut len = 0;
    let path = loop {
        let n = s.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => break req.path.unwrap_or("/").to_string(),
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => return respond(&mut s, 400, "text/plain", "bad request\n"),
        }
    };
    match path.split('?').next().unwrap_or("") {
        "/health" => respond(&mut s, 200, "application/json", &health(shared)),
        "/metrics" => {
            for (i, (_, rx)) in shared.hists.iter().enumerate() {
                if let Ok(h) = rx.try_recv() {
                    latest[i] = Some(h);
                }
            }
            let mut out = String::with_capacity(16 * 1024);
            let stats: Vec<_> = shared.stats.iter().map(|s| s.as_ref()).collect();
            crate::metrics::render(&stats, latest, &mut out);
            render_degradation(shared, &mut out);
            if let Some(t) = &shared.tape {
                let recorders: Vec<&crate::tape::RecorderStats> =
                    t.recorders.iter().map(|r| r.as_ref()).collect();
                crate::tape::render(&recorders, &t.persist, &mut out);
            }
            respond(&mut s, 200, "text/plain; version=0.0.4", &out)
        }
        _ => respond(&mut s, 404, "text/plain", "not found\n"),
    }
}

fn health(shared: &Shared) -> String {
    let status = if shared.draining.load(Ordering::Acquire) {
        "draining"
    } else {
        "ok"
    };
    let shards: Vec<serde_json::Value> = shared
        .stats
        .iter()
        .map(|s| {
            serde_json::json!({
                "shard": s.shard,
                "connections": s.connections.load(Ordering::Relaxed),
                "sessions": s.sessions.load(Ordering::Relaxed),
                "requests": s.requests_total(),
            })
        })
        .collect();
    let level = crate::degrade::level(shared);
    let occupancy = crate::degrade::measure(shared);
    serde_json::json!({
        "status": status,
        "level": level.name(),
        "occupancy": {
            "max": occupancy.max(),
            "connections": occupancy.connections,
            "sessions": occupancy.sessions,
            "pending_events": occupancy.pending_events,
            "memory": occupancy.memory,
        },
        "upstreams": upstreams(shared),
        "shards": shared.stats.len(),
        "connections": shared.connections.current(),
        "max_connections": shared.connections.max(),
        "sessions": shared.sessions.current(),
        "max_sessions": shared.sessions.max(),
        "per_shard": shards,
    })
    .to_string()
}

fn render_degradation(shared: &Shared, out: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# TYPE shardcat_degradation_level gauge\nshardcat_degradation_level {}",
        shared.level.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# TYPE shardcat_degradation_changes_total counter\nshardcat_degradation_changes_total {}",
        shared.level_changes.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# TYPE shardcat_occupancy gauge\nshardcat_occupancy {}",
        shared.occupancy_permille.load(Ordering::Relaxed) as f64 / 1000.0
    );
}

/// Each HTTP upstream with every shard's view of it. Healthy: in rotation on some shard.
fn upstreams(shared: &Shared) -> Vec<serde_json::Value> {
    let crate::config::Upstream::Http(h) = &shared.config.upstream else {
        return Vec::new();
    };
    const NAMES: [&str; 4] = ["closed", "open", "half_open", "unhealthy"];
    h.targets
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let codes: Vec<i64> = shared
                .stats
                .iter()
                .map(|s| {
                    s.upstream_state
                        .get(i)
                        .map_or(0, |g| g.load(Ordering::Relaxed))
                })
                .collect();
            let breakers: Vec<&str> = codes
                .iter()
                .map(|&c| NAMES.get(c as usize).copied().unwrap_or("unknown"))
                .collect();
            serde_json::json!({
                "addr": u.addr.to_string(),
                "breakers": breakers,
                "healthy": codes.iter().any(|&c| c != 1 && c != 3),
            })
        })
        .collect()
}

fn respond(s: &mut TcpStream, status: u16, ctype: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        crate::codec::http::reason(status),
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())
}
