//! `wanmux-bench demo`: the whole tunnel on one machine with an embedded default config.
//!
//! Starts, in this process and on loopback ports chosen by the OS: a bench server (the
//! "service"), a wanmux server node that maps the service `bench` to it, and a wanmux client
//! with fresh static keys and a fresh PSK (Noise `IKpsk2`) and `links` links. Then it runs a
//! throughput test each way and a request/response latency test through the tunnel, and one of
//! each directly for comparison.
//!
//! With `nodes` above 1 the server side is a cluster: that many nodes, each with its own key,
//! `[cluster]` listener and every other node as `[[peer]]`, all mapping `bench` to the same
//! service; the client keeps `links` links to each and stripes every connection over all of
//! them (`spread = "stripe"`, the default), and the report says how much each node relayed to
//! the connection's owner.

use crate::{run_bulk, run_rr, serve, BulkOptions, BulkReport, Limit, RrOptions, RrReport};
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::Duration;
use tokio::net::TcpListener;
use wanmux_config::{
    ClientAuth, ClientConfig, Cluster, LinkTransport, Links, Node, Peer, PinnedNode, PortMap,
    ServerAuth, ServerConfig, Service, ServiceName,
};
use wanmux_core::keys::{generate_keypair, PrivateKey, Psk, PublicKey};

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Seconds per throughput test.
    pub seconds: f64,
    /// Links between client and server (per node).
    pub links: u16,
    /// Server nodes (1: no cluster).
    pub nodes: u16,
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
            nodes: 1,
            streams: 1,
            round_trips: 5_000,
        }
    }
}

/// Results of a demo run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    /// Links that were up, to all nodes together.
    pub links: usize,
    /// Server nodes.
    pub nodes: u16,
    /// Per node of a cluster, the section bytes it relayed between the client and the owners
    /// of the connections: (node, client to owner, owner to client). Empty with one node.
    pub relayed: Vec<(u16, u64, u64)>,
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
    let service_addr = serve_apart()?;

    let keys = TunnelKeys::generate();
    let mut servers = Vec::new();
    let client_cfg = if opts.nodes <= 1 {
        let server = wanmux_server::start(keys.server_config(service_addr)).await?;
        let cfg = keys.client_config(server.local_addr(), opts.links);
        servers.push(server);
        cfg
    } else {
        let cluster = DemoCluster::new(&keys, opts.nodes)?;
        // The highest id first: of two nodes the lower id dials, so each node finds the ones
        // it dials listening already (no refused dial and retry in the log).
        for i in (0..cluster.nodes.len()).rev() {
            let config = cluster.server_config(&keys, i, service_addr);
            servers.push(wanmux_server::start(config).await?);
        }
        servers.reverse();
        let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.local_addr()).collect();
        cluster.client_config(&keys, &addrs, opts.links)
    };
    let client = wanmux_client::start(client_cfg).await?;
    let want = usize::from(opts.links) * usize::from(opts.nodes.max(1));
    tokio::time::timeout(Duration::from_secs(10), client.wait_for_links(want))
        .await
        .map_err(|_| anyhow::anyhow!("the tunnel's links did not come up within 10 s"))?;
    let tunnel = client.first_addr().to_string();
    if servers.len() == 1 {
        say(&format!(
            "service {service_addr}  <-  wanmux-server {}  <=={} links (Noise IKpsk2)==  wanmux-client {tunnel}",
            servers[0].local_addr(),
            client.live_links()
        ));
    } else {
        let nodes: Vec<String> = servers.iter().map(|s| s.local_addr().to_string()).collect();
        say(&format!(
            "service {service_addr}  <-  {} wanmux-server nodes {} (peer links between them)  \
             <=={} links (Noise IKpsk2)==  wanmux-client {tunnel}, every connection striped over every node",
            servers.len(),
            nodes.join(", "),
            client.live_links()
        ));
    }

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
    let tunnel_rr = rr_apart(rr(&tunnel)).await?;
    let direct_rr = rr_apart(rr(&direct)).await?;
    let links = client.live_links();
    let relayed = if servers.len() > 1 {
        relayed_per_node(&client, opts.nodes)
    } else {
        Vec::new()
    };
    client.shutdown();
    for s in servers {
        s.shutdown();
    }
    Ok(DemoReport {
        links,
        nodes: opts.nodes.max(1),
        relayed,
        tunnel_upload,
        tunnel_download,
        direct_upload,
        tunnel_rr,
        direct_rr,
    })
}

/// Starts the benchmark server (the tunnel's service) on a thread of its own, as `wanmux-bench
/// server` runs in a process of its own, for as long as the process lives; returns its address.
fn serve_apart() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("demo-service".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => {
                        let _ = serve(listener).await;
                    }
                    Err(e) => eprintln!("demo: the service cannot listen: {e}"),
                }
            })
        })?;
    Ok(addr)
}

/// Runs [`run_rr`] on a thread of its own, as `wanmux-bench rr` runs in a process of its own.
/// With the round trips' client and server tasks on the demo's runtime, they sometimes shared
/// a worker and sometimes woke each other across two: a direct p50 of 7 or of 80 us, by run,
/// beside 30 us through the tunnel.
async fn rr_apart(opts: RrOptions) -> anyhow::Result<RrReport> {
    let report = tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| Ok(rt.block_on(run_rr(&opts))?))
    })
    .await??;
    Ok(report)
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

/// Per node, the section bytes it relayed for every other node (the owners): (node, up, down).
fn relayed_per_node(client: &wanmux_client::ClientHandle, nodes: u16) -> Vec<(u16, u64, u64)> {
    (1..=nodes)
        .map(|via| {
            let (up, down) = (1..=nodes)
                .filter(|&owner| owner != via)
                .map(|owner| client.relayed(via, owner))
                .fold((0, 0), |(u, d), (s, r)| (u + s, d + r));
            (via, up, down)
        })
        .collect()
}

/// The nodes of an in-process cluster: node 1 has the tunnel's server key, the others fresh
/// ones; each has a `[cluster]` listener on `127.0.0.1`, at a port the kernel gave out when the
/// demo started (the nodes must know each other's before any starts).
struct DemoCluster {
    nodes: Vec<(PrivateKey, PublicKey, SocketAddr)>,
}

impl DemoCluster {
    fn new(keys: &TunnelKeys, n: u16) -> anyhow::Result<DemoCluster> {
        // All bound at once, so the ports differ; released just before the nodes bind them.
        let listeners = (0..n)
            .map(|_| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut nodes = Vec::new();
        for (i, l) in listeners.iter().enumerate() {
            let (private, public) = if i == 0 {
                (keys.server_key.clone(), keys.server_pub)
            } else {
                generate_keypair()
            };
            nodes.push((private, public, l.local_addr()?));
        }
        Ok(DemoCluster { nodes })
    }

    /// Node `i + 1`: the tunnel's server config with its own key and every other node as a peer.
    fn server_config(&self, keys: &TunnelKeys, i: usize, service: SocketAddr) -> ServerConfig {
        let (private, _, listen) = &self.nodes[i];
        let mut cfg = keys.server_config(service);
        cfg.node_id = node_id(i);
        cfg.auth = ServerAuth::StaticKey {
            private_key: private.clone(),
            allowed_clients: [keys.client_pub].into(),
            psk: Some(keys.psk.clone()),
        };
        cfg.cluster = Some(Cluster {
            listen: *listen,
            relay_queue: Cluster::DEFAULT_RELAY_QUEUE,
            psk: Some(keys.psk.clone()),
            peers: self
                .nodes
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(j, (_, public, addr))| Peer {
                    id: node_id(j),
                    addr: (*addr).into(),
                    public_key: *public,
                })
                .collect(),
        });
        cfg
    }

    /// A client that keeps `links` links to each node (`addrs[i]`: node `i + 1`'s client
    /// listener).
    fn client_config(&self, keys: &TunnelKeys, addrs: &[SocketAddr], links: u16) -> ClientConfig {
        let mut cfg = keys.client_config(addrs[0], links);
        cfg.auth = ClientAuth::StaticKey {
            private_key: keys.client_key.clone(),
            psk: Some(keys.psk.clone()),
            nodes: self
                .nodes
                .iter()
                .zip(addrs)
                .enumerate()
                .map(|(i, ((_, public, _), addr))| PinnedNode {
                    node: Node {
                        id: node_id(i),
                        addr: (*addr).into(),
                    },
                    public_key: *public,
                })
                .collect(),
        };
        cfg
    }
}

/// The node id of the `i`th node (from 0).
fn node_id(i: usize) -> NonZeroU16 {
    u16::try_from(i + 1)
        .ok()
        .and_then(NonZeroU16::new)
        .unwrap_or(NonZeroU16::MAX)
}

fn bench_service() -> ServiceName {
    // A constant, valid service name.
    ServiceName::new("bench").expect("\"bench\" is a valid service name")
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gbit = |r: &BulkReport| r.bits_per_second / 1e9;
        let through = if self.nodes > 1 {
            format!("{} nodes", self.nodes)
        } else {
            format!("{} links", self.links)
        };
        writeln!(
            f,
            "                      through wanmux ({through}){:pad$}direct",
            "",
            pad = 13usize.saturating_sub(through.len()).max(1)
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
        for (node, up, down) in &self.relayed {
            writeln!(
                f,
                "relayed by node {node:<5} {:>10.1} MiB up, {:.1} MiB down",
                *up as f64 / 1048576.0,
                *down as f64 / 1048576.0
            )?;
        }
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
            nodes: 1,
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
        assert!(report.relayed.is_empty());
        assert!(report.tunnel_upload.verified && report.tunnel_download.verified);
        assert!(
            report.tunnel_upload.received_bytes > 0 && report.tunnel_download.received_bytes > 0
        );
        assert_eq!(report.tunnel_rr.count, 200);
        assert!(report.to_string().contains("every byte verified: yes"));
        assert!(lines[0].contains("links"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_demo_of_a_cluster_relays_through_the_nodes_both_ways() {
        let opts = DemoOptions {
            seconds: 0.5,
            links: 2,
            nodes: 3,
            streams: 2,
            round_trips: 200,
        };
        let report = tokio::time::timeout(Duration::from_secs(60), run_demo(&opts, |_| {}))
            .await
            .expect("demo finishes")
            .expect("demo succeeds");
        assert_eq!((report.nodes, report.links), (3, 6));
        assert!(report.tunnel_upload.verified && report.tunnel_download.verified);
        // A node that owns every connection relays nothing; every other one relays both ways.
        let both = report
            .relayed
            .iter()
            .filter(|&&(_, up, down)| up > 0 && down > 0)
            .count();
        assert!(both >= 2, "relayed: {:?}", report.relayed);
        let text = report.to_string();
        assert!(text.contains("(3 nodes)") && text.contains("relayed by node 3"));
    }
}
