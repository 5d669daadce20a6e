//! The TCP relay on loopback: forwarding, shaping, and every command.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wanmux_relay::{Bottleneck, Dir, Links, Relay, Shape};

const LIMIT: Duration = Duration::from_secs(20);

async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Sends `data` through the relay to an echo server, ends the upload, and returns what came
/// back and how long it took.
async fn round_trip(relay: &Relay, data: &[u8]) -> (Vec<u8>, Duration) {
    let mut s = TcpStream::connect(relay.addr()).await.unwrap();
    let t0 = Instant::now();
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let recv = r.read_to_end(&mut back);
    let ((), got) = tokio::time::timeout(LIMIT, async { tokio::join!(send, recv) })
        .await
        .expect("round trip in time");
    got.unwrap();
    (back, t0.elapsed())
}

/// Polls `cond` every 5 ms for up to [`LIMIT`]; whether it held.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

fn pattern(len: u32, period: u32) -> Vec<u8> {
    (0..len).map(|i| (i % period) as u8).collect()
}

/// A client connected through `relay` to a plain listener, and the listener's end.
async fn pair(relay: &Relay, target: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(relay.addr()).await.unwrap();
    let (server, _) = target.accept().await.unwrap();
    (client, server)
}

async fn relay_to_listener(shape: Shape) -> (Relay, TcpListener) {
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = Relay::start(target.local_addr().unwrap(), shape)
        .await
        .unwrap();
    (relay, target)
}

#[tokio::test]
async fn forwards_both_ways_unshaped() {
    let relay = Relay::start(echo_server().await, Shape::default())
        .await
        .unwrap();
    let data = pattern(3_000_000, 251);
    let (back, _) = round_trip(&relay, &data).await;
    assert_eq!(back, data);
    assert_eq!(relay.forwarded(Dir::Up), data.len() as u64);
    assert_eq!(relay.forwarded(Dir::Down), data.len() as u64);
    assert_eq!(relay.forwarded_both(), 2 * data.len() as u64);
    assert_eq!(relay.accepted(), 1);
}

#[tokio::test]
async fn shaping_adds_delay_and_limits_rate() {
    let shape = Shape {
        rate_bps: Some(40e6),
        delay: Duration::from_millis(30),
        queue: Duration::from_millis(20),
        ..Shape::default()
    };
    let relay = Relay::start(echo_server().await, shape).await.unwrap();
    // One byte: a round trip of at least two one-way delays.
    let (back, rtt) = round_trip(&relay, b"x").await;
    assert_eq!(back, b"x");
    assert!(rtt >= Duration::from_millis(60), "{rtt:?}");
    // 1 MB each way at 40 Mbit/s is at least 0.2 s of serialisation.
    let data = pattern(1_000_000, 253);
    let (back, took) = round_trip(&relay, &data).await;
    assert_eq!(back, data);
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert_eq!(relay.in_path(Dir::Up), 0);
    assert_eq!(relay.in_path(Dir::Down), 0);
}

#[tokio::test]
async fn a_per_link_bottleneck_limits_each_link_alone() {
    let shape = Shape {
        rate_bps: Some(8e6),
        bottleneck: Bottleneck::PerLink,
        queue: Duration::from_millis(20),
        ..Shape::default()
    };
    let relay = Relay::start(echo_server().await, shape).await.unwrap();
    // Four links at once, 100 kB each way on each: at least 0.1 s at 8 Mbit/s, and well under
    // the 0.4 s they would need through one shared bottleneck.
    let data = pattern(100_000, 241);
    let t0 = Instant::now();
    let trips = four_round_trips(&relay, &data).await;
    let took = t0.elapsed();
    assert!(trips.iter().all(|back| *back == data));
    assert!(took >= Duration::from_millis(100), "{took:?}");
    assert!(
        took < Duration::from_millis(400),
        "{took:?}: the links shared a bottleneck"
    );
}

async fn four_round_trips(relay: &Relay, data: &[u8]) -> [Vec<u8>; 4] {
    let (a, b, c, d) = tokio::join!(
        round_trip(relay, data),
        round_trip(relay, data),
        round_trip(relay, data),
        round_trip(relay, data),
    );
    [a.0, b.0, c.0, d.0]
}

#[tokio::test]
async fn reset_resets_both_sides_oldest_first() {
    let (relay, target) = relay_to_listener(Shape::default()).await;
    let (mut client, mut server) = pair(&relay, &target).await;
    let (_client2, _server2) = pair(&relay, &target).await;
    client.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(relay.open_links(), [0, 1]);
    assert_eq!(relay.reset(Links::Oldest), 1);
    assert_eq!(relay.open_links(), [1]);
    let err = server.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    let err = client.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(relay.reset(Links::All), 1);
    assert_eq!(relay.reset(Links::Oldest), 0);
    assert!(relay.open_links().is_empty());
}

/// With "held" written into a stalled link: checks that `server` gets nothing for 200 ms and
/// nothing crosses the relay, then that it gets "held" once the stall is lifted.
async fn check_held_until_resumed(relay: &Relay, server: &mut TcpStream) {
    let mut buf = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_millis(200), server.read(&mut buf)).await;
    assert!(read.is_err(), "a stalled link delivered {read:?}");
    assert_eq!(relay.forwarded_both(), 0);
    relay.resume(Links::All);
    tokio::time::timeout(LIMIT, server.read_exact(&mut buf))
        .await
        .expect("delivered after resume")
        .unwrap();
    assert_eq!(&buf, b"held");
}

#[tokio::test]
async fn a_stall_holds_bytes_and_resume_delivers_them() {
    let (relay, target) = relay_to_listener(Shape::default()).await;
    let (mut client, mut server) = pair(&relay, &target).await;
    relay.stall(Links::All);
    assert!(relay.forwarding_links().is_empty());
    client.write_all(b"held").await.unwrap();
    // A link accepted while the stall is set starts stalled.
    let (_late, _late_server) = pair(&relay, &target).await;
    assert_eq!(relay.open_links(), [0, 1]);
    assert!(relay.forwarding_links().is_empty());
    check_held_until_resumed(&relay, &mut server).await;
    assert_eq!(relay.forwarding_links(), [0, 1]);
}

#[tokio::test]
async fn a_blackhole_swallows_bytes_and_restore_forwards_the_next_ones() {
    let (relay, target) = relay_to_listener(Shape::default()).await;
    let (mut client, mut server) = pair(&relay, &target).await;
    relay.blackhole(Links::One(0));
    client.write_all(b"lost").await.unwrap();
    let swallowed = eventually(|| relay.swallowed(Dir::Up) == 4).await;
    assert!(swallowed, "the blackhole did not read the bytes");
    relay.restore(Links::One(0));
    client.write_all(b"next").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(LIMIT, server.read_exact(&mut buf))
        .await
        .expect("delivered after restore")
        .unwrap();
    assert_eq!(&buf, b"next");
    // Counted just after the write that delivered them.
    assert!(eventually(|| relay.forwarded(Dir::Up) == 4).await);
}

#[tokio::test]
async fn flip_bit_and_cut_damage_new_links() {
    let (relay, target) = relay_to_listener(Shape::default()).await;
    relay.flip_bit(Dir::Up, 3);
    relay.cut(Dir::Down, 2);
    let (mut client, mut server) = pair(&relay, &target).await;
    client.write_all(&[0u8; 8]).await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, [0, 0, 0, 1, 0, 0, 0, 0]);
    // Down: two bytes, then the end; the rest is discarded.
    server.write_all(b"abcdef").await.unwrap();
    server.shutdown().await.unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"ab");
}

#[tokio::test]
async fn commands_also_work_on_a_shaped_path() {
    let shape = Shape {
        delay: Duration::from_millis(10),
        ..Shape::default()
    };
    let (relay, target) = relay_to_listener(shape).await;
    let (mut client, mut server) = pair(&relay, &target).await;
    relay.stall(Links::All);
    client.write_all(b"held").await.unwrap();
    check_held_until_resumed(&relay, &mut server).await;
    assert_eq!(relay.reset(Links::All), 1);
    let mut buf = [0u8; 4];
    let err = client.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
}
