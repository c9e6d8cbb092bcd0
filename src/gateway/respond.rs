//! The gateway's own answers to the client: one JSON message, a bare status, the head of a
//! resumed stream, and errors (`write_error`, the one place an `Error` becomes a response).

use std::rc::Rc;

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use super::Outcome;
use crate::codec::http::{self, HeadBody};
use crate::error::{Error, Kind, Result};
use crate::shard::{ClientConn, Shard};

/// The head fields of every SSE answer the gateway writes.
pub const SSE_HEADERS: &[u8] =
    b"content-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n";

/// A 200 JSON answer, with the session id an initialize announces.
pub async fn write_json(
    conn: &mut ClientConn,
    session: Option<&str>,
    body: &[u8],
) -> Result<Outcome> {
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

/// A status with an empty body, on a connection that stays open.
pub async fn write_status(conn: &mut ClientConn, status: u16) -> Result<Outcome> {
    let mut out = Vec::with_capacity(64);
    http::write_response_head(&mut out, status, b"", HeadBody::Length(0));
    write(conn, out).await?;
    Ok(Outcome::written(status))
}

/// The SSE head for a stream the gateway continues itself (a resume).
pub async fn write_sse_head(conn: &mut ClientConn) -> Result<()> {
    let mut out = Vec::with_capacity(128);
    http::write_response_head(&mut out, 200, SSE_HEADERS, HeadBody::Chunked);
    write(conn, out).await
}

pub async fn write(conn: &mut ClientConn, out: Vec<u8>) -> Result<()> {
    let (res, _) = conn.stream.write_all(out).await;
    res.map(|_| ())
        .map_err(|e| Error::new(Kind::ClientGone, e.to_string()))
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
    let auth = &shard.auth.shared;
    if let Some(challenge) = e.www_authenticate(&auth.config.metadata_url, &auth.scope_param) {
        extra.extend_from_slice(b"www-authenticate: ");
        extra.extend_from_slice(challenge.as_bytes());
        extra.extend_from_slice(b"\r\n");
    }
    if !keep {
        extra.extend_from_slice(b"connection: close\r\n");
    }
    http::write_response_head(&mut out, e.status(), &extra, HeadBody::Length(body.len()));
    out.extend_from_slice(&body);
    let (res, _) = stream.write_all(out).await;
    res.map(|_| ())
}

/// Answers a connection that is not admitted with a 503 and closes it.
pub async fn reject(shard: Rc<Shard>, mut stream: TcpStream, kind: Kind) {
    let e = Error::new(kind, "");
    let _ = write_error(&shard, &mut stream, &e, false).await;
}
