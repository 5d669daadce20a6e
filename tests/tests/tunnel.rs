//! End to end through real sockets on loopback: client, server node and application server.

use wanmux_tests::harness::{Auth, Tunnel};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_transfers_each_direction_and_both() {
    let mut t = Tunnel::start(Auth::Static { psk: false }, 4).await;
    for (i, (up, down)) in [
        (0, 0),
        (1, 0),
        (0, 1),
        (1, 1),
        (1 << 20, 0),
        (0, 1 << 20),
        (1 << 20, 1 << 20),
    ]
    .into_iter()
    .enumerate()
    {
        t.check_transfer(up, down, i as u64).await;
    }
}
