//! The shard side of recording: turns what crosses the gateway into tape frames and offers them
//! to the persistence core. Shards never touch files; they only offer frames on their bounded
//! channel (`tape::Recorder`).
//!
//! Overflow: under `drop` a full channel drops the frame (counted by the recorder). Under
//! `block` the request that offers it waits (asynchronously: the shard keeps serving others)
//! until the channel has room. Frames offered from places that cannot wait (session ends found
//! by the clock or by a hook) go through a small shard-local backlog, flushed before the next
//! frame; a full backlog drops and counts.
//!
//! Under the `recording_shed` degradation level, message and status frames are dropped and
//! counted (`shardcat_tape_frames_shed_total`); session start and end frames are kept.
//!
//! Invariant: per session, frames are offered in the order they crossed the gateway, with one
//! exception: a request in a federated session is held until the route chose its server
//! (`hold_request`), then offered, stamped with its arrival time, before its answer; frames of
//! the session's other exchanges may be offered meanwhile.

use std::time::Duration;

use bytes::Bytes;

use crate::shard::Shard;
use crate::tape::{self, Dir, Frame, FrameKind};

/// Frames held by a shard for the `block` policy when the offering code cannot wait.
pub const BACKLOG_MAX_FRAMES: usize = 4096;

pub use crate::tape::Tap;

/// The SSE event fields a frame keeps.
pub struct SseMeta {
    pub event_id: Option<Bytes>,
}

impl Shard {
    pub fn recording(&self) -> bool {
        self.tape.is_some()
    }

    /// Under the `recording_shed` degradation level, messages and statuses are dropped and
    /// counted instead of recorded; session starts and ends still are, so tapes stay whole.
    fn shedding(&self) -> bool {
        let shed = crate::degrade::level(&self.shared) >= crate::degrade::Level::RecordingShed;
        if shed {
            crate::metrics::inc(&self.stats.tape_frames_shed);
        }
        shed
    }

    /// A new tape session, or `None` when recording is off.
    pub fn new_tape_session(&self) -> Option<u64> {
        self.tape.as_ref().map(|r| r.new_session_id())
    }

    /// Offers a frame, waiting under the `block` policy while the channel is full.
    pub async fn record(&self, frame: Frame) {
        let Some(rec) = &self.tape else { return };
        self.flush_backlog();
        if !self.backlog.borrow().is_empty() {
            // Keep the order: behind what already waits.
            self.record_later(frame);
            return;
        }
        let mut frame = frame;
        let mut pause = Duration::from_micros(50);
        loop {
            match rec.try_record(frame) {
                Ok(()) => return,
                Err(back) => {
                    frame = back;
                    crate::timer::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(5));
                }
            }
        }
    }

    /// Offers a frame without waiting (see the module note on the backlog).
    pub fn record_later(&self, frame: Frame) {
        let Some(rec) = &self.tape else { return };
        self.flush_backlog();
        let mut backlog = self.backlog.borrow_mut();
        if backlog.is_empty() {
            if let Err(back) = rec.try_record(frame) {
                backlog.push_back(back);
            }
        } else if backlog.len() < BACKLOG_MAX_FRAMES {
            backlog.push_back(frame);
        } else {
            rec.count_dropped();
        }
    }

    /// Moves backlogged frames into the channel while it has room.
    pub fn flush_backlog(&self) {
        let Some(rec) = &self.tape else { return };
        let mut backlog = self.backlog.borrow_mut();
        while let Some(f) = backlog.pop_front() {
            if let Err(back) = rec.try_record(f) {
                backlog.push_front(back);
                return;
            }
        }
    }

    /// Records one JSON-RPC message (or a batch, as one frame).
    pub async fn record_message(
        &self,
        tap: Option<Tap>,
        dir: Dir,
        status: u16,
        sse: Option<SseMeta>,
        payload: Bytes,
    ) {
        let Some(tap) = tap else { return };
        if self.shedding() {
            return;
        }
        let kind = FrameKind::Message {
            status,
            sse: sse.is_some(),
            stream: tap.stream,
            event_id: sse.and_then(|s| s.event_id),
        };
        self.record(frame(tap, dir, kind, payload)).await;
    }

    /// Holds a client's message until the server it goes to is known (a federated session:
    /// the route picks the server while the upstream call runs). `Held::record` records it
    /// then, stamped with its arrival time; an exchange dropped first records it from `Drop`.
    pub fn hold_request(&self, tap: Option<Tap>, payload: Bytes) -> Held<'_> {
        let frame = tap.filter(|_| !self.shedding()).map(|tap| {
            let kind = FrameKind::Message {
                status: 0,
                sse: false,
                stream: tap.stream,
                event_id: None,
            };
            frame(tap, Dir::ClientToServer, kind, payload)
        });
        Held { shard: self, frame }
    }

    /// Records a response that carried no JSON-RPC message (202, DELETE's 200, an empty 404).
    pub async fn record_status(&self, tap: Option<Tap>, status: u16) {
        let Some(tap) = tap else { return };
        if self.shedding() {
            return;
        }
        let kind = FrameKind::Status {
            status,
            stream: tap.stream,
        };
        self.record(frame(tap, Dir::ServerToClient, kind, Bytes::new()))
            .await;
    }

    /// Records the start of a session, with the authenticated subject's name (never its
    /// credential) when auth is on, and on a federated route its servers' names in route
    /// order (`servers`: a JSON array, which `Frame::server` indexes).
    pub async fn record_start(
        &self,
        session: u64,
        version: &str,
        (client, subject): (&str, Option<&str>),
        servers: Option<&str>,
    ) {
        // Built by hand: this runs per stateless request. `upstream_json` is escaped once;
        // versions and socket addresses need no escaping; a subject's name may.
        let subject = subject
            .map(|s| format!(",\"subject\":{}", serde_json::Value::from(s)))
            .unwrap_or_default();
        let servers = servers
            .map(|s| format!(",\"servers\":{s}"))
            .unwrap_or_default();
        let payload = Bytes::from(format!(
            "{{\"upstream\":{},\"protocol_version\":\"{version}\",\"client\":\"{client}\",\"shard\":{}{subject}{servers}}}",
            self.shared.upstream_json, self.id
        ));
        self.record(frame(
            Tap::new(session),
            Dir::Gateway,
            FrameKind::SessionStart,
            payload,
        ))
        .await;
    }

    /// Records the end of a session (from any context). `reason` is a fixed phrase (no quotes).
    pub fn record_end(&self, session: u64, reason: &'static str) {
        if !self.recording() {
            return;
        }
        debug_assert!(
            !reason.contains(['"', '\\']),
            "reason must need no JSON escaping"
        );
        let payload = Bytes::from(format!("{{\"reason\":\"{reason}\"}}"));
        let tap = Tap::new(session);
        self.record_later(frame(tap, Dir::Gateway, FrameKind::SessionEnd, payload));
    }
}

/// A client's message waiting for its server (`Shard::hold_request`). It is recorded exactly
/// once, whatever happens to the exchange: by `record`, or without waiting when dropped
/// unrecorded (the exchange was cancelled), so no frame goes missing uncounted.
pub struct Held<'a> {
    shard: &'a Shard,
    frame: Option<Frame>,
}

impl Held<'_> {
    /// Records the message as sent to member `member` of the session's route (`None`: to no
    /// one server: every server, or the gateway answered it).
    pub async fn record(mut self, member: Option<usize>) {
        if let Some(mut f) = self.frame.take() {
            f.server = tape::server_of(member);
            self.shard.record(f).await;
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.frame.take() {
            self.shard.record_later(f);
        }
    }
}

fn frame(tap: Tap, dir: Dir, kind: FrameKind, payload: Bytes) -> Frame {
    Frame {
        server: tap.server,
        session: tap.session,
        ts_us: tape::now_us(),
        dir,
        kind,
        payload,
    }
}
