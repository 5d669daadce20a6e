//! Per-stream send buffer: the bytes the application wrote, kept until the peer acks them so
//! that any of them can be resent if the link it went out on dies.

use super::message::MessageBuf;
use super::PeerError;
use crate::ids::StreamId;
use crate::range_set::RangeSet;
use bytes::Bytes;
use std::collections::VecDeque;

/// The next piece a stream wants to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub(crate) offset: u64,
    pub(crate) len: usize,
    pub(crate) fin: bool,
    /// Bytes at offsets never sent before (they consume session credit).
    pub(crate) new_bytes: u64,
}

#[derive(Debug)]
pub(crate) struct SendBuf {
    /// Bytes `[acked, written)`, in order.
    chunks: VecDeque<Bytes>,
    /// Every byte below this was acked by the peer.
    acked: u64,
    /// End of the bytes the application wrote.
    written: u64,
    /// Next offset never sent.
    next: u64,
    /// Peer's stream credit: bytes below this may be sent.
    max: u64,
    /// Ranges below `next` to send again (their link died).
    retransmit: RangeSet,
    /// The application finished writing; the final size is `written`.
    fin: bool,
    /// A FIN is on some live link (or was confirmed).
    fin_sent: bool,
    /// A FIN was sent at least once, so the peer may ack it.
    fin_ever_sent: bool,
    fin_acked: bool,
}

impl SendBuf {
    pub(crate) fn new(initial_credit: u64) -> Self {
        SendBuf {
            chunks: VecDeque::new(),
            acked: 0,
            written: 0,
            next: 0,
            max: initial_credit,
            retransmit: RangeSet::default(),
            fin: false,
            fin_sent: false,
            fin_ever_sent: false,
            fin_acked: false,
        }
    }

    /// Bytes held (written and not yet acked).
    pub(crate) fn buffered(&self) -> u64 {
        self.written - self.acked
    }

    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    pub(crate) fn acked(&self) -> u64 {
        self.acked
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.fin
    }

    pub(crate) fn fin_acked(&self) -> bool {
        self.fin_acked
    }

    /// Bytes written and never sent.
    pub(crate) fn unsent(&self) -> u64 {
        self.written - self.next
    }

    /// Whether a stream that waits for send capacity has enough again, with stream window
    /// `window` and unsent bound `unsent_bound`: an eighth of its window free and at most half
    /// of the bound unsent (the capacity [`Session::stream_send_capacity`] reports is then at
    /// least its waiting mark).
    ///
    /// [`Session::stream_send_capacity`]: super::Session::stream_send_capacity
    pub(crate) fn room_regained(&self, window: u64, unsent_bound: u64) -> bool {
        !self.fin
            && window.saturating_sub(self.buffered()) >= window / 8
            && self.unsent() <= unsent_bound / 2
    }

    /// Bytes written but not yet sent, plus bytes waiting to be resent.
    pub(crate) fn backlog(&self) -> u64 {
        (self.written - self.next) + self.retransmit.total()
    }

    pub(crate) fn write(&mut self, data: Bytes) {
        debug_assert!(!self.fin);
        self.written += data.len() as u64;
        self.chunks.push_back(data);
    }

    pub(crate) fn finish(&mut self) {
        self.fin = true;
    }

    /// Raises the peer's credit; credit never shrinks (an old frame may arrive late).
    pub(crate) fn set_max(&mut self, max: u64) {
        self.max = self.max.max(max);
    }

    /// Applies an end-to-end ack; the FIN counts as one byte at the final offset.
    pub(crate) fn ack(&mut self, id: StreamId, acked: u64) -> Result<(), PeerError> {
        if acked > self.next + u64::from(self.fin_ever_sent) {
            return Err(PeerError::AckBeyondSent(id));
        }
        if self.fin && acked == self.written + 1 {
            self.fin_acked = true;
        }
        let acked = acked.min(self.written);
        if acked <= self.acked {
            return Ok(());
        }
        let mut drop = acked - self.acked;
        while drop > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if (front.len() as u64) <= drop {
                drop -= front.len() as u64;
                self.chunks.pop_front();
            } else {
                let _ = front.split_to(drop as usize);
                drop = 0;
            }
        }
        self.acked = acked;
        self.retransmit.remove_below(acked);
        Ok(())
    }

    /// Puts a sent range back for resending because its link died. Returns how many of its
    /// bytes were still unacknowledged (and so will be sent again).
    pub(crate) fn requeue(&mut self, start: u64, end: u64, fin: bool) -> u64 {
        let (from, to) = (start.max(self.acked), end.min(self.next));
        self.retransmit.insert(from..to);
        if fin && !self.fin_acked {
            self.fin_sent = false;
        }
        to.saturating_sub(from)
    }

    /// Whether `next_segment` would return something, given session credit.
    pub(crate) fn has_sendable(&self, session_credit: u64) -> bool {
        !self.retransmit.is_empty()
            || (self.next < self.written && self.next < self.max && session_credit > 0)
            || (self.fin && !self.fin_sent && self.next == self.written)
    }

    /// Chooses the next segment of at most `max_len` bytes: resends first, then new bytes
    /// within stream and session credit. Does not mark it sent; `mark_sent` does.
    pub(crate) fn next_segment(&self, max_len: usize, session_credit: u64) -> Option<Segment> {
        if let Some(r) = self.retransmit.peek_front(max_len as u64) {
            let fin =
                self.fin && !self.fin_sent && r.end == self.written && self.next == self.written;
            return Some(Segment {
                offset: r.start,
                len: (r.end - r.start) as usize,
                fin,
                new_bytes: 0,
            });
        }
        let room = (self.written - self.next)
            .min(self.max.saturating_sub(self.next))
            .min(session_credit);
        let len = room.min(max_len as u64);
        let end = self.next + len;
        let fin = self.fin && !self.fin_sent && end == self.written;
        if len == 0 && !fin {
            return None;
        }
        Some(Segment {
            offset: self.next,
            len: len as usize,
            fin,
            new_bytes: len,
        })
    }

    pub(crate) fn mark_sent(&mut self, seg: Segment) {
        if seg.new_bytes > 0 {
            self.next += seg.new_bytes;
        } else if seg.len > 0 {
            let taken = self.retransmit.pop_front(seg.len as u64);
            debug_assert_eq!(taken.map(|r| r.start), Some(seg.offset));
        }
        if seg.fin {
            self.fin_sent = true;
            self.fin_ever_sent = true;
        }
    }

    /// Appends the bytes `[offset, offset + len)`, which must be held.
    pub(crate) fn copy_out(&self, offset: u64, len: usize, out: &mut impl MessageBuf) {
        debug_assert!(offset >= self.acked && offset + len as u64 <= self.written);
        let mut skip = (offset - self.acked) as usize;
        let mut left = len;
        for chunk in &self.chunks {
            if left == 0 {
                break;
            }
            if skip >= chunk.len() {
                skip -= chunk.len();
                continue;
            }
            let take = (chunk.len() - skip).min(left);
            out.payload(chunk, skip, skip + take);
            skip = 0;
            left -= take;
        }
    }

    /// Drops everything (the stream was reset).
    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.retransmit = RangeSet::default();
        self.acked = self.written;
    }
}
