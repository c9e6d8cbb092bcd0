//! Measurements of one worker thread, merged across threads at the end of each window.
//!
//! Latencies are microseconds in an HdrHistogram (3 significant figures). Every worker uses
//! the same bounds so histograms always merge.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Deserialize;

use crate::timeline::{Outcome, Timeline};

/// Highest latency tracked exactly; longer ones are clamped (and would fail any criterion).
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Distinct error messages kept as samples for the report.
const MAX_ERROR_SAMPLES: usize = 8;

#[derive(Debug, Clone)]
pub struct Stats {
    pub hist: Histogram<u64>,
    /// Open loop: how late loadgen itself sent (µs after the scheduled time). A high value
    /// means loadgen, not the target, fell behind.
    pub lag: Histogram<u64>,
    /// Measured units that succeeded: requests, SSE events, or churn cycles.
    pub ok: u64,
    pub errors: u64,
    /// 503 answers (admission rejections), counted apart from errors.
    pub rejected: u64,
    /// New connections opened after the first one of a user.
    pub reconnects: u64,
    /// Complete session iterations (session workload, churn).
    pub iterations: u64,
    /// Sessions opened again because the server answered 404 to the old one (call workload).
    pub reinits: u64,
    /// Open loop: sends that were scheduled before the end but never went out.
    pub missed: u64,
    pub sse: SseStats,
    pub error_samples: Vec<(String, u64)>,
    /// Per-second outcomes of the measured window (empty outside one).
    pub timeline: Timeline,
    /// Latency of each kind of request on its own (initialize, tools/call, ...), keyed by
    /// method name. Holds only kinds that were timed; `ok` counts measured units, not these.
    pub by_method: BTreeMap<&'static str, Histogram<u64>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SseStats {
    pub streams: u64,
    pub events: u64,
    /// Places where the sequence jumped forward.
    pub gaps: u64,
    /// Events never received (sum of the jumps).
    pub lost: u64,
    /// Events at or below a sequence number already seen.
    pub out_of_order: u64,
}

impl SseStats {
    fn merge(&mut self, o: &SseStats) {
        self.streams += o.streams;
        self.events += o.events;
        self.gaps += o.gaps;
        self.lost += o.lost;
        self.out_of_order += o.out_of_order;
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            hist: new_histogram(),
            lag: new_histogram(),
            ok: 0,
            errors: 0,
            rejected: 0,
            reconnects: 0,
            iterations: 0,
            reinits: 0,
            missed: 0,
            sse: SseStats::default(),
            error_samples: Vec::new(),
            timeline: Timeline::default(),
            by_method: BTreeMap::new(),
        }
    }
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

impl Stats {
    /// Records one successful measured unit that took `d`.
    pub fn record(&mut self, d: Duration) {
        self.record_us(d.as_micros() as u64);
    }

    pub fn record_us(&mut self, us: u64) {
        self.hist.saturating_record(us.clamp(1, MAX_LATENCY_US));
        self.ok += 1;
        self.timeline.record_ok(us);
    }

    /// Counts one 503 (admission rejection).
    pub fn reject(&mut self) {
        self.rejected += 1;
        self.timeline.record(Outcome::Rejected);
    }

    /// Counts one session opened again after a 404.
    pub fn reinit(&mut self) {
        self.reinits += 1;
        self.timeline.record(Outcome::Reinit);
    }

    /// Records the latency of one request of kind `method`, apart from the measured units
    /// (a churn cycle is one unit of several requests).
    pub fn record_method(&mut self, method: &'static str, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        self.by_method
            .entry(method)
            .or_insert_with(new_histogram)
            .saturating_record(us);
    }

    pub fn error(&mut self, what: String) {
        self.errors += 1;
        self.timeline.record(Outcome::Failed);
        if let Some(s) = self.error_samples.iter_mut().find(|(m, _)| *m == what) {
            s.1 += 1;
        } else if self.error_samples.len() < MAX_ERROR_SAMPLES {
            self.error_samples.push((what, 1));
        }
    }

    pub fn merge(&mut self, o: &Stats) {
        // Same bounds everywhere, so `add` cannot fail.
        let _ = self.hist.add(&o.hist);
        let _ = self.lag.add(&o.lag);
        self.ok += o.ok;
        self.errors += o.errors;
        self.rejected += o.rejected;
        self.reconnects += o.reconnects;
        self.iterations += o.iterations;
        self.reinits += o.reinits;
        self.timeline.merge(&o.timeline);
        self.missed += o.missed;
        self.sse.merge(&o.sse);
        for (m, h) in &o.by_method {
            let _ = self.by_method.entry(m).or_insert_with(new_histogram).add(h);
        }
        for (m, n) in &o.error_samples {
            if let Some(s) = self.error_samples.iter_mut().find(|(x, _)| x == m) {
                s.1 += n;
            } else if self.error_samples.len() < MAX_ERROR_SAMPLES {
                self.error_samples.push((m.clone(), *n));
            }
        }
    }

    /// Open loop: records how late a send went out.
    pub fn record_lag(&mut self, late: Duration) {
        let us = late.as_micros() as u64;
        self.lag.saturating_record(us.min(MAX_LATENCY_US));
    }

    /// Send lag at quantile `q`, in milliseconds.
    pub fn lag_ms_at(&self, q: f64) -> f64 {
        if self.lag.is_empty() {
            return 0.0;
        }
        self.lag.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Sequence accounting of one SSE stream. The demo upstream numbers events 1, 2, 3, … per
/// stream, so the first expected number is 1.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeqTracker {
    last: u64,
}

impl SeqTracker {
    pub fn observe(&mut self, seq: u64, s: &mut SseStats) {
        s.events += 1;
        if seq <= self.last {
            s.out_of_order += 1;
            return;
        }
        if seq > self.last + 1 {
            s.gaps += 1;
            s.lost += seq - self.last - 1;
        }
        self.last = seq;
    }
}

/// `{seq, ts_us}` carried in `params.data` of the demo upstream's pushed notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u64,
    pub ts_us: u64,
}

#[derive(Deserialize)]
struct Note {
    params: Option<NoteParams>,
}

#[derive(Deserialize)]
struct NoteParams {
    data: Option<StampJson>,
}

#[derive(Deserialize)]
struct StampJson {
    seq: u64,
    ts_us: u64,
}

/// Extracts the stamp from one raw SSE event (`data:` lines joined by newlines, per the SSE
/// spec). `None` for comments, keep-alives and events without a stamp.
pub fn parse_stamp(event: &[u8]) -> Option<Stamp> {
    let mut data: Vec<u8> = Vec::new();
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(v) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(v.strip_prefix(b" ").unwrap_or(v));
        }
    }
    let note: Note = serde_json::from_slice(&data).ok()?;
    let s = note.params?.data?;
    Some(Stamp {
        seq: s.seq,
        ts_us: s.ts_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_tracker_counts_gaps_loss_and_reordering() {
        let mut t = SeqTracker::default();
        let mut s = SseStats::default();
        for seq in [1, 2, 5, 6, 6, 4, 10] {
            t.observe(seq, &mut s);
        }
        assert_eq!(s.events, 7);
        assert_eq!(s.gaps, 2, "2→5 and 6→10");
        assert_eq!(s.lost, 2 + 3);
        assert_eq!(s.out_of_order, 2, "the repeated 6 and the late 4");
    }

    #[test]
    fn first_event_after_one_counts_as_loss() {
        let mut t = SeqTracker::default();
        let mut s = SseStats::default();
        t.observe(3, &mut s);
        assert_eq!((s.gaps, s.lost), (1, 2));
    }

    #[test]
    fn stamp_parses_from_demo_event() {
        let ev = b"id: 7\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"level\":\"info\",\"data\":{\"seq\":7,\"ts_us\":123}}}\n\n";
        assert_eq!(parse_stamp(ev), Some(Stamp { seq: 7, ts_us: 123 }));
        assert_eq!(parse_stamp(b": keepalive\n\n"), None);
    }

    #[test]
    fn merge_adds_counts_and_histograms() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        a.record_us(100);
        b.record_us(300);
        b.error("x".into());
        b.error("x".into());
        a.merge(&b);
        assert_eq!(a.ok, 2);
        assert_eq!(a.hist.len(), 2);
        assert_eq!(a.errors, 2);
        assert_eq!(a.error_samples, vec![("x".to_string(), 2)]);
    }

    #[test]
    fn per_method_latencies_merge_apart_from_units() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        a.record_method("initialize", Duration::from_micros(900));
        b.record_method("initialize", Duration::from_micros(1100));
        b.record_method("tools/call", Duration::from_micros(50));
        a.merge(&b);
        assert_eq!(a.ok, 0, "per-method records are not measured units");
        assert_eq!(a.by_method["initialize"].len(), 2);
        assert_eq!(a.by_method["tools/call"].len(), 1);
    }
}
