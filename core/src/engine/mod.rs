//! The session engine: one client's streams over all of its links, sans-IO.
//!
//! A [`Session`] holds every stream of one session and knows every link that carries it. It
//! reads no clock and touches no socket. A driver runs it:
//!
//! 1. When a link's handshake completes, call [`Session::add_link`]; when it dies,
//!    [`Session::remove_link`] (its unconfirmed frames are queued again for the other links).
//! 2. Feed every decrypted message with [`Session::handle_message`]. An `Err` is the peer's
//!    fault: close that link.
//! 3. Application side: [`Session::open_stream`] (client), then [`Session::stream_write`] /
//!    [`Session::stream_finish`] / [`Session::stream_reset`] / [`Session::stream_read`].
//! 4. Whenever a link can take bytes, call [`Session::poll_transmit`] for it and send what it
//!    wrote (one message). A writer whose first poll finds nothing calls
//!    [`Session::park_writer`] and waits.
//! 5. Arm one timer from [`Session::poll_timeout`]; when it fires, call
//!    [`Session::handle_timeout`].
//! 6. After each of the above, drain [`Session::poll_event`] and act on the events, wake the
//!    writers [`Session::poll_wakes`] names, and re-arm the timer.
//! 7. Client: now and then, and at [`Event::MoreLinksWanted`], ask [`Session::plan_links`]
//!    whether to open or close a link, and do it.
//!
//! Links pull: each link's writer asks for a message only when its socket can take one, so a
//! fast link carries more of every stream than a slow one (writable-first scheduling). Every
//! decision is made here, with the time passed in, so the simulation in `tests/` runs it: what
//! goes on which link, which parked writer to wake, when a link is added or closed.
//!
//! Modules, one concept each: `stream` (per-stream state, credit grants and window autotuning),
//! `recv` (the receive path and its credit checks), `links` (the set of links, what a dead one
//! carried), `lanes` (link choice: interactive lanes, which writer to wake), `transmit` (one
//! message for one link), `timers` (acks, pings, dead and stalled links), `elastic` (how many
//! links), `api` (the application side), and beside them `link` (one link's state), `send`,
//! `reorder` and `sched` (the stream buffers and the stream scheduler).

mod api;
mod elastic;
mod error;
mod lanes;
mod link;
mod links;
mod message;
mod recv;
mod reorder;
mod sched;
mod send;
mod stream;
mod timers;
mod transmit;

pub use elastic::{LinkPlan, PoolView, GROW_AFTER, RETIRE_AFTER};
pub use error::{OpenError, PeerError, StreamError};
pub use link::{LinkActivity, LinkStats, Rtt};
pub use message::{Gathered, MessageBuf};

use crate::budget::{Budget, Held, Pool};
use crate::frame::Frame;
use crate::ids::{LinkId, NodeId, StreamId};
use crate::range_set::RangeSet;
use bytes::Bytes;
use link::LinkState;
use sched::Scheduler;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};
use stream::Stream;

/// Stream credit each side may use before the peer's first `WINDOW` (protocol constant).
///
/// It must cover a bulk stream's first round trips on a long lossy path: what the link holds
/// queued and in flight, plus what waits behind a lost packet (a QUIC link delivers its one
/// stream in order, so the receiver reads nothing past a loss for a round trip), plus the grant's
/// way back (bench/RESULTS.md, lessons: initial stream credit 2 MiB).
pub const INITIAL_STREAM_CREDIT: u64 = 2 * 1024 * 1024;

/// Autotuning doubles a stream's window when its application read a quarter of it within two
/// round trips of the last grant; the first quarter may take this many from the stream's first
/// frame, since a sender in start-up takes two or three round trips for the first 512 KiB and
/// only one for the next (bench/RESULTS.md, lessons: receive windows widen). A stream slower
/// than a quarter of the window per four round trips (10 Mbit/s on a 100 ms path) keeps its
/// initial window.
const FIRST_GRANT_RTTS: u32 = 4;

/// Session credit each side may use before the peer's first `SESSION_WINDOW`.
pub const INITIAL_SESSION_CREDIT: u64 = 16 * 1024 * 1024;
/// An ack that did not reach the eager threshold goes out after this long.
const ACK_DELAY: Duration = Duration::from_millis(5);
/// Smallest payload worth starting a data frame for at the end of a message.
const MIN_TAIL: usize = 256;
/// Smallest send capacity worth offering an application when the memory budget is short.
const MIN_BUDGET_WRITE: u64 = 16 * 1024;
/// Fewest bytes a stream may hold that no link has taken yet (written, never sent); see
/// [`unsent_bound`]. The stream window bounds what is unacknowledged; this bounds what
/// merely waits for a link, so a stream whose links are slower than its application (every bulk
/// stream) stops reading the socket there and the application's bytes wait in its socket
/// buffer, as they would behind a TCP sender. Without it every bulk stream held its whole window
/// unsent (64 MiB each: 8 loopback streams took the client to 634 MiB; docs/ARCHITECTURE.md,
/// "Streams and windows"). A stream that waits for room is woken when half of it is free again.
pub(crate) const UNSENT_MIN: u64 = 4 << 20;
/// Most bytes a stream may hold unsent, however fast and long its links.
pub(crate) const UNSENT_MAX: u64 = 16 << 20;
/// The bulk streams together may hold this many bandwidth-delay products unsent (each link's
/// delivery rate times its smallest RTT, summed). A link's congestion window is about its share
/// of the product plus the queue it keeps, and a QUIC link that lost a packet takes up to two
/// more windows at once (its send window grows to three); the reader must refill half of what
/// is left before the other links run dry. With a fixed 4 MiB (32 ms of a 500 Mbit/s path before
/// the reader was woken) the links of a 500 Mbit/s, 60 ms path ran short of data in half their
/// rounds on a busy 2-core machine (bench/RESULTS.md, lessons: a link short of data drains the
/// queue too). The smallest RTT, not the smoothed one: on the loopback the smoothed RTT under
/// load is the daemons' own queues, and with it 8 bulk streams held a quarter to a half more.
const UNSENT_BDPS: u64 = 4;
/// What each of `bulk` bulk streams may hold unsent while they may hold `target` together
/// ([`Session::size_unsent_target`]): an equal share, from [`UNSENT_MIN`] to [`UNSENT_MAX`].
/// Shared, so that many streams on a fast short path (8 on the loopback) hold no more than with a
/// fixed [`UNSENT_MIN`], while one stream on a long fast path holds what its links need.
fn unsent_bound(target: u64, bulk: usize) -> u64 {
    (target / bulk.max(1) as u64).clamp(UNSENT_MIN, UNSENT_MAX)
}
/// Interactive segments at most this long are latency-sensitive traffic (a game's packets, a
/// request): they switch the interactive lanes on and are sent on both lanes.
const SMALL_SEGMENT: usize = 2048;
/// Lanes stay reserved this long after the last small interactive segment.
const LANE_HOLD: Duration = Duration::from_secs(2);
/// [`Event::WindowHeld`] at most this often per session.
const WINDOW_HELD_EVERY: Duration = Duration::from_secs(60);
/// Duplicates waiting for the second lane, at most.
const MAX_LANE_DUPS: usize = 1024;
/// A lane whose smoothed RTT is below this sends no copies of its small segments: on a path
/// this short (loopback, one LAN or data centre) loss is rare and its repair quick, while a
/// copy costs both ends a write, a read and a wake-up per small segment (with 4 links, a third
/// of a round trip's CPU on loopback: bench/RESULTS.md, loopback).
const COPY_MIN_RTT: Duration = Duration::from_millis(1);
/// A stream's reorder buffer may hold one segment per this many bytes of its window (at least
/// 1,024), and a session's streams together one per this many bytes of the session window (at
/// least 1,024). At [`reorder::SEGMENT_COST`] per segment that is 6% of the window, which the
/// memory budget counts; a stream over either limit is reset (see `docs/PROTOCOL.md`).
const SEGMENT_WINDOW_BYTES: u64 = 2048;
/// Server: streams whose data arrived before their `OPEN`, at most, per session. A stream over
/// it is refused like one over `max_streams`. A client's `OPEN` travels ahead of its data, so
/// only the streams opened within a difference of link latencies wait.
pub const MAX_PENDING_STREAMS: usize = 1024;
/// Server: the `FORGET` frames one session takes ([`Event::Forget`]); a client sends one per
/// session it gave up, again if the link it went on died unconfirmed.
pub const MAX_FORGETS: usize = 16;
/// Server: memory all streams of a session that wait for their `OPEN` may hold together (in
/// the budget's receive pool, see `Session::account_recv`): what one session can take of the
/// pool that other clients' new streams need. A stream's `OPEN` normally comes first or within
/// a difference of link latencies, so little waits; a bulk stream whose `OPEN` is on a stalled
/// link may hold its whole initial credit meanwhile, and four of them fit.
pub const PENDING_MEMORY: u64 = 4 * INITIAL_STREAM_CREDIT;
/// Server: a stream whose `OPEN` has not arrived this long after its first frame is reset
/// (code 6). A lost `OPEN` is sent again once its link is found dead, within about 12 s.
pub const PENDING_LIFETIME: Duration = Duration::from_secs(30);
/// Added to a drain's grace for new streams ([`Session::drain_grace`]): the client's own delay
/// between reading `DRAINING` and its next choice of node.
pub const DRAIN_GRACE_MARGIN: Duration = Duration::from_millis(20);
/// The longest a drain serves new streams after its start ([`Session::drain_grace`]).
pub const MAX_DRAIN_GRACE: Duration = Duration::from_secs(2);
/// The RTT a drain's grace assumes before the session has a sample (RFC 9002's initial RTT).
pub const DRAIN_GRACE_FIRST_RTT: Duration = Duration::from_millis(333);
/// Server: ranges of finished stream counters kept, at most, beyond two per stream the session
/// may hold (live ones and tombstones; about 40 bytes a range); see `Session::finish_counter`.
const MAX_FINISHED_RANGES: usize = 1024;

/// Limits of one session. Each bounds memory; see `docs/CONFIG.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Per-stream window: receive buffer and send buffer, bytes. At least the initial credit.
    pub stream_window: u64,
    /// Per-session receive window, bytes: the sum of all streams' receive buffers.
    pub session_window: u64,
    /// Live streams the peer may open at once (server side).
    pub max_streams: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            stream_window: 64 << 20,
            session_window: 128 << 20,
            max_streams: 16_384,
        }
    }
}

/// A small interactive segment sent on one lane, to be sent again on `lane`.
#[derive(Debug, Clone, Copy)]
struct LaneDup {
    lane: LinkId,
    stream: StreamId,
    offset: u64,
    len: usize,
    fin: bool,
}

/// A stream's `OPEN` sent on one lane, to be sent again on `lane`.
#[derive(Debug, Clone)]
struct OpenDup {
    lane: LinkId,
    frame: Frame,
}

/// Which end of the session this engine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens streams; knows every stream id it uses.
    Client,
    /// Accepts streams owned by this node.
    Server(NodeId),
}

/// Something the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer opened a stream to a service (server side): connect it, or reset it.
    StreamOpened {
        /// The new stream.
        stream: StreamId,
        /// The service it asks for.
        service: String,
    },
    /// Data, a FIN or a reset can be read now.
    StreamReadable(StreamId),
    /// Send capacity opened up, or the stream was reset.
    StreamWritable(StreamId),
    /// The server asks for another link: all of its links are busy and data is waiting
    /// (client side): the link pool should plan now ([`Session::plan_links`]), which opens one
    /// if its `links.max` allows.
    MoreLinksWanted,
    /// The node is stopping (client side): it refuses new streams, which go to other nodes.
    PeerDraining,
    /// Client: the node refused a stream: it has no such service (`reset::UNKNOWN_SERVICE`),
    /// cannot connect to it (`CONNECT_FAILED`) or is at its stream limit (`TOO_MANY_STREAMS`).
    StreamRefused {
        /// The stream.
        stream: StreamId,
        /// The `RESET` code.
        code: u16,
    },
    /// Server: this end refused a stream of the client's on its own account: over the stream
    /// limit (`reset::TOO_MANY_STREAMS`), over its memory (`NO_MEMORY`), or its data came
    /// without an `OPEN` (`NO_OPEN`).
    Refused {
        /// The `RESET` code.
        code: u16,
    },
    /// This session gave memory back to the daemon's budget while another session (or this
    /// one) waited for it: wake every session of the daemon that shares the budget, and each
    /// calls [`Session::retry_budget`].
    BudgetReleased,
    /// The peer sent `CLOSE` on a link: the engine has removed it and queued what it carried
    /// for the other links. Close its socket.
    LinkClosedByPeer {
        /// The link.
        link: LinkId,
        /// The `CLOSE` code ([`crate::frame::close`]).
        code: u16,
    },
    /// Server: the client said the session is over (`CLOSE` code
    /// [`crate::frame::close::SESSION_OVER`]): it stopped in order.
    SessionOver,
    /// Server: the client gave up the session with this secret for this one (`FORGET`): end
    /// that session at once if it is the same client's. At most [`MAX_FORGETS`] per session.
    Forget(crate::frame::SecretBytes),
    /// A link's ping went unanswered for too long (a blackholed path, a dead middlebox): the
    /// engine has removed it and queued what it carried for the other links. Close its socket.
    LinkTimedOut(LinkId),
    /// Nine tenths of the session window (`session_window`, the credit the memory budget does
    /// not cover) are held by bytes this end's applications have not read: the peer's other
    /// streams will soon wait for them. At most once a minute, and again only once the held
    /// bytes fell to half the window.
    WindowHeld {
        /// Bytes received (or granted and on their way) and not read, beyond the reserved
        /// credit.
        held: u64,
        /// Streams holding bytes their applications have not read.
        streams: usize,
    },
}

/// What [`Session::stream_read`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadChunk {
    /// In-order bytes.
    Data(Bytes),
    /// The peer finished its side; no more data.
    Fin,
    /// Nothing yet: wait for [`Event::StreamReadable`].
    Blocked,
}

/// One session's protocol state. See the module doc for the call order.
#[derive(Debug)]
pub struct Session {
    role: Role,
    cfg: Config,
    streams: HashMap<StreamId, Stream>,
    /// Server: counters of streams (of this node) that ended; frames for them are stale.
    finished: RangeSet,
    /// At most this many ranges in `finished`: `2 × max_streams +` [`MAX_FINISHED_RANGES`].
    max_finished_ranges: usize,
    /// Server: counters of streams refused over the stream limit whose `RESET` from the client
    /// has not come yet (it gives the bytes sent, counted then against the session's credit).
    /// At most `max_finished_ranges` ranges; a client numbers its streams in order, so a burst
    /// of refused streams is one range.
    refused: RangeSet,
    /// Server: streams in [`stream::Phase::Pending`] (data arrived, `OPEN` not yet).
    pending: usize,
    /// Server: what those streams hold of the budget's receive pool, at most [`PENDING_MEMORY`].
    pending_charged: u64,
    /// Server: when each stream created before its `OPEN` expires, in creation order. Entries
    /// of streams that opened since stay until they come due (or a compaction).
    pending_expiry: VecDeque<(Instant, StreamId)>,
    /// Segments held by the reorder buffers of all streams.
    recv_segments: usize,
    /// At most this many in `recv_segments`.
    max_recv_segments: usize,
    next_counter: HashMap<NodeId, u64>,
    links: BTreeMap<LinkId, LinkState>,
    control: VecDeque<Frame>,
    /// `OPEN` frames in `control`: while one waits, lanes are reserved (see [`Session::lanes`]).
    opens_queued: usize,
    dirty_windows: VecDeque<StreamId>,
    ack_later: Vec<StreamId>,
    ack_deadline: Option<Instant>,
    session_window_dirty: bool,
    sched: Scheduler,
    blocked_on_session: Vec<StreamId>,
    events: VecDeque<Event>,
    send_session_max: u64,
    send_session_used: u64,
    recv_session_max: u64,
    recv_session_used: u64,
    recv_session_consumed: u64,
    /// The streams' reserved receive credit together (each stream's
    /// [`stream::Stream::recv_reservation`] as of its last `recount_reservation`): the
    /// session credit covers it on top of `session_window` ([`Session::maybe_grant_session`]).
    recv_reserved: u64,
    /// [`Event::WindowHeld`] was reported, and the held bytes have not yet fallen to half the
    /// window since; and when it was last reported.
    window_held: bool,
    window_held_at: Option<Instant>,
    next_ping: u64,
    /// What the bulk streams together may hold unsent: [`Session::size_unsent_target`].
    unsent_target: u64,
    /// Stream bytes queued again because the link they went out on died unconfirmed.
    resent: u64,
    /// When a message last came on a link through a relay: the peer was heard then, by a
    /// path that is not a link of the session's own ([`Session::heard_through_relay`]).
    heard_through_relay: Option<Instant>,
    /// Server: `FORGET` frames taken ([`Event::Forget`]).
    forgets: usize,
    /// When the last small interactive segment went out: lanes are reserved until
    /// `LANE_HOLD` after it. The latest of `small_at`.
    last_small: Option<Instant>,
    /// When each live stream that is not (now) bulk last sent a small interactive segment. A
    /// stream that turns bulk (a download after its request header) or ends leaves it, so it
    /// does not hold the lanes for `LANE_HOLD` on its own.
    small_at: HashMap<StreamId, Instant>,
    /// `small_at` ordered by time, so that the latest is known after a stream leaves without
    /// a scan of them all: with a scan, closing 10,000 idle connections that had each sent a
    /// byte cost each daemon about 0.2 s of CPU (`perf`, `bench/load/scale.py`).
    small_order: BTreeSet<(Instant, StreamId)>,
    /// A small interactive segment was queued and has not gone out yet: lanes are reserved
    /// while it waits (see [`Session::lanes`]).
    small_queued: bool,
    /// Small interactive segments sent on one lane, to be sent again on the other.
    lane_dups: VecDeque<LaneDup>,
    /// `OPEN` frames sent on one lane, to be sent again on the other: the stream's first data
    /// goes on both lanes, and without its `OPEN` the node cannot use it (a lost `OPEN` on a
    /// quiet QUIC lane waits for a probe timeout, about 1.5 RTT). A receiver ignores an `OPEN`
    /// for a stream it has.
    open_dups: VecDeque<OpenDup>,
    /// What this session holds of the daemon's memory budget.
    held: Held,
    /// Streams whose write or grant waits for the budget; see [`Session::retry_budget`].
    budget_waiting: Vec<StreamId>,
    /// Client: the server asked for another link since the last [`Session::plan_links`].
    more_links_asked: bool,
    /// Server: when the links were last checked for saturation (see `elastic`).
    saturation_checked: Option<Instant>,
    /// Server: since when the node is stopping and told the client so
    /// ([`Session::start_draining`]).
    draining: Option<Instant>,
}

impl Session {
    /// A new session with no links and no streams, and no memory cap beyond its windows.
    pub fn new(role: Role, cfg: Config) -> Self {
        Self::with_budget(role, cfg, Budget::unlimited())
    }

    /// A new session whose buffered bytes count against the daemon's `budget`.
    pub fn with_budget(role: Role, cfg: Config, budget: Budget) -> Self {
        let cfg = Config {
            stream_window: cfg.stream_window.max(INITIAL_STREAM_CREDIT),
            session_window: cfg.session_window.max(INITIAL_SESSION_CREDIT),
            max_streams: cfg.max_streams.max(1),
        };
        Session {
            role,
            cfg,
            streams: HashMap::new(),
            finished: RangeSet::default(),
            max_finished_ranges: cfg
                .max_streams
                .saturating_mul(2)
                .saturating_add(MAX_FINISHED_RANGES),
            refused: RangeSet::default(),
            pending: 0,
            pending_charged: 0,
            pending_expiry: VecDeque::new(),
            recv_segments: 0,
            max_recv_segments: usize::try_from(cfg.session_window / SEGMENT_WINDOW_BYTES)
                .unwrap_or(usize::MAX)
                .max(1024),
            next_counter: HashMap::new(),
            links: BTreeMap::new(),
            control: VecDeque::new(),
            opens_queued: 0,
            dirty_windows: VecDeque::new(),
            ack_later: Vec::new(),
            ack_deadline: None,
            session_window_dirty: cfg.session_window > INITIAL_SESSION_CREDIT,
            sched: Scheduler::default(),
            blocked_on_session: Vec::new(),
            events: VecDeque::new(),
            send_session_max: INITIAL_SESSION_CREDIT,
            send_session_used: 0,
            recv_session_max: INITIAL_SESSION_CREDIT.max(cfg.session_window),
            recv_session_used: 0,
            recv_session_consumed: 0,
            recv_reserved: 0,
            window_held: false,
            window_held_at: None,
            next_ping: 0,
            unsent_target: 0,
            resent: 0,
            heard_through_relay: None,
            forgets: 0,
            last_small: None,
            small_at: HashMap::new(),
            small_order: BTreeSet::new(),
            small_queued: false,
            lane_dups: VecDeque::new(),
            open_dups: VecDeque::new(),
            held: Held::new(budget),
            budget_waiting: Vec::new(),
            more_links_asked: false,
            saturation_checked: None,
            draining: None,
        }
    }

    /// The memory budget this session draws on.
    pub fn budget(&self) -> &Budget {
        self.held.budget()
    }

    /// Bytes this session holds of its budget: (receive credit, unacknowledged send bytes).
    pub fn budget_held(&self) -> (u64, u64) {
        (self.held.bytes(Pool::Recv), self.held.bytes(Pool::Send))
    }

    /// Next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.held.take_wake() {
            return Some(Event::BudgetReleased);
        }
        self.events.pop_front()
    }

    /// Forgets every stream and all session accounting, keeping the links: the peer lost
    /// this session (it restarted, or gave up on it) and a new one starts on the same links.
    /// Every stream reports closed to its task.
    pub fn restart(&mut self) {
        for &id in self.streams.keys() {
            self.events.push_back(Event::StreamReadable(id));
            self.events.push_back(Event::StreamWritable(id));
        }
        self.held.release_all();
        let wake = self.held.take_wake();
        let mut fresh = Session::with_budget(self.role, self.cfg, self.held.budget().clone());
        fresh.held.wake_later(wake);
        let links = std::mem::take(&mut self.links);
        let next_counter = std::mem::take(&mut self.next_counter);
        let events = std::mem::take(&mut self.events);
        *self = Session {
            links,
            next_counter,
            events,
            ..fresh
        };
        for l in self.links.values_mut() {
            l.sent.clear();
        }
    }
}

#[cfg(test)]
mod tests;
