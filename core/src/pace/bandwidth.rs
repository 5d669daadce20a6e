//! The bandwidth estimators: the max filter over the last rounds' delivery samples
//! ([`BwFilter`]) and, in start-up, the rate of the latest acks ([`RecentAcks`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::BW_ROUNDS;

/// Leaving start-up on a queue, the bandwidth sample is the rate of the acks of the last
/// 1/`RECENT_SPAN` of the minimum RTT (see [`RecentAcks::rate`]), remembered in steps of
/// 1/`RECENT_STEP` of it.
const RECENT_SPAN: u32 = 4;
const RECENT_STEP: u32 = 16;

/// The last [`BW_ROUNDS`] filtered delivery samples, bytes per second.
#[derive(Clone, Debug, Default)]
pub(super) struct BwFilter {
    samples: [u64; BW_ROUNDS],
    /// The oldest sample, which the next replaces.
    next: usize,
    /// The previous round's sample, unfiltered.
    prev: u64,
}

impl BwFilter {
    /// A filter whose every sample is `sample` (for tests that start in cruise).
    #[cfg(test)]
    pub(super) fn filled(sample: u64) -> Self {
        Self {
            samples: [sample; BW_ROUNDS],
            ..Self::default()
        }
    }

    /// A round's `sample` as the filter takes it: with `average` (in cruise), averaged with the
    /// round before's to smooth ack bunching.
    pub(super) fn smooth(&mut self, sample: u64, average: bool) -> u64 {
        let filtered = if average {
            (sample + self.prev) / 2
        } else {
            sample
        };
        self.prev = sample;
        filtered
    }

    /// Replaces the oldest sample.
    pub(super) fn push(&mut self, sample: u64) {
        self.samples[self.next] = sample;
        self.next = (self.next + 1) % BW_ROUNDS;
    }

    /// Replaces the newest sample.
    pub(super) fn replace_newest(&mut self, sample: u64) {
        self.samples[(self.next + BW_ROUNDS - 1) % BW_ROUNDS] = sample;
    }

    /// Drops every sample above `most` to it.
    pub(super) fn cap(&mut self, most: u64) {
        for s in &mut self.samples {
            *s = (*s).min(most);
        }
    }

    /// The largest sample.
    pub(super) fn max(&self) -> u64 {
        self.samples.iter().copied().max().unwrap_or(0)
    }
}

/// Bytes acknowledged so far, noted when.
#[derive(Clone, Copy, Debug)]
struct AckMark {
    at: Instant,
    acked: u64,
}

/// Start-up: the bytes acknowledged so far, noted about every [`RECENT_STEP`] of the minimum RTT
/// over the last [`RECENT_SPAN`] of it, oldest first.
#[derive(Clone, Debug, Default)]
pub(super) struct RecentAcks {
    marks: VecDeque<AckMark>,
    /// Bytes acknowledged in start-up so far (counted only there: cruise's acks do nothing for
    /// it).
    total: u64,
}

impl RecentAcks {
    /// `bytes` were acknowledged at `now`.
    pub(super) fn note(&mut self, now: Instant, bytes: u64, min_rtt: Duration) {
        self.total += bytes;
        let step = min_rtt / RECENT_STEP;
        if self
            .marks
            .back()
            .is_none_or(|mark| now.saturating_duration_since(mark.at) >= step)
        {
            self.marks.push_back(AckMark {
                at: now,
                acked: self.total,
            });
        }
        let span = min_rtt / RECENT_SPAN;
        while self.marks.len() > 2 && now.saturating_duration_since(self.marks[1].at) >= span {
            self.marks.pop_front();
        }
    }

    /// The delivery rate of the acks of the last [`RECENT_SPAN`] of the minimum RTT, bytes per
    /// second, if they span at least half that. When start-up ends on a queue, these acks are
    /// of packets that met the queue: the path delivered them at its rate (this link's share of
    /// it). The round's rate averages a round whose window doubled as it went, and runs below the
    /// path's (test `start_up_that_ends_on_a_queue_takes_the_rate_of_its_last_acks`).
    pub(super) fn rate(&self, now: Instant, min_rtt: Duration) -> Option<u64> {
        let first = self.marks.front()?;
        let span = now.saturating_duration_since(first.at);
        (span >= min_rtt / RECENT_SPAN / 2)
            .then(|| ((self.total - first.acked) as f64 / span.as_secs_f64()) as u64)
    }

    /// Forgets the acks noted so far: they belong to a start-up that ended.
    pub(super) fn forget(&mut self) {
        self.marks.clear();
    }
}
