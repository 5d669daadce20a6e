#!/usr/bin/env python3
"""WAN lab scenario runner: direct TCP, kcptun and wanmux side by side across emulated paths.

`run SCENARIO` brings the lab up with the scenario's path(s) (`lab.sh paths SCENARIO`), starts a
wanmux-bench server in every server namespace, and measures one application connection's goodput
(`wanmux-bench client -P 1 --json`, client -> server) through each contender, interleaved, with
`--repeat` repetitions and medians. Each run also reads the emulator's byte counters before and
after (SIGUSR1), so the table shows how many bytes crossed the WAN per application byte delivered.
In scenario B it also measures rr latency (`wanmux-bench rr`) beside a bulk transfer on the same
tunnel. `sweep` does the same over a range of loss rates on one path and writes the JSON that
plot.py draws.

Every tunnel is started fresh for each run (cold, like the direct TCP connection) and stopped
after it, so no run inherits another's links, windows or elastic pool.

Python 3.11 standard library only. Run as root (network namespaces). See README.md beside this
file. Only addresses inside the lab's own namespaces (10.77.0.0/16 and loopback) are used.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchlib  # noqa: E402
from benchlib import EXIT_VERIFY, fmt, median, run_cmd, try_cmd, wait_for  # noqa: E402

HERE = Path(__file__).resolve().parent
LAB = HERE / "lab.sh"
PREFIX = os.environ.get("WANLAB_PREFIX", "wl")
RUN_DIR = Path(os.environ.get("WANLAB_RUN_DIR", f"/tmp/wanlab-{PREFIX}"))
NS_C = f"{PREFIX}-c"

BENCH_PORT = 5201  # wanmux-bench server in every server namespace
IPERF_PORT = 5202  # iperf3 server in every server namespace (the direct TCP rows)
WANMUX_PORT = 4480  # wanmux-server link listener
KCP_PORT = 29900  # kcptun-server UDP
MAP_PORT = 7000  # wanmux-client map in the client namespace (loopback)
KCP_LOCAL_PORT = 12948  # kcptun-client listener in the client namespace (loopback)

ALL_CONTENDERS = ["direct-cubic", "direct-bbr", "kcptun", "kcptun-2048",
                  "wanmux-1", "wanmux-8", "wanmux-32", "wanmux-elastic",
                  "wanmux-quic-1", "wanmux-quic-2", "wanmux-quic-4", "wanmux-quic-4l",
                  "wanmux-8l"]
SWEEP_CONTENDERS = ["direct-cubic", "direct-bbr", "kcptun", "kcptun-2048", "wanmux-quic-1",
                    "wanmux-32", "wanmux-elastic"]
LABELS = {
    "direct-cubic": "direct TCP, cubic",
    "direct-bbr": "direct TCP, bbr",
    "kcptun": "kcptun fast3",
    "kcptun-2048": "kcptun fast3, wnd 2048",
    "wanmux-1": "wanmux, 1 link",
    "wanmux-8": "wanmux, 8 links",
    "wanmux-32": "wanmux, 32 links",
    "wanmux-elastic": "wanmux, elastic 1-32",
    "wanmux-quic-1": "wanmux QUIC, 1 link",
    "wanmux-quic-2": "wanmux QUIC, 2 links",
    "wanmux-quic-4": "wanmux QUIC, 4 links",
    "wanmux-quic-4l": "wanmux QUIC, 4 links with 2 lanes (lane streams beside 2 of them)",
    "wanmux-8l": "wanmux, 8 links, 2 of them lanes",
}
ARGS_TIME = [20.0]  # --time, for count_stalls

log = benchlib.logger("wanlab")
PROCS = benchlib.Procs(log)


def netns(ns: str, argv: list[str]) -> list[str]:
    # `ip netns exec` execs the program, so the Popen pid is the program's own pid.
    return ["ip", "netns", "exec", ns, *argv]


# Path 0 stands for "every path at once" (multi-path scenarios): the tunnel's node runs on server 1
# and is also reached through the other servers' addresses (`lab.sh front`), one node with one
# address per path, as a multihomed host would be.
ALL_PATHS = 0


def server_ns(k: int) -> str:
    return f"{PREFIX}-s{max(k, 1)}"


def server_ip(k: int) -> str:
    return f"10.77.{1 + max(k, 1)}.2"


def path_label(k: int, n: int) -> str:
    return "+".join(map(str, range(1, n + 1))) if k == ALL_PATHS else str(k)


def sockets(ns: str, args: str) -> list[str]:
    out = try_cmd(netns(ns, ["ss", "-Hn", *args.split()]))
    return [l for l in (out or "").splitlines() if l.strip()]


def listening(ns: str, port: int, udp: bool = False) -> bool:
    return any(f":{port} " in l + " " for l in sockets(ns, "-uln" if udp else "-tln"))


def links_established(port: int = WANMUX_PORT) -> int:
    """wanmux links open from the client namespace (established TCP to the link port)."""
    return len(sockets(NS_C, f"-t state established ( dport = :{port} )"))


def tunnel_links(t: "Tunnel") -> int:
    """wanmux links up now: established TCP links, or for QUIC links (UDP, no socket state to
    count) the client's "link up" log lines less its "link ended" lines."""
    if not t.name.startswith("wanmux-quic"):
        return links_established()
    try:
        text = t.logs[1].read_text(errors="replace")
    except OSError:
        return 0
    return text.count("link up") - text.count("link ended")


# ---------------------------------------------------------------------------------------------
# Link specs and the emulator's counters

def spec_value(spec: str, key: str) -> str | None:
    """Value of KEY in a link spec (either direction's, or the plain key); in the specs of several
    paths joined by " | " (path 0), the first path's."""
    for part in re.split(r"[,|]", spec):
        k, _, v = part.partition("=")
        if k.strip() in (key, f"up.{key}"):
            return v.strip()
    return None


def rate_mbit(spec: str) -> float | None:
    """The rate cap of a path; for several paths joined by " | ", the sum (None if one has none)."""
    if "|" in spec:
        rates = [rate_mbit(p) for p in spec.split("|")]
        return None if None in rates else sum(rates)
    v = spec_value(spec, "rate")
    if not v:
        return None
    m = re.fullmatch(r"([0-9.]+)\s*([kmg]?)(bit)?", v.lower())
    if not m:
        return None
    return float(m.group(1)) * {"k": 1e-3, "m": 1.0, "g": 1e3, "": 1e-6}[m.group(2)]


def rtt_s(spec: str) -> float:
    v = spec_value(spec, "delay") or "0"
    m = re.fullmatch(r"([0-9.]+)\s*(ms|us|s)?", v)
    if not m:
        return 0.0
    one_way = float(m.group(1)) * {"ms": 1e-3, "us": 1e-6, "s": 1.0, None: 1e-3}[m.group(2)]
    return 2 * one_way


COUNTER_RE = re.compile(
    r"^(up|down): rx (\d+) pkts (\d+) bytes, tx (\d+) pkts (\d+) bytes, drop loss (\d+) queue (\d+) "
    r"flow (\d+) overflow (\d+)")
COUNTER_KEYS = ["rx_pkts", "rx_bytes", "tx_pkts", "tx_bytes", "drop_loss", "drop_queue",
                "drop_flow", "drop_overflow"]


def read_counters(k: int) -> dict[str, dict[str, int]]:
    """Path K's emulator counters now: {"up": {...}, "down": {...}}, cumulative since it started.

    SIGUSR1 makes the emulator print one `up:` and one `down:` line to its log; we wait for them."""
    logf = RUN_DIR / f"link{k}.log"
    pid = int((RUN_DIR / f"link{k}.pid").read_text())
    before = logf.read_text(errors="replace").count("\ndown: rx ")
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = logf.read_text(errors="replace")
        if text.count("\ndown: rx ") > before:
            got: dict[str, dict[str, int]] = {}
            for line in reversed(text.splitlines()):
                m = COUNTER_RE.match(line)
                if m and m.group(1) not in got:
                    got[m.group(1)] = dict(zip(COUNTER_KEYS, map(int, m.groups()[1:])))
                if len(got) == 2:
                    return got
        time.sleep(0.02)
    raise RuntimeError(f"emulator {k} did not print its counters")


def counters_all(paths: list[int]) -> dict[int, dict[str, dict[str, int]]]:
    return {k: read_counters(k) for k in paths}


def counters_delta(a, b) -> dict[str, dict[str, int]]:
    """Sum over paths of b - a, per direction."""
    out = {d: dict.fromkeys(COUNTER_KEYS, 0) for d in ("up", "down")}
    for k in b:
        for d in ("up", "down"):
            for key in COUNTER_KEYS:
                out[d][key] += b[k][d][key] - a[k][d][key]
    return out


def quiesce(paths: list[int], quiet_bytes: int = 32_768, period: float = 0.5,
            timeout: float = 20.0) -> tuple[dict, bool]:
    """Waits until the paths carry less than quiet_bytes per period (both directions), so that
    one run's tail (retransmits, a tunnel flushing its buffers) is counted with that run and not
    the next. Returns the counters then and whether it got quiet."""
    deadline = time.monotonic() + timeout
    prev = counters_all(paths)
    while True:
        time.sleep(period)
        cur = counters_all(paths)
        d = counters_delta(prev, cur)
        if d["up"]["rx_bytes"] + d["down"]["rx_bytes"] < quiet_bytes:
            return cur, True
        if time.monotonic() > deadline:
            return cur, False
        prev = cur


# ---------------------------------------------------------------------------------------------
# Contenders: each gives the address the bench client connects to from the client namespace and
# starts/stops its tunnel processes around each run.

@dataclass
class Tunnel:
    name: str
    addr: str
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def check_alive(self) -> str | None:
        return benchlib.first_exit(self.procs)

    def stop(self) -> None:
        # The client end first, so the server does not log a vanished peer as trouble.
        for _, p in reversed(self.procs):
            PROCS.stop(p)


class Keys:
    """Static keys (Noise IK) for wanmux, made once per invocation with `wanmux-server keygen`."""

    def __init__(self, bins: Path, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        srv, cli = str(bins / "wanmux-server"), str(bins / "wanmux-client")
        self.server_key, self.client_key = d / "server.key", d / "client.key"
        self.server_pub = benchlib.public_key(run_cmd([srv, "keygen", "--out", str(self.server_key)]))
        self.client_pub = benchlib.public_key(run_cmd([cli, "keygen", "--out", str(self.client_key)]))
        self.kcptun = os.urandom(16).hex()


def start_wanmux(name: str, k: int, args, bins: Path, keys: Keys, d: Path, n_paths: int = 1) -> Tunnel:
    """wanmux's server on server K and its client; for path 0 the node has one address per path
    (the servers other than the first forward to it, see `lab.sh front`)."""
    links = name.split("-", 1)[1]
    quic = links.startswith("quic-")
    if quic:
        links = links.removeprefix("quic-")
    # A trailing "l": two of the links are dedicated interactive lanes (links.lanes = 2).
    lanes = 2 if links.endswith("l") else 0
    links = links.removesuffix("l")
    links_conf = "min = 1\nmax = 32" if links == "elastic" else f"count = {int(links)}"
    cc = "" if args.wanmux_cc == "default" else f'congestion = "{args.wanmux_cc}"\n'
    limits = (f"[limits]\nstream_window = {args.stream_window}\n"
              f"session_window = {max(args.session_window, args.stream_window)}\n")
    if k == ALL_PATHS:
        node_addr = "[" + ", ".join(f'"{server_ip(j)}:{WANMUX_PORT}"' for j in range(1, n_paths + 1)) + "]"
    else:
        node_addr = f'"{server_ip(k)}:{WANMUX_PORT}"'
    benchlib.write_configs(
        d, listen=f"{server_ip(k)}:{WANMUX_PORT}", node_addr=node_addr,
        target=f"127.0.0.1:{BENCH_PORT}", map_listen=f"127.0.0.1:{MAP_PORT}",
        server_key=str(keys.server_key), client_key=str(keys.client_key),
        server_pub=keys.server_pub, client_pub=keys.client_pub,
        # The transport is always named: the client's default ("auto") would run the TCP rows
        # over QUIC.
        links="\n".join([links_conf, f"lanes = {lanes}" if lanes else "", cc,
                          'transport = "quic"' if quic else 'transport = "tcp"']),
        server_extra="\n".join([cc, "quic = true" if quic else ""]), limits=limits)
    srv, cli = str(bins / "wanmux-server"), str(bins / "wanmux-client")
    benchlib.check_configs(name, bins, d)
    t = Tunnel(name, f"127.0.0.1:{MAP_PORT}", logs=[d / "server.log", d / "client.log"])
    env = benchlib.daemon_env()
    ps = PROCS.start(f"{name} server", netns(server_ns(k), [srv, "run", "--config", str(d / "server.toml")]),
                     t.logs[0], env=env)
    t.procs.append(("wanmux-server", ps))
    wait_for(lambda: listening(server_ns(k), WANMUX_PORT), f"{name} server", [ps])
    pc = PROCS.start(f"{name} client", netns(NS_C, [cli, "run", "--config", str(d / "client.toml")]),
                     t.logs[1], env=env)
    t.procs.append(("wanmux-client", pc))
    want = 1 if links == "elastic" else int(links)
    wait_for(lambda: listening(NS_C, MAP_PORT) and tunnel_links(t) >= want,
             f"{name} client ({want} links)", [ps, pc])
    return t


def start_kcptun(name: str, k: int, keys: Keys, d: Path) -> Tunnel:
    flags = list(benchlib.KCPTUN_FLAGS)
    if name == "kcptun-2048":
        flags += ["--sndwnd", "2048", "--rcvwnd", "2048"]
    env = dict(os.environ, KCPTUN_KEY=keys.kcptun)  # not on the command line, where ps shows it
    t = Tunnel(name, f"127.0.0.1:{KCP_LOCAL_PORT}", logs=[d / "server.log", d / "client.log"])
    ps = PROCS.start(f"{name} server", netns(server_ns(k), [
        "kcptun-server", "-l", f"{server_ip(k)}:{KCP_PORT}", "-t", f"127.0.0.1:{BENCH_PORT}", *flags]),
        t.logs[0], env=env)
    t.procs.append(("kcptun-server", ps))
    wait_for(lambda: listening(server_ns(k), KCP_PORT, udp=True), f"{name} server", [ps])
    pc = PROCS.start(f"{name} client", netns(NS_C, [
        "kcptun-client", "-l", f"127.0.0.1:{KCP_LOCAL_PORT}", "-r", f"{server_ip(k)}:{KCP_PORT}", *flags]),
        t.logs[1], env=env)
    t.procs.append(("kcptun-client", pc))
    wait_for(lambda: listening(NS_C, KCP_LOCAL_PORT), f"{name} client", [ps, pc])
    return t


# ---------------------------------------------------------------------------------------------
# One run

@dataclass
class Run:
    scenario: str
    contender: str
    path: int
    rep: int
    test: str  # "bulk" or "rr"
    spec: str
    loss: float | None = None  # sweep only: the path's loss, percent
    reverse: bool = False  # server -> client: the data direction is "down"
    ok: bool = False
    status: int = 0
    error: str = ""
    mbit: float | None = None  # goodput of the bulk connection, receiver's clock
    bytes: int | None = None  # application bytes delivered (verified)
    seconds: float | None = None
    zero_intervals: int | None = None  # 1 s intervals in which the bulk connection moved nothing
    min_interval_mbit: float | None = None
    intervals_mbit: list[float] = field(default_factory=list)  # the sender's, every 1 s
    retransmits: int | None = None  # direct TCP (iperf3) only
    wire: dict | None = None  # emulator counter deltas over the run, per direction
    wire_data_ratio: float | None = None  # bytes offered to the path, data direction / app bytes
    wire_total_ratio: float | None = None  # both directions / app bytes
    quiet: bool | None = None  # the path went quiet after the run (else its tail may be missed)
    links_after: int | None = None  # wanmux links open at the end of the run
    rr_count: int | None = None
    rr_p50_ms: float | None = None
    rr_p99_ms: float | None = None
    rr_max_ms: float | None = None
    rr_outlived_bulk: bool | None = None  # some round trips ran after the bulk transfer ended
    # [(round index, ms, s after the bulk connection started)] of the slowest round trips, slowest
    # first: the last places them in the tunnel's logs (with `bulk_started_unix`).
    rr_slowest: list | None = None
    bulk_started_unix: float | None = None
    log_notes: list[str] = field(default_factory=list)
    started: str = ""
    warmup_mbit: float | None = None  # --warmup: goodput of the warm-up connection


def bench_argv(bins: Path, addr: str, secs: float, reverse: bool) -> list[str]:
    argv = [str(bins / "wanmux-bench"), "client", "--connect", addr, "-t", f"{secs:g}", "-P", "1",
            "--json"]
    if reverse:
        argv.append("-R")
    return netns(NS_C, argv)


def iperf_argv(k: int, cc: str, secs: float, reverse: bool) -> list[str]:
    # iperf3 sets the congestion control on its own socket (TCP_CONGESTION, as root). wanmux-bench
    # cannot yet, and inside a namespace the default can only be set to an algorithm in the host's
    # tcp_allowed_congestion_control (here "reno bbr"), so cubic would be out of reach.
    argv = ["iperf3", "-c", server_ip(k), "-p", str(IPERF_PORT), "-t", f"{secs:g}", "-C", cc, "-J"]
    if reverse:
        argv.append("-R")
    return netns(NS_C, argv)


def start_bulk(r: Run, args, bins: Path, addr: str, secs: float) -> subprocess.Popen:
    if r.contender.startswith("direct-"):
        argv = iperf_argv(r.path, r.contender.split("-", 1)[1], secs, args.reverse)
    else:
        argv = bench_argv(bins, addr, secs, args.reverse)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    PROCS.track("bulk client", p)
    return p


def finish_bulk(r: Run, p: subprocess.Popen, limit: float) -> None:
    status, out, err = benchlib.communicate(p, limit)
    PROCS.forget(p)
    if r.contender.startswith("direct-"):
        parse_iperf(r, status, out, err)
    else:
        parse_bulk(r, status, out, err)


def parse_iperf(r: Run, status: int, out: str, err: str) -> None:
    r.status = status
    try:
        j = json.loads(out)
    except json.JSONDecodeError:
        r.error = f"iperf3: unparsable output {out[:200]!r} {err[:200]}"
        return
    if status != 0 or j.get("error"):
        r.error = f"iperf3: {j.get('error') or err.strip()[:300] or f'exit status {status}'}"
        return
    rec = j["end"]["sum_received"]
    r.ok = True
    r.mbit = rec["bits_per_second"] / 1e6
    r.bytes = rec["bytes"]
    r.seconds = rec["seconds"]
    r.retransmits = j["end"].get("sum_sent", {}).get("retransmits")
    count_stalls(r, [(i["sum"]["start"], i["sum"]["end"], i["sum"]["bytes"],
                      i["sum"]["bits_per_second"]) for i in j.get("intervals", [])], ARGS_TIME[0])


def count_stalls(r: Run, intervals: list[tuple[float, float, int, float]], secs: float) -> None:
    """Whole 1 s intervals of the sending period in which the sender wrote nothing. The bench
    clients report the sender's side for an upload: after the first second (local buffers filling)
    a second without a single write means nothing drained along the whole path for that long.
    A second in which the sender had already written more than the line could have carried so
    far is not a stall: the tunnel is still draining what it buffered (a wanmux tunnel takes a
    stream window, 16 MiB here, at once, which at 100 Mbit/s is more than a second of the line
    while start-up ramps)."""
    r.intervals_mbit = [round(i[3] / 1e6, 1) for i in intervals]
    rate = rate_mbit(r.spec) if r.path != ALL_PATHS else None
    line = rate * 1e6 / 8 if rate else None
    written = 0
    r.zero_intervals = 0
    mins = []
    for start, end, n, bps in intervals:
        whole = end - start > 0.9 and start >= 0.9 and end <= secs + 0.1
        ahead = line is not None and written > line * start
        written += n
        if not whole:
            continue
        mins.append(bps / 1e6)
        if n == 0 and not ahead:
            r.zero_intervals += 1
    r.min_interval_mbit = min(mins, default=None)


def parse_bulk(r: Run, status: int, out: str, err: str) -> None:
    j, r.status, r.error = benchlib.bench_report(status, out, err)
    if j is None:
        return
    r.ok = True
    r.mbit = j["bits_per_second"] / 1e6
    r.bytes = j["received_bytes"]
    r.seconds = j["seconds"]
    count_stalls(r, [(i["start"], i["end"], i["bytes"], i["bits_per_second"])
                     for i in j.get("intervals", [])], ARGS_TIME[0])


def wire_ratios(r: "Run", args, w) -> None:
    """Records the emulator's byte counters of a run (`counters_delta`) and the WAN bytes per
    application byte delivered, in the data direction and in both."""
    r.wire = w
    if r.ok and r.bytes:
        data, ack = ("down", "up") if args.reverse else ("up", "down")
        r.wire_data_ratio = w[data]["rx_bytes"] / r.bytes
        r.wire_total_ratio = (w[data]["rx_bytes"] + w[ack]["rx_bytes"]) / r.bytes


def one_run(r: Run, args, bins: Path, keys: Keys, tmp: Path, paths: list[int]) -> Run:
    k = r.path
    r.started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    loss = "" if r.loss is None else f"-loss{r.loss:g}"
    d = tmp / f"{r.scenario}{loss}-{r.contender}-p{k}-r{r.rep}-{r.test}"
    d.mkdir(parents=True)
    name = r.contender
    tunnel: Tunnel | None = None
    fronted: list[int] = []
    caps: list[subprocess.Popen] = []
    try:
        if name.startswith("direct-"):
            addr = f"{server_ip(k)}:{BENCH_PORT}"  # rr only; bulk is iperf3
        elif name.startswith("kcptun"):
            tunnel = start_kcptun(name, k, keys, d)
            addr = tunnel.addr
        else:
            if k == ALL_PATHS:
                for j in paths[1:]:
                    lab("front", str(j), server_ip(1), str(WANMUX_PORT))
                fronted = paths[1:]
            tunnel = start_wanmux(name, k, args, bins, keys, d, len(paths))
            addr = tunnel.addr
        if args.warmup > 0 and tunnel is not None:
            warm_up(r, args, bins, addr)
        if args.capture:
            caps = start_capture(r, args, d)
        before, _ = quiesce(paths)
        limit = 2 * args.time + 120
        if r.test == "bulk":
            finish_bulk(r, start_bulk(r, args, bins, addr, args.time), limit)
        else:
            run_rr(r, args, bins, addr, limit)
        if tunnel is not None and name.startswith("wanmux"):
            r.links_after = tunnel_links(tunnel)
        after, r.quiet = quiesce(paths)
        wire_ratios(r, args, counters_delta(before, after))
        if tunnel is not None:
            why = tunnel.check_alive()
            if why:
                r.ok, r.error = False, f"tunnel died: {why}"
    except RuntimeError as e:
        r.ok, r.error = False, str(e)
    finally:
        for p in caps:
            PROCS.stop(p)
        if tunnel is not None:
            tunnel.stop()
            r.log_notes = log_notes(tunnel)
        for j in fronted:
            try_cmd(["bash", str(LAB), "front", str(j), "off"])
    return r


def start_capture(r: Run, args, d: Path) -> list[subprocess.Popen]:
    """--capture: packet headers at the receiving host of the run's data, for timeline.py: what
    the emulated path delivered (`path.pcap`, eth0) and what reached the receiving application's
    socket (`app.pcap`, TCP on lo, where the tunnels hand the data over)."""
    ns = NS_C if args.reverse else server_ns(r.path)
    caps = []
    for iface, name, filt in (("eth0", "path", "ip"), ("lo", "app", "tcp")):
        caps.append(PROCS.start(f"tcpdump {iface}", netns(ns, [
            "tcpdump", "-i", iface, "-s", "96", "-n", "-w", str(d / f"{name}.pcap"), filt]),
            d / f"{name}.tcpdump.log"))
    wait_for(lambda: all("listening on" in (d / f"{n}.tcpdump.log").read_text()
                         for n in ("path", "app")), "tcpdump", caps, timeout=10.0)
    return caps


def warm_up(r: Run, args, bins: Path, addr: str) -> None:
    """--warmup: one bulk connection of that many seconds through the fresh tunnel, before the
    measured one, as a tunnel that has carried traffic before would be (its links keep what
    they learnt of the path). Direct TCP has nothing to keep (the lab's hosts save no TCP metrics),
    so its rows run cold either way. A failed warm-up fails the run."""
    w = Run(r.scenario, r.contender, r.path, r.rep, "warmup", r.spec, reverse=r.reverse)
    finish_bulk(w, start_bulk(w, args, bins, addr, args.warmup), args.warmup + 120)
    if not w.ok:
        raise RuntimeError(f"warm-up: {w.error}")
    r.warmup_mbit = w.mbit


def run_rr(r: Run, args, bins: Path, addr: str, limit: float) -> None:
    """A bulk connection of 2 x --time and, starting a little later, an rr connection through the
    same tunnel (for direct TCP: beside it on the same path). The rr count fills --time at 1.5 x the
    base RTT; the bulk's second half is the margin for round trips slowed by queues, so that every
    round trip is measured under load (`rr_outlived_bulk` says when that failed)."""
    rtt = max(rtt_s(r.spec), 0.001)
    delay = rr_delay(args)
    count = args.rr_count or max(20, int(args.time / (1.5 * rtt)))
    r.bulk_started_unix = time.time()
    bulk = start_bulk(r, args, bins, addr, 2 * args.time)
    time.sleep(delay)
    rr = subprocess.Popen(netns(NS_C, [str(bins / "wanmux-bench"), "rr", "--connect", addr, "-n",
                                       str(count), "--json"]),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
    PROCS.track("bench rr", rr)
    rr_status, rr_out, rr_err = benchlib.communicate(rr, limit)
    rr_end = time.monotonic()
    finish_bulk(r, bulk, limit)
    bulk_end = time.monotonic()
    PROCS.forget(rr)
    # finish_bulk returned at once if bulk had ended before rr did.
    r.rr_outlived_bulk = bulk_end - rr_end < 0.05
    j, _, error = benchlib.bench_report(rr_status, rr_out, rr_err)
    if j is None:
        r.ok, r.error = False, f"rr: {error}"
        return
    r.rr_count = j["count"]
    r.rr_p50_ms, r.rr_p99_ms = j["p50_us"] / 1e3, j["p99_us"] / 1e3
    r.rr_max_ms = j.get("max_us", 0) / 1e3 or None
    rr_start = j.get("started_unix_ms", 0) / 1e3 - r.bulk_started_unix
    r.rr_slowest = [(t["round"], t["us"] / 1e3, round(rr_start + t.get("at_ms", 0) / 1e3, 3))
                    for t in j.get("slowest", [])]


def rr_delay(args) -> float:
    """Seconds between the start of the bulk connection and the rr connection in rr tests."""
    return min(2.0, args.time / 4)


def log_notes(t: Tunnel) -> list[str]:
    """Warnings and errors the tunnel logged (the first of each log, and a count)."""
    notes = (benchlib.log_warnings(lp, ("WARN", "ERROR", "panicked", "error"), 240) for lp in t.logs)
    return [n for n in notes if n]


# ---------------------------------------------------------------------------------------------
# The lab

def lab(*argv: str) -> str:
    return run_cmd(["bash", str(LAB), *argv], env=LAB_ENV)


LAB_ENV: dict[str, str] = {}


def lab_up(specs: list[str], seed: int) -> None:
    up = ["--seed", str(seed)]
    for s in specs:
        up += ["--path", s]
    log(lab("up", *up).strip())


def start_bench_servers(bins: Path, n: int, tmp: Path) -> None:
    for k in range(1, n + 1):
        p = PROCS.start(f"bench server {k}", netns(server_ns(k), [
            str(bins / "wanmux-bench"), "server", "--listen", f"0.0.0.0:{BENCH_PORT}"]),
            tmp / f"bench-server-{k}.log")
        wait_for(lambda k=k: listening(server_ns(k), BENCH_PORT), f"bench server {k}", [p])
        p = PROCS.start(f"iperf3 server {k}", netns(server_ns(k), [
            "iperf3", "-s", "-B", server_ip(k), "-p", str(IPERF_PORT)]), tmp / f"iperf3-server-{k}.log")
        wait_for(lambda k=k: listening(server_ns(k), IPERF_PORT), f"iperf3 server {k}", [p])


# ---------------------------------------------------------------------------------------------
# Reports

def summarize(runs: list[Run], contender: str, path: int, test: str, loss=None) -> dict:
    mine = [r for r in runs if r.contender == contender and r.path == path and r.test == test
            and (loss is None or r.loss == loss)]
    ok = [r for r in mine if r.ok]
    return {
        "n": len(mine), "ok": len(ok),
        "mbit": median([r.mbit for r in ok]),
        "runs": [round(r.mbit, 1) for r in ok],
        "data_ratio": median([r.wire_data_ratio for r in ok if r.wire_data_ratio is not None]),
        "total_ratio": median([r.wire_total_ratio for r in ok if r.wire_total_ratio is not None]),
        "drop_loss": median([r.wire["down" if r.reverse else "up"]["drop_loss"] for r in ok
                             if r.wire]),
        "drop_queue": median([r.wire["up"]["drop_queue"] + r.wire["down"]["drop_queue"]
                              for r in ok if r.wire]),
        "drop_flow": median([r.wire["up"]["drop_flow"] + r.wire["down"]["drop_flow"]
                             for r in ok if r.wire]),
        "stalls": sum(r.zero_intervals or 0 for r in ok),
        "links_after": [r.links_after for r in ok if r.links_after is not None],
        "p50": median([r.rr_p50_ms for r in ok if r.rr_p50_ms is not None]),
        "p99": median([r.rr_p99_ms for r in ok if r.rr_p99_ms is not None]),
        "rr_runs": [(round(r.rr_p50_ms, 1), round(r.rr_p99_ms, 1)) for r in ok
                    if r.rr_p50_ms is not None],
        "outlived": sum(1 for r in ok if r.rr_outlived_bulk),
        "fails": [f"rep {r.rep + 1}: {r.error}" for r in mine if not r.ok],
    }


def table_paths(specs: list[str]) -> list[tuple[int, str]]:
    """(path, spec) rows of a table: each path, then all paths at once if there are several."""
    rows = list(enumerate(specs, start=1))
    return rows + [(ALL_PATHS, " | ".join(specs))] if len(specs) > 1 else rows


def bulk_table(runs: list[Run], contenders: list[str], specs: list[str]) -> list[str]:
    lines = ["| contender | path | goodput Mbit/s, median | runs | % of line | wire/goodput, data dir "
             "| wire/goodput, both dirs | emulator drops: loss (data dir) / queue | 1 s write stalls "
             "| links at end |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for k, spec in table_paths(specs):
        line = rate_mbit(spec)
        where = path_label(k, len(specs))
        for c in contenders:
            s = summarize(runs, c, k, "bulk")
            if s["n"] == 0:
                continue
            if s["mbit"] is None:
                lines.append(f"| {LABELS[c]} | {where} | FAILED ({s['fails'][0] if s['fails'] else ''}) "
                             "| | | | | | | |")
                continue
            pct = f"{100 * s['mbit'] / line:.0f}%" if line else "-"
            failed = f", {s['n'] - s['ok']} failed" if s["ok"] < s["n"] else ""
            links = ",".join(map(str, s["links_after"])) if s["links_after"] else "-"
            lines.append(
                f"| {LABELS[c]} | {where} | **{s['mbit']:.1f}** | {', '.join(map(str, s['runs']))}{failed} "
                f"| {pct} | {fmt(s['data_ratio'], '.3f')} | {fmt(s['total_ratio'], '.3f')} "
                f"| {fmt(s['drop_loss'], '.0f')} / {fmt(s['drop_queue'], '.0f')}"
                f"{' (flow ' + format(s['drop_flow'], '.0f') + ')' if s['drop_flow'] else ''} "
                f"| {s['stalls']} | {links} |")
    return lines


def rr_table(runs: list[Run], contenders: list[str], specs: list[str]) -> list[str]:
    lines = ["| contender | path | rr p50 ms | rr p99 ms | runs (p50 / p99) | bulk Mbit/s beside it "
             "| round trips per run |",
             "|---|---|---|---|---|---|---|"]
    for k, _ in table_paths(specs):
        where = path_label(k, len(specs))
        for c in contenders:
            s = summarize(runs, c, k, "rr")
            if s["n"] == 0:
                continue
            if s["p50"] is None:
                lines.append(f"| {LABELS[c]} | {where} | FAILED ({s['fails'][0] if s['fails'] else ''}) "
                             "| | | | |")
                continue
            counts = sorted({r.rr_count for r in runs if r.contender == c and r.test == "rr" and r.ok})
            note = f" ({s['outlived']} run(s) outlived the bulk)" if s["outlived"] else ""
            lines.append(
                f"| {LABELS[c]} | {where} | **{s['p50']:.1f}** | **{s['p99']:.1f}** "
                f"| {'; '.join(f'{a} / {b}' for a, b in s['rr_runs'])} | {fmt(s['mbit'], '.1f')} "
                f"| {','.join(map(str, counts))}{note} |")
    return lines


def notes(runs: list[Run]) -> list[str]:
    out = []
    for r in runs:
        tag = f"{r.contender} path {r.path} rep {r.rep + 1} {r.test}" + (
            f" loss {r.loss:g}%" if r.loss is not None else "")
        if not r.ok:
            out.append(f"- {tag}: FAILED: {r.error}")
        if r.quiet is False:
            out.append(f"- {tag}: the path did not go quiet within 20 s after the run")
        for n in r.log_notes:
            out.append(f"- {tag}: {n}")
    return out


def versions(bins: Path) -> str:
    w = benchlib.wanmux_version(bins) or "wanmux ?"
    k = benchlib.dpkg_versions("kcptun") or "kcptun ?"
    head = benchlib.git_head() or "?"
    return f"{w}, {k}, git {head} (binaries from {bins})"


def header(args, command: str, started, bins: Path) -> list[str]:
    return [
        f"Command: `{command}`",
        "",
        f"Date: {started:%Y-%m-%d %H:%M} UTC. {len(os.sched_getaffinity(0))} CPUs, load average at "
        f"start {os.getloadavg()[0]:.2f}. {versions(bins)}.",
        f"Settings: {args.time:g} s per run, {args.repeat} repetition(s), interleaved, "
        f"{'server -> client' if args.reverse else 'client -> server'}; one application "
        f"connection (`wanmux-bench client -P 1` through the tunnels, `iperf3 -C CC` for direct "
        f"TCP); wanmux links congestion control "
        f"`{args.wanmux_cc}`, stream window {args.stream_window} B, session window "
        f"{max(args.session_window, args.stream_window)} B; each tunnel started fresh per run"
        + (f" and warmed up by a {args.warmup:g} s bulk connection before the measured one (direct "
           "TCP rows cold)." if args.warmup > 0 else ", cold (nothing through it before)."),
    ]


def write_out(args, text: str, data: dict, stem: str) -> None:
    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"{stem}.md"
    md.write_text(text)
    js = out_dir / f"{stem}.json"
    js.write_text(json.dumps(data, indent=1))
    log(f"wrote {md} and {js}")


# ---------------------------------------------------------------------------------------------

def find_bins(args) -> Path:
    bins = args.bin_dir or benchlib.target_dir() / "release"
    for b in benchlib.missing_bins(bins, ("wanmux-server", "wanmux-client", "wanmux-bench",
                                          "wanlab-link")):
        raise SystemExit(f"{b} missing. Build first: cargo build --release -p wanmux-server "
                             "-p wanmux-client -p wanmux-bench -p wanmux-wanlab (or --bin-dir DIR)")
    if shutil.which("kcptun-server") is None or shutil.which("kcptun-client") is None:
        raise SystemExit("kcptun-server/kcptun-client not found: apt-get install kcptun")
    return bins


def schedule(contenders: list[str], paths: list[int], rep: int) -> list[tuple[str, int]]:
    items = [(c, k) for k in paths for c in contenders]
    if len(paths) > 1:
        # wanmux also runs over every path at once (one node, one address per path).
        items += [(c, ALL_PATHS) for c in contenders if c.startswith("wanmux")]
    # Rotate every repetition so no contender always runs first or last.
    s = rep % len(items)
    return items[s:] + items[:s]


def measure(args, bins, keys, tmp, scenario, specs, contenders, tests, runs, loss=None) -> None:
    paths = list(range(1, len(specs) + 1))
    total = len(schedule(contenders, paths, 0)) * len(tests) * args.repeat
    i = 0
    for rep in range(args.repeat):
        for test in tests:
            for c, k in schedule(contenders, paths, rep):
                i += 1
                spec = " | ".join(specs) if k == ALL_PATHS else specs[k - 1]
                r = Run(scenario, c, k, rep, test, spec, loss=loss, reverse=args.reverse)
                try:
                    one_run(r, args, bins, keys, tmp, paths)
                except (OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
                    # A bug or a broken lab: record it and go on, so the other runs still count.
                    r.ok, r.error = False, f"runner error: {type(e).__name__}: {e}"
                runs.append(r)
                if not r.ok:
                    res = f"FAILED: {r.error}"
                elif test == "rr":
                    res = (f"rr p50 {r.rr_p50_ms:.1f} ms p99 {r.rr_p99_ms:.1f} ms ({r.rr_count} rt), "
                           f"bulk {r.mbit:.1f} Mbit/s, slowest "
                           + ", ".join(f"#{i} {ms:.0f} ms at {at:.1f} s" for i, ms, at in r.rr_slowest or []))
                else:
                    res = (f"{r.mbit:.1f} Mbit/s, wire/goodput {fmt(r.wire_data_ratio, '.3f')} data "
                           f"{fmt(r.wire_total_ratio, '.3f')} both, drops loss "
                           f"{r.wire['up']['drop_loss'] + r.wire['down']['drop_loss']} queue "
                           f"{r.wire['up']['drop_queue'] + r.wire['down']['drop_queue']}"
                           + (f", {r.links_after} links" if r.links_after is not None else "")
                           + (f", {r.retransmits} retransmits" if r.retransmits is not None else "")
                           + (f", {r.zero_intervals} stalled s" if r.zero_intervals else ""))
                where = f"{scenario}" + (f" loss {loss:g}%" if loss is not None else "") + \
                    (f" path {path_label(k, len(paths))}" if len(paths) > 1 else "")
                log(f"[{i}/{total}] {where} rep {rep + 1} {test} {c}: {res}")


def cmd_run(args, bins, keys, tmp, command, started) -> tuple[str, dict]:
    scenario = args.scenario
    specs = lab("paths", scenario).splitlines()
    if not specs:
        specs = [""]
    contenders = args.contenders
    tests = ["bulk"]
    if args.rr if args.rr is not None else scenario == "B":
        tests.append("rr")
    runs: list[Run] = []
    lab_up(specs, args.seed)
    start_bench_servers(bins, len(specs), tmp)
    try:
        measure(args, bins, keys, tmp, scenario, specs, contenders, tests, runs)
    except KeyboardInterrupt:
        log("interrupted; reporting what was measured")
    text = [f"## Scenario {scenario}", ""]
    text += [f"Path {k}: `{s or '(no impairment)'}`" + (f", line rate {rate_mbit(s):g} Mbit/s" if
                                                        rate_mbit(s) else "") + "  "
             for k, s in enumerate(specs, start=1)]
    text += [""] + header(args, command, started, bins) + [""]
    if len(specs) > 1:
        text += [f"Each contender is measured on each path alone (path K = server 10.77.(1+K).2), and "
                 f"wanmux also on all paths at once (path {path_label(ALL_PATHS, len(specs))}): its node "
                 "runs on server 1 and has one address per path in the client's `[[node]] addr` (the "
                 "other servers forward their wanmux port to server 1 over the router's unimpaired "
                 "hop, `lab.sh front`), so one application connection can use every path; its "
                 "line rate is the sum of the paths'.", ""]
    text += bulk_table(runs, contenders, specs)
    if "rr" in tests:
        text += ["", f"rr under load: `wanmux-bench rr` (64 B each way) on a second connection through "
                 f"the same tunnel (direct TCP: beside the bulk connection on the same path), started "
                 f"{rr_delay(args):g} s after a bulk connection of {2 * args.time:g} s (`wanmux-bench "
                 "client -P 1`, direct TCP `iperf3`), round trips enough for "
                 f"{args.time:g} s at 1.5 x the base RTT (or `--rr-count`); medians of each run's p50 "
                 "and p99. The direct TCP rr connection uses the namespace's default congestion "
                 "control.", ""]
        text += rr_table(runs, contenders, specs)
    text += ["", LEGEND]
    n = notes(runs)
    if n:
        text += ["", "Notes:", *n]
    data = {"mode": "run", "scenario": scenario, "specs": specs, "command": command,
            "started": started.isoformat(), "args": {k: str(v) for k, v in vars(args).items()},
            "versions": versions(bins), "runs": [r.__dict__ for r in runs]}
    return "\n".join(text) + "\n", data


def cmd_sweep(args, bins, keys, tmp, command, started) -> tuple[str, dict]:
    losses = [float(x) for x in args.losses.split(",")]
    runs: list[Run] = []
    contenders = args.contenders
    spec_for = {loss: args.base + (f",loss={loss:g}%" if loss else "") for loss in losses}
    lab_up([spec_for[losses[0]]], args.seed)
    start_bench_servers(bins, 1, tmp)
    try:
        for i, loss in enumerate(losses):
            if i:
                lab("set", "1", spec_for[loss], "--seed", str(args.seed))
            measure(args, bins, keys, tmp, "sweep", [spec_for[loss]], contenders, ["bulk"], runs,
                    loss=loss)
    except KeyboardInterrupt:
        log("interrupted; reporting what was measured")
    line = rate_mbit(args.base)
    text = ["## Loss sweep", "", f"Path: `{args.base}` plus `loss=X%` (each direction)", ""]
    text += header(args, command, started, bins) + [""]
    text += ["| contender | " + " | ".join(f"{l:g}% loss" for l in losses) + " |",
             "|---|" + "---|" * len(losses)]
    for c in contenders:
        cells = []
        for loss in losses:
            s = summarize(runs, c, 1, "bulk", loss)
            cells.append("-" if s["mbit"] is None else
                         f"{s['mbit']:.1f} (x{fmt(s['data_ratio'], '.2f')})")
        text.append(f"| {LABELS[c]} | " + " | ".join(cells) + " |")
    text += ["", f"Median goodput in Mbit/s (line rate {line:g} Mbit/s), in brackets the WAN bytes "
             "in the data direction per application byte."]
    n = notes(runs)
    if n:
        text += ["", "Notes:", *n]
    data = {"mode": "sweep", "base": args.base, "losses": losses, "line_mbit": line,
            "command": command, "started": started.isoformat(), "time": args.time,
            "repeat": args.repeat, "wanmux_cc": args.wanmux_cc, "versions": versions(bins),
            "runs": [r.__dict__ for r in runs]}
    return "\n".join(text) + "\n", data


# The path matrix (issue 21, item 3): a covering subset of rates 50 / 200 / 500 Mbit/s, RTTs
# 20 / 100 / 250 ms, loss 0 / 0.5 / 2%, jitter 0 / 2 / 10 ms (each direction, order kept) with and
# without reordering (a quarter of the packets up to 2 x jitter late), and asymmetric lines (the
# return direction at a tenth of the data direction's rate). Every path has a 50 ms queue.
MATRIX = [
    ("50-20-0", "delay=10ms,rate=50mbit"),
    ("50-20-0.5-j2", "delay=10ms,rate=50mbit,loss=0.5%,jitter=2ms"),
    ("50-20-0.5-j2r", "delay=10ms,rate=50mbit,loss=0.5%,jitter=2ms,reorder=25%"),
    ("50-100-2", "delay=50ms,rate=50mbit,loss=2%"),
    ("50-250-0.5-j10", "delay=125ms,rate=50mbit,loss=0.5%,jitter=10ms"),
    ("50-250-2-j2r", "delay=125ms,rate=50mbit,loss=2%,jitter=2ms,reorder=25%"),
    ("200-20-2-j2r", "delay=10ms,rate=200mbit,loss=2%,jitter=2ms,reorder=25%"),
    ("200-100-0-j10", "delay=50ms,rate=200mbit,jitter=10ms"),
    ("200-100-0.5-j2", "delay=50ms,rate=200mbit,loss=0.5%,jitter=2ms"),
    ("200-100-2-j10r", "delay=50ms,rate=200mbit,loss=2%,jitter=10ms,reorder=25%"),
    ("200-100-0.5-asym", "delay=50ms,up.rate=200mbit,down.rate=20mbit,loss=0.5%"),
    ("200-250-0.5", "delay=125ms,rate=200mbit,loss=0.5%"),
    ("500-20-0.5", "delay=10ms,rate=500mbit,loss=0.5%"),
    ("500-100-2-j2", "delay=50ms,rate=500mbit,loss=2%,jitter=2ms"),
    ("500-100-0-j2r", "delay=50ms,rate=500mbit,jitter=2ms,reorder=25%"),
    ("500-100-0.5-asym", "delay=50ms,up.rate=500mbit,down.rate=50mbit,loss=0.5%"),
    ("500-250-2-j10", "delay=125ms,rate=500mbit,loss=2%,jitter=10ms"),
]
MATRIX_CONTENDERS = ["direct-bbr", "kcptun-2048", "wanmux-quic-4"]


def cmd_matrix(args, bins, keys, tmp, command, started) -> tuple[str, dict]:
    """Every contender on every path of MATRIX (or of --paths), one path at a time."""
    chosen = [m for i, m in enumerate(MATRIX, start=1) if not args.paths or i in args.paths]
    runs: list[Run] = []
    contenders = args.contenders
    queue = os.environ.get("WANLAB_QUEUE", "50ms")
    specs = {name: f"{spec},queue={queue}" for name, spec in chosen}
    lab_up([specs[chosen[0][0]]], args.seed)
    start_bench_servers(bins, 1, tmp)
    try:
        for i, (name, _) in enumerate(chosen):
            if i:
                lab("set", "1", specs[name], "--seed", str(args.seed))
            measure(args, bins, keys, tmp, name, [specs[name]], contenders, ["bulk"], runs)
    except KeyboardInterrupt:
        log("interrupted; reporting what was measured")
    text = ["## Path matrix", "", "Path names: rate Mbit/s - RTT ms - loss % - jitter (jN: ±N ms in "
            "each direction, order kept; r: a quarter of the packets up to 2N ms late besides; asym: "
            "the return direction at a tenth of the rate)", ""]
    text += header(args, command, started, bins) + [""]
    text += ["| path | spec | " + " | ".join(LABELS[c] for c in contenders) + " |",
             "|---|---|" + "---|" * len(contenders)]
    for name, _ in chosen:
        cells = []
        for c in contenders:
            s = summarize([r for r in runs if r.scenario == name], c, 1, "bulk")
            cells.append("-" if s["mbit"] is None else
                         f"{s['mbit']:.1f} ({', '.join(map(str, s['runs']))}; "
                         f"x{fmt(s['data_ratio'], '.3f')})")
        text.append(f"| {name} | `{specs[name]}` | " + " | ".join(cells) + " |")
    text += ["", "Median goodput in Mbit/s (the runs; WAN bytes in the data direction per "
             "application byte)."]
    n = notes(runs)
    if n:
        text += ["", "Notes:", *n]
    data = {"mode": "matrix", "paths": specs, "command": command, "started": started.isoformat(),
            "time": args.time, "repeat": args.repeat, "versions": versions(bins),
            "runs": [r.__dict__ for r in runs]}
    return "\n".join(text) + "\n", data


LEGEND = (
    "Goodput: application bytes received and verified by the receiver / its receive time. % of line: "
    "of the emulated rate (a TCP payload is at most 1448/1500 = 96.5% of it). wire/goodput: IP "
    "bytes the sender side offered to the emulated path during the run (emulator `rx` counters, "
    "including what it then dropped) per application byte delivered; data dir = the direction of "
    "the transfer, both dirs adds the ACK/feedback direction. Drops: the emulator's random-loss "
    "drops in the data direction and bottleneck tail drops in both directions (median per run). "
    "1 s write stalls: whole 1 s intervals of the sending period in which the sender could write "
    "nothing (after the first second, and not while it was ahead of the line rate; all runs "
    "together). "
    "Links at end: wanmux links established when the transfer ended.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--time", type=float, default=20.0, help="seconds per run (default 20)")
    common.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    common.add_argument("--reverse", action="store_true", help="server -> client (`-R`)")
    common.add_argument("--wanmux-cc", default="bbr",
                        help="congestion control of wanmux's links at both ends (default bbr; "
                             "'default' leaves the daemons' default)")
    common.add_argument("--stream-window", type=int, default=64 << 20,
                        help="wanmux limits.stream_window, both ends (default 64 MiB, the daemons' default)")
    common.add_argument("--session-window", type=int, default=128 << 20,
                        help="wanmux limits.session_window (default 128 MiB, at least the stream window)")
    common.add_argument("--warmup", type=float, default=0.0,
                        help="seconds of bulk transfer through each fresh tunnel before the measured "
                             "connection (default 0: cold tunnels); direct TCP rows stay cold")
    common.add_argument("--bin-dir", type=Path, default=None,
                        help="wanmux-server, wanmux-client, wanmux-bench, wanlab-link "
                             "(default $CARGO_TARGET_DIR/release, else <repo>/target/release)")
    common.add_argument("--out-dir", type=Path, default=HERE / "out",
                        help="where the .md and .json go (default bench/wanlab/out)")
    common.add_argument("--keep-tmp", action="store_true", help="keep configs and tunnel logs")
    common.add_argument("--seed", type=int, default=1,
                        help="seed of the emulators' random loss and jitter (default 1). Every "
                             "lab comes up with it, so the first run of two commands meets the "
                             "same losses: vary it to compare builds over several loss patterns")
    common.add_argument("--capture", action="store_true",
                        help="capture packet headers at the receiving host of every run (implies "
                             "--keep-tmp; read them with bench/wanlab/timeline.py)")
    r = sub.add_parser("run", parents=[common], help="one scenario, every contender")
    r.add_argument("scenario", help="A, B, C, D, E, F or ceiling")
    r.add_argument("--contenders", default=",".join(ALL_CONTENDERS),
                   help=f"comma-separated subset of {','.join(ALL_CONTENDERS)}")
    r.add_argument("--rr", dest="rr", action="store_true", default=None,
                   help="also measure rr under load (default: in scenario B only)")
    r.add_argument("--no-rr", dest="rr", action="store_false")
    r.add_argument("--rr-count", type=int, default=0,
                   help="round trips per rr run (default: enough to span the bulk run)")
    s = sub.add_parser("sweep", parents=[common], help="goodput against loss rate on one path")
    s.add_argument("--base", default="delay=50ms,rate=200mbit,queue=50ms",
                   help="path without loss (default: 200 Mbit/s, 100 ms RTT, 50 ms queue)")
    s.add_argument("--losses", default="0,0.5,1,2,5", help="loss rates in %% (default 0,0.5,1,2,5)")
    s.add_argument("--contenders", default=",".join(SWEEP_CONTENDERS),
                   help=f"comma-separated (default {','.join(SWEEP_CONTENDERS)})")
    m = sub.add_parser("matrix", parents=[common],
                       help="the path matrix: every contender on every path, one path at a time")
    m.add_argument("--paths", default="",
                   help="comma-separated path numbers (1-based) of the matrix (default: all "
                        f"{len(MATRIX)})")
    m.add_argument("--contenders", default=",".join(MATRIX_CONTENDERS),
                   help=f"comma-separated (default {','.join(MATRIX_CONTENDERS)})")
    args = ap.parse_args()
    if args.mode == "matrix":
        try:
            args.paths = [int(p) for p in args.paths.split(",") if p.strip()]
        except ValueError:
            ap.error("--paths takes comma-separated numbers")
        if any(not 1 <= p <= len(MATRIX) for p in args.paths):
            ap.error(f"--paths: the matrix has paths 1-{len(MATRIX)}")
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    bad = [c for c in args.contenders if c not in ALL_CONTENDERS]
    if bad or args.repeat < 1 or args.time <= 0:
        ap.error(f"unknown contender(s) {bad} (known: {', '.join(ALL_CONTENDERS)}) or bad --repeat/--time")
    if os.geteuid() != 0:
        ap.error("needs root (network namespaces)")
    if args.capture:
        args.keep_tmp = True
        if shutil.which("tcpdump") is None:
            ap.error("--capture needs tcpdump: apt-get install tcpdump")
    bins = find_bins(args)
    ARGS_TIME[0] = args.time
    LAB_ENV.update(os.environ, WANLAB_LINK_BIN=str(bins / "wanlab-link"))

    command = " ".join(shlex.quote(a) for a in ["bench/wanlab/lab.sh", *sys.argv[1:]])
    started = dt.datetime.now(dt.timezone.utc)
    benchlib.catch_signals()
    tmp = Path(tempfile.mkdtemp(prefix="wanlab-run-"))
    text = data = None
    try:
        keys = Keys(bins, tmp / "keys")
        if args.mode == "run":
            text, data = cmd_run(args, bins, keys, tmp, command, started)
        elif args.mode == "matrix":
            text, data = cmd_matrix(args, bins, keys, tmp, command, started)
        else:
            text, data = cmd_sweep(args, bins, keys, tmp, command, started)
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        PROCS.stop_all()
        subprocess.run(["bash", str(LAB), "down"], env=LAB_ENV, stdout=subprocess.DEVNULL)
        if args.keep_tmp:
            log(f"configs and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if text is None:
        return 130
    print(text)
    stem = (f"{args.scenario}" if args.mode == "run" else args.mode) + f"-{started:%Y%m%dT%H%M%SZ}"
    write_out(args, text, data, stem)
    runs = data["runs"]
    if any(r["status"] == EXIT_VERIFY for r in runs):
        log("DATA VERIFICATION FAILED in at least one run")
        return EXIT_VERIFY
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
