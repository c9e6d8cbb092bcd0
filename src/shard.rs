//! A shard's context: what one core's thread owns (its connections' state, the session table
//! (`session`) and its streams' buffers (`sse`), read buffers, its upstreams, recorder) and
//! what all shards share (`Shared`: config, bounds, mailboxes, stats). It imports no pipeline
//! code: the pipeline (`gateway`) takes it as its context, and the runtime (`runtime`) builds
//! it. The upstreams sit below it and get only their slice (`upstream::Upstreams`).
//! Nothing here takes a lock: a shard's state is touched by its own thread only.

pub mod session;
pub mod sse;

use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;
use monoio::net::TcpStream;

use crate::admission::{Gate, Handoff, Mailbox, MailboxRx, ShardMsg};
use crate::config::Config;
use crate::metrics::{gauge_add, inc, new_histogram, ShardStats};
use crate::sync::{Buffers, LocalEvent};
use crate::upstream::{ShardParts, Upstreams};
use session::Sessions;

/// A capacity-1 channel holding a shard's latest latency snapshot (both ends, so the shard can
/// replace a snapshot nobody collected).
pub type HistSlot = (Sender<Histogram<u64>>, Receiver<Histogram<u64>>);

/// State every thread can see. Everything here is immutable or atomic.
pub struct Shared {
    pub config: Config,
    pub connections: Gate,
    pub sessions: Gate,
    /// Per-client limits, shared by all shards without a lock.
    pub clients: crate::limits::ClientTable,
    /// Child processes of a stdio upstream, across shards.
    pub processes: Arc<Gate>,
    pub draining: AtomicBool,
    /// The degradation level (`degrade::Level`), set by the monitor thread.
    pub level: std::sync::atomic::AtomicU8,
    pub level_changes: std::sync::atomic::AtomicU64,
    /// Occupancy of the fullest bound, in thousandths, as last measured.
    pub occupancy_permille: std::sync::atomic::AtomicU64,
    pub stats: Vec<Arc<ShardStats>>,
    pub mailboxes: Vec<Mailbox>,
    /// Latest latency snapshot per shard (capacity 1; the shard replaces a stale one).
    pub hists: Vec<HistSlot>,
    /// Recording counters (shards' recorders and the persistence thread), when recording.
    pub tape: Option<TapeStats>,
    /// The upstream's name as a JSON string, for tape session records.
    pub upstream_json: String,
    /// Authentication: the `[auth]` slice, the issuer's keys, the JWKS fetcher's counters.
    pub auth: Arc<crate::auth::Auth>,
}

pub struct TapeStats {
    pub recorders: Vec<Arc<crate::tape::RecorderStats>>,
    pub persist: Arc<crate::tape::PersistStats>,
}

/// One shard's own state. Never leaves its thread.
pub struct Shard {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub stats: Arc<ShardStats>,
    pub sessions: RefCell<Sessions>,
    /// The shard's upstreams (HTTP pools, balancer, health, era bridges; or stdio children).
    pub up: Rc<Upstreams>,
    /// This shard's channel to the persistence core (absent when not recording).
    pub tape: Option<crate::tape::Recorder>,
    /// Frames waiting for room under the `block` policy (see `record`).
    pub backlog: RefCell<std::collections::VecDeque<crate::tape::Frame>>,
    pub shutdown: Rc<LocalEvent>,
    pub latency: RefCell<Histogram<u64>>,
    /// Client connections this shard currently serves.
    pub live: Cell<usize>,
    /// The shard's authenticator (with its token cache).
    pub auth: crate::auth::ShardAuth,
    buffers: Rc<Buffers>,
}

impl Shard {
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// A read buffer from the shard's cache, or a fresh one.
    pub fn take_buffer(&self) -> Vec<u8> {
        self.buffers.take()
    }

    /// Returns a buffer for reuse (the cache is bounded).
    pub fn give_buffer(&self, buf: Vec<u8>) {
        self.buffers.give(buf)
    }

    pub fn record_latency(&self, since: Instant) {
        let us = since.elapsed().as_micros().max(1) as u64;
        let _ = self.latency.borrow_mut().record(us);
    }
}

/// Builds the shared state; returns it with each shard's mailbox receiver.
pub fn shared(
    config: Config,
    tape: Option<TapeStats>,
    auth: Arc<crate::auth::Auth>,
) -> (Arc<Shared>, Vec<MailboxRx>) {
    let n = config.shards;
    let mut mailboxes = Vec::with_capacity(n);
    let mut rxs = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = crate::admission::mailbox(config.limits.handoff_queue_depth);
        mailboxes.push(tx);
        rxs.push(rx);
    }
    let http_upstreams = config.http_targets();
    let shared = Shared {
        connections: Gate::new(config.limits.max_connections),
        sessions: Gate::new(config.limits.max_sessions),
        clients: crate::limits::ClientTable::new(
            config.limits.clients,
            crate::mcp::random_secret() as u64,
        ),
        processes: Arc::new(Gate::new(config.max_stdio_processes())),
        draining: AtomicBool::new(false),
        level: std::sync::atomic::AtomicU8::new(0),
        level_changes: std::sync::atomic::AtomicU64::new(0),
        occupancy_permille: std::sync::atomic::AtomicU64::new(0),
        stats: (0..n)
            .map(|i| {
                let servers = if config.is_federated() {
                    config.servers.len()
                } else {
                    0
                };
                Arc::new(ShardStats::with_upstreams(i, http_upstreams).with_servers(servers))
            })
            .collect(),
        hists: (0..n).map(|_| crossbeam_channel::bounded(1)).collect(),
        mailboxes,
        upstream_json: serde_json::to_string(&config.upstream.describe()).unwrap_or_default(),
        config,
        tape,
        auth,
    };
    (Arc::new(shared), rxs)
}

impl Shard {
    /// Shard `id`'s context: its slice of the shared state, its session table, its upstreams
    /// and its recorder.
    pub fn new(id: usize, shared: Arc<Shared>, tape: Option<crate::tape::Recorder>) -> Rc<Shard> {
        let stats = shared.stats[id].clone();
        let buffers = Rc::new(Buffers::default());
        let shutdown = Rc::new(LocalEvent::default());
        let parts = ShardParts {
            shard: id,
            stats: stats.clone(),
            buffers: buffers.clone(),
            shutdown: shutdown.clone(),
            processes: shared.processes.clone(),
        };
        let up = Rc::new(Upstreams::new(&shared.config, parts));
        let lifetimes = session::Lifetimes {
            idle: shared.config.timeouts.session_idle,
            max_age: shared.config.timeouts.session_max_age,
        };
        let mut sessions = Sessions::new(id as u8, lifetimes);
        if let Some(c) = &shared.config.cluster {
            sessions = sessions
                .keep_ended(c.max_ended_ids)
                .forget_sealed_after(c.forget_idle);
        }
        Rc::new(Shard {
            id,
            stats,
            sessions: RefCell::new(sessions),
            up,
            tape,
            backlog: RefCell::new(std::collections::VecDeque::new()),
            shutdown,
            latency: RefCell::new(new_histogram()),
            live: Cell::new(0),
            auth: crate::auth::ShardAuth::new(shared.auth.clone()),
            buffers,
            shared,
        })
    }
}

/// A client connection with its admission permit. Dropping it closes the socket and releases
/// the permit, unless it was handed to another shard.
pub struct ClientConn {
    pub stream: TcpStream,
    pub rb: crate::codec::http::ReadBuf,
    shard: Rc<Shard>,
    handed_off: bool,
    /// The client's cell in the shared client table, once looked up.
    client: Cell<Option<u32>>,
    /// The PROXY protocol header's client address, once read (`[server] proxy_protocol`).
    proxy: Cell<Option<crate::admission::Proxy>>,
}

impl ClientConn {
    /// Wraps a connection that already holds a global connection permit.
    pub fn new(shard: &Rc<Shard>, stream: TcpStream, buf: Vec<u8>) -> ClientConn {
        shard.live.set(shard.live.get() + 1);
        gauge_add(&shard.stats.connections, 1);
        ClientConn {
            stream,
            rb: crate::codec::http::ReadBuf::from_vec(buf),
            shard: shard.clone(),
            handed_off: false,
            client: Cell::new(None),
            proxy: Cell::new(None),
        }
    }

    /// Whether the connection's PROXY protocol header was read.
    pub fn proxy_read(&self) -> bool {
        self.proxy.get().is_some()
    }

    /// Records what the connection's PROXY protocol header named.
    pub fn set_proxy(&self, client: crate::admission::Proxy) {
        self.proxy.set(Some(client));
    }

    /// The client's address: the PROXY protocol header's, else the connection's peer.
    pub fn client_addr(&self) -> Option<std::net::SocketAddr> {
        match self.proxy.get() {
            Some(Some(addr)) => Some(addr),
            _ => self.stream.peer_addr().ok(),
        }
    }

    /// The client's cell in the shared client table (by IP address; looked up once).
    pub fn client_cell(&self) -> u32 {
        if let Some(c) = self.client.get() {
            return c;
        }
        let ip = self
            .client_addr()
            .map(|a| a.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let c = self.shard.shared.clients.cell(ip);
        self.client.set(Some(c));
        c
    }

    /// Makes `cell` the client's cell for what follows on this connection: with
    /// authentication, the subject's, in place of the address's.
    pub fn set_client_cell(&self, cell: u32) {
        self.client.set(Some(cell));
    }

    /// Gives the connection to shard `owner`. On failure the connection stays here.
    pub fn hand_off(mut self, owner: usize) -> Result<(), Box<ClientConn>> {
        // SAFETY: the fd belongs to `self.stream`, which stays open for the whole borrow; the
        // duplicate made here is owned independently.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.stream.as_raw_fd()) };
        let fd = match borrowed.try_clone_to_owned() {
            Ok(fd) => fd,
            Err(_) => return Err(Box::new(self)),
        };
        let buffered = std::mem::take(&mut self.rb).into_vec();
        let msg = ShardMsg::Handoff(Handoff {
            fd,
            buffered,
            client: self.proxy.get(),
        });
        match self.shard.shared.mailboxes[owner].try_send(msg) {
            Ok(()) => {
                inc(&self.shard.stats.handoffs_sent);
                self.handed_off = true;
                Ok(())
            }
            Err(ShardMsg::Handoff(h)) => {
                // Put the bytes back; the duplicate fd closes here.
                self.rb = crate::codec::http::ReadBuf::from_vec(h.buffered);
                Err(Box::new(self))
            }
        }
    }
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        self.shard.live.set(self.shard.live.get() - 1);
        gauge_add(&self.shard.stats.connections, -1);
        if !self.handed_off {
            self.shard.shared.connections.release();
        }
        let buf = std::mem::take(&mut self.rb).into_vec();
        self.shard.give_buffer(buf);
    }
}

/// Signals every shard to drain.
pub fn begin_shutdown(shared: &Shared) {
    if !shared.draining.swap(true, Ordering::AcqRel) {
        for m in &shared.mailboxes {
            m.close();
        }
    }
}
