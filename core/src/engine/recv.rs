//! The receive path: decoding a link's message into frames and applying each, with the credit
//! checks that bound what a peer can make this end hold.

use super::stream::{Phase, Stream};
use super::{
    unsent_bound, Event, PeerError, Role, Session, ACK_DELAY, INITIAL_STREAM_CREDIT, MAX_FORGETS,
    MAX_PENDING_STREAMS, PENDING_LIFETIME,
};
use crate::budget::Pool;
use crate::frame::{self, Frame};
use crate::ids::{LinkId, StreamId};
use bytes::Bytes;
use std::time::Instant;

impl Session {
    /// Handles one decrypted message from `link`.
    pub fn handle_message(
        &mut self,
        now: Instant,
        link: LinkId,
        mut msg: Bytes,
    ) -> Result<(), PeerError> {
        let l = self.links.get_mut(&link).ok_or(PeerError::UnknownLink)?;
        l.stats.bytes_received += msg.len() as u64;
        if l.relayed {
            self.heard_through_relay = Some(now);
        }
        // A server queues an answer for each stream a client resets or opens over a limit; a
        // client that sends them faster than it reads the answers would grow the queue without
        // end. Each live stream (or tombstone, at most as many) needs one; a client's own
        // control frames come from its application, not from the peer, and are not bounded
        // here. Only a message that adds to a full queue is refused, so a new link can drain it.
        let max = match self.role {
            Role::Server(_) => self.cfg.max_streams.saturating_mul(2).saturating_add(1024),
            Role::Client => usize::MAX,
        };
        let queued = self.control.len();
        while let Some(frame) = Frame::decode(&mut msg)? {
            self.handle_frame(now, link, frame)?;
            if self.control.len() > max.max(queued) {
                return Err(PeerError::ControlBacklog(max));
            }
        }
        Ok(())
    }

    pub(super) fn handle_frame(
        &mut self,
        now: Instant,
        link: LinkId,
        frame: Frame,
    ) -> Result<(), PeerError> {
        match frame {
            Frame::Ping(token) => {
                if let Some(l) = self.links.get_mut(&link) {
                    // A peer that pings faster than we pong gets its extra pings dropped.
                    if l.pongs_owed.len() < 16 {
                        l.pongs_owed.push(token);
                    }
                }
            }
            Frame::Pong(token) => {
                // Only a pong that matched its ping brings new samples: a peer's stray pongs
                // cost no walk over the links.
                if self
                    .links
                    .get_mut(&link)
                    .is_some_and(|l| l.pong(now, token))
                {
                    self.size_unsent_target();
                }
            }
            Frame::Close(code) => {
                self.remove_link(link);
                self.events
                    .push_back(Event::LinkClosedByPeer { link, code });
                if code == frame::close::SESSION_OVER && matches!(self.role, Role::Server(_)) {
                    self.events.push_back(Event::SessionOver);
                }
            }
            Frame::Draining => {
                if self.role == Role::Client {
                    self.events.push_back(Event::PeerDraining);
                }
            }
            Frame::MoreLinks => {
                if self.role == Role::Client {
                    self.more_links_asked = true;
                    self.events.push_back(Event::MoreLinksWanted);
                }
            }
            Frame::Open {
                stream,
                service,
                pin,
            } => self.on_open(now, stream, service, pin)?,
            Frame::Data {
                stream,
                offset,
                fin,
                data,
            } => self.on_data(now, stream, offset, fin, data)?,
            Frame::Reset {
                stream,
                code,
                final_size,
            } => self.on_reset(now, stream, code, final_size)?,
            Frame::Window { stream, acked, max } => self.on_window(stream, acked, max)?,
            Frame::SessionWindow { max } => {
                if max > self.send_session_max {
                    self.send_session_max = max;
                    for id in std::mem::take(&mut self.blocked_on_session) {
                        if let Some(s) = self.streams.get_mut(&id) {
                            s.session_blocked = false;
                        }
                        self.schedule(id);
                    }
                }
            }
            Frame::Forget(secret) => {
                // A client's session makes few (one per part it gave up); more are dropped,
                // so a peer cannot grow the event queue with them.
                if matches!(self.role, Role::Server(_)) && self.forgets < MAX_FORGETS {
                    self.forgets += 1;
                    self.events.push_back(Event::Forget(secret));
                }
            }
            Frame::Unknown(_) => {}
        }
        Ok(())
    }

    /// Finds the stream a peer frame names, creating it on the server for a new id: `Open` for
    /// an `OPEN`, else `Pending` (its data came first).
    /// `Ok(None)`: a stale frame for a stream that ended; drop it.
    pub(super) fn peer_stream(
        &mut self,
        now: Instant,
        id: StreamId,
        phase: Phase,
    ) -> Result<Option<&mut Stream>, PeerError> {
        if self.streams.contains_key(&id) {
            return Ok(self.streams.get_mut(&id));
        }
        let Role::Server(node) = self.role else {
            return Ok(None);
        };
        if id.owner() != node {
            return Err(PeerError::NotOwner(id));
        }
        let counter = id.counter();
        if self.finished.contains(counter) || self.refused.contains(counter) {
            return Ok(None);
        }
        let live = self.streams.len();
        let pending_full = phase == Phase::Pending && self.pending >= MAX_PENDING_STREAMS;
        if live >= self.cfg.max_streams || pending_full {
            // Refused with a RESET; its id is kept until the client's RESET says how many bytes
            // it sent. A client that spaces its ids to make that set large is cut off.
            self.refused.insert(counter..counter + 1);
            if self.refused.ranges() > self.max_finished_ranges {
                return Err(PeerError::TooManyStreams);
            }
            self.control.push_back(Frame::Reset {
                stream: id,
                code: frame::reset::TOO_MANY_STREAMS,
                final_size: 0,
            });
            self.events.push_back(Event::Refused {
                code: frame::reset::TOO_MANY_STREAMS,
            });
            return Ok(None);
        }
        if phase == Phase::Pending {
            self.pending += 1;
            if self.pending_expiry.len() >= 2 * MAX_PENDING_STREAMS {
                // Most entries are of streams that opened since: drop those.
                let streams = &self.streams;
                self.pending_expiry
                    .retain(|(_, id)| streams.get(id).is_some_and(|s| s.phase == Phase::Pending));
            }
            self.pending_expiry.push_back((now + PENDING_LIFETIME, id));
        }
        self.insert_stream(now, id, phase);
        Ok(self.streams.get_mut(&id))
    }

    pub(super) fn on_open(
        &mut self,
        now: Instant,
        id: StreamId,
        service: String,
        pin: bool,
    ) -> Result<(), PeerError> {
        if self.role == Role::Client {
            return Err(PeerError::UnexpectedOpen);
        }
        if let Some(s) = self.streams.get_mut(&id) {
            if s.phase != Phase::Pending {
                return Ok(());
            }
            s.phase = Phase::Open;
            s.pinned = pin;
            self.pending -= 1;
            self.pending_charged -= s.charged;
        } else if !self
            .peer_stream(now, id, Phase::Open)?
            .is_some_and(|s| s.phase == Phase::Open)
        {
            // Stale, or refused.
            return Ok(());
        } else if let Some(s) = self.streams.get_mut(&id) {
            s.pinned = pin;
        }
        self.events.push_back(Event::StreamOpened {
            stream: id,
            service,
        });
        Ok(())
    }

    pub(super) fn on_data(
        &mut self,
        now: Instant,
        id: StreamId,
        offset: u64,
        fin: bool,
        data: Bytes,
    ) -> Result<(), PeerError> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(PeerError::Overflow(id))?;
        if self.is_refused(id) {
            // Dropped: the client's RESET counts its bytes. It has no more credit than a new
            // stream's.
            return if end > INITIAL_STREAM_CREDIT {
                Err(PeerError::CreditExceeded(id))
            } else {
                Ok(())
            };
        }
        let Some(s) = self.peer_stream(now, id, Phase::Pending)? else {
            return Ok(());
        };
        if end > s.recv_max {
            return Err(PeerError::CreditExceeded(id));
        }
        let before = s.ack_value();
        if let Some(f) = s.recv_final {
            if end > f || (fin && end != f) {
                return Err(PeerError::FinalSize(id));
            }
        } else if fin {
            if end < s.recv_highest {
                return Err(PeerError::FinalSize(id));
            }
            s.recv_final = Some(end);
        }
        let new = end.saturating_sub(s.recv_highest);
        s.recv_highest = s.recv_highest.max(end);
        self.recv_session_used += new;
        if self.recv_session_used > self.recv_session_max {
            return Err(PeerError::SessionCreditExceeded);
        }
        // The peer's credit left shrank: what the reads and reservations since allow may be due.
        self.maybe_grant_session();
        self.check_window_held(now);
        let mut s = self.streams.get_mut(&id).expect("peer_stream returned it");
        if s.is_reset() {
            self.recv_session_consumed += new;
            self.maybe_grant_session();
            return Ok(());
        }
        s.recv.insert(offset, data);
        if !self.account_recv(id) {
            // Out of memory for it, or in too many pieces: refused, its bytes consumed.
            self.refuse_stream(id, frame::reset::NO_MEMORY);
            return Ok(());
        }
        s = self
            .streams
            .get_mut(&id)
            .expect("accounting keeps the stream");
        let max_window = self.cfg.stream_window;
        if s.widen_behind_hole(max_window) || s.widen_when_blocked(end, max_window) {
            let threshold = s.recv_window / 8;
            self.extend_grant(now, id, threshold, false);
            s = self.streams.get_mut(&id).expect("a grant keeps the stream");
        }
        let after = s.ack_value();
        if after == before {
            return Ok(());
        }
        if s.phase == Phase::Open && s.read_waiting && (s.recv.has_ready() || s.recv_complete()) {
            s.read_waiting = false;
            self.events.push_back(Event::StreamReadable(id));
        }
        // Ack at once at the end of the stream or after an eighth of a window, else soon.
        if s.recv_complete() || after - s.recv_acked_sent >= s.recv_window / 8 {
            self.mark_window_dirty(id);
        } else if !s.ack_later && !s.window_dirty {
            s.ack_later = true;
            self.ack_later.push(id);
            self.ack_deadline.get_or_insert(now + ACK_DELAY);
        }
        Ok(())
    }

    pub(super) fn on_reset(
        &mut self,
        now: Instant,
        id: StreamId,
        code: u16,
        final_size: u64,
    ) -> Result<(), PeerError> {
        let Some(s) = self.peer_stream(now, id, Phase::Pending)? else {
            // Stale; or a stream refused over the limit (maybe just now, reset before anything
            // else of it came): its client's RESET is here.
            return if self.is_refused(id) {
                self.on_refused_reset(id, final_size)
            } else {
                Ok(())
            };
        };
        if final_size > s.recv_max {
            return Err(PeerError::CreditExceeded(id));
        }
        if final_size < s.recv_highest || s.recv_final.is_some_and(|f| f != final_size) {
            return Err(PeerError::FinalSize(id));
        }
        let new = final_size - s.recv_highest;
        // Bytes received but never read, and bytes still in flight, are consumed now.
        let discarded = if s.is_reset() {
            new
        } else {
            final_size - s.recv.read_offset()
        };
        let reply = (!s.is_reset()).then(|| Frame::Reset {
            stream: id,
            code,
            final_size: s.send.next(),
        });
        self.recv_session_used += new;
        if self.recv_session_used > self.recv_session_max {
            return Err(PeerError::SessionCreditExceeded);
        }
        self.recv_session_consumed += discarded;
        if let Some(reply) = reply {
            self.control.push_back(reply);
            let refused = [
                frame::reset::UNKNOWN_SERVICE,
                frame::reset::CONNECT_FAILED,
                frame::reset::TOO_MANY_STREAMS,
            ];
            if self.role == Role::Client && refused.contains(&code) {
                self.events
                    .push_back(Event::StreamRefused { stream: id, code });
            }
        }
        self.remove_stream(id);
        self.events.push_back(Event::StreamReadable(id));
        self.events.push_back(Event::StreamWritable(id));
        self.maybe_grant_session();
        Ok(())
    }

    /// Server: whether `id` is a stream refused over the limit whose client has not reset it.
    fn is_refused(&self, id: StreamId) -> bool {
        // On every DATA frame: nothing to look up while no stream is refused.
        !self.refused.is_empty()
            && matches!(self.role, Role::Server(node) if id.owner() == node)
            && self.refused.contains(id.counter())
    }

    /// The client's `RESET` of a stream refused over the limit: the bytes it sent on it count
    /// against the session's credit, consumed at once, and the stream is finished.
    fn on_refused_reset(&mut self, id: StreamId, final_size: u64) -> Result<(), PeerError> {
        if final_size > INITIAL_STREAM_CREDIT {
            return Err(PeerError::CreditExceeded(id));
        }
        self.recv_session_used += final_size;
        if self.recv_session_used > self.recv_session_max {
            return Err(PeerError::SessionCreditExceeded);
        }
        self.recv_session_consumed += final_size;
        self.refused.remove(id.counter());
        self.finish_counter(id.counter());
        self.maybe_grant_session();
        Ok(())
    }

    pub(super) fn on_window(
        &mut self,
        id: StreamId,
        acked: u64,
        max: u64,
    ) -> Result<(), PeerError> {
        let window = self.cfg.stream_window;
        let bound = unsent_bound(self.unsent_target, self.sched.bulk_streams());
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        if s.is_reset() {
            return Ok(());
        }
        let before = s.send.buffered();
        s.send.ack(id, acked)?;
        self.held.release(Pool::Send, before - s.send.buffered());
        s.send.set_max(max);
        if s.write_waiting && s.send.room_regained(window, bound) {
            s.write_waiting = false;
            self.events.push_back(Event::StreamWritable(id));
        }
        self.schedule(id);
        self.maybe_remove(id);
        Ok(())
    }
}
