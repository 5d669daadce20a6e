//! The per-direction impairment pipeline: pure, with time passed in and seeded randomness.
//!
//! [`Direction::admit`] is called once per packet with the packet's arrival time and returns when
//! the packet must leave, or why it is dropped. See the crate docs for the order of the stages.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::flow::{parse_flow, FlowKey, PROTO_TCP};
use crate::spec::{DirectionSpec, FlowMatch, Rate};

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Random loss.
    Loss,
    /// The bottleneck queue was full (tail drop).
    Queue,
    /// The packet's flow queue in the per-flow limiter was full.
    FlowQueue,
}

/// What happens to one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write the packet out at this time.
    Forward(Instant),
    /// Drop it.
    Drop(DropReason),
}

/// SplitMix64: a tiny, fast, well-mixed generator. Written out here (instead of `rand`'s
/// `SmallRng`, whose algorithm may change between versions) so a seed gives the same loss
/// pattern in every build.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator with this seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform value in `[-amp, +amp]`.
    fn symmetric(&mut self, amp: i64) -> i64 {
        if amp == 0 {
            return 0;
        }
        let span = (amp as u64) * 2 + 1;
        (self.next_u64() % span) as i64 - amp
    }
}

/// A FIFO drained at a constant rate with a bounded backlog: a bottleneck link and its queue.
///
/// Equivalent to a token bucket with a one-packet bucket feeding a byte-bounded FIFO. Because
/// the service rate is constant, the departure time of each packet is computed on arrival.
#[derive(Debug, Clone)]
pub struct Serializer {
    rate: Rate,
    limit_bytes: u64,
    /// When the last admitted packet has fully left; the queue is empty from then on.
    busy_until: Option<Instant>,
}

impl Serializer {
    /// A serializer at `rate` that holds at most `limit_bytes` waiting.
    pub fn new(rate: Rate, limit_bytes: u64) -> Self {
        Self {
            rate,
            limit_bytes,
            busy_until: None,
        }
    }

    /// Bytes still queued or in transmission at `now`.
    pub fn backlog(&self, now: Instant) -> u64 {
        match self.busy_until {
            Some(b) if b > now => self.rate.bytes_in(b - now),
            _ => 0,
        }
    }

    /// Admits a packet of `len` bytes arriving at `now`: its departure time (last bit out), or
    /// `None` when it does not fit the queue. A packet always fits an empty queue, so a limit
    /// below one packet still passes traffic.
    pub fn admit(&mut self, now: Instant, len: usize) -> Option<Instant> {
        let backlog = self.backlog(now);
        let len = len as u64;
        if backlog > 0 && backlog + len > self.limit_bytes {
            return None;
        }
        let start = match self.busy_until {
            Some(b) if b > now => b,
            _ => now,
        };
        let done = start + self.rate.tx_time(len);
        self.busy_until = Some(done);
        Some(done)
    }
}

/// A smooth random delay variation: a uniform target in `[-amp, +amp]` every `period`, linearly
/// interpolated in between.
#[derive(Debug, Clone)]
pub struct Jitter {
    amp_ns: i64,
    period: Duration,
    rng: SplitMix64,
    /// Start of the current period, and the values at its start and end.
    t0: Instant,
    v0: i64,
    v1: i64,
}

impl Jitter {
    /// A jitter process starting at `now`.
    pub fn new(amp: Duration, period: Duration, seed: u64, now: Instant) -> Self {
        let amp_ns = i64::try_from(amp.as_nanos()).unwrap_or(i64::MAX / 4);
        let mut rng = SplitMix64::new(seed);
        let v0 = rng.symmetric(amp_ns);
        let v1 = rng.symmetric(amp_ns);
        Self {
            amp_ns,
            period: period.max(Duration::from_micros(1)),
            rng,
            t0: now,
            v0,
            v1,
        }
    }

    /// The delay offset in nanoseconds at time `t`. Times before the current period (possible
    /// with a per-flow limiter, whose outputs are not monotonic across flows) get its start value.
    pub fn offset_ns(&mut self, t: Instant) -> i64 {
        let Some(mut elapsed) = t.checked_duration_since(self.t0) else {
            return self.v0;
        };
        if elapsed >= self.period {
            let periods = elapsed.as_nanos() / self.period.as_nanos();
            if periods >= 2 {
                // Idle for a while: start afresh rather than drawing every missed target.
                self.v0 = self.rng.symmetric(self.amp_ns);
            } else {
                self.v0 = self.v1;
            }
            self.v1 = self.rng.symmetric(self.amp_ns);
            let skip = self.period * u32::try_from(periods).unwrap_or(u32::MAX);
            self.t0 += skip;
            elapsed -= skip;
        }
        let frac = elapsed.as_nanos() as f64 / self.period.as_nanos() as f64;
        self.v0 + ((self.v1 - self.v0) as f64 * frac) as i64
    }
}

/// Per-flow state of the per-flow limiter.
#[derive(Debug, Clone)]
struct FlowState {
    shaper: Serializer,
    last_release: Instant,
    last_seen: Instant,
}

/// The per-flow limiter: one [`Serializer`] per 5-tuple, created on first sight and forgotten
/// after [`FLOW_IDLE`] without packets. At most [`MAX_FLOWS`] are tracked (about 100 bytes
/// each); packets of flows beyond that pass unlimited.
#[derive(Debug)]
struct FlowLimiter {
    rate: Rate,
    limit_bytes: u64,
    matches: FlowMatch,
    flows: HashMap<FlowKey, FlowState>,
    next_sweep: Instant,
}

/// A flow with no packet for this long is forgotten by the per-flow limiter.
pub const FLOW_IDLE: Duration = Duration::from_secs(30);
/// The most flows the per-flow limiter tracks.
pub const MAX_FLOWS: usize = 65_536;

/// One direction of the emulated link.
#[derive(Debug)]
pub struct Direction {
    delay: Duration,
    link: Option<Serializer>,
    /// Loss when `rng < loss_threshold`; `u64::MAX` would be 100%.
    loss_threshold: u64,
    loss_always: bool,
    loss_rng: SplitMix64,
    jitter: Option<Jitter>,
    reorder: Option<Reorder>,
    flows: Option<FlowLimiter>,
    last_release: Option<Instant>,
}

/// Reordering: a packet is delayed on its own with probability `threshold / 2^64`, by a uniform
/// extra in `(0, max]`, after the order-keeping stage, so packets behind it may overtake it.
#[derive(Debug)]
struct Reorder {
    threshold: u64,
    always: bool,
    max_ns: u64,
    rng: SplitMix64,
}

impl Reorder {
    /// The extra delay of the next packet (zero for most).
    fn extra(&mut self) -> Duration {
        if !self.always && self.rng.next_u64() >= self.threshold {
            return Duration::ZERO;
        }
        Duration::from_nanos(1 + self.rng.next_u64() % self.max_ns)
    }
}

impl Direction {
    /// A direction following `spec`, with randomness from `seed`, starting at `now`.
    pub fn new(spec: &DirectionSpec, seed: u64, now: Instant) -> Self {
        let link = spec
            .rate
            .map(|rate| Serializer::new(rate, spec.queue.bytes_at(rate)));
        let jitter = (!spec.jitter.is_zero()).then(|| {
            Jitter::new(
                spec.jitter,
                spec.effective_jitter_period(),
                seed ^ 0x6a09_e667_f3bc_c908,
                now,
            )
        });
        let reorder = (spec.reorder > 0.0).then(|| {
            let p = spec.reorder.clamp(0.0, 1.0);
            let max = spec.effective_reorder_delay();
            Reorder {
                threshold: probability_threshold(p),
                always: p >= 1.0,
                max_ns: u64::try_from(max.as_nanos()).unwrap_or(u64::MAX).max(1),
                rng: SplitMix64::new(seed ^ 0xbb67_ae85_84ca_a73b),
            }
        });
        let flows = spec.flow_rate.map(|rate| FlowLimiter {
            rate,
            limit_bytes: spec.flow_queue.bytes_at(rate),
            matches: spec.flow_match,
            flows: HashMap::new(),
            next_sweep: now + Duration::from_secs(1),
        });
        let loss = spec.loss.clamp(0.0, 1.0);
        Self {
            delay: spec.delay,
            link,
            loss_threshold: probability_threshold(loss),
            loss_always: loss >= 1.0,
            loss_rng: SplitMix64::new(seed),
            jitter,
            reorder,
            flows,
            last_release: None,
        }
    }

    /// Decides the fate of `packet`, arriving at `now`.
    pub fn admit(&mut self, now: Instant, packet: &[u8]) -> Verdict {
        // 1. Bottleneck.
        let mut t = match &mut self.link {
            Some(link) => match link.admit(now, packet.len()) {
                Some(done) => done,
                None => return Verdict::Drop(DropReason::Queue),
            },
            None => now,
        };
        // 2. Random loss, after the packet used the line.
        if self.loss_threshold > 0
            && (self.loss_always || self.loss_rng.next_u64() < self.loss_threshold)
        {
            return Verdict::Drop(DropReason::Loss);
        }
        // 3. Per-flow limiter.
        let mut flow_state = None;
        let limited = self.flows.is_some();
        if let Some(limiter) = &mut self.flows {
            limiter.sweep(now);
            let key = parse_flow(packet)
                .filter(|k| limiter.matches == FlowMatch::All || k.proto == PROTO_TCP);
            if let Some(key) = key {
                if let Some(state) = limiter.state(key, now) {
                    match state.shaper.admit(t, packet.len()) {
                        Some(done) => t = done,
                        None => return Verdict::Drop(DropReason::FlowQueue),
                    }
                    flow_state = Some(state);
                }
            }
        }
        // 4. Propagation delay and jitter (evaluated at the time the packet enters the line, so a
        //    slowly varying delay cannot overtake the previous packet).
        let mut release = t + self.delay;
        if let Some(j) = &mut self.jitter {
            let off = j.offset_ns(t);
            release = if off >= 0 {
                release + Duration::from_nanos(off as u64)
            } else {
                release
                    .checked_sub(Duration::from_nanos(off.unsigned_abs()))
                    .unwrap_or(release)
                    .max(t)
            };
        }
        // 5. Keep order: per flow when flows are shaped separately, else for the whole direction.
        let last = match flow_state {
            Some(state) => Some(&mut state.last_release),
            None if limited => None,
            None => Some(self.last_release.get_or_insert(release)),
        };
        if let Some(last) = last {
            if release < *last {
                release = *last;
            }
            *last = release;
        }
        // 6. Reordering: an extra delay of this packet alone, after the order was kept, so the
        //    packets behind it are not held back and may overtake it.
        if let Some(r) = &mut self.reorder {
            release += r.extra();
        }
        Verdict::Forward(release)
    }
}

/// The threshold below which a uniform `u64` falls with probability `p` (`u64::MAX` for 1).
fn probability_threshold(p: f64) -> u64 {
    (p.clamp(0.0, 1.0) * 18_446_744_073_709_551_616.0) as u64
}

impl FlowLimiter {
    fn sweep(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + Duration::from_secs(1);
        self.flows
            .retain(|_, s| now.duration_since(s.last_seen) < FLOW_IDLE);
    }

    fn state(&mut self, key: FlowKey, now: Instant) -> Option<&mut FlowState> {
        if self.flows.len() >= MAX_FLOWS && !self.flows.contains_key(&key) {
            return None;
        }
        let (rate, limit) = (self.rate, self.limit_bytes);
        let state = self.flows.entry(key).or_insert_with(|| FlowState {
            shaper: Serializer::new(rate, limit),
            last_release: now,
            last_seen: now,
        });
        state.last_seen = now;
        Some(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{LinkSpec, QueueLimit};

    fn tcp(sport: u16, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len.max(40)];
        p[0] = 0x45;
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&[10, 77, 1, 2]);
        p[16..20].copy_from_slice(&[10, 77, 2, 2]);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p
    }

    fn spec(s: &str) -> DirectionSpec {
        s.parse::<LinkSpec>().unwrap().up
    }

    #[test]
    fn serializer_paces_at_rate_and_tail_drops() {
        let t0 = Instant::now();
        let rate = Rate::from_bps(8_000_000).unwrap(); // 1 byte per microsecond
        let mut s = Serializer::new(rate, 3000);
        // A burst of 10 packets of 1000 bytes: the first starts at once, three more wait (3000
        // bytes of backlog counts the one in transmission), the rest are dropped.
        let out: Vec<_> = (0..10).map(|_| s.admit(t0, 1000)).collect();
        let admitted: Vec<_> = out.iter().flatten().collect();
        assert_eq!(admitted.len(), 3);
        for (i, t) in admitted.iter().enumerate() {
            assert_eq!(**t - t0, Duration::from_micros(1000 * (i as u64 + 1)));
        }
        // Once drained, the queue takes packets again, back to back at the rate.
        let later = t0 + Duration::from_millis(10);
        assert_eq!(
            s.admit(later, 500),
            Some(later + Duration::from_micros(500))
        );
        // Sustained offered load at twice the rate: output is paced at the rate.
        let mut s = Serializer::new(rate, 10_000);
        let mut last = t0;
        let mut passed = 0u64;
        for i in 0..10_000u64 {
            if let Some(t) = s.admit(t0 + Duration::from_micros(500 * i), 1000) {
                assert!(t >= last);
                last = t;
                passed += 1000;
            }
        }
        let secs = (last - t0).as_secs_f64();
        let achieved = passed as f64 * 8.0 / secs;
        assert!((achieved / 8e6 - 1.0).abs() < 0.01, "{achieved}");
    }

    #[test]
    fn loss_rate_is_seeded_and_close_to_setting() {
        let t0 = Instant::now();
        let pkt = tcp(1, 100);
        let run = |seed| {
            let mut d = Direction::new(&spec("loss=2%"), seed, t0);
            (0..100_000)
                .map(|_| d.admit(t0, &pkt) == Verdict::Drop(DropReason::Loss))
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7), "same seed, same pattern");
        assert_ne!(a, run(8));
        let lost = a.iter().filter(|l| **l).count();
        // 2% of 100k = 2000, sd ~ 44: allow 5 sd.
        assert!((1780..=2220).contains(&lost), "{lost}");
        let mut none = Direction::new(&spec("loss=0"), 1, t0);
        let mut all = Direction::new(&spec("loss=100%"), 1, t0);
        for _ in 0..1000 {
            assert!(matches!(none.admit(t0, &pkt), Verdict::Forward(_)));
            assert_eq!(all.admit(t0, &pkt), Verdict::Drop(DropReason::Loss));
        }
    }

    #[test]
    fn jitter_keeps_order_and_mean_delay() {
        let t0 = Instant::now();
        let mut d = Direction::new(&spec("delay=50ms,jitter=10ms"), 3, t0);
        let mut last = t0;
        let mut sum = 0f64;
        let n = 200_000u64;
        let (mut lo, mut hi) = (f64::MAX, 0f64);
        for i in 0..n {
            let now = t0 + Duration::from_micros(37 * i);
            let Verdict::Forward(r) = d.admit(now, &tcp(1, 1500)) else {
                panic!("no loss configured");
            };
            assert!(r >= last, "reordered at {i}");
            last = r;
            let ms = (r - now).as_secs_f64() * 1e3;
            sum += ms;
            lo = lo.min(ms);
            hi = hi.max(ms);
        }
        let mean = sum / n as f64;
        assert!((mean - 50.0).abs() < 1.5, "mean {mean}");
        assert!(lo >= 40.0 - 1e-6 && hi <= 60.0 + 1e-6, "{lo}..{hi}");
        assert!(lo < 43.0 && hi > 57.0, "jitter too narrow: {lo}..{hi}");
    }

    /// Sends `n` packets 37 us apart through `d`; returns their release times, in sending order.
    fn releases(d: &mut Direction, t0: Instant, n: u64) -> Vec<Instant> {
        (0..n)
            .map(|i| {
                let now = t0 + Duration::from_micros(37 * i);
                match d.admit(now, &tcp(1, 1500)) {
                    Verdict::Forward(r) => r,
                    v => panic!("no loss configured: {v:?}"),
                }
            })
            .collect()
    }

    /// The fraction of packets that arrive after a packet sent later (RFC 4737's reordered
    /// packets: a sequence number below the highest that arrived before it).
    fn reordered_fraction(release: &[Instant]) -> f64 {
        let mut order: Vec<usize> = (0..release.len()).collect();
        order.sort_by_key(|&i| (release[i], i));
        let mut highest = 0;
        let mut late = 0;
        for (k, &i) in order.iter().enumerate() {
            if k > 0 && i < highest {
                late += 1;
            }
            highest = highest.max(i);
        }
        late as f64 / release.len() as f64
    }

    #[test]
    fn reorder_delays_a_fraction_of_packets_and_later_ones_overtake_them() {
        let t0 = Instant::now();
        let n = 100_000;
        let mut d = Direction::new(
            &spec("delay=30ms,jitter=4ms,reorder=20%,reorder_delay=5ms"),
            5,
            t0,
        );
        let release = releases(&mut d, t0, n);
        // Nearly every delayed packet is overtaken (packets leave every 37 us, the extra delay
        // is up to 5 ms): about 20% arrive late.
        let late = reordered_fraction(&release);
        assert!((0.18..=0.21).contains(&late), "{late}");
        // The extra delay is within (0, 5 ms] on top of delay and jitter.
        for (i, r) in release.iter().enumerate() {
            let now = t0 + Duration::from_micros(37 * i as u64);
            let ms = (*r - now).as_secs_f64() * 1e3;
            assert!((26.0 - 1e-6..=39.0 + 1e-6).contains(&ms), "{ms}");
        }
        // Jitter alone keeps the order, and so does a zero fraction.
        let mut d = Direction::new(&spec("delay=30ms,jitter=4ms,reorder=0"), 5, t0);
        assert_eq!(reordered_fraction(&releases(&mut d, t0, n)), 0.0);
        // The same seed gives the same pattern.
        let mut again = Direction::new(
            &spec("delay=30ms,jitter=4ms,reorder=20%,reorder_delay=5ms"),
            5,
            t0,
        );
        assert_eq!(release, releases(&mut again, t0, n));
    }

    #[test]
    fn per_flow_limit_shapes_each_flow_and_keeps_its_order() {
        let t0 = Instant::now();
        let mut s = spec("delay=10ms,flow_rate=8mbit");
        s.flow_queue = QueueLimit::Bytes(20_000);
        let mut d = Direction::new(&s, 1, t0);
        // Two flows each offer 1000-byte packets every 100 us (80 Mbit/s) for 100 ms.
        let mut last = [t0; 2];
        let mut passed = [0u64; 2];
        let mut dropped = 0;
        for i in 0..1000u64 {
            let now = t0 + Duration::from_micros(100 * i);
            for (f, port) in [1000u16, 2000].into_iter().enumerate() {
                match d.admit(now, &tcp(port, 1000)) {
                    Verdict::Forward(r) => {
                        assert!(r >= last[f] && r >= now + Duration::from_millis(10));
                        last[f] = r;
                        passed[f] += 1;
                    }
                    Verdict::Drop(DropReason::FlowQueue) => dropped += 1,
                    v => panic!("{v:?}"),
                }
            }
        }
        // 8 Mbit/s = 1 packet per ms: ~100 in 100 ms plus the 20 kB queue.
        for p in passed {
            assert!((115..=125).contains(&p), "{p}");
        }
        assert_eq!(dropped, 2000 - passed[0] - passed[1]);
        // UDP is not throttled under flow_match=tcp.
        let mut udp = tcp(3000, 1000);
        udp[9] = crate::flow::PROTO_UDP;
        for _ in 0..100 {
            assert!(matches!(d.admit(t0, &udp), Verdict::Forward(_)));
        }
    }
}
