#!/usr/bin/env python3
"""What each QUIC link's congestion controller did, round by round, from a daemon's log.

    RUST_LOG=info,wanmux_core::quic::pace=trace \\
      bench/wanlab/lab.sh run C --time 10 --repeat 1 --no-rr --keep-tmp --contenders wanmux-quic-4
    bench/wanlab/pace_trace.py /tmp/wanlab-run-XXXX/C-wanmux-quic-4-p1-r0-bulk/client.log [--from 3]

One line per round that ended (the sending daemon's log: the client's for an upload, the
server's for `--reverse`), in seconds from the first busy round: the link, the phase the round
led to, its delivery sample and the estimate after it (Mbit/s), bytes acknowledged and lost,
the link's window and **the sum of the latest windows of all links** (what the links keep in
flight together, against the path's bandwidth-delay product), the round's RTT range and mean,
the delay variation the link measured and the extra delay its window covers (ms; logs of
builds before fcb0b55 have neither), and the fewest and most bytes in flight after a batch of
acks in the round (older logs lack it). At the end, per link, the median variation and extra
delay after `--from` seconds.

Python 3 standard library only.
"""

from __future__ import annotations

import argparse
import datetime
import re
import statistics
import sys

ROUND = re.compile(
    r"^(?P<ts>\S+) TRACE .*pace round link=(?P<link>\d+) phase=(?P<phase>\S+) "
    r"sample_mbps=(?P<sample>\S+) bw_mbps=(?P<bw>\S+) acked=(?P<acked>\d+) lost=(?P<lost>\d+) "
    r"app_limited=(?P<app>\S+) round_min_rtt_ms=(?P<rmin>\S+) round_max_rtt_ms=(?P<rmax>\S+) "
    r"window=(?P<window>\d+) mean_rtt_ms=(?P<mean>\S+) in_flight=(?P<inflight>\d+)"
    r"(?: in_flight_min=(?P<inmin>\d+))?"
    r"(?: variation_ms=(?P<var>\S+) extra_ms=(?P<extra>\S+))?"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("log", help="a daemon's log with pace=trace lines")
    ap.add_argument("--from", dest="start", type=float, default=3.0,
                    help="seconds after which the per-link medians are taken (default 3)")
    args = ap.parse_args()
    t0 = None
    windows: dict[int, int] = {}
    late: dict[int, list[tuple[float, float]]] = {}
    with open(args.log, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = ROUND.match(line)
            if not m:
                continue
            ts = datetime.datetime.fromisoformat(m["ts"].replace("Z", "+00:00")).timestamp()
            if t0 is None:
                if m["app"] == "true":
                    continue  # the handshake's rounds, before the transfer
                t0 = ts
            link = int(m["link"])
            windows[link] = int(m["window"])
            var = float(m["var"]) if m["var"] else None
            extra = float(m["extra"]) if m["extra"] else None
            t = ts - t0
            tail = "" if var is None else f" var {var:5.1f} extra {extra:4.1f}"
            if m["inmin"]:
                tail += f" in flight {int(m['inmin']) // 1000}-{int(m['inflight']) // 1000}k"
            print(f"{t:6.2f} L{link} {m['phase']:10s} sample {float(m['sample']):7.1f} "
                  f"bw {float(m['bw']):7.1f} acked {int(m['acked']) // 1000:6d}k "
                  f"lost {int(m['lost']) // 1000:5d}k window {int(m['window']) // 1000:6d}k "
                  f"sum {sum(windows.values()) // 1000:6d}k rtt {float(m['rmin']):6.1f}-"
                  f"{float(m['rmax']):6.1f} mean {float(m['mean']):6.1f}{tail}")
            if var is not None and t >= args.start:
                late.setdefault(link, []).append((var, extra))
    if t0 is None:
        print("no busy pace round in the log (was RUST_LOG=...pace=trace set?)", file=sys.stderr)
        return 1
    for link in sorted(late):
        v = statistics.median(x for x, _ in late[link])
        e = statistics.median(y for _, y in late[link])
        print(f"link {link}: after {args.start:g} s, variation median {v:.1f} ms, "
              f"extra median {e:.1f} ms ({len(late[link])} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
