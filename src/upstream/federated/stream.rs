//! The server stream (GET) of a federated session: every member's stream, merged into one.
//! Each member's stream is read by a task of its own into a small bounded queue (its events
//! tagged, `Tag`); the merged stream takes from whichever queue has an event.
//!
//! Invariants: the tasks end when the merged stream is dropped (its `stop`) or their member's
//! stream ends; a member that stalls fills only its own queue (backpressure on that member,
//! the others go on); an HTTP member's connection is never pooled again (it is dropped where
//! the read stops, as a stream's connection must be).

use std::cell::Cell;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;

use bytes::Bytes;

use crate::codec::{http, sse};
use crate::sync::{LocalEvent, LocalQueue};
use crate::upstream::{http as up_http, HttpAnswer, Source};

use super::Tag;

/// Events a member's reader holds for the client before it waits.
pub const DEFAULT_MEMBER_QUEUE_EVENTS: usize = 16;

/// The merged stream.
pub struct Merged {
    queues: Vec<LocalQueue<Bytes>>,
    /// Per queue, the member (index among the route's servers) whose stream fills it.
    members: Vec<usize>,
    /// The member the last event came from.
    last: Cell<Option<usize>>,
    stop: Rc<LocalEvent>,
    /// Where the next poll starts, so no member's events starve the others'.
    next: Cell<usize>,
}

impl Drop for Merged {
    fn drop(&mut self) {
        self.stop.set();
        for q in &self.queues {
            q.close();
        }
    }
}

impl Merged {
    /// Starts a reader per member stream (`(source, tag, max_event_bytes)`).
    pub fn start(
        streams: Vec<(Source, Tag)>,
        max_event_bytes: usize,
        idle: std::time::Duration,
    ) -> Merged {
        let stop = Rc::new(LocalEvent::default());
        let members = streams.iter().map(|(_, tag)| tag.member).collect();
        let queues = streams
            .into_iter()
            .map(|(src, tag)| {
                let q = LocalQueue::new(DEFAULT_MEMBER_QUEUE_EVENTS);
                let reader = read(src, tag, q.clone(), stop.clone(), (max_event_bytes, idle));
                // Ends with `stop` or its stream; it owns nothing the shard must wait for.
                drop(monoio::spawn(reader));
                q
            })
            .collect();
        Merged {
            queues,
            members,
            last: Cell::new(None),
            stop,
            next: Cell::new(0),
        }
    }

    /// The member the last event `next` returned came from.
    pub fn last_member(&self) -> Option<usize> {
        self.last.get()
    }

    /// The next event of any member; `None` once every member's stream is over.
    pub async fn next(&mut self) -> Option<Bytes> {
        poll_fn(|cx| {
            let n = self.queues.len();
            let start = self.next.get();
            let mut open = false;
            for k in 0..n {
                let i = (start + k) % n;
                match self.queues[i].poll_pop(cx) {
                    Poll::Ready(Some(ev)) => {
                        self.next.set((i + 1) % n);
                        self.last.set(Some(self.members[i]));
                        return Poll::Ready(Some(ev));
                    }
                    Poll::Ready(None) => {}
                    Poll::Pending => open = true,
                }
            }
            if open {
                Poll::Pending
            } else {
                Poll::Ready(None)
            }
        })
        .await
    }
}

/// Reads one member's stream into `q` until it ends or `stop` is set; then closes `q`.
async fn read(
    src: Source,
    tag: Tag,
    q: LocalQueue<Bytes>,
    stop: Rc<LocalEvent>,
    limits: (usize, std::time::Duration),
) {
    let pump = async {
        match src {
            Source::Events(mut ev) => {
                while let Some(raw) = ev.next().await {
                    let Some(ev) = tag.event(raw) else { continue };
                    if q.push(ev).await.is_err() {
                        return;
                    }
                }
            }
            Source::Http(ans) if ans.head.status == 200 => read_http(ans, &tag, &q, limits).await,
            _ => {}
        }
    };
    monoio::select! {
        _ = pump => {}
        _ = stop.wait() => {}
    }
    q.close();
}

/// An HTTP member's SSE body, event by event.
async fn read_http(
    mut ans: HttpAnswer,
    tag: &Tag,
    q: &LocalQueue<Bytes>,
    (max_event_bytes, idle): (usize, std::time::Duration),
) {
    let mut dec = http::BodyDecoder::new(ans.head.body);
    let mut split = sse::SseSplitter::new(max_event_bytes);
    loop {
        let done = dec.decode(&mut ans.rb, &mut |d: &[u8]| split.push(d));
        loop {
            match split.next_event() {
                Ok(Some(ev)) => {
                    let Some(ev) = tag.event(ev) else { continue };
                    if q.push(ev).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if !matches!(done, Ok(false)) {
            return;
        }
        match up_http::read_upstream(&mut ans.conn, &mut ans.rb, idle, None).await {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}
