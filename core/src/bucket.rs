//! A token bucket: events at `rate` a second on average, in bursts of up to `burst`, for the
//! limits a peer must not exceed however fast it repeats something (handshakes a second from
//! one source, `daemon::slots::Rates`; log lines a minute about one client,
//! `lograte::LineBudget`). The rate and the burst are the owner's, given on each call, so a
//! table of buckets keeps two numbers each.

use std::time::Instant;

/// Tokens left, as of `at`.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket (`burst` tokens) at `now`.
    pub fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    /// Takes a token at `now` if there is one, refilled at `rate` a second up to `burst`.
    pub fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        self.tokens = self.level(now, rate, burst);
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full again at `now`: unused for a burst's time, as if new.
    pub fn is_full(&self, now: Instant, rate: f64, burst: f64) -> bool {
        self.level(now, rate, burst) >= burst
    }

    fn level(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        (self.tokens + refill).min(burst)
    }
}
