//! The node's part in striping (`docs/PROTOCOL.md`, "Routing", "Relay queues and credit"): it
//! relays the sections other owners' streams send on its client links, and it runs the virtual
//! links through which its own streams' frames go out on its peers' client links.
//!
//! **As a relay** (node P, client link L, owner N): a `ROUTE` section that arrives on L goes to N
//! as a `RELAY` on the peer link P-N, unchanged, after a `BIND` of (client key, session id) the
//! first time on that link. P keeps no stream state. The peer link's send queue is bounded, so a
//! reader of L waits while it is full: backpressure onto the client links that feed it. What N
//! sends back for L (`RELAY_DOWN`) waits in L's queue until L's writer takes it, as one
//! `ROUTE(N)` section between L's own messages; P then returns the bytes as `VIA_CREDIT`, which
//! goes ahead of what waits on the peer link ([`crate::mesh::Credits`]).
//!
//! **As an owner** (node N): the first `RELAY` from peer P for client link `via` of a session N
//! has, under the epoch N has for it, adds a virtual link (P, via) to that session's engine;
//! its messages go to P as `RELAY_DOWN` while the link has credit ([`VIA_SEND`] of the
//! [`VIA_WINDOW`] P accepts at first, returned by `VIA_CREDIT`). A `RELAY` for a session or
//! epoch N does not have is answered with `NO_SESSION` and creates nothing. `VIA_DOWN`, or the peer link's end, removes the virtual
//! link: its engine sends what it carried unconfirmed on its other links.

use crate::mesh::{Mesh, PeerHandle};
use crate::session::Sessions;
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::Notify;
use tracing::{debug, warn};
use wanmux_core::budget::{Budget, Pool};
use wanmux_core::driver::link::{LinkEnd, RouteFuture, Router};
use wanmux_core::driver::{BudgetSignal, LinkKind, SessionDriver};
use wanmux_core::engine::{Gathered, MessageBuf};
use wanmux_core::ids::{LinkId, SessionId};
use wanmux_core::keys::PublicKey;
use wanmux_core::lograte::Tally;
use wanmux_core::peer::{self, Handle, PeerFrame, Via};
use wanmux_core::route::{self, Routed, DOWN_NO_PEER, DOWN_NO_SESSION, DOWN_RELAY_LOST};

/// Credit of a virtual link when it is made (protocol constant): section bytes the owner may
/// send through one client link of a relay before the relay returns any. A relay holds at most
/// this much per owner for each of its client links.
pub(crate) const VIA_WINDOW: u64 = 1024 * 1024;

/// What an owner lets wait at a relay for one client link: a quarter of [`VIA_WINDOW`], which a
/// relay must accept. The relay forwards at that link's share of its path (25 Mbit/s in the lab's
/// cluster G), so 1 MiB waited about 0.3 s there, behind the relay's own QUIC queue, while the
/// owner's own links delivered the same stream's next bytes at once: the client's reassembly
/// held up to 50 MB in order behind the relays and a download stalled for up to a second. With
/// a quarter, traced downloads ran with 3 MB held and no stalled second (bench/RESULTS.md,
/// cluster). Still four sections, so the relay always has the next one to forward.
pub(crate) const VIA_SEND: u64 = VIA_WINDOW / 4;

/// The bit of a `via` number that marks a client link that is a dedicated interactive lane at
/// the relay (`links.lanes`): the owner makes its virtual link through it a lane too
/// (`Session::add_relayed_lane`), so no owner's bulk data goes on a lane link and the owners'
/// small frames can take the lanes of the node nearest the client. A convention on the numbers
/// the relay picks, not a field: a node that does not know it sees an ordinary via.
pub(crate) const LANE_VIA: u32 = 1 << 31;

/// `NO_SESSION` code: no session with that id and epoch.
const NO_SESSION: u16 = 1;
/// `NO_SESSION` code: the owner refused the frames (they broke the protocol).
const REFUSED: u16 = 2;

/// `ROUTE_DOWN` answers one client link may have queued at once, distinct ones (an answer
/// identical to one still queued is not queued again). A client that reads its link never
/// has more than a few (one per owner and epoch); past this many, the link brought sections
/// it does not read the answers to (each refused section is answered, a flood of them would
/// queue without bound): its next routed message closes it, and nothing more of it is relayed.
pub(crate) const MAX_DOWNS: usize = 64;

/// A relay that finds the memory budget short for a section it relays upstream tries again
/// this often (its client link's reader waits meanwhile: backpressure, as for a full queue).
const MEMORY_RETRY: std::time::Duration = std::time::Duration::from_millis(5);

/// A relayed message counted in the daemon's memory budget (`limits.memory`, receive pool, on
/// the account of the client whose link it came on or goes to) for as long as it exists: in a
/// peer link's queue until its writer sent it, in a client link's queue until its writer took
/// it. Given back when the last handle on it is dropped.
struct Counted {
    bytes: Bytes,
    budget: Budget,
    signal: Option<BudgetSignal>,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.budget.give_back(Pool::Recv, self.bytes.len() as u64) {
            if let Some(s) = &self.signal {
                s.wake_all();
            }
        }
    }
}

/// `bytes`, counted in `budget` if it has room for them now; else `None`.
fn counted(bytes: Bytes, budget: &Budget, signal: Option<BudgetSignal>) -> Option<Bytes> {
    budget.try_reserve(Pool::Recv, bytes.len() as u64).then(|| {
        Bytes::from_owner(Counted {
            bytes,
            budget: budget.clone(),
            signal,
        })
    })
}

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
    /// Sections refused because they were for a node that is not a peer: a config mistake,
    /// logged as counts.
    not_peer: Tally<u16>,
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
    /// The session the link belongs to.
    session: SessionId,
    /// The budget of the link's session (its client's account): what waits in this queue, and
    /// what this link's reader queues for owners, is counted in it.
    budget: Budget,
    state: Mutex<ViaState>,
}

#[derive(Debug, Default)]
struct ViaState {
    waker: Option<Arc<Notify>>,
    /// Routed messages to write, and the owner (and its handle) each came from.
    queue: VecDeque<(u16, Handle, Bytes)>,
    /// Bytes queued per owner, at most [`VIA_WINDOW`].
    queued: HashMap<u16, u64>,
    /// The owners this link's sections went to: (owner, handle) -> the session and epoch named,
    /// for `VIA_DOWN` when the link ends and `ROUTE_DOWN` when a peer link does.
    owners: HashMap<u16, (Handle, SessionId, u64)>,
    /// The (owner, session) pairs this link's sections were relayed under: their bindings on
    /// the peer links are given up (`UNBIND`) when the last link that used them ends. At most
    /// [`crate::mesh::MAX_BINDS_PER_CLIENT`] per owner, as the bindings are.
    bound: std::collections::HashSet<(u16, SessionId)>,
    /// Owners whose virtual link through this client link was shed for want of memory, and
    /// whose `VIA_DOWN` could not be queued then: it goes before the next `RELAY` to them.
    via_down_owed: HashMap<u16, Handle>,
    /// An owner refused what this link relayed (`NO_SESSION` code 2: its frames broke the
    /// protocol): the link is closed at the next routed message it brings, and nothing more
    /// of it is relayed.
    refused: bool,
    /// Its client left more than [`MAX_DOWNS`] answers unread: closed likewise.
    unread: bool,
    /// `ROUTE_DOWN` answers in `queue`.
    downs: usize,
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
            not_peer: Tally::new(std::time::Duration::from_secs(60), |n, node| {
                warn!(
                    sections = n,
                    node = *node,
                    "a client stripes over node {node}, which is not a [[peer]] of this node: \
                     this node relays nothing to it, so the client routes node {node}'s \
                     connections around this one (every node of a cluster must list every \
                     other node its clients list as a [[peer]])"
                );
            }),
        }
    }

    fn vias(&self) -> std::sync::MutexGuard<'_, HashMap<Via, Arc<ViaQueue>>> {
        // Only map operations run under this lock.
        self.vias.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The daemon's budget signal, to wake sessions waiting for memory a queue gave back.
    fn signal(&self) -> Option<BudgetSignal> {
        self.sessions.upgrade().map(|s| s.budget_signal().clone())
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

    /// The most `ROUTE_DOWN` answers queued for any one client link now, and the most routed
    /// messages of any kind (at most [`MAX_DOWNS`] answers, and per owner what
    /// [`VIA_WINDOW`] allows).
    pub(crate) fn queued_most(&self) -> (usize, usize) {
        let queues: Vec<Arc<ViaQueue>> = self.vias().values().cloned().collect();
        queues.iter().fold((0, 0), |(downs, all), q| {
            let st = q.lock();
            (downs.max(st.downs), all.max(st.queue.len()))
        })
    }

    /// Section bytes relayed with each peer, for the node's status.
    pub(crate) fn relayed_all(&self) -> Vec<wanmux_core::status::RelayedStatus> {
        let peers: Vec<u16> = self.mesh.peer_ids();
        let up = self.mesh.peers_up();
        peers
            .into_iter()
            .map(|node| {
                let (sent, received) = self.relayed(node);
                wanmux_core::status::RelayedStatus {
                    node,
                    sent_bytes: sent,
                    received_bytes: received,
                    peer_link_up: Some(up.contains(&node)),
                }
            })
            .collect()
    }

    /// The router of a new client link of session (`client`, ...), whose memory budget (the
    /// client's account) is `budget`.
    /// `lane`: the link is a dedicated interactive lane (`links.lanes`); its number says so to
    /// the owners ([`LANE_VIA`]), whose virtual links through it are lanes too.
    pub(crate) fn router(
        self: &Arc<Self>,
        client: Option<PublicKey>,
        session: SessionId,
        budget: Budget,
        lane: bool,
    ) -> Arc<dyn Router> {
        let n = self.next_via.fetch_add(1, Relaxed) & !LANE_VIA;
        let via = Via(if lane { n | LANE_VIA } else { n });
        let queue = Arc::new(ViaQueue {
            client,
            session,
            budget,
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
                st.push_down(peer, session, epoch);
            }
        }
    }

    /// This node's peer link to `peer` ended while `peer` relayed for session `key`, whose epoch
    /// here is `epoch`: the client learns on this node's own links of the session
    /// (`ROUTE_DOWN` code 3) that the sub-links of this node's streams through `peer` are dead,
    /// within one trip from here rather than when their pings go unanswered.
    fn relay_lost(&self, peer: u16, key: Key, epoch: u64) {
        let vias: Vec<Arc<ViaQueue>> = self
            .vias()
            .values()
            .filter(|v| v.client == key.0 && v.session == key.1)
            .cloned()
            .collect();
        for v in vias {
            let mut b = BytesMut::new();
            Routed::Down {
                node: peer,
                session: key.1,
                epoch,
                code: DOWN_RELAY_LOST,
            }
            .encode(&mut b);
            let mut st = v.lock();
            if !st.ended {
                st.push_answer(peer, b.freeze());
            }
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
        let key = match peer.bound(handle) {
            Ok(Some(key)) => key,
            // Unbound since: the session's client links here are gone, and the owner learns
            // it from their VIA_DOWN.
            Ok(None) => return Ok(()),
            Err(()) => return Err("RELAY_DOWN for a handle this node did not bind"),
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
        let signal = self.signal();
        if st.take_down(
            peer.id(),
            handle,
            b.freeze(),
            len,
            (&v.budget, signal),
            key.1,
            epoch,
        ) {
            self.count(peer.id()).down.fetch_add(len, Relaxed);
        } else {
            debug!(
                peer = peer.id(),
                "memory budget short or credit exceeded: the owner's virtual link through a client link is shed"
            );
            let mut b = BytesMut::new();
            PeerFrame::ViaDown { handle, via }.encode(&mut b);
            if !matches!(peer.try_send(b.freeze()), Ok(true)) {
                st.via_down_owed.insert(peer.id(), handle);
            }
        }
        Ok(())
    }

    /// `NO_SESSION` from `peer`: it refused what client link `via` sent it.
    fn no_session(&self, peer: &PeerHandle, handle: Handle, via: Via, epoch: u64, code: u16) {
        let Ok(Some(key)) = peer.bound(handle) else {
            return;
        };
        let Some(v) = self.vias().get(&via).cloned() else {
            return;
        };
        debug!(peer = peer.id(), code, "owner refused a sub-link");
        let mut st = v.lock();
        st.owners.remove(&peer.id());
        if code == REFUSED {
            st.refused = true;
        }
        if code == NO_SESSION {
            let mut b = BytesMut::new();
            Routed::Down {
                node: peer.id(),
                session: key.1,
                epoch,
                code: DOWN_NO_SESSION,
            }
            .encode(&mut b);
            st.push_answer(peer.id(), b.freeze());
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
    /// Queues section `msg` of owner `owner` (`credit` bytes of its virtual link's credit),
    /// counted in the link's budget; or, when the budget has no room for it or it goes beyond
    /// the credit, sheds the owner's virtual link ([`ViaState::shed`]) and returns false.
    ///
    /// Beyond the credit, the owner and this queue disagree, which a shed can cause: the
    /// owner's sections still on their way when its virtual link was shed are queued here
    /// again, and the credit they return goes to its next virtual link through this client
    /// link. Shedding again (rather than closing the peer link, and every session on it) keeps
    /// what this queue holds within the credit all the same.
    #[allow(clippy::too_many_arguments, reason = "what one section names")]
    fn take_down(
        &mut self,
        owner: u16,
        handle: Handle,
        msg: Bytes,
        credit: u64,
        (budget, signal): (&Budget, Option<BudgetSignal>),
        session: SessionId,
        epoch: u64,
    ) -> bool {
        let queued = self.queued.get(&owner).copied().unwrap_or(0);
        if queued + credit > VIA_WINDOW {
            self.shed(owner, session, epoch);
            return false;
        }
        match counted(msg, budget, signal) {
            Some(msg) => {
                self.push(owner, handle, msg, credit);
                true
            }
            None => {
                self.shed(owner, session, epoch);
                false
            }
        }
    }

    /// The memory budget cannot hold a section owner `owner` sent within its credit: its
    /// virtual link through this client link ends, as if the peer link had died. The sections
    /// of it still queued are dropped (a virtual link is ordered: one section missing, the
    /// pongs of later ones would confirm what never arrived, so none of them may follow), the
    /// client is told with `ROUTE_DOWN` (code 0: it drops the sub-link, resends what it carried
    /// on its other links and adds it again after a second); the caller tells the owner with
    /// `VIA_DOWN`.
    fn shed(&mut self, owner: u16, session: SessionId, epoch: u64) {
        self.queue
            .retain(|(o, h, _)| *o != owner || *h == Handle(0));
        self.queued.remove(&owner);
        self.owners.remove(&owner);
        self.push_down(owner, session, epoch);
    }

    /// Queues `ROUTE_DOWN(owner, code 0)` for the client: this node has no way to `owner` for
    /// the session `session` under `epoch` (its peer link ended, or the virtual link was shed).
    fn push_down(&mut self, owner: u16, session: SessionId, epoch: u64) {
        let mut b = BytesMut::new();
        Routed::Down {
            node: owner,
            session,
            epoch,
            code: DOWN_NO_PEER,
        }
        .encode(&mut b);
        self.push_answer(owner, b.freeze());
    }

    /// Queues `ROUTE_DOWN` message `msg` about `owner` for the client, unless the last message
    /// about `owner` still queued is the same answer (it says it all: the client acts on it
    /// before anything it sends later is answered). Past [`MAX_DOWNS`] answers queued, the
    /// client is not reading them: the answer is dropped and the link refused (closed at its
    /// next routed message), so a flood of sections it never reads the answers to costs the
    /// relay a bounded queue.
    fn push_answer(&mut self, owner: u16, msg: Bytes) {
        let last = self.queue.iter().rev().find(|(o, _, _)| *o == owner);
        if last.is_some_and(|(_, h, m)| *h == Handle(0) && *m == msg) {
            return;
        }
        if self.downs >= MAX_DOWNS {
            self.unread = true;
            return;
        }
        self.downs += 1;
        self.push(owner, Handle(0), msg, 0);
    }

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
    /// `msg` counted in the link's budget, once it has room (the link's reader waits
    /// meanwhile: its sender sees a slow link, as when the peer link's queue is full).
    async fn counted_wait(&self, msg: Bytes) -> Bytes {
        loop {
            if let Some(m) = counted(msg.clone(), &self.queue.budget, self.relay.signal()) {
                return m;
            }
            tokio::time::sleep(MEMORY_RETRY).await;
        }
    }

    /// Returns `bytes` of credit to `owner` for virtual link (`handle`, this link) at once,
    /// ahead of what waits on the peer link ([`crate::mesh::Credits`]).
    fn return_credit(&self, (owner, handle, bytes): (u16, Handle, u64)) {
        if let Some(peer) = self.relay.mesh.peer(owner) {
            peer.give_credit(handle, self.via, bytes);
        }
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
                let (refused, unread) = {
                    let st = self.queue.lock();
                    (st.refused, st.unread)
                };
                if refused {
                    // As a direct link whose frames break the protocol is closed.
                    return Err(LinkEnd::Routed(
                        "an owner refused what this link relayed: its frames broke the protocol"
                            .into(),
                    ));
                }
                if unread {
                    return Err(LinkEnd::Routed(format!(
                        "more than {MAX_DOWNS} ROUTE_DOWN answers left unread: the client \
                         does not read what its sections are answered with"
                    )));
                }
                let Routed::Section {
                    node,
                    session,
                    epoch,
                    frames,
                } = frame
                else {
                    return Err(LinkEnd::Routed("ROUTE_DOWN from a client".into()));
                };
                if node == self.relay.node_id {
                    return Err(LinkEnd::Routed(format!(
                        "a section for node {node}, this node, on a link to it"
                    )));
                }
                // A node this one does not list as a peer: a config mistake (a one-sided
                // [[peer]] list), said at `warn`, and answered as a peer link that is down
                // (`DOWN_NO_PEER`): the client routes that node's streams around this one, and
                // its own streams here carry on.
                if !self.relay.mesh.is_peer(node) {
                    self.relay.not_peer.hit(node);
                }
                let len = frames.len() as u64;
                // Only configured peers have live peer links: none for this one.
                let sent = match self.relay.mesh.peer(node) {
                    None => None,
                    Some(peer) => match peer.bind((self.queue.client, session)).await {
                        Err(_) => None,
                        Ok(bound) => {
                            let handle = bound.handle();
                            let owed = self.queue.lock().via_down_owed.remove(&node);
                            if let Some(h) = owed {
                                // Before anything new for the owner: it ends the virtual link
                                // that was shed, so no later section pairs with it.
                                let mut b = BytesMut::new();
                                PeerFrame::ViaDown {
                                    handle: h,
                                    via: self.via,
                                }
                                .encode(&mut b);
                                let _ = peer.send(b.freeze()).await;
                            }
                            let mut b = BytesMut::with_capacity(frames.len() + 32);
                            PeerFrame::Relay {
                                handle,
                                via: self.via,
                                epoch,
                                down: false,
                                frames,
                            }
                            .encode(&mut b);
                            let msg = self.counted_wait(b.freeze()).await;
                            let sent = peer.send(msg).await.is_ok().then_some(handle);
                            drop(bound);
                            sent
                        }
                    },
                };
                let mut st = self.queue.lock();
                match sent {
                    Some(handle) => {
                        st.owners.insert(node, (handle, session, epoch));
                        st.bound.insert((node, session));
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
                        st.push_answer(node, b.freeze());
                    }
                }
            }
        })
    }

    fn poll(&self, bufs: &mut [BytesMut]) -> usize {
        let mut st = self.queue.lock();
        let mut n = 0;
        // The credit of a run of messages from one (owner, handle), returned once per run: the
        // peer link is looked up once, not per message.
        let mut run: Option<(u16, Handle, u64)> = None;
        while n < bufs.len() {
            let Some((owner, handle, msg)) = st.queue.pop_front() else {
                break;
            };
            let credit = (msg.len() as u64).saturating_sub(route::ROUTE_HEADER as u64);
            if handle != Handle(0) {
                if let Some(q) = st.queued.get_mut(&owner) {
                    *q = q.saturating_sub(credit);
                }
                match &mut run {
                    Some((o, h, bytes)) if *o == owner && *h == handle => *bytes += credit,
                    _ => {
                        if let Some(done) = run.replace((owner, handle, credit)) {
                            self.return_credit(done);
                        }
                    }
                }
            } else {
                st.downs = st.downs.saturating_sub(1);
            }
            bufs[n].clear();
            bufs[n].extend_from_slice(&msg);
            n += 1;
        }
        if let Some(done) = run {
            self.return_credit(done);
        }
        n
    }

    fn down(&self) {
        let others: Vec<Arc<ViaQueue>> = {
            let mut vias = self.relay.vias();
            vias.remove(&self.via);
            vias.values()
                .filter(|v| v.client == self.queue.client)
                .cloned()
                .collect()
        };
        let mut st = self.queue.lock();
        st.ended = true;
        st.queue.clear();
        let bound = std::mem::take(&mut st.bound);
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
        drop(st);
        // The sessions no other link of the client here relays under any more: their handles
        // on the peer links are given up (`UNBIND`), after the VIA_DOWNs above.
        for (owner, session) in bound {
            let used = others
                .iter()
                .any(|v| v.lock().bound.contains(&(owner, session)));
            if !used {
                if let Some(peer) = self.relay.mesh.peer(owner) {
                    peer.unbind((self.queue.client, session));
                }
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
    /// The via credit of each client link of the peer: the relay holds the sections of this
    /// node for that link in one queue whichever virtual link sent them, so a virtual link that
    /// replaces another on the same link (the engine dropped the old one, or the session's epoch
    /// changed) goes on with its credit. Ends with `VIA_DOWN`.
    credits: HashMap<Via, Arc<Credit>>,
}

/// Handles a peer may bind on one link, at most (sessions it relays for).
const MAX_BINDS: usize = 65_536;

struct VirtualLink {
    driver: SessionDriver,
    id: LinkId,
    /// The relay's handle of the session, which its `RELAY_DOWN`s name.
    handle: Handle,
    /// The session (as the peer bound it) and this node's epoch of it.
    key: Key,
    epoch: u64,
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

impl Drop for PeerState {
    /// The peer link ended (or was replaced): its virtual links end with it, and the client of
    /// each session that had one learns it on this node's own links.
    fn drop(&mut self) {
        let Some(relay) = &self.relay else {
            return;
        };
        let mut told = std::collections::HashSet::new();
        for v in self.vlinks.values() {
            if told.insert((v.key, v.epoch)) {
                relay.relay_lost(self.peer, v.key, v.epoch);
            }
        }
    }
}

impl PeerState {
    pub(crate) fn new(relay: Option<Arc<Relay>>, peer: u16) -> Self {
        PeerState {
            relay,
            peer,
            binds: HashMap::new(),
            vlinks: HashMap::new(),
            credits: HashMap::new(),
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
                if let Some(credit) = self.credits.get(&via) {
                    let mut c = credit.bytes.lock().unwrap_or_else(|e| e.into_inner());
                    *c = (*c + u64::from(bytes)).min(VIA_SEND);
                    credit.more.notify_one();
                }
            }
            PeerFrame::ViaDown { via, .. } => {
                self.vlinks.remove(&via);
                self.credits.remove(&via);
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
        let peer_id = self.peer;
        let refuse = |code: u16| {
            if let Some(peer) = relay.mesh.peer(peer_id) {
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
        let stale = self.vlinks.get(&via).is_some_and(|v| {
            v.epoch != epoch
                || v.handle != handle
                || !v.driver.same(&driver)
                || v.writer.is_finished()
        });
        if stale {
            self.vlinks.remove(&via);
        }
        // Twice at most: a virtual link the engine has dropped (no answer to its pings) takes
        // no frames, and the client's sub-link, which knows nothing of it, goes on; a new
        // virtual link takes them instead. Refusing them would lose them: the sub-link's later
        // pings, answered by the next virtual link, would confirm them to the client.
        for fresh in [false, true] {
            if !self.vlinks.contains_key(&via) {
                self.add_vlink(relay, &driver, (handle, key), via, epoch)?;
            }
            let id = self.vlinks[&via].id;
            match driver.handle_message(id, frames.clone()) {
                Ok(()) => break,
                Err(wanmux_core::engine::PeerError::UnknownLink) if !fresh => {
                    debug!(
                        peer = self.peer,
                        "virtual link dropped by its engine: a new one takes its frames"
                    );
                    self.vlinks.remove(&via);
                }
                Err(e) => {
                    debug!(peer = self.peer, error = %e, "virtual link closed: the client broke the protocol");
                    self.vlinks.remove(&via);
                    refuse(REFUSED);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Adds the virtual link (this peer, `via`) to `driver`'s engine, with its writer task.
    fn add_vlink(
        &mut self,
        relay: &Arc<Relay>,
        driver: &SessionDriver,
        (handle, key): (Handle, Key),
        via: Via,
        epoch: u64,
    ) -> Result<(), &'static str> {
        let peer = relay.mesh.peer(self.peer).ok_or("peer link gone")?;
        let waker = Arc::new(Notify::new());
        let kind = if via.0 & LANE_VIA != 0 {
            LinkKind::RelayedLane
        } else {
            LinkKind::Relayed
        };
        let (id, _kill) = driver.add_link_with(kind, waker.clone());
        if self.credits.len() >= MAX_BINDS && !self.credits.contains_key(&via) {
            return Err("too many client links relayed");
        }
        let credit = self
            .credits
            .entry(via)
            .or_insert_with(|| {
                Arc::new(Credit {
                    bytes: Mutex::new(VIA_SEND),
                    more: Notify::new(),
                })
            })
            .clone();
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
                handle,
                key,
                epoch,
                writer,
            },
        );
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
    // Gathered under the session's lock, copied into the peer frame after.
    let mut msg = Gathered::default();
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
        let Some(n) = driver.poll_relayed(id, std::slice::from_mut(&mut msg)) else {
            return;
        };
        if n == 0 {
            waker.notified().await;
            continue;
        }
        let len = msg.len();
        {
            let mut c = credit.bytes.lock().unwrap_or_else(|e| e.into_inner());
            *c = c.saturating_sub(len as u64);
        }
        let mut b = BytesMut::with_capacity(peer::RELAY_HEADER + len);
        peer::encode_relay_header(&mut b, handle, via, epoch, true, len);
        msg.copy_to(&mut b);
        msg.release();
        if peer.send(b.freeze()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(owner: u16, len: usize) -> Bytes {
        let mut b = BytesMut::new();
        Routed::Section {
            node: owner,
            session: SessionId([7; 16]),
            epoch: 3,
            frames: Bytes::from(vec![0u8; len]),
        }
        .encode(&mut b);
        b.freeze()
    }

    /// Owners flood the client links of a relay with sections, each within its virtual link's
    /// credit, and the links' writers never take them: what the relay holds stays within its
    /// memory budget. An owner whose section does not fit has its virtual link through that
    /// client link shed (its queued sections dropped, `ROUTE_DOWN` for the client in their
    /// place), and the memory comes back as the queues are emptied.
    #[test]
    fn a_flood_of_relayed_sections_stays_within_the_memory_budget() {
        let budget = Budget::new(8 << 20); // 4 MiB per pool
        let client = budget.account();
        let mut links: Vec<ViaState> = (0..8).map(|_| ViaState::default()).collect();
        let (mut taken, mut shed) = (0u64, 0u32);
        for round in 0..20 {
            for (i, st) in links.iter_mut().enumerate() {
                for owner in [2u16, 3] {
                    let queued = st.queued.get(&owner).copied().unwrap_or(0);
                    let len = 60_000;
                    if queued + len as u64 > VIA_WINDOW {
                        continue; // the owner has no credit left: it sends nothing
                    }
                    let msg = section(owner, len);
                    let sess = SessionId([7; 16]);
                    let ok =
                        st.take_down(owner, Handle(1), msg, len as u64, (&client, None), sess, 3);
                    if ok {
                        taken += len as u64;
                    } else {
                        shed += 1;
                        assert!(
                            st.queue
                                .iter()
                                .all(|(o, h, _)| *o != owner || *h == Handle(0)),
                            "round {round} link {i}: sections of a shed owner still queued"
                        );
                        // The last of the owner's messages tells the client (an earlier shed's
                        // answer, if still queued, is the same one).
                        let last = st.queue.iter().rev().find(|(o, _, _)| *o == owner);
                        let down = last.expect("ROUTE_DOWN queued").2.clone();
                        let mut d = down;
                        assert!(matches!(
                            Routed::decode(&mut d),
                            Ok(Some(Routed::Down {
                                code: DOWN_NO_PEER,
                                ..
                            }))
                        ));
                    }
                    let used = budget.used(Pool::Recv);
                    assert!(used <= budget.cap(), "{used} held, cap {}", budget.cap());
                }
            }
        }
        assert!(taken > 2 << 20, "sections were relayed: {taken}");
        assert!(shed > 0, "the flood met the budget");
        // One client's account holds at most half the pool (fair shares, `budget.rs`).
        assert!(budget.used(Pool::Recv) <= budget.cap() / 2 + 100_000);
        drop(links);
        assert_eq!(
            budget.used(Pool::Recv),
            0,
            "the queues gave their memory back"
        );
    }

    /// An owner that sends beyond its via credit (after a shed its credit and the relay's queue
    /// can disagree) has its virtual link through the client link shed again: its sections
    /// dropped, `ROUTE_DOWN` for the client in their place, the queue never beyond the credit.
    #[test]
    fn a_section_beyond_the_via_credit_sheds_the_virtual_link() {
        let budget = Budget::new(64 << 20);
        let client = budget.account();
        let mut st = ViaState::default();
        let sess = SessionId([7; 16]);
        let len = 60_000u64;
        let mut sent = 0;
        while sent + len <= VIA_WINDOW {
            assert!(st.take_down(
                2,
                Handle(1),
                section(2, 60_000),
                len,
                (&client, None),
                sess,
                3
            ));
            sent += len;
        }
        assert!(!st.take_down(
            2,
            Handle(1),
            section(2, 60_000),
            len,
            (&client, None),
            sess,
            3
        ));
        assert_eq!(
            st.queued.get(&2).copied().unwrap_or(0),
            0,
            "the owner's queue was emptied"
        );
        assert_eq!(st.queue.len(), 1, "only the ROUTE_DOWN is left");
        let mut d = st.queue[0].2.clone();
        assert!(matches!(
            Routed::decode(&mut d),
            Ok(Some(Routed::Down {
                node: 2,
                code: DOWN_NO_PEER,
                ..
            }))
        ));
        // The owner's next virtual link starts from an empty queue.
        assert!(st.take_down(
            2,
            Handle(1),
            section(2, 60_000),
            len,
            (&client, None),
            sess,
            3
        ));
    }

    /// Answers (`ROUTE_DOWN`) to sections a client never reads them for stay few: one identical
    /// to the last about its owner still queued is not queued again, and past [`MAX_DOWNS`]
    /// distinct ones the link is refused instead (its next routed message closes it). Taking
    /// them off the queue makes room again.
    #[test]
    fn answers_a_client_does_not_read_stay_bounded() {
        let mut st = ViaState::default();
        let down = |epoch: u64| {
            let mut b = BytesMut::new();
            Routed::Down {
                node: 2,
                session: SessionId([7; 16]),
                epoch,
                code: DOWN_NO_SESSION,
            }
            .encode(&mut b);
            b.freeze()
        };
        for _ in 0..10_000 {
            st.push_answer(2, down(5));
        }
        assert_eq!(st.queue.len(), 1, "identical answers queued once");
        // A section of the owner after it: the same answer again is news.
        st.push(2, Handle(1), section(2, 100), 100);
        st.push_answer(2, down(5));
        assert_eq!((st.queue.len(), st.downs), (3, 2));
        assert!(!st.unread);
        for epoch in 0..10_000 {
            st.push_answer(2, down(100 + epoch));
        }
        assert_eq!(st.downs, MAX_DOWNS);
        assert_eq!(st.queue.len(), MAX_DOWNS + 1);
        assert!(st.unread, "a link whose answers pile up is refused");
    }

    /// A counted message holds its bytes in the budget until its last handle is dropped, and a
    /// message the budget has no room for is refused.
    #[test]
    fn counted_messages_hold_the_budget_while_they_exist() {
        let budget = Budget::new(2 << 20);
        let a = counted(Bytes::from(vec![1u8; 600_000]), &budget, None).expect("room");
        assert_eq!(budget.used(Pool::Recv), 600_000);
        let copy = a.clone();
        assert!(counted(Bytes::from(vec![2u8; 600_000]), &budget, None).is_none());
        drop(a);
        assert_eq!(budget.used(Pool::Recv), 600_000, "a handle is left");
        assert_eq!(&copy[..3], &[1, 1, 1]);
        drop(copy);
        assert_eq!(budget.used(Pool::Recv), 0);
    }
}
