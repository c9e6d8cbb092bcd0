//! The persistence thread: gathers frames from every shard's channel, batches them by count and
//! time, masks, encodes, writes each batch with one positioned write, rotates segments, fsyncs
//! by policy, and keeps each segment's index.
//!
//! Invariants:
//! - It waits on the channels with `crossbeam::Select` and a deadline; it never spins.
//! - A segment is only ever appended to at its committed length; a failed write is retried at
//!   the same offset (exponential backoff, `io_retry_max` attempts), then its frames are counted
//!   lost and the segment is abandoned, so garbage it may hold stays a torn tail.
//! - A new run never appends to an old segment: it starts at the next sequence number.
//! - Memory is bounded: one batch buffer, and one segment's session map.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use super::format::{self, FILE_HEADER_LEN, FRAME_HEADER_LEN, RECORD_PREFIX_LEN};
use super::index::{self, SessionEntry};
use super::mask::Masker;
use super::{
    Frame, FrameKind, Fsync, PersistStats, TapeConfig, MAX_EVENT_ID_BYTES, MAX_IO_RETRY_BACKOFF_MS,
    MAX_PAYLOAD_BYTES,
};

/// Where segment bytes go. `FileDisk` in production; tests inject stalls and failures.
pub trait Disk: Send {
    /// Creates the segment file at `path` and makes it the current one.
    fn create(&mut self, path: &Path) -> io::Result<()>;
    /// Writes all of `data` at `offset` of the current segment.
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()>;
    /// fdatasync of the current segment.
    fn sync(&mut self) -> io::Result<()>;
    /// Closes the current segment.
    fn close(&mut self);
}

#[derive(Default)]
pub struct FileDisk {
    file: Option<File>,
    /// Directory of a segment created since the last sync: its entry is synced too, so a
    /// synced segment survives a power cut under its name.
    new_entry_in: Option<std::path::PathBuf>,
}

impl Disk for FileDisk {
    fn create(&mut self, path: &Path) -> io::Result<()> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        self.file = Some(f);
        self.new_entry_in = path.parent().map(Path::to_path_buf);
        Ok(())
    }

    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        match &self.file {
            Some(f) => f.write_all_at(data, offset),
            None => Err(io::Error::other("no open segment")),
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        if let Some(f) = &self.file {
            f.sync_data()?;
        }
        if let Some(dir) = &self.new_entry_in {
            File::open(dir)?.sync_all()?;
            self.new_entry_in = None;
        }
        Ok(())
    }

    fn close(&mut self) {
        self.file = None;
    }
}

/// The segment being appended to.
struct Open {
    seq: u32,
    /// Committed length: everything before it was written successfully.
    len: u64,
    records: u64,
    sessions: HashMap<u64, SessionEntry>,
    /// When a batch was last written to it.
    last_write: Instant,
    index_dirty: bool,
    sync_dirty: bool,
}

pub struct Writer {
    cfg: TapeConfig,
    disk: Box<dyn Disk>,
    stats: Arc<PersistStats>,
    masker: Masker,
    first_seq: u32,
    next_seq: u32,
    seg: Option<Open>,
    /// Encoded records not yet written.
    buf: Vec<u8>,
    last_sync: Instant,
}

impl Writer {
    /// Prepares `DIR/segments` and picks the first sequence number after any existing segment.
    pub fn open(cfg: TapeConfig, disk: Box<dyn Disk>) -> io::Result<Writer> {
        std::fs::create_dir_all(format::segments_dir(&cfg.dir))?;
        let first_seq = format::list_segments(&cfg.dir)?.last().map_or(1, |s| s + 1);
        let now = Instant::now();
        Ok(Writer {
            masker: Masker::new(&cfg.mask),
            buf: Vec::with_capacity(cfg.batch_max_frames * 256),
            cfg,
            disk,
            stats: Arc::default(),
            first_seq,
            next_seq: first_seq,
            seg: None,
            last_sync: now,
        })
    }

    pub fn first_seq(&self) -> u32 {
        self.first_seq
    }

    pub fn stats(&self) -> Arc<PersistStats> {
        self.stats.clone()
    }

    /// Encodes and writes one batch: one write, or one per segment when it crosses a rotation.
    pub fn write_batch(&mut self, batch: &[Frame]) {
        let mut from = 0;
        for (i, f) in batch.iter().enumerate() {
            if f.payload.len() > MAX_PAYLOAD_BYTES {
                self.stats.frames_oversize.fetch_add(1, Relaxed);
                continue;
            }
            let masked = match f.kind {
                FrameKind::Message { .. } => self.masker.apply(&f.payload),
                _ => None,
            };
            let payload: &[u8] = masked.as_deref().unwrap_or(&f.payload);
            if self.would_overflow(record_len(f, payload.len()), i - from) {
                self.commit(&batch[from..i]);
                from = i;
                self.rotate();
            }
            format::encode(&mut self.buf, f, payload);
        }
        self.commit(&batch[from..]);
        if self.cfg.fsync == Fsync::Always {
            self.sync();
        }
    }

    /// Whether the next record starts a new segment: it would pass `segment_max_bytes`, or
    /// the index could pass `segment_max_sessions` (each of the `pending` records encoded but
    /// not yet committed counts as a new session).
    fn would_overflow(&self, rec: usize, pending: usize) -> bool {
        let base = self.seg.as_ref().map_or(FILE_HEADER_LEN as u64, |s| s.len);
        let used = base + self.buf.len() as u64;
        let sessions = self.seg.as_ref().map_or(0, |s| s.sessions.len()) + pending;
        let full = used + rec as u64 > self.cfg.segment_max_bytes
            || sessions >= self.cfg.segment_max_sessions;
        full && used > FILE_HEADER_LEN as u64
    }

    /// Writes the buffered records of `frames` (oversize ones were never encoded).
    fn commit(&mut self, frames: &[Frame]) {
        if self.buf.is_empty() {
            return;
        }
        let n = frames
            .iter()
            .filter(|f| f.payload.len() <= MAX_PAYLOAD_BYTES)
            .count() as u64;
        match self.write_buf() {
            Ok(()) => {
                if let Some(seg) = self.seg.as_mut() {
                    seg.records += n;
                    for f in frames
                        .iter()
                        .filter(|f| f.payload.len() <= MAX_PAYLOAD_BYTES)
                    {
                        seg.sessions.entry(f.session).or_default().add(f);
                    }
                }
                self.stats.frames_written.fetch_add(n, Relaxed);
                self.stats
                    .bytes_written
                    .fetch_add(self.buf.len() as u64, Relaxed);
                self.stats.batches.fetch_add(1, Relaxed);
            }
            Err(e) => {
                let before = self.stats.frames_lost_io.fetch_add(n, Relaxed);
                if before == 0 || self.stats.io_errors.load(Relaxed) % 1024 == 0 {
                    log::warn!("tape: write failed after retries, {n} frames lost: {e}");
                }
                // The segment may now end in a partial batch: leave it, as a torn tail.
                self.abandon();
            }
        }
        self.buf.clear();
    }

    fn write_buf(&mut self) -> io::Result<()> {
        if self.seg.is_none() {
            self.seg = Some(self.open_segment()?);
        }
        let Some(seg) = self.seg.as_mut() else {
            return Err(io::Error::other("no open segment"));
        };
        let (buf, off) = (&self.buf, seg.len);
        let disk = &mut self.disk;
        retry(&self.cfg, &self.stats, || disk.write_at(buf, off))?;
        seg.len += self.buf.len() as u64;
        seg.last_write = Instant::now();
        seg.index_dirty = true;
        seg.sync_dirty = true;
        Ok(())
    }

    fn open_segment(&mut self) -> io::Result<Open> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let path = format::segment_path(&self.cfg.dir, seq);
        let disk = &mut self.disk;
        retry(&self.cfg, &self.stats, || {
            disk.create(&path)?;
            disk.write_at(&format::file_header(), 0)
        })?;
        self.stats.segments.fetch_add(1, Relaxed);
        Ok(Open {
            seq,
            len: FILE_HEADER_LEN as u64,
            records: 0,
            sessions: HashMap::new(),
            last_write: Instant::now(),
            index_dirty: true,
            sync_dirty: true,
        })
    }

    /// Closes the current segment for good: fsync (unless `never`), final index.
    fn rotate(&mut self) {
        if self.cfg.fsync != Fsync::Never {
            self.sync();
        }
        self.write_index();
        self.disk.close();
        self.seg = None;
    }

    fn abandon(&mut self) {
        self.write_index();
        self.disk.close();
        self.seg = None;
    }

    fn sync(&mut self) {
        let Some(seg) = self.seg.as_mut().filter(|s| s.sync_dirty) else {
            return;
        };
        let disk = &mut self.disk;
        if retry(&self.cfg, &self.stats, || disk.sync()).is_ok() {
            seg.sync_dirty = false;
            self.stats.fsyncs.fetch_add(1, Relaxed);
        }
        self.last_sync = Instant::now();
    }

    fn write_index(&mut self) {
        let Some(seg) = self.seg.as_mut().filter(|s| s.index_dirty) else {
            return;
        };
        let idx = index::OpenSummary {
            segment: seg.seq,
            bytes: seg.len,
            records: seg.records,
            sessions: &seg.sessions,
        };
        match index::write_open(&self.cfg.dir, &idx) {
            Ok(()) => {
                seg.index_dirty = false;
                self.stats.index_writes.fetch_add(1, Relaxed);
            }
            // The index is a cache: readers scan the segment instead.
            Err(_) => {
                self.stats.io_errors.fetch_add(1, Relaxed);
            }
        }
    }

    /// Periodic work: interval fsync, and the open segment's index once recording has been
    /// quiet for `index_interval_ms`. While batches keep coming an index written now would be
    /// stale at the next batch, so readers would scan the segment anyway; rewriting it on a
    /// clock instead cost the writer time and memory growing with the segment's sessions
    /// (one per stateless exchange). Rotation and shutdown always write it.
    pub fn tick(&mut self, now: Instant) {
        if let Fsync::Interval(ms) = self.cfg.fsync {
            if now >= self.last_sync + Duration::from_millis(ms) {
                self.sync();
            }
        }
        if self.index_due().is_some_and(|at| now >= at) {
            self.write_index();
        }
    }

    /// When the open segment's index is next to be written, if it is out of date.
    fn index_due(&self) -> Option<Instant> {
        let seg = self.seg.as_ref().filter(|s| s.index_dirty)?;
        Some(seg.last_write + Duration::from_millis(self.cfg.index_interval_ms))
    }

    /// When `tick` next has something to do.
    fn next_tick(&self) -> Instant {
        let Some(seg) = &self.seg else {
            return Instant::now() + Duration::from_secs(3600);
        };
        let mut at = Instant::now() + Duration::from_secs(3600);
        if let (Fsync::Interval(ms), true) = (self.cfg.fsync, seg.sync_dirty) {
            at = at.min(self.last_sync + Duration::from_millis(ms));
        }
        if let Some(due) = self.index_due() {
            at = at.min(due);
        }
        at
    }

    /// Shutdown: fsync whatever the policy, final index.
    pub fn finish(&mut self) {
        self.sync();
        self.write_index();
        self.disk.close();
        self.seg = None;
    }
}

fn record_len(f: &Frame, payload: usize) -> usize {
    let eid = match &f.kind {
        FrameKind::Message {
            event_id: Some(e), ..
        } => e.len().min(MAX_EVENT_ID_BYTES),
        _ => 0,
    };
    RECORD_PREFIX_LEN + FRAME_HEADER_LEN + eid + payload
}

/// Runs `op`, retrying failures with exponential backoff up to `io_retry_max` more times.
fn retry<T>(
    cfg: &TapeConfig,
    stats: &PersistStats,
    mut op: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let mut backoff = cfg.io_retry_backoff_ms;
    let mut attempt = 0;
    loop {
        match op() {
            Ok(v) => return Ok(v),
            Err(e) => {
                stats.io_errors.fetch_add(1, Relaxed);
                if attempt >= cfg.io_retry_max {
                    return Err(e);
                }
                attempt += 1;
                stats.io_retries.fetch_add(1, Relaxed);
                std::thread::sleep(Duration::from_millis(backoff));
                backoff = (backoff * 2).clamp(1, MAX_IO_RETRY_BACKOFF_MS);
            }
        }
    }
}

/// The thread's body. `close` marks recording closed once the thread stops taking frames.
pub fn run(mut w: Writer, mut rxs: Vec<Receiver<Frame>>, stop: Receiver<()>, close: impl FnOnce()) {
    let mut batch = Vec::with_capacity(w.cfg.batch_max_frames);
    loop {
        let stopping = gather(&mut rxs, &stop, &mut batch, &w);
        if !batch.is_empty() {
            w.write_batch(&batch);
            batch.clear();
        }
        w.tick(Instant::now());
        if stopping {
            break;
        }
    }
    close();
    // Everything queued before `close` is written.
    loop {
        drain(&mut rxs, &mut batch, w.cfg.batch_max_frames);
        if batch.is_empty() {
            break;
        }
        w.write_batch(&batch);
        batch.clear();
    }
    w.finish();
}

/// Fills `batch` until it holds `batch_max_frames`, `batch_max_delay_ms` passed, or periodic
/// work is due. Returns true when the thread should stop: shutdown was asked, or every recorder
/// is gone and its channel empty.
///
/// The thread polls the frame channels rather than waiting on them: a receiver parked on a
/// channel is woken by every frame sent, which would cost the shards a futex wake (and this
/// thread a context switch) per frame. Only the stop channel is waited on.
fn gather(
    rxs: &mut Vec<Receiver<Frame>>,
    stop: &Receiver<()>,
    batch: &mut Vec<Frame>,
    w: &Writer,
) -> bool {
    let max = w.cfg.batch_max_frames;
    let until =
        (Instant::now() + Duration::from_millis(w.cfg.batch_max_delay_ms)).min(w.next_tick());
    loop {
        drain(rxs, batch, max);
        if batch.len() >= max {
            return false;
        }
        if rxs.is_empty() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        match stop.recv_deadline(until) {
            Err(RecvTimeoutError::Timeout) => {}
            // A stop message, or the handle dropped.
            _ => return true,
        }
    }
}

/// Moves ready frames into `batch`, round-robin across channels, up to `max`. Channels whose
/// recorder is gone and that are empty are removed.
fn drain(rxs: &mut Vec<Receiver<Frame>>, batch: &mut Vec<Frame>, max: usize) {
    let share = (max / rxs.len().max(1)).max(16);
    loop {
        let mut got = false;
        let mut i = 0;
        while i < rxs.len() && batch.len() < max {
            let mut taken = 0;
            let mut gone = false;
            while batch.len() < max && taken < share {
                match rxs[i].try_recv() {
                    Ok(f) => {
                        batch.push(f);
                        taken += 1;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        gone = true;
                        break;
                    }
                }
            }
            got |= taken > 0;
            if gone {
                rxs.swap_remove(i);
            } else {
                i += 1;
            }
        }
        if !got || batch.len() >= max {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32};
    use std::sync::{Condvar, Mutex};

    use bytes::Bytes;

    use super::*;
    use crate::tape::{self, index, tools, Dir, Overflow, Persistence, Recorder};

    /// A disk whose writes can be held (a stalled disk) or made to fail.
    #[derive(Default)]
    struct Ctl {
        held: Mutex<bool>,
        released: Condvar,
        /// Set while a call waits on the hold.
        waiting: AtomicBool,
        /// Upcoming calls that fail.
        fail: AtomicU32,
    }

    impl Ctl {
        fn hold(&self, on: bool) {
            *self.held.lock().unwrap() = on;
            self.released.notify_all();
        }

        fn pass(&self) -> io::Result<()> {
            let mut held = self.held.lock().unwrap();
            while *held {
                self.waiting.store(true, Relaxed);
                held = self.released.wait(held).unwrap();
            }
            self.waiting.store(false, Relaxed);
            let failing = self
                .fail
                .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return Err(io::Error::other("injected failure"));
            }
            Ok(())
        }
    }

    struct FaultDisk {
        inner: FileDisk,
        ctl: Arc<Ctl>,
    }

    impl Disk for FaultDisk {
        fn create(&mut self, path: &Path) -> io::Result<()> {
            self.ctl.pass()?;
            self.inner.create(path)
        }
        fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
            self.ctl.pass()?;
            self.inner.write_at(data, offset)
        }
        fn sync(&mut self) -> io::Result<()> {
            self.inner.sync()
        }
        fn close(&mut self) {
            self.inner.close();
        }
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("shardcat-tape-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn start_faulty(cfg: TapeConfig, shards: usize) -> (Persistence, Vec<Recorder>, Arc<Ctl>) {
        let ctl = Arc::new(Ctl::default());
        let disk = FaultDisk {
            inner: FileDisk::default(),
            ctl: ctl.clone(),
        };
        let (p, r) = tape::start_with(cfg, shards, Box::new(disk)).expect("start");
        (p, r, ctl)
    }

    fn frame(session: u64, n: u64, text: &str) -> Frame {
        Frame {
            server: None,
            session,
            ts_us: 1_000_000 + n,
            dir: if n % 2 == 0 {
                Dir::ClientToServer
            } else {
                Dir::ServerToClient
            },
            kind: FrameKind::Message {
                status: 200,
                sse: false,
                stream: n as u32,
                event_id: None,
            },
            payload: Bytes::from(format!(
                r#"{{"jsonrpc":"2.0","id":{n},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{text}","password":"pw{n}"}}}}}}"#
            )),
        }
    }

    fn read_all(dir: &Path) -> Vec<Frame> {
        let mut all = Vec::new();
        for seq in format::list_segments(dir).unwrap() {
            let r = format::scan_file(&format::segment_path(dir, seq), |_, f| all.push(f)).unwrap();
            assert!(r.is_clean(), "segment {seq}: {r:?}");
        }
        all
    }

    fn wait_until(mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "condition never held");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn shutdown_flushes_every_queued_frame() {
        let dir = temp_dir("flush");
        let mut cfg = TapeConfig::new(&dir);
        cfg.batch_max_delay_ms = 50;
        let (p, recs) = tape::start(cfg, 3).unwrap();
        let stats: Vec<_> = recs.iter().map(Recorder::stats).collect();
        let threads: Vec<_> = recs
            .into_iter()
            .enumerate()
            .map(|(shard, r)| {
                std::thread::spawn(move || {
                    let s = r.new_session_id();
                    assert_eq!(s >> 56, shard as u64);
                    for n in 0..10_000 {
                        assert!(r.try_record(frame(s, n, "x")).is_ok());
                    }
                    r
                })
            })
            .collect();
        // Keep the recorders alive: shutdown, not their drop, must flush.
        let recs: Vec<Recorder> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let ps = p.shutdown();
        let queued: u64 = stats.iter().map(|s| s.queued.load(Relaxed)).sum();
        assert_eq!(queued, 30_000);
        assert_eq!(ps.frames_written.load(Relaxed), 30_000);
        assert_eq!(
            stats.iter().map(|s| s.dropped.load(Relaxed)).sum::<u64>(),
            0
        );
        assert_eq!(read_all(&dir).len(), 30_000);
        // After shutdown, offers are dropped and counted.
        assert!(recs[0].is_closed());
        assert!(recs[0].try_record(frame(1, 1, "late")).is_ok());
        assert_eq!(stats[0].dropped.load(Relaxed), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dropping_all_recorders_ends_the_thread_after_draining() {
        let dir = temp_dir("drop");
        let (p, recs) = tape::start(TapeConfig::new(&dir), 2).unwrap();
        for (i, r) in recs.iter().enumerate() {
            for n in 0..500 {
                r.try_record(frame(i as u64, n, "d")).unwrap();
            }
        }
        drop(recs);
        wait_until(|| p.is_finished());
        assert_eq!(p.stats().frames_written.load(Relaxed), 1000);
        assert_eq!(read_all(&dir).len(), 1000);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rotation_at_the_size_bound_and_index_maps_sessions_to_segments() {
        let dir = temp_dir("rotate");
        let mut cfg = TapeConfig::new(&dir);
        cfg.segment_max_bytes = MIN_SEGMENT;
        cfg.batch_max_frames = 64;
        let (p, recs) = tape::start(cfg, 1).unwrap();
        let sessions = [recs[0].new_session_id(), recs[0].new_session_id()];
        for n in 0..400 {
            recs[0]
                .try_record(frame(sessions[(n % 2) as usize], n, "rotate"))
                .unwrap();
        }
        drop(recs);
        let ps = p.shutdown();
        let seqs = format::list_segments(&dir).unwrap();
        assert!(seqs.len() >= 5, "{seqs:?}");
        assert_eq!(ps.segments.load(Relaxed), seqs.len() as u64);
        for seq in &seqs {
            let len = std::fs::metadata(format::segment_path(&dir, *seq))
                .unwrap()
                .len();
            assert!(len <= MIN_SEGMENT, "segment {seq} is {len} bytes");
            // Every segment's index was written and is fresh.
            let raw = std::fs::read(index::index_path(&dir, *seq)).unwrap();
            let idx: index::SegmentIndex = serde_json::from_slice(&raw).unwrap();
            assert_eq!(idx.bytes, len);
        }
        let all = index::sessions(&dir).unwrap();
        assert_eq!(all.len(), 2);
        for s in &all {
            assert!(s.segments.len() >= 5, "{s:?}");
            assert_eq!(s.entry.messages, 200);
        }
        // The index is a cache: without it, a scan gives the same answer.
        for seq in &seqs {
            std::fs::remove_file(index::index_path(&dir, *seq)).unwrap();
        }
        assert_eq!(index::sessions(&dir).unwrap(), all);
        assert_eq!(tools::session_frames(&dir, sessions[1]).unwrap().len(), 200);
        let _ = std::fs::remove_dir_all(&dir);
    }

    const MIN_SEGMENT: u64 = crate::tape::MIN_SEGMENT_MAX_BYTES;

    /// A segment's index holds at most `segment_max_sessions` sessions: the writer's memory
    /// for the open segment is bounded however many stateless exchanges a segment records.
    #[test]
    fn segments_rotate_at_the_session_bound() {
        let dir = temp_dir("max-sessions");
        let mut cfg = TapeConfig::new(&dir);
        cfg.segment_max_sessions = 3;
        let mut w = Writer::open(cfg, Box::new(FileDisk::default())).unwrap();
        w.write_batch(&(0..10).map(|n| frame(100 + n, n, "s")).collect::<Vec<_>>());
        for n in 10..14 {
            w.write_batch(&[frame(100 + n, n, "s")]);
        }
        w.finish();
        let seqs = format::list_segments(&dir).unwrap();
        let mut seen = 0;
        for seq in &seqs {
            let n = index::load_or_scan(&dir, *seq).unwrap().sessions.len();
            assert!((1..=3).contains(&n), "segment {seq}: {n} sessions");
            seen += n;
        }
        assert_eq!((seen, seqs.len()), (14, 5));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The open segment's index is written once recording is quiet, not on a clock while
    /// batches keep coming; written, it is fresh (its length is the segment's).
    #[test]
    fn the_open_index_waits_for_a_quiet_spell() {
        let dir = temp_dir("quiet-index");
        let cfg = TapeConfig::new(&dir);
        let quiet = Duration::from_millis(cfg.index_interval_ms);
        let mut w = Writer::open(cfg, Box::new(FileDisk::default())).unwrap();
        let path = |w: &Writer| index::index_path(&dir, w.first_seq());
        let t0 = Instant::now();
        for n in 0..10 {
            w.write_batch(&[frame(1 + n, n, "busy")]);
            // A clock that moves a whole interval between batches: busy, but not quiet yet.
            w.tick(Instant::now() + quiet / 2);
        }
        assert!(!path(&w).exists(), "no index while batches keep coming");
        assert_eq!(w.stats().index_writes.load(Relaxed), 0);
        w.tick(Instant::now() + quiet);
        let raw = std::fs::read(path(&w)).expect("written after a quiet spell");
        let idx: index::SegmentIndex = serde_json::from_slice(&raw).unwrap();
        let len = std::fs::metadata(format::segment_path(&dir, w.first_seq()))
            .unwrap()
            .len();
        assert_eq!((idx.bytes, idx.records, idx.sessions.len()), (len, 10, 10));
        // Nothing new: not written again.
        w.tick(t0 + 10 * quiet);
        assert_eq!(w.stats().index_writes.load(Relaxed), 1);
        // It says what a scan of the segment says.
        std::fs::remove_file(path(&w)).unwrap();
        assert_eq!(idx, index::load_or_scan(&dir, w.first_seq()).unwrap());
        w.finish();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn masked_pointers_never_reach_the_disk() {
        let dir = temp_dir("mask");
        let mut cfg = TapeConfig::new(&dir);
        cfg.mask = vec!["/params/arguments/password".into()];
        let (p, recs) = tape::start(cfg, 1).unwrap();
        for n in 0..10 {
            recs[0].try_record(frame(1, n, "visible")).unwrap();
        }
        drop(recs);
        p.shutdown();
        let all = read_all(&dir);
        assert_eq!(all.len(), 10);
        for seq in format::list_segments(&dir).unwrap() {
            let raw = std::fs::read(format::segment_path(&dir, seq)).unwrap();
            let text = String::from_utf8_lossy(&raw);
            assert!(!text.contains("pw1") && text.contains("visible"));
        }
        let v: serde_json::Value = serde_json::from_slice(&all[3].payload).unwrap();
        assert_eq!(v["params"]["arguments"]["password"], "***");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn full_channel_under_a_stalled_disk_drops_and_counts() {
        let dir = temp_dir("stall");
        let mut cfg = TapeConfig::new(&dir);
        cfg.channel_depth = 8;
        cfg.batch_max_frames = 4;
        let (p, recs, ctl) = start_faulty(cfg, 1);
        ctl.hold(true);
        recs[0].try_record(frame(1, 0, "first")).unwrap();
        // The thread now holds that frame and waits on the disk.
        wait_until(|| ctl.waiting.load(Relaxed));
        for n in 1..=100 {
            assert!(recs[0].try_record(frame(1, n, "more")).is_ok());
        }
        let s = recs[0].stats();
        assert_eq!(s.offered.load(Relaxed), 101);
        assert_eq!(s.queued.load(Relaxed), 9);
        assert_eq!(s.dropped.load(Relaxed), 92);
        ctl.hold(false);
        drop(recs);
        let ps = p.shutdown();
        assert_eq!(ps.frames_written.load(Relaxed), 9);
        let mut out = String::new();
        tape::render(&[&s], &ps, crate::metrics::Format::Text, &mut out);
        assert!(
            out.contains(&format!(
                "shardcat_tape_frames_dropped_total{{shard=\"{}\"}} 92\n",
                s.shard
            )),
            "{out}"
        );
        assert!(
            out.contains("shardcat_tape_frames_written_total 9"),
            "{out}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn block_policy_hands_the_frame_back_instead_of_dropping() {
        let dir = temp_dir("block");
        let mut cfg = TapeConfig::new(&dir);
        cfg.channel_depth = 4;
        cfg.batch_max_frames = 4;
        cfg.overflow = Overflow::Block;
        let (p, recs, ctl) = start_faulty(cfg, 1);
        ctl.hold(true);
        recs[0].try_record(frame(1, 0, "first")).unwrap();
        wait_until(|| ctl.waiting.load(Relaxed));
        for n in 1..=4 {
            recs[0].try_record(frame(1, n, "fits")).unwrap();
        }
        assert!(recs[0].is_full());
        let back = recs[0].try_record(frame(1, 5, "waits")).unwrap_err();
        assert_eq!(back, frame(1, 5, "waits"));
        let s = recs[0].stats();
        assert_eq!(s.blocked_waits.load(Relaxed), 1);
        assert_eq!(s.dropped.load(Relaxed), 0);
        ctl.hold(false);
        // What a shard does under `block`: offer again after a pause.
        let mut f = back;
        while let Err(again) = recs[0].try_record(f) {
            f = again;
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(recs);
        let ps = p.shutdown();
        assert_eq!(ps.frames_written.load(Relaxed), 6);
        assert_eq!(s.offered.load(Relaxed), 6);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn io_errors_are_retried_then_counted_as_lost() {
        let dir = temp_dir("ioerr");
        let mut cfg = TapeConfig::new(&dir);
        cfg.io_retry_max = 3;
        cfg.io_retry_backoff_ms = 1;
        cfg.batch_max_frames = 16;
        let (p, recs, ctl) = start_faulty(cfg, 1);
        let stats = p.stats();
        // Two failures: the retries absorb them.
        ctl.fail.store(2, Relaxed);
        for n in 0..16 {
            recs[0].try_record(frame(1, n, "retried")).unwrap();
        }
        wait_until(|| stats.frames_written.load(Relaxed) == 16);
        assert_eq!(stats.io_retries.load(Relaxed), 2);
        assert_eq!(stats.frames_lost_io.load(Relaxed), 0);
        // A failing disk: 1 + 3 attempts fail, the batch is lost and counted.
        ctl.hold(true);
        recs[0].try_record(frame(1, 100, "lost")).unwrap();
        wait_until(|| ctl.waiting.load(Relaxed));
        ctl.fail.store(4, Relaxed);
        ctl.hold(false);
        wait_until(|| stats.frames_lost_io.load(Relaxed) == 1);
        // The disk heals: recording goes on in a fresh segment.
        for n in 200..210 {
            recs[0].try_record(frame(1, n, "after")).unwrap();
        }
        drop(recs);
        let ps = p.shutdown();
        assert_eq!(ps.frames_written.load(Relaxed), 26);
        assert_eq!(ps.frames_lost_io.load(Relaxed), 1);
        assert_eq!(ps.io_retries.load(Relaxed), 5);
        let texts: Vec<String> = read_all(&dir)
            .iter()
            .map(|f| String::from_utf8_lossy(&f.payload).into_owned())
            .collect();
        assert_eq!(texts.len(), 26);
        assert!(!texts.iter().any(|t| t.contains("lost")));
        assert!(format::list_segments(&dir).unwrap().len() >= 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn validation_names_the_key() {
        let mut cfg = TapeConfig::new("/tmp/x");
        assert!(cfg.validate().is_ok());
        cfg.batch_max_frames = cfg.channel_depth + 1;
        assert!(cfg
            .validate()
            .unwrap_err()
            .contains("tapes.batch_max_frames"));
        let mut cfg = TapeConfig::new("/tmp/x");
        cfg.fsync = Fsync::Interval(1);
        assert!(cfg
            .validate()
            .unwrap_err()
            .contains("tapes.fsync_interval_ms"));
        let mut cfg = TapeConfig::new("/tmp/x");
        cfg.mask = vec!["params/password".into()];
        assert!(cfg.validate().unwrap_err().contains("tapes.mask"));
        let mut cfg = TapeConfig::new("/tmp/x");
        cfg.segment_max_bytes = 10;
        assert!(cfg
            .validate()
            .unwrap_err()
            .contains("tapes.segment_max_bytes"));
    }
}
