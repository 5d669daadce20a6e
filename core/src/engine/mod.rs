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
//!    wrote (one message). [`Session::wants_transmit`] says whether any link has work.
//! 5. Arm one timer from [`Session::poll_timeout`]; when it fires, call
//!    [`Session::handle_timeout`] and poll transmits again.
//! 6. Drain [`Session::poll_event`] after each of the above and act on the events.
//!
//! Links pull: each link's writer asks for a message only when its socket can take one, so a
//! fast link carries more of every stream than a slow one (writable-first scheduling).

mod link;
mod reorder;
mod sched;
mod send;

pub use link::{LinkStats, Rtt};

use crate::budget::{Budget, Held, Pool};
use crate::frame::{self, Frame, FrameError, DATA_HEADER, MAX_MESSAGE, MAX_SERVICE_NAME};
use crate::ids::{LinkId, NodeId, StreamId};
use crate::range_set::RangeSet;
use bytes::{Bytes, BytesMut};
use link::{LinkState, Sent};
use reorder::Reorder;
use sched::{Scheduler, QUANTUM};
use send::SendBuf;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Stream credit each side may use before the peer's first `WINDOW` (protocol constant).
///
/// It must cover a bulk stream's first round trips on a long lossy path: what the link holds
/// queued and in flight, plus what waits behind a lost packet (a QUIC link delivers its one
/// stream in order, so the receiver reads nothing past a loss for a round trip), plus the grant's
/// way back. With 256 KiB (protocol version 1), a QUIC link's start-up in the WAN lab's C
/// waited for credit in every round from the third to the tenth; with 2 MiB it doubles each
/// round trip.
pub const INITIAL_STREAM_CREDIT: u64 = 2 * 1024 * 1024;

/// Autotuning doubles a stream's window when its application read a quarter of it within two
/// round trips of the last grant; the first quarter may take this many from the stream's first
/// frame. A sender in start-up doubles its rate every round trip from a small window, so the
/// first 512 KiB take it two or three round trips, the next only one: in a traced run of the
/// WAN lab's scenario B the first grant came about two round trips in and left the window at
/// 2 MiB, and the sender then waited 0.14 s at the new limit (2.7 MB). A stream slower than a
/// quarter of the window per four round trips (10 Mbit/s on a 100 ms path) keeps its initial
/// window.
const FIRST_GRANT_RTTS: u32 = 4;

/// Session credit each side may use before the peer's first `SESSION_WINDOW`.
pub const INITIAL_SESSION_CREDIT: u64 = 16 * 1024 * 1024;
/// An ack that did not reach the eager threshold goes out after this long.
const ACK_DELAY: Duration = Duration::from_millis(5);
/// Smallest payload worth starting a data frame for at the end of a message.
const MIN_TAIL: usize = 256;
/// Smallest send capacity worth offering an application when the memory budget is short.
const MIN_BUDGET_WRITE: u64 = 16 * 1024;
/// Interactive segments at most this long are latency-sensitive traffic (a game's packets, a
/// request): they switch the interactive lanes on and are sent on both lanes.
const SMALL_SEGMENT: usize = 2048;
/// Lanes stay reserved this long after the last small interactive segment.
const LANE_HOLD: Duration = Duration::from_secs(2);
/// Duplicates waiting for the second lane, at most.
const MAX_LANE_DUPS: usize = 1024;

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
            stream_window: 16 << 20,
            session_window: 32 << 20,
            max_streams: 16_384,
        }
    }
}

/// Which stream data a link may take in one `poll_transmit`.
#[derive(Debug, Clone, Copy)]
enum Pick {
    /// No lanes reserved: interactive streams first, then bulk.
    Any,
    /// This link is an interactive lane: interactive streams only; `twin` is the other lane,
    /// which sends the small segments again.
    Lane { twin: Option<LinkId> },
    /// Lanes are reserved and this is not one: bulk streams only.
    Bulk,
    /// A dedicated lane that looks stalled (its ping is overdue) while another is not: it
    /// sends the other lane's duplicates only, no control frames and no stream data. A lane
    /// looks stalled when what it *receives* waits behind a lost packet (its pongs come late),
    /// while what it sends still gets through: in the WAN lab a server whose other lane looked
    /// stalled sent a game's reply on one lane only, and that packet's loss cost a round trip.
    Spare,
}

/// The interactive lanes of the moment ([`Session::lanes`]): at most two links, and whether
/// they are the dedicated ones (else lanes reserved on demand among all links).
#[derive(Debug, Clone, Copy, Default)]
struct Lanes {
    ids: [Option<LinkId>; 2],
    dedicated: bool,
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
    /// (client side; the client opens one if its `links.max` allows).
    MoreLinksWanted,
    /// The peer sent `CLOSE` on a link: the engine has removed it and queued what it carried
    /// for the other links. Close its socket.
    LinkClosedByPeer(LinkId),
    /// A link's ping went unanswered for too long (a blackholed path, a dead middlebox): the
    /// engine has removed it and queued what it carried for the other links. Close its socket.
    LinkTimedOut(LinkId),
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

/// Application-side misuse or a stream that no longer exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The stream was reset (by either side) or never existed.
    #[error("stream closed")]
    Closed,
    /// Write after finish.
    #[error("stream already finished")]
    Finished,
    /// More bytes than `stream_send_capacity` allowed.
    #[error("write exceeds send capacity")]
    Full,
}

/// Why a stream could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Service names are at most 255 bytes.
    #[error("service name longer than 255 bytes")]
    NameTooLong,
    /// Only clients open streams.
    #[error("only the client opens streams")]
    NotClient,
    /// The per-owner stream counter is used up (2^48 streams).
    #[error("stream ids exhausted")]
    IdsExhausted,
}

/// The peer broke the protocol; close the link the frame came on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// Malformed frame bytes.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Data beyond the stream credit we granted.
    #[error("stream {0} exceeded its credit")]
    CreditExceeded(StreamId),
    /// Data beyond the session credit we granted.
    #[error("session credit exceeded")]
    SessionCreditExceeded,
    /// Data past the final size, or a final size that changed.
    #[error("stream {0} final size violated")]
    FinalSize(StreamId),
    /// An ack for bytes never sent.
    #[error("stream {0} ack beyond sent data")]
    AckBeyondSent(StreamId),
    /// A stream owned by another node.
    #[error("stream {0} is not owned by this node")]
    NotOwner(StreamId),
    /// The server tried to open a stream.
    #[error("unexpected OPEN from a server")]
    UnexpectedOpen,
    /// A message on a link the engine does not know.
    #[error("unknown link")]
    UnknownLink,
    /// Far more refused streams than the limit allows.
    #[error("too many streams")]
    TooManyStreams,
    /// An offset or length that overflows.
    #[error("stream {0} offset overflow")]
    Overflow(StreamId),
}

#[derive(Debug)]
struct Stream {
    send: SendBuf,
    recv: Reorder,
    /// Stream credit granted to the peer.
    recv_max: u64,
    /// The credit before the last grant (0 before any): the peer may not have the last grant
    /// yet, so a frame that ends here or at `recv_max` was cut short by the credit.
    recv_max_before: u64,
    /// The credit limit at which the window last doubled because the peer reached it (see
    /// [`Stream::widen_when_blocked`]); a resent frame that reaches it again does not count.
    blocked_at: u64,
    /// Highest offset received (for session accounting).
    recv_highest: u64,
    recv_final: Option<u64>,
    recv_fin_read: bool,
    /// The `acked` value of the last `WINDOW` we sent.
    recv_acked_sent: u64,
    /// We sent a RESET and wait for the peer's; data is accounted and dropped.
    reset_sent: bool,
    /// Server: the OPEN arrived. Client: always.
    opened: bool,
    queued: bool,
    /// Queued as interactive (small backlog) the last time it was queued.
    queued_interactive: bool,
    /// In `blocked_on_session`.
    session_blocked: bool,
    window_dirty: bool,
    ack_later: bool,
    read_waiting: bool,
    write_waiting: bool,
    /// In `budget_waiting`: a write or a grant waits for the memory budget.
    budget_waiting: bool,
    /// The receive window this stream has grown to (autotuned from `INITIAL_STREAM_CREDIT`
    /// up to `Config::stream_window`).
    recv_window: u64,
    /// When credit was last extended (or the stream created), for autotuning.
    last_grant: Option<Instant>,
}

impl Stream {
    fn new(opened: bool) -> Self {
        Stream {
            send: SendBuf::new(INITIAL_STREAM_CREDIT),
            recv: Reorder::default(),
            recv_max: INITIAL_STREAM_CREDIT,
            recv_max_before: 0,
            blocked_at: 0,
            recv_highest: 0,
            recv_final: None,
            recv_fin_read: false,
            recv_acked_sent: 0,
            reset_sent: false,
            opened,
            queued: false,
            queued_interactive: false,
            session_blocked: false,
            window_dirty: false,
            ack_later: false,
            read_waiting: true,
            write_waiting: false,
            budget_waiting: false,
            recv_window: INITIAL_STREAM_CREDIT,
            last_grant: None,
        }
    }

    /// Credit granted to the peer and not yet read (what the peer may make us buffer).
    fn outstanding(&self) -> u64 {
        self.recv_max - self.recv.read_offset()
    }

    /// What the stream's receive side holds of the budget: its outstanding credit beyond
    /// `INITIAL_STREAM_CREDIT`. The first 2 MiB of every stream are not counted: the protocol
    /// grants them before any window update, so the budget could not refuse them anyway, and an
    /// idle stream then costs the budget nothing.
    fn recv_reservation(&self) -> u64 {
        if self.reset_sent {
            0
        } else {
            self.outstanding().saturating_sub(INITIAL_STREAM_CREDIT)
        }
    }

    /// Doubles the receive window (up to `max_window`) when half of it lies beyond a hole;
    /// returns whether it did, and the caller extends the credit. A hole is bytes still on
    /// their way on a slower link, or lost and being resent; the application cannot read past
    /// it, so the autotuning of [`Session::extend_grant`], which follows reading, stands still
    /// while the faster links use up the credit and stop. In the WAN lab's scenario E the 40 ms
    /// path's link stopped for a quarter of a second at the start, behind the 160 ms path's first
    /// frames, with the window still at its initial 2 MiB. The window stays bounded by
    /// `stream_window` and the memory budget, whatever order the peer sends in.
    fn widen_behind_hole(&mut self, max_window: u64) -> bool {
        let beyond = self.recv_highest - self.recv.contiguous();
        beyond >= self.recv_window / 2 && self.double_window(max_window)
    }

    /// Doubles the receive window (up to `max_window`) when a frame ending at `end` stopped at
    /// a credit limit the peer had (the last grant's, or the one before, which may still be all
    /// the peer knows) and the application keeps up (it left less than a quarter of the window
    /// unread); returns whether it did, and the caller extends the credit. A sender cuts its
    /// last frame at the credit limit when the window holds it back, which the autotuning of
    /// [`Session::extend_grant`] only infers from reading a quarter of the window within two
    /// round trips, and only once a quarter was read. In a traced run of the WAN lab's scenario
    /// B the sender reached its credit limit four times in its first 0.7 s, and while it waited
    /// for the next grant its links ran a round trip with half their window in flight or less.
    /// A slow application does not widen the window: the credit waits for it to read.
    fn widen_when_blocked(&mut self, end: u64, max_window: u64) -> bool {
        // On the data path: the equality tests rule out nearly every frame first.
        if (end != self.recv_max && end != self.recv_max_before) || end <= self.blocked_at {
            return false;
        }
        let unread = self
            .recv
            .contiguous()
            .saturating_sub(self.recv.read_offset());
        if unread >= self.recv_window / 4 || !self.double_window(max_window) {
            return false;
        }
        self.blocked_at = end;
        true
    }

    /// Doubles the receive window, up to `max_window`; false if it is there already.
    fn double_window(&mut self, max_window: u64) -> bool {
        if self.recv_window >= max_window {
            return false;
        }
        self.recv_window = (self.recv_window * 2).min(max_window);
        true
    }

    /// All bytes up to the final size arrived.
    fn recv_complete(&self) -> bool {
        self.recv_final == Some(self.recv.contiguous())
    }

    /// The ack to send: contiguous bytes, plus one for a FIN that arrived.
    fn ack_value(&self) -> u64 {
        self.recv.contiguous() + u64::from(self.recv_complete())
    }
}

/// One session's protocol state. See the module doc for the call order.
#[derive(Debug)]
pub struct Session {
    role: Role,
    cfg: Config,
    streams: HashMap<StreamId, Stream>,
    /// Server: ids of streams that ended; frames for them are stale.
    finished: RangeSet,
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
    next_ping: u64,
    /// The latest time passed in by the driver (for window autotuning in calls that take none).
    clock: Option<Instant>,
    /// Stream bytes queued again because the link they went out on died unconfirmed.
    resent: u64,
    /// When the last small interactive segment went out: lanes are reserved until
    /// `LANE_HOLD` after it. The latest of `small_at`.
    last_small: Option<Instant>,
    /// When each live stream that is not (now) bulk last sent a small interactive segment. A
    /// stream that turns bulk (a download after its request header) or ends leaves it, so it
    /// does not hold the lanes for `LANE_HOLD` on its own.
    small_at: HashMap<StreamId, Instant>,
    /// A small interactive segment was queued and has not gone out yet: lanes are reserved
    /// while it waits (see [`Session::lanes`]).
    small_queued: bool,
    /// Small interactive segments sent on one lane, to be sent again on the other:
    /// (lane, stream, offset, length, fin).
    lane_dups: VecDeque<(LinkId, StreamId, u64, usize, bool)>,
    /// `OPEN` frames sent on one lane, to be sent again on the other (lane, frame): the
    /// stream's first data goes on both lanes, and without its `OPEN` the node cannot use it
    /// (a lost `OPEN` on a quiet QUIC lane waits for a probe timeout, about 1.5 RTT). A
    /// receiver ignores an `OPEN` for a stream it has.
    open_dups: VecDeque<(LinkId, Frame)>,
    /// What this session holds of the daemon's memory budget.
    held: Held,
    /// Streams whose write or grant waits for the budget; see [`Session::retry_budget`].
    budget_waiting: Vec<StreamId>,
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
            next_ping: 0,
            clock: None,
            resent: 0,
            last_small: None,
            small_at: HashMap::new(),
            small_queued: false,
            lane_dups: VecDeque::new(),
            open_dups: VecDeque::new(),
            held: Held::new(budget),
            budget_waiting: Vec::new(),
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

    // ----- links -----

    /// A link finished its handshake and may carry frames.
    pub fn add_link(&mut self, now: Instant, link: LinkId) {
        self.clock = Some(now);
        self.links
            .entry(link)
            .or_insert_with(|| LinkState::new(now));
    }

    /// A new link that is a dedicated interactive lane (the client's `links.lanes`, flagged in
    /// the link's handshake): see [`Session::lanes`].
    pub fn add_lane(&mut self, now: Instant, link: LinkId) {
        self.add_link(now, link);
        if let Some(l) = self.links.get_mut(&link) {
            l.lane = true;
        }
    }

    /// A link died or was closed. Everything sent on it that the peer has not confirmed is
    /// queued again for the other links.
    pub fn remove_link(&mut self, _now: Instant, link: LinkId) {
        let Some(state) = self.links.remove(&link) else {
            return;
        };
        self.lane_dups.retain(|d| d.0 != link);
        self.open_dups.retain(|d| d.0 != link);
        for sent in state.sent {
            match sent {
                Sent::Data {
                    stream,
                    start,
                    end,
                    fin,
                } => {
                    if let Some(s) = self.streams.get_mut(&stream) {
                        if !s.reset_sent {
                            self.resent += s.send.requeue(start, end, fin);
                            self.schedule(stream);
                        }
                    }
                }
                Sent::Window(stream) => self.mark_window_dirty(stream),
                Sent::SessionWindow => self.session_window_dirty = true,
                Sent::Control(frame) => {
                    let keep = match &frame {
                        Frame::Open { stream, .. } => self.streams.contains_key(stream),
                        // A hint about load; the next check sends a fresh one if still needed.
                        Frame::MoreLinks => false,
                        _ => true,
                    };
                    if keep {
                        self.opens_queued += usize::from(matches!(frame, Frame::Open { .. }));
                        self.control.push_back(frame);
                    }
                }
            }
        }
    }

    /// Stream bytes queued to be sent again because the link that carried them died or
    /// stalled before the peer confirmed them, since the session started.
    pub fn resent_bytes(&self) -> u64 {
        self.resent
    }

    /// Links the engine knows.
    pub fn links(&self) -> impl Iterator<Item = LinkId> + '_ {
        self.links.keys().copied()
    }

    /// Numbers for one link.
    pub fn link_stats(&self, link: LinkId) -> Option<LinkStats> {
        self.links.get(&link).map(|l| {
            let mut s = l.stats;
            s.unconfirmed = l.sent.len();
            s
        })
    }

    // ----- input -----

    /// Handles one decrypted message from `link`.
    pub fn handle_message(
        &mut self,
        now: Instant,
        link: LinkId,
        mut msg: Bytes,
    ) -> Result<(), PeerError> {
        let l = self.links.get_mut(&link).ok_or(PeerError::UnknownLink)?;
        l.stats.bytes_received += msg.len() as u64;
        self.clock = Some(now);
        while let Some(frame) = Frame::decode(&mut msg)? {
            self.handle_frame(now, link, frame)?;
        }
        Ok(())
    }

    fn handle_frame(&mut self, now: Instant, link: LinkId, frame: Frame) -> Result<(), PeerError> {
        match frame {
            Frame::Ping(token) => {
                if let Some(l) = self.links.get_mut(&link) {
                    // A peer that pings faster than we pong gets its extra pings dropped.
                    if l.pongs_owed.len() < 16 {
                        l.pongs_owed.push(token);
                    }
                }
            }
            Frame::Pong(token) => {
                if let Some(l) = self.links.get_mut(&link) {
                    l.pong(now, token);
                }
            }
            Frame::Close(_) => {
                self.remove_link(now, link);
                self.events.push_back(Event::LinkClosedByPeer(link));
            }
            Frame::MoreLinks => {
                if self.role == Role::Client {
                    self.events.push_back(Event::MoreLinksWanted);
                }
            }
            Frame::Open { stream, service } => self.on_open(stream, service)?,
            Frame::Data {
                stream,
                offset,
                fin,
                data,
            } => self.on_data(now, stream, offset, fin, data)?,
            Frame::Reset {
                stream,
                code,
                final_size,
            } => self.on_reset(stream, code, final_size)?,
            Frame::Window { stream, acked, max } => self.on_window(stream, acked, max)?,
            Frame::SessionWindow { max } => {
                if max > self.send_session_max {
                    self.send_session_max = max;
                    for id in std::mem::take(&mut self.blocked_on_session) {
                        if let Some(s) = self.streams.get_mut(&id) {
                            s.session_blocked = false;
                        }
                        self.schedule(id);
                    }
                }
            }
            Frame::Unknown(_) => {}
        }
        Ok(())
    }

    /// Finds the stream a peer frame names, creating it on the server for a new id.
    /// `Ok(None)`: a stale frame for a stream that ended; drop it.
    fn peer_stream(&mut self, id: StreamId) -> Result<Option<&mut Stream>, PeerError> {
        if self.streams.contains_key(&id) {
            return Ok(self.streams.get_mut(&id));
        }
        let Role::Server(node) = self.role else {
            return Ok(None);
        };
        if id.owner() != node {
            return Err(PeerError::NotOwner(id));
        }
        if self.finished.contains(id.0) {
            return Ok(None);
        }
        let live = self.streams.len();
        if live >= self.cfg.max_streams {
            // Refuse with a RESET and keep a tombstone until the client's RESET says how many
            // bytes it sent; a client far over the limit is cut off.
            if live >= self.cfg.max_streams.saturating_mul(2) {
                return Err(PeerError::TooManyStreams);
            }
            let mut s = Stream::new(false);
            s.reset_sent = true;
            self.control.push_back(Frame::Reset {
                stream: id,
                code: frame::reset::TOO_MANY_STREAMS,
                final_size: 0,
            });
            self.streams.insert(id, s);
            return Ok(self.streams.get_mut(&id));
        }
        self.insert_stream(id, false);
        Ok(self.streams.get_mut(&id))
    }

    /// Adds a live stream with the initial credit; its window grows as it is used.
    fn insert_stream(&mut self, id: StreamId, opened: bool) {
        let mut s = Stream::new(opened);
        s.last_grant = self.clock;
        self.streams.insert(id, s);
    }

    /// The round-trip time that paces a stream's credit: data is spread over every link and
    /// read in order, so the slowest link's smoothed RTT. `None` before any sample.
    fn path_rtt(&self) -> Option<Duration> {
        self.links
            .values()
            .filter_map(|l| l.stats.rtt.smoothed)
            .max()
    }

    /// Raises a stream's credit toward `read + recv_window` if that adds at least `threshold`
    /// bytes, as far as the budget allows; a stream the budget cut short waits in
    /// `budget_waiting`. The window autotunes: when the application consumed a quarter of it
    /// within two round trips of the last grant (`threshold` is a quarter of the window when
    /// the application reads), the window was what limited the stream, so it doubles
    /// (up to `stream_window`). A stream that moves little keeps the initial window. (See also
    /// [`Stream::widen_behind_hole`], after which `on_data` passes `autotune` false.)
    fn extend_grant(&mut self, id: StreamId, threshold: u64, autotune: bool) {
        let max_window = self.cfg.stream_window;
        let rtt = self.path_rtt();
        let now = self.clock;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.reset_sent || s.recv_final.is_some() {
            return;
        }
        let want = (s.recv.read_offset() + s.recv_window).saturating_sub(s.recv_max);
        if want < threshold.max(1) {
            return;
        }
        if autotune && s.recv_window < max_window {
            // The first quarter takes a sender in start-up longer: see `FIRST_GRANT_RTTS`.
            let rtts = if s.recv_max_before == 0 {
                FIRST_GRANT_RTTS
            } else {
                2
            };
            let quick = match (now, s.last_grant, rtt) {
                (Some(now), Some(last), Some(rtt)) => {
                    now.saturating_duration_since(last) < rtt * rtts
                }
                _ => true,
            };
            if quick {
                s.recv_window = (s.recv_window * 2).min(max_window);
            }
        }
        let want = (s.recv.read_offset() + s.recv_window).saturating_sub(s.recv_max);
        // Credit within the initial allowance costs the budget nothing; the rest is reserved.
        let free = INITIAL_STREAM_CREDIT
            .saturating_sub(s.outstanding())
            .min(want);
        let need = want - free;
        let got = if need == 0 {
            0
        } else {
            let min = (s.recv_window / 8).min(need);
            self.held.reserve_up_to(Pool::Recv, need, min)
        };
        let grant = free + got;
        if grant > 0 {
            s.recv_max_before = s.recv_max;
            s.recv_max += grant;
            s.last_grant = now;
            if !s.window_dirty {
                s.window_dirty = true;
                self.dirty_windows.push_back(id);
            }
        }
        if grant < want && !s.budget_waiting {
            s.budget_waiting = true;
            self.budget_waiting.push(id);
        }
    }

    /// Retries what waited for the memory budget: grants for readers and capacity for
    /// writers (they get [`Event::StreamWritable`] and ask again). Call after the budget
    /// reported a release ([`Budget::notified`]).
    pub fn retry_budget(&mut self) {
        for id in std::mem::take(&mut self.budget_waiting) {
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            s.budget_waiting = false;
            if s.write_waiting {
                s.write_waiting = false;
                self.events.push_back(Event::StreamWritable(id));
            }
            let threshold = s.recv_window / 8;
            self.extend_grant(id, threshold, true);
        }
    }

    /// Whether some stream waits for the memory budget.
    pub fn budget_blocked(&self) -> bool {
        !self.budget_waiting.is_empty()
    }

    fn on_open(&mut self, id: StreamId, service: String) -> Result<(), PeerError> {
        if self.role == Role::Client {
            return Err(PeerError::UnexpectedOpen);
        }
        let Some(s) = self.peer_stream(id)? else {
            return Ok(());
        };
        if s.opened || s.reset_sent {
            return Ok(());
        }
        s.opened = true;
        self.events.push_back(Event::StreamOpened {
            stream: id,
            service,
        });
        Ok(())
    }

    fn on_data(
        &mut self,
        now: Instant,
        id: StreamId,
        offset: u64,
        fin: bool,
        data: Bytes,
    ) -> Result<(), PeerError> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(PeerError::Overflow(id))?;
        let Some(s) = self.peer_stream(id)? else {
            return Ok(());
        };
        if end > s.recv_max {
            return Err(PeerError::CreditExceeded(id));
        }
        let before = s.ack_value();
        if let Some(f) = s.recv_final {
            if end > f || (fin && end != f) {
                return Err(PeerError::FinalSize(id));
            }
        } else if fin {
            if end < s.recv_highest {
                return Err(PeerError::FinalSize(id));
            }
            s.recv_final = Some(end);
        }
        let new = end.saturating_sub(s.recv_highest);
        s.recv_highest = s.recv_highest.max(end);
        self.recv_session_used += new;
        if self.recv_session_used > self.recv_session_max {
            return Err(PeerError::SessionCreditExceeded);
        }
        let mut s = self.streams.get_mut(&id).expect("peer_stream returned it");
        if s.reset_sent {
            self.recv_session_consumed += new;
            self.maybe_grant_session();
            return Ok(());
        }
        s.recv.insert(offset, data);
        let max_window = self.cfg.stream_window;
        if s.widen_behind_hole(max_window) || s.widen_when_blocked(end, max_window) {
            let threshold = s.recv_window / 8;
            self.extend_grant(id, threshold, false);
            s = self.streams.get_mut(&id).expect("a grant keeps the stream");
        }
        let after = s.ack_value();
        if after == before {
            return Ok(());
        }
        if s.opened && s.read_waiting && (s.recv.has_ready() || s.recv_complete()) {
            s.read_waiting = false;
            self.events.push_back(Event::StreamReadable(id));
        }
        // Ack at once at the end of the stream or after an eighth of a window, else soon.
        if s.recv_complete() || after - s.recv_acked_sent >= s.recv_window / 8 {
            self.mark_window_dirty(id);
        } else if !s.ack_later && !s.window_dirty {
            s.ack_later = true;
            self.ack_later.push(id);
            self.ack_deadline.get_or_insert(now + ACK_DELAY);
        }
        Ok(())
    }

    fn on_reset(&mut self, id: StreamId, code: u16, final_size: u64) -> Result<(), PeerError> {
        let Some(s) = self.peer_stream(id)? else {
            return Ok(());
        };
        if final_size > s.recv_max {
            return Err(PeerError::CreditExceeded(id));
        }
        if final_size < s.recv_highest || s.recv_final.is_some_and(|f| f != final_size) {
            return Err(PeerError::FinalSize(id));
        }
        let new = final_size - s.recv_highest;
        // Bytes received but never read, and bytes still in flight, are consumed now.
        let discarded = if s.reset_sent {
            new
        } else {
            final_size - s.recv.read_offset()
        };
        let reply = (!s.reset_sent).then(|| Frame::Reset {
            stream: id,
            code,
            final_size: s.send.next(),
        });
        self.recv_session_used += new;
        if self.recv_session_used > self.recv_session_max {
            return Err(PeerError::SessionCreditExceeded);
        }
        self.recv_session_consumed += discarded;
        if let Some(reply) = reply {
            self.control.push_back(reply);
        }
        self.remove_stream(id);
        self.events.push_back(Event::StreamReadable(id));
        self.events.push_back(Event::StreamWritable(id));
        self.maybe_grant_session();
        Ok(())
    }

    fn on_window(&mut self, id: StreamId, acked: u64, max: u64) -> Result<(), PeerError> {
        let window = self.cfg.stream_window;
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        if s.reset_sent {
            return Ok(());
        }
        let before = s.send.buffered();
        s.send.ack(id, acked)?;
        self.held.release(Pool::Send, before - s.send.buffered());
        s.send.set_max(max);
        if s.write_waiting && !s.send.is_finished() && window - s.send.buffered() >= window / 8 {
            s.write_waiting = false;
            self.events.push_back(Event::StreamWritable(id));
        }
        self.schedule(id);
        self.maybe_remove(id);
        Ok(())
    }

    /// Fires the delayed-ack and keepalive timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock = Some(now);
        if self.ack_deadline.is_some_and(|d| d <= now) {
            self.ack_deadline = None;
            for id in std::mem::take(&mut self.ack_later) {
                if let Some(s) = self.streams.get_mut(&id) {
                    s.ack_later = false;
                }
                self.mark_window_dirty(id);
            }
        }
        for l in self.links.values_mut() {
            if l.next_ping_at().is_some_and(|t| t <= now) {
                l.ping_due = true;
            }
        }
        self.rescue_stalled(now);
        let dead: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.dead_at().is_some_and(|t| t <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in dead {
            self.remove_link(now, id);
            self.events.push_back(Event::LinkTimedOut(id));
        }
    }

    /// Sends again, on the other links, the data a stalled link carries unconfirmed: a TCP
    /// connection repairing a loss (or backing off its retransmission timer) holds back
    /// everything behind the lost packet, and the stream's receiver waits for it in order. The
    /// receiver drops whichever copy arrives second. The link stays: it may recover, and if it
    /// dies its records are requeued as usual.
    fn rescue_stalled(&mut self, now: Instant) {
        let stalled: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.rescue_at().is_some_and(|t| t < now))
            .map(|(&id, _)| id)
            .collect();
        // Only if another link can take it; resending on the stalled link itself is waste.
        if stalled.is_empty() || self.links.values().all(|l| l.stalled(now)) {
            return;
        }
        for id in stalled {
            let Some(l) = self.links.get_mut(&id) else {
                continue;
            };
            let from = usize::try_from(l.rescued.saturating_sub(l.base)).unwrap_or(usize::MAX);
            l.rescued = l.base + l.sent.len() as u64;
            let data: Vec<(StreamId, u64, u64, bool)> = l
                .sent
                .iter()
                .skip(from)
                .filter_map(|s| match *s {
                    Sent::Data {
                        stream,
                        start,
                        end,
                        fin,
                    } => Some((stream, start, end, fin)),
                    _ => None,
                })
                .collect();
            let before = self.resent;
            let entries = data.len();
            for (stream, start, end, fin) in data {
                if let Some(s) = self.streams.get_mut(&stream) {
                    if !s.reset_sent {
                        self.resent += s.send.requeue(start, end, fin);
                        self.schedule(stream);
                    }
                }
            }
            tracing::debug!(
                %id,
                entries,
                bytes = self.resent - before,
                "link looks stalled: its unconfirmed data goes out again on the others"
            );
        }
    }

    /// When [`Session::handle_timeout`] (and a transmit poll) is next needed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let keepalive = self
            .links
            .values()
            .flat_map(|l| [l.next_ping_at(), l.dead_at(), l.rescue_at()])
            .flatten()
            .min();
        match (self.ack_deadline, keepalive) {
            (Some(a), Some(k)) => Some(a.min(k)),
            (a, k) => a.or(k),
        }
    }

    /// Next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ----- output -----

    /// Whether any link could send something now: control frames, window updates or stream
    /// data, which go on whichever link asks first.
    pub fn wants_transmit(&self) -> bool {
        !self.control.is_empty()
            || !self.dirty_windows.is_empty()
            || self.session_window_dirty
            || !self.sched.is_empty()
    }

    /// Links that have something of their own to send (pongs, a due keepalive ping, the
    /// interactive frames and duplicates of a lane), beyond what [`Session::wants_transmit`]
    /// covers.
    pub fn links_wanting_transmit(&self) -> impl Iterator<Item = LinkId> + '_ {
        let lanes = self.lanes();
        let interactive = self.sched.has_interactive();
        self.links
            .iter()
            .filter(move |(id, l)| {
                !l.pongs_owed.is_empty()
                    || l.ping_pending()
                    || match self.pick_for(**id, lanes) {
                        Pick::Lane { .. } => interactive || self.has_dups_for(**id),
                        Pick::Spare => self.has_dups_for(**id),
                        Pick::Any | Pick::Bulk => false,
                    }
            })
            .map(|(&id, _)| id)
    }

    /// Whether `link` would find something to send now: control frames go on any link, or
    /// only on a lane while lanes are reserved (a stream's `OPEN` must not wait behind bulk
    /// data); window updates on any link but the dedicated lanes
    /// ([`Session::carries_windows`]); interactive data only on a lane and bulk data only
    /// elsewhere. The driver wakes only writers that have work.
    pub fn has_work_for(&self, link: LinkId) -> bool {
        let lanes = self.lanes();
        let pick = self.pick_for(link, lanes);
        let control = matches!(pick, Pick::Any | Pick::Lane { .. });
        if (control && !self.control.is_empty())
            || ((!self.dirty_windows.is_empty() || self.session_window_dirty)
                && self.carries_windows(link, pick, lanes))
        {
            return true;
        }
        match pick {
            Pick::Any => !self.sched.is_empty(),
            Pick::Lane { .. } => self.sched.has_interactive() || self.has_dups_for(link),
            Pick::Spare => self.has_dups_for(link),
            Pick::Bulk => self.sched.has_bulk(),
        }
    }

    /// Whether `link`, whose pick is `pick`, may carry window updates: any link, except that
    /// a dedicated lane ([`Session::add_lane`]) carries them only if every other link is a
    /// lane or stalled. A lane is one ordered byte stream (a QUIC stream, a TCP connection),
    /// so a lost packet of window updates on it holds up the game's next packet behind it
    /// until the loss is repaired, about a round trip, and a node receiving an upload sends
    /// window updates often (in the WAN lab's B, two or three a round trip per lane). When the dedicated lanes took them, both
    /// lanes had a hole at once often enough that in the WAN lab's B 9 of 2,400 rr round trips
    /// took 129-212 ms in place of about 106 (1 of 2,400 since). Lanes reserved on demand
    /// still carry them: with them too, the simulation of a 20 ms and a 400 ms link took 1.18 s
    /// where its test allows 1 s (with 2 or 3 links the only other link may be the slow one;
    /// not traced).
    fn carries_windows(&self, link: LinkId, pick: Pick, lanes: Lanes) -> bool {
        if matches!(pick, Pick::Any | Pick::Bulk) || !lanes.dedicated {
            return true;
        }
        let Some(now) = self.clock else {
            return true;
        };
        // With dedicated lanes, `lanes.ids` are dedicated lanes too.
        self.links
            .iter()
            .all(|(&id, l)| id == link || l.lane || l.stalled(now))
    }

    /// What `link` may carry, given the current `lanes`. The twin of a dedicated lane is the
    /// other dedicated lane even if that one looks stalled (see [`Pick::Spare`]).
    fn pick_for(&self, link: LinkId, lanes: Lanes) -> Pick {
        if lanes.ids[0].is_none() {
            return Pick::Any;
        }
        let dedicated = |id: &LinkId| self.links.get(id).is_some_and(|l| l.lane);
        let among_dedicated = lanes.dedicated;
        if lanes.ids.contains(&Some(link)) {
            let twin = lanes
                .ids
                .into_iter()
                .flatten()
                .find(|&x| x != link)
                .or_else(|| {
                    among_dedicated
                        .then(|| {
                            self.links
                                .keys()
                                .copied()
                                .find(|id| *id != link && dedicated(id))
                        })
                        .flatten()
                });
            Pick::Lane { twin }
        } else if among_dedicated && dedicated(&link) {
            Pick::Spare
        } else {
            Pick::Bulk
        }
    }

    /// The interactive lanes: links kept free of bulk data while latency-sensitive traffic
    /// flows (a small interactive segment within `LANE_HOLD`) and while a small segment or a
    /// stream's `OPEN` waits to go out (so the first bytes of a new connection do not wait
    /// behind a bulk link's queue either), so that a game's packets do not
    /// wait behind bulk data, or behind the loss repair of a busy TCP connection. With 2 or 3
    /// links one lane, with 4 or more two, and each small segment is sent on both (the
    /// receiver drops the copy that arrives second), so one lost packet costs no round trip.
    /// The lanes are the links with the lowest ids that are not stalled (a ping overdue).
    ///
    /// Dedicated lanes (links added by [`Session::add_lane`]) replace that choice: while one is
    /// not stalled and another link can take bulk data, the dedicated lanes are the lanes,
    /// always reserved, so no bulk data is ever queued on them and a game's first packet after a
    /// pause waits behind none either.
    fn lanes(&self) -> Lanes {
        let Some(now) = self.clock else {
            return Lanes::default();
        };
        if let Some(ids) = self.dedicated_lanes(now) {
            return Lanes {
                ids,
                dedicated: true,
            };
        }
        let recent = self
            .last_small
            .is_some_and(|small| now.saturating_duration_since(small) <= LANE_HOLD);
        debug_assert_eq!(
            self.opens_queued,
            self.control
                .iter()
                .filter(|f| matches!(f, Frame::Open { .. }))
                .count()
        );
        let waiting = (self.small_queued && self.sched.has_interactive()) || self.opens_queued > 0;
        if !recent && !waiting {
            return Lanes::default();
        }
        let want = match self.links.len() {
            0 | 1 => 0,
            2 | 3 => 1,
            _ => 2,
        };
        let mut out = Lanes::default();
        let mut k = 0;
        for (&id, l) in &self.links {
            if k == want {
                break;
            }
            if !l.stalled(now) {
                out.ids[k] = Some(id);
                k += 1;
            }
        }
        out
    }

    /// The dedicated lanes that are not stalled (at most two), if there is one and some other
    /// link can take the bulk data.
    fn dedicated_lanes(&self, now: Instant) -> Option<[Option<LinkId>; 2]> {
        let mut out = [None, None];
        let lanes = self
            .links
            .iter()
            .filter(|(_, l)| l.lane && !l.stalled(now))
            .map(|(&id, _)| id);
        for (slot, id) in out.iter_mut().zip(lanes) {
            *slot = Some(id);
        }
        let bulk_link = self.links.values().any(|l| !l.lane && !l.stalled(now));
        (out[0].is_some() && bulk_link).then_some(out)
    }

    /// Fills `buf` (cleared first) with the plaintext of one message for `link`: that link's
    /// pongs, control frames, window updates, then stream data chosen by the scheduler, then a
    /// ping if one is due. Returns `false` when there is nothing to send.
    pub fn poll_transmit(&mut self, now: Instant, link: LinkId, buf: &mut BytesMut) -> bool {
        buf.clear();
        self.clock = Some(now);
        let lanes = self.lanes();
        let pick = self.pick_for(link, lanes);
        let windows = (!self.dirty_windows.is_empty() || self.session_window_dirty)
            && self.carries_windows(link, pick, lanes);
        let Some(mut l) = self.links.remove(&link) else {
            return false;
        };
        let limit = MAX_MESSAGE - 9; // room for the trailing ping
        for token in l.pongs_owed.drain(..) {
            Frame::Pong(token).encode(buf);
        }
        // While lanes are reserved, control frames go on them only; window updates stay off
        // dedicated lanes (see `carries_windows`).
        let control = matches!(pick, Pick::Any | Pick::Lane { .. });
        if control || matches!(pick, Pick::Spare) {
            self.fill_open_dups(link, buf, limit);
        }
        while let Some(f) = self.control.front().filter(|_| control) {
            if buf.len() + f.encoded_len() > limit {
                break;
            }
            let f = self.control.pop_front().expect("front exists");
            let open = matches!(f, Frame::Open { .. });
            self.opens_queued -= usize::from(open);
            f.encode(buf);
            if let (true, Pick::Lane { twin: Some(twin) }) = (open, pick) {
                if self.open_dups.len() >= MAX_LANE_DUPS {
                    self.open_dups.pop_front();
                }
                self.open_dups.push_back((twin, f.clone()));
            }
            l.record(Sent::Control(f));
        }
        while windows && buf.len() + 25 <= limit {
            let Some(id) = self.dirty_windows.pop_front() else {
                break;
            };
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            if !s.window_dirty {
                continue;
            }
            s.window_dirty = false;
            let acked = s.ack_value();
            Frame::Window {
                stream: id,
                acked,
                max: s.recv_max,
            }
            .encode(buf);
            s.recv_acked_sent = acked;
            l.record(Sent::Window(id));
        }
        if windows && self.session_window_dirty && buf.len() + 9 <= limit {
            self.session_window_dirty = false;
            Frame::SessionWindow {
                max: self.recv_session_max,
            }
            .encode(buf);
            l.record(Sent::SessionWindow);
        }
        if matches!(pick, Pick::Lane { .. } | Pick::Spare) {
            self.fill_dups(link, buf, limit);
        }
        self.fill_data(now, &mut l, buf, limit, pick);
        // Drop entries the peer has acked end to end, then ask for confirmation of the rest.
        let streams = &self.streams;
        l.pop_front_while(|s| match s {
            Sent::Data {
                stream, end, fin, ..
            } => streams.get(stream).is_none_or(|st| {
                st.reset_sent || (st.send.acked() >= *end && (!fin || st.send.fin_acked()))
            }),
            _ => false,
        });
        if l.wants_ping(now) {
            let token = self.next_ping;
            self.next_ping += 1;
            Frame::Ping(token).encode(buf);
            l.ping_sent(now, token, l.stats.bytes_sent + buf.len() as u64);
        }
        l.stats.bytes_sent += buf.len() as u64;
        self.links.insert(link, l);
        !buf.is_empty()
    }

    /// Whether the other lane left duplicates (segments or `OPEN`s) for `link` to send.
    fn has_dups_for(&self, link: LinkId) -> bool {
        self.lane_dups.iter().any(|d| d.0 == link) || self.open_dups.iter().any(|d| d.0 == link)
    }

    /// Sends again, on `link`, the `OPEN` frames the other lane sent, for streams still open.
    fn fill_open_dups(&mut self, link: LinkId, buf: &mut BytesMut, limit: usize) {
        let mut i = 0;
        while i < self.open_dups.len() {
            if self.open_dups[i].0 != link {
                i += 1;
                continue;
            }
            if buf.len() + self.open_dups[i].1.encoded_len() > limit {
                break;
            }
            let (_, f) = self.open_dups.remove(i).expect("index in range");
            let live = matches!(&f, Frame::Open { stream, .. }
                if self.streams.get(stream).is_some_and(|s| !s.reset_sent));
            if live {
                f.encode(buf);
            }
        }
    }

    /// Sends again, on `link`, the small segments the other lane sent that are not acked yet.
    fn fill_dups(&mut self, link: LinkId, buf: &mut BytesMut, limit: usize) {
        let mut i = 0;
        while i < self.lane_dups.len() {
            let (lane, id, offset, len, fin) = self.lane_dups[i];
            if lane != link {
                i += 1;
                continue;
            }
            if buf.len() + DATA_HEADER + len > limit {
                break;
            }
            self.lane_dups.remove(i);
            let Some(s) = self.streams.get(&id) else {
                continue;
            };
            let unacked = if len > 0 {
                offset >= s.send.acked()
            } else {
                fin && !s.send.fin_acked()
            };
            if s.reset_sent || !unacked {
                continue;
            }
            frame::encode_data_header(buf, id, offset, len, fin);
            s.send.copy_out(offset, len, buf);
        }
    }

    fn fill_data(
        &mut self,
        now: Instant,
        l: &mut LinkState,
        buf: &mut BytesMut,
        limit: usize,
        pick: Pick,
    ) {
        while buf.len() + DATA_HEADER + MIN_TAIL <= limit {
            let next = match pick {
                Pick::Any => self.sched.pop(),
                Pick::Lane { .. } => self.sched.pop_interactive(),
                Pick::Bulk => self.sched.pop_bulk(),
                Pick::Spare => None,
            };
            let Some(id) = next else { break };
            let credit = self.send_session_max - self.send_session_used;
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            s.queued = false;
            if s.reset_sent {
                continue;
            }
            let space = limit - buf.len() - DATA_HEADER;
            let max_len = if self.sched.is_empty() {
                space
            } else {
                space.min(QUANTUM)
            };
            let Some(seg) = s.send.next_segment(max_len, credit) else {
                self.schedule(id);
                continue;
            };
            frame::encode_data_header(buf, id, seg.offset, seg.len, seg.fin);
            s.send.copy_out(seg.offset, seg.len, buf);
            s.send.mark_sent(seg);
            if s.queued_interactive && seg.len <= SMALL_SEGMENT {
                self.last_small = Some(now);
                self.small_at.insert(id, now);
                self.small_queued = false;
                if let Pick::Lane { twin: Some(twin) } = pick {
                    if self.lane_dups.len() >= MAX_LANE_DUPS {
                        self.lane_dups.pop_front();
                    }
                    self.lane_dups
                        .push_back((twin, id, seg.offset, seg.len, seg.fin));
                }
            }
            self.send_session_used += seg.new_bytes;
            l.record(Sent::Data {
                stream: id,
                start: seg.offset,
                end: seg.offset + seg.len as u64,
                fin: seg.fin,
            });
            self.schedule(id);
        }
    }

    // ----- application side -----

    /// Opens a stream to `service`, owned by node `owner` (client only). Data may be written
    /// at once; the `OPEN` and the data travel together.
    pub fn open_stream(&mut self, owner: NodeId, service: &str) -> Result<StreamId, OpenError> {
        if self.role != Role::Client {
            return Err(OpenError::NotClient);
        }
        if service.len() > MAX_SERVICE_NAME {
            return Err(OpenError::NameTooLong);
        }
        let counter = self.next_counter.entry(owner).or_insert(0);
        if *counter > StreamId::MAX_COUNTER {
            return Err(OpenError::IdsExhausted);
        }
        let id = StreamId::new(owner, *counter);
        *counter += 1;
        self.insert_stream(id, true);
        self.opens_queued += 1;
        self.control.push_back(Frame::Open {
            stream: id,
            service: service.to_owned(),
        });
        Ok(id)
    }

    /// Bytes the application may write now. Zero arms [`Event::StreamWritable`].
    pub fn stream_send_capacity(&mut self, id: StreamId) -> Result<usize, StreamError> {
        let window = self.cfg.stream_window;
        let available = self.held.budget().available(Pool::Send);
        let s = self.live_stream(id)?;
        if s.send.is_finished() {
            return Err(StreamError::Finished);
        }
        let mut cap = window.saturating_sub(s.send.buffered());
        let short = available < cap;
        if short {
            cap = if available >= MIN_BUDGET_WRITE {
                available
            } else {
                0
            };
        }
        if cap < window / 8 {
            s.write_waiting = true;
            if short && !s.budget_waiting {
                s.budget_waiting = true;
                self.budget_waiting.push(id);
                self.held.budget().set_waiting();
            }
        }
        Ok(cap as usize)
    }

    /// Queues bytes for sending; at most the current send capacity.
    pub fn stream_write(&mut self, id: StreamId, data: Bytes) -> Result<(), StreamError> {
        let window = self.cfg.stream_window;
        let s = self.live_stream(id)?;
        if s.send.is_finished() {
            return Err(StreamError::Finished);
        }
        if s.send.buffered() + data.len() as u64 > window {
            return Err(StreamError::Full);
        }
        if !data.is_empty() {
            let n = data.len() as u64;
            s.send.write(data);
            self.held.force(Pool::Send, n);
            self.schedule(id);
        }
        Ok(())
    }

    /// The application finished writing (half-close): a FIN follows the data.
    pub fn stream_finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        let s = self.live_stream(id)?;
        if !s.send.is_finished() {
            s.send.finish();
            self.schedule(id);
        }
        Ok(())
    }

    /// Aborts both directions of a stream and tells the peer.
    pub fn stream_reset(&mut self, id: StreamId, code: u16) {
        // The map itself, not `live_stream`, so that `self.held` stays usable beside `s`.
        let Some(s) = self.streams.get_mut(&id).filter(|s| !s.reset_sent) else {
            return;
        };
        self.held.release(Pool::Recv, s.recv_reservation());
        self.held.release(Pool::Send, s.send.buffered());
        s.reset_sent = true;
        let discarded = s.recv_highest - s.recv.read_offset();
        s.send.clear();
        s.recv = Reorder::default();
        let final_size = s.send.next();
        self.recv_session_consumed += discarded;
        self.control.push_back(Frame::Reset {
            stream: id,
            code,
            final_size,
        });
        self.maybe_grant_session();
    }

    /// Reads up to `max` in-order bytes, or the FIN.
    pub fn stream_read(&mut self, id: StreamId, max: usize) -> Result<ReadChunk, StreamError> {
        let s = self.live_stream(id)?;
        let reserved = s.recv_reservation();
        if let Some(chunk) = s.recv.read(max) {
            let n = chunk.len() as u64;
            let freed = reserved - s.recv_reservation();
            let threshold = s.recv_window / 4;
            self.held.release(Pool::Recv, freed);
            self.extend_grant(id, threshold, true);
            self.recv_session_consumed += n;
            self.maybe_grant_session();
            return Ok(ReadChunk::Data(chunk));
        }
        if s.recv_final == Some(s.recv.read_offset()) {
            if !s.recv_fin_read {
                s.recv_fin_read = true;
                self.maybe_remove(id);
            }
            return Ok(ReadChunk::Fin);
        }
        s.read_waiting = true;
        Ok(ReadChunk::Blocked)
    }

    /// Streams alive (including reset ones awaiting the peer's reset).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Bytes buffered for reading in all streams.
    pub fn recv_buffered_bytes(&self) -> u64 {
        self.streams
            .values()
            .map(|s| s.recv.buffered() as u64)
            .sum()
    }

    /// The largest receive and send buffers of any one stream, bytes.
    pub fn max_stream_buffered(&self) -> (u64, u64) {
        self.streams.values().fold((0, 0), |(r, w), s| {
            (r.max(s.recv.buffered() as u64), w.max(s.send.buffered()))
        })
    }

    /// Resets every stream (the session is going away).
    pub fn reset_all(&mut self, code: u16) {
        let ids: Vec<StreamId> = self.streams.keys().copied().collect();
        for id in ids {
            self.stream_reset(id, code);
            self.events.push_back(Event::StreamReadable(id));
            self.events.push_back(Event::StreamWritable(id));
        }
    }

    /// Asks the client for another link (server side; a no-op on the client): called when every
    /// link has been busy for a while and data is still waiting.
    pub fn request_more_links(&mut self) {
        if matches!(self.role, Role::Server(_)) && !self.control.contains(&Frame::MoreLinks) {
            self.control.push_back(Frame::MoreLinks);
        }
    }

    /// Forgets every stream and all session accounting, keeping the links: the peer lost
    /// this session (it restarted, or gave up on it) and a new one starts on the same links.
    /// Every stream reports closed to its task.
    pub fn restart(&mut self) {
        for &id in self.streams.keys() {
            self.events.push_back(Event::StreamReadable(id));
            self.events.push_back(Event::StreamWritable(id));
        }
        let fresh = Session::with_budget(self.role, self.cfg, self.held.budget().clone());
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

    // ----- internals -----

    fn live_stream(&mut self, id: StreamId) -> Result<&mut Stream, StreamError> {
        match self.streams.get_mut(&id) {
            Some(s) if !s.reset_sent => Ok(s),
            _ => Err(StreamError::Closed),
        }
    }

    fn schedule(&mut self, id: StreamId) {
        let credit = self.send_session_max - self.send_session_used;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.queued || s.reset_sent {
            return;
        }
        if s.send.has_sendable(credit) {
            s.queued = true;
            let backlog = s.send.backlog();
            s.queued_interactive = self.sched.push(id, backlog);
            if backlog <= SMALL_SEGMENT as u64 {
                self.small_queued = true;
            }
            if !s.queued_interactive {
                self.forget_small(id);
            }
        } else if credit == 0 && s.send.has_sendable(1) && !s.session_blocked {
            s.session_blocked = true;
            self.blocked_on_session.push(id);
        }
    }

    fn mark_window_dirty(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            if !s.window_dirty && !s.reset_sent {
                s.window_dirty = true;
                self.dirty_windows.push_back(id);
            }
        }
    }

    fn maybe_grant_session(&mut self) {
        let w = self.cfg.session_window;
        if self.recv_session_consumed + w - self.recv_session_max >= w / 2 {
            self.recv_session_max = self.recv_session_consumed + w;
            self.session_window_dirty = true;
        }
    }

    /// Removes a stream whose both directions are done.
    fn maybe_remove(&mut self, id: StreamId) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        if !(s.send.fin_acked() && s.recv_fin_read) {
            return;
        }
        if s.window_dirty || s.ack_later {
            // The final ack must still reach the peer, which waits for it to finish.
            self.control.push_back(Frame::Window {
                stream: id,
                acked: s.ack_value(),
                max: s.recv_max,
            });
        }
        self.remove_stream(id);
    }

    /// `id` no longer holds the lanes (it turned bulk or ended).
    fn forget_small(&mut self, id: StreamId) {
        if self.small_at.remove(&id).is_some() {
            self.last_small = self.small_at.values().max().copied();
        }
    }

    fn remove_stream(&mut self, id: StreamId) {
        self.forget_small(id);
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        if !s.reset_sent {
            self.held.release(Pool::Recv, s.recv_reservation());
            self.held.release(Pool::Send, s.send.buffered());
        }
        if matches!(self.role, Role::Server(_)) {
            self.finished.insert(id.0..id.0 + 1);
        }
    }
}

#[cfg(test)]
mod tests;
