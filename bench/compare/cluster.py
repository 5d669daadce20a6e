#!/usr/bin/env python3
"""Loopback, cluster (issue 20): 1, 3 and 5 wanmux nodes on 127.0.0.1, `stripe` and `pin`.

One wanmux-client lists every node; every node is a `wanmux-server` with `[cluster]` (a peer
listener of its own, every other node as `[[peer]]`) and the same service: one `wanmux-bench
server`. For each layout the script measures the throughput of one connection and of 8
(`wanmux-bench client -P 1|8 --json`, upload) and the CPU seconds per GB of every tunnel process
together (the nodes and the client: utime+stime from /proc/PID/stat before and after each run),
so the relay hop's cost is a number. Direct TCP (no tunnel) is measured alongside.

Runs are interleaved: each repetition starts every layout fresh (in an order rotated each
repetition), runs its tests and stops it. Medians over the repetitions.

Python 3.11 standard library only. See bench/compare/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loopback as lb  # noqa: E402
from loopback import benchlib, fmt, median, proc_cpu_seconds, run_cmd  # noqa: E402

HERE = Path(__file__).resolve().parent
log = benchlib.logger("cluster")
PROCS = lb.PROCS  # loopback's, so its helpers register processes in the same place
LAYOUTS = ["direct", "1", "3-stripe", "3-pin", "5-stripe", "5-pin"]


def layout_label(name: str) -> str:
    if name == "direct":
        return "direct TCP (no tunnel)"
    if name == "1":
        return "wanmux, 1 node (no [cluster])"
    n, spread = name.split("-")
    return f"wanmux, {n} nodes, {spread}"


@dataclass
class Layout:
    name: str
    addr: str
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    status_cmd: list[str] | None = None

    def cpu(self) -> float:
        return sum(proc_cpu_seconds(p.pid) for _, p in self.procs)

    def status(self) -> dict | None:
        if not self.status_cmd:
            return None
        out = benchlib.try_cmd(self.status_cmd)
        try:
            return json.loads(out) if out else None
        except json.JSONDecodeError:
            return None


def free_port_both() -> int:
    """A port free for TCP and UDP on 127.0.0.1 (a node takes QUIC links on its TCP port)."""
    for _ in range(100):
        p = lb.free_tcp_port()
        try:
            import socket
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", p))
            return p
        except OSError:
            continue
    raise RuntimeError("no free port")


def start_layout(name: str, args, bins: Path, bench_addr: str, tmp: Path, keys: list[tuple[str, str]],
                 client_key: tuple[str, str]) -> Layout:
    n = 1 if name == "1" else int(name.split("-")[0])
    spread = "stripe" if n == 1 else name.split("-")[1]
    d = tmp / f"{name}-{time.monotonic_ns()}"
    d.mkdir()
    srv, cli = str(bins / "wanmux-server"), str(bins / "wanmux-client")
    # Every port distinct: the kernel can hand out a port it gave a moment ago, and two
    # listeners on one port fail a node's start.
    taken: set[int] = set()

    def fresh(pick) -> int:
        for _ in range(100):
            p = pick()
            if p not in taken:
                taken.add(p)
                return p
        raise RuntimeError("no free port")

    ports = [fresh(free_port_both) for _ in range(n)]
    peer_ports = [fresh(lb.free_tcp_port) for _ in range(n)]
    map_port = fresh(lb.free_tcp_port)
    limits = f"[limits]\nstream_window = {args.stream_window}\nsession_window = {2 * args.stream_window}\n"
    threads = f"threads = {args.threads}\n" if args.threads else ""
    for k in range(1, n + 1):
        cluster = ""
        if n > 1:
            cluster = f'[cluster]\nlisten = "127.0.0.1:{peer_ports[k - 1]}"\n\n' + "".join(
                f'[[peer]]\nid = {j}\naddr = "127.0.0.1:{peer_ports[j - 1]}"\npublic_key = "{keys[j - 1][1]}"\n\n'
                for j in range(1, n + 1) if j != k)
        (d / f"node{k}.toml").write_text(f"""\
[server]
listen = "127.0.0.1:{ports[k - 1]}"
node_id = {k}
private_key_file = "{keys[k - 1][0]}"
allowed_clients = ["{client_key[1]}"]
quic = true
{threads}
{limits}
{cluster}[[service]]
name = "bench"
target = "{bench_addr}"
""")
    nodes = "".join(f'[[node]]\nid = {k}\naddr = "127.0.0.1:{ports[k - 1]}"\npublic_key = "{keys[k - 1][1]}"\n\n'
                    for k in range(1, n + 1))
    (d / "client.toml").write_text(f"""\
[client]
private_key_file = "{client_key[0]}"
{threads}
[control]
socket = "{d / 'client.sock'}"

[cluster]
owner = "{args.owner}"

{nodes}[links]
count = {args.links}
transport = "{args.transport}"

{limits}
[[map]]
listen = "127.0.0.1:{map_port}"
service = "bench"
spread = "{spread}"
""")
    for exe, cfg in [(srv, f"node{k}.toml") for k in range(1, n + 1)] + [(cli, "client.toml")]:
        r = subprocess.run([exe, "check", "--config", str(d / cfg)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{name}: {cfg} does not check: {r.stdout}{r.stderr}")
    lay = Layout(name, f"127.0.0.1:{map_port}",
                 status_cmd=[cli, "status", "--config", str(d / "client.toml"), "--json"])
    env = benchlib.daemon_env()
    for k in range(1, n + 1):
        log_f = d / f"node{k}.log"
        p = PROCS.start(f"{name} node {k}", [srv, "run", "--config", str(d / f"node{k}.toml")], log_f, env=env)
        lay.procs.append((f"node {k}", p))
        lay.logs.append(log_f)
    for k in range(1, n + 1):
        lb.wait_port(ports[k - 1], lay.procs[k - 1][1], f"{name} node {k}")
    p = PROCS.start(f"{name} client", [cli, "run", "--config", str(d / "client.toml")], d / "client.log", env=env)
    lay.procs.append(("client", p))
    lay.logs.append(d / "client.log")
    lb.wait_port(map_port, p, f"{name} client")
    # Every node's session has its links and (stripe) a sub-link through every other node's.
    want = args.links * (n if spread == "stripe" else 1)

    def ready() -> bool:
        st = lay.status()
        ss = (st or {}).get("sessions", [])
        return len(ss) >= n and all(len(s.get("links", [])) >= want for s in ss)

    benchlib.wait_for(ready, f"{name}: links and sub-links", [q for _, q in lay.procs], timeout=30.0,
                      interval=0.25)
    return lay


@dataclass
class Sample:
    layout: str
    test: str
    rep: int
    ok: bool = False
    error: str = ""
    gbps: float | None = None
    bytes: int | None = None
    cpu_s: float | None = None
    cpu_s_per_gb: float | None = None
    load: float | None = None
    relayed: list | None = None


def run_test(bins: Path, lay: Layout, test: str, rep: int, args) -> Sample:
    s = Sample(lay.name, test, rep, load=os.getloadavg()[0])
    streams = {"p1": 1, "p8": 8}[test]
    cpu0 = lay.cpu() if lay.procs else None
    rel0 = lay.status()
    p = subprocess.Popen([str(bins / "wanmux-bench"), "client", "--connect", lay.addr, "-t", f"{args.time:g}",
                          "-P", str(streams), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    PROCS.track("bench client", p)
    status, out, err = benchlib.communicate(p, args.time + 60)
    PROCS.forget(p)
    j, _, s.error = benchlib.bench_report(status, out, err)
    if j is None:
        return s
    s.ok = True
    s.bytes = j["received_bytes"]
    s.gbps = j["bits_per_second"] / 1e9
    if cpu0 is not None:
        s.cpu_s = lay.cpu() - cpu0
        s.cpu_s_per_gb = s.cpu_s / (s.bytes / 1e9) if s.bytes else None
        rel1 = lay.status()
        if rel0 and rel1:
            before = {r["node"]: r for r in rel0.get("relayed", [])}
            s.relayed = [(r["node"], r["sent_bytes"] - before.get(r["node"], {}).get("sent_bytes", 0))
                         for r in rel1.get("relayed", [])]
    why = benchlib.first_exit(lay.procs)
    if why:
        s.ok, s.error = False, f"tunnel died: {why}"
    return s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-t", "--time", type=float, default=5.0, help="seconds per throughput run (default 5)")
    ap.add_argument("-r", "--reps", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--layouts", default=",".join(LAYOUTS), help=f"subset of {','.join(LAYOUTS)}")
    ap.add_argument("--tests", default="p1,p8", help="subset of p1,p8")
    ap.add_argument("--links", type=int, default=2, help="[links] count per node (default 2)")
    ap.add_argument("--transport", default="quic", choices=["quic", "tcp", "auto"],
                    help="[links] transport (default quic, what the default auto picks)")
    ap.add_argument("--owner", default="least_loaded", choices=["least_loaded", "first", "hash"],
                    help="[cluster] owner (default least_loaded, the product default: one connection "
                         "goes to node 1, 8 spread over the nodes)")
    ap.add_argument("--stream-window", type=int, default=16 << 20)
    ap.add_argument("--threads", type=int, default=None,
                    help="server.threads and client.threads of every daemon (default: unset, the "
                         "daemons' default: one worker per CPU, one on 1-2 CPUs)")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of 2-stream traffic per fresh layout")
    ap.add_argument("--bin-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args()
    layouts = [x for x in args.layouts.split(",") if x]
    tests = [x for x in args.tests.split(",") if x]
    if [x for x in layouts if x not in LAYOUTS] or [x for x in tests if x not in ("p1", "p8")]:
        ap.error("unknown layout or test")
    bins = args.bin_dir or benchlib.target_dir() / "release"
    missing = benchlib.missing_bins(bins, ("wanmux-server", "wanmux-client", "wanmux-bench"))
    if missing:
        log(f"missing {', '.join(map(str, missing))}: cargo build --release -p wanmux-server "
            "-p wanmux-client -p wanmux-bench")
        return 2
    benchlib.catch_signals()
    started = dt.datetime.now(dt.timezone.utc)
    command = " ".join(shlex.quote(a) for a in ["bench/compare/cluster.py", *sys.argv[1:]])
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="wanmux-cluster-"))
    samples: list[Sample] = []
    try:
        srv, cli = str(bins / "wanmux-server"), str(bins / "wanmux-client")
        keys = []
        for k in range(1, 6):
            path = tmp / f"node{k}.key"
            keys.append((str(path), benchlib.public_key(run_cmd([srv, "keygen", "--out", str(path)]))))
        cpath = tmp / "client.key"
        client_key = (str(cpath), benchlib.public_key(run_cmd([cli, "keygen", "--out", str(cpath)])))
        bench_port = lb.free_tcp_port()
        bs = PROCS.start("bench server", [str(bins / "wanmux-bench"), "server", "--listen",
                                           f"127.0.0.1:{bench_port}"], tmp / "bench-server.log")
        lb.wait_port(bench_port, bs, "bench server")
        bench_addr = f"127.0.0.1:{bench_port}"
        for rep in range(args.reps):
            order = layouts[rep % len(layouts):] + layouts[:rep % len(layouts)]
            for name in order:
                lay = None
                try:
                    lay = (Layout("direct", bench_addr) if name == "direct"
                           else start_layout(name, args, bins, bench_addr, tmp, keys, client_key))
                    if args.warmup > 0:
                        benchlib.try_cmd([str(bins / "wanmux-bench"), "client", "--connect", lay.addr,
                                          "-t", f"{args.warmup:g}", "-P", "2"])
                    for test in tests:
                        s = run_test(bins, lay, test, rep, args)
                        samples.append(s)
                        log(f"rep {rep + 1} {layout_label(name)} {test}: " + (
                            f"{s.gbps:.2f} Gbit/s, {fmt(s.cpu_s_per_gb, '.2f')} CPU s/GB, load {s.load:.2f}"
                            + (f", relayed MiB per node {[(n_, round(b / 2**20)) for n_, b in s.relayed]}"
                               if s.relayed else "") if s.ok else f"FAILED: {s.error}"))
                except RuntimeError as e:
                    samples.append(Sample(name, "setup", rep, error=str(e)))
                    log(f"rep {rep + 1} {layout_label(name)}: FAILED: {e}")
                finally:
                    if lay is not None:
                        for _, p in reversed(lay.procs):
                            PROCS.stop(p)
                        for lf in lay.logs:
                            w = benchlib.log_warnings(lf, ("WARN", "ERROR", "panicked"), 200)
                            if w:
                                log(f"{name}: {w}")
    except KeyboardInterrupt:
        log("interrupted; reporting what was measured")
    finally:
        PROCS.stop_all()
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    load_end = os.getloadavg()

    def med(name, test, key):
        return median([getattr(s, key) for s in samples if s.layout == name and s.test == test and s.ok
                       and getattr(s, key) is not None])

    lines = ["## Loopback: one client, 1 / 3 / 5 nodes (issue 20)", "",
             f"Command: `{command}`", "",
             f"Date: {started:%Y-%m-%d %H:%M} UTC. {len(os.sched_getaffinity(0))} CPUs, load average "
             f"{load_start[0]:.2f} at start, {load_end[0]:.2f} at end (a shared machine). "
             f"{benchlib.wanmux_version(bins) or 'wanmux ?'}, git {benchlib.git_head() or '?'} "
             f"(binaries from {bins}).",
             f"Settings: {args.time:g} s per run, {args.reps} repetition(s), interleaved; `[links] count = "
             f"{args.links}` per node, `transport = \"{args.transport}\"`, `[cluster] owner = "
             f"\"{args.owner}\"`, stream window {args.stream_window} B; upload through the map.", "",
             "| layout | 1 conn Gbit/s (runs) | 8 conns Gbit/s (runs) | CPU s/GB all tunnel processes, "
             "1 / 8 conns | load avg at the runs |", "|---|---|---|---|---|"]
    for name in layouts:
        cells = []
        for test in ("p1", "p8"):
            runs = [s for s in samples if s.layout == name and s.test == test]
            ok = [s for s in runs if s.ok]
            if not runs:
                cells.append("not run")
            elif not ok:
                cells.append(f"FAILED ({runs[0].error[:80]})")
            else:
                cells.append(f"**{median([s.gbps for s in ok]):.2f}** ({', '.join(f'{s.gbps:.2f}' for s in ok)})"
                             + (f", {len(runs) - len(ok)} failed" if len(ok) < len(runs) else ""))
        cpu = "-" if name == "direct" else f"{fmt(med(name, 'p1', 'cpu_s_per_gb'), '.2f')} / " \
                                           f"{fmt(med(name, 'p8', 'cpu_s_per_gb'), '.2f')}"
        loads = [s.load for s in samples if s.layout == name and s.load is not None]
        lines.append(f"| {layout_label(name)} | {cells[0]} | {cells[1]} | {cpu} "
                     f"| {min(loads, default=0):.2f}-{max(loads, default=0):.2f} |")
    fails = [s for s in samples if not s.ok]
    if fails:
        lines += ["", "Failures:"] + [f"- rep {s.rep + 1} {layout_label(s.layout)} {s.test}: {s.error}"
                                      for s in fails]
    text = "\n".join(lines) + "\n"
    print(text)
    out = args.out or HERE / "out" / f"cluster-{started:%Y%m%dT%H%M%SZ}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "started": started.isoformat(),
                                                    "samples": [s.__dict__ for s in samples]}, indent=1))
    log(f"wrote {out}")
    if any(s.error.startswith("output says verified") or "verif" in s.error for s in fails):
        return benchlib.EXIT_VERIFY
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
