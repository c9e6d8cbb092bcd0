//! Health of HTTP upstreams, per shard: a circuit breaker fed by the outcomes of real requests
//! (passive checks), and active probes on a timer.
//!
//! Each shard keeps its own view (plain `Cell`s, no atomics or locks on the request path): a
//! shard that sees an upstream fail stops sending to it at once, without waiting for others.
//! The views are published as gauges for `/health` and `/metrics`.
//!
//! Breaker lifecycle: `Closed` (counting consecutive failures) → `Open` after
//! `breaker_failures` (nothing is sent for `breaker_open_ms`) → `HalfOpen` (up to
//! `breaker_half_open_requests` trial requests) → `Closed` on a success, `Open` again on a
//! failure. Active probes (`health_check`: an MCP initialize + ping + DELETE, or a plain HTTP
//! GET) mark an upstream unhealthy after `unhealthy_threshold` failed probes in a row and
//! healthy again after `healthy_threshold` good ones. A good probe also lets an open breaker
//! try again at once (half-open), and `healthy_threshold` good probes close it: recovery is
//! seen within a few probe intervals even with no traffic.
//!
//! Invariant: an upstream is offered new work only when it is healthy and its breaker admits
//! it; every request outcome and every probe lands in exactly one `record`/`probed` call.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::config::{HealthConfig, ProbeKind, UpstreamConfig};
use crate::metrics::{inc, ShardStats};
use crate::upstream::Upstreams;

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trials: u32 },
}

/// A circuit breaker (time passed in, for tests with an injected clock).
#[derive(Debug)]
pub struct Breaker {
    pub state: BreakerState,
    failures_to_open: u32,
    open_for: Duration,
    trials: u32,
}

/// What a breaker transition means for logs and counters.
#[derive(Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened,
    Closed,
}

impl Breaker {
    pub fn new(cfg: &HealthConfig) -> Breaker {
        Breaker {
            state: BreakerState::Closed { failures: 0 },
            failures_to_open: cfg.breaker_failures,
            open_for: cfg.breaker_open,
            trials: cfg.breaker_half_open_requests,
        }
    }

    /// Whether a request could be sent now (does not take a half-open trial).
    pub fn selectable(&self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } => now >= until,
            BreakerState::HalfOpen { trials } => trials < self.trials,
        }
    }

    /// Takes the right to send one request: moves an expired `Open` to `HalfOpen` and counts
    /// the trial.
    pub fn admit(&mut self, now: Instant) -> bool {
        if let BreakerState::Open { until } = self.state {
            if now < until {
                return false;
            }
            self.state = BreakerState::HalfOpen { trials: 0 };
        }
        match &mut self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::HalfOpen { trials } if *trials < self.trials => {
                *trials += 1;
                true
            }
            _ => false,
        }
    }

    pub fn success(&mut self) -> Transition {
        let was_closed = matches!(self.state, BreakerState::Closed { .. });
        self.state = BreakerState::Closed { failures: 0 };
        if was_closed {
            Transition::None
        } else {
            Transition::Closed
        }
    }

    pub fn failure(&mut self, now: Instant) -> Transition {
        match self.state {
            BreakerState::Closed { failures } if failures + 1 < self.failures_to_open => {
                self.state = BreakerState::Closed {
                    failures: failures + 1,
                };
                Transition::None
            }
            BreakerState::Open { .. } => Transition::None,
            _ => {
                self.state = BreakerState::Open {
                    until: now + self.open_for,
                };
                Transition::Opened
            }
        }
    }

    /// Lets an open breaker try again now (a probe just succeeded).
    pub fn retry_now(&mut self, now: Instant) {
        if let BreakerState::Open { .. } = self.state {
            self.state = BreakerState::Open { until: now };
        }
    }

    /// The gauge value: 0 closed, 1 open, 2 half-open.
    fn code(&self) -> i64 {
        match self.state {
            BreakerState::Closed { .. } => 0,
            BreakerState::Open { .. } => 1,
            BreakerState::HalfOpen { .. } => 2,
        }
    }
}

/// One upstream as this shard sees it.
struct Upstream {
    breaker: RefCell<Breaker>,
    healthy: Cell<bool>,
    /// Consecutive probe results: positive good, negative bad.
    streak: Cell<i32>,
    cfg: HealthConfig,
}

/// The shard's view of its HTTP upstreams.
pub struct Health {
    ups: Vec<Upstream>,
    shard: usize,
    /// Where these upstreams' gauges start in the shard's `upstream_state` (each server of a
    /// federation has its own `Health`; their gauges follow each other).
    gauge_base: usize,
}

impl Health {
    pub fn new(shard: usize, targets: &[UpstreamConfig]) -> Health {
        Health::at(shard, targets, 0)
    }

    /// `new`, with the gauges from `gauge_base` on.
    pub fn at(shard: usize, targets: &[UpstreamConfig], gauge_base: usize) -> Health {
        let ups = targets
            .iter()
            .map(|u| Upstream {
                breaker: RefCell::new(Breaker::new(&u.health)),
                healthy: Cell::new(true),
                streak: Cell::new(0),
                cfg: u.health.clone(),
            })
            .collect();
        Health {
            ups,
            shard,
            gauge_base,
        }
    }

    /// Whether upstream `i` may be chosen for new work now.
    pub fn selectable(&self, i: usize, now: Instant) -> bool {
        self.ups
            .get(i)
            .is_none_or(|u| u.healthy.get() && u.breaker.borrow().selectable(now))
    }

    /// Takes the right to send to upstream `i` (a half-open trial counts).
    pub fn admit(&self, i: usize, now: Instant, stats: &ShardStats) -> bool {
        let Some(u) = self.ups.get(i) else {
            return true;
        };
        let ok = u.breaker.borrow_mut().admit(now);
        self.publish(i, stats);
        ok
    }

    /// Whether a session living on upstream `i` can still be served: not when its upstream is
    /// known down (open breaker, failing probes). The session then ends and the client gets
    /// 404, to start again on a healthy upstream.
    pub fn session_servable(&self, i: usize, now: Instant) -> bool {
        self.selectable(i, now)
    }

    /// Records the outcome of a real request to upstream `i`.
    pub fn record(&self, i: usize, ok: bool, now: Instant, stats: &ShardStats) {
        let Some(u) = self.ups.get(i) else { return };
        let t = if ok {
            u.breaker.borrow_mut().success()
        } else {
            u.breaker.borrow_mut().failure(now)
        };
        self.log_transition(i, t, stats);
        self.publish(i, stats);
    }

    /// Records an active probe of upstream `i`.
    pub fn probed(&self, i: usize, ok: bool, now: Instant, stats: &ShardStats) {
        let Some(u) = self.ups.get(i) else { return };
        inc(&stats.health_probes);
        let streak = u.streak.get();
        let streak = match (ok, streak > 0) {
            (true, true) => streak.saturating_add(1),
            (true, false) => 1,
            (false, true) => -1,
            (false, false) => streak.saturating_sub(1),
        };
        u.streak.set(streak);
        if !ok {
            inc(&stats.health_probe_failures);
            if u.healthy.get() && -streak >= u.cfg.unhealthy_threshold as i32 {
                u.healthy.set(false);
                log::warn!(
                    "shard {}: upstream {i} failed {} probes in a row: out of rotation",
                    self.shard,
                    -streak
                );
            }
        } else {
            let passed = streak >= u.cfg.healthy_threshold as i32;
            if passed && !matches!(u.breaker.borrow().state, BreakerState::Closed { .. }) {
                // As good as a successful request: a full initialize and ping went through.
                let t = u.breaker.borrow_mut().success();
                self.log_transition(i, t, stats);
            } else {
                u.breaker.borrow_mut().retry_now(now);
            }
            if !u.healthy.get() && passed {
                u.healthy.set(true);
                log::info!(
                    "shard {}: upstream {i} passed {streak} probes: back in rotation",
                    self.shard
                );
            }
        }
        self.publish(i, stats);
    }

    fn log_transition(&self, i: usize, t: Transition, stats: &ShardStats) {
        match t {
            Transition::Opened => {
                inc(&stats.breaker_opened);
                log::warn!("shard {}: upstream {i}: circuit breaker opened", self.shard);
            }
            Transition::Closed => {
                inc(&stats.breaker_closed);
                log::info!("shard {}: upstream {i}: circuit breaker closed", self.shard);
            }
            Transition::None => {}
        }
    }

    /// Publishes upstream `i`'s state: 0 closed, 1 open, 2 half-open, 3 unhealthy.
    fn publish(&self, i: usize, stats: &ShardStats) {
        let u = &self.ups[i];
        let code = if u.healthy.get() {
            u.breaker.borrow().code()
        } else {
            3
        };
        if let Some(g) = stats.upstream_state.get(self.gauge_base + i) {
            g.store(code, Relaxed);
        }
    }
}

/// Probes upstream `i` every `health_interval_ms` until shutdown.
pub async fn probe_loop(shard: Rc<Upstreams>, i: usize) {
    let Some(cfg) = shard.pools.get(i).map(|p| p.config().clone()) else {
        return;
    };
    let h = &cfg.health;
    if h.kind == ProbeKind::Off {
        return;
    }
    loop {
        monoio::select! {
            _ = monoio::time::sleep(h.interval) => {}
            _ = shard.shutdown.wait() => return,
        }
        let ok = match monoio::time::timeout(h.timeout, probe(&cfg)).await {
            Ok(Ok(())) => true,
            Ok(Err(why)) => {
                log::debug!("shard {}: upstream {i} probe failed: {why}", shard.shard);
                false
            }
            Err(_) => false,
        };
        shard.health.probed(i, ok, Instant::now(), &shard.stats);
    }
}

/// One probe: `mcp` initializes a session, pings it and deletes it; `http` GETs the path.
async fn probe(cfg: &UpstreamConfig) -> Result<(), String> {
    match cfg.health.kind {
        ProbeKind::Off => Ok(()),
        ProbeKind::Http => {
            let (status, _) = exchange(cfg, "GET", &cfg.health.path, None, None).await?;
            expect_2xx(status)
        }
        ProbeKind::Mcp => {
            let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"shardcat-health","version":"1"}}}"#;
            let (status, sid) = exchange(cfg, "POST", &cfg.path, Some(init), None).await?;
            expect_2xx(status)?;
            let ping = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
            let (status, _) = exchange(cfg, "POST", &cfg.path, Some(ping), sid.as_deref()).await?;
            if let Some(sid) = sid.as_deref() {
                // Best effort: an upstream that keeps the session lets it expire.
                let _ = exchange(cfg, "DELETE", &cfg.path, None, Some(sid)).await;
            }
            expect_2xx(status)
        }
    }
}

fn expect_2xx(status: u16) -> Result<(), String> {
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// Largest probe response head read.
const PROBE_HEAD_BYTES: usize = 16 * 1024;

/// One request on its own connection (`connection: close`): the response's status and
/// session id. The body is not read.
async fn exchange(
    cfg: &UpstreamConfig,
    method: &str,
    path: &str,
    body: Option<&str>,
    sid: Option<&str>,
) -> Result<(u16, Option<String>), String> {
    let mut s = TcpStream::connect(cfg.addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {}\r\nuser-agent: shardcat-health\r\nconnection: close\r\naccept: application/json, text/event-stream\r\nmcp-protocol-version: 2025-11-25\r\n",
        cfg.authority
    );
    if let Some(auth) = &cfg.authorization {
        req.push_str(&format!("authorization: {auth}\r\n"));
    }
    if let Some(sid) = sid {
        req.push_str(&format!("mcp-session-id: {sid}\r\n"));
    }
    let body = body.unwrap_or("");
    if method == "POST" {
        req.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let (res, _) = s.write_all(req.into_bytes()).await;
    res.map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(1024);
    loop {
        let buf = Vec::with_capacity(4096);
        let (res, buf) = s.read(buf).await;
        let n = res.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a response".into());
        }
        head.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let sid = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("mcp-session-id"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(str::to_string);
                return Ok((resp.code.unwrap_or(0), sid));
            }
            Ok(httparse::Status::Partial) if head.len() < PROBE_HEAD_BYTES => {}
            Ok(httparse::Status::Partial) => return Err("response head too large".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HealthConfig {
        HealthConfig {
            kind: ProbeKind::Off,
            path: "/".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            breaker_failures: 3,
            breaker_open: Duration::from_secs(5),
            breaker_half_open_requests: 1,
        }
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&cfg());
        assert_eq!(b.failure(t0), Transition::None);
        assert_eq!(b.failure(t0), Transition::None);
        assert_eq!(b.success(), Transition::None);
        assert_eq!(b.failure(t0), Transition::None);
        assert_eq!(b.failure(t0), Transition::None);
        assert!(b.admit(t0), "two failures in a row: still closed");
        assert_eq!(b.failure(t0), Transition::Opened);
        assert!(!b.selectable(t0) && !b.admit(t0));
        assert!(!b.admit(t0 + Duration::from_millis(4999)));
    }

    #[test]
    fn half_open_admits_limited_trials_then_closes_or_reopens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&cfg());
        for _ in 0..3 {
            b.failure(t0);
        }
        let later = t0 + Duration::from_secs(5);
        assert!(b.selectable(later));
        assert!(b.admit(later), "first trial");
        assert_eq!(b.state, BreakerState::HalfOpen { trials: 1 });
        assert!(
            !b.selectable(later) && !b.admit(later),
            "one trial at a time"
        );
        assert_eq!(
            b.failure(later),
            Transition::Opened,
            "a failed trial reopens"
        );
        assert!(!b.admit(later + Duration::from_secs(1)));
        let again = later + Duration::from_secs(5);
        assert!(b.admit(again));
        assert_eq!(b.success(), Transition::Closed);
        assert!(b.admit(again) && b.admit(again), "closed: no limit");
    }

    #[test]
    fn a_good_probe_lets_an_open_breaker_try_at_once() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&cfg());
        for _ in 0..3 {
            b.failure(t0);
        }
        assert!(!b.admit(t0));
        b.retry_now(t0);
        assert!(b.admit(t0));
    }

    #[test]
    fn probes_move_an_upstream_out_of_and_back_into_rotation_with_thresholds() {
        let up = UpstreamConfig {
            addr: "127.0.0.1:1".parse().unwrap(),
            authority: "127.0.0.1:1".into(),
            path: "/mcp".into(),
            authorization: None,
            pool_max_idle: 1,
            pool_max_connections: 1,
            pool_idle_timeout: Duration::from_secs(1),
            weight: 1,
            health: cfg(),
        };
        let stats = ShardStats::with_upstreams(0, 1);
        let h = Health::new(0, &[up]);
        let now = Instant::now();
        h.probed(0, false, now, &stats);
        assert!(h.selectable(0, now), "one failed probe is not enough");
        h.probed(0, false, now, &stats);
        assert!(!h.selectable(0, now));
        assert_eq!(stats.upstream_state[0].load(Relaxed), 3);
        h.probed(0, true, now, &stats);
        assert!(!h.selectable(0, now), "one good probe is not enough");
        h.probed(0, true, now, &stats);
        assert!(h.selectable(0, now));
        assert_eq!(stats.upstream_state[0].load(Relaxed), 0);
        assert_eq!(stats.health_probe_failures.load(Relaxed), 2);
    }
}
