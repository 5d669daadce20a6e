//! Replay protection for message 1 (`docs/PROTOCOL.md`, "Replay"): a node answers a client's
//! message 1 only if its timestamp is one the node has not taken from that client before. Peer
//! links between the nodes of a cluster use the same guard, keyed by the dialling node's static
//! key (`docs/PROTOCOL.md`, "Peer links").
//!
//! Each client link's message 1 carries the client's clock (nanoseconds since the Unix epoch,
//! strictly increasing within one client process). The node keeps, per client identity (its
//! static key; in PSK-only mode, which has no client keys, the session id), a floor and the
//! timestamps above it that it took: a timestamp at or below the floor, or one already taken, is
//! a replay. The floor follows the newest timestamp at [`WINDOW`] behind it, so the links a
//! client dials at once may arrive in any order within that window. Only the client's own
//! timestamps are compared with each other: client and node clocks need not agree.
//!
//! Memory is bounded: at most [`MAX_RECENT`] timestamps per identity (the oldest one dropped
//! raises the floor), [`MAX_RECENT_TOTAL`] in all and [`MAX_IDENTITIES`] identities; over a cap,
//! the identity that handshook least recently is forgotten (a recorded message of it could then
//! be answered once more). Only a message 1 that authenticated (an allow-listed key, or the PSK)
//! reaches the guard, so only clients can fill it.
//!
//! A node takes a static-key client's timestamp when message 1 authenticates ([`ReplayGuard::take`]):
//! only that client can write one. A PSK-only message 1 any PSK holder can write, for any session
//! id and with any timestamp, so the node only checks it then ([`ReplayGuard::check`]) and takes
//! it once the key confirmation proved the session's secret: another PSK holder cannot raise a
//! session's floor and lock its client out.

use std::collections::HashMap;

use crate::keys::PublicKey;

/// How far behind a client's newest timestamp an older message 1 of it may still arrive: its
/// links are dialled at once and their first messages can overtake each other on the way.
pub const WINDOW: u64 = 30_000_000_000;

/// Timestamps kept per identity within [`WINDOW`]; a client with `links.max = 256` to a node
/// dials at most that many at once.
pub const MAX_RECENT: usize = 512;

/// Timestamps kept over all identities.
pub const MAX_RECENT_TOTAL: usize = 65_536;

/// Identities remembered.
pub const MAX_IDENTITIES: usize = 16_384;

/// Whose timestamps a message 1 is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// Static-key modes: the client's static key.
    Client(PublicKey),
    /// PSK-only mode: the session id (clients have no keys to tell them apart).
    Session([u8; 16]),
    /// A peer node dialling this node's cluster listener: its static key
    /// ([`super::accept_peer`]; the node keeps a guard of its own for peers).
    Peer(PublicKey),
}

/// A message 1 the guard refused: its timestamp was taken before, or is too old.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("message 1 replayed: its timestamp is one this node took from the client before, or older")]
pub struct Replayed;

/// What the guard keeps of one identity.
#[derive(Debug, Default)]
struct Seen {
    /// Every timestamp at or below this one is refused.
    floor: u64,
    /// Timestamps above `floor` taken so far, sorted.
    recent: Vec<u64>,
    /// When (in [`ReplayGuard::clock`] ticks) this identity last handshook.
    used: u64,
}

/// The timestamps a node has taken, per client identity (see the module docs).
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: HashMap<Identity, Seen>,
    /// Timestamps held over all identities.
    total: usize,
    /// Counts takes: orders identities by their last use.
    clock: u64,
}

impl ReplayGuard {
    /// Refuses `timestamp` from `who` if it was taken before or is too old, without taking it.
    pub fn check(&self, who: Identity, timestamp: u64) -> Result<(), Replayed> {
        match self.seen.get(&who) {
            Some(seen) if timestamp <= seen.floor => Err(Replayed),
            Some(seen) if seen.recent.binary_search(&timestamp).is_ok() => Err(Replayed),
            _ => Ok(()),
        }
    }

    /// Takes `timestamp` from `who` if it is new, or refuses it.
    pub fn take(&mut self, who: Identity, timestamp: u64) -> Result<(), Replayed> {
        self.check(who, timestamp)?;
        self.clock += 1;
        if !self.seen.contains_key(&who) && self.seen.len() >= MAX_IDENTITIES {
            self.forget_oldest();
        }
        let seen = self.seen.entry(who).or_default();
        // `check` found it above the floor and not taken: this is where it goes.
        let at = seen.recent.partition_point(|&t| t < timestamp);
        seen.used = self.clock;
        seen.recent.insert(at, timestamp);
        self.total += 1;
        // The floor follows the newest timestamp; the oldest kept goes over the cap.
        let newest = *seen.recent.last().expect("just inserted");
        let mut floor = seen.floor.max(newest.saturating_sub(WINDOW));
        if seen.recent.len() > MAX_RECENT {
            floor = floor.max(seen.recent[0]);
        }
        seen.floor = floor;
        let below = seen.recent.partition_point(|&t| t <= floor);
        seen.recent.drain(..below);
        self.total -= below;
        while self.total > MAX_RECENT_TOTAL && self.seen.len() > 1 {
            self.forget_oldest();
        }
        Ok(())
    }

    /// Identities remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no identity is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Forgets the identity that handshook least recently.
    fn forget_oldest(&mut self) {
        let oldest = self
            .seen
            .iter()
            .min_by_key(|(_, s)| s.used)
            .map(|(k, _)| *k);
        if let Some(seen) = oldest.and_then(|k| self.seen.remove(&k)) {
            self.total -= seen.recent.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const A: Identity = Identity::Session([1; 16]);
    const B: Identity = Identity::Session([2; 16]);

    #[test]
    fn a_timestamp_is_taken_once_and_links_may_arrive_out_of_order() {
        let mut g = ReplayGuard::default();
        let t = 1_700_000_000 * S;
        assert_eq!(g.take(A, t + 3), Ok(()));
        assert_eq!(g.take(A, t + 1), Ok(()), "dialled at once, arrived later");
        assert_eq!(g.take(A, t + 2), Ok(()));
        for again in [t + 1, t + 2, t + 3] {
            assert_eq!(g.take(A, again), Err(Replayed));
        }
        // Another client's timestamps are its own.
        assert_eq!(g.take(B, t + 1), Ok(()));
        // Far later, everything before the window is refused, seen or not.
        assert_eq!(g.take(A, t + 100 * S), Ok(()));
        assert_eq!(g.take(A, t + 4), Err(Replayed));
        assert_eq!(g.take(A, t + 100 * S - WINDOW), Err(Replayed));
        assert_eq!(g.take(A, t + 100 * S - WINDOW + 1), Ok(()));
        assert_eq!(g.total, 3, "older timestamps below the floor are not kept");
        // Checking takes nothing.
        assert_eq!(g.check(B, t + 7), Ok(()));
        assert_eq!(g.check(B, t + 7), Ok(()));
        assert_eq!(g.check(B, t + 1), Err(Replayed));
        assert_eq!(g.take(B, t + 7), Ok(()));
        assert_eq!(g.check(B, t + 7), Err(Replayed));
    }

    #[test]
    fn memory_stays_within_its_caps() {
        let mut g = ReplayGuard::default();
        let t = 1_700_000_000 * S;
        // One identity with more links at once than it may keep: the oldest raise the floor.
        for i in 0..(MAX_RECENT as u64 + 10) {
            assert_eq!(g.take(A, t + i), Ok(()));
        }
        assert_eq!(g.seen[&A].recent.len(), MAX_RECENT);
        assert_eq!(g.take(A, t + 5), Err(Replayed), "below the raised floor");
        // Many identities: the least recently used goes, A (used again now) stays.
        for i in 0..MAX_IDENTITIES as u64 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_be_bytes());
            id[8] = 0xff;
            g.take(Identity::Session(id), t).unwrap();
            if i % 1000 == 0 {
                g.take(A, t + MAX_RECENT as u64 + 10 + i).unwrap();
            }
            assert!(g.len() <= MAX_IDENTITIES && g.total <= MAX_RECENT_TOTAL);
        }
        assert!(g.seen.contains_key(&A));
        assert!(!g.seen.contains_key(&B));
        let held: usize = g.seen.values().map(|s| s.recent.len()).sum();
        assert_eq!(held, g.total);
    }
}
