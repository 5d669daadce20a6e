//! Results of a recovery run and how they are computed from the raw samples.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Direction, RecoveryOptions};
use crate::report::{Bytes, Mbits};

/// "Full speed": a sample at least this fraction of the no-fault median.
const FULL_SPEED: f64 = 0.9;
/// The window after a single kill over which lost transfer time is counted.
const LOSS_WINDOW: Duration = Duration::from_secs(2);
/// The window after a single kill in which the lowest sample is looked for.
const DIP_WINDOW: Duration = Duration::from_secs(1);

/// One 100 ms throughput sample of the receiving application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// End of the sample, seconds since the transfer started.
    pub t: f64,
    /// Verified payload bits per second received during the sample.
    pub bits_per_second: f64,
    /// Links the client had up at the end of the sample.
    pub live_links: usize,
}

/// What one phase's transfer did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseReport {
    /// Payload bytes received and verified, whole transfer (warm-up included).
    pub payload_bytes: u64,
    /// Mean throughput over the measured window (after the warm-up), receiver side.
    pub bits_per_second: f64,
    /// Median of the window's 100 ms samples.
    pub median_sample_bps: f64,
    /// 10th percentile of the window's 100 ms samples.
    pub p10_sample_bps: f64,
    /// Fraction of the window's samples below 90% of its own median: how often noise alone
    /// looks like "not at full speed" (calibrates `recovery_seconds`).
    pub below_full_speed: f64,
    /// Bytes the relay forwarded in the data direction, whole transfer: payload plus framing,
    /// encryption, pings, handshakes and resends.
    pub wire_bytes: u64,
    /// Bytes a kill destroyed inside the emulated path, data direction (0 unshaped).
    pub dropped_in_path_bytes: u64,
    /// Fewest links the client had at any sample of the window.
    pub min_live_links: usize,
    /// Mean of the client's live links over the window's samples.
    pub mean_live_links: f64,
    /// Links killed.
    pub kills: usize,
    /// Every sample of the transfer.
    pub samples: Vec<Sample>,
}

/// Phase 2: one link reset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OneKillReport {
    /// The transfer.
    pub phase: PhaseReport,
    /// When the link was reset, seconds since the transfer started.
    pub kill_at: f64,
    /// From the kill to the end of the first sample at >= 90% of the no-fault median sample;
    /// `None` if none was within the phase. 0.1 s means no dip visible at 100 ms resolution.
    pub recovery_seconds: Option<f64>,
    /// Lowest sample in the second after the kill, as a fraction of the no-fault median.
    pub min_ratio: f64,
    /// Transfer time lost in the two seconds after the kill: the bytes short of the no-fault
    /// mean rate, divided by that rate. Noise makes it negative at times.
    pub lost_seconds: f64,
    /// From the kill until the client's live link count dropped.
    pub detect_seconds: Option<f64>,
    /// From the kill until the client had all its links again.
    pub relink_seconds: Option<f64>,
    /// Stream bytes wanmux queued again because of the kill (client and server together):
    /// what the dead link carried that the far end had not confirmed.
    pub resent_bytes: Option<u64>,
}

/// Phase 3: kills every period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChurnReport {
    /// The transfer.
    pub phase: PhaseReport,
    /// Window throughput as a fraction of the no-fault window throughput.
    pub ratio: f64,
}

/// One direction of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectionReport {
    /// The direction.
    pub direction: Direction,
    /// Phase 1.
    pub no_faults: PhaseReport,
    /// Phase 2.
    pub one_kill: OneKillReport,
    /// Phase 3.
    pub kill_every: ChurnReport,
}

/// Median and range of one figure over runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// Lowest.
    pub min: f64,
    /// Highest.
    pub max: f64,
    /// Runs in which the figure had no value (for example no recovery within the phase).
    pub missing: usize,
}

impl Spread {
    fn of(values: impl IntoIterator<Item = Option<f64>>) -> Option<Spread> {
        let mut missing = 0;
        let mut v: Vec<f64> = values
            .into_iter()
            .filter_map(|x| {
                missing += usize::from(x.is_none());
                x
            })
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            missing,
        })
    }
}

/// Medians over runs of one direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectionSummary {
    /// The direction.
    pub direction: Direction,
    /// Phase 1 window throughput, bits per second.
    pub no_faults_bps: Option<Spread>,
    /// Phase 2 recovery time, seconds.
    pub recovery_seconds: Option<Spread>,
    /// Phase 2 lowest sample as a fraction of the no-fault median.
    pub min_ratio: Option<Spread>,
    /// Phase 2 lost transfer time, seconds.
    pub lost_seconds: Option<Spread>,
    /// Phase 2 time until the client had all links again, seconds.
    pub relink_seconds: Option<Spread>,
    /// Phase 3 window throughput, bits per second.
    pub kill_every_bps: Option<Spread>,
    /// Phase 3 throughput as a fraction of phase 1's.
    pub kill_every_ratio: Option<Spread>,
}

/// Result of [`run_recovery`](crate::run_recovery).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryReport {
    /// Links of the tunnel.
    pub links: u16,
    /// Parallel connections of each transfer.
    pub streams: usize,
    /// Measured seconds per phase.
    pub seconds: f64,
    /// Warm-up seconds per phase.
    pub warmup: f64,
    /// Seconds between kills in phase 3.
    pub kill_every: f64,
    /// Relay bottleneck per direction, Mbit/s (`null`: unlimited).
    pub rate_mbit: Option<f64>,
    /// Relay one-way delay, milliseconds.
    pub delay_ms: f64,
    /// Relay queue, milliseconds at the bottleneck rate (only with a rate).
    pub queue_ms: f64,
    /// Every direction of every run, in the order run.
    pub runs: Vec<Vec<DirectionReport>>,
    /// Medians and ranges over runs, per direction.
    pub summary: Vec<DirectionSummary>,
    /// Every transfer's data was verified (a failed verification is an error instead).
    pub verified: bool,
}

/// Raw result of one phase.
pub(super) struct PhaseRun {
    /// (seconds since start, receiver's bytes since start, live links), one per tick, the
    /// first at 0.
    pub(super) ticks: Vec<(f64, u64, usize)>,
    pub(super) kills: Vec<f64>,
    pub(super) payload_bytes: u64,
    pub(super) wire_bytes: u64,
    pub(super) dropped: u64,
    /// Seconds from the first kill until the client saw a link down, and until all were up.
    pub(super) detect: Option<f64>,
    pub(super) relink: Option<f64>,
    /// Stream bytes both daemons queued again because links died.
    pub(super) resent: u64,
}

/// Per-sample (end time, bits per second, live links) from the ticks.
pub(super) fn samples(run: &PhaseRun) -> Vec<Sample> {
    run.ticks
        .windows(2)
        .map(|w| Sample {
            t: w[1].0,
            bits_per_second: rate(w[1].1.saturating_sub(w[0].1), w[1].0 - w[0].0),
            live_links: w[1].2,
        })
        .collect()
}

pub(super) fn rate(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 * 8.0 / seconds
    } else {
        0.0
    }
}

pub(super) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Nearest-rank percentile of unsorted values (0 for none).
pub(super) fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub(super) fn phase_report(run: &PhaseRun, warm: usize) -> PhaseReport {
    let samples = samples(run);
    // Sample i ends at tick i + 1; the window is every sample after the warm-up tick.
    let window = samples.get(warm..).unwrap_or(&[]);
    let bps: Vec<f64> = window.iter().map(|s| s.bits_per_second).collect();
    let (first, last) = (run.ticks.get(warm), run.ticks.last());
    let bits_per_second = match (first, last) {
        (Some(a), Some(b)) => rate(b.1.saturating_sub(a.1), b.0 - a.0),
        _ => 0.0,
    };
    let links: Vec<usize> = window.iter().map(|s| s.live_links).collect();
    PhaseReport {
        payload_bytes: run.payload_bytes,
        bits_per_second,
        median_sample_bps: percentile(&bps, 50.0),
        p10_sample_bps: percentile(&bps, 10.0),
        below_full_speed: {
            let full = FULL_SPEED * percentile(&bps, 50.0);
            ratio(
                bps.iter().filter(|&&b| b < full).count() as f64,
                bps.len() as f64,
            )
        },
        wire_bytes: run.wire_bytes,
        dropped_in_path_bytes: run.dropped,
        min_live_links: links.iter().copied().min().unwrap_or(0),
        mean_live_links: if links.is_empty() {
            0.0
        } else {
            links.iter().sum::<usize>() as f64 / links.len() as f64
        },
        kills: run.kills.len(),
        samples,
    }
}

pub(super) fn one_kill_report(run: &PhaseRun, warm: usize, base: &PhaseReport) -> OneKillReport {
    let phase = phase_report(run, warm);
    let kill_at = run.kills.first().copied().unwrap_or(f64::NAN);
    let after = phase.samples.get(warm..).unwrap_or(&[]);
    let full = FULL_SPEED * base.median_sample_bps;
    let recovery_seconds = after
        .iter()
        .find(|s| s.bits_per_second >= full)
        .map(|s| s.t - kill_at);
    let min_ratio = after
        .iter()
        .filter(|s| s.t - kill_at <= DIP_WINDOW.as_secs_f64() + 1e-3)
        .map(|s| s.bits_per_second)
        .reduce(f64::min)
        .map_or(0.0, |m| ratio(m, base.median_sample_bps));
    // Bytes in the loss window after the kill against the no-fault mean rate.
    let ticks = &run.ticks;
    let loss_ticks = RecoveryOptions::ticks(LOSS_WINDOW.as_secs_f64());
    let lost_seconds = match (
        ticks.get(warm),
        ticks.get(warm + loss_ticks).or(ticks.last()),
    ) {
        (Some(a), Some(b)) if base.bits_per_second > 0.0 && b.0 > a.0 => {
            let expected = base.bits_per_second / 8.0 * (b.0 - a.0);
            (expected - b.1.saturating_sub(a.1) as f64) / (base.bits_per_second / 8.0)
        }
        _ => 0.0,
    };
    OneKillReport {
        phase,
        kill_at,
        recovery_seconds,
        min_ratio,
        lost_seconds,
        detect_seconds: run.detect,
        relink_seconds: run.relink,
        resent_bytes: Some(run.resent),
    }
}

pub(super) fn summarize(
    directions: &[Direction],
    runs: &[Vec<DirectionReport>],
) -> Vec<DirectionSummary> {
    let mut out = Vec::new();
    for &direction in directions {
        if out
            .iter()
            .any(|s: &DirectionSummary| s.direction == direction)
        {
            continue;
        }
        let of = |f: &dyn Fn(&DirectionReport) -> Option<f64>| {
            Spread::of(
                runs.iter()
                    .flatten()
                    .filter(|d| d.direction == direction)
                    .map(f),
            )
        };
        out.push(DirectionSummary {
            direction,
            no_faults_bps: of(&|d| Some(d.no_faults.bits_per_second)),
            recovery_seconds: of(&|d| d.one_kill.recovery_seconds),
            min_ratio: of(&|d| Some(d.one_kill.min_ratio)),
            lost_seconds: of(&|d| Some(d.one_kill.lost_seconds)),
            relink_seconds: of(&|d| d.one_kill.relink_seconds),
            kill_every_bps: of(&|d| Some(d.kill_every.phase.bits_per_second)),
            kill_every_ratio: of(&|d| Some(d.kill_every.ratio)),
        });
    }
    out
}

pub(super) fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "never".into(), |s| format!("{s:.2} s"))
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = match self.rate_mbit {
            Some(r) => format!(
                "relay at {r} Mbit/s per direction, {} ms one way ({} ms RTT), queue {} ms",
                self.delay_ms,
                2.0 * self.delay_ms,
                self.queue_ms
            ),
            None if self.delay_ms > 0.0 => format!(
                "relay, unlimited rate, {} ms one way ({} ms RTT)",
                self.delay_ms,
                2.0 * self.delay_ms
            ),
            None => "unshaped relay on loopback".into(),
        };
        writeln!(
            f,
            "recovery: {} links, {} stream(s), {path}; {} s measured per phase after {} s warm-up",
            self.links, self.streams, self.seconds, self.warmup
        )?;
        writeln!(
            f,
            "{:>3} {:<8} | {:>16} {:>5} | {:>9} {:>6} {:>7} {:>8} {:>8} {:>10} {:>10} | {:>16} {:>5} {:>9} {:>5}",
            "run",
            "dir",
            "no faults",
            "noise",
            "recovered",
            "lowest",
            "lost",
            "detect",
            "relinked",
            "in path",
            "resent",
            format!("kill every {} s", self.kill_every),
            "ratio",
            "links min",
            "kills"
        )?;
        for (i, run) in self.runs.iter().enumerate() {
            for d in run {
                let k = &d.one_kill;
                let c = &d.kill_every;
                writeln!(
                    f,
                    "{:>3} {:<8} | {:>16} {:>4.0}% | {:>9} {:>5.0}% {:>6.2}s {:>8} {:>8} {:>10} {:>10} | {:>16} {:>5.2} {:>9} {:>5}",
                    i + 1,
                    d.direction,
                    Mbits(d.no_faults.bits_per_second),
                    d.no_faults.below_full_speed * 100.0,
                    secs(k.recovery_seconds),
                    k.min_ratio * 100.0,
                    k.lost_seconds,
                    k.detect_seconds
                        .map_or_else(|| "-".into(), |s| format!("{:.1}ms", s * 1e3)),
                    secs(k.relink_seconds),
                    Bytes(k.phase.dropped_in_path_bytes),
                    Bytes(k.resent_bytes.unwrap_or(0)),
                    Mbits(c.phase.bits_per_second),
                    c.ratio,
                    c.phase.min_live_links,
                    c.phase.kills
                )?;
            }
        }
        if self.runs.len() > 1 {
            writeln!(f, "median [min - max] over {} runs:", self.runs.len())?;
            for s in &self.summary {
                let sp = |x: &Option<Spread>, scale: f64, unit: &str| match x {
                    Some(x) => format!(
                        "{:.2} [{:.2} - {:.2}]{unit}{}",
                        x.median * scale,
                        x.min * scale,
                        x.max * scale,
                        if x.missing > 0 {
                            format!(" ({} runs never)", x.missing)
                        } else {
                            String::new()
                        }
                    ),
                    None => "never".into(),
                };
                writeln!(
                    f,
                    "  {}: no faults {}; one kill: recovered in {}, lowest {}, lost {}, \
                     relinked in {}; kill every {} s: {}, ratio {}",
                    s.direction,
                    sp(&s.no_faults_bps, 1e-6, " Mbit/s"),
                    sp(&s.recovery_seconds, 1.0, " s"),
                    sp(&s.min_ratio, 1.0, ""),
                    sp(&s.lost_seconds, 1.0, " s"),
                    sp(&s.relink_seconds, 1.0, " s"),
                    self.kill_every,
                    sp(&s.kill_every_bps, 1e-6, " Mbit/s"),
                    sp(&s.kill_every_ratio, 1.0, ""),
                )?;
            }
        }
        writeln!(
            f,
            "noise: no-fault 100 ms samples below 90% of their median. recovered: end of the \
             first 100 ms sample after the kill at >= 90% of the no-fault median. lowest: \
             lowest sample in the second after the kill. lost: transfer time lost in the 2 s \
             after it. detect / relinked: the client saw a link down / had all links again. \
             in path: bytes the kill destroyed inside the relay. resent: stream bytes the \
             daemons queued again because the link died unconfirmed (both ends)."
        )?;
        write!(
            f,
            "every byte verified: {}",
            if self.verified { "yes" } else { "NO" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(ticks: Vec<(f64, u64, usize)>, kills: Vec<f64>) -> PhaseRun {
        PhaseRun {
            payload_bytes: ticks.last().map_or(0, |t| t.1),
            ticks,
            kills,
            wire_bytes: 0,
            dropped: 0,
            detect: None,
            relink: None,
            resent: 0,
        }
    }

    /// Ticks every 0.1 s moving `per[i]` bytes in sample i.
    fn ticks(per: &[u64]) -> Vec<(f64, u64, usize)> {
        let mut out = vec![(0.0, 0, 4)];
        let mut total = 0;
        for (i, &b) in per.iter().enumerate() {
            total += b;
            out.push(((i + 1) as f64 * 0.1, total, 4));
        }
        out
    }

    #[test]
    fn recovery_is_the_first_full_speed_sample_after_the_kill() {
        // 1,250,000 bytes per 100 ms is 100 Mbit/s.
        let full = 1_250_000;
        let base = phase_report(&run_of(ticks(&[full; 30]), vec![]), 10);
        assert!((base.bits_per_second - 100e6).abs() < 1.0);
        assert!((base.median_sample_bps - 100e6).abs() < 1.0);
        let mut per = vec![full; 30];
        // Kill after sample 10 (at 1.0 s); two slow samples, then full speed.
        per[10] = full / 10;
        per[11] = full / 2;
        let once = run_of(ticks(&per), vec![1.0]);
        let r = one_kill_report(&once, 10, &base);
        assert!((r.recovery_seconds.unwrap() - 0.3).abs() < 1e-9);
        assert!((r.min_ratio - 0.1).abs() < 1e-9);
        // 1.4 samples of 0.1 s lost.
        assert!((r.lost_seconds - 0.14).abs() < 1e-9, "{}", r.lost_seconds);
        assert_eq!(r.resent_bytes, Some(0));
    }

    #[test]
    fn spread_and_percentiles() {
        let s = Spread::of([Some(3.0), None, Some(1.0), Some(2.0)]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.missing), (2.0, 1.0, 3.0, 1));
        assert!(Spread::of([None]).is_none());
        assert_eq!(percentile(&[5.0, 1.0, 3.0, 2.0, 4.0], 50.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
