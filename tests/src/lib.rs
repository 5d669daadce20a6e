//! Test harness for wanmux: the seeded simulation and helpers for real-socket tests (the fault
//! relay they use is `wanmux-relay`, in `bench/relay/`).
#![forbid(unsafe_code)]

pub mod fault;
pub mod harness;
pub mod hostile;
pub mod logs;
pub mod mesh;
pub mod noise_wire;
pub mod process;
pub mod sim;
pub mod slow;
