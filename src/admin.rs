//! The admin endpoint: `/health` (JSON) and `/metrics` (Prometheus text, or OpenMetrics when the
//! scraper asks for it). It runs on its own plain thread with blocking sockets, away from the
//! shards: it only reads their atomic stats and the latency snapshots they publish.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::metrics::{header, label_value, Format, Kind, ShardStats};
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
    let (path, format) = loop {
        let n = s.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                let accept = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("accept"))
                    .and_then(|h| std::str::from_utf8(h.value).ok());
                let path = req.path.unwrap_or("/").to_string();
                break (path, Format::negotiate(accept));
            }
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
            let out = metrics(shared, latest, format);
            respond(&mut s, 200, format.content_type(), &out)
        }
        _ => respond(&mut s, 404, "text/plain", "not found\n"),
    }
}

/// The whole exposition: the shards' families, the process-wide ones, recording's.
fn metrics(shared: &Shared, latest: &[Option<Histogram<u64>>], format: Format) -> String {
    let mut out = String::with_capacity(32 * 1024);
    let stats: Vec<_> = shared.stats.iter().map(|s| s.as_ref()).collect();
    crate::metrics::render(&stats, latest, format, &mut out);
    render_process(shared, format, &mut out);
    render_servers(shared, &stats, format, &mut out);
    shared.auth.render(format, &mut out);
    if let Some(t) = &shared.tape {
        let recorders: Vec<&crate::tape::RecorderStats> =
            t.recorders.iter().map(|r| r.as_ref()).collect();
        crate::tape::render(&recorders, &t.persist, format, &mut out);
    }
    crate::metrics::finish(&mut out, format);
    out
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
        "routes": routes(shared),
        "shards": shared.stats.len(),
        "connections": shared.connections.current(),
        "max_connections": shared.connections.max(),
        "sessions": shared.sessions.current(),
        "max_sessions": shared.sessions.max(),
        "per_shard": shards,
    })
    .to_string()
}

/// Families with no `shard` label: one figure for the whole process.
fn render_process(shared: &Shared, format: Format, out: &mut String) {
    use std::fmt::Write as _;
    let gauges: [(&str, Kind, &str, f64); 5] = [
        (
            "shardcat_degradation_level",
            Kind::Gauge,
            "Degradation level: 0 full, 1 recording_shed, 2 sessions_rejected, 3 protective.",
            f64::from(shared.level.load(Ordering::Relaxed)),
        ),
        (
            "shardcat_degradation_changes_total",
            Kind::Counter,
            "Changes of the degradation level.",
            shared.level_changes.load(Ordering::Relaxed) as f64,
        ),
        (
            "shardcat_occupancy_ratio",
            Kind::Gauge,
            "Occupancy of the fullest bound (0 to 1), as the degradation monitor last measured.",
            shared.occupancy_permille.load(Ordering::Relaxed) as f64 / 1000.0,
        ),
        (
            "shardcat_max_connections",
            Kind::Gauge,
            "Client connections admitted at most, across shards (max_connections).",
            shared.connections.max() as f64,
        ),
        (
            "shardcat_max_sessions",
            Kind::Gauge,
            "Sessions held at most, across shards (max_sessions).",
            shared.sessions.max() as f64,
        ),
    ];
    for (name, kind, help, v) in gauges {
        header(out, format, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    }
    let targets = http_targets(&shared.config);
    if targets.is_empty() {
        return;
    }
    header(
        out,
        format,
        "shardcat_upstream_info",
        Kind::Info,
        "A configured HTTP upstream: the upstream label of shardcat_upstream_state, its URL \
         and (federation) its server.",
    );
    for (i, (server, u)) in targets.iter().enumerate() {
        let url = format!("http://{}{}", u.authority, u.path);
        let server = match *server {
            "" => String::new(),
            s => format!(",server=\"{}\"", label_value(s)),
        };
        let _ = writeln!(
            out,
            "shardcat_upstream_info{{upstream=\"{i}\",url=\"{}\"{server}}} 1",
            label_value(&url)
        );
    }
}

/// Per federated server and shard: messages sent to it, and those that failed. The `server`
/// label takes only the configured servers' names.
fn render_servers(shared: &Shared, stats: &[&ShardStats], format: Format, out: &mut String) {
    use std::fmt::Write as _;
    let config = &shared.config;
    if !config.is_federated() {
        return;
    }
    type Counters = fn(&ShardStats) -> &[std::sync::atomic::AtomicU64];
    let families: [(&str, &str, Counters); 2] = [
        (
            "shardcat_server_requests_total",
            "Messages the federation sent to a server (initialize, requests, notifications, answers).",
            |s| &s.server_requests,
        ),
        (
            "shardcat_server_errors_total",
            "Messages to a server that failed: not sent, an HTTP error, or (initialize) an error answer.",
            |s| &s.server_errors,
        ),
    ];
    for (name, help, get) in families {
        header(out, format, name, Kind::Counter, help);
        for s in stats {
            for (i, server) in config.servers.iter().enumerate() {
                let v = get(s).get(i).map_or(0, |c| c.load(Ordering::Relaxed));
                let _ = writeln!(
                    out,
                    "{name}{{shard=\"{}\",server=\"{}\"}} {v}",
                    s.shard,
                    label_value(&server.name)
                );
            }
        }
    }
}

/// Every HTTP upstream (replica) with the server it belongs to, in the order of their health
/// gauges (`upstream::Upstreams::new`: servers as configured, replicas as listed).
fn http_targets(config: &crate::config::Config) -> Vec<(&str, &crate::config::UpstreamConfig)> {
    let servers: Vec<(&str, &crate::config::Upstream)> = if config.is_federated() {
        config
            .servers
            .iter()
            .map(|s| (s.name.as_str(), &s.upstream))
            .collect()
    } else {
        vec![("", &config.upstream)]
    };
    servers
        .into_iter()
        .flat_map(|(name, up)| match up {
            crate::config::Upstream::Http(h) => h.targets.iter().map(|t| (name, t)).collect(),
            crate::config::Upstream::Stdio(_) => Vec::new(),
        })
        .collect()
}

/// Each HTTP upstream with every shard's view of it. Healthy: in rotation on some shard.
fn upstreams(shared: &Shared) -> Vec<serde_json::Value> {
    const NAMES: [&str; 4] = ["closed", "open", "half_open", "unhealthy"];
    http_targets(&shared.config)
        .iter()
        .enumerate()
        .map(|(i, (server, u))| {
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
                "server": server,
                "addr": u.addr.to_string(),
                "breakers": breakers,
                "healthy": codes.iter().any(|&c| c != 1 && c != 3),
            })
        })
        .collect()
}

/// Each route with its servers and their state (federation): a server is up when one of its
/// HTTP upstreams is in rotation on some shard (a stdio server: always, its children are
/// started on demand).
fn routes(shared: &Shared) -> Vec<serde_json::Value> {
    let config = &shared.config;
    if !config.is_federated() {
        return Vec::new();
    }
    let ups = upstreams(shared);
    config
        .routes
        .iter()
        .map(|r| {
            let servers: Vec<serde_json::Value> = r
                .servers
                .iter()
                .map(|&i| {
                    let s = &config.servers[i];
                    let (kind, up) = match &s.upstream {
                        crate::config::Upstream::Http(_) => {
                            let mine = ups.iter().filter(|u| u["server"] == s.name.as_str());
                            ("http", mine.clone().any(|u| u["healthy"] == true))
                        }
                        crate::config::Upstream::Stdio(_) => ("stdio", true),
                    };
                    serde_json::json!({
                        "name": s.name,
                        "kind": kind,
                        "state": if up { "up" } else { "down" },
                    })
                })
                .collect();
            serde_json::json!({ "path": r.path, "servers": servers })
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
