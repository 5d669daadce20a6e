//! The link handshake written from `docs/PROTOCOL.md` with `snow` alone (not through
//! `wanmux_core::noise`), for attacks on a node that an outsider or another client could run:
//! a [`Tap`] in front of the node records what a real client sends first on each link, and
//! [`psk_join`] joins a session as a PSK holder who read its id from a recorded message 1.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Version byte of the client handshake payloads.
pub const VERSION: u8 = 3;

/// The prologue: `wanmux v1` and the mode byte.
fn prologue(mode: u8) -> Vec<u8> {
    let mut p = b"wanmux v1".to_vec();
    p.push(mode);
    p
}

/// `Noise_<pattern>_25519_<cipher>_BLAKE2s` for a mode byte, as the protocol's table gives it.
fn params(mode: u8) -> snow::params::NoiseParams {
    let pattern = match mode >> 4 {
        1 => "IK",
        2 => "IKpsk2",
        3 => "NNpsk0",
        _ => panic!("unknown pattern in mode {mode:#x}"),
    };
    let cipher = match mode & 0x0f {
        1 => "ChaChaPoly",
        2 => "AESGCM",
        _ => panic!("unknown cipher in mode {mode:#x}"),
    };
    format!("Noise_{pattern}_25519_{cipher}_BLAKE2s")
        .parse()
        .expect("valid name")
}

/// A TCP relay in front of a node that records the first message (`mode | len | message 1`) of
/// every connection through it, and can cut every connection and refuse new ones.
pub struct Tap {
    addr: SocketAddr,
    firsts: Arc<Mutex<Vec<Vec<u8>>>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Tap {
    /// Starts a tap on `127.0.0.1:0` in front of `server`.
    pub async fn start(server: SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tap");
        let addr = listener.local_addr().expect("addr");
        let firsts = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (f, c) = (firsts.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let f = f.clone();
                let task = tokio::spawn(async move {
                    let _ = relay(client, server, f).await;
                });
                c.lock().unwrap().push(task);
            }
        });
        Tap {
            addr,
            firsts,
            conns,
            accept,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The first messages recorded so far, in the order their connections arrived.
    pub fn firsts(&self) -> Vec<Vec<u8>> {
        self.firsts.lock().unwrap().clone()
    }

    /// Cuts every connection through the tap and refuses new ones from now on.
    pub fn cut(&self) {
        self.accept.abort();
        self.reset();
    }

    /// Cuts every connection through the tap; new ones still pass.
    pub fn reset(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.cut();
    }
}

async fn relay(
    mut client: TcpStream,
    server: SocketAddr,
    firsts: Arc<Mutex<Vec<Vec<u8>>>>,
) -> std::io::Result<()> {
    let mut up = TcpStream::connect(server).await?;
    let mut head = [0u8; 3];
    client.read_exact(&mut head).await?;
    let len = usize::from(u16::from_be_bytes([head[1], head[2]]));
    let mut first = head.to_vec();
    first.resize(3 + len, 0);
    client.read_exact(&mut first[3..]).await?;
    firsts.lock().unwrap().push(first.clone());
    up.write_all(&first).await?;
    tokio::io::copy_bidirectional(&mut client, &mut up).await?;
    Ok(())
}

/// Message 1's payload in a client handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The session the link joins.
    pub session_id: [u8; 16],
    /// The link's number in its session.
    pub link_seq: u32,
    /// The client's clock, nanoseconds since the Unix epoch.
    pub timestamp: u64,
}

impl Hello {
    fn encode(&self) -> Vec<u8> {
        let mut p = vec![VERSION];
        p.extend_from_slice(&self.session_id);
        p.extend_from_slice(&self.link_seq.to_be_bytes());
        p.push(0);
        p.extend_from_slice(&self.timestamp.to_be_bytes());
        p
    }
}

/// Now as a message 1 timestamp: nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64
}

/// What a PSK holder reads in a recorded PSK-only message 1 (`mode | len | message`): the
/// payload is encrypted under keys that come from the PSK and the client's ephemeral key, which
/// the message carries in the clear.
pub fn open_psk_hello(psk: &[u8; 32], first: &[u8]) -> Hello {
    let mode = first[0];
    assert_eq!(mode >> 4, 3, "not a PSK-only handshake");
    let mut hs = snow::Builder::new(params(mode))
        .prologue(&prologue(mode))
        .expect("prologue")
        .psk(0, psk)
        .expect("psk")
        .build_responder()
        .expect("responder");
    let mut payload = [0u8; 1024];
    hs.read_message(&first[3..], &mut payload)
        .expect("a PSK holder decrypts message 1");
    assert_eq!(payload[0], VERSION, "payload version");
    Hello {
        session_id: payload[1..17].try_into().expect("16 bytes"),
        link_seq: u32::from_be_bytes(payload[17..21].try_into().expect("4 bytes")),
        timestamp: u64::from_be_bytes(payload[22..30].try_into().expect("8 bytes")),
    }
}

/// What a link run by [`psk_join`] got from the node.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The node answered message 1 with a message 2.
    pub answered: bool,
    /// Transport messages that came after the key confirmation.
    pub messages: usize,
    /// Bytes of stream data in `DATA` and `DATA_FIN` frames among them.
    pub data_bytes: usize,
}

/// Joins session `hello.session_id` at `server` as a PSK holder (`NNpsk0`, ChaCha20-Poly1305),
/// confirms the keys with a `PING` after `confirm_prefix` (where a client puts its session
/// secret), and then reads, answering nothing, until the node closes the link or `listen`
/// passes.
pub async fn psk_join(
    server: SocketAddr,
    psk: &[u8; 32],
    hello: Hello,
    confirm_prefix: &[u8],
    listen: Duration,
) -> Joined {
    let mode = 0x31;
    let mut hs = snow::Builder::new(params(mode))
        .prologue(&prologue(mode))
        .expect("prologue")
        .psk(0, psk)
        .expect("psk")
        .build_initiator()
        .expect("initiator");
    let mut joined = Joined::default();
    let mut tcp = TcpStream::connect(server).await.expect("connect");
    let mut msg = [0u8; 1024];
    let n = hs.write_message(&hello.encode(), &mut msg).expect("msg1");
    let mut out = vec![mode];
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&msg[..n]);
    tcp.write_all(&out).await.expect("write msg1");
    let Some(reply) = read_message(&mut tcp, listen).await else {
        return joined;
    };
    let mut payload = [0u8; 1024];
    hs.read_message(&reply, &mut payload)
        .expect("msg2 decrypts");
    joined.answered = true;
    let mut transport = hs.into_transport_mode().expect("transport");
    let mut plain = confirm_prefix.to_vec();
    plain.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0]);
    let n = transport.write_message(&plain, &mut msg).expect("seal");
    let mut out = (n as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&msg[..n]);
    tcp.write_all(&out).await.expect("write key confirmation");
    let deadline = tokio::time::Instant::now() + listen;
    let mut plain = vec![0u8; 65_535];
    while let Some(m) = read_message(&mut tcp, deadline - tokio::time::Instant::now()).await {
        let Ok(n) = transport.read_message(&m, &mut plain) else {
            break;
        };
        joined.messages += 1;
        joined.data_bytes += data_bytes(&plain[..n]);
    }
    joined
}

/// Reads one `len: u16 | message`; `None` on EOF, error or timeout.
async fn read_message(tcp: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let read = async {
        let mut len = [0u8; 2];
        tcp.read_exact(&mut len).await.ok()?;
        let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tcp.read_exact(&mut m).await.ok()?;
        Some(m)
    };
    tokio::time::timeout(limit, read).await.ok().flatten()
}

/// Stream bytes in the `DATA` and `DATA_FIN` frames of one message's plaintext (frames as in
/// `docs/PROTOCOL.md`); stops at a frame it cannot parse.
fn data_bytes(mut msg: &[u8]) -> usize {
    let mut total = 0;
    while let Some(&kind) = msg.first() {
        let len = match kind {
            0x01 | 0x02 | 0x15 => 9,
            0x03 => 3,
            0x04 => 1,
            0x10 => match msg.get(9) {
                Some(&n) => 10 + usize::from(n),
                None => return total,
            },
            0x11 | 0x12 => match msg.get(17..19) {
                Some(l) => {
                    let l = usize::from(u16::from_be_bytes([l[0], l[1]]));
                    total += l;
                    19 + l
                }
                None => return total,
            },
            0x13 => 19,
            0x14 => 25,
            0x80.. => match msg.get(1..3) {
                Some(l) => 3 + usize::from(u16::from_be_bytes([l[0], l[1]])),
                None => return total,
            },
            _ => return total,
        };
        let Some(rest) = msg.get(len..) else {
            return total;
        };
        msg = rest;
    }
    total
}

/// Sends `first` (a recorded `mode | len | message 1`) to `server` as a new connection and
/// returns the bytes the node sent back before it closed the connection (at most `limit`).
pub async fn replay(server: SocketAddr, first: &[u8], limit: Duration) -> usize {
    let Ok(mut tcp) = TcpStream::connect(server).await else {
        return 0;
    };
    let _ = tcp.write_all(first).await;
    let mut got = 0;
    let mut buf = [0u8; 2048];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got += n,
        }
    }
}

/// Version byte of the peer handshake payloads (the cluster protocol's).
pub const PEER_VERSION: u8 = 4;

/// Message 1's payload on a peer link, as `docs/PROTOCOL.md` ("Peer links") lays it out:
/// `version | role (2) | node_id | instance | timestamp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerWireHello {
    /// The version byte.
    pub version: u8,
    /// The role byte.
    pub role: u8,
    /// The dialler's node id.
    pub node_id: u16,
    /// The dialler's instance.
    pub instance: u64,
    /// The dialler's clock, nanoseconds since the Unix epoch.
    pub timestamp: u64,
}

impl PeerWireHello {
    /// The payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = vec![self.version, self.role];
        p.extend_from_slice(&self.node_id.to_be_bytes());
        p.extend_from_slice(&self.instance.to_be_bytes());
        p.extend_from_slice(&self.timestamp.to_be_bytes());
        p
    }
}

/// Reads a recorded peer link's message 1 (`mode | len | message`, mode `IK`) as the node
/// holding `responder_key` does.
pub fn open_peer_hello(responder_key: &[u8; 32], first: &[u8]) -> PeerWireHello {
    let mode = first[0];
    assert_eq!(mode >> 4, 1, "not an IK handshake");
    let mut hs = snow::Builder::new(params(mode))
        .prologue(&prologue(mode))
        .expect("prologue")
        .local_private_key(responder_key)
        .expect("key")
        .build_responder()
        .expect("responder");
    let mut payload = [0u8; 1024];
    let n = hs
        .read_message(&first[3..], &mut payload)
        .expect("the responder reads message 1");
    let p = &payload[..n];
    assert_eq!(p.len(), 20, "peer hello length");
    PeerWireHello {
        version: p[0],
        role: p[1],
        node_id: u16::from_be_bytes([p[2], p[3]]),
        instance: u64::from_be_bytes(p[4..12].try_into().expect("8 bytes")),
        timestamp: u64::from_be_bytes(p[12..20].try_into().expect("8 bytes")),
    }
}

/// A peer link's message 1 (`mode | len | message`, `IK` with ChaCha20-Poly1305) from the
/// holder of `local_key` to the node with `remote_key`, carrying `payload` (a peer hello's
/// [`PeerWireHello::encode`], or any bytes).
pub fn peer_hello_message(local_key: &[u8; 32], remote_key: &[u8; 32], payload: &[u8]) -> Vec<u8> {
    let mode = 0x11;
    let mut hs = snow::Builder::new(params(mode))
        .prologue(&prologue(mode))
        .expect("prologue")
        .local_private_key(local_key)
        .expect("key")
        .remote_public_key(remote_key)
        .expect("key")
        .build_initiator()
        .expect("initiator");
    let mut msg = [0u8; 1024];
    let n = hs.write_message(payload, &mut msg).expect("msg1");
    let mut out = vec![mode];
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&msg[..n]);
    out
}
