//! The shard's upstream HTTP connection pool: bounded (open and idle counts), LIFO keep-alive
//! reuse, idle timeout, and a liveness check before reuse.
//!
//! Invariant: an `UpConn` is either given back with `Pool::checkin` after a response was read to
//! its end, or dropped, which closes the socket. Both paths keep the open/idle gauges exact, so
//! no path (error, timeout, client gone) can leak a connection.

pub mod http;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use monoio::net::TcpStream;

use crate::config::UpstreamConfig;
use crate::error::{Error, Kind, Result};
use crate::metrics::{gauge_add, inc, ShardStats};

struct Idle {
    stream: TcpStream,
    since: Instant,
    /// Check liveness before reuse, however briefly idle (see `UpConn::streamed`).
    verify: bool,
}

/// Idle time after which a pooled connection is checked for a peer close before reuse.
const PEEK_AFTER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Pool {
    cfg: UpstreamConfig,
    connect_timeout: std::time::Duration,
    idle: RefCell<Vec<Idle>>,
    open: Cell<usize>,
    stats: Arc<ShardStats>,
}

/// A checked-out upstream connection.
pub struct UpConn {
    stream: Option<TcpStream>,
    pub reused: bool,
    /// Its last response was an SSE stream the server ended.
    streamed: bool,
    pool: Rc<Pool>,
}

impl UpConn {
    pub fn stream(&mut self) -> &mut TcpStream {
        self.stream.as_mut().expect("UpConn used after checkin")
    }

    /// Gives the connection back to its pool (its response was read to the end under
    /// keep-alive).
    pub fn checkin(self) {
        let pool = self.pool.clone();
        pool.checkin(self);
    }

    /// Closes every idle connection of this connection's pool (see `Pool::clear`).
    pub fn discard_idle_siblings(&self) {
        self.pool.clear();
    }

    /// Marks a connection whose SSE stream the server just ended. Servers often close such a
    /// connection right after the stream's last chunk, so it is checked before its next reuse
    /// even when it was idle only briefly (a request sent on it would meet EOF: 502).
    pub fn streamed(&mut self) {
        self.streamed = true;
    }
}

impl Drop for UpConn {
    fn drop(&mut self) {
        if self.stream.take().is_some() {
            self.pool.open.set(self.pool.open.get() - 1);
            gauge_add(&self.pool.stats.pool_open, -1);
        }
    }
}

impl Pool {
    pub fn new(
        cfg: UpstreamConfig,
        connect_timeout: std::time::Duration,
        stats: Arc<ShardStats>,
    ) -> Pool {
        Pool {
            cfg,
            connect_timeout,
            idle: RefCell::new(Vec::new()),
            open: Cell::new(0),
            stats,
        }
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    /// A live connection: the most recently used idle one, or a new one.
    pub async fn checkout(self: &Rc<Self>) -> Result<UpConn> {
        let now = Instant::now();
        while let Some(idle) = self.pop_idle() {
            let idle_for = now.duration_since(idle.since);
            // Upstreams close idle keep-alive connections after seconds, not milliseconds:
            // only a connection idle that long is worth a liveness syscall.
            let trusted = idle_for < PEEK_AFTER_IDLE && !idle.verify;
            if idle_for < self.cfg.pool_idle_timeout && (trusted || peer_still_open(&idle.stream)) {
                inc(&self.stats.pool_reuses);
                return Ok(UpConn {
                    stream: Some(idle.stream),
                    reused: true,
                    streamed: false,
                    pool: self.clone(),
                });
            }
            inc(&self.stats.pool_discarded);
            self.forget_open();
        }
        if self.open.get() >= self.cfg.pool_max_connections {
            return Err(Error::new(Kind::Overloaded("upstream_pool"), ""));
        }
        // Count the connection as open before awaiting, so concurrent checkouts respect the bound.
        self.open.set(self.open.get() + 1);
        gauge_add(&self.stats.pool_open, 1);
        let guard = UpConn {
            stream: None,
            reused: false,
            streamed: false,
            pool: self.clone(),
        };
        let stream =
            match monoio::time::timeout(self.connect_timeout, TcpStream::connect(self.cfg.addr))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    self.forget_open();
                    drop(guard);
                    return Err(Error::new(Kind::UpstreamConnect, e.to_string()));
                }
                Err(_) => {
                    self.forget_open();
                    drop(guard);
                    return Err(Error::new(Kind::UpstreamTimeout, "connect timed out"));
                }
            };
        let _ = stream.set_nodelay(true);
        inc(&self.stats.pool_connects);
        let mut conn = guard;
        conn.stream = Some(stream);
        Ok(conn)
    }

    fn pop_idle(&self) -> Option<Idle> {
        let idle = self.idle.borrow_mut().pop();
        if idle.is_some() {
            gauge_add(&self.stats.pool_idle, -1);
        }
        idle
    }

    fn forget_open(&self) {
        self.open.set(self.open.get() - 1);
        gauge_add(&self.stats.pool_open, -1);
    }

    /// Returns a connection whose last response was fully read and allowed keep-alive.
    pub fn checkin(&self, mut conn: UpConn) {
        let Some(stream) = conn.stream.take() else {
            return;
        };
        let mut idle = self.idle.borrow_mut();
        if idle.len() >= self.cfg.pool_max_idle {
            drop(idle);
            self.forget_open();
            return;
        }
        idle.push(Idle {
            stream,
            since: Instant::now(),
            verify: conn.streamed,
        });
        gauge_add(&self.stats.pool_idle, 1);
    }

    /// Closes idle connections past the idle timeout.
    pub fn sweep(&self, now: Instant) {
        let timeout = self.cfg.pool_idle_timeout;
        let mut idle = self.idle.borrow_mut();
        let before = idle.len();
        idle.retain(|c| now.duration_since(c.since) < timeout);
        let closed = before - idle.len();
        drop(idle);
        for _ in 0..closed {
            gauge_add(&self.stats.pool_idle, -1);
            self.forget_open();
        }
    }

    /// Closes every idle connection (shutdown).
    pub fn clear(&self) {
        let n = std::mem::take(&mut *self.idle.borrow_mut()).len();
        for _ in 0..n {
            gauge_add(&self.stats.pool_idle, -1);
            self.forget_open();
        }
    }

    pub fn open(&self) -> usize {
        self.open.get()
    }

    pub fn idle(&self) -> usize {
        self.idle.borrow().len()
    }

    /// Connections carrying a request right now.
    pub fn in_use(&self) -> usize {
        self.open.get() - self.idle.borrow().len()
    }
}

/// Whether an idle socket is still open with nothing unread: a closed peer (EOF) or stray bytes
/// both make it unfit for the next request.
fn peer_still_open(stream: &TcpStream) -> bool {
    crate::codec::http::peek(stream) == crate::codec::http::Peek::Empty
}

/// Chooses an upstream for a new session or a stateless request (a shard's own state: no
/// atomics). Sessions never come here again: they stay where they started.
pub struct Balancer {
    strategy: crate::config::Strategy,
    weights: Vec<i64>,
    /// Smooth weighted round robin: each upstream's running credit.
    credit: RefCell<Vec<i64>>,
}

impl Balancer {
    pub fn new(strategy: crate::config::Strategy, weights: Vec<u32>) -> Balancer {
        let weights: Vec<i64> = weights.into_iter().map(i64::from).collect();
        Balancer {
            strategy,
            credit: RefCell::new(vec![0; weights.len()]),
            weights,
        }
    }

    /// Whether `pick` uses the client (the `sticky` strategy).
    pub fn by_client(&self) -> bool {
        self.strategy == crate::config::Strategy::Sticky
    }

    /// An upstream not in `tried` and `usable` (healthy, breaker admitting), or `None` when
    /// there is none. `client` is the client's cell (for `sticky`).
    pub fn pick(
        &self,
        pools: &[Rc<Pool>],
        client: u32,
        tried: &[usize],
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let open = |i: &usize| !tried.contains(i) && usable(*i);
        let n = self.weights.len();
        match self.strategy {
            crate::config::Strategy::RoundRobin => {
                let mut credit = self.credit.borrow_mut();
                let mut total = 0;
                let mut best: Option<usize> = None;
                for i in (0..n).filter(open) {
                    credit[i] += self.weights[i];
                    total += self.weights[i];
                    if best.is_none_or(|b| credit[i] > credit[b]) {
                        best = Some(i);
                    }
                }
                let b = best?;
                credit[b] -= total;
                Some(b)
            }
            crate::config::Strategy::LeastConnections => (0..n)
                .filter(open)
                .min_by_key(|&i| (pools[i].in_use() as i64 * 1000) / self.weights[i]),
            crate::config::Strategy::Sticky => {
                let total: i64 = self.weights.iter().sum();
                let mut at = i64::from(client) % total.max(1);
                let home = (0..n)
                    .find(|&i| {
                        at -= self.weights[i];
                        at < 0
                    })
                    .unwrap_or(0);
                (0..n).map(|k| (home + k) % n).find(open)
            }
        }
    }
}

#[cfg(test)]
mod balancer_tests {
    use super::*;
    use crate::config::Strategy;

    fn pools(n: usize) -> Vec<Rc<Pool>> {
        (0..n)
            .map(|i| {
                let cfg = crate::config::UpstreamConfig {
                    addr: format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                    authority: String::new(),
                    path: "/mcp".into(),
                    authorization: None,
                    pool_max_idle: 1,
                    pool_max_connections: 1,
                    pool_idle_timeout: std::time::Duration::from_secs(1),
                    weight: 1,
                    health: crate::config::HealthConfig {
                        kind: crate::config::ProbeKind::Off,
                        path: "/mcp".into(),
                        interval: std::time::Duration::from_secs(1),
                        timeout: std::time::Duration::from_secs(1),
                        healthy_threshold: 1,
                        unhealthy_threshold: 1,
                        breaker_failures: 1,
                        breaker_open: std::time::Duration::from_secs(1),
                        breaker_half_open_requests: 1,
                    },
                };
                let stats = Arc::new(ShardStats::new(0));
                Rc::new(Pool::new(cfg, std::time::Duration::from_secs(1), stats))
            })
            .collect()
    }

    fn all(_: usize) -> bool {
        true
    }

    #[test]
    fn unusable_upstreams_are_never_picked() {
        let p = pools(3);
        for strategy in [
            Strategy::RoundRobin,
            Strategy::LeastConnections,
            Strategy::Sticky,
        ] {
            let b = Balancer::new(strategy, vec![1, 1, 1]);
            let not_one = |i: usize| i != 1;
            assert!((0..300u32).all(|c| b.pick(&p, c, &[], &not_one) != Some(1)));
            assert_eq!(b.pick(&p, 7, &[0, 2], &not_one), None);
        }
    }

    #[test]
    fn weighted_round_robin_is_smooth_and_skips_tried() {
        let p = pools(3);
        let b = Balancer::new(Strategy::RoundRobin, vec![2, 1, 1]);
        let seq: Vec<usize> = (0..8).map(|_| b.pick(&p, 0, &[], &all).unwrap()).collect();
        // Interleaved, not 0,0,1,2: each cycle of 4 gives upstream 0 its two turns apart.
        assert_eq!(seq, [0, 1, 2, 0, 0, 1, 2, 0]);
        assert_ne!(b.pick(&p, 0, &[0], &all), Some(0));
        assert_eq!(b.pick(&p, 0, &[0, 1, 2], &all), None);
    }

    #[test]
    fn sticky_keeps_a_client_on_its_upstream_until_it_is_tried() {
        let p = pools(3);
        let b = Balancer::new(Strategy::Sticky, vec![1, 1, 1]);
        let home = b.pick(&p, 12345, &[], &all).unwrap();
        assert!((0..10).all(|_| b.pick(&p, 12345, &[], &all) == Some(home)));
        let next = b.pick(&p, 12345, &[home], &all).unwrap();
        assert_ne!(next, home);
        let spread: std::collections::HashSet<usize> = (0..300u32)
            .filter_map(|c| b.pick(&p, c, &[], &all))
            .collect();
        assert_eq!(spread.len(), 3);
    }
}
