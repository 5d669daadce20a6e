//! What the RTT samples say about the bottleneck's queue: over a round ([`RoundRtt`]) and, in
//! start-up, over blocks of consecutive samples ([`QueueBlock`]).

use std::time::Duration;

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

/// The RTT samples of one round.
#[derive(Clone, Copy, Debug)]
pub(super) struct RoundRtt {
    /// The smallest and largest samples.
    min: Duration,
    max: Duration,
    /// The sum and number of the samples: their mean.
    sum: Duration,
    count: u32,
}

impl RoundRtt {
    /// No samples yet.
    pub(super) const EMPTY: Self = Self {
        min: Duration::MAX,
        max: Duration::ZERO,
        sum: Duration::ZERO,
        count: 0,
    };

    pub(super) fn add(&mut self, rtt: Duration) {
        self.min = self.min.min(rtt);
        self.max = self.max.max(rtt);
        self.sum += rtt;
        self.count += 1;
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
    pub(super) fn had_room(&self, min_rtt: Option<Duration>) -> bool {
        min_rtt.is_some_and(|min| {
            let allowance = (min / ROOM_FRACTION).clamp(QUEUE_DELAY_MIN / 2, QUEUE_DELAY_MAX / 2);
            self.min <= min + allowance
        })
    }

    /// Some sample saw a queue at the bottleneck: [`FILL_FRACTION`] of the minimum RTT above it
    /// (clamped to 2-8 ms). A link in cruise whose rounds see none does not fill its path (its
    /// start-up ended early), and must not hold back another's start-up.
    pub(super) fn saw_queue(&self, min_rtt: Option<Duration>) -> bool {
        min_rtt.is_some_and(|min| {
            let allowance = (min / FILL_FRACTION).clamp(QUEUE_DELAY_MIN / 2, QUEUE_DELAY_MAX / 2);
            self.max > min + allowance
        })
    }

    /// The samples saw, on average, no queue at the bottleneck (within [`CLIMB_QUEUE_FRACTION`]
    /// of the minimum RTT): a cruise window of `CRUISE_GAIN` x the estimate keeps a twentieth
    /// of the RTT queued, so the estimate is short of the path. The mean, not the largest
    /// sample: a delayed ack inflates single samples by up to 25 ms.
    pub(super) fn saw_no_queue(&self, min_rtt: Option<Duration>) -> bool {
        min_rtt.is_some_and(|min| {
            let allowance = (min / CLIMB_QUEUE_FRACTION).clamp(CLIMB_QUEUE_MIN, CLIMB_QUEUE_MAX);
            self.count > 0 && self.mean() <= min + allowance
        })
    }

    /// Every sample saw a queue at the bottleneck (see [`CLIMB_QUEUE_FRACTION`]).
    pub(super) fn all_queued(&self, min_rtt: Option<Duration>) -> bool {
        min_rtt.is_some_and(|min| {
            let allowance = (min / CLIMB_QUEUE_FRACTION).clamp(CLIMB_QUEUE_MIN, CLIMB_QUEUE_MAX);
            self.min > min + allowance
        })
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
pub(super) fn block_queued(block_min: Duration, min_rtt: Duration) -> bool {
    let allowance = (min_rtt / QUEUE_DELAY_FRACTION).clamp(QUEUE_DELAY_MIN, QUEUE_DELAY_MAX);
    block_min > min_rtt + allowance
}
