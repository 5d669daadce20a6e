//! Relays that stand for the network between a wanmux client and a server node, for tests and
//! benchmarks on loopback.
//!
//! [`Relay`] is a TCP relay: it listens on `127.0.0.1:0`, dials one target for every connection
//! it accepts (a *link*) and copies bytes both ways. Links are known by their index in accept
//! order, and a test or benchmark acts on one of them, the oldest open one, or all
//! ([`Links`]):
//!
//! | command | effect |
//! | --- | --- |
//! | [`stall`](Relay::stall) | stop forwarding both ways; the sockets stay open, so the kernel buffers fill and the senders block |
//! | [`resume`](Relay::resume) | undo a stall: forward again, nothing lost |
//! | [`blackhole`](Relay::blackhole) | read and discard everything both ways (FIN and reset included); the sockets stay open |
//! | [`restore`](Relay::restore) | undo a blackhole: forward again from the next byte |
//! | [`reset`](Relay::reset) | close both sockets with an RST |
//! | [`flip_bit`](Relay::flip_bit), [`cut`](Relay::cut) | damage one direction of every link accepted from then on, at a byte offset |
//!
//! `stall` and `blackhole` aimed at [`Links::All`] also apply to links accepted while they are
//! set (a path that is down stays down for redials), until `resume` / `restore` on `All` clears
//! them. A forwarding link passes an end of stream on as a FIN and an error as an RST on the
//! other side, like a transparent middlebox.
//!
//! The relay can also shape the path ([`Shape`]): a bottleneck rate per direction, shared by
//! all links (a path) or one per link (a per-connection throttle), a one-way delay and a bounded
//! queue. It records when it accepted each link (what a server sees of a reconnect storm) and
//! counts, per direction ([`Dir`]), the bytes it forwarded and the bytes a reset destroyed
//! inside the emulated path. It runs on a thread of its own, so its timers and timestamps do not
//! wait for a busy (or frozen) runtime of the daemons under test.
//!
//! [`UdpRelay`] forwards datagrams to a QUIC node and counts the QUIC connections the node
//! answered through it; dropping it is a path that dies silently.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod copy;
mod link;
mod shape;
mod tcp;
mod udp;

pub use shape::{Bottleneck, Shape};
pub use tcp::{Links, Relay};
pub use udp::UdpRelay;

/// Direction of a byte through a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the connecting side (the tunnel client) to the target (the tunnel server).
    Up = 0,
    /// From the target back to the connecting side.
    Down = 1,
}

impl Dir {
    /// Both directions, up first.
    pub const BOTH: [Dir; 2] = [Dir::Up, Dir::Down];
}
