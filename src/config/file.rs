//! The configuration file's schema, as an operator writes it: `FileConfig`, one `*Section` per
//! TOML table (each with the `Default` a missing key takes), and the `DEFAULT_*` constants those
//! defaults come from. Unknown keys are errors. Nothing here validates: `runtime` turns a
//! `FileConfig` into the checked `Config`.
//!
//! One name holds two tables: `[server]` is the gateway's own listener, `[[server]]` the named
//! MCP servers of a federation. TOML cannot hold both under one name, so a file with
//! `[[server]]` writes its listener as `[gateway]` (any file may).

use std::collections::BTreeMap;

use serde::de::{self, DeserializeOwned, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::tapes;
use crate::codec::http::{DEFAULT_MAX_HEADERS, DEFAULT_MAX_HEAD_BYTES};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9090";
pub const DEFAULT_LISTEN_BACKLOG: u32 = 4096;
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
pub const DEFAULT_MAX_PENDING_EVENTS: usize = 100;
/// Bytes of undelivered SSE events held per stream for a slow client (at least one event is
/// always let through): with large events, the event count alone would allow megabytes.
pub const DEFAULT_MAX_PENDING_BYTES: usize = 256 * 1024;
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;
pub const DEFAULT_HANDOFF_QUEUE_DEPTH: usize = 1024;
/// After an error answer on a connection whose request was not read to its end, the gateway
/// reads and drops what the client still sends for at most this long before it closes
/// (a lingering close, as nginx and HAProxy do): closing with unread bytes makes the kernel
/// send a reset, which can destroy the answer before the client reads it.
pub const DEFAULT_LINGER_MS: u64 = 2_000;
/// ... and at most this many bytes (4 × the default `max_body_bytes`).
pub const DEFAULT_MAX_LINGER_BYTES: usize = 16 * 1024 * 1024;
pub const DEFAULT_CLIENT_HEAD_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_KEEPALIVE_IDLE_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS: u64 = 3_000;
pub const DEFAULT_UPSTREAM_REQUEST_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_SSE_KEEPALIVE_MS: u64 = 15_000;
/// An upstream SSE stream that delivers no complete event (comments included) for this long is
/// closed: it catches a stalled or trickling upstream. Servers send keepalive comments far
/// more often than this.
pub const DEFAULT_SSE_IDLE_TIMEOUT_MS: u64 = 300_000;
/// How long the first 2026-07-28 request to an HTTP upstream waits for the upstream's answer
/// to the gateway's `server/discover` (its era, `era`). An upstream that does not answer in
/// time is asked again only after `ERA_PROBE_RETRY`, and its requests go on as they are.
pub const DEFAULT_ERA_PROBE_TIMEOUT_MS: u64 = 2_000;
/// Events of a session's SSE stream kept after delivery, for a client resuming with
/// `Last-Event-ID`.
pub const DEFAULT_SSE_REPLAY_MAX_EVENTS: usize = 100;
/// Delivered events older than this are no longer kept for replay.
pub const DEFAULT_SSE_REPLAY_MAX_AGE_MS: u64 = 60_000;
/// Bytes of delivered events kept per stream for replay.
pub const DEFAULT_SSE_REPLAY_MAX_BYTES: usize = 256 * 1024;
/// How long a session stream whose client went away keeps reading its upstream, waiting for
/// the client to resume it.
pub const DEFAULT_SSE_RESUME_WINDOW_MS: u64 = 30_000;
/// Resumable streams remembered per session (the oldest ended ones are forgotten first).
pub const DEFAULT_SSE_MAX_STREAMS_PER_SESSION: usize = 16;
/// First delay before reconnecting a dropped upstream stream; doubles per attempt, with jitter.
pub const DEFAULT_SSE_RECONNECT_BASE_MS: u64 = 100;
pub const DEFAULT_SSE_RECONNECT_MAX_MS: u64 = 5_000;
/// Reconnect attempts for one drop before the stream ends.
pub const DEFAULT_SSE_RECONNECT_MAX_ATTEMPTS: u32 = 5;
pub const DEFAULT_SESSION_IDLE_TIMEOUT_MS: u64 = 300_000;
/// A session ends this long after it began, however busy (the client re-initializes on 404).
pub const DEFAULT_SESSION_MAX_AGE_MS: u64 = 86_400_000;
/// When `max_sessions` is reached, a new session may evict one idle at least this long (the
/// least recently used); 0 never evicts.
pub const DEFAULT_SESSION_EVICT_IDLE_MS: u64 = 10_000;
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_RETRY_AFTER_S: u32 = 1;
/// Sessions one client (IP address) may hold at once; past it, initialize gets 429. Off (0) by
/// default: `max_sessions` already bounds memory, and a load generator or a NAT puts thousands
/// of legitimate sessions behind one address. Set it where clients are known.
pub const DEFAULT_MAX_SESSIONS_PER_CLIENT: u32 = 0;
/// Idle upstream connections kept per shard. Below the in-flight count, connections churn
/// (measured with loadgen at 1000 busy connections: p99 1066 ms with 256, 55 ms with 4096).
/// The idle timeout still closes them after a quiet spell.
pub const DEFAULT_POOL_MAX_IDLE: usize = 4096;
pub const DEFAULT_POOL_MAX_CONNECTIONS: usize = 4096;
/// Below the 5 s keep-alive of common upstream servers, so the pool drops a connection before
/// the upstream does.
pub const DEFAULT_POOL_IDLE_TIMEOUT_MS: u64 = 4_000;
/// Session ids carry the shard index in one byte.
pub const MAX_SHARDS: usize = 255;
/// Consecutive failed requests that open an upstream's circuit breaker (per shard).
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// How long an open breaker sends nothing before letting trial requests through.
pub const DEFAULT_BREAKER_OPEN_MS: u64 = 5_000;
/// Trial requests a half-open breaker lets through at once.
pub const DEFAULT_BREAKER_HALF_OPEN_REQUESTS: u32 = 1;
/// Time between active probes of an upstream (per shard).
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 2_000;
/// A probe not answered within this fails.
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 1_000;
/// Good probes in a row that bring an unhealthy upstream back.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// Failed probes in a row that take an upstream out of rotation.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Occupancy (the fullest named bound) at which recorded messages are shed.
pub const DEFAULT_RECORDING_SHED_AT: f64 = 0.80;
/// Occupancy at which new sessions are refused (503).
pub const DEFAULT_SESSIONS_REJECTED_AT: f64 = 0.90;
/// Occupancy at which only requests of existing sessions are served.
pub const DEFAULT_PROTECTIVE_AT: f64 = 0.97;
/// A level is left only when occupancy is this far below its threshold.
pub const DEFAULT_DEGRADATION_HYSTERESIS: f64 = 0.05;
pub const DEFAULT_DEGRADATION_CHECK_INTERVAL_MS: u64 = 100;
/// Resident memory counted as full occupancy (0: memory is not a bound).
pub const DEFAULT_MAX_MEMORY_BYTES: u64 = 0;
/// Undelivered SSE events, across all streams, counted as full occupancy.
pub const DEFAULT_MAX_PENDING_EVENTS_TOTAL: u64 = 100_000;
/// Child processes of stdio upstreams across all shards: one per session, plus prewarmed and
/// stateless-serving children. Past it, a new session gets 503.
pub const DEFAULT_MAX_PROCESSES: usize = 1_000;
/// Started, not yet initialized children kept ready per shard, so initialize skips the spawn.
pub const DEFAULT_PREWARM: usize = 0;
/// Initialized children per shard that serve 2026-07-28 stateless requests, multiplexed.
pub const DEFAULT_STATELESS_CHILDREN: usize = 1;
/// Time between SIGTERM and SIGKILL when a child is ended.
pub const DEFAULT_KILL_GRACE_MS: u64 = 2_000;
/// stderr lines logged per child per second; the rest are counted and dropped.
pub const DEFAULT_STDERR_LINES_PER_S: u32 = 20;
/// Messages queued toward one child's stdin before new requests get 503.
pub const DEFAULT_STDIN_QUEUE_DEPTH: usize = 256;
/// Clock skew allowed on a token's `exp`, `nbf` and `iat`, in seconds.
pub const DEFAULT_AUTH_LEEWAY_S: u64 = 60;
/// Time between scheduled fetches of the JWKS (key rotation is picked up within it).
pub const DEFAULT_JWKS_REFRESH_MS: u64 = 300_000;
/// The least time between two fetches of the JWKS, whatever asks for them: a flood of tokens
/// naming unknown keys costs the identity provider at most one fetch per this interval.
pub const DEFAULT_JWKS_MIN_REFRESH_MS: u64 = 10_000;
/// A JWKS fetch (connect, send, read) that takes longer fails; the last good keys stay.
pub const DEFAULT_JWKS_FETCH_TIMEOUT_MS: u64 = 5_000;
/// Largest JWKS body read; a larger one fails the fetch.
pub const DEFAULT_MAX_JWKS_BYTES: usize = 256 * 1024;
/// Keys of a JWKS kept (the rest are ignored, and logged).
pub const DEFAULT_MAX_JWKS_KEYS: usize = 64;
/// Validated tokens remembered per shard, so a token's signature is checked once, not per
/// request (each entry is about 100 bytes plus the subject's name and scopes).
pub const DEFAULT_TOKEN_CACHE_ENTRIES: usize = 4096;
/// Requests from shards for an early JWKS fetch (a token named an unknown key) waiting for the
/// JWKS thread; more are dropped: one pending request is enough.
pub const DEFAULT_JWKS_REFRESH_QUEUE_DEPTH: usize = 16;
/// Largest token or API key read from a request header.
pub const DEFAULT_MAX_CREDENTIAL_BYTES: usize = 8 * 1024;
/// Separator between a server's name and a name it offers, in prefixed names.
pub const DEFAULT_FEDERATION_SEPARATOR: &str = "__";
/// The longest `[federation]` separator: punctuation between two names, not a word.
pub const MAX_SEPARATOR_BYTES: usize = 8;
/// The path every server is on when no `[[route]]` is configured.
pub const DEFAULT_ROUTE_PATH: &str = "/mcp";
/// Names (tools, prompts, resources and templates) a route's name table keeps per shard; a
/// server offering more has the rest left out, logged. Bounds the table's memory whatever the
/// servers list.
pub const DEFAULT_FEDERATION_MAX_NAMES: usize = 65_536;
/// List pages the gateway reads from one server to resolve a name it has not seen (a client
/// calling a tool it did not list); past it, the name is unknown.
pub const DEFAULT_FEDERATION_MAX_LIST_PAGES: usize = 64;

/// The TOML file, as written by an operator. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(try_from = "FileTables")]
pub struct FileConfig {
    /// `[server]` (or `[gateway]`): the gateway's own listener.
    pub server: ServerSection,
    /// Which name the listener's keys are under, for error messages.
    pub listener_table: ListenerTable,
    pub limits: LimitsSection,
    pub timeouts: TimeoutsSection,
    pub sse: SseSection,
    pub degradation: DegradationSection,
    /// `[upstream]` or `[[upstream]]`: one upstream, or several HTTP upstreams (balanced, health
    /// checked).
    pub upstream: Vec<UpstreamSection>,
    pub tapes: TapesSection,
    pub auth: AuthSection,
    /// `[[server]]`: named MCP servers, instead of `[upstream]` (federation).
    pub servers: Vec<ServerFileSection>,
    /// `[[route]]`: the paths clients reach and the servers behind each.
    pub routes: Vec<RouteSection>,
    pub federation: FederationSection,
    /// `[cluster]`: this node's part in a cluster of gateways; absent: a gateway alone.
    pub cluster: Option<ClusterSection>,
}

/// Where the gateway's listener keys are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ListenerTable {
    #[default]
    Server,
    /// `[gateway]`, or no table in a file with `[[server]]` (where `server.*` would name one).
    Gateway,
}

impl ListenerTable {
    pub fn name(self) -> &'static str {
        match self {
            ListenerTable::Server => "server",
            ListenerTable::Gateway => "gateway",
        }
    }
}

/// The file's tables as serde reads them; `FileConfig` sorts out the `server` name.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileTables {
    server: Option<ServerTables>,
    gateway: Option<ServerSection>,
    limits: LimitsSection,
    timeouts: TimeoutsSection,
    sse: SseSection,
    degradation: DegradationSection,
    #[serde(deserialize_with = "one_or_many")]
    upstream: Vec<UpstreamSection>,
    tapes: TapesSection,
    auth: AuthSection,
    route: Vec<RouteSection>,
    federation: FederationSection,
    cluster: Option<ClusterSection>,
}

impl TryFrom<FileTables> for FileConfig {
    type Error = String;

    fn try_from(t: FileTables) -> Result<FileConfig, String> {
        let gateway = t.gateway.is_some();
        let (server, servers) = match (t.server, gateway) {
            (Some(ServerTables::Listener(_)), true) => {
                return Err("[server] and [gateway] are one table: write it once".into())
            }
            (Some(ServerTables::Listener(s)), false) => (s, Vec::new()),
            (Some(ServerTables::Servers(v)), _) => (t.gateway.unwrap_or_default(), v),
            (None, _) => (t.gateway.unwrap_or_default(), Vec::new()),
        };
        let listener_table = if gateway || !servers.is_empty() {
            ListenerTable::Gateway
        } else {
            ListenerTable::Server
        };
        Ok(FileConfig {
            server,
            listener_table,
            limits: t.limits,
            timeouts: t.timeouts,
            sse: t.sse,
            degradation: t.degradation,
            upstream: t.upstream,
            tapes: t.tapes,
            auth: t.auth,
            servers,
            routes: t.route,
            federation: t.federation,
            cluster: t.cluster,
        })
    }
}

/// What the `server` name holds: the listener's table, or the named MCP servers.
enum ServerTables {
    Listener(ServerSection),
    Servers(Vec<ServerFileSection>),
}

impl<'de> Deserialize<'de> for ServerTables {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ServerTables, D::Error> {
        d.deserialize_any(ServerTablesVisitor)
    }
}

struct ServerTablesVisitor;

impl<'de> Visitor<'de> for ServerTablesVisitor {
    type Value = ServerTables;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a table [server] or an array of tables [[server]]")
    }

    // The listener's table is read in place, so its errors keep their line.
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ServerTables, A::Error> {
        ServerSection::deserialize(de::value::MapAccessDeserializer::new(map))
            .map(ServerTables::Listener)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<ServerTables, A::Error> {
        let tables = Vec::<toml::Table>::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        tables
            .into_iter()
            .enumerate()
            .map(|(i, t)| ServerFileSection::from_table(i, t))
            .collect::<Result<Vec<_>, _>>()
            .map(ServerTables::Servers)
            .map_err(de::Error::custom)
    }
}

/// `[[server]]`: one named MCP server. Its other keys are `[upstream]`'s, but `weight`, which
/// only a replica has.
#[derive(Debug)]
pub struct ServerFileSection {
    /// `[a-z0-9_-]+`, unique (`is_server_name`).
    pub name: String,
    /// When its names are shown prefixed: "always", "never" or "conditional" (the default: only
    /// where two servers of a route offer the same name).
    pub prefix: String,
    pub tools: FilterSection,
    pub prompts: FilterSection,
    pub resources: FilterSection,
    /// `[[server.replica]]`: HTTP replicas, balanced and health checked like `[[upstream]]`;
    /// instead of `url`.
    pub replica: Vec<ReplicaSection>,
    /// The upstream keys; `kind` is "stdio" when `command` is given without it.
    pub upstream: UpstreamSection,
}

impl ServerFileSection {
    /// Takes the federation keys out of the `i`th `[[server]]` table; the rest must be
    /// `UpstreamSection`'s (so an unknown key is still an error naming it).
    fn from_table(i: usize, mut t: toml::Table) -> Result<ServerFileSection, String> {
        let name = match t.remove("name") {
            Some(toml::Value::String(s)) => s,
            Some(_) => return Err(format!("server[{i}].name: must be a string")),
            None => return Err(format!("server[{i}].name: is required")),
        };
        let at = server_table(i, &name);
        if t.contains_key("weight") {
            return Err(format!(
                "{at}.weight: is a replica's key (write it in [[server.replica]])"
            ));
        }
        if t.contains_key("command") && !t.contains_key("kind") {
            t.insert("kind".into(), "stdio".into());
        }
        Ok(ServerFileSection {
            prefix: take(&mut t, &at, "prefix")?.unwrap_or_else(|| "conditional".into()),
            tools: take(&mut t, &at, "tools")?.unwrap_or_default(),
            prompts: take(&mut t, &at, "prompts")?.unwrap_or_default(),
            resources: take(&mut t, &at, "resources")?.unwrap_or_default(),
            replica: take(&mut t, &at, "replica")?.unwrap_or_default(),
            upstream: toml::Value::Table(t)
                .try_into()
                .map_err(|e| format!("{at}: {e}"))?,
            name,
        })
    }
}

/// Whether `name` is a server name as written: `[a-z0-9_-]+`.
pub fn is_server_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// How errors name the `i`th `[[server]]`: `server.<name>`, or `server[<i>]` while its name is
/// not one.
pub fn server_table(i: usize, name: &str) -> String {
    if is_server_name(name) {
        format!("server.{name}")
    } else {
        format!("server[{i}]")
    }
}

/// Removes `key` from `t` and reads it as a `T`; an error names `<at>.<key>`.
fn take<T: DeserializeOwned>(
    t: &mut toml::Table,
    at: &str,
    key: &str,
) -> Result<Option<T>, String> {
    t.remove(key)
        .map(|v| v.try_into().map_err(|e| format!("{at}.{key}: {e}")))
        .transpose()
}

/// `[[server.replica]]`: one HTTP replica of a server, with the server's other keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaSection {
    pub url: String,
    /// Share of new sessions and stateless requests (1-1000).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// `tools`, `prompts`, `resources` of a `[[server]]`: which of its names a route offers, as
/// globs. An empty `include` lets every name in (unlike `[[auth.rules]]`' allow lists: a
/// filter narrows a server, it grants nothing).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterSection {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

/// `[[route]]`: a path clients reach and the servers behind it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub path: String,
    /// Names of `[[server]]`s, in the order their names are offered.
    pub servers: Vec<String>,
}

/// `[federation]`: how a route's servers combine.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationSection {
    pub separator: String,
    /// What a route does with a server that is down: "open" (the default: left out) or
    /// "closed" (the client's initialize fails).
    pub failure_mode: String,
    pub max_names: usize,
    pub max_list_pages: usize,
}

impl Default for FederationSection {
    fn default() -> Self {
        FederationSection {
            separator: DEFAULT_FEDERATION_SEPARATOR.into(),
            failure_mode: "open".into(),
            max_names: DEFAULT_FEDERATION_MAX_NAMES,
            max_list_pages: DEFAULT_FEDERATION_MAX_LIST_PAGES,
        }
    }
}

/// `[cluster]`: several gateways behind one load balancer, any of which continues any HTTP
/// session (`cluster`). `node_id` and `session_key_file` are required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// This node's name, unique in the cluster: 1 to 16 of `a-z`, `0-9`, `-`.
    pub node_id: String,
    /// A file holding the cluster's session key: 64 hex characters (`shardcat gen-key`).
    pub session_key_file: String,
    /// During a key rotation, the key before it: tokens it sealed still open.
    pub previous_session_key_file: Option<String>,
    /// Ids of sessions that ended on a shard (DELETE, maximum age, the upstream forgot them),
    /// kept so that the shard refuses them; the oldest are forgotten first.
    #[serde(default = "default_max_ended_ids")]
    pub max_ended_ids: usize,
    /// A sealed session unused this long is forgotten by the node (not ended upstream):
    /// another node may serve it now, and this one adopts it again if it comes back.
    #[serde(default = "default_forget_idle_ms")]
    pub forget_idle_ms: u64,
}

/// `cluster.forget_idle_ms`.
pub const DEFAULT_FORGET_IDLE_MS: u64 = 30_000;

fn default_forget_idle_ms() -> u64 {
    DEFAULT_FORGET_IDLE_MS
}

/// `cluster.max_ended_ids`: 8 bytes each, per shard.
pub const DEFAULT_MAX_ENDED_IDS: usize = 16384;

fn default_max_ended_ids() -> usize {
    DEFAULT_MAX_ENDED_IDS
}

/// `[auth]`: who may use the gateway. `mode` is "off" (the default), "oauth" (bearer JWTs
/// checked against the issuer's JWKS), "api_key" (`[[auth.api_keys]]`) or "oauth_or_api_key".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    pub mode: String,
    pub issuer: Option<String>,
    /// One audience or several: a token's `aud` must name one of them (RFC 8707).
    #[serde(deserialize_with = "string_or_list")]
    pub audience: Vec<String>,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<String>,
    /// The canonical URI of this MCP endpoint (`https://gw.example.com/mcp`).
    pub resource: Option<String>,
    pub authorization_servers: Vec<String>,
    pub scopes_supported: Vec<String>,
    /// Scopes every request must carry (else 403 insufficient_scope).
    pub required_scopes: Vec<String>,
    pub leeway_s: u64,
    pub jwks_refresh_ms: u64,
    pub jwks_min_refresh_ms: u64,
    pub jwks_fetch_timeout_ms: u64,
    pub max_jwks_bytes: usize,
    pub max_jwks_keys: usize,
    pub token_cache_entries: usize,
    pub jwks_refresh_queue_depth: usize,
    pub max_credential_bytes: usize,
    /// A header naming the authenticated subject to the upstream; absent: none is sent.
    pub forward_subject_header: Option<String>,
    pub api_keys: Vec<ApiKeySection>,
    /// `[[auth.rules]]`: what each subject may use (`authz`); none: everything.
    pub rules: Vec<crate::authz::RuleFile>,
    /// What a subject gets where no rule's allow list covers a name: "deny" or "allow".
    pub rules_default: crate::authz::Policy,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            mode: "off".into(),
            issuer: None,
            audience: Vec::new(),
            jwks_url: None,
            jwks_file: None,
            resource: None,
            authorization_servers: Vec::new(),
            scopes_supported: Vec::new(),
            required_scopes: Vec::new(),
            leeway_s: DEFAULT_AUTH_LEEWAY_S,
            jwks_refresh_ms: DEFAULT_JWKS_REFRESH_MS,
            jwks_min_refresh_ms: DEFAULT_JWKS_MIN_REFRESH_MS,
            jwks_fetch_timeout_ms: DEFAULT_JWKS_FETCH_TIMEOUT_MS,
            max_jwks_bytes: DEFAULT_MAX_JWKS_BYTES,
            max_jwks_keys: DEFAULT_MAX_JWKS_KEYS,
            token_cache_entries: DEFAULT_TOKEN_CACHE_ENTRIES,
            jwks_refresh_queue_depth: DEFAULT_JWKS_REFRESH_QUEUE_DEPTH,
            max_credential_bytes: DEFAULT_MAX_CREDENTIAL_BYTES,
            forward_subject_header: None,
            api_keys: Vec::new(),
            rules: Vec::new(),
            rules_default: crate::authz::Policy::default(),
        }
    }
}

/// `[[auth.api_keys]]`: one API key, known by the SHA-256 of its text (`shardcat hash-key`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySection {
    /// The subject the key authenticates as (the client key for per-client limits).
    pub name: String,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// RFC 3339; absent: never.
    pub expires: Option<String>,
}

/// Accepts a string or a list of strings.
fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// `[tapes]`: recording. Off unless `dir` is set (or `--tapes DIR`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TapesSection {
    pub dir: String,
    /// "drop" (the default: a full channel drops the frame and counts it) or "block".
    pub overflow: String,
    pub channel_depth: usize,
    pub batch_max_frames: usize,
    pub batch_max_delay_ms: u64,
    pub segment_max_bytes: u64,
    pub segment_max_sessions: usize,
    /// "never", "interval" (the default) or "always".
    pub fsync: String,
    pub fsync_interval_ms: u64,
    /// JSON pointers whose values are written as "***".
    pub mask: Vec<String>,
    pub io_retry_max: u32,
    pub io_retry_backoff_ms: u64,
    pub index_interval_ms: u64,
    /// Core to pin the persistence thread to; absent: not pinned.
    pub core: Option<usize>,
}

impl Default for TapesSection {
    fn default() -> Self {
        use tapes as t;
        TapesSection {
            dir: String::new(),
            overflow: "drop".into(),
            channel_depth: t::DEFAULT_CHANNEL_DEPTH,
            batch_max_frames: t::DEFAULT_BATCH_MAX_FRAMES,
            batch_max_delay_ms: t::DEFAULT_BATCH_MAX_DELAY_MS,
            segment_max_bytes: t::DEFAULT_SEGMENT_MAX_BYTES,
            segment_max_sessions: t::DEFAULT_SEGMENT_MAX_SESSIONS,
            fsync: "interval".into(),
            fsync_interval_ms: t::DEFAULT_FSYNC_INTERVAL_MS,
            mask: Vec::new(),
            io_retry_max: t::DEFAULT_IO_RETRY_MAX,
            io_retry_backoff_ms: t::DEFAULT_IO_RETRY_BACKOFF_MS,
            index_interval_ms: t::DEFAULT_INDEX_INTERVAL_MS,
            core: None,
        }
    }
}

/// Accepts a single table or an array of tables.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<UpstreamSection>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<UpstreamSection>),
        One(Box<UpstreamSection>),
    }
    // Untagged errors say only "did not match": decode again as a table for a precise message.
    let value = toml::Value::deserialize(d)?;
    match value {
        toml::Value::Array(_) => {
            Vec::<UpstreamSection>::deserialize(value).map_err(serde::de::Error::custom)
        }
        other => match OneOrMany::deserialize(other.clone()) {
            Ok(OneOrMany::One(u)) => Ok(vec![*u]),
            Ok(OneOrMany::Many(v)) => Ok(v),
            Err(_) => UpstreamSection::deserialize(other)
                .map(|u| vec![u])
                .map_err(serde::de::Error::custom),
        },
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub listen: String,
    pub admin: String,
    /// 0: one shard per available core.
    pub shards: usize,
    pub driver: String,
    pub listen_backlog: u32,
    /// Empty: loopback origins when listening on loopback, none otherwise.
    pub allowed_origins: Vec<String>,
    /// Empty: any Host naming the listen address or a loopback name when on loopback.
    pub allowed_hosts: Vec<String>,
    /// Every client connection starts with a PROXY protocol header (v1 or v2) naming the
    /// client (a balancer's `send-proxy-v2`); one without is refused.
    pub proxy_protocol: bool,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: DEFAULT_LISTEN.into(),
            admin: DEFAULT_ADMIN.into(),
            shards: 0,
            driver: "auto".into(),
            listen_backlog: DEFAULT_LISTEN_BACKLOG,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            proxy_protocol: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
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
    pub max_sessions_per_client: u32,
    /// Token bucket per client (IP): requests a second, and burst; 0 is off.
    pub client_requests_per_s: u32,
    pub client_burst: u32,
    /// Token bucket per session; 0 is off.
    pub session_requests_per_s: u32,
    pub session_burst: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_pending_events: DEFAULT_MAX_PENDING_EVENTS,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            handoff_queue_depth: DEFAULT_HANDOFF_QUEUE_DEPTH,
            max_linger_bytes: DEFAULT_MAX_LINGER_BYTES,
            retry_after_s: DEFAULT_RETRY_AFTER_S,
            max_sessions_per_client: DEFAULT_MAX_SESSIONS_PER_CLIENT,
            client_requests_per_s: 0,
            client_burst: 0,
            session_requests_per_s: 0,
            session_burst: 0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsSection {
    pub client_head_timeout_ms: u64,
    pub keepalive_idle_timeout_ms: u64,
    pub upstream_connect_timeout_ms: u64,
    pub upstream_request_timeout_ms: u64,
    pub sse_keepalive_ms: u64,
    pub sse_idle_timeout_ms: u64,
    pub era_probe_timeout_ms: u64,
    pub linger_ms: u64,
    pub session_idle_timeout_ms: u64,
    pub session_max_age_ms: u64,
    pub session_evict_idle_ms: u64,
    pub drain_timeout_ms: u64,
}

impl Default for TimeoutsSection {
    fn default() -> Self {
        TimeoutsSection {
            client_head_timeout_ms: DEFAULT_CLIENT_HEAD_TIMEOUT_MS,
            keepalive_idle_timeout_ms: DEFAULT_KEEPALIVE_IDLE_TIMEOUT_MS,
            upstream_connect_timeout_ms: DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS,
            upstream_request_timeout_ms: DEFAULT_UPSTREAM_REQUEST_TIMEOUT_MS,
            sse_keepalive_ms: DEFAULT_SSE_KEEPALIVE_MS,
            sse_idle_timeout_ms: DEFAULT_SSE_IDLE_TIMEOUT_MS,
            era_probe_timeout_ms: DEFAULT_ERA_PROBE_TIMEOUT_MS,
            linger_ms: DEFAULT_LINGER_MS,
            session_idle_timeout_ms: DEFAULT_SESSION_IDLE_TIMEOUT_MS,
            session_max_age_ms: DEFAULT_SESSION_MAX_AGE_MS,
            session_evict_idle_ms: DEFAULT_SESSION_EVICT_IDLE_MS,
            drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT_MS,
        }
    }
}

/// `[sse]`: resumable SSE streams of sessions (replay buffers, upstream reconnection).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseSection {
    pub replay_max_events: usize,
    pub replay_max_age_ms: u64,
    pub replay_max_bytes: usize,
    pub resume_window_ms: u64,
    pub max_streams_per_session: usize,
    pub reconnect_base_ms: u64,
    pub reconnect_max_ms: u64,
    pub reconnect_max_attempts: u32,
}

impl Default for SseSection {
    fn default() -> Self {
        SseSection {
            replay_max_events: DEFAULT_SSE_REPLAY_MAX_EVENTS,
            replay_max_age_ms: DEFAULT_SSE_REPLAY_MAX_AGE_MS,
            replay_max_bytes: DEFAULT_SSE_REPLAY_MAX_BYTES,
            resume_window_ms: DEFAULT_SSE_RESUME_WINDOW_MS,
            max_streams_per_session: DEFAULT_SSE_MAX_STREAMS_PER_SESSION,
            reconnect_base_ms: DEFAULT_SSE_RECONNECT_BASE_MS,
            reconnect_max_ms: DEFAULT_SSE_RECONNECT_MAX_MS,
            reconnect_max_attempts: DEFAULT_SSE_RECONNECT_MAX_ATTEMPTS,
        }
    }
}

/// `[degradation]`: levels of service as the named bounds fill (see `degrade`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DegradationSection {
    pub recording_shed_at: f64,
    pub sessions_rejected_at: f64,
    pub protective_at: f64,
    pub hysteresis: f64,
    pub check_interval_ms: u64,
    pub max_memory_bytes: u64,
    pub max_pending_events: u64,
}

impl Default for DegradationSection {
    fn default() -> Self {
        DegradationSection {
            recording_shed_at: DEFAULT_RECORDING_SHED_AT,
            sessions_rejected_at: DEFAULT_SESSIONS_REJECTED_AT,
            protective_at: DEFAULT_PROTECTIVE_AT,
            hysteresis: DEFAULT_DEGRADATION_HYSTERESIS,
            check_interval_ms: DEFAULT_DEGRADATION_CHECK_INTERVAL_MS,
            max_memory_bytes: DEFAULT_MAX_MEMORY_BYTES,
            max_pending_events: DEFAULT_MAX_PENDING_EVENTS_TOTAL,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSection {
    /// "http" (the default), "stdio", or "sse" (a legacy HTTP+SSE server at `url`, served as
    /// message peers with the stdio keys).
    pub kind: String,
    /// Share of new sessions and stateless requests (several http upstreams).
    pub weight: u32,
    /// How requests are spread over several http upstreams: "round_robin" (the default),
    /// "least_connections" or "sticky" (by client address). Set on the first upstream.
    pub strategy: String,
    /// http: `http://host:port/path`. Empty: the built-in demo server.
    pub url: String,
    /// http: sent upstream as `Authorization`; the client's own credentials never are.
    pub authorization: Option<String>,
    pub pool_max_idle: usize,
    pub pool_max_connections: usize,
    pub pool_idle_timeout_ms: u64,
    /// stdio: the program to start, its arguments, extra environment and working directory.
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub prewarm: usize,
    pub max_processes: usize,
    pub stateless_children: usize,
    pub kill_grace_ms: u64,
    pub stderr_lines_per_s: u32,
    pub stdin_queue_depth: usize,
    /// http: active probe: "mcp" (initialize, ping, DELETE), "http" (GET `health_path`),
    /// "off", or "auto" (the default: mcp with several upstreams, off with one).
    pub health_check: String,
    /// http: the path a "http" probe GETs (default: the upstream's path).
    pub health_path: Option<String>,
    pub health_interval_ms: u64,
    pub health_timeout_ms: u64,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub breaker_failures: u32,
    pub breaker_open_ms: u64,
    pub breaker_half_open_requests: u32,
}

impl Default for UpstreamSection {
    fn default() -> Self {
        UpstreamSection {
            kind: "http".into(),
            weight: 1,
            strategy: "round_robin".into(),
            url: String::new(),
            authorization: None,
            pool_max_idle: DEFAULT_POOL_MAX_IDLE,
            pool_max_connections: DEFAULT_POOL_MAX_CONNECTIONS,
            pool_idle_timeout_ms: DEFAULT_POOL_IDLE_TIMEOUT_MS,
            command: String::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            prewarm: DEFAULT_PREWARM,
            max_processes: DEFAULT_MAX_PROCESSES,
            stateless_children: DEFAULT_STATELESS_CHILDREN,
            health_check: "auto".into(),
            health_path: None,
            health_interval_ms: DEFAULT_HEALTH_INTERVAL_MS,
            health_timeout_ms: DEFAULT_HEALTH_TIMEOUT_MS,
            healthy_threshold: DEFAULT_HEALTHY_THRESHOLD,
            unhealthy_threshold: DEFAULT_UNHEALTHY_THRESHOLD,
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            breaker_open_ms: DEFAULT_BREAKER_OPEN_MS,
            breaker_half_open_requests: DEFAULT_BREAKER_HALF_OPEN_REQUESTS,
            kill_grace_ms: DEFAULT_KILL_GRACE_MS,
            stderr_lines_per_s: DEFAULT_STDERR_LINES_PER_S,
            stdin_queue_depth: DEFAULT_STDIN_QUEUE_DEPTH,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let e = FileConfig::from_toml("[limits]\nmax_conections = 5\n").unwrap_err();
        assert!(e.0.contains("max_conections"), "{e}");
    }

    /// The federated config the resolved-config tests read too.
    use crate::config::federation::tests::THREE as FEDERATED;

    #[test]
    fn servers_routes_and_federation_are_read() {
        let f = FileConfig::from_toml(FEDERATED).unwrap();
        assert_eq!(f.listener_table, ListenerTable::Gateway);
        assert_eq!(f.server.listen, "127.0.0.1:7000");
        assert!(f.upstream.is_empty());
        let names: Vec<_> = f.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["github", "search", "files"]);
        let [github, search, files] = &f.servers[..] else {
            panic!("three servers")
        };
        assert_eq!(github.prefix, "always");
        assert_eq!(github.tools.include, ["search_*", "get_*"]);
        assert_eq!(github.tools.exclude, ["get_secret"]);
        assert_eq!(github.upstream.authorization.as_deref(), Some("Bearer t"));
        assert_eq!(search.prefix, "conditional");
        assert_eq!(search.upstream.strategy, "least_connections");
        assert_eq!(search.upstream.pool_max_idle, 16);
        let replicas: Vec<_> = search
            .replica
            .iter()
            .map(|r| (r.url.as_str(), r.weight))
            .collect();
        assert_eq!(
            replicas,
            [
                ("http://127.0.0.1:9002/mcp", 3),
                ("http://127.0.0.1:9003/other", 1)
            ]
        );
        // `command` without `kind` is a stdio server.
        assert_eq!(files.upstream.kind, "stdio");
        assert_eq!(files.upstream.args, ["--root", "/srv"]);
        assert_eq!(files.upstream.env.get("K").map(String::as_str), Some("v"));
        assert_eq!(files.prompts.exclude, ["*"]);
        assert!(files.tools.include.is_empty() && files.resources.exclude.is_empty());
        let routes: Vec<_> = f
            .routes
            .iter()
            .map(|r| (r.path.as_str(), r.servers.join(",")))
            .collect();
        assert_eq!(
            routes,
            [
                ("/mcp", "github,search".to_string()),
                ("/mcp/dev", "files,github".to_string())
            ]
        );
        let fed = &f.federation;
        assert_eq!(
            (fed.separator.as_str(), fed.failure_mode.as_str()),
            (".", "closed")
        );
        assert_eq!((fed.max_names, fed.max_list_pages), (1000, 4));
    }

    #[test]
    fn federation_defaults() {
        let f =
            FileConfig::from_toml("[[server]]\nname = \"a\"\nurl = \"http://h/mcp\"\n").unwrap();
        assert_eq!(f.listener_table, ListenerTable::Gateway);
        assert_eq!(f.servers[0].prefix, "conditional");
        assert_eq!(f.servers[0].upstream.kind, "http");
        assert!(f.routes.is_empty());
        let fed = &f.federation;
        assert_eq!(fed.separator, DEFAULT_FEDERATION_SEPARATOR);
        assert_eq!(fed.failure_mode, "open");
        assert_eq!(fed.max_names, DEFAULT_FEDERATION_MAX_NAMES);
        assert_eq!(fed.max_list_pages, DEFAULT_FEDERATION_MAX_LIST_PAGES);
        // Without [[server]], the listener is [server] as it always was.
        let f = FileConfig::from_toml("[server]\nlisten = \"127.0.0.1:1\"\n").unwrap();
        assert_eq!(f.listener_table, ListenerTable::Server);
        assert_eq!(f.server.listen, "127.0.0.1:1");
        assert!(f.servers.is_empty());
        let f = FileConfig::from_toml("[gateway]\nlisten = \"127.0.0.1:2\"\n").unwrap();
        assert_eq!(f.listener_table, ListenerTable::Gateway);
        assert_eq!(f.server.listen, "127.0.0.1:2");
    }

    #[test]
    fn federation_keys_are_checked_and_named() {
        let server = "[[server]]\nname = \"gh\"\nurl = \"http://h/mcp\"\n";
        for (extra, named) in [
            ("urll = \"x\"\n", "server.gh: unknown field `urll`"),
            ("weight = 2\n", "server.gh.weight"),
            (
                "tools = { includ = [\"a\"] }\n",
                "server.gh.tools: unknown field `includ`",
            ),
            ("prompts = [\"a\"]\n", "server.gh.prompts"),
            ("prefix = 1\n", "server.gh.prefix"),
            (
                "[[server.replica]]\nurl = \"http://h/\"\nweigth = 1\n",
                "server.gh.replica: unknown field `weigth`",
            ),
            ("[[server.replica]]\nweight = 1\n", "missing field `url`"),
            (
                "[[route]]\npath = \"/mcp\"\nserver = [\"gh\"]\n",
                "unknown field `server`",
            ),
            (
                "[federation]\nseparater = \".\"\n",
                "unknown field `separater`",
            ),
        ] {
            let e = FileConfig::from_toml(&format!("{server}{extra}")).unwrap_err();
            assert!(e.0.contains(named), "{extra}: {e}");
        }
        let e = FileConfig::from_toml("[[server]]\nurl = \"http://h/mcp\"\n").unwrap_err();
        assert!(e.0.contains("server[0].name: is required"), "{e}");
        let e = FileConfig::from_toml("[[server]]\nname = 7\n").unwrap_err();
        assert!(e.0.contains("server[0].name: must be a string"), "{e}");
        // An unusable name is named by its place until it is checked.
        let e = FileConfig::from_toml("[[server]]\nname = \"G H\"\nurll = 1\n").unwrap_err();
        assert!(e.0.contains("server[0]: unknown field `urll`"), "{e}");
        let e = FileConfig::from_toml("server = 3\n").unwrap_err();
        assert!(e.0.contains("[[server]]"), "{e}");
    }

    #[test]
    fn one_listener_table() {
        let e = FileConfig::from_toml("[server]\nshards = 1\n[gateway]\nshards = 2\n").unwrap_err();
        assert!(e.0.contains("[server] and [gateway]"), "{e}");
        // TOML itself refuses [server] beside [[server]] (the reason [gateway] exists); the
        // error says what to write.
        let e =
            FileConfig::from_toml("[server]\nshards = 1\n[[server]]\nname = \"a\"\n").unwrap_err();
        assert!(e.0.contains("write the listener as [gateway]"), "{e}");
        // The listener's table is read in place: its errors keep their line.
        let e = FileConfig::from_toml("\n[server]\nlisen = \"x\"\n").unwrap_err();
        assert!(e.0.contains("lisen") && e.0.contains("line 3"), "{e}");
    }
}
