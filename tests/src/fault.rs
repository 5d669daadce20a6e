//! A fault-injecting TCP relay for the links between a client and a server node.
//!
//! Point the client's node address at [`FaultRelay::addr`] (with
//! [`point_client_at`](crate::harness::point_client_at)); the relay dials the server for every
//! connection it accepts and copies bytes both ways. Each relayed connection (a link) is known
//! by its index in accept order, and a test acts on one link or on all of them:
//!
//! | command | effect |
//! | --- | --- |
//! | [`stall`](FaultRelay::stall) | stop forwarding both ways; the sockets stay open, so the kernel buffers fill and the senders block |
//! | [`resume`](FaultRelay::resume) | undo a stall: forward again, nothing lost |
//! | [`blackhole`](FaultRelay::blackhole) | read and discard everything both ways (FIN and reset included); the sockets stay open |
//! | [`restore`](FaultRelay::restore) | undo a blackhole: forward again from the next byte |
//! | [`reset`](FaultRelay::reset) | close both sockets with an RST |
//!
//! `stall` and `blackhole` aimed at [`Links::All`] also apply to connections accepted while
//! they are set (a path that is down stays down for redials), until `resume` / `restore` on
//! `All` clears them. A forwarding link passes an end of stream on as a FIN and an error as an
//! RST on the other side, like a transparent middlebox.
//!
//! The relay also records when it accepted each connection (what a server sees of a reconnect
//! storm) and counts the bytes it forwarded. It runs on a thread of its own, and its copy loop
//! uses 256 KiB buffers: a tunnel through it moves 256 MiB each way over 4 links in about a
//! second on loopback.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch};
use wanmux_config::{ClientConfig, ServerConfig};

use crate::harness::{Auth, Tunnel};

/// Copy buffer per direction per link. Allocated zeroed, so pages a quiet link never touches
/// cost no resident memory.
const BUF: usize = 256 * 1024;

/// Which links a command acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// One link, by its index in accept order (0 is the first connection the relay accepted).
    One(usize),
    /// Every open link; `stall` and `blackhole` also apply to links accepted while set.
    All,
}

/// What a link does with the bytes it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Copy both ways.
    Forward,
    /// Read nothing, write nothing.
    Stall,
    /// Read and discard.
    Blackhole,
    /// Close both sockets with an RST (final).
    Reset,
}

struct Link {
    mode: watch::Sender<Mode>,
    /// Cleared when the link's task ends.
    open: bool,
}

struct State {
    links: Vec<Link>,
    accepted_at: Vec<Instant>,
    /// The mode new connections start in (`Forward`, `Stall` or `Blackhole`).
    new_mode: Mode,
}

struct Shared {
    state: Mutex<State>,
    forwarded: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Only plain field updates run under the lock.
        self.state.lock().expect("relay state lock poisoned")
    }
}

/// A running relay; dropping it resets every link and stops it.
///
/// The relay runs on a thread of its own (a one-thread runtime), as the network is no part of
/// the daemons: its timestamps and its forwarding do not wait for the test's runtime, busy or
/// even frozen.
pub struct FaultRelay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        for link in &self.shared.lock().links {
            link.mode.send_replace(Mode::Reset);
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl FaultRelay {
    /// Starts a relay on `127.0.0.1:0` that forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> FaultRelay {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                links: Vec::new(),
                accepted_at: Vec::new(),
                new_mode: Mode::Forward,
            }),
            forwarded: AtomicU64::new(0),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let (bound, addr) = oneshot::channel();
        let relay = shared.clone();
        std::thread::Builder::new()
            .name("fault-relay".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("relay runtime");
                rt.block_on(async move {
                    // A deep accept queue: a reconnect storm must reach the accept loop (and
                    // its timestamps), not overflow in the kernel.
                    let socket = TcpSocket::new_v4().expect("socket");
                    socket
                        .bind("127.0.0.1:0".parse().expect("addr"))
                        .expect("bind relay");
                    let listener = socket.listen(4096).expect("listen");
                    let _ = bound.send(listener.local_addr().expect("local addr"));
                    let accept = tokio::spawn(accept_loop(listener, target, relay));
                    let _ = stopped.await;
                    accept.abort();
                    // Let the links act on their reset before the runtime drops them.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                });
            })
            .expect("spawn relay thread");
        let addr = addr.await.expect("relay thread binds");
        FaultRelay {
            addr,
            shared,
            stop: Some(stop),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding on `which`, keeping the sockets open.
    pub fn stall(&self, which: Links) {
        self.set(which, Mode::Stall);
    }

    /// Forwards again on stalled links among `which`.
    pub fn resume(&self, which: Links) {
        self.clear(which, Mode::Stall);
    }

    /// Swallows every byte on `which`, keeping the sockets open.
    pub fn blackhole(&self, which: Links) {
        self.set(which, Mode::Blackhole);
    }

    /// Forwards again on blackholed links among `which`.
    pub fn restore(&self, which: Links) {
        self.clear(which, Mode::Blackhole);
    }

    /// Closes `which` with an RST on both sides.
    pub fn reset(&self, which: Links) {
        let st = self.shared.lock();
        for link in targets(&st.links, which) {
            link.mode.send_replace(Mode::Reset);
        }
    }

    fn set(&self, which: Links, mode: Mode) {
        let mut st = self.shared.lock();
        if which == Links::All {
            st.new_mode = mode;
        }
        for link in targets(&st.links, which) {
            link.mode.send_if_modified(|m| {
                let change = *m != Mode::Reset && *m != mode;
                if change {
                    *m = mode;
                }
                change
            });
        }
    }

    fn clear(&self, which: Links, fault: Mode) {
        let mut st = self.shared.lock();
        if which == Links::All && st.new_mode == fault {
            st.new_mode = Mode::Forward;
        }
        for link in targets(&st.links, which) {
            link.mode.send_if_modified(|m| {
                let change = *m == fault;
                if change {
                    *m = Mode::Forward;
                }
                change
            });
        }
    }

    /// Indices of the links still open, in accept order.
    pub fn open_links(&self) -> Vec<usize> {
        let st = self.shared.lock();
        (0..st.links.len()).filter(|&i| st.links[i].open).collect()
    }

    /// Open links that are forwarding (neither stalled nor blackholed).
    pub fn forwarding_links(&self) -> Vec<usize> {
        let st = self.shared.lock();
        (0..st.links.len())
            .filter(|&i| st.links[i].open && *st.links[i].mode.borrow() == Mode::Forward)
            .collect()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.lock().accepted_at.len()
    }

    /// When each connection was accepted, in accept order.
    pub fn accept_times(&self) -> Vec<Instant> {
        self.shared.lock().accepted_at.clone()
    }

    /// Bytes forwarded so far, both directions, all links.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }
}

/// Starts a [`Tunnel`] whose links go through a [`FaultRelay`]: application server, server
/// node, relay, then the client with `links` links, which are all up when this returns. `tweak`
/// changes both configs first, as in [`Tunnel::start_with`].
pub async fn relayed_tunnel(
    auth: Auth,
    links: u16,
    tweak: impl FnOnce(&mut ServerConfig, &mut ClientConfig),
) -> (Tunnel, FaultRelay) {
    Tunnel::start_fronted(auth, links, tweak, async |server| {
        let relay = FaultRelay::start(server).await;
        let addr = relay.addr();
        (relay, vec![addr])
    })
    .await
}

fn targets(links: &[Link], which: Links) -> impl Iterator<Item = &Link> {
    let range = match which {
        Links::One(i) if i < links.len() => i..i + 1,
        Links::One(_) => 0..0,
        Links::All => 0..links.len(),
    };
    links[range].iter().filter(|l| l.open)
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let now = Instant::now();
        let (index, mode) = {
            let mut st = shared.lock();
            st.accepted_at.push(now);
            let (tx, rx) = watch::channel(st.new_mode);
            st.links.push(Link {
                mode: tx,
                open: true,
            });
            (st.links.len() - 1, rx)
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            relay(inbound, target, mode, &shared).await;
            shared.lock().links[index].open = false;
        });
    }
}

/// Runs one link until both directions ended or it is reset.
async fn relay(
    inbound: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    shared: &Shared,
) {
    let outbound = tokio::select! {
        c = TcpStream::connect(target) => c,
        _ = mode.wait_for(|m| *m == Mode::Reset) => Err(io::ErrorKind::ConnectionAborted.into()),
    };
    let Ok(outbound) = outbound else {
        let _ = inbound.set_zero_linger();
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (mut ri, mut wi) = inbound.into_split();
    let (mut ro, mut wo) = outbound.into_split();
    let failed = {
        let up = pump(&mut ri, &mut wo, mode.clone(), shared);
        let down = pump(&mut ro, &mut wi, mode.clone(), shared);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        let mut failed = false;
        while !(failed || up_done && down_done) {
            tokio::select! {
                end = &mut up, if !up_done => { up_done = true; failed = end == End::Failed; }
                end = &mut down, if !down_done => { down_done = true; failed = end == End::Failed; }
            }
        }
        failed
    };
    if failed || *mode.borrow_and_update() == Mode::Reset {
        // An RST only: `SO_LINGER` 0, and `forget` the write halves so that dropping them does
        // not send a FIN first. Dropping the read halves then closes the sockets.
        let _ = ri.as_ref().set_zero_linger();
        let _ = ro.as_ref().set_zero_linger();
        wi.forget();
        wo.forget();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The source ended cleanly (passed on as a FIN while forwarding), or ended while
    /// blackholed (passed on as nothing).
    Done,
    /// The link was reset, or a socket failed while forwarding: reset both sides.
    Failed,
}

/// Copies `from` -> `to` as the link's mode says, until `from` ends or the link is reset.
async fn pump(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    shared: &Shared,
) -> End {
    let mut buf = vec![0u8; BUF];
    let (mut pos, mut len) = (0, 0);
    let mut eof = false;
    loop {
        // Reads and writes below are cancel-safe: a mode change in between loses no byte.
        let m = *mode.borrow_and_update();
        match m {
            Mode::Reset => return End::Failed,
            Mode::Stall => {
                if mode.changed().await.is_err() {
                    return End::Failed;
                }
            }
            Mode::Blackhole => {
                // Whatever was read and not yet written is lost, as on a path that drops it.
                (pos, len) = (0, 0);
                if eof {
                    if mode.changed().await.is_err() {
                        return End::Failed;
                    }
                    continue;
                }
                tokio::select! {
                    r = from.read(&mut buf) => if !matches!(r, Ok(n) if n > 0) {
                        // An end or a reset from the peer is swallowed too; nothing more
                        // comes from it.
                        eof = true;
                    },
                    c = mode.changed() => if c.is_err() { return End::Failed },
                }
            }
            Mode::Forward => {
                if pos < len {
                    tokio::select! {
                        r = to.write(&buf[pos..len]) => match r {
                            Ok(n) => {
                                pos += n;
                                shared.forwarded.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            Err(_) => return End::Failed,
                        },
                        c = mode.changed() => if c.is_err() { return End::Failed },
                    }
                } else if eof {
                    let _ = to.shutdown().await;
                    return End::Done;
                } else {
                    tokio::select! {
                        r = from.read(&mut buf) => match r {
                            Ok(0) => eof = true,
                            Ok(n) => (pos, len) = (0, n),
                            Err(_) => return End::Failed,
                        },
                        c = mode.changed() => if c.is_err() { return End::Failed },
                    }
                }
            }
        }
    }
}
