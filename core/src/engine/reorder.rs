//! Per-stream reorder buffer: segments arrive at any offset, in any order, possibly twice;
//! bytes leave strictly in order.
//!
//! The caller bounds the bytes: it never accepts bytes beyond the credit it granted, so
//! `buffered()` is at most one stream window. Bytes are not all the memory, though: every
//! segment held costs a handle, a map or queue entry and an allocation of its own, so a peer
//! that sends a window's worth of one-byte segments at spaced offsets would make the buffer
//! about a hundred times its byte count. [`Reorder::cost`] counts that overhead
//! ([`SEGMENT_COST`] per segment held, and what each copied buffer allocated), and the caller
//! bounds [`Reorder::segments`]. Small segments are copied out of the message they arrived in,
//! so a few bytes cannot pin a whole message buffer, and a small segment that continues a copied
//! one is appended to it: a run of small frames in order (a game's packets, an interactive
//! session) is one segment, not thousands. Long segments stay zero-copy slices, and the insert
//! of one that continues the in-order bytes is O(1).

use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};

/// Segments shorter than this are copied instead of sliced (see the module doc).
const COPY_BELOW: usize = 4096;
/// A copied segment grows by appending small segments that continue it up to this length.
const COPIED_MAX: usize = 16 * 1024;
/// Memory a held segment costs beyond its bytes: its handle (32 bytes), its share of the map or
/// queue that holds it (a B-tree entry with its node's slack, 24-48 bytes), and the allocator's
/// header and rounding of a copied buffer (16-32 bytes). Before segments were counted, the
/// one-byte segments at spaced offsets of `tests/tests/memory_hostile_reorder.rs` held about 110
/// bytes each.
pub(crate) const SEGMENT_COST: u64 = 128;

/// Appends `data` to a copied segment (the callers keep it within [`COPIED_MAX`]), its buffer
/// growing by doubling but never past `COPIED_MAX`: `BytesMut`'s own doubling left a run of
/// 1,400-byte frames copied 15,400 bytes into a 22,400-byte buffer, a receive charge (and
/// memory) half as much again as the bytes held.
fn append(buf: &mut BytesMut, data: &[u8]) {
    let need = buf.len() + data.len();
    if need > buf.capacity() {
        let cap = (buf.capacity() * 2).clamp(need, COPIED_MAX.max(need));
        let mut grown = BytesMut::with_capacity(cap);
        grown.extend_from_slice(buf);
        *buf = grown;
    }
    buf.extend_from_slice(data);
}

/// A held segment: a slice of the message it arrived in, or a copy (see the module doc).
#[derive(Debug)]
enum Seg {
    Sliced(Bytes),
    Copied(BytesMut),
}

impl Seg {
    fn len(&self) -> usize {
        match self {
            Seg::Sliced(b) => b.len(),
            Seg::Copied(b) => b.len(),
        }
    }

    /// Bytes of memory it holds: its length, or what its copy allocated.
    fn alloc(&self) -> usize {
        match self {
            Seg::Sliced(b) => b.len(),
            Seg::Copied(b) => b.capacity(),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Reorder {
    /// Every byte below this offset has arrived.
    contiguous: u64,
    /// In-order bytes not yet read, ending at `contiguous`.
    ready: VecDeque<Seg>,
    ready_len: usize,
    /// Out-of-order segments above `contiguous`, disjoint, keyed by offset.
    pending: BTreeMap<u64, Seg>,
    pending_len: usize,
    /// Sum of [`Seg::alloc`] over every segment held.
    alloc: usize,
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

    /// Segments held, in order or not.
    pub(crate) fn segments(&self) -> usize {
        self.ready.len() + self.pending.len()
    }

    /// Memory held: what the segments allocated, and [`SEGMENT_COST`] for each.
    pub(crate) fn cost(&self) -> u64 {
        self.alloc as u64 + self.segments() as u64 * SEGMENT_COST
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
        let len = seg.len();
        self.pending_len += len;
        if len >= COPY_BELOW {
            self.alloc += len;
            self.pending.insert(offset, Seg::Sliced(seg));
            return;
        }
        // A small segment that continues a copied one is appended to it.
        if let Some((&s, Seg::Copied(prev))) = self.pending.range_mut(..offset).next_back() {
            if s + prev.len() as u64 == offset && prev.len() + len <= COPIED_MAX {
                let before = prev.capacity();
                append(prev, &seg);
                self.alloc = self.alloc - before + prev.capacity();
                return;
            }
        }
        let copy = BytesMut::from(&seg[..]);
        self.alloc += copy.capacity();
        self.pending.insert(offset, Seg::Copied(copy));
    }

    /// Moves segments that became contiguous to the ready queue; a small copied one is
    /// appended to a copied one before it.
    fn advance(&mut self) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.contiguous {
                break;
            }
            let seg = entry.remove();
            let len = seg.len();
            self.pending_len -= len;
            self.contiguous += len as u64;
            self.ready_len += len;
            if let (Seg::Copied(small), Some(Seg::Copied(back))) = (&seg, self.ready.back_mut()) {
                if len < COPY_BELOW && back.len() + len <= COPIED_MAX {
                    let before = back.capacity();
                    append(back, small);
                    self.alloc = self.alloc - before + back.capacity() - seg.alloc();
                    continue;
                }
            }
            self.ready.push_back(seg);
        }
    }

    /// Takes up to `max` in-order bytes.
    pub(crate) fn read(&mut self, max: usize) -> Option<Bytes> {
        let front = self.ready.front_mut()?;
        let before = front.alloc();
        let chunk = if front.len() <= max {
            match self.ready.pop_front()? {
                Seg::Sliced(b) => b,
                Seg::Copied(b) => b.freeze(),
            }
        } else {
            let chunk = match front {
                Seg::Sliced(b) => b.split_to(max),
                Seg::Copied(b) => b.split_to(max).freeze(),
            };
            self.alloc += front.alloc();
            chunk
        };
        self.alloc -= before;
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
            assert_eq!((r.segments(), r.cost()), (0, 0), "round {round}");
        }
    }

    #[test]
    fn one_byte_segments_in_order_are_one_segment() {
        let mut r = Reorder::default();
        for i in 0..10_000u64 {
            r.insert(i, Bytes::from(vec![i as u8]));
        }
        assert_eq!(r.buffered(), 10_000);
        assert!(r.segments() <= 1, "{} segments", r.segments());
        // Beyond a hole, in order: appended too.
        for i in 20_000..30_000u64 {
            r.insert(i, Bytes::from(vec![i as u8]));
        }
        assert!(r.segments() <= 2, "{} segments", r.segments());
        assert!(r.cost() < 3 * 20_000, "cost {}", r.cost());
        let mut out = Vec::new();
        while let Some(c) = r.read(777) {
            out.extend_from_slice(&c);
        }
        assert_eq!(out, (0..10_000u64).map(|i| i as u8).collect::<Vec<_>>());
        // The rest beyond the hole: its bytes, and at most as much again of its buffer's room to
        // grow.
        let cost = r.cost();
        assert!(
            (10_000 + SEGMENT_COST..=20_000 + SEGMENT_COST).contains(&cost),
            "cost {cost}"
        );
    }

    /// Frames of a typical packet's size in order are copied into buffers of at most
    /// `COPIED_MAX`, so what the stream holds costs its bytes and at most an eighth more (before:
    /// 1.46 times them, the buffers' doubling past 16 KiB).
    #[test]
    fn small_frames_in_order_cost_about_their_bytes() {
        let mut r = Reorder::default();
        let frames = 1000u64;
        for i in 0..frames {
            r.insert(i * 1400, Bytes::from(vec![i as u8; 1400]));
        }
        let bytes = frames * 1400;
        assert_eq!(r.buffered() as u64, bytes);
        let most = bytes + bytes / 8 + r.segments() as u64 * SEGMENT_COST;
        assert!(r.cost() <= most, "cost {} for {bytes} bytes", r.cost());
        // The same beyond a hole (the pending segments).
        let mut r = Reorder::default();
        for i in 1..=frames {
            r.insert(i * 1400, Bytes::from(vec![i as u8; 1400]));
        }
        assert!(
            r.cost() <= most,
            "cost {} for {bytes} bytes beyond a hole",
            r.cost()
        );
        r.insert(0, Bytes::from(vec![0; 1400]));
        let mut n = 0;
        while let Some(c) = r.read(4096) {
            n += c.len() as u64;
        }
        assert_eq!((n, r.cost()), (bytes + 1400, 0));
    }

    #[test]
    fn spaced_segments_each_cost_their_overhead() {
        let mut r = Reorder::default();
        for i in 0..1000u64 {
            r.insert(1 + 2 * i, Bytes::from_static(b"x"));
        }
        assert_eq!(r.segments(), 1000);
        assert!(r.cost() >= 1000 * (SEGMENT_COST + 1));
        // Filling the holes makes everything readable and gives it all back.
        for i in 0..1000u64 {
            r.insert(2 * i, Bytes::from_static(b"y"));
        }
        while r.read(usize::MAX).is_some() {}
        assert_eq!((r.segments(), r.cost(), r.buffered()), (0, 0, 0));
    }
}
