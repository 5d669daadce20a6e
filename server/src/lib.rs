//! wanmux-server: the server daemon as a library, so tests and the demo can run it in-process.
//!
//! A node listens for links. Each accepted TCP connection runs the Noise handshake; a client
//! that fails authentication gets nothing and costs one log line. An authenticated link joins
//! its session, found by (client key, session id) from the handshake, or starts a new one.
//! For every stream the client opens, the node connects to the *named service* from its own
//! config, never to an address the client chose. A session whose links are all gone is kept for
//! a grace period (`server.session_grace_ms`) so a reconnecting client resumes its streams.
//!
//! A node with `[cluster]` also keeps one peer link to every other node of its cluster, on a
//! listener of its own (see the `mesh` module and `docs/PROTOCOL.md`, "Peer links").
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod mesh;
mod refused;
mod relay;
mod reload;
mod session;
mod stream_refusals;

/// `ROUTE_DOWN` answers a relay keeps queued for one client link that does not read them; past
/// that many it closes the link (`relay.rs`).
pub const MAX_UNREAD_ANSWERS: usize = relay::MAX_DOWNS;

use mesh::Mesh;
use refused::{Refusals, Stage};
use reload::SharedAuth;
use session::Sessions;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use wanmux_config::ServerConfig;
use wanmux_core::control::{self, ControlSocket};
use wanmux_core::daemon::slots::{self, Slots};
use wanmux_core::status::{Reloads, Status};
use wanmux_core::{daemon, driver, metrics, noise, quic, tune};

/// Handshakes in progress at once; past it the oldest gives way to a new one ([`slots`]), so a
/// flood of half-open connections costs bounded memory and cannot keep new links out.
const MAX_HANDSHAKES: usize = 1024;
/// Handshakes in progress at once from one source (an IPv4 address or an IPv6 /64, [`slots`]):
/// a client dials its links a few at a time, and one source cannot take every slot.
const MAX_HANDSHAKES_PER_SOURCE: usize = 16;
/// Why a handshake in progress was ended ([`slots`]): its slot went to a newer one.
const TAKEN_OVER: &str = "too many handshakes in progress from this address (an IPv6 /64 counts \
                          as one), or on this node: the oldest was ended for this one";
/// Why a connection was closed before its handshake ([`slots::Rates`]).
const TOO_FAST: &str = "new handshakes from this address (an IPv6 /64 counts as one) come faster \
                        than limits.handshake_rate";
/// QUIC handshakes in progress at once from addresses QUIC has not validated. Such an address
/// may be spoofed: a flood of Initials from addresses that never answer would hold a slot each
/// for a handshake timeout, and cost a key exchange and a signature each. Past this many, a new
/// unvalidated address gets a Retry (stateless and smaller than the Initial) and takes a slot
/// only when it comes back with the token, its address validated; validated addresses are
/// limited like TCP ones ([`MAX_HANDSHAKES`], [`MAX_HANDSHAKES_PER_SOURCE`]), so spoofing a
/// client's address cannot take its slots either.
const MAX_UNVALIDATED: usize = 32;

/// A running server node.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
    /// The QUIC endpoint and its accept loop (`server.quic`).
    quic: Option<(quic::Listener, JoinHandle<()>)>,
    sessions: Arc<Sessions>,
    /// What `status`, the control socket and the metrics endpoint report.
    report: Arc<Report>,
    /// The metrics endpoint (`metrics.listen`): its address and task.
    metrics: Option<(SocketAddr, JoinHandle<()>)>,
    /// The control socket (`control.socket`); its file goes with it.
    control: Option<ControlSocket>,
    /// Peer links to the other nodes (`[cluster]`).
    mesh: Option<Arc<Mesh>>,
    /// What new links are checked with (a reload replaces it).
    auth: Arc<SharedAuth>,
}

impl ServerHandle {
    /// The address the node listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The UDP address QUIC links are accepted on (`server.quic`): the TCP listener's address
    /// and port number.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic
            .as_ref()
            .and_then(|(ep, _)| ep.endpoint().local_addr().ok())
    }

    fn stop_metrics(&self) {
        if let Some((_, task)) = &self.metrics {
            task.abort();
        }
    }

    /// The address peer links are accepted on (`cluster.listen`, useful with port 0); `None`
    /// without `[cluster]`.
    pub fn cluster_addr(&self) -> Option<SocketAddr> {
        self.mesh.as_ref().map(|m| m.local_addr())
    }

    /// The ids of the peers this node has a live peer link to, sorted (empty without
    /// `[cluster]`).
    pub fn peers_up(&self) -> Vec<u16> {
        self.mesh.as_ref().map_or_else(Vec::new, |m| m.peers_up())
    }

    /// Waits until the ids of the peers with a live link (as [`peers_up`](Self::peers_up))
    /// satisfy `ready`; checks at once, then at every change. Without `[cluster]` the set is
    /// empty and never changes.
    pub async fn wait_for_peers(&self, mut ready: impl FnMut(&[u16]) -> bool) {
        match &self.mesh {
            Some(m) => m.wait_for_peers(ready).await,
            None if ready(&[]) => {}
            None => std::future::pending().await,
        }
    }

    /// This process's instance on peer links, drawn at start (`None` without `[cluster]`).
    pub fn instance(&self) -> Option<u64> {
        self.mesh.as_ref().map(|m| m.instance())
    }

    /// The instance peer `id` reported on its latest link, live or not.
    pub fn peer_instance(&self, id: u16) -> Option<u64> {
        self.mesh.as_ref().and_then(|m| m.peer_instance(id))
    }

    /// Section bytes this node relayed to peer `id` (from its client links, upstream) and from
    /// it (onto its client links, downstream) since start; (0, 0) without `[cluster]`.
    pub fn relayed(&self, id: u16) -> (u64, u64) {
        self.sessions.relay().map_or((0, 0), |r| r.relayed(id))
    }

    /// The most `ROUTE_DOWN` answers queued for any one client link of this relay now, and the
    /// most routed messages of any kind; (0, 0) without `[cluster]`. Answers are at most
    /// [`MAX_UNREAD_ANSWERS`]: past that many the link is closed.
    pub fn relay_queued_most(&self) -> (usize, usize) {
        self.sessions.relay().map_or((0, 0), |r| r.queued_most())
    }

    /// Sessions this node has bound (`BIND`) on its live peer link to `id` and not given up
    /// (`UNBIND`): those with a client link here that relayed to `id`. 0 without a link.
    pub fn sessions_bound(&self, id: u16) -> usize {
        self.mesh
            .as_ref()
            .and_then(|m| m.peer(id))
            .map_or(0, |p| p.bound_count())
    }

    fn stop_accepting(&self) {
        self.accept.abort();
        if let Some(mesh) = &self.mesh {
            mesh.stop();
        }
        if let Some((ep, task)) = &self.quic {
            task.abort();
            // Refuses new connections; links already up close with their sessions.
            ep.endpoint().set_server_config(None);
        }
    }

    /// What the node is doing now: its sessions, their links, the traffic totals, the links it
    /// refused and its reloads.
    pub fn status(&self) -> Status {
        self.report.status()
    }

    /// Where the daemon counts its config reloads (the daemon skeleton records them).
    pub fn reloads(&self) -> &Reloads {
        &self.report.reloads
    }

    /// The control socket's path (`control.socket`), if it has one.
    pub fn control_path(&self) -> Option<&std::path::Path> {
        self.control.as_ref().map(ControlSocket::path)
    }

    /// Where the metrics endpoint listens (`metrics.listen`; useful with port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(a, _)| *a)
    }

    /// Sessions currently held (with at least one link, or within their grace period).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Session engines in memory: the sessions held, and those that ended whose tasks have
    /// not finished yet (a moment). More than that for long is a session that is never freed.
    pub fn session_engines(&self) -> u64 {
        self.sessions.engines()
    }

    /// Links up, over all sessions.
    pub fn link_count(&self) -> usize {
        self.sessions.link_count()
    }

    /// Stops accepting, resets every session's streams and closes every link.
    pub fn shutdown(self) {
        self.stop_metrics();
        self.stop_accepting();
        self.sessions.close_all();
    }

    /// The largest receive and send buffer of any one stream in any session, bytes (each is
    /// bounded by `limits.stream_window`).
    pub fn max_stream_buffered(&self) -> (u64, u64) {
        self.sessions.max_stream_buffered()
    }

    /// Stream bytes the live sessions queued again because a link died before the client
    /// confirmed them.
    pub fn resent_bytes(&self) -> u64 {
        self.sessions.resent_bytes()
    }

    /// The daemon's memory budget (`limits.memory`): what all sessions hold of it now.
    pub fn budget(&self) -> &wanmux_core::budget::Budget {
        self.sessions.budget()
    }

    /// Streams open in all sessions.
    pub fn stream_count(&self) -> usize {
        self.sessions.stream_count()
    }

    /// Graceful stop: refuses new streams (reset with code 4), lets open streams of sessions
    /// that have a link finish for up to `timeout` while links keep working, then shuts down.
    pub async fn drain(self, timeout: std::time::Duration) {
        self.drain_until(timeout, std::future::pending()).await;
    }

    /// [`ServerHandle::drain`], cut short when `stop` completes (a second signal).
    pub async fn drain_until(
        self,
        timeout: std::time::Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        self.sessions.start_draining();
        let open = || self.sessions.finishable_stream_count();
        // What a client opened before it heard of the drain still arrives for about a round
        // trip, and is served (`Session::opened_before_drain_heard`): the drain lasts that long
        // even with no stream open, unless a second signal or its timeout comes first.
        let grace = self.sessions.drain_grace().min(timeout);
        tokio::pin!(stop);
        let drained = tokio::select! {
            () = tokio::time::sleep(grace) => {
                daemon::wait_drained(timeout - grace, &mut stop, open).await
            }
            () = &mut stop => match open() {
                0 => Ok(()),
                streams => Err(daemon::Left { streams, stopped: true }),
            },
        };
        if let Err(left) = drained {
            warn!(streams = left.streams, "{}", left.message());
        }
        self.stop_accepting();
        self.stop_metrics();
        // The clients learn of the resets at once, and the services see an RST.
        let drivers = self.sessions.take_all();
        wanmux_core::driver::close_flushed(
            &drivers,
            wanmux_core::frame::reset::SHUTDOWN,
            daemon::CLOSE_FLUSH,
        )
        .await;
        // QUIC links close with a CONNECTION_CLOSE that the clients see at once: without it a
        // client finds an idle link to a stopped node dead only at its next keepalive (10 s).
        if let Some((ep, _)) = &self.quic {
            ep.endpoint().close(0u32.into(), b"node stopping");
            let idle = ep.endpoint().wait_idle();
            let _ = tokio::time::timeout(std::time::Duration::from_millis(300), idle).await;
        }
        self.shutdown();
    }

    /// Stops at once: drops every link and session without telling clients anything, which is
    /// what a crash looks like to them. For tests of recovery, and emergency exits.
    pub fn abort(self) {
        self.stop_metrics();
        self.stop_accepting();
        self.sessions.abandon_all();
    }
}

/// What a node reports, from the parts that count it.
#[derive(Debug)]
struct Report {
    sessions: Arc<Sessions>,
    refusals: Arc<Refusals>,
    reloads: Reloads,
    started: std::time::Instant,
}

impl Report {
    fn status(&self) -> Status {
        let mut st = self.sessions.status(self.started.elapsed());
        st.handshake_failures = self.refusals.counts();
        st.reloads = self.reloads.view();
        st
    }
}

/// `e` with `what` in front of its message, of the same kind.
fn context(e: io::Error, what: std::fmt::Arguments<'_>) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Binds `server.listen` for TCP links and, with `server.quic`, the same address and port for
/// QUIC. With port 0 the QUIC socket takes the port the TCP listener got; when that UDP port is
/// taken, both are bound again on another port (a few tries).
async fn bind_links(
    config: &ServerConfig,
    offer: quic::Offer,
) -> io::Result<(TcpListener, Option<quic::Listener>)> {
    const TRIES: usize = 8;
    let mut tries = 0;
    loop {
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            let hint = daemon::bind_hint(config.listen, &e);
            context(
                e,
                format_args!("cannot listen on {} (server.listen){}", config.listen, hint),
            )
        })?;
        if !config.quic {
            return Ok((listener, None));
        }
        let local_addr = listener.local_addr()?;
        let pki = config.tls.as_ref().map(|t| &t.files);
        match quic::server_endpoint_with(local_addr, offer, pki) {
            Ok(ep) => return Ok((listener, Some(ep))),
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse
                    && config.listen.port() == 0
                    && tries < TRIES =>
            {
                tries += 1;
            }
            Err(e) => {
                return Err(context(
                    e,
                    format_args!(
                        "cannot bind UDP {local_addr} for QUIC links (server.quic; set it to \
                         false to accept TCP links only)"
                    ),
                ))
            }
        }
    }
}

/// How a node runs besides its config: what tests change to stand in for an older release.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The link versions its QUIC endpoint takes (default: `wanmux/2` and `wanmux/1`). Tests
    /// take `wanmux/1` only, to stand in for a node from before `wanmux/2` (which also takes no
    /// lane stream).
    pub quic_offer: quic::Offer,
}

/// Binds the listen address and starts serving.
pub async fn start(config: ServerConfig) -> io::Result<ServerHandle> {
    start_with(config, Options::default()).await
}

/// [`start`] with `options`.
pub async fn start_with(config: ServerConfig, options: Options) -> io::Result<ServerHandle> {
    let (listener, quic) = bind_links(&config, options.quic_offer).await?;
    let local_addr = listener.local_addr()?;
    let mut host = Vec::new();
    let congestion = tune::congestion(config.congestion.as_deref(), &mut host);
    host.extend(tune::check_buffers(
        config.quic.then_some(quic::SOCKET_BUFFER as u64),
        true,
    ));
    for w in &host {
        warn!(target: tune::LOG_TARGET, "{w}");
    }
    if let Some(cc) = &congestion {
        // Accepted sockets inherit the listener's congestion control.
        let sock = socket2::SockRef::from(&listener);
        if let Err(e) = sock.set_tcp_congestion(cc.as_bytes()) {
            warn!(congestion = %cc, error = %e, "cannot set the links' congestion control; using the system default");
        }
    }
    let refusals = Arc::new(Refusals::default());
    let mesh = match &config.cluster {
        Some(cluster) => Some(Mesh::bind(&config, cluster, refusals.clone()).await?),
        None => None,
    };
    let auth = Arc::new(SharedAuth::new(&config.auth, config.tls.as_ref()));
    let metrics_listen = config.metrics_listen;
    let control_path = config.control_socket.clone();
    let sessions = Arc::new(Sessions::new(config));
    let mesh = mesh.map(|(mesh, listener)| {
        let relay = Arc::new(relay::Relay::new(
            sessions.node_id(),
            mesh.clone(),
            Arc::downgrade(&sessions),
        ));
        mesh.start(listener, Arc::downgrade(&relay));
        sessions.set_relay(relay);
        mesh
    });
    let report = Arc::new(Report {
        sessions: sessions.clone(),
        refusals: refusals.clone(),
        reloads: Reloads::default(),
        started: std::time::Instant::now(),
    });
    let metrics = match metrics_listen {
        None => None,
        Some(addr) => {
            let listener = TcpListener::bind(addr).await.map_err(|e| {
                context(e, format_args!("cannot listen on {addr} (metrics.listen)"))
            })?;
            let bound = listener.local_addr()?;
            info!(listen = %bound, "metrics endpoint");
            let from = report.clone();
            let source: metrics::StatusSource = Arc::new(move || from.status());
            Some((bound, tokio::spawn(metrics::serve(listener, source))))
        }
    };
    let fds = Arc::new(daemon::fds::Fds::raise("new links"));
    info!(listen = %local_addr, quic = quic.is_some(), node = sessions.node_id(), "wanmux-server listening");
    let accept = tokio::spawn(accept_loop(
        Listener::Tcp(listener),
        auth.clone(),
        sessions.clone(),
        refusals.clone(),
        fds.clone(),
    ));
    let quic = quic.map(|ep| {
        let task = tokio::spawn(accept_loop(
            Listener::Quic(ep.clone()),
            auth.clone(),
            sessions.clone(),
            refusals,
            fds,
        ));
        (ep, task)
    });
    let control = match control_path {
        None => None,
        Some(path) => {
            let from = report.clone();
            let source: control::StatusSource = Arc::new(move || from.status());
            let socket = ControlSocket::bind(&path, source).map_err(|e| {
                context(
                    e,
                    format_args!(
                        "cannot create the control socket {} (control.socket)",
                        path.display()
                    ),
                )
            })?;
            info!(path = %path.display(), "control socket");
            Some(socket)
        }
    };
    Ok(ServerHandle {
        local_addr,
        accept,
        quic,
        sessions,
        metrics,
        control,
        report,
        mesh,
        auth,
    })
}

/// Where links arrive: the TCP listener, or the QUIC endpoint (`server.quic`).
#[allow(clippy::large_enum_variant, reason = "one per accept loop")]
enum Listener {
    Tcp(TcpListener),
    Quic(quic::Listener),
}

/// A connection that arrived on a [`Listener`], before its handshake. A QUIC one is boxed, so
/// that a TCP one, waiting for its handshake, holds no room for it.
enum Incoming {
    Tcp(TcpStream),
    Quic(Box<(quic::Listener, quinn::Incoming)>),
    /// The lane stream of a QUIC link's connection (`docs/PROTOCOL.md`, "Lane streams"): it
    /// arrives on a connection already up, never from the listener.
    LaneStream(Box<quic::Stream>),
}

impl Incoming {
    /// Closes a connection this node has no room for: TCP with an RST, QUIC with a refusal, or
    /// with nothing at all to an address QUIC has not validated (it may be spoofed: an answer
    /// would go to someone else).
    fn refuse(self) {
        match self {
            Incoming::Tcp(tcp) => {
                let _ = socket2::SockRef::from(&tcp).set_linger(Some(std::time::Duration::ZERO));
            }
            Incoming::Quic(boxed) if boxed.1.remote_address_validated() => boxed.1.refuse(),
            Incoming::Quic(boxed) => boxed.1.ignore(),
            // Dropped, it closes its connection.
            Incoming::LaneStream(_) => {}
        }
    }

    /// Whether the peer has proved it receives at its address: always for TCP (its handshake
    /// did), for QUIC after a Retry round trip.
    fn validated(&self) -> bool {
        match self {
            Incoming::Tcp(_) | Incoming::LaneStream(_) => true,
            Incoming::Quic(boxed) => boxed.1.remote_address_validated(),
        }
    }
}

impl Listener {
    /// The next connection and its peer (failed accepts counted in `errors`); `None` once the
    /// listener is closed.
    async fn next(&self, errors: &daemon::AcceptErrors) -> Option<(Incoming, SocketAddr)> {
        match self {
            Listener::Tcp(listener) => {
                let (tcp, peer) = daemon::accept(listener, errors).await;
                Some((Incoming::Tcp(tcp), peer))
            }
            Listener::Quic(listener) => {
                let incoming = listener.endpoint().accept().await?;
                let peer = daemon::canonical(incoming.remote_address());
                Some((Incoming::Quic(Box::new((listener.clone(), incoming))), peer))
            }
        }
    }
}

/// Accepts links on `listener`, TCP or QUIC alike, each taking a handshake slot once accepted:
/// at most [`MAX_HANDSHAKES`] in their handshake at once, [`MAX_HANDSHAKES_PER_SOURCE`] from one
/// source, the oldest giving way to a new one (see `slots`), and none while the open file
/// descriptors are within the reserve of the limit (see `fds`). A QUIC connection from an
/// address QUIC has not validated takes one of [`MAX_UNVALIDATED`] slots instead, or gets a
/// Retry when they are taken or its source starts handshakes faster than `handshake_rate`
/// allows. A connection with no slot is closed at once (TCP: with an RST), so a flood holds no
/// descriptor; refusals and ended handshakes are logged as a count (`refused`). Each link that
/// authenticates runs in its session.
async fn accept_loop(
    listener: Listener,
    auth: Arc<SharedAuth>,
    sessions: Arc<Sessions>,
    refusals: Arc<Refusals>,
    fds: Arc<daemon::fds::Fds>,
) {
    let slots = Slots::new(MAX_HANDSHAKES, MAX_HANDSHAKES_PER_SOURCE, MAX_UNVALIDATED);
    // TCP connections, at `handshake_rate` per source.
    let rates = slots::Rates::new(sessions.handshake_rate());
    // QUIC connections get the same rate in two halves, in buckets of their own. From
    // addresses not validated yet, `fresh`: past it they are asked for a Retry, which only the
    // address's owner answers, and come back validated, under `retried`, past which they are
    // refused. (An address may be spoofed: spending its owner's `fresh` costs the owner a
    // Retry's round trip, never a refusal.) Without them a QUIC client that kept fewer than
    // `MAX_UNVALIDATED` handshakes in flight was never limited: a trial made 1,017 TLS
    // handshakes a second from one address.
    let half = (sessions.handshake_rate() / 2).max(1);
    let (fresh, retried) = (slots::Rates::new(half), slots::Rates::new(half));
    let errors = daemon::AcceptErrors::new("accept failed");
    loop {
        let Some((incoming, peer)) = listener.next(&errors).await else {
            return;
        };
        let validated = incoming.validated();
        let quic = matches!(incoming, Incoming::Quic(_));
        let now = std::time::Instant::now();
        if !validated && (!slots.room_unvalidated() || !fresh.admit(peer.ip(), now)) {
            if let Incoming::Quic(boxed) = incoming {
                // Stateless: the address comes back with a token, or was spoofed and costs
                // nothing more. A refused Retry (an Initial that already carried a token)
                // gets no answer.
                if let Err(e) = boxed.1.retry() {
                    e.into_incoming().ignore();
                }
            }
            continue;
        }
        // Refused past the rate: a validated address only (an unvalidated one, which may be
        // spoofed, was asked for a Retry above instead, so spending a victim's rate never locks
        // it out).
        let bucket = if quic { &retried } else { &rates };
        if validated && !bucket.admit(peer.ip(), now) {
            refusals.busy(peer, TOO_FAST);
            incoming.refuse();
            continue;
        }
        let taken = if validated {
            let (slot, took_over) = slots.take(peer.ip());
            if took_over {
                refusals.busy(peer, TAKEN_OVER);
            }
            Ok(slot)
        } else {
            slots.take_unvalidated()
        };
        let slot = match taken {
            Err(why) => {
                refusals.busy(peer, why);
                incoming.refuse();
                continue;
            }
            Ok(_) if !fds.room() => {
                refusals.busy(
                    peer,
                    &format!(
                        "open files near the limit ({}): the rest is kept for the sessions \
                         already here (raise LimitNOFILE)",
                        fds.limit()
                    ),
                );
                incoming.refuse();
                continue;
            }
            Ok(slot) => slot,
        };
        let (auth, sessions, refusals) = (auth.clone(), sessions.clone(), refusals.clone());
        let slots = slots.clone();
        tokio::spawn(async move {
            // What client certificates are checked against when this link's TLS runs.
            let checks = auth.pki_checks();
            let accepted = tokio::select! {
                accepted = handshake(incoming, peer, &auth, &sessions, &refusals) => accepted,
                // A newer handshake took the slot: this one's connection closes.
                () = slot.evicted() => None,
            };
            drop(slot);
            let Some((acc, transport, sibling)) = accepted else {
                return;
            };
            // The connection's counts, for status (a lane stream's go with its link's row).
            let probe = sibling.as_ref().map(quic::Sibling::probe);
            // A QUIC link that is not itself a lane may get a lane stream beside it.
            let lane = sibling.filter(|_| !acc.hello.lane).map(|sibling| {
                let of = LaneOf {
                    session_id: acc.hello.session_id,
                    client_key: acc.client_key,
                };
                let (auth, sessions, refusals) = (auth.clone(), sessions.clone(), refusals.clone());
                driver::AbortOnDrop(tokio::spawn(async move {
                    let auth = (&auth, checks);
                    lane_stream(sibling, of, peer, auth, &sessions, &refusals, &slots).await;
                }))
            });
            let end = sessions
                .run_link(acc, peer, transport, probe, (&auth, checks), &refusals)
                .await;
            // A link that ended in order (the client finished it, or this node's session
            // closed) leaves its lane stream up to `CLOSE_LINGER` to read and send what is left
            // on it: the client's last messages (its `SESSION_OVER`) may come on the lane after
            // the link's end, and dropping the lane's writer would close the connection under
            // what it had not yet delivered. Any other end closes the connection at once.
            if let (Some(mut lane), Some(end)) = (lane, end) {
                if ended_in_order(&end) {
                    let _ = tokio::time::timeout(driver::link::CLOSE_LINGER, &mut lane.0).await;
                }
            }
        });
    }
}

/// Whether a link's end was an orderly one, after which its lane stream gets a moment to finish.
fn ended_in_order(end: &driver::link::LinkEnd) -> bool {
    use driver::link::LinkEnd;
    matches!(
        end,
        LinkEnd::Closed
            | LinkEnd::ClosedSaying(_)
            | LinkEnd::PeerClosed(_)
            | LinkEnd::SessionClosed
    )
}

/// The link a lane stream must belong to: the one on its connection's first stream.
#[derive(Debug, Clone, Copy)]
struct LaneOf {
    session_id: [u8; 16],
    client_key: Option<wanmux_core::keys::PublicKey>,
}

/// Waits for the lane stream of a QUIC link's connection (`docs/PROTOCOL.md`, "Lane streams"),
/// then runs its handshake in a slot of its own, as any link's, and the link it brings: only a
/// lane of the same session and client as the connection's first link (`of`), or the stream,
/// and the connection with it, is closed. `checks`: the certificate checks the connection's TLS
/// ran under (`SharedAuth::pki_checks`, taken for its first link).
async fn lane_stream(
    sibling: quic::Sibling,
    of: LaneOf,
    peer: SocketAddr,
    (auth, checks): (&Arc<SharedAuth>, u64),
    sessions: &Arc<Sessions>,
    refusals: &Arc<Refusals>,
    slots: &Arc<Slots>,
) {
    // Fails only when the connection ends.
    let Ok(stream) = sibling.accept().await else {
        return;
    };
    let (slot, took_over) = slots.take(peer.ip());
    if took_over {
        refusals.busy(peer, TAKEN_OVER);
    }
    let incoming = Incoming::LaneStream(Box::new(stream));
    let accepted = tokio::select! {
        accepted = handshake(incoming, peer, auth, sessions, refusals) => accepted,
        () = slot.evicted() => None,
    };
    drop(slot);
    let Some((acc, transport, _)) = accepted else {
        sibling.close();
        return;
    };
    // Keys compare in constant time.
    if !acc.hello.lane || acc.hello.session_id != of.session_id || acc.client_key != of.client_key {
        // Only a client that authenticated twice on one connection gets here: a broken one.
        debug!(%peer, "lane stream refused: not a lane of its connection's session and client");
        sibling.close();
        return;
    }
    sessions
        .run_link(acc, peer, transport, None, (auth, checks), refusals)
        .await;
}

/// Runs the Noise handshake on a link that arrived (QUIC: after the QUIC handshake, bound to its
/// TLS connection on `wanmux/2`) and logs a refusal (see `refused`); `None` when the link was
/// refused. With the link, what it runs over as status names it (`tcp`, `quic`, `quic+noise`).
async fn handshake(
    incoming: Incoming,
    peer: SocketAddr,
    shared: &SharedAuth,
    sessions: &Arc<Sessions>,
    refusals: &Refusals,
) -> Option<(noise::Accepted, &'static str, Option<quic::Sibling>)> {
    let auth = &*shared.current();
    // Set once message 1 authenticated and this node answered: a client that hangs up after
    // that could not take the answer.
    let replied = std::sync::atomic::AtomicBool::new(false);
    // Set for a client that presented a certificate TLS verified (PKI mode): its key is the
    // certificate's identity, checked against the `sha256:` entries; TLS 1.3 without early
    // data cannot be replayed, so there is no timestamp.
    let pki = std::sync::atomic::AtomicBool::new(false);
    let respond = |hello: &noise::ReceivedHello, key: Option<&wanmux_core::keys::PublicKey>| {
        if pki.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(k) = key.filter(|k| !shared.allows_cert(k)) {
                return Err(noise::LinkError::UnknownCert(*k.as_bytes()));
            }
        } else {
            sessions.check_replay(hello, key)?;
        }
        replied.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut reply =
            sessions.server_hello((key.copied(), wanmux_core::ids::SessionId(hello.session_id)));
        // Routed messages only where the client asked and this node can relay.
        reply.relay = hello.relay && sessions.relay().is_some();
        Ok(reply)
    };
    // One timeout for the whole handshake: QUIC's, then Noise's in what is left of it.
    let timeout = sessions.handshake_timeout();
    let deadline = tokio::time::Instant::now() + timeout;
    // The handshake on a QUIC link's stream, in what is left of the timeout; with the
    // connection, for a lane stream beside it.
    let on_stream = |stream: quic::Stream, left| {
        // A PKI link is `quic` too: TLS is its one encryption.
        let transport = stream.version().transport();
        if stream.client_cert().is_some() {
            pki.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let sibling = stream.sibling();
        async move {
            let accepted = stream.accept_with(auth, left, respond).await;
            (accepted, transport, Some(sibling))
        }
    };
    let (accepted, transport, sibling) = match incoming {
        Incoming::Tcp(tcp) => (
            noise::accept_with(tcp, auth, timeout, respond).await,
            "tcp",
            None,
        ),
        Incoming::Quic(boxed) => {
            let (listener, incoming) = *boxed;
            match quic::accept(&listener, incoming, timeout).await {
                Ok(stream) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    on_stream(stream, left).await
                }
                Err(e) => {
                    refusals.quic(peer, &e);
                    return None;
                }
            }
        }
        // No lane stream beside a lane stream.
        Incoming::LaneStream(stream) => {
            let (accepted, transport, _) = on_stream(*stream, timeout).await;
            (accepted, transport, None)
        }
    };
    let accepted = accepted.and_then(|acc| match acc.client_key {
        Some(_) => Ok(acc),
        None => sessions.take_psk_timestamp(&acc.hello).map(|()| acc),
    });
    match accepted {
        Ok(acc) => {
            debug!(%peer, link_seq = acc.hello.link_seq, transport, "link authenticated");
            Some((acc, transport, sibling))
        }
        Err(e) => {
            let stage = if replied.load(std::sync::atomic::Ordering::Relaxed) {
                Stage::AfterReply
            } else {
                Stage::BeforeReply
            };
            // It carries no key material but a client's public key.
            refusals.handshake(peer, &e, stage, auth);
            None
        }
    }
}
