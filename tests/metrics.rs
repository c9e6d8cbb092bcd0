//! `/metrics` as Prometheus tooling reads it: the real gateway under traffic of every upstream
//! kind (the demo HTTP upstream and the stdio fixture), with a rejection and a tape recording,
//! checked by `promtool check metrics` (Debian package `prometheus`, installed on first use by
//! `tests/prometheus/install.sh`); and the figures checked to add up across shards.

#[path = "support/process.rs"]
mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use support::exposition::{samples, sum, Sample};
use support::*;

const V: (&str, &str) = ("mcp-protocol-version", "2025-06-18");
const HISTOGRAM: &str = "shardcat_request_duration_seconds";
/// The documented bucket bounds (README, `metrics::DURATION_BUCKETS`), then `+Inf`.
const LE: [&str; 19] = [
    "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
    "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "+Inf",
];

/// promtool, installed once per test process. One that cannot be installed fails the test with
/// the installer's reason: it never passes silently.
fn promtool() -> &'static PathBuf {
    static PROMTOOL: OnceLock<PathBuf> = OnceLock::new();
    PROMTOOL.get_or_init(|| {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("bash")
            .arg(repo.join("tests/prometheus/install.sh"))
            .output()
            .expect("run tests/prometheus/install.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "promtool could not be installed:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("promtool ready: "))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("install.sh said nothing of promtool:\n{stdout}"))
    })
}

/// Runs `promtool check metrics` on `text`; asserts it exits 0, printing what it found if not.
fn assert_promtool_accepts(text: &str, what: &str) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics rejected the {what} exposition ({}):\n{}{}\n--- exposition ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scrape(admin: SocketAddr) -> String {
    let r = get(admin, "/metrics");
    assert_eq!(r.status, 200);
    r.text()
}

/// The names and label sets of every series, values aside.
fn series(text: &str) -> BTreeSet<String> {
    samples(text)
        .iter()
        .map(|s| format!("{}{:?}", s.name, s.labels))
        .collect()
}

/// The OpenMetrics answer carries the same series as the text one, and closes with `# EOF`.
fn assert_openmetrics_matches(admin: SocketAddr, text: &str) {
    let r = raw(
        admin,
        format!("GET /metrics HTTP/1.1\r\nhost: {admin}\r\naccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/openmetrics-text; version=1.0.0")));
    let om = r.text();
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE shardcat_requests counter\n"), "{om}");
    assert_eq!(series(&om), series(text));
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shardcat-metrics-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Waits until the shards' latency snapshots (published once a second) count `n` requests.
fn wait_histogram_count(admin: SocketAddr, n: f64) {
    let mut got = 0.0;
    let ok = eventually(Duration::from_secs(5), || {
        got = metric(admin, &format!("{HISTOGRAM}_count"));
        got >= n
    });
    assert!(ok, "{HISTOGRAM}_count stayed at {got}, want {n}");
}

#[test]
fn promtool_accepts_the_metrics_of_an_http_upstream_with_recording_and_rejections() {
    let demo = demo();
    let tapes = temp_dir("http");
    let toml = format!(
        "[limits]\nmax_sessions = 2\n[tapes]\ndir = \"{}\"\n",
        tapes.display()
    );
    let gw = gateway(&demo_url(&demo), 2, Some(&toml));
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let sid = initialize(addr);
    let _other = initialize(addr);
    let s = ("mcp-session-id", sid.as_str());
    assert_eq!(post(addr, &[s, V], INITIALIZED).status, 202);
    assert_eq!(post(addr, &[s, V], &echo_call(2, "hi")).status, 200);
    // SSE: progress notifications, then the result.
    let progress = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"progress","arguments":{"count":2,"interval_ms":5}}}"#;
    assert_eq!(post(addr, &[s, V], progress).status, 200);
    // A method outside the fixed list, a malformed body, and a rejection at max_sessions.
    let odd = r#"{"jsonrpc":"2.0","id":4,"method":"vendor/thing","params":{}}"#;
    post(addr, &[s, V], odd);
    assert_eq!(post(addr, &[s, V], "{not json").status, 400);
    assert_eq!(post(addr, &[], INIT).status, 503);
    wait_histogram_count(admin, 7.0);
    let text = scrape(admin);
    assert_promtool_accepts(&text, "HTTP upstream");
    assert_openmetrics_matches(admin, &text);
    assert!(!text.contains("shard=\"all\""));
    let all = |series: &str| sum(&text, series).unwrap_or_else(|| panic!("no {series}"));
    assert_eq!(all("shardcat_rejections_total{reason=\"sessions\"}"), 1.0);
    // vendor/thing is outside the fixed list; the malformed body is `invalid`.
    assert_eq!(all("shardcat_requests_total{method=\"other\"}"), 1.0);
    assert_eq!(
        all("shardcat_requests_total{method=\"invalid\",status=\"400\"}"),
        1.0
    );
    assert!(all("shardcat_tape_frames_offered_total") > 0.0);
    assert_eq!(all("shardcat_max_sessions"), 2.0);
    assert_eq!(all("shardcat_upstream_state{upstream=\"0\"}"), 0.0);
    assert!(text.contains(&format!(
        "shardcat_upstream_info{{upstream=\"0\",url=\"{}\"}} 1\n",
        demo_url(&demo)
    )));
    drop(gw);
    let _ = std::fs::remove_dir_all(&tapes);
}

#[test]
fn promtool_accepts_the_metrics_of_a_stdio_upstream() {
    let tapes = temp_dir("stdio");
    let toml = format!(
        "[[upstream]]\nkind = \"stdio\"\ncommand = \"{}\"\nkill_grace_ms = 500\n[tapes]\ndir = \"{}\"\n",
        fixture_bin("mcp-stdio-server").display(),
        tapes.display()
    );
    let gw = gateway_config(2, &toml);
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let sid = initialize(addr);
    let s = ("mcp-session-id", sid.as_str());
    assert_eq!(post(addr, &[s, V], INITIALIZED).status, 202);
    assert_eq!(post(addr, &[s, V], &echo_call(2, "hi")).status, 200);
    wait_histogram_count(admin, 3.0);
    let text = scrape(admin);
    assert_promtool_accepts(&text, "stdio upstream");
    assert_openmetrics_matches(admin, &text);
    assert!(sum(&text, "shardcat_stdio_spawned_total").is_some_and(|n| n >= 1.0));
    assert!(sum(&text, "shardcat_stdio_processes").is_some_and(|n| n >= 1.0));
    // No HTTP upstream: no upstream state or info families.
    assert!(!text.contains("shardcat_upstream_state"));
    assert!(!text.contains("shardcat_upstream_info"));
    drop(gw);
    let _ = std::fs::remove_dir_all(&tapes);
}

/// Per (method, status): the requests the clients sent.
struct Sent {
    sessions: usize,
    calls_per_session: usize,
}

impl Sent {
    fn expected(&self) -> [(&'static str, &'static str, usize); 4] {
        [
            ("initialize", "200", self.sessions),
            ("notifications/initialized", "202", self.sessions),
            ("tools/call", "200", self.sessions * self.calls_per_session),
            ("DELETE", "200", self.sessions),
        ]
    }

    fn total(&self) -> usize {
        self.expected().iter().map(|(_, _, n)| n).sum()
    }
}

/// 24 sessions at once on a 2-shard gateway, each on its own connections (so many land on the
/// shard that does not own their session and are handed over).
fn concurrent_sessions(addr: SocketAddr, sent: &Sent) {
    let calls = sent.calls_per_session;
    let threads: Vec<_> = (0..sent.sessions)
        .map(|_| {
            std::thread::spawn(move || {
                let sid = initialize(addr);
                let s = ("mcp-session-id", sid.as_str());
                assert_eq!(post(addr, &[s, V], INITIALIZED).status, 202);
                for i in 0..calls {
                    let r = post(addr, &[s, V], &echo_call(i as u64 + 2, "x"));
                    assert_eq!(r.status, 200, "{}", r.text());
                }
                assert_eq!(delete(addr, &sid).status, 200);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}

#[test]
fn request_counters_summed_over_shards_equal_the_requests_sent() {
    let demo = demo();
    let gw = gateway(&demo_url(&demo), 2, None);
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let sent = Sent {
        sessions: 24,
        calls_per_session: 3,
    };
    concurrent_sessions(addr, &sent);
    // A request is counted once its answer is written, so the client can read the answer to
    // its last request a moment before the count moves: wait for the total, then compare.
    let total: usize = sent.expected().iter().map(|e| e.2).sum();
    let settled = eventually(Duration::from_secs(5), || {
        sum(&scrape(admin), "shardcat_requests_total") == Some(total as f64)
    });
    assert!(settled, "{}", scrape(admin));
    let text = scrape(admin);
    for (method, status, n) in sent.expected() {
        let series = format!("shardcat_requests_total{{method=\"{method}\",status=\"{status}\"}}");
        let per_shard: Vec<f64> = ["0", "1"]
            .iter()
            .map(|shard| {
                sum(
                    &text,
                    &format!("shardcat_requests_total{{shard=\"{shard}\",method=\"{method}\",status=\"{status}\"}}"),
                )
                .unwrap_or_else(|| panic!("{series} has no series for shard {shard}"))
            })
            .collect();
        assert_eq!(
            per_shard.iter().sum::<f64>(),
            n as f64,
            "{series}: {per_shard:?}"
        );
        assert_eq!(sum(&text, &series), Some(n as f64));
    }
    assert_eq!(
        sum(&text, "shardcat_requests_total"),
        Some(sent.total() as f64),
        "no other requests were counted"
    );
    assert_eq!(
        sum(&text, "shardcat_sessions_created_total"),
        Some(sent.sessions as f64)
    );
    assert_eq!(
        sum(&text, "shardcat_sessions_ended_total"),
        Some(sent.sessions as f64)
    );
    assert_eq!(
        sum(&text, "shardcat_handoffs_sent_total"),
        sum(&text, "shardcat_handoffs_received_total")
    );
}

/// One shard's histogram: its bucket series in order, with `_sum` and `_count`.
struct Histogram {
    buckets: Vec<(String, f64)>,
    sum: f64,
    count: f64,
}

/// Each shard's histogram of the family `family` in `text`.
fn histograms_of(text: &str, family: &str) -> Vec<(String, Histogram)> {
    let all = samples(text);
    let shards: BTreeSet<String> = all
        .iter()
        .filter(|s| s.name.starts_with(family))
        .map(|s| s.label("shard").expect("shard label").to_string())
        .collect();
    let one = |name: &str, shard: &str| -> Vec<&Sample> {
        all.iter()
            .filter(|s| s.name == format!("{family}{name}") && s.label("shard") == Some(shard))
            .collect()
    };
    shards
        .into_iter()
        .map(|shard| {
            let single = |name: &str| {
                let v = one(name, &shard);
                assert_eq!(v.len(), 1, "{family}{name} of shard {shard}");
                v[0].value
            };
            let h = Histogram {
                buckets: one("_bucket", &shard)
                    .iter()
                    .map(|s| (s.label("le").expect("le").to_string(), s.value))
                    .collect(),
                sum: single("_sum"),
                count: single("_count"),
            };
            (shard, h)
        })
        .collect()
}

fn histograms(text: &str) -> Vec<(String, Histogram)> {
    histograms_of(text, HISTOGRAM)
}

/// A shard's histogram has the documented bounds in order, cumulative buckets, and a last
/// bucket (`+Inf`) equal to its count.
fn assert_shape(shard: &str, h: &Histogram) {
    let les: Vec<&str> = h.buckets.iter().map(|(le, _)| le.as_str()).collect();
    assert_eq!(les, LE, "shard {shard}: the documented bounds, in order");
    assert!(
        h.buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "shard {shard}: buckets decrease: {:?}",
        h.buckets
    );
    assert_eq!(
        h.buckets.last().map(|b| b.1),
        Some(h.count),
        "shard {shard}"
    );
}

/// Each shard probes its own event loop every 10 ms: a histogram per shard with the request
/// histogram's bounds, cumulative, counting probes as they happen (no more than one per 10 ms).
#[test]
fn each_shard_reports_its_event_loop_lag() {
    const LAG: &str = "shardcat_shard_loop_lag_seconds";
    let demo = demo();
    let gw = gateway(&demo_url(&demo), 2, None);
    let admin = gw.addr("admin");
    let started = std::time::Instant::now();
    let counts = |text: &str| -> Vec<f64> {
        histograms_of(text, LAG)
            .iter()
            .map(|(_, h)| h.count)
            .collect()
    };
    assert!(eventually(Duration::from_secs(5), || {
        let c = counts(&scrape(admin));
        c.len() == 2 && c.iter().all(|n| *n >= 5.0)
    }));
    std::thread::sleep(Duration::from_millis(200));
    let text = scrape(admin);
    let elapsed = started.elapsed().as_secs_f64();
    let hs = histograms_of(&text, LAG);
    assert_eq!(hs.len(), 2, "one histogram per shard");
    for (shard, h) in &hs {
        assert_shape(shard, h);
        assert!(
            h.count <= elapsed / 0.010 + 1.0,
            "shard {shard}: {} probes in {elapsed:.2} s",
            h.count
        );
        // Each probe waited its 10 ms before it was counted: no more probes than that allows
        // (a probe that spun would exceed it), and lateness is never negative.
        assert!(h.sum >= 0.0, "shard {shard}: sum {}", h.sum);
    }
    let later = counts(&scrape(admin));
    assert!(
        later.iter().zip(hs.iter()).all(|(b, (_, a))| *b >= a.count),
        "counts never go back"
    );
}

#[test]
fn latency_histogram_buckets_are_cumulative_and_count_every_request() {
    let demo = demo();
    let gw = gateway(&demo_url(&demo), 2, None);
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let sent = Sent {
        sessions: 20,
        calls_per_session: 2,
    };
    concurrent_sessions(addr, &sent);
    wait_histogram_count(admin, sent.total() as f64);
    let first = scrape(admin);
    let hs = histograms(&first);
    assert_eq!(hs.len(), 2, "one histogram per shard");
    for (shard, h) in &hs {
        assert_shape(shard, h);
        if h.count > 0.0 {
            // Each request took at least a microsecond and, on loopback, well under 30 s.
            assert!(
                h.sum > 0.0 && h.sum < 30.0 * h.count,
                "shard {shard}: sum {}",
                h.sum
            );
        }
    }
    assert_eq!(
        hs.iter().map(|(_, h)| h.count).sum::<f64>(),
        sent.total() as f64,
        "every request is observed once"
    );
    // Counters never go back: more traffic, and every bucket is at least what it was.
    concurrent_sessions(addr, &sent);
    wait_histogram_count(admin, 2.0 * sent.total() as f64);
    let second = histograms(&scrape(admin));
    for ((shard, a), (_, b)) in hs.iter().zip(&second) {
        for ((le, x), (_, y)) in a.buckets.iter().zip(&b.buckets) {
            assert!(y >= x, "shard {shard} le={le}: {x} then {y}");
        }
        assert!(b.sum >= a.sum);
    }
}
