//! Handshakes and hostile input against a real node: a client's link handshake run by hand
//! (TCP or QUIC) to see whether the node takes it, a real client's first message captured to be
//! replayed, and floods of garbage connections.

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wanmux_config::ClientConfig;

/// The Noise credentials a client config would use with its first node (the daemon's own
/// conversion).
pub fn noise_auth(config: &ClientConfig) -> wanmux_core::noise::ClientAuth {
    let (_, handshake) = config
        .auth
        .handshakes()
        .next()
        .expect("a client config has a node");
    handshake.into()
}

/// Runs the client side of a link handshake with `auth` against `server` and returns how it
/// ended: a refused client gets an error.
pub async fn try_handshake(
    server: SocketAddr,
    auth: &wanmux_core::noise::ClientAuth,
) -> Result<(), wanmux_core::noise::LinkError> {
    let tcp = TcpStream::connect(server).await?;
    let (_rd, _wr, _server) =
        wanmux_core::noise::connect(tcp, auth, &hello(), &PING, HANDSHAKE_LIMIT).await?;
    Ok(())
}

/// As [`try_handshake`], on a QUIC link to the node's QUIC endpoint `server`. Panics if QUIC's own
/// handshake fails, which the node completes for anyone: the result is the Noise handshake's
/// inside the link's stream.
pub async fn try_quic_handshake(
    server: SocketAddr,
    auth: &wanmux_core::noise::ClientAuth,
) -> Result<(), wanmux_core::noise::LinkError> {
    use wanmux_core::quic;
    let dialer = quic::client_endpoint("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let stream = quic::connect(&dialer, server, HANDSHAKE_LIMIT)
        .await
        .expect("the QUIC handshake completes");
    let (_rd, _wr, _server) = stream
        .connect(auth, &hello(), &PING, HANDSHAKE_LIMIT)
        .await?;
    Ok(())
}

/// As [`try_quic_handshake`], where QUIC's own handshake may fail too (the node refused the
/// connection): its error is the result.
pub async fn try_quic_dial(
    server: SocketAddr,
    auth: &wanmux_core::noise::ClientAuth,
) -> Result<(), wanmux_core::noise::LinkError> {
    use wanmux_core::quic;
    let dialer = quic::client_endpoint("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let stream = quic::connect(&dialer, server, HANDSHAKE_LIMIT).await?;
    let (_rd, _wr, _server) = stream
        .connect(auth, &hello(), &PING, HANDSHAKE_LIMIT)
        .await?;
    Ok(())
}

/// How long [`try_handshake`] and [`try_quic_handshake`] wait for the node.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(5);

/// PING(0): what a real client confirms its handshake with.
const PING: [u8; 9] = [1, 0, 0, 0, 0, 0, 0, 0, 0];

/// The hello of a handshake test: a new session's first link.
fn hello() -> wanmux_core::noise::ClientHello {
    wanmux_core::noise::ClientHello {
        session: wanmux_core::noise::SessionSecret::generate(),
        link_seq: 0,
        lane: false,
        relay: false,
    }
}

/// What a real client with `auth` sends first on a link (`mode | len | message 1`), captured
/// from a listener that answers nothing. Replaying it is what an observer on the path can do.
pub async fn capture_first_message(auth: &wanmux_core::noise::ClientAuth) -> Vec<u8> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let auth = auth.clone();
    let client = tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), try_handshake(addr, &auth)).await;
    });
    let (mut tcp, _) = listener.accept().await.expect("accept");
    let mut head = [0u8; 3];
    tcp.read_exact(&mut head).await.expect("mode and length");
    let len = u16::from_be_bytes([head[1], head[2]]) as usize;
    let mut msg = head.to_vec();
    msg.resize(3 + len, 0);
    tcp.read_exact(&mut msg[3..]).await.expect("message 1");
    drop(tcp);
    client.abort();
    msg
}

/// One kind of hostile connection to a server's link port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Garbage {
    /// Connect and close at once.
    Empty,
    /// Random bytes of random length.
    Random,
    /// A valid mode byte and length, then random bytes.
    RandomMessage,
    /// A length prefix over the handshake limit.
    Oversized,
    /// A zero-length message 1.
    ZeroLength,
    /// A real message 1 cut short, then close.
    Truncated,
    /// A replayed real message 1, then close. The node answers a message 1 once: the first
    /// replay of one it never saw gets message 2, every later one nothing.
    Replay,
    /// A replayed real message 1, then a random key confirmation.
    ReplayBadConfirmation,
    /// A real message 1 cut short, then silence with the connection open: only the
    /// server's handshake timeout ends it.
    Stall,
}

impl Garbage {
    /// Every kind but [`Garbage::Stall`], which waits out the server's handshake timeout.
    pub const QUICK: [Garbage; 8] = [
        Garbage::Empty,
        Garbage::Random,
        Garbage::RandomMessage,
        Garbage::Oversized,
        Garbage::ZeroLength,
        Garbage::Truncated,
        Garbage::Replay,
        Garbage::ReplayBadConfirmation,
    ];
}

/// Sends one hostile connection of `kind` to `server`, reads until the server closes it (at
/// most `limit`) and returns the bytes the server sent. `first` is a captured real message 1.
/// Panics if the server keeps the connection open past `limit`.
pub async fn send_garbage(
    server: SocketAddr,
    kind: Garbage,
    first: &[u8],
    rng: &mut StdRng,
    limit: Duration,
) -> usize {
    let Ok(mut tcp) = TcpStream::connect(server).await else {
        // Refused at the door (a full accept queue); costs the server nothing.
        return 0;
    };
    let mut out = Vec::new();
    match kind {
        Garbage::Empty => {}
        Garbage::Random => {
            out.resize(rng.next_u32() as usize % 2048 + 1, 0);
            rng.fill_bytes(&mut out);
        }
        Garbage::RandomMessage => {
            let len = rng.next_u32() as usize % 1024 + 1;
            out.push(first[0]);
            out.extend_from_slice(&(len as u16).to_be_bytes());
            out.resize(3 + len, 0);
            rng.fill_bytes(&mut out[3..]);
        }
        Garbage::Oversized => out.extend_from_slice(&[first[0], 0xFF, 0xFF, 1, 2, 3]),
        Garbage::ZeroLength => out.extend_from_slice(&[first[0], 0, 0]),
        Garbage::Truncated | Garbage::Stall => {
            let cut = rng.next_u32() as usize % (first.len() - 1) + 1;
            out.extend_from_slice(&first[..cut]);
        }
        Garbage::Replay => out.extend_from_slice(first),
        Garbage::ReplayBadConfirmation => {
            out.extend_from_slice(first);
            out.extend_from_slice(&48u16.to_be_bytes());
            let at = out.len();
            out.resize(at + 48, 0);
            rng.fill_bytes(&mut out[at..]);
        }
    }
    // The server may close before reading it all; a failed write is fine.
    let _ = tcp.write_all(&out).await;
    if matches!(
        kind,
        Garbage::Empty | Garbage::Random | Garbage::Truncated | Garbage::Replay
    ) {
        let _ = tcp.shutdown().await;
    }
    let mut got = 0;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => panic!("server kept a {kind:?} connection open for {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got += n,
        }
    }
}

/// Sends `count` hostile connections to `server`, `parallel` at a time, cycling through
/// `kinds`. Each must be closed by the server within `limit`, and only a replayed message 1 may
/// get an answer (message 2, before the key confirmation fails); the rest get nothing.
pub async fn garbage_flood(
    server: SocketAddr,
    first: Vec<u8>,
    kinds: &[Garbage],
    count: usize,
    parallel: usize,
    limit: Duration,
) {
    let first = Arc::new(first);
    let next = Arc::new(AtomicUsize::new(0));
    let kinds: Arc<[Garbage]> = kinds.into();
    let workers: Vec<_> = (0..parallel)
        .map(|w| {
            let (first, next, kinds) = (first.clone(), next.clone(), kinds.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(w as u64);
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= count {
                        return;
                    }
                    let kind = kinds[i % kinds.len()];
                    let got = send_garbage(server, kind, &first, &mut rng, limit).await;
                    if matches!(kind, Garbage::Replay | Garbage::ReplayBadConfirmation) {
                        assert!(got <= 2 + 1024, "server sent {got} bytes to a replay");
                    } else {
                        assert_eq!(got, 0, "server answered a {kind:?} connection");
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("garbage worker");
    }
}

/// The wire format of the frames a hostile client sends, encoded here from `docs/PROTOCOL.md`
/// (not by the engine's codec), so that the tests check the node against the protocol.
pub mod wire {
    /// The harness node's id (`configs` gives node 1).
    pub const NODE: u64 = 1;

    /// The id of the stream with `counter` owned by the harness node.
    pub fn stream(counter: u64) -> u64 {
        NODE << 48 | counter
    }

    /// `PING(token)`.
    pub fn ping(out: &mut Vec<u8>, token: u64) {
        out.push(0x01);
        out.extend_from_slice(&token.to_be_bytes());
    }

    /// `PONG(token)`.
    pub fn pong(out: &mut Vec<u8>, token: u64) {
        out.push(0x02);
        out.extend_from_slice(&token.to_be_bytes());
    }

    /// `OPEN(stream, service)`.
    pub fn open(out: &mut Vec<u8>, stream: u64, service: &str) {
        out.push(0x10);
        out.extend_from_slice(&stream.to_be_bytes());
        out.push(service.len() as u8);
        out.extend_from_slice(service.as_bytes());
    }

    /// `DATA(stream, offset, bytes)`.
    pub fn data(out: &mut Vec<u8>, stream: u64, offset: u64, bytes: &[u8]) {
        out.push(0x11);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(bytes);
    }

    /// `WINDOW(stream, acked, max)`.
    pub fn window(out: &mut Vec<u8>, stream: u64, acked: u64, max: u64) {
        out.push(0x14);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(&acked.to_be_bytes());
        out.extend_from_slice(&max.to_be_bytes());
    }

    /// `SESSION_WINDOW(max)`.
    pub fn session_window(out: &mut Vec<u8>, max: u64) {
        out.push(0x15);
        out.extend_from_slice(&max.to_be_bytes());
    }

    /// A `ROUTE` section for owner `node`: the client's `session` id and the owner's `epoch`,
    /// then `frames` (at most 65,490 bytes), on a link that agreed to routed messages. A
    /// routed message holds only sections, so it goes out as a message of its own
    /// ([`super::RawLink::send_routed`]).
    pub fn route(out: &mut Vec<u8>, node: u16, session: [u8; 16], epoch: u64, frames: &[u8]) {
        out.push(0x07);
        out.extend_from_slice(&node.to_be_bytes());
        out.extend_from_slice(&session);
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&(frames.len() as u16).to_be_bytes());
        out.extend_from_slice(frames);
    }

    /// `RESET(stream, code, final_size)`.
    pub fn reset(out: &mut Vec<u8>, stream: u64, code: u16, final_size: u64) {
        out.push(0x13);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(&final_size.to_be_bytes());
    }

    /// What a hostile client reads from a node's message: pings to answer, pongs it waits for,
    /// and the code of a `CLOSE`. `None` for a message it cannot parse.
    pub fn read_message(mut msg: &[u8]) -> Option<NodeFrames> {
        let mut read = NodeFrames::default();
        let u64_at = |b: &[u8], at: usize| -> Option<u64> {
            Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        while let Some(&kind) = msg.first() {
            let len = match kind {
                0x01 | 0x02 | 0x15 => 9,
                0x03 => 3,
                0x04 => 1,
                0x11 | 0x12 => {
                    19 + usize::from(u16::from_be_bytes(msg.get(17..19)?.try_into().ok()?))
                }
                0x13 => 19,
                0x14 => 25,
                0x80.. => 3 + usize::from(u16::from_be_bytes(msg.get(1..3)?.try_into().ok()?)),
                _ => return None,
            };
            match kind {
                0x01 => read.pings.push(u64_at(msg, 1)?),
                0x02 => read.pongs.push(u64_at(msg, 1)?),
                0x03 => read.close = Some(u16::from_be_bytes(msg.get(1..3)?.try_into().ok()?)),
                _ => {}
            }
            msg = msg.get(len..)?;
        }
        Some(read)
    }

    /// The frames of one node message that a hostile client acts on ([`read_message`]).
    #[derive(Debug, Default)]
    pub struct NodeFrames {
        /// Tokens of the node's `PING`s.
        pub pings: Vec<u64>,
        /// Tokens of the node's `PONG`s.
        pub pongs: Vec<u64>,
        /// The code of the node's `CLOSE`, if it sent one.
        pub close: Option<u16>,
    }
}

/// An authenticated client link driven by hand: it sends whatever frames a test encodes with
/// [`wire`], packed into messages of the largest size, answers the node's pings (so the node
/// keeps the link) and can wait until the node has processed everything sent so far
/// ([`RawLink::sync`]: a `PONG` proves it).
pub struct RawLink {
    writer: wanmux_core::noise::LinkWriter,
    /// The message being filled.
    msg: Vec<u8>,
    pings: tokio::sync::mpsc::UnboundedReceiver<u64>,
    pongs: tokio::sync::mpsc::UnboundedReceiver<u64>,
    /// The code of the node's `CLOSE` on this link, once one came.
    close: tokio::sync::watch::Receiver<Option<u16>>,
    reader: tokio::task::JoinHandle<()>,
    /// Whether the reader still pauses after each message ([`Dial::pace`]).
    pacing: Arc<AtomicBool>,
    next_token: u64,
    /// The node's epoch of the session, from its message 2.
    pub epoch: u64,
    /// The node agreed to routed messages on this link.
    pub routed: bool,
}

/// How [`RawLink::dial`] makes a link.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dial {
    /// The link's `link_seq`.
    pub link_seq: u32,
    /// Ask for routed messages (`ROUTE` sections for other owners).
    pub routed: bool,
    /// Never read what the node sends (no pongs either: the node's pings go unanswered, and
    /// its writes back up into the socket's buffers and its own queues).
    pub unread: bool,
    /// Read slowly: one message, then this pause (pings are still answered, late). The node's
    /// queues for the link fill as if the client's path were slow.
    pub pace: Option<Duration>,
    /// `SO_RCVBUF` of the link's socket, if set: a small one makes an unread link's kernel
    /// buffers fill after a few kilobytes, so the node's own queues take the rest.
    pub recv_buffer: Option<u32>,
}

impl Drop for RawLink {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Largest plaintext of one message.
const MESSAGE: usize = 65_519;

/// A node under attack by an authenticated client, for the tests that read the process's
/// resident memory (each alone in its test binary, run with [`alone`]). The node has the smallest
/// memory cap its config allows (`limits.memory` 8 MiB, 4 MiB per pool, with a 4 MiB stream
/// window) for the client to push against, and 1,024 streams per session (what a session may
/// hold in proportion to its streams, such as the answers it queues for them, stays small beside
/// what the tests look for).
pub struct Attack {
    /// The tunnel whose node is attacked.
    pub tunnel: crate::harness::Tunnel,
    /// The client's auth, for raw links of the same identity.
    pub auth: wanmux_core::noise::ClientAuth,
    /// The node's address.
    pub server: SocketAddr,
    panics: usize,
}

impl Attack {
    /// Starts the tunnel and warms it with a checked 1 MiB transfer each way.
    pub async fn start() -> Attack {
        let panics = crate::harness::panics();
        let mut tunnel = crate::harness::Tunnel::start_with(
            crate::harness::Auth::Static { psk: false },
            1,
            |s, _| {
                s.limits.stream_window = 4 << 20;
                s.limits.memory = 8 << 20;
                s.limits.max_streams = 1024;
            },
        )
        .await;
        let auth = noise_auth(&tunnel.client_config);
        let server = tunnel.server.local_addr();
        tunnel.check_transfer(1 << 20, 1 << 20, 1).await;
        Attack {
            tunnel,
            auth,
            server,
            panics,
        }
    }

    /// After the attack: the process grew by at most `slack_kib` from `before_kib` to
    /// `after_kib`, the node still moves a checked transfer, and nothing panicked.
    pub async fn survived(mut self, before_kib: u64, after_kib: u64, slack_kib: u64) {
        assert!(
            after_kib <= before_kib + slack_kib,
            "memory grew from {before_kib} KiB to {after_kib} KiB"
        );
        self.tunnel.check_transfer(1 << 20, 1 << 20, 2).await;
        assert_eq!(crate::harness::panics(), self.panics, "something panicked");
    }
}

/// Runs `test` on a runtime of its own, alone: tests that read the process's resident memory
/// must not run beside each other.
pub fn alone<F: std::future::Future>(test: F) -> F::Output {
    static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(test)
}

impl RawLink {
    /// Completes a handshake with `auth` into the session with secret `session` (see
    /// `SessionSecret`) of the node at `server`.
    pub async fn connect(
        server: SocketAddr,
        auth: &wanmux_core::noise::ClientAuth,
        session: [u8; 32],
        link_seq: u32,
    ) -> Result<RawLink, wanmux_core::noise::LinkError> {
        let dial = Dial {
            link_seq,
            ..Dial::default()
        };
        RawLink::dial(server, auth, session, dial).await
    }

    /// [`RawLink::connect`], made as `dial` says.
    pub async fn dial(
        server: SocketAddr,
        auth: &wanmux_core::noise::ClientAuth,
        session: [u8; 32],
        dial: Dial,
    ) -> Result<RawLink, wanmux_core::noise::LinkError> {
        let socket = match server {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        if let Some(size) = dial.recv_buffer {
            socket.set_recv_buffer_size(size)?;
        }
        let tcp = socket.connect(server).await?;
        let hello = wanmux_core::noise::ClientHello {
            session: wanmux_core::noise::SessionSecret::from_bytes(session),
            link_seq: dial.link_seq,
            lane: false,
            relay: dial.routed,
        };
        let (mut rd, writer, reply) =
            wanmux_core::noise::connect(tcp, auth, &hello, &PING, HANDSHAKE_LIMIT).await?;
        let (ping_tx, pings) = tokio::sync::mpsc::unbounded_channel();
        let (pong_tx, pongs) = tokio::sync::mpsc::unbounded_channel();
        let (close_tx, close) = tokio::sync::watch::channel(None);
        let (unread, pace) = (dial.unread, dial.pace);
        let pacing = Arc::new(AtomicBool::new(pace.is_some()));
        let paced = pacing.clone();
        let reader = tokio::spawn(async move {
            if unread {
                // Holds the reading half (and the senders) without reading.
                let _held = (rd, ping_tx, pong_tx, close_tx);
                return std::future::pending().await;
            }
            while let Ok(Some(msg)) = rd.recv().await {
                if let Some(pace) = pace.filter(|_| paced.load(Ordering::Relaxed)) {
                    tokio::time::sleep(pace).await;
                }
                if matches!(msg.first(), Some(0x07 | 0x08)) {
                    // A routed message (other owners' sections, or ROUTE_DOWN): skipped.
                    continue;
                }
                let Some(read) = wire::read_message(&msg) else {
                    return;
                };
                for t in read.pings {
                    let _ = ping_tx.send(t);
                }
                for t in read.pongs {
                    let _ = pong_tx.send(t);
                }
                if let Some(code) = read.close {
                    let _ = close_tx.send(Some(code));
                }
            }
        });
        Ok(RawLink {
            writer,
            msg: Vec::with_capacity(MESSAGE),
            pings,
            pongs,
            close,
            reader,
            pacing,
            next_token: 1 << 32,
            epoch: reply.epoch,
            routed: reply.relay,
        })
    }

    /// Writes one routed message (`wire::route` sections only) after everything added so far,
    /// and every megabyte, flushes.
    pub async fn send_routed(&mut self, msg: &[u8]) -> Result<(), wanmux_core::noise::LinkError> {
        self.seal()?;
        self.writer.seal(msg)?;
        if self.writer.pending() > 256 << 10 {
            self.writer.flush().await?;
        }
        Ok(())
    }

    /// Adds one encoded frame; full messages are sealed and, every megabyte, written.
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), wanmux_core::noise::LinkError> {
        if self.msg.len() + frame.len() > MESSAGE - 64 {
            self.seal()?;
            // Written often, so the test's own buffers stay small beside the node's memory.
            if self.writer.pending() > 256 << 10 {
                self.writer.flush().await?;
            }
        }
        self.msg.extend_from_slice(frame);
        Ok(())
    }

    /// Seals the message being filled, with pongs for the node's pings.
    fn seal(&mut self) -> Result<(), wanmux_core::noise::LinkError> {
        while let Ok(t) = self.pings.try_recv() {
            wire::pong(&mut self.msg, t);
        }
        if !self.msg.is_empty() {
            self.writer.seal(&self.msg)?;
            self.msg.clear();
        }
        Ok(())
    }

    /// The reader stops pausing after each message ([`Dial::pace`]) and reads what the node
    /// queued as fast as it comes: the node's next ping, behind it, is answered within the
    /// node's dead timer however long the paced reading let the queue grow.
    pub fn stop_pacing(&self) {
        self.pacing.store(false, Ordering::Relaxed);
    }

    /// The code of the `CLOSE` the node sent on this link (for example
    /// `wanmux_core::frame::close::NO_MEMORY` for a link it refused), if one came.
    pub fn close_code(&self) -> Option<u16> {
        *self.close.borrow()
    }

    /// [`RawLink::close_code`], waiting up to `limit` for the node's `CLOSE` to be read (after
    /// a write failed, the reader may not have come to it yet).
    pub async fn close_code_within(&mut self, limit: Duration) -> Option<u16> {
        let closed = self.close.wait_for(Option::is_some);
        let _ = tokio::time::timeout(limit, closed).await;
        self.close_code()
    }

    /// Writes everything added so far.
    pub async fn flush(&mut self) -> Result<(), wanmux_core::noise::LinkError> {
        self.seal()?;
        self.writer.flush().await
    }

    /// Sends a `PING` after everything added so far and waits for its `PONG`: the node has
    /// processed every frame before it. An error if the node closed the link, or took longer
    /// than `limit`.
    pub async fn sync(&mut self, limit: Duration) -> Result<(), wanmux_core::noise::LinkError> {
        use wanmux_core::noise::LinkError;
        let token = self.next_token;
        self.next_token += 1;
        wire::ping(&mut self.msg, token);
        self.flush().await?;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            tokio::select! {
                t = self.pongs.recv() => match t {
                    Some(t) if t == token => return Ok(()),
                    Some(_) => {}
                    None => return Err(LinkError::Closed),
                },
                t = self.pings.recv() => match t {
                    Some(t) => {
                        wire::pong(&mut self.msg, t);
                        self.flush().await?;
                    }
                    None => return Err(LinkError::Closed),
                },
                _ = tokio::time::sleep_until(deadline) => return Err(LinkError::Timeout),
            }
        }
    }
}
