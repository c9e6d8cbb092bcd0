//! Admission and cross-core routing. Global bounds (connections, sessions) are atomic counters
//! every shard can take a permit from without a lock. Shards talk only through bounded
//! crossbeam channels ("mailboxes"); the sender wakes the receiving shard's event loop through
//! an `AtomicWaker`, so a shard never blocks in `recv`.
//!
//! Invariant: a permit taken from a `Gate` is released exactly once, by whoever owns the thing it
//! admits (the connection task, or the session table's `remove`).

use std::future::poll_fn;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender, TrySendError};

/// A global count with a ceiling.
#[derive(Debug)]
pub struct Gate {
    count: AtomicUsize,
    max: usize,
}

impl Gate {
    pub fn new(max: usize) -> Gate {
        Gate {
            count: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes one unit if below the ceiling.
    pub fn try_acquire(&self) -> bool {
        let prev = self.count.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub fn release(&self) {
        let prev = self.count.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(prev > 0, "gate released more than acquired");
    }

    pub fn current(&self) -> usize {
        self.count.load(Ordering::Acquire).min(self.max)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// A client connection moving to the shard that owns its session.
#[derive(Debug)]
pub struct Handoff {
    pub fd: OwnedFd,
    /// Bytes already read from the connection: the request head that named the session, and
    /// whatever followed it.
    pub buffered: Vec<u8>,
    /// The client's address from the connection's PROXY protocol header, once read (the
    /// header is not in `buffered`).
    pub client: Option<Proxy>,
}

/// A connection's PROXY protocol header, once read: the client address it named (`None`: the
/// connection's own peer, for a `LOCAL` or `UNKNOWN` header).
pub type Proxy = Option<std::net::SocketAddr>;

#[derive(Debug)]
pub enum ShardMsg {
    Handoff(Handoff),
}

/// The sending side of a shard's mailbox, shared by all threads.
pub struct Mailbox {
    tx: Sender<ShardMsg>,
    waker: Arc<AtomicWaker>,
    closed: Arc<AtomicBool>,
}

/// The receiving side, owned by its shard.
pub struct MailboxRx {
    rx: Receiver<ShardMsg>,
    waker: Arc<AtomicWaker>,
    closed: Arc<AtomicBool>,
}

pub fn mailbox(depth: usize) -> (Mailbox, MailboxRx) {
    let (tx, rx) = crossbeam_channel::bounded(depth);
    let waker = Arc::new(AtomicWaker::new());
    let closed = Arc::new(AtomicBool::new(false));
    (
        Mailbox {
            tx,
            waker: waker.clone(),
            closed: closed.clone(),
        },
        MailboxRx { rx, waker, closed },
    )
}

impl Mailbox {
    /// Sends without blocking; a full mailbox hands the message back.
    pub fn try_send(&self, msg: ShardMsg) -> Result<(), ShardMsg> {
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(m)) | Err(TrySendError::Disconnected(m)) => Err(m),
        }
    }

    /// Tells the receiving shard to stop; its `recv` returns `None` from now on.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
    }
}

impl MailboxRx {
    /// Waits for the next message; `None` once the mailbox is closed.
    pub async fn recv(&self) -> Option<ShardMsg> {
        poll_fn(|cx| {
            if let Ok(m) = self.rx.try_recv() {
                return Poll::Ready(Some(m));
            }
            if self.closed.load(Ordering::Acquire) {
                return Poll::Ready(None);
            }
            self.waker.register(cx.waker());
            // Re-check after registering: a send between the first check and the registration
            // would otherwise be missed.
            if let Ok(m) = self.rx.try_recv() {
                return Poll::Ready(Some(m));
            }
            if self.closed.load(Ordering::Acquire) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }

    /// Takes a message left in the mailbox, without waiting (for draining at shutdown).
    pub fn try_recv(&self) -> Option<ShardMsg> {
        self.rx.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_enforces_ceiling() {
        let g = Gate::new(2);
        assert!(g.try_acquire());
        assert!(g.try_acquire());
        assert!(!g.try_acquire());
        assert_eq!(g.current(), 2);
        g.release();
        assert!(g.try_acquire());
    }

    #[test]
    fn cross_thread_send_wakes_runtime() {
        let (tx, rx) = mailbox(4);
        let t = std::thread::spawn(move || {
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut got = 0;
                while let Some(ShardMsg::Handoff(h)) = rx.recv().await {
                    got += h.buffered.len();
                }
                got
            })
        });
        for i in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(5));
            let fd = std::fs::File::open("/dev/null").unwrap().into();
            tx.try_send(ShardMsg::Handoff(Handoff {
                fd,
                buffered: vec![0; i + 1],
                client: None,
            }))
            .unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        tx.close();
        assert_eq!(t.join().unwrap(), 6);
    }
}
