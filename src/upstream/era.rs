//! 2026-07-28 requests to HTTP upstreams that speak only the handshake era.
//!
//! A 2026-07-28 client sends each request alone, its version and capabilities in `_meta`; a
//! server of 2025-11-25 or before wants a session opened by initialize first. Per shard and
//! upstream, the first 2026-07-28 request asks the upstream `server/discover`:
//! - a server that names 2026-07-28 gets every such request as it is (`Route::AsIs`);
//! - any other one is handshake-era: the gateway opens one session of its own on it
//!   (initialize as `CHILD_PROTOCOL_VERSION`), and each request goes into that session without
//!   its envelope; answers get the 2026-07-28 shape on the way back (`mcp::modern_result`), and
//!   `server/discover` is answered from the initialize result. The server's own requests to
//!   the client (sampling, elicitation) have no 2026-07-28 counterpart on this path: the
//!   gateway answers them with an error, so the tool fails at once instead of hanging.
//!
//! The stdio kind does the same for stdio children (`stdio::Era`). Invariants: a shared
//! session serves only requests that carry no session of their own; requests in it carry the
//! gateway's ids, never a client's; one that the upstream forgot (404) is opened again and the
//! request that found it gone is sent once more (`bridged`); at shutdown it is ended upstream
//! like the clients' sessions (`gateway::session::end_all`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::io::AsyncWriteRentExt;

use crate::codec::http::{self, Method};
use crate::codec::sse;
use crate::error::{Error, Kind, Result};
use crate::mcp::{self, Era};
use crate::upstream::http::{exchange, pick_upstream, UpRequest};
use crate::upstream::{Call, HttpAnswer, Source, Upstreams};

/// After a probe went unanswered, requests go on as they are for this long before the next.
pub const ERA_PROBE_RETRY: Duration = Duration::from_secs(30);

/// The version the gateway initializes a handshake-era upstream with.
pub const BRIDGE_PROTOCOL_VERSION: &str = super::stdio::CHILD_PROTOCOL_VERSION;

/// One upstream's era on this shard, and the gateway's session on it when handshake-era.
#[derive(Default)]
pub struct Bridge {
    era: Cell<Option<Era>>,
    /// When a probe last went unanswered: no new probe before `ERA_PROBE_RETRY`.
    unanswered: Cell<Option<Instant>>,
    /// The next request id in the shared session (clients' own ids would clash there).
    next_id: Cell<u64>,
    session: RefCell<Option<Shared>>,
    /// Set while a probe or an initialize is under way: others wait for it.
    busy: RefCell<Option<Rc<crate::sync::LocalEvent>>>,
}

/// The gateway's own session on a handshake-era upstream.
#[derive(Clone)]
pub struct Shared {
    pub upstream_sid: Rc<str>,
    /// The upstream's initialize result, raw: the `server/discover` answer is built from it.
    pub init_result: Bytes,
}

/// Where a 2026-07-28 request goes.
pub enum Route {
    AsIs,
    Bridged(Shared),
}

impl Bridge {
    /// Whether the upstream is known to speak 2026-07-28 (no probe needed).
    pub fn is_modern(&self) -> bool {
        self.era.get() == Some(Era::Modern)
    }

    /// Whether the upstream is known to speak only the handshake era.
    pub fn is_handshake(&self) -> bool {
        self.era.get() == Some(Era::Handshake)
    }

    /// A fresh request id for the shared session (the gateway's own requests use 0).
    pub fn next_id(&self) -> u64 {
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        id
    }

    /// The gateway's session on the upstream, taken out (shutdown ends it upstream).
    pub fn take_session(&self) -> Option<Rc<str>> {
        self.session.borrow_mut().take().map(|s| s.upstream_sid)
    }

    /// The upstream forgot the session: the next request opens a new one.
    pub fn forget(&self, sid: &str) {
        let mut s = self.session.borrow_mut();
        if s.as_ref().is_some_and(|s| &*s.upstream_sid == sid) {
            *s = None;
        }
    }
}

/// How a 2026-07-28 request reaches upstream `i`: probes its era once, and opens the shared
/// session of a handshake-era upstream when there is none.
pub async fn route(up: &Rc<Upstreams>, i: usize) -> Result<Route> {
    let bridge = up
        .bridges
        .get(i)
        .ok_or_else(|| Error::new(Kind::Internal, "no such HTTP upstream on this shard"))?;
    loop {
        let recently = bridge
            .unanswered
            .get()
            .is_some_and(|at| at.elapsed() < ERA_PROBE_RETRY);
        match bridge.era.get() {
            Some(Era::Modern) => return Ok(Route::AsIs),
            None if recently => return Ok(Route::AsIs),
            Some(Era::Handshake) => {
                if let Some(s) = bridge.session.borrow().clone() {
                    return Ok(Route::Bridged(s));
                }
            }
            None => {}
        }
        let waiting = bridge.busy.borrow().clone();
        if let Some(ev) = waiting {
            ev.wait().await;
            continue;
        }
        let ev = Rc::new(crate::sync::LocalEvent::default());
        *bridge.busy.borrow_mut() = Some(ev.clone());
        // Released however `settle` ends, even if this exchange is dropped half-way: the
        // requests waiting on it then try again themselves.
        let _busy = Busy { bridge, ev };
        settle(up, bridge, i).await?;
    }
}

/// Holds `Bridge::busy` for one probe or initialize.
struct Busy<'a> {
    bridge: &'a Bridge,
    ev: Rc<crate::sync::LocalEvent>,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.bridge.busy.borrow_mut().take();
        self.ev.set();
    }
}

/// Learns the era (once), then opens the shared session if it is handshake-era.
async fn settle(up: &Rc<Upstreams>, bridge: &Bridge, i: usize) -> Result<()> {
    if bridge.era.get().is_none() {
        let wait = up.timeouts.era_probe;
        let era = match monoio::time::timeout(wait, probe(up, i)).await {
            Ok(Ok(era)) => era,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                bridge.unanswered.set(Some(Instant::now()));
                log::warn!(
                    "shard {}: upstream {} did not answer server/discover within {wait:?}: its 2026-07-28 requests go as they are",
                    up.shard,
                    up.pools[i].config().authority
                );
                return Ok(());
            }
        };
        let name = &up.pools[i].config().authority;
        match era {
            Era::Modern => log::info!(
                "shard {}: upstream {name} speaks 2026-07-28: its requests go as they are",
                up.shard
            ),
            Era::Handshake => log::info!(
                "shard {}: upstream {name} does not answer server/discover as 2026-07-28: 2026-07-28 requests go into a gateway session ({BRIDGE_PROTOCOL_VERSION}), translated",
                up.shard
            ),
        }
        bridge.era.set(Some(era));
    }
    if bridge.era.get() == Some(Era::Handshake) && bridge.session.borrow().is_none() {
        let shared = open(up, i).await?;
        *bridge.session.borrow_mut() = Some(shared);
    }
    Ok(())
}

/// `server/discover` with the 2026-07-28 headers: a result naming 2026-07-28 means a modern
/// server; any other answer (an error status, a JSON-RPC error) a handshake-era one. No answer
/// at all is an error (the upstream is down), not an era.
async fn probe(up: &Rc<Upstreams>, i: usize) -> Result<Era> {
    let body = mcp::discover_request(0);
    let call = OwnCall {
        body: body.as_bytes(),
        version: mcp::STATELESS_VERSION,
        sid: None,
        extra: "mcp-method: server/discover\r\n",
    };
    let (status, _, answer) = call_upstream(up, i, call).await?;
    let modern = status == 200 && last_message(&answer).is_some_and(|m| mcp::speaks_stateless(&m));
    Ok(if modern { Era::Modern } else { Era::Handshake })
}

/// Initializes the gateway's session on upstream `i`.
async fn open(up: &Rc<Upstreams>, i: usize) -> Result<Shared> {
    let init = mcp::initialize_request(0, BRIDGE_PROTOCOL_VERSION);
    let call = OwnCall {
        body: init.as_bytes(),
        version: BRIDGE_PROTOCOL_VERSION,
        sid: None,
        extra: "",
    };
    let (status, sid, answer) = call_upstream(up, i, call).await?;
    let result = last_message(&answer).and_then(|m| mcp::result_of(&m));
    let (Some(sid), Some(result), 200) = (sid, result, status) else {
        return Err(Error::new(
            Kind::UpstreamProtocol,
            format!("the upstream refused the gateway's initialize (status {status})"),
        ));
    };
    let sid: Rc<str> = Rc::from(sid);
    let note = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let call = OwnCall {
        body: note,
        version: BRIDGE_PROTOCOL_VERSION,
        sid: Some(&sid),
        extra: "",
    };
    call_upstream(up, i, call).await?;
    Ok(Shared {
        upstream_sid: sid,
        init_result: result,
    })
}

/// Answers a request of the handshake-era upstream to a 2026-07-28 client with an error: the
/// client cannot take it (that version has no server-to-client requests). The task sending it
/// ends within the request timeout (`call_upstream`).
pub fn refuse(up: &Rc<Upstreams>, i: usize, sid: Rc<str>, id: Bytes) {
    crate::metrics::inc(&up.stats.era_refused_requests);
    let up = up.clone();
    monoio::spawn(async move {
        let id = String::from_utf8_lossy(&id).into_owned();
        let body = mcp::error_body(
            Some(&id),
            mcp::code::METHOD_NOT_FOUND,
            "not available to a 2026-07-28 client through the gateway",
        );
        let call = OwnCall {
            body: &body,
            version: BRIDGE_PROTOCOL_VERSION,
            sid: Some(&sid),
            extra: "",
        };
        if let Err(e) = call_upstream(&up, i, call).await {
            log::info!(
                "shard {}: refusing an upstream request failed: {e}",
                up.shard
            );
        }
    });
}

/// A request the gateway itself sends upstream.
struct OwnCall<'a> {
    body: &'a [u8],
    version: &'a str,
    sid: Option<&'a str>,
    /// More header lines, each ending in CRLF.
    extra: &'a str,
}

/// Sends `call` on a pooled connection; returns the status, the session id the upstream
/// named, and the body (JSON, or the SSE stream up to its end), bounded by `max_body_bytes`
/// and by the request timeout.
async fn call_upstream(
    up: &Rc<Upstreams>,
    i: usize,
    call: OwnCall<'_>,
) -> Result<(u16, Option<String>, Vec<u8>)> {
    let timeout = up.timeouts.upstream_request;
    match monoio::time::timeout(timeout, call_exchange(up, i, call, timeout)).await {
        Ok(r) => r,
        Err(_) => Err(Error::new(Kind::UpstreamTimeout, "no answer in time")),
    }
}

async fn call_exchange(
    up: &Rc<Upstreams>,
    i: usize,
    call: OwnCall<'_>,
    timeout: Duration,
) -> Result<(u16, Option<String>, Vec<u8>)> {
    let pool = &up.pools[i];
    let mut conn = pool.checkout().await?;
    let cfg = pool.config();
    let mut wire = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\nuser-agent: shardcat\r\naccept: application/json, text/event-stream\r\ncontent-type: application/json\r\nmcp-protocol-version: {}\r\ncontent-length: {}\r\n{}",
        cfg.path,
        cfg.authority,
        call.version,
        call.body.len(),
        call.extra
    )
    .into_bytes();
    if let Some(a) = &cfg.authorization {
        wire.extend_from_slice(format!("authorization: {a}\r\n").as_bytes());
    }
    if let Some(sid) = call.sid {
        wire.extend_from_slice(format!("mcp-session-id: {sid}\r\n").as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
    wire.extend_from_slice(call.body);
    let (res, _) = conn.stream().write_all(wire).await;
    res.map_err(|e| Error::new(Kind::UpstreamConnect, e.to_string()))?;
    let mut urb = http::ReadBuf::default();
    let head =
        crate::upstream::http::read_response_head(up, &mut conn, &mut urb, Method::Post, None)
            .await?;
    let sid = head.headers.get_str("mcp-session-id").map(String::from);
    let max = up.limits.max_body_bytes;
    let body = crate::upstream::http::read_body(&mut conn, &mut urb, head.body, max, timeout, None)
        .await
        .ok_or_else(|| {
            Error::new(
                Kind::UpstreamProtocol,
                "the answer broke off or was too large",
            )
        })?;
    // A close-delimited body never leaves the connection reusable (`keep_alive` is false).
    if head.keep_alive && urb.data().is_empty() {
        pool.checkin(conn);
    }
    Ok((head.status, sid, body))
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
        let Ok(mcp::Body::Single(m)) = mcp::classify(&ev.data) else {
            return Some(raw);
        };
        match m.kind {
            mcp::Kind::Request => {
                (self.refuse)(Bytes::copy_from_slice(m.id.unwrap_or("null").as_bytes()));
                None
            }
            mcp::Kind::Response => {
                let data = self.body(&ev.data)?;
                Some(Bytes::from(sse_message(ev.id.as_deref(), &data)))
            }
            mcp::Kind::Notification => match self.restore(&ev.data) {
                None => Some(raw),
                Some(data) => Some(Bytes::from(sse_message(ev.id.as_deref(), &data))),
            },
        }
    }

    /// A whole JSON answer as the client gets it: the client's id back, the 2026-07-28 shape.
    pub fn body(&self, body: &[u8]) -> Option<Vec<u8>> {
        let restored = self.restore(body);
        let body = restored.as_deref().unwrap_or(body);
        mcp::modern_result(body, &self.method).or_else(|| restored.clone())
    }

    fn restore(&self, line: &[u8]) -> Option<Vec<u8>> {
        let (gw, id, token) = self.ids.as_ref()?;
        super::stdio::restore(line, *gw, id, token.as_deref())
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

/// A 2026-07-28 request to the HTTP upstreams. Once every upstream is known to speak
/// 2026-07-28, the balancer picks as for any request (and may move one that could not be
/// sent). Until then the era of the upstream matters: a handshake-era one gets the request in
/// the gateway's session (`bridged`).
pub async fn stateless(up: &Rc<Upstreams>, call: &Call<'_>) -> Result<Source> {
    let mut req = UpRequest {
        method: Method::Post,
        head: call.head,
        body: Some(call.body),
        upstream_sid: None,
        upstream: None,
        version: None,
        subject: call.subject,
        last_event_id: None,
    };
    // The era is learned once per upstream; after that this is the path every request takes,
    // so the rest (probe, the bridged exchange) is boxed to keep this future small: it is
    // moved once per request.
    if !up.bridges.iter().all(Bridge::is_modern) {
        let i = pick_upstream(up, 0, &[], Instant::now())?;
        match Box::pin(route(up, i)).await {
            Ok(Route::Bridged(shared)) => return Box::pin(bridged(up, call, i, shared)).await,
            // A modern upstream, or one whose era could not be learned (it did not answer):
            // the request goes the usual way, moving to another upstream if it cannot be
            // sent. With a handshake-era upstream among them, it stays on the one that
            // speaks its version.
            other => {
                if let Err(e) = &other {
                    log::debug!("shard {}: upstream {i}: era unknown: {e}", up.shard);
                }
                if other.is_ok() && up.bridges.iter().any(Bridge::is_handshake) {
                    req.upstream = Some(i);
                }
            }
        }
    }
    exchange(up, &req, call.client_cell, call.client)
        .await
        .map(Source::Http)
}

/// A 2026-07-28 request carried into the gateway's session on handshake-era upstream `i`:
/// `server/discover` is answered from the session's initialize result; anything else goes
/// without its envelope, with the shared session's own request id, and its answer comes back
/// in the 2026-07-28 shape (`Shaping`). A session the upstream forgot (404: it did not take
/// the request) is opened again and the request sent once more.
async fn bridged(
    up: &Rc<Upstreams>,
    call: &Call<'_>,
    i: usize,
    mut shared: Shared,
) -> Result<Source> {
    let msg = call
        .msg
        .ok_or_else(|| Error::new(Kind::Internal, "a stateless request has one message"))?;
    let method = msg.method.unwrap_or("");
    if msg.kind == mcp::Kind::Request && method == "server/discover" {
        let line = mcp::discover_from_initialize(&shared.init_result, msg.id.unwrap_or("null"))
            .ok_or_else(|| Error::new(Kind::UpstreamProtocol, "unreadable initialize result"))?;
        return Ok(Source::Message(Bytes::from(line)));
    }
    let stripped = mcp::strip_envelope(call.body);
    let body = stripped.as_deref().unwrap_or(call.body);
    for attempt in 0..2 {
        let mut ans = send_bridged(up, call, (i, &shared), msg, body).await?;
        if ans.head.status != 404 {
            return Ok(Source::Http(ans));
        }
        // The gateway's session is gone: the upstream did not take the request, and the
        // client sees nothing of this answer.
        let wait = up.timeouts.upstream_request;
        let clean = super::http::drain_body(&mut ans.conn, &mut ans.rb, ans.head.body, wait).await;
        super::http::finish(up, ans.conn, ans.rb, clean && ans.head.keep_alive);
        if attempt == 1 {
            break;
        }
        log::info!(
            "shard {}: upstream {i} forgot the gateway's session",
            up.shard
        );
        up.bridges[i].forget(&shared.upstream_sid);
        match route(up, i).await? {
            Route::Bridged(s) => shared = s,
            Route::AsIs => {
                return Err(Error::new(
                    Kind::UpstreamProtocol,
                    "the upstream changed era",
                ))
            }
        }
    }
    Err(Error::new(
        Kind::UpstreamProtocol,
        "the upstream forgot the gateway's session twice",
    ))
}

/// Sends one translated request into the shared session; its answer carries the `Shaping`
/// that gives it back to the client.
async fn send_bridged(
    up: &Rc<Upstreams>,
    call: &Call<'_>,
    (i, shared): (usize, &Shared),
    msg: &mcp::Message<'_>,
    body: &[u8],
) -> Result<HttpAnswer> {
    // Requests get the shared session's own ids; the client's come back with the answer.
    let rewritten = match msg.kind {
        mcp::Kind::Request => {
            let gw = up.bridges[i].next_id();
            Some((gw, super::stdio::rewrite_request(body, gw)?))
        }
        _ => None,
    };
    let req = UpRequest {
        method: Method::Post,
        head: call.head,
        body: Some(rewritten.as_ref().map_or(body, |(_, r)| r.line.as_slice())),
        upstream_sid: Some(&shared.upstream_sid),
        upstream: Some(i),
        version: Some(BRIDGE_PROTOCOL_VERSION),
        subject: call.subject,
        last_event_id: None,
    };
    let mut ans = exchange(up, &req, call.client_cell, call.client).await?;
    let (owner, sid) = (up.clone(), shared.upstream_sid.clone());
    ans.shape = Some(Box::new(super::Shape::Era(Shaping {
        method: msg.method.unwrap_or("").into(),
        ids: rewritten.map(|(gw, r)| (gw, r.id, r.token)),
        refuse: Box::new(move |id| refuse(&owner, i, sid.clone(), id)),
    })));
    Ok(ans)
}

/// The last JSON-RPC message of a body: the body itself, or the last SSE event's data.
fn last_message(body: &[u8]) -> Option<Vec<u8>> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if matches!(body[start], b'{' | b'[') {
        return Some(body.to_vec());
    }
    let mut split = sse::SseSplitter::new(body.len() + 1);
    let mut last = None;
    split.push(body);
    // The body is whole: a trailing event without its blank line still counts.
    split.push(b"\n\n");
    while let Ok(Some(ev)) = split.next_event() {
        let data = sse::parse_sse_event(&ev).data;
        if !data.is_empty() {
            last = Some(data);
        }
    }
    last
}
