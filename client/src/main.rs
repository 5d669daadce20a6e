//! `wanmux-client`: run a client, check its config, or make keys.

/// jemalloc keeps freed pages for reuse a while; the C library's malloc hands them back at once
/// and faults them in again for the next block (see this crate's `Cargo.toml`).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::Path;
use std::time::Duration;
use wanmux_client::ClientHandle;
use wanmux_config::{ClientConfig, ConfigErrors};
use wanmux_core::daemon::Daemon;

struct Client;

impl Daemon for Client {
    const NAME: &'static str = "wanmux-client";
    const ABOUT: &'static str =
        "wanmux client: carries local TCP connections to named services over encrypted links";
    const RUNS: &'static str = "the client";
    type Config = ClientConfig;
    type ConfigErrors = ConfigErrors;
    type Handle = ClientHandle;

    fn load(path: &Path) -> Result<ClientConfig, ConfigErrors> {
        ClientConfig::load(path)
    }

    fn drain_timeout(config: &ClientConfig) -> Duration {
        config.drain_timeout
    }

    fn threads(config: &ClientConfig) -> Option<std::num::NonZeroUsize> {
        config.threads
    }

    fn warnings(config: &ClientConfig) -> &[String] {
        &config.warnings
    }

    async fn start(config: ClientConfig) -> std::io::Result<ClientHandle> {
        wanmux_client::start(config).await
    }

    async fn ready(client: &ClientHandle) {
        client.wait_first_dial().await
    }

    fn status(client: &ClientHandle) -> String {
        format!(
            "links up {}, streams {}",
            client.live_links(),
            client.stream_count()
        )
    }

    async fn reload(
        client: &mut ClientHandle,
        running: &ClientConfig,
        new: ClientConfig,
    ) -> std::io::Result<ClientConfig> {
        client.reload(running, new).await
    }

    fn reloads(client: &ClientHandle) -> &wanmux_core::status::Reloads {
        client.reloads()
    }

    fn control_socket(config: &mut ClientConfig) -> &mut Option<std::path::PathBuf> {
        &mut config.control_socket
    }

    fn control_socket_in(path: &std::path::Path) -> Option<std::path::PathBuf> {
        wanmux_config::control_socket_in(path)
    }

    async fn drain(
        client: ClientHandle,
        timeout: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        client.drain_until(timeout, stop).await
    }
}

wanmux_core::daemon_main!(Client);
