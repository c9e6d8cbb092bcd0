//! The `[tapes]` settings: bounds of recording (the persistence core, `tape`) and the validated
//! recording config.

use std::path::PathBuf;

/// Frames each shard's channel holds before the overflow policy applies.
pub const DEFAULT_CHANNEL_DEPTH: usize = 65_536;
/// Most frames the persistence thread encodes into one write.
pub const DEFAULT_BATCH_MAX_FRAMES: usize = 1024;
/// Longest a frame waits in a partly filled batch.
pub const DEFAULT_BATCH_MAX_DELAY_MS: u64 = 5;
/// Size at which a segment is closed and the next one started.
pub const DEFAULT_SEGMENT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Tape sessions whose summary a segment's index holds before the segment is closed and the
/// next one started. Every stateless exchange is a tape session of its own, so without it the
/// writer's memory for the open segment's index grew with the segment's size (about 150 bytes
/// a session; 56,000 in a 64 MiB segment of stateless traffic in the soak run).
pub const DEFAULT_SEGMENT_MAX_SESSIONS: usize = 16_384;
/// Smallest segment bound accepted (smaller ones would rotate on almost every batch).
pub const MIN_SEGMENT_MAX_BYTES: u64 = 4096;
/// fsync interval of the default `Fsync::Interval` policy.
pub const DEFAULT_FSYNC_INTERVAL_MS: u64 = 1000;
/// Attempts after the first failed write before the batch is counted lost.
pub const DEFAULT_IO_RETRY_MAX: u32 = 5;
/// First backoff between write attempts; it doubles per attempt.
pub const DEFAULT_IO_RETRY_BACKOFF_MS: u64 = 2;
/// Cap on one backoff sleep.
pub const MAX_IO_RETRY_BACKOFF_MS: u64 = 1000;
/// The open segment's index is written once recording has been quiet this long (and always
/// at rotation and shutdown).
pub const DEFAULT_INDEX_INTERVAL_MS: u64 = 1000;
/// Largest payload recorded; larger frames are refused and counted (`frames_oversize`).
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;
/// Longest SSE event id kept; longer ids are cut to this length.
pub const MAX_EVENT_ID_BYTES: usize = 1024;
/// Most masked JSON pointers.
pub const MAX_MASK_POINTERS: usize = 64;

/// What a shard does when its channel is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop the frame and count it (the default: recording never slows the proxy).
    Drop,
    /// Keep the frame and retry later (audits): `try_record` hands it back.
    Block,
}

/// When the persistence thread fsyncs the open segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    Never,
    /// At most this many milliseconds after a write.
    Interval(u64),
    /// After every batch.
    Always,
}

/// The validated recording settings (the `[tapes]` slice of the runtime config).
#[derive(Debug, Clone)]
pub struct TapeConfig {
    pub dir: PathBuf,
    pub overflow: Overflow,
    pub channel_depth: usize,
    pub batch_max_frames: usize,
    pub batch_max_delay_ms: u64,
    pub segment_max_bytes: u64,
    pub segment_max_sessions: usize,
    pub fsync: Fsync,
    /// JSON pointers whose values are replaced by `"***"` before writing.
    pub mask: Vec<String>,
    pub io_retry_max: u32,
    pub io_retry_backoff_ms: u64,
    pub index_interval_ms: u64,
    /// Core to pin the persistence thread to.
    pub core: Option<usize>,
}

impl TapeConfig {
    /// Defaults for every bound, recording into `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> TapeConfig {
        TapeConfig {
            dir: dir.into(),
            overflow: Overflow::Drop,
            channel_depth: DEFAULT_CHANNEL_DEPTH,
            batch_max_frames: DEFAULT_BATCH_MAX_FRAMES,
            batch_max_delay_ms: DEFAULT_BATCH_MAX_DELAY_MS,
            segment_max_bytes: DEFAULT_SEGMENT_MAX_BYTES,
            segment_max_sessions: DEFAULT_SEGMENT_MAX_SESSIONS,
            fsync: Fsync::Interval(DEFAULT_FSYNC_INTERVAL_MS),
            mask: Vec::new(),
            io_retry_max: DEFAULT_IO_RETRY_MAX,
            io_retry_backoff_ms: DEFAULT_IO_RETRY_BACKOFF_MS,
            index_interval_ms: DEFAULT_INDEX_INTERVAL_MS,
            core: None,
        }
    }

    /// Checks each bound and the relations between them; the error names the config key.
    pub fn validate(&self) -> Result<(), String> {
        let key = |k: &str, why: &str| Err(format!("tapes.{k}: {why}"));
        if self.dir.as_os_str().is_empty() {
            return key("dir", "must name a directory");
        }
        if self.channel_depth == 0 {
            return key("channel_depth", "must be at least 1");
        }
        if self.batch_max_frames == 0 {
            return key("batch_max_frames", "must be at least 1");
        }
        if self.batch_max_frames > self.channel_depth {
            return key(
                "batch_max_frames",
                "must not exceed tapes.channel_depth (a batch could never fill)",
            );
        }
        if self.batch_max_delay_ms == 0 || self.batch_max_delay_ms > 60_000 {
            return key("batch_max_delay_ms", "must be between 1 and 60000");
        }
        if self.segment_max_bytes < MIN_SEGMENT_MAX_BYTES {
            return key(
                "segment_max_bytes",
                &format!("must be at least {MIN_SEGMENT_MAX_BYTES}"),
            );
        }
        if self.segment_max_sessions == 0 {
            return key("segment_max_sessions", "must be at least 1");
        }
        if let Fsync::Interval(ms) = self.fsync {
            if ms < self.batch_max_delay_ms {
                return key(
                    "fsync_interval_ms",
                    "must not be shorter than tapes.batch_max_delay_ms",
                );
            }
        }
        if self.io_retry_max > 30 {
            return key("io_retry_max", "must be at most 30");
        }
        if self.io_retry_backoff_ms > MAX_IO_RETRY_BACKOFF_MS {
            return key(
                "io_retry_backoff_ms",
                &format!("must be at most {MAX_IO_RETRY_BACKOFF_MS}"),
            );
        }
        if self.index_interval_ms < self.batch_max_delay_ms {
            return key(
                "index_interval_ms",
                "must not be shorter than tapes.batch_max_delay_ms",
            );
        }
        self.validate_mask()
    }

    fn validate_mask(&self) -> Result<(), String> {
        if self.mask.len() > MAX_MASK_POINTERS {
            return Err(format!("tapes.mask: at most {MAX_MASK_POINTERS} pointers"));
        }
        match self.mask.iter().find(|p| !p.starts_with('/')) {
            Some(p) => Err(format!(
                "tapes.mask: {p:?} is not a JSON pointer (must start with '/')"
            )),
            None => Ok(()),
        }
    }
}
