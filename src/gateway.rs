//! The request pipeline: it alone reads client requests, writes to the client and records
//! frames. `serve` drives one client connection; `exchange` runs one request through the
//! stages, top to bottom (`pipeline`):
//!
//! read head (`client`) → affinity (hand the connection to the session's owner shard) →
//! protected resource metadata, served without auth (`authn::metadata`) → validate path, Host,
//! Origin, version, degradation (`validate`) → authenticate (`authn`: the subject) → client
//! rate (`validate::client_rate`) → read the body and classify its JSON-RPC
//! (`validate::classify`) → route to the upstream operation, with the session lifecycle
//! (`route`, `session`), once the subject's grant allows the request (`route::authorize`) →
//! write what the upstream answered
//! (`respond`: a status, one message, an HTTP body relayed by `relay`, or events through a
//! resumable `stream`) → record and count.
//!
//! Invariants: every error becomes exactly one response built by `Error` (`respond`); a
//! connection whose request body was not fully read is closed, never reused; an upstream
//! connection goes back to the pool only after its response was read to the end.

pub mod authn;
pub mod client;
pub mod record;
pub mod relay;
pub mod respond;
pub mod route;
pub mod session;
pub mod stream;
pub mod validate;

use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;

use crate::authz::{Grant, ListFilter};
use crate::codec::http::{BodyKind, Method, RequestHead};
use crate::error::{Error, Kind, Result};
use crate::mcp::{self, Version};
use crate::metrics::{inc, method_index};
use crate::shard::sse::SseCtx;
use crate::shard::{ClientConn, Shard};
use crate::tape::{Dir, Tap};
use route::PostRoute;

/// The endpoint path MCP clients use.
pub const MCP_PATH: &str = "/mcp";

/// What a finished exchange leaves behind.
pub struct Outcome {
    pub status: u16,
    /// The connection can carry another request.
    pub reusable: bool,
    /// The answer reached the client: every byte of its head and of the JSON-RPC response it
    /// carries was accepted by the client's socket (see `relay::RelayEnd::answered`). A client
    /// may close right after that, before the end of the body: it still got its answer.
    pub answered: bool,
}

impl Outcome {
    /// An answer written in full on a connection that can carry another request.
    pub fn written(status: u16) -> Outcome {
        Outcome {
            status,
            reusable: true,
            answered: true,
        }
    }

    /// An answer whose last write ended the way `client_ok` says.
    pub fn ended(status: u16, client_ok: bool) -> Outcome {
        Outcome {
            status,
            reusable: client_ok,
            answered: client_ok,
        }
    }
}

/// How an answer reaches the client, besides its bytes.
pub struct Delivery {
    /// Where the answer is recorded.
    pub tap: Option<Tap>,
    /// Makes an SSE answer a session's resumable stream.
    pub sse: Option<SseCtx>,
    /// The gateway session id an initialize answer announces. Its answer is then tracked:
    /// the session stands or falls by whether it was written (`Outcome::answered`).
    pub session: Option<String>,
    /// Before writing an HTTP upstream's answer, check that the client is still there (a
    /// request sent without a hang-up watch: initialize).
    pub check_hangup: bool,
    /// Takes what the subject may not use out of a list answer (`authz::ListFilter`).
    pub filter: Option<ListFilter>,
}

impl Delivery {
    pub fn to(tap: Option<Tap>) -> Delivery {
        Delivery {
            tap,
            sse: None,
            session: None,
            check_hangup: false,
            filter: None,
        }
    }
}

/// Serves one client connection until it closes, fails, idles out, or moves to another shard.
///
/// This future is what an idle keep-alive connection costs (bounded by the test below): a
/// connection serving requests runs `serve_busy`, boxed, with the state of an exchange
/// (4.7 KB) and its read buffer; once no request came for `IDLE_BUFFER_HOLD` it gives both
/// back and waits here, holding only a readiness wait. One allocation per busy period, none
/// per request.
pub async fn serve(shard: Rc<Shard>, mut conn: ClientConn) {
    loop {
        match Box::pin(serve_busy(&shard, &mut conn)).await {
            Busy::Closed => return,
            Busy::Idle => {
                if !client::wait_idle(&shard, &mut conn).await {
                    return;
                }
            }
            Busy::HandOff(owner) => match conn.hand_off(owner) {
                Ok(()) => return,
                Err(back) => {
                    conn = *back;
                    shard.stats.count_rejection("handoff_queue");
                    let e = Error::new(Kind::Overloaded("handoff_queue"), "");
                    return Box::pin(refuse(&shard, &mut conn, e, false)).await;
                }
            },
        }
    }
}

/// How a busy period of a connection ended.
enum Busy {
    /// Closed, failed, idled out for good, or shutting down.
    Closed,
    /// No request for `IDLE_BUFFER_HOLD`: wait for the next one cheaply.
    Idle,
    /// The request read names a session another shard owns.
    HandOff(usize),
}

/// Serves requests on a connection while they keep coming.
async fn serve_busy(shard: &Rc<Shard>, conn: &mut ClientConn) -> Busy {
    loop {
        let head = match client::next_head(shard, conn).await {
            Ok(client::Next::Head(h)) => h,
            Ok(client::Next::Idle) => return Busy::Idle,
            Ok(client::Next::Closed) => return Busy::Closed,
            Err(e) => {
                shard.stats.count_request("invalid", e.status());
                refuse(shard, conn, e, true).await;
                return Busy::Closed;
            }
        };
        if let Some(owner) = foreign_owner(shard, &head) {
            return Busy::HandOff(owner);
        }
        if !exchange(shard, conn, head).await || shard.shutdown.is_set() {
            return Busy::Closed;
        }
        conn.rb.shrink_if_idle();
    }
}

/// Answers a request that cannot be served with `e` and ends the connection (lingering first
/// when `linger`: the client may still be sending).
async fn refuse(shard: &Shard, conn: &mut ClientConn, e: Error, linger: bool) {
    let _ = respond::write_error(shard, &mut conn.stream, &e, false).await;
    if linger {
        client::linger(shard, conn, false).await;
    }
}

/// The shard owning the session a request names, when it is not this one.
fn foreign_owner(shard: &Shard, head: &RequestHead) -> Option<usize> {
    if head.headers.get_str("mcp-protocol-version") == Some(mcp::STATELESS_VERSION) {
        return None;
    }
    let owner = session::owner_shard(shard, head.headers.get("mcp-session-id")?)?;
    (owner != shard.id && owner < shard.shared.config.shards).then_some(owner)
}

/// Runs one request through the pipeline. Returns whether the connection stays open.
async fn exchange(shard: &Rc<Shard>, conn: &mut ClientConn, head: RequestHead) -> bool {
    let started = Instant::now();
    conn.rb.consume(head.head_len);
    let mut ex = Exchange::new(&head);
    let result = pipeline(shard, conn, &head, &mut ex).await;
    let (status, reusable) = match result {
        Ok(out) => (out.status, out.reusable),
        Err(e) => answer_error(shard, conn, &head, &ex, e).await,
    };
    if let Some(session) = ex.one_off {
        shard.record_end(session, "exchange done");
    }
    shard.stats.count_request(ex.method, status);
    shard.record_latency(started);
    reusable && head.keep_alive && !ex.body_pending
}

/// The stages a request passes, in order.
async fn pipeline(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    head: &RequestHead,
    ex: &mut Exchange,
) -> Result<Outcome> {
    if let Some(doc) = authn::metadata(shard, head) {
        return authn::serve_metadata(conn, doc).await;
    }
    let version = validate::request(shard, head)?;
    authn::authenticate(shard, conn, head, ex).await?;
    validate::client_rate(shard, conn)?;
    let stateless = version.is_some_and(Version::is_stateless);
    match head.method {
        Method::Post => {
            let body = client::read_body(shard, conn, head).await?;
            ex.body_pending = false;
            // A body that is not JSON-RPC has no method to count: `invalid`.
            let parsed = validate::classify(&body).inspect_err(|_| ex.method = "invalid")?;
            ex.method = static_method(parsed.method_label());
            let first_id = parsed.messages().first().and_then(|m| m.id);
            let fail = |e: Error| e.with_id(first_id);
            let post = (head, &body, &parsed);
            let to = route::post_route(shard, head, &parsed, version).map_err(fail)?;
            route::authorize(shard, ex.grant.as_deref(), &parsed)?;
            match to {
                PostRoute::Stateless => route::stateless(shard, conn, post, ex).await,
                PostRoute::Initialize => route::initialize(shard, conn, post, ex).await,
                PostRoute::InSession(sid) => route::in_session(shard, conn, post, ex, sid).await,
                PostRoute::Sessionless(v) => route::sessionless(shard, conn, post, ex, v).await,
            }
            .map_err(fail)
        }
        Method::Get | Method::Delete if stateless => Err(validate::stateless_405()),
        Method::Get => route::get(shard, conn, head, ex).await,
        Method::Delete => route::delete(shard, conn, head, ex).await,
        _ => Err(Error::new(Kind::MethodNotAllowed, head.method.as_str())),
    }
}

/// Answers a failed exchange (unless the client hung up: nobody would read it). Returns the
/// status and whether the connection can carry another request.
async fn answer_error(
    shard: &Shard,
    conn: &mut ClientConn,
    head: &RequestHead,
    ex: &Exchange,
    e: Error,
) -> (u16, bool) {
    log_error(shard, &e);
    if e.kind != Kind::ClientGone && ex.tap.is_some() {
        let body = Bytes::from(e.body());
        shard
            .record_message(ex.tap, Dir::ServerToClient, e.status(), None, body)
            .await;
    }
    let close = e.closes_connection() || ex.body_pending || !head.keep_alive;
    let ok = e.kind != Kind::ClientGone
        && respond::write_error(shard, &mut conn.stream, &e, !close)
            .await
            .is_ok();
    if ok && close {
        client::linger(shard, conn, ex.body_pending).await;
    }
    (e.status(), ok && !close)
}

/// Per-request facts gathered along the pipeline.
pub struct Exchange {
    method: &'static str,
    body_pending: bool,
    /// Where this exchange's frames are recorded.
    pub tap: Option<Tap>,
    /// A tape session opened for this exchange alone (stateless or sessionless), ended with it.
    pub one_off: Option<u64>,
    /// What the authenticated subject may use; `None`: no authorization (nothing checked or
    /// filtered, at no cost).
    pub grant: Option<Rc<Grant>>,
    /// Who sent the request (auth on; `None` when off).
    pub subject: Option<Rc<crate::auth::Subject>>,
}

impl Exchange {
    fn new(head: &RequestHead) -> Exchange {
        Exchange {
            method: match head.method {
                Method::Get => "GET",
                Method::Delete => "DELETE",
                _ => "other",
            },
            body_pending: head.body != BodyKind::None,
            tap: None,
            one_off: None,
            grant: None,
            subject: None,
        }
    }

    /// The authenticated subject's name.
    pub fn subject_name(&self) -> Option<&str> {
        self.subject.as_deref().map(|s| &*s.name)
    }

    /// Records the client's message on the exchange's tap.
    pub async fn record_request(&self, shard: &Shard, body: &Bytes) {
        shard
            .record_message(self.tap, Dir::ClientToServer, 0, None, body.clone())
            .await;
    }

    /// Opens a tape session for this exchange alone.
    pub async fn open_one_off(
        &mut self,
        shard: &Shard,
        conn: &ClientConn,
        version: &str,
        servers: Option<&str>,
    ) {
        if let Some(session) = shard.new_tape_session() {
            let subject = self.subject_name();
            shard
                .record_start(session, version, (&peer(conn), subject), servers)
                .await;
            self.tap = Some(Tap::new(session));
            self.one_off = Some(session);
        }
    }
}

/// The client's address, as tapes name it.
pub fn peer(conn: &ClientConn) -> String {
    conn.client_addr()
        .map(|a| a.to_string())
        .unwrap_or_default()
}

fn log_error(shard: &Shard, e: &Error) {
    match e.side() {
        crate::error::Side::Client => {
            inc(&shard.stats.client_errors);
            log::debug!("shard {}: client error: {e}", shard.id);
        }
        crate::error::Side::Upstream => log::warn!("shard {}: upstream error: {e}", shard.id),
        crate::error::Side::Internal => log::info!("shard {}: {e}", shard.id),
    }
}

/// Maps a classified method to its metrics label (a static string from the label table).
fn static_method(m: &str) -> &'static str {
    crate::metrics::METHODS[method_index(m)]
}

#[cfg(test)]
mod tests {
    /// The most a connection's future may take: an idle keep-alive connection costs this plus
    /// its task header, its socket and the kernel's buffers (issue goal: 2 KB per idle
    /// connection in all). Debug builds lay futures out larger than release.
    const MAX_SERVE_FUTURE_BYTES: usize = if cfg!(debug_assertions) { 1536 } else { 768 };

    /// The size of the future an async fn of two arguments returns, without calling it.
    fn future_size<A, B, F: std::future::Future>(_: impl Fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_connection_waiting_for_its_next_request_stays_small() {
        let n = future_size(super::serve);
        eprintln!("serve future: {n} bytes");
        assert!(
            n <= MAX_SERVE_FUTURE_BYTES,
            "gateway::serve's future is {n} bytes, past its bound of {MAX_SERVE_FUTURE_BYTES}: \
             box the state that grew (see the note on `serve`)"
        );
    }
}
