//! Connection IDs: the bytes every QUIC packet's header spends on naming its connection.
//!
//! A short-header packet carries the receiver's connection ID, and a link's packets are full
//! (about 1,480 bytes on a 1,500-byte path), so each byte of ID is about 0.07% of the line. quinn
//! gives each end 8 bytes by default; the links use fewer:
//!
//! - **A node: 4 bytes** ([`node_config`]). A node tells its clients' connections apart by the
//!   ID (every link of one client comes from one address when they share a socket, and a NAT
//!   may move a client to another port mid-link), so it needs one. Three random bytes name a
//!   connection (16.7 million, against the few per link a node hands out) and the fourth is a
//!   keyed tag, so that a packet with an ID the node never issued is dropped without an answer
//!   255 times in 256 (quinn answers one that passes with a stateless reset, at most one per
//!   20 ms). quinn draws again when a new ID collides with a live one.
//! - **A client: none** ([`client_config`]). Each link dials from its own socket
//!   ([`super::connect_named`]), so the client's endpoint tells its one connection's packets by
//!   the node's address, and the packets the node sends (the data of a download) carry no ID. A
//!   client whose NAT moves it keeps its link: the node finds the link by the ID in the client's
//!   packets and validates the new address, as RFC 9000 section 9 describes.

use std::hash::{BuildHasher, RandomState};

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid, RandomConnectionIdGenerator};

/// The length of a node's connection IDs.
pub const NODE_CID_LEN: usize = 4;

/// The random part of a node's IDs; the rest is the tag.
const NONCE_LEN: usize = 3;

/// A node's endpoint configuration: [`NODE_CID_LEN`]-byte IDs ([`NodeCids`]).
pub fn node_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config.cid_generator(|| Box::new(NodeCids::new()));
    config
}

/// A client link's endpoint configuration: zero-length IDs (one connection per endpoint).
pub fn client_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config.cid_generator(|| Box::new(RandomConnectionIdGenerator::new(0)));
    config
}

/// A node's IDs: [`NONCE_LEN`] random bytes and a one-byte tag keyed by this endpoint.
#[derive(Debug)]
pub struct NodeCids {
    key: RandomState,
}

impl NodeCids {
    /// A generator with a key of its own.
    pub fn new() -> NodeCids {
        NodeCids {
            key: RandomState::new(),
        }
    }

    fn tag(&self, nonce: &[u8]) -> u8 {
        self.key.hash_one(nonce).to_le_bytes()[0]
    }
}

impl Default for NodeCids {
    fn default() -> Self {
        NodeCids::new()
    }
}

impl ConnectionIdGenerator for NodeCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut id = [0u8; NODE_CID_LEN];
        rand::fill(&mut id[..NONCE_LEN]);
        id[NONCE_LEN] = self.tag(&id[..NONCE_LEN]);
        ConnectionId::new(&id)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        // quinn parses a short header's ID at this generator's length; anything else is not ours.
        if cid.len() != NODE_CID_LEN || self.tag(&cid[..NONCE_LEN]) != cid[NONCE_LEN] {
            return Err(InvalidCid);
        }
        Ok(())
    }

    fn cid_len(&self) -> usize {
        NODE_CID_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_takes_its_own_ids_and_few_others() {
        let mut ids = NodeCids::new();
        for _ in 0..1000 {
            let id = ids.generate_cid();
            assert_eq!(id.len(), NODE_CID_LEN);
            assert!(ids.validate(&id).is_ok());
        }
        // Another endpoint's IDs (another key) pass about one time in 256.
        let mut other = NodeCids::new();
        let passed = (0..10_000)
            .filter(|_| ids.validate(&other.generate_cid()).is_ok())
            .count();
        assert!(passed < 200, "{passed} of 10,000 foreign IDs passed");
        assert!(ids.validate(&ConnectionId::new(&[1, 2, 3])).is_err());
    }
}
