//! Virtual users: one task per user, each owning one keep-alive connection (churn cycles own
//! theirs for one cycle only). All users of a worker thread share its `Ctx`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shardcat::sync::LocalEvent;

use crate::conn::{Conn, EventStream, Reply};
use crate::proto::{self, Request};
use crate::schedule::Pacer;
use crate::stats::{parse_stamp, SeqTracker, Stats};
use crate::target::Target;

/// What each virtual user does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// tools/call on a session set up once (measured: the calls).
    Call,
    /// initialize, initialized, k × tools/call, DELETE, repeated (measured: every request).
    Session,
    /// 2026-07-28 tools/call with Mcp-Method and Mcp-Name, no session.
    Stateless,
    /// One long-lived GET stream per user (measured: event delivery latency).
    Sse,
}

/// Settings every user of a run shares.
#[derive(Debug, Clone)]
pub struct UserCfg {
    pub target: Target,
    /// One header line per user, in turn (`--header-file`): e.g. a token of its own.
    pub user_headers: std::sync::Arc<Vec<String>>,
    pub workload: Workload,
    pub calls_per_session: usize,
    pub payload_bytes: usize,
}

/// Pause after a failure or a rejection, so a dead target is not hammered in a tight loop.
const BACKOFF: Duration = Duration::from_millis(100);
/// Pause before retrying initialize after a 503 (the gateway's default Retry-After).
const REJECT_BACKOFF: Duration = Duration::from_secs(1);

/// How early an open-loop user may wake before its scheduled send (the timer's resolution).
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// Where an open-loop latency starts: the scheduled time when the send went out late (the
/// wait counts: no coordinated omission), the actual send time when it went out early (so
/// waking early never makes the target look faster).
pub fn measure_from(due: Instant, sent: Instant) -> Instant {
    due.min(sent)
}

/// A worker thread's shared state.
pub struct Ctx {
    pub cfg: UserCfg,
    pub stats: RefCell<Stats>,
    pub stop: LocalEvent,
    /// Open loop: each user's current interval; `None`: closed loop.
    pub period: Cell<Option<Duration>>,
    /// Users and churn cycles still running.
    pub live: Cell<usize>,
    /// Users past their setup, across all workers (the controller waits on it).
    pub ready: Arc<AtomicUsize>,
    next_id: Cell<u64>,
    /// Users started on this worker (picks each one's `user_headers` line).
    users: Cell<usize>,
}

impl Ctx {
    /// The target as the next user sends to it: with its own header line, if any.
    fn user_target(&self) -> Target {
        let mut t = self.cfg.target.clone();
        let lines = &self.cfg.user_headers;
        if !lines.is_empty() {
            let i = self.users.get();
            self.users.set(i + 1);
            t.headers.push_str(&lines[i % lines.len()]);
            t.headers.push_str("\r\n");
        }
        t
    }

    pub fn new(cfg: UserCfg, ready: Arc<AtomicUsize>) -> Ctx {
        Ctx {
            cfg,
            stats: RefCell::new(Stats::default()),
            stop: LocalEvent::default(),
            period: Cell::new(None),
            live: Cell::new(0),
            ready,
            next_id: Cell::new(first_id()),
            users: Cell::new(0),
        }
    }

    fn id(&self) -> u64 {
        let n = self.next_id.get();
        self.next_id.set(n + 1);
        n
    }

    /// Records a measured request of kind `what` that started at `sched`.
    fn record_since(&self, sched: Instant, what: What) {
        let d = sched.elapsed();
        let mut s = self.stats.borrow_mut();
        s.record(d);
        s.record_method(what.name(), d);
    }

    fn error(&self, what: String) {
        self.stats.borrow_mut().error(what);
    }

    /// Sleeps `d`, or less if the run stops. Returns false when stopping.
    async fn pause(&self, d: Duration) -> bool {
        monoio::select! {
            _ = self.stop.wait() => false,
            _ = monoio::time::sleep(d) => !self.stop.is_set(),
        }
    }

    /// The time the next measured send is due, after waiting for it (open loop), or now
    /// (closed loop). `None` once the run stops.
    async fn next_send(&self, pacer: &mut Option<Pacer>) -> Option<Instant> {
        if self.stop.is_set() {
            return None;
        }
        let Some(p) = pacer else {
            return Some(Instant::now());
        };
        if let Some(period) = self.period.get() {
            p.set_period(period);
        }
        let due = p.next_slot();
        let now = Instant::now();
        // monoio's timer rounds deadlines up to the next millisecond, so waking exactly at
        // `due` would add up to 1 ms of loadgen's own lateness to every latency. Wake up to
        // TIMER_SLACK early instead and send then.
        if due > now + TIMER_SLACK {
            if !self.pause(due - now - TIMER_SLACK).await {
                return None;
            }
            // Only a user that was idle and waiting on the timer measures loadgen's own
            // lateness; one already behind (a slow response) measures the target.
            let late = Instant::now().saturating_duration_since(due);
            self.stats.borrow_mut().record_lag(late);
        }
        Some(measure_from(due, Instant::now()))
    }

    fn pacer(&self, slot: usize, slots: usize) -> Option<Pacer> {
        self.period
            .get()
            .map(|p| Pacer::new(Instant::now(), p, slot, slots))
    }

    /// Counts the open-loop sends that were due but never went out.
    fn account_missed(&self, pacer: &Option<Pacer>) {
        if let Some(p) = pacer {
            self.stats.borrow_mut().missed += p.missed_before(Instant::now());
        }
    }
}

/// Keeps `Ctx::live` right however a user task ends.
struct Live(Rc<Ctx>);

impl Live {
    fn new(ctx: &Rc<Ctx>) -> Live {
        ctx.live.set(ctx.live.get() + 1);
        Live(ctx.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.set(self.0.live.get() - 1);
    }
}

/// Which request an exchange was, for error messages and response checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    Initialize,
    Initialized,
    Call,
    Delete,
    Get,
}

impl What {
    fn name(self) -> &'static str {
        match self {
            What::Initialize => "initialize",
            What::Initialized => "notifications/initialized",
            What::Call => "tools/call",
            What::Delete => "DELETE",
            What::Get => "GET stream",
        }
    }
}

enum Outcome {
    Ok(Reply),
    Rejected,
    Failed,
    /// 404 to a tools/call: the server does not know the session (any more). Counted as an
    /// error too.
    Gone,
}

/// A user's connection, opened lazily and reopened after a failure.
struct Client {
    ctx: Rc<Ctx>,
    /// Where and how this user sends (its own header line, `user_headers`).
    target: Target,
    conn: Option<Conn>,
    body: Vec<u8>,
    opened: u64,
    ready: bool,
    /// The user is ready only once its stream is open (sse), not after initialize.
    defer_ready: bool,
}

impl Client {
    fn new(ctx: &Rc<Ctx>) -> Client {
        Client {
            ctx: ctx.clone(),
            target: ctx.user_target(),
            conn: None,
            body: Vec::new(),
            opened: 0,
            ready: false,
            defer_ready: false,
        }
    }

    /// Tells the controller this user finished its setup (once).
    fn mark_ready(&mut self) {
        if !self.ready {
            self.ready = true;
            self.ctx.ready.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn ensure_conn(&mut self) -> bool {
        if self.conn.is_some() {
            return true;
        }
        match Conn::connect(self.target.addr).await {
            Ok(c) => {
                if self.opened > 0 {
                    self.ctx.stats.borrow_mut().reconnects += 1;
                }
                self.opened += 1;
                self.conn = Some(c);
                true
            }
            Err(e) => {
                self.ctx.error(e.to_string());
                false
            }
        }
    }

    /// One request/response exchange. Errors and rejections are counted here; the caller
    /// records the latency of successes, measured from its own (possibly scheduled) start.
    async fn request(&mut self, req: &mut Request, what: What) -> Outcome {
        if !self.ensure_conn().await {
            return Outcome::Failed;
        }
        let Some(conn) = self.conn.as_mut() else {
            return Outcome::Failed;
        };
        req.set_id(self.ctx.id());
        let bytes = std::mem::take(&mut req.bytes);
        let want_session = what == What::Initialize;
        let (res, bytes) = conn.exchange(bytes, &mut self.body, want_session).await;
        req.bytes = bytes;
        match res {
            Ok(reply) => {
                if !reply.keep_alive {
                    self.conn = None;
                }
                self.judge(reply, what)
            }
            Err(f) => {
                self.conn = None;
                self.ctx.error(format!("{}: {f}", what.name()));
                Outcome::Failed
            }
        }
    }

    /// Any 2xx is success (a tools/call must also carry a JSON-RPC result), 503 is an
    /// admission rejection, anything else is an error.
    fn judge(&self, reply: Reply, what: What) -> Outcome {
        match reply.status {
            200..=299 if what == What::Call && !has_result(&self.body) => {
                self.ctx
                    .error(format!("{}: no JSON-RPC result in response", what.name()));
                Outcome::Failed
            }
            200..=299 => Outcome::Ok(reply),
            503 => {
                self.ctx.stats.borrow_mut().reject();
                Outcome::Rejected
            }
            404 if what == What::Call => {
                self.ctx
                    .error(format!("{}: HTTP 404 (session gone)", what.name()));
                Outcome::Gone
            }
            s => {
                self.ctx.error(format!("{}: HTTP {s}", what.name()));
                Outcome::Failed
            }
        }
    }

    /// Like `request`, recording the latency from `sched` on success.
    async fn timed(&mut self, sched: Instant, req: &mut Request, what: What) -> Option<Reply> {
        match self.request(req, what).await {
            Outcome::Ok(r) => {
                self.ctx.record_since(sched, what);
                Some(r)
            }
            Outcome::Rejected | Outcome::Failed | Outcome::Gone => None,
        }
    }

    /// A request inside a churn cycle: on success, its own latency goes to the per-method
    /// figures only (the cycle is the measured unit).
    async fn step(&mut self, req: &mut Request, what: What) -> Option<Reply> {
        let start = Instant::now();
        match self.request(req, what).await {
            Outcome::Ok(r) => {
                let d = start.elapsed();
                self.ctx.stats.borrow_mut().record_method(what.name(), d);
                Some(r)
            }
            Outcome::Rejected | Outcome::Failed | Outcome::Gone => None,
        }
    }

    /// initialize + notifications/initialized, retried until it works or the run stops.
    /// Not measured: the `call` and `sse` workloads measure what happens on the session.
    async fn open_session(&mut self) -> Option<String> {
        loop {
            let mut init = proto::initialize(&self.target);
            let out = self.request(&mut init, What::Initialize).await;
            // A failed first attempt still counts as ready: the controller must not wait on a
            // user that keeps being rejected.
            if !self.defer_ready || !matches!(out, Outcome::Ok(_)) {
                self.mark_ready();
            }
            let wait = match out {
                Outcome::Ok(r) => match self.session_of(r) {
                    Some(sid) => {
                        let mut note = proto::initialized(&self.target, &sid);
                        self.request(&mut note, What::Initialized).await;
                        return Some(sid);
                    }
                    None => BACKOFF,
                },
                Outcome::Rejected => REJECT_BACKOFF,
                Outcome::Failed | Outcome::Gone => BACKOFF,
            };
            if !self.ctx.pause(wait).await {
                return None;
            }
        }
    }

    fn session_of(&self, r: Reply) -> Option<String> {
        if r.session.is_none() {
            self.ctx.error("initialize: no Mcp-Session-Id".into());
        }
        r.session
    }

    /// Ends the session (unmeasured cleanup; a failure still counts as an error, since it
    /// would leak a session).
    async fn close_session(&mut self, sid: &str) {
        let mut del = proto::delete(&self.target, sid);
        self.request(&mut del, What::Delete).await;
    }
}

/// First JSON-RPC id of a worker. With the `random` feature ids start at a random point, so
/// runs against a recording proxy never repeat ids across runs.
#[cfg(feature = "random")]
fn first_id() -> u64 {
    let mut b = [0u8; 4];
    let _ = getrandom::getrandom(&mut b);
    u64::from(u32::from_le_bytes(b)) << 8
}

#[cfg(not(feature = "random"))]
fn first_id() -> u64 {
    1
}

fn has_result(body: &[u8]) -> bool {
    body.windows(8).any(|w| w == b"\"result\"")
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Runs one virtual user until the run stops. `slot` of `slots` staggers open-loop starts;
/// `delay` spreads connection setup when a connect rate is set.
pub async fn run_user(ctx: Rc<Ctx>, slot: usize, slots: usize, delay: Duration) {
    let _live = Live::new(&ctx);
    if !delay.is_zero() && !ctx.pause(delay).await {
        ctx.ready.fetch_add(1, Ordering::Relaxed);
        return;
    }
    match ctx.cfg.workload {
        Workload::Call => call_user(&ctx, slot, slots).await,
        Workload::Session => session_user(&ctx, slot, slots).await,
        Workload::Stateless => stateless_user(&ctx, slot, slots).await,
        Workload::Sse => sse_user(&ctx).await,
    }
}

/// A session set up once, then tools/call on it. A 404 (the server no longer knows the
/// session) opens a new one, as the spec asks of clients: counted in `reinits`.
async fn call_user(ctx: &Rc<Ctx>, slot: usize, slots: usize) {
    let mut c = Client::new(ctx);
    let Some(mut sid) = c.open_session().await else {
        return;
    };
    let mut req = proto::call(&c.target, &sid, ctx.cfg.payload_bytes);
    let mut pacer = ctx.pacer(slot, slots);
    while let Some(sched) = ctx.next_send(&mut pacer).await {
        match c.request(&mut req, What::Call).await {
            Outcome::Ok(_) => ctx.record_since(sched, What::Call),
            Outcome::Gone => {
                let Some(new) = c.open_session().await else {
                    break;
                };
                ctx.stats.borrow_mut().reinit();
                sid = new;
                req = proto::call(&c.target, &sid, ctx.cfg.payload_bytes);
            }
            Outcome::Rejected | Outcome::Failed => {
                if pacer.is_none() && !ctx.pause(BACKOFF).await {
                    break;
                }
            }
        }
    }
    ctx.account_missed(&pacer);
    c.close_session(&sid).await;
}

async fn stateless_user(ctx: &Rc<Ctx>, slot: usize, slots: usize) {
    let mut c = Client::new(ctx);
    c.ensure_conn().await;
    c.mark_ready();
    let mut req = proto::stateless_call(&c.target, ctx.cfg.payload_bytes);
    let mut pacer = ctx.pacer(slot, slots);
    while let Some(sched) = ctx.next_send(&mut pacer).await {
        if c.timed(sched, &mut req, What::Call).await.is_none()
            && pacer.is_none()
            && !ctx.pause(BACKOFF).await
        {
            break;
        }
    }
    ctx.account_missed(&pacer);
}

async fn session_user(ctx: &Rc<Ctx>, slot: usize, slots: usize) {
    let mut c = Client::new(ctx);
    c.ensure_conn().await;
    c.mark_ready();
    let mut pacer = ctx.pacer(slot, slots);
    while !ctx.stop.is_set() {
        if !session_iteration(ctx, &mut c, &mut pacer).await
            && pacer.is_none()
            && !ctx.pause(BACKOFF).await
        {
            break;
        }
    }
    ctx.account_missed(&pacer);
}

/// One full session life; every request is measured. Returns false if any step failed.
/// Once initialize succeeded, the session is always DELETEd, even when the run stops midway.
async fn session_iteration(ctx: &Rc<Ctx>, c: &mut Client, pacer: &mut Option<Pacer>) -> bool {
    let t = &c.target.clone();
    let Some(sched) = ctx.next_send(pacer).await else {
        return true;
    };
    let Some(reply) = c
        .timed(sched, &mut proto::initialize(t), What::Initialize)
        .await
    else {
        return false;
    };
    let Some(sid) = c.session_of(reply) else {
        return false;
    };
    let mut ok = session_body(ctx, c, pacer, &sid).await;
    let sched = ctx.next_send(pacer).await.unwrap_or_else(Instant::now);
    ok &= c
        .timed(sched, &mut proto::delete(t, &sid), What::Delete)
        .await
        .is_some();
    if ok {
        ctx.stats.borrow_mut().iterations += 1;
    }
    ok
}

/// notifications/initialized and the k calls of one session iteration.
async fn session_body(ctx: &Rc<Ctx>, c: &mut Client, pacer: &mut Option<Pacer>, sid: &str) -> bool {
    let t = &c.target.clone();
    let Some(sched) = ctx.next_send(pacer).await else {
        return true;
    };
    if c.timed(sched, &mut proto::initialized(t, sid), What::Initialized)
        .await
        .is_none()
    {
        return false;
    }
    let mut call = proto::call(t, sid, ctx.cfg.payload_bytes);
    for _ in 0..ctx.cfg.calls_per_session {
        let Some(sched) = ctx.next_send(pacer).await else {
            return true;
        };
        if c.timed(sched, &mut call, What::Call).await.is_none() {
            return false;
        }
    }
    true
}

/// Opens a session and holds a GET stream on it, reopening the stream if it ends, until the
/// run stops; then ends the session on a fresh connection (the stream's is still busy). A
/// session the server no longer knows (404: ended by the gateway or upstream) is replaced by
/// a new one, as the spec asks of clients; the 404 still counts as an error.
async fn sse_user(ctx: &Rc<Ctx>) {
    let mut c = Client::new(ctx);
    c.defer_ready = true;
    let Some(mut sid) = c.open_session().await else {
        return;
    };
    while !ctx.stop.is_set() {
        let gone = monoio::select! {
            _ = ctx.stop.wait() => false,
            gone = hold_stream(ctx, &mut c, &sid) => gone,
        };
        if gone {
            match c.open_session().await {
                Some(new) => sid = new,
                None => return,
            }
        } else if !ctx.stop.is_set() {
            ctx.pause(BACKOFF).await;
        }
    }
    c.mark_ready();
    c.conn = None;
    // The cleanup connection is planned, not a reconnect after a failure.
    c.opened = 0;
    c.close_session(&sid).await;
}

/// One GET stream, from request to its end. Every stamped event is measured: delivery latency
/// (now − the upstream's send time, both wall clock on this machine), sequence gaps and loss.
/// Returns true when the session is gone (the GET got 404).
async fn hold_stream(ctx: &Rc<Ctx>, c: &mut Client, sid: &str) -> bool {
    let mut es = match open_stream(c, sid).await {
        Opened::Stream(es) => es,
        Opened::Gone => {
            c.mark_ready();
            return true;
        }
        Opened::Failed => {
            c.mark_ready();
            return false;
        }
    };
    c.mark_ready();
    ctx.stats.borrow_mut().sse.streams += 1;
    let mut seq = SeqTracker::default();
    let mut on_event = |ev: &[u8]| {
        if let Some(stamp) = parse_stamp(ev) {
            let mut s = ctx.stats.borrow_mut();
            s.record_us(now_us().saturating_sub(stamp.ts_us));
            seq.observe(stamp.seq, &mut s.sse);
        }
    };
    loop {
        let Some(conn) = c.conn.as_mut() else {
            return false;
        };
        match conn.next_events(&mut es, &mut on_event).await {
            Ok(true) => {}
            Ok(false) => {
                ctx.error("GET stream: ended by the server".into());
                c.conn = None;
                return false;
            }
            Err(f) => {
                ctx.error(format!("GET stream: {f}"));
                c.conn = None;
                return false;
            }
        }
    }
}

enum Opened {
    Stream(EventStream),
    /// 404: the server does not know the session (any more).
    Gone,
    /// Rejected or failed; counted.
    Failed,
}

/// Sends the GET and reads the response head; the stream must be a 200 event stream.
async fn open_stream(c: &mut Client, sid: &str) -> Opened {
    if !c.ensure_conn().await {
        return Opened::Failed;
    }
    let Some(conn) = c.conn.as_mut() else {
        return Opened::Failed;
    };
    let (res, _) = conn.send(proto::get_stream(&c.target, sid).bytes).await;
    let head = match res {
        Ok(()) => conn.read_head().await,
        Err(f) => Err(f),
    };
    match head {
        Ok(h) if h.status == 200 => Opened::Stream(EventStream::new(&h)),
        Ok(h) => {
            c.conn = None;
            match h.status {
                503 => {
                    c.ctx.stats.borrow_mut().reject();
                    Opened::Failed
                }
                404 => {
                    c.ctx.error(format!(
                        "{}: HTTP 404 (session gone; a new one is opened)",
                        What::Get.name()
                    ));
                    Opened::Gone
                }
                s => {
                    c.ctx.error(format!("{}: HTTP {s}", What::Get.name()));
                    Opened::Failed
                }
            }
        }
        Err(f) => {
            c.ctx.error(format!("{}: {f}", What::Get.name()));
            c.conn = None;
            Opened::Failed
        }
    }
}

/// One churn cycle: a fresh connection, initialize, initialized, one call, DELETE, close.
/// Measured as a whole, from its scheduled start; each request is also timed on its own, from
/// its send (initialize includes the connect).
pub async fn churn_cycle(ctx: Rc<Ctx>, sched: Instant) {
    let _live = Live::new(&ctx);
    let mut c = Client::new(&ctx);
    c.ready = true;
    let t = c.target.clone();
    let Some(reply) = c.step(&mut proto::initialize(&t), What::Initialize).await else {
        return;
    };
    let Some(sid) = c.session_of(reply) else {
        return;
    };
    let mut ok = c
        .step(&mut proto::initialized(&t, &sid), What::Initialized)
        .await
        .is_some();
    if ok {
        let mut call = proto::call(&t, &sid, ctx.cfg.payload_bytes);
        ok = c.step(&mut call, What::Call).await.is_some();
    }
    ok &= c
        .step(&mut proto::delete(&t, &sid), What::Delete)
        .await
        .is_some();
    if ok {
        let mut s = ctx.stats.borrow_mut();
        s.record(sched.elapsed());
        s.iterations += 1;
    }
}

/// Starts one churn cycle per scheduled slot until the run stops. When `max_live` cycles are
/// already running the slot is counted as missed rather than queued without bound.
pub async fn churn_spawner(
    ctx: Rc<Ctx>,
    period: Duration,
    slot: usize,
    slots: usize,
    max_live: usize,
) {
    let mut pacer = Some(Pacer::new(Instant::now(), period, slot, slots));
    while let Some(sched) = ctx.next_send(&mut pacer).await {
        if ctx.live.get() >= max_live {
            ctx.stats.borrow_mut().missed += 1;
            continue;
        }
        monoio::spawn(churn_cycle(ctx.clone(), sched));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_starts_at_the_earlier_of_schedule_and_send() {
        let due = Instant::now();
        let late = due + Duration::from_millis(5);
        let early = due - Duration::from_micros(300);
        assert_eq!(measure_from(due, late), due, "a late send counts its wait");
        assert_eq!(
            measure_from(due, early),
            early,
            "an early send is timed from the send"
        );
    }

    #[test]
    fn result_check_finds_the_member() {
        assert!(has_result(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#));
        assert!(!has_result(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-1}}"#
        ));
    }
}
