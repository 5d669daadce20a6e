//! Real-socket harness: a server node, a client and an application server, all in-process on
//! `127.0.0.1:0`, plus transfer helpers that hash what they send and receive.
//!
//! The application server speaks a tiny protocol: the connecting side first sends a 16-byte
//! header (`down: u64` bytes it wants back, `seed: u64`), then uploads until it shuts down its
//! write side. The server writes `down` seeded bytes back and shuts down its side, while
//! hashing the upload; each finished connection reports an [`AppResult`].

use blake3::Hasher;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use wanmux_client::ClientHandle;
use wanmux_config::{
    ClientAuth, ClientConfig, HostPort, LinkTransport, Links, Node, NodeAddrs, PinnedNode, PortMap,
    ServerAuth, ServerConfig, Service, ServiceName,
};
use wanmux_core::keys::{generate_keypair, Psk};
use wanmux_server::ServerHandle;

/// Sends the daemons' logs to the test output; `RUST_LOG` picks the level (default: warn).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The service name the harness maps.
pub const SERVICE: &str = "app";

/// Bytes and hash of one direction of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    /// Byte count.
    pub bytes: u64,
    /// blake3 of the bytes.
    pub hash: blake3::Hash,
}

/// What the application server saw on one connection.
#[derive(Debug, Clone)]
pub struct AppResult {
    /// The seed from the connection's header: tells concurrent connections apart.
    pub seed: u64,
    /// What it received (the upload).
    pub received: Hashed,
    /// What it sent (the download).
    pub sent: Hashed,
}

/// What the connecting side saw.
#[derive(Debug, Clone)]
pub struct ClientResult {
    /// What it uploaded.
    pub sent: Hashed,
    /// What it downloaded.
    pub received: Hashed,
}

/// A running application server.
pub struct AppServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// One result per finished connection.
    pub results: mpsc::UnboundedReceiver<AppResult>,
    /// Connections accepted so far, finished or not.
    pub accepted: Arc<AtomicUsize>,
}

impl AppServer {
    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Starts the application server on `127.0.0.1:0`.
pub async fn app_server() -> AppServer {
    // A deep accept queue: the default (128) overflows when a test opens a thousand
    // connections at once, and the kernel then resets some of them.
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind app server");
    let listener = socket.listen(4096).expect("listen");
    let addr = listener.local_addr().expect("local addr");
    let (tx, results) = mpsc::unbounded_channel();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(r) = serve_app(tcp).await {
                    let _ = tx.send(r);
                }
            });
        }
    });
    AppServer {
        addr,
        results,
        accepted,
    }
}

async fn serve_app(tcp: TcpStream) -> std::io::Result<AppResult> {
    let (mut rd, mut wr) = tcp.into_split();
    let mut header = [0u8; 16];
    rd.read_exact(&mut header).await?;
    let down = u64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
    let seed = u64::from_be_bytes(header[8..].try_into().expect("8 bytes"));
    let writer = tokio::spawn(async move {
        let sent = write_seeded(&mut wr, down, seed ^ 0xD0D0).await?;
        wr.shutdown().await?;
        Ok::<_, std::io::Error>(sent)
    });
    let received = read_hashed(&mut rd).await?;
    let sent = writer.await.expect("writer task")?;
    Ok(AppResult {
        seed,
        received,
        sent,
    })
}

/// Writes `len` bytes of seeded random data, returning their hash.
pub async fn write_seeded<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    len: u64,
    seed: u64,
) -> std::io::Result<Hashed> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    Ok(Hashed {
        bytes: len,
        hash: hasher.finalize(),
    })
}

/// Reads to EOF, returning the count and hash.
pub async fn read_hashed<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<Hashed> {
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(Hashed {
                bytes,
                hash: hasher.finalize(),
            });
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
}

/// Connects to `addr`, uploads `up` bytes while downloading `down`, both hashed.
pub async fn transfer(
    addr: SocketAddr,
    up: u64,
    down: u64,
    seed: u64,
) -> std::io::Result<ClientResult> {
    transfer_on(TcpStream::connect(addr).await?, up, down, seed).await
}

/// How the tunnel authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Static keys (IK), optionally with a PSK (IKpsk2).
    Static {
        /// Mix in a PSK as well.
        psk: bool,
    },
    /// PSK only (NNpsk0).
    Psk,
    /// PKI mode (QUIC links only): certificates of a CA made for the test, the node's for
    /// `127.0.0.1` (the host of the client's `node.addr`), the client's for [`PKI_CLIENT`].
    Pki,
}

/// The name on the client certificate of an [`Auth::Pki`] tunnel.
pub const PKI_CLIENT: &str = "client-1";

/// A CA, a node certificate for `127.0.0.1` and a client certificate for [`PKI_CLIENT`]: the
/// node's `[tls]` files and the client's.
pub fn pki_files() -> (wanmux_core::tls::CertFiles, wanmux_core::tls::CertFiles) {
    let day = Duration::from_secs(86_400);
    let ca = wanmux_core::tls::issue::Ca::generate(std::time::SystemTime::now() + 365 * day)
        .expect("a CA");
    pki_files_from(&ca, PKI_CLIENT)
}

/// As [`pki_files`] with certificates of `ca`, the client's for `client`.
pub fn pki_files_from(
    ca: &wanmux_core::tls::issue::Ca,
    client: &str,
) -> (wanmux_core::tls::CertFiles, wanmux_core::tls::CertFiles) {
    use std::time::SystemTime;
    use wanmux_core::tls::{CertFiles, Usage};
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let node = ca
        .issue("127.0.0.1", Usage::Node, now - day, now + 30 * day)
        .expect("the node's certificate");
    let client = ca
        .issue(client, Usage::Client, now - day, now + 30 * day)
        .expect("the client's certificate");
    let files = |c: &wanmux_core::tls::issue::Issued| {
        CertFiles::from_pem(&c.cert_pem, &c.key_pem, &ca.cert_pem(), &[]).expect("PEM")
    };
    (files(&node), files(&client))
}

/// Server and client configs for a tunnel to `target` over `links` links. The links are TCP
/// (`links.transport = "tcp"`): most tests are about what the engine and the daemons do with
/// links of any kind, and TCP links are the cheap ones on loopback; the QUIC and fallback tests
/// set their transport themselves. The node accepts QUIC too, as by default.
pub fn configs(auth: Auth, target: SocketAddr, links: u16) -> (ServerConfig, ClientConfig) {
    let node = NonZeroU16::new(1).expect("non-zero");
    let service = ServiceName::new(SERVICE).expect("valid name");
    let mut server_tls = None;
    let (server_auth, client_auth) = match auth {
        Auth::Pki => {
            let (node_files, client_files) = pki_files();
            server_tls = Some(wanmux_config::ServerTls {
                files: node_files,
                allowed_certs: Default::default(),
            });
            (
                ServerAuth::PkiOnly,
                ClientAuth::Pki {
                    files: client_files,
                    nodes: vec![wanmux_config::NamedNode {
                        node: Node {
                            id: node,
                            addr: SocketAddr::from(([127, 0, 0, 1], 1)).into(),
                        },
                        tls_name: "127.0.0.1".into(),
                    }],
                },
            )
        }
        Auth::Static { psk } => {
            let (server_priv, server_pub) = generate_keypair();
            let (client_priv, client_pub) = generate_keypair();
            let psk = psk.then(Psk::generate);
            (
                ServerAuth::StaticKey {
                    private_key: server_priv,
                    allowed_clients: [client_pub].into(),
                    psk: psk.clone(),
                },
                ClientAuth::StaticKey {
                    private_key: client_priv,
                    psk,
                    nodes: vec![PinnedNode {
                        node: Node {
                            id: node,
                            addr: SocketAddr::from(([127, 0, 0, 1], 1)).into(),
                        },
                        public_key: server_pub,
                    }],
                },
            )
        }
        Auth::Psk => {
            let psk = Psk::generate();
            (
                ServerAuth::PskOnly { psk: psk.clone() },
                ClientAuth::PskOnly {
                    psk,
                    nodes: vec![Node {
                        id: node,
                        addr: SocketAddr::from(([127, 0, 0, 1], 1)).into(),
                    }],
                },
            )
        }
    };
    let server = ServerConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        node,
        server_auth,
        vec![Service {
            name: service.clone(),
            target: target.into(),
        }],
    );
    let mut client = ClientConfig::new(
        client_auth,
        vec![PortMap {
            listen: "127.0.0.1:0".parse().expect("addr"),
            service,
            spread: Default::default(),
        }],
    );
    client.links = Links::fixed(links);
    // PKI mode has no Noise handshake: QUIC links only.
    client.transport = match auth {
        Auth::Pki => LinkTransport::Quic,
        _ => LinkTransport::Tcp,
    };
    let mut server = server;
    server.tls = server_tls;
    // Every test's clients and probes dial from 127.0.0.1, many links at once: the per-source
    // rate is a test's own business (`limits.handshake_rate`).
    server.limits.handshake_rate = *wanmux_config::Limits::HANDSHAKE_RATE_RANGE.end();
    (server, client)
}

/// Points every node of a client config at `addr`.
pub fn point_client_at(client: &mut ClientConfig, addr: SocketAddr) {
    point_client_at_all(client, &[addr]);
}

/// Gives the client's nodes the addresses `addrs` (at least one), in this order.
pub fn point_client_at_all(client: &mut ClientConfig, addrs: &[SocketAddr]) {
    let addr = NodeAddrs::new(addrs.iter().map(|&a| HostPort::from(a)).collect())
        .expect("at least one address");
    match &mut client.auth {
        ClientAuth::StaticKey { nodes, .. } => {
            nodes.iter_mut().for_each(|n| n.node.addr = addr.clone())
        }
        ClientAuth::PskOnly { nodes, .. } => nodes.iter_mut().for_each(|n| n.addr = addr.clone()),
        ClientAuth::Pki { nodes, .. } => nodes.iter_mut().for_each(|n| n.node.addr = addr.clone()),
    }
}

/// Adds a service `name` at `target` to the server and maps it on a new local port of the
/// client (find the port with [`Tunnel::addr_of`]). The server does not need to have it: a map
/// to a service the server lacks is how a test asks for an unknown service.
pub fn add_map(client: &mut ClientConfig, name: &str) {
    client.maps.push(PortMap {
        listen: "127.0.0.1:0".parse().expect("addr"),
        service: ServiceName::new(name).expect("valid name"),
        spread: Default::default(),
    });
}

/// Adds a service `name` that connects to `target` to the server config.
pub fn add_service(server: &mut ServerConfig, name: &str, target: SocketAddr) {
    server.services.push(Service {
        name: ServiceName::new(name).expect("valid name"),
        target: target.into(),
    });
}

/// A whole tunnel: application server, server node and client, links up.
pub struct Tunnel {
    /// The application server behind the server node.
    pub app: AppServer,
    /// The server node.
    pub server: ServerHandle,
    /// The client.
    pub client: ClientHandle,
    /// The client's config, pointed at the server: start more clients of the same identity,
    /// or change a copy to make a client the server must refuse.
    pub client_config: ClientConfig,
}

impl Tunnel {
    /// Starts everything with `links` links and waits until they are all up.
    pub async fn start(auth: Auth, links: u16) -> Tunnel {
        Self::start_with(auth, links, |_, _| {}).await
    }

    /// As [`Tunnel::start`], letting `tweak` change both configs first (services, maps,
    /// timeouts). The client is pointed at the server after `tweak` ran.
    pub async fn start_with(
        auth: Auth,
        links: u16,
        tweak: impl FnOnce(&mut ServerConfig, &mut ClientConfig),
    ) -> Tunnel {
        Self::start_fronted(auth, links, tweak, async |server| ((), vec![server]))
            .await
            .0
    }

    /// As [`Tunnel::start_with`], the node started with `options` (standing in for a node of an
    /// older release, say).
    pub async fn start_with_node_options(
        auth: Auth,
        links: u16,
        options: wanmux_server::Options,
        tweak: impl FnOnce(&mut ServerConfig, &mut ClientConfig),
    ) -> Tunnel {
        let front = async |server| ((), vec![server]);
        Self::start_fronted_with(auth, links, options, tweak, front)
            .await
            .0
    }

    /// As [`Tunnel::start_with`], with something in front of the server node: `front` gets the
    /// node's address once it listens and returns what it started (relays, say) and the
    /// addresses the client's node gets in its `addr` (several for a multihomed node).
    pub async fn start_fronted<R>(
        auth: Auth,
        links: u16,
        tweak: impl FnOnce(&mut ServerConfig, &mut ClientConfig),
        front: impl AsyncFnOnce(SocketAddr) -> (R, Vec<SocketAddr>),
    ) -> (Tunnel, R) {
        Self::start_fronted_with(auth, links, Default::default(), tweak, front).await
    }

    /// [`Tunnel::start_fronted`], the node started with `options`.
    async fn start_fronted_with<R>(
        auth: Auth,
        links: u16,
        options: wanmux_server::Options,
        tweak: impl FnOnce(&mut ServerConfig, &mut ClientConfig),
        front: impl AsyncFnOnce(SocketAddr) -> (R, Vec<SocketAddr>),
    ) -> (Tunnel, R) {
        init_tracing();
        let app = app_server().await;
        let (mut server_cfg, mut client_cfg) = configs(auth, app.addr, links);
        tweak(&mut server_cfg, &mut client_cfg);
        let server = wanmux_server::start_with(server_cfg, options)
            .await
            .expect("server starts");
        let (fronts, addrs) = front(server.local_addr()).await;
        point_client_at_all(&mut client_cfg, &addrs);
        let client = wanmux_client::start(client_cfg.clone())
            .await
            .expect("client starts");
        tokio::time::timeout(
            Duration::from_secs(10),
            client.wait_for_links(links as usize),
        )
        .await
        .expect("links come up");
        let tunnel = Tunnel {
            app,
            server,
            client,
            client_config: client_cfg,
        };
        (tunnel, fronts)
    }

    /// The client's mapped local address of the harness service.
    pub fn addr(&self) -> SocketAddr {
        self.client.first_addr()
    }

    /// The client's local address for `service`.
    pub fn addr_of(&self, service: &str) -> SocketAddr {
        self.client
            .maps()
            .iter()
            .find(|(name, _)| name.as_str() == service)
            .map(|(_, addr)| *addr)
            .expect("service is mapped")
    }

    /// Checks a finished transfer of `up` and `down` bytes with `seed` against the application
    /// server's result for it.
    pub async fn check_result(&mut self, c: ClientResult, seed: u64, up: u64, down: u64) {
        let a = tokio::time::timeout(Duration::from_secs(60), self.app.results.recv())
            .await
            .expect("app server result in time")
            .expect("app server alive");
        assert_eq!(a.seed, seed, "result of another connection");
        assert_eq!((c.sent.bytes, c.received.bytes), (up, down), "byte counts");
        assert_eq!(c.sent, a.received, "upload: sent vs received");
        assert_eq!(a.sent, c.received, "download: sent vs received");
    }

    /// Runs one transfer through the tunnel and checks both directions against what the
    /// application server saw.
    pub async fn check_transfer(&mut self, up: u64, down: u64, seed: u64) {
        let c = transfer(self.addr(), up, down, seed)
            .await
            .expect("transfer");
        self.check_result(c, seed, up, down).await;
    }

    /// Opens `n` connections through the tunnel, waits until all of them are connected and
    /// have sent their header, then moves `up` and `down` bytes on each at once, and checks
    /// every connection's hashes in both directions against what the application server saw.
    pub async fn check_concurrent(&mut self, n: usize, up: u64, down: u64) {
        let addr = self.addr();
        let barrier = Arc::new(tokio::sync::Barrier::new(n));
        let tasks: Vec<_> = (0..n as u64)
            .map(|seed| {
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    let tcp = TcpStream::connect(addr).await?;
                    barrier.wait().await;
                    transfer_on(tcp, up, down, seed).await
                })
            })
            .collect();
        let mut client = std::collections::HashMap::new();
        for (seed, t) in tasks.into_iter().enumerate() {
            let r = t
                .await
                .expect("transfer task")
                .unwrap_or_else(|e| panic!("connection {seed}: {e}"));
            client.insert(seed as u64, r);
        }
        for _ in 0..n {
            let a = tokio::time::timeout(Duration::from_secs(60), self.app.results.recv())
                .await
                .expect("app server result in time")
                .expect("app server alive");
            let c = client
                .remove(&a.seed)
                .unwrap_or_else(|| panic!("app server saw seed {} twice", a.seed));
            assert_eq!(c.sent, a.received, "connection {}: upload", a.seed);
            assert_eq!(a.sent, c.received, "connection {}: download", a.seed);
            assert_eq!((c.sent.bytes, c.received.bytes), (up, down));
        }
        assert!(client.is_empty());
    }
}

/// As [`transfer`], on a connection the caller opened.
pub async fn transfer_on(
    tcp: TcpStream,
    up: u64,
    down: u64,
    seed: u64,
) -> std::io::Result<ClientResult> {
    let (mut rd, mut wr) = send_header(tcp, down, seed).await?;
    let writer = tokio::spawn(async move {
        let sent = write_seeded(&mut wr, up, seed ^ 0x0A0A).await?;
        wr.shutdown().await?;
        Ok::<_, std::io::Error>(sent)
    });
    let received = read_hashed(&mut rd).await?;
    let sent = writer.await.expect("writer task")?;
    Ok(ClientResult { sent, received })
}

/// Starts a transfer on `tcp`: no Nagle delay, and the header that asks the application server
/// for `down` bytes with `seed`.
async fn send_header(
    tcp: TcpStream,
    down: u64,
    seed: u64,
) -> std::io::Result<(OwnedReadHalf, OwnedWriteHalf)> {
    tcp.set_nodelay(true)?;
    let (rd, mut wr) = tcp.into_split();
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(&down.to_be_bytes());
    header[8..].copy_from_slice(&seed.to_be_bytes());
    wr.write_all(&header).await?;
    Ok((rd, wr))
}

/// Lets a test pause both directions of a transfer part way, act, then let it go on (with
/// [`gated_transfer`]).
#[derive(Clone)]
pub struct Gate {
    open: watch::Sender<bool>,
    paused: Arc<AtomicUsize>,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Gate {
            open: watch::Sender::new(false),
            paused: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Waits until both directions reached the gate.
    pub async fn wait_paused(&self) {
        let both = eventually(Duration::from_secs(30), || {
            self.paused.load(Ordering::SeqCst) == 2
        })
        .await;
        assert!(both, "the transfer did not reach the gate");
    }

    /// Lets both directions go on.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Called by each direction at the gate.
    async fn pass(&self) {
        self.paused.fetch_add(1, Ordering::SeqCst);
        let mut rx = self.open.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// As [`transfer`], but each direction stops after `pause_at` bytes until `gate` opens: the
/// upload stops writing, the download stops reading (so the tunnel's windows fill).
pub async fn gated_transfer(
    addr: SocketAddr,
    up: u64,
    down: u64,
    seed: u64,
    pause_at: u64,
    gate: Gate,
) -> std::io::Result<ClientResult> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut rd, mut wr) = send_header(tcp, down, seed).await?;
    let up_gate = gate.clone();
    let writer = tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0;
        let mut gated = false;
        while sent < up {
            if !gated && sent >= pause_at {
                gated = true;
                up_gate.pass().await;
            }
            let n = (up - sent).min(buf.len() as u64) as usize;
            rng.fill_bytes(&mut buf[..n]);
            hasher.update(&buf[..n]);
            wr.write_all(&buf[..n]).await?;
            sent += n as u64;
        }
        if !gated {
            up_gate.pass().await;
        }
        wr.shutdown().await?;
        Ok::<_, std::io::Error>(Hashed {
            bytes: sent,
            hash: hasher.finalize(),
        })
    });
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    let mut gated = false;
    loop {
        if !gated && received >= pause_at.min(down) {
            gated = true;
            gate.pass().await;
        }
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        received += n as u64;
    }
    let sent = writer.await.expect("writer task")?;
    Ok(ClientResult {
        sent,
        received: Hashed {
            bytes: received,
            hash: hasher.finalize(),
        },
    })
}

/// Starts a [`gated_transfer`] to `addr` in a task and returns once both directions paused at
/// `pause_at` bytes: act on the tunnel, then open the gate to let the transfer go on.
pub async fn paused_transfer(
    addr: SocketAddr,
    up: u64,
    down: u64,
    seed: u64,
    pause_at: u64,
) -> (tokio::task::JoinHandle<std::io::Result<ClientResult>>, Gate) {
    let gate = Gate::new();
    let running = tokio::spawn(gated_transfer(addr, up, down, seed, pause_at, gate.clone()));
    gate.wait_paused().await;
    (running, gate)
}

/// Runs `test` and panics if it takes longer than `limit`, so a hang fails the test instead of
/// blocking the run.
pub async fn within<F: Future>(limit: Duration, test: F) -> F::Output {
    match tokio::time::timeout(limit, test).await {
        Ok(out) => out,
        Err(_) => panic!("test did not finish within {limit:?}"),
    }
}

/// Polls `cond` every 10 ms until it holds or `limit` passed; returns whether it held.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `cond` every 10 ms until `until`; returns whether it held at every poll (it stops at
/// the first that fails). For a fault that lasts a given time, during which nothing may give.
pub async fn holds_until(until: Instant, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if !cond() {
            return false;
        }
        if Instant::now() >= until {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `fut` once, so that what it does before its first wait has happened, and returns it
/// to be awaited or spawned. Panics if it finished at that poll.
pub async fn begin<F: Future>(fut: F) -> std::pin::Pin<Box<F>> {
    let mut fut = Box::pin(fut);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
    assert!(first.is_pending(), "finished at its first poll");
    fut
}

/// A port on `127.0.0.1` that is free for TCP and UDP now: the address a daemon started later
/// will bind (a node's cluster listener, whose address its peers must know first). Drawn at
/// random below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), never a fixed
/// number: a port the kernel gave out and took back could be handed out again in between, to
/// the `127.0.0.1:0` listener or the outgoing connection of another test running at the same
/// time (a CI run saw a node fail to start so); below the range only an explicit bind takes it.
pub fn free_port() -> SocketAddr {
    use rand::Rng;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // The range starts well above 10000 on any usual system; if not, fall back to the kernel.
    if low <= 12000 {
        return kernel_port();
    }
    // Ports handed out in this process: two tests running at once must not draw the same one
    // before either daemon binds it (a local run saw a node fail to start, its UDP port taken).
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(10000..low);
        if handed_out.contains(&port) {
            continue;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Free for UDP too: a node listens for QUIC links on its TCP port (`server.quic`, on
        // by default), and its start fails when that UDP port is taken.
        if std::net::TcpListener::bind(addr).is_ok() && std::net::UdpSocket::bind(addr).is_ok() {
            handed_out.insert(port);
            return addr;
        }
    }
}

/// A port the kernel gives out on `127.0.0.1`, free for TCP and UDP, released again.
fn kernel_port() -> SocketAddr {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = l.local_addr().expect("local addr");
        if std::net::UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// Whether a socket listens on `addr` (an IPv4 address), from `/proc/net/tcp`: a check that
/// neither connects nor opens a stream.
pub fn is_listening(addr: SocketAddr) -> bool {
    const LISTEN: &str = "0A";
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        panic!("{addr}: only IPv4 addresses are looked up");
    };
    // The kernel prints the address as the native-endian u32 it stores, then the port.
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(ip.octets()),
        addr.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&LISTEN)
    })
}

/// What a read on a proxied connection ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// Orderly end of stream.
    Eof,
    /// `ECONNRESET`.
    Reset,
    /// Some other error.
    Error(std::io::ErrorKind),
    /// Data arrived (the caller did not expect any).
    Data(usize),
    /// Nothing happened within the limit.
    Hang,
}

/// A connection through `t` to its `raw` service and the application side of it (accepted
/// from `raw`, which the test drives itself), with a few bytes exchanged both ways so both ends
/// are known to be connected.
pub async fn raw_pair(t: &Tunnel, raw: &TcpListener) -> (TcpStream, TcpStream) {
    let mut client = TcpStream::connect(t.addr_of("raw")).await.expect("connect");
    client.write_all(b"hello").await.expect("write");
    let (mut app, _) = tokio::time::timeout(Duration::from_secs(10), raw.accept())
        .await
        .expect("the node connects the service")
        .expect("accept");
    let mut buf = [0u8; 5];
    app.read_exact(&mut buf).await.expect("app reads");
    assert_eq!(&buf, b"hello");
    app.write_all(b"world").await.expect("app writes");
    client.read_exact(&mut buf).await.expect("client reads");
    assert_eq!(&buf, b"world");
    (client, app)
}

/// Reads once from `tcp` with a time limit and says how the read ended.
pub async fn read_end(tcp: &mut TcpStream, limit: Duration) -> ReadEnd {
    let mut buf = [0u8; 4096];
    match tokio::time::timeout(limit, tcp.read(&mut buf)).await {
        Err(_) => ReadEnd::Hang,
        Ok(Ok(0)) => ReadEnd::Eof,
        Ok(Ok(n)) => ReadEnd::Data(n),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => ReadEnd::Reset,
        Ok(Err(e)) => ReadEnd::Error(e.kind()),
    }
}

/// Reads until EOF or an error, discarding data, and says how it ended (never `Data`).
pub async fn drain_end(tcp: &mut TcpStream, limit: Duration) -> ReadEnd {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match read_end(tcp, deadline - tokio::time::Instant::now()).await {
            ReadEnd::Data(_) => continue,
            end => return end,
        }
    }
}

/// Closes `tcp` with an RST instead of a FIN: `SO_LINGER` 0, then drop.
pub fn reset(tcp: TcpStream) {
    tcp.set_zero_linger().expect("set SO_LINGER 0");
    drop(tcp);
}

/// Resident memory of this process in KiB (`VmRSS` from `/proc/self/status`).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Panics on tokio worker threads in this process since the first call (which installs a hook
/// that counts them, then runs the default hook). A panic in a daemon's task does not fail a
/// test by itself, since tokio catches it: compare the count before and after instead. Panics on
/// a test's own thread (its failed assertions) are not counted, so one failing test does not
/// make the others that run beside it in this process fail too.
pub fn panics() -> usize {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            if thread.name().is_none_or(|n| n.starts_with("tokio-runtime")) {
                COUNT.fetch_add(1, Ordering::SeqCst);
            }
            default(info)
        }));
    });
    COUNT.load(Ordering::SeqCst)
}

/// A node config file `node.toml` in a fresh directory `dir` for a node process in PSK-only
/// mode on a free port, serving [`SERVICE`] at `service`, with its control socket beside it
/// and `extra` lines in `[server]`; and a client config of the same PSK (links: `links`), not
/// yet pointed at the node. Returns the file, the node's address and the client config.
pub fn psk_node_file(
    dir: &std::path::Path,
    service: SocketAddr,
    extra: &str,
    links: u16,
) -> (std::path::PathBuf, SocketAddr, ClientConfig) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("temp dir");
    let (_, client) = configs(Auth::Psk, service, links);
    let ClientAuth::PskOnly { psk, .. } = &client.auth else {
        unreachable!("PSK-only configs")
    };
    let addr = free_port();
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{addr}\"\nnode_id = 1\npsk = \"{}\"\n{extra}\n\
             [[service]]\nname = \"{SERVICE}\"\ntarget = \"{service}\"\n\n\
             [control]\nsocket = \"node.sock\"\n",
            psk.to_base64(),
        ),
    )
    .expect("write node config");
    (config, addr, client)
}
