//! Per-stream reorder buffer: segments arrive at any offset, in any order, possibly twice;
//! bytes leave strictly in order.
//!
//! Memory is bounded by the caller: it never accepts bytes beyond the credit it granted, so
//! `buffered()` is at most one stream window. Small segments are copied out of the message
//! they arrived in, so a few bytes cannot pin a whole 64 KiB message buffer.

use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};

/// Segments shorter than this are copied instead of sliced (see the module doc).
const COPY_BELOW: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct Reorder {
    /// Every byte below this offset has arrived.
    contiguous: u64,
    /// In-order bytes not yet read, ending at `contiguous`.
    ready: VecDeque<Bytes>,
    ready_len: usize,
    /// Out-of-order segments above `contiguous`, disjoint, keyed by offset.
    pending: BTreeMap<u64, Bytes>,
    pending_len: usize,
}

impl Reorder {
    /// Every byte below this offset has arrived.
    pub(crate) fn contiguous(&self) -> u64 {
        self.contiguous
    }

    /// Offset of the next byte the application reads.
    pub(crate) fn read_offset(&self) -> u64 {
        self.contiguous - self.ready_len as u64
    }

    /// Bytes held, in order or not.
    pub(crate) fn buffered(&self) -> usize {
        self.ready_len + self.pending_len
    }

    pub(crate) fn has_ready(&self) -> bool {
        self.ready_len > 0
    }

    /// Adds `data` at `offset`; the caller has checked `offset + len` against its credit, so
    /// this cannot overflow. Parts already held are dropped.
    pub(crate) fn insert(&mut self, offset: u64, data: Bytes) {
        let end = offset + data.len() as u64;
        if end <= self.contiguous || data.is_empty() {
            return;
        }
        let mut start = offset.max(self.contiguous);
        let mut data = data.slice((start - offset) as usize..);
        // Trim against the segment that begins before `start`.
        if let Some((&s, seg)) = self.pending.range(..=start).next_back() {
            let seg_end = s + seg.len() as u64;
            if seg_end >= end {
                return;
            }
            if seg_end > start {
                data = data.slice((seg_end - start) as usize..);
                start = seg_end;
            }
        }
        // Fill the gaps between the segments that begin inside [start, end).
        let inside: Vec<(u64, u64)> = self
            .pending
            .range(start..end)
            .map(|(&s, seg)| (s, s + seg.len() as u64))
            .collect();
        let mut cursor = start;
        for (s, e) in inside {
            if s > cursor {
                let part = data.slice((cursor - start) as usize..(s - start) as usize);
                self.put_pending(cursor, part);
            }
            cursor = cursor.max(e);
        }
        if cursor < end {
            self.put_pending(cursor, data.slice((cursor - start) as usize..));
        }
        self.advance();
    }

    fn put_pending(&mut self, offset: u64, seg: Bytes) {
        let seg = if seg.len() < COPY_BELOW {
            Bytes::copy_from_slice(&seg)
        } else {
            seg
        };
        self.pending_len += seg.len();
        self.pending.insert(offset, seg);
    }

    /// Moves segments that became contiguous to the ready queue.
    fn advance(&mut self) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.contiguous {
                break;
            }
            let seg = entry.remove();
            self.pending_len -= seg.len();
            self.contiguous += seg.len() as u64;
            self.ready_len += seg.len();
            self.ready.push_back(seg);
        }
    }

    /// Takes up to `max` in-order bytes.
    pub(crate) fn read(&mut self, max: usize) -> Option<Bytes> {
        let front = self.ready.front_mut()?;
        let chunk = if front.len() <= max {
            self.ready.pop_front()?
        } else {
            front.split_to(max)
        };
        self.ready_len -= chunk.len();
        Some(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    #[test]
    fn any_arrival_order_with_duplicates_and_overlaps_comes_out_in_order() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for round in 0..200 {
            let total: usize = rng.random_range(0..20_000);
            let data: Vec<u8> = (0..total).map(|_| rng.random()).collect();
            let data = Bytes::from(data);
            // Random segments, some overlapping, some duplicated.
            let mut segs = Vec::new();
            let mut off = 0;
            while off < total {
                let len = rng.random_range(1..3000).min(total - off);
                segs.push((off, len));
                if rng.random_bool(0.3) {
                    let back = rng.random_range(0..=off);
                    let l = rng.random_range(1..6000).min(total - back);
                    segs.push((back, l));
                }
                off += len;
            }
            segs.shuffle(&mut rng);
            let mut r = Reorder::default();
            let mut out = Vec::new();
            for (o, l) in segs {
                r.insert(o as u64, data.slice(o..o + l));
                assert!(r.buffered() <= total);
                if rng.random_bool(0.5) {
                    while let Some(c) = r.read(rng.random_range(1..5000)) {
                        out.extend_from_slice(&c);
                    }
                }
            }
            while let Some(c) = r.read(usize::MAX) {
                out.extend_from_slice(&c);
            }
            assert_eq!(out, &data[..], "round {round}");
            assert_eq!(r.contiguous(), total as u64);
            assert_eq!(r.buffered(), 0);
            assert_eq!(r.read_offset(), total as u64);
        }
    }
}
