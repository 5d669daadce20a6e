//! The node mesh with real nodes on 127.0.0.1: peer links come up between every pair, go down
//! and up again with their peers, and refuse whoever is not the peer it claims to be; a client
//! key gets nowhere on the cluster listener and a peer key nowhere on the client listener.

use bytes::BytesMut;
use std::time::Duration;
use tokio::net::TcpStream;
use wanmux_config::ServerConfig;
use wanmux_core::keys::{generate_keypair, PrivateKey, PublicKey};
use wanmux_core::noise::{self, ClientAuth, ClientHello, LinkError, PeerHello};
use wanmux_core::peer::{Handle, PeerFrame, Via};
use wanmux_relay::{Links, Relay, Shape};
use wanmux_server::ServerHandle;
use wanmux_tests::harness::eventually;
use wanmux_tests::mesh::{node_config, node_specs, LogCapture, NodeSpec};

const LIMIT: Duration = Duration::from_secs(15);

/// A cluster of `n` nodes, their specs and configs (for restarts), and a client key each allows.
struct Cluster {
    specs: Vec<NodeSpec>,
    configs: Vec<ServerConfig>,
    nodes: Vec<Option<ServerHandle>>,
    client: (PrivateKey, PublicKey),
}

impl Cluster {
    /// Configs for `n` nodes; `tweak` may change them before any node starts.
    fn configs(n: u16, tweak: impl FnOnce(&[NodeSpec], &mut [ServerConfig])) -> Cluster {
        let specs = node_specs(n);
        let client = generate_keypair();
        // No stream is opened in these tests: the service address is never dialled.
        let service = "127.0.0.1:9".parse().expect("addr");
        let mut configs: Vec<_> = (0..specs.len())
            .map(|i| node_config(&specs, i, client.1, service))
            .collect();
        tweak(&specs, &mut configs);
        Cluster {
            specs,
            configs,
            nodes: Vec::new(),
            client,
        }
    }

    async fn start(mut self) -> Cluster {
        for c in &self.configs {
            let node = wanmux_server::start(c.clone()).await.expect("node starts");
            self.nodes.push(Some(node));
        }
        self
    }

    fn node(&self, i: usize) -> &ServerHandle {
        self.nodes[i].as_ref().expect("node running")
    }

    /// Waits until node `i` has live peer links to exactly `want`.
    async fn wait_up(&self, i: usize, want: &[u16]) {
        let wait = self.node(i).wait_for_peers(|up| up == want);
        if tokio::time::timeout(LIMIT, wait).await.is_err() {
            panic!(
                "node {} has peers {:?} up, not {want:?}",
                i + 1,
                self.node(i).peers_up()
            );
        }
    }

    /// Waits until every node has a live peer link to every other.
    async fn wait_full_mesh(&self) {
        let ids: Vec<u16> = self.specs.iter().map(|s| s.id).collect();
        for (i, s) in self.specs.iter().enumerate() {
            let others: Vec<u16> = ids.iter().copied().filter(|&id| id != s.id).collect();
            self.wait_up(i, &others).await;
        }
    }

    /// Peer credentials of node `i` dialling node `to`, as its dialler builds them.
    fn peer_auth(&self, i: usize, to: usize) -> ClientAuth {
        ClientAuth::Static {
            local: self.specs[i].private_key.clone(),
            server: self.specs[to].public_key,
            psk: None,
        }
    }
}

/// A peer handshake from the test to `addr`: `auth` and `hello` as given.
async fn dial_peer(
    addr: std::net::SocketAddr,
    auth: &ClientAuth,
    hello: PeerHello,
) -> Result<(noise::LinkReader, noise::LinkWriter, PeerHello), LinkError> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut first = BytesMut::new();
    PeerFrame::Ping(0).encode(&mut first);
    noise::connect_peer(tcp, auth, &hello, &first, LIMIT).await
}

/// A client handshake from the test to `addr`.
async fn dial_client(addr: std::net::SocketAddr, auth: &ClientAuth) -> Result<(), LinkError> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let hello = ClientHello {
        session: noise::SessionSecret::from_bytes([5; 32]),
        link_seq: 0,
        lane: false,
        relay: false,
    };
    let mut first = BytesMut::new();
    wanmux_core::frame::Frame::Ping(0).encode(&mut first);
    noise::connect(tcp, auth, &hello, &first, LIMIT)
        .await
        .map(|_| ())
}

#[tokio::test]
async fn three_nodes_mesh_up_and_know_each_others_instance() {
    let logs = LogCapture::start();
    let cluster = Cluster::configs(3, |_, _| {}).start().await;
    cluster.wait_full_mesh().await;
    for i in 0..3 {
        let node = cluster.node(i);
        assert_eq!(node.cluster_addr(), Some(cluster.specs[i].cluster));
        for j in (0..3).filter(|&j| j != i) {
            // Both ends of every link learnt the other's instance in the handshake.
            assert_eq!(
                node.peer_instance(cluster.specs[j].id),
                cluster.node(j).instance(),
                "node {} about node {}",
                i + 1,
                j + 1
            );
        }
    }
    // Each pair has one link, dialled by the lower id: node 1 dials 2 and 3, node 2 dials 3,
    // so each node logged one "link up" per peer and no link replaced another.
    let ups = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("peer link up"))
        .count();
    assert_eq!(ups, 6, "{:#?}", logs.lines());
    assert!(logs.find(&["replaced"]).is_none(), "{:#?}", logs.lines());
}

#[tokio::test]
async fn a_node_without_cluster_has_no_peers() {
    let mut cluster = Cluster::configs(2, |_, configs| configs[0].cluster = None);
    let node = wanmux_server::start(cluster.configs.remove(0))
        .await
        .expect("node starts");
    assert_eq!(node.cluster_addr(), None);
    assert_eq!(node.peers_up(), Vec::<u16>::new());
    assert_eq!(node.instance(), None);
    node.wait_for_peers(|up| up.is_empty()).await;
}

#[tokio::test]
async fn a_restarted_node_is_down_then_up_with_a_new_instance() {
    let logs = LogCapture::start();
    let mut cluster = Cluster::configs(3, |_, _| {}).start().await;
    cluster.wait_full_mesh().await;
    let old = cluster.node(1).instance().expect("a cluster node");

    // Node 2 dies the way a crash looks to its peers.
    cluster.nodes[1].take().expect("running").abort();
    cluster.wait_up(0, &[3]).await;
    cluster.wait_up(2, &[1]).await;
    // Node 1's status and metrics say so.
    let peer_up = |node: &ServerHandle| -> Vec<(u16, Option<bool>)> {
        node.status()
            .relayed
            .iter()
            .map(|r| (r.node, r.peer_link_up))
            .collect()
    };
    assert_eq!(
        peer_up(cluster.node(0)),
        [(2, Some(false)), (3, Some(true))]
    );
    let st = cluster.node(0).status();
    assert!(st
        .to_text()
        .contains("node 2: 0.0 MiB upstream, 0.0 MiB downstream; peer link DOWN"));
    assert!(st
        .to_prometheus()
        .contains("wanmux_peer_link_up{node=\"2\"} 0"));

    // Back on the same cluster address, as a new process would be.
    let again = wanmux_server::start(cluster.configs[1].clone())
        .await
        .expect("node 2 starts again");
    let new = again.instance().expect("a cluster node");
    assert_ne!(new, old);
    cluster.nodes[1] = Some(again);
    cluster.wait_full_mesh().await;
    assert_eq!(peer_up(cluster.node(0)), [(2, Some(true)), (3, Some(true))]);
    assert_eq!(cluster.node(0).peer_instance(2), Some(new));
    assert_eq!(cluster.node(2).peer_instance(2), Some(new));
    // Node 1 and node 3 each logged it.
    let restarted = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("peer restarted") && l.contains("peer=2"))
        .count();
    assert_eq!(restarted, 2, "{:#?}", logs.lines());
}

#[tokio::test]
async fn a_silent_peer_link_times_out_and_is_dialled_again() {
    let logs = LogCapture::start();
    // Node 1 reaches node 2 through a relay that can blackhole the link.
    let mut cluster = Cluster::configs(2, |_, _| {});
    let relay = Relay::start(cluster.specs[1].cluster, Shape::default())
        .await
        .expect("relay starts");
    if let Some(c) = &mut cluster.configs[0].cluster {
        c.peers[0].addr = relay.addr().into();
    }
    let cluster = cluster.start().await;
    cluster.wait_full_mesh().await;

    let silenced = std::time::Instant::now();
    relay.blackhole(Links::One(0));
    // Node 1 finds it dead by its pings (the sockets stay open), within the documented bound
    // of 5 s.
    cluster.wait_up(0, &[]).await;
    assert!(
        silenced.elapsed() < Duration::from_secs(6),
        "{:?}",
        silenced.elapsed()
    );
    logs.wait_for(
        &["peer{id=2", "peer link down", "no answer to pings"],
        LIMIT,
    )
    .await;
    // Node 2 too, or, where node 1's next link reached it first (its pings' phase differs by
    // up to a second), by that link taking its place.
    let node2 = logs.wait_for(&["peer{id=1", "peer link down"], LIMIT).await;
    assert!(
        node2.contains("no answer to pings") || node2.contains("closed here"),
        "{node2}"
    );
    // Node 1 dials again; the relay's next link forwards.
    cluster.wait_full_mesh().await;
    assert!(relay.accepted() >= 2);
}

#[tokio::test]
async fn peers_that_are_not_who_they_claim_are_refused() {
    let logs = LogCapture::start();
    let cluster = Cluster::configs(3, |_, _| {}).start().await;
    cluster.wait_full_mesh().await;
    let node3 = cluster.specs[2].cluster;

    // Node 1's key claiming to be node 2: the node id does not fit the key's [[peer]] entry.
    let hello = PeerHello {
        node_id: 2,
        instance: 1,
    };
    let refused = dial_peer(node3, &cluster.peer_auth(0, 2), hello).await;
    assert!(refused.is_err(), "{refused:?}");
    logs.wait_for(
        &["WARN", "peer link refused", "configured=1", "claimed=2"],
        LIMIT,
    )
    .await;

    // Node 3's key dialling node 2: the higher id dialled.
    let hello = PeerHello {
        node_id: 3,
        instance: 1,
    };
    let refused = dial_peer(cluster.specs[1].cluster, &cluster.peer_auth(2, 1), hello).await;
    assert!(refused.is_err(), "{refused:?}");
    logs.wait_for(&["WARN", "peer link refused", "lower id dials"], LIMIT)
        .await;

    // A key no node lists: refused, one info line (a stranger must not fill the logs).
    let stranger = ClientAuth::Static {
        local: generate_keypair().0,
        server: cluster.specs[2].public_key,
        psk: None,
    };
    let hello = PeerHello {
        node_id: 1,
        instance: 1,
    };
    assert!(dial_peer(node3, &stranger, hello).await.is_err());
    let line = logs
        .wait_for(
            &[
                "did not become a peer link",
                "not one of the configured peers",
            ],
            LIMIT,
        )
        .await;
    assert!(line.contains("INFO"), "{line}");

    // A PSK the cluster does not have.
    let with_psk = ClientAuth::Static {
        local: cluster.specs[0].private_key.clone(),
        server: cluster.specs[2].public_key,
        psk: Some(wanmux_core::keys::Psk::generate()),
    };
    assert!(dial_peer(node3, &with_psk, hello).await.is_err());

    // None of it disturbed the mesh.
    cluster.wait_full_mesh().await;
}

#[tokio::test]
async fn a_wrong_pinned_key_or_node_id_keeps_the_link_down() {
    let logs = LogCapture::start();
    // Node 1 pins a key for node 2 that is not node 2's, and node 3 is listed under id 4 by
    // node 2 (and node 3 says it is node 3).
    let cluster = Cluster::configs(3, |_, configs| {
        let wrong = generate_keypair().1;
        let c1 = configs[0].cluster.as_mut().expect("cluster");
        c1.peers[0].public_key = wrong;
        let c2 = configs[1].cluster.as_mut().expect("cluster");
        let p3 = c2
            .peers
            .iter_mut()
            .find(|p| p.id.get() == 3)
            .expect("peer 3");
        p3.id = std::num::NonZeroU16::new(4).expect("non-zero");
    })
    .start()
    .await;
    // Node 1 still reaches node 3.
    cluster.wait_up(0, &[3]).await;
    // Node 2 cannot open node 1's message 1 (it was made for another key) and hangs up.
    let line = logs
        .wait_for(&["WARN", "peer link dial failed", "peer=2"], LIMIT)
        .await;
    assert!(line.contains("refused this node"), "{line}");
    logs.wait_for(
        &["did not become a peer link", "message 1 did not decrypt"],
        LIMIT,
    )
    .await;
    let line = logs
        .wait_for(&["WARN", "peer link dial failed", "peer=4"], LIMIT)
        .await;
    assert!(line.contains("node id mismatch"), "{line}");
    // Node 3 accepted node 2 (whose entry there is right), but node 2 drops every link that
    // answers as node 3 where it expects node 4. Neither link stays up on node 2.
    assert_eq!(cluster.node(1).peers_up(), Vec::<u16>::new());
    assert!(!cluster.node(0).peers_up().contains(&2));
}

#[tokio::test]
async fn client_keys_never_reach_the_cluster_listener_nor_peer_keys_the_client_listener() {
    let logs = LogCapture::start();
    let cluster = Cluster::configs(2, |_, _| {}).start().await;
    cluster.wait_full_mesh().await;
    let node2 = cluster.node(1);
    let cluster_addr = node2.cluster_addr().expect("cluster");
    let client_addr = node2.local_addr();
    let client = ClientAuth::Static {
        local: cluster.client.0.clone(),
        server: cluster.specs[1].public_key,
        psk: None,
    };

    // The client key works where it belongs...
    dial_client(client_addr, &client)
        .await
        .expect("the client key is allowed on the client listener");
    // ...and nowhere else: neither with a client hello nor with a peer hello.
    assert!(dial_client(cluster_addr, &client).await.is_err());
    let hello = PeerHello {
        node_id: 1,
        instance: 7,
    };
    assert!(dial_peer(cluster_addr, &client, hello).await.is_err());

    // The peer key of node 1, which node 2 accepts on its cluster listener, is refused on the
    // client listener, with either hello.
    let peer = cluster.peer_auth(0, 1);
    assert!(dial_client(client_addr, &peer).await.is_err());
    assert!(dial_peer(client_addr, &peer, hello).await.is_err());
    let lines = logs.lines();
    let refused = |what: &str, reason: &str| {
        lines
            .iter()
            .filter(|l| l.contains(what) && l.contains(reason))
            .count()
    };
    // Each listener logs its kind of refusal once; a second refusal of a kind within the
    // minute is counted, not logged again (`server/src/refused.rs`).
    assert_eq!(
        refused(
            "did not become a peer link",
            "not one of the configured peers"
        ),
        1,
        "{lines:#?}"
    );
    assert_eq!(node2.status().handshake_failures["peer_link"], 2);
    assert_eq!(
        refused("link refused", "is not in server.allowed_clients"),
        1,
        "{lines:#?}"
    );
}

#[tokio::test]
async fn a_relay_for_an_unbound_handle_closes_the_peer_link_with_a_protocol_error() {
    let logs = LogCapture::start();
    // Only node 2 runs; the test is node 1.
    let mut cluster = Cluster::configs(2, |_, _| {});
    cluster.configs.remove(0);
    let cluster = cluster.start().await;
    let node2 = cluster.specs[1].cluster;
    let hello = PeerHello {
        node_id: 1,
        instance: 9,
    };
    let (mut rd, mut wr, reply) = dial_peer(node2, &cluster.peer_auth(0, 1), hello)
        .await
        .expect("node 1's key and id are accepted");
    assert_eq!(reply.node_id, 2);
    assert_eq!(Some(reply.instance), cluster.node(0).instance());
    cluster.wait_up(0, &[1]).await;

    // Pings are answered.
    let mut msg = BytesMut::new();
    PeerFrame::Ping(77).encode(&mut msg);
    wr.send(&msg).await.expect("send");
    let mut ponged = false;
    while !ponged {
        let mut m = rd.recv().await.expect("recv").expect("a message");
        while let Some(f) = PeerFrame::decode(&mut m).expect("valid frames") {
            ponged |= f == PeerFrame::Pong(77);
        }
    }

    // A RELAY for a handle that was never bound closes the link, and says why.
    let mut msg = BytesMut::new();
    PeerFrame::Relay {
        handle: Handle(1),
        via: Via(1),
        epoch: 0,
        down: false,
        frames: bytes::Bytes::from_static(&[0x01, 0, 0, 0, 0, 0, 0, 0, 1]),
    }
    .encode(&mut msg);
    wr.send(&msg).await.expect("send");
    // Node 2's pings may come first; then the end of the link.
    while let Ok(Some(_)) = rd.recv().await {}
    cluster.wait_up(0, &[]).await;
    logs.wait_for(
        &[
            "WARN",
            "peer link down",
            "RELAY for a handle that was never bound",
        ],
        LIMIT,
    )
    .await;

    // Malformed bytes close it too.
    let (_rd, mut wr, _) = dial_peer(node2, &cluster.peer_auth(0, 1), hello)
        .await
        .expect("accepted again");
    cluster.wait_up(0, &[1]).await;
    wr.send(&[0x11, 0, 0]).await.expect("send");
    cluster.wait_up(0, &[]).await;
    logs.wait_for(&["peer link down", "not allowed on a peer link"], LIMIT)
        .await;
}

#[tokio::test]
async fn the_cluster_listener_names_its_key_when_it_cannot_bind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut cluster = Cluster::configs(2, |_, _| {});
    let mut config = cluster.configs.remove(0);
    config.cluster.as_mut().expect("cluster").listen = taken.local_addr().expect("addr");
    let err = wanmux_server::start(config)
        .await
        .expect_err("address in use");
    let text = err.to_string();
    assert!(text.contains("cluster.listen"), "{text}");
    assert!(
        text.contains(&taken.local_addr().expect("addr").to_string()),
        "{text}"
    );
}

#[tokio::test]
async fn a_cluster_psk_is_needed_on_both_ends() {
    let logs = LogCapture::start();
    let psk = wanmux_core::keys::Psk::generate();
    // Nodes 1 and 2 share a PSK; node 3 has another one.
    let cluster = Cluster::configs(3, |_, configs| {
        for (i, c) in configs.iter_mut().enumerate() {
            let other = wanmux_core::keys::Psk::generate();
            c.cluster.as_mut().expect("cluster").psk =
                Some(if i < 2 { psk.clone() } else { other });
        }
    })
    .start()
    .await;
    cluster.wait_up(0, &[2]).await;
    cluster.wait_up(1, &[1]).await;
    // Node 3 opens message 1 (the PSK comes in at message 2), and the dialler cannot open the
    // reply: nodes 1 and 2 both warn, and node 3 stays out.
    let warned = |logs: &LogCapture| {
        logs.lines()
            .iter()
            .filter(|l| l.contains("WARN") && l.contains("peer=3") && l.contains("PSKs differ"))
            .count()
    };
    let deadline = std::time::Instant::now() + LIMIT;
    while warned(&logs) < 2 {
        assert!(std::time::Instant::now() < deadline, "{:#?}", logs.lines());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(cluster.node(2).peers_up(), Vec::<u16>::new());
}

#[tokio::test]
async fn garbage_on_the_cluster_listener_costs_one_info_line_a_minute() {
    use tokio::io::AsyncWriteExt;
    let logs = LogCapture::start();
    let cluster = Cluster::configs(2, |_, _| {}).start().await;
    cluster.wait_full_mesh().await;
    let addr = cluster.node(1).cluster_addr().expect("cluster");
    // A mode byte that names no pattern; then a handshake length over the cap.
    for bytes in [&[0xff, 0, 4, 1, 2, 3, 4][..], &[0x11, 0xff, 0xff, 0][..]] {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(bytes).await.expect("write");
        let mut buf = [0u8; 16];
        // Refused: the node closes without a reply.
        let n = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf)
            .await
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    logs.wait_for(
        &[
            "INFO",
            "did not become a peer link",
            "unknown handshake pattern",
        ],
        LIMIT,
    )
    .await;
    // The second is counted, not logged: a stranger makes the node write one line a minute.
    let node = cluster.node(1);
    assert!(eventually(LIMIT, || node.status().handshake_failures["peer_link"] == 2).await);
    let lines = logs.lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("INFO") && l.contains("did not become a peer link"))
            .count(),
        1,
        "{lines:#?}"
    );
    cluster.wait_full_mesh().await;
}
