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
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use wanmux_client::ClientHandle;
use wanmux_config::{
    ClientAuth, ClientConfig, Links, Node, PinnedNode, PortMap, ServerAuth, ServerConfig, Service,
    ServiceName,
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
}

/// Starts the application server on `127.0.0.1:0`.
pub async fn app_server() -> AppServer {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind app server");
    let addr = listener.local_addr().expect("local addr");
    let (tx, results) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(r) = serve_app(tcp).await {
                    let _ = tx.send(r);
                }
            });
        }
    });
    AppServer { addr, results }
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
    Ok(AppResult { received, sent })
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
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (mut rd, mut wr) = tcp.into_split();
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(&down.to_be_bytes());
    header[8..].copy_from_slice(&seed.to_be_bytes());
    wr.write_all(&header).await?;
    let writer = tokio::spawn(async move {
        let sent = write_seeded(&mut wr, up, seed ^ 0x0A0A).await?;
        wr.shutdown().await?;
        Ok::<_, std::io::Error>(sent)
    });
    let received = read_hashed(&mut rd).await?;
    let sent = writer.await.expect("writer task")?;
    Ok(ClientResult { sent, received })
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
}

/// Server and client configs for a tunnel to `target` over `links` links.
pub fn configs(auth: Auth, target: SocketAddr, links: u16) -> (ServerConfig, ClientConfig) {
    let node = NonZeroU16::new(1).expect("non-zero");
    let service = ServiceName::new(SERVICE).expect("valid name");
    let (server_auth, client_auth) = match auth {
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
                            addr: "127.0.0.1:1".parse().expect("addr"),
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
                        addr: "127.0.0.1:1".parse().expect("addr"),
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
        }],
    );
    client.links = Links { count: links };
    (server, client)
}

/// Points every node of a client config at `addr`.
pub fn point_client_at(client: &mut ClientConfig, addr: SocketAddr) {
    match &mut client.auth {
        ClientAuth::StaticKey { nodes, .. } => {
            nodes.iter_mut().for_each(|n| n.node.addr = addr.into())
        }
        ClientAuth::PskOnly { nodes, .. } => nodes.iter_mut().for_each(|n| n.addr = addr.into()),
    }
}

/// A whole tunnel: application server, server node and client, links up.
pub struct Tunnel {
    /// The application server behind the server node.
    pub app: AppServer,
    /// The server node.
    pub server: ServerHandle,
    /// The client.
    pub client: ClientHandle,
}

impl Tunnel {
    /// Starts everything with `links` links and waits until they are all up.
    pub async fn start(auth: Auth, links: u16) -> Tunnel {
        init_tracing();
        let app = app_server().await;
        let (server_cfg, mut client_cfg) = configs(auth, app.addr, links);
        let server = wanmux_server::start(server_cfg)
            .await
            .expect("server starts");
        point_client_at(&mut client_cfg, server.local_addr());
        let client = wanmux_client::start(client_cfg)
            .await
            .expect("client starts");
        tokio::time::timeout(
            Duration::from_secs(10),
            client.wait_for_links(links as usize),
        )
        .await
        .expect("links come up");
        Tunnel {
            app,
            server,
            client,
        }
    }

    /// The client's mapped local address.
    pub fn addr(&self) -> SocketAddr {
        self.client.first_addr()
    }

    /// Runs one transfer through the tunnel and checks both directions against what the
    /// application server saw.
    pub async fn check_transfer(&mut self, up: u64, down: u64, seed: u64) {
        let c = transfer(self.addr(), up, down, seed)
            .await
            .expect("transfer");
        let a = tokio::time::timeout(Duration::from_secs(60), self.app.results.recv())
            .await
            .expect("app server result in time")
            .expect("app server alive");
        assert_eq!(c.sent, a.received, "upload: sent vs received");
        assert_eq!(a.sent, c.received, "download: sent vs received");
        assert_eq!((c.sent.bytes, c.received.bytes), (up, down));
    }
}
