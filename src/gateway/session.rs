//! The session lifecycle: permits (`max_sessions`, with eviction of the least recently used
//! idle session; `max_sessions_per_client`), opening a session with its upstream half
//! (`open`), looking one up for a request (`lookup`: its rate bucket, its upstream's health),
//! and every way one ends: DELETE, the upstream forgetting it, expiry, eviction, a client that
//! missed its initialize answer, a stdio child exiting, shutdown.
//!
//! In a cluster (`cluster`), a session's client holds a sealed or pinned id, and a sealed id
//! this shard does not hold is adopted on its first request here.
//!
//! Invariants: every end goes through `end_local`, which releases the session's permits,
//! stops its streams, ends its stdio child and closes its tape; a session the gateway ends
//! itself is also ended upstream (`end_everywhere`), in the background, bounded by the
//! request timeout.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::codec::http::RequestHead;
use crate::degrade::Level;
use crate::error::{Error, Kind, Result};
use crate::mcp::{self, SessionId, Version};
use crate::metrics::{gauge_add, inc};
use crate::shard::session::{Expiry, Session};
use crate::shard::sse::{Origin, SseCtx, StreamKind};
use crate::shard::{ClientConn, Shard};
use crate::tape::Tap;
use crate::upstream::{Call, Source, UpSession};

use super::Outcome;

mod cluster;

use cluster::Named;
pub use cluster::{client_id, owner_shard};

/// Takes a session permit. At `max_sessions`, the least recently used session of this shard
/// idle for `session_evict_idle_ms` is ended (here and upstream) to make room, and counted.
fn acquire(shard: &Rc<Shard>) -> bool {
    if shard.shared.sessions.try_acquire() {
        return true;
    }
    // Evicting makes room for a new session: not while the level refuses new sessions.
    if crate::degrade::level(&shard.shared) >= Level::SessionsRejected {
        return false;
    }
    let Some(min_idle) = shard.config().timeouts.session_evict_idle else {
        return false;
    };
    let victim = shard.sessions.borrow().lru_idle(Instant::now(), min_idle);
    let Some(victim) = victim else {
        return false;
    };
    inc(&shard.stats.sessions_evicted);
    log::info!(
        "shard {}: max_sessions reached: evicting the least recently used idle session",
        shard.id
    );
    retire(shard, &victim, "evicted");
    shard.shared.sessions.try_acquire()
}

/// Counts a new session against its client, after its session permit was taken. At
/// `max_sessions_per_client`: 429, and the permit given back.
fn open_client_session(shard: &Shard, conn: &ClientConn) -> Result<u32> {
    let cell = conn.client_cell();
    if shard.shared.clients.open_session(cell) {
        return Ok(cell);
    }
    shard.shared.sessions.release();
    Err(super::validate::rate_limited(
        shard,
        "client_sessions",
        Duration::from_secs(1),
    ))
}

/// The client's cell for the `sticky` balancer (looked up only when it balances by client).
pub fn balancer_cell(shard: &Shard, conn: &ClientConn) -> u32 {
    if shard.up.balancer.by_client() {
        conn.client_cell()
    } else {
        0
    }
}

/// The subject's name as the upstream is told it (`forward_subject_header`), if it is.
pub fn forwarded_subject<'a>(
    shard: &'a Shard,
    subject: Option<&'a str>,
) -> Option<(&'a str, &'a str)> {
    let header = shard.config().auth.forward_subject_header.as_deref()?;
    Some((header, subject?))
}

/// What an initialize opened: the upstream's answer, and the gateway's new session when the
/// upstream made one (its permits taken; without one they were given back).
pub struct Opened {
    pub source: Source,
    pub id: Option<SessionId>,
}

/// initialize: opens the session's upstream half under the session permits, and mints the
/// gateway's session when the upstream made one. The caller writes the answer, then
/// `settle`s the session by whether it was written.
pub async fn open(
    shard: &Rc<Shard>,
    conn: &ClientConn,
    (head, body, msg): (&RequestHead, &[u8], Option<&mcp::Message<'_>>),
    (tape, subject): (Option<u64>, Option<&str>),
) -> Result<Opened> {
    if !acquire(shard) {
        shard.stats.count_rejection("sessions");
        return Err(Error::new(Kind::Overloaded("sessions"), ""));
    }
    let cell = open_client_session(shard, conn)?;
    // No hang-up watch: aborting here could leave a session upstream that the gateway never
    // learns the id of. Let the answer arrive, then end the session if the client missed it.
    let call = Call {
        head,
        body,
        msg,
        client: None,
        client_cell: balancer_cell(shard, conn),
        subject: forwarded_subject(shard, subject),
        routed_to: std::cell::Cell::new(None),
    };
    let release = || {
        shard.shared.sessions.release();
        shard.shared.clients.close_session(cell);
    };
    let (source, up) = shard
        .up
        .open_session(&call)
        .await
        .inspect_err(|_| release())?;
    let Some(up) = up else {
        // No session (an error, or a sessionless server): the permits go back.
        release();
        return Ok(Opened { source, id: None });
    };
    let id = mint(shard, up, requested_version(body), (tape, cell, subject));
    Ok(Opened {
        source,
        id: Some(id),
    })
}

/// A new session stands once its answer was written (`Outcome::answered`), even if the client
/// closed before the body's end: SDK clients close an SSE answer as soon as they hold the
/// result. Only a client that never got the result costs the session.
pub fn settle(shard: &Rc<Shard>, id: &SessionId, answer: &Result<Outcome>) {
    if !answer.as_ref().is_ok_and(|o| o.answered) {
        log::info!(
            "shard {}: client missed its initialize answer; ending the session",
            shard.id
        );
        end_everywhere(shard, id, "client missed the initialize answer");
    }
}

/// Enters a new session in the table. A stdio child that exits ends its session.
fn mint(
    shard: &Rc<Shard>,
    up: UpSession,
    version: Version,
    (tape, cell, subject): (Option<u64>, u32, Option<&str>),
) -> SessionId {
    let child = up.child().cloned();
    let id = shard
        .sessions
        .borrow_mut()
        .insert(up, version, Instant::now());
    if let Some(s) = shard.sessions.borrow_mut().get_mut(&id) {
        s.tape = tape;
        s.client = Some(cell);
        s.owner = subject.map(Box::from);
    }
    cluster::name_for_client(shard, &id);
    inc(&shard.stats.sessions_created);
    gauge_add(&shard.stats.sessions, 1);
    if let Some(child) = child {
        let sh = shard.clone();
        // A legacy SSE server's peer has no process (`Child::is_process`).
        let reason = if child.is_process() {
            "stdio server exited"
        } else {
            "legacy SSE server stream ended"
        };
        child.on_exit(Box::new(move || {
            log::warn!("shard {}: {reason}: its session ends", sh.id);
            end_local(&sh, &id, reason);
        }));
    }
    id
}

/// The protocol version an initialize asks for (the assumed one when it names none).
pub fn requested_version(body: &[u8]) -> Version {
    #[derive(serde::Deserialize)]
    struct P<'a> {
        #[serde(borrow, rename = "protocolVersion")]
        v: Option<&'a str>,
    }
    #[derive(serde::Deserialize)]
    struct R<'a> {
        #[serde(borrow)]
        params: Option<P<'a>>,
    }
    serde_json::from_slice::<R<'_>>(body)
        .ok()
        .and_then(|r| r.params?.v.and_then(Version::parse))
        .unwrap_or_else(Version::assumed)
}

/// What a session id resolves to.
pub struct SessionRef {
    pub id: SessionId,
    /// The session's upstream half.
    pub upstream: UpSession,
    /// Where this exchange of the session is recorded.
    pub tap: Option<Tap>,
    pub version: Version,
    /// Its SSE event ids carry the upstream's own and this node's incarnation (clustered, on
    /// one HTTP upstream): another node can resume its streams from the upstream.
    pub carry: Option<u32>,
}

impl SessionRef {
    /// Makes an SSE answer in this session resumable.
    pub fn sse_ctx(&self, kind: StreamKind, responses: usize) -> SseCtx {
        SseCtx {
            origin: Origin {
                session: self.id,
                server: 0,
                upstream: self.upstream.index(),
                upstream_sid: self.upstream.sid().cloned(),
                version: self.version,
                carry: self.carry,
            },
            kind,
            responses,
        }
    }
}

/// Resolves a client's session id (`raw`, of `head`), adopting a sealed one this shard does
/// not hold. Unknown, malformed, foreign, or opened by another subject than `subject` (auth
/// on: as if it did not exist): 404. With `limit`, the request takes a token from the
/// session's bucket (POSTs do; GET streams and DELETE do not).
pub async fn lookup(
    shard: &Rc<Shard>,
    conn: &ClientConn,
    (head, raw): (&RequestHead, &[u8]),
    limit: bool,
    subject: Option<&str>,
) -> Result<SessionRef> {
    let id = match cluster::name(shard, raw)? {
        Named::Local(id) => id,
        Named::Sealed(token) => {
            let id = cluster::adopt(shard, conn, head, token, subject)?;
            cluster::start_adopted_tape(shard, conn, head, &id, subject).await;
            id
        }
    };
    found(shard, id, limit, subject)
}

/// A session of this shard's table, for one request (see `lookup`).
fn found(shard: &Shard, id: SessionId, limit: bool, subject: Option<&str>) -> Result<SessionRef> {
    let mut sessions = shard.sessions.borrow_mut();
    let s = sessions
        .get_mut(&id)
        .filter(|s| s.owner.as_deref() == subject)
        .ok_or_else(|| Error::new(Kind::UnknownSession, ""))?;
    let now = Instant::now();
    if let UpSession::Http { upstream, .. } = s.upstream {
        if !shard.up.health.session_servable(upstream, now) {
            // Its upstream is down (breaker open, probes failing) and holds the session's
            // state: the client must start again on a healthy upstream.
            drop(sessions);
            log::info!(
                "shard {}: session's upstream is down; session ended",
                shard.id
            );
            end_local(shard, &id, "upstream down");
            return Err(Error::new(Kind::UnknownSession, "its upstream is down"));
        }
    }
    s.last_seen = now;
    if let Some(rate) = shard.shared.clients.session_rate.filter(|_| limit) {
        let bucket = s
            .bucket
            .get_or_insert_with(|| crate::limits::SessionBucket::full(rate, now));
        if let Err(wait) = bucket.take(rate, now) {
            return Err(super::validate::rate_limited(shard, "session_rate", wait));
        }
    }
    let tap = s.tape.map(|session| {
        s.streams += 1;
        Tap {
            session,
            stream: s.streams,
            server: None,
        }
    });
    let carry = match (&shard.config().cluster, &s.upstream) {
        (Some(c), UpSession::Http { sid: Some(_), .. }) if s.sealed => Some(c.incarnation),
        _ => None,
    };
    Ok(SessionRef {
        id,
        upstream: s.upstream.clone(),
        tap,
        version: s.version,
        carry,
    })
}

/// Removes a session from the table: its streams stop, its stdio child (if any) is asked to
/// end, its tape closes, its permits go back. It ended for good: a sealed id of it is refused
/// here from now on.
pub fn end_local(shard: &Shard, id: &SessionId, reason: &'static str) -> Option<Session> {
    remove(shard, id, reason, true)
}

/// Ends a session the gateway gives up on by itself (idle, evicted, shutdown). A sealed one
/// is only forgotten here: another node may be serving it (or this one again after a
/// restart), so its upstream sessions stay, for the upstream's own timeout to end. Any other
/// is ended here and upstream.
fn retire(shard: &Rc<Shard>, id: &SessionId, reason: &'static str) {
    let sealed = shard.sessions.borrow().get(id).is_some_and(|s| s.sealed);
    if sealed {
        remove(shard, id, reason, false);
    } else {
        end_everywhere(shard, id, reason);
    }
}

fn remove(shard: &Shard, id: &SessionId, reason: &'static str, bury: bool) -> Option<Session> {
    let mut sessions = shard.sessions.borrow_mut();
    let mut s = sessions.remove(id)?;
    if let Some(token) = s.token.as_deref().filter(|_| bury && s.sealed) {
        sessions.bury(token);
    }
    drop(sessions);
    s.sse.stop_all();
    if let Some(session) = s.tape {
        shard.record_end(session, reason);
    }
    if let Some(cell) = s.client {
        shard.shared.clients.close_session(cell);
    }
    s.upstream.end_local();
    shard.shared.sessions.release();
    gauge_add(&shard.stats.sessions, -1);
    inc(&shard.stats.sessions_ended);
    Some(s)
}

/// Ends a session here and, in the background (bounded by the request timeout), upstream.
pub fn end_everywhere(shard: &Rc<Shard>, id: &SessionId, reason: &'static str) {
    if let Some(s) = end_local(shard, id, reason) {
        let timeout = shard.config().timeouts.upstream_request;
        // Detached: each task ends by itself within the timeout.
        drop(crate::upstream::end_quietly(
            &shard.up,
            &s.upstream,
            timeout,
        ));
    }
}

/// Ends sessions past their idle timeout or maximum age, locally and upstream. Only sessions
/// due now are looked at (see `shard::session`).
pub fn expire(shard: &Rc<Shard>, now: Instant) {
    let due = shard.sessions.borrow_mut().due(now);
    for (id, why) in due {
        log::info!("shard {}: session ended: {}", shard.id, why.reason());
        match why {
            Expiry::Idle => {
                inc(&shard.stats.sessions_expired);
                retire(shard, &id, why.reason());
            }
            Expiry::MaxAge => {
                inc(&shard.stats.sessions_max_age);
                end_everywhere(shard, &id, why.reason());
            }
        }
    }
}

/// Ends every session of the shard upstream (shutdown), all at once, within `within`; then
/// the stdio children.
pub async fn end_all(shard: &Rc<Shard>, within: Duration) {
    let ids = shard.sessions.borrow().all();
    let mut tasks = Vec::with_capacity(ids.len());
    for id in ids {
        let sealed = shard.sessions.borrow().get(&id).is_some_and(|s| s.sealed);
        if sealed {
            // Other nodes (or this one, restarted) continue it.
            remove(shard, &id, "gateway shutdown", false);
        } else if let Some(s) = end_local(shard, &id, "gateway shutdown") {
            tasks.extend(crate::upstream::end_quietly(&shard.up, &s.upstream, within));
        }
    }
    // The gateway's own sessions on handshake-era upstreams (`upstream::era`) end too.
    for up in shard.up.each() {
        for (i, bridge) in up.bridges.iter().enumerate() {
            if let Some(sid) = bridge.take_session() {
                let end = crate::upstream::http::end_quietly(up.clone(), sid, i, within);
                tasks.push(monoio::spawn(end));
            }
        }
    }
    let n = tasks.len();
    for t in tasks {
        t.await;
    }
    if n > 0 {
        log::info!("shard {}: ended {n} sessions upstream", shard.id);
    }
    for up in shard.up.each() {
        if let Some(host) = &up.stdio {
            host.close();
            host.wait_all_reaped(host.config().kill_grace + Duration::from_secs(1))
                .await;
        }
    }
}
