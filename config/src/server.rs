//! `wanmux-server` config: the node's listen address, identity, who may connect, and the
//! services it may dial. See `docs/CONFIG.md` for the file format.

use crate::common::{self, HostPort, Limits, RawControl, RawLimits, RawMetrics, ServiceName};
use crate::error::{Collector, ConfigError, ConfigErrors};
use crate::locate;
use crate::secret::{key_error_message, KeySource, Loaded};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;
use wanmux_core::keys::{PrivateKey, Psk, PublicKey};

/// A validated `wanmux-server` config.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address the node accepts client links on (`server.listen`).
    pub listen: SocketAddr,
    /// This node's id, 1..=65535, unique in the cluster (`server.node_id`). It is the owner id
    /// in the high bits of the stream ids this node owns.
    pub node_id: NonZeroU16,
    /// Who may connect, and how (the Noise pattern follows from the variant).
    pub auth: ServerAuth,
    /// Time a client has to complete the handshake, key confirmation included
    /// (`server.handshake_timeout_ms`, default 10 s).
    pub handshake_timeout: Duration,
    /// Time a session with no link is kept for its client to come back; after it the session's
    /// streams are reset and its memory freed (`server.session_grace_ms`, default 30 s).
    pub session_grace: Duration,
    /// On SIGTERM or SIGINT the server stops taking new streams (they are reset with code 4), waits this long for open streams to
    /// finish, then closes what is left (`server.drain_timeout_ms`, default 30 s).
    pub drain_timeout: Duration,
    /// What loading found worth a warning but not an error (a key file others may read), each
    /// as one `FILE:LINE: KEY: MESSAGE` line: `check` prints them, `run` logs them.
    pub warnings: Vec<String>,
    /// Time allowed for dialling a service before the stream is reset with code 2
    /// (`server.connect_timeout_ms`, default 5 s).
    pub connect_timeout: Duration,
    /// Per-session limits (`[limits]`).
    pub limits: Limits,
    /// TCP congestion control for this end's links (`server.congestion`), e.g. `bbr` or `cubic`; `None`
    /// (unset) means `bbr` where the kernel has it, else the system default with a warning at
    /// start, and `"system"` keeps the system default. On a lossy long path a loss-based algorithm (cubic) collapses
    /// while `bbr` keeps its rate. A name the kernel does not have is logged and ignored. It
    /// applies to TCP links only: QUIC links always use wanmux's own controller (`pace`).
    pub congestion: Option<String>,
    /// Also accept QUIC links, on UDP at the same address and port as `listen`
    /// (`server.quic`, default true: it costs one UDP socket, and QUIC is the clients' default
    /// transport). TCP links are accepted either way.
    pub quic: bool,
    /// Worker threads of the daemon's runtime (`server.threads`); `None` (the default): one per
    /// CPU the process may use, or one on one or two CPUs. Fixed at start: a reload keeps the
    /// running value.
    pub threads: Option<std::num::NonZeroUsize>,
    /// The services clients may open, by name (`[[service]]`). Non-empty, names unique. The
    /// server connects to nothing else.
    pub services: Vec<Service>,
    /// Where the Prometheus metrics endpoint listens (`metrics.listen`); none by default.
    pub metrics_listen: Option<SocketAddr>,
    /// The control socket that `status` asks (`control.socket`). Without it the library opens
    /// none; the daemon binary then uses its default under `/run/wanmux/`.
    pub control_socket: Option<std::path::PathBuf>,
    /// The node's peers and its listener for peer links (`[cluster]` and `[[peer]]`); `None`
    /// for a node on its own, which then behaves exactly as without cluster support.
    pub cluster: Option<Cluster>,
    /// PKI mode on QUIC links (`[tls]`): the node's certificate chain and the clients' CA;
    /// `None` without `[tls]`. Key-mode clients are served beside PKI-mode ones.
    pub tls: Option<ServerTls>,
}

/// A node's PKI mode (`[tls]`, and the `sha256:` entries of `server.allowed_clients`).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The node's chain and key, the clients' CA and the revocation lists, read and checked.
    pub files: wanmux_core::tls::CertFiles,
    /// The client certificates taken, by the SHA-256 of their SubjectPublicKeyInfo (the
    /// `sha256:` entries of `server.allowed_clients`); empty: every certificate the CA issued
    /// that is not revoked.
    pub allowed_certs: BTreeSet<PublicKey>,
}

/// `[cluster]` with its `[[peer]]` list: the other nodes of the cluster, which this node keeps
/// one authenticated peer link to each (`docs/PROTOCOL.md`, "Peer links").
///
/// Peer links use the node's static key (`server.private_key`), so a cluster needs static-key
/// mode; `validate` and the TOML path check that, and every rule on the peers.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Address peer links are accepted on, and nothing else (`cluster.listen`). Never the
    /// client listener: a client key cannot authenticate there, nor a peer key on `server.listen`.
    pub listen: SocketAddr,
    /// Optional PSK mixed into every peer handshake (`IKpsk2`; `cluster.psk` or
    /// `cluster.psk_file`). All nodes of a cluster need the same one.
    pub psk: Option<Psk>,
    /// The other nodes. Non-empty; ids, keys and addresses unique, none of them this node's.
    pub peers: Vec<Peer>,
    /// Bytes of relayed sections that may wait for one peer link (`cluster.relay_queue`,
    /// default 4 MiB, range 64 KiB..=1 GiB): while they do, the client links whose sections are
    /// for that peer are not read. Memory: up to this much per peer, beside `limits.memory`.
    pub relay_queue: u64,
}

impl Cluster {
    /// Default `relay_queue`: 4 MiB.
    pub const DEFAULT_RELAY_QUEUE: u64 = 4 << 20;
    /// Allowed `relay_queue` values: 64 KiB..=1 GiB.
    pub const RELAY_QUEUE_RANGE: std::ops::RangeInclusive<u64> = (64 << 10)..=(1 << 30);
}

/// Another node of the cluster (`[[peer]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its `server.node_id` (`peer[i].id`).
    pub id: NonZeroU16,
    /// Its `cluster.listen` as this node dials it (`peer[i].addr`); a host name is resolved on
    /// each dial.
    pub addr: HostPort,
    /// Its static public key (`peer[i].public_key`): pinned when this node dials it, and the
    /// only key accepted from it on the cluster listener.
    pub public_key: PublicKey,
}

/// How the server authenticates clients. Each variant holds exactly the keys its mode needs.
#[derive(Debug, Clone)]
pub enum ServerAuth {
    /// Static-key mode: the client pins this node's public key and the node accepts only the
    /// listed client keys. Noise `IK`, or `IKpsk2` when `psk` is set.
    StaticKey {
        /// This node's static private key.
        private_key: PrivateKey,
        /// Client public keys allowed to connect. Non-empty.
        allowed_clients: BTreeSet<PublicKey>,
        /// Optional PSK mixed in as well (`IKpsk2`).
        psk: Option<Psk>,
    },
    /// PSK-only mode: any peer holding the PSK may connect. Noise `NNpsk0`.
    PskOnly {
        /// The pre-shared key.
        psk: Psk,
    },
    /// PKI mode only (`[tls]` with no private key, PSK or client key): every client presents a
    /// certificate on a QUIC link; no Noise handshake is taken, so no TCP link either.
    PkiOnly,
}

/// What the node's Noise handshake accepts.
impl From<&ServerAuth> for wanmux_core::auth::ServerAuth {
    fn from(auth: &ServerAuth) -> Self {
        match auth {
            ServerAuth::StaticKey {
                private_key,
                allowed_clients,
                psk,
            } => Self {
                private_key: Some(private_key.clone()),
                allowed_clients: allowed_clients.iter().copied().collect(),
                psk: psk.clone(),
            },
            ServerAuth::PskOnly { psk } => Self {
                private_key: None,
                allowed_clients: Default::default(),
                psk: Some(psk.clone()),
            },
            ServerAuth::PkiOnly => Self {
                private_key: None,
                allowed_clients: Default::default(),
                psk: None,
            },
        }
    }
}

/// A service the server may connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The name clients ask for in `OPEN`.
    pub name: ServiceName,
    /// Where to connect; a host name is resolved on each connect.
    pub target: HostPort,
}

impl ServerConfig {
    /// Default `session_grace`: 30 s.
    pub const DEFAULT_SESSION_GRACE: Duration = Duration::from_secs(30);
    /// Default `drain_timeout`: 30 s.
    pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default `handshake_timeout`: 10 s.
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default `connect_timeout`: 5 s.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

    /// A config with default timeouts and limits. Check it with [`validate`](Self::validate)
    /// if its parts did not come from a trusted place.
    pub fn new(
        listen: SocketAddr,
        node_id: NonZeroU16,
        auth: ServerAuth,
        services: Vec<Service>,
    ) -> Self {
        Self {
            listen,
            node_id,
            auth,
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
            session_grace: Self::DEFAULT_SESSION_GRACE,
            drain_timeout: Self::DEFAULT_DRAIN_TIMEOUT,
            warnings: Vec::new(),
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            limits: Limits::default(),
            congestion: None,
            quic: true,
            threads: None,
            services,
            metrics_listen: None,
            control_socket: None,
            cluster: None,
            tls: None,
        }
    }

    /// Reads and validates the config file at `path`. Relative key file paths resolve against
    /// the file's directory.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigErrors> {
        let (text, base_dir, name) = read_config(path.as_ref())?;
        Self::parse(&text, &base_dir, &name)
    }

    /// Parses and validates config `text`. `base_dir` is where relative key file paths
    /// resolve; `source_name` names the file in error messages.
    pub fn parse(text: &str, base_dir: &Path, source_name: &str) -> Result<Self, ConfigErrors> {
        let raw: RawServerFile = toml::from_str(text)
            .map_err(|e| ConfigErrors::single(source_name, locate::toml_error(text, &e)))?;
        let mut errs = Collector::new(text);
        let config = raw.convert(&mut errs, base_dir);
        let warnings = errs.take_warnings(source_name);
        errs.finish(source_name, config)
            .map(|config| Self { warnings, ..config })
    }

    /// The service with this name.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name.as_str() == name)
    }

    /// Checks a config built in code against the rules the TOML path applies: non-empty unique
    /// services, timeouts and limits in range, a non-empty allow-list in static-key mode.
    /// Errors carry keys but no lines.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs = Collector::new("");
        if let ServerAuth::StaticKey {
            allowed_clients, ..
        } = &self.auth
        {
            if allowed_clients.is_empty() {
                errs.push(
                    "server.allowed_clients",
                    None,
                    "static-key mode needs at least one client key",
                );
            }
        }
        if matches!(self.auth, ServerAuth::PkiOnly) && self.tls.is_none() {
            errs.push("tls", None, "PKI-only mode needs [tls]");
        }
        if self.tls.is_some() && !self.quic {
            errs.push(
                "server.quic",
                None,
                "[tls] (PKI mode) runs on QUIC links: set server.quic = true or remove [tls]",
            );
        }
        if let Some(m) = common::timeout_problem(self.handshake_timeout) {
            errs.push("server.handshake_timeout_ms", None, m);
        }
        if let Some(m) = common::timeout_problem(self.session_grace) {
            errs.push("server.session_grace_ms", None, m);
        }
        if let Some(m) = self
            .congestion
            .as_deref()
            .and_then(common::congestion_problem)
        {
            errs.push("server.congestion", None, m);
        }
        if let Some(m) = common::timeout_problem(self.drain_timeout) {
            errs.push("server.drain_timeout_ms", None, m);
        }
        if let Some(m) = common::timeout_problem(self.connect_timeout) {
            errs.push("server.connect_timeout_ms", None, m);
        }
        if let Some(m) = common::threads_problem(self.threads) {
            errs.push("server.threads", None, m);
        }
        for (field, m) in self.limits.problems() {
            errs.push(format!("limits.{field}"), None, m);
        }
        if self.services.is_empty() {
            errs.push("service", None, "at least one [[service]] is required");
        }
        common::duplicates(
            self.services.iter().map(|s| &s.name).enumerate(),
            |i, first| {
                errs.push(
                    format!("service[{i}].name"),
                    None,
                    format!("duplicate service name (also service[{first}])"),
                )
            },
        );
        if let Some(cluster) = &self.cluster {
            let check = ClusterCheck {
                node_id: Some(self.node_id),
                listen: Some(self.listen),
                auth: Some(&self.auth),
                cluster_listen: Some(cluster.listen),
                relay_queue: Some(cluster.relay_queue),
                peers: cluster.peers.iter().enumerate().collect(),
                no_peers: cluster.peers.is_empty(),
            };
            check_cluster(&mut errs, &check, &ClusterSpans::default());
        }
        errs.finish("<config>", Some(()))
    }
}

/// Where the parts of `[cluster]` and `[[peer]]` were written, for the checks that compare them
/// with each other and with `[server]`. Empty for a config built in code (errors without lines).
#[derive(Default)]
struct ClusterSpans {
    table: Option<Range<usize>>,
    listen: Option<Range<usize>>,
    /// Per peer: `id`, `addr`, `public_key`.
    peers: Vec<[Option<Range<usize>>; 3]>,
}

impl ClusterSpans {
    fn peer(&self, i: usize, field: usize) -> Option<Range<usize>> {
        self.peers.get(i).and_then(|p| p[field].clone())
    }
}

/// The rules that relate `[cluster]` and `[[peer]]` to each other and to `[server]`: static-key
/// mode, at least one peer, no peer that is this node (id or key), no peer key that is also a
/// client's, no duplicate id, key or address, and a cluster listener that cannot be bound beside the client listener. Used by the
/// TOML path (with spans) and by [`ServerConfig::validate`] (without).
fn check_cluster(errs: &mut Collector<'_>, c: &ClusterCheck<'_>, spans: &ClusterSpans) {
    const ID: usize = 0;
    const ADDR: usize = 1;
    const KEY: usize = 2;
    let (own_key, clients) = match c.auth {
        None => (None, None),
        Some(ServerAuth::StaticKey {
            private_key,
            allowed_clients,
            ..
        }) => (Some(private_key.public_key()), Some(allowed_clients)),
        Some(ServerAuth::PskOnly { .. } | ServerAuth::PkiOnly) => {
            errs.push(
                "cluster",
                spans.table.clone(),
                "peer links authenticate with the node's static key: a cluster needs \
                 static-key mode (server.private_key and server.allowed_clients)",
            );
            (None, None)
        }
    };
    if let Some(q) = c
        .relay_queue
        .filter(|q| !Cluster::RELAY_QUEUE_RANGE.contains(q))
    {
        errs.push(
            "cluster.relay_queue",
            spans.table.clone(),
            format!(
                "{q} is out of range {}..={}",
                Cluster::RELAY_QUEUE_RANGE.start(),
                Cluster::RELAY_QUEUE_RANGE.end()
            ),
        );
    }
    if let (Some(cluster_listen), Some(listen)) = (c.cluster_listen, c.listen) {
        if common::listens_overlap(&cluster_listen, &listen) {
            errs.push(
                "cluster.listen",
                spans.listen.clone(),
                format!(
                    "{cluster_listen} cannot be bound beside server.listen {listen}: peer links \
                     need a listener of their own",
                ),
            );
        }
    }
    if c.no_peers {
        errs.push(
            "peer",
            spans.table.clone(),
            "[cluster] needs at least one [[peer]] (the other nodes), or remove [cluster]",
        );
    }
    for &(i, p) in &c.peers {
        if Some(p.id) == c.node_id {
            errs.push(
                format!("peer[{i}].id"),
                spans.peer(i, ID),
                format!("{} is this node's own server.node_id", p.id),
            );
        }
        if Some(p.public_key) == own_key {
            errs.push(
                format!("peer[{i}].public_key"),
                spans.peer(i, KEY),
                "this is the public key of this node's own server.private_key",
            );
        }
        if clients.is_some_and(|c| c.contains(&p.public_key)) {
            errs.push(
                format!("peer[{i}].public_key"),
                spans.peer(i, KEY),
                "this key is also in server.allowed_clients: a key belongs to a client or to a \
                 peer node, never to both",
            );
        }
    }
    let mut dup = |field: usize, name: &str, what: &str, first: usize, i: usize| {
        errs.push(
            format!("peer[{i}].{name}"),
            spans.peer(i, field),
            format!("duplicate peer {what} (also peer[{first}])"),
        )
    };
    let peers = &c.peers;
    common::duplicates(peers.iter().map(|&(i, p)| (i, p.id)), |i, first| {
        dup(ID, "id", "id", first, i)
    });
    common::duplicates(peers.iter().map(|&(i, p)| (i, &p.addr)), |i, first| {
        dup(ADDR, "addr", "address", first, i)
    });
    common::duplicates(peers.iter().map(|&(i, p)| (i, p.public_key)), |i, first| {
        dup(KEY, "public_key", "key", first, i)
    });
}

/// What [`check_cluster`] compares: the parts of `[server]` and `[cluster]` that converted. A
/// part that did not is `None` (its own error is recorded), so that every rule that can still
/// be checked is, and one run reports every mistake.
struct ClusterCheck<'a> {
    node_id: Option<NonZeroU16>,
    listen: Option<SocketAddr>,
    auth: Option<&'a ServerAuth>,
    cluster_listen: Option<SocketAddr>,
    relay_queue: Option<u64>,
    /// The peers that converted, each with its index among the `[[peer]]` tables.
    peers: Vec<(usize, &'a Peer)>,
    /// There is no `[[peer]]` table at all.
    no_peers: bool,
}

/// `[cluster]` and `[[peer]]` as far as they converted ([`convert_cluster`]).
struct ClusterParts {
    listen: Option<SocketAddr>,
    /// `None`: the PSK did not load.
    psk: Option<Option<Psk>>,
    /// Per `[[peer]]` table: `None` where it did not convert.
    peers: Vec<Option<Peer>>,
    relay_queue: Option<u64>,
}

impl ClusterParts {
    /// The cluster, if every part converted.
    fn complete(self) -> Option<Cluster> {
        Some(Cluster {
            listen: self.listen?,
            psk: self.psk?,
            peers: self.peers.into_iter().collect::<Option<Vec<_>>>()?,
            relay_queue: self.relay_queue?,
        })
    }
}

/// Reads a config file: its text, the directory relative key paths resolve against, and the
/// name to use in messages.
pub(crate) fn read_config(
    path: &Path,
) -> Result<(String, std::path::PathBuf, String), ConfigErrors> {
    let name = path.display().to_string();
    let text = wanmux_core::files::regular_file(path)
        .and_then(|()| std::fs::read_to_string(path))
        .map_err(|e| {
            ConfigErrors::single(
                &name,
                ConfigError {
                    key: String::new(),
                    line: None,
                    message: format!("cannot read config file: {e}"),
                },
            )
        })?;
    let base_dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    Ok((text, base_dir, name))
}

// ---------------------------------------------------------------------------------------------
// Raw layer
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerFile {
    server: Option<Spanned<RawServer>>,
    limits: Option<Spanned<RawLimits>>,
    service: Option<Vec<Spanned<RawService>>>,
    metrics: Option<Spanned<RawMetrics>>,
    control: Option<Spanned<RawControl>>,
    cluster: Option<Spanned<RawCluster>>,
    peer: Option<Vec<Spanned<RawPeer>>>,
    tls: Option<Spanned<crate::tls::RawNodeTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    listen: Option<Spanned<String>>,
    psk: Option<Spanned<String>>,
    psk_file: Option<Spanned<String>>,
    relay_queue: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    id: Option<Spanned<i64>>,
    addr: Option<Spanned<String>>,
    public_key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    node_id: Option<Spanned<i64>>,
    private_key: Option<Spanned<String>>,
    private_key_file: Option<Spanned<String>>,
    psk: Option<Spanned<String>>,
    psk_file: Option<Spanned<String>>,
    allowed_clients: Option<Spanned<Vec<Spanned<String>>>>,
    handshake_timeout_ms: Option<Spanned<i64>>,
    session_grace_ms: Option<Spanned<i64>>,
    drain_timeout_ms: Option<Spanned<i64>>,
    congestion: Option<Spanned<String>>,
    quic: Option<Spanned<bool>>,
    connect_timeout_ms: Option<Spanned<i64>>,
    threads: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Option<Spanned<String>>,
    target: Option<Spanned<String>>,
}

impl RawServerFile {
    /// Converts every part, recording every problem; `Some` only if all parts converted.
    fn convert(self, errs: &mut Collector<'_>, base_dir: &Path) -> Option<ServerConfig> {
        let limits = RawLimits::convert(self.limits.as_ref(), errs);
        let services = convert_services(self.service.as_deref(), errs);
        let cluster = convert_cluster(
            self.cluster.as_ref(),
            self.peer.as_deref().unwrap_or_default(),
            errs,
            base_dir,
        );
        let Some(server) = self.server else {
            errs.push("server", None, "missing required table [server]");
            return None;
        };
        let table = server.span();
        let s = server.get_ref();

        let listen = common::require(
            errs,
            "server.listen",
            s.listen.as_ref(),
            &table,
            "socket address",
        )
        .and_then(|v| common::socket_addr(errs, "server.listen", v));
        let node_id = common::require(
            errs,
            "server.node_id",
            s.node_id.as_ref(),
            &table,
            "1..=65535",
        )
        .and_then(|v| common::node_id(errs, "server.node_id", v));
        let handshake_timeout = common::timeout_ms(
            errs,
            "server.handshake_timeout_ms",
            s.handshake_timeout_ms.as_ref(),
            ServerConfig::DEFAULT_HANDSHAKE_TIMEOUT,
        );
        let session_grace = common::timeout_ms(
            errs,
            "server.session_grace_ms",
            s.session_grace_ms.as_ref(),
            ServerConfig::DEFAULT_SESSION_GRACE,
        );
        let drain_timeout = common::timeout_ms(
            errs,
            "server.drain_timeout_ms",
            s.drain_timeout_ms.as_ref(),
            ServerConfig::DEFAULT_DRAIN_TIMEOUT,
        );
        let connect_timeout = common::timeout_ms(
            errs,
            "server.connect_timeout_ms",
            s.connect_timeout_ms.as_ref(),
            ServerConfig::DEFAULT_CONNECT_TIMEOUT,
        );
        let congestion = common::congestion(errs, "server.congestion", s.congestion.as_ref());
        // A value that is not a boolean is a type error, reported by the parser with key and line.
        let quic = s.quic.as_ref().is_none_or(|v| *v.get_ref());
        let threads = common::threads(errs, "server.threads", s.threads.as_ref());
        let tls_files = self
            .tls
            .as_ref()
            .map(|t| crate::tls::RawNodeTls::convert(t, errs, base_dir));
        if let (Some(t), false) = (&self.tls, quic) {
            errs.push(
                "server.quic",
                s.quic.as_ref().map(|v| v.span()).or(Some(t.span())),
                "[tls] (PKI mode) runs on QUIC links: set server.quic = true or remove [tls]",
            );
        }
        let (auth, allowed_certs) = s.convert_auth(errs, base_dir, &table, self.tls.is_some());
        let tls = match tls_files {
            None => Some(None),
            Some(None) => None,
            Some(Some(files)) => Some(Some(ServerTls {
                files,
                allowed_certs: allowed_certs.clone()?,
            })),
        };

        let metrics_listen = RawMetrics::convert(self.metrics.as_ref(), errs);
        let control_socket = RawControl::convert(self.control.as_ref(), errs, base_dir);
        if let Ok(Some((parts, spans))) = &cluster {
            let check = ClusterCheck {
                node_id,
                listen,
                auth: auth.as_ref(),
                cluster_listen: parts.listen,
                relay_queue: parts.relay_queue,
                peers: parts
                    .peers
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| Some((i, p.as_ref()?)))
                    .collect(),
                no_peers: parts.peers.is_empty(),
            };
            check_cluster(errs, &check, spans);
        }
        let mut config = ServerConfig {
            warnings: Vec::new(),
            listen: listen?,
            node_id: node_id?,
            auth: auth?,
            handshake_timeout,
            session_grace,
            drain_timeout,
            connect_timeout,
            limits,
            congestion,
            quic,
            threads,
            services: services?,
            metrics_listen,
            control_socket,
            cluster: None,
            tls: tls?,
        };
        config.cluster = match cluster {
            Err(()) => return None,
            Ok(None) => None,
            Ok(Some((parts, _))) => Some(parts.complete()?),
        };
        Some(config)
    }
}

/// Converts `[cluster]` and `[[peer]]` as far as they go, recording what does not: `Ok(None)`
/// when neither is there, `Err` for peers without a `[cluster]`. The rules that compare parts
/// are [`check_cluster`]'s.
fn convert_cluster(
    raw: Option<&Spanned<RawCluster>>,
    raw_peers: &[Spanned<RawPeer>],
    errs: &mut Collector<'_>,
    base_dir: &Path,
) -> Result<Option<(ClusterParts, ClusterSpans)>, ()> {
    let Some(raw) = raw else {
        if let Some(first) = raw_peers.first() {
            errs.push(
                "cluster",
                Some(first.span()),
                "[[peer]] is set but [cluster] is missing: add [cluster] with listen (the \
                 address peer links are accepted on), or remove the peers",
            );
            return Err(());
        }
        return Ok(None);
    };
    let table = raw.span();
    let c = raw.get_ref();
    let listen = common::require(
        errs,
        "cluster.listen",
        c.listen.as_ref(),
        &table,
        "socket address",
    )
    .and_then(|v| common::socket_addr(errs, "cluster.listen", v));
    let relay_queue = common::int_in(
        errs,
        "cluster.relay_queue",
        c.relay_queue.as_ref(),
        &Cluster::RELAY_QUEUE_RANGE,
    );
    let psk: Loaded<Psk> = KeySource {
        prefix: "cluster",
        name: "psk",
        inline: c.psk.as_ref(),
        file: c.psk_file.as_ref(),
    }
    .load(errs, base_dir);
    let mut spans = ClusterSpans {
        table: Some(table),
        listen: c.listen.as_ref().map(|v| v.span()),
        peers: Vec::with_capacity(raw_peers.len()),
    };
    let mut peers = Vec::with_capacity(raw_peers.len());
    for (i, raw) in raw_peers.iter().enumerate() {
        let table = raw.span();
        let p = raw.get_ref();
        let id_key = format!("peer[{i}].id");
        let addr_key = format!("peer[{i}].addr");
        let pk_key = format!("peer[{i}].public_key");
        let id = common::require(errs, &id_key, p.id.as_ref(), &table, "node id, 1..=65535")
            .and_then(|v| common::node_id(errs, &id_key, v));
        let addr = common::require(errs, &addr_key, p.addr.as_ref(), &table, "host:port")
            .and_then(|v| common::host_port(errs, &addr_key, v));
        let public_key =
            common::require(errs, &pk_key, p.public_key.as_ref(), &table, "public key").and_then(
                |v| {
                    PublicKey::from_base64(v.get_ref())
                        .map_err(|e| errs.push(&pk_key, Some(v.span()), key_error_message(&e)))
                        .ok()
                },
            );
        spans.peers.push([
            p.id.as_ref().map(|v| v.span()),
            p.addr.as_ref().map(|v| v.span()),
            p.public_key.as_ref().map(|v| v.span()),
        ]);
        peers.push(match (id, addr, public_key) {
            (Some(id), Some(addr), Some(public_key)) => Some(Peer {
                id,
                addr,
                public_key,
            }),
            _ => None,
        });
    }
    let psk = match psk {
        Loaded::Absent => Some(None),
        Loaded::Failed => None,
        Loaded::Ok(psk) => Some(Some(psk)),
    };
    Ok(Some((
        ClusterParts {
            listen,
            psk,
            peers,
            relay_queue: relay_queue.map(|q| q.unwrap_or(Cluster::DEFAULT_RELAY_QUEUE)),
        },
        spans,
    )))
}

impl RawServer {
    /// Loads the keys and applies the mode rules: allowed client keys mean static-key mode
    /// (private key required, PSK optional); none mean PSK-only mode (PSK required), or with
    /// `tls` (a `[tls]` table) and neither key nor PSK, PKI mode only. Returns the mode and the
    /// `sha256:` entries (client certificates, which need `[tls]`).
    fn convert_auth(
        &self,
        errs: &mut Collector<'_>,
        base_dir: &Path,
        table: &std::ops::Range<usize>,
        tls: bool,
    ) -> (Option<ServerAuth>, Option<BTreeSet<PublicKey>>) {
        let certs = self.convert_certs(errs, tls);
        (self.convert_keys(errs, base_dir, table, tls), certs)
    }

    /// The `sha256:` entries of `allowed_clients`.
    fn convert_certs(&self, errs: &mut Collector<'_>, tls: bool) -> Option<BTreeSet<PublicKey>> {
        let raw = self
            .allowed_clients
            .as_ref()
            .map_or(&[][..], |v| v.get_ref().as_slice());
        let mut ok = true;
        let mut certs = BTreeSet::new();
        let mut parsed = Vec::new();
        for (i, c) in raw.iter().enumerate() {
            let Some(text) = c.get_ref().strip_prefix(wanmux_core::tls::SPKI_PREFIX) else {
                continue;
            };
            let key = format!("server.allowed_clients[{i}]");
            if !tls {
                errs.push(
                    &key,
                    Some(c.span()),
                    "a sha256: entry names a client certificate (PKI mode): it needs [tls] with client_ca_file",
                );
                ok = false;
            }
            match PublicKey::from_base64(text) {
                Ok(k) => {
                    parsed.push((i, k));
                    certs.insert(k);
                }
                Err(e) => {
                    errs.push(
                        &key,
                        Some(c.span()),
                        format!(
                            "{e} (expected sha256: and the base64 of the 32-byte SHA-256 of a certificate's public key, as `wanmux-server tls issue` prints it)"
                        ),
                    );
                    ok = false;
                }
            }
        }
        common::duplicates(parsed, |i, first| {
            errs.push(
                format!("server.allowed_clients[{i}]"),
                Some(raw[i].span()),
                format!("duplicate client certificate (also allowed_clients[{first}])"),
            );
            ok = false;
        });
        ok.then_some(certs)
    }

    /// The Noise modes' keys: see [`RawServer::convert_auth`].
    fn convert_keys(
        &self,
        errs: &mut Collector<'_>,
        base_dir: &Path,
        table: &std::ops::Range<usize>,
        tls: bool,
    ) -> Option<ServerAuth> {
        let private_key: Loaded<PrivateKey> = KeySource {
            prefix: "server",
            name: "private_key",
            inline: self.private_key.as_ref(),
            file: self.private_key_file.as_ref(),
        }
        .load(errs, base_dir);
        let psk: Loaded<Psk> = KeySource {
            prefix: "server",
            name: "psk",
            inline: self.psk.as_ref(),
            file: self.psk_file.as_ref(),
        }
        .load(errs, base_dir);

        let raw_clients = self
            .allowed_clients
            .as_ref()
            .map_or(&[][..], |v| v.get_ref().as_slice());
        let mut clients_ok = true;
        let mut clients = BTreeSet::new();
        let mut parsed = Vec::new();
        let mut keys = 0;
        for (i, c) in raw_clients.iter().enumerate() {
            if c.get_ref().starts_with(wanmux_core::tls::SPKI_PREFIX) {
                continue;
            }
            keys += 1;
            match PublicKey::from_base64(c.get_ref()) {
                Ok(k) => {
                    parsed.push((i, k));
                    clients.insert(k);
                }
                Err(e) => {
                    errs.push(
                        format!("server.allowed_clients[{i}]"),
                        Some(c.span()),
                        key_error_message(&e),
                    );
                    clients_ok = false;
                }
            }
        }
        common::duplicates(parsed, |i, first| {
            errs.push(
                format!("server.allowed_clients[{i}]"),
                Some(raw_clients[i].span()),
                format!("duplicate client key (also allowed_clients[{first}])"),
            );
            clients_ok = false;
        });

        if keys == 0 && tls && !private_key.is_present() && !psk.is_present() {
            return Some(ServerAuth::PkiOnly);
        }
        if keys == 0 {
            // PSK-only mode.
            if private_key.is_present() {
                let (key, span) = match (&self.private_key, &self.private_key_file) {
                    (Some(v), _) => ("server.private_key", v.span()),
                    (None, Some(v)) => ("server.private_key_file", v.span()),
                    (None, None) => ("server.private_key", table.clone()),
                };
                errs.push(
                    key,
                    Some(span),
                    "a private key is set but allowed_clients is empty: list the client public \
                     keys for static-key mode, or remove the private key for PSK-only mode",
                );
            }
            if !psk.is_present() {
                errs.push(
                    "server.psk",
                    Some(table.clone()),
                    "missing: with no allowed_clients the server runs in PSK-only mode, which \
                     needs psk or psk_file (or list allowed_clients and set a private key for \
                     static-key mode, or add [tls] for PKI mode)",
                );
            }
            match psk {
                Loaded::Ok(psk) if !private_key.is_present() => Some(ServerAuth::PskOnly { psk }),
                _ => None,
            }
        } else {
            if !private_key.is_present() {
                errs.push(
                    "server.private_key",
                    Some(table.clone()),
                    "missing: allowed_clients is set, so the server runs in static-key mode, \
                     which needs private_key or private_key_file",
                );
            }
            let psk = match psk {
                Loaded::Absent => None,
                Loaded::Failed => return None,
                Loaded::Ok(p) => Some(p),
            };
            match private_key {
                Loaded::Ok(private_key) if clients_ok => Some(ServerAuth::StaticKey {
                    private_key,
                    allowed_clients: clients,
                    psk,
                }),
                _ => None,
            }
        }
    }
}

fn convert_services(
    raw: Option<&[Spanned<RawService>]>,
    errs: &mut Collector<'_>,
) -> Option<Vec<Service>> {
    let raw = raw.unwrap_or_default();
    if raw.is_empty() {
        errs.push("service", None, "at least one [[service]] is required");
        return None;
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut names = Vec::new();
    for (i, svc) in raw.iter().enumerate() {
        let table = svc.span();
        let svc = svc.get_ref();
        let name_key = format!("service[{i}].name");
        let target_key = format!("service[{i}].target");
        let name = common::require(errs, &name_key, svc.name.as_ref(), &table, "service name")
            .and_then(|v| common::service_name(errs, &name_key, v));
        let target = common::require(errs, &target_key, svc.target.as_ref(), &table, "host:port")
            .and_then(|v| common::host_port(errs, &target_key, v));
        if let Some(n) = &name {
            names.push((i, n.clone()));
        }
        if let (Some(name), Some(target)) = (name, target) {
            out.push(Service { name, target });
        }
    }
    common::duplicates(names, |i, first| {
        let span = raw[i].get_ref().name.as_ref().map(|v| v.span());
        let first_line = raw[first]
            .get_ref()
            .name
            .as_ref()
            .map(|v| errs.line_of(v.span().start));
        let at = first_line.map_or(String::new(), |l| format!(", line {l}"));
        errs.push(
            format!("service[{i}].name"),
            span,
            format!("duplicate service name (first defined at service[{first}]{at})"),
        );
    });
    (out.len() == raw.len() && errs.is_clean()).then_some(out)
}
