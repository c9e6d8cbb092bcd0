//! Open-loop pacing. Each virtual user sends on a fixed schedule, whether or not earlier
//! responses came back; latency is measured from the scheduled send time, so a stalled target
//! shows up as latency instead of silently lowering the offered load (coordinated omission).

use std::time::{Duration, Instant};

/// Interval between one user's sends when `users` share `rate` requests per second.
pub fn per_user_period(rate: f64, users: usize) -> Duration {
    Duration::from_secs_f64(users.max(1) as f64 / rate)
}

/// When user `slot` of `slots` first sends: starts are spread evenly over one period, so the
/// users do not fire in lockstep.
pub fn first_send(start: Instant, period: Duration, slot: usize, slots: usize) -> Instant {
    let frac = slot as f64 / slots.max(1) as f64;
    start + period.mul_f64(frac)
}

/// One user's schedule.
#[derive(Debug, Clone)]
pub struct Pacer {
    next: Instant,
    period: Duration,
}

impl Pacer {
    pub fn new(start: Instant, period: Duration, slot: usize, slots: usize) -> Pacer {
        Pacer {
            next: first_send(start, period, slot, slots),
            period,
        }
    }

    /// Changes the interval from the next send on (a ramp step changes the per-user share).
    pub fn set_period(&mut self, period: Duration) {
        self.period = period;
    }

    /// The scheduled time of the next send, advancing the schedule. It may lie in the past
    /// when the user fell behind: then the send goes out at once and the delay counts.
    pub fn next_slot(&mut self) -> Instant {
        let t = self.next;
        self.next += self.period;
        t
    }

    /// Sends scheduled before `end` that will now never go out.
    pub fn missed_before(&self, end: Instant) -> u64 {
        if end <= self.next || self.period.is_zero() {
            return 0;
        }
        let behind = end - self.next;
        (behind.as_nanos() / self.period.as_nanos()) as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_shares_the_rate() {
        assert_eq!(per_user_period(1000.0, 10), Duration::from_millis(10));
        assert_eq!(per_user_period(50.0, 1), Duration::from_millis(20));
    }

    #[test]
    fn starts_are_staggered_over_one_period() {
        let t0 = Instant::now();
        let p = Duration::from_millis(100);
        let starts: Vec<_> = (0..4).map(|i| first_send(t0, p, i, 4) - t0).collect();
        assert_eq!(starts, [0, 25, 50, 75].map(Duration::from_millis).to_vec());
    }

    #[test]
    fn schedule_is_fixed_regardless_of_progress() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, Duration::from_millis(10), 1, 2);
        assert_eq!(p.next_slot() - t0, Duration::from_millis(5));
        assert_eq!(p.next_slot() - t0, Duration::from_millis(15));
        // Next slot is at 25 ms: by 50 ms, slots 25, 35, 45 were missed.
        assert_eq!(p.missed_before(t0 + Duration::from_millis(50)), 3);
        assert_eq!(p.missed_before(t0 + Duration::from_millis(20)), 0);
        p.set_period(Duration::from_millis(1));
        p.next_slot();
        assert_eq!(p.next_slot() - t0, Duration::from_millis(26));
    }
}
