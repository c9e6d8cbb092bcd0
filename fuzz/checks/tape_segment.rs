//! tape_segment: the segment reader `tape::format::scan` (what `tape verify`, `list`, `show`,
//! `export` and replay read tapes with), against the writer's encoder `tape::format::encode`.
//!
//! Invariants, frames mode: records encoded one after another behind the file header read
//! back as the same frames (an empty event id reads as none, one over `MAX_EVENT_ID_BYTES` is
//! cut) at their offsets, with a clean report; cut anywhere, the records before the cut still
//! read, and the cut record is reported, never read. Bytes mode, on anything: `scan` does not
//! panic, and the file header, the records it read, the corrupt ranges and the torn tail tile
//! the file exactly, in order; each frame read re-encodes to a record that reads back the same.
//!
//! Input: 1 byte mode (even: bytes mode, the rest is the segment; odd: frames mode, the rest
//! makes the frames with `arbitrary`, then 2 bytes cut).

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use shardcat::tape::format::{self, FILE_HEADER_LEN};
use shardcat::tape::{Dir, Frame, FrameKind, MAX_EVENT_ID_BYTES};

#[path = "common.rs"]
mod common;

#[derive(Arbitrary, Debug)]
struct AnyFrame {
    session: u64,
    ts_us: u64,
    dir: u8,
    kind: u8,
    status: u16,
    sse: bool,
    stream: u32,
    server: Option<u8>,
    event_id: Option<Vec<u8>>,
    payload: Vec<u8>,
}

impl AnyFrame {
    fn frame(self) -> Frame {
        let kind = match self.kind % 4 {
            0 => FrameKind::SessionStart,
            1 => FrameKind::SessionEnd,
            2 => FrameKind::Message {
                status: self.status,
                sse: self.sse,
                stream: self.stream,
                event_id: self.event_id.map(Bytes::from),
            },
            _ => FrameKind::Status {
                status: self.status,
                stream: self.stream,
            },
        };
        let dir = match self.dir % 3 {
            0 => Dir::ClientToServer,
            1 => Dir::ServerToClient,
            _ => Dir::Gateway,
        };
        Frame {
            // A record holds server indexes up to 254 (routes have at most 64 servers).
            server: self.server.map(|m| m % u8::MAX),
            session: self.session,
            ts_us: self.ts_us,
            dir,
            kind,
            payload: Bytes::from(self.payload),
        }
    }
}

/// The frame as the format keeps it.
fn as_stored(mut f: Frame) -> Frame {
    if let FrameKind::Message { event_id, .. } = &mut f.kind {
        *event_id = event_id
            .take()
            .filter(|e| !e.is_empty())
            .map(|e| e.slice(..e.len().min(MAX_EVENT_ID_BYTES)));
    }
    f
}

fn read(data: &[u8]) -> (format::ScanReport, Vec<(u64, Frame)>) {
    let mut got = Vec::new();
    let report = format::scan(&Bytes::copy_from_slice(data), |at, f| got.push((at, f)));
    assert_eq!(report.records as usize, got.len());
    assert_eq!(report.bytes as usize, data.len());
    (report, got)
}

pub fn run(input: &[u8]) {
    match input.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => frames_mode(rest),
        Some((_, rest)) => bytes_mode(rest),
        None => bytes_mode(&[]),
    }
}

fn frames_mode(input: &[u8]) {
    let mut u = Unstructured::new(input);
    let frames: Vec<Frame> = u
        .arbitrary_iter::<AnyFrame>()
        .map(|it| it.into_iter().flatten().map(AnyFrame::frame).collect())
        .unwrap_or_default();
    let cut: u16 = common::take(&mut u);
    let mut seg = format::file_header().to_vec();
    let mut starts = Vec::new();
    for f in &frames {
        starts.push(seg.len());
        format::encode(&mut seg, f, &f.payload);
        assert_eq!(seg.len() - starts.last().unwrap(), format::encoded_len(f));
    }
    let (report, got) = read(&seg);
    assert!(report.is_clean(), "{report:?}");
    let want: Vec<(u64, Frame)> = starts
        .iter()
        .map(|&s| s as u64)
        .zip(frames.iter().cloned().map(as_stored))
        .collect();
    assert_eq!(got, want);
    let cut = usize::from(cut) % (seg.len() + 1);
    let (report, got) = read(&seg[..cut]);
    let before = starts
        .iter()
        .zip(&frames)
        .take_while(|(&s, f)| s + format::encoded_len(f) <= cut)
        .count();
    assert!(got.len() >= before, "records before the cut were lost");
    assert_eq!(got[..before], want[..before]);
    if cut == 0 || cut == seg.len() || starts.contains(&cut) {
        assert!(report.is_clean() && got.len() == before, "{report:?}");
    } else if cut < FILE_HEADER_LEN {
        assert_eq!(
            report.torn_tail.map(|t| (t.offset, t.bytes)),
            Some((0, cut as u64))
        );
    } else {
        // Bytes inside the cut record may look like records of their own (a payload can hold
        // a tape); what matters is that the cut record itself is reported, not read.
        let first_bad = report
            .torn_tail
            .iter()
            .chain(&report.corrupt)
            .map(|r| r.offset)
            .min();
        assert_eq!(first_bad, Some(starts[before] as u64), "{report:?}");
    }
}

fn bytes_mode(data: &[u8]) {
    let (report, got) = read(data);
    if report.bad_header.is_some() {
        assert!(got.is_empty() && report.corrupt.is_empty() && report.torn_tail.is_none());
        return;
    }
    let mut ranges: Vec<(u64, u64)> = got
        .iter()
        .map(|(at, f)| (*at, format::encoded_len(f) as u64))
        .chain(report.corrupt.iter().map(|r| (r.offset, r.bytes)))
        .collect();
    ranges.sort_unstable();
    let mut at = if data.len() < FILE_HEADER_LEN {
        0
    } else {
        FILE_HEADER_LEN as u64
    };
    for (offset, bytes) in ranges {
        assert_eq!(offset, at, "a gap or an overlap in {report:?}");
        assert!(bytes > 0);
        at += bytes;
    }
    match report.torn_tail {
        Some(t) => {
            assert_eq!(t.offset, at);
            assert_eq!(t.offset + t.bytes, data.len() as u64);
        }
        None => assert_eq!(at, data.len() as u64),
    }
    for (_, f) in got {
        let mut seg = format::file_header().to_vec();
        format::encode(&mut seg, &f, &f.payload);
        let (report, again) = read(&seg);
        assert!(report.is_clean());
        assert_eq!(again, vec![(FILE_HEADER_LEN as u64, f)]);
    }
}
