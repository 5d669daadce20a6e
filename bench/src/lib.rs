//! `wanmux-bench`: an iperf-style throughput and latency tool that works against any TCP
//! address, directly or through a wanmux tunnel's mapped port.
//!
//! A bench server ([`serve`]) answers three kinds of test, chosen by the client's header:
//!
//! - **upload** ([`run_bulk`] with `reverse = false`): the client sends records for a duration
//!   or a byte count, the server verifies every byte and answers with a verdict.
//! - **download** ([`run_bulk`] with `reverse = true`): the server sends, the client verifies.
//!   [`run_bulk_bidir`] runs both at once, each on connections of its own.
//! - **rr** ([`run_rr`]): small request/response round trips over one connection, each echo
//!   checked, latency percentiles reported.
//!
//! Bulk payload is a seeded pseudo-random pattern with a prime period, sent from a rolling
//! offset, so the receiver compares every byte with what it expects (catching corruption,
//! loss, duplication and reordering) and both ends agree on a byte count and crc32. The wire
//! format is in `bench/README.md`. Runs with several streams open that many connections in
//! parallel and sum their results.
//!
//! Everything here is async on tokio; the binary is a thin clap front end over these
//! functions, so an in-process demo can call them too. [`run_recovery`] runs a whole tunnel
//! in-process behind a fault-injecting, optionally shaped relay and measures what link deaths
//! cost a transfer.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod bulk;
mod demo;
mod error;
mod pattern;
mod proto;
mod recovery;
mod report;
mod rr;
mod server;
mod stream;

pub use bulk::{run_bulk, run_bulk_bidir, run_bulk_with_progress, BulkOptions, Limit};
pub use demo::{run_demo, DemoOptions, DemoReport};
pub use error::{BenchError, Side, VerifyFailure};
pub use pattern::PERIOD;
pub use proto::{MAX_RECORD, MAX_RR_SIZE};
pub use recovery::{
    run_recovery, ChurnReport, Direction, DirectionReport, DirectionSummary, OneKillReport,
    PhaseReport, RecoveryError, RecoveryOptions, RecoveryReport, Sample, Spread,
};
pub use report::{BidirReport, BulkReport, IntervalReport, RrReport, SlowTrip, StreamReport};
pub use rr::{run_rr, RrOptions, MAX_RR_COUNT};
pub use server::serve;
