//! Multihomed nodes (`node.addr` with several addresses) on real sockets: each "address" of the
//! node is a relay on `127.0.0.1:0` in front of the same server ([`wanmux_relay`]): a fault relay
//! for TCP links and a UDP forwarder for QUIC links. Links spread
//! over the addresses by index; when an address dies its links move to the other one, and when
//! it comes back they move home again. Every transfer compares hashes both ways.

use std::path::Path;
use std::time::{Duration, Instant};
use wanmux_config::{ClientConfig, HostPort, LinkTransport, ServerAuth, ServerConfig};
use wanmux_relay::{Links, Relay, Shape, UdpRelay};
use wanmux_tests::harness::{
    app_server, configs, eventually, init_tracing, paused_transfer, within, Auth, Tunnel,
};

const MIB: u64 = 1 << 20;
const IK: Auth = Auth::Static { psk: false };
const LIMIT: Duration = Duration::from_secs(120);

/// A TCP tunnel whose node has two addresses, each a fault relay to the server.
async fn two_addresses(
    links: u16,
    tweak: impl FnOnce(&mut ServerConfig, &mut ClientConfig),
) -> (Tunnel, Relay, Relay) {
    let (t, (a, b)) = Tunnel::start_fronted(IK, links, tweak, async |server| {
        let a = Relay::start(server, Shape::default())
            .await
            .expect("relay starts");
        let b = Relay::start(server, Shape::default())
            .await
            .expect("relay starts");
        let addrs = vec![a.addr(), b.addr()];
        ((a, b), addrs)
    })
    .await;
    t.client_config.validate().expect("valid client config");
    (t, a, b)
}

/// Waits until links 0 and 2 run through `a` and 1 and 3 through `b` (the home addresses of 4
/// links over 2 addresses).
async fn wait_spread(a: &Relay, b: &Relay) {
    let spread = eventually(Duration::from_secs(10), || {
        a.open_links().len() == 2 && b.open_links().len() == 2
    })
    .await;
    assert!(
        spread,
        "links per address: {} and {}",
        a.open_links().len(),
        b.open_links().len()
    );
}

/// Waits up to `limit` until all 4 links of `t` are up and run through `b`.
async fn wait_all_through(t: &Tunnel, b: &Relay, limit: Duration) {
    let moved = eventually(limit, || {
        t.client.live_links() == 4 && b.open_links().len() == 4
    })
    .await;
    assert!(
        moved,
        "{} links up, {} through the second address",
        t.client.live_links(),
        b.open_links().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_spread_over_both_addresses_and_transfers_arrive_intact() {
    within(LIMIT, async {
        let (mut t, a, b) = two_addresses(4, |_, _| {}).await;
        // Links 0 and 2 dial the first address, 1 and 3 the second.
        wait_spread(&a, &b).await;
        assert_eq!((a.accepted(), b.accepted()), (2, 2), "a link was redialled");

        t.check_transfer(32 * MIB, 32 * MIB, 1).await;
        t.check_transfer(0, 8 * MIB, 2).await;
        t.check_transfer(8 * MIB, 0, 3).await;
        t.check_concurrent(8, MIB, MIB).await;
        // Not asserted: how the bytes split between the addresses. It is the engine's choice,
        // not the dialler's, and it varies: while a small segment was queued in the last 2 s the
        // two lowest link ids are interactive lanes and bulk data avoids them, so when both
        // lanes are links of one address nearly all the bulk data goes through the other one.
        println!(
            "forwarded: first address {:.1} MiB, second {:.1} MiB",
            a.forwarded_both() as f64 / MIB as f64,
            b.forwarded_both() as f64 / MIB as f64
        );
        assert_eq!(t.client.live_links(), 4);
        assert_eq!((a.open_links().len(), b.open_links().len()), (2, 2));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_address_mid_transfer_moves_its_links_to_the_other() {
    within(LIMIT, async {
        let (mut t, a, b) = two_addresses(4, |_, _| {}).await;
        wait_spread(&a, &b).await;
        let (up, down, seed) = (64 * MIB, 64 * MIB, 11);
        let (running, gate) = paused_transfer(t.addr(), up, down, seed, 8 * MIB).await;

        // The first address dies: its links are reset and it refuses new connections.
        drop(a);
        let killed = Instant::now();
        gate.open();
        let c = running
            .await
            .unwrap()
            .expect("transfer survives losing an address");
        t.check_result(c, seed, up, down).await;
        wait_all_through(&t, &b, Duration::from_secs(20)).await;
        println!(
            "first address killed: transfer done and 4 links on the second address {:?} later, \
             {} connections accepted there",
            killed.elapsed(),
            b.accepted()
        );
        assert!(
            b.accepted() >= 4,
            "only {} dials reached the second address",
            b.accepted()
        );
        assert_eq!(t.app.accepted(), 1, "the application connection was redone");
        assert_eq!(t.server.session_count(), 1, "the session was not resumed");
        t.check_transfer(4 * MIB, 4 * MIB, 12).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_move_back_when_an_address_returns() {
    within(LIMIT + Duration::from_secs(60), async {
        let (mut t, a, b) = two_addresses(4, |_, c| {
            // Dials into the blackhole give up after a second, not the default ten.
            c.handshake_timeout = Duration::from_secs(1);
        })
        .await;
        wait_spread(&a, &b).await;

        // The first address goes silent: its links die by ping timeout, dials into it time out.
        a.blackhole(Links::All);
        wait_all_through(&t, &b, Duration::from_secs(30)).await;
        t.check_transfer(4 * MIB, 4 * MIB, 21).await;

        // It comes back: the two links whose home it is dial it again and move back.
        let accepted = a.accepted();
        a.restore(Links::All);
        let restored = Instant::now();
        let back = eventually(Duration::from_secs(90), || {
            t.client.live_links() == 4 && b.open_links().len() == 2 && a.accepted() >= accepted + 2
        })
        .await;
        assert!(
            back,
            "{} links up, {} through the second address, {} new dials to the first",
            t.client.live_links(),
            b.open_links().len(),
            a.accepted() - accepted
        );
        println!(
            "links back on the first address {:?} after it returned",
            restored.elapsed()
        );
        t.check_transfer(4 * MIB, 4 * MIB, 22).await;
        assert_eq!(t.server.session_count(), 1, "the session was not resumed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_links_use_every_address_and_survive_losing_one() {
    within(LIMIT, async {
        let tweak = |s: &mut ServerConfig, c: &mut ClientConfig| {
            s.quic = true;
            c.transport = LinkTransport::Quic;
            // Dials to the dead address give up after two seconds, not the default ten.
            c.handshake_timeout = Duration::from_secs(2);
        };
        let (mut t, (a, b)) = Tunnel::start_fronted(IK, 4, tweak, async |server| {
            let a = UdpRelay::start(server).await.expect("UDP relay starts");
            let b = UdpRelay::start(server).await.expect("UDP relay starts");
            let addrs = vec![a.addr(), b.addr()];
            ((a, b), addrs)
        })
        .await;
        // Links 0 and 2 dial the first address, 1 and 3 the second.
        assert!(
            a.connections() >= 2 && b.connections() >= 2,
            "QUIC connections per address: {} and {}",
            a.connections(),
            b.connections()
        );
        t.check_transfer(16 * MIB, 16 * MIB, 31).await;
        // How the bytes split between the addresses is the engine's choice, and it varies (see
        // `links_spread_over_both_addresses_and_transfers_arrive_intact`); not asserted.
        println!(
            "forwarded: first address {:.1} MiB, second {:.1} MiB",
            a.forwarded() as f64 / MIB as f64,
            b.forwarded() as f64 / MIB as f64
        );

        let (up, down, seed) = (32 * MIB, 32 * MIB, 32);
        let (running, gate) = paused_transfer(t.addr(), up, down, seed, 4 * MIB).await;
        // The first address dies silently (UDP: nothing answers).
        drop(a);
        gate.open();
        let c = running
            .await
            .unwrap()
            .expect("transfer survives losing an address");
        t.check_result(c, seed, up, down).await;
        let before = b.forwarded();
        // The 4 links and the 2 lane streams beside two of them (the default `links.lanes`).
        assert!(
            eventually(Duration::from_secs(30), || t.client.live_links() == 6).await,
            "links did not come back: {} up",
            t.client.live_links()
        );
        t.check_transfer(4 * MIB, 4 * MIB, 33).await;
        assert!(
            b.forwarded() - before >= 8 * MIB,
            "the last transfer did not go through the second address"
        );
        assert_eq!(t.server.session_count(), 1, "the session was not resumed");
    })
    .await;
}

/// `node.addr` as an array in a config file: the client parsed from it dials both addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn array_addr_from_a_config_file() {
    within(LIMIT, async {
        init_tracing();
        let app = app_server().await;
        let (server_cfg, _) = configs(Auth::Psk, app.addr, 2);
        let ServerAuth::PskOnly { psk } = &server_cfg.auth else {
            unreachable!("PSK-only config")
        };
        let psk = psk.to_base64();
        let server = wanmux_server::start(server_cfg)
            .await
            .expect("server starts");
        let a = Relay::start(server.local_addr(), Shape::default())
            .await
            .expect("relay starts");
        let b = Relay::start(server.local_addr(), Shape::default())
            .await
            .expect("relay starts");
        let text = |addr: &str| {
            format!(
                "[client]\npsk = \"{psk}\"\n\n[[node]]\nid = 1\naddr = {addr}\n\n[links]\n\
                 count = 2\n\n[[map]]\nlisten = \"127.0.0.1:0\"\nservice = \"app\"\n"
            )
        };
        let parse = |text: &str| ClientConfig::parse(text, Path::new("."), "client.toml");

        // Errors name the element and its line.
        let errs = parse(&text(&format!("[\"{}\", 7]", a.addr()))).unwrap_err();
        assert_eq!(errs.errors[0].key, "node[0].addr[1]", "{errs}");
        assert_eq!(errs.errors[0].line, Some(6), "{errs}");
        let errs = parse(&text(&format!("[\"{}\", \"{}\"]", a.addr(), a.addr()))).unwrap_err();
        assert_eq!(
            errs.to_string(),
            "client.toml:6: node[0].addr[1]: listed twice (also node[0].addr[0])"
        );

        let cfg = parse(&text(&format!("[\"{}\", \"{}\"]", a.addr(), b.addr())))
            .expect("array addr parses");
        let node = cfg.nodes().next().expect("one node");
        assert_eq!(
            node.addr.as_slice(),
            [HostPort::from(a.addr()), HostPort::from(b.addr())]
        );
        let client = wanmux_client::start(cfg.clone())
            .await
            .expect("client starts");
        tokio::time::timeout(Duration::from_secs(10), client.wait_for_links(2))
            .await
            .expect("links come up");
        assert!(
            eventually(Duration::from_secs(10), || a.open_links().len() == 1
                && b.open_links().len() == 1)
            .await,
            "links per address: {} and {}",
            a.open_links().len(),
            b.open_links().len()
        );
        let mut t = Tunnel {
            app,
            server,
            client,
            client_config: cfg,
        };
        t.check_transfer(4 * MIB, 4 * MIB, 41).await;
    })
    .await;
}
