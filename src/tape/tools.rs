//! Reading tapes back: `list` (sessions), `show` (a readable timeline), `export` (JSON lines in
//! the schema in the README, section Tapes, which `replay` also reads), and `verify` (integrity report).
//!
//! Every tool works from the segments alone; the index only saves `list` a scan.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::Value;

use super::format::{self, ScanReport};
use super::index::{self, SessionSummary};
use super::{Dir, Frame, FrameKind};

/// Parses a session id as printed by `list` (hex, leading zeros optional).
pub fn parse_id(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s.trim(), 16).map_err(|_| format!("not a session id: {s:?}"))
}

/// The frames of one session, in recorded order, from every segment that holds it.
pub fn session_frames(dir: &Path, session: u64) -> io::Result<Vec<Frame>> {
    let key = index::session_key(session);
    let mut frames = Vec::new();
    for seq in format::list_segments(dir)? {
        if !index::load_or_scan(dir, seq)?.sessions.contains_key(&key) {
            continue;
        }
        format::scan_file(&format::segment_path(dir, seq), |_, f| {
            if f.session == session {
                frames.push(f);
            }
        })?;
    }
    if frames.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no session {key} in {}", dir.display()),
        ));
    }
    Ok(frames)
}

/// `2026-11-22T08:40:00.123Z` from Unix microseconds.
pub fn fmt_utc(us: u64) -> String {
    let secs = us / 1_000_000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        us / 1000 % 1000
    )
}

/// `list`: one line per session.
pub fn list(dir: &Path, out: &mut dyn Write) -> io::Result<()> {
    let sessions = index::sessions(dir)?;
    writeln!(
        out,
        "{:<16}  {:<24}  {:<24}  {:>6}  {:>8}  {:<6}  UPSTREAM",
        "SESSION", "START", "END", "MSGS", "SEGMENTS", "STATE"
    )?;
    for s in &sessions {
        writeln!(out, "{}", list_line(s))?;
    }
    writeln!(out, "{} sessions", sessions.len())
}

fn list_line(s: &SessionSummary) -> String {
    let e = &s.entry;
    let segs = s
        .segments
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "{:016x}  {:<24}  {:<24}  {:>6}  {:>8}  {:<6}  {}",
        s.session,
        fmt_utc(e.first_us),
        fmt_utc(e.last_us),
        e.messages,
        segs,
        if e.ended { "ended" } else { "open" },
        e.upstream.as_deref().unwrap_or("-")
    )
}

/// The server names a federated session's start frame lists (route order: what
/// `Frame::server` indexes); empty when there is none.
pub fn servers(frames: &[Frame]) -> Vec<String> {
    let start = frames
        .iter()
        .find(|f| f.kind == FrameKind::SessionStart && f.dir == Dir::Gateway);
    let names = start.and_then(|f| {
        let v: Value = serde_json::from_slice(&f.payload).ok()?;
        let names = v.get("servers")?.as_array()?.iter();
        Some(
            names
                .map(|n| n.as_str().unwrap_or("").to_string())
                .collect(),
        )
    });
    names.unwrap_or_default()
}

/// The name of the server a frame names, from the session's `servers`; `#N` (its index) when
/// the tape does not name it (the start frame is missing).
pub fn server_name(server: Option<u8>, servers: &[String]) -> Option<String> {
    let m = server?;
    Some(match servers.get(usize::from(m)) {
        Some(name) => name.clone(),
        None => format!("#{m}"),
    })
}

/// `show`: a timeline with relative milliseconds, an arrow for the direction, what the message
/// is (and `@server` on a federated route), and its payload cut to `width` characters (0:
/// whole).
pub fn show(dir: &Path, session: u64, width: usize, out: &mut dyn Write) -> io::Result<()> {
    let frames = session_frames(dir, session)?;
    let names = servers(&frames);
    let t0 = frames.iter().map(|f| f.ts_us).min().unwrap_or(0);
    writeln!(out, "session {session:016x}, started {}", fmt_utc(t0))?;
    for f in &frames {
        let rel = (f.ts_us.saturating_sub(t0)) as f64 / 1000.0;
        let arrow = match f.dir {
            Dir::ClientToServer => "->",
            Dir::ServerToClient => "<-",
            Dir::Gateway => "**",
        };
        let text = String::from_utf8_lossy(&f.payload);
        let text = truncate(text.trim(), width);
        let mut what = describe(f);
        if let Some(name) = server_name(f.server, &names) {
            let _ = write!(what, " @{name}");
        }
        writeln!(out, "{rel:>12.3} ms  {arrow}  {what:<44}  {text}")?;
    }
    Ok(())
}

fn truncate(s: &str, width: usize) -> String {
    if width == 0 || s.chars().count() <= width {
        return s.to_string();
    }
    let mut t: String = s.chars().take(width).collect();
    t.push_str("...");
    t
}

/// "request tools/call id=2", "200 sse response id=2 (error)", "session start".
fn describe(f: &Frame) -> String {
    let (status, sse, event_id) = match &f.kind {
        FrameKind::SessionStart => return "session start".into(),
        FrameKind::SessionEnd => return "session end".into(),
        FrameKind::Status { status, .. } => return format!("{status} (no message)"),
        FrameKind::Message {
            status,
            sse,
            event_id,
            ..
        } => (*status, *sse, event_id),
    };
    let mut d = String::new();
    if status != 0 {
        let _ = write!(d, "{status} ");
    }
    if sse {
        d.push_str("sse ");
    }
    if let Some(e) = event_id {
        let _ = write!(d, "event={} ", String::from_utf8_lossy(e));
    }
    let v: Value = serde_json::from_slice(&f.payload).unwrap_or(Value::Null);
    let msgs = match &v {
        Value::Array(items) => items.iter().collect(),
        _ => vec![&v],
    };
    for m in msgs {
        d.push_str(&describe_message(m));
    }
    d.trim_end().to_string()
}

fn describe_message(m: &Value) -> String {
    let method = m.get("method").and_then(Value::as_str);
    let id = m.get("id").map(Value::to_string);
    match (method, id) {
        (Some(method), Some(id)) => format!("request {method} id={id} "),
        (Some(method), None) => format!("notification {method} "),
        (None, Some(id)) if m.get("error").is_some() => {
            let code = m
                .pointer("/error/code")
                .map_or("?".into(), Value::to_string);
            format!("error response id={id} code={code} ")
        }
        (None, Some(id)) => format!("response id={id} "),
        _ => "(not JSON-RPC) ".into(),
    }
}

/// `export --format jsonl`: one JSON object per frame (schema in the README, section Tapes).
pub fn export_jsonl(dir: &Path, session: u64, out: &mut dyn Write) -> io::Result<()> {
    let frames = session_frames(dir, session)?;
    let names = servers(&frames);
    let t0 = frames.first().map_or(0, |f| f.ts_us);
    for (seq, f) in frames.iter().enumerate() {
        let line = export_line(seq, t0, f, &names).map_err(io::Error::other)?;
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

fn kind_name(k: &FrameKind) -> &'static str {
    match k {
        FrameKind::SessionStart => "session_start",
        FrameKind::SessionEnd => "session_end",
        FrameKind::Message { .. } => "message",
        FrameKind::Status { .. } => "status",
    }
}

fn dir_name(d: Dir) -> &'static str {
    match d {
        Dir::ClientToServer => "c2s",
        Dir::ServerToClient => "s2c",
        Dir::Gateway => "gateway",
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ExportLine<'a> {
    session: String,
    seq: u64,
    ts_us: u64,
    t_ms: f64,
    dir: &'a str,
    kind: &'a str,
    status: u16,
    sse: bool,
    stream: u32,
    event_id: Option<String>,
    /// The federated server's name (absent: no one server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server: Option<String>,
    /// Its index among the route's servers (`Frame::server`): what replay reads back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server_index: Option<u8>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    json: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

fn export_line(seq: usize, t0: u64, f: &Frame, servers: &[String]) -> serde_json::Result<String> {
    let (status, sse, stream, event_id) = match &f.kind {
        FrameKind::Message {
            status,
            sse,
            stream,
            event_id,
        } => (*status, *sse, *stream, event_id.as_ref()),
        FrameKind::Status { status, stream } => (*status, false, *stream, None),
        _ => (0, false, 0, None),
    };
    let raw = std::str::from_utf8(&f.payload).ok();
    let json = raw.and_then(|s| serde_json::from_str::<&RawValue>(s).ok());
    let line = ExportLine {
        session: index::session_key(f.session),
        seq: seq as u64,
        ts_us: f.ts_us,
        t_ms: f.ts_us.saturating_sub(t0) as f64 / 1000.0,
        dir: dir_name(f.dir),
        kind: kind_name(&f.kind),
        status,
        sse,
        stream,
        event_id: event_id.map(|e| String::from_utf8_lossy(e).into_owned()),
        server: server_name(f.server, servers),
        server_index: f.server,
        json,
        text: (json.is_none() && !f.payload.is_empty())
            .then(|| String::from_utf8_lossy(&f.payload).into_owned()),
    };
    serde_json::to_string(&line)
}

/// Frames back from an export (for `replay FILE.jsonl`).
pub fn frames_from_jsonl(text: &str) -> Result<Vec<Frame>, String> {
    let mut frames = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let l: ExportLine<'_> =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        let dir = match l.dir {
            "c2s" => Dir::ClientToServer,
            "s2c" => Dir::ServerToClient,
            _ => Dir::Gateway,
        };
        let kind = match l.kind {
            "session_start" => FrameKind::SessionStart,
            "session_end" => FrameKind::SessionEnd,
            "status" => FrameKind::Status {
                status: l.status,
                stream: l.stream,
            },
            _ => FrameKind::Message {
                status: l.status,
                sse: l.sse,
                stream: l.stream,
                event_id: l.event_id.map(Bytes::from),
            },
        };
        let payload = match (l.json, l.text) {
            (Some(j), _) => Bytes::copy_from_slice(j.get().as_bytes()),
            (None, Some(t)) => Bytes::from(t),
            (None, None) => Bytes::new(),
        };
        frames.push(Frame {
            server: l.server_index,
            session: parse_id(&l.session).unwrap_or(0),
            ts_us: l.ts_us,
            dir,
            kind,
            payload,
        });
    }
    Ok(frames)
}

/// Result of `verify`: each segment's scan.
#[derive(Debug, Default)]
pub struct Verify {
    pub segments: Vec<(u32, ScanReport)>,
}

impl Verify {
    /// Mid-file corruption or a bad header: exit status 1. A torn tail alone is expected after
    /// a crash and is not an error.
    pub fn has_corruption(&self) -> bool {
        self.segments
            .iter()
            .any(|(_, r)| !r.corrupt.is_empty() || r.bad_header.is_some())
    }

    pub fn records(&self) -> u64 {
        self.segments.iter().map(|(_, r)| r.records).sum()
    }
}

pub fn verify(dir: &Path) -> io::Result<Verify> {
    let mut v = Verify::default();
    for seq in format::list_segments(dir)? {
        let report = format::scan_file(&format::segment_path(dir, seq), |_, _| {})?;
        v.segments.push((seq, report));
    }
    Ok(v)
}

/// The human report of `verify`.
pub fn render_verify(v: &Verify, out: &mut dyn Write) -> io::Result<()> {
    let (mut torn, mut corrupt) = (0, 0);
    for (seq, r) in &v.segments {
        write!(
            out,
            "segment {seq:08}.tape: {} records intact, {} bytes",
            r.records, r.bytes
        )?;
        if let Some(why) = &r.bad_header {
            write!(out, "; CORRUPT header: {why}")?;
            corrupt += 1;
        }
        for c in &r.corrupt {
            write!(
                out,
                "; CORRUPT at offset {} ({} bytes skipped, reading resumed)",
                c.offset, c.bytes
            )?;
            corrupt += 1;
        }
        if let Some(t) = &r.torn_tail {
            write!(
                out,
                "; torn tail at offset {} ({} bytes) skipped",
                t.offset, t.bytes
            )?;
            torn += 1;
        }
        writeln!(out)?;
    }
    writeln!(
        out,
        "total: {} segments, {} records intact, {torn} torn tails, {corrupt} corrupt ranges: {}",
        v.segments.len(),
        v.records(),
        if corrupt > 0 { "CORRUPT" } else { "OK" }
    )
}
