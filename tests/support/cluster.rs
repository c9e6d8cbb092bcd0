//! Test support for several shardcat nodes behind HAProxy (issue 16, scale-out).
//!
//! `Cluster::start` writes a shared session key (`shardcat gen-key`), starts N gateway nodes
//! on distinct loopback addresses (127.0.0.2, .3, ...; each port found free by binding port 0
//! there and releasing it), each with its own config (`[cluster]` node_id `n<i>`, the key
//! files, the upstream snippet the test gives), renders `scripts/cluster/haproxy.cfg.in` for
//! them (the same rules as `scripts/cluster/render-haproxy.sh`), and runs HAProxy in the
//! foreground (`haproxy -f cfg -db`) as a child killed on drop. It waits until HAProxy's
//! runtime API (`show stat` on the stats socket) reports every node UP.
//!
//! HAProxy is installed on first use (`apt-get install -y haproxy`) when it is not on PATH; a
//! failed install panics with the reason, so a test never passes without it.
//!
//! Mount it beside `support/process.rs`, which it uses as `crate::support`:
//! `#[path = "support/process.rs"] mod support;` and
//! `#[path = "support/cluster.rs"] mod cluster;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::{exposition, get, Proc, BIN};

/// How long HAProxy may take to see a node change state. Checks run every 500 ms (250 ms
/// once failing) with fall 2 / rise 2, so ~1 s is usual; the rest is a loaded 2-core machine.
pub const STATE_CHANGE: Duration = Duration::from_secs(10);

/// The HAProxy template, relative to the repository.
const TEMPLATE: &str = "scripts/cluster/haproxy.cfg.in";

/// Where the rendered template puts one node.
#[derive(Debug, Clone)]
pub struct NodeAddrs {
    pub name: String,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

/// Renders the HAProxy template: comment lines as they are; every other line holding `@NODE@`
/// once per node; `@FRONTEND@` and `@STATS_SOCKET@` wherever they stand.
pub fn render(template: &str, nodes: &[NodeAddrs], frontend: &str, stats_socket: &str) -> String {
    let mut out = String::new();
    for line in template.lines() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let line = line
            .replace("@FRONTEND@", frontend)
            .replace("@STATS_SOCKET@", stats_socket);
        if !line.contains("@NODE@") {
            out.push_str(&line);
            out.push('\n');
            continue;
        }
        for n in nodes {
            let l = line
                .replace("@NODE@", &n.name)
                .replace("@ADMIN_ADDR@", &n.admin.ip().to_string())
                .replace("@ADMIN_PORT@", &n.admin.port().to_string())
                .replace("@ADDR@", &n.listen.ip().to_string())
                .replace("@PORT@", &n.listen.port().to_string());
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

/// The template's text.
pub fn template() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(TEMPLATE);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The `haproxy` binary, installed once per test process if missing.
pub fn haproxy() -> &'static Path {
    static HAPROXY: OnceLock<PathBuf> = OnceLock::new();
    HAPROXY.get_or_init(|| {
        if let Some(p) = which("haproxy") {
            return p;
        }
        let out = Command::new("apt-get")
            .args(["install", "-y", "haproxy"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap_or_else(|e| panic!("haproxy is missing and apt-get cannot run: {e}"));
        assert!(
            out.status.success(),
            "haproxy is missing and `apt-get install -y haproxy` failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        which("haproxy").expect("haproxy installed but not on PATH (or /usr/sbin)")
    })
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// A free port on `ip`: bound on port 0, then released (the node binds it next).
pub fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("no free port on {ip}: {e}"))
        .port()
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A new session key from `shardcat gen-key`, written to `path`.
pub fn gen_key(path: &Path) -> String {
    let out = Command::new(BIN)
        .arg("gen-key")
        .output()
        .expect("run shardcat gen-key");
    assert!(out.status.success(), "shardcat gen-key: {out:?}");
    let key = String::from_utf8(out.stdout)
        .expect("hex")
        .trim()
        .to_string();
    assert_eq!(key.len(), 64, "gen-key printed {key:?}");
    std::fs::write(path, format!("{key}\n")).expect("write key file");
    key
}

/// One gateway node.
pub struct Node {
    pub addrs: NodeAddrs,
    pub config: PathBuf,
    pub proc: Option<Proc>,
    /// The process's log of its last run, kept after a kill for failure messages.
    pub last_log: String,
}

/// N nodes, HAProxy in front of them, and the files they share (removed on drop).
pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    pub frontend: SocketAddr,
    pub stats_socket: PathBuf,
    pub haproxy_cfg: PathBuf,
    haproxy: Option<Child>,
    haproxy_log: PathBuf,
    shards: usize,
    upstream_toml: String,
    key_file: PathBuf,
    previous_key_file: Option<PathBuf>,
}

impl Cluster {
    /// Starts `n` nodes of `shards` shards, configured by `upstream_toml` (their upstream and
    /// any other tables, `[cluster]` aside), and HAProxy; returns once HAProxy has every node up.
    pub fn start(n: usize, shards: usize, upstream_toml: &str) -> Cluster {
        assert!((1..=200).contains(&n), "1 to 200 nodes");
        let haproxy = haproxy().to_path_buf();
        let dir = std::env::temp_dir().join(format!(
            "shardcat-cluster-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let key_file = dir.join("session.key");
        gen_key(&key_file);
        let nodes = (1..=n)
            .map(|i| {
                let ip = Ipv4Addr::new(127, 0, 0, 1 + i as u8);
                let addrs = NodeAddrs {
                    name: format!("n{i}"),
                    listen: SocketAddr::from((ip, free_port(ip))),
                    admin: SocketAddr::from((ip, free_port(ip))),
                };
                Node {
                    config: dir.join(format!("{}.toml", addrs.name)),
                    addrs,
                    proc: None,
                    last_log: String::new(),
                }
            })
            .collect();
        let fe_ip = Ipv4Addr::LOCALHOST;
        let frontend = SocketAddr::from((fe_ip, free_port(fe_ip)));
        let stats_socket = dir.join("haproxy.sock");
        let haproxy_cfg = dir.join("haproxy.cfg");
        let haproxy_log = dir.join("haproxy.log");
        let mut c = Cluster {
            dir,
            nodes,
            frontend,
            stats_socket,
            haproxy_cfg,
            haproxy: None,
            haproxy_log,
            shards,
            upstream_toml: upstream_toml.to_string(),
            key_file,
            previous_key_file: None,
        };
        for i in 0..n {
            c.restart_node(i);
        }
        let addrs: Vec<NodeAddrs> = c.nodes.iter().map(|n| n.addrs.clone()).collect();
        let cfg = render(
            &template(),
            &addrs,
            &frontend.to_string(),
            c.stats_socket.to_str().expect("utf-8 path"),
        );
        std::fs::write(&c.haproxy_cfg, cfg).expect("write haproxy.cfg");
        let log = std::fs::File::create(&c.haproxy_log).expect("haproxy log");
        c.haproxy = Some(
            Command::new(&haproxy)
                .arg("-f")
                .arg(&c.haproxy_cfg)
                .arg("-db")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", haproxy.display())),
        );
        for i in 0..n {
            assert!(
                c.wait_status(i, "UP", STATE_CHANGE),
                "HAProxy did not mark {} up within {STATE_CHANGE:?}: {}\nhaproxy log:\n{}",
                c.nodes[i].addrs.name,
                c.states(),
                c.haproxy_log()
            );
        }
        c
    }

    /// The node's config: the test's upstream snippet and `[cluster]`.
    fn write_config(&self, i: usize) {
        let prev = self.previous_key_file.as_ref().map_or(String::new(), |p| {
            format!(
                "previous_session_key_file = {:?}\n",
                p.display().to_string()
            )
        });
        // HAProxy sends each connection's client in a PROXY protocol header (`send-proxy-v2`).
        let toml = format!(
            "[server]\nproxy_protocol = true\n{}\n[cluster]\nnode_id = {:?}\nsession_key_file = {:?}\n{prev}",
            self.upstream_toml,
            self.nodes[i].addrs.name,
            self.key_file.display().to_string()
        );
        std::fs::write(&self.nodes[i].config, toml).expect("write node config");
    }

    /// The node's config as written for its current run.
    pub fn config_text(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].config).unwrap_or_default()
    }

    /// SIGKILLs node `i` (no drain, no goodbye: a crash) and waits until its listener refuses
    /// connections. That is not at once: an io_uring node's rings are torn down by the kernel
    /// after the process is reaped, and until then a pending accept still takes connections
    /// (and resets them), which HAProxy sees as a server that failed after the request was
    /// sent (502, `SH`), not as a failed connection it may retry.
    pub fn kill_node(&mut self, i: usize) {
        let Some(mut p) = self.nodes[i].proc.take() else {
            return;
        };
        self.nodes[i].last_log = p.stderr();
        let _ = p.child.kill();
        let _ = p.child.wait();
        let (listen, t) = (self.nodes[i].addrs.listen, Instant::now());
        while t.elapsed() < Duration::from_secs(5) {
            match TcpStream::connect_timeout(&listen, Duration::from_millis(200)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                _ => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        let took = t.elapsed();
        if took > Duration::from_millis(5) {
            eprintln!(
                "{}: listener refused {took:?} after the SIGKILLed process was reaped",
                self.nodes[i].addrs.name
            );
        }
    }

    /// SIGTERMs node `i` and waits for it to exit (its drain included).
    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.take() {
            if p.terminate(Duration::from_secs(20)).is_none() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
            self.nodes[i].last_log = p.stderr();
        }
    }

    /// (Re)starts node `i` on its address, port and config (rewritten with the current key
    /// files); returns once it printed READY. HAProxy sees it up later: `wait_node_up`.
    pub fn restart_node(&mut self, i: usize) {
        self.kill_node(i);
        self.write_config(i);
        let (listen, admin, shards) = (
            self.nodes[i].addrs.listen.to_string(),
            self.nodes[i].addrs.admin.to_string(),
            self.shards.to_string(),
        );
        let config = self.nodes[i].config.display().to_string();
        let args = [
            "serve", "--listen", &listen, "--admin", &admin, "--shards", &shards, "--config",
            &config,
        ];
        // A port released by a SIGKILLed node is free at once (SO_REUSEADDR); retry briefly
        // in case the kernel has not finished closing it.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::panic::catch_unwind(|| Proc::start(&args)) {
                Ok(p) => {
                    self.nodes[i].proc = Some(p);
                    return;
                }
                Err(e) if Instant::now() > deadline => std::panic::resume_unwind(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// From now on nodes (re)started get `current` as their key and `previous` (if any) as
    /// `previous_session_key_file`; nodes running keep theirs until restarted.
    pub fn set_keys(&mut self, current: &Path, previous: Option<&Path>) {
        self.key_file = current.to_path_buf();
        self.previous_key_file = previous.map(Path::to_path_buf);
    }

    /// The key file nodes started now get.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// Asks HAProxy's runtime API; the whole answer.
    pub fn runtime_api(&self, command: &str) -> std::io::Result<String> {
        let mut s = UnixStream::connect(&self.stats_socket)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("{command}\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// Each node's state as HAProxy sees it (`UP`, `DOWN`, `UP 1/2`, `DOWN 1/2`, `no check`),
    /// by node name; empty when the runtime API does not answer.
    pub fn server_states(&self) -> Vec<(String, String)> {
        let Ok(csv) = self.runtime_api("show stat") else {
            return Vec::new();
        };
        let mut lines = csv.lines();
        let Some(head) = lines.next() else {
            return Vec::new();
        };
        let cols: Vec<&str> = head.trim_start_matches("# ").split(',').collect();
        let col = |name: &str| cols.iter().position(|c| *c == name);
        let (Some(px), Some(sv), Some(st)) = (col("pxname"), col("svname"), col("status")) else {
            return Vec::new();
        };
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > st && f[px] == "shardcat")
            .filter(|f| f[sv] != "BACKEND" && f[sv] != "FRONTEND")
            .map(|f| (f[sv].to_string(), f[st].to_string()))
            .collect()
    }

    /// HAProxy's state of node `i` ("" when unknown).
    pub fn server_status(&self, i: usize) -> String {
        let name = &self.nodes[i].addrs.name;
        self.server_states()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
            .unwrap_or_default()
    }

    /// Every node's state, for assertion messages.
    pub fn states(&self) -> String {
        format!("{:?}", self.server_states())
    }

    /// Waits until HAProxy reports node `i` exactly `status` (`UP` or `DOWN`, not a
    /// transition such as `DOWN 1/2`); returns whether it did in time.
    pub fn wait_status(&self, i: usize, status: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.server_status(i) == status {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until HAProxy has node `i` up; panics with its view and logs otherwise.
    pub fn wait_node_up(&self, i: usize) -> Duration {
        let t = Instant::now();
        assert!(
            self.wait_status(i, "UP", STATE_CHANGE),
            "HAProxy did not mark {} up within {STATE_CHANGE:?}: {}\nhaproxy log:\n{}",
            self.nodes[i].addrs.name,
            self.states(),
            self.haproxy_log()
        );
        t.elapsed()
    }

    /// Waits until HAProxy has node `i` down; panics otherwise. Returns how long it took.
    pub fn wait_node_down(&self, i: usize) -> Duration {
        let t = Instant::now();
        assert!(
            self.wait_status(i, "DOWN", STATE_CHANGE),
            "HAProxy did not mark {} down within {STATE_CHANGE:?}: {}\nhaproxy log:\n{}",
            self.nodes[i].addrs.name,
            self.states(),
            self.haproxy_log()
        );
        t.elapsed()
    }

    /// The index of the node named `name` (`n1` is 0).
    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.addrs.name == name)
            .unwrap_or_else(|| panic!("no node named {name:?}"))
    }

    pub fn admin(&self, i: usize) -> SocketAddr {
        self.nodes[i].addrs.admin
    }

    /// Node `i`'s whole `/metrics` text ("" when it is not running).
    pub fn metrics_text(&self, i: usize) -> String {
        if self.nodes[i].proc.is_none() {
            return String::new();
        }
        get(self.admin(i), "/metrics").text()
    }

    /// A figure from node `i`'s `/metrics`: the sum over the series of the family that carry
    /// the labels given (`exposition::sum`); 0 when the family is absent or the node is down.
    pub fn metric(&self, i: usize, series: &str) -> f64 {
        exposition::sum(&self.metrics_text(i), series).unwrap_or(0.0)
    }

    /// `series` on every node, by name, for assertion messages.
    pub fn metric_by_node(&self, series: &str) -> Vec<(String, f64)> {
        (0..self.nodes.len())
            .map(|i| (self.nodes[i].addrs.name.clone(), self.metric(i, series)))
            .collect()
    }

    /// HAProxy's stderr so far.
    pub fn haproxy_log(&self) -> String {
        std::fs::read_to_string(&self.haproxy_log).unwrap_or_default()
    }

    /// Node `i`'s log: its current run's, or its last run's if it is down.
    pub fn node_log(&self, i: usize) -> String {
        match &self.nodes[i].proc {
            Some(p) => p.stderr(),
            None => self.nodes[i].last_log.clone(),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut h) = self.haproxy.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
