//! What the links of one path tell each other ([`PathShare`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a busy cruise round that saw a queue counts as a sign that its link fills the path
/// (a probe, which queues, comes every eighth round).
const SHARE_FRESH: Duration = Duration::from_secs(2);

/// The most drains remembered (the oldest go first): enough for every link of a path to
/// overlap another's last few rounds, on a loopback path too, where a round takes 5 ms.
const DRAINS_MAX: usize = 64;

/// What the links of one path (to one peer address) tell each other: how many there are, which
/// of them recently filled it (a busy cruise round that saw a queue) and at what rate. A link
/// that starts beside one that fills the path grows by a quarter per round, not by doubling,
/// which would overrun the queue and delay the other link's traffic (bench/RESULTS.md,
/// lessons).
#[derive(Debug, Default)]
pub struct PathShare {
    /// The last busy cruise round of each link that had one; entries older than
    /// [`SHARE_FRESH`] are dropped.
    busy: Mutex<Vec<BusyRound>>,
    /// The bandwidth estimate of each link at its last busy cruise round; entries older than
    /// [`SHARE_FRESH`] are dropped.
    estimates: Mutex<Vec<Estimate>>,
    /// Each link's start or last round (a [`BusyRound`] whether busy or not); entries older
    /// than [`SHARE_FRESH`] are dropped.
    members: Mutex<Vec<BusyRound>>,
    /// The rounds in which a link drained what it kept queued (see [`PathShare::drained`]);
    /// entries that ended more than [`SHARE_FRESH`] ago are dropped, and at most
    /// [`DRAINS_MAX`] kept.
    drains: Mutex<Vec<Drain>>,
}

/// Link `link` drained what it kept queued in its round from `from` to `to`.
#[derive(Clone, Copy, Debug)]
struct Drain {
    link: u64,
    from: Instant,
    to: Instant,
}

/// Link `link`'s bandwidth estimate was `bw` bytes per second at a busy cruise round `at`.
#[derive(Clone, Copy, Debug)]
struct Estimate {
    link: u64,
    bw: u64,
    at: Instant,
}

/// Link `link` ended a busy cruise round that saw a queue `at`.
#[derive(Clone, Copy, Debug)]
struct BusyRound {
    link: u64,
    at: Instant,
}

impl BusyRound {
    /// A round of a link other than `id`, recent at `now`.
    fn of_other(&self, id: u64, now: Instant) -> bool {
        self.link != id && now.saturating_duration_since(self.at) < SHARE_FRESH
    }
}

impl PathShare {
    /// Link `id` ended a busy cruise round at `now`.
    pub(super) fn report(&self, id: u64, now: Instant) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.retain(|round| round.of_other(id, now));
        busy.push(BusyRound { link: id, at: now });
    }

    /// Some link other than `id` ended a busy cruise round within [`SHARE_FRESH`] of `now`.
    pub(super) fn other_busy(&self, id: u64, now: Instant) -> bool {
        let busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.iter().any(|round| round.of_other(id, now))
    }

    /// Link `id` started, or ended a round, at `now`.
    pub(super) fn member(&self, id: u64, now: Instant) {
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        members.retain(|m| m.of_other(id, now));
        members.push(BusyRound { link: id, at: now });
    }

    /// The links of the path that started or ended a round within [`SHARE_FRESH`] of `now`
    /// (at least 1).
    pub(super) fn links(&self, now: Instant) -> u64 {
        let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = members
            .iter()
            .filter(|m| now.saturating_duration_since(m.at) < SHARE_FRESH)
            .count();
        (fresh as u64).max(1)
    }

    /// Link `id` held fewer bytes in flight in its round from `from` to `to` than before it (its
    /// window fell after a probe or start-up, it ran out of data, or its lost packets left the
    /// queue): the queue it kept at the bottleneck drained, and the other links' RTT samples
    /// fell with it.
    pub(super) fn drained(&self, id: u64, from: Instant, to: Instant) {
        let mut drains = self.drains.lock().unwrap_or_else(|e| e.into_inner());
        drains.retain(|d| to.saturating_duration_since(d.to) < SHARE_FRESH);
        if drains.len() >= DRAINS_MAX {
            drains.remove(0);
        }
        drains.push(Drain { link: id, from, to });
    }

    /// No link other than `id` drained its share of the queue (see [`PathShare::drained`]) in a
    /// round that overlapped `from` to `to`: what the RTT fell by in that time is the path's own
    /// variation, not another link's drain.
    pub(super) fn quiet(&self, id: u64, from: Instant, to: Instant) -> bool {
        let drains = self.drains.lock().unwrap_or_else(|e| e.into_inner());
        !drains
            .iter()
            .any(|d| d.link != id && d.from < to && d.to > from)
    }

    /// Link `id`, busy in cruise at `now`, estimates its bandwidth at `bw` bytes per second.
    pub(super) fn estimate(&self, id: u64, bw: u64, now: Instant) {
        let mut all = self.estimates.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|e| e.link != id && now.saturating_duration_since(e.at) < SHARE_FRESH);
        all.push(Estimate {
            link: id,
            bw,
            at: now,
        });
    }

    /// The fair share of the links of the path busy within [`SHARE_FRESH`] of `now` (the mean
    /// of their estimates), if some link other than `id` is one of them.
    pub(super) fn fair_share(&self, id: u64, now: Instant) -> Option<u64> {
        let all = self.estimates.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = || {
            all.iter()
                .filter(move |e| now.saturating_duration_since(e.at) < SHARE_FRESH)
        };
        if !fresh().any(|e| e.link != id) {
            return None;
        }
        // In u128: an estimate may be near u64::MAX (a round of a loopback path).
        let n = fresh().count() as u128;
        let sum: u128 = fresh().map(|e| u128::from(e.bw)).sum();
        Some(u64::try_from(sum / n).unwrap_or(u64::MAX))
    }
}
