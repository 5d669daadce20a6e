//! `wanmux-client` config: the server nodes to dial and how to authenticate to them, how many
//! links to keep, and the local ports mapped to services. See `docs/CONFIG.md`.

use crate::common::{self, HostPort, Limits, RawControl, RawLimits, RawMetrics, ServiceName};
use crate::error::{Collector, ConfigErrors};
use crate::locate;
use crate::secret::{key_error_message, KeySource, Loaded};
use crate::server::read_config;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;
use wanmux_core::keys::{PrivateKey, Psk, PublicKey};

/// A validated `wanmux-client` config.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server nodes and how to authenticate to them. The nodes live inside the mode
    /// because in static-key mode each one carries its pinned public key.
    pub auth: ClientAuth,
    /// Time a link has to complete its handshake (`client.handshake_timeout_ms`, default 10 s).
    pub handshake_timeout: Duration,
    /// Time the client keeps its session with no link; after it the connections the session
    /// carried are reset and a new session starts (`client.session_grace_ms`, default 25 s). Keep
    /// it below the servers' `session_grace_ms`, so the client never resumes a session a server
    /// already dropped.
    pub session_grace: Duration,
    /// On SIGTERM or SIGINT the client stops accepting connections on its mapped ports, waits this long for open streams to
    /// finish, then closes what is left (`client.drain_timeout_ms`, default 30 s).
    pub drain_timeout: Duration,
    /// An application connection that arrives while no node has a live link waits this long
    /// for one, then is refused with a reset (`client.no_link_hold_ms`, 0..=60000, default
    /// 3 s; 0 refuses at once).
    pub no_link_hold: Duration,
    /// Worker threads of the daemon's runtime (`client.threads`); `None` (the default): one per
    /// CPU the process may use, or one on one or two CPUs. Fixed at start: a reload keeps the
    /// running value.
    pub threads: Option<std::num::NonZeroUsize>,
    /// What loading found worth a warning but not an error (a key file others may read), each
    /// as one `FILE:LINE: KEY: MESSAGE` line: `check` prints them, `run` logs them.
    pub warnings: Vec<String>,
    /// How many links to keep per node (`[links]`).
    pub links: Links,
    /// Per-session limits (`[limits]`).
    pub limits: Limits,
    /// TCP congestion control for this end's links (`links.congestion`), e.g. `bbr` or `cubic`; `None`
    /// (unset) means `bbr` where the kernel has it, else the system default with a warning at
    /// start, and `"system"` keeps the system default. On a lossy long path a loss-based algorithm (cubic) collapses
    /// while `bbr` keeps its rate. A name the kernel does not have is logged and ignored. It
    /// applies to TCP links only: QUIC links always use wanmux's own controller (`pace`).
    pub congestion: Option<String>,
    /// What each link runs over (`links.transport`, default [`LinkTransport::Auto`]: QUIC, or
    /// TCP to a node that does not answer QUIC).
    pub transport: LinkTransport,
    /// Dedicated interactive lanes per node (`links.lanes`, 0..=2, default 2): links that carry
    /// only interactive data and control frames, never bulk, in both directions. On QUIC each
    /// is a lane stream beside one of the first this many connections' links; on TCP, and to a
    /// node that takes no lane stream, the first this many links are the lanes, but only when
    /// set ([`ClientConfig::lanes_set`]). With 0, lanes are reserved among the links only while
    /// interactive data flows. When set, fewer than `links.min`.
    pub lanes: u16,
    /// Whether `links.lanes` was set. Unset, the default lanes are lane streams on QUIC links
    /// and there are none of their own on TCP links (they would take links from bulk data).
    pub lanes_set: bool,
    /// Local ports and the service each one is forwarded to (`[[map]]`). Non-empty, listen
    /// addresses unique.
    pub maps: Vec<PortMap>,
    /// Which node owns each new stream (`cluster.owner`, default least loaded).
    pub owner: OwnerPolicy,
    /// Where the Prometheus metrics endpoint listens (`metrics.listen`); none by default.
    pub metrics_listen: Option<SocketAddr>,
    /// The control socket that `status` asks (`control.socket`). Without it the library opens
    /// none; the daemon binary then uses its default under `/run/wanmux/`.
    pub control_socket: Option<std::path::PathBuf>,
}

/// How the client picks the node that owns a new stream (`cluster.owner`). The owner holds the
/// stream's state and its connection to the service; it is chosen among the nodes the client has
/// a live link to (among all nodes when it has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OwnerPolicy {
    /// The node with the fewest open streams, then the fewest bytes in flight
    /// (`"least_loaded"`, the default).
    #[default]
    LeastLoaded,
    /// A node chosen by hashing the application client's IP address (`"hash"`): one address
    /// stays on one node while the set of live nodes is unchanged, and when a node goes, only
    /// the addresses it had move (rendezvous hashing).
    Hash,
    /// The first live node in config order (`"first"`): every service connection comes from
    /// one place, and tests are predictable.
    First,
}

impl OwnerPolicy {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerPolicy::LeastLoaded => "least_loaded",
            OwnerPolicy::Hash => "hash",
            OwnerPolicy::First => "first",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "least_loaded" => Some(OwnerPolicy::LeastLoaded),
            "hash" => Some(OwnerPolicy::Hash),
            "first" => Some(OwnerPolicy::First),
            _ => None,
        }
    }
}

impl fmt::Display for OwnerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the client authenticates, with the nodes it dials. Each variant holds exactly the keys
/// its mode needs; both hold at least one node, with unique ids.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// Static-key mode: the client has a static key and pins each node's public key. Noise
    /// `IK`, or `IKpsk2` when `psk` is set.
    StaticKey {
        /// The client's static private key (its public key must be in the servers'
        /// `allowed_clients`).
        private_key: PrivateKey,
        /// Optional PSK mixed in as well (`IKpsk2`).
        psk: Option<Psk>,
        /// The nodes, each with its pinned key.
        nodes: Vec<PinnedNode>,
    },
    /// PSK-only mode: no static keys, both ends hold the PSK. Noise `NNpsk0`.
    PskOnly {
        /// The pre-shared key.
        psk: Psk,
        /// The nodes.
        nodes: Vec<Node>,
    },
    /// PKI mode (`[tls]`; QUIC links only): the nodes' certificates are verified against the
    /// CA and each node's name, and the client presents its own certificate. No Noise.
    Pki {
        /// The client's chain and key, and the CA of the nodes' certificates, read and checked.
        files: wanmux_core::tls::CertFiles,
        /// The nodes, each with the name its certificate must carry.
        nodes: Vec<NamedNode>,
    },
}

/// A node with the name its certificate must carry (PKI mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedNode {
    /// The node.
    pub node: Node,
    /// `node[i].tls_name`, default the host of its first address.
    pub tls_name: String,
}

/// A server node to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The node's id (`node[i].id`, 1..=65535); the node reports it in handshake message 2.
    pub id: NonZeroU16,
    /// Where to dial (`node[i].addr`): one address, or several for a node reachable over more
    /// than one path (a host with two uplinks). Link `i` dials `addr[i % len]` first and moves to
    /// the next address when that one fails. A host name is resolved on each dial.
    pub addr: NodeAddrs,
}

/// The addresses of one node (`node[i].addr`), in the order written: never empty, and no address
/// twice (the config rejects duplicates, and [`ClientConfig::validate`] checks code-built ones).
///
/// Derefs to a slice. `From<HostPort>` and `From<SocketAddr>` make a single address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddrs(Vec<HostPort>);

impl NodeAddrs {
    /// The addresses, or `None` when `addrs` is empty.
    pub fn new(addrs: Vec<HostPort>) -> Option<Self> {
        (!addrs.is_empty()).then_some(Self(addrs))
    }

    /// The addresses as a slice (at least one).
    pub fn as_slice(&self) -> &[HostPort] {
        &self.0
    }
}

impl std::ops::Deref for NodeAddrs {
    type Target = [HostPort];
    fn deref(&self) -> &[HostPort] {
        &self.0
    }
}

impl From<HostPort> for NodeAddrs {
    fn from(addr: HostPort) -> Self {
        Self(vec![addr])
    }
}

/// One literal address; its port may be 0, as with [`HostPort`]'s `From<SocketAddr>`.
impl From<SocketAddr> for NodeAddrs {
    fn from(addr: SocketAddr) -> Self {
        Self(vec![addr.into()])
    }
}

/// A node with its pinned static public key (static-key mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedNode {
    /// The node.
    pub node: Node,
    /// The node's public key (`node[i].public_key`); a handshake with any other key fails.
    pub public_key: PublicKey,
}

/// The handshake parameters for one node, borrowed from a [`ClientAuth`].
#[derive(Debug, Clone, Copy)]
pub enum NodeHandshake<'a> {
    /// Noise `IK` (`psk` is `None`) or `IKpsk2`.
    StaticKey {
        /// The client's private key.
        local: &'a PrivateKey,
        /// The node's pinned public key.
        remote: &'a PublicKey,
        /// The PSK, if any.
        psk: Option<&'a Psk>,
    },
    /// Noise `NNpsk0`.
    PskOnly {
        /// The PSK.
        psk: &'a Psk,
    },
    /// PKI mode: TLS with certificates (the certificates are the client's QUIC endpoint's).
    Pki {
        /// The name the node's certificate must carry.
        server_name: &'a str,
    },
}

/// Link settings (`[links]`): how many links (M) the client keeps to each node.
///
/// The client opens `min` links at start. While every open link is busy (its writer has had
/// data to send for a while) and the session has more waiting, it opens another, up to `max`
/// (the "spawn max"); links above `min` that stay idle are closed again. `count = N` in the
/// file means `min = max = N`. Each link is one TCP or QUIC connection (see [`LinkTransport`])
/// with its own congestion window, so more links carry more of one stream over a lossy long
/// path, at the cost of one socket, one handshake and a few buffers each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Links {
    /// Links opened at start and always kept, 1..=256 (`links.min`, or `links.count`).
    pub min: u16,
    /// Most links per node, `min..=256` (`links.max`, or `links.count`).
    pub max: u16,
}

impl Links {
    /// Default link count: 4, fixed.
    pub const DEFAULT_COUNT: u16 = 4;
    /// Most links per node.
    pub const MAX_COUNT: u16 = 256;

    /// `n` links, never more or fewer.
    pub fn fixed(n: u16) -> Links {
        Links { min: n, max: n }
    }

    /// Start with `min`, grow to `max` under load.
    pub fn elastic(min: u16, max: u16) -> Links {
        Links { min, max }
    }
}

impl Default for Links {
    fn default() -> Self {
        Self::fixed(Self::DEFAULT_COUNT)
    }
}

/// What a link runs over (`links.transport`). The Noise handshake, authentication and frames
/// inside a link are the same either way; only the carrier differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkTransport {
    /// QUIC where the node answers it, else TCP (`"auto"`, the default). A node address whose
    /// QUIC handshake gets no answer within a few seconds while TCP to it works (UDP blocked on
    /// the way, or `server.quic = false` on the node) gets TCP links, with a warning naming
    /// why; QUIC is tried there again now and then. QUIC is the default because the WAN results
    /// (`bench/RESULTS.md`) were measured with it.
    #[default]
    Auto,
    /// One TCP connection per link (`"tcp"`), congestion control set by `links.congestion`.
    /// Best with many links where a middlebox limits each flow.
    Tcp,
    /// One QUIC connection (UDP, the node's address and port number) per link carrying one
    /// bidirectional stream (`"quic"`), with wanmux's own congestion controller `pace`, and no
    /// fallback. The node must set `server.quic = true` (the default). Best with 1 to 4 links
    /// on lossy long paths.
    Quic,
}

impl LinkTransport {
    /// The name as written in the config: `"auto"`, `"tcp"` or `"quic"`.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkTransport::Auto => "auto",
            LinkTransport::Tcp => "tcp",
            LinkTransport::Quic => "quic",
        }
    }

    /// The transport a config name stands for.
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "auto" => Some(LinkTransport::Auto),
            "tcp" => Some(LinkTransport::Tcp),
            "quic" => Some(LinkTransport::Quic),
            _ => None,
        }
    }

    /// Links may run over QUIC (`quic` or `auto`).
    pub fn may_use_quic(self) -> bool {
        self != LinkTransport::Tcp
    }

    /// Links may run over TCP (`tcp` or `auto`).
    pub fn may_use_tcp(self) -> bool {
        self != LinkTransport::Quic
    }
}

impl fmt::Display for LinkTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A local port forwarded to a service (`[[map]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMap {
    /// Local address to accept application connections on.
    pub listen: SocketAddr,
    /// The service (by name, as the server knows it) each connection is forwarded to. The
    /// client cannot check that the server has it; an unknown name makes the server reset the
    /// stream with code 1.
    pub service: ServiceName,
    /// How a stream's frames use the nodes (`map[N].spread`, default stripe).
    pub spread: Spread,
}

/// How the frames of a map's streams use the cluster's nodes (`[[map]] spread`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Spread {
    /// Over the links to every node (`"stripe"`, the default): a node that does not own the
    /// stream relays its frames to the owner over the cluster LAN, and the owner sends back
    /// through its peers too. One connection is not capped by one node's path.
    #[default]
    Stripe,
    /// On the owner's links only, in both directions (`"pin"`).
    Pin,
}

impl Spread {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Spread::Stripe => "stripe",
            Spread::Pin => "pin",
        }
    }
}

/// The Noise credentials for one node: what a link to it authenticates with.
impl From<NodeHandshake<'_>> for wanmux_core::auth::ClientAuth {
    fn from(hs: NodeHandshake<'_>) -> Self {
        match hs {
            NodeHandshake::StaticKey { local, remote, psk } => Self::Static {
                local: local.clone(),
                server: *remote,
                psk: psk.cloned(),
            },
            NodeHandshake::PskOnly { psk } => Self::Psk(psk.clone()),
            NodeHandshake::Pki { server_name } => Self::Pki {
                server_name: server_name.to_owned(),
            },
        }
    }
}

impl ClientAuth {
    /// The nodes, whatever the mode.
    pub fn nodes(&self) -> Box<dyn Iterator<Item = &Node> + '_> {
        match self {
            ClientAuth::StaticKey { nodes, .. } => Box::new(nodes.iter().map(|p| &p.node)),
            ClientAuth::PskOnly { nodes, .. } => Box::new(nodes.iter()),
            ClientAuth::Pki { nodes, .. } => Box::new(nodes.iter().map(|n| &n.node)),
        }
    }

    /// PKI mode's certificate files (`[tls]`), if the client runs in it.
    pub fn tls(&self) -> Option<&wanmux_core::tls::CertFiles> {
        match self {
            ClientAuth::Pki { files, .. } => Some(files),
            _ => None,
        }
    }

    /// Each node with the handshake parameters to use for it.
    pub fn handshakes(&self) -> Box<dyn Iterator<Item = (&Node, NodeHandshake<'_>)> + '_> {
        match self {
            ClientAuth::StaticKey {
                private_key,
                psk,
                nodes,
            } => Box::new(nodes.iter().map(move |p| {
                let hs = NodeHandshake::StaticKey {
                    local: private_key,
                    remote: &p.public_key,
                    psk: psk.as_ref(),
                };
                (&p.node, hs)
            })),
            ClientAuth::PskOnly { psk, nodes } => Box::new(
                nodes
                    .iter()
                    .map(move |n| (n, NodeHandshake::PskOnly { psk })),
            ),
            ClientAuth::Pki { nodes, .. } => Box::new(nodes.iter().map(|n| {
                let hs = NodeHandshake::Pki {
                    server_name: &n.tls_name,
                };
                (&n.node, hs)
            })),
        }
    }
}

impl ClientConfig {
    /// Default `session_grace`: 25 s.
    pub const DEFAULT_SESSION_GRACE: Duration = Duration::from_secs(25);
    /// Default `no_link_hold`: 3 s.
    pub const DEFAULT_NO_LINK_HOLD: Duration = Duration::from_secs(3);
    /// Default `drain_timeout`: 30 s.
    pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default `handshake_timeout`: 10 s.
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default `lanes`: 2, as lane streams on QUIC links (none on TCP links, see
    /// [`ClientConfig::lanes_set`]).
    pub const DEFAULT_LANES: u16 = 2;

    /// A config with the default timeout, link count and limits. Check it with
    /// [`validate`](Self::validate) if its parts did not come from a trusted place.
    pub fn new(auth: ClientAuth, maps: Vec<PortMap>) -> Self {
        Self {
            auth,
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
            session_grace: Self::DEFAULT_SESSION_GRACE,
            drain_timeout: Self::DEFAULT_DRAIN_TIMEOUT,
            no_link_hold: Self::DEFAULT_NO_LINK_HOLD,
            threads: None,
            warnings: Vec::new(),
            links: Links::default(),
            limits: Limits::default(),
            congestion: None,
            transport: LinkTransport::default(),
            lanes: Self::DEFAULT_LANES,
            lanes_set: false,
            maps,
            owner: OwnerPolicy::default(),
            metrics_listen: None,
            control_socket: None,
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
        let raw: RawClientFile = toml::from_str(text)
            .map_err(|e| ConfigErrors::single(source_name, locate::toml_error(text, &e)))?;
        let mut errs = Collector::new(text);
        let config = raw.convert(&mut errs, base_dir);
        let warnings = errs.take_warnings(source_name);
        errs.finish(source_name, config)
            .map(|config| Self { warnings, ..config })
    }

    /// The nodes, whatever the mode.
    pub fn nodes(&self) -> Box<dyn Iterator<Item = &Node> + '_> {
        self.auth.nodes()
    }

    /// Checks a config built in code against the rules the TOML path applies: at least one
    /// node with unique ids, each node address listed once in the whole config, link count,
    /// timeout and limits in range, at least one map with unique listen addresses. Errors carry
    /// keys but no lines.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs = Collector::new("");
        if let ClientAuth::Pki { nodes, .. } = &self.auth {
            if self.transport != LinkTransport::Quic {
                errs.push(
                    "links.transport",
                    None,
                    "PKI mode runs on QUIC links only: set it to quic",
                );
            }
            for (i, n) in nodes.iter().enumerate() {
                if let Err(m) = rustls_name(&n.tls_name) {
                    errs.push(format!("node[{i}].tls_name"), None, m);
                }
            }
        }
        if self.nodes().next().is_none() {
            errs.push("node", None, "at least one [[node]] is required");
        }
        common::duplicates(self.nodes().map(|n| n.id).enumerate(), |i, first| {
            errs.push(
                format!("node[{i}].id"),
                None,
                format!("duplicate node id (also node[{first}])"),
            );
        });
        let listed: Vec<(usize, String, &HostPort)> = self
            .nodes()
            .enumerate()
            .flat_map(|(i, n)| {
                let array = n.addr.len() > 1;
                n.addr
                    .iter()
                    .enumerate()
                    .map(move |(j, a)| (i, addr_key(i, j, array), a))
            })
            .collect();
        common::duplicates(
            listed.iter().map(|(_, _, a)| *a).enumerate(),
            |second, first| {
                let ((node, key, _), (first_node, first_key, _)) =
                    (&listed[second], &listed[first]);
                errs.push(
                    key,
                    None,
                    duplicate_addr_message(first_key, first_node == node),
                );
            },
        );
        if !(1..=Links::MAX_COUNT).contains(&self.links.min) {
            errs.push(
                "links.min",
                None,
                format!("{} is out of range 1..=256", self.links.min),
            );
        }
        if !(self.links.min..=Links::MAX_COUNT).contains(&self.links.max) {
            let msg = format!(
                "{} is out of range {}..=256 (links.min..=256)",
                self.links.max, self.links.min
            );
            errs.push("links.max", None, msg);
        }
        let min = if self.lanes_set {
            self.links.min
        } else {
            // The default's lanes are lane streams, beside links rather than instead of them.
            u16::MAX
        };
        if let Some(m) = lanes_problem(i64::from(self.lanes), min) {
            errs.push("links.lanes", None, m);
        }
        if let Some(m) = common::timeout_problem(self.handshake_timeout) {
            errs.push("client.handshake_timeout_ms", None, m);
        }
        if let Some(m) = common::timeout_problem(self.session_grace) {
            errs.push("client.session_grace_ms", None, m);
        }
        if let Some(m) = self
            .congestion
            .as_deref()
            .and_then(common::congestion_problem)
        {
            errs.push("links.congestion", None, m);
        }
        if let Some(m) = common::wait_problem(self.no_link_hold) {
            errs.push("client.no_link_hold_ms", None, m);
        }
        if let Some(m) = common::timeout_problem(self.drain_timeout) {
            errs.push("client.drain_timeout_ms", None, m);
        }
        if let Some(m) = common::threads_problem(self.threads) {
            errs.push("client.threads", None, m);
        }
        for (field, m) in self.limits.problems() {
            errs.push(format!("limits.{field}"), None, m);
        }
        if self.maps.is_empty() {
            errs.push("map", None, "at least one [[map]] is required");
        }
        let listens: Vec<_> = self.maps.iter().map(|m| m.listen).collect();
        for (i, first) in listen_conflicts(&listens) {
            errs.push(
                format!("map[{i}].listen"),
                None,
                format!("conflicts with map[{first}].listen {}", listens[first]),
            );
        }
        errs.finish("<config>", Some(()))
    }
}

/// Pairs `(i, first)` of listen addresses that cannot both be bound: equal addresses, or the
/// same port where one of them is a wildcard (`0.0.0.0`, `[::]`) of a family that covers the
/// other (`[::]` covers IPv4 too on a dual-stack socket). Port 0 never conflicts.
fn listen_conflicts(addrs: &[SocketAddr]) -> Vec<(usize, usize)> {
    let overlaps = |a: &SocketAddr, b: &SocketAddr| {
        if a.port() != b.port() || a.port() == 0 {
            return false;
        }
        let covers = |w: &SocketAddr, o: &SocketAddr| {
            w.ip().is_unspecified() && (w.is_ipv6() || w.is_ipv4() == o.is_ipv4())
        };
        a.ip() == b.ip() || covers(a, b) || covers(b, a)
    };
    let mut out = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        if let Some(first) = addrs[..i].iter().position(|b| overlaps(a, b)) {
            out.push((i, first));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Raw layer
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientFile {
    client: Option<Spanned<RawClient>>,
    node: Option<Vec<Spanned<RawNode>>>,
    links: Option<Spanned<RawLinks>>,
    limits: Option<Spanned<RawLimits>>,
    map: Option<Vec<Spanned<RawMap>>>,
    cluster: Option<Spanned<RawCluster>>,
    metrics: Option<Spanned<RawMetrics>>,
    control: Option<Spanned<RawControl>>,
    tls: Option<Spanned<crate::tls::RawClientTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    owner: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    private_key: Option<Spanned<String>>,
    private_key_file: Option<Spanned<String>>,
    psk: Option<Spanned<String>>,
    psk_file: Option<Spanned<String>>,
    handshake_timeout_ms: Option<Spanned<i64>>,
    session_grace_ms: Option<Spanned<i64>>,
    drain_timeout_ms: Option<Spanned<i64>>,
    no_link_hold_ms: Option<Spanned<i64>>,
    threads: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: Option<Spanned<i64>>,
    addr: Option<Spanned<RawAddrs>>,
    public_key: Option<Spanned<String>>,
    tls_name: Option<Spanned<String>>,
}

/// `node.addr` as written: one host:port string, or an array of them. A value of another type,
/// or an array element that is not a string, is a type error from the parser, which names the
/// key (`node[0].addr[1]`) and line like every parser error.
#[derive(Debug)]
enum RawAddrs {
    /// `addr = "host:port"`; its position is the span around it.
    One(String),
    /// `addr = ["host:port", ...]`.
    Many(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for RawAddrs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawAddrs;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a host:port string or an array of host:port strings")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawAddrs, E> {
                Ok(RawAddrs::One(v.to_owned()))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawAddrs, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<String>>()? {
                    items.push(item);
                }
                Ok(RawAddrs::Many(items))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLinks {
    congestion: Option<Spanned<String>>,
    transport: Option<Spanned<String>>,
    lanes: Option<Spanned<i64>>,
    count: Option<Spanned<i64>>,
    min: Option<Spanned<i64>>,
    max: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMap {
    listen: Option<Spanned<String>>,
    service: Option<Spanned<String>>,
    spread: Option<Spanned<String>>,
}

impl RawClientFile {
    /// Converts every part, recording every problem; `Some` only if all parts converted.
    fn convert(self, errs: &mut Collector<'_>, base_dir: &Path) -> Option<ClientConfig> {
        // `[client]` may be left out: a client with only inline settings elsewhere has nothing
        // to put there, and a missing PSK is then reported as such.
        let empty = RawClient::default();
        let (client, client_span) = match &self.client {
            Some(c) => (c.get_ref(), Some(c.span())),
            None => (&empty, None),
        };
        let handshake_timeout = common::timeout_ms(
            errs,
            "client.handshake_timeout_ms",
            client.handshake_timeout_ms.as_ref(),
            ClientConfig::DEFAULT_HANDSHAKE_TIMEOUT,
        );
        let session_grace = common::timeout_ms(
            errs,
            "client.session_grace_ms",
            client.session_grace_ms.as_ref(),
            ClientConfig::DEFAULT_SESSION_GRACE,
        );
        let no_link_hold = common::wait_ms(
            errs,
            "client.no_link_hold_ms",
            client.no_link_hold_ms.as_ref(),
            ClientConfig::DEFAULT_NO_LINK_HOLD,
        );
        let drain_timeout = common::timeout_ms(
            errs,
            "client.drain_timeout_ms",
            client.drain_timeout_ms.as_ref(),
            ClientConfig::DEFAULT_DRAIN_TIMEOUT,
        );
        let threads = common::threads(errs, "client.threads", client.threads.as_ref());
        let tls = self.tls.as_ref().map(|t| {
            (
                t.span(),
                crate::tls::RawClientTls::convert(t, errs, base_dir),
            )
        });
        let auth = convert_auth(
            client,
            client_span,
            self.node.as_deref().unwrap_or_default(),
            errs,
            base_dir,
            tls.as_ref()
                .map(|(span, files)| (span.clone(), files.clone())),
        );
        let links = convert_links(self.links.as_ref(), errs);
        let congestion = self.links.as_ref().and_then(|l| {
            common::congestion(errs, "links.congestion", l.get_ref().congestion.as_ref())
        });
        let raw_transport = self
            .links
            .as_ref()
            .and_then(|l| l.get_ref().transport.as_ref());
        let mut transport = convert_transport(errs, "links.transport", raw_transport);
        if let Some((span, _)) = &tls {
            // PKI mode has no Noise handshake, so no TCP links: QUIC, unless set otherwise.
            match (transport, raw_transport) {
                (Some(LinkTransport::Auto), None) => transport = Some(LinkTransport::Quic),
                (Some(LinkTransport::Quic), _) | (None, _) => {}
                (Some(_), v) => {
                    errs.push(
                        "links.transport",
                        v.map(|v| v.span()).or(Some(span.clone())),
                        "[tls] (PKI mode) runs on QUIC links only: set links.transport = \"quic\" \
                         (its default with [tls]) or remove [tls]",
                    );
                    transport = None;
                }
            }
        }
        let lanes = convert_lanes(
            errs,
            self.links.as_ref().and_then(|l| l.get_ref().lanes.as_ref()),
            links.map(|l| l.min),
        );
        let limits = RawLimits::convert(self.limits.as_ref(), errs);
        RawLimits::warn_node_only(self.limits.as_ref(), errs);
        let maps = convert_maps(self.map.as_deref().unwrap_or_default(), errs);
        let owner = convert_owner(
            errs,
            self.cluster
                .as_ref()
                .and_then(|c| c.get_ref().owner.as_ref()),
        );
        let metrics_listen = RawMetrics::convert(self.metrics.as_ref(), errs);
        let control_socket = RawControl::convert(self.control.as_ref(), errs, base_dir);
        Some(ClientConfig {
            warnings: Vec::new(),
            auth: auth?,
            handshake_timeout,
            session_grace,
            drain_timeout,
            no_link_hold,
            threads,
            links: links?,
            limits,
            congestion,
            transport: transport?,
            lanes: lanes?.unwrap_or(ClientConfig::DEFAULT_LANES),
            lanes_set: lanes?.is_some(),
            maps: maps?,
            owner: owner?,
            metrics_listen,
            control_socket,
        })
    }
}

/// Loads the keys, converts the nodes and applies the mode rules: a private key means
/// static-key mode (every node needs `public_key`); without one the client runs in PSK-only
/// mode (PSK required, nodes must not set `public_key`, which could not be checked).
fn convert_auth(
    client: &RawClient,
    client_span: Option<std::ops::Range<usize>>,
    raw_nodes: &[Spanned<RawNode>],
    errs: &mut Collector<'_>,
    base_dir: &Path,
    tls: Option<(std::ops::Range<usize>, Option<wanmux_core::tls::CertFiles>)>,
) -> Option<ClientAuth> {
    let private_key: Loaded<PrivateKey> = KeySource {
        prefix: "client",
        name: "private_key",
        inline: client.private_key.as_ref(),
        file: client.private_key_file.as_ref(),
    }
    .load(errs, base_dir);
    let psk: Loaded<Psk> = KeySource {
        prefix: "client",
        name: "psk",
        inline: client.psk.as_ref(),
        file: client.psk_file.as_ref(),
    }
    .load(errs, base_dir);
    let static_mode = private_key.is_present();
    let pki_mode = tls.is_some();
    if pki_mode && (static_mode || psk.is_present()) {
        let (key, span) = if static_mode {
            (
                "client.private_key",
                client
                    .private_key
                    .as_ref()
                    .or(client.private_key_file.as_ref()),
            )
        } else {
            (
                "client.psk",
                client.psk.as_ref().or(client.psk_file.as_ref()),
            )
        };
        errs.push(
            key,
            span.map(|v| v.span()).or(client_span.clone()),
            "[tls] (PKI mode) replaces the Noise keys on this client's links: remove this key, \
             or remove [tls] for key mode",
        );
    }
    if !static_mode && !psk.is_present() && !pki_mode {
        errs.push(
            "client.psk",
            client_span,
            "missing: without a private key the client runs in PSK-only mode, which needs psk \
             or psk_file (or set private_key or private_key_file for static-key mode, or add \
             [tls] for PKI mode)",
        );
    }

    if raw_nodes.is_empty() {
        errs.push("node", None, "at least one [[node]] is required");
    }
    let mut nodes = Vec::with_capacity(raw_nodes.len());
    let mut ok = true;
    let mut ids = Vec::new();
    // Every address that parsed, of every node, for the duplicate check.
    let mut listed = Vec::new();
    for (i, raw) in raw_nodes.iter().enumerate() {
        let table = raw.span();
        let n = raw.get_ref();
        let id_key = format!("node[{i}].id");
        let addr_key = format!("node[{i}].addr");
        let pk_key = format!("node[{i}].public_key");
        let id = common::require(errs, &id_key, n.id.as_ref(), &table, "node id, 1..=65535")
            .and_then(|v| common::node_id(errs, &id_key, v));
        let addr = common::require(
            errs,
            &addr_key,
            n.addr.as_ref(),
            &table,
            "host:port, or an array of them",
        )
        .and_then(|v| convert_addrs(errs, i, v, &mut listed));
        let tls_name = match (&n.tls_name, pki_mode) {
            (Some(v), true) => match rustls_name(v.get_ref()) {
                Ok(()) => Some(v.get_ref().clone()),
                Err(m) => {
                    errs.push(format!("node[{i}].tls_name"), Some(v.span()), m);
                    ok = false;
                    None
                }
            },
            (Some(v), false) => {
                errs.push(
                    format!("node[{i}].tls_name"),
                    Some(v.span()),
                    "tls_name is the name a node's certificate carries in PKI mode: add [tls], \
                     or remove this key",
                );
                ok = false;
                None
            }
            (None, _) => None,
        };
        let public_key = match (&n.public_key, static_mode) {
            (Some(v), true) => PublicKey::from_base64(v.get_ref())
                .map_err(|e| errs.push(&pk_key, Some(v.span()), key_error_message(&e)))
                .ok(),
            (None, true) => {
                errs.push(
                    &pk_key,
                    Some(table.clone()),
                    "missing: the client has a private key (static-key mode), so every node \
                     needs the server's public key",
                );
                None
            }
            (Some(v), false) => {
                let mode = if pki_mode {
                    "PKI mode"
                } else {
                    "PSK-only mode"
                };
                errs.push(
                    &pk_key,
                    Some(v.span()),
                    format!(
                        "the client has no private key ({mode}), where a server key cannot be \
                         checked: set client.private_key or client.private_key_file for \
                         static-key mode, or remove this key"
                    ),
                );
                None
            }
            (None, false) => None,
        };
        if let Some(id) = id {
            ids.push((i, id));
        }
        match (id, addr) {
            (Some(id), Some(addr)) => {
                let tls_name = tls_name.unwrap_or_else(|| match addr[0].host() {
                    crate::Host::Ip(ip) => ip.to_string(),
                    crate::Host::Name(name) => name.clone(),
                });
                nodes.push((Node { id, addr }, public_key, tls_name))
            }
            _ => ok = false,
        }
    }
    common::duplicates(ids, |i, first| {
        let span = raw_nodes[i].get_ref().id.as_ref().map(|v| v.span());
        errs.push(
            format!("node[{i}].id"),
            span,
            format!("duplicate node id (also node[{first}])"),
        );
        ok = false;
    });
    common::duplicates(
        listed.iter().map(|l| &l.addr).enumerate(),
        |second, first| {
            let (l, first) = (&listed[second], &listed[first]);
            let msg = duplicate_addr_message(&first.key, first.node == l.node);
            errs.push(&l.key, Some(l.span.clone()), msg);
            ok = false;
        },
    );
    if !ok || raw_nodes.is_empty() {
        return None;
    }

    if let Some((_, files)) = tls {
        let nodes = nodes
            .into_iter()
            .map(|(node, _, tls_name)| NamedNode { node, tls_name })
            .collect();
        return Some(ClientAuth::Pki {
            files: files?,
            nodes,
        });
    }
    let nodes: Vec<_> = nodes.into_iter().map(|(n, k, _)| (n, k)).collect();
    match (private_key, psk) {
        (Loaded::Ok(private_key), Loaded::Ok(psk)) => {
            pin(nodes).map(|nodes| ClientAuth::StaticKey {
                private_key,
                psk: Some(psk),
                nodes,
            })
        }
        (Loaded::Ok(private_key), Loaded::Absent) => {
            pin(nodes).map(|nodes| ClientAuth::StaticKey {
                private_key,
                psk: None,
                nodes,
            })
        }
        (Loaded::Absent, Loaded::Ok(psk)) => {
            // A node with a public_key in this mode has its error recorded already.
            let nodes = nodes.into_iter().map(|(n, _)| n).collect();
            Some(ClientAuth::PskOnly { psk, nodes })
        }
        _ => None,
    }
}

/// Whether `name` is a name (or IP address) a certificate can be checked against.
fn rustls_name(name: &str) -> Result<(), String> {
    wanmux_core::tls::check_server_name(name)
}

/// One address of a node as written, for the duplicate check.
struct ListedAddr {
    /// Index of the node.
    node: usize,
    /// `node[i].addr`, or `node[i].addr[j]` for an element of an array.
    key: String,
    addr: HostPort,
    span: std::ops::Range<usize>,
}

/// The key an address of node `node` is reported under: `node[0].addr` when it is written as a
/// single string (or, in a code-built config, when it is the node's only one), `node[0].addr[1]`
/// for an element of an array.
fn addr_key(node: usize, index: usize, array: bool) -> String {
    if array {
        format!("node[{node}].addr[{index}]")
    } else {
        format!("node[{node}].addr")
    }
}

/// The error for an address listed already under `first`: twice in one node, or in two nodes.
fn duplicate_addr_message(first: &str, same_node: bool) -> String {
    if same_node {
        format!("listed twice (also {first})")
    } else {
        format!("same address as {first}: an address belongs to one node, list each node once")
    }
}

/// Converts `node[node].addr`, recording every address that parses in `listed`.
fn convert_addrs(
    errs: &mut Collector<'_>,
    node: usize,
    raw: &Spanned<RawAddrs>,
    listed: &mut Vec<ListedAddr>,
) -> Option<NodeAddrs> {
    let items: Vec<(String, &str, std::ops::Range<usize>)> = match raw.get_ref() {
        RawAddrs::One(text) => vec![(addr_key(node, 0, false), text.as_str(), raw.span())],
        RawAddrs::Many(items) => items
            .iter()
            .enumerate()
            .map(|(j, v)| (addr_key(node, j, true), v.get_ref().as_str(), v.span()))
            .collect(),
    };
    if items.is_empty() {
        errs.push(
            format!("node[{node}].addr"),
            Some(raw.span()),
            "empty array: list at least one host:port",
        );
        return None;
    }
    let count = items.len();
    let mut addrs = Vec::with_capacity(count);
    for (key, text, span) in items {
        match text.parse::<HostPort>() {
            Ok(addr) => {
                listed.push(ListedAddr {
                    node,
                    key,
                    addr: addr.clone(),
                    span,
                });
                addrs.push(addr);
            }
            Err(e) => errs.push(key, Some(span), e.to_string()),
        }
    }
    // Only when every one parsed.
    NodeAddrs::new(addrs).filter(|a| a.len() == count)
}

/// Static-key mode nodes, when every one has its key.
fn pin(nodes: Vec<(Node, Option<PublicKey>)>) -> Option<Vec<PinnedNode>> {
    nodes
        .into_iter()
        .map(|(node, pk)| {
            Some(PinnedNode {
                node,
                public_key: pk?,
            })
        })
        .collect()
}

fn convert_links(raw: Option<&Spanned<RawLinks>>, errs: &mut Collector<'_>) -> Option<Links> {
    let Some(raw) = raw else {
        return Some(Links::default());
    };
    let r = raw.get_ref();
    let mut value = |key: &str, v: &Spanned<i64>, low: u16| match u16::try_from(*v.get_ref()) {
        Ok(c) if (low..=Links::MAX_COUNT).contains(&c) => Some(c),
        _ => {
            let msg = format!(
                "{} is out of range {low}..={}",
                v.get_ref(),
                Links::MAX_COUNT
            );
            errs.push(key, Some(v.span()), msg);
            None
        }
    };
    match (&r.count, &r.min, &r.max) {
        (Some(count), None, None) => value("links.count", count, 1).map(Links::fixed),
        (Some(count), _, _) => {
            let msg = "set either count (a fixed number of links) or min/max (elastic), not both";
            errs.push("links.count", Some(count.span()), msg);
            None
        }
        (None, None, None) => Some(Links::default()),
        (None, min, max) => {
            // Only max: start with one link. Only min: a fixed number.
            let min = match min {
                Some(v) => value("links.min", v, 1)?,
                None => 1,
            };
            let max = match max {
                Some(v) => value("links.max", v, min)?,
                None => min,
            };
            Some(Links::elastic(min, max))
        }
    }
}

/// Most dedicated lanes per node (`links.lanes`): each small interactive segment goes on two.
const MAX_LANES: u16 = 2;

/// What is wrong with `lanes` dedicated lanes out of `min` links, if anything.
fn lanes_problem(lanes: i64, min: u16) -> Option<String> {
    if !(0..=i64::from(MAX_LANES)).contains(&lanes) {
        Some(format!("{lanes} is out of range 0..={MAX_LANES}"))
    } else if lanes > 0 && lanes >= i64::from(min) {
        Some(format!(
            "{lanes} dedicated lanes leave no link for bulk data out of links.min = {min}"
        ))
    } else {
        None
    }
}

/// Converts `links.lanes` (absent: `Some(None)`, the default), recording a value out of range
/// or one that leaves no bulk link (`min`: links.min, when it converted).
fn convert_lanes(
    errs: &mut Collector<'_>,
    v: Option<&Spanned<i64>>,
    min: Option<u16>,
) -> Option<Option<u16>> {
    let Some(v) = v else {
        return Some(None);
    };
    if let Some(m) = lanes_problem(*v.get_ref(), min.unwrap_or(u16::MAX)) {
        errs.push("links.lanes", Some(v.span()), m);
        return None;
    }
    u16::try_from(*v.get_ref()).ok().map(Some)
}

/// Converts an optional link transport name (absent: auto), recording an unknown one.
fn convert_transport(
    errs: &mut Collector<'_>,
    key: &str,
    v: Option<&Spanned<String>>,
) -> Option<LinkTransport> {
    let Some(v) = v else {
        return Some(LinkTransport::default());
    };
    let t = LinkTransport::from_name(v.get_ref());
    if t.is_none() {
        let msg = format!(
            "{:?} is not a link transport (use \"auto\", \"tcp\" or \"quic\")",
            v.get_ref()
        );
        errs.push(key, Some(v.span()), msg);
    }
    t
}

/// Converts an optional `cluster.owner` (absent: least loaded), recording an unknown name.
fn convert_owner(errs: &mut Collector<'_>, v: Option<&Spanned<String>>) -> Option<OwnerPolicy> {
    let Some(v) = v else {
        return Some(OwnerPolicy::default());
    };
    let p = OwnerPolicy::from_name(v.get_ref());
    if p.is_none() {
        let msg = format!(
            "{:?} is not an owner policy (use \"least_loaded\", \"hash\" or \"first\")",
            v.get_ref()
        );
        errs.push("cluster.owner", Some(v.span()), msg);
    }
    p
}

fn convert_maps(raw: &[Spanned<RawMap>], errs: &mut Collector<'_>) -> Option<Vec<PortMap>> {
    if raw.is_empty() {
        errs.push("map", None, "at least one [[map]] is required");
        return None;
    }
    let mut out = Vec::with_capacity(raw.len());
    // Indices into `raw` of the maps whose listen address parsed, for the conflict check.
    let mut listens = Vec::new();
    for (i, m) in raw.iter().enumerate() {
        let table = m.span();
        let m = m.get_ref();
        let listen_key = format!("map[{i}].listen");
        let service_key = format!("map[{i}].service");
        let listen = common::require(
            errs,
            &listen_key,
            m.listen.as_ref(),
            &table,
            "socket address",
        )
        .and_then(|v| common::socket_addr(errs, &listen_key, v));
        let service = common::require(
            errs,
            &service_key,
            m.service.as_ref(),
            &table,
            "service name",
        )
        .and_then(|v| common::service_name(errs, &service_key, v));
        let spread = match m.spread.as_ref() {
            None => Some(Spread::default()),
            Some(v) => match v.get_ref().as_str() {
                "stripe" => Some(Spread::Stripe),
                "pin" => Some(Spread::Pin),
                other => {
                    errs.push(
                        format!("map[{i}].spread"),
                        Some(v.span()),
                        format!("{other:?} is not a spread (use \"stripe\" or \"pin\")"),
                    );
                    None
                }
            },
        };
        if let Some(l) = listen {
            listens.push((i, l));
        }
        if let (Some(listen), Some(service), Some(spread)) = (listen, service, spread) {
            out.push(PortMap {
                listen,
                service,
                spread,
            });
        }
    }
    let addrs: Vec<SocketAddr> = listens.iter().map(|&(_, a)| a).collect();
    let conflicts = listen_conflicts(&addrs);
    for &(j, first_j) in &conflicts {
        let (i, first) = (listens[j].0, listens[first_j].0);
        let span = raw[i].get_ref().listen.as_ref().map(|v| v.span());
        errs.push(
            format!("map[{i}].listen"),
            span,
            format!(
                "conflicts with map[{first}].listen {}: both cannot be bound",
                addrs[first_j]
            ),
        );
    }
    (out.len() == raw.len() && conflicts.is_empty()).then_some(out)
}
