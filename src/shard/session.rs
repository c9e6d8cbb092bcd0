//! The shard's session table: gateway session id → upstream session, in a slab owned by one
//! shard. The id's slot field indexes the slab directly; its 128-bit secret is compared to
//! reject stale or guessed ids.
//!
//! Sessions end by the clock without the table being scanned: an ordered schedule holds each
//! session once, under the time it is next due for a check. A request only moves `last_seen`;
//! the check at the due time finds the real deadline (idle timeout or maximum age, whichever
//! comes first) and either ends the session or schedules it again. A session with a client
//! reading one of its streams is not idle: the check moves its `last_seen` instead. A session is thus looked at
//! about once per idle period, however many requests it serves.
//!
//! In a cluster a session also has the id its client holds (`Session::token`): a sealed
//! token, found through `by_token`, or a pinned id. A sealed session that ended for good
//! (`bury`) leaves a digest of its token behind, so that this shard refuses the token after;
//! at most `max_ended` digests are kept, oldest forgotten first.
//!
//! Invariants: only the owning shard touches its table; every removal path (DELETE, expiry,
//! eviction, shutdown) goes through `remove`, which also takes the session off the schedule
//! and out of `by_token`; every live session is on the schedule exactly once.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::rc::Rc;
use std::time::{Duration, Instant};

use slab::Slab;

use super::sse::SessionStreams;
use crate::mcp::{random_secret, SessionId, Version};
use crate::upstream::UpSession;

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
    /// The session's upstream half: an HTTP upstream's session, or a stdio child.
    pub upstream: UpSession,
    /// The session's tape, when recording.
    pub tape: Option<u64>,
    /// The client's cell in the client table, when counted against it.
    pub client: Option<u32>,
    /// The authenticated subject that opened the session (auth on): only it may use it.
    pub owner: Option<Box<str>>,
    /// The session's request bucket, when session rates are limited.
    pub bucket: Option<crate::limits::SessionBucket>,
    /// HTTP exchanges seen so far (numbers the tape's streams).
    pub streams: u32,
    pub version: Version,
    pub created: Instant,
    pub last_seen: Instant,
    pub state: SessionState,
    /// Its resumable SSE streams.
    pub sse: SessionStreams,
    /// The id its client holds, in a cluster: a sealed token (`sealed`) or a pinned id.
    /// `None`: the plain local id (`SessionId::encode`).
    pub token: Option<Rc<str>>,
    pub sealed: bool,
    /// Ended (a sealed one: forgotten) after this long without a request: the table's idle
    /// timeout, or for a sealed session the shorter `forget_sealed` one.
    idle: Duration,
    /// Its key on the schedule.
    due: Instant,
}

/// How long sessions live.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// Ended after this long without a request.
    pub idle: Duration,
    /// Ended this long after it began, however busy.
    pub max_age: Duration,
}

/// Why the clock ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Idle,
    MaxAge,
}

impl Expiry {
    /// As logs and tapes name it.
    pub fn reason(self) -> &'static str {
        match self {
            Expiry::Idle => "expired",
            Expiry::MaxAge => "maximum age",
        }
    }
}

pub struct Sessions {
    shard: u8,
    slab: Slab<Session>,
    lifetimes: Lifetimes,
    /// (due time, slot) → secret: when each session is next checked.
    schedule: BTreeMap<(Instant, u32), u128>,
    /// Sealed token → slot, for every live session that has one.
    by_token: HashMap<Rc<str>, u32>,
    /// Digests of the sealed tokens of sessions that ended here, and their order.
    ended: HashSet<u64>,
    ended_order: VecDeque<u64>,
    max_ended: usize,
    digest: RandomState,
    /// How long a sealed session may sit unused before this shard forgets it (`None`: the
    /// idle timeout).
    forget_sealed: Option<Duration>,
}

/// Schedule entries looked at when choosing a session to evict.
const EVICT_SCAN_MAX: usize = 64;

impl Sessions {
    pub fn new(shard: u8, lifetimes: Lifetimes) -> Sessions {
        Sessions {
            shard,
            slab: Slab::new(),
            lifetimes,
            schedule: BTreeMap::new(),
            by_token: HashMap::new(),
            ended: HashSet::new(),
            ended_order: VecDeque::new(),
            max_ended: 0,
            digest: RandomState::new(),
            forget_sealed: None,
        }
    }

    /// Forgets sealed sessions unused for `after` (`cluster.forget_idle_ms`), when that is
    /// shorter than the idle timeout: another node may be serving them, and a shard adopts
    /// one again on its next request for the price of opening its id.
    pub fn forget_sealed_after(mut self, after: Duration) -> Sessions {
        self.forget_sealed = Some(after);
        self
    }

    /// Keeps the digests of at most `max` ended sessions' tokens (`cluster.max_ended_ids`).
    pub fn keep_ended(mut self, max: usize) -> Sessions {
        self.max_ended = max;
        self
    }

    /// Gives a session the id its client holds; a `sealed` one is found by `find_token`.
    pub fn set_token(&mut self, id: &SessionId, token: Rc<str>, sealed: bool) {
        if !self.matches(id) {
            return;
        }
        if sealed {
            self.by_token.insert(token.clone(), id.slot);
        }
        let s = &mut self.slab[id.slot as usize];
        s.token = Some(token);
        s.sealed = sealed;
        let Some(forget) = self.forget_sealed.filter(|f| sealed && *f < s.idle) else {
            return;
        };
        // Due sooner now: its place on the schedule moves up.
        s.idle = forget;
        let old_due = s.due;
        let (due, _) = self.deadline(&self.slab[id.slot as usize]);
        self.schedule.remove(&(old_due, id.slot));
        self.schedule.insert((due, id.slot), id.secret);
        self.slab[id.slot as usize].due = due;
    }

    /// The live session holding sealed token `token`.
    pub fn find_token(&self, token: &str) -> Option<SessionId> {
        let &slot = self.by_token.get(token)?;
        let s = self.slab.get(slot as usize)?;
        Some(self.id_of(slot, s.secret))
    }

    /// Remembers that the session of sealed `token` ended for good: `was_ended` says so until
    /// `max_ended` later ones push it out.
    pub fn bury(&mut self, token: &str) {
        if self.max_ended == 0 {
            return;
        }
        let d = self.digest.hash_one(token);
        if !self.ended.insert(d) {
            return;
        }
        self.ended_order.push_back(d);
        while self.ended_order.len() > self.max_ended {
            if let Some(old) = self.ended_order.pop_front() {
                self.ended.remove(&old);
            }
        }
    }

    /// Whether a session of sealed `token` ended here (and is still remembered).
    pub fn was_ended(&self, token: &str) -> bool {
        !self.ended.is_empty() && self.ended.contains(&self.digest.hash_one(token))
    }

    /// When a session is really due: idle deadline or maximum age, whichever is first.
    fn deadline(&self, s: &Session) -> (Instant, Expiry) {
        let idle = s.last_seen + s.idle;
        let old = s.created + self.lifetimes.max_age;
        if old <= idle {
            (old, Expiry::MaxAge)
        } else {
            (idle, Expiry::Idle)
        }
    }

    /// Sessions whose time is up, taken off the schedule (the caller ends each with `remove`).
    /// Sessions used since they were scheduled are scheduled again at their real deadline.
    pub fn due(&mut self, now: Instant) -> Vec<(SessionId, Expiry)> {
        let mut out = Vec::new();
        while let Some((&(at, slot), &secret)) = self.schedule.first_key_value() {
            if at > now {
                break;
            }
            self.schedule.remove(&(at, slot));
            let Some(s) = self.slab.get(slot as usize).filter(|s| s.secret == secret) else {
                debug_assert!(false, "a scheduled session is always live");
                continue;
            };
            let (mut deadline, mut why) = self.deadline(s);
            // A client reading one of the session's streams is using it, requests or not:
            // an SSE-only client must not see its session expire under it.
            if deadline <= now && why == Expiry::Idle && s.sse.watched() {
                self.slab[slot as usize].last_seen = now;
                (deadline, why) = self.deadline(&self.slab[slot as usize]);
            }
            if deadline <= now {
                out.push((self.id_of(slot, secret), why));
            } else {
                self.schedule.insert((deadline, slot), secret);
                self.slab[slot as usize].due = deadline;
            }
        }
        out
    }

    /// The least recently used session idle for at least `min_idle`, among the earliest on the
    /// schedule (an approximation of LRU that never scans the whole table).
    pub fn lru_idle(&self, now: Instant, min_idle: Duration) -> Option<SessionId> {
        self.schedule
            .iter()
            .take(EVICT_SCAN_MAX)
            .filter_map(|(&(_, slot), &secret)| {
                let s = self.slab.get(slot as usize)?;
                let idle = now.saturating_duration_since(s.last_seen) >= min_idle;
                (idle && !s.sse.watched()).then_some((s.last_seen, slot, secret))
            })
            .min()
            .map(|(_, slot, secret)| self.id_of(slot, secret))
    }

    fn id_of(&self, slot: u32, secret: u128) -> SessionId {
        SessionId {
            shard: self.shard,
            slot,
            secret,
        }
    }

    /// Entries on the schedule (equals `len`).
    pub fn scheduled(&self) -> usize {
        self.schedule.len()
    }

    /// Creates a session and returns its new gateway id.
    pub fn insert(&mut self, upstream: UpSession, version: Version, now: Instant) -> SessionId {
        self.insert_aged(upstream, version, now, now)
    }

    /// Creates a session that began at `created` (elsewhere, for an adopted session: its
    /// maximum age counts from then), seen now.
    pub fn insert_aged(
        &mut self,
        upstream: UpSession,
        version: Version,
        created: Instant,
        now: Instant,
    ) -> SessionId {
        let secret = random_secret();
        let age_left = (created + self.lifetimes.max_age).saturating_duration_since(now);
        let due = now + self.lifetimes.idle.min(age_left);
        let slot = self.slab.insert(Session {
            secret,
            upstream,
            tape: None,
            client: None,
            owner: None,
            bucket: None,
            streams: 1,
            version,
            created,
            last_seen: now,
            state: SessionState::Active,
            sse: Default::default(),
            token: None,
            sealed: false,
            idle: self.lifetimes.idle,
            due,
        });
        debug_assert!(slot <= u32::MAX as usize, "session slab exceeded u32 slots");
        self.schedule.insert((due, slot as u32), secret);
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

    pub fn get(&self, id: &SessionId) -> Option<&Session> {
        if self.matches(id) {
            self.slab.get(id.slot as usize)
        } else {
            None
        }
    }

    pub fn get_mut(&mut self, id: &SessionId) -> Option<&mut Session> {
        if self.matches(id) {
            self.slab.get_mut(id.slot as usize)
        } else {
            None
        }
    }

    pub fn remove(&mut self, id: &SessionId) -> Option<Session> {
        if !self.matches(id) {
            return None;
        }
        let s = self.slab.remove(id.slot as usize);
        // Absent when `due` already took it off.
        self.schedule.remove(&(s.due, id.slot));
        if let Some(token) = s.token.as_deref().filter(|_| s.sealed) {
            self.by_token.remove(token);
        }
        Some(s)
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

    const S: Duration = Duration::from_secs(1);

    fn http(sid: Option<&str>) -> UpSession {
        UpSession::Http {
            upstream: 0,
            sid: sid.map(std::rc::Rc::from),
        }
    }

    fn table() -> Sessions {
        Sessions::new(
            2,
            Lifetimes {
                idle: 10 * S,
                max_age: 100 * S,
            },
        )
    }

    #[test]
    fn insert_get_remove() {
        let mut t = table();
        let now = Instant::now();
        let id = t.insert(http(Some("up-1")), Version::assumed(), now);
        assert_eq!(id.shard, 2);
        assert_eq!(
            t.get_mut(&id).unwrap().upstream.sid().map(|s| &**s),
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
        assert_eq!(
            t.scheduled(),
            0,
            "removal takes the session off the schedule"
        );
        // The slot is reused, but the old id stays dead.
        let id2 = t.insert(http(None), Version::assumed(), now);
        assert_eq!(id2.slot, id.slot);
        assert!(t.get_mut(&id).is_none());
        assert!(t.get_mut(&id2).is_some());
    }

    #[test]
    fn idle_sessions_expire_and_used_ones_are_rescheduled() {
        let mut t = table();
        let t0 = Instant::now();
        let a = t.insert(http(None), Version::assumed(), t0);
        let b = t.insert(http(None), Version::assumed(), t0);
        assert!(t.due(t0 + 9 * S).is_empty());
        // b is used at 5 s: due at 15 s, not 10 s.
        t.get_mut(&b).unwrap().last_seen = t0 + 5 * S;
        assert_eq!(t.due(t0 + 10 * S), vec![(a, Expiry::Idle)]);
        t.remove(&a);
        assert_eq!(t.scheduled(), 1, "b is scheduled again, once");
        assert!(t.due(t0 + 14 * S).is_empty());
        assert_eq!(t.due(t0 + 15 * S), vec![(b, Expiry::Idle)]);
        t.remove(&b);
        assert_eq!((t.len(), t.scheduled()), (0, 0));
    }

    #[test]
    fn a_session_whose_stream_has_a_reader_is_not_idle() {
        use crate::shard::sse::{Stream, StreamKind};
        let mut t = table();
        let t0 = Instant::now();
        let a = t.insert(http(None), Version::assumed(), t0);
        let get = Stream::new(1, StreamKind::Get, None, None, 0);
        get.state.borrow_mut().attached = true;
        t.get_mut(&a).unwrap().sse.keep(get.clone(), 4);
        assert!(t.due(t0 + 10 * S).is_empty(), "read, so not idle");
        assert_eq!(t.scheduled(), 1, "scheduled again, once");
        assert_eq!(t.lru_idle(t0 + 15 * S, S), None, "not evicted either");
        get.state.borrow_mut().attached = false;
        assert!(t.due(t0 + 19 * S).is_empty(), "idle from the last check on");
        assert_eq!(t.due(t0 + 20 * S), vec![(a, Expiry::Idle)]);
        t.remove(&a);
        // A read stream does not outlive the maximum age.
        let b = t.insert(http(None), Version::assumed(), t0);
        t.get_mut(&b).unwrap().sse.keep(get.clone(), 4);
        get.state.borrow_mut().attached = true;
        let ended = (1..=100).find_map(|i| t.due(t0 + i * S).pop());
        assert_eq!(ended, Some((b, Expiry::MaxAge)));
    }

    #[test]
    fn busy_sessions_end_at_their_maximum_age() {
        let mut t = table();
        let t0 = Instant::now();
        let a = t.insert(http(None), Version::assumed(), t0);
        let mut now = t0;
        let mut ended = None;
        while ended.is_none() && now < t0 + 200 * S {
            now += S;
            t.get_mut(&a).unwrap().last_seen = now;
            ended = t.due(now).pop();
        }
        assert_eq!(ended, Some((a, Expiry::MaxAge)));
        assert_eq!(now, t0 + 100 * S);
    }

    #[test]
    fn sealed_tokens_find_their_session_and_ended_ones_are_remembered() {
        let mut t = table().keep_ended(2);
        let now = Instant::now();
        let a = t.insert(http(Some("up-a")), Version::assumed(), now);
        t.set_token(&a, Rc::from("tok-a"), true);
        let b = t.insert(http(None), Version::assumed(), now);
        t.set_token(&b, Rc::from("gw-1.pinned"), false);
        assert_eq!(t.find_token("tok-a"), Some(a));
        assert_eq!(
            t.find_token("gw-1.pinned"),
            None,
            "pinned ids are not tokens"
        );
        assert_eq!(t.get(&b).unwrap().token.as_deref(), Some("gw-1.pinned"));
        t.remove(&a);
        assert_eq!(t.find_token("tok-a"), None, "removal forgets the token");
        assert!(!t.was_ended("tok-a"), "forgotten, not buried");
        for tok in ["tok-a", "tok-b", "tok-c"] {
            t.bury(tok);
        }
        assert!(!t.was_ended("tok-a"), "pushed out by two later ones");
        assert!(t.was_ended("tok-b") && t.was_ended("tok-c"));
        let mut none = table();
        none.bury("tok-a");
        assert!(!none.was_ended("tok-a"), "keep_ended(0) keeps none");
    }

    #[test]
    fn sealed_sessions_are_forgotten_sooner() {
        let mut t = table().forget_sealed_after(3 * S);
        let t0 = Instant::now();
        let sealed = t.insert(http(Some("a")), Version::assumed(), t0);
        t.set_token(&sealed, Rc::from("tok"), true);
        let pinned = t.insert(http(None), Version::assumed(), t0);
        t.set_token(&pinned, Rc::from("n1.x"), false);
        assert_eq!(t.scheduled(), 2, "moved on the schedule, not added twice");
        assert!(t.due(t0 + 2 * S).is_empty());
        assert_eq!(t.due(t0 + 3 * S), vec![(sealed, Expiry::Idle)]);
        t.remove(&sealed);
        assert!(
            t.due(t0 + 9 * S).is_empty(),
            "a pinned one keeps the idle timeout"
        );
        assert_eq!(t.due(t0 + 10 * S), vec![(pinned, Expiry::Idle)]);
    }

    #[test]
    fn an_adopted_session_ends_at_its_maximum_age_from_its_start_elsewhere() {
        let mut t = table();
        let t0 = Instant::now();
        let now = t0 + 95 * S;
        let a = t.insert_aged(http(None), Version::assumed(), t0, now);
        t.get_mut(&a).unwrap().last_seen = now + 4 * S;
        assert!(t.due(now + 4 * S).is_empty());
        assert_eq!(t.due(now + 5 * S), vec![(a, Expiry::MaxAge)]);
    }

    #[test]
    fn eviction_takes_the_least_recently_used_idle_session() {
        let mut t = table();
        let t0 = Instant::now();
        let a = t.insert(http(None), Version::assumed(), t0);
        let b = t.insert(http(None), Version::assumed(), t0);
        let c = t.insert(http(None), Version::assumed(), t0);
        t.get_mut(&a).unwrap().last_seen = t0 + 3 * S;
        t.get_mut(&b).unwrap().last_seen = t0 + S;
        t.get_mut(&c).unwrap().last_seen = t0 + 4 * S;
        assert_eq!(t.lru_idle(t0 + 4 * S, 2 * S), Some(b));
        t.remove(&b);
        assert_eq!(
            t.lru_idle(t0 + 4 * S, 2 * S),
            None,
            "a and c are not idle long enough"
        );
        assert_eq!(t.lru_idle(t0 + 6 * S, 2 * S), Some(a));
        assert_eq!(t.all().len(), 2);
    }
}
