//! The cluster with real node processes: up to five `wanmux-server` processes on loopback and one
//! client (in-process) that dials all of them under one session id, each stream owned by one
//! node, data compared by hash in both directions. A node killed with SIGKILL resets only the
//! streams it owned (within the client's `session_grace_ms`), and comes back to carry new ones.
//! Nodes in a mesh (`[cluster]`, `[[peer]]`) relay: with `spread = "stripe"` every node carries
//! part of every long stream, both ways; with `"pin"` only its owner does; a non-owner killed
//! mid-transfer loses nothing.

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wanmux_config::{ClientAuth, ClientConfig, Node, OwnerPolicy, PinnedNode, Spread};
use wanmux_core::keys::generate_keypair;
use wanmux_tests::harness::{
    app_server, configs, eventually, free_port, paused_transfer, transfer, within, AppServer, Auth,
    ClientResult,
};
use wanmux_tests::mesh::{
    check_transfers as check, compare_at_app, start_transfers, wait_for_sub_links,
};
use wanmux_tests::process::Daemon;

/// A node process and the config file it runs.
struct NodeProcess {
    config: PathBuf,
    daemon: Daemon,
}

impl NodeProcess {
    fn spawn(dir: &Path, id: u16, addr: SocketAddr, psk: &str, app: SocketAddr) -> NodeProcess {
        let config = dir.join(format!("node{id}.toml"));
        // A control socket of its own: a node killed by SIGKILL leaves its socket file behind,
        // which is better left in the test's directory than in /run/wanmux.
        let text = format!(
            "[server]\nlisten = \"{addr}\"\nnode_id = {id}\npsk = \"{psk}\"\n\n\
             [[service]]\nname = \"{}\"\ntarget = \"{app}\"\n\n\
             [control]\nsocket = \"node{id}.sock\"\n",
            wanmux_tests::harness::SERVICE
        );
        std::fs::write(&config, text).expect("write node config");
        let daemon = start(&config);
        NodeProcess { config, daemon }
    }

    /// A node of a mesh: static keys, `[cluster]` with every other node of `specs` as a peer.
    fn spawn_meshed(
        dir: &Path,
        specs: &[MeshSpec],
        i: usize,
        client: &str,
        app: SocketAddr,
    ) -> NodeProcess {
        let me = &specs[i];
        let config = dir.join(format!("node{}.toml", me.id));
        let mut text = format!(
            "[server]\nlisten = \"{}\"\nnode_id = {}\nprivate_key = \"{}\"\n\
             allowed_clients = [\"{client}\"]\n\n[cluster]\nlisten = \"{}\"\n\n",
            me.addr, me.id, me.private_key, me.cluster
        );
        for p in specs.iter().filter(|p| p.id != me.id) {
            text += &format!(
                "[[peer]]\nid = {}\naddr = \"{}\"\npublic_key = \"{}\"\n\n",
                p.id, p.cluster, p.public_key
            );
        }
        text += &format!(
            "[[service]]\nname = \"{}\"\ntarget = \"{app}\"\n\n\
             [control]\nsocket = \"node{}.sock\"\n",
            wanmux_tests::harness::SERVICE,
            me.id
        );
        std::fs::write(&config, text).expect("write node config");
        let daemon = start(&config);
        NodeProcess { config, daemon }
    }

    fn kill(&mut self) {
        self.daemon.kill();
    }

    fn restart(&mut self) {
        self.daemon = start(&self.config);
    }
}

fn start(config: &Path) -> Daemon {
    start_logging_to(config, Stdio::inherit())
}

/// A node process logging its warnings to `stderr`.
fn start_logging_to(config: &Path, stderr: Stdio) -> Daemon {
    Daemon::spawn(
        Command::new(env!("CARGO_BIN_EXE_wanmux-server"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr),
    )
}

/// `n` node processes, an application server behind them, and a client config that lists every
/// node (ids 1..=n) with `owner`.
async fn cluster(
    name: &str,
    n: u16,
    owner: OwnerPolicy,
) -> (Vec<NodeProcess>, AppServer, ClientConfig) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let app = app_server().await;
    let (_, mut client) = configs(Auth::Psk, app.addr, 2);
    let psk = match &client.auth {
        ClientAuth::PskOnly { psk, .. } => psk.to_base64(),
        ClientAuth::StaticKey { .. } | ClientAuth::Pki { .. } => unreachable!("PSK-only configs"),
    };
    let mut nodes = Vec::new();
    let mut listed = Vec::new();
    for id in 1..=n {
        let addr = free_port();
        nodes.push(NodeProcess::spawn(&dir, id, addr, &psk, app.addr));
        listed.push(Node {
            id: NonZeroU16::new(id).expect("non-zero"),
            addr: addr.into(),
        });
    }
    match &mut client.auth {
        ClientAuth::PskOnly { nodes, .. } => *nodes = listed,
        ClientAuth::StaticKey { .. } | ClientAuth::Pki { .. } => unreachable!("PSK-only configs"),
    }
    client.owner = owner;
    client.session_grace = Duration::from_secs(2);
    (nodes, app, client)
}

/// One node of a mesh: its id, keys (base64) and addresses.
struct MeshSpec {
    id: u16,
    private_key: String,
    public_key: String,
    addr: SocketAddr,
    cluster: SocketAddr,
}

/// `n` node processes in one mesh, an application server behind them, and a client config (with
/// its static key) that lists every node with `owner` and `spread`.
async fn mesh_cluster(
    name: &str,
    n: u16,
    owner: OwnerPolicy,
    spread: Spread,
) -> (Vec<NodeProcess>, AppServer, ClientConfig) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let app = app_server().await;
    let (_, mut client) = configs(Auth::Static { psk: false }, app.addr, 2);
    let client_key = match &client.auth {
        ClientAuth::StaticKey { private_key, .. } => private_key.public_key().to_base64(),
        ClientAuth::PskOnly { .. } | ClientAuth::Pki { .. } => unreachable!("static-key configs"),
    };
    let specs: Vec<MeshSpec> = (1..=n)
        .map(|id| {
            let (private_key, public_key) = generate_keypair();
            MeshSpec {
                id,
                private_key: private_key.to_base64(),
                public_key: public_key.to_base64(),
                addr: free_port(),
                cluster: free_port(),
            }
        })
        .collect();
    let nodes = (0..specs.len())
        .map(|i| NodeProcess::spawn_meshed(&dir, &specs, i, &client_key, app.addr))
        .collect();
    let listed = specs
        .iter()
        .map(|s| PinnedNode {
            node: Node {
                id: NonZeroU16::new(s.id).expect("non-zero"),
                addr: s.addr.into(),
            },
            public_key: s.public_key.parse().expect("a public key"),
        })
        .collect();
    match &mut client.auth {
        ClientAuth::StaticKey { nodes, .. } => *nodes = listed,
        ClientAuth::PskOnly { .. } | ClientAuth::Pki { .. } => unreachable!("static-key configs"),
    }
    for m in &mut client.maps {
        m.spread = spread;
    }
    client.owner = owner;
    client.session_grace = Duration::from_secs(2);
    (nodes, app, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_spread_over_every_node_and_arrive_intact() {
    within(Duration::from_secs(120), async {
        let (_nodes, mut app, config) =
            cluster("cluster-spread", 5, OwnerPolicy::LeastLoaded).await;
        let client = wanmux_client::start(config).await.expect("client starts");
        client.wait_for_links(10).await;
        let (up, down) = (256 * 1024, 512 * 1024);
        let tasks = start_transfers(client.first_addr(), 200, up, down);
        // Every node owns a share of the streams while they run.
        let mut most = [0usize; 5];
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && most.contains(&0) {
            for (i, n) in client.nodes().iter().enumerate() {
                most[i] = most[i].max(n.streams);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!most.contains(&0), "a node owned no stream: {most:?}");
        assert_eq!(
            check(&mut app, tasks, up, down).await,
            0,
            "failed transfers"
        );
        // Each node carried about a fifth of the bytes (200 streams, least loaded).
        let nodes = client.nodes();
        let total: u64 = nodes.iter().map(|n| n.bytes_received).sum();
        for n in &nodes {
            assert!(
                n.bytes_received > total / 10,
                "node {} carried {} of {total} bytes",
                n.id,
                n.bytes_received
            );
        }
        client.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_first_puts_every_stream_on_the_first_live_node() {
    within(Duration::from_secs(120), async {
        let (mut nodes, mut app, config) = cluster("cluster-first", 2, OwnerPolicy::First).await;
        let client = wanmux_client::start(config).await.expect("client starts");
        client.wait_for_links(4).await;
        let tasks = start_transfers(client.first_addr(), 8, 64 * 1024, 64 * 1024);
        assert_eq!(check(&mut app, tasks, 64 * 1024, 64 * 1024).await, 0);
        let carried: Vec<u64> = client.nodes().iter().map(|n| n.bytes_received).collect();
        assert!(
            carried[0] > 8 * 64 * 1024 && carried[1] < 64 * 1024,
            "node 1 owns every stream: {carried:?}"
        );
        // With node 1 gone, node 2 is the first live node.
        nodes[0].kill();
        assert!(
            eventually(Duration::from_secs(10), || client.nodes()[0].links == 0).await,
            "the client saw node 1's links go"
        );
        let before = client.nodes()[1].bytes_received;
        let tasks = start_transfers(client.first_addr(), 4, 64 * 1024, 64 * 1024);
        assert_eq!(check(&mut app, tasks, 64 * 1024, 64 * 1024).await, 0);
        assert!(client.nodes()[1].bytes_received >= before + 4 * 64 * 1024);
        client.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_resets_only_its_streams_and_carries_again_once_back() {
    within(Duration::from_secs(120), async {
        let (mut nodes, mut app, config) =
            cluster("cluster-kill", 3, OwnerPolicy::LeastLoaded).await;
        let grace = config.session_grace;
        let client = wanmux_client::start(config).await.expect("client starts");
        client.wait_for_links(6).await;
        // 12 transfers, opened one after the other (so 4 per node), each paused part way in
        // both directions.
        let (up, down) = (1 << 20, 4 << 20);
        let mut tasks = Vec::new();
        let mut gates = Vec::new();
        for seed in 0..12 {
            let (task, gate) =
                paused_transfer(client.first_addr(), up, down, seed, 256 * 1024).await;
            tasks.push(task);
            gates.push(gate);
        }
        let owned: Vec<usize> = client.nodes().iter().map(|n| n.streams).collect();
        assert_eq!(owned, [4, 4, 4], "streams spread over the nodes");
        nodes[1].kill();
        let killed = Instant::now();
        // Its streams end on the client within the grace (plus the time to notice the links
        // are gone), the others go on.
        assert!(
            eventually(grace + Duration::from_secs(8), || client.nodes()[1].streams
                == 0)
            .await,
            "node 2's streams still open {:?} after it died",
            killed.elapsed()
        );
        assert_eq!(client.nodes()[0].streams + client.nodes()[2].streams, 8);
        // ... and their tasks have reset the applications' sockets (the engine forgets a stream
        // first): an upload resumed before its socket was reset could land in the kernel's
        // buffers and, with the download and its FIN there already, read as complete.
        assert!(
            eventually(Duration::from_secs(5), || client.stream_tasks() == 8).await,
            "stream tasks: {}",
            client.stream_tasks()
        );
        gates.iter().for_each(|g| g.open());
        let failed = check(&mut app, tasks, up, down).await;
        assert_eq!(
            failed, owned[1],
            "exactly the dead owner's transfers failed"
        );
        // Back: node 2 carries new streams again.
        nodes[1].restart();
        assert!(
            eventually(Duration::from_secs(15), || client.nodes()[1].links == 2).await,
            "node 2's links came back: {:?}",
            client.nodes()
        );
        let tasks = start_transfers(client.first_addr(), 6, 64 * 1024, 64 * 1024);
        assert_eq!(check(&mut app, tasks, 64 * 1024, 64 * 1024).await, 0);
        assert!(
            client.nodes()[1].bytes_received > 64 * 1024,
            "node 2 carries traffic again: {:?}",
            client.nodes()
        );
        client.shutdown();
        drop(nodes);
    })
    .await;
}

/// An owner killed for good in a mesh: the client's links to it die, and the sub-links through
/// the other nodes to it come and go (each added again once its carrier answers, then dropped
/// when the relay reports it has no peer link to the owner). That churn is no sign of life: the
/// owner's streams are reset within the grace, as with no mesh, and the others' go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_of_a_mesh_resets_its_streams_within_the_grace() {
    within(Duration::from_secs(120), async {
        let (mut nodes, mut app, config) =
            mesh_cluster("cluster-mesh-owner", 3, OwnerPolicy::First, Spread::Stripe).await;
        let grace = config.session_grace;
        let client = wanmux_client::start(config).await.expect("client starts");
        client.wait_for_links(6).await;
        wait_for_sub_links(&client, 3, 1).await;
        // Node 1 owns every stream; each is paused part way in both directions.
        let (up, down) = (1 << 20, 4 << 20);
        let mut tasks = Vec::new();
        let mut gates = Vec::new();
        for seed in 0..4 {
            let (task, gate) =
                paused_transfer(client.first_addr(), up, down, seed, 256 * 1024).await;
            tasks.push(task);
            gates.push(gate);
        }
        assert_eq!(client.nodes()[0].streams, 4, "node 1 owns every stream");
        nodes[0].kill();
        let killed = Instant::now();
        assert!(
            eventually(grace + Duration::from_secs(8), || client.nodes()[0].streams
                == 0)
            .await,
            "node 1's streams still open {:?} after it died: {:?}",
            killed.elapsed(),
            client.nodes()
        );
        // Their tasks have reset the applications' sockets (see the test above).
        assert!(
            eventually(Duration::from_secs(5), || client.stream_tasks() == 0).await,
            "stream tasks: {}",
            client.stream_tasks()
        );
        gates.iter().for_each(|g| g.open());
        assert_eq!(
            check(&mut app, tasks, up, down).await,
            4,
            "every transfer of the dead owner failed"
        );
        // New connections go to the nodes still up, striped over their links. (Seeds of their
        // own: the application server may yet report some of the dead owner's connections.)
        let mut done = std::collections::HashMap::new();
        for seed in 100..104 {
            let r = transfer(client.first_addr(), 64 * 1024, 64 * 1024, seed)
                .await
                .expect("a new connection completes");
            done.insert(seed, r);
        }
        compare_at_app(&mut app, done).await;
        client.shutdown();
        drop(nodes);
    })
    .await;
}

/// A transfer under way: its seed, its sizes up and down, its task.
type Transfer = (
    u64,
    u64,
    u64,
    tokio::task::JoinHandle<std::io::Result<ClientResult>>,
);

/// Every transfer completes with its sizes, and each end received what the other sent (hashes).
async fn check_each(app: &mut AppServer, tasks: Vec<Transfer>) {
    let mut done = std::collections::HashMap::new();
    for (seed, up, down, t) in tasks {
        let r = t.await.expect("transfer task").expect("transfer completes");
        assert_eq!((r.sent.bytes, r.received.bytes), (up, down), "seed {seed}");
        done.insert(seed, r);
    }
    compare_at_app(app, done).await;
}

/// Whether every node carried at least `min` bytes of every other node's streams in both
/// directions (as the client counts the sections on each node's links); the pairs that did not.
fn short_pairs(
    client: &wanmux_client::ClientHandle,
    n: u16,
    min: u64,
) -> Vec<(u16, u16, u64, u64)> {
    let mut short = Vec::new();
    for owner in 1..=n {
        for via in (1..=n).filter(|&v| v != owner) {
            let (sent, received) = client.relayed(via, owner);
            if sent < min || received < min {
                short.push((via, owner, sent, received));
            }
        }
    }
    short
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_carries_every_long_stream_over_every_node_both_ways() {
    within(Duration::from_secs(180), async {
        let (_nodes, mut app, config) = mesh_cluster(
            "cluster-stripe",
            5,
            OwnerPolicy::LeastLoaded,
            Spread::Stripe,
        )
        .await;
        let client = wanmux_client::start(config).await.expect("client starts");
        client.wait_for_links(10).await;
        wait_for_sub_links(&client, 5, 1).await;
        // Five long streams, opened one after the other so that each node owns one (least
        // loaded), then 195 short ones beside them.
        let (long_up, long_down) = (24 << 20, 24 << 20);
        let mut long = Vec::new();
        for seed in 0..5 {
            let (task, gate) =
                paused_transfer(client.first_addr(), long_up, long_down, 1000 + seed, 1).await;
            long.push((task, gate));
        }
        let owned: Vec<usize> = client.nodes().iter().map(|n| n.streams).collect();
        assert_eq!(owned, [1, 1, 1, 1, 1], "one long stream per node");
        let (up, down) = (256 * 1024, 512 * 1024);
        let short = start_transfers(client.first_addr(), 195, up, down);
        let mut tasks: Vec<Transfer> = short
            .into_iter()
            .enumerate()
            .map(|(seed, t)| (seed as u64, up, down, t))
            .collect();
        let mut gates = Vec::new();
        for (seed, (task, gate)) in (1000..).zip(long) {
            tasks.push((seed, long_up, long_down, task));
            gates.push(gate);
        }
        gates.iter().for_each(|g| g.open());
        check_each(&mut app, tasks).await;
        let mut matrix = String::new();
        for owner in 1..=5u16 {
            for via in 1..=5u16 {
                let (s, r) = client.relayed(via, owner);
                matrix += &format!(
                    " {:>5.1}/{:<5.1}",
                    s as f64 / 1048576.0,
                    r as f64 / 1048576.0
                );
            }
            matrix += "\n";
        }
        eprintln!("MiB relayed up/down, a row per owner, a column per node:\n{matrix}");
        // Every node carried part of every owner's long stream: at least 256 KiB (a hundredth
        // of it; a sub-link that carried only its pings and windows has a few KiB) up or down.
        // And every node relayed at least 1 MiB each way in all. How much each path carries is
        // writable-first's choice and depends on how fast each drains on this shared machine:
        // one node's share of one owner's streams in one direction is sometimes near nothing
        // for a run this short, so the test does not ask for both directions of every pair.
        let short: Vec<_> = short_pairs(&client, 5, 256 << 10)
            .into_iter()
            .filter(|&(_, _, s, r)| s < 256 << 10 && r < 256 << 10)
            .collect();
        assert!(
            short.is_empty(),
            "(via, owner, sent, received) below 256 KiB both ways: {short:?}\n{matrix}"
        );
        for n in client.nodes() {
            assert!(
                n.relayed_sent > 1 << 20 && n.relayed_received > 1 << 20,
                "node {} relayed {} up and {} down\n{matrix}",
                n.id,
                n.relayed_sent,
                n.relayed_received
            );
        }
        client.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_keeps_every_stream_on_its_owners_links() {
    within(Duration::from_secs(180), async {
        let (_nodes, mut app, config) =
            mesh_cluster("cluster-pin", 5, OwnerPolicy::LeastLoaded, Spread::Pin).await;
        let client = wanmux_client::start(config).await.expect("client starts");
        client.wait_for_links(10).await;
        let (up, down) = (256 * 1024, 512 * 1024);
        let tasks = start_transfers(client.first_addr(), 50, up, down);
        assert_eq!(check(&mut app, tasks, up, down).await, 0);
        let owned: u64 = client.nodes().iter().map(|n| n.bytes_received).sum();
        assert!(
            owned >= 50 * down,
            "the owners carried the downloads: {owned}"
        );
        // Sub-links carry their pings, pongs and window updates, never the data of a pinned
        // stream: far below 1% of the bytes moved.
        let all = 50 * (up + down);
        let mut relayed = 0;
        for owner in 1..=5 {
            for via in (1..=5).filter(|&v| v != owner) {
                let (s, r) = client.relayed(via, owner);
                relayed += s + r;
            }
        }
        assert!(relayed < all / 100, "{relayed} of {all} bytes relayed");
        client.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_non_owner_loses_no_byte() {
    within(Duration::from_secs(180), async {
        let (mut nodes, mut app, config) =
            mesh_cluster("cluster-non-owner", 3, OwnerPolicy::First, Spread::Stripe).await;
        let client = wanmux_client::start(config).await.expect("client starts");
        client.wait_for_links(6).await;
        wait_for_sub_links(&client, 3, 1).await;
        // Node 1 owns every stream; nodes 2 and 3 relay part of each.
        let (up, down) = (16 << 20, 16 << 20);
        let tasks = start_transfers(client.first_addr(), 8, up, down);
        assert!(
            eventually(Duration::from_secs(60), || {
                let (s, r) = client.relayed(3, 1);
                s > 4 << 20 && r > 4 << 20
            })
            .await,
            "node 3 relays both ways: {:?}",
            client.relayed(3, 1)
        );
        nodes[2].kill();
        let at_kill = client.relayed(3, 1);
        assert_eq!(
            check(&mut app, tasks, up, down).await,
            0,
            "every transfer completes with its bytes intact"
        );
        // The transfers were under way through node 3 when it died, and went on without it.
        assert!(
            at_kill.0 < 8 * up && at_kill.1 < 8 * down,
            "node 3 died mid-transfer: {at_kill:?}"
        );
        let (s2, r2) = client.relayed(2, 1);
        assert!(s2 > 0 && r2 > 0, "node 2 relays too: {s2} {r2}");
        client.shutdown();
    })
    .await;
}

/// A node restarted while its peer runs dials it at once, and the link it gets carries the
/// peer's relayed frames: no peer link is closed. The mesh starts accepting and dialling only
/// once the relay is set; in the WAN lab a peer link that came up in the milliseconds between
/// the two (before that order) refused the first frame its peer relayed ("relay not supported
/// by this node") and was dialled again. On loopback the start is too quick for that window to
/// be hit reliably, so this test guards the restart as a whole, not the window alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_takes_cluster_frames_on_its_first_peer_links() {
    within(Duration::from_secs(120), async {
        let (mut nodes, mut app, config) = mesh_cluster(
            "cluster-restart-relay",
            2,
            OwnerPolicy::First,
            Spread::Stripe,
        )
        .await;
        // Node 1 again, its peer up: it dials node 2 as soon as it starts. Its warnings are read.
        nodes[0].kill();
        let mut node1 = start_logging_to(&nodes[0].config, Stdio::piped());
        let stderr = node1.take_stderr().expect("piped stderr");
        let warnings = std::thread::spawn(move || {
            use std::io::BufRead;
            std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        let client = wanmux_client::start(config).await.expect("client starts");
        client.wait_for_links(4).await;
        wait_for_sub_links(&client, 2, 1).await;
        // Node 1 owns the streams; node 2 relays part of each to it over the peer link.
        let (up, down) = (4 << 20, 4 << 20);
        let tasks = start_transfers(client.first_addr(), 4, up, down);
        assert_eq!(
            check(&mut app, tasks, up, down).await,
            0,
            "transfers intact"
        );
        let (s, r) = client.relayed(2, 1);
        assert!(s > 0 && r > 0, "node 2 relayed both ways: {s} {r}");
        client.shutdown();
        node1.terminate();
        node1.wait();
        let warnings = warnings.join().expect("stderr reader");
        let broke: Vec<_> = warnings
            .iter()
            .filter(|l| l.contains("broke the protocol"))
            .collect();
        assert!(broke.is_empty(), "node 1 closed peer links: {broke:#?}");
    })
    .await;
}
