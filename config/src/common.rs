//! Types shared by both daemons' configs: service names, `host:port` targets, limits, and the
//! small conversion helpers the `Raw*` layers use.

use crate::error::Collector;
use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;
use toml::Spanned;

// ---------------------------------------------------------------------------------------------
// Service names
// ---------------------------------------------------------------------------------------------

/// The name of a service: 1..=255 bytes of `[A-Za-z0-9._-]`, compared exactly (case matters).
///
/// The length limit is the wire format's: `OPEN` carries the name after a one-byte length.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(String);

/// Why a service name is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceNameError {
    /// The name is empty.
    #[error("service name is empty")]
    Empty,
    /// The name is longer than 255 bytes.
    #[error("service name is {0} bytes long, at most 255 are allowed")]
    TooLong(usize),
    /// The name holds a character outside `[A-Za-z0-9._-]`.
    #[error("service name may only hold letters, digits, '.', '_' and '-', found {0:?}")]
    BadChar(char),
}

impl ServiceName {
    /// Longest name in bytes.
    pub const MAX_LEN: usize = 255;

    /// Checks and wraps a name.
    pub fn new(name: &str) -> Result<Self, ServiceNameError> {
        if name.is_empty() {
            return Err(ServiceNameError::Empty);
        }
        if let Some(c) = name
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(ServiceNameError::BadChar(c));
        }
        if name.len() > Self::MAX_LEN {
            return Err(ServiceNameError::TooLong(name.len()));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as bytes, as sent in `OPEN` (1..=255 bytes, ASCII).
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl FromStr for ServiceName {
    type Err = ServiceNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceName({:?})", self.0)
    }
}

impl AsRef<str> for ServiceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// ---------------------------------------------------------------------------------------------
// host:port
// ---------------------------------------------------------------------------------------------

/// The host part of a [`HostPort`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A literal address; nothing to resolve.
    Ip(IpAddr),
    /// A DNS name (checked for shape only), resolved each time a connection is made, so a DNS
    /// change takes effect without a restart.
    Name(String),
}

/// A `host:port` to connect to: an IP literal (IPv6 in brackets) or a DNS name, and a port
/// other than 0. Resolved at connect time, not when the config is read.
///
/// `Display` gives the form `tokio::net::lookup_host` and `TcpStream::connect` take
/// (`example.net:80`, `10.0.0.5:7000`, `[2001:db8::1]:443`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    host: Host,
    port: u16,
}

/// Why a `host:port` is invalid. The messages quote the text: it is an address, not a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostPortError {
    /// No `:port` at the end.
    #[error(
        "expected HOST:PORT (e.g. \"10.0.0.5:7000\" or \"game.example.net:7000\"), found {0:?}"
    )]
    MissingPort(String),
    /// An IPv6 address without brackets, which is ambiguous with the port.
    #[error("IPv6 addresses need brackets, e.g. \"[2001:db8::1]:7000\", found {0:?}")]
    UnbracketedIpv6(String),
    /// The port is not a number in 1..=65535.
    #[error("invalid port {0:?}: expected a number in 1..=65535")]
    BadPort(String),
    /// The host is neither an IP address nor a valid DNS name.
    #[error("invalid host {0:?}: expected an IP address or a DNS name")]
    BadHost(String),
}

impl HostPort {
    /// A target from a host and a port. The host may be an IP literal (IPv6 without brackets)
    /// or a DNS name.
    pub fn new(host: &str, port: u16) -> Result<Self, HostPortError> {
        if port == 0 {
            return Err(HostPortError::BadPort("0".to_owned()));
        }
        let host = if let Ok(ip) = host.parse::<IpAddr>() {
            Host::Ip(ip)
        } else if is_dns_name(host) {
            Host::Name(host.to_owned())
        } else {
            return Err(HostPortError::BadHost(host.to_owned()));
        };
        Ok(Self { host, port })
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port (never 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket address, when the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Host::Name(_) => None,
        }
    }
}

/// The port of a `SocketAddr` may be 0; a `HostPort` made from one keeps it, since code that
/// builds configs in-process (tests, the demo) may want exactly what it bound.
impl From<SocketAddr> for HostPort {
    fn from(addr: SocketAddr) -> Self {
        Self {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        }
    }
}

impl FromStr for HostPort {
    type Err = HostPortError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| HostPortError::MissingPort(s.to_owned()))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| HostPortError::MissingPort(s.to_owned()))?;
            if inside.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(HostPortError::BadHost(inside.to_owned()));
            }
            (inside, port)
        } else {
            let (host, port) = s
                .rsplit_once(':')
                .ok_or_else(|| HostPortError::MissingPort(s.to_owned()))?;
            if host.contains(':') {
                return Err(HostPortError::UnbracketedIpv6(s.to_owned()));
            }
            (host, port)
        };
        let port_num = match port.parse::<u16>() {
            Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
            _ => return Err(HostPortError::BadPort(port.to_owned())),
        };
        Self::new(host, port_num)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

/// A DNS name: at most 253 bytes, dot-separated labels of 1..=63 bytes of `[A-Za-z0-9_-]` not
/// starting or ending with `-`, one trailing dot allowed, and a last label that is not all
/// digits (so that a mistyped IPv4 address like `10.0.0.256` is not taken for a name).
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let last = name.rsplit('.').next().unwrap_or(name);
    labels_ok && !last.bytes().all(|b| b.is_ascii_digit())
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/// Flow-control and resource limits of one session, the same table (`[limits]`) in both
/// daemons. Each side applies its own values to what it *receives*: they bound the memory a
/// peer can make it hold.
///
/// The worst case a peer can make one session buffer on the receive side is
/// `min(session_window, max_streams × 2 MiB)` bytes of stream data beyond the credit reserved in
/// `memory` (each stream's window beyond its first 2 MiB), plus per-stream state for
/// `max_streams` streams. The sending side holds every unacknowledged byte for resend,
/// which is bounded by the *peer's* windows in the same way. With the defaults that is 128 MiB
/// of data per session and direction, whatever the number of streams, plus what `memory` lets
/// the daemon reserve.
///
/// Note that the protocol lets each side send its initial credit (2 MiB per stream, 16 MiB
/// per session, see `docs/PROTOCOL.md`) before the first window update, so a receiver must be
/// ready to hold that much per stream and per session even when its windows are smaller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Receive window per stream, in bytes: how far past the bytes the application has read a
    /// peer may send on one stream. Default 64 MiB (half of `memory` if that is less), range
    /// 16 KiB..=1 GiB; below the protocol's
    /// initial credit (2 MiB) it acts as 2 MiB. A stream's window starts at 2 MiB and grows
    /// only as far as the stream needs (see `docs/CONFIG.md`), so this is a maximum.
    ///
    /// This caps one stream's throughput at about `stream_window / RTT` and less on a lossy
    /// path, where a QUIC link holds up to three congestion windows unacknowledged: with 4 MiB
    /// (the old default) one stream got 107-113 Mbit/s of the WAN lab's 200 Mbit/s, 100 ms, 1%
    /// path, and 44 of 100 at 200 ms and 2%; with 16 MiB about 178 and 81. Memory: at most one
    /// window of buffered data per open stream; beyond its first 2 MiB reserved in `memory`,
    /// within them counted in `session_window`. DoS cost: a peer that never lets its streams
    /// drain can pin one window per stream, as far as its share of `memory` reserves them.
    pub stream_window: u64,
    /// Receive window of the whole session, in bytes: the sum over all streams of bytes sent
    /// beyond what was consumed, less the streams' credit reserved in `memory` (a grown
    /// window's, beyond its first 2 MiB), which comes on top: a stream whose application stops
    /// reading holds its own window, not the session's (it takes 2 MiB of this). At least
    /// `stream_window`. Default 128 MiB (`stream_window` if that is more), at most 4 GiB.
    ///
    /// Memory: the bound on buffered stream data per session and direction beyond what
    /// `memory` reserves, so the server's worst case is about `session_window × connected
    /// clients` plus the receive half of `memory`. DoS cost: an authenticated client can make
    /// the server hold this much for as long as it stays connected; size it for the number of
    /// clients the host must survive.
    pub session_window: u64,
    /// Server only (a client opens its streams; in a client config the key warns and does
    /// nothing): most streams open at once in one session. Default 16,384, range 1..=1,000,000.
    ///
    /// Memory: a few hundred bytes of state per stream plus its buffers (bounded by the
    /// windows above). DoS cost: on the server every stream is an outbound TCP connection to a
    /// service, so this is also the number of sockets and file descriptors one client can make
    /// the server open; keep `max_streams × clients` under the process's descriptor limit.
    /// Streams over the limit are refused with `RESET` code 3 (too many streams).
    pub max_streams: u32,
    /// Memory cap of the whole daemon for buffered stream bytes, over all sessions. Default
    /// 1 GiB, range 8 MiB..=1 TiB, and at least twice `stream_window`.
    ///
    /// Half of it bounds what the daemon receives: credit granted to peers beyond a stream's
    /// first 2 MiB is reserved before it is granted, and what streams hold within that first
    /// credit (bytes and each segment's overhead) is counted as it arrives. Half bounds send
    /// buffers (written by applications, not yet acknowledged). When a half is used up,
    /// windows stop growing and applications' sockets stop being read (backpressure); on the
    /// server a stream whose data comes before its `OPEN` and does not fit is refused (`RESET`
    /// code 5). The receive half can be exceeded only by what open streams hold within their
    /// initial credit (2 MiB) unread, at most `session_window` per session.
    pub memory: u64,
    /// Server only: sessions held at once, over all clients (with a link, or within their
    /// grace period). Default 1,024, range 1..=1,000,000. A link that would start one more is
    /// closed after its handshake. Memory: each session may buffer up to `session_window`.
    pub max_sessions: u32,
    /// Server only: sessions held at once under one client key. Default 8, range
    /// 1..=1,000,000. A client that restarts starts a new session while its old one waits out
    /// its grace period, so this is more than one. In PSK-only mode there are no client keys:
    /// only `max_sessions` applies.
    pub max_sessions_per_client: u32,
    /// Server only: links one session may have at once. Default 300 (a client keeps at most
    /// 256 per node, plus its lanes and replacements for links not yet found dead), range
    /// 1..=100,000. A link beyond it is closed after its handshake.
    pub max_links_per_session: u32,
    /// Server only: new handshakes a second from one source (an IPv4 address, an IPv6 /64),
    /// in bursts of up to four seconds' worth; a connection beyond it is closed before the
    /// node does any cryptography for it. Default 64, range 1..=1,000,000. Each handshake
    /// costs the node two Diffie-Hellman operations before it knows whether the client is
    /// allowed, so this bounds what one source can make it spend.
    pub handshake_rate: u32,
}

impl Limits {
    /// The keys of `[limits]` whose values differ in `other` (`limits.stream_window`, ...), for
    /// a reload to name what it keeps until a restart.
    pub fn changed_keys(&self, other: &Limits) -> Vec<&'static str> {
        // Every field by name: a new one does not compile until it is listed here.
        let Limits {
            stream_window,
            session_window,
            max_streams,
            memory,
            max_sessions,
            max_sessions_per_client,
            max_links_per_session,
            handshake_rate,
        } = *self;
        [
            ("limits.stream_window", stream_window != other.stream_window),
            (
                "limits.session_window",
                session_window != other.session_window,
            ),
            ("limits.max_streams", max_streams != other.max_streams),
            ("limits.memory", memory != other.memory),
            ("limits.max_sessions", max_sessions != other.max_sessions),
            (
                "limits.max_sessions_per_client",
                max_sessions_per_client != other.max_sessions_per_client,
            ),
            (
                "limits.max_links_per_session",
                max_links_per_session != other.max_links_per_session,
            ),
            (
                "limits.handshake_rate",
                handshake_rate != other.handshake_rate,
            ),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }

    /// Default `stream_window`: 64 MiB (at most half of `memory`). A stream striped over
    /// paths of unequal delay needs credit for what the slowest path (and its retransmissions)
    /// still has in flight while the fast paths go on: in the WAN lab's cluster scenario H
    /// (100 + 60 + 40 Mbit/s at 40, 120 and 200 ms RTT, 0.5-2% loss) one connection moved 134
    /// Mbit/s with 16 MiB and 178 with 64 MiB (bench/RESULTS.md, cluster). Windows grow only as
    /// far as a stream needs, so idle and slow streams do not cost more.
    pub const DEFAULT_STREAM_WINDOW: u64 = 64 << 20;
    /// Default `session_window`: 128 MiB (at least `stream_window`).
    pub const DEFAULT_SESSION_WINDOW: u64 = 128 << 20;
    /// Default `max_streams`: 16,384.
    pub const DEFAULT_MAX_STREAMS: u32 = 16_384;
    /// Allowed `stream_window` values: 16 KiB..=1 GiB.
    pub const STREAM_WINDOW_RANGE: RangeInclusive<u64> = (16 << 10)..=(1 << 30);
    /// Allowed `session_window` values: 16 KiB..=4 GiB, and never less than `stream_window`.
    pub const SESSION_WINDOW_RANGE: RangeInclusive<u64> = (16 << 10)..=(4 << 30);
    /// Allowed `max_streams` values: 1..=1,000,000.
    pub const MAX_STREAMS_RANGE: RangeInclusive<u32> = 1..=1_000_000;
    /// Default `memory`: 1 GiB.
    pub const DEFAULT_MEMORY: u64 = 1 << 30;
    /// Allowed `memory` values: 8 MiB..=1 TiB, and at least twice `stream_window`.
    pub const MEMORY_RANGE: RangeInclusive<u64> = (8 << 20)..=(1 << 40);
    /// Default `max_sessions`: 1,024.
    pub const DEFAULT_MAX_SESSIONS: u32 = 1024;
    /// Default `max_sessions_per_client`: 8.
    pub const DEFAULT_MAX_SESSIONS_PER_CLIENT: u32 = 8;
    /// Default `max_links_per_session`: 300.
    pub const DEFAULT_MAX_LINKS_PER_SESSION: u32 = 300;
    /// Allowed `max_sessions` and `max_sessions_per_client` values: 1..=1,000,000.
    pub const MAX_SESSIONS_RANGE: RangeInclusive<u32> = 1..=1_000_000;
    /// Allowed `max_links_per_session` values: 1..=100,000.
    pub const MAX_LINKS_RANGE: RangeInclusive<u32> = 1..=100_000;
    /// Default `handshake_rate`: 64 a second (a client dials its few links at once, and redials
    /// them backing off).
    pub const DEFAULT_HANDSHAKE_RATE: u32 = 64;
    /// Allowed `handshake_rate` values: 1..=1,000,000.
    pub const HANDSHAKE_RATE_RANGE: RangeInclusive<u32> = 1..=1_000_000;

    /// Checks the ranges and `session_window >= stream_window`. Returns each problem with the
    /// name of the field it is reported on.
    pub(crate) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(msg) = out_of_range(self.stream_window, &Self::STREAM_WINDOW_RANGE) {
            out.push(("stream_window", msg));
        }
        if let Some(msg) = out_of_range(self.session_window, &Self::SESSION_WINDOW_RANGE) {
            out.push(("session_window", msg));
        } else if Self::STREAM_WINDOW_RANGE.contains(&self.stream_window) {
            if let Some(msg) = self.window_order_problem() {
                out.push(("session_window", msg));
            }
        }
        if let Some(msg) = out_of_range(self.max_streams, &Self::MAX_STREAMS_RANGE) {
            out.push(("max_streams", msg));
        }
        for (field, v) in [
            ("max_sessions", self.max_sessions),
            ("max_sessions_per_client", self.max_sessions_per_client),
        ] {
            if let Some(msg) = out_of_range(v, &Self::MAX_SESSIONS_RANGE) {
                out.push((field, msg));
            }
        }
        if let Some(msg) = out_of_range(self.max_links_per_session, &Self::MAX_LINKS_RANGE) {
            out.push(("max_links_per_session", msg));
        }
        if let Some(msg) = out_of_range(self.handshake_rate, &Self::HANDSHAKE_RATE_RANGE) {
            out.push(("handshake_rate", msg));
        }
        if let Some(msg) = out_of_range(self.memory, &Self::MEMORY_RANGE) {
            out.push(("memory", msg));
        } else if Self::STREAM_WINDOW_RANGE.contains(&self.stream_window) {
            if let Some(msg) = self.memory_problem() {
                out.push(("memory", msg));
            }
        }
        out
    }

    /// The problem with `memory < 2 × stream_window`, if so.
    fn memory_problem(&self) -> Option<String> {
        (self.memory < self.stream_window.saturating_mul(2)).then(|| {
            format!(
                "{} is less than twice stream_window ({}); each half of the memory cap must \
                 hold at least one full stream window",
                self.memory, self.stream_window
            )
        })
    }

    /// The problem with `session_window < stream_window`, if so.
    fn window_order_problem(&self) -> Option<String> {
        (self.session_window < self.stream_window).then(|| {
            format!(
                "{} is less than stream_window ({}); the session window must hold at least one \
                 full stream window",
                self.session_window, self.stream_window
            )
        })
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            stream_window: Self::DEFAULT_STREAM_WINDOW,
            session_window: Self::DEFAULT_SESSION_WINDOW,
            max_streams: Self::DEFAULT_MAX_STREAMS,
            memory: Self::DEFAULT_MEMORY,
            max_sessions: Self::DEFAULT_MAX_SESSIONS,
            max_sessions_per_client: Self::DEFAULT_MAX_SESSIONS_PER_CLIENT,
            max_links_per_session: Self::DEFAULT_MAX_LINKS_PER_SESSION,
            handshake_rate: Self::DEFAULT_HANDSHAKE_RATE,
        }
    }
}

/// The limits one session's engine runs with. `memory` is not among them: it bounds the whole
/// daemon, so it becomes the [`Budget`](wanmux_core::budget::Budget) every session shares.
impl From<Limits> for wanmux_core::engine::Config {
    fn from(limits: Limits) -> Self {
        Self {
            stream_window: limits.stream_window,
            session_window: limits.session_window,
            // Lossless: `max_streams` is at most 1,000,000 and usize is at least 32 bits.
            max_streams: limits.max_streams as usize,
        }
    }
}

/// `[limits]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    stream_window: Option<Spanned<i64>>,
    session_window: Option<Spanned<i64>>,
    max_streams: Option<Spanned<i64>>,
    memory: Option<Spanned<i64>>,
    max_sessions: Option<Spanned<i64>>,
    max_sessions_per_client: Option<Spanned<i64>>,
    max_links_per_session: Option<Spanned<i64>>,
    handshake_rate: Option<Spanned<i64>>,
}

impl RawLimits {
    /// Client: warns of each key of `[limits]` that bounds only what a node accepts from its
    /// clients (streams they open, sessions, links), which a client config sets to no effect.
    pub(crate) fn warn_node_only(raw: Option<&Spanned<RawLimits>>, errs: &mut Collector<'_>) {
        let Some(raw) = raw else {
            return;
        };
        let raw = raw.get_ref();
        for (key, v) in [
            ("max_streams", &raw.max_streams),
            ("max_sessions", &raw.max_sessions),
            ("max_sessions_per_client", &raw.max_sessions_per_client),
            ("max_links_per_session", &raw.max_links_per_session),
            ("handshake_rate", &raw.handshake_rate),
        ] {
            if let Some(v) = v {
                errs.warn(
                    format!("limits.{key}"),
                    Some(v.span()),
                    "has no effect in a client config: it bounds what a node accepts from its \
                     clients (the streams they open, their sessions and links); set it in the \
                     node's [limits]",
                );
            }
        }
    }

    /// Converts `[limits]` (absent: all defaults), recording every problem.
    pub(crate) fn convert(raw: Option<&Spanned<RawLimits>>, errs: &mut Collector<'_>) -> Limits {
        let d = Limits::default();
        let Some(raw) = raw else {
            return d;
        };
        let raw = raw.get_ref();
        let stream_window = int_in(
            errs,
            "limits.stream_window",
            raw.stream_window.as_ref(),
            &Limits::STREAM_WINDOW_RANGE,
        );
        let session_window = int_in(
            errs,
            "limits.session_window",
            raw.session_window.as_ref(),
            &Limits::SESSION_WINDOW_RANGE,
        );
        let max_streams = int_in(
            errs,
            "limits.max_streams",
            raw.max_streams.as_ref(),
            &Limits::MAX_STREAMS_RANGE,
        );
        let memory = int_in(
            errs,
            "limits.memory",
            raw.memory.as_ref(),
            &Limits::MEMORY_RANGE,
        );
        let mut sessions = |key, v: Option<&Spanned<i64>>, d| {
            int_in(errs, key, v, &Limits::MAX_SESSIONS_RANGE)
                .flatten()
                .unwrap_or(d)
        };
        let max_sessions = sessions(
            "limits.max_sessions",
            raw.max_sessions.as_ref(),
            d.max_sessions,
        );
        let max_sessions_per_client = sessions(
            "limits.max_sessions_per_client",
            raw.max_sessions_per_client.as_ref(),
            d.max_sessions_per_client,
        );
        let max_links_per_session = int_in(
            errs,
            "limits.max_links_per_session",
            raw.max_links_per_session.as_ref(),
            &Limits::MAX_LINKS_RANGE,
        );
        let handshake_rate = int_in(
            errs,
            "limits.handshake_rate",
            raw.handshake_rate.as_ref(),
            &Limits::HANDSHAKE_RATE_RANGE,
        );
        let memory_value = memory.flatten().unwrap_or(d.memory);
        // Defaults that fit what is written: an unwritten stream window is at most half of
        // the memory cap, an unwritten session window at least the stream window.
        let stream_window_value = stream_window
            .flatten()
            .unwrap_or(d.stream_window.min(memory_value / 2));
        let session_window_value = session_window
            .flatten()
            .unwrap_or(d.session_window.max(stream_window_value));
        let limits = Limits {
            stream_window: stream_window_value,
            session_window: session_window_value,
            max_streams: max_streams.flatten().unwrap_or(d.max_streams),
            memory: memory_value,
            max_sessions,
            max_sessions_per_client,
            max_links_per_session: max_links_per_session
                .flatten()
                .unwrap_or(d.max_links_per_session),
            handshake_rate: handshake_rate.flatten().unwrap_or(d.handshake_rate),
        };
        // Cross-check only values that are in range on their own (absent ones took defaults that
        // fit what is written, so a problem names a written key).
        if let (Some(_), Some(_)) = (stream_window, session_window) {
            if let Some(msg) = limits.window_order_problem() {
                let written = raw.session_window.as_ref().or(raw.stream_window.as_ref());
                errs.push("limits.session_window", written.map(|v| v.span()), msg);
            }
        }
        if let (Some(_), Some(_)) = (stream_window, memory) {
            if let Some(msg) = limits.memory_problem() {
                let written = raw.memory.as_ref().or(raw.stream_window.as_ref());
                errs.push("limits.memory", written.map(|v| v.span()), msg);
            }
        }
        limits
    }
}

/// Converts an optional integer that must lie in `range`: `Some(None)` when absent,
/// `Some(Some(v))` when valid, `None` (error recorded) when out of range.
pub(crate) fn int_in<T>(
    errs: &mut Collector<'_>,
    key: &str,
    v: Option<&Spanned<i64>>,
    range: &RangeInclusive<T>,
) -> Option<Option<T>>
where
    T: TryFrom<i64> + PartialOrd + fmt::Display,
{
    let Some(v) = v else {
        return Some(None);
    };
    match T::try_from(*v.get_ref()) {
        Ok(x) if range.contains(&x) => Some(Some(x)),
        _ => {
            let msg = format!("{} is out of range {}", v.get_ref(), fmt_range(range));
            errs.push(key, Some(v.span()), msg);
            None
        }
    }
}

fn fmt_range<T: fmt::Display>(r: &RangeInclusive<T>) -> String {
    format!("{}..={}", r.start(), r.end())
}

fn out_of_range<T: PartialOrd + fmt::Display>(v: T, r: &RangeInclusive<T>) -> Option<String> {
    (!r.contains(&v)).then(|| format!("{v} is out of range {}", fmt_range(r)))
}

// ---------------------------------------------------------------------------------------------
// Helpers for the Raw layers
// ---------------------------------------------------------------------------------------------

/// Allowed `threads` values (`server.threads`, `client.threads`).
pub(crate) const THREADS_RANGE: RangeInclusive<usize> = 1..=1024;

/// Converts an optional `threads` (worker threads of the daemon's runtime), recording an
/// out-of-range value.
pub(crate) fn threads(
    errs: &mut Collector<'_>,
    key: &str,
    v: Option<&Spanned<i64>>,
) -> Option<std::num::NonZeroUsize> {
    int_in(errs, key, v, &THREADS_RANGE)
        .flatten()
        .and_then(std::num::NonZeroUsize::new)
}

/// Why a `threads` built in code is not one.
pub(crate) fn threads_problem(threads: Option<std::num::NonZeroUsize>) -> Option<String> {
    threads.and_then(|t| out_of_range(t.get(), &THREADS_RANGE))
}

/// Allowed `handshake_timeout_ms` and `connect_timeout_ms` values: 100 ms..=10 min.
pub(crate) const TIMEOUT_MS_RANGE: RangeInclusive<i64> = 100..=600_000;

/// Converts an optional millisecond timeout, recording an out-of-range value.
pub(crate) fn timeout_ms(
    errs: &mut Collector<'_>,
    key: &str,
    value: Option<&Spanned<i64>>,
    default: Duration,
) -> Duration {
    ms_in(errs, key, value, default, &TIMEOUT_MS_RANGE)
}

/// Converts an optional millisecond wait that may be zero (0..=60000), recording one out of range.
pub(crate) fn wait_ms(
    errs: &mut Collector<'_>,
    key: &str,
    value: Option<&Spanned<i64>>,
    default: Duration,
) -> Duration {
    ms_in(errs, key, value, default, &WAIT_MS_RANGE)
}

/// Converts an optional number of milliseconds in `range`, recording one out of it.
fn ms_in(
    errs: &mut Collector<'_>,
    key: &str,
    value: Option<&Spanned<i64>>,
    default: Duration,
    range: &RangeInclusive<i64>,
) -> Duration {
    match value {
        None => default,
        Some(v) => match out_of_range(*v.get_ref(), range) {
            None => Duration::from_millis(*v.get_ref() as u64),
            Some(msg) => {
                errs.push(key, Some(v.span()), format!("{msg} (milliseconds)"));
                default
            }
        },
    }
}

/// Range of a millisecond wait that may be zero.
pub(crate) const WAIT_MS_RANGE: RangeInclusive<i64> = 0..=60_000;

/// Checks a millisecond wait of a code-built config.
pub(crate) fn wait_problem(d: Duration) -> Option<String> {
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    out_of_range(ms, &WAIT_MS_RANGE).map(|m| format!("{m} (milliseconds)"))
}

/// Checks a millisecond timeout of a code-built config.
pub(crate) fn timeout_problem(d: Duration) -> Option<String> {
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    out_of_range(ms, &TIMEOUT_MS_RANGE).map(|m| format!("{m} (milliseconds)"))
}

/// Converts a node id (1..=65535).
pub(crate) fn node_id(errs: &mut Collector<'_>, key: &str, v: &Spanned<i64>) -> Option<NonZeroU16> {
    let id = u16::try_from(*v.get_ref()).ok().and_then(NonZeroU16::new);
    if id.is_none() {
        errs.push(
            key,
            Some(v.span()),
            format!("{} is out of range 1..=65535", v.get_ref()),
        );
    }
    id
}

/// `[metrics]` as written (both daemons).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    listen: Option<Spanned<String>>,
}

impl RawMetrics {
    /// The metrics endpoint's address: `None` without `[metrics]`; `[metrics]` needs `listen`.
    pub(crate) fn convert(
        raw: Option<&Spanned<RawMetrics>>,
        errs: &mut Collector<'_>,
    ) -> Option<SocketAddr> {
        let raw = raw?;
        match &raw.get_ref().listen {
            Some(v) => socket_addr(errs, "metrics.listen", v),
            None => {
                errs.push(
                    "metrics.listen",
                    Some(raw.span()),
                    "missing: [metrics] needs listen = \"IP:PORT\" (or leave [metrics] out)",
                );
                None
            }
        }
    }
}

/// `[control]` as written (both daemons).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawControl {
    socket: Option<Spanned<String>>,
}

impl RawControl {
    /// The control socket's path, relative ones resolved against the config's directory:
    /// `None` without `[control]`; `[control]` needs `socket`.
    pub(crate) fn convert(
        raw: Option<&Spanned<RawControl>>,
        errs: &mut Collector<'_>,
        base_dir: &std::path::Path,
    ) -> Option<std::path::PathBuf> {
        let raw = raw?;
        match &raw.get_ref().socket {
            Some(v) if v.get_ref().is_empty() => {
                errs.push("control.socket", Some(v.span()), "empty path");
                None
            }
            Some(v) => Some(crate::secret::resolve(base_dir, v.get_ref())),
            None => {
                errs.push(
                    "control.socket",
                    Some(raw.span()),
                    "missing: [control] needs socket = \"PATH\" (or leave [control] out)",
                );
                None
            }
        }
    }
}

/// The control socket a config file names (`[control] socket`, resolved as loading resolves
/// it), read from any file that is TOML, whether the rest of it loads or not: `status --config
/// FILE` must still find the daemon that refused a reload of FILE (it runs on the last config
/// that loaded). `None` if the file cannot be read, is not TOML, or names no socket.
pub fn control_socket_in(path: &std::path::Path) -> Option<std::path::PathBuf> {
    #[derive(Deserialize)]
    struct Loose {
        control: Option<LooseControl>,
    }
    #[derive(Deserialize)]
    struct LooseControl {
        socket: Option<String>,
    }
    let (text, base_dir, _) = crate::server::read_config(path).ok()?;
    let socket = toml::from_str::<Loose>(&text).ok()?.control?.socket?;
    (!socket.is_empty()).then(|| crate::secret::resolve(&base_dir, &socket))
}

/// Parses a socket address (`IP:PORT`, IPv6 in brackets; no host names).
pub(crate) fn socket_addr(
    errs: &mut Collector<'_>,
    key: &str,
    v: &Spanned<String>,
) -> Option<SocketAddr> {
    let text = v.get_ref();
    let parsed = text.parse::<SocketAddr>();
    if parsed.is_err() {
        // `::1:4480`: an IPv6 address and a port, the brackets forgotten.
        let hint = match text.rsplit_once(':') {
            Some((ip, _)) if !text.starts_with('[') && ip.parse::<std::net::Ipv6Addr>().is_ok() => {
                format!("; an IPv6 address goes in brackets: \"[{ip}]:PORT\"")
            }
            _ => String::new(),
        };
        errs.push(
            key,
            Some(v.span()),
            format!(
                "invalid socket address {text:?}: expected IP:PORT such as \"0.0.0.0:4480\" or \
                 \"[::]:4480\" (host names are not allowed here){hint}"
            ),
        );
    }
    parsed.ok()
}

/// Whether two listen addresses cannot both be bound: the same port (not 0) and the same IP,
/// or a wildcard (`0.0.0.0`, `[::]`) of a family that covers the other address (`[::]` covers
/// IPv4 too on a dual-stack socket).
pub(crate) fn listens_overlap(a: &SocketAddr, b: &SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let covers = |w: &SocketAddr, o: &SocketAddr| {
        w.ip().is_unspecified() && (w.is_ipv6() || w.is_ipv4() == o.is_ipv4())
    };
    a.ip() == b.ip() || covers(a, b) || covers(b, a)
}

/// Parses a `host:port`.
pub(crate) fn host_port(
    errs: &mut Collector<'_>,
    key: &str,
    v: &Spanned<String>,
) -> Option<HostPort> {
    v.get_ref()
        .parse::<HostPort>()
        .map_err(|e| errs.push(key, Some(v.span()), e.to_string()))
        .ok()
}

/// Parses a service name.
pub(crate) fn service_name(
    errs: &mut Collector<'_>,
    key: &str,
    v: &Spanned<String>,
) -> Option<ServiceName> {
    ServiceName::new(v.get_ref())
        .map_err(|e| errs.push(key, Some(v.span()), e.to_string()))
        .ok()
}

/// Records `key: missing required key` at the enclosing table, and returns `None`.
pub(crate) fn require<'v, T>(
    errs: &mut Collector<'_>,
    key: &str,
    value: Option<&'v T>,
    table: &std::ops::Range<usize>,
    what: &str,
) -> Option<&'v T> {
    if value.is_none() {
        errs.push(
            key,
            Some(table.clone()),
            format!("missing required key ({what})"),
        );
    }
    value
}

/// Finds repeated values. For each item after the first with an equal key, calls `report` with
/// the item's index and the index of the first one.
pub(crate) fn duplicates<K: Eq + std::hash::Hash>(
    keys: impl IntoIterator<Item = (usize, K)>,
    mut report: impl FnMut(usize, usize),
) {
    let mut seen = std::collections::HashMap::new();
    for (i, k) in keys {
        match seen.get(&k) {
            Some(&first) => report(i, first),
            None => {
                seen.insert(k, i);
            }
        }
    }
}

/// Why a congestion control name cannot be one: the kernel's names are short lowercase words.
pub(crate) fn congestion_problem(name: &str) -> Option<String> {
    let ok = (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    (!ok).then(|| format!("{name:?} is not a congestion control name (like \"bbr\" or \"cubic\")"))
}

/// Converts an optional congestion control name.
pub(crate) fn congestion(
    errs: &mut Collector<'_>,
    key: &str,
    v: Option<&Spanned<String>>,
) -> Option<String> {
    let v = v?;
    match congestion_problem(v.get_ref()) {
        None => Some(v.get_ref().clone()),
        Some(m) => {
            errs.push(key, Some(v.span()), m);
            None
        }
    }
}
