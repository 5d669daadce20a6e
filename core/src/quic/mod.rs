//! QUIC links: the transport shared by client and server (see `docs/ARCHITECTURE.md`, "QUIC
//! links").
//!
//! A QUIC link is one QUIC connection (quinn, over UDP) carrying one bidirectional stream. The
//! stream is a reliable byte stream like a TCP connection, and the link layer on top of it is the
//! Noise handshake and authentication of [`crate::noise`], as on a TCP link. What QUIC changes
//! is congestion control: every connection runs [`crate::pace::Pace`], which does not mistake
//! random loss for congestion, where a TCP link is left to the kernel's cubic or bbr.
//!
//! # One encryption: `wanmux/2`
//!
//! QUIC requires TLS, which already encrypts every byte. The client offers ALPN `wanmux/2` and
//! `wanmux/1`; a node picks the first it knows ([`Version`]).
//!
//! - On **`wanmux/2`** the Noise handshake's prologue ends with 32 bytes of the TLS
//!   connection's exporter (a [`ChannelBinding`], [`EXPORTER_LABEL`]), and after the key
//!   confirmation the link's messages go in the clear inside TLS
//!   ([`crate::noise::connect_bound_stream`], [`crate::noise::accept_bound_stream_with`]).
//! - On **`wanmux/1`** (a client or node from before `wanmux/2`) the link is Noise transport
//!   messages inside TLS as on a TCP link ([`crate::noise::connect_stream`],
//!   [`crate::noise::accept_stream_with`]): every byte encrypted twice.
//!
//! [`Stream::connect`] and [`Stream::accept_with`] run the handshake the version asks for; a
//! link's halves exist only once it succeeded.
//!
//! # Why the client takes the node's self-signed certificate
//!
//! The node presents a certificate it generates at start. The client's [`ChannelBoundVerifier`]
//! checks the TLS handshake signature against it (so the TLS connection's secrets are shared
//! with the holder of that certificate's key) and takes the certificate without a chain: what
//! proves the node is the Noise handshake inside, by the pinned node key or the PSK, exactly as
//! on a TCP link. On `wanmux/2` that handshake is bound to this TLS connection: someone who
//! terminates the client's TLS with a certificate of their own and opens their own connection
//! to the node holds two connections with different exporters, so the client's message 1 does
//! not decrypt at the node and a message 2 for the client cannot be made without the node's key
//! (or the PSK). A link therefore carries frames in the clear inside TLS only after a handshake
//! that proved the far end of *this* TLS connection is the node. On `wanmux/1` TLS is not
//! relied on at all: Noise encrypts every message end to end, as on TCP. (A man in the middle
//! who makes both sides settle on `wanmux/1` gets the links of today, which Noise protects.)
//!
//! # PKI mode
//!
//! With certificates of an operator CA ([`CertFiles`]; `docs/PROTOCOL.md`, "PKI mode") TLS is
//! the authentication as well: the client checks the node's chain and name with rustls'
//! `WebPkiServerVerifier` ([`client_endpoint_with`], [`connect_named`]) and presents its own
//! certificate, which the node checks with `WebPkiClientVerifier` against its client CA and
//! revocation lists ([`server_endpoint_with`], [`Listener::set_pki`]). Such a node still takes
//! key-mode clients (a certificate is asked for, not required): [`Stream::client_cert`] says
//! which kind a link is, and [`Stream::accept_with`] runs the PKI hello
//! ([`noise::accept_pki_stream`]) or the bound Noise handshake accordingly. A certificate
//! refused at either end closes the connection with a TLS alert, reported as
//! [`LinkError::Tls`] with rustls' reason.
//!
//! A node accepts every QUIC link on one [`Endpoint`] (one UDP socket) bound to its listen
//! address ([`Listener`]); a client dials each link from an endpoint of its own ([`Dialer`],
//! [`connect_named`]), so that the node's packets need no connection ID ([`cid`]). The links to
//! or from one peer address share their congestion controllers' [`PathShare`].

pub mod cid;
pub mod pace;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::driver::link::LinkEnd;
use crate::keys::PublicKey;
use crate::noise::{
    self, Accepted, BoxRead, BoxWrite, ChannelBinding, ClientAuth, ClientHello, LinkError,
    LinkReader, LinkWriter, ReceivedHello, ServerAuth, ServerHello, CHANNEL_BINDING_LEN,
};
use crate::pace::PathShare;
use crate::tls::CertFiles;
use pace::PaceConfig;

/// The ALPN protocol name of QUIC links with Noise transport messages inside TLS.
pub const ALPN_V1: &[u8] = b"wanmux/1";

/// The ALPN protocol name of QUIC links whose TLS is the one encryption, with the Noise
/// handshake bound to it.
pub const ALPN_V2: &[u8] = b"wanmux/2";

/// The label of the TLS exporter (RFC 8446 section 7.5) whose 32 bytes, with an empty context,
/// bind a `wanmux/2` link's Noise handshake to its TLS connection.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-wanmux-link";

/// The version of a QUIC link, as its ALPN negotiated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// `wanmux/1`: Noise transport messages inside TLS, every byte encrypted twice.
    V1,
    /// `wanmux/2`: the Noise handshake bound to the TLS connection, then messages in the clear
    /// inside TLS.
    V2,
}

impl Version {
    /// The ALPN protocol name.
    pub fn alpn(self) -> &'static [u8] {
        match self {
            Version::V1 => ALPN_V1,
            Version::V2 => ALPN_V2,
        }
    }

    /// How status and logs name a link's transport: `quic`, or `quic+noise` for a `wanmux/1`
    /// link (which costs Noise's encryption on top of TLS's).
    pub fn transport(self) -> &'static str {
        match self {
            Version::V1 => "quic+noise",
            Version::V2 => "quic",
        }
    }
}

/// Which versions an endpoint offers (a client) or takes (a node).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Offer {
    /// `wanmux/2`, then `wanmux/1` (a node picks the first it knows, so old and new ends work
    /// together).
    #[default]
    Current,
    /// `wanmux/1` only: what a release before `wanmux/2` did. Tests stand in for an old client
    /// or node with it; such a node, like those releases, also takes no lane stream.
    V1Only,
}

impl Offer {
    /// The ALPN list, most preferred first (rustls's node picks the first of its own list that
    /// the client offers).
    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Offer::Current => vec![ALPN_V2.to_vec(), ALPN_V1.to_vec()],
            Offer::V1Only => vec![ALPN_V1.to_vec()],
        }
    }

    /// Bidirectional streams a node taking these versions lets a client open per connection.
    fn streams(self) -> u32 {
        match self {
            Offer::Current => LINK_STREAMS,
            Offer::V1Only => 1,
        }
    }
}

/// The TLS server name the client asks for (the certificate is not checked against it).
const SERVER_NAME: &str = "wanmux";

/// What one stream may have received but not yet read: covers the reorder gap behind a lost
/// packet at 500 Mbit/s and 60 ms RTT several times over.
pub const RECEIVE_WINDOW: u32 = 16 << 20;

/// What a node lets a connection send before a link on it authenticated, on all its streams
/// together: far more than a handshake needs. Each connection had [`RECEIVE_WINDOW`] from its
/// first packet, which quinn buffered on a stream the node reads only after the link's
/// handshake (the lane stream): a trial without any key or certificate made a node hold 16 MiB
/// per connection, 0.9 GB from one address, for the handshake timeout.
const HANDSHAKE_WINDOW: u32 = 64 << 10;

/// Node: a link on `conn` authenticated: the connection gets its whole receive window, and no
/// stream beyond those the client was allowed at its start (the link's and a lane stream): a
/// stream that ends gives no room for another (QUIC's limit counts streams open at once).
fn open_up(conn: &quinn::Connection) {
    conn.set_receive_window(VarInt::from_u32(RECEIVE_WINDOW));
    conn.set_max_concurrent_bi_streams(VarInt::from_u32(0));
}

/// Most bytes sent but not yet acknowledged (in flight, behind a lost packet, or queued): the
/// cap on the send window, which otherwise follows the congestion window (`send_window`).
/// Three congestion windows at 500 Mbit/s and 60 ms RTT fit.
pub const SEND_WINDOW: u64 = 16 << 20;

/// The send window of a link follows its congestion window. quinn keeps every byte behind a
/// lost packet until the retransmission is acknowledged, so under 1% loss the unacknowledged
/// data is about twice what is in flight: while the link has lost a packet lately
/// ([`LOSS_HOLD_RTTS`]), quinn may hold this many congestion windows plus [`NOTSENT_LOWAT`]
/// (bench/RESULTS.md, lessons: QUIC send window).
const LOSSY_SEND_WINDOW_CWNDS: u64 = 3;

/// A link that lost no packet lately holds one congestion window plus at most
/// [`NOTSENT_LOWAT`] (no more than another congestion window) unsent: three windows would put two
/// round trips of queue in front of every byte, while the data of a faster path waits for it in
/// the receiver's reorder buffer (bench/RESULTS.md, lessons: QUIC send window).
///
/// A loss (quinn's `lost_packets` grew) switches to [`LOSSY_SEND_WINDOW_CWNDS`] for this many
/// smoothed RTTs: quinn detects a loss about when the first later packet is acknowledged, and
/// holds what follows it for about one more round trip, until the retransmission is
/// acknowledged.
const LOSS_HOLD_RTTS: u32 = 2;

/// Added to the send window: the QUIC counterpart of `TCP_NOTSENT_LOWAT` on TCP links
/// ([`crate::noise::NOTSENT_LOWAT`]).
pub const NOTSENT_LOWAT: u64 = 128 * 1024;

/// How often a writer re-reads the congestion window to re-size its send window.
const RESIZE_EVERY: Duration = Duration::from_millis(5);

/// Socket buffers asked for (the kernel caps them at `net.core.{r,w}mem_max`; the daemons
/// warn at start when that is less, see `tune`).
pub const SOCKET_BUFFER: usize = 8 << 20;

/// Connections a node's endpoint holds before its accept loop took, retried or refused them;
/// more are refused by quinn.
pub const MAX_INCOMING: usize = 4096;

/// Bytes of packets quinn keeps per connection waiting in that queue (beyond its first packet):
/// the rest of a client's first flight.
const INCOMING_BUFFER: u64 = 64 * 1024;

/// Bytes of packets quinn keeps for the whole queue.
const INCOMING_BUFFER_TOTAL: u64 = 4 << 20;

/// Bidirectional streams a node lets a client open on one connection: the link's, and a lane
/// stream (`docs/PROTOCOL.md`, "Lane streams"; a node of an older release allows one).
const LINK_STREAMS: u32 = 2;

/// What a lane stream's write adds to a full send window (see `Sender::poll_write`): several
/// of its messages.
const LANE_ROOM: u64 = 64 * 1024;

/// quinn's priority of a lane stream's data: sent before the bulk stream's (priority 0) in every
/// packet of the connection.
const LANE_PRIORITY: i32 = 1;

/// A link with no packet for this long is dead to QUIC; the engine's pings notice much sooner.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The transport settings of one side; `streams`, the bidirectional streams it lets the peer
/// open: a node's [`Offer::streams`] (the link's, and a lane stream), a client's none. `pace`
/// is the congestion controller of the link's path.
fn transport(streams: u32, pace: PaceConfig) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.congestion_controller_factory(Arc::new(pace));
    // Reordering is not loss: losses are found by time alone (see `REORDER_PACKETS`).
    t.packet_threshold(crate::pace::REORDER_PACKETS);
    t.time_threshold(crate::pace::REORDER_TIME);
    t.stream_receive_window(VarInt::from_u32(RECEIVE_WINDOW));
    // A node takes little from a connection until a link on it authenticated (`open_up`).
    let window = if streams > 0 {
        HANDSHAKE_WINDOW
    } else {
        RECEIVE_WINDOW
    };
    t.receive_window(VarInt::from_u32(window));
    t.send_window(SEND_WINDOW);
    // The link's bidirectional stream and its lane stream, opened by the client; nothing else.
    t.max_concurrent_bidi_streams(VarInt::from_u32(streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.datagram_receive_buffer_size(None);
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("30 s is a valid idle timeout"),
    ));
    Arc::new(t)
}

/// A UDP socket with large buffers, for an endpoint.
fn socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: a small buffer costs speed, not correctness.
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The links of each path share a [`PathShare`]: every link to or from one peer address (a
/// client behind one address, or one node address) meets the same bottleneck.
#[derive(Debug, Default)]
struct Paths(Mutex<HashMap<IpAddr, Weak<PathShare>>>);

impl Paths {
    /// The transport settings of a link to or from `peer`.
    fn transport(&self, peer: IpAddr, streams: u32) -> Arc<TransportConfig> {
        transport(streams, PaceConfig::shared(self.share(peer)))
    }

    /// The state shared by the links to or from `peer`.
    fn share(&self, peer: IpAddr) -> Arc<PathShare> {
        let mut paths = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // A path's entry lives as long as one of its links: the map holds the live paths.
        paths.retain(|_, share| share.strong_count() > 0);
        match paths.get(&peer).and_then(Weak::upgrade) {
            Some(share) => share,
            None => {
                let share = Arc::new(PathShare::default());
                paths.insert(peer, Arc::downgrade(&share));
                share
            }
        }
    }
}

/// A node's QUIC endpoint, with what each accepted link gets: the server configuration, and the
/// congestion state its path shares ([`PathShare`]).
#[derive(Clone, Debug)]
pub struct Listener {
    endpoint: Endpoint,
    /// Replaced by [`Listener::set_pki`].
    config: Arc<std::sync::RwLock<quinn::ServerConfig>>,
    paths: Arc<Paths>,
    offer: Offer,
}

impl Listener {
    /// The endpoint, to wait for incoming links on, ask its address or close it.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// What the client dials QUIC links with, for one address family: each link gets an endpoint
/// (a UDP socket on an ephemeral port of `local`) of its own, made by [`connect_named`], and the
/// configuration and path state every link shares (see [`Listener`]).
#[derive(Clone, Debug)]
pub struct Dialer {
    /// The address each link's socket binds (an unspecified address of the nodes' family,
    /// normally), port 0.
    local: SocketAddr,
    /// Replaced by [`Dialer::set_pki`].
    config: Arc<std::sync::RwLock<quinn::ClientConfig>>,
    paths: Arc<Paths>,
    offer: Offer,
}

/// An endpoint that accepts QUIC links on `addr` (UDP), with a certificate generated now.
pub fn server_endpoint(addr: SocketAddr) -> io::Result<Listener> {
    server_endpoint_offering(addr, Offer::Current)
}

/// [`server_endpoint`] taking the versions of `offer`.
pub fn server_endpoint_offering(addr: SocketAddr, offer: Offer) -> io::Result<Listener> {
    server_endpoint_with(addr, offer, None)
}

/// [`server_endpoint_offering`] in PKI mode too when `pki` is given (the node's `[tls]`): the
/// node presents `pki`'s chain instead of a self-signed certificate, and asks every client for
/// a certificate, which rustls' `WebPkiClientVerifier` checks against `pki`'s roots and
/// revocation lists. A client that presents none is a key-mode client (the Noise handshake
/// inside authenticates it, as without `pki`); one whose certificate does not verify gets a
/// TLS alert and no connection.
pub fn server_endpoint_with(
    addr: SocketAddr,
    offer: Offer,
    pki: Option<&CertFiles>,
) -> io::Result<Listener> {
    listener(addr, server_tls(offer, pki)?, offer)
}

/// The node's TLS configuration: see [`server_endpoint_with`].
fn server_tls(offer: Offer, pki: Option<&CertFiles>) -> io::Result<rustls::ServerConfig> {
    let other = |e: &dyn std::fmt::Display| io::Error::other(e.to_string());
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| other(&e))?;
    let mut tls = match pki {
        None => {
            let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.into()])
                .map_err(|e| other(&e))?;
            let der = CertificateDer::from(cert.cert.der().to_vec());
            let key = PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
            builder
                .with_no_client_auth()
                .with_single_cert(vec![der], key.into())
                .map_err(|e| other(&e))?
        }
        Some(pki) => {
            let roots = pki.root_store().map_err(|e| other(&e))?;
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                    .with_crls(pki.crls.iter().cloned())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| other(&e))?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(pki.chain.clone(), pki.key.clone_key())
                .map_err(|e| other(&e))?
        }
    };
    tls.alpn_protocols = offer.alpn();
    tls.max_early_data_size = 0;
    // No resumption: a resumed handshake skips the client certificate's checks, and a trial's
    // certificate got in on its tickets for minutes after it expired. A link is long-lived, so
    // a full handshake for each costs nothing that matters.
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    Ok(tls)
}

impl Listener {
    /// Replaces PKI mode's certificates (a reload: new revocation lists, a renewed chain, a
    /// new client CA): connections that arrive from now on get them; links already up keep
    /// theirs.
    pub fn set_pki(&self, pki: Option<&CertFiles>) -> io::Result<()> {
        let config = server_config(server_tls(self.offer, pki)?, self.offer)?;
        self.endpoint.set_server_config(Some(config.clone()));
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }
}

/// The endpoint's server configuration around `tls`.
fn server_config(tls: rustls::ServerConfig, offer: Offer) -> io::Result<quinn::ServerConfig> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| io::Error::other(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // The endpoint's default; `accept` gives each link its path's transport instead.
    config.transport_config(transport(offer.streams(), PaceConfig::default()));
    // Connections that arrived and wait for the node to take, retry or refuse them: the node's
    // accept loop does so at once, so a short queue suffices (quinn's default holds 65,536, and
    // 100 MiB of their packets).
    config
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(INCOMING_BUFFER)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
    Ok(config)
}

/// A node's endpoint on `addr` with the TLS configuration `tls`.
fn listener(addr: SocketAddr, tls: rustls::ServerConfig, offer: Offer) -> io::Result<Listener> {
    let config = server_config(tls, offer)?;
    let endpoint = Endpoint::new(
        cid::node_config(),
        Some(config.clone()),
        socket(addr)?,
        Arc::new(quinn::TokioRuntime),
    )?;
    Ok(Listener {
        endpoint,
        config: Arc::new(std::sync::RwLock::new(config)),
        paths: Arc::default(),
        offer,
    })
}

/// A dialer of QUIC links from ephemeral ports of `local` (an unspecified address of the nodes'
/// family, normally); the address is bound once here, to fail now when the family is not
/// usable.
pub fn client_endpoint(local: SocketAddr) -> io::Result<Dialer> {
    client_endpoint_offering(local, Offer::Current)
}

/// [`client_endpoint`] offering the versions of `offer`.
pub fn client_endpoint_offering(local: SocketAddr, offer: Offer) -> io::Result<Dialer> {
    client_endpoint_with(local, offer, None)
}

/// [`client_endpoint_offering`], in PKI mode when `pki` is given (the client's `[tls]`): the
/// node's certificate is checked by rustls' `WebPkiServerVerifier` against `pki`'s roots and the
/// name each link is dialled with ([`connect_named`]), the client presents `pki`'s chain, and
/// only `wanmux/2` is offered (PKI mode's hello needs it). Without `pki`, the node is proved by
/// the Noise handshake inside ([`ChannelBoundVerifier`]).
pub fn client_endpoint_with(
    local: SocketAddr,
    offer: Offer,
    pki: Option<&CertFiles>,
) -> io::Result<Dialer> {
    let config = client_config(offer, pki)?;
    drop(socket(local)?);
    Ok(Dialer {
        local,
        config: Arc::new(std::sync::RwLock::new(config)),
        paths: Arc::default(),
        offer,
    })
}

impl Dialer {
    /// Replaces PKI mode's certificates (a reload that read `[tls]` again: a renewed client
    /// certificate or key, another CA file): links dialled from now on present and check them;
    /// links already up keep theirs. Every clone of this dialer sees the change. `Err` (and
    /// nothing changed) when rustls will not take them.
    pub fn set_pki(&self, pki: &CertFiles) -> io::Result<()> {
        let config = client_config(self.offer, Some(pki))?;
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }
}

/// Whether [`Dialer::set_pki`] would take `pki` (rustls takes the chain, key and CA), without
/// changing anything.
pub fn client_endpoint_check(offer: Offer, pki: &CertFiles) -> io::Result<()> {
    client_config(offer, Some(pki)).map(|_| ())
}

/// The configuration each link a client dials gets: see [`client_endpoint_with`].
fn client_config(offer: Offer, pki: Option<&CertFiles>) -> io::Result<quinn::ClientConfig> {
    let other = |e: &dyn std::fmt::Display| io::Error::other(e.to_string());
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| other(&e))?;
    let mut tls = match pki {
        // rustls calls every custom verifier "dangerous"; this one is sound because of the
        // channel binding (see the module docs and `ChannelBoundVerifier`).
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChannelBoundVerifier(provider)))
            .with_no_client_auth(),
        Some(pki) => {
            let roots = pki.root_store().map_err(|e| other(&e))?;
            let verifier =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| other(&e))?;
            builder
                .with_webpki_verifier(verifier)
                .with_client_auth_cert(pki.chain.clone(), pki.key.clone_key())
                .map_err(|e| other(&e))?
        }
    };
    tls.alpn_protocols = match pki {
        None => offer.alpn(),
        Some(_) => vec![ALPN_V2.to_vec()],
    };
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| other(&e))?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// A QUIC link's connection, as `status` reads it: what quinn counts of the path, which the
/// link's pings cannot tell (a ping's round trip includes the data queued before it; a loss
/// that QUIC repairs does not show at all). Held in the link's label, which goes when the link
/// does; the link's own writer closes the connection, whoever else holds a handle.
#[derive(Clone, Debug)]
pub struct PathProbe(quinn::Connection);

/// What [`PathProbe::read`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathReading {
    /// UDP packets the connection sent.
    pub sent_packets: u64,
    /// Packets it declared lost (and sent their contents again).
    pub lost_packets: u64,
}

impl PathProbe {
    /// The connection's counts now.
    pub fn read(&self) -> PathReading {
        let path = self.0.stats().path;
        PathReading {
            sent_packets: path.sent_packets,
            lost_packets: path.lost_packets,
        }
    }
}

/// The connection of a QUIC link, for the lane stream beside the link's own
/// (`docs/PROTOCOL.md`, "Lane streams"): the same TLS connection, so the same version, channel
/// binding and client certificate.
#[derive(Clone)]
pub struct Sibling {
    conn: quinn::Connection,
    /// The link's [`Closer`], which the lane stream shares: not held here, so that a node
    /// waiting for a lane stream does not keep the connection open after its link ended.
    closer: Weak<Closer>,
    version: Version,
    binding: Option<ChannelBinding>,
    client_cert: Option<PublicKey>,
}

impl Sibling {
    /// The connection, for `status` ([`PathProbe`]).
    pub fn probe(&self) -> PathProbe {
        PathProbe(self.conn.clone())
    }

    /// Client: opens the lane stream, for its handshake ([`Stream::connect`]); `None` when the
    /// node's transport parameters allow no second stream (a node of an older release). Opening
    /// sends nothing: the stream appears at the node with its message 1.
    pub async fn open(&self) -> Result<Option<Stream>, LinkError> {
        // The node's stream limit is known once the QUIC handshake completed, so one poll says
        // whether it allows another stream.
        let mut open = std::pin::pin!(self.conn.open_bi());
        let polled = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(open.as_mut(), cx))
        })
        .await;
        match polled {
            std::task::Poll::Pending => Ok(None),
            std::task::Poll::Ready(opened) => {
                let (send, recv) = opened.map_err(connection_error)?;
                Ok(Some(self.stream(send, recv)))
            }
        }
    }

    /// Node: waits for the client's lane stream (for as long as the connection lives), for its
    /// handshake ([`Stream::accept_with`]).
    pub async fn accept(&self) -> Result<Stream, LinkError> {
        let (send, recv) = self.conn.accept_bi().await.map_err(connection_error)?;
        Ok(self.stream(send, recv))
    }

    /// Closes the connection, the link on its first stream with it: its second stream was
    /// no lane of the link's session, or could not become one.
    pub fn close(&self) {
        self.conn.close(VarInt::from_u32(0), b"lane stream refused");
    }

    fn stream(&self, send: quinn::SendStream, recv: quinn::RecvStream) -> Stream {
        // A link that already ended closed the connection: the lane's own closer is moot.
        let closer = self
            .closer
            .upgrade()
            .unwrap_or_else(|| Arc::new(Closer(self.conn.clone())));
        Stream::new(
            self.conn.clone(),
            send,
            recv,
            self.version,
            self.binding.clone(),
            self.client_cert,
            Some(closer),
        )
    }
}

/// Why the connection was lost, if a read or write of its stream failed with `e` for that.
fn lost_connection(e: &LinkError) -> Option<&quinn::ConnectionError> {
    let LinkError::Io(io) = e else {
        return None;
    };
    let inner = io.get_ref()?;
    if let Some(quinn::ReadError::ConnectionLost(c)) = inner.downcast_ref() {
        Some(c)
    } else if let Some(quinn::WriteError::ConnectionLost(c)) = inner.downcast_ref() {
        Some(c)
    } else {
        None
    }
}

/// A handshake's error `e` as it reads on a TCP link: when the stream's read or write failed
/// because the connection was lost, why it was ([`connection_error`]). A peer that closes the
/// connection refuses the link as a peer that closes a TCP socket does ([`LinkError::Closed`]);
/// a node that refused a client's certificate sent a TLS alert ([`LinkError::Tls`]). quinn
/// reports all of them as the I/O error "connection lost", which said nothing of why a refused
/// link was refused.
fn why_lost(e: LinkError) -> LinkError {
    match lost_connection(&e) {
        Some(lost) => connection_error(lost.clone()),
        None => e,
    }
}

/// How a live QUIC link ended, when a read or write of its stream failed with `e` because the
/// connection was lost: quinn reports every end as the I/O error "connection lost", which read
/// the same for a node that stopped and a path that died. A peer's close reads as a TCP link's
/// does, with the reason it gave ([`LinkEnd::ClosedSaying`]); quinn's idle timeout as no answer
/// ([`LinkEnd::TimedOut`]); `None` for any other error.
pub(crate) fn link_end(e: &LinkError) -> Option<LinkEnd> {
    let reason = match lost_connection(e)? {
        quinn::ConnectionError::ApplicationClosed(c) => &c.reason,
        quinn::ConnectionError::ConnectionClosed(c) if tls_alert(c.error_code).is_none() => {
            &c.reason
        }
        quinn::ConnectionError::TimedOut => return Some(LinkEnd::TimedOut),
        _ => return None,
    };
    Some(if reason.is_empty() {
        LinkEnd::Closed
    } else {
        LinkEnd::ClosedSaying(printable(reason))
    })
}

/// The most characters of a peer's close reason a link's end repeats.
pub(crate) const REASON_MAX: usize = 64;

/// A peer's close reason as a log line may show it: its bytes as UTF-8 (lossy), control
/// characters escaped, cut at [`REASON_MAX`] characters.
fn printable(reason: &[u8]) -> String {
    let mut out = String::new();
    for c in String::from_utf8_lossy(reason).chars().take(REASON_MAX) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// How a [`LinkError::Tls`] begins when the peer's TLS refused this end (it sent an alert),
/// rather than this end's TLS the peer.
pub const PEER_REFUSED: &str = "the peer refused this end";

/// The TLS alert in a QUIC crypto error code (`0x100 + alert`), if it is one.
fn tls_alert(code: quinn::TransportErrorCode) -> Option<rustls::AlertDescription> {
    let code = u64::from(code);
    (0x100..0x200)
        .contains(&code)
        .then(|| rustls::AlertDescription::from((code - 0x100) as u8))
}

fn connection_error(e: quinn::ConnectionError) -> LinkError {
    match e {
        quinn::ConnectionError::TimedOut => LinkError::Timeout,
        // This end's TLS refused the peer (its certificate did not verify): rustls' reason.
        quinn::ConnectionError::TransportError(t) if tls_alert(t.code).is_some() => {
            LinkError::Tls(t.reason)
        }
        // The peer's TLS refused this end, with an alert.
        quinn::ConnectionError::ConnectionClosed(c) if tls_alert(c.error_code).is_some() => {
            let alert = tls_alert(c.error_code).map_or_else(String::new, |a| format!("{a:?}"));
            LinkError::Tls(format!("{PEER_REFUSED} with the TLS alert {alert}"))
        }
        quinn::ConnectionError::TransportError(_) => LinkError::Protocol("QUIC transport error"),
        quinn::ConnectionError::VersionMismatch => LinkError::Protocol("QUIC version mismatch"),
        _ => LinkError::Closed,
    }
}

/// Dials a QUIC link to `addr` and opens its stream; the caller runs the link's handshake with
/// [`Stream::connect`].
pub async fn connect(
    dialer: &Dialer,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Stream, LinkError> {
    connect_named(dialer, addr, SERVER_NAME, timeout).await
}

/// [`connect`] asking for `server_name`: the name a PKI-mode node's certificate must carry
/// (`[[node]] tls_name`); key mode does not check it.
pub async fn connect_named(
    dialer: &Dialer,
    addr: SocketAddr,
    server_name: &str,
    timeout: Duration,
) -> Result<Stream, LinkError> {
    let mut config = dialer
        .config
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    config.transport_config(dialer.paths.transport(addr.ip(), 0));
    // The link's own endpoint: it lives while the connection does (quinn's driver holds it).
    let endpoint = Endpoint::new(
        cid::client_config(),
        None,
        socket(dialer.local).map_err(LinkError::Io)?,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(LinkError::Io)?;
    let connecting = endpoint
        .connect_with(config, addr, server_name)
        .map_err(|e| LinkError::Io(io::Error::other(e.to_string())))?;
    let conn = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| LinkError::Timeout)?
        .map_err(connection_error)?;
    let (version, binding) = negotiated(&conn)?;
    // Opening sends nothing: the stream appears at the node with the Noise message 1.
    let (send, recv) = conn.open_bi().await.map_err(connection_error)?;
    Ok(Stream::new(conn, send, recv, version, binding, None, None))
}

/// Completes an incoming QUIC link and waits for its stream (within `timeout`); the caller runs
/// the link's handshake with [`Stream::accept_with`]. The stream keeps the connection alive;
/// dropping it (or both halves of the link made of it) closes the connection.
pub async fn accept(
    listener: &Listener,
    incoming: quinn::Incoming,
    timeout: Duration,
) -> Result<Stream, LinkError> {
    // Only a clone runs under this lock.
    let mut config = listener
        .config
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    config.transport_config(
        listener
            .paths
            .transport(incoming.remote_address().ip(), listener.offer.streams()),
    );
    let stream = async {
        let conn = incoming
            .accept_with(Arc::new(config))
            .map_err(connection_error)?
            .await
            .map_err(connection_error)?;
        let (version, binding) = negotiated(&conn)?;
        let client_cert = client_certificate(&conn)?;
        let (send, recv) = conn.accept_bi().await.map_err(connection_error)?;
        Ok::<_, LinkError>(Stream::new(
            conn,
            send,
            recv,
            version,
            binding,
            client_cert,
            None,
        ))
    };
    tokio::time::timeout(timeout, stream)
        .await
        .map_err(|_| LinkError::Timeout)?
}

/// The version a QUIC connection's ALPN settled on, and on `wanmux/2` its [`ChannelBinding`].
fn negotiated(conn: &quinn::Connection) -> Result<(Version, Option<ChannelBinding>), LinkError> {
    let protocol = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    match protocol.as_deref() {
        Some(ALPN_V1) => Ok((Version::V1, None)),
        Some(ALPN_V2) => Ok((Version::V2, Some(channel_binding(conn)?))),
        // Both ends list ALPN names, so QUIC's TLS refuses a connection without a common one.
        _ => Err(LinkError::Protocol("QUIC link without a wanmux ALPN")),
    }
}

/// The identity of the certificate the client presented, which TLS verified (PKI mode): the
/// SHA-256 of its SubjectPublicKeyInfo. `None` for a client without one (key mode).
fn client_certificate(conn: &quinn::Connection) -> Result<Option<PublicKey>, LinkError> {
    let Some(identity) = conn.peer_identity() else {
        return Ok(None);
    };
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| LinkError::Protocol("QUIC peer identity is not a certificate chain"))?;
    let Some(leaf) = chain.first() else {
        return Ok(None);
    };
    // rustls verified it, so it parses.
    let hash = crate::tls::spki_hash(leaf)
        .ok_or(LinkError::Protocol("client certificate does not parse"))?;
    Ok(Some(PublicKey::from_bytes(hash)))
}

/// 32 bytes of `conn`'s TLS exporter under [`EXPORTER_LABEL`], empty context.
fn channel_binding(conn: &quinn::Connection) -> Result<ChannelBinding, LinkError> {
    let mut bytes = [0u8; CHANNEL_BINDING_LEN];
    conn.export_keying_material(&mut bytes, EXPORTER_LABEL, b"")
        // Only before the TLS handshake completed, which it has here: local trouble.
        .map_err(|_| LinkError::Io(io::Error::other("the TLS exporter is not available")))?;
    let binding = ChannelBinding::from_bytes(bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    Ok(binding)
}

/// A QUIC link's stream before its handshake, with the version its ALPN settled on. The link's
/// halves come only from the handshake ([`Stream::connect`], [`Stream::accept_with`]), so no
/// frame travels on a TLS connection whose far end has not proved to be the node or an
/// allowed client.
pub struct Stream {
    rd: BoxRead,
    wr: BoxWrite,
    /// The connection, for its lane stream ([`Stream::sibling`]).
    conn: quinn::Connection,
    /// What the writer holds to close the connection, for the lane stream to share.
    closer: Weak<Closer>,
    version: Version,
    /// Set on `wanmux/2`.
    binding: Option<ChannelBinding>,
    /// At a node: the identity of the certificate the client presented (PKI mode).
    client_cert: Option<PublicKey>,
}

impl Stream {
    /// A link's stream of `conn`. `lane`: a lane stream, whose data goes first and whose writes
    /// leave the connection's send window to the link's stream, with the link's [`Closer`].
    fn new(
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        version: Version,
        binding: Option<ChannelBinding>,
        client_cert: Option<PublicKey>,
        lane: Option<Arc<Closer>>,
    ) -> Stream {
        if lane.is_some() {
            // Only fails on a stream already closed, which the link's handshake then finds.
            let _ = send.set_priority(LANE_PRIORITY);
        }
        let sizes_window = lane.is_none();
        let closer = lane.unwrap_or_else(|| Arc::new(Closer(conn.clone())));
        Stream {
            rd: Box::new(recv),
            closer: Arc::downgrade(&closer),
            wr: Box::new(Sender::new(send, conn.clone(), sizes_window, closer)),
            conn,
            version,
            binding,
            client_cert,
        }
    }

    /// The stream's connection, for a lane stream beside it (`docs/PROTOCOL.md`, "Lane
    /// streams"): take it before the handshake, which consumes the stream.
    pub fn sibling(&self) -> Sibling {
        Sibling {
            conn: self.conn.clone(),
            closer: self.closer.clone(),
            version: self.version,
            binding: self.binding.clone(),
            client_cert: self.client_cert,
        }
    }

    /// The link's version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// At a node: the identity of the certificate the client presented, which TLS verified
    /// (the SHA-256 of its SubjectPublicKeyInfo, in a [`PublicKey`]'s 32 bytes); `None` for a
    /// key-mode client. With one, [`Stream::accept_with`] runs PKI mode's hello.
    pub fn client_cert(&self) -> Option<&PublicKey> {
        self.client_cert.as_ref()
    }

    /// Runs the client side of the link's handshake and sends `first` in the key confirmation:
    /// [`noise::connect_bound_stream`] on `wanmux/2`, [`noise::connect_stream`] on `wanmux/1`
    /// (see them for the errors); in PKI mode ([`ClientAuth::Pki`]) the clear hello,
    /// [`noise::connect_pki_stream`]. A node that refused this client's certificate closes the
    /// connection with a TLS alert: [`LinkError::Tls`].
    pub async fn connect(
        self,
        auth: &ClientAuth,
        hello: &ClientHello,
        first: &[u8],
        timeout: Duration,
    ) -> Result<(LinkReader, LinkWriter, ServerHello), LinkError> {
        if let ClientAuth::Pki { .. } = auth {
            if self.version != Version::V2 {
                return Err(LinkError::Protocol("PKI mode needs wanmux/2"));
            }
            return noise::connect_pki_stream(self.rd, self.wr, hello, first, timeout)
                .await
                // The node checks the client's certificate after the client's TLS handshake
                // completed: its refusal (a TLS alert) arrives as the connection's loss.
                .map_err(why_lost);
        }
        match &self.binding {
            Some(binding) => {
                noise::connect_bound_stream(self.rd, self.wr, binding, auth, hello, first, timeout)
                    .await
            }
            None => noise::connect_stream(self.rd, self.wr, auth, hello, first, timeout).await,
        }
        .map_err(why_lost)
    }

    /// Runs the node side of the link's handshake: [`noise::accept_bound_stream_with`] on
    /// `wanmux/2`, [`noise::accept_stream_with`] on `wanmux/1` (see them for `respond` and the
    /// errors); for a client that presented a certificate ([`Stream::client_cert`]), PKI mode's
    /// hello ([`noise::accept_pki_stream`]), whose `respond` gets the certificate's identity
    /// as the key.
    pub async fn accept_with<F>(
        self,
        auth: &ServerAuth,
        timeout: Duration,
        respond: F,
    ) -> Result<Accepted, LinkError>
    where
        F: FnOnce(&ReceivedHello, Option<&PublicKey>) -> Result<ServerHello, LinkError>,
    {
        let conn = self.conn.clone();
        let accepted = if let Some(client) = self.client_cert {
            if self.version != Version::V2 {
                return Err(LinkError::Protocol("PKI mode needs wanmux/2"));
            }
            noise::accept_pki_stream(self.rd, self.wr, client, timeout, respond).await
        } else {
            match &self.binding {
                Some(binding) => {
                    noise::accept_bound_stream_with(
                        self.rd, self.wr, binding, auth, timeout, respond,
                    )
                    .await
                }
                None => noise::accept_stream_with(self.rd, self.wr, auth, timeout, respond).await,
            }
        }
        .map_err(why_lost)?;
        open_up(&conn);
        Ok(accepted)
    }

    /// The stream's raw halves, for tests that play a hostile peer.
    pub fn into_halves(self) -> (BoxRead, BoxWrite) {
        (self.rd, self.wr)
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// The send half of a QUIC link. It sizes what quinn may hold unacknowledged from the congestion
/// window and recent losses ([`send_window`]), so the link's queue follows the path, and it
/// closes the connection when dropped.
///
/// The window is re-read on every write and, while quinn refuses a write, every
/// [`RESIZE_EVERY`]: quinn frees its buffer only up to the first unacknowledged byte, so after a
/// loss a blocked writer is woken only when the retransmission is acknowledged, two round trips
/// later. Without the timer the window sized before that loss stayed in force that long,
/// however much the congestion window grew meanwhile (in start-up it doubles every round trip).
struct Sender {
    send: quinn::SendStream,
    conn: quinn::Connection,
    /// The link's stream sizes the connection's send window; a lane stream leaves it alone.
    sizes_window: bool,
    resized: Option<std::time::Instant>,
    loss: LossHold,
    /// Re-armed when quinn refuses a write (`armed`): when it fires, the window is re-read.
    /// One timer for the link's life, reset rather than allocated for every refusal.
    recheck: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: bool,
    /// After a shutdown finished the stream: completes once the peer acknowledged all of it.
    acked: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>>,
    /// Closes the connection once neither the link's nor its lane's writer holds it.
    _closer: Arc<Closer>,
}

impl Sender {
    fn new(
        send: quinn::SendStream,
        conn: quinn::Connection,
        sizes_window: bool,
        closer: Arc<Closer>,
    ) -> Self {
        Self {
            send,
            conn,
            sizes_window,
            resized: None,
            loss: LossHold::default(),
            recheck: Box::pin(tokio::time::sleep(RESIZE_EVERY)),
            armed: false,
            acked: None,
            _closer: closer,
        }
    }

    fn resize(&mut self) {
        if !self.sizes_window {
            return;
        }
        let now = std::time::Instant::now();
        if self.resized.is_some_and(|t| now - t < RESIZE_EVERY) {
            return;
        }
        self.resized = Some(now);
        let path = self.conn.stats().path;
        let lossy = self.loss.lossy(now, path.lost_packets, path.rtt);
        self.conn.set_send_window(send_window(path.cwnd, lossy));
    }
}

/// Whether a link lost a packet lately (within [`LOSS_HOLD_RTTS`] smoothed RTTs).
#[derive(Debug, Default)]
struct LossHold {
    /// quinn's count of lost packets at the last look.
    lost_packets: u64,
    /// Until when the link counts as lossy.
    until: Option<std::time::Instant>,
}

impl LossHold {
    /// Takes quinn's count of lost packets so far and the smoothed RTT.
    fn lossy(&mut self, now: std::time::Instant, lost_packets: u64, rtt: Duration) -> bool {
        if lost_packets > self.lost_packets {
            self.lost_packets = lost_packets;
            self.until = Some(now + rtt * LOSS_HOLD_RTTS);
        }
        self.until.is_some_and(|t| now < t)
    }
}

/// What quinn may hold unacknowledged on a link with congestion window `cwnd`, `lossy` if it
/// lost a packet lately (see [`LOSSY_SEND_WINDOW_CWNDS`], [`LOSS_HOLD_RTTS`]).
fn send_window(cwnd: u64, lossy: bool) -> u64 {
    let window = if lossy {
        LOSSY_SEND_WINDOW_CWNDS * cwnd + NOTSENT_LOWAT
    } else {
        cwnd + NOTSENT_LOWAT.min(cwnd)
    };
    window.min(SEND_WINDOW)
}

impl tokio::io::AsyncWrite for Sender {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        use std::task::Poll;
        loop {
            self.resize();
            let this = &mut *self;
            let write =
                tokio::io::AsyncWrite::poll_write(std::pin::Pin::new(&mut this.send), cx, buf);
            if write.is_ready() {
                this.armed = false;
                return write;
            }
            if !this.sizes_window && !this.armed {
                // A lane stream's write found the connection's send window full of the bulk
                // stream's bytes: widen it by room for the lane's and write at once, rather than
                // wait for acks the bulk writer may take first (its next resize narrows it).
                let cwnd = this.conn.stats().path.cwnd;
                this.conn
                    .set_send_window(send_window(cwnd, true) + LANE_ROOM);
                let write =
                    tokio::io::AsyncWrite::poll_write(std::pin::Pin::new(&mut this.send), cx, buf);
                if write.is_ready() {
                    return write;
                }
            }
            // Blocked: quinn wakes us when it frees buffer; the timer when the window may have
            // grown. A fired timer re-reads the window and tries again.
            if !this.armed {
                let at = tokio::time::Instant::now() + RESIZE_EVERY;
                this.recheck.as_mut().reset(at);
                this.armed = true;
            }
            if std::future::Future::poll(this.recheck.as_mut(), cx).is_pending() {
                return Poll::Pending;
            }
            this.armed = false;
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(std::pin::Pin::new(&mut self.send), cx)
    }

    /// Finishes the stream and completes once the peer acknowledged every byte of it (or
    /// stopped it, or the connection ended), and then closed the connection, or after
    /// [`PEER_CLOSE_WAIT`]. A QUIC connection's close discards what quinn has not yet sent or
    /// resent, and what the peer has received and acknowledged but its application has not yet
    /// read: the link's last messages (a stopping client's `SESSION_OVER`, a node's `RESET`s)
    /// are read for certain only if the peer, having read them, closes first. A TCP socket's
    /// close needs no such wait (the kernel sends what it holds and the peer reads it after).
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = &mut *self;
        if this.acked.is_none() {
            std::task::ready!(tokio::io::AsyncWrite::poll_shutdown(
                std::pin::Pin::new(&mut this.send),
                cx
            ))?;
            let stopped = this.send.stopped();
            let conn = this.conn.clone();
            this.acked = Some(Box::pin(async move {
                let _ = stopped.await;
                let _ = tokio::time::timeout(PEER_CLOSE_WAIT, conn.closed()).await;
            }));
        }
        match &mut this.acked {
            Some(acked) => acked.as_mut().poll(cx).map(Ok),
            None => std::task::Poll::Ready(Ok(())),
        }
    }
}

/// How long a link's writer that finished its stream waits for the peer to close the connection
/// ([`Sender::poll_shutdown`]): a peer that read the link's end closes at once; one of a release
/// before this wait, or one that is closing in order too, does not.
const PEER_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Closes a link's connection when dropped: the link is over (its writer and its lane stream's
/// are gone), and the connection must not wait for its idle timeout. A lane stream's end alone
/// leaves the link's stream its connection, so that what the node sent on the one is read after
/// the other ended.
struct Closer(quinn::Connection);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.close(VarInt::from_u32(0), b"link closed");
    }
}

/// The client's TLS verifier on QUIC links: the node is proved by the Noise handshake inside the
/// link, bound to this TLS connection, not by its certificate (see the module docs).
///
/// It checks the TLS 1.3 handshake signature against the certificate the node presents, so the
/// connection's secrets (and its exporter, the [`ChannelBinding`]) are shared with the holder of
/// that certificate's key, and takes the certificate itself, self-signed and generated when the
/// node started, without a chain or a name. That is sound only because the link carries no frame
/// before a handshake that proved the far end of this connection is the node: [`Stream`]
/// gives out a link's halves only after it. TLS 1.2 is not offered.
#[derive(Debug)]
pub struct ChannelBoundVerifier(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for ChannelBoundVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The certificate's key signs the handshake (`verify_tls13_signature`); who holds it
        // matters not: the bound Noise handshake proves the node.
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The client config offers TLS 1.3 only, so rustls never asks.
        Err(rustls::PeerIncompatible::Tls12NotOffered.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod link_tests;
#[cfg(test)]
mod pki_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_window_holds_one_congestion_window_unsent_at_most_until_a_loss() {
        let k = 1024;
        // No loss lately: the window in flight, plus 128 KiB or one more window if smaller.
        assert_eq!(send_window(40 * k, false), 80 * k);
        assert_eq!(send_window(2048 * k, false), 2176 * k);
        // After a loss, room for what waits behind it too.
        assert_eq!(send_window(40 * k, true), 248 * k);
        assert_eq!(send_window(2048 * k, true), 6272 * k);
        assert_eq!(send_window(8 << 20, true), SEND_WINDOW);

        let (t0, rtt) = (std::time::Instant::now(), Duration::from_millis(100));
        let mut hold = LossHold::default();
        assert!(!hold.lossy(t0, 0, rtt));
        assert!(hold.lossy(t0, 3, rtt), "a loss");
        assert!(hold.lossy(t0 + rtt, 3, rtt), "still within two RTTs");
        assert!(!hold.lossy(t0 + rtt * 2, 3, rtt), "two RTTs without one");
        assert!(hold.lossy(t0 + rtt * 3, 4, rtt), "another");
    }

    #[test]
    fn the_links_of_one_peer_address_share_their_path_while_one_lives() {
        let paths = Paths::default();
        let (a, b) = ([10, 77, 2, 2].into(), [10, 77, 3, 2].into());
        let first = paths.share(a);
        assert!(Arc::ptr_eq(&first, &paths.share(a)));
        assert!(!Arc::ptr_eq(&first, &paths.share(b)));
        // The last link of a path gone, the next link starts a new one, and the map forgets
        // the old.
        let weak = Arc::downgrade(&first);
        drop(first);
        let again = paths.share(a);
        assert!(weak.upgrade().is_none());
        assert_eq!(paths.0.lock().unwrap().len(), 1, "b's entry is gone too");
        drop(again);
    }
}
