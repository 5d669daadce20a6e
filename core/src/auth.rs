//! Who a link's Noise handshake admits: the credentials each end brings, as plain data.
//!
//! The daemons' configs turn into these (`wanmux-config` has the conversions) and the Noise
//! driver (`noise`, behind the `io` feature) reads them. They hold keys and nothing that does
//! I/O, so they are here, outside the driver, where a crate without `io` can build them.

use std::collections::HashSet;

use crate::keys::{PrivateKey, Psk, PublicKey};

/// How a client authenticates a link, and which Noise pattern that selects.
#[derive(Clone, Debug)]
pub enum ClientAuth {
    /// Static-key mode: `IK`, or `IKpsk2` when a PSK is given as well.
    Static {
        /// The client's static private key; the server must allow-list its public key.
        local: PrivateKey,
        /// The server's static public key, pinned.
        server: PublicKey,
        /// An optional PSK mixed in as well (`IKpsk2`).
        psk: Option<Psk>,
    },
    /// PSK-only mode: `NNpsk0`, no static keys.
    Psk(Psk),
    /// PKI mode (QUIC links only): no Noise; TLS verifies the node's certificate against the
    /// client's CA and this name, and the node the client's certificate. The certificates are
    /// the QUIC endpoint's (`quic::client_endpoint_with`).
    Pki {
        /// The name the node's certificate must carry (`[[node]] tls_name`).
        server_name: String,
    },
}

/// What a server accepts.
///
/// With a `private_key` the server takes static-key links only: `IKpsk2` if `psk` is set, `IK`
/// otherwise, from clients whose key is in `allowed_clients` (an empty list refuses everyone).
/// Without one it takes PSK-only links (`NNpsk0`) if `psk` is set. Any other mode is refused.
#[derive(Clone, Debug)]
pub struct ServerAuth {
    /// The node's static private key (static-key mode).
    pub private_key: Option<PrivateKey>,
    /// Public keys of the clients allowed in static-key mode.
    pub allowed_clients: HashSet<PublicKey>,
    /// The pre-shared key: PSK-only mode without `private_key`, `IKpsk2` with it.
    pub psk: Option<Psk>,
}
