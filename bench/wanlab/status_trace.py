#!/usr/bin/env python3
"""Trace a running client: what the application got, what the reorder buffers held and what
each link received, several times a second, from `wanmux-client status --json`.

    # beside a kept cluster run (lab.sh cluster ... --keep-tmp), the client's socket appears
    # under the run's directory:
    bench/wanlab/status_trace.py record --bin-dir DIR \\
        --socket '/tmp/wanlab-cluster-*/cluster-G-cluster-stripe-r0-*/client.sock' --out trace.txt
    bench/wanlab/status_trace.py show trace.txt

`record` waits for the socket (a glob: the newest match), polls until it is gone and writes one
line per poll: the time, then the status JSON. `show` prints, per poll, the application's rate
(bytes the client wrote to its applications), the bytes all sessions hold received but not yet
delivered (the reorder buffers) and, per link (`NODE.LINK`), its received rate and its RTT in
ms. A stream that waits in order behind one late link shows as a rate near 0 while the buffer
grows and the links keep receiving. Python 3.11 standard library only.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import time


def record(args: argparse.Namespace) -> int:
    client = os.path.join(args.bin_dir, "wanmux-client") if args.bin_dir else "wanmux-client"
    deadline = time.monotonic() + args.wait
    sock = None
    while time.monotonic() < deadline:
        found = sorted(glob.glob(args.socket), key=os.path.getmtime)
        if found:
            sock = found[-1]
            break
        time.sleep(0.05)
    if sock is None:
        print(f"no socket matches {args.socket} within {args.wait} s", file=sys.stderr)
        return 1
    with open(args.out, "w") as out:
        while os.path.exists(sock):
            t = time.time()
            r = subprocess.run([client, "status", "--socket", sock, "--json"],
                               capture_output=True, text=True)
            if r.returncode == 0:
                out.write(f"{t:.3f} {' '.join(r.stdout.split())}\n")
            time.sleep(args.interval)
    return 0


def show(args: argparse.Namespace) -> int:
    polls = []
    with open(args.trace) as f:
        for line in f:
            t, _, body = line.partition(" ")
            try:
                polls.append((float(t), json.loads(body)))
            except ValueError:
                continue
    if len(polls) < 2:
        print("fewer than two polls", file=sys.stderr)
        return 1
    t0 = polls[0][0]
    prev = None
    for t, st in polls:
        written = st["totals"]["app_written_bytes"]
        buffered = sum(s["receive_buffered_bytes"] for s in st["sessions"])
        links = {}
        for s in st["sessions"]:
            node = s["peer"].split()[-1]
            for link in s["links"]:
                links[f"{node}.{link['id']}"] = (link["received_bytes"], link["rtt_ms"] or 0.0)
        if prev is not None:
            dt = t - prev[0]
            rate = (written - prev[1]) * 8 / dt / 1e6
            cells = []
            for name, (received, rtt) in sorted(links.items()):
                before = prev[2].get(name, (received, 0.0))[0]
                mbit = (received - before) * 8 / dt / 1e6
                if args.all or received > 0:
                    cells.append(f"{name}:{mbit:.0f}/{rtt:.0f}")
            print(f"{t - t0:7.2f} s  app {rate:6.0f} Mbit/s  buffered {buffered / 1e6:5.1f} MB | "
                  + " ".join(cells))
        prev = (t, written, links)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="poll a client's status into a file")
    r.add_argument("--socket", required=True, help="the client's control socket (a glob)")
    r.add_argument("--out", required=True, help="where the polls go")
    r.add_argument("--bin-dir", default=None, help="where wanmux-client is (default: PATH)")
    r.add_argument("--interval", type=float, default=0.08,
                   help="seconds between polls, besides the poll's own time (default 0.08)")
    r.add_argument("--wait", type=float, default=120.0,
                   help="seconds to wait for the socket (default 120)")
    s = sub.add_parser("show", help="print a recorded trace")
    s.add_argument("trace")
    s.add_argument("--all", action="store_true",
                   help="every link in every poll (default: the links that received anything)")
    args = p.parse_args()
    return record(args) if args.cmd == "record" else show(args)


if __name__ == "__main__":
    sys.exit(main())
