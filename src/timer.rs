//! Thread-local timers for the request path: the deadlines of client and upstream reads, idle
//! waits and timeouts. Each thread (a shard is one) keeps its armed deadlines in one slab and
//! one min-heap, driven by a single monoio sleep until the earliest.
//!
//! Why not `monoio::time::sleep` per wait: its `Sleep` is 640 bytes, 128-aligned (its timer
//! entry is padded to cache lines for a thread safety a shard does not need), and every
//! connection's future carries one while it waits for its next request; with it, an idle
//! keep-alive connection's task was 6.5 KB. A `Sleep` here is 32 bytes, and its entry (a
//! waker and a generation, 24 bytes) lives in the slab only while it is armed.
//!
//! Invariants: an entry exists only while its `Sleep` is alive and armed (dropping the sleep
//! removes it); the heap holds at most twice the armed entries plus `HEAP_SLACK` (items of
//! removed entries are pruned then); the driver task ends when its runtime does, and the
//! next sleep on the thread starts a new one.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

/// Heap items of removed entries tolerated beyond the armed entries before the heap is pruned.
const HEAP_SLACK: usize = 1024;

/// How far "never" is: a wait longer than this is cut to it (`Instant + Duration` must not
/// overflow).
const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

struct Entry {
    generation: u32,
    waker: Option<Waker>,
    fired: bool,
}

#[derive(Default)]
struct Timers {
    entries: RefCell<Slab<Entry>>,
    /// (deadline, slab key, generation): an item whose entry is gone or was reused is stale.
    heap: RefCell<BinaryHeap<Reverse<(Instant, u32, u32)>>>,
    generation: Cell<u32>,
    /// A driver task is alive on this thread's runtime.
    driving: Cell<bool>,
    /// What the driver sleeps until (`None`: nothing armed, it waits for a kick).
    armed_until: Cell<Option<Instant>>,
    kicked: Cell<bool>,
    driver: RefCell<Option<Waker>>,
}

thread_local! {
    static TIMERS: Rc<Timers> = Rc::default();
}

/// `Sleep::key` of a sleep not armed yet whose deadline may have passed already: its first
/// poll reads the clock. A `sleep(wait)` with a non-zero wait skips that read.
const CHECK_CLOCK: u32 = u32::MAX;

/// Completes `wait` from now.
pub fn sleep(wait: Duration) -> Sleep {
    Sleep {
        timers: TIMERS.with(Rc::clone),
        deadline: Instant::now() + wait.min(MAX_WAIT),
        key: if wait.is_zero() { CHECK_CLOCK } else { 0 },
        generation: 0,
    }
}

/// Completes at `deadline`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        timers: TIMERS.with(Rc::clone),
        deadline,
        key: CHECK_CLOCK,
        generation: 0,
    }
}

/// Runs `fut` for at most `wait`: `None` when the time ran out first (`fut` is dropped).
pub async fn timeout<F: Future>(wait: Duration, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut sleep = sleep(wait);
    poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        Pin::new(&mut sleep).poll(cx).map(|()| None)
    })
    .await
}

/// Forgets this thread's timers and driver. Needed only on a thread that starts a second
/// runtime after a first one ended with sleeps armed: a runtime that ends does not drop its
/// pending tasks, so their entries and the old driver (whose waker this thread holds) would
/// otherwise linger. A shard runs one runtime for the life of its thread and never needs it.
pub fn reset() {
    TIMERS.with(|t| {
        let entries = std::mem::take(&mut *t.entries.borrow_mut());
        t.heap.borrow_mut().clear();
        t.driving.set(false);
        t.armed_until.set(None);
        let driver = t.driver.borrow_mut().take();
        // Dropped outside the borrows: a waker's drop may free a task holding a `Sleep`.
        drop(driver);
        drop(entries);
    });
}

/// Deadlines armed on this thread now.
#[cfg(test)]
fn armed() -> usize {
    TIMERS.with(|t| t.entries.borrow().len())
}

/// A wait until a deadline. Registers on its first poll; dropping it disarms it.
pub struct Sleep {
    timers: Rc<Timers>,
    deadline: Instant,
    key: u32,
    /// 0: not armed.
    generation: u32,
}

impl Sleep {
    /// Moves the deadline (disarming the old one).
    pub fn reset(&mut self, deadline: Instant) {
        self.disarm();
        self.deadline = deadline;
        self.key = CHECK_CLOCK;
    }

    fn disarm(&mut self) {
        if self.generation != 0 {
            let mut entries = self.timers.entries.borrow_mut();
            if entries
                .get(self.key as usize)
                .is_some_and(|e| e.generation == self.generation)
            {
                entries.remove(self.key as usize);
            }
            self.generation = 0;
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.generation == 0 {
            if this.key == CHECK_CLOCK && this.deadline <= Instant::now() {
                return Poll::Ready(());
            }
            let (key, generation) = this.timers.arm(this.deadline, cx.waker());
            this.key = key;
            this.generation = generation;
            return Poll::Pending;
        }
        let mut entries = this.timers.entries.borrow_mut();
        let entry = &mut entries[this.key as usize];
        debug_assert_eq!(
            entry.generation, this.generation,
            "a sleep's entry was reused"
        );
        if entry.fired {
            entries.remove(this.key as usize);
            this.generation = 0;
            this.key = CHECK_CLOCK;
            // Polled again, it finds its deadline passed and stays ready.
            return Poll::Ready(());
        }
        match &entry.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => entry.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.disarm();
    }
}

impl Timers {
    /// Arms an entry; starts the driver, or wakes it when this deadline comes before what it
    /// sleeps until.
    fn arm(self: &Rc<Self>, deadline: Instant, waker: &Waker) -> (u32, u32) {
        let generation = match self.generation.get().wrapping_add(1) {
            0 => 1,
            g => g,
        };
        self.generation.set(generation);
        let key = {
            let mut entries = self.entries.borrow_mut();
            let key = entries.insert(Entry {
                generation,
                waker: Some(waker.clone()),
                fired: false,
            });
            u32::try_from(key).expect("fewer than 2^32 armed timers")
        };
        self.heap
            .borrow_mut()
            .push(Reverse((deadline, key, generation)));
        self.prune();
        if !self.driving.get() {
            self.driving.set(true);
            monoio::spawn(drive(self.clone()));
        } else if self.armed_until.get().is_none_or(|at| deadline < at) {
            self.kicked.set(true);
            if let Some(w) = self.driver.borrow_mut().take() {
                w.wake();
            }
        }
        (key, generation)
    }

    /// Drops the heap items of removed entries once they outnumber the armed ones.
    fn prune(&self) {
        let entries = self.entries.borrow();
        let mut heap = self.heap.borrow_mut();
        if heap.len() > 2 * entries.len() + HEAP_SLACK {
            heap.retain(|Reverse((_, k, g))| {
                entries.get(*k as usize).is_some_and(|e| e.generation == *g)
            });
        }
    }

    /// Fires every entry due by `now`; returns the next deadline.
    fn fire_due(&self, now: Instant) -> Option<Instant> {
        let mut heap = self.heap.borrow_mut();
        let mut entries = self.entries.borrow_mut();
        while let Some(&Reverse((at, key, generation))) = heap.peek() {
            let live = entries
                .get_mut(key as usize)
                .filter(|e| e.generation == generation && !e.fired);
            match live {
                None => {}
                Some(_) if at > now => return Some(at),
                Some(e) => {
                    e.fired = true;
                    if let Some(w) = e.waker.take() {
                        w.wake();
                    }
                }
            }
            heap.pop();
        }
        None
    }
}

/// Resets the thread's driver state when the driver task ends (its runtime dropped it).
struct Driving(Rc<Timers>);

impl Drop for Driving {
    fn drop(&mut self) {
        self.0.driving.set(false);
        self.0.armed_until.set(None);
        self.0.driver.borrow_mut().take();
    }
}

/// The thread's driver: sleeps until the earliest deadline, fires what is due, repeats; a
/// kick (an earlier deadline armed) cuts the sleep short.
async fn drive(timers: Rc<Timers>) {
    let guard = Driving(timers);
    let t = &guard.0;
    loop {
        t.kicked.set(false);
        let next = t.fire_due(Instant::now());
        t.armed_until.set(next);
        let kick = poll_fn(|cx| {
            if t.kicked.get() {
                return Poll::Ready(());
            }
            *t.driver.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        });
        match next {
            Some(at) => {
                monoio::select! {
                    _ = monoio::time::sleep_until(monoio::time::Instant::from_std(at)) => {},
                    _ = kick => {},
                }
            }
            None => kick.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::test_runtime as rt;

    #[test]
    fn a_sleep_is_small() {
        assert!(std::mem::size_of::<Sleep>() <= 32);
    }

    #[test]
    fn sleeps_end_in_deadline_order_and_disarm() {
        rt().block_on(async {
            let order = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            for (i, ms) in [30u64, 10, 20].into_iter().enumerate() {
                let order = order.clone();
                tasks.push(monoio::spawn(async move {
                    let start = Instant::now();
                    sleep(Duration::from_millis(ms)).await;
                    assert!(start.elapsed() >= Duration::from_millis(ms));
                    order.borrow_mut().push(i);
                }));
            }
            for t in tasks {
                t.await;
            }
            assert_eq!(*order.borrow(), vec![1, 2, 0]);
            assert_eq!(armed(), 0);
        });
    }

    #[test]
    fn an_earlier_deadline_wakes_a_driver_sleeping_longer() {
        rt().block_on(async {
            let long = monoio::spawn(sleep(Duration::from_secs(30)));
            monoio::time::sleep(Duration::from_millis(5)).await;
            let start = Instant::now();
            sleep(Duration::from_millis(10)).await;
            assert!(start.elapsed() < Duration::from_secs(5));
            assert_eq!(armed(), 1, "the long sleep is still armed");
            drop(long);
        });
    }

    #[test]
    fn a_timeout_gives_the_value_or_none() {
        rt().block_on(async {
            let fast = timeout(Duration::from_secs(5), async { 7 }).await;
            assert_eq!(fast, Some(7));
            let slow = timeout(Duration::from_millis(10), sleep(Duration::from_secs(30))).await;
            assert_eq!(slow, None);
            assert_eq!(armed(), 0, "both sleeps of the timeout were disarmed");
        });
    }

    #[test]
    fn dropped_sleeps_leave_a_bounded_heap() {
        rt().block_on(async {
            for _ in 0..10 * HEAP_SLACK {
                let mut s = sleep(Duration::from_secs(60));
                let waker = Waker::noop();
                let _ = Pin::new(&mut s).poll(&mut Context::from_waker(waker));
            }
            assert_eq!(armed(), 0);
            let heap = TIMERS.with(|t| t.heap.borrow().len());
            assert!(heap <= 2 * HEAP_SLACK + 1, "heap holds {heap} items");
        });
    }

    #[test]
    fn a_new_runtime_on_the_same_thread_gets_a_new_driver() {
        for _ in 0..2 {
            reset();
            rt().block_on(async {
                let hold = monoio::spawn(sleep(Duration::from_secs(30)));
                timeout(Duration::from_millis(5), std::future::pending::<()>()).await;
                drop(hold);
            });
        }
    }
}
