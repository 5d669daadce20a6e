//! The TCP relay: its thread and accept loop, the table of links, and the commands and counts
//! a test or benchmark uses.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch};

use crate::link::{self, DirCounters, Link, Mode, Tamper};
use crate::shape::{Bottleneck, Shape, SHAPED_RCVBUF};
use crate::Dir;

/// Which links a command acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// One link, by its index in accept order (0 is the first connection the relay accepted).
    One(usize),
    /// The open link accepted first; killing it each time cycles through the links as the
    /// client redials them.
    Oldest,
    /// Every open link; `stall` and `blackhole` also apply to links accepted while set.
    All,
}

/// A link in the relay's table.
struct Entry {
    mode: watch::Sender<Mode>,
    /// Cleared when the link is reset or its task ends.
    open: bool,
    /// Bytes of this link inside the emulated path, per direction.
    in_path: [Arc<AtomicU64>; 2],
}

struct State {
    links: Vec<Entry>,
    accepted_at: Vec<Instant>,
    /// The mode new links start in (`Forward`, `Stall` or `Blackhole`).
    new_mode: Mode,
    /// What new links do to each direction.
    tamper: [Option<Tamper>; 2],
}

struct Shared {
    state: Mutex<State>,
    dirs: [DirCounters; 2],
    shape: Shape,
    /// The bottleneck of each direction, when links share it.
    bottleneck: [Arc<Mutex<Instant>>; 2],
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Only plain field updates run under this lock, so a panic cannot leave it halfway
        // through one that matters; take the data either way.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running TCP relay; dropping it resets every link and stops it.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        for link in &self.shared.lock().links {
            link.mode.send_replace(Mode::Reset);
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Relay {
    /// Starts a relay on `127.0.0.1:0` that forwards every connection to `target` through a
    /// path shaped as `shape` says (`Shape::default()`: not at all).
    pub async fn start(target: SocketAddr, shape: Shape) -> io::Result<Relay> {
        let now = Instant::now();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                links: Vec::new(),
                accepted_at: Vec::new(),
                new_mode: Mode::Forward,
                tamper: [None; 2],
            }),
            dirs: Default::default(),
            shape,
            bottleneck: [Arc::new(Mutex::new(now)), Arc::new(Mutex::new(now))],
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = oneshot::channel::<io::Result<SocketAddr>>();
        let relay = Arc::clone(&shared);
        // A thread and a runtime of its own: the network is no part of the daemons under test.
        std::thread::Builder::new()
            .name("relay".into())
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
                    // Let the links act on their reset before the runtime drops them.
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

    /// Closes `which` with an RST on both sides and returns how many links that was. What
    /// they had inside the emulated path counts as [`dropped`](Relay::dropped).
    pub fn reset(&self, which: Links) -> usize {
        let mut st = self.shared.lock();
        let mut reset = 0;
        for link in targets(&mut st.links, which) {
            link.open = false;
            // The task may still write part of it before it sees the reset; the count is what
            // was in the path at the reset.
            for d in Dir::BOTH {
                let n = link.in_path[d as usize].load(Ordering::Relaxed);
                self.shared.dirs[d as usize]
                    .dropped
                    .fetch_add(n, Ordering::Relaxed);
            }
            link.mode.send_replace(Mode::Reset);
            reset += 1;
        }
        reset
    }

    /// Flips the lowest bit of byte `at` of direction `dir` on every link accepted from now on
    /// (instead of any damage set before).
    pub fn flip_bit(&self, dir: Dir, at: u64) {
        self.shared.lock().tamper[dir as usize] = Some(Tamper::FlipBit(at));
    }

    /// Ends direction `dir` (a FIN) after `at` bytes on every link accepted from now on,
    /// discarding what its source sends after them (instead of any damage set before).
    pub fn cut(&self, dir: Dir, at: u64) {
        self.shared.lock().tamper[dir as usize] = Some(Tamper::Cut(at));
    }

    fn set(&self, which: Links, mode: Mode) {
        let mut st = self.shared.lock();
        if which == Links::All {
            st.new_mode = mode;
        }
        for link in targets(&mut st.links, which) {
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
        for link in targets(&mut st.links, which) {
            link.mode.send_if_modified(|m| {
                let change = *m == fault;
                if change {
                    *m = Mode::Forward;
                }
                change
            });
        }
    }

    /// Indices of the links still open (neither reset nor ended), in accept order.
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

    /// Bytes written out in direction `d`, all links.
    pub fn forwarded(&self, d: Dir) -> u64 {
        self.shared.dirs[d as usize]
            .forwarded
            .load(Ordering::Relaxed)
    }

    /// Bytes written out in both directions, all links.
    pub fn forwarded_both(&self) -> u64 {
        Dir::BOTH.iter().map(|&d| self.forwarded(d)).sum()
    }

    /// Bytes a reset destroyed inside the emulated path in direction `d` (0 without shaping,
    /// where the relay holds at most one copy buffer per direction and link).
    pub fn dropped(&self, d: Dir) -> u64 {
        self.shared.dirs[d as usize].dropped.load(Ordering::Relaxed)
    }

    /// Bytes a blackhole read and discarded in direction `d`.
    pub fn swallowed(&self, d: Dir) -> u64 {
        self.shared.dirs[d as usize]
            .swallowed
            .load(Ordering::Relaxed)
    }

    /// Bytes inside the emulated path now in direction `d` (0 without shaping).
    pub fn in_path(&self, d: Dir) -> u64 {
        self.shared.dirs[d as usize].in_path.load(Ordering::Relaxed)
    }
}

/// The open links among `which`.
fn targets(links: &mut [Entry], which: Links) -> impl Iterator<Item = &mut Entry> {
    let range = match which {
        Links::One(i) if i < links.len() => i..i + 1,
        Links::One(_) => 0..0,
        Links::Oldest => match links.iter().position(|l| l.open) {
            Some(i) => i..i + 1,
            None => 0..0,
        },
        Links::All => 0..links.len(),
    };
    links[range].iter_mut().filter(|l| l.open)
}

fn listen(shaped: bool) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    if shaped {
        // Accepted sockets inherit it, and it must be set before the handshake to bound the
        // window the relay advertises.
        socket.set_recv_buffer_size(SHAPED_RCVBUF)?;
    }
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    // A deep accept queue: a reconnect storm must reach the accept loop (and its timestamps),
    // not overflow in the kernel.
    socket.listen(4096)
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let now = Instant::now();
        let in_path = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
        let bottleneck = match shared.shape.bottleneck {
            Bottleneck::Shared => shared.bottleneck.clone(),
            Bottleneck::PerLink => [Arc::new(Mutex::new(now)), Arc::new(Mutex::new(now))],
        };
        let (index, link) = {
            let mut st = shared.lock();
            st.accepted_at.push(now);
            let (tx, mode) = watch::channel(st.new_mode);
            st.links.push(Entry {
                mode: tx,
                open: true,
                in_path: in_path.clone(),
            });
            let link = Link {
                mode,
                in_path,
                tamper: st.tamper,
                bottleneck,
            };
            (st.links.len() - 1, link)
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            link::run(inbound, target, &link, shared.shape, &shared.dirs).await;
            shared.lock().links[index].open = false;
        });
    }
}
