//! What the engine knows about one link: what went out on it and is not yet known to have
//! been processed by the peer, its round-trip time, and the pings and pongs it owes.
//!
//! Delivery confirmation uses pings: a link is an ordered, reliable byte stream while it lives,
//! so a `PONG` proves the peer processed every frame sent on that link before the `PING`. What
//! was sent after the last confirmed ping is resent elsewhere if the link dies.

use crate::frame::Frame;
use crate::ids::StreamId;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Idle links are pinged this often.
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(10);
/// A link with unconfirmed frames is pinged at most this often (and at most one ping is
/// outstanding), so a busy link on a short path does not answer every message with a pong.
pub(crate) const PING_INTERVAL: Duration = Duration::from_millis(5);
/// A link's delivery rate counts as current while its last pong is at most this old (or twice
/// its smoothed RTT, if longer): a busy link's pongs come every round trip, an idle link's
/// every [`KEEPALIVE`]. An interval between pongs longer than that is a sample of its own, not
/// a quarter of the smoothed rate: an idle link reported the rate of its last busy second for
/// a minute after it went quiet.
const RATE_FRESH: Duration = Duration::from_secs(1);
/// A ping unanswered for this long (at least) declares its link dead.
pub(crate) const DEAD_MIN: Duration = Duration::from_secs(2);
/// Before the first RTT sample, a ping unanswered for this long declares its link dead.
pub(crate) const DEAD_INITIAL: Duration = Duration::from_secs(5);

/// Something sent on a link that must be resent if the link dies unconfirmed.
#[derive(Debug, Clone)]
pub(crate) enum Sent {
    /// Stream bytes `[start, end)`, with the FIN if `fin`.
    Data {
        stream: StreamId,
        start: u64,
        end: u64,
        fin: bool,
    },
    /// A `WINDOW` for a live stream, with the values it carried: resend the stream's current
    /// window, or these values once the stream is gone (its final acknowledgement, which the
    /// peer may still wait for: a stream ends here once the peer acked our FIN and we read
    /// theirs, possibly before the link carrying our ack of their FIN is confirmed).
    Window {
        stream: StreamId,
        acked: u64,
        max: u64,
    },
    /// A `SESSION_WINDOW`: resend the current one.
    SessionWindow,
    /// A frame that must be resent as it was (`OPEN`, `RESET`, a final `WINDOW`).
    Control(Frame),
}

/// Smoothed round-trip time, RFC 6298 style.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rtt {
    /// Smoothed RTT; `None` before the first sample.
    pub smoothed: Option<Duration>,
    /// Mean deviation.
    pub var: Duration,
    /// Most recent sample.
    pub latest: Duration,
    /// Smallest sample seen.
    pub min: Option<Duration>,
}

impl Rtt {
    fn sample(&mut self, rtt: Duration) {
        self.latest = rtt;
        self.min = Some(self.min.map_or(rtt, |m| m.min(rtt)));
        match self.smoothed {
            None => {
                self.smoothed = Some(rtt);
                self.var = rtt / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(rtt);
                self.var = (self.var * 3 + diff) / 4;
                self.smoothed = Some((s * 7 + rtt) / 8);
            }
        }
    }
}

/// Per-link numbers for the scheduler, logs and status.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkStats {
    /// Round-trip time from pings.
    pub rtt: Rtt,
    /// Plaintext bytes handed to the driver for this link.
    pub bytes_sent: u64,
    /// Plaintext bytes received on this link.
    pub bytes_received: u64,
    /// Entries sent and not yet confirmed by a pong.
    pub unconfirmed: usize,
    /// Plaintext bytes the peer confirmed (by pong) it processed.
    pub delivered: u64,
    /// Delivery rate, bytes per second: bytes confirmed between successive pongs over the
    /// time between them, smoothed (1/4 weight per sample; a sample over more than 1 s, or
    /// two smoothed RTTs, replaces it). On a busy link this is what the link moves end to end;
    /// an idle link's keepalive pong brings it to zero, and [`super::Session::link_stats`]
    /// reports zero as soon as no pong came for that long.
    pub delivery_rate: u64,
    /// The link is a dedicated interactive lane (`links.lanes`).
    pub lane: bool,
}

/// A ping awaiting its pong.
#[derive(Debug, Clone, Copy)]
struct OutstandingPing {
    token: u64,
    sent_at: Instant,
    /// The sequence number of `LinkState::sent` it confirms up to.
    confirms: u64,
    /// Plaintext bytes sent on the link up to and including it.
    bytes: u64,
}

/// What a link's writer is doing, and since when it has been busy or idle: the engine decides
/// which parked writer to wake ([`super::Session::poll_wakes`]) and reads how long every link
/// has been busy to ask for more links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writer {
    /// Its last poll found data to send.
    Busy { since: Instant },
    /// Woken (or new) and about to poll; idle since `since`.
    Woken { since: Instant },
    /// Found nothing to send and waits to be woken; idle since `since`.
    Parked { since: Instant },
}

impl Writer {
    pub(crate) fn is_parked(self) -> bool {
        matches!(self, Writer::Parked { .. })
    }

    /// Woken (or new) and not yet polled.
    pub(crate) fn is_woken(self) -> bool {
        matches!(self, Writer::Woken { .. })
    }

    /// A poll found data to send.
    pub(crate) fn sent(self, now: Instant) -> Self {
        match self {
            Writer::Busy { .. } => self,
            Writer::Woken { .. } | Writer::Parked { .. } => Writer::Busy { since: now },
        }
    }

    /// The writer found nothing and waits.
    pub(crate) fn park(self, now: Instant) -> Self {
        match self {
            Writer::Busy { .. } => Writer::Parked { since: now },
            Writer::Woken { since } | Writer::Parked { since } => Writer::Parked { since },
        }
    }

    /// The engine woke it.
    pub(crate) fn wake(self) -> Self {
        match self {
            Writer::Parked { since } => Writer::Woken { since },
            other => other,
        }
    }

    /// Whether it is busy, and since when it has been busy or idle.
    pub(crate) fn activity(self) -> LinkActivity {
        match self {
            Writer::Busy { since } => LinkActivity { busy: true, since },
            Writer::Woken { since } | Writer::Parked { since } => {
                LinkActivity { busy: false, since }
            }
        }
    }
}

/// What a link's writer has been doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkActivity {
    /// It found data to send the last time it looked.
    pub busy: bool,
    /// Since when `busy` has had this value.
    pub since: Instant,
}

#[derive(Debug)]
pub(crate) struct LinkState {
    /// Sent, unconfirmed; `base` is the sequence number of the front entry.
    pub(crate) sent: VecDeque<Sent>,
    pub(crate) base: u64,
    ping: Option<OutstandingPing>,
    /// When the last pong arrived, for delivery-rate samples.
    last_pong: Option<Instant>,
    /// When the last ping went out; `None` before the first.
    last_ping: Option<Instant>,
    created: Instant,
    /// The ping timer fired; the next transmit carries a ping.
    pub(crate) ping_due: bool,
    /// Since when a ping has been due and not gone out. A link whose writer cannot write (a QUIC
    /// connection to a vanished peer, its congestion window full of packets nobody acks, or a
    /// sub-link whose carrier is in that state) never sends it: the dead timer runs from here.
    due_since: Option<Instant>,
    pub(crate) pongs_owed: Vec<u64>,
    pub(crate) stats: LinkStats,
    /// Sequence number below which entries were already sent again on other links because
    /// this link stalled (see [`LinkState::rescue_at`]).
    pub(crate) rescued: u64,
    /// A dedicated interactive lane (`links.lanes`): never carries bulk data.
    pub(crate) lane: bool,
    /// A sub-link or virtual link through a relay: takes no pinned stream's data.
    pub(crate) relayed: bool,
    /// Its messages are at most this long (a relayed link's travel inside a section).
    pub(crate) max_message: usize,
    pub(crate) writer: Writer,
}

impl LinkState {
    pub(crate) fn new(now: Instant) -> Self {
        LinkState {
            sent: VecDeque::new(),
            base: 0,
            ping: None,
            last_pong: None,
            last_ping: None,
            created: now,
            ping_due: false,
            due_since: None,
            pongs_owed: Vec::new(),
            stats: LinkStats::default(),
            rescued: 0,
            lane: false,
            relayed: false,
            max_message: crate::frame::MAX_MESSAGE,
            writer: Writer::Woken { since: now },
        }
    }

    pub(crate) fn record(&mut self, s: Sent) {
        self.sent.push_back(s);
    }

    /// Whether a ping should go out with the next message: one at a time, when the ping timer
    /// fired, or when frames await confirmation and the last ping is `PING_INTERVAL` old.
    pub(crate) fn wants_ping(&self, now: Instant) -> bool {
        self.ping.is_none()
            && (self.ping_due
                || (!self.sent.is_empty()
                    && self.last_ping.is_none_or(|t| now >= t + PING_INTERVAL)))
    }

    /// Whether a ping sent now would give this link its first RTT sample: it has none and no
    /// ping is outstanding.
    pub(crate) fn wants_first_sample(&self) -> bool {
        self.ping.is_none() && self.stats.rtt.min.is_none()
    }

    /// Whether this link has a ping of its own to send now.
    pub(crate) fn ping_pending(&self) -> bool {
        self.ping_due && self.ping.is_none()
    }

    /// A ping went out; `bytes` is the plaintext sent on the link up to and including it.
    pub(crate) fn ping_sent(&mut self, now: Instant, token: u64, bytes: u64) {
        self.ping = Some(OutstandingPing {
            token,
            sent_at: now,
            confirms: self.base + self.sent.len() as u64,
            bytes,
        });
        self.last_ping = Some(now);
        self.ping_due = false;
        self.due_since = None;
    }

    /// A pong arrived: drop everything it confirms and take an RTT sample. Pongs that match
    /// no outstanding ping (late or forged) are ignored: returns whether it matched.
    pub(crate) fn pong(&mut self, now: Instant, token: u64) -> bool {
        let Some(OutstandingPing {
            token: t,
            sent_at: at,
            confirms: upto,
            bytes,
        }) = self.ping
        else {
            return false;
        };
        if t != token {
            return false;
        }
        self.ping = None;
        self.stats.rtt.sample(now.saturating_duration_since(at));
        if let Some(prev) = self.last_pong {
            let secs = now.saturating_duration_since(prev).as_secs_f64();
            if secs > 0.0 {
                let sample = (bytes.saturating_sub(self.stats.delivered) as f64 / secs) as u64;
                let long = now.saturating_duration_since(prev) > self.rate_fresh();
                self.stats.delivery_rate = if self.stats.delivery_rate == 0 || long {
                    sample
                } else {
                    (self.stats.delivery_rate * 3 + sample) / 4
                };
            }
        }
        self.last_pong = Some(now);
        self.stats.delivered = self.stats.delivered.max(bytes);
        while self.base < upto && self.sent.pop_front().is_some() {
            self.base += 1;
        }
        true
    }

    /// Drops confirmed-by-ack entries at the front so the queue does not grow while a
    /// ping is outstanding.
    pub(crate) fn pop_front_while(&mut self, mut done: impl FnMut(&Sent) -> bool) {
        while let Some(front) = self.sent.front() {
            if !done(front) {
                break;
            }
            self.sent.pop_front();
            self.base += 1;
        }
    }

    /// How long a ping may go unanswered before the link is declared dead: four smoothed RTTs
    /// plus eight deviations (pings queue behind data, so a loaded link's samples include its
    /// queue), at least `DEAD_MIN`.
    pub(crate) fn dead_after(&self) -> Duration {
        match self.stats.rtt.smoothed {
            Some(srtt) => (srtt * 4 + self.stats.rtt.var * 8).max(DEAD_MIN),
            None => DEAD_INITIAL,
        }
    }

    /// When the outstanding ping, if any, is late enough that the link looks stalled (a loss
    /// being repaired, a TCP retransmission timer backing off, a path going dark): two smoothed
    /// RTTs plus four deviations plus 10 ms after it went out. With no ping outstanding, the
    /// same after a ping came due and could not go out (the writer takes no message: a QUIC
    /// connection to a peer that died, its congestion window full of packets nobody acks). On
    /// a healthy link a due ping goes out with the next message, within the queue's drain,
    /// which the smoothed RTT of its pings already includes.
    fn stalled_at(&self) -> Option<Instant> {
        let at = self.ping.map(|p| p.sent_at).or(self.due_since)?;
        let late = match self.stats.rtt.smoothed {
            Some(srtt) => srtt * 2 + self.stats.rtt.var * 4 + Duration::from_millis(10),
            None => DEAD_MIN,
        };
        Some(at + late)
    }

    /// Whether the link looks stalled (see `stalled_at`). Such a link is not used as an
    /// interactive lane, and what it carries unconfirmed is sent again elsewhere.
    pub(crate) fn stalled(&self, now: Instant) -> bool {
        self.stalled_at().is_some_and(|t| now > t)
    }

    /// When entries not yet rescued should be sent again on other links: one smoothed RTT after
    /// the link began to look stalled, if it carries unconfirmed entries sent since the last
    /// rescue. A loss that the link's own transport repairs (TCP's fast retransmit, QUIC's loss
    /// detection) holds the ping sent behind it about one round trip, and a queue growing at
    /// the bottleneck delays it too: on short paths either made links look stalled now and then,
    /// and each rescue sent the link's unconfirmed data across the WAN a second time (up to
    /// 1 MB per 10 s run on the lab's 50 Mbit/s 20 ms paths, up to 1.7% of what they carried:
    /// `bench/RESULTS.md`, "Rescues"). A link that stopped (a dead peer, a dark path) is
    /// rescued one round trip after it stops being used as a lane.
    pub(crate) fn rescue_at(&self) -> Option<Instant> {
        if self.base + (self.sent.len() as u64) <= self.rescued {
            return None;
        }
        let grace = self.stats.rtt.smoothed.unwrap_or(Duration::ZERO);
        self.stalled_at().map(|at| at + grace)
    }

    /// Someone suspects the link (a sub-link through it died): unless a ping is outstanding or
    /// due already, one goes out with the next message, so a live link answers within a round
    /// trip and a dead one meets its dead timer from `now` rather than at its next keepalive.
    pub(crate) fn probe(&mut self, now: Instant) {
        if self.ping.is_none() && !self.ping_due {
            self.ping_timer_fired(now);
        }
    }

    /// How long a delivery rate stays current after the pong that measured it (see
    /// [`RATE_FRESH`]).
    fn rate_fresh(&self) -> Duration {
        self.stats
            .rtt
            .smoothed
            .map_or(RATE_FRESH, |srtt| RATE_FRESH.max(2 * srtt))
    }

    /// The delivery rate at `now`: the smoothed rate of the last pongs, or zero once no pong
    /// has come for [`RATE_FRESH`] (a link that confirmed nothing for that long delivers
    /// nothing).
    pub(crate) fn delivery_rate_at(&self, now: Instant) -> u64 {
        match self.last_pong {
            Some(at) if now.saturating_duration_since(at) <= self.rate_fresh() => {
                self.stats.delivery_rate
            }
            _ => 0,
        }
    }

    /// When the last pong arrived; `None` before the first.
    pub(crate) fn last_pong(&self) -> Option<Instant> {
        self.last_pong
    }

    /// The ping timer fired at `now`: the next transmit carries a ping.
    pub(crate) fn ping_timer_fired(&mut self, now: Instant) {
        self.ping_due = true;
        self.due_since.get_or_insert(now);
    }

    /// When the outstanding ping, if any, declares the link dead; or, with none outstanding,
    /// the ping that has been due since `due_since` without going out (the writer could not
    /// write for that long: the link is as dead as one whose ping went unanswered).
    pub(crate) fn dead_at(&self) -> Option<Instant> {
        self.ping
            .map(|p| p.sent_at)
            .or(self.due_since)
            .map(|t| t + self.dead_after())
    }

    /// When the ping timer fires: `PING_INTERVAL` after the last ping while frames await
    /// confirmation, `KEEPALIVE` after it on an idle link; `None` while a ping is outstanding
    /// or already due.
    pub(crate) fn next_ping_at(&self) -> Option<Instant> {
        if self.ping.is_some() || self.ping_due {
            return None;
        }
        match (self.last_ping, self.sent.is_empty()) {
            (Some(t), true) => Some(t + KEEPALIVE),
            (Some(t), false) => Some(t + PING_INTERVAL),
            (None, true) => Some(self.created + KEEPALIVE),
            (None, false) => Some(self.created),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pongs_give_rtt_and_delivery_rate() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = LinkState::new(t0);
        l.ping_sent(t0, 1, 1_000);
        assert!(l.pong(t0 + ms(40), 1));
        assert_eq!(l.stats.rtt.smoothed, Some(ms(40)));
        assert_eq!(l.stats.delivery_rate, 0, "one pong is no interval yet");
        // 100 kB confirmed 100 ms after the previous pong: 1 MB/s.
        l.ping_sent(t0 + ms(100), 2, 101_000);
        l.pong(t0 + ms(140), 2);
        assert_eq!(l.stats.delivered, 101_000);
        assert_eq!(l.stats.delivery_rate, 1_000_000);
        // A forged or late pong changes nothing, and says so.
        assert!(!l.pong(t0 + ms(150), 2));
        assert_eq!(l.stats.delivered, 101_000);
        // Then 50 kB in 100 ms (500 kB/s): smoothed with a quarter weight.
        l.ping_sent(t0 + ms(200), 3, 151_000);
        l.pong(t0 + ms(240), 3);
        assert_eq!(l.stats.delivery_rate, 875_000);
        assert_eq!(l.delivery_rate_at(t0 + ms(1_240)), 875_000);
    }

    #[test]
    fn an_idle_link_reports_no_delivery_rate() {
        // A transfer ends: the node's links kept reporting its rate, and a keepalive pong 10 s
        // later took off only a quarter of it.
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = LinkState::new(t0);
        l.ping_sent(t0, 1, 0);
        l.pong(t0 + ms(40), 1);
        l.ping_sent(t0 + ms(100), 2, 100_000);
        l.pong(t0 + ms(140), 2);
        assert_eq!(l.delivery_rate_at(t0 + ms(140)), 1_000_000);
        assert_eq!(
            l.delivery_rate_at(t0 + ms(1_140)),
            1_000_000,
            "1 s is still current"
        );
        assert_eq!(
            l.delivery_rate_at(t0 + ms(1_141)),
            0,
            "no pong for longer than 1 s"
        );
        // The keepalive: nothing more confirmed in 10 s.
        l.ping_sent(t0 + ms(10_100), 3, 100_000);
        l.pong(t0 + ms(10_140), 3);
        assert_eq!(l.stats.delivery_rate, 0);
        assert_eq!(l.delivery_rate_at(t0 + ms(10_140)), 0);
    }

    #[test]
    fn a_long_round_trip_keeps_its_delivery_rate_current_for_two_of_them() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = LinkState::new(t0);
        l.ping_sent(t0, 1, 0);
        l.pong(t0 + ms(700), 1);
        l.ping_sent(t0 + ms(700), 2, 700_000);
        l.pong(t0 + ms(1_400), 2);
        assert_eq!(l.stats.delivery_rate, 1_000_000);
        assert_eq!(l.delivery_rate_at(t0 + ms(2_700)), 1_000_000);
        assert_eq!(l.delivery_rate_at(t0 + ms(2_900)), 0);
    }
}
