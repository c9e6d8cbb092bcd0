//! The shard's session table: gateway session id → upstream session, in a slab owned by one
//! shard. The id's slot field indexes the slab directly; its 128-bit secret is compared to
//! reject stale or guessed ids.
//!
//! Invariants: only the owning shard touches its table; every removal path (DELETE, expiry,
//! shutdown) goes through `remove`, which is where the global session permit is released.

use std::time::Instant;

use slab::Slab;

use crate::mcp::{random_secret, SessionId, Version};

/// Lifecycle of a session as the gateway sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Active,
    /// DELETE sent upstream, awaiting its answer.
    Ending,
}

#[derive(Debug)]
pub struct Session {
    secret: u128,
    pub upstream_sid: Option<std::rc::Rc<str>>,
    /// The child process serving the session (stdio upstreams).
    pub child: Option<std::rc::Rc<crate::stdio::Child>>,
    /// The session's tape, when recording.
    pub tape: Option<u64>,
    /// HTTP exchanges seen so far (numbers the tape's streams).
    pub streams: u32,
    pub version: Version,
    pub created: Instant,
    pub last_seen: Instant,
    pub state: SessionState,
}

pub struct Sessions {
    shard: u8,
    slab: Slab<Session>,
}

impl Sessions {
    pub fn new(shard: u8) -> Sessions {
        Sessions {
            shard,
            slab: Slab::new(),
        }
    }

    /// Creates a session and returns its new gateway id.
    pub fn insert(
        &mut self,
        upstream_sid: Option<std::rc::Rc<str>>,
        version: Version,
        now: Instant,
    ) -> SessionId {
        let secret = random_secret();
        let slot = self.slab.insert(Session {
            secret,
            upstream_sid,
            child: None,
            tape: None,
            streams: 1,
            version,
            created: now,
            last_seen: now,
            state: SessionState::Active,
        });
        debug_assert!(slot <= u32::MAX as usize, "session slab exceeded u32 slots");
        SessionId {
            shard: self.shard,
            slot: slot as u32,
            secret,
        }
    }

    fn matches(&self, id: &SessionId) -> bool {
        id.shard == self.shard
            && self
                .slab
                .get(id.slot as usize)
                .is_some_and(|s| constant_time_eq(s.secret, id.secret))
    }

    pub fn get_mut(&mut self, id: &SessionId) -> Option<&mut Session> {
        if self.matches(id) {
            self.slab.get_mut(id.slot as usize)
        } else {
            None
        }
    }

    pub fn remove(&mut self, id: &SessionId) -> Option<Session> {
        if self.matches(id) {
            Some(self.slab.remove(id.slot as usize))
        } else {
            None
        }
    }

    /// Sessions idle longer than `idle`, as ids.
    pub fn idle_since(&self, deadline: Instant) -> Vec<SessionId> {
        self.slab
            .iter()
            .filter(|(_, s)| s.last_seen < deadline && s.state == SessionState::Active)
            .map(|(slot, s)| SessionId {
                shard: self.shard,
                slot: slot as u32,
                secret: s.secret,
            })
            .collect()
    }

    /// Every session id, for shutdown.
    pub fn all(&self) -> Vec<SessionId> {
        self.slab
            .iter()
            .map(|(slot, s)| SessionId {
                shard: self.shard,
                slot: slot as u32,
                secret: s.secret,
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }
}

/// Compares secrets without an early exit, so timing does not leak matching prefixes.
fn constant_time_eq(a: u128, b: u128) -> bool {
    std::hint::black_box(a ^ b) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove() {
        let mut t = Sessions::new(2);
        let now = Instant::now();
        let id = t.insert(Some("up-1".into()), Version::assumed(), now);
        assert_eq!(id.shard, 2);
        assert_eq!(
            t.get_mut(&id).unwrap().upstream_sid.as_deref(),
            Some("up-1")
        );
        let forged = SessionId {
            secret: id.secret ^ 1,
            ..id
        };
        assert!(t.get_mut(&forged).is_none());
        assert!(t.remove(&forged).is_none());
        assert!(t.remove(&id).is_some());
        assert!(t.get_mut(&id).is_none());
        // The slot is reused, but the old id stays dead.
        let id2 = t.insert(None, Version::assumed(), now);
        assert_eq!(id2.slot, id.slot);
        assert!(t.get_mut(&id).is_none());
        assert!(t.get_mut(&id2).is_some());
    }

    #[test]
    fn idle_listing() {
        let mut t = Sessions::new(0);
        let t0 = Instant::now();
        let a = t.insert(None, Version::assumed(), t0);
        let later = t0 + std::time::Duration::from_secs(10);
        let b = t.insert(None, Version::assumed(), later);
        let idle = t.idle_since(t0 + std::time::Duration::from_secs(5));
        assert_eq!(idle, vec![a]);
        assert_eq!(t.all().len(), 2);
        assert!(t.get_mut(&b).is_some());
    }
}
