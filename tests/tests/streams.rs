//! Stream behaviour through a real tunnel on loopback: many connections at once, half-close
//! in both directions, resets travelling both ways, and streams the server refuses.

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use wanmux_tests::harness::{
    add_map, add_service, drain_end, eventually, raw_pair, read_end, read_hashed, reset, within,
    write_seeded, Auth, ReadEnd, Tunnel,
};
use wanmux_tests::mesh::LogCapture;

const LIMIT: Duration = Duration::from_secs(60);
/// How soon a reset or a refusal must reach the other side. Loopback takes microseconds; this
/// leaves room for a loaded CI machine.
const PROMPT: Duration = Duration::from_secs(2);
const IK: Auth = Auth::Static { psk: false };
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// A tunnel with one extra service, `raw`, whose application side the test drives itself
/// through the returned listener.
async fn tunnel_with_raw(links: u16) -> (Tunnel, TcpListener) {
    let raw = TcpListener::bind("127.0.0.1:0").await.expect("bind raw");
    let target = raw.local_addr().expect("addr");
    let t = Tunnel::start_with(IK, links, |s, c| {
        add_service(s, "raw", target);
        add_map(c, "raw");
    })
    .await;
    (t, raw)
}

/// Connects to `addr`, writes `data` and reads until the connection ends. The client daemon
/// may close the connection before `connect` even returns, which counts as a reset.
async fn try_once(addr: std::net::SocketAddr, data: &[u8]) -> ReadEnd {
    let mut tcp = match TcpStream::connect(addr).await {
        Ok(tcp) => tcp,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return ReadEnd::Reset,
        Err(e) => return ReadEnd::Error(e.kind()),
    };
    // A reset that came before the write is reported by the write, and only once: Linux hands
    // the pending error to the first call that looks (the write here), and the read after it
    // finds the socket closed and returns 0, which would look like a clean EOF.
    if let Err(e) = tcp.write_all(data).await {
        if e.kind() == std::io::ErrorKind::ConnectionReset {
            return ReadEnd::Reset;
        }
    }
    drain_end(&mut tcp, PROMPT).await
}

fn raise_nofile(need: u64) {
    let got = rlimit::increase_nofile_limit(need).expect("raise RLIMIT_NOFILE");
    assert!(
        got >= need,
        "RLIMIT_NOFILE hard limit too low: need {need} descriptors, can have {got}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_connections_both_ways() {
    // Four sockets per connection (application client, client daemon, server daemon,
    // application server), all in this process, plus links and slack.
    raise_nofile(4 * 1000 + 512);
    within(Duration::from_secs(120), async {
        let mut t = Tunnel::start(IK, 4).await;
        t.check_concurrent(1000, 64 * KIB, 64 * KIB).await;
        assert_eq!(t.app.accepted(), 1000);
    })
    .await;
}

/// The application server answers only after it has read the client's EOF: the client's
/// half-close must travel through the tunnel while its read side stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_reply_after_eof() {
    within(LIMIT, async {
        let (t, raw) = tunnel_with_raw(2).await;
        let app = tokio::spawn(async move {
            let (mut tcp, _) = raw.accept().await.expect("accept");
            let received = read_hashed(&mut tcp).await.expect("app reads to EOF");
            let sent = write_seeded(&mut tcp, MIB, 2).await.expect("app replies");
            tcp.shutdown().await.expect("app shuts down");
            (received, sent)
        });
        let tcp = TcpStream::connect(t.addr_of("raw")).await.expect("connect");
        let (mut rd, mut wr) = tcp.into_split();
        let up = write_seeded(&mut wr, MIB, 1).await.expect("client uploads");
        wr.shutdown()
            .await
            .expect("client shuts down its write side");
        let down = read_hashed(&mut rd).await.expect("client reads the reply");
        let (app_received, app_sent) = app.await.expect("app task");
        assert_eq!(up, app_received, "upload");
        assert_eq!(app_sent, down, "reply after EOF");
        assert_eq!(down.bytes, MIB);
    })
    .await;
}

/// The other way round: the application server sends everything and shuts down its write
/// side first; the client reads to EOF and only then uploads, which must still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_server_first_then_client_uploads() {
    within(LIMIT, async {
        let (t, raw) = tunnel_with_raw(2).await;
        let app = tokio::spawn(async move {
            let (tcp, _) = raw.accept().await.expect("accept");
            let (mut rd, mut wr) = tcp.into_split();
            let sent = write_seeded(&mut wr, MIB, 3).await.expect("app sends");
            wr.shutdown().await.expect("app shuts down its write side");
            let received = read_hashed(&mut rd).await.expect("app reads to EOF");
            (received, sent)
        });
        let tcp = TcpStream::connect(t.addr_of("raw")).await.expect("connect");
        let (mut rd, mut wr) = tcp.into_split();
        let down = read_hashed(&mut rd).await.expect("client reads to EOF");
        let up = write_seeded(&mut wr, MIB, 4)
            .await
            .expect("client uploads after EOF");
        wr.shutdown().await.expect("client shuts down");
        let (app_received, app_sent) = app.await.expect("app task");
        assert_eq!(app_sent, down, "download");
        assert_eq!(up, app_received, "upload after the server's EOF");
        assert_eq!(up.bytes, MIB);
    })
    .await;
}

/// The application client resets its connection: the application server's socket must see a
/// reset promptly (PROTOCOL.md: the proxy on the other side resets its connection; a clean EOF
/// would pass a truncated stream off as a complete one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reset_reaches_app_server() {
    within(LIMIT, async {
        let (t, raw) = tunnel_with_raw(2).await;
        let (client, mut app) = raw_pair(&t, &raw).await;
        let start = Instant::now();
        reset(client);
        let end = drain_end(&mut app, PROMPT).await;
        assert!(
            end == ReadEnd::Reset,
            "app server saw {end:?} after the client's reset"
        );
        assert!(start.elapsed() < PROMPT);
        // The application server's writes fail too: its socket was reset or closed.
        let mut failed = false;
        for _ in 0..100 {
            if app.write_all(&[0u8; 4096]).await.is_err() {
                failed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            failed,
            "app server can still write after the client's reset"
        );
    })
    .await;
}

/// The application server resets its connection: the client's connection must see a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_server_reset_reaches_client() {
    within(LIMIT, async {
        let (t, raw) = tunnel_with_raw(2).await;
        let (mut client, app) = raw_pair(&t, &raw).await;
        let start = Instant::now();
        reset(app);
        let end = drain_end(&mut client, PROMPT).await;
        assert!(
            end == ReadEnd::Reset,
            "client saw {end:?} after the app server's reset"
        );
        assert!(start.elapsed() < PROMPT);
    })
    .await;
}

/// A reset in the middle of a large transfer in both directions stops it on the other side,
/// and the tunnel keeps serving other connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_mid_transfer_leaves_tunnel_usable() {
    within(LIMIT, async {
        let (mut t, raw) = tunnel_with_raw(4).await;
        let (mut client, app) = raw_pair(&t, &raw).await;
        let (mut app_rd, mut app_wr) = app.into_split();
        // The application server streams without end and drains whatever comes up.
        let app_writer = tokio::spawn(async move { write_seeded(&mut app_wr, u64::MAX, 5).await });
        let app_reader = tokio::spawn(async move { read_hashed(&mut app_rd).await });
        let chunk = vec![7u8; 64 * 1024];
        let mut buf = vec![0u8; 64 * 1024];
        let (mut sent, mut got) = (0u64, 0u64);
        while sent < 8 * MIB || got < 8 * MIB {
            client.write_all(&chunk).await.expect("client writes");
            sent += chunk.len() as u64;
            let n = client.read(&mut buf).await.expect("client reads");
            assert!(n > 0, "early EOF");
            got += n as u64;
        }
        reset(client);
        let w = tokio::time::timeout(PROMPT, app_writer)
            .await
            .expect("app server's writes stop promptly after the reset")
            .expect("writer task");
        let r = tokio::time::timeout(PROMPT, app_reader)
            .await
            .expect("app server's read ends promptly after the reset")
            .expect("reader task");
        let w = w.expect_err("app server's endless write ended without error");
        // The kernel reports a reset once, to the first call on the socket: one half sees
        // ECONNRESET and the other then sees EPIPE (writer) or EOF (reader).
        let r = r.err().map(|e| e.kind());
        assert!(
            w.kind() == std::io::ErrorKind::ConnectionReset
                || r == Some(std::io::ErrorKind::ConnectionReset),
            "no reset at the app server: writer {w:?}, reader {r:?}"
        );
        for seed in 0..3 {
            t.check_transfer(MIB, MIB, seed).await;
        }
    })
    .await;
}

/// The service refuses the connection (nothing listens on its port): the client's connection
/// is reset promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_service_closes_client_promptly() {
    within(LIMIT, async {
        // Bound but not listening: connecting gets an RST. Unlike a listener bound and
        // dropped, the port stays ours, so no other test can take it meanwhile.
        let hold = TcpSocket::new_v4().expect("socket");
        hold.bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let closed = hold.local_addr().expect("addr");
        let mut t = Tunnel::start_with(IK, 2, |s, c| {
            add_service(s, "closed", closed);
            add_map(c, "closed");
        })
        .await;
        for _ in 0..3 {
            let start = Instant::now();
            let end = try_once(t.addr_of("closed"), b"anyone there?").await;
            assert!(
                end == ReadEnd::Reset,
                "client saw {end:?} for a refused service"
            );
            assert!(start.elapsed() < PROMPT);
        }
        t.check_transfer(1000, 1000, 1).await;
    })
    .await;
}

/// A client mapping a service the server does not have: its connections are reset and nothing
/// is connected on the server side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_is_refused() {
    within(LIMIT, async {
        let mut t = Tunnel::start_with(IK, 2, |_, c| add_map(c, "nosuch")).await;
        for _ in 0..3 {
            let start = Instant::now();
            // A header the application server would answer, had it been connected.
            let header = [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 9];
            let end = try_once(t.addr_of("nosuch"), &header).await;
            assert!(
                end == ReadEnd::Reset,
                "client saw {end:?} for an unknown service"
            );
            assert!(start.elapsed() < PROMPT);
        }
        assert_eq!(
            t.app.accepted(),
            0,
            "an unknown service reached the app server"
        );
        t.check_transfer(1000, 1000, 1).await;
        assert_eq!(t.app.accepted(), 1);
    })
    .await;
}

/// A client that opens more connections at once than the node's `limits.max_streams`: the
/// node refuses the extra ones (`RESET` code 3), which the application sees as resets, and the
/// session goes on: no link is closed for it, and once the first ones end new connections
/// work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_stream_limit_is_refused_and_the_session_goes_on() {
    within(LIMIT, async {
        const MAX: usize = 2;
        let raw = TcpListener::bind("127.0.0.1:0").await.expect("bind raw");
        let target = raw.local_addr().expect("addr");
        let mut t = Tunnel::start_with(IK, 2, |s, c| {
            s.limits.max_streams = MAX as u32;
            add_service(s, "raw", target);
            add_map(c, "raw");
        })
        .await;
        // Both links joined at the node too (its count can lag the client's).
        assert!(eventually(PROMPT, || t.server.status().totals.links_opened == 2).await);
        let links_before = t.server.status().totals.links_opened;
        for round in 0..3 {
            // 10 connections at once, each with a first write: 2 get through. A refusal may
            // come back before the connect or the write returns.
            let mut conns = Vec::new();
            let mut refused = 0;
            for _ in 0..10 {
                let written = match TcpStream::connect(t.addr_of("raw")).await {
                    Ok(mut tcp) => tcp.write_all(b"hi").await.map(|()| tcp),
                    Err(e) => Err(e),
                };
                match written {
                    Ok(tcp) => conns.push(tcp),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => refused += 1,
                    Err(e) => panic!("round {round}: {e}"),
                }
            }
            let mut served = Vec::new();
            for _ in 0..MAX {
                let (app, _) = tokio::time::timeout(PROMPT, raw.accept())
                    .await
                    .expect("the node connects the streams within its limit")
                    .expect("accept");
                served.push(app);
            }
            let mut open = Vec::new();
            for mut tcp in conns {
                match read_end(&mut tcp, Duration::from_millis(500)).await {
                    ReadEnd::Reset => refused += 1,
                    ReadEnd::Hang => open.push(tcp),
                    end => panic!("round {round}: a connection ended with {end:?}"),
                }
            }
            assert_eq!(
                (refused, open.len()),
                (10 - MAX, MAX),
                "round {round}: the streams over the limit are refused, the others stay open"
            );
            drop(open);
            drop(served);
            // The streams end at the node once both sides closed.
            assert!(
                eventually(PROMPT * 5, || t.server.status().sessions[0].streams == 0).await,
                "round {round}: streams left at the node"
            );
        }
        t.check_transfer(64 * KIB, 64 * KIB, 1).await;
        assert_eq!(
            t.server.status().totals.links_opened,
            links_before,
            "no link was closed for the refusals"
        );
        // The node counts them (and logs them, rate-limited) as its operator's to see.
        assert_eq!(
            t.server.status().stream_refusals.get("stream_limit"),
            Some(&(3 * (10 - MAX as u64))),
            "{:?}",
            t.server.status().stream_refusals
        );
        // The client counts the connections it reset for them, for its operator.
        let reset = || t.client.status().stream_refusals["stream_limit"];
        assert!(
            eventually(PROMPT, || reset() == 3 * (10 - MAX as u64)).await,
            "the client counted {}",
            reset()
        );
    })
    .await;
}

/// Streams the node cannot connect are visible at the default log level and in `status`: a
/// `warn` line at once for the first (naming the service, or the name a client asked for), the
/// rest counted (`core::lograte`), and a count per reason; the client warns too.
#[tokio::test]
async fn service_failures_are_logged_and_counted() {
    let logs = LogCapture::start();
    within(LIMIT, async {
        let hold = TcpSocket::new_v4().expect("socket");
        hold.bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let closed = hold.local_addr().expect("addr");
        let t = Tunnel::start_with(IK, 2, |s, c| {
            add_service(s, "closed", closed);
            add_map(c, "closed");
            add_map(c, "nosuch");
        })
        .await;
        for _ in 0..3 {
            assert_eq!(try_once(t.addr_of("closed"), b"x").await, ReadEnd::Reset);
            assert_eq!(try_once(t.addr_of("nosuch"), b"x").await, ReadEnd::Reset);
        }
        let refusals = t.server.status().stream_refusals;
        assert_eq!(refusals["service_connect_failed"], 3, "{refusals:?}");
        assert_eq!(refusals["unknown_service"], 3, "{refusals:?}");
        // The client counts the connections it reset, by the node's reason, every reason
        // listed (a metric exists before its first event).
        let counted = || t.client.status().stream_refusals;
        let expected = [
            ("file_limit", 0),
            ("no_link", 0),
            ("service_connect_failed", 3),
            ("stream_limit", 0),
            ("unknown_service", 3),
        ];
        let expected = expected.map(|(k, v)| (k.to_owned(), v)).into();
        assert!(
            eventually(PROMPT, || counted() == expected).await,
            "{:?}",
            counted()
        );
        let text = t.client.status().to_text();
        assert!(
            text.contains(
                "connections reset (streams refused): service_connect_failed 3, unknown_service 3"
            ),
            "{text}"
        );
        let line = logs
            .wait_for(&["WARN", "cannot connect to the service"], PROMPT)
            .await;
        assert!(
            line.contains("service=closed") && line.contains(&closed.to_string()),
            "{line}"
        );
        let line = logs
            .wait_for(&["WARN", "does not have", "last=\"nosuch\""], PROMPT)
            .await;
        assert!(line.contains("streams=1"), "{line}");
        // One line each so far: the other two of each are counted for the next.
        let warned = |part: &str| logs.lines().iter().filter(|l| l.contains(part)).count();
        assert_eq!(
            warned("cannot connect to the service: its streams are reset"),
            1
        );
        assert_eq!(warned("does not have"), 1);
        // The client says it too, for its own operator, naming the node.
        let line = logs
            .wait_for(&["WARN", "the node has no such service", "node=1"], PROMPT)
            .await;
        assert!(line.contains("connections=1"), "{line}");
        logs.wait_for(
            &[
                "WARN",
                "the node cannot connect to the service: connections reset",
            ],
            PROMPT,
        )
        .await;
    })
    .await;
}

/// An application that sent its request and its FIN, then went away (a reset) after the reply
/// and its FIN had reached the client daemon, unread: by then the node has finished the stream
/// (its FIN acked, the client's read) and forgotten it. The client resets the stream; the node
/// takes that `RESET` for a stale one and answers nothing, and the client must not wait for an
/// answer. A trial saw such streams pile up on a client (7 of 1,000 requests whose application
/// closed without reading the reply) and every drain wait its whole timeout for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_application_left_after_the_reply_came_ends_at_both_ends() {
    within(LIMIT, async {
        let (t, raw) = tunnel_with_raw(4).await;
        let mut app = TcpStream::connect(t.addr_of("raw")).await.expect("connect");
        let (mut svc, _) = raw.accept().await.expect("the node connects");
        app.write_all(b"request").await.expect("write");
        app.shutdown().await.expect("FIN");
        let mut request = Vec::new();
        svc.read_to_end(&mut request)
            .await
            .expect("read the request");
        // Far more than the client daemon holds for an application that does not read (its
        // stream's window and the sockets to the application), so the node has to wait for
        // the application: it reads a little at a time until the node has sent the last byte
        // and its FIN and heard them acked. Then the client daemon still holds what its
        // window took in last, beyond what the sockets to the application hold. (How much the
        // daemon takes in unread depends on socket autotuning and scheduling, so the test
        // does not guess it: a CI run saw a plain 8 MiB reply never finish at the node.)
        let reply = 16 * MIB as usize;
        let writer = tokio::spawn(async move {
            svc.write_all(&vec![0x5A; reply]).await.expect("reply");
            drop(svc);
        });
        let mut chunk = vec![0u8; 16 * KIB as usize];
        let mut taken = 0;
        let deadline = Instant::now() + LIMIT / 2;
        while !(writer.is_finished() && t.server.stream_count() == 0) {
            assert!(Instant::now() < deadline, "the node finished the stream");
            let n = app.read(&mut chunk).await.expect("read the reply");
            assert!(
                n > 0,
                "the reply ended at {taken} of {reply} bytes, unread by design"
            );
            taken += n;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(taken < reply, "the application read the whole reply");
        assert_eq!(
            t.client.stream_count(),
            1,
            "the client still writes the reply"
        );
        reset(app);
        let ended = eventually(PROMPT, || t.client.stream_count() == 0).await;
        assert!(ended, "the client's stream is left open");
    })
    .await;
}
