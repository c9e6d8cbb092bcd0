//! The validated upstream slice: the MCP server behind a route, over HTTP (one or several
//! targets, balanced and health checked) or a program spoken to over stdio. `runtime` builds
//! these from the file's upstream keys; the upstream stages read them.
//!
//! A leaf: it imports no sibling, so `runtime` and `federation` can both hold an `Upstream`.

use std::net::SocketAddr;
use std::time::Duration;

/// The upstream MCP server: over HTTP (one or several), or a program spoken to over stdio.
#[derive(Debug, Clone)]
pub enum Upstream {
    Http(HttpUpstreams),
    Stdio(StdioConfig),
}

/// One or several HTTP upstreams serving the same MCP endpoint.
#[derive(Debug, Clone)]
pub struct HttpUpstreams {
    pub targets: Vec<UpstreamConfig>,
    pub strategy: Strategy,
}

/// How new sessions and stateless requests are spread over several upstreams. A session always
/// stays on the upstream it started on (its upstream session lives there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Smooth weighted round robin.
    RoundRobin,
    /// Fewest requests in flight on this shard, relative to weight.
    LeastConnections,
    /// By client address: a client keeps its upstream, for stateless requests too.
    Sticky,
}

impl Upstream {
    /// How the upstream is named in logs.
    pub fn describe(&self) -> String {
        match self {
            Upstream::Http(h) => h
                .targets
                .iter()
                .map(|u| format!("http://{}{}", u.authority, u.path))
                .collect::<Vec<_>>()
                .join(", "),
            Upstream::Stdio(s) => format!("stdio: {} {}", s.command, s.args.join(" ")),
        }
    }
}

/// A message peer: a stdio server's child processes, or (`sse`) connections to a legacy
/// HTTP+SSE server (2024-11-05), which serve sessions the same way, one peer each.
#[derive(Debug, Clone)]
pub struct StdioConfig {
    /// The program to start; for a legacy SSE server, its event stream's URL (what logs name).
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub prewarm: usize,
    pub max_processes: usize,
    pub stateless_children: usize,
    pub kill_grace: Duration,
    pub stderr_lines_per_s: u32,
    pub stdin_queue_depth: usize,
    /// `kind = "sse"`: the legacy HTTP+SSE server's event stream (its `url`), connected to
    /// instead of a process started. `max_processes` then bounds its open streams.
    pub sse: Option<Box<UpstreamConfig>>,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub addr: SocketAddr,
    /// `host:port` as written in the URL, sent as `Host`.
    pub authority: String,
    pub path: String,
    pub authorization: Option<String>,
    pub pool_max_idle: usize,
    pub pool_max_connections: usize,
    pub pool_idle_timeout: Duration,
    pub weight: u32,
    pub health: HealthConfig,
}

/// How an upstream is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Mcp,
    Http,
    Off,
}

/// Validated health settings of one HTTP upstream (see `health`).
#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub kind: ProbeKind,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub breaker_failures: u32,
    pub breaker_open: Duration,
    pub breaker_half_open_requests: u32,
}
