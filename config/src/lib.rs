//! wanmux-config: TOML configuration parsed into validated types.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
