//! Replay on the cluster listener, written against the wire protocol
//! (`wanmux_tests::noise_wire`, `snow` alone): a peer link's message 1 recorded on the way and
//! sent again must get no answer, like a client link's (`tests/hostile_handshake.rs`).

use std::time::Duration;
use wanmux_core::keys::generate_keypair;
use wanmux_tests::harness::within;
use wanmux_tests::mesh::{node_config, node_specs};
use wanmux_tests::noise_wire::{
    now_ns, open_peer_hello, peer_hello_message, replay, PeerWireHello, Tap, PEER_VERSION,
};

const LIMIT: Duration = Duration::from_secs(60);
/// How long a refused message 1 waits for an answer that must not come.
const LISTEN: Duration = Duration::from_secs(1);

/// Finding: a recorded peer hello, sent again to the node it was meant for, was answered every
/// time (two DH operations each, and a message 2 that tells an observer the peer's key is still
/// configured). Node 1 dials node 2 through a tap that records its message 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_peer_hello_gets_no_answer() {
    within(LIMIT, async {
        let specs = node_specs(2);
        let service = "127.0.0.1:9".parse().expect("addr");
        let client = generate_keypair().1;
        let tap = Tap::start(specs[1].cluster).await;
        let mut one = node_config(&specs, 0, client, service);
        // Node 1 reaches node 2 through the tap.
        one.cluster.as_mut().expect("cluster").peers[0].addr = tap.addr().into();
        let two = node_config(&specs, 1, client, service);
        let node2 = wanmux_server::start(two).await.expect("node 2 starts");
        let node1 = wanmux_server::start(one).await.expect("node 1 starts");
        node1.wait_for_peers(|up| up == [2]).await;
        node2.wait_for_peers(|up| up == [1]).await;

        let firsts = tap.firsts();
        assert_eq!(firsts.len(), 1, "one peer link");
        let recorded = open_peer_hello(specs[1].private_key.as_bytes(), &firsts[0]);
        assert_eq!((recorded.version, recorded.role), (PEER_VERSION, 2));
        assert_eq!(recorded.node_id, 1);
        assert_eq!(Some(recorded.instance), node1.instance());
        let skew = now_ns().abs_diff(recorded.timestamp);
        assert!(
            skew < 60_000_000_000,
            "timestamp {} s off",
            skew / 1_000_000_000
        );

        // The recorded message, sent again, straight to node 2: nothing, every time.
        for _ in 0..3 {
            let got = replay(specs[1].cluster, &firsts[0], LISTEN).await;
            assert_eq!(got, 0, "node 2 answered a replayed peer hello");
        }
        // Written anew with node 1's key: a timestamp at or below what node 2 took is a replay
        // too, however it was made; a later one is answered (the same key, so only the
        // timestamp decides).
        let (k1, k2) = (
            specs[0].private_key.as_bytes(),
            specs[1].public_key.as_bytes(),
        );
        for ts in [recorded.timestamp, recorded.timestamp - 31_000_000_000] {
            let hello = PeerWireHello {
                timestamp: ts,
                ..recorded
            };
            let m = peer_hello_message(k1, k2, &hello.encode());
            let got = replay(specs[1].cluster, &m, LISTEN).await;
            assert_eq!(got, 0, "node 2 answered a peer hello with an old timestamp");
        }
        // Version 3 (`version | role | node_id | instance`, no timestamp) is refused.
        let mut v3 = recorded.encode();
        v3.truncate(12);
        v3[0] = 3;
        let m = peer_hello_message(k1, k2, &v3);
        assert_eq!(
            replay(specs[1].cluster, &m, LISTEN).await,
            0,
            "version 3 answered"
        );
        let fresh = PeerWireHello {
            timestamp: now_ns(),
            ..recorded
        };
        let m = peer_hello_message(k1, k2, &fresh.encode());
        let got = replay(specs[1].cluster, &m, LISTEN).await;
        assert!(got > 0, "node 2 did not answer a fresh peer hello");

        // The real link is unharmed, and node 1's next link (cut at the tap) comes up again
        // with a later timestamp.
        assert_eq!(node2.peers_up(), [1]);
        tap.reset();
        tokio::time::timeout(Duration::from_secs(20), async {
            while tap.firsts().len() < 2 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("node 1 dials again");
        node2.wait_for_peers(|up| up == [1]).await;
        node1.wait_for_peers(|up| up == [2]).await;
        let again = open_peer_hello(specs[1].private_key.as_bytes(), &tap.firsts()[1]);
        assert!(again.timestamp > recorded.timestamp);
    })
    .await;
}
