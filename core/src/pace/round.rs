//! The end of a round: what it measured, then one function per phase for what comes next, then
//! the next round's window. Start-up's per-ack logic lives here too, beside its round.

use std::time::{Duration, Instant};

use super::{Pace, Phase, Round, RoundEnd, INITIAL_PACKETS, LOSS_LIMIT};

/// Smallest window after start-up, in packets.
const MIN_PACKETS: u64 = 8;
/// Start-up's window is at most this many bandwidth-delay products: the estimate lags the window
/// by a round, so doubling needs 4 x (test `start_up_is_not_held_back_by_its_cap`).
const STARTUP_CAP: f64 = 4.5;
/// Start-up's window growth per acknowledged byte on a path another link fills: doubling into
/// its queue overruns it (bench/RESULTS.md, lessons).
const GENTLE_GROWTH: f64 = 0.25;
/// The delay test of start-up needs a window of this many packets, over the links of the path
/// ([`super::PathShare::links`]): below it the peer's delayed acks (up to 25 ms) inflate RTT
/// samples more than any queue.
const QUEUE_DELAY_MIN_PACKETS: u64 = 128;
/// A path whose RTT varies by itself by at least this much (see `rtt.rs`) may show start-up a
/// queue that is not there: start-up then confirms its delay test for a minimum RTT.
const VARIES: Duration = Duration::from_millis(2);
/// Start-up ends after this many busy rounds without 25% more bandwidth, as in BBR: with 2, a
/// round held back by a loss ended it far too low (bench/RESULTS.md, lessons).
const FLAT_ROUNDS: u32 = 3;
/// After start-up ends, loss counts as overrun only after this many minimum RTTs: the losses of
/// its overshoot come in up to two round trips later (bench/RESULTS.md, lessons).
const SETTLE_RTTS: u32 = 3;
/// Window gain in cruise: a twentieth of the RTT queued at the bottleneck, since each byte
/// queued delays interactive traffic (bench/RESULTS.md, lessons).
pub(super) const CRUISE_GAIN: f64 = 1.05;
/// Window gain of a probing round: enough to find a faster path, small enough not to overflow a
/// short buffer or delay interactive traffic (bench/RESULTS.md, lessons).
const PROBE_GAIN: f64 = 1.15;
/// A busy cruise round whose window was full and that saw no queue, but delivered less than this
/// fraction of the estimate, was held back by its window (see `Pace::window_short`).
const SHORT_FRACTION: f64 = 0.9;
/// The extra delay a window covers (see `Pace::window_short`) is at most this fraction of the
/// minimum RTT and at most [`EXTRA_MAX`]: what it is for (the peer's delayed acks of the last
/// packets of a burst, reordering) takes a few milliseconds, and on a long path a round's spread
/// also holds the queue the round built, which a wider window would only overflow (more tail
/// drops, with up to 2 x the BDP in flight).
const EXTRA_MAX_FRACTION: u32 = 4;
const EXTRA_MAX: Duration = Duration::from_millis(8);
/// A link whose estimate is more than this many times its fair share of a path other links of
/// the session fill does not climb (see `Pace::cruise_round`).
const FAIR_MARGIN: f64 = 1.1;
/// Rounds per probing cycle (one probes).
const CYCLE: u32 = 8;
/// A round in which the bytes in flight fell this fraction of the window below it drained the
/// queue by that much (see `Pace::learn_variation`). An eighth cost scenario F 1% (18 seeds):
/// its links, at 500 Mbit/s on this machine, run that short in half their rounds, and the
/// variation those dips made them measure had kept a queue that covered the dips.
const DIP_FRACTION: f64 = 0.25;
/// Window gains of the rounds of a climb, the next for each round whose window the path
/// delivered. A round's delivery shows the window of the round before: the window counts as
/// delivered if the rate came at least halfway from the bandwidth estimate to the window's rate,
/// and no queue grew (see `RoundRtt::all_queued`). A climb that meets a full path costs two or
/// three rounds of 1.15 x (one round short is forgiven). Larger steps overran the path before
/// any RTT sample showed a queue (bench/RESULTS.md, lessons).
const CLIMB_GAINS: [f64; 3] = [1.15, 1.15, 1.25];

/// What a finished round measured.
#[derive(Clone, Copy, Debug)]
struct Measured {
    /// The round's delivery rate, bytes per second.
    sample: u64,
    /// `sample` as the bandwidth filter took it (see [`super::BwFilter::smooth`]).
    filtered: u64,
    /// The round lost more than random loss explains.
    overrun: bool,
    /// Start-up's (or a climb's) overshoot is no longer in flight: see [`SETTLE_RTTS`].
    settled: bool,
}

impl Pace {
    /// The round ended at `now`: decides the next phase and window, and starts the next round.
    pub(super) fn end_round(&mut self, now: Instant) -> RoundEnd {
        let measured = self.measure_round(now);
        self.phase = match self.phase {
            Phase::Startup => self.startup_round(now, measured),
            Phase::Cruise(n) => self.cruise_round(now, n, measured),
            Phase::Climb(n) => self.climb_round(now, n, measured),
        };
        let end = RoundEnd {
            phase: self.phase,
            sample: measured.sample,
            bandwidth: self.bw,
            acked: self.round.acked,
            lost: self.round.lost,
            app_limited: self.round.app_limited,
            min_rtt: self.round.rtt.min(),
            max_rtt: self.round.rtt.max(),
            mean_rtt: self.round.rtt.mean(),
            window: self.window,
            in_flight: self.round.in_flight,
            in_flight_min: match self.round.in_flight_min {
                u64::MAX => 0,
                fewest => fewest,
            },
            variation: Duration::ZERO,
            extra: self.extra,
        };
        self.tell_path(now);
        self.round = Round::new(now);
        self.set_window();
        RoundEnd {
            variation: self.envelope(),
            ..end
        }
    }

    /// The round's delivery sample, into the bandwidth filter; its losses; the new estimate.
    fn measure_round(&mut self, now: Instant) -> Measured {
        if !self.round.full {
            self.round.app_limited = true;
        }
        let elapsed = now
            .saturating_duration_since(self.round.start)
            .as_secs_f64();
        let sample = (self.round.acked as f64 / elapsed) as u64;
        let cruise = matches!(self.phase, Phase::Cruise(_));
        let filtered = self.filter.smooth(sample, cruise);
        let (acked, lost) = (self.round.acked, self.round.lost);
        let total = acked + lost;
        let overrun = lost > 10 * self.mtu && lost as f64 > LOSS_LIMIT * total as f64;
        // One overrun round is what leaving start-up costs (its overshoot meets a full queue) or
        // a burst; the delivery sample of such a round is low because the sender was blocked
        // behind the lost data, not because the path slowed. Two in a row mean the path is
        // slower than the estimate.
        let settled = self
            .left_startup
            .zip(self.min_rtt)
            .is_none_or(|(left, rtt)| now.saturating_duration_since(left) >= SETTLE_RTTS * rtt);
        // What the round sent and the path took, delivered or lost: a round that lost what it
        // lacks was not held back by its window.
        let taken = (total as f64 / elapsed) as u64;
        let short = cruise && settled && !overrun && self.window_short(taken);
        // A link below its fair share of a path that other links of the session fill: a round
        // that delivered less than its estimate may be the others' queue, not the path, and
        // the links would not converge to equal shares (the larger one's probes squeeze the
        // smaller one down to the floor).
        let squeezed = cruise
            && settled
            && !overrun
            && !self.round.app_limited
            && self.fair_share(now).is_some_and(|fair| self.bw < fair);
        // A round the window held back says only that the path delivers at least its sample,
        // like a round the sender ran out of data in: it may raise the estimate, never lower it.
        if !(self.round.app_limited || short || squeezed) || filtered > self.bw {
            self.filter.push(filtered);
        }
        let slower = overrun && self.overrun_before && settled;
        if !settled {
            // The rounds that complete start-up's last ones are what it found.
            self.full_bw = self.full_bw.max(self.bw);
        }
        self.overrun_before = overrun;
        if slower {
            self.filter.cap(sample.max(1));
        }
        self.bw = self.filter.max();
        self.learn_variation(now, settled, overrun);
        Measured {
            sample,
            filtered,
            overrun,
            settled,
        }
    }

    /// Takes what the RTT fell by in the round that ends at `now` as a measure of how the path's
    /// delay varies by itself, unless the round may have drained a queue of the link's own (a
    /// probe's, in the round after it, a climb's, start-up's overshoot) or, beside other links
    /// of the path, one of theirs. Tells the others when this round was such a drain: the round
    /// after a probe, one within 3 RTTs of leaving start-up or a climb, one that ran out of data
    /// (for the whole round, or long enough to hold a quarter of its window less in flight:
    /// [`DIP_FRACTION`]) or lost more than random loss explains (its lost packets left the
    /// queue). Start-up's window never falls while it lasts, so its own rounds need no test.
    /// Taken for variation, the others' drains made four links on a path of none measure 25-50
    /// ms of it, cover it with their windows and hold the bottleneck's queue at its tail drops
    /// (bench/RESULTS.md, issue 21).
    fn learn_variation(&mut self, now: Instant, settled: bool, overrun: bool) {
        // A link short of data for part of a round (its stream's unsent bytes ran out before
        // the reader refilled them, among other causes) sends less than its window while the
        // others keep theirs: the queue drains by what it lacked. On scenario B's path (no
        // jitter) such dips of 37-62% of a window every second or two let the four links
        // measure 9-13 ms of variation and keep that much more queued.
        let dipped = self.phase != Phase::Startup
            && self.round.in_flight_min != u64::MAX
            && (self.round.in_flight_min as f64) < (1.0 - DIP_FRACTION) * self.window as f64;
        let drained = !settled
            || overrun
            || dipped
            || self.round.app_limited
            || self.phase == Phase::Cruise(1);
        let own_drain =
            !settled || dipped || matches!(self.phase, Phase::Cruise(0 | 1) | Phase::Climb(_));
        let fall = self.round.rtt.fall();
        let Some(share) = self.share.clone() else {
            if !own_drain {
                self.variation.push(fall);
            }
            return;
        };
        if drained {
            share.drained(self.id, self.round.start, now);
        }
        // The other links' rounds overlap the end of this one: its fall is checked against
        // their drains when the next round ends.
        if let Some((fall, from, to)) = self.pending_fall.take() {
            if share.quiet(self.id, from, to) {
                self.variation.push(fall);
            }
        }
        self.siblings = share.links(now) > 1;
        // Start-up takes every round's fall at once, as alone: its delay test must know a
        // jittered path's variation before the links leave it together.
        if self.phase == Phase::Startup {
            self.variation.push(fall);
            return;
        }
        if own_drain {
            return;
        }
        if self.siblings {
            self.pending_fall = Some((fall, self.round.start, now));
        } else {
            self.variation.push(fall);
        }
    }

    /// A busy cruise round's bytes, delivered or lost, came back at `taken` bytes per second: if
    /// its window, not the path, held it back, widens the delay the window covers
    /// ([`Pace::extra`]) and says so. The window held the round back if the link kept it (nearly)
    /// full, some RTT sample saw no queue at the bottleneck, and the round's bytes, lost ones
    /// included, still came back slower than the estimate: the acks took longer than the minimum RTT
    /// plus half the variation for reasons that are not a queue (the peer's delayed acks,
    /// reordering, delay variation). Counted as a measure of the path, such rounds spiral down
    /// to the floor: each smaller window delivers less again (bench/RESULTS.md, issue 21). A
    /// busy round that saw only a queue narrows the extra delay again.
    fn window_short(&mut self, taken: u64) -> bool {
        let Some(min) = self.min_rtt else {
            return false;
        };
        if self.round.app_limited {
            return false;
        }
        if !self.round.rtt.had_room(self.queue_floor()) {
            self.extra = self.extra * 3 / 4;
            return false;
        }
        let full = 4 * self.round.in_flight >= 3 * self.window;
        if !full || taken as f64 >= SHORT_FRACTION * self.bw as f64 {
            return false;
        }
        // What the window's bytes took on average to be acknowledged beyond the round's
        // smallest RTT sample (a window delivers window / mean RTT: Little's law). Against the
        // round's smallest sample, not the path's, so that a queue (this link's or another's),
        // which raises every sample, never widens the window that builds it.
        let spread = self.round.rtt.mean().saturating_sub(self.round.rtt.min());
        // Unless the spread explains the shortfall, something else held the round back (on a
        // long path whose delay varies, rounds deliver more or less by themselves): the round
        // counts as usual. Otherwise the estimate would keep the largest of the variation's
        // samples and overfill the queue.
        let covered = min + self.envelope() / 2 + self.extra;
        if spread.as_secs_f64() < (1.0 - SHORT_FRACTION) * covered.as_secs_f64() {
            return false;
        }
        let most = (min / EXTRA_MAX_FRACTION).min(EXTRA_MAX);
        self.extra = self
            .extra
            .max(spread.saturating_sub(self.envelope() / 2))
            .min(most);
        true
    }

    /// Start-up, per ack: notes the ack for [`super::RecentAcks`], leaves start-up if a block of
    /// RTT samples saw a queue, and otherwise grows the window.
    pub(super) fn startup_ack(
        &mut self,
        now: Instant,
        rtt: Duration,
        bytes: u64,
        min_rtt: Duration,
    ) {
        self.recent.note(now, bytes, min_rtt);
        if let Some(block_min) = self.block.add(rtt) {
            let floor = min_rtt + self.envelope();
            // The links of a path that start together fill it together: what one link's window
            // must reach for its delay test is the path's (see `QUEUE_DELAY_MIN_PACKETS`). The
            // path is asked (a lock) only when this link's window is short of it alone.
            let minimum = QUEUE_DELAY_MIN_PACKETS * self.mtu;
            let shared = self.window < minimum;
            let reached = !shared
                || self
                    .share
                    .as_ref()
                    .is_some_and(|share| self.window * share.links(now) >= minimum);
            if reached && super::rtt::block_queued(block_min, floor) {
                // On a path whose delay visibly varies by itself, a block above the floor may be a
                // peak of that variation: start-up grows gently and leaves only if the blocks
                // stay above it for a minimum RTT (as HyStart++'s conservative slow start does,
                // RFC 9406). So too below the test's own minimum, where only the path's links
                // together reach it: early on, a path's variation is not measured yet.
                let varies = self.envelope() >= VARIES;
                let since = *self.queue_since.get_or_insert(now);
                if !(varies || shared) || now.saturating_duration_since(since) >= min_rtt {
                    self.leave_startup_on_queue(now);
                    return;
                }
            } else {
                self.queue_since = None;
            }
        }
        if self.full_now {
            // The first round may double before any busy round measured the path.
            let cap = (STARTUP_CAP * self.bdp() as f64) as u64;
            let cap = cap.max(2 * INITIAL_PACKETS * self.mtu);
            let grow = if self.gentle || self.queue_since.is_some() {
                (GENTLE_GROWTH * bytes as f64) as u64
            } else {
                bytes
            };
            self.window = (self.window + grow).min(cap).max(self.window);
        }
    }

    /// Start-up ends in the middle of a round: the round's delivery so far counts as a sample,
    /// since it is the best measure of the pipe the window just filled.
    fn leave_startup_on_queue(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.round.start);
        if let Some(min) = self.min_rtt {
            let recent = self.recent.rate(now, min).unwrap_or(0);
            let round = if elapsed >= min / 2 {
                (self.round.acked as f64 / elapsed.as_secs_f64()) as u64
            } else {
                0
            };
            let sample = round.max(recent);
            if sample > 0 {
                self.filter.push(sample);
                self.bw = self.bw.max(sample);
            }
        }
        self.phase = Phase::Cruise(1);
        self.queue_since = None;
        self.left_startup = Some(now);
        // What start-up found: a cruise round leaves cruise only 25% above it.
        self.full_bw = self.full_bw.max(self.bw);
        // Drain: the overshoot is still in flight; a window of one BDP lets the queue empty.
        self.window = self.bdp().max(MIN_PACKETS * self.mtu);
    }

    /// Start-up's round: it ends on flat rounds or on an overrun.
    fn startup_round(&mut self, now: Instant, measured: Measured) -> Phase {
        // Rounds in which the sender ran out of data say nothing about the pipe: a link
        // idle after its handshake must not leave start-up.
        if self.round.app_limited && !measured.overrun {
            return Phase::Startup;
        }
        if self.bw as f64 >= 1.25 * self.full_bw as f64 {
            self.full_bw = self.bw;
            self.flat_rounds = 0;
        } else {
            self.flat_rounds += 1;
        }
        if self.flat_rounds >= FLAT_ROUNDS || measured.overrun {
            // The first cruise round after start-up is not a probe.
            self.queue_since = None;
            self.left_startup = Some(now);
            self.full_bw = self.full_bw.max(self.bw);
            Phase::Cruise(1)
        } else {
            Phase::Startup
        }
    }

    /// Round `n` of cruise: stays, or climbs or starts up again if the path has room.
    fn cruise_round(&mut self, now: Instant, n: u32, measured: Measured) -> Phase {
        let busy = !self.round.app_limited;
        // Above its fair share of a path that other links of the session fill, a link leaves
        // the room it finds to them: its probes still find a path that got faster.
        let above_fair = self
            .fair_share(now)
            .is_some_and(|fair| self.bw as f64 > FAIR_MARGIN * fair as f64);
        // A busy round that delivered 25% more than start-up found, with no queue at the
        // bottleneck: the path has room (another flow left, or start-up ended early). Look
        // for it at start-up speed. With a queue, the path is full and the rise is this
        // link's share growing at another's expense (the links of a session share the
        // path): start-up's doubling would overrun it.
        if measured.settled
            && busy
            && !above_fair
            && measured.filtered as f64 > 1.25 * self.full_bw as f64
            && self.round.rtt.had_room(self.queue_floor())
        {
            return self.found_room(now, measured.sample);
        }
        // A busy cruise round that delivered the estimate and whose samples saw no queue:
        // the estimate is short of the path (start-up ended on a round that a loss held
        // back, or another flow left). Climb until a queue shows: probes alone find the rest
        // too slowly (test `a_link_in_cruise_below_its_path_finds_it`).
        if measured.settled
            && busy
            && !above_fair
            && !measured.overrun
            && (n == 0 || !self.climb.futile)
            && measured.sample >= self.bw
            && self.round.rtt.saw_no_queue(self.queue_floor())
        {
            return self.start_climb();
        }
        Phase::Cruise((n + 1) % CYCLE)
    }

    /// A cruise round found room: it delivered `sample`.
    fn found_room(&mut self, now: Instant, sample: u64) -> Phase {
        // The climb starts from what this round delivered, not from its average with
        // the round before.
        if sample > self.bw {
            self.filter.replace_newest(sample);
            self.bw = sample;
        }
        // Alone on the path, the rise is room: start-up finds it in a few rounds. With
        // another link of the session filling the path, it may be this link's share
        // growing at the other's expense, and doubling would overrun the path.
        if self.path_busy(now) {
            self.start_climb()
        } else {
            self.restart_start_up()
        }
    }

    /// Round `n` of a climb: climbs on while the path delivers each round's window.
    fn climb_round(&mut self, now: Instant, n: u32, measured: Measured) -> Phase {
        // The first climb round delivers what cruise's window sent: nothing to judge yet.
        let delivered = !self.round.app_limited
            && !measured.overrun
            && !self.round.rtt.all_queued(self.queue_floor())
            && (n == 0 || measured.sample >= self.climb.targets[0] || !self.climb.missed);
        if !delivered {
            return self.end_climb(now);
        }
        // One round short of its target is forgiven (a loss holds the data behind it);
        // two in a row end the climb.
        self.climb.missed = n > 0 && measured.sample < self.climb.targets[0];
        if !self.climb.missed && self.bw >= 2 * self.climb.from && !self.path_busy(now) {
            // The climb doubled the estimate and no queue showed: the link is far below
            // its path's rate, and start-up finds that in a few rounds where climbing
            // takes many (test `a_link_in_cruise_far_below_its_path_goes_back_to_start_up`).
            self.restart_start_up()
        } else {
            Phase::Climb(n + 1)
        }
    }

    /// A climb begins from the current estimate.
    fn start_climb(&mut self) -> Phase {
        self.climb.missed = false;
        self.climb.from = self.bw;
        Phase::Climb(0)
    }

    /// The climb found no more room: back to cruise.
    fn end_climb(&mut self, now: Instant) -> Phase {
        // Like the end of start-up: the last round's overshoot is still in flight.
        self.left_startup = Some(now);
        self.full_bw = self.full_bw.max(self.bw);
        self.climb.futile = (self.bw as f64) < 1.05 * self.climb.from as f64;
        Phase::Cruise(1)
    }

    /// Back to start-up, which finds the path's rate from the current estimate.
    fn restart_start_up(&mut self) -> Phase {
        // The acks noted in the last start-up are history (however it ended).
        self.recent.forget();
        self.queue_since = None;
        self.full_bw = self.bw;
        self.flat_rounds = 0;
        Phase::Startup
    }

    /// Another link of this path reported a busy cruise round with a queue lately: it fills the
    /// path (see [`super::PathShare`]).
    fn path_busy(&self, now: Instant) -> bool {
        self.share
            .as_ref()
            .is_some_and(|share| share.other_busy(self.id, now))
    }

    /// The fair share of the busy links of this path, if another link of it is busy (see
    /// [`super::PathShare::fair_share`]).
    fn fair_share(&self, now: Instant) -> Option<u64> {
        self.share
            .as_ref()
            .and_then(|share| share.fair_share(self.id, now))
    }

    /// Tells the other links of the path that this one fills it, or learns whether another does.
    fn tell_path(&mut self, now: Instant) {
        if let Some(share) = &self.share {
            share.member(self.id, now);
            if matches!(self.phase, Phase::Cruise(_)) && !self.round.app_limited {
                share.estimate(self.id, self.bw, now);
            }
            match self.phase {
                Phase::Cruise(_)
                    if !self.round.app_limited && self.round.rtt.saw_queue(self.queue_floor()) =>
                {
                    share.report(self.id, now)
                }
                Phase::Startup => self.gentle = share.other_busy(self.id, now),
                _ => {}
            }
        }
    }

    /// The window of the round that begins, from the phase.
    pub(super) fn set_window(&mut self) {
        // The gains apply above the floor: a link whose estimate fell below the floor's rate
        // must still probe and climb past it, or it can never find more.
        let bdp = self.bdp().max(MIN_PACKETS * self.mtu) as f64;
        self.window = match self.phase {
            Phase::Startup => self.window,
            Phase::Cruise(0) => (PROBE_GAIN * bdp) as u64,
            Phase::Cruise(_) => (CRUISE_GAIN * bdp) as u64,
            Phase::Climb(n) => {
                // After a round short of its target, the smallest step again.
                let step = if self.climb.missed { 0 } else { n as usize };
                let gain = CLIMB_GAINS[step.min(CLIMB_GAINS.len() - 1)];
                let target = (1.0 + (gain - 1.0) / 2.0) * self.bw as f64;
                self.climb.targets = [self.climb.targets[1], target as u64];
                (gain * bdp) as u64
            }
        };
    }
}
