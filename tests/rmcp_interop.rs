//! Interop with the official Rust MCP SDK (`rmcp`): an rmcp Streamable HTTP server runs in
//! process behind the real `shardcat` binary, and an rmcp client speaks to the gateway.
//!
//! Covered, for every protocol version rmcp can announce:
//! - session versions 2025-03-26, 2025-06-18, 2025-11-25 against a session server that answers
//!   POSTs with SSE: initialize, tools/list, tools/call (plain and with progress notifications
//!   before the result), a server-initiated notification over the standalone GET stream, DELETE
//!   on close (the session ends in the gateway and upstream);
//! - the same versions against a sessionless server that answers POSTs with plain JSON (and SSE
//!   only when notifications precede the result);
//! - stateless 2026-07-28 (`server/discover`, per-request `_meta`, `Mcp-Method`/`Mcp-Name`/
//!   `Mcp-Param-*` headers, `subscriptions/listen` streams) against both servers;
//! - raw HTTP through the same gateways, to pin the response kinds and the gateway's own
//!   2026-07-28 rules (GET 405, header mismatch 400/-32020).

#[path = "support/exposition.rs"]
mod exposition;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
    ProgressNotificationParam, ProtocolVersion, RequestMetaObject, ServerCapabilities,
    ServerConfig, ServerNotification, SubscriptionFilter,
};
use rmcp::service::{NotificationContext, RunningService, SubscriptionContext};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{
    tool, tool_handler, tool_router, ClientHandler, ClientLifecycleMode, ClientServiceExt,
    ErrorData, Peer, RoleClient, RoleServer, ServerHandler, ServiceExt,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);
const SESSION_VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V_2025_03_26,
    ProtocolVersion::V_2025_06_18,
    ProtocolVersion::V_2025_11_25,
];

// ---------------------------------------------------------------------------------------------
// The rmcp server.

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    /// The text to echo.
    text: String,
    /// Promoted to the `Mcp-Param-Region` header by 2026-07-28 clients (SEP-2243).
    #[serde(default)]
    #[schemars(extend("x-mcp-header" = "Region"))]
    region: String,
}

#[derive(Clone)]
struct Interop {
    tool_router: ToolRouter<Self>,
    /// Listen streams whose cancellation (the client closing the stream) reached the server.
    listens_cancelled: Arc<AtomicUsize>,
}

impl Interop {
    fn new(listens_cancelled: Arc<AtomicUsize>) -> Self {
        Self {
            tool_router: Self::tool_router(),
            listens_cancelled,
        }
    }
}

#[tool_router]
impl Interop {
    #[tool(description = "Returns its text (tagged with the region, when one is given)")]
    fn echo(&self, Parameters(EchoArgs { text, region }): Parameters<EchoArgs>) -> String {
        if region.is_empty() {
            text
        } else {
            format!("{text} @{region}")
        }
    }

    #[tool(description = "Sends three progress notifications, then returns")]
    async fn slow_progress(
        &self,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
    ) -> Result<String, ErrorData> {
        let token = meta
            .get_progress_token()
            .ok_or_else(|| ErrorData::invalid_params("a progress token is required", None))?;
        for step in 1..=3 {
            peer.notify_progress(
                ProgressNotificationParam::new(token.clone(), f64::from(step))
                    .with_total(3.0)
                    .with_message(format!("step {step}")),
            )
            .await
            .map_err(|e| ErrorData::internal_error(format!("progress: {e}"), None))?;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        Ok("progress done".into())
    }

    #[tool(
        description = "Sends notifications/tools/list_changed outside any request, ~200 ms later"
    )]
    async fn notify_later(&self, peer: Peer<RoleServer>) -> String {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Err(e) = peer.notify_tool_list_changed().await {
                eprintln!("notify_later: {e}");
            }
        });
        "scheduled".into()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Interop {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("rmcp-interop", "1.0.0"))
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.supported_by(&self.get_info().capabilities))
    }

    /// 2026-07-28 server-initiated notifications: one on the listen stream after the
    /// acknowledgment, then hold the stream until the client closes it.
    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        context
            .sink()
            .notify_tool_list_changed()
            .await
            .map_err(|e| ErrorData::internal_error(format!("listen: {e}"), None))?;
        context.cancelled().await;
        self.listens_cancelled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Upstream {
    url: String,
    sessions: Arc<LocalSessionManager>,
    listens_cancelled: Arc<AtomicUsize>,
}

/// `json`: sessionless server answering POSTs with `application/json` where it can; otherwise
/// the default session server answering POSTs with SSE.
async fn spawn_upstream(json: bool) -> Upstream {
    let sessions = Arc::new(LocalSessionManager::default());
    let listens_cancelled = Arc::new(AtomicUsize::new(0));
    let mut config = StreamableHttpServerConfig::default();
    if json {
        config = config
            .with_legacy_session_mode(false)
            .with_json_response(true);
    }
    let service: StreamableHttpService<Interop, LocalSessionManager> = StreamableHttpService::new(
        {
            let listens_cancelled = listens_cancelled.clone();
            move || Ok(Interop::new(listens_cancelled.clone()))
        },
        sessions.clone(),
        config,
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Upstream {
        url: format!("http://{addr}/mcp"),
        sessions,
        listens_cancelled,
    }
}

impl Upstream {
    async fn session_count(&self) -> usize {
        self.sessions.sessions.read().await.len()
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway process.

struct Gateway {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
}

impl Gateway {
    fn start(upstream: &str) -> Gateway {
        Gateway::start_with(&["--upstream", upstream])
    }

    /// A gateway whose upstream is a stdio program.
    fn start_stdio(cmd: &str) -> Gateway {
        Gateway::start_with(&["--upstream-cmd", cmd])
    }

    fn start_with(upstream: &[&str]) -> Gateway {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!(
            "shardcat-rmcp-interop-{}-{n}.log",
            std::process::id()
        ));
        let stderr = std::fs::File::create(&log).expect("create gateway log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardcat"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(upstream)
            .args(["--admin", "127.0.0.1:0", "--shards", "2"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn shardcat");
        let stdout = child.stdout.take().expect("gateway stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("READY ") {
                    let _ = tx.send(rest.to_string());
                }
            }
        });
        let ready = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("gateway did not print READY within 20 s; stderr:\n{text}");
            }
        };
        let field = |key: &str| -> SocketAddr {
            ready
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("READY line without {key}: {ready}"))
                .parse()
                .expect("address in READY line")
        };
        Gateway {
            listen: field("listen"),
            admin: field("admin"),
            child,
            log,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.listen)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- gateway stderr ({}) ---\n{text}", self.listen);
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A figure from the admin endpoint: the sum over every series of the family that carries the
/// labels in `series` (per-shard families are summed over `shard`, see `exposition::sum`).
/// Request counters that never moved are left out by the gateway and read as 0; any other
/// missing series fails.
async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let text = http()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    exposition::sum(&text, series)
        .or_else(|| {
            series
                .starts_with("shardcat_requests_total{")
                .then_some(0.0)
        })
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
}

const SESSIONS: &str = "shardcat_sessions";

async fn sessions_metric(admin: SocketAddr) -> f64 {
    metric(admin, SESSIONS).await
}

/// Polls until the gateway's `series` equals `want`, for at most 5 s.
async fn expect_metric(gw: &Gateway, series: &str, want: f64, when: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = metric(gw.admin, series).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: gateway reports {series} = {got}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until the gateway reports `want` sessions, for at most 5 s.
async fn expect_gateway_sessions(gw: &Gateway, want: f64, when: &str) {
    expect_metric(gw, SESSIONS, want, when).await;
}

fn requests(method: &str, status: u16) -> String {
    format!("shardcat_requests_total{{method=\"{method}\",status=\"{status}\"}}")
}

async fn expect_upstream_sessions(up: &Upstream, want: usize, when: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = up.session_count().await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: upstream holds {got} sessions, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The rmcp client.

#[derive(Clone)]
struct Probe {
    info: ClientConfig,
    progress: Arc<Mutex<Vec<f64>>>,
    list_changed: mpsc::UnboundedSender<()>,
}

impl ClientHandler for Probe {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(params.progress);
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.list_changed.send(());
    }

    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }
}

fn probe(version: ProtocolVersion) -> (Probe, mpsc::UnboundedReceiver<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("rmcp-interop-client", "1.0.0"),
    )
    .with_protocol_version(version);
    let p = Probe {
        info,
        progress: Arc::default(),
        list_changed: tx,
    };
    (p, rx)
}

fn args(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().expect("object").clone()
}

fn text_of(r: &CallToolResult) -> &str {
    assert_ne!(r.is_error, Some(true), "tool failed: {r:?}");
    r.content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.as_str())
        .unwrap_or_else(|| panic!("no text content: {r:?}"))
}

/// tools/list, echo, slow_progress: the part every version and server shares.
async fn common_calls(client: &RunningService<RoleClient, Probe>, label: &str) {
    let tools = timeout(WAIT, client.list_tools(None))
        .await
        .expect("tools/list timed out")
        .expect("tools/list");
    let mut names: Vec<&str> = tools.tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["echo", "notify_later", "slow_progress"],
        "{label}: tools"
    );

    let text = format!("hello {label}");
    let r = timeout(
        WAIT,
        client.call_tool(
            CallToolRequestParams::new("echo").with_arguments(args(json!({
                "text": text, "region": "eu"
            }))),
        ),
    )
    .await
    .expect("echo timed out")
    .expect("echo");
    assert_eq!(text_of(&r), format!("{text} @eu"), "{label}: echo");

    client.service().progress.lock().unwrap().clear();
    let r = timeout(
        WAIT,
        client.call_tool(CallToolRequestParams::new("slow_progress")),
    )
    .await
    .expect("slow_progress timed out")
    .expect("slow_progress");
    assert_eq!(text_of(&r), "progress done", "{label}: slow_progress");
    // rmcp runs each notification callback in its own task, so they may finish after the
    // result and in any order (the wire order is checked by `raw_session_checks`).
    let deadline = Instant::now() + WAIT;
    while client.service().progress.lock().unwrap().len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut seen = client.service().progress.lock().unwrap().clone();
    seen.sort_by(f64::total_cmp);
    assert_eq!(
        seen,
        [1.0, 2.0, 3.0],
        "{label}: progress notifications seen by on_progress"
    );
}

/// One session-version client run through the gateway. `stateful`: the upstream keeps sessions.
async fn session_flow(gw: &Gateway, up: &Upstream, version: ProtocolVersion, stateful: bool) {
    let label = format!("{version}/{}", if stateful { "sse" } else { "json" });
    let (handler, mut list_changed) = probe(version.clone());
    let transport = StreamableHttpClientTransport::from_uri(gw.url());
    let client = timeout(WAIT, handler.serve(transport))
        .await
        .expect("initialize timed out")
        .expect("initialize through the gateway");
    let info = client.peer_info().expect("server info");
    assert_eq!(
        info.protocol_version, version,
        "{label}: negotiated version"
    );
    assert_eq!(
        info.server_info.as_ref().map(|i| i.name.as_str()),
        Some("rmcp-interop"),
        "{label}"
    );
    let sessions = if stateful { 1.0 } else { 0.0 };
    expect_gateway_sessions(gw, sessions, &format!("{label} after initialize")).await;
    if stateful {
        expect_upstream_sessions(up, 1, &format!("{label} after initialize")).await;
    }

    common_calls(&client, &label).await;

    if stateful {
        let r = timeout(
            WAIT,
            client.call_tool(CallToolRequestParams::new("notify_later")),
        )
        .await
        .expect("notify_later timed out")
        .expect("notify_later");
        assert_eq!(text_of(&r), "scheduled");
        timeout(WAIT, list_changed.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("{label}: no tools/list_changed over the GET stream within 5 s")
            })
            .expect("notification channel open");
    }

    // Closing the client sends DELETE (when there is a session) before `cancel` returns.
    timeout(WAIT, client.cancel())
        .await
        .expect("client close timed out")
        .expect("client close");
    expect_gateway_sessions(gw, 0.0, &format!("{label} after close")).await;
    expect_upstream_sessions(up, 0, &format!("{label} after close")).await;
}

/// One 2026-07-28 client run: discovery, per-request metadata, standard headers, listen stream.
async fn modern_flow(gw: &Gateway, label: &str) {
    let (handler, _list_changed) = probe(ProtocolVersion::V_2026_07_28);
    let transport = StreamableHttpClientTransport::from_uri(gw.url());
    let client = timeout(
        WAIT,
        handler.serve_with_lifecycle(
            transport,
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        ),
    )
    .await
    .expect("server/discover timed out")
    .expect("server/discover through the gateway");
    assert_eq!(
        client.peer_info().expect("server info").protocol_version,
        ProtocolVersion::V_2026_07_28,
        "{label}"
    );

    // Echo carries `region`, so the client sends Mcp-Param-Region and rmcp checks it against the
    // body: this passes only if the gateway forwarded the header. rmcp's client promotes the
    // argument from the tool schemas it caches off a tools/list answer. Once, in a CI run under
    // load, the echo reached the upstream without the header, though the gateway forwards every
    // `Mcp-Param-*` header on every path; the suspicion is that the client had not cached the
    // first answer yet. A list before `common_calls` makes sure it has; a header the gateway
    // dropped would still fail the echo.
    timeout(WAIT, client.list_tools(None))
        .await
        .expect("tools/list timed out")
        .expect("tools/list");
    common_calls(&client, label).await;

    let mut sub = timeout(
        WAIT,
        client.listen(SubscriptionFilter::builder().tools_list_changed().build()),
    )
    .await
    .expect("subscriptions/listen timed out")
    .expect("subscriptions/listen");
    let n = timeout(WAIT, sub.next())
        .await
        .unwrap_or_else(|_| panic!("{label}: nothing on the listen stream within 5 s"))
        .expect("listen stream")
        .expect("a notification, not the end of the stream");
    assert!(
        matches!(n, ServerNotification::ToolListChangedNotification(_)),
        "{label}: {n:?}"
    );
    timeout(WAIT, sub.cancel())
        .await
        .expect("subscription cancel timed out")
        .expect("subscription cancel");
    timeout(WAIT, client.cancel())
        .await
        .expect("client close timed out")
        .expect("client close");
    assert_eq!(sessions_metric(gw.admin).await, 0.0, "{label}: stateless");
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP through the gateway.

struct Reply {
    status: u16,
    content_type: String,
    session: Option<String>,
    /// JSON-RPC messages: the body, or each non-empty SSE `data` in order.
    messages: Vec<Value>,
}

async fn send(req: reqwest::RequestBuilder) -> Reply {
    let resp = timeout(WAIT, req.send())
        .await
        .expect("request timed out")
        .expect("request");
    let status = resp.status().as_u16();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header("content-type").unwrap_or_default();
    let session = header("mcp-session-id");
    let body = timeout(WAIT, resp.text())
        .await
        .expect("body timed out")
        .expect("body");
    let messages = if content_type.starts_with("text/event-stream") {
        body.split("\n\n")
            .filter_map(|event| {
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                let data = data.join("\n");
                (!data.trim().is_empty())
                    .then(|| serde_json::from_str(&data).expect("SSE data is JSON"))
            })
            .collect()
    } else if body.trim().is_empty() {
        Vec::new()
    } else {
        vec![serde_json::from_str(&body).unwrap_or_else(|_| panic!("JSON body: {body}"))]
    };
    Reply {
        status,
        content_type,
        session,
        messages,
    }
}

fn post(url: &str, headers: &[(&str, &str)], body: Value) -> reqwest::RequestBuilder {
    let mut req = http()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req
}

/// Session-era raw exchange: proves which response kind the upstream chose crossed the gateway,
/// and that progress events precede the result on the wire.
async fn raw_session_checks(gw: &Gateway, stateful: bool) {
    let url = gw.url();
    let v = ("mcp-protocol-version", "2025-06-18");
    let init = send(post(
        &url,
        &[],
        json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},
            "clientInfo":{"name":"raw","version":"1"}}}),
    ))
    .await;
    assert_eq!(init.status, 200);
    assert_eq!(
        init.messages.last().expect("initialize result")["result"]["protocolVersion"],
        "2025-06-18"
    );
    let sid = init.session.clone();
    assert_eq!(
        sid.is_some(),
        stateful,
        "session id iff the upstream has sessions"
    );
    let mut hdrs = vec![v];
    if let Some(s) = &sid {
        assert_eq!(s.len(), 42, "the gateway's own session id: {s}");
        hdrs.push(("mcp-session-id", s.as_str()));
    }
    let r = send(post(
        &url,
        &hdrs,
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    ))
    .await;
    assert_eq!(r.status, 202);

    let r = send(post(
        &url,
        &hdrs,
        json!({"jsonrpc":"2.0","id":2,"method":"tools/call",
               "params":{"name":"echo","arguments":{"text":"raw"}}}),
    ))
    .await;
    assert_eq!(r.status, 200);
    let want = if stateful {
        "text/event-stream"
    } else {
        "application/json"
    };
    assert!(
        r.content_type.starts_with(want),
        "echo: {} (want {want})",
        r.content_type
    );
    let last = r.messages.last().expect("echo result");
    assert_eq!(last["id"], 2);
    assert_eq!(last["result"]["content"][0]["text"], "raw");

    let r = send(post(
        &url,
        &hdrs,
        json!({"jsonrpc":"2.0","id":3,"method":"tools/call",
               "params":{"name":"slow_progress","arguments":{},"_meta":{"progressToken":"p3"}}}),
    ))
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.content_type.starts_with("text/event-stream"),
        "notifications before the result need SSE: {}",
        r.content_type
    );
    let methods: Vec<&str> = r
        .messages
        .iter()
        .map(|m| m["method"].as_str().unwrap_or("<response>"))
        .collect();
    assert_eq!(
        methods,
        [
            "notifications/progress",
            "notifications/progress",
            "notifications/progress",
            "<response>"
        ],
        "{:?}",
        r.messages
    );
    for (i, m) in r.messages[..3].iter().enumerate() {
        assert_eq!(m["params"]["progressToken"], "p3");
        assert_eq!(m["params"]["progress"], (i + 1) as f64, "wire order");
    }
    assert_eq!(r.messages[3]["id"], 3);
    assert_eq!(
        r.messages[3]["result"]["content"][0]["text"],
        "progress done"
    );

    if let Some(s) = &sid {
        let del = send(
            http()
                .delete(&url)
                .header("mcp-session-id", s)
                .header(v.0, v.1),
        )
        .await;
        // rmcp answers DELETE with 202; the gateway answers 200, as the spec and the SDK
        // clients expect of a DELETE that ended the session.
        assert_eq!(del.status, 200);
        let after = send(post(
            &url,
            &hdrs,
            json!({"jsonrpc":"2.0","id":4,"method":"tools/list"}),
        ))
        .await;
        assert_eq!(after.status, 404, "ended session");
    }
    expect_gateway_sessions(gw, 0.0, "after raw checks").await;
}

fn stateless_call(id: u32, text: &str, region: &str) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{
        "name":"echo","arguments":{"text":text,"region":region},
        "_meta":{
            "io.modelcontextprotocol/protocolVersion":"2026-07-28",
            "io.modelcontextprotocol/clientInfo":{"name":"raw","version":"1"},
            "io.modelcontextprotocol/clientCapabilities":{}}}})
}

/// 2026-07-28 over raw HTTP: a well-formed call, the gateway's own rejections, and an upstream
/// rejection that can only happen if `Mcp-Param-Region` reached the upstream unchanged.
async fn raw_stateless_checks(gw: &Gateway) {
    let url = gw.url();
    let headers = |name: &'static str, region: &'static str| {
        [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", name),
            ("mcp-param-region", region),
        ]
    };
    let r = send(post(
        &url,
        &headers("echo", "eu"),
        stateless_call(1, "hi", "eu"),
    ))
    .await;
    assert_eq!(r.status, 200, "{:?}", r.messages);
    assert_eq!(r.session, None);
    assert_eq!(
        r.messages.last().unwrap()["result"]["content"][0]["text"],
        "hi @eu"
    );

    let r = send(
        http()
            .get(&url)
            .header("accept", "text/event-stream")
            .header("mcp-protocol-version", "2026-07-28"),
    )
    .await;
    assert_eq!(r.status, 405, "GET is not part of 2026-07-28");

    // Mcp-Name disagrees with the body: the gateway answers itself.
    let r = send(post(
        &url,
        &headers("add", "eu"),
        stateless_call(2, "hi", "eu"),
    ))
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.messages[0]["error"]["code"], -32020, "{:?}", r.messages);
    assert_eq!(r.messages[0]["id"], 2);

    // Mcp-Param-Region disagrees with the body: only rmcp can see that.
    let r = send(post(
        &url,
        &headers("echo", "us"),
        stateless_call(3, "hi", "eu"),
    ))
    .await;
    assert_eq!(r.status, 400, "{:?}", r.messages);
    assert_eq!(r.messages[0]["error"]["code"], -32020, "{:?}", r.messages);
    let msg = r.messages[0]["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("Mcp-Param-Region"), "rmcp's message: {msg}");

    assert_eq!(sessions_metric(gw.admin).await, 0.0);
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread")]
async fn session_versions_through_gateway_sse_server() {
    let up = spawn_upstream(false).await;
    let gw = Gateway::start(&up.url);
    for v in SESSION_VERSIONS {
        session_flow(&gw, &up, v, true).await;
    }
    raw_session_checks(&gw, true).await;
    expect_upstream_sessions(&up, 0, "end").await;
    // Everything above went through the gateway: 3 rmcp clients + 1 raw exchange.
    let all = |n: &str| format!("shardcat_{n}");
    expect_metric(&gw, &all("sessions_created_total"), 4.0, "end").await;
    expect_metric(&gw, &all("sessions_ended_total"), 4.0, "end").await;
    expect_metric(&gw, &requests("initialize", 200), 4.0, "end").await;
    expect_metric(&gw, &requests("DELETE", 200), 4.0, "end").await;
    // One standalone GET stream per rmcp client, counted once it ended with its session.
    expect_metric(&gw, &requests("GET", 200), 3.0, "end").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn session_versions_through_gateway_json_server() {
    let up = spawn_upstream(true).await;
    let gw = Gateway::start(&up.url);
    for v in SESSION_VERSIONS {
        session_flow(&gw, &up, v, false).await;
    }
    raw_session_checks(&gw, false).await;
    let all = |n: &str| format!("shardcat_{n}");
    expect_metric(&gw, &requests("initialize", 200), 4.0, "end").await;
    assert_eq!(metric(gw.admin, &all("sessions_created_total")).await, 0.0);
    assert_eq!(up.session_count().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn stateless_2026_07_28_through_gateway() {
    for json in [false, true] {
        let up = spawn_upstream(json).await;
        let gw = Gateway::start(&up.url);
        let label = if json {
            "2026-07-28/json"
        } else {
            "2026-07-28/sse"
        };
        modern_flow(&gw, label).await;
        raw_stateless_checks(&gw).await;
        assert_eq!(up.session_count().await, 0, "{label}: no upstream session");
        expect_metric(&gw, &requests("server/discover", 200), 1.0, label).await;
        // tools/call: echo and slow_progress from rmcp, the good raw call; the two raw
        // mismatches are 400s.
        expect_metric(&gw, &requests("tools/call", 200), 3.0, label).await;
        expect_metric(&gw, &requests("tools/call", 400), 2.0, label).await;
        expect_metric(&gw, &requests("initialize", 200), 0.0, label).await;
    }
}

/// A 2026-07-28 client cancels a `subscriptions/listen` subscription by closing its stream.
/// Directly against rmcp the server's `listen` sees the cancellation in about a millisecond;
/// the gateway must pass the close on at once (it watches the client socket for EOF while the
/// stream is idle), not at its next keep-alive write.
#[tokio::test(flavor = "multi_thread")]
async fn listen_cancel_reaches_upstream_promptly() {
    let up = spawn_upstream(false).await;
    let gw = Gateway::start(&up.url);
    for (path, url) in [("direct", up.url.clone()), ("via gateway", gw.url())] {
        let before = up.listens_cancelled.load(Ordering::SeqCst);
        let (handler, _list_changed) = probe(ProtocolVersion::V_2026_07_28);
        let client = timeout(
            WAIT,
            handler.serve_with_lifecycle(
                StreamableHttpClientTransport::from_uri(url),
                ClientLifecycleMode::Discover {
                    preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                },
            ),
        )
        .await
        .expect("discover timed out")
        .expect("discover");
        let mut sub = timeout(
            WAIT,
            client.listen(SubscriptionFilter::builder().tools_list_changed().build()),
        )
        .await
        .expect("listen timed out")
        .expect("listen");
        timeout(WAIT, sub.next())
            .await
            .expect("notification timed out")
            .expect("listen stream")
            .expect("a notification");
        let closed = Instant::now();
        timeout(WAIT, sub.cancel())
            .await
            .expect("cancel timed out")
            .expect("cancel");
        // 10 s: well under the 15 s SSE keep-alive, whose write was once the only way the
        // gateway noticed; generous because the rmcp server itself can be slow on a loaded box.
        while up.listens_cancelled.load(Ordering::SeqCst) == before
            && closed.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_ne!(
            up.listens_cancelled.load(Ordering::SeqCst),
            before,
            "{path}: the server's listen was not cancelled within 10 s of the client closing it"
        );
        let _ = timeout(WAIT, client.cancel()).await;
    }
}

/// The stdio fixture (`fixtures/`), built by `cargo test --workspace` next to this test.
fn stdio_fixture() -> String {
    let exe = std::env::current_exe().expect("test exe");
    let path = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("mcp-stdio-server");
    assert!(
        path.exists(),
        "{} missing: run `cargo test --workspace`",
        path.display()
    );
    path.display().to_string()
}

/// rmcp clients of every version through the gateway to an rmcp server on stdio: session
/// versions get a child each (progress relayed to the caller); 2026-07-28 discovers the server
/// and calls tools on the gateway's stateless children.
#[tokio::test(flavor = "multi_thread")]
async fn rmcp_clients_through_a_stdio_upstream() {
    let gw = Gateway::start_stdio(&stdio_fixture());
    for version in SESSION_VERSIONS {
        let label = format!("stdio/{version}");
        let (handler, _rx) = probe(version.clone());
        let client = timeout(
            WAIT,
            handler.serve(StreamableHttpClientTransport::from_uri(gw.url())),
        )
        .await
        .expect("initialize timed out")
        .expect("initialize through the gateway");
        assert_eq!(
            client.peer_info().expect("info").protocol_version,
            version,
            "{label}"
        );
        expect_gateway_sessions(&gw, 1.0, &label).await;
        let r = timeout(
            WAIT,
            client.call_tool(
                CallToolRequestParams::new("echo")
                    .with_arguments(args(json!({"text": label.clone()}))),
            ),
        )
        .await
        .expect("echo timed out")
        .expect("echo");
        assert_eq!(text_of(&r), label);
        let r = timeout(
            WAIT,
            client.call_tool(
                CallToolRequestParams::new("progress")
                    .with_arguments(args(json!({"count": 3, "interval_ms": 5}))),
            ),
        )
        .await
        .expect("progress timed out")
        .expect("progress");
        assert_eq!(text_of(&r), "done", "{label}");
        let deadline = Instant::now() + WAIT;
        while client.service().progress.lock().unwrap().len() < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            client.service().progress.lock().unwrap().len(),
            3,
            "{label}: progress"
        );
        timeout(WAIT, client.cancel())
            .await
            .expect("close timed out")
            .expect("close");
        expect_gateway_sessions(&gw, 0.0, &format!("{label} after close")).await;
    }
    let (handler, _rx) = probe(ProtocolVersion::V_2026_07_28);
    let client = timeout(
        WAIT,
        handler.serve_with_lifecycle(
            StreamableHttpClientTransport::from_uri(gw.url()),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        ),
    )
    .await
    .expect("server/discover timed out")
    .expect("server/discover through the gateway");
    let tools = timeout(WAIT, client.list_tools(None))
        .await
        .expect("tools/list timed out")
        .expect("tools/list");
    assert!(tools.tools.iter().any(|t| t.name == "echo"));
    let r = timeout(
        WAIT,
        client.call_tool(
            CallToolRequestParams::new("echo").with_arguments(args(json!({"text": "stateless"}))),
        ),
    )
    .await
    .expect("echo timed out")
    .expect("echo");
    assert_eq!(text_of(&r), "stateless");
    timeout(WAIT, client.cancel())
        .await
        .expect("close timed out")
        .expect("close");
    expect_metric(&gw, "shardcat_stdio_crashes_total", 0.0, "end").await;
}
