//! The HTTP upstream kind: encoding the request the upstream gets (only the headers MCP needs,
//! the upstream's own authority and credentials), picking an upstream (balancer, health,
//! breakers), sending on a pooled connection (a reused one that the upstream closed is retried
//! on a fresh one), and reading the response head within the request timeout. It answers with
//! `Source::Http` (head read, body still to come) and writes nothing to the client: the
//! pipeline relays the body. Also: reopening a session's SSE stream, and the gateway's own
//! DELETE for a session it ends.

use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncWriteRentExt, Canceller};
use monoio::net::TcpStream;

use crate::codec::http::{self, Method, RequestHead, ResponseHead};
use crate::error::{Error, Kind, Result};
use crate::metrics::inc;
use crate::upstream::{Call, HttpAnswer, Source, UpConn, UpSession, Upstreams};

/// What goes upstream: the wire request. How its answer reaches the client is the
/// pipeline's business.
pub struct UpRequest<'a> {
    pub method: Method,
    pub head: &'a RequestHead,
    pub body: Option<&'a [u8]>,
    pub upstream_sid: Option<&'a str>,
    /// The session's upstream; `None`: the balancer picks one.
    pub upstream: Option<usize>,
    /// The MCP-Protocol-Version sent instead of the client's (a request the gateway carries
    /// into its own session on a handshake-era upstream, `era`).
    pub version: Option<&'a str>,
    /// The authenticated subject's header and name (`Call::subject`).
    pub subject: Option<(&'a str, &'a str)>,
    /// The upstream's own event id to resume a stream after (a GET continuing a stream
    /// another node relayed, `Upstreams::resume_stream`).
    pub last_event_id: Option<&'a [u8]>,
}

/// Headers forwarded from the client as they are. Authorization, Cookie, Origin and Host never
/// are: the gateway authenticates upstream with its own credentials and names its own Host.
/// `Last-Event-ID` is not among them: the gateway names the events its clients see, and
/// resumes the upstream with the upstream's own ids (`stream`).
const FORWARDED: [&str; 4] = ["accept", "mcp-protocol-version", "mcp-method", "mcp-name"];

/// The request line and the gateway's own headers (Host, User-Agent, the upstream's
/// credentials).
pub(crate) fn encode_start(out: &mut Vec<u8>, method: Method, up: &crate::config::UpstreamConfig) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(up.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(up.authority.as_bytes());
    out.extend_from_slice(b"\r\nuser-agent: shardcat\r\n");
    if let Some(auth) = &up.authorization {
        push_header(out, "authorization", auth.as_bytes());
    }
}

pub(crate) fn encode_request(
    out: &mut Vec<u8>,
    req: &UpRequest<'_>,
    up: &crate::config::UpstreamConfig,
) {
    encode_start(out, req.method, up);
    if req.head.headers.get("accept").is_none() {
        push_header(out, "accept", b"application/json, text/event-stream");
    }
    for (name, value) in req.head.headers.iter_raw() {
        let replaced = req.version.is_some() && name.eq_ignore_ascii_case(b"mcp-protocol-version");
        if is_forwarded(name) && !replaced {
            push_raw_header(out, name, value);
        }
    }
    if let Some(sid) = req.upstream_sid {
        push_header(out, "mcp-session-id", sid.as_bytes());
    }
    if let Some(v) = req.version {
        push_header(out, "mcp-protocol-version", v.as_bytes());
    }
    if let Some((name, subject)) = req.subject {
        push_subject(out, name, subject);
    }
    if let Some(id) = req.last_event_id {
        push_header(out, "last-event-id", id);
    }
    match req.body {
        Some(b) => {
            push_header(out, "content-type", b"application/json");
            push_header(out, "content-length", b.len().to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(b"\r\n"),
    }
}

/// The subject's name as a header value: bytes a field value may not hold (controls, and
/// anything outside visible ASCII, which a name from a token may have) are percent-encoded,
/// as is `%` itself, so the value decodes to the exact name.
fn push_subject(out: &mut Vec<u8>, header: &str, subject: &str) {
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(b": ");
    for &b in subject.as_bytes() {
        if (0x21..0x7f).contains(&b) && b != b'%' || b == b' ' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn is_forwarded(name: &[u8]) -> bool {
    const PARAM: &[u8] = b"mcp-param-";
    FORWARDED
        .iter()
        .any(|f| name.eq_ignore_ascii_case(f.as_bytes()))
        || name
            .get(..PARAM.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(PARAM))
}

pub(crate) fn push_raw_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Upstream `i`'s pool (there are none when the upstream is a stdio program).
pub(crate) fn http_pool(up: &Upstreams, i: usize) -> Result<&Rc<crate::upstream::Pool>> {
    up.pools
        .get(i)
        .ok_or_else(|| Error::new(Kind::Internal, "no such HTTP upstream on this shard"))
}

/// Sends `req` to its session's upstream, or to one the balancer picks. A request not bound to
/// a session moves on to another upstream when it could not even be sent (connect refused or
/// timed out, pool full): the only retry that is always safe. Returns the connection and the
/// upstream used.
pub(crate) async fn connect_upstream(
    shard: &Rc<Upstreams>,
    req: &UpRequest<'_>,
    client: u32,
) -> Result<(UpConn, usize)> {
    let mut tried: Vec<usize> = Vec::new();
    loop {
        let now = Instant::now();
        let i = match req.upstream {
            Some(i) => i,
            None => pick_upstream(shard, client, &tried, now)?,
        };
        let pool = http_pool(shard, i)?;
        let mut wire = Vec::with_capacity(512 + req.body.map_or(0, <[u8]>::len));
        encode_request(&mut wire, req, pool.config());
        match send_request(shard, i, wire).await {
            Ok(up) => return Ok((up, i)),
            Err((e, unsent)) => {
                if !matches!(e.kind, Kind::Overloaded(_)) {
                    shard.health.record(i, false, Instant::now(), &shard.stats);
                }
                let can_move =
                    req.upstream.is_none() && unsent && tried.len() + 1 < shard.pools.len();
                if !can_move {
                    return Err(e);
                }
                log::warn!(
                    "shard {}: upstream {i} unreachable ({e}); trying another",
                    shard.shard
                );
                inc(&shard.stats.upstream_failovers);
                tried.push(i);
            }
        }
    }
}

/// An upstream for a request not bound to a session: healthy, its breaker admitting, not
/// tried yet. None at all is 503 (counted), not a wait.
pub(crate) fn pick_upstream(
    shard: &Upstreams,
    client: u32,
    tried: &[usize],
    now: Instant,
) -> Result<usize> {
    let usable = |i: usize| shard.health.selectable(i, now);
    let mut skipped = tried.to_vec();
    while let Some(i) = shard.balancer.pick(&shard.pools, client, &skipped, &usable) {
        if shard.health.admit(i, now, &shard.stats) {
            return Ok(i);
        }
        skipped.push(i);
    }
    if tried.is_empty() {
        shard.stats.count_rejection("no_healthy_upstream");
        return Err(Error::new(
            Kind::Overloaded("no_healthy_upstream"),
            "no healthy upstream",
        ));
    }
    Err(Error::new(
        Kind::UpstreamConnect,
        "no upstream could be reached",
    ))
}

/// Sends the client's request to `upstream` (its session's) or to one the balancer picks,
/// and reads the answer's head. Only a POST carries the client's body.
pub async fn send(
    up: &Rc<Upstreams>,
    call: &Call<'_>,
    upstream: Option<usize>,
    sid: Option<&str>,
) -> Result<Source> {
    send_after(up, call, (upstream, sid), None).await
}

/// `send`, naming the upstream event id to resume a stream after (`last_event_id`).
pub async fn send_after(
    up: &Rc<Upstreams>,
    call: &Call<'_>,
    (upstream, sid): (Option<usize>, Option<&str>),
    last_event_id: Option<&[u8]>,
) -> Result<Source> {
    let method = call.head.method;
    let req = UpRequest {
        method,
        head: call.head,
        body: (method == Method::Post).then_some(call.body),
        upstream_sid: sid,
        upstream,
        version: None,
        subject: call.subject,
        last_event_id,
    };
    exchange(up, &req, call.client_cell, call.client)
        .await
        .map(Source::Http)
}

/// initialize: the upstream's session exists when a 2xx answer names it.
pub async fn open_session(
    up: &Rc<Upstreams>,
    call: &Call<'_>,
) -> Result<(Source, Option<UpSession>)> {
    let Source::Http(ans) = send(up, call, None, None).await? else {
        unreachable!("send answers with Source::Http");
    };
    let session = ans
        .head
        .headers
        .get_str("mcp-session-id")
        .filter(|_| (200..300).contains(&ans.head.status))
        .map(|sid| UpSession::Http {
            upstream: ans.upstream,
            sid: Some(Rc::from(sid)),
        });
    Ok((Source::Http(ans), session))
}

/// Sends `req` and reads the response head (recording the upstream's health). With `watch`,
/// a client that hangs up while the upstream is still thinking aborts the request.
pub(crate) async fn exchange(
    up: &Rc<Upstreams>,
    req: &UpRequest<'_>,
    client_cell: u32,
    watch: Option<&TcpStream>,
) -> Result<HttpAnswer> {
    let (mut conn, upstream) = connect_upstream(up, req, client_cell).await?;
    let mut rb = http::ReadBuf::from_vec(up.buffers.take());
    let mut head = match read_response_head(up, &mut conn, &mut rb, req.method, watch).await {
        Ok(r) => {
            let failed = matches!(r.status, 502..=504);
            up.health
                .record(upstream, !failed, Instant::now(), &up.stats);
            r
        }
        Err(e) => {
            if e.side() == crate::error::Side::Upstream {
                inc(&up.stats.upstream_errors);
                up.health.record(upstream, false, Instant::now(), &up.stats);
            }
            up.buffers.give(rb.into_vec());
            return Err(e);
        }
    };
    if req.method == Method::Delete && (200..300).contains(&head.status) {
        // The spec's answer to a DELETE that ended the session is 200: SDK clients take any
        // other (rmcp answers 202) for a failed termination.
        head.status = 200;
    }
    Ok(HttpAnswer {
        head,
        conn,
        rb,
        upstream,
        shape: None,
        member: None,
    })
}

/// Why a session stream could not be reopened upstream.
pub enum Reopen {
    /// Worth another attempt (connect failure, timeout, 5xx).
    Retry(String),
    /// Final: the upstream refuses the stream.
    Gone(String),
    /// Final: the upstream forgot the session (404); the gateway's session ends too.
    Forgotten,
}

/// Opens a session's stream on HTTP upstream `i` again: GET with the upstream's last event id,
/// so an upstream that supports resumption continues where it stopped.
pub async fn reopen(
    up: &Upstreams,
    (i, sid, version): (usize, &str, &str),
    last_event_id: Option<&str>,
) -> std::result::Result<(UpConn, http::ReadBuf, ResponseHead), Reopen> {
    let pool = http_pool(up, i).map_err(|e| Reopen::Gone(e.to_string()))?;
    let mut wire = Vec::with_capacity(512);
    encode_start(&mut wire, Method::Get, pool.config());
    push_header(&mut wire, "accept", b"text/event-stream");
    push_header(&mut wire, "mcp-protocol-version", version.as_bytes());
    push_header(&mut wire, "mcp-session-id", sid.as_bytes());
    if let Some(id) = last_event_id {
        push_header(&mut wire, "last-event-id", id.as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
    let mut conn = send_request(up, i, wire)
        .await
        .map_err(|(e, _)| Reopen::Retry(e.to_string()))?;
    let mut rb = http::ReadBuf::from_vec(up.buffers.take());
    let resp = match read_response_head(up, &mut conn, &mut rb, Method::Get, None).await {
        Ok(r) => r,
        Err(e) => {
            up.buffers.give(rb.into_vec());
            return Err(Reopen::Retry(e.to_string()));
        }
    };
    if resp.status == 200 && http::is_event_stream(resp.headers.get("content-type")) {
        return Ok((conn, rb, resp));
    }
    up.buffers.give(rb.into_vec());
    let why = format!("upstream answered {}", resp.status);
    match resp.status {
        404 => Err(Reopen::Forgotten),
        s if s >= 500 || s == 429 => Err(Reopen::Retry(why)),
        _ => Err(Reopen::Gone(why)),
    }
}

/// Ends an upstream session the gateway ends itself (expiry, eviction, shutdown, a client that
/// missed its initialize answer): DELETE within `timeout`, the answer read and dropped.
pub async fn end_quietly(up: Rc<Upstreams>, sid: Rc<str>, i: usize, timeout: std::time::Duration) {
    let fut = async {
        let pool = up.pools.get(i)?;
        let mut conn = pool.checkout().await.ok()?;
        let mut wire = Vec::with_capacity(256);
        encode_start(&mut wire, Method::Delete, pool.config());
        push_header(&mut wire, "mcp-session-id", sid.as_bytes());
        wire.extend_from_slice(b"content-length: 0\r\n\r\n");
        let (res, _) = conn.stream().write_all(wire).await;
        res.ok()?;
        let mut rb = http::ReadBuf::default();
        let head = read_response_head(&up, &mut conn, &mut rb, Method::Delete, None)
            .await
            .ok()?;
        let reusable = drain_body(&mut conn, &mut rb, head.body, timeout).await && head.keep_alive;
        if reusable {
            pool.checkin(conn);
        }
        Some(head.status)
    };
    match crate::timer::timeout(timeout, fut).await {
        Some(Some(status)) => log::debug!("shard {}: upstream DELETE answered {status}", up.shard),
        _ => log::info!(
            "shard {}: upstream DELETE for an ended session failed or timed out",
            up.shard
        ),
    }
}

/// Writes the request on a pooled connection of upstream `i`. A reused connection that fails
/// on write was closed by the upstream while idle, before reading anything: retry once on a
/// fresh one. On error, says whether nothing of the request was sent.
pub(crate) async fn send_request(
    shard: &Upstreams,
    i: usize,
    wire: Vec<u8>,
) -> std::result::Result<UpConn, (Error, bool)> {
    let pool = http_pool(shard, i).map_err(|e| (e, true))?;
    let mut wire = wire;
    for _ in 0..2 {
        let mut up = pool.checkout().await.map_err(|e| {
            if let Kind::Overloaded(w) = e.kind {
                shard.stats.count_rejection(w);
            } else {
                inc(&shard.stats.upstream_errors);
            }
            (e, true)
        })?;
        let (res, back) = up.stream().write_all(wire).await;
        wire = back;
        match res {
            Ok(_) => return Ok(up),
            Err(e) if up.reused => {
                log::debug!(
                    "shard {}: reused upstream connection failed on write: {e}",
                    shard.shard
                );
                inc(&shard.stats.pool_discarded);
            }
            Err(e) => {
                inc(&shard.stats.upstream_errors);
                return Err((Error::new(Kind::UpstreamConnect, e.to_string()), false));
            }
        }
    }
    inc(&shard.stats.upstream_errors);
    let e = Error::new(Kind::UpstreamConnect, "upstream closed the connection");
    Err((e, false))
}

/// Reads the upstream's final response head within the request timeout (1xx are skipped).
pub async fn read_response_head(
    shard: &Upstreams,
    up: &mut UpConn,
    urb: &mut http::ReadBuf,
    method: Method,
    client: Option<&TcpStream>,
) -> Result<ResponseHead> {
    let limits = http::HeadLimits::default();
    let deadline = Instant::now() + shard.timeouts.upstream_request;
    loop {
        match http::parse_response(urb.data(), limits, method == Method::Head) {
            Ok(Some(h)) if h.status < 200 => {
                urb.consume(h.head_len);
                continue;
            }
            Ok(Some(h)) => {
                urb.consume(h.head_len);
                return Ok(h);
            }
            Ok(None) => {}
            Err(e) => return Err(Error::new(Kind::UpstreamProtocol, e.to_string())),
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        match read_upstream(up, urb, wait, client).await {
            Ok(0) => {
                if up.reused {
                    // A kept-alive connection the upstream closed: it may have restarted or died,
                    // so its other idle connections are not trusted either.
                    up.discard_idle_siblings();
                }
                return Err(Error::new(
                    Kind::UpstreamConnect,
                    "upstream closed before responding",
                ));
            }
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
                return Err(Error::new(
                    Kind::ClientGone,
                    "client hung up before the response",
                ));
            }
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {
                return Err(Error::new(
                    Kind::UpstreamTimeout,
                    "no response head in time",
                ));
            }
            Err(e) => return Err(Error::new(Kind::UpstreamConnect, e.to_string())),
        }
    }
}

/// How long an upstream read waits before it also watches for the client hanging up.
const HANGUP_ARM_DELAY: Duration = Duration::from_millis(20);

/// Whether the client has already hung up (EOF or a socket error is pending), without waiting.
/// Bytes waiting to be read mean it has not.
pub fn has_hung_up(stream: &TcpStream) -> bool {
    http::peek(stream) == http::Peek::Closed
}

/// Resolves once the client has hung up (EOF or error). A client that pipelined bytes has not
/// hung up, and then this never resolves. Readiness waits consume nothing, so dropping this
/// future is always safe.
pub async fn client_hung_up(stream: &TcpStream) {
    loop {
        if stream.readable(false).await.is_err() {
            return;
        }
        match http::peek(stream) {
            http::Peek::Closed => return,
            // Pipelined bytes: not a hang-up, and readiness would now fire at once forever.
            http::Peek::Data => std::future::pending::<()>().await,
            http::Peek::Empty => {}
        }
    }
}

/// Reads more upstream bytes, giving up after `wait` with an `ECANCELED` error, or with
/// `ECONNABORTED` when `client` hangs up first (the response would have nowhere to go, and for
/// 2026-07-28 a closed stream is the client's cancel).
pub async fn read_upstream(
    up: &mut UpConn,
    urb: &mut http::ReadBuf,
    wait: Duration,
    client: Option<&TcpStream>,
) -> std::io::Result<usize> {
    let canceller = Canceller::new();
    let read = urb.fill_cancelable(up.stream(), canceller.handle());
    let mut read = std::pin::pin!(read);
    // Most answers come fast: the hang-up watch (one more readiness op) is armed only once the
    // upstream has taken a while, so a quick exchange pays nothing for it.
    let arm = if client.is_some() {
        wait.min(HANGUP_ARM_DELAY)
    } else {
        wait
    };
    let first = monoio::select! {
        biased;
        r = &mut read => Some(r),
        _ = crate::timer::sleep(arm) => None,
    };
    let done = match (first, client) {
        (Some(r), _) => Some(r),
        (None, Some(c)) if arm < wait => monoio::select! {
            biased;
            r = &mut read => Some(r),
            _ = crate::timer::sleep(wait - arm) => None,
            _ = client_hung_up(c) => {
                let _ = canceller.cancel();
                let _ = read.await;
                return Err(std::io::Error::from_raw_os_error(libc::ECONNABORTED));
            }
        },
        (None, _) => None,
    };
    match done {
        Some(r) => r,
        None => {
            let _ = canceller.cancel();
            match read.await {
                Ok(n) => Ok(n),
                Err(_) => Err(std::io::Error::from_raw_os_error(libc::ECANCELED)),
            }
        }
    }
}

/// Reads a whole response body of `kind` (JSON, or an SSE stream up to its end), at most
/// `max` bytes, each read within `wait` (and given up when `client` hangs up). `None` when it
/// broke off, was badly framed or was too large; the connection is then not reusable.
pub async fn read_body(
    up: &mut UpConn,
    urb: &mut http::ReadBuf,
    kind: http::BodyKind,
    max: usize,
    wait: Duration,
    client: Option<&TcpStream>,
) -> Option<Vec<u8>> {
    let mut dec = http::BodyDecoder::new(kind);
    let mut body = Vec::new();
    let mut over = false;
    loop {
        let done = dec.decode(urb, &mut |d: &[u8]| {
            over |= body.len() + d.len() > max;
            if !over {
                body.extend_from_slice(d);
            }
        });
        match done {
            Ok(true) if !over => return Some(body),
            Ok(false) if !over => {}
            _ => return None,
        }
        match read_upstream(up, urb, wait, client).await {
            Ok(0) if dec.finish_on_eof().is_ok() => return Some(body),
            Ok(n) if n > 0 => {}
            _ => return None,
        }
    }
}

/// Reads and discards a body. Returns true when it ended cleanly.
pub async fn drain_body(
    up: &mut UpConn,
    urb: &mut http::ReadBuf,
    kind: http::BodyKind,
    wait: Duration,
) -> bool {
    let mut dec = http::BodyDecoder::new(kind);
    loop {
        match dec.decode(urb, &mut |_| {}) {
            // A close-delimited body never gets here: it ends at EOF, below, as not reusable.
            Ok(true) => return urb.data().is_empty(),
            Ok(false) => {}
            Err(_) => return false,
        }
        match read_upstream(up, urb, wait, None).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

/// Returns the connection to its pool if its response ended cleanly, and the buffer to the
/// shard.
pub fn finish(up: &Upstreams, conn: UpConn, rb: http::ReadBuf, keep_alive: bool) {
    if keep_alive && rb.data().is_empty() {
        conn.checkin();
    }
    up.buffers.give(rb.into_vec());
}
