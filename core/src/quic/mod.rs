//! QUIC links: the transport shared by client and server (see `docs/ARCHITECTURE.md`, "QUIC
//! links").
//!
//! A QUIC link is one QUIC connection (quinn, over UDP) carrying one bidirectional stream. The
//! stream is a reliable byte stream like a TCP connection, and the link layer on top of it is the
//! same: the Noise handshake, authentication and length-prefixed transport messages of
//! [`crate::noise`] ([`crate::noise::connect_stream`], [`crate::noise::accept_stream_with`]).
//! What QUIC changes is congestion control: every connection runs [`crate::pace::Pace`], which
//! does not mistake random loss for congestion, where a TCP link is left to the kernel's cubic or
//! bbr.
//!
//! QUIC requires TLS. The node presents a certificate it generates at start; the client does not
//! verify it ([`NoVerify`]) because the Noise handshake inside the stream authenticates the node
//! (pinned static key or PSK) and the client, exactly as on TCP links. TLS only hides the
//! transport's headers; a man in the middle of the TLS layer still faces Noise.
//!
//! One [`Endpoint`] (one UDP socket) serves all QUIC links of a daemon: the client dials from
//! one ([`Dialer`]), the node accepts on one bound to its listen address ([`Listener`]). The
//! links to or from one peer address share their congestion controllers' [`PathShare`].

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

use crate::noise::{BoxRead, BoxWrite, LinkError};
use crate::pace::PathShare;
use pace::PaceConfig;

/// The ALPN protocol name of wanmux links.
pub const ALPN: &[u8] = b"wanmux/1";

/// The TLS server name the client asks for (the certificate is not checked against it).
const SERVER_NAME: &str = "wanmux";

/// What one stream may have received but not yet read: covers the reorder gap behind a lost
/// packet at 500 Mbit/s and 60 ms RTT several times over.
pub const RECEIVE_WINDOW: u32 = 16 << 20;

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

/// A link with no packet for this long is dead to QUIC; the engine's pings notice much sooner.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The transport settings of one side; `accepts_stream` is the node's: it lets the client open
/// the link's one bidirectional stream. The client lets the node open none. `pace` is the
/// congestion controller of the link's path.
fn transport(accepts_stream: bool, pace: PaceConfig) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.congestion_controller_factory(Arc::new(pace));
    // Reordering is not loss: losses are found by time alone (see `REORDER_PACKETS`).
    t.packet_threshold(crate::pace::REORDER_PACKETS);
    t.time_threshold(crate::pace::REORDER_TIME);
    t.stream_receive_window(VarInt::from_u32(RECEIVE_WINDOW));
    t.receive_window(VarInt::from_u32(RECEIVE_WINDOW));
    t.send_window(SEND_WINDOW);
    // One bidirectional stream per connection, opened by the client; nothing else.
    t.max_concurrent_bidi_streams(VarInt::from_u32(u32::from(accepts_stream)));
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
    fn transport(&self, peer: IpAddr, accepts_stream: bool) -> Arc<TransportConfig> {
        transport(accepts_stream, PaceConfig::shared(self.share(peer)))
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
    config: quinn::ServerConfig,
    paths: Arc<Paths>,
}

impl Listener {
    /// The endpoint, to wait for incoming links on, ask its address or close it.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// The client's QUIC endpoint for one address family, with the configuration each dialled link
/// gets (see [`Listener`]).
#[derive(Clone, Debug)]
pub struct Dialer {
    endpoint: Endpoint,
    config: quinn::ClientConfig,
    paths: Arc<Paths>,
}

/// An endpoint that accepts QUIC links on `addr` (UDP), with a certificate generated now.
pub fn server_endpoint(addr: SocketAddr) -> io::Result<Listener> {
    let other = |e: &dyn std::fmt::Display| io::Error::other(e.to_string());
    let cert =
        rcgen::generate_simple_self_signed(vec![SERVER_NAME.into()]).map_err(|e| other(&e))?;
    let der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| other(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![der], key.into())
        .map_err(|e| other(&e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| other(&e))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // The endpoint's default; `accept` gives each link its path's transport instead.
    config.transport_config(transport(true, PaceConfig::default()));
    let endpoint = Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config.clone()),
        socket(addr)?,
        Arc::new(quinn::TokioRuntime),
    )?;
    Ok(Listener {
        endpoint,
        config,
        paths: Arc::default(),
    })
}

/// An endpoint for dialling QUIC links, bound to an ephemeral port of `local` (an unspecified
/// address of the nodes' family, normally).
pub fn client_endpoint(local: SocketAddr) -> io::Result<Dialer> {
    let other = |e: &dyn std::fmt::Display| io::Error::other(e.to_string());
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| other(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| other(&e))?;
    let config = quinn::ClientConfig::new(Arc::new(crypto));
    let endpoint = Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket(local)?,
        Arc::new(quinn::TokioRuntime),
    )?;
    Ok(Dialer {
        endpoint,
        config,
        paths: Arc::default(),
    })
}

fn connection_error(e: quinn::ConnectionError) -> LinkError {
    match e {
        quinn::ConnectionError::TimedOut => LinkError::Timeout,
        quinn::ConnectionError::TransportError(_) => LinkError::Protocol("QUIC transport error"),
        quinn::ConnectionError::VersionMismatch => LinkError::Protocol("QUIC version mismatch"),
        _ => LinkError::Closed,
    }
}

/// Dials a QUIC link to `addr` and opens its stream; the caller runs
/// [`noise::connect_stream`](crate::noise::connect_stream) on the halves.
pub async fn connect(
    dialer: &Dialer,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(BoxRead, BoxWrite), LinkError> {
    let mut config = dialer.config.clone();
    config.transport_config(dialer.paths.transport(addr.ip(), false));
    let connecting = dialer
        .endpoint
        .connect_with(config, addr, SERVER_NAME)
        .map_err(|e| LinkError::Io(io::Error::other(e.to_string())))?;
    let conn = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| LinkError::Timeout)?
        .map_err(connection_error)?;
    // Opening sends nothing: the stream appears at the node with the Noise message 1.
    let (send, recv) = conn.open_bi().await.map_err(connection_error)?;
    Ok((Box::new(recv), Box::new(Sender::new(send, conn))))
}

/// Completes an incoming QUIC link and waits for its stream (within `timeout`); the caller runs
/// [`noise::accept_stream_with`](crate::noise::accept_stream_with) on the halves. The stream
/// keeps the connection alive; dropping both halves closes it.
pub async fn accept(
    listener: &Listener,
    incoming: quinn::Incoming,
    timeout: Duration,
) -> Result<(BoxRead, BoxWrite), LinkError> {
    let mut config = listener.config.clone();
    config.transport_config(
        listener
            .paths
            .transport(incoming.remote_address().ip(), true),
    );
    let stream = async {
        let conn = incoming
            .accept_with(Arc::new(config))
            .map_err(connection_error)?
            .await
            .map_err(connection_error)?;
        let (send, recv) = conn.accept_bi().await.map_err(connection_error)?;
        let send = Sender::new(send, conn);
        Ok::<_, LinkError>((Box::new(recv) as BoxRead, Box::new(send) as BoxWrite))
    };
    tokio::time::timeout(timeout, stream)
        .await
        .map_err(|_| LinkError::Timeout)?
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
    resized: Option<std::time::Instant>,
    loss: LossHold,
    /// Re-armed when quinn refuses a write (`armed`): when it fires, the window is re-read.
    /// One timer for the link's life, reset rather than allocated for every refusal.
    recheck: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl Sender {
    fn new(send: quinn::SendStream, conn: quinn::Connection) -> Self {
        Self {
            send,
            conn,
            resized: None,
            loss: LossHold::default(),
            recheck: Box::pin(tokio::time::sleep(RESIZE_EVERY)),
            armed: false,
        }
    }

    fn resize(&mut self) {
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

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_shutdown(std::pin::Pin::new(&mut self.send), cx)
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        // The link is over: do not leave the connection to its idle timeout.
        self.conn.close(VarInt::from_u32(0), b"link closed");
    }
}

/// Accepts any server certificate, checking only that the handshake signature is valid for the
/// certificate's key: the node is authenticated by the Noise handshake inside the stream (see
/// the module docs).
#[derive(Debug)]
pub struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
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
