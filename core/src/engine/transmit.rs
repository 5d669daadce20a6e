//! Transmit: filling one message for a link with its pongs, control frames, window updates,
//! lane duplicates and stream data chosen by the scheduler.

use super::lanes::{carries_windows, Pick};
use super::link::{LinkState, Sent};
use super::message::MessageBuf;
use super::sched::QUANTUM;
use super::stream::Queued;
use super::{
    unsent_bound, Event, LaneDup, OpenDup, Session, COPY_MIN_RTT, MAX_LANE_DUPS, MIN_TAIL,
    SMALL_SEGMENT,
};
use crate::frame::{self, Frame, DATA_HEADER, PING_LEN, SESSION_WINDOW_LEN, WINDOW_LEN};
use crate::ids::LinkId;
use std::time::Instant;

/// An empty control queue keeps room for this many frames at most.
const SHRINK_ABOVE: usize = 1024;

impl Session {
    /// Whether any link could send something now: control frames, window updates or stream
    /// data, which go on whichever link asks first.
    pub fn wants_transmit(&self) -> bool {
        !self.control.is_empty()
            || !self.dirty_windows.is_empty()
            || self.session_window_dirty
            || !self.sched.is_empty()
    }

    /// Fills `buf` (cleared first) with the plaintext of one message for `link`: that link's
    /// pongs, control frames, window updates, then stream data chosen by the scheduler, then a
    /// ping if one is due. Returns `false` when there is nothing to send. `buf` is one buffer
    /// (a `BytesMut`, stream data copied in) or a [`Gathered`](super::Gathered) message (stream
    /// data referenced, for the caller to copy once it has let go of the session).
    pub fn poll_transmit(&mut self, now: Instant, link: LinkId, buf: &mut impl MessageBuf) -> bool {
        buf.clear();
        let lanes = self.lanes(now);
        let pick = self.pick_for(link, lanes);
        let windows = (!self.dirty_windows.is_empty() || self.session_window_dirty)
            && carries_windows(pick, lanes)
            && !self.stalled_beside_another(now, link);
        let Some(mut l) = self.links.remove(&link) else {
            return false;
        };
        let limit = l.max_message - PING_LEN; // room for the trailing ping
        for token in l.pongs_owed.drain(..) {
            Frame::Pong(token).encode(buf.frames());
        }
        // While lanes are reserved, control frames go on them only; window updates stay off
        // dedicated lanes (see `carries_windows`).
        let control = matches!(pick, Pick::Any | Pick::Lane { .. });
        // Whether this message carries the other lane's copies, which are not recorded here.
        let mut copies = false;
        if control || matches!(pick, Pick::Spare) {
            let before = buf.len();
            self.fill_open_dups(link, buf, limit);
            copies |= buf.len() > before;
        }
        while let Some(f) = self.control.front().filter(|_| control) {
            if buf.len() + f.encoded_len() > limit {
                break;
            }
            let f = self.control.pop_front().expect("front exists");
            let open = matches!(f, Frame::Open { .. });
            self.opens_queued -= usize::from(open);
            f.encode(buf.frames());
            let short = l.stats.rtt.smoothed.is_some_and(|r| r < COPY_MIN_RTT);
            if let (true, false, Pick::Lane { twin: Some(twin) }) = (open, short, pick) {
                if self.open_dups.len() >= MAX_LANE_DUPS {
                    self.open_dups.pop_front();
                }
                self.open_dups.push_back(OpenDup {
                    lane: twin,
                    frame: f.clone(),
                });
            }
            l.record(Sent::Control(f));
        }
        if self.control.is_empty() && self.control.capacity() > SHRINK_ABOVE {
            // A burst (a client resetting thousands of streams) leaves no lasting memory.
            self.control.shrink_to(SHRINK_ABOVE);
        }
        while windows && buf.len() + WINDOW_LEN <= limit {
            let Some(id) = self.dirty_windows.pop_front() else {
                break;
            };
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            if !s.window_dirty {
                continue;
            }
            s.window_dirty = false;
            let acked = s.ack_value();
            Frame::Window {
                stream: id,
                acked,
                max: s.recv_max,
            }
            .encode(buf.frames());
            s.recv_acked_sent = acked;
            l.record(Sent::Window {
                stream: id,
                acked,
                max: s.recv_max,
            });
        }
        if windows && self.session_window_dirty && buf.len() + SESSION_WINDOW_LEN <= limit {
            self.session_window_dirty = false;
            Frame::SessionWindow {
                max: self.recv_session_max,
            }
            .encode(buf.frames());
            l.record(Sent::SessionWindow);
        }
        if matches!(pick, Pick::Lane { .. } | Pick::Spare) {
            let before = buf.len();
            self.fill_dups(link, buf, limit);
            copies |= buf.len() > before;
        }
        self.fill_data(now, &mut l, buf, limit, pick);
        // Drop entries the peer has acked end to end, then ask for confirmation of the rest.
        let streams = &self.streams;
        l.pop_front_while(|s| match s {
            Sent::Data {
                stream, end, fin, ..
            } => streams.get(stream).is_none_or(|st| {
                st.is_reset() || (st.send.acked() >= *end && (!fin || st.send.fin_acked()))
            }),
            _ => false,
        });
        // A lane that sends only copies has nothing unconfirmed and would not be pinged: the
        // lane chosen to be measured (`nearest`) would stay unmeasured, and stay the second
        // lane, while a nearer link waits for its turn to be measured.
        if l.wants_ping(now) || (copies && l.wants_first_sample()) {
            let token = self.next_ping;
            self.next_ping += 1;
            Frame::Ping(token).encode(buf.frames());
            l.ping_sent(now, token, l.stats.bytes_sent + buf.len() as u64);
        }
        l.stats.bytes_sent += buf.len() as u64;
        let sent = !buf.is_empty();
        if sent {
            l.writer = l.writer.sent(now);
        }
        self.links.insert(link, l);
        if sent {
            self.check_saturation(now);
        }
        sent
    }

    /// Sends again, on `link`, the `OPEN` frames the other lane sent, for streams still open.
    pub(super) fn fill_open_dups(&mut self, link: LinkId, buf: &mut impl MessageBuf, limit: usize) {
        let mut i = 0;
        while i < self.open_dups.len() {
            if self.open_dups[i].lane != link {
                i += 1;
                continue;
            }
            if buf.len() + self.open_dups[i].frame.encoded_len() > limit {
                break;
            }
            let f = self.open_dups.remove(i).expect("index in range").frame;
            let live = matches!(&f, Frame::Open { stream, .. }
                if self.streams.get(stream).is_some_and(|s| !s.is_reset()));
            if live {
                f.encode(buf.frames());
            }
        }
    }

    /// Sends again, on `link`, the small segments the other lane sent that are not acked yet.
    pub(super) fn fill_dups(&mut self, link: LinkId, buf: &mut impl MessageBuf, limit: usize) {
        let mut i = 0;
        while i < self.lane_dups.len() {
            let LaneDup {
                lane,
                stream: id,
                offset,
                len,
                fin,
            } = self.lane_dups[i];
            if lane != link {
                i += 1;
                continue;
            }
            if buf.len() + DATA_HEADER + len > limit {
                break;
            }
            self.lane_dups.remove(i);
            let Some(s) = self.streams.get(&id) else {
                continue;
            };
            let unacked = if len > 0 {
                offset >= s.send.acked()
            } else {
                fin && !s.send.fin_acked()
            };
            if s.is_reset() || !unacked {
                continue;
            }
            frame::encode_data_header(buf.frames(), id, offset, len, fin);
            s.send.copy_out(offset, len, buf);
        }
    }

    pub(super) fn fill_data(
        &mut self,
        now: Instant,
        l: &mut LinkState,
        buf: &mut impl MessageBuf,
        limit: usize,
        pick: Pick,
    ) {
        let window = self.cfg.stream_window;
        while buf.len() + DATA_HEADER + MIN_TAIL <= limit {
            let next = match pick {
                Pick::Any => self.sched.pop(l.relayed),
                Pick::Lane { .. } => self.sched.pop_interactive(l.relayed),
                Pick::Bulk => self.sched.pop_bulk(l.relayed),
                Pick::Spare => None,
            };
            let Some(id) = next else { break };
            let credit = self.send_session_max - self.send_session_used;
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            let interactive = std::mem::replace(&mut s.queued, Queued::No) == Queued::Interactive;
            if s.is_reset() {
                continue;
            }
            let space = limit - buf.len() - DATA_HEADER;
            let max_len = if self.sched.is_empty() {
                space
            } else {
                space.min(QUANTUM)
            };
            let Some(seg) = s.send.next_segment(max_len, credit) else {
                self.schedule(id);
                continue;
            };
            frame::encode_data_header(buf.frames(), id, seg.offset, seg.len, seg.fin);
            s.send.copy_out(seg.offset, seg.len, buf);
            s.send.mark_sent(seg);
            // Out of the queue while it is served: counted among the bulk streams unless it is
            // interactive. The bound is worked out only for a stream that waits.
            if seg.new_bytes > 0
                && s.write_waiting
                && s.send.room_regained(
                    window,
                    unsent_bound(
                        self.unsent_target,
                        self.sched.bulk_streams() + usize::from(!interactive),
                    ),
                )
            {
                s.write_waiting = false;
                self.events.push_back(Event::StreamWritable(id));
            }
            if interactive && seg.len <= SMALL_SEGMENT {
                self.last_small = Some(now);
                if let Some(before) = self.small_at.insert(id, now) {
                    self.small_order.remove(&(before, id));
                }
                self.small_order.insert((now, id));
                self.small_queued = false;
                // The copy for the other lane, unless that lane is a relayed link and the stream
                // is pinned (a relayed link takes no pinned stream's data, copies included), or
                // this lane's path is short (`COPY_MIN_RTT`).
                let pinned = s.pinned;
                let short = l.stats.rtt.smoothed.is_some_and(|r| r < COPY_MIN_RTT);
                let twin = match pick {
                    Pick::Lane { twin: Some(twin) } if !short => Some(twin),
                    _ => None,
                }
                .filter(|twin| !(pinned && self.links.get(twin).is_some_and(|t| t.relayed)));
                if let Some(twin) = twin {
                    if self.lane_dups.len() >= MAX_LANE_DUPS {
                        self.lane_dups.pop_front();
                    }
                    self.lane_dups.push_back(LaneDup {
                        lane: twin,
                        stream: id,
                        offset: seg.offset,
                        len: seg.len,
                        fin: seg.fin,
                    });
                }
            }
            self.send_session_used += seg.new_bytes;
            l.record(Sent::Data {
                stream: id,
                start: seg.offset,
                end: seg.offset + seg.len as u64,
                fin: seg.fin,
            });
            self.schedule(id);
        }
    }
}
