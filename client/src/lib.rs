//! wanmux-client: the client daemon as a library, so tests and the demo can run it in-process.
//!
//! The client holds one session. It keeps `links.min` to `links.max` Noise links to the server
//! node (more while every link is busy, see `pool`), spread over the node's addresses, each
//! reconnecting with exponential backoff and jitter when it dies (to another of the node's
//! addresses when its own fails, see `dial`), and listens on every mapped local port. Each accepted connection becomes a stream of the session, opened to the mapped
//! service by name; its frames spread over every link. Because the session outlives its links,
//! a connection survives link deaths as long as one link comes back within the server's grace
//! period.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod dial;
mod hold;
mod pool;
mod ready;
mod reload;

use rand::Rng;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};
use wanmux_config::{ClientConfig, LinkTransport, ServiceName};
use wanmux_core::budget::Budget;
use wanmux_core::daemon;
use wanmux_core::driver::{self, BudgetSignal, SessionDriver};
use wanmux_core::engine::{Role, Session};
use wanmux_core::frame::reset;
use wanmux_core::ids::{NodeId, SessionId};

/// Accept queue length of each mapped port (the kernel caps it at `net.core.somaxconn`). The
/// default of std and tokio, 128, overflows when a burst of connections arrives at once (a
/// game server's players reconnecting): the kernel then falls back to SYN cookies and drops or
/// resets some of them.
const LISTEN_BACKLOG: u32 = 4096;

/// A running client.
#[derive(Debug)]
pub struct ClientHandle {
    maps: Vec<(ServiceName, SocketAddr)>,
    driver: SessionDriver,
    /// The mapped ports and their accept loops, in the order of `maps`.
    listeners: Vec<reload::Listening>,
    /// Link slots and the link watcher.
    tasks: Vec<JoinHandle<()>>,
    /// Whether the links' first dials settled, and the log of failed dials.
    dials: Arc<ready::Dials>,
    /// What happens to connections accepted while no link is up (`client.link_wait_ms`).
    no_link: Arc<hold::NoLink>,
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

    /// Links currently up.
    pub fn live_links(&self) -> usize {
        self.driver.live_links()
    }

    /// Waits until at least `n` links are up.
    pub async fn wait_for_links(&self, n: usize) {
        loop {
            let changed = self.driver.links_changed();
            if self.driver.live_links() >= n {
                return;
            }
            changed.await;
        }
    }

    /// Waits until a link is up or a dial has failed (its reason logged): what the service
    /// manager is told the client is ready on.
    pub async fn wait_first_dial(&self) {
        self.dials.wait_settled().await
    }

    /// Streams open now.
    pub fn stream_count(&self) -> usize {
        self.driver.with(|s, _| s.stream_count())
    }

    /// The largest receive and send buffer of any one stream in the engine, bytes (each is
    /// bounded by `limits.stream_window`).
    pub fn max_stream_buffered(&self) -> (u64, u64) {
        self.driver.with(|s, _| s.max_stream_buffered())
    }

    /// Stream bytes the session queued again because a link died before the server confirmed
    /// them.
    pub fn resent_bytes(&self) -> u64 {
        self.driver.with(|s, _| s.resent_bytes())
    }

    /// The daemon's memory budget (`limits.memory`) and what the session holds of it.
    pub fn budget(&self) -> Budget {
        self.driver.with(|s, _| s.budget().clone())
    }

    /// Stops listening, resets every stream and drops every link.
    pub fn shutdown(self) {
        for t in self.listeners.iter().map(|l| &l.task).chain(&self.tasks) {
            t.abort();
        }
        self.driver.close(reset::SHUTDOWN);
    }

    /// Graceful stop: closes the mapped ports at once, lets open connections finish for up to
    /// `timeout`, then shuts down (resetting what is left).
    pub async fn drain(self, timeout: std::time::Duration) {
        for l in &self.listeners {
            l.task.abort();
        }
        let open = || self.driver.with(|s, _| s.stream_count());
        if let Err(left) = daemon::wait_drained(timeout, open).await {
            warn!(
                streams = left,
                "drain timeout: resetting the streams still open"
            );
        }
        self.shutdown();
    }
}

/// Binds every mapped port and starts the links.
pub async fn start(config: ClientConfig) -> io::Result<ClientHandle> {
    let session_id = SessionId(rand::rng().random());
    let budget = Budget::new(config.limits.memory);
    let session = Session::with_budget(Role::Client, config.limits.into(), budget);
    let (driver, _opened) = SessionDriver::start(session, &BudgetSignal::default());
    let span = tracing::info_span!("session", id = %session_id);
    let mut tasks = Vec::new();
    let mut maps = Vec::new();
    let mut listeners = Vec::new();
    let no_link = Arc::new(hold::NoLink::new(config.link_wait));
    for (i, map) in config.maps.iter().enumerate() {
        let listener = listen(map.listen).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot listen on {} (map[{i}].listen): {e}{}",
                    map.listen,
                    daemon::bind_hint(map.listen, &e)
                ),
            )
        })?;
        let addr = listener.local_addr()?;
        span.in_scope(|| info!(listen = %addr, service = %map.service.as_str(), "mapping"));
        maps.push((map.service.clone(), addr));
        let (driver, service) = (driver.clone(), map.service.clone());
        let listener = Arc::new(listener);
        let task = tokio::spawn(
            accept_loop(
                listener.clone(),
                driver,
                service,
                owner(&config),
                no_link.clone(),
            )
            .instrument(span.clone()),
        );
        listeners.push(reload::Listening {
            listen: map.listen,
            socket: listener,
            task,
        });
    }
    let dials = Arc::new(ready::Dials::default());
    let state = std::sync::Arc::new(std::sync::Mutex::new(dial::SessionState {
        id: session_id,
        epoch: None,
        epoch_since: std::time::Instant::now(),
    }));
    tasks.push(tokio::spawn(
        watch_links(driver.clone(), state.clone(), config.session_grace).instrument(span.clone()),
    ));
    if let Some((node, hs)) = config.auth.handshakes().next() {
        if config.auth.nodes().count() > 1 {
            warn!(
                "several nodes configured; this version dials only node {}",
                node.id
            );
        }
        let template = dial::Slot {
            driver: driver.clone(),
            state: state.clone(),
            link: Default::default(),
            node: node.clone(),
            auth: hs.into(),
            link_seq: 0,
            index: 0,
            handshake_timeout: config.handshake_timeout,
            congestion: config.congestion.clone(),
            quic: (config.transport == LinkTransport::Quic).then(Default::default),
            lanes: config.lanes,
            dials: dials.clone(),
        };
        tasks.push(tokio::spawn(
            pool::run(template, config.links).instrument(span.clone()),
        ));
    }
    Ok(ClientHandle {
        maps,
        driver,
        listeners,
        tasks,
        dials,
        no_link,
    })
}

/// The node that owns the streams the client opens. Multi-node clusters need relaying between
/// nodes, which is not built yet: every stream is owned by the first node and only that node is
/// dialled.
fn owner(config: &ClientConfig) -> NodeId {
    NodeId(config.auth.nodes().next().map_or(1, |n| n.id.get()))
}

/// Binds `addr` (with `SO_REUSEADDR`, as `TcpListener::bind` does) and listens with
/// [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// With no link for `client.session_grace_ms` (below the servers' grace), the session is given
/// up: reset the open connections rather than leave them hanging, and start afresh under a new
/// session id.
async fn watch_links(driver: SessionDriver, state: dial::SharedState, grace: std::time::Duration) {
    loop {
        let changed = driver.links_changed();
        if driver.live_links() > 0 {
            changed.await;
            continue;
        }
        if tokio::time::timeout(grace, changed).await.is_err() && driver.live_links() == 0 {
            warn!(
                "no link for {} s; open connections are reset",
                grace.as_secs_f64()
            );
            driver.restart();
            let mut st = dial::lock(&state);
            st.id = SessionId(rand::rng().random());
            st.epoch = None;
            st.epoch_since = std::time::Instant::now();
        }
    }
}

async fn accept_loop(
    listener: Arc<TcpListener>,
    driver: SessionDriver,
    service: ServiceName,
    owner: NodeId,
    no_link: Arc<hold::NoLink>,
) {
    loop {
        let (tcp, peer) = daemon::accept(&listener, |e| warn!(error = %e, "accept failed")).await;
        if driver.live_links() == 0 {
            // Held in a task of its own, so the loop accepts on meanwhile.
            let (driver, service, no_link) = (driver.clone(), service.clone(), no_link.clone());
            let held = async move {
                if no_link.wait_for_link(&driver).await {
                    open(&driver, tcp, peer, &service, owner);
                } else {
                    no_link.refuse(tcp, peer);
                }
            };
            tokio::spawn(held.in_current_span());
            continue;
        }
        open(&driver, tcp, peer, &service, owner);
    }
}

/// Opens a stream to `service` for the connection `tcp` from `peer` and starts its task.
fn open(
    driver: &SessionDriver,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    service: &ServiceName,
    owner: NodeId,
) {
    match driver.with(|s, now| s.open_stream(now, owner, service.as_str())) {
        Ok(id) => {
            debug!(%peer, stream = %id, "connection accepted");
            tokio::spawn(driver::stream::run(driver.clone(), id, tcp).in_current_span());
        }
        Err(e) => warn!(%peer, error = %e, "cannot open stream"),
    }
}
