//! The request pipeline. `serve` drives one client connection; `exchange` wires one request
//! through every stage, top to bottom:
//!
//! read head → affinity (hand the connection to the session's owner shard) → validate Host,
//! Origin, path → read body → classify JSON-RPC → version rules → session lookup or creation →
//! forward upstream → relay the response (JSON, chunked, or SSE event by event) → metrics.
//!
//! Invariants: every error becomes exactly one response built by `Error`; a connection whose
//! request body was not fully read is closed, never reused; an upstream connection goes back to
//! the pool only after its response was read to the end.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::io::{AsyncWriteRentExt, Canceller};
use monoio::net::TcpStream;

use crate::codec::http::{
    self, BodyDecoder, BodyKind, HeadBody, Method, RequestHead, ResponseHead,
};
use crate::degrade::Level;
use crate::error::{Error, Kind, Result};
use crate::mcp::{self, SessionId, Version};
use crate::metrics::{gauge_add, inc, method_index};
use crate::record::Tap;
use crate::relay;
use crate::session::Expiry;
use crate::shard::{ClientConn, Shard};
use crate::stream::{Origin, StreamKind};
use crate::tape::Dir;
use crate::upstream::http::{
    connect_upstream, encode_start, http_pool, pick_upstream, push_header, read_response_head,
    send_request, UpRequest,
};
use crate::upstream::UpConn;

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

/// Serves one client connection until it closes, fails, idles out, or moves to another shard.
pub async fn serve(shard: Rc<Shard>, mut conn: ClientConn) {
    loop {
        let head = match next_head(&shard, &mut conn).await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => {
                let _ = write_error(&shard, &mut conn.stream, &e, false).await;
                shard.stats.count_request("invalid", e.status());
                return;
            }
        };
        if let Some(owner) = foreign_owner(&shard, &head) {
            match conn.hand_off(owner) {
                Ok(()) => return,
                Err(back) => {
                    conn = *back;
                    shard.stats.count_rejection("handoff_queue");
                    let e = Error::new(Kind::Overloaded("handoff_queue"), "");
                    let _ = write_error(&shard, &mut conn.stream, &e, false).await;
                    return;
                }
            }
        }
        if !exchange(&shard, &mut conn, head).await || shard.shutdown.is_set() {
            return;
        }
        conn.rb.shrink_if_idle();
    }
}

/// The shard owning the session a request names, when it is not this one.
fn foreign_owner(shard: &Shard, head: &RequestHead) -> Option<usize> {
    if stateless_version(head) {
        return None;
    }
    let id = SessionId::decode(head.headers.get("mcp-session-id")?)?;
    let owner = id.shard as usize;
    (owner != shard.id && owner < shard.shared.config.shards).then_some(owner)
}

fn stateless_version(head: &RequestHead) -> bool {
    head.headers.get_str("mcp-protocol-version") == Some(mcp::STATELESS_VERSION)
}

/// Reads the next request head. `Ok(None)`: the client closed or idled out between requests.
async fn next_head(shard: &Shard, conn: &mut ClientConn) -> Result<Option<RequestHead>> {
    let limits = http::HeadLimits {
        max_head_bytes: shard.config().limits.max_head_bytes,
        max_headers: shard.config().limits.max_headers,
    };
    let started = Instant::now();
    loop {
        if let Some(head) = http::parse_request(conn.rb.data(), limits)? {
            return Ok(Some(head));
        }
        if conn.rb.data().is_empty() {
            match idle_read(shard, conn).await {
                Some(n) if n > 0 => continue,
                _ => return Ok(None),
            }
        }
        match read_within_head_budget(shard, conn, started).await {
            Ok(0) => {
                return Err(Error::new(
                    Kind::BadHttp(http::HttpError::Malformed("connection closed mid-head")),
                    "",
                ))
            }
            Ok(_) => {}
            Err(_) => {
                return Err(Error::new(
                    Kind::ClientTimeout,
                    "request head not received in time",
                ))
            }
        }
    }
}

/// How long a connection between requests keeps its read buffer armed in a read. A busy
/// keep-alive connection thus costs one read per request; one idle past this gives its buffer
/// back and waits for readiness instead, so idle connections cost almost no memory.
/// Measured at 5000 connections × 2 req/s (open loop): a 100 ms hold, crossed on every request,
/// gave p99 45 ms; a hold longer than the gaps gave 13 ms. 1 s keeps clients that pause between
/// calls on the cheap path; idle RSS at 5000 connections is 51 MB (tuning.md).
const IDLE_BUFFER_HOLD: Duration = Duration::from_secs(1);

/// Reads the first bytes of the next request. `None` (or `Some(0)`) when the client closed, the
/// keep-alive idle timeout passed, or the shard is shutting down.
async fn idle_read(shard: &Shard, conn: &mut ClientConn) -> Option<usize> {
    let idle = shard.config().timeouts.keepalive_idle;
    let hold = idle.min(IDLE_BUFFER_HOLD);
    match read_with_deadline(shard, conn, hold, true).await {
        Ok(n) => return Some(n),
        Err(_) if shard.shutdown.is_set() || hold >= idle => return None,
        Err(_) => {}
    }
    if !wait_readable(shard, conn, idle - hold).await {
        return None;
    }
    let head_timeout = shard.config().timeouts.client_head;
    read_with_deadline(shard, conn, head_timeout, false)
        .await
        .ok()
}

/// Waits, holding no read buffer, until an idle connection has bytes to read. False when `wait`
/// passes or shutdown comes first. Dropping a readiness wait loses no data, so it may simply
/// be raced.
async fn wait_readable(shard: &Shard, conn: &mut ClientConn, wait: Duration) -> bool {
    if shard.shutdown.is_set() {
        return false;
    }
    let spare = std::mem::take(&mut conn.rb).into_vec();
    shard.give_buffer(spare);
    let ready = monoio::select! {
        r = conn.stream.readable(false) => r.is_ok(),
        _ = monoio::time::sleep(wait) => false,
        _ = shard.shutdown.wait() => false,
    };
    if ready {
        conn.rb = http::ReadBuf::from_vec(shard.take_buffer());
    }
    ready
}

/// Reads more bytes of a request that began at `started`: head and body share the
/// `client_head_timeout_ms` budget.
async fn read_within_head_budget(
    shard: &Shard,
    conn: &mut ClientConn,
    started: Instant,
) -> std::io::Result<usize> {
    let wait = shard
        .config()
        .timeouts
        .client_head
        .saturating_sub(started.elapsed());
    read_with_deadline(shard, conn, wait, false).await
}

/// Reads more client bytes, giving up after `wait` (or at shutdown when `idle`). The read is
/// cancelled, not dropped, so bytes that raced the timeout are kept.
async fn read_with_deadline(
    shard: &Shard,
    conn: &mut ClientConn,
    wait: Duration,
    idle: bool,
) -> std::io::Result<usize> {
    if idle && shard.shutdown.is_set() {
        return Ok(0);
    }
    let canceller = Canceller::new();
    let read = conn
        .rb
        .fill_cancelable(&mut conn.stream, canceller.handle());
    let mut read = std::pin::pin!(read);
    let done = monoio::select! {
        r = &mut read => Some(r),
        _ = monoio::time::sleep(wait) => None,
        _ = shard.shutdown.wait(), if idle => None,
    };
    match done {
        Some(r) => r,
        None => {
            let _ = canceller.cancel();
            read.await
        }
    }
}

/// Runs one request through the pipeline. Returns whether the connection stays open.
async fn exchange(shard: &Rc<Shard>, conn: &mut ClientConn, head: RequestHead) -> bool {
    let started = Instant::now();
    conn.rb.consume(head.head_len);
    let mut ex = Exchange {
        method: method_label(head.method),
        body_pending: head.body != BodyKind::None,
        tap: None,
        one_off: None,
    };
    let result = route(shard, conn, &head, &mut ex).await;
    let (status, reusable) = match result {
        Ok(out) => (out.status, out.reusable),
        Err(e) => {
            log_error(shard, &e);
            if e.kind != Kind::ClientGone && ex.tap.is_some() {
                let body = Bytes::from(e.body());
                shard
                    .record_message(ex.tap, Dir::ServerToClient, e.status(), None, body)
                    .await;
            }
            let close = e.closes_connection() || ex.body_pending || !head.keep_alive;
            // A client that hung up gets no answer: there is nobody to read it.
            let ok = e.kind != Kind::ClientGone
                && write_error(shard, &mut conn.stream, &e, !close)
                    .await
                    .is_ok();
            (e.status(), ok && !close)
        }
    };
    if let Some(session) = ex.one_off {
        shard.record_end(session, "exchange done");
    }
    shard.stats.count_request(ex.method, status);
    shard.record_latency(started);
    reusable && head.keep_alive && !ex.body_pending
}

/// Per-request facts gathered along the pipeline.
struct Exchange {
    method: &'static str,
    body_pending: bool,
    /// Where this exchange's frames are recorded.
    tap: Option<Tap>,
    /// A tape session opened for this exchange alone (stateless or sessionless), ended with it.
    one_off: Option<u64>,
}

impl Exchange {
    /// Records the client's message on the exchange's tap.
    async fn record_request(&self, shard: &Shard, body: &Bytes) {
        shard
            .record_message(self.tap, Dir::ClientToServer, 0, None, body.clone())
            .await;
    }

    /// Opens a tape session for this exchange alone.
    async fn open_one_off(&mut self, shard: &Shard, conn: &ClientConn, version: &str) {
        if let Some(session) = shard.new_tape_session() {
            shard.record_start(session, version, &peer(conn)).await;
            self.tap = Some(Tap { session, stream: 1 });
            self.one_off = Some(session);
        }
    }
}

fn peer(conn: &ClientConn) -> String {
    conn.stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default()
}

fn method_label(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Delete => "DELETE",
        _ => "other",
    }
}

async fn route(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    head: &RequestHead,
    ex: &mut Exchange,
) -> Result<Outcome> {
    let path = head.path.split('?').next().unwrap_or("");
    if path != MCP_PATH {
        return Err(Error::new(Kind::NotFound, format!("no endpoint at {path}")));
    }
    let policy = &shard.config().origins;
    if head.minor == 1 && !policy.host_ok(head.headers.get_str("host")) {
        return Err(Error::new(Kind::MisdirectedHost, ""));
    }
    if !policy.origin_ok(head.headers.get_str("origin")) {
        return Err(Error::new(Kind::ForbiddenOrigin, ""));
    }
    let version = header_version(head)?;
    let level = crate::degrade::level(&shard.shared);
    if level == Level::Protective && head.headers.get("mcp-session-id").is_none() {
        // Only requests of existing sessions are served.
        return Err(degraded(shard, "only existing sessions are served"));
    }
    let clients = &shard.shared.clients;
    if clients.rates_clients() {
        if let Err(wait) = clients.take(conn.client_cell(), Instant::now()) {
            return Err(rate_limited(shard, "client_rate", wait));
        }
    }
    match head.method {
        Method::Post => post(shard, conn, head, ex, version).await,
        Method::Get if version.is_some_and(Version::is_stateless) => Err(stateless_405()),
        Method::Get => get(shard, conn, head, ex).await,
        Method::Delete if version.is_some_and(Version::is_stateless) => Err(stateless_405()),
        Method::Delete => delete(shard, conn, head, ex).await,
        _ => Err(Error::new(Kind::MethodNotAllowed, head.method.as_str())),
    }
}

/// A 503 for work the degradation level sheds, counted.
fn degraded(shard: &Shard, why: &str) -> Error {
    shard.stats.count_rejection("degraded");
    Error::new(Kind::Overloaded("degraded"), why)
}

/// A 429 for a per-client or per-session limit, counted.
fn rate_limited(shard: &Shard, what: &'static str, wait: Duration) -> Error {
    shard.stats.count_rejection(what);
    let secs = wait.as_secs_f64().ceil().max(1.0) as u32;
    Error::new(Kind::RateLimited(what, secs), "")
}

/// Counts a new session against its client, after its session permit was taken. False (and
/// the permit given back) at `max_sessions_per_client`.
pub(crate) fn open_client_session(shard: &Shard, conn: &ClientConn) -> Result<u32> {
    let cell = conn.client_cell();
    if shard.shared.clients.open_session(cell) {
        return Ok(cell);
    }
    shard.shared.sessions.release();
    Err(rate_limited(
        shard,
        "client_sessions",
        Duration::from_secs(1),
    ))
}

fn stateless_405() -> Error {
    Error::new(
        Kind::MethodNotAllowed,
        "protocol version 2026-07-28 is POST only",
    )
}

/// The MCP-Protocol-Version header: absent is fine (assume 2025-03-26), unknown is a 400.
fn header_version(head: &RequestHead) -> Result<Option<Version>> {
    match head.headers.get_str("mcp-protocol-version") {
        None => Ok(None),
        Some(v) => Version::parse(v).map(Some).ok_or_else(|| {
            Error::new(
                Kind::UnsupportedVersion,
                format!(
                    "'{v}' is not supported; supported: {}",
                    mcp::KNOWN_VERSIONS.join(", ")
                ),
            )
        }),
    }
}

async fn post(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    head: &RequestHead,
    ex: &mut Exchange,
    version: Option<Version>,
) -> Result<Outcome> {
    let body = read_body(shard, conn, head).await?;
    ex.body_pending = false;
    let parsed = mcp::classify(&body).map_err(|e| match e {
        mcp::ClassifyError::Parse(why) => Error::new(Kind::ParseError, why),
        mcp::ClassifyError::Invalid(why) => Error::new(Kind::InvalidRequest, why),
    })?;
    ex.method = static_method(parsed.method_label());
    let first_id = parsed.messages().first().and_then(|m| m.id);
    let fail = |e: Error| e.with_id(first_id);
    if parsed.is_initialize()
        && crate::degrade::level(&shard.shared) >= Level::SessionsRejected
        && head.headers.get("mcp-session-id").is_none()
    {
        return Err(fail(degraded(shard, "new sessions are refused for now")));
    }
    if version.is_some_and(Version::is_stateless) {
        ex.open_one_off(shard, conn, mcp::STATELESS_VERSION).await;
        ex.record_request(shard, &body).await;
        return stateless_post(shard, conn, head, &body, &parsed, ex.tap)
            .await
            .map_err(fail);
    }
    let v = version.unwrap_or_else(Version::assumed);
    if matches!(parsed, mcp::Body::Batch(_)) && !v.allows_batch() {
        return Err(fail(Error::new(
            Kind::InvalidRequest,
            format!("batches are not allowed in protocol version {}", v.as_str()),
        )));
    }
    if shard.stdio.is_some() {
        return stdio_post(shard, conn, head, &body, &parsed, ex)
            .await
            .map_err(fail);
    }
    match head.headers.get("mcp-session-id") {
        Some(raw) => {
            let sref = lookup_session(shard, raw, true).map_err(fail)?;
            ex.tap = sref.tap;
            ex.record_request(shard, &body).await;
            let id = sref.id;
            let requests = parsed
                .messages()
                .iter()
                .filter(|m| m.kind == mcp::Kind::Request)
                .count();
            let req = UpRequest {
                method: Method::Post,
                head,
                body: Some(&body),
                upstream_sid: sref.upstream_sid.as_deref(),
                upstream: Some(sref.upstream),
                version: None,
            };
            let delivery = Delivery {
                tap: ex.tap,
                stream: Some(sref.sse_ctx(StreamKind::Post, requests)),
                shape: None,
            };
            // An upstream that no longer knows the session ends it here too.
            let mut on_head = |resp: &ResponseHead, _: usize| -> Option<String> {
                if resp.status == 404 {
                    end_session_local(shard, &id, "upstream forgot the session");
                }
                None
            };
            forward(shard, conn, req, delivery, Some(&mut on_head), true)
                .await
                .map_err(fail)
        }
        None if parsed.is_initialize() => {
            initialize(shard, conn, head, &body, ex).await.map_err(fail)
        }
        None => {
            ex.open_one_off(shard, conn, v.as_str()).await;
            ex.record_request(shard, &body).await;
            let req = UpRequest {
                method: Method::Post,
                head,
                body: Some(&body),
                upstream_sid: None,
                upstream: None,
                version: None,
            };
            let delivery = Delivery {
                tap: ex.tap,
                stream: None,
                shape: None,
            };
            forward(shard, conn, req, delivery, None, true)
                .await
                .map_err(fail)
        }
    }
}

/// A session-based POST for a stdio upstream: initialize starts a child, the rest go to the
/// session's child.
async fn stdio_post(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    head: &RequestHead,
    body: &Bytes,
    parsed: &mcp::Body<'_>,
    ex: &mut Exchange,
) -> Result<Outcome> {
    let mcp::Body::Single(msg) = parsed else {
        return Err(Error::new(
            Kind::InvalidRequest,
            "batches are not supported by stdio upstreams",
        ));
    };
    match head.headers.get("mcp-session-id") {
        Some(raw) => {
            let sref = lookup_session(shard, raw, true)?;
            ex.tap = sref.tap;
            ex.record_request(shard, body).await;
            let sink = crate::bridge::Sink {
                tap: ex.tap,
                sse: Some(sref.sse_ctx(StreamKind::Post, 1)),
            };
            let child = sref
                .child
                .ok_or_else(|| Error::new(Kind::UnknownSession, ""))?;
            crate::bridge::post(shard, conn, head, body, msg, child, sink).await
        }
        None if parsed.is_initialize() => {
            let session = open_session_tape(shard, conn, body, ex).await;
            let out = crate::bridge::initialize(shard, conn, body, msg.id, session).await;
            close_failed_session_tape(&out, session, ex);
            out
        }
        None => Err(Error::new(Kind::SessionRequired, "")),
    }
}

/// Starts the tape of a session being initialized and records its initialize.
async fn open_session_tape(
    shard: &Shard,
    conn: &ClientConn,
    body: &Bytes,
    ex: &mut Exchange,
) -> Option<u64> {
    let session = shard.new_tape_session()?;
    let version = requested_version(body);
    shard
        .record_start(session, version.as_str(), &peer(conn))
        .await;
    ex.tap = Some(Tap { session, stream: 1 });
    ex.record_request(shard, body).await;
    Some(session)
}

/// An initialize that made no session: its tape session ends with the exchange.
fn close_failed_session_tape(out: &Result<Outcome>, session: Option<u64>, ex: &mut Exchange) {
    if session.is_some() && !out.as_ref().is_ok_and(|o| o.status == 200 && o.reusable) {
        ex.one_off = session;
    }
}

/// 2026-07-28: no session; the routing headers must agree with the body; one message per POST.
async fn stateless_post(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    head: &RequestHead,
    body: &[u8],
    parsed: &mcp::Body<'_>,
    tap: Option<Tap>,
) -> Result<Outcome> {
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
    if shard.stdio.is_some() {
        return crate::bridge::stateless(shard, conn, head, body, msg, tap).await;
    }
    let mut req = UpRequest {
        method: Method::Post,
        head,
        body: Some(body),
        upstream_sid: None,
        upstream: None,
        version: None,
    };
    let delivery = Delivery {
        tap,
        stream: None,
        shape: None,
    };
    // Once every upstream is known to speak 2026-07-28, the balancer picks as for any request
    // (and may move one that could not be sent). Until then the era of the upstream matters.
    if shard.bridges.iter().all(crate::era::Bridge::is_modern) {
        return forward(shard, conn, req, delivery, None, true).await;
    }
    let i = pick_upstream(shard, 0, &[], Instant::now())?;
    match crate::era::route(shard, i).await {
        Ok(crate::era::Route::Bridged(shared)) => {
            req.upstream = Some(i);
            bridged(shard, conn, (req, tap), msg, i, shared).await
        }
        // A modern upstream, or one whose era could not be learned (it did not answer): the
        // request goes the usual way, moving to another upstream if it cannot be sent. With
        // a handshake-era upstream among them, it stays on the one that speaks its version.
        other => {
            if let Err(e) = &other {
                log::debug!("shard {}: upstream {i}: era unknown: {e}", shard.id);
            }
            if other.is_ok() && shard.bridges.iter().any(crate::era::Bridge::is_handshake) {
                req.upstream = Some(i);
            }
            forward(shard, conn, req, delivery, None, true).await
        }
    }
}

/// A 2026-07-28 request carried into the gateway's session on a handshake-era upstream:
/// `server/discover` is answered from the session's initialize result; anything else goes
/// without its envelope, and its answer comes back in the 2026-07-28 shape (`era`). A session
/// the upstream forgot (404: it did not take the request) is opened again and the request
/// sent once more.
async fn bridged(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    (req, tap): (UpRequest<'_>, Option<Tap>),
    msg: &mcp::Message<'_>,
    i: usize,
    mut shared: crate::era::Shared,
) -> Result<Outcome> {
    let method = msg.method.unwrap_or("");
    if msg.kind == mcp::Kind::Request && method == "server/discover" {
        let line = mcp::discover_from_initialize(&shared.init_result, msg.id.unwrap_or("null"))
            .ok_or_else(|| Error::new(Kind::UpstreamProtocol, "unreadable initialize result"))?;
        let copy = Bytes::from(line.clone());
        shard
            .record_message(tap, Dir::ServerToClient, 200, None, copy)
            .await;
        return write_json(&mut conn.stream, &line).await;
    }
    let stripped = req.body.and_then(mcp::strip_envelope);
    let body = stripped.as_deref().or(req.body).unwrap_or_default();
    let head = req.head;
    for attempt in 0..2 {
        // Requests get the shared session's own ids; the client's come back with the answer.
        let rewritten = match msg.kind {
            mcp::Kind::Request => {
                let gw = shard.bridges[i].next_id();
                Some((gw, crate::stdio::rewrite_request(body, gw)?))
            }
            _ => None,
        };
        let ids = rewritten
            .as_ref()
            .map(|(gw, r)| (*gw, r.id.clone(), r.token.clone()));
        let sid = shared.upstream_sid.clone();
        let refuse_shard = shard.clone();
        let req = UpRequest {
            method: Method::Post,
            head,
            body: Some(rewritten.as_ref().map_or(body, |(_, r)| r.line.as_slice())),
            upstream_sid: Some(&shared.upstream_sid),
            upstream: Some(i),
            version: Some(crate::era::BRIDGE_PROTOCOL_VERSION),
        };
        let delivery = Delivery {
            tap,
            stream: None,
            shape: Some(crate::stream::Shaping {
                method: method.into(),
                ids,
                refuse: Box::new(move |id| crate::era::refuse(&refuse_shard, i, sid.clone(), id)),
            }),
        };
        match forward(shard, conn, req, delivery, None, true).await {
            Err(e) if matches!(e.kind, Kind::UnknownSession) && attempt == 0 => {
                log::info!(
                    "shard {}: upstream {i} forgot the gateway's session",
                    shard.id
                );
                shard.bridges[i].forget(&shared.upstream_sid);
                match crate::era::route(shard, i).await? {
                    crate::era::Route::Bridged(s) => shared = s,
                    crate::era::Route::AsIs => {
                        return Err(Error::new(
                            Kind::UpstreamProtocol,
                            "the upstream changed era",
                        ))
                    }
                }
            }
            other => return other,
        }
    }
    Err(Error::new(
        Kind::UpstreamProtocol,
        "the upstream forgot the gateway's session twice",
    ))
}

/// A 200 JSON answer the gateway writes itself.
async fn write_json(stream: &mut TcpStream, body: &[u8]) -> Result<Outcome> {
    let mut out = Vec::with_capacity(body.len() + 96);
    http::write_response_head(
        &mut out,
        200,
        b"content-type: application/json\r\n",
        http::HeadBody::Length(body.len()),
    );
    out.extend_from_slice(body);
    let (res, _) = stream.write_all(out).await;
    res.map_err(|e| Error::new(Kind::ClientGone, e.to_string()))?;
    Ok(Outcome::written(200))
}

/// Forwards `initialize` under a session permit; mints the gateway's session on success.
async fn initialize(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    head: &RequestHead,
    body: &Bytes,
    ex: &mut Exchange,
) -> Result<Outcome> {
    let session = open_session_tape(shard, conn, body, ex).await;
    let out = initialize_upstream(shard, conn, head, body, session).await;
    close_failed_session_tape(&out, session, ex);
    out
}

async fn initialize_upstream(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    head: &RequestHead,
    body: &[u8],
    tape: Option<u64>,
) -> Result<Outcome> {
    if !acquire_session(shard) {
        shard.stats.count_rejection("sessions");
        return Err(Error::new(Kind::Overloaded("sessions"), ""));
    }
    let cell = open_client_session(shard, conn)?;
    let version = requested_version(body);
    let mut minted: Option<SessionId> = None;
    let mut on_head = |resp: &ResponseHead, upstream: usize| -> Option<String> {
        let up = resp
            .headers
            .get_str("mcp-session-id")
            .filter(|_| (200..300).contains(&resp.status))?;
        let id = shard
            .sessions
            .borrow_mut()
            .insert(Some(Rc::from(up)), version, Instant::now());
        if let Some(s) = shard.sessions.borrow_mut().get_mut(&id) {
            s.tape = tape;
            s.client = Some(cell);
            s.upstream = upstream;
        }
        inc(&shard.stats.sessions_created);
        gauge_add(&shard.stats.sessions, 1);
        minted = Some(id);
        Some(id.encode())
    };
    let req = UpRequest {
        method: Method::Post,
        head,
        body: Some(body),
        upstream_sid: None,
        upstream: None,
        version: None,
    };
    let delivery = Delivery {
        tap: tape.map(|session| Tap { session, stream: 1 }),
        stream: None,
        shape: None,
    };
    // No hang-up watch: aborting here could leave a session upstream that the gateway never
    // learns the id of. Let the answer arrive, then end the session if the client missed it.
    let result = forward(shard, conn, req, delivery, Some(&mut on_head), false).await;
    match minted {
        // The upstream made no session (error, or a sessionless server): give the permits back.
        None => {
            shard.shared.sessions.release();
            shard.shared.clients.close_session(cell);
        }
        // The session stands once its answer was written (`Outcome::answered`), even if the
        // client closed before the body's end: SDK clients close an SSE answer as soon as they
        // hold the result. Only a client that never got the result costs the session.
        Some(id) if !result.as_ref().is_ok_and(|o| o.answered) => {
            log::info!(
                "shard {}: client missed its initialize answer; ending the session",
                shard.id
            );
            end_session_everywhere(shard, &id, "client missed the initialize answer");
        }
        Some(_) => {}
    }
    result
}

/// Ends a session here and, in the background (bounded by the request timeout), upstream.
fn end_session_everywhere(shard: &Rc<Shard>, id: &SessionId, reason: &'static str) {
    if let Some(s) = end_session_local(shard, id, reason) {
        if let Some(up) = s.upstream_sid {
            let timeout = shard.config().timeouts.upstream_request;
            monoio::spawn(delete_upstream(shard.clone(), up, s.upstream, timeout));
        }
    }
}

pub(crate) fn requested_version(body: &[u8]) -> Version {
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
struct SessionRef {
    id: SessionId,
    /// The upstream's session id (HTTP upstreams).
    upstream_sid: Option<Rc<str>>,
    /// The session's child (stdio upstreams).
    child: Option<Rc<crate::stdio::Child>>,
    /// Where this exchange of the session is recorded.
    tap: Option<Tap>,
    /// Which HTTP upstream holds the session.
    upstream: usize,
    version: Version,
}

impl SessionRef {
    /// Makes an SSE answer in this session resumable.
    fn sse_ctx(&self, kind: StreamKind, responses: usize) -> crate::stream::SseCtx {
        crate::stream::SseCtx {
            origin: Origin {
                session: self.id,
                upstream: self.upstream,
                upstream_sid: self.upstream_sid.clone(),
                version: self.version,
            },
            kind,
            responses,
        }
    }
}

/// Resolves a client's session id. Unknown, malformed or foreign: 404.
/// With `limit`, the request takes a token from the session's bucket (POSTs do; GET streams
/// and DELETE do not).
fn lookup_session(shard: &Shard, raw: &[u8], limit: bool) -> Result<SessionRef> {
    let id = SessionId::decode(raw).ok_or_else(|| Error::new(Kind::UnknownSession, ""))?;
    let mut sessions = shard.sessions.borrow_mut();
    let s = sessions
        .get_mut(&id)
        .ok_or_else(|| Error::new(Kind::UnknownSession, ""))?;
    let now = Instant::now();
    if s.child.is_none() && !shard.health.session_servable(s.upstream, now) {
        // Its upstream is down (breaker open, probes failing) and holds the session's state:
        // the client must start again on a healthy upstream.
        drop(sessions);
        log::info!(
            "shard {}: session's upstream is down; session ended",
            shard.id
        );
        end_session_local(shard, &id, "upstream down");
        return Err(Error::new(Kind::UnknownSession, "its upstream is down"));
    }
    s.last_seen = now;
    if let Some(rate) = shard.shared.clients.session_rate.filter(|_| limit) {
        let bucket = s
            .bucket
            .get_or_insert_with(|| crate::limits::SessionBucket::full(rate, now));
        if let Err(wait) = bucket.take(rate, now) {
            return Err(rate_limited(shard, "session_rate", wait));
        }
    }
    let tap = s.tape.map(|session| {
        s.streams += 1;
        Tap {
            session,
            stream: s.streams,
        }
    });
    Ok(SessionRef {
        id,
        upstream_sid: s.upstream_sid.clone(),
        child: s.child.clone(),
        tap,
        upstream: s.upstream,
        version: s.version,
    })
}

/// Removes a session from the table (its stdio child, if any, is asked to end).
pub(crate) fn end_session_local(
    shard: &Shard,
    id: &SessionId,
    reason: &'static str,
) -> Option<crate::session::Session> {
    let mut s = shard.sessions.borrow_mut().remove(id)?;
    s.sse.stop_all();
    if let Some(session) = s.tape {
        shard.record_end(session, reason);
    }
    if let Some(cell) = s.client {
        shard.shared.clients.close_session(cell);
    }
    if let Some(child) = &s.child {
        child.end();
    }
    shard.shared.sessions.release();
    gauge_add(&shard.stats.sessions, -1);
    inc(&shard.stats.sessions_ended);
    Some(s)
}

async fn get(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    head: &RequestHead,
    ex: &mut Exchange,
) -> Result<Outcome> {
    let Some(raw) = head.headers.get("mcp-session-id") else {
        if shard.stdio.is_some() {
            return Err(Error::new(Kind::SessionRequired, ""));
        }
        let req = UpRequest {
            method: Method::Get,
            head,
            body: None,
            upstream_sid: None,
            upstream: None,
            version: None,
        };
        let delivery = Delivery {
            tap: None,
            stream: None,
            shape: None,
        };
        return forward(shard, conn, req, delivery, None, true).await;
    };
    let sref = lookup_session(shard, raw, false)?;
    ex.tap = sref.tap;
    if let Some(stream) = resumed_stream(shard, head, &sref) {
        return resume(shard, conn, stream, head).await;
    }
    if let Some(child) = &sref.child {
        let ctx = sref.sse_ctx(StreamKind::Get, 0);
        return crate::bridge::get(shard, conn, child.clone(), ex.tap, ctx).await;
    }
    let req = UpRequest {
        method: Method::Get,
        head,
        body: None,
        upstream_sid: sref.upstream_sid.as_deref(),
        upstream: Some(sref.upstream),
        version: None,
    };
    let delivery = Delivery {
        tap: ex.tap,
        stream: Some(sref.sse_ctx(StreamKind::Get, 0)),
        shape: None,
    };
    forward(shard, conn, req, delivery, None, true).await
}

/// The session stream a GET with `Last-Event-ID` names, if the gateway still holds it. An id
/// the gateway did not issue, or a forgotten stream, opens a new stream instead.
fn resumed_stream(
    shard: &Shard,
    head: &RequestHead,
    sref: &SessionRef,
) -> Option<Rc<crate::stream::Stream>> {
    let (no, _) = crate::stream::parse_event_id(head.headers.get("last-event-id")?)?;
    let sessions = shard.sessions.borrow();
    sessions.get(&sref.id)?.sse.find(no)
}

/// Continues a session stream on this connection, from the event after `Last-Event-ID`.
async fn resume(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    stream: Rc<crate::stream::Stream>,
    head: &RequestHead,
) -> Result<Outcome> {
    let after = head
        .headers
        .get("last-event-id")
        .and_then(crate::stream::parse_event_id)
        .map_or(0, |(_, seq)| seq);
    inc(&shard.stats.sse_resumed);
    if stream.needs_reader() {
        crate::stream::restart(shard, &stream);
    }
    let mut out = Vec::with_capacity(128);
    http::write_response_head(
        &mut out,
        200,
        b"content-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n",
        http::HeadBody::Chunked,
    );
    let (res, _) = conn.stream.write_all(out).await;
    res.map_err(|e| Error::new(Kind::ClientGone, e.to_string()))?;
    let end = crate::stream::deliver(shard, conn, &stream, after.saturating_add(1)).await;
    let done = relay::finish_stream(conn, &stream, end).await;
    Ok(Outcome::ended(200, done.client_ok))
}

async fn delete(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    head: &RequestHead,
    ex: &mut Exchange,
) -> Result<Outcome> {
    let raw = head
        .headers
        .get("mcp-session-id")
        .ok_or_else(|| Error::new(Kind::SessionRequired, ""))?;
    let sref = lookup_session(shard, raw, false)?;
    ex.tap = sref.tap;
    let id = sref.id;
    let Some(upstream_sid) = sref.upstream_sid else {
        // No upstream session (a stdio child, ended with the session, or a sessionless server).
        shard.record_status(ex.tap, 200).await;
        end_session_local(shard, &id, "deleted");
        write_simple(&mut conn.stream, 200, b"", true).await?;
        return Ok(Outcome::written(200));
    };
    let req = UpRequest {
        method: Method::Delete,
        head,
        body: None,
        upstream_sid: Some(&upstream_sid),
        upstream: Some(sref.upstream),
        version: None,
    };
    let delivery = Delivery {
        tap: ex.tap,
        stream: None,
        shape: None,
    };
    // Ended as soon as the upstream's answer head arrives, before the client can see it, so a
    // client that re-initializes at once finds the session slot free. A 405 means the upstream
    // keeps sessions until they expire: so does the gateway.
    let mut on_head = |resp: &ResponseHead, _: usize| -> Option<String> {
        if (200..300).contains(&resp.status) || resp.status == 404 {
            end_session_local(shard, &id, "deleted");
        }
        None
    };
    forward(shard, conn, req, delivery, Some(&mut on_head), true).await
}

/// Reads a whole request body, bounded by `max_body_bytes`.
async fn read_body(shard: &Shard, conn: &mut ClientConn, head: &RequestHead) -> Result<Bytes> {
    let max = shard.config().limits.max_body_bytes;
    if let BodyKind::Length(n) = head.body {
        if n > max as u64 {
            return Err(http::HttpError::BodyTooLarge.into());
        }
    }
    if head.body != BodyKind::None
        && head
            .headers
            .get_str("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        // The client waits for this before sending the body (curl does above 1 KiB).
        let (res, _) = conn
            .stream
            .write_all(&b"HTTP/1.1 100 Continue\r\n\r\n"[..])
            .await;
        res.map_err(|e| Error::new(Kind::ClientTimeout, e.to_string()))?;
    }
    let mut decoder = BodyDecoder::new(head.body);
    let mut body = Vec::with_capacity(match head.body {
        BodyKind::Length(n) => n as usize,
        _ => 0,
    });
    let mut too_large = false;
    let started = Instant::now();
    loop {
        let done = decoder.decode(&mut conn.rb, &mut |d: &[u8]| {
            if body.len() + d.len() > max {
                too_large = true;
            } else {
                body.extend_from_slice(d);
            }
        })?;
        if too_large {
            return Err(http::HttpError::BodyTooLarge.into());
        }
        if done {
            return Ok(Bytes::from(body));
        }
        match read_within_head_budget(shard, conn, started).await {
            Ok(0) => return Err(http::HttpError::Malformed("body truncated").into()),
            Ok(_) => {}
            Err(_) => {
                return Err(Error::new(
                    Kind::ClientTimeout,
                    "request body not received in time",
                ))
            }
        }
    }
}

/// How an upstream's answer reaches the client, besides the bytes (`upstream::http::UpRequest`
/// is what goes upstream).
pub struct Delivery {
    /// Where the response is recorded.
    pub tap: Option<Tap>,
    /// Makes an SSE answer a session's resumable stream.
    pub stream: Option<crate::stream::SseCtx>,
    /// Gives the answer the 2026-07-28 shape on the way back (`era`).
    pub shape: Option<crate::stream::Shaping>,
}

/// Called with the upstream's response head and the upstream's index; may return a gateway
/// session id to announce.
pub type OnHead<'a> = Option<&'a mut dyn FnMut(&ResponseHead, usize) -> Option<String>>;

/// Sends `req` upstream and relays the response to the client. With `watch_hangup`, a client
/// that hangs up while the upstream is still thinking aborts the upstream request.
async fn forward(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    req: UpRequest<'_>,
    delivery: Delivery,
    on_head: OnHead<'_>,
    watch_hangup: bool,
) -> Result<Outcome> {
    // Only `sticky` needs the client's address (saves a getpeername per connection otherwise).
    let client = if shard.balancer.by_client() {
        conn.client_cell()
    } else {
        0
    };
    let (mut up, upstream) = connect_upstream(shard, &req, client).await?;
    let mut urb = http::ReadBuf::from_vec(shard.take_buffer());
    let client = watch_hangup.then_some(&conn.stream);
    let resp = match read_response_head(shard, &mut up, &mut urb, req.method, client).await {
        Ok(r) => {
            let failed = matches!(r.status, 502..=504);
            shard
                .health
                .record(upstream, !failed, Instant::now(), &shard.stats);
            r
        }
        Err(e) => {
            if e.side() == crate::error::Side::Upstream {
                inc(&shard.stats.upstream_errors);
                shard
                    .health
                    .record(upstream, false, Instant::now(), &shard.stats);
            }
            shard.give_buffer(urb.into_vec());
            return Err(e);
        }
    };
    if resp.status == 404 && delivery.shape.is_some() {
        // The gateway's shared session is gone (`bridged` opens a new one and sends again):
        // the upstream did not take the request, and the client sees nothing of this answer.
        let wait = shard.config().timeouts.upstream_request;
        if relay::drain_body(&mut up, &mut urb, resp.body, wait).await && resp.keep_alive {
            up.checkin();
        }
        shard.give_buffer(urb.into_vec());
        return Err(Error::new(
            Kind::UnknownSession,
            "the upstream forgot the session",
        ));
    }
    let mut resp = resp;
    if req.method == Method::Delete && (200..300).contains(&resp.status) {
        // The spec's answer to a DELETE that ended the session is 200: SDK clients take any
        // other (rmcp answers 202) for a failed termination.
        resp.status = 200;
    }
    let session_header = on_head.and_then(|f| f(&resp, upstream));
    if !watch_hangup && crate::upstream::http::has_hung_up(&conn.stream) {
        // Nobody to relay to; the caller cleans up what `on_head` created.
        shard.give_buffer(urb.into_vec());
        return Err(Error::new(
            Kind::ClientGone,
            "client hung up before the answer",
        ));
    }
    let answer = relay::Answer {
        session_header: session_header.as_deref(),
        tap: delivery.tap,
        sse: delivery.stream,
        // Only an initialize announces a session, and only its answer decides whether it stands.
        track_answer: session_header.is_some(),
        shape: delivery.shape,
    };
    let end = relay::relay(shard, conn, up, urb, &resp, answer).await;
    Ok(Outcome {
        status: resp.status,
        reusable: end.client_ok,
        answered: end.answered,
    })
}

/// Why a session stream could not be reopened upstream.
pub enum Reopen {
    /// Worth another attempt (connect failure, timeout, 5xx).
    Retry(String),
    /// Final: the upstream forgot the session or refuses the stream.
    Gone(String),
}

/// Opens a session's stream upstream again: GET with the upstream's last event id, so an
/// upstream that supports resumption continues where it stopped.
pub(crate) async fn reopen_stream(
    shard: &Rc<Shard>,
    origin: &crate::stream::Origin,
    last_event_id: Option<&str>,
) -> std::result::Result<(UpConn, http::ReadBuf, ResponseHead), Reopen> {
    let sid = origin
        .upstream_sid
        .as_deref()
        .ok_or_else(|| Reopen::Gone("no upstream session".into()))?;
    let pool = http_pool(shard, origin.upstream).map_err(|e| Reopen::Gone(e.to_string()))?;
    let cfg = pool.config();
    let mut wire = Vec::with_capacity(512);
    encode_start(&mut wire, Method::Get, cfg);
    push_header(&mut wire, "accept", b"text/event-stream");
    push_header(
        &mut wire,
        "mcp-protocol-version",
        origin.version.as_str().as_bytes(),
    );
    push_header(&mut wire, "mcp-session-id", sid.as_bytes());
    if let Some(id) = last_event_id {
        push_header(&mut wire, "last-event-id", id.as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
    let mut up = send_request(shard, origin.upstream, wire)
        .await
        .map_err(|(e, _)| Reopen::Retry(e.to_string()))?;
    let mut urb = http::ReadBuf::from_vec(shard.take_buffer());
    let resp = match read_response_head(shard, &mut up, &mut urb, Method::Get, None).await {
        Ok(r) => r,
        Err(e) => {
            shard.give_buffer(urb.into_vec());
            return Err(Reopen::Retry(e.to_string()));
        }
    };
    if resp.status == 200 && http::is_event_stream(resp.headers.get("content-type")) {
        return Ok((up, urb, resp));
    }
    shard.give_buffer(urb.into_vec());
    let why = format!("upstream answered {}", resp.status);
    if resp.status == 404 {
        end_session_local(shard, &origin.session, "upstream forgot the session");
    }
    if resp.status >= 500 || resp.status == 429 {
        Err(Reopen::Retry(why))
    } else {
        Err(Reopen::Gone(why))
    }
}

/// Writes an error response. `keep` says whether the connection stays open afterwards.
pub async fn write_error(
    shard: &Shard,
    stream: &mut TcpStream,
    e: &Error,
    keep: bool,
) -> std::io::Result<()> {
    let body = e.body();
    let mut out = Vec::with_capacity(256 + body.len());
    let mut extra = Vec::new();
    extra.extend_from_slice(b"content-type: application/json\r\n");
    if e.retryable() && e.status() == 503 {
        extra.extend_from_slice(
            format!("retry-after: {}\r\n", shard.config().limits.retry_after_s).as_bytes(),
        );
    }
    if let Kind::RateLimited(_, secs) = e.kind {
        extra.extend_from_slice(format!("retry-after: {secs}\r\n").as_bytes());
    }
    if e.status() == 405 {
        extra.extend_from_slice(b"allow: POST, GET, DELETE\r\n");
    }
    if !keep {
        extra.extend_from_slice(b"connection: close\r\n");
    }
    http::write_response_head(&mut out, e.status(), &extra, HeadBody::Length(body.len()));
    out.extend_from_slice(&body);
    let (res, _) = stream.write_all(out).await;
    res.map(|_| ())
}

async fn write_simple(stream: &mut TcpStream, status: u16, body: &[u8], keep: bool) -> Result<()> {
    let mut out = Vec::with_capacity(128 + body.len());
    let extra: &[u8] = if keep { b"" } else { b"connection: close\r\n" };
    http::write_response_head(&mut out, status, extra, HeadBody::Length(body.len()));
    out.extend_from_slice(body);
    let (res, _) = stream.write_all(out).await;
    res.map(|_| ())
        .map_err(|e| Error::new(Kind::Internal, e.to_string()))
}

/// Answers a connection that is not admitted with a 503 and closes it.
pub async fn reject(shard: Rc<Shard>, mut stream: TcpStream, kind: Kind) {
    let e = Error::new(kind, "");
    let _ = write_error(&shard, &mut stream, &e, false).await;
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

/// Ends sessions past their idle timeout or maximum age, locally and upstream. Only sessions
/// due now are looked at (see `session`).
pub fn expire_sessions(shard: &Rc<Shard>, now: Instant) {
    let due = shard.sessions.borrow_mut().due(now);
    for (id, why) in due {
        let reason = match why {
            Expiry::Idle => {
                inc(&shard.stats.sessions_expired);
                "expired"
            }
            Expiry::MaxAge => {
                inc(&shard.stats.sessions_max_age);
                "maximum age"
            }
        };
        log::info!("shard {}: session ended: {reason}", shard.id);
        end_session_everywhere(shard, &id, reason);
    }
}

/// Takes a session permit. At `max_sessions`, the least recently used session of this shard
/// idle for `session_evict_idle_ms` is ended (here and upstream) to make room, and counted.
pub(crate) fn acquire_session(shard: &Rc<Shard>) -> bool {
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
    end_session_everywhere(shard, &victim, "evicted");
    shard.shared.sessions.try_acquire()
}

/// Ends every session of the shard upstream (shutdown), all at once, within `within`.
pub async fn end_all_sessions(shard: &Rc<Shard>, within: Duration) {
    let ids = shard.sessions.borrow().all();
    let mut tasks = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(s) = end_session_local(shard, &id, "gateway shutdown") {
            if let Some(up) = s.upstream_sid {
                let task = delete_upstream(shard.clone(), up, s.upstream, within);
                tasks.push(monoio::spawn(task));
            }
        }
    }
    // The gateway's own sessions on handshake-era upstreams (`era`) end too.
    for (i, bridge) in shard.bridges.iter().enumerate() {
        if let Some(up) = bridge.take_session() {
            tasks.push(monoio::spawn(delete_upstream(shard.clone(), up, i, within)));
        }
    }
    let n = tasks.len();
    for t in tasks {
        t.await;
    }
    if n > 0 {
        log::info!("shard {}: ended {n} sessions upstream", shard.id);
    }
    if let Some(host) = &shard.stdio {
        host.close();
        host.wait_all_reaped(host.config().kill_grace + Duration::from_secs(1))
            .await;
    }
}

/// Sends DELETE for an upstream session, bounded by `timeout`; the answer is read and dropped.
async fn delete_upstream(shard: Rc<Shard>, upstream_sid: Rc<str>, i: usize, timeout: Duration) {
    let fut = async {
        let pool = shard.pools.get(i)?;
        let mut up = pool.checkout().await.ok()?;
        let cfg = pool.config();
        let mut wire = format!(
            "DELETE {} HTTP/1.1\r\nhost: {}\r\nmcp-session-id: {upstream_sid}\r\n",
            cfg.path, cfg.authority
        );
        if let Some(a) = &cfg.authorization {
            wire.push_str(&format!("authorization: {a}\r\n"));
        }
        wire.push_str("content-length: 0\r\n\r\n");
        let (res, _) = up.stream().write_all(wire.into_bytes()).await;
        res.ok()?;
        let mut urb = http::ReadBuf::default();
        let head = read_response_head(&shard, &mut up, &mut urb, Method::Delete, None)
            .await
            .ok()?;
        let reusable =
            relay::drain_body(&mut up, &mut urb, head.body, timeout).await && head.keep_alive;
        if reusable {
            pool.checkin(up);
        }
        Some(head.status)
    };
    match monoio::time::timeout(timeout, fut).await {
        Ok(Some(status)) => log::debug!("shard {}: upstream DELETE answered {status}", shard.id),
        _ => log::info!(
            "shard {}: upstream DELETE for an ended session failed or timed out",
            shard.id
        ),
    }
}
