//! Reads a member server's answer whole, for the requests whose answers the federation merges
//! (initialize, lists, discover) or only acknowledges (notifications): the JSON-RPC response
//! out of a JSON body, an SSE stream or a stdio child's events.
//!
//! Invariants: bounded by `max_body_bytes` and the request timeout; an HTTP connection goes
//! back to its pool only when its body was read to the end; what the server sent besides the
//! response (notifications, its own requests) is dropped here and counted by the caller.

use bytes::Bytes;

use crate::codec::sse;
use crate::error::{Error, Kind, Result};
use crate::upstream::{http as up_http, Shape, Source, Upstreams};

/// What a member answered.
pub enum Answer {
    /// The JSON-RPC response (result or error), as its raw JSON text.
    Response(Bytes),
    /// An HTTP status with no response in its body (202 for a notification).
    Status(u16),
}

/// Reads `src` (from `up`, a member's upstreams) to its JSON-RPC response.
pub async fn collect(up: &Upstreams, src: Source) -> Result<Answer> {
    match src {
        Source::Status(s) => Ok(Answer::Status(s)),
        Source::Message(b) => Ok(Answer::Response(b)),
        Source::Events(mut ev) => {
            while let Some(raw) = ev.next().await {
                let data = sse::parse_sse_event(&raw).data;
                if is_response(&data) {
                    return Ok(Answer::Response(Bytes::from(data)));
                }
            }
            Err(Error::new(
                Kind::UpstreamProtocol,
                "the stream ended before the response",
            ))
        }
        Source::Http(mut ans) => {
            let status = ans.head.status;
            let kind = ans.head.body;
            let max = up.limits.max_body_bytes;
            let wait = up.timeouts.upstream_request;
            let body = up_http::read_body(&mut ans.conn, &mut ans.rb, kind, max, wait, None).await;
            let keep = body.is_some() && ans.head.keep_alive;
            up_http::finish(up, ans.conn, ans.rb, keep);
            let body = body.ok_or_else(|| {
                Error::new(
                    Kind::UpstreamProtocol,
                    "the answer broke off or was too large",
                )
            })?;
            match response_in(&body, ans.shape.as_deref()) {
                Some(r) => Ok(Answer::Response(Bytes::from(r))),
                None if (200..300).contains(&status) => Ok(Answer::Status(status)),
                None => Err(Error::new(
                    Kind::UpstreamProtocol,
                    format!("answered HTTP {status}"),
                )),
            }
        }
    }
}

/// The JSON-RPC response a body holds: the body itself (JSON), or the first SSE event whose
/// data is a response; as `shape` gives it to a client (a handshake-era server's answer to a
/// 2026-07-28 request gets the client's id back and that version's shape).
fn response_in(body: &[u8], shape: Option<&Shape>) -> Option<Vec<u8>> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[start] == b'{' {
        let shaped = shape.and_then(|s| s.body(body));
        let body = shaped.as_deref().unwrap_or(body);
        return is_response(body).then(|| body.to_vec());
    }
    let mut split = sse::SseSplitter::new(body.len() + 2);
    split.push(body);
    // The body is whole: a last event without its blank line still counts.
    split.push(b"\n\n");
    while let Ok(Some(ev)) = split.next_event() {
        let ev = match shape {
            Some(s) => match s.event(ev) {
                Some(ev) => ev,
                None => continue,
            },
            None => ev,
        };
        let data = sse::parse_sse_event(&ev).data;
        if is_response(&data) {
            return Some(data);
        }
    }
    None
}

/// A JSON-RPC response: an object with an id and a result or an error, and no method.
pub fn is_response(data: &[u8]) -> bool {
    matches!(
        crate::mcp::classify(data),
        Ok(crate::mcp::Body::Single(m)) if m.kind == crate::mcp::Kind::Response
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_response_in_json_and_sse() {
        let json = br#" {"jsonrpc":"2.0","id":1,"result":{}}"#;
        assert_eq!(response_in(json, None).as_deref(), Some(&json[..]));
        let sse = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{}}\n\n\
                    id: 7\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"x\":1}}";
        assert_eq!(
            response_in(sse, None).as_deref(),
            Some(&br#"{"jsonrpc":"2.0","id":1,"result":{"x":1}}"#[..])
        );
        let request = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        assert_eq!(response_in(request, None), None);
        assert_eq!(response_in(b"", None), None);
    }
}
