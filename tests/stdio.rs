//! stdio upstreams and forward mode, against real child processes: the rmcp server kept in
//! `fixtures/` (`mcp-stdio-server`), started by the gateway itself.
//!
//! The fixture is built by `cargo test --workspace` (its own crate's test needs it), into the
//! same target directory as this test.

#[path = "support/process.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

fn fixture() -> PathBuf {
    fixture_bin("mcp-stdio-server")
}

/// A gateway whose upstream is the fixture, with extra TOML lines for the upstream table and
/// the timeouts.
fn stdio_gateway(shards: usize, upstream_extra: &str, timeouts: &str) -> Proc {
    let toml = format!(
        "[[upstream]]\nkind = \"stdio\"\ncommand = \"{}\"\nkill_grace_ms = 500\n{upstream_extra}\n[timeouts]\n{timeouts}\n",
        fixture().display()
    );
    gateway_config(shards, &toml)
}

fn call(id: u64, tool: &str, args: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{args}}}}}"#
    )
}

/// The 2026-07-28 envelope every stateless request carries in `params._meta`.
const ENVELOPE: &str = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#;

/// A 2026-07-28 tools/call.
fn stateless_call(id: u64, tool: &str, args: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{args},{ENVELOPE}}}}}"#
    )
}

/// initialize + notifications/initialized; returns the session id.
fn open_session(addr: SocketAddr) -> String {
    let sid = initialize(addr);
    let r = post(addr, &[("mcp-session-id", &sid)], INITIALIZED);
    assert_eq!(r.status, 202, "{}", r.text());
    sid
}

fn session_call(addr: SocketAddr, sid: &str, body: &str) -> Response {
    post(
        addr,
        &[
            ("mcp-session-id", sid),
            ("mcp-protocol-version", "2025-06-18"),
        ],
        body,
    )
}

fn tool_text(r: &Response) -> String {
    let v = r.json();
    v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no tool text in {v}"))
        .to_string()
}

/// SSE events' data payloads, parsed.
fn events(r: &Response) -> Vec<serde_json::Value> {
    r.text()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).expect("event data is JSON"))
        .collect()
}

/// Child processes of `pid`, with their state letter (Z: zombie).
fn children_of(pid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        if f.next().and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            out.push((child, state));
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn session_json_sse_get_stream_and_delete() {
    let gw = stdio_gateway(2, "args = [\"--notify-unsolicited-ms\", \"50\"]", "");
    let addr = gw.addr("listen");
    let sid = open_session(addr);

    let r = session_call(addr, &sid, &call(7, "echo", r#"{"text":"hi"}"#));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["id"], 7);
    assert_eq!(tool_text(&r), "hi");

    // Progress before the result: SSE, with the client's token and id restored.
    let body = r#"{"jsonrpc":"2.0","id":"p-1","method":"tools/call","params":{"name":"progress","arguments":{"count":3,"interval_ms":5},"_meta":{"progressToken":"tok"}}}"#;
    let r = session_call(addr, &sid, body);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let ev = events(&r);
    let progress: Vec<_> = ev
        .iter()
        .filter(|e| e["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), 3, "{ev:?}");
    assert!(progress
        .iter()
        .all(|e| e["params"]["progressToken"] == "tok"));
    let last = ev.last().expect("events");
    assert_eq!(last["id"], "p-1");
    assert_eq!(last["result"]["content"][0]["text"], "done");

    // A logging notification during a call travels with that call.
    let r = session_call(addr, &sid, &call(8, "log", r#"{"text":"note"}"#));
    let ev = events(&r);
    assert_eq!(ev[0]["method"], "notifications/message", "{ev:?}");
    assert_eq!(ev.last().expect("events")["id"], 8);

    // Messages about no request go to the GET stream.
    let mut c = Client::connect(addr);
    c.send_raw(
        format!("GET /mcp HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\nmcp-session-id: {sid}\r\n\r\n")
            .as_bytes(),
    )
    .expect("send");
    let mut reader = BufReader::new(c.stream.try_clone().expect("clone"));
    let mut seen = String::new();
    let mut line = String::new();
    while !seen.contains("\"seq\"") {
        line.clear();
        assert!(
            reader.read_line(&mut line).expect("stream read") > 0,
            "stream ended: {seen}"
        );
        seen.push_str(&line);
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    // One GET stream per session.
    let mut g2 = Client::connect(addr);
    g2.send_raw(
        format!("GET /mcp HTTP/1.1\r\nhost: {addr}\r\nmcp-session-id: {sid}\r\n\r\n").as_bytes(),
    )
    .expect("send");
    assert_eq!(g2.read_response().expect("response").status, 409);
    drop(reader);
    drop(c);

    let pid: u32 = tool_text(&session_call(addr, &sid, &call(9, "pid", "{}")))
        .parse()
        .expect("pid");
    assert!(alive(pid));
    let del = delete(addr, &sid);
    assert_eq!(del.status, 200);
    assert_eq!(
        session_call(addr, &sid, &call(10, "echo", r#"{"text":"x"}"#)).status,
        404
    );
    assert!(
        eventually(Duration::from_secs(5), || !alive(pid)),
        "child {pid} outlived its session"
    );
    let admin = gw.addr("admin");
    assert!(eventually(Duration::from_secs(5), || metric(
        admin,
        "shardcat_stdio_processes"
    ) == 0.0));
}

#[test]
fn server_request_answered_by_the_client() {
    let gw = stdio_gateway(1, "", "");
    let addr = gw.addr("listen");
    let sid = open_session(addr);
    // The call's answer stays open until the client answers the server's sampling request.
    let mut c = Client::connect(addr);
    let body = call(3, "sample", r#"{"prompt":"2+2?"}"#);
    c.send_raw(
        format!(
            "POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nmcp-session-id: {sid}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .expect("send");
    let mut reader = BufReader::new(c.stream.try_clone().expect("clone"));
    let mut line = String::new();
    let request = loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).expect("read") > 0,
            "stream ended"
        );
        if let Some(d) = line.trim_end().strip_prefix("data: ") {
            break serde_json::from_str::<serde_json::Value>(d).expect("json");
        }
    };
    assert_eq!(request["method"], "sampling/createMessage", "{request}");
    let answer = format!(
        r#"{{"jsonrpc":"2.0","id":{},"result":{{"role":"assistant","content":{{"type":"text","text":"four"}},"model":"m"}}}}"#,
        request["id"]
    );
    assert_eq!(session_call(addr, &sid, &answer).status, 202);
    let result = loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).expect("read") > 0,
            "stream ended"
        );
        if let Some(d) = line.trim_end().strip_prefix("data: ") {
            break serde_json::from_str::<serde_json::Value>(d).expect("json");
        }
    };
    assert_eq!(result["id"], 3);
    assert!(
        result["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or("")
            .contains("four"),
        "{result}"
    );
}

#[test]
fn stateless_requests_are_multiplexed_on_shared_children() {
    let gw = stdio_gateway(1, "stateless_children = 2", "");
    let addr = gw.addr("listen");
    let headers = |method: &'static str, name: Option<&'static str>| {
        let mut h = vec![
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", method),
        ];
        if let Some(n) = name {
            h.push(("mcp-name", n));
        }
        h
    };
    let r = post(
        addr,
        &headers("server/discover", None),
        &format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{{{ENVELOPE}}}}}"#
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    // The rmcp fixture speaks 2026-07-28 itself: its own discover answer comes back.
    let versions = v["result"]["supportedVersions"].as_array().cloned();
    assert!(
        versions.unwrap_or_default().contains(&"2026-07-28".into()),
        "{v}"
    );
    assert_eq!(
        v["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "mcp-stdio-server"
    );
    // Concurrent requests with clashing ids: each gets its own answer.
    let threads: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                let h = [
                    ("mcp-protocol-version", "2026-07-28"),
                    ("mcp-method", "tools/call"),
                    ("mcp-name", "echo"),
                ];
                let text = format!("t{i}");
                let r = post(
                    addr,
                    &h,
                    &stateless_call(1, "echo", &format!(r#"{{"text":"{text}"}}"#)),
                );
                (text, r)
            })
        })
        .collect();
    for t in threads {
        let (text, r) = t.join().expect("thread");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["id"], 1);
        assert_eq!(tool_text(&r), text);
    }
    let admin = gw.addr("admin");
    assert_eq!(metric(admin, "shardcat_stdio_spawned_total"), 2.0);
}

#[test]
fn crash_fails_pending_requests_and_ends_the_session() {
    let gw = stdio_gateway(1, "", "");
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let sid = open_session(addr);
    let slow = {
        let sid = sid.clone();
        std::thread::spawn(move || session_call(addr, &sid, &call(1, "sleep", r#"{"ms":10000}"#)))
    };
    std::thread::sleep(Duration::from_millis(200));
    let r = session_call(addr, &sid, &call(2, "crash", r#"{"code":3}"#));
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["id"], 2);
    assert_eq!(r.rpc_code(), -32000);
    let r = slow.join().expect("thread");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["id"], 1);
    assert_eq!(
        session_call(addr, &sid, &call(3, "echo", r#"{"text":"x"}"#)).status,
        404
    );
    // The session ends as soon as the child's stdout closes; the crash is counted once reaped.
    assert!(eventually(Duration::from_secs(3), || {
        metric(admin, "shardcat_stdio_crashes_total") == 1.0
    }));
    assert_eq!(metric(admin, "shardcat_sessions"), 0.0);
    assert!(eventually(Duration::from_secs(3), || children_of(gw.pid()).is_empty()));
}

#[test]
fn unanswered_request_times_out_and_the_child_lives_on() {
    let gw = stdio_gateway(1, "", "upstream_request_timeout_ms = 800");
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let sid = open_session(addr);
    let r = session_call(addr, &sid, &call(4, "hang", "{}"));
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["id"], 4);
    let r = session_call(addr, &sid, &call(5, "echo", r#"{"text":"still here"}"#));
    assert_eq!(tool_text(&r), "still here");
    assert_eq!(metric(admin, "shardcat_stdio_timeouts_total"), 1.0);
    assert_eq!(metric(admin, "shardcat_stdio_cancelled_total"), 1.0);
}

#[test]
fn a_child_that_stops_reading_is_ended() {
    let gw = stdio_gateway(1, "", "upstream_request_timeout_ms = 500");
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let sid = open_session(addr);
    assert_eq!(
        tool_text(&session_call(addr, &sid, &call(1, "stall_stdin", "{}"))),
        "stalled"
    );
    // Fill the socket toward the child until the gateway notices it no longer drains.
    let big = "x".repeat(256 * 1024);
    let ended = eventually(Duration::from_secs(20), || {
        let r = session_call(
            addr,
            &sid,
            &call(2, "echo", &format!(r#"{{"text":"{big}"}}"#)),
        );
        r.status == 404
    });
    assert!(ended, "the stalled child's session never ended");
    assert_eq!(metric(admin, "shardcat_stdio_stuck_total"), 1.0);
    assert!(eventually(Duration::from_secs(3), || children_of(gw.pid()).is_empty()));
}

#[test]
fn stderr_is_logged_bounded() {
    let gw = stdio_gateway(1, "stderr_lines_per_s = 5", "");
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let sid = open_session(addr);
    let r = session_call(addr, &sid, &call(1, "stderr", r#"{"lines":200}"#));
    assert_eq!(r.status, 200);
    assert!(eventually(Duration::from_secs(3), || {
        metric(admin, "shardcat_stdio_stderr_suppressed_total") >= 190.0
    }));
    let log = gw.stderr();
    assert!(log.contains("stderr line 1 of 200"), "{log}");
    assert!(!log.contains("stderr line 150 of 200"));
}

#[test]
fn process_bound_rejects_new_sessions() {
    let gw = stdio_gateway(1, "max_processes = 2", "");
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let _a = open_session(addr);
    let _b = open_session(addr);
    let r = post(addr, &[], INIT);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        metric(admin, "shardcat_rejections_total{reason=\"processes\"}"),
        1.0
    );
    assert_eq!(metric(admin, "shardcat_sessions"), 2.0);
}

#[test]
fn prewarmed_children_take_initialize() {
    let gw = stdio_gateway(1, "prewarm = 2", "");
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let procs = |n| move || metric(admin, "shardcat_stdio_processes") == n;
    assert!(eventually(Duration::from_secs(3), procs(2.0)));
    let sid = open_session(addr);
    assert_eq!(metric(admin, "shardcat_stdio_prewarm_hits_total"), 1.0);
    // The pool refills: two waiting plus the session's own.
    assert!(eventually(Duration::from_secs(3), procs(3.0)));
    assert_eq!(
        tool_text(&session_call(
            addr,
            &sid,
            &call(1, "echo", r#"{"text":"w"}"#)
        )),
        "w"
    );
}

#[test]
fn idle_expiry_and_shutdown_end_every_child() {
    let mut gw = stdio_gateway(2, "prewarm = 1", "session_idle_timeout_ms = 1000");
    let addr = gw.addr("listen");
    let sid = open_session(addr);
    let pid: u32 = tool_text(&session_call(addr, &sid, &call(1, "pid", "{}")))
        .parse()
        .expect("pid");
    assert!(
        eventually(Duration::from_secs(6), || !alive(pid)),
        "idle session's child lives on"
    );
    assert_eq!(
        session_call(addr, &sid, &call(2, "echo", r#"{"text":"x"}"#)).status,
        404
    );
    let _live = open_session(addr);
    let gpid = gw.pid();
    assert!(!children_of(gpid).is_empty());
    let kids: Vec<u32> = children_of(gpid).into_iter().map(|(p, _)| p).collect();
    assert_eq!(gw.terminate(Duration::from_secs(10)), Some(0));
    for k in kids {
        assert!(!alive(k), "child {k} outlived the gateway");
    }
}

#[test]
fn churn_of_500_sessions_leaks_nothing() {
    let gw = stdio_gateway(2, "", "");
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    // Warm up once so lazily opened fds (the runtime's own) are in the baseline.
    let sid = open_session(addr);
    delete(addr, &sid);
    assert!(eventually(Duration::from_secs(5), || children_of(gw.pid()).is_empty()));
    // Baseline once the warm-up's client connections are closed too.
    assert!(eventually(Duration::from_secs(5), || {
        metric(admin, "shardcat_connections") == 0.0
    }));
    // The warm-up child's sockets close a moment after it is reaped: wait for a steady count.
    let mut fds_before = gw.fd_count();
    assert!(eventually(Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = gw.fd_count();
        std::mem::replace(&mut fds_before, now) == now
    }));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            std::thread::spawn(move || {
                for i in 0..125u64 {
                    let sid = open_session(addr);
                    let text = format!("w{w}i{i}");
                    let r = session_call(addr, &sid, &call(i, "echo", &format!(r#"{{"text":"{text}"}}"#)));
                    assert_eq!(tool_text(&r), text);
                    // Every fourth session is left for the client to abandon mid-call.
                    if i % 4 == 0 {
                        let mut c = Client::connect(addr);
                        let body = call(99, "sleep", r#"{"ms":5000}"#);
                        let _ = c.send_raw(format!("POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\nmcp-session-id: {sid}\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes());
                        std::thread::sleep(Duration::from_millis(30));
                    }
                    let del = delete(addr, &sid);
                    assert_eq!(del.status, 200);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    assert_eq!(metric(admin, "shardcat_stdio_spawned_total"), 501.0);
    assert!(
        eventually(Duration::from_secs(10), || children_of(gw.pid()).is_empty()),
        "children left: {:?}",
        children_of(gw.pid())
    );
    assert!(
        eventually(Duration::from_secs(10), || gw.fd_count() == fds_before),
        "fds {} before, {} after:\n{}",
        fds_before,
        gw.fd_count(),
        gw.fd_list()
    );
    assert_eq!(metric(admin, "shardcat_sessions"), 0.0);
    assert_eq!(metric(admin, "shardcat_stdio_processes"), 0.0);
    assert_eq!(metric(admin, "shardcat_stdio_exited_total"), 501.0);
    assert_eq!(metric(admin, "shardcat_stdio_crashes_total"), 0.0);
}

/// `shardcat forward ...` with piped stdin and stdout.
fn forward(args: &[&str]) -> std::process::Child {
    Command::new(BIN)
        .arg("forward")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn forward")
}

fn read_json_line(r: &mut impl BufRead) -> serde_json::Value {
    let mut line = String::new();
    assert!(r.read_line(&mut line).expect("read") > 0, "stdout closed");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn forward_stdio_relays_both_ways_and_ends_with_the_client() {
    let fx = fixture();
    let mut p = forward(&["stdio", "--", fx.to_str().expect("path")]);
    let mut stdin = p.stdin.take().expect("stdin");
    let mut out = BufReader::new(p.stdout.take().expect("stdout"));
    writeln!(stdin, "{INIT}").expect("write");
    assert_eq!(
        read_json_line(&mut out)["result"]["serverInfo"]["name"],
        "mcp-stdio-server"
    );
    writeln!(stdin, "{INITIALIZED}").expect("write");
    writeln!(stdin, "{}", call(2, "echo", r#"{"text":"through"}"#)).expect("write");
    let v = read_json_line(&mut out);
    assert_eq!(v["id"], 2);
    assert_eq!(v["result"]["content"][0]["text"], "through");
    drop(stdin);
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("read");
    let status = p.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "{rest}");
}

#[test]
fn forward_http_keeps_the_session_and_the_stream() {
    let demo = demo();
    let url = demo_url(&demo);
    let mut p = forward(&["http", "--url", &url]);
    let mut stdin = p.stdin.take().expect("stdin");
    let mut out = BufReader::new(p.stdout.take().expect("stdout"));
    writeln!(stdin, "{INIT}").expect("write");
    assert_eq!(read_json_line(&mut out)["id"], 1);
    writeln!(stdin, "{INITIALIZED}").expect("write");
    let progress = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"progress","arguments":{"count":2,"interval_ms":5},"_meta":{"progressToken":"pt"}}}"#;
    writeln!(stdin, "{progress}").expect("write");
    let mut got_progress = 0;
    let mut got_result = false;
    let mut got_stream = false;
    while !(got_result && got_stream) {
        let v = read_json_line(&mut out);
        if v["method"] == "notifications/progress" {
            got_progress += 1;
        } else if v["id"] == 2 {
            got_result = true;
        } else if v["method"] == "notifications/message" {
            got_stream = true;
        }
    }
    assert_eq!(got_progress, 2);
    let stats = |d: &Proc| get(d.addr("demo"), "/stats").json()["sessions"].as_u64();
    assert_eq!(stats(&demo), Some(1));
    drop(stdin);
    let status = p.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    assert_eq!(stats(&demo), Some(0), "forward did not end its session");
}

#[test]
fn forward_http_reinitializes_an_expired_session() {
    let demo = demo();
    // A gateway that ends sessions one second after they began stands in for a remote server
    // (an idle timeout would not do: forward keeps the session's GET stream open, and a
    // session whose stream is read is not idle).
    let gw = gateway(
        &demo_url(&demo),
        1,
        Some("[timeouts]\nsession_idle_timeout_ms = 1000\nsession_max_age_ms = 1000\n"),
    );
    let url = format!("http://{}/mcp", gw.addr("listen"));
    let mut p = forward(&["http", "--url", &url]);
    let mut stdin = p.stdin.take().expect("stdin");
    let mut out = BufReader::new(p.stdout.take().expect("stdout"));
    writeln!(stdin, "{INIT}").expect("write");
    assert_eq!(read_json_line(&mut out)["id"], 1);
    writeln!(stdin, "{INITIALIZED}").expect("write");
    let admin = gw.addr("admin");
    let expired = || metric(admin, "shardcat_sessions_max_age_total") >= 1.0;
    assert!(
        eventually(Duration::from_secs(6), expired),
        "session never expired"
    );
    // The next call meets a 404; forward initializes again and sends it once more.
    writeln!(stdin, "{}", call(5, "echo", r#"{"text":"after expiry"}"#)).expect("write");
    let v = loop {
        let v = read_json_line(&mut out);
        if v["id"] == 5 {
            break v;
        }
    };
    assert_eq!(v["result"]["content"][0]["text"], "after expiry", "{v}");
    assert!(metric(admin, "shardcat_sessions_created_total") >= 2.0);
    drop(stdin);
    assert_eq!(p.wait().expect("wait").code(), Some(0));
}
