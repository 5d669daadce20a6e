//! What a client's links cost a node (issue 23: "Safe on the open internet"), on real sockets:
//! every client link holds buffers in the node (its reader's read buffer and decryption block,
//! its writer's batch, plain and sealed), which the node charges to the client's share of
//! `limits.memory` while the link lives (`LINK_RECV_MEMORY`, `LINK_SEND_MEMORY`). Before, they
//! were outside the cap, and one client could tie up about 0.6 MiB per link, up to 300 links in
//! each of its 8 sessions.
//!
//! `a_client_opening_many_links_stays_within_its_share_of_the_memory_cap`: a hostile client of
//! its own key opens links in two sessions of a node with a small cap, each sent a full message
//! (so the node's reader buffers are used). The node takes the links whose charge the client's share covers
//! and refuses the rest (counted under `memory`), the pools stay within their caps, an honest
//! client's transfers beside it complete with matching hashes, and the charges are given back
//! when the links close.
//!
//! `what_a_link_holds` (ignored: it reads the process's memory, too noisy for a check on a
//! shared machine; run it alone with `--ignored --nocapture`) prints the resident memory per link
//! of the node and the raw client together for links sent a full message each, busy and idle.

use std::time::Duration;
use wanmux_config::ClientAuth;
use wanmux_core::budget::{Budget, Pool};
use wanmux_core::driver::link::{LINK_RECV_MEMORY, LINK_SEND_MEMORY};
use wanmux_core::keys::generate_keypair;
use wanmux_tests::harness::{eventually, panics, rss_kib, within, Auth, Tunnel};
use wanmux_tests::hostile::{alone, noise_auth, wire, RawLink};

const IK: Auth = Auth::Static { psk: false };
const MIB: u64 = 1 << 20;
/// The node's cap: 8 MiB per pool.
const MEMORY: u64 = 16 * MIB;
/// Links the hostile client asks for in each of its two sessions.
const LINKS: u32 = 24;
/// Frames per message: nearly a full message.
const FRAMES: u64 = 6_000;

/// A tunnel with one honest client (one link) and a second allowed key for the hostile client;
/// the node's `limits.memory` is `memory`. Returns the tunnel and the hostile client's auth.
async fn tunnel(memory: u64) -> (Tunnel, wanmux_core::noise::ClientAuth) {
    let (hostile_key, hostile_public) = generate_keypair();
    let t = Tunnel::start_with(IK, 1, |s, _| {
        s.limits.memory = memory;
        s.limits.stream_window = 4 * MIB;
        if let wanmux_config::ServerAuth::StaticKey {
            allowed_clients, ..
        } = &mut s.auth
        {
            allowed_clients.insert(hostile_public);
        }
    })
    .await;
    let mut cfg = t.client_config.clone();
    if let ClientAuth::StaticKey { private_key, .. } = &mut cfg.auth {
        *private_key = hostile_key;
    }
    (t, noise_auth(&cfg))
}

/// Sends a full message (session window updates that change nothing) and waits until the node
/// answered a ping after it: its reader's buffers held a full message.
async fn busy(link: &mut RawLink) -> Result<(), wanmux_core::noise::LinkError> {
    let mut f = Vec::new();
    for _ in 0..FRAMES {
        f.clear();
        wire::session_window(&mut f, 1 << 40);
        link.send(&f).await?;
    }
    link.sync(Duration::from_secs(10)).await
}

/// Opens `count` links into the session `secret`, each kept busy once; the links the node took
/// (the others it closed after their handshake).
async fn open_links(
    server: std::net::SocketAddr,
    auth: &wanmux_core::noise::ClientAuth,
    secret: [u8; 32],
    count: u32,
    budget: &Budget,
    peak: &mut [u64; 2],
) -> Vec<RawLink> {
    let mut taken = Vec::new();
    for seq in 0..count {
        let mut link = RawLink::connect(server, auth, secret, seq)
            .await
            .expect("an allowed client's handshake");
        if busy(&mut link).await.is_ok() {
            taken.push(link);
        }
        for (p, pool) in peak.iter_mut().zip([Pool::Recv, Pool::Send]) {
            *p = (*p).max(budget.used(pool));
        }
    }
    taken
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_opening_many_links_stays_within_its_share_of_the_memory_cap() {
    within(Duration::from_secs(120), async {
        let before = panics();
        let (mut t, hostile) = tunnel(MEMORY).await;
        t.check_transfer(MIB, MIB, 1).await;
        let budget = t.server.budget().clone();
        let cap = budget.cap();
        // What the honest client holds when idle: its one link's charge (once the transfer's
        // last acknowledgements are in: the pools hold its last bytes until then).
        let used = || [budget.used(Pool::Recv), budget.used(Pool::Send)];
        let idle = [LINK_RECV_MEMORY, LINK_SEND_MEMORY];
        assert!(
            eventually(Duration::from_secs(5), || used() == idle).await,
            "the honest client's idle link is charged, and nothing else is held: {:?} against {idle:?}",
            used()
        );

        let mut peak = [0u64; 2];
        let addr = t.server.local_addr();
        let mut links = Vec::new();
        for _ in 0..2 {
            let secret: [u8; 32] = rand::random();
            links.append(&mut open_links(addr, &hostile, secret, LINKS, &budget, &mut peak).await);
        }
        let taken = links.len() as u64;
        let refused = t.server.status().handshake_failures["memory"];
        println!(
            "hostile links taken {taken} of {}, refused for memory {refused}; pools used at \
             most {peak:?} of {cap} each; charge per link {LINK_RECV_MEMORY} + \
             {LINK_SEND_MEMORY} bytes",
            2 * LINKS
        );
        assert!(
            taken >= 2,
            "the node took {taken} links of the hostile client"
        );
        assert_eq!(
            refused,
            u64::from(2 * LINKS) - taken,
            "every link not taken was refused for memory"
        );
        // One client holds no more of a pool than the pool keeps free (its fair share), so
        // its links at most half of it, and a link was taken only while its client could keep
        // another link's worth for its streams.
        assert!(
            taken * LINK_SEND_MEMORY <= cap / 2 - LINK_SEND_MEMORY
                && taken * LINK_RECV_MEMORY <= cap / 2 - LINK_RECV_MEMORY,
            "{taken} links of one client charged beyond its share of a pool ({cap})"
        );
        for (pool, i) in [(Pool::Recv, 0), (Pool::Send, 1)] {
            let used = budget.used(pool);
            assert!(
                used >= idle[i] + taken * LinkCost::of(pool),
                "{pool:?}: {used} bytes used, the {taken} links' charges are not all there"
            );
            assert!(peak[i] <= cap, "{pool:?} peaked at {} over {cap}", peak[i]);
        }

        // The honest client beside it: transfers both ways, hashes compared.
        t.check_transfer(4 * MIB, 4 * MIB, 2).await;
        // The hostile links still work (pings answered): they were taken, not starved.
        for link in &mut links {
            busy(link)
                .await
                .expect("a hostile link the node took still answers");
        }
        for (pool, i) in [(Pool::Recv, 0), (Pool::Send, 1)] {
            assert!(budget.used(pool) <= cap, "{pool:?} over its cap");
            peak[i] = peak[i].max(budget.used(pool));
        }

        // Closed links give their charges back.
        drop(links);
        assert!(
            eventually(Duration::from_secs(10), || {
                [budget.used(Pool::Recv), budget.used(Pool::Send)] == idle
            })
            .await,
            "the closed links' charges were not given back: {budget:?}"
        );
        let secret: [u8; 32] = rand::random();
        let again = open_links(addr, &hostile, secret, 2, &budget, &mut peak).await;
        assert_eq!(again.len(), 2, "the node takes the client's links again");
        drop(again);
        t.check_transfer(MIB, MIB, 3).await;
        assert_eq!(panics(), before, "something panicked");
    })
    .await;
}

/// One link's charge in a pool.
struct LinkCost;

impl LinkCost {
    fn of(pool: Pool) -> u64 {
        match pool {
            Pool::Recv => LINK_RECV_MEMORY,
            Pool::Send => LINK_SEND_MEMORY,
        }
    }
}

/// Links of one session sent a full message each, and the process's resident memory per link (both ends: the
/// node's and the raw client's buffers).
#[test]
#[ignore = "a measurement: reads the process's resident memory; run alone with --nocapture"]
fn what_a_link_holds() {
    alone(async {
        const N: u32 = 50;
        let (mut t, hostile) = tunnel(1 << 30).await;
        t.check_transfer(MIB, MIB, 1).await;
        let budget = t.server.budget().clone();
        let mut peak = [0u64; 2];
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib();
        let secret: [u8; 32] = rand::random();
        let mut links = open_links(
            t.server.local_addr(),
            &hostile,
            secret,
            N,
            &budget,
            &mut peak,
        )
        .await;
        let busy_kib = rss_kib();
        // Idle for longer than a writer keeps its buffers (the node's pings still answered).
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for link in &mut links {
                link.flush().await.expect("idle link kept");
            }
        }
        let idle_kib = rss_kib();
        for link in &mut links {
            busy(link).await.expect("busy");
        }
        let again_kib = rss_kib();
        let n = links.len() as u64;
        println!(
            "{n} links: VmRSS {before} KiB before, {busy_kib} KiB after opening them busy \
             ({} KiB per link), {idle_kib} KiB after 3 s idle ({} KiB per link), {again_kib} \
             KiB busy again ({} KiB per link); charged per link {} KiB",
            (busy_kib.saturating_sub(before)) / n,
            (idle_kib.saturating_sub(before)) / n,
            (again_kib.saturating_sub(before)) / n,
            (LINK_RECV_MEMORY + LINK_SEND_MEMORY) >> 10
        );
    });
}
