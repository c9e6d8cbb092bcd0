//! A stream's state: the bounded buffer between the two halves of an SSE stream (the reader
//! that appends upstream events and the writer that flushes them to a client,
//! `gateway::stream`), with the gateway's own event ids, replay of delivered events, writer
//! attachment and the counts that bound it. A session keeps its streams (`SessionStreams`) so
//! that a client can resume one.
//!
//! Invariants:
//! - an event not yet delivered is never dropped from the buffer (the reader waits for room
//!   instead: `has_room`);
//! - delivered events are kept for replay within `[sse]` count, age and byte bounds (`trim`);
//! - sequence numbers are contiguous from 1; a session stream's events are renamed
//!   `id: <stream>-<seq>`, unique within the session and naming their stream.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::io::Canceller;

use crate::authz::ListFilter;
use crate::codec::sse;
use crate::config::SseConfig;
use crate::mcp::{SessionId, Version};
use crate::metrics::{gauge_add, ShardStats};
use crate::sync::{LocalEvent, LocalNotify};
use crate::tape::Tap;
use crate::upstream::Shape;

/// What a session stream was opened by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// The answer to a POST: done once its responses arrived.
    Post,
    /// The session's GET stream: open until the session ends.
    Get,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Live,
    Ended,
}

/// Where a session stream's upstream lives, to reconnect to it.
#[derive(Debug, Clone)]
pub struct Origin {
    pub session: SessionId,
    /// The server the stream comes from (`Upstreams::server`; 0 unless federated).
    pub server: usize,
    pub upstream: usize,
    pub upstream_sid: Option<Rc<str>>,
    pub version: Version,
    /// Event ids carry the upstream's last event id and this node's incarnation (`rename`):
    /// clustered, one HTTP upstream.
    pub carry: Option<u32>,
}

/// What a clustered session stream's event id carries besides the gateway's own numbering
/// (`rename`, `carried_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried<I> {
    /// Whether the stream was a GET's or a POST's.
    pub kind: StreamKind,
    /// The run of the node that numbered the stream (`ClusterConfig::incarnation`).
    pub incarnation: u32,
    /// The upstream's own id of the event, or of the last one before it that had one.
    pub upstream_id: I,
}

pub(crate) struct Buffered {
    pub(crate) seq: u64,
    pub(crate) at: Instant,
    pub(crate) event: Bytes,
}

pub(crate) struct State {
    pub(crate) events: VecDeque<Buffered>,
    pub(crate) bytes: usize,
    /// Sequence number of the next event (the first is 1).
    pub(crate) next_seq: u64,
    /// Highest sequence number written to a client.
    pub(crate) delivered: u64,
    /// Bytes of events not yet written to a client.
    pub(crate) pending_bytes: usize,
    pub(crate) phase: Phase,
    /// Generation of the writer attached last; an attach supersedes the one before.
    pub(crate) writer: u64,
    pub(crate) attached: bool,
    pub(crate) detached_at: Instant,
    /// The upstream's own id of the last event it sent (for reconnecting).
    pub(crate) upstream_last_id: Option<Vec<u8>>,
    /// The upstream's `retry:` hint.
    pub(crate) retry: Option<Duration>,
    /// Responses a POST stream still waits for.
    pub(crate) responses_left: usize,
    pub(crate) reader_running: bool,
    /// The last upstream body ended cleanly (a stream that broke ends without a last chunk).
    pub(crate) clean: bool,
    /// Look for the first event carrying a JSON-RPC response (`track_answer`).
    pub(crate) track_answer: bool,
    /// Sequence number of that event, once seen.
    pub(crate) answer_seq: Option<u64>,
    /// Highest sequence number whose bytes a client's socket accepted (a write that
    /// completed; `delivered` moves before the write).
    pub(crate) written: u64,
}

/// One SSE stream (see the module doc).
pub struct Stream {
    pub no: u32,
    pub kind: StreamKind,
    /// `Some` for a session's stream: events are renamed, kept and resumable.
    pub(crate) origin: Option<Origin>,
    pub(crate) tap: Option<(Tap, u16)>,
    pub(crate) state: RefCell<State>,
    pub(crate) changed: LocalNotify,
    /// Cancels the reader's upstream read in flight (stop, or a client leaving moves the
    /// reader's deadline): one canceller per stream, not one per read.
    pub(crate) read_cancel: RefCell<Canceller>,
    pub(crate) stop: LocalEvent,
    /// The shard's stats, whose `sse_pending_events` counts this stream's undelivered events.
    pub(crate) stats: Option<Arc<ShardStats>>,
    /// Translates a handshake-era upstream's events for a 2026-07-28 client.
    pub(crate) shaping: RefCell<Option<Box<Shape>>>,
    /// Filters list answers by the subject's grant (`authz`), before they are buffered: a
    /// replayed event is the filtered one.
    pub(crate) filter: RefCell<Option<ListFilter>>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        let left = self.state.borrow().undelivered() as i64;
        self.pending_add(-left);
    }
}

/// What makes an SSE answer a session's resumable stream.
pub struct SseCtx {
    pub origin: Origin,
    pub kind: StreamKind,
    /// Requests a POST answers (its stream is done once their responses arrived).
    pub responses: usize,
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
            filter: RefCell::new(None),
        })
    }

    /// A stream whose undelivered events count in the shard's `sse_pending_events`.
    pub(crate) fn with_stats(
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

    pub(crate) fn pending_add(&self, d: i64) {
        if let Some(stats) = &self.stats {
            gauge_add(&stats.sse_pending_events, d);
        }
    }

    pub fn resumable(&self) -> bool {
        self.origin.is_some()
    }

    /// Translate the upstream's events for a 2026-07-28 client (`Shaping`).
    pub fn set_shaping(&self, shaping: Box<Shape>) {
        *self.shaping.borrow_mut() = Some(shaping);
    }

    /// Filter list answers by the subject's grant (`ListFilter::event`).
    pub fn set_filter(&self, filter: ListFilter) {
        *self.filter.borrow_mut() = Some(filter);
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
    pub(crate) fn interrupt(&self) {
        let mut c = self.read_cancel.borrow_mut();
        let old = std::mem::take(&mut *c);
        *c = old.cancel();
    }

    pub(crate) fn ended(&self) -> bool {
        self.state.borrow().phase == Phase::Ended
    }

    /// Whether the upstream's last body ended cleanly.
    pub fn clean(&self) -> bool {
        self.state.borrow().clean
    }

    /// Trims delivered events: a session stream keeps them for replay within the `[sse]`
    /// bounds; a stateless stream keeps none.
    pub(crate) fn trim(&self, s: &mut State, cfg: &SseConfig) {
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
    pub(crate) fn has_room(&self, events: u64, bytes: usize) -> bool {
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
    pub(crate) fn append(&self, cfg: &SseConfig, raw: Bytes, copy: bool) -> (bool, Option<Bytes>) {
        let raw = match self.shaping.borrow().as_ref() {
            None => raw,
            Some(sh) => match sh.event(raw) {
                Some(r) => r,
                None => return (false, None),
            },
        };
        let raw = match self.filter.borrow().as_ref() {
            None => raw,
            Some(f) => f.event(raw),
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
                let carried = match (
                    self.origin.as_ref().and_then(|o| o.carry),
                    &s.upstream_last_id,
                ) {
                    (Some(incarnation), Some(id)) => Some(Carried {
                        kind: self.kind,
                        incarnation,
                        upstream_id: id.as_slice(),
                    }),
                    _ => None,
                };
                Bytes::from(rename(&raw, self.no, s.next_seq, carried))
            }
        };
        let kept = copy.then(|| event.clone());
        s.push(event);
        self.trim(&mut s, cfg);
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
            // As `sse::parse_sse_event`: an id holding NUL is ignored, never sent upstream as
            // Last-Event-ID.
            b"id" if !value.contains(&0) => out.id = Some(value),
            b"retry" => out.retry_ms = sse::retry_ms(value).or(out.retry_ms),
            _ => {}
        }
    }
    out
}

impl State {
    pub(crate) fn push(&mut self, event: Bytes) {
        self.bytes += event.len();
        self.pending_bytes += event.len();
        self.events.push_back(Buffered {
            seq: self.next_seq,
            at: Instant::now(),
            event,
        });
        self.next_seq += 1;
    }

    pub(crate) fn undelivered(&self) -> u64 {
        self.next_seq - 1 - self.delivered
    }

    /// Forgets delivered events beyond the replay bounds (never undelivered ones).
    /// `bounds`: delivered events, bytes, and age kept.
    pub(crate) fn trim(&mut self, bounds: (usize, usize, Duration), now: Instant) {
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
pub(crate) fn responses_in(data: &[u8]) -> usize {
    match crate::mcp::classify(data) {
        Ok(body) => body
            .messages()
            .iter()
            .filter(|m| m.kind == crate::mcp::Kind::Response)
            .count(),
        Err(_) => 0,
    }
}

/// The longest upstream event id a gateway event id carries; a longer one is not carried
/// (the stream then resumes only on the node holding it).
pub const MAX_CARRIED_ID_BYTES: usize = 255;

/// The event with its `id` lines replaced by the gateway's `id: <stream>-<seq>`. With
/// `carried` (a clustered session's stream), the id goes on as
/// `.<g|p><incarnation, 8 hex>.<base64url of the upstream id>`: what another node needs to
/// resume the stream from the upstream (`carried_id`).
pub fn rename(raw: &[u8], stream: u32, seq: u64, carried: Option<Carried<&[u8]>>) -> Vec<u8> {
    use base64::Engine;
    let mut out = Vec::with_capacity(raw.len() + 24);
    out.extend_from_slice(format!("id: {stream}-{seq}").as_bytes());
    if let Some(c) = carried.filter(|c| c.upstream_id.len() <= MAX_CARRIED_ID_BYTES) {
        let kind = match c.kind {
            StreamKind::Get => 'g',
            StreamKind::Post => 'p',
        };
        out.extend_from_slice(format!(".{kind}{:08x}.", c.incarnation).as_bytes());
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.upstream_id);
        out.extend_from_slice(text.as_bytes());
    }
    out.push(b'\n');
    // Lines end in CR too: an upstream id after one must go as well, or it would win.
    for (line, whole) in sse::lines(raw) {
        let is_id = line == b"id" || line.starts_with(b"id:");
        if !is_id {
            out.extend_from_slice(whole);
        }
    }
    out
}

/// Parses a gateway event id, `<stream>-<seq>` (and whatever it carries, see `rename`).
pub fn parse_event_id(raw: &[u8]) -> Option<(u32, u64)> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    let ours = text.split('.').next()?;
    let (stream, seq) = ours.split_once('-')?;
    Some((stream.parse().ok()?, seq.parse().ok()?))
}

/// What a gateway event id carries (`rename`). A client sends it back, so the upstream id is
/// checked as the header value it becomes: no control bytes.
pub fn carried_id(raw: &[u8]) -> Option<Carried<Vec<u8>>> {
    use base64::Engine;
    // The gateway id first, parsed as `parse_event_id` parses the whole.
    parse_event_id(raw)?;
    let text = std::str::from_utf8(raw).ok()?.trim();
    let mut parts = text.splitn(3, '.').skip(1);
    let tag = parts.next()?;
    let kind = match tag.get(..1)? {
        "g" => StreamKind::Get,
        "p" => StreamKind::Post,
        _ => return None,
    };
    let hex = tag.get(1..).filter(|h| h.len() == 8)?;
    let incarnation = u32::from_str_radix(hex, 16).ok()?;
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts.next()?)
        .ok()?;
    let fits = (1..=MAX_CARRIED_ID_BYTES).contains(&id.len());
    (fits && id.iter().all(|&b| b >= 0x20 && b != 0x7f)).then_some(Carried {
        kind,
        incarnation,
        upstream_id: id,
    })
}

/// The resumable streams of one session, oldest first, at most `max_streams_per_session`.
#[derive(Default)]
pub struct SessionStreams {
    next: u32,
    list: VecDeque<Rc<Stream>>,
    /// The last GET stream opened, kept even when `list` forgot it (a stdio session feeds
    /// one GET stream at a time: `gateway::route`).
    last_get: Option<Rc<Stream>>,
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
        if stream.kind == StreamKind::Get {
            self.last_get = Some(stream.clone());
        }
        self.list.push_back(stream);
    }

    /// The last GET stream opened.
    pub fn last_get(&self) -> Option<Rc<Stream>> {
        self.last_get.clone()
    }

    pub fn find(&self, no: u32) -> Option<Rc<Stream>> {
        self.list.iter().find(|s| s.no == no).cloned()
    }

    /// Whether a client is reading one of the streams right now.
    pub fn watched(&self) -> bool {
        self.list.iter().chain(&self.last_get).any(|s| s.in_use())
    }

    /// Stops every stream (the session ended).
    pub fn stop_all(&mut self) {
        for s in self.list.drain(..).chain(self.last_get.take()) {
            s.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_replaces_upstream_ids_and_keeps_the_rest() {
        let raw = b"id: 17\nevent: message\ndata: {\"a\":1}\n\n";
        let out = rename(raw, 3, 9, None);
        assert_eq!(out, b"id: 3-9\nevent: message\ndata: {\"a\":1}\n\n");
        let f = sse::parse_sse_event(&out);
        assert_eq!(f.id.as_deref(), Some("3-9"));
        assert_eq!(f.data, b"{\"a\":1}");
        let cr = rename(b"data: x\rid: 17\r\r", 3, 9, None);
        assert_eq!(cr, b"id: 3-9\ndata: x\r\r");
    }

    #[test]
    fn event_ids_parse_and_reject_foreign_ones() {
        assert_eq!(parse_event_id(b"3-9"), Some((3, 9)));
        assert_eq!(parse_event_id(b" 12-0 "), Some((12, 0)));
        assert_eq!(parse_event_id(b"17"), None);
        assert_eq!(parse_event_id(b"a-b"), None);
        assert_eq!(parse_event_id(b"\xff-1"), None);
        assert_eq!(
            parse_event_id(b"3-9.g0000a1b2.MTc"),
            Some((3, 9)),
            "carrying"
        );
    }

    #[test]
    fn event_ids_carry_the_upstream_id_for_another_node() {
        let raw = b"id: stream-a_17\ndata: {}\n\n";
        fn carried<I>(kind: StreamKind, id: I) -> Carried<I> {
            Carried {
                kind,
                incarnation: 0xa1b2,
                upstream_id: id,
            }
        }
        let out = rename(
            raw,
            3,
            9,
            Some(carried(StreamKind::Get, &b"stream-a_17"[..])),
        );
        let text = String::from_utf8(out).unwrap();
        let id = text.lines().next().unwrap().strip_prefix("id: ").unwrap();
        assert_eq!(parse_event_id(id.as_bytes()), Some((3, 9)));
        let c = carried_id(id.as_bytes()).unwrap();
        assert_eq!(c, carried(StreamKind::Get, b"stream-a_17".to_vec()));
        let post = rename(raw, 1, 2, Some(carried(StreamKind::Post, &b"x"[..])));
        let post = String::from_utf8(post).unwrap();
        assert!(post.starts_with("id: 1-2.p0000a1b2.eA\n"), "{post}");
        assert_eq!(carried_id(b"3-9"), None, "nothing carried");
        assert_eq!(carried_id(b"3-9.x0000a1b2.eA"), None, "unknown kind");
        assert_eq!(carried_id(b"3-9.g00a1b2.eA"), None, "short incarnation");
        assert_eq!(carried_id(b"3-9.g0000a1b2.!!"), None, "not base64url");
        assert_eq!(
            carried_id(b"3-9.g0000a1b2.DQo"),
            None,
            "CR LF would split a header"
        );
        assert_eq!(carried_id(b"x-9.g0000a1b2.eA"), None, "not ours");
        let long = vec![b'a'; MAX_CARRIED_ID_BYTES + 1];
        let out = rename(raw, 3, 9, Some(carried(StreamKind::Get, long.as_slice())));
        assert!(out.starts_with(b"id: 3-9\n"), "too long to carry");
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
}
