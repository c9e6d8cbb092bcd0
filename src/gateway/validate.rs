//! Validation, before anything reaches an upstream: the endpoint path (a route's), Host (DNS-rebinding
//! protection) and Origin, the MCP-Protocol-Version header, what the degradation level still
//! serves; the per-client request rate (after authentication, which names the client); and
//! the JSON-RPC classification of a POST's body.
//! Each refusal is one `Error` (with its status, JSON-RPC code and counter).

use std::time::{Duration, Instant};

use crate::codec::http::RequestHead;
use crate::config::OriginPolicy;
use crate::degrade::Level;
use crate::error::{Error, Kind, Result};
use crate::mcp::{self, Version};
use crate::shard::{ClientConn, Shard};

/// Checks a request head; returns the protocol version it names (`None`: none named).
pub fn request(shard: &Shard, head: &RequestHead) -> Result<Option<Version>> {
    let (_, path) = target(&head.path);
    let path = path.split('?').next().unwrap_or("");
    if !shard.config().routes.iter().any(|r| r.path == path) {
        return Err(Error::new(Kind::NotFound, format!("no endpoint at {path}")));
    }
    host_and_origin(&shard.config().origins, head)?;
    let version = header_version(head)?;
    let level = crate::degrade::level(&shard.shared);
    if level == Level::Protective && head.headers.get("mcp-session-id").is_none() {
        // Only requests of existing sessions are served.
        return Err(degraded(shard, "only existing sessions are served"));
    }
    Ok(version)
}

/// The per-client request rate; the client is the authenticated subject when auth is on (its
/// cell was set on the connection by `authn`), else the address.
pub fn client_rate(shard: &Shard, conn: &ClientConn) -> Result<()> {
    let clients = &shard.shared.clients;
    if clients.rates_clients() {
        if let Err(wait) = clients.take(conn.client_cell(), Instant::now()) {
            return Err(rate_limited(shard, "client_rate", wait));
        }
    }
    Ok(())
}

/// Host (DNS-rebinding protection) and Origin, as `policy` allows them. No shard state: the
/// `request_head` fuzz target calls it as the pipeline does.
pub fn host_and_origin(policy: &OriginPolicy, head: &RequestHead) -> Result<()> {
    // Required in HTTP/1.1; checked in HTTP/1.0 too when present. An absolute-form target
    // names the host itself, in place of Host (RFC 9112, 3.2.2).
    let (authority, _) = target(&head.path);
    let named = authority.or(head.headers.get_str("host"));
    let present = head.headers.get("host").is_some() || authority.is_some();
    if (head.minor == 1 || present) && !policy.host_ok(named) {
        return Err(Error::new(Kind::MisdirectedHost, ""));
    }
    // A present Origin must be allowed, even one that is not UTF-8 (which is no origin at all).
    let origin_ok = match head.headers.get("origin") {
        None => policy.origin_ok(None),
        Some(v) => std::str::from_utf8(v).is_ok_and(|o| policy.origin_ok(Some(o.trim()))),
    };
    if !origin_ok {
        return Err(Error::new(Kind::ForbiddenOrigin, ""));
    }
    Ok(())
}

/// A request target's authority (absolute-form: `http://host:port/path`, which a server must
/// accept) and path. Origin-form (`/path`) has no authority.
fn target(t: &str) -> (Option<&str>, &str) {
    // Compared as bytes: the target may hold any UTF-8, and a str slice at a byte count
    // could cut a character (found by fuzz/request_head). The prefixes are ASCII, so the
    // rest starts on a character boundary.
    let scheme = ["http://", "https://"].iter().find(|s| {
        t.as_bytes()
            .get(..s.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(s.as_bytes()))
    });
    let Some(scheme) = scheme else {
        return (None, t);
    };
    let rest = &t[scheme.len()..];
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (Some(&rest[..i]), &rest[i..]),
        Some(i) => (Some(&rest[..i]), "/"),
        None => (Some(rest), "/"),
    }
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

/// A POST's body as JSON-RPC: one message or a batch, each classified.
pub fn classify(body: &[u8]) -> Result<mcp::Body<'_>> {
    mcp::classify(body).map_err(|e| match e {
        mcp::ClassifyError::Parse(why) => Error::new(Kind::ParseError, why),
        mcp::ClassifyError::Invalid(why) => Error::new(Kind::InvalidRequest, why),
    })
}

/// A 503 for work the degradation level sheds, counted.
pub fn degraded(shard: &Shard, why: &str) -> Error {
    shard.stats.count_rejection("degraded");
    Error::new(Kind::Overloaded("degraded"), why)
}

/// A 429 for a per-client or per-session limit, counted.
pub fn rate_limited(shard: &Shard, what: &'static str, wait: Duration) -> Error {
    shard.stats.count_rejection(what);
    let secs = wait.as_secs_f64().ceil().max(1.0) as u32;
    Error::new(Kind::RateLimited(what, secs), "")
}

pub fn stateless_405() -> Error {
    Error::new(
        Kind::MethodNotAllowed,
        "protocol version 2026-07-28 is POST only",
    )
}

#[cfg(test)]
mod tests {
    use super::target;

    #[test]
    fn absolute_form_targets_give_their_authority_and_path() {
        assert_eq!(target("/mcp?x=1"), (None, "/mcp?x=1"));
        assert_eq!(target("http://a:1/mcp"), (Some("a:1"), "/mcp"));
        assert_eq!(target("HTTPS://a/mcp?q"), (Some("a"), "/mcp?q"));
        assert_eq!(target("http://a"), (Some("a"), "/"));
        assert_eq!(target("http://a?q"), (Some("a"), "/"));
        assert_eq!(target("ftp://a/mcp"), (None, "ftp://a/mcp"));
        // Multi-byte characters where the scheme would end.
        assert_eq!(
            target("/MMMMM\u{772}MMM/mcp"),
            (None, "/MMMMM\u{772}MMM/mcp")
        );
        assert_eq!(target("http\u{e9}//a/mcp"), (None, "http\u{e9}//a/mcp"));
    }
}
