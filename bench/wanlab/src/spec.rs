//! The link specification: what each direction of the emulated link does.
//!
//! A spec is a comma-separated list of `key=value`. A plain key sets both directions; `up.KEY`
//! sets only client -> server (device A -> device B) and `down.KEY` only server -> client:
//!
//! ```text
//! delay=50ms,loss=1%,rate=200mbit,queue=100ms,up.jitter=2ms
//! ```
//!
//! | key | value | default |
//! | --- | --- | --- |
//! | `delay` | one-way delay: `50ms`, `1.5ms`, `200us`, `0` | `0` |
//! | `jitter` | delay varies within `delay ± jitter` | `0` |
//! | `jitter_period` | time between jitter targets | `max(10ms, 4 × jitter)` |
//! | `reorder` | fraction of packets delayed on their own, so later ones overtake them: `25%` | `0` |
//! | `reorder_delay` | the extra delay of such a packet is uniform in `(0, reorder_delay]` | `2 × jitter`, at least `1ms` |
//! | `loss` | random loss in percent: `1%`, `0.5` | `0` |
//! | `rate` | bottleneck rate: `200mbit`, `1gbit`, `500kbit` | unlimited |
//! | `queue` | bottleneck queue: `100ms` (at `rate`) or bytes: `256kb`, `1mib`, `65536` | `100ms` |
//! | `flow_rate` | per-flow limit (middlebox) | off |
//! | `flow_queue` | per-flow queue, like `queue` but at `flow_rate` | `50ms` |
//! | `flow_match` | which flows the limiter throttles: `tcp` or `all` (TCP and UDP) | `tcp` |

use std::str::FromStr;
use std::time::Duration;

/// A bit rate in bits per second, never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(u64);

impl Rate {
    /// A rate of `bps` bits per second, or `None` for zero.
    pub fn from_bps(bps: u64) -> Option<Self> {
        (bps > 0).then_some(Self(bps))
    }

    /// Bits per second.
    pub fn bps(self) -> u64 {
        self.0
    }

    /// How long `bytes` take to serialize at this rate, rounded to the nanosecond.
    pub fn tx_time(self, bytes: u64) -> Duration {
        let ns = u128::from(bytes) * 8 * 1_000_000_000 / u128::from(self.0);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// How many bytes this rate moves in `d`.
    pub fn bytes_in(self, d: Duration) -> u64 {
        let b = d.as_nanos() * u128::from(self.0) / 8 / 1_000_000_000;
        u64::try_from(b).unwrap_or(u64::MAX)
    }
}

/// The bound on a queue: a byte count, or a time that becomes bytes at the queue's drain rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueLimit {
    /// At most this many bytes queued.
    Bytes(u64),
    /// At most this much queueing delay.
    Time(Duration),
}

impl QueueLimit {
    /// The limit in bytes when drained at `rate`.
    pub fn bytes_at(self, rate: Rate) -> u64 {
        match self {
            Self::Bytes(b) => b,
            Self::Time(d) => rate.bytes_in(d),
        }
    }
}

/// Which flows the per-flow limiter throttles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowMatch {
    /// Only TCP 5-tuples.
    Tcp,
    /// TCP and UDP 5-tuples.
    All,
}

/// What one direction of the link does to its packets.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectionSpec {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Amplitude of the delay variation (`delay ± jitter`).
    pub jitter: Duration,
    /// Time between jitter targets; `None` picks `max(10ms, 4 × jitter)`.
    pub jitter_period: Option<Duration>,
    /// Probability in `[0, 1]` that a packet gets an extra delay of its own, drawn independently
    /// of every other packet's, and so may be overtaken (per-packet load balancing, bonding).
    pub reorder: f64,
    /// Largest extra delay of a reordered packet; `None` picks `max(1ms, 2 × jitter)`.
    pub reorder_delay: Option<Duration>,
    /// Random loss probability in `[0, 1]`.
    pub loss: f64,
    /// Bottleneck rate; `None` is unlimited (no queue either).
    pub rate: Option<Rate>,
    /// Bottleneck queue bound.
    pub queue: QueueLimit,
    /// Per-flow rate limit; `None` turns the limiter off.
    pub flow_rate: Option<Rate>,
    /// Per-flow queue bound.
    pub flow_queue: QueueLimit,
    /// Which flows the per-flow limiter throttles.
    pub flow_match: FlowMatch,
}

impl Default for DirectionSpec {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            jitter_period: None,
            reorder: 0.0,
            reorder_delay: None,
            loss: 0.0,
            rate: None,
            queue: QueueLimit::Time(Duration::from_millis(100)),
            flow_rate: None,
            flow_queue: QueueLimit::Time(Duration::from_millis(50)),
            flow_match: FlowMatch::Tcp,
        }
    }
}

impl DirectionSpec {
    /// The jitter period in effect.
    pub fn effective_jitter_period(&self) -> Duration {
        self.jitter_period
            .unwrap_or_else(|| (self.jitter * 4).max(Duration::from_millis(10)))
    }

    /// The largest extra delay of a reordered packet in effect.
    pub fn effective_reorder_delay(&self) -> Duration {
        self.reorder_delay
            .unwrap_or_else(|| (self.jitter * 2).max(Duration::from_millis(1)))
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), SpecError> {
        let bad = |what: &'static str| SpecError::Value {
            key: key.to_owned(),
            value: value.to_owned(),
            expected: what,
        };
        match key {
            "delay" => self.delay = parse_duration(value).ok_or_else(|| bad(DURATION))?,
            "jitter" => self.jitter = parse_duration(value).ok_or_else(|| bad(DURATION))?,
            "jitter_period" => {
                let d = parse_duration(value).filter(|d| !d.is_zero());
                self.jitter_period = Some(d.ok_or_else(|| bad("a positive duration"))?);
            }
            "reorder" => self.reorder = parse_percent(value).ok_or_else(|| bad(PERCENT))?,
            "reorder_delay" => {
                let d = parse_duration(value).filter(|d| !d.is_zero());
                self.reorder_delay = Some(d.ok_or_else(|| bad("a positive duration"))?);
            }
            "loss" => self.loss = parse_percent(value).ok_or_else(|| bad(PERCENT))?,
            "rate" => self.rate = parse_rate(value).ok_or_else(|| bad(RATE))?,
            "queue" => self.queue = parse_queue(value).ok_or_else(|| bad(QUEUE))?,
            "flow_rate" => self.flow_rate = parse_rate(value).ok_or_else(|| bad(RATE))?,
            "flow_queue" => self.flow_queue = parse_queue(value).ok_or_else(|| bad(QUEUE))?,
            "flow_match" => {
                self.flow_match = match value {
                    "tcp" => FlowMatch::Tcp,
                    "all" => FlowMatch::All,
                    _ => return Err(bad("`tcp` or `all`")),
                }
            }
            _ => return Err(SpecError::UnknownKey(key.to_owned())),
        }
        Ok(())
    }
}

const DURATION: &str = "a duration like 50ms, 1.5ms, 200us, 1s or 0";
const PERCENT: &str = "a percentage from 0 to 100, like 1% or 0.5";
const RATE: &str = "a rate like 200mbit, 1gbit, 500kbit, or 0/none for unlimited";
const QUEUE: &str = "a time like 100ms or a size like 256kb, 1mib, 65536";

/// Both directions of a link. `up` is device A -> device B (client -> server in `lab.sh`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LinkSpec {
    /// Client -> server.
    pub up: DirectionSpec,
    /// Server -> client.
    pub down: DirectionSpec,
}

/// A spec that does not parse.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum SpecError {
    /// An item without `=`.
    #[error("`{0}`: expected key=value")]
    NotKeyValue(String),
    /// A key this emulator does not know.
    #[error("unknown key `{0}` (known: delay, jitter, jitter_period, reorder, reorder_delay, loss, rate, queue, flow_rate, flow_queue, flow_match; prefix up. or down. for one direction)")]
    UnknownKey(String),
    /// A value that does not parse for its key.
    #[error("{key}: `{value}` is not {expected}")]
    Value {
        /// The key.
        key: String,
        /// The rejected value.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
}

impl FromStr for LinkSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut spec = LinkSpec::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| SpecError::NotKeyValue(item.to_owned()))?;
            let (key, value) = (key.trim(), value.trim());
            if let Some(k) = key.strip_prefix("up.") {
                spec.up.set(k, value)?;
            } else if let Some(k) = key.strip_prefix("down.") {
                spec.down.set(k, value)?;
            } else {
                spec.up.set(key, value)?;
                spec.down.set(key, value)?;
            }
        }
        Ok(spec)
    }
}

/// Splits `s` into a decimal number and a lower-cased unit suffix.
fn split_unit(s: &str) -> Option<(f64, String)> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    let n: f64 = num.parse().ok()?;
    (n.is_finite() && n >= 0.0).then(|| (n, unit.trim().to_ascii_lowercase()))
}

/// Parses `50ms`, `1.5ms`, `200us`, `1s`, `0`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (n, unit) = split_unit(s)?;
    let scale = match unit.as_str() {
        "" if n == 0.0 => 0.0,
        "s" => 1.0,
        "ms" => 1e-3,
        "us" => 1e-6,
        "ns" => 1e-9,
        _ => return None,
    };
    Duration::try_from_secs_f64(n * scale).ok()
}

/// Parses a percentage (`1%`, `0.5`) into a probability.
pub fn parse_percent(s: &str) -> Option<f64> {
    let (n, unit) = split_unit(s)?;
    (matches!(unit.as_str(), "" | "%") && n <= 100.0).then_some(n / 100.0)
}

/// Parses `200mbit`, `1gbit`, `500kbit`, `1000bit`; `0` or `none` is unlimited (`Some(None)`).
pub fn parse_rate(s: &str) -> Option<Option<Rate>> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Some(None);
    }
    let (n, unit) = split_unit(s)?;
    let scale = match unit.as_str() {
        "" if n == 0.0 => 0.0,
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => return None,
    };
    let bps = n * scale;
    (bps < 1e13).then(|| Rate::from_bps(bps.round() as u64))
}

/// Parses a queue bound: a duration (`100ms`) or a size (`256kb`, `1mib`, `65536`).
pub fn parse_queue(s: &str) -> Option<QueueLimit> {
    if let Some(d) = parse_duration(s).filter(|_| s.trim().ends_with('s')) {
        return Some(QueueLimit::Time(d));
    }
    let (n, unit) = split_unit(s)?;
    let scale = match unit.as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "kib" => 1024.0,
        "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = n * scale;
    (bytes < 1e12).then(|| QueueLimit::Bytes(bytes.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("50ms"), Some(Duration::from_millis(50)));
        assert_eq!(parse_duration("1.5ms"), Some(Duration::from_micros(1500)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_percent("1%"), Some(0.01));
        assert_eq!(parse_percent("101"), None);
        assert_eq!(parse_rate("200mbit"), Some(Rate::from_bps(200_000_000)));
        assert_eq!(parse_rate("none"), Some(None));
        assert_eq!(parse_rate("200mb"), None);
        assert_eq!(
            parse_queue("100ms"),
            Some(QueueLimit::Time(Duration::from_millis(100)))
        );
        assert_eq!(parse_queue("64kib"), Some(QueueLimit::Bytes(65536)));
        assert_eq!(parse_queue("1500"), Some(QueueLimit::Bytes(1500)));
    }

    #[test]
    fn direction_prefixes_override_one_side() {
        let spec: LinkSpec = "delay=50ms, loss=1%, up.rate=10mbit, down.delay=20ms"
            .parse()
            .unwrap();
        assert_eq!(spec.up.delay, Duration::from_millis(50));
        assert_eq!(spec.down.delay, Duration::from_millis(20));
        assert_eq!(spec.up.rate, Rate::from_bps(10_000_000));
        assert_eq!(spec.down.rate, None);
        assert_eq!(spec.down.loss, 0.01);
        let spec: LinkSpec = "jitter=4ms,down.reorder=25%,up.reorder_delay=3ms"
            .parse()
            .unwrap();
        assert_eq!((spec.up.reorder, spec.down.reorder), (0.0, 0.25));
        assert_eq!(spec.up.effective_reorder_delay(), Duration::from_millis(3));
        assert_eq!(
            spec.down.effective_reorder_delay(),
            Duration::from_millis(8)
        );
        assert!(matches!(
            "reorder_delay=0".parse::<LinkSpec>(),
            Err(SpecError::Value { .. })
        ));
        assert!(matches!(
            "delay=5".parse::<LinkSpec>(),
            Err(SpecError::Value { .. })
        ));
        assert!(matches!(
            "dleay=5ms".parse::<LinkSpec>(),
            Err(SpecError::UnknownKey(_))
        ));
    }

    #[test]
    fn rate_arithmetic() {
        let r = Rate::from_bps(200_000_000).unwrap();
        assert_eq!(r.tx_time(1500), Duration::from_micros(60));
        assert_eq!(r.bytes_in(Duration::from_millis(100)), 2_500_000);
        assert_eq!(
            QueueLimit::Time(Duration::from_millis(10)).bytes_at(r),
            250_000
        );
    }
}
