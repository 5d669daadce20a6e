//! Clusters of server nodes on `127.0.0.1`, for tests of the node mesh: configs with a key per
//! node and every other node as a peer, and a capture of the log lines a test's nodes write.

use std::io::Write;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing_subscriber::util::SubscriberInitExt as _;
use wanmux_config::{Cluster, Peer, ServerAuth, ServerConfig, Service, ServiceName};
use wanmux_core::keys::{generate_keypair, PrivateKey, PublicKey};

/// One node's identity and addresses.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Its `server.node_id`.
    pub id: u16,
    /// Its static key.
    pub private_key: PrivateKey,
    /// The public half of `private_key`.
    pub public_key: PublicKey,
    /// Its `cluster.listen`: a port the kernel gave out on `127.0.0.1`.
    pub cluster: SocketAddr,
}

/// `n` nodes with ids 1..=n, fresh keys and cluster addresses.
pub fn node_specs(n: u16) -> Vec<NodeSpec> {
    (1..=n)
        .map(|id| {
            let (private_key, public_key) = generate_keypair();
            NodeSpec {
                id,
                private_key,
                public_key,
                cluster: crate::harness::free_port(),
            }
        })
        .collect()
}

/// The config of node `specs[i]`: client links on `127.0.0.1:0` from `client` (a client key),
/// one service, and every other node of `specs` as a peer at its cluster address.
pub fn node_config(
    specs: &[NodeSpec],
    i: usize,
    client: PublicKey,
    service: SocketAddr,
) -> ServerConfig {
    let me = &specs[i];
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        NonZeroU16::new(me.id).expect("ids start at 1"),
        ServerAuth::StaticKey {
            private_key: me.private_key.clone(),
            allowed_clients: [client].into(),
            psk: None,
        },
        vec![Service {
            name: ServiceName::new(crate::harness::SERVICE).expect("valid name"),
            target: service.into(),
        }],
    );
    config.cluster = Some(Cluster {
        listen: me.cluster,
        relay_queue: Cluster::DEFAULT_RELAY_QUEUE,
        psk: None,
        peers: specs
            .iter()
            .filter(|s| s.id != me.id)
            .map(|s| Peer {
                id: NonZeroU16::new(s.id).expect("ids start at 1"),
                addr: s.cluster.into(),
                public_key: s.public_key,
            })
            .collect(),
    });
    // Every test's clients dial from 127.0.0.1 (see `harness::configs`).
    config.limits.handshake_rate = *wanmux_config::Limits::HANDSHAKE_RATE_RANGE.end();
    config.validate().expect("a valid cluster config");
    config
}

/// The log lines (info and above, plain text) written on this thread while the capture lives.
/// With tokio's default test runtime (one thread) that is every line of the test's nodes, and
/// only theirs.
pub struct LogCapture {
    buf: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

#[derive(Clone)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Starts capturing on this thread.
    pub fn start() -> LogCapture {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(buf.clone());
        let guard = tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish()
            .set_default();
        LogCapture { buf, _guard: guard }
    }

    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.buf.lock().expect("log buffer")).into_owned();
        text.lines().map(str::to_owned).collect()
    }

    /// Waits up to `limit` for a line that contains every one of `parts`, and returns it; panics
    /// with every line seen when none came.
    pub async fn wait_for(&self, parts: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.find(parts) {
                return line;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no log line with {parts:?} within {limit:?}; lines:\n{}",
                    self.lines().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The first line that contains every one of `parts`.
    pub fn find(&self, parts: &[&str]) -> Option<String> {
        self.lines()
            .into_iter()
            .find(|l| parts.iter().all(|p| l.contains(p)))
    }
}

/// Waits until the client's engine of every node has at least `per_pair` sub-links on its links to
/// every other node of `1..=nodes`, and each pair's sub-links carried an answer back (a new
/// sub-link is pinged at once): a sub-link refused while the owner's session is being set up, or
/// while its relay's peer link to the owner is still being dialled, waits a second, and a
/// transfer started before then could miss a path altogether.
pub async fn wait_for_sub_links(client: &wanmux_client::ClientHandle, nodes: u16, per_pair: u64) {
    let ready = crate::harness::eventually(Duration::from_secs(15), || {
        (1..=nodes).all(|via| {
            (1..=nodes).filter(|&owner| owner != via).all(|owner| {
                client.sub_links(via, owner) >= per_pair && client.relayed(via, owner).1 > 0
            })
        })
    })
    .await;
    assert!(ready, "sub-links through every node");
}

/// Opens `count` connections to `addr` and, once all are open, moves `up`/`down` bytes on each
/// (seeded by its index) at once.
pub fn start_transfers(
    addr: std::net::SocketAddr,
    count: u64,
    up: u64,
    down: u64,
) -> Vec<tokio::task::JoinHandle<std::io::Result<crate::harness::ClientResult>>> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(count as usize));
    (0..count)
        .map(|seed| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                barrier.wait().await;
                crate::harness::transfer_on(tcp, up, down, seed).await
            })
        })
        .collect()
}

/// Checks every transfer of [`start_transfers`] that completed against what the application
/// server saw (hashes both ways); returns how many did not complete (reset or cut short).
pub async fn check_transfers(
    app: &mut crate::harness::AppServer,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<crate::harness::ClientResult>>>,
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
    // A failed connection may still end at the application server: only the completed ones
    // are compared.
    compare_at_app(app, done).await;
    failed
}

/// Compares each completed client transfer in `done` (by seed) with what the application
/// server saw of the same connection, hashes both ways, until every one was compared.
pub async fn compare_at_app(
    app: &mut crate::harness::AppServer,
    mut done: std::collections::HashMap<u64, crate::harness::ClientResult>,
) {
    while !done.is_empty() {
        let a = tokio::time::timeout(Duration::from_secs(30), app.results.recv())
            .await
            .expect("app server result in time")
            .expect("app server alive");
        if let Some(c) = done.remove(&a.seed) {
            assert_eq!(c.sent, a.received, "connection {}: upload", a.seed);
            assert_eq!(a.sent, c.received, "connection {}: download", a.seed);
        }
    }
}
