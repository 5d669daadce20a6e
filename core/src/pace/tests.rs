use super::round::CRUISE_GAIN;
use super::*;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

const MTU: u16 = 1452;

/// One sender behind one bottleneck: `rate` bytes/s, a FIFO of `queue` bytes (tail drop),
/// then random loss and `rtt` of propagation. The sender paces like quinn (1.25 x window /
/// RTT, bursts of at most 2 ms of that or 10 packets) within the window.
///
/// Delay variation as in the WAN lab (`bench/wanlab`): `jitter` moves each direction's delay
/// within `± jitter`, smoothly (a new uniform target every `max(10 ms, 4 x jitter)`, linearly
/// interpolated), the order of the packets kept; `reorder` of the packets get an extra delay of
/// their own, uniform in `(0, reorder_delay]`, so later packets overtake them. Losses are known
/// to the sender a little after their packet was due, unless `detect` says how the sender finds
/// them (as QUIC does, from the acknowledgements).
struct Path {
    rate: f64,
    rtt: Duration,
    queue: u64,
    loss: f64,
    jitter: Duration,
    reorder: f64,
    reorder_delay: Duration,
    detect: Option<Detect>,
    /// The ends behave as quinn's do (needs `detect`): the receiver delays its acks (see
    /// [`Receiver`]) and the sender paces by its smoothed RTT (1.25 x window / SRTT), not by the
    /// path's. Reordering delays the packets on their way out, so the receiver sees it.
    quinn: bool,
}

/// QUIC's loss detection (RFC 9002): a packet is lost once a packet sent `packets` later was
/// acknowledged, or once one sent after it was and it is `time` x the RTT old.
#[derive(Clone, Copy)]
struct Detect {
    packets: u64,
    time: f64,
}

impl Detect {
    /// What the QUIC links configure (`crate::quic`).
    const QUIC: Self = Self {
        packets: REORDER_PACKETS as u64,
        time: REORDER_TIME as f64,
    };
    /// RFC 9002's defaults, quinn's.
    const RFC: Self = Self {
        packets: 3,
        time: 9.0 / 8.0,
    };
}

#[derive(Debug, Default)]
struct Outcome {
    delivered: u64,
    sent: u64,
    tail_drops: u64,
    /// The longest the bottleneck queue got, in time to drain it.
    max_queue: Duration,
    /// The queue each packet met, summed, and how many packets: the mean queue a packet of
    /// another flow (a game's) meets beside this one.
    queue_sum: Duration,
    queue_packets: u64,
    /// Packets declared lost that arrived after all (with `Path::detect`).
    spurious: u64,
}

fn run(pace: &mut Pace, path: &Path, start: Instant, secs: f64, seed: u64) -> Outcome {
    run_shared(&mut [pace], path, start, secs, seed).remove(0)
}

/// A packet in flight.
#[derive(Clone, Copy)]
struct Packet {
    seq: u64,
    sent: Instant,
    /// When its ack (or, without `Path::detect`, the notice of its loss) arrives.
    due: Instant,
    delivered: bool,
    /// Declared lost by `Path::detect`; its ack, if it comes, is ignored (as quinn does).
    declared_lost: bool,
}

/// One sender's packets in flight, by due time.
#[derive(Default)]
struct Sender {
    flight: VecDeque<Packet>,
    in_flight: u64,
    tokens: f64,
    next_seq: u64,
    largest_acked: Option<u64>,
    min_rtt: Option<Duration>,
    /// The latest RTT sample (the loss detection's time threshold counts from the larger of it
    /// and the smoothed RTT).
    latest_rtt: Duration,
}

impl Sender {
    /// Declares lost what `detect` finds lost at `now`, as QUIC does after each ack and on its
    /// loss timer. Returns the bytes declared lost.
    fn detect_losses(
        &mut self,
        detect: Detect,
        now: Instant,
        rtt: Duration,
        out: &mut Outcome,
    ) -> u64 {
        let Some(largest) = self.largest_acked else {
            return 0;
        };
        let mtu = u64::from(MTU);
        let old = rtt.mul_f64(detect.time);
        let mut lost = 0;
        for p in self.flight.iter_mut() {
            if p.declared_lost || p.seq >= largest {
                continue;
            }
            if p.seq + detect.packets <= largest || now.saturating_duration_since(p.sent) >= old {
                p.declared_lost = true;
                out.spurious += u64::from(p.delivered);
                lost += mtu;
            }
        }
        self.in_flight -= lost;
        lost
    }
}

/// A smooth delay variation within `± amp`, as the WAN lab's jitter.
struct Jitter {
    amp: f64,
    period: f64,
    /// The start of the current period (seconds after the run's start) and its end values.
    t0: f64,
    v: [f64; 2],
}

impl Jitter {
    fn new(amp: Duration, rng: &mut impl Rng) -> Self {
        let amp = amp.as_secs_f64();
        // No draw without jitter: the loss pattern of a seed stays what it was.
        let mut draw = || {
            if amp > 0.0 {
                rng.random_range(-amp..=amp)
            } else {
                0.0
            }
        };
        Self {
            amp,
            period: (4.0 * amp).max(0.010),
            t0: 0.0,
            v: [draw(), draw()],
        }
    }

    /// The delay offset `t` seconds after the run's start (`t` never decreases much).
    fn at(&mut self, t: f64, rng: &mut impl Rng) -> f64 {
        if self.amp == 0.0 {
            return 0.0;
        }
        while t >= self.t0 + self.period {
            self.t0 += self.period;
            self.v = [self.v[1], rng.random_range(-self.amp..=self.amp)];
        }
        let frac = ((t - self.t0) / self.period).clamp(0.0, 1.0);
        self.v[0] + (self.v[1] - self.v[0]) * frac
    }
}

/// Several senders, each paced by its own controller, sharing one bottleneck FIFO (the links
/// of a session on one path). Returns each sender's outcome (`max_queue` is the queue's).
fn run_shared(
    paces: &mut [&mut Pace],
    path: &Path,
    start: Instant,
    secs: f64,
    seed: u64,
) -> Vec<Outcome> {
    if path.quinn {
        return run_quinn(paces, path, start, secs, seed);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mtu = u64::from(MTU);
    let step = Duration::from_micros(100);
    let end = start + Duration::from_secs_f64(secs);
    let mut senders: Vec<Sender> = paces.iter().map(|_| Sender::default()).collect();
    let mut outs: Vec<Outcome> = paces.iter().map(|_| Outcome::default()).collect();
    let mut link_free = start;
    // Each direction's delay variation, and the latest arrival so far in each (order kept).
    let mut jitter = [
        Jitter::new(path.jitter, &mut rng),
        Jitter::new(path.jitter, &mut rng),
    ];
    let mut last_arrival = [start; 2];
    let mut now = start;
    while now < end {
        for ((pace, s), out) in paces.iter_mut().zip(&mut senders).zip(&mut outs) {
            while let Some(&p) = s.flight.front() {
                if p.due > now {
                    break;
                }
                s.flight.pop_front();
                if p.declared_lost {
                    continue;
                }
                s.in_flight -= mtu;
                if p.delivered {
                    out.delivered += mtu;
                    let rtt = now.saturating_duration_since(p.sent);
                    let min = s.min_rtt.get_or_insert(rtt);
                    *min = (*min).min(rtt);
                    s.largest_acked = s.largest_acked.max(Some(p.seq));
                    s.latest_rtt = rtt;
                    pace.on_ack(now, p.sent, mtu, false, path.rtt.min(*min));
                } else if path.detect.is_none() {
                    pace.on_loss(now, mtu, false);
                }
                if let Some(detect) = path.detect {
                    let lost = s.detect_losses(detect, now, path.rtt.max(s.latest_rtt), out);
                    if lost > 0 {
                        pace.on_loss(now, lost, false);
                    }
                }
                pace.on_in_flight(s.in_flight);
            }
            if let Some(detect) = path.detect {
                // The loss timer.
                let lost = s.detect_losses(detect, now, path.rtt.max(s.latest_rtt), out);
                if lost > 0 {
                    pace.on_loss(now, lost, false);
                    pace.on_in_flight(s.in_flight);
                }
            }
            let rate = 1.25 * pace.window() as f64 / path.rtt.as_secs_f64();
            let burst = (rate * 0.002).max(10.0 * mtu as f64);
            s.tokens = (s.tokens + rate * step.as_secs_f64()).min(burst);
            while s.in_flight + mtu <= pace.window() && s.tokens >= mtu as f64 {
                s.tokens -= mtu as f64;
                out.sent += mtu;
                s.in_flight += mtu;
                let queued = link_free.saturating_duration_since(now);
                out.max_queue = out.max_queue.max(queued);
                out.queue_sum += queued;
                out.queue_packets += 1;
                let backlog = queued.as_secs_f64() * path.rate;
                let due;
                let ok;
                if backlog as u64 + mtu > path.queue {
                    out.tail_drops += 1;
                    ok = false;
                    // Noticed about one RTT later, like a QUIC loss detection (or never
                    // arriving, when the sender detects losses itself).
                    due = now + path.rtt + path.rtt / 8;
                } else {
                    link_free =
                        link_free.max(now) + Duration::from_secs_f64(mtu as f64 / path.rate);
                    ok = !rng.random_bool(path.loss);
                    // Each direction's propagation: half the RTT, its jitter, its order kept.
                    let mut at = link_free;
                    for (dir, last) in last_arrival.iter_mut().enumerate() {
                        let t = at.duration_since(start).as_secs_f64();
                        let off = jitter[dir].at(t, &mut rng);
                        let d = (path.rtt.as_secs_f64() / 2.0 + off).max(0.0);
                        at = (at + Duration::from_secs_f64(d)).max(*last);
                        *last = at;
                    }
                    if path.reorder > 0.0 && rng.random_bool(path.reorder) {
                        at += path.reorder_delay.mul_f64(rng.random_range(0.0..1.0));
                    }
                    due = at + if ok { Duration::ZERO } else { path.rtt / 8 };
                }
                let due = if !ok && path.detect.is_some() {
                    // Never acknowledged: the detection finds it.
                    end + Duration::from_secs(3600)
                } else {
                    due
                };
                // Keep the queue ordered by due time (losses are noticed late).
                let at = s.flight.partition_point(|p| p.due <= due);
                let seq = s.next_seq;
                s.next_seq += 1;
                s.flight.insert(
                    at,
                    Packet {
                        seq,
                        sent: now,
                        due,
                        delivered: ok,
                        declared_lost: false,
                    },
                );
            }
        }
        now += step;
    }
    outs
}

/// quinn's receiver (quinn-proto's `PendingAcks` with its defaults, which the links keep: no
/// ACK_FREQUENCY frames): an ACK as soon as two ack-eliciting packets are unacknowledged or one
/// arrives out of order (below the largest received, or past a gap), otherwise when the oldest
/// unacknowledged one is [`MAX_ACK_DELAY`] old. Arrivals within one step of the simulation are one
/// batch, as a receiver reads several datagrams before it answers.
#[derive(Default)]
struct Receiver {
    /// Packets on their way: (arrival, sequence number), earliest first.
    arriving: BinaryHeap<Reverse<(Instant, u64)>>,
    largest: Option<u64>,
    /// Received and not yet acknowledged, when the first of them arrived and when the largest.
    pending: Vec<u64>,
    first_at: Option<Instant>,
    largest_at: Option<Instant>,
    immediate: bool,
}

/// quinn's `max_ack_delay` (the transport parameter's default).
const MAX_ACK_DELAY: Duration = Duration::from_millis(25);

/// An ACK frame on its way back.
struct AckFrame {
    due: Instant,
    seqs: Vec<u64>,
    /// The ack delay it reports (from the largest packet's arrival).
    delay: Duration,
}

/// A packet in flight, in the order sent (for [`run_quinn`]).
#[derive(Clone, Copy)]
struct Sent {
    seq: u64,
    sent: Instant,
    /// It reaches the receiver.
    arrives: bool,
    acked: bool,
    declared_lost: bool,
}

/// One quinn-like sender with its peer's receiver.
#[derive(Default)]
struct QuinnSender {
    flight: VecDeque<Sent>,
    in_flight: u64,
    tokens: f64,
    next_seq: u64,
    largest_acked: Option<u64>,
    min_rtt: Option<Duration>,
    latest_rtt: Duration,
    srtt: Option<Duration>,
    acks: VecDeque<AckFrame>,
    receiver: Receiver,
}

impl QuinnSender {
    /// Declares lost what `detect` finds lost at `now` (see `Sender::detect_losses`).
    fn detect_losses(&mut self, detect: Detect, now: Instant, out: &mut Outcome) -> u64 {
        let Some(largest) = self.largest_acked else {
            return 0;
        };
        let rtt = self.srtt.unwrap_or_default().max(self.latest_rtt);
        let old = rtt.mul_f64(detect.time);
        let mut lost = 0;
        for p in self.flight.iter_mut() {
            if p.seq >= largest {
                break;
            }
            if p.acked || p.declared_lost {
                continue;
            }
            if p.seq + detect.packets <= largest || now.saturating_duration_since(p.sent) >= old {
                p.declared_lost = true;
                out.spurious += u64::from(p.arrives);
                lost += u64::from(MTU);
            }
        }
        self.in_flight -= lost;
        lost
    }

    /// Drops the packets at the front that are settled.
    fn trim(&mut self) {
        while self
            .flight
            .front()
            .is_some_and(|p| p.acked || p.declared_lost)
        {
            self.flight.pop_front();
        }
    }
}

/// [`run_shared`] with ends that behave as quinn's (`Path::quinn`).
fn run_quinn(
    paces: &mut [&mut Pace],
    path: &Path,
    start: Instant,
    secs: f64,
    seed: u64,
) -> Vec<Outcome> {
    let detect = path.detect.expect("quinn's ends detect losses themselves");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mtu = u64::from(MTU);
    let step = Duration::from_micros(100);
    let end = start + Duration::from_secs_f64(secs);
    let mut senders: Vec<QuinnSender> = paces.iter().map(|_| QuinnSender::default()).collect();
    let mut outs: Vec<Outcome> = paces.iter().map(|_| Outcome::default()).collect();
    let mut link_free = start;
    let mut jitter = [
        Jitter::new(path.jitter, &mut rng),
        Jitter::new(path.jitter, &mut rng),
    ];
    let mut last_arrival = [start; 2];
    let secs_at = |t: Instant| t.saturating_duration_since(start).as_secs_f64();
    let mut now = start;
    while now < end {
        for ((pace, s), out) in paces.iter_mut().zip(&mut senders).zip(&mut outs) {
            // The receiver: this step's arrivals, then an ACK if one is due.
            let r = &mut s.receiver;
            while let Some(&Reverse((at, seq))) = r.arriving.peek() {
                if at > now {
                    break;
                }
                r.arriving.pop();
                let out_of_order = r.largest.is_some_and(|l| seq < l || seq > l + 1);
                if r.largest.is_none_or(|l| seq > l) {
                    r.largest = Some(seq);
                    r.largest_at = Some(at);
                }
                r.pending.push(seq);
                r.first_at.get_or_insert(at);
                r.immediate |= out_of_order || r.pending.len() >= 2;
            }
            if let Some(first) = r.first_at {
                if r.immediate || now >= first + MAX_ACK_DELAY {
                    let off = jitter[1].at(secs_at(now), &mut rng);
                    let back =
                        Duration::from_secs_f64((path.rtt.as_secs_f64() / 2.0 + off).max(0.0));
                    let due = (now + back).max(last_arrival[1]);
                    last_arrival[1] = due;
                    s.acks.push_back(AckFrame {
                        due,
                        seqs: std::mem::take(&mut r.pending),
                        delay: now.saturating_duration_since(r.largest_at.unwrap_or(now)),
                    });
                    (r.first_at, r.immediate) = (None, false);
                }
            }
            // The sender: the ACKs that arrived.
            while s.acks.front().is_some_and(|a| a.due <= now) {
                let ack = s.acks.pop_front().expect("peeked");
                let largest = ack.seqs.iter().copied().max();
                for &seq in &ack.seqs {
                    let Some(base) = s.flight.front().map(|p| p.seq) else {
                        break;
                    };
                    let Some(p) = seq
                        .checked_sub(base)
                        .and_then(|i| s.flight.get_mut(i as usize))
                    else {
                        continue;
                    };
                    if p.acked || p.declared_lost {
                        continue;
                    }
                    p.acked = true;
                    let sent = p.sent;
                    s.in_flight -= mtu;
                    out.delivered += mtu;
                    let rtt = now.saturating_duration_since(sent);
                    let min = *s.min_rtt.get_or_insert(rtt);
                    let min = min.min(rtt);
                    s.min_rtt = Some(min);
                    if Some(seq) == largest {
                        // quinn's RTT estimator: the ack delay is taken off when that leaves
                        // at least the minimum.
                        s.latest_rtt = rtt;
                        let adjusted = if min + ack.delay <= rtt {
                            rtt - ack.delay
                        } else {
                            rtt
                        };
                        s.srtt = Some(s.srtt.map_or(adjusted, |v| (v * 7 + adjusted) / 8));
                    }
                    s.largest_acked = s.largest_acked.max(Some(seq));
                    pace.on_ack(now, sent, mtu, false, min);
                }
                let lost = s.detect_losses(detect, now, out);
                if lost > 0 {
                    pace.on_loss(now, lost, false);
                }
                pace.on_in_flight(s.in_flight);
                s.trim();
            }
            // The loss timer.
            let lost = s.detect_losses(detect, now, out);
            if lost > 0 {
                pace.on_loss(now, lost, false);
                pace.on_in_flight(s.in_flight);
                s.trim();
            }
            // quinn's pacer: 1.25 x window per smoothed RTT.
            let srtt = s.srtt.unwrap_or(path.rtt);
            let rate = 1.25 * pace.window() as f64 / srtt.as_secs_f64();
            let burst = (rate * 0.002).max(10.0 * mtu as f64);
            s.tokens = (s.tokens + rate * step.as_secs_f64()).min(burst);
            while s.in_flight + mtu <= pace.window() && s.tokens >= mtu as f64 {
                s.tokens -= mtu as f64;
                out.sent += mtu;
                s.in_flight += mtu;
                let seq = s.next_seq;
                s.next_seq += 1;
                let queued = link_free.saturating_duration_since(now);
                out.max_queue = out.max_queue.max(queued);
                out.queue_sum += queued;
                out.queue_packets += 1;
                let backlog = queued.as_secs_f64() * path.rate;
                let arrives = if backlog as u64 + mtu > path.queue {
                    out.tail_drops += 1;
                    false
                } else {
                    link_free =
                        link_free.max(now) + Duration::from_secs_f64(mtu as f64 / path.rate);
                    let ok = !rng.random_bool(path.loss);
                    if ok {
                        let off = jitter[0].at(secs_at(link_free), &mut rng);
                        let d = (path.rtt.as_secs_f64() / 2.0 + off).max(0.0);
                        let mut at = (link_free + Duration::from_secs_f64(d)).max(last_arrival[0]);
                        last_arrival[0] = at;
                        if path.reorder > 0.0 && rng.random_bool(path.reorder) {
                            at += path.reorder_delay.mul_f64(rng.random_range(0.0..1.0));
                        }
                        s.receiver.arriving.push(Reverse((at, seq)));
                    }
                    ok
                };
                s.flight.push_back(Sent {
                    seq,
                    sent: now,
                    arrives,
                    acked: false,
                    declared_lost: false,
                });
            }
        }
        now += step;
    }
    outs
}

fn b_path() -> Path {
    // Scenario B of the WAN lab: 200 Mbit/s, 100 ms RTT, 50 ms queue, 1% loss.
    Path {
        rate: 25e6,
        rtt: Duration::from_millis(100),
        queue: 1_250_000,
        loss: 0.01,
        jitter: Duration::ZERO,
        reorder: 0.0,
        reorder_delay: Duration::ZERO,
        detect: None,
        quinn: false,
    }
}

#[test]
fn fills_a_lossy_long_path_without_overrunning_it() {
    let path = b_path();
    let start = Instant::now();
    let mut pace = Pace::new(start, MTU);
    let ramp = run(&mut pace, &path, start, 2.0, 1);
    assert!(
        ramp.delivered as f64 > 0.4 * 2.0 * path.rate,
        "start-up {ramp:?}"
    );
    let out = run(&mut pace, &path, start + Duration::from_secs(2), 8.0, 11);
    let goodput = out.delivered as f64 / 8.0;
    assert!(goodput > 0.95 * path.rate, "goodput {goodput}");
    assert!(matches!(pace.phase(), Phase::Cruise(_)));
    let bdp = path.rate * path.rtt.as_secs_f64();
    let bw = pace.bandwidth() as f64;
    assert!(bw > 0.9 * path.rate && bw < 1.15 * path.rate, "bw {bw}");
    let w = pace.window() as f64;
    assert!(w > bdp && w < 1.6 * bdp, "window {w} vs bdp {bdp}");
    // Start-up's bounded overshoot is the only queue overflow.
    assert!(out.tail_drops * u64::from(MTU) < out.sent / 1000, "{out:?}");
}

#[test]
fn start_up_ends_when_the_queue_builds() {
    // A deep buffer (250 ms): start-up's window cap alone (4.5 x BDP) would overflow it.
    let path = Path {
        queue: 6_250_000,
        loss: 0.0,
        ..b_path()
    };
    let start = Instant::now();
    let mut pace = Pace::new(start, MTU);
    let out = run(&mut pace, &path, start, 3.0, 13);
    assert!(matches!(pace.phase(), Phase::Cruise(_)));
    assert!(out.max_queue < Duration::from_millis(150), "{out:?}");
    assert!(out.delivered as f64 > 0.6 * 3.0 * path.rate, "{out:?}");
}

#[test]
fn start_up_is_not_held_back_by_its_cap() {
    // The window cap counts from the previous round's delivery, which lags the window by a
    // round: at 3 x it bound every round and the first second delivered 41 Mbit here.
    let path = b_path();
    let start = Instant::now();
    let mut pace = Pace::new(start, MTU);
    let first = run(&mut pace, &path, start, 1.0, 14);
    assert!(
        first.delivered as f64 > 0.25 * path.rate,
        "first second {first:?}"
    );
}

/// One busy round of `rtt` in which `acked` bytes are acknowledged, evenly spread, and
/// `lost` bytes declared lost. Returns when it ended.
fn round(pace: &mut Pace, now: Instant, rtt: Duration, acked: u64, lost: u64) -> Instant {
    pace.on_loss(now, lost, false);
    round_at(pace, now, rtt, rtt, acked)
}

/// One busy round of `rtt` in which every ack's RTT sample is `rtt` and the path's minimum
/// is `min_rtt`: `acked` bytes acknowledged, evenly spread. Returns when it ended.
fn round_at(
    pace: &mut Pace,
    now: Instant,
    rtt: Duration,
    min_rtt: Duration,
    acked: u64,
) -> Instant {
    round_with(pace, now, rtt, min_rtt, acked, |_| rtt)
}

/// One busy round of `rtt` like [`round_at`], the RTT sample of the ack of packet `k` (counted
/// from 1 of `acked / MTU`) given by `sample(k)`; the last ack, one RTT on, ends the round, so
/// its sample must be `rtt`.
fn round_with(
    pace: &mut Pace,
    now: Instant,
    rtt: Duration,
    min_rtt: Duration,
    acked: u64,
    sample: impl Fn(u64) -> Duration,
) -> Instant {
    let packets = acked / u64::from(MTU);
    // The last ack is exactly one RTT on, for the packet sent as the round began: it ends
    // the round.
    let at = |k: u64| now + rtt.mul_f64(k as f64 / packets as f64);
    for k in 1..=packets {
        pace.on_ack(at(k), at(k) - sample(k), u64::from(MTU), false, min_rtt);
        // The sender keeps its window full.
        pace.on_in_flight(pace.window());
    }
    at(packets)
}

/// A controller (id 2) on a path whose other links report to the returned share.
fn on_shared_path(start: Instant) -> (Pace, Arc<PathShare>) {
    let share = Arc::new(PathShare::default());
    let mut pace = Pace::new(start, MTU);
    (pace.id, pace.share) = (2, Some(share.clone()));
    (pace, share)
}

/// Busy rounds that each deliver `bdp` in `rtt` until start-up ends on flat rounds. Returns
/// when the last ended.
fn through_start_up(pace: &mut Pace, start: Instant, rtt: Duration, bdp: u64) -> Instant {
    let mut now = start;
    while pace.phase() == Phase::Startup {
        now = round(pace, now, rtt, bdp, 0);
    }
    now
}

/// [`cruising_at`] in `phase`, as link 2 of a path whose other links report to the returned
/// share ([`on_shared_path`]).
fn cruising_on_shared_path(
    path: &Path,
    start: Instant,
    fraction: f64,
    phase: Phase,
) -> (Pace, Arc<PathShare>) {
    let (pace, share) = on_shared_path(start);
    let pace = Pace {
        id: pace.id,
        share: pace.share,
        phase,
        ..cruising_at(path, start, fraction)
    };
    (pace, share)
}

/// A link in cruise on `path` whose estimate is `fraction` of the path's rate.
fn cruising_at(path: &Path, start: Instant, fraction: f64) -> Pace {
    let mut pace = Pace::new(start, MTU);
    let low = (fraction * path.rate) as u64;
    pace.phase = Phase::Cruise(1);
    pace.min_rtt = Some(path.rtt);
    pace.filter = BwFilter::filled(low);
    (pace.bw, pace.full_bw) = (low, low);
    pace.window = (CRUISE_GAIN * pace.bdp() as f64) as u64;
    pace
}

#[test]
fn only_repeated_overrun_after_start_up_has_settled_cuts_the_bandwidth() {
    // Scenario C: 12.5 MB/s, 200 ms. Start-up ends on flat rounds.
    let rtt = Duration::from_millis(200);
    let bdp = 2_500_000;
    let start = Instant::now();
    let mut pace = Pace::new(start, MTU);
    let mut now = through_start_up(&mut pace, start, rtt, bdp);
    let bw = pace.bandwidth() as f64;
    // Start-up's overshoot: two rounds losing a third of their bytes, half delivered (the
    // sender waits behind the lost data).
    now = round(&mut pace, now, rtt, bdp / 2, bdp / 4);
    now = round(&mut pace, now, rtt, bdp / 2, bdp / 4);
    assert!(pace.bandwidth() as f64 > 0.9 * bw, "{pace:?}");
    for _ in 0..4 {
        now = round(&mut pace, now, rtt, bdp, 0);
    }
    // A burst: one overrun round.
    now = round(&mut pace, now, rtt, bdp / 2, bdp / 4);
    now = round(&mut pace, now, rtt, bdp, 0);
    assert!(pace.bandwidth() as f64 > 0.9 * bw, "{pace:?}");
    // The path slowed to half: overrun round after round.
    now = round(&mut pace, now, rtt, bdp / 2, bdp / 4);
    round(&mut pace, now, rtt, bdp / 2, bdp / 4);
    assert!((pace.bandwidth() as f64) < 0.6 * bw, "{pace:?}");
}

#[test]
fn start_up_that_ends_on_a_queue_is_not_re_entered_at_the_rate_it_found() {
    // Start-up ends mid-round when the queue shows, its bandwidth still growing; what it
    // delivered until it settled is the reference for going back, not its last full
    // round: with that lower reference it went back and doubled into the full queue
    // (bench/RESULTS.md, lessons).
    let rtt = Duration::from_millis(100);
    let start = Instant::now();
    let mut pace = Pace::new(start, MTU);
    let mut now = start;
    for acked in [100_000, 200_000, 400_000] {
        now = round_at(&mut pace, now, rtt, rtt, acked);
        assert_eq!(pace.phase(), Phase::Startup);
    }
    // The next round's samples show a queue: start-up ends within it.
    now = round_at(&mut pace, now, rtt + rtt / 5, rtt, 800_000);
    assert!(matches!(pace.phase(), Phase::Cruise(_)), "{pace:?}");
    // Cruise rounds at 5.4 MB/s, with room (the drain emptied the queue): more than 1.25 x
    // the 4 MB/s of start-up's last full round, less than the 6.7 MB/s of the round it
    // ended in.
    for _ in 0..6 {
        now = round_at(&mut pace, now, rtt, rtt, 540_000);
        assert!(matches!(pace.phase(), Phase::Cruise(_)), "{pace:?}");
    }
}

#[test]
fn start_up_that_ends_on_a_queue_takes_the_rate_of_its_last_acks() {
    // In the round start-up ends in, the acks come at the rate the window sent a round
    // earlier, which doubles every half round here: from 4 MB/s until it meets the path's
    // 8 MB/s. From then a queue builds, a millisecond per millisecond, until the samples
    // show it. The round's average is about 6 MB/s; the estimate must be near the path's.
    let rtt = Duration::from_millis(200);
    let start = Instant::now();
    let mut pace = Pace::new(start, MTU);
    let mut now = start;
    for acked in [200_000, 400_000, 800_000] {
        now = round_at(&mut pace, now, rtt, rtt, acked);
    }
    assert_eq!(pace.phase(), Phase::Startup);
    let mtu = u64::from(MTU);
    let began = now;
    let mut full = None;
    while pace.phase() == Phase::Startup {
        let t = now.duration_since(began).as_secs_f64();
        let rate = (4e6 * 2f64.powf(t / 0.1)).min(8e6);
        if rate >= 8e6 {
            full.get_or_insert(now);
        }
        now += Duration::from_secs_f64(mtu as f64 / rate);
        let queued = full.map_or(Duration::ZERO, |f| now.duration_since(f));
        pace.on_ack(now, now - rtt - queued, mtu, false, rtt);
        pace.on_in_flight(pace.window());
    }
    let bw = pace.bandwidth() as f64;
    assert!(bw > 7.2e6 && bw < 8.4e6, "bw {bw}");
}

#[test]
fn two_links_sharing_a_path_keep_it_full_without_overrunning_it() {
    // Two links of one session on scenario B's path, the second joining a second after the
    // first (its start-up ends early, at the first's queue). As in the daemons, they share
    // their path's `PathShare`.
    let path = b_path();
    let share = Arc::new(PathShare::default());
    let start = Instant::now();
    let mut a = Pace::new(start, MTU);
    (a.id, a.share) = (1, Some(share.clone()));
    run(&mut a, &path, start, 1.0, 15);
    let joined = start + Duration::from_secs(1);
    let mut b = Pace::new(joined, MTU);
    (b.id, b.share) = (2, Some(share));
    run_shared(&mut [&mut a, &mut b], &path, joined, 2.0, 16);
    let later = joined + Duration::from_secs(2);
    let outs = run_shared(&mut [&mut a, &mut b], &path, later, 10.0, 17);
    let drops: u64 = outs.iter().map(|o| o.tail_drops).sum();
    let sent: u64 = outs.iter().map(|o| o.sent).sum();
    let delivered: u64 = outs.iter().map(|o| o.delivered).sum();
    let queue = outs.iter().map(|o| o.max_queue).max().unwrap();
    assert!(drops * u64::from(MTU) < sent / 1000, "{outs:?}");
    assert!(queue < Duration::from_millis(40), "{outs:?}");
    assert!(delivered as f64 / 10.0 > 0.95 * path.rate, "{outs:?}");
}

#[test]
fn a_link_that_starts_while_another_fills_its_path_grows_by_a_quarter_per_round() {
    // A session's second link starts while the first carries the bulk: start-up's doubling
    // would overrun the first link's queue (bench/RESULTS.md, lessons).
    let rtt = Duration::from_millis(100);
    let start = Instant::now();
    let grown = |others_busy: bool| {
        let (mut pace, share) = on_shared_path(start);
        let mut now = start;
        let mut growth = Vec::new();
        for _ in 0..4 {
            if others_busy {
                share.report(1, now);
            }
            let w = pace.window();
            now = round_at(&mut pace, now, rtt, rtt, w);
            growth.push(pace.window() as f64 / w as f64);
        }
        growth
    };
    // (The first round measures the path: the window cap needs a bandwidth.)
    let gentle = grown(true);
    assert!(gentle[1..].iter().all(|&g| g < 1.26), "{gentle:?}");
    // Alone on the path (or once the other link stops reporting: it went idle, or died),
    // start-up doubles.
    let alone = grown(false);
    assert!(alone[1..].iter().all(|&g| g > 1.9), "{alone:?}");
}

#[test]
fn a_cruise_round_leaves_cruise_only_if_the_path_has_room() {
    // A link of a session whose share grows (another link's shrinks) delivers more than its
    // start-up found, but its RTT samples show the path's queue: start-up's doubling would
    // overrun it (bench/RESULTS.md, lessons). The same rise
    // with an empty queue means room: alone on the path, start-up finds it; beside another
    // link of the session that fills the path, a climb does (the rise may be its share).
    let rtt = Duration::from_millis(100);
    let bdp = 1_000_000;
    let after_rise = |beside_busy_link: bool| {
        let start = Instant::now();
        let (mut pace, share) = on_shared_path(start);
        let mut now = through_start_up(&mut pace, start, rtt, bdp);
        // Settled cruise at that rate (the rounds just after start-up count as its own).
        for _ in 0..4 {
            now = round_at(&mut pace, now, rtt + rtt / 10, rtt, bdp);
        }
        for _ in 0..3 {
            now = round_at(&mut pace, now, rtt + rtt / 10, rtt, 3 * bdp / 2);
            assert!(matches!(pace.phase(), Phase::Cruise(_)), "{pace:?}");
        }
        if beside_busy_link {
            share.report(1, now);
        }
        round_at(&mut pace, now, rtt, rtt, 3 * bdp / 2);
        pace.phase()
    };
    assert_eq!(after_rise(false), Phase::Startup);
    assert_eq!(after_rise(true), Phase::Climb(0));
}

#[test]
fn a_climb_that_finds_no_room_ends_within_three_rounds_of_1_15() {
    // Cruise at 10 MB/s, then a round delivers 15 MB/s with no queue: the climb starts. The
    // path delivers no more than that: the second and third rounds' deliveries show that the
    // windows before found no room. Doubling instead would overrun the path's queue
    // (bench/RESULTS.md, lessons).
    let rtt = Duration::from_millis(100);
    let bdp = 1_000_000;
    let start = Instant::now();
    let (mut pace, share) = on_shared_path(start);
    let mut now = through_start_up(&mut pace, start, rtt, bdp);
    for _ in 0..8 {
        now = round(&mut pace, now, rtt, bdp, 0);
    }
    // The session's other link fills the path.
    share.report(1, now);
    now = round(&mut pace, now, rtt, 3 * bdp / 2, 0);
    assert_eq!(pace.phase(), Phase::Climb(0), "{pace:?}");
    let mut windows = vec![pace.window()];
    for _ in 0..3 {
        now = round(&mut pace, now, rtt, 3 * bdp / 2, 0);
        windows.push(pace.window());
    }
    assert!(matches!(pace.phase(), Phase::Cruise(_)), "{pace:?}");
    let most = *windows.iter().max().unwrap();
    assert!(most <= 3 * bdp / 2 * 116 / 100, "{windows:?}");
}

#[test]
fn a_busy_cruise_round_climbs_only_if_its_samples_saw_no_queue() {
    // Start-up ended on flat rounds at 10 MB/s. Cruise rounds that deliver their window with
    // RTT samples at the minimum climb; with the twentieth of the RTT queued that a right
    // estimate keeps, they stay in cruise.
    let rtt = Duration::from_millis(100);
    let bdp = 1_000_000;
    let after = |queue: Duration| {
        let start = Instant::now();
        let mut pace = Pace::new(start, MTU);
        let mut now = through_start_up(&mut pace, start, rtt, bdp);
        for _ in 0..6 {
            let w = pace.window();
            now = round_at(&mut pace, now, rtt + queue, rtt, w);
            if matches!(pace.phase(), Phase::Climb(_)) {
                break;
            }
        }
        pace.phase()
    };
    assert_eq!(after(Duration::ZERO), Phase::Climb(0));
    assert!(matches!(after(rtt / 20), Phase::Cruise(_)));
}

#[test]
fn a_path_that_drops_instead_of_queueing_gets_a_climb_per_probing_cycle_at_most() {
    // A policer: it delivers 10 MB/s whatever the window and drops the rest, and no RTT
    // sample ever shows a queue. A climb that found nothing waits for the probing round.
    let rtt = Duration::from_millis(100);
    let bdp = 1_000_000;
    let start = Instant::now();
    let mut pace = Pace::new(start, MTU);
    let mut now = through_start_up(&mut pace, start, rtt, bdp);
    let rounds = 110;
    let mut climbs = 0;
    for _ in 0..rounds {
        let w = pace.window();
        now = round(&mut pace, now, rtt, w.min(bdp), w.saturating_sub(bdp));
        climbs += usize::from(pace.phase() == Phase::Climb(0));
    }
    // A futile climb and the cycle after it: 11 rounds.
    assert!(
        climbs <= rounds / 11 + 1,
        "{climbs} climbs in {rounds} rounds"
    );
    // The estimate stays at the policer's rate (10 x `bdp` per second).
    assert!(pace.bandwidth() < bdp * 11, "{pace:?}");
}

#[test]
fn a_link_in_cruise_far_below_its_path_goes_back_to_start_up() {
    let path = b_path();
    let start = Instant::now();
    let mut pace = cruising_at(&path, start, 0.05);
    run(&mut pace, &path, start, 1.5, 22);
    let bw = pace.bandwidth() as f64;
    assert!(bw > 0.8 * path.rate, "bw {bw} {pace:?}");
}

#[test]
fn a_window_holds_at_least_a_millisecond_of_the_rate() {
    // A loopback-like path: 100 us at 100 MB/s is a bandwidth-delay product of 7 packets.
    let short = Path {
        rate: 100e6,
        rtt: Duration::from_micros(100),
        queue: 1_000_000,
        loss: 0.0,
        ..b_path()
    };
    let start = Instant::now();
    for phase in [Phase::Cruise(0), Phase::Cruise(1), Phase::Climb(0)] {
        let mut pace = cruising_at(&short, start, 1.0);
        pace.phase = phase;
        pace.set_window();
        let floor = short.rate * MIN_WINDOW_TIME.as_secs_f64();
        assert!(pace.window() as f64 >= 0.99 * floor, "{phase:?}: {pace:?}");
    }
    // And it still fills such a path, with at most a few milliseconds queued.
    let mut pace = Pace::new(start, MTU);
    let out = run(&mut pace, &short, start, 1.0, 5);
    assert!(out.delivered as f64 > 0.9 * short.rate, "{out:?}");
    assert!(out.max_queue < Duration::from_millis(5), "{out:?}");
    // A long path's window is its bandwidth-delay product, as without the floor.
    let long = b_path();
    let mut pace = cruising_at(&long, start, 1.0);
    pace.set_window();
    let bdp = long.rate * long.rtt.as_secs_f64();
    let expected = CRUISE_GAIN * bdp;
    assert!(
        (pace.window() as f64 - expected).abs() < 0.001 * expected,
        "{} against {expected}",
        pace.window()
    );
}

#[test]
fn a_link_in_cruise_below_its_path_finds_it() {
    // Start-up can end below the path's rate (a loss held its last round back), and probes
    // alone take seconds to find the rest. Here the estimate starts at 60% of scenario B's path.
    let path = b_path();
    let start = Instant::now();
    let mut pace = cruising_at(&path, start, 0.6);
    let out = run(&mut pace, &path, start, 3.0, 21);
    let bw = pace.bandwidth() as f64;
    assert!(bw > 0.9 * path.rate, "bw {bw} {pace:?}");
    assert!(out.tail_drops * u64::from(MTU) < out.sent / 1000, "{out:?}");
    assert!(out.max_queue < Duration::from_millis(40), "{out:?}");
}

#[test]
fn random_loss_does_not_shrink_the_window() {
    let path = Path {
        loss: 0.03,
        ..b_path()
    };
    let start = Instant::now();
    let mut pace = Pace::new(start, MTU);
    run(&mut pace, &path, start, 2.0, 2);
    let out = run(&mut pace, &path, start + Duration::from_secs(2), 8.0, 12);
    let goodput = out.delivered as f64 / 8.0;
    assert!(goodput > 0.85 * path.rate, "goodput {goodput}");
}

#[test]
fn a_path_that_slows_down_is_followed() {
    let fast = b_path();
    let start = Instant::now();
    let mut pace = Pace::new(start, MTU);
    run(&mut pace, &fast, start, 5.0, 3);
    let slow = Path {
        rate: fast.rate / 4.0,
        queue: fast.queue / 4,
        ..b_path()
    };
    let later = start + Duration::from_secs(5);
    run(&mut pace, &slow, later, 3.0, 4);
    let out = run(&mut pace, &slow, later + Duration::from_secs(3), 5.0, 5);
    let bdp = slow.rate * slow.rtt.as_secs_f64();
    let w = pace.window() as f64;
    assert!(w < 1.6 * bdp, "window {w} vs bdp {bdp}");
    assert!(out.delivered as f64 / 5.0 > 0.85 * slow.rate, "{out:?}");
    assert!(out.tail_drops * u64::from(MTU) < out.sent / 500, "{out:?}");
}

#[test]
fn an_idle_link_stays_in_start_up() {
    // After its handshake a link carries a ping now and then: rounds that say nothing about
    // the pipe. Start-up must still be there when the bulk arrives.
    let path = b_path();
    let start = Instant::now();
    let mut pace = Pace::new(start, MTU);
    let mut now = start;
    for _ in 0..30 {
        let sent = now;
        now += path.rtt;
        pace.on_ack(now, sent, 100, true, path.rtt);
    }
    assert_eq!(pace.phase(), Phase::Startup);
    let ramp = run(&mut pace, &path, now, 2.0, 7);
    assert!(
        ramp.delivered as f64 > 0.4 * 2.0 * path.rate,
        "start-up {ramp:?}"
    );
}

#[test]
fn a_link_given_little_data_stays_in_start_up() {
    // A session's second link gets data when the first one's writer is full: quinn calls it
    // busy whenever it sent something, but its window is never full. Counted as busy, such a
    // link would leave start-up far below its path's rate, its rounds flat for want of data.
    let rtt = Duration::from_millis(100);
    let start = Instant::now();
    let mut pace = Pace::new(start, MTU);
    let mut now = start;
    for _ in 0..20 {
        for k in 1..=10 {
            let at = now + rtt * k / 10;
            pace.on_ack(at, at - rtt, u64::from(MTU), false, rtt);
            pace.on_in_flight(5 * u64::from(MTU));
        }
        now += rtt;
    }
    assert_eq!(pace.phase(), Phase::Startup, "{pace:?}");
    // Nor did it grow a window it never used.
    assert_eq!(pace.window(), INITIAL_PACKETS * u64::from(MTU));
}

#[test]
fn a_path_that_speeds_up_is_found() {
    let fast = b_path();
    let slow = Path {
        rate: fast.rate / 10.0,
        queue: fast.queue / 10,
        ..b_path()
    };
    let start = Instant::now();
    let mut pace = Pace::new(start, MTU);
    run(&mut pace, &slow, start, 3.0, 8);
    assert!(matches!(pace.phase(), Phase::Cruise(_)));
    let later = start + Duration::from_secs(3);
    run(&mut pace, &fast, later, 3.0, 9);
    let out = run(&mut pace, &fast, later + Duration::from_secs(3), 2.0, 10);
    assert!(out.delivered as f64 / 2.0 > 0.9 * fast.rate, "{out:?}");
}

#[test]
fn persistent_congestion_starts_over() {
    let path = b_path();
    let start = Instant::now();
    let mut pace = Pace::new(start, MTU);
    run(&mut pace, &path, start, 3.0, 6);
    assert!(pace.window() > 1_000_000);
    pace.on_loss(start + Duration::from_secs(4), 1452, true);
    assert_eq!(pace.phase(), Phase::Startup);
    assert_eq!(pace.window(), INITIAL_PACKETS * u64::from(MTU));
}

/// The path of issue 21: 300 Mbit/s, 60 ms RTT, 1% loss, a 50 ms queue.
fn wan_path() -> Path {
    Path {
        rate: 37.5e6,
        rtt: Duration::from_millis(60),
        queue: 1_875_000,
        ..b_path()
    }
}

/// Goodput over the `secs` seconds after a ramp of 2 s, bytes per second.
fn goodput(path: &Path, secs: f64, seed: u64) -> (f64, Outcome) {
    let start = Instant::now();
    let mut pace = Pace::new(start, MTU);
    run(&mut pace, path, start, 2.0, seed);
    let out = run(
        &mut pace,
        path,
        start + Duration::from_secs(2),
        secs,
        seed + 100,
    );
    (out.delivered as f64 / secs, out)
}

#[test]
fn delay_variation_that_keeps_order_is_not_congestion() {
    // ±4 ms in each direction, the packets' order kept: queues elsewhere on the path.
    for seed in [31, 32] {
        let (clean, _) = goodput(&wan_path(), 6.0, seed);
        let jitter = Path {
            jitter: Duration::from_millis(4),
            ..wan_path()
        };
        let (varied, out) = goodput(&jitter, 6.0, seed);
        assert!(clean > 0.9 * jitter.rate, "clean {clean}");
        assert!(
            varied > 0.9 * clean,
            "seed {seed}: {varied} against {clean} {out:?}"
        );
    }
}

#[test]
fn reordering_is_neither_loss_nor_congestion() {
    // The same path with a quarter of the packets up to 8 ms late, behind later ones (per-packet
    // load balancing), the loss detected from the acks as QUIC does. RFC 9002's packet threshold
    // of 3 declares most of the late packets lost; the links' time threshold does not.
    let varied = Path {
        jitter: Duration::from_millis(4),
        detect: Some(Detect::QUIC),
        ..wan_path()
    };
    let reordered = Path {
        reorder: 0.25,
        reorder_delay: Duration::from_millis(8),
        ..varied
    };
    for seed in [41, 42] {
        let (base, _) = goodput(&varied, 6.0, seed);
        let (rate, out) = goodput(&reordered, 6.0, seed);
        assert!(
            rate > 0.8 * base,
            "seed {seed}: {rate} against {base} {out:?}"
        );
        let packets = out.sent / u64::from(MTU);
        assert!(out.spurious * 1000 < packets, "{out:?}");
    }
    let rfc = Path {
        detect: Some(Detect::RFC),
        ..reordered
    };
    let (_, out) = goodput(&rfc, 2.0, 43);
    assert!(out.spurious * 20 > out.sent / u64::from(MTU), "{out:?}");
}

#[test]
fn start_up_on_a_path_whose_delay_varies_leaves_only_on_a_lasting_queue() {
    // Start-up on a path whose RTT has been seen to fall by 6 ms within a round: a peak of that
    // variation above the queue test's floor, shorter than a minimum RTT, does not end it (it
    // grows by a quarter meanwhile); samples that stay above it for a minimum RTT do.
    let rtt = Duration::from_millis(60);
    let mtu = u64::from(MTU);
    let start = Instant::now();
    let mut pace = Pace::new(start, MTU);
    let mut now = start;
    // Acks every `every` for `span`, each sample `sample`; returns how many.
    let acks = |pace: &mut Pace, now: &mut Instant, span: Duration, sample: Duration, every| {
        let end = *now + span;
        let mut n = 0;
        while *now < end {
            *now += Duration::from_micros(every);
            pace.on_ack(*now, *now - sample, mtu, false, rtt);
            pace.on_in_flight(pace.window());
            n += 1;
        }
        n
    };
    // Two rounds whose RTT falls from 66 to 60 ms (the delivery rate doubling each round, as
    // in start-up): the path varies by 6 ms, less than the queue test's allowance.
    for every in [400, 200] {
        acks(
            &mut pace,
            &mut now,
            rtt / 2,
            rtt + Duration::from_millis(6),
            every,
        );
        acks(&mut pace, &mut now, rtt / 2, rtt, every);
    }
    assert_eq!(pace.phase(), Phase::Startup, "{pace:?}");
    assert!(pace.window() >= 128 * mtu, "{pace:?}");
    // A peak 20 ms above the minimum (above 60 + 6 + 66/8 ms) for half a minimum RTT, then
    // back down.
    let peak = rtt + Duration::from_millis(20);
    let w = pace.window();
    let n = acks(&mut pace, &mut now, rtt / 2, peak, 100);
    assert_eq!(pace.phase(), Phase::Startup, "{pace:?}");
    // Meanwhile the window grew by a quarter of what was acknowledged (all of it until the
    // first block of 8 samples above the floor was complete).
    let grown = pace.window() - w;
    assert!(grown <= (n / 4 + 16) * mtu, "{grown} after {n} acks");
    acks(&mut pace, &mut now, rtt, rtt, 50);
    assert_eq!(pace.phase(), Phase::Startup, "{pace:?}");
    // That fall of 20 ms is variation too. A queue 40 ms deep, for longer than a minimum RTT,
    // ends start-up.
    acks(
        &mut pace,
        &mut now,
        rtt + rtt / 4,
        peak + Duration::from_millis(20),
        25,
    );
    assert!(matches!(pace.phase(), Phase::Cruise(_)), "{pace:?}");
}

/// A short path of issue 21's matrix (`bench/wanlab`, `MATRIX`): `mbit` Mbit/s, 20 ms RTT, a
/// 50 ms queue, `loss`, ±2 ms of jitter in each direction (order kept) and, with `reorder`, a
/// quarter of the packets up to 4 ms late besides; quinn's ends.
fn short_path(mbit: f64, loss: f64, reorder: bool) -> Path {
    let rate = mbit * 1e6 / 8.0;
    Path {
        rate,
        rtt: Duration::from_millis(20),
        queue: (rate * 0.05) as u64,
        loss,
        jitter: Duration::from_millis(2),
        reorder: if reorder { 0.25 } else { 0.0 },
        reorder_delay: Duration::from_millis(4),
        detect: Some(Detect::QUIC),
        quinn: true,
    }
}

/// `links` links of one path (sharing its `PathShare`, as in the daemons) start together and
/// send for `secs`; each link's outcome over the last `last` seconds.
fn links_run(path: &Path, links: usize, secs: f64, last: f64, seed: u64) -> Vec<Outcome> {
    let share = Arc::new(PathShare::default());
    let start = Instant::now();
    let mut paces: Vec<Pace> = (0..links)
        .map(|i| Pace::on_path(start, MTU, i as u64 + 1, Some(share.clone())))
        .collect();
    let mut refs: Vec<&mut Pace> = paces.iter_mut().collect();
    run_shared(&mut refs, path, start, secs - last, seed);
    let later = start + Duration::from_secs_f64(secs - last);
    run_shared(&mut refs, path, later, last, seed + 1000)
}

/// [`links_run`]'s links' goodput over the last `last` seconds, bytes per second.
fn links_goodput(path: &Path, links: usize, secs: f64, last: f64, seed: u64) -> Vec<f64> {
    let outs = links_run(path, links, secs, last, seed);
    outs.iter().map(|o| o.delivered as f64 / last).collect()
}

/// The short lossy paths of the matrix (issue 21): 200 Mbit/s with 2% loss and reordering,
/// 50 Mbit/s with 0.5% loss, with and without reordering.
fn short_lossy_paths() -> [Path; 3] {
    [
        short_path(200.0, 0.02, true),
        short_path(50.0, 0.005, false),
        short_path(50.0, 0.005, true),
    ]
}

#[test]
fn a_window_that_the_acks_outlast_does_not_spiral_down() {
    // On a short path the peer's delayed acks, reordering and jitter make a full window's acks
    // take longer than the minimum RTT plus half the variation. A window of the estimate's BDP
    // then delivers less than the estimate every round, and the estimate followed it down
    // round by round (the WAN lab's collapsed runs; here 119 Mbit/s of 200 for seed 4).
    for path in short_lossy_paths() {
        for seed in [3, 4] {
            let rate = links_goodput(&path, 1, 8.0, 6.0, seed)[0];
            assert!(
                rate > 0.9 * path.rate,
                "{} Mbit/s, seed {seed}: {} Mbit/s",
                path.rate * 8e-6,
                rate * 8e-6
            );
        }
    }
}

#[test]
fn two_links_of_a_short_lossy_path_share_it_equally() {
    // The two bulk links of a session on one path: the larger one's probes and climbs took
    // the smaller one's share round by round, down to the window floor (4.5 of 50 Mbit/s
    // for seed 1 here), and both together fell to two thirds of the path (seed 1 with
    // reordering).
    for path in short_lossy_paths() {
        for seed in [1, 2] {
            let rates = links_goodput(&path, 2, 10.0, 6.0, seed);
            let total: f64 = rates.iter().sum();
            assert!(total > 0.9 * path.rate, "seed {seed}: {rates:?}");
            assert!(
                rates.iter().all(|&r| r > 0.3 * path.rate),
                "seed {seed}: {rates:?}"
            );
        }
    }
}

#[test]
fn four_links_of_a_path_keep_a_short_queue_in_cruise() {
    // A session's four links on scenario B's path start together. A game's packets beside the
    // transfer meet the queue the four keep: cruise aims at a twentieth of the RTT over the
    // four (6.2-6.5 ms here). Every eighth round the four probe in the same round trip and the
    // queue peaks at 15% of the path's BDP and more, as one flow's probe would (36-38 ms): the
    // maximum checked here is that peak, a lead for the rr target in B rather than a target
    // met (bench/RESULTS.md, "rr latency under load"). Links started a fraction of a round
    // trip apart kept more in 9b24010's version of this test: 8.8 ms (30 ms apart) and 15.1 ms
    // (60 ms apart) for seed 1, with estimates that left start-up 5% above the path and stay
    // there (lessons: four links' estimates above their path).
    let path = b_path();
    for seed in [1, 2] {
        let outs = links_run(&path, 4, 12.0, 8.0, seed);
        let rate = outs.iter().map(|o| o.delivered).sum::<u64>() as f64 / 8.0;
        let packets: u64 = outs.iter().map(|o| o.queue_packets).sum();
        let mean = outs.iter().map(|o| o.queue_sum).sum::<Duration>() / packets as u32;
        let max = outs.iter().map(|o| o.max_queue).max().unwrap();
        let summary = format!("seed {seed}: mean queue {mean:?}, max {max:?}, {rate} B/s");
        assert!(rate > 0.95 * path.rate, "{summary}");
        assert!(mean < Duration::from_millis(8), "{summary}");
        assert!(max < Duration::from_millis(45), "{summary}");
    }
}

#[test]
fn a_link_below_the_floor_probes_above_it() {
    // The gains apply above the window floor: a link whose estimate fell below the floor's
    // rate probed with the floor itself and could never find more.
    let path = short_path(50.0, 0.0, false);
    let start = Instant::now();
    let mut pace = cruising_at(&path, start, 0.001);
    let floor = 8 * u64::from(MTU);
    pace.phase = Phase::Cruise(0);
    pace.set_window();
    assert!(pace.window() > floor * 11 / 10, "{pace:?}");
    pace.phase = Phase::Climb(2);
    pace.set_window();
    assert!(pace.window() > floor * 12 / 10, "{pace:?}");
}

#[test]
fn the_fair_share_of_huge_estimates_does_not_overflow() {
    // A round on a loopback path can estimate near u64::MAX bytes per second.
    let share = PathShare::default();
    let now = Instant::now();
    share.estimate(1, u64::MAX, now);
    share.estimate(2, u64::MAX - 1, now);
    share.estimate(3, u64::MAX, now);
    assert_eq!(share.fair_share(1, now), Some(u64::MAX - 1));
}

#[test]
fn links_that_start_together_on_a_short_path_leave_start_up_without_overrunning_it() {
    // The lab's 50-20-0 path: 50 Mbit/s, 20 ms RTT, a 50 ms queue. A session's four links start
    // at once. Each link's window stayed below the 128 packets its delay test needs, so none
    // saw the queue they built together: 211 packets dropped in the first 100 ms.
    //
    // Below a link's own minimum the test confirms the queue for a minimum RTT, as on a path
    // whose delay varies (the next test says why).
    let path = Path {
        rate: 6.25e6,
        rtt: Duration::from_millis(20),
        queue: 312_500,
        loss: 0.0,
        jitter: Duration::ZERO,
        reorder: 0.0,
        reorder_delay: Duration::ZERO,
        detect: Some(Detect::QUIC),
        quinn: true,
    };
    for links in [1, 2, 4] {
        let share = Arc::new(PathShare::default());
        let start = Instant::now();
        let mut paces: Vec<Pace> = (1..=links)
            .map(|id| Pace::on_path(start, MTU, id, Some(share.clone())))
            .collect();
        let mut refs: Vec<&mut Pace> = paces.iter_mut().collect();
        let outs = run_shared(&mut refs, &path, start, 10.0, 3);
        let drops: u64 = outs.iter().map(|o| o.tail_drops).sum();
        let delivered: u64 = outs.iter().map(|o| o.delivered).sum();
        // A few drops remain while start-up confirms the queue (27 with 4 links), not hundreds.
        assert!(drops <= 40, "{links} links: {outs:?}");
        assert!(
            delivered as f64 / 10.0 > 0.97 * path.rate,
            "{links} links: {outs:?}"
        );
    }
}

#[test]
fn links_that_start_together_on_a_jittered_path_are_not_stopped_by_its_variation() {
    // The lab's 200-100-2-j10r path: 200 Mbit/s, 100 ms RTT, 2% loss, 10 ms of jitter each way,
    // a quarter of the packets up to 20 ms late. Four links' windows reach the delay test's
    // minimum together long before the path's variation is measured: a test that trusted the
    // first blocks above the floor left start-up at 35 Mbit/s (seed 3).
    let path = Path {
        rate: 25e6,
        rtt: Duration::from_millis(100),
        queue: 1_250_000,
        loss: 0.02,
        jitter: Duration::from_millis(10),
        reorder: 0.25,
        reorder_delay: Duration::from_millis(20),
        detect: Some(Detect::QUIC),
        quinn: true,
    };
    for seed in [1, 2, 3] {
        let share = Arc::new(PathShare::default());
        let start = Instant::now();
        let mut paces: Vec<Pace> = (1..=4)
            .map(|id| Pace::on_path(start, MTU, id, Some(share.clone())))
            .collect();
        let mut refs: Vec<&mut Pace> = paces.iter_mut().collect();
        let outs = run_shared(&mut refs, &path, start, 10.0, seed);
        let delivered: u64 = outs.iter().map(|o| o.delivered).sum();
        assert!(
            delivered as f64 / 10.0 > 0.9 * path.rate,
            "seed {seed}: {outs:?}"
        );
    }
}

/// A busy round like [`round_at`] whose RTT samples are `high` for the first half of its acks
/// and the minimum, `min`, for the rest: the RTT fell by `high - min` within it.
fn falling_round(
    pace: &mut Pace,
    now: Instant,
    min: Duration,
    high: Duration,
    acked: u64,
) -> Instant {
    let half = acked / u64::from(MTU) / 2;
    round_with(pace, now, min, min, acked, |k| {
        if k <= half {
            high
        } else {
            min
        }
    })
}

#[test]
fn a_fall_of_the_rtt_while_another_link_drained_is_not_the_paths_variation() {
    // Scenario C's path (100 Mbit/s, 200 ms), two links. A round of link 2 whose RTT falls by
    // 30 ms is the path's variation, unless link 1 drained what it kept queued (its window fell,
    // or it ran out of data) in a round that overlapped it: then the fall was link 1's queue
    // leaving. Four links in the lab measured 25-50 ms of variation on a path of none that way.
    let min = Duration::from_millis(200);
    let path = Path {
        rate: 12.5e6,
        rtt: min,
        queue: 625_000,
        loss: 0.0,
        jitter: Duration::ZERO,
        reorder: 0.0,
        reorder_delay: Duration::ZERO,
        detect: None,
        quinn: false,
    };
    let bdp = 2_500_000;
    for other_drained in [false, true] {
        let start = Instant::now();
        let (mut pace, share) = cruising_on_shared_path(&path, start, 0.5, Phase::Cruise(2));
        share.member(1, start);
        let mut now = round_at(&mut pace, start, min, min, bdp / 2);
        share.member(1, now);
        let from = now;
        now = falling_round(
            &mut pace,
            now,
            min,
            min + Duration::from_millis(30),
            bdp / 2,
        );
        if other_drained {
            share.drained(1, from + min / 2, now + min / 2);
        }
        // Link 2 learns which it was once link 1's overlapping rounds have ended.
        assert!(pace.envelope() < Duration::from_millis(1), "{pace:?}");
        share.member(1, now);
        round_at(&mut pace, now, min, min, bdp / 2);
        let variation = pace.envelope();
        if other_drained {
            assert!(variation < Duration::from_millis(1), "{variation:?}");
        } else {
            assert!(variation >= Duration::from_millis(25), "{variation:?}");
        }
    }
}

#[test]
fn a_path_remembers_a_bounded_number_of_drains() {
    // A loopback path's rounds take 5 ms: its links' drains are many, the memory of them is not.
    let share = PathShare::default();
    let start = Instant::now();
    for k in 0..10_000u32 {
        let at = start + Duration::from_micros(100) * k;
        share.drained(u64::from(k % 4), at, at + Duration::from_micros(100));
    }
    let end = start + Duration::from_secs(1);
    // The latest are remembered; the first, a second old (within what the share keeps by
    // age), were dropped for the count.
    assert!(!share.quiet(9, end - Duration::from_millis(1), end));
    assert!(share.quiet(9, start, start + Duration::from_micros(50)));
}

#[test]
fn a_round_that_ran_short_of_data_for_a_while_drained_the_queue() {
    // Scenario B's path, the link in cruise beside another. In one round the link holds its
    // window in flight throughout; in the other it runs short of data for a tenth of it (its
    // stream's unsent bytes ran out) and holds half its window: the queue drained by the
    // other half, so the other links must not take the RTT's fall in that time for the path's
    // variation. In the lab, dips like that every second or two let four links measure 9-13
    // ms of variation on a path of none. A dip to 80% of the window is not counted (see
    // `DIP_FRACTION`).
    let path = b_path();
    let min = path.rtt;
    for (dip, held) in [(false, 1.0), (false, 0.8), (true, 0.5)] {
        let start = Instant::now();
        let (mut pace, share) = cruising_on_shared_path(&path, start, 0.25, Phase::Cruise(3));
        let window = pace.window();
        let packets = window / u64::from(MTU);
        let at = |k: u64| start + min.mul_f64(k as f64 / packets as f64);
        let mut end = None;
        for k in 1..=packets {
            end = end.or(pace.on_ack(at(k), at(k) - min, u64::from(MTU), false, min));
            let short = (packets / 2..packets / 2 + packets / 10).contains(&k);
            pace.on_in_flight(if short {
                (held * window as f64) as u64
            } else {
                window
            });
        }
        assert!(end.is_some_and(|e| !e.app_limited), "{end:?}");
        assert_eq!(
            share.quiet(1, start, at(packets)),
            !dip,
            "held {held}: {end:?}"
        );
    }
}
