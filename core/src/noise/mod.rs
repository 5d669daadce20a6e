//! Noise over a byte stream: the link driver shared by client and server (see
//! `docs/PROTOCOL.md`, "Link layer").
//!
//! A link is one reliable, ordered byte stream (a TCP connection, or a QUIC bidirectional
//! stream) that carries a Noise handshake followed by length-prefixed Noise transport messages.
//! [`connect_stream`] runs the client side of the handshake and [`accept_stream_with`] the server
//! side, on the stream's two halves boxed as [`BoxRead`] and [`BoxWrite`]; [`connect`],
//! [`accept`] and [`accept_with`] do the same on a [`TcpStream`] and set its socket options. All
//! return the link as two halves, a [`LinkReader`] and a [`LinkWriter`], that can be driven from
//! two separate tokio tasks. Each half holds its direction's key of the handshake's split and its
//! own explicit nonce counter, so neither needs a lock.
//!
//! # Handshake
//!
//! The client writes `mode | len | message 1`, the server answers `len | message 2`, and the
//! client sends its first transport message (key confirmation). [`accept`] returns only once that
//! message has decrypted: in `IKpsk2` a client with the wrong PSK is caught only there, and a
//! replayed message 1 must not attach a link to a session. On a client link the key confirmation
//! starts with the session's secret ([`SessionSecret`]), whose hash is the session id of message
//! 1: [`accept_stream_with`] refuses one without it, so whoever reads a session's id (every PSK
//! holder can) still cannot join it. Message 1 carries the client's clock, strictly increasing;
//! the server's `respond` callback refuses a timestamp it took before ([`ReplayGuard`]), and a
//! replayed message 1 gets no message 2. A server that refuses a client sends
//! it nothing and closes the stream; [`accept`] returns the reason as a [`LinkError`] and the
//! caller logs it (with the peer address, at `info`). Handshake messages, the key confirmation
//! included, are at most [`MAX_HANDSHAKE_MESSAGE`] bytes; a longer one is refused from its length
//! prefix, before any of it is read. The whole handshake runs under the caller's timeout.
//!
//! # Links bound to their TLS connection
//!
//! A QUIC link on ALPN `wanmux/2` runs the same handshake with the TLS connection's exporter at
//! the end of its prologue ([`ChannelBinding`]; [`connect_bound_stream`],
//! [`accept_bound_stream_with`]): a handshake made on one TLS connection fails on another. Its
//! key confirmation is still a Noise transport message; after it both ends drop the Noise keys,
//! and the link's messages are `len: u16 | frames` in the clear inside TLS, which already
//! encrypts them ([`LinkWriter::encrypts`] says which kind a half is). A clear message longer
//! than [`MAX_PLAINTEXT`] is a protocol error, so a reader's memory stays as bounded as on a
//! sealed link.
//!
//! Server nodes link to each other with the same handshake and other payloads: [`connect_peer`]
//! and [`accept_peer`] (`docs/PROTOCOL.md`, "Peer links"). Both kinds share one implementation,
//! generic over the payloads, so a client hello never passes for a peer's nor the reverse.
//!
//! # Data path
//!
//! [`LinkReader::recv`] reads the stream in large chunks and decrypts each message where it
//! lies in the read buffer (with the handshake's split keys, `cipher`), handing it out as a
//! frozen slice of that buffer, so a message costs no copy and no allocation of its own. A
//! [`Bytes`] it returns keeps its read block (up to [`READ_CHUNK`] bytes) alive: a consumer
//! that holds messages for long should copy what it keeps. [`LinkWriter::seal`] encrypts into one
//! output buffer, and [`LinkWriter::flush`] writes everything sealed so far in as few syscalls as
//! the kernel allows. A writer seals as many messages as it has before flushing: that is how
//! small frames share a syscall.
//!
//! Both [`LinkReader::recv`] and [`LinkWriter::flush`] are cancel safe: dropping the future
//! loses no bytes and leaves the half usable.
//!
//! # Memory bounds
//!
//! A reader holds one read block of [`READ_CHUNK`] bytes, its partial message included; the
//! blocks that slices it handed out still pin are their holders' memory.
//! A writer's output buffer is capped at [`MAX_PENDING`]; the caller flushes well before that
//! (watch [`LinkWriter::pending`]). A connection in its handshake holds a few KiB at most.

mod cipher;
mod handshake;
mod peer;
mod pki;
pub mod replay;
mod transport;

#[cfg(test)]
mod bound_tests;
#[cfg(test)]
mod tests;

use std::io;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::keys::PublicKey;

pub use crate::auth::{ClientAuth, ServerAuth};
pub use handshake::{
    accept, accept_bound_stream_with, accept_stream_with, accept_with, connect,
    connect_bound_stream, connect_stream,
};
pub use peer::{
    accept_peer, accept_peer_stream, connect_peer, connect_peer_stream, PeerAccepted, PeerHello,
};
pub use pki::{accept_pki_stream, connect_pki_stream, PKI_MODE};
pub use replay::{Identity, ReplayGuard, Replayed};
pub use transport::{LinkReader, LinkWriter};

/// The read half of the byte stream a link runs over. Boxed so that [`LinkReader`] and
/// [`LinkWriter`] are one type whatever the transport; the virtual call costs nothing next to a
/// [`READ_CHUNK`] read.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;

/// The write half of the byte stream a link runs over (see [`BoxRead`]).
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Largest plaintext of one transport message: 65,535 bytes of ciphertext less the 16-byte tag,
/// which is what one link message may hold ([`crate::frame::MAX_MESSAGE`]).
pub const MAX_PLAINTEXT: usize = crate::frame::MAX_MESSAGE;

/// Largest handshake message, key confirmation included, in bytes (ciphertext, without the
/// length prefix). A longer length prefix is refused before the message is read.
pub const MAX_HANDSHAKE_MESSAGE: usize = 1_024;

/// Largest `first` plaintext [`connect`] can send: the key confirmation is a handshake message,
/// and on a client link it holds the session secret as well.
pub const MAX_FIRST_PLAINTEXT: usize = MAX_HANDSHAKE_MESSAGE - TAG_LEN - SESSION_SECRET_LEN;

/// How much a [`LinkReader`] asks the kernel for per read, and the size of its read blocks:
/// messages are decrypted and handed out where they were read, so a slice held pins one block.
pub const READ_CHUNK: usize = 128 * 1024;

/// Cap on the bytes a [`LinkWriter`] holds sealed but not yet flushed. Sealing past it is API
/// misuse: flush first.
pub const MAX_PENDING: usize = 8 * 1024 * 1024;

/// `TCP_NOTSENT_LOWAT` set by [`configure_socket`]: the kernel keeps at most this many unsent
/// bytes queued, so queues do not hide latency from the scheduler.
pub const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Length of the AEAD tag every transport message carries.
const TAG_LEN: usize = 16;

/// Length of a [`SessionSecret`].
pub const SESSION_SECRET_LEN: usize = 32;

/// Length of a [`ChannelBinding`].
pub const CHANNEL_BINDING_LEN: usize = 32;

/// What binds a link's Noise handshake to the TLS connection it runs in: 32 bytes of that
/// connection's exporter (RFC 8446 section 7.5, label `EXPORTER-wanmux-link`, empty context;
/// `crate::quic` derives it), appended to the handshake's prologue by [`connect_bound_stream`]
/// and [`accept_bound_stream_with`].
///
/// Both ends of one TLS connection derive the same bytes, and two connections never do (the
/// exporter comes from the connection's own key exchange), so a Noise message 1 made on one
/// connection does not decrypt when relayed onto another: whoever terminates the client's TLS
/// cannot pass the client's handshake on to the node through a TLS connection of its own.
/// Zeroed when dropped, redacted in `Debug`.
#[derive(Clone)]
pub struct ChannelBinding([u8; CHANNEL_BINDING_LEN]);

impl ChannelBinding {
    /// Wraps the exporter's bytes.
    pub const fn from_bytes(bytes: [u8; CHANNEL_BINDING_LEN]) -> ChannelBinding {
        ChannelBinding(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; CHANNEL_BINDING_LEN] {
        &self.0
    }
}

impl Drop for ChannelBinding {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl std::fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelBinding(<redacted>)")
    }
}

/// The secret that binds a session to its client (`docs/PROTOCOL.md`, "Key confirmation"): the
/// client draws it once per session, derives the session id from it ([`SessionSecret::id`]),
/// and sends it only inside the key confirmation of each link, under that handshake's transport
/// keys. A node takes a link into a session only if the secret derives the id of message 1, so
/// knowing a session's id (any PSK holder can read it in message 1) joins nothing. Zeroed when
/// dropped, redacted in `Debug`.
#[derive(Clone)]
pub struct SessionSecret([u8; SESSION_SECRET_LEN]);

impl SessionSecret {
    /// A new secret from the operating system's random number generator.
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails.
    pub fn generate() -> SessionSecret {
        use rand::TryRngCore as _;
        let mut s = SessionSecret([0; SESSION_SECRET_LEN]);
        rand::rngs::OsRng
            .try_fill_bytes(&mut s.0)
            .expect("the OS random number generator failed");
        s
    }

    /// Wraps raw secret bytes (tests, and the key confirmation a node reads).
    pub const fn from_bytes(bytes: [u8; SESSION_SECRET_LEN]) -> SessionSecret {
        SessionSecret(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; SESSION_SECRET_LEN] {
        &self.0
    }

    /// The session id this secret names: the first 16 bytes of BLAKE2s-256 of
    /// `wanmux session id v1` followed by the secret.
    pub fn id(&self) -> [u8; 16] {
        use blake2::Digest as _;
        let mut h = blake2::Blake2s256::new();
        h.update(b"wanmux session id v1");
        h.update(self.0);
        let digest = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        id
    }
}

impl Drop for SessionSecret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl std::fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSecret(<redacted>)")
    }
}

/// What a client link's dialler says in handshake message 1, and the secret its key
/// confirmation proves (see [`SessionSecret`]).
#[derive(Clone, Debug)]
pub struct ClientHello {
    /// The session's secret, drawn once per session; the same on all its links. Message 1
    /// carries its id, the key confirmation the secret itself.
    pub session: SessionSecret,
    /// Counts the links the client opened in this session (for logs).
    pub link_seq: u32,
    /// This link is a dedicated interactive lane (`links.lanes`): it carries no bulk data in
    /// either direction. Bit 0 of message 1's flags byte.
    pub lane: bool,
    /// The client sends and takes routed messages (`ROUTE` sections for other owners, see
    /// [`crate::route`]) on this link, if the node agrees. Bit 1 of message 1's flags byte.
    pub relay: bool,
}

/// Message 1 of a client link as the node read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReceivedHello {
    /// The session the link joins (see [`SessionSecret::id`]).
    pub session_id: [u8; 16],
    /// Counts the links the client opened in this session (for logs).
    pub link_seq: u32,
    /// This link is a dedicated interactive lane (bit 0 of the flags byte).
    pub lane: bool,
    /// The client asks for routed messages on this link (bit 1 of the flags byte).
    pub relay: bool,
    /// The client's clock when it wrote message 1, in nanoseconds since the Unix epoch,
    /// strictly increasing within one client process: what replay protection compares
    /// ([`ReplayGuard`]).
    pub timestamp: u64,
}

/// What the server tells the client in handshake message 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServerHello {
    /// The id of the server node.
    pub node_id: u16,
    /// Identifies the server's instance of the session this link joins: the same on every
    /// link while the server holds the session, different once the server has lost it (a
    /// restart, or the grace period ran out), so the client knows to start over.
    pub epoch: u64,
    /// The node takes and sends routed messages on this link (the client asked for them, and
    /// the node is in a cluster). Bit 7 of message 2's status byte.
    pub relay: bool,
}

/// A link the server accepted: the handshake and key confirmation succeeded.
#[derive(Debug)]
pub struct Accepted {
    /// The client's message 1 payload. The key confirmation proved the session's secret.
    pub hello: ReceivedHello,
    /// The client's static key in static-key mode (it is on the allow-list); `None` in PSK mode.
    /// In PKI mode, the identity of the client's certificate (the SHA-256 of its
    /// SubjectPublicKeyInfo) in the same 32 bytes: sessions, limits and fair shares treat it
    /// as a key. Neither kind can be made to equal the other (that takes a SHA-256 preimage,
    /// or an X25519 key pair for given public bytes), and [`Accepted::pki`] tells them apart.
    pub client_key: Option<PublicKey>,
    /// The link runs in PKI mode: `client_key` is a certificate's identity.
    pub pki: bool,
    /// The frames of the client's key-confirmation message (its first transport message),
    /// after the session secret.
    pub first: Bytes,
    /// Receive half of the link.
    pub reader: LinkReader,
    /// Send half of the link.
    pub writer: LinkWriter,
}

/// Why a link operation failed. Every error but [`LinkError::Misuse`] means the link is done:
/// drop both halves.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// A local I/O error on the stream.
    #[error("link I/O error: {0}")]
    Io(#[from] io::Error),
    /// The handshake did not complete within its timeout.
    #[error("handshake timed out")]
    Timeout,
    /// The peer failed authentication: unknown key, wrong PSK, a mode this end does not take, or
    /// a message that did not decrypt during the handshake. Never contains key material.
    #[error("peer failed authentication: {0}")]
    Auth(&'static str),
    /// The dialler's message 1 carries a timestamp this end took from it before, or an older
    /// one: a recorded message sent again ([`ReplayGuard`]).
    #[error("peer failed authentication: message 1 replayed (its timestamp was taken before)")]
    Replayed,
    /// Static-key mode: the client's key is not in the server's allow-list. The key is public;
    /// the server's log names it so that an operator can add it.
    #[error("peer failed authentication: client key {0} is not on the allow-list")]
    UnknownClient(PublicKey),
    /// PKI mode: the client's certificate verified, but its identity (the SHA-256 of its
    /// SubjectPublicKeyInfo) is not among the `sha256:` entries of the node's allow-list.
    #[error("peer failed authentication: client certificate {} is not on the allow-list", crate::tls::spki_text(.0))]
    UnknownCert([u8; 32]),
    /// The QUIC connection's TLS handshake failed: a certificate that did not verify at either
    /// end (another CA, expired, revoked, the wrong name), or a TLS alert from the peer. The
    /// reason is rustls' (or the alert's) and carries no key material.
    #[error("TLS refused: {0}")]
    Tls(String),
    /// The peer sent malformed bytes, or a transport message that did not decrypt.
    #[error("protocol violation by peer: {0}")]
    Protocol(&'static str),
    /// The peer closed the connection where more bytes were due (during the handshake this is how
    /// a server refuses a client), or this half was already closed or failed.
    #[error("link closed")]
    Closed,
    /// The caller broke the API contract (oversized plaintext, output buffer over its cap). The
    /// link is still usable.
    #[error("link API misuse: {0}")]
    Misuse(&'static str),
}

/// Sets the TCP congestion control of a link's socket (`bbr`, `cubic`, ...). Linux only; the
/// name must be one the kernel has (`net.ipv4.tcp_available_congestion_control`).
pub fn set_congestion(tcp: &TcpStream, name: &str) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return socket2::SockRef::from(tcp).set_tcp_congestion(name.as_bytes());
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (tcp, name);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "congestion control is set on Linux only",
        ))
    }
}

/// Sets the socket options every link wants: `TCP_NODELAY`, and on Linux and Android
/// `TCP_NOTSENT_LOWAT` = [`NOTSENT_LOWAT`] so unsent data does not pile up in the kernel where
/// the scheduler cannot see it. Other systems (macOS has the option too) get `TCP_NODELAY` only:
/// socket2 exposes `TCP_NOTSENT_LOWAT` only for Linux and Android, and this crate forbids the
/// `unsafe` a raw `setsockopt` would need.
///
/// [`connect`], [`accept`] and [`accept_with`] call this themselves.
pub fn configure_socket(tcp: &TcpStream) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    socket2::SockRef::from(tcp).set_tcp_notsent_lowat(NOTSENT_LOWAT)?;
    Ok(())
}
