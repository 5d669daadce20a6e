#!/usr/bin/env python3
"""Bulk memory: the peak memory of both daemons while bulk streams fill a loopback tunnel.

For each build (`--bins DIR`, one or more; they alternate within each round) a fresh one-node
tunnel (`--links N` links over `--transport`, Noise IKpsk2) in front of `wanmux-bench server`:
`wanmux-bench client -t TIME -P STREAMS` up, then the same with `-R` down, then the peak
resident memory (`VmHWM`) of each daemon. A bulk stream holds what is in flight and
unacknowledged plus what waits unsent (the engine's unsent bound, docs/ARCHITECTURE.md, "Streams
and windows"), so this is where a change to either shows.

    python3 bench/load/bulk_memory.py [--bins DIR [DIR ...]] [--rounds 2] [-P 8] [--time 5]

Prints one line per run and a Markdown table of the medians. Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import benchlib  # noqa: E402

log = benchlib.logger("bulk-memory")
PROCS = benchlib.Procs(log)


def peak_mib(pid: int) -> float:
    """VmHWM of `pid` in MiB."""
    m = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    if not m:
        raise RuntimeError(f"no VmHWM for pid {pid}")
    return int(m[1]) / 1024


def start_bench_server(bench: Path, d: Path) -> tuple[subprocess.Popen, str]:
    logfile = d / "bench-server.log"
    p = PROCS.start("wanmux-bench server", [str(bench), "server", "--listen", "127.0.0.1:0"],
                    logfile)
    benchlib.wait_for(lambda: "listening on " in logfile.read_text(errors="replace"),
                      "wanmux-bench server listening", [p])
    line = next(x for x in logfile.read_text().splitlines() if x.startswith("listening on "))
    return p, line.split()[-1]


def bulk(bench: Path, addr: str, args, reverse: bool) -> float:
    """Gbit/s of one bulk run through `addr`."""
    argv = [str(bench), "client", "--connect", addr, "-t", str(args.time), "-P", str(args.streams),
            "--json"] + (["-R"] if reverse else [])
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    PROCS.track("wanmux-bench client", p)
    status, out, err = benchlib.communicate(p, args.time + 90)
    PROCS.forget(p)
    j, status, error = benchlib.bench_report(status, out, err)
    if j is None:
        raise RuntimeError(f"bulk run failed ({status}): {error}")
    return j["bits_per_second"] / 1e9


def one_run(bins: Path, d: Path, args) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    bench = bins / "wanmux-bench"
    bs, target = start_bench_server(bench, d)
    t = common.start_tunnel(PROCS, bins, d / "tunnel", target, links=args.links,
                            transport=args.transport)
    try:
        time.sleep(1)
        up = bulk(bench, t.map_addr, args, reverse=False)
        down = bulk(bench, t.map_addr, args, reverse=True)
        r = {"up": up, "down": down, "client": peak_mib(t.client.pid),
             "server": peak_mib(t.server.pid)}
        common.check_alive(t)
        return r
    finally:
        PROCS.stop(t.client)
        PROCS.stop(t.server)
        PROCS.stop(bs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bins", type=Path, nargs="+",
                    help="directories with wanmux-server, wanmux-client and wanmux-bench "
                         "(default: $CARGO_TARGET_DIR/release)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("-P", "--streams", type=int, default=8)
    ap.add_argument("--time", type=float, default=5, help="seconds each way")
    ap.add_argument("--links", type=int, default=1)
    ap.add_argument("--transport", choices=("tcp", "quic"), default="tcp")
    args = ap.parse_args()
    benchlib.catch_signals()
    args.bins = args.bins or [benchlib.target_dir() / "release"]
    for b in args.bins:
        missing = benchlib.missing_bins(b, ("wanmux-server", "wanmux-client", "wanmux-bench"))
        if missing:
            sys.exit(f"missing {', '.join(map(str, missing))}")
    out = Path(tempfile.mkdtemp(prefix="wanmux-bulk-memory-"))
    runs: dict[Path, list[dict]] = {b: [] for b in args.bins}
    try:
        for i in range(args.rounds):
            order = args.bins if i % 2 == 0 else list(reversed(args.bins))
            for b in order:
                r = one_run(b, out / f"r{i}-{len(runs[b])}-{b.name}", args)
                runs[b].append(r)
                log(f"{b}: up {r['up']:.2f} / down {r['down']:.2f} Gbit/s, peak client "
                    f"{r['client']:.0f} / server {r['server']:.0f} MiB")
    except (KeyboardInterrupt, RuntimeError) as e:
        log(f"stopped: {e}")
        PROCS.stop_all()
        sys.exit(2)
    PROCS.stop_all()
    print(f"\n{args.streams} streams, {args.time:g} s up then down, {args.links} "
          f"{args.transport} link(s); medians of {args.rounds} run(s)\n")
    print("| build | upload / download Gbit/s | peak client / server, MiB |")
    print("|---|---|---|")
    for b, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("up", "down", "client", "server")}
        print(f"| {b} | {med['up']:.2f} / {med['down']:.2f} | {med['client']:.0f} / "
              f"{med['server']:.0f} |")


if __name__ == "__main__":
    main()
