//! Real QUIC links on 127.0.0.1:0: the version each pair of ends settles on, messages both ways
//! in every auth mode, a man in the middle who relays the handshake between two TLS
//! connections, a wrong pinned key, and a node whose TLS signature does not match its
//! certificate.

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::io::AsyncWriteExt as _;

use super::*;
use crate::keys::{generate_keypair, Psk};
use crate::noise::{SessionSecret, MAX_PLAINTEXT};

const LONG: Duration = Duration::from_secs(10);
const NODE: u16 = 7;
const FIRST: &[u8] = b"\x01first";

/// The auth modes: IK, IKpsk2, NNpsk0.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Ik,
    IkPsk2,
    NnPsk0,
}

const MODES: [Mode; 3] = [Mode::Ik, Mode::IkPsk2, Mode::NnPsk0];

/// Matching client and node credentials for `mode`.
fn creds(mode: Mode) -> (ClientAuth, ServerAuth) {
    let (client_priv, client_pub) = generate_keypair();
    let (node_priv, node_pub) = generate_keypair();
    let psk = Psk::generate();
    match mode {
        Mode::Ik | Mode::IkPsk2 => {
            let psk = matches!(mode, Mode::IkPsk2).then_some(psk);
            (
                ClientAuth::Static {
                    local: client_priv,
                    server: node_pub,
                    psk: psk.clone(),
                },
                ServerAuth {
                    private_key: Some(node_priv),
                    allowed_clients: [client_pub].into(),
                    psk,
                },
            )
        }
        Mode::NnPsk0 => (
            ClientAuth::Psk(psk.clone()),
            ServerAuth {
                private_key: None,
                allowed_clients: Default::default(),
                psk: Some(psk),
            },
        ),
    }
}

fn hello() -> ClientHello {
    ClientHello {
        session: SessionSecret::generate(),
        link_seq: 1,
        lane: false,
        relay: false,
    }
}

fn reply(_: &ReceivedHello, _: Option<&PublicKey>) -> Result<ServerHello, LinkError> {
    Ok(ServerHello {
        node_id: NODE,
        epoch: 3,
        relay: false,
    })
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("an address")
}

fn node_addr(node: &Listener) -> SocketAddr {
    node.endpoint().local_addr().expect("the node's address")
}

/// The node's side of its next link: the QUIC handshake, then the link's handshake.
async fn accept_next(node: &Listener, auth: &ServerAuth) -> Result<(Version, Accepted), LinkError> {
    let incoming = node.endpoint().accept().await.ok_or(LinkError::Closed)?;
    let stream = accept(node, incoming, LONG).await?;
    let version = stream.version();
    Ok((version, stream.accept_with(auth, LONG, reply).await?))
}

type Dialled = (Version, LinkReader, LinkWriter, ServerHello);

/// The client's side of a link to `addr`.
async fn dial(dialer: &Dialer, addr: SocketAddr, auth: &ClientAuth) -> Result<Dialled, LinkError> {
    let stream = connect(dialer, addr, LONG).await?;
    let version = stream.version();
    let (reader, writer, hello) = stream.connect(auth, &hello(), FIRST, LONG).await?;
    Ok((version, reader, writer, hello))
}

/// Sends messages of random sizes (up to the largest) from `writer` to `reader` and checks each
/// arrives intact and in order. Returns the writer: dropping it closes its end's connection,
/// which the other direction may still be using.
async fn carry(mut writer: LinkWriter, mut reader: LinkReader, seed: u64) -> LinkWriter {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut msgs: Vec<Vec<u8>> = vec![Vec::new(), vec![0x5A; MAX_PLAINTEXT]];
    for _ in 0..60 {
        let mut m = vec![0; rng.random_range(0..=MAX_PLAINTEXT)];
        rng.fill_bytes(&mut m);
        msgs.push(m);
    }
    let sent = msgs.clone();
    let send = tokio::spawn(async move {
        for m in &sent {
            writer.seal(m).expect("seal");
            if writer.pending() > 256 * 1024 {
                writer.flush().await.expect("flush");
            }
        }
        writer.flush().await.expect("flush");
        writer
    });
    for (i, m) in msgs.iter().enumerate() {
        let got = reader.recv().await.expect("recv").expect("a message");
        assert!(got[..] == m[..], "message {i} differs");
    }
    send.await.expect("sender")
}

/// A link between ends offering `client` and `node`: it comes up in every auth mode, on the
/// version both ends know best, encrypting by Noise only on `wanmux/1`, and carries messages
/// both ways.
async fn link_between(client: Offer, node: Offer, expected: Version) {
    let listener = server_endpoint_offering(loopback(), node).expect("node endpoint");
    let dialer = client_endpoint_offering(loopback(), client).expect("client endpoint");
    for (i, mode) in MODES.into_iter().enumerate() {
        let (c_auth, s_auth) = creds(mode);
        let (dialled, accepted) = tokio::join!(
            dial(&dialer, node_addr(&listener), &c_auth),
            accept_next(&listener, &s_auth)
        );
        let (version, reader, writer, hello) = dialled.expect("the client's handshake");
        let (node_version, accepted) = accepted.expect("the node's handshake");
        assert_eq!((version, node_version), (expected, expected), "{mode:?}");
        assert_eq!(hello.node_id, NODE);
        assert_eq!(&accepted.first[..], FIRST);
        let noise = expected == Version::V1;
        assert_eq!(writer.encrypts(), noise, "{mode:?}");
        assert_eq!(reader.decrypts(), noise, "{mode:?}");
        assert_eq!(accepted.writer.encrypts(), noise, "{mode:?}");
        assert_eq!(accepted.reader.decrypts(), noise, "{mode:?}");
        let seed = i as u64 * 2;
        tokio::join!(
            carry(writer, accepted.reader, seed),
            carry(accepted.writer, reader, seed + 1)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_ends_run_wanmux_2_with_one_encryption_in_every_auth_mode() {
    link_between(Offer::Current, Offer::Current, Version::V2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wanmux_1_client_and_a_current_node_run_wanmux_1() {
    link_between(Offer::V1Only, Offer::Current, Version::V1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_current_client_and_a_wanmux_1_node_run_wanmux_1() {
    link_between(Offer::Current, Offer::V1Only, Version::V1).await;
}

/// Someone who terminates the client's QUIC with a certificate of their own (the client's
/// verifier takes any certificate whose key signed the handshake) and opens their own QUIC
/// connection to the node, relaying the stream's bytes both ways.
struct Relay {
    /// Where the client dials.
    addr: SocketAddr,
    /// The versions each side of the relay settled on.
    versions: tokio::task::JoinHandle<(Version, Version)>,
}

impl Relay {
    /// Relays one link to `node`, offering `offer` on both sides.
    fn start(node: SocketAddr, offer: Offer) -> Relay {
        let front = server_endpoint_offering(loopback(), offer).expect("relay endpoint");
        let back = client_endpoint_offering(loopback(), offer).expect("relay dialer");
        let addr = node_addr(&front);
        let versions = tokio::spawn(async move {
            let incoming = front.endpoint().accept().await.expect("a client");
            let from_client = accept(&front, incoming, LONG).await.expect("client side");
            let to_node = connect(&back, node, LONG).await.expect("node side");
            let versions = (from_client.version(), to_node.version());
            let (mut c_rd, mut c_wr) = from_client.into_halves();
            let (mut n_rd, mut n_wr) = to_node.into_halves();
            let up = async {
                let _ = tokio::io::copy(&mut c_rd, &mut n_wr).await;
                let _ = n_wr.shutdown().await;
            };
            let down = async {
                let _ = tokio::io::copy(&mut n_rd, &mut c_wr).await;
                let _ = c_wr.shutdown().await;
            };
            tokio::join!(up, down);
            versions
        });
        Relay { addr, versions }
    }
}

/// The channel binding, end to end: a relay between two TLS connections passes every byte of the
/// handshake on, and the node still refuses it, since the client bound message 1 to the
/// relay's connection. Without `wanmux/2` on either side the same relay links the two (it
/// then sees only Noise ciphertext), which shows the relay itself works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_relayed_between_two_tls_connections_is_refused() {
    let node = server_endpoint(loopback()).expect("node endpoint");
    let dialer = client_endpoint(loopback()).expect("client endpoint");
    for mode in MODES {
        let (c_auth, s_auth) = creds(mode);
        let relay = Relay::start(node_addr(&node), Offer::Current);
        let (client, at_node) = tokio::join!(
            dial(&dialer, relay.addr, &c_auth),
            accept_next(&node, &s_auth)
        );
        assert_eq!(
            relay.versions.await.expect("relay"),
            (Version::V2, Version::V2),
            "{mode:?}"
        );
        match at_node {
            Err(LinkError::Auth(r)) => assert!(r.contains("message 1 did not decrypt"), "{r}"),
            other => panic!(
                "{mode:?}: the node took a relayed handshake: {:?}",
                other.map(|_| ())
            ),
        }
        assert!(
            matches!(client, Err(LinkError::Closed | LinkError::Io(_))),
            "{mode:?}: {:?}",
            client.map(|_| ())
        );

        let relay = Relay::start(node_addr(&node), Offer::V1Only);
        let (client, at_node) = tokio::join!(
            dial(&dialer, relay.addr, &c_auth),
            accept_next(&node, &s_auth)
        );
        let (version, reader, writer, _) = client.expect("relayed wanmux/1 link");
        let (_, accepted) = at_node.expect("relayed wanmux/1 link at the node");
        assert_eq!(version, Version::V1);
        assert!(writer.encrypts() && accepted.reader.decrypts());
        tokio::join!(
            carry(writer, accepted.reader, 70),
            carry(accepted.writer, reader, 71)
        );
        assert_eq!(
            relay.versions.await.expect("relay"),
            (Version::V1, Version::V1)
        );
    }
}

/// A client that pins another key than the node's (or holds another PSK) completes QUIC's TLS
/// handshake and is refused in the bound Noise handshake: no link on either end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pinned_key_or_psk_is_refused_on_wanmux_2() {
    let node = server_endpoint(loopback()).expect("node endpoint");
    let dialer = client_endpoint(loopback()).expect("client endpoint");
    for mode in MODES {
        let (c_auth, s_auth) = creds(mode);
        let wrong = match c_auth {
            ClientAuth::Static { local, psk, .. } => ClientAuth::Static {
                local,
                server: generate_keypair().1,
                psk,
            },
            ClientAuth::Psk(_) => ClientAuth::Psk(Psk::generate()),
            ClientAuth::Pki { .. } => unreachable!("creds makes key-mode credentials"),
        };
        let (client, at_node) = tokio::join!(
            dial(&dialer, node_addr(&node), &wrong),
            accept_next(&node, &s_auth)
        );
        assert!(
            matches!(at_node, Err(LinkError::Auth(_))),
            "{mode:?}: {:?}",
            at_node.map(|_| ())
        );
        assert!(
            matches!(client, Err(LinkError::Closed | LinkError::Io(_))),
            "{mode:?}: {:?}",
            client.map(|_| ())
        );
    }
}

/// Presents `cert` and signs the TLS handshake with `key`, whatever the client asks.
#[derive(Debug)]
struct Presents(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Presents {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A node endpoint that presents a new self-signed certificate and signs the TLS handshake with
/// `signer`, or with the certificate's own key.
fn node_presenting(signer: Option<&rcgen::KeyPair>) -> Listener {
    let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.into()]).expect("cert");
    let der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivatePkcs8KeyDer::from(signer.unwrap_or(&cert.key_pair).serialize_der());
    let provider = provider();
    let signing = provider
        .key_provider
        .load_private_key(key.into())
        .expect("a signing key");
    let certified = rustls::sign::CertifiedKey::new(vec![der], signing);
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Presents(Arc::new(certified))));
    tls.alpn_protocols = Offer::Current.alpn();
    listener(loopback(), tls, Offer::Current).expect("node endpoint")
}

/// The client's verifier checks the TLS handshake signature against the certificate: a node
/// that signs with another key than its certificate's gets no connection. The same node
/// signing with its certificate's own key is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_signature_by_another_key_than_the_certificates_is_refused() {
    let dialer = client_endpoint(loopback()).expect("client endpoint");
    let other = rcgen::KeyPair::generate().expect("a key pair");
    for signer in [Some(&other), None] {
        let node = Arc::new(node_presenting(signer));
        let at_node = tokio::spawn({
            let node = node.clone();
            async move {
                let incoming = node.endpoint().accept().await.expect("a client");
                accept(&node, incoming, LONG).await.map(|s| s.version())
            }
        });
        let client = connect(&dialer, node_addr(&node), LONG).await;
        if signer.is_some() {
            assert!(
                matches!(&client, Err(LinkError::Tls(m)) if m.contains("BadSignature")),
                "the client took a bad signature: {client:?}"
            );
            assert!(
                at_node.await.expect("node").is_err(),
                "the node's side came up"
            );
        } else {
            // The node waits for the stream, which the client opens only when it writes.
            assert_eq!(client.expect("a good signature").version(), Version::V2);
            at_node.abort();
        }
    }
}

/// A lane stream beside a link (`docs/PROTOCOL.md`, "Lane streams"): on a node that takes one,
/// the client opens the connection's second stream after the link's handshake, the node
/// accepts it, its own handshake completes and it carries messages both ways, as the link
/// beside it still does; a node standing in for an older release (`wanmux/1` only) allows no
/// second stream, and the client learns so without waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_stream_runs_beside_its_link_on_a_node_that_takes_one() {
    for (offer, takes_lane) in [(Offer::Current, true), (Offer::V1Only, false)] {
        let listener = server_endpoint_offering(loopback(), offer).expect("node endpoint");
        let dialer = client_endpoint(loopback()).expect("client endpoint");
        let (c_auth, s_auth) = creds(Mode::Ik);
        let node = async {
            let incoming = listener.endpoint().accept().await.expect("a connection");
            let stream = accept(&listener, incoming, LONG).await.expect("its stream");
            let sibling = stream.sibling();
            let link = stream
                .accept_with(&s_auth, LONG, reply)
                .await
                .expect("link");
            if !takes_lane {
                return (link, None);
            }
            let lane = sibling.accept().await.expect("the lane stream");
            let lane = lane.accept_with(&s_auth, LONG, reply).await.expect("lane");
            assert!(lane.hello.lane, "the lane's message 1 says it is one");
            (link, Some(lane))
        };
        let client = async {
            let stream = connect(&dialer, node_addr(&listener), LONG)
                .await
                .expect("QUIC");
            let sibling = stream.sibling();
            let link = stream
                .connect(&c_auth, &hello(), FIRST, LONG)
                .await
                .expect("link");
            let Some(lane) = sibling.open().await.expect("open") else {
                return (link, None);
            };
            let lane_hello = ClientHello {
                lane: true,
                ..hello()
            };
            let lane = lane
                .connect(&c_auth, &lane_hello, FIRST, LONG)
                .await
                .expect("lane");
            (link, Some(lane))
        };
        let ((link, lane), (node_link, node_lane)) = tokio::join!(client, node);
        assert_eq!(lane.is_some(), takes_lane, "{offer:?}");
        // Either stream's writers, dropped, close the connection: kept to the end.
        let mut writers = Vec::new();
        if let (Some((reader, writer, _)), Some(node_lane)) = (lane, node_lane) {
            let (a, b) = tokio::join!(
                carry(writer, node_lane.reader, 10),
                carry(node_lane.writer, reader, 11)
            );
            writers.extend([a, b]);
        }
        let (reader, writer, _) = link;
        let _ = tokio::join!(
            carry(writer, node_link.reader, 12),
            carry(node_link.writer, reader, 13)
        );
        drop(writers);
    }
}

/// A node that closes its endpoint (as a stopping node does) ends the client's link as closed
/// by the peer, with the reason it gave, on the client's read and write alike; quinn's own
/// error says only "connection lost".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_closing_its_endpoint_ends_the_link_as_closed_by_the_peer() {
    let listener = server_endpoint(loopback()).expect("node endpoint");
    let dialer = client_endpoint(loopback()).expect("client endpoint");
    let (c_auth, s_auth) = creds(Mode::IkPsk2);
    let (dialled, accepted) = tokio::join!(
        dial(&dialer, node_addr(&listener), &c_auth),
        accept_next(&listener, &s_auth)
    );
    let (_, mut reader, mut writer, _) = dialled.expect("the client's handshake");
    let _accepted = accepted.expect("the node's handshake");
    listener
        .endpoint()
        .close(VarInt::from_u32(0), b"node stopping\n\x07");
    let read = tokio::time::timeout(LONG, reader.recv())
        .await
        .expect("the read ends")
        .expect_err("the link is closed");
    let end = crate::quic::link_end(&read).expect("a QUIC end");
    assert!(
        matches!(&end, LinkEnd::ClosedSaying(why) if why == "node stopping\\n\\u{7}"),
        "{end}"
    );
    assert_eq!(end.to_string(), "closed by peer: node stopping\\n\\u{7}");
    writer.seal(b"after the close").expect("seal");
    let write = writer.flush().await.expect_err("the write fails");
    assert!(
        matches!(link_end(&write), Some(LinkEnd::ClosedSaying(_))),
        "{write}"
    );
    // Another error than a lost connection is left as it is.
    assert!(link_end(&LinkError::Closed).is_none());
}

/// A peer's close reason is cut to a bounded length of printable characters.
#[test]
fn a_close_reason_is_printable_and_bounded() {
    let long = vec![b'x'; 10_000];
    assert_eq!(printable(&long).len(), REASON_MAX);
    assert_eq!(printable(b"a\xffb\x1b"), "a\u{fffd}b\\u{1b}");
}
