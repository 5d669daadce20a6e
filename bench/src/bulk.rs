//! Client side of bulk throughput runs: N parallel connections, each an upload or a download,
//! with per-interval progress summed over streams.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::error::{BenchError, Side, VerifyFailure};
use crate::pattern::{Pattern, PERIOD};
use crate::proto::{Header, Mode, Status, Verdict, WireLimit, MAX_RECORD};
use crate::report::{BidirReport, BulkReport, IntervalReport, StreamReport};
use crate::stream::{self, micros, Counters, Fail, Receiver, RxError, SendLimit};

/// How long a failing client still waits for the server's verdict after its own send failed.
const VERDICT_GRACE: Duration = Duration::from_secs(2);

/// When a bulk run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Each sender sends for this long (measured by the sender).
    Duration(Duration),
    /// Send exactly this many payload bytes in total, split evenly over the streams.
    Bytes(u64),
}

/// Options of [`run_bulk`]. Start from [`BulkOptions::new`] and set fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BulkOptions {
    /// Target address (`host:port`): a bench server, directly or through a tunnel.
    pub connect: String,
    /// When to stop. Default: 10 seconds.
    pub limit: Limit,
    /// Parallel connections. Default: 1.
    pub streams: usize,
    /// `false`: client sends (upload). `true`: server sends (download, like iperf's `-R`).
    pub reverse: bool,
    /// Largest record payload, `1..=128 KiB`. Default: 128 KiB.
    pub record_size: usize,
    /// Progress reporting interval. Default: 1 second.
    pub interval: Duration,
    /// A stream fails if it moves no data for this long (noticed within twice this). Default:
    /// 30 seconds.
    pub idle_timeout: Duration,
}

impl BulkOptions {
    /// Defaults for a run against `connect`: 10 s, 1 stream, upload.
    pub fn new(connect: impl Into<String>) -> BulkOptions {
        BulkOptions {
            connect: connect.into(),
            limit: Limit::Duration(Duration::from_secs(10)),
            streams: 1,
            reverse: false,
            record_size: MAX_RECORD,
            interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(30),
        }
    }

    /// Checks the options without running anything ([`run_bulk`] checks them too).
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |s: String| Err(BenchError::InvalidOptions(s));
        if self.streams == 0 {
            return bad("streams must be at least 1".into());
        }
        if self.streams > 4096 {
            return bad(format!(
                "{} streams is more than the maximum 4096",
                self.streams
            ));
        }
        if self.record_size == 0 || self.record_size > MAX_RECORD {
            return bad(format!(
                "record size {} out of range 1..={MAX_RECORD}",
                self.record_size
            ));
        }
        if self.interval.is_zero() {
            return bad("interval must be positive".into());
        }
        if self.idle_timeout.is_zero() {
            return bad("idle timeout must be positive".into());
        }
        Ok(())
    }
}

/// Runs a bulk throughput test and returns its report. See [`run_bulk_with_progress`].
pub async fn run_bulk(opts: &BulkOptions) -> Result<BulkReport, BenchError> {
    run_bulk_with_progress(opts, |_| {}).await
}

/// Runs a bulk throughput test, calling `on_interval` once per `opts.interval` (and once for a
/// final partial interval) with throughput summed over all streams.
///
/// Every stream's data is verified; the first stream that fails ends the run with its error
/// (the other connections are closed).
pub async fn run_bulk_with_progress<F>(
    opts: &BulkOptions,
    on_interval: F,
) -> Result<BulkReport, BenchError>
where
    F: FnMut(&IntervalReport),
{
    run_bulk_counting(opts, Arc::new(AtomicU64::new(0)), on_interval).await
}

/// Runs an upload and a download at once, each over `opts.streams` connections of its own (as
/// iperf3's `--bidir`); `opts.reverse` is not used. `on_interval` gets each direction's
/// intervals, with `true` for the download's. The first stream that fails, in either direction,
/// ends the run with its error.
pub async fn run_bulk_bidir<F>(
    opts: &BulkOptions,
    on_interval: F,
) -> Result<BidirReport, BenchError>
where
    F: FnMut(bool, &IntervalReport),
{
    let on = std::cell::RefCell::new(on_interval);
    let (mut up, mut down) = (opts.clone(), opts.clone());
    up.reverse = false;
    down.reverse = true;
    // Both run in this task, and neither holds the callback across an await.
    let (upload, download) = tokio::try_join!(
        run_bulk_with_progress(&up, |i| (on.borrow_mut())(false, i)),
        run_bulk_with_progress(&down, |i| (on.borrow_mut())(true, i)),
    )?;
    Ok(BidirReport { upload, download })
}

/// [`run_bulk_with_progress`], adding the bytes the client moves (writes for an upload,
/// receives and verifies for a download) to `counter` as they move, so a caller can sample
/// throughput on its own schedule.
pub(crate) async fn run_bulk_counting<F>(
    opts: &BulkOptions,
    counter: Arc<AtomicU64>,
    mut on_interval: F,
) -> Result<BulkReport, BenchError>
where
    F: FnMut(&IntervalReport),
{
    opts.validate()?;
    let seed: u64 = rand::random();
    let pattern = Pattern::shared(seed);
    let start_count = counter.load(Ordering::Relaxed);
    let n = opts.streams as u64;

    let t0 = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..opts.streams {
        let limit = match opts.limit {
            Limit::Duration(d) => WireLimit::Duration(d),
            Limit::Bytes(total) => WireLimit::Bytes(total / n + u64::from((i as u64) < total % n)),
        };
        // Spread the streams over the period, so a byte delivered on the wrong stream fails.
        let start = (seed as usize % PERIOD + i * (PERIOD / opts.streams)) % PERIOD;
        let header = Header {
            mode: if opts.reverse {
                Mode::Download
            } else {
                Mode::Upload
            },
            limit,
            // Checked by validate(): at most MAX_RECORD.
            size: opts.record_size as u32,
            seed,
            start: start as u32,
        };
        let job = StreamJob {
            index: i,
            connect: opts.connect.clone(),
            header,
            pattern: Arc::clone(&pattern),
            idle_timeout: opts.idle_timeout,
            counter: Arc::clone(&counter),
        };
        tasks.spawn(job.run());
    }

    let mut ticker = tokio::time::interval_at((t0 + opts.interval).into(), opts.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress = Progress {
        counter: &counter,
        intervals: Vec::new(),
        last: (0.0, start_count),
    };
    let mut per_stream: Vec<Option<StreamReport>> = vec![None; opts.streams];
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(Ok(report))) => {
                    let i = report.stream;
                    per_stream[i] = Some(report);
                }
                // Dropping `tasks` on return aborts the other streams.
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Only the runtime shutting down cancels these tasks.
                Some(Err(e)) => {
                    return Err(BenchError::Io { stream: 0, source: std::io::Error::other(e) })
                }
            },
            _ = ticker.tick() => progress.mark(t0.elapsed().as_secs_f64(), &mut on_interval),
        }
    }
    if counter.load(Ordering::Relaxed) > progress.last.1 {
        progress.mark(t0.elapsed().as_secs_f64(), &mut on_interval);
    }

    // Every task returned Ok with its own index, so every slot is filled.
    let per_stream: Vec<StreamReport> = per_stream.into_iter().flatten().collect();
    let sent_bytes = per_stream.iter().map(|s| s.sent_bytes).sum();
    let received_bytes: u64 = per_stream.iter().map(|s| s.received_bytes).sum();
    let seconds = per_stream
        .iter()
        .map(|s| s.receiver_seconds)
        .fold(0.0, f64::max);
    let sender_seconds = per_stream
        .iter()
        .filter_map(|s| s.sender_seconds)
        .reduce(f64::max);
    Ok(BulkReport {
        sent_bytes,
        received_bytes,
        seconds,
        bits_per_second: rate(received_bytes, seconds),
        sender_seconds,
        streams: opts.streams,
        reverse: opts.reverse,
        verified: true,
        per_stream,
        intervals: progress.intervals,
    })
}

/// Turns the shared byte counter into interval reports.
struct Progress<'a> {
    counter: &'a AtomicU64,
    intervals: Vec<IntervalReport>,
    /// Time (seconds since start) and counter value at the end of the last interval.
    last: (f64, u64),
}

impl Progress<'_> {
    fn mark(&mut self, now: f64, on_interval: &mut impl FnMut(&IntervalReport)) {
        let bytes = self.counter.load(Ordering::Relaxed);
        let moved = bytes - self.last.1;
        let report = IntervalReport {
            start: self.last.0,
            end: now,
            bytes: moved,
            bits_per_second: rate(moved, now - self.last.0),
        };
        self.last = (now, bytes);
        on_interval(&report);
        self.intervals.push(report);
    }
}

fn rate(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 * 8.0 / seconds
    } else {
        0.0
    }
}

/// One connection of a bulk run.
struct StreamJob {
    index: usize,
    connect: String,
    header: Header,
    pattern: Arc<Pattern>,
    idle_timeout: Duration,
    counter: Arc<AtomicU64>,
}

impl StreamJob {
    async fn run(self) -> Result<StreamReport, BenchError> {
        let mut sock =
            TcpStream::connect(&self.connect)
                .await
                .map_err(|e| BenchError::Connect {
                    addr: self.connect.clone(),
                    source: e,
                })?;
        // Keeps the small end record and verdict from waiting on Nagle.
        sock.set_nodelay(true).map_err(|e| BenchError::Io {
            stream: self.index,
            source: e,
        })?;
        stream::idle(self.idle_timeout, sock.write_all(&self.header.encode()))
            .await
            .map_err(|f| self.fail(f, "sending the header"))?;
        match self.header.mode {
            Mode::Download => self.download(sock).await,
            _ => self.upload(sock).await,
        }
    }

    fn fail(&self, f: Fail, what: &str) -> BenchError {
        let stream = self.index;
        match f {
            Fail::Io(e) => BenchError::io(stream, what, e),
            Fail::Eof(detail) => BenchError::Truncated {
                stream,
                detail: format!("{what}: {detail}"),
            },
            Fail::Idle => BenchError::Stalled {
                stream: Some(stream),
                seconds: self.idle_timeout.as_secs_f64(),
            },
            Fail::Rx(RxError::Pattern { offset }) => self.verify(VerifyFailure::Pattern { offset }),
            Fail::Rx(RxError::Count { trailer, received }) => {
                self.verify(VerifyFailure::ByteCount {
                    sent: trailer,
                    received,
                })
            }
            Fail::Rx(RxError::Crc { trailer, received }) => self.verify(VerifyFailure::Checksum {
                sent: trailer,
                received,
            }),
            Fail::Rx(RxError::Malformed { offset, detail }) => BenchError::Protocol {
                stream,
                detail: format!("{detail} (after {offset} payload bytes)"),
            },
        }
    }

    fn verify(&self, failure: VerifyFailure) -> BenchError {
        BenchError::Verify {
            stream: self.index,
            side: Side::Client,
            failure,
        }
    }

    fn send_limit(&self) -> SendLimit {
        match self.header.limit {
            WireLimit::Bytes(n) => SendLimit::Bytes(n),
            WireLimit::Duration(d) => SendLimit::Duration(d),
            WireLimit::Rounds(_) => SendLimit::Bytes(0),
        }
    }

    async fn upload(self, mut sock: TcpStream) -> Result<StreamReport, BenchError> {
        let (mut rd, mut wr) = sock.split();
        let progress = AtomicU64::new(0);
        let counters = Counters {
            stream: &progress,
            run: &self.counter,
        };
        let send = stream::watchdog(
            self.idle_timeout,
            &progress,
            stream::send(
                &mut wr,
                &self.pattern,
                self.header.start as usize,
                self.header.size as usize,
                self.send_limit(),
                counters,
            ),
        );
        let verdict = stream::read_verdict(&mut rd);
        tokio::pin!(send, verdict);
        let sent = tokio::select! {
            sent = &mut send => sent,
            // The server only answers early when something is wrong.
            v = &mut verdict => {
                let v = v.map_err(|e| BenchError::io(self.index, "waiting for the verdict", e))?;
                return Err(self.verdict_error(&v, None).unwrap_or_else(|| BenchError::Protocol {
                    stream: self.index,
                    detail: "server accepted the stream before it ended".into(),
                }));
            }
        };
        let sent = match sent {
            Ok(sent) => sent,
            Err(f) => {
                // The server may have rejected the stream and closed; its verdict says why.
                if let Ok(Ok(v)) = tokio::time::timeout(VERDICT_GRACE, &mut verdict).await {
                    if let Some(e) = self.verdict_error(&v, None) {
                        return Err(e);
                    }
                }
                return Err(self.fail(f, "sending data"));
            }
        };
        let v = stream::idle(self.idle_timeout, verdict)
            .await
            .map_err(|f| self.fail(f, "waiting for the server's verdict"))?;
        if let Some(e) = self.verdict_error(&v, Some((sent.bytes, sent.crc))) {
            return Err(e);
        }
        let receiver_seconds = v.receive_micros as f64 / 1e6;
        Ok(StreamReport {
            stream: self.index,
            sent_bytes: sent.bytes,
            received_bytes: v.bytes,
            sender_seconds: Some(sent.elapsed.as_secs_f64()),
            receiver_seconds,
            bits_per_second: rate(v.bytes, receiver_seconds),
            crc32: v.crc,
        })
    }

    /// The error a server verdict stands for, if any. With `sent`, also checks that the server
    /// counted what this client sent.
    fn verdict_error(&self, v: &Verdict, sent: Option<(u64, u32)>) -> Option<BenchError> {
        let stream = self.index;
        let verify = |failure| {
            Some(BenchError::Verify {
                stream,
                side: Side::Server,
                failure,
            })
        };
        match v.status {
            Status::Ok => {}
            Status::PatternMismatch => return verify(VerifyFailure::Pattern { offset: v.detail }),
            Status::CountMismatch => {
                return verify(VerifyFailure::ByteCount {
                    sent: v.detail,
                    received: v.bytes,
                })
            }
            Status::ChecksumMismatch => {
                // The detail carries the trailer's crc32, which is 32 bits wide.
                let sent = u32::try_from(v.detail).unwrap_or(u32::MAX);
                return verify(VerifyFailure::Checksum {
                    sent,
                    received: v.crc,
                });
            }
            Status::Malformed => {
                return Some(BenchError::Protocol {
                    stream,
                    detail: format!(
                        "server rejected the stream as malformed after {} payload bytes \
                         (corrupted record framing?)",
                        v.detail
                    ),
                })
            }
            Status::Truncated => {
                return Some(BenchError::Truncated {
                    stream,
                    detail: format!("server saw the stream end after {} payload bytes", v.detail),
                })
            }
            Status::Unknown(s) => {
                return Some(BenchError::Protocol {
                    stream,
                    detail: format!("server sent unknown verdict status {s}"),
                })
            }
        }
        let (bytes, crc) = sent?;
        if v.bytes != bytes {
            return verify(VerifyFailure::ByteCount {
                sent: bytes,
                received: v.bytes,
            });
        }
        if v.crc != crc {
            return verify(VerifyFailure::Checksum {
                sent: crc,
                received: v.crc,
            });
        }
        None
    }

    async fn download(self, mut sock: TcpStream) -> Result<StreamReport, BenchError> {
        let t0 = Instant::now();
        let mut rx = Receiver::new(&self.pattern, self.header.start as usize);
        let progress = AtomicU64::new(0);
        let counters = Counters {
            stream: &progress,
            run: &self.counter,
        };
        let receive = stream::receive(&mut sock, &mut rx, counters);
        let result = stream::watchdog(self.idle_timeout, &progress, receive).await;
        let elapsed = t0.elapsed();
        let verdict = match &result {
            Ok(()) => Verdict {
                bytes: rx.total(),
                crc: rx.crc(),
                status: Status::Ok,
                receive_micros: micros(elapsed),
                detail: 0,
            },
            Err(Fail::Rx(e)) => e.verdict(&rx, micros(elapsed)),
            Err(_) => Verdict {
                bytes: rx.total(),
                crc: rx.crc(),
                status: Status::Truncated,
                receive_micros: micros(elapsed),
                detail: rx.total(),
            },
        };
        // Tell the server how it went; on failure this is best effort.
        let told = stream::idle(self.idle_timeout.min(VERDICT_GRACE), async {
            sock.write_all(&verdict.encode()).await?;
            sock.shutdown().await
        })
        .await;
        if let Err(f) = result {
            return Err(self.fail(f, "receiving data"));
        }
        told.map_err(|f| self.fail(f, "sending the verdict"))?;
        // Checked by the receiver: the trailer matched count and crc.
        let trailer = rx
            .trailer()
            .expect("receive returned Ok, so the trailer arrived");
        let receiver_seconds = elapsed.as_secs_f64();
        Ok(StreamReport {
            stream: self.index,
            sent_bytes: trailer.total_bytes,
            received_bytes: rx.total(),
            // The server does not report its send time.
            sender_seconds: None,
            receiver_seconds,
            bits_per_second: rate(rx.total(), receiver_seconds),
            crc32: rx.crc(),
        })
    }
}
