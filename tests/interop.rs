//! The SDK interop matrix and the conformance parity run: the official Python SDK (`mcp`), the
//! official TypeScript SDK and rmcp, as clients and as servers, through the real gateway with
//! 2 shards. The peers are installed on first use (`tests/interop/install.sh`); a peer that
//! cannot be installed fails the test with the reason.
//!
//! Each cell is one client process running `SESSIONS` sessions at once. Each session:
//! initialize (or server/discover), tools/list, a tool answered with JSON, a tool that sends
//! progress before its result, a sampling request answered by the client (where the version
//! has one), a notification on the GET stream (where the version has one), and close (DELETE).
//! Clients: `tests/interop/py/peer_client.py` (modes `legacy`, `auto`, `2026-07-28`) and
//! `tests/interop/ts/peer_client.mjs`. Servers: `tests/interop/py/peer_server.py` (stateful and
//! `stateless_http`, over HTTP and stdio), `tests/interop/ts/peer_server.mjs` (HTTP and stdio),
//! the rmcp fixture (`mcp-stdio-server`, HTTP and stdio) and the built-in demo.
//!
//! Afterwards every gateway must hold no session, no client connection, no busy upstream
//! connection and no stdio child beyond its shared stateless ones (metrics and /proc agree).

#[path = "support/process.rs"]
mod support;

#[path = "support/interop.rs"]
mod peers;

use std::time::{Duration, Instant};

use peers::{children_of, peers, run_all, run_client, Cell, Server};
use support::*;

/// Concurrent sessions per cell (the issue's floor).
const SESSIONS: usize = 20;
/// Cells run at once: each is a client process with `SESSIONS` sessions, and a stdio cell
/// makes the gateway start `SESSIONS` server processes; more does not fit 2 cores.
const CELLS_AT_ONCE: usize = 3;
/// The longest a cell may take (client start-up and 20 stdio children included).
const CELL_LIMIT: Duration = Duration::from_secs(150);
/// A client's own limit, below `CELL_LIMIT` so it reports instead of being killed.
const CLIENT_TIMEOUT_S: &str = "120";

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// The servers the matrix puts behind the gateway over HTTP.
struct HttpUpstreams {
    python: Server,
    python_stateless: Server,
    typescript: Server,
    rmcp: Server,
}

/// The Python SDK server over HTTP on a free port (`stateless`: `stateless_http`).
fn python_http(stateless: bool) -> Vec<String> {
    let p = peers();
    let mut cmd = vec![p.python.display().to_string(), p.py("peer_server.py")];
    cmd.extend(s(&["--transport", "http", "--port", "0"]));
    if stateless {
        cmd.push("--stateless".into());
    }
    cmd
}

fn http_upstreams() -> HttpUpstreams {
    let p = peers();
    let py = python_http;
    let ts = vec![
        p.node.display().to_string(),
        p.ts("peer_server.mjs"),
        "--transport".into(),
        "http".into(),
        "--port".into(),
        "0".into(),
    ];
    let rmcp = vec![
        fixture_bin("mcp-stdio-server").display().to_string(),
        "--http".into(),
        "127.0.0.1:0".into(),
    ];
    HttpUpstreams {
        python: Server::start("python-http", &py(false)),
        python_stateless: Server::start("python-http-stateless", &py(true)),
        typescript: Server::start("typescript-http", &ts),
        rmcp: Server::start("rmcp-http", &rmcp),
    }
}

/// stdio server commands, as `--upstream-cmd` takes them (quotes group words).
fn stdio_commands() -> Vec<(&'static str, String)> {
    let p = peers();
    vec![
        (
            "python-stdio",
            format!(
                "\"{}\" \"{}\" --transport stdio",
                p.python.display(),
                p.py("peer_server.py")
            ),
        ),
        (
            "typescript-stdio",
            format!(
                "\"{}\" \"{}\" --transport stdio",
                p.node.display(),
                p.ts("peer_server.mjs")
            ),
        ),
        (
            "rmcp-stdio",
            format!("\"{}\"", fixture_bin("mcp-stdio-server").display()),
        ),
    ]
}

/// A gateway with 2 shards in front of `upstream` (`--upstream URL`, `--upstream-cmd CMD`, or
/// nothing for the built-in demo).
fn gateway_for(upstream: &[&str]) -> Proc {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--shards",
        "2",
    ];
    args.extend_from_slice(upstream);
    Proc::start(&args)
}

/// A client process: `program script`, the matrix's common flags, then `args` (the Python
/// client takes everything after `--stdio` as the command, so that comes last).
fn client_cmd(
    program: &std::path::Path,
    script: String,
    label: &str,
    args: &[&str],
) -> Vec<String> {
    let mut cmd = vec![program.display().to_string(), script];
    cmd.extend(s(&["--sessions", &SESSIONS.to_string(), "--label", label]));
    cmd.extend(s(&["--timeout-s", CLIENT_TIMEOUT_S]));
    cmd.extend(s(args));
    cmd
}

/// The client commands of one HTTP target. `handshake`: its server speaks only the handshake
/// era, so a 2026-07-28 session expects the gateway to refuse the server's sampling request.
fn clients(url: &str, target: &str, handshake: bool) -> Vec<(String, Vec<String>)> {
    let p = peers();
    let mut out = Vec::new();
    for mode in ["legacy", "auto", "2026-07-28"] {
        let label = format!("python {mode} -> {target}");
        let mut args = vec!["--url", url, "--mode", mode];
        if handshake {
            args.push("--handshake-server");
        }
        let cmd = client_cmd(&p.python, p.py("peer_client.py"), &label, &args);
        out.push((label, cmd));
    }
    let label = format!("typescript -> {target}");
    let cmd = client_cmd(&p.node, p.ts("peer_client.mjs"), &label, &["--url", url]);
    out.push((label, cmd));
    out
}

/// The Python SDK as a stdio client of `shardcat forward`, each session its own process.
fn forward_clients(gateway_url: &str) -> Vec<(String, Vec<String>)> {
    let p = peers();
    let (python, server) = (p.python.display().to_string(), p.py("peer_server.py"));
    let mut out = Vec::new();
    for mode in ["legacy", "auto"] {
        for (how, tail) in [
            (
                "forward http",
                vec!["forward", "http", "--url", gateway_url],
            ),
            (
                "forward stdio",
                vec![
                    "forward",
                    "stdio",
                    "--",
                    &python,
                    &server,
                    "--transport",
                    "stdio",
                ],
            ),
        ] {
            let label = format!("python {mode} via {how} -> python");
            let mut args = vec!["--mode", mode, "--stdio", BIN];
            args.extend(tail);
            out.push((
                label.clone(),
                client_cmd(&p.python, p.py("peer_client.py"), &label, &args),
            ));
        }
    }
    out
}

/// What a gateway holds once every client is gone.
#[derive(Debug, PartialEq)]
struct Leftovers {
    sessions: f64,
    connections: f64,
    busy_upstream_connections: f64,
    stdio_processes: f64,
    child_processes: usize,
}

fn leftovers(gw: &Proc) -> Leftovers {
    let admin = gw.addr("admin");
    let m = |name: &str| metric(admin, name);
    Leftovers {
        sessions: m("shardcat_sessions"),
        connections: m("shardcat_connections"),
        busy_upstream_connections: m("shardcat_pool_open") - m("shardcat_pool_idle"),
        stdio_processes: m("shardcat_stdio_processes"),
        child_processes: children_of(gw.pid()).len(),
    }
}

/// Nothing left but the shared stateless stdio children (at most one per shard by default),
/// counted the same by the gateway and by /proc.
fn settled(l: &Leftovers) -> bool {
    l.sessions == 0.0
        && l.connections == 0.0
        && l.busy_upstream_connections == 0.0
        && l.stdio_processes <= 2.0
        && l.stdio_processes == l.child_processes as f64
}

fn table(cells: &[Cell]) -> String {
    let mut out =
        String::from("| cell | passed | versions | s | skipped |\n|---|---|---|---|---|\n");
    for c in cells {
        out.push_str(&format!(
            "| {} | {}/{} | {} | {:.1} | {} |\n",
            c.label,
            c.passed,
            c.sessions,
            c.versions.join(" "),
            c.secs,
            c.skipped.join("; ")
        ));
    }
    out
}

/// Starts the shared stateless child of each of a stdio gateway's 2 shards before the matrix:
/// in the matrix, a shard's first child starts while up to three cells start their own
/// per-session children, 40 and more Python interpreters on 2 cores, and took over the Python
/// SDK's 10 s `server/discover` timeout in CI. The cells test interop, not a cold start under
/// that load. A cold start alone is tested in tests/stdio.rs and below
/// (`stateless_requests_reach_a_python_sdk_stdio_server`).
fn warm_stateless_children(gw: &Proc, label: &str) {
    const DISCOVER: &str = r#"{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    let headers = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "server/discover"),
    ];
    // Each shard logs the era of its first stateless child once it answered.
    let eras = || {
        let e = gw.stderr();
        e.matches("speaks 2026-07-28").count()
            + e.matches("does not answer server/discover").count()
    };
    let addr = gw.addr("listen");
    let deadline = Instant::now() + Duration::from_secs(90);
    while eras() < 2 && Instant::now() < deadline {
        // New connections land on either shard (SO_REUSEPORT); each waits for its child.
        let _ = Client::connect(addr).post(addr, &headers, DISCOVER);
    }
    assert!(
        eras() >= 2,
        "{label}: the stateless children of both shards did not start within 90 s:\n{}",
        gw.stderr()
    );
}

#[test]
fn sdk_matrix_through_the_gateway() {
    let started = Instant::now();
    let p = peers();
    let ups = http_upstreams();
    let mut gateways: Vec<(String, Proc)> = vec![
        (
            "python".into(),
            gateway_for(&["--upstream", &ups.python.url()]),
        ),
        (
            "python stateless_http".into(),
            gateway_for(&["--upstream", &ups.python_stateless.url()]),
        ),
        (
            "typescript".into(),
            gateway_for(&["--upstream", &ups.typescript.url()]),
        ),
        ("rmcp".into(), gateway_for(&["--upstream", &ups.rmcp.url()])),
        ("demo".into(), gateway_for(&[])),
    ];
    for (label, cmd) in stdio_commands() {
        let gw = gateway_for(&["--upstream-cmd", &cmd]);
        warm_stateless_children(&gw, label);
        gateways.push((label.into(), gw));
    }
    let mut jobs: Vec<Box<dyn FnOnce() -> Cell + Send>> = Vec::new();
    for (target, gw) in &gateways {
        let url = format!("http://{}/mcp", gw.addr("listen"));
        let handshake = target.starts_with("typescript");
        for (label, cmd) in clients(&url, target, handshake) {
            jobs.push(Box::new(move || run_client(&label, &cmd, CELL_LIMIT)));
        }
    }
    let forward_url = format!("http://{}/mcp", gateways[0].1.addr("listen"));
    for (label, cmd) in forward_clients(&forward_url) {
        jobs.push(Box::new(move || run_client(&label, &cmd, CELL_LIMIT)));
    }
    let cells = run_all(CELLS_AT_ONCE, jobs);
    let report = table(&cells);
    eprintln!(
        "SDK matrix ({} cells, {SESSIONS} sessions each, {:.0} s, python {}):\n{report}",
        cells.len(),
        started.elapsed().as_secs_f64(),
        p.python.display()
    );
    let failed: Vec<String> = cells
        .iter()
        .filter(|c| !c.ok())
        .map(|c| {
            format!(
                "{}: {}/{}: {}",
                c.label,
                c.passed,
                c.sessions,
                c.failures.join(" | ")
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "failed cells:\n{}\n\n{report}",
        failed.join("\n")
    );
    for (label, gw) in &gateways {
        let mut last = leftovers(gw);
        let ok = eventually(Duration::from_secs(15), || {
            last = leftovers(gw);
            settled(&last)
        });
        assert!(
            ok,
            "{label}: the gateway still holds {last:?}\n{}",
            gw.stderr()
        );
    }
}

/// Scenarios that pass direct but fail through a gateway.
fn lost(direct: &[(String, bool)], through: &[(String, bool)]) -> Vec<String> {
    direct
        .iter()
        .filter(|(_, ok)| *ok)
        .filter(|(name, _)| !through.iter().any(|(n, ok)| n == name && *ok))
        .map(|(name, _)| name.clone())
        .collect()
}

fn passed(v: &[(String, bool)]) -> usize {
    v.iter().filter(|(_, ok)| *ok).count()
}

#[test]
fn conformance_scenarios_pass_through_the_gateway_as_they_do_direct() {
    // A guard against a hung suite, not a timing check: under load (CI beside other builds)
    // one run of the 32 scenarios through the stdio bridge took over 180 s.
    const LIMIT: Duration = Duration::from_secs(480);
    let p = peers();
    let server = Server::start("conformance-python", &python_http(false));
    let http = gateway_for(&["--upstream", &server.url()]);
    // Each scenario's session starts a Python child. The SDK matrix runs beside this test and
    // starts twenty at a time, so on 2 cores a child's start (the interpreter and the SDK's
    // imports) has taken longer than the default 30 s request timeout, and initialize got 504
    // (CI, twice). The limit here is for the child's first answer, not a timing check.
    let toml = format!(
        "[[upstream]]\nkind = \"stdio\"\ncommand = {:?}\nargs = [{:?}, \"--transport\", \"stdio\"]\n\n\
         [timeouts]\nupstream_request_timeout_ms = 120000\n",
        p.python.display().to_string(),
        p.py("peer_server.py")
    );
    let stdio = gateway_config(2, &toml);
    let url = |gw: &Proc| format!("http://{}/mcp", gw.addr("listen"));
    let direct = peers::conformance(&server.url(), LIMIT);
    let via_http = peers::conformance(&url(&http), LIMIT);
    let via_stdio = peers::conformance(&url(&stdio), LIMIT);
    // The demo, for the scenarios its tools cover (the others fail direct and are not counted).
    let demo = demo();
    let demo_gw = gateway_for(&["--upstream", &demo_url(&demo)]);
    let demo_direct = peers::conformance(&demo_url(&demo), LIMIT);
    let demo_via = peers::conformance(&url(&demo_gw), LIMIT);
    let n = direct.len();
    eprintln!(
        "conformance (server scenarios): python direct {}/{n}, through the gateway {}/{}, through the stdio bridge {}/{}; demo direct {}/{}, through the gateway {}/{}",
        passed(&direct),
        passed(&via_http),
        via_http.len(),
        passed(&via_stdio),
        via_stdio.len(),
        passed(&demo_direct),
        demo_direct.len(),
        passed(&demo_via),
        demo_via.len(),
    );
    for (name, ok) in &direct {
        eprintln!("  {name}: direct {ok}");
    }
    let lost_http = lost(&direct, &via_http);
    let lost_stdio = lost(&direct, &via_stdio);
    let lost_demo = lost(&demo_direct, &demo_via);
    // What the stdio bridge saw of its children, for a failure's cause: answers that came
    // after their request timed out, and children that were slow or stuck.
    let stdio_figures = [
        "shardcat_stdio_late_responses_total",
        "shardcat_stdio_timeouts_total",
        "shardcat_stdio_stuck_total",
        "shardcat_stdio_spawned_total",
    ]
    .map(|m| format!("{m} {}", metric(stdio.addr("admin"), m)))
    .join(", ");
    assert!(
        lost_http.is_empty() && lost_stdio.is_empty() && lost_demo.is_empty(),
        "scenarios that pass direct and fail through shardcat: HTTP {lost_http:?}, stdio {lost_stdio:?}, demo {lost_demo:?}\nstdio bridge: {stdio_figures}\n{}\n{}",
        http.stderr(),
        stdio.stderr()
    );
}

// ---------------------------------------------------------------------------------------------
// Answers the gateway side makes, checked against each version's schema by the Python SDK.

/// The JSON-RPC messages of a response: its JSON body, or the data of each SSE event.
fn messages(r: &Response) -> Vec<serde_json::Value> {
    let sse = r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream"));
    if !sse {
        return vec![r.json()];
    }
    r.text()
        .split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:").map(str::trim_start))
                .collect();
            serde_json::from_str(&data.join("\n")).ok()
        })
        .collect()
}

/// Schema-check items for the messages answering `method`: notifications, and the result.
fn items(label: &str, version: &str, method: &str, r: &Response) -> Vec<serde_json::Value> {
    assert_eq!(r.status, 200, "{label} {method}: {}", r.text());
    let mut out = Vec::new();
    for m in messages(r) {
        if let Some(n) = m["method"].as_str() {
            out.push(serde_json::json!({"label": format!("{label} {method}: {n}"), "version": version, "notification": n, "params": m["params"]}));
        } else {
            assert!(m.get("result").is_some(), "{label} {method}: {m}");
            out.push(serde_json::json!({"label": format!("{label} {method}"), "version": version, "method": method, "result": m["result"]}));
        }
    }
    out
}

const ENVELOPE: &str = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"progressToken":"t1"}"#;

/// A 2026-07-28 exchange with `addr`: discover, tools/list, a JSON tool call and one with progress.
fn stateless_items(
    label: &str,
    addr: std::net::SocketAddr,
    progress: &str,
) -> Vec<serde_json::Value> {
    let v = "2026-07-28";
    let mut out = Vec::new();
    let calls = [
        (
            "server/discover",
            None,
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{{{ENVELOPE}}}}}"#
            ),
        ),
        (
            "tools/list",
            None,
            format!(r#"{{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{{{ENVELOPE}}}}}"#),
        ),
        (
            "tools/call",
            Some("echo"),
            format!(
                r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"x"}},{ENVELOPE}}}}}"#
            ),
        ),
        (
            "tools/call",
            Some("progress"),
            format!(
                r#"{{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{{"name":"progress","arguments":{progress},{ENVELOPE}}}}}"#
            ),
        ),
    ];
    for (method, name, body) in calls {
        let mut h = vec![("mcp-protocol-version", v), ("mcp-method", method)];
        if let Some(n) = name {
            h.push(("mcp-name", n));
        }
        out.extend(items(label, v, method, &post(addr, &h, &body)));
    }
    out
}

/// A session of `version` with `addr`: initialize, ping, tools/list, and the two tool calls.
fn session_items(label: &str, addr: std::net::SocketAddr, version: &str) -> Vec<serde_json::Value> {
    let init = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"{version}","capabilities":{{}},"clientInfo":{{"name":"schema-check","version":"1"}}}}}}"#
    );
    let r = post(addr, &[], &init);
    let mut out = items(label, version, "initialize", &r);
    let sid = r.header("mcp-session-id").expect("session id").to_string();
    let h = [
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", version),
    ];
    assert_eq!(post(addr, &h, INITIALIZED).status, 202);
    let calls = [
        ("ping", r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#.to_string()),
        ("tools/list", r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#.to_string()),
        ("tools/call", echo_call(4, "x")),
        ("tools/call", r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"progress","arguments":{"count":2},"_meta":{"progressToken":"t"}}}"#.to_string()),
    ];
    for (method, body) in calls {
        out.extend(items(label, version, method, &post(addr, &h, &body)));
    }
    assert_eq!(delete(addr, &sid).status, 200);
    out
}

/// Feeds `items` to the SDK's validator; returns its report.
fn sdk_check(items: &[serde_json::Value]) -> serde_json::Value {
    use std::io::Write as _;
    let p = peers();
    let mut child = std::process::Command::new(&p.python)
        .arg(p.py("check_results.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run check_results.py");
    let mut stdin = child.stdin.take().expect("stdin");
    for i in items {
        writeln!(stdin, "{i}").expect("write item");
    }
    drop(stdin);
    let out = child.wait_with_output().expect("check_results.py");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check_results.py: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn demo_and_bridged_answers_match_each_versions_schema() {
    let p = peers();
    let demo = demo();
    let demo_addr = support::Proc::addr(&demo, "demo");
    let via_demo = gateway_for(&["--upstream", &demo_url(&demo)]);
    // A handshake-era stdio server (the TypeScript SDK answers server/discover with -32601):
    // the bridge translates, and its answers must have the 2026-07-28 shape.
    let ts = format!(
        "\"{}\" \"{}\" --transport stdio",
        p.node.display(),
        p.ts("peer_server.mjs")
    );
    let via_ts = gateway_for(&["--upstream-cmd", &ts]);
    // The same server over HTTP: 2026-07-28 requests go into the gateway's own session on it.
    let ts_http = Server::start(
        "schema-typescript-http",
        &s(&[
            &p.node.display().to_string(),
            &p.ts("peer_server.mjs"),
            "--transport",
            "http",
            "--port",
            "0",
        ]),
    );
    let via_ts_http = gateway_for(&["--upstream", &ts_http.url()]);
    let mut all = Vec::new();
    for (label, addr) in [
        ("demo", demo_addr),
        ("gateway+demo", via_demo.addr("listen")),
    ] {
        for v in ["2025-03-26", "2025-06-18", "2025-11-25"] {
            all.extend(session_items(label, addr, v));
        }
        all.extend(stateless_items(label, addr, r#"{"count":2}"#));
    }
    all.extend(stateless_items(
        "gateway+typescript stdio",
        via_ts.addr("listen"),
        r#"{"count":2,"interval_ms":1}"#,
    ));
    all.extend(stateless_items(
        "gateway+typescript http",
        via_ts_http.addr("listen"),
        r#"{"count":2,"interval_ms":1}"#,
    ));
    let report = sdk_check(&all);
    assert_eq!(report["checked"], all.len(), "{report}");
    assert_eq!(report["failures"], serde_json::json!([]), "{report:#}");
}

/// Bug 2 of the interop issue: a Python SDK stdio server refuses 2026-07-28 envelopes on a
/// connection initialized in the handshake era, so the gateway must speak to it as the
/// 2026-07-28 server it is, with no handshake.
#[test]
fn stateless_requests_reach_a_python_sdk_stdio_server() {
    let p = peers();
    let cmd = format!(
        "\"{}\" \"{}\" --transport stdio",
        p.python.display(),
        p.py("peer_server.py")
    );
    let gw = gateway_for(&["--upstream-cmd", &cmd]);
    let addr = gw.addr("listen");
    let h = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "echo"),
    ];
    for i in 0..4 {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"s{i}"}},{ENVELOPE}}}}}"#
        );
        let r = post(addr, &h, &body);
        assert_eq!(r.status, 200, "{}", r.text());
        let m = messages(&r).pop().expect("a message");
        assert_eq!(m["result"]["content"][0]["text"], format!("s{i}"), "{m}");
        assert_eq!(m["result"]["resultType"], "complete", "{m}");
    }
    assert!(gw.stderr().contains("speaks 2026-07-28"), "{}", gw.stderr());
}

/// The gateway's session on a handshake-era upstream is opened again when the upstream forgot
/// it (here: restarted), and the request that found it gone is sent once more: the client sees
/// nothing of it.
#[test]
fn a_bridged_session_the_upstream_forgot_is_opened_again() {
    let p = peers();
    let ts = |port: u16| {
        let port = port.to_string();
        let cmd = s(&[
            &p.node.display().to_string(),
            &p.ts("peer_server.mjs"),
            "--transport",
            "http",
            "--port",
            &port,
        ]);
        Server::start("bridge-typescript-http", &cmd)
    };
    let first = ts(0);
    let port = first.port;
    // No kept-alive upstream connections: the restart must show up as a forgotten session,
    // not as a pooled connection the old process closed.
    let gw = gateway(&first.url(), 1, Some("[upstream]\npool_max_idle = 0\n"));
    let addr = gw.addr("listen");
    let call = |i: u64| {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"r{i}"}},{ENVELOPE}}}}}"#
        );
        let h = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ];
        post(addr, &h, &body)
    };
    for i in 1..=2 {
        let r = call(i);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            messages(&r).pop().expect("message")["result"]["content"][0]["text"],
            format!("r{i}")
        );
    }
    drop(first);
    let _second = ts(port);
    let r = call(3);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.stderr());
    let m = messages(&r).pop().expect("message");
    assert_eq!(m["result"]["content"][0]["text"], "r3", "{m}");
    assert_eq!(m["id"], 3, "the client's id comes back: {m}");
    assert!(
        gw.stderr().contains("forgot the gateway's session"),
        "{}",
        gw.stderr()
    );
}
