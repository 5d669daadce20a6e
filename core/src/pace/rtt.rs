//! What the RTT samples say about the bottleneck's queue: over a round ([`RoundRtt`]) and, in
//! start-up, over blocks of consecutive samples ([`QueueBlock`]); and how much the path's delay
//! varies by itself ([`Variation`]).
//!
//! Every queue test compares samples with the minimum RTT plus the path's variation: on a path
//! whose delay varies (queues elsewhere, radio last miles, reordering), samples above the minimum
//! are not this link's queue. The variation is measured by how far the RTT *falls* within a
//! round: the smallest samples of blocks of consecutive samples (so a delayed ack or a reordered
//! packet, which inflate single samples, count for nothing), against the largest such block
//! minimum earlier in the round. A queue this link builds only raises the RTT while the window
//! holds (start-up, a steady cruise round); a delay that varies by itself also falls. Rounds
//! that drain a queue of this link's own (after a probe, a climb or start-up) are not measured,
//! nor, in cruise, rounds that overlapped another link's drain on the same path (see
//! `PathShare::drained`): its queue leaving makes this link's samples fall too.

use std::time::Duration;

use super::BW_ROUNDS;

/// Start-up also ends as soon as [`QUEUE_DELAY_SAMPLES`] consecutive RTT samples all exceed the
/// minimum RTT by this fraction of it (clamped to [`QUEUE_DELAY_MIN`, `QUEUE_DELAY_MAX`]): a
/// queue is building at the bottleneck, so the pipe is full. Per block, not per round as in
/// HyStart (RFC 9406): the window doubles within a round, and waiting for the next lets it reach
/// 3 x the BDP (test `start_up_ends_when_the_queue_builds`).
const QUEUE_DELAY_FRACTION: u32 = 8;
const QUEUE_DELAY_MIN: Duration = Duration::from_millis(4);
const QUEUE_DELAY_MAX: Duration = Duration::from_millis(16);
/// The delay test looks at blocks of this many consecutive RTT samples.
const QUEUE_DELAY_SAMPLES: u32 = 8;
/// A cruise round leaves cruise (climb or start-up) only if some RTT sample of it was within
/// this fraction of the minimum RTT (see [`RoundRtt::had_room`]).
const ROOM_FRACTION: u32 = 16;
/// A cruise round reports to the [`super::PathShare`] only if one of its RTT samples was this
/// fraction of the minimum RTT above it (see [`RoundRtt::saw_queue`]); cruise keeps a twentieth
/// queued.
const FILL_FRACTION: u32 = 32;
/// A climb round whose RTT samples were all this fraction of the minimum RTT above it (clamped
/// to [`CLIMB_QUEUE_MIN`, `CLIMB_QUEUE_MAX`]) ends the climb: a queue grew, and what the link
/// gained came from another flow.
const CLIMB_QUEUE_FRACTION: u32 = 50;
const CLIMB_QUEUE_MIN: Duration = Duration::from_millis(1);
const CLIMB_QUEUE_MAX: Duration = Duration::from_millis(4);

/// The variation is at most this fraction of the minimum RTT: a window sized for more would
/// queue more than half a round trip whenever the delay is low.
const VARIATION_MAX_FRACTION: u32 = 2;

/// The RTT samples of one round. Its queue tests take the `floor` of the samples: the minimum
/// RTT plus the path's variation (see the module docs); "above the minimum" below means above
/// that floor.
#[derive(Clone, Copy, Debug)]
pub(super) struct RoundRtt {
    /// The smallest and largest samples.
    min: Duration,
    max: Duration,
    /// The sum and number of the samples: their mean.
    sum: Duration,
    count: u32,
    /// The current block of consecutive samples, the largest block minimum of the round so far,
    /// and the most the block minima fell below an earlier one (see the module docs).
    block: QueueBlock,
    peak: Duration,
    fall: Duration,
}

impl RoundRtt {
    /// No samples yet.
    pub(super) const EMPTY: Self = Self {
        min: Duration::MAX,
        max: Duration::ZERO,
        sum: Duration::ZERO,
        count: 0,
        block: QueueBlock::EMPTY,
        peak: Duration::ZERO,
        fall: Duration::ZERO,
    };

    pub(super) fn add(&mut self, rtt: Duration) {
        self.min = self.min.min(rtt);
        self.max = self.max.max(rtt);
        self.sum += rtt;
        self.count += 1;
        if let Some(block_min) = self.block.add(rtt) {
            self.peak = self.peak.max(block_min);
            self.fall = self.fall.max(self.peak - block_min);
        }
    }

    /// The most the smallest sample of a block of consecutive samples fell below that of an
    /// earlier block of the round: how much the path's delay varied by itself.
    pub(super) fn fall(&self) -> Duration {
        self.fall
    }

    /// The smallest sample (`Duration::MAX` before any).
    pub(super) fn min(&self) -> Duration {
        self.min
    }

    /// The largest sample (zero before any).
    pub(super) fn max(&self) -> Duration {
        self.max
    }

    /// The mean of the samples (zero before any).
    pub(super) fn mean(&self) -> Duration {
        self.sum / self.count.max(1)
    }

    /// Some sample saw (almost) no queue at the bottleneck: at most [`ROOM_FRACTION`] of the
    /// path's minimum RTT above it, clamped to 2-8 ms (half the start-up allowance's bounds).
    pub(super) fn had_room(&self, floor: Option<Duration>) -> bool {
        floor.is_some_and(|min| {
            let allowance = (min / ROOM_FRACTION).clamp(QUEUE_DELAY_MIN / 2, QUEUE_DELAY_MAX / 2);
            self.min <= min + allowance
        })
    }

    /// Some sample saw a queue at the bottleneck: [`FILL_FRACTION`] of the minimum RTT above it
    /// (clamped to 2-8 ms). A link in cruise whose rounds see none does not fill its path (its
    /// start-up ended early), and must not hold back another's start-up.
    pub(super) fn saw_queue(&self, floor: Option<Duration>) -> bool {
        floor.is_some_and(|min| {
            let allowance = (min / FILL_FRACTION).clamp(QUEUE_DELAY_MIN / 2, QUEUE_DELAY_MAX / 2);
            self.max > min + allowance
        })
    }

    /// The samples saw, on average, no queue at the bottleneck (within [`CLIMB_QUEUE_FRACTION`]
    /// of the minimum RTT): a cruise window of `CRUISE_GAIN` x the estimate keeps a twentieth
    /// of the RTT queued, so the estimate is short of the path. The mean, not the largest
    /// sample: a delayed ack inflates single samples by up to 25 ms.
    pub(super) fn saw_no_queue(&self, floor: Option<Duration>) -> bool {
        floor.is_some_and(|min| {
            let allowance = (min / CLIMB_QUEUE_FRACTION).clamp(CLIMB_QUEUE_MIN, CLIMB_QUEUE_MAX);
            self.count > 0 && self.mean() <= min + allowance
        })
    }

    /// Every sample saw a queue at the bottleneck (see [`CLIMB_QUEUE_FRACTION`]).
    pub(super) fn all_queued(&self, floor: Option<Duration>) -> bool {
        floor.is_some_and(|min| {
            let allowance = (min / CLIMB_QUEUE_FRACTION).clamp(CLIMB_QUEUE_MIN, CLIMB_QUEUE_MAX);
            self.min > min + allowance
        })
    }
}

/// How much the path's RTT varies by itself: the largest fall (see [`RoundRtt::fall`]) of the
/// last [`BW_ROUNDS`] rounds that drained no queue of the link's own.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Variation {
    falls: [Duration; BW_ROUNDS],
    /// The oldest, which the next replaces.
    next: usize,
}

impl Variation {
    /// A round's fall.
    pub(super) fn push(&mut self, fall: Duration) {
        self.falls[self.next] = fall;
        self.next = (self.next + 1) % BW_ROUNDS;
    }

    /// The path's variation: the largest fall remembered, or `now` (the current round's so far)
    /// if larger, at most half the minimum RTT.
    pub(super) fn envelope(&self, now: Duration, min_rtt: Duration) -> Duration {
        let most = self.falls.iter().copied().max().unwrap_or_default();
        most.max(now).min(min_rtt / VARIATION_MAX_FRACTION)
    }
}

/// Start-up's current block of [`QUEUE_DELAY_SAMPLES`] consecutive RTT samples.
#[derive(Clone, Copy, Debug)]
pub(super) struct QueueBlock {
    /// The smallest sample of the block, and how many the block has.
    min: Duration,
    count: u32,
}

impl QueueBlock {
    /// No samples yet.
    pub(super) const EMPTY: Self = Self {
        min: Duration::MAX,
        count: 0,
    };

    /// Adds a sample. If that completes the block, returns its smallest sample and starts the
    /// next block.
    pub(super) fn add(&mut self, rtt: Duration) -> Option<Duration> {
        self.min = self.min.min(rtt);
        self.count += 1;
        if self.count != QUEUE_DELAY_SAMPLES {
            return None;
        }
        let min = self.min;
        *self = Self::EMPTY;
        Some(min)
    }
}

/// Every sample of a block whose smallest was `block_min` saw a queue at the bottleneck (see
/// [`QUEUE_DELAY_FRACTION`]).
pub(super) fn block_queued(block_min: Duration, floor: Duration) -> bool {
    let allowance = (floor / QUEUE_DELAY_FRACTION).clamp(QUEUE_DELAY_MIN, QUEUE_DELAY_MAX);
    block_min > floor + allowance
}
