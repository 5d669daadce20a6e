//! What the links of one path tell each other ([`PathShare`]).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::BW_ROUNDS;

/// How long a busy cruise round that saw a queue counts as a sign that its link fills the path
/// (a probe, which queues, comes every eighth round).
const SHARE_FRESH: Duration = Duration::from_secs(2);

/// The most drains remembered (the oldest go first): enough for every link of a path to
/// overlap another's last few rounds, on a loopback path too, where a round takes 5 ms.
const DRAINS_MAX: usize = 64;

/// The least a link's window is scaled to by [`PathShare::scale`]: the path's rate bounds the
/// links' estimates together where each link's max filter overshoots its own share by a few
/// percent; a larger gap is a path that changed, which the estimates follow by themselves.
pub(super) const SCALE_MIN: f64 = 0.8;

/// What the links of one path (to one peer address) tell each other: how many there are, which
/// of them recently filled it (a busy cruise round that saw a queue) and at what rate, and what
/// the path delivered to all of them at once. A link that starts beside one that fills the path
/// grows by a quarter per round, not by doubling, which would overrun the queue and delay the
/// other link's traffic (bench/RESULTS.md, lessons).
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
    /// What the links delivered together (see [`PathShare::delivered`]).
    deliveries: Mutex<Deliveries>,
}

/// The links' latest busy rounds and the path's delivery rates they add up to.
#[derive(Debug, Default)]
struct Deliveries {
    /// Each link's latest busy round; entries that ended more than [`SHARE_FRESH`] ago are
    /// dropped.
    latest: Vec<Delivery>,
    /// What the path delivered at the end of each of the last busy rounds of its links: the
    /// round's rate plus the rates of the other links' latest rounds that overlapped it, bytes
    /// per second, newest last; [`BW_ROUNDS`] rounds of each link.
    sums: VecDeque<u64>,
}

/// Link `link` delivered `rate` bytes per second in its busy round from `from` to `to`.
#[derive(Clone, Copy, Debug)]
struct Delivery {
    link: u64,
    from: Instant,
    to: Instant,
    rate: u64,
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

    /// Link `id` delivered `rate` bytes per second in its busy cruise round from `from` to `to`.
    /// With the latest such rounds of the other links that overlapped it, that is what the path
    /// delivered in that time; returns the most it delivered so over the last [`BW_ROUNDS`]
    /// rounds of each link (this one included), bytes per second, once that many were told.
    /// Start-up's and climbs' rounds are not told: a round whose window grew as it went
    /// delivered less than the path's rate at its end, which is what start-up's estimate takes.
    ///
    /// Each link's estimate is the largest of its own last rounds' samples, and the links'
    /// shares of the path move against each other from round to round (one probes, another
    /// loses a packet): the estimates' sum is the sum of each share's peak, which the path
    /// never delivered at once. Four links on B's path (200 Mbit/s) estimated 213 Mbit/s
    /// together, where the rounds' sums peaked at 203, and their windows kept a quarter of the
    /// RTT queued at the bottleneck (bench/RESULTS.md, issue 21).
    pub(super) fn delivered(&self, id: u64, from: Instant, to: Instant, rate: u64) -> Option<u64> {
        let mut d = self.deliveries.lock().unwrap_or_else(|e| e.into_inner());
        d.latest
            .retain(|e| e.link != id && to.saturating_duration_since(e.to) < SHARE_FRESH);
        // In u128: a rate may be near u64::MAX (a round of a loopback path).
        let others: u128 = d
            .latest
            .iter()
            .filter(|e| e.to > from && e.from < to)
            .map(|e| u128::from(e.rate))
            .sum();
        let sum = u64::try_from(others + u128::from(rate)).unwrap_or(u64::MAX);
        d.latest.push(Delivery {
            link: id,
            from,
            to,
            rate,
        });
        let keep = BW_ROUNDS * d.latest.len();
        d.sums.push_back(sum);
        while d.sums.len() > keep {
            d.sums.pop_front();
        }
        (d.sums.len() == keep).then(|| d.sums.iter().copied().max().unwrap_or(sum))
    }

    /// What link `id`'s window is scaled by so that the links' windows together hold the
    /// path's rate `path` (from [`PathShare::delivered`]), not the sum of their estimates: the
    /// path's rate over that sum, at most 1 and at least [`SCALE_MIN`]. 1 unless every link of
    /// the path has a fresh estimate (a busy cruise round within [`SHARE_FRESH`] of `now`) and
    /// `id` is not alone.
    pub(super) fn scale(&self, id: u64, now: Instant, path: u64) -> f64 {
        let links = self.links(now);
        let all = self.estimates.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = || {
            all.iter()
                .filter(move |e| now.saturating_duration_since(e.at) < SHARE_FRESH)
        };
        if links < 2 || (fresh().count() as u64) < links || !fresh().any(|e| e.link == id) {
            return 1.0;
        }
        let total: u128 = fresh().map(|e| u128::from(e.bw)).sum();
        if total == 0 {
            return 1.0;
        }
        (path as f64 / total as f64).clamp(SCALE_MIN, 1.0)
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
