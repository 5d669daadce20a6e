//! Transfers through a real tunnel on loopback: 0 B, 1 B, 1 MiB and 256 MiB of seeded random
//! data, upload only, download only and both at once, over 1 and 4 links, in every auth mode.
//! Every transfer compares blake3 hashes of what was sent and what arrived, both directions.

use std::time::Duration;
use wanmux_tests::harness::{within, Auth, Tunnel};

const MIB: u64 = 1 << 20;
const SMALL_LIMIT: Duration = Duration::from_secs(60);
/// A 256 MiB test moves at most 512 MiB; even at a slow 200 Mbit/s that is well under this.
const LARGE_LIMIT: Duration = Duration::from_secs(120);

const IK: Auth = Auth::Static { psk: false };
const IKPSK2: Auth = Auth::Static { psk: true };
const NNPSK0: Auth = Auth::Psk;

/// 0 B, 1 B and 1 MiB, each upload only, download only and both ways at once, in one tunnel.
async fn small_transfers(auth: Auth, links: u16) {
    within(SMALL_LIMIT, async {
        let mut t = Tunnel::start(auth, links).await;
        let mut seed = 0;
        for size in [0, 1, MIB] {
            for (up, down) in [(size, 0), (0, size), (size, size)] {
                seed += 1;
                t.check_transfer(up, down, seed).await;
            }
        }
    })
    .await;
}

async fn large_transfer(auth: Auth, links: u16, up: u64, down: u64) {
    within(LARGE_LIMIT, async {
        let mut t = Tunnel::start(auth, links).await;
        t.check_transfer(up, down, 256).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_ik_1_link() {
    small_transfers(IK, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_ik_4_links() {
    small_transfers(IK, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_ikpsk2_1_link() {
    small_transfers(IKPSK2, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_ikpsk2_4_links() {
    small_transfers(IKPSK2, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_nnpsk0_1_link() {
    small_transfers(NNPSK0, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_nnpsk0_4_links() {
    small_transfers(NNPSK0, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_256mib_1_link() {
    large_transfer(IK, 1, 256 * MIB, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_256mib_1_link() {
    large_transfer(IK, 1, 0, 256 * MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ways_256mib_1_link() {
    large_transfer(IK, 1, 256 * MIB, 256 * MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_256mib_4_links() {
    large_transfer(NNPSK0, 4, 256 * MIB, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_256mib_4_links() {
    large_transfer(NNPSK0, 4, 0, 256 * MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ways_256mib_4_links() {
    large_transfer(IKPSK2, 4, 256 * MIB, 256 * MIB).await;
}
