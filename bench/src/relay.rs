//! A TCP relay for link-death benchmarks: it forwards every connection it accepts to one
//! target, can shape the path (a bottleneck rate shared by all connections, a one-way delay,
//! a bounded queue), and kills a chosen connection with an RST on both sides on command.
//!
//! Model of a shaped path, per direction: every chunk the relay reads takes a turn on one
//! bottleneck shared by all connections (serialised at `rate`, first come first served), then
//! travels for `delay`, then is written out. When the bottleneck's backlog reaches `queue`, the
//! relay stops reading, so the senders' TCP flow control holds what a router would queue or
//! drop. The relay's own sockets get small receive buffers when shaping, so little data waits
//! in the relay's kernel where the model cannot see it; the senders' socket buffers still hold
//! data the relay has not read (as a sending host's buffers do on a real path, though here
//! their TCP sees a loopback RTT, not the emulated one). Without shaping the relay is a plain
//! copy loop.
//!
//! Unlike the test harness's fault relay (`tests/src/fault.rs`, which stalls, blackholes and
//! restores links to test correctness), this one exists to make timing meaningful: it counts
//! the bytes it forwarded and the bytes a kill destroyed inside the emulated path, per
//! direction. It runs on a thread of its own, so its timers do not wait for a busy tunnel.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

/// Copy buffer of an unshaped direction.
const COPY_BUF: usize = 256 * 1024;
/// Largest chunk a shaped direction reads at once: small enough that one chunk is a short turn
/// on the bottleneck (1.3 ms at 200 Mbit/s), large enough to keep syscalls few.
const CHUNK: usize = 32 * 1024;
/// Chunks in flight per shaped direction of one connection (the delay line). At most
/// `CHUNK` bytes each; the bottleneck's queue limit normally binds long before this.
const LINE_CHUNKS: usize = 4096;
/// Receive buffer of the relay's sockets when shaping.
const SHAPED_RCVBUF: u32 = 32 * 1024;

/// How the relay shapes the path.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Shape {
    /// Bottleneck rate per direction, shared by all connections, in bits per second.
    pub(crate) rate_bps: Option<f64>,
    /// One-way delay added to every byte.
    pub(crate) delay: Duration,
    /// Most backlog the bottleneck holds before the relay stops reading, as time at `rate`.
    pub(crate) queue: Duration,
}

impl Shape {
    fn is_shaped(&self) -> bool {
        self.rate_bps.is_some() || !self.delay.is_zero()
    }
}

/// Direction of a byte through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    /// From the connecting side (the tunnel client) to the target (the tunnel server).
    Up = 0,
    /// From the target back to the connecting side.
    Down = 1,
}

/// Byte counts of one direction.
#[derive(Debug, Default)]
struct DirCounters {
    /// Written to the far side.
    forwarded: AtomicU64,
    /// Read and not yet written (in the emulated path), all connections.
    in_path: AtomicU64,
    /// Destroyed inside the emulated path by a kill.
    dropped: AtomicU64,
}

struct Conn {
    kill: watch::Sender<bool>,
    open: bool,
    /// Bytes of this connection inside the emulated path, per direction.
    in_path: [Arc<AtomicU64>; 2],
}

struct Shared {
    conns: Mutex<Vec<Conn>>,
    dirs: [DirCounters; 2],
    /// When each direction's bottleneck is next free.
    bottleneck: [Mutex<Instant>; 2],
    shape: Shape,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, Vec<Conn>> {
        // Only plain field updates run under this lock, so it is never poisoned by a panic
        // halfway through an update that matters; take the data either way.
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running relay. Dropping it kills every connection and stops it.
pub(crate) struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        for c in self.shared.conns().iter() {
            c.kill.send_replace(true);
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Relay {
    /// Starts a relay on `127.0.0.1:0` that forwards every connection to `target`.
    pub(crate) async fn start(target: SocketAddr, shape: Shape) -> io::Result<Relay> {
        let now = Instant::now();
        let shared = Arc::new(Shared {
            conns: Mutex::new(Vec::new()),
            dirs: Default::default(),
            bottleneck: [Mutex::new(now), Mutex::new(now)],
            shape,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = oneshot::channel::<io::Result<SocketAddr>>();
        let relay = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("bench-relay".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match listen(shape.is_shaped()) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = bound_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = bound_tx.send(listener.local_addr());
                    let accept = tokio::spawn(accept_loop(listener, target, relay));
                    let _ = stopped.await;
                    accept.abort();
                    // Let the connections act on their kill before the runtime drops them.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                });
            })?;
        let addr = bound_rx
            .await
            .map_err(|_| io::Error::other("the relay thread ended before it listened"))??;
        Ok(Relay {
            addr,
            shared,
            stop: Some(stop),
        })
    }

    /// Where clients connect.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections open now.
    #[cfg(test)]
    fn open_count(&self) -> usize {
        self.shared.conns().iter().filter(|c| c.open).count()
    }

    /// Kills the oldest open connection with an RST on both sides, so that killing once a
    /// second cycles through every link while the client redials. Returns whether there was
    /// one.
    pub(crate) fn kill_oldest(&self) -> bool {
        let mut conns = self.shared.conns();
        let Some(c) = conns.iter_mut().find(|c| c.open) else {
            return false;
        };
        c.open = false;
        // What the emulated path held for this connection is gone. (The task may still write
        // part of it before it sees the kill; the count is what was in the path at the kill.)
        for d in [Dir::Up, Dir::Down] {
            let n = c.in_path[d as usize].load(Ordering::Relaxed);
            self.shared.dirs[d as usize]
                .dropped
                .fetch_add(n, Ordering::Relaxed);
        }
        c.kill.send_replace(true);
        true
    }

    /// Bytes written out in direction `d`, all connections.
    pub(crate) fn forwarded(&self, d: Dir) -> u64 {
        self.shared.dirs[d as usize]
            .forwarded
            .load(Ordering::Relaxed)
    }

    /// Bytes a kill destroyed inside the emulated path in direction `d` (0 without shaping,
    /// where the relay holds at most one copy buffer).
    pub(crate) fn dropped(&self, d: Dir) -> u64 {
        self.shared.dirs[d as usize].dropped.load(Ordering::Relaxed)
    }

    /// Bytes inside the emulated path now, direction `d`.
    #[cfg(test)]
    fn in_path(&self, d: Dir) -> u64 {
        self.shared.dirs[d as usize].in_path.load(Ordering::Relaxed)
    }
}

fn listen(shaped: bool) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    if shaped {
        // Accepted sockets inherit it, and it must be set before the handshake to bound the
        // window the relay advertises.
        socket.set_recv_buffer_size(SHAPED_RCVBUF)?;
    }
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    socket.listen(1024)
}

async fn connect(target: SocketAddr, shaped: bool) -> io::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if shaped {
        socket.set_recv_buffer_size(SHAPED_RCVBUF)?;
    }
    socket.connect(target).await
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (kill_tx, kill) = watch::channel(false);
        let in_path = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
        let index = {
            let mut conns = shared.conns();
            conns.push(Conn {
                kill: kill_tx,
                open: true,
                in_path: in_path.clone(),
            });
            conns.len() - 1
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            run_conn(inbound, target, kill, &shared, &in_path).await;
            shared.conns()[index].open = false;
        });
    }
}

/// Forwards one connection until both directions ended (FIN passed on), one side failed or
/// it is killed; the last two end with an RST on both sides.
async fn run_conn(
    inbound: TcpStream,
    target: SocketAddr,
    mut kill: watch::Receiver<bool>,
    shared: &Shared,
    in_path: &[Arc<AtomicU64>; 2],
) {
    let shaped = shared.shape.is_shaped();
    let outbound = tokio::select! {
        c = connect(target, shaped) => c,
        _ = kill.wait_for(|k| *k) => Err(io::ErrorKind::ConnectionAborted.into()),
    };
    let Ok(mut outbound) = outbound else {
        let _ = inbound.set_zero_linger();
        return;
    };
    let mut inbound = inbound;
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let clean = {
        let (mut ri, mut wi) = inbound.split();
        let (mut ro, mut wo) = outbound.split();
        let up = pipe(&mut ri, &mut wo, Dir::Up, shared, &in_path[0]);
        let down = pipe(&mut ro, &mut wi, Dir::Down, shared, &in_path[1]);
        tokio::select! {
            r = async { tokio::try_join!(up, down) } => r.is_ok(),
            _ = kill.wait_for(|k| *k) => false,
        }
    };
    // Whatever is left in the emulated path is gone with the connection.
    for d in [Dir::Up, Dir::Down] {
        let left = in_path[d as usize].swap(0, Ordering::Relaxed);
        shared.dirs[d as usize]
            .in_path
            .fetch_sub(left, Ordering::Relaxed);
    }
    if !clean {
        // SO_LINGER 0: closing sends an RST instead of a FIN.
        let _ = inbound.set_zero_linger();
        let _ = outbound.set_zero_linger();
    }
}

/// Moves one direction until its source ends (then passes the FIN on) or fails.
async fn pipe<R, W>(
    from: &mut R,
    to: &mut W,
    dir: Dir,
    shared: &Shared,
    in_path: &AtomicU64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let counters = &shared.dirs[dir as usize];
    if !shared.shape.is_shaped() {
        let mut buf = vec![0u8; COPY_BUF];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return to.shutdown().await;
            }
            to.write_all(&buf[..n]).await?;
            counters.forwarded.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    let shape = shared.shape;
    let bottleneck = &shared.bottleneck[dir as usize];
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(LINE_CHUNKS);
    let read = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            if shape.rate_bps.is_some() {
                // Wait for room in the bottleneck's queue.
                let free_at = *lock(bottleneck);
                if let Some(wait) = free_at.checked_duration_since(Instant::now() + shape.queue) {
                    tokio::time::sleep(wait).await;
                }
            }
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            let now = Instant::now();
            let departs = match shape.rate_bps {
                Some(rate) => {
                    let mut free_at = lock(bottleneck);
                    let start = (*free_at).max(now);
                    *free_at = start + Duration::from_secs_f64(n as f64 * 8.0 / rate);
                    *free_at
                }
                None => now,
            };
            in_path.fetch_add(n as u64, Ordering::Relaxed);
            counters.in_path.fetch_add(n as u64, Ordering::Relaxed);
            let chunk = Bytes::copy_from_slice(&buf[..n]);
            if tx.send((departs + shape.delay, chunk)).await.is_err() {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
        }
    };
    let write = async {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at.into()).await;
            to.write_all(&chunk).await?;
            let n = chunk.len() as u64;
            in_path.fetch_sub(n, Ordering::Relaxed);
            counters.in_path.fetch_sub(n, Ordering::Relaxed);
            counters.forwarded.fetch_add(n, Ordering::Relaxed);
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}

fn lock(m: &Mutex<Instant>) -> MutexGuard<'_, Instant> {
    // Only an `Instant` is stored under this lock; a poisoned one still holds a valid value.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        addr
    }

    async fn round_trip(relay: &Relay, data: &[u8]) -> (Vec<u8>, Duration) {
        let mut s = TcpStream::connect(relay.addr()).await.unwrap();
        let t0 = Instant::now();
        let (mut r, mut w) = s.split();
        let send = async {
            w.write_all(data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let recv = r.read_to_end(&mut back);
        let ((), got) = tokio::join!(send, recv);
        got.unwrap();
        (back, t0.elapsed())
    }

    #[tokio::test]
    async fn forwards_both_ways_unshaped() {
        let relay = Relay::start(echo_server().await, Shape::default())
            .await
            .unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (back, _) = round_trip(&relay, &data).await;
        assert_eq!(back, data);
        assert_eq!(relay.forwarded(Dir::Up), data.len() as u64);
        assert_eq!(relay.forwarded(Dir::Down), data.len() as u64);
    }

    #[tokio::test]
    async fn shaping_adds_delay_and_limits_rate() {
        let shape = Shape {
            rate_bps: Some(40e6),
            delay: Duration::from_millis(30),
            queue: Duration::from_millis(20),
        };
        let relay = Relay::start(echo_server().await, shape).await.unwrap();
        // One byte: a round trip of at least two one-way delays.
        let (back, rtt) = round_trip(&relay, b"x").await;
        assert_eq!(back, b"x");
        assert!(rtt >= Duration::from_millis(60), "{rtt:?}");
        // 1 MB each way at 40 Mbit/s is at least 0.2 s of serialisation.
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        let (back, took) = round_trip(&relay, &data).await;
        assert_eq!(back, data);
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert_eq!(relay.in_path(Dir::Up), 0);
        assert_eq!(relay.in_path(Dir::Down), 0);
    }

    #[tokio::test]
    async fn kill_resets_both_sides() {
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay::start(target.local_addr().unwrap(), Shape::default())
            .await
            .unwrap();
        let mut client = TcpStream::connect(relay.addr()).await.unwrap();
        let (mut server, _) = target.accept().await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(relay.open_count(), 1);
        assert!(relay.kill_oldest());
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        let err = client.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(relay.open_count(), 0);
        assert!(!relay.kill_oldest());
    }
}
