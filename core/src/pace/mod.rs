//! `pace`: the congestion controller of QUIC links (see `docs/ARCHITECTURE.md`, "QUIC links").
//!
//! A rate-based controller in the spirit of BBR, built for lossy long-haul paths: it sizes the
//! congestion window from the measured delivery rate and the minimum RTT, and it does **not**
//! treat random loss as congestion. Loss-based controllers (cubic, reno) collapse at 1% random
//! loss, and quinn's experimental BBR overfills the bottleneck queue on a lossy path
//! (bench/RESULTS.md, lessons). This one keeps the bottleneck queue short instead:
//!
//! - **Rounds.** A round ends when a packet sent after it began is acknowledged: one round trip.
//!   Each round gives one delivery-rate sample, bytes acknowledged over the round's duration. A
//!   round is busy if some batch of acks left at least half the window in flight (quinn's
//!   `app_limited` calls a sender busy whenever it sent anything, even a trickle).
//! - **Bandwidth** is the largest sample of the last [`BW_ROUNDS`] rounds (each sample averaged
//!   with the one before, in cruise, to smooth ack bunching). Rounds that are not busy only ever
//!   raise it.
//! - **Start-up** grows the window like slow start (by the bytes acknowledged, doubling per round
//!   trip, while the window is used), but never past 4.5 x the measured bandwidth-delay product,
//!   so the overshoot that ends it is bounded. It ends as soon as 8 RTT samples in a row saw a
//!   queue at the bottleneck (all 1/8 above the minimum, as in HyStart), when the bandwidth grew
//!   less than 25% in three busy rounds (a link idles after its handshake), or when a round
//!   loses heavily. Leaving mid-round on a queue, the bandwidth is
//!   the rate of the last quarter RTT of acks (packets that met the queue, so the path's rate),
//!   not the round's average, and the window drops to one BDP for the rest of the round, so the
//!   overshoot drains. While another link of the same path (a [`PathShare`]) reported a busy
//!   cruise round with a queue in the last 2 s, start-up grows by a quarter per round instead:
//!   that link already fills the path. Links of a path that start together (a session's links,
//!   dialled at once) fill it together: the delay test needs the path's window, not each
//!   link's, to reach its minimum (a link's window times the path's links); four links that
//!   each waited for their own 128 packets overran a 50 ms queue on a 20 ms path by 200
//!   packets in their first 100 ms. Below its own minimum a link confirms the queue for a
//!   minimum RTT before it leaves, as on a path whose delay varies: that early, the path's
//!   variation is not measured yet, and a jittered path would end start-up at a fifth of its
//!   rate.
//! - **Room**: a busy cruise round that delivers 25% more than start-up found, with one RTT
//!   sample that saw no queue, may have found room (another flow left, or start-up ended early).
//!   Alone on its path, the link goes back to start-up. Beside another link of its path that
//!   fills it, the rise may be this link's share growing at the other's expense: it climbs, the
//!   window 15-25% above the estimate as long as the path delivers each round's window and no
//!   queue grows; on a full path that costs two or three rounds at 1.15 x. Neither within three
//!   minimum RTTs of leaving start-up: what the rounds before deliver is what start-up found.
//! - **Short estimate**: a busy cruise round that delivered the estimate while its RTT samples
//!   averaged no queue (a right estimate keeps a twentieth of the RTT queued) climbs as well,
//!   alone or not. A climb alone that doubles the estimate with no queue hands over to start-up.
//!   After a climb that raised the estimate by less than a twentieth, only the probing round
//!   may start the next (a policer drops without queueing).
//! - **Cruise**: window = 1.05 x bandwidth x min RTT, which keeps about a twentieth of the path's
//!   RTT queued at the bottleneck. Every eighth round probes with 1.15 x, so a path that got
//!   faster is found. The gains apply to at least the floor's window (8 packets), so a link
//!   below the floor's rate still probes past it.
//! - **A window the acks outlast.** On a short path the peer's delayed acks (quinn acks every
//!   second packet, or after 25 ms), reordering and jitter make a full window's acks take longer
//!   than the window covers; each round then delivers less than the estimate, and counted as a
//!   measure of the path such rounds spiral down to the floor with no loss and no queue. A busy
//!   cruise round with a full window and an RTT sample that saw no queue, whose bytes (lost ones
//!   included) came back below 90% of the estimate while its mean RTT exceeded its smallest
//!   sample by enough to explain that, says only that the window was short: it may raise the
//!   estimate, never lower it, and the window widens by that excess (a queue raises every
//!   sample, so it never widens the window that builds it), by at most a quarter of the minimum
//!   RTT and 8 ms. Busy rounds that see only a queue narrow it again.
//! - **Fair shares.** The links of a path tell each other their estimates (a [`PathShare`]). A
//!   busy link below the mean of the busy links' estimates does not let a round lower its
//!   estimate (its low delivery may be the others' queue), and a link more than 10% above it
//!   does not climb: without this, the larger link's probes and climbs took the smaller one's
//!   share round by round down to the floor.
//! - **Delay variation** is not a queue. The RTT of a path varies by itself (queues elsewhere,
//!   radio last miles, reordering); every queue test above compares samples with the minimum RTT
//!   plus that variation, measured as the most the RTT fell within a round (a queue this link
//!   builds only makes it rise), and the window covers the minimum RTT plus half of it. Beside
//!   other links of its path, a round's fall counts only once no other link drained its share
//!   of the queue in a round that overlapped it (the round after a probe, a round that ran out
//!   of data, for all of it or long enough to hold a quarter of its window less in flight, a
//!   round that lost heavily, start-up's overshoot): taken for variation, the others' drains
//!   made four links on a path of none cover 25-50 ms of it and hold its queue at the tail. On a
//!   path that varies by 2 ms or more, start-up's queue test must hold for a minimum RTT before
//!   start-up ends (it grows by a quarter per round meanwhile), as in HyStart++'s conservative
//!   slow start: a peak of the variation does not end it. See `rtt.rs`.
//! - **Loss** is ignored up to [`LOSS_LIMIT`] of a round's bytes (random loss, retransmitted by
//!   QUIC). A heavier round is an overrun. Two overrun rounds in a row mean the path got slower:
//!   samples above what the second delivered are dropped. One alone is a burst, and the losses
//!   of start-up's overshoot, detected over the next three round trips, do not count: in both
//!   cases the round's delivery is low only because quinn held the data behind the lost
//!   packets. Persistent congestion (everything lost for a while) starts over.
//!
//! quinn paces at 1.25 x window / smoothed RTT, so the window also sets the sending rate.
//!
//! [`Pace`] is a pure state machine: time is passed in, nothing here reads a clock or knows
//! quinn. Its inputs are [`Pace::on_ack`] for each acknowledged packet (it returns the round it
//! ended, if any), [`Pace::on_in_flight`] after each batch of acks, [`Pace::on_loss`] and
//! [`Pace::on_mtu`]; its output is [`Pace::window`]. `crate::quic::pace` plugs it into quinn as
//! the controller of every QUIC link.
//!
//! Files: the state and its inputs here, the end of a round per phase in `round.rs`, the
//! bandwidth estimators in `bandwidth.rs`, the RTT signals of a queue in `rtt.rs` and what the
//! links of a path share in `share.rs`.

mod bandwidth;
mod round;
mod rtt;
mod share;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bandwidth::{BwFilter, RecentAcks};
use rtt::{QueueBlock, RoundRtt, Variation};
pub use share::PathShare;

/// Window at start, in packets: each doubling saves about a round of start-up; 64 beat 32 in B
/// and C, 128 gained nothing (bench/RESULTS.md, lessons). quinn paces it by the handshake's RTT.
const INITIAL_PACKETS: u64 = 64;
/// Rounds the bandwidth filter remembers.
pub const BW_ROUNDS: usize = 10;
/// Fraction of a round's bytes lost above which the round counts as overrun, not random loss.
pub const LOSS_LIMIT: f64 = 0.10;
/// QUIC's loss detection as the links configure it (`crate::quic`): a packet is declared lost
/// once a packet sent this many later was acknowledged (never, here: RFC 9002's 3 turns every
/// packet that a path's reordering delays behind three others into a loss and a resend; at
/// 300 Mbit/s that is any packet 0.15 ms late)...
pub const REORDER_PACKETS: u32 = u32::MAX;
/// ... or once a packet sent after it was acknowledged and it is this many RTTs old (the larger
/// of the smoothed and the latest RTT): a quarter of an RTT of reordering, as Linux's RACK
/// allows once it has seen reordering (RFC 8985), where RFC 9002 allows an eighth.
pub const REORDER_TIME: f32 = 1.25;
/// Shortest round: a sample spans several packets even on a loopback path.
const MIN_ROUND: Duration = Duration::from_millis(5);
/// The least time of the rate a window holds. A host wakes its senders about a millisecond
/// apart at best (tokio's and quinn's timers), so on a path of tens of microseconds (loopback,
/// a LAN) a window of one bandwidth-delay product, a few packets, leaves the link clocked by
/// each ack in sends of 2-3 datagrams, a wake-up and a system call each: 6.5 CPU s/GB and
/// 1.75 Gbit/s on the loopback, against 3.3 and 3.8 with this floor (bench/RESULTS.md, "QUIC
/// links on the loopback"). Linux's bbr keeps about a millisecond of its rate in its window
/// for the same reason (its TSO "quantization budget"). The price on such a path: about 1 ms of
/// bulk data queued ahead of interactive frames at the receiver while a transfer fills the
/// link (2.1 ms p50 round trips beside a bulk upload on the loopback, against 0.3 at half the
/// rate). Paths of 1 ms RTT or more are not affected.
pub const MIN_WINDOW_TIME: Duration = Duration::from_millis(1);

/// Where the controller is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Slow start, the window at most 4.5 x the measured bandwidth-delay product.
    Startup,
    /// Round `n` of the probing cycle; round 0 probes.
    Cruise(u32),
    /// Looking for room found in cruise, `n` rounds in.
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
    /// The fewest bytes in flight after a batch of acks in the round (0 if it had none): a
    /// sender that ran short of data mid-round shows here, not in [`RoundEnd::in_flight`].
    pub in_flight_min: u64,
    /// How much the path's delay varies by itself, as measured after the round (see `rtt.rs`).
    pub variation: Duration,
    /// The delay the window covers beyond the minimum RTT and half the variation (see
    /// `Pace::window_short`).
    pub extra: Duration,
}

/// The controller's state. See the module docs.
#[derive(Clone, Debug)]
pub struct Pace {
    /// Names the link to the other links of its path and in traces (0 if not given).
    id: u64,
    mtu: u64,
    phase: Phase,
    window: u64,
    min_rtt: Option<Duration>,
    /// What the current round has seen so far.
    round: Round,
    /// After the last batch of acks, at least half the window was in flight: start-up grows the
    /// window only then (a window the sender does not use says nothing about the path, and the
    /// engine may hand the link a burst later; RFC 7661).
    full_now: bool,
    /// Start-up: the current block of consecutive RTT samples.
    block: QueueBlock,
    /// The filtered delivery samples of the last rounds.
    filter: BwFilter,
    /// The bandwidth estimate: the largest of `filter`'s samples.
    bw: u64,
    /// Start-up: the bandwidth at the last 25% growth, and rounds since. When start-up ends,
    /// at least the bandwidth it found (it may end mid-growth, on a queue or a loss).
    full_bw: u64,
    flat_rounds: u32,
    /// The previous round was overrun.
    overrun_before: bool,
    climb: ClimbState,
    /// The other links of the path, if known; start-up grows gently while one of them fills it.
    share: Option<Arc<PathShare>>,
    gentle: bool,
    /// When start-up (or a climb) last ended: the losses of its overshoot come in during the
    /// next few round trips and say nothing about the path's rate.
    left_startup: Option<Instant>,
    /// Start-up: the bytes acknowledged lately; leaving start-up on a queue, their rate is the
    /// path's (see [`RecentAcks::rate`]).
    recent: RecentAcks,
    /// How much the path's RTT varies by itself (see `rtt.rs`).
    variation: Variation,
    /// What the acks of a full window take beyond the minimum RTT plus half the variation, for
    /// reasons that are not a queue at the bottleneck (the peer's delayed acks, reordering):
    /// the window covers it too (see `Pace::window_short`).
    extra: Duration,
    /// Start-up on a path whose delay varies: since when the blocks of RTT samples have been
    /// above the floor (it leaves if they stay there for a minimum RTT).
    queue_since: Option<Instant>,
    /// Other links share the path (as of the last round's end): what the RTT fell by in a round
    /// counts as the path's variation only once the round is known to have overlapped no other
    /// link's drain (see `Pace::learn_variation`).
    siblings: bool,
    /// The last round's fall, waiting for that check, and the round's span.
    pending_fall: Option<(Duration, Instant, Instant)>,
}

/// What the current round has seen so far.
#[derive(Clone, Debug)]
struct Round {
    /// When the round began.
    start: Instant,
    /// Bytes acknowledged and declared lost in the round.
    acked: u64,
    lost: u64,
    /// No ack of the round came while the sender had more to send than it could.
    app_limited: bool,
    /// After some ack of the round, at least half the window was still in flight. A round
    /// without (a link the engine gave little data) says nothing about the pipe, whatever
    /// quinn's `app_limited` says: quinn counts a sender as busy whenever it sent something.
    full: bool,
    /// The most and the fewest bytes in flight after a batch of acks this round (for traces).
    in_flight: u64,
    in_flight_min: u64,
    /// The round's RTT samples.
    rtt: RoundRtt,
}

impl Round {
    fn new(start: Instant) -> Self {
        Self {
            start,
            acked: 0,
            lost: 0,
            app_limited: true,
            full: false,
            in_flight: 0,
            in_flight_min: u64::MAX,
            rtt: RoundRtt::EMPTY,
        }
    }
}

/// The state of a climb (see [`Phase::Climb`]).
#[derive(Clone, Copy, Debug, Default)]
struct ClimbState {
    /// The delivery rates that mean the windows of the previous and the current round found
    /// room (halfway from the estimate to the window's rate), bytes per second.
    targets: [u64; 2],
    /// The last round fell short of its target.
    missed: bool,
    /// The estimate when the last climb began.
    from: u64,
    /// The last climb raised the estimate by less than a twentieth: a climb on an empty queue
    /// waits for the probing round (a path that drops instead of queueing, as a policer does,
    /// never shows a queue).
    futile: bool,
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
            round: Round::new(now),
            full_now: false,
            block: QueueBlock::EMPTY,
            filter: BwFilter::default(),
            bw: 0,
            full_bw: 0,
            flat_rounds: 0,
            overrun_before: false,
            climb: ClimbState::default(),
            share: None,
            gentle: false,
            left_startup: None,
            recent: RecentAcks::default(),
            variation: Variation::default(),
            extra: Duration::ZERO,
            queue_since: None,
            siblings: false,
            pending_fall: None,
        }
    }

    /// A controller at start-up for link `id` of a path whose links share `share`. `id` names
    /// the link to the other links of the path and in traces.
    pub fn on_path(now: Instant, mtu: u16, id: u64, share: Option<Arc<PathShare>>) -> Self {
        if let Some(share) = &share {
            share.member(id, now);
        }
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
        self.round.acked += bytes;
        self.min_rtt = Some(min_rtt);
        let rtt = now.saturating_duration_since(sent);
        self.round.rtt.add(rtt);
        if !app_limited {
            self.round.app_limited = false;
        }
        if self.phase == Phase::Startup {
            self.startup_ack(now, rtt, bytes, min_rtt);
        }
        if sent >= self.round.start && now.saturating_duration_since(self.round.start) >= MIN_ROUND
        {
            return Some(self.end_round(now));
        }
        None
    }

    /// After a batch of acks, `in_flight` bytes are still unacknowledged.
    pub fn on_in_flight(&mut self, in_flight: u64) {
        self.full_now = 2 * in_flight >= self.window;
        self.round.full |= self.full_now;
        self.round.in_flight = self.round.in_flight.max(in_flight);
        self.round.in_flight_min = self.round.in_flight_min.min(in_flight);
    }

    /// `bytes` were declared lost; `persistent` is QUIC's persistent congestion (RFC 9002).
    pub fn on_loss(&mut self, now: Instant, bytes: u64, persistent: bool) {
        self.round.lost += bytes;
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

    /// The bandwidth-delay product of the estimate, bytes, over the minimum RTT plus half the
    /// path's variation plus the extra delay the acks were seen to take (`extra`): on a path
    /// whose delay varies by itself, a window of the minimum RTT's BDP leaves the line idle
    /// whenever the delay is above its minimum, and every round then delivers less than the
    /// last (bench/RESULTS.md, WAN robustness). At least [`MIN_WINDOW_TIME`] of the rate.
    fn bdp(&self) -> u64 {
        self.min_rtt.map_or(0, |min| {
            let base = (min + self.envelope() / 2 + self.extra).max(MIN_WINDOW_TIME);
            (self.bw as f64 * base.as_secs_f64()) as u64
        })
    }

    /// How much the path's RTT varies by itself (see `rtt.rs`), counting the current round's
    /// samples so far.
    fn envelope(&self) -> Duration {
        self.min_rtt.map_or(Duration::ZERO, |min| {
            // Beside other links, a fall within this round may be another link's drain: it
            // counts once the round is known to be clear of one (start-up excepted, whose
            // delay test must see a jittered path's variation from the first rounds on).
            let now = if self.siblings && self.phase != Phase::Startup {
                Duration::ZERO
            } else {
                self.round.rtt.fall()
            };
            self.variation.envelope(now, min)
        })
    }

    /// What the queue tests compare RTT samples with: the minimum RTT plus the path's variation
    /// (samples up to that high say nothing of a queue at the bottleneck).
    fn queue_floor(&self) -> Option<Duration> {
        self.min_rtt.map(|min| min + self.envelope())
    }
}

#[cfg(test)]
mod tests;
