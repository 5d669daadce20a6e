//! Tunnels whose links go through a fault relay ([`wanmux_relay::Relay`]), which resets, stalls
//! or blackholes them on command.

use std::time::{Duration, Instant};
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

/// Waits until `relay` has forwarded nothing for `quiet`, for at most `limit`; returns whether
/// it did. Quiet links have nothing in flight: an engine pings a link with unconfirmed frames
/// every few milliseconds until they are confirmed.
pub async fn wait_quiet(relay: &Relay, quiet: Duration, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let (mut seen, mut since) = (relay.forwarded_both(), Instant::now());
    loop {
        let now = Instant::now();
        let forwarded = relay.forwarded_both();
        if forwarded != seen {
            (seen, since) = (forwarded, now);
        } else if now - since >= quiet {
            return true;
        }
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
