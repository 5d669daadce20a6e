//! Handshake slots of a listener: how many connections may be in their handshake at once (for
//! the metrics endpoint: sending their request head), in all and from one source, and which one
//! gives way when they are taken.
//!
//! A source is an IPv4 address, or an IPv6 /64 (one host's subnet: counting its addresses one
//! by one would give one host as many sources as it likes). When a source has all its slots, or
//! the listener all of its own, a new connection takes the slot of the oldest handshake (of that
//! source, or of all) rather than being refused: a stalled connection (a slowloris that sends
//! nothing, or a message cut short) holds a slot only until newer ones need it, while an honest
//! handshake is done within a couple of round trips. Before, stalled connections held their
//! slots for the whole handshake timeout and every new link from their source, or from anywhere
//! once a few sources had filled the listener, was refused meanwhile.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use crate::bucket::Bucket;

/// Sources whose rate [`Rates`] tracks at once: about 50 bytes each. Past it, sources whose
/// buckets are full (idle for a burst's time) are forgotten, at most once a second; a new
/// source that still finds no room is refused.
const MAX_SOURCES: usize = 65_536;

/// New handshakes a second per source: a token bucket each, of four seconds' worth of tokens. A
/// connection beyond it is closed before the node spends anything on it: each handshake costs
/// two Diffie-Hellman operations before the node knows whether the client is allowed, and a
/// recorded message 1 sent again and again cost the sender nothing (a trial made a node spend
/// a whole CPU so, from one address).
#[derive(Debug)]
pub struct Rates {
    per_second: f64,
    burst: f64,
    buckets: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    by_source: HashMap<IpAddr, Bucket>,
    pruned: Option<Instant>,
}

impl Rates {
    /// `per_second` new handshakes a second from one source, in bursts of four seconds' worth.
    pub fn new(per_second: u32) -> Rates {
        let per_second = f64::from(per_second.max(1));
        Rates {
            per_second,
            burst: per_second * 4.0,
            buckets: Mutex::default(),
        }
    }

    /// Whether a new handshake from `ip` may start at `now` (and if so, it is counted).
    pub fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        let src = source(ip);
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if b.by_source.len() >= MAX_SOURCES && !b.by_source.contains_key(&src) {
            if b.pruned
                .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
            {
                return false;
            }
            b.pruned = Some(now);
            let (rate, burst) = (self.per_second, self.burst);
            b.by_source.retain(|_, k| !k.is_full(now, rate, burst));
            if b.by_source.len() >= MAX_SOURCES {
                return false;
            }
        }
        let k = b
            .by_source
            .entry(src)
            .or_insert(Bucket::full(self.burst, now));
        k.take(now, self.per_second, self.burst)
    }
}

/// The handshakes in progress on one listener.
#[derive(Debug)]
pub struct Slots {
    /// In all.
    max: usize,
    /// From one source.
    per_source: usize,
    /// QUIC handshakes from addresses QUIC has not validated, in all (see
    /// [`Slots::take_unvalidated`]).
    max_unvalidated: usize,
    taken: Mutex<Taken>,
}

#[derive(Debug, Default)]
struct Taken {
    /// Every validated slot by its number, oldest first: its source and how to end it.
    held: BTreeMap<u64, (IpAddr, Arc<Notify>)>,
    /// Per source, its slots' numbers, oldest first (entries removed when empty).
    from: HashMap<IpAddr, VecDeque<u64>>,
    next: u64,
    /// From unvalidated addresses.
    unvalidated: usize,
}

/// A handshake slot, given back on drop. A slot taken over by a newer handshake has its
/// [`Slot::evicted`] notified: the handshake in it ends, and its connection is closed.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    /// `None` for an unvalidated address's.
    id: Option<u64>,
    evicted: Arc<Notify>,
}

/// The source an address counts under: itself for IPv4 (and IPv4-mapped IPv6), its /64 for
/// IPv6.
pub fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

impl Slots {
    /// `max` slots in all, `per_source` from one source, `max_unvalidated` for QUIC's
    /// unvalidated addresses.
    pub fn new(max: usize, per_source: usize, max_unvalidated: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max: max.max(1),
            per_source: per_source.max(1),
            max_unvalidated,
            taken: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Taken> {
        // Only counting runs under this lock.
        self.taken.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an unvalidated address may start a handshake now.
    pub fn room_unvalidated(&self) -> bool {
        self.lock().unvalidated < self.max_unvalidated
    }

    /// A slot for a QUIC handshake from an address QUIC has not validated (it may be spoofed, so
    /// it takes no slot of a source), or why there is none.
    pub fn take_unvalidated(self: &Arc<Self>) -> Result<Slot, &'static str> {
        let mut taken = self.lock();
        if taken.unvalidated >= self.max_unvalidated {
            return Err("too many QUIC handshakes from unvalidated addresses in progress");
        }
        taken.unvalidated += 1;
        Ok(Slot {
            slots: self.clone(),
            id: None,
            evicted: Arc::new(Notify::new()),
        })
    }

    /// A slot for a handshake from `ip`. When its source has all its slots, the oldest of them
    /// is taken over; else when the listener has all of its own, the oldest of all. Returns the
    /// slot and whether one was taken over.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> (Slot, bool) {
        let src = source(ip);
        let mut taken = self.lock();
        let full = taken.from.get(&src).map_or(0, VecDeque::len) >= self.per_source;
        let oldest = if full {
            taken.from.get(&src).and_then(|ids| ids.front().copied())
        } else if taken.held.len() >= self.max {
            taken.held.keys().next().copied()
        } else {
            None
        };
        if let Some(id) = oldest {
            if let Some((_, evicted)) = taken.release(id) {
                // A permit is stored if its task is not waiting yet.
                evicted.notify_one();
            }
        }
        let id = taken.next;
        taken.next += 1;
        let evicted = Arc::new(Notify::new());
        taken.held.insert(id, (src, evicted.clone()));
        taken.from.entry(src).or_default().push_back(id);
        (
            Slot {
                slots: self.clone(),
                id: Some(id),
                evicted,
            },
            oldest.is_some(),
        )
    }

    /// Slots taken now: validated, and unvalidated.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let taken = self.lock();
        (taken.held.len(), taken.unvalidated)
    }
}

impl Taken {
    /// Gives back slot `id` if it is still held; its source and eviction signal.
    fn release(&mut self, id: u64) -> Option<(IpAddr, Arc<Notify>)> {
        let (src, evicted) = self.held.remove(&id)?;
        if let Some(ids) = self.from.get_mut(&src) {
            ids.retain(|&i| i != id);
            if ids.is_empty() {
                self.from.remove(&src);
            }
        }
        Some((src, evicted))
    }
}

impl Slot {
    /// Completes when a newer handshake took this slot over: end the handshake in it.
    pub async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut taken = self.slots.lock();
        match self.id {
            Some(id) => {
                taken.release(id);
            }
            None => taken.unvalidated -= 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let rates = Rates::new(2);
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        let admitted = (0..20).filter(|_| rates.admit(a, t0)).count();
        assert_eq!(admitted, 8, "four seconds' worth at once");
        // Another source, and another address of an IPv6 /64 counted as one.
        assert!(rates.admit(ip("10.0.0.2"), t0));
        assert!(rates.admit(ip("2001:db8::1"), t0));
        let same64 = (0..20)
            .filter(|_| rates.admit(ip("2001:db8::2"), t0))
            .count();
        assert_eq!(same64, 7);
        // Half a second later: one more.
        let t1 = t0 + Duration::from_millis(500);
        assert!(rates.admit(a, t1));
        assert!(!rates.admit(a, t1));
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_subnets() {
        assert_eq!(source(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            source(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            source(ip("2001:db8:1:2::9"))
        );
        assert_ne!(source(ip("2001:db8:1:3::1")), source(ip("2001:db8:1:2::1")));
    }

    #[tokio::test]
    async fn a_full_source_gives_its_oldest_slot_to_a_new_handshake() {
        let slots = Slots::new(100, 2, 1);
        let (a, evicted) = slots.take(ip("10.0.0.1"));
        assert!(!evicted);
        let (b, _) = slots.take(ip("10.0.0.1"));
        // Another source is not touched.
        let (other, _) = slots.take(ip("10.0.0.2"));
        let (c, evicted) = slots.take(ip("10.0.0.1"));
        assert!(evicted, "the source's third takes its first's slot");
        tokio::time::timeout(std::time::Duration::from_secs(1), a.evicted())
            .await
            .expect("the oldest is told");
        assert_eq!(slots.counts(), (3, 0));
        // The evicted slot's drop gives back nothing more.
        drop(a);
        assert_eq!(slots.counts(), (3, 0));
        drop((b, c, other));
        assert_eq!(slots.counts(), (0, 0));
    }

    #[tokio::test]
    async fn a_full_listener_gives_the_oldest_slot_of_all() {
        let slots = Slots::new(3, 16, 1);
        let held: Vec<_> = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
            .iter()
            .map(|a| slots.take(ip(a)).0)
            .collect();
        let (_new, evicted) = slots.take(ip("10.0.0.4"));
        assert!(evicted);
        tokio::time::timeout(std::time::Duration::from_secs(1), held[0].evicted())
            .await
            .expect("the oldest of all is told");
        assert_eq!(slots.counts(), (3, 0));
        // Unvalidated QUIC addresses have a pool of their own.
        let u = slots.take_unvalidated().expect("one unvalidated slot");
        assert!(!slots.room_unvalidated());
        assert!(slots.take_unvalidated().is_err());
        drop(u);
        assert!(slots.room_unvalidated());
    }
}
