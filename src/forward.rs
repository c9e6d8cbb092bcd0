//! `shardcat forward`: shardcat as the stdio MCP server a client (an IDE) launches.
//!
//! - `forward stdio -- CMD ARGS` starts CMD and relays stdin and stdout byte for byte. When the
//!   client closes stdin, the child gets EOF, then SIGTERM and SIGKILL after a grace period if it
//!   stays; the exit code is the child's.
//! - `forward http --url URL` reaches a remote Streamable HTTP server: each stdin line is POSTed;
//!   JSON and SSE answers come back as stdout lines; the session id and protocol version are
//!   kept for the client; the GET stream is held open and resumed with `Last-Event-ID` after a
//!   drop (exponential backoff with jitter, honouring `retry:`); an expired session (404) is
//!   re-initialized with the client's own initialize and the message sent again.
//!
//! This runs beside a single client, not on the gateway's shards: plain threads and blocking
//! I/O are the right tools here. Bounds: `MAX_IN_FLIGHT` concurrent requests, `OUT_QUEUE`
//! lines waiting for stdout, `MAX_LINE_BYTES` per message.

use std::io::{BufRead, Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::codec::sse::{parse_sse_event, SseSplitter};
use crate::mcp;
use crate::tape::{self, Dir, Frame, FrameKind};

/// Requests to the remote server in flight at once; stdin is not read past it.
pub const MAX_IN_FLIGHT: usize = 64;
/// Lines waiting to be written to stdout.
pub const OUT_QUEUE: usize = 1024;
/// Longest message accepted on stdin or from the server.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;
/// Time a child gets to leave after stdin closes, and again after SIGTERM.
pub const CHILD_GRACE: Duration = Duration::from_secs(2);
/// GET stream reconnection backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Resumption attempts for a POST stream that dropped before its response.
const RESUME_ATTEMPTS: u32 = 5;

/// Records a forward session: one tape session for the whole run, a frame per message line.
/// Several threads record, so the shard-style `Recorder` sits behind a mutex (this is beside
/// one client, not on a shard). Dropping it ends the session and flushes the tape.
pub struct TapeSink {
    recorder: Mutex<tape::Recorder>,
    persistence: Mutex<Option<tape::Persistence>>,
    session: u64,
}

impl TapeSink {
    /// Starts recording into `dir`; `upstream` names what the client is connected to.
    pub fn start(dir: &str, upstream: &str) -> std::io::Result<TapeSink> {
        let (persistence, mut recorders) = tape::start(tape::TapeConfig::new(dir), 1)?;
        let recorder = recorders
            .pop()
            .ok_or_else(|| std::io::Error::other("no recorder"))?;
        let session = recorder.new_session_id();
        let sink = TapeSink {
            recorder: Mutex::new(recorder),
            persistence: Mutex::new(Some(persistence)),
            session,
        };
        let meta = serde_json::json!({"upstream": upstream, "protocol_version": "", "client": "stdio", "shard": 0});
        sink.frame(
            Dir::Gateway,
            FrameKind::SessionStart,
            meta.to_string().into_bytes(),
        );
        Ok(sink)
    }

    fn frame(&self, dir: Dir, kind: FrameKind, payload: Vec<u8>) {
        let frame = Frame {
            server: None,
            session: self.session,
            ts_us: tape::now_us(),
            dir,
            kind,
            payload: payload.into(),
        };
        let rec = self.recorder.lock().unwrap_or_else(|p| p.into_inner());
        let mut frame = frame;
        // The `block` policy never applies here (TapeConfig::new is `drop`); loop for safety.
        while let Err(back) = rec.try_record(frame) {
            frame = back;
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Records one message line.
    pub fn message(&self, dir: Dir, line: &[u8]) {
        let kind = FrameKind::Message {
            status: 0,
            sse: false,
            stream: 0,
            event_id: None,
        };
        self.frame(dir, kind, line.to_vec());
    }
}

impl TapeSink {
    /// Ends the session and flushes the tape (once; later frames are dropped and counted).
    pub fn finish(&self) {
        let p = self
            .persistence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(p) = p {
            let end = serde_json::json!({"reason": "forward ended"}).to_string();
            self.frame(Dir::Gateway, FrameKind::SessionEnd, end.into_bytes());
            p.shutdown();
        }
    }
}

impl Drop for TapeSink {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Splits relayed bytes into lines for the tape, without touching the bytes relayed.
struct LineTap<'a> {
    sink: &'a TapeSink,
    dir: Dir,
    partial: Vec<u8>,
}

impl LineTap<'_> {
    fn push(&mut self, data: &[u8]) {
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&rest[..nl]);
            let line = std::mem::take(&mut self.partial);
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            if !line.iter().all(u8::is_ascii_whitespace) {
                self.sink.message(self.dir, line);
            }
            rest = &rest[nl + 1..];
        }
        if self.partial.len() + rest.len() <= MAX_LINE_BYTES {
            self.partial.extend_from_slice(rest);
        }
    }
}

/// `forward stdio -- CMD ARGS`. Returns the child's exit code.
pub fn stdio(cmd: &[String], tapes: Option<&str>) -> i32 {
    let Some((prog, args)) = cmd.split_first() else {
        eprintln!("shardcat forward stdio: a command is required after --");
        return 2;
    };
    let sink = match tapes.map(|d| TapeSink::start(d, &format!("stdio: {}", cmd.join(" ")))) {
        Some(Ok(s)) => Some(Arc::new(s)),
        Some(Err(e)) => {
            eprintln!("shardcat forward stdio: cannot record: {e}");
            return 1;
        }
        None => None,
    };
    let mut child = match Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shardcat forward stdio: cannot start {prog}: {e}");
            return 1;
        }
    };
    let pid = child.id();
    let exited = Arc::new(AtomicBool::new(false));
    forward_signals(pid, exited.clone());
    if let Some(mut cin) = child.stdin.take() {
        let exited = exited.clone();
        let sink = sink.clone();
        // Ends when stdin closes; if the child exits first, the process exit ends it.
        let _ = std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                let mut tap = sink.as_deref().map(|s| LineTap {
                    sink: s,
                    dir: Dir::ClientToServer,
                    partial: Vec::new(),
                });
                let _ = copy_flushing(&mut std::io::stdin().lock(), &mut cin, tap.as_mut());
                drop(cin);
                end_child_after_eof(pid, &exited);
            });
    }
    if let Some(mut cout) = child.stdout.take() {
        let mut tap = sink.as_deref().map(|s| LineTap {
            sink: s,
            dir: Dir::ServerToClient,
            partial: Vec::new(),
        });
        let _ = copy_flushing(&mut cout, &mut std::io::stdout().lock(), tap.as_mut());
    }
    let status = child.wait();
    exited.store(true, Ordering::Release);
    // The stdin thread may still hold a reference: end the tape here.
    if let Some(s) = &sink {
        s.finish();
    }
    match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
        }
        Err(e) => {
            eprintln!("shardcat forward stdio: wait failed: {e}");
            1
        }
    }
}

/// Copies bytes as they come, flushing after each read so no message waits in a buffer.
fn copy_flushing(
    from: &mut impl Read,
    to: &mut impl Write,
    mut tap: Option<&mut LineTap<'_>>,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
        if let Some(t) = tap.as_deref_mut() {
            t.push(&buf[..n]);
        }
        total += n as u64;
    }
}

/// After the client closed stdin: the child gets `CHILD_GRACE` to leave, then SIGTERM, then
/// SIGKILL (the MCP stdio shutdown sequence).
fn end_child_after_eof(pid: u32, exited: &AtomicBool) {
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        let until = Instant::now() + CHILD_GRACE;
        while Instant::now() < until {
            if exited.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: kill has no memory effects; the child is not reaped (exited is false), so its
        // pid is still its own.
        unsafe { libc::kill(pid as libc::pid_t, sig) };
    }
}

/// SIGINT, SIGTERM and SIGHUP are passed to the child; a second one kills it.
fn forward_signals(pid: u32, exited: Arc<AtomicBool>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for (n, _) in signals.forever().enumerate() {
                if exited.load(Ordering::Acquire) {
                    return;
                }
                let sig = if n == 0 { libc::SIGTERM } else { libc::SIGKILL };
                // SAFETY: as in `end_child_after_eof`.
                unsafe { libc::kill(pid as libc::pid_t, sig) };
            }
        });
}

/// Options of `forward http`.
pub struct HttpOptions {
    pub url: String,
    /// Sent as `Authorization` on every request.
    pub authorization: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Record the session into tapes in this directory.
    pub tapes: Option<String>,
}

/// The client's session with the remote server.
#[derive(Default)]
struct Session {
    id: Option<String>,
    version: Option<String>,
    /// The client's initialize request, replayed when the session expires.
    init: Option<Vec<u8>>,
    /// Bumped at each (re)initialize, so concurrent 404s re-initialize once.
    generation: u64,
}

struct Remote {
    opts: HttpOptions,
    agent: ureq::Agent,
    /// For the GET stream: no read timeout, events may be minutes apart.
    stream_agent: ureq::Agent,
    session: Mutex<Session>,
    out: Sender<Vec<u8>>,
    stop: AtomicBool,
    tape: Option<TapeSink>,
}

/// `forward http --url URL`. Returns 0 once stdin closed and the session was ended.
pub fn http(opts: HttpOptions) -> i32 {
    let tape = match opts.tapes.as_deref().map(|d| TapeSink::start(d, &opts.url)) {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            eprintln!("shardcat forward http: cannot record: {e}");
            return 1;
        }
        None => None,
    };
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(opts.connect_timeout)
        .timeout_read(opts.request_timeout)
        .build();
    let stream_agent = ureq::AgentBuilder::new()
        .timeout_connect(opts.connect_timeout)
        .build();
    let (out, out_rx) = bounded::<Vec<u8>>(OUT_QUEUE);
    let remote = Arc::new(Remote {
        opts,
        agent,
        stream_agent,
        session: Mutex::new(Session::default()),
        out,
        stop: AtomicBool::new(false),
        tape,
    });
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let done = done.clone();
        std::thread::spawn(move || write_lines(out_rx, &done))
    };
    let (tokens, token_rx) = bounded::<()>(MAX_IN_FLIGHT);
    let mut listener: Option<std::thread::JoinHandle<()>> = None;
    std::thread::scope(|scope| {
        let mut input = std::io::stdin().lock();
        while let Some(line) = read_line(&mut input) {
            let Some((line, (kind, method, id, name))) = take_message(&remote, line) else {
                continue;
            };
            if method.as_deref() == Some("initialize") {
                // In order: nothing else may be sent before the session exists.
                remote
                    .session
                    .lock()
                    .map(|mut s| s.init = Some(line.clone()))
                    .ok();
                remote.send(&line, id.as_deref(), true);
                continue;
            }
            let opens_stream = method.as_deref() == Some("notifications/initialized");
            // A 2026-07-28 message stands alone: no session, and the headers that version's
            // intermediaries route by.
            let stateless = (mcp::envelope_version(&line).as_deref()
                == Some(mcp::STATELESS_VERSION))
            .then_some(Stateless { method, name });
            let _ = tokens.send(());
            let (remote, token_rx) = (&remote, &token_rx);
            scope.spawn(move || {
                let id = id.as_deref().filter(|_| kind == mcp::Kind::Request);
                match stateless {
                    Some(st) => remote.send_stateless(&line, id, &st),
                    None => remote.send(&line, id, false),
                }
                let _ = token_rx.recv();
            });
            if opens_stream && listener.is_none() {
                let r = remote.clone();
                listener = Some(std::thread::spawn(move || r.listen()));
            }
        }
    });
    finish_http(remote, listener, (writer, done));
    0
}

/// A message read from stdin, recorded and classified: `(kind, method, id, tool name)`. A
/// line that is not one gets its JSON-RPC error on stdout and `None`.
#[allow(clippy::type_complexity)]
fn take_message(
    remote: &Remote,
    line: Result<Vec<u8>, &'static str>,
) -> Option<(
    Vec<u8>,
    (mcp::Kind, Option<String>, Option<String>, Option<String>),
)> {
    let line = match line {
        Ok(l) => {
            if let Some(t) = &remote.tape {
                t.message(Dir::ClientToServer, &l);
            }
            l
        }
        Err(why) => {
            remote.emit(mcp::error_body(None, mcp::code::INVALID_REQUEST, why));
            return None;
        }
    };
    let parts = match mcp::classify(&line) {
        Ok(mcp::Body::Single(m)) => (
            m.kind,
            m.method.map(str::to_string),
            m.id.map(str::to_string),
            m.name,
        ),
        Ok(mcp::Body::Batch(_)) => (mcp::Kind::Request, None, None, None),
        Err(e) => {
            let msg = match e {
                mcp::ClassifyError::Parse(why) => why,
                mcp::ClassifyError::Invalid(why) => why.to_string(),
            };
            remote.emit(mcp::error_body(None, mcp::code::PARSE_ERROR, &msg));
            return None;
        }
    };
    Some((line, parts))
}

/// At stdin's end: the session ends upstream (which ends its stream), the tape closes, and
/// the writer finishes what is queued.
fn finish_http(
    remote: Arc<Remote>,
    listener: Option<std::thread::JoinHandle<()>>,
    (writer, done): (std::thread::JoinHandle<()>, Arc<AtomicBool>),
) {
    remote.stop.store(true, Ordering::Release);
    remote.end_session();
    if let Some(l) = listener {
        // The DELETE above ends the stream; a server that keeps it open is not waited for.
        let until = Instant::now() + Duration::from_secs(2);
        while !l.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(t) = &remote.tape {
        t.finish();
    }
    drop(remote);
    // A stream thread that outlived the wait above still holds a sender: end the writer once
    // what is queued is written, not when every sender is gone.
    done.store(true, Ordering::Release);
    let _ = writer.join();
}

/// What a 2026-07-28 message is sent with.
struct Stateless {
    method: Option<String>,
    name: Option<String>,
}

/// One stdin line (without its newline); `None` at EOF. Over-long lines are skipped with an error.
fn read_line(input: &mut impl BufRead) -> Option<Result<Vec<u8>, &'static str>> {
    loop {
        let mut line = Vec::new();
        let n = input
            .by_ref()
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .ok()?;
        if n == 0 {
            return None;
        }
        if line.len() > MAX_LINE_BYTES {
            // Skip to the end of the line.
            let mut rest = Vec::new();
            let _ = input.read_until(b'\n', &mut rest);
            return Some(Err("message longer than the 4 MiB limit"));
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            return Some(Ok(line));
        }
    }
}

fn write_lines(rx: Receiver<Vec<u8>>, done: &AtomicBool) {
    let stdout = std::io::stdout();
    loop {
        let mut line = match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(l) => l,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) if done.load(Ordering::Acquire) => {
                return
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        for b in line.iter_mut() {
            // JSON whitespace only: raw CR/LF cannot appear inside JSON strings.
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
        line.push(b'\n');
        let mut out = stdout.lock();
        if out.write_all(&line).and_then(|_| out.flush()).is_err() {
            return;
        }
    }
}

impl Remote {
    fn emit(&self, line: Vec<u8>) {
        if let Some(t) = &self.tape {
            t.message(Dir::ServerToClient, &line);
        }
        let _ = self.out.send(line);
    }

    fn fail(&self, id: Option<&str>, why: &str) {
        if id.is_some() {
            self.emit(mcp::error_body(id, mcp::code::SERVER_ERROR, why));
        }
    }

    fn request(&self, agent: &ureq::Agent, method: &str) -> (ureq::Request, u64) {
        let mut req = agent
            .request(method, &self.opts.url)
            .set("accept", "application/json, text/event-stream");
        if let Some(a) = &self.opts.authorization {
            req = req.set("authorization", a);
        }
        let s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = &s.id {
            req = req.set("mcp-session-id", id);
        }
        if let Some(v) = &s.version {
            req = req.set("mcp-protocol-version", v);
        }
        (req, s.generation)
    }

    /// POSTs a 2026-07-28 message with `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name`
    /// and no session id, and relays the answer.
    fn send_stateless(&self, line: &[u8], id: Option<&str>, st: &Stateless) {
        let mut req = self
            .agent
            .request("POST", &self.opts.url)
            .set("accept", "application/json, text/event-stream")
            .set("content-type", "application/json")
            .set("mcp-protocol-version", mcp::STATELESS_VERSION);
        if let Some(a) = &self.opts.authorization {
            req = req.set("authorization", a);
        }
        if let Some(m) = &st.method {
            req = req.set("mcp-method", m);
        }
        // Header values are visible ASCII: a name that is not goes in the body only.
        if let Some(n) = st
            .name
            .as_deref()
            .filter(|n| n.bytes().all(|b| (0x20..0x7f).contains(&b)))
        {
            req = req.set("mcp-name", n);
        }
        match req.send_bytes(line) {
            Ok(r) => {
                self.relay(r, id, false);
            }
            Err(ureq::Error::Status(code, r)) => self.status_error(code, r, id),
            Err(e) => self.fail(id, &format!("server unreachable: {e}")),
        }
    }

    /// An error status: its JSON-RPC body goes to the client when it has one, else an error.
    fn status_error(&self, code: u16, r: ureq::Response, id: Option<&str>) {
        let body = r.into_string().unwrap_or_default();
        if mcp::classify(body.as_bytes()).is_ok() {
            self.emit(body.into_bytes());
        } else {
            self.fail(id, &format!("server answered HTTP {code}"));
        }
    }

    /// POSTs one message and relays the answer. `id`: the request's id, when an answer is owed.
    fn send(&self, line: &[u8], id: Option<&str>, initialize: bool) {
        for attempt in 0..2 {
            let (req, generation) = self.request(&self.agent, "POST");
            let had_session = req.header("mcp-session-id").is_some();
            let resp = req.set("content-type", "application/json").send_bytes(line);
            match resp {
                Ok(r) => {
                    if initialize {
                        self.adopt_session(&r, None);
                    }
                    let tail = self.relay(r, id, false);
                    if let Some(tail) = tail {
                        if initialize {
                            self.adopt_session_version(&tail);
                        }
                    }
                    return;
                }
                Err(ureq::Error::Status(404, _)) if had_session && attempt == 0 && !initialize => {
                    if !self.reinitialize(generation) {
                        self.fail(id, "the server ended the session and refused a new one");
                        return;
                    }
                }
                Err(ureq::Error::Status(code, r)) => {
                    self.status_error(code, r, id);
                    return;
                }
                Err(e) => {
                    self.fail(id, &format!("server unreachable: {e}"));
                    return;
                }
            }
        }
    }

    fn adopt_session(&self, r: &ureq::Response, version: Option<String>) {
        let mut s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = r.header("mcp-session-id") {
            s.id = Some(id.to_string());
        }
        if version.is_some() {
            s.version = version;
        }
        s.generation += 1;
    }

    /// Takes the negotiated protocol version from an initialize response line.
    fn adopt_session_version(&self, response: &[u8]) {
        #[derive(serde::Deserialize)]
        struct R {
            result: Option<V>,
        }
        #[derive(serde::Deserialize)]
        struct V {
            #[serde(rename = "protocolVersion")]
            v: Option<String>,
        }
        let v = serde_json::from_slice::<R>(response)
            .ok()
            .and_then(|r| r.result?.v);
        if v.is_some() {
            self.session
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .version = v;
        }
    }

    /// Relays a response: nothing for 202, one line for JSON, a line per event for SSE. Returns
    /// the final response line, if one came. A stream that drops before the response is resumed
    /// with GET and `Last-Event-ID` when the server gave event ids.
    fn relay(&self, r: ureq::Response, id: Option<&str>, swallow: bool) -> Option<Vec<u8>> {
        if r.status() == 202 {
            return None;
        }
        let sse = r.content_type().eq_ignore_ascii_case("text/event-stream");
        if !sse {
            let mut body = Vec::new();
            if r.into_reader()
                .take(MAX_LINE_BYTES as u64)
                .read_to_end(&mut body)
                .is_err()
            {
                self.fail(id, "server closed the connection mid-answer");
                return None;
            }
            if !swallow {
                self.emit(body.clone());
            }
            return Some(body);
        }
        let mut last_id = None;
        let mut reader: Box<dyn Read + Send> = r.into_reader();
        for attempt in 0..=RESUME_ATTEMPTS {
            if let Some(fin) = self.read_events(&mut reader, id, &mut last_id, swallow) {
                return Some(fin);
            }
            let Some(resume_from) = last_id.clone().filter(|_| attempt < RESUME_ATTEMPTS) else {
                break;
            };
            std::thread::sleep(BACKOFF_MIN * 2u32.pow(attempt));
            let (req, _) = self.request(&self.stream_agent, "GET");
            match req.set("last-event-id", &resume_from).call() {
                Ok(r) if r.content_type().eq_ignore_ascii_case("text/event-stream") => {
                    reader = r.into_reader();
                }
                _ => break,
            }
        }
        self.fail(id, "the server's stream ended before the response");
        None
    }

    /// Reads SSE events until the response to `id` arrives (returned) or the stream ends.
    fn read_events(
        &self,
        reader: &mut Box<dyn Read + Send>,
        id: Option<&str>,
        last_id: &mut Option<String>,
        swallow: bool,
    ) -> Option<Vec<u8>> {
        let mut splitter = SseSplitter::new(MAX_LINE_BYTES);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = reader.read(&mut buf).ok().filter(|&n| n > 0)?;
            splitter.push(&buf[..n]);
            while let Ok(Some(ev)) = splitter.next_event() {
                let f = parse_sse_event(&ev);
                if f.id.is_some() {
                    *last_id = f.id;
                }
                if f.data.is_empty() {
                    continue;
                }
                let done = answers(&f.data, id);
                if done {
                    if !swallow {
                        self.emit(f.data.clone());
                    }
                    return Some(f.data);
                }
                self.emit(f.data);
            }
        }
    }

    /// Sends the client's initialize again after the server forgot the session. Only one
    /// thread does it per generation; the others find it done.
    fn reinitialize(&self, seen_generation: u64) -> bool {
        let init = {
            let mut s = self.session.lock().unwrap_or_else(|p| p.into_inner());
            if s.generation != seen_generation {
                return true;
            }
            s.id = None;
            match s.init.clone() {
                Some(i) => i,
                None => return false,
            }
        };
        log::info!("forward: session expired on the server; initializing again");
        let Ok(r) = self
            .request(&self.agent, "POST")
            .0
            .set("content-type", "application/json")
            .send_bytes(&init)
        else {
            return false;
        };
        self.adopt_session(&r, None);
        let Some(answer) = self.relay(r, None, true) else {
            return false;
        };
        self.adopt_session_version(&answer);
        let note = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        let (req, _) = self.request(&self.agent, "POST");
        req.set("content-type", "application/json")
            .send_bytes(note)
            .is_ok()
    }

    /// Holds the session's GET stream open, resuming after drops, until stdin closes.
    fn listen(&self) {
        let mut last_id: Option<String> = None;
        let mut backoff = BACKOFF_MIN;
        while !self.stop.load(Ordering::Acquire) {
            let (mut req, _) = self.request(&self.stream_agent, "GET");
            if let Some(l) = &last_id {
                req = req.set("last-event-id", l);
            }
            match req.call() {
                Ok(r) if r.content_type().eq_ignore_ascii_case("text/event-stream") => {
                    backoff = BACKOFF_MIN;
                    let mut reader: Box<dyn Read + Send> = r.into_reader();
                    let mut retry = None;
                    self.pump_stream(&mut reader, &mut last_id, &mut retry);
                    if let Some(ms) = retry {
                        backoff = Duration::from_millis(ms).clamp(BACKOFF_MIN, BACKOFF_MAX);
                    }
                }
                // No stream offered (or no session any more): nothing to hold open.
                Err(ureq::Error::Status(405 | 400, _)) => return,
                _ => {}
            }
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(jitter(backoff));
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn pump_stream(
        &self,
        reader: &mut Box<dyn Read + Send>,
        last_id: &mut Option<String>,
        retry: &mut Option<u64>,
    ) {
        let mut splitter = SseSplitter::new(MAX_LINE_BYTES);
        let mut buf = vec![0u8; 16 * 1024];
        while let Some(n) = reader.read(&mut buf).ok().filter(|&n| n > 0) {
            splitter.push(&buf[..n]);
            while let Ok(Some(ev)) = splitter.next_event() {
                let f = parse_sse_event(&ev);
                if f.id.is_some() {
                    *last_id = f.id;
                }
                if f.retry_ms.is_some() {
                    *retry = f.retry_ms;
                }
                if !f.data.is_empty() {
                    self.emit(f.data);
                }
            }
        }
    }

    fn end_session(&self) {
        let has_session = self.session.lock().map(|s| s.id.is_some()).unwrap_or(false);
        if has_session {
            let (req, _) = self.request(&self.agent, "DELETE");
            let _ = req.call();
        }
    }
}

/// Whether an SSE data payload is the response to request `id`.
fn answers(data: &[u8], id: Option<&str>) -> bool {
    let Some(id) = id else { return false };
    matches!(mcp::classify(data), Ok(mcp::Body::Single(m)) if m.kind == mcp::Kind::Response && m.id == Some(id))
}

/// `d` plus up to 25% more, from the clock's low bits (no shared RNG needed here).
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos() as u64);
    let quarter = d.as_millis() as u64 / 4 + 1;
    d + Duration::from_millis(nanos % quarter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_bounded() {
        let mut input = std::io::Cursor::new(b"{\"a\":1}\r\n\n  \n{\"b\":2}".to_vec());
        assert_eq!(read_line(&mut input), Some(Ok(b"{\"a\":1}".to_vec())));
        assert_eq!(read_line(&mut input), Some(Ok(b"{\"b\":2}".to_vec())));
        assert_eq!(read_line(&mut input), None);
        let mut big = vec![b'x'; MAX_LINE_BYTES + 10];
        big.extend_from_slice(b"\n{}\n");
        let mut input = std::io::Cursor::new(big);
        assert!(matches!(read_line(&mut input), Some(Err(_))));
        assert_eq!(read_line(&mut input), Some(Ok(b"{}".to_vec())));
    }

    #[test]
    fn answers_matches_response_ids_only() {
        assert!(answers(
            br#"{"jsonrpc":"2.0","id":3,"result":{}}"#,
            Some("3")
        ));
        assert!(!answers(
            br#"{"jsonrpc":"2.0","id":4,"result":{}}"#,
            Some("3")
        ));
        assert!(!answers(
            br#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#,
            Some("3")
        ));
        assert!(!answers(br#"{"jsonrpc":"2.0","id":3,"result":{}}"#, None));
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        let d = Duration::from_millis(400);
        for _ in 0..100 {
            let j = jitter(d);
            assert!(j >= d && j <= d + Duration::from_millis(101));
        }
    }
}
