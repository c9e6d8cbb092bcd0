//! The gateway's one error type: what went wrong (kind), whose fault it was (side), and whether
//! a retry can help. `Error::status` and `Error::body` are the single place where errors become
//! an HTTP status and a JSON-RPC error body.

use crate::codec::http::HttpError;
use crate::mcp::code;

/// Whose fault an error is; drives logging level and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Framing or syntax error in the client's HTTP.
    BadHttp(HttpError),
    /// The body is not JSON (-32700).
    ParseError,
    /// JSON, but not acceptable JSON-RPC here (-32600).
    InvalidRequest,
    /// 2026-07-28 routing headers disagree with the body (-32020).
    HeaderMismatch,
    /// MCP-Protocol-Version names no version we speak (-32022).
    UnsupportedVersion,
    /// Origin not on the allow-list.
    ForbiddenOrigin,
    /// The subject may not use the tool, prompt or resource a request names (`authz`):
    /// -32003, answered with HTTP 200 like any JSON-RPC error about one request.
    Forbidden,
    /// A request names what nothing behind the route offers (a federated route's unknown or
    /// hidden tool, a malformed cursor): -32602, with HTTP 200.
    InvalidParams,
    /// A method the gateway answers itself and does not know (-32601, HTTP 200).
    MethodNotFound,
    /// Host not on the allow-list.
    MisdirectedHost,
    /// No credentials, or credentials not accepted (401). `sent`: some were presented (the
    /// challenge then says `error="invalid_token"`, with the detail as its description).
    Unauthorized {
        sent: bool,
    },
    /// Valid credentials without a scope every request needs (403, `insufficient_scope`).
    InsufficientScope,
    /// A session-based request without Mcp-Session-Id.
    SessionRequired,
    /// Unknown, expired or ended session.
    UnknownSession,
    NotFound,
    MethodNotAllowed,
    /// The resource is busy (a second GET stream on one stdio session).
    Conflict,
    /// A named bound was hit (connections, sessions, pool, hand-off queue).
    Overloaded(&'static str),
    /// A per-client or per-session limit: 429, retry after this many seconds.
    RateLimited(&'static str, u32),
    ShuttingDown,
    UpstreamConnect,
    UpstreamProtocol,
    UpstreamTimeout,
    ClientTimeout,
    /// The client hung up before its response was ready; nothing can be sent.
    ClientGone,
    Internal,
}

#[derive(Debug, Clone)]
pub struct Error {
    pub kind: Kind,
    pub detail: String,
    /// Raw JSON id of the request the error answers, when known.
    pub id: Option<String>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Error {
        Error {
            kind,
            detail: detail.into(),
            id: None,
        }
    }

    pub fn with_id(mut self, id: Option<&str>) -> Error {
        self.id = id.map(str::to_string);
        self
    }

    pub fn side(&self) -> Side {
        match self.kind {
            Kind::UpstreamConnect | Kind::UpstreamProtocol | Kind::UpstreamTimeout => {
                Side::Upstream
            }
            Kind::Overloaded(_) | Kind::ShuttingDown | Kind::Internal => Side::Internal,
            _ => Side::Client,
        }
    }

    /// Whether the same request may succeed if sent again later.
    pub fn retryable(&self) -> bool {
        matches!(
            self.kind,
            Kind::Overloaded(_)
                | Kind::RateLimited(..)
                | Kind::ShuttingDown
                | Kind::UpstreamConnect
                | Kind::UpstreamTimeout
        )
    }

    pub fn status(&self) -> u16 {
        match &self.kind {
            Kind::BadHttp(HttpError::HeadTooLarge) => 431,
            Kind::BadHttp(HttpError::BodyTooLarge) => 413,
            Kind::BadHttp(HttpError::UnsupportedCoding) => 501,
            Kind::BadHttp(HttpError::Malformed(_)) => 400,
            Kind::ParseError | Kind::InvalidRequest | Kind::HeaderMismatch => 400,
            Kind::UnsupportedVersion | Kind::SessionRequired => 400,
            // A JSON-RPC error about one request, not about the HTTP exchange: an MCP server
            // answers an unknown tool with 200 and the error, and the SDKs hand a 200 error to
            // the caller as the request's own (code and message), while a 4xx becomes a
            // transport failure. The 400s above are for what the spec itself makes HTTP errors.
            Kind::Forbidden | Kind::InvalidParams | Kind::MethodNotFound => 200,
            Kind::ForbiddenOrigin | Kind::InsufficientScope => 403,
            Kind::Unauthorized { .. } => 401,
            Kind::MisdirectedHost => 421,
            Kind::UnknownSession | Kind::NotFound => 404,
            Kind::MethodNotAllowed => 405,
            Kind::Conflict => 409,
            Kind::ClientTimeout => 408,
            Kind::ClientGone => 499,
            Kind::Overloaded(_) | Kind::ShuttingDown => 503,
            Kind::RateLimited(..) => 429,
            Kind::UpstreamConnect | Kind::UpstreamProtocol => 502,
            Kind::UpstreamTimeout => 504,
            Kind::Internal => 500,
        }
    }

    pub fn rpc_code(&self) -> i64 {
        match self.kind {
            Kind::ParseError | Kind::BadHttp(_) => code::PARSE_ERROR,
            Kind::InvalidRequest | Kind::SessionRequired | Kind::MethodNotAllowed => {
                code::INVALID_REQUEST
            }
            Kind::HeaderMismatch => code::HEADER_MISMATCH,
            Kind::Forbidden => code::FORBIDDEN,
            Kind::InvalidParams => code::INVALID_PARAMS,
            Kind::MethodNotFound => code::METHOD_NOT_FOUND,
            Kind::UnsupportedVersion => code::UNSUPPORTED_VERSION,
            Kind::Internal => code::INTERNAL_ERROR,
            _ => code::SERVER_ERROR,
        }
    }

    /// After this error the connection cannot be trusted to stay in sync.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self.kind,
            Kind::BadHttp(_) | Kind::ClientTimeout | Kind::ClientGone | Kind::ShuttingDown
        )
    }

    /// The `WWW-Authenticate` challenge of a 401 or 403 (RFC 6750, RFC 9728): where the
    /// protected resource metadata is, the scopes needed (`scope`, when any), and for
    /// credentials that were presented, why they were refused. `None` for other errors.
    pub fn www_authenticate(&self, metadata_url: &str, scope: &str) -> Option<String> {
        let error = match self.kind {
            Kind::Unauthorized { sent: false } => None,
            Kind::Unauthorized { sent: true } => Some("invalid_token"),
            Kind::InsufficientScope => Some("insufficient_scope"),
            _ => return None,
        };
        let mut out = format!("Bearer resource_metadata=\"{}\"", quoted(metadata_url));
        if !scope.is_empty() {
            out.push_str(&format!(", scope=\"{}\"", quoted(scope)));
        }
        if let Some(error) = error {
            out.push_str(&format!(", error=\"{error}\""));
            if !self.detail.is_empty() {
                out.push_str(&format!(", error_description=\"{}\"", quoted(&self.detail)));
            }
        }
        Some(out)
    }

    /// The JSON-RPC error body sent with the status.
    pub fn body(&self) -> Vec<u8> {
        crate::mcp::error_body(self.id.as_deref(), self.rpc_code(), &self.message())
    }

    pub fn message(&self) -> String {
        let what = match &self.kind {
            Kind::BadHttp(e) => return e.to_string(),
            Kind::ParseError => "Parse error",
            Kind::InvalidRequest => "Invalid request",
            Kind::HeaderMismatch => return self.detail.clone(),
            Kind::UnsupportedVersion => "Unsupported protocol version",
            Kind::ForbiddenOrigin => "Forbidden: Origin not allowed",
            Kind::Forbidden => "Forbidden",
            Kind::InvalidParams => "Invalid params",
            Kind::MethodNotFound => "Method not found",
            Kind::MisdirectedHost => "Misdirected request: Host not allowed",
            Kind::Unauthorized { sent: false } => "Unauthorized: credentials required",
            Kind::Unauthorized { sent: true } => "Unauthorized",
            Kind::InsufficientScope => "Forbidden: insufficient scope",
            Kind::SessionRequired => "Bad Request: Mcp-Session-Id header is required",
            Kind::UnknownSession => "Session not found",
            Kind::NotFound => "Not found",
            Kind::MethodNotAllowed => "Method not allowed",
            Kind::Conflict => "Conflict",
            Kind::Overloaded(what) => {
                return format!("Gateway overloaded: {what} limit reached, retry later")
            }
            Kind::RateLimited(what, _) => {
                return format!("Too many requests: {what} limit reached, retry later")
            }
            Kind::ShuttingDown => "Gateway is shutting down",
            Kind::UpstreamConnect => "Upstream unavailable",
            Kind::UpstreamProtocol => "Upstream sent an invalid response",
            Kind::UpstreamTimeout => "Upstream timed out",
            Kind::ClientTimeout => "Request timeout",
            Kind::ClientGone => "Client closed the request",
            Kind::Internal => "Internal gateway error",
        };
        if self.detail.is_empty() {
            what.to_string()
        } else {
            format!("{what}: {}", self.detail)
        }
    }

    /// The metrics label of this error's kind.
    pub fn label(&self) -> &'static str {
        match self.kind {
            Kind::BadHttp(_) => "bad_http",
            Kind::ParseError => "parse_error",
            Kind::InvalidRequest => "invalid_request",
            Kind::HeaderMismatch => "header_mismatch",
            Kind::UnsupportedVersion => "unsupported_version",
            Kind::ForbiddenOrigin => "forbidden_origin",
            Kind::Forbidden => "forbidden",
            Kind::InvalidParams => "invalid_params",
            Kind::MethodNotFound => "method_not_found",
            Kind::MisdirectedHost => "misdirected_host",
            Kind::Unauthorized { .. } => "unauthorized",
            Kind::InsufficientScope => "insufficient_scope",
            Kind::SessionRequired => "session_required",
            Kind::UnknownSession => "unknown_session",
            Kind::NotFound => "not_found",
            Kind::MethodNotAllowed => "method_not_allowed",
            Kind::Conflict => "conflict",
            Kind::Overloaded(w) => w,
            Kind::RateLimited(w, _) => w,
            Kind::ShuttingDown => "shutting_down",
            Kind::UpstreamConnect => "upstream_connect",
            Kind::UpstreamProtocol => "upstream_protocol",
            Kind::UpstreamTimeout => "upstream_timeout",
            Kind::ClientTimeout => "client_timeout",
            Kind::ClientGone => "client_gone",
            Kind::Internal => "internal",
        }
    }
}

/// Text fit for an HTTP quoted-string: quotes and backslashes escaped, control characters
/// (which no quoted-string may hold) dropped.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

impl From<HttpError> for Error {
    fn from(e: HttpError) -> Error {
        Error::new(Kind::BadHttp(e), "")
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message(), self.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping() {
        let e = Error::new(Kind::Overloaded("sessions"), "");
        assert_eq!(e.status(), 503);
        assert!(e.retryable());
        assert_eq!(e.side(), Side::Internal);
        let e = Error::new(Kind::HeaderMismatch, "Header mismatch: x").with_id(Some("3"));
        assert_eq!(e.status(), 400);
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], -32020);
        assert_eq!(v["id"], 3);
        assert_eq!(Error::from(HttpError::HeadTooLarge).status(), 431);
        assert_eq!(Error::new(Kind::UpstreamTimeout, "").status(), 504);
        assert_eq!(Error::new(Kind::UpstreamConnect, "").side(), Side::Upstream);
        let e = Error::new(Kind::Forbidden, "tool \"rm\" is not allowed").with_id(Some("\"a\""));
        assert_eq!(
            (e.status(), e.side(), e.closes_connection()),
            (200, Side::Client, false)
        );
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], -32003);
        assert_eq!(
            v["error"]["message"],
            "Forbidden: tool \"rm\" is not allowed"
        );
        assert_eq!(v["id"], "a");
    }

    #[test]
    fn auth_challenges() {
        let url = "https://g/.well-known/oauth-protected-resource/mcp";
        let e = Error::new(Kind::Unauthorized { sent: false }, "");
        assert_eq!(e.status(), 401);
        assert_eq!(
            e.www_authenticate(url, "").unwrap(),
            format!("Bearer resource_metadata=\"{url}\"")
        );
        let e = Error::new(Kind::Unauthorized { sent: true }, "token \"expired\"\r\n");
        let h = e.www_authenticate(url, "a b").unwrap();
        assert!(
            h.contains(", scope=\"a b\", error=\"invalid_token\""),
            "{h}"
        );
        assert!(
            h.ends_with("error_description=\"token \\\"expired\\\"\""),
            "{h}"
        );
        let e = Error::new(Kind::InsufficientScope, "needs a");
        assert_eq!(e.status(), 403);
        assert!(e
            .www_authenticate(url, "a")
            .unwrap()
            .contains("insufficient_scope"));
        assert!(Error::new(Kind::NotFound, "")
            .www_authenticate(url, "")
            .is_none());
    }
}
