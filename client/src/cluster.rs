//! The nodes of the cluster as the client sees them, and the choice of a new stream's owner.
//!
//! The client runs one engine per node ([`NodeSession`]): the streams that node owns, its link
//! pool, its epoch. All of them share one session id, the daemon's memory budget and its budget
//! signal. A node that restarts (a new epoch) or stays unreachable for `client.session_grace_ms`
//! resets only the streams it owned; the others go on. A stream's frames travel on every node's
//! links (`spread = "stripe"`: through the sub-links of `route.rs`, relayed by the other nodes to
//! the owner) or on its owner's only (`"pin"`), in both directions.
//!
//! [`Cluster::choose`] picks the owner of a new stream by `cluster.owner`, among the nodes with
//! a live link (among all nodes while none has one, so the stream waits for the first link).

use crate::dial::{self, SharedState};
use crate::route::Routes;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tracing::{info, warn};
use wanmux_config::OwnerPolicy;
use wanmux_core::budget::Pool;
use wanmux_core::driver::{SessionDriver, Totals};
use wanmux_core::frame::{reset, SecretBytes};
use wanmux_core::ids::NodeId;
use wanmux_core::lograte::Tally;
use wanmux_core::noise::SessionSecret;
use wanmux_core::status::{SessionStatus, Status};

/// One node: the engine of the streams it owns and the tasks that keep its links.
#[derive(Debug)]
pub(crate) struct NodeSession {
    pub(crate) id: NodeId,
    pub(crate) driver: SessionDriver,
    pub(crate) state: SharedState,
    /// The link pool and the link watcher.
    pub(crate) tasks: Vec<JoinHandle<()>>,
}

impl Drop for NodeSession {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What a node is doing, for tests, logs and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStatus {
    /// The node's id (`node.id`).
    pub id: u16,
    /// Its links that are up.
    pub links: usize,
    /// Open streams it owns.
    pub streams: usize,
    /// Plaintext bytes sent on its live links.
    pub bytes_sent: u64,
    /// Plaintext bytes received on its live links.
    pub bytes_received: u64,
    /// Bytes of other owners' sections sent on its links (upstream, relayed by this node).
    pub relayed_sent: u64,
    /// Bytes of other owners' sections received on its links (downstream, relayed by it).
    pub relayed_received: u64,
    /// Bytes of this node's sections sent on other nodes' links (its streams, striped).
    pub striped_sent: u64,
    /// Bytes of this node's sections received on other nodes' links.
    pub striped_received: u64,
}

impl NodeSession {
    pub(crate) fn new(id: NodeId, driver: SessionDriver, session: SessionSecret) -> Self {
        let state = std::sync::Arc::new(std::sync::Mutex::new(dial::SessionState::new(session)));
        NodeSession {
            id,
            driver,
            state,
            tasks: Vec::new(),
        }
    }

    /// The node's numbers; `routes` has what was relayed.
    pub(crate) fn status(&self, routes: &Routes) -> NodeStatus {
        let links = self.driver.live_links();
        let (carried, owned) = routes.totals(self.id);
        self.driver.with(|s, now| {
            let (mut sent, mut received) = (0, 0);
            let direct = s.links().filter(|&l| !s.is_relayed(l));
            for l in direct.filter_map(|l| s.link_stats(l, now)) {
                sent += l.bytes_sent;
                received += l.bytes_received;
            }
            NodeStatus {
                id: self.id.0,
                links,
                streams: s.stream_count(),
                bytes_sent: sent,
                bytes_received: received,
                relayed_sent: carried.0,
                relayed_received: carried.1,
                striped_sent: owned.0,
                striped_received: owned.1,
            }
        })
    }

    /// (open streams, unacknowledged bytes sent): a node's load for `least_loaded`.
    fn load(&self) -> (usize, u64) {
        self.driver
            .with(|s, _| (s.stream_count(), s.budget_held().1))
    }
}

/// Every node of the config, in config order.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) nodes: Vec<NodeSession>,
    policy: OwnerPolicy,
    /// Every node again, for the links' routers, and what was relayed.
    pub(crate) routes: Arc<Routes>,
    /// Connections refused for want of a link, logged as counts.
    refused: Tally<SocketAddr>,
    /// ... and counted since start (`status`: `no_link`).
    no_link: AtomicU64,
    /// Whether the first dials settled: until then a connection's hold does not run.
    dials: Arc<crate::ready::Dials>,
    /// The open-file limit and its reserve, kept for the links' redials.
    fds: wanmux_core::daemon::fds::Fds,
    /// Connections refused for want of descriptors, logged as counts ...
    no_fds: Tally<SocketAddr>,
    /// ... and counted since start (`status`: `file_limit`).
    no_fds_count: AtomicU64,
}

/// Refusals are logged at most this often, as a count.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

impl Cluster {
    pub(crate) fn new(
        nodes: Vec<NodeSession>,
        policy: OwnerPolicy,
        routes: Arc<Routes>,
        dials: Arc<crate::ready::Dials>,
    ) -> Self {
        Cluster {
            dials,
            fds: wanmux_core::daemon::fds::Fds::raise("new application connections"),
            no_fds: Tally::new(REFUSAL_LOG_EVERY, |n, last| {
                warn!(
                    refused = n,
                    %last,
                    "open files near the limit: application connections refused, the rest is \
                     kept for the links (raise LimitNOFILE)"
                );
            }),
            no_fds_count: AtomicU64::new(0),
            nodes,
            policy,
            routes,
            refused: Tally::new(REFUSAL_LOG_EVERY, |n, last| {
                warn!(
                    refused = n,
                    %last,
                    "no link to any node: application connections refused (client.no_link_hold_ms)"
                );
            }),
            no_link: AtomicU64::new(0),
        }
    }

    /// Waits up to `hold` for a live link to any node; whether one came up. The hold runs from
    /// the end of the client's first dials (a link up, or one failed), not from before: right
    /// after a start the first link may take longer than the hold (a QUIC handshake given 3 s
    /// to be answered before TCP, a node that comes up a moment later), and a connection made
    /// then is no sign that the nodes are unreachable.
    pub(crate) async fn wait_live(&self, hold: Duration) -> bool {
        let mut deadline = tokio::time::Instant::now() + hold;
        loop {
            if self.live_links() > 0 {
                return true;
            }
            let now = tokio::time::Instant::now();
            if !self.dials.settled() {
                deadline = deadline.max(now + hold);
            }
            if now >= deadline {
                return false;
            }
            // Several nodes' links: polled rather than waited on, one at a time.
            tokio::time::sleep(Duration::from_millis(20).min(hold)).await;
        }
    }

    /// Refuses an application connection with a reset (`SO_LINGER` 0): no node is reachable.
    /// Logged as a count at most every [`REFUSAL_LOG_EVERY`], none left out.
    /// Refuses `tcp` (a reset) if the open descriptors are within the reserve of the limit,
    /// kept for the links: a link lost then could not be dialled again, and every connection
    /// would wait on it. Returns the connection when there is room.
    pub(crate) fn room_for(
        &self,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
    ) -> Option<tokio::net::TcpStream> {
        if self.fds.room() {
            return Some(tcp);
        }
        self.no_fds_count.fetch_add(1, Ordering::Relaxed);
        reset(tcp);
        tracing::debug!(%peer, "connection refused: open files near the limit");
        self.no_fds.hit(peer);
        None
    }

    pub(crate) fn refuse(&self, tcp: tokio::net::TcpStream, peer: SocketAddr) {
        // Counted before the reset: whoever sees it sees the count too.
        self.no_link.fetch_add(1, Ordering::Relaxed);
        reset(tcp);
        tracing::debug!(%peer, "connection refused: no link to any node");
        self.refused.hit(peer);
    }

    /// The node that owns a new stream from application client `peer`.
    pub(crate) fn choose(&self, peer: SocketAddr) -> &NodeSession {
        if let [only] = &self.nodes[..] {
            return only;
        }
        let live: Vec<&NodeSession> = self
            .nodes
            .iter()
            .filter(|n| n.driver.live_links() > 0)
            .collect();
        // A node that said it is stopping refuses new streams: the others take them, while
        // there are others.
        let staying: Vec<&NodeSession> = live
            .iter()
            .copied()
            .filter(|n| !n.driver.peer_draining())
            .collect();
        let candidates = if !staying.is_empty() {
            staying
        } else if live.is_empty() {
            self.nodes.iter().collect()
        } else {
            live
        };
        let i = match self.policy {
            OwnerPolicy::First => 0,
            OwnerPolicy::Hash => {
                let ids: Vec<NodeId> = candidates.iter().map(|n| n.id).collect();
                rendezvous(peer.ip(), &ids)
            }
            OwnerPolicy::LeastLoaded => {
                let loads: Vec<(usize, u64)> = candidates.iter().map(|n| n.load()).collect();
                least_loaded(&loads)
            }
        };
        candidates[i]
    }

    /// The client's status: one session per node.
    pub(crate) fn status(&self, uptime: Duration) -> Status {
        let mut st = Status::new("client", uptime);
        let budget = self.nodes[0].driver.with(|s, _| s.budget().clone());
        st.memory_used_bytes = budget.used(Pool::Recv) + budget.used(Pool::Send);
        st.memory_limit_bytes = budget.cap().saturating_mul(2);
        let mut totals = Totals::default();
        for n in &self.nodes {
            totals = totals + n.driver.counters().totals();
            let id = dial::lock(&n.state).id.to_string();
            st.sessions
                .push(SessionStatus::of(&n.driver, id, format!("node {}", n.id.0)));
        }
        st.totals = totals.into();
        // The application connections reset for want of a link, or for a node's refusal.
        st.stream_refusals
            .insert("no_link".into(), self.no_link.load(Ordering::Relaxed));
        st.stream_refusals.insert(
            "file_limit".into(),
            self.no_fds_count.load(Ordering::Relaxed),
        );
        for n in &self.nodes {
            for (why, count) in n.driver.stream_refusals() {
                *st.stream_refusals.entry(why.into()).or_default() += count;
            }
        }
        if self.nodes.len() > 1 {
            st.relayed = self
                .nodes
                .iter()
                .map(|n| {
                    let ((sent, received), _) = self.routes.totals(n.id);
                    wanmux_core::status::RelayedStatus {
                        node: n.id.0,
                        sent_bytes: sent,
                        received_bytes: received,
                        peer_link_up: None,
                    }
                })
                .collect();
        }
        st
    }

    pub(crate) fn live_links(&self) -> usize {
        self.nodes.iter().map(|n| n.driver.live_links()).sum()
    }

    pub(crate) fn stream_count(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| n.driver.with(|s, _| s.stream_count()))
            .sum()
    }
}

/// The index of the least loaded of `loads` (open streams, then bytes in flight; the first of
/// equals). `loads` is not empty.
fn least_loaded(loads: &[(usize, u64)]) -> usize {
    (0..loads.len()).min_by_key(|&i| loads[i]).unwrap_or(0)
}

/// Rendezvous (highest random weight) hashing: the index of the node with the highest hash of
/// (address, node id). An address stays on its node while that node is a candidate, and when a
/// node leaves only its addresses move. `nodes` is not empty.
fn rendezvous(ip: IpAddr, nodes: &[NodeId]) -> usize {
    let weight = |n: NodeId| {
        // Fixed keys: the same address maps to the same node in every run of this build.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (ip, n.0).hash(&mut h);
        h.finish()
    };
    (0..nodes.len())
        .max_by_key(|&i| weight(nodes[i]))
        .unwrap_or(0)
}

/// Closes an application connection with a reset, so its application sees a refusal, not an
/// empty answer.
pub(crate) fn reset(tcp: tokio::net::TcpStream) {
    let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
}

/// With no link of its own to its node for `grace` (below the node's own grace), a node's
/// pinned connections are reset (their data goes on the node's own links only), and once
/// the node has also not been heard through the other nodes of a cluster for `grace`, its
/// part of the session is given up: the connections it owned are reset rather than left
/// hanging, and the part starts afresh under a new session id. The other nodes' streams are
/// untouched.
///
/// The grace runs from the end of the node's last direct link, or from the last message of
/// the node through a relay (a sub-link, `route.rs`), whichever is later: the node keeps the
/// session on the same terms (docs/PROTOCOL.md), so a node whose own path is down while the
/// others reach it keeps its striped connections. A node that died for good leaves sub-links
/// that come and go (each added again once its carrier answers, dropped when the relay
/// reports it has no peer link to the node), but no message from it comes through them.
pub(crate) async fn watch_links(
    node: NodeId,
    driver: SessionDriver,
    state: SharedState,
    grace: Duration,
) {
    // When the node's last direct link ended (as first seen here).
    let mut alone_since: Option<Instant> = None;
    // The pinned streams were reset for this lack of direct links.
    let mut pins_reset = false;
    // The part was given up and the node has had no direct link since: nothing more to do.
    let mut given_up = false;
    // The links through a relay were pinged for a lack of word since this time.
    let mut probed: Option<Instant> = None;
    loop {
        let changed = driver.links_changed();
        if driver.live_links() > 0 {
            (alone_since, pins_reset, given_up) = (None, false, false);
            changed.await;
            continue;
        }
        if given_up {
            changed.await;
            continue;
        }
        let alone = *alone_since.get_or_insert_with(Instant::now);
        let clock = driver.grace(alone, grace, &mut probed);
        let (now, deadline) = (clock.now, clock.deadline);
        if !pins_reset && now >= alone + grace {
            pins_reset = true;
            let pinned = driver.with(|s, _| s.reset_pinned(reset::NO_PATH));
            if now < deadline {
                warn!(
                    node = node.0,
                    pinned,
                    "no link to the node for {} s; the other nodes still reach it, so the \
                     connections it owns go on through them, except the pinned ones, which \
                     are reset",
                    grace.as_secs_f64()
                );
            }
        }
        if now < deadline {
            let mut wake = clock.wake;
            if !pins_reset {
                wake = wake.min(alone + grace);
            }
            // A link that comes or goes, or the deadline: look again.
            let _ = tokio::time::timeout_at(wake.into(), changed).await;
            continue;
        }
        let streams = driver.with(|s, _| s.stream_count());
        let relayed = match clock.heard_through_relay {
            true => ", nor word from it through the other nodes",
            false => "",
        };
        let fresh = dial::SessionState::new(SessionSecret::generate());
        let (old, new) = (dial::lock(&state).id, fresh.id);
        if streams > 0 {
            warn!(
                node = node.0,
                streams,
                %old,
                %new,
                "no link to the node for {} s{relayed}; the connections it owned are reset, \
                 and its part of the session starts afresh under a new id",
                grace.as_secs_f64()
            );
        } else {
            info!(
                node = node.0,
                %old,
                %new,
                "no link to the node for {} s{relayed}; its part of the session starts afresh \
                 under a new id",
                grace.as_secs_f64()
            );
        }
        driver.restart();
        let gone = std::mem::replace(&mut *dial::lock(&state), fresh);
        // The node may still hold the old session (its grace is longer): tell it on the new
        // session's first link, so it closes the old one's service connections now.
        driver.with(|s, _| s.forget_session(SecretBytes(*gone.secret.as_bytes())));
        (alone_since, given_up) = (None, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_loaded_prefers_fewer_streams_then_fewer_bytes_then_config_order() {
        assert_eq!(least_loaded(&[(3, 0), (1, 900), (1, 100), (2, 0)]), 2);
        assert_eq!(least_loaded(&[(0, 0), (0, 0)]), 0);
        assert_eq!(least_loaded(&[(5, 5)]), 0);
    }

    #[test]
    fn rendezvous_moves_only_the_addresses_of_a_node_that_left() {
        let all = [NodeId(1), NodeId(2), NodeId(3), NodeId(4), NodeId(5)];
        let without_3 = [NodeId(1), NodeId(2), NodeId(4), NodeId(5)];
        let mut per_node = [0usize; 5];
        for a in 0..2000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + a));
            let before = all[rendezvous(ip, &all)];
            assert_eq!(before, all[rendezvous(ip, &all)], "stable");
            per_node[usize::from(before.0) - 1] += 1;
            let after = without_3[rendezvous(ip, &without_3)];
            if before != NodeId(3) {
                assert_eq!(before, after, "{ip} moved though its node stayed");
            }
        }
        // Spread: every node gets a fair share of 2000 addresses (400 expected each).
        assert!(per_node.iter().all(|&n| n > 300), "{per_node:?}");
    }
}
