//! `wanmux-server`: run a server node, check its config, or make keys.

/// jemalloc keeps freed pages for reuse a while; the C library's malloc hands them back at once
/// and faults them in again for the next block (see this crate's `Cargo.toml`).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::Path;
use std::time::Duration;
use wanmux_config::{ConfigErrors, ServerConfig};
use wanmux_core::daemon::Daemon;
use wanmux_server::ServerHandle;

struct Server;

impl Daemon for Server {
    const NAME: &'static str = "wanmux-server";
    const ABOUT: &'static str =
        "wanmux server node: accepts client links and connects streams to named services";
    const RUNS: &'static str = "the node";
    const TLS_TOOLS: bool = true;
    type Config = ServerConfig;
    type ConfigErrors = ConfigErrors;
    type Handle = ServerHandle;

    fn load(path: &Path) -> Result<ServerConfig, ConfigErrors> {
        ServerConfig::load(path)
    }

    fn drain_timeout(config: &ServerConfig) -> Duration {
        config.drain_timeout
    }

    fn threads(config: &ServerConfig) -> Option<std::num::NonZeroUsize> {
        config.threads
    }

    fn warnings(config: &ServerConfig) -> &[String] {
        &config.warnings
    }

    async fn start(config: ServerConfig) -> std::io::Result<ServerHandle> {
        wanmux_server::start(config).await
    }

    async fn ready(_: &ServerHandle) {
        // `start` returned: the listeners are bound and accepting.
    }

    fn status(server: &ServerHandle) -> String {
        format!(
            "sessions {}, links up {}, streams {}",
            server.session_count(),
            server.link_count(),
            server.stream_count()
        )
    }

    async fn reload(
        server: &mut ServerHandle,
        running: &ServerConfig,
        new: ServerConfig,
    ) -> std::io::Result<ServerConfig> {
        server.reload(running, new).await
    }

    fn reloads(server: &ServerHandle) -> &wanmux_core::status::Reloads {
        server.reloads()
    }

    fn control_socket(config: &mut ServerConfig) -> &mut Option<std::path::PathBuf> {
        &mut config.control_socket
    }

    fn control_socket_in(path: &std::path::Path) -> Option<std::path::PathBuf> {
        wanmux_config::control_socket_in(path)
    }

    async fn drain(
        server: ServerHandle,
        timeout: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        server.drain_until(timeout, stop).await
    }
}

wanmux_core::daemon_main!(Server);
