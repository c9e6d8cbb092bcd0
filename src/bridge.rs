//! The HTTP face of stdio upstreams: answers Streamable HTTP requests from a child process.
//!
//! A request's answer is `application/json` when the child's first message about it is the
//! response, and `text/event-stream` when notifications or server requests come first (each its
//! own event, flushed at once). Server messages about no request go to the session's GET
//! stream. Stateless 2026-07-28 requests are multiplexed over the shard's gateway-initialized
//! children; `server/discover` is answered from their initialize result.
//!
//! Invariants: every request ends with exactly one answer (response, JSON-RPC error, or nothing
//! when the client hung up); a request that ends early drops its `Ticket`, which cancels it in
//! the child.

use std::rc::Rc;
use std::time::Duration;

use monoio::io::AsyncWriteRentExt;

use crate::codec::http::{self, HeadBody, RequestHead};
use crate::error::{Error, Kind, Result};
use crate::mcp::{self, SessionId};
use crate::metrics::{gauge_add, inc};
use crate::proxy::Outcome;
use crate::record::Tap;
use crate::relay;
use crate::shard::{ClientConn, Shard};
use crate::stdio::{Child, Era, Host, Next, Role, Ticket};
use crate::stream::{SseCtx, Stream};
use crate::tape::Dir;

/// How long a wait runs before it also watches for the client hanging up (as for HTTP
/// upstreams: quick answers cost no extra poll).
const HANGUP_ARM_DELAY: Duration = Duration::from_millis(20);

const SSE_HEADERS: &[u8] =
    b"content-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n";

fn host(shard: &Shard) -> Result<&Rc<Host>> {
    shard
        .stdio
        .as_ref()
        .ok_or_else(|| Error::new(Kind::Internal, "no stdio upstream on this shard"))
}

/// Whether the client takes an SSE answer (an absent Accept takes anything).
fn sse_ok(head: &RequestHead) -> bool {
    head.headers.get("accept").is_none_or(|a| {
        a.windows(17)
            .any(|w| w.eq_ignore_ascii_case(b"text/event-stream"))
    })
}

/// `initialize`: a child (prewarmed when one is ready) under a session and a process permit.
/// The session exists once the child answered with a result.
pub async fn initialize(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    body: &[u8],
    id: Option<&str>,
    tape: Option<u64>,
) -> Result<Outcome> {
    let host = host(shard)?;
    if !crate::proxy::acquire_session(shard) {
        shard.stats.count_rejection("sessions");
        return Err(Error::new(Kind::Overloaded("sessions"), ""));
    }
    let cell = crate::proxy::open_client_session(shard, conn)?;
    let child = match host.take_for_session() {
        Ok(c) => c,
        Err(e) => {
            shard.shared.sessions.release();
            shard.shared.clients.close_session(cell);
            if let Kind::Overloaded(what) = e.kind {
                shard.stats.count_rejection(what);
            }
            return Err(e);
        }
    };
    let version = crate::proxy::requested_version(body);
    let mut minted: Option<SessionId> = None;
    let mut on_final = |line: &[u8]| -> Option<String> {
        if !is_result(line) {
            return None;
        }
        let sid = shard
            .sessions
            .borrow_mut()
            .insert(None, version, std::time::Instant::now());
        if let Some(s) = shard.sessions.borrow_mut().get_mut(&sid) {
            s.child = Some(child.clone());
            s.tape = tape;
            s.client = Some(cell);
        }
        inc(&shard.stats.sessions_created);
        gauge_add(&shard.stats.sessions, 1);
        let (sh, gone) = (shard.clone(), sid);
        child.on_exit(Box::new(move || {
            log::warn!("shard {}: stdio server gone: its session ends", sh.id);
            crate::proxy::end_session_local(&sh, &gone, "stdio server exited");
        }));
        minted = Some(sid);
        Some(sid.encode())
    };
    // No SSE for initialize: the session id must be known before the head is written. No
    // hang-up watch either: a session created for a client that left is ended below.
    let tap = tape.map(|session| Tap { session, stream: 1 });
    let result = match child.request(body) {
        Ok(ticket) => {
            let how = Answer {
                sse: false,
                watch_hangup: false,
                id,
                tap,
                stream: None,
                modern: None,
            };
            answer(shard, conn, ticket, how, Some(&mut on_final)).await
        }
        Err(e) => Err(e),
    };
    match minted {
        None => {
            child.end();
            shard.shared.sessions.release();
            shard.shared.clients.close_session(cell);
        }
        // As for HTTP upstreams: the session stands once its JSON answer was written.
        Some(sid) if !result.as_ref().is_ok_and(|o| o.answered) => {
            log::info!(
                "shard {}: client missed its initialize answer; ending the session",
                shard.id
            );
            crate::proxy::end_session_local(shard, &sid, "client missed the initialize answer");
        }
        Some(_) => {}
    }
    result
}

/// Whether a response line carries a result (not an error).
fn is_result(line: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct R<'a> {
        #[serde(borrow)]
        result: Option<&'a serde_json::value::RawValue>,
    }
    serde_json::from_slice::<R<'_>>(line).is_ok_and(|r| r.result.is_some())
}

/// A POST on a stdio session: requests are answered, notifications and responses get 202.
pub async fn post(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    head: &RequestHead,
    body: &[u8],
    msg: &mcp::Message<'_>,
    child: Rc<Child>,
    sink: Sink,
) -> Result<Outcome> {
    let tap = sink.tap;
    if msg.kind == mcp::Kind::Request {
        let ticket = child.request(body)?;
        let how = Answer::streaming(head, msg, sink);
        return answer(shard, conn, ticket, how, None).await;
    }
    child.notify(body)?;
    accepted(shard, conn, tap).await
}

/// A 2026-07-28 request on a shard's stateless children.
pub async fn stateless(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    head: &RequestHead,
    body: &[u8],
    msg: &mcp::Message<'_>,
    tap: Option<Tap>,
) -> Result<Outcome> {
    let host = host(shard)?;
    let timeout = shard.config().timeouts.upstream_request;
    let child = host.stateless_child(timeout).await.inspect_err(|e| {
        if let Kind::Overloaded(what) = e.kind {
            shard.stats.count_rejection(what);
        }
    })?;
    debug_assert_eq!(child.role(), Role::Stateless);
    let handshake = child.era() == Era::Handshake;
    match (msg.kind, msg.method) {
        // A handshake-era child was initialized by the gateway: its initialize result answers.
        (mcp::Kind::Request, Some("server/discover")) if handshake => {
            let line = bytes::Bytes::from(discover(&child, msg.id.unwrap_or("null"))?);
            shard
                .record_message(tap, Dir::ServerToClient, 200, None, line.clone())
                .await;
            write_json(conn, None, &line).await
        }
        (mcp::Kind::Request, method) => {
            let stripped = handshake.then(|| mcp::strip_envelope(body)).flatten();
            let ticket = child.request(stripped.as_deref().unwrap_or(body))?;
            let sink = Sink { tap, sse: None };
            let mut how = Answer::streaming(head, msg, sink);
            how.modern = method.filter(|_| handshake);
            answer(shard, conn, ticket, how, None).await
        }
        _ => {
            let stripped = handshake.then(|| mcp::strip_envelope(body)).flatten();
            child.notify(stripped.as_deref().unwrap_or(body))?;
            accepted(shard, conn, tap).await
        }
    }
}

/// The `server/discover` answer built from the child's initialize result.
fn discover(child: &Child, id: &str) -> Result<Vec<u8>> {
    let init = child.init_result.borrow();
    init.as_deref()
        .and_then(|b| mcp::discover_from_initialize(b, id))
        .ok_or_else(|| Error::new(Kind::Internal, "stdio server has no initialize result"))
}

/// The session's GET stream: server messages about no request, resumable like any session
/// stream. A second GET while a client reads the first gets 409; one whose client left is
/// replaced.
pub async fn get(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    child: Rc<Child>,
    tap: Option<Tap>,
    ctx: SseCtx,
) -> Result<Outcome> {
    let old = child.get_stream.borrow().clone();
    if let Some(old) = old {
        if old.in_use() {
            return Err(Error::new(
                Kind::Conflict,
                "a GET stream is already open for this session",
            ));
        }
        old.stop();
    }
    let mut out = Vec::with_capacity(256);
    http::write_response_head(&mut out, 200, SSE_HEADERS, HeadBody::Chunked);
    write(conn, out).await?;
    let st = crate::stream::open(shard, Some(ctx), tap.map(|t| (t, 200)));
    *child.get_stream.borrow_mut() = Some(st.clone());
    monoio::spawn(pump_session(shard.clone(), st.clone(), child));
    let end = crate::stream::deliver(shard, conn, &st, 1).await;
    let done = relay::finish_stream(conn, &st, end).await;
    Ok(Outcome::ended(200, done.client_ok))
}

/// The reader of a session's GET stream: the child's messages about no request, until the
/// child is gone or the stream stops (session end, replaced, not resumed in time).
async fn pump_session(shard: Rc<Shard>, st: Rc<Stream>, child: Rc<Child>) {
    crate::stream::reader_started(&shard, &st);
    while let Some(Next::Event(line) | Next::Final(line)) =
        crate::stream::guard(&shard, &st, child.stream.next()).await
    {
        if !crate::stream::feed(&shard, &st, sse_event(&line)).await {
            break;
        }
    }
    crate::stream::reader_done(&shard, &st, Some(true));
}

/// Called with the response line before it is written; may return a session id to announce.
type OnFinal<'a> = Option<&'a mut dyn FnMut(&[u8]) -> Option<String>>;

/// How a request is answered.
struct Answer<'a> {
    /// The client takes an SSE answer.
    sse: bool,
    /// Watch the client socket: a hang-up cancels the request in the child.
    watch_hangup: bool,
    /// The request's id, for errors written mid-stream.
    id: Option<&'a str>,
    tap: Option<Tap>,
    /// In a session: makes an SSE answer resumable.
    stream: Option<SseCtx>,
    /// A handshake-era child answers a 2026-07-28 request for this method: the response gets
    /// that version's shape (`mcp::modern_result`).
    modern: Option<&'a str>,
}

impl<'a> Answer<'a> {
    fn streaming(head: &RequestHead, msg: &mcp::Message<'a>, sink: Sink) -> Answer<'a> {
        Answer {
            sse: sse_ok(head),
            watch_hangup: true,
            id: msg.id,
            tap: sink.tap,
            stream: sink.sse,
            modern: None,
        }
    }
}

/// `line` in the 2026-07-28 shape when `modern` names the request's method.
fn shaped(line: bytes::Bytes, modern: Option<&str>) -> bytes::Bytes {
    modern
        .and_then(|m| mcp::modern_result(&line, m))
        .map_or(line, bytes::Bytes::from)
}

/// Where a request's answer goes besides the client: its tape and, in a session, its
/// resumable stream.
pub struct Sink {
    pub tap: Option<Tap>,
    pub sse: Option<SseCtx>,
}

/// Waits for the child's messages about one request and answers the client: JSON when the
/// response comes first, SSE when other messages precede it.
async fn answer(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    ticket: Ticket,
    how: Answer<'_>,
    mut on_final: OnFinal<'_>,
) -> Result<Outcome> {
    loop {
        match wait(shard, conn, &ticket, how.watch_hangup).await? {
            Next::Final(line) => {
                let line = shaped(line, how.modern);
                let sid = on_final.as_mut().and_then(|f| f(&line));
                shard
                    .record_message(how.tap, Dir::ServerToClient, 200, None, line.clone())
                    .await;
                return write_json(conn, sid.as_deref(), &line).await;
            }
            Next::Failed(why) => return Err(Error::new(Kind::UpstreamConnect, &*why)),
            Next::Event(first) if how.sse => return stream(shard, conn, ticket, first, how).await,
            // The client takes only JSON: what precedes the response cannot reach it.
            Next::Event(_) => inc(&shard.stats.stdio_dropped_messages),
        }
    }
}

/// The next message for `ticket`, within the request timeout, watching for a hang-up.
async fn wait(
    shard: &Shard,
    conn: &ClientConn,
    ticket: &Ticket,
    watch_hangup: bool,
) -> Result<Next> {
    let timeout = shard.config().timeouts.upstream_request;
    let arm = HANGUP_ARM_DELAY.min(timeout);
    let quick = monoio::select! {
        n = ticket.inbox.next() => Some(n),
        _ = monoio::time::sleep(arm) => None,
    };
    if let Some(n) = quick {
        return Ok(n);
    }
    monoio::select! {
        n = ticket.inbox.next() => Ok(n),
        _ = monoio::time::sleep(timeout - arm) => {
            inc(&shard.stats.stdio_timeouts);
            Err(Error::new(Kind::UpstreamTimeout, "the stdio server did not answer in time"))
        }
        _ = crate::upstream::http::client_hung_up(&conn.stream), if watch_hangup => {
            Err(Error::new(Kind::ClientGone, "client hung up before the answer"))
        }
    }
}

/// Streams events until the response; a failure or timeout mid-stream becomes a JSON-RPC
/// error event, since the status line is already sent. In a session the stream is resumable:
/// a client that leaves does not cancel the request, its answer waits for a resume.
async fn stream(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    ticket: Ticket,
    first: bytes::Bytes,
    how: Answer<'_>,
) -> Result<Outcome> {
    let mut out = Vec::with_capacity(128);
    http::write_response_head(&mut out, 200, SSE_HEADERS, HeadBody::Chunked);
    write(conn, out).await?;
    let st = crate::stream::open(shard, how.stream, how.tap.map(|t| (t, 200)));
    let id: Option<Box<str>> = how.id.map(Into::into);
    let modern: Option<Box<str>> = how.modern.map(Into::into);
    let reader = monoio::spawn(pump_request(
        shard.clone(),
        st.clone(),
        ticket,
        first,
        (id, modern),
    ));
    let end = crate::stream::deliver(shard, conn, &st, 1).await;
    if !st.resumable() {
        // The reader owns the ticket: dropping it cancels the request in the child.
        reader.await;
    }
    let done = relay::finish_stream(conn, &st, end).await;
    Ok(Outcome::ended(200, done.client_ok))
}

/// The reader of a request's stream: the child's messages about it, until the response (or a
/// failure, or a timeout, answered as a JSON-RPC error event). Dropping the ticket at the end
/// cancels the request in the child if it was not answered.
async fn pump_request(
    shard: Rc<Shard>,
    st: Rc<Stream>,
    ticket: Ticket,
    first: bytes::Bytes,
    (id, modern): (Option<Box<str>>, Option<Box<str>>),
) {
    crate::stream::reader_started(&shard, &st);
    let timeout = shard.config().timeouts.upstream_request;
    let mut line = first;
    loop {
        if !crate::stream::feed(&shard, &st, sse_event(&line)).await {
            break;
        }
        let next = monoio::time::timeout(timeout, ticket.inbox.next());
        let (next, end) = match crate::stream::guard(&shard, &st, next).await {
            None => break,
            Some(Ok(Next::Event(l))) => (l, false),
            Some(Ok(Next::Final(l))) => (shaped(l, modern.as_deref()), true),
            Some(Ok(Next::Failed(why))) => {
                let e = Error::new(Kind::UpstreamConnect, &*why).with_id(id.as_deref());
                (bytes::Bytes::from(e.body()), true)
            }
            Some(Err(_)) => {
                inc(&shard.stats.stdio_timeouts);
                let e = Error::new(
                    Kind::UpstreamTimeout,
                    "the stdio server did not answer in time",
                );
                (bytes::Bytes::from(e.with_id(id.as_deref()).body()), true)
            }
        };
        line = next;
        if end {
            crate::stream::feed(&shard, &st, sse_event(&line)).await;
            break;
        }
    }
    drop(ticket);
    crate::stream::reader_done(&shard, &st, Some(true));
}

/// One raw SSE event carrying `data`.
fn sse_event(data: &[u8]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(data.len() + 24);
    out.extend_from_slice(b"event: message\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    bytes::Bytes::from(out)
}

async fn write_json(conn: &mut ClientConn, session: Option<&str>, body: &[u8]) -> Result<Outcome> {
    let mut extra = Vec::with_capacity(96);
    extra.extend_from_slice(b"content-type: application/json\r\n");
    if let Some(sid) = session {
        extra.extend_from_slice(b"mcp-session-id: ");
        extra.extend_from_slice(sid.as_bytes());
        extra.extend_from_slice(b"\r\n");
    }
    let mut out = Vec::with_capacity(128 + extra.len() + body.len());
    http::write_response_head(&mut out, 200, &extra, HeadBody::Length(body.len()));
    out.extend_from_slice(body);
    write(conn, out).await?;
    Ok(Outcome::written(200))
}

async fn accepted(shard: &Shard, conn: &mut ClientConn, tap: Option<Tap>) -> Result<Outcome> {
    shard.record_status(tap, 202).await;
    let mut out = Vec::with_capacity(64);
    http::write_response_head(&mut out, 202, b"", HeadBody::Length(0));
    write(conn, out).await?;
    Ok(Outcome::written(202))
}

async fn write(conn: &mut ClientConn, out: Vec<u8>) -> Result<()> {
    let (res, _) = conn.stream.write_all(out).await;
    res.map(|_| ())
        .map_err(|e| Error::new(Kind::ClientGone, e.to_string()))
}
