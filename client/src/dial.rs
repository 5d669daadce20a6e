//! One link slot: dial, handshake, run the link, and when it dies dial again after an
//! exponential backoff with random jitter, so many clients that lose a server at once do not
//! come back in the same instant.
//!
//! A node may have several addresses (a host with two uplinks). Link `i` has the home address
//! `addr[i % n]`, so the links spread over them. After a failed dial, a link that died within
//! [`STABLE`] or one declared dead by ping timeout (a path gone silent), the next dial tries the
//! node's next address; after a link that worked, its home address again. A link running away
//! from home dials home now and then ([`REHOME_FIRST`]) and moves back once that succeeds, so
//! links spread again when an address comes back. With one address all of this is a no-op.

use crate::carrier::{Carriers, Plan, QUIC_ANSWER};
use crate::race;
use bytes::BytesMut;
use rand::Rng;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tracing::{debug, info, warn, Instrument};
use wanmux_config::{LinkTransport, Node};
use wanmux_core::driver::link::{LinkEnd, CLOSE_LINGER};
use wanmux_core::driver::{self, SessionDriver};
use wanmux_core::frame::{close, Frame};
use wanmux_core::ids::SessionId;
use wanmux_core::noise::{self, ClientAuth, ClientHello, SessionSecret};
use wanmux_core::quic;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A link that lived this long resets the backoff: it was a working link that died (a reset, a
/// dead path), not a server refusing us, so it is redialled at once (after the jitter). Links
/// that die sooner, and failed dials (but one that ran out its handshake timeout), double the
/// backoff. (With 10 s here, links killed every
/// second by a middlebox drifted toward ever longer redial delays: bench recovery.)
const STABLE: Duration = Duration::from_secs(1);
/// A link away from its home address first dials home again after this long (with jitter),
/// then at doubling intervals up to [`REHOME_MAX`] while home keeps failing. Short enough that an
/// uplink that comes back soon carries its share again within seconds; with the doubling, a
/// dead address costs each link one refused connect, or one handshake that times out, every
/// 30-60 s once the first few probes failed.
const REHOME_FIRST: Duration = Duration::from_secs(10);
const REHOME_MAX: Duration = Duration::from_secs(60);

/// The session as the links see it, shared by the slots: its secret and id (proved and sent in
/// every handshake) and the epoch of the server's instance of it (learnt from the first
/// handshake).
#[derive(Debug)]
pub(crate) struct SessionState {
    /// Binds the session to this client: the id is derived from it, and each link's key
    /// confirmation proves it (`docs/PROTOCOL.md`, "Key confirmation").
    pub(crate) secret: SessionSecret,
    /// `secret`'s id.
    pub(crate) id: SessionId,
    pub(crate) epoch: Option<u64>,
    /// When `epoch` was adopted: a handshake that began before it may report the epoch of a
    /// server instance that is already gone.
    pub(crate) epoch_since: Instant,
}

pub(crate) type SharedState = std::sync::Arc<std::sync::Mutex<SessionState>>;

pub(crate) fn lock(state: &SharedState) -> std::sync::MutexGuard<'_, SessionState> {
    // Only plain reads and stores run under this lock.
    state.lock().expect("session state lock poisoned")
}

#[derive(Clone)]
pub(crate) struct Slot {
    pub(crate) driver: SessionDriver,
    pub(crate) state: SharedState,
    /// The id of this slot's link while it is up, 0 while it is not.
    pub(crate) link: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub(crate) node: Node,
    pub(crate) auth: ClientAuth,
    pub(crate) link_seq: u32,
    /// The link's index in its node's pool: its home address is `node.addr[index % len]`.
    pub(crate) index: usize,
    pub(crate) handshake_timeout: Duration,
    /// TCP congestion control for the link sockets (`links.congestion`).
    pub(crate) congestion: Option<String>,
    /// What links run over (`links.transport`).
    pub(crate) transport: LinkTransport,
    /// The client's QUIC sockets; set when links may run over QUIC (`quic` or `auto`).
    pub(crate) quic: Option<std::sync::Arc<QuicEndpoints>>,
    /// Under `auto`, which node addresses fell back to TCP.
    pub(crate) carriers: std::sync::Arc<Carriers>,
    /// Dedicated lanes per node (`links.lanes`): the slots with a lower `index` have them. On
    /// QUIC such a slot's connection carries an ordinary link and a lane stream beside it
    /// (`docs/PROTOCOL.md`, "Lane streams"); on TCP, or to a node that takes no lane stream, its
    /// link is the lane, if `lanes_set`.
    pub(crate) lanes: u16,
    /// `links.lanes` was set: where there is no lane stream, a lane slot's link is a lane of its
    /// own. Unset (the default lanes), it is an ordinary link there.
    pub(crate) lanes_set: bool,
    /// The node takes lane streams: set until one of its QUIC links said otherwise (a node of
    /// an older release). Shared by the node's slots.
    pub(crate) lane_streams: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Told of every link up and failed dial: readiness, and the rate-limited `warn` log.
    pub(crate) dials: std::sync::Arc<crate::ready::Dials>,
    /// Every node of the client, for the sub-links a link carries (`route`).
    pub(crate) routes: std::sync::Arc<crate::route::Routes>,
}

/// The client's QUIC dialers (one per address family), made on first use and shared by every
/// link; each link dials from a UDP socket of its own (`quic::connect_named`).
#[derive(Debug, Default)]
pub(crate) struct QuicEndpoints {
    v4: std::sync::Mutex<Option<quic::Dialer>>,
    v6: std::sync::Mutex<Option<quic::Dialer>>,
    /// The link versions they offer.
    offer: quic::Offer,
    /// PKI mode's certificates (`[tls]`), for endpoints made from now on; a reload replaces
    /// them ([`QuicEndpoints::set_tls`]).
    tls: std::sync::Mutex<Option<wanmux_core::tls::CertFiles>>,
}

impl QuicEndpoints {
    /// Endpoints whose links offer `offer`.
    pub(crate) fn offering(offer: quic::Offer) -> QuicEndpoints {
        QuicEndpoints {
            offer,
            ..QuicEndpoints::default()
        }
    }

    /// Endpoints in PKI mode with `tls`'s certificates, if given.
    pub(crate) fn with_tls(self, tls: Option<&wanmux_core::tls::CertFiles>) -> QuicEndpoints {
        *self.tls.lock().expect("QUIC tls lock poisoned") = tls.cloned();
        self
    }

    /// PKI mode's certificates read again (a reload): the links dialled from now on present
    /// and check these; links already up keep theirs. `Err` (nothing changed) when rustls will
    /// not take them.
    pub(crate) fn set_tls(&self, tls: &wanmux_core::tls::CertFiles) -> std::io::Result<()> {
        // Taken for every endpoint, so that no endpoint gets one and another fails: the two
        // configurations are made of the same files.
        quic::client_endpoint_check(self.offer, tls)?;
        // The files first, then the endpoints made so far: an endpoint made in between (under
        // its slot's lock, reading the files) has either the new files or is updated below.
        *self.tls.lock().expect("QUIC tls lock poisoned") = Some(tls.clone());
        for slot in [&self.v4, &self.v6] {
            // Only a configuration swap runs under this lock.
            if let Some(ep) = &*slot.lock().expect("QUIC endpoint lock poisoned") {
                ep.set_pki(tls)?;
            }
        }
        Ok(())
    }

    fn for_peer(&self, peer: SocketAddr) -> std::io::Result<quic::Dialer> {
        let (slot, local): (_, SocketAddr) = if peer.is_ipv4() {
            (&self.v4, (std::net::Ipv4Addr::UNSPECIFIED, 0).into())
        } else {
            (&self.v6, (std::net::Ipv6Addr::UNSPECIFIED, 0).into())
        };
        // Only creation and a clone run under this lock.
        let mut slot = slot.lock().expect("QUIC endpoint lock poisoned");
        if let Some(ep) = &*slot {
            return Ok(ep.clone());
        }
        let tls = self.tls.lock().expect("QUIC tls lock poisoned").clone();
        let ep = quic::client_endpoint_with(local, self.offer, tls.as_ref())?;
        *slot = Some(ep.clone());
        Ok(ep)
    }
}

impl SessionState {
    /// A new session: a new secret and its id, no epoch yet.
    pub(crate) fn new(secret: SessionSecret) -> SessionState {
        SessionState {
            id: SessionId(secret.id()),
            secret,
            epoch: None,
            epoch_since: Instant::now(),
        }
    }
}

impl Slot {
    /// This slot's link is a dedicated interactive lane (`links.lanes`).
    fn is_lane(&self) -> bool {
        self.index < usize::from(self.lanes)
    }

    pub(crate) async fn run(self) {
        let mut backoff = BACKOFF_MIN;
        let mut first = BytesMut::new();
        // The key-confirmation message carries one ping (PROTOCOL.md); its pong is ignored.
        Frame::Ping(u64::MAX).encode(&mut first);
        let addrs: Vec<String> = self.node.addr.iter().map(ToString::to_string).collect();
        let mut pick = AddrPick::new(self.index, addrs.len());
        // A link to the home address that a probe brought up, to run next.
        let mut probed = None;
        loop {
            if self.driver.is_ending() {
                // The session is over (the client stops): a new link would start it afresh.
                return;
            }
            let started = Instant::now();
            // Whether a link came up on this turn and lived `STABLE`.
            let mut lived = false;
            let addr = &addrs[pick.at];
            let dialed = match probed.take() {
                Some(d) => Some(d),
                None => self.connect(addr, &first).await,
            };
            if self.driver.is_ending() {
                // The client stopped while this link was on its way.
                return;
            }
            match dialed {
                None => pick.failed(),
                Some(Up {
                    reader,
                    writer,
                    via,
                    relay,
                    lane,
                }) => {
                    self.dials.link_up();
                    let up = Instant::now();
                    let link = self.link.clone();
                    let (driver, address) = (self.driver.clone(), addr.clone());
                    let carrier = via.carrier;
                    let set = move |id: wanmux_core::ids::LinkId| {
                        link.store(id.0, Relaxed);
                        let label = driver::LinkLabel {
                            address,
                            transport: via.carrier,
                            probe: via.probe,
                        };
                        driver.label_link(id, label);
                    };
                    // With a lane stream beside it, the connection's own link is an ordinary one,
                    // as it is where there is none unless lanes were set (`dial`).
                    let link_is_lane = self.is_lane() && lane.is_none() && self.lanes_set;
                    let router = relay.then(|| self.router(link_is_lane));
                    let link = driver::link::run_routed(
                        self.driver.clone(),
                        reader,
                        writer,
                        None,
                        link_is_lane,
                        set,
                        router,
                    );
                    let lane = lane.map(|l| self.run_lane_stream(l, addr, carrier));
                    // The link's lines (its end above all) say which node and address it was.
                    // With the session id this node knows, which changes when the node's part
                    // of the session starts afresh (`cluster::watch_links`).
                    let session = lock(&self.state).id;
                    let span = tracing::info_span!("node", id = %self.node.id, %addr, %session);
                    let run = both(link, lane).instrument(span);
                    let end = if pick.at_home() {
                        Some(run.await)
                    } else {
                        // Dropping `run` closes this link and queues what it carried unconfirmed
                        // for the other links, as for any link death.
                        tokio::select! {
                            end = run => Some(end),
                            d = self.rehome(&addrs[pick.home], &first) => {
                                probed = Some(d);
                                None
                            }
                        }
                    };
                    let Some(end) = end else {
                        // `link` keeps the old id until the new link stores its own, so the pool
                        // never sees this slot without a link.
                        info!(
                            node = %self.node.id, %addr, home = %addrs[pick.home],
                            link_seq = self.link_seq, "link down: moving back to its home address"
                        );
                        pick.worked();
                        backoff = BACKOFF_MIN;
                        continue;
                    };
                    self.link.store(0, Relaxed);
                    // The link task logged the end at info level, with the link's numbers.
                    debug!(node = %self.node.id, %addr, %end, "link down");
                    if let Some(why) = match end {
                        LinkEnd::PeerClosed(code) => close::refusal(code),
                        _ => None,
                    } {
                        // The node refused the link its session (a limit of its own): a failed
                        // dial (it backs off below), and the warn line says which limit.
                        self.dials.session_refused(self.node.id, addr, why);
                    }
                    lived = up.elapsed() >= STABLE;
                    if lived && !matches!(end, LinkEnd::TimedOut) {
                        pick.worked();
                    } else {
                        pick.failed();
                    }
                }
            }
            backoff = backoff_after(backoff, lived, started.elapsed(), self.handshake_timeout);
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Dials `addr` and checks the epoch the node reports; `None` (logged at debug) when no
    /// link that may join the session came of it.
    async fn connect(&self, addr: &str, first: &[u8]) -> Option<Up> {
        let started = Instant::now();
        match self.dial(addr, first).await {
            Ok(d) if !self.check_epoch(d.epoch, started, d.session_id) => {
                debug!(node = %self.node.id, %addr, "link to a replaced server instance dropped");
                None
            }
            Ok(d) => {
                info!(
                    node = %self.node.id, %addr, link_seq = self.link_seq,
                    transport = d.via.carrier, relay = d.relay, "link up"
                );
                Some(Up {
                    reader: d.reader,
                    writer: d.writer,
                    via: d.via,
                    relay: d.relay,
                    lane: d.lane,
                })
            }
            Err(e) => {
                self.dials.failed(
                    self.node.id,
                    addr,
                    &e,
                    self.transport == LinkTransport::Quic,
                );
                None
            }
        }
    }

    /// Runs beside a link that is away from its home address: dials home after
    /// [`REHOME_FIRST`], then at doubling intervals up to [`REHOME_MAX`], each with jitter, and
    /// returns the first link that comes up.
    async fn rehome(&self, home: &str, first: &[u8]) -> Up {
        let mut wait = REHOME_FIRST;
        loop {
            tokio::time::sleep(jitter(wait)).await;
            if let Some(link) = self.connect(home, first).await {
                return link;
            }
            wait = (wait * 2).min(REHOME_MAX);
        }
    }

    /// A link to a server that no longer has our session (it restarted, or its grace period
    /// ran out) reports a new epoch: the streams it carried are gone there, so they are reset
    /// here and the session starts afresh before the link joins it.
    ///
    /// Returns `false` for a link that must not join: its handshake began before the current
    /// epoch was adopted and reports another one, so it reached a server instance that has
    /// since been replaced (a restart racing with this dial). Such a link is dropped and dialled
    /// again rather than allowed to reset the session a second time.
    fn check_epoch(&self, epoch: u64, dial_started: Instant, id: SessionId) -> bool {
        let mut state = lock(&self.state);
        if state.id != id {
            // The client gave up on the session this dial was for while it was under way.
            return false;
        }
        match state.epoch {
            Some(e) if e == epoch => true,
            Some(_) if dial_started < state.epoch_since => false,
            Some(_) => {
                // A warning when it cost connections; a node that restarted while it carried
                // none is news, not trouble.
                let streams = self.driver.with(|s, _| s.stream_count());
                if streams > 0 {
                    warn!(node = %self.node.id, streams, "the node lost this session (it restarted): the connections it owned are reset");
                } else {
                    info!(node = %self.node.id, "the node lost this session (it restarted); it had no connections of this client");
                }
                self.driver.restart();
                state.epoch = Some(epoch);
                state.epoch_since = Instant::now();
                true
            }
            None => {
                state.epoch = Some(epoch);
                state.epoch_since = Instant::now();
                true
            }
        }
    }

    async fn dial(&self, addr: &str, first: &[u8]) -> Result<Dialed, noise::LinkError> {
        let (session_id, session) = {
            let state = lock(&self.state);
            (state.id, state.secret.clone())
        };
        // The lane this slot wants: a lane stream on QUIC; where there is none, `dial_tcp` and
        // `noise_over_quic` make the link itself the lane only if lanes were set.
        let hello = ClientHello {
            session,
            link_seq: self.link_seq,
            lane: self.is_lane(),
            // Sections for other owners only make sense with other nodes to route to.
            relay: self.routes.node_count() > 1,
        };
        let ((mut reader, mut writer, server), via, lane) = match self.transport {
            LinkTransport::Tcp => (self.dial_tcp(addr, &hello, first).await?, Via::TCP, None),
            LinkTransport::Quic => {
                let stream = self.quic_carrier(addr, self.handshake_timeout).await?;
                self.noise_over_quic(stream, &hello, first).await?
            }
            LinkTransport::Auto => self.dial_auto(addr, &hello, first).await?,
        };
        if server.node_id != self.node.id.get() {
            // Frames for streams this node does not own would be refused; say so plainly.
            // `Dials` reports it at warn, rate-limited.
            debug!(expected = %self.node.id, got = server.node_id, "node id mismatch");
            refuse_node(&mut reader, &mut writer).await;
            return Err(noise::LinkError::Protocol("node id mismatch"));
        }
        let lane = match lane {
            None => None,
            // The same connection, so the same node instance: anything else is a broken node.
            Some((_, _, s)) if s.node_id != server.node_id || s.epoch != server.epoch => {
                return Err(noise::LinkError::Protocol(
                    "the lane stream's node or epoch differs from its link's",
                ));
            }
            Some((reader, writer, s)) => Some(LaneStream {
                reader,
                writer,
                relay: s.relay && self.routes.node_count() > 1,
            }),
        };
        Ok(Dialed {
            reader,
            writer,
            epoch: server.epoch,
            session_id,
            via,
            relay: server.relay && self.routes.node_count() > 1,
            lane,
        })
    }

    /// The router of a link of this slot that carries routed messages; `lane`: the link is a
    /// dedicated lane.
    fn router(&self, lane: bool) -> std::sync::Arc<dyn driver::link::Router> {
        self.routes
            .router(wanmux_core::ids::NodeId(self.node.id.get()), lane)
    }

    /// Runs the lane stream beside this slot's link (`docs/PROTOCOL.md`, "Lane streams") until
    /// it ends.
    fn run_lane_stream(
        &self,
        lane: LaneStream,
        addr: &str,
        transport: &'static str,
    ) -> impl std::future::Future<Output = LinkEnd> + use<> {
        let (driver, address) = (self.driver.clone(), addr.to_string());
        let label = move |id: wanmux_core::ids::LinkId| {
            // The connection's counts go with its link's row.
            let probe = None;
            driver.label_link(
                id,
                driver::LinkLabel {
                    address,
                    transport,
                    probe,
                },
            );
        };
        let router = lane.relay.then(|| self.router(true));
        driver::link::run_routed(
            self.driver.clone(),
            lane.reader,
            lane.writer,
            None,
            true,
            label,
            router,
        )
    }
}

/// A link and the lane stream beside it, if any, until either ends: the one that ends first
/// ends the other too (they share the QUIC connection, which the first one's end closes). When
/// the node ended the first in order (it finished the stream: [`LinkEnd::Closed`]), the other
/// gets up to [`CLOSE_LINGER`] to read what the node sent on it before its own end.
async fn both(
    link: impl std::future::Future<Output = LinkEnd>,
    lane: Option<impl std::future::Future<Output = LinkEnd>>,
) -> LinkEnd {
    let Some(lane) = lane else {
        return link.await;
    };
    tokio::pin!(link, lane);
    let (end, link_ended) = tokio::select! {
        end = &mut link => (end, true),
        end = &mut lane => (end, false),
    };
    if matches!(end, LinkEnd::Closed) {
        if link_ended {
            let _ = tokio::time::timeout(CLOSE_LINGER, lane).await;
        } else {
            let _ = tokio::time::timeout(CLOSE_LINGER, link).await;
        }
    }
    end
}

impl Slot {
    /// A TCP connection to `addr` and the Noise handshake over it.
    async fn dial_tcp(
        &self,
        addr: &str,
        hello: &ClientHello,
        first: &[u8],
    ) -> Result<Handshaken, noise::LinkError> {
        let timeout = self.handshake_timeout;
        let hello = &self.without_lane_stream(hello);
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| noise::LinkError::Timeout)??;
        if let Some(cc) = &self.congestion {
            if let Err(e) = noise::set_congestion(&tcp, cc) {
                warn!(congestion = %cc, error = %e, "cannot set the link's congestion control");
            }
        }
        noise::connect(tcp, &self.auth, hello, first, timeout).await
    }

    /// A QUIC connection to `addr` whose handshake completed within `within`, with its stream
    /// open: `Timeout` when the node did not answer.
    async fn quic_carrier(
        &self,
        addr: &str,
        within: Duration,
    ) -> Result<quic::Stream, noise::LinkError> {
        let Some(endpoints) = &self.quic else {
            return Err(noise::LinkError::Protocol("no QUIC endpoint"));
        };
        let peers = tokio::time::timeout(self.handshake_timeout, tokio::net::lookup_host(addr))
            .await
            .map_err(|_| noise::LinkError::Timeout)??;
        // Every address of the name, in the resolver's order, each a moment after the last:
        // QUIC to an address where nothing listens gets no answer (see `race`).
        let attempts = peers
            .map(
                |peer| -> race::Attempt<'_, quic::Stream, noise::LinkError> {
                    Box::pin(async move {
                        let endpoint = endpoints.for_peer(peer)?;
                        match &self.auth {
                            // PKI mode: the node's certificate must carry this name.
                            ClientAuth::Pki { server_name } => {
                                quic::connect_named(&endpoint, peer, server_name, within).await
                            }
                            _ => quic::connect(&endpoint, peer, within).await,
                        }
                    })
                },
            )
            .collect();
        let none = noise::LinkError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the node's host name has no address",
        ));
        race::first_success(attempts, race::NEXT_ADDRESS_AFTER, none).await
    }

    /// `hello` for a link with no lane stream beside it (TCP, or a node that takes none): the
    /// link itself is the slot's lane only if lanes were set.
    fn without_lane_stream(&self, hello: &ClientHello) -> ClientHello {
        ClientHello {
            lane: hello.lane && self.lanes_set,
            ..hello.clone()
        }
    }

    /// The Noise handshake on a QUIC link's stream (bound to its TLS connection on `wanmux/2`),
    /// and what the link runs over as status names it. For a lane (`hello.lane`), the link is
    /// an ordinary one and the lane a second stream beside it, with a handshake of its own
    /// (`docs/PROTOCOL.md`, "Lane streams"), unless the node takes no lane stream: then, with
    /// lanes set, this dial fails and the next one makes the link itself the lane, as on TCP;
    /// with the default lanes the link is kept and lanes are reserved on demand.
    async fn noise_over_quic(
        &self,
        stream: quic::Stream,
        hello: &ClientHello,
        first: &[u8],
    ) -> Result<Carried, noise::LinkError> {
        let transport = Via {
            carrier: stream.version().transport(),
            probe: Some(stream.sibling().probe()),
        };
        let timeout = self.handshake_timeout;
        if !(hello.lane && self.lane_streams.load(Relaxed)) {
            let own = self.without_lane_stream(hello);
            let link = stream.connect(&self.auth, &own, first, timeout).await?;
            return Ok((link, transport, None));
        }
        let sibling = stream.sibling();
        let ordinary = ClientHello {
            lane: false,
            ..hello.clone()
        };
        let link = stream
            .connect(&self.auth, &ordinary, first, timeout)
            .await?;
        let Some(lane) = sibling.open().await? else {
            self.lane_streams.store(false, Relaxed);
            if !self.lanes_set {
                // The default lanes: none of their own; this link is what the slot gets.
                info!(
                    node = %self.node.id,
                    "the node takes no lane stream (an older release): lanes are reserved on \
                     demand (set links.lanes for lanes that are links of their own)"
                );
                return Ok((link, transport, None));
            }
            info!(
                node = %self.node.id,
                "the node takes no lane stream (an older release): its dedicated lanes are QUIC \
                 connections of their own"
            );
            return Err(noise::LinkError::Protocol(
                "the node takes no lane stream; the lane is dialled again as a link of its own",
            ));
        };
        let lane = lane.connect(&self.auth, hello, first, timeout).await?;
        Ok((link, transport, Some(lane)))
    }

    /// `links.transport = "auto"`: QUIC if `addr` answers it within [`QUIC_ANSWER`], else TCP;
    /// see `carrier`.
    async fn dial_auto(
        &self,
        addr: &str,
        hello: &ClientHello,
        first: &[u8],
    ) -> Result<Carried, noise::LinkError> {
        let node = self.node.id;
        let probe = match self.carriers.plan(addr, Instant::now()) {
            Plan::Tcp => return Ok((self.dial_tcp(addr, hello, first).await?, Via::TCP, None)),
            Plan::QuicFirst { probe } => probe,
        };
        match self
            .quic_carrier(addr, QUIC_ANSWER.min(self.handshake_timeout))
            .await
        {
            Ok(stream) => {
                self.carriers.quic_answered(&node, addr);
                self.noise_over_quic(stream, hello, first).await
            }
            // No answer, or UDP cannot be sent there: TCP may still get through.
            Err(quic_error @ (noise::LinkError::Timeout | noise::LinkError::Io(_))) => {
                debug!(%node, %addr, error = %quic_error, probe, "no QUIC answer; dialling TCP");
                let tcp = self.dial_tcp(addr, hello, first).await?;
                // TCP works now; QUIC did not a moment ago, which may have been the node not
                // being up yet (a restart, a client started first). Only QUIC unanswered now,
                // with the node up, says that UDP does not get through.
                match self
                    .quic_carrier(addr, QUIC_ANSWER.min(self.handshake_timeout))
                    .await
                {
                    Ok(stream) => {
                        debug!(%node, %addr, "QUIC answers now: the node was not up before");
                        self.carriers.quic_answered(&node, addr);
                        drop(tcp);
                        self.noise_over_quic(stream, hello, first).await
                    }
                    Err(noise::LinkError::Timeout | noise::LinkError::Io(_)) => {
                        self.carriers
                            .fall_back(&node, addr, &quic_error.to_string());
                        Ok((tcp, Via::TCP, None))
                    }
                    // QUIC answered and then failed: the node's answer, not a blocked path.
                    Err(_) => Ok((tcp, Via::TCP, None)),
                }
            }
            // QUIC answered and then failed: that is the node's answer, not a blocked path.
            Err(e) => Err(e),
        }
    }
}

/// What a link's handshake gives: its halves and what the node said about itself.
type Handshaken = (noise::LinkReader, noise::LinkWriter, noise::ServerHello);

/// A dial's link, what it runs over, and the lane stream's link beside it, if any.
type Carried = (Handshaken, Via, Option<Handshaken>);

/// What a link runs over, as `status` shows it: [`TCP`], `quic` or `quic+noise`
/// ([`quic::Version::transport`]), and on QUIC the connection's counts.
struct Via {
    carrier: &'static str,
    probe: Option<quic::PathProbe>,
}

impl Via {
    const TCP: Via = Via {
        carrier: TCP,
        probe: None,
    };
}

/// The link of a lane stream, beside a slot's link on the same QUIC connection.
struct LaneStream {
    reader: noise::LinkReader,
    writer: noise::LinkWriter,
    /// The node agreed to routed messages on it.
    relay: bool,
}

/// A TCP link's transport, as the `link up` line names it (a QUIC link's is its
/// [`quic::Version::transport`]).
const TCP: &str = "tcp";

/// A link that completed its handshake with the node.
struct Dialed {
    reader: noise::LinkReader,
    writer: noise::LinkWriter,
    /// The node's epoch (a restarted node has a new one).
    epoch: u64,
    /// The session id the link was dialled for.
    session_id: SessionId,
    /// What the link runs over.
    via: Via,
    /// The node agreed to routed messages on this link.
    relay: bool,
    /// The lane stream beside it.
    lane: Option<LaneStream>,
}

/// A link up and ready to join the session: [`Dialed`] less what joining checked.
struct Up {
    reader: noise::LinkReader,
    writer: noise::LinkWriter,
    /// What the link runs over.
    via: Via,
    /// The node agreed to routed messages on this link.
    relay: bool,
    /// The lane stream beside it.
    lane: Option<LaneStream>,
}

/// The backoff before a slot's next dial, given the current one, whether a link came up on the
/// turn and lived [`STABLE`], and how long the turn took: back to [`BACKOFF_MIN`] after such a
/// link, or after a dial that ran out its whole handshake timeout (it spaced itself out);
/// unchanged (to be doubled after the wait) after a dial that failed sooner, however long it
/// took. (Reset once a turn took `STABLE`, the wait for a node that answered with another node
/// id to close the link, about a second on QUIC, reset it every time: a trial's client redialled
/// such a node about once a second per link, each attempt a `warn` line at the node.)
fn backoff_after(backoff: Duration, lived: bool, took: Duration, timeout: Duration) -> Duration {
    if lived || took >= timeout {
        BACKOFF_MIN
    } else {
        backoff
    }
}

/// Full jitter: a time drawn uniformly from `[d/2, d]`.
fn jitter(d: Duration) -> Duration {
    rand::rng().random_range(d / 2..=d)
}

/// Which of a node's addresses a link slot dials next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AddrPick {
    /// The slot's home address, `index % count`.
    home: usize,
    /// The address of the current (or next) dial.
    at: usize,
    count: usize,
}

impl AddrPick {
    /// Starts at the home address of link `index` of a node with `count` addresses (at least
    /// one).
    fn new(index: usize, count: usize) -> Self {
        let count = count.max(1);
        let home = index % count;
        Self {
            home,
            at: home,
            count,
        }
    }

    fn at_home(&self) -> bool {
        self.at == self.home
    }

    /// The address did not give a lasting link: try the next one.
    fn failed(&mut self) {
        self.at = (self.at + 1) % self.count;
    }

    /// A link worked for a while and ended: dial home first.
    fn worked(&mut self) {
        self.at = self.home;
    }
}

/// Tells a node that answered with another node id than the one this client has for the
/// address it dialled that the link will not be used (`CLOSE` code `WRONG_NODE`), so that the
/// node's log says why, and waits for the node to close it, at most [`CLOSE_LINGER`]: a QUIC
/// connection dropped at once would discard that frame, and the key confirmation before it,
/// and the node would read the close as a client that could not decrypt its reply.
async fn refuse_node(reader: &mut noise::LinkReader, writer: &mut noise::LinkWriter) {
    let mut msg = BytesMut::new();
    Frame::Close(close::WRONG_NODE).encode(&mut msg);
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        if writer.send(&msg).await.is_ok() {
            writer.shutdown().await;
            while let Ok(Some(_)) = reader.recv().await {}
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::AddrPick;

    /// Failed dials double the backoff however long they took, up to a dial that ran out its
    /// handshake timeout; a link that lived resets it.
    #[test]
    fn a_dial_refused_slowly_still_backs_off() {
        use super::{backoff_after, BACKOFF_MIN};
        use std::time::Duration;
        let ms = Duration::from_millis;
        let timeout = Duration::from_secs(10);
        // A node with another node id: each refusal takes about a second (the close's wait).
        assert_eq!(backoff_after(ms(800), false, ms(1_100), timeout), ms(800));
        assert_eq!(backoff_after(ms(800), false, ms(5), timeout), ms(800));
        assert_eq!(backoff_after(ms(800), false, timeout, timeout), BACKOFF_MIN);
        assert_eq!(backoff_after(ms(800), true, ms(5), timeout), BACKOFF_MIN);
    }

    #[test]
    fn links_spread_over_addresses_and_fail_over_in_turn() {
        let homes: Vec<_> = (0..5).map(|i| AddrPick::new(i, 2).at).collect();
        assert_eq!(homes, [0, 1, 0, 1, 0]);

        let mut p = AddrPick::new(4, 3);
        assert_eq!((p.home, p.at), (1, 1));
        let mut tried = Vec::new();
        for _ in 0..4 {
            p.failed();
            tried.push(p.at);
        }
        assert_eq!(tried, [2, 0, 1, 2], "every address in turn, home included");
        assert!(!p.at_home());
        p.worked();
        assert!(p.at_home());
    }

    #[test]
    fn one_address_is_always_home() {
        let mut p = AddrPick::new(7, 1);
        p.failed();
        assert_eq!(p.at, 0);
        assert!(p.at_home());
        // A node has at least one address; a count of 0 is treated as one rather than dividing by it.
        assert_eq!(AddrPick::new(3, 0).at, 0);
    }
}
