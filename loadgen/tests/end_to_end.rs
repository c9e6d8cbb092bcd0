//! loadgen as a real process against the real demo MCP server (run in this test process on a
//! loopback port): a passing run with its JSON report, SSE delivery accounting, the stateless
//! and session workloads, and a failed criterion giving a non-zero exit.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");

/// Starts the demo server on its own thread; it lives as long as the test process.
fn demo() -> String {
    let listener = shardcat::demo::bind("127.0.0.1:0").expect("bind demo");
    let addr = listener.local_addr().expect("addr");
    let cfg = shardcat::demo::DemoConfig {
        push_interval: Duration::from_millis(20),
        ..Default::default()
    };
    std::thread::spawn(move || shardcat::demo::run(listener, cfg));
    format!("http://{addr}/mcp")
}

/// Runs loadgen with `args`; returns its exit code and parsed JSON report.
fn run(target: &str, args: &[&str]) -> (i32, Value) {
    let json = std::env::temp_dir().join(format!(
        "loadgen-e2e-{}-{}.json",
        std::process::id(),
        args.join("_").replace(['/', ' '], "")
    ));
    let out = Command::new(LOADGEN)
        .args([
            "--target",
            target,
            "--json",
            json.to_str().expect("utf-8 path"),
        ])
        .args(args)
        .output()
        .expect("run loadgen");
    let report = std::fs::read_to_string(&json).unwrap_or_else(|_| {
        panic!(
            "no JSON report; stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let _ = std::fs::remove_file(&json);
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(&report).expect("JSON report"),
    )
}

#[test]
fn call_workload_passes_and_reports() {
    let target = demo();
    let (code, r) = run(
        &target,
        &[
            "--workload",
            "call",
            "--connections",
            "8",
            "--duration-s",
            "1",
        ],
    );
    assert_eq!(code, 0, "{r}");
    assert!(r["requests"].as_u64().unwrap() > 100, "{r}");
    assert_eq!(r["errors"], 0);
    assert_eq!(r["pass"], true);
    assert!(r["rps"].as_f64().unwrap() > 100.0);
}

#[test]
fn session_and_stateless_workloads_run_clean() {
    let target = demo();
    for workload in ["session", "stateless"] {
        let (code, r) = run(
            &target,
            &[
                "--workload",
                workload,
                "--connections",
                "4",
                "--duration-s",
                "1",
            ],
        );
        assert_eq!(code, 0, "{workload}: {r}");
        assert!(r["requests"].as_u64().unwrap() > 10, "{workload}: {r}");
        assert_eq!(r["errors"], 0, "{workload}");
        let methods: Vec<&str> = r["by_method"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["method"].as_str().unwrap())
            .collect();
        let want: &[&str] = match workload {
            "session" => &[
                "DELETE",
                "initialize",
                "notifications/initialized",
                "tools/call",
            ],
            _ => &["tools/call"],
        };
        assert_eq!(methods, want, "{workload}");
    }
}

/// Churn measures whole cycles, and each request inside them on its own.
#[test]
fn churn_times_each_request_of_a_cycle() {
    let target = demo();
    let (code, r) = run(
        &target,
        &["--scenario", "churn", "--rate", "50", "--duration-s", "1"],
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["unit"], "cycle");
    let cycles = r["requests"].as_u64().unwrap();
    assert!(cycles > 20, "{r}");
    let by_method = r["by_method"].as_array().unwrap();
    assert_eq!(by_method.len(), 4, "{r}");
    for m in by_method {
        // Cycles in flight as the window opens or closes count on one side only.
        let n = m["count"].as_u64().unwrap();
        assert!(n.abs_diff(cycles) <= 5, "{m} for {cycles} cycles");
        assert!(m["latency"]["p50_ms"].as_f64().unwrap() > 0.0, "{m}");
    }
}

#[test]
fn open_loop_reports_achieved_against_target_rate() {
    let target = demo();
    let (code, r) = run(
        &target,
        &[
            "--workload",
            "stateless",
            "--connections",
            "10",
            "--rate",
            "500",
            "--duration-s",
            "2",
        ],
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["mode"], "open");
    assert_eq!(r["target_rps"].as_f64(), Some(500.0));
    let achieved = r["rps"].as_f64().unwrap();
    assert!(
        (400.0..600.0).contains(&achieved),
        "achieved {achieved} req/s for a 500 req/s target"
    );
}

#[test]
fn sse_scenario_counts_every_event() {
    let target = demo();
    let (code, r) = run(
        &target,
        &[
            "--scenario",
            "sse",
            "--connections",
            "3",
            "--duration-s",
            "1",
        ],
    );
    assert_eq!(code, 0, "{r}");
    let sse = &r["sse"];
    assert_eq!(sse["streams"], 3, "{r}");
    assert!(sse["events"].as_u64().unwrap() >= 3 * 20, "{r}");
    assert_eq!(sse["lost"], 0);
    assert_eq!(sse["gaps"], 0);
}

#[test]
fn a_failed_criterion_exits_non_zero() {
    let target = demo();
    let (code, r) = run(
        &target,
        &[
            "--workload",
            "call",
            "--connections",
            "2",
            "--duration-s",
            "1",
            "--max-p99-ms",
            "0.000001",
        ],
    );
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["pass"], false);
}

#[test]
fn an_unreachable_target_is_an_error_not_a_pass() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let out = Command::new(LOADGEN)
        .args([
            "--target",
            &format!("http://{addr}/mcp"),
            "--connections",
            "2",
            "--duration-s",
            "1",
        ])
        .output()
        .expect("run loadgen");
    assert_ne!(
        out.status.code(),
        Some(0),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The faults scenario starts its own gateway (`shardcat`) and upstreams (`fault-upstream`),
/// built by `cargo test --workspace` into this target directory.
#[test]
fn faults_scenario_kills_and_restarts_an_upstream_and_reports_each_phase() {
    let dir = std::path::Path::new(LOADGEN).parent().expect("target dir");
    let (gateway, fault) = (dir.join("shardcat"), dir.join("fault-upstream"));
    assert!(
        gateway.exists() && fault.exists(),
        "run the tests with `cargo test --workspace`"
    );
    let json = std::env::temp_dir().join(format!("loadgen-faults-{}.json", std::process::id()));
    let out = Command::new(LOADGEN)
        .args([
            "--scenario",
            "faults",
            "--duration-s",
            "4.5",
            "--connections",
            "2",
        ])
        .args(["--slow-clients", "10", "--flood-bytes", "1048576"])
        .args(["--gateway-bin", gateway.to_str().unwrap()])
        .args(["--fault-bin", fault.to_str().unwrap()])
        .args(["--json", json.to_str().unwrap()])
        .output()
        .expect("run loadgen");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(&json).unwrap_or_else(|_| panic!("no report:\n{text}")),
    )
    .expect("JSON report");
    let _ = std::fs::remove_file(&json);
    let f = &report["failover"];
    assert_eq!(f["windows"].as_array().map(Vec::len), Some(5), "{report}");
    assert!(f["served"].as_u64().unwrap() > 0);
    assert!(f["breaker_open_ms"].as_f64().is_some(), "{report}");
    assert!(f["recovered_ms"].as_f64().is_some(), "{report}");
    assert_eq!(f["failed_after_open"], 0, "{report}");
    let s = &report["slow_clients"];
    assert_eq!(s["streams_completed"], 10, "{report}");
    assert!(s["bytes_delivered"].as_u64().unwrap() >= 10 * 1_048_576);
    assert!(s["rss_peak_mb"].as_f64().unwrap() > 0.0);
    let stalled = report["stalled"].as_array().unwrap();
    assert_eq!(stalled.len(), 2);
    assert!(stalled
        .iter()
        .all(|s| s["statuses"].as_array().unwrap().iter().all(|c| c == 504)));
    assert_eq!(report["pass"], true, "{text}");
    assert_eq!(out.status.code(), Some(0));
}

/// A gateway process, killed when dropped.
struct Gateway(std::process::Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `shardcat serve` (2 shards) in front of `upstream`; returns it with its listen and
/// admin addresses from its READY line.
fn gateway(bin: &std::path::Path, upstream: &str) -> (Gateway, String, String) {
    gateway_with(bin, upstream, &[])
}

fn gateway_with(
    bin: &std::path::Path,
    upstream: &str,
    extra: &[&str],
) -> (Gateway, String, String) {
    use std::io::BufRead;
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--shards", "2", "--upstream", upstream])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start shardcat");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let g = Gateway(child);
    let ready = lines
        .find_map(|l| l.ok().filter(|l| l.starts_with("READY ")))
        .expect("READY line");
    std::thread::spawn(move || for _ in lines {});
    let field = |k: &str| {
        ready
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .expect("READY field")
            .trim_start_matches("http://")
            .trim_end_matches("/mcp")
            .to_string()
    };
    let (listen, admin) = (field("listen"), field("admin"));
    (g, listen, admin)
}

/// A few seconds of the soak against a real gateway: every sample is written to the CSV and
/// the JSON, the gauges read from the real /metrics page follow the users (split 1/4 SSE,
/// 1/4 stateless), and every check but the trends (too short a run to judge) passes.
#[test]
fn soak_samples_a_real_gateway_and_judges_every_series() {
    let dir = std::path::Path::new(LOADGEN).parent().expect("target dir");
    let bin = dir.join("shardcat");
    assert!(bin.exists(), "run the tests with `cargo test --workspace`");
    let upstream = demo();
    let (g, listen, admin) = gateway(&bin, &upstream);
    let tmp = std::env::temp_dir();
    let csv = tmp.join(format!("loadgen-soak-{}.csv", std::process::id()));
    let json = tmp.join(format!("loadgen-soak-{}.json", std::process::id()));
    let out = Command::new(LOADGEN)
        .args([
            "--target",
            &format!("http://{listen}/mcp"),
            "--scenario",
            "soak",
        ])
        .args(["--duration-s", "6", "--sample-s", "1", "--connections", "8"])
        .args(["--rate", "200", "--admin", &format!("http://{admin}")])
        .args(["--watch-pid", &g.0.id().to_string()])
        .args(["--samples-csv", csv.to_str().unwrap()])
        .args(["--json", json.to_str().unwrap()])
        .output()
        .expect("run loadgen");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(&json).unwrap_or_else(|_| panic!("no report:\n{text}")),
    )
    .expect("JSON report");
    let rows = std::fs::read_to_string(&csv).expect("CSV");
    let _ = std::fs::remove_file(&json);
    let _ = std::fs::remove_file(&csv);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{text}");
    assert_eq!(report["split"]["sse"], 2, "{report}");
    assert_eq!(report["split"]["stateless"], 2, "{report}");
    assert_eq!(report["split"]["session"], 4, "{report}");
    let samples = report["samples"].as_array().expect("samples");
    assert_eq!(samples.len(), 7, "0..=6 s every second: {text}");
    assert_eq!(
        rows.lines().count(),
        1 + samples.len(),
        "header + one row each"
    );
    let last = &samples[6];
    assert!(last["rss_kb"].as_u64().unwrap() > 0);
    assert!(
        last["fds"].as_u64().unwrap() >= 8,
        "a socket per client at least"
    );
    assert_eq!(last["gauges"]["connections"], 8, "{report}");
    assert_eq!(last["gauges"]["sse_streams"], 2, "{report}");
    assert!(
        last["gauges"]["sessions"].as_u64().unwrap() >= 2,
        "{report}"
    );
    assert!(last["req_per_s"].as_f64().unwrap() > 100.0, "{report}");
    assert_eq!(report["trends"].as_array().map(Vec::len), Some(9));
    for c in report["checks"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        if !name.starts_with("trend ") {
            assert_eq!(c["pass"], true, "{name}: {}\n{text}", c["detail"]);
        }
    }
    drop(g);
}

/// SSE users whose sessions the gateway ends under them (a 1 s idle timeout here) open new
/// sessions and keep receiving events, instead of retrying the dead session.
#[test]
fn sse_users_replace_a_session_the_gateway_ended() {
    let dir = std::path::Path::new(LOADGEN).parent().expect("target dir");
    let bin = dir.join("shardcat");
    assert!(bin.exists(), "run the tests with `cargo test --workspace`");
    let cfg = std::env::temp_dir().join(format!("loadgen-sse-idle-{}.toml", std::process::id()));
    std::fs::write(&cfg, "[timeouts]\nsession_idle_timeout_ms = 1000\n").expect("config");
    let upstream = demo();
    let (g, listen, _) = gateway_with(&bin, &upstream, &["--config", cfg.to_str().unwrap()]);
    let (_, r) = run(
        &format!("http://{listen}/mcp"),
        &[
            "--workload",
            "sse",
            "--connections",
            "2",
            "--duration-s",
            "4",
        ],
    );
    let _ = std::fs::remove_file(&cfg);
    // The demo pushes every 20 ms: 2 streams × 4 s is about 400 events. Stuck on a dead
    // session after the first expiry, they would stop near 100.
    let events = r["sse"]["events"].as_u64().expect("sse events");
    assert!(events > 250, "{r}");
    assert_eq!(r["sse"]["lost"], 0, "{r}");
    drop(g);
}
