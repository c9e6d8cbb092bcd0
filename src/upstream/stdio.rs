//! The stdio upstream kind: MCP servers run as child processes, spoken to with
//! newline-delimited JSON-RPC on stdin and stdout (`child`). One child serves one MCP session
//! for its whole life; a few gateway-initialized children serve the stateless 2026-07-28
//! requests (`host`).
//!
//! A request's answer is one JSON message when the child's first message about it is the
//! response, and events (`RequestEvents`) when notifications or server requests come first and
//! the client takes SSE. Server messages about no request are the session's GET stream
//! (`SessionEvents`). `server/discover` on a handshake-era child is answered from its
//! initialize result.
//!
//! Invariants: every request ends with exactly one answer (response, JSON-RPC error, or
//! nothing when the client hung up); a request that ends early drops its `Ticket`, which
//! cancels it in the child.

mod child;
mod host;
pub mod sse;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use monoio::net::TcpStream;

pub use child::{
    restore, rewrite_request, spawn, Child, Era, Inbox, Line, LineFramer, Next, Rewritten, Role,
    Spawn, Ticket, CHILD_PROTOCOL_VERSION,
};
pub use host::Host;

use crate::codec::http::RequestHead;
use crate::error::{Error, Kind, Result};
use crate::mcp;
use crate::metrics::{inc, ShardStats};
use crate::upstream::{Call, Events, Source, UpSession, Upstreams};

/// How long a wait runs before it also watches for the client hanging up (as for HTTP
/// upstreams: quick answers cost no extra poll).
const HANGUP_ARM_DELAY: Duration = Duration::from_millis(20);

/// Whether the client takes an SSE answer (an absent Accept takes anything).
fn sse_ok(head: &RequestHead) -> bool {
    head.headers.get("accept").is_none_or(|a| {
        a.windows(17)
            .any(|w| w.eq_ignore_ascii_case(b"text/event-stream"))
    })
}

/// Counts a refusal by a named bound (the process permits) as a rejection.
fn count_overload(up: &Upstreams, e: &Error) {
    if let Kind::Overloaded(what) = e.kind {
        up.stats.count_rejection(what);
    }
}

/// initialize: a child (prewarmed when one is ready) under a process permit. The session
/// exists once the child answered with a result; otherwise the child ends. No SSE (the
/// session id must be known before the head is written) and no hang-up watch (the pipeline
/// ends a session whose client left).
pub async fn open_session(
    up: &Rc<Upstreams>,
    host: &Rc<Host>,
    call: &Call<'_>,
) -> Result<(Source, Option<UpSession>)> {
    let child = host
        .take_for_session()
        .inspect_err(|e| count_overload(up, e))?;
    let how = How {
        sse: false,
        watch: None,
        id: call.msg.and_then(|m| m.id),
        modern: None,
    };
    let answer = match child.request(call.body) {
        Ok(ticket) => answer(up, ticket, how).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(Source::Message(line)) if is_result(&line) => {
            Ok((Source::Message(line), Some(UpSession::Stdio(child))))
        }
        other => {
            child.end();
            other.map(|src| (src, None))
        }
    }
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

/// A POST in a session: requests are answered, notifications and responses get 202.
pub async fn send(up: &Rc<Upstreams>, child: &Rc<Child>, call: &Call<'_>) -> Result<Source> {
    let msg = one_message(call)?;
    if msg.kind == mcp::Kind::Request {
        let ticket = child.request(call.body)?;
        return answer(up, ticket, How::streaming(call, msg)).await;
    }
    child.notify(call.body)?;
    Ok(Source::Status(202))
}

fn one_message<'a>(call: &Call<'a>) -> Result<&'a mcp::Message<'a>> {
    call.msg.ok_or_else(|| {
        Error::new(
            Kind::InvalidRequest,
            "batches are not supported by stdio upstreams",
        )
    })
}

/// A 2026-07-28 request on one of the shard's stateless children.
pub async fn stateless(up: &Rc<Upstreams>, host: &Rc<Host>, call: &Call<'_>) -> Result<Source> {
    let msg = one_message(call)?;
    let timeout = up.timeouts.upstream_request;
    let child = host
        .stateless_child(timeout)
        .await
        .inspect_err(|e| count_overload(up, e))?;
    debug_assert_eq!(child.role(), Role::Stateless);
    let handshake = child.era() == Era::Handshake;
    let stripped = handshake.then(|| mcp::strip_envelope(call.body)).flatten();
    let body = stripped.as_deref().unwrap_or(call.body);
    match (msg.kind, msg.method) {
        // A handshake-era child was initialized by the gateway: its initialize result answers.
        (mcp::Kind::Request, Some("server/discover")) if handshake => {
            Ok(Source::Message(Bytes::from(discover(&child, msg.id)?)))
        }
        (mcp::Kind::Request, method) => {
            let ticket = child.request(body)?;
            let mut how = How::streaming(call, msg);
            how.modern = method.filter(|_| handshake);
            answer(up, ticket, how).await
        }
        _ => {
            child.notify(body)?;
            Ok(Source::Status(202))
        }
    }
}

/// The `server/discover` answer built from the child's initialize result.
fn discover(child: &Child, id: Option<&str>) -> Result<Vec<u8>> {
    let init = child.init_result.borrow();
    init.as_deref()
        .and_then(|b| mcp::discover_from_initialize(b, id.unwrap_or("null")))
        .ok_or_else(|| Error::new(Kind::Internal, "stdio server has no initialize result"))
}

/// GET: the session's server messages about no request.
pub fn open_stream(child: &Rc<Child>) -> Source {
    Source::Events(Events::Session(SessionEvents {
        child: child.clone(),
    }))
}

/// How a request is answered.
struct How<'a> {
    /// The client takes an SSE answer.
    sse: bool,
    /// The client's socket, watched: a hang-up cancels the request in the child.
    watch: Option<&'a TcpStream>,
    /// The request's id, for errors written mid-stream.
    id: Option<&'a str>,
    /// A handshake-era child answers a 2026-07-28 request for this method: the response gets
    /// that version's shape (`mcp::modern_result`).
    modern: Option<&'a str>,
}

impl<'a> How<'a> {
    fn streaming(call: &Call<'a>, msg: &mcp::Message<'a>) -> How<'a> {
        How {
            sse: sse_ok(call.head),
            watch: call.client,
            id: msg.id,
            modern: None,
        }
    }
}

/// `line` in the 2026-07-28 shape when `modern` names the request's method.
fn shaped(line: Bytes, modern: Option<&str>) -> Bytes {
    modern
        .and_then(|m| mcp::modern_result(&line, m))
        .map_or(line, Bytes::from)
}

/// Waits for the child's first message about one request: the response is one message; a
/// message before it makes the answer a stream of events when the client takes SSE.
async fn answer(up: &Rc<Upstreams>, ticket: Ticket, how: How<'_>) -> Result<Source> {
    loop {
        match wait(up, &ticket, how.watch).await? {
            Next::Final(line) => return Ok(Source::Message(shaped(line, how.modern))),
            Next::Failed(why) => return Err(Error::new(Kind::UpstreamConnect, &*why)),
            Next::Event(first) if how.sse => {
                return Ok(Source::Events(Events::Request(RequestEvents {
                    ticket,
                    first: Some(first),
                    id: how.id.map(Into::into),
                    modern: how.modern.map(Into::into),
                    timeout: up.timeouts.upstream_request,
                    stats: up.stats.clone(),
                    done: false,
                })))
            }
            // The client takes only JSON: what precedes the response cannot reach it.
            Next::Event(_) => inc(&up.stats.stdio_dropped_messages),
        }
    }
}

/// The next message for `ticket`, within the request timeout, watching for a hang-up.
async fn wait(up: &Upstreams, ticket: &Ticket, watch: Option<&TcpStream>) -> Result<Next> {
    let timeout = up.timeouts.upstream_request;
    let arm = HANGUP_ARM_DELAY.min(timeout);
    let quick = monoio::select! {
        n = ticket.inbox.next() => Some(n),
        _ = monoio::time::sleep(arm) => None,
    };
    if let Some(n) = quick {
        return Ok(n);
    }
    let hung_up = async {
        match watch {
            Some(c) => super::http::client_hung_up(c).await,
            None => std::future::pending().await,
        }
    };
    monoio::select! {
        n = ticket.inbox.next() => Ok(n),
        _ = monoio::time::sleep(timeout - arm) => {
            inc(&up.stats.stdio_timeouts);
            Err(Error::new(Kind::UpstreamTimeout, "the stdio server did not answer in time"))
        }
        _ = hung_up => {
            Err(Error::new(Kind::ClientGone, "client hung up before the answer"))
        }
    }
}

/// A child's messages about one request, as SSE events, ending with its response (or a
/// failure or timeout, given as a JSON-RPC error event, since the status line is already
/// sent). Dropping it drops the ticket, which cancels the request in the child if it was not
/// answered.
pub struct RequestEvents {
    ticket: Ticket,
    first: Option<Bytes>,
    id: Option<Box<str>>,
    modern: Option<Box<str>>,
    timeout: Duration,
    stats: Arc<ShardStats>,
    done: bool,
}

impl RequestEvents {
    pub async fn next(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(sse_event(&first));
        }
        if self.done {
            return None;
        }
        let next = monoio::time::timeout(self.timeout, self.ticket.inbox.next()).await;
        let line = match next {
            Ok(Next::Event(l)) => return Some(sse_event(&l)),
            Ok(Next::Final(l)) => shaped(l, self.modern.as_deref()),
            Ok(Next::Failed(why)) => {
                let e = Error::new(Kind::UpstreamConnect, &*why);
                Bytes::from(e.with_id(self.id.as_deref()).body())
            }
            Err(_) => {
                inc(&self.stats.stdio_timeouts);
                let e = Error::new(
                    Kind::UpstreamTimeout,
                    "the stdio server did not answer in time",
                );
                Bytes::from(e.with_id(self.id.as_deref()).body())
            }
        };
        self.done = true;
        Some(sse_event(&line))
    }
}

/// A child's messages about no request, as SSE events, until the child is gone.
pub struct SessionEvents {
    child: Rc<Child>,
}

impl SessionEvents {
    pub async fn next(&mut self) -> Option<Bytes> {
        match self.child.stream.next().await {
            Next::Event(line) | Next::Final(line) => Some(sse_event(&line)),
            Next::Failed(_) => None,
        }
    }
}

/// One raw SSE event carrying `data` (one line the child wrote).
pub fn sse_event(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 24);
    out.extend_from_slice(b"event: message\ndata: ");
    // A raw CR ends an SSE line. In a JSON line it can only be whitespace (inside strings it
    // must be escaped), so a space keeps the message whole and means the same.
    out.extend(data.iter().map(|&b| if b == b'\r' { b' ' } else { b }));
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}
