//! MCP awareness: JSON-RPC classification, protocol versions, the 2026-07-28 header rules, and
//! the gateway's session ids.
//!
//! Invariants:
//! - Classification borrows from the request body and builds no `serde_json::Value`: only the
//!   fields a gateway routes on (`method`, `id`, kind, `params.name`/`params.uri`) are read.
//!   What it accepts is JSON-RPC 2.0: each message a JSON object, its id a string or a number;
//!   what is not JSON is a parse error, never an invalid request (`fuzz/checks/jsonrpc.rs`).
//! - A session id names its owning shard and slab slot in plain hex and carries 128 random bits,
//!   so it can be routed without a lookup and cannot be guessed.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Protocol versions the gateway speaks, oldest first.
pub const KNOWN_VERSIONS: [&str; 5] = [
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    "2025-11-25",
    "2026-07-28",
];
/// The stateless revision: no sessions, POST only, routing headers on every request.
pub const STATELESS_VERSION: &str = "2026-07-28";
/// Assumed when a request carries no MCP-Protocol-Version header (spec, 2025-06-18 onward).
pub const DEFAULT_ASSUMED_VERSION: &str = "2025-03-26";

/// JSON-RPC error codes the gateway emits.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Implementation-defined server errors (gateway, upstream, admission).
    pub const SERVER_ERROR: i64 = -32000;
    /// 2026-07-28 `HeaderMismatch`.
    pub const HEADER_MISMATCH: i64 = -32020;
    /// 2026-07-28 `UnsupportedProtocolVersion`.
    pub const UNSUPPORTED_VERSION: i64 = -32022;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    /// The subject may not use what the request names (authorization, `authz`).
    pub const FORBIDDEN: i64 = -32003;
}

/// What an upstream speaks toward a 2026-07-28 client. A server is one or the other on a
/// connection, never both: a Python SDK server refuses 2026-07-28 envelopes on a connection
/// initialized in the handshake era.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// Answers `server/discover` as 2026-07-28: requests go to it as they are.
    Modern,
    /// Needs initialize first: the gateway initializes it, requests lose their 2026-07-28
    /// envelope on the way in and answers get that shape on the way out.
    Handshake,
}

/// The gateway's own `server/discover` request, with the 2026-07-28 envelope.
pub fn discover_request(id: u64) -> String {
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"server/discover\",\"params\":{{\"_meta\":{{\"io.modelcontextprotocol/protocolVersion\":\"{STATELESS_VERSION}\",\"io.modelcontextprotocol/clientCapabilities\":{{}},\"io.modelcontextprotocol/clientInfo\":{{\"name\":\"shardcat\",\"version\":\"{}\"}}}}}}}}",
        env!("CARGO_PKG_VERSION")
    )
}

/// The gateway's own `initialize` request for `version`, declaring no client capabilities.
pub fn initialize_request(id: u64, version: &str) -> String {
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"initialize\",\"params\":{{\"protocolVersion\":\"{version}\",\"capabilities\":{{}},\"clientInfo\":{{\"name\":\"shardcat\",\"version\":\"{}\"}}}}}}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Whether a `server/discover` answer names 2026-07-28 among its supported versions.
pub fn speaks_stateless(line: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Res<'a> {
        #[serde(borrow, rename = "supportedVersions", default)]
        versions: Vec<&'a str>,
    }
    #[derive(serde::Deserialize)]
    struct R<'a> {
        #[serde(borrow)]
        result: Option<Res<'a>>,
    }
    serde_json::from_slice::<R<'_>>(line).is_ok_and(|r| {
        r.result
            .is_some_and(|r| r.versions.contains(&STATELESS_VERSION))
    })
}

/// The `result` of a response line, raw; `None` for an error or anything else.
pub fn result_of(line: &[u8]) -> Option<bytes::Bytes> {
    #[derive(serde::Deserialize)]
    struct R<'a> {
        #[serde(borrow)]
        result: Option<&'a RawValue>,
    }
    let r: R<'_> = serde_json::from_slice(line).ok()?;
    r.result
        .map(|v| bytes::Bytes::copy_from_slice(v.get().as_bytes()))
}

/// The 2026-07-28 `server/discover` result built from a handshake-era initialize result.
pub fn discover_from_initialize(init: &[u8], id: &str) -> Option<Vec<u8>> {
    let init: serde_json::Value = serde_json::from_slice(init).ok()?;
    let mut result = serde_json::json!({
        "resultType": "complete",
        "supportedVersions": [STATELESS_VERSION],
        "capabilities": init.get("capabilities").cloned().unwrap_or_else(|| serde_json::json!({})),
        "ttlMs": 0,
        "cacheScope": "private",
        "_meta": {"io.modelcontextprotocol/serverInfo": init.get("serverInfo").cloned().unwrap_or_default()},
    });
    if let Some(i) = init.get("instructions") {
        result["instructions"] = i.clone();
    }
    let mut out = format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":").into_bytes();
    serde_json::to_writer(&mut out, &result).ok()?;
    out.push(b'}');
    Some(out)
}

/// A protocol version the gateway knows, ordered by age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(u8);

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        KNOWN_VERSIONS
            .iter()
            .position(|v| *v == s)
            .map(|i| Version(i as u8))
    }

    pub fn as_str(self) -> &'static str {
        KNOWN_VERSIONS[self.0 as usize]
    }

    pub fn assumed() -> Version {
        Version(1)
    }

    /// Its index into `KNOWN_VERSIONS` (what a sealed session id carries).
    pub fn index(self) -> u8 {
        self.0
    }

    /// The version at `KNOWN_VERSIONS[i]`.
    pub fn from_index(i: u8) -> Option<Version> {
        (usize::from(i) < KNOWN_VERSIONS.len()).then_some(Version(i))
    }

    pub fn stateless() -> Version {
        Version(4)
    }

    pub fn is_stateless(self) -> bool {
        self == Version::stateless()
    }

    /// JSON-RPC batches were removed in 2025-06-18.
    pub fn allows_batch(self) -> bool {
        self < Version(2)
    }
}

/// What kind of JSON-RPC message a body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
}

/// The routing view of one JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: Kind,
    pub method: Option<&'a str>,
    /// The raw JSON text of the id, if any.
    pub id: Option<&'a str>,
    /// What the request names: `params.name` (tools/call, prompts/get), `params.uri`
    /// (resources/read, resources/subscribe, resources/unsubscribe) or the `params.ref`'s
    /// name or URI (completion/complete).
    pub name: Option<String>,
    /// Which kind of thing `name` is.
    pub named: Option<Named>,
}

/// What a request names: a tool, a prompt or a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named {
    Tool,
    Prompt,
    Resource,
}

impl Named {
    /// The kind of thing `method`'s params name, and the field that names it, for methods
    /// whose params name one thing (`completion/complete` is read from its `ref`).
    fn of_method(method: &str) -> Option<(Named, NameField)> {
        match method {
            "tools/call" => Some((Named::Tool, NameField::Name)),
            "prompts/get" => Some((Named::Prompt, NameField::Name)),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                Some((Named::Resource, NameField::Uri))
            }
            "completion/complete" => Some((Named::Prompt, NameField::Ref)),
            _ => None,
        }
    }
}

#[derive(Clone, Copy)]
enum NameField {
    Name,
    Uri,
    Ref,
}

/// The routing view of a whole POST body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<'a> {
    Single(Message<'a>),
    Batch(Vec<Message<'a>>),
}

impl<'a> Body<'a> {
    pub fn messages(&self) -> &[Message<'a>] {
        match self {
            Body::Single(m) => std::slice::from_ref(m),
            Body::Batch(v) => v,
        }
    }

    /// True when the body holds at least one request (so a response stream is expected).
    pub fn has_request(&self) -> bool {
        self.messages().iter().any(|m| m.kind == Kind::Request)
    }

    pub fn is_initialize(&self) -> bool {
        matches!(self, Body::Single(m) if m.method == Some("initialize"))
    }

    /// The single method, or "batch".
    pub fn method_label(&self) -> &'a str {
        match self {
            Body::Single(m) => m.method.unwrap_or("response"),
            Body::Batch(_) => "batch",
        }
    }
}

/// Why a body is not acceptable JSON-RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassifyError {
    /// Not JSON at all: -32700.
    Parse(String),
    /// JSON but not JSON-RPC 2.0: -32600.
    Invalid(&'static str),
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow)]
    jsonrpc: Option<&'a str>,
    #[serde(borrow)]
    method: Option<&'a str>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct NamedParams {
    name: Option<String>,
    uri: Option<String>,
    #[serde(rename = "ref")]
    reference: Option<Reference>,
}

/// A completion's `ref`: `{"type": "ref/prompt", "name"}` or `{"type": "ref/resource", "uri"}`.
#[derive(Deserialize)]
struct Reference {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    uri: Option<String>,
}

/// Classifies a POST body without building a DOM.
pub fn classify(body: &[u8]) -> Result<Body<'_>, ClassifyError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        let items: Vec<&RawValue> =
            serde_json::from_slice(body).map_err(|e| ClassifyError::Parse(e.to_string()))?;
        if items.is_empty() {
            return Err(ClassifyError::Invalid("empty batch"));
        }
        let msgs = items
            .iter()
            .map(|raw| classify_one(raw.get().as_bytes()))
            .collect::<Result<_, _>>()?;
        return Ok(Body::Batch(msgs));
    }
    classify_one(body).map(Body::Single)
}

/// Whether `text` starts (after whitespace) an object. serde's derived structs also read
/// arrays, as positional fields; JSON-RPC messages and named params are objects.
fn is_object(text: &[u8]) -> bool {
    text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// JSON that parses is an invalid request (-32600), anything else a parse error (-32700):
/// serde stops at its first error, and a wrong type can come before broken syntax.
fn refused(body: &[u8], why: &'static str, e: Option<serde_json::Error>) -> ClassifyError {
    match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        Ok(_) => ClassifyError::Invalid(why),
        Err(syntax) => ClassifyError::Parse(e.unwrap_or(syntax).to_string()),
    }
}

fn classify_one(body: &[u8]) -> Result<Message<'_>, ClassifyError> {
    if !is_object(body) {
        return Err(refused(body, "not a JSON-RPC object", None));
    }
    let peek: Peek<'_> = serde_json::from_slice(body)
        .map_err(|e| refused(body, "not a JSON-RPC object", Some(e)))?;
    if peek.jsonrpc != Some("2.0") {
        return Err(ClassifyError::Invalid("jsonrpc must be \"2.0\""));
    }
    let id = peek.id.map(RawValue::get);
    // JSON-RPC 2.0: an id is a string or a number (null reads as none). Anything else could
    // not be echoed safely: an object or array id may hold line breaks.
    let scalar = |raw: &str| matches!(raw.as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'));
    if id.is_some_and(|raw| !scalar(raw)) {
        return Err(ClassifyError::Invalid("id must be a string or a number"));
    }
    let kind = match (
        peek.method,
        id,
        peek.result.is_some() || peek.error.is_some(),
    ) {
        (Some(_), Some(_), false) => Kind::Request,
        (Some(_), None, false) => Kind::Notification,
        (None, Some(_), true) => Kind::Response,
        _ => {
            return Err(ClassifyError::Invalid(
                "not a request, notification or response",
            ))
        }
    };
    let (named, name) = match (peek.method.and_then(Named::of_method), peek.params) {
        (Some((named, field)), Some(p)) => {
            let params: NamedParams = serde_json::from_str(p.get())
                .ok()
                .filter(|_| is_object(p.get().as_bytes()))
                .ok_or(ClassifyError::Invalid("params must be an object"))?;
            match (field, params.reference) {
                (NameField::Name, _) => (Some(named), params.name),
                (NameField::Uri, _) => (Some(named), params.uri),
                (NameField::Ref, Some(r)) => match r.kind.as_deref() {
                    Some("ref/prompt") => (Some(Named::Prompt), r.name),
                    Some("ref/resource") => (Some(Named::Resource), r.uri),
                    _ => (None, None),
                },
                (NameField::Ref, None) => (None, None),
            }
        }
        // No params: the name is missing, which a rule can still refuse.
        (Some((named, NameField::Name | NameField::Uri)), None) => (Some(named), None),
        _ => (None, None),
    };
    Ok(Message {
        kind,
        method: peek.method,
        id,
        name,
        named,
    })
}

/// Checks the 2026-07-28 routing headers against the body. Returns the mismatch message.
pub fn check_stateless_headers(
    msg: &Message<'_>,
    mcp_method: Option<&str>,
    mcp_name: Option<&str>,
) -> Result<(), String> {
    if msg.kind == Kind::Response {
        return Err("a 2026-07-28 client must not POST responses".into());
    }
    let Some(method) = msg.method else {
        return Err("missing method".into());
    };
    if msg.kind == Kind::Request {
        match mcp_method {
            None => return Err("Header mismatch: Mcp-Method header is required".into()),
            Some(h) if h != method => {
                return Err(format!(
                    "Header mismatch: Mcp-Method header value '{h}' does not match body value '{method}'"
                ));
            }
            Some(_) => {}
        }
    } else if let Some(h) = mcp_method.filter(|h| *h != method) {
        return Err(format!(
            "Header mismatch: Mcp-Method header value '{h}' does not match body value '{method}'"
        ));
    }
    if matches!(method, "tools/call" | "prompts/get" | "resources/read")
        && msg.kind == Kind::Request
    {
        let body = msg.name.as_deref().unwrap_or("");
        let header = match mcp_name {
            None => return Err("Header mismatch: Mcp-Name header is required".into()),
            Some(h) => decode_header_value(h)
                .ok_or_else(|| format!("Header mismatch: invalid Mcp-Name value '{h}'"))?,
        };
        if header != body {
            return Err(format!(
                "Header mismatch: Mcp-Name header value '{header}' does not match body value '{body}'"
            ));
        }
    }
    Ok(())
}

/// Decodes an `Mcp-Name`/`Mcp-Param-*` value, including the `=?base64?…?=` form.
pub fn decode_header_value(v: &str) -> Option<String> {
    match v
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        Some(b64) => String::from_utf8(base64_decode(b64)?).ok(),
        None => Some(v.to_string()),
    }
}

/// An `Mcp-Name`/`Mcp-Param-*` value for `v`: as it is when it is visible ASCII with inner
/// spaces only, else in the `=?base64?…?=` form (which `decode_header_value` reads back).
pub fn encode_header_value(v: &str) -> String {
    use base64::Engine as _;
    let visible = v.bytes().all(|b| (0x20..0x7f).contains(&b));
    let padded = v.starts_with(' ') || v.ends_with(' ');
    // A plain value that reads as the encoded form would decode to something else.
    let looks_encoded = v.starts_with("=?") && v.ends_with("?=");
    let plain = visible && !padded && !looks_encoded;
    if plain {
        return v.to_string();
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(v.as_bytes());
    format!("=?base64?{b64}?=")
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

/// Length of a gateway session id: 2 hex shard + 8 hex slot + 32 hex secret.
pub const SESSION_ID_LEN: usize = 42;

/// The parts of a gateway session id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionId {
    pub shard: u8,
    pub slot: u32,
    pub secret: u128,
}

impl SessionId {
    pub fn encode(&self) -> String {
        format!("{:02x}{:08x}{:032x}", self.shard, self.slot, self.secret)
    }

    /// Parses an id; anything malformed is `None` (and gets 404, like an unknown id).
    pub fn decode(s: &[u8]) -> Option<SessionId> {
        if s.len() != SESSION_ID_LEN
            || !s
                .iter()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return None;
        }
        let s = std::str::from_utf8(s).ok()?;
        Some(SessionId {
            shard: u8::from_str_radix(&s[..2], 16).ok()?,
            slot: u32::from_str_radix(&s[2..10], 16).ok()?,
            secret: u128::from_str_radix(&s[10..], 16).ok()?,
        })
    }
}

/// 128 bits from the OS CSPRNG.
pub fn random_secret() -> u128 {
    let mut b = [0u8; 16];
    // getrandom only fails when the OS has no entropy source, which Linux always has.
    getrandom::getrandom(&mut b).expect("OS random source unavailable");
    u128::from_le_bytes(b)
}

/// A JSON-RPC error body. `id` is raw JSON text (`null` when unknown).
pub fn error_body(id: Option<&str>, code: i64, message: &str) -> Vec<u8> {
    let msg = serde_json::to_string(message).unwrap_or_else(|_| "\"error\"".into());
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{},\"error\":{{\"code\":{code},\"message\":{msg}}}}}",
        id.unwrap_or("null")
    )
    .into_bytes()
}

/// `_meta` keys that make a request a 2026-07-28 one (its envelope): a handshake-era server,
/// which learned all of this from initialize, refuses requests that carry them.
const ENVELOPE_KEYS: [&str; 4] = [
    "io.modelcontextprotocol/protocolVersion",
    "io.modelcontextprotocol/clientCapabilities",
    "io.modelcontextprotocol/clientInfo",
    "io.modelcontextprotocol/logLevel",
];

/// Methods whose 2026-07-28 results are cacheable: they carry `ttlMs` and `cacheScope`.
const CACHEABLE_METHODS: [&str; 5] = [
    "server/discover",
    "tools/list",
    "resources/list",
    "resources/templates/list",
    "prompts/list",
];

/// The protocol version a message names in its 2026-07-28 envelope
/// (`params._meta["io.modelcontextprotocol/protocolVersion"]`), if any.
pub fn envelope_version(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(rename = "io.modelcontextprotocol/protocolVersion")]
        version: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Params {
        #[serde(rename = "_meta")]
        meta: Option<Meta>,
    }
    #[derive(serde::Deserialize)]
    struct M {
        params: Option<Params>,
    }
    serde_json::from_slice::<M>(body)
        .ok()?
        .params?
        .meta?
        .version
}

/// The 2026-07-28 envelope of a message (its `params._meta` keys of `ENVELOPE_KEYS`), as the
/// JSON text of an object, for a request the gateway makes on the client's behalf (a
/// federated route learning its servers' lists). `None` when the message has none.
pub fn envelope_meta(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Params {
        #[serde(rename = "_meta")]
        meta: Option<serde_json::Map<String, serde_json::Value>>,
    }
    #[derive(serde::Deserialize)]
    struct M {
        params: Option<Params>,
    }
    let mut meta = serde_json::from_slice::<M>(body).ok()?.params?.meta?;
    meta.retain(|k, _| ENVELOPE_KEYS.contains(&k.as_str()));
    (!meta.is_empty()).then(|| serde_json::Value::Object(meta).to_string())
}

/// A 2026-07-28 message without its envelope, for a server initialized in the handshake era:
/// the envelope's `_meta` keys are removed (and `_meta` itself when nothing else is left, such
/// as a progress token). `None` when there is nothing to remove or the body is not an object.
pub fn strip_envelope(body: &[u8]) -> Option<Vec<u8>> {
    let mut msg: serde_json::Value = serde_json::from_slice(body).ok()?;
    let params = msg.get_mut("params")?.as_object_mut()?;
    let meta = params.get_mut("_meta")?.as_object_mut()?;
    let before = meta.len();
    meta.retain(|k, _| !ENVELOPE_KEYS.contains(&k.as_str()));
    if meta.len() == before {
        return None;
    }
    if meta.is_empty() {
        params.remove("_meta");
    }
    serde_json::to_vec(&msg).ok()
}

/// A handshake-era response line in the 2026-07-28 shape (schema/2026-07-28): a result gets
/// `resultType: "complete"`, and the result of a cacheable method `ttlMs: 0` (the gateway
/// cannot know how long the server's answer holds) and `cacheScope: "private"` (nor whether it
/// depends on who asks). Fields the server set are kept; errors and other lines pass unchanged.
pub fn modern_result(line: &[u8], method: &str) -> Option<Vec<u8>> {
    let mut msg: serde_json::Value = serde_json::from_slice(line).ok()?;
    let result = msg.get_mut("result")?.as_object_mut()?;
    let mut add = |k: &str, v: serde_json::Value| {
        if !result.contains_key(k) {
            result.insert(k.to_string(), v);
        }
    };
    add("resultType", "complete".into());
    if CACHEABLE_METHODS.contains(&method) {
        add("ttlMs", 0.into());
        add("cacheScope", "private".into());
    }
    serde_json::to_vec(&msg).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_round_trip() {
        for v in [
            "echo",
            "a b",
            "",
            "é",
            " lead",
            "trail ",
            "=?base64?eA==?=",
            "tab\t",
            "a\u{7f}",
        ] {
            let e = encode_header_value(v);
            assert!(
                e.bytes().all(|b| (0x20..0x7f).contains(&b)),
                "{v:?} -> {e:?}"
            );
            assert_eq!(
                decode_header_value(&e).as_deref(),
                Some(v),
                "{v:?} -> {e:?}"
            );
        }
        assert_eq!(encode_header_value("alpha__echo"), "alpha__echo");
        assert_eq!(encode_header_value("é"), "=?base64?w6k=?=");
    }

    #[test]
    fn the_envelope_alone() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","progressToken":3}}}"#;
        assert_eq!(
            envelope_meta(body).as_deref(),
            Some(r#"{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}"#)
        );
        let none =
            br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"progressToken":3}}}"#;
        assert_eq!(envelope_meta(none), None);
    }

    #[test]
    fn classifies_kinds() {
        let b =
            classify(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#)
                .unwrap();
        assert_eq!(
            b,
            Body::Single(Message {
                kind: Kind::Request,
                method: Some("tools/call"),
                id: Some("1"),
                name: Some("echo".into()),
                named: Some(Named::Tool),
            })
        );
        let n = classify(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!(n.messages()[0].kind, Kind::Notification);
        assert!(!n.has_request());
        let r = classify(br#"{"jsonrpc":"2.0","id":"a","result":{}}"#).unwrap();
        assert_eq!(r.messages()[0].kind, Kind::Response);
        assert_eq!(r.messages()[0].id, Some("\"a\""));
    }

    #[test]
    fn resources_read_uses_uri() {
        let b = classify(
            br#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}}"#,
        )
        .unwrap();
        assert_eq!(b.messages()[0].name.as_deref(), Some("file:///a"));
        assert_eq!(b.messages()[0].named, Some(Named::Resource));
    }

    #[test]
    fn subscriptions_and_completions_name_what_they_are_about() {
        let name = |body: &str| {
            let b = classify(body.as_bytes()).unwrap();
            let m = &b.messages()[0];
            (m.named, m.name.clone())
        };
        let sub = r#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"file:///a"}}"#;
        assert_eq!(name(sub), (Some(Named::Resource), Some("file:///a".into())));
        let prompt = r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"greet"},"argument":{"name":"a","value":""}}}"#;
        assert_eq!(name(prompt), (Some(Named::Prompt), Some("greet".into())));
        let res = r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"file:///{x}"}}}"#;
        assert_eq!(
            name(res),
            (Some(Named::Resource), Some("file:///{x}".into()))
        );
        let odd = r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/other"}}}"#;
        assert_eq!(name(odd), (None, None));
        let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"name":"x"}}"#;
        assert_eq!(name(list), (None, None));
    }

    #[test]
    fn rejects_bad_json_and_bad_rpc() {
        assert!(matches!(
            classify(b"{not json"),
            Err(ClassifyError::Parse(_))
        ));
        assert!(matches!(
            classify(br#"{"id":1,"method":"x"}"#),
            Err(ClassifyError::Invalid(_))
        ));
        assert!(matches!(classify(b"[]"), Err(ClassifyError::Invalid(_))));
        assert!(matches!(classify(b"7*"), Err(ClassifyError::Parse(_))));
        for id in ["true", "[1]", "{}"] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
            assert!(matches!(
                classify(body.as_bytes()),
                Err(ClassifyError::Invalid(_))
            ));
        }
        // Arrays are not messages, even ones serde could read as positional fields.
        let positional = br#"[["2.0","ping",1,null,null,null]]"#;
        assert!(matches!(
            classify(positional),
            Err(ClassifyError::Invalid(_))
        ));
        let params = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["echo",null]}"#;
        assert!(matches!(classify(params), Err(ClassifyError::Invalid(_))));
        assert!(matches!(
            classify(br#"{"jsonrpc":5,"#),
            Err(ClassifyError::Parse(_))
        ));
        assert!(matches!(classify(b"42"), Err(ClassifyError::Invalid(_))));
        assert!(matches!(
            classify(br#"{"jsonrpc":"2.0","id":1}"#),
            Err(ClassifyError::Invalid(_))
        ));
    }

    #[test]
    fn batches() {
        let b = classify(
            br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"n"}]"#,
        )
        .unwrap();
        assert_eq!(b.messages().len(), 2);
        assert!(b.has_request());
        assert_eq!(b.method_label(), "batch");
    }

    #[test]
    fn versions() {
        assert!(Version::parse("2025-03-26").unwrap().allows_batch());
        assert!(!Version::parse("2025-06-18").unwrap().allows_batch());
        assert!(Version::parse("2026-07-28").unwrap().is_stateless());
        assert!(Version::parse("2099-01-01").is_none());
        assert_eq!(Version::assumed().as_str(), DEFAULT_ASSUMED_VERSION);
        assert_eq!(Version::stateless().as_str(), STATELESS_VERSION);
    }

    #[test]
    fn stateless_header_checks() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#;
        let b = classify(body).unwrap();
        let m = &b.messages()[0];
        assert!(check_stateless_headers(m, Some("tools/call"), Some("echo")).is_ok());
        assert!(
            check_stateless_headers(m, Some("tools/call"), Some("=?base64?ZWNobw==?=")).is_ok()
        );
        assert!(check_stateless_headers(m, Some("tools/list"), Some("echo")).is_err());
        assert!(check_stateless_headers(m, Some("tools/call"), Some("add")).is_err());
        assert!(check_stateless_headers(m, Some("tools/call"), None).is_err());
        assert!(check_stateless_headers(m, None, Some("echo")).is_err());
    }

    #[test]
    fn session_id_round_trip() {
        let id = SessionId {
            shard: 3,
            slot: 77,
            secret: random_secret(),
        };
        let s = id.encode();
        assert_eq!(s.len(), SESSION_ID_LEN);
        assert!(s.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        assert_eq!(SessionId::decode(s.as_bytes()), Some(id));
        assert_eq!(SessionId::decode(b"short"), None);
        assert_eq!(SessionId::decode(s.to_uppercase().as_bytes()), None);
        assert_ne!(random_secret(), random_secret());
    }

    #[test]
    fn error_body_is_json() {
        let b = error_body(Some("7"), code::PARSE_ERROR, "bad \"json\"");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["id"], 7);
        assert_eq!(v["error"]["code"], -32700);
        assert_eq!(v["error"]["message"], "bad \"json\"");
    }

    #[test]
    fn reads_the_envelope_version() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
        assert_eq!(envelope_version(body).as_deref(), Some("2026-07-28"));
        assert_eq!(
            envelope_version(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
            None
        );
        assert_eq!(envelope_version(b"[1"), None);
    }

    #[test]
    fn strips_the_2026_envelope_and_keeps_the_rest() {
        let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"progressToken":3}}}"#;
        let out: serde_json::Value =
            serde_json::from_slice(&strip_envelope(body).unwrap()).unwrap();
        assert_eq!(
            out["params"]["_meta"],
            serde_json::json!({"progressToken": 3})
        );
        assert_eq!(out["params"]["name"], "echo");
        let only = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
        let out: serde_json::Value =
            serde_json::from_slice(&strip_envelope(only).unwrap()).unwrap();
        assert!(out["params"].get("_meta").is_none(), "{out}");
        assert_eq!(
            strip_envelope(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
            None
        );
        assert_eq!(strip_envelope(b"not json"), None);
    }

    #[test]
    fn gives_handshake_results_the_2026_shape() {
        let list = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#;
        let out: serde_json::Value =
            serde_json::from_slice(&modern_result(list, "tools/list").unwrap()).unwrap();
        assert_eq!(out["result"]["resultType"], "complete");
        assert_eq!(out["result"]["ttlMs"], 0);
        assert_eq!(out["result"]["cacheScope"], "private");
        let call = br#"{"jsonrpc":"2.0","id":1,"result":{"content":[],"resultType":"incomplete"}}"#;
        let out: serde_json::Value =
            serde_json::from_slice(&modern_result(call, "tools/call").unwrap()).unwrap();
        assert_eq!(out["result"]["resultType"], "incomplete", "kept");
        assert!(out["result"].get("ttlMs").is_none());
        let err = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"x"}}"#;
        assert_eq!(modern_result(err, "tools/list"), None);
    }
}
