//! `wanmux-bench demo`: the whole tunnel on one machine with an embedded default config.
//!
//! Starts, in this process and on loopback ports chosen by the OS: a bench server (the
//! "service"), a wanmux server node that maps the service `bench` to it, and a wanmux client
//! with fresh static keys and a fresh PSK (Noise `IKpsk2`) and `links` links. Then it runs a
//! throughput test each way and a request/response latency test through the tunnel, and one of
//! each directly for comparison.

use crate::{run_bulk, run_rr, serve, BulkOptions, BulkReport, Limit, RrOptions, RrReport};
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::Duration;
use tokio::net::TcpListener;
use wanmux_config::{
    ClientAuth, ClientConfig, LinkTransport, Links, Node, PinnedNode, PortMap, ServerAuth,
    ServerConfig, Service, ServiceName,
};
use wanmux_core::keys::{generate_keypair, PrivateKey, Psk, PublicKey};

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Seconds per throughput test.
    pub seconds: f64,
    /// Links between client and server.
    pub links: u16,
    /// Parallel streams in the throughput tests.
    pub streams: usize,
    /// Round trips in the latency test.
    pub round_trips: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            seconds: 3.0,
            links: 4,
            streams: 1,
            round_trips: 5_000,
        }
    }
}

/// Results of a demo run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    /// Links that were up.
    pub links: usize,
    /// Upload through the tunnel.
    pub tunnel_upload: BulkReport,
    /// Download through the tunnel.
    pub tunnel_download: BulkReport,
    /// Upload without the tunnel.
    pub direct_upload: BulkReport,
    /// Round trips through the tunnel.
    pub tunnel_rr: RrReport,
    /// Round trips without the tunnel.
    pub direct_rr: RrReport,
}

/// Runs the demo, printing progress lines with `say`.
pub async fn run_demo(opts: &DemoOptions, mut say: impl FnMut(&str)) -> anyhow::Result<DemoReport> {
    let service_listener = TcpListener::bind("127.0.0.1:0").await?;
    let service_addr = service_listener.local_addr()?;
    tokio::spawn(serve(service_listener));

    let keys = TunnelKeys::generate();
    let server = wanmux_server::start(keys.server_config(service_addr)).await?;
    let client_cfg = keys.client_config(server.local_addr(), opts.links);
    let client = wanmux_client::start(client_cfg).await?;
    tokio::time::timeout(
        Duration::from_secs(10),
        client.wait_for_links(usize::from(opts.links)),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the tunnel's links did not come up within 10 s"))?;
    let tunnel = client.first_addr().to_string();
    say(&format!(
        "service {service_addr}  <-  wanmux-server {}  <=={} links (Noise IKpsk2)==  wanmux-client {tunnel}",
        server.local_addr(),
        client.live_links()
    ));

    let bulk = |connect: &str, reverse: bool| {
        let mut o = BulkOptions::new(connect);
        o.limit = Limit::Duration(Duration::from_secs_f64(opts.seconds));
        o.streams = opts.streams;
        o.reverse = reverse;
        o
    };
    let rr = |connect: &str| {
        let mut o = RrOptions::new(connect);
        o.count = opts.round_trips;
        o
    };
    let direct = service_addr.to_string();
    say("throughput, client -> service, through the tunnel ...");
    let tunnel_upload = run_bulk(&bulk(&tunnel, false)).await?;
    say("throughput, service -> client, through the tunnel ...");
    let tunnel_download = run_bulk(&bulk(&tunnel, true)).await?;
    say("throughput, direct ...");
    let direct_upload = run_bulk(&bulk(&direct, false)).await?;
    say("request/response latency, through the tunnel and direct ...");
    let tunnel_rr = run_rr(&rr(&tunnel)).await?;
    let direct_rr = run_rr(&rr(&direct)).await?;
    let links = client.live_links();
    client.shutdown();
    server.shutdown();
    Ok(DemoReport {
        links,
        tunnel_upload,
        tunnel_download,
        direct_upload,
        tunnel_rr,
        direct_rr,
    })
}

/// Fresh keys for an in-process tunnel: static keys for both ends and a PSK (Noise `IKpsk2`).
pub(crate) struct TunnelKeys {
    server_key: PrivateKey,
    server_pub: PublicKey,
    client_key: PrivateKey,
    client_pub: PublicKey,
    psk: Psk,
}

impl TunnelKeys {
    pub(crate) fn generate() -> TunnelKeys {
        let (server_key, server_pub) = generate_keypair();
        let (client_key, client_pub) = generate_keypair();
        TunnelKeys {
            server_key,
            server_pub,
            client_key,
            client_pub,
            psk: Psk::generate(),
        }
    }

    /// A server node on `127.0.0.1:0` (node 1) that maps the service `bench` to `service`.
    pub(crate) fn server_config(&self, service: SocketAddr) -> ServerConfig {
        ServerConfig::new(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            NonZeroU16::MIN,
            ServerAuth::StaticKey {
                private_key: self.server_key.clone(),
                allowed_clients: [self.client_pub].into(),
                psk: Some(self.psk.clone()),
            },
            vec![Service {
                name: bench_service(),
                target: service.into(),
            }],
        )
    }

    /// A client that dials node 1 at `node_addr` (the server, or a relay in front of it) with
    /// a fixed number of TCP links and maps `bench` to a port on `127.0.0.1:0`. TCP, not the
    /// default QUIC: the relay in front of the node carries TCP only, and the loopback figures
    /// (`bench/RESULTS.md`) are TCP links'.
    pub(crate) fn client_config(&self, node_addr: SocketAddr, links: u16) -> ClientConfig {
        let mut cfg = ClientConfig::new(
            ClientAuth::StaticKey {
                private_key: self.client_key.clone(),
                psk: Some(self.psk.clone()),
                nodes: vec![PinnedNode {
                    node: Node {
                        id: NonZeroU16::MIN,
                        addr: node_addr.into(),
                    },
                    public_key: self.server_pub,
                }],
            },
            vec![PortMap {
                listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                service: bench_service(),
                spread: Default::default(),
            }],
        );
        cfg.links = Links::fixed(links);
        cfg.transport = LinkTransport::Tcp;
        cfg
    }
}

fn bench_service() -> ServiceName {
    // A constant, valid service name.
    ServiceName::new("bench").expect("\"bench\" is a valid service name")
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gbit = |r: &BulkReport| r.bits_per_second / 1e9;
        writeln!(
            f,
            "                      through wanmux ({} links)      direct",
            self.links
        )?;
        writeln!(
            f,
            "upload                {:>10.2} Gbit/s            {:>8.2} Gbit/s",
            gbit(&self.tunnel_upload),
            gbit(&self.direct_upload)
        )?;
        writeln!(
            f,
            "download              {:>10.2} Gbit/s",
            gbit(&self.tunnel_download)
        )?;
        writeln!(
            f,
            "round trip p50        {:>10.0} us                {:>8.0} us",
            self.tunnel_rr.p50_us, self.direct_rr.p50_us
        )?;
        writeln!(
            f,
            "round trip p99        {:>10.0} us                {:>8.0} us",
            self.tunnel_rr.p99_us, self.direct_rr.p99_us
        )?;
        let all = [
            &self.tunnel_upload,
            &self.tunnel_download,
            &self.direct_upload,
        ];
        let verified =
            all.iter().all(|r| r.verified) && self.tunnel_rr.verified && self.direct_rr.verified;
        write!(
            f,
            "every byte verified: {}",
            if verified { "yes" } else { "NO" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_demo_runs_and_verifies_every_byte() {
        let opts = DemoOptions {
            seconds: 0.3,
            links: 2,
            streams: 2,
            round_trips: 200,
        };
        let mut lines = Vec::new();
        let report = tokio::time::timeout(
            Duration::from_secs(60),
            run_demo(&opts, |l| lines.push(l.to_owned())),
        )
        .await
        .expect("demo finishes")
        .expect("demo succeeds");
        assert_eq!(report.links, 2);
        assert!(report.tunnel_upload.verified && report.tunnel_download.verified);
        assert!(
            report.tunnel_upload.received_bytes > 0 && report.tunnel_download.received_bytes > 0
        );
        assert_eq!(report.tunnel_rr.count, 200);
        assert!(report.to_string().contains("every byte verified: yes"));
        assert!(lines[0].contains("links"));
    }
}
