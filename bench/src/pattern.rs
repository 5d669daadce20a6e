//! The deterministic payload pattern.
//!
//! A pattern is `PERIOD` bytes produced by splitmix64 from a seed (each output word written
//! little-endian), repeated forever. The stream byte at position `i` of a stream that starts at
//! pattern offset `s` is `pattern[(s + i) % PERIOD]`. `PERIOD` is prime, so it never lines up
//! with record, buffer or page sizes, and a byte that arrives at the wrong position (reordered,
//! duplicated, dropped, or from another stream) fails the comparison.
//!
//! The buffer holds `MAX_SLICE` bytes more than one period (a copy of its start), so any run
//! of up to `MAX_SLICE` bytes from any offset is one contiguous slice: senders write straight
//! from it and receivers compare against it with one `memcmp`, with no copy or allocation per
//! record (the wire format's largest record fits in one slice; `proto` checks that).

use std::sync::{Arc, Mutex};

/// Length of one period of the pattern (a prime).
pub const PERIOD: usize = 1_000_003;

/// Longest run of pattern bytes [`Pattern::slice`] returns.
pub(crate) const MAX_SLICE: usize = 128 * 1024;

/// One generated pattern; cheap to share between the streams of a run.
#[derive(Debug)]
pub(crate) struct Pattern {
    seed: u64,
    bytes: Box<[u8]>,
}

impl Pattern {
    pub(crate) fn new(seed: u64) -> Pattern {
        let mut bytes = vec![0u8; PERIOD + MAX_SLICE].into_boxed_slice();
        let mut state = seed;
        let mut chunks = bytes[..PERIOD].chunks_mut(8);
        for chunk in &mut chunks {
            let word = splitmix64(&mut state).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        let (head, tail) = bytes.split_at_mut(PERIOD);
        tail.copy_from_slice(&head[..MAX_SLICE]);
        Pattern { seed, bytes }
    }

    /// The pattern for `seed`, shared with other streams of the same run. One slot is kept:
    /// the streams of a run share a seed, and runs rarely overlap.
    pub(crate) fn shared(seed: u64) -> Arc<Pattern> {
        static LAST: Mutex<Option<Arc<Pattern>>> = Mutex::new(None);
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = last.as_ref().filter(|p| p.seed == seed) {
            return Arc::clone(p);
        }
        let p = Arc::new(Pattern::new(seed));
        *last = Some(Arc::clone(&p));
        p
    }

    /// `len` pattern bytes starting at `offset`. Requires `offset < PERIOD` and
    /// `len <= MAX_SLICE`.
    pub(crate) fn slice(&self, offset: usize, len: usize) -> &[u8] {
        &self.bytes[offset..offset + len]
    }

    /// Fills `buf` with the pattern from `offset` on (any length), returning the next offset.
    pub(crate) fn fill(&self, mut offset: usize, buf: &mut [u8]) -> usize {
        for chunk in buf.chunks_mut(MAX_SLICE) {
            chunk.copy_from_slice(self.slice(offset, chunk.len()));
            offset = advance(offset, chunk.len());
        }
        offset
    }
}

/// `(offset + n) % PERIOD` for `offset < PERIOD`, without overflow for any `n`.
pub(crate) fn advance(offset: usize, n: usize) -> usize {
    (offset + n % PERIOD) % PERIOD
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_and_is_deterministic() {
        let p = Pattern::new(42);
        assert_eq!(p.bytes.len(), PERIOD + MAX_SLICE);
        assert_eq!(&p.bytes[PERIOD..], &p.bytes[..MAX_SLICE]);
        assert_eq!(Pattern::new(42).bytes, p.bytes);
        assert_ne!(Pattern::new(43).bytes[..64], p.bytes[..64]);
        // splitmix64 reference value for seed 0 (first output).
        assert_eq!(
            Pattern::new(0).bytes[..8],
            0xe220_a839_7b1d_cdafu64.to_le_bytes()
        );

        let mut buf = vec![0u8; 3 * PERIOD + 5];
        let next = p.fill(PERIOD - 3, &mut buf);
        assert_eq!(next, advance(PERIOD - 3, buf.len()));
        for (i, b) in buf.iter().enumerate() {
            assert_eq!(*b, p.bytes[(PERIOD - 3 + i) % PERIOD], "byte {i}");
        }
        // The cache has one slot, which tests running in parallel (the demo's streams) may
        // take between the two calls; one of a few tries sees both calls share it.
        assert!((0..100).any(|_| Arc::ptr_eq(&Pattern::shared(5), &Pattern::shared(5))));
    }
}
