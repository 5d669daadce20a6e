//! wanmux-core: the protocol engine of the wanmux tunnel and the tokio drivers that run it.
//!
//! The engine is sans-IO: it never touches a socket or reads the clock. Inputs are `handle_*`
//! calls, outputs are `poll_*` calls, and time is passed in. The `io` feature adds the drivers
//! shared by both daemons: Noise links over TCP or QUIC and the session driver that runs an engine.
//! The `daemon` feature adds the skeleton of both daemon binaries (command line, logging, signals).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod bucket;
pub mod budget;
#[cfg(feature = "daemon")]
pub mod control;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "io")]
pub mod driver;
pub mod engine;
pub mod files;
pub mod frame;
pub mod ids;
pub mod keys;
#[cfg(feature = "io")]
pub mod lograte;
#[cfg(feature = "daemon")]
pub mod metrics;
#[cfg(feature = "io")]
pub mod noise;
pub mod pace;
pub mod peer;
#[cfg(feature = "io")]
pub mod quic;
mod range_set;
pub mod route;
#[cfg(feature = "daemon")]
pub mod status;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "io")]
pub mod tune;
