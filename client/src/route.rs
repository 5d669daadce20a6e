//! Sub-links: the client's side of striping a stream over every node (`docs/PROTOCOL.md`,
//! "Routing").
//!
//! A client link L to node P carries P's own session and, when the handshake agreed to it, one
//! sub-link (L, N) for every other node N: a link of N's engine whose messages travel on L as
//! `ROUTE` sections, which P relays to N over the cluster LAN. N's engine sees the sub-link as
//! one of its links, so confirmation, resends and credit stay end to end with the owner; P holds
//! no stream state. This module is the [`Router`] of one client link: it adds a sub-link to each
//! other node's engine (once that node's epoch is known; pinged at once), polls them for the link's writer,
//! wraps their messages in sections, and hands the sections that arrive to their engines.
//!
//! A sub-link that cannot be used (the relay has no peer link to the owner, `ROUTE_DOWN` code 0,
//! or the owner's engine timed it out) is removed, so its engine sends what it carried on its
//! other links, and added again after [`RETRY`] once the link it rides has answered a ping sent
//! after the removal: the sub-link may have died with its carrier (a node killed, its QUIC
//! connection silent), which its own idle engine pings only every 10 s, and a sub-link added
//! again onto a dead carrier would swallow its owner's frames until it stalled in turn. An owner that answers that it has no such
//! session (`ROUTE_DOWN` code 1, for the epoch the client holds) lost it: its streams are reset,
//! as when a direct link reports a new epoch.

use crate::dial::{self, SharedState};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::{debug, info, warn};
use wanmux_core::driver::link::{LinkEnd, RouteFuture, Router};
use wanmux_core::driver::{LinkKind, SessionDriver};
use wanmux_core::engine::{Gathered, MessageBuf, PeerError};
use wanmux_core::ids::{LinkId, NodeId};
use wanmux_core::route::{self, Routed, DOWN_NO_PEER, DOWN_NO_SESSION, DOWN_RELAY_LOST};

/// A sub-link that could not be used is added again after this long.
pub(crate) const RETRY: Duration = Duration::from_secs(1);

/// One node as the routers see it.
#[derive(Debug, Clone)]
pub(crate) struct RouteNode {
    pub(crate) id: NodeId,
    pub(crate) driver: SessionDriver,
    pub(crate) state: SharedState,
}

/// Every node, and the bytes relayed between each pair, shared by all routers of the client.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    nodes: std::sync::OnceLock<Vec<RouteNode>>,
    /// (link node, owner) -> bytes of the owner's sections sent and received on the link node's
    /// links.
    relayed: Mutex<HashMap<(u16, u16), Arc<Relayed>>>,
    /// The routers of the client links, to reach every link to one node.
    routers: Mutex<Vec<Weak<ClientRouter>>>,
}

/// Section bytes relayed for one (link node, owner) pair.
#[derive(Debug, Default)]
pub(crate) struct Relayed {
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
    /// Sub-links of this pair in the owner's engine now.
    pub(crate) live: AtomicU64,
}

impl Routes {
    /// Sets the nodes, once, after they are all made.
    pub(crate) fn set_nodes(&self, nodes: Vec<RouteNode>) {
        let _ = self.nodes.set(nodes);
    }

    /// The router of a new client link to node `via` (a dedicated lane if `lane`).
    pub(crate) fn router(self: &Arc<Self>, via: NodeId, lane: bool) -> Arc<ClientRouter> {
        let r = Arc::new(ClientRouter::new(via, self.clone(), lane));
        let mut list = self.routers.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(&r));
        r
    }

    /// Node `owner` lost its peer link to node `relay` (`ROUTE_DOWN` code 3 on one of
    /// `owner`'s links): the sub-links of `owner`'s engine on the links to `relay` are dead.
    fn relay_lost(&self, relay: NodeId, owner: NodeId) {
        let routers: Vec<Arc<ClientRouter>> = self
            .routers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|r| r.via == relay)
            .collect();
        for r in routers {
            r.owner_unreachable(owner);
        }
    }

    /// How many nodes the client has.
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.get().map_or(0, Vec::len)
    }

    fn counter(&self, via: NodeId, owner: NodeId) -> Arc<Relayed> {
        // Only a map lookup runs under this lock.
        let mut m = self.relayed.lock().unwrap_or_else(|e| e.into_inner());
        m.entry((via.0, owner.0)).or_default().clone()
    }

    /// Section bytes (sent, received) of `owner` on the links to `via`.
    pub(crate) fn relayed(&self, via: NodeId, owner: NodeId) -> (u64, u64) {
        let m = self.relayed.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&(via.0, owner.0))
            .map_or((0, 0), |r| (r.sent.load(Relaxed), r.received.load(Relaxed)))
    }

    /// Sub-links of `owner`'s engine on the links to `via` now.
    pub(crate) fn sub_links(&self, via: NodeId, owner: NodeId) -> u64 {
        let m = self.relayed.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&(via.0, owner.0)).map_or(0, |r| r.live.load(Relaxed))
    }

    /// Section bytes (sent, received) on the links to `via`, for every other owner together;
    /// and (sent, received) of `owner`'s sections on other nodes' links.
    pub(crate) fn totals(&self, node: NodeId) -> ((u64, u64), (u64, u64)) {
        let m = self.relayed.lock().unwrap_or_else(|e| e.into_inner());
        let (mut carried, mut owned) = ((0, 0), (0, 0));
        for (&(via, owner), r) in m.iter() {
            let (s, rcv) = (r.sent.load(Relaxed), r.received.load(Relaxed));
            if via == node.0 {
                carried.0 += s;
                carried.1 += rcv;
            }
            if owner == node.0 {
                owned.0 += s;
                owned.1 += rcv;
            }
        }
        (carried, owned)
    }
}

impl std::fmt::Debug for ClientRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRouter")
            .field("via", &self.via)
            .field("lane", &self.lane)
            .finish_non_exhaustive()
    }
}

/// The router of one client link to node `via`.
pub(crate) struct ClientRouter {
    via: NodeId,
    /// Node `via` (its engine has the link this router rides).
    own: Option<RouteNode>,
    /// The link is a dedicated interactive lane (`links.lanes`): its sub-links are lanes too.
    lane: bool,
    routes: Arc<Routes>,
    subs: Mutex<Subs>,
}

struct Subs {
    waker: Option<Arc<Notify>>,
    list: Vec<Sub>,
    /// Where the next poll starts, so every sub-link gets its turn.
    next: usize,
    /// The sub-link message being relayed: gathered under its session's lock, copied after.
    gathered: Gathered,
    ended: bool,
    /// The link this router rides, in `carrier`'s engine; `None` before it is up.
    link: Option<LinkId>,
}

struct Sub {
    node: RouteNode,
    link: Option<LinkId>,
    retry_at: Instant,
    counter: Arc<Relayed>,
    /// The owner's engine dropped the sub-link (no answer to its pings) while the owner's
    /// virtual link may live on: a section that comes for it makes a new one at once.
    dropped_by_engine: bool,
    /// When the sub-link was last removed: it is added again only once the carrier link has
    /// answered a ping sent after that.
    dropped_at: Option<Instant>,
}

impl ClientRouter {
    fn new(via: NodeId, routes: Arc<Routes>, lane: bool) -> Self {
        let list = routes
            .nodes
            .get()
            .map(|nodes| {
                nodes
                    .iter()
                    .filter(|n| n.id != via)
                    .map(|n| Sub {
                        node: n.clone(),
                        link: None,
                        retry_at: Instant::now(),
                        counter: routes.counter(via, n.id),
                        dropped_by_engine: false,
                        dropped_at: None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let own = routes
            .nodes
            .get()
            .and_then(|nodes| nodes.iter().find(|n| n.id == via))
            .cloned();
        ClientRouter {
            via,
            own,
            lane,
            routes,
            subs: Mutex::new(Subs {
                waker: None,
                list,
                next: 0,
                gathered: Gathered::default(),
                ended: false,
                link: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Subs> {
        // No engine's lock is held while this one is taken, and the other way round only
        // engine calls run under it (never this lock again).
        self.subs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the sub-links that are missing and may be added now; whether one was added.
    fn ensure(&self, subs: &mut Subs, now: Instant) -> bool {
        let Some(waker) = subs.waker.clone() else {
            return false;
        };
        if subs.ended {
            return false;
        }
        let mut added = false;
        for s in subs.list.iter_mut().filter(|s| s.link.is_none()) {
            if now < s.retry_at || dial::lock(&s.node.state).epoch.is_none() {
                continue;
            }
            if let Some(at) = s.dropped_at {
                if !self.carrier_answered_since(subs.link, at) {
                    continue;
                }
            }
            add_sub(s, &waker, self.lane);
            added = true;
        }
        added
    }

    /// A sub-link on this link was removed: ping the link itself now (see the module's doc).
    fn suspect_carrier(&self, link: Option<LinkId>) {
        if let (Some(own), Some(id)) = (&self.own, link) {
            own.driver.with(|e, now| e.probe_link(now, id));
        }
    }

    /// Node `owner` lost its peer link to this router's node: its sub-link here is dead.
    fn owner_unreachable(&self, owner: NodeId) {
        let mut subs = self.lock();
        let carrier = subs.link;
        if let Some(s) = subs.list.iter_mut().find(|s| s.node.id == owner) {
            debug!(via = %self.via, owner = %owner, "sub-link down: the owner lost its peer link to this node");
            self.drop_sub(s, Instant::now(), carrier);
        }
    }

    /// Whether `session` under `epoch` is the client's session with this router's node now.
    fn own_session_is(&self, session: wanmux_core::ids::SessionId, epoch: u64) -> bool {
        self.own.as_ref().is_some_and(|own| {
            let st = dial::lock(&own.state);
            st.id == session && st.epoch == Some(epoch)
        })
    }

    /// Whether the carrier link answered a ping at or after `since`.
    fn carrier_answered_since(&self, link: Option<LinkId>, since: Instant) -> bool {
        match (&self.own, link) {
            (Some(own), Some(id)) => own
                .driver
                .with(|e, _| e.link_answered_since(id, since))
                .unwrap_or(false),
            // Not a configured node's router (tests without nodes): nothing to wait for.
            _ => true,
        }
    }
}

fn add_sub(s: &mut Sub, waker: &Arc<Notify>, lane: bool) -> LinkId {
    let kind = if lane {
        LinkKind::RelayedLane
    } else {
        LinkKind::Relayed
    };
    let (id, _kill) = s.node.driver.add_link_with(kind, waker.clone());
    // Pinged at once: whether the relay reaches the owner is known within a round trip (and
    // the path has a round-trip time for the scheduler), not when data first goes on it.
    s.node.driver.with(|e, now| e.probe_link(now, id));
    s.link = Some(id);
    s.dropped_by_engine = false;
    s.counter.live.fetch_add(1, Relaxed);
    id
}

impl ClientRouter {
    /// Removes sub-link `s` from its engine (which sends what it carried on its other links)
    /// and pings the carrier `link` (see the module's doc); `s` comes back after [`RETRY`] once
    /// the carrier answered.
    fn drop_sub(&self, s: &mut Sub, now: Instant, link: Option<LinkId>) {
        s.dropped_by_engine = false;
        s.dropped_at = Some(now);
        if let Some(id) = s.link.take() {
            s.node.driver.remove_link(id);
            s.counter.live.fetch_sub(1, Relaxed);
        }
        s.retry_at = now + RETRY;
        self.suspect_carrier(link);
    }
}

impl Router for ClientRouter {
    fn up(&self, id: LinkId, waker: &Arc<Notify>) {
        let mut subs = self.lock();
        subs.waker = Some(waker.clone());
        subs.link = Some(id);
        self.ensure(&mut subs, Instant::now());
    }

    fn route(&self, mut msg: Bytes) -> RouteFuture<'_> {
        // Owners of this link's node's peer links that ended: acted on once this router's lock
        // is let go (it takes other routers' locks).
        let mut lost: Vec<u16> = Vec::new();
        let result = (|| {
            let mut subs = self.lock();
            let now = Instant::now();
            let waker = if subs.ended { None } else { subs.waker.clone() };
            let carrier = subs.link;
            loop {
                let frame = Routed::decode(&mut msg)
                    .map_err(|e| LinkEnd::Routed(format!("malformed routed message: {e}")))?;
                let Some(frame) = frame else {
                    return Ok(());
                };
                if let Routed::Down {
                    node,
                    session,
                    epoch,
                    code: DOWN_RELAY_LOST,
                } = frame
                {
                    // From this link's node, about its own session: its peer link to `node`
                    // ended. For a session or epoch given up since: stale, ignored.
                    if self.own_session_is(session, epoch) && !lost.contains(&node) {
                        lost.push(node);
                    }
                    continue;
                }
                let (node, session, epoch) = match &frame {
                    Routed::Section {
                        node,
                        session,
                        epoch,
                        ..
                    }
                    | Routed::Down {
                        node,
                        session,
                        epoch,
                        ..
                    } => (*node, *session, *epoch),
                };
                let Some(s) = subs.list.iter_mut().find(|s| s.node.id.0 == node) else {
                    return Err(LinkEnd::Routed(format!(
                        "a section of node {node}, which is not another configured node"
                    )));
                };
                let current = {
                    let st = dial::lock(&s.node.state);
                    st.id == session && st.epoch == Some(epoch)
                };
                if !current {
                    // For a session or epoch given up since: stale, dropped.
                    continue;
                }
                match frame {
                    Routed::Section { frames, .. } => {
                        // The owner's virtual link through this link lives on after the
                        // owner's engine here dropped the sub-link (no answer to its pings):
                        // its sections go to a new sub-link, none is dropped, or a later ping of
                        // the virtual link, answered by the next sub-link, would confirm them.
                        let id = match (s.link, &waker) {
                            (Some(id), _) => id,
                            (None, Some(w)) if s.dropped_by_engine => add_sub(s, w, self.lane),
                            (None, _) => continue,
                        };
                        s.counter.received.fetch_add(frames.len() as u64, Relaxed);
                        match s.node.driver.handle_message(id, frames.clone()) {
                            Ok(()) => {}
                            Err(PeerError::UnknownLink) => {
                                s.link = None;
                                s.counter.live.fetch_sub(1, Relaxed);
                                if let Some(w) = &waker {
                                    let id = add_sub(s, w, self.lane);
                                    if s.node.driver.handle_message(id, frames).is_err() {
                                        self.drop_sub(s, now, carrier);
                                    }
                                }
                            }
                            Err(e) => {
                                debug!(via = %self.via, owner = node, error = %e, "sub-link dropped: the owner broke the protocol");
                                self.drop_sub(s, now, carrier);
                            }
                        }
                    }
                    Routed::Down { code, .. } if code == DOWN_NO_PEER => {
                        debug!(via = %self.via, owner = node, "sub-link down: the relay has no link to the owner");
                        self.drop_sub(s, now, carrier);
                    }
                    Routed::Down { code, .. }
                        if code == DOWN_NO_SESSION && s.node.driver.live_links() > 0 =>
                    {
                        // A direct link to the owner is up under this epoch, so the owner has
                        // the session: the section overtook the link's key confirmation. The
                        // sub-link waits and tries again.
                        debug!(via = %self.via, owner = node, "sub-link refused before the owner had the session");
                        self.drop_sub(s, now, carrier);
                    }
                    Routed::Down { code, .. } if code == DOWN_NO_SESSION => {
                        let streams = s.node.driver.with(|e, _| e.stream_count());
                        // A warning when it cost connections; a node that restarted while it
                        // carried none is news, not trouble.
                        if streams > 0 {
                            warn!(owner = node, via = %self.via, streams, "the node lost this session (it restarted): the connections it owned are reset");
                        } else {
                            info!(owner = node, via = %self.via, "the node lost this session (it restarted); it had no connections of this client");
                        }
                        self.drop_sub(s, now, carrier);
                        s.node.driver.restart();
                        let mut st = dial::lock(&s.node.state);
                        st.epoch = None;
                        st.epoch_since = Instant::now();
                    }
                    Routed::Down { .. } => {}
                }
            }
        })();
        for relay in lost {
            self.routes.relay_lost(NodeId(relay), self.via);
        }
        Box::pin(std::future::ready(result))
    }

    fn poll(&self, bufs: &mut [BytesMut]) -> usize {
        let mut subs = self.lock();
        let subs = &mut *subs;
        let now = Instant::now();
        let carrier = subs.link;
        let count = subs.list.len();
        let mut n = 0;
        let mut idle_round = false;
        while n < bufs.len() && count > 0 && !idle_round {
            idle_round = true;
            for k in 0..count {
                if n == bufs.len() {
                    break;
                }
                let i = (subs.next + k) % count;
                let s = &mut subs.list[i];
                let Some(id) = s.link else { continue };
                let (session, epoch) = {
                    let st = dial::lock(&s.node.state);
                    (st.id, st.epoch)
                };
                let Some(epoch) = epoch else { continue };
                match s
                    .node
                    .driver
                    .poll_relayed(id, std::slice::from_mut(&mut subs.gathered))
                {
                    None => {
                        // The owner's engine dropped it (no answer to pings).
                        s.node.driver.remove_link(id);
                        s.link = None;
                        s.counter.live.fetch_sub(1, Relaxed);
                        s.retry_at = now + RETRY;
                        s.dropped_by_engine = true;
                        s.dropped_at = Some(now);
                        self.suspect_carrier(carrier);
                    }
                    Some(0) => {}
                    Some(_) => {
                        let msg = &mut subs.gathered;
                        let out = &mut bufs[n];
                        out.clear();
                        route::encode_section_header(out, s.node.id.0, session, epoch, msg.len());
                        msg.copy_to(out);
                        s.counter.sent.fetch_add(msg.len() as u64, Relaxed);
                        msg.release();
                        n += 1;
                        idle_round = false;
                    }
                }
            }
            subs.next = (subs.next + 1) % count.max(1);
        }
        n
    }

    fn tick(&self) {
        let mut subs = self.lock();
        if self.ensure(&mut subs, Instant::now()) {
            if let Some(w) = &subs.waker {
                w.notify_one();
            }
        }
    }

    fn down(&self) {
        let mut subs = self.lock();
        subs.ended = true;
        let now = Instant::now();
        for s in &mut subs.list {
            // The link is gone: nothing to ping.
            self.drop_sub(s, now, None);
        }
    }
}
