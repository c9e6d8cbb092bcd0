//! The upstreams of one shard, behind one interface. The pipeline asks for the same few
//! operations whatever the kind: open a session (initialize), send a message in a session,
//! open the session's server stream (GET), end a session (DELETE), and a request of no session
//! (2026-07-28, or a sessionless server). Each answers with a `Source` of what the client gets:
//! a status with no body, one JSON message, an HTTP upstream's response to relay, or a stream
//! of events.
//!
//! The kinds: `http` (one or several Streamable HTTP servers, with `pool`, `balance` and
//! `health`; `era` carries 2026-07-28 requests to handshake-era ones) and `stdio` (child
//! processes). `federated` holds the pure logic of a route of several named servers (names,
//! merged answers, cursors, rewrites). A client session's upstream half is an `UpSession`.
//!
//! Invariants: no kind writes to the client, records a frame or touches the session table:
//! that is the pipeline's (`gateway`); a kind imports nothing above this layer. A `Source`
//! owns what it still needs (an upstream connection, a stdio ticket): dropping it releases
//! that (the connection closes, the request is cancelled in the child).

pub mod balance;
pub mod era;
pub mod federated;
pub mod health;
pub mod http;
pub mod pool;
pub mod stdio;

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use monoio::net::TcpStream;

use crate::admission::Gate;
use crate::codec::http::{ReadBuf, RequestHead, ResponseHead};
use crate::config::{Config, Limits, Timeouts};
use crate::error::{Error, Kind, Result};
use crate::mcp;
use crate::metrics::ShardStats;
use crate::sync::{Buffers, LocalEvent};

pub use balance::Balancer;
pub use pool::{Pool, UpConn};

/// One shard's upstreams: the HTTP pools, balancer, era bridges and health view, or the stdio
/// children; and the slice of the configuration they read.
pub struct Upstreams {
    pub shard: usize,
    pub stats: Arc<ShardStats>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// One connection pool per HTTP upstream (none for a stdio upstream).
    pub pools: Vec<Rc<Pool>>,
    /// Chooses among `pools` for new sessions and stateless requests.
    pub balancer: Balancer,
    /// Per HTTP upstream: its era toward 2026-07-28 clients, and the gateway's session on it
    /// when it speaks only the handshake era (`era`).
    pub bridges: Vec<era::Bridge>,
    /// This shard's view of the HTTP upstreams' health (breakers, probes).
    pub health: health::Health,
    /// The stdio upstream's children (absent for an HTTP upstream).
    pub stdio: Option<Rc<stdio::Host>>,
    /// The shard's read buffers (shared with its client connections).
    pub buffers: Rc<Buffers>,
    /// Set when the shard drains: probes and readers stop.
    pub shutdown: Rc<LocalEvent>,
}

/// What the shard lends its upstreams.
pub struct ShardParts {
    pub shard: usize,
    pub stats: Arc<ShardStats>,
    pub buffers: Rc<Buffers>,
    pub shutdown: Rc<LocalEvent>,
    /// Child processes of a stdio upstream, across shards.
    pub processes: Arc<Gate>,
}

impl Upstreams {
    /// Shard `parts.shard`'s upstreams as `config` names them.
    pub fn new(config: &Config, parts: ShardParts) -> Upstreams {
        let ShardParts {
            shard,
            stats,
            buffers,
            shutdown,
            processes,
        } = parts;
        let targets = match &config.upstream {
            crate::config::Upstream::Http(h) => &h.targets[..],
            crate::config::Upstream::Stdio(_) => &[],
        };
        let connect = config.timeouts.upstream_connect;
        let pools: Vec<Rc<Pool>> = targets
            .iter()
            .map(|u| Rc::new(Pool::new(u.clone(), connect, stats.clone())))
            .collect();
        let (balancer, stdio) = match &config.upstream {
            crate::config::Upstream::Http(h) => {
                let weights = h.targets.iter().map(|u| u.weight).collect();
                (Balancer::new(h.strategy, weights), None)
            }
            crate::config::Upstream::Stdio(cfg) => {
                let spawn = stdio::Spawn {
                    cfg: Rc::new(cfg.clone()),
                    stats: stats.clone(),
                    max_events: config.limits.max_pending_events,
                    max_line_bytes: config.limits.max_body_bytes,
                    write_timeout: config.timeouts.upstream_request,
                };
                let host = Rc::new(stdio::Host::new(spawn, processes));
                let rr = crate::config::Strategy::RoundRobin;
                (Balancer::new(rr, Vec::new()), Some(host))
            }
        };
        Upstreams {
            shard,
            health: health::Health::new(shard, targets),
            bridges: pools.iter().map(|_| era::Bridge::default()).collect(),
            pools,
            balancer,
            stdio,
            timeouts: config.timeouts.clone(),
            limits: config.limits.clone(),
            stats,
            buffers,
            shutdown,
        }
    }

    pub fn is_stdio(&self) -> bool {
        self.stdio.is_some()
    }
}

/// What the client gets, as an upstream kind answers it. The pipeline writes it.
pub enum Source {
    /// A status and no body (202 for notifications and responses; 200 for a stdio session's
    /// DELETE).
    Status(u16),
    /// One JSON-RPC message, answered `200 application/json`.
    Message(Bytes),
    /// An HTTP upstream's response: its head was read, its body is still to be relayed.
    Http(HttpAnswer),
    /// Events for an SSE answer, pulled by the pipeline's stream reader.
    Events(Events),
}

/// An HTTP upstream's response in flight.
pub struct HttpAnswer {
    pub head: ResponseHead,
    pub conn: UpConn,
    /// Holds the bytes read past the head.
    pub rb: ReadBuf,
    /// Which upstream answered.
    pub upstream: usize,
    /// Translates a handshake-era upstream's answer for a 2026-07-28 client (`era`).
    pub shape: Option<Box<era::Shaping>>,
}

/// A stream of SSE events from an upstream kind other than HTTP (whose SSE bodies the
/// pipeline reads itself).
pub enum Events {
    /// A stdio child's messages about one request, ending with its response.
    Request(stdio::RequestEvents),
    /// A stdio child's messages about no request: the session's GET stream.
    Session(stdio::SessionEvents),
}

impl Events {
    /// The next raw SSE event; `None` once the stream is over.
    pub async fn next(&mut self) -> Option<Bytes> {
        match self {
            Events::Request(r) => r.next().await,
            Events::Session(s) => s.next().await,
        }
    }
}

/// A client session's upstream half. A federated session (several servers) will hold one per
/// server.
#[derive(Debug, Clone)]
pub enum UpSession {
    /// A session on HTTP upstream `upstream`, named by the upstream's id (`None`: a
    /// sessionless server answered the initialize).
    Http {
        upstream: usize,
        sid: Option<Rc<str>>,
    },
    /// The stdio child serving the session.
    Stdio(Rc<stdio::Child>),
}

impl UpSession {
    pub fn sid(&self) -> Option<&Rc<str>> {
        match self {
            UpSession::Http { sid, .. } => sid.as_ref(),
            UpSession::Stdio(_) => None,
        }
    }

    /// The HTTP upstream's index (0 for stdio).
    pub fn index(&self) -> usize {
        match self {
            UpSession::Http { upstream, .. } => *upstream,
            UpSession::Stdio(_) => 0,
        }
    }

    pub fn child(&self) -> Option<&Rc<stdio::Child>> {
        match self {
            UpSession::Stdio(c) => Some(c),
            UpSession::Http { .. } => None,
        }
    }
}

/// One client request, as the upstream kinds need it.
pub struct Call<'a> {
    pub head: &'a RequestHead,
    pub body: &'a [u8],
    /// The request's one message (POST); `None` for GET and DELETE.
    pub msg: Option<&'a mcp::Message<'a>>,
    /// The client's socket, watched for a hang-up while the upstream thinks (`None`: not
    /// watched, e.g. initialize, whose session the pipeline ends if the client left).
    pub client: Option<&'a TcpStream>,
    /// The client's cell in the client table (the `sticky` balancer uses it).
    pub client_cell: u32,
    /// The header naming the authenticated subject upstream, and the name
    /// (`auth.forward_subject_header`); `None`: not sent.
    pub subject: Option<(&'a str, &'a str)>,
}

impl Upstreams {
    /// initialize: opens the upstream half of a new session. The session exists when the
    /// answer names one (`Some`); the caller holds the session permits.
    pub async fn open_session(
        self: &Rc<Self>,
        call: &Call<'_>,
    ) -> Result<(Source, Option<UpSession>)> {
        match &self.stdio {
            Some(host) => stdio::open_session(self, host, call).await,
            None => http::open_session(self, call).await,
        }
    }

    /// A POST in a session.
    pub async fn send(self: &Rc<Self>, to: &UpSession, call: &Call<'_>) -> Result<Source> {
        match to {
            UpSession::Stdio(child) => stdio::send(self, child, call).await,
            UpSession::Http { upstream, sid } => {
                http::send(self, call, Some(*upstream), sid.as_deref()).await
            }
        }
    }

    /// GET: the session's server stream.
    pub async fn open_stream(self: &Rc<Self>, to: &UpSession, call: &Call<'_>) -> Result<Source> {
        match to {
            UpSession::Stdio(child) => Ok(stdio::open_stream(child)),
            UpSession::Http { upstream, sid } => {
                http::send(self, call, Some(*upstream), sid.as_deref()).await
            }
        }
    }

    /// DELETE from the client. A session with no upstream id (a stdio child, which ends with
    /// the session, or a sessionless server) has nothing to end upstream: 200.
    pub async fn end_session(self: &Rc<Self>, to: &UpSession, call: &Call<'_>) -> Result<Source> {
        match to {
            UpSession::Http {
                upstream,
                sid: Some(sid),
            } => http::send(self, call, Some(*upstream), Some(sid)).await,
            _ => Ok(Source::Status(200)),
        }
    }

    /// A request of no session: 2026-07-28 (`stateless`), or a client of a sessionless server.
    pub async fn stateless(self: &Rc<Self>, call: &Call<'_>) -> Result<Source> {
        match &self.stdio {
            Some(host) => stdio::stateless(self, host, call).await,
            None => era::stateless(self, call).await,
        }
    }

    /// A POST or GET without a session, for a sessionless HTTP server (stdio needs a session).
    pub async fn sessionless(self: &Rc<Self>, call: &Call<'_>) -> Result<Source> {
        if self.is_stdio() {
            return Err(Error::new(Kind::SessionRequired, ""));
        }
        http::send(self, call, None, None).await
    }
}
