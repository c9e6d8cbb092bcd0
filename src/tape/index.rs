//! The index: one JSON summary per segment (`NNNNNNNN.idx` beside `NNNNNNNN.tape`) naming the
//! sessions in it with their times, message counts and upstream. Merged, the summaries map each
//! session to its segments.
//!
//! It is a cache. A summary is trusted only when the byte length it records equals the
//! segment's size; otherwise (kill -9, a summary never written) readers scan the segment.
//! Summaries are written to a temporary file and renamed, so a reader never sees half of one.
//! Keeping one summary per segment bounds the writer's memory by the segment size, not by the
//! number of sessions ever recorded.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::format::{self, segments_dir};
use super::{Dir, Frame, FrameKind};

/// One session's share of one segment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEntry {
    pub first_us: u64,
    pub last_us: u64,
    /// Message frames (JSON-RPC messages, both directions).
    pub messages: u64,
    pub frames: u64,
    /// From the session-start frame, when this segment holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(default)]
    pub started: bool,
    #[serde(default)]
    pub ended: bool,
}

impl SessionEntry {
    /// Accounts one frame of this session.
    pub fn add(&mut self, frame: &Frame) {
        if self.frames == 0 || frame.ts_us < self.first_us {
            self.first_us = frame.ts_us;
        }
        self.last_us = self.last_us.max(frame.ts_us);
        self.frames += 1;
        match (&frame.kind, frame.dir) {
            (FrameKind::Message { .. }, _) => self.messages += 1,
            (FrameKind::SessionStart, Dir::Gateway) => {
                self.started = true;
                self.upstream = start_field(&frame.payload, "upstream");
            }
            (FrameKind::SessionEnd, _) => self.ended = true,
            _ => {}
        }
    }

    /// Folds another segment's share of the same session into this one.
    pub fn merge(&mut self, other: &SessionEntry) {
        if self.frames == 0 || (other.frames > 0 && other.first_us < self.first_us) {
            self.first_us = other.first_us;
        }
        self.last_us = self.last_us.max(other.last_us);
        self.messages += other.messages;
        self.frames += other.frames;
        self.started |= other.started;
        self.ended |= other.ended;
        if self.upstream.is_none() {
            self.upstream.clone_from(&other.upstream);
        }
    }
}

/// A string field of a session-start payload.
pub fn start_field(payload: &[u8], key: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v.get(key).and_then(|u| u.as_str()).map(str::to_string)
}

/// The summary of one segment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentIndex {
    pub version: u32,
    pub segment: u32,
    /// Segment length this summary describes; a different file size makes it stale.
    pub bytes: u64,
    pub records: u64,
    /// Keyed by the session id in 16 hex digits.
    pub sessions: BTreeMap<String, SessionEntry>,
}

impl SegmentIndex {
    pub fn new(segment: u32) -> SegmentIndex {
        SegmentIndex {
            version: 1,
            segment,
            ..SegmentIndex::default()
        }
    }

    pub fn add(&mut self, frame: &Frame) {
        self.records += 1;
        self.sessions
            .entry(session_key(frame.session))
            .or_default()
            .add(frame);
    }
}

pub fn session_key(session: u64) -> String {
    format!("{session:016x}")
}

pub fn index_path(dir: &Path, seq: u32) -> PathBuf {
    segments_dir(dir).join(format!("{seq:08}.idx"))
}

/// Writes a summary atomically: temporary file, then rename.
pub fn write(dir: &Path, idx: &SegmentIndex) -> io::Result<()> {
    write_with(dir, idx.segment, |out| serde_json::to_writer(out, idx))
}

/// The open segment's summary, as the writer holds it: serialized straight from its map, in
/// the same shape as `SegmentIndex`, with no copy of the map (it can hold a session for every
/// stateless exchange of the segment).
pub struct OpenSummary<'a> {
    pub segment: u32,
    pub bytes: u64,
    pub records: u64,
    pub sessions: &'a HashMap<u64, SessionEntry>,
}

impl Serialize for OpenSummary<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Keyed<'a>(&'a HashMap<u64, SessionEntry>);
        impl Serialize for Keyed<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(k, v)| (session_key(*k), v)))
            }
        }
        let mut st = s.serialize_struct("SegmentIndex", 5)?;
        st.serialize_field("version", &1u32)?;
        st.serialize_field("segment", &self.segment)?;
        st.serialize_field("bytes", &self.bytes)?;
        st.serialize_field("records", &self.records)?;
        st.serialize_field("sessions", &Keyed(self.sessions))?;
        st.end()
    }
}

/// Writes the open segment's summary atomically, streamed to the file.
pub fn write_open(dir: &Path, idx: &OpenSummary<'_>) -> io::Result<()> {
    write_with(dir, idx.segment, |out| serde_json::to_writer(out, idx))
}

fn write_with(
    dir: &Path,
    segment: u32,
    encode: impl FnOnce(&mut io::BufWriter<std::fs::File>) -> serde_json::Result<()>,
) -> io::Result<()> {
    let path = index_path(dir, segment);
    let tmp = path.with_extension("idx.tmp");
    let mut out = io::BufWriter::new(std::fs::File::create(&tmp)?);
    encode(&mut out).map_err(io::Error::other)?;
    io::Write::flush(&mut out)?;
    drop(out);
    std::fs::rename(&tmp, &path)
}

/// The summary of segment `seq`: its `.idx` when fresh, else built by scanning the segment.
pub fn load_or_scan(dir: &Path, seq: u32) -> io::Result<SegmentIndex> {
    let size = std::fs::metadata(format::segment_path(dir, seq))?.len();
    if let Ok(raw) = std::fs::read(index_path(dir, seq)) {
        if let Ok(idx) = serde_json::from_slice::<SegmentIndex>(&raw) {
            if idx.version == 1 && idx.segment == seq && idx.bytes == size {
                return Ok(idx);
            }
        }
    }
    let mut idx = SegmentIndex::new(seq);
    let report = format::scan_file(&format::segment_path(dir, seq), |_, f| idx.add(&f))?;
    idx.bytes = report.bytes;
    Ok(idx)
}

/// A session across all segments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSummary {
    pub session: u64,
    pub segments: Vec<u32>,
    pub entry: SessionEntry,
}

/// Every session of the tape directory, ordered by start time.
pub fn sessions(dir: &Path) -> io::Result<Vec<SessionSummary>> {
    let mut by_id: BTreeMap<String, SessionSummary> = BTreeMap::new();
    for seq in format::list_segments(dir)? {
        let idx = load_or_scan(dir, seq)?;
        for (key, e) in &idx.sessions {
            let s = by_id.entry(key.clone()).or_insert_with(|| SessionSummary {
                session: u64::from_str_radix(key, 16).unwrap_or(0),
                ..SessionSummary::default()
            });
            s.segments.push(seq);
            s.entry.merge(e);
        }
    }
    let mut all: Vec<SessionSummary> = by_id.into_values().collect();
    all.sort_by_key(|s| (s.entry.first_us, s.session));
    Ok(all)
}
