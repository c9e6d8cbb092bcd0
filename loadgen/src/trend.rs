//! The soak's verdict on one sampled series: does it trend upward after the warm-up?
//!
//! A least-squares line is fitted to the samples after the warm-up (value against seconds).
//! The series fails when its slope, projected over one hour, grows by more than its bound,
//! and the slope is also clearly above zero: more than `MIN_T` standard errors. The second
//! condition keeps a flat, noisy series from failing on a chance slope in a short run; over
//! the default 30 minutes a slope past the bound is many standard errors above zero anyway.
//! The bound is the larger of a share of the series' post-warm-up median and an absolute
//! amount: RSS and fds are judged relative to their size, while gauges that follow the load
//! (sessions, connections, pool, streams) have an absolute bound, since their median is the
//! load's level, not a budget.

use serde::Serialize;

/// Share of the samples that is warm-up (at least `MIN_WARMUP` samples).
pub const WARMUP_SHARE: f64 = 0.2;
pub const MIN_WARMUP: usize = 2;
/// Fewest post-warm-up samples a line is fitted to.
pub const MIN_MEASURED: usize = 3;
/// How many standard errors above zero the slope must be to count as growth.
pub const MIN_T: f64 = 3.0;
const HOUR_S: f64 = 3600.0;

/// How much growth per hour a series is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bound {
    /// Share of the post-warm-up median (0.10: 10%).
    pub relative: f64,
    /// In the series' own unit.
    pub absolute: f64,
}

impl Bound {
    pub fn allowed(&self, median: f64) -> f64 {
        (self.relative * median.abs()).max(self.absolute)
    }
}

/// The judgement of one series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trend {
    pub warmup: usize,
    pub measured: usize,
    pub median: f64,
    /// Units per second.
    pub slope: f64,
    /// Standard error of the slope, units per second.
    pub slope_se: f64,
    /// slope × 3600.
    pub growth_per_hour: f64,
    /// What the bound allows per hour at this median.
    pub allowed_per_hour: f64,
    pub pass: bool,
    pub reason: String,
}

/// Warm-up samples out of `n`: the first 20%, at least 2.
pub fn warmup_len(n: usize) -> usize {
    ((n as f64 * WARMUP_SHARE).ceil() as usize).max(MIN_WARMUP)
}

/// Judges the series `(t_s, value)` (in time order) against `bound`.
pub fn judge(points: &[(f64, f64)], bound: Bound) -> Trend {
    let warmup = warmup_len(points.len()).min(points.len());
    let rest = &points[warmup..];
    let median = median(rest.iter().map(|p| p.1).collect());
    let allowed = bound.allowed(median);
    let mut t = Trend {
        warmup,
        measured: rest.len(),
        median,
        slope: 0.0,
        slope_se: 0.0,
        growth_per_hour: 0.0,
        allowed_per_hour: allowed,
        pass: false,
        reason: String::new(),
    };
    if rest.len() < MIN_MEASURED {
        t.reason = format!(
            "only {} samples after a warm-up of {warmup}: run longer",
            rest.len()
        );
        return t;
    }
    let Some((slope, se)) = fit(rest) else {
        t.reason = "the samples span no time".into();
        return t;
    };
    t.slope = slope;
    t.slope_se = se;
    t.growth_per_hour = slope * HOUR_S;
    let over = t.growth_per_hour > allowed;
    let significant = slope > MIN_T * se;
    t.pass = !(over && significant);
    t.reason = match (over, significant) {
        (true, true) => "grows past its bound".into(),
        (true, false) => format!("slope within {MIN_T} standard errors of 0: noise"),
        (false, _) => "within its bound".into(),
    };
    t
}

/// Least-squares slope of `points` and its standard error; `None` when every `t` is equal.
/// With only two distinct points the error is 0 (a line through both fits exactly).
pub fn fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_v = points.iter().map(|p| p.1).sum::<f64>() / n;
    let stt: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    if stt <= 0.0 {
        return None;
    }
    let stv: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_v)).sum();
    let slope = stv / stt;
    let intercept = mean_v - slope * mean_t;
    let sse: f64 = points
        .iter()
        .map(|p| (p.1 - intercept - slope * p.0).powi(2))
        .sum();
    let se = if points.len() > 2 {
        (sse / (n - 2.0) / stt).sqrt()
    } else {
        0.0
    };
    Some((slope, se))
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic noise in [-1, 1) (xorshift), so the tests never flake.
    fn noise(n: usize, seed: u64) -> Vec<f64> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 2001) as f64 / 1000.0 - 1.0
            })
            .collect()
    }

    /// A 30-minute soak sampled every 10 s: `level + slope_per_hour × t/3600 + amp × noise`.
    fn series(level: f64, slope_per_hour: f64, amp: f64, seed: u64) -> Vec<(f64, f64)> {
        noise(180, seed)
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let t = i as f64 * 10.0;
                (t, level + slope_per_hour * t / HOUR_S + amp * e)
            })
            .collect()
    }

    const RSS: Bound = Bound {
        relative: 0.10,
        absolute: 0.0,
    };
    const GAUGE: Bound = Bound {
        relative: 0.0,
        absolute: 25.0,
    };

    #[test]
    fn warmup_is_a_fifth_and_at_least_two() {
        assert_eq!(warmup_len(180), 36);
        assert_eq!(warmup_len(5), 2);
        assert_eq!(warmup_len(11), 3);
    }

    #[test]
    fn fit_finds_an_exact_line() {
        let pts: Vec<_> = (0..10).map(|i| (i as f64, 3.0 + 2.0 * i as f64)).collect();
        let (slope, se) = fit(&pts).unwrap();
        assert!((slope - 2.0).abs() < 1e-12);
        assert!(se < 1e-9);
        assert_eq!(fit(&[(1.0, 1.0), (1.0, 2.0)]), None);
    }

    #[test]
    fn a_flat_noisy_series_passes() {
        for seed in 1..50 {
            // RSS of 30 MB (in kB) wandering ±1 MB; a gauge around 48 wandering ±8.
            let rss = judge(&series(30_000.0, 0.0, 1_000.0, seed), RSS);
            assert!(rss.pass, "seed {seed}: {rss:?}");
            let g = judge(&series(48.0, 0.0, 8.0, seed), GAUGE);
            assert!(g.pass, "seed {seed}: {g:?}");
        }
    }

    #[test]
    fn a_slowly_growing_series_fails() {
        for seed in 1..50 {
            // 30 MB growing 6 MB an hour (20%) under the same noise: 3 MB over the run.
            let rss = judge(&series(30_000.0, 6_000.0, 1_000.0, seed), RSS);
            assert!(!rss.pass, "seed {seed}: {rss:?}");
            assert_eq!(rss.reason, "grows past its bound");
            // A gauge leaking one a minute (60/h), noise ±8.
            let g = judge(&series(48.0, 60.0, 8.0, seed), GAUGE);
            assert!(!g.pass, "seed {seed}: {g:?}");
        }
    }

    #[test]
    fn growth_in_the_warmup_only_passes() {
        // Climbs for the first 20%, then flat: the allocator and pools filling up.
        let pts: Vec<_> = (0..180)
            .map(|i| {
                let t = i as f64 * 10.0;
                (t, 20_000.0 + 10_000.0 * (i.min(30) as f64 / 30.0))
            })
            .collect();
        let t = judge(&pts, RSS);
        assert!(t.pass, "{t:?}");
        assert_eq!((t.warmup, t.measured), (36, 144));
        assert_eq!(t.median, 30_000.0);
    }

    #[test]
    fn a_short_noisy_run_is_not_failed_on_noise() {
        // 3 minutes: a chance slope projects far over an hour, but is not significant.
        let pts: Vec<_> = series(48.0, 0.0, 8.0, 7).into_iter().take(18).collect();
        let t = judge(&pts, GAUGE);
        assert!(t.pass, "{t:?}");
    }

    #[test]
    fn too_few_samples_fail() {
        let t = judge(&[(0.0, 1.0), (10.0, 1.0), (20.0, 1.0), (30.0, 1.0)], RSS);
        assert!(!t.pass);
        assert!(t.reason.contains("run longer"), "{}", t.reason);
    }
}
