//! loadgen: a load generator for MCP Streamable HTTP endpoints (shardcat, an upstream
//! directly, or any proxy in front of one), on monoio.
//!
//! Module map:
//! - `run`      — scenarios: the plan of measured windows, criteria, the report.
//! - `engine`   — worker threads (one monoio runtime each) and their control channel.
//! - `user`     — virtual users: the workloads, one connection each.
//! - `conn`     — one HTTP/1.1 client connection on `shardcat::http`.
//! - `proto`    — the MCP requests, prebuilt as bytes.
//! - `schedule` — open-loop pacing (coordinated-omission free).
//! - `stats`    — histograms and counters, SSE sequence accounting.
//! - `watch`    — /proc sampling of the target process.
//! - `admin`    — the gateway's /metrics, for the session-leak check.
//! - `rlimit`   — raising RLIMIT_NOFILE.
//! - `report`   — printing and JSON.
//! - `faults`   — the `faults` scenario: its own gateway and upstreams, killed and stalled.
//! - `soak`     — the `soak` scenario: mixed traffic for a long run, sampled; its verdict.
//! - `trend`    — least-squares trend judgement of one sampled series.

mod admin;
mod conn;
mod engine;
mod faults;
mod proto;
mod report;
mod rlimit;
mod run;
mod schedule;
mod soak;
mod stats;
mod target;
mod timeline;
mod trend;
mod user;
mod watch;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use run::{Plan, PlanKind, Scenario};
use user::{UserCfg, Workload};

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for MCP Streamable HTTP endpoints",
    after_help = soak::CRITERION
)]
struct Args {
    /// Endpoint under test, http://host:port/path (not for --scenario faults, which starts
    /// its own gateway). Several, comma-separated, load them all at once in one measurement:
    /// worker thread i drives target i mod n (so --threads must be at least n), and users are
    /// spread over the threads in turn.
    #[arg(long, required_unless_present = "scenario", value_delimiter = ',')]
    target: Vec<String>,
    /// What each virtual user does.
    #[arg(long, value_enum, default_value = "call")]
    workload: Workload,
    /// A named scenario with pass/fail criteria (default: one sustained window).
    #[arg(long, value_enum)]
    scenario: Option<Scenario>,
    /// Virtual users, one connection each (default 64; 100 for the sse scenario; soak: split
    /// 1/4 SSE, 1/4 stateless, the rest session users).
    #[arg(long)]
    connections: Option<usize>,
    /// Worker threads, each a monoio runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Pin worker threads to these cores, round-robin (e.g. --pin 1).
    #[arg(long, value_delimiter = ',')]
    pin: Vec<usize>,
    /// Length of the measured window (sustained, sse, churn, or no scenario; default 10), of
    /// the faults scenario (default 10), or of the soak (default 1800).
    #[arg(long)]
    duration_s: Option<f64>,
    /// Open loop: total requests per second (churn: cycles per second, default 100; soak:
    /// shared by the session and stateless users, default 500).
    #[arg(long)]
    rate: Option<f64>,
    /// soak: seconds between samples of the gateway.
    #[arg(long, default_value_t = 10.0)]
    sample_s: f64,
    /// soak: write every sample here as CSV (one row each, written as taken).
    #[arg(long)]
    samples_csv: Option<PathBuf>,
    /// tools/call requests per session iteration (session workload).
    #[arg(long, default_value_t = 5)]
    calls_per_session: usize,
    /// Bytes of text in each echo call.
    #[arg(long, default_value_t = 16)]
    payload_bytes: usize,
    /// Connection counts of a ramp or burst, e.g. 10,100,1000.
    #[arg(long, value_delimiter = ',')]
    steps: Option<Vec<usize>>,
    /// Measured seconds at each ramp or burst step.
    #[arg(long, default_value_t = 10.0)]
    step_s: f64,
    /// Gateway admin address (http://host:port); checks no session is left after the run.
    #[arg(long)]
    admin: Option<String>,
    /// Sample this process's RSS and CPU time (the target's pid).
    #[arg(long)]
    watch_pid: Option<u32>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the measured window second by second here as CSV (second,ok,failed,rejected,
    /// reinits,max_us,slow; one measured window only: no ramp or burst). The file is created, holding
    /// the header, when the window starts, and gets its rows when the run ends.
    #[arg(long)]
    timeline_csv: Option<PathBuf>,
    /// Fail if any window's p99 latency exceeds this.
    #[arg(long)]
    max_p99_ms: Option<f64>,
    /// Do not fail on 503 admission rejections.
    #[arg(long)]
    allow_rejections: bool,
    /// Open new connections at this rate (per second) when a step adds users (default: all
    /// at once).
    #[arg(long)]
    connect_rate: Option<f64>,
    /// A header sent with every request, "Name: value" (repeatable), e.g.
    /// --header "Authorization: Bearer TOKEN".
    #[arg(long)]
    header: Vec<String>,
    /// One header line per virtual user, taken in turn from this file ("Name: value" a line),
    /// e.g. a token of each user's own.
    #[arg(long)]
    header_file: Option<PathBuf>,
    /// faults: the shardcat binary (default: beside loadgen).
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// faults: the fault-upstream binary (default: beside loadgen).
    #[arg(long)]
    fault_bin: Option<PathBuf>,
    /// faults: clients reading a flooding upstream slowly.
    #[arg(long, default_value_t = 100)]
    slow_clients: usize,
    /// faults: bytes the flooding upstream sends each slow client.
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    flood_bytes: usize,
    /// faults: read rate of each slow client, KiB per second.
    #[arg(long, default_value_t = 2048)]
    slow_read_kib_s: usize,
}

/// `--header` values as header lines (each checked to be one `Name: value` line).
fn extra_headers(headers: &[String]) -> Result<String, String> {
    let mut out = String::new();
    for h in headers {
        check_header(h)?;
        out.push_str(h.trim());
        out.push_str("\r\n");
    }
    Ok(out)
}

fn check_header(h: &str) -> Result<(), String> {
    let ok =
        h.split_once(':').is_some_and(|(n, _)| !n.trim().is_empty()) && !h.contains(['\r', '\n']);
    if ok {
        Ok(())
    } else {
        Err(format!("not a header line (Name: value): {h:?}"))
    }
}

/// The `--header-file` lines, one per user in turn.
fn user_headers(path: Option<&std::path::Path>) -> Result<Vec<String>, String> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    for l in &lines {
        check_header(l)?;
    }
    if lines.is_empty() {
        return Err(format!("{} holds no header line", path.display()));
    }
    Ok(lines)
}

fn main() {
    let args = Args::parse();
    if args.scenario == Some(Scenario::Faults) {
        std::process::exit(run_faults(&args));
    }
    if args.scenario == Some(Scenario::Soak) {
        std::process::exit(run_soak(&args));
    }
    let code = match plan(&args).and_then(|p| run::run(&p)) {
        Ok(report) => finish(&args, &report),
        Err(e) => {
            eprintln!("loadgen: {e}");
            2
        }
    };
    std::process::exit(code);
}

fn finish(args: &Args, report: &report::Report) -> i32 {
    // JSON first: a script reading it must get it even if stdout is a closed pipe.
    if !write_json(args.json.as_deref(), report) {
        return 2;
    }
    if let Some(p) = &args.timeline_csv {
        if let Err(e) = std::fs::write(p, timeline::csv(&report.timeline)) {
            eprintln!("loadgen: cannot write {}: {e}", p.display());
            return 2;
        }
    }
    report::print_summary(report);
    if report.pass {
        0
    } else {
        1
    }
}

/// A binary beside loadgen's own (the workspace's target directory).
fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn run_faults(a: &Args) -> i32 {
    let plan = match secs(a.duration_s.unwrap_or(10.0), "duration-s") {
        Ok(duration) => faults::FaultPlan {
            gateway_bin: a.gateway_bin.clone().unwrap_or_else(|| sibling("shardcat")),
            fault_bin: a
                .fault_bin
                .clone()
                .unwrap_or_else(|| sibling("fault-upstream")),
            duration,
            connections: a.connections.unwrap_or(8),
            slow_clients: a.slow_clients,
            flood_bytes: a.flood_bytes,
            slow_read_bytes_per_s: a.slow_read_kib_s * 1024,
        },
        Err(e) => {
            eprintln!("loadgen: {e}");
            return 2;
        }
    };
    let report = match faults::run(&plan) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: faults: {e}");
            return 2;
        }
    };
    if !write_json(a.json.as_deref(), &report) {
        return 2;
    }
    faults::print(&report);
    if report.pass {
        0
    } else {
        1
    }
}

fn soak_plan(a: &Args) -> Result<soak::SoakPlan, String> {
    let [url] = a.target.as_slice() else {
        return Err("the soak drives one --target".into());
    };
    let admin = a.admin.clone().ok_or("the soak needs --admin")?;
    let pid = a
        .watch_pid
        .ok_or("the soak needs --watch-pid (the gateway's pid)")?;
    let rate = a.rate.unwrap_or(soak::DEFAULT_RATE);
    if !(rate.is_finite() && rate > 0.0) {
        return Err("--rate must be positive".into());
    }
    let duration = secs(a.duration_s.unwrap_or(1800.0), "duration-s")?;
    let sample = secs(a.sample_s, "sample-s")?;
    if sample > duration {
        return Err("--sample-s must not exceed --duration-s".into());
    }
    Ok(soak::SoakPlan {
        target: target::parse(url)?,
        target_url: url.clone(),
        admin,
        pid,
        duration,
        sample,
        split: soak::Split::of(a.connections.unwrap_or(soak::DEFAULT_CONNECTIONS))?,
        rate,
        calls_per_session: a.calls_per_session,
        payload_bytes: a.payload_bytes,
        threads: a.threads.max(1),
        pin: a.pin.clone(),
        csv: a.samples_csv.clone(),
    })
}

/// Writes `report` as pretty JSON to `path` when one was given; false (and a message) when
/// it could not be written.
fn write_json(path: Option<&std::path::Path>, report: &impl serde::Serialize) -> bool {
    let Some(path) = path else { return true };
    let written = serde_json::to_vec_pretty(report)
        .map_err(|e| e.to_string())
        .and_then(|j| std::fs::write(path, j).map_err(|e| e.to_string()));
    if let Err(e) = &written {
        eprintln!("loadgen: cannot write {}: {e}", path.display());
    }
    written.is_ok()
}

fn run_soak(a: &Args) -> i32 {
    let report = match soak_plan(a).and_then(|p| soak::run(&p)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: soak: {e}");
            return 2;
        }
    };
    if !write_json(a.json.as_deref(), &report) {
        return 2;
    }
    soak::print(&report);
    if report.pass {
        0
    } else {
        1
    }
}

fn secs(s: f64, flag: &str) -> Result<Duration, String> {
    if s.is_finite() && s > 0.0 {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(format!("--{flag} must be a positive number of seconds"))
    }
}

fn plan(a: &Args) -> Result<Plan, String> {
    for (flag, v) in [("rate", a.rate), ("connect-rate", a.connect_rate)] {
        if v.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return Err(format!("--{flag} must be positive"));
        }
    }
    let workload = if a.scenario == Some(Scenario::Sse) {
        Workload::Sse
    } else {
        a.workload
    };
    let default_conns = if workload == Workload::Sse { 100 } else { 64 };
    let conns = a.connections.unwrap_or(default_conns);
    let steps = |default: &[usize]| a.steps.clone().unwrap_or_else(|| default.to_vec());
    let duration_s = a.duration_s.unwrap_or(10.0);
    let kind = match a.scenario {
        None | Some(Scenario::Sustained) | Some(Scenario::Sse) => PlanKind::Steps {
            conns: vec![conns],
            step: secs(duration_s, "duration-s")?,
        },
        Some(Scenario::Ramp) => PlanKind::Steps {
            conns: steps(&run::DEFAULT_RAMP),
            step: secs(a.step_s, "step-s")?,
        },
        Some(Scenario::Burst) => PlanKind::Steps {
            conns: steps(&run::DEFAULT_BURST),
            step: secs(a.step_s, "step-s")?,
        },
        Some(Scenario::Churn) => PlanKind::Churn {
            duration: secs(duration_s, "duration-s")?,
        },
        Some(Scenario::Faults) | Some(Scenario::Soak) => {
            return Err("the faults and soak scenarios run on their own".into())
        }
    };
    if let PlanKind::Steps { conns, .. } = &kind {
        if conns.is_empty() || conns.contains(&0) {
            return Err("connection counts must be at least 1".into());
        }
        if conns.len() > 1 && a.timeline_csv.is_some() {
            return Err("--timeline-csv needs one measured window (not a ramp or burst)".into());
        }
    }
    let name = a
        .scenario
        .map_or("sustained".to_string(), |s| format!("{s:?}").to_lowercase());
    let extra = extra_headers(&a.header)?;
    let targets = a
        .target
        .iter()
        .map(|t| {
            target::parse(t).map(|mut t| {
                t.headers = extra.clone();
                t
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let first = targets.first().cloned().ok_or("--target is required")?;
    if targets.len() > a.threads.max(1) {
        return Err(format!(
            "{} targets need --threads {} at least (one worker per target)",
            targets.len(),
            targets.len()
        ));
    }
    Ok(Plan {
        name,
        targets,
        cfg: UserCfg {
            target: first,
            user_headers: std::sync::Arc::new(user_headers(a.header_file.as_deref())?),
            workload,
            calls_per_session: a.calls_per_session,
            payload_bytes: a.payload_bytes,
        },
        threads: a.threads.max(1),
        pin: a.pin.clone(),
        kind,
        rate: a.rate,
        admin: a.admin.clone(),
        watch_pid: a.watch_pid,
        max_p99_ms: a.max_p99_ms,
        allow_rejections: a.allow_rejections,
        target_url: a.target.join(","),
        connect_rate: a.connect_rate,
        timeline_csv: a.timeline_csv.clone(),
    })
}
