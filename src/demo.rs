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
//!
//! For resilience tests it can break its own streams: `progress` with `drop_after: k` cuts the
//! connection after the k-th event, and `drop_streams` cuts the session's GET streams. Both
//! resume with `Last-Event-ID`, as a server supporting resumption does.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use monoio::io::AsyncWriteRentExt;
use monoio::net::{TcpListener, TcpStream};
use serde_json::{json, Value};

use crate::codec::http::{self, BodyDecoder, HeadBody, HeadLimits, Method, ReadBuf, RequestHead};
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
    /// Bumped by the `drop_streams` tool: GET streams of the session break off when it moves.
    drops: u64,
    /// Progress streams broken off by `drop_after`, resumable with `Last-Event-ID`.
    broken: Vec<Broken>,
}

/// The rest of a progress stream the demo broke off on purpose.
#[derive(Clone)]
struct Broken {
    tag: u64,
    token: Value,
    id: Value,
    count: u64,
    interval: Duration,
    /// A 2026-07-28 request: its result gets that version's shape.
    stateless: bool,
}

/// Broken-off streams kept per session.
const MAX_BROKEN_STREAMS: usize = 16;

struct Demo {
    cfg: DemoConfig,
    sessions: RefCell<HashMap<String, DemoSession>>,
    /// Numbers the progress streams (their event ids are `p<tag>-<i>`).
    next_tag: std::cell::Cell<u64>,
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
        next_tag: std::cell::Cell::new(0),
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
    let sid = head
        .headers
        .get_str("mcp-session-id")
        .filter(|_| !stateless);
    call(demo, s, method, &msg, &id, sid, stateless).await
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
    demo.sessions.borrow_mut().insert(
        sid.clone(),
        DemoSession {
            version,
            drops: 0,
            broken: Vec::new(),
        },
    );
    let result = json!({
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": false}, "logging": {}},
        "serverInfo": {"name": "shardcat-demo", "version": env!("CARGO_PKG_VERSION")},
        "instructions": "Demo server built into shardcat: tools echo, add, sleep, progress."
    });
    let headers = format!("mcp-session-id: {sid}\r\ncontent-type: application/json\r\n");
    reply(s, 200, headers.as_bytes(), &rpc_result(id, result), true).await
}

async fn call(
    demo: &Rc<Demo>,
    s: &mut TcpStream,
    method: &str,
    msg: &Value,
    id: &Value,
    sid: Option<&str>,
    stateless: bool,
) -> bool {
    let result = match method {
        // 2026-07-28 removed ping; its clients never send it.
        "ping" if !stateless => json!({}),
        "server/discover" if stateless => json!({
            "supportedVersions": [mcp::STATELESS_VERSION],
            "capabilities": {"tools": {}},
            "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "shardcat-demo", "version": env!("CARGO_PKG_VERSION")}}
        }),
        "tools/list" => json!({"tools": tool_list()}),
        "tools/call" => return tool_call(demo, s, msg, id, sid, stateless).await,
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
    let result = shape(result, method, stateless);
    reply(
        s,
        200,
        b"content-type: application/json\r\n",
        &rpc_result(id, result),
        true,
    )
    .await
}

/// How long a 2026-07-28 client may cache the demo's lists and discover result: they never
/// change while it runs.
const CACHE_TTL_MS: u64 = 60_000;

/// Gives a result the 2026-07-28 shape (schema/2026-07-28/schema.ts): every result carries
/// `resultType`, and cacheable ones (discover and the lists) `ttlMs` and `cacheScope`. Results
/// of the session versions stay as their schemas have them.
fn shape(mut result: Value, method: &str, stateless: bool) -> Value {
    let Some(obj) = result.as_object_mut().filter(|_| stateless) else {
        return result;
    };
    obj.insert("resultType".into(), json!("complete"));
    if matches!(
        method,
        "server/discover"
            | "tools/list"
            | "resources/list"
            | "resources/templates/list"
            | "prompts/list"
    ) {
        obj.insert("ttlMs".into(), json!(CACHE_TTL_MS));
        // Nothing in the demo's answers depends on who asks.
        obj.insert("cacheScope".into(), json!("public"));
    }
    result
}

fn tool_list() -> Value {
    let obj = |props: Value, req: &[&str]| json!({"type": "object", "properties": props, "required": req});
    json!([
        {"name": "echo", "description": "Returns its text.", "inputSchema": obj(json!({"text": {"type": "string"}}), &["text"])},
        {"name": "add", "description": "Adds two numbers.", "inputSchema": obj(json!({"a": {"type": "number"}, "b": {"type": "number"}}), &["a", "b"])},
        {"name": "sleep", "description": "Waits ms milliseconds.", "inputSchema": obj(json!({"ms": {"type": "integer"}}), &["ms"])},
        {"name": "progress", "description": "Streams count progress notifications over SSE, then returns.",
         "inputSchema": obj(json!({"count": {"type": "integer"}, "interval_ms": {"type": "integer"}, "drop_after": {"type": "integer"}}), &["count"])},
        {"name": "drop_streams", "description": "Breaks off the session's GET streams (they resume with Last-Event-ID).",
         "inputSchema": obj(json!({}), &[])}
    ])
}

fn text_result(text: String) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": false})
}

async fn tool_call(
    demo: &Rc<Demo>,
    s: &mut TcpStream,
    msg: &Value,
    id: &Value,
    sid: Option<&str>,
    stateless: bool,
) -> bool {
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
        "progress" => return progress(demo, s, msg, id, &args, sid, stateless).await,
        "drop_streams" => {
            let mut sessions = demo.sessions.borrow_mut();
            match sid.and_then(|sid| sessions.get_mut(sid)) {
                Some(session) => {
                    session.drops += 1;
                    text_result("dropping the session's GET streams".into())
                }
                None => text_result("no session".into()),
            }
        }
        _ => {
            return reply_rpc_error(s, 200, Some(id), -32602, &format!("unknown tool: {name}"))
                .await
        }
    };
    let result = shape(result, "tools/call", stateless);
    reply(
        s,
        200,
        b"content-type: application/json\r\n",
        &rpc_result(id, result),
        true,
    )
    .await
}

/// Streams `count` progress notifications, then the result, as one SSE response. Events are
/// named `p<tag>-<i>`. With `drop_after: k` (sessions only), the connection is cut after the
/// k-th event, as a crashing proxy or network would; a GET with `Last-Event-ID` resumes it.
async fn progress(
    demo: &Rc<Demo>,
    s: &mut TcpStream,
    msg: &Value,
    id: &Value,
    args: &Value,
    sid: Option<&str>,
    stateless: bool,
) -> bool {
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
    let tag = demo.next_tag.get() + 1;
    demo.next_tag.set(tag);
    let stream = Broken {
        tag,
        token,
        id: id.clone(),
        count,
        interval,
        stateless,
    };
    let drop_after = args.get("drop_after").and_then(Value::as_u64);
    if let (Some(k), Some(sid)) = (drop_after, sid) {
        remember_broken(demo, sid, &stream);
        return send_progress(s, &stream, 1, Some(k)).await;
    }
    send_progress(s, &stream, 1, None).await
}

/// Keeps a stream the demo is about to break off, for a `Last-Event-ID` resume.
fn remember_broken(demo: &Demo, sid: &str, stream: &Broken) {
    let mut sessions = demo.sessions.borrow_mut();
    if let Some(session) = sessions.get_mut(sid) {
        if session.broken.len() >= MAX_BROKEN_STREAMS {
            session.broken.remove(0);
        }
        session.broken.push(stream.clone());
    }
}

/// Sends progress events `from..=count` and the result; with `cut_after`, cuts the connection
/// after that event instead (no last chunk).
async fn send_progress(s: &mut TcpStream, p: &Broken, from: u64, cut_after: Option<u64>) -> bool {
    let mut out = Vec::new();
    http::write_response_head(
        &mut out,
        200,
        b"content-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n",
        HeadBody::Chunked,
    );
    for i in from..=p.count {
        let note = json!({"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": p.token, "progress": i, "total": p.count, "message": format!("seq={i} ts_us={}", now_us())}});
        http::encode_chunk(
            &mut out,
            format!("id: p{}-{i}\nevent: message\ndata: {note}\n\n", p.tag).as_bytes(),
        );
        let (res, back) = s.write_all(out).await;
        if res.is_err() || cut_after == Some(i) {
            return false;
        }
        out = back;
        out.clear();
        if !p.interval.is_zero() {
            monoio::time::sleep(p.interval).await;
        }
    }
    let text = text_result(format!("sent {} progress notifications", p.count));
    let result = rpc_result(&p.id, shape(text, "tools/call", p.stateless));
    let mut event = format!("id: p{}-{}\nevent: message\ndata: ", p.tag, p.count + 1).into_bytes();
    event.extend_from_slice(&result);
    event.extend_from_slice(b"\n\n");
    http::encode_chunk(&mut out, &event);
    out.extend_from_slice(http::LAST_CHUNK);
    s.write_all(out).await.0.is_ok()
}

/// A broken-off progress stream named by `Last-Event-ID: p<tag>-<i>`, and the event after it.
fn broken_stream(demo: &Demo, sid: &str, last: &str) -> Option<(Broken, u64)> {
    let (tag, i) = last.strip_prefix('p')?.split_once('-')?;
    let (tag, i): (u64, u64) = (tag.parse().ok()?, i.parse().ok()?);
    let sessions = demo.sessions.borrow();
    let p = sessions
        .get(sid)?
        .broken
        .iter()
        .find(|b| b.tag == tag)?
        .clone();
    Some((p, i + 1))
}

/// The server-to-client stream of a session: numbered, timestamped log notifications. A
/// `Last-Event-ID` resumes the numbering after it (or a broken-off progress stream).
async fn get_stream(demo: &Rc<Demo>, s: &mut TcpStream, head: &RequestHead) -> bool {
    let sid = head
        .headers
        .get_str("mcp-session-id")
        .unwrap_or("")
        .to_string();
    if sid.is_empty() {
        return reply(s, 400, &[], b"missing Mcp-Session-Id", true).await;
    }
    let Some(drops) = demo.sessions.borrow().get(&sid).map(|d| d.drops) else {
        return reply(s, 404, &[], b"", true).await;
    };
    let last = head.headers.get_str("last-event-id");
    if let Some((p, from)) = last.and_then(|l| broken_stream(demo, &sid, l)) {
        return send_progress(s, &p, from, None).await;
    }
    let mut seq: u64 = last.and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut out = Vec::new();
    http::write_response_head(
        &mut out,
        200,
        b"content-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n",
        HeadBody::Chunked,
    );
    loop {
        let (res, back) = s.write_all(out).await;
        if res.is_err() {
            return false;
        }
        out = back;
        out.clear();
        monoio::time::sleep(demo.cfg.push_interval).await;
        let now = demo.sessions.borrow().get(&sid).map(|d| d.drops);
        match now {
            None => {
                out.extend_from_slice(http::LAST_CHUNK);
                let _ = s.write_all(out).await;
                return false;
            }
            // Broken off on purpose (`drop_streams`): no last chunk.
            Some(d) if d != drops => return false,
            Some(_) => {}
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
