//! Reads the gateway's admin `/metrics` after a scenario to check that no session leaked.
//! Blocking std I/O on the controller thread: it runs once, after the load has stopped.

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

fn get_metrics(admin: &str) -> Result<String, String> {
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
    let mut total = None;
    for l in metrics.lines() {
        let Some(rest) = l.strip_prefix(SESSIONS) else {
            continue;
        };
        // `shardcat_sessions{shard="0"} 2` or `shardcat_sessions 2`, not `shardcat_sessions_...`.
        let value = match rest.chars().next() {
            Some('{') => rest.rsplit_once(' ').map(|(_, v)| v),
            Some(' ') => Some(rest),
            _ => None,
        };
        if let Some(v) = value.and_then(|v| v.trim().parse::<f64>().ok()) {
            *total.get_or_insert(0.0) += v;
        }
    }
    total.map(|v| v as u64)
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
}
