//! PKI mode on real QUIC links on 127.0.0.1:0 (`docs/PROTOCOL.md`, "PKI mode"): a link comes up
//! and carries messages both ways with certificates from an operator CA, beside a key-mode
//! client on the same node endpoint; every certificate failure (another CA at either end, the
//! wrong name, expired at either end, revoked) is refused by TLS on both ends with the reason.

use std::time::SystemTime;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use super::*;
use crate::keys::generate_keypair;
use crate::noise::{SessionSecret, MAX_PLAINTEXT};
use crate::tls::issue::{Ca, Issued};
use crate::tls::{spki_hash, Usage};

const LONG: Duration = Duration::from_secs(10);
const DAY: Duration = Duration::from_secs(86_400);
const NAME: &str = "node.test";

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("an address")
}

fn ca() -> Ca {
    Ca::generate(SystemTime::now() + 3650 * DAY).expect("a CA")
}

/// A certificate of `ca` for `name`, valid from `from` to `to` days from today.
fn cert(ca: &Ca, name: &str, usage: Usage, from: i64, to: i64) -> Issued {
    let at = |days: i64| {
        if days >= 0 {
            SystemTime::now() + DAY * days as u32
        } else {
            SystemTime::now() - DAY * (-days) as u32
        }
    };
    ca.issue(name, usage, at(from), at(to))
        .expect("a certificate")
}

fn files(cert: &Issued, trusts: &Ca, crls: &[String]) -> CertFiles {
    CertFiles::from_pem(&cert.cert_pem, &cert.key_pem, &trusts.cert_pem(), crls).expect("PEM")
}

fn hello() -> ClientHello {
    ClientHello {
        session: SessionSecret::generate(),
        link_seq: 1,
        lane: true,
        relay: false,
    }
}

/// The node's side of its next link, with the identity its client presented.
async fn accept_next(
    node: &Listener,
    auth: &ServerAuth,
) -> Result<(Option<PublicKey>, Accepted), LinkError> {
    let incoming = node.endpoint().accept().await.ok_or(LinkError::Closed)?;
    let stream = accept(node, incoming, LONG).await?;
    let cert = stream.client_cert().copied();
    let accepted = stream
        .accept_with(auth, LONG, |hello, _| {
            assert!(hello.lane, "the hello's flags arrive");
            Ok(ServerHello {
                node_id: 9,
                epoch: 11,
                relay: false,
            })
        })
        .await?;
    Ok((cert, accepted))
}

async fn dial(
    dialer: &Dialer,
    addr: SocketAddr,
    name: &str,
    auth: &ClientAuth,
) -> Result<(LinkReader, LinkWriter, ServerHello), LinkError> {
    let stream = connect_named(dialer, addr, name, LONG).await?;
    stream.connect(auth, &hello(), b"", LONG).await
}

fn pki_auth(name: &str) -> ClientAuth {
    ClientAuth::Pki {
        server_name: name.to_owned(),
    }
}

/// A node that serves key-mode clients too (static keys): what the tests' key-mode client uses.
fn node_auth() -> (ServerAuth, ClientAuth) {
    let (client_priv, client_pub) = generate_keypair();
    let (node_priv, node_pub) = generate_keypair();
    (
        ServerAuth {
            private_key: Some(node_priv),
            allowed_clients: [client_pub].into(),
            psk: None,
        },
        ClientAuth::Static {
            local: client_priv,
            server: node_pub,
            psk: None,
        },
    )
}

async fn carry(mut writer: LinkWriter, mut reader: LinkReader, seed: u64) -> LinkWriter {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut msgs: Vec<Vec<u8>> = vec![vec![0x5A; MAX_PLAINTEXT]];
    for _ in 0..40 {
        let mut m = vec![0; rng.random_range(1..=MAX_PLAINTEXT)];
        rng.fill_bytes(&mut m);
        msgs.push(m);
    }
    let sent = msgs.clone();
    let send = tokio::spawn(async move {
        for m in &sent {
            writer.seal(m).expect("seal");
            writer.flush().await.expect("flush");
        }
        writer
    });
    for (i, m) in msgs.iter().enumerate() {
        let got = reader.recv().await.expect("recv").expect("a message");
        assert!(got[..] == m[..], "message {i} differs");
    }
    send.await.expect("sender")
}

/// A node with `node_cert`, trusting client certificates of `client_ca` (minus `crls`).
fn node(node_cert: &Issued, client_ca: &Ca, crls: &[String]) -> Listener {
    server_endpoint_with(
        loopback(),
        Offer::Current,
        Some(&files(node_cert, client_ca, crls)),
    )
    .expect("node endpoint")
}

fn client(client_cert: &Issued, node_ca: &Ca) -> Dialer {
    client_endpoint_with(
        loopback(),
        Offer::Current,
        Some(&files(client_cert, node_ca, &[])),
    )
    .expect("client endpoint")
}

fn addr(node: &Listener) -> SocketAddr {
    node.endpoint().local_addr().expect("address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pki_link_carries_messages_both_ways_beside_a_key_mode_client() {
    let ca = ca();
    let node_cert = cert(&ca, NAME, Usage::Node, -1, 30);
    let client_cert = cert(&ca, "laptop-1", Usage::Client, -1, 30);
    let node = node(&node_cert, &ca, &[]);
    let dialer = client(&client_cert, &ca);
    let (s_auth, key_client) = node_auth();

    let auth = pki_auth(NAME);
    let (dialled, accepted) = tokio::join!(
        dial(&dialer, addr(&node), NAME, &auth),
        accept_next(&node, &s_auth)
    );
    let (reader, writer, reply) = dialled.expect("the client's side");
    let (cert_id, acc) = accepted.expect("the node's side");
    assert_eq!((reply.node_id, reply.epoch), (9, 11));
    assert!(acc.pki);
    assert_eq!(cert_id, Some(PublicKey::from_bytes(client_cert.spki)));
    assert_eq!(
        acc.client_key, cert_id,
        "the certificate's identity is the client's key"
    );
    assert!(
        !writer.encrypts() && !acc.reader.decrypts(),
        "TLS is the one encryption"
    );
    // The identity is the SHA-256 of the certificate's SubjectPublicKeyInfo.
    use rustls::pki_types::pem::PemObject as _;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(client_cert.cert_pem.as_bytes());
    assert_eq!(spki_hash(&der.expect("PEM")), Some(client_cert.spki));

    // A key-mode client on the same node endpoint at the same time.
    let plain = client_endpoint(loopback()).expect("key-mode client endpoint");
    let (k_dialled, k_accepted) = tokio::join!(
        async {
            let stream = connect(&plain, addr(&node), LONG).await?;
            stream.connect(&key_client, &hello(), b"", LONG).await
        },
        accept_next(&node, &s_auth)
    );
    let (k_reader, k_writer, _) = k_dialled.expect("the key-mode client's side");
    let (k_cert, k_acc) = k_accepted.expect("the key-mode link at the node");
    assert!(k_cert.is_none() && !k_acc.pki);

    tokio::join!(
        carry(writer, acc.reader, 1),
        carry(acc.writer, reader, 2),
        carry(k_writer, k_acc.reader, 3),
        carry(k_acc.writer, k_reader, 4),
    );
}

/// Both ends' results for a link that TLS must refuse: the refusing end's error must name
/// `reason`; the other end sees a TLS alert, or a closed connection.
/// `dialer`'s link to `node` under [`NAME`] comes up at both ends (`what` names the case).
async fn taken(node: &Listener, dialer: &Dialer, what: &str) {
    let (s_auth, _) = node_auth();
    let auth = pki_auth(NAME);
    let (dialled, accepted) = tokio::join!(
        dial(dialer, addr(node), NAME, &auth),
        accept_next(node, &s_auth)
    );
    if let Err(e) = dialled {
        panic!("{what}: the client's side failed: {e}");
    }
    if let Err(e) = accepted {
        panic!("{what}: the node did not take it: {e}");
    }
}

async fn refused(node: &Listener, dialer: &Dialer, name: &str, at_client: bool, reason: &str) {
    let (s_auth, _) = node_auth();
    let auth = pki_auth(name);
    let (dialled, accepted) = tokio::join!(
        dial(dialer, addr(node), name, &auth),
        accept_next(node, &s_auth)
    );
    let c = dialled
        .map(|_| ())
        .expect_err("the client must not get a link");
    let n = accepted
        .map(|_| ())
        .expect_err("the node must not take the link");
    let (refuser, other) = if at_client { (&c, &n) } else { (&n, &c) };
    match refuser {
        LinkError::Tls(why) => assert!(
            why.to_lowercase().contains(reason),
            "{why} (expected {reason})"
        ),
        e => panic!("expected a TLS refusal naming {reason}, got {e}"),
    }
    assert!(
        matches!(other, LinkError::Tls(_) | LinkError::Closed),
        "the other end: {other}"
    );
    if !at_client {
        // The client is told why: the node's TLS alert.
        assert!(
            matches!(c, LinkError::Tls(ref m) if m.contains("alert")),
            "{c}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_a_node_certificate_of_another_ca_the_wrong_name_or_expired() {
    let (ca, other) = (ca(), ca());
    let client_cert = cert(&ca, "laptop-1", Usage::Client, -1, 30);
    let dialer = client(&client_cert, &ca);

    let foreign = node(&cert(&other, NAME, Usage::Node, -1, 30), &ca, &[]);
    refused(&foreign, &dialer, NAME, true, "unknownissuer").await;

    let named = node(&cert(&ca, "other.test", Usage::Node, -1, 30), &ca, &[]);
    refused(&named, &dialer, NAME, true, "not valid for name").await;

    let expired = node(&cert(&ca, NAME, Usage::Node, -30, -2), &ca, &[]);
    refused(&expired, &dialer, NAME, true, "expired").await;

    // A client certificate is not a node's (its extended key usage says client).
    let client_as_node = node(&cert(&ca, NAME, Usage::Client, -1, 30), &ca, &[]);
    refused(&client_as_node, &dialer, NAME, true, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_refuses_a_client_certificate_of_another_ca_expired_or_revoked() {
    let (ca, other) = (ca(), ca());
    let node_cert = cert(&ca, NAME, Usage::Node, -1, 30);

    let foreign = client(&cert(&other, "laptop-1", Usage::Client, -1, 30), &ca);
    refused(
        &node(&node_cert, &ca, &[]),
        &foreign,
        NAME,
        false,
        "unknownissuer",
    )
    .await;

    let expired = client(&cert(&ca, "laptop-1", Usage::Client, -30, -2), &ca);
    refused(
        &node(&node_cert, &ca, &[]),
        &expired,
        NAME,
        false,
        "expired",
    )
    .await;

    let revoked_cert = cert(&ca, "laptop-2", Usage::Client, -1, 30);
    let crl = ca
        .revocation_list(&[revoked_cert.serial], 7 * DAY)
        .expect("a CRL");
    let with_crl = node(&node_cert, &ca, std::slice::from_ref(&crl));
    refused(
        &with_crl,
        &client(&revoked_cert, &ca),
        NAME,
        false,
        "revoked",
    )
    .await;

    // The same node still takes a client the list does not name.
    let good = client(&cert(&ca, "laptop-3", Usage::Client, -1, 30), &ca);
    taken(&with_crl, &good, "a client the CRL does not name").await;

    // With a list of another CA only, no list gives a client's status, and rustls refuses it
    // (what `check` calls an error: a CA of client_ca_file without its own list).
    let other_list = other
        .revocation_list(&[], 7 * DAY)
        .expect("another CA's CRL");
    refused(
        &node(&node_cert, &ca, &[other_list]),
        &client(&cert(&ca, "laptop-4", Usage::Client, -1, 30), &ca),
        NAME,
        false,
        "unknownrevocationstatus",
    )
    .await;
}

/// The clear hello is checked like the key confirmation: a secret that does not derive the
/// session id is refused, as is a client with a certificate that opens with a Noise mode byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_refuses_a_pki_hello_without_the_sessions_secret_or_with_a_noise_mode() {
    use tokio::io::AsyncWriteExt as _;
    let ca = ca();
    let node = node(&cert(&ca, NAME, Usage::Node, -1, 30), &ca, &[]);
    let dialer = client(&cert(&ca, "laptop-1", Usage::Client, -1, 30), &ca);
    let (s_auth, _) = node_auth();
    for (bytes, why) in [
        // The right layout, a secret of another session id.
        (
            {
                let mut b = vec![crate::noise::PKI_MODE, 4];
                b.extend_from_slice(&[7; 16]);
                b.extend_from_slice(&[0, 0, 0, 1, 0]);
                b.extend_from_slice(&[8; 32]);
                b
            },
            "session_secret",
        ),
        (vec![0x11; 60], "PKI hello"),
        (vec![crate::noise::PKI_MODE, 3], "version"),
    ] {
        // Set once the node decided: the dialler keeps its connection until then (a connection
        // closed first is refused for that instead, as a fixed wait allowed on a loaded machine).
        let decided = tokio::sync::Notify::new();
        let (sent, accepted) = tokio::join!(
            async {
                let stream = connect_named(&dialer, addr(&node), NAME, LONG).await?;
                let (_rd, mut wr) = stream.into_halves();
                wr.write_all(&bytes).await?;
                wr.flush().await?;
                // Keep the connection until the node decided.
                decided.notified().await;
                Ok::<_, LinkError>(())
            },
            async {
                let accepted = accept_next(&node, &s_auth).await;
                decided.notify_one();
                accepted
            }
        );
        sent.expect("the bytes went out");
        match accepted {
            Err(LinkError::Auth(m) | LinkError::Protocol(m)) => assert!(m.contains(why), "{m}"),
            other => panic!("{why}: {:?}", other.map(|_| ())),
        }
    }
}

/// Finding: a node resumed TLS sessions, and a resumed handshake skips the client certificate's
/// checks: a certificate got in on its tickets for minutes after it expired, while a fresh
/// handshake with it was refused. A node issues no tickets now: every link's handshake checks
/// the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_that_expired_gets_no_link_on_a_resumed_session() {
    let ca = ca();
    let node = node(&cert(&ca, NAME, Usage::Node, -1, 30), &ca, &[]);
    let now = SystemTime::now();
    let expires = now + Duration::from_secs(3);
    let short = ca
        .issue_until("laptop-1", Usage::Client, expires)
        .expect("a certificate");
    // One dialer, as a client's: its TLS sessions are kept for its next dials.
    let dialer = client(&short, &ca);
    taken(&node, &dialer, "a link while the certificate is valid").await;
    // Past the expiry (certificates count whole seconds).
    let left = expires
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(1_500)).await;
    refused(&node, &dialer, NAME, false, "expired").await;
}
