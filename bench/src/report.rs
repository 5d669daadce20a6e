//! Results of bench runs: plain data that prints for people (`Display`) and serializes to JSON.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Throughput summed over all streams during one reporting interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntervalReport {
    /// Interval start, seconds since the run started.
    pub start: f64,
    /// Interval end, seconds since the run started.
    pub end: f64,
    /// Payload bytes moved in the interval: written by the client for an upload, received and
    /// verified by the client for a download (`-R`).
    pub bytes: u64,
    /// `bytes * 8 / (end - start)`.
    pub bits_per_second: f64,
}

/// Result of one stream (connection) of a bulk run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamReport {
    /// Index of the stream, `0..streams`.
    pub stream: usize,
    /// Payload bytes the sender sent.
    pub sent_bytes: u64,
    /// Payload bytes the receiver received and verified.
    pub received_bytes: u64,
    /// The sender's own send time (its clock, header to trailer). Known for uploads only: the
    /// server does not report its send time.
    pub sender_seconds: Option<f64>,
    /// The receiver's own receive time (its clock, header to trailer).
    pub receiver_seconds: f64,
    /// `received_bytes * 8 / receiver_seconds` (0 when no time passed).
    pub bits_per_second: f64,
    /// crc32 (IEEE) of the payload, agreed by both ends.
    pub crc32: u32,
}

/// Result of a bulk throughput run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BulkReport {
    /// Payload bytes sent, summed over streams.
    pub sent_bytes: u64,
    /// Payload bytes received and verified, summed over streams.
    pub received_bytes: u64,
    /// The longest receive time of any stream, on the receiver's clock.
    pub seconds: f64,
    /// `received_bytes * 8 / seconds` (0 when no time passed).
    pub bits_per_second: f64,
    /// The longest send time of any stream, on the sender's clock (uploads only).
    pub sender_seconds: Option<f64>,
    /// Number of parallel connections.
    pub streams: usize,
    /// `true` if the server sent to the client (download, `-R`).
    pub reverse: bool,
    /// `true` when every stream's data was checked byte by byte against the pattern and both
    /// ends agreed on count and crc32. A run that fails verification returns an error instead,
    /// so a report always says `true`; the field is there for JSON consumers.
    pub verified: bool,
    /// One entry per stream, in stream order.
    pub per_stream: Vec<StreamReport>,
    /// Per-interval throughput summed over streams, as seen by the client.
    pub intervals: Vec<IntervalReport>,
}

/// Result of an upload and a download run at once ([`crate::run_bulk_bidir`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BidirReport {
    /// The client's sending half.
    pub upload: BulkReport,
    /// The server's sending half.
    pub download: BulkReport,
}

impl fmt::Display for BidirReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.upload)?;
        write!(f, "{}", self.download)
    }
}

/// Result of a request/response run. Latencies are in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RrReport {
    /// Round trips done.
    pub count: u64,
    /// Message size in bytes, each way.
    pub size: usize,
    /// Wall time of all round trips.
    pub seconds: f64,
    /// Round trips per second.
    pub round_trips_per_second: f64,
    /// Lowest round trip.
    pub min_us: f64,
    /// Mean round trip.
    pub mean_us: f64,
    /// Median round trip.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Highest round trip.
    pub max_us: f64,
    /// Every echo was compared with its request (always `true` in a returned report).
    pub verified: bool,
    /// The slowest round trips (at most 5), slowest first. Which ones they were tells a cost
    /// of the connection's start (the first few) from one that recurs.
    #[serde(default)]
    pub slowest: Vec<SlowTrip>,
    /// When the first round trip began, milliseconds since the Unix epoch: with
    /// [`SlowTrip::at_ms`], places the slowest round trips in other tools' logs.
    #[serde(default)]
    pub started_unix_ms: u64,
}

/// One round trip of an rr run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SlowTrip {
    /// Its index, from 0.
    pub round: u64,
    /// Its latency, microseconds.
    pub us: f64,
    /// When it began, milliseconds after the first round trip began.
    #[serde(default)]
    pub at_ms: f64,
}

/// Formats a byte count with binary units.
pub(crate) struct Bytes(pub(crate) u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut unit = 0;
        while v >= 1024.0 && unit + 1 < UNITS.len() {
            v /= 1024.0;
            unit += 1;
        }
        let s = if unit == 0 {
            format!("{} B", self.0)
        } else {
            format!("{v:.2} {}", UNITS[unit])
        };
        f.pad(&s)
    }
}

/// Formats bits per second as Mbit/s.
pub(crate) struct Mbits(pub(crate) f64);

impl fmt::Display for Mbits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("{:.1} Mbit/s", self.0 / 1e6))
    }
}

impl fmt::Display for IntervalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:6.2}-{:6.2} s] {:>12} {:>16}",
            self.start,
            self.end,
            Bytes(self.bytes),
            Mbits(self.bits_per_second)
        )
    }
}

impl fmt::Display for BulkReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>6} {:>12} {:>12} {:>9} {:>16}  crc32",
            "stream", "sent", "received", "seconds", "throughput"
        )?;
        for s in &self.per_stream {
            writeln!(
                f,
                "{:>6} {:>12} {:>12} {:>9.3} {:>16}  {:08x}",
                s.stream,
                Bytes(s.sent_bytes),
                Bytes(s.received_bytes),
                s.receiver_seconds,
                Mbits(s.bits_per_second),
                s.crc32
            )?;
        }
        let direction = if self.reverse {
            "download (server -> client)"
        } else {
            "upload (client -> server)"
        };
        let plural = if self.streams == 1 { "" } else { "s" };
        write!(
            f,
            "{direction}, {} stream{plural}: received {} in {:.3} s = {} ({:.2} Gbit/s), {}",
            self.streams,
            Bytes(self.received_bytes),
            self.seconds,
            Mbits(self.bits_per_second),
            self.bits_per_second / 1e9,
            if self.verified {
                "data verified"
            } else {
                "DATA NOT VERIFIED"
            }
        )
    }
}

impl fmt::Display for RrReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "rr: {} round trips of {} bytes in {:.3} s ({:.0} round trips/s), {}",
            self.count,
            self.size,
            self.seconds,
            self.round_trips_per_second,
            if self.verified {
                "echoes verified"
            } else {
                "ECHOES NOT VERIFIED"
            }
        )?;
        write!(
            f,
            "latency (us): min {:.1}  mean {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  \
             max {:.1}",
            self.min_us,
            self.mean_us,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us
        )?;
        if !self.slowest.is_empty() {
            write!(f, "\nslowest round trips (index @ ms after the first: us):")?;
            for t in &self.slowest {
                write!(f, "  {} @ {:.0}: {:.1}", t.round, t.at_ms, t.us)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(Bytes(0).to_string(), "0 B");
        assert_eq!(Bytes(1536).to_string(), "1.50 KiB");
        assert_eq!(Bytes(3 << 30).to_string(), "3.00 GiB");
        assert_eq!(Mbits(12_345_678.0).to_string(), "12.3 Mbit/s");
        assert_eq!(format!("{:>8}", Bytes(1)), "     1 B");
    }
}
