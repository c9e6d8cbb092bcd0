//! Recording through the gateway: real gateway, real demo upstream (or stdio child), real tape
//! files, read back with the real `shardcat tape` and `shardcat replay` commands.

#[path = "support/process.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "shardcat-recording-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn tape_cmd(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("tape")
        .args(args)
        .output()
        .expect("run shardcat tape");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Session ids of `tape list` whose message count is at least `min_msgs`.
fn sessions(dir: &str, min_msgs: u64) -> Vec<String> {
    let (code, out) = tape_cmd(&["list", dir]);
    assert_eq!(code, 0, "{out}");
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let msgs: u64 = f.get(3)?.parse().ok()?;
            (msgs >= min_msgs).then(|| f[0].to_string())
        })
        .collect()
}

/// The `tapes: offered N queued N dropped N written N ...` line the gateway logs at exit.
fn tape_totals(log: &str) -> Vec<(String, u64)> {
    let line = log
        .lines()
        .find(|l| l.contains("tapes: offered"))
        .unwrap_or_else(|| panic!("no tape totals in the log:\n{log}"));
    let words: Vec<&str> = line
        .split("tapes: ")
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    words
        .chunks(2)
        .map(|c| (c[0].to_string(), c[1].parse().expect("count")))
        .collect()
}

fn total(t: &[(String, u64)], k: &str) -> u64 {
    t.iter().find(|(n, _)| n == k).map(|(_, v)| *v).expect(k)
}

fn call(id: u64, tool: &str, args: Value) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}})
        .to_string()
}

/// What a client sees of one session's calls: each result, in order.
fn run_calls(addr: SocketAddr) -> Vec<Value> {
    let init = post(addr, &[], INIT);
    assert_eq!(init.status, 200, "{}", init.text());
    let sid = init.header("mcp-session-id").expect("sid").to_string();
    let h = [
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    assert_eq!(post(addr, &h, INITIALIZED).status, 202);
    let mut seen = vec![init.json()["result"]["serverInfo"].clone()];
    for body in [
        call(2, "echo", json!({"text": "hello tape"})),
        call(3, "add", json!({"a": 2, "b": 40})),
        call(4, "progress", json!({"count": 3, "interval_ms": 5})),
    ] {
        let r = post(addr, &h, &body);
        assert_eq!(r.status, 200, "{}", r.text());
        let last = if r.header("content-type") == Some("text/event-stream") {
            let events: Vec<Value> = r
                .text()
                .lines()
                .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .filter(|d| !d.trim().is_empty())
                .map(|d| serde_json::from_str(d).expect("json"))
                .collect();
            events.last().cloned().expect("events")
        } else {
            r.json()
        };
        seen.push(json!({"id": last["id"], "result": last["result"]}));
    }
    let del = delete(addr, &sid);
    assert_eq!(del.status, 200);
    seen
}

#[test]
fn a_recorded_session_replays_with_the_same_results() {
    let demo = demo();
    let dir = temp_dir("replay");
    let d = dir.to_str().expect("path");
    let mut gw = gateway(
        &demo_url(&demo),
        2,
        Some(&format!("[tapes]\ndir = \"{d}\"\n")),
    );
    let through_gateway = run_calls(gw.addr("listen"));
    // A stateless exchange is its own tape session.
    let h = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "echo"),
    ];
    assert_eq!(
        post(
            gw.addr("listen"),
            &h,
            &call(9, "echo", json!({"text": "s"}))
        )
        .status,
        200
    );
    assert_eq!(gw.terminate(Duration::from_secs(10)), Some(0));

    // SIGTERM loses nothing: every frame offered was written.
    let t = tape_totals(&gw.stderr());
    assert!(total(&t, "offered") > 10, "{t:?}");
    assert_eq!(total(&t, "offered"), total(&t, "written"), "{t:?}");
    assert_eq!(total(&t, "dropped"), 0, "{t:?}");
    let (code, out) = tape_cmd(&["verify", d]);
    assert_eq!(code, 0, "{out}");

    let ids = sessions(d, 5);
    assert_eq!(ids.len(), 1, "one recorded MCP session: {ids:?}");
    assert_eq!(sessions(d, 2).len(), 2, "plus the stateless exchange");
    let replay = Proc::start(&["replay", d, &ids[0], "--listen", "127.0.0.1:0"]);
    let through_replay = run_calls(replay.addr("replay"));
    assert_eq!(through_gateway, through_replay);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn masked_values_never_reach_the_tape() {
    let demo = demo();
    let dir = temp_dir("mask");
    let d = dir.to_str().expect("path");
    let toml = format!(
        "[tapes]\ndir = \"{d}\"\nmask = [\"/params/arguments/text\", \"/result/content/0/text\"]\n"
    );
    let mut gw = gateway(&demo_url(&demo), 1, Some(&toml));
    let addr = gw.addr("listen");
    let sid = initialize(addr);
    let h = [
        ("mcp-session-id", sid.as_str()),
        ("authorization", "Bearer client-secret"),
    ];
    let r = post(
        addr,
        &h,
        &call(2, "echo", json!({"text": "hunter2-secret"})),
    );
    assert!(
        r.text().contains("hunter2-secret"),
        "the client still gets the real answer"
    );
    assert_eq!(gw.terminate(Duration::from_secs(10)), Some(0));
    let id = &sessions(d, 2)[0];
    let (code, out) = tape_cmd(&["export", d, id, "--format", "jsonl"]);
    assert_eq!(code, 0);
    assert!(!out.contains("hunter2-secret"), "{out}");
    assert!(!out.contains("client-secret"), "{out}");
    assert!(out.contains("***"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kill_9_mid_recording_leaves_every_record_before_the_tail() {
    let demo = demo();
    let dir = temp_dir("kill9");
    let d = dir.to_str().expect("path");
    let toml = format!("[tapes]\ndir = \"{d}\"\nfsync = \"never\"\nsegment_max_bytes = 262144\n");
    let mut gw = gateway(&demo_url(&demo), 2, Some(&toml));
    let addr = gw.addr("listen");
    let stop = Instant::now() + Duration::from_millis(1500);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let h = [
                    ("mcp-protocol-version", "2026-07-28"),
                    ("mcp-method", "tools/call"),
                    ("mcp-name", "echo"),
                ];
                let mut n = 0u64;
                while Instant::now() < stop {
                    match c.post(addr, &h, &call(n, "echo", json!({"text": "x".repeat(200)}))) {
                        Ok(r) if r.status == 200 => n += 1,
                        _ => break,
                    }
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    gw.child.kill().expect("kill -9");
    let _ = gw.child.wait();
    let done: u64 = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    assert!(done > 100, "only {done} calls before the kill");
    let (code, out) = tape_cmd(&["verify", d]);
    assert_eq!(
        code, 0,
        "only a torn tail is acceptable after kill -9:\n{out}"
    );
    assert!(out.contains("intact"), "{out}");
    assert!(out.contains(" 0 corrupt ranges"), "{out}");
    // list works without the index the thread never finished writing.
    assert!(sessions(d, 2).len() > 50);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stdio_sessions_and_forward_mode_are_recorded() {
    let fixture = {
        let exe = std::env::current_exe().expect("exe");
        exe.parent()
            .and_then(|p| p.parent())
            .expect("dir")
            .join("mcp-stdio-server")
    };
    assert!(fixture.exists(), "run `cargo test --workspace`");
    let dir = temp_dir("stdio");
    let d = dir.to_str().expect("path");
    let toml = format!(
        "[[upstream]]\nkind = \"stdio\"\ncommand = \"{}\"\n[tapes]\ndir = \"{d}\"\n",
        fixture.display()
    );
    let mut gw = gateway_config(1, &toml);
    let addr = gw.addr("listen");
    let sid = initialize(addr);
    let h = [("mcp-session-id", sid.as_str())];
    assert_eq!(post(addr, &h, INITIALIZED).status, 202);
    let r = post(addr, &h, &call(2, "echo", json!({"text": "via stdio"})));
    assert_eq!(r.status, 200);
    assert_eq!(gw.terminate(Duration::from_secs(10)), Some(0));
    let (_, list) = tape_cmd(&["list", d]);
    assert!(list.contains("stdio:"), "{list}");
    let id = &sessions(d, 4)[0];
    let (_, out) = tape_cmd(&["export", d, id]);
    assert!(out.contains("via stdio"), "{out}");

    // forward stdio --tapes: each line both ways is a frame.
    let fdir = temp_dir("forward");
    let fd = fdir.to_str().expect("path");
    let mut p = Command::new(BIN)
        .args(["forward", "stdio", "--tapes", fd, "--"])
        .arg(&fixture)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("forward");
    let mut stdin = p.stdin.take().expect("stdin");
    let mut out = BufReader::new(p.stdout.take().expect("stdout"));
    writeln!(stdin, "{INIT}").expect("write");
    let mut line = String::new();
    out.read_line(&mut line).expect("read");
    writeln!(stdin, "{INITIALIZED}").expect("write");
    writeln!(stdin, "{}", call(2, "echo", json!({"text": "forwarded"}))).expect("write");
    line.clear();
    out.read_line(&mut line).expect("read");
    assert!(line.contains("forwarded"), "{line}");
    drop(stdin);
    assert_eq!(p.wait().expect("wait").code(), Some(0));
    let ids = sessions(fd, 4);
    assert_eq!(ids.len(), 1);
    let (_, out) = tape_cmd(&["export", fd, &ids[0]]);
    assert_eq!(
        out.matches("forwarded").count(),
        2,
        "request and response: {out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&fdir);
}
