//! Tapes end to end: a tape written with the recording API, read back by the real `shardcat
//! tape` commands, damaged on disk, and served by the real `shardcat replay` over real sockets.

#[path = "support/process.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bytes::Bytes;
use serde_json::{json, Value};
use shardcat::tape::{self, Dir, Frame, FrameKind, TapeConfig};
use support::*;

const V: (&str, &str) = ("mcp-protocol-version", "2025-06-18");

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shardcat-tapetest-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Builds one session's frames with a running clock.
struct Script {
    session: u64,
    ts: u64,
    frames: Vec<Frame>,
}

impl Script {
    fn new(session: u64) -> Script {
        Script {
            session,
            ts: 1_763_800_000_000_000,
            frames: Vec::new(),
        }
    }

    fn push(&mut self, dir: Dir, kind: FrameKind, payload: Value) {
        self.ts += 1500;
        self.frames.push(Frame {
            server: None,
            session: self.session,
            ts_us: self.ts,
            dir,
            kind,
            payload: Bytes::from(payload.to_string()),
        });
    }

    fn start(&mut self, upstream: &str) {
        let p = json!({"upstream": upstream, "protocol_version": "2025-06-18", "client": "127.0.0.1:5000", "shard": 0, "gateway_session": "0000000001"});
        self.push(Dir::Gateway, FrameKind::SessionStart, p);
    }

    fn request(&mut self, stream: u32, msg: Value) {
        let kind = FrameKind::Message {
            status: 0,
            sse: false,
            stream,
            event_id: None,
        };
        self.push(Dir::ClientToServer, kind, msg);
    }

    fn answer(&mut self, stream: u32, sse: Option<&str>, msg: Value) {
        let kind = FrameKind::Message {
            status: 200,
            sse: sse.is_some(),
            stream,
            event_id: sse
                .filter(|e| !e.is_empty())
                .map(|e| Bytes::from(e.to_string())),
        };
        self.push(Dir::ServerToClient, kind, msg);
    }

    fn call(&mut self, stream: u32, id: u64, method: &str, params: Value, result: Value) {
        self.request(
            stream,
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        );
        self.answer(
            stream,
            None,
            json!({"jsonrpc": "2.0", "id": id, "result": result}),
        );
    }
}

fn text(t: &str) -> Value {
    json!({"content": [{"type": "text", "text": t}], "isError": false})
}

fn echo(t: &str) -> Value {
    json!({"name": "echo", "arguments": {"text": t}})
}

/// A session-based session with JSON and SSE answers, and a stateless one.
fn sessions(rec: &tape::Recorder) -> (Script, Script) {
    let mut a = Script::new(rec.new_session_id());
    a.start("http://127.0.0.1:9/mcp");
    a.call(1, 1, "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "rec", "version": "1"}}),
        json!({"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}, "serverInfo": {"name": "recorded-server", "version": "9"}}));
    a.request(
        2,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    a.push(
        Dir::ServerToClient,
        FrameKind::Status {
            status: 202,
            stream: 2,
        },
        Value::Null,
    );
    a.call(3, 2, "tools/call", echo("hello"), text("hello"));
    a.call(4, 3, "tools/call", echo("hello"), text("hello again"));
    a.call(5, 4, "tools/call", echo("other"), text("other"));
    a.request(6, json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": "progress", "arguments": {"count": 3}, "_meta": {"progressToken": "tok-rec"}}}));
    for i in 1..=3 {
        a.answer(
            6,
            Some(&format!("ev-{i}")),
            json!({"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": "tok-rec", "progress": i, "total": 3}}),
        );
    }
    a.answer(
        6,
        Some("ev-4"),
        json!({"jsonrpc": "2.0", "id": 5, "result": text("sent 3 progress notifications")}),
    );
    a.call(
        7,
        6,
        "tools/list",
        json!({}),
        json!({"tools": [{"name": "echo"}]}),
    );
    a.push(
        Dir::Gateway,
        FrameKind::SessionEnd,
        json!({"reason": "client delete"}),
    );

    let mut b = Script::new(rec.new_session_id());
    b.start("http://127.0.0.1:9/stateless");
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28"});
    b.call(1, 10, "server/discover", json!({"_meta": meta}),
        json!({"resultType": "complete", "supportedVersions": ["2026-07-28"], "capabilities": {"tools": {}}}));
    b.call(
        2,
        11,
        "tools/call",
        json!({"name": "add", "arguments": {"a": 1, "b": 2}, "_meta": meta}),
        text("3"),
    );
    (a, b)
}

/// Records both sessions into `dir` through the real persistence thread.
fn record(dir: &Path) -> (Script, Script) {
    let (p, recs) = tape::start(TapeConfig::new(dir), 2).expect("start recording");
    let (a, b) = sessions(&recs[0]);
    for f in a.frames.iter().chain(&b.frames) {
        recs[0].try_record(f.clone()).expect("queued");
    }
    drop(recs);
    let stats = p.shutdown();
    assert_eq!(
        stats
            .frames_written
            .load(std::sync::atomic::Ordering::Relaxed),
        (a.frames.len() + b.frames.len()) as u64
    );
    (a, b)
}

fn shardcat(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run shardcat")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn tools_list_show_export_verify() {
    let dir = temp_dir("tools");
    let (a, b) = record(&dir);
    let (ida, idb) = (format!("{:016x}", a.session), format!("{:016x}", b.session));

    let o = shardcat(&["tape", "verify", path(&dir)]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let total = a.frames.len() + b.frames.len();
    assert!(
        stdout(&o).contains(&format!(
            "{total} records intact, 0 torn tails, 0 corrupt ranges: OK"
        )),
        "{}",
        stdout(&o)
    );

    let o = shardcat(&["tape", "list", path(&dir)]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    let line_a = out
        .lines()
        .find(|l| l.starts_with(&ida))
        .expect("session a listed");
    assert!(line_a.contains("2025-11-22T"), "{line_a}");
    assert!(
        line_a.contains("ended") && line_a.contains("http://127.0.0.1:9/mcp"),
        "{line_a}"
    );
    let msgs_a = a
        .frames
        .iter()
        .filter(|f| matches!(f.kind, FrameKind::Message { .. }))
        .count();
    assert!(
        line_a.split_whitespace().any(|w| w == msgs_a.to_string()),
        "{line_a}"
    );
    let line_b = out
        .lines()
        .find(|l| l.starts_with(&idb))
        .expect("session b listed");
    assert!(
        line_b.contains("open") && line_b.contains("/stateless"),
        "{line_b}"
    );
    assert!(out.contains("2 sessions"));

    let o = shardcat(&["tape", "show", path(&dir), &ida]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    assert!(out.contains("**  session start"), "{out}");
    assert!(out.contains("->  request tools/call id=2"), "{out}");
    assert!(out.contains("<-  200 response id=2"), "{out}");
    assert!(
        out.contains("<-  200 sse event=ev-2 notification notifications/progress"),
        "{out}"
    );
    assert!(out.contains("202 (no message)"), "{out}");
    assert!(out.contains("1.500 ms"), "relative times: {out}");

    let o = shardcat(&["tape", "export", path(&dir), &ida, "--format", "jsonl"]);
    assert_eq!(o.status.code(), Some(0));
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), a.frames.len());
    assert_eq!(lines[0]["kind"], "session_start");
    assert_eq!(lines[0]["json"]["upstream"], "http://127.0.0.1:9/mcp");
    let call = &lines[5];
    assert_eq!(
        (call["dir"].as_str(), call["kind"].as_str()),
        (Some("c2s"), Some("message"))
    );
    assert_eq!(call["json"]["params"]["arguments"]["text"], "hello");
    assert_eq!(call["session"], ida);
    assert_eq!(call["seq"], 5);
    let ev = lines
        .iter()
        .find(|l| l["event_id"] == "ev-3")
        .expect("sse event");
    assert_eq!(
        (
            ev["sse"].as_bool(),
            ev["status"].as_u64(),
            ev["stream"].as_u64()
        ),
        (Some(true), Some(200), Some(6))
    );
    assert!(lines
        .iter()
        .all(|l| l["ts_us"].is_u64() && l["t_ms"].is_f64()));

    let o = shardcat(&["tape", "show", path(&dir), "ffff"]);
    assert_eq!(o.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Offsets of every record in a segment file.
fn record_offsets(file: &Path) -> Vec<u64> {
    let mut offs = Vec::new();
    tape::format::scan_file(file, |off, _| offs.push(off)).expect("scan");
    offs
}

#[test]
fn verify_skips_a_torn_tail_and_fails_on_mid_file_corruption() {
    let dir = temp_dir("torn");
    let (a, b) = record(&dir);
    let total = a.frames.len() + b.frames.len();
    let seg = tape::format::segment_path(&dir, 1);
    let data = std::fs::read(&seg).expect("segment");
    let offs = record_offsets(&seg);
    assert_eq!(offs.len(), total);
    // Cut the last record in the middle, as kill -9 mid-write would.
    let last = *offs.last().unwrap() as usize;
    std::fs::write(&seg, &data[..last + 13]).unwrap();
    let o = shardcat(&["tape", "verify", path(&dir)]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains(&format!("{} records intact", total - 1)),
        "{out}"
    );
    assert!(
        out.contains(&format!("torn tail at offset {last} (13 bytes) skipped")),
        "{out}"
    );
    // The stale index is not trusted: list still reads every intact record.
    let o = shardcat(&["tape", "list", path(&dir)]);
    assert!(stdout(&o).contains("2 sessions"));
    let o = shardcat(&["tape", "export", path(&dir), &format!("{:x}", b.session)]);
    assert_eq!(stdout(&o).lines().count(), b.frames.len() - 1);

    // Corrupt a record in the middle: reported, exit 1, the records after it still read.
    let mut bad = data[..last + 13].to_vec();
    let mid = offs[5] as usize + 20;
    bad[mid] ^= 0xff;
    std::fs::write(&seg, &bad).unwrap();
    let o = shardcat(&["tape", "verify", path(&dir)]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!("CORRUPT at offset {}", offs[5])),
        "{out}"
    );
    assert!(
        out.contains(&format!("{} records intact", total - 2)),
        "{out}"
    );
    assert!(out.contains("torn tail"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn call_body(id: u64, method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

#[test]
fn replay_serves_the_recorded_session() {
    let dir = temp_dir("replay");
    let (a, _) = record(&dir);
    let id = format!("{:x}", a.session);
    let srv = Proc::start(&["replay", path(&dir), &id, "--listen", "127.0.0.1:0"]);
    let addr = srv.addr("replay");

    let init = post(addr, &[], INIT);
    assert_eq!(init.status, 200, "{}", init.text());
    assert_eq!(
        init.json()["result"]["serverInfo"]["name"],
        "recorded-server"
    );
    assert_eq!(init.json()["id"], 1);
    let sid = init
        .header("mcp-session-id")
        .expect("session id")
        .to_string();
    let s = ("mcp-session-id", sid.as_str());
    assert_eq!(post(addr, &[s, V], INITIALIZED).status, 202);

    // Matched on method + params; ids rewritten; _meta ignored; recorded order, then the last.
    let mut c = Client::connect(addr);
    let r = c
        .post(addr, &[s, V], &call_body(77, "tools/call", echo("hello")))
        .unwrap();
    assert_eq!(
        (
            r.json()["id"].clone(),
            r.json()["result"]["content"][0]["text"].clone()
        ),
        (json!(77), json!("hello"))
    );
    let with_meta =
        json!({"name": "echo", "arguments": {"text": "hello"}, "_meta": {"progressToken": 5}});
    let r = c
        .post(addr, &[s, V], &call_body(78, "tools/call", with_meta))
        .unwrap();
    assert_eq!(r.json()["result"]["content"][0]["text"], "hello again");
    let r = c
        .post(addr, &[s, V], &call_body(79, "tools/call", echo("hello")))
        .unwrap();
    assert_eq!(r.json()["result"]["content"][0]["text"], "hello again");
    assert_eq!(r.json()["id"], 79);
    let r = c
        .post(addr, &[s, V], &call_body(80, "tools/list", json!({})))
        .unwrap();
    assert_eq!(r.json()["result"]["tools"][0]["name"], "echo");

    // SSE comes back as SSE, one event per recorded event, final id rewritten.
    let progress = json!({"name": "progress", "arguments": {"count": 3}, "_meta": {"progressToken": "tok-new"}});
    let r = c
        .post(addr, &[s, V], &call_body(81, "tools/call", progress))
        .unwrap();
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events: Vec<&str> = std::str::from_utf8(&r.body)
        .unwrap()
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .collect();
    assert_eq!(events.len(), 4, "{}", r.text());
    for (i, e) in events.iter().enumerate() {
        assert!(
            e.starts_with(&format!("id: ev-{}\nevent: message\ndata: ", i + 1)),
            "{e}"
        );
    }
    let data =
        |e: &str| -> Value { serde_json::from_str(e.split("data: ").nth(1).unwrap()).unwrap() };
    assert_eq!(data(events[0])["params"]["progressToken"], "tok-new");
    assert_eq!(data(events[3])["id"], 81);
    assert_eq!(
        data(events[3])["result"]["content"][0]["text"],
        "sent 3 progress notifications"
    );

    // Unmatched: known method, other params -> -32602 naming the closest recorded params.
    let r = c
        .post(addr, &[s, V], &call_body(82, "tools/call", echo("helo")))
        .unwrap();
    assert_eq!(r.rpc_code(), -32602);
    assert_eq!(r.json()["id"], 82);
    let cands = r.json()["error"]["data"]["candidates"]
        .as_array()
        .unwrap()
        .clone();
    assert!(!cands.is_empty() && cands.len() <= 3, "{cands:?}");
    assert_eq!(cands[0]["method"], "tools/call");
    assert_eq!(cands[0]["params"]["name"], "echo");
    // Unknown method -> -32601 naming recorded methods, the nearest first.
    let r = c
        .post(addr, &[s, V], &call_body(83, "tools/lisst", json!({})))
        .unwrap();
    assert_eq!(r.rpc_code(), -32601);
    assert_eq!(
        r.json()["error"]["data"]["candidates"][0]["method"],
        "tools/list"
    );

    // Unknown session: 404. DELETE ends the session.
    let r = c
        .post(
            addr,
            &[("mcp-session-id", "nope"), V],
            &call_body(84, "tools/list", json!({})),
        )
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(delete(addr, &sid).status, 200);
    assert_eq!(delete(addr, &sid).status, 404);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn replay_of_an_export_answers_stateless_requests() {
    let dir = temp_dir("replay-jsonl");
    let (_, b) = record(&dir);
    let o = shardcat(&["tape", "export", path(&dir), &format!("{:x}", b.session)]);
    assert_eq!(o.status.code(), Some(0));
    let file = dir.join("b.jsonl");
    std::fs::write(&file, &o.stdout).unwrap();
    let srv = Proc::start(&["replay", path(&file), "--listen", "127.0.0.1:0", "--timing"]);
    let addr = srv.addr("replay");
    let sl = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "add"),
    ];
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}});
    let body = call_body(
        5,
        "tools/call",
        json!({"name": "add", "arguments": {"b": 2, "a": 1}, "_meta": meta}),
    );
    let r = post(addr, &sl, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["result"]["content"][0]["text"], "3");
    assert_eq!(r.json()["id"], 5);
    let r = post(
        addr,
        &[("mcp-protocol-version", "2026-07-28")],
        &call_body(6, "server/discover", json!({"_meta": meta})),
    );
    assert_eq!(r.json()["result"]["supportedVersions"][0], "2026-07-28");
    // No initialize was recorded: it is an unknown method here.
    assert_eq!(post(addr, &[], INIT).rpc_code(), -32601);
    let get = format!("GET /mcp HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\r\n");
    assert_eq!(raw(addr, get.as_bytes()).status, 405);
    let _ = std::fs::remove_dir_all(&dir);
}

fn segment_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("segments"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "tape"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The intact-record count `verify` prints.
fn intact(out: &str) -> u64 {
    let total = out.lines().last().expect("total line");
    let words: Vec<&str> = total.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "records").expect("records");
    words[i - 1].parse().expect("count")
}

#[test]
fn kill_9_during_heavy_recording_loses_nothing_before_the_tail() {
    let dir = temp_dir("kill9");
    let mut load = Proc::start(&["tape", "load", path(&dir), "--shards", "2"]);
    // Heavy recording: wait for a few MiB on disk, then kill -9 mid-stream.
    assert!(eventually(
        std::time::Duration::from_secs(30),
        || segment_bytes(&dir) > 4 << 20
    ));
    load.child.kill().expect("kill -9");
    load.child.wait().expect("reaped");
    let before = segment_bytes(&dir);
    let o = shardcat(&["tape", "verify", path(&dir)]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(!out.contains("CORRUPT"), "{out}");
    // Every byte up to the (possibly torn) tail is intact records of 130 bytes (8 prefix, 28
    // header, 94 payload); a tail is at most one unfinished batch.
    let records = intact(&out);
    assert!(records > 0);
    assert!(
        records * 130 + 16 <= before && before < records * 130 + 16 + 130 * 1024,
        "{out}"
    );
    // The index is stale or missing; list scans and still sees every session.
    let o = shardcat(&["tape", "list", path(&dir)]);
    assert_eq!(o.status.code(), Some(0));

    // A new run starts a new segment and leaves the old one as it was.
    let mut again = Proc::start(&["tape", "load", path(&dir), "--frames", "1000"]);
    // It stops by itself after --frames (a signal now could stop it before it recorded any).
    assert!(eventually(std::time::Duration::from_secs(30), || {
        matches!(again.child.try_wait(), Ok(Some(_)))
    }));
    assert!(again.child.wait().expect("status").success());
    let o = shardcat(&["tape", "verify", path(&dir)]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert_eq!(intact(&stdout(&o)), records + 1000);
    assert!(
        again.stderr().contains("written=1000 lost_io=0"),
        "{}",
        again.stderr()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_flushes_every_queued_frame() {
    let dir = temp_dir("sigterm");
    let mut load = Proc::start(&["tape", "load", path(&dir), "--shards", "2"]);
    assert!(eventually(
        std::time::Duration::from_secs(30),
        || segment_bytes(&dir) > 1 << 20
    ));
    assert_eq!(load.terminate(std::time::Duration::from_secs(30)), Some(0));
    let log = load.stderr();
    let line = log
        .lines()
        .find(|l| l.starts_with("tape load:"))
        .unwrap_or_else(|| panic!("{log}"));
    let field = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {line}"))
    };
    assert_eq!(field("dropped"), 0, "{line}");
    assert_eq!(field("queued"), field("written"), "{line}");
    assert_eq!(field("offered"), field("written"), "{line}");
    let o = shardcat(&["tape", "verify", path(&dir)]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        !out.contains("torn") || out.contains("0 torn tails"),
        "{out}"
    );
    assert_eq!(intact(&out), field("written"));
    let _ = std::fs::remove_dir_all(&dir);
}
