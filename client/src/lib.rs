//! wanmux-client: the client daemon as a library, so tests and the demo can run it in-process.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
