//! The bench server: accepts connections and serves every mode the header asks for.
//!
//! Each connection runs in a task owned by [`serve`], so dropping the `serve` future closes
//! them all. Results are logged with `tracing`: one `info` line per finished test (also for
//! failed verifications, which are what a bench user looks for), `debug` for peers that do not
//! speak the protocol.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::pattern::Pattern;
use crate::proto::{Header, Mode, Status, Verdict, WireLimit, HEADER_LEN};
use crate::report::{Bytes, Mbits};
use crate::stream::{self, idle, micros, watchdog, Counters, Fail, Receiver, SendLimit};

/// How long a new connection may take to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one socket operation may wait before the server gives up on a connection.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// After rejecting an upload, how long the server keeps reading (and discarding) so that its
/// verdict reaches the client instead of being destroyed by a reset.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Consecutive accept failures after which [`serve`] gives up.
const MAX_ACCEPT_FAILURES: u32 = 100;

/// Serves bench clients on `listener` until the returned future is dropped.
///
/// Returns only if accepting fails persistently (100 consecutive errors other than a
/// connection that was aborted before it was accepted); single failures such as running out of
/// file descriptors are logged and retried after a short pause.
pub async fn serve(listener: TcpListener) -> io::Result<()> {
    serve_counting(listener, Arc::new(AtomicU64::new(0))).await
}

/// [`serve`], adding the payload bytes every upload receives and verifies to `received` as
/// they arrive, so a caller can watch the receiving end's throughput.
pub(crate) async fn serve_counting(
    listener: TcpListener,
    received: Arc<AtomicU64>,
) -> io::Result<()> {
    let mut conns = JoinSet::new();
    let mut failures = 0u32;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => {
                    failures = 0;
                    conns.spawn(handle(sock, peer, Arc::clone(&received)));
                }
                Err(e) if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) => {}
                Err(e) => {
                    failures += 1;
                    if failures >= MAX_ACCEPT_FAILURES {
                        return Err(e);
                    }
                    warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn handle(mut sock: TcpStream, peer: SocketAddr, received: Arc<AtomicU64>) {
    let _ = sock.set_nodelay(true);
    let mut buf = [0u8; HEADER_LEN];
    match tokio::time::timeout(HEADER_TIMEOUT, sock.read_exact(&mut buf)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return debug!(%peer, error = %e, "connection closed before a header"),
        Err(_) => return debug!(%peer, "no header within {HEADER_TIMEOUT:?}"),
    }
    let header = match Header::decode(&buf) {
        Ok(h) => h,
        Err(e) => return debug!(%peer, "rejected header: {e}"),
    };
    match header.mode {
        Mode::Upload => upload(sock, peer, header, &received).await,
        Mode::Download => download(sock, peer, header).await,
        Mode::Rr => rr(sock, peer, header).await,
    }
}

/// Receives and verifies a client's stream, then answers with a verdict.
async fn upload(mut sock: TcpStream, peer: SocketAddr, header: Header, received: &AtomicU64) {
    let t0 = Instant::now();
    let pattern = Pattern::shared(header.seed);
    let mut rx = Receiver::new(&pattern, header.start as usize);
    let progress = AtomicU64::new(0);
    let counters = Counters {
        stream: &progress,
        run: received,
    };
    let receive = stream::receive(&mut sock, &mut rx, counters);
    let result = stream::watchdog(IDLE_TIMEOUT, &progress, receive).await;
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
        Err(Fail::Eof(_)) => Verdict {
            bytes: rx.total(),
            crc: rx.crc(),
            status: Status::Truncated,
            receive_micros: micros(elapsed),
            detail: rx.total(),
        },
        Err(Fail::Io(e)) => return info!(%peer, "upload failed: {e}"),
        Err(Fail::Idle) => return info!(%peer, "upload stalled for {IDLE_TIMEOUT:?}"),
    };
    let sent = idle(IDLE_TIMEOUT, async {
        sock.write_all(&verdict.encode()).await?;
        sock.shutdown().await
    })
    .await;
    match result {
        Ok(()) => info!(
            %peer,
            "upload: received {} in {:.3} s = {}, verified",
            Bytes(rx.total()),
            elapsed.as_secs_f64(),
            Mbits(rate(rx.total(), elapsed))
        ),
        Err(f) => {
            info!(%peer, "upload FAILED after {} payload bytes: {}", rx.total(), describe(&f));
            if sent.is_ok() {
                // Keep reading so the client gets the verdict rather than a reset.
                let drain = async {
                    let mut sink = vec![0u8; 64 * 1024];
                    while sock.read(&mut sink).await? > 0 {}
                    io::Result::Ok(())
                };
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
            }
        }
    }
}

/// Sends a stream to the client, then logs the client's verdict.
async fn download(mut sock: TcpStream, peer: SocketAddr, header: Header) {
    let pattern = Pattern::shared(header.seed);
    let limit = match header.limit {
        WireLimit::Duration(d) => SendLimit::Duration(d),
        WireLimit::Bytes(n) => SendLimit::Bytes(n),
        WireLimit::Rounds(_) => SendLimit::Bytes(0),
    };
    let progress = AtomicU64::new(0);
    let counters = Counters {
        stream: &progress,
        run: &progress,
    };
    let start = header.start as usize;
    let send = stream::send(
        &mut sock,
        &pattern,
        start,
        header.size as usize,
        limit,
        counters,
    );
    let sent = match stream::watchdog(IDLE_TIMEOUT, &progress, send).await {
        Ok(s) => s,
        Err(f) => return info!(%peer, "download ended early: {}", describe(&f)),
    };
    match idle(IDLE_TIMEOUT, stream::read_verdict(&mut sock)).await {
        Ok(v) if v.status == Status::Ok => info!(
            %peer,
            "download: sent {} in {:.3} s, client received it at {}, verified",
            Bytes(sent.bytes),
            sent.elapsed.as_secs_f64(),
            Mbits(rate(v.bytes, Duration::from_micros(v.receive_micros)))
        ),
        Ok(v) => info!(
            %peer,
            "download: sent {}, client REJECTED it: {:?} (detail {})",
            Bytes(sent.bytes),
            v.status,
            v.detail
        ),
        Err(f) => {
            info!(%peer, "download: sent {}, no verdict: {}", Bytes(sent.bytes), describe(&f))
        }
    }
}

/// Echoes `size`-byte messages until the client closes at a message boundary.
async fn rr(mut sock: TcpStream, peer: SocketAddr, header: Header) {
    // Header::decode bounds size by MAX_RR_SIZE.
    let mut buf = vec![0u8; header.size as usize];
    let rounds = AtomicU64::new(0);
    let echo = async {
        loop {
            let mut have = 0;
            while have < buf.len() {
                match sock.read(&mut buf[have..]).await.map_err(Fail::Io)? {
                    0 if have == 0 => return Ok(()),
                    0 => return Err(Fail::Eof("inside a message".into())),
                    n => have += n,
                }
            }
            sock.write_all(&buf).await.map_err(Fail::Io)?;
            rounds.fetch_add(1, Ordering::Relaxed);
        }
    };
    let result = watchdog(IDLE_TIMEOUT, &rounds, echo).await;
    let rounds = rounds.load(Ordering::Relaxed);
    match result {
        Ok(()) => info!(%peer, "rr: {rounds} round trips of {} bytes", header.size),
        Err(f) => info!(%peer, "rr ended after {rounds} round trips: {}", describe(&f)),
    }
}

fn rate(bytes: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 {
        bytes as f64 * 8.0 / s
    } else {
        0.0
    }
}

fn describe(f: &Fail) -> String {
    match f {
        Fail::Io(e) => format!("i/o error: {e}"),
        Fail::Eof(d) => format!("connection ended early ({d})"),
        Fail::Idle => format!("no progress for {IDLE_TIMEOUT:?}"),
        Fail::Rx(e) => format!("{e:?}"),
    }
}
