//! Worker threads and their control. Each worker is one thread with its own monoio runtime
//! (io_uring, or epoll when a ring cannot be built) running its share of the virtual users.
//! The controller (the main thread) talks to workers over std channels, which workers poll
//! every few milliseconds: control is rare, and polling keeps the request path free of any
//! cross-thread wakeup machinery.

use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::stats::Stats;
use crate::target::Target;
use crate::user::{self, Ctx, UserCfg};

/// How often an idle worker checks for commands.
const POLL: Duration = Duration::from_millis(5);
/// How long a stopping worker waits for in-flight requests before dropping them: above the
/// gateway's default upstream request timeout (30 s), so an initialize still in flight completes
/// and its session is DELETEd rather than abandoned by loadgen itself.
const DRAIN: Duration = Duration::from_secs(35);
/// Submission queue entries per io_uring; many users share one ring.
const RING_ENTRIES: u32 = 4096;
/// How long the controller waits for a worker to answer a snapshot.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

enum Cmd {
    /// Spawn users with these stagger slots, out of `of` users added together; user `slot`
    /// connects `slot × spacing` after the command.
    Users {
        slots: Vec<usize>,
        of: usize,
        spacing: Duration,
    },
    /// Open loop: each user's interval from now on.
    Period(Option<Duration>),
    /// Start a churn spawner: one cycle per `period`, staggered by slot.
    Churn {
        period: Duration,
        slot: usize,
        slots: usize,
        max_live: usize,
    },
    /// Record a per-second timeline of a window of this length starting at this instant.
    Timeline(Instant, Duration),
    /// Send the stats gathered since the last snapshot, and start afresh.
    Snapshot(Sender<Stats>),
    /// Stop every user, let in-flight requests finish, send the last stats, exit.
    Stop(Sender<Stats>),
}

struct Worker {
    tx: Sender<Cmd>,
    join: Option<JoinHandle<()>>,
}

pub struct Engine {
    workers: Vec<Worker>,
    ready: Arc<AtomicUsize>,
    users: usize,
}

impl Engine {
    /// Starts `threads` workers, pinned round-robin to `pin` cores if given. Worker i drives
    /// `targets[i % n]` (none given: `cfg.target`).
    pub fn start(
        cfg: &UserCfg,
        targets: &[Target],
        threads: usize,
        pin: &[usize],
    ) -> std::io::Result<Engine> {
        let ready = Arc::new(AtomicUsize::new(0));
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads.max(1) {
            let core = pin
                .get(i % pin.len().max(1))
                .and_then(|id| cores.iter().find(|c| c.id == *id).copied());
            let mut cfg = cfg.clone();
            if let Some(t) = targets.get(i % targets.len().max(1)) {
                cfg.target = t.clone();
            }
            workers.push(spawn_worker(i, cfg, ready.clone(), core)?);
        }
        Ok(Engine {
            workers,
            ready,
            users: 0,
        })
    }

    pub fn users(&self) -> usize {
        self.users
    }

    /// Adds `n` users, spread round-robin over the workers, starting one per `spacing`
    /// (zero: all at once).
    pub fn add_users(&mut self, n: usize, spacing: Duration) {
        let w = self.workers.len();
        for (i, worker) in self.workers.iter().enumerate() {
            let slots: Vec<usize> = (i..n).step_by(w).collect();
            if !slots.is_empty() {
                let _ = worker.tx.send(Cmd::Users {
                    slots,
                    of: n,
                    spacing,
                });
            }
        }
        self.users += n;
    }

    /// Waits until every user added so far finished its setup. Returns false on timeout.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while self.ready.load(Ordering::Relaxed) < self.users {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    pub fn set_period(&self, period: Option<Duration>) {
        for w in &self.workers {
            let _ = w.tx.send(Cmd::Period(period));
        }
    }

    /// Starts churn at `rate` cycles per second in total, at most `max_live` cycles at once.
    pub fn start_churn(&self, rate: f64, max_live: usize) {
        let n = self.workers.len();
        let period = Duration::from_secs_f64(n as f64 / rate);
        for (slot, w) in self.workers.iter().enumerate() {
            let _ = w.tx.send(Cmd::Churn {
                period,
                slot,
                slots: n,
                max_live: (max_live / n).max(1),
            });
        }
    }

    /// Every worker records a timeline of the window starting at `start` (into the stats that
    /// the next snapshot collects).
    pub fn start_timeline(&self, start: Instant, len: Duration) {
        for w in &self.workers {
            let _ = w.tx.send(Cmd::Timeline(start, len));
        }
    }

    /// Stats of all workers since the previous snapshot, merged.
    pub fn snapshot(&self) -> Stats {
        self.collect(Cmd::Snapshot)
    }

    /// Stops all users and workers; returns the stats gathered since the last snapshot.
    pub fn stop(mut self) -> Stats {
        let stats = self.collect(Cmd::Stop);
        for w in &mut self.workers {
            if let Some(j) = w.join.take() {
                let _ = j.join();
            }
        }
        stats
    }

    fn collect(&self, cmd: fn(Sender<Stats>) -> Cmd) -> Stats {
        let (tx, rx) = mpsc::channel();
        let mut asked = 0;
        for w in &self.workers {
            if w.tx.send(cmd(tx.clone())).is_ok() {
                asked += 1;
            }
        }
        let mut total = Stats::default();
        for _ in 0..asked {
            match rx.recv_timeout(REPLY_TIMEOUT) {
                Ok(s) => total.merge(&s),
                Err(_) => total.error("a worker did not report".into()),
            }
        }
        total
    }
}

fn spawn_worker(
    i: usize,
    cfg: UserCfg,
    ready: Arc<AtomicUsize>,
    core: Option<core_affinity::CoreId>,
) -> std::io::Result<Worker> {
    let (tx, rx) = mpsc::channel();
    let join = std::thread::Builder::new()
        .name(format!("loadgen-{i}"))
        .spawn(move || {
            if let Some(core) = core {
                core_affinity::set_for_current(core);
            }
            run_worker(cfg, ready, rx);
        })?;
    Ok(Worker {
        tx,
        join: Some(join),
    })
}

/// Builds the runtime. monoio's probe can pass and the ring still fail to build (e.g. a low
/// memlock limit), so try io_uring first and fall back to epoll on any error.
fn run_worker(cfg: UserCfg, ready: Arc<AtomicUsize>, rx: Receiver<Cmd>) {
    let main = move || control(Rc::new(Ctx::new(cfg, ready)), rx);
    if std::env::var_os("MONOIO_FORCE_LEGACY_DRIVER").is_none() {
        let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(RING_ENTRIES)
            .enable_timer()
            .build();
        match rt {
            Ok(mut rt) => return rt.block_on(main()),
            Err(e) => eprintln!("loadgen: io_uring unavailable ({e}); using epoll"),
        }
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut rt) => rt.block_on(main()),
        Err(e) => {
            eprintln!("loadgen: cannot build a runtime: {e}");
            std::process::exit(2);
        }
    }
}

async fn control(ctx: Rc<Ctx>, rx: Receiver<Cmd>) {
    loop {
        match rx.try_recv() {
            Ok(Cmd::Stop(reply)) => return stop(&ctx, reply).await,
            Ok(cmd) => handle(&ctx, cmd),
            Err(TryRecvError::Empty) => monoio::time::sleep(POLL).await,
            // The controller is gone: nobody will read our stats.
            Err(TryRecvError::Disconnected) => {
                ctx.stop.set();
                return;
            }
        }
    }
}

fn handle(ctx: &Rc<Ctx>, cmd: Cmd) {
    match cmd {
        Cmd::Users { slots, of, spacing } => {
            for slot in slots {
                let delay = spacing * slot as u32;
                monoio::spawn(user::run_user(ctx.clone(), slot, of, delay));
            }
        }
        Cmd::Period(p) => ctx.period.set(p),
        Cmd::Timeline(start, len) => {
            ctx.stats.borrow_mut().timeline = crate::timeline::Timeline::new(start, len);
        }
        Cmd::Churn {
            period,
            slot,
            slots,
            max_live,
        } => {
            monoio::spawn(user::churn_spawner(
                ctx.clone(),
                period,
                slot,
                slots,
                max_live,
            ));
        }
        Cmd::Snapshot(reply) => {
            let _ = reply.send(ctx.stats.take());
        }
        // `control` handles Stop itself, since it must await the drain.
        Cmd::Stop(_) => {}
    }
}

async fn stop(ctx: &Rc<Ctx>, reply: Sender<Stats>) {
    ctx.stop.set();
    let end = Instant::now() + DRAIN;
    while ctx.live.get() > 0 && Instant::now() < end {
        monoio::time::sleep(POLL).await;
    }
    let mut stats = ctx.stats.take();
    if ctx.live.get() > 0 {
        stats.error(format!(
            "{} users still busy {}s after stop",
            ctx.live.get(),
            DRAIN.as_secs()
        ));
    }
    let _ = reply.send(stats);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user::Workload;

    /// Starts the gateway's demo MCP server on a loopback port (its thread lives as long as
    /// the test process).
    fn demo() -> crate::target::Target {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let cfg = shardcat::demo::DemoConfig {
            push_interval: Duration::from_millis(10),
            ..Default::default()
        };
        std::thread::spawn(move || shardcat::demo::run(listener, cfg));
        crate::target::parse(&url).unwrap()
    }

    fn run_for(workload: Workload, rate: Option<f64>) -> Stats {
        let cfg = UserCfg {
            target: demo(),
            user_headers: Default::default(),
            workload,
            calls_per_session: 2,
            payload_bytes: 8,
        };
        let mut e = Engine::start(&cfg, &[], 2, &[]).unwrap();
        e.set_period(rate.map(|r| crate::schedule::per_user_period(r, 4)));
        e.add_users(4, Duration::ZERO);
        assert!(e.wait_ready(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(300));
        let mut s = e.snapshot();
        s.merge(&e.stop());
        assert_eq!(s.errors, 0, "{:?}", s.error_samples);
        assert!(s.ok > 0);
        s
    }

    #[test]
    fn closed_loop_workloads_run_clean_against_the_demo() {
        run_for(Workload::Call, None);
        run_for(Workload::Stateless, None);
        let s = run_for(Workload::Session, None);
        assert!(s.iterations > 0);
        let methods: Vec<&str> = s.by_method.keys().copied().collect();
        assert_eq!(
            methods,
            [
                "DELETE",
                "initialize",
                "notifications/initialized",
                "tools/call"
            ]
        );
        let timed: u64 = s.by_method.values().map(|h| h.len()).sum();
        assert_eq!(timed, s.ok, "every measured request is timed by method too");
    }

    #[test]
    fn open_loop_holds_its_rate() {
        // 4 users at 200 req/s in total for ~0.3 s: about 60 sends, none far off schedule.
        let s = run_for(Workload::Call, Some(200.0));
        assert!((30..=90).contains(&s.ok), "{} sends", s.ok);
    }

    /// A minimal MCP server on a loopback port: sessions s1, s2, ... from initialize; every
    /// tools/call on s1 gets 404 (the server forgot it), on any other session a result.
    fn forgetful_server() -> crate::target::Target {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let next = Arc::new(AtomicUsize::new(1));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let next = next.clone();
                std::thread::spawn(move || {
                    let mut w = stream.try_clone().unwrap();
                    let mut r = BufReader::new(stream);
                    loop {
                        let (mut len, mut sid, mut line) = (0, String::new(), String::new());
                        let mut first = String::new();
                        if r.read_line(&mut first).unwrap_or(0) == 0 {
                            return;
                        }
                        while r.read_line(&mut line).unwrap_or(0) > 2 {
                            let l = line.to_ascii_lowercase();
                            if let Some(v) = l.strip_prefix("content-length:") {
                                len = v.trim().parse().unwrap();
                            } else if let Some(v) = l.strip_prefix("mcp-session-id:") {
                                sid = v.trim().to_string();
                            }
                            line.clear();
                        }
                        let mut body = vec![0; len];
                        r.read_exact(&mut body).unwrap();
                        let body = String::from_utf8(body).unwrap();
                        let ok = "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}";
                        let reply = if body.contains("\"method\":\"initialize\"") {
                            let n = next.fetch_add(1, Ordering::Relaxed);
                            format!("HTTP/1.1 200 OK\r\nmcp-session-id: s{n}\r\ncontent-length: {}\r\n\r\n{ok}", ok.len())
                        } else if first.starts_with("DELETE") || body.contains("initialized") {
                            "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n".to_string()
                        } else if sid == "s1" {
                            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_string()
                        } else {
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{ok}",
                                ok.len()
                            )
                        };
                        if w.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        crate::target::parse(&url).unwrap()
    }

    #[test]
    fn a_call_user_opens_a_new_session_after_a_404_and_the_timeline_counts_it() {
        let cfg = UserCfg {
            target: forgetful_server(),
            user_headers: Default::default(),
            workload: Workload::Call,
            calls_per_session: 1,
            payload_bytes: 8,
        };
        let mut e = Engine::start(&cfg, &[], 1, &[]).unwrap();
        let _ = e.snapshot();
        e.start_timeline(Instant::now(), Duration::from_secs(2));
        e.add_users(1, Duration::ZERO);
        assert!(e.wait_ready(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(200));
        let s = e.snapshot();
        e.stop();
        assert_eq!((s.errors, s.reinits), (1, 1), "{:?}", s.error_samples);
        assert!(s.ok > 0, "calls on the new session succeed");
        let row = s.timeline.rows()[0];
        assert_eq!((row.failed, row.reinits, row.ok), (1, 1, s.ok));
        assert!(s
            .timeline
            .error_span_s()
            .is_some_and(|(a, b)| a == b && a < 1.0));
    }

    #[test]
    fn sse_streams_deliver_every_event() {
        let s = run_for(Workload::Sse, None);
        assert_eq!(s.sse.streams, 4);
        assert_eq!(s.sse.lost, 0);
        assert!(s.sse.events > 0);
    }
}
