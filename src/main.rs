//! The `shardcat` command: `serve` (the default, in front of the built-in demo server when no
//! upstream is given), `demo-upstream`, `tape` (list, show, export, verify) and `replay`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod tools;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start: the background thread (off the shards) returns
/// pages freed for a second (`dirty_decay_ms`) straight to the system (`muzzy_decay_ms:0`),
/// so memory freed after a burst of connections does not stay resident.
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

use shardcat::config::{FileConfig, Overrides};
use shardcat::demo::{self, DemoConfig};
use shardcat::{runtime, shard};

#[derive(Parser)]
#[command(
    name = "shardcat",
    version,
    about = "Thread-per-core io_uring gateway for MCP traffic"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Run the built-in demo MCP server alone.
    DemoUpstream(DemoArgs),
    /// Be the stdio MCP server a client launches, relaying to a program or a remote server.
    Forward {
        #[command(subcommand)]
        to: ForwardTo,
    },
    /// Read recorded tapes: list, show, export, verify.
    Tape(shardcat::tape::cli::TapeArgs),
    /// Serve a recorded session as an MCP server.
    Replay(shardcat::tape::cli::ReplayArgs),
    /// Print each route's tools as clients see them (after filters and prefixes): starts the
    /// gateway with the config on a loopback port and lists them as a client.
    Tools {
        /// TOML config file.
        #[arg(long)]
        config: String,
        /// Sent as the Authorization header (a gateway with [auth] on).
        #[arg(long)]
        authorization: Option<String>,
    },
    /// Read an API key on stdin; print the [[auth.api_keys]] entry (its SHA-256) to paste.
    HashKey {
        /// The subject the key authenticates as.
        #[arg(long, default_value = "client")]
        name: String,
    },
    /// Print a new cluster session key ([cluster] session_key_file): 64 hex characters.
    GenKey,
}

#[derive(Subcommand)]
enum ForwardTo {
    /// Start CMD and relay stdin and stdout byte for byte: shardcat forward stdio -- CMD ARGS
    Stdio {
        /// Record the session into tapes in this directory.
        #[arg(long)]
        tapes: Option<String>,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Reach a remote Streamable HTTP MCP server: sessions, SSE and reconnection handled here.
    Http {
        /// The server's MCP endpoint, http(s)://host[:port]/path.
        #[arg(long)]
        url: String,
        /// Sent as the Authorization header.
        #[arg(long)]
        authorization: Option<String>,
        #[arg(long, default_value_t = shardcat::config::DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS)]
        connect_timeout_ms: u64,
        #[arg(long, default_value_t = shardcat::config::DEFAULT_UPSTREAM_REQUEST_TIMEOUT_MS)]
        request_timeout_ms: u64,
        /// Record the session into tapes in this directory.
        #[arg(long)]
        tapes: Option<String>,
    },
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<String>,
    /// Upstream MCP endpoint, http://host:port/path. Default: the built-in demo server.
    #[arg(long, conflicts_with = "upstream_cmd")]
    upstream: Option<String>,
    /// A stdio MCP server to run, one process per session: "CMD ARGS" (quotes group words).
    #[arg(long)]
    upstream_cmd: Option<String>,
    /// Number of shards (default: one per available core).
    #[arg(long)]
    shards: Option<usize>,
    /// Admin address for /health and /metrics (default 127.0.0.1:9090; "off" disables).
    #[arg(long)]
    admin: Option<String>,
    /// TOML config file; flags override it.
    #[arg(long)]
    config: Option<String>,
    /// io driver: auto, uring or legacy.
    #[arg(long)]
    driver: Option<String>,
    /// Record every session into tapes in this directory (see `shardcat tape`).
    #[arg(long)]
    tapes: Option<String>,
}

#[derive(Args)]
struct DemoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: String,
    /// Interval between events on GET streams, in milliseconds.
    #[arg(long, default_value_t = demo::DEFAULT_PUSH_INTERVAL_MS)]
    push_interval_ms: u64,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let code = match cli.command {
        Some(Command::DemoUpstream(a)) => run_demo(a),
        Some(Command::Serve(a)) => run_serve(a),
        Some(Command::Forward { to }) => run_forward(to),
        Some(Command::Tape(a)) => shardcat::tape::cli::run_tape(a),
        Some(Command::Replay(a)) => shardcat::tape::cli::run_replay(a),
        Some(Command::HashKey { name }) => run_hash_key(&name),
        Some(Command::GenKey) => run_gen_key(),
        Some(Command::Tools {
            config,
            authorization,
        }) => tools::run(&config, authorization.as_deref()),
        None => run_serve(cli.serve),
    };
    std::process::exit(code);
}

/// One line a test or an operator can check: every frame offered is accounted for.
fn log_tape_totals(t: &shard::TapeStats, p: &shardcat::tape::PersistStats) {
    use std::sync::atomic::Ordering::Relaxed;
    let sum = |f: fn(&shardcat::tape::RecorderStats) -> u64| {
        t.recorders.iter().map(|r| f(r)).sum::<u64>()
    };
    log::info!(
        "tapes: offered {} queued {} dropped {} written {} lost_io {} oversize {}",
        sum(|r| r.offered.load(Relaxed)),
        sum(|r| r.queued.load(Relaxed)),
        sum(|r| r.dropped.load(Relaxed)),
        p.frames_written.load(Relaxed),
        p.frames_lost_io.load(Relaxed),
        p.frames_oversize.load(Relaxed),
    );
}

fn run_forward(to: ForwardTo) -> i32 {
    match to {
        ForwardTo::Stdio { cmd, tapes } => shardcat::forward::stdio(&cmd, tapes.as_deref()),
        ForwardTo::Http {
            url,
            authorization,
            connect_timeout_ms,
            request_timeout_ms,
            tapes,
        } => shardcat::forward::http(shardcat::forward::HttpOptions {
            url,
            authorization,
            connect_timeout: Duration::from_millis(connect_timeout_ms.max(1)),
            request_timeout: Duration::from_millis(request_timeout_ms.max(1)),
            tapes,
        }),
    }
}

/// Reads the key (one line; its line ending is not part of it) and prints its entry.
fn run_hash_key(name: &str) -> i32 {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("shardcat hash-key: cannot read the key: {e}");
        return 1;
    }
    let key = line.trim_end_matches(['\r', '\n']);
    if key.is_empty() || key.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        eprintln!("shardcat hash-key: the key must be one line of visible ASCII, no spaces");
        return 2;
    }
    print!(
        "{}",
        shardcat::auth::api_key::toml_entry(name, key.as_bytes())
    );
    0
}

fn run_gen_key() -> i32 {
    match shardcat::cluster::generate_key() {
        Ok(key) => {
            println!("{}", shardcat::cluster::key_hex(&key));
            0
        }
        Err(e) => {
            eprintln!("shardcat gen-key: no random bytes from the OS: {e}");
            1
        }
    }
}

fn run_demo(a: DemoArgs) -> i32 {
    let listener = match demo::bind(&a.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("shardcat demo-upstream: cannot listen on {}: {e}", a.listen);
            return 1;
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!("READY demo=http://{addr}/mcp");
    let _ = std::io::stdout().flush();
    let cfg = DemoConfig {
        push_interval: Duration::from_millis(a.push_interval_ms.max(1)),
        ..DemoConfig::default()
    };
    match demo::run(listener, cfg) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shardcat demo-upstream: {e}");
            1
        }
    }
}

/// Starts the built-in demo server on a loopback port of its own thread.
fn start_embedded_demo() -> std::io::Result<SocketAddr> {
    let listener = demo::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("demo-upstream".into())
        .spawn(move || {
            if let Err(e) = demo::run(listener, DemoConfig::default()) {
                log::error!("demo upstream stopped: {e}");
            }
        })?;
    Ok(addr)
}

fn run_serve(a: ServeArgs) -> i32 {
    let file = match &a.config {
        Some(path) => FileConfig::load(path),
        None => Ok(FileConfig::default()),
    };
    let file = match file {
        Ok(f) => f,
        Err(e) => {
            eprintln!("shardcat: {e}");
            return 2;
        }
    };
    let overrides = Overrides {
        listen: a.listen,
        upstream: a.upstream,
        upstream_cmd: a.upstream_cmd,
        tapes: a.tapes,
        shards: a.shards,
        admin: a.admin,
        driver: a.driver,
    };
    let needs_demo = file.needs_demo(&overrides);
    let demo_addr = if needs_demo {
        match start_embedded_demo() {
            Ok(addr) => Some(addr),
            Err(e) => {
                eprintln!("shardcat: cannot start the built-in demo server: {e}");
                return 1;
            }
        }
    } else {
        None
    };
    let config = match file.resolve(&overrides, demo_addr) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shardcat: {e}");
            return 2;
        }
    };
    serve(config, demo_addr.is_some())
}

/// The shards' listeners, the admin listener and the signal handlers; `None` (said on
/// stderr) when one cannot be had.
#[allow(clippy::type_complexity)]
fn open_sockets(
    config: &shardcat::config::Config,
) -> Option<(
    Vec<std::net::TcpListener>,
    Option<std::net::TcpListener>,
    signal_hook::iterator::Signals,
)> {
    let listeners = runtime::bind_listeners(config)
        .inspect_err(|e| eprintln!("shardcat: cannot listen on {}: {e}", config.listen))
        .ok()?;
    let admin = config
        .admin
        .map(std::net::TcpListener::bind)
        .transpose()
        .inspect_err(|e| eprintln!("shardcat: cannot listen on admin address: {e}"))
        .ok()?;
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .inspect_err(|e| eprintln!("shardcat: cannot install signal handlers: {e}"))
    .ok()?;
    Some((listeners, admin, signals))
}

/// Starts the persistence core when recording (on the first core without a shard, when
/// there is one). `Err` (said on stderr) when the tape directory cannot be used.
fn start_recording(
    config: &shardcat::config::Config,
) -> Result<
    (
        Option<shardcat::tape::Persistence>,
        Vec<shardcat::tape::Recorder>,
    ),
    (),
> {
    let Some(mut t) = config.tapes.clone() else {
        return Ok((None, Vec::new()));
    };
    let cores = core_affinity::get_core_ids().map_or(0, |c| c.len());
    if t.core.is_none() && config.shards < cores {
        t.core = Some(config.shards);
    }
    let dir = t.dir.display().to_string();
    match shardcat::tape::start(t, config.shards) {
        Ok((p, r)) => {
            log::info!("recording tapes into {dir}");
            Ok((Some(p), r))
        }
        Err(e) => {
            eprintln!("shardcat: cannot record into {dir}: {e}");
            Err(())
        }
    }
}

/// Drains after the first signal (a second one exits at once): the shards finish, then the
/// monitor, then the persistence core flushes what the shards offered.
fn drain(
    shared: std::sync::Arc<shard::Shared>,
    mut signals: signal_hook::iterator::Signals,
    (handles, monitor): (
        Vec<std::thread::JoinHandle<()>>,
        std::io::Result<std::thread::JoinHandle<()>>,
    ),
    (persistence, jwks): (
        Option<shardcat::tape::Persistence>,
        Option<shardcat::auth::jwks::JwksThread>,
    ),
) {
    shard::begin_shutdown(&shared);
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            log::warn!("second signal: exiting without finishing the drain");
            std::process::exit(1);
        }
    });
    for h in handles {
        let _ = h.join();
    }
    // The monitor stops once the gateway drains (within one check interval).
    if let Ok(m) = monitor {
        let _ = m.join();
    }
    if let Some(j) = jwks {
        j.stop();
    }
    if let Some(p) = persistence {
        // The shards are done: everything they offered is flushed before exit.
        let stats = p.shutdown();
        if let Some(t) = &shared.tape {
            log_tape_totals(t, &stats);
        }
    }
}

fn serve(config: shardcat::config::Config, demo: bool) -> i32 {
    let Some((listeners, admin, mut signals)) = open_sockets(&config) else {
        return 1;
    };
    let listen = listeners[0]
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let admin_addr = admin
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map_or("off".to_string(), |a| a.to_string());
    let upstream = config.upstream.describe();
    let shards = config.shards;
    let Ok((persistence, recorders)) = start_recording(&config) else {
        return 1;
    };
    let tape_stats = persistence.as_ref().map(|p| shard::TapeStats {
        recorders: recorders.iter().map(|r| r.stats()).collect(),
        persist: p.stats(),
    });
    let (auth, jwks) = match shardcat::auth::Auth::start(config.auth.clone()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("shardcat: cannot start the JWKS fetcher: {e}");
            return 1;
        }
    };
    let (shared, rxs) = shard::shared(config, tape_stats, auth);
    let monitor = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("degrade".into())
            .spawn(move || shardcat::degrade::monitor(shared))
    };
    if let Some(l) = admin {
        let shared = shared.clone();
        let _ = std::thread::Builder::new()
            .name("admin".into())
            .spawn(move || shardcat::admin::serve(l, shared));
    }
    let handles = match runtime::spawn_shards(shared.clone(), listeners, rxs, recorders) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("shardcat: cannot start shards: {e}");
            return 1;
        }
    };
    let origin = if demo {
        "built-in demo server"
    } else {
        "upstream"
    };
    log::info!("shardcat listening on http://{listen}/mcp with {shards} shards; {origin} at {upstream}; admin on {admin_addr}");
    if demo {
        println!("Try it:\n  curl -s http://{listen}/mcp -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' -H 'mcp-protocol-version: 2026-07-28' -H 'mcp-method: tools/call' -H 'mcp-name: echo' -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"text\":\"hello\"}},\"_meta\":{{\"io.modelcontextprotocol/protocolVersion\":\"2026-07-28\",\"io.modelcontextprotocol/clientCapabilities\":{{}}}}}}}}'");
    }
    println!("READY listen={listen} admin={admin_addr}");
    let _ = std::io::stdout().flush();
    if let Some(sig) = signals.forever().next() {
        log::info!("signal {sig}: draining");
    }
    drain(shared, signals, (handles, monitor), (persistence, jwks));
    log::info!("shardcat stopped");
    0
}
