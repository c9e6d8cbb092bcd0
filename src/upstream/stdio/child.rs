//! One stdio child process: MCP spoken with newline-delimited JSON-RPC on its stdin and
//! stdout, requests correlated by id.
//!
//! Each child is owned by one shard: its socketpair ends are driven by that shard's ring, and one
//! supervisor task (with a writer, a stderr logger and a killer beside it) lives exactly as long
//! as the process and reaps it. Requests are correlated by id: the gateway rewrites every
//! request id (and progress token) to a number of its own, so concurrent requests can never be
//! confused, and restores the client's id on the way back.
//!
//! Invariants:
//! - every child is reaped: stdout EOF, a crash, a stop request or shutdown all end in `wait`,
//!   SIGTERM then SIGKILL after the grace period when it does not leave by itself;
//! - every pending request gets exactly one end: its response, or `Failed` when the child goes;
//! - every queue is bounded: stdin lines (`stdin_queue_depth`), events per request and on the
//!   session stream (`max_pending_events`, the excess dropped and counted), line size
//!   (`max_body_bytes`, longer lines skipped and counted).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::io::{AsyncWriteRentExt, Splitable};
use monoio::net::UnixStream;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::codec::http::ReadBuf;
use crate::config::StdioConfig;
use crate::error::{Error, Kind, Result};
use crate::metrics::{gauge_add, inc, ShardStats};
use crate::sync::{LocalEvent, LocalQueue};

/// The protocol version the gateway asks for when it initializes a child itself (stateless
/// service): the newest session-based version.
pub const CHILD_PROTOCOL_VERSION: &str = "2025-11-25";

pub use crate::mcp::Era;

/// Longest stderr line logged; the rest of the line is cut.
const STDERR_LINE_MAX: usize = 512;

/// What a child is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Started ahead of need, waiting for a session's initialize.
    Prewarmed,
    /// Serves one MCP session.
    Session,
    /// Initialized by the gateway; serves independent 2026-07-28 requests.
    Stateless,
}

/// One item a waiting request (or the session stream) receives.
#[derive(Debug)]
pub enum Next {
    /// A server notification or request to pass on before the response.
    Event(Bytes),
    /// The response, with the client's id restored. Nothing follows.
    Final(Bytes),
    /// The child is gone; no response will come.
    Failed(Rc<str>),
}

/// Messages for one waiter: events bounded by `cap` (the excess is dropped and counted), then
/// one final response or a failure. Single consumer.
pub struct Inbox {
    events: RefCell<VecDeque<Bytes>>,
    cap: usize,
    fin: RefCell<Option<Bytes>>,
    failed: RefCell<Option<Rc<str>>>,
    waker: RefCell<Option<Waker>>,
}

impl Inbox {
    pub fn new(cap: usize) -> Inbox {
        Inbox {
            events: RefCell::new(VecDeque::new()),
            cap,
            fin: RefCell::new(None),
            failed: RefCell::new(None),
            waker: RefCell::new(None),
        }
    }

    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Queues an event; false (and nothing queued) when full.
    fn push_event(&self, line: Bytes) -> bool {
        let mut q = self.events.borrow_mut();
        if q.len() >= self.cap {
            return false;
        }
        q.push_back(line);
        drop(q);
        self.wake();
        true
    }

    fn finish(&self, line: Bytes) {
        *self.fin.borrow_mut() = Some(line);
        self.wake();
    }

    fn fail(&self, why: Rc<str>) {
        *self.failed.borrow_mut() = Some(why);
        self.wake();
    }

    /// The next item: queued events first, then the response, then a failure.
    pub async fn next(&self) -> Next {
        poll_fn(|cx| {
            if let Some(e) = self.events.borrow_mut().pop_front() {
                return Poll::Ready(Next::Event(e));
            }
            if let Some(f) = self.fin.borrow_mut().take() {
                return Poll::Ready(Next::Final(f));
            }
            if let Some(why) = self.failed.borrow().clone() {
                return Poll::Ready(Next::Failed(why));
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

struct Pending {
    /// The client's id, raw JSON.
    id: Box<str>,
    /// The client's progress token, raw JSON, when it asked for progress.
    token: Option<Box<str>>,
    inbox: Rc<Inbox>,
}

/// One child process and the state of its conversation.
pub struct Child {
    pub pid: u32,
    role: Cell<Role>,
    out: LocalQueue<Bytes>,
    pending: RefCell<HashMap<u64, Pending>>,
    next_id: Cell<u64>,
    /// Server messages that belong to no request: the session's GET stream.
    pub stream: Inbox,
    /// Set to end the child (DELETE, expiry, shutdown).
    pub stop: LocalEvent,
    /// Set once stdout ended: nothing more will be answered.
    gone: LocalEvent,
    /// Set once the process was reaped.
    reaped: LocalEvent,
    /// Called once when the child is gone, unless `end` was called first (ends its session).
    on_exit: RefCell<Option<Box<dyn FnOnce()>>>,
    /// The initialize result, for children the gateway initialized itself.
    pub init_result: RefCell<Option<Bytes>>,
    /// What the child speaks (stateless children; session children are initialized by their
    /// client, in the handshake era).
    pub(super) era: Cell<Era>,
    stats: Arc<ShardStats>,
    max_events: usize,
}

impl std::fmt::Debug for Child {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Child(pid {}, {:?})", self.pid, self.role.get())
    }
}

/// A request in flight on a child. Dropping it before its response (client gone, timeout) forgets
/// the request and tells the child with `notifications/cancelled`.
pub struct Ticket {
    child: Rc<Child>,
    gw_id: u64,
    pub inbox: Rc<Inbox>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self
            .child
            .pending
            .borrow_mut()
            .remove(&self.gw_id)
            .is_some()
            && !self.child.is_gone()
        {
            let note = format!(
                "{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{{\"requestId\":{},\"reason\":\"client went away or timed out\"}}}}\n",
                self.gw_id
            );
            let _ = self.child.out.try_push(Bytes::from(note));
            inc(&self.child.stats.stdio_cancelled);
        }
    }
}

impl Child {
    /// A peer's conversation state, before its transport runs (`spawn`, `sse::connect`).
    pub(super) fn new(s: &Spawn, role: Role, pid: u32) -> Rc<Child> {
        Rc::new(Child {
            pid,
            role: Cell::new(role),
            out: LocalQueue::new(s.cfg.stdin_queue_depth),
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            stream: Inbox::new(s.max_events),
            stop: LocalEvent::default(),
            gone: LocalEvent::default(),
            reaped: LocalEvent::default(),
            on_exit: RefCell::new(None),
            init_result: RefCell::new(None),
            era: Cell::new(Era::Handshake),
            stats: s.stats.clone(),
            max_events: s.max_events,
        })
    }

    /// The transport ended (stdout EOF, the event stream closed): nothing more will be
    /// answered. Fails every waiter, closes the input queue and runs the exit hook (which
    /// ends the session), before the peer is released.
    pub(super) fn transport_ended(&self, why: &str) {
        self.gone.set();
        self.fail_all(why);
        self.out.close();
        let hook = self.on_exit.borrow_mut().take();
        if let Some(f) = hook {
            f();
        }
    }

    /// The next line to send to the peer; `None` once the queue closed.
    pub(super) async fn next_out(&self) -> Option<Bytes> {
        self.out.pop().await
    }

    pub(super) fn set_reaped(&self) {
        self.reaped.set();
    }

    pub(super) fn routes(&self, line: &[u8]) {
        self.dispatch(line)
    }

    /// A child process (not a legacy SSE server's stream, whose `pid` is 0).
    pub fn is_process(&self) -> bool {
        self.pid != 0
    }

    pub fn role(&self) -> Role {
        self.role.get()
    }

    pub fn set_role(&self, r: Role) {
        self.role.set(r);
    }

    pub fn era(&self) -> Era {
        self.era.get()
    }

    pub fn is_gone(&self) -> bool {
        self.gone.is_set()
    }

    /// Runs `f` once the child is gone, unless `end` is called first; replaces any earlier hook.
    pub fn on_exit(&self, f: Box<dyn FnOnce()>) {
        *self.on_exit.borrow_mut() = Some(f);
    }

    pub fn clear_on_exit(&self) {
        self.on_exit.borrow_mut().take();
    }

    /// Asks the child to end (SIGTERM, then SIGKILL after the grace period).
    pub fn end(&self) {
        self.clear_on_exit();
        self.stop.set();
    }

    pub async fn wait_reaped(&self) {
        self.reaped.wait().await
    }

    fn enqueue(&self, line: Vec<u8>) -> Result<()> {
        if self.is_gone() || self.stop.is_set() {
            return Err(Error::new(Kind::UpstreamConnect, "stdio server has exited"));
        }
        self.out.try_push(Bytes::from(line)).map_err(|_| {
            Error::new(
                Kind::Overloaded("stdio_input"),
                "the stdio server is not reading its input fast enough",
            )
        })
    }

    /// Sends a client request (one JSON-RPC request object). Its messages arrive on the ticket.
    pub fn request(self: &Rc<Self>, body: &[u8]) -> Result<Ticket> {
        let gw_id = self.next_id.get();
        self.next_id.set(gw_id + 1);
        let Rewritten { line, id, token } = rewrite_request(body, gw_id)?;
        let inbox = Rc::new(Inbox::new(self.max_events));
        self.enqueue(line)?;
        self.pending.borrow_mut().insert(
            gw_id,
            Pending {
                id,
                token,
                inbox: inbox.clone(),
            },
        );
        Ok(Ticket {
            child: self.clone(),
            gw_id,
            inbox,
        })
    }

    /// Sends a client notification or response. A cancel naming a client request id is
    /// translated to the id the child knows.
    pub fn notify(&self, body: &[u8]) -> Result<()> {
        let line = rewrite_cancel(body, |raw| {
            self.pending
                .borrow()
                .iter()
                .find(|(_, p)| &*p.id == raw)
                .map(|(gw, _)| *gw)
        });
        self.enqueue(line)
    }

    /// Routes one line the child wrote.
    fn dispatch(&self, line: &[u8]) {
        let Ok(peek) = serde_json::from_slice::<LinePeek<'_>>(line) else {
            inc(&self.stats.stdio_bad_lines);
            log::warn!(
                "stdio server {}: not JSON-RPC, skipped: {}",
                self.pid,
                String::from_utf8_lossy(&line[..line.len().min(200)])
            );
            return;
        };
        match (peek.method.is_some(), peek.id) {
            (false, Some(id)) => self.dispatch_response(line, id),
            (true, _) => self.dispatch_server_message(line, &peek),
            (false, None) => inc(&self.stats.stdio_bad_lines),
        }
    }

    fn dispatch_response(&self, line: &[u8], id: &RawValue) {
        let pending = id
            .get()
            .parse::<u64>()
            .ok()
            .and_then(|gw| self.pending.borrow_mut().remove(&gw));
        match pending {
            Some(p) => {
                let restored = splice(line, &mut [(span(line, id), p.id.as_bytes())]);
                p.inbox.finish(Bytes::from(restored));
            }
            // Its request was cancelled (client gone, timeout): nobody waits for it.
            None => inc(&self.stats.stdio_late_responses),
        }
    }

    fn dispatch_server_message(&self, line: &[u8], peek: &LinePeek<'_>) {
        let params = peek
            .params
            .and_then(|p| serde_json::from_str::<ParamsPeek<'_>>(p.get()).ok());
        if let Some(tok) = params.as_ref().and_then(|p| p.progress_token) {
            let pending = self.pending.borrow();
            let hit = tok
                .get()
                .parse::<u64>()
                .ok()
                .and_then(|gw| pending.get(&gw));
            if let Some(p) = hit {
                let orig = p.token.as_deref().unwrap_or("null");
                let restored = splice(line, &mut [(span(line, tok), orig.as_bytes())]);
                if !p.inbox.push_event(Bytes::from(restored)) {
                    inc(&self.stats.stdio_dropped_messages);
                }
                return;
            }
        }
        let line = Bytes::copy_from_slice(line);
        match self.role.get() {
            Role::Session => {
                // One request in flight: the message is about it. Otherwise it goes to the
                // session's stream, which the spec allows for any server message.
                let pending = self.pending.borrow();
                let target = match pending.len() {
                    1 => pending.values().next().map(|p| &*p.inbox),
                    _ => None,
                };
                let ok = match target {
                    Some(inbox) => inbox.push_event(line),
                    None => self.stream.push_event(line),
                };
                if !ok {
                    inc(&self.stats.stdio_dropped_messages);
                }
            }
            Role::Stateless | Role::Prewarmed => {
                // No client can answer: refuse server requests so the child does not wait.
                if let Some(id) = peek.id {
                    let refusal = format!(
                        "{{\"jsonrpc\":\"2.0\",\"id\":{},\"error\":{{\"code\":-32601,\"message\":\"not available to a 2026-07-28 client through the gateway\"}}}}\n",
                        id.get()
                    );
                    let _ = self.out.try_push(Bytes::from(refusal));
                }
                inc(&self.stats.stdio_dropped_messages);
            }
        }
    }

    /// The child's stdout ended: fail everything still waiting.
    fn fail_all(&self, why: &str) {
        let why: Rc<str> = Rc::from(why);
        for (_, p) in self.pending.borrow_mut().drain() {
            p.inbox.fail(why.clone());
        }
        self.stream.fail(why);
    }
}

#[derive(Deserialize)]
struct LinePeek<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ParamsPeek<'a> {
    #[serde(borrow, rename = "_meta")]
    meta: Option<MetaPeek<'a>>,
    #[serde(borrow, rename = "progressToken")]
    progress_token: Option<&'a RawValue>,
    #[serde(borrow, rename = "requestId")]
    request_id: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct MetaPeek<'a> {
    #[serde(borrow, rename = "progressToken")]
    progress_token: Option<&'a RawValue>,
}

/// Byte range of a borrowed raw value inside `src`.
fn span(src: &[u8], raw: &RawValue) -> std::ops::Range<usize> {
    let start = raw.get().as_ptr() as usize - src.as_ptr() as usize;
    debug_assert!(
        start + raw.get().len() <= src.len(),
        "raw value outside its source"
    );
    start..start + raw.get().len()
}

/// Copies `src` with each range replaced; ranges must not overlap.
fn splice(src: &[u8], edits: &mut [(std::ops::Range<usize>, &[u8])]) -> Vec<u8> {
    edits.sort_by_key(|(r, _)| r.start);
    let extra: usize = edits.iter().map(|(_, b)| b.len()).sum();
    let mut out = Vec::with_capacity(src.len() + extra + 1);
    let mut at = 0;
    for (r, with) in edits.iter() {
        out.extend_from_slice(&src[at..r.start]);
        out.extend_from_slice(with);
        at = r.end;
    }
    out.extend_from_slice(&src[at..]);
    out
}

/// Turns a client body into one stdin line: raw CR and LF can only be JSON whitespace (inside
/// strings they must be escaped), so they become spaces; a newline ends the line.
fn to_line(mut v: Vec<u8>) -> Vec<u8> {
    for b in v.iter_mut() {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
    v.push(b'\n');
    v
}

/// A request as its stdin line, with the client's id and progress token (raw JSON).
pub struct Rewritten {
    pub line: Vec<u8>,
    pub id: Box<str>,
    pub token: Option<Box<str>>,
}

/// Rewrites a request's id (and progress token) to `gw_id`, keeping the originals. Also used
/// for requests carried into the gateway's shared session on an HTTP upstream (`era`).
pub fn rewrite_request(body: &[u8], gw_id: u64) -> Result<Rewritten> {
    let bad = || Error::new(Kind::InvalidRequest, "request without a usable id");
    let peek: LinePeek<'_> = serde_json::from_slice(body).map_err(|_| bad())?;
    let id = peek.id.ok_or_else(bad)?;
    let token = peek
        .params
        .and_then(|p| serde_json::from_str::<ParamsPeek<'_>>(p.get()).ok())
        .and_then(|p| p.meta.and_then(|m| m.progress_token));
    let gw = gw_id.to_string();
    let mut edits = vec![(span(body, id), gw.as_bytes())];
    if let Some(t) = token {
        edits.push((span(body, t), gw.as_bytes()));
    }
    Ok(Rewritten {
        line: to_line(splice(body, &mut edits)),
        id: id.get().into(),
        token: token.map(|t| t.get().into()),
    })
}

/// The other way: a response to gateway id `gw` gets the client's `id` back, a progress
/// notification for token `gw` the client's `token`. `None`: the line is about neither.
pub fn restore(line: &[u8], gw: u64, id: &str, token: Option<&str>) -> Option<Vec<u8>> {
    let peek: LinePeek<'_> = serde_json::from_slice(line).ok()?;
    let ours = |raw: &RawValue| raw.get().parse::<u64>().ok() == Some(gw);
    if peek.method.is_none() {
        let rid = peek.id.filter(|r| ours(r))?;
        return Some(splice(line, &mut [(span(line, rid), id.as_bytes())]));
    }
    let params: ParamsPeek<'_> = serde_json::from_str(peek.params?.get()).ok()?;
    let tok = params.progress_token.filter(|t| ours(t))?;
    let orig = token.unwrap_or("null");
    Some(splice(line, &mut [(span(line, tok), orig.as_bytes())]))
}

/// A client notification or response as a stdin line; a `notifications/cancelled` naming a
/// pending client request id gets the child's id for it.
fn rewrite_cancel(body: &[u8], lookup: impl Fn(&str) -> Option<u64>) -> Vec<u8> {
    let target = serde_json::from_slice::<LinePeek<'_>>(body)
        .ok()
        .filter(|p| p.method.as_deref() == Some("notifications/cancelled"))
        .and_then(|p| p.params)
        .and_then(|p| serde_json::from_str::<ParamsPeek<'_>>(p.get()).ok())
        .and_then(|p| p.request_id)
        .and_then(|raw| lookup(raw.get()).map(|gw| (span(body, raw), gw.to_string())));
    match target {
        Some((range, gw)) => to_line(splice(body, &mut [(range, gw.as_bytes())])),
        None => to_line(body.to_vec()),
    }
}

/// Limits and counters a child needs from its shard.
#[derive(Clone)]
pub struct Spawn {
    pub cfg: Rc<StdioConfig>,
    pub stats: Arc<ShardStats>,
    pub max_events: usize,
    pub max_line_bytes: usize,
    /// How long a write to the child's stdin may block before the child is deemed stuck.
    pub write_timeout: Duration,
}

/// A CPU mask naming every core.
fn all_cpus() -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain bits; all zeroes is the empty set, filled in below.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in 0..libc::CPU_SETSIZE as usize {
        // SAFETY: `cpu` is below CPU_SETSIZE, inside the set.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// The child's command: its stdin and stdout on one end of a socketpair, its stderr on
/// another, in its own session and process group, killed with the gateway, on any core.
fn command(
    s: &Spawn,
    theirs: std::os::unix::net::UnixStream,
    err_theirs: std::os::unix::net::UnixStream,
) -> io::Result<Command> {
    let stdin: OwnedFd = theirs.try_clone()?.into();
    let stdout: OwnedFd = theirs.into();
    let stderr: OwnedFd = err_theirs.into();
    let mut cmd = Command::new(&s.cfg.command);
    cmd.args(&s.cfg.args)
        .envs(s.cfg.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    if let Some(dir) = &s.cfg.cwd {
        cmd.current_dir(dir);
    }
    let all_cpus = all_cpus();
    // SAFETY: only async-signal-safe calls between fork and exec. The child leads its own process
    // group (so the gateway's terminal signals do not reach it, and a kill reaches its whole
    // tree), dies with the gateway if the gateway is killed, and may run on any core rather than
    // inherit the shard's pinning.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &all_cpus);
            Ok(())
        });
    }
    Ok(cmd)
}

/// Starts a child and its supervisor. The caller holds a process permit; `on_reaped` runs once
/// the process is gone (release the permit there).
pub fn spawn(s: &Spawn, role: Role, on_reaped: Box<dyn FnOnce()>) -> io::Result<Rc<Child>> {
    let started = Instant::now();
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let (err_ours, err_theirs) = std::os::unix::net::UnixStream::pair()?;
    let mut cmd = command(s, theirs, err_theirs)?;
    let proc = cmd.spawn()?;
    drop(cmd);
    ours.set_nonblocking(true)?;
    err_ours.set_nonblocking(true)?;
    // Our own handles on both sockets, so the supervisor can shut them down even after the
    // tasks using them dropped theirs (a raw fd number could by then name another socket).
    let handles = [
        OwnedFd::from(ours.try_clone()?),
        OwnedFd::from(err_ours.try_clone()?),
    ];
    let io = UnixStream::from_std(ours)?;
    let err_io = UnixStream::from_std(err_ours)?;
    let child = Child::new(s, role, proc.id());
    inc(&s.stats.stdio_spawned);
    gauge_add(&s.stats.stdio_processes, 1);
    log::debug!(
        "stdio server {} started in {:?}",
        child.pid,
        started.elapsed()
    );
    monoio::spawn(supervise(
        s.clone(),
        child.clone(),
        proc,
        io,
        err_io,
        handles,
        on_reaped,
    ));
    Ok(child)
}

/// Owns the process from start to reap: reads stdout, and runs the writer, the stderr logger
/// and the killer, awaiting all three before it ends.
async fn supervise(
    s: Spawn,
    child: Rc<Child>,
    mut proc: std::process::Child,
    io: UnixStream,
    err_io: UnixStream,
    handles: [OwnedFd; 2],
    on_reaped: Box<dyn FnOnce()>,
) {
    let (rd, wr) = io.into_split();
    let writer = monoio::spawn(write_loop(child.clone(), wr, s.write_timeout));
    let errlog = monoio::spawn(stderr_loop(
        child.pid,
        err_io,
        s.cfg.stderr_lines_per_s,
        s.stats.clone(),
    ));
    let killer = monoio::spawn(kill_on_stop(child.clone(), s.cfg.kill_grace));
    read_loop(&child, rd, s.max_line_bytes).await;
    let asked = child.stop.is_set();
    // Its session ends now, before the reap, so no request can reach a child that is gone (a
    // session that ended first cleared the hook).
    child.transport_ended(if asked {
        "stdio server was stopped"
    } else {
        "stdio server exited"
    });
    let status = reap(&child, &mut proc, s.cfg.kill_grace).await;
    child.reaped.set();
    // Grandchildren may hold the other ends open: end our reads and writes ourselves.
    for h in &handles {
        // SAFETY: `h` is an open fd this function owns; shutdown has no memory effects.
        unsafe { libc::shutdown(h.as_raw_fd(), libc::SHUT_RDWR) };
    }
    writer.await;
    errlog.await;
    killer.await;
    drop(handles);
    gauge_add(&s.stats.stdio_processes, -1);
    inc(&s.stats.stdio_exited);
    let crashed = !asked;
    if crashed {
        inc(&s.stats.stdio_crashes);
        log::warn!(
            "stdio server {} ({:?}) exited unasked: {}",
            child.pid,
            child.role.get(),
            describe(status)
        );
    } else {
        log::debug!("stdio server {} ended: {}", child.pid, describe(status));
    }
    on_reaped();
}

fn describe(status: Option<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (_, Some(sig)) => format!("killed by signal {sig}"),
            _ => "unknown status".into(),
        },
        None => "could not be reaped".into(),
    }
}

/// Reads stdout lines until EOF and routes them.
async fn read_loop(child: &Child, mut rd: monoio::io::OwnedReadHalf<UnixStream>, max_line: usize) {
    let mut rb = ReadBuf::with_capacity(16 * 1024);
    let mut framer = LineFramer::default();
    loop {
        if !matches!(rb.fill(&mut rd).await, Ok(n) if n > 0) {
            return;
        }
        framer.split(&mut rb, max_line, &mut |line| match line {
            Line::Message(line) => child.dispatch(line),
            Line::Oversized => {
                inc(&child.stats.stdio_bad_lines);
                log::warn!(
                    "stdio server {}: line longer than {max_line} bytes skipped",
                    child.pid
                );
            }
        });
    }
}

/// What the line framer hands out.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// One line, without its LF and a CR before it; never blank.
    Message(&'a [u8]),
    /// A line longer than the bound was skipped (reported once per line).
    Oversized,
}

/// Splits a child's stdout into newline-delimited lines, across reads. A line longer than
/// `max_line` is never held whole: its bytes are dropped as they arrive, up to its newline.
#[derive(Debug, Default)]
pub struct LineFramer {
    /// Bytes of the current partial line already searched for a newline.
    scanned: usize,
    /// Inside an oversized line: drop everything up to the next newline.
    skipping: bool,
}

impl LineFramer {
    /// Takes every whole line out of `rb`, passing each non-blank one to `out`; what remains in
    /// `rb` is the start of the next line, at most `max_line` bytes.
    pub fn split(&mut self, rb: &mut ReadBuf, max_line: usize, out: &mut impl FnMut(Line<'_>)) {
        while let Some(nl) = memchr(b'\n', &rb.data()[self.scanned..]) {
            let end = self.scanned + nl;
            let line = trim_cr(&rb.data()[..end]);
            if self.skipping {
                // The rest of an oversized line, already reported.
            } else if end > max_line {
                // Whole in one read, but over the bound all the same.
                out(Line::Oversized);
            } else if !line.iter().all(u8::is_ascii_whitespace) {
                out(Line::Message(line));
            }
            self.skipping = false;
            self.scanned = 0;
            rb.consume(end + 1);
        }
        self.scanned = rb.data().len();
        if self.scanned > max_line {
            // No newline within the bound: drop this line up to its end.
            if !self.skipping {
                out(Line::Oversized);
            }
            self.skipping = true;
            rb.consume(self.scanned);
            self.scanned = 0;
        }
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Writes queued lines to stdin, several per write when they pile up. A write blocked past
/// `timeout` means the child stopped reading: it is stopped.
async fn write_loop(
    child: Rc<Child>,
    mut wr: monoio::io::OwnedWriteHalf<UnixStream>,
    timeout: Duration,
) {
    let mut batch: Vec<u8> = Vec::with_capacity(4096);
    while let Some(line) = child.out.pop().await {
        batch.clear();
        batch.extend_from_slice(&line);
        while let Some(more) = child.out.try_pop() {
            batch.extend_from_slice(&more);
        }
        match monoio::time::timeout(timeout, wr.write_all(batch)).await {
            Ok((Ok(_), b)) => batch = b,
            Ok((Err(e), _)) => {
                log::debug!("stdio server {}: stdin closed: {e}", child.pid);
                break;
            }
            Err(_) => {
                inc(&child.stats.stdio_stuck);
                log::warn!(
                    "stdio server {} stopped reading its input for {timeout:?}: ending it",
                    child.pid
                );
                child.stop.set();
                break;
            }
        }
    }
    child.out.close();
}

/// Logs stderr lines, at most `per_s` a second; the rest are counted.
async fn stderr_loop(pid: u32, mut rd: UnixStream, per_s: u32, stats: Arc<ShardStats>) {
    let mut rb = ReadBuf::with_capacity(4096);
    let mut window = Instant::now();
    let mut logged = 0u32;
    let mut suppressed = 0u64;
    while matches!(rb.fill(&mut rd).await, Ok(n) if n > 0) {
        while let Some(nl) = memchr(b'\n', rb.data()) {
            if window.elapsed() >= Duration::from_secs(1) {
                if suppressed > 0 {
                    log::warn!("stdio server {pid}: {suppressed} stderr lines not logged");
                }
                window = Instant::now();
                logged = 0;
                suppressed = 0;
            }
            if logged < per_s {
                logged += 1;
                let line = trim_cr(&rb.data()[..nl]);
                let cut = &line[..line.len().min(STDERR_LINE_MAX)];
                log::info!("stdio server {pid}: {}", String::from_utf8_lossy(cut));
            } else {
                suppressed += 1;
                inc(&stats.stdio_stderr_suppressed);
            }
            rb.consume(nl + 1);
        }
        if rb.data().len() > STDERR_LINE_MAX * 8 {
            let n = rb.data().len();
            rb.consume(n);
        }
    }
}

/// Waits for a stop request, then sends SIGTERM to the child's process group, and SIGKILL if it
/// is still there after `grace`. Ends early once the child is reaped.
async fn kill_on_stop(child: Rc<Child>, grace: Duration) {
    // Biased: once reaped, its pid may be reused, so it must never be signalled.
    monoio::select! {
        biased;
        _ = child.reaped.wait() => return,
        _ = child.stop.wait() => {}
    }
    signal_group(child.pid, libc::SIGTERM);
    monoio::select! {
        biased;
        _ = child.reaped.wait() => return,
        _ = monoio::time::sleep(grace) => {}
    }
    if !child.reaped.is_set() {
        inc(&child.stats.stdio_killed);
        log::warn!(
            "stdio server {} ignored SIGTERM for {grace:?}: SIGKILL",
            child.pid
        );
        signal_group(child.pid, libc::SIGKILL);
    }
}

fn signal_group(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory effects; the child leads its own group (setsid at spawn), and is
    // not yet reaped, so the group id cannot have been reused.
    unsafe {
        if libc::kill(-(pid as libc::pid_t), sig) == -1 {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}

/// Waits for the process to exit, polling with backoff. A child that closed stdout but lingers
/// is asked to stop after `grace`, so this always ends.
async fn reap(
    child: &Child,
    proc: &mut std::process::Child,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    // Bound: grace for leaving alone, grace after SIGTERM, then SIGKILL cannot be refused.
    let give_up = grace * 2 + Duration::from_secs(30);
    loop {
        match proc.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => {
                log::error!("stdio server {}: wait failed: {e}", child.pid);
                return None;
            }
        }
        let waited = started.elapsed();
        if waited >= grace && !child.stop.is_set() {
            child.stop.set();
        }
        if waited >= give_up {
            log::error!("stdio server {} could not be reaped", child.pid);
            return None;
        }
        monoio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_and_tokens_are_rewritten_and_restored() {
        let body = br#"{"jsonrpc":"2.0","id":"abc","method":"tools/call","params":{"name":"x","_meta":{"progressToken":"tok-1"}}}"#;
        let Rewritten { line, id, token } = rewrite_request(body, 42).unwrap();
        assert_eq!(&*id, "\"abc\"");
        assert_eq!(token.as_deref(), Some("\"tok-1\""));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["id"], 42);
        assert_eq!(v["params"]["_meta"]["progressToken"], 42);
        assert_eq!(*line.last().unwrap(), b'\n');
        let pretty = b"{\n \"jsonrpc\": \"2.0\",\r\n \"id\": 7, \"method\": \"ping\"}";
        let Rewritten { line, id, token } = rewrite_request(pretty, 1).unwrap();
        assert_eq!((&*id, token), ("7", None));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(rewrite_request(br#"{"jsonrpc":"2.0","method":"x"}"#, 1).is_err());
    }

    #[test]
    fn cancel_names_the_childs_id() {
        let body =
            br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"r1"}}"#;
        let line = rewrite_cancel(body, |raw| (raw == "\"r1\"").then_some(9));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["params"]["requestId"], 9);
        let other = rewrite_cancel(body, |_| None);
        assert_eq!(&other[..other.len() - 1], &body[..]);
    }

    #[test]
    fn line_framer_bounds_lines_however_they_arrive() {
        let frame = |pieces: &[&[u8]]| {
            let (mut f, mut rb, mut got) = (LineFramer::default(), ReadBuf::default(), vec![]);
            for p in pieces {
                let mut v = rb.into_vec();
                v.extend_from_slice(p);
                rb = ReadBuf::from_vec(v);
                f.split(&mut rb, 4, &mut |l| {
                    got.push(match l {
                        Line::Message(m) => String::from_utf8_lossy(m).into_owned(),
                        Line::Oversized => "<oversized>".into(),
                    })
                });
            }
            got
        };
        let want = ["ab", "<oversized>", "cd"];
        assert_eq!(frame(&[b"ab\r\n  \nabcdefgh\ncd\n"]), want);
        assert_eq!(frame(&[b"ab\r\n  \nabc", b"defg", b"h\ncd\n"]), want);
    }

    #[test]
    fn splice_keeps_order() {
        let out = splice(b"0123456789", &mut [(6..8, b"X"), (1..2, b"YY")]);
        assert_eq!(out, b"0YY2345X89");
    }

    #[test]
    fn inbox_orders_events_then_final_and_bounds_events() {
        let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        let mut rt = rt;
        rt.block_on(async {
            let inbox = Inbox::new(2);
            assert!(inbox.push_event(Bytes::from_static(b"a")));
            assert!(inbox.push_event(Bytes::from_static(b"b")));
            assert!(!inbox.push_event(Bytes::from_static(b"c")));
            inbox.finish(Bytes::from_static(b"f"));
            assert!(matches!(inbox.next().await, Next::Event(e) if &e[..] == b"a"));
            assert!(matches!(inbox.next().await, Next::Event(e) if &e[..] == b"b"));
            assert!(matches!(inbox.next().await, Next::Final(e) if &e[..] == b"f"));
            inbox.fail(Rc::from("gone"));
            assert!(matches!(inbox.next().await, Next::Failed(_)));
        });
    }
}
