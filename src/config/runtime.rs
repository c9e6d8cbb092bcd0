//! The validated runtime configuration: `Config` and the slices each stage reads (`Limits`,
//! `Timeouts`, `Upstream`, ...), and the validation that builds it from a `FileConfig` and the
//! command line's `Overrides` (`FileConfig::resolve`). Relations between limits are checked
//! here, at load time; an error names the key at fault.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::federation::{FederationConfig, RouteConfig, ServerConfig};
use super::file::{
    DegradationSection, FileConfig, LimitsSection, ServerFileSection, ServerSection, SseSection,
    TapesSection, TimeoutsSection, UpstreamSection, DEFAULT_ROUTE_PATH, MAX_SHARDS,
};
use super::tapes;
use super::upstream::{
    HealthConfig, HttpUpstreams, ProbeKind, StdioConfig, Strategy, Upstream, UpstreamConfig,
};

/// Which io driver the shards run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Auto,
    Uring,
    Legacy,
}

/// Validated settings for the whole gateway. Each stage reads only its slice.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub shards: usize,
    pub driver: Driver,
    pub listen_backlog: u32,
    /// Client connections start with a PROXY protocol header (`server.proxy_protocol`).
    pub proxy_protocol: bool,
    pub origins: OriginPolicy,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub sse: SseConfig,
    pub degradation: Thresholds,
    /// The upstream of a single-server config (`[upstream]`); with `[[server]]`, the first
    /// server's.
    pub upstream: Upstream,
    /// The named servers (`[[server]]`); without them, `upstream` as one unnamed server.
    pub servers: Vec<ServerConfig>,
    /// The paths clients reach and the servers behind each (`[[route]]`); at least one.
    pub routes: Vec<RouteConfig>,
    pub federation: FederationConfig,
    /// Recording; `None` when off.
    pub tapes: Option<tapes::TapeConfig>,
    pub auth: super::auth::AuthConfig,
    /// This node's part in a cluster (`[cluster]`); `None`: a gateway alone, as before.
    pub cluster: Option<super::cluster::ClusterConfig>,
}

impl Config {
    /// Whether the servers are named (`[[server]]`): requests then go through the federation
    /// (`upstream::federated`), even to a route of one server.
    pub fn is_federated(&self) -> bool {
        self.servers.first().is_some_and(|s| !s.name.is_empty())
    }

    /// The upstreams the gateway serves from: the one upstream, or each server's.
    fn upstreams(&self) -> impl Iterator<Item = &Upstream> {
        let servers = self.is_federated().then_some(&self.servers);
        let one = (!self.is_federated()).then_some(&self.upstream);
        servers
            .into_iter()
            .flatten()
            .map(|s| &s.upstream)
            .chain(one)
    }

    /// HTTP upstreams (replicas) over all servers: their health gauges, in server order.
    pub fn http_targets(&self) -> usize {
        self.upstreams()
            .map(|u| match u {
                Upstream::Http(h) => h.targets.len(),
                Upstream::Stdio(_) => 0,
            })
            .sum()
    }

    /// Child processes over all stdio servers (one gate across shards).
    pub fn max_stdio_processes(&self) -> usize {
        self.upstreams()
            .map(|u| match u {
                Upstream::Stdio(s) => s.max_processes,
                Upstream::Http(_) => 0,
            })
            .sum()
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_sessions: usize,
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    pub max_pending_events: usize,
    pub max_pending_bytes: usize,
    pub max_event_bytes: usize,
    pub handoff_queue_depth: usize,
    pub max_linger_bytes: usize,
    pub retry_after_s: u32,
    pub clients: ClientLimitConfig,
}

/// Per-client limits (the `[limits]` keys read by `limits`); 0 turns a limit off.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientLimitConfig {
    pub max_sessions_per_client: u32,
    pub client_requests_per_s: u32,
    pub client_burst: u32,
    pub session_requests_per_s: u32,
    pub session_burst: u32,
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub client_head: Duration,
    pub keepalive_idle: Duration,
    pub upstream_connect: Duration,
    pub upstream_request: Duration,
    pub sse_keepalive: Duration,
    pub sse_idle: Duration,
    pub era_probe: Duration,
    /// How long a lingering close reads and drops (`DEFAULT_LINGER_MS`); zero: no linger.
    pub linger: Duration,
    pub session_idle: Duration,
    pub session_max_age: Duration,
    /// `None`: eviction off.
    pub session_evict_idle: Option<Duration>,
    pub drain: Duration,
}

/// Validated `[sse]`.
#[derive(Debug, Clone)]
pub struct SseConfig {
    pub replay_max_events: usize,
    pub replay_max_age: Duration,
    pub replay_max_bytes: usize,
    pub resume_window: Duration,
    pub max_streams_per_session: usize,
    pub reconnect_base: Duration,
    pub reconnect_max: Duration,
    pub reconnect_max_attempts: u32,
}

/// Validated `[degradation]`: where each level of service begins (read by `degrade`).
#[derive(Debug, Clone)]
pub struct Thresholds {
    /// Occupancy at which each level above `full` begins.
    pub recording_shed_at: f64,
    pub sessions_rejected_at: f64,
    pub protective_at: f64,
    pub hysteresis: f64,
    pub check_interval: Duration,
    /// 0: memory is not measured.
    pub max_memory_bytes: u64,
    pub max_pending_events: u64,
}

/// Which `Origin` and `Host` values are accepted.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    /// Exact origins (`scheme://host[:port]`), lowercased.
    pub origins: Vec<String>,
    /// Accept any `http(s)://localhost|127.0.0.1|[::1][:port]` origin.
    pub loopback_origins: bool,
    /// Exact Host values, lowercased; empty with `loopback_hosts` false means any.
    pub hosts: Vec<String>,
    pub loopback_hosts: bool,
}

/// Overrides from the command line; `None` leaves the file (or default) value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    /// A stdio upstream's command line, split on whitespace (quotes group words).
    pub upstream_cmd: Option<String>,
    /// Record tapes into this directory.
    pub tapes: Option<String>,
    pub shards: Option<usize>,
    pub admin: Option<String>,
    pub driver: Option<String>,
}

/// A configuration error naming the key at fault.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(key: &str, why: impl std::fmt::Display) -> Result<T, ConfigError> {
    Err(ConfigError(format!("invalid config: {key}: {why}")))
}

impl FileConfig {
    /// True when neither the file nor the flags name an upstream: serve the built-in demo.
    pub fn needs_demo(&self, o: &Overrides) -> bool {
        o.upstream.is_none()
            && o.upstream_cmd.is_none()
            && self.servers.is_empty()
            && self
                .upstream
                .iter()
                .all(|u| u.kind == "http" && u.url.is_empty())
    }

    pub fn from_toml(text: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            // The parser refuses `[server]` beside `[[server]]` before serde sees either.
            let hint = if e.message().contains("duplicate key `server`") {
                "\n([server] is the listener and [[server]] the named servers: with [[server]], \
                 write the listener as [gateway])"
            } else {
                ""
            };
            ConfigError(format!("invalid config: {e}{hint}"))
        })
    }

    pub fn load(path: &str) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {path}: {e}")))?;
        FileConfig::from_toml(&text)
    }

    /// Applies overrides and validates. `demo_addr` is the built-in upstream when no URL is set.
    pub fn resolve(
        mut self,
        o: &Overrides,
        demo_addr: Option<SocketAddr>,
    ) -> Result<Config, ConfigError> {
        self.apply(o)?;
        let table = self.listener_table.name();
        let key = |k: &str| format!("{table}.{k}");
        let listen = resolve_addr(&key("listen"), &self.server.listen)?;
        let admin = match self.server.admin.as_str() {
            "" | "off" => None,
            a => Some(resolve_addr(&key("admin"), a)?),
        };
        let shards = resolve_shards(self.server.shards, &key("shards"))?;
        let driver = driver(&self.server.driver, &key("driver"))?;
        let origins = origin_policy(&self.server, listen);
        let limits = validate_limits(&self.limits)?;
        let timeouts = validate_timeouts(&self.timeouts)?;
        let sse = self.sse.validate()?;
        let degradation = self.degradation.validate()?;
        let federation = self.federation.validate().map_err(ConfigError)?;
        let (upstream, servers, routes) = self.resolve_servers(demo_addr, &federation)?;
        let tapes = self.tapes.resolve()?;
        let auth = self.auth.validate().map_err(ConfigError)?;
        let cluster = self.cluster.as_ref().map(|c| c.validate());
        let cluster = cluster.transpose().map_err(ConfigError)?;
        let listen_backlog = self.server.listen_backlog;
        if listen_backlog == 0 {
            return err(&key("listen_backlog"), "must be at least 1");
        }
        Ok(Config {
            servers,
            routes,
            federation,
            listen,
            admin,
            shards,
            driver,
            listen_backlog,
            proxy_protocol: self.server.proxy_protocol,
            origins,
            limits,
            timeouts,
            sse,
            degradation,
            upstream,
            tapes,
            auth,
            cluster,
        })
    }

    /// The servers and the routes to them: `[[server]]` and `[[route]]`, or `[upstream]` as
    /// one unnamed server on `DEFAULT_ROUTE_PATH`. The upstream returned first is the first
    /// server's (`Config::upstream`).
    fn resolve_servers(
        &self,
        demo: Option<SocketAddr>,
        federation: &FederationConfig,
    ) -> Result<(Upstream, Vec<ServerConfig>, Vec<RouteConfig>), ConfigError> {
        if self.servers.is_empty() {
            if !self.routes.is_empty() {
                return err("route", "names [[server]]s, and the file has none");
            }
            let upstream = validate_list(&self.upstream, demo, At::UPSTREAM)?;
            let server = ServerConfig {
                name: String::new(),
                upstream: upstream.clone(),
                tools: Default::default(),
                prompts: Default::default(),
                resources: Default::default(),
                prefix: Default::default(),
            };
            let route = RouteConfig {
                path: DEFAULT_ROUTE_PATH.into(),
                servers: vec![0],
            };
            return Ok((upstream, vec![server], vec![route]));
        }
        if !self.upstream.is_empty() {
            return err(
                "upstream",
                "[upstream] and [[server]] exclude each other: write every server as [[server]]",
            );
        }
        let mut servers = Vec::with_capacity(self.servers.len());
        for i in 0..self.servers.len() {
            super::federation::check_name(&self.servers, i, &federation.separator)
                .map_err(ConfigError)?;
            let s = &self.servers[i];
            let upstream = server_upstream(s)?;
            servers.push(s.validate(upstream).map_err(ConfigError)?);
        }
        let routes = super::federation::routes(&self.routes, &servers).map_err(ConfigError)?;
        Ok((servers[0].upstream.clone(), servers, routes))
    }

    /// Writes the command line's overrides over the file's values.
    fn apply(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        if let Some(v) = &o.listen {
            self.server.listen = v.clone();
        }
        // With [[server]], a flag naming one upstream would replace them all, silently.
        let flag = match (&o.upstream, &o.upstream_cmd) {
            (Some(_), _) => Some("--upstream"),
            (None, Some(_)) => Some("--upstream-cmd"),
            (None, None) => None,
        };
        if let (Some(flag), false) = (flag, self.servers.is_empty()) {
            return Err(ConfigError(format!(
                "invalid {flag}: the file names its servers ([[server]]); set them there"
            )));
        }
        // A flag names the upstream; the file's other upstream settings (credentials, pool and
        // process bounds) still apply to it.
        if (o.upstream.is_some() || o.upstream_cmd.is_some()) && self.upstream.is_empty() {
            self.upstream = vec![UpstreamSection::default()];
        }
        if let Some(v) = &o.upstream {
            self.upstream[0].kind = "http".into();
            self.upstream[0].url = v.clone();
        }
        if let Some(v) = &o.upstream_cmd {
            let mut words = split_command(v)
                .map_err(|why| ConfigError(format!("invalid --upstream-cmd: {why}")))?
                .into_iter();
            let u = &mut self.upstream[0];
            u.kind = "stdio".into();
            u.command = words.next().unwrap_or_default();
            u.args = words.collect();
        }
        if let Some(v) = o.shards {
            self.server.shards = v;
        }
        if let Some(v) = &o.admin {
            self.server.admin = v.clone();
        }
        if let Some(v) = &o.driver {
            self.server.driver = v.clone();
        }
        if let Some(v) = &o.tapes {
            self.tapes.dir = v.clone();
        }
        Ok(())
    }
}

fn driver(s: &str, key: &str) -> Result<Driver, ConfigError> {
    match s {
        "auto" => Ok(Driver::Auto),
        "uring" => Ok(Driver::Uring),
        "legacy" => Ok(Driver::Legacy),
        other => err(key, format!("'{other}' is not one of auto, uring, legacy")),
    }
}

fn resolve_addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    match text.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .map_or_else(|| err(key, format!("'{text}' resolves to nothing")), Ok),
        Err(e) => err(key, format!("'{text}': {e}")),
    }
}

fn resolve_shards(n: usize, key: &str) -> Result<usize, ConfigError> {
    let n = if n == 0 {
        std::thread::available_parallelism().map_or(1, |p| p.get())
    } else {
        n
    };
    if n > MAX_SHARDS {
        return err(key, format!("{n} exceeds the maximum of {MAX_SHARDS}"));
    }
    Ok(n)
}

fn validate_limits(l: &LimitsSection) -> Result<Limits, ConfigError> {
    let at_least = |key: &str, v: usize, min: usize| {
        if v < min {
            err(key, format!("{v} is below the minimum of {min}"))
        } else {
            Ok(())
        }
    };
    at_least("limits.max_connections", l.max_connections, 1)?;
    at_least("limits.max_sessions", l.max_sessions, 1)?;
    at_least("limits.max_head_bytes", l.max_head_bytes, 512)?;
    at_least("limits.max_headers", l.max_headers, 8)?;
    at_least("limits.max_body_bytes", l.max_body_bytes, 1024)?;
    at_least("limits.max_pending_events", l.max_pending_events, 1)?;
    at_least("limits.max_pending_bytes", l.max_pending_bytes, 1024)?;
    at_least("limits.max_event_bytes", l.max_event_bytes, 1024)?;
    at_least("limits.handoff_queue_depth", l.handoff_queue_depth, 1)?;
    if l.max_head_bytes > 65_535 {
        return err("limits.max_head_bytes", "must be at most 65535");
    }
    if l.max_headers > 128 {
        return err("limits.max_headers", "must be at most 128");
    }
    Ok(Limits {
        max_connections: l.max_connections,
        max_sessions: l.max_sessions,
        max_head_bytes: l.max_head_bytes,
        max_headers: l.max_headers,
        max_body_bytes: l.max_body_bytes,
        max_pending_events: l.max_pending_events,
        max_pending_bytes: l.max_pending_bytes,
        max_event_bytes: l.max_event_bytes,
        handoff_queue_depth: l.handoff_queue_depth,
        max_linger_bytes: l.max_linger_bytes,
        retry_after_s: l.retry_after_s,
        clients: ClientLimitConfig {
            max_sessions_per_client: l.max_sessions_per_client,
            client_requests_per_s: l.client_requests_per_s,
            client_burst: l.client_burst,
            session_requests_per_s: l.session_requests_per_s,
            session_burst: l.session_burst,
        },
    })
}

fn validate_timeouts(t: &TimeoutsSection) -> Result<Timeouts, ConfigError> {
    let ms = |key: &str, v: u64| {
        if v == 0 {
            err(key, "must be at least 1 ms")
        } else {
            Ok(Duration::from_millis(v))
        }
    };
    let out = Timeouts {
        client_head: ms("timeouts.client_head_timeout_ms", t.client_head_timeout_ms)?,
        keepalive_idle: ms(
            "timeouts.keepalive_idle_timeout_ms",
            t.keepalive_idle_timeout_ms,
        )?,
        upstream_connect: ms(
            "timeouts.upstream_connect_timeout_ms",
            t.upstream_connect_timeout_ms,
        )?,
        upstream_request: ms(
            "timeouts.upstream_request_timeout_ms",
            t.upstream_request_timeout_ms,
        )?,
        sse_keepalive: ms("timeouts.sse_keepalive_ms", t.sse_keepalive_ms)?,
        sse_idle: ms("timeouts.sse_idle_timeout_ms", t.sse_idle_timeout_ms)?,
        era_probe: ms("timeouts.era_probe_timeout_ms", t.era_probe_timeout_ms)?,
        linger: Duration::from_millis(t.linger_ms),
        session_idle: ms(
            "timeouts.session_idle_timeout_ms",
            t.session_idle_timeout_ms,
        )?,
        session_max_age: ms("timeouts.session_max_age_ms", t.session_max_age_ms)?,
        session_evict_idle: (t.session_evict_idle_ms > 0)
            .then(|| Duration::from_millis(t.session_evict_idle_ms)),
        drain: ms("timeouts.drain_timeout_ms", t.drain_timeout_ms)?,
    };
    Ok(out)
}

impl SseSection {
    fn validate(&self) -> Result<SseConfig, ConfigError> {
        if self.max_streams_per_session == 0 {
            return err("sse.max_streams_per_session", "must be at least 1");
        }
        if self.reconnect_base_ms == 0 || self.reconnect_max_ms < self.reconnect_base_ms {
            return err(
                "sse.reconnect_base_ms",
                "must be at least 1 ms and at most sse.reconnect_max_ms",
            );
        }
        if self.resume_window_ms == 0 {
            return err("sse.resume_window_ms", "must be at least 1 ms");
        }
        Ok(SseConfig {
            replay_max_events: self.replay_max_events,
            replay_max_age: Duration::from_millis(self.replay_max_age_ms),
            replay_max_bytes: self.replay_max_bytes,
            resume_window: Duration::from_millis(self.resume_window_ms),
            max_streams_per_session: self.max_streams_per_session,
            reconnect_base: Duration::from_millis(self.reconnect_base_ms),
            reconnect_max: Duration::from_millis(self.reconnect_max_ms),
            reconnect_max_attempts: self.reconnect_max_attempts,
        })
    }
}

impl DegradationSection {
    fn validate(&self) -> Result<Thresholds, ConfigError> {
        let levels = [
            ("degradation.recording_shed_at", self.recording_shed_at),
            (
                "degradation.sessions_rejected_at",
                self.sessions_rejected_at,
            ),
            ("degradation.protective_at", self.protective_at),
        ];
        for (key, v) in levels {
            if !(v > 0.0 && v <= 1.0) {
                return err(key, "must be in (0, 1]");
            }
        }
        if !(self.recording_shed_at <= self.sessions_rejected_at
            && self.sessions_rejected_at <= self.protective_at)
        {
            return err(
                "degradation.recording_shed_at",
                "thresholds must rise: recording_shed_at <= sessions_rejected_at <= protective_at",
            );
        }
        if !(0.0..0.5).contains(&self.hysteresis) {
            return err("degradation.hysteresis", "must be in [0, 0.5)");
        }
        if self.check_interval_ms == 0 || self.max_pending_events == 0 {
            return err(
                "degradation.check_interval_ms",
                "check_interval_ms and max_pending_events must be at least 1",
            );
        }
        Ok(Thresholds {
            recording_shed_at: self.recording_shed_at,
            sessions_rejected_at: self.sessions_rejected_at,
            protective_at: self.protective_at,
            hysteresis: self.hysteresis,
            check_interval: Duration::from_millis(self.check_interval_ms),
            max_memory_bytes: self.max_memory_bytes,
            max_pending_events: self.max_pending_events,
        })
    }
}

impl TapesSection {
    /// The validated recording settings, or `None` when recording is off.
    pub fn resolve(&self) -> Result<Option<tapes::TapeConfig>, ConfigError> {
        use tapes::{Fsync, Overflow, TapeConfig};
        if self.dir.is_empty() {
            return Ok(None);
        }
        let mut c = TapeConfig::new(&self.dir);
        c.overflow = match self.overflow.as_str() {
            "drop" => Overflow::Drop,
            "block" => Overflow::Block,
            other => {
                return err(
                    "tapes.overflow",
                    format!("'{other}' is not one of drop, block"),
                )
            }
        };
        c.fsync = match self.fsync.as_str() {
            "never" => Fsync::Never,
            "interval" => Fsync::Interval(self.fsync_interval_ms),
            "always" => Fsync::Always,
            other => {
                return err(
                    "tapes.fsync",
                    format!("'{other}' is not one of never, interval, always"),
                )
            }
        };
        c.channel_depth = self.channel_depth;
        c.batch_max_frames = self.batch_max_frames;
        c.batch_max_delay_ms = self.batch_max_delay_ms;
        c.segment_max_bytes = self.segment_max_bytes;
        c.segment_max_sessions = self.segment_max_sessions;
        c.mask = self.mask.clone();
        c.io_retry_max = self.io_retry_max;
        c.io_retry_backoff_ms = self.io_retry_backoff_ms;
        c.index_interval_ms = self.index_interval_ms;
        c.core = self.core;
        c.validate()
            .map_err(|why| ConfigError(format!("invalid config: {why}")))?;
        Ok(Some(c))
    }
}

/// Where an upstream's keys are written, for error messages: `upstream.<key>` for
/// `[upstream]`, `server.<name>.<key>` for a server, and `server.<name>.replica[<i>].url` (and
/// `weight`) for the keys each of a server's replicas sets itself.
#[derive(Debug, Clone, Copy)]
struct At<'a> {
    table: &'a str,
    /// The targets are a server's replicas: `url` and `weight` are written in each.
    replicas: bool,
    nth: usize,
}

impl<'a> At<'a> {
    const UPSTREAM: At<'static> = At {
        table: "upstream",
        replicas: false,
        nth: 0,
    };

    fn key(self, name: &str) -> String {
        match name {
            "url" | "weight" if self.replicas => {
                format!("{}.replica[{}].{name}", self.table, self.nth)
            }
            _ => format!("{}.{name}", self.table),
        }
    }

    /// The `i`th target's keys.
    fn nth(self, i: usize) -> At<'a> {
        At { nth: i, ..self }
    }
}

/// `[upstream]`, `[[upstream]]`, or a server's replicas: one upstream (none: the demo), or
/// several balanced HTTP ones.
fn validate_list(
    list: &[UpstreamSection],
    demo: Option<SocketAddr>,
    at: At,
) -> Result<Upstream, ConfigError> {
    match list {
        [] => validate_upstream(&UpstreamSection::default(), demo, at),
        [u] => validate_upstream(u, demo, at),
        many => validate_many(many, at),
    }
}

/// A `[[server]]`'s upstream: its `url`, its `[[server.replica]]`s (each the server's keys
/// with its own `url` and `weight`), or its `command`. No demo stands in for a missing one.
fn server_upstream(s: &ServerFileSection) -> Result<Upstream, ConfigError> {
    let table = format!("server.{}", s.name);
    let at = At {
        table: &table,
        replicas: false,
        nth: 0,
    };
    let u = &s.upstream;
    let (url, replicas) = (!u.url.is_empty(), !s.replica.is_empty());
    if url && replicas {
        return err(&at.key("url"), "and [[server.replica]] exclude each other");
    }
    if u.kind == "stdio" && (url || replicas) {
        return err(
            &at.key("url"),
            "a stdio server (command) has no url or replicas",
        );
    }
    if u.kind == "http" && !u.command.is_empty() {
        return err(
            &at.key("command"),
            "is a stdio server's, and kind = \"http\"",
        );
    }
    if u.kind == "http" && !url && !replicas {
        return err(
            &at.key("url"),
            "is required: give url, [[server.replica]] or command",
        );
    }
    if !replicas {
        return validate_upstream(u, None, at);
    }
    let list: Vec<UpstreamSection> = s
        .replica
        .iter()
        .map(|r| UpstreamSection {
            url: r.url.clone(),
            weight: r.weight,
            ..u.clone()
        })
        .collect();
    let at = At {
        replicas: true,
        ..at
    };
    validate_list(&list, None, at)
}

fn validate_upstream(
    u: &UpstreamSection,
    demo: Option<SocketAddr>,
    at: At,
) -> Result<Upstream, ConfigError> {
    match u.kind.as_str() {
        "http" => Ok(Upstream::Http(HttpUpstreams {
            targets: vec![validate_http(u, demo, false, at)?],
            strategy: strategy(&u.strategy, at)?,
        })),
        "stdio" => validate_stdio(u, at).map(Upstream::Stdio),
        "sse" => validate_sse(u, at).map(Upstream::Stdio),
        other => err(
            &at.key("kind"),
            format!("'{other}' is not one of http, stdio, sse"),
        ),
    }
}

/// Several `[[upstream]]` entries (or a server's replicas): all http, each with its own URL.
fn validate_many(many: &[UpstreamSection], at: At) -> Result<Upstream, ConfigError> {
    if many.iter().any(|u| u.kind != "http") {
        return err(
            &at.key("kind"),
            "several upstreams must all be http (one stdio upstream serves alone)",
        );
    }
    if let Some(i) = many.iter().position(|u| u.url.is_empty()) {
        return err(
            &at.nth(i).key("url"),
            "is required for each of several upstreams",
        );
    }
    let targets = many
        .iter()
        .enumerate()
        .map(|(i, u)| validate_http(u, None, true, at.nth(i)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Upstream::Http(HttpUpstreams {
        targets,
        strategy: strategy(&many[0].strategy, at)?,
    }))
}

fn strategy(s: &str, at: At) -> Result<Strategy, ConfigError> {
    match s {
        "round_robin" => Ok(Strategy::RoundRobin),
        "least_connections" => Ok(Strategy::LeastConnections),
        "sticky" => Ok(Strategy::Sticky),
        other => err(
            &at.key("strategy"),
            format!("'{other}' is not one of round_robin, least_connections, sticky"),
        ),
    }
}

fn validate_stdio(u: &UpstreamSection, at: At) -> Result<StdioConfig, ConfigError> {
    if u.command.trim().is_empty() {
        return err(&at.key("command"), "is required for kind = \"stdio\"");
    }
    check_spawnable(u, at)?;
    validate_stdio_limits(u, at)
}

/// The bounds of a message peer upstream (stdio or sse).
fn validate_stdio_limits(u: &UpstreamSection, at: At) -> Result<StdioConfig, ConfigError> {
    let key = |k: &str| at.key(k);
    if u.max_processes == 0 {
        return err(&key("max_processes"), "must be at least 1");
    }
    if u.stdin_queue_depth == 0 {
        return err(&key("stdin_queue_depth"), "must be at least 1");
    }
    if u.kill_grace_ms == 0 {
        return err(&key("kill_grace_ms"), "must be at least 1 ms");
    }
    if u.prewarm + u.stateless_children > u.max_processes {
        return err(
            &key("prewarm"),
            format!(
                "prewarm + stateless_children must not exceed {}",
                key("max_processes")
            ),
        );
    }
    Ok(StdioConfig {
        command: u.command.clone(),
        args: u.args.clone(),
        env: u.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        cwd: u.cwd.clone().filter(|d| !d.is_empty()),
        prewarm: u.prewarm,
        max_processes: u.max_processes,
        stateless_children: u.stateless_children,
        kill_grace: Duration::from_millis(u.kill_grace_ms),
        stderr_lines_per_s: u.stderr_lines_per_s,
        stdin_queue_depth: u.stdin_queue_depth,
        sse: None,
    })
}

/// `kind = "sse"`: a legacy HTTP+SSE server at `url` (its event stream), served as message
/// peers like a stdio server's children: one stream per session, a few for stateless
/// requests, `max_processes` streams at most.
fn validate_sse(u: &UpstreamSection, at: At) -> Result<StdioConfig, ConfigError> {
    if u.url.is_empty() {
        return err(&at.key("url"), "is required for kind = \"sse\"");
    }
    if !u.command.is_empty() {
        return err(&at.key("command"), "is for kind = \"stdio\", not \"sse\"");
    }
    let mut target = validate_http(u, None, false, at)?;
    // The event streams hold connections for a peer's life: the pool has room for them
    // besides the POSTs'.
    target.pool_max_connections += u.max_processes;
    let mut peers = UpstreamSection {
        command: u.url.clone(),
        ..u.clone()
    };
    peers.kill_grace_ms = peers.kill_grace_ms.max(1);
    let cfg = validate_stdio_limits(&peers, at)?;
    Ok(StdioConfig {
        sse: Some(Box::new(target)),
        ..cfg
    })
}

/// What the kernel cannot take in a command line or an environment (a NUL ends a C string;
/// `=` ends a variable's name) fails at load time, not at each spawn.
fn check_spawnable(u: &UpstreamSection, at: At) -> Result<(), ConfigError> {
    let nul = |v: &str| v.contains('\0');
    if nul(&u.command) {
        return err(&at.key("command"), "must not contain a NUL character");
    }
    if u.args.iter().any(|a| nul(a)) {
        return err(&at.key("args"), "must not contain a NUL character");
    }
    if u.cwd.as_deref().is_some_and(nul) {
        return err(&at.key("cwd"), "must not contain a NUL character");
    }
    for (k, v) in &u.env {
        if k.is_empty() || k.contains('=') || nul(k) || nul(v) {
            return err(
                &at.key("env"),
                "names must be non-empty without '=' or NUL, values without NUL",
            );
        }
    }
    Ok(())
}

/// Splits a command line into words: whitespace separates, single or double quotes group.
pub fn split_command(line: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote");
    }
    if in_word {
        words.push(cur);
    }
    if words.is_empty() {
        return Err("empty command");
    }
    Ok(words)
}

fn validate_http(
    u: &UpstreamSection,
    demo: Option<SocketAddr>,
    several: bool,
    at: At,
) -> Result<UpstreamConfig, ConfigError> {
    let key = |k: &str| at.key(k);
    let (addr, authority, path) = if u.url.is_empty() {
        match demo {
            Some(a) => (a, a.to_string(), "/mcp".to_string()),
            None => return err(&key("url"), "is required"),
        }
    } else {
        parse_url(&u.url, &key("url"))?
    };
    if u.pool_max_connections == 0 {
        return err(&key("pool_max_connections"), "must be at least 1");
    }
    if u.pool_max_idle > u.pool_max_connections {
        return err(
            &key("pool_max_idle"),
            format!("must not exceed {}", key("pool_max_connections")),
        );
    }
    if u.pool_idle_timeout_ms == 0 {
        return err(&key("pool_idle_timeout_ms"), "must be at least 1 ms");
    }
    if u.weight == 0 || u.weight > 1000 {
        return err(&key("weight"), "must be between 1 and 1000");
    }
    if let Some(a) = &u.authorization {
        if a.bytes().any(|b| b == b'\r' || b == b'\n') {
            return err(&key("authorization"), "must be one line");
        }
    }
    let health = validate_health(u, &path, several, at)?;
    Ok(UpstreamConfig {
        addr,
        authority,
        path,
        authorization: u.authorization.clone(),
        pool_max_idle: u.pool_max_idle,
        pool_max_connections: u.pool_max_connections,
        pool_idle_timeout: Duration::from_millis(u.pool_idle_timeout_ms),
        weight: u.weight,
        health,
    })
}

fn validate_health(
    u: &UpstreamSection,
    path: &str,
    several: bool,
    at: At,
) -> Result<HealthConfig, ConfigError> {
    let kind = match (u.health_check.as_str(), several) {
        ("auto", true) | ("mcp", _) => ProbeKind::Mcp,
        ("auto", false) | ("off", _) => ProbeKind::Off,
        ("http", _) => ProbeKind::Http,
        (other, _) => {
            return err(
                &at.key("health_check"),
                format!("'{other}' is not one of auto, mcp, http, off"),
            )
        }
    };
    let at_least_1 = |k: &str, v: u64| {
        if v == 0 {
            err(&at.key(k), "must be at least 1")
        } else {
            Ok(())
        }
    };
    at_least_1("health_interval_ms", u.health_interval_ms)?;
    at_least_1("health_timeout_ms", u.health_timeout_ms)?;
    at_least_1("healthy_threshold", u.healthy_threshold.into())?;
    at_least_1("unhealthy_threshold", u.unhealthy_threshold.into())?;
    at_least_1("breaker_failures", u.breaker_failures.into())?;
    at_least_1("breaker_open_ms", u.breaker_open_ms)?;
    at_least_1(
        "breaker_half_open_requests",
        u.breaker_half_open_requests.into(),
    )?;
    let probe_path = u.health_path.clone().unwrap_or_else(|| path.to_string());
    if !probe_path.starts_with('/') || probe_path.bytes().any(|b| b <= b' ') {
        return err(&at.key("health_path"), "must be a path starting with /");
    }
    Ok(HealthConfig {
        kind,
        path: probe_path,
        interval: Duration::from_millis(u.health_interval_ms),
        timeout: Duration::from_millis(u.health_timeout_ms),
        healthy_threshold: u.healthy_threshold,
        unhealthy_threshold: u.unhealthy_threshold,
        breaker_failures: u.breaker_failures,
        breaker_open: Duration::from_millis(u.breaker_open_ms),
        breaker_half_open_requests: u.breaker_half_open_requests,
    })
}

/// Splits `http://host[:port][/path]`. Only plain HTTP: TLS upstreams terminate elsewhere.
pub fn parse_http_url(url: &str) -> Result<(SocketAddr, String, String), ConfigError> {
    parse_url(url, "upstream.url")
}

/// `parse_http_url`, its errors naming `key`.
fn parse_url(url: &str, key: &str) -> Result<(SocketAddr, String, String), ConfigError> {
    let Some(rest) = url.strip_prefix("http://") else {
        return err(key, format!("'{url}' must start with http://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return err(key, format!("'{url}' is not a valid http URL"));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = resolve_addr(key, &with_port)?;
    Ok((addr, authority.to_string(), path.to_string()))
}

fn origin_policy(s: &ServerSection, listen: SocketAddr) -> OriginPolicy {
    let loopback = listen.ip().is_loopback();
    OriginPolicy {
        origins: s
            .allowed_origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
            .collect(),
        loopback_origins: s.allowed_origins.is_empty() && loopback,
        hosts: s
            .allowed_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        loopback_hosts: s.allowed_hosts.is_empty() && loopback,
    }
}

impl OriginPolicy {
    /// An absent Origin (non-browser clients) is allowed; a present one must be listed.
    pub fn origin_ok(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        let o = origin.trim_end_matches('/').to_ascii_lowercase();
        if self.origins.contains(&o) {
            return true;
        }
        if !self.loopback_origins {
            return false;
        }
        let host = o
            .strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"));
        host.is_some_and(is_loopback_authority)
    }

    /// Host is required in HTTP/1.1; a present one must be listed (or loopback by default).
    pub fn host_ok(&self, host: Option<&str>) -> bool {
        let Some(host) = host else { return false };
        let h = host.to_ascii_lowercase();
        if self.hosts.contains(&h) {
            return true;
        }
        if self.loopback_hosts {
            return is_loopback_authority(&h);
        }
        self.hosts.is_empty()
    }
}

/// `localhost`, a 127/8 address or `[::1]`, with an optional port: nothing else after the host
/// (`127.0.0.1:80.evil` is not loopback).
fn is_loopback_authority(a: &str) -> bool {
    let (host, port) = match a.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some(("::1", "")) => return true,
            Some(("::1", p)) => return p.strip_prefix(':').is_some_and(is_port),
            _ => return false,
        },
        None => match a.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        },
    };
    let loopback = host == "localhost"
        || (host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback()));
    loopback && port.is_none_or(is_port)
}

/// A port in an authority: digits that fit a u16, or nothing (RFC 3986 allows `host:`).
fn is_port(p: &str) -> bool {
    p.bytes().all(|b| b.is_ascii_digit()) && (p.is_empty() || p.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_LISTEN, DEFAULT_MAX_PENDING_EVENTS};

    fn demo() -> Option<SocketAddr> {
        Some("127.0.0.1:1".parse().unwrap())
    }

    #[test]
    fn defaults_resolve() {
        let c = FileConfig::default()
            .resolve(&Overrides::default(), demo())
            .unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.limits.max_pending_events, DEFAULT_MAX_PENDING_EVENTS);
        assert!(matches!(&c.upstream, Upstream::Http(h) if h.targets[0].path == "/mcp"));
        assert!(c.origins.loopback_origins);
    }

    #[test]
    fn bad_values_name_their_key() {
        let f = FileConfig::from_toml("[limits]\nmax_pending_events = 0\n").unwrap();
        let e = f.resolve(&Overrides::default(), demo()).unwrap_err();
        assert!(e.0.contains("limits.max_pending_events"), "{e}");
        let f = FileConfig::from_toml("[upstream]\npool_max_idle = 10\npool_max_connections = 5\n")
            .unwrap();
        let e = f.resolve(&Overrides::default(), demo()).unwrap_err();
        assert!(e.0.contains("upstream.pool_max_idle"), "{e}");
        let f = FileConfig::from_toml("[server]\ndriver = \"fast\"\n").unwrap();
        assert!(f
            .resolve(&Overrides::default(), demo())
            .unwrap_err()
            .0
            .contains("server.driver"));
    }

    #[test]
    fn flags_override_file() {
        let f =
            FileConfig::from_toml("[server]\nlisten = \"127.0.0.1:1000\"\nshards = 3\n").unwrap();
        let o = Overrides {
            shards: Some(2),
            ..Overrides::default()
        };
        let c = f.resolve(&o, demo()).unwrap();
        assert_eq!(c.shards, 2);
        assert_eq!(c.listen.port(), 1000);
    }

    #[test]
    fn stdio_upstream_from_file_and_flag() {
        let f = FileConfig::from_toml(
            "[[upstream]]\nkind = \"stdio\"\ncommand = \"srv\"\nargs = [\"-v\"]\nprewarm = 2\n[upstream.env]\nK = \"v\"\n",
        )
        .unwrap();
        assert!(!f.needs_demo(&Overrides::default()));
        let c = f.resolve(&Overrides::default(), None).unwrap();
        let Upstream::Stdio(s) = &c.upstream else {
            panic!("expected stdio")
        };
        assert_eq!((s.command.as_str(), s.prewarm), ("srv", 2));
        assert_eq!(s.env, vec![("K".to_string(), "v".to_string())]);
        let o = Overrides {
            upstream_cmd: Some("python3 -m 'my server' --x".into()),
            ..Overrides::default()
        };
        let c = FileConfig::default().resolve(&o, None).unwrap();
        let Upstream::Stdio(s) = &c.upstream else {
            panic!("expected stdio")
        };
        assert_eq!(s.args, vec!["-m", "my server", "--x"]);
        let f = FileConfig::from_toml("[upstream]\nkind = \"stdio\"\n").unwrap();
        let e = f.resolve(&Overrides::default(), None).unwrap_err();
        assert!(e.0.contains("upstream.command"), "{e}");
        let e = FileConfig::from_toml("[upstream]\ncomand = \"x\"\n").unwrap_err();
        assert!(e.0.contains("comand"), "{e}");
        assert!(split_command("a 'b").is_err());
        for bad in [
            "command = \"a\\u0000b\"",
            "command = \"a\"\nargs = [\"\\u0000\"]",
            "command = \"a\"\ncwd = \"/\\u0000\"",
            "command = \"a\"\n[upstream.env]\n\"\" = \"v\"",
            "command = \"a\"\n[upstream.env]\n\"K=V\" = \"v\"",
            "command = \"a\"\n[upstream.env]\nK = \"\\u0000\"",
        ] {
            let file = format!("[upstream]\nkind = \"stdio\"\n{bad}\n");
            let e = FileConfig::from_toml(&file)
                .and_then(|f| f.resolve(&Overrides::default(), None))
                .unwrap_err();
            assert!(e.0.contains("upstream."), "{bad}: {e}");
        }
        let f =
            FileConfig::from_toml("[tapes]\ndir = \"/tmp/t\"\noverflow = \"sometimes\"\n").unwrap();
        let e = f.resolve(&Overrides::default(), demo()).unwrap_err();
        assert!(e.0.contains("tapes.overflow"), "{e}");
        let f = FileConfig::from_toml("[tapes]\nmask = [\"/params/secret\"]\n").unwrap();
        let o = Overrides {
            tapes: Some("/tmp/t".into()),
            ..Overrides::default()
        };
        let c = f.resolve(&o, demo()).unwrap();
        assert_eq!(
            c.tapes.map(|t| t.mask),
            Some(vec!["/params/secret".to_string()])
        );
    }

    #[test]
    fn url_parsing() {
        let (a, auth, path) = parse_http_url("http://127.0.0.1:3000/mcp").unwrap();
        assert_eq!(a.port(), 3000);
        assert_eq!(auth, "127.0.0.1:3000");
        assert_eq!(path, "/mcp");
        assert!(parse_http_url("https://x/mcp").is_err());
    }

    #[test]
    fn origin_rules() {
        let c = FileConfig::default()
            .resolve(&Overrides::default(), demo())
            .unwrap();
        let p = &c.origins;
        assert!(p.origin_ok(None));
        assert!(p.origin_ok(Some("http://localhost:3000")));
        assert!(p.origin_ok(Some("http://127.0.0.1")));
        assert!(p.origin_ok(Some("http://[::1]:8080")));
        assert!(!p.origin_ok(Some("http://evil.example")));
        assert!(!p.origin_ok(Some("http://localhost.evil.example")));
        assert!(p.host_ok(Some("127.0.0.1:8080")));
        assert!(!p.host_ok(Some("evil.example")));
        assert!(!p.host_ok(None));
        assert!(!p.host_ok(Some("127.0.0.1:800.0.1:8080")));
        assert!(!p.host_ok(Some("localhost:80@evil.example")));
        assert!(!p.host_ok(Some("[::1]evil.example")));
        assert!(!p.origin_ok(Some("http://[::1")));
        assert!(p.host_ok(Some("localhost:")));
    }
}
