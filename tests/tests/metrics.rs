//! The metrics endpoint (`metrics.listen`) of both daemons, scraped over HTTP during and after a
//! transfer: the exposition is well formed (and passes `promtool check metrics` where promtool
//! is installed; `WANMUX_REQUIRE_PROMTOOL=1` makes its absence a failure, as in CI), and its
//! byte counters match, to the byte, what the application moved through the tunnel.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wanmux_tests::harness::{eventually, within, Auth, Tunnel};

/// `GET path` on `addr`; the status line and the body.
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect to metrics");
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).await.unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.lines().next().unwrap_or_default().to_owned();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .expect("Content-Length");
    assert_eq!(len, body.len(), "Content-Length matches the body");
    (status, body.to_owned())
}

/// Parses a text exposition: checks every sample belongs to a family declared by `# TYPE`, with
/// help, that counters and only counters end in `_total`, that labels are well formed and values
/// are numbers. Returns the samples by name and label text.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps = HashSet::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("# HELP name text");
            assert!(!help.is_empty() && helps.insert(name.to_owned()), "{line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "family {name} declared twice"
            );
        } else {
            let (series, value) = line.rsplit_once(' ').expect("a sample: series value");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
            let name = series.split('{').next().unwrap();
            assert!(
                name.starts_with("wanmux_")
                    && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "metric name {name}"
            );
            if let Some(labels) = series.strip_prefix(name) {
                if !labels.is_empty() {
                    assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                    for pair in labels[1..labels.len() - 1].split("\",") {
                        let (k, v) = pair
                            .split_once("=\"")
                            .unwrap_or_else(|| panic!("label=\"value\": {line}"));
                        assert!(k.bytes().all(|b| b.is_ascii_lowercase()), "label {k}");
                        assert!(!v.contains('\n'), "label value {v}");
                    }
                }
            }
            let kind = types
                .get(name)
                .unwrap_or_else(|| panic!("sample {name} without # TYPE"));
            assert!(helps.contains(name), "{name} without # HELP");
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "{name}: counters and only counters end in _total"
            );
            assert!(
                samples.insert(series.to_owned(), value).is_none(),
                "{series} twice"
            );
        }
    }
    samples
}

/// Runs `promtool check metrics` on `text` where promtool is installed.
fn promtool(text: &str) {
    use std::io::Write as _;
    let spawned = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) if std::env::var_os("WANMUX_REQUIRE_PROMTOOL").is_some() => {
            panic!("promtool is required (WANMUX_REQUIRE_PROMTOOL) but cannot run: {e}")
        }
        Err(_) => return,
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tunnel of two links whose daemons both serve metrics on a loopback port.
async fn with_metrics() -> Tunnel {
    let local = Some("127.0.0.1:0".parse().unwrap());
    Tunnel::start_with(Auth::Static { psk: false }, 2, |server, client| {
        server.metrics_listen = local;
        client.metrics_listen = local;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_well_formed_and_count_what_the_application_moved() {
    within(Duration::from_secs(60), async {
        let mut t = with_metrics().await;
        let (client_at, server_at) = (
            t.client.metrics_addr().expect("client metrics"),
            t.server.metrics_addr().expect("server metrics"),
        );
        let (up, down) = (3 << 20, 5 << 20);
        t.check_transfer(up, down, 1).await;
        // The harness's application sends a 16-byte header before its upload.
        let up = up + 16;

        for (addr, read, written) in [(client_at, up, down), (server_at, down, up)] {
            let counted = eventually(Duration::from_secs(5), || {
                let st = if addr == client_at {
                    t.client.status()
                } else {
                    t.server.status()
                };
                st.totals.app_read_bytes == read && st.totals.app_written_bytes == written
            })
            .await;
            assert!(counted, "the totals reach what the application moved");
            // Each link has its RTT once a pong came back on it: a link the transfer left idle
            // (a loaded machine may schedule all of it on the other) pings first 10 s after it
            // came up (`KEEPALIVE`), so its series may come that late.
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            let (status, body) = loop {
                let (status, body) = get(addr, "/metrics").await;
                let sampled = |name: &str| body.lines().filter(|l| l.starts_with(name)).count();
                let both = sampled("wanmux_link_rtt_seconds{") == 2
                    && sampled("wanmux_link_min_rtt_seconds{") == 2;
                if both || std::time::Instant::now() >= deadline {
                    break (status, body);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            assert_eq!(status, "HTTP/1.1 200 OK");
            let m = parse(&body);
            promtool(&body);
            assert_eq!(m["wanmux_app_read_bytes_total"], read as f64, "{body}");
            assert_eq!(m["wanmux_app_written_bytes_total"], written as f64);
            assert!(m["wanmux_tunnel_sent_bytes_total"] > read as f64);
            assert!(m["wanmux_tunnel_received_bytes_total"] > written as f64);
            assert_eq!(m["wanmux_streams_opened_total"], 1.0);
            assert_eq!(m["wanmux_links_opened_total"], 2.0);
            assert_eq!(m["wanmux_sessions"], 1.0);
            // Moving 8 MiB took the session's lock for some time, and less than the test ran.
            let held = m["wanmux_session_lock_held_seconds_total"];
            assert!(held > 0.0 && held < 60.0, "{body}");
            assert!(
                m.contains_key("wanmux_session_lock_waited_seconds_total"),
                "{body}"
            );
            let links: Vec<&String> = m
                .keys()
                .filter(|k| k.starts_with("wanmux_link_sent_bytes_total{"))
                .collect();
            assert_eq!(links.len(), 2, "one series per link: {links:?}");
            let ids: HashSet<&str> = links
                .iter()
                .filter_map(|k| k.split("link=\"").nth(1)?.split('"').next())
                .collect();
            assert_eq!(ids.len(), 2);
            // Each link's smoothed RTT, and its smallest sample: no larger, and more than 0.
            // By the link's labels, so the two lists pair up.
            let rtt = |name: &str| -> Vec<f64> {
                let series: std::collections::BTreeMap<&str, f64> = m
                    .iter()
                    .filter_map(|(k, &v)| Some((k.strip_prefix(name)?, v)))
                    .collect();
                series.into_values().collect()
            };
            let (smoothed, min) = (
                rtt("wanmux_link_rtt_seconds{"),
                rtt("wanmux_link_min_rtt_seconds{"),
            );
            assert_eq!((smoothed.len(), min.len()), (2, 2), "{body}");
            for (s, m) in smoothed.iter().zip(&min) {
                assert!(*m > 0.0 && m <= s, "min {m} s, smoothed {s} s");
            }
            let text = if addr == client_at {
                t.client.status()
            } else {
                t.server.status()
            }
            .to_text();
            assert!(text.contains("rtt ms    min ms"), "{text}");
            let info: Vec<&String> = m
                .keys()
                .filter(|k| k.starts_with("wanmux_link_info{"))
                .collect();
            assert_eq!(info.len(), 2, "{info:?}");
            assert!(
                info.iter()
                    .all(|k| k.contains("transport=\"tcp\"") && k.contains("address=\"127.0.0.1:")),
                "{info:?}"
            );
            assert!(m["wanmux_memory_limit_bytes"] > 0.0);
        }
        let (status, _) = get(client_at, "/").await;
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        // A monitor's HEAD gets the head alone; idle connections (a scraper's, a scan's) do
        // not hold up a scrape: a trial's 20 delayed one by the 5 s an idle one was waited for.
        let mut head = TcpStream::connect(client_at).await.unwrap();
        head.write_all(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        head.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.ends_with("\r\n\r\n"), "no body: {reply}");
        let mut idle = Vec::new();
        for _ in 0..20 {
            idle.push(TcpStream::connect(client_at).await.unwrap());
        }
        let asked = std::time::Instant::now();
        let (status, _) = get(client_at, "/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            asked.elapsed() < Duration::from_millis(1500),
            "{:?}",
            asked.elapsed()
        );
        drop(idle);

        // The same numbers as a status: the client's session for node 1 with its two links.
        let st = t.client.status();
        assert_eq!(st.daemon, "client");
        assert_eq!(st.links_up(), 2);
        assert_eq!(st.sessions[0].peer, "node 1");
        let json: serde_json::Value = serde_json::from_str(&st.to_json()).unwrap();
        assert_eq!(json["sessions"][0]["links"].as_array().unwrap().len(), 2);
        assert!(st.to_text().contains("session "));
        t.client.shutdown();
        t.server.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_links_delivery_rate_is_zero() {
    // After a transfer the node's links went on reporting its rate for a minute (the rate is
    // measured by pongs, and an idle link's come every 10 s).
    within(Duration::from_secs(60), async {
        let mut t = with_metrics().await;
        t.check_transfer(4 << 20, 8 << 20, 1).await;
        // A rate stays current for a second after the last pong, or two smoothed RTTs if longer
        // (`RATE_FRESH`), and the transfer's last pongs come after its last byte: on a loaded
        // machine the RTT of a busy link can be most of a second. Waited for, well short of the
        // minute the rate was once reported for (and of the next keepalive, 10 s).
        let deadline = std::time::Instant::now() + Duration::from_secs(8);
        for (daemon, addr) in [
            ("client", t.client.metrics_addr().unwrap()),
            ("server", t.server.metrics_addr().unwrap()),
        ] {
            let status = || {
                if daemon == "client" {
                    t.client.status()
                } else {
                    t.server.status()
                }
            };
            loop {
                let st = status();
                let rates: Vec<u64> = st.sessions[0]
                    .links
                    .iter()
                    .map(|l| l.delivery_rate_bytes_per_second)
                    .collect();
                let (_, body) = get(addr, "/metrics").await;
                let m = parse(&body);
                let gauges: Vec<f64> = m
                    .iter()
                    .filter(|(k, _)| k.starts_with("wanmux_link_delivery_rate_bytes_per_second{"))
                    .map(|(_, &v)| v)
                    .collect();
                if rates == [0, 0] && gauges == [0.0, 0.0] {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{daemon}: rates {rates:?}, gauges {gauges:?}: {}\n{body}",
                    st.to_text()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        t.client.shutdown();
        t.server.shutdown();
    })
    .await;
}

#[tokio::test]
async fn a_scraper_that_never_finishes_its_request_costs_one_slot_for_a_while() {
    within(Duration::from_secs(30), async {
        let t = Tunnel::start_with(Auth::Psk, 1, |server, _| {
            server.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
        let addr = t.server.metrics_addr().unwrap();
        // Stalled scrapers and one that sends garbage past the limit.
        let mut stalled = Vec::new();
        for _ in 0..8 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /metr").await.unwrap();
            stalled.push(s);
        }
        let mut flood = TcpStream::connect(addr).await.unwrap();
        let junk = vec![b'a'; 64 * 1024];
        let _ = flood.write_all(&junk).await;
        let mut rest = Vec::new();
        let _ = flood.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "an oversized head gets no answer");
        // A well-behaved scraper is still answered.
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        parse(&body);
        t.server.shutdown();
    })
    .await;
}

/// A trial's 300 connections from one host that sent nothing made a scrape from elsewhere wait
/// 25 s: they held every slot in turn until their head timed out, and new connections queued
/// behind them. Now every connection is accepted at once, and a source's oldest connection gives
/// way to its new ones: here 127.0.0.2 keeps opening idle connections while 127.0.0.1 scrapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_host_do_not_keep_a_scrape_waiting() {
    within(Duration::from_secs(60), async {
        let t = Tunnel::start_with(Auth::Psk, 1, |server, _| {
            server.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
        let addr = t.server.metrics_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let flood = tokio::spawn({
            let (stop, count) = (stop.clone(), count.clone());
            async move {
                let mut idle = std::collections::VecDeque::new();
                let mut opened = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
                    let connect =
                        tokio::time::timeout(Duration::from_millis(200), socket.connect(addr));
                    if let Ok(Ok(tcp)) = connect.await {
                        opened += 1;
                        count.store(opened, std::sync::atomic::Ordering::Relaxed);
                        idle.push_back(tcp);
                    }
                    // At most 300 held by this end at once (the test's own descriptors).
                    if idle.len() > 300 {
                        idle.pop_front();
                    }
                }
                opened
            }
        });
        // 300 idle connections first (more than the endpoint had slots), however slow the
        // machine.
        let enough = || count.load(std::sync::atomic::Ordering::Relaxed) >= 300;
        assert!(
            eventually(Duration::from_secs(30), enough).await,
            "the flood opened {} connections",
            count.load(std::sync::atomic::Ordering::Relaxed)
        );
        // Before, the scrape came after rounds of 64 idle connections timing out (2 s each).
        let scrape = tokio::time::timeout(Duration::from_secs(5), get(addr, "/metrics")).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let opened = flood.await.expect("the flood");
        let (status, body) =
            scrape.expect("the scrape is answered while the idle connections come");
        assert_eq!(status, "HTTP/1.1 200 OK");
        parse(&body);
        assert!(opened >= 300, "only {opened} idle connections");
        t.server.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_answers_on_the_control_socket_which_only_its_owner_may_use() {
    use std::os::unix::fs::PermissionsExt;
    within(Duration::from_secs(30), async {
        let dir = std::env::temp_dir().join(format!("wanmux-control-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (client_sock, server_sock) = (dir.join("client.sock"), dir.join("server.sock"));
        let (c, s) = (client_sock.clone(), server_sock.clone());
        let mut t = Tunnel::start_with(Auth::Psk, 3, |server, client| {
            server.control_socket = Some(s);
            client.control_socket = Some(c);
        })
        .await;
        t.check_transfer(100_000, 300_000, 4).await;
        let mode = std::fs::metadata(&client_sock)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the socket is private");

        let st = wanmux_core::control::query(&client_sock)
            .await
            .expect("status");
        assert_eq!((st.daemon.as_str(), st.links_up()), ("client", 3));
        assert_eq!(st.totals.app_written_bytes, 300_000);
        let st = wanmux_core::control::query(&server_sock)
            .await
            .expect("status");
        assert_eq!((st.daemon.as_str(), st.sessions.len()), ("server", 1));
        assert_eq!(st.sessions[0].peer, "psk");
        assert_eq!(st.totals.app_written_bytes, 100_016);

        // A second daemon on the same socket is refused, naming the key; the first goes on.
        let mut second = t.client_config.clone();
        second.maps[0].listen = "127.0.0.1:0".parse().unwrap();
        let err = wanmux_client::start(second).await.unwrap_err().to_string();
        assert!(
            err.contains("(control.socket)") && err.contains("another daemon"),
            "{err}"
        );
        assert!(wanmux_core::control::query(&client_sock).await.is_ok());

        // The files go with their daemons; a stale one is replaced by the next daemon.
        t.client.shutdown();
        assert!(!client_sock.exists(), "the client removed its socket");
        let _stale = std::os::unix::net::UnixListener::bind(&client_sock).unwrap();
        drop(_stale);
        let again = wanmux_client::start(t.client_config.clone())
            .await
            .expect("replaces a stale socket");
        assert!(wanmux_core::control::query(&client_sock).await.is_ok());
        again.shutdown();
        t.server.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_are_counted_by_reason_and_reloads_by_result() {
    use wanmux_config::ClientAuth;
    within(Duration::from_secs(60), async {
        let local = Some("127.0.0.1:0".parse().unwrap());
        let t = Tunnel::start_with(Auth::Psk, 1, |server, client| {
            server.metrics_listen = local;
            client.metrics_listen = local;
        })
        .await;
        let server_at = t.server.metrics_addr().expect("server metrics");
        let client_at = t.client.metrics_addr().expect("client metrics");
        let scrape = async |addr| {
            let (status, body) = get(addr, "/metrics").await;
            assert_eq!(status, "HTTP/1.1 200 OK");
            promtool(&body);
            (parse(&body), body)
        };
        let failed =
            |reason: &str| format!("wanmux_handshake_failures_total{{reason=\"{reason}\"}}");
        // Every reason is there from the start, at 0.
        let (m, body) = scrape(server_at).await;
        for reason in ["wrong_psk", "unknown_client", "timeout", "busy", "quic"] {
            assert_eq!(m[&failed(reason)], 0.0, "{body}");
        }
        let (m, body) = scrape(client_at).await;
        for reason in ["refused_by_node", "auth", "timeout", "connection_refused"] {
            assert_eq!(m[&failed(reason)], 0.0, "{body}");
        }

        // A client with another PSK: the node counts a wrong PSK, the client a refusal.
        let mut wrong = t.client_config.clone();
        if let ClientAuth::PskOnly { psk, .. } = &mut wrong.auth {
            *psk = wanmux_core::keys::Psk::generate();
        }
        wrong.maps[0].listen = "127.0.0.1:0".parse().unwrap();
        wrong.metrics_listen = local;
        let bad = wanmux_client::start(wrong).await.expect("client starts");
        bad.wait_first_dial().await;
        let counted = eventually(Duration::from_secs(10), || {
            t.server.status().handshake_failures["wrong_psk"] >= 1
        })
        .await;
        assert!(counted, "the node counts the wrong PSK");
        let (m, body) = scrape(server_at).await;
        assert!(m[&failed("wrong_psk")] >= 1.0, "{body}");
        assert_eq!(m[&failed("unknown_client")], 0.0);
        let (m, body) = scrape(bad.metrics_addr().unwrap()).await;
        assert!(m[&failed("refused_by_node")] >= 1.0, "{body}");
        assert_eq!(m[&failed("connection_refused")], 0.0);
        // The good client failed nothing.
        let (m, _) = scrape(client_at).await;
        let total: f64 = m
            .iter()
            .filter(|(k, _)| k.starts_with("wanmux_handshake_failures_total{"))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(total, 0.0);

        // Reloads, as the daemon skeleton records them after SIGHUP.
        let (m, _) = scrape(server_at).await;
        assert_eq!(m["wanmux_reloads_total{result=\"applied\"}"], 0.0);
        assert_eq!(m["wanmux_reloads_total{result=\"refused\"}"], 0.0);
        assert_eq!(m["wanmux_config_last_reload_successful"], 1.0);
        t.server.reloads().record(true);
        t.server.reloads().record(false);
        let (m, _) = scrape(server_at).await;
        assert_eq!(m["wanmux_reloads_total{result=\"applied\"}"], 1.0);
        assert_eq!(m["wanmux_reloads_total{result=\"refused\"}"], 1.0);
        assert_eq!(m["wanmux_config_last_reload_successful"], 0.0);
        t.server.reloads().record(true);
        let (m, _) = scrape(server_at).await;
        assert_eq!(m["wanmux_reloads_total{result=\"applied\"}"], 2.0);
        assert_eq!(m["wanmux_config_last_reload_successful"], 1.0);
        bad.shutdown();
        t.client.shutdown();
        t.server.shutdown();
    })
    .await;
}
