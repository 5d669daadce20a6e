//! Streams and their windows: per-stream state, credit grants and window autotuning, the
//! session-wide credit, and the bookkeeping that queues a stream for sending or removes it.

use super::reorder::Reorder;
use super::send::SendBuf;
use super::{
    Event, Role, Session, StreamError, FIRST_GRANT_RTTS, INITIAL_STREAM_CREDIT, PENDING_MEMORY,
    SEGMENT_WINDOW_BYTES, SMALL_SEGMENT, WINDOW_HELD_EVERY,
};
use crate::budget::Pool;
use crate::frame::Frame;
use crate::ids::StreamId;
use std::time::Instant;

/// Where a stream is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Server: data arrived before the stream's `OPEN`; it is kept, not yet readable.
    Pending,
    /// Open (the client's from the start, a node's once its `OPEN` arrived).
    Open,
    /// We sent a `RESET` and wait for the peer's; data is accounted and dropped.
    Reset,
}

/// Whether a stream waits in the scheduler, and as which class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Queued {
    /// Not queued.
    No,
    /// Queued as interactive (a small backlog).
    Interactive,
    /// Queued as bulk.
    Bulk,
}

impl Queued {
    pub(super) fn is_queued(self) -> bool {
        self != Queued::No
    }
}

#[derive(Debug)]
pub(super) struct Stream {
    pub(super) send: SendBuf,
    pub(super) recv: Reorder,
    /// Stream credit granted to the peer.
    pub(super) recv_max: u64,
    /// The credit before the last grant (0 before any): the peer may not have the last grant
    /// yet, so a frame that ends here or at `recv_max` was cut short by the credit.
    pub(super) recv_max_before: u64,
    /// The credit limit at which the window last doubled because the peer reached it (see
    /// [`Stream::widen_when_blocked`]); a resent frame that reaches it again does not count.
    pub(super) blocked_at: u64,
    /// Highest offset received (for session accounting).
    pub(super) recv_highest: u64,
    pub(super) recv_final: Option<u64>,
    pub(super) recv_fin_read: bool,
    /// The `acked` value of the last `WINDOW` we sent.
    pub(super) recv_acked_sent: u64,
    pub(super) phase: Phase,
    /// Whether it waits in the scheduler, and in which class.
    pub(super) queued: Queued,
    /// In `blocked_on_session`.
    pub(super) session_blocked: bool,
    pub(super) window_dirty: bool,
    pub(super) ack_later: bool,
    pub(super) read_waiting: bool,
    pub(super) write_waiting: bool,
    /// In `budget_waiting`: a write or a grant waits for the memory budget.
    pub(super) budget_waiting: bool,
    /// The receive window this stream has grown to (autotuned from `INITIAL_STREAM_CREDIT`
    /// up to `Config::stream_window`).
    pub(super) recv_window: u64,
    /// Its frames stay on direct links (`spread = "pin"`; the client's choice, told to the owner
    /// in `OPEN`): relayed links do not take its data.
    pub(super) pinned: bool,
    /// When credit was last extended (or the stream created), for autotuning.
    pub(super) last_grant: Instant,
    /// What the stream holds of the budget's receive pool: [`Stream::recv_charge`] as of the
    /// last [`Session::account_recv`] (or more, right after a grant reserved it).
    pub(super) charged: u64,
    /// Its reorder buffer's segments as counted in `Session::recv_segments`.
    pub(super) segments: usize,
    /// Its [`Stream::recv_reservation`] as counted in `Session::recv_reserved`.
    pub(super) reserved: u64,
}

impl Stream {
    /// We reset the stream and wait for the peer's `RESET`.
    pub(super) fn is_reset(&self) -> bool {
        self.phase == Phase::Reset
    }

    pub(super) fn new(now: Instant, phase: Phase) -> Self {
        Stream {
            send: SendBuf::new(INITIAL_STREAM_CREDIT),
            recv: Reorder::default(),
            recv_max: INITIAL_STREAM_CREDIT,
            recv_max_before: 0,
            blocked_at: 0,
            recv_highest: 0,
            recv_final: None,
            recv_fin_read: false,
            recv_acked_sent: 0,
            phase,
            queued: Queued::No,
            session_blocked: false,
            window_dirty: false,
            ack_later: false,
            read_waiting: true,
            write_waiting: false,
            budget_waiting: false,
            recv_window: INITIAL_STREAM_CREDIT,
            pinned: false,
            last_grant: now,
            charged: 0,
            segments: 0,
            reserved: 0,
        }
    }

    /// Credit granted to the peer and not yet read (what the peer may make us buffer).
    pub(super) fn outstanding(&self) -> u64 {
        self.recv_max - self.recv.read_offset()
    }

    /// The credit reserved for the stream's receive side: its outstanding credit beyond
    /// `INITIAL_STREAM_CREDIT`. The first 2 MiB of credit are not reserved when granted: the
    /// protocol grants them before any window update, so the budget could not refuse them, and
    /// an idle stream then costs the budget nothing. What arrives in them is counted when it
    /// arrives (see [`Stream::recv_charge`]).
    pub(super) fn recv_reservation(&self) -> u64 {
        if self.is_reset() {
            0
        } else {
            self.outstanding().saturating_sub(INITIAL_STREAM_CREDIT)
        }
    }

    /// Brings [`Stream::reserved`] up to its [`Stream::recv_reservation`] now, for the session's
    /// sum (`Session::recv_reserved`): the value counted before and the one now.
    pub(super) fn recount_reservation(&mut self) -> (u64, u64) {
        let now = self.recv_reservation();
        (std::mem::replace(&mut self.reserved, now), now)
    }

    /// What the stream's receive side must hold of the budget: the credit reserved beyond the
    /// first 2 MiB, or the memory its reorder buffer holds (bytes, what copies allocated and
    /// each segment's overhead), whichever is more.
    pub(super) fn recv_charge(&self) -> u64 {
        if self.is_reset() {
            0
        } else {
            self.recv_reservation().max(self.recv.cost())
        }
    }

    /// Most segments its reorder buffer may hold: one per [`SEGMENT_WINDOW_BYTES`] of its
    /// window, at least 1,024. A sender whose frames average a few hundred bytes beyond a hole
    /// reaches it; wanmux's own sender sends a stream's data in frames of kilobytes, and small
    /// frames that arrive in order are appended to each other.
    pub(super) fn max_segments(&self) -> usize {
        usize::try_from(self.recv_window / SEGMENT_WINDOW_BYTES)
            .unwrap_or(usize::MAX)
            .max(1024)
    }

    /// Doubles the receive window (up to `max_window`) when half of it lies beyond a hole;
    /// returns whether it did, and the caller extends the credit. A hole is bytes still on
    /// their way on a slower link, or lost and being resent; the application cannot read past
    /// it, so the autotuning of [`Session::extend_grant`], which follows reading, stands still
    /// while the faster links use up the credit and stop (bench/RESULTS.md, lessons: receive
    /// windows widen). The window stays bounded by `stream_window` and the memory budget,
    /// whatever order the peer sends in.
    pub(super) fn widen_behind_hole(&mut self, max_window: u64) -> bool {
        let beyond = self.recv_highest - self.recv.contiguous();
        beyond >= self.recv_window / 2 && self.double_window(max_window)
    }

    /// Doubles the receive window (up to `max_window`) when a frame ending at `end` stopped at
    /// a credit limit the peer had (the last grant's, or the one before, which may still be all
    /// the peer knows) and the application keeps up (it left less than a quarter of the window
    /// unread); returns whether it did, and the caller extends the credit. A sender cuts its
    /// last frame at the credit limit when the window holds it back, which the autotuning of
    /// [`Session::extend_grant`] only infers from reading a quarter of the window within two
    /// round trips, and only once a quarter was read; meanwhile the links run half empty
    /// (bench/RESULTS.md, lessons: receive windows widen). A slow application does not widen
    /// the window: the credit waits for it to read.
    pub(super) fn widen_when_blocked(&mut self, end: u64, max_window: u64) -> bool {
        // On the data path: the equality tests rule out nearly every frame first.
        if (end != self.recv_max && end != self.recv_max_before) || end <= self.blocked_at {
            return false;
        }
        let unread = self
            .recv
            .contiguous()
            .saturating_sub(self.recv.read_offset());
        if unread >= self.recv_window / 4 || !self.double_window(max_window) {
            return false;
        }
        self.blocked_at = end;
        true
    }

    /// Doubles the receive window, up to `max_window`; false if it is there already.
    pub(super) fn double_window(&mut self, max_window: u64) -> bool {
        if self.recv_window >= max_window {
            return false;
        }
        self.recv_window = (self.recv_window * 2).min(max_window);
        true
    }

    /// All bytes up to the final size arrived.
    pub(super) fn recv_complete(&self) -> bool {
        self.recv_final == Some(self.recv.contiguous())
    }

    /// The ack to send: contiguous bytes, plus one for a FIN that arrived.
    pub(super) fn ack_value(&self) -> u64 {
        self.recv.contiguous() + u64::from(self.recv_complete())
    }
}

impl Session {
    /// Adds a live stream with the initial credit; its window grows as it is used.
    pub(super) fn insert_stream(&mut self, now: Instant, id: StreamId, phase: Phase) {
        self.streams.insert(id, Stream::new(now, phase));
    }

    /// Raises a stream's credit toward `read + recv_window` if that adds at least `threshold`
    /// bytes, as far as the budget allows; a stream the budget cut short waits in
    /// `budget_waiting`. The window autotunes: when the application consumed a quarter of it
    /// within two round trips of the last grant (`threshold` is a quarter of the window when
    /// the application reads), the window was what limited the stream, so it doubles
    /// (up to `stream_window`). A stream that moves little keeps the initial window. (See also
    /// [`Stream::widen_behind_hole`], after which `on_data` passes `autotune` false.)
    pub(super) fn extend_grant(
        &mut self,
        now: Instant,
        id: StreamId,
        threshold: u64,
        autotune: bool,
    ) {
        let max_window = self.cfg.stream_window;
        let rtt = self.path_rtt();
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.is_reset() || s.recv_final.is_some() {
            return;
        }
        let want = (s.recv.read_offset() + s.recv_window).saturating_sub(s.recv_max);
        if want < threshold.max(1) {
            return;
        }
        if autotune && s.recv_window < max_window {
            // The first quarter takes a sender in start-up longer: see `FIRST_GRANT_RTTS`.
            let rtts = if s.recv_max_before == 0 {
                FIRST_GRANT_RTTS
            } else {
                2
            };
            let quick =
                rtt.is_none_or(|rtt| now.saturating_duration_since(s.last_grant) < rtt * rtts);
            if quick {
                s.recv_window = (s.recv_window * 2).min(max_window);
            }
        }
        let want = (s.recv.read_offset() + s.recv_window).saturating_sub(s.recv_max);
        // Credit within the initial allowance is not reserved; beyond it the budget covers it,
        // and what the stream holds already (the bytes it buffers) counts toward it.
        let reserved_after = (s.outstanding() + want).saturating_sub(INITIAL_STREAM_CREDIT);
        let need = reserved_after.saturating_sub(s.charged);
        let got = if need == 0 {
            0
        } else {
            let min = (s.recv_window / 8).min(need);
            self.held.reserve_up_to(Pool::Recv, need, min)
        };
        s.charged += got;
        if s.phase == Phase::Pending {
            self.pending_charged += got;
        }
        // `need <= want`: the stream's charge covers its reservation before the grant.
        let grant = want - (need - got);
        if grant < want && !s.budget_waiting {
            s.budget_waiting = true;
            self.budget_waiting.push(id);
        }
        if grant > 0 {
            s.recv_max_before = s.recv_max;
            s.recv_max += grant;
            s.last_grant = now;
            if !s.window_dirty {
                s.window_dirty = true;
                self.dirty_windows.push_back(id);
            }
            let (was, now) = s.recount_reservation();
            self.recv_reserved = self.recv_reserved - was + now;
            self.maybe_grant_session();
        }
    }

    /// Retries what waited for the memory budget: grants for readers and capacity for
    /// writers (they get [`Event::StreamWritable`] and ask again). Call after the budget
    /// reported a release ([`Event::BudgetReleased`], from this or another session).
    pub fn retry_budget(&mut self, now: Instant) {
        for id in std::mem::take(&mut self.budget_waiting) {
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            s.budget_waiting = false;
            if s.write_waiting {
                s.write_waiting = false;
                self.events.push_back(Event::StreamWritable(id));
            }
            let threshold = s.recv_window / 8;
            self.extend_grant(now, id, threshold, true);
        }
    }

    /// Whether some stream waits for the memory budget.
    pub fn budget_blocked(&self) -> bool {
        !self.budget_waiting.is_empty()
    }

    pub(super) fn live_stream(&mut self, id: StreamId) -> Result<&mut Stream, StreamError> {
        match self.streams.get_mut(&id) {
            Some(s) if !s.is_reset() => Ok(s),
            _ => Err(StreamError::Closed),
        }
    }

    pub(super) fn schedule(&mut self, id: StreamId) {
        let credit = self.send_session_max - self.send_session_used;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.queued.is_queued() || s.is_reset() {
            return;
        }
        if s.send.has_sendable(credit) {
            let backlog = s.send.backlog();
            let interactive = self.sched.push(id, backlog, s.pinned);
            s.queued = if interactive {
                Queued::Interactive
            } else {
                Queued::Bulk
            };
            if backlog <= SMALL_SEGMENT as u64 {
                self.small_queued = true;
            }
            if !interactive {
                self.forget_small(id);
            }
        } else if credit == 0 && s.send.has_sendable(1) && !s.session_blocked {
            s.session_blocked = true;
            self.blocked_on_session.push(id);
        }
    }

    pub(super) fn mark_window_dirty(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            if !s.window_dirty && !s.is_reset() {
                s.window_dirty = true;
                self.dirty_windows.push_back(id);
            }
        }
    }

    /// Extends the session credit once it can grow by half the window, or by a sixteenth of it
    /// while the peer has less than a quarter of the window left (so that a session whose
    /// applications read little is not held up to half a window short of its due). It covers
    /// what the application has read, `session_window` more, and the streams' reserved credit
    /// (`recv_reserved`): so the window bounds only the credit the memory budget does not
    /// cover (each stream's first 2 MiB), and streams whose applications stopped reading hold
    /// their own windows, in the budget, not the session's. A trial's client had 10-30
    /// downloads no one read fill its session window, and its other connections stalled.
    pub(super) fn maybe_grant_session(&mut self) {
        let w = self.cfg.session_window;
        let max = self.recv_session_consumed + w + self.recv_reserved;
        let grow = max.saturating_sub(self.recv_session_max);
        let left = self.recv_session_max.saturating_sub(self.recv_session_used);
        if grow >= w / 2 || (grow >= w / 16 && left < w / 4) {
            self.recv_session_max = max;
            self.session_window_dirty = true;
        }
    }

    /// Reports [`Event::WindowHeld`] when unread bytes beyond the reserved credit reach nine
    /// tenths of the session window (at most once a minute, and again only after they fell to
    /// half of it): the one sign of a session whose other streams stall behind applications
    /// that stopped reading.
    pub(super) fn check_window_held(&mut self, now: Instant) {
        let w = self.cfg.session_window;
        let held = self
            .recv_session_used
            .saturating_sub(self.recv_session_consumed)
            .saturating_sub(self.recv_reserved);
        if self.window_held {
            self.window_held = held > w / 2;
            return;
        }
        let quiet = self
            .window_held_at
            .is_none_or(|at| now.saturating_duration_since(at) >= WINDOW_HELD_EVERY);
        if held >= w / 10 * 9 && quiet {
            self.window_held = true;
            self.window_held_at = Some(now);
            let streams = self
                .streams
                .values()
                .filter(|s| s.recv.buffered() > 0)
                .count();
            self.events.push_back(Event::WindowHeld { held, streams });
        }
    }

    /// Removes a stream whose both directions are done.
    pub(super) fn maybe_remove(&mut self, id: StreamId) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        if !(s.send.fin_acked() && s.recv_fin_read) {
            return;
        }
        if s.window_dirty || s.ack_later {
            // The final ack must still reach the peer, which waits for it to finish.
            self.control.push_back(Frame::Window {
                stream: id,
                acked: s.ack_value(),
                max: s.recv_max,
            });
        }
        self.remove_stream(id);
    }

    /// `id` no longer holds the lanes (it turned bulk or ended).
    pub(super) fn forget_small(&mut self, id: StreamId) {
        if let Some(at) = self.small_at.remove(&id) {
            self.small_order.remove(&(at, id));
            self.last_small = self.small_order.last().map(|&(at, _)| at);
        }
    }

    pub(super) fn remove_stream(&mut self, id: StreamId) {
        self.forget_small(id);
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        self.recv_reserved -= s.reserved;
        self.held.release(Pool::Recv, s.charged);
        self.recv_segments -= s.segments;
        if s.phase == Phase::Pending {
            self.pending -= 1;
            self.pending_charged -= s.charged;
        }
        if !s.is_reset() {
            self.held.release(Pool::Send, s.send.buffered());
        }
        if matches!(self.role, Role::Server(_)) {
            self.finish_counter(id.counter());
        }
    }

    /// Server: records that the stream with this counter (of this node) ended. Counters, not
    /// ids: a counter has 48 bits, so `counter + 1` cannot overflow where `id + 1` could (the
    /// last id of node 65535 is `u64::MAX`). The set stays a few ranges for a client that
    /// numbers its streams in order: one gap per stream still open or on its way, at most
    /// about two per stream it may hold. A client that ends streams with spaced ids leaves one
    /// range per stream; past `2 × max_streams +` [`super::MAX_FINISHED_RANGES`] ranges the lowest
    /// gap is filled, and its counters are taken for finished streams: a live stream among them
    /// is found in `streams` first, and an orderly client has no stream on its way that far
    /// behind the ones it has open.
    pub(super) fn finish_counter(&mut self, counter: u64) {
        self.finished.insert(counter..counter + 1);
        while self.finished.ranges() > self.max_finished_ranges {
            self.finished.fill_first_gap();
        }
    }

    /// Brings the budget's count of a stream's receive memory up to date with what it holds
    /// now ([`Stream::recv_charge`]), and the session's count of reorder segments. A stream the
    /// application has (`Open`) is charged whatever it holds, since the protocol let the peer
    /// send it; one still waiting for its `OPEN` must fit in the budget, and with the session's
    /// other such streams in [`PENDING_MEMORY`]. Returns false when it
    /// does not, or when the stream or the session holds more segments than allowed: the
    /// caller refuses the stream (`RESET` code 5).
    pub(super) fn account_recv(&mut self, id: StreamId) -> bool {
        let Some(s) = self.streams.get_mut(&id) else {
            return true;
        };
        // After a read, an arrival or a reset: its reservation as `recv_reserved` counts it.
        let (was, now) = s.recount_reservation();
        self.recv_reserved = self.recv_reserved - was + now;
        let segments = if s.is_reset() { 0 } else { s.recv.segments() };
        self.recv_segments = self.recv_segments - s.segments + segments;
        s.segments = segments;
        let target = s.recv_charge();
        let pending = s.phase == Phase::Pending;
        if target <= s.charged {
            self.held.release(Pool::Recv, s.charged - target);
            if pending {
                self.pending_charged -= s.charged - target;
            }
            s.charged = target;
        } else {
            let extra = target - s.charged;
            if pending {
                // Its share first, so that one client cannot take what others' streams need.
                if self.pending_charged + extra > PENDING_MEMORY
                    || self.held.reserve_up_to(Pool::Recv, extra, extra) < extra
                {
                    return false;
                }
                self.pending_charged += extra;
            } else {
                self.held.force(Pool::Recv, extra);
            }
            s.charged = target;
        }
        // The session's cap grows with the credit it grants beyond its window, as the credit
        // does (`maybe_grant_session`).
        let reserved =
            usize::try_from(self.recv_reserved / SEGMENT_WINDOW_BYTES).unwrap_or(usize::MAX);
        segments <= s.max_segments()
            && self.recv_segments <= self.max_recv_segments.saturating_add(reserved)
    }
}
