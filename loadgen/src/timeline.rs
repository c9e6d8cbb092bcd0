//! A per-second timeline of outcomes over one measured window, for failover runs: how many
//! requests succeeded, failed and were rejected in each second, and how many sessions had to
//! be opened again; the slowest success of each second and how many took over
//! [`SLOW_US`] (where in the window a latency tail came from); and when the first and last
//! error of the window happened.
//!
//! Each worker keeps its own (inside its `Stats`), with one row per second of the window
//! allocated up front, so recording is an index into a Vec; the controller merges them with
//! the other stats. Every worker is given the same start `Instant`, so rows line up.

use std::time::{Duration, Instant};

use serde::Serialize;

/// One second of the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Second {
    pub ok: u64,
    pub failed: u64,
    pub rejected: u64,
    /// Sessions opened again after the server no longer knew theirs (404).
    pub reinits: u64,
    /// The slowest success of this second, µs.
    pub max_us: u64,
    /// Successes that took longer than [`SLOW_US`].
    pub slow: u64,
}

/// A success slower than this counts as slow in its second's row (10 ms: far above the p99 of
/// any loopback run below saturation, so the count shows stalls, not load).
pub const SLOW_US: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    Rejected,
    Reinit,
}

#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// The window's start; `None`: not recording (setup phases, drains).
    start: Option<Instant>,
    rows: Vec<Second>,
    /// Errors in the window: offsets from the start of the first and the last.
    first_error: Option<Duration>,
    last_error: Option<Duration>,
}

impl Timeline {
    /// A timeline for a window of `len` starting at `start`: one row per started second, and
    /// one more for whatever lands after the nominal end (the window's true length is a
    /// little longer). Anything later still is counted in that last row.
    pub fn new(start: Instant, len: Duration) -> Timeline {
        let secs = len.as_secs() as usize + usize::from(len.subsec_nanos() > 0) + 1;
        Timeline {
            start: Some(start),
            rows: vec![Second::default(); secs],
            first_error: None,
            last_error: None,
        }
    }

    /// Counts one outcome at the current time (nothing when not recording; an event before
    /// the start, from a request sent before it, counts in second 0).
    pub fn record(&mut self, what: Outcome) {
        if let Some(start) = self.start {
            self.record_at(Instant::now().saturating_duration_since(start), what);
        }
    }

    /// Counts one success that took `us` at the current time.
    pub fn record_ok(&mut self, us: u64) {
        if let Some(start) = self.start {
            self.record_ok_at(Instant::now().saturating_duration_since(start), us);
        }
    }

    /// Counts one success that took `us`, `at` after the start.
    pub fn record_ok_at(&mut self, at: Duration, us: u64) {
        self.record_at(at, Outcome::Ok);
        if let Some(row) = self.row_at(at) {
            row.max_us = row.max_us.max(us);
            row.slow += u64::from(us > SLOW_US);
        }
    }

    /// The row of the second `at` falls in (the last row for anything later).
    fn row_at(&mut self, at: Duration) -> Option<&mut Second> {
        let last = self.rows.len().checked_sub(1)?;
        self.rows.get_mut((at.as_secs() as usize).min(last))
    }

    /// Counts one outcome `at` after the start.
    pub fn record_at(&mut self, at: Duration, what: Outcome) {
        let Some(row) = self.row_at(at) else {
            return;
        };
        match what {
            Outcome::Ok => row.ok += 1,
            Outcome::Rejected => row.rejected += 1,
            Outcome::Reinit => row.reinits += 1,
            Outcome::Failed => {
                row.failed += 1;
                self.first_error = Some(self.first_error.map_or(at, |f| f.min(at)));
                self.last_error = Some(self.last_error.map_or(at, |l| l.max(at)));
            }
        }
    }

    /// Adds another worker's timeline of the same window (or takes it, if this one is empty).
    pub fn merge(&mut self, o: &Timeline) {
        if o.start.is_none() {
            return;
        }
        if self.start.is_none() {
            *self = o.clone();
            return;
        }
        if self.rows.len() < o.rows.len() {
            self.rows.resize(o.rows.len(), Second::default());
        }
        for (a, b) in self.rows.iter_mut().zip(&o.rows) {
            a.ok += b.ok;
            a.failed += b.failed;
            a.rejected += b.rejected;
            a.reinits += b.reinits;
            a.max_us = a.max_us.max(b.max_us);
            a.slow += b.slow;
        }
        let min = |a: Option<Duration>, b: Option<Duration>| a.into_iter().chain(b).min();
        let max = |a: Option<Duration>, b: Option<Duration>| a.into_iter().chain(b).max();
        self.first_error = min(self.first_error, o.first_error);
        self.last_error = max(self.last_error, o.last_error);
    }

    pub fn rows(&self) -> &[Second] {
        &self.rows
    }

    /// Seconds from the window's start to its first and last error.
    pub fn error_span_s(&self) -> Option<(f64, f64)> {
        Some((
            self.first_error?.as_secs_f64(),
            self.last_error?.as_secs_f64(),
        ))
    }
}

/// The CSV of a timeline's rows: a header, then one row per second (`second` is the offset
/// of its start from the window's start).
pub fn csv(rows: &[Second]) -> String {
    let mut out = String::from(CSV_HEADER);
    for (i, r) in rows.iter().enumerate() {
        out.push_str(&format!(
            "{i},{},{},{},{},{},{}\n",
            r.ok, r.failed, r.rejected, r.reinits, r.max_us, r.slow
        ));
    }
    out
}

pub const CSV_HEADER: &str = "second,ok,failed,rejected,reinits,max_us,slow\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn one_row_per_second_plus_one_for_the_tail() {
        let t = Timeline::new(Instant::now(), Duration::from_secs(3));
        assert_eq!(t.rows().len(), 4);
        let t = Timeline::new(Instant::now(), ms(2500));
        assert_eq!(t.rows().len(), 4, "0, 1, 2 and the tail");
    }

    #[test]
    fn outcomes_land_in_their_second_and_late_ones_in_the_last_row() {
        let mut t = Timeline::new(Instant::now(), Duration::from_secs(2));
        t.record_at(ms(10), Outcome::Ok);
        t.record_at(ms(999), Outcome::Ok);
        t.record_at(ms(1000), Outcome::Failed);
        t.record_at(ms(1500), Outcome::Rejected);
        t.record_at(ms(1700), Outcome::Reinit);
        t.record_at(Duration::from_secs(60), Outcome::Ok);
        let r = t.rows();
        assert_eq!((r[0].ok, r[0].failed), (2, 0));
        assert_eq!(
            r[1],
            Second {
                ok: 0,
                failed: 1,
                rejected: 1,
                reinits: 1,
                ..Second::default()
            }
        );
        assert_eq!(r[2].ok, 1, "past the end: the last row");
        assert_eq!(t.error_span_s(), Some((1.0, 1.0)));
    }

    #[test]
    fn each_second_keeps_its_slowest_success_and_counts_the_slow_ones() {
        let start = Instant::now();
        let mut a = Timeline::new(start, Duration::from_secs(2));
        let mut b = Timeline::new(start, Duration::from_secs(2));
        a.record_ok_at(ms(10), 900);
        a.record_ok_at(ms(20), SLOW_US + 1);
        a.record_ok_at(ms(1100), SLOW_US);
        b.record_ok_at(ms(500), 40_000);
        a.merge(&b);
        let r = a.rows();
        assert_eq!((r[0].ok, r[0].max_us, r[0].slow), (3, 40_000, 2));
        assert_eq!((r[1].ok, r[1].max_us, r[1].slow), (1, SLOW_US, 0));
    }

    #[test]
    fn not_recording_counts_nothing() {
        let mut t = Timeline::default();
        t.record(Outcome::Failed);
        t.record_at(ms(5), Outcome::Ok);
        assert!(t.rows().is_empty());
        assert_eq!(t.error_span_s(), None);
    }

    #[test]
    fn merge_adds_rows_and_widens_the_error_span() {
        let start = Instant::now();
        let mut a = Timeline::new(start, Duration::from_secs(2));
        let mut b = Timeline::new(start, Duration::from_secs(2));
        a.record_at(ms(1200), Outcome::Failed);
        a.record_at(ms(100), Outcome::Ok);
        b.record_at(ms(300), Outcome::Failed);
        b.record_at(ms(2100), Outcome::Failed);
        b.record_at(ms(150), Outcome::Ok);
        let mut none = Timeline::default();
        none.merge(&a);
        none.merge(&b);
        none.merge(&Timeline::default());
        assert_eq!(none.rows()[0].ok, 2);
        assert_eq!(
            none.rows().iter().map(|r| r.failed).collect::<Vec<_>>(),
            [1, 1, 1]
        );
        assert_eq!(none.error_span_s(), Some((0.3, 2.1)));
    }

    #[test]
    fn csv_has_a_header_and_a_row_per_second() {
        let mut t = Timeline::new(Instant::now(), Duration::from_secs(1));
        t.record_at(ms(1), Outcome::Ok);
        t.record_at(ms(1001), Outcome::Failed);
        assert_eq!(
            csv(t.rows()),
            "second,ok,failed,rejected,reinits,max_us,slow\n0,1,0,0,0,0,0\n1,0,1,0,0,0,0\n"
        );
    }

    #[test]
    fn the_clock_records_into_second_zero_right_after_the_start() {
        let mut t = Timeline::new(Instant::now(), Duration::from_secs(5));
        t.record(Outcome::Ok);
        assert_eq!(t.rows()[0].ok, 1);
    }
}
