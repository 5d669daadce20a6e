//! Link choice: which links are interactive lanes, what each link may carry, and which links
//! have work.

use super::{Session, LANE_HOLD};
use crate::frame::Frame;
use crate::ids::LinkId;
use std::time::Instant;

/// Which stream data a link may take in one `poll_transmit`.
#[derive(Debug, Clone, Copy)]
pub(super) enum Pick {
    /// No lanes reserved: interactive streams first, then bulk.
    Any,
    /// This link is an interactive lane: interactive streams only; `twin` is the other lane,
    /// which sends the small segments again.
    Lane { twin: Option<LinkId> },
    /// Lanes are reserved and this is not one: bulk streams only.
    Bulk,
    /// A dedicated lane that looks stalled (its ping is overdue) while another is not: it
    /// sends the other lane's duplicates only, no control frames and no stream data. A lane
    /// looks stalled when what it *receives* waits behind a lost packet (its pongs come late),
    /// while what it sends still gets through: in the WAN lab a server whose other lane looked
    /// stalled sent a game's reply on one lane only, and that packet's loss cost a round trip.
    Spare,
}

/// The interactive lanes of the moment ([`Session::lanes`]): at most two links, and whether
/// they are the dedicated ones (else lanes reserved on demand among all links).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Lanes {
    ids: [Option<LinkId>; 2],
    dedicated: bool,
}

impl Session {
    /// Links that have something of their own to send (pongs, a due keepalive ping, the
    /// interactive frames and duplicates of a lane), beyond what [`Session::wants_transmit`]
    /// covers.
    pub fn links_wanting_transmit(&self) -> impl Iterator<Item = LinkId> + '_ {
        let lanes = self.lanes();
        let interactive = self.sched.has_interactive();
        self.links
            .iter()
            .filter(move |(id, l)| {
                !l.pongs_owed.is_empty()
                    || l.ping_pending()
                    || match self.pick_for(**id, lanes) {
                        Pick::Lane { .. } => interactive || self.has_dups_for(**id),
                        Pick::Spare => self.has_dups_for(**id),
                        Pick::Any | Pick::Bulk => false,
                    }
            })
            .map(|(&id, _)| id)
    }

    /// Whether `link` would find something to send now: control frames go on any link, or
    /// only on a lane while lanes are reserved (a stream's `OPEN` must not wait behind bulk
    /// data); window updates on any link but the dedicated lanes
    /// ([`Session::carries_windows`]); interactive data only on a lane and bulk data only
    /// elsewhere. The driver wakes only writers that have work.
    pub fn has_work_for(&self, link: LinkId) -> bool {
        let lanes = self.lanes();
        let pick = self.pick_for(link, lanes);
        let control = matches!(pick, Pick::Any | Pick::Lane { .. });
        if (control && !self.control.is_empty())
            || ((!self.dirty_windows.is_empty() || self.session_window_dirty)
                && self.carries_windows(link, pick, lanes))
        {
            return true;
        }
        match pick {
            Pick::Any => !self.sched.is_empty(),
            Pick::Lane { .. } => self.sched.has_interactive() || self.has_dups_for(link),
            Pick::Spare => self.has_dups_for(link),
            Pick::Bulk => self.sched.has_bulk(),
        }
    }

    /// Whether `link`, whose pick is `pick`, may carry window updates: any link, except that
    /// a dedicated lane ([`Session::add_lane`]) carries them only if every other link is a
    /// lane or stalled. A lane is one ordered byte stream (a QUIC stream, a TCP connection),
    /// so a lost packet of window updates on it holds up the game's next packet behind it
    /// until the loss is repaired, about a round trip, and a node receiving an upload sends
    /// window updates often (in the WAN lab's B, two or three a round trip per lane). When the dedicated lanes took them, both
    /// lanes had a hole at once often enough that in the WAN lab's B 9 of 2,400 rr round trips
    /// took 129-212 ms in place of about 106 (1 of 2,400 since). Lanes reserved on demand
    /// still carry them: with them too, the simulation of a 20 ms and a 400 ms link took 1.18 s
    /// where its test allows 1 s (with 2 or 3 links the only other link may be the slow one;
    /// not traced).
    pub(super) fn carries_windows(&self, link: LinkId, pick: Pick, lanes: Lanes) -> bool {
        if matches!(pick, Pick::Any | Pick::Bulk) || !lanes.dedicated {
            return true;
        }
        let Some(now) = self.clock else {
            return true;
        };
        // With dedicated lanes, `lanes.ids` are dedicated lanes too.
        self.links
            .iter()
            .all(|(&id, l)| id == link || l.lane || l.stalled(now))
    }

    /// What `link` may carry, given the current `lanes`. The twin of a dedicated lane is the
    /// other dedicated lane even if that one looks stalled (see [`Pick::Spare`]).
    pub(super) fn pick_for(&self, link: LinkId, lanes: Lanes) -> Pick {
        if lanes.ids[0].is_none() {
            return Pick::Any;
        }
        let dedicated = |id: &LinkId| self.links.get(id).is_some_and(|l| l.lane);
        let among_dedicated = lanes.dedicated;
        if lanes.ids.contains(&Some(link)) {
            let twin = lanes
                .ids
                .into_iter()
                .flatten()
                .find(|&x| x != link)
                .or_else(|| {
                    among_dedicated
                        .then(|| {
                            self.links
                                .keys()
                                .copied()
                                .find(|id| *id != link && dedicated(id))
                        })
                        .flatten()
                });
            Pick::Lane { twin }
        } else if among_dedicated && dedicated(&link) {
            Pick::Spare
        } else {
            Pick::Bulk
        }
    }

    /// The interactive lanes: links kept free of bulk data while latency-sensitive traffic
    /// flows (a small interactive segment within `LANE_HOLD`) and while a small segment or a
    /// stream's `OPEN` waits to go out (so the first bytes of a new connection do not wait
    /// behind a bulk link's queue either), so that a game's packets do not
    /// wait behind bulk data, or behind the loss repair of a busy TCP connection. With 2 or 3
    /// links one lane, with 4 or more two, and each small segment is sent on both (the
    /// receiver drops the copy that arrives second), so one lost packet costs no round trip.
    /// The lanes are the links with the lowest ids that are not stalled (a ping overdue).
    ///
    /// Dedicated lanes (links added by [`Session::add_lane`]) replace that choice: while one is
    /// not stalled and another link can take bulk data, the dedicated lanes are the lanes,
    /// always reserved, so no bulk data is ever queued on them and a game's first packet after a
    /// pause waits behind none either.
    pub(super) fn lanes(&self) -> Lanes {
        let Some(now) = self.clock else {
            return Lanes::default();
        };
        if let Some(ids) = self.dedicated_lanes(now) {
            return Lanes {
                ids,
                dedicated: true,
            };
        }
        let recent = self
            .last_small
            .is_some_and(|small| now.saturating_duration_since(small) <= LANE_HOLD);
        debug_assert_eq!(
            self.opens_queued,
            self.control
                .iter()
                .filter(|f| matches!(f, Frame::Open { .. }))
                .count()
        );
        let waiting = (self.small_queued && self.sched.has_interactive()) || self.opens_queued > 0;
        if !recent && !waiting {
            return Lanes::default();
        }
        let want = match self.links.len() {
            0 | 1 => 0,
            2 | 3 => 1,
            _ => 2,
        };
        let mut out = Lanes::default();
        let mut k = 0;
        for (&id, l) in &self.links {
            if k == want {
                break;
            }
            if !l.stalled(now) {
                out.ids[k] = Some(id);
                k += 1;
            }
        }
        out
    }

    /// The dedicated lanes that are not stalled (at most two), if there is one and some other
    /// link can take the bulk data.
    pub(super) fn dedicated_lanes(&self, now: Instant) -> Option<[Option<LinkId>; 2]> {
        let mut out = [None, None];
        let lanes = self
            .links
            .iter()
            .filter(|(_, l)| l.lane && !l.stalled(now))
            .map(|(&id, _)| id);
        for (slot, id) in out.iter_mut().zip(lanes) {
            *slot = Some(id);
        }
        let bulk_link = self.links.values().any(|l| !l.lane && !l.stalled(now));
        (out[0].is_some() && bulk_link).then_some(out)
    }

    /// Whether the other lane left duplicates (segments or `OPEN`s) for `link` to send.
    pub(super) fn has_dups_for(&self, link: LinkId) -> bool {
        self.lane_dups.iter().any(|d| d.0 == link) || self.open_dups.iter().any(|d| d.0 == link)
    }
}
