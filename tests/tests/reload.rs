//! Reloading a running client and server (what SIGHUP does, called on the handles): maps come
//! and go while streams on other maps, and on the removed map, run on with every byte intact;
//! a reload that cannot be applied changes nothing; a client key removed from
//! `allowed_clients` loses its links.

use std::time::Duration;
use wanmux_config::{ServerAuth, ServerConfig};
use wanmux_core::keys::generate_keypair;
use wanmux_tests::harness::{
    add_map, add_service, eventually, free_port, is_listening, paused_transfer, transfer, within,
    Auth, Tunnel,
};

const LIMIT: Duration = Duration::from_secs(60);

/// Starts a tunnel whose client maps `SERVICE` and `old`, both served by the application
/// server; returns it with the server's config.
async fn tunnel_with_old_map(auth: Auth) -> (Tunnel, ServerConfig) {
    let mut server_config = None;
    let t = Tunnel::start_with(auth, 2, |server, client| {
        let target = server.services[0].target.socket_addr().expect("an address");
        add_service(server, "old", target);
        add_map(client, "old");
        server_config = Some(server.clone());
    })
    .await;
    (t, server_config.expect("tweak ran"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_maps_while_streams_flow() {
    within(LIMIT, async {
        let (mut t, server_running) = tunnel_with_old_map(Auth::Psk).await;
        let old_addr = t.addr_of("old");
        // One transfer on the map that stays, one on the map that goes, both paused half way.
        let (staying, gate_a) = paused_transfer(t.addr(), 8 << 20, 8 << 20, 1, 1 << 20).await;
        let (leaving, gate_b) = paused_transfer(old_addr, 8 << 20, 8 << 20, 2, 1 << 20).await;

        // The server gets a service `new`, the client maps it and drops `old`.
        let target = server_running.services[0]
            .target
            .socket_addr()
            .expect("an address");
        let mut server_new = server_running.clone();
        add_service(&mut server_new, "new", target);
        let server_now = t
            .server
            .reload(&server_running, server_new)
            .await
            .expect("server reload");
        assert_eq!(server_now.services.len(), 3);
        let mut client_new = t.client_config.clone();
        client_new.maps.retain(|m| m.service.as_str() != "old");
        add_map(&mut client_new, "new");
        let client_running = t.client_config.clone();
        let client_now = t
            .client
            .reload(&client_running, client_new)
            .await
            .expect("client reload");
        assert_eq!(client_now.maps.len(), 2);
        let new_addr = t.addr_of("new");
        assert!(
            t.client.maps().iter().all(|(s, _)| s.as_str() != "old"),
            "old is still listed: {:?}",
            t.client.maps()
        );

        // The removed map accepts nothing more; the new one carries a transfer.
        assert!(
            eventually(Duration::from_secs(5), || !is_listening(old_addr)).await,
            "{old_addr} still listens after its map was removed"
        );
        assert!(tokio::net::TcpStream::connect(old_addr).await.is_err());
        let fresh = transfer(new_addr, 1 << 20, 1 << 20, 3)
            .await
            .expect("transfer on the new map");

        // Both paused transfers go on and end with every byte intact.
        gate_a.open();
        gate_b.open();
        let a = staying.await.unwrap().expect("transfer on the kept map");
        let b = leaving.await.unwrap().expect("transfer on the removed map");
        let mut results = Vec::new();
        for _ in 0..3 {
            results.push(t.app.results.recv().await.expect("app result"));
        }
        results.sort_by_key(|r| r.seed);
        for (c, r) in [&a, &b, &fresh].into_iter().zip(&results) {
            assert_eq!(c.sent, r.received, "upload of seed {}", r.seed);
            assert_eq!(r.sent, c.received, "download of seed {}", r.seed);
        }
        assert_eq!((a.sent.bytes, a.received.bytes), (8 << 20, 8 << 20));
        assert_eq!((b.sent.bytes, b.received.bytes), (8 << 20, 8 << 20));
        t.client.shutdown();
        t.server.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_bind_changes_nothing() {
    within(LIMIT, async {
        let (mut t, _) = tunnel_with_old_map(Auth::Psk).await;
        let before = t.client.maps().to_vec();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut new = t.client_config.clone();
        new.maps.retain(|m| m.service.as_str() != "old");
        add_map(&mut new, "spare");
        new.maps.push(wanmux_config::PortMap {
            listen: taken.local_addr().unwrap(),
            service: wanmux_config::ServiceName::new("blocked").unwrap(),
            spread: Default::default(),
        });
        let running = t.client_config.clone();
        let err = t
            .client
            .reload(&running, new)
            .await
            .expect_err("a port in use cannot be mapped");
        let text = err.to_string();
        assert!(
            text.contains(&taken.local_addr().unwrap().to_string())
                && text.contains("map[2].listen"),
            "{text}"
        );
        // Every map is as it was, `old` included, and still carries data.
        assert_eq!(t.client.maps(), &before[..]);
        t.check_transfer(1 << 20, 1 << 20, 4).await;
        let old = t.addr_of("old");
        let c = transfer(old, 1 << 16, 1 << 16, 5).await.expect("old map");
        t.check_result(c, 5, 1 << 16, 1 << 16).await;
        t.client.shutdown();
        t.server.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_key_removed_from_allowed_clients_loses_its_links() {
    within(LIMIT, async {
        let (mut t, running) = tunnel_with_old_map(Auth::Static { psk: false }).await;
        // The client counts a link up once it sent its key confirmation; the node, once it
        // read it.
        assert!(eventually(Duration::from_secs(5), || t.server.session_count() == 1).await);
        let mut new = running.clone();
        let ServerAuth::StaticKey {
            allowed_clients, ..
        } = &mut new.auth
        else {
            unreachable!("static-key tunnel")
        };
        let (_, other) = generate_keypair();
        *allowed_clients = [other].into();
        let now = t.server.reload(&running, new).await.expect("reload");
        assert!(
            eventually(Duration::from_secs(10), || t.client.live_links() == 0).await,
            "the removed client still has {} links",
            t.client.live_links()
        );
        assert_eq!(t.server.session_count(), 0);
        assert_eq!(t.server.link_count(), 0);

        // Allowed again, the client's redials get in and the tunnel carries data.
        let back = t.server.reload(&now, running.clone()).await.expect("reload");
        assert!(matches!(back.auth, ServerAuth::StaticKey { ref allowed_clients, .. } if allowed_clients.len() == 1));
        tokio::time::timeout(Duration::from_secs(20), t.client.wait_for_links(2))
            .await
            .expect("links come back");
        t.check_transfer(1 << 20, 1 << 20, 6).await;
        t.client.shutdown();
        t.server.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_that_changes_service_keeps_its_port_and_its_streams() {
    within(LIMIT, async {
        // A port of its own, so the map is known by it across the reload. Not one the kernel
        // gave out and took back: until the client binds it, the outgoing connection or the
        // `127.0.0.1:0` listener of a test running beside this one could be given it.
        let port = free_port();
        let mut server_running = None;
        let mut t = Tunnel::start_with(Auth::Psk, 2, |server, client| {
            let target = server.services[0].target.socket_addr().expect("an address");
            add_service(server, "old", target);
            client.maps.push(wanmux_config::PortMap {
                listen: port,
                service: wanmux_config::ServiceName::new("old").unwrap(),
                spread: Default::default(),
            });
            server_running = Some(server.clone());
        })
        .await;
        let server_running = server_running.expect("tweak ran");
        let (running, gate) = paused_transfer(port, 4 << 20, 4 << 20, 8, 1 << 20).await;

        // The server offers `new` instead of `old`; the client's map on `port` follows.
        let target = server_running.services[0].target.socket_addr().unwrap();
        let mut server_new = server_running.clone();
        server_new.services.retain(|s| s.name.as_str() != "old");
        add_service(&mut server_new, "new", target);
        t.server.reload(&server_running, server_new).await.unwrap();
        let mut client_new = t.client_config.clone();
        for m in &mut client_new.maps {
            if m.listen == port {
                m.service = wanmux_config::ServiceName::new("new").unwrap();
            }
        }
        let client_running = t.client_config.clone();
        t.client.reload(&client_running, client_new).await.unwrap();
        assert_eq!(t.addr_of("new"), port, "the map moved off its port");

        // A new connection on the port reaches `new` (`old` is gone at the server, so it
        // could not go through otherwise); the paused one, opened on `old`, finishes.
        let fresh = transfer(port, 1 << 20, 1 << 20, 9)
            .await
            .expect("new service");
        gate.open();
        let paused = running
            .await
            .unwrap()
            .expect("stream opened before the reload");
        let mut results = vec![
            t.app.results.recv().await.unwrap(),
            t.app.results.recv().await.unwrap(),
        ];
        results.sort_by_key(|r| r.seed);
        for (c, r) in [&paused, &fresh].into_iter().zip(&results) {
            assert_eq!(c.sent, r.received, "upload of seed {}", r.seed);
            assert_eq!(r.sent, c.received, "download of seed {}", r.seed);
        }
        assert_eq!(paused.received.bytes, 4 << 20);
        t.client.shutdown();
        t.server.shutdown();
    })
    .await;
}
