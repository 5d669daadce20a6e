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

/// A node's IDs: 3 random bytes and a one-byte tag keyed by this endpoint.
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

    /// A client link lives on when its address changes under it (a NAT moved it to another
    /// port): the node finds the connection by its own ID in the client's packets, and the
    /// client's endpoint, which has none, by the node's address. Bytes cross both ways after.
    #[tokio::test]
    async fn a_link_lives_on_when_the_client_moves_to_another_port() {
        let moved = tokio::time::timeout(std::time::Duration::from_secs(20), move_client());
        moved.await.expect("the link stalled after the move");
    }

    async fn move_client() {
        use std::sync::Arc;
        let quic = |e: &dyn std::fmt::Display| e.to_string();
        let node = super::super::server_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = node.endpoint().local_addr().unwrap();
        let (moved_tx, moved_rx) = tokio::sync::oneshot::channel();
        let accept = tokio::spawn(async move {
            let conn = node
                .endpoint()
                .accept()
                .await
                .unwrap()
                .await
                .map_err(|e| quic(&e))?;
            let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| quic(&e))?;
            let mut buf = [0u8; 5];
            recv.read_exact(&mut buf).await.map_err(|e| quic(&e))?;
            assert_eq!(&buf, b"hello");
            let before = conn.remote_address();
            send.write_all(b"one").await.map_err(|e| quic(&e))?;
            let moved: std::net::SocketAddr = moved_rx.await.unwrap();
            recv.read_exact(&mut buf).await.map_err(|e| quic(&e))?;
            assert_eq!(&buf, b"again");
            send.write_all(b"two").await.map_err(|e| quic(&e))?;
            // The node answers on the new address once it validated it.
            for _ in 0..100 {
                if conn.remote_address() == moved {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            let after = conn.remote_address();
            recv.read_to_end(64).await.map_err(|e| quic(&e))?;
            Ok::<_, String>((before, after, moved))
        });
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client =
            quinn::Endpoint::new(client_config(), None, socket, Arc::new(quinn::TokioRuntime))
                .unwrap();
        let config = super::super::client_config(super::super::Offer::Current, None).unwrap();
        let conn = client
            .connect_with(config, addr, super::super::SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 3];
        recv.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"one");
        // The move: another socket, another port, as a NAT's new mapping would look.
        let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let moved = other.local_addr().unwrap();
        client.rebind(other).unwrap();
        moved_tx.send(moved).unwrap();
        send.write_all(b"again").await.unwrap();
        recv.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"two");
        send.finish().unwrap();
        let (before, after, moved) = accept.await.unwrap().unwrap();
        assert_ne!(before, moved);
        assert_eq!(after, moved, "the node sends to the client's new address");
    }
}
