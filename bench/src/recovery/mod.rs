//! `wanmux-bench recovery`: what a link's death costs a transfer through the tunnel.
//!
//! Everything runs in this process on loopback, like the demo: a bench server (the service),
//! a wanmux server node mapping it, a [`Relay`] in front of the node, and a wanmux client whose
//! fixed set of links all go through the relay. The relay can shape the path (a shared
//! bottleneck rate, a one-way delay, a bounded queue) so that a link's death costs what it
//! would on a WAN rather than the microseconds it costs on bare loopback.
//!
//! Per direction (upload, download) and run, three phases, each on a fresh tunnel with the same
//! config and one verified bulk transfer of `warmup + seconds`:
//!
//! 1. **no faults**: the baseline. Throughput is the receiving application's verified bytes,
//!    sampled every 100 ms.
//! 2. **one kill**: right after the sample at `warmup`, the relay resets one link (RST to both
//!    ends). Reported: the time until a 100 ms sample is back to at least 90% of phase 1's
//!    median sample, the lowest sample in the second after the kill, the transfer time lost in
//!    the two seconds after the kill (bytes short of phase 1's mean rate, in seconds at that
//!    rate), when the client saw the link die and when it had all its links again, and the
//!    bytes the kill destroyed inside the emulated path.
//! 3. **kill every `kill_every` seconds**: from `warmup` on, the oldest link is reset each
//!    period (so the kills cycle through the links as the client redials them). Reported: the
//!    mean throughput over the measured window as a ratio of phase 1's.
//!
//! Every byte of every transfer is verified (pattern and crc32), so a run that completes also
//! proves no byte was lost, duplicated or reordered across the kills. The one-kill phase also
//! reports how many stream bytes both daemons queued again because the link died unconfirmed
//! (`ClientHandle::resent_bytes` + `ServerHandle::resent_bytes`).

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

mod report;

use report::{one_kill_report, phase_report, ratio, secs, summarize, PhaseRun};
pub use report::{
    ChurnReport, DirectionReport, DirectionSummary, OneKillReport, PhaseReport, RecoveryReport,
    Sample, Spread,
};
use tokio::sync::oneshot;
use wanmux_relay::{Dir, Links, Relay, Shape};

use crate::bulk::run_bulk_counting;
use crate::demo::TunnelKeys;
use crate::report::Mbits;
use crate::server::serve_counting;
use crate::{BenchError, BulkOptions, Limit};

/// Throughput sampling period.
const SAMPLE: Duration = Duration::from_millis(100);
/// How long the links of a fresh tunnel may take to come up.
const LINKS_UP: Duration = Duration::from_secs(10);
/// How often the client's live link count is polled after a single kill.
const LINK_POLL: Duration = Duration::from_millis(1);

/// Which directions to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Client to service (the tunnel client's links carry the data upstream).
    Upload,
    /// Service to client.
    Download,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
        })
    }
}

/// Options of [`run_recovery`]. Start from [`RecoveryOptions::default`] and set fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecoveryOptions {
    /// Links between client and server (a fixed count). Default 8.
    pub links: u16,
    /// Measured seconds per phase, after the warm-up. Default 5.
    pub seconds: f64,
    /// Seconds of transfer before measuring (and before the first kill), a multiple of the
    /// 100 ms sample period. Default 1.
    pub warmup: f64,
    /// Seconds between kills in phase 3, a multiple of 100 ms. Default 1.
    pub kill_every: f64,
    /// Parallel connections of the transfer. Default 1.
    pub streams: usize,
    /// Bottleneck rate of the relay per direction, shared by all links, in Mbit/s. Default
    /// none (unlimited).
    pub rate_mbit: Option<f64>,
    /// One-way delay the relay adds, in milliseconds. Default 0.
    pub delay_ms: f64,
    /// Most backlog the bottleneck holds, in milliseconds at its rate. Default 20.
    pub queue_ms: f64,
    /// Directions to measure, in order. Default upload then download.
    pub directions: Vec<Direction>,
    /// Repetitions of everything (phases of one run are adjacent). Default 1.
    pub runs: usize,
}

impl Default for RecoveryOptions {
    fn default() -> Self {
        RecoveryOptions {
            links: 8,
            seconds: 5.0,
            warmup: 1.0,
            kill_every: 1.0,
            streams: 1,
            rate_mbit: None,
            delay_ms: 0.0,
            queue_ms: 20.0,
            directions: vec![Direction::Upload, Direction::Download],
            runs: 1,
        }
    }
}

impl RecoveryOptions {
    /// Checks the options without running anything ([`run_recovery`] checks them too).
    pub fn validate(&self) -> Result<(), RecoveryError> {
        let bad = |s: String| Err(RecoveryError::InvalidOptions(s));
        let in_range = |v: f64, lo: f64, hi: f64| v.is_finite() && v >= lo && v <= hi;
        if !(1..=256).contains(&self.links) {
            return bad(format!("links {} out of range 1..=256", self.links));
        }
        if !in_range(self.seconds, 0.1, 3600.0) {
            return bad(format!("seconds {} out of range 0.1..=3600", self.seconds));
        }
        if !in_range(self.warmup, 0.1, 600.0) {
            return bad(format!("warm-up {} out of range 0.1..=600 s", self.warmup));
        }
        if !in_range(self.kill_every, 0.1, 3600.0) {
            return bad(format!(
                "kill period {} out of range 0.1..=3600 s",
                self.kill_every
            ));
        }
        if !(1..=64).contains(&self.streams) {
            return bad(format!("streams {} out of range 1..=64", self.streams));
        }
        if let Some(r) = self.rate_mbit {
            if !in_range(r, 0.1, 100_000.0) {
                return bad(format!("rate {r} Mbit/s out of range 0.1..=100000"));
            }
        }
        if !in_range(self.delay_ms, 0.0, 10_000.0) {
            return bad(format!("delay {} ms out of range 0..=10000", self.delay_ms));
        }
        if !in_range(self.queue_ms, 1.0, 10_000.0) {
            return bad(format!("queue {} ms out of range 1..=10000", self.queue_ms));
        }
        if self.directions.is_empty() {
            return bad("no direction to measure".into());
        }
        if !(1..=100).contains(&self.runs) {
            return bad(format!("runs {} out of range 1..=100", self.runs));
        }
        Ok(())
    }

    fn shape(&self) -> Shape {
        Shape {
            rate_bps: self.rate_mbit.map(|r| r * 1e6),
            delay: Duration::from_secs_f64(self.delay_ms / 1e3),
            queue: Duration::from_secs_f64(self.queue_ms / 1e3),
            ..Shape::default()
        }
    }

    /// A time in seconds as a whole number of sample periods (at least one).
    pub(super) fn ticks(secs: f64) -> usize {
        ((secs / SAMPLE.as_secs_f64()).round() as usize).max(1)
    }
}

/// Why a recovery run failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum RecoveryError {
    /// The options make no sense.
    InvalidOptions(String),
    /// Starting a part of the test bed failed.
    Setup {
        /// Which part.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// A fresh tunnel's links did not all come up.
    LinksDown {
        /// Links asked for.
        want: usize,
        /// Links up after the wait.
        have: usize,
    },
    /// A transfer failed (including data verification).
    Transfer {
        /// Its direction.
        direction: Direction,
        /// Its phase.
        phase: &'static str,
        /// The bench error.
        source: BenchError,
    },
}

impl RecoveryError {
    /// True when received data did not match what was sent.
    pub fn is_verification_failure(&self) -> bool {
        matches!(self, RecoveryError::Transfer { source, .. } if source.is_verification_failure())
    }
}

impl fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryError::InvalidOptions(s) => write!(f, "invalid options: {s}"),
            RecoveryError::Setup { what, source } => write!(f, "cannot start {what}: {source}"),
            RecoveryError::LinksDown { want, have } => write!(
                f,
                "only {have} of {want} links came up within {} s",
                LINKS_UP.as_secs()
            ),
            RecoveryError::Transfer {
                direction,
                phase,
                source,
            } => write!(f, "{direction}, phase '{phase}': {source}"),
        }
    }
}

impl std::error::Error for RecoveryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RecoveryError::Setup { source, .. } => Some(source),
            RecoveryError::Transfer { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The bench service shared by every tunnel of a run.
struct Service {
    addr: SocketAddr,
    /// Verified bytes received by uploads, all connections.
    received: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a phase does to the links.
#[derive(Debug, Clone, Copy)]
enum Faults {
    None,
    /// One kill at the warm-up tick.
    Once,
    /// A kill every this many ticks from the warm-up tick on.
    Every(usize),
}

impl Faults {
    fn name(self) -> &'static str {
        match self {
            Faults::None => "no faults",
            Faults::Once => "one kill",
            Faults::Every(_) => "kill every period",
        }
    }
}

/// Runs the benchmark, calling `say` with a line as each phase finishes.
pub async fn run_recovery(
    opts: &RecoveryOptions,
    mut say: impl FnMut(&str),
) -> Result<RecoveryReport, RecoveryError> {
    opts.validate()?;
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .map_err(|e| setup("the bench service", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| setup("the bench service", e))?;
    let received = Arc::new(AtomicU64::new(0));
    let service = Service {
        addr,
        received: Arc::clone(&received),
        task: tokio::spawn(serve_counting(listener, received)),
    };
    let warm = RecoveryOptions::ticks(opts.warmup);
    let every = RecoveryOptions::ticks(opts.kill_every);
    let mut runs = Vec::new();
    for run in 1..=opts.runs {
        let mut dirs = Vec::new();
        for &direction in &opts.directions {
            let base = run_phase(opts, &service, direction, Faults::None).await?;
            let no_faults = phase_report(&base, warm);
            say(&format!(
                "run {run} {direction}: no faults {}",
                Mbits(no_faults.bits_per_second)
            ));
            let once = run_phase(opts, &service, direction, Faults::Once).await?;
            let one_kill = one_kill_report(&once, warm, &no_faults);
            say(&format!(
                "run {run} {direction}: one kill, back to full speed after {}",
                secs(one_kill.recovery_seconds)
            ));
            let churn = run_phase(opts, &service, direction, Faults::Every(every)).await?;
            let phase = phase_report(&churn, warm);
            let ratio = ratio(phase.bits_per_second, no_faults.bits_per_second);
            say(&format!(
                "run {run} {direction}: kill every {} s: {} ({ratio:.2} of no faults)",
                opts.kill_every,
                Mbits(phase.bits_per_second)
            ));
            dirs.push(DirectionReport {
                direction,
                no_faults,
                one_kill,
                kill_every: ChurnReport { phase, ratio },
            });
        }
        runs.push(dirs);
    }
    let summary = summarize(&opts.directions, &runs);
    Ok(RecoveryReport {
        links: opts.links,
        streams: opts.streams,
        seconds: opts.seconds,
        warmup: opts.warmup,
        kill_every: opts.kill_every,
        rate_mbit: opts.rate_mbit,
        delay_ms: opts.delay_ms,
        queue_ms: opts.queue_ms,
        runs,
        summary,
        verified: true,
    })
}

fn setup(what: &'static str, source: io::Error) -> RecoveryError {
    RecoveryError::Setup { what, source }
}

/// One transfer on a fresh tunnel through a fresh relay, with the phase's faults.
async fn run_phase(
    opts: &RecoveryOptions,
    service: &Service,
    direction: Direction,
    faults: Faults,
) -> Result<PhaseRun, RecoveryError> {
    let keys = TunnelKeys::generate();
    let server = wanmux_server::start(keys.server_config(service.addr))
        .await
        .map_err(|e| setup("the wanmux server", e))?;
    let relay = match Relay::start(server.local_addr(), opts.shape()).await {
        Ok(r) => r,
        Err(e) => {
            server.shutdown();
            return Err(setup("the relay", e));
        }
    };
    let client = match wanmux_client::start(keys.client_config(relay.addr(), opts.links)).await {
        Ok(c) => c,
        Err(e) => {
            server.shutdown();
            return Err(setup("the wanmux client", e));
        }
    };
    let result = transfer(opts, service, direction, faults, &client, &relay)
        .await
        .map(|mut run| {
            run.resent = client.resent_bytes() + server.resent_bytes();
            run
        });
    client.shutdown();
    server.shutdown();
    drop(relay);
    result
}

async fn transfer(
    opts: &RecoveryOptions,
    service: &Service,
    direction: Direction,
    faults: Faults,
    client: &wanmux_client::ClientHandle,
    relay: &Relay,
) -> Result<PhaseRun, RecoveryError> {
    let want = usize::from(opts.links);
    if tokio::time::timeout(LINKS_UP, client.wait_for_links(want))
        .await
        .is_err()
    {
        return Err(RecoveryError::LinksDown {
            want,
            have: client.live_links(),
        });
    }
    let reverse = direction == Direction::Download;
    let mut bulk = BulkOptions::new(client.first_addr().to_string());
    bulk.limit = Limit::Duration(Duration::from_secs_f64(opts.warmup + opts.seconds));
    bulk.streams = opts.streams;
    bulk.reverse = reverse;
    // What the bench client moves: bytes it wrote (upload) or received and verified
    // (download).
    let moved = Arc::new(AtomicU64::new(0));
    // The receiving application's verified bytes: the service's for an upload, this client's
    // for a download.
    let counter = if reverse {
        Arc::clone(&moved)
    } else {
        Arc::clone(&service.received)
    };
    let base = counter.load(Ordering::Relaxed);
    let warm = RecoveryOptions::ticks(opts.warmup);
    let total = warm + RecoveryOptions::ticks(opts.seconds);
    let (killed_tx, killed_rx) = oneshot::channel::<Instant>();

    let t0 = Instant::now();
    let transfer = run_bulk_counting(&bulk, moved, |_| {});
    let sampler = async {
        let mut ticks = vec![(0.0, 0, client.live_links())];
        let mut kills = Vec::new();
        let mut killed_tx = Some(killed_tx);
        let mut ticker = tokio::time::interval_at((t0 + SAMPLE).into(), SAMPLE);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for k in 1..=total {
            ticker.tick().await;
            let bytes = counter.load(Ordering::Relaxed).saturating_sub(base);
            ticks.push((t0.elapsed().as_secs_f64(), bytes, client.live_links()));
            let kill = match faults {
                Faults::None => false,
                Faults::Once => k == warm,
                Faults::Every(n) => k >= warm && (k - warm).is_multiple_of(n) && k < total,
            };
            if kill && relay.reset(Links::Oldest) > 0 {
                let now = Instant::now();
                kills.push((now - t0).as_secs_f64());
                if let Some(tx) = killed_tx.take() {
                    let _ = tx.send(now);
                }
            }
        }
        (ticks, kills)
    };
    let end = t0 + SAMPLE * u32::try_from(total).unwrap_or(u32::MAX);
    let watcher = watch_links(client, want, killed_rx, end);
    let (report, (ticks, kills), (detect, relink)) = tokio::join!(transfer, sampler, watcher);
    let report = report.map_err(|source| RecoveryError::Transfer {
        direction,
        phase: faults.name(),
        source,
    })?;
    let data_dir = if reverse { Dir::Down } else { Dir::Up };
    Ok(PhaseRun {
        ticks,
        kills,
        payload_bytes: report.received_bytes,
        wire_bytes: relay.forwarded(data_dir),
        dropped: relay.dropped(data_dir),
        detect,
        relink,
        resent: 0,
    })
}

/// After the first kill: when the client saw fewer than `want` links, and when it had `want`
/// again (polled every millisecond until `end`).
async fn watch_links(
    client: &wanmux_client::ClientHandle,
    want: usize,
    killed: oneshot::Receiver<Instant>,
    end: Instant,
) -> (Option<f64>, Option<f64>) {
    let Ok(at) = killed.await else {
        return (None, None);
    };
    let mut detect = None;
    while Instant::now() < end {
        let live = client.live_links();
        if detect.is_none() && live < want {
            detect = Some(at.elapsed().as_secs_f64());
        }
        if detect.is_some() && live >= want {
            return (detect, Some(at.elapsed().as_secs_f64()));
        }
        tokio::time::sleep(LINK_POLL).await;
    }
    (detect, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let ok = RecoveryOptions::default();
        assert!(ok.validate().is_ok());
        let bad = [
            RecoveryOptions {
                seconds: f64::NAN,
                ..ok.clone()
            },
            RecoveryOptions {
                rate_mbit: Some(0.0),
                ..ok.clone()
            },
            RecoveryOptions {
                links: 0,
                ..ok.clone()
            },
            RecoveryOptions {
                directions: vec![],
                ..ok.clone()
            },
        ];
        for o in bad {
            assert!(o.validate().is_err(), "{o:?}");
        }
    }
}
