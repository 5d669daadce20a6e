//! A set of `u64`s stored as disjoint half-open ranges. Used for finished stream ids and for
//! the byte ranges a stream must resend.

use std::collections::BTreeMap;
use std::ops::Range;

/// Disjoint, non-adjacent half-open ranges, keyed by start.
#[derive(Debug, Default, Clone)]
pub(crate) struct RangeSet {
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of disjoint ranges (memory use is proportional to it).
    pub(crate) fn ranges(&self) -> usize {
        self.map.len()
    }

    /// Joins the two lowest ranges, adding every value between them.
    pub(crate) fn fill_first_gap(&mut self) {
        let mut lowest = self.map.iter();
        let (Some((&start, _)), Some((&second, &end))) = (lowest.next(), lowest.next()) else {
            return;
        };
        self.map.remove(&second);
        self.map.insert(start, end);
    }

    pub(crate) fn contains(&self, x: u64) -> bool {
        self.map
            .range(..=x)
            .next_back()
            .is_some_and(|(_, &end)| x < end)
    }

    /// Adds `r`, merging with overlapping or adjacent ranges.
    pub(crate) fn insert(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        let (mut start, mut end) = (r.start, r.end);
        if let Some((&s, &e)) = self.map.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        let covered: Vec<u64> = self.map.range(start..=end).map(|(&s, _)| s).collect();
        for s in covered {
            if let Some(e) = self.map.remove(&s) {
                end = end.max(e);
            }
        }
        self.map.insert(start, end);
    }

    /// Removes `x`, splitting its range if it is inside one.
    pub(crate) fn remove(&mut self, x: u64) {
        let Some((&s, &e)) = self.map.range(..=x).next_back() else {
            return;
        };
        if x >= e {
            return;
        }
        self.map.remove(&s);
        if s < x {
            self.map.insert(s, x);
        }
        if x + 1 < e {
            self.map.insert(x + 1, e);
        }
    }

    /// Removes every value below `x`.
    pub(crate) fn remove_below(&mut self, x: u64) {
        while let Some((&s, &e)) = self.map.first_key_value() {
            if s >= x {
                break;
            }
            self.map.remove(&s);
            if e > x {
                self.map.insert(x, e);
                break;
            }
        }
    }

    /// Takes up to `max` values from the front of the lowest range.
    pub(crate) fn pop_front(&mut self, max: u64) -> Option<Range<u64>> {
        let (s, e) = self.map.pop_first()?;
        let end = e.min(s.saturating_add(max));
        if end < e {
            self.map.insert(end, e);
        }
        Some(s..end)
    }

    /// The front of the lowest range, at most `max` values long, without taking it.
    pub(crate) fn peek_front(&self, max: u64) -> Option<Range<u64>> {
        let (&s, &e) = self.map.first_key_value()?;
        Some(s..e.min(s.saturating_add(max)))
    }

    /// Number of values in the set.
    pub(crate) fn total(&self) -> u64 {
        self.map.iter().map(|(s, e)| e - s).sum()
    }

    /// The lowest value in the set.
    #[cfg(test)]
    pub(crate) fn first(&self) -> Option<u64> {
        self.map.first_key_value().map(|(&s, _)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;

    #[test]
    fn matches_a_plain_set() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut rs = RangeSet::default();
        let mut model = BTreeSet::new();
        for _ in 0..2000 {
            let a = rng.random_range(0..200u64);
            let b = a + rng.random_range(0..10u64);
            match rng.random_range(0..10) {
                0 => {
                    rs.remove_below(a);
                    model.retain(|&x| x >= a);
                }
                2 => {
                    rs.remove(a);
                    model.remove(&a);
                }
                1 => {
                    if let Some(r) = rs.pop_front(3) {
                        for x in r {
                            assert!(model.remove(&x));
                        }
                    }
                }
                _ => {
                    rs.insert(a..b);
                    model.extend(a..b);
                }
            }
            for x in 0..220 {
                assert_eq!(rs.contains(x), model.contains(&x), "x={x}");
            }
            assert_eq!(rs.first(), model.first().copied());
        }
    }

    #[test]
    fn filling_the_first_gap_joins_the_two_lowest_ranges() {
        let mut rs = RangeSet::default();
        for x in [10, 20, 30] {
            rs.insert(x..x + 2);
        }
        rs.fill_first_gap();
        assert_eq!(rs.ranges(), 2);
        assert!((10..22).all(|x| rs.contains(x)));
        assert!(!rs.contains(22) && rs.contains(30) && !rs.contains(9));
        rs.fill_first_gap();
        rs.fill_first_gap();
        assert_eq!(rs.ranges(), 1);
        assert!((10..32).all(|x| rs.contains(x)));
    }

    #[test]
    fn adjacent_ranges_merge() {
        let mut rs = RangeSet::default();
        for i in (0..100).rev() {
            rs.insert(i..i + 1);
        }
        assert_eq!(rs.ranges(), 1);
    }
}
