//! Shards: one thread per core, pinned with core_affinity, each running its own monoio runtime
//! (io_uring, or epoll when io_uring is missing or its ring cannot be built). A shard owns its
//! connections, session table, buffers and upstream pool; the only ways in from outside are its
//! listener and its mailbox.
//!
//! Lifecycle of a shard: Running → Draining (listener closed, idle connections closed, in-flight
//! requests finish within the drain timeout) → sessions ended upstream → thread exits.

use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;
use monoio::net::{TcpListener, TcpStream};

use crate::admission::{Gate, Handoff, Mailbox, MailboxRx, ShardMsg};
use crate::config::{Config, Driver};
use crate::metrics::{gauge_add, inc, new_histogram, ShardStats};
use crate::session::Sessions;
use crate::sync::LocalEvent;
use crate::upstream::Pool;

/// Most read buffers a shard keeps for reuse (256 × 16 KiB = 4 MiB per shard at most).
const BUFFER_CACHE_MAX: usize = 256;
/// io_uring submission queue entries per shard.
const RING_ENTRIES: u32 = 4096;
/// How often a shard publishes its latency snapshot and sweeps pools and sessions.
const TICK: Duration = Duration::from_secs(1);

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
    pub processes: Gate,
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
    /// One connection pool per HTTP upstream (none for a stdio upstream).
    pub pools: Vec<Rc<Pool>>,
    /// Chooses among `pools` for new sessions and stateless requests.
    pub balancer: crate::upstream::Balancer,
    /// Per HTTP upstream: its era toward 2026-07-28 clients, and the gateway's session on it
    /// when it speaks only the handshake era (`era`).
    pub bridges: Vec<crate::era::Bridge>,
    /// This shard's view of the HTTP upstreams' health (breakers, probes).
    pub health: crate::health::Health,
    /// The stdio upstream's children (absent for an HTTP upstream).
    pub stdio: Option<Rc<crate::stdio::Host>>,
    /// This shard's channel to the persistence core (absent when not recording).
    pub tape: Option<crate::tape::Recorder>,
    /// Frames waiting for room under the `block` policy (see `record`).
    pub backlog: RefCell<std::collections::VecDeque<crate::tape::Frame>>,
    pub shutdown: LocalEvent,
    pub latency: RefCell<Histogram<u64>>,
    /// Client connections this shard currently serves.
    pub live: Cell<usize>,
    buffers: RefCell<Vec<Vec<u8>>>,
}

impl Shard {
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// A read buffer from the shard's cache, or a fresh one.
    pub fn take_buffer(&self) -> Vec<u8> {
        self.buffers
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(crate::codec::http::READ_BUF_BYTES))
    }

    /// Returns a buffer for reuse; oversized ones are freed so the cache stays bounded.
    pub fn give_buffer(&self, mut buf: Vec<u8>) {
        let mut cache = self.buffers.borrow_mut();
        if cache.len() < BUFFER_CACHE_MAX && buf.capacity() == crate::codec::http::READ_BUF_BYTES {
            buf.clear();
            cache.push(buf);
        }
    }

    pub fn record_latency(&self, since: Instant) {
        let us = since.elapsed().as_micros().max(1) as u64;
        let _ = self.latency.borrow_mut().record(us);
    }
}

/// Builds the shared state; returns it with each shard's mailbox receiver.
pub fn shared(config: Config, tape: Option<TapeStats>) -> (Arc<Shared>, Vec<MailboxRx>) {
    let n = config.shards;
    let mut mailboxes = Vec::with_capacity(n);
    let mut rxs = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = crate::admission::mailbox(config.limits.handoff_queue_depth);
        mailboxes.push(tx);
        rxs.push(rx);
    }
    let http_upstreams = match &config.upstream {
        crate::config::Upstream::Http(h) => h.targets.len(),
        crate::config::Upstream::Stdio(_) => 0,
    };
    let shared = Shared {
        connections: Gate::new(config.limits.max_connections),
        sessions: Gate::new(config.limits.max_sessions),
        clients: crate::limits::ClientTable::new(
            config.limits.clients,
            crate::mcp::random_secret() as u64,
        ),
        processes: Gate::new(match &config.upstream {
            crate::config::Upstream::Stdio(s) => s.max_processes,
            crate::config::Upstream::Http(_) => 0,
        }),
        draining: AtomicBool::new(false),
        level: std::sync::atomic::AtomicU8::new(0),
        level_changes: std::sync::atomic::AtomicU64::new(0),
        occupancy_permille: std::sync::atomic::AtomicU64::new(0),
        stats: (0..n)
            .map(|i| Arc::new(ShardStats::with_upstreams(i, http_upstreams)))
            .collect(),
        hists: (0..n).map(|_| crossbeam_channel::bounded(1)).collect(),
        mailboxes,
        upstream_json: serde_json::to_string(&config.upstream.describe()).unwrap_or_default(),
        config,
        tape,
    };
    (Arc::new(shared), rxs)
}

/// Binds the listen address once per shard with SO_REUSEPORT, so the kernel spreads accepted
/// connections across shards. Port 0 is resolved by the first bind and reused by the rest.
pub fn bind_listeners(config: &Config) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut addr = config.listen;
    let mut out = Vec::with_capacity(config.shards);
    for _ in 0..config.shards {
        let domain = socket2::Domain::for_address(addr);
        let sock =
            socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        sock.set_reuse_address(true)?;
        sock.set_reuse_port(true)?;
        sock.set_nonblocking(true)?;
        sock.bind(&addr.into())?;
        sock.listen(config.listen_backlog.min(i32::MAX as u32) as i32)?;
        let l: std::net::TcpListener = sock.into();
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// Starts every shard thread. Each returns when its drain is complete.
pub fn spawn_shards(
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    rxs: Vec<MailboxRx>,
    recorders: Vec<crate::tape::Recorder>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut handles = Vec::new();
    let mut recorders = recorders.into_iter();
    for (id, (listener, rx)) in listeners.into_iter().zip(rxs).enumerate() {
        let recorder = recorders.next();
        let shared = shared.clone();
        let core = if cores.is_empty() {
            None
        } else {
            Some(cores[id % cores.len()])
        };
        let h = std::thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        log::warn!("shard {id}: could not pin to core {}", core.id);
                    }
                }
                // A shard that panics would silently take its connections and sessions with it:
                // stop the whole process loudly instead, so the supervisor restarts it.
                let run =
                    std::panic::AssertUnwindSafe(|| run_shard(id, shared, listener, rx, recorder));
                if std::panic::catch_unwind(run).is_err() {
                    log::error!("shard {id} panicked; aborting the process");
                    std::process::abort();
                }
            })?;
        handles.push(h);
    }
    Ok(handles)
}

fn run_shard(
    id: usize,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    rx: MailboxRx,
    recorder: Option<crate::tape::Recorder>,
) {
    let driver = shared.config.driver;
    let main = move || shard_main(id, shared, listener, rx, recorder);
    if driver != Driver::Legacy {
        let why = if monoio::utils::detect_uring() {
            match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(RING_ENTRIES)
                .enable_timer()
                .build()
            {
                Ok(mut rt) => {
                    log::info!("shard {id}: io_uring driver");
                    rt.block_on(main());
                    return;
                }
                Err(e) => format!("building the io_uring ring failed: {e}"),
            }
        } else {
            "io_uring is not available on this kernel".to_string()
        };
        if driver == Driver::Uring {
            log::error!("shard {id}: --driver uring requested but {why}");
            std::process::exit(1);
        }
        log::warn!("shard {id}: falling back to the epoll driver: {why}");
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut rt) => {
            log::info!("shard {id}: epoll driver");
            rt.block_on(main());
        }
        Err(e) => {
            log::error!("shard {id}: cannot build a runtime: {e}");
            std::process::exit(1);
        }
    }
}

async fn shard_main(
    id: usize,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    rx: MailboxRx,
    tape: Option<crate::tape::Recorder>,
) {
    let stats = shared.stats[id].clone();
    let health = match &shared.config.upstream {
        crate::config::Upstream::Http(h) => crate::health::Health::new(id, &h.targets),
        crate::config::Upstream::Stdio(_) => crate::health::Health::new(id, &[]),
    };
    let (pools, balancer, stdio) = match &shared.config.upstream {
        crate::config::Upstream::Http(h) => {
            let pools = h
                .targets
                .iter()
                .map(|u| {
                    let connect = shared.config.timeouts.upstream_connect;
                    Rc::new(Pool::new(u.clone(), connect, stats.clone()))
                })
                .collect();
            let weights = h.targets.iter().map(|u| u.weight).collect();
            let balancer = crate::upstream::Balancer::new(h.strategy, weights);
            (pools, balancer, None)
        }
        crate::config::Upstream::Stdio(cfg) => {
            let spawn = crate::stdio::Spawn {
                cfg: Rc::new(cfg.clone()),
                stats: stats.clone(),
                max_events: shared.config.limits.max_pending_events,
                max_line_bytes: shared.config.limits.max_body_bytes,
                write_timeout: shared.config.timeouts.upstream_request,
            };
            let host = crate::stdio::Host::new(spawn, shared.clone());
            let balancer =
                crate::upstream::Balancer::new(crate::config::Strategy::RoundRobin, Vec::new());
            (Vec::new(), balancer, Some(Rc::new(host)))
        }
    };
    let shard = Rc::new(Shard {
        id,
        stats,
        sessions: RefCell::new(Sessions::new(
            id as u8,
            crate::session::Lifetimes {
                idle: shared.config.timeouts.session_idle,
                max_age: shared.config.timeouts.session_max_age,
            },
        )),
        bridges: pools
            .iter()
            .map(|_| crate::era::Bridge::default())
            .collect(),
        pools,
        balancer,
        health,
        stdio,
        tape,
        backlog: RefCell::new(std::collections::VecDeque::new()),
        shutdown: LocalEvent::default(),
        latency: RefCell::new(new_histogram()),
        live: Cell::new(0),
        buffers: RefCell::new(Vec::new()),
        shared,
    });
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("shard {id}: cannot register listener: {e}");
            std::process::exit(1);
        }
    };
    if let Some(host) = &shard.stdio {
        host.refill();
    }
    monoio::spawn(mailbox_loop(shard.clone(), rx));
    monoio::spawn(tick_loop(shard.clone()));
    for i in 0..shard.pools.len() {
        monoio::spawn(crate::health::probe_loop(shard.clone(), i));
    }
    accept_loop(&shard, &listener).await;
    drop(listener);
    drain(&shard).await;
}

async fn accept_loop(shard: &Rc<Shard>, listener: &TcpListener) {
    loop {
        let canceller = monoio::io::Canceller::new();
        let accept = listener.cancelable_accept(canceller.handle());
        let mut accept = std::pin::pin!(accept);
        let stop = monoio::select! {
            r = &mut accept => Some(r),
            _ = shard.shutdown.wait() => None,
        };
        let result = match stop {
            Some(r) => r,
            None => {
                let _ = canceller.cancel();
                // An accept that raced the cancel still gets its answer (503, shutting down).
                if let Ok((stream, _)) = accept.await {
                    admit(shard, stream);
                }
                return;
            }
        };
        match result {
            Ok((stream, _)) => admit(shard, stream),
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                log::warn!("shard {}: accept failed: {e}", shard.id);
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Admits or rejects a freshly accepted connection.
fn admit(shard: &Rc<Shard>, stream: TcpStream) {
    inc(&shard.stats.connections_accepted);
    let _ = stream.set_nodelay(true);
    if shard.shutdown.is_set() {
        shard.stats.count_rejection("shutting_down");
        monoio::spawn(crate::proxy::reject(
            shard.clone(),
            stream,
            crate::error::Kind::ShuttingDown,
        ));
        return;
    }
    if !shard.shared.connections.try_acquire() {
        shard.stats.count_rejection("connections");
        monoio::spawn(crate::proxy::reject(
            shard.clone(),
            stream,
            crate::error::Kind::Overloaded("connections"),
        ));
        return;
    }
    let conn = ClientConn::new(shard, stream, shard.take_buffer());
    monoio::spawn(crate::proxy::serve(shard.clone(), conn));
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
        }
    }

    /// The client's cell in the shared client table (by IP address; looked up once).
    pub fn client_cell(&self) -> u32 {
        if let Some(c) = self.client.get() {
            return c;
        }
        let ip = self
            .stream
            .peer_addr()
            .map(|a| a.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let c = self.shard.shared.clients.cell(ip);
        self.client.set(Some(c));
        c
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
        let msg = ShardMsg::Handoff(Handoff { fd, buffered });
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

async fn mailbox_loop(shard: Rc<Shard>, rx: MailboxRx) {
    while let Some(msg) = rx.recv().await {
        match msg {
            ShardMsg::Handoff(h) => adopt(&shard, h),
        }
    }
    // Closed: the process is shutting down. Serve what was already handed over.
    while let Some(ShardMsg::Handoff(h)) = rx.try_recv() {
        adopt(&shard, h);
    }
    if !shard.shutdown.is_set() {
        log::info!("shard {}: shutdown requested, draining", shard.id);
        shard.shutdown.set();
    }
}

/// Takes over a connection handed over by another shard.
fn adopt(shard: &Rc<Shard>, h: Handoff) {
    inc(&shard.stats.handoffs_received);
    let std_stream = std::net::TcpStream::from(h.fd);
    if let Err(e) = std_stream.set_nonblocking(true) {
        log::warn!("shard {}: handed-over connection unusable: {e}", shard.id);
        shard.shared.connections.release();
        return;
    }
    match TcpStream::from_std(std_stream) {
        Ok(stream) => {
            let conn = ClientConn::new(shard, stream, h.buffered);
            monoio::spawn(crate::proxy::serve(shard.clone(), conn));
        }
        Err(e) => {
            log::warn!(
                "shard {}: cannot register handed-over connection: {e}",
                shard.id
            );
            shard.shared.connections.release();
        }
    }
}

async fn tick_loop(shard: Rc<Shard>) {
    loop {
        let stop = monoio::select! {
            _ = monoio::time::sleep(TICK) => false,
            _ = shard.shutdown.wait() => true,
        };
        publish_latency(&shard);
        if stop {
            return;
        }
        let now = Instant::now();
        for pool in &shard.pools {
            pool.sweep(now);
        }
        crate::proxy::expire_sessions(&shard, now);
        shard.flush_backlog();
    }
}

fn publish_latency(shard: &Shard) {
    let (tx, rx) = &shard.shared.hists[shard.id];
    let _ = rx.try_recv();
    let _ = tx.try_send(shard.latency.borrow().clone());
}

/// Waits for in-flight requests (bounded by the drain timeout), then ends sessions upstream.
async fn drain(shard: &Rc<Shard>) {
    let deadline = Instant::now() + shard.config().timeouts.drain;
    while shard.live.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    if shard.live.get() > 0 {
        log::warn!(
            "shard {}: drain timeout with {} connections open",
            shard.id,
            shard.live.get()
        );
    }
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(500));
    crate::proxy::end_all_sessions(shard, left).await;
    for pool in &shard.pools {
        pool.clear();
    }
    publish_latency(shard);
    log::info!("shard {}: stopped", shard.id);
}

/// Signals every shard to drain.
pub fn begin_shutdown(shared: &Shared) {
    if !shared.draining.swap(true, Ordering::AcqRel) {
        for m in &shared.mailboxes {
            m.close();
        }
    }
}
