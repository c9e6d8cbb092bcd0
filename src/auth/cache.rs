//! Each shard's cache of validated tokens: a keyed 128-bit fingerprint of the token (two
//! SipHash-1-3 with secret random keys: an attacker who never sees a fingerprint cannot aim a
//! forged token at a cached one) → its subject, until when it
//! may be honoured, and the key set it was checked against. A token's signature is thus
//! checked once per token and key set, not once per request.
//!
//! Bounded: a fixed table, two-way set associative, allocated once; a new entry replaces the
//! one of its set that expires first. Invariants: an entry is honoured only before its
//! `valid_until` (the token's `exp` plus the leeway) and only for the key set generation it
//! was checked against (keys rotated away no longer vouch for it).

use std::rc::Rc;

use super::Subject;

struct Entry {
    digest: u128,
    subject: Rc<Subject>,
    valid_until: u64,
    generation: u64,
}

pub enum Lookup {
    Hit(Rc<Subject>),
    /// Known, and past its expiry: refused without checking it again.
    Expired,
    Miss,
}

pub struct TokenCache {
    slots: Box<[Option<Entry>]>,
    /// Sets minus one (a power of two minus one).
    mask: usize,
}

impl TokenCache {
    /// A cache of at least `entries` entries (rounded up to a power of two, at least 2).
    pub fn new(entries: usize) -> TokenCache {
        let n = entries.max(2).next_power_of_two();
        TokenCache {
            slots: (0..n).map(|_| None).collect(),
            mask: n / 2 - 1,
        }
    }

    fn set(&self, digest: u128) -> usize {
        (digest as u64 as usize & self.mask) * 2
    }

    pub fn get(&mut self, digest: u128, now: u64, generation: u64) -> Lookup {
        let at = self.set(digest);
        for slot in &mut self.slots[at..at + 2] {
            let Some(e) = slot else { continue };
            if e.digest != digest {
                continue;
            }
            if now > e.valid_until {
                return Lookup::Expired;
            }
            if e.generation != generation {
                *slot = None;
                return Lookup::Miss;
            }
            return Lookup::Hit(e.subject.clone());
        }
        Lookup::Miss
    }

    pub fn insert(
        &mut self,
        digest: u128,
        subject: Rc<Subject>,
        valid_until: u64,
        generation: u64,
    ) {
        let at = self.set(digest);
        let pair = &mut self.slots[at..at + 2];
        let until = |s: &Option<Entry>| s.as_ref().map_or(0, |e| e.valid_until);
        let same = pair
            .iter()
            .position(|s| s.as_ref().is_some_and(|e| e.digest == digest));
        let i = same.unwrap_or(if until(&pair[0]) <= until(&pair[1]) {
            0
        } else {
            1
        });
        pair[i] = Some(Entry {
            digest,
            subject,
            valid_until,
            generation,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str) -> Rc<Subject> {
        Rc::new(crate::auth::subject(name, std::iter::empty()))
    }

    fn d(i: u8) -> u128 {
        u128::from(i) << 64
    }

    #[test]
    fn honours_only_live_entries_of_the_current_generation() {
        let mut c = TokenCache::new(4);
        c.insert(d(1), s("a"), 100, 1);
        assert!(matches!(c.get(d(1), 100, 1), Lookup::Hit(x) if &*x.name == "a"));
        assert!(matches!(c.get(d(1), 101, 1), Lookup::Expired));
        assert!(matches!(c.get(d(1), 50, 2), Lookup::Miss));
        assert!(
            matches!(c.get(d(1), 50, 1), Lookup::Miss),
            "dropped once stale"
        );
        assert!(matches!(c.get(d(2), 0, 1), Lookup::Miss));
    }

    #[test]
    fn bounded_and_evicts_the_first_to_expire() {
        // All these digests fall in set 0 (their low 64 bits are zero).
        let mut c = TokenCache::new(2);
        c.insert(d(1), s("a"), 10, 1);
        c.insert(d(2), s("b"), 20, 1);
        c.insert(d(3), s("c"), 30, 1);
        assert!(matches!(c.get(d(1), 0, 1), Lookup::Miss));
        assert!(matches!(c.get(d(2), 0, 1), Lookup::Hit(_)));
        assert!(matches!(c.get(d(3), 0, 1), Lookup::Hit(_)));
        assert_eq!(c.slots.len(), 2);
    }
}
