//! The tokio driver of one [`Session`], shared by the client and the server daemons.
//!
//! The engine sits behind one mutex; every task locks it briefly through [`SessionDriver::with`],
//! which also forwards the engine's events (waking the stream tasks they name), wakes the link
//! writers when there is something to send, and re-arms the timer task when the engine's next
//! deadline moved earlier. Tasks of one session:
//!
//! - per link, a reader (decrypt, `handle_message`) and a writer (`poll_transmit`, encrypt,
//!   write), see [`link`];
//! - per stream, one task pumping bytes between its TCP socket and the engine, see [`stream`];
//! - one timer task (`poll_timeout` / `handle_timeout`);
//! - one budget task: when the daemon's memory budget frees bytes while this session has
//!   streams waiting for it, it lets the engine retry ([`Session::retry_budget`]).
//!
//! Nothing here decides what goes where: that is the engine's job.

pub mod link;
pub mod stream;

use crate::engine::{Event, Session};
use crate::ids::{LinkId, StreamId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::{mpsc, Notify};

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
    /// Writers that found nothing to send and wait to be woken.
    idle_writers: Vec<LinkId>,
    /// Per link: whether its writer last found work, and since when (for elastic links).
    activity: HashMap<LinkId, LinkActivity>,
    /// Deadline the timer task sleeps toward.
    armed: Option<Instant>,
    next_link: u64,
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the timer task: the deadline moved earlier.
    timer: Notify,
    /// Wakes whoever waits for the set of links to change.
    links_changed: Notify,
    /// Wakes the link tasks when the session is closed.
    closing: Notify,
    /// Wakes the client's link pool: the server wants another link.
    more_links: Notify,
    opened: mpsc::UnboundedSender<(StreamId, String)>,
}

/// What a link's writer has been doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkActivity {
    /// It found data to send the last time it looked.
    pub busy: bool,
    /// Since when `busy` has had this value.
    pub since: Instant,
}

/// The idle writer to wake for session-level work: of those that would find work (see
/// [`Session::has_work_for`]), the one with the lowest smoothed RTT, so small interactive
/// frames take the quickest path when links are idle.
fn pick_writer(session: &Session, idle: &[LinkId]) -> Option<usize> {
    let rtt = |id: &LinkId| {
        session
            .link_stats(*id)
            .and_then(|s| s.rtt.smoothed)
            .unwrap_or(std::time::Duration::MAX)
    };
    idle.iter()
        .enumerate()
        .filter(|(_, id)| session.has_work_for(**id))
        .min_by_key(|(_, id)| rtt(id))
        .map(|(i, _)| i)
}

/// A running session: cheap to clone, one per client session.
#[derive(Debug, Clone)]
pub struct SessionDriver {
    shared: Arc<Shared>,
}

/// Streams the peer opened (server side): the driver's owner connects them to services.
pub type OpenedStreams = mpsc::UnboundedReceiver<(StreamId, String)>;

impl SessionDriver {
    /// Starts driving `session`: spawns its timer task. Returns the driver and the receiver of
    /// streams the peer opens.
    pub fn start(session: Session) -> (SessionDriver, OpenedStreams) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                session,
                wakers: HashMap::new(),
                link_wakers: HashMap::new(),
                link_kills: HashMap::new(),
                idle_writers: Vec::new(),
                activity: HashMap::new(),
                armed: None,
                next_link: 0,
                closed: false,
            }),
            timer: Notify::new(),
            links_changed: Notify::new(),
            closing: Notify::new(),
            more_links: Notify::new(),
            opened: tx,
        });
        let driver = SessionDriver { shared };
        tokio::spawn(driver.clone().run_timer());
        tokio::spawn(driver.clone().run_budget());
        (driver, rx)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug in the engine; the state may be torn, so
        // every later user fails loudly too rather than running on it.
        self.shared
            .state
            .lock()
            .expect("session state poisoned by an earlier panic")
    }

    /// Runs `f` on the engine with the current time, then forwards events and wakes links and
    /// the timer as needed.
    pub fn with<R>(&self, f: impl FnOnce(&mut Session, Instant) -> R) -> R {
        let mut st = self.lock();
        let now = Instant::now();
        let r = f(&mut st.session, now);
        self.after(&mut st);
        r
    }

    fn after(&self, st: &mut State) {
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
                Event::LinkTimedOut(id) | Event::LinkClosedByPeer(id) => {
                    // The engine no longer has the link: its writer must not be woken for
                    // work it cannot take (it would find nothing and spin), and its task ends.
                    st.idle_writers.retain(|&l| l != id);
                    st.link_wakers.remove(&id);
                    if let Some(k) = st.link_kills.get(&id) {
                        k.notify_one();
                    }
                }
            }
        }
        // Wake one idle writer for session-level work (a writer that is busy polls again when
        // its write completes, and each later call wakes one more while work remains), and the
        // writer of any link with a pong or ping of its own. Waking every writer for every
        // frame would cost a context switch per link per frame and add latency.
        if st.session.wants_transmit() && !st.idle_writers.is_empty() {
            if let Some(best) = pick_writer(&st.session, &st.idle_writers) {
                let id = st.idle_writers.swap_remove(best);
                if let Some(w) = st.link_wakers.get(&id) {
                    w.notify_one();
                }
            }
        }
        let own: Vec<LinkId> = st
            .session
            .links_wanting_transmit()
            .filter(|id| st.idle_writers.contains(id))
            .collect();
        for id in own {
            st.idle_writers.retain(|&l| l != id);
            if let Some(w) = st.link_wakers.get(&id) {
                w.notify_one();
            }
        }
        let next = st.session.poll_timeout();
        if next.is_some_and(|n| st.armed.is_none_or(|a| n < a)) {
            st.armed = next;
            self.shared.timer.notify_one();
        }
    }

    /// Fills up to `bufs.len()` messages for link `id`. When there is nothing, the writer is
    /// parked (under the same lock, so no wake-up is lost) until [`SessionDriver`] wakes it.
    /// `None`: the engine dropped the link (ping timeout, peer's `CLOSE`); the writer ends.
    pub(crate) fn poll_link(&self, id: LinkId, bufs: &mut [bytes::BytesMut]) -> Option<usize> {
        let mut st = self.lock();
        st.session.link_stats(id)?;
        let now = Instant::now();
        let mut n = 0;
        while n < bufs.len() && st.session.poll_transmit(now, id, &mut bufs[n]) {
            n += 1;
        }
        if n == 0 && !st.idle_writers.contains(&id) {
            st.idle_writers.push(id);
        }
        if let Some(a) = st.activity.get_mut(&id) {
            if a.busy != (n > 0) {
                *a = LinkActivity {
                    busy: n > 0,
                    since: now,
                };
            }
        }
        self.after(&mut st);
        Some(n)
    }

    /// Whether each link's writer is busy (found data the last time it looked) and since when.
    /// A link busy for a while has a full socket: every byte it can take is being sent.
    pub fn link_activity(&self) -> Vec<(LinkId, LinkActivity)> {
        self.lock()
            .activity
            .iter()
            .map(|(&id, &a)| (id, a))
            .collect()
    }

    /// Completes when the server asks for another link (client side).
    pub async fn more_links_wanted(&self) {
        self.shared.more_links.notified().await;
    }

    /// Server side: if every link has been busy for `after` and data is still waiting, asks
    /// the client for another link. Called by busy link writers now and then.
    pub(crate) fn check_saturation(&self, after: std::time::Duration) {
        let mut st = self.lock();
        let now = Instant::now();
        let saturated = !st.activity.is_empty()
            && st
                .activity
                .values()
                .all(|a| a.busy && now - a.since >= after)
            && st.session.wants_transmit();
        if saturated {
            st.session.request_more_links();
            self.after(&mut st);
        }
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
                if st.closed {
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
                            st.session.handle_timeout(Instant::now());
                            self.after(&mut st);
                        }
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    async fn run_budget(self) {
        let budget = self.lock().session.budget().clone();
        loop {
            let released = budget.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut st = self.lock();
                if st.closed {
                    return;
                }
                if st.session.budget_blocked() {
                    st.session.retry_budget();
                    self.after(&mut st);
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
        let w = Arc::new(StreamWaker::default());
        self.lock().wakers.insert(id, w.clone());
        w
    }

    pub(crate) fn unregister(&self, id: StreamId) {
        self.lock().wakers.remove(&id);
    }

    /// Allocates a link id, adds the link to the engine and returns the waker of its writer.
    /// Also returns the notifier that fires when the engine declares the link dead.
    pub(crate) fn add_link(&self, lane: bool) -> (LinkId, Arc<Notify>, Arc<Notify>) {
        let mut st = self.lock();
        st.next_link += 1;
        let id = LinkId(st.next_link);
        let waker = Arc::new(Notify::new());
        st.link_wakers.insert(id, waker.clone());
        let kill = Arc::new(Notify::new());
        st.link_kills.insert(id, kill.clone());
        if lane {
            st.session.add_lane(Instant::now(), id);
        } else {
            st.session.add_link(Instant::now(), id);
        }
        st.activity.insert(
            id,
            LinkActivity {
                busy: false,
                since: Instant::now(),
            },
        );
        self.after(&mut st);
        drop(st);
        self.shared.links_changed.notify_waiters();
        (id, waker, kill)
    }

    pub(crate) fn remove_link(&self, id: LinkId) {
        let mut st = self.lock();
        st.link_wakers.remove(&id);
        st.link_kills.remove(&id);
        st.activity.remove(&id);
        st.idle_writers.retain(|&l| l != id);
        st.session.remove_link(Instant::now(), id);
        self.after(&mut st);
        drop(st);
        self.shared.links_changed.notify_waiters();
    }

    /// Links currently up.
    pub fn live_links(&self) -> usize {
        // Every link has a kill switch from `add_link` until `remove_link`.
        self.lock().link_kills.len()
    }

    /// Waits until the number of links changes (or a spurious wake-up).
    pub async fn links_changed(&self) {
        self.shared.links_changed.notified().await;
    }

    /// Resets every stream, closes every link and stops the timer: the session is over.
    /// Stream tasks see their streams reset and close their sockets.
    pub fn close(&self, code: u16) {
        let mut st = self.lock();
        st.session.reset_all(code);
        self.after(&mut st);
        drop(st);
        self.abandon();
    }

    /// Closes every link and stops the timer without telling the peer anything about the
    /// streams, as a crash would: the peer finds out when it reconnects and sees a new epoch.
    pub fn abandon(&self) {
        self.lock().closed = true;
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
        let mut st = self.lock();
        st.session.restart();
        self.after(&mut st);
    }

    /// Whether two handles drive the same session.
    pub fn same(&self, other: &SessionDriver) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Whether [`SessionDriver::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}
