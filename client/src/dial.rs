//! One link slot: dial, handshake, run the link, and when it dies dial again after an
//! exponential backoff with random jitter, so many clients that lose a server at once do not
//! come back in the same instant.

use bytes::BytesMut;
use rand::Rng;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};
use wanmux_config::{Node, NodeHandshake};
use wanmux_core::driver::{self, SessionDriver};
use wanmux_core::frame::Frame;
use wanmux_core::ids::SessionId;
use wanmux_core::noise::{self, ClientAuth, ClientHello};
use wanmux_core::quic;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A link that lived this long resets the backoff: it was a working link that died (a reset, a
/// dead path), not a server refusing us, so it is redialled at once (after the jitter). Links
/// that die sooner, and failed dials, double the backoff. (With 10 s here, links killed every
/// second by a middlebox drifted toward ever longer redial delays: bench recovery.)
const STABLE: Duration = Duration::from_secs(1);

pub(crate) fn noise_auth(hs: NodeHandshake<'_>) -> ClientAuth {
    match hs {
        NodeHandshake::StaticKey { local, remote, psk } => ClientAuth::Static {
            local: local.clone(),
            server: *remote,
            psk: psk.cloned(),
        },
        NodeHandshake::PskOnly { psk } => ClientAuth::Psk(psk.clone()),
    }
}

/// The session as the links see it, shared by the slots: its id (sent in every handshake) and
/// the epoch of the server's instance of it (learnt from the first handshake).
#[derive(Debug)]
pub(crate) struct SessionState {
    pub(crate) id: SessionId,
    pub(crate) epoch: Option<u64>,
    /// When `epoch` was adopted: a handshake that began before it may report the epoch of a
    /// server instance that is already gone.
    pub(crate) epoch_since: Instant,
}

pub(crate) type SharedState = std::sync::Arc<std::sync::Mutex<SessionState>>;

pub(crate) fn lock(state: &SharedState) -> std::sync::MutexGuard<'_, SessionState> {
    // Only plain reads and stores run under this lock.
    state.lock().expect("session state lock poisoned")
}

#[derive(Clone)]
pub(crate) struct Slot {
    pub(crate) driver: SessionDriver,
    pub(crate) state: SharedState,
    /// The id of this slot's link while it is up, 0 while it is not.
    pub(crate) link: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub(crate) node: Node,
    pub(crate) auth: ClientAuth,
    pub(crate) link_seq: u32,
    pub(crate) handshake_timeout: Duration,
    /// TCP congestion control for the link sockets (`links.congestion`).
    pub(crate) congestion: Option<String>,
    /// Set when links are QUIC connections (`links.transport = "quic"`), not TCP.
    pub(crate) quic: Option<std::sync::Arc<QuicEndpoints>>,
}

/// The client's QUIC endpoints (one UDP socket per address family), made on first use and
/// shared by every link.
#[derive(Debug, Default)]
pub(crate) struct QuicEndpoints {
    v4: std::sync::Mutex<Option<quinn::Endpoint>>,
    v6: std::sync::Mutex<Option<quinn::Endpoint>>,
}

impl QuicEndpoints {
    fn for_peer(&self, peer: SocketAddr) -> std::io::Result<quinn::Endpoint> {
        let (slot, local): (_, SocketAddr) = if peer.is_ipv4() {
            (&self.v4, (std::net::Ipv4Addr::UNSPECIFIED, 0).into())
        } else {
            (&self.v6, (std::net::Ipv6Addr::UNSPECIFIED, 0).into())
        };
        // Only creation and a clone run under this lock.
        let mut slot = slot.lock().expect("QUIC endpoint lock poisoned");
        if let Some(ep) = &*slot {
            return Ok(ep.clone());
        }
        let ep = quic::client_endpoint(local)?;
        *slot = Some(ep.clone());
        Ok(ep)
    }
}

impl Slot {
    pub(crate) async fn run(self) {
        let mut backoff = BACKOFF_MIN;
        let mut first = BytesMut::new();
        // The key-confirmation message carries one ping (PROTOCOL.md); its pong is ignored.
        Frame::Ping(u64::MAX).encode(&mut first);
        let addr = self.node.addr.to_string();
        loop {
            let started = Instant::now();
            match self.dial(&addr, &first).await {
                Ok((_, _, epoch, id)) if !self.check_epoch(epoch, started, id) => {
                    debug!(node = %self.node.id, %addr, "link to a replaced server instance dropped");
                }
                Ok((reader, writer, _, _)) => {
                    info!(node = %self.node.id, %addr, link_seq = self.link_seq, "link up");
                    let link = self.link.clone();
                    let set = move |id: wanmux_core::ids::LinkId| link.store(id.0, Relaxed);
                    let end =
                        driver::link::run_with(self.driver.clone(), reader, writer, None, set)
                            .await;
                    self.link.store(0, Relaxed);
                    // The link task logged the end at info level, with the link's numbers.
                    debug!(node = %self.node.id, %addr, %end, "link down");
                }
                Err(e) => debug!(node = %self.node.id, %addr, error = %e, "dial failed"),
            }
            if started.elapsed() >= STABLE {
                backoff = BACKOFF_MIN;
            }
            // Full jitter: sleep uniformly in [backoff/2, backoff].
            let sleep = rand::rng().random_range(backoff / 2..=backoff);
            tokio::time::sleep(sleep).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// A link to a server that no longer has our session (it restarted, or its grace period
    /// ran out) reports a new epoch: the streams it carried are gone there, so they are reset
    /// here and the session starts afresh before the link joins it.
    ///
    /// Returns `false` for a link that must not join: its handshake began before the current
    /// epoch was adopted and reports another one, so it reached a server instance that has
    /// since been replaced (a restart racing with this dial). Such a link is dropped and dialled
    /// again rather than allowed to reset the session a second time.
    fn check_epoch(&self, epoch: u64, dial_started: Instant, id: SessionId) -> bool {
        let mut state = lock(&self.state);
        if state.id != id {
            // The client gave up on the session this dial was for while it was under way.
            return false;
        }
        match state.epoch {
            Some(e) if e == epoch => true,
            Some(_) if dial_started < state.epoch_since => false,
            Some(_) => {
                warn!(node = %self.node.id, "the server lost this session; open connections are reset");
                self.driver.restart();
                state.epoch = Some(epoch);
                state.epoch_since = Instant::now();
                true
            }
            None => {
                state.epoch = Some(epoch);
                state.epoch_since = Instant::now();
                true
            }
        }
    }

    async fn dial(
        &self,
        addr: &str,
        first: &[u8],
    ) -> Result<(noise::LinkReader, noise::LinkWriter, u64, SessionId), noise::LinkError> {
        let session_id = lock(&self.state).id;
        let hello = ClientHello {
            session_id: session_id.0,
            link_seq: self.link_seq,
        };
        let timeout = self.handshake_timeout;
        let (reader, writer, server) = match &self.quic {
            Some(endpoints) => {
                let peer = tokio::time::timeout(timeout, tokio::net::lookup_host(addr))
                    .await
                    .map_err(|_| noise::LinkError::Timeout)??
                    .next()
                    .ok_or(noise::LinkError::Io(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the node's host name has no address",
                    )))?;
                let endpoint = endpoints.for_peer(peer)?;
                let (rd, wr) = quic::connect(&endpoint, peer, timeout).await?;
                noise::connect_stream(rd, wr, &self.auth, &hello, first, timeout).await?
            }
            None => {
                let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
                    .await
                    .map_err(|_| noise::LinkError::Timeout)??;
                if let Some(cc) = &self.congestion {
                    if let Err(e) = noise::set_congestion(&tcp, cc) {
                        warn!(congestion = %cc, error = %e, "cannot set the link's congestion control");
                    }
                }
                noise::connect(tcp, &self.auth, &hello, first, timeout).await?
            }
        };
        if server.node_id != self.node.id.get() {
            // Frames for streams this node does not own would be refused; say so plainly.
            info!(expected = %self.node.id, got = server.node_id, "node id mismatch");
            return Err(noise::LinkError::Protocol("node id mismatch"));
        }
        Ok((reader, writer, server.epoch, session_id))
    }
}
