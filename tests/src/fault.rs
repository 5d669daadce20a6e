//! Tunnels whose links go through a fault relay ([`wanmux_relay::Relay`]), which resets, stalls
//! or blackholes them on command.

use wanmux_config::{ClientConfig, ServerConfig};
use wanmux_relay::{Relay, Shape};

use crate::harness::{Auth, Tunnel};

/// Starts a [`Tunnel`] whose links go through an unshaped [`Relay`]: application server, server
/// node, relay, then the client with `links` links, which are all up when this returns. `tweak`
/// changes both configs first, as in [`Tunnel::start_with`].
pub async fn relayed_tunnel(
    auth: Auth,
    links: u16,
    tweak: impl FnOnce(&mut ServerConfig, &mut ClientConfig),
) -> (Tunnel, Relay) {
    Tunnel::start_fronted(auth, links, tweak, async |server| {
        let relay = Relay::start(server, Shape::default())
            .await
            .expect("relay starts");
        let addr = relay.addr();
        (relay, vec![addr])
    })
    .await
}
