//! Identifier newtypes: streams, links, sessions and nodes.

use std::fmt;

/// A server node's id, from its config (`node_id`). Never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u16);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// A stream id: the owner node in bits 63..48, a per-owner counter in bits 47..0.
///
/// The client allocates ids; each owner sees consecutive counters, so the set of finished
/// streams at an owner stays a few ranges whatever order streams end in.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

impl StreamId {
    /// Bits of the id that hold the per-owner counter.
    pub const COUNTER_BITS: u32 = 48;
    /// Largest counter value.
    pub const MAX_COUNTER: u64 = (1 << Self::COUNTER_BITS) - 1;

    /// Builds an id from its owner and counter. `counter` must be at most `MAX_COUNTER`.
    pub fn new(owner: NodeId, counter: u64) -> Self {
        debug_assert!(counter <= Self::MAX_COUNTER);
        StreamId((u64::from(owner.0) << Self::COUNTER_BITS) | (counter & Self::MAX_COUNTER))
    }

    /// The node that owns this stream.
    pub fn owner(self) -> NodeId {
        NodeId((self.0 >> Self::COUNTER_BITS) as u16)
    }

    /// The per-owner counter.
    pub fn counter(self) -> u64 {
        self.0 & Self::MAX_COUNTER
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}.{}", self.owner().0, self.counter())
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A link within one session, numbered by the driver. Never reused within a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "l{}", self.0)
    }
}

/// A session id: 16 random bytes chosen by the client, carried in every link handshake.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub [u8; 16]);

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first 8 bytes are plenty to tell sessions apart in logs.
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_id_packs_owner_and_counter() {
        let id = StreamId::new(NodeId(0xBEEF), 12345);
        assert_eq!(id.owner(), NodeId(0xBEEF));
        assert_eq!(id.counter(), 12345);
        let max = StreamId::new(NodeId(u16::MAX), StreamId::MAX_COUNTER);
        assert_eq!(max.0, u64::MAX);
    }
}
