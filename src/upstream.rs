//! The upstreams of one shard, behind one interface. The pipeline asks for the same few
//! operations whatever the kind: open a session (initialize), send a message in a session,
//! open the session's server stream (GET), end a session (DELETE), and a request of no session
//! (2026-07-28, or a sessionless server). Each answers with a `Source` of what the client gets:
//! a status with no body, one JSON message, an HTTP upstream's response to relay, or a stream
//! of events.
//!
//! The kinds: `http` (one or several Streamable HTTP servers, with `pool`, `balance` and
//! `health`; `era` carries 2026-07-28 requests to handshake-era ones) and `stdio` (child
//! processes, or a legacy HTTP+SSE server's event streams: `stdio::sse`). `federated` holds the pure logic of a route of several named servers (names,
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
    /// With `[[server]]`: the named servers and the routes over them (this `Upstreams` then
    /// has no pools or children of its own).
    pub federation: Option<Rc<federated::Federation>>,
    /// The shard's read buffers (shared with its client connections).
    pub buffers: Rc<Buffers>,
    /// Set when the shard drains: probes and readers stop.
    pub shutdown: Rc<LocalEvent>,
}

/// What the shard lends its upstreams.
#[derive(Clone)]
pub struct ShardParts {
    pub shard: usize,
    pub stats: Arc<ShardStats>,
    pub buffers: Rc<Buffers>,
    pub shutdown: Rc<LocalEvent>,
    /// Child processes of a stdio upstream, across shards.
    pub processes: Arc<Gate>,
}

impl Upstreams {
    /// Shard `parts.shard`'s upstreams as `config` names them: its one upstream, or, with
    /// `[[server]]`, the federation of the named servers (each an `Upstreams` of its own).
    pub fn new(config: &Config, parts: ShardParts) -> Upstreams {
        if !config.is_federated() {
            return Upstreams::of(config, &config.upstream, parts, 0);
        }
        let mut gauges = 0;
        let servers = config
            .servers
            .iter()
            .map(|s| {
                let up = Upstreams::of(config, &s.upstream, parts.clone(), gauges);
                gauges += up.pools.len();
                Rc::new(up)
            })
            .collect();
        let none = crate::config::Upstream::Http(crate::config::HttpUpstreams {
            targets: Vec::new(),
            strategy: crate::config::Strategy::RoundRobin,
        });
        let mut up = Upstreams::of(config, &none, parts, 0);
        up.federation = Some(Rc::new(federated::Federation::new(config, servers)));
        up
    }

    /// The upstreams of one server (`upstream`), their health gauges from `gauges` on.
    fn of(
        config: &Config,
        upstream: &crate::config::Upstream,
        parts: ShardParts,
        gauges: usize,
    ) -> Upstreams {
        let ShardParts {
            shard,
            stats,
            buffers,
            shutdown,
            processes,
        } = parts;
        let targets = match upstream {
            crate::config::Upstream::Http(h) => &h.targets[..],
            crate::config::Upstream::Stdio(_) => &[],
        };
        let connect = config.timeouts.upstream_connect;
        let pools: Vec<Rc<Pool>> = targets
            .iter()
            .map(|u| Rc::new(Pool::new(u.clone(), connect, stats.clone())))
            .collect();
        let (balancer, stdio) = match upstream {
            crate::config::Upstream::Http(h) => {
                let weights = h.targets.iter().map(|u| u.weight).collect();
                (Balancer::new(h.strategy, weights), None)
            }
            crate::config::Upstream::Stdio(cfg) => {
                let sse = cfg.sse.as_ref().map(|target| {
                    let pool = Rc::new(Pool::new((**target).clone(), connect, stats.clone()));
                    let timeout = config.timeouts.upstream_request;
                    let max_event = config.limits.max_body_bytes;
                    Rc::new(stdio::sse::Server::new(pool, timeout, max_event))
                });
                let spawn = stdio::Spawn {
                    cfg: Rc::new(cfg.clone()),
                    stats: stats.clone(),
                    max_events: config.limits.max_pending_events,
                    max_line_bytes: config.limits.max_body_bytes,
                    write_timeout: config.timeouts.upstream_request,
                };
                let host = Rc::new(stdio::Host::new(spawn, processes, sse));
                let rr = crate::config::Strategy::RoundRobin;
                (Balancer::new(rr, Vec::new()), Some(host))
            }
        };
        Upstreams {
            shard,
            health: health::Health::at(shard, targets, gauges),
            federation: None,
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

    /// Every request needs a session (and one message a POST): a stdio upstream, or a
    /// federation (whose requests go to the servers its session opened).
    pub fn needs_session(&self) -> bool {
        self.stdio.is_some() || self.federation.is_some()
    }

    /// The server names of the route at `path`, in route order, as a JSON array (what a tape's
    /// session start records); `None` when not federated or no route is there.
    pub fn route_servers_json(&self, path: &str) -> Option<&str> {
        self.federation.as_ref()?.servers_json(path)
    }

    /// Server `i`'s upstreams (`each`); itself when not federated.
    pub fn server(self: &Rc<Self>, i: usize) -> Rc<Upstreams> {
        match &self.federation {
            Some(f) => f.servers.get(i).cloned().unwrap_or_else(|| self.clone()),
            None => self.clone(),
        }
    }

    /// This shard's upstreams of every server: itself, or each federated server's.
    pub fn each(self: &Rc<Self>) -> Vec<Rc<Upstreams>> {
        match &self.federation {
            Some(f) => f.servers.clone(),
            None => vec![self.clone()],
        }
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
    /// Rewrites the answer on its way to the client (`Shape`).
    pub shape: Option<Box<Shape>>,
    /// A federated server's answer: which server (`Upstreams::each`) and its session id
    /// there, so its stream is reopened on that server (`None`: the session's own upstream).
    pub member: Option<(usize, Rc<str>)>,
}

/// How an upstream's answer is rewritten on its way to the client, event by event (SSE) or
/// whole (JSON).
pub enum Shape {
    /// A handshake-era upstream's answer, for a 2026-07-28 client (`era`).
    Era(era::Shaping),
    /// A federated server's answer: its own requests get ids that name it (`federated`).
    Tag(federated::Tag),
}

impl Shape {
    /// One SSE event as the client gets it; `None` drops it.
    pub fn event(&self, raw: Bytes) -> Option<Bytes> {
        match self {
            Shape::Era(s) => s.event(raw),
            Shape::Tag(t) => t.event(raw),
        }
    }

    /// A whole JSON answer as the client gets it; `None`: unchanged.
    pub fn body(&self, body: &[u8]) -> Option<Vec<u8>> {
        match self {
            Shape::Era(s) => s.body(body),
            Shape::Tag(t) => t.body(body),
        }
    }
}

/// A stream of SSE events from an upstream kind other than HTTP (whose SSE bodies the
/// pipeline reads itself).
pub enum Events {
    /// A stdio child's messages about one request, ending with its response.
    Request(stdio::RequestEvents),
    /// A stdio child's messages about no request: the session's GET stream.
    Session(stdio::SessionEvents),
    /// A federated server's events, its own requests tagged (`federated::Tag`).
    Tagged(Box<Events>, federated::Tag),
    /// A federated session's server streams, merged (`federated::stream`).
    Merged(federated::Merged),
}

impl Events {
    /// The member of a federated route (its index among the route's servers) the last event
    /// came from, when one did (what the pipeline records with it).
    pub fn member(&self) -> Option<usize> {
        match self {
            Events::Tagged(_, tag) => Some(tag.member),
            Events::Merged(m) => m.last_member(),
            Events::Request(_) | Events::Session(_) => None,
        }
    }
}

impl Events {
    /// The next raw SSE event; `None` once the stream is over.
    pub async fn next(&mut self) -> Option<Bytes> {
        match self {
            Events::Request(r) => r.next().await,
            Events::Session(s) => s.next().await,
            Events::Merged(m) => m.next().await,
            Events::Tagged(inner, tag) => loop {
                let raw = Box::pin(inner.next()).await?;
                if let Some(ev) = tag.event(raw) {
                    break Some(ev);
                }
            },
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
    /// A session on a federated route: one upstream half per server of the route.
    Federated(Rc<federated::FedSession>),
}

/// One HTTP upstream session of a session that can move between nodes: the server (0 unless
/// federated), the upstream's index among that server's, its `Mcp-Session-Id`.
pub type Part = (usize, usize, Option<Rc<str>>);

impl UpSession {
    pub fn sid(&self) -> Option<&Rc<str>> {
        match self {
            UpSession::Http { sid, .. } => sid.as_ref(),
            UpSession::Stdio(_) | UpSession::Federated(_) => None,
        }
    }

    /// The HTTP upstream's index (0 for stdio and federated sessions).
    pub fn index(&self) -> usize {
        match self {
            UpSession::Http { upstream, .. } => *upstream,
            UpSession::Stdio(_) | UpSession::Federated(_) => 0,
        }
    }

    pub fn child(&self) -> Option<&Rc<stdio::Child>> {
        match self {
            UpSession::Stdio(c) => Some(c),
            UpSession::Http { .. } | UpSession::Federated(_) => None,
        }
    }

    /// What another node needs to serve this session, one part per server: `None` when it
    /// cannot move (a stdio child lives here).
    pub fn parts(&self) -> Option<Vec<Part>> {
        match self {
            UpSession::Http { upstream, sid } => Some(vec![(0, *upstream, sid.clone())]),
            UpSession::Stdio(_) => None,
            UpSession::Federated(f) => f
                .members()
                .map(|(server, m)| match m {
                    UpSession::Http { upstream, sid } => Some((server, *upstream, sid.clone())),
                    _ => None,
                })
                .collect(),
        }
    }

    /// Ends what the session holds on this shard: its stdio children (which end with it).
    pub fn end_local(&self) {
        match self {
            UpSession::Stdio(c) => c.end(),
            UpSession::Federated(f) => f.members().for_each(|(_, m)| m.end_local()),
            UpSession::Http { .. } => {}
        }
    }
}

/// Ends `session` upstream in the background, within `timeout`: its HTTP upstream sessions
/// (a federated session's on each server). Returns the tasks, for the caller to await
/// (shutdown) or not.
pub fn end_quietly(
    up: &Rc<Upstreams>,
    session: &UpSession,
    timeout: std::time::Duration,
) -> Vec<monoio::task::JoinHandle<()>> {
    match session {
        UpSession::Http {
            upstream,
            sid: Some(sid),
        } => vec![monoio::spawn(http::end_quietly(
            up.clone(),
            sid.clone(),
            *upstream,
            timeout,
        ))],
        UpSession::Federated(f) => {
            let Some(fed) = &up.federation else {
                return Vec::new();
            };
            f.members()
                .flat_map(|(server, m)| end_quietly(&fed.servers[server], m, timeout))
                .collect()
        }
        _ => Vec::new(),
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
    /// Set by a federated route once it chose the one server the request goes to: that
    /// server's index among the route's (the pipeline records it with the request and its
    /// answer). A cell because the kinds take `&Call`; set before the send, so a failed send
    /// still names it. Stays `None` when no one server was chosen (the gateway answered, or
    /// every server got the message).
    pub routed_to: std::cell::Cell<Option<usize>>,
}

impl Upstreams {
    /// initialize: opens the upstream half of a new session. The session exists when the
    /// answer names one (`Some`); the caller holds the session permits.
    pub async fn open_session(
        self: &Rc<Self>,
        call: &Call<'_>,
    ) -> Result<(Source, Option<UpSession>)> {
        if let Some(fed) = &self.federation {
            // Boxed: a federation's servers are `Upstreams` too (the future would hold itself).
            return Box::pin(federated::open_session(fed, call)).await;
        }
        match &self.stdio {
            Some(host) => stdio::open_session(self, host, call).await,
            None => http::open_session(self, call).await,
        }
    }

    /// The upstream half of a session another node began (its `parts`), on the route at
    /// `path`; `None` when this node cannot serve them (another route's servers, an upstream
    /// it does not have, a stdio upstream).
    pub fn adopt(&self, path: &str, parts: Vec<Part>) -> Option<UpSession> {
        if let Some(fed) = &self.federation {
            return federated::adopt(fed, path, parts);
        }
        match parts.as_slice() {
            [(0, upstream, sid)] if !self.is_stdio() && *upstream < self.pools.len() => {
                Some(UpSession::Http {
                    upstream: *upstream,
                    sid: sid.clone(),
                })
            }
            _ => None,
        }
    }

    /// A POST in a session.
    pub async fn send(self: &Rc<Self>, to: &UpSession, call: &Call<'_>) -> Result<Source> {
        match to {
            UpSession::Stdio(child) => stdio::send(self, child, call).await,
            UpSession::Http { upstream, sid } => {
                http::send(self, call, Some(*upstream), sid.as_deref()).await
            }
            UpSession::Federated(s) => Box::pin(federated::send(self.federated()?, s, call)).await,
        }
    }

    fn federated(&self) -> Result<&Rc<federated::Federation>> {
        self.federation
            .as_ref()
            .ok_or_else(|| Error::new(Kind::Internal, "a federated session without servers"))
    }

    /// GET: the session's server stream.
    pub async fn open_stream(self: &Rc<Self>, to: &UpSession, call: &Call<'_>) -> Result<Source> {
        match to {
            UpSession::Stdio(child) => Ok(stdio::open_stream(child)),
            UpSession::Http { upstream, sid } => {
                http::send(self, call, Some(*upstream), sid.as_deref()).await
            }
            UpSession::Federated(s) => {
                Box::pin(federated::open_stream(self.federated()?, s, call)).await
            }
        }
    }

    /// GET: a session stream of HTTP upstream session `to` continued from the upstream's own
    /// event id `after` (one a gateway event id carried). `None` for other sessions.
    pub async fn resume_stream(
        self: &Rc<Self>,
        to: &UpSession,
        call: &Call<'_>,
        after: &[u8],
    ) -> Option<Result<Source>> {
        let UpSession::Http {
            upstream,
            sid: Some(sid),
        } = to
        else {
            return None;
        };
        let to = (Some(*upstream), Some(&**sid));
        Some(http::send_after(self, call, to, Some(after)).await)
    }

    /// DELETE from the client. A session with no upstream id (a stdio child, which ends with
    /// the session, or a sessionless server) has nothing to end upstream: 200.
    pub async fn end_session(self: &Rc<Self>, to: &UpSession, call: &Call<'_>) -> Result<Source> {
        match to {
            UpSession::Http {
                upstream,
                sid: Some(sid),
            } => http::send(self, call, Some(*upstream), Some(sid)).await,
            UpSession::Federated(s) => {
                Box::pin(federated::end_session(self.federated()?, s, call)).await
            }
            _ => Ok(Source::Status(200)),
        }
    }

    /// A request of no session: 2026-07-28 (`stateless`), or a client of a sessionless server.
    pub async fn stateless(self: &Rc<Self>, call: &Call<'_>) -> Result<Source> {
        if let Some(fed) = &self.federation {
            return Box::pin(federated::stateless(fed, call)).await;
        }
        match &self.stdio {
            Some(host) => stdio::stateless(self, host, call).await,
            None => era::stateless(self, call).await,
        }
    }

    /// A POST or GET without a session, for a sessionless HTTP server (stdio needs a session).
    pub async fn sessionless(self: &Rc<Self>, call: &Call<'_>) -> Result<Source> {
        if self.is_stdio() || self.federation.is_some() {
            return Err(Error::new(Kind::SessionRequired, ""));
        }
        http::send(self, call, None, None).await
    }
}
