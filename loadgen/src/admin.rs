//! Reads the gateway's admin `/metrics`: the live sessions after a scenario (the session-leak
//! check), and the summed gauges and counters the soak samples. Blocking std I/O on the
//! controller thread: a scrape every few seconds at most, never on a worker.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::target;

/// The family that counts live sessions: one series per shard, summed.
const SESSIONS: &str = "shardcat_sessions";
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Polls `admin`/metrics until the gateway holds no more sessions than the `before` it held
/// when the run started (other clients' sessions are not ours to count), or `within` passes.
/// Returns how many sessions the run left behind.
pub fn wait_sessions_drained(admin: &str, before: u64, within: Duration) -> Result<u64, String> {
    let end = Instant::now() + within;
    loop {
        let n = sessions(admin)?;
        if n <= before || Instant::now() >= end {
            return Ok(n.saturating_sub(before));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Live sessions reported by the gateway at `admin` (`http://host:port`).
pub fn sessions(admin: &str) -> Result<u64, String> {
    let body = get_metrics(admin)?;
    parse_sessions(&body).ok_or_else(|| format!("{admin}/metrics has no {SESSIONS} line"))
}

/// One scrape of `admin`/metrics (the text format, with `_total` counter names).
pub fn get_metrics(admin: &str) -> Result<String, String> {
    let url = format!("{}/metrics", admin.trim_end_matches('/'));
    let t = target::parse(&url)?;
    let err = |e: std::io::Error| format!("{url}: {e}");
    let mut s = TcpStream::connect_timeout(&t.addr, IO_TIMEOUT).map_err(err)?;
    s.set_read_timeout(Some(IO_TIMEOUT)).map_err(err)?;
    let req = format!(
        "GET {} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
        t.path, t.authority
    );
    s.write_all(req.as_bytes()).map_err(err)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(err)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{url}: no HTTP head"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("{url}: {}", head.lines().next().unwrap_or("")));
    }
    Ok(body.to_string())
}

/// The sum of the `shardcat_sessions` series (one per shard); `None` when there is none.
pub fn parse_sessions(metrics: &str) -> Option<u64> {
    sum(metrics, SESSIONS).map(|v| v as u64)
}

/// The sum of every series of the family `name`, over all its labels (per-shard families carry
/// a `shard` label and no aggregate series). `None` when the page has no series of it: a
/// labelled counter has none until something was counted.
pub fn sum(metrics: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for l in metrics.lines() {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        // `name{shard="0"} 2` or `name 2`, not `name_created_total ...`.
        let value = match rest.chars().next() {
            Some('{') => rest.rsplit_once(' ').map(|(_, v)| v),
            Some(' ') => Some(rest),
            _ => None,
        };
        if let Some(v) = value.and_then(|v| v.trim().parse::<f64>().ok()) {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

/// What the soak reads from each scrape, every family summed over its shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Gauges {
    pub sessions: u64,
    pub connections: u64,
    pub pool_open: u64,
    pub pool_idle: u64,
    pub sse_streams: u64,
    pub sse_upstream_streams: u64,
    pub sse_pending_events: u64,
    /// Counters since the gateway started; the soak reports their growth during the run.
    pub rejections: u64,
    pub upstream_errors: u64,
    pub client_errors: u64,
    /// Sessions the gateway ended on its own: idle timeout, maximum age, eviction.
    pub sessions_ended_by_gateway: u64,
    /// Recorded frames not written: dropped at a full channel, shed by degradation, lost to
    /// I/O errors, too large (0 when not recording).
    pub tape_lost: u64,
}

/// Gauges every gateway exports whatever it does; a page without one of them is not a
/// shardcat /metrics page (or a version this loadgen does not know).
const REQUIRED: [&str; 7] = [
    "shardcat_sessions",
    "shardcat_connections",
    "shardcat_pool_open",
    "shardcat_pool_idle",
    "shardcat_sse_streams",
    "shardcat_sse_upstream_streams",
    "shardcat_sse_pending_events",
];

/// Counters of failures; a labelled one has no series until it counted something.
const TAPE_LOST: [&str; 4] = [
    "shardcat_tape_frames_dropped_total",
    "shardcat_tape_frames_shed_total",
    "shardcat_tape_frames_lost_io_total",
    "shardcat_tape_frames_oversize_total",
];

pub fn parse_gauges(metrics: &str) -> Result<Gauges, String> {
    let mut g = [0u64; REQUIRED.len()];
    for (v, name) in g.iter_mut().zip(REQUIRED) {
        *v = sum(metrics, name).ok_or_else(|| format!("/metrics has no {name} series"))? as u64;
    }
    let counter = |name: &str| sum(metrics, name).unwrap_or(0.0) as u64;
    Ok(Gauges {
        sessions: g[0],
        connections: g[1],
        pool_open: g[2],
        pool_idle: g[3],
        sse_streams: g[4],
        sse_upstream_streams: g[5],
        sse_pending_events: g[6],
        rejections: counter("shardcat_rejections_total"),
        upstream_errors: counter("shardcat_upstream_errors_total"),
        client_errors: counter("shardcat_client_errors_total"),
        sessions_ended_by_gateway: [
            "shardcat_sessions_expired_total",
            "shardcat_sessions_max_age_total",
            "shardcat_sessions_evicted_total",
        ]
        .iter()
        .map(|n| counter(n))
        .sum(),
        tape_lost: TAPE_LOST.iter().map(|n| counter(n)).sum(),
    })
}

/// Scrapes `admin` and reads the soak's gauges.
pub fn gauges(admin: &str) -> Result<Gauges, String> {
    parse_gauges(&get_metrics(admin)?).map_err(|e| format!("{admin}{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_sessions_of_every_shard() {
        let m = "# TYPE shardcat_sessions gauge\nshardcat_sessions{shard=\"0\"} 2\nshardcat_sessions{shard=\"1\"} 3\nshardcat_sessions_created_total{shard=\"0\"} 9\n";
        assert_eq!(parse_sessions(m), Some(5));
        assert_eq!(parse_sessions("nothing\n"), None);
    }

    #[test]
    fn gauges_sum_over_shards_and_labels() {
        let mut m = String::new();
        for name in REQUIRED {
            m.push_str(&format!("# TYPE {name} gauge\n"));
            for shard in 0..2 {
                m.push_str(&format!("{name}{{shard=\"{shard}\"}} {}\n", shard + 1));
            }
        }
        m.push_str("shardcat_connections_accepted_total{shard=\"0\"} 100\n");
        m.push_str("shardcat_rejections_total{shard=\"0\",reason=\"sessions\"} 2\n");
        m.push_str("shardcat_rejections_total{shard=\"1\",reason=\"connections\"} 1\n");
        m.push_str("shardcat_tape_frames_dropped_total{shard=\"1\"} 4\n");
        m.push_str("shardcat_tape_frames_lost_io_total 1\n");
        m.push_str("shardcat_sessions_expired_total{shard=\"0\"} 16\n");
        m.push_str("shardcat_sessions_evicted_total{shard=\"1\"} 1\n");
        let g = parse_gauges(&m).unwrap();
        assert_eq!(g.sessions, 3);
        assert_eq!(g.connections, 3, "not shardcat_connections_accepted_total");
        assert_eq!(g.sse_pending_events, 3);
        assert_eq!(g.rejections, 3, "every reason of every shard");
        assert_eq!(g.upstream_errors, 0, "no series: nothing counted");
        assert_eq!(g.tape_lost, 5);
        assert_eq!(g.sessions_ended_by_gateway, 17);
        let err = parse_gauges("shardcat_sessions{shard=\"0\"} 1\n").unwrap_err();
        assert!(err.contains("shardcat_connections"), "{err}");
    }
}
