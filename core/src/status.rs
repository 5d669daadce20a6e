//! What a running daemon is doing, as one snapshot ([`Status`]) with three renderings: a
//! table for people ([`Status::to_text`]), JSON for scripts ([`Status::to_json`]) and the
//! Prometheus text exposition ([`Status::to_prometheus`]) for the metrics endpoint.
//!
//! Both daemons build a [`Status`] from their handles on request (no background sampling), so
//! every number is the engine's own at that moment and the totals are the drivers' counters.

use crate::driver::{SessionDriver, Totals};
use crate::engine::LinkStats;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A daemon's state at one moment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// `"client"` or `"server"`.
    pub daemon: String,
    /// The daemon's version.
    pub version: String,
    /// Seconds since it started.
    pub uptime_seconds: f64,
    /// Bytes of the memory budget in use (`limits.memory`).
    pub memory_used_bytes: u64,
    /// The memory budget, bytes.
    pub memory_limit_bytes: u64,
    /// Traffic since start, all sessions together.
    pub totals: TotalsView,
    /// Every session (client: one per node; server: one per client session).
    pub sessions: Vec<SessionStatus>,
    /// Link handshakes that failed since start, by reason: on the client its dials, on a node
    /// the links it refused. Every reason the daemon knows is listed, failed or not.
    #[serde(default)]
    pub handshake_failures: BTreeMap<String, u64>,
    /// Streams refused since start, by reason. Node: the streams it refused
    /// (`unknown_service`, `service_connect_failed`, `service_connect_timeout`, `draining`,
    /// `stream_limit`, `memory`, `no_open`). Client: the application connections it reset
    /// because no link to any node came up in time (`no_link`) or because the node refused
    /// their streams (`unknown_service`, `service_connect_failed`, `stream_limit`).
    #[serde(default)]
    pub stream_refusals: BTreeMap<String, u64>,
    /// Config reloads (SIGHUP) since start.
    #[serde(default)]
    pub reloads: ReloadsView,
    /// Striping over a cluster: bytes of `ROUTE` sections relayed, per node. On the client,
    /// per node: the other owners' sections on that node's links; on a node, per peer: what
    /// it relayed to that peer (sent) and from it (received). Empty without a cluster.
    #[serde(default)]
    pub relayed: Vec<RelayedStatus>,
    /// The log filter in force (`RUST_LOG`'s syntax), when the daemon runs under `run`: what
    /// it started with, or what `log set` put in force since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_filter: Option<String>,
    /// Node: it is draining (its stop began): new streams are refused while the open ones
    /// finish, for at most `drain_timeout_ms`.
    #[serde(default)]
    pub draining: bool,
}

/// The count of config reloads, kept by a running daemon and recorded by the daemon skeleton
/// (`crate::daemon`) after each SIGHUP.
#[derive(Debug, Default)]
pub struct Reloads {
    applied: AtomicU64,
    refused: AtomicU64,
    last_refused: AtomicBool,
    /// Settings the file changed that the running daemon keeps until a restart.
    pending_restart: std::sync::Mutex<Vec<String>>,
}

impl Reloads {
    /// A reload was applied (`true`) or refused, the running config kept (`false`).
    pub fn record(&self, applied: bool) {
        let n = if applied {
            &self.applied
        } else {
            &self.refused
        };
        n.fetch_add(1, Relaxed);
        self.last_refused.store(!applied, Relaxed);
    }

    /// After an applied reload: the settings the file now changes that the running daemon
    /// keeps until a restart (none: everything in the file runs).
    pub fn set_pending_restart(&self, settings: &[&str]) {
        let mut pending = self
            .pending_restart
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *pending = settings.iter().map(|s| (*s).to_owned()).collect();
    }

    /// The counts now.
    pub fn view(&self) -> ReloadsView {
        ReloadsView {
            applied: self.applied.load(Relaxed),
            refused: self.refused.load(Relaxed),
            last_refused: self.last_refused.load(Relaxed),
            pending_restart: self
                .pending_restart
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// [`Reloads`] as it is rendered.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadsView {
    /// Reloads applied.
    pub applied: u64,
    /// Reloads refused (an invalid file, or a change that could not be applied).
    pub refused: u64,
    /// The last reload was refused: the daemon runs an older config than its file.
    pub last_refused: bool,
    /// Settings the file changed, as of the last applied reload, that the running daemon
    /// keeps until a restart (`client.private_key`, `[links]`, ...).
    #[serde(default)]
    pub pending_restart: Vec<String>,
}

/// Section bytes relayed through (client) or with (node) one node.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct RelayedStatus {
    /// The node.
    pub node: u16,
    /// Upstream: client to owner.
    pub sent_bytes: u64,
    /// Downstream: owner to client.
    pub received_bytes: u64,
    /// Node: whether its peer link to that node is up now (`None` on the client).
    #[serde(default)]
    pub peer_link_up: Option<bool>,
}

/// [`Totals`] as it is rendered.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TotalsView {
    /// Bytes read from application sockets.
    pub app_read_bytes: u64,
    /// Bytes written to application sockets.
    pub app_written_bytes: u64,
    /// Plaintext bytes sent on links.
    pub link_sent_bytes: u64,
    /// Plaintext bytes received on links.
    pub link_received_bytes: u64,
    /// Streams that ran here.
    pub streams_opened: u64,
    /// Links since start. Node: links that joined a session. Client: links whose handshake
    /// completed, with those the node then refused its session (`session_refused`).
    pub links_opened: u64,
    /// Nanoseconds the sessions' locks were held (the engine's serial work).
    #[serde(default)]
    pub session_lock_held_ns: u64,
    /// Nanoseconds tasks waited for a session's lock.
    #[serde(default)]
    pub session_lock_waited_ns: u64,
}

impl From<Totals> for TotalsView {
    fn from(t: Totals) -> Self {
        TotalsView {
            app_read_bytes: t.app_read,
            app_written_bytes: t.app_written,
            link_sent_bytes: t.link_sent,
            link_received_bytes: t.link_received,
            streams_opened: t.streams,
            links_opened: t.links,
            session_lock_held_ns: t.lock_held_ns,
            session_lock_waited_ns: t.lock_waited_ns,
        }
    }
}

/// One session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionStatus {
    /// The session id (first 8 bytes, hex).
    pub id: String,
    /// The other end: `node N` on the client, the client's key (or `psk`) on a node.
    pub peer: String,
    /// Open streams.
    pub streams: usize,
    /// Stream bytes queued again because a link died before the peer confirmed them.
    pub resent_bytes: u64,
    /// Bytes buffered for the application to read, all streams.
    pub receive_buffered_bytes: u64,
    /// Its links that are up.
    pub links: Vec<LinkStatus>,
    /// Client, with no link of its own to the node: why its last dial failed, and when
    /// (`12 s ago: connection refused: ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_dial_error: Option<String>,
    /// Client: the node said it is draining (`DRAINING`): it finishes its connections and
    /// stops, and new connections go to the cluster's other nodes while there are links to them.
    #[serde(default)]
    pub peer_draining: bool,
}

/// One link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkStatus {
    /// The link's id in its session.
    pub id: u64,
    /// The other end's address (client: the node address dialled; node: the client's).
    #[serde(default)]
    pub address: Option<String>,
    /// What the link runs over: `tcp`, `quic`, or `quic+noise` (a QUIC link on ALPN `wanmux/1`).
    #[serde(default)]
    pub transport: Option<String>,
    /// Smoothed round-trip time of the link's pings, ms; `None` before the first sample. A
    /// ping waits behind the data the link is sending, so on a busy link this includes that
    /// queue (the link's own send buffers and the path's bottleneck queue).
    pub rtt_ms: Option<f64>,
    /// The smallest round trip sampled on the link since it came up, ms: the path's own,
    /// without a queue.
    #[serde(default)]
    pub min_rtt_ms: Option<f64>,
    /// QUIC links: the UDP packets the link's connection sent. `None` on TCP links and lane
    /// streams (a lane stream's connection is its link's).
    #[serde(default)]
    pub sent_packets: Option<u64>,
    /// QUIC links: the packets the connection declared lost (and sent again): the path's loss,
    /// which QUIC repairs under the link. `None` where `sent_packets` is.
    #[serde(default)]
    pub lost_packets: Option<u64>,
    /// Delivery rate, bytes per second (what pongs confirmed).
    pub delivery_rate_bytes_per_second: u64,
    /// Plaintext bytes sent on it.
    pub sent_bytes: u64,
    /// Plaintext bytes received on it.
    pub received_bytes: u64,
    /// Entries sent and not yet confirmed by a pong.
    pub unconfirmed: usize,
    /// A dedicated interactive lane (`links.lanes`): a link of its own, or on QUIC a lane
    /// stream beside another link on one connection.
    #[serde(default)]
    pub lane: bool,
    /// Through another node of a cluster, not a connection of its own: on the client, a
    /// sub-link to this session's node over a link to another node; on a node, a virtual link
    /// to the client through a peer. Not counted as a link up.
    #[serde(default)]
    pub relayed: bool,
}

/// `what: reason n, reason n` for the reasons counted at least once; nothing when none was.
fn counts_line(out: &mut String, what: &str, counts: &BTreeMap<String, u64>) {
    let counted: Vec<String> = counts
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    if !counted.is_empty() {
        let _ = writeln!(out, "{what}: {}", counted.join(", "));
    }
}

impl SessionStatus {
    /// Its links up: connections of its own, not the paths through other nodes.
    pub fn links_up(&self) -> usize {
        self.links.iter().filter(|l| !l.relayed).count()
    }

    /// Its paths through other nodes of the cluster.
    pub fn relayed_links(&self) -> usize {
        self.links.len() - self.links_up()
    }

    /// The state of the session `driver` runs; `peer` names the other end.
    pub fn of(driver: &SessionDriver, id: String, peer: String) -> SessionStatus {
        let mut labels = driver.link_labels();
        // Read outside the session's lock: each takes its QUIC connection's.
        let mut readings: std::collections::HashMap<_, _> = labels
            .iter()
            .filter_map(|(&id, label)| Some((id, label.probe.as_ref()?.read())))
            .collect();
        driver.with(|s, now| {
            let links = s
                .links()
                .filter_map(|l| {
                    let mut link = LinkStatus::new(l.0, &s.link_stats(l, now)?);
                    // The engine's own word, under the lock the list is read under: a link
                    // added since the labels were read is counted as what it is.
                    link.relayed = s.is_relayed(l);
                    if let Some(label) = labels.remove(&l) {
                        link.address = Some(label.address);
                        link.transport = Some(label.transport.to_owned());
                        if let Some(read) = readings.remove(&l) {
                            link.sent_packets = Some(read.sent_packets);
                            link.lost_packets = Some(read.lost_packets);
                        }
                    }
                    Some(link)
                })
                .collect();
            SessionStatus {
                id,
                peer,
                streams: s.stream_count(),
                resent_bytes: s.resent_bytes(),
                receive_buffered_bytes: s.recv_buffered_bytes(),
                links,
                last_dial_error: None,
                peer_draining: driver.peer_draining(),
            }
        })
    }
}

impl LinkStatus {
    /// The share of its packets a QUIC link's connection lost, in percent; `None` without
    /// counts or before a packet went out.
    pub fn lost_percent(&self) -> Option<f64> {
        let (sent, lost) = (self.sent_packets?, self.lost_packets?);
        (sent > 0).then(|| lost as f64 * 100.0 / sent as f64)
    }

    fn new(id: u64, s: &LinkStats) -> LinkStatus {
        LinkStatus {
            id,
            address: None,
            transport: None,
            rtt_ms: s.rtt.smoothed.map(|d| d.as_secs_f64() * 1e3),
            min_rtt_ms: s.rtt.min.map(|d| d.as_secs_f64() * 1e3),
            sent_packets: None,
            lost_packets: None,
            delivery_rate_bytes_per_second: s.delivery_rate,
            sent_bytes: s.bytes_sent,
            received_bytes: s.bytes_received,
            unconfirmed: s.unconfirmed,
            lane: s.lane,
            relayed: false,
        }
    }
}

impl Status {
    /// A status of `daemon` (`"client"` or `"server"`) up for `uptime`.
    pub fn new(daemon: &'static str, uptime: Duration) -> Status {
        Status {
            daemon: daemon.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: uptime.as_secs_f64(),
            memory_used_bytes: 0,
            memory_limit_bytes: 0,
            totals: TotalsView::default(),
            sessions: Vec::new(),
            handshake_failures: BTreeMap::new(),
            stream_refusals: BTreeMap::new(),
            reloads: ReloadsView::default(),
            relayed: Vec::new(),
            log_filter: None,
            draining: false,
        }
    }

    /// Links up, all sessions.
    pub fn links_up(&self) -> usize {
        self.sessions.iter().map(SessionStatus::links_up).sum()
    }

    /// Open streams, all sessions.
    pub fn streams(&self) -> usize {
        self.sessions.iter().map(|s| s.streams).sum()
    }

    /// JSON, one object.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a status always serializes")
    }

    /// A table for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let _ = writeln!(
            out,
            "wanmux-{} {}, up {:.0} s: {} sessions, {} links, {} streams, memory {:.1} of {:.0} MiB",
            self.daemon,
            self.version,
            self.uptime_seconds,
            self.sessions.len(),
            self.links_up(),
            self.streams(),
            mib(self.memory_used_bytes),
            mib(self.memory_limit_bytes),
        );
        if self.draining {
            let _ = writeln!(
                out,
                "draining: new streams are refused while the open ones finish (drain_timeout_ms)"
            );
        }
        let t = &self.totals;
        let _ = writeln!(
            out,
            "since start: {:.1} MiB from applications, {:.1} MiB to them; {:.1} MiB sent on links, \
             {:.1} MiB received; {} streams, {} links",
            mib(t.app_read_bytes),
            mib(t.app_written_bytes),
            mib(t.link_sent_bytes),
            mib(t.link_received_bytes),
            t.streams_opened,
            t.links_opened,
        );
        counts_line(&mut out, "failed handshakes", &self.handshake_failures);
        let refused = if self.daemon == "client" {
            "connections reset (streams refused)"
        } else {
            "streams refused"
        };
        counts_line(&mut out, refused, &self.stream_refusals);
        let r = &self.reloads;
        if r.applied + r.refused > 0 {
            let _ = writeln!(
                out,
                "reloads: {} applied, {} refused{}",
                r.applied,
                r.refused,
                if r.last_refused {
                    " (the last one: running an older config than the file)"
                } else {
                    ""
                }
            );
        }
        if let Some(filter) = &self.log_filter {
            let _ = writeln!(out, "log: {filter}");
        }
        if !r.pending_restart.is_empty() {
            let _ = writeln!(
                out,
                "waiting for a restart: {} (changed in the file, running as before)",
                r.pending_restart.join(", ")
            );
        }
        for r in &self.relayed {
            let _ = writeln!(
                out,
                "relayed with node {}: {:.1} MiB upstream, {:.1} MiB downstream{}",
                r.node,
                mib(r.sent_bytes),
                mib(r.received_bytes),
                match r.peer_link_up {
                    Some(true) => "; peer link up",
                    Some(false) => "; peer link DOWN",
                    None => "",
                },
            );
        }
        for s in &self.sessions {
            let _ = writeln!(
                out,
                "\nsession {} ({}{}): {} streams, {} links{}, resent {:.1} MiB, {:.1} MiB waiting to be read",
                s.id,
                s.peer,
                if s.peer_draining { ", draining" } else { "" },
                s.streams,
                s.links_up(),
                match s.relayed_links() {
                    0 => String::new(),
                    n => format!(" and {n} through other nodes"),
                },
                mib(s.resent_bytes),
                mib(s.receive_buffered_bytes),
            );
            if let Some(why) = &s.last_dial_error {
                let _ = writeln!(out, "  last dial failed {why}");
            }
            if !s.links.is_empty() {
                let _ = writeln!(
                    out,
                    "  {:>6} {:<9} {:<22} {:>9} {:>9} {:>7} {:>14} {:>12} {:>12} {:>11}",
                    "link",
                    "via",
                    "address",
                    "rtt ms",
                    "min ms",
                    "lost %",
                    "delivery Mbit",
                    "sent MiB",
                    "recv MiB",
                    "unconfirmed"
                );
            }
            for l in &s.links {
                let ms = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{r:.1}"));
                let via = if l.relayed {
                    "relay".to_owned()
                } else {
                    format!(
                        "{}{}",
                        l.transport.as_deref().unwrap_or("-"),
                        if l.lane { " lane" } else { "" }
                    )
                };
                let _ = writeln!(
                    out,
                    "  {:>6} {:<9} {:<22} {:>9} {:>9} {:>7} {:>14.1} {:>12.1} {:>12.1} {:>11}",
                    l.id,
                    via,
                    l.address.as_deref().unwrap_or("-"),
                    ms(l.rtt_ms),
                    ms(l.min_rtt_ms),
                    l.lost_percent()
                        .map_or("-".to_owned(), |p| format!("{p:.2}")),
                    l.delivery_rate_bytes_per_second as f64 * 8e-6,
                    mib(l.sent_bytes),
                    mib(l.received_bytes),
                    l.unconfirmed,
                );
            }
        }
        out
    }

    /// The Prometheus text exposition (format 0.0.4) of this status.
    pub fn to_prometheus(&self) -> String {
        let families = Families::default();
        self.fill(&families);
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&families.registry.gather(), &mut out)
            .expect("families built here are valid");
        out
    }

    fn fill(&self, f: &Families) {
        f.gauge(
            "wanmux_uptime_seconds",
            "Seconds since the daemon started.",
            &[],
        )
        .with_label_values::<&str>(&[])
        .set(self.uptime_seconds);
        f.gauge(
            "wanmux_draining",
            "1 while the node drains (its stop began: new streams refused, open ones finishing).",
            &[],
        )
        .with_label_values::<&str>(&[])
        .set(f64::from(u8::from(self.draining)));
        f.gauge(
            "wanmux_memory_used_bytes",
            "Bytes of the memory budget (limits.memory) in use.",
            &[],
        )
        .with_label_values::<&str>(&[])
        .set(self.memory_used_bytes as f64);
        f.gauge(
            "wanmux_memory_limit_bytes",
            "The memory budget (limits.memory), bytes.",
            &[],
        )
        .with_label_values::<&str>(&[])
        .set(self.memory_limit_bytes as f64);
        let t = self.totals;
        for (name, help, v) in [
            (
                "wanmux_app_read_bytes_total",
                "Bytes read from application sockets since start.",
                t.app_read_bytes,
            ),
            (
                "wanmux_app_written_bytes_total",
                "Bytes written to application sockets since start.",
                t.app_written_bytes,
            ),
            (
                "wanmux_tunnel_sent_bytes_total",
                "Plaintext bytes sent on all links since start.",
                t.link_sent_bytes,
            ),
            (
                "wanmux_tunnel_received_bytes_total",
                "Plaintext bytes received on all links since start.",
                t.link_received_bytes,
            ),
            (
                "wanmux_streams_opened_total",
                "Streams that ran here since start.",
                t.streams_opened,
            ),
            (
                "wanmux_links_opened_total",
                "Links since start (node: those that joined a session; client: those whose \
                 handshake completed, with the ones the node then refused their session).",
                t.links_opened,
            ),
        ] {
            f.counter(name, help, &[])
                .with_label_values::<&str>(&[])
                .inc_by(v);
        }
        for (name, help, ns) in [
            (
                "wanmux_session_lock_held_seconds_total",
                "Time the sessions' locks were held since start (the engine's serial work; per \
                 second of wall time, the share of one CPU it takes).",
                t.session_lock_held_ns,
            ),
            (
                "wanmux_session_lock_waited_seconds_total",
                "Time tasks waited for a session's lock held by another task since start.",
                t.session_lock_waited_ns,
            ),
        ] {
            f.seconds_counter(name, help)
                .with_label_values::<&str>(&[])
                .inc_by(ns as f64 / 1e9);
        }
        let failures = f.counter(
            "wanmux_handshake_failures_total",
            "Link handshakes that failed since start, by reason (client: its dials; node: the \
             links it refused).",
            &["reason"],
        );
        for (reason, n) in &self.handshake_failures {
            failures.with_label_values(&[reason.as_str()]).inc_by(*n);
        }
        if !self.stream_refusals.is_empty() {
            let refused = f.counter(
                "wanmux_stream_refusals_total",
                "Streams refused since start, by reason. Node: the streams it refused \
                 (unknown_service, service_connect_failed, service_connect_timeout, draining, \
                 stream_limit, memory, no_open). Client: the application connections it reset \
                 for want of a link (no_link) or for the node's refusal (unknown_service, \
                 service_connect_failed, stream_limit).",
                &["reason"],
            );
            for (reason, n) in &self.stream_refusals {
                refused.with_label_values(&[reason.as_str()]).inc_by(*n);
            }
        }
        let reloads = f.counter(
            "wanmux_reloads_total",
            "Config reloads (SIGHUP) since start, by result: applied, or refused with the \
             running config kept.",
            &["result"],
        );
        let r = &self.reloads;
        reloads.with_label_values(&["applied"]).inc_by(r.applied);
        reloads.with_label_values(&["refused"]).inc_by(r.refused);
        f.gauge(
            "wanmux_config_last_reload_successful",
            "1 unless the last config reload was refused (then the daemon runs an older config \
             than its file).",
            &[],
        )
        .with_label_values::<&str>(&[])
        .set(if r.last_refused { 0.0 } else { 1.0 });
        f.gauge(
            "wanmux_config_restart_pending",
            "Settings the config file changed that the running daemon keeps until a restart \
             (as of the last applied reload; `status` names them).",
            &[],
        )
        .with_label_values::<&str>(&[])
        .set(r.pending_restart.len() as f64);
        f.gauge("wanmux_sessions", "Sessions held.", &[])
            .with_label_values::<&str>(&[])
            .set(self.sessions.len() as f64);
        let by_session = ["session", "peer"];
        let open = f.gauge(
            "wanmux_streams_open",
            "Open streams, per session.",
            &by_session,
        );
        let up = f.gauge(
            "wanmux_links_up",
            "Links up, per session (connections of its own: not the paths through other nodes).",
            &by_session,
        );
        let buffered = f.gauge(
            "wanmux_receive_buffered_bytes",
            "Bytes waiting for the application to read them, per session.",
            &by_session,
        );
        let resent = f.counter(
            "wanmux_resent_bytes_total",
            "Stream bytes queued again because a link died unconfirmed, per session.",
            &by_session,
        );
        let by_link = ["session", "peer", "link"];
        let rtt = f.gauge(
            "wanmux_link_rtt_seconds",
            "Smoothed round-trip time of a link's pings (links with a sample); they wait behind \
             the data the link sends, so a busy link's includes its queue.",
            &by_link,
        );
        let packets = f.counter(
            "wanmux_link_sent_packets_total",
            "QUIC links: UDP packets the link's connection sent.",
            &by_link,
        );
        let lost = f.counter(
            "wanmux_link_lost_packets_total",
            "QUIC links: packets the link's connection declared lost and sent again (the \
             path's loss, which QUIC repairs under the link).",
            &by_link,
        );
        let min_rtt = f.gauge(
            "wanmux_link_min_rtt_seconds",
            "Smallest round-trip time sampled on a link since it came up: the path's own, without a \
             queue.",
            &by_link,
        );
        let rate = f.gauge(
            "wanmux_link_delivery_rate_bytes_per_second",
            "Bytes per second a link's peer confirmed, smoothed.",
            &by_link,
        );
        let unconfirmed = f.gauge(
            "wanmux_link_unconfirmed_entries",
            "Entries sent on a link and not yet confirmed by a pong.",
            &by_link,
        );
        let sent = f.counter(
            "wanmux_link_sent_bytes_total",
            "Plaintext bytes sent on a link.",
            &by_link,
        );
        let received = f.counter(
            "wanmux_link_received_bytes_total",
            "Plaintext bytes received on a link.",
            &by_link,
        );
        let info = f.gauge(
            "wanmux_link_info",
            "1 for each link up, with where it goes and what it runs over (tcp or quic).",
            &["session", "peer", "link", "address", "transport"],
        );
        let relayed_up = f.counter(
            "wanmux_relayed_sent_bytes_total",
            "Section bytes relayed upstream (client to owner), per node: on the client, other \
             owners' sections on the node's links; on a node, what it relayed to that peer.",
            &["node"],
        );
        let relayed_down = f.counter(
            "wanmux_relayed_received_bytes_total",
            "Section bytes relayed downstream (owner to client), per node, as the upstream ones.",
            &["node"],
        );
        let peer_up = f.gauge(
            "wanmux_peer_link_up",
            "Node: 1 while its peer link to that node of the cluster is up, else 0.",
            &["node"],
        );
        for r in &self.relayed {
            let node = r.node.to_string();
            if let Some(up) = r.peer_link_up {
                peer_up
                    .with_label_values(&[node.as_str()])
                    .set(f64::from(u8::from(up)));
            }
            relayed_up
                .with_label_values(&[node.as_str()])
                .inc_by(r.sent_bytes);
            relayed_down
                .with_label_values(&[node.as_str()])
                .inc_by(r.received_bytes);
        }
        for s in &self.sessions {
            let labels = [s.id.as_str(), s.peer.as_str()];
            open.with_label_values(&labels).set(s.streams as f64);
            up.with_label_values(&labels).set(s.links_up() as f64);
            buffered
                .with_label_values(&labels)
                .set(s.receive_buffered_bytes as f64);
            resent.with_label_values(&labels).inc_by(s.resent_bytes);
            for l in &s.links {
                let id = l.id.to_string();
                let labels = [s.id.as_str(), s.peer.as_str(), id.as_str()];
                if let Some(ms) = l.rtt_ms {
                    rtt.with_label_values(&labels).set(ms / 1e3);
                }
                if let Some(ms) = l.min_rtt_ms {
                    min_rtt.with_label_values(&labels).set(ms / 1e3);
                }
                if let (Some(sent), Some(n)) = (l.sent_packets, l.lost_packets) {
                    packets.with_label_values(&labels).inc_by(sent);
                    lost.with_label_values(&labels).inc_by(n);
                }
                rate.with_label_values(&labels)
                    .set(l.delivery_rate_bytes_per_second as f64);
                unconfirmed
                    .with_label_values(&labels)
                    .set(l.unconfirmed as f64);
                sent.with_label_values(&labels).inc_by(l.sent_bytes);
                received.with_label_values(&labels).inc_by(l.received_bytes);
                let [session, peer, link] = labels;
                if l.relayed {
                    // A path through another node: its series above join on this row too.
                    info.with_label_values(&[session, peer, link, "", "relay"])
                        .set(1.0);
                } else if let (Some(address), Some(transport)) = (&l.address, &l.transport) {
                    info.with_label_values(&[session, peer, link, address, transport])
                        .set(1.0);
                }
            }
        }
    }
}

/// A registry made for one scrape: the families of one [`Status`].
#[derive(Default)]
struct Families {
    registry: prometheus::Registry,
}

impl Families {
    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
        let g = prometheus::GaugeVec::new(prometheus::Opts::new(name, help), labels)
            .expect("valid metric names");
        self.registry
            .register(Box::new(g.clone()))
            .expect("each family registered once");
        g
    }

    /// A counter of seconds (a float), with no labels.
    fn seconds_counter(&self, name: &str, help: &str) -> prometheus::CounterVec {
        let c = prometheus::CounterVec::new(prometheus::Opts::new(name, help), &[])
            .expect("valid metric names");
        self.registry
            .register(Box::new(c.clone()))
            .expect("each family registered once");
        c
    }

    fn counter(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::IntCounterVec {
        let c = prometheus::IntCounterVec::new(prometheus::Opts::new(name, help), labels)
            .expect("valid metric names");
        self.registry
            .register(Box::new(c.clone()))
            .expect("each family registered once");
        c
    }
}
