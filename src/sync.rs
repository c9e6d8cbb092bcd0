//! Shard-local primitives (single thread, no atomics, no locks): a bounded queue that applies
//! backpressure, a one-shot event many tasks can wait on, and the shard's read-buffer cache.
//!
//! Invariant: waiter storage is bounded by the number of live futures; a future that is
//! dropped removes its waker.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::task::{Poll, Waker};

use slab::Slab;

/// Most read buffers a shard keeps for reuse (256 × 16 KiB = 4 MiB per shard at most).
const BUFFER_CACHE_MAX: usize = 256;

/// A shard's read buffers for reuse: client connections and upstream responses take one and
/// give it back, so a busy shard allocates none per request.
#[derive(Default)]
pub struct Buffers {
    cache: RefCell<Vec<Vec<u8>>>,
}

impl Buffers {
    /// A read buffer from the cache, or a fresh one.
    pub fn take(&self) -> Vec<u8> {
        self.cache
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(crate::codec::http::READ_BUF_BYTES))
    }

    /// Returns a buffer for reuse; oversized ones are freed so the cache stays bounded.
    pub fn give(&self, mut buf: Vec<u8>) {
        let mut cache = self.cache.borrow_mut();
        if cache.len() < BUFFER_CACHE_MAX && buf.capacity() == crate::codec::http::READ_BUF_BYTES {
            buf.clear();
            cache.push(buf);
        }
    }
}

/// Stores the waker of a pending waiter under its key (a new key on first poll).
fn register(
    waiters: &RefCell<Slab<Waker>>,
    key: Option<usize>,
    cx: &std::task::Context<'_>,
) -> usize {
    let mut waiters = waiters.borrow_mut();
    match key {
        Some(k) if waiters.contains(k) => {
            waiters[k].clone_from(cx.waker());
            k
        }
        _ => waiters.insert(cx.waker().clone()),
    }
}

/// Forgets a dropped waiter's waker.
fn unregister(waiters: &RefCell<Slab<Waker>>, key: Option<usize>) {
    if let Some(k) = key {
        let mut waiters = waiters.borrow_mut();
        if waiters.contains(k) {
            waiters.remove(k);
        }
    }
}

/// A one-shot, shard-local event (used for shutdown).
#[derive(Default)]
pub struct LocalEvent {
    set: Cell<bool>,
    waiters: RefCell<Slab<Waker>>,
}

impl LocalEvent {
    pub fn set(&self) {
        self.set.set(true);
        for w in self.waiters.borrow_mut().drain() {
            w.wake();
        }
    }

    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        EventWait {
            event: self,
            key: None,
        }
    }
}

struct EventWait<'a> {
    event: &'a LocalEvent,
    key: Option<usize>,
}

impl Future for EventWait<'_> {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.event.set.get() {
            return Poll::Ready(());
        }
        let key = register(&self.event.waiters, self.key, cx);
        self.key = Some(key);
        Poll::Pending
    }
}

impl Drop for EventWait<'_> {
    fn drop(&mut self) {
        unregister(&self.event.waiters, self.key);
    }
}

/// A shard-local notification: `notify_all` wakes every task waiting in `notified` at that
/// moment (unlike `LocalEvent`, it can fire any number of times). A waiter registered after a
/// notification waits for the next one, so callers check their condition before waiting.
#[derive(Default)]
pub struct LocalNotify {
    generation: Cell<u64>,
    waiters: RefCell<Slab<Waker>>,
}

impl LocalNotify {
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        for w in self.waiters.borrow_mut().drain() {
            w.wake();
        }
    }

    pub fn notified(&self) -> impl Future<Output = ()> + '_ {
        NotifyWait {
            notify: self,
            seen: self.generation.get(),
            key: None,
        }
    }
}

struct NotifyWait<'a> {
    notify: &'a LocalNotify,
    seen: u64,
    key: Option<usize>,
}

impl Future for NotifyWait<'_> {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.seen {
            return Poll::Ready(());
        }
        let key = register(&self.notify.waiters, self.key, cx);
        self.key = Some(key);
        Poll::Pending
    }
}

impl Drop for NotifyWait<'_> {
    fn drop(&mut self) {
        // After a notification the slab was drained: the key may now be another waiter's.
        if self.notify.generation.get() != self.seen {
            return;
        }
        unregister(&self.notify.waiters, self.key);
    }
}

struct QueueState<T> {
    items: VecDeque<T>,
    cap: usize,
    closed: bool,
    rx_waker: Option<Waker>,
    tx_waker: Option<Waker>,
}

/// A bounded single-producer single-consumer queue between two tasks of one shard.
pub struct LocalQueue<T> {
    state: Rc<RefCell<QueueState<T>>>,
}

impl<T> Clone for LocalQueue<T> {
    fn clone(&self) -> Self {
        LocalQueue {
            state: self.state.clone(),
        }
    }
}

impl<T> LocalQueue<T> {
    pub fn new(cap: usize) -> LocalQueue<T> {
        assert!(cap > 0, "queue capacity must be positive");
        let state = QueueState {
            items: VecDeque::with_capacity(cap.min(64)),
            cap,
            closed: false,
            rx_waker: None,
            tx_waker: None,
        };
        LocalQueue {
            state: Rc::new(RefCell::new(state)),
        }
    }

    /// Waits for room, then enqueues. `Err(item)` if the queue was closed.
    pub async fn push(&self, item: T) -> Result<(), T> {
        let mut item = Some(item);
        poll_fn(|cx| {
            let mut s = self.state.borrow_mut();
            if s.closed {
                return Poll::Ready(Err(item.take().expect("polled after completion")));
            }
            if s.items.len() >= s.cap {
                s.tx_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            s.items
                .push_back(item.take().expect("polled after completion"));
            if let Some(w) = s.rx_waker.take() {
                w.wake();
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Enqueues without waiting. `Err(item)` when full or closed. Any number of producers may
    /// use this (only `push` keeps a single producer waker).
    pub fn try_push(&self, item: T) -> Result<(), T> {
        let mut s = self.state.borrow_mut();
        if s.closed || s.items.len() >= s.cap {
            return Err(item);
        }
        s.items.push_back(item);
        if let Some(w) = s.rx_waker.take() {
            w.wake();
        }
        Ok(())
    }

    /// Waits for an item. `None` once the queue is closed and empty.
    pub async fn pop(&self) -> Option<T> {
        poll_fn(|cx| self.poll_pop(cx)).await
    }

    /// `pop` as a poll, for a consumer that waits on several queues at once.
    pub fn poll_pop(&self, cx: &mut std::task::Context<'_>) -> Poll<Option<T>> {
        let mut s = self.state.borrow_mut();
        if let Some(item) = s.items.pop_front() {
            if let Some(w) = s.tx_waker.take() {
                w.wake();
            }
            return Poll::Ready(Some(item));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        s.rx_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Takes an item if one is ready, without waiting.
    pub fn try_pop(&self) -> Option<T> {
        let mut s = self.state.borrow_mut();
        let item = s.items.pop_front();
        if item.is_some() {
            if let Some(w) = s.tx_waker.take() {
                w.wake();
            }
        }
        item
    }

    /// Closes the queue: pushes fail, pops drain what is left then end.
    pub fn close(&self) {
        let mut s = self.state.borrow_mut();
        s.closed = true;
        if let Some(w) = s.rx_waker.take() {
            w.wake();
        }
        if let Some(w) = s.tx_waker.take() {
            w.wake();
        }
    }

    pub fn len(&self) -> usize {
        self.state.borrow().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A runtime for unit tests of shard-local code: epoll driver, timers on.
#[cfg(test)]
pub(crate) fn test_runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("monoio runtime")
}

#[cfg(test)]
mod tests {
    use super::test_runtime as rt;
    use super::*;

    #[test]
    fn queue_applies_backpressure() {
        rt().block_on(async {
            let q = LocalQueue::new(2);
            q.push(1).await.unwrap();
            q.push(2).await.unwrap();
            let q2 = q.clone();
            let pushed = Rc::new(Cell::new(false));
            let p2 = pushed.clone();
            let h = monoio::spawn(async move {
                q2.push(3).await.unwrap();
                p2.set(true);
            });
            monoio::time::sleep(std::time::Duration::from_millis(5)).await;
            assert!(!pushed.get(), "push must wait while the queue is full");
            assert_eq!(q.pop().await, Some(1));
            h.await;
            assert!(pushed.get());
            assert_eq!(q.len(), 2);
            q.close();
            assert_eq!(q.pop().await, Some(2));
            assert_eq!(q.pop().await, Some(3));
            assert_eq!(q.pop().await, None);
            assert_eq!(q.push(4).await, Err(4));
        });
    }

    #[test]
    fn notify_wakes_current_waiters_every_time() {
        rt().block_on(async {
            let n = Rc::new(LocalNotify::default());
            for round in 0..3 {
                let n2 = n.clone();
                let woke = Rc::new(Cell::new(false));
                let w2 = woke.clone();
                let h = monoio::spawn(async move {
                    n2.notified().await;
                    w2.set(true);
                });
                monoio::time::sleep(std::time::Duration::from_millis(2)).await;
                assert!(!woke.get(), "round {round}: woke without a notification");
                n.notify_all();
                h.await;
                assert!(woke.get());
            }
            {
                let w = n.notified();
                let _ = monoio::time::timeout(std::time::Duration::from_millis(1), w).await;
            }
            assert_eq!(n.waiters.borrow().len(), 0);
            // A woken waiter dropped late must not remove a newer waiter's waker (same slot).
            let n2 = n.clone();
            let stale = monoio::spawn(async move {
                let mut w = Box::pin(n2.notified());
                std::future::poll_fn(|cx| {
                    let _ = w.as_mut().poll(cx);
                    std::task::Poll::Ready(())
                })
                .await;
                n2.notify_all();
                let n3 = n2.clone();
                let newer = monoio::spawn(async move { n3.notified().await });
                monoio::time::sleep(std::time::Duration::from_millis(2)).await;
                drop(w);
                assert_eq!(n2.waiters.borrow().len(), 1, "the newer waiter stays");
                n2.notify_all();
                newer.await;
            });
            stale.await;
        });
    }

    #[test]
    fn event_wakes_waiters_and_forgets_dropped_ones() {
        rt().block_on(async {
            let ev = Rc::new(LocalEvent::default());
            {
                let w = ev.wait();
                let _ = monoio::time::timeout(std::time::Duration::from_millis(1), w).await;
            }
            assert_eq!(ev.waiters.borrow().len(), 0);
            let e2 = ev.clone();
            let h = monoio::spawn(async move { e2.wait().await });
            monoio::time::sleep(std::time::Duration::from_millis(2)).await;
            ev.set();
            h.await;
            assert!(ev.is_set());
        });
    }
}
