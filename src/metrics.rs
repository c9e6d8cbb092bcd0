//! Counters and gauges, one `ShardStats` per shard. Only the owning shard writes its stats
//! (relaxed atomics, uncontended, no locks); the admin thread reads them. Latency lives in a
//! per-shard `hdrhistogram` owned by the shard and published once a second as a snapshot over a
//! bounded channel, so the request path never shares it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use hdrhistogram::Histogram;

/// MCP methods counted by name; anything else is counted as "other".
pub const METHODS: [&str; 22] = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "server/discover",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/other",
    "response",
    "batch",
    "GET",
    "DELETE",
    "invalid",
    "other",
];

/// Statuses counted by value; others fall in "other".
pub const STATUSES: [u16; 19] = [
    200, 202, 204, 400, 401, 403, 404, 405, 406, 408, 413, 421, 429, 431, 500, 501, 502, 503, 504,
];

/// Rejections (a named bound was hit or input refused), by label.
pub const REJECTIONS: [&str; 13] = [
    "connections",
    "sessions",
    "upstream_pool",
    "handoff_queue",
    "shutting_down",
    "processes",
    "stdio_input",
    "client_sessions",
    "client_rate",
    "session_rate",
    "no_healthy_upstream",
    "degraded",
    "other",
];

pub fn method_index(method: &str) -> usize {
    if let Some(i) = METHODS.iter().position(|m| *m == method) {
        return i;
    }
    if method.starts_with("notifications/") {
        return METHODS.len() - 7;
    }
    METHODS.len() - 1
}

fn status_index(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|s| *s == status)
        .unwrap_or(STATUSES.len())
}

/// Highest latency the histogram tracks, in microseconds (one hour).
const MAX_LATENCY_US: u64 = 3_600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

pub struct ShardStats {
    pub shard: usize,
    requests: Vec<AtomicU64>,
    rejections: [AtomicU64; REJECTIONS.len()],
    pub connections: AtomicI64,
    pub connections_accepted: AtomicU64,
    pub sessions: AtomicI64,
    pub sessions_created: AtomicU64,
    pub sessions_ended: AtomicU64,
    pub sessions_expired: AtomicU64,
    pub sessions_max_age: AtomicU64,
    pub sessions_evicted: AtomicU64,
    pub handoffs_sent: AtomicU64,
    pub handoffs_received: AtomicU64,
    pub pool_open: AtomicI64,
    pub pool_idle: AtomicI64,
    pub pool_connects: AtomicU64,
    pub pool_reuses: AtomicU64,
    pub pool_discarded: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub upstream_failovers: AtomicU64,
    pub sse_events: AtomicU64,
    pub sse_streams: AtomicI64,
    pub sse_backpressure_waits: AtomicU64,
    pub sse_pending_events: AtomicI64,
    pub tape_frames_shed: AtomicU64,
    pub breaker_opened: AtomicU64,
    pub breaker_closed: AtomicU64,
    pub health_probes: AtomicU64,
    pub health_probe_failures: AtomicU64,
    /// Per HTTP upstream, this shard's view: 0 closed, 1 open, 2 half-open, 3 unhealthy.
    pub upstream_state: Vec<AtomicI64>,
    pub sse_upstream_streams: AtomicI64,
    pub sse_resumed: AtomicU64,
    pub sse_replay_gaps: AtomicU64,
    pub sse_upstream_reconnects: AtomicU64,
    pub sse_reconnect_failures: AtomicU64,
    pub sse_idle_timeouts: AtomicU64,
    pub sse_abandoned: AtomicU64,
    pub client_errors: AtomicU64,
    pub stdio_processes: AtomicI64,
    pub stdio_spawned: AtomicU64,
    pub stdio_exited: AtomicU64,
    pub stdio_crashes: AtomicU64,
    pub stdio_killed: AtomicU64,
    pub stdio_stuck: AtomicU64,
    pub stdio_spawn_failures: AtomicU64,
    pub stdio_prewarm_hits: AtomicU64,
    pub stdio_cancelled: AtomicU64,
    pub stdio_timeouts: AtomicU64,
    pub stdio_late_responses: AtomicU64,
    pub stdio_dropped_messages: AtomicU64,
    pub stdio_bad_lines: AtomicU64,
    pub stdio_stderr_suppressed: AtomicU64,
    /// Requests of handshake-era servers refused on a 2026-07-28 client's behalf (`era`).
    pub era_refused_requests: AtomicU64,
}

impl ShardStats {
    /// Stats of a shard in front of `upstreams` HTTP upstreams (their health gauges).
    pub fn with_upstreams(shard: usize, upstreams: usize) -> ShardStats {
        let mut s = ShardStats::new(shard);
        s.upstream_state = (0..upstreams).map(|_| AtomicI64::new(0)).collect();
        s
    }

    pub fn new(shard: usize) -> ShardStats {
        let cells = METHODS.len() * (STATUSES.len() + 1);
        ShardStats {
            shard,
            requests: (0..cells).map(|_| AtomicU64::new(0)).collect(),
            rejections: Default::default(),
            connections: AtomicI64::new(0),
            connections_accepted: AtomicU64::new(0),
            sessions: AtomicI64::new(0),
            sessions_created: AtomicU64::new(0),
            sessions_ended: AtomicU64::new(0),
            sessions_expired: AtomicU64::new(0),
            sessions_max_age: AtomicU64::new(0),
            sessions_evicted: AtomicU64::new(0),
            handoffs_sent: AtomicU64::new(0),
            handoffs_received: AtomicU64::new(0),
            pool_open: AtomicI64::new(0),
            pool_idle: AtomicI64::new(0),
            pool_connects: AtomicU64::new(0),
            pool_reuses: AtomicU64::new(0),
            pool_discarded: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            upstream_failovers: AtomicU64::new(0),
            sse_events: AtomicU64::new(0),
            sse_streams: AtomicI64::new(0),
            sse_backpressure_waits: AtomicU64::new(0),
            sse_pending_events: AtomicI64::new(0),
            tape_frames_shed: AtomicU64::new(0),
            breaker_opened: AtomicU64::new(0),
            breaker_closed: AtomicU64::new(0),
            health_probes: AtomicU64::new(0),
            health_probe_failures: AtomicU64::new(0),
            upstream_state: Vec::new(),
            sse_upstream_streams: AtomicI64::new(0),
            sse_resumed: AtomicU64::new(0),
            sse_replay_gaps: AtomicU64::new(0),
            sse_upstream_reconnects: AtomicU64::new(0),
            sse_reconnect_failures: AtomicU64::new(0),
            sse_idle_timeouts: AtomicU64::new(0),
            sse_abandoned: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
            stdio_processes: AtomicI64::new(0),
            stdio_spawned: AtomicU64::new(0),
            stdio_exited: AtomicU64::new(0),
            stdio_crashes: AtomicU64::new(0),
            stdio_killed: AtomicU64::new(0),
            stdio_stuck: AtomicU64::new(0),
            stdio_spawn_failures: AtomicU64::new(0),
            stdio_prewarm_hits: AtomicU64::new(0),
            stdio_cancelled: AtomicU64::new(0),
            stdio_timeouts: AtomicU64::new(0),
            stdio_late_responses: AtomicU64::new(0),
            stdio_dropped_messages: AtomicU64::new(0),
            stdio_bad_lines: AtomicU64::new(0),
            stdio_stderr_suppressed: AtomicU64::new(0),
            era_refused_requests: AtomicU64::new(0),
        }
    }

    pub fn count_request(&self, method: &str, status: u16) {
        let i = method_index(method) * (STATUSES.len() + 1) + status_index(status);
        self.requests[i].fetch_add(1, Relaxed);
    }

    pub fn count_rejection(&self, what: &str) {
        let i = REJECTIONS
            .iter()
            .position(|r| *r == what)
            .unwrap_or(REJECTIONS.len() - 1);
        self.rejections[i].fetch_add(1, Relaxed);
    }

    pub fn requests_total(&self) -> u64 {
        self.requests.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn rejections_total(&self) -> u64 {
        self.rejections.iter().map(|c| c.load(Relaxed)).sum()
    }
}

/// Adds `v` to a gauge.
pub fn gauge_add(g: &AtomicI64, v: i64) {
    g.fetch_add(v, Relaxed);
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// A named series read from each shard's stats: (name, Prometheus type, getter).
type Gauge = (&'static str, &'static str, fn(&ShardStats) -> i64);

/// Renders Prometheus text for all shards plus totals. `hists[i]` is shard i's latest snapshot.
pub fn render(stats: &[&ShardStats], hists: &[Option<Histogram<u64>>], out: &mut String) {
    render_requests(stats, out);
    render_rejections(stats, out);
    let gauges: [Gauge; 49] = [
        ("shardcat_connections", "gauge", |s| {
            s.connections.load(Relaxed)
        }),
        ("shardcat_connections_accepted_total", "counter", |s| {
            s.connections_accepted.load(Relaxed) as i64
        }),
        ("shardcat_sessions", "gauge", |s| s.sessions.load(Relaxed)),
        ("shardcat_sessions_created_total", "counter", |s| {
            s.sessions_created.load(Relaxed) as i64
        }),
        ("shardcat_sessions_ended_total", "counter", |s| {
            s.sessions_ended.load(Relaxed) as i64
        }),
        ("shardcat_sessions_expired_total", "counter", |s| {
            s.sessions_expired.load(Relaxed) as i64
        }),
        ("shardcat_sessions_max_age_total", "counter", |s| {
            s.sessions_max_age.load(Relaxed) as i64
        }),
        ("shardcat_sessions_evicted_total", "counter", |s| {
            s.sessions_evicted.load(Relaxed) as i64
        }),
        ("shardcat_handoffs_sent_total", "counter", |s| {
            s.handoffs_sent.load(Relaxed) as i64
        }),
        ("shardcat_handoffs_received_total", "counter", |s| {
            s.handoffs_received.load(Relaxed) as i64
        }),
        ("shardcat_pool_open", "gauge", |s| s.pool_open.load(Relaxed)),
        ("shardcat_pool_idle", "gauge", |s| s.pool_idle.load(Relaxed)),
        ("shardcat_pool_connects_total", "counter", |s| {
            s.pool_connects.load(Relaxed) as i64
        }),
        ("shardcat_pool_reuses_total", "counter", |s| {
            s.pool_reuses.load(Relaxed) as i64
        }),
        ("shardcat_pool_discarded_total", "counter", |s| {
            s.pool_discarded.load(Relaxed) as i64
        }),
        ("shardcat_upstream_errors_total", "counter", |s| {
            s.upstream_errors.load(Relaxed) as i64
        }),
        ("shardcat_upstream_failovers_total", "counter", |s| {
            s.upstream_failovers.load(Relaxed) as i64
        }),
        ("shardcat_sse_events_total", "counter", |s| {
            s.sse_events.load(Relaxed) as i64
        }),
        ("shardcat_sse_streams", "gauge", |s| {
            s.sse_streams.load(Relaxed)
        }),
        ("shardcat_sse_backpressure_waits_total", "counter", |s| {
            s.sse_backpressure_waits.load(Relaxed) as i64
        }),
        ("shardcat_sse_upstream_streams", "gauge", |s| {
            s.sse_upstream_streams.load(Relaxed)
        }),
        ("shardcat_sse_resumed_total", "counter", |s| {
            s.sse_resumed.load(Relaxed) as i64
        }),
        ("shardcat_sse_replay_gaps_total", "counter", |s| {
            s.sse_replay_gaps.load(Relaxed) as i64
        }),
        ("shardcat_sse_upstream_reconnects_total", "counter", |s| {
            s.sse_upstream_reconnects.load(Relaxed) as i64
        }),
        ("shardcat_sse_reconnect_failures_total", "counter", |s| {
            s.sse_reconnect_failures.load(Relaxed) as i64
        }),
        ("shardcat_sse_idle_timeouts_total", "counter", |s| {
            s.sse_idle_timeouts.load(Relaxed) as i64
        }),
        ("shardcat_sse_abandoned_total", "counter", |s| {
            s.sse_abandoned.load(Relaxed) as i64
        }),
        ("shardcat_breaker_opened_total", "counter", |s| {
            s.breaker_opened.load(Relaxed) as i64
        }),
        ("shardcat_breaker_closed_total", "counter", |s| {
            s.breaker_closed.load(Relaxed) as i64
        }),
        ("shardcat_health_probes_total", "counter", |s| {
            s.health_probes.load(Relaxed) as i64
        }),
        ("shardcat_health_probe_failures_total", "counter", |s| {
            s.health_probe_failures.load(Relaxed) as i64
        }),
        ("shardcat_sse_pending_events", "gauge", |s| {
            s.sse_pending_events.load(Relaxed)
        }),
        ("shardcat_tape_frames_shed_total", "counter", |s| {
            s.tape_frames_shed.load(Relaxed) as i64
        }),
        ("shardcat_client_errors_total", "counter", |s| {
            s.client_errors.load(Relaxed) as i64
        }),
        ("shardcat_stdio_processes", "gauge", |s| {
            s.stdio_processes.load(Relaxed)
        }),
        ("shardcat_stdio_spawned_total", "counter", |s| {
            s.stdio_spawned.load(Relaxed) as i64
        }),
        ("shardcat_stdio_exited_total", "counter", |s| {
            s.stdio_exited.load(Relaxed) as i64
        }),
        ("shardcat_stdio_crashes_total", "counter", |s| {
            s.stdio_crashes.load(Relaxed) as i64
        }),
        ("shardcat_stdio_killed_total", "counter", |s| {
            s.stdio_killed.load(Relaxed) as i64
        }),
        ("shardcat_stdio_stuck_total", "counter", |s| {
            s.stdio_stuck.load(Relaxed) as i64
        }),
        ("shardcat_stdio_spawn_failures_total", "counter", |s| {
            s.stdio_spawn_failures.load(Relaxed) as i64
        }),
        ("shardcat_stdio_prewarm_hits_total", "counter", |s| {
            s.stdio_prewarm_hits.load(Relaxed) as i64
        }),
        ("shardcat_stdio_cancelled_total", "counter", |s| {
            s.stdio_cancelled.load(Relaxed) as i64
        }),
        ("shardcat_stdio_timeouts_total", "counter", |s| {
            s.stdio_timeouts.load(Relaxed) as i64
        }),
        ("shardcat_stdio_late_responses_total", "counter", |s| {
            s.stdio_late_responses.load(Relaxed) as i64
        }),
        ("shardcat_stdio_dropped_messages_total", "counter", |s| {
            s.stdio_dropped_messages.load(Relaxed) as i64
        }),
        ("shardcat_stdio_bad_lines_total", "counter", |s| {
            s.stdio_bad_lines.load(Relaxed) as i64
        }),
        ("shardcat_era_refused_requests_total", "counter", |s| {
            s.era_refused_requests.load(Relaxed) as i64
        }),
        ("shardcat_stdio_stderr_suppressed_total", "counter", |s| {
            s.stdio_stderr_suppressed.load(Relaxed) as i64
        }),
    ];
    for (name, kind, get) in gauges {
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let mut total = 0;
        for s in stats {
            let v = get(s);
            total += v;
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {v}", s.shard);
        }
        let _ = writeln!(out, "{name}{{shard=\"all\"}} {total}");
    }
    render_upstreams(stats, out);
    render_latency(hists, out);
}

fn render_requests(stats: &[&ShardStats], out: &mut String) {
    out.push_str("# TYPE shardcat_requests_total counter\n");
    let width = STATUSES.len() + 1;
    for s in stats {
        let _ = writeln!(
            out,
            "shardcat_shard_requests_total{{shard=\"{}\"}} {}",
            s.shard,
            s.requests_total()
        );
    }
    for (mi, method) in METHODS.iter().enumerate() {
        for si in 0..width {
            let per: Vec<u64> = stats
                .iter()
                .map(|s| s.requests[mi * width + si].load(Relaxed))
                .collect();
            let total: u64 = per.iter().sum();
            if total == 0 {
                continue;
            }
            let status = STATUSES
                .get(si)
                .map_or("other".to_string(), |s| s.to_string());
            for (s, v) in stats.iter().zip(&per) {
                let _ = writeln!(
                    out,
                    "shardcat_requests_total{{shard=\"{}\",method=\"{method}\",status=\"{status}\"}} {v}",
                    s.shard
                );
            }
            let _ = writeln!(out, "shardcat_requests_total{{shard=\"all\",method=\"{method}\",status=\"{status}\"}} {total}");
        }
    }
}

/// Each shard's view of each HTTP upstream: 0 closed, 1 open, 2 half-open, 3 unhealthy.
fn render_upstreams(stats: &[&ShardStats], out: &mut String) {
    out.push_str("# TYPE shardcat_upstream_state gauge\n");
    for s in stats {
        for (i, g) in s.upstream_state.iter().enumerate() {
            let _ = writeln!(
                out,
                "shardcat_upstream_state{{shard=\"{}\",upstream=\"{i}\"}} {}",
                s.shard,
                g.load(Relaxed)
            );
        }
    }
}

fn render_rejections(stats: &[&ShardStats], out: &mut String) {
    out.push_str("# TYPE shardcat_rejections_total counter\n");
    for (i, what) in REJECTIONS.iter().enumerate() {
        let mut total = 0;
        for s in stats {
            let v = s.rejections[i].load(Relaxed);
            total += v;
            let _ = writeln!(
                out,
                "shardcat_rejections_total{{shard=\"{}\",reason=\"{what}\"}} {v}",
                s.shard
            );
        }
        let _ = writeln!(
            out,
            "shardcat_rejections_total{{shard=\"all\",reason=\"{what}\"}} {total}"
        );
    }
}

fn render_latency(hists: &[Option<Histogram<u64>>], out: &mut String) {
    out.push_str("# TYPE shardcat_request_latency_us summary\n");
    let mut all = new_histogram();
    for (shard, h) in hists.iter().enumerate() {
        let Some(h) = h else { continue };
        let _ = all.add(h);
        write_quantiles(&shard.to_string(), h, out);
    }
    write_quantiles("all", &all, out);
}

fn write_quantiles(shard: &str, h: &Histogram<u64>, out: &mut String) {
    for q in [0.5, 0.9, 0.99, 0.999] {
        let _ = writeln!(
            out,
            "shardcat_request_latency_us{{shard=\"{shard}\",quantile=\"{q}\"}} {}",
            h.value_at_quantile(q)
        );
    }
    let _ = writeln!(
        out,
        "shardcat_request_latency_us_count{{shard=\"{shard}\"}} {}",
        h.len()
    );
    let _ = writeln!(
        out,
        "shardcat_request_latency_us_max{{shard=\"{shard}\"}} {}",
        h.max()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_per_shard_and_total() {
        let a = ShardStats::new(0);
        let b = ShardStats::new(1);
        a.count_request("tools/call", 200);
        b.count_request("tools/call", 200);
        b.count_request("weird/method", 404);
        a.count_rejection("sessions");
        let mut h = new_histogram();
        h.record(150).unwrap();
        let mut out = String::new();
        render(&[&a, &b], &[Some(h), None], &mut out);
        assert!(
            out.contains(
                "shardcat_requests_total{shard=\"all\",method=\"tools/call\",status=\"200\"} 2"
            ),
            "{out}"
        );
        assert!(
            out.contains("shardcat_requests_total{shard=\"1\",method=\"other\",status=\"404\"} 1")
        );
        assert!(out.contains("shardcat_rejections_total{shard=\"all\",reason=\"sessions\"} 1"));
        assert!(out.contains("shardcat_request_latency_us_count{shard=\"all\"} 1"));
        assert_eq!(
            method_index("notifications/progress"),
            method_index("notifications/other")
        );
    }
}
