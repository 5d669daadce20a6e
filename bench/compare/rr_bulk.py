#!/usr/bin/env python3
"""Round trips beside a bulk transfer through one wanmux tunnel on 127.0.0.1, and directly.

What a game's packets meet in the tunnel while a download shares it, apart from any WAN path:
one tunnel (one node, TCP or QUIC links) maps two services, a `wanmux-bench server` and an
`iperf3` server. For each upload rate (`iperf3 -b RATE`, 0 = as fast as it goes, `idle` = no
upload) an `iperf3` upload runs through the tunnel and, 2 s into it, `wanmux-bench rr` makes
64-byte round trips through the same tunnel; then the same directly, against the two servers.
Prints a markdown table of the round trips' p50 / p99 / p99.9 and the upload's rate.

    bench/compare/rr_bulk.py --bin-dir DIR                   # 4 TCP links, rates idle,1G,3G,0
    bench/compare/rr_bulk.py --bin-dir DIR --lanes 2 --reps 2

On a 2-CPU machine the unlimited upload takes every cycle of both CPUs (the daemons, iperf3 at
both ends and the round-trip tool share them): its row says what CPU saturation costs, not what
a WAN path would. Needs `iperf3` (Debian's iperf3, installed with apt-get unless --no-install).
Python 3.11 standard library only. See bench/compare/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchlib  # noqa: E402
import loopback  # noqa: E402
from benchlib import fmt  # noqa: E402

HERE = Path(__file__).resolve().parent
log = benchlib.logger("rr_bulk")
PROCS = loopback.PROCS


def measure(bench: Path, rr_addr: str, iperf_addr: str, rate: str, secs: float,
            count: int) -> dict[str, float]:
    """An upload at `rate` to `iperf_addr` (none if "idle") and, 2 s into it, `count` round
    trips to `rr_addr`: their percentiles (us) and the upload's rate (Gbit/s)."""
    up = None
    if rate != "idle":
        host, port = iperf_addr.rsplit(":", 1)
        argv = ["iperf3", "-c", host, "-p", port, "-t", str(secs), "-b", rate, "--json"]
        up = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        PROCS.track("iperf3 client", up)
        time.sleep(2)
    rr = subprocess.run([str(bench), "rr", "--connect", rr_addr, "-n", str(count), "--json"],
                        capture_output=True, text=True, timeout=600)
    if rr.returncode != 0:
        raise RuntimeError(f"wanmux-bench rr to {rr_addr}: {rr.stderr.strip()}")
    r = json.loads(rr.stdout)
    out = {"p50": r["p50_us"], "p99": r["p99_us"], "p999": r["p999_us"], "gbps": 0.0}
    if up is not None:
        stdout, _ = up.communicate(timeout=secs + 60)
        PROCS.forget(up)
        if up.returncode != 0:
            raise RuntimeError(f"iperf3 to {iperf_addr} failed: {stdout[-500:]}")
        out["gbps"] = json.loads(stdout)["end"]["sum_sent"]["bits_per_second"] / 1e9
        if r["seconds"] + 2 > secs:
            log(f"the round trips outlasted the upload ({r['seconds']:.1f} s): raise -t")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="Round trips beside a bulk upload, through one "
                                             "wanmux tunnel and directly.")
    ap.add_argument("--rates", default="idle,1G,3G,0",
                    help="upload rates, iperf3 -b syntax; 0 = unlimited, idle = no upload "
                         "(default idle,1G,3G,0)")
    ap.add_argument("-r", "--reps", type=int, default=1, help="repetitions (default 1)")
    ap.add_argument("-n", "--count", type=int, default=10000,
                    help="round trips per run (default 10000)")
    ap.add_argument("-t", "--time", type=float, default=20,
                    help="upload seconds, at least 2 more than the round trips take (default 20)")
    ap.add_argument("--links", type=int, default=4, help="links (default 4)")
    ap.add_argument("--transport", choices=["tcp", "quic"], default="tcp",
                    help="link transport (default tcp)")
    ap.add_argument("--lanes", type=int, default=0, help="links.lanes (default 0)")
    ap.add_argument("--threads", type=int, default=None,
                    help="server.threads and client.threads (default: unset)")
    ap.add_argument("--bin-dir", type=Path, default=None,
                    help="directory with wanmux-server, wanmux-client and wanmux-bench "
                         "(default: $CARGO_TARGET_DIR/release, else <repo>/target/release)")
    ap.add_argument("--no-install", action="store_true", help="never run apt-get")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown report (default bench/compare/out/rr_bulk-<UTC time>.md)")
    args = ap.parse_args()
    rates = [x.strip() for x in args.rates.split(",") if x.strip()]
    if args.reps < 1 or args.count < 1 or not rates:
        ap.error("bad --reps, --count or --rates")
    command = " ".join(shlex.quote(a) for a in sys.argv)
    bins = args.bin_dir or benchlib.target_dir() / "release"
    for b in benchlib.missing_bins(bins, ("wanmux-server", "wanmux-client", "wanmux-bench")):
        log(f"{b} missing: cargo build --release -p wanmux-server -p wanmux-client "
            f"-p wanmux-bench, or --bin-dir")
        return 2
    why = benchlib.ensure_installed(["iperf3"], ["iperf3"], args.no_install, log)
    if why:
        log(f"cannot run: {why}")
        return 2
    benchlib.catch_signals()
    bench = bins / "wanmux-bench"
    started = dt.datetime.now(dt.timezone.utc)
    tmp = Path(tempfile.mkdtemp(prefix="wanmux-rr-bulk-"))
    # {(path, rate): [measure()]}
    samples: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        _, bench_addr = loopback.start_bench_server(bench, tmp)
        iperf_port = loopback.free_tcp_port()
        iperf = PROCS.start("iperf3 server", ["iperf3", "-s", "-B", "127.0.0.1", "-p",
                                              str(iperf_port)], tmp / "iperf3.log")
        loopback.wait_port(iperf_port, iperf, "iperf3 server")
        iperf_addr = f"127.0.0.1:{iperf_port}"
        tunnel = loopback.start_wanmux("tunnel", args.links, bins, bench_addr, tmp, args.threads,
                                       transport=args.transport, lanes=args.lanes,
                                       services={"iperf": iperf_addr})
        paths = {"tunnel": (tunnel.addr, tunnel.maps["iperf"]),
                 "direct": (bench_addr, iperf_addr)}
        for rep in range(args.reps):
            for rate in rates:
                for path, (rr_addr, up_addr) in paths.items():
                    m = measure(bench, rr_addr, up_addr, rate, args.time, args.count)
                    samples.setdefault((path, rate), []).append(m)
                    log(f"rep {rep + 1} {rate:>5} {path:<6} p50 {m['p50']:.1f} p99 "
                        f"{m['p99']:.1f} p99.9 {m['p999']:.1f} us, upload {m['gbps']:.2f} Gbit/s")
    finally:
        PROCS.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    def cell(path: str, rate: str) -> str:
        ms = samples.get((path, rate), [])
        if not ms:
            return "-"
        med = {k: statistics.median(m[k] for m in ms) for k in ms[0]}
        up = "" if rate == "idle" else f"; {fmt(med['gbps'], '.2f')} Gbit/s"
        return f"{med['p50']:.1f} / {med['p99']:.1f} / {med['p999']:.1f}{up}"

    lines = ["| upload beside the round trips | through the tunnel: rr p50 / p99 / p99.9 us; "
             "upload | directly |", "|---|---|---|"]
    for rate in rates:
        label = {"idle": "none", "0": "unlimited (`-b 0`)"}.get(rate, f"`-b {rate}`")
        lines.append(f"| {label} | {cell('tunnel', rate)} | {cell('direct', rate)} |")
    finished = dt.datetime.now(dt.timezone.utc)
    info = loopback.machine_info()
    lanes = f", `lanes = {args.lanes}`" if args.lanes else ""
    report = "\n".join([
        f"Command: `{command}`",
        "",
        f"Date: {started:%Y-%m-%d %H:%M} to {finished:%H:%M} UTC. Machine: {info['nproc']} CPUs, "
        f"{info['cpu']}, Linux {info['kernel']}. Git: {benchlib.git_head() or 'unknown'}; "
        f"binaries from {bins}. One node, {args.links} {args.transport.upper()} links{lanes}; "
        f"{args.count} round trips of 64 bytes per run, uploads of {args.time:g} s; "
        f"{args.reps} repetition(s), medians.",
        "",
        *lines,
        "",
    ])
    benchlib.save_report(report, args.out or HERE / "out" / f"rr_bulk-{started:%Y%m%dT%H%M%SZ}.md",
                         log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
