//! The session's set of links: adding and removing them (what a dead link carried goes out
//! again on the others), and their numbers.

use super::link::{LinkActivity, LinkState, LinkStats, Sent};
use super::{Session, UNSENT_BDPS};
use crate::frame::Frame;
use crate::ids::LinkId;
use std::time::{Duration, Instant};

impl Session {
    /// A link finished its handshake and may carry frames.
    pub fn add_link(&mut self, now: Instant, link: LinkId) {
        self.links
            .entry(link)
            .or_insert_with(|| LinkState::new(now));
    }

    /// A new link that is a dedicated interactive lane (the client's `links.lanes`, flagged in
    /// the link's handshake): see the engine's `lanes` module.
    pub fn add_lane(&mut self, now: Instant, link: LinkId) {
        self.add_link(now, link);
        if let Some(l) = self.links.get_mut(&link) {
            l.lane = true;
        }
    }

    /// A new link that goes through a relay: a sub-link (client: client link L to node P,
    /// carrying this owner's frames in `ROUTE` sections) or a virtual link (owner: client link L
    /// of peer P). Its messages are at most [`crate::route::MAX_SECTION`] bytes, and it takes no
    /// data of pinned streams. Otherwise it is a link like any other: confirmation, resends and
    /// credit stay end to end (`docs/PROTOCOL.md`, "Confirmation across a relay").
    pub fn add_relayed_link(&mut self, now: Instant, link: LinkId) {
        self.add_link(now, link);
        if let Some(l) = self.links.get_mut(&link) {
            l.relayed = true;
            l.max_message = crate::route::MAX_SECTION;
        }
    }

    /// A relayed link ([`Session::add_relayed_link`]) over a dedicated interactive lane of
    /// another node (a sub-link over a lane link, or a virtual link through one): a dedicated
    /// lane of this engine too, so that no owner's bulk data goes on a lane link, and the
    /// nearest lanes carry the interactive frames whichever node owns the stream.
    pub fn add_relayed_lane(&mut self, now: Instant, link: LinkId) {
        self.add_relayed_link(now, link);
        if let Some(l) = self.links.get_mut(&link) {
            l.lane = true;
        }
    }

    /// Pings `link` with its next message unless a ping is outstanding or due already: the
    /// caller suspects it (a client whose sub-link through this link died). A live link
    /// answers within a round trip ([`Session::link_answered_since`]); a dead one is declared
    /// dead by its ping timer from now, not at its next keepalive (an idle link is pinged only
    /// every 10 s).
    pub fn probe_link(&mut self, now: Instant, link: LinkId) {
        if let Some(l) = self.links.get_mut(&link) {
            l.probe(now);
        }
    }

    /// Whether `link` received a `PONG` at or after `since`, so it carried frames both ways
    /// since then; `None` if the engine does not have the link.
    pub fn link_answered_since(&self, link: LinkId, since: Instant) -> Option<bool> {
        let l = self.links.get(&link)?;
        Some(l.last_pong().is_some_and(|t| t >= since))
    }

    /// Whether `link` goes through a relay ([`Session::add_relayed_link`]).
    pub fn is_relayed(&self, link: LinkId) -> bool {
        self.links.get(&link).is_some_and(|l| l.relayed)
    }

    /// A link died or was closed. Everything sent on it that the peer has not confirmed is
    /// queued again for the other links.
    pub fn remove_link(&mut self, link: LinkId) {
        let Some(state) = self.links.remove(&link) else {
            return;
        };
        self.size_unsent_target();
        self.lane_dups.retain(|d| d.lane != link);
        self.open_dups.retain(|d| d.lane != link);
        for sent in state.sent {
            match sent {
                Sent::Data {
                    stream,
                    start,
                    end,
                    fin,
                } => {
                    if let Some(s) = self.streams.get_mut(&stream) {
                        if !s.is_reset() {
                            self.resent += s.send.requeue(start, end, fin);
                            self.schedule(stream);
                        }
                    }
                }
                Sent::Window { stream, acked, max } => {
                    if self.streams.contains_key(&stream) {
                        self.mark_window_dirty(stream);
                    } else {
                        // The stream ended after this went out: the peer may still wait for
                        // this acknowledgement of its FIN, and nothing else would send it.
                        self.control.push_back(Frame::Window { stream, acked, max });
                    }
                }
                Sent::SessionWindow => self.session_window_dirty = true,
                Sent::Control(frame) => {
                    let keep = match &frame {
                        Frame::Open { stream, .. } => self.streams.contains_key(stream),
                        // A hint about load; the next check sends a fresh one if still needed.
                        Frame::MoreLinks => false,
                        _ => true,
                    };
                    if keep {
                        self.opens_queued += usize::from(matches!(frame, Frame::Open { .. }));
                        self.control.push_back(frame);
                    }
                }
            }
        }
    }

    /// Stream bytes queued to be sent again because the link that carried them died or
    /// stalled before the peer confirmed them, since the session started.
    pub fn resent_bytes(&self) -> u64 {
        self.resent
    }

    /// When a message last came on a link through a relay (a sub-link on a client, a virtual
    /// link on a node), whether that link lives on or not: the last time the peer was heard
    /// through another node. `None` if it never was. A session whose own links are all gone
    /// but whose peer is still heard through a relay is alive: its grace runs from here. Each
    /// end hears the other's messages (pings at least every 10 s, and their pongs), so the two
    /// ends' times differ by about one trip.
    pub fn heard_through_relay(&self) -> Option<Instant> {
        self.heard_through_relay
    }

    /// Pings every link through a relay with its next message (unless a ping is outstanding
    /// or due already): a peer that is alive answers within a round trip, and is heard
    /// ([`Session::heard_through_relay`]) sooner than an idle link's keepalive (10 s) would
    /// make it.
    pub fn probe_relayed(&mut self, now: Instant) {
        for l in self.links.values_mut().filter(|l| l.relayed) {
            l.probe(now);
        }
    }

    /// Links the engine knows.
    pub fn links(&self) -> impl Iterator<Item = LinkId> + '_ {
        self.links.keys().copied()
    }

    /// Whether the engine knows `link` (it has not declared it dead).
    pub fn has_link(&self, link: LinkId) -> bool {
        self.links.contains_key(&link)
    }

    /// Whether `link`'s writer is busy (found data the last time it looked) and since when. A
    /// link busy for a while has a full socket: every byte it can take is being sent.
    pub fn link_activity(&self, link: LinkId) -> Option<LinkActivity> {
        self.links.get(&link).map(|l| l.writer.activity())
    }

    /// Numbers for one link at `now` (its delivery rate is zero if no pong came lately).
    pub fn link_stats(&self, link: LinkId, now: Instant) -> Option<LinkStats> {
        self.links.get(&link).map(|l| {
            let mut s = l.stats;
            s.delivery_rate = l.delivery_rate_at(now);
            s.unconfirmed = l.sent.len();
            s.lane = l.lane;
            s
        })
    }

    /// The round-trip time that paces a stream's credit: data is spread over every link and
    /// read in order, so the slowest link's smoothed RTT. `None` before any sample.
    pub(super) fn path_rtt(&self) -> Option<Duration> {
        self.links
            .values()
            .filter_map(|l| l.stats.rtt.smoothed)
            .max()
    }

    /// Sizes what the bulk streams together may hold unsent from the links' bandwidth-delay
    /// products: each link's delivery rate times its smallest RTT, summed, times
    /// [`UNSENT_BDPS`]; each stream's share is [`super::unsent_bound`]. Called when a pong
    /// brings a new sample and when a link goes.
    pub(super) fn size_unsent_target(&mut self) {
        let bdp: f64 = self
            .links
            .values()
            .filter_map(|l| Some(l.stats.delivery_rate as f64 * l.stats.rtt.min?.as_secs_f64()))
            .sum();
        self.unsent_target = (bdp * UNSENT_BDPS as f64) as u64;
    }
}
