//! Federation through the real gateway: several MCP servers behind one path, seen by the client
//! as one virtual server (`[[server]]`, `[[route]]`, `[federation]`).
//!
//! The servers are real processes: the official Python SDK server
//! (`tests/interop/py/peer_server.py --federation NAME [--page-size N]`, over Streamable HTTP)
//! and the rmcp fixture (`mcp-stdio-server`, started by the gateway over stdio). What each
//! offers is read from the server itself (directly, without the gateway), so the merged listing
//! is checked against the truth and not against a copy of it.
//!
//! Covered: merged and paginated lists (tools, prompts, resources, templates) with every name
//! once, overlapping names prefixed and unique ones bare, `exclude` filters; calls, prompts
//! and reads routed to the owning server with the prefix taken off; unknown and filtered names
//! refused with a JSON-RPC error; ping; DELETE ending every upstream session; the `always` and
//! `never` prefix modes; a sampling request from one server answered by the client; a
//! `tools/list_changed` from one server; a server killed mid-session (failure mode open and
//! closed); two routes with different servers; 20 concurrent sessions of the official Python
//! SDK client over 2 shards (modes legacy, auto and 2026-07-28) and of the official TypeScript
//! SDK client, with 20 more TypeScript sessions that end early; 2026-07-28 requests in raw
//! bytes (discover merged, routing by name with `Mcp-Name` rewritten, refusals, both failure
//! modes); and the conformance suite on a route of one server.
//!
//! Every test starts its own gateway and servers on port 0 (loopback only).

#[path = "support/interop.rs"]
mod peers;
#[path = "support/process.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use peers::{children_of, peers, run_client, Server};
use serde_json::{json, Value};
use support::*;

/// The protocol version of the raw sessions (the latest handshake-era one).
const VERSION: &str = "2025-11-25";
/// The gateway's default prefix separator (`[federation] separator`).
const SEP: &str = "__";
/// How long one raw exchange may take (a Python SDK server on a busy 2-core machine included).
const EXCHANGE: Duration = Duration::from_secs(20);
/// How long a state the test waits for (sessions gone, a notification) may take to show.
const SETTLE: Duration = Duration::from_secs(15);
/// A listing that pages on longer than this is a cursor loop.
const MAX_PAGES: usize = 200;
/// Names filtered out in most tests (`tools = { exclude = [...] }`).
const HIDE_SECRETS: &str = r#"tools = { include = ["*"], exclude = ["secret_*"] }"#;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The last `n` bytes of a log, for assertion messages.
fn tail(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

// ---------------------------------------------------------------------------------------------
// The servers.

/// A Python SDK server with the federation fixtures of `name`, over Streamable HTTP.
fn python(name: &str, page_size: Option<usize>) -> Server {
    let p = peers();
    let mut cmd = vec![p.python.display().to_string(), p.py("peer_server.py")];
    cmd.extend(s(&[
        "--transport",
        "http",
        "--port",
        "0",
        "--federation",
        name,
    ]));
    if let Some(n) = page_size {
        cmd.extend(s(&["--page-size", &n.to_string()]));
    }
    Server::start(&format!("fed-{name}-{}", unique()), &cmd)
}

/// The plain Python SDK server (no federation fixtures), as the interop tests run it.
fn python_plain() -> Server {
    let p = peers();
    let mut cmd = vec![p.python.display().to_string(), p.py("peer_server.py")];
    cmd.extend(s(&["--transport", "http", "--port", "0"]));
    Server::start(&format!("fed-plain-{}", unique()), &cmd)
}

/// The rmcp fixture over Streamable HTTP: only to read what it offers, without the gateway.
fn rmcp_http() -> Server {
    let cmd = vec![
        fixture_bin("mcp-stdio-server").display().to_string(),
        "--http".into(),
        "127.0.0.1:0".into(),
    ];
    Server::start(&format!("fed-rmcp-{}", unique()), &cmd)
}

/// Python SDK servers `alpha` and `beta` (paged by `page_size`) and the config naming them
/// (`extra`: each one's further `[[server]]` lines), then `more` (servers, routes,
/// `[federation]`). The servers live as long as the handles.
fn alpha_and_beta(
    page_size: Option<usize>,
    extra: [&str; 2],
    more: &[String],
) -> (Server, Server, String) {
    let (alpha, beta) = (python("alpha", page_size), python("beta", page_size));
    let mut toml = http_server("alpha", &alpha, extra[0]) + &http_server("beta", &beta, extra[1]);
    toml.extend(more.iter().map(String::as_str));
    (alpha, beta, toml)
}

/// What a client must see listed on the route of alpha, beta (both with `HIDE_SECRETS`) and
/// gamma: the shared names prefixed, the unique ones bare (`--require`), and never a shared
/// name bare or a filtered one (`--forbid`).
const REQUIRE_ON_THREE: &str = "alpha__whoami,beta__whoami,alpha__echo,beta__echo,gamma__echo,\
alpha__sample,gamma__sample,only_alpha,only_beta,pid,add";
const FORBID_ON_THREE: &str = "whoami,echo,sample,secret_alpha,secret_beta";

fn addr_of(server: &Server) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], server.port))
}

/// A Python server's Streamable HTTP sessions: (open now, opened since start).
fn sessions_of(server: &Server) -> (u64, u64) {
    let r = get(addr_of(server), "/sessions");
    assert_eq!(
        r.status,
        200,
        "{}: GET /sessions: {}",
        server.label,
        r.text()
    );
    let v = r.json();
    (
        v["open"].as_u64().expect("open"),
        v["opened"].as_u64().expect("opened"),
    )
}

// ---------------------------------------------------------------------------------------------
// The configuration.

fn http_server(name: &str, server: &Server, extra: &str) -> String {
    format!(
        "[[server]]\nname = \"{name}\"\nurl = \"{}\"\n{extra}\n",
        server.url()
    )
}

/// The rmcp fixture as a stdio server the gateway starts.
fn stdio_server(name: &str, extra: &str) -> String {
    format!(
        "[[server]]\nname = \"{name}\"\nkind = \"stdio\"\ncommand = \"{}\"\n{extra}\n",
        fixture_bin("mcp-stdio-server").display()
    )
}

fn route(path: &str, servers: &[&str]) -> String {
    let list: Vec<String> = servers.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "[[route]]\npath = \"{path}\"\nservers = [{}]\n",
        list.join(", ")
    )
}

fn federation(failure_mode: &str) -> String {
    format!("[federation]\nseparator = \"{SEP}\"\nfailure_mode = \"{failure_mode}\"\n")
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP: one request per connection, responses read incrementally (JSON or SSE).

enum Framing {
    Chunked,
    Length(usize),
    Close,
}

enum Next {
    Message(Value),
    /// Nothing more within the time given; the stream is still open.
    Timeout,
    /// The body ended (or the connection closed).
    End,
}

/// One HTTP response, read as it arrives: a JSON body is one message, an SSE body one message
/// per event with data (priming events and comments are skipped).
struct Stream {
    socket: TcpStream,
    status: u16,
    headers: Vec<(String, String)>,
    raw: Vec<u8>,
    body: Vec<u8>,
    framing: Framing,
    sse: bool,
    /// The whole body has been read.
    complete: bool,
    /// What the caller never took, for assertion messages.
    seen: Vec<String>,
}

impl Stream {
    fn open(addr: SocketAddr, request: &str) -> Stream {
        let socket = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        socket.set_nodelay(true).expect("nodelay");
        (&socket)
            .write_all(request.as_bytes())
            .unwrap_or_else(|e| panic!("send to {addr}: {e}"));
        let mut st = Stream {
            socket,
            status: 0,
            headers: Vec::new(),
            raw: Vec::new(),
            body: Vec::new(),
            framing: Framing::Close,
            sse: false,
            complete: false,
            seen: Vec::new(),
        };
        st.read_head(addr, request);
        st
    }

    fn read_head(&mut self, addr: SocketAddr, request: &str) {
        let deadline = Instant::now() + EXCHANGE;
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut hs);
            if let Ok(httparse::Status::Complete(n)) = resp.parse(&self.raw) {
                self.status = resp.code.unwrap_or(0);
                self.headers = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                self.raw.drain(..n);
                break;
            }
            let line = request.lines().next().unwrap_or("");
            assert!(
                Instant::now() < deadline,
                "{addr}: no response head within {EXCHANGE:?} to {line}"
            );
            assert!(
                self.read_some(deadline - Instant::now()),
                "{addr}: closed before the response head to {line}"
            );
        }
        self.sse = self
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream"));
        self.framing = if self
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            Framing::Chunked
        } else if let Some(n) = self.header("content-length") {
            Framing::Length(n.trim().parse().expect("content-length"))
        } else if self.status == 204 || self.status == 304 || self.status < 200 {
            Framing::Length(0)
        } else {
            Framing::Close
        };
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// One read of at most `within`; false on EOF or error (not on a timeout).
    fn read_some(&mut self, within: Duration) -> bool {
        let _ = self
            .socket
            .set_read_timeout(Some(within.max(Duration::from_millis(1))));
        let mut tmp = [0u8; 16384];
        match self.socket.read(&mut tmp) {
            Ok(0) => false,
            Ok(n) => {
                self.raw.extend_from_slice(&tmp[..n]);
                true
            }
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }

    /// Moves what `raw` holds of the body into `body`.
    fn decode(&mut self) {
        match self.framing {
            Framing::Length(n) => {
                let take = (n - self.body.len()).min(self.raw.len());
                self.body.extend(self.raw.drain(..take));
                self.complete = self.body.len() == n;
            }
            Framing::Close => self.body.append(&mut self.raw),
            Framing::Chunked => loop {
                let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                    return;
                };
                let line = String::from_utf8_lossy(&self.raw[..eol]).into_owned();
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
                if self.raw.len() < eol + 2 + size + 2 {
                    return;
                }
                self.body
                    .extend_from_slice(&self.raw[eol + 2..eol + 2 + size]);
                self.raw.drain(..eol + 2 + size + 2);
                if size == 0 {
                    self.complete = true;
                    return;
                }
            },
        }
    }

    /// The next SSE event's data, if `body` holds a whole event with data.
    fn take_event(&mut self) -> Option<String> {
        loop {
            let (end, sep) = event_end(&self.body)?;
            let raw: Vec<u8> = self.body.drain(..end + sep).collect();
            let event = String::from_utf8_lossy(&raw[..end]).into_owned();
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() && !data.iter().all(|d| d.is_empty()) {
                return Some(data.join("\n"));
            }
        }
    }

    /// The next message within `within`.
    fn next(&mut self, within: Duration) -> Next {
        let deadline = Instant::now() + within;
        loop {
            self.decode();
            if self.sse {
                if let Some(data) = self.take_event() {
                    let v: Value = serde_json::from_str(&data)
                        .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {data}"));
                    return Next::Message(v);
                }
            } else if self.complete {
                if self.body.is_empty() {
                    return Next::End;
                }
                let body = std::mem::take(&mut self.body);
                let v: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
                    panic!(
                        "HTTP {} body is not JSON ({e}): {}",
                        self.status,
                        String::from_utf8_lossy(&body)
                    )
                });
                return Next::Message(v);
            }
            if self.complete {
                return Next::End;
            }
            let now = Instant::now();
            if now >= deadline {
                return Next::Timeout;
            }
            if !self.read_some(deadline - now) {
                // EOF: a close-delimited body is whole; any other is cut (what it holds stands).
                self.decode();
                self.complete = true;
            }
        }
    }

    /// Messages until the response with `id` (that response last); panics after `within`.
    fn until_response(&mut self, id: &Value, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        loop {
            match self.next(deadline.saturating_duration_since(Instant::now())) {
                Next::Message(m) => {
                    let is_response = m.get("method").is_none() && m.get("id") == Some(id);
                    self.seen.push(m.to_string());
                    out.push(m);
                    if is_response {
                        return out;
                    }
                }
                Next::Timeout => panic!(
                    "no response {id} within {within:?} (HTTP {}); saw {:?}",
                    self.status, self.seen
                ),
                Next::End => panic!(
                    "the response ended without message {id} (HTTP {}); saw {:?}",
                    self.status, self.seen
                ),
            }
        }
    }

    /// Panics unless the status is `want`, with the body in the message.
    fn expect_status(&mut self, want: u16, what: &str) {
        if self.status != want {
            let status = self.status;
            panic!("{what}: HTTP {status}, not {want}: {}", self.rest_text());
        }
    }

    /// The rest of the body as text (for error responses).
    fn rest_text(&mut self) -> String {
        let deadline = Instant::now() + EXCHANGE;
        while !self.complete && Instant::now() < deadline {
            self.decode();
            if !self.complete && !self.read_some(deadline - Instant::now()) {
                self.decode();
                break;
            }
        }
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Where the first SSE event in `buf` ends: (its length, the blank line's length). Lines end
/// with LF or CRLF (sse-starlette writes CRLF).
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// A raw MCP client session on one path.
struct Mcp {
    addr: SocketAddr,
    path: String,
    sid: Option<String>,
    version: String,
    next_id: u64,
}

impl Mcp {
    fn new(addr: SocketAddr, path: &str) -> Mcp {
        Mcp {
            addr,
            path: path.to_string(),
            sid: None,
            version: VERSION.to_string(),
            next_id: 1,
        }
    }

    fn on(gw: &Proc, path: &str) -> Mcp {
        Mcp::new(gw.addr("listen"), path)
    }

    /// A session straight to a server (no gateway).
    fn direct(server: &Server) -> Mcp {
        Mcp::new(addr_of(server), "/mcp")
    }

    fn request(&self, method: &str, accept: &str, body: &str) -> String {
        let mut head = format!(
            "{method} {} HTTP/1.1\r\nhost: {}\r\naccept: {accept}\r\nconnection: close\r\n",
            self.path, self.addr
        );
        if let Some(sid) = &self.sid {
            head.push_str(&format!(
                "mcp-session-id: {sid}\r\nmcp-protocol-version: {}\r\n",
                self.version
            ));
        }
        if method == "POST" {
            head.push_str("content-type: application/json\r\n");
        }
        if method != "GET" {
            head.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        head.push_str(body);
        head
    }

    /// POSTs one JSON-RPC message; the response, unread.
    fn post(&self, body: &str) -> Stream {
        let req = self.request("POST", "application/json, text/event-stream", body);
        Stream::open(self.addr, &req)
    }

    /// Opens the session's GET stream.
    fn get_stream(&self) -> Stream {
        Stream::open(self.addr, &self.request("GET", "text/event-stream", ""))
    }

    fn delete(&self) -> u16 {
        let mut st = Stream::open(self.addr, &self.request("DELETE", "*/*", ""));
        let _ = st.rest_text();
        st.status
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// initialize (declaring sampling and elicitation) and notifications/initialized. `Err`:
    /// the HTTP status and body (or JSON-RPC error) of a refused initialize.
    fn try_initialize(&mut self) -> Result<Value, String> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": VERSION,
            "capabilities": {"sampling": {}, "elicitation": {}},
            "clientInfo": {"name": "federation-test", "version": "1"}}});
        let mut st = self.post(&body.to_string());
        if st.status != 200 {
            let status = st.status;
            return Err(format!("HTTP {status}: {}", st.rest_text()));
        }
        let sid = st.header("mcp-session-id").map(String::from);
        let msgs = st.until_response(&json!(1), EXCHANGE);
        let answer = msgs.last().expect("a response").clone();
        if answer.get("error").is_some() {
            return Err(format!("JSON-RPC error: {answer}"));
        }
        self.sid = Some(sid.ok_or_else(|| format!("no Mcp-Session-Id on {answer}"))?);
        if let Some(v) = answer["result"]["protocolVersion"].as_str() {
            self.version = v.to_string();
        }
        let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        let status = self.post(note).status;
        if status != 202 {
            return Err(format!("notifications/initialized answered HTTP {status}"));
        }
        Ok(answer["result"].clone())
    }

    fn initialize(&mut self) -> Value {
        let path = self.path.clone();
        self.try_initialize()
            .unwrap_or_else(|e| panic!("initialize on {}{path}: {e}", self.addr))
    }

    /// One request; its response message (result or error) and what came before it.
    fn exchange(&mut self, method: &str, params: Value) -> (Vec<Value>, Value) {
        let id = self.id();
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let mut st = self.post(&body.to_string());
        let what = format!("{method} {params} on {}{}", self.addr, self.path);
        st.expect_status(200, &what);
        let mut msgs = st.until_response(&json!(id), EXCHANGE);
        let answer = msgs.pop().expect("the response");
        (msgs, answer)
    }

    /// The response message of one request.
    fn rpc(&mut self, method: &str, params: Value) -> Value {
        self.exchange(method, params).1
    }

    /// The result of one request; panics on a JSON-RPC error.
    fn result(&mut self, method: &str, params: Value) -> Value {
        let m = self.rpc(method, params.clone());
        assert!(
            m.get("error").is_none() && m.get("result").is_some(),
            "{method} {params} on {}: {m}",
            self.path
        );
        m["result"].clone()
    }

    /// Every item of a paginated list, following nextCursor to the end.
    fn list_all(&mut self, method: &str, key: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursors = BTreeSet::new();
        let mut params = json!({});
        for _ in 0..MAX_PAGES {
            let page = self.result(method, params);
            let got = page[key]
                .as_array()
                .unwrap_or_else(|| panic!("{method}: no {key} array in {page}"));
            items.extend(got.iter().cloned());
            match page.get("nextCursor").and_then(Value::as_str) {
                None => return items,
                Some(c) => {
                    assert!(
                        cursors.insert(c.to_string()),
                        "{method}: cursor {c:?} came twice (a loop)"
                    );
                    params = json!({ "cursor": c });
                }
            }
        }
        panic!("{method}: still a nextCursor after {MAX_PAGES} pages");
    }

    /// The names of every tool (or prompt) listed, in order.
    fn names(&mut self, method: &str, key: &str) -> Vec<String> {
        self.list_all(method, key)
            .iter()
            .map(|t| t["name"].as_str().expect("name").to_string())
            .collect()
    }

    fn tools(&mut self) -> Vec<String> {
        self.names("tools/list", "tools")
    }

    fn call(&mut self, name: &str, args: Value) -> Value {
        self.rpc("tools/call", json!({"name": name, "arguments": args}))
    }

    /// The text of a successful tool call.
    fn call_text(&mut self, name: &str, args: Value) -> String {
        let m = self.call(name, args);
        let r = &m["result"];
        assert!(
            m.get("error").is_none() && r["isError"] != json!(true),
            "tools/call {name} on {}: {m}",
            self.path
        );
        content_text(&r["content"])
    }
}

fn content_text(content: &Value) -> String {
    content
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["text"].as_str())
        .collect()
}

/// A call the gateway must refuse itself: a JSON-RPC error, not a tool result.
fn assert_refused(m: &Value, what: &str) {
    assert!(
        m.get("result").is_none() && m["error"]["code"].is_i64(),
        "{what}: expected a JSON-RPC error from the gateway, got {m}"
    );
}

fn dups(names: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    names
        .iter()
        .filter(|n| !seen.insert(n.as_str()))
        .cloned()
        .collect()
}

/// What a route of `offers` (server name, the names it offers once filtered) must list with the
/// conditional prefix: a name offered by two servers or more as `<server>__<name>`, any
/// other bare.
fn merged(offers: &[(&str, Vec<String>)]) -> BTreeSet<String> {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, names) in offers {
        for n in names {
            *count.entry(n.as_str()).or_default() += 1;
        }
    }
    let mut out = BTreeSet::new();
    for (server, names) in offers {
        for n in names {
            if count[n.as_str()] > 1 {
                out.insert(format!("{server}{SEP}{n}"));
            } else {
                out.insert(n.clone());
            }
        }
    }
    out
}

/// What a server offers, read directly from it.
fn tools_of(server: &Server) -> Vec<String> {
    let mut m = Mcp::direct(server);
    m.initialize();
    let names = m.tools();
    assert_eq!(m.delete(), 200, "{}: DELETE", server.label);
    names
}

fn rmcp_tools() -> Vec<String> {
    let rmcp = rmcp_http();
    let mut m = Mcp::direct(&rmcp);
    m.initialize();
    m.tools()
}

fn without_secrets(names: Vec<String>) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| !n.starts_with("secret_"))
        .collect()
}

fn sessions_gauge(gw: &Proc) -> f64 {
    metric(gw.addr("admin"), "shardcat_sessions")
}

/// Waits until the gateway and every Python server in `servers` hold no session.
fn assert_no_sessions_left(gw: &Proc, servers: &[&Server], what: &str) {
    let mut last = String::new();
    let ok = eventually(SETTLE, || {
        let gauge = sessions_gauge(gw);
        let open: Vec<(String, u64)> = servers
            .iter()
            .map(|s| (s.label.clone(), sessions_of(s).0))
            .collect();
        last = format!("gateway sessions {gauge}, upstream open {open:?}");
        gauge == 0.0 && open.iter().all(|(_, n)| *n == 0)
    });
    assert!(
        ok,
        "{what}: sessions left after {SETTLE:?}: {last}\n{}",
        tail(&gw.stderr(), 4000)
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Three servers on one route.

#[test]
fn three_servers_on_one_route_are_one_server() {
    let (alpha, beta) = (python("alpha", Some(2)), python("beta", Some(2)));
    // The truth, read from each server directly (alpha and beta page by 2: the raw client's
    // cursor handling is checked against the SDK here too).
    let alpha_tools = tools_of(&alpha);
    let beta_tools = tools_of(&beta);
    let gamma_tools = rmcp_tools();
    for (who, names) in [("alpha", &alpha_tools), ("beta", &beta_tools)] {
        for want in ["whoami", "echo", "sample", "change_tools"] {
            assert!(names.contains(&want.to_string()), "{who} lacks {want}");
        }
        assert!(names.contains(&format!("secret_{who}")), "{who}: {names:?}");
    }
    let toml = [
        http_server("alpha", &alpha, HIDE_SECRETS),
        http_server("beta", &beta, HIDE_SECRETS),
        stdio_server("gamma", ""),
        route("/mcp", &["alpha", "beta", "gamma"]),
    ]
    .concat();
    let gw = gateway_config(2, &toml);
    let mut c = Mcp::on(&gw, "/mcp");
    c.initialize();

    // tools/list: every tool of every server exactly once.
    let listed = c.tools();
    assert!(
        dups(&listed).is_empty(),
        "listed twice: {:?}",
        dups(&listed)
    );
    let want = merged(&[
        ("alpha", without_secrets(alpha_tools)),
        ("beta", without_secrets(beta_tools)),
        ("gamma", gamma_tools),
    ]);
    let got: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(
        got,
        want,
        "merged tools/list: missing {:?}, extra {:?}",
        want.difference(&got).collect::<Vec<_>>(),
        got.difference(&want).collect::<Vec<_>>()
    );
    for name in [
        "alpha__whoami",
        "beta__whoami",
        "alpha__echo",
        "beta__echo",
        "gamma__echo",
        "only_alpha",
        "only_beta",
        "pid",
        "add",
    ] {
        assert!(got.contains(name), "{name} not listed: {listed:?}");
    }
    for name in ["whoami", "echo", "secret_alpha", "secret_beta"] {
        assert!(!got.contains(name), "{name} listed: {listed:?}");
    }

    // Calls go to the owner, the prefix taken off.
    assert_eq!(c.call_text("alpha__whoami", json!({})), "alpha");
    assert_eq!(c.call_text("beta__whoami", json!({})), "beta");
    assert_eq!(c.call_text("only_beta", json!({})), "beta");
    assert_eq!(c.call_text("only_alpha", json!({})), "alpha");
    assert_eq!(c.call_text("gamma__echo", json!({"text": "g"})), "g");
    assert_eq!(c.call_text("beta__echo", json!({"text": "b"})), "b");
    assert_eq!(c.call_text("add", json!({"a": 2, "b": 3})), "5");
    let pid = c.call_text("pid", json!({}));
    assert!(pid.parse::<u32>().is_ok(), "gamma's pid: {pid:?}");
    // Refused by the gateway: a filtered tool (bare or prefixed), an unknown one, and an
    // overlapping name without its prefix. Had any reached alpha, it would have answered.
    for name in [
        "secret_alpha",
        "alpha__secret_alpha",
        "no_such_tool",
        "whoami",
    ] {
        assert_refused(&c.call(name, json!({})), &format!("tools/call {name}"));
    }

    // Prompts.
    let prompts = c.names("prompts/list", "prompts");
    assert!(dups(&prompts).is_empty(), "{prompts:?}");
    for name in ["alpha__greet", "beta__greet", "alpha_prompt", "beta_prompt"] {
        assert!(prompts.contains(&name.to_string()), "{name}: {prompts:?}");
    }
    assert!(!prompts.contains(&"greet".to_string()), "{prompts:?}");
    let got = c.result(
        "prompts/get",
        json!({"name": "beta__greet", "arguments": {"who": "x"}}),
    );
    assert_eq!(
        got["messages"][0]["content"]["text"], "beta greets x",
        "{got}"
    );
    let got = c.result("prompts/get", json!({"name": "alpha_prompt"}));
    assert_eq!(
        got["messages"][0]["content"]["text"], "prompt of alpha",
        "{got}"
    );

    // Resources: per-server URIs bare; the shared URI twice, each form marked and read from
    // its own server.
    let resources = c.list_all("resources/list", "resources");
    let uris: Vec<String> = resources
        .iter()
        .map(|r| r["uri"].as_str().expect("uri").to_string())
        .collect();
    assert!(dups(&uris).is_empty(), "{uris:?}");
    for uri in ["fed://alpha/readme", "fed://beta/readme"] {
        assert!(uris.contains(&uri.to_string()), "{uri}: {uris:?}");
    }
    let read = |c: &mut Mcp, uri: &str| -> String {
        let r = c.result("resources/read", json!({ "uri": uri }));
        r["contents"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("resources/read {uri}: {r}"))
            .to_string()
    };
    assert_eq!(read(&mut c, "fed://beta/readme"), "readme of beta");
    let mut shared = Vec::new();
    for who in ["alpha", "beta"] {
        let desc = format!("shared readme served by {who}");
        let uri = resources
            .iter()
            .find(|r| r["description"] == desc.as_str())
            .and_then(|r| r["uri"].as_str())
            .unwrap_or_else(|| panic!("no resource described {desc:?}: {resources:?}"))
            .to_string();
        assert_eq!(
            read(&mut c, &uri),
            format!("shared readme of {who}"),
            "{uri}"
        );
        // The contents name the resource as the client knows it (marked where it is marked),
        // so a client that reads `contents[].uri` again reaches the same server.
        let r = c.result("resources/read", json!({ "uri": uri }));
        assert_eq!(r["contents"][0]["uri"], uri.as_str(), "{r}");
        shared.push(uri);
    }
    assert_ne!(shared[0], shared[1], "the shared URI must be told apart");
    let templates = c.list_all("resources/templates/list", "resourceTemplates");
    let forms: Vec<&str> = templates
        .iter()
        .filter_map(|t| t["uriTemplate"].as_str())
        .collect();
    for t in ["fed://alpha/items/{id}", "fed://beta/items/{id}"] {
        assert!(forms.contains(&t), "{t}: {forms:?}");
    }
    assert_eq!(read(&mut c, "fed://beta/items/9"), "item 9 of beta");

    // ping: the gateway answers.
    assert_eq!(c.result("ping", json!({})), json!({}));

    // One session on each Python server, then none after DELETE.
    for server in [&alpha, &beta] {
        let (open, _) = sessions_of(server);
        assert!(
            open >= 1,
            "{}: no session opened for the client's",
            server.label
        );
    }
    assert_eq!(sessions_gauge(&gw), 1.0);
    assert_eq!(c.delete(), 200, "DELETE");
    assert_no_sessions_left(&gw, &[&alpha, &beta], "after DELETE");
    let ok = eventually(SETTLE, || children_of(gw.pid()).len() <= 2);
    assert!(
        ok,
        "gamma's stdio children left: {:?}",
        children_of(gw.pid())
    );
    let st = c.post(&json!({"jsonrpc": "2.0", "id": 99, "method": "ping"}).to_string());
    assert_eq!(st.status, 404, "the ended session must be unknown");
}

// ---------------------------------------------------------------------------------------------
// 2. The prefix modes.

#[test]
fn prefix_always_prefixes_every_name_of_its_server() {
    let (_alpha, _beta, toml) = alpha_and_beta(
        None,
        ["prefix = \"always\"", ""],
        &[route("/mcp", &["alpha", "beta"])],
    );
    let gw = gateway_config(1, &toml);
    let mut c = Mcp::on(&gw, "/mcp");
    c.initialize();
    let listed = c.tools();
    for name in [
        "alpha__only_alpha",
        "alpha__whoami",
        "beta__whoami",
        "only_beta",
    ] {
        assert!(listed.contains(&name.to_string()), "{name}: {listed:?}");
    }
    let bare_alpha: Vec<&String> = listed
        .iter()
        .filter(|n| n.as_str() == "only_alpha" || n.as_str() == "secret_alpha")
        .collect();
    assert!(bare_alpha.is_empty(), "alpha's names bare: {bare_alpha:?}");
    assert_eq!(c.call_text("alpha__only_alpha", json!({})), "alpha");
    assert_refused(
        &c.call("only_alpha", json!({})),
        "bare name of an always-prefixed server",
    );
}

#[test]
fn prefix_never_keeps_its_names_bare_and_the_other_server_yields() {
    let (_alpha, _beta, toml) = alpha_and_beta(
        None,
        ["prefix = \"never\"", ""],
        &[route("/mcp", &["alpha", "beta"])],
    );
    let gw = gateway_config(1, &toml);
    let mut c = Mcp::on(&gw, "/mcp");
    c.initialize();
    let listed = c.tools();
    assert!(dups(&listed).is_empty(), "{:?}", dups(&listed));
    for name in ["whoami", "beta__whoami", "only_alpha", "only_beta"] {
        assert!(listed.contains(&name.to_string()), "{name}: {listed:?}");
    }
    assert!(
        !listed.iter().any(|n| n.starts_with("alpha__")),
        "alpha is never prefixed: {listed:?}"
    );
    assert_eq!(c.call_text("whoami", json!({})), "alpha");
    assert_eq!(c.call_text("beta__whoami", json!({})), "beta");
}

// ---------------------------------------------------------------------------------------------
// 3. Sampling: a server-to-client request from one server, answered by the client.

/// Calls `tool` (a `sample` tool) with a prompt and answers its sampling/createMessage as the
/// client, by raw HTTP: the request must come on the call's SSE stream, the answer (POSTed
/// with the id as received) must get 202, and the call's result must carry the answer.
fn sample_through(c: &mut Mcp, tool: &str, gw: &Proc) {
    let prompt = format!("hello-{}", unique());
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": tool, "arguments": {"prompt": prompt}}});
    let mut st = c.post(&call.to_string());
    st.expect_status(200, &format!("tools/call {tool}"));
    assert!(
        st.sse,
        "a call with a server request in it must be an SSE stream"
    );
    // The sampling request, before the result.
    let deadline = Instant::now() + EXCHANGE;
    let request = loop {
        match st.next(deadline.saturating_duration_since(Instant::now())) {
            Next::Message(m) if m["method"] == "sampling/createMessage" => break m,
            Next::Message(m) => {
                assert!(
                    m.get("id") != Some(&json!(7)),
                    "result before sampling: {m}"
                );
                st.seen.push(m.to_string());
            }
            Next::Timeout | Next::End => panic!(
                "no sampling/createMessage on the {tool} call's stream; saw {:?}\n{}",
                st.seen,
                tail(&gw.stderr(), 3000)
            ),
        }
    };
    let text = &request["params"]["messages"][0]["content"]["text"];
    assert_eq!(text, prompt.as_str(), "{request}");
    let id = request.get("id").cloned().expect("the server request's id");
    let sampled = format!("sampled:{prompt}");
    let answer = json!({"jsonrpc": "2.0", "id": id, "result": {
        "role": "assistant", "content": {"type": "text", "text": sampled},
        "model": "test-model", "stopReason": "endTurn"}});
    let mut posted = c.post(&answer.to_string());
    posted.expect_status(202, "the client's answer");
    let msgs = st.until_response(&json!(7), EXCHANGE);
    let result = msgs.last().expect("result");
    assert!(
        content_text(&result["result"]["content"]).contains(&sampled),
        "{tool}: the result must carry the client's answer: {result}"
    );
}

#[test]
fn a_sampling_request_from_one_server_is_answered_by_the_client() {
    let (_alpha, _beta, toml) = alpha_and_beta(
        None,
        ["", ""],
        &[
            stdio_server("gamma", ""),
            route("/mcp", &["alpha", "beta", "gamma"]),
        ],
    );
    let gw = gateway_config(2, &toml);
    let mut c = Mcp::on(&gw, "/mcp");
    c.initialize();
    sample_through(&mut c, "beta__sample", &gw);
    // The rmcp server asks the same way, over stdio.
    sample_through(&mut c, "gamma__sample", &gw);
    // The session goes on: alpha is reachable.
    assert_eq!(c.call_text("alpha__whoami", json!({})), "alpha");
    assert_eq!(c.delete(), 200);
}

// ---------------------------------------------------------------------------------------------
// 4. tools/list_changed from one server.

/// Whether `m` is a tools/list_changed notification.
fn list_changed(m: &Value) -> bool {
    m["method"] == "notifications/tools/list_changed"
}

/// Opens the session's GET stream and calls `tool` (a `change_tools`) until a
/// notifications/tools/list_changed arrives on the call's stream or the GET stream.
fn await_list_changed(c: &mut Mcp, tool: &str, gw: &Proc) {
    let mut get = c.get_stream();
    get.expect_status(200, "GET stream");
    // The SDK sends the notification on its standalone stream, and drops it while the
    // gateway's GET on it is not up yet: change_tools sends it again on every call.
    let mut seen = Vec::new();
    for _ in 0..10 {
        let (before, answer) = c.exchange("tools/call", json!({ "name": tool }));
        assert!(answer.get("result").is_some(), "{tool}: {answer}");
        seen.extend(before.iter().map(Value::to_string));
        if before.iter().any(list_changed) {
            return;
        }
        let until = Instant::now() + Duration::from_millis(700);
        loop {
            match get.next(until.saturating_duration_since(Instant::now())) {
                Next::Message(m) if list_changed(&m) => return,
                Next::Message(m) => seen.push(m.to_string()),
                Next::Timeout => break,
                Next::End => panic!("the GET stream ended; saw {seen:?}"),
            }
        }
    }
    panic!(
        "no notifications/tools/list_changed after 10 {tool} calls; saw {seen:?}\n{}",
        tail(&gw.stderr(), 3000)
    );
}

#[test]
fn a_tools_list_changed_from_one_server_reaches_the_client() {
    let (_alpha, _beta, toml) =
        alpha_and_beta(Some(3), ["", ""], &[route("/mcp", &["alpha", "beta"])]);
    let gw = gateway_config(2, &toml);
    let mut c = Mcp::on(&gw, "/mcp");
    c.initialize();
    assert!(!c.tools().contains(&"added_beta".to_string()));
    await_list_changed(&mut c, "beta__change_tools", &gw);
    // The notification made the route learn the lists again: the new name resolves before
    // the client lists anew (a shard that had learnt the lists would otherwise refuse it).
    assert_eq!(c.call_text("added_beta", json!({})), "beta");
    let listed = c.tools();
    assert!(
        listed.contains(&"added_beta".to_string()),
        "the new tool is not listed: {listed:?}"
    );
    assert!(!listed.contains(&"added_alpha".to_string()), "{listed:?}");
    assert_eq!(c.call_text("added_beta", json!({})), "beta");
    assert_eq!(c.delete(), 200);
}

// ---------------------------------------------------------------------------------------------
// 5. A server killed mid-session.

#[test]
fn failure_mode_open_leaves_a_dead_server_out() {
    let (_alpha, beta, toml) = alpha_and_beta(
        None,
        [HIDE_SECRETS, HIDE_SECRETS],
        &[route("/mcp", &["alpha", "beta"]), federation("open")],
    );
    let gw = gateway_config(1, &toml);
    let mut first = Mcp::on(&gw, "/mcp");
    first.initialize();
    assert!(first.tools().contains(&"beta__whoami".to_string()));
    drop(beta); // killed (SIGKILL) and reaped
    let mut second = Mcp::on(&gw, "/mcp");
    let init = second.try_initialize();
    assert!(
        init.is_ok(),
        "failure_mode open: initialize must succeed without beta: {init:?}\n{}",
        tail(&gw.stderr(), 3000)
    );
    let listed = second.tools();
    let from_beta: Vec<&String> = listed
        .iter()
        .filter(|n| n.starts_with("beta__") || n.ends_with("_beta"))
        .collect();
    assert!(
        from_beta.is_empty(),
        "beta's tools still listed: {from_beta:?}"
    );
    assert!(listed.contains(&"only_alpha".to_string()), "{listed:?}");
    let whoami = ["whoami", "alpha__whoami"]
        .into_iter()
        .find(|n| listed.contains(&n.to_string()))
        .unwrap_or_else(|| panic!("alpha's whoami not listed: {listed:?}"));
    assert_eq!(second.call_text(whoami, json!({})), "alpha");
    // The session opened before the failure still reaches alpha.
    assert_eq!(first.call_text("only_alpha", json!({})), "alpha");
    // The dead server's failed initialize is counted against it, and only against it.
    let admin = gw.addr("admin");
    let failed = |s: &str| {
        metric(
            admin,
            &format!("shardcat_server_errors_total{{server=\"{s}\"}}"),
        )
    };
    assert!(failed("beta") >= 1.0, "beta's failures");
    assert_eq!(failed("alpha"), 0.0, "alpha's failures");
}

#[test]
fn failure_mode_closed_fails_initialize_naming_the_dead_server() {
    let (_alpha, beta, toml) = alpha_and_beta(
        None,
        ["", ""],
        &[route("/mcp", &["alpha", "beta"]), federation("closed")],
    );
    let gw = gateway_config(1, &toml);
    let mut first = Mcp::on(&gw, "/mcp");
    first.initialize();
    drop(beta);
    let mut second = Mcp::on(&gw, "/mcp");
    match second.try_initialize() {
        Ok(result) => panic!("failure_mode closed: initialize succeeded without beta: {result}"),
        Err(why) => assert!(
            why.contains("beta"),
            "the refusal must name beta: {why}\n{}",
            tail(&gw.stderr(), 3000)
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Two routes.

#[test]
fn two_routes_offer_only_their_own_servers() {
    let (alpha, _beta, toml) = alpha_and_beta(
        None,
        ["", ""],
        &[
            route("/mcp", &["alpha", "beta"]),
            route("/mcp/dev", &["alpha"]),
        ],
    );
    let gw = gateway_config(2, &toml);
    let mut dev = Mcp::on(&gw, "/mcp/dev");
    dev.initialize();
    let dev_tools = dev.tools();
    assert!(dups(&dev_tools).is_empty(), "{dev_tools:?}");
    let direct: BTreeSet<String> = tools_of(&alpha).into_iter().collect();
    let got: BTreeSet<String> = dev_tools.iter().cloned().collect();
    assert_eq!(got, direct, "/mcp/dev must list alpha's tools, bare");
    assert_eq!(dev.call_text("whoami", json!({})), "alpha");
    assert_refused(&dev.call("only_beta", json!({})), "beta's tool on /mcp/dev");

    let mut all = Mcp::on(&gw, "/mcp");
    all.initialize();
    let listed = all.tools();
    for name in ["alpha__whoami", "beta__whoami", "only_alpha", "only_beta"] {
        assert!(
            listed.contains(&name.to_string()),
            "/mcp: {name}: {listed:?}"
        );
    }
    assert_eq!(all.call_text("beta__whoami", json!({})), "beta");

    // A path no route names is not an MCP endpoint.
    let none = Mcp::on(&gw, "/mcp/nope");
    let st = none.post(
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": VERSION, "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}})
        .to_string(),
    );
    assert_eq!(st.status, 404, "a path no route names");
    assert_eq!(dev.delete(), 200);
    assert_eq!(all.delete(), 200);

    // /health lists each route with its servers and their state.
    let health = get(gw.addr("admin"), "/health").json();
    type Served = (String, String, String);
    let routes: Vec<(String, Vec<Served>)> = health["routes"]
        .as_array()
        .unwrap_or_else(|| panic!("/health has no routes: {health}"))
        .iter()
        .map(|r| {
            let servers = r["servers"].as_array().cloned().unwrap_or_default();
            let servers = servers
                .iter()
                .map(|s| {
                    let f = |k: &str| s[k].as_str().unwrap_or("").to_string();
                    (f("name"), f("kind"), f("state"))
                })
                .collect();
            (r["path"].as_str().unwrap_or("").to_string(), servers)
        })
        .collect();
    let up = |n: &str| (n.to_string(), "http".to_string(), "up".to_string());
    assert_eq!(
        routes,
        vec![
            ("/mcp".to_string(), vec![up("alpha"), up("beta")]),
            ("/mcp/dev".to_string(), vec![up("alpha")]),
        ],
        "{health}"
    );
    let servers: Vec<&str> = health["upstreams"]
        .as_array()
        .map(|u| u.iter().filter_map(|u| u["server"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(servers, ["alpha", "beta"], "{health}");

    // `shardcat tools` prints each route's list as its clients see it.
    let path = std::env::temp_dir().join(format!("shardcat-fed-tools-{}.toml", unique()));
    std::fs::write(&path, &toml).expect("write config");
    let out = std::process::Command::new(BIN)
        .args(["tools", "--config", &path.display().to_string()])
        .output()
        .expect("run shardcat tools");
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "shardcat tools: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut printed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut at = String::new();
    for line in text.lines() {
        match line.strip_prefix("  ") {
            Some(tool) => {
                let name = tool.split_whitespace().next().unwrap_or("").to_string();
                printed.entry(at.clone()).or_default().insert(name);
            }
            None => at = line.trim().to_string(),
        }
    }
    let want_all: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(
        printed.get("/mcp/dev"),
        Some(&direct),
        "tools of /mcp/dev: {text}"
    );
    assert_eq!(
        printed.get("/mcp"),
        Some(&want_all),
        "tools of /mcp: {text}"
    );

    // Per-server counters: each server was asked (initialize, lists, a call), none failed; a
    // name refused by the gateway cost no server a request.
    let admin = gw.addr("admin");
    for server in ["alpha", "beta"] {
        let sent = metric(
            admin,
            &format!("shardcat_server_requests_total{{server=\"{server}\"}}"),
        );
        assert!(sent >= 3.0, "{server}: {sent} requests");
        let failed = metric(
            admin,
            &format!("shardcat_server_errors_total{{server=\"{server}\"}}"),
        );
        assert_eq!(failed, 0.0, "{server}: failures");
    }
}

// ---------------------------------------------------------------------------------------------
// 7. The official Python SDK client, 20 sessions at once over 2 shards.

#[test]
fn python_sdk_clients_use_a_route_of_three_servers() {
    const SESSIONS: usize = 20;
    let (alpha, beta, toml) = alpha_and_beta(
        Some(3),
        [HIDE_SECRETS, HIDE_SECRETS],
        &[
            stdio_server("gamma", ""),
            route("/mcp", &["alpha", "beta", "gamma"]),
        ],
    );
    let gw = gateway_config(2, &toml);
    let url = format!("http://{}/mcp", gw.addr("listen"));
    let p = peers();
    // `auto` probes server/discover first: on a federated route that is answered, so it and
    // `2026-07-28` take the stateless path (each request to the one server it names).
    for mode in ["legacy", "auto", "2026-07-28"] {
        let label = format!("python {mode} -> alpha+beta+gamma");
        let cmd = [
            p.python.display().to_string(),
            p.py("fed_client.py"),
            "--url".into(),
            url.clone(),
            "--mode".into(),
            mode.into(),
            "--sessions".into(),
            SESSIONS.to_string(),
            "--label".into(),
            label.clone(),
            "--timeout-s".into(),
            "150".into(),
            "--servers".into(),
            "alpha,beta,gamma".into(),
            "--require".into(),
            REQUIRE_ON_THREE.into(),
            "--forbid".into(),
            FORBID_ON_THREE.into(),
        ];
        run_fed_client(&gw, &cmd, &label);
        assert_no_sessions_left(&gw, &[&alpha, &beta], &label);
    }
    let (_, opened) = sessions_of(&alpha);
    assert!(
        opened >= SESSIONS as u64,
        "alpha saw {opened} sessions for {SESSIONS} client sessions and more"
    );
}

// ---------------------------------------------------------------------------------------------
// 7b. 2026-07-28 (no session) on a federated route, in raw bytes.

/// The 2026-07-28 envelope every request of that version carries in `params._meta`.
fn envelope() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "federation-test", "version": "1"}
    })
}

/// One 2026-07-28 request on `path` (its `Mcp-Method`, and `Mcp-Name` when given): the HTTP
/// status and the JSON-RPC response (read from JSON or SSE; for an error status, the body).
fn stateless(
    addr: SocketAddr,
    path: &str,
    method: &str,
    mut params: Value,
    name: Option<&str>,
) -> (u16, Value) {
    params["_meta"] = envelope();
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}).to_string();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\naccept: application/json, text/event-stream\r\n\
         connection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         mcp-protocol-version: 2026-07-28\r\nmcp-method: {method}\r\n",
        body.len()
    );
    if let Some(n) = name {
        head.push_str(&format!("mcp-name: {n}\r\n"));
    }
    let req = format!("{head}\r\n{body}");
    let mut st = Stream::open(addr, &req);
    if st.status != 200 {
        let text = st.rest_text();
        let v = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "body": text }));
        return (st.status, v);
    }
    let mut msgs = st.until_response(&json!(7), EXCHANGE);
    (200, msgs.pop().expect("a response"))
}

/// The result of a 2026-07-28 request that must succeed.
fn stateless_result(addr: SocketAddr, path: &str, method: &str, params: Value) -> Value {
    let name = params["name"].as_str().or(params["uri"].as_str());
    let name = name.filter(|_| method != "tools/list").map(String::from);
    let (status, m) = stateless(addr, path, method, params.clone(), name.as_deref());
    assert!(
        status == 200 && m.get("result").is_some(),
        "{method} {params} on {path}: HTTP {status} {m}"
    );
    assert_eq!(m["result"]["resultType"], "complete", "{method}: {m}");
    m["result"].clone()
}

/// Every item of a 2026-07-28 list, following nextCursor; each page is cacheable as that
/// version's schema wants (`ttlMs`, `cacheScope`).
fn stateless_list(addr: SocketAddr, path: &str, method: &str, key: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut params = json!({});
    for _ in 0..MAX_PAGES {
        let page = stateless_result(addr, path, method, params);
        assert!(
            page["ttlMs"].is_u64() && page["cacheScope"].is_string(),
            "{method}: a page without ttlMs/cacheScope: {page}"
        );
        items.extend(page[key].as_array().expect("items").iter().cloned());
        match page["nextCursor"].as_str() {
            None => return items,
            Some(c) => params = json!({ "cursor": c }),
        }
    }
    panic!("{method}: still a nextCursor after {MAX_PAGES} pages");
}

fn error_code(m: &Value) -> i64 {
    m["error"]["code"].as_i64().unwrap_or(0)
}

/// A URL where nothing listens (a port bound, then released).
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    format!("http://127.0.0.1:{port}/mcp")
}

#[test]
fn stateless_requests_go_to_the_server_they_name() {
    let alpha = python("alpha", Some(3));
    let want = merged(&[
        ("alpha", without_secrets(tools_of(&alpha))),
        ("gamma", rmcp_tools()),
    ]);
    let dead = format!("[[server]]\nname = \"dead\"\nurl = \"{}\"\n\n", dead_url());
    let toml = |mode: &str| {
        [
            http_server("alpha", &alpha, HIDE_SECRETS),
            stdio_server("gamma", ""),
            dead.clone(),
            route("/mcp", &["alpha", "gamma"]),
            route("/withdead", &["alpha", "gamma", "dead"]),
            federation(mode),
        ]
        .concat()
    };
    // One shard: "no server round trip for a refused name" is counted on the shard that
    // learnt the names (the Python SDK test runs 2026-07-28 sessions over 2 shards).
    let gw = gateway_config(1, &toml("open"));
    let addr = gw.addr("listen");

    // server/discover: the merged result, in that version's shape.
    let d = stateless_result(addr, "/mcp", "server/discover", json!({}));
    let versions = d["supportedVersions"]
        .as_array()
        .expect("supportedVersions");
    assert!(versions.contains(&json!("2026-07-28")), "{d}");
    assert!(d["capabilities"]["tools"].is_object(), "{d}");
    assert!(d["ttlMs"].is_u64() && d["cacheScope"].is_string(), "{d}");

    // The merged list, paged, as a session sees it: filtered and prefixed.
    let listed: Vec<String> = stateless_list(addr, "/mcp", "tools/list", "tools")
        .iter()
        .map(|t| t["name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(dups(&listed), Vec::<String>::new(), "listed twice");
    assert_eq!(listed.iter().cloned().collect::<BTreeSet<_>>(), want);

    // Calls go to the server the name says, with Mcp-Name rewritten to the server's own name
    // (a server checks the header against the body: a mismatch would be its 400).
    for (name, text) in [
        (format!("alpha{SEP}echo"), "a1"),
        (format!("gamma{SEP}echo"), "g1"),
    ] {
        let args = json!({"name": name, "arguments": {"text": text}});
        let r = stateless_result(addr, "/mcp", "tools/call", args);
        assert_eq!(content_text(&r["content"]), text, "{name}: {r}");
    }
    let r = stateless_result(addr, "/mcp", "tools/call", json!({"name": "whoami"}));
    assert_eq!(content_text(&r["content"]), "alpha", "{r}");

    // A header that does not match the body: 400 with -32020, from the gateway.
    let args = json!({"name": format!("alpha{SEP}echo"), "arguments": {"text": "x"}});
    let (status, m) = stateless(addr, "/mcp", "tools/call", args, Some("gamma__echo"));
    assert_eq!((status, error_code(&m)), (400, -32020), "{m}");

    // Hidden and unknown names: a JSON-RPC error, and no server was asked.
    let asked = || {
        metric(
            gw.addr("admin"),
            "shardcat_server_requests_total{server=\"alpha\"}",
        )
    };
    let before = asked();
    for name in ["secret_alpha", "no_such_tool"] {
        let (status, m) = stateless(
            addr,
            "/mcp",
            "tools/call",
            json!({"name": name}),
            Some(name),
        );
        assert_eq!((status, error_code(&m)), (200, -32602), "{name}: {m}");
    }
    assert_eq!(asked(), before, "a refused name cost alpha a request");

    // ping is answered by the gateway, in that version's shape.
    let (status, m) = stateless(addr, "/mcp", "ping", json!({}), None);
    assert_eq!(
        (status, &m["result"]),
        (200, &json!({"resultType": "complete"}))
    );

    // A resource of one server, read by its listed URI.
    let res = stateless_list(addr, "/mcp", "resources/list", "resources");
    let uri = res[0]["uri"].as_str().expect("uri").to_string();
    let r = stateless_result(addr, "/mcp", "resources/read", json!({ "uri": uri }));
    assert!(
        r["contents"].as_array().is_some_and(|c| !c.is_empty()),
        "{r}"
    );

    // failure_mode = "open": a dead server is left out of discover, named in _meta; its
    // route still serves the others.
    let d = stateless_result(addr, "/withdead", "server/discover", json!({}));
    let left: Vec<&str> = d["_meta"]["dev.shardcat/left_out"]
        .as_array()
        .map(|l| l.iter().filter_map(|x| x["server"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(left, ["dead"], "{d}");
    let r = stateless_result(addr, "/withdead", "tools/call", json!({"name": "whoami"}));
    assert_eq!(content_text(&r["content"]), "alpha", "{r}");
    drop(gw);

    // failure_mode = "closed": discover fails naming the dead server.
    let gw = gateway_config(1, &toml("closed"));
    let (status, m) = stateless(
        gw.addr("listen"),
        "/withdead",
        "server/discover",
        json!({}),
        None,
    );
    let text = m.to_string();
    assert!(
        status >= 500 && text.contains("dead"),
        "HTTP {status} {text}"
    );
    let (status, m) = stateless(
        gw.addr("listen"),
        "/mcp",
        "server/discover",
        json!({}),
        None,
    );
    assert_eq!(status, 200, "{m}");
}

// ---------------------------------------------------------------------------------------------
// 8. The conformance suite on a route of one server.

/// Scenarios that pass direct but fail through the gateway.
fn lost(direct: &[(String, bool)], through: &[(String, bool)]) -> Vec<String> {
    direct
        .iter()
        .filter(|(_, ok)| *ok)
        .filter(|(name, _)| !through.iter().any(|(n, ok)| n == name && *ok))
        .map(|(name, _)| name.clone())
        .collect()
}

#[test]
fn conformance_on_a_route_of_one_server_passes_as_direct() {
    // A guard against a hung suite, not a timing check (see tests/interop.rs).
    const LIMIT: Duration = Duration::from_secs(480);
    let server = python_plain();
    let toml = [
        http_server("solo", &server, ""),
        route("/mcp", &["solo"]),
        federation("closed"),
    ]
    .concat();
    let gw = gateway_config(2, &toml);
    let direct = peers::conformance(&server.url(), LIMIT);
    let through = peers::conformance(&format!("http://{}/mcp", gw.addr("listen")), LIMIT);
    let passed = |v: &[(String, bool)]| v.iter().filter(|(_, ok)| *ok).count();
    eprintln!(
        "conformance: direct {}/{}, through a one-server route {}/{}",
        passed(&direct),
        direct.len(),
        passed(&through),
        through.len()
    );
    assert!(passed(&direct) > 0, "nothing passes direct: {direct:?}");
    let lost = lost(&direct, &through);
    assert!(
        lost.is_empty(),
        "scenarios that pass direct and fail through a one-server route: {lost:?}\n{}",
        tail(&gw.stderr(), 4000)
    );
}

/// The helpers against the servers themselves, no gateway: what the tests above take as the
/// truth holds (pagination, the federation fixtures, the session counter).
#[test]
fn the_federation_fixtures_hold_without_the_gateway() {
    let alpha = python("alpha", Some(2));
    let mut c = Mcp::direct(&alpha);
    c.initialize();
    let page = c.result("tools/list", json!({}));
    assert_eq!(page["tools"].as_array().map(Vec::len), Some(2), "{page}");
    assert!(page["nextCursor"].is_string(), "{page}");
    let tools = c.tools();
    for name in [
        "whoami",
        "only_alpha",
        "secret_alpha",
        "change_tools",
        "echo",
    ] {
        assert!(tools.contains(&name.to_string()), "{name}: {tools:?}");
    }
    assert_eq!(c.call_text("whoami", json!({})), "alpha");
    assert_eq!(c.call_text("secret_alpha", json!({})), "secret of alpha");
    let bad = c.rpc("tools/list", json!({"cursor": "nonsense"}));
    assert_eq!(bad["error"]["code"], -32602, "{bad}");
    let prompts = c.names("prompts/list", "prompts");
    assert!(prompts.contains(&"alpha_prompt".to_string()), "{prompts:?}");
    let r = c.result("resources/read", json!({"uri": "fed://shared/readme"}));
    assert_eq!(r["contents"][0]["text"], "shared readme of alpha", "{r}");
    assert_eq!(sessions_of(&alpha), (1, 1));
    let mut get = c.get_stream();
    assert_eq!(get.status, 200);
    let mut arrived = false;
    for _ in 0..10 {
        c.call_text("change_tools", json!({}));
        if let Next::Message(m) = get.next(Duration::from_millis(700)) {
            arrived = list_changed(&m);
            if arrived {
                break;
            }
        }
    }
    assert!(arrived, "no tools/list_changed on the GET stream");
    assert!(c.tools().contains(&"added_alpha".to_string()));
    assert_eq!(c.delete(), 200);
    let ok = eventually(SETTLE, || sessions_of(&alpha) == (0, 1));
    assert!(ok, "after DELETE: {:?}", sessions_of(&alpha));
}

/// The raw flows of the tests above (SSE reading, the sampling answer, the GET stream)
/// through today's single-server gateway: they hold, so a failure above is federation's.
#[test]
fn the_raw_flows_hold_through_a_single_server_gateway() {
    let alpha = python("alpha", Some(2));
    let gw = gateway(&alpha.url(), 2, None);
    let mut c = Mcp::on(&gw, "/mcp");
    c.initialize();
    let tools = c.tools();
    assert!(tools.contains(&"only_alpha".to_string()), "{tools:?}");
    sample_through(&mut c, "sample", &gw);
    await_list_changed(&mut c, "change_tools", &gw);
    assert!(c.tools().contains(&"added_alpha".to_string()));
    assert_eq!(sessions_of(&alpha).0, 1);
    assert_eq!(c.delete(), 200);
    assert_no_sessions_left(&gw, &[&alpha], "after DELETE");
}

// ---------------------------------------------------------------------------------------------
// 9. The official TypeScript SDK client on a route of three servers (the second SDK of 7.).

/// The route of test 7: alpha and beta (Python SDK, pages of 3, `secret_*` filtered out) and
/// gamma (the rmcp fixture over stdio), with `extra` TOML first.
fn three_server_route(alpha: &Server, beta: &Server, extra: &str) -> String {
    [
        extra.to_string(),
        http_server("alpha", alpha, HIDE_SECRETS),
        http_server("beta", beta, HIDE_SECRETS),
        stdio_server("gamma", ""),
        route("/mcp", &["alpha", "beta", "gamma"]),
    ]
    .concat()
}

/// `tests/interop/ts/fed_client.mjs` against `url` with the servers, --require and --forbid of
/// test 7 (the TypeScript client lists what the Python one does: both speak the handshake era
/// and see the same merged names), and `extra` flags.
fn ts_fed_client(url: &str, sessions: usize, label: &str, extra: &[&str]) -> Vec<String> {
    let p = peers();
    let mut cmd = vec![
        p.node.display().to_string(),
        p.ts("fed_client.mjs"),
        "--url".into(),
        url.into(),
        "--sessions".into(),
        sessions.to_string(),
        "--label".into(),
        label.into(),
        "--timeout-s".into(),
        "150".into(),
        "--servers".into(),
        "alpha,beta,gamma".into(),
        "--require".into(),
        REQUIRE_ON_THREE.into(),
        "--forbid".into(),
        FORBID_ON_THREE.into(),
    ];
    cmd.extend(extra.iter().map(|x| x.to_string()));
    cmd
}

/// Runs one federation client (fed_client.py or fed_client.mjs) and asserts that every
/// session passed.
fn run_fed_client(gw: &Proc, cmd: &[String], label: &str) {
    let cell = run_client(label, cmd, Duration::from_secs(200));
    assert!(
        cell.ok(),
        "{label}: {}/{} sessions passed: {}\nskipped: {:?}\n{}",
        cell.passed,
        cell.sessions,
        cell.failures.join(" | "),
        cell.skipped,
        tail(&gw.stderr(), 4000)
    );
    eprintln!(
        "{label}: {}/{} in {:.1} s, versions {:?}, skipped {:?}",
        cell.passed, cell.sessions, cell.secs, cell.versions, cell.skipped
    );
}

/// gamma's stdio children the gateway still runs, waited for until at most `max` are left.
fn assert_stdio_children_at_most(gw: &Proc, max: usize, what: &str) {
    let ok = eventually(SETTLE, || children_of(gw.pid()).len() <= max);
    assert!(
        ok,
        "{what}: gamma's stdio children left: {:?}",
        children_of(gw.pid())
    );
}

#[test]
fn typescript_sdk_clients_use_a_route_of_three_servers() {
    const SESSIONS: usize = 20;
    let (alpha, beta) = (python("alpha", Some(3)), python("beta", Some(3)));
    let gw = gateway_config(2, &three_server_route(&alpha, &beta, ""));
    let url = format!("http://{}/mcp", gw.addr("listen"));
    let label = "typescript -> alpha+beta+gamma";
    run_fed_client(&gw, &ts_fed_client(&url, SESSIONS, label, &[]), label);
    assert_no_sessions_left(&gw, &[&alpha, &beta], label);
    assert_stdio_children_at_most(&gw, 2, label);
    let (_, opened) = sessions_of(&alpha);
    assert!(
        opened >= SESSIONS as u64,
        "alpha saw {opened} sessions for {SESSIONS} client sessions and more"
    );
}

/// 20 TypeScript SDK sessions that end without DELETE: a third mid-call (after the first
/// progress notification), a third as soon as their call is sent, a third after the answer
/// (fed_client.mjs --close-early). Fresh sessions are then served in full while those linger,
/// and once they expire (`session_idle_timeout_ms`) no session is left anywhere.
#[test]
fn typescript_sdk_sessions_closed_early_leave_nothing_behind() {
    const SESSIONS: usize = 20;
    const FRESH: usize = 5;
    let (alpha, beta) = (python("alpha", Some(3)), python("beta", Some(3)));
    let idle = "[timeouts]\nsession_idle_timeout_ms = 3000\n";
    let gw = gateway_config(2, &three_server_route(&alpha, &beta, idle));
    let url = format!("http://{}/mcp", gw.addr("listen"));
    let (_, opened_before) = sessions_of(&alpha);

    let label = "typescript closing early -> alpha+beta+gamma";
    let cmd = ts_fed_client(&url, SESSIONS, label, &["--close-early"]);
    run_fed_client(&gw, &cmd, label);
    let (_, opened) = sessions_of(&alpha);
    assert!(
        opened >= opened_before + SESSIONS as u64,
        "alpha saw {} sessions for {SESSIONS} abandoned client sessions",
        opened - opened_before
    );

    let label = "typescript after the early closes -> alpha+beta+gamma";
    run_fed_client(&gw, &ts_fed_client(&url, FRESH, label, &[]), label);
    assert_no_sessions_left(&gw, &[&alpha, &beta], label);
    assert_stdio_children_at_most(&gw, 2, label);
    let expired = metric(gw.addr("admin"), "shardcat_sessions_expired_total");
    eprintln!("{label}: {expired} sessions expired");
}

// ---------------------------------------------------------------------------------------------
// 10. Tapes of a federated session.

/// `shardcat tape ARGS`: its stdout, which must have succeeded.
fn tape_tool(args: &[&str]) -> String {
    let out = std::process::Command::new(BIN)
        .arg("tape")
        .args(args)
        .output()
        .expect("run shardcat tape");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "shardcat tape {args:?}: {text}");
    text
}

/// The one tape session in `dir` that holds messages, exported: one JSON object per frame.
fn exported_session(dir: &str) -> Vec<Value> {
    let listed = tape_tool(&["list", dir]);
    let ids: Vec<&str> = listed
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let msgs: u64 = f.get(3)?.parse().ok()?;
            (msgs > 0).then_some(f[0])
        })
        .collect();
    assert_eq!(ids.len(), 1, "one session with messages: {listed}");
    tape_tool(&["export", dir, ids[0], "--format", "jsonl"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("an export line is JSON"))
        .collect()
}

/// The request frame of the `tools/call` of `tool`, and the response frame answering it.
fn call_frames<'a>(frames: &'a [Value], tool: &str) -> (&'a Value, &'a Value) {
    let request = frames
        .iter()
        .find(|f| {
            f["dir"] == "c2s"
                && f["json"]["method"] == "tools/call"
                && f["json"]["params"]["name"] == tool
        })
        .unwrap_or_else(|| panic!("no tools/call of {tool} on the tape: {frames:#?}"));
    let id = &request["json"]["id"];
    let response = frames
        .iter()
        .find(|f| f["dir"] == "s2c" && f["json"]["id"] == *id && f["json"].get("result").is_some())
        .unwrap_or_else(|| panic!("no response to the call of {tool}: {frames:#?}"));
    (request, response)
}

/// A tape of a session on a route of two servers names, per frame, the server it went to or
/// came from: each tools/call and its answer their own server, the merged tools/list none; its
/// start frame lists the route's servers, and `show` marks the frames with them.
#[test]
fn tape_frames_name_the_server_of_a_federated_route() {
    let (alpha, beta) = (python("alpha", None), python("beta", None));
    let dir = std::env::temp_dir().join(format!(
        "shardcat-fed-tape-{}-{}",
        std::process::id(),
        unique()
    ));
    let d = dir.display().to_string();
    let toml = [
        http_server("alpha", &alpha, ""),
        http_server("beta", &beta, ""),
        route("/mcp", &["alpha", "beta"]),
        federation("open"),
        format!("[tapes]\ndir = \"{d}\"\n"),
    ]
    .concat();
    let mut gw = gateway_config(1, &toml);
    let mut c = Mcp::on(&gw, "/mcp");
    c.initialize();
    let tools = c.tools();
    assert!(tools.contains(&"only_beta".to_string()), "{tools:?}");
    assert_eq!(c.call_text("only_beta", json!({})), "beta");
    assert_eq!(c.call_text("only_alpha", json!({})), "alpha");
    assert_eq!(c.delete(), 200);
    // Shutdown writes every frame still queued.
    assert_eq!(gw.terminate(Duration::from_secs(10)), Some(0));

    let frames = exported_session(&d);
    let start = frames
        .iter()
        .find(|f| f["kind"] == "session_start")
        .expect("a session start");
    assert_eq!(
        start["json"]["servers"],
        json!(["alpha", "beta"]),
        "{start}"
    );
    for (tool, server, index) in [("only_alpha", "alpha", 0), ("only_beta", "beta", 1)] {
        let (request, response) = call_frames(&frames, tool);
        for f in [request, response] {
            assert_eq!(f["server"], server, "{tool}: {f}");
            assert_eq!(f["server_index"], index, "{tool}: {f}");
        }
    }
    let list = |dir: &str| {
        frames
            .iter()
            .find(|f| {
                f["dir"] == dir
                    && (f["json"]["method"] == "tools/list"
                        || f["json"]["result"]["tools"].is_array())
            })
            .unwrap_or_else(|| panic!("no {dir} tools/list frame: {frames:#?}"))
    };
    for f in [list("c2s"), list("s2c")] {
        assert!(
            f.get("server").is_none(),
            "a merged list names no server: {f}"
        );
    }
    let id = start["session"].as_str().expect("session id");
    let shown = tape_tool(&["show", &d, id, "--width", "0"]);
    let marked = |tool: &str, server: &str| {
        shown
            .lines()
            .any(|l| l.contains("request tools/call") && l.contains(tool) && l.contains(server))
    };
    assert!(marked("only_alpha", "@alpha"), "{shown}");
    assert!(marked("only_beta", "@beta"), "{shown}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A 2026-07-28 call on a federated route is a tape session of its own whose start lists the
/// route's servers, and whose request and answer name the server the call went to.
#[test]
fn tape_frames_of_a_stateless_call_name_its_server() {
    let (_alpha, _beta, toml) =
        alpha_and_beta(None, ["", ""], &[route("/mcp", &["alpha", "beta"])]);
    let dir = std::env::temp_dir().join(format!(
        "shardcat-fed-tape-stateless-{}-{}",
        std::process::id(),
        unique()
    ));
    let d = dir.display().to_string();
    let mut gw = gateway_config(1, &format!("{toml}[tapes]\ndir = \"{d}\"\n"));
    let (status, m) = stateless(
        gw.addr("listen"),
        "/mcp",
        "tools/call",
        json!({"name": "only_beta"}),
        Some("only_beta"),
    );
    assert_eq!(status, 200, "{m}");
    assert_eq!(content_text(&m["result"]["content"]), "beta", "{m}");
    assert_eq!(gw.terminate(Duration::from_secs(10)), Some(0));

    let frames = exported_session(&d);
    let start = frames
        .iter()
        .find(|f| f["kind"] == "session_start")
        .expect("a session start");
    assert_eq!(
        start["json"]["servers"],
        json!(["alpha", "beta"]),
        "{start}"
    );
    let (request, response) = call_frames(&frames, "only_beta");
    for f in [request, response] {
        assert_eq!(
            (&f["server"], &f["server_index"]),
            (&json!("beta"), &json!(1)),
            "{f}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
