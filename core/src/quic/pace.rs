//! The quinn side of [`crate::pace`]: [`PaceConfig`] makes a [`Pace`] the congestion controller
//! of each QUIC link, and the controller's rounds are traced here.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use quinn::congestion::{Controller, ControllerFactory};
use quinn_proto::RttEstimator;

use crate::pace::{Pace, PathShare, RoundEnd};

/// Numbers the controllers of this process, for traces.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Plugs [`Pace`] into a quinn `TransportConfig`; the links built with one share its
/// [`PathShare`] (give each path its own).
#[derive(Clone, Debug, Default)]
pub struct PaceConfig {
    share: Option<Arc<PathShare>>,
}

impl PaceConfig {
    /// Controllers that share `share` with the other links of their path.
    pub fn shared(share: Arc<PathShare>) -> Self {
        Self { share: Some(share) }
    }
}

impl ControllerFactory for PaceConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Box::new(Pace::on_path(now, current_mtu, id, self.share.clone()))
    }
}

impl Controller for Pace {
    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        if let Some(round) = Pace::on_ack(self, now, sent, bytes, app_limited, rtt.min()) {
            trace_round(self.id(), &round);
        }
    }

    fn on_end_acks(
        &mut self,
        _now: Instant,
        in_flight: u64,
        _app_limited: bool,
        _largest_packet_num_acked: Option<u64>,
    ) {
        self.on_in_flight(in_flight);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        _sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.on_loss(now, lost_bytes, is_persistent_congestion);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.on_mtu(new_mtu);
    }

    fn window(&self) -> u64 {
        Pace::window(self)
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        Pace::initial_window(self)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

fn trace_round(link: u64, round: &RoundEnd) {
    tracing::trace!(
        link,
        phase = ?round.phase,
        sample_mbps = round.sample as f64 * 8e-6,
        bw_mbps = round.bandwidth as f64 * 8e-6,
        acked = round.acked,
        lost = round.lost,
        app_limited = round.app_limited,
        round_min_rtt_ms = round.min_rtt.as_secs_f64() * 1e3,
        round_max_rtt_ms = round.max_rtt.as_secs_f64() * 1e3,
        window = round.window,
        mean_rtt_ms = round.mean_rtt.as_secs_f64() * 1e3,
        in_flight = round.in_flight,
        in_flight_min = round.in_flight_min,
        variation_ms = round.variation.as_secs_f64() * 1e3,
        extra_ms = round.extra.as_secs_f64() * 1e3,
        "pace round"
    );
}
