//! Test support for the SDK interop matrix: installs the official SDKs and the conformance
//! suite on first use (`tests/interop/install.sh`, versions in `tests/interop/versions.env`),
//! starts their servers as processes, and runs their clients as processes whose one JSON
//! summary line is the cell's result.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The installed peers.
pub struct Peers {
    /// The repository.
    pub repo: PathBuf,
    /// `target/interop/`.
    pub dir: PathBuf,
    pub python: PathBuf,
    pub node: PathBuf,
}

impl Peers {
    /// A Python peer script under `tests/interop/py/`.
    pub fn py(&self, script: &str) -> String {
        self.repo
            .join("tests/interop/py")
            .join(script)
            .display()
            .to_string()
    }

    /// A TypeScript peer script, run from `target/interop/node/` (ESM resolves packages next
    /// to the script).
    pub fn ts(&self, script: &str) -> String {
        self.dir.join("node").join(script).display().to_string()
    }

    /// The conformance suite's entry point.
    pub fn conformance(&self) -> String {
        self.dir
            .join("node/node_modules/@modelcontextprotocol/conformance/dist/index.js")
            .display()
            .to_string()
    }
}

/// Installs the peers once per test process. A peer that cannot be installed fails the test
/// with the installer's reason: it never passes silently.
pub fn peers() -> &'static Peers {
    static PEERS: OnceLock<Peers> = OnceLock::new();
    PEERS.get_or_init(|| {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("bash")
            .arg(repo.join("tests/interop/install.sh"))
            .output()
            .expect("run tests/interop/install.sh");
        assert!(
            out.status.success(),
            "the interop peers could not be installed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = repo.join("target/interop");
        for entry in std::fs::read_dir(repo.join("tests/interop/ts")).expect("tests/interop/ts") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "mjs") {
                let to = dir.join("node").join(path.file_name().expect("name"));
                std::fs::copy(&path, &to).expect("copy TypeScript peer");
            }
        }
        Peers {
            python: dir.join("venv/bin/python"),
            node: dir.join("node/bin/node"),
            repo,
            dir,
        }
    })
}

/// A peer server process (killed on drop) that printed `LISTENING <port>`.
pub struct Server {
    child: Child,
    pub port: u16,
    pub label: String,
    log: PathBuf,
}

impl Server {
    /// Starts `cmd` and waits for its `LISTENING <port>` line.
    pub fn start(label: &str, cmd: &[String]) -> Server {
        let log = std::env::temp_dir().join(format!(
            "shardcat-interop-{}-{label}.log",
            std::process::id()
        ));
        let err = std::fs::File::create(&log).expect("create log");
        let mut child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{label}: cannot start {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(p) = line.strip_prefix("LISTENING ") {
                    let _ = tx.send(p.trim().parse::<u16>().ok());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(port)) => Server {
                child,
                port,
                label: label.to_string(),
                log,
            },
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("{label}: {cmd:?} did not print LISTENING; stderr:\n{text}");
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One cell of the matrix: what a client process reported.
#[derive(Debug, Clone)]
pub struct Cell {
    pub label: String,
    pub sessions: u64,
    pub passed: u64,
    /// Each failed session's step and error, or why the client gave no report.
    pub failures: Vec<String>,
    /// Steps a client skipped, with its reason.
    pub skipped: Vec<String>,
    pub versions: Vec<String>,
    pub secs: f64,
}

impl Cell {
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && self.sessions > 0 && self.passed == self.sessions
    }
}

/// Runs a client process to its end (killed after `within`) and reads its summary line.
pub fn run_client(label: &str, cmd: &[String], within: Duration) -> Cell {
    let started = Instant::now();
    let mut cell = Cell {
        label: label.to_string(),
        sessions: 0,
        passed: 0,
        failures: Vec::new(),
        skipped: Vec::new(),
        versions: Vec::new(),
        secs: 0.0,
    };
    let mut child = match Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            cell.failures.push(format!("cannot start {cmd:?}: {e}"));
            return cell;
        }
    };
    let (out, err) = (collect(child.stdout.take()), collect(child.stderr.take()));
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if started.elapsed() < within => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    cell.secs = started.elapsed().as_secs_f64();
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    let summary = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
    let Some(v) = summary else {
        cell.failures.push(format!(
            "no summary (exit {status:?}, {:.1} s); stdout: {}; stderr tail: {}",
            cell.secs,
            tail(&out, 800),
            tail(&err, 2000)
        ));
        return cell;
    };
    cell.sessions = v["sessions"].as_u64().unwrap_or(0);
    cell.passed = v["passed"].as_u64().unwrap_or(0);
    for f in v["failed"].as_array().into_iter().flatten() {
        cell.failures.push(f.to_string());
    }
    if let Some(s) = v["skipped_steps"].as_object() {
        cell.skipped = s.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    }
    cell.versions = v["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(String::from))
        .collect();
    if status.is_none_or(|s| !s.success()) && cell.failures.is_empty() {
        cell.failures.push(format!(
            "exit {status:?}; stderr tail: {}",
            tail(&err, 2000)
        ));
    }
    cell
}

fn collect<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut r) = r {
            let _ = r.read_to_string(&mut s);
        }
        s
    })
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}

/// Runs jobs on at most `width` threads; results in the jobs' order.
pub fn run_all<T: Send + 'static>(
    width: usize,
    jobs: Vec<Box<dyn FnOnce() -> T + Send>>,
) -> Vec<T> {
    let n = jobs.len();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(
        jobs.into_iter().enumerate().collect::<Vec<_>>(),
    ));
    let (tx, rx) = mpsc::channel();
    let workers: Vec<_> = (0..width.max(1))
        .map(|_| {
            let (queue, tx) = (queue.clone(), tx.clone());
            std::thread::spawn(move || loop {
                let job = queue.lock().expect("queue").pop();
                let Some((i, job)) = job else { return };
                let _ = tx.send((i, job()));
            })
        })
        .collect();
    drop(tx);
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for (i, r) in rx {
        out[i] = Some(r);
    }
    for w in workers {
        let _ = w.join();
    }
    out.into_iter()
        .map(|r| r.expect("every job reports"))
        .collect()
}

/// The conformance suite's verdict per scenario (`true`: no check failed; warnings pass).
pub fn conformance(url: &str, within: Duration) -> Vec<(String, bool)> {
    let p = peers();
    let cmd = [
        p.node.display().to_string(),
        p.conformance(),
        "server".into(),
        // Every scenario, pending ones included (json-schema-2020-12, server-sse-polling).
        "--suite".into(),
        "all".into(),
        "--url".into(),
        url.to_string(),
    ];
    let started = Instant::now();
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the conformance suite");
    let (out, err) = (collect(child.stdout.take()), collect(child.stderr.take()));
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < within => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    let verdicts = parse_conformance(&out);
    assert!(
        !verdicts.is_empty(),
        "the conformance suite reported no scenario against {url}:\n{}\n{}",
        tail(&out, 2000),
        tail(&err, 2000)
    );
    verdicts
}

/// Lines `✓ NAME: P passed, F failed` (or `✗`).
fn parse_conformance(out: &str) -> Vec<(String, bool)> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix('✓').or_else(|| l.strip_prefix('✗'))?;
            let (name, counts) = rest.trim().split_once(": ")?;
            let failed: u64 = counts
                .split(", ")
                .find_map(|c| c.strip_suffix(" failed"))?
                .trim()
                .parse()
                .ok()?;
            Some((name.to_string(), failed == 0))
        })
        .collect()
}

/// Processes whose parent is `pid` (from /proc).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(Path::new("/proc").join(p.to_string()).join("stat"))
        else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so parse after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_conformance_lines() {
        let out = "✓ ping: 1 passed, 0 failed\n✗ dns-rebinding-protection: 1 passed, 1 failed\nTotal: 2 passed, 1 failed\n";
        assert_eq!(
            parse_conformance(out),
            vec![
                ("ping".to_string(), true),
                ("dns-rebinding-protection".to_string(), false)
            ]
        );
    }
}
