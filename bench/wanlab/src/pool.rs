//! Packet storage for the delay line: a fixed slab of equal-sized buffers and a min-heap of
//! release times. Both are allocated once; the data path only moves slot indices.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Index of a buffer in a [`DelayLine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Slot(u32);

/// Packets waiting for their release time.
///
/// Memory is `slots × slot_size` bytes, reserved up front (zeroed pages are only backed by RAM
/// once touched). Releases are ordered by time, then by admission order, so packets due at the
/// same instant leave in the order they came.
#[derive(Debug)]
pub struct DelayLine {
    slot_size: usize,
    buf: Vec<u8>,
    lens: Vec<u32>,
    free: Vec<Slot>,
    heap: BinaryHeap<Reverse<(Instant, u64, Slot)>>,
    seq: u64,
}

impl DelayLine {
    /// A delay line of `slots` buffers of `slot_size` bytes each.
    pub fn new(slots: u32, slot_size: usize) -> Self {
        Self {
            slot_size,
            buf: vec![0; slots as usize * slot_size],
            lens: vec![0; slots as usize],
            free: (0..slots).rev().map(Slot).collect(),
            heap: BinaryHeap::with_capacity(slots as usize),
            seq: 0,
        }
    }

    /// Size of each buffer: the largest packet the line holds.
    pub fn packet_capacity(&self) -> usize {
        self.slot_size
    }

    /// Takes a free buffer, or `None` when every buffer holds a waiting packet.
    pub fn alloc(&mut self) -> Option<Slot> {
        self.free.pop()
    }

    /// Returns a buffer that will not be scheduled (its packet was dropped).
    pub fn release_slot(&mut self, slot: Slot) {
        self.free.push(slot);
    }

    /// The whole buffer of `slot`, to receive into.
    pub fn buf_mut(&mut self, slot: Slot) -> &mut [u8] {
        let start = slot.0 as usize * self.slot_size;
        &mut self.buf[start..start + self.slot_size]
    }

    /// The packet stored in `slot`.
    pub fn packet(&self, slot: Slot) -> &[u8] {
        let start = slot.0 as usize * self.slot_size;
        &self.buf[start..start + self.lens[slot.0 as usize] as usize]
    }

    /// Schedules the `len`-byte packet in `slot` for `release`.
    pub fn schedule(&mut self, slot: Slot, len: usize, release: Instant) {
        self.lens[slot.0 as usize] = len as u32;
        self.heap.push(Reverse((release, self.seq, slot)));
        self.seq += 1;
    }

    /// The earliest release time waiting.
    pub fn next_release(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Pops the next packet due at or before `now`. The caller sends `packet(slot)` and then
    /// hands the slot back with [`release_slot`](Self::release_slot).
    pub fn pop_due(&mut self, now: Instant) -> Option<Slot> {
        match self.heap.peek() {
            Some(Reverse((t, _, _))) if *t <= now => self.heap.pop().map(|Reverse((_, _, s))| s),
            _ => None,
        }
    }

    /// Packets waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no packet is waiting.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn releases_in_time_order_then_fifo() {
        let t0 = Instant::now();
        let mut line = DelayLine::new(8, 16);
        let ms = Duration::from_millis;
        for (i, at) in [ms(30), ms(10), ms(20), ms(10)].into_iter().enumerate() {
            let slot = line.alloc().unwrap();
            line.buf_mut(slot)[0] = i as u8;
            line.schedule(slot, 1, t0 + at);
        }
        assert_eq!(line.next_release(), Some(t0 + ms(10)));
        assert_eq!(line.pop_due(t0 + ms(5)), None);
        let mut order = Vec::new();
        while let Some(slot) = line.pop_due(t0 + ms(25)) {
            order.push(line.packet(slot)[0]);
            line.release_slot(slot);
        }
        // Packets 1 and 3 are both due at 10 ms: admission order breaks the tie.
        assert_eq!(order, [1, 3, 2]);
        assert_eq!(line.len(), 1);
    }

    #[test]
    fn runs_out_of_slots_and_recycles_them() {
        let t0 = Instant::now();
        let mut line = DelayLine::new(2, 4);
        let a = line.alloc().unwrap();
        let b = line.alloc().unwrap();
        assert!(line.alloc().is_none());
        line.schedule(a, 4, t0);
        line.release_slot(b);
        assert!(line.alloc().is_some());
        assert_eq!(line.pop_due(t0), Some(a));
        assert!(line.is_empty());
    }
}
