//! Elastic links: when to ask for one more link and which extra link to close.
//!
//! "Busy" is seen from the sending side: a link whose writer has found data every time it
//! looked for [`GROW_AFTER`] has a full socket, and if the session still has data waiting, one
//! more link (one more congestion window) moves more of it. The client plans its own links
//! ([`Session::plan_links`], upload, or when the server asked); a server node asks the client
//! with `MORE_LINKS` (download), checked as its links transmit.

use super::{Role, Session};
use crate::frame::Frame;
use crate::ids::LinkId;
use std::time::{Duration, Instant};

/// Every link busy this long, with data waiting, wants another.
pub const GROW_AFTER: Duration = Duration::from_millis(200);
/// An extra link idle this long is closed.
pub const RETIRE_AFTER: Duration = Duration::from_secs(30);

/// What the client's link pool knows and the engine does not: its bounds and its slots.
#[derive(Debug, Clone, Copy)]
pub struct PoolView<'a> {
    /// Links always kept (`links.min`).
    pub min: usize,
    /// Links at most (`links.max`).
    pub max: usize,
    /// Slots open now, connected or dialling.
    pub slots: usize,
    /// Some slot is still dialling: wait for it before opening another.
    pub dialing: bool,
    /// The links of the extra slots (beyond `min`), oldest first.
    pub extra: &'a [LinkId],
}

/// What the pool should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkPlan {
    /// Nothing.
    Hold,
    /// Open one more link.
    Open,
    /// Close this extra link: it has been idle for [`RETIRE_AFTER`].
    Close(LinkId),
}

impl Session {
    /// The client's elastic link decision for now, given its pool. At most one change per
    /// call: one more link when the server asked for it or every link has been busy for
    /// [`GROW_AFTER`] with data waiting (and no slot is still dialling), else the newest extra
    /// link idle for [`RETIRE_AFTER`] is closed.
    pub fn plan_links(&mut self, now: Instant, pool: PoolView<'_>) -> LinkPlan {
        let asked = std::mem::take(&mut self.more_links_asked);
        if pool.max <= pool.min {
            return LinkPlan::Hold;
        }
        let grow = asked || self.saturated(now, GROW_AFTER);
        if pool.slots < pool.max && !pool.dialing && grow {
            return LinkPlan::Open;
        }
        pool.extra
            .iter()
            .rev()
            .find(|id| {
                self.links.get(id).is_some_and(|l| {
                    let a = l.writer.activity();
                    !a.busy && now.saturating_duration_since(a.since) >= RETIRE_AFTER
                })
            })
            .map_or(LinkPlan::Hold, |&id| LinkPlan::Close(id))
    }

    /// Whether every link has been busy for at least `span` and data is still waiting: one
    /// more link (one more congestion window) would move more of it.
    fn saturated(&self, now: Instant, span: Duration) -> bool {
        !self.links.is_empty()
            && self.links.values().all(|l| {
                let a = l.writer.activity();
                a.busy && now.saturating_duration_since(a.since) >= span
            })
            && self.wants_transmit()
    }

    /// Server side, as a link transmits: at most every [`GROW_AFTER`], if every link has been
    /// busy that long with data waiting, asks the client for another link.
    pub(super) fn check_saturation(&mut self, now: Instant) {
        if !matches!(self.role, Role::Server(_))
            || self
                .saturation_checked
                .is_some_and(|t| now.saturating_duration_since(t) < GROW_AFTER)
        {
            return;
        }
        self.saturation_checked = Some(now);
        if self.saturated(now, GROW_AFTER) {
            self.request_more_links();
        }
    }

    /// Asks the client for another link (server side; a no-op on the client).
    pub fn request_more_links(&mut self) {
        if matches!(self.role, Role::Server(_)) && !self.control.contains(&Frame::MoreLinks) {
            self.control.push_back(Frame::MoreLinks);
        }
    }
}
