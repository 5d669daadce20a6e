//! PKI mode on the daemons' QUIC links (`[tls]`, `docs/PROTOCOL.md`, "PKI mode"): transfers both
//! ways over one and several links, a key-mode client and a PKI client on one node at once, and
//! the refusals: a client certificate from another CA, one whose identity the node's
//! `allowed_clients` does not list, a node certificate of another CA or for another name. Every
//! refusal is counted by reason at the node and at the client, and leaves no link. Transfers
//! compare hashes of what was sent and received, both directions.

use std::time::Duration;
use wanmux_config::{ClientAuth, ClientConfig, LinkTransport, ServerConfig, ServerTls};
use wanmux_core::keys::PublicKey;
use wanmux_core::status::Status;
use wanmux_core::tls::issue::{Ca, Issued};
use wanmux_core::tls::{spki_hash, spki_text, CertFiles};
use wanmux_tests::harness::{
    eventually, panics, paused_transfer, pki_files, pki_files_from, transfer, within, Auth, Tunnel,
};

const MIB: u64 = 1 << 20;
const LIMIT: Duration = Duration::from_secs(90);
/// How long the tests' revocation lists are valid.
const WEEK: Duration = Duration::from_secs(7 * 86_400);

fn transports(status: &Status) -> Vec<&str> {
    let mut t: Vec<&str> = status
        .sessions
        .iter()
        .flat_map(|s| &s.links)
        .map(|l| l.transport.as_deref().unwrap_or("-"))
        .collect();
    t.sort_unstable();
    t
}

/// The ids of every link of `status`'s sessions.
fn link_ids(status: &Status) -> Vec<u64> {
    status
        .sessions
        .iter()
        .flat_map(|s| &s.links)
        .map(|l| l.id)
        .collect()
}

fn identity(files: &CertFiles) -> PublicKey {
    PublicKey::from_bytes(spki_hash(&files.chain[0]).expect("a certificate"))
}

fn pki_client_files(c: &ClientConfig) -> &CertFiles {
    c.auth.tls().expect("a PKI client")
}

/// Transfers through `links` QUIC links, `lanes` of them with a lane stream beside them (each
/// a link of its own, with PKI mode's hello; `docs/PROTOCOL.md`, "Lane streams").
async fn pki_transfers(links: u16, lanes: u16) {
    within(LIMIT, async {
        let before = panics();
        let mut t = Tunnel::start_with(Auth::Pki, links, |_, client| client.lanes = lanes).await;
        let mut seed = 0;
        for size in [0, 1, MIB, 32 * MIB] {
            for (up, down) in [(size, 0), (0, size), (size, size)] {
                seed += 1;
                t.check_transfer(up, down, seed).await;
            }
        }
        t.check_concurrent(16, MIB, MIB).await;
        let n = usize::from(links + lanes);
        assert_eq!(t.client.live_links(), n);
        for status in [t.client.status(), t.server.status()] {
            assert_eq!(transports(&status), vec!["quic"; n]);
            let lane_links = status
                .sessions
                .iter()
                .flat_map(|s| &s.links)
                .filter(|l| l.lane);
            assert_eq!(lane_links.count(), usize::from(lanes));
        }
        // The session is the certificate's: status names its identity as allowed_clients does.
        let id = identity(pki_client_files(&t.client_config));
        let status = t.server.status();
        assert_eq!(status.sessions.len(), 1);
        assert_eq!(status.sessions[0].peer, spki_text(id.as_bytes()));
        assert_eq!(panics(), before, "something panicked");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_1_link() {
    pki_transfers(1, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_4_links_2_with_lane_streams() {
    pki_transfers(4, 2).await;
}

/// A node with static keys and `[tls]` serves a key-mode client and a PKI client at once, each
/// in its own session; both move data both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_mode_client_and_a_pki_client_on_one_node() {
    within(LIMIT, async {
        let before = panics();
        let (node_files, client_files) = pki_files();
        let mut t = Tunnel::start_with(Auth::Static { psk: false }, 2, |server, client| {
            server.tls = Some(ServerTls {
                files: node_files,
                allowed_certs: Default::default(),
            });
            client.transport = LinkTransport::Quic;
        })
        .await;
        let mut pki = t.client_config.clone();
        let nodes = t.client_config.auth.nodes().cloned().collect::<Vec<_>>();
        pki.auth = ClientAuth::Pki {
            files: client_files,
            nodes: nodes
                .into_iter()
                .map(|node| wanmux_config::NamedNode {
                    node,
                    tls_name: "127.0.0.1".into(),
                })
                .collect(),
        };
        let pki_client = wanmux_client::start(pki)
            .await
            .expect("the PKI client starts");
        tokio::time::timeout(Duration::from_secs(10), pki_client.wait_for_links(2))
            .await
            .expect("the PKI client's links come up");
        assert_eq!(t.server.session_count(), 2, "a session each");
        let mut seed = 200;
        for (up, down) in [(MIB, 0), (0, MIB), (8 * MIB, 8 * MIB)] {
            seed += 1;
            let c = transfer(pki_client.first_addr(), up, down, seed)
                .await
                .expect("transfer through the PKI client");
            t.check_result(c, seed, up, down).await;
            seed += 1;
            t.check_transfer(up, down, seed).await;
        }
        // Each client's 2 links and the 2 lane streams beside them (the default `links.lanes`).
        assert_eq!(transports(&t.server.status()), vec!["quic"; 8]);
        assert_eq!(panics(), before, "something panicked");
        pki_client.shutdown();
    })
    .await;
}

/// A client certificate renewed in place (the same `[tls]` paths; `tls issue --key` certifies
/// the same key, so the identity stays) is taken by a client reload for its next links: the old
/// certificate is then revoked and the node restarted with the list, so the client's links
/// come back only if they present the renewed one; they do, under the same identity, and no
/// link is refused as revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reload_takes_a_renewed_certificate_for_its_next_links() {
    use wanmux_core::tls::issue::{issue_files, make_ca, renew_files, revoke_files};
    use wanmux_core::tls::Usage;
    within(LIMIT, async {
        let dir = std::env::temp_dir().join(format!("wanmux-pki-renew-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (ca, out, crl) = (dir.join("ca"), dir.join("out"), dir.join("clients.crl"));
        make_ca(&ca).expect("tls ca");
        issue_files(&ca, "127.0.0.1", &out, Usage::Node, 30).expect("tls issue");
        issue_files(&ca, "a", &out, Usage::Client, 30).expect("tls issue --client");
        std::fs::copy(out.join("a.pem"), dir.join("a-old.pem")).expect("keep the old one");
        revoke_files(&ca, &crl, None, 30).expect("an empty list");
        let mut node_config = None;
        let t = Tunnel::start_with(Auth::Pki, 1, |server, client| {
            server.tls = Some(ServerTls {
                files: issued(&ca, &out, "127.0.0.1", std::slice::from_ref(&crl)),
                allowed_certs: Default::default(),
            });
            if let ClientAuth::Pki { files, .. } = &mut client.auth {
                *files = issued(&ca, &out, "a", &[]);
            }
            node_config = Some(server.clone());
        })
        .await;
        let mut node_config = node_config.expect("the node's config");
        let peer = t.server.status().sessions[0].peer.clone();
        let Tunnel {
            app,
            server,
            mut client,
            client_config: running,
        } = t;

        // Renewed on the CA machine, put in place over the old certificate (a rename, as an
        // operator's copy would do), and the old one revoked.
        let renewed = dir.join("renewed");
        let said = renew_files(&ca, "a", &out.join("a.key"), &renewed, Usage::Client, 30)
            .expect("tls issue --key");
        assert!(
            said.contains(&peer),
            "the renewal keeps the identity: {said}"
        );
        std::fs::rename(renewed.join("a.pem"), out.join("a.pem")).expect("in place");
        revoke_files(&ca, &crl, Some(&dir.join("a-old.pem")), 30).expect("revoke the old one");

        // The client reloads: the same paths, read again.
        let mut new = running.clone();
        if let ClientAuth::Pki { files, .. } = &mut new.auth {
            *files = issued(&ca, &out, "a", &[]);
        }
        assert_ne!(
            pki_client_files(&new).chain,
            pki_client_files(&running).chain,
            "the file holds the renewed certificate"
        );
        let in_force = client
            .reload(&running, new.clone())
            .await
            .expect("the reload applies");
        assert_eq!(
            pki_client_files(&in_force).chain,
            pki_client_files(&new).chain
        );

        // The node restarts on the same address, with the list that revokes the old one.
        let addr = server.local_addr();
        server.abort();
        node_config.listen = addr;
        node_config.tls.as_mut().expect("[tls]").files =
            issued(&ca, &out, "127.0.0.1", std::slice::from_ref(&crl));
        let mut tries = 0;
        let server = loop {
            match wanmux_server::start(node_config.clone()).await {
                Ok(s) => break s,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("the node restarts: {e}"),
            }
        };
        tokio::time::timeout(Duration::from_secs(20), client.wait_for_links(1))
            .await
            .expect("the client's link comes back with the renewed certificate");
        let mut t = Tunnel {
            app,
            server,
            client,
            client_config: in_force,
        };
        for (seed, (up, down)) in [(MIB, 0), (0, MIB), (4 * MIB, 4 * MIB)]
            .into_iter()
            .enumerate()
        {
            t.check_transfer(up, down, 50 + seed as u64).await;
        }
        let status = t.server.status();
        assert_eq!(status.sessions.len(), 1);
        assert_eq!(status.sessions[0].peer, peer, "the same identity");
        assert_eq!(
            failures(&status, "client_cert_revoked"),
            0,
            "the old one was presented"
        );
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// `examples/server-pki.toml` and `examples/client-pki.toml` are a working pair: with their
/// `[tls]`, `allowed_clients` and `node.tls_name` as written (only the addresses and services
/// are the test's), the client's links come up and carry data both ways, under the identity
/// the server example lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pki_examples_are_a_working_pair() {
    within(LIMIT, async {
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let node = ServerConfig::load(examples.join("server-pki.toml")).expect("server-pki.toml");
        let laptop = ClientConfig::load(examples.join("client-pki.toml")).expect("client-pki.toml");
        let listed = node.tls.as_ref().expect("[tls]").allowed_certs.clone();
        assert_eq!(listed.len(), 1, "the example lists laptop-7");
        let mut t = Tunnel::start_with(Auth::Pki, 2, |server, client| {
            server.auth = node.auth.clone();
            server.tls = node.tls.clone();
            client.auth = laptop.auth.clone();
        })
        .await;
        for (seed, (up, down)) in [(MIB, 0), (0, MIB), (4 * MIB, 4 * MIB)]
            .into_iter()
            .enumerate()
        {
            t.check_transfer(up, down, 40 + seed as u64).await;
        }
        let status = t.server.status();
        let id = listed.iter().next().expect("one identity");
        assert_eq!(status.sessions.len(), 1);
        assert_eq!(status.sessions[0].peer, spki_text(id.as_bytes()));
        // The example's 2 links and the 2 lane streams beside them (the default `links.lanes`).
        assert_eq!(transports(&status), vec!["quic"; 4]);
    })
    .await;
}

/// The count of refusals (or failed dials) with `reason` in `status`.
/// The files `tls issue` wrote for `name` under `out` (CA of `ca`), with the lists `crls`, read.
fn issued(
    ca: &std::path::Path,
    out: &std::path::Path,
    name: &str,
    crls: &[std::path::PathBuf],
) -> CertFiles {
    CertFiles::read(wanmux_core::tls::CertPaths {
        cert: out.join(format!("{name}.pem")),
        key: out.join(format!("{name}.key")),
        ca: ca.join("ca.pem"),
        crls: crls.to_vec(),
    })
    .expect("the files read")
}

fn failures(status: &Status, reason: &str) -> u64 {
    status.handshake_failures.get(reason).copied().unwrap_or(0)
}

/// Starts `bad` against `t`'s node and checks that it gets no link while the node counts a
/// refusal as `node_reason` and the client a failed dial as `client_reason`.
async fn refused(t: &Tunnel, bad: ClientConfig, node_reason: &str, client_reason: &str) {
    let node_before = failures(&t.server.status(), node_reason);
    let client = wanmux_client::start(bad).await.expect("client starts");
    let counted = eventually(Duration::from_secs(10), || {
        failures(&t.server.status(), node_reason) > node_before
            && failures(&client.status(), client_reason) > 0
    })
    .await;
    assert!(
        counted,
        "refusal not counted: node {:?}, client {:?}",
        t.server.status().handshake_failures,
        client.status().handshake_failures
    );
    assert_eq!(client.live_links(), 0, "a refused client has a link");
    assert_eq!(
        t.server.session_count(),
        1,
        "a session for a refused client"
    );
    client.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_refuses_a_client_certificate_of_another_ca_or_not_on_the_list() {
    within(LIMIT, async {
        let mut t = Tunnel::start(Auth::Pki, 1).await;
        // A client certificate of another CA (that client trusts this node's CA, so only the
        // node refuses): TLS refuses it at the node with an alert the client logs.
        let (_, foreign) = pki_files();
        let ours = pki_client_files(&t.client_config).clone();
        let mut bad = t.client_config.clone();
        if let ClientAuth::Pki { files, .. } = &mut bad.auth {
            *files = CertFiles {
                roots: ours.roots.clone(),
                ..foreign
            };
        }
        refused(&t, bad, "client_cert_invalid", "tls").await;
        t.check_transfer(1000, 1000, 1).await;
        assert_eq!(t.app.accepted(), 1);
    })
    .await;

    // A node that lists client certificates by identity refuses one of its CA not listed.
    within(LIMIT, async {
        let day = Duration::from_secs(86_400);
        let ca = Ca::generate(std::time::SystemTime::now() + 365 * day).expect("a CA");
        let (node_files, listed) = pki_files_from(&ca, "listed");
        let (_, unlisted) = pki_files_from(&ca, "unlisted");
        let listed_id = identity(&listed);
        let mut t = Tunnel::start_with(Auth::Pki, 1, |server: &mut ServerConfig, client| {
            server.tls = Some(ServerTls {
                files: node_files,
                allowed_certs: [listed_id, PublicKey::from_bytes([7; 32])].into(),
            });
            if let ClientAuth::Pki { files, .. } = &mut client.auth {
                *files = listed;
            }
        })
        .await;
        let mut other = t.client_config.clone();
        if let ClientAuth::Pki { files, .. } = &mut other.auth {
            *files = unlisted;
        }
        refused(&t, other, "unknown_client", "refused_by_node").await;
        t.check_transfer(1000, 1000, 2).await;
    })
    .await;
}

/// The client refuses a node whose certificate is of another CA than its `ca_file`, or names
/// another host than `node.tls_name`; the client says why, and the node counts the client's
/// alert as its own certificate refused (`node_cert_refused`), not the client's (a trial's node
/// blamed the client's certificate, `client_cert_invalid`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_a_node_of_another_ca_or_name() {
    within(LIMIT, async {
        let t = Tunnel::start(Auth::Pki, 1).await;
        let (_, foreign) = pki_files();
        let mut other_ca = t.client_config.clone();
        if let ClientAuth::Pki { files, .. } = &mut other_ca.auth {
            files.roots = foreign.roots;
        }
        let mut other_name = t.client_config.clone();
        if let ClientAuth::Pki { nodes, .. } = &mut other_name.auth {
            nodes[0].tls_name = "node.example".into();
        }
        for bad in [other_ca, other_name] {
            let node_before = failures(&t.server.status(), "node_cert_refused");
            let client = wanmux_client::start(bad).await.expect("client starts");
            let counted = eventually(Duration::from_secs(10), || {
                failures(&client.status(), "tls") > 0
                    && failures(&t.server.status(), "node_cert_refused") > node_before
            })
            .await;
            assert!(
                counted,
                "{:?} {:?}",
                client.status().handshake_failures,
                t.server.status().handshake_failures
            );
            assert_eq!(failures(&t.server.status(), "client_cert_invalid"), 0);
            assert_eq!(client.live_links(), 0);
            assert_eq!(t.server.session_count(), 1);
            client.shutdown();
        }
    })
    .await;
}

/// A PKI node whose client `a` runs, beside the certificate of another client `b` of its CA
/// (for the tests of revocation on reload), with the node's config for the reload.
struct Revocable {
    ca: Ca,
    node: Issued,
    b: Issued,
    running: ServerConfig,
    t: Tunnel,
}

/// `i`'s files, trusting `ca`, with `crls`.
fn pem_of(ca: &Ca, i: &Issued, crls: &[String]) -> CertFiles {
    CertFiles::from_pem(&i.cert_pem, &i.key_pem, &ca.cert_pem(), crls).expect("PEM")
}

async fn revocable() -> Revocable {
    use wanmux_core::tls::Usage;
    let day = Duration::from_secs(86_400);
    let now = std::time::SystemTime::now();
    let ca = Ca::generate(now + 365 * day).expect("a CA");
    let issue = |name: &str, usage| {
        ca.issue(name, usage, now - day, now + 30 * day)
            .expect("a certificate")
    };
    let (node, a, b) = (
        issue("127.0.0.1", Usage::Node),
        issue("a", Usage::Client),
        issue("b", Usage::Client),
    );
    let mut running = None;
    let t = Tunnel::start_with(Auth::Pki, 1, |server, client| {
        server.tls = Some(ServerTls {
            files: pem_of(&ca, &node, &[]),
            allowed_certs: Default::default(),
        });
        if let ClientAuth::Pki { files, .. } = &mut client.auth {
            *files = pem_of(&ca, &a, &[]);
        }
        running = Some(server.clone());
    })
    .await;
    let running = running.expect("the node's config");
    Revocable {
        ca,
        node,
        b,
        running,
        t,
    }
}

/// A reload reads `[tls]` again: a revocation list added to it refuses the revoked client's new
/// links (counted as `client_cert_revoked`), closes its link that was up (every certificate
/// client's links dial again under the new list), and another client of the CA keeps working:
/// a transfer of its, paused across the reload, completes with both hashes matching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_takes_a_new_revocation_list() {
    within(LIMIT, async {
        let Revocable {
            ca,
            node,
            b,
            running,
            mut t,
        } = revocable().await;
        let pem = |i: &Issued, crls: &[String]| pem_of(&ca, i, crls);
        let mut client_b = t.client_config.clone();
        if let ClientAuth::Pki { files, .. } = &mut client_b.auth {
            *files = pem(&b, &[]);
        }
        // Before: b is taken, and its link stays up into the reload.
        let before = wanmux_client::start(client_b.clone())
            .await
            .expect("b starts");
        tokio::time::timeout(Duration::from_secs(10), before.wait_for_links(1))
            .await
            .expect("b's link comes up");

        // a's connection, open and half done across the reload.
        let (up, down, seed) = (4 * MIB, 4 * MIB, 31);
        let (running_a, gate) = paused_transfer(t.addr(), up, down, seed, MIB).await;
        let a_links = link_ids(&t.client.status());
        assert!(!a_links.is_empty());

        let crl = ca.revocation_list(&[b.serial], WEEK).expect("a CRL");
        let mut new = running.clone();
        new.tls.as_mut().expect("[tls]").files = pem(&node, &[crl]);
        t.server
            .reload(&running, new)
            .await
            .expect("the reload applies");
        // b's link closes, and it dials again in vain.
        let gone = eventually(Duration::from_secs(10), || {
            before.live_links() == 0 && failures(&before.status(), "tls") > 0
        })
        .await;
        assert!(
            gone,
            "b after the reload: {} links, {:?}",
            before.live_links(),
            before.status().handshake_failures
        );
        before.shutdown();
        // a's links up before the reload were closed too, and others came up in their place.
        let redialled = eventually(Duration::from_secs(10), || {
            let now = link_ids(&t.client.status());
            now.len() == a_links.len() && now.iter().all(|id| !a_links.contains(id))
        })
        .await;
        assert!(
            redialled,
            "a's links {a_links:?}, now {:?}",
            link_ids(&t.client.status())
        );
        refused_after(&t, client_b, "client_cert_revoked").await;
        // a's links dialled again under the new list and its session went on: the connection
        // open across the reload completes, and a new one works.
        gate.open();
        let c = running_a
            .await
            .expect("a's transfer task")
            .expect("a's transfer");
        t.check_result(c, seed, up, down).await;
        t.check_transfer(MIB, MIB, 9).await;
    })
    .await;
}

/// Finding: a connection whose TLS checked its certificate before a reload that revoked it,
/// and whose hello came after, got a link nobody checked again (the reload's sweep closes the
/// links up at the moment). Its link is refused where it joins its session now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_checked_before_a_revoking_reload_gets_no_link() {
    use wanmux_core::noise::{ClientHello, SessionSecret};
    within(LIMIT, async {
        let Revocable {
            ca,
            node,
            b,
            running,
            mut t,
        } = revocable().await;
        let pem = |i: &Issued, crls: &[String]| pem_of(&ca, i, crls);
        // b's connection: TLS done (the certificate checked and taken), no hello yet.
        let quic = t.server.quic_addr().expect("QUIC endpoint");
        let dialer = wanmux_core::quic::client_endpoint_with(
            "127.0.0.1:0".parse().expect("addr"),
            wanmux_core::quic::Offer::Current,
            Some(&pem(&b, &[])),
        )
        .expect("a dialer");
        let limit = Duration::from_secs(10);
        let stream = wanmux_core::quic::connect_named(&dialer, quic, "127.0.0.1", limit)
            .await
            .expect("TLS takes b's certificate");

        let crl = ca.revocation_list(&[b.serial], WEEK).expect("a CRL");
        let mut new = running.clone();
        new.tls.as_mut().expect("[tls]").files = pem(&node, &[crl]);
        t.server
            .reload(&running, new)
            .await
            .expect("the reload applies");

        let hello = ClientHello {
            session: SessionSecret::generate(),
            link_seq: 0,
            lane: false,
            relay: false,
        };
        let auth = wanmux_core::noise::ClientAuth::Pki {
            server_name: "127.0.0.1".to_owned(),
        };
        let ping = [1, 0, 0, 0, 0, 0, 0, 0, 0];
        // The node may answer the hello; the link is closed where it would join its session.
        if let Ok((mut rd, _wr, _)) = stream.connect(&auth, &hello, &ping, limit).await {
            let end = tokio::time::timeout(limit, async {
                loop {
                    match rd.recv().await {
                        Ok(Some(_)) => continue,
                        other => return other.map(|_| ()),
                    }
                }
            })
            .await;
            assert!(end.is_ok(), "b's link stayed up after the reload");
        }
        // Only a's session, and a moves data.
        assert_eq!(t.server.session_count(), 1);
        t.check_transfer(MIB, MIB, 5).await;
    })
    .await;
}

/// `tls revoke` as an operator runs it, on the files `tls ca` and `tls issue` wrote: the node
/// lists the CA's revocation list (which revokes `c` already) in `crl_files`; `b` is revoked
/// with `tls revoke` and the node reloads (reads its `[tls]` paths again, as SIGHUP does). `b`'s
/// new links are refused as `client_cert_revoked`, `c` stays revoked, and `a` moves data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_revoke_and_a_reload_refuse_the_revoked_client_only() {
    use wanmux_core::tls::issue::{issue_files, make_ca, revoke_files};
    use wanmux_core::tls::Usage;
    within(LIMIT, async {
        let dir = std::env::temp_dir().join(format!("wanmux-pki-revoke-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (ca, out, crl) = (dir.join("ca"), dir.join("out"), dir.join("clients.crl"));
        make_ca(&ca).expect("tls ca");
        issue_files(&ca, "127.0.0.1", &out, Usage::Node, 30).expect("tls issue");
        for name in ["a", "b", "c"] {
            issue_files(&ca, name, &out, Usage::Client, 30).expect("tls issue --client");
        }
        revoke_files(&ca, &crl, Some(&out.join("c.pem")), 30).expect("tls revoke c");

        let mut running = None;
        let mut t = Tunnel::start_with(Auth::Pki, 1, |server, client| {
            server.tls = Some(ServerTls {
                files: issued(&ca, &out, "127.0.0.1", std::slice::from_ref(&crl)),
                allowed_certs: Default::default(),
            });
            if let ClientAuth::Pki { files, .. } = &mut client.auth {
                *files = issued(&ca, &out, "a", &[]);
            }
            running = Some(server.clone());
        })
        .await;
        let running = running.expect("the node's config");
        let client = |name: &str| {
            let mut c = t.client_config.clone();
            if let ClientAuth::Pki { files, .. } = &mut c.auth {
                *files = issued(&ca, &out, name, &[]);
            }
            c
        };
        let (client_b, client_c) = (client("b"), client("c"));
        // Before: b is taken, c is not.
        let before = wanmux_client::start(client_b.clone())
            .await
            .expect("b starts");
        tokio::time::timeout(Duration::from_secs(10), before.wait_for_links(1))
            .await
            .expect("b's link comes up");
        before.shutdown();
        refused_after(&t, client_c.clone(), "client_cert_revoked").await;

        let said = revoke_files(&ca, &crl, Some(&out.join("b.pem")), 30).expect("tls revoke b");
        assert!(said.contains("2 certificates revoked"), "{said}");
        let mut new = running.clone();
        new.tls.as_mut().expect("[tls]").files =
            issued(&ca, &out, "127.0.0.1", std::slice::from_ref(&crl));
        t.server
            .reload(&running, new)
            .await
            .expect("the reload applies");
        refused_after(&t, client_b, "client_cert_revoked").await;
        refused_after(&t, client_c, "client_cert_revoked").await;
        for (seed, (up, down)) in [(MIB, 0), (0, MIB), (4 * MIB, 4 * MIB)]
            .into_iter()
            .enumerate()
        {
            t.check_transfer(up, down, 30 + seed as u64).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// As `refused`, for a node that may still hold sessions of earlier clients.
async fn refused_after(t: &Tunnel, bad: ClientConfig, node_reason: &str) {
    let node_before = failures(&t.server.status(), node_reason);
    let client = wanmux_client::start(bad).await.expect("client starts");
    let counted = eventually(Duration::from_secs(10), || {
        failures(&t.server.status(), node_reason) > node_before
            && failures(&client.status(), "tls") > 0
    })
    .await;
    assert!(
        counted,
        "refusal not counted: node {:?}, client {:?}",
        t.server.status().handshake_failures,
        client.status().handshake_failures
    );
    assert_eq!(client.live_links(), 0, "a refused client has a link");
    client.shutdown();
}

/// A reload that drops a certificate's identity from `allowed_clients` closes that client's
/// session and refuses its new links; a key-mode client of the same node keeps its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_without_a_certificates_identity_closes_its_session_only() {
    within(LIMIT, async {
        let day = Duration::from_secs(86_400);
        let ca = Ca::generate(std::time::SystemTime::now() + 365 * day).expect("a CA");
        let (node_files, a) = pki_files_from(&ca, "a");
        let a_id = identity(&a);
        let mut running = None;
        let mut t = Tunnel::start_with(Auth::Static { psk: false }, 1, |server, client| {
            server.tls = Some(ServerTls {
                files: node_files,
                allowed_certs: [a_id].into(),
            });
            client.transport = LinkTransport::Quic;
            running = Some(server.clone());
        })
        .await;
        let running = running.expect("the node's config");
        let mut pki = t.client_config.clone();
        let nodes = t.client_config.auth.nodes().cloned().collect::<Vec<_>>();
        pki.auth = ClientAuth::Pki {
            files: a,
            nodes: nodes
                .into_iter()
                .map(|node| wanmux_config::NamedNode {
                    node,
                    tls_name: "127.0.0.1".into(),
                })
                .collect(),
        };
        let client_a = wanmux_client::start(pki.clone()).await.expect("a starts");
        tokio::time::timeout(Duration::from_secs(10), client_a.wait_for_links(1))
            .await
            .expect("a's link comes up");
        assert_eq!(t.server.session_count(), 2);
        let key_links = link_ids(&t.client.status());

        let mut new = running.clone();
        new.tls.as_mut().expect("[tls]").allowed_certs = [PublicKey::from_bytes([9; 32])].into();
        t.server
            .reload(&running, new)
            .await
            .expect("the reload applies");
        assert!(
            eventually(Duration::from_secs(10), || t.server.session_count() == 1).await,
            "a's session was not closed"
        );
        let before = failures(&t.server.status(), "unknown_client");
        assert!(
            eventually(Duration::from_secs(10), || {
                failures(&t.server.status(), "unknown_client") > before
            })
            .await,
            "a's new links are not refused: {:?}",
            t.server.status().handshake_failures
        );
        assert_eq!(client_a.live_links(), 0);
        client_a.shutdown();
        // The key-mode client was not touched: the same link throughout.
        t.check_transfer(MIB, MIB, 11).await;
        assert_eq!(link_ids(&t.client.status()), key_links);
    })
    .await;
}
