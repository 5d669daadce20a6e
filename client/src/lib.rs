//! wanmux-client: the client daemon as a library, so tests and the demo can run it in-process.
//!
//! The client holds one session across every configured node (`cluster`): one engine per node
//! for the streams that node owns, all under one session id. To each node it keeps `links.min`
//! to `links.max` Noise links (more while every link is busy, see `pool`), spread over the
//! node's addresses, each reconnecting with exponential backoff and jitter when it dies (to
//! another of the node's addresses when its own fails, see `dial`). It listens on every mapped
//! local port; each accepted connection becomes a stream owned by the node `cluster.owner`
//! picks, opened to the mapped service by name, and its frames spread over that node's links.
//! Because the session outlives its links, a connection survives link deaths as long as one
//! link to its owner comes back within the grace period.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod carrier;
mod cluster;
mod dial;
mod pool;
mod race;
mod ready;
mod reload;
mod route;

pub use cluster::NodeStatus;

use cluster::{Cluster, NodeSession};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};
use wanmux_config::{ClientConfig, LinkTransport, ServiceName, Spread};
use wanmux_core::budget::Budget;
use wanmux_core::control::{self, ControlSocket};
use wanmux_core::daemon;
use wanmux_core::driver::{self, BudgetSignal, SessionDriver};
use wanmux_core::engine::{Role, Session};
use wanmux_core::frame::reset;
use wanmux_core::ids::{NodeId, SessionId};
use wanmux_core::metrics;
use wanmux_core::noise::SessionSecret;
use wanmux_core::status::{Reloads, Status};
use wanmux_core::tune;

/// Accept queue length of each mapped port (the kernel caps it at `net.core.somaxconn`). The
/// default of std and tokio, 128, overflows when a burst of connections arrives at once (a
/// game server's players reconnecting): the kernel then falls back to SYN cookies and drops or
/// resets some of them.
const LISTEN_BACKLOG: u32 = 4096;

/// A running client.
#[derive(Debug)]
pub struct ClientHandle {
    maps: Vec<(ServiceName, SocketAddr)>,
    cluster: Arc<Cluster>,
    /// The mapped ports and their accept loops, in the order of `maps`.
    listeners: Vec<reload::Listening>,
    /// Whether the links' first dials settled, and the log of failed dials.
    dials: Arc<ready::Dials>,
    /// Under `links.transport = "auto"`, the node addresses that fell back to TCP.
    carriers: Arc<carrier::Carriers>,
    /// `client.no_link_hold_ms` (kept until a restart).
    no_link_hold: std::time::Duration,
    /// The metrics endpoint (`metrics.listen`): its address and task.
    metrics: Option<(SocketAddr, JoinHandle<()>)>,
    /// The control socket (`control.socket`); its file goes with it.
    control: Option<ControlSocket>,
    /// The QUIC endpoints every link dials from, when links may run over QUIC: a reload gives
    /// them PKI mode's files read again.
    quic: Option<Arc<dial::QuicEndpoints>>,
    /// What `status`, the control socket and the metrics endpoint report.
    report: Arc<Report>,
}

/// What the client reports, from the parts that count it.
#[derive(Debug)]
struct Report {
    cluster: Arc<Cluster>,
    dials: Arc<ready::Dials>,
    reloads: Reloads,
    started: std::time::Instant,
}

impl Report {
    fn status(&self) -> Status {
        let mut st = self.cluster.status(self.started.elapsed());
        let now = std::time::Instant::now();
        for (node, session) in self.cluster.nodes.iter().zip(&mut st.sessions) {
            if session.links_up() == 0 {
                session.last_dial_error = self
                    .dials
                    .last_error(&node.id.0.to_string(), now)
                    .map(|(ago, why)| format!("{} s ago: {why}", ago.as_secs()));
            }
        }
        st.handshake_failures = self.dials.counts();
        st.reloads = self.reloads.view();
        st
    }
}

impl ClientHandle {
    /// Each mapped service with the local address it is served on (useful with port 0).
    pub fn maps(&self) -> &[(ServiceName, SocketAddr)] {
        &self.maps
    }

    /// The local address of the first mapping.
    pub fn first_addr(&self) -> SocketAddr {
        self.maps[0].1
    }

    /// The node addresses (as configured) whose links run over TCP because QUIC got no answer
    /// there (`links.transport = "auto"`), sorted; empty under `"tcp"` and `"quic"`.
    pub fn tcp_fallbacks(&self) -> Vec<String> {
        self.carriers.fallen_back()
    }

    /// Links currently up, to all nodes.
    pub fn live_links(&self) -> usize {
        self.cluster.live_links()
    }

    /// Waits until at least `n` links are up, to all nodes together.
    pub async fn wait_for_links(&self, n: usize) {
        while self.cluster.live_links() < n {
            // Several nodes' links: polled rather than waited on, one at a time.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// What the client is doing now: its nodes' sessions, links and traffic totals, its failed
    /// dials and its reloads.
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

    /// Waits until a link is up or a dial has failed (its reason logged): what the service
    /// manager is told the client is ready on.
    pub async fn wait_first_dial(&self) {
        self.dials.wait_settled().await
    }

    /// Each configured node: its links, the streams it owns and its bytes, in config order.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        let routes = &self.cluster.routes;
        self.cluster
            .nodes
            .iter()
            .map(|n| n.status(routes))
            .collect()
    }

    /// Bytes of `owner`'s sections (sent, received) on the client's links to node `via`:
    /// what `via` relayed for `owner` (0 for `via == owner`).
    pub fn relayed(&self, via: u16, owner: u16) -> (u64, u64) {
        self.cluster.routes.relayed(NodeId(via), NodeId(owner))
    }

    /// Whether node `id` said it is stopping (`DRAINING`): new connections go to the others.
    pub fn peer_draining(&self, id: u16) -> bool {
        self.cluster
            .nodes
            .iter()
            .any(|n| n.id == NodeId(id) && n.driver.peer_draining())
    }

    /// Sub-links of `owner`'s engine on the client's links to node `via` now: the links on
    /// which `via` relays for `owner` (0 for `via == owner`).
    pub fn sub_links(&self, via: u16, owner: u16) -> u64 {
        self.cluster.routes.sub_links(NodeId(via), NodeId(owner))
    }

    /// Streams open now, on all nodes.
    pub fn stream_count(&self) -> usize {
        self.cluster.stream_count()
    }

    /// Application connections whose stream tasks still run, over all nodes: a stream the
    /// engine ended (reset, say) is counted until its task closed the application's socket.
    pub fn stream_tasks(&self) -> usize {
        self.cluster
            .nodes
            .iter()
            .map(|n| n.driver.stream_tasks())
            .sum()
    }

    /// The largest receive and send buffer of any one stream in any node's engine, bytes (each
    /// is bounded by `limits.stream_window`).
    pub fn max_stream_buffered(&self) -> (u64, u64) {
        self.cluster
            .nodes
            .iter()
            .map(|n| n.driver.with(|s, _| s.max_stream_buffered()))
            .fold((0, 0), |a, b| (a.0.max(b.0), a.1.max(b.1)))
    }

    /// Stream bytes the session queued again because a link died before a node confirmed them.
    pub fn resent_bytes(&self) -> u64 {
        self.cluster
            .nodes
            .iter()
            .map(|n| n.driver.with(|s, _| s.resent_bytes()))
            .sum()
    }

    /// The daemon's memory budget (`limits.memory`), shared by every node's engine.
    pub fn budget(&self) -> Budget {
        self.cluster.nodes[0].driver.with(|s, _| s.budget().clone())
    }

    /// Stops listening, resets every stream and drops every link.
    pub fn shutdown(self) {
        let accepting = self.listeners.iter().map(|l| &l.task);
        for t in accepting.chain(self.metrics.as_ref().map(|(_, t)| t)) {
            t.abort();
        }
        for n in &self.cluster.nodes {
            for t in &n.tasks {
                t.abort();
            }
            n.driver.close(reset::SHUTDOWN);
        }
    }

    /// Graceful stop: closes the mapped ports at once, lets open connections finish for up to
    /// `timeout`, then shuts down (resetting what is left).
    pub async fn drain(self, timeout: std::time::Duration) {
        self.drain_until(timeout, std::future::pending()).await;
    }

    /// [`ClientHandle::drain`], cut short when `stop` completes (a second signal).
    pub async fn drain_until(
        mut self,
        timeout: std::time::Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        // Close the mapped ports: the accept loops end, and with them the last references to
        // the sockets (a socket left open would take connections into its backlog that no one
        // accepts until the drain ends).
        for l in std::mem::take(&mut self.listeners) {
            l.task.abort();
            let _ = l.task.await;
            drop(l.socket);
        }
        let open = || self.cluster.stream_count();
        if let Err(left) = daemon::wait_drained(timeout, stop, open).await {
            warn!(streams = left.streams, "{}", left.message());
        }
        // The nodes learn of the resets at once, and the applications see an RST; and that the
        // sessions are over, so that they end them now, not after their grace.
        let drivers: Vec<_> = self
            .cluster
            .nodes
            .iter()
            .map(|n| n.driver.clone())
            .collect();
        for d in &drivers {
            d.end_session();
        }
        wanmux_core::driver::close_flushed(&drivers, reset::SHUTDOWN, daemon::CLOSE_FLUSH).await;
        self.shutdown();
    }
}

/// What a client is started with besides its config.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Options {
    /// The link versions its QUIC links offer (default: `wanmux/2`, then `wanmux/1`). Tests
    /// offer `wanmux/1` only, to stand in for a client from before `wanmux/2`.
    pub quic_offer: wanmux_core::quic::Offer,
}

/// Binds every mapped port and starts the links to every node.
pub async fn start(config: ClientConfig) -> io::Result<ClientHandle> {
    start_with(config, Options::default()).await
}

/// [`start`] with `options`.
pub async fn start_with(config: ClientConfig, options: Options) -> io::Result<ClientHandle> {
    // One session secret (and id) for every node's part of the session at start.
    let secret = SessionSecret::generate();
    let session_id = SessionId(secret.id());
    let budget = Budget::new(config.limits.memory);
    let signal = BudgetSignal::default();
    let span = tracing::info_span!("session", id = %session_id);
    // One UDP socket per address family for every QUIC link to every node.
    let quic: Option<Arc<dial::QuicEndpoints>> = config.transport.may_use_quic().then(|| {
        Arc::new(dial::QuicEndpoints::offering(options.quic_offer).with_tls(config.auth.tls()))
    });
    let mut host = Vec::new();
    // Under `auto` the TCP settings matter only once a node falls back to TCP: their warnings
    // wait until then.
    let mut tcp_host = Vec::new();
    let congestion = match config.transport {
        LinkTransport::Tcp => tune::congestion(config.congestion.as_deref(), &mut host),
        LinkTransport::Auto => tune::congestion(config.congestion.as_deref(), &mut tcp_host),
        LinkTransport::Quic => None,
    };
    host.extend(tune::check_buffers(
        quic.is_some()
            .then_some(wanmux_core::quic::SOCKET_BUFFER as u64),
        config.transport == LinkTransport::Tcp,
    ));
    if config.transport == LinkTransport::Auto {
        tcp_host.extend(tune::check_buffers(None, true));
    }
    // About the host, not the session: outside its span.
    for w in &host {
        warn!(target: tune::LOG_TARGET, "{w}");
    }
    let carriers = Arc::new(carrier::Carriers::new(tcp_host));
    let dials = Arc::new(ready::Dials::default());
    let routes = Arc::new(route::Routes::default());
    let mut nodes = Vec::new();
    let mut templates = Vec::new();
    for (node, hs) in config.auth.handshakes() {
        let id = NodeId(node.id.get());
        let session = Session::with_budget(Role::Client, config.limits.into(), budget.clone());
        let (driver, _opened) = SessionDriver::start(session, &signal);
        driver.set_peer_node(id.0);
        let mut n = NodeSession::new(id, driver.clone(), secret.clone());
        n.tasks.push(tokio::spawn(
            cluster::watch_links(id, driver.clone(), n.state.clone(), config.session_grace)
                .instrument(span.clone()),
        ));
        let template = dial::Slot {
            driver,
            state: n.state.clone(),
            link: Default::default(),
            node: node.clone(),
            auth: hs.into(),
            link_seq: 0,
            index: 0,
            handshake_timeout: config.handshake_timeout,
            congestion: congestion.clone(),
            transport: config.transport,
            quic: quic.clone(),
            carriers: carriers.clone(),
            lanes: config.lanes,
            lanes_set: config.lanes_set,
            lane_streams: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            dials: dials.clone(),
            routes: routes.clone(),
        };
        templates.push(template);
        nodes.push(n);
    }
    routes.set_nodes(
        nodes
            .iter()
            .map(|n| route::RouteNode {
                id: n.id,
                driver: n.driver.clone(),
                state: n.state.clone(),
            })
            .collect(),
    );
    // The pools start once every node is known: a link asks for routed messages only if there
    // are other nodes to route to.
    for (n, template) in nodes.iter_mut().zip(templates) {
        n.tasks.push(tokio::spawn(
            pool::run(template, config.links).instrument(span.clone()),
        ));
    }
    let cluster = Arc::new(Cluster::new(nodes, config.owner, routes, dials.clone()));
    let mut maps = Vec::new();
    let mut listeners = Vec::new();
    for (i, map) in config.maps.iter().enumerate() {
        let listener = Arc::new(listen_map(i, map.listen)?);
        let addr = listener.local_addr()?;
        span.in_scope(|| info!(listen = %addr, service = %map.service.as_str(), "mapping"));
        maps.push((map.service.clone(), addr));
        let task = tokio::spawn(
            accept_loop(
                listener.clone(),
                cluster.clone(),
                map.service.clone(),
                map.spread,
                config.no_link_hold,
            )
            .instrument(span.clone()),
        );
        listeners.push(reload::Listening {
            listen: map.listen,
            socket: listener,
            task,
        });
    }
    let report = Arc::new(Report {
        cluster: cluster.clone(),
        dials: dials.clone(),
        reloads: Reloads::default(),
        started: std::time::Instant::now(),
    });
    let metrics = match config.metrics_listen {
        None => None,
        Some(addr) => {
            let listener = TcpListener::bind(addr).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen on {addr} (metrics.listen): {e}"),
                )
            })?;
            let bound = listener.local_addr()?;
            span.in_scope(|| info!(listen = %bound, "metrics endpoint"));
            let from = report.clone();
            let source: metrics::StatusSource = Arc::new(move || from.status());
            Some((bound, tokio::spawn(metrics::serve(listener, source))))
        }
    };
    let control = match &config.control_socket {
        None => None,
        Some(path) => {
            let from = report.clone();
            let source: control::StatusSource = Arc::new(move || from.status());
            let socket = ControlSocket::bind(path, source).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot create the control socket {} (control.socket): {e}",
                        path.display()
                    ),
                )
            })?;
            span.in_scope(|| info!(path = %path.display(), "control socket"));
            Some(socket)
        }
    };
    Ok(ClientHandle {
        maps,
        cluster,
        listeners,
        dials,
        carriers,
        no_link_hold: config.no_link_hold,
        metrics,
        control,
        quic,
        report,
    })
}

/// [`listen`] for `map[i]`, an error naming the address and the key.
fn listen_map(i: usize, addr: SocketAddr) -> io::Result<TcpListener> {
    listen(addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot listen on {addr} (map[{i}].listen): {e}{}",
                daemon::bind_hint(addr, &e)
            ),
        )
    })
}

/// Binds `addr` (with `SO_REUSEADDR`, as `TcpListener::bind` does) and listens with
/// [`LISTEN_BACKLOG`]. The listener has `TCP_NODELAY` and keepalive
/// ([`driver::stream::keepalive`]), which Linux passes on to every socket it accepts: system
/// calls per mapped port instead of per connection.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    driver::stream::keepalive(socket2::SockRef::from(&socket))?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn accept_loop(
    listener: Arc<TcpListener>,
    cluster: Arc<Cluster>,
    service: ServiceName,
    spread: Spread,
    hold: std::time::Duration,
) {
    let errors = daemon::AcceptErrors::new("accept failed");
    loop {
        let (tcp, peer) = daemon::accept(&listener, &errors).await;
        let Some(tcp) = cluster.room_for(tcp, peer) else {
            continue;
        };
        if cluster.live_links() > 0 {
            open(&cluster, tcp, peer, &service, spread);
            continue;
        }
        // No link to any node: hold the connection a short while for one, then refuse it.
        let (cluster, service) = (cluster.clone(), service.clone());
        tokio::spawn(
            async move {
                if cluster.wait_live(hold).await {
                    open(&cluster, tcp, peer, &service, spread);
                } else {
                    cluster.refuse(tcp, peer);
                }
            }
            .in_current_span(),
        );
    }
}

/// Opens a stream for an accepted connection on the node that owns it, and runs it.
fn open(
    cluster: &Cluster,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    service: &ServiceName,
    spread: Spread,
) {
    let node = cluster.choose(peer);
    // With one node, pin and stripe are the same: the plain OPEN keeps a node that does not know
    // OPEN_PIN working.
    let pin = spread == Spread::Pin && cluster.nodes.len() > 1;
    // Opened here, not in the stream's task: the next connection's owner is chosen by the
    // streams each node has (`owner = "least-loaded"`).
    match node
        .driver
        .open_stream(|s, now| s.open_stream_spread(now, node.id, service.as_str(), pin))
    {
        Ok(opened) => {
            debug!(%peer, stream = %opened.id(), owner = %node.id, "connection accepted");
            // Linux copies `TCP_NODELAY` from the listener (`listen`) to the accepted socket.
            #[cfg(not(target_os = "linux"))]
            let _ = tcp.set_nodelay(true);
            #[cfg(not(target_os = "linux"))]
            let _ = driver::stream::keepalive(socket2::SockRef::from(&tcp));
            let run = driver::stream::run_opened(node.driver.clone(), opened, tcp);
            tokio::spawn(run.in_current_span());
        }
        Err(e) => {
            warn!(%peer, error = %e, "cannot open stream");
            // A reset, not a close: the application must not read a clean end.
            cluster::reset(tcp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mapped port's sockets have `TCP_NODELAY` and keepalive without a system call each:
    /// Linux copies them from the listener to every socket it accepts (`open` sets them itself
    /// elsewhere).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_sockets_have_nodelay_from_the_listener() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
        // Keepalive too, with its timers: a vanished application host is found.
        let sock = socket2::SockRef::from(&accepted);
        assert!(sock.keepalive().unwrap());
        assert_eq!(
            sock.tcp_keepalive_time().unwrap(),
            driver::stream::KEEPALIVE_IDLE
        );
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            driver::stream::KEEPALIVE_INTERVAL
        );
        assert_eq!(
            sock.tcp_keepalive_retries().unwrap(),
            driver::stream::KEEPALIVE_PROBES
        );
        // The application's end is its own business.
        assert!(!app.nodelay().unwrap());
        assert!(!socket2::SockRef::from(&app).keepalive().unwrap());
    }
}
