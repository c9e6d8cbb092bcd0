//! The `soak` scenario: a long run of mixed traffic through one gateway (session users,
//! stateless 2026-07-28 users and SSE GET-stream users at once, at a moderate open-loop rate),
//! sampling the gateway's RSS and fds (/proc) and its summed gauges (/metrics) every
//! `sample` seconds. The run fails when a series trends upward after the warm-up (`trend`),
//! when anything failed or was rejected, or when sessions, connections or streams are left on
//! the gateway after the users stopped.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::admin::{self, Gauges};
use crate::engine::Engine;
use crate::report::{Check, Latency, MethodLatency};
use crate::rlimit;
use crate::schedule::per_user_period;
use crate::stats::{SseStats, Stats};
use crate::target::Target;
use crate::trend::{self, Bound, Trend};
use crate::user::{UserCfg, Workload};
use crate::watch::{self, Watch};

/// Default total requests per second of the session and stateless users (SSE events come on
/// top, at the upstream's push interval).
pub const DEFAULT_RATE: f64 = 500.0;
pub const DEFAULT_CONNECTIONS: usize = 64;
/// How long the gateway gets to drop every session after the users stop (as `run`'s check).
const DRAIN_CHECK: Duration = Duration::from_secs(10);
/// How long it gets to close connections and streams and its idle upstream connections: above
/// the default `pool_idle_timeout_ms` (4 s) plus the sweep's tick.
const POOL_DRAIN_CHECK: Duration = Duration::from_secs(15);

/// RSS: at most 10% of its post-warm-up median per hour.
pub const RSS_BOUND: Bound = Bound {
    relative: 0.10,
    absolute: 0.0,
};
/// fds: 10% of the median per hour, and never less than the gauges' bound, since every client
/// and upstream connection is an fd and fds move with them.
pub const FD_BOUND: Bound = Bound {
    relative: 0.10,
    absolute: GAUGE_GROWTH_PER_HOUR,
};
/// Gauges that follow the load (sessions, connections, pool, streams, pending events): an
/// absolute growth per hour. At the default rate the session users create about 42 sessions
/// a second, so 25 an hour catches one leaked in ~6,000; over 30 minutes a flat gauge's slope
/// has a standard error of about 6 an hour (measured).
pub const GAUGE_GROWTH_PER_HOUR: f64 = 25.0;
pub const GAUGE_BOUND: Bound = Bound {
    relative: 0.0,
    absolute: GAUGE_GROWTH_PER_HOUR,
};

/// How `--connections` is split: a quarter SSE users, a quarter stateless users (each at
/// least one), the rest session users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Split {
    pub session: usize,
    pub stateless: usize,
    pub sse: usize,
}

impl Split {
    pub fn of(n: usize) -> Result<Split, String> {
        if n < 3 {
            return Err("the soak needs --connections 3 at least (one user of each kind)".into());
        }
        let sse = (n / 4).max(1);
        let stateless = (n / 4).max(1);
        Ok(Split {
            session: n - sse - stateless,
            stateless,
            sse,
        })
    }

    fn total(&self) -> usize {
        self.session + self.stateless + self.sse
    }
}

#[derive(Debug, Clone)]
pub struct SoakPlan {
    pub target: Target,
    pub target_url: String,
    pub admin: String,
    pub pid: u32,
    pub duration: Duration,
    pub sample: Duration,
    pub split: Split,
    /// Requests per second of the session and stateless users together, shared in proportion
    /// to their numbers.
    pub rate: f64,
    pub calls_per_session: usize,
    pub payload_bytes: usize,
    /// Worker threads of each of the three engines.
    pub threads: usize,
    pub pin: Vec<usize>,
    pub csv: Option<PathBuf>,
}

/// One sample: the gateway's process and gauges, and what loadgen saw since the last one.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since the users were set up.
    pub t_s: f64,
    /// `None` when /proc could not be read (the process is gone).
    pub rss_kb: Option<u64>,
    pub fds: Option<u64>,
    /// The gateway's CPU since the previous sample, % of one core.
    pub cpu_pct: Option<f64>,
    /// `None` when the scrape failed.
    pub gauges: Option<Gauges>,
    pub req_per_s: f64,
    pub req_p99_ms: f64,
    pub events_per_s: f64,
    pub event_p99_ms: f64,
    /// Loadgen's errors and rejections since the run started.
    pub errors: u64,
    pub rejected: u64,
}

/// One workload's figures over the whole run.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadFigures {
    pub workload: Workload,
    pub users: usize,
    /// Requests (SSE: events) that succeeded.
    pub ok: u64,
    pub per_s: f64,
    pub latency: Latency,
    pub by_method: Vec<MethodLatency>,
    pub errors: u64,
    pub rejected: u64,
    pub reconnects: u64,
    pub iterations: u64,
    pub missed: u64,
    pub sse: Option<SseStats>,
    pub error_samples: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeriesTrend {
    pub series: String,
    #[serde(flatten)]
    pub trend: Trend,
    pub bound: Bound,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub target: String,
    pub pid: u32,
    pub seconds: f64,
    pub sample_s: f64,
    pub split: Split,
    pub rate: f64,
    /// The gateway's RSS before the load, and its peak (read every second).
    pub start_rss_kb: u64,
    pub peak_rss_kb: u64,
    pub before: Gauges,
    /// After the users stopped and the drain check.
    pub after: Option<Gauges>,
    pub samples: Vec<Sample>,
    pub workloads: Vec<WorkloadFigures>,
    pub trends: Vec<SeriesTrend>,
    pub admin_failures: u64,
    pub checks: Vec<Check>,
    pub pass: bool,
}

/// The criterion, for `--help` and the report.
pub const CRITERION: &str = "soak: session, stateless and SSE users at once (--connections \
split: 1/4 SSE, 1/4 stateless, the rest session users; --rate shared by the session and \
stateless users), sampled every --sample-s. After a warm-up (the first 20% of the samples, \
at least 2) a least-squares line is fitted to each series; it FAILS when its slope, projected \
over one hour, exceeds the bound and is more than 3 standard errors above zero. Bounds per \
hour: RSS 10% of its post-warm-up median; fds 10% of the median or 25, whichever is larger; \
sessions, connections, pool open and idle, SSE streams (client and upstream) and pending \
events 25. The run also FAILS on any loadgen error or rejection, SSE event loss, growth of \
the gateway's rejection, upstream-error or client-error counters while the users run, a \
session ended by the gateway itself (idle timeout, maximum age, eviction: every session of \
the soak is in use), a failed scrape, or sessions (within 10 s), connections, SSE streams or pooled upstream \
connections (within 15 s: idle ones close after pool_idle_timeout_ms, 4 s by default) left \
above their level before the run once the users stopped. Needs --watch-pid and --admin.";

struct Engines {
    session: Engine,
    stateless: Engine,
    sse: Engine,
}

impl Engines {
    fn all(&self) -> [&Engine; 3] {
        [&self.session, &self.stateless, &self.sse]
    }
}

/// Everything a run gathers, per workload: [session, stateless, sse].
#[derive(Default)]
struct Totals {
    stats: [Stats; 3],
}

/// Runs the soak; `Err` means it could not start (exit code 2).
pub fn run(plan: &SoakPlan) -> Result<SoakReport, String> {
    let users = plan.split.total();
    rlimit::raise_nofile(users as u64)?;
    let watch = Watch::start(plan.pid)?;
    watch::fd_count(plan.pid).map_err(|e| format!("--watch-pid {}: fds: {e}", plan.pid))?;
    let before = admin::gauges(&plan.admin).map_err(|e| format!("--admin: {e}"))?;
    let mut csv = plan
        .csv
        .as_ref()
        .map(|p| {
            File::create(p)
                .map_err(|e| format!("--samples-csv {}: {e}", p.display()))
                .map(std::io::BufWriter::new)
        })
        .transpose()?;
    if let Some(f) = csv.as_mut() {
        write_csv_row(f, &csv_header());
    }
    let mut engines = start_engines(plan)?;
    let mut t = Totals::default();
    let setup = Instant::now();
    let n = plan.split;
    for (e, k) in [
        (&mut engines.session, n.session),
        (&mut engines.stateless, n.stateless),
        (&mut engines.sse, n.sse),
    ] {
        e.add_users(k, Duration::ZERO);
    }
    let wait = Duration::from_secs(30) + Duration::from_millis(users as u64 * 5);
    for (i, e) in engines.all().into_iter().enumerate() {
        let ready = e.wait_ready(wait.saturating_sub(setup.elapsed()));
        t.stats[i].merge(&e.snapshot());
        if !ready {
            t.stats[i].error(format!("not all {} users were set up in time", e.users()));
        }
    }
    say(&format!(
        "soak: {} session + {} stateless users at {:.0} req/s, {} SSE users, for {:.0} s, sampled every {:.0} s (setup {} ms)\n",
        n.session,
        n.stateless,
        plan.rate,
        n.sse,
        plan.duration.as_secs_f64(),
        plan.sample.as_secs_f64(),
        setup.elapsed().as_millis()
    ));
    say(&table_header());
    let samples = sample_loop(plan, &engines, &watch, &mut t, csv.as_mut());
    let Engines {
        session,
        stateless,
        sse,
    } = engines;
    for (i, e) in [session, stateless, sse].into_iter().enumerate() {
        t.stats[i].merge(&e.stop());
    }
    if let Some(f) = csv.as_mut() {
        let _ = f.flush();
    }
    let leaked = admin::wait_sessions_drained(&plan.admin, before.sessions, DRAIN_CHECK);
    let after = drained_gauges(&plan.admin, &before);
    let mut r = build_report(plan, before, after, leaked, samples, t);
    r.start_rss_kb = watch.start_rss_kb();
    r.peak_rss_kb = watch.peak_rss_kb();
    Ok(r)
}

fn start_engines(plan: &SoakPlan) -> Result<Engines, String> {
    let start = |workload| {
        let cfg = UserCfg {
            target: plan.target.clone(),
            user_headers: Default::default(),
            workload,
            calls_per_session: plan.calls_per_session,
            payload_bytes: plan.payload_bytes,
        };
        Engine::start(&cfg, &[], plan.threads, &plan.pin)
            .map_err(|e| format!("cannot start worker threads: {e}"))
    };
    let engines = Engines {
        session: start(Workload::Session)?,
        stateless: start(Workload::Stateless)?,
        sse: start(Workload::Sse)?,
    };
    let paced = (plan.split.session + plan.split.stateless) as f64;
    for (e, k) in [
        (&engines.session, plan.split.session),
        (&engines.stateless, plan.split.stateless),
    ] {
        let rate = plan.rate * k as f64 / paced;
        e.set_period(Some(per_user_period(rate, k)));
    }
    Ok(engines)
}

/// Samples at 0, `sample`, 2 × `sample`, ... up to `duration` (on a fixed schedule, so a slow
/// scrape does not shift the ones after it).
fn sample_loop(
    plan: &SoakPlan,
    engines: &Engines,
    watch: &Watch,
    t: &mut Totals,
    mut csv: Option<&mut std::io::BufWriter<File>>,
) -> Vec<Sample> {
    let t0 = Instant::now();
    let mut samples = Vec::new();
    let mut last = (t0, watch.now().cpu_us);
    let mut k = 0u32;
    loop {
        let due = plan.sample * k;
        if due > plan.duration {
            break;
        }
        if let Some(wait) = (t0 + due).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let mut s = take_sample(plan, engines, watch, t, t0, &mut last);
        if k == 0 {
            // Taken as the load starts: its window is empty, not a rate.
            s.req_per_s = 0.0;
            s.req_p99_ms = 0.0;
            s.events_per_s = 0.0;
            s.event_p99_ms = 0.0;
        }
        say(&table_row(&s));
        if let Some(f) = csv.as_mut() {
            write_csv_row(f, &csv_row(&s));
        }
        samples.push(s);
        k += 1;
    }
    samples
}

fn take_sample(
    plan: &SoakPlan,
    engines: &Engines,
    watch: &Watch,
    t: &mut Totals,
    t0: Instant,
    last: &mut (Instant, u64),
) -> Sample {
    let now = Instant::now();
    let secs = now.duration_since(last.0).as_secs_f64().max(1e-9);
    let win: Vec<Stats> = engines.all().iter().map(|e| e.snapshot()).collect();
    let proc = watch.read();
    let fds = watch::fd_count(plan.pid).ok();
    let gauges = admin::gauges(&plan.admin).ok();
    for (total, w) in t.stats.iter_mut().zip(&win) {
        total.merge(w);
    }
    let mut requests = win[0].clone();
    requests.merge(&win[1]);
    let cpu_pct = proc.as_ref().ok().map(|p| {
        let pct = p.cpu_us.saturating_sub(last.1) as f64 / 1e4 / secs;
        last.1 = p.cpu_us;
        pct
    });
    last.0 = now;
    Sample {
        t_s: now.duration_since(t0).as_secs_f64(),
        rss_kb: proc.as_ref().ok().map(|p| p.rss_kb),
        fds,
        cpu_pct,
        gauges,
        req_per_s: requests.ok as f64 / secs,
        req_p99_ms: Latency::of(&requests).p99_ms,
        events_per_s: win[2].ok as f64 / secs,
        event_p99_ms: Latency::of(&win[2]).p99_ms,
        errors: t.stats.iter().map(|s| s.errors).sum(),
        rejected: t.stats.iter().map(|s| s.rejected).sum(),
    }
}

/// Whether connections, SSE streams and pooled upstream connections are back to their level
/// before the run.
fn drained(g: &Gauges, before: &Gauges) -> bool {
    g.connections <= before.connections
        && g.sse_streams <= before.sse_streams
        && g.sse_upstream_streams <= before.sse_upstream_streams
        && g.pool_open <= before.pool_open
}

/// The gauges once `drained`, or when `POOL_DRAIN_CHECK` passed.
fn drained_gauges(admin: &str, before: &Gauges) -> Option<Gauges> {
    let end = Instant::now() + POOL_DRAIN_CHECK;
    loop {
        let g = admin::gauges(admin).ok();
        let drained = g.is_some_and(|g| drained(&g, before));
        if drained || Instant::now() >= end {
            return g;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The series judged for a trend, with their bounds and how to read them from a sample.
type Reader = fn(&Sample) -> Option<f64>;
pub const SERIES: [(&str, Bound, Reader); 9] = [
    ("rss_kb", RSS_BOUND, |s| s.rss_kb.map(|v| v as f64)),
    ("fds", FD_BOUND, |s| s.fds.map(|v| v as f64)),
    ("sessions", GAUGE_BOUND, |s| gauge(s, |g| g.sessions)),
    ("connections", GAUGE_BOUND, |s| gauge(s, |g| g.connections)),
    ("pool_open", GAUGE_BOUND, |s| gauge(s, |g| g.pool_open)),
    ("pool_idle", GAUGE_BOUND, |s| gauge(s, |g| g.pool_idle)),
    ("sse_streams", GAUGE_BOUND, |s| gauge(s, |g| g.sse_streams)),
    ("sse_upstream_streams", GAUGE_BOUND, |s| {
        gauge(s, |g| g.sse_upstream_streams)
    }),
    ("sse_pending_events", GAUGE_BOUND, |s| {
        gauge(s, |g| g.sse_pending_events)
    }),
];

fn gauge(s: &Sample, f: fn(&Gauges) -> u64) -> Option<f64> {
    s.gauges.as_ref().map(|g| f(g) as f64)
}

/// Judges every series of `samples`. A sample missing a value (a failed read) is left out of
/// that series; the failed read fails the run on its own.
pub fn trends(samples: &[Sample]) -> Vec<SeriesTrend> {
    SERIES
        .iter()
        .map(|(name, bound, read)| {
            let points: Vec<(f64, f64)> = samples
                .iter()
                .filter_map(|s| read(s).map(|v| (s.t_s, v)))
                .collect();
            SeriesTrend {
                series: (*name).into(),
                trend: trend::judge(&points, *bound),
                bound: *bound,
            }
        })
        .collect()
}

fn check(name: &str, pass: bool, detail: String) -> Check {
    Check {
        name: name.into(),
        pass,
        detail,
    }
}

fn build_report(
    plan: &SoakPlan,
    before: Gauges,
    after: Option<Gauges>,
    leaked: Result<u64, String>,
    samples: Vec<Sample>,
    t: Totals,
) -> SoakReport {
    let seconds = samples.last().map_or(0.0, |s| s.t_s);
    let n = plan.split;
    let workloads: Vec<WorkloadFigures> = [
        (Workload::Session, n.session),
        (Workload::Stateless, n.stateless),
        (Workload::Sse, n.sse),
    ]
    .into_iter()
    .zip(&t.stats)
    .map(|((workload, users), s)| WorkloadFigures {
        workload,
        users,
        ok: s.ok,
        per_s: s.ok as f64 / seconds.max(1e-9),
        latency: Latency::of(s),
        by_method: MethodLatency::all(s),
        errors: s.errors,
        rejected: s.rejected,
        reconnects: s.reconnects,
        iterations: s.iterations,
        missed: s.missed,
        sse: (workload == Workload::Sse).then_some(s.sse),
        error_samples: s.error_samples.clone(),
    })
    .collect();
    let trends = trends(&samples);
    let admin_failures = samples.iter().filter(|s| s.gauges.is_none()).count() as u64;
    let mut checks: Vec<Check> = trends
        .iter()
        .map(|s| {
            let tr = &s.trend;
            check(
                &format!("trend {}", s.series),
                tr.pass,
                format!(
                    "{:+.1}/h (± {:.1}) over {} samples after {} of warm-up, median {:.1}, bound {:.1}/h: {}",
                    tr.growth_per_hour,
                    tr.slope_se * 3600.0,
                    tr.measured,
                    tr.warmup,
                    tr.median,
                    tr.allowed_per_hour,
                    tr.reason
                ),
            )
        })
        .collect();
    let errors: u64 = workloads.iter().map(|w| w.errors).sum();
    let rejected: u64 = workloads.iter().map(|w| w.rejected).sum();
    checks.push(check(
        "loadgen errors",
        errors == 0 && rejected == 0,
        format!("{errors} errors, {rejected} rejected"),
    ));
    let sse = t.stats[2].sse;
    checks.push(check(
        "sse delivery",
        sse.lost == 0 && sse.events > 0,
        format!(
            "{} streams, {} events, {} lost, {} out of order",
            sse.streams, sse.events, sse.lost, sse.out_of_order
        ),
    ));
    // The gateway's counters while the users ran: from before the run to the last sample.
    let last = samples.iter().rev().find_map(|s| s.gauges);
    let grew = |f: fn(&Gauges) -> u64| last.map(|g| f(&g).saturating_sub(f(&before)));
    let gw = [
        grew(|g| g.rejections),
        grew(|g| g.upstream_errors),
        grew(|g| g.client_errors),
        grew(|g| g.sessions_ended_by_gateway),
    ];
    checks.push(check(
        "gateway errors",
        gw.iter().all(|v| *v == Some(0)),
        match gw {
            [Some(r), Some(u), Some(c), Some(e)] => format!(
                "while the users ran: {r} rejections, {u} upstream errors, {c} client errors, {e} sessions ended by the gateway (idle timeout, maximum age, eviction)"
            ),
            _ => "no scrape succeeded".into(),
        },
    ));
    checks.push(check(
        "scrapes",
        admin_failures == 0
            && samples
                .iter()
                .all(|s| s.rss_kb.is_some() && s.fds.is_some()),
        format!(
            "{} samples, {admin_failures} failed /metrics scrapes, {} failed /proc reads",
            samples.len(),
            samples
                .iter()
                .filter(|s| s.rss_kb.is_none() || s.fds.is_none())
                .count()
        ),
    ));
    checks.push(match &leaked {
        Ok(n) => check(
            "sessions drained",
            *n == 0,
            format!(
                "{n} sessions left by this run (waited up to {} s)",
                DRAIN_CHECK.as_secs()
            ),
        ),
        Err(e) => check("sessions drained", false, e.clone()),
    });
    checks.push(match after {
        Some(a) => check(
            "connections and streams drained",
            drained(&a, &before),
            format!(
                "connections {}, SSE streams {} (upstream {}), pool open {} (before the run: {}, {} ({}), {}; waited up to {} s)",
                a.connections,
                a.sse_streams,
                a.sse_upstream_streams,
                a.pool_open,
                before.connections,
                before.sse_streams,
                before.sse_upstream_streams,
                before.pool_open,
                POOL_DRAIN_CHECK.as_secs()
            ),
        ),
        None => check(
            "connections and streams drained",
            false,
            "/metrics unreadable after the run".into(),
        ),
    });
    let requests = workloads[0].ok + workloads[1].ok;
    if requests == 0 {
        checks.push(check("progress", false, "no request succeeded".into()));
    }
    let pass = checks.iter().all(|c| c.pass);
    SoakReport {
        target: plan.target_url.clone(),
        pid: plan.pid,
        seconds,
        sample_s: plan.sample.as_secs_f64(),
        split: plan.split,
        rate: plan.rate,
        start_rss_kb: 0,
        peak_rss_kb: 0,
        before,
        after,
        samples,
        workloads,
        trends,
        admin_failures,
        checks,
        pass,
    }
}

/// Writes to stdout, ignoring a closed pipe: the CSV, JSON and exit code still matter.
fn say(s: &str) {
    let _ = std::io::stdout().lock().write_all(s.as_bytes());
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

pub fn table_header() -> String {
    format!(
        "{:>6} {:>7} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>4} {:>5} {:>7} {:>7} {:>6} {:>7} {:>5} {:>5} {:>10}\n",
        "t s",
        "rss MB",
        "fds",
        "cpu%",
        "sess",
        "conns",
        "pool",
        "idle",
        "sse",
        "pend",
        "req/s",
        "p99 ms",
        "ev/s",
        "ev p99",
        "err",
        "rej",
        "gw r/u/c/e"
    )
}

fn table_row(s: &Sample) -> String {
    let g = s.gauges;
    let gv = |f: fn(&Gauges) -> u64| opt(g.map(|g| f(&g)));
    format!(
        "{:>6.0} {:>7} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>4} {:>5} {:>7.0} {:>7.2} {:>6.1} {:>7.2} {:>5} {:>5} {:>10}\n",
        s.t_s,
        opt(s.rss_kb.map(|v| format!("{:.1}", v as f64 / 1024.0))),
        opt(s.fds),
        opt(s.cpu_pct.map(|v| format!("{v:.1}"))),
        gv(|g| g.sessions),
        gv(|g| g.connections),
        gv(|g| g.pool_open),
        gv(|g| g.pool_idle),
        gv(|g| g.sse_streams),
        gv(|g| g.sse_pending_events),
        s.req_per_s,
        s.req_p99_ms,
        s.events_per_s,
        s.event_p99_ms,
        s.errors,
        s.rejected,
        opt(g.map(|g| format!(
            "{}/{}/{}/{}",
            g.rejections, g.upstream_errors, g.client_errors, g.sessions_ended_by_gateway
        ))),
    )
}

pub fn csv_header() -> Vec<String> {
    [
        "t_s",
        "rss_kb",
        "fds",
        "cpu_pct",
        "sessions",
        "connections",
        "pool_open",
        "pool_idle",
        "sse_streams",
        "sse_upstream_streams",
        "sse_pending_events",
        "req_per_s",
        "req_p99_ms",
        "events_per_s",
        "event_p99_ms",
        "errors",
        "rejected",
        "gw_rejections_total",
        "gw_upstream_errors_total",
        "gw_client_errors_total",
        "gw_sessions_ended_by_gateway_total",
        "gw_tape_frames_lost_total",
    ]
    .map(String::from)
    .to_vec()
}

/// One CSV row; a value that could not be read is empty. Gateway counters are as exported
/// (since the gateway started).
pub fn csv_row(s: &Sample) -> Vec<String> {
    let o = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
    let g = |f: fn(&Gauges) -> u64| o(s.gauges.map(|g| f(&g)));
    vec![
        format!("{:.1}", s.t_s),
        o(s.rss_kb),
        o(s.fds),
        s.cpu_pct.map_or(String::new(), |v| format!("{v:.2}")),
        g(|g| g.sessions),
        g(|g| g.connections),
        g(|g| g.pool_open),
        g(|g| g.pool_idle),
        g(|g| g.sse_streams),
        g(|g| g.sse_upstream_streams),
        g(|g| g.sse_pending_events),
        format!("{:.1}", s.req_per_s),
        format!("{:.3}", s.req_p99_ms),
        format!("{:.2}", s.events_per_s),
        format!("{:.3}", s.event_p99_ms),
        s.errors.to_string(),
        s.rejected.to_string(),
        g(|g| g.rejections),
        g(|g| g.upstream_errors),
        g(|g| g.client_errors),
        g(|g| g.sessions_ended_by_gateway),
        g(|g| g.tape_lost),
    ]
}

/// Written and flushed row by row, so a run cut short keeps what it sampled.
fn write_csv_row(f: &mut std::io::BufWriter<File>, cells: &[String]) {
    let _ = writeln!(f, "{}", cells.join(","));
    let _ = f.flush();
}

pub fn print(r: &SoakReport) {
    say("\n");
    say(&format!(
        "soak against {} (pid {}): {:.0} s, {} samples every {:.0} s\n",
        r.target,
        r.pid,
        r.seconds,
        r.samples.len(),
        r.sample_s
    ));
    for w in &r.workloads {
        let name = format!("{:?}", w.workload).to_lowercase();
        let unit = if w.workload == Workload::Sse {
            "events"
        } else {
            "requests"
        };
        say(&format!(
            "  {name:<10} {} users: {} {unit} ({:.1}/s), p50 {:.3} ms, p99 {:.3}, max {:.3}; errors {}, rejected {}, reconnects {}, iterations {}, missed {}\n",
            w.users,
            w.ok,
            w.per_s,
            w.latency.p50_ms,
            w.latency.p99_ms,
            w.latency.max_ms,
            w.errors,
            w.rejected,
            w.reconnects,
            w.iterations,
            w.missed
        ));
        for (msg, n) in &w.error_samples {
            say(&format!("  {:<10} {n} × {msg}\n", "error"));
        }
    }
    say(&format!(
        "  {:<10} RSS {:.1} MB before the load, peak {:.1} MB\n",
        "gateway",
        r.start_rss_kb as f64 / 1024.0,
        r.peak_rss_kb as f64 / 1024.0
    ));
    say(&format!(
        "  {:<10} sessions {}, connections {}, SSE streams {}, pool open {} idle {}\n",
        "before",
        r.before.sessions,
        r.before.connections,
        r.before.sse_streams,
        r.before.pool_open,
        r.before.pool_idle
    ));
    for c in &r.checks {
        let verdict = if c.pass { "pass" } else { "FAIL" };
        say(&format!("  [{verdict}] {}: {}\n", c.name, c.detail));
    }
    say(if r.pass { "PASS\n" } else { "FAIL\n" });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_split_a_quarter_sse_a_quarter_stateless() {
        assert_eq!(
            Split::of(64).unwrap(),
            Split {
                session: 32,
                stateless: 16,
                sse: 16
            }
        );
        assert_eq!(
            Split::of(3).unwrap(),
            Split {
                session: 1,
                stateless: 1,
                sse: 1
            }
        );
        assert_eq!(Split::of(10).unwrap().total(), 10);
        assert!(Split::of(2).is_err());
    }

    fn sample(t_s: f64, rss_kb: u64, sessions: u64) -> Sample {
        Sample {
            t_s,
            rss_kb: Some(rss_kb),
            fds: Some(100),
            gauges: Some(Gauges {
                sessions,
                ..Gauges::default()
            }),
            ..Sample::default()
        }
    }

    #[test]
    fn every_series_is_judged_and_a_leak_names_its_series() {
        // 30 minutes every 10 s: RSS flat, sessions leaking 2 a minute (120 an hour).
        let samples: Vec<Sample> = (0..181)
            .map(|i| sample(i as f64 * 10.0, 30_000 + (i % 3) * 100, 40 + i / 3))
            .collect();
        let t = trends(&samples);
        assert_eq!(t.len(), SERIES.len());
        let failed: Vec<&str> = t
            .iter()
            .filter(|s| !s.trend.pass)
            .map(|s| s.series.as_str())
            .collect();
        assert_eq!(failed, ["sessions"]);
    }

    #[test]
    fn a_missing_value_is_left_out_of_its_series() {
        let mut samples: Vec<Sample> = (0..20).map(|i| sample(i as f64, 1000, 5)).collect();
        samples[10].gauges = None;
        let t = trends(&samples);
        let sessions = t.iter().find(|s| s.series == "sessions").unwrap();
        let rss = t.iter().find(|s| s.series == "rss_kb").unwrap();
        assert_eq!(sessions.trend.warmup + sessions.trend.measured, 19);
        assert_eq!(rss.trend.warmup + rss.trend.measured, 20);
        assert!(sessions.trend.pass && rss.trend.pass);
    }

    #[test]
    fn csv_rows_match_the_header() {
        let s = sample(10.0, 1234, 7);
        assert_eq!(csv_row(&s).len(), csv_header().len());
        let mut gone = s.clone();
        gone.gauges = None;
        gone.fds = None;
        let row = csv_row(&gone);
        assert_eq!(row[2], "", "an unread value is empty");
        assert_eq!(row[4], "");
    }
}
