//! Writing answers to the client: what an upstream kind answered (`Source`: a status, one
//! JSON message, an HTTP response whose body `relay` carries, or events through a `stream`),
//! and the gateway's own errors.
//!
//! Invariant: every `Source` is written or dropped here, so what it holds (an upstream
//! connection, a stdio ticket) is released on every path.

use std::rc::Rc;

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use crate::codec::http::{self, HeadBody};
use crate::error::{Error, Kind, Result};
use crate::shard::{ClientConn, Shard};
use crate::tape::Dir;
use crate::upstream::{Events, Source};

use super::{relay, stream, Delivery, Outcome};

const SSE_HEADERS: &[u8] =
    b"content-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n";

/// Writes `src` to the client and records it.
pub async fn source(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    src: Source,
    d: Delivery,
) -> Result<Outcome> {
    match src {
        Source::Status(status) => {
            shard.record_status(d.tap, status).await;
            write_status(conn, status).await
        }
        Source::Message(line) => {
            shard
                .record_message(d.tap, Dir::ServerToClient, 200, None, line.clone())
                .await;
            write_json(conn, d.session.as_deref(), &line).await
        }
        Source::Http(ans) => {
            if d.check_hangup && crate::upstream::http::has_hung_up(&conn.stream) {
                // Nobody to relay to; the caller cleans up what it made for the answer.
                shard.give_buffer(ans.rb.into_vec());
                return Err(Error::new(
                    Kind::ClientGone,
                    "client hung up before the answer",
                ));
            }
            let status = ans.head.status;
            let end = relay::relay(shard, conn, ans, d).await;
            Ok(Outcome {
                status,
                reusable: end.client_ok,
                answered: end.answered,
            })
        }
        Source::Events(events) => stream_events(shard, conn, events, d).await,
    }
}

/// An SSE answer fed by an upstream kind's events: the reader is a task of its own; this
/// connection writes. A session's stream is resumable: a client that leaves does not cancel
/// the request, its answer waits for a resume.
async fn stream_events(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    events: Events,
    d: Delivery,
) -> Result<Outcome> {
    let mut out = Vec::with_capacity(128);
    http::write_response_head(&mut out, 200, SSE_HEADERS, HeadBody::Chunked);
    write(conn, out).await?;
    let st = stream::open(shard, d.sse, d.tap.map(|t| (t, 200)));
    let reader = monoio::spawn(stream::pump_events(shard.clone(), st.clone(), events));
    let end = stream::deliver(shard, conn, &st, 1).await;
    if !st.resumable() {
        // The reader owns the request: ending it (dropping its ticket) cancels it upstream.
        reader.await;
    }
    let done = relay::finish_stream(conn, &st, end).await;
    Ok(Outcome::ended(200, done.client_ok))
}

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

async fn write(conn: &mut ClientConn, out: Vec<u8>) -> Result<()> {
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
