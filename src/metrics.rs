//! Counters and gauges, one `ShardStats` per shard, and their exposition for `/metrics`. Only
//! the owning shard writes its stats (relaxed atomics, uncontended, no locks); the admin thread
//! reads them. Latency lives in a per-shard `hdrhistogram` owned by the shard and published once
//! a second as a snapshot over a bounded channel, so the request path never shares it; the
//! admin thread turns the snapshot into Prometheus histogram buckets when it renders.
//!
//! Invariants of the exposition (checked by `promtool check metrics` in `tests/metrics.rs`):
//! every family has HELP and TYPE followed by all of its samples; names follow the Prometheus
//! conventions (base units, counters end in `_total`); a per-shard family carries `shard` on
//! every series and no aggregate series, so `sum()` over it is the gateway's figure; label
//! values come from fixed lists (`METHODS`, `STATUSES`, `REJECTIONS`) or the configuration.

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

/// Why a node refused a client's clustered session id (`shardcat_cluster_ids_refused_total`):
/// the `cluster::OpenError`s (`malformed`, `forged`, `invalid`), an id of a session this node
/// saw end (`ended`), one past its maximum age (`expired`), a pinned id of another node
/// (`foreign_node`), one opened for another subject (`subject`), and claims this node's routes
/// cannot serve (`route`: another route's servers, an upstream it does not have).
pub const CLUSTER_REFUSALS: [&str; 8] = [
    "malformed",
    "forged",
    "invalid",
    "ended",
    "expired",
    "foreign_node",
    "subject",
    "route",
];

/// Results of authentication and authorization (`shardcat_auth_total{result}`): the labels of
/// `auth::Denial`, and `denied_tool`, the authorization stage's.
pub const AUTH_RESULTS: [&str; 7] = [
    "ok",
    "missing",
    "invalid",
    "expired",
    "wrong_audience",
    "insufficient_scope",
    "denied_tool",
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
    auth: [AtomicU64; AUTH_RESULTS.len()],
    cluster_refused: [AtomicU64; CLUSTER_REFUSALS.len()],
    /// Sessions this node began serving from a sealed id (another node's, or its own from
    /// before a restart).
    pub cluster_adopted: AtomicU64,
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
    /// Streams continued from the upstream by the upstream event id a gateway event id
    /// carries (clustered: a stream another node, or this one before a restart, relayed).
    pub sse_resumed_upstream: AtomicU64,
    /// `Last-Event-ID`s naming a stream this node does not hold and whose event carried no
    /// upstream id: a fresh stream opens, and the events in between are lost.
    pub sse_resume_missed: AtomicU64,
    pub sse_upstream_reconnects: AtomicU64,
    pub sse_reconnect_failures: AtomicU64,
    pub sse_idle_timeouts: AtomicU64,
    pub sse_abandoned: AtomicU64,
    pub client_errors: AtomicU64,
    pub stdio_processes: AtomicI64,
    /// Event streams open to legacy HTTP+SSE servers (`kind = "sse"`).
    pub legacy_sse_streams: AtomicI64,
    pub legacy_sse_opened: AtomicU64,
    pub legacy_sse_dropped: AtomicU64,
    pub legacy_sse_refused: AtomicU64,
    pub legacy_sse_post_failures: AtomicU64,
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
    /// Per federated server (`[[server]]`, in config order): messages sent to it, and those
    /// that failed (no answer, an error status, a JSON-RPC error from it). Bounded by the
    /// configured servers.
    pub server_requests: Vec<AtomicU64>,
    pub server_errors: Vec<AtomicU64>,
    /// How late the shard's lag probe woke (its event loop's turn time when busy).
    pub loop_lag: LagHistogram,
}

/// A histogram of event-loop lag over `DURATION_BUCKETS`, written by its shard alone (relaxed
/// atomics, so the admin thread reads it without a lock or a snapshot).
#[derive(Debug, Default)]
pub struct LagHistogram {
    /// Observations per bucket (not cumulative); the last slot is above every bound.
    per: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl LagHistogram {
    pub fn record(&self, lag: std::time::Duration) {
        let us = lag.as_micros().min(u64::MAX as u128) as u64;
        let i = bucket_of(us).unwrap_or(DURATION_BUCKETS.len());
        self.per[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    pub fn buckets(&self) -> Buckets {
        let mut b = Buckets::default();
        let mut run = 0;
        for (c, n) in b.cumulative.iter_mut().zip(&self.per) {
            run += n.load(Relaxed);
            *c = run;
        }
        b.count = run + self.per[DURATION_BUCKETS.len()].load(Relaxed);
        b.sum_us = self.sum_us.load(Relaxed);
        b
    }
}

impl ShardStats {
    /// Stats of a shard in front of `upstreams` HTTP upstreams (their health gauges).
    pub fn with_upstreams(shard: usize, upstreams: usize) -> ShardStats {
        let mut s = ShardStats::new(shard);
        s.upstream_state = (0..upstreams).map(|_| AtomicI64::new(0)).collect();
        s
    }

    /// `self` with counters for `servers` federated servers.
    pub fn with_servers(mut self, servers: usize) -> ShardStats {
        self.server_requests = (0..servers).map(|_| AtomicU64::new(0)).collect();
        self.server_errors = (0..servers).map(|_| AtomicU64::new(0)).collect();
        self
    }

    /// Counts a failure of federated server `server` found after it answered (an error in
    /// the answer's body).
    pub fn count_server_error(&self, server: usize) {
        if let Some(c) = self.server_errors.get(server) {
            inc(c);
        }
    }

    /// Counts a message sent to federated server `server`, and whether it failed.
    pub fn count_server(&self, server: usize, failed: bool) {
        if let Some(c) = self.server_requests.get(server) {
            inc(c);
        }
        if failed {
            if let Some(c) = self.server_errors.get(server) {
                inc(c);
            }
        }
    }

    pub fn new(shard: usize) -> ShardStats {
        let cells = METHODS.len() * (STATUSES.len() + 1);
        ShardStats {
            shard,
            requests: (0..cells).map(|_| AtomicU64::new(0)).collect(),
            rejections: Default::default(),
            auth: Default::default(),
            cluster_refused: Default::default(),
            cluster_adopted: AtomicU64::new(0),
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
            server_requests: Vec::new(),
            server_errors: Vec::new(),
            loop_lag: LagHistogram::default(),
            sse_upstream_streams: AtomicI64::new(0),
            sse_resumed: AtomicU64::new(0),
            sse_replay_gaps: AtomicU64::new(0),
            sse_resumed_upstream: AtomicU64::new(0),
            sse_resume_missed: AtomicU64::new(0),
            sse_upstream_reconnects: AtomicU64::new(0),
            sse_reconnect_failures: AtomicU64::new(0),
            sse_idle_timeouts: AtomicU64::new(0),
            sse_abandoned: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
            stdio_processes: AtomicI64::new(0),
            legacy_sse_streams: AtomicI64::new(0),
            legacy_sse_opened: AtomicU64::new(0),
            legacy_sse_dropped: AtomicU64::new(0),
            legacy_sse_refused: AtomicU64::new(0),
            legacy_sse_post_failures: AtomicU64::new(0),
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

    /// Counts an authentication (or authorization) result, one of `AUTH_RESULTS`.
    pub fn count_auth(&self, result: &str) {
        let i = AUTH_RESULTS.iter().position(|r| *r == result);
        debug_assert!(i.is_some(), "{result} is not an auth result");
        if let Some(i) = i {
            self.auth[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts a refused clustered session id, one of `CLUSTER_REFUSALS`.
    pub fn count_cluster_refusal(&self, why: &str) {
        let i = CLUSTER_REFUSALS.iter().position(|r| *r == why);
        debug_assert!(i.is_some(), "{why} is not a cluster refusal");
        if let Some(i) = i {
            self.cluster_refused[i].fetch_add(1, Relaxed);
        }
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

/// A family read from each shard's stats: name, type, help, getter.
type Series = (&'static str, Kind, &'static str, fn(&ShardStats) -> i64);

/// The shard-labelled families read from each shard's stats: name, type, help, getter.
const SHARD_SERIES: [Series; 57] = [
    (
        "shardcat_connections",
        Kind::Gauge,
        "Client connections the shard serves now.",
        |s| s.connections.load(Relaxed),
    ),
    (
        "shardcat_connections_accepted_total",
        Kind::Counter,
        "Client connections accepted by the shard, admitted or not.",
        |s| s.connections_accepted.load(Relaxed) as i64,
    ),
    (
        "shardcat_client_errors_total",
        Kind::Counter,
        "Requests that failed on the client's side (malformed, too large, timeouts).",
        |s| s.client_errors.load(Relaxed) as i64,
    ),
    (
        "shardcat_sessions",
        Kind::Gauge,
        "MCP sessions the shard owns now.",
        |s| s.sessions.load(Relaxed),
    ),
    (
        "shardcat_sessions_created_total",
        Kind::Counter,
        "MCP sessions created on the shard.",
        |s| s.sessions_created.load(Relaxed) as i64,
    ),
    (
        "shardcat_sessions_ended_total",
        Kind::Counter,
        "MCP sessions ended on the shard, for any reason.",
        |s| s.sessions_ended.load(Relaxed) as i64,
    ),
    (
        "shardcat_sessions_expired_total",
        Kind::Counter,
        "Sessions ended after their idle timeout.",
        |s| s.sessions_expired.load(Relaxed) as i64,
    ),
    (
        "shardcat_sessions_max_age_total",
        Kind::Counter,
        "Sessions ended at their maximum age.",
        |s| s.sessions_max_age.load(Relaxed) as i64,
    ),
    (
        "shardcat_sessions_evicted_total",
        Kind::Counter,
        "Idle sessions evicted to make room for new ones.",
        |s| s.sessions_evicted.load(Relaxed) as i64,
    ),
    (
        "shardcat_cluster_sessions_adopted_total",
        Kind::Counter,
        "Sessions this node began serving from a sealed session id.",
        |s| s.cluster_adopted.load(Relaxed) as i64,
    ),
    (
        "shardcat_handoffs_sent_total",
        Kind::Counter,
        "Connections handed to the shard that owns their session.",
        |s| s.handoffs_sent.load(Relaxed) as i64,
    ),
    (
        "shardcat_handoffs_received_total",
        Kind::Counter,
        "Connections taken over from another shard.",
        |s| s.handoffs_received.load(Relaxed) as i64,
    ),
    (
        "shardcat_pool_open",
        Kind::Gauge,
        "Upstream connections open in the shard's pools.",
        |s| s.pool_open.load(Relaxed),
    ),
    (
        "shardcat_pool_idle",
        Kind::Gauge,
        "Upstream connections idle in the shard's pools.",
        |s| s.pool_idle.load(Relaxed),
    ),
    (
        "shardcat_pool_connects_total",
        Kind::Counter,
        "Upstream connections opened.",
        |s| s.pool_connects.load(Relaxed) as i64,
    ),
    (
        "shardcat_pool_reuses_total",
        Kind::Counter,
        "Requests sent on a pooled upstream connection.",
        |s| s.pool_reuses.load(Relaxed) as i64,
    ),
    (
        "shardcat_pool_discarded_total",
        Kind::Counter,
        "Pooled upstream connections found closed or broken and dropped.",
        |s| s.pool_discarded.load(Relaxed) as i64,
    ),
    (
        "shardcat_upstream_errors_total",
        Kind::Counter,
        "Upstream failures: connect, write, read or timeout.",
        |s| s.upstream_errors.load(Relaxed) as i64,
    ),
    (
        "shardcat_upstream_failovers_total",
        Kind::Counter,
        "Requests moved to another upstream because theirs was unreachable.",
        |s| s.upstream_failovers.load(Relaxed) as i64,
    ),
    (
        "shardcat_breaker_opened_total",
        Kind::Counter,
        "Circuit breakers opened.",
        |s| s.breaker_opened.load(Relaxed) as i64,
    ),
    (
        "shardcat_breaker_closed_total",
        Kind::Counter,
        "Circuit breakers closed again.",
        |s| s.breaker_closed.load(Relaxed) as i64,
    ),
    (
        "shardcat_health_probes_total",
        Kind::Counter,
        "Active health probes sent.",
        |s| s.health_probes.load(Relaxed) as i64,
    ),
    (
        "shardcat_health_probe_failures_total",
        Kind::Counter,
        "Active health probes that failed.",
        |s| s.health_probe_failures.load(Relaxed) as i64,
    ),
    (
        "shardcat_era_refused_requests_total",
        Kind::Counter,
        "Server requests of handshake-era servers refused for 2026-07-28 clients.",
        |s| s.era_refused_requests.load(Relaxed) as i64,
    ),
    (
        "shardcat_sse_streams",
        Kind::Gauge,
        "SSE streams open to clients.",
        |s| s.sse_streams.load(Relaxed),
    ),
    (
        "shardcat_sse_events_total",
        Kind::Counter,
        "SSE events delivered to clients.",
        |s| s.sse_events.load(Relaxed) as i64,
    ),
    (
        "shardcat_sse_pending_events",
        Kind::Gauge,
        "SSE events buffered and not yet delivered.",
        |s| s.sse_pending_events.load(Relaxed),
    ),
    (
        "shardcat_sse_backpressure_waits_total",
        Kind::Counter,
        "Times an upstream SSE read waited for a slow client.",
        |s| s.sse_backpressure_waits.load(Relaxed) as i64,
    ),
    (
        "shardcat_sse_upstream_streams",
        Kind::Gauge,
        "SSE streams open to upstreams.",
        |s| s.sse_upstream_streams.load(Relaxed),
    ),
    (
        "shardcat_sse_resumed_upstream_total",
        Kind::Counter,
        "SSE streams continued from the upstream by the upstream event id in Last-Event-ID.",
        |s| s.sse_resumed_upstream.load(Relaxed) as i64,
    ),
    (
        "shardcat_sse_resume_missed_total",
        Kind::Counter,
        "Last-Event-IDs of streams this node does not hold that carried no upstream id.",
        |s| s.sse_resume_missed.load(Relaxed) as i64,
    ),
    (
        "shardcat_sse_resumed_total",
        Kind::Counter,
        "SSE streams resumed with Last-Event-ID.",
        |s| s.sse_resumed.load(Relaxed) as i64,
    ),
    (
        "shardcat_sse_replay_gaps_total",
        Kind::Counter,
        "Resumptions that asked for events no longer buffered.",
        |s| s.sse_replay_gaps.load(Relaxed) as i64,
    ),
    (
        "shardcat_sse_upstream_reconnects_total",
        Kind::Counter,
        "Upstream SSE streams reconnected after a drop.",
        |s| s.sse_upstream_reconnects.load(Relaxed) as i64,
    ),
    (
        "shardcat_sse_reconnect_failures_total",
        Kind::Counter,
        "Upstream SSE streams ended after reconnecting failed.",
        |s| s.sse_reconnect_failures.load(Relaxed) as i64,
    ),
    (
        "shardcat_sse_idle_timeouts_total",
        Kind::Counter,
        "Upstream SSE streams that sent nothing for the idle timeout.",
        |s| s.sse_idle_timeouts.load(Relaxed) as i64,
    ),
    (
        "shardcat_sse_abandoned_total",
        Kind::Counter,
        "Detached SSE streams not resumed within the resume window.",
        |s| s.sse_abandoned.load(Relaxed) as i64,
    ),
    (
        "shardcat_legacy_sse_streams",
        Kind::Gauge,
        "Event streams open to legacy HTTP+SSE servers (kind = \"sse\").",
        |s| s.legacy_sse_streams.load(Relaxed),
    ),
    (
        "shardcat_legacy_sse_opened_total",
        Kind::Counter,
        "Event streams to legacy HTTP+SSE servers that announced their endpoint.",
        |s| s.legacy_sse_opened.load(Relaxed) as i64,
    ),
    (
        "shardcat_legacy_sse_dropped_total",
        Kind::Counter,
        "Event streams to legacy HTTP+SSE servers that ended unasked (their sessions ended).",
        |s| s.legacy_sse_dropped.load(Relaxed) as i64,
    ),
    (
        "shardcat_legacy_sse_refused_total",
        Kind::Counter,
        "Legacy HTTP+SSE servers refused: no event stream, no endpoint event, or an endpoint on another origin.",
        |s| s.legacy_sse_refused.load(Relaxed) as i64,
    ),
    (
        "shardcat_legacy_sse_post_failures_total",
        Kind::Counter,
        "Messages a legacy HTTP+SSE server did not accept (no 2xx to their POST).",
        |s| s.legacy_sse_post_failures.load(Relaxed) as i64,
    ),
    (
        "shardcat_stdio_processes",
        Kind::Gauge,
        "stdio server processes running.",
        |s| s.stdio_processes.load(Relaxed),
    ),
    (
        "shardcat_stdio_spawned_total",
        Kind::Counter,
        "stdio server processes started.",
        |s| s.stdio_spawned.load(Relaxed) as i64,
    ),
    (
        "shardcat_stdio_exited_total",
        Kind::Counter,
        "stdio server processes exited.",
        |s| s.stdio_exited.load(Relaxed) as i64,
    ),
    (
        "shardcat_stdio_crashes_total",
        Kind::Counter,
        "stdio server processes that exited while serving a session.",
        |s| s.stdio_crashes.load(Relaxed) as i64,
    ),
    (
        "shardcat_stdio_killed_total",
        Kind::Counter,
        "stdio server processes killed after ignoring SIGTERM.",
        |s| s.stdio_killed.load(Relaxed) as i64,
    ),
    (
        "shardcat_stdio_stuck_total",
        Kind::Counter,
        "stdio server processes ended for not reading their input.",
        |s| s.stdio_stuck.load(Relaxed) as i64,
    ),
    (
        "shardcat_stdio_spawn_failures_total",
        Kind::Counter,
        "stdio server processes that could not be started.",
        |s| s.stdio_spawn_failures.load(Relaxed) as i64,
    ),
    (
        "shardcat_stdio_prewarm_hits_total",
        Kind::Counter,
        "Sessions given an already started (prewarmed) process.",
        |s| s.stdio_prewarm_hits.load(Relaxed) as i64,
    ),
    (
        "shardcat_stdio_cancelled_total",
        Kind::Counter,
        "notifications/cancelled sent to stdio servers for abandoned requests.",
        |s| s.stdio_cancelled.load(Relaxed) as i64,
    ),
    (
        "shardcat_stdio_timeouts_total",
        Kind::Counter,
        "stdio requests not answered in time (504).",
        |s| s.stdio_timeouts.load(Relaxed) as i64,
    ),
    (
        "shardcat_stdio_late_responses_total",
        Kind::Counter,
        "stdio responses to no pending request, dropped.",
        |s| s.stdio_late_responses.load(Relaxed) as i64,
    ),
    (
        "shardcat_stdio_dropped_messages_total",
        Kind::Counter,
        "stdio server messages dropped: no room, or no client to receive them.",
        |s| s.stdio_dropped_messages.load(Relaxed) as i64,
    ),
    (
        "shardcat_stdio_bad_lines_total",
        Kind::Counter,
        "stdio output lines that were not JSON-RPC, skipped.",
        |s| s.stdio_bad_lines.load(Relaxed) as i64,
    ),
    (
        "shardcat_stdio_stderr_suppressed_total",
        Kind::Counter,
        "stdio stderr lines not logged (over the per-second limit).",
        |s| s.stdio_stderr_suppressed.load(Relaxed) as i64,
    ),
    (
        "shardcat_tape_frames_shed_total",
        Kind::Counter,
        "Recorded frames dropped by degradation (recording_shed).",
        |s| s.tape_frames_shed.load(Relaxed) as i64,
    ),
];

/// Exposition format of `/metrics`, chosen by the scrape's `Accept` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4, the default.
    Text,
    /// OpenMetrics 1.0.0, for a scraper that asks for `application/openmetrics-text`.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when `accept` names `application/openmetrics-text` with a weight no lower than
    /// any `text/plain` range; the text format otherwise (including no header at all).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let (mut om, mut text) = (0.0f32, 0.0f32);
        for range in accept.unwrap_or("").split(',') {
            let mut params = range.split(';');
            let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = params
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => om = om.max(q),
                "text/plain" => text = text.max(q),
                _ => {}
            }
        }
        if om > 0.0 && om >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The type of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up while the process lives; named `*_total`.
    Counter,
    Gauge,
    /// Cumulative `_bucket{le}` series with `_sum` and `_count`.
    Histogram,
    /// Always 1; its labels carry the facts. Named `*_info` (a gauge in the text format).
    Info,
}

/// Writes a family's `# HELP` and `# TYPE` lines; its samples must follow at once, all
/// together. In OpenMetrics the family of a counter (or info) is named without its `_total`
/// (`_info`) suffix, which its samples keep.
pub fn header(out: &mut String, format: Format, name: &str, kind: Kind, help: &str) {
    debug_assert!(kind != Kind::Counter || name.ends_with("_total"), "{name}");
    debug_assert!(kind != Kind::Info || name.ends_with("_info"), "{name}");
    debug_assert!(!help.contains(['\\', '\n']), "{name}: help needs escaping");
    let (family, type_name) = match (format, kind) {
        (Format::Text, Kind::Info) => (name, "gauge"),
        (Format::Text, k) => (name, k.text_name()),
        (Format::OpenMetrics, Kind::Counter) => {
            (name.strip_suffix("_total").unwrap_or(name), "counter")
        }
        (Format::OpenMetrics, Kind::Info) => (name.strip_suffix("_info").unwrap_or(name), "info"),
        (Format::OpenMetrics, k) => (name, k.text_name()),
    };
    let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {type_name}");
}

impl Kind {
    fn text_name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge | Kind::Info => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Ends the exposition (OpenMetrics requires its `# EOF` line).
pub fn finish(out: &mut String, format: Format) {
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
}

/// A label value, escaped for both formats (backslash, double quote, newline).
pub fn label_value(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

/// Upper bounds of the request-duration histogram's buckets in microseconds, with their `le`
/// labels in seconds: 50 µs (the gateway's own cost is tens of µs) to 30 s (slow tool calls),
/// about three per decade, then `+Inf`. Fixed, so series from every shard and node add up.
pub const DURATION_BUCKETS: [(u64, &str); 18] = [
    (50, "0.00005"),
    (100, "0.0001"),
    (250, "0.00025"),
    (500, "0.0005"),
    (1_000, "0.001"),
    (2_500, "0.0025"),
    (5_000, "0.005"),
    (10_000, "0.01"),
    (25_000, "0.025"),
    (50_000, "0.05"),
    (100_000, "0.1"),
    (250_000, "0.25"),
    (500_000, "0.5"),
    (1_000_000, "1"),
    (2_500_000, "2.5"),
    (5_000_000, "5"),
    (10_000_000, "10"),
    (30_000_000, "30"),
];

/// The first bound of `DURATION_BUCKETS` at or above `us` (`None`: above every bound).
fn bucket_of(us: u64) -> Option<usize> {
    DURATION_BUCKETS.iter().position(|(le, _)| us <= *le)
}

/// A histogram's cumulative bucket counts over `DURATION_BUCKETS`, with its count and sum.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Buckets {
    /// Observations at or below each bound of `DURATION_BUCKETS` (non-decreasing).
    pub cumulative: [u64; DURATION_BUCKETS.len()],
    /// All observations: the `+Inf` bucket.
    pub count: u64,
    /// Sum of the observations in microseconds.
    pub sum_us: u64,
}

impl Buckets {
    /// Derived from an HdrHistogram at render time. HdrHistogram keeps 3 significant digits, so
    /// a value is placed by the highest value of its HdrHistogram bucket (never in a faster
    /// bucket than it belongs to) and summed at the middle of it: both exact to within 0.1%.
    pub fn from_hdr(h: &Histogram<u64>) -> Buckets {
        let mut b = Buckets::default();
        let mut per = [0u64; DURATION_BUCKETS.len()];
        for v in h.iter_recorded() {
            let n = v.count_since_last_iteration();
            let at = v.value_iterated_to();
            if let Some(i) = bucket_of(at) {
                per[i] += n;
            }
            b.count += n;
            b.sum_us = b
                .sum_us
                .saturating_add(h.median_equivalent(at).saturating_mul(n));
        }
        let mut run = 0;
        for (c, n) in b.cumulative.iter_mut().zip(per) {
            run += n;
            *c = run;
        }
        b
    }
}

/// Writes one histogram's samples (`_bucket` for every bound and `+Inf`, `_sum` in seconds,
/// `_count`) with `labels` (`k="v",...`, may be empty) before `le`.
pub fn write_histogram(out: &mut String, name: &str, labels: &str, b: &Buckets) {
    let sep = if labels.is_empty() { "" } else { "," };
    for ((_, le), c) in DURATION_BUCKETS.iter().zip(b.cumulative) {
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {c}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", b.count);
    let braces = |l: &str| {
        if l.is_empty() {
            String::new()
        } else {
            format!("{{{l}}}")
        }
    };
    let _ = writeln!(
        out,
        "{name}_sum{} {}",
        braces(labels),
        b.sum_us as f64 / 1e6
    );
    let _ = writeln!(out, "{name}_count{} {}", braces(labels), b.count);
}

/// Renders every shard's families, each with a `shard` label and no aggregate series: sum over
/// `shard` for a gateway-wide figure. `hists[i]` is shard i's latest latency snapshot. The
/// format's closing line is left to the caller (`finish`), which may append families.
pub fn render(
    stats: &[&ShardStats],
    hists: &[Option<Histogram<u64>>],
    format: Format,
    out: &mut String,
) {
    render_requests(stats, format, out);
    render_rejections(stats, format, out);
    render_auth(stats, format, out);
    render_cluster_refusals(stats, format, out);
    for (name, kind, help, get) in SHARD_SERIES {
        header(out, format, name, kind, help);
        for s in stats {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", s.shard, get(s));
        }
    }
    render_upstreams(stats, format, out);
    render_latency(stats, hists, format, out);
    render_loop_lag(stats, format, out);
}

/// How late each shard's lag probe woke: the time its event loop took to come back to a due
/// timer. Long lags are stalls of the whole shard, seen by every request it holds.
fn render_loop_lag(stats: &[&ShardStats], format: Format, out: &mut String) {
    const NAME: &str = "shardcat_shard_loop_lag_seconds";
    header(
        out,
        format,
        NAME,
        Kind::Histogram,
        "How late the shard's event loop served a due timer (probed every 10 ms).",
    );
    for s in stats {
        let b = s.loop_lag.buckets();
        write_histogram(out, NAME, &format!("shard=\"{}\"", s.shard), &b);
    }
}

fn render_requests(stats: &[&ShardStats], format: Format, out: &mut String) {
    header(
        out,
        format,
        "shardcat_requests_total",
        Kind::Counter,
        "Requests answered, by MCP method (unknown ones: other) and HTTP status (others: other).",
    );
    let width = STATUSES.len() + 1;
    for (mi, method) in METHODS.iter().enumerate() {
        for si in 0..width {
            let cell = mi * width + si;
            // A method and status pair appears once some shard counted it, on every shard.
            if stats.iter().all(|s| s.requests[cell].load(Relaxed) == 0) {
                continue;
            }
            let status = STATUSES
                .get(si)
                .map_or("other".to_string(), |s| s.to_string());
            for s in stats {
                let _ = writeln!(
                    out,
                    "shardcat_requests_total{{shard=\"{}\",method=\"{method}\",status=\"{status}\"}} {}",
                    s.shard,
                    s.requests[cell].load(Relaxed)
                );
            }
        }
    }
}

/// A counter family with one label whose values come from a fixed list, `get(shard, i)`
/// giving the count of `labels[i]`.
struct Labeled {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    labels: &'static [&'static str],
    get: fn(&ShardStats, usize) -> u64,
}

fn render_labeled(f: &Labeled, stats: &[&ShardStats], format: Format, out: &mut String) {
    header(out, format, f.name, Kind::Counter, f.help);
    for (i, value) in f.labels.iter().enumerate() {
        for s in stats {
            let _ = writeln!(
                out,
                "{}{{shard=\"{}\",{}=\"{value}\"}} {}",
                f.name,
                s.shard,
                f.label,
                (f.get)(s, i)
            );
        }
    }
}

fn render_rejections(stats: &[&ShardStats], format: Format, out: &mut String) {
    let f = Labeled {
        name: "shardcat_rejections_total",
        help: "Requests or connections refused because a bound was hit, by reason.",
        label: "reason",
        labels: &REJECTIONS,
        get: |s, i| s.rejections[i].load(Relaxed),
    };
    render_labeled(&f, stats, format, out);
}

fn render_auth(stats: &[&ShardStats], format: Format, out: &mut String) {
    let f = Labeled {
        name: "shardcat_auth_total",
        help: "Requests authenticated (ok) or refused, by result.",
        label: "result",
        labels: &AUTH_RESULTS,
        get: |s, i| s.auth[i].load(Relaxed),
    };
    render_labeled(&f, stats, format, out);
}

fn render_cluster_refusals(stats: &[&ShardStats], format: Format, out: &mut String) {
    let f = Labeled {
        name: "shardcat_cluster_ids_refused_total",
        help: "Clustered session ids refused (answered 404), by reason.",
        label: "reason",
        labels: &CLUSTER_REFUSALS,
        get: |s, i| s.cluster_refused[i].load(Relaxed),
    };
    render_labeled(&f, stats, format, out);
}

/// Each shard's view of each HTTP upstream (by its index in the configuration).
fn render_upstreams(stats: &[&ShardStats], format: Format, out: &mut String) {
    if stats.iter().all(|s| s.upstream_state.is_empty()) {
        return;
    }
    header(
        out,
        format,
        "shardcat_upstream_state",
        Kind::Gauge,
        "The shard's view of an HTTP upstream: 0 closed, 1 open, 2 half-open, 3 unhealthy.",
    );
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

/// The request-duration histogram per shard, from its latest snapshot. A shard's snapshot is
/// its cumulative HdrHistogram since start (the shard never resets it, and the admin thread keeps
/// the newest one it received), so every bucket is a monotonic counter; a shard that has not
/// published yet shows zeros. The snapshot is up to a second older than the request counters.
fn render_latency(
    stats: &[&ShardStats],
    hists: &[Option<Histogram<u64>>],
    format: Format,
    out: &mut String,
) {
    const NAME: &str = "shardcat_request_duration_seconds";
    header(
        out,
        format,
        NAME,
        Kind::Histogram,
        "Time from a request's head to the end of its response (for SSE, of the stream).",
    );
    for s in stats {
        let b = hists
            .get(s.shard)
            .and_then(|h| h.as_ref())
            .map_or_else(Buckets::default, Buckets::from_hdr);
        write_histogram(out, NAME, &format!("shard=\"{}\"", s.shard), &b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the exposition's structure: every sample follows its family's HELP and TYPE, the
    /// family's samples are one group, names follow the conventions. Returns the samples.
    fn parse(out: &str, format: Format) -> Vec<(String, String, f64)> {
        let mut done: Vec<String> = Vec::new();
        let mut current: Option<(String, String)> = None; // (family, type)
        let mut pending_help: Option<String> = None;
        let mut samples = Vec::new();
        let body = match format {
            Format::Text => out,
            Format::OpenMetrics => out.strip_suffix("# EOF\n").expect("ends with # EOF"),
        };
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("help text");
                assert!(!help.trim().is_empty(), "{line}");
                assert!(!done.contains(&name.to_string()), "{name} twice");
                if let Some((f, _)) = current.take() {
                    done.push(f);
                }
                pending_help = Some(name.to_string());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("type");
                assert_eq!(
                    pending_help.take().as_deref(),
                    Some(name),
                    "HELP before TYPE"
                );
                current = Some((name.to_string(), kind.to_string()));
                continue;
            }
            assert!(!line.starts_with('#'), "{line}");
            let (series, value) = line.rsplit_once(' ').expect("value");
            let value: f64 = value.parse().expect("number");
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.strip_suffix('}').expect("closing brace")),
                None => (series, ""),
            };
            let (family, kind) = current.as_ref().expect("a sample before any TYPE");
            let ok = match kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(family)),
                "counter" if format == Format::OpenMetrics => name == format!("{family}_total"),
                "info" => name == format!("{family}_info"),
                _ => name == family,
            };
            assert!(ok, "{name} under the TYPE of {family} ({kind})");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
            assert!(!labels.contains("shard=\"all\""), "{line}");
            samples.push((name.to_string(), labels.to_string(), value));
        }
        samples
    }

    fn two_shards() -> (ShardStats, ShardStats, Histogram<u64>) {
        let a = ShardStats::with_upstreams(0, 2);
        let b = ShardStats::with_upstreams(1, 2);
        a.count_request("tools/call", 200);
        b.count_request("tools/call", 200);
        b.count_request("weird/method", 404);
        b.count_request("ping", 299);
        a.count_rejection("sessions");
        a.count_rejection("no such reason");
        gauge_add(&a.sessions, 3);
        gauge_add(&b.sessions, 2);
        let mut h = new_histogram();
        for us in [40, 50, 51, 900, 1_000, 20_000, 40_000_000] {
            h.record(us).unwrap();
        }
        (a, b, h)
    }

    fn sum(samples: &[(String, String, f64)], name: &str, with: &str) -> f64 {
        samples
            .iter()
            .filter(|(n, l, _)| n == name && l.contains(with))
            .map(|(_, _, v)| v)
            .sum()
    }

    #[test]
    fn per_shard_series_add_up_and_carry_no_aggregate() {
        let (a, b, h) = two_shards();
        let mut out = String::new();
        render(&[&a, &b], &[Some(h), None], Format::Text, &mut out);
        let s = parse(&out, Format::Text);
        let tools = "method=\"tools/call\",status=\"200\"";
        assert_eq!(sum(&s, "shardcat_requests_total", tools), 2.0, "{out}");
        assert!(out
            .contains("shardcat_requests_total{shard=\"1\",method=\"other\",status=\"404\"} 1\n"));
        // A pair some shard counted is shown on every shard, zero or not.
        assert!(out
            .contains("shardcat_requests_total{shard=\"0\",method=\"other\",status=\"404\"} 0\n"));
        assert!(out
            .contains("shardcat_requests_total{shard=\"1\",method=\"ping\",status=\"other\"} 1\n"));
        assert_eq!(sum(&s, "shardcat_requests_total", ""), 4.0);
        assert_eq!(
            sum(&s, "shardcat_rejections_total", "reason=\"sessions\""),
            1.0
        );
        assert_eq!(
            sum(&s, "shardcat_rejections_total", "reason=\"other\""),
            1.0
        );
        assert_eq!(sum(&s, "shardcat_sessions", ""), 5.0);
        assert_eq!(sum(&s, "shardcat_upstream_state", "upstream=\"1\""), 0.0);
        assert_eq!(
            s.iter()
                .filter(|(n, _, _)| n == "shardcat_upstream_state")
                .count(),
            4
        );
        assert_eq!(
            method_index("notifications/progress"),
            method_index("notifications/other")
        );
    }

    #[test]
    fn loop_lag_buckets_are_cumulative_and_the_slowest_land_in_inf() {
        let h = LagHistogram::default();
        for us in [0, 50, 51, 9_000, 10_000, 31_000_000] {
            h.record(std::time::Duration::from_micros(us));
        }
        let b = h.buckets();
        let at =
            |le: u64| b.cumulative[DURATION_BUCKETS.iter().position(|(l, _)| *l == le).unwrap()];
        assert_eq!((at(50), at(100), at(5_000), at(10_000)), (2, 3, 3, 5));
        assert_eq!(b.cumulative[DURATION_BUCKETS.len() - 1], 5, "30 s bound");
        assert_eq!(b.count, 6, "above every bound: +Inf only");
        assert_eq!(b.sum_us, 50 + 51 + 9_000 + 10_000 + 31_000_000);
    }

    #[test]
    fn latency_is_a_cumulative_histogram() {
        let (a, b, h) = two_shards();
        let mut out = String::new();
        render(&[&a, &b], &[Some(h), None], Format::Text, &mut out);
        let s = parse(&out, Format::Text);
        let name = "shardcat_request_duration_seconds";
        let bucket = |shard: &str, le: &str| {
            sum(
                &s,
                &format!("{name}_bucket"),
                &format!("shard=\"{shard}\",le=\"{le}\""),
            )
        };
        assert_eq!(bucket("0", "0.00005"), 2.0, "{out}");
        assert_eq!(bucket("0", "0.0001"), 3.0);
        assert_eq!(bucket("0", "0.001"), 5.0);
        assert_eq!(bucket("0", "0.025"), 6.0);
        assert_eq!(bucket("0", "30"), 6.0);
        assert_eq!(bucket("0", "+Inf"), 7.0);
        assert_eq!(sum(&s, &format!("{name}_count"), "shard=\"0\""), 7.0);
        let total = 40.0 + 50.0 + 51.0 + 900.0 + 1_000.0 + 20_000.0 + 40_000_000.0;
        let got = sum(&s, &format!("{name}_sum"), "shard=\"0\"");
        assert!((got - total / 1e6).abs() < total / 1e6 * 1e-3, "{got}");
        // A shard without a snapshot yet: zeros, every bucket present.
        assert_eq!(bucket("1", "+Inf"), 0.0);
        for shard in ["0", "1"] {
            let les: Vec<f64> = s
                .iter()
                .filter(|(n, l, _)| {
                    n == &format!("{name}_bucket") && l.contains(&format!("shard=\"{shard}\""))
                })
                .map(|(_, _, v)| *v)
                .collect();
            assert_eq!(les.len(), DURATION_BUCKETS.len() + 1);
            assert!(les.windows(2).all(|w| w[0] <= w[1]), "{les:?}");
        }
    }

    #[test]
    fn buckets_follow_the_hdr_resolution() {
        let mut h = new_histogram();
        // Above 2048 µs HdrHistogram groups values: 24_995 shares a bucket with 25_000..25_007,
        // so it counts above the 25 ms bound, never below the bucket it belongs to.
        h.record(24_000).unwrap();
        h.record(24_995).unwrap();
        h.record(30_000_000).unwrap();
        let b = Buckets::from_hdr(&h);
        let at = |us| {
            DURATION_BUCKETS
                .iter()
                .position(|(le, _)| *le == us)
                .unwrap()
        };
        assert_eq!(b.cumulative[at(25_000)], 1);
        assert_eq!(b.cumulative[at(50_000)], 2);
        assert_eq!(b.cumulative[at(10_000_000)], 2);
        assert_eq!(b.count, 3);
        assert_eq!(Buckets::from_hdr(&new_histogram()), Buckets::default());
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let (a, b, h) = two_shards();
        let mut out = String::new();
        render(&[&a, &b], &[Some(h), None], Format::OpenMetrics, &mut out);
        finish(&mut out, Format::OpenMetrics);
        parse(&out, Format::OpenMetrics);
        assert!(out.contains("# TYPE shardcat_requests counter\n"), "{out}");
        assert!(out.contains("# TYPE shardcat_sessions gauge\n"));
        assert!(out.contains("# TYPE shardcat_request_duration_seconds histogram\n"));
        assert!(out.ends_with("# EOF\n"));
        let mut info = String::new();
        header(
            &mut info,
            Format::OpenMetrics,
            "x_upstream_info",
            Kind::Info,
            "h",
        );
        assert_eq!(info, "# HELP x_upstream h\n# TYPE x_upstream info\n");
    }

    #[test]
    fn negotiates_the_format() {
        // What Prometheus 2.x sends.
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prom)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Text);
        assert_eq!(
            Format::negotiate(Some("text/plain, application/openmetrics-text;q=0.5")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; q=0")),
            Format::Text
        );
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
