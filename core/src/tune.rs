//! The host settings a fast link needs, checked at start: the TCP congestion control links
//! use by default (`bbr` where the kernel has it), and the socket-buffer limits of the kernel
//! (`net.core.rmem_max` for QUIC links, `net.ipv4.tcp_rmem` for TCP links), each shortfall
//! reported with the exact `sysctl` line that fixes it.
//!
//! Linux only: elsewhere nothing is checked and links keep the system's congestion control.

use std::path::Path;

/// The log target of the warnings about host settings (`RUST_LOG=wanmux::host=error` silences
/// them once they are known).
pub const LOG_TARGET: &str = "wanmux::host";

/// The congestion control TCP links get when the config names none: on a lossy long path a
/// loss-based algorithm (cubic, most systems' default) collapses while bbr keeps its rate
/// (bench/RESULTS.md).
pub const DEFAULT_CONGESTION: &str = "bbr";

/// A config's name for the system's own default congestion control.
pub const SYSTEM_CONGESTION: &str = "system";

/// What a TCP link's largest receive buffer should allow: the bandwidth-delay product of a
/// 500 Mbit/s path at 250 ms is 15.6 MB, and the window must exceed it.
pub const TCP_RMEM_MAX: u64 = 32 << 20;

/// The congestion control links use, from the config's `congestion` (`None`: not set):
/// `"system"` keeps the system default (`None`); a name is used as given; unset means
/// [`DEFAULT_CONGESTION`] when the kernel offers it or can load it, else the system default
/// with a warning in the returned list.
pub fn congestion(configured: Option<&str>, warnings: &mut Vec<String>) -> Option<String> {
    match configured {
        Some(SYSTEM_CONGESTION) => None,
        Some(name) => Some(name.to_owned()),
        None if bbr_usable() => Some(DEFAULT_CONGESTION.to_owned()),
        None => {
            if cfg!(target_os = "linux") {
                warnings.push(format!(
                    "TCP links use the system's congestion control ({}): the kernel has no bbr, \
                     and a loss-based algorithm is slow on a lossy long path; load it with \
                     `modprobe tcp_bbr` (and add tcp_bbr to /etc/modules-load.d/), or set \
                     congestion = \"system\" to silence this",
                    read_trimmed("/proc/sys/net/ipv4/tcp_congestion_control")
                        .unwrap_or_else(|| "unknown".to_owned())
                ));
            }
            None
        }
    }
}

/// Whether links can use bbr: the kernel lists it as available, or setting it on a socket
/// works (as root that loads the module).
fn bbr_usable() -> bool {
    let listed = read_trimmed("/proc/sys/net/ipv4/tcp_available_congestion_control")
        .is_some_and(|l| l.split_whitespace().any(|c| c == DEFAULT_CONGESTION));
    listed || probe_bbr()
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn probe_bbr() -> bool {
    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .and_then(|s| s.set_tcp_congestion(DEFAULT_CONGESTION.as_bytes()))
        .is_ok()
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn probe_bbr() -> bool {
    false
}

/// The kernel limits that cap this daemon's links, each too small one as a warning with the
/// `sysctl` line that raises it. `quic`: the daemon runs QUIC links (asks for UDP buffers of
/// `quic_buffer` bytes); `tcp`: it runs TCP links.
pub fn check_buffers(quic: Option<u64>, tcp: bool) -> Vec<String> {
    check_buffers_in(Path::new("/proc/sys"), quic, tcp)
}

fn check_buffers_in(root: &Path, quic: Option<u64>, tcp: bool) -> Vec<String> {
    let mut out = Vec::new();
    let read = |key: &str| read_trimmed(root.join(key.replace('.', "/")));
    if let Some(want) = quic {
        for key in ["net.core.rmem_max", "net.core.wmem_max"] {
            if let Some(have) = read(key).and_then(|v| v.parse::<u64>().ok()) {
                if have < want {
                    out.push(format!(
                        "{key} is {have}: QUIC links ask for {want}-byte socket buffers and get \
                         {have}, which caps them on a long fast path; raise it with \
                         `sysctl -w {key}={want}` (and in /etc/sysctl.d/ to keep it)"
                    ));
                }
            }
        }
    }
    if tcp {
        for key in ["net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"] {
            let Some(triple) = read(key) else { continue };
            let v: Vec<u64> = triple
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if let [min, default, max] = v[..] {
                if max < TCP_RMEM_MAX {
                    out.push(format!(
                        "{key} allows at most {max} bytes per TCP link: below a long fast \
                         path's bandwidth-delay product; raise it with \
                         `sysctl -w {key}=\"{min} {default} {TCP_RMEM_MAX}\"` (and in \
                         /etc/sysctl.d/ to keep it)"
                    ));
                }
            }
        }
    }
    out
}

fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(values: &[(&str, &str)]) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!(
            "wanmux-tune-{}-{}",
            std::process::id(),
            values.len()
        ));
        let _ = std::fs::remove_dir_all(&root);
        for (key, value) in values {
            let path = root.join(key.replace('.', "/"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, format!("{value}\n")).unwrap();
        }
        root
    }

    #[test]
    fn small_limits_are_named_with_the_line_that_fixes_them() {
        let root = fake_proc(&[
            ("net.core.rmem_max", "212992"),
            ("net.core.wmem_max", "16777216"),
            ("net.ipv4.tcp_rmem", "4096\t131072\t6291456"),
            ("net.ipv4.tcp_wmem", "4096 16384 67108864"),
        ]);
        let w = check_buffers_in(&root, Some(8 << 20), true);
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(w[0].starts_with("net.core.rmem_max is 212992"), "{}", w[0]);
        assert!(w[0].contains("`sysctl -w net.core.rmem_max=8388608`"));
        assert!(
            w[1].contains("`sysctl -w net.ipv4.tcp_rmem=\"4096 131072 33554432\"`"),
            "{}",
            w[1]
        );
        // Only what the daemon uses is checked.
        assert!(check_buffers_in(&root, None, false).is_empty());
        assert_eq!(check_buffers_in(&root, Some(8 << 20), false).len(), 1);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn congestion_names_and_system_default() {
        let mut w = Vec::new();
        assert_eq!(congestion(Some("cubic"), &mut w).as_deref(), Some("cubic"));
        assert_eq!(congestion(Some("system"), &mut w), None);
        assert!(w.is_empty());
        // Unset: bbr where usable, else a warning that says how to get it.
        match congestion(None, &mut w) {
            Some(name) => assert_eq!((name.as_str(), w.len()), ("bbr", 0)),
            None => assert!(w.len() <= 1),
        }
    }
}
