//! The segment format: file header, record encoding, and the scanner that reads records back
//! and tells a torn tail from mid-file corruption (layout in `tape`'s module comment).
//!
//! Invariants: `encode` then `decode` returns the frame it was given (event ids longer than
//! `MAX_EVENT_ID_BYTES` excepted: they are cut); the scanner never panics on any input.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{Dir, Frame, FrameKind, MAX_EVENT_ID_BYTES, MAX_PAYLOAD_BYTES};

pub const MAGIC: &[u8; 8] = b"SHCTAPE\0";
pub const VERSION: u32 = 1;
pub const FILE_HEADER_LEN: usize = 16;
/// `u32 len | u32 crc`.
pub const RECORD_PREFIX_LEN: usize = 8;
pub const FRAME_HEADER_LEN: usize = 28;
/// Largest body a reader accepts; anything longer is corruption.
pub const MAX_BODY_LEN: usize = FRAME_HEADER_LEN + MAX_EVENT_ID_BYTES + MAX_PAYLOAD_BYTES;

const FLAG_SSE: u8 = 1;

pub fn file_header() -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// `DIR/segments`.
pub fn segments_dir(dir: &Path) -> PathBuf {
    dir.join("segments")
}

pub fn segment_path(dir: &Path, seq: u32) -> PathBuf {
    segments_dir(dir).join(format!("{seq:08}.tape"))
}

/// Sequence numbers of the segments in `dir`, ascending.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<u32>> {
    let mut seqs = Vec::new();
    let rd = match std::fs::read_dir(segments_dir(dir)) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(seqs),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name.strip_suffix(".tape").and_then(|s| s.parse().ok()) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Bytes `encode` appends for this frame.
pub fn encoded_len(frame: &Frame) -> usize {
    RECORD_PREFIX_LEN + FRAME_HEADER_LEN + event_id(frame).len() + frame.payload.len()
}

fn event_id(frame: &Frame) -> &[u8] {
    match &frame.kind {
        FrameKind::Message {
            event_id: Some(e), ..
        } => &e[..e.len().min(MAX_EVENT_ID_BYTES)],
        _ => &[],
    }
}

/// Appends one record for `frame` to `out`, with `payload` in place of the frame's own (the
/// masked copy, when masking changed it).
pub fn encode(out: &mut Vec<u8>, frame: &Frame, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_PAYLOAD_BYTES);
    let eid = event_id(frame);
    let body_len = FRAME_HEADER_LEN + eid.len() + payload.len();
    let start = out.len();
    out.reserve(RECORD_PREFIX_LEN + body_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let (kind, flags, status, stream) = match &frame.kind {
        FrameKind::SessionStart => (0u8, 0u8, 0u16, 0u32),
        FrameKind::SessionEnd => (1, 0, 0, 0),
        FrameKind::Message {
            status,
            sse,
            stream,
            ..
        } => (2, if *sse { FLAG_SSE } else { 0 }, *status, *stream),
        FrameKind::Status { status, stream } => (3, 0, *status, *stream),
    };
    let dir = match frame.dir {
        Dir::ClientToServer => 0u8,
        Dir::ServerToClient => 1,
        Dir::Gateway => 2,
    };
    out.extend_from_slice(&frame.session.to_le_bytes());
    out.extend_from_slice(&frame.ts_us.to_le_bytes());
    // A route has at most 64 servers (`MAX_ROUTE_SERVERS`): index + 1 always fits.
    debug_assert!(frame.server.is_none_or(|m| m < u8::MAX));
    let server = frame.server.map_or(0, |m| m.saturating_add(1));
    out.extend_from_slice(&[dir, kind, flags, server]);
    out.extend_from_slice(&status.to_le_bytes());
    out.extend_from_slice(&(eid.len() as u16).to_le_bytes());
    out.extend_from_slice(&stream.to_le_bytes());
    out.extend_from_slice(eid);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + RECORD_PREFIX_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(out.len() - start, RECORD_PREFIX_LEN + body_len);
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

/// Decodes a record body (CRC already checked). `body` is a slice of the segment's `Bytes`, so
/// the payload is shared, not copied.
pub fn decode(body: &Bytes) -> Option<Frame> {
    if body.len() < FRAME_HEADER_LEN {
        return None;
    }
    let b = &body[..];
    let dir = match b[16] {
        0 => Dir::ClientToServer,
        1 => Dir::ServerToClient,
        2 => Dir::Gateway,
        _ => return None,
    };
    let status = u16_at(b, 20);
    let eid_len = usize::from(u16_at(b, 22));
    let stream = u32_at(b, 24);
    let payload_at = FRAME_HEADER_LEN + eid_len;
    if payload_at > b.len() || eid_len > MAX_EVENT_ID_BYTES {
        return None;
    }
    // Only a message carries an event id: the writer never puts one elsewhere, and one there
    // would be dropped when the frame is written again (the record would not round-trip).
    if eid_len > 0 && b[17] != 2 {
        return None;
    }
    let kind = match b[17] {
        0 => FrameKind::SessionStart,
        1 => FrameKind::SessionEnd,
        2 => FrameKind::Message {
            status,
            sse: b[18] & FLAG_SSE != 0,
            stream,
            event_id: (eid_len > 0).then(|| body.slice(FRAME_HEADER_LEN..payload_at)),
        },
        3 => FrameKind::Status { status, stream },
        _ => return None,
    };
    Some(Frame {
        session: u64_at(b, 0),
        ts_us: u64_at(b, 8),
        dir,
        // 0: none, as in every record written before the byte carried the server.
        server: b[19].checked_sub(1),
        kind,
        payload: body.slice(payload_at..),
    })
}

/// A run of bytes the scanner could not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadRange {
    pub offset: u64,
    pub bytes: u64,
}

/// What scanning one segment found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    pub bytes: u64,
    /// Intact records read.
    pub records: u64,
    /// An unreadable end with no intact record after it (a write cut short by a crash).
    pub torn_tail: Option<BadRange>,
    /// Unreadable ranges followed by intact records.
    pub corrupt: Vec<BadRange>,
    /// The file header is missing or wrong; nothing was read.
    pub bad_header: Option<String>,
}

impl ScanReport {
    pub fn is_clean(&self) -> bool {
        self.torn_tail.is_none() && self.corrupt.is_empty() && self.bad_header.is_none()
    }
}

/// The intact record starting at `at`, as (body, record length).
fn record_at(data: &Bytes, at: usize) -> Option<(Frame, usize)> {
    let rest = data.len().checked_sub(at)?;
    if rest < RECORD_PREFIX_LEN {
        return None;
    }
    let len = u32_at(data, at) as usize;
    if !(FRAME_HEADER_LEN..=MAX_BODY_LEN).contains(&len) || len > rest - RECORD_PREFIX_LEN {
        return None;
    }
    let body_at = at + RECORD_PREFIX_LEN;
    if crc32fast::hash(&data[body_at..body_at + len]) != u32_at(data, at + 4) {
        return None;
    }
    let frame = decode(&data.slice(body_at..body_at + len))?;
    Some((frame, RECORD_PREFIX_LEN + len))
}

/// Reads every intact record of a segment held in `data`, calling `on(offset, frame)` for each.
pub fn scan(data: &Bytes, mut on: impl FnMut(u64, Frame)) -> ScanReport {
    let mut report = ScanReport {
        bytes: data.len() as u64,
        ..ScanReport::default()
    };
    if data.len() < FILE_HEADER_LEN {
        // Created, then cut before its header was whole.
        if !data.is_empty() {
            report.torn_tail = Some(BadRange {
                offset: 0,
                bytes: data.len() as u64,
            });
        }
        return report;
    }
    if &data[..8] != MAGIC || u32_at(data, 8) != VERSION {
        report.bad_header = Some("not a version-1 shardcat tape segment".into());
        return report;
    }
    let mut at = FILE_HEADER_LEN;
    while at < data.len() {
        if let Some((frame, n)) = record_at(data, at) {
            on(at as u64, frame);
            report.records += 1;
            at += n;
            continue;
        }
        // Look for the next intact record; none means the tail is torn.
        match (at + 1..data.len()).find(|&p| record_at(data, p).is_some()) {
            Some(next) => {
                report.corrupt.push(BadRange {
                    offset: at as u64,
                    bytes: (next - at) as u64,
                });
                at = next;
            }
            None => {
                report.torn_tail = Some(BadRange {
                    offset: at as u64,
                    bytes: (data.len() - at) as u64,
                });
                break;
            }
        }
    }
    report
}

/// Reads and scans one segment file.
pub fn scan_file(path: &Path, on: impl FnMut(u64, Frame)) -> std::io::Result<ScanReport> {
    let data = Bytes::from(std::fs::read(path)?);
    Ok(scan(&data, on))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames() -> Vec<Frame> {
        let msg = |dir, status, sse, eid: Option<&'static str>, p: &'static str| Frame {
            server: None,
            session: 0x0100_0001_0000_0007,
            ts_us: 1_700_000_000_000_000,
            dir,
            kind: FrameKind::Message {
                status,
                sse,
                stream: 3,
                event_id: eid.map(|e| Bytes::from_static(e.as_bytes())),
            },
            payload: Bytes::from_static(p.as_bytes()),
        };
        let mut answered = msg(
            Dir::ServerToClient,
            200,
            false,
            None,
            r#"{"jsonrpc":"2.0","id":2,"result":{"content":[]}}"#,
        );
        // The largest index a record holds: a route has at most 64 servers.
        answered.server = Some(254);
        vec![
            Frame {
                server: None,
                session: 7,
                ts_us: 1,
                dir: Dir::Gateway,
                kind: FrameKind::SessionStart,
                payload: Bytes::from_static(br#"{"upstream":"http://u/mcp"}"#),
            },
            msg(
                Dir::ClientToServer,
                0,
                false,
                None,
                r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            ),
            msg(
                Dir::ServerToClient,
                200,
                true,
                Some("ev-1"),
                r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            ),
            Frame {
                server: Some(0),
                ..msg(
                    Dir::ClientToServer,
                    0,
                    false,
                    None,
                    r#"{"jsonrpc":"2.0","id":2,"method":"tools/call"}"#,
                )
            },
            answered,
            Frame {
                server: None,
                session: u64::MAX,
                ts_us: u64::MAX,
                dir: Dir::ServerToClient,
                kind: FrameKind::Status {
                    status: 202,
                    stream: u32::MAX,
                },
                payload: Bytes::new(),
            },
            Frame {
                server: None,
                session: 7,
                ts_us: 9,
                dir: Dir::Gateway,
                kind: FrameKind::SessionEnd,
                payload: Bytes::from_static(br#"{"reason":"delete"}"#),
            },
        ]
    }

    fn segment(frames: &[Frame]) -> (Vec<u8>, Vec<usize>) {
        let mut out = file_header().to_vec();
        let mut starts = Vec::new();
        for f in frames {
            starts.push(out.len());
            encode(&mut out, f, &f.payload);
            assert_eq!(out.len() - starts.last().unwrap(), encoded_len(f));
        }
        (out, starts)
    }

    fn read(data: Vec<u8>) -> (ScanReport, Vec<Frame>) {
        let mut got = Vec::new();
        let r = scan(&Bytes::from(data), |_, f| got.push(f));
        (r, got)
    }

    #[test]
    fn encode_decode_round_trip() {
        let fs = frames();
        let (data, _) = segment(&fs);
        let (r, got) = read(data);
        assert!(r.is_clean(), "{r:?}");
        assert_eq!(r.records, fs.len() as u64);
        assert_eq!(got, fs);
    }

    #[test]
    fn server_byte_round_trips_and_zero_reads_as_none() {
        let mut f = frames()[1].clone();
        for (server, byte) in [(None, 0u8), (Some(0), 1), (Some(1), 2), (Some(63), 64)] {
            f.server = server;
            let (data, starts) = segment(std::slice::from_ref(&f));
            // The byte after dir, kind and flags in the frame header.
            let at = starts[0] + RECORD_PREFIX_LEN + 19;
            assert_eq!(data[at], byte, "{server:?}");
            let (r, got) = read(data);
            assert!(r.is_clean(), "{r:?}");
            assert_eq!(got, [f.clone()]);
        }
    }

    #[test]
    fn a_record_written_before_the_server_byte_names_no_server() {
        // A version-1 record as the writer made it while the byte was reserved, built here by
        // hand: header [dir 0, kind 2 (message), flags 0, 0], status 0, no event id, stream 3.
        let payload = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        let mut body = Vec::new();
        body.extend_from_slice(&7u64.to_le_bytes());
        body.extend_from_slice(&42u64.to_le_bytes());
        body.extend_from_slice(&[0, 2, 0, 0]);
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&3u32.to_le_bytes());
        body.extend_from_slice(payload);
        let mut data = file_header().to_vec();
        data.extend_from_slice(&(body.len() as u32).to_le_bytes());
        data.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        data.extend_from_slice(&body);
        let (r, got) = read(data);
        assert!(r.is_clean(), "{r:?}");
        let want = Frame {
            session: 7,
            ts_us: 42,
            dir: Dir::ClientToServer,
            server: None,
            kind: FrameKind::Message {
                status: 0,
                sse: false,
                stream: 3,
                event_id: None,
            },
            payload: Bytes::from_static(payload),
        };
        assert_eq!(got, [want]);
    }

    #[test]
    fn crc_detects_every_bit_flip() {
        let fs = frames();
        let (data, starts) = segment(&fs[..2]);
        // Flip every bit of the second (last) record, prefix included.
        for byte in starts[1]..data.len() {
            for bit in 0..8 {
                let mut d = data.clone();
                d[byte] ^= 1 << bit;
                let (r, got) = read(d);
                assert_eq!(got, fs[..1], "flip at {byte}.{bit} went unnoticed");
                assert!(r.torn_tail.is_some() || !r.corrupt.is_empty());
            }
        }
        // A flip in the first record of two is mid-file corruption; the second still reads.
        let mut d = data.clone();
        d[starts[0] + 12] ^= 0x10;
        let (r, got) = read(d);
        assert_eq!(r.corrupt.len(), 1, "{r:?}");
        assert_eq!(r.corrupt[0].offset, starts[0] as u64);
        assert_eq!(got, fs[1..2]);
    }

    #[test]
    fn torn_tail_at_every_offset_of_the_last_record() {
        let fs = frames();
        let (data, starts) = segment(&fs);
        let last = *starts.last().unwrap();
        for cut in last + 1..data.len() {
            let (r, got) = read(data[..cut].to_vec());
            assert_eq!(got, fs[..fs.len() - 1], "cut at {cut}");
            assert!(r.corrupt.is_empty(), "cut at {cut}: {r:?}");
            let t = r.torn_tail.expect("torn tail");
            assert_eq!((t.offset, t.bytes), (last as u64, (cut - last) as u64));
        }
        // Cut exactly at a record boundary: clean.
        let (r, got) = read(data[..last].to_vec());
        assert!(r.is_clean());
        assert_eq!(got.len(), fs.len() - 1);
        // A segment cut inside its file header is a torn tail too.
        let (r, _) = read(data[..5].to_vec());
        assert_eq!(r.torn_tail.map(|t| t.offset), Some(0));
    }

    #[test]
    fn zeroed_tail_is_torn_and_foreign_file_is_reported() {
        let fs = frames();
        let (mut data, _) = segment(&fs);
        data.extend_from_slice(&[0u8; 300]);
        let (r, got) = read(data);
        assert_eq!(got, fs);
        assert!(r.torn_tail.is_some() && r.corrupt.is_empty());
        let (r, got) = read(b"definitely not a tape segment".to_vec());
        assert!(r.bad_header.is_some() && got.is_empty());
    }
}
