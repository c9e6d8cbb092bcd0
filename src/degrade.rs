//! Degradation levels: how much the gateway still takes on as its named bounds fill up.
//!
//! `Full` → `RecordingShed` (recorded messages are dropped and counted instead of offered to the
//! persistence core) → `SessionsRejected` (initialize gets 503) → `Protective` (only requests of
//! existing sessions are served; stateless and sessionless ones get 503 too).
//!
//! Occupancy is the fullest of the measured bounds: connections and sessions against their
//! maxima (sessions only when eviction is off: with it, a full table evicts idle sessions),
//! undelivered SSE events against `degradation.max_pending_events`, and resident memory
//! against `degradation.max_memory_bytes` (when set). A monitor thread, off the request path,
//! measures every `check_interval_ms` and publishes the level in an atomic the shards read
//! (a relaxed load, no lock). Going up is immediate; going down waits until occupancy is
//! `hysteresis` below the level's threshold, so the level does not flap at a boundary. Every
//! change is logged and counted.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::shard::Shared;

/// A degradation level (ordered: higher sheds more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Full = 0,
    RecordingShed = 1,
    SessionsRejected = 2,
    Protective = 3,
}

impl Level {
    pub fn from_u8(v: u8) -> Level {
        match v {
            0 => Level::Full,
            1 => Level::RecordingShed,
            2 => Level::SessionsRejected,
            _ => Level::Protective,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Full => "full",
            Level::RecordingShed => "recording_shed",
            Level::SessionsRejected => "sessions_rejected",
            Level::Protective => "protective",
        }
    }

    fn down(self) -> Level {
        Level::from_u8((self as u8).saturating_sub(1))
    }
}

pub use crate::config::Thresholds;

/// Occupancy at which level `l` begins.
fn start(t: &Thresholds, l: Level) -> f64 {
    match l {
        Level::Full => 0.0,
        Level::RecordingShed => t.recording_shed_at,
        Level::SessionsRejected => t.sessions_rejected_at,
        Level::Protective => t.protective_at,
    }
}

/// The level after measuring `occupancy` at level `current`: up at once to the highest level
/// whose threshold is reached; down one level at a time while occupancy is `hysteresis` below
/// the current level's threshold.
pub fn next(current: Level, occupancy: f64, t: &Thresholds) -> Level {
    let reached = [
        Level::Protective,
        Level::SessionsRejected,
        Level::RecordingShed,
    ]
    .into_iter()
    .find(|&l| occupancy >= start(t, l))
    .unwrap_or(Level::Full);
    if reached >= current {
        return reached;
    }
    let mut level = current;
    while level > Level::Full && occupancy < start(t, level) - t.hysteresis {
        level = level.down();
    }
    level
}

/// What was measured, each as a fraction of its bound.
#[derive(Debug, Default, Clone, Copy)]
pub struct Occupancy {
    pub connections: f64,
    pub sessions: f64,
    pub pending_events: f64,
    pub memory: f64,
}

impl Occupancy {
    pub fn max(&self) -> f64 {
        self.connections
            .max(self.sessions)
            .max(self.pending_events)
            .max(self.memory)
    }
}

fn fraction(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 / of as f64
    }
}

/// Measures the named bounds now.
pub fn measure(shared: &Shared) -> Occupancy {
    let t = &shared.config.degradation;
    let pending: i64 = shared
        .stats
        .iter()
        .map(|s| s.sse_pending_events.load(Relaxed))
        .sum();
    let memory = if t.max_memory_bytes > 0 {
        fraction(resident_bytes(), t.max_memory_bytes)
    } else {
        0.0
    };
    Occupancy {
        connections: fraction(
            shared.connections.current() as u64,
            shared.connections.max() as u64,
        ),
        // With eviction on, a full session table makes room by evicting idle sessions (and
        // answers 503 when none is idle): it is not pressure by itself.
        sessions: if shared.config.timeouts.session_evict_idle.is_some() {
            0.0
        } else {
            fraction(
                shared.sessions.current() as u64,
                shared.sessions.max() as u64,
            )
        },
        pending_events: fraction(pending.max(0) as u64, t.max_pending_events),
        memory,
    }
}

/// The process's resident set, from /proc/self/statm (0 when unreadable).
pub fn resident_bytes() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    text.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

/// The current level, as the shards read it.
pub fn level(shared: &Shared) -> Level {
    Level::from_u8(shared.level.load(Relaxed))
}

/// Measures and publishes the level until the gateway drains. Runs on its own thread.
pub fn monitor(shared: Arc<Shared>) {
    let t = shared.config.degradation.clone();
    while !shared.draining.load(Relaxed) {
        std::thread::sleep(t.check_interval);
        let occ = measure(&shared);
        let now = level(&shared);
        let then = next(now, occ.max(), &t);
        shared
            .occupancy_permille
            .store((occ.max() * 1000.0) as u64, Relaxed);
        if then == now {
            continue;
        }
        shared.level.store(then as u8, Relaxed);
        shared.level_changes.fetch_add(1, Relaxed);
        let msg = format!(
            "degradation: {} -> {} (connections {:.0}%, sessions {:.0}%, pending events {:.0}%, memory {:.0}%)",
            now.name(),
            then.name(),
            occ.connections * 100.0,
            occ.sessions * 100.0,
            occ.pending_events * 100.0,
            occ.memory * 100.0
        );
        if then > now {
            log::warn!("{msg}");
        } else {
            log::info!("{msg}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t() -> Thresholds {
        Thresholds {
            recording_shed_at: 0.8,
            sessions_rejected_at: 0.9,
            protective_at: 0.97,
            hysteresis: 0.05,
            check_interval: Duration::from_millis(100),
            max_memory_bytes: 0,
            max_pending_events: 100,
        }
    }

    #[test]
    fn levels_rise_at_once_to_the_highest_threshold_reached() {
        assert_eq!(next(Level::Full, 0.5, &t()), Level::Full);
        assert_eq!(next(Level::Full, 0.8, &t()), Level::RecordingShed);
        assert_eq!(next(Level::Full, 0.95, &t()), Level::SessionsRejected);
        assert_eq!(next(Level::Full, 1.0, &t()), Level::Protective);
        assert_eq!(next(Level::RecordingShed, 0.99, &t()), Level::Protective);
    }

    #[test]
    fn levels_fall_only_below_threshold_minus_hysteresis() {
        let th = t();
        // Just under the threshold: stays (this is what stops flapping at 0.90 ± noise).
        assert_eq!(
            next(Level::SessionsRejected, 0.89, &th),
            Level::SessionsRejected
        );
        assert_eq!(
            next(Level::SessionsRejected, 0.851, &th),
            Level::SessionsRejected
        );
        // Below 0.85 it steps down, and further while each lower threshold is cleared too.
        assert_eq!(
            next(Level::SessionsRejected, 0.84, &th),
            Level::RecordingShed
        );
        assert_eq!(next(Level::SessionsRejected, 0.70, &th), Level::Full);
        assert_eq!(next(Level::Protective, 0.93, &th), Level::Protective);
        assert_eq!(next(Level::Protective, 0.0, &th), Level::Full);
        assert_eq!(next(Level::Full, 0.0, &th), Level::Full);
    }

    #[test]
    fn occupancy_is_the_fullest_bound_and_memory_is_read() {
        let o = Occupancy {
            connections: 0.1,
            sessions: 0.7,
            pending_events: 0.2,
            memory: 0.0,
        };
        assert_eq!(o.max(), 0.7);
        assert_eq!(fraction(5, 0), 0.0);
        assert!(
            resident_bytes() > 1024 * 1024,
            "a test process holds over 1 MiB"
        );
    }
}
