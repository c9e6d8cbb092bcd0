//! What a run found: per-step rows, the overall summary, the pass/fail checks; printed for
//! people and serialized for scripts (`--json`).

use serde::Serialize;

/// print!/println! that ignore a closed stdout (e.g. piped into `head`) instead of panicking:
/// the run's JSON and exit code still matter.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($t)*);
    }};
}

macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

use hdrhistogram::Histogram;

use crate::stats::{SseStats, Stats};
use crate::timeline::Second;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn of(s: &Stats) -> Latency {
        Latency::of_hist(&s.hist)
    }

    /// Quantiles of a histogram of microseconds, in milliseconds (all 0 when empty).
    pub fn of_hist(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: ms(1.0),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// The latency of one kind of request over the measured windows.
#[derive(Debug, Clone, Serialize)]
pub struct MethodLatency {
    /// JSON-RPC method, or DELETE.
    pub method: String,
    pub count: u64,
    pub latency: Latency,
}

impl MethodLatency {
    pub fn all(s: &Stats) -> Vec<MethodLatency> {
        s.by_method
            .iter()
            .map(|(m, h)| MethodLatency {
                method: (*m).to_string(),
                count: h.len(),
                latency: Latency::of_hist(h),
            })
            .collect()
    }
}

/// One measured window (a ramp step, or the whole run).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub connections: usize,
    /// Time for the users added at this step to finish their setup.
    pub setup_ms: u64,
    pub seconds: f64,
    pub requests: u64,
    pub rps: f64,
    /// Open loop (or churn): the offered rate.
    pub target_rps: Option<f64>,
    pub latency: Latency,
    /// Errors and rejections during setup and the window.
    pub errors: u64,
    pub rejected: u64,
    pub missed: u64,
    /// When the window started (Unix time, ms).
    pub start_unix_ms: u64,
    /// Seconds from the window's start to its first and last error (none: no error in it).
    pub first_error_s: Option<f64>,
    pub last_error_s: Option<f64>,
    pub cpu_us_per_req: Option<f64>,
    pub rss_kb: Option<u64>,
    pub pass: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct WatchFigures {
    pub pid: u32,
    /// RSS when loadgen started, before any load.
    pub start_rss_kb: u64,
    pub peak_rss_kb: u64,
    /// Peak RSS / peak connections.
    pub rss_per_conn_kb: f64,
    /// (Peak − start RSS) / peak connections: what each connection added.
    pub rss_growth_per_conn_kb: f64,
    pub cpu_s: f64,
    pub cpu_us_per_req: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub pass: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub scenario: String,
    pub workload: String,
    /// "closed" or "open".
    pub mode: String,
    pub threads: usize,
    pub connections: usize,
    pub seconds: f64,
    /// What one measured unit is: request, event, or cycle.
    pub unit: String,
    pub requests: u64,
    pub rps: f64,
    pub target_rps: Option<f64>,
    pub errors: u64,
    pub rejected: u64,
    pub reconnects: u64,
    /// Sessions opened again after a 404 to the old one (call workload).
    pub reinits: u64,
    pub iterations: u64,
    pub missed: u64,
    pub latency: Latency,
    /// The first measured window, second by second (`--timeline-csv` writes it as CSV).
    pub timeline: Vec<Second>,
    /// Each kind of request on its own over the measured windows (session workload: every
    /// request; churn: the requests inside the cycles, each timed from its send).
    pub by_method: Vec<MethodLatency>,
    /// Open loop: how late loadgen's own sends went out (p50, p99, max in ms).
    pub send_lag_ms: Option<[f64; 3]>,
    pub sse: Option<SseStats>,
    pub watch: Option<WatchFigures>,
    pub steps: Vec<Row>,
    /// Sessions the gateway held before the run (other clients'), from --admin.
    pub sessions_before: Option<u64>,
    /// Sessions the run left behind: held after the run beyond `sessions_before`.
    pub leaked_sessions: Option<u64>,
    /// The admin endpoint could not be read after the run.
    pub admin_error: Option<String>,
    pub error_samples: Vec<(String, u64)>,
    pub checks: Vec<Check>,
    pub pass: bool,
}

pub fn print_table_header(watch: bool) {
    out!(
        "{:>7} {:>8} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "conns",
        "setup ms",
        "req/s",
        "target",
        "p50 ms",
        "p99 ms",
        "errors",
        "rejected"
    );
    if watch {
        out!(" {:>11} {:>9}", "cpu-µs/req", "rss MB");
    }
    outln!(" {:>6}", "result");
}

pub fn print_row(r: &Row) {
    let target = r.target_rps.map_or("-".to_string(), |t| format!("{t:.0}"));
    // Churn holds no steady connections: each cycle opens and closes its own.
    let conns = match r.connections {
        0 => "churn".to_string(),
        n => n.to_string(),
    };
    out!(
        "{:>7} {:>8} {:>10.0} {:>10} {:>8.2} {:>8.2} {:>8} {:>8}",
        conns,
        r.setup_ms,
        r.rps,
        target,
        r.latency.p50_ms,
        r.latency.p99_ms,
        r.errors,
        r.rejected
    );
    if let (Some(cpu), Some(rss)) = (r.cpu_us_per_req, r.rss_kb) {
        out!(" {:>11.1} {:>9.1}", cpu, rss as f64 / 1024.0);
    }
    outln!(" {:>6}", if r.pass { "pass" } else { "FAIL" });
}

pub fn print_summary(r: &Report) {
    outln!();
    outln!(
        "{} {} ({}, {} loop, {} thread(s)) against {}",
        r.scenario,
        r.workload,
        r.unit,
        r.mode,
        r.threads,
        r.target
    );
    let target = r
        .target_rps
        .map_or(String::new(), |t| format!(", target {t:.0}/s"));
    let conns = match r.connections {
        0 => String::new(),
        n => format!(", peak {n} connections"),
    };
    outln!(
        "  {:<11}{} {}s in {:.1} s: {:.0}/s{target}{conns}",
        "measured",
        r.requests,
        r.unit,
        r.seconds,
        r.rps
    );
    outln!(
        "  {:<11}errors {}, rejected {}, reconnects {}, re-initializes {}, iterations {}, missed {}",
        "counts",
        r.errors,
        r.rejected,
        r.reconnects,
        r.reinits,
        r.iterations,
        r.missed
    );
    for (i, s) in r.steps.iter().enumerate() {
        if let (Some(first), Some(last)) = (s.first_error_s, s.last_error_s) {
            let which = if r.steps.len() > 1 {
                format!(" (window {})", i + 1)
            } else {
                String::new()
            };
            outln!(
                "  {:<11}first {first:.3} s, last {last:.3} s after the window's start{which}",
                "errors at"
            );
        }
    }
    let l = &r.latency;
    outln!(
        "  {:<11}p50 {:.3} ms, p90 {:.3}, p99 {:.3}, p99.9 {:.3}, max {:.3}, mean {:.3}",
        "latency",
        l.p50_ms,
        l.p90_ms,
        l.p99_ms,
        l.p999_ms,
        l.max_ms,
        l.mean_ms
    );
    // One kind alone is the line above again.
    if r.by_method.len() > 1 {
        for m in &r.by_method {
            let l = &m.latency;
            outln!(
                "  {:<11}{}: {} × p50 {:.3} ms, p99 {:.3}, max {:.3}",
                "method",
                m.method,
                m.count,
                l.p50_ms,
                l.p99_ms,
                l.max_ms
            );
        }
    }
    print_extras(r);
    for (msg, n) in &r.error_samples {
        outln!("  {:<11}{n} × {msg}", "error");
    }
    for c in &r.checks {
        let verdict = if c.pass { "pass" } else { "FAIL" };
        outln!("  [{verdict}] {}: {}", c.name, c.detail);
    }
    outln!("{}", if r.pass { "PASS" } else { "FAIL" });
}

fn print_extras(r: &Report) {
    if let Some([p50, p99, max]) = r.send_lag_ms {
        outln!(
            "  {:<11}idle users woke p50 {p50:.3} ms, p99 {p99:.3}, max {max:.3} after schedule (loadgen's own lateness)",
            "send lag"
        );
    }
    if let Some(s) = &r.sse {
        outln!(
            "  {:<11}streams {}, events {}, gaps {}, lost {}, out of order {}",
            "sse",
            s.streams,
            s.events,
            s.gaps,
            s.lost,
            s.out_of_order
        );
    }
    if let Some(w) = &r.watch {
        outln!(
            "  {:<11}pid {}: peak RSS {:.1} MB ({:.1} KB per connection; {:.1} KB per connection above the {:.1} MB at start), CPU {:.2} s, {:.1} CPU-µs per {}",
            "target",
            w.pid,
            w.peak_rss_kb as f64 / 1024.0,
            w.rss_per_conn_kb,
            w.rss_growth_per_conn_kb,
            w.start_rss_kb as f64 / 1024.0,
            w.cpu_s,
            w.cpu_us_per_req,
            r.unit
        );
    }
    if let Some(n) = r.leaked_sessions {
        let before = r.sessions_before.unwrap_or(0);
        outln!(
            "  {:<11}{n} left on the gateway by this run ({before} held before it)",
            "sessions"
        );
    }
}
