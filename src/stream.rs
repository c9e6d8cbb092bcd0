//! SSE streams from an HTTP upstream to a client, made resumable for sessions.
//!
//! A stream has two halves joined by a bounded buffer: the reader (`pump`, a task that owns the
//! upstream connection) splits upstream bytes into events and appends them; the writer
//! (`deliver`, on the client's connection) flushes them in order. For a session's stream the
//! gateway names every event itself, `id: <stream>-<seq>`, unique within the session and naming
//! its stream, and keeps delivered events for a while: a client whose connection broke sends
//! GET with `Last-Event-ID` and `resume` continues that same stream from the next event. When
//! the upstream's stream drops, the reader reconnects (GET with the upstream's own last event
//! id), with exponential backoff and jitter, so the client sees one continuous stream.
//! A stateless (2026-07-28) stream is not resumable: its events pass unchanged and a client
//! that goes away cancels it.
//!
//! Invariants:
//! - an event not yet delivered is never dropped from the buffer: at `max_pending_events`
//!   undelivered events, or `max_pending_bytes` of them, the reader stops reading, so TCP
//!   pushes back on the upstream;
//! - delivered events are kept for replay within `[sse]` count, age and byte bounds;
//! - an event is only ever sent on its own stream, in order, from any writer;
//! - a reader always ends: when its upstream stream ends for good, when its session ends
//!   (`stop`), at shutdown, after `sse_idle_timeout_ms` without an event, or when no client
//!   resumes a detached stream within `resume_window_ms`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::io::{AsyncWriteRentExt, Canceller};

use crate::codec::http::{self, BodyDecoder, BodyKind, ReadBuf};
use crate::codec::sse;
use crate::codec::sse::SseSplitter;
use crate::mcp::{SessionId, Version};
use crate::metrics::{gauge_add, inc, ShardStats};
use crate::record::{SseMeta, Tap};
use crate::shard::{ClientConn, Shard};
use crate::sync::{LocalEvent, LocalNotify};
use crate::tape::Dir;
use crate::upstream::UpConn;

/// Bytes gathered before a write is issued while delivering events.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// What a session stream was opened by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// The answer to a POST: done once its responses arrived.
    Post,
    /// The session's GET stream: open until the session ends.
    Get,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Live,
    Ended,
}

/// Where a session stream's upstream lives, to reconnect to it.
#[derive(Debug, Clone)]
pub struct Origin {
    pub session: SessionId,
    pub upstream: usize,
    pub upstream_sid: Option<Rc<str>>,
    pub version: Version,
}

struct Buffered {
    seq: u64,
    at: Instant,
    event: Bytes,
}

struct State {
    events: VecDeque<Buffered>,
    bytes: usize,
    /// Sequence number of the next event (the first is 1).
    next_seq: u64,
    /// Highest sequence number written to a client.
    delivered: u64,
    /// Bytes of events not yet written to a client.
    pending_bytes: usize,
    phase: Phase,
    /// Generation of the writer attached last; an attach supersedes the one before.
    writer: u64,
    attached: bool,
    detached_at: Instant,
    /// The upstream's own id of the last event it sent (for reconnecting).
    upstream_last_id: Option<Vec<u8>>,
    /// The upstream's `retry:` hint.
    retry: Option<Duration>,
    /// Responses a POST stream still waits for.
    responses_left: usize,
    reader_running: bool,
    /// The last upstream body ended cleanly (a stream that broke ends without a last chunk).
    clean: bool,
    /// Look for the first event carrying a JSON-RPC response (`track_answer`).
    track_answer: bool,
    /// Sequence number of that event, once seen.
    answer_seq: Option<u64>,
    /// Highest sequence number whose bytes a client's socket accepted (a write that
    /// completed; `delivered` moves before the write).
    written: u64,
}

/// One SSE stream (see the module doc).
pub struct Stream {
    pub no: u32,
    pub kind: StreamKind,
    /// `Some` for a session's stream: events are renamed, kept and resumable.
    origin: Option<Origin>,
    tap: Option<(Tap, u16)>,
    state: RefCell<State>,
    changed: LocalNotify,
    /// Cancels the reader's upstream read in flight (stop, or a client leaving moves the
    /// reader's deadline): one canceller per stream, not one per read.
    read_cancel: RefCell<Canceller>,
    stop: LocalEvent,
    /// The shard's stats, whose `sse_pending_events` counts this stream's undelivered events.
    stats: Option<Arc<ShardStats>>,
    /// Translates a handshake-era upstream's events for a 2026-07-28 client.
    shaping: RefCell<Option<Shaping>>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        let left = self.state.borrow().undelivered() as i64;
        self.pending_add(-left);
    }
}

/// Gives answers from a handshake-era upstream the 2026-07-28 shape, for a 2026-07-28 client
/// (`era`): the response gets that version's fields, and the upstream's own requests, which
/// the client cannot take, are dropped and handed to `refuse` (which answers them upstream).
pub struct Shaping {
    /// The request's method (decides the result's fields).
    pub method: Box<str>,
    /// The gateway's id for the request in the shared session, and the client's id and
    /// progress token to restore (many clients share that session: their ids would clash).
    pub ids: Option<(u64, Box<str>, Option<Box<str>>)>,
    /// Called with the raw JSON id of a request the upstream sent.
    pub refuse: Box<dyn Fn(Bytes)>,
}

impl Shaping {
    /// One upstream event as the client gets it; `None` drops it.
    pub fn event(&self, raw: Bytes) -> Option<Bytes> {
        let ev = sse::parse_sse_event(&raw);
        let Ok(crate::mcp::Body::Single(m)) = crate::mcp::classify(&ev.data) else {
            return Some(raw);
        };
        match m.kind {
            crate::mcp::Kind::Request => {
                (self.refuse)(Bytes::copy_from_slice(m.id.unwrap_or("null").as_bytes()));
                None
            }
            crate::mcp::Kind::Response => {
                let data = self.body(&ev.data)?;
                Some(Bytes::from(sse_message(ev.id.as_deref(), &data)))
            }
            crate::mcp::Kind::Notification => match self.restore(&ev.data) {
                None => Some(raw),
                Some(data) => Some(Bytes::from(sse_message(ev.id.as_deref(), &data))),
            },
        }
    }

    /// A whole JSON answer as the client gets it: the client's id back, the 2026-07-28 shape.
    pub fn body(&self, body: &[u8]) -> Option<Vec<u8>> {
        let restored = self.restore(body);
        let body = restored.as_deref().unwrap_or(body);
        crate::mcp::modern_result(body, &self.method).or_else(|| restored.clone())
    }

    fn restore(&self, line: &[u8]) -> Option<Vec<u8>> {
        let (gw, id, token) = self.ids.as_ref()?;
        crate::stdio::restore(line, *gw, id, token.as_deref())
    }
}

/// One `message` event carrying `data` (a JSON line), with its id when it had one.
fn sse_message(id: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 48);
    out.extend_from_slice(b"event: message\n");
    if let Some(id) = id {
        out.extend_from_slice(format!("id: {id}\n").as_bytes());
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out
}

/// What makes an SSE answer a session's resumable stream.
pub struct SseCtx {
    pub origin: Origin,
    pub kind: StreamKind,
    /// Requests a POST answers (its stream is done once their responses arrived).
    pub responses: usize,
}

/// A new stream. With a context (and the session still there) it is numbered and kept in its
/// session for resumption; otherwise it is a plain, stateless one.
pub fn open(shard: &Shard, ctx: Option<SseCtx>, tap: Option<(Tap, u16)>) -> Rc<Stream> {
    let plain = || Stream::with_stats(0, StreamKind::Post, None, tap, 0, &shard.stats);
    let Some(ctx) = ctx else {
        return plain();
    };
    let mut sessions = shard.sessions.borrow_mut();
    let Some(session) = sessions.get_mut(&ctx.origin.session) else {
        return plain();
    };
    let no = session.sse.next_no();
    let stream = Stream::with_stats(
        no,
        ctx.kind,
        Some(ctx.origin),
        tap,
        ctx.responses,
        &shard.stats,
    );
    session
        .sse
        .keep(stream.clone(), shard.config().sse.max_streams_per_session);
    stream
}

/// How a writer ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteEnd {
    /// The stream ended; the caller writes the last chunk.
    Done,
    ClientGone,
    Shutdown,
    /// Another connection resumed the stream.
    Superseded,
}

impl Stream {
    /// A stream. `origin`: a session's (resumable); `None`: stateless. `responses` is the number
    /// of requests a POST stream answers.
    pub fn new(
        no: u32,
        kind: StreamKind,
        origin: Option<Origin>,
        tap: Option<(Tap, u16)>,
        responses: usize,
    ) -> Rc<Stream> {
        Rc::new(Stream {
            no,
            kind,
            origin,
            tap,
            state: RefCell::new(State {
                events: VecDeque::new(),
                bytes: 0,
                next_seq: 1,
                delivered: 0,
                pending_bytes: 0,
                phase: Phase::Live,
                writer: 0,
                attached: false,
                detached_at: Instant::now(),
                upstream_last_id: None,
                retry: None,
                responses_left: responses,
                reader_running: false,
                clean: false,
                track_answer: false,
                answer_seq: None,
                written: 0,
            }),
            changed: LocalNotify::default(),
            read_cancel: RefCell::new(Canceller::new()),
            stop: LocalEvent::default(),
            stats: None,
            shaping: RefCell::new(None),
        })
    }

    /// A stream whose undelivered events count in the shard's `sse_pending_events`.
    fn with_stats(
        no: u32,
        kind: StreamKind,
        origin: Option<Origin>,
        tap: Option<(Tap, u16)>,
        responses: usize,
        stats: &Arc<ShardStats>,
    ) -> Rc<Stream> {
        let mut s = Stream::new(no, kind, origin, tap, responses);
        if let Some(s) = Rc::get_mut(&mut s) {
            s.stats = Some(stats.clone());
        }
        s
    }

    fn pending_add(&self, d: i64) {
        if let Some(stats) = &self.stats {
            gauge_add(&stats.sse_pending_events, d);
        }
    }

    pub fn resumable(&self) -> bool {
        self.origin.is_some()
    }

    /// Translate the upstream's events for a 2026-07-28 client (`Shaping`).
    pub fn set_shaping(&self, shaping: Shaping) {
        *self.shaping.borrow_mut() = Some(shaping);
    }

    /// Watch for the event that carries the JSON-RPC response (see `answered`). Off by
    /// default: it costs a classification per event until the response is seen.
    pub fn track_answer(&self) {
        self.state.borrow_mut().track_answer = true;
    }

    /// Whether the event carrying the response (`track_answer`) was written to a client:
    /// its write completed, so the client's socket holds the whole event.
    pub fn answered(&self) -> bool {
        let s = self.state.borrow();
        s.answer_seq.is_some_and(|seq| s.written >= seq)
    }

    /// Ends the stream: its reader stops and its writer finishes what is buffered.
    pub fn stop(&self) {
        self.stop.set();
        self.changed.notify_all();
        self.interrupt();
    }

    /// Cancels the reader's upstream read in flight, if any (it then looks at its state).
    fn interrupt(&self) {
        let mut c = self.read_cancel.borrow_mut();
        let old = std::mem::take(&mut *c);
        *c = old.cancel();
    }

    fn ended(&self) -> bool {
        self.state.borrow().phase == Phase::Ended
    }

    /// Whether the upstream's last body ended cleanly.
    pub fn clean(&self) -> bool {
        self.state.borrow().clean
    }

    /// Trims delivered events: a session stream keeps them for replay within the `[sse]`
    /// bounds; a stateless stream keeps none.
    fn trim(&self, s: &mut State, shard: &Shard) {
        let cfg = &shard.config().sse;
        let bounds = if self.resumable() {
            (
                cfg.replay_max_events,
                cfg.replay_max_bytes,
                cfg.replay_max_age,
            )
        } else {
            (0, 0, Duration::ZERO)
        };
        s.trim(bounds, Instant::now());
    }

    /// Whether a reader should be started for a client resuming this stream: a session's GET
    /// stream from an HTTP upstream whose upstream half ended is opened again.
    pub fn needs_reader(&self) -> bool {
        let s = self.state.borrow();
        let http = self
            .origin
            .as_ref()
            .is_some_and(|o| o.upstream_sid.is_some());
        http && self.kind == StreamKind::Get && !s.reader_running && !self.stop.is_set()
    }

    /// Whether another event fits in the undelivered bounds (one always does).
    fn has_room(&self, events: u64, bytes: usize) -> bool {
        let s = self.state.borrow();
        s.undelivered() == 0 || (s.undelivered() < events && s.pending_bytes < bytes)
    }

    /// Live, with a client reading it right now.
    pub fn in_use(&self) -> bool {
        let s = self.state.borrow();
        s.phase == Phase::Live && s.attached && !self.stop.is_set()
    }

    /// Appends one upstream event (renamed for a session stream). Events without data or id
    /// (comments, `retry:` alone) are not forwarded: the gateway sends its own keepalives.
    /// Appends an event (renamed for a session stream). Returns whether it was kept, and a copy
    /// when `copy` (for recording; the common path takes no extra reference).
    fn append(&self, shard: &Shard, raw: Bytes, copy: bool) -> (bool, Option<Bytes>) {
        let raw = match self.shaping.borrow().as_ref() {
            None => raw,
            Some(sh) => match sh.event(raw) {
                Some(r) => r,
                None => return (false, None),
            },
        };
        let scan = scan(&raw);
        let mut s = self.state.borrow_mut();
        if let Some(ms) = scan.retry_ms {
            s.retry = Some(Duration::from_millis(ms));
        }
        if !scan.has_data && scan.id.is_none() {
            return (false, None);
        }
        if s.track_answer
            && s.answer_seq.is_none()
            && scan.has_data
            && responses_in(&sse::parse_sse_event(&raw).data) > 0
        {
            s.answer_seq = Some(s.next_seq);
        }
        let event = match &self.origin {
            None => raw,
            Some(_) => {
                if let Some(id) = scan.id {
                    let last = s.upstream_last_id.get_or_insert_with(Vec::new);
                    last.clear();
                    last.extend_from_slice(id);
                }
                if self.kind == StreamKind::Post && scan.has_data && s.responses_left > 0 {
                    let answered = responses_in(&sse::parse_sse_event(&raw).data);
                    s.responses_left = s.responses_left.saturating_sub(answered);
                }
                Bytes::from(rename(&raw, self.no, s.next_seq))
            }
        };
        let kept = copy.then(|| event.clone());
        s.push(event);
        self.trim(&mut s, shard);
        self.pending_add(1);
        (true, kept)
    }
}

/// What `append` needs of an event, found without allocating.
struct Scan<'a> {
    has_data: bool,
    id: Option<&'a [u8]>,
    retry_ms: Option<u64>,
}

fn scan(event: &[u8]) -> Scan<'_> {
    let mut out = Scan {
        has_data: false,
        id: None,
        retry_ms: None,
    };
    for (name, value) in sse::sse_fields(event) {
        match name {
            b"data" => out.has_data = true,
            b"id" => out.id = Some(value),
            b"retry" => out.retry_ms = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()),
            _ => {}
        }
    }
    out
}

impl State {
    fn push(&mut self, event: Bytes) {
        self.bytes += event.len();
        self.pending_bytes += event.len();
        self.events.push_back(Buffered {
            seq: self.next_seq,
            at: Instant::now(),
            event,
        });
        self.next_seq += 1;
    }

    fn undelivered(&self) -> u64 {
        self.next_seq - 1 - self.delivered
    }

    /// Forgets delivered events beyond the replay bounds (never undelivered ones).
    /// `bounds`: delivered events, bytes, and age kept.
    fn trim(&mut self, bounds: (usize, usize, Duration), now: Instant) {
        let (max_events, max_bytes, max_age) = bounds;
        while let Some(front) = self.events.front() {
            let kept = self.events.len() as u64 - self.undelivered().min(self.events.len() as u64);
            let over = kept > max_events as u64
                || self.bytes > max_bytes
                || now.duration_since(front.at) > max_age;
            if front.seq > self.delivered || !over {
                break;
            }
            self.bytes -= front.event.len();
            self.events.pop_front();
        }
    }
}

/// Responses in an event's data: one message, or a batch of them.
fn responses_in(data: &[u8]) -> usize {
    match crate::mcp::classify(data) {
        Ok(body) => body
            .messages()
            .iter()
            .filter(|m| m.kind == crate::mcp::Kind::Response)
            .count(),
        Err(_) => 0,
    }
}

/// The event with its `id` lines replaced by the gateway's `id: <stream>-<seq>`.
fn rename(raw: &[u8], stream: u32, seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 24);
    out.extend_from_slice(format!("id: {stream}-{seq}\n").as_bytes());
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let is_id = line.starts_with(b"id:") || line.trim_ascii_end() == b"id";
        if !is_id {
            out.extend_from_slice(line);
        }
    }
    out
}

/// Parses a gateway event id, `<stream>-<seq>`.
pub fn parse_event_id(raw: &[u8]) -> Option<(u32, u64)> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    let (stream, seq) = text.split_once('-')?;
    Some((stream.parse().ok()?, seq.parse().ok()?))
}

/// The resumable streams of one session, oldest first, at most `max_streams_per_session`.
#[derive(Default)]
pub struct SessionStreams {
    next: u32,
    list: VecDeque<Rc<Stream>>,
}

impl std::fmt::Debug for SessionStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionStreams({} kept)", self.list.len())
    }
}

impl SessionStreams {
    /// A number for the session's next stream.
    pub fn next_no(&mut self) -> u32 {
        self.next += 1;
        self.next
    }

    /// Keeps `stream` for resumption, forgetting the oldest ended stream (or else the oldest)
    /// past `max`. A forgotten live stream goes on for its current client; it just cannot be
    /// resumed.
    pub fn keep(&mut self, stream: Rc<Stream>, max: usize) {
        while self.list.len() >= max {
            let at = self.list.iter().position(|s| s.ended()).unwrap_or(0);
            self.list.remove(at);
        }
        self.list.push_back(stream);
    }

    pub fn find(&self, no: u32) -> Option<Rc<Stream>> {
        self.list.iter().find(|s| s.no == no).cloned()
    }

    /// Stops every stream (the session ended).
    pub fn stop_all(&mut self) {
        for s in self.list.drain(..) {
            s.stop();
        }
    }
}

/// Flushes the stream's events from sequence `from` on, with `:` keepalive comments while idle.
/// Runs until the stream ends, the client goes, another client resumes it, or shutdown.
pub async fn deliver(shard: &Shard, conn: &mut ClientConn, stream: &Stream, from: u64) -> WriteEnd {
    let me = {
        let mut s = stream.state.borrow_mut();
        s.writer += 1;
        s.attached = true;
        s.writer
    };
    gauge_add(&shard.stats.sse_streams, 1);
    let end = write_loop(shard, conn, stream, from, me).await;
    gauge_add(&shard.stats.sse_streams, -1);
    let mut s = stream.state.borrow_mut();
    if s.writer == me {
        s.attached = false;
        s.detached_at = Instant::now();
    }
    drop(s);
    if end != WriteEnd::Done && end != WriteEnd::Superseded && !stream.resumable() {
        // Closing a stateless stream cancels its request.
        stream.stop();
    }
    stream.changed.notify_all();
    if stream.resumable() {
        // Detached: the reader's deadline is now the end of the resume window.
        stream.interrupt();
    }
    end
}

async fn write_loop(
    shard: &Shard,
    conn: &mut ClientConn,
    stream: &Stream,
    from: u64,
    me: u64,
) -> WriteEnd {
    let keepalive = shard.config().timeouts.sse_keepalive;
    let mut cursor = from;
    let mut out = Vec::with_capacity(4096);
    {
        let s = stream.state.borrow();
        if s.events.front().map_or(s.next_seq, |f| f.seq) > from {
            // The buffer no longer holds events the client asked for.
            inc(&shard.stats.sse_replay_gaps);
        }
    }
    loop {
        out.clear();
        let (n, ended) = {
            let mut s = stream.state.borrow_mut();
            if s.writer != me {
                return WriteEnd::Superseded;
            }
            let mut n = 0u64;
            // Sequence numbers are contiguous: start at the cursor's index, not at the front
            // (which holds delivered events kept for replay).
            let front = s.events.front().map_or(cursor, |f| f.seq);
            let start = cursor.saturating_sub(front) as usize;
            let mut sent = 0;
            for b in s.events.range(start.min(s.events.len())..) {
                if out.len() >= WRITE_BATCH_BYTES {
                    break;
                }
                http::encode_chunk(&mut out, &b.event);
                cursor = b.seq + 1;
                n += 1;
                if b.seq > s.delivered {
                    sent += b.event.len();
                }
            }
            s.pending_bytes -= sent;
            // Events the buffer no longer holds were skipped (counted above).
            cursor = cursor.max(s.events.front().map_or(s.next_seq, |f| f.seq));
            if n > 0 {
                let before = s.undelivered();
                s.delivered = s.delivered.max(cursor - 1);
                stream.pending_add(s.undelivered() as i64 - before as i64);
                stream.trim(&mut s, shard);
            }
            (n, s.phase == Phase::Ended && cursor >= s.next_seq)
        };
        if n > 0 {
            stream.changed.notify_all();
            shard
                .stats
                .sse_events
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        } else if ended {
            return WriteEnd::Done;
        } else {
            // Checked and armed with no await between: a notification cannot slip past.
            let woke = monoio::select! {
                biased;
                _ = stream.changed.notified() => true,
                _ = shard.shutdown.wait() => return WriteEnd::Shutdown,
                _ = crate::upstream::http::client_hung_up(&conn.stream) => return WriteEnd::ClientGone,
                _ = monoio::time::sleep(keepalive) => false,
            };
            if woke {
                continue;
            }
            http::encode_chunk(&mut out, b":\n\n");
        }
        let (res, back) = conn.stream.write_all(out).await;
        out = back;
        if res.is_err() {
            return WriteEnd::ClientGone;
        }
        if n > 0 {
            let mut s = stream.state.borrow_mut();
            s.written = s.written.max(cursor - 1);
        }
    }
}

/// Why an upstream body stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyEnd {
    /// The upstream ended the body cleanly.
    Complete,
    /// Read error, bad framing or an event too large.
    Broken,
    /// No event within `sse_idle_timeout_ms`.
    Idle,
    /// The stream was stopped, or nobody resumed it in time, or shutdown.
    Stopped,
}

/// The reader half: relays the upstream body into the stream, then, for a session stream whose
/// upstream dropped before its end, reconnects. Owns the upstream connection.
pub async fn pump(
    shard: Rc<Shard>,
    stream: Rc<Stream>,
    up: UpConn,
    urb: ReadBuf,
    kind: BodyKind,
    keep_alive: bool,
) {
    reader_started(&shard, &stream);
    read_on(&shard, &stream, Some((up, urb, kind, keep_alive))).await;
    reader_done(&shard, &stream, None);
}

/// An upstream response to read: connection, buffer, framing, keep-alive.
type UpBody = (UpConn, ReadBuf, BodyKind, bool);

/// Reads upstream bodies into the stream, reconnecting while that is worthwhile.
async fn read_on(shard: &Rc<Shard>, stream: &Rc<Stream>, first: Option<UpBody>) {
    let (shard, stream) = (shard.clone(), stream.clone());
    let mut next = first;
    while let Some((up, urb, kind, keep_alive)) = next.take() {
        let end = read_body(&shard, &stream, up, urb, kind, keep_alive).await;
        stream.state.borrow_mut().clean = end == BodyEnd::Complete;
        if end == BodyEnd::Broken {
            inc(&shard.stats.upstream_errors);
        }
        if !should_reconnect(&shard, &stream, end) {
            break;
        }
        next = reconnect(&shard, &stream).await;
    }
}

/// Marks a stream's reader running (any producer: an HTTP upstream or a stdio child).
pub fn reader_started(shard: &Shard, stream: &Stream) {
    stream.state.borrow_mut().reader_running = true;
    gauge_add(&shard.stats.sse_upstream_streams, 1);
}

/// Marks a stream's reader finished: its writer ends once it delivered everything. `clean`
/// overrides how the last body ended (`None`: as recorded). A session's GET stream from an
/// HTTP upstream may be reopened by a later resume.
pub fn reader_done(shard: &Shard, stream: &Stream, clean: Option<bool>) {
    gauge_add(&shard.stats.sse_upstream_streams, -1);
    let mut s = stream.state.borrow_mut();
    s.reader_running = false;
    s.phase = Phase::Ended;
    if let Some(c) = clean {
        s.clean = c;
    }
    drop(s);
    stream.changed.notify_all();
}

/// Appends one raw SSE event from a producer, waiting for room. False when the stream must
/// stop instead (stopped, shutdown, or not resumed in time).
pub async fn feed(shard: &Shard, stream: &Stream, raw: Bytes) -> bool {
    offer(shard, stream, raw).await.is_none()
}

/// Runs `fut` unless the stream is stopped, the shard shuts down, or a detached stream is not
/// resumed in time (`None` then). `stop` is checked first, so a stopped reader never polls
/// `fut` again (a single-consumer queue keeps only its last waiter).
pub async fn guard<F: std::future::Future>(
    shard: &Shard,
    stream: &Stream,
    fut: F,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    loop {
        let deadline = detach_deadline(shard, stream);
        monoio::select! {
            biased;
            _ = stream.stop.wait() => return None,
            _ = shard.shutdown.wait() => return None,
            r = &mut fut => return Some(r),
            _ = sleep_until(deadline) => {
                if abandoned(shard, stream) {
                    return None;
                }
            }
        }
    }
}

fn should_reconnect(shard: &Shard, stream: &Stream, end: BodyEnd) -> bool {
    if end == BodyEnd::Idle {
        inc(&shard.stats.sse_idle_timeouts);
    }
    let Some(origin) = &stream.origin else {
        return false;
    };
    if matches!(end, BodyEnd::Stopped | BodyEnd::Idle) || stream.stop.is_set() {
        return false;
    }
    if origin.upstream_sid.is_none() {
        return false;
    }
    let s = stream.state.borrow();
    match stream.kind {
        // A POST stream is resumed only when the upstream names its events (it supports
        // resumption) and an answer is still owed.
        StreamKind::Post => s.responses_left > 0 && s.upstream_last_id.is_some(),
        StreamKind::Get => true,
    }
}

/// Reads one upstream body into the stream.
async fn read_body(
    shard: &Rc<Shard>,
    stream: &Rc<Stream>,
    mut up: UpConn,
    mut urb: ReadBuf,
    kind: BodyKind,
    keep_alive: bool,
) -> BodyEnd {
    let mut dec = BodyDecoder::new(kind);
    let mut split = SseSplitter::new(shard.config().limits.max_event_bytes);
    let mut last_event = Instant::now();
    let wake = monoio::time::sleep_until(wake_at(shard, stream, last_event).into());
    let mut wake = std::pin::pin!(wake);
    let end = loop {
        let done = match dec.decode(&mut urb, &mut |d: &[u8]| split.push(d)) {
            Ok(d) => d,
            Err(_) => break BodyEnd::Broken,
        };
        loop {
            match split.next_event() {
                Ok(Some(ev)) => {
                    last_event = Instant::now();
                    if let Some(end) = offer(shard, stream, ev).await {
                        return finish(shard, up, urb, end, false);
                    }
                }
                Ok(None) => break,
                Err(_) => return finish(shard, up, urb, BodyEnd::Broken, false),
            }
        }
        if done {
            let rest = split.take_rest();
            if !rest.is_empty() {
                if let Some(end) = offer(shard, stream, rest).await {
                    return finish(shard, up, urb, end, false);
                }
            }
            break BodyEnd::Complete;
        }
        match read_more(
            shard,
            stream,
            (&mut up, &mut urb),
            last_event,
            wake.as_mut(),
        )
        .await
        {
            Ok(0) => {
                if dec.finish_on_eof().is_err() {
                    break BodyEnd::Broken;
                }
            }
            Ok(_) => {}
            Err(end) => break end,
        }
    };
    finish(shard, up, urb, end, keep_alive)
}

/// Gives back the upstream connection (to the pool after a clean end) and the buffer.
fn finish(shard: &Shard, mut up: UpConn, urb: ReadBuf, end: BodyEnd, keep_alive: bool) -> BodyEnd {
    if end == BodyEnd::Complete {
        up.streamed();
        crate::relay::finish_upstream(shard, up, urb, keep_alive);
    } else {
        shard.give_buffer(urb.into_vec());
    }
    end
}

/// Appends an event, first waiting for room while `max_pending_events` are undelivered.
/// `Some(end)` when the stream must stop instead.
async fn offer(shard: &Shard, stream: &Stream, raw: Bytes) -> Option<BodyEnd> {
    let limits = &shard.config().limits;
    let cap = limits.max_pending_events as u64;
    let cap_bytes = limits.max_pending_bytes;
    let mut waited = false;
    loop {
        if stream.stop.is_set() || shard.shutdown.is_set() {
            return Some(BodyEnd::Stopped);
        }
        if stream.has_room(cap, cap_bytes) {
            break;
        }
        if !waited {
            inc(&shard.stats.sse_backpressure_waits);
            waited = true;
        }
        let deadline = detach_deadline(shard, stream);
        monoio::select! {
            _ = stream.changed.notified() => {}
            _ = shard.shutdown.wait() => {}
            _ = sleep_until(deadline) => {
                if abandoned(shard, stream) {
                    return Some(BodyEnd::Stopped);
                }
            }
        }
    }
    let (kept, copy) = stream.append(shard, raw, stream.tap.is_some());
    if kept {
        stream.changed.notify_all();
    }
    if let Some(event) = copy {
        record(shard, stream, &event).await;
    }
    None
}

/// When a detached session stream is given up (far in the future while a client reads it).
fn detach_deadline(shard: &Shard, stream: &Stream) -> Option<Instant> {
    let s = stream.state.borrow();
    (!s.attached && stream.resumable()).then(|| s.detached_at + shard.config().sse.resume_window)
}

/// A detached stream nobody resumed within the window.
fn abandoned(shard: &Shard, stream: &Stream) -> bool {
    let gone = detach_deadline(shard, stream).is_some_and(|d| Instant::now() >= d);
    if gone {
        inc(&shard.stats.sse_abandoned);
        log::debug!(
            "shard {}: SSE stream {} not resumed in time; closed",
            shard.id,
            stream.no
        );
    }
    gone
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => monoio::time::sleep(at.saturating_duration_since(Instant::now())).await,
        None => std::future::pending().await,
    }
}

/// When a reader must look up from its upstream: the idle deadline, or the end of the detach
/// window when no client is attached.
fn wake_at(shard: &Shard, stream: &Stream, last_event: Instant) -> Instant {
    let idle_at = last_event + shard.config().timeouts.sse_idle;
    detach_deadline(shard, stream).map_or(idle_at, |d| d.min(idle_at))
}

/// Reads more upstream bytes, watching the idle timeout, the detach window and `stop`. The
/// timer `wake` lives across reads and is only moved when it fires early (an event came since
/// it was set): one timer per idle period instead of one per read.
async fn read_more(
    shard: &Shard,
    stream: &Stream,
    conn: (&mut UpConn, &mut ReadBuf),
    last_event: Instant,
    mut wake: std::pin::Pin<&mut monoio::time::Sleep>,
) -> Result<usize, BodyEnd> {
    let (up, urb) = conn;
    loop {
        if stream.stop.is_set() || shard.shutdown.is_set() {
            return Err(BodyEnd::Stopped);
        }
        let handle = stream.read_cancel.borrow().handle();
        let read = urb.fill_cancelable(up.stream(), handle);
        let mut read = std::pin::pin!(read);
        let first = monoio::select! {
            biased;
            r = &mut read => Some(r),
            _ = wake.as_mut() => None,
        };
        let r = match first {
            Some(r) => r,
            None => {
                stream.interrupt();
                read.await
            }
        };
        match r {
            Ok(n) => return Ok(n),
            Err(_) if stream.stop.is_set() || shard.shutdown.is_set() => {
                return Err(BodyEnd::Stopped)
            }
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {
                if abandoned(shard, stream) {
                    return Err(BodyEnd::Stopped);
                }
                if Instant::now() >= last_event + shard.config().timeouts.sse_idle {
                    return Err(BodyEnd::Idle);
                }
                wake.as_mut()
                    .reset(wake_at(shard, stream, last_event).into());
            }
            Err(_) => return Err(BodyEnd::Broken),
        }
    }
}

/// Records an event carrying data (comments and priming events are not messages).
async fn record(shard: &Shard, stream: &Stream, event: &[u8]) {
    let Some((tap, status)) = stream.tap else {
        return;
    };
    let f = sse::parse_sse_event(event);
    if f.data.is_empty() {
        return;
    }
    let sse = SseMeta {
        event_id: f.id.map(Bytes::from),
    };
    shard
        .record_message(
            Some(tap),
            Dir::ServerToClient,
            status,
            Some(sse),
            Bytes::from(f.data),
        )
        .await;
}

/// A new upstream response for a dropped session stream: GET with the upstream's last event
/// id, retried with exponential backoff and full jitter (honouring the upstream's `retry:`).
async fn reconnect(shard: &Rc<Shard>, stream: &Stream) -> Option<UpBody> {
    let origin = stream.origin.as_ref()?;
    let cfg = &shard.config().sse;
    let mut delay = stream.state.borrow().retry.unwrap_or(cfg.reconnect_base);
    for attempt in 1..=cfg.reconnect_max_attempts {
        let jittered = jitter(delay);
        let deadline = Some(Instant::now() + jittered);
        monoio::select! {
            _ = sleep_until(deadline) => {}
            _ = stream.stop.wait() => return None,
            _ = shard.shutdown.wait() => return None,
        }
        if abandoned(shard, stream) {
            return None;
        }
        inc(&shard.stats.sse_upstream_reconnects);
        let last_id = stream.state.borrow().upstream_last_id.clone();
        let last_id = last_id
            .as_deref()
            .and_then(|id| std::str::from_utf8(id).ok());
        match crate::proxy::reopen_stream(shard, origin, last_id).await {
            Ok((up, urb, head)) => {
                log::info!(
                    "shard {}: SSE stream {} reconnected upstream (attempt {attempt})",
                    shard.id,
                    stream.no
                );
                return Some((up, urb, head.body, head.keep_alive));
            }
            Err(crate::proxy::Reopen::Gone(why)) => {
                log::info!("shard {}: SSE stream {} ends: {why}", shard.id, stream.no);
                return None;
            }
            Err(crate::proxy::Reopen::Retry(why)) => {
                log::debug!(
                    "shard {}: SSE stream {} reconnect attempt {attempt} failed: {why}",
                    shard.id,
                    stream.no
                );
            }
        }
        delay = (delay * 2).min(cfg.reconnect_max);
    }
    inc(&shard.stats.sse_reconnect_failures);
    log::warn!(
        "shard {}: SSE stream {} could not reconnect upstream; ended",
        shard.id,
        stream.no
    );
    None
}

/// A delay in [d/2, d]: reconnecting clients spread out instead of arriving together.
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let span = (d - half).as_micros() as u64;
    let r = (crate::mcp::random_secret() as u64) % span.max(1);
    half + Duration::from_micros(r)
}

/// Starts the reader of a session's GET stream again, for a client resuming it after its
/// upstream half ended.
pub fn restart(shard: &Rc<Shard>, stream: &Rc<Stream>) {
    stream.state.borrow_mut().phase = Phase::Live;
    reader_started(shard, stream);
    let shard = shard.clone();
    let stream = stream.clone();
    monoio::spawn(async move {
        let first = reconnect(&shard, &stream).await;
        read_on(&shard, &stream, first).await;
        reader_done(&shard, &stream, None);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_replaces_upstream_ids_and_keeps_the_rest() {
        let raw = b"id: 17\nevent: message\ndata: {\"a\":1}\n\n";
        let out = rename(raw, 3, 9);
        assert_eq!(out, b"id: 3-9\nevent: message\ndata: {\"a\":1}\n\n");
        let f = sse::parse_sse_event(&out);
        assert_eq!(f.id.as_deref(), Some("3-9"));
        assert_eq!(f.data, b"{\"a\":1}");
    }

    #[test]
    fn event_ids_parse_and_reject_foreign_ones() {
        assert_eq!(parse_event_id(b"3-9"), Some((3, 9)));
        assert_eq!(parse_event_id(b" 12-0 "), Some((12, 0)));
        assert_eq!(parse_event_id(b"17"), None);
        assert_eq!(parse_event_id(b"a-b"), None);
        assert_eq!(parse_event_id(b"\xff-1"), None);
    }

    #[test]
    fn trim_keeps_undelivered_events_and_bounds_delivered_ones() {
        let st = Stream::new(1, StreamKind::Get, None, None, 0);
        let mut s = st.state.borrow_mut();
        for _ in 0..10 {
            s.push(Bytes::from_static(b"data: x\n\n"));
        }
        let now = Instant::now();
        let keep = |events, bytes| (events, bytes, Duration::from_secs(60));
        s.trim(keep(2, usize::MAX), now);
        assert_eq!(s.events.len(), 10, "nothing delivered: nothing may go");
        s.delivered = 6;
        s.trim(keep(2, usize::MAX), now);
        // 4 undelivered (7..=10) and the last 2 delivered (5, 6) stay.
        let seqs: Vec<u64> = s.events.iter().map(|b| b.seq).collect();
        assert_eq!(seqs, [5, 6, 7, 8, 9, 10]);
        s.delivered = 10;
        s.trim(keep(100, 9 * 3), now);
        assert_eq!(s.events.len(), 3, "byte bound: three 9-byte events");
        assert_eq!(s.bytes, 27);
    }

    #[test]
    fn session_keeps_a_bounded_set_forgetting_ended_streams_first() {
        let mut ss = SessionStreams::default();
        let mk =
            |ss: &mut SessionStreams| Stream::new(ss.next_no(), StreamKind::Post, None, None, 1);
        let a = mk(&mut ss);
        let b = mk(&mut ss);
        let c = mk(&mut ss);
        b.state.borrow_mut().phase = Phase::Ended;
        ss.keep(a.clone(), 2);
        ss.keep(b.clone(), 2);
        ss.keep(c.clone(), 2);
        assert!(ss.find(b.no).is_none(), "the ended stream goes first");
        assert!(ss.find(a.no).is_some() && ss.find(c.no).is_some());
        ss.stop_all();
        assert!(a.stop.is_set() && c.stop.is_set());
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(100));
            assert!(j >= Duration::from_millis(50) && j <= Duration::from_millis(100));
        }
    }
}
