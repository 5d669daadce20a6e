//! The server's session table and what each session does with the streams its client opens.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tracing::{debug, info, Instrument};
use wanmux_config::{ServerConfig, Service};
use wanmux_core::budget::{Budget, Pool};
use wanmux_core::driver::link::{LinkEnd, LINK_RECV_MEMORY, LINK_SEND_MEMORY};
use wanmux_core::driver::{self, BudgetSignal, Counters, OpenedStreams, SessionDriver};
use wanmux_core::engine::{Role, Session};
use wanmux_core::frame::{close, reset, Frame};
use wanmux_core::ids::{NodeId, SessionId, StreamId};
use wanmux_core::keys::PublicKey;
use wanmux_core::lograte::LineBudget;
use wanmux_core::noise::{Accepted, Identity, LinkError, ReceivedHello, ReplayGuard, ServerHello};
use wanmux_core::status::{SessionStatus, Status};

/// Why a link that authenticated was refused where it joins: a reload removed its key meanwhile.
const KEY_REMOVED: &str = "its client key was removed from allowed_clients during its handshake";

/// Why a certificate client's link cannot join: a reload replaced the client CA or the
/// revocation lists after its TLS handshake checked the certificate. The client dials again,
/// and the new checks apply (a trial's revoked certificate kept a link so).
const RECHECKED: &str = "the client CA or revocation lists changed during its handshake: its \
                         client dials again and is checked against them";

/// A session is found by the client's static key (none in PSK mode) and its session id, so one
/// client cannot join another's session by guessing its id.
pub(crate) type Key = (Option<PublicKey>, SessionId);

/// How long an expired session's id is remembered (see `Sessions::tombstones`).
const TOMBSTONE_TTL: Duration = Duration::from_secs(600);
/// The most sessions remembered as ended (`Sessions::tombstones`): about 100 bytes each.
const MAX_TOMBSTONES: usize = 16_384;

/// A session in the table: its driver, whose it is, how many links it has, and the budget
/// account it draws on (its client's).
#[derive(Debug)]
struct Entry {
    driver: SessionDriver,
    client: Option<PublicKey>,
    /// `client` is a certificate's identity (PKI mode).
    pki: bool,
    links: Arc<AtomicU32>,
    budget: Budget,
}

/// Why a link was refused where it joins: its client's share of `limits.memory` cannot cover
/// the link's buffers (see [`LinkCharge`]).
pub(crate) const NO_MEMORY: &str = "its client's share of limits.memory cannot cover one more link";
/// Why a link cannot join its session: its client ended the session (it stopped) as the link
/// was on its way.
const SESSION_OVER: &str = "its client ended the session";
/// Why a link cannot join its session: the session has as many links as it may.
const MAX_LINKS: &str = "its session has limits.max_links_per_session links";
/// Why a link cannot start a session: the node has as many as it may.
const MAX_SESSIONS: &str = "the node has limits.max_sessions sessions";
/// Why a link cannot start a session: its client has as many here as it may.
const MAX_CLIENT_SESSIONS: &str = "its client has limits.max_sessions_per_client sessions on this \
     node (a client that restarts leaves its old sessions for server.session_grace_ms, unless it \
     stopped in order)";

/// One link's place in its session's count (`limits.max_links_per_session`), given back on
/// drop.
#[derive(Debug)]
struct LinkSlot(Arc<AtomicU32>);

impl LinkSlot {
    /// A slot in `links`, if it has fewer than `max`.
    fn take(links: &Arc<AtomicU32>, max: u32) -> Option<LinkSlot> {
        links
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| LinkSlot(links.clone()))
    }
}

impl Drop for LinkSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What one client link's buffers may hold ([`LINK_RECV_MEMORY`] and [`LINK_SEND_MEMORY`]),
/// reserved in `limits.memory` from its client's account while the link lives, so that the
/// links a client opens are within its fair share of the budget like its streams' bytes.
///
/// A link is admitted only if its client's allowance in each pool covers its charge twice: what
/// is left after it is at least one more link's worth for the client's streams, so a client's
/// own links never take all of what its streams need to move (it could not download a byte
/// otherwise) and its links hold at most half of its share.
#[derive(Debug)]
pub(crate) struct LinkCharge {
    budget: Budget,
    signal: BudgetSignal,
}

impl LinkCharge {
    /// The charge of one link in `pool`.
    pub(crate) fn cost(pool: Pool) -> u64 {
        match pool {
            Pool::Recv => LINK_RECV_MEMORY,
            Pool::Send => LINK_SEND_MEMORY,
        }
    }

    /// Reserves one link's charge from `budget` (a client's account), or `None`.
    fn take(budget: &Budget, signal: &BudgetSignal) -> Option<LinkCharge> {
        let pools = [Pool::Recv, Pool::Send];
        if pools
            .iter()
            .any(|&p| budget.allowance(p) < 2 * Self::cost(p))
        {
            return None;
        }
        if !budget.try_reserve(Pool::Recv, Self::cost(Pool::Recv)) {
            return None;
        }
        if !budget.try_reserve(Pool::Send, Self::cost(Pool::Send)) {
            if budget.give_back(Pool::Recv, Self::cost(Pool::Recv)) {
                signal.wake_all();
            }
            return None;
        }
        Some(LinkCharge {
            budget: budget.clone(),
            signal: signal.clone(),
        })
    }
}

impl Drop for LinkCharge {
    fn drop(&mut self) {
        let mut wake = false;
        for pool in [Pool::Recv, Pool::Send] {
            wake |= self.budget.give_back(pool, Self::cost(pool));
        }
        if wake {
            self.signal.wake_all();
        }
    }
}

/// What an admitted link holds while it runs: its place under the link cap and its charge.
#[derive(Debug)]
pub(crate) struct Admitted {
    _slot: LinkSlot,
    _charge: LinkCharge,
}

#[derive(Debug)]
pub(crate) struct Sessions {
    config: Arc<ServerConfig>,
    /// The services streams may open: `config.services` until a reload replaces them.
    services: std::sync::RwLock<Arc<Vec<Service>>>,
    table: Mutex<HashMap<Key, Entry>>,
    /// Random per process: the epoch of a session is a keyed hash of its key, so it is the same
    /// on every link, needs no state before a link is authenticated, and changes when the
    /// server restarts. (A session that expired is not resumed under the same id: the client
    /// gives up on it first and picks a new id.)
    epoch_key: RandomState,
    /// Sessions that expired recently, by key: how many times, so a session started again
    /// under the same id gets another epoch and its client knows the old one is gone. Kept
    /// `TOMBSTONE_TTL`, far longer than a client can take to notice and give the id up.
    /// A session its client ended (`CLOSE` with `SESSION_OVER`) is marked: a link of it that
    /// was still on its way (its handshake under way as the client stopped) is refused, not
    /// made a new session that would wait out its grace with no link.
    tombstones: Mutex<HashMap<Key, Tombstone>>,
    /// The message-1 timestamps this node took, per client (`docs/PROTOCOL.md`, "Replay").
    replays: Mutex<ReplayGuard>,
    /// Set by a graceful stop: new streams are refused.
    draining: AtomicBool,
    /// The daemon's memory cap (`limits.memory`), shared by every session.
    budget: Budget,
    /// Wakes every session when one gave memory back to `budget` while another waited.
    budget_signal: BudgetSignal,
    /// Traffic totals of every session since start.
    counters: Arc<Counters>,
    /// Striping over the cluster (`[cluster]`), set once at start.
    relay: std::sync::OnceLock<Arc<crate::relay::Relay>>,
    /// Streams refused for their service (unknown, unreachable), by the drain, or by the
    /// engine (the stream limit, memory, no `OPEN`).
    stream_refusals: crate::stream_refusals::StreamRefusals,
    /// Each client's share of `info` lines about its sessions and links (started, ended,
    /// expired), by client key (`None`: the PSK-only clients together): a client can start and
    /// end them as fast as it likes (`lograte::LineBudget`).
    log_budgets: Mutex<HashMap<Option<PublicKey>, LineBudget>>,
}

/// `info` lines a minute about one client's sessions and links ([`Sessions::log_budget`]):
/// an honest client's restarts and outages stay well within it.
const LOG_LINES_PER_CLIENT: u32 = 60;

/// Clients whose log budgets are kept; past it, budgets not used for a minute are dropped
/// first.
const MAX_LOG_BUDGETS: usize = 4096;

impl Sessions {
    pub(crate) fn new(config: ServerConfig) -> Self {
        Sessions {
            budget: Budget::new(config.limits.memory),
            budget_signal: BudgetSignal::default(),
            services: std::sync::RwLock::new(Arc::new(config.services.clone())),
            config: Arc::new(config),
            table: Mutex::new(HashMap::new()),
            epoch_key: RandomState::new(),
            tombstones: Mutex::new(HashMap::new()),
            replays: Mutex::new(ReplayGuard::default()),
            draining: AtomicBool::new(false),
            counters: Arc::default(),
            relay: std::sync::OnceLock::new(),
            stream_refusals: Default::default(),
            log_budgets: Mutex::new(HashMap::new()),
        }
    }

    /// The share of `info` lines of the client `key` (see `log_budgets`).
    fn log_budget(&self, key: Option<PublicKey>, pki: bool) -> LineBudget {
        let mut budgets = self.log_budgets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = budgets.get(&key) {
            return b.clone();
        }
        if budgets.len() >= MAX_LOG_BUDGETS {
            budgets.retain(|_, b| !b.is_full());
            if let Some(any) = budgets.keys().next().copied() {
                if budgets.len() >= MAX_LOG_BUDGETS {
                    budgets.remove(&any);
                }
            }
        }
        let who = match client_name(key, pki) {
            Some(name) => format!("client {name}"),
            None => "the PSK-only clients".to_owned(),
        };
        let budget = LineBudget::new(LOG_LINES_PER_CLIENT, &who);
        budgets.insert(key, budget.clone());
        budget
    }

    /// [`crate::ServerHandle::session_engines`].
    pub(crate) fn engines(&self) -> u64 {
        self.counters.engines()
    }

    /// The node's status: every session with its links, and the traffic totals.
    pub(crate) fn status(&self, uptime: Duration) -> Status {
        let mut st = Status::new("server", uptime);
        st.draining = self.draining.load(Ordering::Relaxed);
        st.memory_used_bytes = self.budget.used(Pool::Recv) + self.budget.used(Pool::Send);
        st.memory_limit_bytes = self.budget.cap().saturating_mul(2);
        st.totals = self.counters.totals().into();
        st.stream_refusals = self.stream_refusals.counts();
        if let Some(relay) = self.relay.get() {
            st.relayed = relay.relayed_all();
        }
        let sessions: Vec<(Key, SessionDriver, bool)> = self
            .lock()
            .iter()
            .map(|(k, e)| (*k, e.driver.clone(), e.pki))
            .collect();
        for ((client, id), driver, pki) in sessions {
            let peer = client_name(client, pki).unwrap_or_else(|| "psk".to_owned());
            st.sessions
                .push(SessionStatus::of(&driver, id.to_string(), peer));
        }
        st
    }

    /// Sets the relay (once, at start, for a node in a cluster).
    pub(crate) fn set_relay(&self, relay: Arc<crate::relay::Relay>) {
        let _ = self.relay.set(relay);
    }

    /// The relay, for a node in a cluster.
    pub(crate) fn relay(&self) -> Option<&Arc<crate::relay::Relay>> {
        self.relay.get()
    }

    /// The live session under `key`, if this node has it.
    pub(crate) fn find(&self, key: Key) -> Option<SessionDriver> {
        self.lock()
            .get(&key)
            .filter(|e| !e.driver.is_closed())
            .map(|e| e.driver.clone())
    }

    pub(crate) fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Wakes the sessions when memory held outside them (a relay's queues) is given back.
    pub(crate) fn budget_signal(&self) -> &BudgetSignal {
        &self.budget_signal
    }

    pub(crate) fn node_id(&self) -> u16 {
        self.config.node_id.get()
    }

    /// `limits.handshake_rate`.
    pub(crate) fn handshake_rate(&self) -> u32 {
        self.config.limits.handshake_rate
    }

    pub(crate) fn handshake_timeout(&self) -> Duration {
        self.config.handshake_timeout
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        // Only plain map operations run under this lock, and no session's lock is taken under
        // it; were one to panic, the table is still whole.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes every session out of the table (new links start new ones), for the caller to
    /// close.
    pub(crate) fn take_all(&self) -> Vec<SessionDriver> {
        self.lock().drain().map(|(_, e)| e.driver).collect()
    }

    pub(crate) fn close_all(&self) {
        // The drivers' own locks are taken with the table's released, as everywhere here.
        for d in self.take_all() {
            d.close(reset::SHUTDOWN);
        }
    }

    /// Refuses new streams from now on.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        // Every client is told (`DRAINING`): a client of a cluster opens its new streams on
        // the other nodes instead of having them refused here.
        let drivers: Vec<SessionDriver> = self.lock().values().map(|e| e.driver.clone()).collect();
        for d in drivers {
            d.with(|s, now| s.start_draining(now));
        }
    }

    /// Streams open in all sessions.
    pub(crate) fn stream_count(&self) -> usize {
        let drivers: Vec<SessionDriver> = self.lock().values().map(|e| e.driver.clone()).collect();
        drivers
            .iter()
            .map(|d| d.with(|s, _| s.stream_count()))
            .sum()
    }

    /// Resent bytes of every live session (see `Session::resent_bytes`).
    pub(crate) fn resent_bytes(&self) -> u64 {
        let drivers: Vec<SessionDriver> = self.lock().values().map(|e| e.driver.clone()).collect();
        drivers
            .iter()
            .map(|d| d.with(|s, _| s.resent_bytes()))
            .sum()
    }

    /// The largest receive and send buffer of any one stream in any session, bytes.
    pub(crate) fn max_stream_buffered(&self) -> (u64, u64) {
        let drivers: Vec<SessionDriver> = self.lock().values().map(|e| e.driver.clone()).collect();
        drivers
            .iter()
            .map(|d| d.with(|s, _| s.max_stream_buffered()))
            .fold((0, 0), |(r, w), (r2, w2)| (r.max(r2), w.max(w2)))
    }

    /// Streams open in sessions that have a link, direct or through another node, so they can
    /// still finish: what a drain waits for. A session without links cannot finish its streams
    /// before its client comes back, so a drain does not wait for it. (Counting direct links
    /// only, a drain ended at once under the streams of a client whose own path to this node
    /// was down and whose connections went on through the other nodes: trial 58.)
    pub(crate) fn finishable_stream_count(&self) -> usize {
        let drivers: Vec<SessionDriver> = self.lock().values().map(|e| e.driver.clone()).collect();
        drivers
            .iter()
            .filter(|d| d.reachable())
            .map(|d| d.with(|s, _| s.stream_count()))
            .sum()
    }

    /// How long a drain that starts now still serves new streams: the longest
    /// [`Session::drain_grace`] of the sessions with a link, direct or through another node
    /// (zero without one).
    ///
    /// [`Session::drain_grace`]: wanmux_core::engine::Session::drain_grace
    pub(crate) fn drain_grace(&self) -> Duration {
        let drivers: Vec<SessionDriver> = self.lock().values().map(|e| e.driver.clone()).collect();
        drivers
            .iter()
            .filter(|d| d.reachable())
            .map(|d| d.with(|s, _| s.drain_grace()))
            .max()
            .unwrap_or_default()
    }

    /// Links up, over all sessions.
    pub(crate) fn link_count(&self) -> usize {
        let drivers: Vec<SessionDriver> = self.lock().values().map(|e| e.driver.clone()).collect();
        drivers.iter().map(|d| d.live_links()).sum()
    }

    /// Streams opened from now on find their service in `services` (a reload).
    pub(crate) fn set_services(&self, services: Vec<Service>) {
        *self.services.write().expect("services lock poisoned") = Arc::new(services);
    }

    /// Where a stream opened now for service `name` connects.
    fn service_target(&self, name: &str) -> Option<String> {
        // Only a lookup runs under this lock.
        let services = self.services.read().expect("services lock poisoned");
        services
            .iter()
            .find(|s| s.name.as_str() == name)
            .map(|s| s.target.to_string())
    }

    /// Closes the sessions (their streams and links) of every client key `allowed` refuses
    /// (told whether it is a certificate's identity): a reload removed it from
    /// `allowed_clients`. Returns how many were closed.
    pub(crate) fn close_clients(&self, allowed: impl Fn(&PublicKey, bool) -> bool) -> usize {
        let mut table = self.lock();
        let gone: Vec<Key> = table
            .iter()
            .filter(|((key, _), e)| key.as_ref().is_some_and(|k| !allowed(k, e.pki)))
            .map(|(k, _)| *k)
            .collect();
        let drivers: Vec<SessionDriver> = gone
            .iter()
            .filter_map(|k| table.remove(k).map(|e| e.driver))
            .collect();
        drop(table);
        // A client allowed again later starts a new session, under another epoch, so it
        // resets what it still holds of this one.
        for key in gone {
            self.bury(key, false);
        }
        for d in &drivers {
            d.close(reset::SHUTDOWN);
        }
        drivers.len()
    }

    /// Closes the links of every certificate client's session (PKI mode), keeping the sessions:
    /// each client dials again and its new links are checked against what the node now trusts
    /// (a revoked certificate's are refused). Returns how many sessions.
    pub(crate) fn retire_pki_links(&self) -> usize {
        // The drivers' own locks are taken with the table's released, as everywhere here.
        let drivers: Vec<SessionDriver> = self
            .lock()
            .values()
            .filter(|e| e.pki)
            .map(|e| e.driver.clone())
            .collect();
        for d in &drivers {
            d.retire_links();
        }
        drivers.len()
    }

    pub(crate) fn abandon_all(&self) {
        // Out of the table first: no driver's lock under the table's.
        for d in self.take_all() {
            d.abandon();
        }
    }

    /// How many times the session under `key` expired recently (0 for most).
    fn generation(&self, key: Key) -> u64 {
        // Only map operations run under this lock.
        let t = self.tombstones.lock().unwrap_or_else(|e| e.into_inner());
        t.get(&key).map_or(0, |t| t.generation)
    }

    /// Whether the client of the session under `key` ended it (recently).
    fn is_over(&self, key: Key) -> bool {
        let t = self.tombstones.lock().unwrap_or_else(|e| e.into_inner());
        t.get(&key).is_some_and(|t| t.over)
    }

    /// Takes the session under `key` out of the table (if it is `driver`'s) and closes it;
    /// `over`: its client ended it.
    fn end(&self, key: Key, driver: &SessionDriver, over: bool) {
        let mut table = self.lock();
        if table.get(&key).is_some_and(|e| e.driver.same(driver)) {
            table.remove(&key);
            self.bury(key, over);
        }
        drop(table);
        if over {
            // The client stopped in order: it waits for this node to close its links (a QUIC
            // link's close would discard what the node had not yet read), and needs nothing more.
            driver.close_at_once(reset::SHUTDOWN);
        } else {
            driver.close(reset::SHUTDOWN);
        }
    }

    /// The client of the session under `by` gave up its session whose secret is `secret` for
    /// this one (`FORGET`: it had no link to this node for its grace): ends that session now,
    /// closing its service connections, if this node holds it. Only the client that made a
    /// session knows its secret, and the key looked up is this client's.
    fn forget(&self, by: Key, secret: &wanmux_core::frame::SecretBytes) {
        let id = wanmux_core::noise::SessionSecret::from_bytes(secret.0).id();
        let old = (by.0, SessionId(id));
        if old == by {
            return;
        }
        let Some(driver) = self.lock().get(&old).map(|e| e.driver.clone()) else {
            return;
        };
        self.end(old, &driver, true);
        let line = "an old session of this client is over: the client replaced it with this \
                    one (it had no link to this node for its grace)";
        match driver.may_log() {
            true => info!(old = %old.1, "{line}"),
            false => debug!(old = %old.1, "{line}"),
        }
    }

    /// Records that the session under `key` expired (or, `over`, that its client ended it),
    /// forgetting old records.
    fn bury(&self, key: Key, over: bool) {
        let now = std::time::Instant::now();
        let mut t = self.tombstones.lock().unwrap_or_else(|e| e.into_inner());
        t.retain(|_, t| now.duration_since(t.at) < TOMBSTONE_TTL);
        // A client may end sessions as fast as it can start them (`SESSION_OVER`): the oldest
        // record goes first past the bound.
        if t.len() >= MAX_TOMBSTONES && !t.contains_key(&key) {
            if let Some(oldest) = t.iter().min_by_key(|(_, t)| t.at).map(|(k, _)| *k) {
                t.remove(&oldest);
            }
        }
        let generation = t.get(&key).map_or(0, |t| t.generation) + 1;
        t.insert(
            key,
            Tombstone {
                generation,
                at: now,
                over,
            },
        );
    }

    /// Refuses a message 1 that authenticated as `key` whose timestamp this node took from
    /// that client before (a replay): it gets no message 2. Clients are told apart by their
    /// key; a static-key client's timestamp is taken now. PSK-only clients (which have none)
    /// are told apart by their session id, and their timestamp is only checked now: any PSK
    /// holder can write a message 1 for any session, so it is taken once the key confirmation
    /// proved the session's secret ([`Sessions::take_psk_timestamp`]).
    pub(crate) fn check_replay(
        &self,
        hello: &ReceivedHello,
        key: Option<&PublicKey>,
    ) -> Result<(), LinkError> {
        // Only the guard's bookkeeping runs under this lock.
        let mut replays = self.replays.lock().unwrap_or_else(|e| e.into_inner());
        match key {
            Some(k) => replays.take(Identity::Client(*k), hello.timestamp),
            None => replays.check(Identity::Session(hello.session_id), hello.timestamp),
        }
        .map_err(|_| LinkError::Replayed)
    }

    /// Takes the timestamp of a PSK-only link whose key confirmation proved its session's
    /// secret (see [`Sessions::check_replay`]); refuses it if another link of the session took
    /// it meanwhile.
    pub(crate) fn take_psk_timestamp(&self, hello: &ReceivedHello) -> Result<(), LinkError> {
        let mut replays = self.replays.lock().unwrap_or_else(|e| e.into_inner());
        replays
            .take(Identity::Session(hello.session_id), hello.timestamp)
            .map_err(|_| LinkError::Replayed)
    }

    /// Message 2 for a link whose message 1 authenticated as `key`: the node id and the epoch
    /// of the session. Creates nothing: a session starts only when a link completes its key
    /// confirmation.
    pub(crate) fn server_hello(&self, key: Key) -> ServerHello {
        ServerHello {
            node_id: self.node_id(),
            epoch: self.epoch_key.hash_one((key, self.generation(key))),
            relay: false,
        }
    }

    /// Runs an authenticated link in its session until the link dies. A link that would take
    /// its session over `limits.max_links_per_session`, or start a session over
    /// `limits.max_sessions` or `limits.max_sessions_per_client`, is closed at once.
    /// `transport` (`"tcp"`, `"quic"` or `"quic+noise"`), `peer` and, on a QUIC link's own
    /// stream, the connection's `probe` label the link in status.
    /// The client key is checked against `auth` where the link joins, under the session
    /// table's lock: a reload may have removed it while the handshake ran (see `session`);
    /// and a client certificate's link whose TLS ran under the checks `auth` had before a
    /// reload's (`SharedAuth::pki_checks`, taken as the link arrived) is refused there too.
    /// The link's end, or `None` when it was refused.
    pub(crate) async fn run_link(
        self: &Arc<Self>,
        acc: Accepted,
        peer: SocketAddr,
        transport: &'static str,
        probe: Option<wanmux_core::quic::PathProbe>,
        (auth, checks): (&crate::reload::SharedAuth, u64),
        refusals: &crate::refused::Refusals,
    ) -> Option<LinkEnd> {
        let key = (acc.client_key, SessionId(acc.hello.session_id));
        let span = tracing::info_span!("session", id = %key.1);
        let (driver, _admitted) = match self.session(key, acc.pki, (auth, checks)) {
            Ok(joined) => joined,
            Err(SESSION_OVER) => {
                span.in_scope(|| debug!(%peer, "link refused: {SESSION_OVER}"));
                return None;
            }
            Err(why @ (KEY_REMOVED | RECHECKED)) => {
                // Only a handshake that straddled a reload gets here: rare, and worth seeing.
                span.in_scope(|| info!(%peer, "link refused: {why}"));
                return None;
            }
            Err(why) => {
                // Counted, and logged at most once a minute per kind with the count; the client
                // is told why (`CLOSE` with a code), so that its log says it too.
                let code = match why {
                    NO_MEMORY => {
                        let total = self.budget.cap().saturating_mul(2);
                        span.in_scope(|| refusals.memory(peer, total));
                        close::NO_MEMORY
                    }
                    MAX_LINKS => close::MAX_LINKS,
                    MAX_SESSIONS => close::MAX_SESSIONS,
                    MAX_CLIENT_SESSIONS => close::MAX_CLIENT_SESSIONS,
                    _ => close::LINK,
                };
                if code != close::NO_MEMORY {
                    span.in_scope(|| refusals.session_limit(peer, why));
                }
                refuse(acc.writer, code).await;
                return None;
            }
        };
        let labels = driver.clone();
        let label = move |id| {
            let address = peer.to_string();
            labels.label_link(
                id,
                driver::LinkLabel {
                    address,
                    transport,
                    probe,
                },
            );
        };
        let router = self.relay.get().filter(|_| acc.hello.relay).map(|r| {
            let budget = driver.with(|s, _| s.budget().clone());
            r.router(acc.client_key, key.1, budget, acc.hello.lane)
        });
        let end = driver::link::run_routed(
            driver,
            acc.reader,
            acc.writer,
            Some(acc.first),
            acc.hello.lane,
            label,
            router,
        )
        .instrument(span.clone())
        .await;
        span.in_scope(|| debug!(%peer, %end, "link closed"));
        Some(end)
    }

    /// The session `key` names, started if need be, with a slot for one more link in it and
    /// the link's memory charged to its client's account (both given back when dropped); or
    /// why not.
    fn session(
        self: &Arc<Self>,
        key: Key,
        pki: bool,
        (auth, checks): (&crate::reload::SharedAuth, u64),
    ) -> Result<(SessionDriver, Admitted), &'static str> {
        let limits = &self.config.limits;
        let mut table = self.lock();
        // Checked again under the table's lock: a reload replaces the list before its sweep
        // (`close_clients`) takes this lock, so a link that authenticated under the old list
        // either joins before the sweep (which then closes it) or sees the new list here.
        if !auth.still_allows(key.0.as_ref(), pki) {
            return Err(KEY_REMOVED);
        }
        // The same for a certificate checked against a client CA or revocation lists that a
        // reload replaced (`retire_pki_links` is its sweep).
        if pki && auth.pki_checks() != checks {
            return Err(RECHECKED);
        }
        if self.is_over(key) {
            return Err(SESSION_OVER);
        }
        if let Some(e) = table.get(&key).filter(|e| !e.driver.is_closed()) {
            let slot = LinkSlot::take(&e.links, limits.max_links_per_session).ok_or(MAX_LINKS)?;
            let charge = LinkCharge::take(&e.budget, &self.budget_signal).ok_or(NO_MEMORY)?;
            let admitted = Admitted {
                _slot: slot,
                _charge: charge,
            };
            return Ok((e.driver.clone(), admitted));
        }
        // Closed sessions still in the table are on their way out and are replaced here.
        let open = table.values().filter(|e| !e.driver.is_closed());
        let (total, this_client) = open.fold((0u32, 0u32), |(t, c), e| {
            (t + 1, c + u32::from(e.client == key.0))
        });
        if total >= limits.max_sessions {
            return Err(MAX_SESSIONS);
        }
        // PSK-only clients have no key to tell them apart: only `max_sessions` holds them.
        if key.0.is_some() && this_client >= limits.max_sessions_per_client {
            return Err(MAX_CLIENT_SESSIONS);
        }
        // The sessions of one client key share an account, so that one client cannot take the
        // memory another needs (`budget.rs`, fair shares); a PSK-only session has its own.
        let budget = key
            .0
            .and_then(|k| table.values().find(|e| e.client == Some(k)))
            .map_or_else(|| self.budget.account(), |e| e.budget.clone());
        // Its first link must fit too, or the session would hold a place with no link.
        let charge = LinkCharge::take(&budget, &self.budget_signal).ok_or(NO_MEMORY)?;
        let node = NodeId(self.config.node_id.get());
        let session = Session::with_budget(Role::Server(node), (*limits).into(), budget.clone());
        let (driver, opened) =
            SessionDriver::start_counted(session, &self.budget_signal, self.counters.clone());
        let client = client_name(key.0, pki).unwrap_or_else(|| "a PSK holder".to_owned());
        // Weak: the table holds the driver, which must not hold the table. The refusals' lines
        // name the session and its client (which limit to raise for whom).
        let (sessions, id) = (Arc::downgrade(self), format!("{} of {client}", key.1));
        driver.on_refused(move |code| {
            if let Some(s) = sessions.upgrade() {
                s.stream_refusals.engine(code, &id);
            }
        });
        if self.draining.load(Ordering::Relaxed) {
            driver.with(|s, now| s.start_draining(now));
        }
        let lines = self.log_budget(key.0, pki);
        driver.log_lines(lines.clone());
        let span = tracing::info_span!("session", id = %key.1);
        span.in_scope(|| match lines.allow() {
            true => info!(%client, "session started"),
            false => debug!(%client, "session started"),
        });
        tokio::spawn(serve_streams(driver.clone(), opened, self.clone()).instrument(span.clone()));
        tokio::spawn(self.clone().watch(key, driver.clone()).instrument(span));
        let entry = Entry {
            driver: driver.clone(),
            client: key.0,
            pki,
            links: Arc::new(AtomicU32::new(0)),
            budget,
        };
        let slot = LinkSlot::take(&entry.links, limits.max_links_per_session)
            .expect("a new session has no links");
        table.insert(key, entry);
        let admitted = Admitted {
            _slot: slot,
            _charge: charge,
        };
        Ok((driver, admitted))
    }

    /// Ends the session once it has had no link, and no word from its client through another
    /// node, for the grace period.
    async fn watch(self: Arc<Self>, key: Key, driver: SessionDriver) {
        // When the session's last link ended (as first seen here).
        let mut alone_since: Option<Instant> = None;
        // The virtual links were pinged for a lack of word since this time.
        let mut probed: Option<Instant> = None;
        loop {
            let changed = driver.links_changed();
            for secret in driver.take_forgets() {
                self.forget(key, &secret);
            }
            if driver.peer_ended() && !driver.is_closed() {
                // The client stopped in order: no grace to keep the session for.
                self.end(key, &driver, true);
                match driver.may_log() {
                    true => info!("session over: its client stopped"),
                    false => debug!("session over: its client stopped"),
                }
                return;
            }
            if driver.is_closed() {
                // Closed by a shutdown, or by a panic in its code (see `SessionDriver`): out of
                // the table either way, so it holds no memory and no place under the caps.
                let mut table = self.lock();
                if table.get(&key).is_some_and(|e| e.driver.same(&driver)) {
                    table.remove(&key);
                }
                return;
            }
            if driver.live_links() > 0 {
                alone_since = None;
                changed.await;
                continue;
            }
            // The grace runs from the last link's end, or from the client's last message
            // through another node of the cluster (a virtual link), whichever is later: a
            // client whose own path here is down while the others reach it keeps its session.
            let grace = self.config.session_grace;
            let alone = *alone_since.get_or_insert_with(Instant::now);
            let clock = driver.grace(alone, grace, &mut probed);
            if clock.now < clock.deadline {
                let _ = tokio::time::timeout_at(clock.wake.into(), changed).await;
                continue;
            }
            self.end(key, &driver, false);
            let relayed = match clock.heard_through_relay {
                true => ", nor word from the client through another node,",
                false => "",
            };
            match driver.may_log() {
                true => info!("session expired: no link{relayed} for {grace:?}"),
                false => debug!("session expired: no link{relayed} for {grace:?}"),
            }
            return;
        }
    }
}

/// A session's client as its node's config names it: its key, or its certificate's `sha256:`
/// identity in PKI mode; `None` in PSK-only mode (no client keys).
fn client_name(key: Option<wanmux_core::keys::PublicKey>, pki: bool) -> Option<String> {
    key.map(|k| match pki {
        true => wanmux_core::tls::spki_text(k.as_bytes()),
        false => k.to_base64(),
    })
}

/// What the node remembers of a session that ended.
#[derive(Debug, Clone, Copy)]
struct Tombstone {
    /// How many times a session under its key ended recently.
    generation: u64,
    at: std::time::Instant,
    /// The last one was ended by its client.
    over: bool,
}

/// Sends `CLOSE` with `code` as the only message of an authenticated link that cannot join its
/// session, and closes it once the client has it (at most `link::CLOSE_LINGER`).
async fn refuse(mut writer: wanmux_core::noise::LinkWriter, code: u16) {
    let mut msg = bytes::BytesMut::new();
    Frame::Close(code).encode(&mut msg);
    let _ = tokio::time::timeout(wanmux_core::driver::link::CLOSE_LINGER, async {
        if writer.seal(&msg).is_ok() && writer.flush().await.is_ok() {
            writer.shutdown().await;
        }
    })
    .await;
}

/// Connects each stream the client opens to its named service.
/// Connects each stream the client opens to its service, until the session is closed. The
/// channel's sender lives in the driver this task holds, so it never closes by itself: waiting
/// on it alone kept every ended session's engine in memory for good.
async fn serve_streams(driver: SessionDriver, mut opened: OpenedStreams, sessions: Arc<Sessions>) {
    loop {
        let next = tokio::select! {
            next = opened.recv() => next,
            () = driver.closed() => None,
        };
        let Some((id, name)) = next else {
            return;
        };
        // A stream the client opened before it heard the drain is served (see
        // `opened_before_drain_heard`); one opened after, on a node it knows drains, is not.
        if sessions.draining.load(Ordering::Relaxed)
            && !driver.with(|s, now| s.opened_before_drain_heard(now))
        {
            debug!(stream = %id, "draining: stream refused");
            sessions.stream_refusals.draining();
            driver.with(|s, _| s.stream_reset(id, reset::SHUTDOWN));
            continue;
        }
        let Some(target) = sessions.service_target(&name) else {
            // The client's text, quoted and escaped: it may hold line breaks and terminal escapes.
            debug!(stream = %id, service = ?name, "unknown service");
            sessions.stream_refusals.unknown_service(&name);
            driver.with(|s, _| s.stream_reset(id, reset::UNKNOWN_SERVICE));
            continue;
        };
        let connecting = connect(driver.clone(), id, name, target, sessions.clone());
        tokio::spawn(connecting.in_current_span());
    }
}

async fn connect(
    driver: SessionDriver,
    id: StreamId,
    service: String,
    target: String,
    sessions: Arc<Sessions>,
) {
    let timeout = sessions.config.connect_timeout;
    let error = match tokio::time::timeout(timeout, TcpStream::connect(&target)).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            let _ = driver::stream::keepalive(socket2::SockRef::from(&tcp));
            return driver::stream::run(driver, id, tcp).await;
        }
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => None,
    };
    debug!(stream = %id, %target, ?error, "service connect failed");
    sessions
        .stream_refusals
        .connect_failed(&service, &target, error);
    driver.with(|s, _| s.stream_reset(id, reset::CONNECT_FAILED));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's sessions in PSK-only mode, with no service.
    fn psk_node() -> Sessions {
        Sessions::new(ServerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            1.try_into().unwrap(),
            wanmux_config::ServerAuth::PskOnly {
                psk: wanmux_core::keys::Psk::generate(),
            },
            Vec::new(),
        ))
    }

    /// A client that ends sessions as fast as it starts them leaves a bounded record: the
    /// oldest ends are forgotten first, the newest kept (with their marks).
    #[test]
    fn the_ended_sessions_remembered_are_bounded() {
        let sessions = psk_node();
        let key = |i: u64| -> Key {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_be_bytes());
            (None, SessionId(id))
        };
        let n = MAX_TOMBSTONES as u64 + 100;
        for i in 0..n {
            sessions.bury(key(i), true);
        }
        let t = sessions.tombstones.lock().unwrap();
        assert_eq!(t.len(), MAX_TOMBSTONES);
        drop(t);
        assert!(sessions.is_over(key(n - 1)), "the newest is kept");
        assert_eq!(sessions.generation(key(n - 1)), 1);
    }

    /// A drain shows in `status` and the metrics (a trial found it nowhere).
    #[tokio::test]
    async fn a_drain_shows_in_status_and_metrics() {
        let sessions = psk_node();
        let before = sessions.status(Duration::from_secs(1));
        assert!(!before.draining);
        assert!(before.to_prometheus().contains("wanmux_draining 0"));
        assert!(!before.to_text().contains("draining"));
        sessions.start_draining();
        let during = sessions.status(Duration::from_secs(2));
        assert!(during.draining);
        assert!(during.to_prometheus().contains("wanmux_draining 1"));
        assert!(during
            .to_text()
            .contains("draining: new streams are refused"));
    }
}
