//! The cluster listener: peer links from the peers with a lower id, and nothing else.
//!
//! Refusals are logged once per connection: a key that is not a configured peer's (or a wrong
//! PSK, garbage, a timeout, a replayed message 1) at info, as on the client listener, since anyone who reaches the port
//! can cause it; a configured peer whose hello does not fit its `[[peer]]` entry (another node
//! id, or a higher id than this node's, which should be dialled rather than dial) at warn, since
//! only the holder of a peer's key can cause that and it means the configs disagree.

use super::link;
use super::Mesh;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;
use wanmux_core::daemon;
use wanmux_core::keys::PublicKey;
use wanmux_core::noise::{self, LinkError, PeerHello};

/// Peer handshakes in progress at once; a cluster has a few peers, so more are strangers.
const MAX_HANDSHAKES: usize = 64;
/// ... from one source (an IPv4 address, an IPv6 /64): a peer dials one link at a time.
const MAX_HANDSHAKES_PER_SOURCE: usize = 4;
/// New peer handshakes a second from one source (`slots::Rates`): a peer redials its one link,
/// backing off, so this is room for several nodes behind one address and a test's many on
/// loopback, and still bounds what a stranger makes the node spend.
const HANDSHAKE_RATE: u32 = 16;

/// Accepts peer links on `listener` until the task is aborted. Each connection takes a handshake
/// slot at once; when a source, or the listener, has all its slots, the oldest handshake gives
/// way (`slots`): connections that stall cannot keep a peer's link waiting behind them (a trial
/// held off a peer for 37 s with 400 idle connections, when connections beyond 64 waited in the
/// kernel's queue).
pub(super) async fn accept_loop(listener: TcpListener, mesh: Arc<Mesh>) {
    let slots =
        wanmux_core::daemon::slots::Slots::new(MAX_HANDSHAKES, MAX_HANDSHAKES_PER_SOURCE, 0);
    let rates = wanmux_core::daemon::slots::Rates::new(HANDSHAKE_RATE);
    let errors = daemon::AcceptErrors::new("cluster accept failed");
    loop {
        let (tcp, addr) = daemon::accept(&listener, &errors).await;
        if !rates.admit(addr.ip(), std::time::Instant::now()) {
            // Closed before any cryptography: a flood of recorded first messages costs nothing.
            tracing::debug!(%addr, "peer handshakes from this address come too fast");
            continue;
        }
        let (slot, took_over) = slots.take(addr.ip());
        if took_over {
            tracing::debug!(%addr, "a peer handshake in progress was ended for a newer one");
        }
        let mesh = mesh.clone();
        tokio::spawn(async move {
            let accepted = tokio::select! {
                accepted = handshake(&mesh, tcp, addr) => accepted,
                // A newer handshake took the slot: this connection closes.
                () = slot.evicted() => None,
            };
            drop(slot);
            if let Some(acc) = accepted {
                link::run(
                    &mesh,
                    acc.hello.node_id,
                    addr,
                    acc.hello.instance,
                    acc.reader,
                    acc.writer,
                    Some(acc.first),
                )
                .await;
            }
        });
    }
}

/// Runs the peer handshake on a connection to the cluster listener; `None` (logged) when it was
/// refused.
async fn handshake(mesh: &Mesh, tcp: TcpStream, addr: SocketAddr) -> Option<noise::PeerAccepted> {
    let respond = |hello: &PeerHello, key: &PublicKey| check_hello(mesh, hello, key, addr);
    let accepted = noise::accept_peer(
        tcp,
        &mesh.accept_auth,
        &mesh.peer_replays,
        mesh.handshake_timeout,
        respond,
    );
    match accepted.await {
        Ok(acc) => Some(acc),
        // Logged at warn by `check_hello`, with the ids.
        Err(LinkError::Auth(reason)) if reason.starts_with(MISMATCH) => None,
        Err(e) => {
            // Rate-limited with the client listener's refusals; no key material in it.
            mesh.refusals.peer_link(addr, &e);
            None
        }
    }
}

/// Prefix of the refusals `check_hello` logs itself.
const MISMATCH: &str = "peer hello does not match";

/// The reply to an authenticated peer's hello, or why it is refused: the node id it claims must
/// be the one configured for its key, and lower than this node's (the lower id dials).
fn check_hello(
    mesh: &Mesh,
    hello: &PeerHello,
    key: &PublicKey,
    addr: SocketAddr,
) -> Result<PeerHello, LinkError> {
    // The handshake admits only the keys of `by_key` (its allow-list is made from them).
    let Some(peer) = mesh.by_key.get(key) else {
        return Err(LinkError::Auth("key is not one of the configured peers'"));
    };
    if hello.node_id != peer.id.get() {
        warn!(
            %addr, configured = peer.id.get(), claimed = hello.node_id,
            "peer link refused: the node id it sent is not the one its key has in [[peer]]"
        );
        return Err(LinkError::Auth(
            "peer hello does not match its [[peer]] entry: another node id",
        ));
    }
    if hello.node_id > mesh.node_id {
        warn!(
            %addr, peer = hello.node_id, node = mesh.node_id,
            "peer link refused: the node with the lower id dials, so this node dials that peer"
        );
        return Err(LinkError::Auth(
            "peer hello does not match its [[peer]] entry: the higher id dialled",
        ));
    }
    Ok(PeerHello {
        node_id: mesh.node_id,
        instance: mesh.instance,
    })
}
