//! `shardcat tools`: each route's tool list as its clients see it, after filters and
//! prefixes. It starts the gateway itself (this binary, one shard, on a loopback port of the
//! kernel's choosing, no admin) with the operator's config and asks it as a client would, so
//! what it prints is what the pipeline answers, not a second rendering of the rules.
//!
//! A blocking client (ureq) on the main thread: nothing here runs on a shard.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long the gateway may take to start, and each request to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Pages of one route's list read at most (a server that pages forever).
const MAX_PAGES: usize = 1000;
const VERSION: &str = "2025-11-25";

/// Prints the routes' tools; 0 when every route answered.
pub fn run(config: &str, authorization: Option<&str>) -> i32 {
    let file = match shardcat::config::FileConfig::load(config) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("shardcat tools: {e}");
            return 2;
        }
    };
    let paths = match route_paths(file) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("shardcat tools: {e}");
            return 2;
        }
    };
    let mut gw = match Gateway::start(config) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("shardcat tools: cannot start the gateway: {e}");
            return 1;
        }
    };
    let mut code = 0;
    for path in paths {
        let url = format!("http://{}{path}", gw.listen);
        match list_tools(&url, authorization) {
            Ok(tools) => {
                println!("{path}");
                for (name, description) in tools {
                    println!("  {name:<40} {description}");
                }
            }
            Err(e) => {
                eprintln!("shardcat tools: {path}: {e}");
                code = 1;
            }
        }
    }
    gw.stop();
    code
}

/// The configured routes' paths (validated as the gateway will validate them).
fn route_paths(file: shardcat::config::FileConfig) -> Result<Vec<String>, String> {
    let o = shardcat::config::Overrides::default();
    let demo = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    let config = file.resolve(&o, Some(demo)).map_err(|e| e.to_string())?;
    Ok(config.routes.iter().map(|r| r.path.clone()).collect())
}

/// The gateway, run as a child process of this one.
struct Gateway {
    child: Child,
    listen: String,
}

impl Gateway {
    fn start(config: &str) -> Result<Gateway, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .args(["--config", config, "--listen", "127.0.0.1:0"])
            .args(["--admin", "off", "--shards", "1"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("READY ") {
                    let listen = rest
                        .split_whitespace()
                        .find_map(|kv| kv.strip_prefix("listen="))
                        .map(str::to_string);
                    let _ = tx.send(listen);
                }
            }
        });
        let mut gw = Gateway {
            child,
            listen: String::new(),
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(listen)) => {
                gw.listen = listen.trim_start_matches("http://").to_string();
                Ok(gw)
            }
            _ => {
                gw.stop();
                Err("it did not become ready".into())
            }
        }
    }

    /// SIGTERM (a graceful stop: sessions end upstream), then wait.
    fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// One session on `url`: initialize, every page of tools/list, DELETE.
fn list_tools(url: &str, authorization: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let agent = ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build();
    let post = |sid: Option<&str>, body: String| {
        let mut req = agent
            .post(url)
            .set("accept", "application/json, text/event-stream")
            .set("content-type", "application/json")
            .set("mcp-protocol-version", VERSION);
        if let Some(a) = authorization {
            req = req.set("authorization", a);
        }
        if let Some(s) = sid {
            req = req.set("mcp-session-id", s);
        }
        req.send_string(&body).map_err(|e| e.to_string())
    };
    let init = format!(
        r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"{VERSION}","capabilities":{{}},"clientInfo":{{"name":"shardcat-tools","version":"{}"}}}}}}"#,
        env!("CARGO_PKG_VERSION")
    );
    let resp = post(None, init)?;
    let sid = resp.header("mcp-session-id").map(str::to_string);
    message(resp)?;
    post(
        sid.as_deref(),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.into(),
    )?;
    let mut tools = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 1..=MAX_PAGES {
        let params = match &cursor {
            Some(c) => serde_json::json!({ "cursor": c }),
            None => serde_json::json!({}),
        };
        let body = serde_json::json!({"jsonrpc": "2.0", "id": page, "method": "tools/list", "params": params});
        let result = message(post(sid.as_deref(), body.to_string())?)?;
        for t in result["tools"].as_array().into_iter().flatten() {
            let name = t["name"].as_str().unwrap_or("?").to_string();
            let description = t["description"].as_str().unwrap_or("");
            let line = description.lines().next().unwrap_or("").to_string();
            tools.push((name, line));
        }
        cursor = result["nextCursor"].as_str().map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    if let Some(s) = &sid {
        let mut req = agent.delete(url).set("mcp-session-id", s);
        if let Some(a) = authorization {
            req = req.set("authorization", a);
        }
        let _ = req.call();
    }
    Ok(tools)
}

/// The `result` of the JSON-RPC response a POST's answer holds (JSON or SSE).
fn message(resp: ureq::Response) -> Result<serde_json::Value, String> {
    let text = resp.into_string().map_err(|e| e.to_string())?;
    let candidates = std::iter::once(text.as_str()).chain(
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim),
    );
    for c in candidates {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(c) else {
            continue;
        };
        if let Some(e) = v.get("error") {
            return Err(format!("error {e}"));
        }
        if let Some(r) = v.get("result") {
            return Ok(r.clone());
        }
    }
    Err("no JSON-RPC response in the answer".into())
}
