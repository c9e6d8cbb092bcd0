//! End-to-end tests of the gateway: the real binary on loopback ports in front of the real demo
//! upstream (or a misbehaving upstream run by the test), spoken to with raw HTTP/1.1.

#[path = "support/process.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use support::*;

const V: (&str, &str) = ("mcp-protocol-version", "2025-06-18");

#[test]
fn session_lifecycle_json_and_sse() {
    let demo = demo();
    let gw = gateway(&demo_url(&demo), 2, None);
    let addr = gw.addr("listen");
    let sid = initialize(addr);
    assert_eq!(sid.len(), 42, "gateway id, not the upstream's: {sid}");
    assert!(!sid.starts_with("demo-"));
    let s = ("mcp-session-id", sid.as_str());
    assert_eq!(post(addr, &[s, V], INITIALIZED).status, 202);
    let r = post(addr, &[s, V], &echo_call(2, "hello"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"]["content"][0]["text"], "hello");
    assert_eq!(r.json()["id"], 2);
    // SSE: progress notifications precede the result, each as its own event.
    let body = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"progress","arguments":{"count":4,"interval_ms":5}}}"#;
    let r = post(addr, &[s, V], body);
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(r.header("x-accel-buffering"), Some("no"));
    let text = r.text();
    assert_eq!(text.matches("notifications/progress").count(), 4, "{text}");
    assert!(text.find("notifications/progress").unwrap() < text.find("\"id\":3").unwrap());
    // GET stream relays server notifications.
    let mut c = Client::connect(addr);
    c.send_raw(format!("GET /mcp HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\nmcp-session-id: {sid}\r\n\r\n").as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"seq\":2") {
        let n = c.stream.read(&mut buf).expect("GET stream data");
        assert!(n > 0, "GET stream closed early");
        got.extend_from_slice(&buf[..n]);
    }
    drop(c);
    // DELETE ends it upstream and here.
    assert_eq!(delete(addr, &sid).status, 200);
    assert_eq!(post(addr, &[s, V], &echo_call(4, "x")).status, 404);
    assert_eq!(get(demo.addr("demo"), "/stats").json()["sessions"], 0);
    let admin = gw.addr("admin");
    assert!(eventually(Duration::from_secs(5), || metric(
        admin,
        "shardcat_sessions"
    ) == 0.0));
    assert!(eventually(Duration::from_secs(5), || metric(
        admin,
        "shardcat_connections"
    ) == 0.0));
}

#[test]
fn stateless_2026_07_28_and_versions_side_by_side() {
    let demo = demo();
    let gw = gateway(&demo_url(&demo), 2, None);
    let addr = gw.addr("listen");
    let sid = initialize(addr);
    let body = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{"text":"sl"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    let sl = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "echo"),
        ("mcp-param-region", "eu"),
    ];
    for _ in 0..3 {
        let r = post(addr, &sl, body);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["result"]["content"][0]["text"], "sl");
        assert!(r.header("mcp-session-id").is_none());
        // The session-based client keeps working at the same time.
        let r = post(addr, &[("mcp-session-id", &sid), V], &echo_call(1, "sb"));
        assert_eq!(r.json()["result"]["content"][0]["text"], "sb");
    }
    let wrong = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "add"),
    ];
    let r = post(addr, &wrong, body);
    assert_eq!((r.status, r.rpc_code()), (400, -32020));
    assert_eq!(r.json()["id"], 9);
    let missing = [("mcp-protocol-version", "2026-07-28")];
    assert_eq!(post(addr, &missing, body).rpc_code(), -32020);
    let g =
        format!("GET /mcp HTTP/1.1\r\nhost: {addr}\r\nmcp-protocol-version: 2026-07-28\r\n\r\n");
    assert_eq!(raw(addr, g.as_bytes()).status, 405);
    let d =
        format!("DELETE /mcp HTTP/1.1\r\nhost: {addr}\r\nmcp-protocol-version: 2026-07-28\r\n\r\n");
    assert_eq!(raw(addr, d.as_bytes()).status, 405);
}

#[test]
fn bad_input_gets_exact_errors_and_the_shard_survives() {
    let demo = demo();
    let toml = "[limits]\nmax_body_bytes = 2048\nmax_head_bytes = 1024\nmax_headers = 16\n";
    let gw = gateway(&demo_url(&demo), 1, Some(toml));
    let addr = gw.addr("listen");
    // Malformed HTTP: 400, then close.
    let mut c = Client::connect(addr);
    c.send_raw(b"POST /mcp HTTP/1.1\r\nhost: x\r\nbad header line\r\n\r\n")
        .unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 400);
    assert!(c.is_closed(), "connection must close after malformed HTTP");
    // Malformed JSON: 400 with -32700, connection stays usable.
    let mut c = Client::connect(addr);
    let r = c.post(addr, &[], "{nope").unwrap();
    assert_eq!((r.status, r.rpc_code()), (400, -32700));
    assert_eq!(c.post(addr, &[], INIT).unwrap().status, 200);
    // Not JSON-RPC: -32600.
    assert_eq!(post(addr, &[], r#"{"id":1}"#).rpc_code(), -32600);
    // A batch where the version forbids it.
    let sid = initialize(addr);
    let batch = format!("[{},{}]", echo_call(1, "a"), echo_call(2, "b"));
    let r = post(addr, &[("mcp-session-id", &sid), V], &batch);
    assert_eq!((r.status, r.rpc_code()), (400, -32600));
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("batch"));
    // Unsupported protocol version.
    let r = post(
        addr,
        &[
            ("mcp-session-id", &sid),
            ("mcp-protocol-version", "1999-01-01"),
        ],
        &echo_call(1, "a"),
    );
    assert_eq!((r.status, r.rpc_code()), (400, -32022));
    // Oversized body: 413.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"pad":"{}"}}}}"#,
        "x".repeat(4096)
    );
    assert_eq!(post(addr, &[], &big).status, 413);
    // Oversized head and too many headers: 431.
    let long = format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\nx-pad: {}\r\n\r\n",
        "y".repeat(2000)
    );
    assert_eq!(raw(addr, long.as_bytes()).status, 431);
    let many: String = (0..20).map(|i| format!("x-h{i}: 1\r\n")).collect();
    assert_eq!(
        raw(
            addr,
            format!("POST /mcp HTTP/1.1\r\nhost: {addr}\r\n{many}\r\n").as_bytes()
        )
        .status,
        431
    );
    // RFC 9112 framing.
    let te_cl = format!("POST /mcp HTTP/1.1\r\nhost: {addr}\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n");
    assert_eq!(raw(addr, te_cl.as_bytes()).status, 400);
    let two_cl = format!("POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\n{{}}  ");
    assert_eq!(raw(addr, two_cl.as_bytes()).status, 400);
    // A chunked request body is accepted.
    let init_len = INIT.len();
    let chunked = format!("POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{init_len:x}\r\n{INIT}\r\n0\r\n\r\n");
    assert_eq!(raw(addr, chunked.as_bytes()).status, 200);
    // Expect: 100-continue gets its interim response before the body is sent.
    let mut c = Client::connect(addr);
    let head = format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        INIT.len()
    );
    c.send_raw(head.as_bytes()).unwrap();
    assert_eq!(c.read_response().unwrap().status, 100);
    c.send_raw(INIT.as_bytes()).unwrap();
    assert_eq!(c.read_response().unwrap().status, 200);
    // Origin and Host checks, unknown session, missing session on DELETE, wrong path.
    assert_eq!(
        post(addr, &[("origin", "http://evil.example")], INIT).status,
        403
    );
    assert_eq!(
        post(addr, &[("origin", "http://localhost:3000")], INIT).status,
        200
    );
    let bad_host = format!(
        "POST /mcp HTTP/1.1\r\nhost: evil.example\r\ncontent-length: {}\r\n\r\n{INIT}",
        INIT.len()
    );
    assert_eq!(raw(addr, bad_host.as_bytes()).status, 421);
    assert_eq!(
        post(
            addr,
            &[
                (
                    "mcp-session-id",
                    "00000000000000000000000000000000000000000f"
                ),
                V
            ],
            &echo_call(1, "a")
        )
        .status,
        404
    );
    assert_eq!(
        post(
            addr,
            &[("mcp-session-id", "not-a-session"), V],
            &echo_call(1, "a")
        )
        .status,
        404
    );
    assert_eq!(
        raw(
            addr,
            format!("DELETE /mcp HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes()
        )
        .status,
        400
    );
    assert_eq!(
        raw(
            addr,
            format!("GET /other HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes()
        )
        .status,
        404
    );
    // After all of that the shard still serves.
    let r = post(addr, &[("mcp-session-id", &sid), V], &echo_call(5, "alive"));
    assert_eq!(r.json()["result"]["content"][0]["text"], "alive");
}

#[test]
fn upstream_refused_is_502_and_timeout_is_504() {
    // A port bound but not listening: connections are refused, and no other process can take
    // the port while the test runs (a dropped listener's port could be reused by a parallel test).
    let dead = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    dead.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let dead_addr = dead.local_addr().unwrap().as_socket().unwrap();
    let gw = gateway(&format!("http://{dead_addr}/mcp"), 1, None);
    let r = post(gw.addr("listen"), &[], INIT);
    assert_eq!((r.status, r.rpc_code()), (502, -32000));
    assert_eq!(r.json()["id"], 1);
    // An upstream that accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept() {
            held.push(s);
            if !held.is_empty() {
                std::thread::sleep(Duration::from_secs(3));
                return;
            }
        }
    });
    let gw = gateway(
        &format!("http://{silent_addr}/mcp"),
        1,
        Some("[timeouts]\nupstream_request_timeout_ms = 300\n"),
    );
    let r = post(gw.addr("listen"), &[], INIT);
    assert_eq!((r.status, r.rpc_code()), (504, -32000));
    let admin = gw.addr("admin");
    assert!(eventually(Duration::from_secs(3), || metric(
        admin,
        "shardcat_pool_open"
    ) == 0.0));
    holder.join().unwrap();
}

#[test]
fn connection_and_session_limits_reject_with_503() {
    let demo = demo();
    let toml = "[limits]\nmax_connections = 3\nmax_sessions = 2\nretry_after_s = 7\n";
    let gw = gateway(&demo_url(&demo), 2, Some(toml));
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let a = initialize(addr);
    let _b = initialize(addr);
    let r = post(addr, &[], INIT);
    assert_eq!((r.status, r.header("retry-after")), (503, Some("7")));
    assert_eq!(r.rpc_code(), -32000);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("sessions"));
    assert_eq!(
        metric(admin, "shardcat_rejections_total{reason=\"sessions\"}"),
        1.0
    );
    // Ending one session frees a slot.
    assert_eq!(delete(addr, &a).status, 200);
    initialize(addr);
    // Connections: three held open, the fourth is turned away.
    assert!(eventually(Duration::from_secs(3), || metric(
        admin,
        "shardcat_connections"
    ) == 0.0));
    let held: Vec<Client> = (0..3).map(|_| Client::connect(addr)).collect();
    assert!(eventually(Duration::from_secs(3), || metric(
        admin,
        "shardcat_connections"
    ) == 3.0));
    let mut extra = Client::connect(addr);
    let r = extra.read_response().expect("rejection response");
    assert_eq!((r.status, r.header("retry-after")), (503, Some("7")));
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("connections"));
    assert_eq!(
        metric(admin, "shardcat_rejections_total{reason=\"connections\"}"),
        1.0
    );
    drop(held);
    assert!(eventually(Duration::from_secs(3), || metric(
        admin,
        "shardcat_connections"
    ) == 0.0));
    assert_eq!(
        post(addr, &[], &echo_call(1, "x")).status,
        400,
        "sessionless call reaches the upstream again"
    );
}

#[test]
fn affinity_every_session_is_served_by_its_owner_shard() {
    let demo = demo();
    let gw = gateway(&demo_url(&demo), 2, None);
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let mut owned = [0u64; 2];
    for i in 0..200 {
        let sid = initialize(addr);
        let owner = usize::from_str_radix(&sid[..2], 16).unwrap();
        owned[owner] += 1;
        let s = ("mcp-session-id", sid.as_str());
        assert_eq!(post(addr, &[s, V], INITIALIZED).status, 202);
        let r = post(addr, &[s, V], &echo_call(i, "x"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Three requests per session, every one counted on the owner shard.
    for (shard, n) in owned.iter().enumerate() {
        assert!(*n > 0, "both shards should own sessions: {owned:?}");
        assert_eq!(
            metric(
                admin,
                &format!("shardcat_requests_total{{shard=\"{shard}\"}}")
            ),
            (3 * n) as f64,
            "shard {shard}"
        );
    }
    assert!(metric(admin, "shardcat_handoffs_received_total") > 0.0);
    assert_eq!(
        metric(admin, "shardcat_handoffs_sent_total"),
        metric(admin, "shardcat_handoffs_received_total")
    );
}

/// An upstream run by the test that misbehaves on a fixed schedule, by request number.
fn faulty_upstream() -> (SocketAddr, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let counter = counter.clone();
            std::thread::spawn(move || faulty_conn(s, &counter));
        }
    });
    (addr, h)
}

fn faulty_conn(mut s: std::net::TcpStream, counter: &std::sync::atomic::AtomicU64) {
    let mut buf = Vec::new();
    loop {
        let Some(_) = read_request(&mut s, &mut buf) else {
            return;
        };
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ok = "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}";
        let res = match n % 10 {
            // Close without answering.
            3 => return,
            // Garbage instead of HTTP.
            5 => {
                let _ = s.write_all(b"NOT HTTP AT ALL\r\n\r\n");
                return;
            }
            // Promise more body than is sent, then close.
            7 => {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"jsonrpc\"");
                return;
            }
            // Close-delimited body.
            8 => {
                let _ = s.write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{ok}").as_bytes());
                return;
            }
            // Chunked SSE answer.
            9 => s.write_all(
                format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\ndata: {ok}\n\n\r\n0\r\n\r\n", ok.len() + 8)
                    .as_bytes(),
            ),
            _ => s.write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ok}", ok.len()).as_bytes()),
        };
        if res.is_err() {
            return;
        }
    }
}

/// /proc/net/tcp lines of the socket inodes named in an fd list.
fn socket_states(fds: &str) -> String {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    fds.split("socket:[")
        .skip(1)
        .filter_map(|s| s.split(']').next())
        .filter_map(|inode| {
            tcp.lines()
                .find(|l| l.split_whitespace().nth(9) == Some(inode))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn pool_survives_10k_requests_with_faults_without_leaking() {
    let (up, _h) = faulty_upstream();
    let toml = "[upstream]\npool_max_idle = 16\npool_max_connections = 64\n";
    let gw = gateway(&format!("http://{up}/mcp"), 1, Some(toml));
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    // Warm up so the shard's ring exists, then take the baseline with the pool emptied.
    assert_eq!(post(addr, &[], body).status, 200);
    let fds_before = gw.fd_count() - metric(admin, "shardcat_pool_open") as usize;
    let list_before = gw.fd_list();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut stats = [0u64; 4]; // ok, 502, broken response, client gave up
                let mut c = Client::connect(addr);
                for i in 0..2500 {
                    if i % 50 == 49 {
                        // The client goes away mid-request.
                        let mut gone = Client::connect(addr);
                        let req = format!("POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                        gone.send_raw(req.as_bytes()).unwrap();
                        stats[3] += 1;
                        continue;
                    }
                    match c.post(addr, &[], body) {
                        Ok(r) if r.status == 200 => stats[0] += 1,
                        Ok(r) if r.status == 502 => stats[1] += 1,
                        Ok(r) => panic!("thread {t}: unexpected status {}", r.status),
                        Err(_) => {
                            stats[2] += 1;
                            c = Client::connect(addr);
                        }
                    }
                }
                stats
            })
        })
        .collect();
    let mut total = [0u64; 4];
    for t in threads {
        for (a, b) in total.iter_mut().zip(t.join().unwrap()) {
            *a += b;
        }
    }
    assert_eq!(total.iter().sum::<u64>(), 10_000);
    assert!(
        total[0] > 5000 && total[1] > 500 && total[2] > 100,
        "{total:?}"
    );
    // Nothing in use, idle within its bound, connections and fds back where they were.
    assert!(eventually(Duration::from_secs(5), || metric(
        admin,
        "shardcat_connections"
    ) == 0.0));
    let open = metric(admin, "shardcat_pool_open");
    let idle = metric(admin, "shardcat_pool_idle");
    assert_eq!(open, idle, "every pooled connection is idle");
    assert!(idle <= 16.0);
    assert!(
        eventually(Duration::from_secs(5), || gw.fd_count()
            <= fds_before + idle as usize),
        "fds before {fds_before} ({list_before}), now {}, idle pooled {idle}: {}\n{}",
        gw.fd_count(),
        gw.fd_list(),
        socket_states(&gw.fd_list())
    );
    assert!(metric(admin, "shardcat_upstream_errors_total") > 0.0);
}

#[test]
fn slow_sse_client_gets_backpressure_and_every_event() {
    let demo = demo();
    let gw = gateway(
        &demo_url(&demo),
        1,
        Some("[limits]\nmax_pending_events = 8\n"),
    );
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let sid = initialize(addr);
    // A small receive buffer, so the client's kernel cannot absorb the stream for it.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut c = Client::from_stream(sock.into());
    let count = 100_000;
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"progress","arguments":{{"count":{count},"interval_ms":0}}}}}}"#
    );
    let req = format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\nmcp-session-id: {sid}\r\nmcp-protocol-version: 2025-06-18\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // Read nothing for a while: the relay must stop at max_pending_events and wait.
    c.send_raw(req.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let waits = metric(admin, "shardcat_sse_backpressure_waits_total");
    assert!(
        waits > 0.0,
        "the relay should have waited for the slow client"
    );
    let r = c.read_response().unwrap();
    let text = r.text();
    assert_eq!(text.matches("notifications/progress").count(), count);
    for seq in [1, count / 2, count] {
        assert!(
            text.contains(&format!("\"progress\":{seq},")),
            "event {seq} missing"
        );
    }
    assert!(text.contains("\"id\":7"));
}

#[test]
fn sigterm_drains_in_flight_and_ends_sessions_upstream() {
    let demo = demo();
    let mut gw = gateway(&demo_url(&demo), 2, None);
    let addr = gw.addr("listen");
    let sids: Vec<String> = (0..3).map(|_| initialize(addr)).collect();
    assert_eq!(get(demo.addr("demo"), "/stats").json()["sessions"], 3);
    let sid = sids[0].clone();
    let slow = std::thread::spawn(move || {
        let body = r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"sleep","arguments":{"ms":700}}}"#;
        post(addr, &[("mcp-session-id", &sid), V], body)
    });
    std::thread::sleep(Duration::from_millis(200));
    let code = gw.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "stderr:\n{}", gw.stderr());
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "the in-flight request finishes");
    assert_eq!(r.json()["result"]["content"][0]["text"], "slept 700 ms");
    assert_eq!(
        get(demo.addr("demo"), "/stats").json()["sessions"],
        0,
        "sessions ended upstream"
    );
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "listener closed"
    );
}

#[test]
fn invalid_config_is_rejected_naming_the_key() {
    let path = std::env::temp_dir().join(format!("shardcat-bad-{}.toml", std::process::id()));
    std::fs::write(&path, "[limits]\nmax_pending_events = 0\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--upstream",
            "http://127.0.0.1:1/mcp",
            "--config",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.max_pending_events"));
    std::fs::write(&path, "[limits]\nmax_conections = 5\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_conections"));
    let _ = std::fs::remove_file(&path);
}

/// An upstream run by the test: for each request, `on_request(head, body)` runs (it may record
/// or wait) and returns extra response header lines; the answer is a 200 JSON-RPC result.
fn scripted_upstream(
    on_request: impl Fn(&str, &str) -> &'static str + Send + Sync + 'static,
) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let on_request = std::sync::Arc::new(on_request);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let on_request = on_request.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                while let Some((head, body)) = read_request(&mut s, &mut buf) {
                    let extra = on_request(&head, &body);
                    // It speaks 2026-07-28 when asked (the gateway asks before the first
                    // stateless request).
                    let ok = if body.contains("\"server/discover\"") {
                        "{\"jsonrpc\":\"2.0\",\"id\":0,\"result\":{\"supportedVersions\":[\"2026-07-28\"]}}"
                    } else {
                        "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}"
                    };
                    let resp = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{ok}", ok.len());
                    if s.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An upstream that records every request head it receives (but the gateway's own
/// `server/discover` probe).
fn recording_upstream() -> (SocketAddr, std::sync::mpsc::Receiver<String>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let addr = scripted_upstream(move |head, body| {
        if !body.contains("\"server/discover\"") {
            let _ = tx.send(head.to_string());
        }
        "set-cookie: up=1\r\nmcp-session-id: upstream-secret\r\n"
    });
    (addr, rx)
}

#[test]
fn only_mcp_headers_reach_the_upstream() {
    let (up, heads) = recording_upstream();
    let toml = "[upstream]\nauthorization = \"Bearer gateway-token\"\n";
    let gw = gateway(&format!("http://{up}/mcp"), 1, Some(toml));
    let addr = gw.addr("listen");
    let headers = [
        ("authorization", "Bearer client-token"),
        ("cookie", "sid=client"),
        ("origin", "http://localhost:5173"),
        ("x-internal", "1"),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "echo"),
        ("mcp-param-region", "eu-west"),
    ];
    let body =
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#;
    let r = post(addr, &headers, body);
    assert_eq!(r.status, 200);
    assert!(
        r.header("set-cookie").is_none(),
        "upstream cookies stay behind"
    );
    assert!(
        r.header("mcp-session-id").is_none(),
        "the upstream's session id never reaches the client"
    );
    let head = heads
        .recv_timeout(Duration::from_secs(5))
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.contains(&format!("host: {up}")), "{head}");
    assert!(
        head.contains("authorization: bearer gateway-token"),
        "{head}"
    );
    for gone in ["client-token", "cookie:", "origin:", "x-internal"] {
        assert!(!head.contains(gone), "{gone} leaked upstream:\n{head}");
    }
    for kept in [
        "mcp-method: tools/call",
        "mcp-name: echo",
        "mcp-param-region: eu-west",
        "mcp-protocol-version: 2026-07-28",
    ] {
        assert!(head.contains(kept), "{kept} missing upstream:\n{head}");
    }
    // initialize: the upstream's id is replaced by the gateway's own.
    let r = post(addr, &[], INIT);
    let sid = r.header("mcp-session-id").unwrap().to_string();
    assert_ne!(sid, "upstream-secret");
    let _ = heads.recv_timeout(Duration::from_secs(5)).unwrap();
    post(addr, &[("mcp-session-id", &sid), V], &echo_call(2, "x"));
    let head = heads
        .recv_timeout(Duration::from_secs(5))
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.contains("mcp-session-id: upstream-secret"), "{head}");
}

#[test]
fn epoll_driver_serves_json_and_sse() {
    let demo = demo();
    let gw = gateway(&demo_url(&demo), 2, Some("[server]\ndriver = \"legacy\"\n"));
    assert!(eventually(Duration::from_secs(5), || gw
        .stderr()
        .matches("epoll driver")
        .count()
        == 2));
    let addr = gw.addr("listen");
    let sid = initialize(addr);
    let s = ("mcp-session-id", sid.as_str());
    assert_eq!(
        post(addr, &[s, V], &echo_call(1, "e")).json()["result"]["content"][0]["text"],
        "e"
    );
    let body = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"progress","arguments":{"count":3,"interval_ms":1}}}"#;
    assert_eq!(
        post(addr, &[s, V], body)
            .text()
            .matches("notifications/progress")
            .count(),
        3
    );
}

#[test]
fn idle_sessions_expire_here_and_upstream() {
    let demo = demo();
    let gw = gateway(
        &demo_url(&demo),
        1,
        Some("[timeouts]\nsession_idle_timeout_ms = 300\n"),
    );
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let sid = initialize(addr);
    assert_eq!(get(demo.addr("demo"), "/stats").json()["sessions"], 1);
    assert!(eventually(Duration::from_secs(5), || metric(
        admin,
        "shardcat_sessions_expired_total"
    ) == 1.0));
    assert!(eventually(Duration::from_secs(5), || get(
        demo.addr("demo"),
        "/stats"
    )
    .json()["sessions"]
        == 0));
    assert_eq!(
        post(addr, &[("mcp-session-id", &sid), V], &echo_call(1, "x")).status,
        404
    );
    assert_eq!(metric(admin, "shardcat_sessions"), 0.0);
}

/// A client that only reads its GET stream is using its session: the session outlives the
/// idle timeout while the stream is read, and expires once the reader is gone.
#[test]
fn a_session_read_over_its_get_stream_is_not_idle() {
    let demo = demo();
    let gw = gateway(
        &demo_url(&demo),
        1,
        Some("[timeouts]\nsession_idle_timeout_ms = 300\n"),
    );
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let sid = initialize(addr);
    let mut c = Client::connect(addr);
    c.send_raw(format!("GET /mcp HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\nmcp-session-id: {sid}\r\n\r\n").as_bytes()).unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    // Read for five idle timeouts, with no request in the session.
    while started.elapsed() < Duration::from_millis(1500) {
        let n = c.stream.read(&mut buf).expect("GET stream data");
        assert!(
            n > 0,
            "GET stream closed: the session was ended under its reader"
        );
    }
    assert_eq!(metric(admin, "shardcat_sessions_expired_total"), 0.0);
    assert_eq!(
        post(addr, &[("mcp-session-id", &sid), V], &echo_call(1, "x")).status,
        200
    );
    drop(c);
    assert!(eventually(Duration::from_secs(5), || metric(
        admin,
        "shardcat_sessions_expired_total"
    ) == 1.0));
    assert_eq!(metric(admin, "shardcat_sessions"), 0.0);
}

#[test]
fn client_hang_up_releases_the_upstream_at_once() {
    let demo = demo();
    let gw = gateway(&demo_url(&demo), 1, None);
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let sid = initialize(addr);
    let body = r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"sleep","arguments":{"ms":5000}}}"#;
    let mut c = Client::connect(addr);
    let req = format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\nmcp-session-id: {sid}\r\nmcp-protocol-version: 2025-06-18\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    c.send_raw(req.as_bytes()).unwrap();
    assert!(eventually(Duration::from_secs(2), || metric(
        admin,
        "shardcat_pool_open"
    ) == 1.0));
    let started = std::time::Instant::now();
    drop(c);
    // Well before the upstream's 5 s answer, the gateway has closed its side.
    assert!(eventually(Duration::from_secs(2), || metric(
        admin,
        "shardcat_pool_open"
    ) == 0.0
        && metric(admin, "shardcat_connections") == 0.0));
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// An upstream whose initialize answers after `delay` with session `up-1`; it reports each
/// request line (and the session it names) it receives.
fn slow_initialize_upstream(delay: Duration) -> (SocketAddr, std::sync::mpsc::Receiver<String>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let addr = scripted_upstream(move |head, body| {
        let head = head.to_ascii_lowercase();
        let sid = head
            .lines()
            .find_map(|l| l.strip_prefix("mcp-session-id:"))
            .unwrap_or("")
            .trim();
        let _ = tx.send(format!("{} {sid}", head.lines().next().unwrap_or("")));
        if body.contains("\"initialize\"") {
            std::thread::sleep(delay);
        }
        "mcp-session-id: up-1\r\n"
    });
    (addr, rx)
}

#[test]
fn a_client_gone_during_initialize_leaves_no_session_anywhere() {
    let (up, seen) = slow_initialize_upstream(Duration::from_millis(300));
    let gw = gateway(&format!("http://{up}/mcp"), 1, None);
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let mut c = Client::connect(addr);
    let req = format!("POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{INIT}", INIT.len());
    c.send_raw(req.as_bytes()).unwrap();
    assert!(seen
        .recv_timeout(Duration::from_secs(5))
        .unwrap()
        .starts_with("post /mcp"));
    drop(c);
    // The upstream's answer arrives after the client left: the session is ended at once,
    // here and upstream, instead of waiting out the idle timeout.
    let delete = seen
        .recv_timeout(Duration::from_secs(5))
        .expect("upstream DELETE");
    assert_eq!(delete, "delete /mcp http/1.1 up-1");
    assert!(eventually(Duration::from_secs(3), || metric(
        admin,
        "shardcat_sessions"
    ) == 0.0));
    assert_eq!(metric(admin, "shardcat_sessions_created_total"), 1.0);
}

#[test]
fn idle_sessions_are_evicted_at_the_bound_and_busy_ones_end_at_max_age() {
    let demo = demo();
    let toml = "[limits]\nmax_sessions = 2\n[timeouts]\nsession_evict_idle_ms = 300\nsession_max_age_ms = 1500\n";
    let gw = gateway(&demo_url(&demo), 1, Some(toml));
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let a = initialize(addr);
    let b = initialize(addr);
    // Both sessions are fresh: nothing may be evicted, the third is refused.
    let r = post(addr, &[], INIT);
    assert_eq!(r.status, 503, "{}", r.text());
    std::thread::sleep(Duration::from_millis(400));
    let call = |sid: &str, id: u64| post(addr, &[("mcp-session-id", sid), V], &echo_call(id, "x"));
    assert_eq!(call(&b, 2).status, 200);
    // a is the least recently used idle session: it makes room for c.
    let c = initialize(addr);
    assert_eq!(call(&a, 3).status, 404, "an evicted session answers 404");
    assert_eq!(call(&b, 4).status, 200);
    assert_eq!(call(&c, 5).status, 200);
    assert_eq!(metric(admin, "shardcat_sessions_evicted_total"), 1.0);
    let upstream = || get(demo.addr("demo"), "/stats").json()["sessions"].as_u64();
    assert!(eventually(Duration::from_secs(3), || upstream() == Some(2)));
    // b stays busy, yet ends at its maximum age.
    let mut n = 10;
    let ended = eventually(Duration::from_secs(5), || {
        n += 1;
        call(&b, n).status == 404
    });
    assert!(ended, "a busy session outlived its maximum age");
    assert!(metric(admin, "shardcat_sessions_max_age_total") >= 1.0);
}

#[test]
fn per_client_and_per_session_limits_answer_429() {
    let demo = demo();
    let toml =
        "[limits]\nmax_sessions_per_client = 2\nsession_requests_per_s = 1\nsession_burst = 3\n";
    let gw = gateway(&demo_url(&demo), 1, Some(toml));
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let a = initialize(addr);
    let b = initialize(addr);
    let r = post(addr, &[], INIT);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.rpc_code(), -32000);
    let rejected = |what: &str| {
        metric(
            admin,
            &format!("shardcat_rejections_total{{reason=\"{what}\"}}"),
        )
    };
    assert_eq!(rejected("client_sessions"), 1.0);
    // Ending a session gives the client its slot back.
    let del = delete(addr, &a);
    assert_eq!(del.status, 200);
    let _c = initialize(addr);
    // The session's bucket: a burst of 3, then 429 until it refills (1 a second).
    let h = [("mcp-session-id", b.as_str()), V];
    for i in 0..3 {
        assert_eq!(post(addr, &h, &echo_call(i, "x")).status, 200);
    }
    let r = post(addr, &h, &echo_call(9, "x"));
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["id"], 9);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(rejected("session_rate"), 1.0);

    // Per client, across requests of any kind.
    let gw = gateway(
        &demo_url(&demo),
        2,
        Some("[limits]\nclient_requests_per_s = 1\nclient_burst = 4\n"),
    );
    let addr = gw.addr("listen");
    let stateless = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "echo"),
    ];
    let statuses: Vec<u16> = (0..6)
        .map(|i| post(addr, &stateless, &echo_call(i, "x")).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
}

#[test]
fn several_upstreams_share_sessions_and_a_dead_one_is_skipped() {
    let demos: Vec<Proc> = (0..3).map(|_| demo()).collect();
    let mut toml = String::new();
    for (i, d) in demos.iter().enumerate() {
        let weight = if i == 0 { 2 } else { 1 };
        toml.push_str(&format!(
            "[[upstream]]\nurl = \"{}\"\nweight = {weight}\nhealth_check = \"off\"\n",
            demo_url(d)
        ));
    }
    let gw = gateway_config(1, &toml);
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let held = |d: &Proc| get(d.addr("demo"), "/stats").json()["sessions"].as_u64();
    let sids: Vec<String> = (0..8).map(|_| initialize(addr)).collect();
    // Weighted round robin: 4, 2 and 2 sessions.
    let counts: Vec<Option<u64>> = demos.iter().map(held).collect();
    assert_eq!(counts, [Some(4), Some(2), Some(2)]);
    // Each session stays on its upstream.
    for (i, sid) in sids.iter().enumerate() {
        let r = post(
            addr,
            &[("mcp-session-id", sid), V],
            &echo_call(i as u64, "s"),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Upstream 1 goes away. Its idle pooled connection may still take one request and fail
    // (502: a request already written is never retried); that clears its pool, and from then on
    // the connect fails and the balancer moves on.
    let mut demos = demos;
    let dead = demos.remove(1);
    drop(dead);
    let stateless = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "echo"),
    ];
    let mut failed = 0;
    let mut created = 0;
    for i in 0..6 {
        match post(addr, &[], INIT).status {
            200 => created += 1,
            _ => failed += 1,
        }
        if post(addr, &stateless, &echo_call(i, "x")).status != 200 {
            failed += 1;
        }
    }
    assert!(
        failed <= 1,
        "{failed} requests failed after the upstream died"
    );
    assert!(metric(admin, "shardcat_upstream_failovers_total") >= 1.0);
    let live: u64 = demos.iter().filter_map(held).sum();
    assert_eq!(
        live,
        6 + created,
        "the live upstreams' 6 sessions plus the new ones"
    );
}

/// A server of the handshake era only, as the TypeScript SDK 1.32 is: a POST without a session
/// (server/discover included) gets 400; initialize opens session `hs-1`; requests in it get an
/// `ok` result carrying their own id. It reports each POST in the session (head and body) and
/// each DELETE.
fn handshake_upstream() -> (SocketAddr, std::sync::mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                while let Some((head, body)) = read_request(&mut s, &mut buf) {
                    let lower = head.to_ascii_lowercase();
                    let in_session = lower.contains("mcp-session-id: hs-1");
                    let msg: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let (status, extra, out) = if lower.starts_with("delete") {
                        let _ = tx.send("DELETE hs-1".into());
                        (200, "", String::new())
                    } else if msg["method"] == "initialize" {
                        let r = serde_json::json!({"jsonrpc":"2.0","id":msg["id"],"result":{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"hs","version":"1"}}});
                        (200, "mcp-session-id: hs-1\r\n", r.to_string())
                    } else if !in_session {
                        (400, "", r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"Bad Request: Mcp-Session-Id header is required"}}"#.to_string())
                    } else if msg.get("id").is_none() {
                        (202, "", String::new())
                    } else {
                        let _ = tx.send(format!("{head}\n\n{body}"));
                        let r = serde_json::json!({"jsonrpc":"2.0","id":msg["id"],"result":{"content":[{"type":"text","text":"ok"}]}});
                        (200, "", r.to_string())
                    };
                    let resp = format!("HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{out}", out.len());
                    if s.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

#[test]
fn stateless_requests_to_a_handshake_era_server_go_into_the_gateways_session() {
    let (up, seen) = handshake_upstream();
    let mut gw = gateway(&format!("http://{up}/mcp"), 1, None);
    let addr = gw.addr("listen");
    let h = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "echo"),
    ];
    let body = r#"{"jsonrpc":"2.0","id":"c-7","method":"tools/call","params":{"name":"echo","arguments":{"text":"x"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"progressToken":"t-7"}}}"#;
    let r = post(addr, &h, body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["id"], "c-7", "the client's id comes back: {v}");
    assert_eq!(v["result"]["resultType"], "complete", "{v}");
    assert_eq!(v["result"]["content"][0]["text"], "ok");
    let got = seen
        .recv_timeout(Duration::from_secs(5))
        .expect("the request upstream");
    let (head, sent) = got.split_once("\n\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.contains("mcp-protocol-version: 2025-11-25"), "{head}");
    assert!(!head.contains("2026-07-28"), "{head}");
    let sent: serde_json::Value = serde_json::from_str(sent).unwrap();
    assert_ne!(
        sent["id"], "c-7",
        "requests in the shared session carry the gateway's ids"
    );
    assert_eq!(
        sent["params"]["_meta"],
        serde_json::json!({"progressToken": sent["id"]})
    );
    // discover is answered from the gateway's initialize.
    let d = r#"{"jsonrpc":"2.0","id":8,"method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    let r = post(
        addr,
        &[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "server/discover"),
        ],
        d,
    );
    assert_eq!(
        r.json()["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "hs"
    );
    // Shutdown ends the gateway's own session upstream too.
    assert_eq!(gw.terminate(Duration::from_secs(10)), Some(0));
    let end = seen.recv_timeout(Duration::from_secs(5));
    assert_eq!(end.as_deref(), Ok("DELETE hs-1"));
}

/// A burst of connections larger than a shard's accept batch (64): the accept loop pauses for a
/// timer turn between batches, and every connection is still accepted and served, on both
/// drivers. The shard's loop-lag probe ran meanwhile.
#[test]
fn a_burst_of_connections_past_the_accept_batch_is_served_on_both_drivers() {
    const BURST: usize = 300;
    let demo = demo();
    for driver in ["uring", "legacy"] {
        let toml = format!("[server]\ndriver = \"{driver}\"\n");
        let gw = gateway(&demo_url(&demo), 1, Some(&toml));
        let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
        // All connected before the first request: the backlog holds the whole burst.
        let mut clients: Vec<Client> = (0..BURST).map(|_| Client::connect(addr)).collect();
        let sl = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ];
        for (i, c) in clients.iter_mut().enumerate() {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"c{i}"}},"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
            );
            let r = c
                .post(addr, &sl, &body)
                .unwrap_or_else(|e| panic!("{driver}: connection {i}: {e}"));
            assert_eq!(r.status, 200, "{driver}: connection {i}: {}", r.text());
            assert_eq!(
                r.json()["result"]["content"][0]["text"],
                format!("c{i}"),
                "{driver}"
            );
        }
        assert_eq!(
            metric(admin, "shardcat_connections_accepted_total"),
            BURST as f64,
            "{driver}"
        );
        assert!(
            metric(admin, "shardcat_shard_loop_lag_seconds_count") > 0.0,
            "{driver}: the lag probe ran"
        );
    }
}
