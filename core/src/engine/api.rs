//! The application side: opening streams, writing, reading, finishing and resetting them.

use super::reorder::Reorder;
use super::stream::{Phase, Stream};
use super::{
    unsent_bound, Event, OpenError, ReadChunk, Role, Session, StreamError, DRAIN_GRACE_FIRST_RTT,
    DRAIN_GRACE_MARGIN, MAX_DRAIN_GRACE, MIN_BUDGET_WRITE,
};
use crate::budget::Pool;
use crate::frame::{Frame, MAX_SERVICE_NAME};
use crate::ids::{NodeId, StreamId};
use bytes::Bytes;
use std::time::{Duration, Instant};

impl Session {
    /// Opens a stream to `service`, owned by node `owner` (client only). Data may be written
    /// at once; the `OPEN` and the data travel together.
    pub fn open_stream(
        &mut self,
        now: Instant,
        owner: NodeId,
        service: &str,
    ) -> Result<StreamId, OpenError> {
        self.open_stream_spread(now, owner, service, false)
    }

    /// [`Session::open_stream`]; with `pin` the stream's data stays on direct links both ways
    /// (relayed links, [`Session::add_relayed_link`], do not take it: `spread = "pin"`).
    pub fn open_stream_spread(
        &mut self,
        now: Instant,
        owner: NodeId,
        service: &str,
        pin: bool,
    ) -> Result<StreamId, OpenError> {
        if self.role != Role::Client {
            return Err(OpenError::NotClient);
        }
        if service.len() > MAX_SERVICE_NAME {
            return Err(OpenError::NameTooLong);
        }
        let counter = self.next_counter.entry(owner).or_insert(0);
        if *counter > StreamId::MAX_COUNTER {
            return Err(OpenError::IdsExhausted);
        }
        let id = StreamId::new(owner, *counter);
        *counter += 1;
        self.insert_stream(now, id, Phase::Open);
        if let Some(s) = self.streams.get_mut(&id) {
            s.pinned = pin;
        }
        self.opens_queued += 1;
        self.control.push_back(Frame::Open {
            stream: id,
            service: service.to_owned(),
            pin,
        });
        Ok(id)
    }

    /// Bytes the application may write now. Zero arms [`Event::StreamWritable`].
    pub fn stream_send_capacity(&mut self, id: StreamId) -> Result<usize, StreamError> {
        let window = self.cfg.stream_window;
        let bound = unsent_bound(self.unsent_target, self.sched.bulk_streams());
        let s = self.live_stream(id)?;
        if s.send.is_finished() {
            return Err(StreamError::Finished);
        }
        let room = window
            .saturating_sub(s.send.buffered())
            .min(bound.saturating_sub(s.send.unsent()));
        // Below this the stream waits for `StreamWritable` (`SendBuf::room_regained`).
        let mark = (window / 8).min(bound / 2);
        let budget = self.held.budget();
        let (mut cap, mut short) = send_capacity(room, budget.allowance(Pool::Send));
        if short && cap < mark {
            // Waiting for the budget: flag it, then look again, since a release between the
            // first look and the flag saw nobody waiting and woke nobody (the stream would
            // then wait for a release that may never come). The flag may now wake the
            // sessions once for nothing, which costs one retry.
            budget.set_waiting();
            (cap, short) = send_capacity(room, budget.allowance(Pool::Send));
        }
        if cap < mark {
            let s = self.live_stream(id)?;
            s.write_waiting = true;
            if short && !s.budget_waiting {
                s.budget_waiting = true;
                self.budget_waiting.push(id);
            }
        }
        Ok(cap as usize)
    }

    /// Queues bytes for sending; at most the current send capacity.
    pub fn stream_write(&mut self, id: StreamId, data: Bytes) -> Result<(), StreamError> {
        let window = self.cfg.stream_window;
        let s = self.live_stream(id)?;
        if s.send.is_finished() {
            return Err(StreamError::Finished);
        }
        if s.send.buffered() + data.len() as u64 > window {
            return Err(StreamError::Full);
        }
        if !data.is_empty() {
            let n = data.len() as u64;
            s.send.write(data);
            self.held.force(Pool::Send, n);
            self.schedule(id);
        }
        Ok(())
    }

    /// The application finished writing (half-close): a FIN follows the data.
    pub fn stream_finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        let s = self.live_stream(id)?;
        if !s.send.is_finished() {
            s.send.finish();
            self.schedule(id);
        }
        Ok(())
    }

    /// Aborts both directions of a stream and tells the peer. The stream then waits for the
    /// peer's `RESET`, which says how much the peer sent; unless everything the peer will ever
    /// send on it is here already (its FIN and every byte before it): then the peer may have
    /// forgotten the stream (it does once its FIN is acked and ours read) and would take the
    /// `RESET` for a stale one and not answer, so the stream ends now.
    pub fn stream_reset(&mut self, id: StreamId, code: u16) {
        // The map itself, not `live_stream`, so that `self.held` stays usable beside `s`.
        let Some(s) = self.streams.get_mut(&id).filter(|s| !s.is_reset()) else {
            return;
        };
        self.held.release(Pool::Send, s.send.buffered());
        if s.phase == Phase::Pending {
            self.pending -= 1;
            self.pending_charged -= s.charged;
        }
        s.phase = Phase::Reset;
        let complete = s.recv_complete();
        let discarded = s.recv_highest - s.recv.read_offset();
        s.send.clear();
        s.recv = Reorder::default();
        let final_size = s.send.next();
        self.recv_session_consumed += discarded;
        self.control.push_back(Frame::Reset {
            stream: id,
            code,
            final_size,
        });
        // Gives back its receive memory: a reset stream holds none.
        self.account_recv(id);
        self.maybe_grant_session();
        if complete {
            self.remove_stream(id);
        }
    }

    /// Resets a stream on the engine's own account (out of memory, no `OPEN` in time), as
    /// [`Session::stream_reset`] does, and tells its task, if it has one.
    pub(super) fn refuse_stream(&mut self, id: StreamId, code: u16) {
        self.stream_reset(id, code);
        if matches!(self.role, Role::Server(_)) {
            self.events.push_back(Event::Refused { code });
        }
        self.events.push_back(Event::StreamReadable(id));
        self.events.push_back(Event::StreamWritable(id));
    }

    /// Reads up to `max` in-order bytes, or the FIN.
    pub fn stream_read(
        &mut self,
        now: Instant,
        id: StreamId,
        max: usize,
    ) -> Result<ReadChunk, StreamError> {
        let s = self.live_stream(id)?;
        if let Some(chunk) = s.recv.read(max) {
            let n = chunk.len() as u64;
            let threshold = s.recv_window / 4;
            // Reading only lowers what the stream holds: the accounting cannot refuse it.
            self.account_recv(id);
            self.extend_grant(now, id, threshold, true);
            self.recv_session_consumed += n;
            self.maybe_grant_session();
            self.check_window_held(now);
            return Ok(ReadChunk::Data(chunk));
        }
        if s.recv_final == Some(s.recv.read_offset()) {
            if !s.recv_fin_read {
                s.recv_fin_read = true;
                self.maybe_remove(id);
            }
            return Ok(ReadChunk::Fin);
        }
        s.read_waiting = true;
        Ok(ReadChunk::Blocked)
    }

    /// Streams alive (including reset ones awaiting the peer's reset).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Bytes buffered for reading in all streams.
    pub fn recv_buffered_bytes(&self) -> u64 {
        self.streams
            .values()
            .map(|s| s.recv.buffered() as u64)
            .sum()
    }

    /// The largest receive and send buffers of any one stream, bytes.
    pub fn max_stream_buffered(&self) -> (u64, u64) {
        self.streams.values().fold((0, 0), |(r, w), s| {
            (r.max(s.recv.buffered() as u64), w.max(s.send.buffered()))
        })
    }

    /// Server: the node is stopping; tells the client once (`DRAINING`, a control frame, sent
    /// again on another link if the one it went on dies), so that it opens new streams on the
    /// cluster's other nodes.
    pub fn start_draining(&mut self, now: Instant) {
        if matches!(self.role, Role::Server(_)) && self.draining.is_none() {
            self.draining = Some(now);
            self.control.push_back(Frame::Draining);
        }
    }

    /// Server: whether a stream whose `OPEN` arrived at `now` may have been opened by the client
    /// before it heard `DRAINING`, and is served rather than refused: not draining, or within
    /// [`Session::drain_grace`] of the drain's start. A cluster's client opens nothing on a
    /// node it knows drains while another node is up, so what arrives in that time was sent
    /// before `DRAINING` reached it (one way on one link, one way back on another); refusing it
    /// would reset connections a moment's difference would have sent to another node.
    pub fn opened_before_drain_heard(&self, now: Instant) -> bool {
        self.draining
            .is_none_or(|at| now.saturating_duration_since(at) < self.drain_grace())
    }

    /// How long after its start a drain still serves new streams (see
    /// [`Session::opened_before_drain_heard`]): twice the slowest link's smoothed RTT plus four
    /// times the largest variation and [`DRAIN_GRACE_MARGIN`], at most [`MAX_DRAIN_GRACE`];
    /// before any RTT sample, with [`DRAIN_GRACE_FIRST_RTT`].
    pub fn drain_grace(&self) -> Duration {
        let rtt = self.path_rtt().unwrap_or(DRAIN_GRACE_FIRST_RTT);
        let var = self
            .links
            .values()
            .map(|l| l.stats.rtt.var)
            .max()
            .unwrap_or_default();
        (rtt * 2 + var * 4 + DRAIN_GRACE_MARGIN).min(MAX_DRAIN_GRACE)
    }

    /// Client: the client stops in order; tells the node the session is over (`CLOSE` code
    /// [`crate::frame::close::SESSION_OVER`] on one link), so that it ends it at once instead of
    /// keeping it for its grace.
    pub fn end_session(&mut self) {
        if self.role == Role::Client {
            self.control
                .push_back(Frame::Close(crate::frame::close::SESSION_OVER));
        }
    }

    /// Client: this session replaces the one whose secret is `secret`, given up after the
    /// client's grace with no link to the node: tells the node once (`FORGET`, a control
    /// frame, sent again on another link if the one it went on dies), so that it ends that
    /// session, and closes its service connections, now rather than after its own grace.
    pub fn forget_session(&mut self, secret: crate::frame::SecretBytes) {
        if self.role == Role::Client {
            self.control.push_back(Frame::Forget(secret));
        }
    }

    /// Resets every stream (the session is going away).
    pub fn reset_all(&mut self, code: u16) {
        self.reset_where(code, |_| true);
    }

    /// Client: resets the streams opened with `pin`, whose data goes on the node's own links
    /// only, and returns how many: the node has had no link of its own for the client's grace,
    /// and only its pinned streams need one (the others go on through the other nodes).
    pub fn reset_pinned(&mut self, code: u16) -> usize {
        self.reset_where(code, |s| s.pinned && !s.is_reset())
    }

    /// Resets the streams `which` picks, waking their tasks; how many it picked.
    fn reset_where(&mut self, code: u16, which: impl Fn(&Stream) -> bool) -> usize {
        let ids: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, s)| which(s))
            .map(|(&id, _)| id)
            .collect();
        for &id in &ids {
            self.stream_reset(id, code);
            self.events.push_back(Event::StreamReadable(id));
            self.events.push_back(Event::StreamWritable(id));
        }
        ids.len()
    }
}

/// What a stream with `room` left in its window may write when the send pool allows
/// `available`, and whether the pool is what limits it.
fn send_capacity(room: u64, available: u64) -> (u64, bool) {
    if available >= room {
        (room, false)
    } else if available >= MIN_BUDGET_WRITE {
        (available, true)
    } else {
        (0, true)
    }
}
