//! Slow readers and fast writers for backpressure tests: an application that writes as fast
//! as its socket takes data, and one that reads 10 KiB/s, both hashing what they moved.

use crate::harness::{add_map, add_service, Auth, Hashed, Tunnel};
use rand::{RngCore, SeedableRng};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The slow readers read this much ...
const SLOW_CHUNK: usize = 1024;
/// ... this often: 10 KiB/s.
const SLOW_EVERY: Duration = Duration::from_millis(100);

/// A tunnel (static keys, 2 links) whose daemons both have these windows, with a map `raw` to
/// a listener of the test's own, returned beside it: for connections the test plays both ends
/// of ([`pair`]).
pub async fn raw_tunnel(stream_window: u64, session_window: u64) -> (Tunnel, TcpListener) {
    let raw = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = raw.local_addr().unwrap();
    let t = Tunnel::start_with(Auth::Static { psk: false }, 2, |s, c| {
        for limits in [&mut s.limits, &mut c.limits] {
            limits.stream_window = stream_window;
            limits.session_window = session_window;
        }
        add_service(s, "raw", raw_addr);
        add_map(c, "raw");
    })
    .await;
    (t, raw)
}

/// A connection through the tunnel's map of `service` to `raw` (the client's end first) and the application
/// server's end of it, told apart from other connections by the `tag` byte it starts with.
pub async fn pair(t: &Tunnel, service: &str, raw: &TcpListener, tag: u8) -> (TcpStream, TcpStream) {
    let mut near = TcpStream::connect(t.addr_of(service)).await.unwrap();
    near.write_all(&[tag]).await.unwrap();
    let (mut far, _) = raw.accept().await.unwrap();
    let mut got = [0u8; 1];
    far.read_exact(&mut got).await.unwrap();
    assert_eq!(got[0], tag, "connections arrived out of order");
    (near, far)
}

/// Writes seeded data as fast as `tcp` takes it for `how_long`, then shuts down its write
/// side. Returns what it wrote and how much.
pub async fn fast_write(mut tcp: TcpStream, seed: u64, how_long: Duration) -> (Hashed, u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut pos, mut len) = (0, 0);
    let mut written = 0u64;
    let deadline = tokio::time::Instant::now() + how_long;
    loop {
        if pos == len {
            rng.fill_bytes(&mut buf);
            (pos, len) = (0, buf.len());
        }
        // One write at a time, so that stopping at the deadline loses track of no byte.
        tokio::select! {
            r = tcp.write(&buf[pos..len]) => {
                let n = r.expect("fast writer");
                hasher.update(&buf[pos..pos + n]);
                pos += n;
                written += n as u64;
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    tcp.shutdown().await.expect("shutdown");
    let sent = Hashed {
        bytes: written,
        hash: hasher.finalize(),
    };
    (sent, written)
}

/// Reads 10 KiB/s for `how_long`, then at full speed until EOF. Returns what it read and how
/// much of it it read slowly.
pub async fn slow_read(mut tcp: TcpStream, how_long: Duration) -> (Hashed, u64) {
    let mut hasher = blake3::Hasher::new();
    let mut bytes = 0u64;
    let mut tick = tokio::time::interval(SLOW_EVERY);
    let deadline = tokio::time::Instant::now() + how_long;
    let mut small = [0u8; SLOW_CHUNK];
    while tokio::time::Instant::now() < deadline {
        tick.tick().await;
        let n = tcp.read(&mut small).await.expect("slow reader");
        hasher.update(&small[..n]);
        bytes += n as u64;
    }
    let slow = bytes;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = tcp.read(&mut buf).await.expect("reader");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    let got = Hashed {
        bytes,
        hash: hasher.finalize(),
    };
    (got, slow)
}
