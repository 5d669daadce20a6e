//! The bulk data path, shared by client and server: a sender that writes records straight from
//! the pattern, and a receiver that parses records in place and checks every payload byte.
//!
//! Neither allocates per record: the sender writes `len | payload` with one vectored write
//! from the pattern buffer, and the receiver reads into one buffer per stream and compares
//! payload runs against the pattern with `memcmp` while feeding them to crc32.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::pattern::{advance, Pattern};
use crate::proto::{self, Status, Trailer, Verdict, MAX_RECORD, TRAILER_LEN, VERDICT_LEN};

/// Size of the receive buffer of one stream. Large reads keep syscalls per byte low.
const READ_BUF: usize = 256 * 1024;

/// A data-path failure, before it is attributed to a stream or logged.
#[derive(Debug)]
pub(crate) enum Fail {
    Io(io::Error),
    /// End of stream before the protocol said so.
    Eof(String),
    /// An operation made no progress for the idle limit.
    Idle,
    /// What arrived was wrong.
    Rx(RxError),
}

/// Why received bulk data was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RxError {
    Pattern { offset: u64 },
    Malformed { offset: u64, detail: String },
    Count { trailer: u64, received: u64 },
    Crc { trailer: u32, received: u32 },
}

impl RxError {
    /// The verdict a receiver sends for this failure.
    pub(crate) fn verdict(&self, rx: &Receiver, receive_micros: u64) -> Verdict {
        let (status, detail) = match self {
            RxError::Pattern { offset } => (Status::PatternMismatch, *offset),
            RxError::Malformed { offset, .. } => (Status::Malformed, *offset),
            RxError::Count { trailer, .. } => (Status::CountMismatch, *trailer),
            RxError::Crc { trailer, .. } => (Status::ChecksumMismatch, u64::from(*trailer)),
        };
        Verdict {
            bytes: rx.total,
            crc: rx.crc(),
            status,
            receive_micros,
            detail,
        }
    }
}

/// Runs one socket operation, failing with [`Fail::Idle`] if it does not finish within `limit`.
/// For single operations (header, verdict); loops use [`watchdog`], which arms no timer per
/// operation.
pub(crate) async fn idle<T>(
    limit: Duration,
    f: impl Future<Output = io::Result<T>>,
) -> Result<T, Fail> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Fail::Eof(e.to_string())),
        Ok(Err(e)) => Err(Fail::Io(e)),
        Err(_) => Err(Fail::Idle),
    }
}

/// Byte counters a data path adds to: one per stream, watched for stalls by [`watchdog`], and
/// one shared by all streams of a run, for interval reports.
#[derive(Clone, Copy)]
pub(crate) struct Counters<'a> {
    pub(crate) stream: &'a AtomicU64,
    pub(crate) run: &'a AtomicU64,
}

impl Counters<'_> {
    fn add(&self, n: u64) {
        self.stream.fetch_add(n, Ordering::Relaxed);
        self.run.fetch_add(n, Ordering::Relaxed);
    }
}

/// Runs `f`, failing with [`Fail::Idle`] once `progress` has not changed for `limit` (checked
/// every `limit`, so a stall is noticed after between one and two limits).
///
/// A per-operation `tokio::time::timeout` arms a timer each time a socket would block, which
/// costs about a microsecond per request/response round trip; this arms one per `limit`.
pub(crate) async fn watchdog<T>(
    limit: Duration,
    progress: &AtomicU64,
    f: impl Future<Output = Result<T, Fail>>,
) -> Result<T, Fail> {
    let dog = async {
        let mut last = progress.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(limit).await;
            let now = progress.load(Ordering::Relaxed);
            if now == last {
                return;
            }
            last = now;
        }
    };
    tokio::select! {
        biased;
        r = f => r,
        () = dog => Err(Fail::Idle),
    }
}

/// When a sender stops.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SendLimit {
    /// Until this much time has passed since the sender started (checked between records).
    Duration(Duration),
    /// Exactly this many payload bytes.
    Bytes(u64),
}

/// What a sender did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sent {
    pub(crate) bytes: u64,
    pub(crate) crc: u32,
    pub(crate) elapsed: Duration,
}

/// Sends records from `pattern` (starting at pattern offset `start`) until `limit`, then the end
/// record and trailer. Adds payload bytes to `counters` as they are written. Run it under a
/// [`watchdog`] of `counters.stream`.
pub(crate) async fn send<W>(
    w: &mut W,
    pattern: &Pattern,
    start: usize,
    record: usize,
    limit: SendLimit,
    counters: Counters<'_>,
) -> Result<Sent, Fail>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    debug_assert!(record > 0 && record <= MAX_RECORD);
    let t0 = Instant::now();
    let (deadline, mut remaining) = match limit {
        // A duration too long to represent is no deadline at all.
        SendLimit::Duration(d) => (t0.checked_add(d), u64::MAX),
        SendLimit::Bytes(n) => (None, n),
    };
    let mut hasher = crc32fast::Hasher::new();
    let mut offset = start;
    let mut total = 0u64;
    loop {
        if remaining == 0 || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        // `record` is at most MAX_RECORD, so the conversion and the slice are in range.
        let n = usize::try_from(remaining.min(record as u64)).unwrap_or(record);
        let payload = pattern.slice(offset, n);
        hasher.update(payload);
        let len = (n as u32).to_be_bytes();
        proto::write_two(w, &len, payload).await.map_err(Fail::Io)?;
        offset = advance(offset, n);
        total += n as u64;
        remaining -= n as u64;
        counters.add(n as u64);
    }
    let crc = hasher.finalize();
    let end = Trailer {
        total_bytes: total,
        crc,
    }
    .encode_with_end();
    w.write_all(&end).await.map_err(Fail::Io)?;
    w.flush().await.map_err(Fail::Io)?;
    Ok(Sent {
        bytes: total,
        crc,
        elapsed: t0.elapsed(),
    })
}

#[derive(Debug, Clone, Copy)]
enum RxState {
    /// Reading a record length; `have` bytes of it are in `scratch`.
    Len,
    /// Inside a record payload with this many bytes left.
    Payload(usize),
    /// Reading the trailer into `scratch`.
    Trailer,
    /// Trailer received and checked.
    Done,
}

/// Incremental parser and verifier of one bulk stream.
pub(crate) struct Receiver<'p> {
    pattern: &'p Pattern,
    offset: usize,
    total: u64,
    hasher: crc32fast::Hasher,
    state: RxState,
    scratch: [u8; TRAILER_LEN],
    have: usize,
    trailer: Option<Trailer>,
}

impl<'p> Receiver<'p> {
    pub(crate) fn new(pattern: &'p Pattern, start: usize) -> Receiver<'p> {
        Receiver {
            pattern,
            offset: start,
            total: 0,
            hasher: crc32fast::Hasher::new(),
            state: RxState::Len,
            scratch: [0; TRAILER_LEN],
            have: 0,
            trailer: None,
        }
    }

    /// Payload bytes verified so far.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// crc32 of the payload verified so far.
    pub(crate) fn crc(&self) -> u32 {
        self.hasher.clone().finalize()
    }

    /// The trailer, once the stream is complete and checked.
    pub(crate) fn trailer(&self) -> Option<Trailer> {
        self.trailer
    }

    /// Consumes `data`. Returns `Ok(true)` once the trailer has arrived and matches.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> Result<bool, RxError> {
        while !data.is_empty() {
            match self.state {
                RxState::Len => {
                    let take = (4 - self.have).min(data.len());
                    self.scratch[self.have..self.have + take].copy_from_slice(&data[..take]);
                    self.have += take;
                    data = &data[take..];
                    if self.have == 4 {
                        self.have = 0;
                        let len = u32::from_be_bytes([
                            self.scratch[0],
                            self.scratch[1],
                            self.scratch[2],
                            self.scratch[3],
                        ]) as usize;
                        self.state = match len {
                            0 => RxState::Trailer,
                            1..=MAX_RECORD => RxState::Payload(len),
                            _ => {
                                return Err(RxError::Malformed {
                                    offset: self.total,
                                    detail: format!(
                                        "record length {len} exceeds the maximum {MAX_RECORD}"
                                    ),
                                })
                            }
                        };
                    }
                }
                RxState::Payload(left) => {
                    let k = left.min(data.len());
                    let (run, rest) = data.split_at(k);
                    let expected = self.pattern.slice(self.offset, k);
                    if run != expected {
                        let i = run
                            .iter()
                            .zip(expected)
                            .position(|(a, b)| a != b)
                            .unwrap_or(0);
                        return Err(RxError::Pattern {
                            offset: self.total + i as u64,
                        });
                    }
                    self.hasher.update(run);
                    self.total += k as u64;
                    self.offset = advance(self.offset, k);
                    self.state = if k == left {
                        RxState::Len
                    } else {
                        RxState::Payload(left - k)
                    };
                    data = rest;
                }
                RxState::Trailer => {
                    let take = (TRAILER_LEN - self.have).min(data.len());
                    self.scratch[self.have..self.have + take].copy_from_slice(&data[..take]);
                    self.have += take;
                    data = &data[take..];
                    if self.have == TRAILER_LEN {
                        let t = Trailer::decode(&self.scratch);
                        if t.total_bytes != self.total {
                            return Err(RxError::Count {
                                trailer: t.total_bytes,
                                received: self.total,
                            });
                        }
                        let crc = self.crc();
                        if t.crc != crc {
                            return Err(RxError::Crc {
                                trailer: t.crc,
                                received: crc,
                            });
                        }
                        self.trailer = Some(t);
                        self.state = RxState::Done;
                    }
                }
                RxState::Done => {
                    return Err(RxError::Malformed {
                        offset: self.total,
                        detail: "data after the trailer".into(),
                    })
                }
            }
        }
        Ok(matches!(self.state, RxState::Done))
    }

    fn describe_position(&self) -> String {
        let at = match self.state {
            RxState::Len => "at a record boundary",
            RxState::Payload(_) => "inside a record",
            RxState::Trailer => "inside the trailer",
            RxState::Done => "after the trailer",
        };
        format!("after {} payload bytes, {at}", self.total)
    }
}

/// Reads and verifies one bulk stream up to and including its trailer. Adds payload bytes to
/// `counters` as they are verified. Run it under a [`watchdog`] of `counters.stream`.
pub(crate) async fn receive<R>(
    r: &mut R,
    rx: &mut Receiver<'_>,
    counters: Counters<'_>,
) -> Result<(), Fail>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = r.read(&mut buf).await.map_err(Fail::Io)?;
        if n == 0 {
            return Err(Fail::Eof(rx.describe_position()));
        }
        let before = rx.total();
        let done = rx.feed(&buf[..n]).map_err(Fail::Rx)?;
        counters.add(rx.total() - before);
        if done {
            return Ok(());
        }
    }
}

/// Reads one verdict.
pub(crate) async fn read_verdict<R>(r: &mut R) -> io::Result<Verdict>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut b = [0u8; VERDICT_LEN];
    r.read_exact(&mut b).await?;
    Ok(Verdict::decode(&b))
}

/// Microseconds in `d`, saturating.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes a whole stream the way `send` does, with the given record size.
    fn encode(p: &Pattern, start: usize, total: usize, record: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut data = vec![0u8; total];
        p.fill(start, &mut data);
        for chunk in data.chunks(record) {
            out.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        let crc = crc32fast::hash(&data);
        out.extend_from_slice(
            &Trailer {
                total_bytes: total as u64,
                crc,
            }
            .encode_with_end(),
        );
        out
    }

    #[test]
    fn receiver_accepts_any_split() {
        let p = Pattern::new(1);
        let wire = encode(&p, 999_000, 300_000, 7_777);
        for step in [1, 3, 4, 5, 4096, 65_536, wire.len()] {
            let mut rx = Receiver::new(&p, 999_000);
            let mut done = false;
            for chunk in wire.chunks(step) {
                assert!(!done);
                done = rx.feed(chunk).unwrap();
            }
            assert!(done, "step {step}");
            assert_eq!(rx.total(), 300_000);
        }
    }

    #[test]
    fn receiver_rejects_damage() {
        let p = Pattern::new(2);
        let wire = encode(&p, 0, 10_000, 4_000);
        // A flipped payload byte is caught at its offset.
        let mut bad = wire.clone();
        bad[4 + 1234] ^= 1;
        let err = Receiver::new(&p, 0).feed(&bad).unwrap_err();
        assert_eq!(err, RxError::Pattern { offset: 1234 });
        // A flipped length byte.
        let mut bad = wire.clone();
        bad[0] ^= 0x80;
        assert!(matches!(
            Receiver::new(&p, 0).feed(&bad),
            Err(RxError::Malformed { .. })
        ));
        // A wrong start offset (data of another stream).
        assert!(matches!(
            Receiver::new(&p, 1).feed(&wire),
            Err(RxError::Pattern { offset: 0 })
        ));
        // Trailer count and crc.
        let n = wire.len();
        let mut bad = wire.clone();
        bad[n - 5] ^= 1;
        assert!(matches!(
            Receiver::new(&p, 0).feed(&bad),
            Err(RxError::Count { .. })
        ));
        let mut bad = wire.clone();
        bad[n - 1] ^= 1;
        assert!(matches!(
            Receiver::new(&p, 0).feed(&bad),
            Err(RxError::Crc { .. })
        ));
        // Bytes after the trailer.
        let mut bad = wire.clone();
        bad.push(0);
        assert!(matches!(
            Receiver::new(&p, 0).feed(&bad),
            Err(RxError::Malformed { .. })
        ));
    }

    #[tokio::test]
    async fn send_then_receive_in_memory() {
        let p = Pattern::new(3);
        let (a, b) = (AtomicU64::new(0), AtomicU64::new(0));
        let counters = Counters {
            stream: &a,
            run: &b,
        };
        let mut wire = Vec::new();
        let limit = SendLimit::Bytes(2_000_000);
        let sent = send(&mut wire, &p, 17, MAX_RECORD, limit, counters)
            .await
            .unwrap();
        assert_eq!(sent.bytes, 2_000_000);
        assert_eq!(a.load(Ordering::Relaxed), 2_000_000);
        assert_eq!(b.load(Ordering::Relaxed), 2_000_000);
        let mut rx = Receiver::new(&p, 17);
        receive(&mut wire.as_slice(), &mut rx, counters)
            .await
            .unwrap();
        let expected = Trailer {
            total_bytes: 2_000_000,
            crc: sent.crc,
        };
        assert_eq!(rx.trailer(), Some(expected));
        // Truncation is an end-of-stream failure.
        let mut rx = Receiver::new(&p, 17);
        let cut = &wire[..wire.len() - 3];
        let err = receive(&mut &cut[..], &mut rx, counters).await.unwrap_err();
        assert!(matches!(err, Fail::Eof(_)), "{err:?}");
    }

    #[tokio::test]
    async fn watchdog_fires_only_without_progress() {
        let progress = AtomicU64::new(0);
        let limit = Duration::from_millis(40);
        let moving = async {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                progress.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        };
        assert!(watchdog(limit, &progress, moving).await.is_ok());
        let stuck = std::future::pending::<Result<(), Fail>>();
        assert!(matches!(
            watchdog(limit, &progress, stuck).await,
            Err(Fail::Idle)
        ));
    }
}
