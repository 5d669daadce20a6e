//! wanmux-config: TOML configuration parsed into validated types.
//!
//! Each daemon reads one TOML file. Loading goes through two layers, parse-don't-validate:
//!
//! 1. A `Raw*` serde layer mirrors the file. It uses `deny_unknown_fields`, so a misspelt key is
//!    an error rather than a silently ignored setting, and it keeps [`toml::Spanned`] positions
//!    so that every error can name its line. Required keys are `Option` here and integers are
//!    `i64`, so that a missing key or an out-of-range number is a *semantic* error: all of those
//!    are collected in one pass instead of stopping at the first, which is what `check` prints.
//! 2. The conversion produces the final types ([`ServerConfig`], [`ClientConfig`]). They have no
//!    "must be `Some` at runtime" fields: the authentication mode is an enum
//!    ([`ServerAuth`], [`ClientAuth`]) whose variants hold exactly the keys that mode needs.
//!
//! Every error is a [`ConfigError`] with a dotted key (`service[1].target`), a 1-based line and a
//! message; [`ConfigErrors`] prints them one per line as `FILE:LINE: KEY: MESSAGE`. Syntax,
//! type and unknown-key errors come from the TOML parser, which stops at the first one.
//!
//! Secrets ([`PrivateKey`], [`Psk`]) redact themselves in `Debug`, and no error message quotes a
//! secret: a key that fails to parse is reported by the key's name, never by its text.
//!
//! The final types have public fields so that code (tests, the embedded demo) can build a config
//! without TOML; [`ServerConfig::validate`] and [`ClientConfig::validate`] check such a config
//! against the same rules the TOML path applies.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod common;
mod error;
mod locate;
mod secret;
mod server;
mod tls;

pub use client::{
    ClientAuth, ClientConfig, LinkTransport, Links, NamedNode, Node, NodeAddrs, NodeHandshake,
    OwnerPolicy, PinnedNode, PortMap, Spread,
};
pub use common::{
    control_socket_in, Host, HostPort, HostPortError, Limits, ServiceName, ServiceNameError,
};
pub use error::{ConfigError, ConfigErrors};
pub use server::{Cluster, Peer, ServerAuth, ServerConfig, ServerTls, Service};
pub use wanmux_core::keys::{KeyError, PrivateKey, Psk, PublicKey};
pub use wanmux_core::tls::{CertFiles, CertPaths};

#[cfg(test)]
mod tests;
