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
    /// One JSON object per frame of a session (schema in TAPE_FORMAT.md).
    Export {
        dir: PathBuf,
        id: String,
        #[arg(long, default_value = "jsonl")]
        format: String,
    },
    /// Check every record; exit 1 on mid-file corruption (a torn tail alone is fine).
    Verify { dir: PathBuf },
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
