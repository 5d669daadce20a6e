//! Seeded, deterministic simulation: a client and a server [`Session`] joined by several fake
//! links with their own latency, jitter and bandwidth, in virtual time.
//!
//! Each link is a FIFO pipe per direction, like a TCP connection: a message leaves when the
//! link's serialiser is free and arrives `latency + jitter` later, never before the message
//! ahead of it. A link pulls a message from its engine only when it is free, as a real socket
//! with a short send queue would; a link that found nothing to send parks until its engine
//! names it in [`Session::poll_wakes`], as the driver's link writers do, so the engine's choice
//! of which writer to wake runs here too. The memory budget is retried when an engine reports
//! [`Event::BudgetReleased`], as the driver's budget task does. Links can be killed mid-run: what is in flight on them is
//! lost and both engines are told, as when a TCP connection dies.
//!
//! Applications on both sides write seeded pseudo-random bytes and hash what they read, so a
//! test compares hashes per stream and direction.

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};
use wanmux_core::budget::{Budget, Pool};
use wanmux_core::engine::{Config, Event, LinkPlan, PoolView, ReadChunk, Role, Session};
use wanmux_core::ids::{LinkId, NodeId, StreamId};

/// The server node every simulated stream is owned by.
pub const NODE: NodeId = NodeId(1);

/// One fake link.
#[derive(Debug, Clone, Copy)]
pub struct LinkSpec {
    /// One-way latency.
    pub latency: Duration,
    /// Up to this much extra delay per message, uniformly drawn (order is kept).
    pub jitter: Duration,
    /// Bytes per second each way.
    pub bandwidth: u64,
    /// A link through a relay node of a cluster (a sub-link on the client, a virtual link at
    /// the owner): both engines add it with `add_relayed_link`, and its messages must fit a
    /// `ROUTE` section. Its latency is the whole path (client link plus the cluster LAN).
    pub relayed: bool,
}

/// Adds a link of `spec` to both engines.
fn add_both(sides: &mut [Session; 2], now: Instant, id: LinkId, spec: &LinkSpec) {
    for s in sides.iter_mut() {
        if spec.relayed {
            s.add_relayed_link(now, id);
        } else {
            s.add_link(now, id);
        }
    }
}

/// One stream of the workload: bytes the client sends up and the server sends down.
#[derive(Debug, Clone, Copy)]
pub struct StreamSpec {
    /// Client to server bytes.
    pub up: u64,
    /// Server to client bytes.
    pub down: u64,
    /// When the client opens it, from the start.
    pub start: Duration,
}

/// A link kill: at `at`, link `index` dies; with `revive`, a new link with the same spec
/// replaces it after that long.
#[derive(Debug, Clone, Copy)]
pub struct Kill {
    /// When.
    pub at: Duration,
    /// Which link (index into the spec list).
    pub index: usize,
    /// Replace it after this long.
    pub revive: Option<Duration>,
    /// Drop everything on the link from then on without telling either engine, as a
    /// blackholed path does; the engines must notice by themselves (ping timeout).
    pub blackhole: bool,
}

/// The whole scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Seed for data, jitter and anything random.
    pub seed: u64,
    /// The links.
    pub links: Vec<LinkSpec>,
    /// The streams.
    pub streams: Vec<StreamSpec>,
    /// Engine limits, both sides.
    pub config: Config,
    /// Applications read at most this many bytes per second (per stream); `None`: at once.
    pub read_rate: Option<u64>,
    /// Link kills.
    pub kills: Vec<Kill>,
    /// Give up after this much virtual time.
    pub deadline: Duration,
    /// Each side's daemon memory cap (`limits.memory`); `None`: unlimited.
    pub memory: Option<u64>,
    /// Elastic links (`links.min`, `links.max`): the client starts with the first `min` of
    /// `links` and opens and closes links as its engine plans ([`Session::plan_links`]), each
    /// new one with the spec of `links[i % links.len()]`. `None`: all of `links`, fixed.
    pub elastic: Option<(usize, usize)>,
}

/// Hashes of one direction of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Bytes written by the sender.
    pub sent: u64,
    /// Hash of what was written.
    pub sent_hash: blake3::Hash,
    /// Bytes read by the receiver.
    pub received: u64,
    /// Hash of what was read.
    pub received_hash: blake3::Hash,
    /// The receiver saw the FIN.
    pub fin: bool,
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    /// Per stream: (up, down).
    pub flows: Vec<(Flow, Flow)>,
    /// Virtual time when the last stream finished (or the deadline).
    pub elapsed: Duration,
    /// Largest receive buffer seen in any one stream, bytes.
    pub max_stream_buffered: u64,
    /// Largest total receive buffer seen in one session, bytes.
    pub max_session_buffered: u64,
    /// Largest send buffer seen in any one stream, bytes.
    pub max_send_buffered: u64,
    /// Links the engines declared dead by ping timeout (counted per side).
    pub timed_out: usize,
    /// Streams still alive in each engine at the end.
    pub live_streams: (usize, usize),
    /// Largest use of either side's memory budget seen: (receive pool, send pool), bytes.
    pub max_budget_used: (u64, u64),
    /// What the two sides' budgets still had reserved at the end (receive + send, both sides).
    pub budget_left: u64,
    /// The most links up at once.
    pub max_links: usize,
}

/// A message on the wire: arrival time, sequence (keeps order among equal times), link,
/// direction (0 = client to server) and bytes.
type InFlight = (Instant, u64, LinkId, usize, Vec<u8>);

struct Pipe {
    spec: LinkSpec,
    /// When the serialiser is free again, per direction (0 = client to server).
    free_at: [Instant; 2],
    last_arrival: [Instant; 2],
    alive: bool,
    /// Traffic vanishes; the engines are not told.
    blackholed: bool,
    id: LinkId,
    /// Per direction: the writer found nothing to send and waits to be woken.
    parked: [bool; 2],
}

/// Unparks the writers `s` (side `dir`, 0 = client) names in [`Session::poll_wakes`].
fn wake_writers(
    s: &mut Session,
    dir: usize,
    now: Instant,
    pipes: &mut [Pipe],
    scratch: &mut Vec<LinkId>,
) {
    scratch.clear();
    s.poll_wakes(now, scratch);
    for id in scratch.iter() {
        if let Some(p) = pipes.iter_mut().find(|p| p.id == *id) {
            p.parked[dir] = false;
        }
    }
}

/// One direction of one stream, seen from one side.
struct App {
    stream: Option<StreamId>,
    to_send: u64,
    sent: u64,
    fin_sent: bool,
    gen: StdRng,
    send_hash: blake3::Hasher,
    recv_hash: blake3::Hasher,
    received: u64,
    fin: bool,
    read_budget: f64,
}

impl App {
    fn new(seed: u64, to_send: u64) -> Self {
        App {
            stream: None,
            to_send,
            sent: 0,
            fin_sent: false,
            gen: StdRng::seed_from_u64(seed),
            send_hash: blake3::Hasher::new(),
            recv_hash: blake3::Hasher::new(),
            received: 0,
            fin: false,
            read_budget: 0.0,
        }
    }

    fn pump(&mut self, s: &mut Session, now: Instant, read_cap: Option<u64>) {
        let Some(id) = self.stream else { return };
        while !self.fin_sent {
            let Ok(cap) = s.stream_send_capacity(id) else {
                break;
            };
            let n = (self.to_send - self.sent).min(cap as u64).min(40_000) as usize;
            if n == 0 && self.sent < self.to_send {
                break;
            }
            if n > 0 {
                let mut buf = vec![0u8; n];
                self.gen.fill(&mut buf[..]);
                self.send_hash.update(&buf);
                s.stream_write(id, Bytes::from(buf))
                    .expect("within capacity");
                self.sent += n as u64;
            }
            if self.sent == self.to_send {
                s.stream_finish(id).expect("live stream");
                self.fin_sent = true;
            }
        }
        while !self.fin {
            let max = match read_cap {
                Some(_) if self.read_budget < 1.0 => break,
                Some(_) => self.read_budget as usize,
                None => usize::MAX,
            };
            match s.stream_read(now, id, max) {
                Ok(ReadChunk::Data(b)) => {
                    self.recv_hash.update(&b);
                    self.received += b.len() as u64;
                    if read_cap.is_some() {
                        self.read_budget -= b.len() as f64;
                    }
                }
                Ok(ReadChunk::Fin) => self.fin = true,
                Ok(ReadChunk::Blocked) | Err(_) => break,
            }
        }
    }
}

/// Drains both sides' events: streams the client opened reach their server application, dead
/// links are counted, budget releases are noted in `released`.
fn drain_events(
    sides: &mut [Session; 2],
    released: &mut [bool; 2],
    server_apps: &mut [App],
    by_id: &mut [HashMap<StreamId, usize>; 2],
    gone: &mut [std::collections::HashSet<LinkId>; 2],
    timed_out: &mut usize,
) {
    for (side, s) in sides.iter_mut().enumerate() {
        while let Some(ev) = s.poll_event() {
            match ev {
                Event::StreamOpened { stream, .. } => {
                    let i = usize::try_from(stream.counter()).expect("small");
                    server_apps[i].stream = Some(stream);
                    by_id[1].insert(stream, i);
                }
                Event::LinkTimedOut(id) => {
                    *timed_out += 1;
                    gone[side].insert(id);
                }
                Event::BudgetReleased => released[side] = true,
                _ => {}
            }
        }
    }
}

/// Runs a scenario to completion (or its deadline).
pub fn run(sc: &Scenario) -> Outcome {
    let t0 = Instant::now();
    let mut now = t0;
    let mut rng = StdRng::seed_from_u64(sc.seed);
    let budget = || sc.memory.map_or_else(Budget::unlimited, Budget::new);
    let budgets = [budget(), budget()];
    let mut sides = [
        Session::with_budget(Role::Client, sc.config, budgets[0].clone()),
        Session::with_budget(Role::Server(NODE), sc.config, budgets[1].clone()),
    ];
    let mut max_budget = (0u64, 0u64);
    let mut pipes: Vec<Pipe> = Vec::new();
    let mut next_link = 0u64;
    let new_pipe = |spec: LinkSpec, now: Instant, next_link: &mut u64| {
        *next_link += 1;
        Pipe {
            spec,
            free_at: [now; 2],
            last_arrival: [now; 2],
            alive: true,
            blackholed: false,
            id: LinkId(*next_link),
            parked: [false; 2],
        }
    };
    let first = sc.elastic.map_or(sc.links.len(), |(min, _)| min);
    for spec in sc.links.iter().cycle().take(first) {
        let p = new_pipe(*spec, now, &mut next_link);
        add_both(&mut sides, now, p.id, spec);
        pipes.push(p);
    }
    // In-flight messages: (arrival, sequence, pipe index, direction, bytes).
    let mut wire: BinaryHeap<Reverse<InFlight>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut client_apps: Vec<App> = sc
        .streams
        .iter()
        .enumerate()
        .map(|(i, st)| App::new(sc.seed ^ (i as u64 * 2 + 1) << 8, st.up))
        .collect();
    let mut server_apps: Vec<App> = sc
        .streams
        .iter()
        .enumerate()
        .map(|(i, st)| App::new(sc.seed ^ (i as u64 * 2 + 2) << 8, st.down))
        .collect();
    let mut by_id: [HashMap<StreamId, usize>; 2] = [HashMap::new(), HashMap::new()];
    let mut kills = sc.kills.clone();
    kills.sort_by_key(|k| k.at);
    let mut revivals: Vec<(Instant, usize)> = Vec::new();
    let mut opened = 0usize;
    let (mut max_stream, mut max_session, mut max_send) = (0u64, 0u64, 0u64);
    let mut buf = BytesMut::with_capacity(70_000);
    let mut last_read = now;
    let mut gone: [std::collections::HashSet<LinkId>; 2] = Default::default();
    let mut timed_out = 0usize;
    let mut wake_scratch = Vec::new();
    // The client's extra links (elastic), oldest first, and how many were ever opened.
    let mut extra: Vec<LinkId> = Vec::new();
    let mut opened_links = first;
    let mut max_links = first;

    loop {
        // Open streams that are due.
        while opened < sc.streams.len() && t0 + sc.streams[opened].start <= now {
            let id = sides[0].open_stream(now, NODE, "svc").expect("open");
            client_apps[opened].stream = Some(id);
            by_id[0].insert(id, opened);
            opened += 1;
        }
        // Kills and revivals.
        while kills.first().is_some_and(|k| t0 + k.at <= now) {
            let k = kills.remove(0);
            let p = &mut pipes[k.index];
            if p.alive {
                if k.blackhole {
                    p.blackholed = true;
                } else {
                    p.alive = false;
                    sides[0].remove_link(p.id);
                    sides[1].remove_link(p.id);
                }
                if let Some(r) = k.revive {
                    revivals.push((now + r, k.index));
                }
            }
        }
        revivals.retain(|&(at, index)| {
            if at > now {
                return true;
            }
            let p = new_pipe(sc.links[index], now, &mut next_link);
            add_both(&mut sides, now, p.id, &sc.links[index]);
            let old = std::mem::replace(&mut pipes[index], p);
            if old.alive {
                // A blackholed link lives on in the engines until they find it dead: its
                // writers still take what the engines give them, and lose it.
                pipes.push(old);
            }
            false
        });
        // Deliver what has arrived.
        while wire.peek().is_some_and(|Reverse(m)| m.0 <= now) {
            let Reverse((_, _, id, dir, bytes)) = wire.pop().expect("peeked");
            let open = pipes.iter().any(|p| p.id == id && p.alive && !p.blackholed);
            if !open || gone[1 - dir].contains(&id) {
                continue;
            }
            sides[1 - dir]
                .handle_message(now, id, Bytes::from(bytes))
                .expect("peer error in simulation");
        }
        // Timers.
        for s in sides.iter_mut() {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
        }
        // Events.
        // Per side: a budget release was reported; the side retries (see below).
        let mut released = [false; 2];
        drain_events(
            &mut sides,
            &mut released,
            &mut server_apps,
            &mut by_id,
            &mut gone,
            &mut timed_out,
        );
        // Applications.
        let elapsed_read = now.duration_since(last_read).as_secs_f64();
        last_read = now;
        for apps in [&mut client_apps, &mut server_apps] {
            for a in apps.iter_mut() {
                if let Some(rate) = sc.read_rate {
                    a.read_budget = (a.read_budget + rate as f64 * elapsed_read).min(rate as f64);
                }
            }
        }
        for a in client_apps.iter_mut() {
            a.pump(&mut sides[0], now, sc.read_rate);
        }
        for a in server_apps.iter_mut() {
            a.pump(&mut sides[1], now, sc.read_rate);
        }
        // Links pull messages while their serialiser is free.
        for p in pipes.iter_mut() {
            if !p.alive {
                continue;
            }
            for (dir, side) in sides.iter_mut().enumerate() {
                if p.parked[dir] || p.free_at[dir] > now {
                    continue;
                }
                // A blackholed link still sends at its rate; what it sends is lost on the way
                // (dropped on arrival above).
                while p.free_at[dir] <= now && side.poll_transmit(now, p.id, &mut buf) {
                    assert!(
                        !p.spec.relayed || buf.len() <= wanmux_core::route::MAX_SECTION,
                        "a relayed link's message longer than a section"
                    );
                    let len = buf.len() as u64 + 18;
                    let ser = Duration::from_nanos(len * 1_000_000_000 / p.spec.bandwidth);
                    p.free_at[dir] = now.max(p.free_at[dir]) + ser;
                    let jitter = if p.spec.jitter.is_zero() {
                        Duration::ZERO
                    } else {
                        rng.random_range(Duration::ZERO..p.spec.jitter)
                    };
                    let arrive =
                        (p.free_at[dir] + p.spec.latency + jitter).max(p.last_arrival[dir]);
                    p.last_arrival[dir] = arrive;
                    seq += 1;
                    wire.push(Reverse((arrive, seq, p.id, dir, buf.to_vec())));
                }
                if p.free_at[dir] <= now {
                    // It found nothing (at once, or after what it sent): it parks.
                    side.park_writer(now, p.id);
                    p.parked[dir] = true;
                }
            }
        }
        for (dir, side) in sides.iter_mut().enumerate() {
            wake_writers(side, dir, now, &mut pipes, &mut wake_scratch);
        }
        // The client's link pool carries out its engine's plan, as `client/src/pool.rs` does.
        if let Some((min, max)) = sc.elastic {
            let live = pipes.iter().filter(|p| p.alive && !p.blackholed).count();
            let view = PoolView {
                min,
                max,
                slots: live,
                dialing: false,
                extra: &extra,
            };
            match sides[0].plan_links(now, view) {
                LinkPlan::Hold => {}
                LinkPlan::Open => {
                    let spec = sc.links[opened_links % sc.links.len()];
                    opened_links += 1;
                    let p = new_pipe(spec, now, &mut next_link);
                    add_both(&mut sides, now, p.id, &spec);
                    extra.push(p.id);
                    pipes.push(p);
                }
                LinkPlan::Close(id) => {
                    extra.retain(|&l| l != id);
                    if let Some(p) = pipes.iter_mut().find(|p| p.id == id) {
                        p.alive = false;
                    }
                    sides[0].remove_link(id);
                    sides[1].remove_link(id);
                }
            }
            max_links = max_links.max(pipes.iter().filter(|p| p.alive).count());
        }
        // Memory bounds.
        max_session = max_session
            .max(sides[0].recv_buffered_bytes())
            .max(sides[1].recv_buffered_bytes());
        for s in &sides {
            let (r, w) = s.max_stream_buffered();
            max_stream = max_stream.max(r);
            max_send = max_send.max(w);
        }
        for b in &budgets {
            max_budget.0 = max_budget.0.max(b.used(Pool::Recv));
            max_budget.1 = max_budget.1.max(b.used(Pool::Send));
        }
        // Releases reported in this step: the waiting side retries, as the driver's budget
        // task does, and the writers with new work are woken.
        drain_events(
            &mut sides,
            &mut released,
            &mut server_apps,
            &mut by_id,
            &mut gone,
            &mut timed_out,
        );
        for (dir, s) in sides.iter_mut().enumerate() {
            if released[dir] && s.budget_blocked() {
                s.retry_budget(now);
            }
            wake_writers(s, dir, now, &mut pipes, &mut wake_scratch);
        }
        let done = opened == sc.streams.len()
            && client_apps
                .iter()
                .chain(server_apps.iter())
                .all(|a| a.fin && a.fin_sent)
            && sides[0].stream_count() == 0
            && sides[1].stream_count() == 0;
        if done || now >= t0 + sc.deadline {
            break;
        }
        // Advance to the next thing that can happen.
        let mut next = t0 + sc.deadline;
        if let Some(Reverse(m)) = wire.peek() {
            next = next.min(m.0);
        }
        for s in &sides {
            if let Some(t) = s.poll_timeout() {
                next = next.min(t);
            }
        }
        if opened < sc.streams.len() {
            next = next.min(t0 + sc.streams[opened].start);
        }
        if let Some(k) = kills.first() {
            next = next.min(t0 + k.at);
        }
        for &(at, _) in &revivals {
            next = next.min(at);
        }
        for p in pipes.iter().filter(|p| p.alive) {
            for dir in 0..2 {
                if !p.parked[dir] {
                    next = next.min(p.free_at[dir]);
                }
            }
        }
        if sc.read_rate.is_some() {
            next = next.min(now + Duration::from_millis(1));
        }
        now = next.max(now + Duration::from_micros(1));
    }
    let flow = |from: &App, to: &App| Flow {
        sent: from.sent,
        sent_hash: from.send_hash.clone().finalize(),
        received: to.received,
        received_hash: to.recv_hash.clone().finalize(),
        fin: to.fin,
    };
    Outcome {
        flows: client_apps
            .iter()
            .zip(server_apps.iter())
            .map(|(c, s)| (flow(c, s), flow(s, c)))
            .collect(),
        elapsed: now - t0,
        max_stream_buffered: max_stream,
        max_session_buffered: max_session,
        max_send_buffered: max_send,
        live_streams: (sides[0].stream_count(), sides[1].stream_count()),
        timed_out,
        max_budget_used: max_budget,
        budget_left: budgets
            .iter()
            .map(|b| b.used(Pool::Recv) + b.used(Pool::Send))
            .sum(),
        max_links,
    }
}
