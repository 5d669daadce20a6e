//! Link choice: which links are interactive lanes, what each link may carry, and which links
//! have work.

use super::{Session, LANE_HOLD};
use crate::frame::Frame;
use crate::ids::LinkId;
use std::time::{Duration, Instant};

/// Links whose smallest RTT sample is within this (or a quarter of it, if more) of the
/// smallest of all are near: interactive lanes are chosen among them.
const NEAR: Duration = Duration::from_millis(2);

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
    /// while what it sends still gets through, and a reply sent on one lane only loses a round
    /// trip to one loss (bench/RESULTS.md, lessons: a lane that looks stalled).
    Spare,
}

/// The interactive lanes of the moment ([`Session::lanes`]): at most two links, and whether
/// they are the dedicated ones (else lanes reserved on demand among all links).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Lanes {
    pub(super) ids: [Option<LinkId>; 2],
    dedicated: bool,
}

impl Session {
    /// The writer of `link` found nothing to send (its last [`Session::poll_transmit`]
    /// returned `false` before anything went out) and waits until [`Session::poll_wakes`] names
    /// it.
    pub fn park_writer(&mut self, now: Instant, link: LinkId) {
        if let Some(l) = self.links.get_mut(&link) {
            l.writer = l.writer.park(now);
        }
    }

    /// Appends to `out` the parked writers to wake now, computed once for all of them: of those
    /// that would find session-level work (see [`Session::has_work_for`]), the one with the
    /// lowest smoothed RTT, so small interactive frames take the quickest path when links are
    /// idle (a busy writer polls again when its write completes, and each later call wakes one
    /// more while work remains, unless a direct link's writer woken for it has not polled yet);
    /// and every writer whose link has work of its own (pongs, a due ping, the duplicates the
    /// other lane left; a lane's interactive frames while a lane has no RTT sample yet, since
    /// "nearest" then means nothing). Waking every writer for every frame would cost a context
    /// switch per link per frame and add latency.
    pub fn poll_wakes(&mut self, now: Instant, out: &mut Vec<LinkId>) {
        let first = out.len();
        if !self.links.values().any(|l| l.writer.is_parked()) {
            return;
        }
        let session_work = self.wants_transmit();
        if !session_work && self.lane_dups.is_empty() && self.open_dups.is_empty() {
            // Only the links' own pongs and pings can be due: no need for the lanes (choosing
            // them is most of this call's cost, and it runs after every engine call while a
            // writer is parked).
            for (&id, l) in self.links.iter_mut() {
                if l.writer.is_parked() && (!l.pongs_owed.is_empty() || l.ping_pending()) {
                    l.writer = l.writer.wake();
                    out.push(id);
                }
            }
            return;
        }
        let lanes = self.lanes(now);
        let mut best: Option<(Duration, LinkId)> = None;
        // A writer woken for session work that has not polled yet takes it when it does (and
        // wakes the next one then if work remains): another engine call in between (a stream
        // task's, a reader's, the timer's) wakes no second writer for the same work. Each extra
        // wake-up is a context switch, often on the other core, for a poll that finds nothing.
        // Direct links only: a parked direct writer awaits its wake-up and nothing else, while
        // a relayed link's writer is its carrier's, which may be busy writing for a while.
        let mut pending = false;
        // A lane's interactive frames are session work like any other (the nearest parked lane
        // is woken for them) once every lane has an RTT sample; until then "nearest" means
        // nothing (a lane may be one still waiting for its first sample, the nearer one), so
        // each lane is woken for them.
        let lanes_timed = lanes.ids.iter().flatten().all(|id| {
            self.links
                .get(id)
                .is_some_and(|l| l.stats.rtt.min.is_some())
        });
        // The nearest parked lane with interactive frames to send, when every lane is timed,
        // unless a lane woken for them has not polled yet.
        let mut lane: Option<(Duration, LinkId)> = None;
        let mut lane_pending = false;
        // Whether a link with this pick is a lane with interactive frames to send.
        let lane_frames = |pick: Pick, relayed: bool| {
            matches!(pick, Pick::Lane { .. }) && self.sched.has_interactive(relayed)
        };
        for (&id, l) in &self.links {
            if !l.writer.is_parked() {
                if session_work && !l.relayed && l.writer.is_woken() {
                    let pick = self.pick_for(id, lanes);
                    pending |= self.work_for(now, id, pick, lanes);
                    lane_pending |= lane_frames(pick, l.relayed);
                }
                continue;
            }
            let pick = self.pick_for(id, lanes);
            let frames = lane_frames(pick, l.relayed);
            let own = !l.pongs_owed.is_empty()
                || l.ping_pending()
                || match pick {
                    Pick::Lane { .. } => (frames && !lanes_timed) || self.has_dups_for(id),
                    Pick::Spare => self.has_dups_for(id),
                    // The lanes may have ended since (the OPEN was what held them).
                    Pick::Any => self.open_dups.iter().any(|d| d.lane == id),
                    Pick::Bulk => false,
                };
            if own {
                out.push(id);
            }
            if frames && lanes_timed {
                // The smallest sample, as the lanes were chosen by (`nearest`): a smoothed RTT
                // can still carry a first sample taken while the path was being set up.
                let rtt = l.stats.rtt.min.unwrap_or(Duration::MAX);
                if lane.is_none_or(|(b, _)| rtt < b) {
                    lane = Some((rtt, id));
                }
            }
            if session_work && self.work_for(now, id, pick, lanes) {
                let rtt = l.stats.rtt.smoothed.unwrap_or(Duration::MAX);
                if best.is_none_or(|(b, _)| rtt < b) {
                    best = Some((rtt, id));
                }
            }
        }
        let woken = [best.filter(|_| !pending), lane.filter(|_| !lane_pending)];
        for (_, id) in woken.into_iter().flatten() {
            if !out[first..].contains(&id) {
                out.push(id);
            }
        }
        for id in &out[first..] {
            if let Some(l) = self.links.get_mut(id) {
                l.writer = l.writer.wake();
            }
        }
    }

    /// Whether `link` looks stalled (see [`super::link::LinkState::stalled`]) while another
    /// link does not: window updates then go on another. A dead link looks alive until its dead timer ends
    /// it, seconds later; until then, acknowledgements and credit sent on it are lost, and the
    /// peer's sender waits for them.
    pub(super) fn stalled_beside_another(&self, now: Instant, link: LinkId) -> bool {
        self.links.get(&link).is_some_and(|l| l.stalled(now))
            && self
                .links
                .iter()
                .any(|(&id, l)| id != link && !l.stalled(now))
    }

    /// Whether `link` would find something to send now: control frames go on any link, or
    /// only on a lane while lanes are reserved (a stream's `OPEN` must not wait behind bulk
    /// data); window updates on any link but the dedicated lanes (they would hold up the
    /// game's packets behind a lost one) and a link that looks stalled beside one that does not;
    /// interactive data only on a lane and bulk data only elsewhere.
    pub fn has_work_for(&self, now: Instant, link: LinkId) -> bool {
        let lanes = self.lanes(now);
        self.work_for(now, link, self.pick_for(link, lanes), lanes)
    }

    /// [`Session::has_work_for`] with the lanes and the link's pick already known.
    fn work_for(&self, now: Instant, link: LinkId, pick: Pick, lanes: Lanes) -> bool {
        let control = matches!(pick, Pick::Any | Pick::Lane { .. });
        if (control && !self.control.is_empty())
            || ((!self.dirty_windows.is_empty() || self.session_window_dirty)
                && carries_windows(pick, lanes)
                && !self.stalled_beside_another(now, link))
        {
            return true;
        }
        let relayed = self.links.get(&link).is_some_and(|l| l.relayed);
        match pick {
            Pick::Any => !self.sched.is_empty_for(relayed),
            Pick::Lane { .. } => self.sched.has_interactive(relayed) || self.has_dups_for(link),
            Pick::Spare => self.has_dups_for(link),
            Pick::Bulk => self.sched.has_bulk(relayed),
        }
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
    /// receiver drops the copy that arrives second), so one lost packet costs no round trip
    /// (not from a lane whose path is shorter than `COPY_MIN_RTT`).
    /// The lanes are the nearest links that are not stalled (a ping overdue): see
    /// [`Session::nearest`].
    ///
    /// Dedicated lanes (links added by [`Session::add_lane`]) replace that choice: while one is
    /// not stalled and another link can take bulk data, the dedicated lanes are the lanes,
    /// always reserved, so no bulk data is ever queued on them and a game's first packet after a
    /// pause waits behind none either.
    pub(super) fn lanes(&self, now: Instant) -> Lanes {
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
        let waiting =
            (self.small_queued && self.sched.has_interactive(false)) || self.opens_queued > 0;
        if !recent && !waiting {
            return Lanes::default();
        }
        let want = match self.links.len() {
            0 | 1 => 0,
            2 | 3 => 1,
            _ => 2,
        };
        let mut ids = self.nearest(now, want, |_| true);
        self.keep_a_direct_lane(now, &mut ids, |_| true);
        Lanes {
            ids,
            dedicated: false,
        }
    }

    /// A pinned stream's data never goes on a relayed link, and while lanes are reserved
    /// interactive data goes on the lanes only: while a pinned interactive stream waits, one
    /// of the lanes `ids` (if any) must be a direct link (the nearest that passes `filter`),
    /// or the stream would wait for as long as the lanes are held.
    fn keep_a_direct_lane(
        &self,
        now: Instant,
        ids: &mut [Option<LinkId>; 2],
        filter: impl Fn(&super::link::LinkState) -> bool,
    ) {
        let direct = |id: &Option<LinkId>| {
            id.and_then(|id| self.links.get(&id))
                .is_some_and(|l| !l.relayed)
        };
        if ids[0].is_none() || !self.sched.has_pinned_interactive() || ids.iter().any(direct) {
            return;
        }
        if let [Some(d), _] = self.nearest(now, 1, |l| !l.relayed && filter(l)) {
            let last = ids.iter().rposition(Option::is_some).unwrap_or(0);
            ids[last] = Some(d);
        }
    }

    /// The `want` (at most two) links that are not stalled and pass `filter`, nearest first:
    /// the links whose smallest RTT sample is within [`NEAR`] (or a quarter) of the smallest of
    /// them all, lowest ids first, then the others by their smallest sample. A link without a
    /// sample yet is not near unless none has one, but with two lanes wanted the second is such
    /// a link while there is one, to measure it. With striping, a node's engine has links
    /// through every other node (sub-links, virtual links), each with its own end-to-end RTT,
    /// so its interactive lanes are the links through the node nearest the client, whichever
    /// node owns the stream (`docs/PROTOCOL.md`, "Interactive traffic across nodes"). The
    /// smallest sample, not the smoothed RTT, so that the queue bulk data builds on a link
    /// does not move the lanes from link to link; and ids among near links, so that links to
    /// the same node keep the same lanes.
    pub(super) fn nearest(
        &self,
        now: Instant,
        want: usize,
        filter: impl Fn(&super::link::LinkState) -> bool,
    ) -> [Option<LinkId>; 2] {
        let mut out = [None, None];
        let want = want.min(2);
        let usable = || {
            self.links
                .iter()
                .filter(|(_, l)| filter(l) && !l.stalled(now))
        };
        let best = usable().filter_map(|(_, l)| l.stats.rtt.min).min();
        let near = |l: &super::link::LinkState| match best {
            None => true,
            Some(b) => l.stats.rtt.min.is_some_and(|m| m <= b + (b / 4).max(NEAR)),
        };
        // With two lanes (each small segment goes on both), the second is a link that has no
        // sample yet while others have one: the segment's ping measures it, at no cost in
        // latency (the first lane carries the same segment). Otherwise a link that never
        // carried anything (a sub-link through a node nearer than the owner, when no bulk data
        // has gone there) would never become a lane.
        let unmeasured = best
            .and_then(|_| usable().find(|(_, l)| l.stats.rtt.min.is_none()))
            .map(|(&id, _)| id);
        let want_near = if want == 2 && unmeasured.is_some() {
            1
        } else {
            want
        };
        let mut k = 0;
        for (&id, _) in usable().filter(|(_, l)| near(l)) {
            if k == want_near {
                break;
            }
            out[k] = Some(id);
            k += 1;
        }
        if want_near < want {
            out[k] = unmeasured;
            k += 1;
        }
        while k < want {
            let next = usable()
                .filter(|(id, _)| !out.contains(&Some(**id)))
                .min_by_key(|(&id, l)| (l.stats.rtt.min.unwrap_or(Duration::MAX), id));
            let Some((&id, _)) = next else { break };
            out[k] = Some(id);
            k += 1;
        }
        out
    }

    /// The dedicated lanes that are not stalled (at most two, the nearest: see
    /// [`Session::nearest`]), if there is one and some other link can take the bulk data.
    pub(super) fn dedicated_lanes(&self, now: Instant) -> Option<[Option<LinkId>; 2]> {
        // Without dedicated lanes (`links.lanes = 0`, the default) this runs after every
        // engine call while a writer is parked: skip the search for the nearest.
        if !self.links.values().any(|l| l.lane) {
            return None;
        }
        let mut out = self.nearest(now, 2, |l| l.lane);
        self.keep_a_direct_lane(now, &mut out, |l| l.lane);
        let bulk_link = self.links.values().any(|l| !l.lane && !l.stalled(now));
        (out[0].is_some() && bulk_link).then_some(out)
    }

    /// Whether the other lane left duplicates (segments or `OPEN`s) for `link` to send.
    pub(super) fn has_dups_for(&self, link: LinkId) -> bool {
        self.lane_dups.iter().any(|d| d.lane == link)
            || self.open_dups.iter().any(|d| d.lane == link)
    }
}

/// Whether a link whose pick is `pick` may carry window updates: any link but a dedicated lane
/// ([`Session::add_lane`]) while dedicated lanes are in use (they are only while another link
/// that is not stalled can take bulk data). A lane is one ordered byte stream, so a lost packet
/// of window updates on it would hold up the game's next packet behind it for about a round
/// trip, and a node receiving an upload sends window updates often (bench/RESULTS.md, lessons:
/// window updates on the lanes). Lanes reserved on demand still carry them.
pub(super) fn carries_windows(pick: Pick, lanes: Lanes) -> bool {
    matches!(pick, Pick::Any | Pick::Bulk) || !lanes.dedicated
}
