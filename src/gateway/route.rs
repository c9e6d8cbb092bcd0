//! Routing: a validated request to its upstream operation (`upstream::Upstreams`) under the
//! MCP rules of its version. POST: stateless (2026-07-28: one message, routing headers that
//! agree with the body), initialize (a new session), in a session, or for a sessionless
//! server. GET: the session's server stream, or the resume of one. DELETE: the session's end.

use std::rc::Rc;

use bytes::Bytes;

use crate::authz::{self, Grant, ListFilter};
use crate::codec::http::RequestHead;
use crate::degrade::Level;
use crate::error::{Error, Kind, Result};
use crate::mcp::{self, Version};
use crate::metrics::inc;
use crate::shard::sse::{Stream, StreamKind};
use crate::shard::{ClientConn, Shard};
use crate::tape::Tap;
use crate::upstream::{Call, Source, UpSession};

use super::respond;
use super::session::{self, balancer_cell, SessionRef};
use super::{peer, relay, stream, Delivery, Exchange, Outcome};

/// Where a POST goes, decided before anything is awaited (so the pipeline awaits the handler
/// itself: one future less to move per request).
pub enum PostRoute<'a> {
    /// 2026-07-28: no session.
    Stateless,
    /// A new session.
    Initialize,
    /// In the session this id names.
    InSession(&'a [u8]),
    /// No session, for a sessionless HTTP server, in this version.
    Sessionless(Version),
}

/// A POST's route under the rules of its version (`version`: what the header names).
pub fn post_route<'a>(
    shard: &Shard,
    head: &'a RequestHead,
    parsed: &mcp::Body<'_>,
    version: Option<Version>,
) -> Result<PostRoute<'a>> {
    let sid = head.headers.get("mcp-session-id");
    if parsed.is_initialize()
        && crate::degrade::level(&shard.shared) >= Level::SessionsRejected
        && sid.is_none()
    {
        let why = "new sessions are refused for now";
        return Err(super::validate::degraded(shard, why));
    }
    if version.is_some_and(Version::is_stateless) {
        return Ok(PostRoute::Stateless);
    }
    let v = version.unwrap_or_else(Version::assumed);
    if matches!(parsed, mcp::Body::Batch(_)) && !v.allows_batch() {
        return Err(Error::new(
            Kind::InvalidRequest,
            format!("batches are not allowed in protocol version {}", v.as_str()),
        ));
    }
    if matches!(parsed, mcp::Body::Batch(_)) && shard.up.needs_session() {
        return Err(Error::new(
            Kind::InvalidRequest,
            "batches are not supported by stdio upstreams and federated routes",
        ));
    }
    match sid {
        Some(raw) => Ok(PostRoute::InSession(raw)),
        None if parsed.is_initialize() => Ok(PostRoute::Initialize),
        None if shard.up.needs_session() => Err(Error::new(Kind::SessionRequired, "")),
        None => Ok(PostRoute::Sessionless(v)),
    }
}

/// Refuses a request the subject may not make (`tools/call`, `prompts/get`,
/// `resources/read`: `authz::check_request`) before anything goes upstream: -32003 with the
/// refused request's id, one count and one log line (the subject's name, never a credential).
/// Without a grant there is nothing to check.
#[inline]
pub fn authorize(shard: &Shard, grant: Option<&Grant>, parsed: &mcp::Body<'_>) -> Result<()> {
    let Some(grant) = grant else {
        return Ok(());
    };
    authz::check_request(grant, parsed).map_err(|d| {
        shard.stats.count_auth("denied_tool");
        log::info!(
            "shard {}: subject {:?} denied {} {:?}",
            shard.id,
            grant.subject(),
            d.kind,
            d.name
        );
        Error::new(Kind::Forbidden, d.to_string()).with_id(d.id.as_deref())
    })
}

/// How the answer to a POST reaches the client: recorded on the exchange's tap, its lists
/// filtered by the subject's grant.
fn delivery(ex: &Exchange, parsed: &mcp::Body<'_>) -> Delivery {
    let mut d = Delivery::to(ex.tap);
    d.filter = ListFilter::new(ex.grant.as_ref(), parsed);
    d
}

/// The message of a single-message body (`None` for a batch).
fn single<'a>(parsed: &'a mcp::Body<'a>) -> Option<&'a mcp::Message<'a>> {
    match parsed {
        mcp::Body::Single(m) => Some(m),
        mcp::Body::Batch(_) => None,
    }
}

/// A POST of no session to a sessionless HTTP server, recorded as a tape session of its own.
pub async fn sessionless(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    (head, body, parsed): (&RequestHead, &Bytes, &mcp::Body<'_>),
    ex: &mut Exchange,
    v: Version,
) -> Result<Outcome> {
    ex.open_one_off(shard, conn, v.as_str(), None).await;
    ex.record_request(shard, body).await;
    let call = call(shard, (conn, ex), head, body, single(parsed));
    let src = shard.up.sessionless(&call).await?;
    relay::relay(shard, conn, src, delivery(ex, parsed)).await
}

/// What the upstream kinds need of a client request; the client's socket is watched for a
/// hang-up.
fn call<'a>(
    shard: &'a Shard,
    (conn, ex): (&'a ClientConn, &'a Exchange),
    head: &'a RequestHead,
    body: &'a [u8],
    msg: Option<&'a mcp::Message<'a>>,
) -> Call<'a> {
    Call {
        head,
        body,
        msg,
        client: Some(&conn.stream),
        client_cell: balancer_cell(shard, conn),
        subject: session::forwarded_subject(shard, ex.subject_name()),
        routed_to: std::cell::Cell::new(None),
    }
}

/// 2026-07-28: no session (a tape session of its own); the routing headers must agree with
/// the body; one message per POST.
pub async fn stateless(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    (head, body, parsed): (&RequestHead, &Bytes, &mcp::Body<'_>),
    ex: &mut Exchange,
) -> Result<Outcome> {
    // On a federated route the request is recorded once the route chose its server, as in a
    // session (`in_session`), and the tape's start names the route's servers.
    let servers = shard.up.route_servers_json(&head.path);
    ex.open_one_off(shard, conn, mcp::STATELESS_VERSION, servers)
        .await;
    let held = match servers {
        Some(_) => Some(shard.hold_request(ex.tap, body.clone())),
        None => {
            ex.record_request(shard, body).await;
            None
        }
    };
    let mut d = delivery(ex, parsed);
    let mcp::Body::Single(msg) = parsed else {
        return Err(Error::new(
            Kind::InvalidRequest,
            "protocol version 2026-07-28 allows one message per POST",
        ));
    };
    mcp::check_stateless_headers(
        msg,
        head.headers.get_str("mcp-method"),
        head.headers.get_str("mcp-name"),
    )
    .map_err(|why| Error::new(Kind::HeaderMismatch, why))?;
    let call = call(shard, (conn, ex), head, body, Some(msg));
    let sent = shard.up.stateless(&call).await;
    let member = call.routed_to.get();
    if let Some(held) = held {
        held.record(member).await;
    }
    let src = sent?;
    d.tap = d.tap.map(|t| t.via(member));
    relay::relay(shard, conn, src, d).await
}

/// initialize: the session's tape starts with it; an initialize that made no session ends
/// its tape session with the exchange.
pub async fn initialize(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    (head, body, parsed): (&RequestHead, &Bytes, &mcp::Body<'_>),
    ex: &mut Exchange,
) -> Result<Outcome> {
    let msg = single(parsed);
    let tape = match shard.new_tape_session() {
        Some(session) => {
            let version = session::requested_version(body);
            let servers = shard.up.route_servers_json(&head.path);
            let client = (&*peer(conn), ex.subject_name());
            shard
                .record_start(session, version.as_str(), client, servers)
                .await;
            ex.tap = Some(Tap::new(session));
            ex.record_request(shard, body).await;
            Some(session)
        }
        None => None,
    };
    let out = async {
        let opened =
            session::open(shard, conn, (head, body, msg), (tape, ex.subject_name())).await?;
        let mut d = Delivery::to(ex.tap);
        d.check_hangup = true;
        d.session = opened.id.map(|id| session::client_id(shard, &id));
        let out = relay::relay(shard, conn, opened.source, d).await;
        if let Some(id) = &opened.id {
            session::settle(shard, id, &out);
        }
        out
    }
    .await;
    if tape.is_some() && !out.as_ref().is_ok_and(|o| o.status == 200 && o.reusable) {
        ex.one_off = tape;
    }
    out
}

/// A POST in a session. An upstream that no longer knows the session ends it here too. In a
/// federated session the request is recorded once the route chose its server (`routed_to`),
/// and the frames of its answer name that server.
pub async fn in_session(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    (head, body, parsed): (&RequestHead, &Bytes, &mcp::Body<'_>),
    ex: &mut Exchange,
    raw: &[u8],
) -> Result<Outcome> {
    let msg = single(parsed);
    let sref = session::lookup(shard, conn, (head, raw), true, ex.subject_name()).await?;
    ex.tap = sref.tap;
    let held = match sref.upstream {
        UpSession::Federated(_) => Some(shard.hold_request(ex.tap, body.clone())),
        _ => {
            ex.record_request(shard, body).await;
            None
        }
    };
    let requests = parsed
        .messages()
        .iter()
        .filter(|m| m.kind == mcp::Kind::Request)
        .count();
    let call = call(shard, (conn, ex), head, body, msg);
    let sent = shard.up.send(&sref.upstream, &call).await;
    let member = call.routed_to.get();
    if let Some(held) = held {
        held.record(member).await;
    }
    let src = sent?;
    if let Source::Http(ans) = &src {
        if ans.head.status == 404 {
            session::end_local(shard, &sref.id, "upstream forgot the session");
        }
    }
    let mut d = delivery(ex, parsed);
    d.tap = d.tap.map(|t| t.via(member));
    d.sse = Some(sref.sse_ctx(StreamKind::Post, requests));
    relay::relay(shard, conn, src, d).await
}

/// GET: the session's server stream, resumed when `Last-Event-ID` names one the gateway
/// holds; without a session, a sessionless server's stream.
pub async fn get(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    head: &RequestHead,
    ex: &mut Exchange,
) -> Result<Outcome> {
    let Some(raw) = head.headers.get("mcp-session-id") else {
        let call = call(shard, (conn, ex), head, b"", None);
        let src = shard.up.sessionless(&call).await?;
        return relay::relay(shard, conn, src, Delivery::to(None)).await;
    };
    let sref = session::lookup(shard, conn, (head, raw), false, ex.subject_name()).await?;
    ex.tap = sref.tap;
    if let Some(stream) = resumed_stream(shard, head, &sref) {
        return resume(shard, conn, stream, head).await;
    }
    if let Some(last) = head.headers.get("last-event-id") {
        if let Some(out) = resume_upstream(shard, conn, head, ex, (&sref, last)).await {
            return out;
        }
        // A stream this node does not hold (another node's, or forgotten), whose events
        // carried no upstream id: a new stream, and what the old one still had is lost.
        inc(&shard.stats.sse_resume_missed);
    }
    if let UpSession::Stdio(_) = sref.upstream {
        replace_get_stream(shard, &sref)?;
    }
    let call = call(shard, (conn, ex), head, b"", None);
    let src = shard.up.open_stream(&sref.upstream, &call).await?;
    // A merged stream of several servers names each event's server itself (`Events::member`).
    let mut d = Delivery::to(ex.tap.map(|t| t.via(call.routed_to.get())));
    d.sse = Some(sref.sse_ctx(StreamKind::Get, 0));
    relay::relay(shard, conn, src, d).await
}

/// Continues a session stream this node does not hold from the upstream, after the upstream
/// event id the client's `Last-Event-ID` carries (`sse::rename`: in a cluster, another node
/// relayed the stream, or this one before a restart). `None`: nothing carried, or a session
/// that is not on one HTTP upstream.
async fn resume_upstream(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    head: &RequestHead,
    ex: &mut Exchange,
    (sref, last): (&SessionRef, &[u8]),
) -> Option<Result<Outcome>> {
    let carried = crate::shard::sse::carried_id(last)?;
    let call = call(shard, (conn, ex), head, b"", None);
    let after = &carried.upstream_id;
    let src = match shard.up.resume_stream(&sref.upstream, &call, after).await? {
        Ok(src) => src,
        Err(e) => return Some(Err(e)),
    };
    inc(&shard.stats.sse_resumed_upstream);
    log::info!(
        "shard {}: SSE stream continued from the upstream's event id",
        shard.id
    );
    let mut d = Delivery::to(ex.tap);
    // A POST's stream continued here owes no answer it could reconnect for: it ends with
    // the upstream's.
    d.sse = Some(sref.sse_ctx(carried.kind, 0));
    Some(relay::relay(shard, conn, src, d).await)
}

/// A stdio session has one GET stream, which the gateway feeds itself: a second GET while a
/// client reads the first gets 409; one whose client left is stopped and replaced.
fn replace_get_stream(shard: &Shard, sref: &SessionRef) -> Result<()> {
    let old = {
        let sessions = shard.sessions.borrow();
        let s = sessions
            .get(&sref.id)
            .ok_or_else(|| Error::new(Kind::UnknownSession, ""))?;
        s.sse.last_get()
    };
    if let Some(old) = old {
        if old.in_use() {
            return Err(Error::new(
                Kind::Conflict,
                "a GET stream is already open for this session",
            ));
        }
        old.stop();
    }
    Ok(())
}

/// The session stream a GET with `Last-Event-ID` names, if the gateway still holds it. An id
/// the gateway did not issue, or a forgotten stream, opens a new stream instead.
fn resumed_stream(shard: &Shard, head: &RequestHead, sref: &SessionRef) -> Option<Rc<Stream>> {
    let last = head.headers.get("last-event-id")?;
    let (no, _) = crate::shard::sse::parse_event_id(last)?;
    if let Some(c) = crate::shard::sse::carried_id(last) {
        // Numbered by another node, or by this one before a restart: not this run's stream
        // of that number, whatever stream holds it here.
        if sref.carry != Some(c.incarnation) {
            return None;
        }
    }
    let sessions = shard.sessions.borrow();
    sessions.get(&sref.id)?.sse.find(no)
}

/// Continues a session stream on this connection, from the event after `Last-Event-ID`.
async fn resume(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    st: Rc<Stream>,
    head: &RequestHead,
) -> Result<Outcome> {
    let after = head
        .headers
        .get("last-event-id")
        .and_then(crate::shard::sse::parse_event_id)
        .map_or(0, |(_, seq)| seq);
    inc(&shard.stats.sse_resumed);
    if st.needs_reader() {
        stream::restart(shard, &st);
    }
    respond::write_sse_head(conn).await?;
    let end = stream::deliver(shard, conn, &st, after.saturating_add(1)).await;
    let done = relay::finish_stream(conn, &st, end).await;
    Ok(Outcome::ended(200, done.client_ok))
}

/// DELETE: the session ends as soon as the upstream's answer head arrives, before the client
/// can see it, so a client that re-initializes at once finds the session slot free. A 405
/// means the upstream keeps sessions until they expire: so does the gateway.
pub async fn delete(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    head: &RequestHead,
    ex: &mut Exchange,
) -> Result<Outcome> {
    let raw = head
        .headers
        .get("mcp-session-id")
        .ok_or_else(|| Error::new(Kind::SessionRequired, ""))?;
    let sref = session::lookup(shard, conn, (head, raw), false, ex.subject_name()).await?;
    ex.tap = sref.tap;
    let call = call(shard, (conn, ex), head, b"", None);
    let src = shard.up.end_session(&sref.upstream, &call).await?;
    match src {
        // Nothing upstream (a stdio child ends with the session; a sessionless server).
        Source::Status(status) => {
            shard.record_status(ex.tap, status).await;
            session::end_local(shard, &sref.id, "deleted");
            respond::write_status(conn, status).await
        }
        src => {
            if let Source::Http(ans) = &src {
                let s = ans.head.status;
                if (200..300).contains(&s) || s == 404 {
                    session::end_local(shard, &sref.id, "deleted");
                }
            }
            relay::relay(shard, conn, src, Delivery::to(ex.tap)).await
        }
    }
}
