//! Tapes: recording MCP traffic on the persistence core, reading it back, and replaying it.
//!
//! One job: get every frame a shard offers onto disk without the shard ever touching a file or
//! waiting on one, and account for every frame that does not make it.
//!
//! - `start` spawns ONE persistence thread and hands out one `Recorder` per shard. A shard calls
//!   `Recorder::try_record`, which never blocks: a bounded crossbeam channel per shard, `try_send`.
//! - The thread (`writer`) batches frames by count and time, masks configured JSON pointers,
//!   encodes records (`format`), writes each batch with one write, rotates segments at a size
//!   bound, fsyncs by policy, and keeps a per-segment index (`index`) as a cache.
//! - `tools` reads tapes (`list`, `show`, `export`, `verify`); `replay` serves one as an MCP
//!   server; `cli` holds the command-line arguments of both.
//!
//! Invariants:
//! - Frames carry no HTTP headers, so Authorization and Cookie can never reach a tape.
//! - Every frame offered is exactly one of: written, dropped (full channel under `Drop`, or the
//!   thread gone), lost to I/O after bounded retries, or refused as oversize; each is counted.
//!   After `Persistence::shutdown`, `queued == written + lost_io + oversize`.
//! - Segments are append-only; a crash leaves at most a torn tail, which readers detect and skip.
//!
//! # On-disk format (version 1)
//!
//! ```text
//! DIR/segments/NNNNNNNN.tape   append-only segment, NNNNNNNN = 8-digit decimal sequence number
//! DIR/segments/NNNNNNNN.idx    JSON summary of the sessions in that segment (a cache)
//!
//! segment  = file_header record*
//! file_header (16 bytes) = magic "SHCTAPE\0" | u32 version (=1) | u32 reserved (=0)
//! record   = u32 len | u32 crc32(body) | body          (little-endian; len = body length)
//! body     = frame_header (28 bytes) | event_id bytes | payload bytes
//! frame_header =
//!   u64 session | u64 ts_us (unix µs) | u8 dir (0 c2s, 1 s2c, 2 gateway)
//!   | u8 kind (0 session_start, 1 session_end, 2 message, 3 status) | u8 flags (bit 0: sse)
//!   | u8 server | u16 status | u16 event_id_len | u32 stream
//! ```
//!
//! `server` names the federated server a frame went to or came from: its index among the
//! route's servers plus one, the names in that order being the session start's `"servers"`;
//! 0 is none (an unfederated session; an answer the gateway made itself, such as a merged
//! list, `ping` or the initialize fan-out; a message sent to every server, such as a
//! notification or `logging/setLevel`; a gateway frame). The byte was reserved and always
//! written 0 before, and readers never looked at it: version 1 stands, old tapes read as
//! naming no server, and older readers read new tapes (without the servers).
//!
//! A record whose length runs past the end of the file, or whose CRC fails with no intact record
//! after it, is a torn tail: skipped. A bad record followed by intact ones is mid-file
//! corruption: reported, and reading resumes at the next intact record.

#[cfg(feature = "cli")]
pub mod cli;
pub mod format;
pub mod index;
pub mod mask;
pub mod replay;
pub mod tools;
pub mod writer;

use std::fmt::Write as _;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::metrics::{header, Format, Kind};

// The recording settings and their bounds live with the configuration.
pub use crate::config::tapes::*;

/// Where a frame belongs: the tape session, the HTTP exchange within it, and, on a federated
/// route, the server it went to or came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tap {
    pub session: u64,
    pub stream: u32,
    /// `Frame::server`.
    pub server: Option<u8>,
}

impl Tap {
    /// The first exchange of tape session `session`.
    pub fn new(session: u64) -> Tap {
        Tap {
            session,
            stream: 1,
            server: None,
        }
    }

    /// A tap of the exchange whose frames went to or came from member `member` of the
    /// session's route (`None`: the gateway answered, or the route is not federated).
    pub fn via(self, member: Option<usize>) -> Tap {
        Tap {
            server: server_of(member),
            ..self
        }
    }
}

/// `Frame::server` for member `member` of a route (a route has at most 64 servers).
pub fn server_of(member: Option<usize>) -> Option<u8> {
    member.and_then(|m| u8::try_from(m).ok())
}

/// Which way a frame crossed the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    ClientToServer,
    ServerToClient,
    /// Emitted by the gateway itself (session start and end).
    Gateway,
}

/// What a frame records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameKind {
    /// Payload: JSON `{"upstream", "protocol_version", "client", "shard", "gateway_session"}`,
    /// and on a federated route `"servers"`: the route's server names, in route order (what
    /// `Frame::server` indexes); `gateway_session` is the id's routing prefix, never its
    /// secret part.
    SessionStart,
    /// Payload: JSON `{"reason"}`.
    SessionEnd,
    /// Payload: one JSON-RPC message, raw bytes as they crossed.
    Message {
        /// HTTP status of the response that carried it (0 on client-to-server messages).
        status: u16,
        /// Carried as one SSE event.
        sse: bool,
        /// The HTTP exchange it travelled on, numbered by the shard within the session (a POST
        /// and its response share it; a GET stream has its own); 0 when unknown.
        stream: u32,
        /// The SSE `id:` field, if any.
        event_id: Option<Bytes>,
    },
    /// An HTTP response with no JSON-RPC message (202 to a notification, 404, DELETE's 200).
    /// Payload: empty or a short non-JSON body.
    Status { status: u16, stream: u32 },
}

/// One recorded frame. Only `payload` (and an SSE event id) own heap memory, and both are
/// `Bytes`, usually slices of buffers the shard already holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub session: u64,
    /// Microseconds since the Unix epoch.
    pub ts_us: u64,
    pub dir: Dir,
    /// On a federated route, the server the frame went to or came from: its index among the
    /// route's servers (the session start's `servers`). `None`: no one server (the gateway
    /// answered, the message went to every server, or the session is not federated).
    pub server: Option<u8>,
    pub kind: FrameKind,
    pub payload: Bytes,
}

/// Counters of one shard's recorder. Only that shard writes them.
#[derive(Debug, Default)]
pub struct RecorderStats {
    pub shard: usize,
    /// Frames offered (each counted once, however many times a `Block` caller retried it).
    pub offered: AtomicU64,
    /// Frames accepted into the channel.
    pub queued: AtomicU64,
    /// Frames dropped: full channel under `Drop`, or recording already shut down.
    pub dropped: AtomicU64,
    /// Times `try_record` handed a frame back under `Block`.
    pub blocked_waits: AtomicU64,
}

/// Counters of the persistence thread.
#[derive(Debug, Default)]
pub struct PersistStats {
    pub frames_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub batches: AtomicU64,
    pub segments: AtomicU64,
    pub fsyncs: AtomicU64,
    pub io_errors: AtomicU64,
    pub io_retries: AtomicU64,
    pub frames_lost_io: AtomicU64,
    pub frames_oversize: AtomicU64,
    pub index_writes: AtomicU64,
}

/// State both sides see: set once the thread stops taking frames.
#[derive(Debug, Default)]
struct Shared {
    closed: AtomicBool,
}

/// A shard's handle on the persistence thread. Send, not shared: it lives on its shard.
pub struct Recorder {
    tx: Sender<Frame>,
    overflow: Overflow,
    stats: Arc<RecorderStats>,
    shared: Arc<Shared>,
    /// Next session id: shard (8 bits) | run (24 bits) | counter (32 bits).
    next_session: std::cell::Cell<u64>,
}

impl Recorder {
    /// Offers a frame without blocking. `Ok` means it was queued, or dropped and counted (full
    /// channel under `Drop`, or recording shut down). `Err` hands the frame back only under
    /// `Block` with a full channel: offer it again after a pause.
    pub fn try_record(&self, frame: Frame) -> Result<(), Frame> {
        if self.shared.closed.load(SeqCst) {
            self.count_dropped();
            return Ok(());
        }
        match self.tx.try_send(frame) {
            Ok(()) => {
                self.stats.offered.fetch_add(1, Relaxed);
                self.stats.queued.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(f)) if self.overflow == Overflow::Block => {
                self.stats.blocked_waits.fetch_add(1, Relaxed);
                Err(f)
            }
            Err(_) => {
                self.count_dropped();
                Ok(())
            }
        }
    }

    /// Counts a frame dropped before it reached `try_record` (a shard's own bound).
    pub fn count_dropped(&self) {
        self.stats.offered.fetch_add(1, Relaxed);
        self.stats.dropped.fetch_add(1, Relaxed);
    }

    /// Whether the channel is full right now.
    pub fn is_full(&self) -> bool {
        self.tx.is_full()
    }

    /// Whether recording has shut down (every later offer is dropped).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(SeqCst)
    }

    pub fn overflow(&self) -> Overflow {
        self.overflow
    }

    pub fn stats(&self) -> Arc<RecorderStats> {
        self.stats.clone()
    }

    /// A session id unique within the tape directory: shard, this run's first segment number
    /// and a per-shard counter.
    pub fn new_session_id(&self) -> u64 {
        let id = self.next_session.get();
        self.next_session.set(id + 1);
        id
    }
}

/// The persistence thread. `shutdown` (or drop) drains every channel, fsyncs, writes the
/// index and joins the thread.
pub struct Persistence {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<PersistStats>,
}

impl Persistence {
    pub fn stats(&self) -> Arc<PersistStats> {
        self.stats.clone()
    }

    /// Whether the thread has ended (after `shutdown`, or once every recorder was dropped and
    /// its channel drained).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Flushes everything still queued, fsyncs, writes the index, and joins the thread.
    /// Call it after the shards stopped recording: frames offered meanwhile are dropped.
    pub fn shutdown(mut self) -> Arc<PersistStats> {
        self.stop_and_join();
        self.stats.clone()
    }

    fn stop_and_join(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("tape: persistence thread panicked");
            }
        }
    }
}

impl Drop for Persistence {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Spawns the persistence thread and returns one recorder per shard.
pub fn start(cfg: TapeConfig, shards: usize) -> io::Result<(Persistence, Vec<Recorder>)> {
    start_with(cfg, shards, Box::new(writer::FileDisk::default()))
}

/// `start` with the disk injected (tests stall it or make it fail).
pub(crate) fn start_with(
    cfg: TapeConfig,
    shards: usize,
    disk: Box<dyn writer::Disk>,
) -> io::Result<(Persistence, Vec<Recorder>)> {
    cfg.validate().map_err(io::Error::other)?;
    if shards == 0 || shards > 256 {
        return Err(io::Error::other("tape: between 1 and 256 shards"));
    }
    let w = writer::Writer::open(cfg.clone(), disk)?;
    let run = u64::from(w.first_seq() & 0xff_ffff);
    let stats = w.stats();
    let shared = Arc::new(Shared::default());
    let (mut rxs, mut recorders): (Vec<Receiver<Frame>>, Vec<Recorder>) = (Vec::new(), Vec::new());
    for shard in 0..shards {
        let (tx, rx) = crossbeam_channel::bounded(cfg.channel_depth);
        rxs.push(rx);
        recorders.push(Recorder {
            tx,
            overflow: cfg.overflow,
            stats: Arc::new(RecorderStats {
                shard,
                ..RecorderStats::default()
            }),
            shared: shared.clone(),
            next_session: std::cell::Cell::new(((shard as u64) << 56) | (run << 32) | 1),
        });
    }
    let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
    let core = cfg.core;
    let thread = std::thread::Builder::new()
        .name("tape-persist".into())
        .spawn(move || {
            if let Some(core) = core {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                    log::warn!("tape: cannot pin the persistence thread to core {core}");
                }
            }
            writer::run(w, rxs, stop_rx, move || shared.closed.store(true, SeqCst));
        })?;
    Ok((
        Persistence {
            stop: Some(stop_tx),
            thread: Some(thread),
            stats,
        },
        recorders,
    ))
}

/// A counter family: (name, help, getter).
type Series<T> = (&'static str, &'static str, fn(&T) -> u64);

/// Renders the `shardcat_tape_*` families: the shards' recorder counters (one series per
/// shard, no aggregate: sum over `shard`), then the persistence thread's (no `shard` label).
pub fn render(
    recorders: &[&RecorderStats],
    persist: &PersistStats,
    format: Format,
    out: &mut String,
) {
    let per_shard: [Series<RecorderStats>; 4] = [
        (
            "shardcat_tape_frames_offered_total",
            "Frames offered to the persistence thread.",
            |s| s.offered.load(Relaxed),
        ),
        (
            "shardcat_tape_frames_queued_total",
            "Frames accepted into the shard's recording channel.",
            |s| s.queued.load(Relaxed),
        ),
        (
            "shardcat_tape_frames_dropped_total",
            "Frames dropped: channel full under overflow = drop, or recording stopped.",
            |s| s.dropped.load(Relaxed),
        ),
        (
            "shardcat_tape_blocked_waits_total",
            "Times a frame waited for room under overflow = block.",
            |s| s.blocked_waits.load(Relaxed),
        ),
    ];
    for (name, help, get) in per_shard {
        header(out, format, name, Kind::Counter, help);
        for s in recorders {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", s.shard, get(s));
        }
    }
    let series: [Series<PersistStats>; 10] = [
        (
            "shardcat_tape_frames_written_total",
            "Frames written to tape segments.",
            |s| s.frames_written.load(Relaxed),
        ),
        (
            "shardcat_tape_bytes_written_total",
            "Bytes written to tape segments.",
            |s| s.bytes_written.load(Relaxed),
        ),
        (
            "shardcat_tape_batches_total",
            "Batches written (one write each).",
            |s| s.batches.load(Relaxed),
        ),
        (
            "shardcat_tape_segments_total",
            "Tape segments opened.",
            |s| s.segments.load(Relaxed),
        ),
        (
            "shardcat_tape_fsyncs_total",
            "fsync calls on tape segments.",
            |s| s.fsyncs.load(Relaxed),
        ),
        (
            "shardcat_tape_io_errors_total",
            "Failed tape writes.",
            |s| s.io_errors.load(Relaxed),
        ),
        (
            "shardcat_tape_io_retries_total",
            "Tape writes retried after a failure.",
            |s| s.io_retries.load(Relaxed),
        ),
        (
            "shardcat_tape_frames_lost_io_total",
            "Frames lost because every write attempt of their batch failed.",
            |s| s.frames_lost_io.load(Relaxed),
        ),
        (
            "shardcat_tape_frames_oversize_total",
            "Frames too large for a tape record, not written.",
            |s| s.frames_oversize.load(Relaxed),
        ),
        (
            "shardcat_tape_index_writes_total",
            "Segment index (.idx) files written.",
            |s| s.index_writes.load(Relaxed),
        ),
    ];
    for (name, help, get) in series {
        header(out, format, name, Kind::Counter, help);
        let _ = writeln!(out, "{name} {}", get(persist));
    }
}

/// Microseconds since the Unix epoch, for `Frame::ts_us`.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
