//! The `faults` scenario: an orchestrated experiment against a live gateway that loadgen
//! starts itself, with upstreams it starts, kills and restarts. Blocking std threads: the
//! figures here are about behaviour under faults (served vs failed, detection and recovery
//! times, memory), not peak throughput.
//!
//! Phases:
//! - `failover`: three demo upstreams behind the gateway under steady stateless load; one is
//!   SIGKILLed a third of the way in and restarted on its port at two thirds. Requests served
//!   and failed per window, and the time until the gateway's breaker (`/metrics`
//!   `shardcat_upstream_state`) shows it out of rotation and back.
//! - `slow_clients`: a flooding upstream pushes `flood_bytes` to each of `slow_clients` clients
//!   that read slowly; the gateway's peak RSS, the bytes delivered, the streams completed.
//! - `stalled`: an upstream that never answers and one that trickles: the statuses clients got
//!   and how long they waited.
//!
//! Every process started here is owned by a guard that kills and reaps it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// What the scenario needs besides defaults.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    pub gateway_bin: PathBuf,
    pub fault_bin: PathBuf,
    /// Length of the failover phase.
    pub duration: Duration,
    /// Load threads in the failover phase (one keep-alive connection each).
    pub connections: usize,
    pub slow_clients: usize,
    pub flood_bytes: usize,
    /// Read rate of each slow client.
    pub slow_read_bytes_per_s: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Window {
    pub name: &'static str,
    pub seconds: f64,
    pub served: u64,
    pub failed: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Failover {
    pub windows: Vec<Window>,
    pub served: u64,
    pub failed: u64,
    /// From the kill until every shard's breaker or probes took the upstream out.
    pub breaker_open_ms: Option<f64>,
    /// From the restart until it was back in rotation on every shard.
    pub recovered_ms: Option<f64>,
    pub failed_after_open: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct SlowClients {
    pub clients: usize,
    pub flood_bytes: usize,
    pub rss_baseline_mb: f64,
    pub rss_peak_mb: f64,
    pub bytes_delivered: u64,
    pub streams_completed: usize,
    pub seconds: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Stalled {
    pub upstream: &'static str,
    pub statuses: Vec<u16>,
    pub mean_wait_ms: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct FaultReport {
    pub scenario: &'static str,
    pub failover: Failover,
    pub slow_clients: SlowClients,
    pub stalled: Vec<Stalled>,
    pub pass: bool,
    pub failures: Vec<String>,
}

/// A started process, killed and reaped on drop.
struct Owned {
    child: Child,
    ready: String,
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `bin args` and waits for its `READY ...` line.
fn start(bin: &PathBuf, args: &[&str]) -> Result<Owned, String> {
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut reader = BufReader::new(stdout);
    let mut owned = Owned {
        child,
        ready: String::new(),
    };
    let mut line = String::new();
    while reader.read_line(&mut line).map_err(|e| e.to_string())? > 0 {
        if let Some(rest) = line.trim().strip_prefix("READY ") {
            owned.ready = rest.to_string();
            // Keep draining stdout so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in reader.lines() {});
            return Ok(owned);
        }
        line.clear();
    }
    Err(format!("{} exited before it was ready", bin.display()))
}

impl Owned {
    fn field(&self, key: &str) -> Option<String> {
        self.ready
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .map(|v| {
                v.trim_start_matches("http://")
                    .trim_end_matches("/mcp")
                    .to_string()
            })
    }

    fn addr(&self, key: &str) -> Result<SocketAddr, String> {
        self.field(key)
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("no {key}= in READY {}", self.ready))
    }
}

fn gateway(p: &FaultPlan, toml: &str) -> Result<(Owned, SocketAddr, SocketAddr), String> {
    let path = std::env::temp_dir().join(format!(
        "loadgen-faults-{}-{}.toml",
        std::process::id(),
        crate::faults::nonce()
    ));
    std::fs::write(&path, toml).map_err(|e| e.to_string())?;
    let cfg = path.display().to_string();
    let g = start(
        &p.gateway_bin,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--config",
            &cfg,
        ],
    )?;
    let _ = std::fs::remove_file(&path);
    let (listen, admin) = (g.addr("listen")?, g.addr("admin")?);
    Ok((g, listen, admin))
}

fn nonce() -> u64 {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

const STATELESS_BODY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"f"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;

fn stateless_request(addr: SocketAddr) -> String {
    format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nmcp-protocol-version: 2026-07-28\r\nmcp-method: tools/call\r\nmcp-name: echo\r\ncontent-length: {}\r\n\r\n{STATELESS_BODY}",
        STATELESS_BODY.len()
    )
}

/// One request on `s`; the status, once the Content-Length body is read. An error means the
/// connection is unusable.
fn call(s: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> std::io::Result<u16> {
    s.write_all(req)?;
    buf.clear();
    let mut tmp = [0u8; 8192];
    loop {
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(buf) {
            let len: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .ok_or(std::io::ErrorKind::InvalidData)?;
            let status = resp.code.unwrap_or(0);
            while buf.len() < head + len {
                let n = s.read(&mut tmp)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            return Ok(status);
        }
    }
}

/// A metric sample from the gateway's /metrics (None when absent or unreachable).
fn metric(admin: SocketAddr, series: &str) -> Option<f64> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs every phase.
pub fn run(p: &FaultPlan) -> Result<FaultReport, String> {
    let mut r = FaultReport {
        scenario: "faults",
        ..Default::default()
    };
    r.failover = failover(p)?;
    r.slow_clients = slow_clients(p)?;
    r.stalled = vec![stalled(p, "blackhole")?, stalled(p, "trickle")?];
    judge(&mut r);
    Ok(r)
}

fn judge(r: &mut FaultReport) {
    r.failures.clear();
    let f = &r.failover;
    if f.breaker_open_ms.is_none() {
        r.failures
            .push("the breaker never took the killed upstream out".into());
    }
    if f.recovered_ms.is_none() {
        r.failures
            .push("the restarted upstream never came back".into());
    }
    if f.failed_after_open > 0 {
        r.failures.push(format!(
            "{} requests failed after the breaker opened",
            f.failed_after_open
        ));
    }
    let s = &r.slow_clients;
    if s.streams_completed < s.clients {
        r.failures.push(format!(
            "{} of {} slow clients got their whole stream",
            s.streams_completed, s.clients
        ));
    }
    for st in &r.stalled {
        if st.statuses.iter().any(|&c| c != 504) {
            r.failures.push(format!(
                "{} upstream: statuses {:?}",
                st.upstream, st.statuses
            ));
        }
    }
    r.pass = r.failures.is_empty();
}

/// Per-request outcomes of one load thread: (ms since start, ok).
type Outcomes = Vec<(f64, bool)>;

fn load_thread(addr: SocketAddr, stop: Arc<AtomicBool>, t0: Instant) -> Outcomes {
    let req = stateless_request(addr).into_bytes();
    let mut out = Vec::new();
    let mut buf = Vec::with_capacity(4096);
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::Relaxed) {
        let s = match conn.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect(addr) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    conn.insert(s)
                }
                Err(_) => {
                    out.push((t0.elapsed().as_secs_f64() * 1e3, false));
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        match call(s, &req, &mut buf) {
            Ok(status) => out.push((t0.elapsed().as_secs_f64() * 1e3, status == 200)),
            Err(_) => {
                out.push((t0.elapsed().as_secs_f64() * 1e3, false));
                conn = None;
            }
        }
    }
    out
}

/// Milliseconds from `from` until upstream 1's state on shard 0 satisfies `want`, polling
/// every 20 ms until `limit`.
fn watch_state(
    admin: SocketAddr,
    from: Instant,
    limit: Instant,
    want: fn(f64) -> bool,
) -> Option<f64> {
    let series = "shardcat_upstream_state{shard=\"0\",upstream=\"1\"}";
    while Instant::now() < limit {
        if metric(admin, series).is_some_and(want) {
            return Some(from.elapsed().as_secs_f64() * 1e3);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn failover(p: &FaultPlan) -> Result<Failover, String> {
    let demo = |addr: &str| {
        start(
            &p.gateway_bin,
            &[
                "demo-upstream",
                "--listen",
                addr,
                "--push-interval-ms",
                "1000",
            ],
        )
    };
    let mut demos = [
        demo("127.0.0.1:0")?,
        demo("127.0.0.1:0")?,
        demo("127.0.0.1:0")?,
    ];
    let addrs: Vec<String> = demos
        .iter()
        .map(|d| d.field("demo").ok_or("demo address"))
        .collect::<Result<_, _>>()?;
    let toml: String = addrs
        .iter()
        .map(|a| format!("[[upstream]]\nurl = \"http://{a}/mcp\"\nhealth_interval_ms = 500\n"))
        .collect();
    let (_gw, listen, admin) = gateway(p, &toml)?;
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..p.connections.max(1))
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || load_thread(listen, stop, t0))
        })
        .collect();
    let third = p.duration / 3;
    std::thread::sleep(third);
    let killed = Instant::now();
    let _ = demos[1].child.kill();
    let _ = demos[1].child.wait();
    let open = watch_state(admin, killed, killed + third, |s| s != 0.0);
    let open_at = open.map(|ms| (killed - t0).as_secs_f64() * 1e3 + ms);
    std::thread::sleep((killed + third).saturating_duration_since(Instant::now()));
    demos[1] = demo(&addrs[1])?;
    let restarted = Instant::now();
    let back = watch_state(admin, restarted, restarted + third * 2, |s| s == 0.0);
    std::thread::sleep((t0 + p.duration).saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::Relaxed);
    let mut all: Outcomes = Vec::new();
    for t in threads {
        all.extend(t.join().map_err(|_| "a load thread panicked")?);
    }
    let kill_ms = (killed - t0).as_secs_f64() * 1e3;
    let restart_ms = (restarted - t0).as_secs_f64() * 1e3;
    let back_ms = back.map(|b| restart_ms + b);
    Ok(account(
        &all, kill_ms, open_at, restart_ms, back_ms, open, back,
    ))
}

/// Splits outcomes into the windows of the failover phase.
fn account(
    all: &[(f64, bool)],
    kill_ms: f64,
    open_at: Option<f64>,
    restart_ms: f64,
    back_at: Option<f64>,
    open: Option<f64>,
    back: Option<f64>,
) -> Failover {
    let end = all.iter().map(|o| o.0).fold(0.0, f64::max);
    let open_at = open_at.unwrap_or(restart_ms).min(restart_ms);
    let back_at = back_at.unwrap_or(end).max(restart_ms);
    let bounds = [
        ("before kill", 0.0, kill_ms),
        ("kill to breaker open", kill_ms, open_at),
        ("breaker open, upstream down", open_at, restart_ms),
        ("restart to back in rotation", restart_ms, back_at),
        ("after recovery", back_at, f64::MAX),
    ];
    let mut f = Failover {
        breaker_open_ms: open,
        recovered_ms: back,
        ..Default::default()
    };
    for (name, from, to) in bounds {
        let inside = all.iter().filter(|o| o.0 >= from && o.0 < to);
        let (served, failed) = inside.fold(
            (0, 0),
            |(s, x), o| if o.1 { (s + 1, x) } else { (s, x + 1) },
        );
        f.windows.push(Window {
            name,
            seconds: ((to.min(end) - from) / 1e3).max(0.0),
            served,
            failed,
        });
    }
    f.served = f.windows.iter().map(|w| w.served).sum();
    f.failed = f.windows.iter().map(|w| w.failed).sum();
    f.failed_after_open = f.windows[2..].iter().map(|w| w.failed).sum();
    f
}

/// Resident memory of `pid` in MB, from /proc.
fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn slow_clients(p: &FaultPlan) -> Result<SlowClients, String> {
    let bytes = p.flood_bytes.to_string();
    let flood = start(&p.fault_bin, &["--mode", "flood", "--bytes", &bytes])?;
    let up = flood.addr("addr")?;
    let (gw, listen, _admin) = gateway(p, &format!("[[upstream]]\nurl = \"http://{up}/mcp\"\n"))?;
    let pid = gw.child.id();
    let baseline = rss_mb(pid);
    let t0 = Instant::now();
    let per_read = 16 * 1024;
    let pause = Duration::from_secs_f64(per_read as f64 / p.slow_read_bytes_per_s.max(1) as f64);
    let clients: Vec<_> = (0..p.slow_clients)
        .map(|_| std::thread::spawn(move || slow_reader(listen, per_read, pause)))
        .collect();
    let mut peak = baseline;
    while clients.iter().any(|c| !c.is_finished()) {
        peak = peak.max(rss_mb(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = SlowClients {
        clients: p.slow_clients,
        flood_bytes: p.flood_bytes,
        rss_baseline_mb: baseline,
        ..Default::default()
    };
    for c in clients {
        let (got, complete) = c.join().map_err(|_| "a slow client panicked")?;
        out.bytes_delivered += got;
        out.streams_completed += usize::from(complete);
    }
    out.rss_peak_mb = peak;
    out.seconds = t0.elapsed().as_secs_f64();
    Ok(out)
}

/// Reads a stream `per_read` bytes at a time with `pause` between reads: (bytes, whole).
fn slow_reader(addr: SocketAddr, per_read: usize, pause: Duration) -> (u64, bool) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, false);
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    if s.write_all(stateless_request(addr).as_bytes()).is_err() {
        return (0, false);
    }
    let mut buf = vec![0u8; per_read];
    let mut tail: Vec<u8> = Vec::new();
    let mut got = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return (got, false),
            Ok(n) => {
                got += n as u64;
                tail.extend_from_slice(&buf[..n]);
                if tail.ends_with(b"0\r\n\r\n") {
                    return (got, true);
                }
                let keep = tail.len().saturating_sub(8);
                tail.drain(..keep);
            }
        }
        std::thread::sleep(pause);
    }
}

/// Requests sent to each stalled upstream, and the gateway's request timeout there.
const STALLED_REQUESTS: usize = 3;
const STALLED_TIMEOUT_MS: u64 = 1000;

fn stalled(p: &FaultPlan, mode: &'static str) -> Result<Stalled, String> {
    let f = start(&p.fault_bin, &["--mode", mode, "--interval-ms", "200"])?;
    let up = f.addr("addr")?;
    let toml = format!(
        "[[upstream]]\nurl = \"http://{up}/mcp\"\n[timeouts]\nupstream_request_timeout_ms = {STALLED_TIMEOUT_MS}\n"
    );
    let (_gw, listen, _admin) = gateway(p, &toml)?;
    let req = stateless_request(listen).into_bytes();
    let mut out = Stalled {
        upstream: mode,
        ..Default::default()
    };
    let mut waited = 0.0;
    let mut buf = Vec::new();
    for _ in 0..STALLED_REQUESTS {
        let t = Instant::now();
        let status = TcpStream::connect(listen)
            .map_err(|e| e.to_string())
            .and_then(|mut s| call(&mut s, &req, &mut buf).map_err(|e| e.to_string()))
            .unwrap_or(0);
        waited += t.elapsed().as_secs_f64() * 1e3;
        out.statuses.push(status);
    }
    out.mean_wait_ms = waited / STALLED_REQUESTS as f64;
    Ok(out)
}

/// Prints the report for people.
pub fn print(r: &FaultReport) {
    let f = &r.failover;
    println!("faults: failover (3 upstreams, one SIGKILLed and restarted)");
    for w in &f.windows {
        println!(
            "  {:<30} {:>6.1} s  served {:>8}  failed {:>5}",
            w.name, w.seconds, w.served, w.failed
        );
    }
    let ms = |v: Option<f64>| v.map_or("never".to_string(), |m| format!("{m:.0} ms"));
    println!(
        "  total served {} failed {}; breaker open after {}, back in rotation after {}",
        f.served,
        f.failed,
        ms(f.breaker_open_ms),
        ms(f.recovered_ms)
    );
    let s = &r.slow_clients;
    println!(
        "faults: {} slow clients x {} bytes: RSS {:.1} MB -> peak {:.1} MB; {} bytes delivered, {} streams whole, {:.1} s",
        s.clients, s.flood_bytes, s.rss_baseline_mb, s.rss_peak_mb, s.bytes_delivered, s.streams_completed, s.seconds
    );
    for st in &r.stalled {
        println!(
            "faults: {} upstream: statuses {:?}, mean wait {:.0} ms",
            st.upstream, st.statuses, st.mean_wait_ms
        );
    }
    if r.pass {
        println!("PASS");
    } else {
        println!("FAIL: {}", r.failures.join("; "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_fall_into_their_windows() {
        let all = [
            (10.0, true),
            (1500.0, false),
            (1600.0, true),
            (2500.0, true),
            (3500.0, true),
            (4100.0, true),
        ];
        let f = account(
            &all,
            1000.0,
            Some(1550.0),
            3000.0,
            Some(4000.0),
            Some(550.0),
            Some(1000.0),
        );
        let counts: Vec<(u64, u64)> = f.windows.iter().map(|w| (w.served, w.failed)).collect();
        assert_eq!(counts, [(1, 0), (0, 1), (2, 0), (1, 0), (1, 0)]);
        assert_eq!((f.served, f.failed, f.failed_after_open), (5, 1, 0));
    }

    #[test]
    fn the_judgement_names_each_failed_criterion() {
        let mut r = FaultReport::default();
        r.slow_clients.clients = 2;
        r.slow_clients.streams_completed = 1;
        r.stalled.push(Stalled {
            upstream: "trickle",
            statuses: vec![504, 502],
            mean_wait_ms: 1.0,
        });
        judge(&mut r);
        assert!(!r.pass);
        assert_eq!(r.failures.len(), 4, "{:?}", r.failures);
        r.failover.breaker_open_ms = Some(1.0);
        r.failover.recovered_ms = Some(1.0);
        r.slow_clients.streams_completed = 2;
        r.stalled.clear();
        judge(&mut r);
        assert!(r.pass, "{:?}", r.failures);
    }
}
