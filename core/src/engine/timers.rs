//! Timers: delayed acks, keepalive pings, dead links (and the probe of their siblings), and the
//! rescue of what a stalled link carries.

use super::link::Sent;
use super::stream::Phase;
use super::{Event, Session};
use crate::frame::reset;
use crate::ids::{LinkId, StreamId};
use std::time::Instant;

impl Session {
    /// Fires the delayed-ack and keepalive timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ack_deadline.is_some_and(|d| d <= now) {
            self.ack_deadline = None;
            for id in std::mem::take(&mut self.ack_later) {
                if let Some(s) = self.streams.get_mut(&id) {
                    s.ack_later = false;
                }
                self.mark_window_dirty(id);
            }
        }
        for l in self.links.values_mut() {
            if l.next_ping_at().is_some_and(|t| t <= now) {
                l.ping_timer_fired(now);
            }
        }
        self.expire_pending(now);
        self.rescue_stalled(now);
        let dead: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.dead_at().is_some_and(|t| t <= now))
            .map(|(&id, _)| id)
            .collect();
        if dead.is_empty() {
            return;
        }
        for id in dead {
            self.remove_link(id);
            self.events.push_back(Event::LinkTimedOut(id));
        }
        // The other links most likely share the dead one's path: each pings with its next
        // message, so an idle one that died too is found within its dead timer, not at its
        // keepalive 10 s later, and a live one answers within a round trip.
        for l in self.links.values_mut() {
            l.probe(now);
        }
    }

    /// Server: resets the streams whose `OPEN` has not come within [`super::PENDING_LIFETIME`] of
    /// their first frame (code 6), and gives back what they held.
    fn expire_pending(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.pending_expiry.front() {
            if at > now {
                break;
            }
            self.pending_expiry.pop_front();
            if self
                .streams
                .get(&id)
                .is_some_and(|s| s.phase == Phase::Pending)
            {
                tracing::debug!(stream = %id, "no OPEN in time: stream reset");
                self.refuse_stream(id, reset::NO_OPEN);
            }
        }
    }

    /// Sends again, on the other links, the data a stalled link carries unconfirmed: a TCP
    /// connection repairing a loss (or backing off its retransmission timer) holds back
    /// everything behind the lost packet, and the stream's receiver waits for it in order. The
    /// receiver drops whichever copy arrives second. The window updates it carried go out again
    /// too, with the current values. The link stays: it may recover, and if it dies its records
    /// are requeued as usual.
    pub(super) fn rescue_stalled(&mut self, now: Instant) {
        let stalled: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.rescue_at().is_some_and(|t| t < now))
            .map(|(&id, _)| id)
            .collect();
        // Only if another link can take it; resending on the stalled link itself is waste.
        if stalled.is_empty() || self.links.values().all(|l| l.stalled(now)) {
            return;
        }
        for id in stalled {
            let Some(l) = self.links.get_mut(&id) else {
                continue;
            };
            let from = usize::try_from(l.rescued.saturating_sub(l.base)).unwrap_or(usize::MAX);
            l.rescued = l.base + l.sent.len() as u64;
            let mut data: Vec<(StreamId, u64, u64, bool)> = Vec::new();
            // Window updates too (a fresh one carries the same or more): while a dead link
            // looks alive, the peer's sender would otherwise wait for credit and
            // acknowledgements that went into it.
            let mut windows: Vec<StreamId> = Vec::new();
            let mut session_window = false;
            for sent in l.sent.iter().skip(from) {
                match *sent {
                    Sent::Data {
                        stream,
                        start,
                        end,
                        fin,
                    } => data.push((stream, start, end, fin)),
                    Sent::Window { stream, .. } => windows.push(stream),
                    Sent::SessionWindow => session_window = true,
                    Sent::Control(_) => {}
                }
            }
            for stream in windows {
                self.mark_window_dirty(stream);
            }
            self.session_window_dirty |= session_window;
            let before = self.resent;
            let entries = data.len();
            for (stream, start, end, fin) in data {
                if let Some(s) = self.streams.get_mut(&stream) {
                    if !s.is_reset() {
                        self.resent += s.send.requeue(start, end, fin);
                        self.schedule(stream);
                    }
                }
            }
            tracing::debug!(
                %id,
                entries,
                bytes = self.resent - before,
                "link looks stalled: its unconfirmed data goes out again on the others"
            );
        }
    }

    /// When [`Session::handle_timeout`] (and a transmit poll) is next needed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let keepalive = self
            .links
            .values()
            .flat_map(|l| [l.next_ping_at(), l.dead_at(), l.rescue_at()])
            .flatten()
            .min();
        let pending = self.pending_expiry.front().map(|&(at, _)| at);
        [self.ack_deadline, keepalive, pending]
            .into_iter()
            .flatten()
            .min()
    }
}
