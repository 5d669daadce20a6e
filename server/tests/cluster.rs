//! The cluster with real node processes: up to five `wanmux-server` processes on loopback and one
//! client (in-process) that dials all of them under one session id, each stream owned by one
//! node, data compared by hash in both directions. A node killed with SIGKILL resets only the
//! streams it owned (within the client's `session_grace_ms`), and comes back to carry new ones.

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wanmux_config::{ClientAuth, ClientConfig, Node, OwnerPolicy};
use wanmux_tests::harness::{
    app_server, configs, eventually, free_port, paused_transfer, transfer_on, within, AppServer,
    Auth, ClientResult,
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

    fn kill(&mut self) {
        self.daemon.kill();
    }

    fn restart(&mut self) {
        self.daemon = start(&self.config);
    }
}

fn start(config: &Path) -> Daemon {
    Daemon::spawn(
        Command::new(env!("CARGO_BIN_EXE_wanmux-server"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
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
        ClientAuth::StaticKey { .. } => unreachable!("PSK-only configs"),
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
        ClientAuth::StaticKey { .. } => unreachable!("PSK-only configs"),
    }
    client.owner = owner;
    client.session_grace = Duration::from_secs(2);
    (nodes, app, client)
}

/// Opens `count` connections through `addr` and moves `up`/`down` bytes on each at once.
fn start_transfers(
    addr: SocketAddr,
    count: u64,
    up: u64,
    down: u64,
) -> Vec<tokio::task::JoinHandle<std::io::Result<ClientResult>>> {
    let barrier = Arc::new(tokio::sync::Barrier::new(count as usize));
    (0..count)
        .map(|seed| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                barrier.wait().await;
                transfer_on(tcp, up, down, seed).await
            })
        })
        .collect()
}

/// Checks every finished transfer against what the application server saw; returns how many
/// failed (reset or cut short).
async fn check(
    app: &mut AppServer,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<ClientResult>>>,
    up: u64,
    down: u64,
) -> usize {
    let mut done = std::collections::HashMap::new();
    let mut failed = 0;
    for (seed, t) in tasks.into_iter().enumerate() {
        match t.await.expect("transfer task") {
            Ok(r) if r.sent.bytes == up && r.received.bytes == down => {
                done.insert(seed as u64, r);
            }
            other => {
                eprintln!("seed {seed} failed: {other:?}");
                failed += 1
            }
        }
    }
    while !done.is_empty() {
        let a = tokio::time::timeout(Duration::from_secs(30), app.results.recv())
            .await
            .expect("app server result in time")
            .expect("app server alive");
        // A failed connection may still end at the application server: only the completed
        // ones are compared.
        if let Some(c) = done.remove(&a.seed) {
            assert_eq!(c.sent, a.received, "connection {}: upload", a.seed);
            assert_eq!(a.sent, c.received, "connection {}: download", a.seed);
        }
    }
    failed
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
