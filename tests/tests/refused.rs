//! Every way a link is refused for a configuration mistake is a `warn` line that says what to
//! fix, on the side that can see it (both, where both can), and a mistake that makes a client
//! redial costs one line per side per minute however many dials fail.

use std::num::NonZeroU16;
use std::time::Duration;
use wanmux_config::{ClientAuth, ClientConfig, LinkTransport, ServerAuth, ServerConfig};
use wanmux_core::keys::{generate_keypair, Psk};
use wanmux_tests::harness::{configs, point_client_at, within, Auth};
use wanmux_tests::logs::{self, Logs};

const WAIT: Duration = Duration::from_secs(10);
const SERVER: &str = "wanmux_server::refused";
const CLIENT: &str = "wanmux_client::ready";

/// Runs a server and a client made from `auth`'s matching configs after `tweak` broke them,
/// until the client's first dial failed; returns the lines logged meanwhile and then.
struct Case {
    logs: Logs,
    mark: usize,
    server: wanmux_server::ServerHandle,
    client: wanmux_client::ClientHandle,
}

impl Case {
    async fn start(
        logs: &Logs,
        auth: Auth,
        links: u16,
        tweak: impl FnOnce(&mut ServerConfig, &mut ClientConfig),
    ) -> Case {
        let mark = logs.mark();
        let (mut server_config, mut client_config) =
            configs(auth, "127.0.0.1:9".parse().unwrap(), links);
        tweak(&mut server_config, &mut client_config);
        let server = wanmux_server::start(server_config).await.expect("server");
        point_client_at(&mut client_config, server.local_addr());
        let client = wanmux_client::start(client_config).await.expect("client");
        tokio::time::timeout(WAIT, client.wait_first_dial())
            .await
            .expect("the first dial settles");
        Case {
            logs: logs.clone(),
            mark,
            server,
            client,
        }
    }

    /// The `warn` line of `target` with every one of `parts`.
    async fn warned(&self, target: &str, parts: &[&str]) -> String {
        let mut all = vec!["WARN", target];
        all.extend_from_slice(parts);
        self.logs
            .wait_for(self.mark, &all, WAIT)
            .await
            .unwrap_or_else(|| {
                panic!(
                    "no warn line of {target} with {parts:?}; logged:\n{}",
                    self.logs.since(self.mark).join("\n")
                )
            })
    }

    fn count(&self, parts: &[&str]) -> usize {
        self.logs
            .since(self.mark)
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count()
    }

    fn stop(self) {
        assert_eq!(self.client.live_links(), 0, "a link came up");
        self.client.shutdown();
        self.server.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_is_a_warn_line_naming_what_to_fix() {
    let logs = logs::capture("info,wanmux_server::refused=debug,wanmux_client::ready=debug");
    within(Duration::from_secs(120), async {
        // A client key the node does not list: the node names the key. Four links dial at
        // once and redial: one line per side.
        let case = unknown_client(&logs, LinkTransport::Tcp, 4).await;
        // Let the slots redial a few times, then count.
        let redialled = logs
            .wait_for(case.mark, &["DEBUG", CLIENT, "dial failed"], WAIT)
            .await
            .is_some();
        assert!(redialled);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let refused = case.count(&["DEBUG", SERVER, "link refused"]);
        let failed = case.count(&["DEBUG", CLIENT, "dial failed"]);
        assert!(
            refused >= 4 && failed >= 4,
            "{refused} refusals, {failed} failed dials"
        );
        assert_eq!(
            case.count(&["WARN", SERVER]),
            1,
            "server lines not rate-limited"
        );
        assert_eq!(
            case.count(&["WARN", CLIENT]),
            1,
            "client lines not rate-limited"
        );
        case.stop();

        key_mistakes(&logs, LinkTransport::Tcp).await;
        key_mistakes(&logs, LinkTransport::Quic).await;

        // QUIC links to a node without QUIC: no answer at all.
        let case = Case::start(&logs, Auth::Psk, 1, |server, client| {
            server.quic = false;
            client.transport = LinkTransport::Quic;
            client.handshake_timeout = Duration::from_millis(300);
        })
        .await;
        case.warned(CLIENT, &["nothing answers QUIC", "server.quic = false"])
            .await;
        case.stop();
    })
    .await;
}

/// A client with `links` links over `transport` whose key the node does not list: the node
/// names the key, the client the setting; returns the case once both said so.
async fn unknown_client(logs: &Logs, transport: LinkTransport, links: u16) -> Case {
    let mut client_key = None;
    let case = Case::start(
        logs,
        Auth::Static { psk: false },
        links,
        |server, client| {
            client.transport = transport;
            if let ServerAuth::StaticKey {
                allowed_clients, ..
            } = &mut server.auth
            {
                *allowed_clients = [generate_keypair().1].into();
            }
            if let ClientAuth::StaticKey { private_key, .. } = &client.auth {
                client_key = Some(private_key.public_key());
            }
        },
    )
    .await;
    let key = client_key.expect("static-key client").to_string();
    case.warned(SERVER, &[&key, "is not in server.allowed_clients"])
        .await;
    case.warned(CLIENT, &["it refused this client", "allowed_clients"])
        .await;
    case
}

/// The mistakes in keys, PSKs and ids, each refused with a `warn` line on the side that can see
/// it, over `transport`: on QUIC links (the default) the handshake runs on the connection's
/// first stream, and an end that refuses the other closes the connection rather than a TCP
/// socket (quinn's "connection lost" once said nothing more on either side). Run one transport
/// after the other in one test: the captured log is the process's.
async fn key_mistakes(logs: &Logs, transport: LinkTransport) {
    unknown_client(logs, transport, 1).await.stop();

    // PSK-only, another PSK: the node cannot read message 1.
    let case = Case::start(logs, Auth::Psk, 1, |_, client| {
        client.transport = transport;
        if let ClientAuth::PskOnly { psk, .. } = &mut client.auth {
            *psk = Psk::generate();
        }
    })
    .await;
    case.warned(SERVER, &["PSK differs from this node's server.psk"])
        .await;
    case.warned(CLIENT, &["the PSK differs"]).await;
    case.stop();

    // Static keys with a PSK, another PSK: the client cannot read message 2.
    let case = Case::start(logs, Auth::Static { psk: true }, 1, |_, client| {
        client.transport = transport;
        if let ClientAuth::StaticKey { psk, .. } = &mut client.auth {
            *psk = Some(Psk::generate());
        }
    })
    .await;
    case.warned(SERVER, &["could not decrypt", "PSK differs"])
        .await;
    case.warned(CLIENT, &["did not decrypt", "PSK differs"])
        .await;
    case.stop();

    // The client pinned another key for the node.
    let case = Case::start(logs, Auth::Static { psk: false }, 1, |_, client| {
        client.transport = transport;
        if let ClientAuth::StaticKey { nodes, .. } = &mut client.auth {
            nodes[0].public_key = generate_keypair().1;
        }
    })
    .await;
    case.warned(SERVER, &["node.public_key is not this node's public key"])
        .await;
    case.warned(CLIENT, &["it refused this client"]).await;
    case.stop();

    // A PSK on the node only: the client's handshake is another mode.
    let case = Case::start(logs, Auth::Static { psk: true }, 1, |_, client| {
        client.transport = transport;
        if let ClientAuth::StaticKey { psk, .. } = &mut client.auth {
            *psk = None;
        }
    })
    .await;
    case.warned(SERVER, &["another handshake", "with a PSK"])
        .await;
    case.warned(CLIENT, &["it refused this client"]).await;
    case.stop();

    // Another node id: the client finds it in the node's reply, and tells the node why it
    // closes the link (`CLOSE` code `WRONG_NODE`), which the node would otherwise read as a
    // client that could not decrypt its reply, a PSK that differs (static keys with a PSK).
    for auth in [Auth::Psk, Auth::Static { psk: true }] {
        let case = Case::start(logs, auth, 1, |_, client| {
            client.transport = transport;
            match &mut client.auth {
                ClientAuth::PskOnly { nodes, .. } => nodes[0].id = NonZeroU16::new(2).unwrap(),
                ClientAuth::StaticKey { nodes, .. } => {
                    nodes[0].node.id = NonZeroU16::new(2).unwrap()
                }
                _ => unreachable!("key modes only"),
            }
        })
        .await;
        case.warned(
            CLIENT,
            &["reports another node id than node.id = 2", "server.node_id"],
        )
        .await;
        case.warned(
            "wanmux_core::driver::link",
            &["the client has another node.id than this node's server.node_id"],
        )
        .await;
        // The client dials again (backing off) and each link ends so; the node's line comes
        // once a minute with the count (a trial's node logged 87 in 35 s).
        tokio::time::sleep(Duration::from_secs(4)).await;
        let dials = case.client.status().handshake_failures["node_id_mismatch"];
        assert!(
            dials >= 2,
            "{auth:?}: the client dialled {dials} times in 4 s"
        );
        assert_eq!(
            case.count(&["WARN", "another node.id than this node's server.node_id"]),
            1,
            "{auth:?}: one warn line a minute at the node"
        );
        assert_eq!(
            case.count(&["PSK differs"]),
            0,
            "{auth:?}: blamed on the PSK"
        );
        case.stop();
    }
}
