//! The runtime: one thread per core, pinned with core_affinity, each running its own monoio
//! runtime (io_uring, or epoll when io_uring is missing or its ring cannot be built), its
//! accept loop, mailbox and timers. It builds each shard's context (`shard::Shard`) and starts
//! the pipeline (`gateway::serve`) on every connection; nothing below imports it.
//!
//! Lifecycle of a shard: Running → Draining (listener closed, idle connections closed, in-flight
//! requests finish within the drain timeout) → sessions ended upstream → thread exits.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::{TcpListener, TcpStream};

use crate::admission::{Handoff, MailboxRx, ShardMsg};
use crate::config::{Config, Driver};
use crate::metrics::inc;
use crate::shard::{ClientConn, Shard, Shared};

/// io_uring submission queue entries per shard.
const RING_ENTRIES: u32 = 4096;

/// How often a shard publishes its latency snapshot and sweeps pools and sessions.
const TICK: Duration = Duration::from_secs(1);

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

/// The ring's setup. With `deferred`: the ring is used by its shard's thread alone
/// (`SINGLE_ISSUER`), and completions are run when the shard next enters the kernel to wait
/// (`DEFER_TASKRUN`) instead of interrupting it with an IPI while it runs its tasks
/// (`COOP_TASKRUN`): fewer interrupts and the completion work batched per loop turn. monoio
/// waits (and so runs completions) whenever its task queue runs dry, which every turn does: no
/// task here wakes itself or another without I/O or a timer between.
fn uring_setup(deferred: bool) -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    if deferred {
        b.setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun();
    }
    b
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
            let build = |flags: bool| {
                monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .with_entries(RING_ENTRIES)
                    .uring_builder(uring_setup(flags))
                    .enable_timer()
                    .build()
            };
            // A kernel older than 6.1 refuses the deferred task-run flags: the plain ring.
            match build(true).or_else(|e| {
                log::info!("shard {id}: io_uring without deferred task-run ({e})");
                build(false)
            }) {
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
    let shard = Shard::new(id, shared, tape);
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("shard {id}: cannot register listener: {e}");
            std::process::exit(1);
        }
    };
    monoio::spawn(mailbox_loop(shard.clone(), rx));
    monoio::spawn(tick_loop(shard.clone()));
    monoio::spawn(lag_probe(shard.clone()));
    for up in shard.up.each() {
        if let Some(host) = &up.stdio {
            host.refill();
        }
        for i in 0..up.pools.len() {
            monoio::spawn(crate::upstream::health::probe_loop(up.clone(), i));
        }
    }
    accept_loop(&shard, &listener).await;
    drop(listener);
    drain(&shard).await;
}

/// Connections a shard accepts in a row before it lets its other tasks run. With the epoll
/// driver an accept whose backlog is ready completes without yielding, so a burst of 5000
/// connects (clients reconnecting after a restart) held the shard for about 100 ms; requests
/// on connections it already had waited that long.
const ACCEPT_BATCH: u32 = 64;

async fn accept_loop(shard: &Rc<Shard>, listener: &TcpListener) {
    let mut in_a_row = 0u32;
    loop {
        in_a_row += 1;
        if in_a_row > ACCEPT_BATCH {
            in_a_row = 0;
            // A yield that lets the ready tasks and the next completions run first (monoio
            // 0.2.4's yield_now re-runs the task at once): the next timer turn.
            crate::timer::sleep(Duration::from_micros(1)).await;
        }
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
        monoio::spawn(crate::gateway::respond::reject(
            shard.clone(),
            stream,
            crate::error::Kind::ShuttingDown,
        ));
        return;
    }
    if !shard.shared.connections.try_acquire() {
        shard.stats.count_rejection("connections");
        monoio::spawn(crate::gateway::respond::reject(
            shard.clone(),
            stream,
            crate::error::Kind::Overloaded("connections"),
        ));
        return;
    }
    let first = Vec::with_capacity(crate::codec::http::FIRST_READ_BUF_BYTES);
    let conn = ClientConn::new(shard, stream, first);
    monoio::spawn(crate::gateway::serve(shard.clone(), conn));
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
            if let Some(client) = h.client {
                conn.set_proxy(client);
            }
            monoio::spawn(crate::gateway::serve(shard.clone(), conn));
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
        for up in shard.up.each() {
            for pool in &up.pools {
                pool.sweep(now);
            }
        }
        crate::gateway::session::expire(&shard, now);
        shard.flush_backlog();
    }
}

/// How often a shard probes its own event loop for lag.
const LAG_PROBE: Duration = Duration::from_millis(10);

/// Sleeps `LAG_PROBE` at a time and records how late each wake-up came: the time the event
/// loop spent elsewhere (a long turn of many completions, a blocking call, the thread not
/// scheduled). 100 timer wake-ups a second; ends with the shard.
async fn lag_probe(shard: Rc<Shard>) {
    loop {
        let due = Instant::now() + LAG_PROBE;
        let stop = monoio::select! {
            _ = crate::timer::sleep_until(due) => false,
            _ = shard.shutdown.wait() => true,
        };
        if stop {
            return;
        }
        shard
            .stats
            .loop_lag
            .record(Instant::now().saturating_duration_since(due));
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
    crate::gateway::session::end_all(shard, left).await;
    for up in shard.up.each() {
        for pool in &up.pools {
            pool.clear();
        }
    }
    publish_latency(shard);
    log::info!("shard {}: stopped", shard.id);
}
