#!/usr/bin/env python3
"""WAN lab cluster scenarios (issue 20): one application connection over a cluster of wanmux nodes.

`cluster SCENARIO` brings the lab up with one emulated path per node (`lab.sh paths cluster-G`:
five paths of 50 Mbit/s, 60 ms, 0.5% loss; `cluster-H`: three unequal ones), runs a
`wanmux-server` node in every server namespace (client links on 10.77.(1+K).2:4480, peer links on
10.77.(1+K).2:4481 over the router's unemulated hop, the server LAN) and one `wanmux-client` in
the client namespace that lists every node, and measures through it, interleaved with
`--repeat` repetitions:

- `bulk`: one connection's goodput (`wanmux-bench client -P 1`, as `run`), its slowest 1 s
  interval, and how the bytes spread over the nodes (the client's status: per node the bytes on
  its own links and what it relayed for the owner);
- `kill` (cluster-G): the same with 0.1 s intervals, and node 5 (not the owner) SIGKILLed a third
  of the way in: the data must verify (no byte lost), and the report gives the time until the
  rate is back to 90% of the remaining paths' sum (the first 1 s window at or above it), and
  the end of the last 1 s window below it;
- `rr` (cluster-H): rr latency on a second connection beside a bulk one (as `run`'s rr test).

Contenders: the cluster with `spread = "stripe"` and with `"pin"` (the same nodes, links and
owner), and direct TCP bbr over path 1 (`iperf3`) for comparison. `owner = "first"`: node 1 (on
path 1, the fastest path in cluster-H) owns every connection, so the killed node is never the
owner. Every tunnel is started fresh for each run.

Python 3.11 standard library only; reuses scenarios.py. Run as root. See README.md.
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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios as sc  # noqa: E402
from scenarios import (ALL_PATHS, BENCH_PORT, MAP_PORT, NS_C, PROCS, WANMUX_PORT, Run,  # noqa: E402
                       Tunnel, benchlib, fmt, log, median, netns, server_ip, server_ns, wait_for)

PEER_PORT = 4481  # wanmux-server [cluster] listen, beside the client listener
CONTENDERS = ["direct-bbr", "cluster-stripe", "cluster-pin"]
LABELS = {
    "direct-bbr": "direct TCP, bbr (path 1 only)",
    "cluster-stripe": "wanmux cluster, stripe",
    "cluster-pin": "wanmux cluster, pin",
}
# The tests each scenario runs by default.
SCENARIO_TESTS = {"cluster-G": ["bulk", "kill"], "cluster-H": ["bulk", "rr"]}
KILL_NODE_DEFAULT = 0  # 0: the last node


class NodeKeys:
    """One static key per node (node 1 has the shared Keys' server key) and the client's."""

    def __init__(self, keys: sc.Keys, bins: Path, d: Path, n: int) -> None:
        srv = str(bins / "wanmux-server")
        self.client_key, self.client_pub = keys.client_key, keys.client_pub
        self.nodes: list[tuple[Path, str]] = [(keys.server_key, keys.server_pub)]
        for k in range(2, n + 1):
            path = d / f"node{k}.key"
            self.nodes.append((path, benchlib.public_key(sc.run_cmd([srv, "keygen", "--out", str(path)]))))


def write_cluster_configs(d: Path, n: int, spread: str, args, nk: NodeKeys) -> None:
    """node1.toml .. nodeN.toml (each lists every other node as a [[peer]]) and client.toml."""
    cc = "" if args.wanmux_cc == "default" else f'congestion = "{args.wanmux_cc}"\n'
    limits = (f"[limits]\nstream_window = {args.stream_window}\n"
              f"session_window = {max(args.session_window, args.stream_window)}\n")
    for k in range(1, n + 1):
        peers = "".join(
            f'[[peer]]\nid = {j}\naddr = "{server_ip(j)}:{PEER_PORT}"\npublic_key = "{nk.nodes[j - 1][1]}"\n\n'
            for j in range(1, n + 1) if j != k)
        (d / f"node{k}.toml").write_text(f"""\
[server]
listen = "{server_ip(k)}:{WANMUX_PORT}"
node_id = {k}
private_key_file = "{nk.nodes[k - 1][0]}"
allowed_clients = ["{nk.client_pub}"]
quic = true
{cc}
{limits}
[cluster]
listen = "{server_ip(k)}:{PEER_PORT}"

{peers}[[service]]
name = "bench"
target = "127.0.0.1:{BENCH_PORT}"
""")
    nodes = "".join(
        f'[[node]]\nid = {k}\naddr = "{server_ip(k)}:{WANMUX_PORT}"\npublic_key = "{nk.nodes[k - 1][1]}"\n\n'
        for k in range(1, n + 1))
    (d / "client.toml").write_text(f"""\
[client]
private_key_file = "{nk.client_key}"

[control]
socket = "{d / 'client.sock'}"

[cluster]
owner = "first"

{nodes}[links]
count = {args.links}
transport = "{args.transport}"
{cc}
{limits}
[[map]]
listen = "127.0.0.1:{MAP_PORT}"
service = "bench"
spread = "{spread}"
""")


@dataclass
class Cluster:
    tunnel: Tunnel
    nodes: dict[int, subprocess.Popen] = field(default_factory=dict)
    killed: int | None = None
    d: Path | None = None
    bins: Path | None = None

    def check_alive(self) -> str | None:
        return benchlib.first_exit([(n, p) for n, p in self.tunnel.procs
                                    if n != f"wanmux-server {self.killed}"])

    def status(self) -> dict | None:
        out = sc.try_cmd([str(self.bins / "wanmux-client"), "status", "--config",
                          str(self.d / "client.toml"), "--json"])
        try:
            return json.loads(out) if out else None
        except json.JSONDecodeError:
            return None


def client_links(t: Tunnel) -> int:
    """Links up now, from the client's log: "link up" less "link ended" lines (QUIC links have no
    socket state to count)."""
    try:
        text = t.logs[-1].read_text(errors="replace")
    except OSError:
        return 0
    return text.count("link up") - text.count("link ended")


def start_cluster(name: str, n: int, args, bins: Path, nk: NodeKeys, d: Path) -> Cluster:
    spread = name.removeprefix("cluster-")
    write_cluster_configs(d, n, spread, args, nk)
    srv, cli = str(bins / "wanmux-server"), str(bins / "wanmux-client")
    for k in range(1, n + 1):
        r = subprocess.run([srv, "check", "--config", str(d / f"node{k}.toml")], capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{name}: node{k}.toml does not check: {r.stdout}{r.stderr}")
    r = subprocess.run([cli, "check", "--config", str(d / "client.toml")], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{name}: client.toml does not check: {r.stdout}{r.stderr}")
    t = Tunnel(name, f"127.0.0.1:{MAP_PORT}",
               logs=[d / f"node{k}.log" for k in range(1, n + 1)] + [d / "client.log"])
    c = Cluster(t, d=d, bins=bins)
    env = benchlib.daemon_env()
    for k in range(1, n + 1):
        p = PROCS.start(f"{name} node {k}", netns(server_ns(k), [srv, "run", "--config",
                                                                   str(d / f"node{k}.toml")]),
                        t.logs[k - 1], env=env)
        t.procs.append((f"wanmux-server {k}", p))
        c.nodes[k] = p
    for k in range(1, n + 1):
        wait_for(lambda k=k: sc.listening(server_ns(k), WANMUX_PORT), f"{name} node {k}",
                 [c.nodes[k]])
    pc = PROCS.start(f"{name} client", netns(NS_C, [cli, "run", "--config", str(d / "client.toml")]),
                     t.logs[-1], env=env)
    t.procs.append(("wanmux-client", pc))
    want = n * args.links
    wait_for(lambda: sc.listening(NS_C, MAP_PORT) and client_links(t) >= want,
             f"{name} client ({want} links)", [*c.nodes.values(), pc])
    # Peer links, and the sub-links through every node that ride on them, come up after the
    # client's own links: wait until the client's status shows every node's links (a transfer
    # started before would miss a path for its first second).
    wait_for(lambda: ready(c, n, args.links), f"{name} sub-links", [*c.nodes.values(), pc],
             timeout=30.0, interval=0.25)
    return c


def ready(c: Cluster, n: int, links: int) -> bool:
    """Every node's session at the client has its own links and, when striping, a sub-link
    through every other node's links (a session's `links` lists both)."""
    st = c.status()
    if not st:
        return False
    sessions = st.get("sessions", [])
    if len(sessions) < n:
        return False
    want = links if c.tunnel.name == "cluster-pin" else n * links
    return all(len(s.get("links", [])) >= want for s in sessions)


def node_spread(st: dict | None) -> dict:
    """What the client's status says of each node at the end of a run: per session (node) its link
    bytes, and per node what it relayed for other owners (upstream sent, downstream received)."""
    if not st:
        return {}
    out: dict = {"sessions": {}, "relayed": {}}
    for s in st.get("sessions", []):
        out["sessions"][s.get("peer", "?")] = {
            "links": len(s.get("links", [])),
            "sent": sum(l.get("sent_bytes", 0) for l in s.get("links", [])),
            "received": sum(l.get("received_bytes", 0) for l in s.get("links", [])),
            "resent": s.get("resent_bytes", 0),
        }
    for r in st.get("relayed", []):
        out["relayed"][str(r["node"])] = {"sent": r["sent_bytes"], "received": r["received_bytes"]}
    return out


# ---------------------------------------------------------------------------------------------
# The receiver's clock: what reached the receiving application's socket, every 0.1 s

BYTES_RECEIVED = re.compile(r"bytes_received:(\d+)")


class Receiver(threading.Thread):
    """Polls the kernel's byte count (`ss -ti`, `bytes_received`) of the receiving application's
    socket every `period` seconds: for an upload the bench (or iperf3) server's socket in node 1's
    namespace, for a download the bench client's in the client namespace. The bench clients
    report the sender's side of an upload, and a sender writes in bursts of up to a window (its
    0.1 s intervals alternate between 0 and several hundred Mbit/s), so the timeline of a kill
    and the slowest second are taken here instead."""

    def __init__(self, ns: str, filt: str, t0: float, period: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.argv = netns(ns, ["ss", "-Htin", "state", "established", filt])
        self.t0, self.period = t0, period
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        nxt = time.monotonic()
        while not self.done.is_set():
            out = sc.try_cmd(self.argv) or ""
            t = time.monotonic() - self.t0
            self.samples.append((round(t, 3), sum(int(x) for x in BYTES_RECEIVED.findall(out))))
            nxt += self.period
            self.done.wait(max(0.0, nxt - time.monotonic()))

    def stop(self) -> list[tuple[float, float, int]]:
        """Ends polling; the intervals (start, end, bytes) between samples from the first byte
        to the last (the socket closing ends the count: a sample of 0 after data is the end)."""
        self.done.set()
        self.join(timeout=5)
        out, last = [], None
        for t, b in self.samples:
            if last is not None and b >= last[1] and (b > 0 or last[1] > 0):
                out.append((last[0], t, b - last[1]))
            if last is not None and b < last[1]:
                break  # the connection closed
            last = (t, b)
        while out and out[0][2] == 0:
            out.pop(0)
        while out and out[-1][2] == 0:
            out.pop()
        return out


def receiver_for(r: Run, args, t0: float) -> Receiver:
    if args.reverse:
        return Receiver(NS_C, f"( dport = :{MAP_PORT} )" if not r.contender.startswith("direct")
                        else f"( dport = :{sc.IPERF_PORT} )", t0)
    port = sc.IPERF_PORT if r.contender.startswith("direct") else BENCH_PORT
    return Receiver(server_ns(1), f"( sport = :{port} )", t0)


def slowest_second(iv: list[tuple[float, float, int]]) -> tuple[float | None, int]:
    """The lowest rate (Mbit/s) of the 1 s windows (sliding by a poll period) after the first
    second of the receiver's timeline, and how many disjoint whole seconds received nothing."""
    if not iv:
        return None, 0
    t_first = iv[0][0]
    ws = [(s, m) for s, m in windows(iv, 1.0) if s >= t_first + 1.0]
    stalled, s_end = 0, -1.0
    for s, m in ws:
        if m == 0 and s >= s_end:
            stalled += 1
            s_end = s + 1.0
    return min((m for _, m in ws), default=None), stalled


# ---------------------------------------------------------------------------------------------
# The kill test: a bulk connection with fine intervals, a non-owner node SIGKILLed in the middle

def windows(intervals: list[tuple[float, float, int]], width: float) -> list[tuple[float, float]]:
    """(start, Mbit/s) of every window of `width` seconds made of consecutive intervals."""
    out = []
    for i in range(len(intervals)):
        start, end, total = intervals[i][0], intervals[i][0], 0
        for j in range(i, len(intervals)):
            end = intervals[j][1]
            total += intervals[j][2]
            if end - start >= width - 1e-6:
                out.append((start, total * 8 / (end - start) / 1e6))
                break
    return out


def recovery(intervals, t_kill: float, target: float, horizon: float, width: float = 1.0):
    """Seconds from the kill to the end of the last `width` window (sliding by a poll period)
    below `target` Mbit/s that starts within `horizon` seconds after it: 0 if none was below,
    None if none reached the target, and the string ">horizon" if the last one was still below
    (not back within the horizon)."""
    ws = [(s, m) for s, m in windows(intervals, width) if t_kill <= s <= t_kill + horizon]
    if not ws or max(m for _, m in ws) < target:
        return None
    below = [s for s, m in ws if m < target]
    if below and below[-1] == ws[-1][0]:
        return f">{horizon:g}"
    return 0.0 if not below else round(max(below) + width - t_kill, 2)


def first_back(intervals, t_kill: float, target: float, horizon: float, width: float = 1.0):
    """Seconds from the kill to the start of the first `width` window (sliding by a poll period)
    at or above `target` Mbit/s, starting within `horizon` seconds after it: when the rate is
    back (the issue's "time until throughput is back"). None if no such window. Unlike
    `recovery`, a later dip (the receiver's 1 s windows spread about +-10% in steady state) does
    not move it; the lowest window after the kill is reported beside it."""
    for s, m in windows(intervals, width):
        if t_kill <= s <= t_kill + horizon and m >= target:
            return round(s - t_kill, 2)
    return None


def rec_cell(v) -> str:
    if v is None:
        return "not reached"
    if isinstance(v, str):
        return f"not back within {v[1:]} s"
    return f"{v:.1f} s"


def longest_gap(intervals, t_from: float, t_to: float) -> float:
    """The longest stretch of intervals without a byte that begins between t_from and t_to."""
    best, start, end = 0.0, None, None
    for s, e, b in intervals:
        if b == 0:
            if start is None:
                start = s
            end = e
            if t_from <= start <= t_to:
                best = max(best, end - start)
        else:
            start = None
    return round(best, 2)


def analyse_kill(r: Run, report: dict, iv, t_kill: float, line_left: float, args) -> None:
    before = [b for s, e, b in iv if t_kill - 3 <= s and e <= t_kill]
    span = sum(e - s for s, e, b in iv if t_kill - 3 <= s and e <= t_kill)
    pre = sum(before) * 8 / span / 1e6 if span > 0 else None
    after = [m for s, m in windows(iv, 1.0) if t_kill <= s <= t_kill + args.kill_horizon]
    # The steady state's own spread, for comparison: the 1 s windows of the 3 s before the kill
    # (the connection is a third of the way in, past its start).
    before_windows = [m for s, m in windows(iv, 1.0) if t_kill - 3 <= s <= t_kill - 1]
    # The mean rate from 1 s after the kill to the end of the horizon: what the remaining paths
    # carried once the dead node's share was resent (robust to the poll's jitter).
    late = [(s, e, b) for s, e, b in iv if t_kill + 1 <= s and e <= t_kill + 1 + args.kill_horizon]
    late_span = sum(e - s for s, e, _ in late)
    r.kill = {
        "t_kill": round(t_kill, 2),
        "sent_bytes": report.get("sent_bytes"), "received_bytes": report.get("received_bytes"),
        "lost_bytes": (report.get("sent_bytes") or 0) - (report.get("received_bytes") or 0),
        "before_mbit": pre,
        "min_after_mbit": min(after, default=None),
        "min_before_mbit": min(before_windows, default=None),
        "mean_after_mbit": sum(b for _, _, b in late) * 8 / late_span / 1e6 if late_span > 0 else None,
        "gap_s": longest_gap(iv, t_kill, t_kill + args.kill_horizon),
        "target_mbit": 0.9 * line_left,
        "recover_s": recovery(iv, t_kill, 0.9 * line_left, args.kill_horizon),
        "back_s": first_back(iv, t_kill, 0.9 * line_left, args.kill_horizon),
        "receiver": [(s, round(b * 8 / max(e - s, 1e-9) / 1e6, 1)) for s, e, b in iv],
    }
    if pre:
        # Against what the connection ran at before, less the dead node's share.
        keep = pre * (r.n_nodes - 1) / r.n_nodes
        r.kill["target_rel_mbit"] = 0.9 * keep
        r.kill["recover_rel_s"] = recovery(iv, t_kill, 0.9 * keep, args.kill_horizon)
        r.kill["back_rel_s"] = first_back(iv, t_kill, 0.9 * keep, args.kill_horizon)


# ---------------------------------------------------------------------------------------------

@dataclass
class CRun(Run):
    n_nodes: int = 0
    kill: dict | None = None
    recv_slowest_mbit: float | None = None  # slowest 1 s (sliding) on the receiver's clock
    recv_stalled_s: int | None = None  # whole seconds in which the receiver got nothing
    recv_mbit: list | None = None  # the receiver's (t, Mbit/s) every poll
    spread: dict | None = None  # node_spread() at the end of the run
    load: float | None = None  # 1-minute load average when the run started (a shared machine)
    rss_mib: dict | None = None  # peak resident memory (VmHWM) of each daemon, MiB, at the end
    down: dict | None = None  # bidir: the download's {"mbit", "bytes", "ok", "error"}; the upload is the run's own


def cluster_run(r: CRun, args, bins: Path, nk: NodeKeys, tmp: Path, n: int, specs: list[str]) -> None:
    r.started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    d = tmp / f"{r.scenario}-{r.contender}-r{r.rep}-{r.test}"
    d.mkdir(parents=True)
    paths = list(range(1, n + 1))
    c: Cluster | None = None
    try:
        if r.contender.startswith("direct-"):
            addr = f"{server_ip(1)}:{BENCH_PORT}"
        else:
            c = start_cluster(r.contender, n, args, bins, nk, d)
            addr = c.tunnel.addr
        r.load = os.getloadavg()[0]
        before, _ = sc.quiesce(paths)
        limit = 2 * args.time + 120
        if r.test == "bulk":
            rx = receiver_for(r, args, time.monotonic())
            rx.start()
            sc.finish_bulk(r, sc.start_bulk(r, args, bins, addr, args.time), limit)
            iv = rx.stop()
            r.recv_slowest_mbit, r.recv_stalled_s = slowest_second(iv)
            r.recv_mbit = [(s, round(b * 8 / max(e - s, 1e-9) / 1e6, 1)) for s, e, b in iv]
        elif r.test == "rr":
            sc.run_rr(r, args, bins, addr, limit)
        elif r.test == "bidir":
            bidir_run(r, args, bins, addr, limit)
        else:  # kill
            kill_run(r, args, bins, addr, c, n, specs, limit)
        if c is not None:
            r.spread = node_spread(c.status())
            r.rss_mib = peak_rss(c.tunnel)
        after, r.quiet = sc.quiesce(paths)
        sc.wire_ratios(r, args, sc.counters_delta(before, after))
        if c is not None:
            why = c.check_alive()
            if why:
                r.ok, r.error = False, f"tunnel died: {why}"
    except RuntimeError as e:
        r.ok, r.error = False, str(e)
    finally:
        if c is not None:
            c.tunnel.stop()
            r.log_notes = log_notes(c.tunnel)


def bidir_run(r: CRun, args, bins: Path, addr: str, limit: float) -> None:
    """An upload and a download through the tunnel at once, one bench connection each (both owned
    by node 1): the relays forward the client's sections to the owner and the owner's back over
    the same peer links. The upload's figures are the run's own, the download's go in `r.down`."""
    up_args = argparse.Namespace(**{**vars(args), "reverse": False})
    down_args = argparse.Namespace(**{**vars(args), "reverse": True})
    p_up = sc.start_bulk(r, up_args, bins, addr, args.time)
    p_down = sc.start_bulk(r, down_args, bins, addr, args.time)
    rd = CRun(r.scenario, r.contender, r.path, r.rep, r.test, r.spec, reverse=True, n_nodes=r.n_nodes)
    sc.finish_bulk(r, p_up, limit)
    sc.finish_bulk(rd, p_down, limit)
    r.down = {"mbit": rd.mbit, "bytes": rd.bytes, "ok": rd.ok, "error": rd.error}
    if r.ok and not rd.ok:
        r.ok, r.error = False, f"download: {rd.error}"


def peak_rss(t: Tunnel) -> dict[str, float]:
    """The peak resident memory (`VmHWM`, MiB) of every daemon of `t` still running: the memory
    its windows and buffers took at the worst moment of the run."""
    out = {}
    for name, p in t.procs:
        try:
            status = Path(f"/proc/{p.pid}/status").read_text()
        except OSError:
            continue
        m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        if m:
            out[name] = round(int(m.group(1)) / 1024, 1)
    return out


def log_notes(t: Tunnel) -> list[str]:
    """Per daemon log: how many WARN/ERROR lines, the first two, leaving out the socket buffer
    advice every daemon gives at start (`wanmux::host`: net.core.rmem_max is the machine's)."""
    out = []
    for lp in t.logs:
        try:
            lines = lp.read_text(errors="replace").splitlines()
        except OSError:
            continue
        bad = [benchlib.ANSI.sub("", x).strip() for x in lines
               if any(w in x for w in ("WARN", "ERROR", "panicked")) and "wanmux::host" not in x]
        if bad:
            out.append(f"{lp.name}: {len(bad)} warning/error lines, first: "
                       + " / ".join(b[:200] for b in bad[:2]))
    return out


def kill_run(r: CRun, args, bins: Path, addr: str, c: Cluster | None, n: int, specs: list[str],
             limit: float) -> None:
    """One bulk connection, the receiver's socket polled every 0.1 s; a third of the way in,
    SIGKILL the node to kill (never node 1, the owner)."""
    victim = args.kill_node or n
    argv = sc.bench_argv(bins, addr, args.time, args.reverse)
    t0 = time.monotonic()
    rx = receiver_for(r, args, t0)
    rx.start()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    PROCS.track("bulk client", p)
    if c is not None:
        time.sleep(args.time / 3)
        c.killed = victim
        c.nodes[victim].send_signal(signal.SIGKILL)
        t_kill = time.monotonic() - t0
    status, out, err = benchlib.communicate(p, limit)
    PROCS.forget(p)
    iv = rx.stop()
    sc.parse_bulk(r, status, out, err)
    r.recv_slowest_mbit, r.recv_stalled_s = slowest_second(iv)
    if r.ok and c is not None:
        rates = [sc.rate_mbit(s) or 0.0 for s in specs]
        line_left = sum(rates) - rates[victim - 1]
        analyse_kill(r, json.loads(out), iv, t_kill, line_left, args)
        if r.kill["lost_bytes"]:
            r.ok, r.error = False, f"{r.kill['lost_bytes']} bytes sent and not received"


# ---------------------------------------------------------------------------------------------
# Reports

def runs_of(runs: list[CRun], c: str, test: str) -> tuple[list[CRun], list[CRun]]:
    mine = [r for r in runs if r.contender == c and r.test == test]
    return mine, [r for r in mine if r.ok]


def bulk_table(runs, contenders, line) -> list[str]:
    lines = ["| contender | goodput Mbit/s, median | runs | % of the sum | slowest 1 s at the receiver, "
             "Mbit/s (per run) | stalled seconds | slowest of the sender's 1 s intervals | wire/goodput, "
             "data dir | peak RSS, client / node 1 / largest other node, MiB (median) | load avg (per run) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in contenders:
        mine, ok = runs_of(runs, c, "bulk")
        if not mine:
            continue
        if not ok:
            lines.append(f"| {LABELS[c]} | FAILED ({mine[0].error}) | | | | | | | | |")
            continue
        m = median([r.mbit for r in ok])
        failed = f", {len(mine) - len(ok)} failed" if len(ok) < len(mine) else ""
        lines.append(
            f"| {LABELS[c]} | **{m:.1f}** | {', '.join(f'{r.mbit:.1f}' for r in ok)}{failed} "
            f"| {100 * m / line:.0f}% | {', '.join(fmt(r.recv_slowest_mbit, '.1f') for r in ok)} "
            f"| {sum(r.recv_stalled_s or 0 for r in ok)} "
            f"| {', '.join(fmt(r.min_interval_mbit, '.1f') for r in ok)} "
            f"| {fmt(median([r.wire_data_ratio for r in ok if r.wire_data_ratio]), '.3f')} "
            f"| {rss_cell(ok)} "
            f"| {', '.join(fmt(r.load, '.2f') for r in ok)} |")
    return lines


def rss_cell(ok: list[CRun]) -> str:
    """Median peak RSS of the client, of node 1 (the owner) and of the largest other node."""
    runs = [r.rss_mib for r in ok if r.rss_mib]
    if not runs:
        return "-"
    client = median([m.get("wanmux-client", 0.0) for m in runs])
    owner = median([m.get("wanmux-server 1", 0.0) for m in runs])
    other = median([max((v for k, v in m.items() if k.startswith("wanmux-server ")
                         and k != "wanmux-server 1"), default=0.0) for m in runs])
    return f"{client:.0f} / {owner:.0f} / {other:.0f}"


def spread_table(runs, contenders, n) -> list[str]:
    lines = ["| contender | test | node 1's own links, MiB up | bytes relayed per node, MiB up / down "
             "(median; node 1 owns) | resent, MiB (median) |", "|---|---|---|---|---|"]
    for c in contenders:
        if c.startswith("direct"):
            continue
        for test in ("bulk", "bidir", "kill", "rr"):
            _, ok = runs_of(runs, c, test)
            ok = [r for r in ok if r.spread]
            if not ok:
                continue
            cells = []
            for k in range(2, n + 1):
                up = median([r.spread["relayed"].get(str(k), {}).get("sent", 0) / 2**20 for r in ok])
                down = median([r.spread["relayed"].get(str(k), {}).get("received", 0) / 2**20 for r in ok])
                cells.append(f"node {k}: {up:.0f} / {down:.0f}")
            resent = median([sum(s["resent"] for s in r.spread["sessions"].values()) / 2**20 for r in ok])
            # Node 1's session at the client sent on its own links and on the sub-links through the
            # other nodes' links: what the others relayed is the latter.
            own = median([(r.spread["sessions"].get("node 1", {}).get("sent", 0)
                           - sum(v.get("sent", 0) for k, v in r.spread["relayed"].items() if k != "1"))
                          / 2**20 for r in ok])
            lines.append(f"| {LABELS[c]} | {test} | {fmt(own, '.0f')} | {'; '.join(cells)} "
                         f"| {fmt(resent, '.1f')} |")
    return lines


def bidir_table(runs, contenders, line) -> list[str]:
    lines = ["| contender | upload Mbit/s, median (runs) | download Mbit/s, median (runs) | % of the sum, "
             "up / down | verified | load avg (per run) |", "|---|---|---|---|---|---|"]
    for c in contenders:
        mine, ok = runs_of(runs, c, "bidir")
        if not mine:
            continue
        if not ok:
            lines.append(f"| {LABELS[c]} | FAILED ({mine[0].error}) | | | | |")
            continue
        up = median([r.mbit for r in ok])
        down = median([r.down["mbit"] for r in ok])
        failed = f"; {len(mine) - len(ok)} failed" if len(ok) < len(mine) else ""
        downs = ", ".join(f"{r.down['mbit']:.1f}" for r in ok)
        lines.append(
            f"| {LABELS[c]} | **{up:.1f}** ({', '.join(f'{r.mbit:.1f}' for r in ok)}) "
            f"| **{down:.1f}** ({downs}) "
            f"| {100 * up / line:.0f}% / {100 * down / line:.0f}% | {len(ok)} of {len(mine)} both ways{failed} "
            f"| {', '.join(fmt(r.load, '.2f') for r in ok)} |")
    return lines


def kill_table(runs, contenders) -> list[str]:
    lines = ["| contender | run | verified, bytes lost | Mbit/s in the 3 s before | lowest 1 s in the 3 s before, Mbit/s "
             "| longest gap after, s | lowest 1 s after, Mbit/s | mean Mbit/s from 1 s after | back to 90% of the remaining sum "
             "| back to 90% of 4/5 of the rate before | last 1 s below 90% of the remaining sum "
             "| last 1 s below 90% of 4/5 of the rate before | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in contenders:
        mine, _ = runs_of(runs, c, "kill")
        for r in mine:
            k = r.kill or {}
            if not r.ok and not k:
                lines.append(f"| {LABELS[c]} | {r.rep + 1} | FAILED: {r.error} | | | | | | | | | | |")
                continue
            rec, rel = rec_cell(k.get("recover_s")), rec_cell(k.get("recover_rel_s"))
            back = rec_cell(k.get("back_s")) if "back_s" in k else "-"
            back_rel = rec_cell(k.get("back_rel_s")) if "back_rel_s" in k else "-"
            lines.append(
                f"| {LABELS[c]} | {r.rep + 1} | {'yes' if r.ok else 'NO'}, {k.get('lost_bytes', '-')} "
                f"| {fmt(k.get('before_mbit'), '.1f')} | {fmt(k.get('min_before_mbit'), '.1f')} "
                f"| {fmt(k.get('gap_s'), '.1f')} "
                f"| {fmt(k.get('min_after_mbit'), '.1f')} | {fmt(k.get('mean_after_mbit'), '.1f')} "
                f"| {back} (target {k.get('target_mbit', 0):.0f}) | {back_rel} "
                f"(target {fmt(k.get('target_rel_mbit'), '.0f')}) | {rec} | {rel} | {fmt(r.load, '.2f')} |")
    return lines


def rr_table(runs, contenders) -> list[str]:
    lines = ["| contender | rr p50 ms | rr p99 ms | runs (p50 / p99) | bulk Mbit/s beside it "
             "| round trips per run |", "|---|---|---|---|---|---|"]
    for c in contenders:
        mine, ok = runs_of(runs, c, "rr")
        if not mine:
            continue
        if not ok:
            lines.append(f"| {LABELS[c]} | FAILED ({mine[0].error}) | | | | |")
            continue
        note = sum(1 for r in ok if r.rr_outlived_bulk)
        lines.append(
            f"| {LABELS[c]} | **{median([r.rr_p50_ms for r in ok]):.1f}** "
            f"| **{median([r.rr_p99_ms for r in ok]):.1f}** "
            f"| {'; '.join(f'{r.rr_p50_ms:.1f} / {r.rr_p99_ms:.1f}' for r in ok)} "
            f"| {fmt(median([r.mbit for r in ok]), '.1f')} "
            f"| {','.join(str(r.rr_count) for r in ok)}"
            f"{f' ({note} outlived the bulk)' if note else ''} |")
    return lines


def cmd_cluster(args, bins, keys, tmp, command, started) -> tuple[str, dict]:
    scenario = f"cluster-{args.scenario}"
    specs = sc.lab("paths", scenario).splitlines()
    n = len(specs)
    tests = args.tests or SCENARIO_TESTS[scenario]
    if "kill" in tests and not 2 <= (args.kill_node or n) <= n:
        raise SystemExit(f"--kill-node: {scenario} has nodes 1-{n}, and node 1 owns the connection")
    nk = NodeKeys(keys, bins, tmp / "keys", n)
    runs: list[CRun] = []
    sc.lab_up(specs, args.seed)
    sc.start_bench_servers(bins, n, tmp)
    line = sum(sc.rate_mbit(s) or 0 for s in specs)
    # Neither a kill nor two transfers at once is run for direct TCP (an iperf3 server takes
    # one test at a time).
    items = [(t, c) for t in tests for c in args.contenders
             if not (t in ("kill", "bidir") and c.startswith("direct"))]
    total = len(items) * args.repeat
    i = 0
    try:
        for rep in range(args.repeat):
            s = rep % len(args.contenders)
            order = args.contenders[s:] + args.contenders[:s]
            for t in tests:
                for c in order:
                    if t in ("kill", "bidir") and c.startswith("direct"):
                        continue
                    i += 1
                    k = 1 if c.startswith("direct") else ALL_PATHS
                    r = CRun(scenario, c, k, rep, t, specs[0] if k == 1 else " | ".join(specs),
                             reverse=args.reverse, n_nodes=n)
                    try:
                        cluster_run(r, args, bins, nk, tmp, n, specs)
                    except (OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
                        r.ok, r.error = False, f"runner error: {type(e).__name__}: {e}"
                    runs.append(r)
                    log(f"[{i}/{total}] {scenario} rep {rep + 1} {t} {c}: {describe(r)}")
    except KeyboardInterrupt:
        log("interrupted; reporting what was measured")
    text = [f"## Cluster scenario {args.scenario} (issue 20)", ""]
    text += [f"Path {k} (node {k}, server 10.77.{1 + k}.2): `{s}`  " for k, s in enumerate(specs, 1)]
    text += ["", f"Sum of the paths' rates: {line:g} Mbit/s.", ""]
    text += sc.header(args, command, started, bins)
    text += ["", f"Cluster: {n} `wanmux-server` nodes, one per server namespace, client links on "
             f"`10.77.(1+K).2:{WANMUX_PORT}` (QUIC accepted), `[cluster] listen` on `10.77.(1+K).2:"
             f"{PEER_PORT}` with every other node as `[[peer]]` (peer links are TCP, over the router's "
             f"unemulated hop); the client lists every node, `[cluster] owner = \"first\"` (node 1 "
             f"owns every connection and connects to its local `wanmux-bench server`), `[links] count "
             f"= {args.links}` per node, `transport = \"{args.transport}\"`; the `[[map]]`'s `spread` "
             "is the contender's. Direct TCP: `iperf3 -C bbr` over path 1 alone.", ""]
    if "bulk" in tests:
        text += ["### One connection, bulk", ""] + bulk_table(runs, args.contenders, line) + [""]
    if "bidir" in tests:
        text += ["### An upload and a download at once", "",
                 f"Two bench connections through the tunnel for {args.time:g} s, one each way "
                 "(`wanmux-bench client -P 1` and `-R`), both owned by node 1: the relays forward "
                 "the client's sections to the owner and the owner's back over the same peer "
                 "links. Each direction's rate against the paths' sum.", ""]
        text += bidir_table(runs, args.contenders, line) + [""]
    if "kill" in tests:
        text += [f"### Node {args.kill_node or n} (not the owner) SIGKILLed {args.time / 3:.1f} s into a "
                 f"{args.time:g} s bulk connection", "",
                 "The receiving application's socket (" + ("the bench client's, client namespace"
                 if args.reverse else "the bench server's, node 1's namespace") + ") polled every "
                 "0.1 s (`ss -ti`, `bytes_received`), rates in 1 s windows sliding by a poll. "
                 "Gap: the longest stretch without a byte that began within "
                 f"{args.kill_horizon:g} s after the kill. Back: from the kill to the start of the first "
                 f"1 s window at or above the target that began within {args.kill_horizon:g} s after it. "
                 "Last below: from the kill to the end of the last 1 s window below the target that "
                 f"began within {args.kill_horizon:g} s after the kill "
                 "(0 if none was below, 'not reached' if none reached it, 'not back' if the last one "
                 "was still below); any later dip of the steady state moves it, so the lowest 1 s "
                 "window of the 3 s before the kill is given for comparison. A run "
                 "whose rate before the kill was below the target shows the dip only in the columns "
                 "against the rate before.", ""] + kill_table(runs, args.contenders) + [""]
    if "rr" in tests:
        text += ["### rr beside a bulk transfer", "",
                 f"As `run`'s rr test: `wanmux-bench rr` (64 B each way) on a second connection through "
                 f"the same tunnel, {sc.rr_delay(args):g} s after a bulk connection of {2 * args.time:g} s "
                 "(direct TCP: beside an iperf3 bulk connection over path 1). Target: p99 at most path "
                 f"1's RTT + 20 ms = {1000 * sc.rtt_s(specs[0]) + 20:.0f} ms.", ""]
        text += rr_table(runs, args.contenders) + [""]
    text += ["### Where the bytes went", "", "From `wanmux-client status --json` at the end of each "
             "run: what node 1's own links carried (node 1's session less what the other nodes relayed), "
             "per node other than the owner the section bytes it relayed for node 1 (up: client "
             "to owner, down: owner to client), and the bytes the client's engines sent again after a "
             "link died.", ""] + spread_table(runs, args.contenders, n)
    n_ = sc.notes(runs)
    if n_:
        text += ["", "Notes:", *n_]
    data = {"mode": "cluster", "scenario": scenario, "specs": specs, "command": command,
            "started": started.isoformat(), "args": {k: str(v) for k, v in vars(args).items()},
            "versions": sc.versions(bins), "runs": [r.__dict__ for r in runs]}
    return "\n".join(text) + "\n", data


def describe(r: CRun) -> str:
    if not r.ok:
        return f"FAILED: {r.error}"
    load = f", load {r.load or 0:.2f}"
    if r.test == "bidir" and r.down:
        return f"up {r.mbit:.1f} Mbit/s, down {r.down['mbit']:.1f} Mbit/s, both verified{load}"
    if r.test == "rr":
        return (f"rr p50 {r.rr_p50_ms:.1f} ms p99 {r.rr_p99_ms:.1f} ms ({r.rr_count} rt), bulk "
                f"{r.mbit:.1f} Mbit/s{load}")
    if r.test == "kill" and r.kill:
        k = r.kill
        return (f"{r.mbit:.1f} Mbit/s, lost {k['lost_bytes']} B, before {fmt(k['before_mbit'], '.1f')}, "
                f"gap {k['gap_s']} s, lowest 1 s after {fmt(k['min_after_mbit'], '.1f')}, back after {k.get('back_s')} s "
                f"(rel {k.get('back_rel_s')} s), last below at {k['recover_s']} s "
                f"(rel {k.get('recover_rel_s')} s){load}")
    return (f"{r.mbit:.1f} Mbit/s, slowest 1 s at the receiver {fmt(r.recv_slowest_mbit, '.1f')} "
            f"(sender's intervals {fmt(r.min_interval_mbit, '.1f')}), stalled s {r.recv_stalled_s}{load}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", choices=["G", "H"], help="cluster-G (5 x 50 Mbit/s) or cluster-H (3 unequal)")
    ap.add_argument("--time", type=float, default=20.0, help="seconds per run (default 20)")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--reverse", action="store_true", help="server -> client (`-R`)")
    ap.add_argument("--contenders", default=",".join(CONTENDERS),
                    help=f"comma-separated subset of {','.join(CONTENDERS)}")
    ap.add_argument("--tests", default="",
                    help="comma-separated subset of bulk,bidir,kill,rr (default: G bulk,kill; H bulk,rr)")
    ap.add_argument("--links", type=int, default=2, help="[links] count per node (default 2)")
    ap.add_argument("--transport", default="quic", choices=["quic", "tcp", "auto"],
                    help="[links] transport (default quic, what the default auto picks here)")
    ap.add_argument("--kill-node", type=int, default=KILL_NODE_DEFAULT,
                    help="the node the kill test SIGKILLs (default the last; never 1, the owner)")
    ap.add_argument("--kill-horizon", type=float, default=5.0,
                    help="seconds after the kill the recovery is looked for in (default 5)")
    ap.add_argument("--rr-count", type=int, default=0, help="round trips per rr run (default: fill --time)")
    ap.add_argument("--wanmux-cc", default="bbr", help="congestion control of TCP links (default bbr)")
    ap.add_argument("--stream-window", type=int, default=64 << 20)
    ap.add_argument("--session-window", type=int, default=128 << 20)
    ap.add_argument("--seed", type=int, default=1, help="seed of the emulators (default 1)")
    ap.add_argument("--bin-dir", type=Path, default=None)
    ap.add_argument("--out-dir", type=Path, default=sc.HERE / "out")
    ap.add_argument("--keep-tmp", action="store_true", help="keep configs and daemon logs")
    args = ap.parse_args()
    args.warmup = 0.0
    args.capture = False
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    args.tests = [t.strip() for t in args.tests.split(",") if t.strip()]
    if [c for c in args.contenders if c not in CONTENDERS] or \
            [t for t in args.tests if t not in ("bulk", "bidir", "kill", "rr")]:
        ap.error("unknown contender or test")
    if args.kill_node == 1:
        ap.error("node 1 owns the connection: --kill-node must be another")
    if os.geteuid() != 0:
        ap.error("needs root (network namespaces)")
    bins = sc.find_bins(args)
    sc.ARGS_TIME[0] = args.time
    sc.LAB_ENV.update(os.environ, WANLAB_LINK_BIN=str(bins / "wanlab-link"))
    command = " ".join(shlex.quote(a) for a in ["bench/wanlab/lab.sh", "cluster", *sys.argv[1:]])
    started = dt.datetime.now(dt.timezone.utc)
    benchlib.catch_signals()
    tmp = Path(tempfile.mkdtemp(prefix="wanlab-cluster-"))
    text = data = None
    try:
        keys = sc.Keys(bins, tmp / "keys")
        text, data = cmd_cluster(args, bins, keys, tmp, command, started)
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        PROCS.stop_all()
        subprocess.run(["bash", str(sc.LAB), "down"], env=sc.LAB_ENV, stdout=subprocess.DEVNULL)
        if args.keep_tmp:
            log(f"configs and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if text is None:
        return 130
    print(text)
    sc.write_out(args, text, data, f"cluster-{args.scenario}-{started:%Y%m%dT%H%M%SZ}")
    runs = data["runs"]
    if any(r["status"] == sc.EXIT_VERIFY for r in runs):
        log("DATA VERIFICATION FAILED in at least one run")
        return sc.EXIT_VERIFY
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
