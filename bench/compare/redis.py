#!/usr/bin/env python3
"""redis GET through wanmux (1 and 4 TCP links) beside direct TCP, in one run.

Issue 24's application figures, measured with clients no one here wrote: `redis-benchmark -t get`
against one `redis-server` on 127.0.0.1, with 1 client (latency: p50 and p99, target p99 at most
2 x direct) and with 50 clients (requests/s, target at least 45,000). Runs are interleaved (the
contenders' order rotates every repetition); the table reports medians, ratios to direct, and
the CPU both tunnel daemons spent per request.

    bench/compare/redis.py --bin-dir DIR            # 3 repetitions, 1 and 50 clients

Needs `redis-server` and `redis-benchmark` (Debian's redis-server and redis-tools, installed
with apt-get unless --no-install). Python 3.11 standard library only. See bench/compare/README.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchlib  # noqa: E402
import loopback  # noqa: E402
from benchlib import fmt  # noqa: E402

HERE = Path(__file__).resolve().parent
CONTENDERS = ["direct", "wanmux-1", "wanmux-4"]
log = benchlib.logger("redis")


def run_get(addr: str, clients: int, requests: int) -> dict[str, float]:
    """One redis-benchmark GET run; its CSV line as numbers (rps, p50_latency_ms, ...)."""
    host, port = addr.rsplit(":", 1)
    argv = ["redis-benchmark", "-h", host, "-p", port, "-c", str(clients), "-n", str(requests),
            "-t", "get", "--csv"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    if r.returncode != 0 or not rows:
        raise RuntimeError(f"redis-benchmark failed ({r.returncode}): {r.stderr.strip()[-300:]}")
    return {k: float(v) for k, v in rows[-1].items() if k != "test"}


def main() -> int:
    ap = argparse.ArgumentParser(description="redis GET through wanmux beside direct TCP.")
    ap.add_argument("-r", "--reps", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--clients", default="1,50", help="client counts (default 1,50)")
    ap.add_argument("-n", "--requests", type=int, default=50000,
                    help="requests per run with 1 client; 4x that with more (default 50000)")
    ap.add_argument("-c", "--contenders", default=",".join(CONTENDERS),
                    help=f"subset of {','.join(CONTENDERS)}; direct is always measured")
    ap.add_argument("--bin-dir", type=Path, default=None,
                    help="directory with wanmux-server and wanmux-client "
                         "(default: $CARGO_TARGET_DIR/release, else <repo>/target/release)")
    ap.add_argument("--no-install", action="store_true", help="never run apt-get")
    ap.add_argument("--threads", type=int, default=None,
                    help="server.threads and client.threads of the wanmux daemons (default: unset)")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown report (default bench/compare/out/redis-<UTC time>.md)")
    args = ap.parse_args()
    want = ["direct"] + [c for c in CONTENDERS[1:] if c in args.contenders.split(",")]
    counts = [int(c) for c in args.clients.split(",") if c.strip()]
    if args.reps < 1 or not counts or min(counts) < 1:
        ap.error("bad --reps or --clients")
    command = " ".join(shlex.quote(a) for a in sys.argv)
    bins = args.bin_dir or benchlib.target_dir() / "release"
    for b in benchlib.missing_bins(bins, ("wanmux-server", "wanmux-client")):
        log(f"{b} missing: cargo build --release -p wanmux-server -p wanmux-client, or --bin-dir")
        return 2
    why = benchlib.ensure_installed(["redis-server", "redis-benchmark"],
                                    ["redis-server", "redis-tools"], args.no_install, log)
    if why:
        log(f"cannot run: {why}")
        return 2
    benchlib.catch_signals()
    started = dt.datetime.now(dt.timezone.utc)
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="wanmux-redis-"))
    # {(contender, clients): [(sample, tunnel CPU s)]}
    samples: dict[tuple[str, int], list[tuple[dict[str, float], float]]] = {}
    try:
        port = loopback.free_tcp_port()
        redis = loopback.PROCS.start(
            "redis-server", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"], tmp / "redis.log")
        loopback.wait_port(port, redis, "redis-server")
        target = f"127.0.0.1:{port}"
        subprocess.run(["redis-cli", "-p", str(port), "set", "key:__rand_int__", "x" * 3],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        contenders = {"direct": loopback.Contender("direct", addr=target)}
        for name in want[1:]:
            contenders[name] = loopback.start_wanmux(name, int(name.split("-")[1]), bins, target, tmp,
                                                         args.threads)
        for c in contenders.values():  # warm-up: first connections, buffers, page faults
            run_get(c.addr, 50, 20000)
        for rep in range(args.reps):
            rot = want[rep % len(want):] + want[:rep % len(want)]
            for clients in counts:
                n = args.requests if clients == 1 else 4 * args.requests
                for name in rot:
                    c = contenders[name]
                    dead = c.check_alive()
                    if dead:
                        raise RuntimeError(f"{name}: {dead}")
                    cpu0 = sum(c.cpu_seconds().values())
                    s = run_get(c.addr, clients, n)
                    cpu = sum(c.cpu_seconds().values()) - cpu0
                    s["cpu_us_per_req"] = cpu / n * 1e6
                    samples.setdefault((name, clients), []).append((s, cpu))
                    log(f"rep {rep + 1} {clients:>3} clients {name:<9} {s['rps']:,.0f} req/s, "
                        f"p50 {s['p50_latency_ms']:.3f} ms, p99 {s['p99_latency_ms']:.3f} ms")
    finally:
        loopback.PROCS.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    def med(name: str, clients: int, key: str) -> float | None:
        xs = [s[key] for s, _ in samples.get((name, clients), [])]
        return statistics.median(xs) if xs else None

    head = ["contender"]
    for k in counts:
        head += [f"{k} client{'s' if k > 1 else ''}: req/s (x direct)",
                 f"{k}: p50 / p99 ms (p99 x direct)", f"{k}: tunnel CPU us per request"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in want:
        row = [loopback.LABELS[name]]
        for k in counts:
            rps, d_rps = med(name, k, "rps"), med("direct", k, "rps")
            p50, p99, d99 = (med(name, k, "p50_latency_ms"), med(name, k, "p99_latency_ms"),
                             med("direct", k, "p99_latency_ms"))
            ratio = lambda a, b: f" ({a / b:.2f}x)" if name != "direct" and a and b else ""  # noqa: E731
            row += [f"{fmt(rps, ',.0f')}{ratio(rps, d_rps)}",
                    f"{fmt(p50, '.3f')} / {fmt(p99, '.3f')}{ratio(p99, d99)}",
                    "-" if name == "direct" else fmt(med(name, k, "cpu_us_per_req"), ".1f")]
        lines.append("| " + " | ".join(row) + " |")
    finished = dt.datetime.now(dt.timezone.utc)
    load_end = os.getloadavg()
    info = loopback.machine_info()
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    report = "\n".join([
        f"Command: `{command}`",
        "",
        f"Date: {started:%Y-%m-%d %H:%M} to {finished:%H:%M} UTC. Machine: {info['nproc']} CPUs, "
        f"{info['cpu']}, Linux {info['kernel']}. Git: {benchlib.git_head() or 'unknown'}; "
        f"binaries from {bins}. {version.strip()}.",
        f"Load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f}. "
        f"{args.reps} repetitions, medians; GET of one key, "
        f"{args.requests} requests per run with 1 client, {4 * args.requests} with more.",
        "",
        *lines,
        "",
    ])
    benchlib.save_report(report, args.out or HERE / "out" / f"redis-{started:%Y%m%dT%H%M%SZ}.md",
                         log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
