//! Relays an upstream response body to the client, in one of three shapes:
//! - a Content-Length body, coalesced with the head into as few writes as possible;
//! - any other non-SSE body, re-chunked as it arrives;
//! - a JSON body to rewrite (a handshake-era answer for a 2026-07-28 client, `era`; a list
//!   answer filtered by the subject's grant, `authz`), read whole, rewritten and sent with
//!   its new Content-Length (chunked or not upstream);
//! - `text/event-stream`, event by event, through a `stream::Stream`: a reader task splits
//!   upstream bytes into events and buffers them, bounded by `max_pending_events` undelivered;
//!   the writer flushes each event as it arrives. A slow client fills the buffer, the reader
//!   stops reading, and TCP pushes back on the upstream. A session's stream is resumable.
//!
//! Invariant: the upstream connection returns to the pool only when its body was read exactly
//! to its end and the upstream allowed keep-alive; on every other path it is closed.

use std::rc::Rc;

use bytes::Bytes;
use monoio::io::AsyncWriteRentExt;

use crate::authz::ListFilter;
use crate::codec::http::{self, BodyDecoder, BodyKind, HeadBody, ReadBuf, ResponseHead};
use crate::error::{Error, Kind, Result};
use crate::metrics::inc;
use crate::shard::sse::{SseCtx, Stream, WriteEnd};
use crate::shard::{ClientConn, Shard};
use crate::tape::{Dir, Tap};
use crate::upstream::http::{read_body, read_upstream};
use crate::upstream::Shape;
use crate::upstream::{Events, HttpAnswer, Source, UpConn};

use super::{respond, stream, Delivery, Outcome};

/// Bytes gathered before a write is issued while relaying a body.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Response headers relayed from the upstream. Everything else (Set-Cookie, the upstream's own
/// session id, hop-by-hop fields) stays behind.
const RELAYED: [&str; 7] = [
    "content-type",
    "cache-control",
    "mcp-protocol-version",
    "retry-after",
    "allow",
    "x-accel-buffering",
    "content-encoding",
];

pub struct RelayEnd {
    /// The client connection is in a clean state for another request.
    pub client_ok: bool,
    /// The answer counts as delivered: the client's socket accepted every byte of the head
    /// and of the body (JSON, or no body), or, for an SSE answer, of the event carrying the
    /// JSON-RPC response (when `Answer::track_answer` asked for it). What the client does
    /// after that (the official Python SDK closes the stream at once) no longer matters.
    pub answered: bool,
}

impl RelayEnd {
    /// A body relayed whole (`ok`) or not: the answer is delivered exactly when it was.
    fn whole(ok: bool) -> RelayEnd {
        RelayEnd {
            client_ok: ok,
            answered: ok,
        }
    }
}

/// How the answer reaches the client, besides the upstream's response.
pub struct Answer<'a> {
    /// A gateway session id to announce (initialize).
    pub session_header: Option<&'a str>,
    /// Where the response is recorded.
    pub tap: Option<Tap>,
    /// Makes an SSE answer a session's resumable stream.
    pub sse: Option<SseCtx>,
    /// Find the event carrying the response in an SSE answer, so that `RelayEnd::answered`
    /// can tell whether it was written (initialize: its session stands or falls by it).
    pub track_answer: bool,
    /// Translates the answer of a handshake-era upstream for a 2026-07-28 client (`era`).
    pub shape: Option<Box<Shape>>,
    /// Filters list answers by the subject's grant (`authz`).
    pub filter: Option<ListFilter>,
}

/// Writes what an upstream kind answered (`Source`) to the client, and records it. One
/// async fn down to the shape's relay: each layer of future here would be moved (copied) per
/// request, which callgrind showed costing more than the rest of this function.
pub async fn relay(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    src: Source,
    d: Delivery,
) -> Result<Outcome> {
    let ans = match src {
        Source::Http(ans) => ans,
        Source::Status(status) => {
            shard.record_status(d.tap, status).await;
            return respond::write_status(conn, status).await;
        }
        Source::Message(line) => {
            let line = match &d.filter {
                Some(f) => f.body(&line).map_or(line, Bytes::from),
                None => line,
            };
            shard
                .record_message(d.tap, Dir::ServerToClient, 200, None, line.clone())
                .await;
            return respond::write_json(conn, d.session.as_deref(), &line).await;
        }
        Source::Events(events) => return stream_events(shard, conn, events, d).await,
    };
    if d.check_hangup && crate::upstream::http::has_hung_up(&conn.stream) {
        // Nobody to relay to; the caller cleans up what it made for the answer.
        shard.give_buffer(ans.rb.into_vec());
        return Err(Error::new(
            Kind::ClientGone,
            "client hung up before the answer",
        ));
    }
    let HttpAnswer {
        head: resp,
        conn: up,
        rb: urb,
        shape,
        member,
        upstream,
    } = ans;
    let mut d = d;
    if let (Some(ctx), Some((server, sid))) = (d.sse.as_mut(), member) {
        // A federated server's stream: reopened on that server, in its session there.
        ctx.origin.server = server;
        ctx.origin.upstream = upstream;
        ctx.origin.upstream_sid = Some(sid);
    }
    let resp = &resp;
    let (session_header, tap) = (d.session.as_deref(), d.tap);
    let end = match resp.body {
        BodyKind::None => relay_empty(shard, conn, (up, urb), resp, (session_header, tap)).await,
        _ if http::is_event_stream(resp.headers.get("content-type")) => {
            let answer = Answer {
                session_header,
                tap,
                sse: d.sse,
                // Only an initialize announces a session, and only its answer decides whether
                // it stands.
                track_answer: d.session.is_some(),
                shape,
                filter: d.filter,
            };
            relay_sse(shard, conn, up, urb, resp, answer).await
        }
        _ if shape.is_some() || d.filter.is_some() => {
            let rewrite = (shape.as_deref(), d.filter.as_ref());
            relay_shaped(shard, conn, up, urb, resp, (tap, rewrite)).await
        }
        BodyKind::Length(len) => {
            let body = Body {
                len,
                tap,
                session_header,
            };
            relay_length(shard, conn, up, urb, resp, body).await
        }
        _ => relay_rechunk(shard, conn, up, urb, resp, session_header, tap).await,
    };
    Ok(Outcome {
        status: resp.status,
        reusable: end.client_ok,
        answered: end.answered,
    })
}

/// A response without a body: its head alone.
async fn relay_empty(
    shard: &Shard,
    conn: &mut ClientConn,
    (up, urb): (UpConn, ReadBuf),
    resp: &ResponseHead,
    (session_header, tap): (Option<&str>, Option<Tap>),
) -> RelayEnd {
    shard.record_status(tap, resp.status).await;
    let framing = if resp.status == 204 || resp.status == 304 {
        HeadBody::None
    } else {
        HeadBody::Length(0)
    };
    let head = client_head(resp, session_header, framing, false);
    finish_upstream(shard, up, urb, resp.keep_alive);
    let (res, _) = conn.stream.write_all(head).await;
    RelayEnd::whole(res.is_ok())
}

/// An SSE answer fed by an upstream kind's events: the reader is a task of its own; this
/// connection writes. A session's stream is resumable: a client that leaves does not cancel
/// the request, its answer waits for a resume.
async fn stream_events(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    events: Events,
    d: Delivery,
) -> Result<Outcome> {
    let mut out = Vec::with_capacity(128);
    http::write_response_head(&mut out, 200, respond::SSE_HEADERS, HeadBody::Chunked);
    respond::write(conn, out).await?;
    let st = stream::open(shard, d.sse, d.tap.map(|t| (t, 200)));
    if let Some(filter) = d.filter {
        st.set_filter(filter);
    }
    let reader = monoio::spawn(stream::pump_events(shard.clone(), st.clone(), events));
    let end = stream::deliver(shard, conn, &st, 1).await;
    if !st.resumable() {
        // The reader owns the request: ending it (dropping its ticket) cancels it upstream.
        reader.await;
    }
    let done = finish_stream(conn, &st, end).await;
    Ok(Outcome::ended(200, done.client_ok))
}

/// Returns the connection to the pool if its response ended cleanly, and the buffer to the shard.
fn finish_upstream(shard: &Shard, up: UpConn, urb: ReadBuf, keep_alive: bool) {
    crate::upstream::http::finish(&shard.up, up, urb, keep_alive);
}

fn client_head(
    resp: &ResponseHead,
    session_header: Option<&str>,
    body: HeadBody,
    sse: bool,
) -> Vec<u8> {
    let mut extra = Vec::with_capacity(256);
    let mut saw_buffering = false;
    let mut saw_cache = false;
    for (name, value) in resp.headers.iter() {
        let Some(keep) = RELAYED.iter().find(|h| name.eq_ignore_ascii_case(h)) else {
            continue;
        };
        saw_buffering |= *keep == "x-accel-buffering";
        saw_cache |= *keep == "cache-control";
        extra.extend_from_slice(keep.as_bytes());
        extra.extend_from_slice(b": ");
        extra.extend_from_slice(value);
        extra.extend_from_slice(b"\r\n");
    }
    if sse && !saw_buffering {
        extra.extend_from_slice(b"x-accel-buffering: no\r\n");
    }
    if sse && !saw_cache {
        extra.extend_from_slice(b"cache-control: no-cache\r\n");
    }
    if let Some(sid) = session_header {
        extra.extend_from_slice(b"mcp-session-id: ");
        extra.extend_from_slice(sid.as_bytes());
        extra.extend_from_slice(b"\r\n");
    }
    let mut out = Vec::with_capacity(extra.len() + 64);
    http::write_response_head(&mut out, resp.status, &extra, body);
    out
}

/// A Content-Length body to relay.
struct Body<'a> {
    len: u64,
    tap: Option<Tap>,
    session_header: Option<&'a str>,
}

/// A copy of a response body for its tape frame, when recording (bounded by the body limit).
fn capture(shard: &Shard, tap: Option<Tap>) -> Option<Vec<u8>> {
    tap.map(|_| Vec::with_capacity(1024))
        .filter(|_| shard.recording())
}

fn capture_more(shard: &Shard, captured: &mut Option<Vec<u8>>, data: &[u8]) {
    if let Some(c) = captured {
        if c.len() + data.len() <= shard.config().limits.max_body_bytes {
            c.extend_from_slice(data);
        }
    }
}

/// Records a relayed body: a JSON-RPC message (or batch) as one frame, an empty one as a status.
async fn record_body(shard: &Shard, tap: Option<Tap>, status: u16, captured: Option<Vec<u8>>) {
    match captured {
        Some(c) if !c.is_empty() => {
            shard
                .record_message(tap, Dir::ServerToClient, status, None, Bytes::from(c))
                .await
        }
        Some(_) => shard.record_status(tap, status).await,
        None => {}
    }
}

async fn relay_length(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    mut up: UpConn,
    mut urb: ReadBuf,
    resp: &ResponseHead,
    body: Body<'_>,
) -> RelayEnd {
    let len = body.len;
    let mut out = client_head(
        resp,
        body.session_header,
        HeadBody::Length(len as usize),
        false,
    );
    let mut captured = capture(shard, body.tap);
    let mut left = len;
    let wait = shard.config().timeouts.upstream_request;
    loop {
        let take = (left.min(urb.data().len() as u64)) as usize;
        capture_more(shard, &mut captured, &urb.data()[..take]);
        out.extend_from_slice(&urb.data()[..take]);
        urb.consume(take);
        left -= take as u64;
        if left == 0 {
            break;
        }
        if out.len() >= WRITE_BATCH_BYTES {
            out = match flush(conn, out).await {
                Some(emptied) => emptied,
                None => return client_gone(shard, urb),
            };
        }
        match read_upstream(&mut up, &mut urb, wait, None).await {
            Ok(n) if n > 0 => {}
            // The upstream broke its promised length: the client cannot get a whole body.
            _ => return upstream_broke(shard, conn, out, urb).await,
        }
    }
    finish_upstream(shard, up, urb, resp.keep_alive);
    record_body(shard, body.tap, resp.status, captured).await;
    let (res, _) = conn.stream.write_all(out).await;
    RelayEnd::whole(res.is_ok())
}

async fn relay_rechunk(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    mut up: UpConn,
    mut urb: ReadBuf,
    resp: &ResponseHead,
    session_header: Option<&str>,
    tap: Option<Tap>,
) -> RelayEnd {
    let mut out = client_head(resp, session_header, HeadBody::Chunked, false);
    let mut dec = BodyDecoder::new(resp.body);
    let mut captured = capture(shard, tap);
    let wait = shard.config().timeouts.upstream_request;
    while let Ok(done) = dec.decode(&mut urb, &mut |d: &[u8]| {
        capture_more(shard, &mut captured, d);
        http::encode_chunk(&mut out, d)
    }) {
        if done {
            out.extend_from_slice(http::LAST_CHUNK);
            finish_upstream(shard, up, urb, resp.keep_alive);
            record_body(shard, tap, resp.status, captured).await;
            let (res, _) = conn.stream.write_all(out).await;
            return RelayEnd::whole(res.is_ok());
        }
        if !out.is_empty() {
            out = match flush(conn, out).await {
                Some(emptied) => emptied,
                None => return client_gone(shard, urb),
            };
        }
        match read_upstream(&mut up, &mut urb, wait, None).await {
            Ok(0) if dec.finish_on_eof().is_ok() => {}
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    // Without the last chunk, the client sees a truncated response rather than a complete one.
    upstream_broke(shard, conn, out, urb).await
}

/// A whole JSON body, translated (`Shaping::body`), filtered (`ListFilter::body`) and sent
/// with its new length. The body is read to its end first, bounded by `max_body_bytes`: past
/// that the client gets 502.
async fn relay_shaped(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    mut up: UpConn,
    mut urb: ReadBuf,
    resp: &ResponseHead,
    (tap, (shape, filter)): (Option<Tap>, Rewrite<'_>),
) -> RelayEnd {
    let max = shard.config().limits.max_body_bytes;
    let wait = shard.config().timeouts.upstream_request;
    let client = Some(&conn.stream);
    let Some(body) = read_body(&mut up, &mut urb, resp.body, max, wait, client).await else {
        return upstream_broke(shard, conn, bad_gateway(), urb).await;
    };
    let body = shape.and_then(|s| s.body(&body)).unwrap_or(body);
    let body = filter.and_then(|f| f.body(&body)).unwrap_or(body);
    finish_upstream(shard, up, urb, resp.keep_alive);
    let mut out = client_head(resp, None, HeadBody::Length(body.len()), false);
    out.extend_from_slice(&body);
    record_body(shard, tap, resp.status, Some(body)).await;
    let (res, _) = conn.stream.write_all(out).await;
    RelayEnd::whole(res.is_ok())
}

/// How a whole JSON body is rewritten: translated for a 2026-07-28 client, then filtered.
type Rewrite<'a> = (Option<&'a Shape>, Option<&'a ListFilter>);

/// A 502 for an answer that could not be read whole, before anything was written.
fn bad_gateway() -> Vec<u8> {
    let body = crate::mcp::error_body(
        None,
        crate::mcp::code::SERVER_ERROR,
        "the upstream's answer broke off or was too large",
    );
    let mut out = Vec::with_capacity(body.len() + 96);
    http::write_response_head(
        &mut out,
        502,
        b"content-type: application/json\r\n",
        HeadBody::Length(body.len()),
    );
    out.extend_from_slice(&body);
    out
}

/// Writes `out`; gives the buffer back emptied, or `None` when the client is gone.
async fn flush(conn: &mut ClientConn, out: Vec<u8>) -> Option<Vec<u8>> {
    let (res, mut back) = conn.stream.write_all(out).await;
    res.ok()?;
    back.clear();
    Some(back)
}

/// The client went away mid-body: the upstream connection (dropped by the caller) is closed.
fn client_gone(shard: &Shard, urb: ReadBuf) -> RelayEnd {
    shard.give_buffer(urb.into_vec());
    RelayEnd::whole(false)
}

/// The upstream failed mid-body: the client gets what arrived, then the connection ends.
async fn upstream_broke(
    shard: &Shard,
    conn: &mut ClientConn,
    out: Vec<u8>,
    urb: ReadBuf,
) -> RelayEnd {
    inc(&shard.stats.upstream_errors);
    let _ = conn.stream.write_all(out).await;
    client_gone(shard, urb)
}

async fn relay_sse(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    up: UpConn,
    urb: ReadBuf,
    resp: &ResponseHead,
    answer: Answer<'_>,
) -> RelayEnd {
    let Answer {
        session_header,
        tap,
        sse: ctx,
        track_answer,
        shape,
        filter,
    } = answer;
    let head = client_head(resp, session_header, HeadBody::Chunked, true);
    let (res, _) = conn.stream.write_all(head).await;
    if res.is_err() {
        shard.give_buffer(urb.into_vec());
        return RelayEnd::whole(false);
    }
    let stream = super::stream::open(shard, ctx, tap.map(|t| (t, resp.status)));
    if track_answer {
        stream.track_answer();
    }
    if let Some(shape) = shape {
        stream.set_shaping(shape);
    }
    if let Some(filter) = filter {
        stream.set_filter(filter);
    }
    let reader = monoio::spawn(super::stream::pump(
        shard.clone(),
        stream.clone(),
        up,
        urb,
        resp.body,
        resp.keep_alive,
    ));
    let end = super::stream::deliver(shard, conn, &stream, 1).await;
    if !stream.resumable() {
        // A stateless stream's reader belongs to this exchange (`deliver` stopped it unless the
        // stream ended). A session stream's reader belongs to the session: it may outlive this
        // connection, for the client to resume.
        reader.await;
    }
    let done = finish_stream(conn, &stream, end).await;
    RelayEnd {
        client_ok: done.client_ok,
        answered: done.client_ok || stream.answered(),
    }
}

/// Ends the client's response the way the stream ended: the last chunk after a clean end or at
/// shutdown (the client knows to reconnect), nothing when the upstream broke (the client sees
/// a truncated stream).
pub async fn finish_stream(conn: &mut ClientConn, stream: &Stream, end: WriteEnd) -> RelayEnd {
    match end {
        WriteEnd::Done if stream.clean() || stream.resumable() => {
            let (res, _) = conn.stream.write_all(http::LAST_CHUNK).await;
            RelayEnd::whole(res.is_ok())
        }
        WriteEnd::Shutdown => {
            let _ = conn.stream.write_all(http::LAST_CHUNK).await;
            RelayEnd::whole(false)
        }
        _ => RelayEnd::whole(false),
    }
}
