//! Sequences of engine operations, sans-IO, in two scenarios.
//!
//! **Hostile client.** The fuzzer is a client against a server engine (`Role::Server`) with a
//! small memory budget and small limits: it adds and kills links, sends any frames (`OPEN`,
//! `DATA` at any offset, `RESET`, `WINDOW`, `SESSION_WINDOW`, `PING`, `PONG`, `CLOSE`, raw bytes)
//! in messages of up to the protocol's size, lets time pass, and plays the server's application
//! (reads, writes, finishes and resets streams, accepts or refuses the streams opened). A
//! message the engine refuses closes its link, as the driver does.
//!
//! **Honest pair.** A client and a server engine over links the fuzzer controls: it decides
//! which side sends on which link and when each message arrives (a link delivers in order while
//! it lives), kills and adds links (direct or relayed), lets time pass, opens streams (pinned or
//! not), and writes, reads, finishes and resets streams on both sides.
//!
//! Checked after every operation: nothing panics; the budget's send pool stays within its cap
//! (the hostile client's session, on its client's account, within half of it)
//! (writes follow the capacity the engine gives) and its receive pool within its cap plus what
//! the protocol lets a peer send without a grant; what a session buffers stays within its
//! session credit; its streams stay within their limits; every byte an application reads is the
//! byte its peer wrote at that offset (payloads are a function of stream and offset), in order;
//! every message the engine sends decodes and fits in a link message (on a relayed link, in a
//! routed section, and without a pinned stream's data). Between honest engines no
//! message is ever refused. At the end, dropping the engines gives all of the budget back.
#![no_main]

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};
use wanmux_core::budget::{Budget, Pool};
use wanmux_core::engine::{
    Config, Event, ReadChunk, Role, Session, INITIAL_SESSION_CREDIT, INITIAL_STREAM_CREDIT,
    MAX_PENDING_STREAMS,
};
use wanmux_core::frame::{Frame, MAX_DATA, MAX_MESSAGE};
use wanmux_core::ids::{LinkId, NodeId, StreamId};
use wanmux_core::route::MAX_SECTION;

const NODE: NodeId = NodeId(1);
const MIB: u64 = 1 << 20;
/// Each pool of the budget: small, so that the fuzzer reaches it.
const MEMORY: u64 = 8 * MIB;
const MAX_STREAMS: usize = 16;
/// Memory a held reorder segment is counted for, at most (`engine/reorder.rs`).
const SEGMENT_COST: u64 = 256;

fn config() -> Config {
    Config {
        stream_window: 4 * MIB,
        session_window: 16 * MIB,
        max_streams: MAX_STREAMS,
    }
}

/// The byte a writer puts at `offset` of stream `id` in direction `up` (client to server).
fn byte_at(up: bool, id: StreamId, offset: u64) -> u8 {
    (offset ^ (offset >> 9) ^ id.0.wrapping_mul(0x9E37_79B9) ^ (u64::from(up) * 0x55)) as u8
}

fn payload(up: bool, id: StreamId, offset: u64, len: usize) -> Bytes {
    (0..len as u64)
        .map(|i| byte_at(up, id, offset.wrapping_add(i)))
        .collect()
}

/// A stream id the hostile client names: one of a few counters of this node, of another node,
/// or any.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Sid {
    Ours(u8),
    OtherNode(u8),
    Any(u64),
}

impl Sid {
    fn id(self) -> StreamId {
        match self {
            Sid::Ours(c) => StreamId::new(NODE, u64::from(c % 24)),
            Sid::OtherNode(c) => StreamId::new(NodeId(2), u64::from(c)),
            Sid::Any(v) => StreamId(v),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Offset {
    Small(u16),
    Near(u32),
    Any(u64),
}

impl Offset {
    fn get(self) -> u64 {
        match self {
            Offset::Small(v) => u64::from(v),
            Offset::Near(v) => u64::from(v),
            Offset::Any(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum HostileFrame {
    Open {
        stream: Sid,
        known: bool,
        /// Sent as `OPEN_PIN`: the stream's frames stay on the owner's links.
        pin: bool,
    },
    Data {
        stream: Sid,
        offset: Offset,
        len: u16,
        fin: bool,
    },
    /// A run of in-order `DATA` from the stream's next offset.
    Bulk {
        stream: u8,
        len: u32,
    },
    Reset {
        stream: Sid,
        code: u16,
        final_size: Offset,
    },
    Window {
        stream: Sid,
        acked: Offset,
        max: Offset,
    },
    SessionWindow {
        max: Offset,
    },
    Ping(u64),
    Pong(u64),
    Close(u16),
    MoreLinks,
    Draining,
    /// `FORGET`: the client gave up another session for this one.
    Forget([u8; 32]),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum HostileOp {
    AddLink,
    KillLink(u8),
    Send {
        link: u8,
        frames: Vec<HostileFrame>,
    },
    /// Let time pass, in milliseconds.
    Wait(u16),
    /// The server's writer on `link` asks for a message.
    Poll(u8),
    Read {
        stream: u8,
        max: u16,
    },
    Write {
        stream: u8,
        len: u32,
    },
    Finish(u8),
    ResetStream(u8),
    RetryBudget,
}

#[derive(Arbitrary, Debug)]
enum PairOp {
    /// A link both engines add; a `relayed` one (a sub-link through another node,
    /// `add_relayed_link`) carries messages that fit a routed section and no pinned stream's data.
    AddLink {
        relayed: bool,
    },
    KillLink(u8),
    /// `up`: the client sends on the link (else the server); the message is queued in flight.
    Send {
        link: u8,
        up: bool,
    },
    /// The oldest message in flight on the link in that direction arrives.
    Deliver {
        link: u8,
        up: bool,
    },
    Wait(u16),
    /// The client opens a stream, pinned to the owner's links (`OPEN_PIN`) or not.
    Open {
        pin: bool,
    },
    Write {
        up: bool,
        stream: u8,
        len: u32,
    },
    Read {
        up: bool,
        stream: u8,
        max: u32,
    },
    Finish {
        up: bool,
        stream: u8,
    },
    Reset {
        up: bool,
        stream: u8,
    },
}

#[derive(Arbitrary, Debug)]
enum Scenario {
    Hostile(Vec<HostileOp>),
    Pair(Vec<PairOp>),
}

/// Checks a decoded message from an engine: every frame decodes, and it fits.
fn check_sent(buf: &BytesMut) {
    assert!(buf.len() <= MAX_MESSAGE, "message of {} bytes", buf.len());
    let mut b = buf.clone().freeze();
    while let Some(f) = Frame::decode(&mut b).expect("the engine sends valid frames") {
        if let Frame::Data { data, .. } = &f {
            assert!(data.len() <= MAX_DATA);
        }
    }
}

/// Checks a message sent on a relayed link: it fits in a routed section, and carries no data of
/// a pinned stream.
fn check_relayed(buf: &BytesMut, pinned: &HashSet<StreamId>) {
    assert!(
        buf.len() <= MAX_SECTION,
        "message of {} bytes on a relayed link",
        buf.len()
    );
    let mut b = buf.clone().freeze();
    while let Some(f) = Frame::decode(&mut b).expect("the engine sends valid frames") {
        if let Frame::Data { stream, .. } = &f {
            assert!(
                !pinned.contains(stream),
                "a pinned stream's data on a relayed link: {f:?}"
            );
        }
    }
}

/// One side's application: what it read of each stream so far.
#[derive(Default)]
struct App {
    read: HashMap<StreamId, u64>,
    written: HashMap<StreamId, u64>,
    fin_read: HashSet<StreamId>,
}

impl App {
    /// Reads from `id` and checks the bytes against what the peer wrote there.
    fn read(&mut self, s: &mut Session, now: Instant, id: StreamId, max: usize, up: bool) {
        match s.stream_read(now, id, max.max(1)) {
            Ok(ReadChunk::Data(b)) => {
                let at = self.read.entry(id).or_insert(0);
                for (i, &x) in b.iter().enumerate() {
                    let off = *at + i as u64;
                    assert_eq!(
                        x,
                        byte_at(up, id, off),
                        "stream {id} byte {off} delivered wrong"
                    );
                }
                assert!(!self.fin_read.contains(&id), "data after the FIN");
                *at += b.len() as u64;
            }
            Ok(ReadChunk::Fin) => {
                self.fin_read.insert(id);
            }
            Ok(ReadChunk::Blocked) | Err(_) => {}
        }
    }

    /// Writes up to `len` bytes (at most the capacity the engine offers) to `id`.
    fn write(&mut self, s: &mut Session, id: StreamId, len: usize, up: bool) {
        let Ok(cap) = s.stream_send_capacity(id) else {
            return;
        };
        let n = len.min(cap).min(1 << 20);
        if n == 0 {
            return;
        }
        let at = self.written.entry(id).or_insert(0);
        let data = payload(up, id, *at, n);
        if s.stream_write(id, data).is_ok() {
            *at += n as u64;
        }
    }
}

/// The bounds every engine must keep, whatever its peer did.
fn check_bounds(s: &Session, budget: &Budget) {
    let cap = budget.cap();
    let send = budget.used(Pool::Send);
    assert!(send <= cap, "send pool {send} over its cap {cap}");
    let recv = budget.used(Pool::Recv);
    let session = config().session_window.max(INITIAL_SESSION_CREDIT);
    // Beyond the cap: what open streams hold within their initial credit (the protocol lets the
    // peer send it without a grant), at most the session credit, and each segment's cost.
    let slack = session + (session / 2048).max(1024) * SEGMENT_COST;
    assert!(
        recv <= cap + slack,
        "receive pool {recv} over {cap} + {slack}"
    );
    let buffered = s.recv_buffered_bytes();
    assert!(
        buffered <= session,
        "{buffered} bytes buffered, session credit {session}"
    );
    let (max_recv, _) = s.max_stream_buffered();
    assert!(max_recv <= config().stream_window.max(INITIAL_STREAM_CREDIT));
    let streams = s.stream_count();
    assert!(
        streams <= 2 * MAX_STREAMS + MAX_PENDING_STREAMS,
        "{streams} streams"
    );
}

fn hostile(ops: Vec<HostileOp>) {
    // As on a server: the session draws on its client's account, a fair share of the pools.
    let budget = Budget::new(2 * MEMORY).account();
    let mut s = Session::with_budget(Role::Server(NODE), config(), budget.clone());
    let t0 = Instant::now();
    let mut now = t0;
    let mut links: Vec<LinkId> = Vec::new();
    let mut next_link = 0u64;
    let mut app = App::default();
    let mut opened: Vec<StreamId> = Vec::new();
    // The client's next in-order offset per stream counter, for `Bulk`.
    let mut bulk_at: HashMap<u8, u64> = HashMap::new();
    let mut buf = BytesMut::new();
    for op in ops.into_iter().take(256) {
        match op {
            HostileOp::AddLink => {
                if links.len() < 8 {
                    let id = LinkId(next_link);
                    next_link += 1;
                    s.add_link(now, id);
                    links.push(id);
                }
            }
            HostileOp::KillLink(i) => {
                if !links.is_empty() {
                    let id = links.remove(usize::from(i) % links.len());
                    s.remove_link(id);
                }
            }
            HostileOp::Send { link, frames } => {
                let link = if links.is_empty() {
                    LinkId(u64::from(link) + 1000)
                } else {
                    links[usize::from(link) % links.len()]
                };
                let mut msg = BytesMut::new();
                for f in frames {
                    let mut one = BytesMut::new();
                    encode_hostile(&f, &mut one, &mut bulk_at);
                    if msg.len() + one.len() > MAX_MESSAGE {
                        break;
                    }
                    msg.extend_from_slice(&one);
                }
                if s.handle_message(now, link, msg.freeze()).is_err() && links.contains(&link) {
                    // A refused message closes its link, as the driver does.
                    links.retain(|&l| l != link);
                    s.remove_link(link);
                }
            }
            HostileOp::Wait(ms) => {
                now += Duration::from_millis(u64::from(ms));
                if s.poll_timeout().is_some_and(|t| t <= now) {
                    s.handle_timeout(now);
                }
            }
            HostileOp::Poll(i) => {
                if !links.is_empty() {
                    let link = links[usize::from(i) % links.len()];
                    if s.poll_transmit(now, link, &mut buf) {
                        check_sent(&buf);
                    } else {
                        s.park_writer(now, link);
                    }
                }
            }
            HostileOp::Read { stream, max } => {
                if !opened.is_empty() {
                    let id = opened[usize::from(stream) % opened.len()];
                    app.read(&mut s, now, id, usize::from(max), true);
                }
            }
            HostileOp::Write { stream, len } => {
                if !opened.is_empty() {
                    let id = opened[usize::from(stream) % opened.len()];
                    app.write(&mut s, id, len as usize, false);
                }
            }
            HostileOp::Finish(i) => {
                if !opened.is_empty() {
                    let _ = s.stream_finish(opened[usize::from(i) % opened.len()]);
                }
            }
            HostileOp::ResetStream(i) => {
                if !opened.is_empty() {
                    s.stream_reset(opened[usize::from(i) % opened.len()], 0);
                }
            }
            HostileOp::RetryBudget => s.retry_budget(now),
        }
        while let Some(e) = s.poll_event() {
            if let Event::StreamOpened { stream, service } = e {
                if service == "app" {
                    if opened.len() < 64 {
                        opened.push(stream);
                    }
                } else {
                    s.stream_reset(stream, 1);
                }
            }
        }
        let mut wakes = Vec::new();
        s.poll_wakes(now, &mut wakes);
        check_bounds(&s, &budget);
        // A client's share of the send pool: at most what stays free, so half of it.
        let held = budget.account_used(Pool::Send);
        assert!(
            held <= budget.cap() / 2,
            "one client holds {held} of the send pool"
        );
        assert_eq!(
            held,
            budget.used(Pool::Send),
            "the account counts what the session holds"
        );
    }
    drop(s);
    assert_eq!(budget.used(Pool::Recv), 0, "receive budget not given back");
    assert_eq!(budget.used(Pool::Send), 0, "send budget not given back");
}

fn encode_hostile(f: &HostileFrame, out: &mut BytesMut, bulk_at: &mut HashMap<u8, u64>) {
    match *f {
        HostileFrame::Open { stream, known, pin } => Frame::Open {
            stream: stream.id(),
            service: if known { "app" } else { "nope" }.into(),
            pin,
        }
        .encode(out),
        HostileFrame::Data {
            stream,
            offset,
            len,
            fin,
        } => {
            let id = stream.id();
            let offset = offset.get();
            let len = usize::from(len).min(4096);
            Frame::Data {
                stream: id,
                offset,
                fin,
                data: payload(true, id, offset, len),
            }
            .encode(out);
        }
        HostileFrame::Bulk { stream, len } => {
            let id = StreamId::new(NODE, u64::from(stream % 24));
            let at = bulk_at.entry(stream % 24).or_insert(0);
            let mut left = (len as usize).min(60_000);
            while left > 0 {
                let n = left.min(16_000);
                Frame::Data {
                    stream: id,
                    offset: *at,
                    fin: false,
                    data: payload(true, id, *at, n),
                }
                .encode(out);
                *at += n as u64;
                left -= n;
            }
        }
        HostileFrame::Reset {
            stream,
            code,
            final_size,
        } => Frame::Reset {
            stream: stream.id(),
            code,
            final_size: final_size.get(),
        }
        .encode(out),
        HostileFrame::Window { stream, acked, max } => Frame::Window {
            stream: stream.id(),
            acked: acked.get(),
            max: max.get(),
        }
        .encode(out),
        HostileFrame::SessionWindow { max } => Frame::SessionWindow { max: max.get() }.encode(out),
        HostileFrame::Ping(t) => Frame::Ping(t).encode(out),
        HostileFrame::Pong(t) => Frame::Pong(t).encode(out),
        HostileFrame::Close(c) => Frame::Close(c).encode(out),
        HostileFrame::MoreLinks => Frame::MoreLinks.encode(out),
        HostileFrame::Draining => Frame::Draining.encode(out),
        HostileFrame::Forget(secret) => {
            Frame::Forget(wanmux_core::frame::SecretBytes(secret)).encode(out)
        }
        HostileFrame::Raw(ref b) => out.extend_from_slice(&b[..b.len().min(1024)]),
    }
}

/// One side of the honest pair.
struct Side {
    s: Session,
    budget: Budget,
    app: App,
    /// Streams this side's application has (opened, or accepted).
    streams: Vec<StreamId>,
    /// Whether this is the client.
    up: bool,
}

impl Side {
    fn new(role: Role) -> Side {
        let budget = Budget::new(2 * MEMORY);
        Side {
            s: Session::with_budget(role, config(), budget.clone()),
            budget,
            app: App::default(),
            streams: Vec::new(),
            up: role == Role::Client,
        }
    }

    fn pick(&self, i: u8) -> Option<StreamId> {
        (!self.streams.is_empty()).then(|| self.streams[usize::from(i) % self.streams.len()])
    }

    fn events(&mut self, now: Instant, links: &mut Vec<LinkId>) {
        while let Some(e) = self.s.poll_event() {
            match e {
                Event::StreamOpened { stream, .. } => self.streams.push(stream),
                Event::BudgetReleased => self.s.retry_budget(now),
                Event::LinkClosedByPeer { link: l, .. } | Event::LinkTimedOut(l) => {
                    links.retain(|&x| x != l)
                }
                _ => {}
            }
        }
        let mut wakes = Vec::new();
        self.s.poll_wakes(now, &mut wakes);
    }
}

fn pair(ops: Vec<PairOp>) {
    let mut c = Side::new(Role::Client);
    let mut sv = Side::new(Role::Server(NODE));
    let mut now = Instant::now();
    let mut links: Vec<LinkId> = Vec::new();
    let mut relayed_links: HashSet<LinkId> = HashSet::new();
    // The streams the client opened pinned (`OPEN_PIN`).
    let mut pinned: HashSet<StreamId> = HashSet::new();
    let mut next_link = 0u64;
    // In flight per (link, up).
    let mut flight: HashMap<(LinkId, bool), VecDeque<Bytes>> = HashMap::new();
    let mut buf = BytesMut::new();
    for op in ops.into_iter().take(512) {
        match op {
            PairOp::AddLink { relayed } => {
                if links.len() < 6 {
                    let id = LinkId(next_link);
                    next_link += 1;
                    if relayed {
                        c.s.add_relayed_link(now, id);
                        sv.s.add_relayed_link(now, id);
                        relayed_links.insert(id);
                    } else {
                        c.s.add_link(now, id);
                        sv.s.add_link(now, id);
                    }
                    links.push(id);
                }
            }
            PairOp::KillLink(i) => {
                if !links.is_empty() {
                    let id = links.remove(usize::from(i) % links.len());
                    c.s.remove_link(id);
                    sv.s.remove_link(id);
                    flight.remove(&(id, true));
                    flight.remove(&(id, false));
                }
            }
            PairOp::Send { link, up } => {
                if !links.is_empty() {
                    let id = links[usize::from(link) % links.len()];
                    let side = if up { &mut c } else { &mut sv };
                    if side.s.poll_transmit(now, id, &mut buf) {
                        check_sent(&buf);
                        if relayed_links.contains(&id) {
                            check_relayed(&buf, &pinned);
                        }
                        flight
                            .entry((id, up))
                            .or_default()
                            .push_back(buf.split().freeze());
                    } else {
                        side.s.park_writer(now, id);
                    }
                }
            }
            PairOp::Deliver { link, up } => {
                if !links.is_empty() {
                    let id = links[usize::from(link) % links.len()];
                    if let Some(msg) = flight.get_mut(&(id, up)).and_then(|q| q.pop_front()) {
                        let to = if up { &mut sv } else { &mut c };
                        if let Err(e) = to.s.handle_message(now, id, msg) {
                            panic!("an honest peer's message was refused: {e}");
                        }
                    }
                }
            }
            PairOp::Wait(ms) => {
                now += Duration::from_millis(u64::from(ms));
                for side in [&mut c, &mut sv] {
                    if side.s.poll_timeout().is_some_and(|t| t <= now) {
                        side.s.handle_timeout(now);
                    }
                }
            }
            PairOp::Open { pin } => {
                if c.streams.len() < MAX_STREAMS {
                    if let Ok(id) = c.s.open_stream_spread(now, NODE, "app", pin) {
                        if pin {
                            pinned.insert(id);
                        }
                        c.streams.push(id);
                    }
                }
            }
            PairOp::Write { up, stream, len } => {
                let side = if up { &mut c } else { &mut sv };
                if let Some(id) = side.pick(stream) {
                    let up = side.up;
                    side.app.write(&mut side.s, id, len as usize, up);
                }
            }
            PairOp::Read { up, stream, max } => {
                let side = if up { &mut c } else { &mut sv };
                if let Some(id) = side.pick(stream) {
                    // What the client reads the server wrote: direction "down".
                    let dir = !side.up;
                    side.app
                        .read(&mut side.s, now, id, (max as usize).min(1 << 20), dir);
                }
            }
            PairOp::Finish { up, stream } => {
                let side = if up { &mut c } else { &mut sv };
                if let Some(id) = side.pick(stream) {
                    let _ = side.s.stream_finish(id);
                }
            }
            PairOp::Reset { up, stream } => {
                let side = if up { &mut c } else { &mut sv };
                if let Some(id) = side.pick(stream) {
                    side.s.stream_reset(id, 0);
                }
            }
        }
        // A link one side dropped (its ping timed out) dies for both.
        let before = links.clone();
        c.events(now, &mut links);
        sv.events(now, &mut links);
        for l in before.iter().filter(|l| !links.contains(l)) {
            c.s.remove_link(*l);
            sv.s.remove_link(*l);
            flight.remove(&(*l, true));
            flight.remove(&(*l, false));
        }
        check_bounds(&c.s, &c.budget);
        check_bounds(&sv.s, &sv.budget);
    }
    let budgets = [c.budget.clone(), sv.budget.clone()];
    drop(c);
    drop(sv);
    for b in budgets {
        assert_eq!(b.used(Pool::Recv), 0, "receive budget not given back");
        assert_eq!(b.used(Pool::Send), 0, "send budget not given back");
    }
}

fuzz_target!(|s: Scenario| {
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!("{s:#?}");
    }
    match s {
        Scenario::Hostile(ops) => hostile(ops),
        Scenario::Pair(ops) => pair(ops),
    }
});
