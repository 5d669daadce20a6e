//! What the links of one path tell each other ([`PathShare`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a busy cruise round that saw a queue counts as a sign that its link fills the path
/// (a probe, which queues, comes every eighth round).
const SHARE_FRESH: Duration = Duration::from_secs(2);

/// What the links of one path (to one peer address) tell each other: which of them recently
/// filled it (a busy cruise round that saw a queue). A link that starts beside one that fills the
/// path grows by a quarter per round, not by doubling, which would overrun the queue and delay
/// the other link's traffic (bench/RESULTS.md, lessons).
#[derive(Debug, Default)]
pub struct PathShare {
    /// The last busy cruise round of each link that had one; entries older than
    /// [`SHARE_FRESH`] are dropped.
    busy: Mutex<Vec<BusyRound>>,
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
}
