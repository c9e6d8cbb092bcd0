//! Test support: starts the real `shardcat` binary (gateway or demo upstream) as a child process
//! and speaks raw HTTP/1.1 to it over real sockets.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_shardcat");

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub ready: HashMap<String, String>,
    pub stderr_path: std::path::PathBuf,
}

impl Proc {
    /// Starts `shardcat ARGS` and waits for its `READY k=v ...` line.
    pub fn start(args: &[&str]) -> Proc {
        let dir = std::env::temp_dir();
        let stderr_path = dir.join(format!(
            "shardcat-test-{}-{}.log",
            std::process::id(),
            unique()
        ));
        let stderr = std::fs::File::create(&stderr_path).expect("create log");
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn shardcat");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("READY ") {
                    let _ = tx.send(rest.to_string());
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!("shardcat {args:?} did not become ready; stderr:\n{log}");
            }
        };
        let ready = line
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Proc {
            child,
            ready,
            stderr_path,
        }
    }

    pub fn addr(&self, key: &str) -> SocketAddr {
        let v = &self.ready[key];
        let v = v.trim_start_matches("http://");
        let v = v.split('/').next().unwrap_or(v);
        v.parse().expect("address")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Where each open fd of the process points (sockets as `socket:[inode]`).
    pub fn fd_list(&self) -> String {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", self.pid())) else {
            return String::new();
        };
        dir.filter_map(Result::ok)
            .map(|e| {
                format!(
                    "{}->{}",
                    e.file_name().to_string_lossy(),
                    std::fs::read_link(e.path())
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Open file descriptors of the process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The demo upstream, alone.
pub fn demo() -> Proc {
    Proc::start(&[
        "demo-upstream",
        "--listen",
        "127.0.0.1:0",
        "--push-interval-ms",
        "50",
    ])
}

/// A gateway in front of `upstream` (a URL), with an optional TOML config.
pub fn gateway(upstream: &str, shards: usize, toml: Option<&str>) -> Proc {
    let shards = shards.to_string();
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--upstream",
        upstream,
        "--shards",
        &shards,
    ];
    let path;
    if let Some(t) = toml {
        path = std::env::temp_dir().join(format!(
            "shardcat-test-{}-{}.toml",
            std::process::id(),
            unique()
        ));
        std::fs::write(&path, t).expect("write config");
        args.push("--config");
        args.push(path.to_str().expect("utf-8 path"));
    }
    Proc::start(&args)
}

/// A gateway configured by `toml` alone (its upstream named there), on port 0.
pub fn gateway_config(shards: usize, toml: &str) -> Proc {
    let path = std::env::temp_dir().join(format!(
        "shardcat-test-{}-{}.toml",
        std::process::id(),
        unique()
    ));
    std::fs::write(&path, toml).expect("write config");
    let shards = shards.to_string();
    Proc::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--shards",
        &shards,
        "--config",
        path.to_str().expect("utf-8 path"),
    ])
}

pub fn demo_url(demo: &Proc) -> String {
    demo.ready["demo"].clone()
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The JSON-RPC error code of the body.
    pub fn rpc_code(&self) -> i64 {
        self.json()["error"]["code"]
            .as_i64()
            .expect("JSON-RPC error code")
    }
}

/// A keep-alive HTTP/1.1 client connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send_raw(&mut self, raw: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(raw)
    }

    /// Reads one response (Content-Length, chunked, or until close).
    pub fn read_response(&mut self) -> std::io::Result<Response> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) =
                resp.parse(&self.buf).map_err(std::io::Error::other)?
            {
                let status = resp.code.unwrap_or(0);
                let hs: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                self.buf.drain(..n);
                let body = self.read_body(&hs, status)?;
                return Ok(Response {
                    status,
                    headers: hs,
                    body,
                });
            }
            self.fill()?;
        }
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 16384];
        let n = self.stream.read(&mut tmp)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    fn read_body(&mut self, hs: &[(String, String)], status: u16) -> std::io::Result<Vec<u8>> {
        let get = |n: &str| {
            hs.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        if status < 200 || status == 204 || status == 304 {
            return Ok(Vec::new());
        }
        if let Some(len) = get("content-length") {
            let len: usize = len.trim().parse().map_err(std::io::Error::other)?;
            while self.buf.len() < len {
                self.fill()?;
            }
            return Ok(self.buf.drain(..len).collect());
        }
        if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            return self.read_chunked();
        }
        let mut out = std::mem::take(&mut self.buf);
        let _ = self.stream.read_to_end(&mut out);
        Ok(out)
    }

    fn read_chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                self.fill()?;
            };
            let size_str = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
            let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
                .map_err(std::io::Error::other)?;
            self.buf.drain(..line_end + 2);
            while self.buf.len() < size + 2 {
                self.fill()?;
            }
            out.extend(self.buf.drain(..size));
            self.buf.drain(..2);
            if size == 0 {
                return Ok(out);
            }
        }
    }

    /// Sends an MCP POST and reads the response.
    pub fn post(
        &mut self,
        addr: SocketAddr,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::io::Result<Response> {
        let mut req = format!(
            "POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.send_raw(req.as_bytes())?;
        self.read_response()
    }

    /// Whether the server closed the connection: EOF (or a reset) within the timeout. A
    /// connection still open when the timeout passes is not closed.
    pub fn is_closed(&mut self) -> bool {
        let _ = self.stream.set_read_timeout(Some(Duration::from_secs(3)));
        let mut b = [0u8; 1];
        match self.stream.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }
}

/// One request on a fresh connection.
pub fn post(addr: SocketAddr, headers: &[(&str, &str)], body: &str) -> Response {
    Client::connect(addr)
        .post(addr, headers, body)
        .expect("request")
}

/// A raw request on a fresh connection.
pub fn raw(addr: SocketAddr, request: &[u8]) -> Response {
    let mut c = Client::connect(addr);
    c.send_raw(request).expect("send");
    c.read_response().expect("response")
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
}

#[path = "exposition.rs"]
pub mod exposition;

/// A figure from the admin endpoint's `/metrics`: the sum over every series of the family that
/// carries the labels given (see `exposition::sum`), e.g. `shardcat_sessions` summed over
/// shards, or `shardcat_requests_total{shard="0"}` over that shard's methods and statuses.
/// Panics when no series matches.
pub fn metric(admin: SocketAddr, series: &str) -> f64 {
    let text = get(admin, "/metrics").text();
    exposition::sum(&text, series).unwrap_or_else(|| panic!("metric {series} missing"))
}

/// Polls until `f` holds or the time runs out; returns whether it held.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"test","version":"1"}}}"#;
pub const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

pub fn echo_call(id: u64, text: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{text}"}}}}}}"#
    )
}

/// DELETEs session `sid` on a fresh connection.
pub fn delete(addr: SocketAddr, sid: &str) -> Response {
    raw(
        addr,
        format!("DELETE /mcp HTTP/1.1\r\nhost: {addr}\r\nmcp-session-id: {sid}\r\ncontent-length: 0\r\n\r\n")
            .as_bytes(),
    )
}

/// Initializes a session through `addr`; returns the gateway's session id.
pub fn initialize(addr: SocketAddr) -> String {
    let r = post(addr, &[], INIT);
    assert_eq!(r.status, 200, "initialize failed: {}", r.text());
    r.header("mcp-session-id").expect("session id").to_string()
}

/// Reads one request (head and Content-Length body) for the test's own upstreams, keeping any
/// bytes that follow in `buf`. `None` when the peer closed.
pub fn read_request(s: &mut std::net::TcpStream, buf: &mut Vec<u8>) -> Option<(String, String)> {
    let mut tmp = [0u8; 8192];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_string();
            let lower = head.to_ascii_lowercase();
            let len: usize = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap_or(0));
            while buf.len() < i + 4 + len {
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            }
            let body = String::from_utf8_lossy(&buf[i + 4..i + 4 + len]).to_string();
            buf.drain(..i + 4 + len);
            return Some((head, body));
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

/// A binary of the `fixtures` crate, built by `cargo test --workspace` beside the test's own.
pub fn fixture_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}
