//! `wanlab-link`: forwards IP packets between two TUN devices, impairing each direction.
//!
//! Packets read from `--client-tun` go "up" and are written into `--server-tun`; packets read from
//! `--server-tun` go "down" and are written into `--client-tun`. Each direction runs on its own
//! thread: read a batch of packets (non-blocking), decide each one's fate with the pure
//! [`Direction`] model, park the survivors in a [`DelayLine`], write out whatever is due, then
//! `ppoll` the input until the next packet arrives or the next release is due. The main thread
//! only waits for signals: `SIGUSR1` prints counters, `SIGINT`/`SIGTERM` print them and exit.
#![forbid(unsafe_code)]

use std::io::{self, ErrorKind};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::time::TimeSpec;
use tun_rs::{DeviceBuilder, SyncDevice};
use wanmux_wanlab::model::{Direction, DropReason, Verdict};
use wanmux_wanlab::pool::DelayLine;
use wanmux_wanlab::spec::{DirectionSpec, LinkSpec};

/// Userspace WAN link emulator between two TUN devices (see bench/wanlab/README.md).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TUN device on the client side: packets read here go up, down packets are written here.
    /// Attaches to an existing persistent device (`ip tuntap add`) or creates it.
    #[arg(long)]
    client_tun: String,
    /// TUN device on the server side.
    #[arg(long)]
    server_tun: String,
    /// Link spec, e.g. `delay=50ms,loss=1%,rate=200mbit,queue=100ms`; `up.KEY`/`down.KEY` set
    /// one direction. Keys: delay, jitter, jitter_period, reorder, reorder_delay, loss, rate,
    /// queue, flow_rate, flow_queue, flow_match.
    #[arg(long, default_value = "")]
    link: LinkSpec,
    /// Seed of the loss, jitter and reordering generators (each direction derives its own).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Packet buffers per direction; packets beyond this are dropped (counted as `overflow`).
    #[arg(long, default_value_t = 65_536)]
    slots: u32,
    /// Largest packet, in bytes (the TUN devices' MTU must not exceed it).
    #[arg(long, default_value_t = 1500)]
    mtu: usize,
    /// Packets read per direction before checking for due releases.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Print counters every this many seconds (0: only on SIGUSR1 and at exit).
    #[arg(long, default_value_t = 0)]
    stats_interval: u64,
}

/// Counters of one direction, written by its thread, read by the main thread.
#[derive(Debug, Default)]
struct Stats {
    rx_pkts: AtomicU64,
    rx_bytes: AtomicU64,
    tx_pkts: AtomicU64,
    tx_bytes: AtomicU64,
    drop_loss: AtomicU64,
    drop_queue: AtomicU64,
    drop_flow: AtomicU64,
    drop_overflow: AtomicU64,
    tx_errors: AtomicU64,
    queued: AtomicU64,
}

impl Stats {
    fn line(&self, name: &str) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{name}: rx {} pkts {} bytes, tx {} pkts {} bytes, drop loss {} queue {} flow {} \
             overflow {}, tx_errors {}, queued {}",
            g(&self.rx_pkts),
            g(&self.rx_bytes),
            g(&self.tx_pkts),
            g(&self.tx_bytes),
            g(&self.drop_loss),
            g(&self.drop_queue),
            g(&self.drop_flow),
            g(&self.drop_overflow),
            g(&self.tx_errors),
            g(&self.queued),
        )
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.mtu >= 576, "--mtu must be at least 576");
    anyhow::ensure!(
        args.slots > 0 && args.batch > 0,
        "--slots and --batch must be positive"
    );

    let open = |name: &str| -> anyhow::Result<Arc<SyncDevice>> {
        let dev = DeviceBuilder::new()
            .name(name)
            .build_sync()
            .with_context(|| format!("opening TUN device {name}"))?;
        dev.set_nonblocking(true)
            .with_context(|| format!("setting {name} non-blocking"))?;
        Ok(Arc::new(dev))
    };
    let client = open(&args.client_tun)?;
    let server = open(&args.server_tun)?;

    // Block the signals in every thread; the main thread takes them with sigwait.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGUSR1] {
        signals.add(s);
    }
    signals.thread_block().context("blocking signals")?;

    describe("up", &args.link.up);
    describe("down", &args.link.down);
    let start = Instant::now();
    let up_stats = Arc::new(Stats::default());
    let down_stats = Arc::new(Stats::default());
    let dirs = [
        (
            "up",
            Arc::clone(&client),
            Arc::clone(&server),
            &args.link.up,
            args.seed.wrapping_mul(2),
            Arc::clone(&up_stats),
        ),
        (
            "down",
            Arc::clone(&server),
            Arc::clone(&client),
            &args.link.down,
            args.seed.wrapping_mul(2).wrapping_add(1),
            Arc::clone(&down_stats),
        ),
    ];
    for (name, input, output, spec, seed, stats) in dirs {
        let model = Direction::new(spec, seed, start);
        let worker = Worker {
            input,
            output,
            model,
            line: DelayLine::new(args.slots, args.mtu + 64),
            batch: args.batch,
            stats,
        };
        thread::Builder::new()
            .name(format!("wanlab-{name}"))
            .spawn(move || {
                if let Err(e) = worker.run() {
                    eprintln!("wanlab-link: {name}: {e}");
                    std::process::exit(1);
                }
            })
            .context("spawning worker")?;
    }

    let print = || {
        eprintln!("{}", up_stats.line("up"));
        eprintln!("{}", down_stats.line("down"));
    };
    if args.stats_interval > 0 {
        let (up, down) = (Arc::clone(&up_stats), Arc::clone(&down_stats));
        let every = Duration::from_secs(args.stats_interval);
        thread::Builder::new()
            .name("wanlab-stats".into())
            .spawn(move || loop {
                thread::sleep(every);
                eprintln!("{}", up.line("up"));
                eprintln!("{}", down.line("down"));
            })
            .context("spawning stats thread")?;
    }
    eprintln!("wanlab-link: running");
    loop {
        match signals.wait().context("waiting for signals")? {
            Signal::SIGUSR1 => print(),
            _ => {
                print();
                return Ok(());
            }
        }
    }
}

fn describe(name: &str, s: &DirectionSpec) {
    let rate = |r: Option<wanmux_wanlab::spec::Rate>| {
        r.map_or("unlimited".to_owned(), |r| format!("{} bit/s", r.bps()))
    };
    eprintln!(
        "wanlab-link: {name}: delay {:?} jitter {:?} (period {:?}) reorder {}% (up to {:?}) \
         loss {}% rate {} queue {:?} flow_rate {} flow_queue {:?} ({:?})",
        s.delay,
        s.jitter,
        s.effective_jitter_period(),
        s.reorder * 100.0,
        s.effective_reorder_delay(),
        s.loss * 100.0,
        rate(s.rate),
        s.queue,
        rate(s.flow_rate),
        s.flow_queue,
        s.flow_match,
    );
}

/// One direction: reads `input`, writes `output`.
struct Worker {
    input: Arc<SyncDevice>,
    output: Arc<SyncDevice>,
    model: Direction,
    line: DelayLine,
    batch: usize,
    stats: Arc<Stats>,
}

impl Worker {
    fn run(mut self) -> io::Result<()> {
        // Timers fire up to the thread's slack late (50 us by default); at 500 Mbit/s a packet
        // leaves every 24 us, so ask for 1 us.
        let _ = nix::sys::prctl::set_timerslack(1_000);
        let mut scratch = vec![0u8; self.line.packet_capacity()];
        loop {
            self.send_due(Instant::now());
            let mut got = 0;
            while got < self.batch {
                if !self.receive_one(&mut scratch)? {
                    break;
                }
                got += 1;
            }
            if got == self.batch {
                continue;
            }
            let now = Instant::now();
            self.send_due(now);
            let timeout = match self.line.next_release() {
                Some(t) if t <= Instant::now() => continue,
                Some(t) => Some(TimeSpec::from_duration(t - now)),
                None => None,
            };
            let mut fds = [PollFd::new(self.input.as_fd(), PollFlags::POLLIN)];
            match ppoll(&mut fds, timeout, None) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads one packet if one is waiting; returns whether it did.
    fn receive_one(&mut self, scratch: &mut [u8]) -> io::Result<bool> {
        let stats = &*self.stats;
        let Some(slot) = self.line.alloc() else {
            // Every buffer holds a delayed packet: take the packet off the device and drop it.
            return match self.input.recv(scratch) {
                Ok(n) => {
                    count(&stats.rx_pkts, &stats.rx_bytes, n);
                    stats.drop_overflow.fetch_add(1, Ordering::Relaxed);
                    Ok(true)
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => Ok(true),
                Err(e) => Err(e),
            };
        };
        let n = match self.input.recv(self.line.buf_mut(slot)) {
            Ok(n) => n,
            Err(e) => {
                self.line.release_slot(slot);
                return match e.kind() {
                    ErrorKind::WouldBlock => Ok(false),
                    ErrorKind::Interrupted => Ok(true),
                    _ => Err(e),
                };
            }
        };
        count(&stats.rx_pkts, &stats.rx_bytes, n);
        let now = Instant::now();
        match self.model.admit(now, &self.line.buf_mut(slot)[..n]) {
            Verdict::Forward(release) => {
                self.line.schedule(slot, n, release);
                stats
                    .queued
                    .store(self.line.len() as u64, Ordering::Relaxed);
            }
            Verdict::Drop(reason) => {
                self.line.release_slot(slot);
                let c = match reason {
                    DropReason::Loss => &stats.drop_loss,
                    DropReason::Queue => &stats.drop_queue,
                    DropReason::FlowQueue => &stats.drop_flow,
                };
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(true)
    }

    /// Writes every packet due at `now`.
    fn send_due(&mut self, now: Instant) {
        let stats = &*self.stats;
        let mut sent = false;
        while let Some(slot) = self.line.pop_due(now) {
            let packet = self.line.packet(slot);
            match self.output.send(packet) {
                Ok(_) => count(&stats.tx_pkts, &stats.tx_bytes, packet.len()),
                // The device is down or its backlog is full: the packet is lost, as on a wire.
                Err(_) => {
                    stats.tx_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.line.release_slot(slot);
            sent = true;
        }
        if sent {
            stats
                .queued
                .store(self.line.len() as u64, Ordering::Relaxed);
        }
    }
}

fn count(pkts: &AtomicU64, bytes: &AtomicU64, n: usize) {
    pkts.fetch_add(1, Ordering::Relaxed);
    bytes.fetch_add(n as u64, Ordering::Relaxed);
}
