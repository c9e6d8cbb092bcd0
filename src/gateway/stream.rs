//! The two halves of an SSE stream to a client, joined by its buffer (`shard::sse::Stream`):
//! the reader (`pump` for an HTTP upstream's body, `pump_events` for a stdio child's events), a
//! task that appends events, and the writer (`deliver`, on the client's connection) that
//! flushes them in order, with `:` keepalives while idle. A client whose connection broke
//! sends GET with `Last-Event-ID` and `route::resume` continues that same stream from the
//! next event. When an HTTP upstream's stream drops, the reader reconnects (GET with the
//! upstream's own last event id), with exponential backoff and jitter, so the client sees one
//! continuous stream. A stateless (2026-07-28) stream is not resumable: its events pass
//! unchanged and a client that goes away cancels it.
//!
//! Invariants:
//! - at `max_pending_events` undelivered events, or `max_pending_bytes` of them, the reader
//!   stops reading, so TCP pushes back on the upstream;
//! - an event is only ever sent on its own stream, in order, from any writer;
//! - a reader always ends: when its upstream stream ends for good, when its session ends
//!   (`stop`), at shutdown, after `sse_idle_timeout_ms` without an event, or when no client
//!   resumes a detached stream within `resume_window_ms`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::io::AsyncWriteRentExt;

use crate::codec::http::{self, BodyDecoder, BodyKind, ReadBuf};
use crate::codec::sse;
use crate::codec::sse::SseSplitter;
use crate::gateway::record::SseMeta;
use crate::metrics::{gauge_add, inc};
use crate::shard::sse::{Phase, SseCtx, Stream, StreamKind, WriteEnd};
use crate::shard::{ClientConn, Shard};
use crate::tape::{Dir, Tap};
use crate::upstream::http::Reopen;
use crate::upstream::{Events, UpConn};

/// Bytes gathered before a write is issued while delivering events.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

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
        let Some((n, ended)) = gather(shard, stream, me, &mut cursor, &mut out) else {
            return WriteEnd::Superseded;
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
                _ = crate::timer::sleep(keepalive) => false,
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

/// Encodes the events from `cursor` on into `out` (up to `WRITE_BATCH_BYTES`), moves the
/// cursor and the delivered mark past them, and trims what replay no longer needs. Returns
/// the events taken and whether the stream is over; `None` when another writer took over.
fn gather(
    shard: &Shard,
    stream: &Stream,
    me: u64,
    cursor: &mut u64,
    out: &mut Vec<u8>,
) -> Option<(u64, bool)> {
    let mut s = stream.state.borrow_mut();
    if s.writer != me {
        return None;
    }
    let mut n = 0u64;
    // Sequence numbers are contiguous: start at the cursor's index, not at the front (which
    // holds delivered events kept for replay).
    let front = s.events.front().map_or(*cursor, |f| f.seq);
    let start = cursor.saturating_sub(front) as usize;
    let mut sent = 0;
    for b in s.events.range(start.min(s.events.len())..) {
        if out.len() >= WRITE_BATCH_BYTES {
            break;
        }
        http::encode_chunk(out, &b.event);
        *cursor = b.seq + 1;
        n += 1;
        if b.seq > s.delivered {
            sent += b.event.len();
        }
    }
    s.pending_bytes -= sent;
    // Events the buffer no longer holds were skipped (counted by the caller).
    *cursor = (*cursor).max(s.events.front().map_or(s.next_seq, |f| f.seq));
    if n > 0 {
        let before = s.undelivered();
        s.delivered = s.delivered.max(*cursor - 1);
        stream.pending_add(s.undelivered() as i64 - before as i64);
        stream.trim(&mut s, &shard.config().sse);
    }
    Some((n, s.phase == Phase::Ended && *cursor >= s.next_seq))
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

/// The reader half for events of a kind other than HTTP (a stdio child's): appends them until
/// they end or the stream stops; dropping `events` then cancels what is still pending
/// upstream. `stop` is checked before each poll (`guard`), so a stopped reader never polls
/// again.
pub async fn pump_events(shard: Rc<Shard>, stream: Rc<Stream>, mut events: Events) {
    reader_started(&shard, &stream);
    while let Some(Some(ev)) = guard(&shard, &stream, events.next()).await {
        if !feed_from(&shard, &stream, ev, events.member()).await {
            break;
        }
    }
    drop(events);
    reader_done(&shard, &stream, Some(true));
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
    offer(shard, stream, raw, None).await.is_none()
}

/// `feed`, for an event from member `member` of a federated route (`Events::member`): it is
/// recorded as that server's (a merged GET stream carries several servers' events).
async fn feed_from(shard: &Shard, stream: &Stream, raw: Bytes, member: Option<usize>) -> bool {
    offer(shard, stream, raw, member).await.is_none()
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
    let mut wake = crate::timer::sleep_until(wake_at(shard, stream, last_event));
    let end = loop {
        let done = match dec.decode(&mut urb, &mut |d: &[u8]| split.push(d)) {
            Ok(d) => d,
            Err(_) => break BodyEnd::Broken,
        };
        loop {
            match split.next_event() {
                Ok(Some(ev)) => {
                    last_event = Instant::now();
                    if let Some(end) = offer(shard, stream, ev, None).await {
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
                if let Some(end) = offer(shard, stream, rest, None).await {
                    return finish(shard, up, urb, end, false);
                }
            }
            break BodyEnd::Complete;
        }
        match read_more(shard, stream, (&mut up, &mut urb), last_event, &mut wake).await {
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
        crate::upstream::http::finish(&shard.up, up, urb, keep_alive);
    } else {
        shard.give_buffer(urb.into_vec());
    }
    end
}

/// Appends an event, first waiting for room while `max_pending_events` are undelivered.
/// `Some(end)` when the stream must stop instead. `member`: the federated server it came
/// from, when the stream's tap does not say (`None`: as the tap says).
async fn offer(
    shard: &Shard,
    stream: &Stream,
    raw: Bytes,
    member: Option<usize>,
) -> Option<BodyEnd> {
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
    let (kept, copy) = stream.append(&shard.config().sse, raw, stream.tap.is_some());
    if kept {
        stream.changed.notify_all();
    }
    if let Some(event) = copy {
        record(shard, stream, &event, member).await;
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
        Some(at) => crate::timer::sleep_until(at).await,
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
    wake: &mut crate::timer::Sleep,
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
            _ = &mut *wake => None,
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
                wake.reset(wake_at(shard, stream, last_event));
            }
            Err(_) => return Err(BodyEnd::Broken),
        }
    }
}

/// Records an event carrying data (comments and priming events are not messages).
async fn record(shard: &Shard, stream: &Stream, event: &[u8], member: Option<usize>) {
    let Some((mut tap, status)) = stream.tap else {
        return;
    };
    if member.is_some() {
        tap = tap.via(member);
    }
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
    stream.origin.as_ref()?;
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
        match reopen_once(shard, stream, attempt).await {
            Ok(body) => return Some(body),
            Err(true) => return None,
            Err(false) => {}
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

/// One attempt to reopen a session stream upstream. `Err(true)`: the stream ends for good;
/// `Err(false)`: worth another attempt.
async fn reopen_once(
    shard: &Rc<Shard>,
    stream: &Stream,
    attempt: u32,
) -> std::result::Result<UpBody, bool> {
    let origin = stream.origin.as_ref().ok_or(true)?;
    let sid = origin.upstream_sid.as_deref().ok_or(true)?;
    let last_id = stream.state.borrow().upstream_last_id.clone();
    let last_id = last_id
        .as_deref()
        .and_then(|id| std::str::from_utf8(id).ok());
    let to = (origin.upstream, sid, origin.version.as_str());
    let (id, no) = (shard.id, stream.no);
    let up = shard.up.server(origin.server);
    match crate::upstream::http::reopen(&up, to, last_id).await {
        Ok((up, urb, head)) => {
            log::info!("shard {id}: SSE stream {no} reconnected upstream (attempt {attempt})");
            Ok((up, urb, head.body, head.keep_alive))
        }
        Err(Reopen::Forgotten) => {
            log::info!("shard {id}: SSE stream {no} ends: the upstream forgot its session");
            let why = "upstream forgot the session";
            crate::gateway::session::end_local(shard, &origin.session, why);
            Err(true)
        }
        Err(Reopen::Gone(why)) => {
            log::info!("shard {id}: SSE stream {no} ends: {why}");
            Err(true)
        }
        Err(Reopen::Retry(why)) => {
            log::debug!("shard {id}: SSE stream {no} reconnect attempt {attempt} failed: {why}");
            Err(false)
        }
    }
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
    fn jitter_stays_within_half_to_full() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(100));
            assert!(j >= Duration::from_millis(50) && j <= Duration::from_millis(100));
        }
    }
}
