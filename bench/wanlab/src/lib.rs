//! wanlab: a userspace WAN link emulator for the wanmux benchmarks.
//!
//! The kernel here has no `netem`, so `wanlab-link` does its job on two TUN devices: it reads
//! every IP packet routed into one device, decides when (or whether) it leaves, and writes it into
//! the other device at that time. `lab.sh` (beside this crate) builds the namespaces and the
//! policy routing that sends client <-> server traffic through the pair.
//!
//! # Model
//!
//! Each direction is an independent pipeline, evaluated once per packet at arrival time, in this
//! order (see [`model::Direction::admit`]):
//!
//! 1. **Bottleneck** ([`model::Serializer`]): a FIFO drained at `rate`, holding at most `queue`
//!    (bytes, or milliseconds at `rate`). A packet that does not fit is tail-dropped. Because the
//!    queue is FIFO with a constant service rate, each packet's departure time is known when it
//!    arrives, so no per-packet timer is needed until the end of the pipeline.
//! 2. **Random loss**: i.i.d. with probability `loss`, from a seeded generator. Loss is applied
//!    after the bottleneck, so a lost packet has used line capacity, as on a real lossy path.
//! 3. **Per-flow limiter** (optional): a middlebox that gives every TCP 5-tuple (or every TCP and
//!    UDP 5-tuple) its own serializer at `flow_rate` with its own small `flow_queue`.
//! 4. **Propagation**: one-way `delay` plus `jitter`. Jitter is a smooth random process: a new
//!    uniform target in `[-jitter, +jitter]` every `jitter_period`, linearly interpolated, so
//!    its mean is zero and the mean delay stays `delay`. With the default period (at least four
//!    times the jitter) the delay never falls faster than time passes, so jitter alone cannot
//!    reorder packets.
//! 5. **Order**: the release time is clamped to be no earlier than the previous release (of the
//!    direction, or of the flow when the per-flow limiter is on). Packets of one flow never
//!    reorder; with a per-flow limiter, different flows interleave by their own schedules.
//! 6. **Reordering** (optional): a fraction `reorder` of the packets, drawn independently, get an
//!    extra delay of their own, uniform in `(0, reorder_delay]`, after the order was kept: the
//!    packets behind such a packet overtake it, as with per-packet load balancing or link
//!    bonding. Jitter (order kept) and reordering are separate keys, so a path can have either.
//!
//! All of this is pure: time is passed in, the random generators are seeded from outside. The
//! binary keeps released-later packets in a [`pool::DelayLine`] (a binary heap of release times
//! over a fixed slab of packet buffers), so the data path does not allocate per packet.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod flow;
pub mod model;
pub mod pool;
pub mod spec;
