//! Every example config in `examples/` must load. Files named `server*.toml` are server
//! configs, `client*.toml` client configs; any other `.toml` there fails the test so that a new
//! example cannot be skipped by accident.

use std::path::PathBuf;
use wanmux_config::{ClientAuth, ClientConfig, ServerAuth, ServerConfig};

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[test]
fn every_example_config_loads() {
    let mut found = 0;
    let mut entries: Vec<_> = std::fs::read_dir(examples_dir())
        .expect("examples/ exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("server") {
            ServerConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        } else if name.starts_with("client") {
            ClientConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        } else {
            panic!("{name}: example configs must be named server*.toml or client*.toml");
        }
        found += 1;
    }
    assert!(found >= 4, "found only {found} example configs");
}

/// The static-key examples are a working pair: the client pins the key the server's key file
/// holds, and the server allows the client's key. Public keys cannot be derived here (no X25519
/// in this crate), so the pairing is checked against the values the examples state in comments.
#[test]
fn static_examples_match_each_other() {
    let s = ServerConfig::load(examples_dir().join("server.toml")).unwrap();
    let c = ClientConfig::load(examples_dir().join("client.toml")).unwrap();
    let ServerAuth::StaticKey {
        allowed_clients, ..
    } = &s.auth
    else {
        panic!("server.toml is not static-key mode")
    };
    let ClientAuth::StaticKey { nodes, .. } = &c.auth else {
        panic!("client.toml is not static-key mode")
    };
    assert_eq!(nodes[0].node.id, s.node_id);
    let server_text = std::fs::read_to_string(examples_dir().join("server.toml")).unwrap();
    assert!(
        server_text.contains(&nodes[0].public_key.to_base64()),
        "server.toml does not state the pinned key"
    );
    let client_key_line = allowed_clients.iter().next().unwrap().to_base64();
    assert_eq!(
        client_key_line,
        "wOGjwz3am2VQNpI6W7VTJY6i9D2ASX4mv4TGSgCoXxE="
    );
    let services: Vec<_> = s.services.iter().map(|s| s.name.clone()).collect();
    assert!(
        c.maps.iter().all(|m| services.contains(&m.service)),
        "client.toml maps a service server.toml lacks"
    );

    let sp = ServerConfig::load(examples_dir().join("server-psk.toml")).unwrap();
    let cp = ClientConfig::load(examples_dir().join("client-psk.toml")).unwrap();
    let (ServerAuth::PskOnly { psk: a }, ClientAuth::PskOnly { psk: b, .. }) = (&sp.auth, &cp.auth)
    else {
        panic!("psk examples are not PSK-only mode")
    };
    assert_eq!(a, b);
}

/// The cluster examples are a working cluster: every node lists every other with the public
/// key of that node's key file and its cluster address, and all share one cluster PSK.
#[test]
fn cluster_examples_describe_one_cluster() {
    let nodes: Vec<ServerConfig> = (1..=3)
        .map(|n| {
            let path = examples_dir().join(format!("server-cluster-{n}.toml"));
            ServerConfig::load(&path).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    for node in &nodes {
        let cluster = node.cluster.as_ref().expect("a cluster node");
        assert_eq!(cluster.peers.len(), nodes.len() - 1);
        assert_eq!(cluster.psk, nodes[0].cluster.as_ref().unwrap().psk);
        assert!(cluster.psk.is_some());
        for peer in &cluster.peers {
            let other = nodes
                .iter()
                .find(|o| o.node_id == peer.id)
                .expect("the peer is one of the example nodes");
            let ServerAuth::StaticKey { private_key, .. } = &other.auth else {
                panic!("cluster nodes use static keys");
            };
            assert_eq!(
                peer.public_key,
                private_key.public_key(),
                "peer {}",
                peer.id
            );
            let listen = other.cluster.as_ref().unwrap().listen;
            assert_eq!(peer.addr.socket_addr(), Some(listen), "peer {}", peer.id);
        }
    }
}

/// client-cluster.toml pins, for each node, the key the cluster's own examples give that node.
#[test]
fn client_cluster_example_pins_the_cluster_nodes_keys() {
    let c = ClientConfig::load(examples_dir().join("client-cluster.toml")).unwrap();
    let ClientAuth::StaticKey { nodes, .. } = &c.auth else {
        panic!("client-cluster.toml is not static-key mode")
    };
    assert_eq!(nodes.len(), 3);
    for n in nodes {
        let stated = (1..=3)
            .filter_map(|i| {
                ServerConfig::load(examples_dir().join(format!("server-cluster-{i}.toml"))).ok()
            })
            .filter_map(|s| s.cluster)
            .flat_map(|cl| cl.peers)
            .find(|p| p.id == n.node.id)
            .map(|p| p.public_key);
        assert_eq!(stated, Some(n.public_key), "node {}", n.node.id);
    }
}
