//! Per-client limits: sessions per client and token-bucket request rates per client and per
//! session, answered with 429 and `Retry-After`.
//!
//! A client is its IP address, or with authentication on, its subject (`cell_of_name`). Client state is shared by every shard (a client's connections
//! land on any of them) without a lock: a fixed table of atomic cells indexed by a keyed hash of
//! the address. Two clients that share a cell share its limits; with `CLIENT_CELLS` cells that is
//! rare, and it can only make a limit stricter, never looser. Session buckets live in the
//! session, on its shard, and need no atomics.
//!
//! Invariant: every session counted against a client is uncounted exactly once, when the
//! session leaves the table (`session::Session::client`).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Cells of the client table (each 12 bytes: a session count and a packed token bucket).
pub const CLIENT_CELLS: usize = 65_536;

pub use crate::config::ClientLimitConfig;

/// A token bucket: `rate` tokens a second, holding at most `burst`. Tokens are counted in
/// thousandths so that low rates refill smoothly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    per_s: u32,
    burst_milli: u64,
}

impl Rate {
    /// `None` when `per_s` is 0 (no limit). A burst of 0 means one second's worth.
    pub fn new(per_s: u32, burst: u32) -> Option<Rate> {
        (per_s > 0).then(|| Rate {
            per_s,
            burst_milli: u64::from(if burst == 0 { per_s } else { burst }) * 1000,
        })
    }

    /// Refills a bucket holding `tokens` (milli) last refilled `elapsed_ms` ago, then takes one
    /// token. Returns the new level, or the wait until a token is there.
    fn take(self, tokens: u64, elapsed_ms: u64) -> Result<u64, Duration> {
        let refilled = tokens
            .saturating_add(elapsed_ms.saturating_mul(u64::from(self.per_s)))
            .min(self.burst_milli);
        if refilled >= 1000 {
            return Ok(refilled - 1000);
        }
        let missing = 1000 - refilled;
        Err(Duration::from_millis(
            missing.div_ceil(u64::from(self.per_s)),
        ))
    }
}

/// A session's own bucket (on its shard).
#[derive(Debug, Clone, Copy)]
pub struct SessionBucket {
    tokens_milli: u64,
    at: Instant,
}

impl SessionBucket {
    pub fn full(rate: Rate, now: Instant) -> SessionBucket {
        SessionBucket {
            tokens_milli: rate.burst_milli,
            at: now,
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_millis() as u64;
        let left = rate.take(self.tokens_milli, elapsed)?;
        self.tokens_milli = left;
        self.at = now;
        Ok(())
    }
}

/// The client table, shared by all shards.
pub struct ClientTable {
    cfg: ClientLimitConfig,
    client_rate: Option<Rate>,
    pub session_rate: Option<Rate>,
    seed: u64,
    epoch: Instant,
    sessions: Box<[AtomicU32]>,
    /// Packed bucket: tokens (milli, high 32 bits) | last refill in ms since `epoch` (low 32).
    buckets: Box<[AtomicU64]>,
}

impl ClientTable {
    pub fn new(cfg: ClientLimitConfig, seed: u64) -> ClientTable {
        let client_rate = Rate::new(cfg.client_requests_per_s, cfg.client_burst);
        let cells =
            |n: usize| n * usize::from(cfg.max_sessions_per_client > 0 || client_rate.is_some());
        ClientTable {
            cfg,
            client_rate,
            session_rate: Rate::new(cfg.session_requests_per_s, cfg.session_burst),
            seed,
            epoch: Instant::now(),
            sessions: (0..cells(CLIENT_CELLS))
                .map(|_| AtomicU32::new(0))
                .collect(),
            buckets: (0..cells(CLIENT_CELLS))
                .map(|_| AtomicU64::new(u64::MAX))
                .collect(),
        }
    }

    /// The client's cell: a keyed hash of its address (keyed so clients cannot aim at one).
    pub fn cell(&self, ip: IpAddr) -> u32 {
        let bits: u128 = match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        };
        let mut h = self.seed ^ 0x9e37_79b9_7f4a_7c15;
        for word in [bits as u64, (bits >> 64) as u64] {
            h = (h ^ word).wrapping_mul(0xff51_afd7_ed55_8ccd);
            h ^= h >> 33;
        }
        (h % CLIENT_CELLS as u64) as u32
    }

    /// An authenticated subject's cell: a keyed hash of its name. With auth on, the subject is
    /// the client (many users behind one address, or one user at many).
    pub fn cell_of_name(&self, name: &str) -> u32 {
        let mut h = self.seed ^ 0x6a09_e667_f3bc_c908;
        for chunk in name.as_bytes().chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0xff51_afd7_ed55_8ccd);
            h ^= h >> 33;
        }
        h = (h ^ name.len() as u64).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        (h % CLIENT_CELLS as u64) as u32
    }

    /// Counts a new session for the client; false at `max_sessions_per_client`.
    pub fn open_session(&self, cell: u32) -> bool {
        let max = self.cfg.max_sessions_per_client;
        if max == 0 {
            return true;
        }
        self.sessions[cell as usize]
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .is_ok()
    }

    pub fn close_session(&self, cell: u32) {
        if self.cfg.max_sessions_per_client > 0 {
            let _ =
                self.sessions[cell as usize].fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Whether requests are limited per client (else `take` always succeeds).
    pub fn rates_clients(&self) -> bool {
        self.client_rate.is_some()
    }

    /// Takes a token from the client's bucket, or says how long until one is there.
    pub fn take(&self, cell: u32, now: Instant) -> Result<(), Duration> {
        let Some(rate) = self.client_rate else {
            return Ok(());
        };
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u32;
        let cell = &self.buckets[cell as usize];
        let mut wait = Duration::ZERO;
        let swapped = cell.fetch_update(Relaxed, Relaxed, |packed| {
            // A never-used cell starts full.
            let (tokens, at) = if packed == u64::MAX {
                (rate.burst_milli, now_ms)
            } else {
                (packed >> 32, packed as u32)
            };
            let elapsed = u64::from(now_ms.wrapping_sub(at));
            match rate.take(tokens, elapsed) {
                Ok(left) => Some((left.min(u64::from(u32::MAX)) << 32) | u64::from(now_ms)),
                Err(w) => {
                    wait = w;
                    None
                }
            }
        });
        swapped.map(|_| ()).map_err(|_| wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max_sessions: u32, per_s: u32, burst: u32) -> ClientTable {
        ClientTable::new(
            ClientLimitConfig {
                max_sessions_per_client: max_sessions,
                client_requests_per_s: per_s,
                client_burst: burst,
                ..ClientLimitConfig::default()
            },
            7,
        )
    }

    #[test]
    fn sessions_per_client_are_bounded_and_released() {
        let t = table(2, 0, 0);
        let a = t.cell("10.0.0.1".parse().unwrap());
        assert!(t.open_session(a) && t.open_session(a));
        assert!(!t.open_session(a));
        t.close_session(a);
        assert!(t.open_session(a));
        let b = t.cell("10.0.0.2".parse().unwrap());
        assert_ne!(a, b);
        assert!(t.open_session(b));
    }

    #[test]
    fn client_bucket_allows_the_burst_then_the_rate() {
        let t = table(0, 10, 5);
        let c = t.cell("::1".parse().unwrap());
        let t0 = t.epoch + Duration::from_secs(1);
        for _ in 0..5 {
            assert_eq!(t.take(c, t0), Ok(()));
        }
        let wait = t.take(c, t0).unwrap_err();
        assert_eq!(
            wait,
            Duration::from_millis(100),
            "one token every 100 ms at 10/s"
        );
        assert_eq!(t.take(c, t0 + Duration::from_millis(100)), Ok(()));
        assert!(t.take(c, t0 + Duration::from_millis(150)).is_err());
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(t.take(c, later), Ok(()));
        }
        assert!(t.take(c, later).is_err());
    }

    #[test]
    fn session_bucket_and_off_switches() {
        assert_eq!(Rate::new(0, 10), None);
        let rate = Rate::new(2, 0).unwrap();
        let t0 = Instant::now();
        let mut b = SessionBucket::full(rate, t0);
        assert!(b.take(rate, t0).is_ok() && b.take(rate, t0).is_ok());
        assert_eq!(b.take(rate, t0), Err(Duration::from_millis(500)));
        assert!(b.take(rate, t0 + Duration::from_millis(500)).is_ok());
        let off = table(0, 0, 0);
        assert!(off.open_session(3) && off.take(3, t0).is_ok());
    }
}
