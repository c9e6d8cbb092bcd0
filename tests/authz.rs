//! Authorization through the real gateway (2 shards): two API keys with different rules, 24
//! concurrent sessions. A denied tool is absent from `tools/list` and refused on `tools/call`
//! with -32003 naming it, without an upstream round trip (a counting upstream sees every
//! request), for a JSON answer and for an SSE answer.

#[path = "support/process.rs"]
mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;
use support::*;

/// Sessions run at once, half per key.
const SESSIONS: usize = 24;

const CI_KEY: &str = "sk-ci-7f3a9c0e51d24b68";
const OPS_KEY: &str = "sk-ops-2b8d4e6f10a3c597";

fn config() -> String {
    r#"
[auth]
mode = "api_key"
resource = "http://127.0.0.1/mcp"
rules_default = "deny"

[[auth.api_keys]]
name = "ci-bot"
sha256 = "62d3c2a35f6ffbd8e757eb02f59850d264faa37d4e316bb98defa8665ff57764"

[[auth.api_keys]]
name = "ops"
sha256 = "e2f64ac236e5d19efc65eff50a5128df219ca8a0e225f60ad53e9b0a9ce9dda8"

[[auth.rules]]
subjects = ["ci-*"]
allow_tools = ["echo"]

[[auth.rules]]
subjects = ["ops"]
allow_tools = ["*"]
deny_tools = ["*_delete"]
"#
    .to_string()
}

/// What the counting upstream saw.
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    calls: AtomicUsize,
    /// `tools/call` of anything but `echo`: the sessions call only `echo` where allowed, so
    /// any other name here went past authorization.
    forbidden_calls: AtomicUsize,
}

const TOOLS: &str = r#"[{"name":"echo","inputSchema":{"type":"object"}},{"name":"add","inputSchema":{"type":"object"}},{"name":"table_delete","inputSchema":{"type":"object"}}]"#;

/// A Streamable HTTP upstream on its own threads: sessions, tools/list and tools/call, as
/// JSON, or as SSE (a notification first) when the request's id is a string starting `sse`.
fn counting_upstream(seen: Arc<Seen>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let seen = seen.clone();
            std::thread::spawn(move || serve_upstream(conn, &seen));
        }
    });
    addr
}

fn serve_upstream(mut s: TcpStream, seen: &Seen) {
    use std::io::Write;
    let mut buf = Vec::new();
    while let Some((head, body)) = read_request(&mut s, &mut buf) {
        seen.requests.fetch_add(1, Ordering::SeqCst);
        let out = if head.starts_with("DELETE") {
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_string()
        } else {
            answer(&body, seen)
        };
        if s.write_all(out.as_bytes()).is_err() {
            return;
        }
    }
}

fn answer(body: &str, seen: &Seen) -> String {
    let msg: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let Some(id) = msg.get("id") else {
        return "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n".into();
    };
    let method = msg["method"].as_str().unwrap_or("");
    let result = match method {
        "initialize" => r#"{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"counting","version":"1"}}"#.to_string(),
        "tools/list" => format!(r#"{{"tools":{TOOLS},"nextCursor":"page-2"}}"#),
        "tools/call" => {
            seen.calls.fetch_add(1, Ordering::SeqCst);
            let name = msg["params"]["name"].as_str().unwrap_or("");
            if name != "echo" {
                seen.forbidden_calls.fetch_add(1, Ordering::SeqCst);
            }
            format!(r#"{{"content":[{{"type":"text","text":"called {name}"}}],"isError":false}}"#)
        }
        _ => "{}".to_string(),
    };
    let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#);
    let sid = "mcp-session-id: up-1\r\n";
    if id.as_str().is_some_and(|i| i.starts_with("sse")) {
        let note = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}"#;
        let events = format!("event: message\ndata: {note}\n\nevent: message\ndata: {line}\n\n");
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n{sid}transfer-encoding: chunked\r\n\r\n{:x}\r\n{events}\r\n0\r\n\r\n",
            events.len()
        )
    } else {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{sid}content-length: {}\r\n\r\n{line}",
            line.len()
        )
    }
}

/// The JSON-RPC message of an answer: the body, or the SSE event carrying a response.
fn message(r: &Response) -> Value {
    if r.header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream"))
    {
        let text = r.text();
        return text
            .split("\n\n")
            .filter_map(|ev| {
                let data: Vec<&str> = ev
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:").map(str::trim_start))
                    .collect();
                serde_json::from_str::<Value>(&data.join("\n")).ok()
            })
            .find(|m| m.get("result").is_some() || m.get("error").is_some())
            .unwrap_or_else(|| panic!("no response in {text}"));
    }
    r.json()
}

fn tool_names(m: &Value) -> Vec<String> {
    m["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {m}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap_or("").to_string())
        .collect()
}

/// One session of `key`: lists (JSON and SSE), one allowed and one denied call of each kind.
fn session(addr: SocketAddr, key: &str, allowed: &[&str], denied: &str) {
    let auth = format!("Bearer {key}");
    let mut c = Client::connect(addr);
    let mut post = |h: &[(&str, &str)], body: &str| c.post(addr, h, body).expect("request");
    let r = post(&[("authorization", &auth)], INIT);
    assert_eq!(r.status, 200, "initialize: {}", r.text());
    let sid = r.header("mcp-session-id").expect("session id").to_string();
    let h = [
        ("authorization", auth.as_str()),
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    assert_eq!(post(&h, INITIALIZED).status, 202);
    for id in ["2", r#""sse-2""#] {
        let list = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#);
        let m = message(&post(&h, &list));
        assert_eq!(tool_names(&m), allowed, "{key} lists (id {id})");
        assert_eq!(m["result"]["nextCursor"], "page-2", "the cursor is kept");
    }
    for id in ["3", r#""sse-3""#] {
        let call = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{denied}","arguments":{{}}}}}}"#
        );
        let r = post(&h, &call);
        assert_eq!(r.status, 200, "a JSON-RPC error: {}", r.text());
        let m = r.json();
        assert_eq!(m["error"]["code"], -32003, "{m}");
        assert!(
            m["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(denied),
            "{m}"
        );
        assert_eq!(m["id"].to_string(), id);
        let ok = call.replace(denied, allowed[0]);
        let m = message(&post(&h, &ok));
        assert_eq!(
            m["result"]["content"][0]["text"],
            format!("called {}", allowed[0])
        );
    }
    let del = format!(
        "DELETE /mcp HTTP/1.1\r\nhost: {addr}\r\nauthorization: {auth}\r\nmcp-session-id: {sid}\r\ncontent-length: 0\r\n\r\n"
    );
    assert_eq!(raw(addr, del.as_bytes()).status, 200);
}

#[test]
fn denied_tools_are_hidden_and_refused_without_an_upstream_round_trip() {
    let seen = Arc::new(Seen::default());
    let up = counting_upstream(seen.clone());
    let gw = gateway(&format!("http://{up}/mcp"), 2, Some(&config()));
    let addr = gw.addr("listen");
    let admin = gw.addr("admin");
    let threads: Vec<_> = (0..SESSIONS)
        .map(|i| {
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    session(addr, CI_KEY, &["echo"], "add");
                } else {
                    session(addr, OPS_KEY, &["echo", "add"], "table_delete");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a session failed");
    }
    // Each session made two allowed calls; no denied one reached the upstream.
    assert_eq!(seen.calls.load(Ordering::SeqCst), 2 * SESSIONS);
    assert_eq!(seen.forbidden_calls.load(Ordering::SeqCst), 0);
    // initialize, initialized, 2 lists, 2 allowed calls, DELETE per session.
    assert_eq!(seen.requests.load(Ordering::SeqCst), 7 * SESSIONS);
    let denied = metric(admin, r#"shardcat_auth_total{result="denied_tool"}"#);
    assert_eq!(denied as usize, 2 * SESSIONS);
    // Without a key: no session at all (authentication's answer).
    let r = post(addr, &[], INIT);
    assert_eq!(r.status, 401, "{}", r.text());
}
