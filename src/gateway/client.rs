//! Reading requests from a client connection: the next head (keep-alive idle reads that give
//! their buffer back after a while), and the body, bounded by `max_body_bytes`; head and body
//! share the `client_head_timeout_ms` budget.
//!
//! After an error answer that closes the connection, `linger` drains what the client still
//! sends before the close, so the answer is not destroyed by a reset.
//!
//! Invariant: every read is cancelled, never dropped, so bytes that raced a timeout are kept.

use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt, Canceller};

use crate::codec::http::{self, BodyDecoder, BodyKind, RequestHead};
use crate::error::{Error, Kind, Result};
use crate::shard::{ClientConn, Shard};

/// What waiting for a connection's next request gave.
pub enum Next {
    Head(RequestHead),
    /// Closed by the client, the keep-alive idle timeout passed, or shutting down.
    Closed,
    /// Nothing for `IDLE_BUFFER_HOLD`: wait without a buffer (`wait_idle`).
    Idle,
}

/// Reads the next request head. Its head and body share the `client_head_timeout_ms` budget,
/// counted from the head's first bytes.
pub async fn next_head(shard: &Shard, conn: &mut ClientConn) -> Result<Next> {
    let limits = http::HeadLimits {
        max_head_bytes: shard.config().limits.max_head_bytes,
        max_headers: shard.config().limits.max_headers,
    };
    // Read from the clock only for a head that takes more than one read.
    let mut started = None;
    if shard.config().proxy_protocol && !conn.proxy_read() && !proxy_header(shard, conn).await? {
        return Ok(Next::Closed);
    }
    loop {
        if let Some(head) = http::parse_request(conn.rb.data(), limits)? {
            return Ok(Next::Head(head));
        }
        if conn.rb.data().is_empty() {
            match hold_read(shard, conn).await {
                Some(n) if n > 0 => {
                    started = None;
                    continue;
                }
                Some(_) => return Ok(Next::Closed),
                None => return Ok(Next::Idle),
            }
        }
        let since = *started.get_or_insert_with(Instant::now);
        match read_within_head_budget(shard, conn, since).await {
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

/// Reads the PROXY protocol header a balancer puts before the first request
/// (`[server] proxy_protocol`), within the head timeout; its client address is the
/// connection's from then on. `false`: the connection closed before sending a byte (a
/// balancer's plain TCP check). Missing or malformed: 400.
async fn proxy_header(shard: &Shard, conn: &mut ClientConn) -> Result<bool> {
    use crate::codec::proxy::{self, Proxied};
    let started = Instant::now();
    loop {
        match proxy::parse(conn.rb.data()) {
            Proxied::Done { len, client } => {
                conn.rb.consume(len);
                conn.set_proxy(client);
                return Ok(true);
            }
            Proxied::Invalid => {
                let why = http::HttpError::Malformed("no PROXY protocol header");
                return Err(Error::new(
                    Kind::BadHttp(why),
                    "server.proxy_protocol is on",
                ));
            }
            Proxied::Incomplete => {}
        }
        match read_within_head_budget(shard, conn, started).await {
            Ok(0) if conn.rb.data().is_empty() => return Ok(false),
            Ok(0) => {
                let why = http::HttpError::Malformed("connection closed mid-PROXY header");
                return Err(Error::new(Kind::BadHttp(why), ""));
            }
            Ok(_) => {}
            Err(_) => {
                return Err(Error::new(
                    Kind::ClientTimeout,
                    "PROXY protocol header not received in time",
                ))
            }
        }
    }
}

/// How long a connection between requests keeps its read buffer armed in a read. A busy
/// keep-alive connection thus costs one read per request; one idle past this gives its buffer
/// back and its busy state (`gateway::serve_busy`), and waits for readiness instead, so idle
/// connections cost almost no memory.
/// Measured at 5000 connections × 2 req/s (open loop): a 100 ms hold, crossed on every request,
/// gave p99 45 ms; a hold longer than the gaps gave 13 ms. 1 s keeps clients that pause between
/// calls on the cheap path; idle connections cost about 1.4 KB each (tuning.md).
const IDLE_BUFFER_HOLD: Duration = Duration::from_secs(1);

/// Reads the first bytes of the next request while the connection keeps its buffer. `None`:
/// nothing came for `IDLE_BUFFER_HOLD` (go on with `wait_idle`); `Some(0)`: the client
/// closed, the keep-alive idle timeout passed, or the shard is shutting down.
async fn hold_read(shard: &Shard, conn: &mut ClientConn) -> Option<usize> {
    let idle = shard.config().timeouts.keepalive_idle;
    let hold = idle.min(IDLE_BUFFER_HOLD);
    match read_with_deadline(shard, conn, hold, true).await {
        Ok(n) => Some(n),
        Err(_) if shard.shutdown.is_set() || hold >= idle => Some(0),
        Err(_) => None,
    }
}

/// Waits, holding no read buffer, for the next request on a connection idle for
/// `IDLE_BUFFER_HOLD`, up to the rest of the keep-alive idle timeout. False: that passed, or
/// shutdown came first. A connection that became readable gets a buffer again (its bytes may
/// also be the client's close: the next read tells).
pub async fn wait_idle(shard: &Shard, conn: &mut ClientConn) -> bool {
    let idle = shard.config().timeouts.keepalive_idle;
    wait_readable(shard, conn, idle.saturating_sub(IDLE_BUFFER_HOLD)).await
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
        _ = crate::timer::sleep(wait) => false,
        _ = shard.shutdown.wait() => false,
    };
    if ready {
        conn.rb = http::ReadBuf::with_capacity(http::FIRST_READ_BUF_BYTES);
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
        _ = crate::timer::sleep(wait) => None,
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

/// Reads a whole request body, bounded by `max_body_bytes`.
pub async fn read_body(shard: &Shard, conn: &mut ClientConn, head: &RequestHead) -> Result<Bytes> {
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

/// A lingering close, as nginx and HAProxy do it: after an error answer on a connection that
/// still has request bytes coming (`unread`: a body not read; or bytes buffered or waiting on
/// the socket), the write side is shut, so the client reads the answer and then EOF, and what
/// the client still sends is read and dropped, for at most `linger_ms` and
/// `max_linger_bytes`. Closing with unread bytes instead makes the kernel answer with a reset,
/// which can destroy the answer before the client has read it.
pub async fn linger(shard: &Shard, conn: &mut ClientConn, unread: bool) {
    let within = shard.config().timeouts.linger;
    let max = shard.config().limits.max_linger_bytes;
    let pending =
        unread || !conn.rb.data().is_empty() || http::peek(&conn.stream) == http::Peek::Data;
    if within.is_zero() || !pending || conn.stream.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + within;
    let mut dropped = 0;
    loop {
        let n = conn.rb.data().len();
        conn.rb.consume(n);
        dropped += n;
        let wait = deadline.saturating_duration_since(Instant::now());
        if dropped >= max || wait.is_zero() {
            break;
        }
        match read_with_deadline(shard, conn, wait, false).await {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    log::debug!(
        "shard {}: lingering close dropped {dropped} bytes",
        shard.id
    );
}
