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
//! The stdio bridge does the same for stdio children (`stdio::Era`). Invariants: a shared
//! session serves only requests that carry no session of their own; requests in it carry the
//! gateway's ids, never a client's; one that the upstream forgot (404) is opened again and the
//! request that found it gone is sent once more (`proxy::bridged`); at shutdown it is ended
//! upstream like the clients' sessions (`proxy::end_all_sessions`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::io::AsyncWriteRentExt;

use crate::codec::http::{self, Method};
use crate::codec::sse;
use crate::error::{Error, Kind, Result};
use crate::mcp::{self, Era};
use crate::shard::Shard;

/// After a probe went unanswered, requests go on as they are for this long before the next.
pub const ERA_PROBE_RETRY: Duration = Duration::from_secs(30);

/// The version the gateway initializes a handshake-era upstream with.
pub const BRIDGE_PROTOCOL_VERSION: &str = crate::stdio::CHILD_PROTOCOL_VERSION;

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
pub async fn route(shard: &Rc<Shard>, i: usize) -> Result<Route> {
    let bridge = shard
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
        settle(shard, bridge, i).await?;
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
async fn settle(shard: &Rc<Shard>, bridge: &Bridge, i: usize) -> Result<()> {
    if bridge.era.get().is_none() {
        let wait = shard.config().timeouts.era_probe;
        let era = match monoio::time::timeout(wait, probe(shard, i)).await {
            Ok(Ok(era)) => era,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                bridge.unanswered.set(Some(Instant::now()));
                log::warn!(
                    "shard {}: upstream {} did not answer server/discover within {wait:?}: its 2026-07-28 requests go as they are",
                    shard.id,
                    shard.pools[i].config().authority
                );
                return Ok(());
            }
        };
        let name = &shard.pools[i].config().authority;
        match era {
            Era::Modern => log::info!(
                "shard {}: upstream {name} speaks 2026-07-28: its requests go as they are",
                shard.id
            ),
            Era::Handshake => log::info!(
                "shard {}: upstream {name} does not answer server/discover as 2026-07-28: 2026-07-28 requests go into a gateway session ({BRIDGE_PROTOCOL_VERSION}), translated",
                shard.id
            ),
        }
        bridge.era.set(Some(era));
    }
    if bridge.era.get() == Some(Era::Handshake) && bridge.session.borrow().is_none() {
        let shared = open(shard, i).await?;
        *bridge.session.borrow_mut() = Some(shared);
    }
    Ok(())
}

/// `server/discover` with the 2026-07-28 headers: a result naming 2026-07-28 means a modern
/// server; any other answer (an error status, a JSON-RPC error) a handshake-era one. No answer
/// at all is an error (the upstream is down), not an era.
async fn probe(shard: &Rc<Shard>, i: usize) -> Result<Era> {
    let body = mcp::discover_request(0);
    let call = Call {
        body: body.as_bytes(),
        version: mcp::STATELESS_VERSION,
        sid: None,
        extra: "mcp-method: server/discover\r\n",
    };
    let (status, _, answer) = call_upstream(shard, i, call).await?;
    let modern = status == 200 && last_message(&answer).is_some_and(|m| mcp::speaks_stateless(&m));
    Ok(if modern { Era::Modern } else { Era::Handshake })
}

/// Initializes the gateway's session on upstream `i`.
async fn open(shard: &Rc<Shard>, i: usize) -> Result<Shared> {
    let init = mcp::initialize_request(0, BRIDGE_PROTOCOL_VERSION);
    let call = Call {
        body: init.as_bytes(),
        version: BRIDGE_PROTOCOL_VERSION,
        sid: None,
        extra: "",
    };
    let (status, sid, answer) = call_upstream(shard, i, call).await?;
    let result = last_message(&answer).and_then(|m| mcp::result_of(&m));
    let (Some(sid), Some(result), 200) = (sid, result, status) else {
        return Err(Error::new(
            Kind::UpstreamProtocol,
            format!("the upstream refused the gateway's initialize (status {status})"),
        ));
    };
    let sid: Rc<str> = Rc::from(sid);
    let note = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let call = Call {
        body: note,
        version: BRIDGE_PROTOCOL_VERSION,
        sid: Some(&sid),
        extra: "",
    };
    call_upstream(shard, i, call).await?;
    Ok(Shared {
        upstream_sid: sid,
        init_result: result,
    })
}

/// Answers a request of the handshake-era upstream to a 2026-07-28 client with an error: the
/// client cannot take it (that version has no server-to-client requests). The task sending it
/// ends within the request timeout (`call_upstream`).
pub fn refuse(shard: &Rc<Shard>, i: usize, sid: Rc<str>, id: Bytes) {
    crate::metrics::inc(&shard.stats.era_refused_requests);
    let shard = shard.clone();
    monoio::spawn(async move {
        let id = String::from_utf8_lossy(&id).into_owned();
        let body = mcp::error_body(
            Some(&id),
            mcp::code::METHOD_NOT_FOUND,
            "not available to a 2026-07-28 client through the gateway",
        );
        let call = Call {
            body: &body,
            version: BRIDGE_PROTOCOL_VERSION,
            sid: Some(&sid),
            extra: "",
        };
        if let Err(e) = call_upstream(&shard, i, call).await {
            log::info!(
                "shard {}: refusing an upstream request failed: {e}",
                shard.id
            );
        }
    });
}

/// A request the gateway itself sends upstream.
struct Call<'a> {
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
    shard: &Rc<Shard>,
    i: usize,
    call: Call<'_>,
) -> Result<(u16, Option<String>, Vec<u8>)> {
    let timeout = shard.config().timeouts.upstream_request;
    match monoio::time::timeout(timeout, exchange(shard, i, call, timeout)).await {
        Ok(r) => r,
        Err(_) => Err(Error::new(Kind::UpstreamTimeout, "no answer in time")),
    }
}

async fn exchange(
    shard: &Rc<Shard>,
    i: usize,
    call: Call<'_>,
    timeout: Duration,
) -> Result<(u16, Option<String>, Vec<u8>)> {
    let pool = &shard.pools[i];
    let mut up = pool.checkout().await?;
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
    let (res, _) = up.stream().write_all(wire).await;
    res.map_err(|e| Error::new(Kind::UpstreamConnect, e.to_string()))?;
    let mut urb = http::ReadBuf::default();
    let head =
        crate::upstream::http::read_response_head(shard, &mut up, &mut urb, Method::Post, None)
            .await?;
    let sid = head.headers.get_str("mcp-session-id").map(String::from);
    let max = shard.config().limits.max_body_bytes;
    let body = crate::upstream::http::read_body(&mut up, &mut urb, head.body, max, timeout, None)
        .await
        .ok_or_else(|| {
            Error::new(
                Kind::UpstreamProtocol,
                "the answer broke off or was too large",
            )
        })?;
    // A close-delimited body never leaves the connection reusable (`keep_alive` is false).
    if head.keep_alive && urb.data().is_empty() {
        pool.checkin(up);
    }
    Ok((head.status, sid, body))
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
