//! A node under a flood of stalled connections, with few file descriptors (issue 23, finding
//! 4): 150 connections that send one byte and stall, from one address, against a node limited
//! to 128 open files. Handshake slots are taken after `accept` and capped per source address,
//! and a connection with no slot is closed at once, so the flood holds few descriptors: a client
//! from another address still gets its links, and a session already up still opens streams
//! (each needs a descriptor for its service connection).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use wanmux_tests::harness::{app_server, point_client_at, psk_node_file, transfer, within};
use wanmux_tests::process::Daemon;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_from_one_address_leave_room_for_clients_and_streams() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        panic!("prlimit (util-linux) is needed to start the node with few file descriptors");
    }
    within(Duration::from_secs(60), async {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("flood");
        let mut app = app_server().await;
        let (config, addr, mut client_config) =
            psk_node_file(&dir, app.addr, "handshake_timeout_ms = 20000", 2);
        let _node = Daemon::spawn(
            Command::new("prlimit")
                .args(["--nofile=128:128", "--"])
                .arg(env!("CARGO_BIN_EXE_wanmux-server"))
                .args(["run", "--config"])
                .arg(&config)
                .env("RUST_LOG", "warn")
                .env_remove("NOTIFY_SOCKET")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        );
        point_client_at(&mut client_config, addr);
        let first = wanmux_client::start(client_config.clone()).await.unwrap();
        first.wait_for_links(2).await;

        // The flood: from 127.0.0.2, one byte each (a valid mode byte: NNpsk0, ChaCha20-Poly1305,
        // so the node waits for the rest of message 1), then silence (the node's handshake
        // timeout is 20 s, longer than this test).
        let mut flood = Vec::new();
        for _ in 0..150 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            if let Ok(mut tcp) = socket.connect(addr).await {
                let _ = tcp.write_all(&[0x31]).await;
                flood.push(tcp);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;

        // A session already up opens streams: each needs a service connection at the node.
        for seed in 0..20 {
            let c = transfer(first.first_addr(), 50_000, 50_000, seed)
                .await
                .expect("a stream of the established session");
            let a = app.results.recv().await.expect("app server result");
            assert_eq!((a.received, a.sent), (c.sent, c.received), "stream {seed}");
        }
        // A new client (from 127.0.0.1) gets its links.
        let mut second_config = client_config.clone();
        second_config.maps[0].listen = "127.0.0.1:0".parse().unwrap();
        let second = wanmux_client::start(second_config).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), second.wait_for_links(2))
            .await
            .expect("a new client's links come up during the flood");
        let c = transfer(second.first_addr(), 10_000, 10_000, 99)
            .await
            .expect("a stream of the new client");
        let a = app.results.recv().await.expect("app server result");
        assert_eq!((a.received, a.sent), (c.sent, c.received));
        drop(flood);
        first.shutdown();
        second.shutdown();
    })
    .await;
}
