//! The node mesh: one authenticated, encrypted peer link to every other node of the cluster
//! (`[cluster]`, `[[peer]]`; `docs/PROTOCOL.md`, "Peer links").
//!
//! Of two nodes the one with the lower id dials ([`dial`]); the other accepts on its cluster
//! listener, and nowhere else ([`accept`]). A link runs until it dies ([`link`]), then the dialler
//! dials again after an exponential backoff with jitter. Each node draws an `instance` when it
//! starts and both ends of a link learn the other's in the handshake, so a peer that comes back
//! with a new one is known to have restarted.
//!
//! What other parts of the server use: [`Mesh::peer`] gives the [`PeerHandle`] of a live link, to
//! send messages of peer frames on (and [`PeerHandle::give_credit`] the relay's `VIA_CREDIT`,
//! which goes ahead of them: [`Credits`]); what arrives on a link is decoded and dispatched in
//! [`link`], where `PING`, `PONG` and `CLOSE` are handled and every cluster frame goes to the
//! relay's [`crate::relay::PeerState`] of the link.

mod accept;
mod credit;
mod dial;
mod link;

pub(crate) use credit::Credits;

use crate::refused::Refusals;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::info;
use wanmux_config::{Cluster, Peer, ServerAuth, ServerConfig};
use wanmux_core::frame::MAX_MESSAGE;
use wanmux_core::keys::{PrivateKey, Psk, PublicKey};
use wanmux_core::noise;
use wanmux_core::peer::{Handle, PeerFrame};

use crate::relay::{Key, Relay};

/// What a link's task gets when its link is registered.
struct Registered {
    /// Tells this link from a newer one to the same peer, at unregistering.
    generation: u64,
    /// Notified when a newer link replaces this one, or the mesh stops.
    kill: Arc<Notify>,
    /// The messages queued for the link ([`PeerHandle::send`]).
    data: mpsc::Receiver<Bytes>,
    /// The credit owed on it ([`PeerHandle::give_credit`]).
    credits: Arc<Credits>,
}

/// Messages a [`PeerHandle`] may queue for its link before [`PeerHandle::send`] waits:
/// `cluster.relay_queue` bytes in messages of up to 64 KiB (64 by default, 4 MiB).
fn send_queue(relay_queue: u64) -> usize {
    usize::try_from(relay_queue / MAX_MESSAGE as u64)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// A running mesh: the cluster listener, one dialler per peer with a higher id, and the table
/// of live peer links.
#[derive(Debug)]
pub(crate) struct Mesh {
    node_id: u16,
    /// Drawn at start: tells peers this process from an earlier one of the same node.
    instance: u64,
    local_addr: SocketAddr,
    /// This node's static key, for the links it dials.
    private_key: PrivateKey,
    psk: Option<Psk>,
    /// What the cluster listener accepts: this node's key, the peers' keys, the PSK.
    accept_auth: noise::ServerAuth,
    /// The configured peers by key, for the acceptor's check of the node id a key claims.
    by_key: HashMap<PublicKey, Peer>,
    /// The timestamps of the peers' message 1 this node took: a recorded one sent again gets
    /// no answer (`docs/PROTOCOL.md`, "Peer links").
    peer_replays: Mutex<noise::ReplayGuard>,
    handshake_timeout: Duration,
    /// Messages each peer link's queue holds (`cluster.relay_queue`).
    send_queue: usize,
    links: Mutex<Links>,
    /// The ids of the peers with a live link, sorted; every change is published.
    up: watch::Sender<Vec<u16>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stopped: AtomicBool,
    /// The node's rate-limited log and count of refused links.
    refusals: Arc<Refusals>,
    /// Where cluster frames go (`relay`), set by [`Mesh::start`].
    relay: std::sync::OnceLock<std::sync::Weak<Relay>>,
}

/// The live peer links and what is remembered of peers across links.
#[derive(Debug, Default)]
struct Links {
    live: BTreeMap<u16, Live>,
    /// The last instance each peer reported, kept across its links.
    instances: HashMap<u16, u64>,
    next_gen: u64,
}

#[derive(Debug)]
struct Live {
    /// Tells this link from a later one to the same peer.
    generation: u64,
    handle: PeerHandle,
    /// Ends the link's task: a newer link replaced it, or the mesh stopped.
    kill: Arc<Notify>,
}

/// The send side of one live peer link, for the parts of the node that talk to a peer (the
/// relay). Cheap to clone; it stays valid while its link lives, and a message sent after the
/// link died fails with [`SendError::Gone`].
#[derive(Debug, Clone)]
#[allow(
    dead_code,
    reason = "addr and instance: for tests and logs of the mesh"
)]
pub(crate) struct PeerHandle {
    id: u16,
    addr: SocketAddr,
    instance: u64,
    tx: mpsc::Sender<Bytes>,
    /// `VIA_CREDIT` owed on this link, sealed ahead of `tx`'s queue.
    credits: Arc<Credits>,
    /// The sessions this node bound on this link (its direction), by handle.
    binds: Arc<Mutex<Binds>>,
    /// Held while a `BIND` is queued, so that no `RELAY` with its handle goes ahead of it.
    binding: Arc<tokio::sync::Mutex<()>>,
}

/// The handles this node gave sessions on one peer link.
#[derive(Debug, Default)]
struct Binds {
    by_key: HashMap<Key, Handle>,
    by_handle: HashMap<Handle, Key>,
    /// Callers holding a [`Bound`] of the handle: a `RELAY` with it may still be on its way to
    /// the link's queue, so the handle is not unbound yet.
    users: HashMap<Handle, u32>,
    /// Sessions bound per client key.
    per_client: HashMap<Option<PublicKey>, usize>,
    /// Handles whose session ended here while a caller still held them (or while the queue
    /// was full): unbound when their last [`Bound`] is dropped, unless bound again meanwhile.
    unbind_when_free: std::collections::HashSet<Handle>,
    next: u32,
}

impl Binds {
    /// Queues `UNBIND` for `handle` and forgets it; false (nothing changed) when the queue is
    /// full. The caller holds the lock, so no caller takes the handle between the check of its
    /// users and the queueing, and nothing that uses it follows the `UNBIND`.
    fn unbind_now(&mut self, tx: &mpsc::Sender<Bytes>, handle: Handle) -> bool {
        let Some(&key) = self.by_handle.get(&handle) else {
            return false;
        };
        let mut msg = bytes::BytesMut::new();
        PeerFrame::Unbind { handle }.encode(&mut msg);
        if tx.try_send(msg.freeze()).is_err() {
            return false;
        }
        self.by_key.remove(&key);
        self.by_handle.remove(&handle);
        self.unbind_when_free.remove(&handle);
        if let Some(n) = self.per_client.get_mut(&key.0) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&key.0);
            }
        }
        true
    }
}

/// A handle in use by a caller of [`PeerHandle::bind`] until it has queued what uses it.
#[derive(Debug)]
pub(crate) struct Bound {
    binds: Arc<Mutex<Binds>>,
    /// The link's queue, for an `UNBIND` that waited for this caller.
    tx: mpsc::Sender<Bytes>,
    handle: Handle,
}

impl Bound {
    /// The session's handle on the link.
    pub(crate) fn handle(&self) -> Handle {
        self.handle
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        let mut b = self.binds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = b.users.get_mut(&self.handle) {
            *n -= 1;
            if *n == 0 {
                b.users.remove(&self.handle);
                if b.unbind_when_free.contains(&self.handle) {
                    // A full queue leaves it bound, as `PeerHandle::unbind` does.
                    b.unbind_now(&self.tx, self.handle);
                }
            }
        }
    }
}

/// Why a message was not queued on a peer link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SendError {
    /// The link ended; the peer's next link has another [`PeerHandle`].
    #[error("peer link to node {0} is gone")]
    Gone(u16),
    /// The message is longer than one link message may be ([`MAX_MESSAGE`]): a local bug.
    #[error("message of {0} bytes is longer than a link message")]
    TooLong(usize),
    /// The client has [`MAX_BINDS_PER_CLIENT`] sessions bound on this link already.
    #[error("the client has {MAX_BINDS_PER_CLIENT} sessions bound on this peer link already")]
    TooManyBinds,
}

/// Sessions one client may have bound on one peer link at once (this node's direction). A
/// client has one session per node at a time, and an old one for a while after it starts over;
/// without a cap, one client naming ever new session ids in its sections would make the relay
/// bind them all, and the owner closes a peer link past 65,536 bindings, for every client.
pub(crate) const MAX_BINDS_PER_CLIENT: usize = 64;

#[allow(
    dead_code,
    reason = "addr and instance: for tests and logs of the mesh"
)]
impl PeerHandle {
    /// The handle of session `key` on this link; the first time, its `BIND` is queued before
    /// this returns (and before any other caller learns the handle), so every `RELAY` that uses
    /// it follows the `BIND` on the link. The handle is not unbound
    /// ([`PeerHandle::unbind`]) while the returned [`Bound`] lives: drop it once what uses the
    /// handle is queued, so the `UNBIND` follows it on the link.
    pub(crate) async fn bind(&self, key: Key) -> Result<Bound, SendError> {
        let known = |binds: &Arc<Mutex<Binds>>| {
            // Only map operations run under this lock.
            let mut b = binds.lock().unwrap_or_else(|e| e.into_inner());
            let h = b.by_key.get(&key).copied()?;
            *b.users.entry(h).or_insert(0) += 1;
            // In use again: an UNBIND that waited for its users is off.
            b.unbind_when_free.remove(&h);
            Some(Bound {
                binds: binds.clone(),
                tx: self.tx.clone(),
                handle: h,
            })
        };
        if let Some(h) = known(&self.binds) {
            return Ok(h);
        }
        let _binding = self.binding.lock().await;
        if let Some(h) = known(&self.binds) {
            return Ok(h);
        }
        let handle = {
            let mut b = self.binds.lock().unwrap_or_else(|e| e.into_inner());
            if b.per_client.get(&key.0).copied().unwrap_or(0) >= MAX_BINDS_PER_CLIENT {
                return Err(SendError::TooManyBinds);
            }
            b.next = b.next.wrapping_add(1);
            Handle(b.next)
        };
        let mut msg = bytes::BytesMut::new();
        PeerFrame::Bind {
            handle,
            client: key.0.unwrap_or(PublicKey::from_bytes([0; 32])),
            session: key.1,
        }
        .encode(&mut msg);
        self.send(msg.freeze()).await?;
        let mut b = self.binds.lock().unwrap_or_else(|e| e.into_inner());
        b.by_key.insert(key, handle);
        b.by_handle.insert(handle, key);
        b.users.insert(handle, 1);
        *b.per_client.entry(key.0).or_insert(0) += 1;
        Ok(Bound {
            binds: self.binds.clone(),
            tx: self.tx.clone(),
            handle,
        })
    }

    /// Session `key` ended at this node: its handle on this link is given up with `UNBIND`.
    /// While a caller still holds it (a `RELAY` with it on its way to the queue) the `UNBIND`
    /// waits for the last one to drop its [`Bound`], unless the handle is bound again first; a
    /// full queue leaves it bound (a later session end, or the link's end, frees it; the peer
    /// takes at most 65,536). Whether it was unbound now.
    pub(crate) fn unbind(&self, key: Key) -> bool {
        let mut b = self.binds.lock().unwrap_or_else(|e| e.into_inner());
        let Some(&handle) = b.by_key.get(&key) else {
            return false;
        };
        if b.users.contains_key(&handle) {
            b.unbind_when_free.insert(handle);
            return false;
        }
        b.unbind_now(&self.tx, handle)
    }

    /// Sessions bound on this link now (this node's direction).
    pub(crate) fn bound_count(&self) -> usize {
        self.binds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_key
            .len()
    }

    /// The session this node bound as `handle` on this link: `Ok(None)` for a handle it bound
    /// and has unbound since (the peer may still use it until it reads the `UNBIND`), `Err` for
    /// one it never gave out.
    pub(crate) fn bound(&self, handle: Handle) -> Result<Option<Key>, ()> {
        let b = self.binds.lock().unwrap_or_else(|e| e.into_inner());
        match b.by_handle.get(&handle) {
            Some(key) => Ok(Some(*key)),
            // Handles are given out in order from 1.
            None if handle.0 != 0 && handle.0 <= b.next => Ok(None),
            None => Err(()),
        }
    }

    /// The peer's node id.
    pub(crate) fn id(&self) -> u16 {
        self.id
    }

    /// The peer's address on this link.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The peer's instance, from this link's handshake.
    pub(crate) fn instance(&self) -> u64 {
        self.instance
    }

    /// Queues one message for the link: encoded peer frames
    /// ([`wanmux_core::peer::PeerFrame::encode`]), back to back, at most [`MAX_MESSAGE`] bytes.
    /// Waits while its queue (`cluster.relay_queue`) is full: the link's pace is the sender's.
    pub(crate) async fn send(&self, message: Bytes) -> Result<(), SendError> {
        if message.len() > MAX_MESSAGE {
            return Err(SendError::TooLong(message.len()));
        }
        self.tx
            .send(message)
            .await
            .map_err(|_| SendError::Gone(self.id))
    }

    /// Owes the owner of virtual link (`handle`, `via`) `bytes` of credit: sent as `VIA_CREDIT`
    /// ahead of the queued messages, added up with any still unsent ([`Credits`]).
    pub(crate) fn give_credit(&self, handle: Handle, via: wanmux_core::peer::Via, bytes: u64) {
        self.credits.give(handle, via, bytes);
    }

    /// As [`send`](Self::send) without waiting: `Ok(false)` when the queue is full.
    pub(crate) fn try_send(&self, message: Bytes) -> Result<bool, SendError> {
        if message.len() > MAX_MESSAGE {
            return Err(SendError::TooLong(message.len()));
        }
        match self.tx.try_send(message) {
            Ok(()) => Ok(true),
            Err(mpsc::error::TrySendError::Full(_)) => Ok(false),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Gone(self.id)),
        }
    }
}

impl Mesh {
    /// Binds `cluster.listen` and builds the mesh; nothing is accepted or dialled before
    /// [`Mesh::start`]. `config.cluster` is `Some`.
    pub(crate) async fn bind(
        config: &ServerConfig,
        cluster: &Cluster,
        refusals: Arc<Refusals>,
    ) -> std::io::Result<(Arc<Mesh>, TcpListener)> {
        let ServerAuth::StaticKey { private_key, .. } = &config.auth else {
            // `validate` and the TOML path refuse a cluster on a PSK-only node.
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a cluster needs static-key mode (server.private_key)",
            ));
        };
        let listener = TcpListener::bind(cluster.listen).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {} (cluster.listen): {e}", cluster.listen),
            )
        })?;
        let local_addr = listener.local_addr()?;
        let accept_auth = noise::ServerAuth {
            private_key: Some(private_key.clone()),
            allowed_clients: cluster.peers.iter().map(|p| p.public_key).collect(),
            psk: cluster.psk.clone(),
        };
        let mesh = Arc::new(Mesh {
            node_id: config.node_id.get(),
            instance: rand::random(),
            local_addr,
            private_key: private_key.clone(),
            psk: cluster.psk.clone(),
            accept_auth,
            by_key: cluster
                .peers
                .iter()
                .map(|p| (p.public_key, p.clone()))
                .collect(),
            peer_replays: Mutex::new(noise::ReplayGuard::default()),
            handshake_timeout: config.handshake_timeout,
            send_queue: send_queue(cluster.relay_queue),
            links: Mutex::new(Links::default()),
            up: watch::Sender::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            refusals,
            relay: std::sync::OnceLock::new(),
        });
        info!(listen = %local_addr, node = mesh.node_id, peers = cluster.peers.len(), "cluster listening");
        Ok((mesh, listener))
    }

    /// Sets the relay that cluster frames go to (made after the mesh, with the sessions), then
    /// starts accepting peer links on `listener` (from [`Mesh::bind`]) and dialling the peers
    /// with higher ids. In that order: a peer link takes the relay when it comes up, and one
    /// that came up before the relay was set refused every cluster frame its peer sent ("relay
    /// not supported by this node") until it was closed and dialled again.
    pub(crate) fn start(self: &Arc<Self>, listener: TcpListener, relay: std::sync::Weak<Relay>) {
        let _ = self.relay.set(relay);
        let mut dial: Vec<_> = self
            .by_key
            .values()
            .filter(|p| p.id.get() > self.node_id)
            .cloned()
            .collect();
        dial.sort_by_key(|p| p.id);
        let mut tasks = vec![tokio::spawn(accept::accept_loop(listener, self.clone()))];
        for peer in dial {
            tasks.push(tokio::spawn(dial::dial_loop(self.clone(), peer)));
        }
        *self.tasks.lock().expect("mesh task lock poisoned") = tasks;
    }

    /// The address peer links are accepted on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This process's instance.
    pub(crate) fn instance(&self) -> u64 {
        self.instance
    }

    /// The ids of the peers with a live link, sorted.
    pub(crate) fn peers_up(&self) -> Vec<u16> {
        self.up.borrow().clone()
    }

    /// Waits until the set of peers with a live link satisfies `ready`.
    pub(crate) async fn wait_for_peers(&self, mut ready: impl FnMut(&[u16]) -> bool) {
        let mut rx = self.up.subscribe();
        // The sender lives as long as `self`, so the channel cannot close while this waits.
        let _ = rx.wait_for(|up| ready(up)).await;
    }

    /// The last instance `peer` reported (on a live link or an earlier one).
    pub(crate) fn peer_instance(&self, peer: u16) -> Option<u64> {
        self.lock().instances.get(&peer).copied()
    }

    /// The configured peers' ids, sorted.
    pub(crate) fn peer_ids(&self) -> Vec<u16> {
        let mut ids: Vec<u16> = self.by_key.values().map(|p| p.id.get()).collect();
        ids.sort_unstable();
        ids
    }

    /// Whether `node` is a configured peer.
    pub(crate) fn is_peer(&self, node: u16) -> bool {
        self.by_key.values().any(|p| p.id.get() == node)
    }

    /// The relay, while the node runs.
    pub(crate) fn relay(&self) -> Option<Arc<Relay>> {
        self.relay.get().and_then(std::sync::Weak::upgrade)
    }

    /// The live link to `peer`, to send on.
    pub(crate) fn peer(&self, peer: u16) -> Option<PeerHandle> {
        self.lock().live.get(&peer).map(|l| l.handle.clone())
    }

    /// Stops accepting and dialling and closes every peer link.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        for task in self
            .tasks
            .lock()
            .expect("mesh task lock poisoned")
            .drain(..)
        {
            task.abort();
        }
        let mut links = self.lock();
        for (_, live) in std::mem::take(&mut links.live) {
            live.kill.notify_one();
        }
        drop(links);
        self.publish();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Links> {
        // Only map operations run under this lock.
        self.links.lock().expect("peer link table lock poisoned")
    }

    /// Records a link that completed its handshake: it replaces an older link to the same peer
    /// (which the peer gave up on, or it would not have dialled again). `None` once the mesh
    /// stopped. Logs the link up, and the peer's restart when its instance changed.
    fn register(&self, id: u16, addr: SocketAddr, instance: u64) -> Option<Registered> {
        let (tx, rx) = mpsc::channel(self.send_queue);
        let credits = Arc::new(Credits::default());
        let kill = Arc::new(Notify::new());
        let mut links = self.lock();
        if self.stopped.load(Ordering::SeqCst) {
            return None;
        }
        links.next_gen += 1;
        let generation = links.next_gen;
        match links.instances.insert(id, instance) {
            Some(old) if old != instance => {
                info!(peer = id, %addr, "peer restarted (new instance): what it had with this node is gone")
            }
            _ => {}
        }
        let live = Live {
            generation,
            handle: PeerHandle {
                id,
                addr,
                instance,
                tx,
                credits: credits.clone(),
                binds: Arc::default(),
                binding: Arc::default(),
            },
            kill: kill.clone(),
        };
        if let Some(old) = links.live.insert(id, live) {
            info!(peer = id, %addr, "peer link replaced by a newer one");
            old.kill.notify_one();
        }
        drop(links);
        info!(peer = id, %addr, "peer link up");
        self.publish();
        Some(Registered {
            generation,
            kill,
            data: rx,
            credits,
        })
    }

    /// Forgets a link that ended, unless a newer one replaced it already.
    fn unregister(&self, id: u16, generation: u64) {
        let mut links = self.lock();
        if links
            .live
            .get(&id)
            .is_some_and(|l| l.generation == generation)
        {
            links.live.remove(&id);
        }
        drop(links);
        if let Some(relay) = self.relay() {
            relay.peer_down(id);
        }
        self.publish();
    }

    fn publish(&self) {
        let up: Vec<u16> = self.lock().live.keys().copied().collect();
        self.up.send_if_modified(|old| {
            let changed = *old != up;
            *old = up;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU16;
    use wanmux_config::Service;
    use wanmux_core::keys::generate_keypair;
    use wanmux_core::peer::PeerFrame;

    /// `UNBIND` is queued only once nobody holds the handle, after what they queued with it,
    /// and a handle given back reads as unbound, not as never given out.
    #[tokio::test]
    async fn unbind_waits_for_the_handles_users_and_follows_their_messages() {
        let (tx, mut rx) = mpsc::channel(16);
        let peer = PeerHandle {
            id: 2,
            addr: "127.0.0.1:9".parse().unwrap(),
            instance: 1,
            tx,
            credits: Arc::default(),
            binds: Arc::default(),
            binding: Arc::default(),
        };
        let key: Key = (
            Some(generate_keypair().1),
            wanmux_core::ids::SessionId([7; 16]),
        );
        let frame = |rx: &mut mpsc::Receiver<Bytes>| {
            let mut b = rx.try_recv().expect("a message");
            PeerFrame::decode(&mut b)
                .expect("decodes")
                .expect("a frame")
        };
        let bound = peer.bind(key).await.expect("bind");
        let h = bound.handle();
        assert_eq!(h, Handle(1));
        assert!(matches!(frame(&mut rx), PeerFrame::Bind { handle, .. } if handle == h));
        // A second user of the same session.
        let again = peer.bind(key).await.expect("bind");
        assert_eq!(again.handle(), h);
        drop(bound);
        assert!(!peer.unbind(key), "a user still holds the handle");
        peer.send(Bytes::from_static(&[0x01, 0, 0, 0, 0, 0, 0, 0, 9]))
            .await
            .expect("queued");
        assert_eq!(peer.bound_count(), 1, "bound while a user holds it");
        // The last user queued what it had; dropping it queues the UNBIND that waited.
        drop(again);
        assert!(matches!(frame(&mut rx), PeerFrame::Ping(9)));
        assert!(matches!(frame(&mut rx), PeerFrame::Unbind { handle } if handle == h));
        assert_eq!(peer.bound_count(), 0);
        assert_eq!(peer.bound(h), Ok(None));
        assert_eq!(peer.bound(Handle(2)), Err(()));
        assert_eq!(peer.bound(Handle(0)), Err(()));
        assert!(!peer.unbind(key), "nothing left to unbind");
        // The session's next link binds a new handle.
        let next = peer.bind(key).await.expect("bind");
        assert_eq!(next.handle(), Handle(2));
        assert!(matches!(frame(&mut rx), PeerFrame::Bind { handle, .. } if handle == Handle(2)));
        // An UNBIND waiting for its users is off once the session binds the handle again.
        assert!(!peer.unbind(key));
        let reused = peer.bind(key).await.expect("bind");
        assert_eq!(reused.handle(), Handle(2));
        drop(next);
        drop(reused);
        assert!(
            rx.try_recv().is_err(),
            "no UNBIND: the session uses it again"
        );
        assert_eq!(peer.bound_count(), 1);
        assert!(peer.unbind(key));
        assert!(matches!(frame(&mut rx), PeerFrame::Unbind { handle } if handle == Handle(2)));
    }

    fn config(id: u16, key: PrivateKey, peer: (u16, SocketAddr, PublicKey)) -> ServerConfig {
        let mut c = ServerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            NonZeroU16::new(id).unwrap(),
            ServerAuth::StaticKey {
                private_key: key,
                allowed_clients: [generate_keypair().1].into(),
                psk: None,
            },
            vec![Service {
                name: "s".parse().unwrap(),
                target: "127.0.0.1:9".parse().unwrap(),
            }],
        );
        c.cluster = Some(Cluster {
            listen: "127.0.0.1:0".parse().unwrap(),
            relay_queue: Cluster::DEFAULT_RELAY_QUEUE,
            psk: None,
            peers: vec![Peer {
                id: NonZeroU16::new(peer.0).unwrap(),
                addr: peer.1.into(),
                public_key: peer.2,
            }],
        });
        c.validate().unwrap();
        c
    }

    /// Node 2 running, and the config of node 1, its peer.
    async fn node_two_and_one() -> (crate::ServerHandle, ServerConfig) {
        let (key1, pub1) = generate_keypair();
        let (key2, pub2) = generate_keypair();
        // Node 2 never dials node 1 (the lower id dials), so the address it has for it is unused.
        let unused = "127.0.0.1:9".parse().unwrap();
        let two = crate::start(config(2, key2, (1, unused, pub1)))
            .await
            .unwrap();
        let one = config(1, key1, (2, two.cluster_addr().unwrap(), pub2));
        (two, one)
    }

    /// A message sent through a `PeerHandle` reaches the peer: a `CLOSE` makes it end the link,
    /// after which the handle reports the link gone.
    #[tokio::test]
    async fn a_peer_handle_sends_to_its_peer() {
        let (two, one) = node_two_and_one().await;
        let at = two.cluster_addr().unwrap();
        let one = crate::start(one).await.unwrap();
        one.wait_for_peers(|up| up == [2]).await;
        two.wait_for_peers(|up| up == [1]).await;

        let mesh = one.mesh.as_ref().unwrap();
        let handle = mesh.peer(2).expect("a live link to node 2");
        assert_eq!((handle.id(), Some(handle.instance())), (2, two.instance()));
        assert_eq!(handle.addr(), at);
        let long = Bytes::from(vec![0; MAX_MESSAGE + 1]);
        assert_eq!(
            handle.send(long.clone()).await,
            Err(SendError::TooLong(MAX_MESSAGE + 1))
        );
        assert_eq!(
            handle.try_send(long),
            Err(SendError::TooLong(MAX_MESSAGE + 1))
        );

        let mut close = bytes::BytesMut::new();
        PeerFrame::Close(0).encode(&mut close);
        handle.send(close.freeze()).await.unwrap();
        let gone = async {
            loop {
                match handle.try_send(Bytes::new()) {
                    Err(e) => return e,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        };
        let gone = tokio::time::timeout(Duration::from_secs(10), gone).await;
        assert_eq!(gone, Ok(SendError::Gone(2)));
        // Node 1 dials again: a new link, a new handle.
        one.wait_for_peers(|up| up == [2]).await;
        let again = mesh.peer(2).expect("a live link to node 2 again");
        assert!(again.try_send(Bytes::new()).is_ok());
    }

    /// A bound mesh neither dials nor accepts until it starts with its relay, so every peer link
    /// has the relay from its first frame (a link up before the relay refused what its peer
    /// relayed, "relay not supported by this node").
    #[tokio::test]
    async fn no_peer_link_comes_up_before_the_mesh_has_its_relay() {
        let (two, config) = node_two_and_one().await;
        let cluster = config.cluster.clone().unwrap();
        let (mesh, listener) = Mesh::bind(&config, &cluster, Arc::default()).await.unwrap();
        // Node 2 is up and node 1 would dial it at once (the lower id dials).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(two.peers_up(), Vec::<u16>::new(), "a bound mesh dialled");
        assert!(mesh.relay().is_none() && mesh.peers_up().is_empty());

        let sessions = Arc::new(crate::session::Sessions::new(config.clone()));
        let relay = Arc::new(Relay::new(1, mesh.clone(), Arc::downgrade(&sessions)));
        mesh.start(listener, Arc::downgrade(&relay));
        mesh.wait_for_peers(|up| up == [2]).await;
        assert!(mesh.relay().is_some());
        mesh.stop();
    }
}
