#!/usr/bin/env python3
"""Where a bulk run's time went: the path's and the application's rate over time, from the
packet captures of `lab.sh run ... --capture`.

    bench/wanlab/timeline.py /tmp/wanlab-run-XXXX/C-wanmux-quic-4l-p1-r0-bulk [--bin 0.2] [--end]

`--capture` records, at the host that receives the run's data, the headers of what the emulated
path delivered (`path.pcap`, eth0) and of what reached the receiving application's socket
(`app.pcap`, TCP on lo, where a tunnel hands the data over). This prints, in bins from the
receiver's first application byte (where wanmux-bench's receive clock starts):

- path: IP bytes the path delivered towards the receiver, Mbit/s (after the emulator's random
  loss, so a full line shows the rate less the loss);
- app: bytes the application's socket received, Mbit/s (bursty: a tunnel releases data that
  waited behind a lost packet all at once).

Then the receive time (first to last application byte) and the tail: from the end of the last
bin of 20 ms in which the path ran at half its peak rate or more, to the last application byte.
`--end` prints the last second instead of the first three.

Python 3 standard library and `tcpdump` (to read the captures).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
from pathlib import Path

TAIL_BIN = 0.02


def packets(pcap: Path, filt: str) -> list[tuple[float, int, int, str, str]]:
    """(time, payload bytes, IP bytes, source, destination) of each UDP or TCP packet. tcpdump -q
    prints payload lengths; the IP length adds 28 bytes for UDP and 52 for TCP (IP and a TCP
    header with timestamps, which Linux sends by default)."""
    out = subprocess.run(["tcpdump", "-r", str(pcap), "-tt", "-n", "-q", filt],
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"(\d+\.\d+) IP (\S+) > (\S+): (UDP, length|tcp) (\d+)", line)
        if m:
            n = int(m.group(5))
            ip = n + (28 if m.group(4).startswith("UDP") else 52)
            rows.append((float(m.group(1)), n, ip, m.group(2), m.group(3).rstrip(":")))
    return rows


def host(addr: str) -> str:
    return addr.rsplit(".", 1)[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, help="one run's directory, with path.pcap and app.pcap")
    ap.add_argument("--bin", type=float, default=0.2, help="bin width in seconds (default 0.2)")
    ap.add_argument("--end", action="store_true", help="the last second instead of the first three")
    args = ap.parse_args()
    for name in ("path.pcap", "app.pcap"):
        if not (args.run_dir / name).is_file():
            ap.error(f"{args.run_dir / name} not found (run lab.sh with --capture)")

    # The application's data: the TCP connection on lo that carried the most bytes, one way.
    app = packets(args.run_dir / "app.pcap", "tcp")
    flows = collections.Counter()
    for _, n, _, src, dst in app:
        flows[(src, dst)] += n
    if not flows:
        print("no application data in app.pcap (direct TCP runs do not use lo)", file=sys.stderr)
        return 1
    (src, dst), _ = flows.most_common(1)[0]
    app = [(t, n) for t, n, _, s, d in app if (s, d) == (src, dst) and n > 0]
    first, last = app[0][0], app[-1][0]

    # The path's data direction: the destination host that received the most bytes on eth0.
    path = packets(args.run_dir / "path.pcap", "ip")
    to_host = collections.Counter()
    for _, _, ip, _, d in path:
        to_host[host(d)] += ip
    receiver = to_host.most_common(1)[0][0]
    path = [(t, ip) for t, _, ip, _, d in path if host(d) == receiver]

    start = last - 1.0 if args.end else first
    stop = last + args.bin if args.end else first + 3.0
    bins = collections.defaultdict(lambda: [0, 0])
    for t, n in path:
        if start <= t < stop:
            bins[int((t - start) / args.bin)][0] += n
    for t, n in app:
        if start <= t < stop:
            bins[int((t - start) / args.bin)][1] += n
    print(f"{'from s':>7} {'path Mbit/s':>12} {'app Mbit/s':>11}")
    for k in range(int((stop - start) / args.bin + 0.5)):
        p, a = bins[k]
        t = start - first + k * args.bin
        print(f"{t:7.2f} {p * 8 / args.bin / 1e6:12.1f} {a * 8 / args.bin / 1e6:11.1f}")

    fine = collections.Counter()
    for t, n in path:
        if first <= t <= last:
            fine[int((t - first) / TAIL_BIN)] += n
    peak = max(fine.values(), default=0)
    busy = [k for k, n in fine.items() if n >= peak / 2]
    tail = (last - first) - (max(busy) + 1) * TAIL_BIN if busy else float("nan")
    total = sum(n for _, n in app)
    print(f"receive time {last - first:.2f} s, {total * 8 / (last - first) / 1e6:.1f} Mbit/s "
          f"at the application's socket; tail {tail:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
