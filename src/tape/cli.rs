//! The `shardcat tape ...` and `shardcat replay ...` commands: their arguments and what they run.
//! `main.rs` only routes to `run_tape` and `run_replay`.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::{index, replay, tools};

/// Read recorded tapes.
#[derive(Args, Debug)]
pub struct TapeArgs {
    #[command(subcommand)]
    pub command: TapeCommand,
}

#[derive(Subcommand, Debug)]
pub enum TapeCommand {
    /// Sessions with start and end times, message counts and upstream.
    List { dir: PathBuf },
    /// A readable timeline of one session.
    Show {
        dir: PathBuf,
        /// Session id as printed by `list`.
        id: String,
        /// Characters of payload shown per line (0: all).
        #[arg(long, default_value_t = 120)]
        width: usize,
    },
    /// One JSON object per frame of a session (schema in the README, section Tapes).
    Export {
        dir: PathBuf,
        id: String,
        #[arg(long, default_value = "jsonl")]
        format: String,
    },
    /// Check every record; exit 1 on mid-file corruption (a torn tail alone is fine).
    Verify { dir: PathBuf },
    /// Record synthetic sessions as fast as the persistence thread takes them (crash tests and
    /// throughput runs). Stops after --frames (0: never) or at SIGTERM/SIGINT, then shuts down
    /// cleanly and prints its counters on stderr.
    #[command(hide = true)]
    Load {
        dir: PathBuf,
        #[arg(long, default_value_t = 0)]
        frames: u64,
        #[arg(long, default_value_t = 1)]
        shards: usize,
    },
}

/// Serve a recorded session as an MCP server.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A tape directory, or a `.jsonl` file made by `tape export`.
    pub source: PathBuf,
    /// Session id (needed when the directory holds more than one session).
    pub id: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: String,
    /// Send SSE events with their recorded delays.
    #[arg(long)]
    pub timing: bool,
}

pub fn run_tape(a: TapeArgs) -> i32 {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let res = match a.command {
        TapeCommand::List { dir } => tools::list(&dir, &mut out).map(|()| 0),
        TapeCommand::Show { dir, id, width } => match tools::parse_id(&id) {
            Ok(id) => tools::show(&dir, id, width, &mut out).map(|()| 0),
            Err(e) => Err(std::io::Error::other(e)),
        },
        TapeCommand::Export { dir, id, format } => export(&dir, &id, &format, &mut out),
        TapeCommand::Verify { dir } => tools::verify(&dir).and_then(|v| {
            tools::render_verify(&v, &mut out)?;
            Ok(i32::from(v.has_corruption()))
        }),
        TapeCommand::Load {
            dir,
            frames,
            shards,
        } => load_run(&dir, frames, shards),
    };
    let flushed = out.flush();
    match (res, flushed) {
        (Ok(code), Ok(())) => code,
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("shardcat tape: {e}");
            2
        }
    }
}

fn export(dir: &Path, id: &str, format: &str, out: &mut dyn Write) -> std::io::Result<i32> {
    if format != "jsonl" {
        return Err(std::io::Error::other(format!(
            "unknown format {format:?} (only jsonl)"
        )));
    }
    let id = tools::parse_id(id).map_err(std::io::Error::other)?;
    tools::export_jsonl(dir, id, out).map(|()| 0)
}

/// `tape load`: `shards` producer threads, each recording 20-message sessions under the
/// `block` policy until `frames` in all (0: until a signal).
fn load_run(dir: &Path, frames: u64, shards: usize) -> std::io::Result<i32> {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let mut cfg = super::TapeConfig::new(dir);
    cfg.overflow = super::Overflow::Block;
    let (p, recs) = super::start(cfg, shards.max(1))?;
    let stats: Vec<_> = recs.iter().map(super::Recorder::stats).collect();
    println!("READY load={}", dir.display());
    let _ = std::io::stdout().flush();
    let per = frames.div_ceil(shards.max(1) as u64);
    let producers: Vec<_> = recs
        .into_iter()
        .map(|r| {
            let stop = stop.clone();
            std::thread::spawn(move || load_produce(&r, per, &stop))
        })
        .collect();
    for t in producers {
        let _ = t.join();
    }
    let ps = p.shutdown();
    let sum = |f: fn(&super::RecorderStats) -> u64| stats.iter().map(|s| f(s)).sum::<u64>();
    eprintln!(
        "tape load: offered={} queued={} dropped={} written={} lost_io={}",
        sum(|s| s.offered.load(Relaxed)),
        sum(|s| s.queued.load(Relaxed)),
        sum(|s| s.dropped.load(Relaxed)),
        ps.frames_written.load(Relaxed),
        ps.frames_lost_io.load(Relaxed)
    );
    Ok(0)
}

fn load_produce(rec: &super::Recorder, frames: u64, stop: &std::sync::atomic::AtomicBool) {
    use super::{Dir, Frame, FrameKind};
    let payload = bytes::Bytes::from_static(
        br#"{"jsonrpc":"2.0","id":4711,"result":{"content":[{"type":"text","text":"ok"}],"isError":false}}"#,
    );
    let mut n = 0u64;
    let mut session = rec.new_session_id();
    while (frames == 0 || n < frames) && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if n % 20 == 0 {
            session = rec.new_session_id();
        }
        let mut f = Frame {
            server: None,
            session,
            ts_us: super::now_us(),
            dir: Dir::ServerToClient,
            kind: FrameKind::Message {
                status: 200,
                sse: false,
                stream: (n % 20) as u32,
                event_id: None,
            },
            payload: payload.clone(),
        };
        while let Err(back) = rec.try_record(f) {
            f = back;
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        n += 1;
    }
}

/// The frames `replay` serves: an export file, or one session of a tape directory.
fn load(a: &ReplayArgs) -> Result<Vec<super::Frame>, String> {
    if a.source.is_file() {
        let text = std::fs::read_to_string(&a.source).map_err(|e| e.to_string())?;
        return tools::frames_from_jsonl(&text);
    }
    let id = match &a.id {
        Some(id) => tools::parse_id(id)?,
        None => {
            let all = index::sessions(&a.source).map_err(|e| e.to_string())?;
            match all.as_slice() {
                [one] => one.session,
                _ => return Err(format!("{} sessions in the tape: name one", all.len())),
            }
        }
    };
    tools::session_frames(&a.source, id).map_err(|e| e.to_string())
}

pub fn run_replay(a: ReplayArgs) -> i32 {
    let frames = match load(&a) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("shardcat replay: {e}");
            return 2;
        }
    };
    let script = replay::Script::from_frames(&frames);
    let listener = match std::net::TcpListener::bind(&a.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("shardcat replay: cannot listen on {}: {e}", a.listen);
            return 1;
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    log::info!(
        "replaying {} recorded exchanges from {}",
        script.exchanges.len(),
        a.source.display()
    );
    println!("READY replay=http://{addr}/mcp");
    let _ = std::io::stdout().flush();
    match replay::run(listener, script, a.timing) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shardcat replay: {e}");
            1
        }
    }
}
