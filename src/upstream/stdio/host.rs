//! A shard's stdio children (`Host`): prewarmed ones, the children serving stateless
//! 2026-07-28 requests (modern or handshake-era, never both), and the process permits.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::child::{spawn, Child, Era, Next, Role, Spawn, CHILD_PROTOCOL_VERSION};
use super::sse::Server;
use crate::admission::Gate;
use crate::config::StdioConfig;
use crate::error::{Error, Kind, Result};
use crate::metrics::inc;
use crate::sync::LocalEvent;

/// Pause between a prewarmed child being taken and its replacement being started.
const REFILL_DELAY: Duration = Duration::from_millis(100);

/// A shard's stdio children: prewarmed ones, the stateless servers, and the process permits.
pub struct Host {
    spawn: Spawn,
    /// `kind = "sse"`: peers are streams to this legacy HTTP+SSE server, not processes.
    sse: Option<Rc<Server>>,
    processes: Arc<Gate>,
    prewarmed: RefCell<VecDeque<Rc<Child>>>,
    stateless: RefCell<Vec<Rc<Child>>>,
    stateless_next: Cell<usize>,
    /// Set when a stateless child being started is ready (or failed).
    stateless_starting: RefCell<Option<Rc<LocalEvent>>>,
    /// What the server speaks, once a stateless child told (the command is the same for all).
    stateless_era: Cell<Option<Era>>,
    /// Children of this shard not yet reaped.
    live: Cell<usize>,
    closing: Cell<bool>,
}

impl Host {
    pub fn new(spawn: Spawn, processes: Arc<Gate>, sse: Option<Rc<Server>>) -> Host {
        Host {
            spawn,
            sse,
            processes,
            prewarmed: RefCell::new(VecDeque::new()),
            stateless: RefCell::new(Vec::new()),
            stateless_next: Cell::new(0),
            stateless_starting: RefCell::new(None),
            stateless_era: Cell::new(None),
            live: Cell::new(0),
            closing: Cell::new(false),
        }
    }

    pub fn config(&self) -> &StdioConfig {
        &self.spawn.cfg
    }

    /// Starts a child under a process permit.
    fn start(self: &Rc<Self>, role: Role) -> Result<Rc<Child>> {
        if self.closing.get() {
            return Err(Error::new(Kind::ShuttingDown, ""));
        }
        if !self.processes.try_acquire() {
            return Err(Error::new(Kind::Overloaded("processes"), ""));
        }
        let host = self.clone();
        let on_reaped = Box::new(move || {
            host.processes.release();
            host.live.set(host.live.get() - 1);
            host.forget_exited();
        });
        if let Some(server) = &self.sse {
            self.live.set(self.live.get() + 1);
            return Ok(super::sse::connect(&self.spawn, server, role, on_reaped));
        }
        match spawn(&self.spawn, role, on_reaped) {
            Ok(c) => {
                self.live.set(self.live.get() + 1);
                Ok(c)
            }
            Err(e) => {
                self.processes.release();
                inc(&self.spawn.stats.stdio_spawn_failures);
                log::error!(
                    "cannot start stdio server '{}': {e}",
                    self.spawn.cfg.command
                );
                Err(Error::new(
                    Kind::UpstreamConnect,
                    format!("cannot start the stdio server: {e}"),
                ))
            }
        }
    }

    fn forget_exited(&self) {
        self.prewarmed.borrow_mut().retain(|c| !c.is_gone());
        self.stateless.borrow_mut().retain(|c| !c.is_gone());
    }

    /// A child for a new session: a prewarmed one when ready, else a fresh one.
    pub fn take_for_session(self: &Rc<Self>) -> Result<Rc<Child>> {
        let ready = loop {
            match self.prewarmed.borrow_mut().pop_front() {
                Some(c) if c.is_gone() || c.stop.is_set() => continue,
                other => break other,
            }
        };
        let child = match ready {
            Some(c) => {
                inc(&self.spawn.stats.stdio_prewarm_hits);
                c
            }
            None => self.start(Role::Session)?,
        };
        child.set_role(Role::Session);
        if self.spawn.cfg.prewarm > 0 {
            let host = self.clone();
            // Later, so neither the spawn (which blocks this thread until the exec) nor the new
            // child's start-up competes with the new session's first requests.
            monoio::spawn(async move {
                monoio::time::sleep(REFILL_DELAY).await;
                host.refill()
            });
        }
        Ok(child)
    }

    /// Starts prewarmed children up to the configured count.
    pub fn refill(self: &Rc<Self>) {
        while !self.closing.get() && self.prewarmed.borrow().len() < self.spawn.cfg.prewarm {
            match self.start(Role::Prewarmed) {
                Ok(c) => self.prewarmed.borrow_mut().push_back(c),
                Err(e) => {
                    log::warn!("prewarm stopped: {e}");
                    return;
                }
            }
        }
    }

    /// A ready stateless child (round robin), starting and initializing one when fewer than
    /// `stateless_children` are running.
    pub async fn stateless_child(self: &Rc<Self>, timeout: Duration) -> Result<Rc<Child>> {
        let usable = |c: &&Rc<Child>| !c.is_gone() && !c.stop.is_set();
        loop {
            let ready = self.stateless.borrow().iter().filter(usable).count();
            let starting = self.stateless_starting.borrow().clone();
            let want_more = ready < self.spawn.cfg.stateless_children.max(1);
            if ready > 0 && (!want_more || starting.is_some()) {
                let i = self.stateless_next.get() % ready;
                self.stateless_next.set(i + 1);
                let child = self
                    .stateless
                    .borrow()
                    .iter()
                    .filter(usable)
                    .nth(i)
                    .cloned();
                return child.ok_or_else(|| Error::new(Kind::Internal, "stateless child vanished"));
            }
            if let Some(ev) = starting {
                ev.wait().await;
                continue;
            }
            let ev = Rc::new(LocalEvent::default());
            *self.stateless_starting.borrow_mut() = Some(ev.clone());
            let result = self.init_stateless(timeout).await;
            self.stateless_starting.borrow_mut().take();
            ev.set();
            let child = result?;
            self.stateless.borrow_mut().push(child.clone());
            if ready == 0 {
                return Ok(child);
            }
        }
    }

    /// A new stateless child, ready for requests. The first one on a shard is asked
    /// `server/discover`: a 2026-07-28 server takes requests as they are. Any other answer
    /// (an error, the process leaving, silence for `timeout`) means a handshake-era server:
    /// that child ends, and this one and every later one is initialized instead. JSON-RPC
    /// owes an answer to every request, so a silent server gets no shorter deadline.
    async fn init_stateless(self: &Rc<Self>, timeout: Duration) -> Result<Rc<Child>> {
        if self.stateless_era.get() != Some(Era::Handshake) {
            let child = self.start(Role::Stateless)?;
            let answer =
                first_answer(&child, crate::mcp::discover_request(0).as_bytes(), timeout).await;
            match answer {
                Ok(line) if crate::mcp::speaks_stateless(&line) => {
                    if self.stateless_era.replace(Some(Era::Modern)).is_none() {
                        log::info!(
                            "stdio server '{}' speaks 2026-07-28: stateless requests go to it as they are",
                            self.spawn.cfg.command
                        );
                    }
                    child.era.set(Era::Modern);
                    return Ok(child);
                }
                // It spoke 2026-07-28 before: a failure now is this child's, not the era's.
                Err(e) if self.stateless_era.get() == Some(Era::Modern) => {
                    child.end();
                    return Err(e);
                }
                other => {
                    child.end();
                    log::info!(
                        "stdio server '{}' does not answer server/discover as 2026-07-28 ({}): its stateless children are initialized as {CHILD_PROTOCOL_VERSION} and requests translated",
                        self.spawn.cfg.command,
                        match &other {
                            Ok(line) => String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned(),
                            Err(e) => e.to_string(),
                        }
                    );
                    self.stateless_era.set(Some(Era::Handshake));
                }
            }
        }
        let child = self.start(Role::Stateless)?;
        let init = crate::mcp::initialize_request(0, CHILD_PROTOCOL_VERSION);
        let result = async {
            let line = first_answer(&child, init.as_bytes(), timeout).await?;
            let result = crate::mcp::result_of(&line).ok_or_else(|| {
                Error::new(Kind::UpstreamProtocol, "stdio server refused initialize")
            })?;
            *child.init_result.borrow_mut() = Some(result);
            child.notify(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => Ok(child),
            Err(e) => {
                child.end();
                Err(e)
            }
        }
    }

    /// Ends the children no session owns (shutdown); session children end with their sessions.
    pub fn close(&self) {
        self.closing.set(true);
        for c in self.prewarmed.borrow_mut().drain(..) {
            c.end();
        }
        for c in self.stateless.borrow().iter() {
            c.end();
        }
    }

    /// Waits until every child of this shard is reaped, at most `within`.
    pub async fn wait_all_reaped(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.live.get() > 0 {
            if Instant::now() >= deadline {
                log::error!("{} stdio servers not reaped at shutdown", self.live.get());
                return false;
            }
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// Sends `request` to a new child and waits at most `timeout` for its response line (messages
/// before it are skipped).
async fn first_answer(child: &Rc<Child>, request: &[u8], timeout: Duration) -> Result<Bytes> {
    let ticket = child.request(request)?;
    let answer = monoio::time::timeout(timeout, async {
        loop {
            match ticket.inbox.next().await {
                Next::Event(_) => continue,
                other => return other,
            }
        }
    })
    .await
    .map_err(|_| Error::new(Kind::UpstreamTimeout, "stdio server did not answer in time"))?;
    match answer {
        Next::Final(l) => Ok(l),
        Next::Failed(why) => Err(Error::new(Kind::UpstreamConnect, &*why)),
        Next::Event(_) => unreachable!("events are skipped above"),
    }
}
