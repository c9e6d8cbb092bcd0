//! Scenarios: turning the command line into a plan of measured windows, running it on the
//! engine, and judging the result against the criteria.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::admin;
use crate::engine::Engine;
use crate::report::{self, Check, Latency, MethodLatency, Report, Row, WatchFigures};
use crate::rlimit;
use crate::schedule::per_user_period;
use crate::stats::Stats;
use crate::timeline::{self, Timeline};
use crate::user::{UserCfg, Workload};
use crate::watch::{Sample, Watch};

/// Connection counts of the default ramp.
pub const DEFAULT_RAMP: [usize; 5] = [10, 100, 500, 1000, 5000];
/// The burst: a small steady load, then this many connections at once.
pub const DEFAULT_BURST: [usize; 2] = [10, 1000];
/// How long the gateway gets to drop every session after the load stops.
const DRAIN_CHECK: Duration = Duration::from_secs(10);
/// Most churn cycles in flight; past it, scheduled cycles count as missed.
const MAX_CHURN_IN_FLIGHT: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Sustained,
    Ramp,
    Burst,
    Churn,
    Sse,
    /// Starts its own gateway and upstreams and injects faults (see `faults`).
    Faults,
    /// Mixed session, stateless and SSE traffic for --duration-s (default 1800), sampling the
    /// gateway (--watch-pid, --admin) every --sample-s; fails on an upward trend (see below).
    Soak,
}

/// What to run, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    /// Every endpoint under test; `cfg.target` is the first. Worker i drives `targets[i % n]`.
    pub targets: Vec<crate::target::Target>,
    pub cfg: UserCfg,
    pub threads: usize,
    pub pin: Vec<usize>,
    pub kind: PlanKind,
    /// Open loop: total requests per second; churn: cycles per second.
    pub rate: Option<f64>,
    pub admin: Option<String>,
    pub watch_pid: Option<u32>,
    pub max_p99_ms: Option<f64>,
    pub allow_rejections: bool,
    pub target_url: String,
    /// New connections per second while a step adds users; `None`: all at once.
    pub connect_rate: Option<f64>,
    /// Write the window's per-second timeline here (one measured window only): the header
    /// when the window starts, every row at the end.
    pub timeline_csv: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub enum PlanKind {
    /// Grow to each connection count in turn (never reopening), measuring `step` at each.
    Steps { conns: Vec<usize>, step: Duration },
    /// Fresh connect/session/close cycles at `rate` per second for `duration`.
    Churn { duration: Duration },
}

impl Plan {
    fn peak_connections(&self) -> usize {
        match &self.kind {
            PlanKind::Steps { conns, .. } => conns.iter().copied().max().unwrap_or(0),
            PlanKind::Churn { .. } => MAX_CHURN_IN_FLIGHT,
        }
    }

    fn unit(&self) -> &'static str {
        match (&self.kind, self.cfg.workload) {
            (PlanKind::Churn { .. }, _) => "cycle",
            (_, Workload::Sse) => "event",
            _ => "request",
        }
    }
}

/// Everything measured so far.
#[derive(Default)]
struct Totals {
    /// Measured windows only: latency, rate.
    measured: Stats,
    seconds: f64,
    /// Errors, rejections and counters from setup phases and the final drain.
    other: Stats,
    cpu_us: u64,
    rows: Vec<Row>,
    /// The first measured window's timeline.
    timeline: Option<Timeline>,
}

/// Runs the plan; `Err` means it could not start (exit code 2).
pub fn run(plan: &Plan) -> Result<Report, String> {
    let peak = plan.peak_connections() as u64;
    // SSE users reopen a connection to DELETE after closing their stream: no extra at once.
    rlimit::raise_nofile(peak)?;
    let watch = plan.watch_pid.map(Watch::start).transpose()?;
    // Read the admin endpoint before any load: a wrong --admin fails now, not after the run.
    let sessions_before = match &plan.admin {
        Some(a) => Some(admin::sessions(a).map_err(|e| format!("--admin: {e}"))?),
        None => None,
    };
    let mut engine = Engine::start(&plan.cfg, &plan.targets, plan.threads, &plan.pin)
        .map_err(|e| format!("cannot start worker threads: {e}"))?;
    let mut t = Totals::default();
    report::print_table_header(watch.is_some());
    match &plan.kind {
        PlanKind::Steps { conns, step } => {
            for &n in conns {
                let row = run_step(plan, &mut engine, n, *step, watch.as_ref(), &mut t);
                report::print_row(&row);
                t.rows.push(row);
            }
        }
        PlanKind::Churn { duration } => {
            let row = run_churn(plan, &engine, *duration, watch.as_ref(), &mut t);
            report::print_row(&row);
            t.rows.push(row);
        }
    }
    t.other.merge(&engine.stop());
    // After the load, an unreachable admin endpoint fails the check but keeps the results.
    let leaked = plan
        .admin
        .as_ref()
        .zip(sessions_before)
        .map(|(a, before)| admin::wait_sessions_drained(a, before, DRAIN_CHECK));
    let mut report = build_report(plan, t, watch.as_ref(), leaked.clone());
    report.sessions_before = sessions_before;
    Ok(report)
}

/// Grows to `conns` users, waits for their setup, then measures for `step`.
fn run_step(
    plan: &Plan,
    engine: &mut Engine,
    conns: usize,
    step: Duration,
    watch: Option<&Watch>,
    t: &mut Totals,
) -> Row {
    let rate = plan.rate;
    if let Some(r) = rate {
        engine.set_period(Some(per_user_period(r, conns)));
    }
    let setup_start = Instant::now();
    let spacing = plan
        .connect_rate
        .map_or(Duration::ZERO, |r| Duration::from_secs_f64(1.0 / r));
    engine.add_users(conns.saturating_sub(engine.users()), spacing);
    // Allow for slow setups at scale: at least 30 s, more for big steps.
    let ready =
        engine.wait_ready(Duration::from_secs(30) + Duration::from_millis(conns as u64 * 5));
    let setup_ms = setup_start.elapsed().as_millis() as u64;
    let mut setup = engine.snapshot();
    if !ready {
        setup.error(format!("not all {conns} users were set up in time"));
    }
    let (win, secs, cpu, start) = measure(plan, engine, step, watch);
    let mut row = make_row(plan, conns, setup_ms, &setup, &win, secs, cpu, watch, rate);
    row.start_unix_ms = start;
    t.absorb(setup, win, secs, cpu);
    row
}

fn run_churn(
    plan: &Plan,
    engine: &Engine,
    duration: Duration,
    watch: Option<&Watch>,
    t: &mut Totals,
) -> Row {
    let rate = plan.rate.unwrap_or(100.0);
    engine.start_churn(rate, MAX_CHURN_IN_FLIGHT);
    let (win, secs, cpu, start) = measure(plan, engine, duration, watch);
    let none = Stats::default();
    let mut row = make_row(plan, 0, 0, &none, &win, secs, cpu, watch, Some(rate));
    row.start_unix_ms = start;
    t.absorb(none, win, secs, cpu);
    row
}

/// One measured window: the stats gathered during `d` (with their per-second timeline), its
/// true length, the watched process's CPU time over it, and its start (Unix ms).
fn measure(
    plan: &Plan,
    engine: &Engine,
    d: Duration,
    watch: Option<&Watch>,
) -> (Stats, f64, Option<u64>, u64) {
    let before = watch.map(Watch::now);
    let _ = engine.snapshot();
    let t0 = Instant::now();
    let start_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    engine.start_timeline(t0, d);
    // The header alone marks the window's start for a script waiting on the file (e.g. to
    // inject a fault at a known offset); failing to write it is reported at the end.
    if let Some(p) = &plan.timeline_csv {
        let _ = std::fs::write(p, timeline::CSV_HEADER);
    }
    std::thread::sleep(d.saturating_sub(t0.elapsed()));
    let win = engine.snapshot();
    let secs = t0.elapsed().as_secs_f64();
    let cpu = watch.map(|w| cpu_delta(before.unwrap_or_default(), w.now()));
    (win, secs, cpu, start_unix_ms)
}

fn cpu_delta(a: Sample, b: Sample) -> u64 {
    b.cpu_us.saturating_sub(a.cpu_us)
}

impl Totals {
    fn absorb(&mut self, setup: Stats, mut win: Stats, secs: f64, cpu: Option<u64>) {
        // Timelines of different windows do not line up: keep the first one apart.
        let timeline = std::mem::take(&mut win.timeline);
        self.timeline.get_or_insert(timeline);
        self.other.merge(&setup);
        self.measured.merge(&win);
        self.seconds += secs;
        self.cpu_us += cpu.unwrap_or(0);
    }
}

#[allow(clippy::too_many_arguments)]
fn make_row(
    plan: &Plan,
    conns: usize,
    setup_ms: u64,
    setup: &Stats,
    win: &Stats,
    secs: f64,
    cpu: Option<u64>,
    watch: Option<&Watch>,
    target_rps: Option<f64>,
) -> Row {
    let latency = Latency::of(win);
    let errors = setup.errors + win.errors;
    let span = win.timeline.error_span_s();
    let rejected = setup.rejected + win.rejected;
    let p99_ok = plan.max_p99_ms.is_none_or(|m| latency.p99_ms <= m);
    Row {
        connections: conns,
        setup_ms,
        seconds: secs,
        requests: win.ok,
        rps: win.ok as f64 / secs.max(1e-9),
        target_rps,
        latency,
        errors,
        rejected,
        missed: win.missed,
        start_unix_ms: 0,
        first_error_s: span.map(|s| s.0),
        last_error_s: span.map(|s| s.1),
        cpu_us_per_req: cpu.map(|c| c as f64 / win.ok.max(1) as f64),
        rss_kb: watch.map(|w| w.now().rss_kb),
        pass: errors == 0 && (rejected == 0 || plan.allow_rejections) && p99_ok,
    }
}

fn build_report(
    plan: &Plan,
    t: Totals,
    watch: Option<&Watch>,
    leaked: Option<Result<u64, String>>,
) -> Report {
    let mut all = t.measured.clone();
    all.merge(&t.other);
    let connections = t.rows.iter().map(|r| r.connections).max().unwrap_or(0);
    let latency = Latency::of(&t.measured);
    let mut r = Report {
        target: plan.target_url.clone(),
        scenario: plan.name.clone(),
        workload: format!("{:?}", plan.cfg.workload).to_lowercase(),
        mode: if plan.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .into(),
        threads: plan.threads,
        connections,
        seconds: t.seconds,
        unit: plan.unit().into(),
        requests: t.measured.ok,
        rps: t.measured.ok as f64 / t.seconds.max(1e-9),
        target_rps: plan.rate,
        errors: all.errors,
        rejected: all.rejected,
        reconnects: all.reconnects,
        reinits: all.reinits,
        iterations: all.iterations,
        missed: all.missed,
        latency,
        by_method: MethodLatency::all(&t.measured),
        send_lag_ms: plan.rate.map(|_| {
            let m = &t.measured;
            [m.lag_ms_at(0.5), m.lag_ms_at(0.99), m.lag_ms_at(1.0)]
        }),
        sse: (plan.cfg.workload == Workload::Sse).then_some(all.sse),
        watch: watch.map(|w| watch_figures(w, connections, t.cpu_us, t.measured.ok)),
        timeline: t
            .timeline
            .as_ref()
            .map_or_else(Vec::new, |t| t.rows().to_vec()),
        steps: t.rows,
        sessions_before: None,
        leaked_sessions: leaked.clone().and_then(Result::ok),
        admin_error: leaked.and_then(Result::err),
        error_samples: all.error_samples.clone(),
        checks: Vec::new(),
        pass: false,
    };
    r.checks = checks(plan, &r);
    r.pass = r.checks.iter().all(|c| c.pass);
    r
}

fn watch_figures(w: &Watch, conns: usize, cpu_us: u64, requests: u64) -> WatchFigures {
    let peak = w.peak_rss_kb();
    let start = w.start_rss_kb();
    WatchFigures {
        pid: w.pid(),
        start_rss_kb: start,
        peak_rss_kb: peak,
        rss_per_conn_kb: peak as f64 / conns.max(1) as f64,
        rss_growth_per_conn_kb: peak.saturating_sub(start) as f64 / conns.max(1) as f64,
        cpu_s: cpu_us as f64 / 1e6,
        cpu_us_per_req: cpu_us as f64 / requests.max(1) as f64,
    }
}

fn check(name: &str, pass: bool, detail: String) -> Check {
    Check {
        name: name.into(),
        pass,
        detail,
    }
}

/// The pass/fail criteria: no errors, no rejections unless allowed, p99 under the target in
/// every window, no SSE loss, no session left on the gateway.
fn checks(plan: &Plan, r: &Report) -> Vec<Check> {
    let mut out = vec![check(
        "errors",
        r.errors == 0,
        format!("{} errors", r.errors),
    )];
    let rej_ok = r.rejected == 0 || plan.allow_rejections;
    let allowed = if plan.allow_rejections {
        " (allowed)"
    } else {
        ""
    };
    out.push(check(
        "rejections",
        rej_ok,
        format!("{} rejected{allowed}", r.rejected),
    ));
    if let Some(max) = plan.max_p99_ms {
        let worst = r.steps.iter().map(|s| s.latency.p99_ms).fold(0.0, f64::max);
        out.push(check(
            "p99",
            worst <= max,
            format!("worst window p99 {worst:.2} ms, limit {max} ms"),
        ));
    }
    if let Some(s) = &r.sse {
        let ok = s.lost == 0 && s.events > 0;
        out.push(check(
            "sse delivery",
            ok,
            format!("{} events, {} lost", s.events, s.lost),
        ));
    }
    if let Some(n) = r.leaked_sessions {
        out.push(check(
            "sessions drained",
            n == 0,
            format!(
                "{n} sessions left by this run {}s after it ended",
                DRAIN_CHECK.as_secs()
            ),
        ));
    }
    if let Some(e) = &r.admin_error {
        out.push(check("sessions drained", false, e.clone()));
    }
    if r.requests == 0 {
        out.push(check("progress", false, "nothing was measured".into()));
    }
    out
}
