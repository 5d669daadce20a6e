//! Client side of request/response runs: one connection, `count` round trips of `size`-byte
//! messages, each echo compared with its request.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{BenchError, Side, VerifyFailure};
use crate::pattern::{Pattern, PERIOD};
use crate::proto::{Header, Mode, WireLimit, MAX_RR_SIZE};
use crate::report::{RrReport, SlowTrip};

/// How many of the slowest round trips a report names.
const SLOWEST: usize = 5;
use crate::stream::{idle, watchdog, Fail};

/// Most round trips one run records (8 bytes of memory each).
pub const MAX_RR_COUNT: u64 = 100_000_000;

/// Options of [`run_rr`]. Start from [`RrOptions::new`] and set fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RrOptions {
    /// Target address (`host:port`): a bench server, directly or through a tunnel.
    pub connect: String,
    /// Round trips. Default: 10,000.
    pub count: u64,
    /// Message size each way, `1..=1 MiB`. Default: 64.
    pub size: usize,
    /// The run fails if no round trip completes for this long (noticed within twice this).
    /// Default: 30 seconds.
    pub idle_timeout: Duration,
}

impl RrOptions {
    /// Defaults for a run against `connect`: 10,000 round trips of 64 bytes.
    pub fn new(connect: impl Into<String>) -> RrOptions {
        RrOptions {
            connect: connect.into(),
            count: 10_000,
            size: 64,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Runs `count` request/response round trips over one connection and returns latency
/// percentiles. Every echo is compared with its request; a difference is an error.
pub async fn run_rr(opts: &RrOptions) -> Result<RrReport, BenchError> {
    if opts.count == 0 || opts.count > MAX_RR_COUNT {
        return Err(BenchError::InvalidOptions(format!(
            "count {} out of range 1..={MAX_RR_COUNT}",
            opts.count
        )));
    }
    if opts.size == 0 || opts.size > MAX_RR_SIZE {
        return Err(BenchError::InvalidOptions(format!(
            "size {} out of range 1..={MAX_RR_SIZE}",
            opts.size
        )));
    }
    let seed: u64 = rand::random();
    let pattern = Pattern::shared(seed);
    let mut offset = seed as usize % PERIOD;
    let header = Header {
        mode: Mode::Rr,
        limit: WireLimit::Rounds(opts.count),
        // Checked above: at most MAX_RR_SIZE.
        size: opts.size as u32,
        seed,
        start: offset as u32,
    };
    let fail = |f: Fail, what: &str| match f {
        Fail::Io(e) => BenchError::io(0, what, e),
        Fail::Eof(d) => BenchError::Truncated {
            stream: 0,
            detail: format!("{what}: {d}"),
        },
        Fail::Idle => BenchError::Stalled {
            stream: Some(0),
            seconds: opts.idle_timeout.as_secs_f64(),
        },
        Fail::Rx(e) => BenchError::Protocol {
            stream: 0,
            detail: format!("{e:?}"),
        },
    };

    let mut sock = TcpStream::connect(&opts.connect)
        .await
        .map_err(|e| BenchError::Connect {
            addr: opts.connect.clone(),
            source: e,
        })?;
    sock.set_nodelay(true).map_err(|e| BenchError::Io {
        stream: 0,
        source: e,
    })?;
    idle(opts.idle_timeout, sock.write_all(&header.encode()))
        .await
        .map_err(|f| fail(f, "sending the header"))?;

    let mut request = vec![0u8; opts.size];
    let mut response = vec![0u8; opts.size];
    // `count` is at most MAX_RR_COUNT, so this fits in memory on any host that can run it.
    let mut rtts_ns: Vec<u64> = Vec::with_capacity(opts.count as usize);
    let mut starts_ns: Vec<u64> = Vec::with_capacity(opts.count as usize);
    let rounds = AtomicU64::new(0);
    let t0 = Instant::now();
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    // Returns the stream offset of the first wrong echoed byte, if any.
    let trips = async {
        for round in 0..opts.count {
            offset = pattern.fill(offset, &mut request);
            let start = Instant::now();
            starts_ns.push(u64::try_from((start - t0).as_nanos()).unwrap_or(u64::MAX));
            sock.write_all(&request).await.map_err(Fail::Io)?;
            sock.read_exact(&mut response)
                .await
                .map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => Fail::Eof("waiting for an echo".into()),
                    _ => Fail::Io(e),
                })?;
            rtts_ns.push(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
            if request != response {
                let i = request.iter().zip(&response).position(|(a, b)| a != b);
                return Ok(Some(round * opts.size as u64 + i.unwrap_or(0) as u64));
            }
            rounds.fetch_add(1, Ordering::Relaxed);
        }
        Ok(None)
    };
    let bad = watchdog(opts.idle_timeout, &rounds, trips)
        .await
        .map_err(|f| {
            let round = rounds.load(Ordering::Relaxed);
            fail(f, &format!("round trip {round}"))
        })?;
    if let Some(offset) = bad {
        return Err(BenchError::Verify {
            stream: 0,
            side: Side::Client,
            failure: VerifyFailure::Pattern { offset },
        });
    }
    let seconds = t0.elapsed().as_secs_f64();
    // Closing our side ends the server's echo loop.
    let _ = sock.shutdown().await;
    let mut report = summarize(rtts_ns, &starts_ns, opts.size, seconds);
    report.started_unix_ms = started_unix_ms;
    Ok(report)
}

/// Turns round-trip times into a report (nearest-rank percentiles); `starts_ns` are the times
/// the round trips began, after the first.
fn summarize(mut rtts_ns: Vec<u64>, starts_ns: &[u64], size: usize, seconds: f64) -> RrReport {
    let n = rtts_ns.len();
    let us = |ns: u64| ns as f64 / 1e3;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(rtts_ns[i]));
    let slowest = order
        .iter()
        .take(SLOWEST)
        .map(|&i| SlowTrip {
            round: i as u64,
            us: us(rtts_ns[i]),
            at_ms: starts_ns.get(i).map_or(0.0, |&ns| ns as f64 / 1e6),
        })
        .collect();
    rtts_ns.sort_unstable();
    let pct = |q: f64| {
        if n == 0 {
            return 0.0;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        us(rtts_ns[rank - 1])
    };
    let sum: u128 = rtts_ns.iter().map(|&v| u128::from(v)).sum();
    RrReport {
        count: n as u64,
        size,
        seconds,
        round_trips_per_second: if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        },
        min_us: rtts_ns.first().map_or(0.0, |&v| us(v)),
        mean_us: if n == 0 {
            0.0
        } else {
            sum as f64 / n as f64 / 1e3
        },
        p50_us: pct(0.50),
        p90_us: pct(0.90),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: rtts_ns.last().map_or(0.0, |&v| us(v)),
        verified: true,
        slowest,
        started_unix_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let starts: Vec<u64> = (0..1000).map(|i| i * 2_000_000).collect();
        let r = summarize(
            (1..=1000).rev().map(|v| v * 1000).collect(),
            &starts,
            64,
            1.0,
        );
        assert_eq!((r.min_us, r.max_us), (1.0, 1000.0));
        assert_eq!(
            (r.p50_us, r.p90_us, r.p99_us, r.p999_us),
            (500.0, 900.0, 990.0, 999.0)
        );
        assert_eq!(r.mean_us, 500.5);
        // Round 0 was the slowest (the input runs from 1000 us down to 1 us).
        let slowest: Vec<(u64, f64)> = r.slowest.iter().map(|t| (t.round, t.us)).collect();
        assert_eq!(
            slowest,
            vec![(0, 1000.0), (1, 999.0), (2, 998.0), (3, 997.0), (4, 996.0)]
        );
        // Round 4 began 8 ms after round 0.
        assert_eq!(r.slowest[4].at_ms, 8.0);
        let one = summarize(vec![7000], &[0], 1, 0.5);
        assert_eq!(
            (one.p50_us, one.p999_us, one.round_trips_per_second),
            (7.0, 7.0, 2.0)
        );
    }
}
