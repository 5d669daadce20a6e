//! A node out of file descriptors (its service connections took them) still answers `status`,
//! and a new link is refused at once with a reset instead of waiting in the listen backlog. A
//! trial's node in that state left `status` with "no answer" and its TCP clients with "does not
//! answer (a firewall ...)", while it logged "accept failed" 20 times a second.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wanmux_config::LinkTransport;
use wanmux_tests::harness::{
    eventually, is_listening, point_client_at, psk_node_file, read_end, within, ReadEnd,
};
use wanmux_tests::process::Daemon;

/// The node's descriptor limit: its own (listeners, runtime, log, control socket) and the
/// client's links take a few dozen, the service connections the rest.
const NOFILE: u32 = 96;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_out_of_file_descriptors_answers_status_and_refuses_links_at_once() {
    within(Duration::from_secs(60), async {
        let service = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fd-limit");
        let (config, addr, mut client) = psk_node_file(&dir, service.local_addr().unwrap(), "", 2);
        let _node = Daemon::spawn(
            Command::new("prlimit")
                .arg(format!("--nofile={NOFILE}:{NOFILE}"))
                .arg("--")
                .arg(env!("CARGO_BIN_EXE_wanmux-server"))
                .args(["run", "--config"])
                .arg(&config)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("node.log")).unwrap()),
        );
        assert!(
            eventually(Duration::from_secs(10), || is_listening(addr)).await,
            "the node listens"
        );
        point_client_at(&mut client, addr);
        client.transport = LinkTransport::Tcp;
        let client = wanmux_client::start(client).await.expect("client starts");
        client.wait_for_links(2).await;

        // The service holds every connection it gets.
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = service.accept().await {
                held.push(tcp);
            }
        });
        // Connections through the tunnel until one is reset: the node could not connect it to
        // the service (out of descriptors).
        let mut apps = Vec::new();
        let mut out = false;
        for _ in 0..NOFILE {
            // The client resets a connection the node refused, which may be before this write,
            // or even before the connect returns (it then reads the reset as its error).
            let mut app = match TcpStream::connect(client.first_addr()).await {
                Ok(app) => app,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    out = true;
                    break;
                }
                Err(e) => panic!("connect to the client: {e}"),
            };
            if app.write_all(b"x").await.is_err()
                || read_end(&mut app, Duration::from_millis(150)).await == ReadEnd::Reset
            {
                out = true;
                break;
            }
            apps.push(app);
        }
        assert!(out, "the node never ran out of descriptors");

        // `status` answers.
        let status = Command::new(env!("CARGO_BIN_EXE_wanmux-server"))
            .args(["status", "--config"])
            .arg(&config)
            .output()
            .expect("run status");
        assert!(
            status.status.success(),
            "status: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        // A new link's connection is refused at once, not left unanswered.
        let refused = tokio::time::timeout(Duration::from_secs(3), async {
            let mut dial = TcpStream::connect(addr).await?;
            let mut byte = [0u8; 1];
            dial.read(&mut byte).await
        })
        .await;
        assert!(
            matches!(&refused, Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "a link to a node out of descriptors: {refused:?}"
        );
        held.abort();
        drop(apps);
    })
    .await;
}
