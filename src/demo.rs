//! The built-in demo MCP server: the default upstream of `cargo run`, the upstream of most tests,
//! and the benchmark upstream. It runs on one monoio thread and answers from a single write per
//! response.
//!
//! It speaks the session-based versions (2025-03-26, 2025-06-18, 2025-11-25) and stateless
//! 2026-07-28. Tools: `echo {text}`, `add {a, b}`, `sleep {ms}`, and `progress {count,
//! interval_ms}`, which streams `count` progress notifications over SSE before its result. A GET
//! with a session opens a stream of `notifications/message` events, one every
//! `push_interval_ms`, each carrying a sequence number and a send timestamp (µs since the epoch).
//! `GET /stats` reports how many sessions it holds, so tests can see sessions end upstream.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use monoio::io::AsyncWriteRentExt;
use monoio::net::{TcpListener, TcpStream};
use serde_json::{json, Value};

use crate::http::{self, BodyDecoder, HeadBody, HeadLimits, Method, ReadBuf, RequestHead};
use crate::mcp::{self, Version};

/// Most sessions the demo keeps; past it, initialize gets 503.
pub const DEFAULT_DEMO_MAX_SESSIONS: usize = 100_000;
/// Interval between events on a GET stream.
pub const DEFAULT_PUSH_INTERVAL_MS: u64 = 1000;
/// Largest request body the demo reads.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Upper bounds on tool arguments, so a caller cannot park the demo forever.
const MAX_SLEEP_MS: u64 = 600_000;
const MAX_PROGRESS_COUNT: u64 = 100_000;

/// Demo server settings.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub push_interval: Duration,
    pub max_sessions: usize,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            push_interval: Duration::from_millis(DEFAULT_PUSH_INTERVAL_MS),
            max_sessions: DEFAULT_DEMO_MAX_SESSIONS,
        }
    }
}

struct DemoSession {
    /// Negotiated version, kept for debugging dumps.
    #[allow(dead_code)]
    version: &'static str,
}

struct Demo {
    cfg: DemoConfig,
    sessions: RefCell<HashMap<String, DemoSession>>,
}

/// Listen backlog of the demo server: a gateway opening thousands of upstream connections at
/// once must not overflow it (the std default of 128 does).
pub const DEMO_LISTEN_BACKLOG: i32 = 4096;

/// Binds the demo server's listener.
pub fn bind(addr: &str) -> std::io::Result<std::net::TcpListener> {
    let addr: std::net::SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(addr)?
        .next()
        .ok_or_else(|| std::io::Error::other("address resolves to nothing"))?;
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(DEMO_LISTEN_BACKLOG)?;
    Ok(sock.into())
}

/// Runs the demo server on the current thread until the process exits.
pub fn run(listener: std::net::TcpListener, cfg: DemoConfig) -> std::io::Result<()> {
    let demo = Demo {
        cfg,
        sessions: RefCell::new(HashMap::new()),
    };
    serve_forever(listener, "demo", demo, serve)
}

/// Runs `serve` for every connection accepted on `listener`, on a single-thread epoll runtime,
/// until the process exits. Shared by the built-in servers (demo, tape replay).
pub(crate) fn serve_forever<S: 'static, F: std::future::Future<Output = ()> + 'static>(
    listener: std::net::TcpListener,
    name: &'static str,
    state: S,
    serve: fn(Rc<S>, TcpStream) -> F,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        let state = Rc::new(state);
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    monoio::spawn(serve(state.clone(), stream));
                }
                Err(e) => {
                    log::warn!("{name}: accept failed: {e}");
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    })
}

/// The next request on a connection of a built-in server: head and whole body (bounded by
/// `MAX_BODY_BYTES`). `Ok(None)`: the peer closed, or sent too much. `Err`: a malformed head.
pub(crate) async fn next_request(
    stream: &mut TcpStream,
    rb: &mut ReadBuf,
) -> Result<Option<(RequestHead, Vec<u8>)>, http::HttpError> {
    let head = loop {
        if let Some(h) = http::parse_request(rb.data(), HeadLimits::default())? {
            break h;
        }
        match rb.fill(stream).await {
            Ok(n) if n > 0 => {}
            _ => return Ok(None),
        }
    };
    rb.consume(head.head_len);
    let mut dec = BodyDecoder::new(head.body);
    let mut body = Vec::new();
    loop {
        match dec.decode(rb, &mut |d: &[u8]| body.extend_from_slice(d)) {
            Ok(true) => return Ok(Some((head, body))),
            Ok(false) => {}
            Err(_) => return Ok(None),
        }
        if body.len() > MAX_BODY_BYTES {
            return Ok(None);
        }
        match rb.fill(stream).await {
            Ok(n) if n > 0 => {}
            _ => return Ok(None),
        }
    }
}

async fn serve(demo: Rc<Demo>, mut stream: TcpStream) {
    let mut rb = ReadBuf::default();
    loop {
        let (head, body) = match next_request(&mut stream, &mut rb).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(_) => {
                let _ = reply(&mut stream, 400, &[], b"bad request", false).await;
                return;
            }
        };
        if !handle(&demo, &mut stream, &head, &body).await || !head.keep_alive {
            return;
        }
    }
}

/// Handles one request; returns whether the connection can be reused.
async fn handle(demo: &Rc<Demo>, s: &mut TcpStream, head: &RequestHead, body: &[u8]) -> bool {
    if head.path == "/stats" {
        let stats = json!({"sessions": demo.sessions.borrow().len()}).to_string();
        return reply(
            s,
            200,
            b"content-type: application/json\r\n",
            stats.as_bytes(),
            true,
        )
        .await;
    }
    if head.path.split('?').next() != Some("/mcp") {
        return reply_rpc_error(s, 404, None, mcp::code::SERVER_ERROR, "not found").await;
    }
    let stateless = head.headers.get_str("mcp-protocol-version") == Some(mcp::STATELESS_VERSION);
    match head.method {
        Method::Post => post(demo, s, head, body, stateless).await,
        Method::Get if stateless => reply(s, 405, b"allow: POST\r\n", b"", true).await,
        Method::Get => get_stream(demo, s, head).await,
        Method::Delete if stateless => reply(s, 405, b"allow: POST\r\n", b"", true).await,
        Method::Delete => {
            let sid = head.headers.get_str("mcp-session-id").unwrap_or("");
            let removed = demo.sessions.borrow_mut().remove(sid).is_some();
            reply(s, if removed { 200 } else { 404 }, &[], b"", true).await
        }
        _ => reply(s, 405, b"allow: POST, GET, DELETE\r\n", b"", true).await,
    }
}

async fn post(
    demo: &Rc<Demo>,
    s: &mut TcpStream,
    head: &RequestHead,
    body: &[u8],
    stateless: bool,
) -> bool {
    let msg: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return reply_rpc_error(s, 400, None, mcp::code::PARSE_ERROR, &e.to_string()).await
        }
    };
    if msg.is_array() {
        return reply_rpc_error(
            s,
            400,
            None,
            mcp::code::INVALID_REQUEST,
            "the demo server does not take batches",
        )
        .await;
    }
    let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
    let id = msg.get("id").cloned();
    if id.is_none() || method.is_empty() {
        // A notification or a response: accepted, nothing to say.
        return reply(s, 202, &[], b"", true).await;
    }
    let id = id.unwrap_or(Value::Null);
    if stateless {
        if let Err(why) = check_stateless(head, body) {
            return reply_rpc_error(s, 400, Some(&id), mcp::code::HEADER_MISMATCH, &why).await;
        }
    } else if method == "initialize" {
        return initialize(demo, s, &msg, &id).await;
    } else {
        let sid = head.headers.get_str("mcp-session-id");
        match sid {
            None => {
                return reply_rpc_error(
                    s,
                    400,
                    Some(&id),
                    mcp::code::INVALID_REQUEST,
                    "missing Mcp-Session-Id",
                )
                .await
            }
            Some(sid) if !demo.sessions.borrow().contains_key(sid) => {
                return reply_rpc_error(
                    s,
                    404,
                    Some(&id),
                    mcp::code::SERVER_ERROR,
                    "session not found",
                )
                .await;
            }
            Some(_) => {}
        }
    }
    call(s, method, &msg, &id).await
}

fn check_stateless(head: &RequestHead, body: &[u8]) -> Result<(), String> {
    let parsed = mcp::classify(body).map_err(|e| format!("{e:?}"))?;
    let mcp::Body::Single(m) = &parsed else {
        return Err("one message per POST".into());
    };
    mcp::check_stateless_headers(
        m,
        head.headers.get_str("mcp-method"),
        head.headers.get_str("mcp-name"),
    )
}

async fn initialize(demo: &Rc<Demo>, s: &mut TcpStream, msg: &Value, id: &Value) -> bool {
    let requested = msg
        .pointer("/params/protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let version = match Version::parse(requested) {
        Some(v) if !v.is_stateless() && v >= Version::assumed() => v.as_str(),
        _ => "2025-11-25",
    };
    if demo.sessions.borrow().len() >= demo.cfg.max_sessions {
        return reply_rpc_error(
            s,
            503,
            Some(id),
            mcp::code::SERVER_ERROR,
            "demo session limit reached",
        )
        .await;
    }
    let sid = format!("demo-{:032x}", mcp::random_secret());
    demo.sessions
        .borrow_mut()
        .insert(sid.clone(), DemoSession { version });
    let result = json!({
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": false}, "logging": {}},
        "serverInfo": {"name": "shardcat-demo", "version": env!("CARGO_PKG_VERSION")},
        "instructions": "Demo server built into shardcat: tools echo, add, sleep, progress."
    });
    let headers = format!("mcp-session-id: {sid}\r\ncontent-type: application/json\r\n");
    reply(s, 200, headers.as_bytes(), &rpc_result(id, result), true).await
}

async fn call(s: &mut TcpStream, method: &str, msg: &Value, id: &Value) -> bool {
    let result = match method {
        "ping" => json!({}),
        "server/discover" => json!({
            "resultType": "complete",
            "supportedVersions": [mcp::STATELESS_VERSION],
            "capabilities": {"tools": {}},
            "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "shardcat-demo", "version": env!("CARGO_PKG_VERSION")}}
        }),
        "tools/list" => json!({"tools": tool_list()}),
        "tools/call" => return tool_call(s, msg, id).await,
        _ => {
            return reply_rpc_error(
                s,
                200,
                Some(id),
                -32601,
                &format!("method not found: {method}"),
            )
            .await
        }
    };
    reply(
        s,
        200,
        b"content-type: application/json\r\n",
        &rpc_result(id, result),
        true,
    )
    .await
}

fn tool_list() -> Value {
    let obj = |props: Value, req: &[&str]| json!({"type": "object", "properties": props, "required": req});
    json!([
        {"name": "echo", "description": "Returns its text.", "inputSchema": obj(json!({"text": {"type": "string"}}), &["text"])},
        {"name": "add", "description": "Adds two numbers.", "inputSchema": obj(json!({"a": {"type": "number"}, "b": {"type": "number"}}), &["a", "b"])},
        {"name": "sleep", "description": "Waits ms milliseconds.", "inputSchema": obj(json!({"ms": {"type": "integer"}}), &["ms"])},
        {"name": "progress", "description": "Streams count progress notifications over SSE, then returns.",
         "inputSchema": obj(json!({"count": {"type": "integer"}, "interval_ms": {"type": "integer"}}), &["count"])}
    ])
}

fn text_result(text: String) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": false})
}

async fn tool_call(s: &mut TcpStream, msg: &Value, id: &Value) -> bool {
    let name = msg
        .pointer("/params/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let args = msg
        .pointer("/params/arguments")
        .cloned()
        .unwrap_or(Value::Null);
    let result = match name {
        "echo" => text_result(
            args.get("text")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        ),
        "add" => {
            let a = args.get("a").and_then(Value::as_f64).unwrap_or(0.0);
            let b = args.get("b").and_then(Value::as_f64).unwrap_or(0.0);
            text_result(format!("{}", a + b))
        }
        "sleep" => {
            let ms = args
                .get("ms")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .min(MAX_SLEEP_MS);
            monoio::time::sleep(Duration::from_millis(ms)).await;
            text_result(format!("slept {ms} ms"))
        }
        "progress" => return progress(s, msg, id, &args).await,
        _ => {
            return reply_rpc_error(s, 200, Some(id), -32602, &format!("unknown tool: {name}"))
                .await
        }
    };
    reply(
        s,
        200,
        b"content-type: application/json\r\n",
        &rpc_result(id, result),
        true,
    )
    .await
}

/// Streams `count` progress notifications, then the result, as one SSE response.
async fn progress(s: &mut TcpStream, msg: &Value, id: &Value, args: &Value) -> bool {
    let count = args
        .get("count")
        .and_then(Value::as_u64)
        .unwrap_or(3)
        .min(MAX_PROGRESS_COUNT);
    let interval = Duration::from_millis(
        args.get("interval_ms")
            .and_then(Value::as_u64)
            .unwrap_or(10)
            .min(MAX_SLEEP_MS),
    );
    let token = msg
        .pointer("/params/_meta/progressToken")
        .cloned()
        .unwrap_or_else(|| json!("progress"));
    let mut out = Vec::new();
    http::write_response_head(
        &mut out,
        200,
        b"content-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n",
        HeadBody::Chunked,
    );
    for i in 1..=count {
        let note = json!({"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": token, "progress": i, "total": count, "message": format!("seq={i} ts_us={}", now_us())}});
        http::encode_chunk(
            &mut out,
            format!("event: message\ndata: {note}\n\n").as_bytes(),
        );
        let (res, back) = s.write_all(out).await;
        if res.is_err() {
            return false;
        }
        out = back;
        out.clear();
        if !interval.is_zero() {
            monoio::time::sleep(interval).await;
        }
    }
    let result = rpc_result(
        id,
        text_result(format!("sent {count} progress notifications")),
    );
    let mut event = b"event: message\ndata: ".to_vec();
    event.extend_from_slice(&result);
    event.extend_from_slice(b"\n\n");
    http::encode_chunk(&mut out, &event);
    out.extend_from_slice(http::LAST_CHUNK);
    s.write_all(out).await.0.is_ok()
}

/// The server-to-client stream of a session: numbered, timestamped log notifications.
async fn get_stream(demo: &Rc<Demo>, s: &mut TcpStream, head: &RequestHead) -> bool {
    let sid = head
        .headers
        .get_str("mcp-session-id")
        .unwrap_or("")
        .to_string();
    if sid.is_empty() {
        return reply(s, 400, &[], b"missing Mcp-Session-Id", true).await;
    }
    if !demo.sessions.borrow().contains_key(&sid) {
        return reply(s, 404, &[], b"", true).await;
    }
    let mut out = Vec::new();
    http::write_response_head(
        &mut out,
        200,
        b"content-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n",
        HeadBody::Chunked,
    );
    let mut seq: u64 = 0;
    loop {
        let (res, back) = s.write_all(out).await;
        if res.is_err() {
            return false;
        }
        out = back;
        out.clear();
        monoio::time::sleep(demo.cfg.push_interval).await;
        if !demo.sessions.borrow().contains_key(&sid) {
            out.extend_from_slice(http::LAST_CHUNK);
            let _ = s.write_all(out).await;
            return false;
        }
        seq += 1;
        let note = json!({"jsonrpc": "2.0", "method": "notifications/message",
            "params": {"level": "info", "logger": "demo", "data": {"seq": seq, "ts_us": now_us()}}});
        http::encode_chunk(
            &mut out,
            format!("id: {seq}\nevent: message\ndata: {note}\n\n").as_bytes(),
        );
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn rpc_result(id: &Value, result: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": id, "result": result})).unwrap_or_default()
}

async fn reply_rpc_error(
    s: &mut TcpStream,
    status: u16,
    id: Option<&Value>,
    code: i64,
    message: &str,
) -> bool {
    let id = id.map(Value::to_string);
    let body = mcp::error_body(id.as_deref(), code, message);
    reply(
        s,
        status,
        b"content-type: application/json\r\n",
        &body,
        true,
    )
    .await
}

async fn reply(s: &mut TcpStream, status: u16, extra: &[u8], body: &[u8], keep: bool) -> bool {
    let mut out = Vec::with_capacity(160 + body.len());
    http::write_response_head(&mut out, status, extra, HeadBody::Length(body.len()));
    out.extend_from_slice(body);
    s.write_all(out).await.0.is_ok() && keep
}
