//! The MCP requests loadgen sends, prebuilt as raw HTTP/1.1 bytes.
//!
//! Each request is built once per virtual user; only its JSON-RPC id changes between sends, and
//! the id has a fixed width so it is rewritten in place (Content-Length stays valid). This keeps
//! the hot loop free of formatting and allocation, so loadgen is not the bottleneck.

use crate::target::Target;

/// Version sent on session-based workloads.
pub const SESSION_VERSION: &str = "2025-06-18";
/// The stateless protocol version (no session, method and name in headers).
pub const STATELESS_VERSION: &str = "2026-07-28";
/// Digits of the rewritable id, inside a JSON string (JSON numbers cannot have leading zeros).
const ID_DIGITS: usize = 12;
const ID_MARKER: &[u8] = b"\"id\":\"r";

/// A ready-to-send request whose JSON-RPC id (if any) can be rewritten in place.
#[derive(Debug, Clone)]
pub struct Request {
    pub bytes: Vec<u8>,
    id_at: Option<usize>,
}

impl Request {
    /// Rewrites the id digits (modulo 10^12, ample for one run).
    pub fn set_id(&mut self, mut n: u64) {
        let Some(at) = self.id_at else { return };
        for b in self.bytes[at..at + ID_DIGITS].iter_mut().rev() {
            *b = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
}

fn build(method: &str, t: &Target, headers: &str, body: Option<&str>) -> Request {
    let mut s = format!(
        "{method} {} HTTP/1.1\r\nhost: {}\r\naccept: application/json, text/event-stream\r\n{}{headers}",
        t.path, t.authority, t.headers
    );
    match body {
        Some(b) => s.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
            b.len()
        )),
        None => s.push_str("\r\n"),
    }
    let bytes = s.into_bytes();
    let id_at = find(&bytes, ID_MARKER).map(|i| i + ID_MARKER.len());
    Request { bytes, id_at }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn id_placeholder() -> String {
    format!("\"id\":\"r{}\"", "0".repeat(ID_DIGITS))
}

fn session_headers(sid: &str) -> String {
    format!("mcp-protocol-version: {SESSION_VERSION}\r\nmcp-session-id: {sid}\r\n")
}

pub fn initialize(t: &Target) -> Request {
    let body = format!(
        r#"{{"jsonrpc":"2.0",{},"method":"initialize","params":{{"protocolVersion":"{SESSION_VERSION}","capabilities":{{}},"clientInfo":{{"name":"loadgen","version":"{}"}}}}}}"#,
        id_placeholder(),
        env!("CARGO_PKG_VERSION")
    );
    build(
        "POST",
        t,
        &format!("mcp-protocol-version: {SESSION_VERSION}\r\n"),
        Some(&body),
    )
}

pub fn initialized(t: &Target, sid: &str) -> Request {
    let body = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    build("POST", t, &session_headers(sid), Some(body))
}

fn echo_params(payload: usize) -> String {
    format!(
        r#""name":"echo","arguments":{{"text":"{}"}}"#,
        "x".repeat(payload)
    )
}

pub fn call(t: &Target, sid: &str, payload: usize) -> Request {
    let body = format!(
        r#"{{"jsonrpc":"2.0",{},"method":"tools/call","params":{{{}}}}}"#,
        id_placeholder(),
        echo_params(payload)
    );
    build("POST", t, &session_headers(sid), Some(&body))
}

pub fn stateless_call(t: &Target, payload: usize) -> Request {
    let body = format!(
        r#"{{"jsonrpc":"2.0",{},"method":"tools/call","params":{{{},"_meta":{{"io.modelcontextprotocol/protocolVersion":"{STATELESS_VERSION}","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#,
        id_placeholder(),
        echo_params(payload)
    );
    let headers = format!(
        "mcp-protocol-version: {STATELESS_VERSION}\r\nmcp-method: tools/call\r\nmcp-name: echo\r\n"
    );
    build("POST", t, &headers, Some(&body))
}

pub fn delete(t: &Target, sid: &str) -> Request {
    build("DELETE", t, &session_headers(sid), None)
}

pub fn get_stream(t: &Target, sid: &str) -> Request {
    build("GET", t, &session_headers(sid), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        crate::target::parse("http://127.0.0.1:9/mcp").unwrap()
    }

    fn body_of(r: &Request) -> serde_json::Value {
        let text = std::str::from_utf8(&r.bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len(), "content-length matches the body");
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn id_is_rewritten_in_place() {
        let mut r = call(&target(), "sid", 4);
        let before = r.bytes.len();
        r.set_id(42);
        assert_eq!(r.bytes.len(), before);
        assert_eq!(body_of(&r)["id"], "r000000000042");
        assert_eq!(body_of(&r)["params"]["arguments"]["text"], "xxxx");
    }

    #[test]
    fn stateless_call_carries_headers_and_meta() {
        let r = stateless_call(&target(), 1);
        let text = String::from_utf8(r.bytes.clone()).unwrap();
        assert!(text.contains("mcp-method: tools/call\r\n"));
        assert!(text.contains("mcp-name: echo\r\n"));
        let meta = &body_of(&r)["params"]["_meta"];
        assert_eq!(
            meta["io.modelcontextprotocol/protocolVersion"],
            STATELESS_VERSION
        );
    }

    #[test]
    fn bodyless_requests_end_after_the_head() {
        let r = delete(&target(), "abc");
        assert!(r.bytes.ends_with(b"mcp-session-id: abc\r\n\r\n"));
        assert!(r.bytes.starts_with(b"DELETE /mcp HTTP/1.1\r\n"));
    }
}
