//! `pace`: the congestion controller of QUIC links (see `docs/ARCHITECTURE.md`, "QUIC links").
//!
//! A rate-based controller in the spirit of BBR, built for lossy long-haul paths: it sizes the
//! congestion window from the measured delivery rate and the minimum RTT, and it does **not**
//! treat random loss as congestion. Loss-based controllers (cubic, reno) collapse at 1% random
//! loss; quinn's experimental BBR let its window grow to 16 x the path's BDP in the WAN lab and
//! lost 45% of its packets (scenario B). This one keeps the bottleneck queue short instead:
//!
//! - **Rounds.** A round ends when a packet sent after it began is acknowledged: one round trip.
//!   Each round gives one delivery-rate sample, bytes acknowledged over the round's duration. A
//!   round is busy if some batch of acks left at least half the window in flight (quinn's
//!   `app_limited` calls a sender busy whenever it sent anything, even a trickle).
//! - **Bandwidth** is the largest sample of the last [`BW_ROUNDS`] rounds (each sample averaged
//!   with the one before, in cruise, to smooth ack bunching). Rounds that are not busy only ever
//!   raise it.
//! - **Start-up** grows the window like slow start (by the bytes acknowledged, doubling per round
//!   trip, while the window is used), but never past [`STARTUP_CAP`] x the measured
//!   bandwidth-delay product, so the overshoot that ends it is bounded. It ends as soon as 8 RTT
//!   samples in a row saw a queue at the bottleneck (all 1/8 above the minimum, as in HyStart),
//!   when the bandwidth grew less than 25% in three busy rounds (a link idles after its
//!   handshake), or when a round loses heavily. Leaving mid-round on a queue, the bandwidth is
//!   the rate of the last quarter RTT of acks (packets that met the queue, so the path's rate),
//!   not the round's average, and the window drops to one BDP for the rest of the round, so the
//!   overshoot drains. While another link of the same path (a
//!   [`PathShare`]) reported a busy cruise round with a queue in the last 2 s, start-up grows by
//!   a quarter per round instead ([`GENTLE_GROWTH`]): that link already fills the path.
//! - **Room**: a busy cruise round that delivers 25% more than start-up found, with one RTT
//!   sample that saw no queue, may have found room (another flow left, or start-up ended early).
//!   Alone on its path, the link goes back to start-up. Beside another link of its path that
//!   fills it, the rise may be this link's share growing at the other's expense: it climbs, the
//!   window 15-25% above the estimate ([`CLIMB_GAINS`]) as long as the path delivers each
//!   round's window and no queue grows; on a full path that costs two or three rounds at
//!   1.15 x. Neither within [`SETTLE_RTTS`] of leaving start-up: what the rounds before deliver
//!   is what start-up found.
//! - **Short estimate**: a busy cruise round that delivered the estimate while its RTT samples
//!   averaged no queue (a right estimate keeps a twentieth of the RTT queued) climbs as well,
//!   alone or not. A climb alone that doubles the estimate with no queue hands over to start-up.
//!   After a climb that raised the estimate by less than a twentieth, only the probing round
//!   may start the next (a policer drops without queueing).
//! - **Cruise**: window = 1.05 x bandwidth x min RTT, which keeps about a twentieth of the path's
//!   RTT queued at the bottleneck. Every eighth round probes with 1.15 x, so a path that got
//!   faster is found.
//! - **Loss** is ignored up to [`LOSS_LIMIT`] of a round's bytes (random loss, retransmitted by
//!   QUIC). A heavier round is an overrun. Two overrun rounds in a row mean the path got slower:
//!   samples above what the second delivered are dropped. One alone is a burst, and the losses
//!   of start-up's overshoot, detected over the next [`SETTLE_RTTS`] round trips, do not count:
//!   in both cases the round's delivery is low only because quinn held the data behind the lost
//!   packets. Persistent congestion (everything lost for a while) starts over.
//!
//! quinn paces at 1.25 x window / smoothed RTT, so the window also sets the sending rate.
//!
//! [`Pace`] is a pure state machine: time is passed in, nothing here reads a clock or knows
//! quinn. `crate::quic::pace` plugs it into quinn as the controller of every QUIC link.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Window at start, in packets. Start-up grows it about 1.8 x per round trip, so each doubling
/// of the initial window saves about a round of start-up: against 32, 64 gave 10 s runs in the
/// WAN lab 83.5 against 82.0 Mbit/s in C and 179.0 against 177.3 in B (QUIC 4 links, medians of
/// 6 runs each, interleaved; bench/RESULTS.md, session 9). quinn paces it too, at 1.25 x
/// window / the handshake's RTT.
const INITIAL_PACKETS: u64 = 64;
/// Smallest window after start-up, in packets.
const MIN_PACKETS: u64 = 8;
/// Rounds the bandwidth filter remembers.
pub const BW_ROUNDS: usize = 10;
/// Start-up's window is at most this many bandwidth-delay products. The estimate comes from the
/// last round's delivery, which is what the window was a round earlier: doubling needs 4 x.
/// With 3 x the cap bound in every round of the test model, whose scenario B then delivered
/// 41 Mbit in its first second (57 with 4.5 x).
const STARTUP_CAP: f64 = 4.5;
/// Window gain in cruise: a twentieth of the RTT queued at the bottleneck (1.25 put 25 ms in
/// front of every game packet on a 100 ms path, 1.1 10 ms).
const CRUISE_GAIN: f64 = 1.05;
/// Window gain of a probing round (1.5 overflowed scenario C's 50 ms buffer every eighth round;
/// 1.25 put rr round trips at 123-126 ms on scenario B's 100 ms path, 1.15 at 115).
const PROBE_GAIN: f64 = 1.15;
/// Window gains of the rounds of a climb, the next for each round whose window the path
/// delivered. A round's delivery shows the window of the round before: the window counts as
/// delivered if the rate came at least halfway from the bandwidth estimate to the window's rate,
/// and no queue grew ([`CLIMB_QUEUE_FRACTION`]). A climb that meets a full path costs two or
/// three rounds of 1.15 x (one round short is forgiven). Growing further than 1.25 x per round
/// overshot the path by up to its own rate in the WAN lab, where no RTT sample had shown a queue
/// a round before.
const CLIMB_GAINS: [f64; 3] = [1.15, 1.15, 1.25];
/// A climb round whose RTT samples were all this fraction of the minimum RTT above it (clamped
/// to [`CLIMB_QUEUE_MIN`, `CLIMB_QUEUE_MAX`]) ends the climb: a queue grew, and what the link
/// gained came from another flow (in the WAN lab, from the session's other link on the path).
const CLIMB_QUEUE_FRACTION: u32 = 50;
const CLIMB_QUEUE_MIN: Duration = Duration::from_millis(1);
const CLIMB_QUEUE_MAX: Duration = Duration::from_millis(4);
/// Rounds per probing cycle (one probes).
const CYCLE: u32 = 8;
/// Fraction of a round's bytes lost above which the round counts as overrun, not random loss.
pub const LOSS_LIMIT: f64 = 0.10;
/// Start-up ends after this many rounds without 25% more bandwidth (like BBR; with 2, rounds
/// held back by a loss ended start-up at 4-20 Mbit/s in the WAN lab's C).
const FLAT_ROUNDS: u32 = 3;
/// Start-up also ends as soon as [`QUEUE_DELAY_SAMPLES`] consecutive RTT samples all exceed the
/// minimum RTT by this fraction of it (clamped to [`QUEUE_DELAY_MIN`, `QUEUE_DELAY_MAX`]): a
/// queue is building at the bottleneck, so the pipe is full. HyStart (RFC 9406) compares whole
/// rounds; with the window doubling inside a round, its first samples still see an empty queue,
/// and waiting for the next round let the window reach 3 x the BDP in the lab.
const QUEUE_DELAY_FRACTION: u32 = 8;
const QUEUE_DELAY_MIN: Duration = Duration::from_millis(4);
const QUEUE_DELAY_MAX: Duration = Duration::from_millis(16);
/// The delay test looks at blocks of this many consecutive RTT samples, and needs a window of
/// this many packets: below it the peer's delayed acks (up to 25 ms) inflate RTT samples more
/// than any queue.
const QUEUE_DELAY_SAMPLES: u32 = 8;
const QUEUE_DELAY_MIN_PACKETS: u64 = 128;
/// A cruise round leaves cruise (climb or start-up) only if some RTT sample of it was within
/// this fraction of the minimum RTT (see [`Pace::round_had_room`]).
const ROOM_FRACTION: u32 = 16;
/// After start-up ends, loss counts as overrun only after this many minimum RTTs: start-up's
/// overshoot was in flight when it ended, and its losses are detected up to two round trips
/// later (clamping the bandwidth to those rounds' delivery halved it in the WAN lab's C).
const SETTLE_RTTS: u32 = 3;
/// Leaving start-up on a queue, the bandwidth sample is the rate of the acks of the last
/// 1/`RECENT_SPAN` of the minimum RTT (see [`Pace::recent_rate`]), remembered in steps of
/// 1/`RECENT_STEP` of it.
const RECENT_SPAN: u32 = 4;
const RECENT_STEP: u32 = 16;
/// Shortest round: a sample spans several packets even on a loopback path.
const MIN_ROUND: Duration = Duration::from_millis(5);

/// What the links of one path (to one peer address) tell each other: which of them recently
/// filled it (a busy cruise round that saw a queue). A link that starts while another does would overrun the path
/// with start-up's doubling: the other link already fills it (in the WAN lab a second link that
/// started late lost 0.87 MB to the queue, and rr round trips beside it took 150 ms on a 100 ms
/// path). It grows by a quarter per round instead ([`GENTLE_GROWTH`]).
#[derive(Debug, Default)]
pub struct PathShare {
    /// Link id and the end of its last busy cruise round; entries older than [`SHARE_FRESH`]
    /// are dropped.
    busy: std::sync::Mutex<Vec<(u64, Instant)>>,
}

/// How long a busy cruise round that saw a queue counts as a sign that its link fills the path
/// (a probe, which queues, comes every eighth round).
const SHARE_FRESH: Duration = Duration::from_secs(2);
/// A cruise round reports to the [`PathShare`] only if one of its RTT samples was this fraction
/// of the minimum RTT above it (see [`Pace::round_saw_queue`]); cruise keeps a twentieth queued.
const FILL_FRACTION: u32 = 32;
/// Start-up's window growth per acknowledged byte on a path another link fills.
const GENTLE_GROWTH: f64 = 0.25;

impl PathShare {
    /// Link `id` ended a busy cruise round at `now`.
    fn report(&self, id: u64, now: Instant) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.retain(|&(other, at)| other != id && now.saturating_duration_since(at) < SHARE_FRESH);
        busy.push((id, now));
    }

    /// Some link other than `id` ended a busy cruise round within [`SHARE_FRESH`] of `now`.
    fn other_busy(&self, id: u64, now: Instant) -> bool {
        let busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.iter()
            .any(|&(other, at)| other != id && now.saturating_duration_since(at) < SHARE_FRESH)
    }
}

/// Where the controller is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Slow start, up to twice the measured bandwidth-delay product.
    Startup,
    /// Round `n` of the probing cycle; round 0 probes.
    Cruise(u32),
    /// Looking for room found in cruise, `n` rounds in (see [`CLIMB_GAINS`]).
    Climb(u32),
}

/// What a round measured and what the controller made of it, for traces.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct RoundEnd {
    /// The phase the round led to.
    pub phase: Phase,
    /// The round's delivery rate, bytes per second.
    pub sample: u64,
    /// The bandwidth estimate after the round, bytes per second.
    pub bandwidth: u64,
    /// Bytes acknowledged in the round.
    pub acked: u64,
    /// Bytes declared lost in the round.
    pub lost: u64,
    /// The round said nothing about the pipe (see [`Pace::on_in_flight`]).
    pub app_limited: bool,
    /// The smallest RTT sample of the round.
    pub min_rtt: Duration,
    /// The largest RTT sample of the round.
    pub max_rtt: Duration,
    /// The mean of the round's RTT samples.
    pub mean_rtt: Duration,
    /// The window during the round, bytes.
    pub window: u64,
    /// The most bytes in flight after a batch of acks in the round.
    pub in_flight: u64,
}

/// The controller's state. See the module docs.
#[derive(Clone, Debug)]
pub struct Pace {
    /// Names the controller in traces (0 outside quinn).
    id: u64,
    mtu: u64,
    phase: Phase,
    window: u64,
    min_rtt: Option<Duration>,
    /// When the current round began.
    round_start: Instant,
    /// Bytes acknowledged and declared lost in the current round.
    acked: u64,
    lost: u64,
    /// No ack of the current round came while the sender had more to send than it could.
    app_limited: bool,
    /// After some ack of the current round, at least half the window was still in flight. A
    /// round without (a link the engine gave little data) says nothing about the pipe, whatever
    /// quinn's `app_limited` says: quinn counts a sender as busy whenever it sent something.
    round_full: bool,
    /// The most bytes in flight after a batch of acks this round (for traces).
    round_in_flight: u64,
    /// After the last batch of acks, at least half the window was in flight: start-up grows the
    /// window only then (a window the sender does not use says nothing about the path, and the
    /// engine may hand the link a burst later; RFC 7661).
    full_now: bool,
    /// Start-up: the smallest RTT sample of the current block of [`QUEUE_DELAY_SAMPLES`]
    /// consecutive samples, and how many the block has.
    block_min_rtt: Duration,
    block_samples: u32,
    /// The smallest and largest RTT samples of the current round.
    round_min_rtt: Duration,
    round_max_rtt: Duration,
    /// The sum and number of the round's RTT samples: their mean.
    round_rtt_sum: Duration,
    round_rtt_samples: u32,
    /// The last [`BW_ROUNDS`] filtered samples, bytes per second; `next` is the oldest.
    samples: [u64; BW_ROUNDS],
    next: usize,
    prev_sample: u64,
    /// The bandwidth estimate: the largest of `samples`.
    bw: u64,
    /// Start-up: the bandwidth at the last 25% growth, and rounds since. When start-up ends,
    /// at least the bandwidth it found (it may end mid-growth, on a queue or a loss).
    full_bw: u64,
    flat_rounds: u32,
    /// The previous round was overrun.
    overrun_before: bool,
    /// Climb: the delivery rates that mean the windows of the previous and the current round
    /// found room (halfway from the estimate to the window's rate), bytes per second.
    climb_targets: [u64; 2],
    /// Climb: the last round fell short of its target.
    climb_missed: bool,
    /// The estimate when the last climb began.
    climb_from: u64,
    /// The last climb raised the estimate by less than a twentieth: a climb on an empty queue
    /// waits for the probing round (a path that drops instead of queueing, as a policer does,
    /// never shows a queue).
    climb_futile: bool,
    /// The other links of the path, if known; start-up grows gently while one of them fills it.
    share: Option<Arc<PathShare>>,
    gentle: bool,
    /// When start-up last ended: the losses of its overshoot come in during the next
    /// [`SETTLE_RTTS`] round trips and say nothing about the path's rate.
    left_startup: Option<Instant>,
    /// Start-up: (when, bytes acknowledged so far) about every [`RECENT_STEP`] of the minimum
    /// RTT over the last [`RECENT_SPAN`] of it, oldest first, and the bytes acknowledged in
    /// start-up so far (counted only there: the ack path of cruise does nothing for it).
    /// Leaving start-up on a queue, the rate of these acks is the path's: see
    /// [`Pace::recent_rate`].
    recent: VecDeque<(Instant, u64)>,
    acked_total: u64,
}

impl Pace {
    /// A controller at start-up. `mtu` is the current datagram size.
    pub fn new(now: Instant, mtu: u16) -> Self {
        let mtu = u64::from(mtu);
        Self {
            id: 0,
            mtu,
            phase: Phase::Startup,
            window: INITIAL_PACKETS * mtu,
            min_rtt: None,
            round_start: now,
            acked: 0,
            lost: 0,
            app_limited: true,
            round_full: false,
            round_in_flight: 0,
            full_now: false,
            block_min_rtt: Duration::MAX,
            block_samples: 0,
            round_min_rtt: Duration::MAX,
            round_max_rtt: Duration::ZERO,
            round_rtt_sum: Duration::ZERO,
            round_rtt_samples: 0,
            samples: [0; BW_ROUNDS],
            next: 0,
            prev_sample: 0,
            bw: 0,
            full_bw: 0,
            flat_rounds: 0,
            overrun_before: false,
            climb_targets: [0; 2],
            climb_missed: false,
            climb_from: 0,
            climb_futile: false,
            share: None,
            gentle: false,
            left_startup: None,
            recent: VecDeque::new(),
            acked_total: 0,
        }
    }

    /// A controller at start-up for link `id` of a path whose links share `share`. `id` names
    /// the link to the other links of the path and in traces.
    pub fn on_path(now: Instant, mtu: u16, id: u64, share: Option<Arc<PathShare>>) -> Self {
        Self {
            id,
            share,
            ..Self::new(now, mtu)
        }
    }

    /// The link this controller paces (0 if not given: see [`Pace::on_path`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The window at start for the current datagram size, bytes.
    pub fn initial_window(&self) -> u64 {
        INITIAL_PACKETS * self.mtu
    }

    /// The congestion window, bytes.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// The bandwidth estimate, bytes per second.
    pub fn bandwidth(&self) -> u64 {
        self.bw
    }

    /// Where the controller is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// `bytes` of a packet sent at `sent` were acknowledged at `now`. `min_rtt` is the path's
    /// minimum RTT so far; `app_limited` says the sender had nothing more to send. Returns what
    /// the round measured if this ack ended one.
    pub fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        min_rtt: Duration,
    ) -> Option<RoundEnd> {
        self.acked += bytes;
        self.min_rtt = Some(min_rtt);
        let rtt = now.saturating_duration_since(sent);
        self.round_min_rtt = self.round_min_rtt.min(rtt);
        self.round_max_rtt = self.round_max_rtt.max(rtt);
        self.round_rtt_sum += rtt;
        self.round_rtt_samples += 1;
        if self.phase == Phase::Startup {
            self.acked_total += bytes;
            self.note_recent(now, min_rtt);
            self.block_min_rtt = self.block_min_rtt.min(rtt);
            self.block_samples += 1;
            if self.block_samples == QUEUE_DELAY_SAMPLES {
                if self.queue_seen(min_rtt) {
                    self.leave_startup(now);
                }
                self.block_min_rtt = Duration::MAX;
                self.block_samples = 0;
            }
        }
        if !app_limited {
            self.app_limited = false;
        }
        if self.phase == Phase::Startup && self.full_now {
            // The first round may double before any busy round measured the path.
            let cap = (STARTUP_CAP * self.bdp() as f64) as u64;
            let cap = cap.max(2 * INITIAL_PACKETS * self.mtu);
            let grow = if self.gentle {
                (GENTLE_GROWTH * bytes as f64) as u64
            } else {
                bytes
            };
            self.window = (self.window + grow).min(cap).max(self.window);
        }
        if sent >= self.round_start && now.saturating_duration_since(self.round_start) >= MIN_ROUND
        {
            return Some(self.end_round(now));
        }
        None
    }

    /// After a batch of acks, `in_flight` bytes are still unacknowledged.
    pub fn on_in_flight(&mut self, in_flight: u64) {
        self.full_now = 2 * in_flight >= self.window;
        self.round_full |= self.full_now;
        self.round_in_flight = self.round_in_flight.max(in_flight);
    }

    /// `bytes` were declared lost; `persistent` is QUIC's persistent congestion (RFC 9002).
    pub fn on_loss(&mut self, now: Instant, bytes: u64, persistent: bool) {
        self.lost += bytes;
        if persistent {
            *self = Self {
                id: self.id,
                share: self.share.take(),
                ..Self::new(now, self.mtu as u16)
            };
        }
    }

    /// The datagram size changed.
    pub fn on_mtu(&mut self, mtu: u16) {
        self.mtu = u64::from(mtu);
    }

    fn bdp(&self) -> u64 {
        self.min_rtt
            .map_or(0, |rtt| (self.bw as f64 * rtt.as_secs_f64()) as u64)
    }

    /// The last [`QUEUE_DELAY_SAMPLES`] RTT samples all saw a queue at the bottleneck (see
    /// [`QUEUE_DELAY_FRACTION`]), with a window large enough for that to mean something.
    fn queue_seen(&self, min_rtt: Duration) -> bool {
        let allowance = (min_rtt / QUEUE_DELAY_FRACTION).clamp(QUEUE_DELAY_MIN, QUEUE_DELAY_MAX);
        self.window >= QUEUE_DELAY_MIN_PACKETS * self.mtu
            && self.block_min_rtt > min_rtt + allowance
    }

    /// Some RTT sample of the round saw (almost) no queue at the bottleneck: at most
    /// [`ROOM_FRACTION`] of the minimum RTT above it, clamped to 2-8 ms (half the start-up
    /// allowance's bounds).
    fn round_had_room(&self) -> bool {
        self.min_rtt.is_some_and(|min| {
            let allowance = (min / ROOM_FRACTION).clamp(QUEUE_DELAY_MIN / 2, QUEUE_DELAY_MAX / 2);
            self.round_min_rtt <= min + allowance
        })
    }

    /// Some RTT sample of the round saw a queue at the bottleneck: [`FILL_FRACTION`] of the
    /// minimum RTT above it (clamped to 2-8 ms). A link in cruise whose rounds see none does not
    /// fill its path (its start-up ended early), and must not hold back another's start-up.
    fn round_saw_queue(&self) -> bool {
        self.min_rtt.is_some_and(|min| {
            let allowance = (min / FILL_FRACTION).clamp(QUEUE_DELAY_MIN / 2, QUEUE_DELAY_MAX / 2);
            self.round_max_rtt > min + allowance
        })
    }

    /// The round's RTT samples saw, on average, no queue at the bottleneck (within
    /// [`CLIMB_QUEUE_FRACTION`] of the minimum RTT): a cruise window of [`CRUISE_GAIN`] x the
    /// estimate keeps a twentieth of the RTT queued, so the estimate is short of the path. The
    /// mean, not the largest sample: a delayed ack inflates single samples by up to 25 ms.
    fn round_saw_no_queue(&self) -> bool {
        self.min_rtt.is_some_and(|min| {
            let allowance = (min / CLIMB_QUEUE_FRACTION).clamp(CLIMB_QUEUE_MIN, CLIMB_QUEUE_MAX);
            self.round_rtt_samples > 0 && self.round_mean_rtt() <= min + allowance
        })
    }

    /// The mean of the round's RTT samples (zero before any).
    fn round_mean_rtt(&self) -> Duration {
        self.round_rtt_sum / self.round_rtt_samples.max(1)
    }

    /// Every RTT sample of the round saw a queue at the bottleneck (see [`CLIMB_QUEUE_FRACTION`]).
    fn climb_queued(&self) -> bool {
        self.min_rtt.is_some_and(|min| {
            let allowance = (min / CLIMB_QUEUE_FRACTION).clamp(CLIMB_QUEUE_MIN, CLIMB_QUEUE_MAX);
            self.round_min_rtt > min + allowance
        })
    }

    /// Another link of this path reported a busy cruise round with a queue lately: it fills the
    /// path (see [`PathShare`]).
    fn path_busy(&self, now: Instant) -> bool {
        self.share
            .as_ref()
            .is_some_and(|share| share.other_busy(self.id, now))
    }

    /// A climb begins from the current estimate.
    fn start_climb(&mut self) -> Phase {
        self.climb_missed = false;
        self.climb_from = self.bw;
        Phase::Climb(0)
    }

    /// Back to start-up, which finds the path's rate from the current estimate.
    fn restart_start_up(&mut self) -> Phase {
        // The acks noted in the last start-up are history (however it ended).
        self.recent.clear();
        self.full_bw = self.bw;
        self.flat_rounds = 0;
        Phase::Startup
    }

    /// Start-up: remembers the bytes acknowledged so far about every [`RECENT_STEP`] of the
    /// minimum RTT, over the last [`RECENT_SPAN`] of it.
    fn note_recent(&mut self, now: Instant, min_rtt: Duration) {
        let step = min_rtt / RECENT_STEP;
        if self
            .recent
            .back()
            .is_none_or(|&(at, _)| now.saturating_duration_since(at) >= step)
        {
            self.recent.push_back((now, self.acked_total));
        }
        let span = min_rtt / RECENT_SPAN;
        while self.recent.len() > 2 && now.saturating_duration_since(self.recent[1].0) >= span {
            self.recent.pop_front();
        }
    }

    /// The delivery rate of the acks of the last [`RECENT_SPAN`] of the minimum RTT, bytes per
    /// second, if they span at least half that. When start-up ends on a queue, these acks are
    /// of packets that met the queue: the path delivered them at its rate (this link's share of
    /// it). The round's rate averages a round whose window doubled as it went: in a traced WAN lab
    /// run of scenario C, the two bulk links left start-up at 42.9 + 42.1 Mbit/s on a path that
    /// delivered 98, and ran below it until a climb five or six rounds later.
    fn recent_rate(&self, now: Instant, min_rtt: Duration) -> Option<u64> {
        let &(at, acked) = self.recent.front()?;
        let span = now.saturating_duration_since(at);
        (span >= min_rtt / RECENT_SPAN / 2)
            .then(|| ((self.acked_total - acked) as f64 / span.as_secs_f64()) as u64)
    }

    /// Start-up ends in the middle of a round: the round's delivery so far counts as a sample,
    /// since it is the best measure of the pipe the window just filled.
    fn leave_startup(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.round_start);
        if let Some(min) = self.min_rtt {
            let recent = self.recent_rate(now, min).unwrap_or(0);
            let round = if elapsed >= min / 2 {
                (self.acked as f64 / elapsed.as_secs_f64()) as u64
            } else {
                0
            };
            let sample = round.max(recent);
            if sample > 0 {
                self.samples[self.next] = sample;
                self.next = (self.next + 1) % BW_ROUNDS;
                self.bw = self.bw.max(sample);
            }
        }
        self.phase = Phase::Cruise(1);
        self.left_startup = Some(now);
        // What start-up found: a cruise round leaves cruise only 25% above it.
        self.full_bw = self.full_bw.max(self.bw);
        // Drain: the overshoot is still in flight; a window of one BDP lets the queue empty.
        self.window = self.bdp().max(MIN_PACKETS * self.mtu);
    }

    fn end_round(&mut self, now: Instant) -> RoundEnd {
        if !self.round_full {
            self.app_limited = true;
        }
        let elapsed = now
            .saturating_duration_since(self.round_start)
            .as_secs_f64();
        let sample = (self.acked as f64 / elapsed) as u64;
        let filtered = match self.phase {
            Phase::Startup | Phase::Climb(_) => sample,
            Phase::Cruise(_) => (sample + self.prev_sample) / 2,
        };
        self.prev_sample = sample;
        if !self.app_limited || filtered > self.bw {
            self.samples[self.next] = filtered;
            self.next = (self.next + 1) % BW_ROUNDS;
        }
        let total = self.acked + self.lost;
        let overrun = self.lost > 10 * self.mtu && self.lost as f64 > LOSS_LIMIT * total as f64;
        // One overrun round is what leaving start-up costs (its overshoot meets a full queue) or
        // a burst; the delivery sample of such a round is low because the sender was blocked
        // behind the lost data, not because the path slowed. Two in a row mean the path is
        // slower than the estimate.
        let settled = self
            .left_startup
            .zip(self.min_rtt)
            .is_none_or(|(left, rtt)| now.saturating_duration_since(left) >= SETTLE_RTTS * rtt);
        let slower = overrun && self.overrun_before && settled;
        if !settled {
            // The rounds that complete start-up's last ones are what it found.
            self.full_bw = self.full_bw.max(self.bw);
        }
        self.overrun_before = overrun;
        if slower {
            for s in &mut self.samples {
                *s = (*s).min(sample.max(1));
            }
        }
        self.bw = self.samples.iter().copied().max().unwrap_or(0);
        self.phase = match self.phase {
            // Rounds in which the sender ran out of data say nothing about the pipe: a link
            // idle after its handshake must not leave start-up.
            Phase::Startup if self.app_limited && !overrun => Phase::Startup,
            Phase::Startup => {
                if self.bw as f64 >= 1.25 * self.full_bw as f64 {
                    self.full_bw = self.bw;
                    self.flat_rounds = 0;
                } else {
                    self.flat_rounds += 1;
                }
                if self.flat_rounds >= FLAT_ROUNDS || overrun {
                    // The first cruise round after start-up is not a probe.
                    self.left_startup = Some(now);
                    self.full_bw = self.full_bw.max(self.bw);
                    Phase::Cruise(1)
                } else {
                    Phase::Startup
                }
            }
            // A busy round that delivered 25% more than start-up found, with no queue at the
            // bottleneck: the path has room (another flow left, or start-up ended early). Look
            // for it at start-up speed. With a queue, the path is full and the rise is this
            // link's share growing at another's expense (the links of a session share the
            // path): start-up's doubling would overrun it.
            Phase::Cruise(_)
                if settled
                    && !self.app_limited
                    && filtered as f64 > 1.25 * self.full_bw as f64
                    && self.round_had_room() =>
            {
                // The climb starts from what this round delivered, not from its average with
                // the round before.
                if sample > self.bw {
                    self.samples[(self.next + BW_ROUNDS - 1) % BW_ROUNDS] = sample;
                    self.bw = sample;
                }
                // Alone on the path, the rise is room: start-up finds it in a few rounds. With
                // another link of the session filling the path, it may be this link's share
                // growing at the other's expense, and doubling would overrun the path.
                if self.path_busy(now) {
                    self.start_climb()
                } else {
                    self.restart_start_up()
                }
            }
            // A busy cruise round that delivered the estimate and whose samples saw no queue:
            // the estimate is short of the path (start-up ended on a round that a loss held
            // back, or another flow left). Climb until a queue shows. (In the WAN lab's C,
            // cruise rounds at 64 of 96 Mbit/s grew the estimate by about 1% per round, through
            // probes alone.)
            Phase::Cruise(n)
                if settled
                    && !self.app_limited
                    && !overrun
                    && (n == 0 || !self.climb_futile)
                    && sample >= self.bw
                    && self.round_saw_no_queue() =>
            {
                self.start_climb()
            }
            Phase::Cruise(n) => Phase::Cruise((n + 1) % CYCLE),
            // The first climb round delivers what cruise's window sent: nothing to judge yet.
            Phase::Climb(n)
                if !self.app_limited
                    && !overrun
                    && !self.climb_queued()
                    && (n == 0 || sample >= self.climb_targets[0] || !self.climb_missed) =>
            {
                // One round short of its target is forgiven (a loss holds the data behind it);
                // two in a row end the climb.
                self.climb_missed = n > 0 && sample < self.climb_targets[0];
                if !self.climb_missed && self.bw >= 2 * self.climb_from && !self.path_busy(now) {
                    // The climb doubled the estimate and no queue showed: the link is far below
                    // its path's rate, and start-up finds that in a few rounds where climbing
                    // takes many (from 5% of the test model's B path it reached 16% in 1.5 s).
                    self.restart_start_up()
                } else {
                    Phase::Climb(n + 1)
                }
            }
            Phase::Climb(_) => {
                // Like the end of start-up: the last round's overshoot is still in flight.
                self.left_startup = Some(now);
                self.full_bw = self.full_bw.max(self.bw);
                self.climb_futile = (self.bw as f64) < 1.05 * self.climb_from as f64;
                Phase::Cruise(1)
            }
        };
        let end = RoundEnd {
            phase: self.phase,
            sample,
            bandwidth: self.bw,
            acked: self.acked,
            lost: self.lost,
            app_limited: self.app_limited,
            min_rtt: self.round_min_rtt,
            max_rtt: self.round_max_rtt,
            mean_rtt: self.round_mean_rtt(),
            window: self.window,
            in_flight: self.round_in_flight,
        };
        if let Some(share) = &self.share {
            match self.phase {
                Phase::Cruise(_) if !self.app_limited && self.round_saw_queue() => {
                    share.report(self.id, now)
                }
                Phase::Startup => self.gentle = share.other_busy(self.id, now),
                _ => {}
            }
        }
        self.acked = 0;
        self.lost = 0;
        self.app_limited = true;
        self.round_full = false;
        self.round_in_flight = 0;
        self.round_min_rtt = Duration::MAX;
        self.round_max_rtt = Duration::ZERO;
        self.round_rtt_sum = Duration::ZERO;
        self.round_rtt_samples = 0;
        self.round_start = now;
        let floor = MIN_PACKETS * self.mtu;
        self.window = match self.phase {
            Phase::Startup => self.window,
            Phase::Cruise(0) => ((PROBE_GAIN * self.bdp() as f64) as u64).max(floor),
            Phase::Cruise(_) => ((CRUISE_GAIN * self.bdp() as f64) as u64).max(floor),
            Phase::Climb(n) => {
                // After a round short of its target, the smallest step again.
                let step = if self.climb_missed { 0 } else { n as usize };
                let gain = CLIMB_GAINS[step.min(CLIMB_GAINS.len() - 1)];
                let target = (1.0 + (gain - 1.0) / 2.0) * self.bw as f64;
                self.climb_targets = [self.climb_targets[1], target as u64];
                ((gain * self.bdp() as f64) as u64).max(floor)
            }
        };
        end
    }
}

#[cfg(test)]
mod tests;
