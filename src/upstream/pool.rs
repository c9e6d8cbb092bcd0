//! The shard's upstream HTTP connection pool: bounded (open and idle counts), LIFO keep-alive
//! reuse, idle timeout, and a liveness check before reuse.
//!
//! Invariant: an `UpConn` is either given back with `Pool::checkin` after a response was read to
//! its end, or dropped, which closes the socket. Both paths keep the open/idle gauges exact, so
//! no path (error, timeout, client gone) can leak a connection.

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
            match crate::timer::timeout(self.connect_timeout, TcpStream::connect(self.cfg.addr))
                .await
            {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    self.forget_open();
                    drop(guard);
                    return Err(Error::new(Kind::UpstreamConnect, e.to_string()));
                }
                None => {
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
