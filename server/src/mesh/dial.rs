//! Dialling a peer with a higher id: dial, handshake, run the link until it dies, and dial again
//! after an exponential backoff with random jitter (as the client's link slots do), so nodes that
//! lose a peer at once do not all come back in the same instant.
//!
//! A dial that fails is logged at warn when its reason differs from the previous failure's (a
//! peer that is down, a key that does not match) and at debug while it stays the same, so a
//! peer that is away for an hour costs one line, not one per backoff.

use super::link;
use super::Mesh;
use bytes::BytesMut;
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tracing::{debug, warn};
use wanmux_config::Peer;
use wanmux_core::noise::{self, ClientAuth, LinkError, LinkReader, LinkWriter, PeerHello};
use wanmux_core::peer::PeerFrame;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A link that lived this long resets the backoff: it worked, so the peer is worth dialling
/// again at once (after the jitter).
const STABLE: Duration = Duration::from_secs(1);

/// Keeps a peer link to `peer` up until the task is aborted.
pub(super) async fn dial_loop(mesh: Arc<Mesh>, peer: Peer) {
    let auth = ClientAuth::Static {
        local: mesh.private_key.clone(),
        server: peer.public_key,
        psk: mesh.psk.clone(),
    };
    let mut first = BytesMut::new();
    // The key confirmation holds one ping, as on client links; its pong is not awaited.
    PeerFrame::Ping(u64::MAX).encode(&mut first);
    let mut backoff = BACKOFF_MIN;
    let mut last_failure: Option<String> = None;
    let id = peer.id.get();
    let target = peer.addr.to_string();
    loop {
        match dial(&mesh, &peer, &target, &auth, &first).await {
            Ok((reader, writer, reply, addr)) => {
                last_failure = None;
                let up = Instant::now();
                link::run(&mesh, id, addr, reply.instance, reader, writer, None).await;
                if up.elapsed() >= STABLE {
                    backoff = BACKOFF_MIN;
                }
            }
            Err(reason) => {
                if last_failure.as_ref() != Some(&reason) {
                    warn!(peer = id, addr = %target, %reason, "peer link dial failed; retrying");
                } else {
                    debug!(peer = id, addr = %target, %reason, "peer link dial failed");
                }
                last_failure = Some(reason);
            }
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One dial: connect, handshake, check the node id the peer reports. The error is the reason,
/// for the log line.
async fn dial(
    mesh: &Mesh,
    peer: &Peer,
    target: &str,
    auth: &ClientAuth,
    first: &[u8],
) -> Result<(LinkReader, LinkWriter, PeerHello, std::net::SocketAddr), String> {
    let timeout = mesh.handshake_timeout;
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(format!("cannot connect: {e}")),
        Err(_) => return Err("connect timed out".to_owned()),
    };
    let addr = tcp
        .peer_addr()
        .map_err(|e| format!("cannot connect: {e}"))?;
    let hello = PeerHello {
        node_id: mesh.node_id,
        instance: mesh.instance,
    };
    let (reader, writer, reply) = noise::connect_peer(tcp, auth, &hello, first, timeout)
        .await
        .map_err(|e| match e {
            LinkError::Closed | LinkError::Io(_) => format!(
                "the peer refused this node ({e}): this node's peer[].public_key for it is not \
                 its key, or its [[peer]] entry for node {} lacks this node's key or id, or the \
                 cluster PSKs differ, or it runs a wanmux of another peer protocol version \
                 (its log says \"peer hello has the wrong length\"; upgrade every node of a \
                 cluster together)",
                mesh.node_id
            ),
            LinkError::Auth(_) => format!(
                "handshake failed ({e}): the peer's key is not peer[].public_key, or the cluster \
                 PSKs differ"
            ),
            e => format!("handshake failed: {e}"),
        })?;
    if reply.node_id != peer.id.get() {
        return Err(format!(
            "node id mismatch: the peer with this key says it is node {}",
            reply.node_id
        ));
    }
    Ok((reader, writer, reply, addr))
}

/// Full jitter: a time drawn uniformly from `[d/2, d]`.
fn jitter(d: Duration) -> Duration {
    rand::rng().random_range(d / 2..=d)
}
