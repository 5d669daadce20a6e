//! The metrics endpoint (`metrics.listen`): a small HTTP/1.1 server that answers
//! `GET /metrics` with the Prometheus exposition of the daemon's [`Status`], taken at the
//! moment of the scrape.
//!
//! Whoever can reach it learns traffic numbers and session ids (never keys or payload): bind it
//! to loopback or a management network. A request head is read within [`REQUEST_TIMEOUT`] and at
//! most [`MAX_REQUEST`] bytes, and at most [`MAX_CONNECTIONS`] scrapes run at once, so a
//! misbehaving scraper costs bounded memory.
//!
//! Connections that send no request cannot keep a scrape out: every connection is accepted at
//! once, and one still waiting for its head takes one of [`MAX_HEADS`] slots (of
//! [`MAX_HEADS_PER_SOURCE`] per source), the oldest giving way to a new one
//! ([`crate::daemon::slots`]). A trial's 300 idle connections from one host made a scrape wait
//! 25 s before. An answer is written within [`WRITE_TIMEOUT`].

use crate::daemon::slots::Slots;
use crate::status::Status;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::debug;

/// Longest request head read.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a scraper has to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a scraper has to take the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers written at once; a request that finds none free is closed.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections waiting for their request head at once; past it the oldest is closed.
pub const MAX_HEADS: usize = 64;
/// Connections from one source (an IPv4 address or an IPv6 /64) waiting for their request head
/// at once; past it the source's oldest is closed.
pub const MAX_HEADS_PER_SOURCE: usize = 16;

/// The Prometheus text format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Where a scrape gets its numbers.
pub type StatusSource = Arc<dyn Fn() -> Status + Send + Sync>;

/// Serves scrapes on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, status: StatusSource) {
    let heads = Slots::new(MAX_HEADS, MAX_HEADS_PER_SOURCE, 0);
    let answers = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let errors = crate::daemon::AcceptErrors::new("metrics: accept failed");
    loop {
        let (tcp, peer) = crate::daemon::accept(&listener, &errors).await;
        let (status, answers) = (status.clone(), answers.clone());
        let (slot, _) = heads.take(peer.ip());
        tokio::spawn(async move {
            if let Err(e) = answer(tcp, slot, &answers, &status).await {
                debug!(%peer, error = %e, "metrics: request failed");
            }
        });
    }
}

/// Reads one request head (while `slot` is this connection's) and answers it, then closes the
/// connection.
async fn answer(
    mut tcp: TcpStream,
    slot: crate::daemon::slots::Slot,
    answers: &Semaphore,
    status: &StatusSource,
) -> std::io::Result<()> {
    let head = tokio::select! {
        head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut tcp)) => head,
        () = slot.evicted() => return Err(std::io::Error::other(
            "closed before its request came: newer connections took its place",
        )),
    };
    drop(slot);
    let head = head.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, "request head timed out")
    })??;
    let Ok(_answering) = answers.try_acquire() else {
        return Err(std::io::Error::other(format!(
            "{MAX_CONNECTIONS} answers are being written: closed"
        )));
    };
    let route = route(&head);
    let (code, kind, body) = match route {
        Route::Metrics | Route::MetricsHead => ("200 OK", CONTENT_TYPE, status().to_prometheus()),
        Route::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "only /metrics is served here\n".to_owned(),
        ),
        Route::BadMethod => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET and HEAD are served here\n".to_owned(),
        ),
    };
    // HEAD: the same head, no body (RFC 9110, 9.3.2).
    let shown = if route == Route::MetricsHead {
        ""
    } else {
        &body
    };
    let reply = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{shown}",
        body.len()
    );
    let write = async {
        tcp.write_all(reply.as_bytes()).await?;
        tcp.shutdown().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "answer not taken"))?
}

/// Reads until the blank line that ends a request head; at most [`MAX_REQUEST`] bytes.
async fn read_head(tcp: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        // Only the new bytes and the three before them can complete the blank line: a head
        // sent a byte at a time is not scanned again from its start for every byte.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        let new = &buf[from..];
        if new.windows(4).any(|w| w == b"\r\n\r\n") || new.windows(2).any(|w| w == b"\n\n") {
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        if buf.len() > MAX_REQUEST {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    /// `HEAD /metrics`: a monitor's liveness check.
    MetricsHead,
    NotFound,
    BadMethod,
}

/// What the request line asks for.
fn route(head: &str) -> Route {
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next(), parts.next().unwrap_or_default());
    if !matches!(method, Some("GET" | "HEAD")) {
        return Route::BadMethod;
    }
    let path = target.split('?').next().unwrap_or_default();
    if path == "/metrics" {
        if method == Some("HEAD") {
            Route::MetricsHead
        } else {
            Route::Metrics
        }
    } else {
        Route::NotFound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head that comes a byte at a time is found where its blank line ends, across reads.
    #[tokio::test]
    async fn a_head_sent_a_byte_at_a_time_is_read_whole() {
        for head in [
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.0\n\n",
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let writer = tokio::spawn(async move {
                let mut tcp = TcpStream::connect(addr).await.expect("connect");
                tcp.set_nodelay(true).expect("nodelay");
                for b in head.bytes() {
                    tcp.write_all(&[b]).await.expect("write");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                tcp
            });
            let (mut tcp, _) = listener.accept().await.expect("accept");
            let read = tokio::time::timeout(Duration::from_secs(10), read_head(&mut tcp))
                .await
                .expect("in time")
                .expect("a head");
            assert_eq!(read, head);
            drop(writer.await);
        }
    }

    #[test]
    fn routes() {
        assert_eq!(route("GET /metrics HTTP/1.1\r\n\r\n"), Route::Metrics);
        assert_eq!(route("GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route("GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route("POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(route("HEAD /metrics HTTP/1.1\r\n\r\n"), Route::MetricsHead);
        assert_eq!(route(""), Route::BadMethod);
    }
}
