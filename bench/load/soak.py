#!/usr/bin/env python3
"""Soak: a one-node tunnel, or a cluster of nodes, on loopback under continuous churn for a long
time.

Worker threads open connections through the tunnel to an echo service and close them again, for
`--minutes`: most send a random amount of random data (1 byte to `--max-size`, log-uniform),
read it all back and compare it byte for byte; some hold an idle connection for a few seconds;
some reset their connection (RST) at a random point. Meanwhile one of the tunnel's TCP links is
aborted (`ss -K`, both ends get a reset) every few seconds and all of them at once every
`--kill-all-every` seconds, so the client keeps redialling and the streams keep moving between
links and resuming. With `--nodes N` (2 or more) the tunnel is a cluster of N nodes on
127.0.0.1, every node a peer of every other, the map striping every connection over all of them
(`spread = "stripe"`): the killer then picks among the client's links to every node and the
peer links between the nodes (which carry the relayed frames of the connections each node does
not own), and kills all of both at once every `--kill-all-every` seconds; `--node-kill-every`
also kills whole nodes (never node 1, which then owns every connection) and starts them again.
Every `--sample` seconds the daemons' VmRSS and open file descriptors are recorded. At the end
the load stops, the tunnel settles, and:

- no connection may have received bytes that differ from what it sent (a mismatch), nor have
  failed in any other way (an error, an early end, or a stall of `--stall` seconds) except the
  ones it reset itself;
- RSS must be flat after the warm-up (`--warmup` minutes): the least-squares slope of each
  daemon's RSS over the rest of the run, and its values at the end of the warm-up and at the end;
- the daemons' open file descriptors once the load stopped must be what they were before it.

Writes `samples.json`, `soak.svg` (RSS and fds against time) and the daemons' logs to `--out`,
and a summary on stdout. Needs root for `ss -K` (or CAP_NET_ADMIN).

    python3 bench/load/soak.py --minutes 30 --out /tmp/soak
    python3 bench/load/soak.py --nodes 3 --minutes 30 --out /tmp/soak-cluster
    python3 bench/load/soak.py --plot /tmp/soak/samples.json -o bench/load/soak.svg

Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import math
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from html import escape
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import benchlib  # noqa: E402  (common put its directory on the path)

log = benchlib.logger("soak")
PROCS = benchlib.Procs(log)
# The names of the nodes the node killer has down: not sampled, and their exit is no failure.
DOWN: set[str] = set()


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.c = {"ok": 0, "idle_ok": 0, "reset_by_us": 0, "failed": 0, "mismatch": 0,
                  "bytes": 0, "links_killed": 0, "peer_links_killed": 0,
                  "all_links_killed": 0, "kill_timeout": 0, "nodes_killed": 0}
        self.failures: list[str] = []
        # QUIC: seconds from a kill's drop rule until both ends had declared its links dead.
        self.dead_after: list[float] = []

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.c[key] += n

    def fail(self, key: str, why: str) -> None:
        with self.lock:
            self.c[key] += 1
            if len(self.failures) < 50:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {key}: {why}")

    def snapshot(self) -> dict:
        with self.lock:
            return dict(self.c)


def rst_close(s: socket.socket) -> None:
    """Closes `s` with a reset (SO_LINGER 0)."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()


def one_connection(addr: tuple[str, int], rng: random.Random, args, stats: Stats) -> None:
    kind = rng.random()
    size = int(math.exp(rng.uniform(0, math.log(args.max_size))))
    data = rng.randbytes(size)
    reset_at = None
    if kind < args.reset_fraction:
        reset_at = rng.randrange(0, size + 1)  # bytes sent before the reset
    idle = args.reset_fraction <= kind < args.reset_fraction + args.idle_fraction
    try:
        s = socket.create_connection(addr, timeout=args.stall)
    except OSError as e:
        stats.fail("failed", f"connect: {e}")
        return
    s.settimeout(args.stall)
    got = bytearray()
    send_err: list[BaseException] = []
    to_send = data if reset_at is None else data[:reset_at]

    def sender() -> None:
        try:
            if idle:
                half = len(to_send) // 2
                s.sendall(to_send[:half])
                time.sleep(rng.uniform(1, 8))
                s.sendall(to_send[half:])
            else:
                s.sendall(to_send)
            if reset_at is None:
                s.shutdown(socket.SHUT_WR)
        except OSError as e:
            send_err.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    try:
        want = len(to_send)
        while True:
            if reset_at is not None and len(got) >= rng.randrange(0, want + 1):
                break
            chunk = s.recv(262144)
            if not chunk:
                break
            got += chunk
            if reset_at is not None and len(got) >= want:
                break
    except socket.timeout:
        t.join(1)
        stats.fail("failed", f"stalled {args.stall:.0f} s after {len(got)} of {size} bytes "
                             f"(idle={idle})")
        rst_close(s)
        return
    except OSError as e:
        t.join(1)
        if got != data[:len(got)]:
            stats.fail("mismatch", f"{len(got)} bytes received differ from what was sent")
        else:
            stats.fail("failed", f"recv: {e} after {len(got)} of {size} bytes")
        rst_close(s)
        return
    if reset_at is not None:
        rst_close(s)
        t.join(args.stall)
        if got != data[:len(got)]:
            stats.fail("mismatch", f"{len(got)} bytes received before the reset differ")
        else:
            stats.add("reset_by_us")
            stats.add("bytes", len(got))
        return
    t.join(args.stall)
    s.close()
    if send_err:
        stats.fail("failed", f"send: {send_err[0]}")
    elif got != data:
        if got == data[:len(got)]:
            stats.fail("failed", f"early end: {len(got)} of {size} bytes")
        else:
            stats.fail("mismatch", f"received {len(got)} bytes that differ from the {size} sent")
    else:
        stats.add("idle_ok" if idle else "ok")
        stats.add("bytes", size)


def worker(i: int, addr, args, stats: Stats, stop: threading.Event) -> None:
    rng = random.Random(args.seed * 1000 + i)
    while not stop.is_set():
        one_connection(addr, rng, args, stats)


def daemons(t) -> list[tuple[str, "subprocess.Popen"]]:
    """The tunnel's daemons by name: the client, then the server (or node1 .. nodeN)."""
    if isinstance(t, common.ClusterTunnel):
        return [("client", t.client)] + [(f"node{k}", p) for k, p in enumerate(t.nodes, 1)]
    return [("client", t.client), ("server", t.server)]


def daemon_logs(t) -> list[tuple[str, Path]]:
    """Each daemon's log by name (`t.logs` holds the server's or the nodes' first)."""
    names = [n for n, _ in daemons(t)]
    return list(zip(names[1:] + names[:1], t.logs))


def links_up(t) -> int:
    if isinstance(t, common.ClusterTunnel):
        return common.cluster_links_up(t)
    return common.links_up(t)


def kill_in_cluster(t: common.ClusterTunnel, rng: random.Random, kill_all: bool,
                    stats: Stats) -> None:
    """Kills one of the client's links to any node or one peer link between two nodes, chosen
    alike; or, with `kill_all`, every one of both."""
    links = [(p, lp) for p in t.link_ports for lp in common.link_sockets(p)]
    peers = common.peer_sockets(t)
    if kill_all:
        stats.add("links_killed", sum(common.kill_link(p, lp) for p, lp in links))
        stats.add("peer_links_killed", sum(common.kill_link(p, lp) for p, lp in peers))
        stats.add("all_links_killed")
        return
    every = [("links_killed", c) for c in links] + [("peer_links_killed", c) for c in peers]
    if every:
        key, (p, lp) = rng.choice(every)
        if common.kill_link(p, lp):
            stats.add(key)


def node_killer(t: common.ClusterTunnel, args, stats: Stats, stop: threading.Event) -> None:
    """Every `--node-kill-every` seconds (on average) kills a node other than node 1, the owner
    of every connection (`cluster.owner = "first"`), with SIGKILL, and starts it again
    `--node-down` seconds later: what the connections striped through it carried goes out again
    on the other nodes' links, and none may fail."""
    rng = random.Random(args.seed + 1)
    while not stop.wait(rng.uniform(args.node_kill_every / 2, args.node_kill_every * 1.5)):
        k = rng.randrange(2, len(t.nodes) + 1)
        DOWN.add(f"node{k}")
        t.nodes[k - 1].kill()
        t.nodes[k - 1].wait()
        stats.add("nodes_killed")
        stop.wait(args.node_down)
        common.restart_node(t, k)
        DOWN.discard(f"node{k}")


def killer(t, args, stats: Stats, stop: threading.Event) -> None:
    rng = random.Random(args.seed)
    next_all = time.monotonic() + args.kill_all_every
    quic = QuicKiller(t, args, stats) if t.transport == "quic" else None
    try:
        while not stop.wait(rng.uniform(args.kill_every / 2, args.kill_every * 1.5)):
            kill_all = time.monotonic() >= next_all
            if kill_all:
                next_all += args.kill_all_every
            if isinstance(t, common.ClusterTunnel):
                kill_in_cluster(t, rng, kill_all, stats)
                continue
            if quic:
                quic.kill(rng, kill_all, stop)
                continue
            links = common.link_sockets(t.link_port)
            if kill_all:
                n = sum(common.kill_link(t.link_port, p) for p in links)
                stats.add("all_links_killed")
                stats.add("links_killed", n)
            elif links:
                if common.kill_link(t.link_port, rng.choice(links)):
                    stats.add("links_killed")
    finally:
        if quic:
            quic.close()


# ---------------------------------------------------------------------------------------------
# Killing QUIC links

class LinkLog:
    """Counts the "link ended" lines of a daemon's log as it grows, and their end reasons."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, errors="replace")
        self.ended = 0
        self.reasons: dict[str, int] = {}

    def poll(self) -> int:
        for line in self.f.readlines():
            if "link ended" not in line:
                continue
            self.ended += 1
            why = benchlib.ANSI.sub("", line).split("end=", 1)[-1].split(" stats=")[0].strip()
            self.reasons[why] = self.reasons.get(why, 0) + 1
        return self.ended


# struct sock_filter: the classic BPF program of `udp dst port PORT` over IPv4 on an Ethernet
# (or loopback) frame, as `tcpdump -dd` prints it; the port is filled in.
def _udp_dport_filter(port: int) -> bytes:
    prog = [
        (0x28, 0, 0, 12),        # ldh [12]               ethertype
        (0x15, 0, 8, 0x0800),    # jeq IPv4, else drop
        (0x30, 0, 0, 23),        # ldb [23]               IP protocol
        (0x15, 0, 6, 17),        # jeq UDP, else drop
        (0x28, 0, 0, 20),        # ldh [20]               flags and fragment offset
        (0x45, 4, 0, 0x1FFF),    # jset fragment: drop
        (0xB1, 0, 0, 14),        # ldxb 4*([14]&0xf)      IP header length
        (0x48, 0, 0, 16),        # ldh [x+16]             UDP destination port
        (0x15, 0, 1, port),      # jeq PORT, else drop
        (0x06, 0, 0, 0x40000),   # ret: take the packet
        (0x06, 0, 0, 0),         # ret 0: drop
    ]
    return b"".join(struct.pack("HBBI", *ins) for ins in prog)


# The length of the connection ids a node gives its QUIC connections (`NODE_CID_LEN` in
# core/src/quic/cid.rs): the bytes after a short header's first byte in the client's packets.
NODE_CID_LEN = 4


class QuicKiller:
    """Kills QUIC links with nftables: a QUIC link has no connection the kernel could abort
    (`ss -K`), so one link's packets are told apart by their destination connection id (the
    `NODE_CID_LEN` bytes after a short header's first byte, chosen by the node). To kill one
    link, the killer watches the UDP packets to the node for `--sniff` seconds, picks one of
    the connection ids they carried, and drops the client's packets with it at the node's
    input until both daemons logged a link's end; to kill all, it drops every UDP packet to
    the node's port until every link ended at both ends. Then the rule goes and the client's
    redials (new connections, new ids) get through."""

    TABLE = f"wanmux_soak_{os.getpid()}"

    def __init__(self, t: common.Tunnel, args, stats: Stats) -> None:
        self.t, self.args, self.stats = t, args, stats
        self.logs = [LinkLog(t.logs[0]), LinkLog(t.logs[1])]  # server, client
        self.nft(f"add table inet {self.TABLE}")
        self.nft(f"add chain inet {self.TABLE} input "
                 "{ type filter hook input priority -10 ; policy accept ; }")

    @staticmethod
    def nft(cmd: str) -> str:
        r = subprocess.run(["nft", "-a", "-e"] + cmd.split(), capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"nft {cmd}: {r.stderr.strip()}")
        return r.stdout

    def close(self) -> None:
        subprocess.run(["nft", "delete", "table", "inet", self.TABLE], capture_output=True)

    def connection_ids(self) -> dict[bytes, int]:
        """The destination connection ids of the short-header QUIC packets the client sent to
        the node in `--sniff` seconds, with their packet counts."""
        ids: dict[bytes, int] = {}
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as s:
            code = _udp_dport_filter(self.t.link_port)
            buf = ctypes.create_string_buffer(code)
            fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(buf))
            s.setsockopt(socket.SOL_SOCKET, 26, fprog)  # SO_ATTACH_FILTER
            s.bind(("lo", 0))
            s.settimeout(0.1)
            end = time.monotonic() + self.args.sniff
            while time.monotonic() < end:
                try:
                    pkt = s.recv(64)
                except socket.timeout:
                    continue
                if len(pkt) < 14 + 20 + 8 + 9 or pkt[12:14] != b"\x08\x00":
                    continue
                ihl = (pkt[14] & 0x0F) * 4
                udp = 14 + ihl
                if int.from_bytes(pkt[udp + 2:udp + 4], "big") != self.t.link_port:
                    continue
                q = pkt[udp + 8:udp + 9 + NODE_CID_LEN]
                if len(q) == 1 + NODE_CID_LEN and q[0] & 0xC0 == 0x40:  # short header, fixed bit
                    ids[q[1:]] = ids.get(q[1:], 0) + 1
        return ids

    def ended(self) -> tuple[int, int]:
        return self.logs[0].poll(), self.logs[1].poll()

    def kill(self, rng: random.Random, kill_all: bool, stop: threading.Event) -> None:
        port = self.t.link_port
        if kill_all:
            n = common.links_up(self.t)
            rule = f"udp dport {port} drop"
        else:
            ids = self.connection_ids()
            if not ids:
                return
            n = 1
            cid = rng.choice(sorted(ids))
            rule = f"udp dport {port} @th,72,{8 * NODE_CID_LEN} 0x{cid.hex()} drop"
        if n <= 0:
            return
        before = self.ended()
        out = self.nft(f"add rule inet {self.TABLE} input {rule}")
        handle = out.rsplit("# handle", 1)[1].split()[0]
        t0 = time.monotonic()
        try:
            while True:
                now = self.ended()
                if all(a - b >= n for a, b in zip(now, before)):
                    break
                if time.monotonic() - t0 > self.args.kill_timeout:
                    self.stats.fail("kill_timeout", f"{n} link(s) not declared dead at both ends "
                                    f"{self.args.kill_timeout:.0f} s after `{rule}` (ends "
                                    f"logged: server {now[0] - before[0]}, client "
                                    f"{now[1] - before[1]})")
                    return
                time.sleep(0.05)
        finally:
            self.nft(f"delete rule inet {self.TABLE} input handle {handle}")
        with self.stats.lock:
            self.stats.dead_after.append(time.monotonic() - t0)
        self.stats.add("links_killed", n)
        if kill_all:
            self.stats.add("all_links_killed")


def sample(t, t0: float, stats: Stats, phase: str) -> dict:
    s = {"t": round(time.monotonic() - t0, 1), "phase": phase, "load": common.loadavg()}
    for name, p in daemons(t):
        if name in DOWN:
            s[f"{name}_rss_kib"] = s[f"{name}_fds"] = s[f"{name}_threads"] = None
            continue
        s[f"{name}_rss_kib"] = common.rss_kib(p.pid)
        s[f"{name}_fds"] = common.fd_count(p.pid)
        s[f"{name}_threads"] = common.threads(p.pid)
    s["links"] = links_up(t)
    s.update(stats.snapshot())
    return s


def slope_kib_per_min(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return None if sxx == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx * 60


def summarize(samples: list[dict], meta: dict, names: list[str]) -> dict:
    warm = meta["warmup_s"]
    run = [s for s in samples if s["phase"] == "load" and s["t"] >= warm]
    base = next(s for s in samples if s["phase"] == "before")
    after = samples[-1]
    out = {"counts": {k: after.get(k, 0) for k in (
        "ok", "idle_ok", "reset_by_us", "failed", "mismatch", "bytes", "links_killed",
        "peer_links_killed", "all_links_killed", "kill_timeout", "nodes_killed")}}
    for d in names:
        up = [s for s in run if s[f"{d}_rss_kib"] is not None]  # a killed node's, not while down
        xs = [s["t"] for s in up]
        ys = [s[f"{d}_rss_kib"] for s in up]
        out[d] = {
            "rss_before_kib": base[f"{d}_rss_kib"],
            "rss_end_of_warmup_kib": ys[0] if ys else None,
            "rss_end_of_load_kib": ys[-1] if ys else None,
            "rss_max_kib": max(ys) if ys else None,
            "rss_after_kib": after[f"{d}_rss_kib"],
            "rss_slope_kib_per_min": slope_kib_per_min(xs, ys),
            "fds_before": base[f"{d}_fds"],
            "fds_after": after[f"{d}_fds"],
            "fds_max": max(s[f"{d}_fds"] for s in samples if s[f"{d}_fds"] is not None),
        }
    return out


# ---------------------------------------------------------------------------------------------
# The plot

def plot(samples: list[dict], meta: dict, path: Path) -> None:
    W, H = 820, 560
    L, R = 80, 30
    panels = [("RSS (MiB)", "rss_kib", 1 / 1024, 50, 270), ("open fds", "fds", 1, 330, 500)]
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    names = meta.get("daemons", ["client", "server"])
    colours = {d: palette[i % len(palette)] for i, d in enumerate(names)}
    tmax = max(s["t"] for s in samples) / 60 or 1
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
         f'font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">'
         f'{escape(meta["title"])}</text>',
         f'<text x="{W / 2}" y="37" text-anchor="middle" fill="#555">'
         f'{escape(meta["subtitle"])}</text>']

    def x(tmin: float) -> float:
        return L + (W - L - R) * tmin / tmax

    for label, key, scale, top, bottom in panels:
        vals = [s[f"{d}_{key}"] * scale for s in samples for d in colours
                if s.get(f"{d}_{key}") is not None]
        vmax = max(vals) * 1.15 or 1
        step = nice_step(vmax / 5)

        def y(v: float, top=top, bottom=bottom, vmax=vmax) -> float:
            return bottom - (bottom - top) * v / vmax

        o.append(f'<rect x="{L}" y="{top}" width="{W - L - R}" height="{bottom - top}" '
                 f'fill="none" stroke="#999"/>')
        v = 0.0
        while v <= vmax:
            o.append(f'<line x1="{L}" x2="{W - R}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                     f'stroke="#eee"/><text x="{L - 6}" y="{y(v) + 4:.1f}" '
                     f'text-anchor="end">{v:g}</text>')
            v += step
        o.append(f'<text x="18" y="{(top + bottom) / 2}" transform="rotate(-90 18 '
                 f'{(top + bottom) / 2})" text-anchor="middle">{label}</text>')
        # The warm-up and the settle phase, shaded.
        wx = x(meta["warmup_s"] / 60)
        o.append(f'<rect x="{L}" y="{top}" width="{wx - L:.1f}" height="{bottom - top}" '
                 f'fill="#f3f3f3"/>')
        end = [s["t"] for s in samples if s["phase"] == "load"]
        if end:
            ex = x(max(end) / 60)
            o.append(f'<rect x="{ex:.1f}" y="{top}" width="{W - R - ex:.1f}" '
                     f'height="{bottom - top}" fill="#eef6ee"/>')
        for d, c in colours.items():
            pts = " ".join(f"{x(s['t'] / 60):.1f},{y(s[f'{d}_{key}'] * scale):.1f}"
                           for s in samples if s.get(f"{d}_{key}") is not None)
            o.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="1.5"/>')
        tick = nice_step(tmax / 8)
        m = 0.0
        while m <= tmax + 1e-9:
            o.append(f'<text x="{x(m):.1f}" y="{bottom + 16}" text-anchor="middle">{m:g}</text>')
            m += tick
    o.append(f'<text x="{(L + W - R) / 2}" y="{H - 22}" text-anchor="middle">minutes '
             f'(grey: warm-up; green: load stopped, tunnel idle)</text>')
    lx = L + 10
    for d, c in colours.items():
        o.append(f'<line x1="{lx}" x2="{lx + 20}" y1="{H - 6}" y2="{H - 6}" stroke="{c}" '
                 f'stroke-width="2"/><text x="{lx + 25}" y="{H - 2}">wanmux-{d}</text>')
        lx += 140
    o.append("</svg>")
    path.write_text("\n".join(o) + "\n")


def nice_step(raw: float) -> float:
    if raw <= 0:
        return 1
    e = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * e:
            return m * e
    return 10 * e


# ---------------------------------------------------------------------------------------------

def run(args) -> int:
    benchlib.catch_signals()
    common.raise_nofile()
    bins = common.bins_dir(args.bins)
    out = args.out or Path(tempfile.mkdtemp(prefix="wanmux-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    log(f"output in {out}")
    stats = Stats()
    samples: list[dict] = []
    meta = {"commit": benchlib.git_head(), "started": dt.datetime.now(dt.timezone.utc)
            .strftime("%Y-%m-%d %H:%M UTC"), "args": {k: str(v) for k, v in vars(args).items()},
            "warmup_s": args.warmup * 60, "bins": str(bins)}
    rc = 0
    stop = threading.Event()
    ths: list[threading.Thread] = []
    try:
        _, echo = common.start_echo(PROCS, out / "echo.log")
        if args.nodes > 1:
            t = common.start_cluster(PROCS, bins, out / "tunnel", echo, nodes=args.nodes,
                                     links=args.links,
                                     owner="first" if args.node_kill_every else "least_loaded")
        else:
            t = common.start_tunnel(PROCS, bins, out / "tunnel", echo, links=args.links,
                                    transport=args.transport)
        names = [n for n, _ in daemons(t)]
        meta["daemons"] = names
        host, port = t.map_addr.rsplit(":", 1)
        addr = (host, int(port))
        t0 = time.monotonic()
        time.sleep(2)
        samples.append(sample(t, t0, stats, "before"))
        ths = [threading.Thread(target=worker, args=(i, addr, args, stats, stop), daemon=True)
               for i in range(args.workers)]
        ths.append(threading.Thread(target=killer, args=(t, args, stats, stop), daemon=True))
        if args.node_kill_every:
            ths.append(threading.Thread(target=node_killer, args=(t, args, stats, stop),
                                        daemon=True, name="node killer"))
        for th in ths:
            th.start()
        end = time.monotonic() + args.minutes * 60
        while time.monotonic() < end:
            time.sleep(args.sample)
            why = benchlib.first_exit([(f"wanmux {n}", p) for n, p in daemons(t)
                                       if n not in DOWN])
            if why:
                raise RuntimeError(why)
            s = sample(t, t0, stats, "load")
            samples.append(s)
            rss = "/".join("down" if s[f"{n}_rss_kib"] is None else
                           f"{s[f'{n}_rss_kib'] / 1024:.1f}" for n in names)
            fds = "/".join("down" if s[f"{n}_fds"] is None else str(s[f"{n}_fds"])
                           for n in names)
            peer = (f" peer links killed {s['peer_links_killed']} nodes killed "
                    f"{s['nodes_killed']}" if args.nodes > 1 else "")
            log(f"{s['t'] / 60:5.1f} min  ok {s['ok']} idle {s['idle_ok']} reset "
                f"{s['reset_by_us']} failed {s['failed']} mismatch {s['mismatch']}  links killed "
                f"{s['links_killed']} (up {s['links']}){peer}  rss {'/'.join(names)} {rss} MiB  "
                f"fds {fds}  load {s['load']}")
        stop.set()
        for th in ths:
            th.join(args.stall + 15)
        # Settle: the links are redialled, the last streams closed on both ends.
        deadline = time.monotonic() + args.settle
        while time.monotonic() < deadline:
            time.sleep(min(args.sample, 5))
            samples.append(sample(t, t0, stats, "after"))
        every = (f"one killed every ~{args.kill_every:g} s" if args.transport == "tcp" else
                 f"one killed ~{args.kill_every:g} s after the last was found dead")
        nodes = f"{args.nodes} nodes, {args.links} TCP links to each, peer links" if (
            args.nodes > 1) else f"{args.links} {args.transport.upper()} links"
        meta["title"] = (f"wanmux soak: {args.minutes:g} min, {args.workers} workers, "
                         f"{nodes}, {every}")
        meta["subtitle"] = f"commit {meta['commit']}, {meta['started']}"
        summary = summarize(samples, meta, names)
        if stats.dead_after:
            d = sorted(stats.dead_after)
            summary["kills_declared_dead_after_s"] = {
                "n": len(d), "median": round(d[len(d) // 2], 2), "max": round(d[-1], 2)}
        for name, lf in daemon_logs(t):
            text = lf.read_text(errors="replace")
            ends = LinkLog(lf)
            ends.poll()
            summary[name]["link_ends"] = ends.reasons
            summary[name]["log_lines"] = text.count("\n")
            summary[name]["panics"] = text.count("panicked")
            summary[name]["warn_lines"] = sum(1 for ln in text.splitlines()
                                              if " WARN " in benchlib.ANSI.sub("", ln)
                                              or " ERROR " in benchlib.ANSI.sub("", ln))
        summary["failures"] = stats.failures
        c = summary["counts"]
        bad = c["mismatch"] or c["failed"] or c["kill_timeout"] or any(
            summary[d]["fds_after"] != summary[d]["fds_before"] or summary[d]["panics"]
            for d in names)
        rc = 1 if bad else 0
        (out / "samples.json").write_text(json.dumps({"meta": meta, "summary": summary,
                                                       "samples": samples}, indent=1))
        plot(samples, meta, out / "soak.svg")
        print(json.dumps(summary, indent=1))
    except (KeyboardInterrupt, RuntimeError) as e:
        log(f"stopped: {e}")
        if samples:
            (out / "samples.json").write_text(json.dumps({"meta": meta, "samples": samples}))
        rc = 2
    finally:
        stop.set()  # cut short: the node killer must not start a node after the others stopped
        for th in ths:
            if th.name == "node killer":
                th.join(35)
        PROCS.stop_all()
        if args.transport == "quic":  # the killer's rules, should it have been cut short
            subprocess.run(["nft", "delete", "table", "inet", QuicKiller.TABLE],
                           capture_output=True)
    return rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=5, help="minutes (default 5)")
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--links", type=int, default=4, help="per node")
    ap.add_argument("--nodes", type=int, default=1,
                    help="server nodes; 2 or more: a cluster striping every connection, TCP links")
    ap.add_argument("--node-kill-every", type=float, default=0,
                    help="cluster: seconds (on average) between SIGKILLs of a node other than "
                    "node 1, which then owns every connection (default 0: never)")
    ap.add_argument("--node-down", type=float, default=3,
                    help="cluster: seconds a killed node stays down (default 3)")
    ap.add_argument("--transport", choices=("tcp", "quic"), default="tcp",
                    help="the links' transport (quic: killed with nftables, see QuicKiller)")
    ap.add_argument("--sniff", type=float, default=0.5,
                    help="quic: seconds to watch the links' packets before killing one")
    ap.add_argument("--kill-timeout", type=float, default=60,
                    help="quic: seconds a killed link may take to be declared dead at both ends")
    ap.add_argument("--max-size", type=int, default=1 << 20)
    ap.add_argument("--reset-fraction", type=float, default=0.2)
    ap.add_argument("--idle-fraction", type=float, default=0.1)
    ap.add_argument("--kill-every", type=float, default=3, help="seconds, on average")
    ap.add_argument("--kill-all-every", type=float, default=120, help="seconds")
    ap.add_argument("--stall", type=float, default=60, help="seconds")
    ap.add_argument("--sample", type=float, default=10, help="seconds")
    ap.add_argument("--settle", type=float, default=30, help="seconds")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bins", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--plot", type=Path, help="only redraw the plot of this samples.json")
    ap.add_argument("-o", type=Path, help="with --plot: the SVG to write")
    args = ap.parse_args()
    if args.nodes > 1 and args.transport != "tcp":
        ap.error("--nodes: a cluster soak runs TCP links (the killer aborts them with `ss -K`)")
    if args.node_kill_every and args.nodes < 2:
        ap.error("--node-kill-every needs --nodes 2 or more")
    if args.plot:
        j = json.loads(args.plot.read_text())
        plot(j["samples"], j["meta"], args.o or args.plot.with_suffix(".svg"))
        return
    sys.exit(run(args))


if __name__ == "__main__":
    main()
