//! The tokio driver of one [`Session`], shared by the client and the server daemons.
//!
//! The engine sits behind one mutex; every task locks it briefly through [`SessionDriver::with`],
//! which also carries out what the engine decided: it forwards the engine's events (waking the
//! stream tasks they name), wakes the link writers the engine names ([`Session::poll_wakes`]),
//! and re-arms the timer task when the engine's next deadline moved earlier. Tasks of one
//! session:
//!
//! - per link, a reader (decrypt, `handle_message`) and a writer (`poll_transmit`, encrypt,
//!   write), see [`link`];
//! - per stream, one task pumping bytes between its TCP socket and the engine, see [`stream`];
//! - one timer task (`poll_timeout` / `handle_timeout`);
//! - one budget task: when any session of the daemon reports [`Event::BudgetReleased`] (through
//!   the daemon's [`BudgetSignal`]) while this session has streams waiting for the budget, it
//!   lets the engine retry ([`Session::retry_budget`]).
//!
//! Nothing here decides what goes where: that is the engine's job.

mod counters;
pub mod link;
pub mod stream;

pub use counters::{Counters, Totals};

use crate::engine::{Event, Gathered, MessageBuf, Session};
use crate::ids::{LinkId, StreamId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// A spawned task, aborted when this is dropped: a helper task that must not outlive the task
/// that holds it (a link's writer, a lane stream's acceptor).
#[derive(Debug)]
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Wakers of one stream's task.
#[derive(Debug, Default)]
pub(crate) struct StreamWaker {
    pub(crate) readable: Notify,
    pub(crate) writable: Notify,
}

#[derive(Debug)]
struct State {
    session: Session,
    wakers: HashMap<StreamId, Arc<StreamWaker>>,
    /// One per link writer: there is something that link may transmit.
    link_wakers: HashMap<LinkId, Arc<Notify>>,
    /// One per link: the engine declared it dead; its task closes the socket.
    link_kills: HashMap<LinkId, Arc<Notify>>,
    /// Where each link goes and over what, as the daemon running it said ([`LinkLabel`]).
    link_labels: HashMap<LinkId, LinkLabel>,
    /// The links among them that go through a relay (sub-links, virtual links): not counted
    /// by [`SessionDriver::live_links`].
    relayed: std::collections::HashSet<LinkId>,
    /// Links closed by [`SessionDriver::retire_links`], until their tasks remove them.
    retired: std::collections::HashSet<LinkId>,
    /// Links the peer closed with a `CLOSE` code other than `close::LINK`, until their tasks
    /// remove them: why, for the link's end ([`SessionDriver::peer_close`]).
    peer_closed: HashMap<LinkId, u16>,
    /// Server: the sessions the client said this one replaces ([`Event::Forget`]), until the
    /// daemon takes them ([`SessionDriver::take_forgets`]).
    forgets: Vec<crate::frame::SecretBytes>,
    /// Scratch for [`Session::poll_wakes`].
    wakes: Vec<LinkId>,
    /// The daemon's, woken when this session's engine is dropped with it.
    budget_signal: BudgetSignal,
    /// Deadline the timer task sleeps toward.
    armed: Option<Instant>,
    next_link: u64,
}

/// What [`SessionDriver::on_refused`] keeps.
struct RefusedHook(Box<dyn Fn(u16) + Send + Sync>);

impl std::fmt::Debug for RefusedHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefusedHook")
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Set by [`SessionDriver::close`], [`SessionDriver::abandon`] or a panic under `state`.
    /// Outside the lock, so that a daemon can check a session without waiting for it.
    closed: AtomicBool,
    /// [`SessionDriver::live_links`], kept outside the lock (set under it, whenever the links
    /// change): a client asks for every connection it accepts.
    live: AtomicUsize,
    /// Wakes the timer task: the deadline moved earlier.
    timer: Notify,
    /// Wakes whoever waits for the set of links to change.
    links_changed: Notify,
    /// Wakes the link tasks when the session is closed.
    closing: Notify,
    /// The session was closed in order ([`SessionDriver::close`], [`close_flushed`]), not
    /// abandoned: its links put out what their writers took before they close.
    orderly: AtomicBool,
    /// Wakes the client's link pool: the server wants another link.
    more_links: Notify,
    /// The peer (a node) said it is stopping: `DRAINING`. Cleared by a restart.
    peer_draining: AtomicBool,
    /// Client: the id of the node this session is with, for the log lines about it that are
    /// written where its frames are read (on any node's link, relayed).
    peer_node: std::sync::OnceLock<u16>,
    /// Server: the client said the session is over ([`SessionDriver::peer_ended`]).
    peer_ended: AtomicBool,
    /// Client: this end said the session is over ([`SessionDriver::end_session`]).
    ending: AtomicBool,
    /// Client: the streams the node refused, logged as counts ([`Refusals`]).
    refusals: Refusals,
    /// Server: told the code of each stream the engine refused on its own account
    /// ([`Event::Refused`]; [`SessionDriver::on_refused`]).
    refused_hook: std::sync::OnceLock<RefusedHook>,
    /// Server: the share of log lines of the session's client ([`SessionDriver::log_lines`]).
    log_budget: std::sync::OnceLock<crate::lograte::LineBudget>,
    /// Server: the links the client closed because this node's id is not the one it has for
    /// the address, one `warn` line a minute ([`SessionDriver::wrong_node`]).
    wrong_node: crate::lograte::Tally<String>,
    opened: mpsc::UnboundedSender<(StreamId, String)>,
    /// The daemon's: wakes the budget task of every session.
    budget: BudgetSignal,
    /// Traffic totals, possibly shared with other sessions.
    counters: Arc<Counters>,
}

/// The session's state, locked. A panic while it is held closes the session: its tasks end
/// and the daemon drops it; the daemon's other sessions go on. How long it was held is counted
/// ([`Totals::lock_held_ns`]).
struct Locked<'a> {
    guard: MutexGuard<'a, State>,
    shared: &'a Shared,
    /// When the lock was taken: also the engine's `now` for the call it is taken for.
    since: Instant,
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.shared.counters.lock_held(self.since.elapsed());
        if std::thread::panicking() && !self.shared.closed.swap(true, Ordering::AcqRel) {
            tracing::error!("a panic in this session's code: the session is closed");
            self.shared.closing.notify_waiters();
            self.shared.timer.notify_one();
        }
    }
}

/// Wakes every session of a daemon when one of them gave memory back to the budget they share
/// while some session waited for it ([`Event::BudgetReleased`]). A daemon makes one next to its
/// [`crate::budget::Budget`] and passes it to every [`SessionDriver::start`].
#[derive(Debug, Clone, Default)]
pub struct BudgetSignal(Arc<Notify>);

impl BudgetSignal {
    /// Wakes every session, so that those waiting for memory retry.
    pub fn wake_all(&self) {
        self.0.notify_waiters();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.counters.engine_freed();
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // The engine's memory goes back to the budget with it, and nobody is left to report
        // that a waiting session may now have it.
        self.budget_signal.wake_all();
    }
}

/// A running session: cheap to clone, one per client session.
#[derive(Debug, Clone)]
pub struct SessionDriver {
    shared: Arc<Shared>,
}

/// Where a link goes and what it runs over, as status shows it ([`SessionDriver::label_link`]).
#[derive(Debug, Clone)]
pub struct LinkLabel {
    /// The other end's address: the node address dialled, or the client's address.
    pub address: String,
    /// `"tcp"`, `"quic"`, or `"quic+noise"` (a QUIC link on ALPN `wanmux/1`).
    pub transport: &'static str,
    /// A QUIC link's connection, for the transport's counts in `status`; `None` on TCP links
    /// and on lane streams (their connection is their link's).
    pub probe: Option<crate::quic::PathProbe>,
}

/// What a link is to its engine ([`SessionDriver::add_link_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// A link of the session's own, to or from the peer.
    Direct,
    /// A direct link that is a dedicated interactive lane (`links.lanes`).
    Lane,
    /// A sub-link or virtual link through a relay node (`Session::add_relayed_link`).
    Relayed,
    /// A relayed link over a dedicated lane of the relay node (`Session::add_relayed_lane`).
    RelayedLane,
}

/// Streams the peer opened (server side): the driver's owner connects them to services.
pub type OpenedStreams = mpsc::UnboundedReceiver<(StreamId, String)>;

impl SessionDriver {
    /// Starts driving `session`: spawns its timer task. Returns the driver and the receiver of
    /// streams the peer opens.
    /// `budget` is the daemon's signal for the budget `session` draws on.
    pub fn start(session: Session, budget: &BudgetSignal) -> (SessionDriver, OpenedStreams) {
        Self::start_counted(session, budget, Arc::default())
    }

    /// [`SessionDriver::start`], counting traffic into `counters` (which other sessions may
    /// share: a daemon's totals outlive its sessions).
    pub fn start_counted(
        session: Session,
        budget: &BudgetSignal,
        counters: Arc<Counters>,
    ) -> (SessionDriver, OpenedStreams) {
        let (tx, rx) = mpsc::unbounded_channel();
        counters.engine_made();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                session,
                wakers: HashMap::new(),
                link_wakers: HashMap::new(),
                link_kills: HashMap::new(),
                link_labels: HashMap::new(),
                relayed: std::collections::HashSet::new(),
                retired: std::collections::HashSet::new(),
                peer_closed: HashMap::new(),
                forgets: Vec::new(),
                wakes: Vec::new(),
                budget_signal: budget.clone(),
                armed: None,
                next_link: 0,
            }),
            closed: AtomicBool::new(false),
            live: AtomicUsize::new(0),
            timer: Notify::new(),
            links_changed: Notify::new(),
            closing: Notify::new(),
            more_links: Notify::new(),
            peer_draining: AtomicBool::new(false),
            peer_node: std::sync::OnceLock::new(),
            peer_ended: AtomicBool::new(false),
            ending: AtomicBool::new(false),
            orderly: AtomicBool::new(false),
            refused_hook: std::sync::OnceLock::new(),
            log_budget: std::sync::OnceLock::new(),
            wrong_node: crate::lograte::Tally::new(Duration::from_secs(60), link::log_wrong_node),
            refusals: Refusals::default(),
            opened: tx,
            budget: budget.clone(),
            counters,
        });
        let driver = SessionDriver { shared };
        tokio::spawn(driver.clone().run_timer());
        tokio::spawn(driver.clone().run_budget());
        (driver, rx)
    }

    /// The traffic counters this session counts into.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.shared.counters
    }

    fn lock(&self) -> Locked<'_> {
        // A panic under this lock (a bug in the engine or here) may have left the state torn;
        // `Locked` closed the session as it unwound. Panicking on the poisoned lock instead
        // would reach every later user, destructors among them, and a panic in a destructor
        // while the first one unwinds aborts the whole daemon.
        let guard = match self.shared.state.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                // Contended: the wait is counted (the uncontended path reads no clock for it).
                let asked = Instant::now();
                let guard = self
                    .shared
                    .state
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                self.shared.counters.lock_waited(asked.elapsed());
                guard
            }
        };
        Locked {
            guard,
            shared: &self.shared,
            since: Instant::now(),
        }
    }

    /// Records where link `id` goes and what it runs over, for status (`status`). A link that
    /// is gone already is not recorded; the label goes with its link.
    pub fn label_link(&self, id: LinkId, label: LinkLabel) {
        let mut st = self.lock();
        if st.link_kills.contains_key(&id) {
            st.link_labels.insert(id, label);
        }
    }

    /// The labels of the links up now.
    pub fn link_labels(&self) -> HashMap<LinkId, LinkLabel> {
        self.lock().link_labels.clone()
    }

    /// Runs `f` on the engine with the current time, then forwards events and wakes links and
    /// the timer as needed.
    pub fn with<R>(&self, f: impl FnOnce(&mut Session, Instant) -> R) -> R {
        let mut st = self.lock();
        let now = st.since;
        let r = f(&mut st.session, now);
        self.after(&mut st, now);
        r
    }

    /// Carries out what the engine decided in the last call: events, writers to wake, the
    /// timer.
    fn after(&self, st: &mut State, now: Instant) {
        while let Some(ev) = st.session.poll_event() {
            match ev {
                Event::StreamOpened { stream, service } => {
                    let _ = self.shared.opened.send((stream, service));
                }
                Event::StreamReadable(id) => {
                    if let Some(w) = st.wakers.get(&id) {
                        w.readable.notify_one();
                    }
                }
                Event::StreamWritable(id) => {
                    if let Some(w) = st.wakers.get(&id) {
                        w.writable.notify_one();
                    }
                }
                Event::MoreLinksWanted => self.shared.more_links.notify_one(),
                Event::PeerDraining => {
                    if !self.shared.peer_draining.swap(true, Ordering::AcqRel) {
                        // Not in the span of the link it came on: that may be another node's
                        // (relayed), whose id the span would name.
                        match self.shared.peer_node.get() {
                            Some(node) => tracing::info!(
                                parent: None,
                                node,
                                "the node is draining: it finishes its connections and stops"
                            ),
                            None => tracing::info!(
                                "the peer is draining: it finishes its connections and stops"
                            ),
                        }
                    }
                }
                Event::StreamRefused { stream, code } => self.shared.refusals.hit(code, stream),
                Event::Refused { code } => {
                    if let Some(hook) = self.shared.refused_hook.get() {
                        (hook.0)(code);
                    }
                }
                Event::BudgetReleased => self.shared.budget.wake_all(),
                Event::WindowHeld { held, streams } => tracing::warn!(
                    held_mib = held >> 20,
                    streams,
                    "streams whose applications do not read hold nearly all of this session's \
                     limits.session_window: its other streams wait for them (an application \
                     that stopped reading: a paused download, a hung service; each such stream \
                     takes up to 2 MiB of the window, or raise limits.session_window)"
                ),
                Event::SessionOver => {
                    self.shared.peer_ended.store(true, Ordering::Release);
                    self.shared.links_changed.notify_waiters();
                }
                Event::Forget(secret) => {
                    st.forgets.push(secret);
                    self.shared.links_changed.notify_waiters();
                }
                Event::LinkTimedOut(id) | Event::LinkClosedByPeer { link: id, .. } => {
                    if let Event::LinkClosedByPeer { code, .. } = ev {
                        if code != crate::frame::close::LINK && st.link_kills.contains_key(&id) {
                            st.peer_closed.insert(id, code);
                        }
                    }
                    // The engine no longer has the link, and its task ends. Its writer is woken
                    // too: a sub-link's writer is its carrier link's, which learns of the
                    // death only when it polls the sub-link (and then pings the carrier).
                    if let Some(w) = st.link_wakers.remove(&id) {
                        w.notify_one();
                    }
                    if let Some(k) = st.link_kills.get(&id) {
                        k.notify_one();
                    }
                }
            }
        }
        let mut wakes = std::mem::take(&mut st.wakes);
        st.session.poll_wakes(now, &mut wakes);
        for id in wakes.drain(..) {
            if let Some(w) = st.link_wakers.get(&id) {
                w.notify_one();
            }
        }
        st.wakes = wakes;
        let next = st.session.poll_timeout();
        if next.is_some_and(|n| st.armed.is_none_or(|a| n < a)) {
            st.armed = next;
            self.shared.timer.notify_one();
        }
    }

    /// Gathers up to `gathered.len()` messages for link `id` under the lock: their frames
    /// encoded, their stream data referenced ([`Gathered`]). When there is none, the writer is
    /// parked (under the same lock, so no wake-up is lost) until [`SessionDriver`] wakes it.
    /// `None`: the engine dropped the link (ping timeout, peer's `CLOSE`); the writer ends.
    /// The caller copies each message where it goes ([`Gathered::copy_to`]) with the lock
    /// released, the only work per byte in building a message, and then lets go of it
    /// ([`Gathered::release`]).
    fn poll_gathered(&self, id: LinkId, gathered: &mut [Gathered]) -> Option<usize> {
        let mut st = self.lock();
        if !st.session.has_link(id) {
            return None;
        }
        let now = st.since;
        let mut n = 0;
        while n < gathered.len() && st.session.poll_transmit(now, id, &mut gathered[n]) {
            self.shared.counters.link_sent(gathered[n].len());
            n += 1;
        }
        if n == 0 {
            st.session.park_writer(now, id);
        }
        self.after(&mut st, now);
        Some(n)
    }

    /// [`SessionDriver::poll_gathered`] into `writer`: each message gathered is copied, with
    /// the lock released, into the writer's output buffer, where the flush seals it
    /// ([`LinkWriter::begin`]). `None`: the engine dropped the link; `Some(Err)`: the writer
    /// cannot take a message (its link is ending: the messages gathered are lost with it, and
    /// the engine sends their data again on other links).
    ///
    /// [`LinkWriter::begin`]: crate::noise::LinkWriter::begin
    pub(crate) fn poll_link_into(
        &self,
        id: LinkId,
        writer: &mut crate::noise::LinkWriter,
        gathered: &mut [Gathered],
    ) -> Option<Result<usize, crate::noise::LinkError>> {
        let n = self.poll_gathered(id, gathered)?;
        let mut failed = None;
        for g in &mut gathered[..n] {
            if failed.is_none() {
                let copied = writer.begin().and_then(|mut body| {
                    g.copy_to(&mut body);
                    writer.commit(body)
                });
                failed = copied.err();
            }
            g.release();
        }
        Some(failed.map_or(Ok(n), Err))
    }

    /// Completes when the server asks for another link (client side).
    pub async fn more_links_wanted(&self) {
        self.shared.more_links.notified().await;
    }

    /// Whether the session has data or control frames waiting for a link.
    pub fn wants_transmit(&self) -> bool {
        self.lock().session.wants_transmit()
    }

    async fn run_timer(self) {
        loop {
            let notified = self.shared.timer.notified();
            let deadline = {
                let st = self.lock();
                if self.is_closed() {
                    return;
                }
                st.session.poll_timeout()
            };
            match deadline {
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(d.into()) => {
                            let mut st = self.lock();
                            st.armed = None;
                            let now = st.since;
                            st.session.handle_timeout(now);
                            self.after(&mut st, now);
                        }
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    async fn run_budget(self) {
        let signal = self.shared.budget.clone();
        loop {
            // Enabled before the engine is checked, so no release in between is missed.
            let released = signal.0.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut st = self.lock();
                if self.is_closed() {
                    return;
                }
                if st.session.budget_blocked() {
                    let now = st.since;
                    st.session.retry_budget(now);
                    self.after(&mut st, now);
                }
            }
            tokio::select! {
                _ = released => {}
                _ = self.closed() => return,
            }
        }
    }

    /// Registers a stream's wakers; the stream task calls this before touching the stream.
    pub(crate) fn register(&self, id: StreamId) -> Arc<StreamWaker> {
        self.shared.counters.stream();
        let w = Arc::new(StreamWaker::default());
        self.lock().wakers.insert(id, w.clone());
        w
    }

    /// Opens a stream with `open` (which returns its id), registers its wakers and asks for its
    /// send capacity, all under one lock; run it with [`stream::run_opened`].
    pub fn open_stream<E>(
        &self,
        open: impl FnOnce(&mut Session, Instant) -> Result<StreamId, E>,
    ) -> Result<stream::Opened, E> {
        let mut st = self.lock();
        let now = st.since;
        let r = open(&mut st.session, now);
        let opened = r.map(|id| {
            let waker = Arc::new(StreamWaker::default());
            st.wakers.insert(id, waker.clone());
            let capacity = st.session.stream_send_capacity(id).unwrap_or(0);
            stream::Opened {
                id,
                waker,
                capacity,
            }
        });
        self.after(&mut st, now);
        drop(st);
        if opened.is_ok() {
            self.shared.counters.stream();
        }
        opened
    }

    pub(crate) fn unregister(&self, id: StreamId) {
        self.lock().wakers.remove(&id);
    }

    /// Allocates a link id, adds the link to the engine and returns the waker of its writer.
    /// Also returns the notifier that fires when the engine declares the link dead.
    pub(crate) fn add_link(&self, lane: bool) -> (LinkId, Arc<Notify>, Arc<Notify>) {
        let waker = Arc::new(Notify::new());
        let (id, kill) = self.add_link_with(
            if lane {
                LinkKind::Lane
            } else {
                LinkKind::Direct
            },
            waker.clone(),
        );
        (id, waker, kill)
    }

    /// Allocates a link id and adds a link of `kind` to the engine, whose writer `waker` wakes
    /// (several links, of several sessions, may share one: a client link's writer serves its
    /// own session and the sub-links of the others). Returns the id and the notifier that fires
    /// when the engine declares the link dead. Remove it with [`SessionDriver::remove_link`].
    pub fn add_link_with(&self, kind: LinkKind, waker: Arc<Notify>) -> (LinkId, Arc<Notify>) {
        let mut st = self.lock();
        let now = st.since;
        st.next_link += 1;
        let id = LinkId(st.next_link);
        st.link_wakers.insert(id, waker);
        let kill = Arc::new(Notify::new());
        st.link_kills.insert(id, kill.clone());
        match kind {
            LinkKind::Direct => st.session.add_link(now, id),
            LinkKind::Lane => st.session.add_lane(now, id),
            LinkKind::Relayed => {
                st.relayed.insert(id);
                st.session.add_relayed_link(now, id);
            }
            LinkKind::RelayedLane => {
                st.relayed.insert(id);
                st.session.add_relayed_lane(now, id);
            }
        }
        let relayed = matches!(kind, LinkKind::Relayed | LinkKind::RelayedLane);
        if !relayed {
            self.shared.counters.link();
        }
        self.count_live(&st);
        self.after(&mut st, now);
        drop(st);
        if !relayed {
            self.shared.links_changed.notify_waiters();
        }
        (id, kill)
    }

    /// Removes a link from the engine (what it carried unconfirmed goes out on the others).
    pub fn remove_link(&self, id: LinkId) {
        let mut st = self.lock();
        st.link_wakers.remove(&id);
        st.link_kills.remove(&id);
        st.link_labels.remove(&id);
        st.relayed.remove(&id);
        st.retired.remove(&id);
        st.peer_closed.remove(&id);
        self.count_live(&st);
        // Called from a destructor, maybe while a panic unwinds: a torn engine is left alone.
        if !self.shared.state.is_poisoned() {
            let now = st.since;
            st.session.remove_link(id);
            self.after(&mut st, now);
        }
        drop(st);
        self.shared.links_changed.notify_waiters();
    }

    /// Closes every direct link of the session now, as if each had stopped answering, but says
    /// why ([`LinkEnd::Retired`](link::LinkEnd::Retired)): their peer dials again and the session
    /// and its streams go on over the new links. A node whose reload changed what its links are
    /// authenticated against (a client CA, a revocation list) checks every link again this way.
    pub fn retire_links(&self) {
        let mut st = self.lock();
        let st = &mut *st;
        for (id, kill) in &st.link_kills {
            if !st.relayed.contains(id) {
                st.retired.insert(*id);
                kill.notify_one();
            }
        }
    }

    /// Whether `id` was closed by [`SessionDriver::retire_links`].
    pub fn is_retired(&self, id: LinkId) -> bool {
        self.lock().retired.contains(&id)
    }

    /// Client: the client stops in order; the node is told the session is over
    /// ([`Session::end_session`]) and ends it at once. No link is dialled for it from now on
    /// ([`SessionDriver::is_ending`]): the node would start the session afresh.
    pub fn end_session(&self) {
        self.shared.ending.store(true, Ordering::Release);
        self.with(|s, _| s.end_session());
    }

    /// Whether the session is over here: closed, or ending ([`SessionDriver::end_session`]).
    pub fn is_ending(&self) -> bool {
        self.shared.ending.load(Ordering::Acquire) || self.is_closed()
    }

    /// The code of the `CLOSE` with a reason the peer sent on link `id`, if it sent one.
    pub(crate) fn peer_close(&self, id: LinkId) -> Option<u16> {
        self.lock().peer_closed.get(&id).copied()
    }

    /// Server: the client said the session is over (it stopped in order): end it now.
    pub fn peer_ended(&self) -> bool {
        self.shared.peer_ended.load(Ordering::Acquire)
    }

    /// Whether the session has a link, direct or through a relay (a node's virtual link, a
    /// client's sub-link): its streams can still move.
    pub fn reachable(&self) -> bool {
        !self.lock().link_kills.is_empty()
    }

    /// Direct links currently up (links through a relay are not counted). Takes no lock.
    pub fn live_links(&self) -> usize {
        self.shared.live.load(Ordering::Acquire)
    }

    /// Sets [`SessionDriver::live_links`] from the link tables, under their lock (so the count
    /// changes before `links_changed` wakes anyone).
    fn count_live(&self, st: &State) {
        // Every link has a kill switch from `add_link` until `remove_link`.
        let live = st.link_kills.len() - st.relayed.len();
        self.shared.live.store(live, Ordering::Release);
    }

    /// Links through a relay currently up (sub-links on the client, virtual links on a node).
    pub fn relayed_links(&self) -> usize {
        self.lock().relayed.len()
    }

    /// Gathers up to `gathered.len()` messages for link `id` (as the link tasks poll theirs) for
    /// a writer that serves several sessions, which wraps each in its own header and copies it
    /// after ([`Gathered::copy_to`], then [`Gathered::release`]): `None` when the engine no
    /// longer has the link. A writer that found nothing anywhere waits for its waker.
    pub fn poll_relayed(&self, id: LinkId, gathered: &mut [Gathered]) -> Option<usize> {
        self.poll_gathered(id, gathered)
    }

    /// Feeds one message of link `id` to the engine; `Err` is the peer's fault.
    pub fn handle_message(
        &self,
        id: LinkId,
        msg: bytes::Bytes,
    ) -> Result<(), crate::engine::PeerError> {
        self.with(|s, now| s.handle_message(now, id, msg))
    }

    /// Completes when the number of links changes (or spuriously). The change is watched from
    /// this call on, not from the first poll: check [`live_links`](Self::live_links) after
    /// calling it and await it after, and no change in between is lost.
    pub fn links_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.links_changed.notified()
    }

    /// Resets every stream, closes every link and stops the timer: the session is over.
    /// Stream tasks see their streams reset and close their sockets.
    pub fn close(&self, code: u16) {
        self.reset_all(code);
        self.end();
    }

    /// Resets every stream and closes every link at once, without the orderly close's wait for
    /// the peer ([`SessionDriver::close`]): for a session whose peer said it is over, which
    /// expects nothing more and closes its links once it sees them closed here.
    pub fn close_at_once(&self, code: u16) {
        self.reset_all(code);
        self.abandon();
    }

    /// Closes every link and stops the timer, each link's writer first putting out what it
    /// took and shutting its half (on QUIC: until the peer acknowledged it, at most
    /// [`link::CLOSE_LINGER`]).
    fn end(&self) {
        self.shared.orderly.store(true, Ordering::Release);
        self.abandon();
        // The parked link writers wake to shut their halves.
        for w in self.lock().link_wakers.values() {
            w.notify_one();
        }
    }

    /// Server: `hook` is told the `RESET` code of every stream the engine refuses on its own
    /// account (the stream limit, memory, no `OPEN`), under the session's lock: it counts and
    /// logs, nothing more. Set once, before the first link joins; later calls are ignored.
    pub fn on_refused(&self, hook: impl Fn(u16) + Send + Sync + 'static) {
        let _ = self.shared.refused_hook.set(RefusedHook(Box::new(hook)));
    }

    /// Server: the lines a link of this session logs at `info` (its end) come out of `budget`,
    /// which the sessions of one client share; past it they are logged at `debug`. Set once;
    /// later calls are ignored.
    pub fn log_lines(&self, budget: crate::lograte::LineBudget) {
        let _ = self.shared.log_budget.set(budget);
    }

    /// Whether a line about this session may be logged at `info` ([`SessionDriver::log_lines`]);
    /// always, without a budget.
    pub fn may_log(&self) -> bool {
        self.shared.log_budget.get().is_none_or(|b| b.allow())
    }

    /// A link ended with the client's `WRONG_NODE` (`end`, its text): the client has another
    /// node id for this node's address, the operator's mistake. Logged at `warn`, at most one
    /// line a minute for the session, with the count of such ends (the client dials again,
    /// backing off; a trial's node logged 87 lines in 35 s, one per link).
    pub(crate) fn wrong_node(&self, end: String) {
        self.shared.wrong_node.hit(end);
    }

    /// The grace of a session with no direct link since `alone` ([`Grace`]), at `now`: it
    /// runs for `grace` from then, or from the last message through a relay if later, and half
    /// way through without word it pings the relayed links once.
    pub fn grace(&self, alone: Instant, grace: Duration, probed: &mut Option<Instant>) -> Grace {
        let now = Instant::now();
        let heard = self.with(|s, _| s.heard_through_relay());
        let last = heard.map_or(alone, |h| h.max(alone));
        // Unless heard since: an idle session's relayed links ping every 10 s, which a grace
        // can be shorter than.
        let probe_at = last + grace / 2;
        if now >= probe_at && *probed != Some(last) {
            *probed = Some(last);
            self.with(|s, now| s.probe_relayed(now));
        }
        Grace {
            now,
            deadline: last + grace,
            wake: if *probed == Some(last) {
                last + grace
            } else {
                probe_at
            },
            heard_through_relay: heard.is_some(),
        }
    }

    /// Server: the secrets of the sessions the client said this one replaces (`FORGET`), since
    /// the last call; [`SessionDriver::links_changed`] wakes when one comes.
    pub fn take_forgets(&self) -> Vec<crate::frame::SecretBytes> {
        std::mem::take(&mut self.lock().forgets)
    }

    /// Whether the session was closed in order ([`SessionDriver::close`], [`close_flushed`]).
    pub(crate) fn closed_in_order(&self) -> bool {
        self.shared.orderly.load(Ordering::Acquire)
    }

    /// Resets every stream and wakes the link writers to send the `RESET`s, leaving the links
    /// up: the first step of [`SessionDriver::close`] and [`SessionDriver::close_at_once`].
    fn reset_all(&self, code: u16) {
        let mut st = self.lock();
        st.session.reset_all(code);
        let now = st.since;
        self.after(&mut st, now);
    }

    /// Client: names the node this session is with, in the log lines about it (set once).
    pub fn set_peer_node(&self, node: u16) {
        let _ = self.shared.peer_node.set(node);
    }

    /// Client: the streams the node refused since this driver was made, by reason (labels as the
    /// node's `wanmux_stream_refusals_total`: `unknown_service`, `service_connect_failed`,
    /// `stream_limit`), every reason listed. Each one reset an application's connection.
    pub fn stream_refusals(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let counts = &self.shared.refusals.counts;
        Refusals::LABELS
            .into_iter()
            .zip(counts.iter().map(|n| n.load(Ordering::Relaxed)))
    }

    /// Client: the node said it is stopping (`DRAINING`) and refuses new streams; a restart
    /// of the session (the node came back under a new epoch) clears it.
    pub fn peer_draining(&self) -> bool {
        self.shared.peer_draining.load(Ordering::Acquire)
    }

    /// Stream tasks still running: each ends once it closed its application socket.
    pub fn stream_tasks(&self) -> usize {
        self.lock().wakers.len()
    }

    /// Closes every link and stops the timer without telling the peer anything about the
    /// streams, as a crash would: the peer finds out when it reconnects and sees a new epoch.
    pub fn abandon(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.closing.notify_waiters();
        self.shared.timer.notify_one();
    }

    /// Completes once [`SessionDriver::close`] or [`SessionDriver::abandon`] was called.
    pub async fn closed(&self) {
        loop {
            let notified = self.shared.closing.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Resets every stream and starts the session afresh on the same links: the peer lost it.
    pub fn restart(&self) {
        self.shared.peer_draining.store(false, Ordering::Release);
        let mut st = self.lock();
        st.session.restart();
        let now = st.since;
        self.after(&mut st, now);
    }

    /// Whether two handles drive the same session.
    pub fn same(&self, other: &SessionDriver) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Whether [`SessionDriver::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

/// Where the grace of a session with no direct link stands ([`SessionDriver::grace`]).
#[derive(Debug, Clone, Copy)]
pub struct Grace {
    /// When it was read.
    pub now: Instant,
    /// When it is over, unless a link comes or word through a relay.
    pub deadline: Instant,
    /// When to look again: the deadline, or the probe half way before it.
    pub wake: Instant,
    /// The peer was ever heard through a relay.
    pub heard_through_relay: bool,
}

/// The client's view of the streams a node refused: counted by reason (for `status` and the
/// metrics, [`SessionDriver::stream_refusals`]), and one `warn` line per reason at most every
/// 10 s with the count (`lograte`). The node's operator sees its own lines, these are for the
/// client's, whose map may name a service the node does not have.
#[derive(Debug)]
struct Refusals {
    /// By reason, in the order of [`Refusals::LABELS`].
    counts: [AtomicU64; 3],
    unknown: crate::lograte::Tally<StreamId>,
    unreachable: crate::lograte::Tally<StreamId>,
    full: crate::lograte::Tally<StreamId>,
}

impl Default for Refusals {
    fn default() -> Self {
        const EVERY: std::time::Duration = std::time::Duration::from_secs(10);
        Refusals {
            counts: Default::default(),
            unknown: crate::lograte::Tally::new(EVERY, |n, s| {
                tracing::warn!(
                    node = s.owner().0,
                    connections = n,
                    "the node has no such service: connections reset (a map's `service` names \
                     none of the node's [[service]])"
                );
            }),
            unreachable: crate::lograte::Tally::new(EVERY, |n, s| {
                tracing::warn!(
                    node = s.owner().0,
                    connections = n,
                    "the node cannot connect to the service: connections reset (its log says why)"
                );
            }),
            full: crate::lograte::Tally::new(EVERY, |n, s| {
                tracing::warn!(
                    node = s.owner().0,
                    connections = n,
                    "the node is at its stream limit (its limits.max_streams): connections reset"
                );
            }),
        }
    }
}

impl Refusals {
    /// The reasons' labels in `status` and the metrics: the node's own for the same refusals.
    const LABELS: [&'static str; 3] = ["unknown_service", "service_connect_failed", "stream_limit"];

    fn hit(&self, code: u16, stream: StreamId) {
        use crate::frame::reset;
        let (i, tally) = match code {
            reset::UNKNOWN_SERVICE => (0, &self.unknown),
            reset::CONNECT_FAILED => (1, &self.unreachable),
            reset::TOO_MANY_STREAMS => (2, &self.full),
            _ => return,
        };
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        tally.hit(stream);
    }
}

/// How often [`close_flushed`] looks whether its steps are done.
const CLOSE_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// Closes `drivers` so that the peer and the applications know at once, within `limit` in all:
/// resets every stream and closes the session in order (each link's writer puts out the
/// `RESET`s and whatever else the session has to send, then shuts its half: on QUIC, until the
/// peer acknowledged it and closed the connection), and waits for the links to end and for the
/// stream tasks to close their sockets with an RST. A daemon that stops without this lets its
/// runtime drop the stream tasks, whose sockets then end with a FIN, and the peer learns of
/// nothing until its links are gone for its grace: cut-off transfers would look complete.
pub async fn close_flushed(drivers: &[SessionDriver], code: u16, limit: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    for d in drivers {
        d.close(code);
    }
    // Stream tasks close their sockets; links see what they sent acknowledged and close.
    wait_all(drivers, deadline, |d| {
        d.stream_tasks() == 0 && d.live_links() == 0
    })
    .await;
}

/// Waits until `done` holds for every one of `drivers`, or `deadline`.
async fn wait_all(
    drivers: &[SessionDriver],
    deadline: tokio::time::Instant,
    done: impl Fn(&SessionDriver) -> bool,
) {
    while tokio::time::Instant::now() < deadline && !drivers.iter().all(&done) {
        tokio::time::sleep(CLOSE_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Config, Role};
    use crate::ids::NodeId;

    /// A change of the link count between `links_changed()` and its first poll is not lost:
    /// the watcher's pattern (ask, check the count, then wait) cannot miss the link that came up
    /// in between.
    #[tokio::test]
    async fn a_link_change_before_the_first_poll_is_seen() {
        let signal = BudgetSignal::default();
        let session = Session::new(Role::Server(NodeId(1)), Config::default());
        let (driver, _opened) = SessionDriver::start(session, &signal);
        let changed = driver.links_changed();
        assert_eq!(driver.live_links(), 0);
        let (link, _, _) = driver.add_link(false);
        tokio::time::timeout(std::time::Duration::from_secs(1), changed)
            .await
            .expect("the change is seen");
        driver.remove_link(link);
    }

    /// Issue 23, finding 9: a panic under the session's lock closes that session; every later
    /// use of it, destructors' included, goes on without panicking.
    #[tokio::test]
    async fn a_panic_under_the_lock_closes_the_session_only() {
        let signal = BudgetSignal::default();
        let session = Session::new(Role::Server(NodeId(1)), Config::default());
        let (driver, _opened) = SessionDriver::start(session, &signal);
        let (link, _, _) = driver.add_link(false);
        let d = driver.clone();
        let task = tokio::spawn(async move {
            d.with(|_, _| panic!("a bug in the engine"));
        });
        assert!(task.await.is_err_and(|e| e.is_panic()));
        assert!(driver.is_closed(), "the session is closed");
        // What a link's destructor and a daemon's status call do: no second panic.
        driver.remove_link(link);
        assert_eq!(driver.live_links(), 0);
        assert_eq!(driver.with(|s, _| s.stream_count()), 0);
        driver.closed().await;
        // Another session of the daemon is untouched.
        let other = Session::new(Role::Server(NodeId(1)), Config::default());
        let (other, _) = SessionDriver::start(other, &signal);
        assert!(!other.is_closed());
        other.add_link(false);
        assert_eq!(other.live_links(), 1);
    }
}
