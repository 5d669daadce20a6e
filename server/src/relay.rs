//! The node's part in striping (`docs/PROTOCOL.md`, "Routing", "Relay queues and credit"): it
//! relays the sections other owners' streams send on its client links, and it runs the virtual
//! links through which its own streams' frames go out on its peers' client links.
//!
//! **As a relay** (node P, client link L, owner N): a `ROUTE` section that arrives on L goes to N
//! as a `RELAY` on the peer link P-N, unchanged, after a `BIND` of (client key, session id) the
//! first time on that link. P keeps no stream state. The peer link's send queue is bounded, so a
//! reader of L waits while it is full: backpressure onto the client links that feed it. What N
//! sends back for L (`RELAY_DOWN`) waits in L's queue until L's writer takes it, as one
//! `ROUTE(N)` section between L's own messages; P then returns the bytes as `VIA_CREDIT`.
//!
//! **As an owner** (node N): the first `RELAY` from peer P for client link `via` of a session N
//! has, under the epoch N has for it, adds a virtual link (P, via) to that session's engine;
//! its messages go to P as `RELAY_DOWN` while the link has credit ([`VIA_WINDOW`] at first,
//! returned by `VIA_CREDIT`). A `RELAY` for a session or epoch N does not have is answered with
//! `NO_SESSION` and creates nothing. `VIA_DOWN`, or the peer link's end, removes the virtual
//! link: its engine sends what it carried unconfirmed on its other links.

use crate::mesh::{Mesh, PeerHandle};
use crate::session::Sessions;
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::Notify;
use tracing::debug;
use wanmux_core::driver::link::{LinkEnd, RouteFuture, Router};
use wanmux_core::driver::{LinkKind, SessionDriver};
use wanmux_core::ids::{LinkId, SessionId};
use wanmux_core::keys::PublicKey;
use wanmux_core::peer::{Handle, PeerFrame, Via};
use wanmux_core::route::{self, Routed, DOWN_NO_PEER, DOWN_NO_SESSION};

/// Credit of a virtual link when it is made (protocol constant): section bytes the owner may
/// send through one client link of a relay before the relay returns any. A relay holds at most
/// this much per owner for each of its client links.
pub(crate) const VIA_WINDOW: u64 = 1024 * 1024;

/// `NO_SESSION` code: no session with that id and epoch.
const NO_SESSION: u16 = 1;
/// `NO_SESSION` code: the owner refused the frames (they broke the protocol).
const REFUSED: u16 = 2;

/// A session as peers name it: (client key, session id).
pub(crate) type Key = (Option<PublicKey>, SessionId);

/// The relay and owner sides of striping on this node.
#[derive(Debug)]
pub(crate) struct Relay {
    node_id: u16,
    mesh: Arc<Mesh>,
    sessions: Weak<Sessions>,
    next_via: AtomicU32,
    vias: Mutex<HashMap<Via, Arc<ViaQueue>>>,
    /// Per peer: section bytes relayed to it (upstream) and from it (downstream).
    counted: Mutex<HashMap<u16, Arc<PeerCount>>>,
}

/// Section bytes relayed for one peer.
#[derive(Debug, Default)]
pub(crate) struct PeerCount {
    pub(crate) up: AtomicU64,
    pub(crate) down: AtomicU64,
}

/// What waits to go out on one client link of this node for other owners.
#[derive(Debug)]
struct ViaQueue {
    client: Option<PublicKey>,
    state: Mutex<ViaState>,
}

#[derive(Debug, Default)]
struct ViaState {
    waker: Option<Arc<Notify>>,
    /// Routed messages to write, and the owner (and its handle) each came from.
    queue: VecDeque<(u16, Handle, Bytes)>,
    /// Bytes queued per owner, at most [`VIA_WINDOW`].
    queued: HashMap<u16, u64>,
    /// Credit taken off the queue and not yet returned, per (owner, handle).
    owed: HashMap<(u16, Handle), u64>,
    /// The owners this link's sections went to: (owner, handle) -> the session and epoch named,
    /// for `VIA_DOWN` when the link ends and `ROUTE_DOWN` when a peer link does.
    owners: HashMap<u16, (Handle, SessionId, u64)>,
    ended: bool,
}

impl Relay {
    pub(crate) fn new(node_id: u16, mesh: Arc<Mesh>, sessions: Weak<Sessions>) -> Self {
        Relay {
            node_id,
            mesh,
            sessions,
            next_via: AtomicU32::new(1),
            vias: Mutex::new(HashMap::new()),
            counted: Mutex::new(HashMap::new()),
        }
    }

    fn vias(&self) -> std::sync::MutexGuard<'_, HashMap<Via, Arc<ViaQueue>>> {
        // Only map operations run under this lock.
        self.vias.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, peer: u16) -> Arc<PeerCount> {
        let mut c = self.counted.lock().unwrap_or_else(|e| e.into_inner());
        c.entry(peer).or_default().clone()
    }

    /// Section bytes (to, from) `peer` relayed since start.
    pub(crate) fn relayed(&self, peer: u16) -> (u64, u64) {
        let c = self.counted.lock().unwrap_or_else(|e| e.into_inner());
        c.get(&peer)
            .map_or((0, 0), |c| (c.up.load(Relaxed), c.down.load(Relaxed)))
    }

    /// Section bytes relayed with each peer, for the node's status.
    pub(crate) fn relayed_all(&self) -> Vec<wanmux_core::status::RelayedStatus> {
        let peers: Vec<u16> = self.mesh.peer_ids();
        peers
            .into_iter()
            .map(|node| {
                let (sent, received) = self.relayed(node);
                wanmux_core::status::RelayedStatus {
                    node,
                    sent_bytes: sent,
                    received_bytes: received,
                }
            })
            .collect()
    }

    /// The router of a new client link of session (`client`, ...).
    pub(crate) fn router(self: &Arc<Self>, client: Option<PublicKey>) -> Arc<dyn Router> {
        let via = Via(self.next_via.fetch_add(1, Relaxed));
        let queue = Arc::new(ViaQueue {
            client,
            state: Mutex::new(ViaState::default()),
        });
        self.vias().insert(via, queue.clone());
        Arc::new(NodeRouter {
            relay: self.clone(),
            via,
            queue,
        })
    }

    /// A peer link to `peer` ended: the client links that relayed to it learn that the
    /// sub-link is down.
    pub(crate) fn peer_down(&self, peer: u16) {
        let vias: Vec<Arc<ViaQueue>> = self.vias().values().cloned().collect();
        for v in vias {
            let mut st = v.lock();
            if let Some((_, session, epoch)) = st.owners.remove(&peer) {
                let mut b = BytesMut::new();
                Routed::Down {
                    node: peer,
                    session,
                    epoch,
                    code: DOWN_NO_PEER,
                }
                .encode(&mut b);
                st.push(peer, Handle(0), b.freeze(), 0);
            }
            st.owed.retain(|(owner, _), _| *owner != peer);
        }
    }

    /// `RELAY_DOWN` from `peer` (the owner): a virtual link's message for client link `via`.
    fn relay_down(
        &self,
        peer: &PeerHandle,
        handle: Handle,
        via: Via,
        epoch: u64,
        frames: Bytes,
    ) -> Result<(), &'static str> {
        let Some(key) = peer.bound(handle) else {
            return Err("RELAY_DOWN for a handle this node did not bind");
        };
        let Some(v) = self.vias().get(&via).cloned() else {
            // The client link is gone; VIA_DOWN is on its way.
            return Ok(());
        };
        if v.client != key.0 {
            return Err("RELAY_DOWN for a client link of another client");
        }
        let len = frames.len() as u64;
        let mut b = BytesMut::with_capacity(route::ROUTE_HEADER + frames.len());
        Routed::Section {
            node: peer.id(),
            session: key.1,
            epoch,
            frames,
        }
        .encode(&mut b);
        let mut st = v.lock();
        if st.ended {
            return Ok(());
        }
        let queued = st.queued.get(&peer.id()).copied().unwrap_or(0);
        if queued + len > VIA_WINDOW {
            return Err("RELAY_DOWN beyond the virtual link's credit");
        }
        st.push(peer.id(), handle, b.freeze(), len);
        self.count(peer.id()).down.fetch_add(len, Relaxed);
        Ok(())
    }

    /// `NO_SESSION` from `peer`: it refused what client link `via` sent it.
    fn no_session(&self, peer: &PeerHandle, handle: Handle, via: Via, epoch: u64, code: u16) {
        let Some(key) = peer.bound(handle) else {
            return;
        };
        let Some(v) = self.vias().get(&via).cloned() else {
            return;
        };
        debug!(peer = peer.id(), code, "owner refused a sub-link");
        let mut st = v.lock();
        st.owners.remove(&peer.id());
        if code == NO_SESSION {
            let mut b = BytesMut::new();
            Routed::Down {
                node: peer.id(),
                session: key.1,
                epoch,
                code: DOWN_NO_SESSION,
            }
            .encode(&mut b);
            st.push(peer.id(), Handle(0), b.freeze(), 0);
        }
    }
}

impl ViaQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, ViaState> {
        // Only queue operations run under this lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ViaState {
    /// Queues a routed message from `owner`; `credit` bytes of it count against its window.
    fn push(&mut self, owner: u16, handle: Handle, msg: Bytes, credit: u64) {
        *self.queued.entry(owner).or_insert(0) += credit;
        self.queue.push_back((owner, handle, msg));
        if let Some(w) = &self.waker {
            w.notify_one();
        }
    }
}

/// The router of one client link of this node.
struct NodeRouter {
    relay: Arc<Relay>,
    via: Via,
    queue: Arc<ViaQueue>,
}

impl NodeRouter {
    /// Returns the credit of the sections written to their owners (what a full peer queue
    /// refuses now is returned later).
    fn return_credit(&self, st: &mut ViaState) {
        st.owed.retain(|&(owner, handle), bytes| {
            let Some(peer) = self.relay.mesh.peer(owner) else {
                return false;
            };
            let mut b = BytesMut::new();
            PeerFrame::ViaCredit {
                handle,
                via: self.via,
                bytes: (*bytes).min(u64::from(u32::MAX)) as u32,
            }
            .encode(&mut b);
            !matches!(peer.try_send(b.freeze()), Ok(true) | Err(_))
        });
    }
}

impl Router for NodeRouter {
    fn up(&self, _id: LinkId, waker: &Arc<Notify>) {
        self.queue.lock().waker = Some(waker.clone());
    }

    fn route(&self, mut msg: Bytes) -> RouteFuture<'_> {
        Box::pin(async move {
            loop {
                let frame = Routed::decode(&mut msg)
                    .map_err(|e| LinkEnd::Routed(format!("malformed routed message: {e}")))?;
                let Some(frame) = frame else {
                    return Ok(());
                };
                let Routed::Section {
                    node,
                    session,
                    epoch,
                    frames,
                } = frame
                else {
                    return Err(LinkEnd::Routed("ROUTE_DOWN from a client".into()));
                };
                if node == self.relay.node_id || !self.relay.mesh.is_peer(node) {
                    return Err(LinkEnd::Routed(format!(
                        "a section for node {node}, which is not a peer of this node"
                    )));
                }
                let len = frames.len() as u64;
                let sent = match self.relay.mesh.peer(node) {
                    None => None,
                    Some(peer) => match peer.bind((self.queue.client, session)).await {
                        Err(_) => None,
                        Ok(handle) => {
                            let mut b = BytesMut::with_capacity(frames.len() + 32);
                            PeerFrame::Relay {
                                handle,
                                via: self.via,
                                epoch,
                                down: false,
                                frames,
                            }
                            .encode(&mut b);
                            peer.send(b.freeze()).await.is_ok().then_some(handle)
                        }
                    },
                };
                let mut st = self.queue.lock();
                match sent {
                    Some(handle) => {
                        st.owners.insert(node, (handle, session, epoch));
                        self.relay.count(node).up.fetch_add(len, Relaxed);
                    }
                    None => {
                        // No peer link to the owner: the client drops this sub-link for a while.
                        st.owners.remove(&node);
                        let mut b = BytesMut::new();
                        Routed::Down {
                            node,
                            session,
                            epoch,
                            code: DOWN_NO_PEER,
                        }
                        .encode(&mut b);
                        st.push(node, Handle(0), b.freeze(), 0);
                    }
                }
            }
        })
    }

    fn poll(&self, bufs: &mut [BytesMut]) -> usize {
        let mut st = self.queue.lock();
        let mut n = 0;
        while n < bufs.len() {
            let Some((owner, handle, msg)) = st.queue.pop_front() else {
                break;
            };
            let credit = (msg.len() as u64).saturating_sub(route::ROUTE_HEADER as u64);
            if handle != Handle(0) {
                if let Some(q) = st.queued.get_mut(&owner) {
                    *q = q.saturating_sub(credit);
                }
                *st.owed.entry((owner, handle)).or_insert(0) += credit;
            }
            bufs[n].clear();
            bufs[n].extend_from_slice(&msg);
            n += 1;
        }
        if n > 0 {
            self.return_credit(&mut st);
        }
        n
    }

    fn tick(&self) {
        let mut st = self.queue.lock();
        self.return_credit(&mut st);
    }

    fn down(&self) {
        self.relay.vias().remove(&self.via);
        let mut st = self.queue.lock();
        st.ended = true;
        st.queue.clear();
        for (owner, (handle, _, _)) in st.owners.drain() {
            if let Some(peer) = self.relay.mesh.peer(owner) {
                let mut b = BytesMut::new();
                PeerFrame::ViaDown {
                    handle,
                    via: self.via,
                }
                .encode(&mut b);
                // A full queue loses it; the owner's engine then finds the virtual link dead
                // by its pings, as for any silent link.
                let _ = peer.try_send(b.freeze());
            }
        }
    }
}

/// The owner's side of one peer link: the sessions the peer bound and the virtual links made
/// through it. Dropped with the link, which removes every virtual link.
pub(crate) struct PeerState {
    relay: Option<Arc<Relay>>,
    peer: u16,
    binds: HashMap<Handle, Key>,
    vlinks: HashMap<Via, VirtualLink>,
}

/// Handles a peer may bind on one link, at most (sessions it relays for).
const MAX_BINDS: usize = 65_536;

struct VirtualLink {
    driver: SessionDriver,
    id: LinkId,
    epoch: u64,
    credit: Arc<Credit>,
    writer: tokio::task::JoinHandle<()>,
}

/// A virtual link's credit, returned by `VIA_CREDIT`.
#[derive(Default)]
struct Credit {
    bytes: Mutex<u64>,
    more: Notify,
}

impl Drop for VirtualLink {
    fn drop(&mut self) {
        self.writer.abort();
        self.driver.remove_link(self.id);
    }
}

impl PeerState {
    pub(crate) fn new(relay: Option<Arc<Relay>>, peer: u16) -> Self {
        PeerState {
            relay,
            peer,
            binds: HashMap::new(),
            vlinks: HashMap::new(),
        }
    }

    /// Acts on one cluster frame from the peer; `Err` closes the peer link.
    pub(crate) fn dispatch(&mut self, frame: PeerFrame) -> Result<(), &'static str> {
        let Some(relay) = self.relay.clone() else {
            return Err("relay not supported by this node");
        };
        match frame {
            PeerFrame::Bind {
                handle,
                client,
                session,
            } => {
                if self.binds.len() >= MAX_BINDS && !self.binds.contains_key(&handle) {
                    return Err("too many bound sessions");
                }
                let client = (client.as_bytes() != &[0u8; 32]).then_some(client);
                self.binds.insert(handle, (client, session));
            }
            PeerFrame::Unbind { handle } => {
                self.binds.remove(&handle);
            }
            PeerFrame::Relay {
                handle,
                via,
                epoch,
                down: false,
                frames,
            } => self.relay_up(&relay, handle, via, epoch, frames)?,
            PeerFrame::Relay {
                handle,
                via,
                epoch,
                down: true,
                frames,
            } => {
                let peer = relay.mesh.peer(self.peer).ok_or("peer link gone")?;
                relay.relay_down(&peer, handle, via, epoch, frames)?;
            }
            PeerFrame::ViaCredit { via, bytes, .. } => {
                if let Some(v) = self.vlinks.get(&via) {
                    let mut c = v.credit.bytes.lock().unwrap_or_else(|e| e.into_inner());
                    *c = (*c + u64::from(bytes)).min(VIA_WINDOW);
                    v.credit.more.notify_one();
                }
            }
            PeerFrame::ViaDown { via, .. } => {
                self.vlinks.remove(&via);
            }
            PeerFrame::NoSession {
                handle,
                via,
                epoch,
                code,
            } => {
                let peer = relay.mesh.peer(self.peer).ok_or("peer link gone")?;
                relay.no_session(&peer, handle, via, epoch, code);
            }
            PeerFrame::ViaUp { .. } => return Err("VIA_UP is not used by this version"),
            PeerFrame::Ping(_)
            | PeerFrame::Pong(_)
            | PeerFrame::Close(_)
            | PeerFrame::Unknown(_) => {}
        }
        Ok(())
    }

    /// A section a client sent through the peer, for a stream this node owns.
    fn relay_up(
        &mut self,
        relay: &Arc<Relay>,
        handle: Handle,
        via: Via,
        epoch: u64,
        frames: Bytes,
    ) -> Result<(), &'static str> {
        let key = *self
            .binds
            .get(&handle)
            .ok_or("RELAY for a handle that was never bound")?;
        let refuse = |code: u16| {
            if let Some(peer) = relay.mesh.peer(self.peer) {
                let mut b = BytesMut::new();
                PeerFrame::NoSession {
                    handle,
                    via,
                    epoch,
                    code,
                }
                .encode(&mut b);
                let _ = peer.try_send(b.freeze());
            }
        };
        let session = relay
            .sessions
            .upgrade()
            .and_then(|s| s.find(key).map(|d| (d, s.server_hello(key).epoch)));
        let driver = match session {
            Some((driver, current)) if current == epoch => driver,
            _ => {
                // No session, or another epoch of it: nothing is created.
                self.vlinks.remove(&via);
                refuse(NO_SESSION);
                return Ok(());
            }
        };
        let stale = self
            .vlinks
            .get(&via)
            .is_some_and(|v| v.epoch != epoch || !v.driver.same(&driver) || v.writer.is_finished());
        if stale {
            self.vlinks.remove(&via);
        }
        if !self.vlinks.contains_key(&via) {
            let peer = relay.mesh.peer(self.peer).ok_or("peer link gone")?;
            let waker = Arc::new(Notify::new());
            let (id, _kill) = driver.add_link_with(LinkKind::Relayed, waker.clone());
            let credit = Arc::new(Credit {
                bytes: Mutex::new(VIA_WINDOW),
                more: Notify::new(),
            });
            let writer = tokio::spawn(write_virtual(
                driver.clone(),
                id,
                waker,
                credit.clone(),
                peer,
                handle,
                via,
                epoch,
            ));
            self.vlinks.insert(
                via,
                VirtualLink {
                    driver: driver.clone(),
                    id,
                    epoch,
                    credit,
                    writer,
                },
            );
        }
        let id = self.vlinks[&via].id;
        if let Err(e) = driver.handle_message(id, frames) {
            debug!(peer = self.peer, error = %e, "virtual link closed: the client broke the protocol");
            self.vlinks.remove(&via);
            refuse(REFUSED);
        }
        Ok(())
    }
}

/// The writer of virtual link `id`: while it has credit, its messages go to the relay as
/// `RELAY_DOWN`. Ends when the engine drops the link or the peer link goes.
#[allow(clippy::too_many_arguments, reason = "one task's state")]
async fn write_virtual(
    driver: SessionDriver,
    id: LinkId,
    waker: Arc<Notify>,
    credit: Arc<Credit>,
    peer: PeerHandle,
    handle: Handle,
    via: Via,
    epoch: u64,
) {
    let mut buf = BytesMut::with_capacity(route::MAX_SECTION);
    loop {
        // A message needs room for a whole section: a virtual link short of credit is a slow
        // link, and its engine's other links take the data meanwhile.
        loop {
            let more = credit.more.notified();
            if *credit.bytes.lock().unwrap_or_else(|e| e.into_inner()) >= route::MAX_SECTION as u64
            {
                break;
            }
            more.await;
        }
        let Some(n) = driver.poll_relayed(id, std::slice::from_mut(&mut buf)) else {
            return;
        };
        if n == 0 {
            waker.notified().await;
            continue;
        }
        let len = buf.len() as u64;
        {
            let mut c = credit.bytes.lock().unwrap_or_else(|e| e.into_inner());
            *c = c.saturating_sub(len);
        }
        let mut b = BytesMut::with_capacity(buf.len() + 32);
        PeerFrame::Relay {
            handle,
            via,
            epoch,
            down: true,
            frames: buf.split().freeze(),
        }
        .encode(&mut b);
        if peer.send(b.freeze()).await.is_err() {
            return;
        }
    }
}
