#!/usr/bin/env python3
"""Loopback, encrypted: wanmux side by side with direct TCP, stunnel4 and kcptun, in one run.

Every contender carries the same wanmux-bench traffic to the same wanmux-bench server on
127.0.0.1: single-stream and 8-stream bulk throughput and a 64-byte request/response latency
test. Runs are interleaved (each test round-robins over the contenders, and the order rotates
every repetition) so machine noise hits everyone alike; the table reports medians and ratios to
direct TCP, and CPU seconds per GB used by both tunnel processes.

Python 3.11 standard library only. See bench/compare/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchlib  # noqa: E402
from benchlib import EXIT_VERIFY, REPO, fmt, median, run_cmd, try_cmd  # noqa: E402

HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

ALL_CONTENDERS = ["direct", "wanmux-1", "wanmux-4", "wanmux-4q", "stunnel", "kcptun"]
LABELS = {
    "direct": "direct TCP",
    "wanmux-1": "wanmux, 1 link (Noise IKpsk2)",
    "wanmux-4": "wanmux, 4 links (Noise IKpsk2)",
    "wanmux-4q": "wanmux, 4 QUIC links (TLS, Noise IKpsk2 bound to it)",
    "stunnel": "stunnel4 (TLS 1.3, 1 TLS conn per conn)",
    "kcptun": "kcptun `-crypt aes -mode fast3`",
}
TESTS = ["p1", "p8", "rr"]
# The paths the three binaries are built from (for --build's up-to-date check and dirty check).
BUILD_INPUTS = ["Cargo.toml", "Cargo.lock", "core", "config", "client", "server", "bench/Cargo.toml",
                "bench/src", "bench/relay"]

log = benchlib.logger("loopback")
PROCS = benchlib.Procs(log)


# ---------------------------------------------------------------------------------------------
# Small helpers

def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_listening(port: int, proto: str = "tcp") -> bool:
    """Whether something is bound to 127.0.0.1:port (TCP: in LISTEN state). Reads /proc/net so
    that waiting for a daemon does not connect to it (a probe connection makes log noise, and
    through a tunnel it would open a stream)."""
    want = f"0100007F:{port:04X}"
    try:
        lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        f = line.split()
        if f[1] == want and (proto != "tcp" or f[3] == "0A"):
            return True
    return False


def wait_port(port: int, proc: subprocess.Popen, what: str, proto: str = "tcp",
              timeout: float = 15.0) -> None:
    benchlib.wait_for(lambda: is_listening(port, proto), f"{what} (127.0.0.1:{port}/{proto})",
                      [proc], timeout, interval=0.05)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, all threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()  # fields from 3 (state) on
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14, 15 of proc(5)


def system_busy_seconds() -> float:
    """CPU time spent busy by all CPUs (everything but idle and iowait), in seconds."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    v = [int(x) for x in parts]
    # user nice system idle iowait irq softirq steal (guest, guest_nice are inside user/nice)
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK


# ---------------------------------------------------------------------------------------------
# Installing and finding the peers

def ensure_packages(want: list[str], no_install: bool) -> dict[str, str]:
    """Returns {contender: reason} for contenders that cannot run."""
    need = {"stunnel": ("stunnel4", "stunnel4"), "kcptun": ("kcptun", "kcptun-server")}
    missing_pkgs = [pkg for c, (pkg, binary) in need.items()
                    if c in want and shutil.which(binary) is None]
    skipped: dict[str, str] = {}
    if missing_pkgs and not no_install:
        if os.geteuid() != 0:
            log(f"not root: cannot apt-get install {' '.join(missing_pkgs)}")
        elif shutil.which("apt-get") is None:
            log("no apt-get on this machine")
        else:
            log(f"installing {' '.join(missing_pkgs)} (apt-get update once, then install)")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "update"], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            r = subprocess.run(["apt-get", "install", "-y", *missing_pkgs], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if r.returncode != 0:
                log(f"apt-get install failed: {r.stderr.strip().splitlines()[-1:]}")
    for c, (pkg, binary) in need.items():
        if c in want and shutil.which(binary) is None:
            skipped[c] = f"skipped: `{binary}` not found and Debian package `{pkg}` could not be installed"
    if "stunnel" in want and "stunnel" not in skipped and shutil.which("openssl") is None:
        skipped["stunnel"] = "skipped: `openssl` (for the self-signed certificate) not found"
    for c, why in skipped.items():
        log(f"{c}: {why}")
    return skipped


# ---------------------------------------------------------------------------------------------
# Contenders: each gives the address the bench client connects to, and the tunnel processes.

@dataclass
class Contender:
    name: str
    addr: str = ""
    # The addresses of the other services a tunnel maps (`start_wanmux`'s `services`), by name.
    maps: dict[str, str] = field(default_factory=dict)
    tunnel: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    dead: str | None = None  # why it stopped being measured
    # wanmux: each daemon's `status --json` command, by process name (the session-lock totals).
    status: list[tuple[str, list[str]]] = field(default_factory=list)

    def lock_seconds(self) -> dict[str, tuple[float, float]] | None:
        """wanmux: seconds each daemon's session locks were held and waited for so far."""
        if not self.status:
            return None
        out = {}
        for name, argv in self.status:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            t = json.loads(r.stdout)["totals"]
            if "session_lock_held_ns" not in t:
                return None  # a build from before the counters
            out[name] = (t["session_lock_held_ns"] / 1e9, t["session_lock_waited_ns"] / 1e9)
        return out

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds so far of each tunnel process, by name."""
        return {name: proc_cpu_seconds(p.pid) for name, p in self.tunnel}

    def check_alive(self) -> str | None:
        return benchlib.first_exit(self.tunnel)

    def context_switches(self) -> int | None:
        """Context switches so far of every thread of the tunnel processes (voluntary and not)."""
        if not self.tunnel:
            return None
        total = 0
        for _, p in self.tunnel:
            for task in Path(f"/proc/{p.pid}/task").iterdir():
                try:
                    for line in (task / "status").read_text().splitlines():
                        if "ctxt_switches:" in line:
                            total += int(line.split()[1])
                except (OSError, ValueError):
                    continue  # a thread that ended meanwhile
        return total


def start_wanmux(name: str, links: int, bins: Path, bench_addr: str, tmp: Path,
                 threads: int | None = None, cpus: str | None = None,
                 transport: str = "tcp", lanes: int = 0,
                 services: dict[str, str] | None = None) -> Contender:
    """A one-node tunnel from a mapped port to the service "bench" at `bench_addr`, and to each of
    `services` (name: target address) from a port of its own (`Contender.maps`)."""
    d = tmp / name
    d.mkdir()
    srv, cli = str(bins / "wanmux-server"), str(bins / "wanmux-client")
    server_pub = run_cmd([srv, "keygen", "--out", str(d / "server.key")])
    client_pub = run_cmd([cli, "keygen", "--out", str(d / "client.key")])
    run_cmd([srv, "keygen", "--psk", "--out", str(d / "wanmux.psk")])
    pub = benchlib.public_key
    extra = f"threads = {threads}\n" if threads else ""
    # Both daemons on the CPUs `cpus` names (taskset's list); tokio then counts only those.
    pin = ["taskset", "-c", cpus] if cpus else []

    link_port, map_port = free_tcp_port(), free_tcp_port()
    ports = {svc: free_tcp_port() for svc in services or {}}
    maps = {svc: f"127.0.0.1:{port}" for svc, port in ports.items()}
    server_extra = extra + "".join(f'\n[[service]]\nname = "{svc}"\ntarget = "{target}"\n'
                                   for svc, target in (services or {}).items())
    client_extra = extra + "".join(f'\n[[map]]\nlisten = "{addr}"\nservice = "{svc}"\n'
                                   for svc, addr in maps.items())
    lanes_line = f"\nlanes = {lanes}" if lanes else ""
    benchlib.write_configs(d, listen=f"127.0.0.1:{link_port}", node_addr=f'"127.0.0.1:{link_port}"',
                           target=bench_addr, map_listen=f"127.0.0.1:{map_port}",
                           server_key="server.key", client_key="client.key",
                           server_pub=pub(server_pub), client_pub=pub(client_pub),
                           # The transport named: the client's default ("auto") runs QUIC where the node answers it.
                           links=f'count = {links}\ntransport = "{transport}"{lanes_line}',
                           psk_file="wanmux.psk", server_extra=server_extra,
                           client_extra=client_extra)
    benchlib.check_configs(name, bins, d)
    c = Contender(name, addr=f"127.0.0.1:{map_port}", maps=maps)
    c.status = [(f"wanmux-{which}", [exe, "status", "--json", "--config", str(d / f"{which}.toml")])
                for which, exe in (("server", srv), ("client", cli))]
    env = benchlib.daemon_env()
    c.logs = [d / "server.log", d / "client.log"]
    ps = PROCS.start(f"{name} server", [*pin, srv, "run", "--config", str(d / "server.toml")], c.logs[0],
                    env=env)
    c.tunnel.append(("wanmux-server", ps))
    wait_port(link_port, ps, f"{name} server")
    pc = PROCS.start(f"{name} client", [*pin, cli, "run", "--config", str(d / "client.toml")], c.logs[1],
                    env=env)
    c.tunnel.append(("wanmux-client", pc))
    for port in (map_port, *ports.values()):
        wait_port(port, pc, f"{name} client")
    return c


def start_bench_server(bench: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    """Starts `wanmux-bench server` on a free port of 127.0.0.1; returns it and its address."""
    srv_log = tmp / "bench-server.log"
    bs = PROCS.start("wanmux-bench server", [str(bench), "server", "--listen", "127.0.0.1:0"], srv_log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and bs.poll() is None:
        for line in srv_log.read_text(errors="replace").splitlines():
            if line.startswith("listening on "):
                return bs, line.split()[-1]
        time.sleep(0.05)
    raise RuntimeError(f"wanmux-bench server did not print its address: {srv_log.read_text()}")


def start_stunnel(bench_addr: str, tmp: Path) -> Contender:
    d = tmp / "stunnel"
    d.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    tls_port, acc_port = free_tcp_port(), free_tcp_port()
    common = "foreground = yes\npid =\ndebug = warning\n"
    (d / "server.conf").write_text(f"""{common}
[bench]
accept = 127.0.0.1:{tls_port}
connect = {bench_addr}
cert = {d / 'cert.pem'}
key = {d / 'key.pem'}
sslVersionMin = TLSv1.3
; a CA store only so that OpenSSL does not log "No trusted certificates found"; clients are
; not asked for certificates (no verifyChain/verifyPeer here)
CAfile = {d / 'cert.pem'}
""")
    (d / "client.conf").write_text(f"""{common}
[bench]
client = yes
accept = 127.0.0.1:{acc_port}
connect = 127.0.0.1:{tls_port}
sslVersionMin = TLSv1.3
verifyPeer = yes
CAfile = {d / 'cert.pem'}
""")
    c = Contender("stunnel", addr=f"127.0.0.1:{acc_port}")
    c.logs = [d / "server.log", d / "client.log"]
    ps = PROCS.start("stunnel server", ["stunnel4", str(d / "server.conf")], c.logs[0])
    c.tunnel.append(("stunnel server", ps))
    wait_port(tls_port, ps, "stunnel server")
    pc = PROCS.start("stunnel client", ["stunnel4", str(d / "client.conf")], c.logs[1])
    c.tunnel.append(("stunnel client", pc))
    wait_port(acc_port, pc, "stunnel client")
    return c


def start_kcptun(bench_addr: str, tmp: Path) -> Contender:
    d = tmp / "kcptun"
    d.mkdir()
    udp_port, acc_port = free_udp_port(), free_tcp_port()
    key = os.urandom(16).hex()
    env = dict(os.environ, KCPTUN_KEY=key)  # not on the command line, where ps shows it
    flags = benchlib.KCPTUN_FLAGS
    c = Contender("kcptun", addr=f"127.0.0.1:{acc_port}")
    c.logs = [d / "server.log", d / "client.log"]
    ps = PROCS.start("kcptun server", ["kcptun-server", "-l", f"127.0.0.1:{udp_port}",
                                       "-t", bench_addr, *flags], c.logs[0], env=env)
    c.tunnel.append(("kcptun-server", ps))
    wait_port(udp_port, ps, "kcptun server", proto="udp")
    pc = PROCS.start("kcptun client", ["kcptun-client", "-l", f"127.0.0.1:{acc_port}",
                                       "-r", f"127.0.0.1:{udp_port}", *flags], c.logs[1], env=env)
    c.tunnel.append(("kcptun-client", pc))
    wait_port(acc_port, pc, "kcptun client")
    return c


# ---------------------------------------------------------------------------------------------
# Running one test

@dataclass
class Sample:
    contender: str
    test: str
    rep: int
    ok: bool
    status: int
    error: str = ""
    gbps: float | None = None
    bytes: int | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    tunnel_cpu_s: float | None = None
    cpu_s_per_gb: float | None = None
    cpu_s_per_gb_by_proc: dict[str, float] | None = None
    wall_s: float | None = None
    bench_cpu_s: float | None = None  # the bench client's own CPU (rusage)
    foreign_cores: float | None = None  # average cores used by processes not ours
    rr_cpu_us: float | None = None  # rr: tunnel CPU (both ends) per round trip
    rr_switches: float | None = None  # rr: tunnel context switches (both ends) per round trip
    # wanmux, throughput: session-lock seconds held and waited per GB, by daemon.
    lock_s_per_gb: dict[str, tuple[float, float]] | None = None


def run_bench(bench: Path, c: Contender, test: str, rep: int, args, ours_cpu) -> Sample:
    if test == "rr":
        argv = [str(bench), "rr", "--connect", c.addr, "-n", str(args.rr_count), "--json"]
        limit = 300.0
    else:
        streams = "1" if test == "p1" else "8"
        argv = [str(bench), "client", "--connect", c.addr, "-t", str(args.time), "-P", streams, "--json"]
        limit = args.time + 90.0
    def tunnel_cpu() -> dict[str, float] | None:
        try:
            return c.cpu_seconds() if c.tunnel else None
        except OSError:  # a tunnel process is gone; the next check_alive() reports it
            return None

    def switches() -> int | None:
        try:
            return c.context_switches()
        except OSError:
            return None

    def locks() -> dict[str, tuple[float, float]] | None:
        try:
            return c.lock_seconds()
        except (OSError, ValueError, KeyError, subprocess.SubprocessError):
            return None

    lock0 = locks() if test != "rr" else None
    cpu0 = tunnel_cpu()
    sw0 = switches()
    ours0 = ours_cpu()
    busy0 = system_busy_seconds()
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    PROCS.track(f"wanmux-bench {test} via {c.name}", p)
    status, out, err = benchlib.communicate(p, limit)
    wall = time.monotonic() - t0
    bench_cpu = BENCH_CHILD_CPU.take()  # the bench client's own CPU (it has been reaped)
    busy = system_busy_seconds() - busy0
    PROCS.forget(p)
    cpu1 = tunnel_cpu()
    sw1 = switches()
    lock1 = locks() if lock0 is not None else None
    by_proc = ({k: cpu1[k] - cpu0[k] for k in cpu1}
               if cpu0 is not None and cpu1 is not None else None)
    cpu = sum(by_proc.values()) if by_proc is not None else None
    ours = ours_cpu() - ours0
    s = Sample(c.name, test, rep, ok=False, status=status, wall_s=wall, bench_cpu_s=bench_cpu)
    # Busy CPU not spent by the tunnels, the bench server, this script or the bench client: that
    # is other people's load on the machine during this run.
    s.foreign_cores = max(0.0, busy - ours - bench_cpu) / wall if wall > 0 else None
    if cpu is not None:
        s.tunnel_cpu_s = cpu
    j, s.status, s.error = benchlib.bench_report(status, out, err)
    if j is None:
        return s
    s.ok = True
    if test == "rr":
        s.p50_us, s.p99_us = j["p50_us"], j["p99_us"]
        if cpu is not None:
            s.rr_cpu_us = cpu * 1e6 / args.rr_count
        if sw0 is not None and sw1 is not None:
            s.rr_switches = (sw1 - sw0) / args.rr_count
    else:
        s.gbps = j["bits_per_second"] / 1e9
        s.bytes = j["received_bytes"]
        if lock0 is not None and lock1 is not None and s.bytes:
            gb = s.bytes / 1e9
            s.lock_s_per_gb = {k: ((lock1[k][0] - lock0[k][0]) / gb, (lock1[k][1] - lock0[k][1]) / gb)
                               for k in lock1}
        if cpu is not None and s.bytes:
            s.cpu_s_per_gb = cpu / (s.bytes / 1e9)
            s.cpu_s_per_gb_by_proc = {k: v / (s.bytes / 1e9) for k, v in by_proc.items()}
    return s


class ChildCpu:
    """CPU used by reaped children (the bench clients), from getrusage(RUSAGE_CHILDREN)."""

    def __init__(self) -> None:
        self.last = self._now()

    @staticmethod
    def _now() -> float:
        import resource
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    def take(self) -> float:
        now = self._now()
        d, self.last = now - self.last, now
        return d


BENCH_CHILD_CPU: ChildCpu


# ---------------------------------------------------------------------------------------------
# Report

def summarize(contenders: list[str], samples: list[Sample], skipped: dict[str, str]):
    rows = {}
    for name in contenders:
        mine = [s for s in samples if s.contender == name]
        r = {}
        for test in ("p1", "p8"):
            ok = [s for s in mine if s.test == test and s.ok]
            r[test] = median([s.gbps for s in ok])
            r[test + "_n"] = len(ok)
            r[test + "_tried"] = any(s.test == test for s in mine)
            r[test + "_all"] = [round(s.gbps, 3) for s in ok]
            r[test + "_cpu"] = median([s.cpu_s_per_gb for s in ok if s.cpu_s_per_gb is not None])
            procs = [s.cpu_s_per_gb_by_proc for s in ok if s.cpu_s_per_gb_by_proc]
            r[test + "_cpu_by_proc"] = {k: median([pp[k] for pp in procs]) for k in (procs[0] if procs else {})}
            lk = [s.lock_s_per_gb for s in ok if s.lock_s_per_gb]
            r[test + "_lock"] = {k: (median([x[k][0] for x in lk]), median([x[k][1] for x in lk]))
                                 for k in (lk[0] if lk else {})}
        rr = [s for s in mine if s.test == "rr" and s.ok]
        r["p50"] = median([s.p50_us for s in rr])
        r["p99"] = median([s.p99_us for s in rr])
        r["rr_n"] = len(rr)
        r["rr_cpu"] = median([s.rr_cpu_us for s in rr if s.rr_cpu_us is not None])
        r["rr_switches"] = median([s.rr_switches for s in rr if s.rr_switches is not None])
        r["rr_tried"] = any(s.test == "rr" for s in mine)
        r["fail"] = [f"{s.test} rep {s.rep + 1}: {s.error}" for s in mine if not s.ok]
        rows[name] = r
    return rows


def markdown_table(contenders: list[str], rows, skipped: dict[str, str], dead: dict[str, str]) -> str:
    d = rows.get("direct")
    lines = [
        "| contender | 1 stream Gbit/s (x direct) | 8 streams Gbit/s (x direct) "
        "| rr p50 / p99 us (added vs direct) | rr: tunnel CPU us / context switches per round trip "
        "| CPU s/GB both ends, 1 / 8 streams |",
        "|---|---|---|---|---|---|",
    ]
    for name in contenders:
        if name in skipped:
            lines.append(f"| {LABELS[name]} | {skipped[name]} | | | | |")
            continue
        r = rows[name]

        def thr(test):
            v = r[test]
            if v is None:
                return "FAILED" if r[test + "_tried"] else "not run"
            ratio = "" if name == "direct" or not d or not d[test] else f" ({v / d[test]:.2f}x)"
            return f"{v:.2f}{ratio}"

        if r["p50"] is None:
            lat = "FAILED" if r["rr_tried"] else "not run"
        else:
            lat = f"{r['p50']:.0f} / {r['p99']:.0f}"
            if name != "direct" and d and d["p50"] is not None:
                lat += f" ({r['p50'] - d['p50']:+.0f} / {r['p99'] - d['p99']:+.0f})"
        cpu = "-" if name == "direct" else f"{fmt(r['p1_cpu'], '.2f')} / {fmt(r['p8_cpu'], '.2f')}"
        rr_cost = ("-" if name == "direct"
                   else f"{fmt(r['rr_cpu'], '.0f')} / {fmt(r['rr_switches'], '.1f')}")
        label = LABELS[name] + (" **(died: " + dead[name] + ")**" if name in dead else "")
        lines.append(f"| {label} | {thr('p1')} | {thr('p8')} | {lat} | {rr_cost} | {cpu} |")
    return "\n".join(lines)


def lock_table(contenders: list[str], rows) -> str:
    """wanmux's session locks during the throughput runs, per GB, by daemon (empty if none)."""
    lines = []
    for name in contenders:
        r = rows.get(name)
        if not r or not (r.get("p1_lock") or r.get("p8_lock")):
            continue
        cells = []
        for test in ("p1", "p8"):
            lk = r.get(test + "_lock") or {}
            cells.append(", ".join(f"{k.removeprefix('wanmux-')} {h:.3f} / {w:.3f}"
                                   for k, (h, w) in sorted(lk.items())) or "-")
        lines.append(f"| {LABELS[name]} | {cells[0]} | {cells[1]} |")
    if not lines:
        return ""
    return "\n".join([
        "| contender | session lock held / waited, s per GB: 1 stream | 8 streams |",
        "|---|---|---|", *lines])


def machine_info() -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        txt = Path("/proc/cpuinfo").read_text()
        fl = next((l for l in txt.splitlines() if l.startswith("flags")), "").split()
        flags = ", ".join(f for f in ("aes", "pclmulqdq", "avx2", "avx512f") if f in fl)
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "cpu_flags": flags,
        "kernel": platform.release(),
    }


def versions(bins: Path) -> dict:
    v = {"wanmux": benchlib.wanmux_version(bins)}
    pk = benchlib.dpkg_versions("kcptun", "stunnel4", "openssl")
    v["debian"] = pk.replace("\n", ", ") if pk else None
    return v


def git_info(bins: Path, built_from: str | None) -> str:
    if built_from:
        return built_from
    head = benchlib.git_head() or "?"
    dirty = try_cmd(["git", "status", "--porcelain", "--untracked-files=no", "--", *BUILD_INPUTS],
                    cwd=REPO)
    note = " (working tree has uncommitted changes in wanmux sources)" if dirty else ""
    return f"{head}{note}; binaries from {bins}"


# ---------------------------------------------------------------------------------------------

def build_clean(target_dir: Path) -> tuple[Path, str]:
    """Build the committed HEAD (not the working tree) into target_dir; returns (bin dir, label).

    The export lives at one fixed path outside the target dir (`<target_dir>-src`): cargo keeps
    dep-info paths under the target dir relative to it, so an export inside it, or one new
    directory per commit, would be judged up to date against the previous export's files."""
    commit = run_cmd(["git", "rev-parse", "HEAD"], cwd=REPO).strip()
    # What the binaries are made of: commits that touch only docs or this directory need no build.
    sources = run_cmd(["git", "ls-tree", "-r", "HEAD", "--", *BUILD_INPUTS], cwd=REPO)
    key = hashlib.sha256(sources.encode()).hexdigest()
    src = Path(str(target_dir).rstrip("/") + "-src")
    bins = target_dir / "release"
    label = f"{commit[:12]} (clean build of the commit, `--build`)"
    marker = src / ".built-commit"
    names = ("wanmux-server", "wanmux-client", "wanmux-bench")
    if (marker.exists() and marker.read_text().strip() == key
            and all((bins / b).exists() and (bins / b).stat().st_mtime > marker.stat().st_mtime
                    for b in names)):
        log(f"binaries in {bins} are already a clean build of {commit[:12]}'s sources")
        return bins, label
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    archive = subprocess.Popen(["git", "archive", commit], cwd=REPO, stdout=subprocess.PIPE)
    # -m: files get the current time, so cargo rebuilds every workspace crate.
    subprocess.run(["tar", "-x", "-m", "-C", str(src)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError("git archive failed")
    log(f"building {commit[:12]} (clean export in {src}) into {target_dir}")
    t0 = time.time()
    subprocess.run(["cargo", "build", "--release", "-p", "wanmux-server", "-p", "wanmux-client",
                    "-p", "wanmux-bench"], cwd=src, check=True,
                   env=dict(os.environ, CARGO_TARGET_DIR=str(target_dir)))
    for b in names:
        if (bins / b).stat().st_mtime < t0:
            raise RuntimeError(f"cargo did not rebuild {bins / b} from the export; "
                               f"remove {target_dir} and try again")
    marker.write_text(key + "\n")
    # The marker must be older than the binaries for the check above: set it to the build start.
    os.utime(marker, (t0, t0))
    return bins, label


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Loopback benchmark: direct TCP vs wanmux (1 and 4 links) vs stunnel4 vs "
                    "kcptun, interleaved, medians, ratios to direct TCP.")
    ap.add_argument("-t", "--time", type=float, default=5.0,
                    help="seconds per throughput run (default 5)")
    ap.add_argument("-r", "--reps", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("-n", "--rr-count", type=int, default=10000,
                    help="round trips per rr run (default 10000)")
    ap.add_argument("-c", "--contenders", default=",".join(ALL_CONTENDERS),
                    help=f"comma-separated subset of {','.join(ALL_CONTENDERS)} (default: all); "
                         "direct is always measured")
    ap.add_argument("--tests", default=",".join(TESTS),
                    help="comma-separated subset of p1 (1 stream), p8 (8 streams), rr (default: all)")
    ap.add_argument("--bin-dir", type=Path, default=None,
                    help="directory with wanmux-server, wanmux-client, wanmux-bench "
                         "(default: $CARGO_TARGET_DIR/release, else <repo>/target/release)")
    ap.add_argument("--build", action="store_true",
                    help="first build the committed HEAD (a clean `git archive` export, not the "
                         "working tree) into $CARGO_TARGET_DIR (or <repo>/target) and use it")
    ap.add_argument("--no-install", action="store_true", help="never run apt-get")
    ap.add_argument("--warmup", type=float, default=1.0,
                    help="seconds of bulk traffic through each contender before measuring (default 1)")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown report path (default bench/compare/out/loopback-<UTC time>.md; "
                         "raw samples go next to it as .json)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep configs and logs (temp dir)")
    ap.add_argument("--threads", type=int, default=None,
                    help="server.threads and client.threads of the wanmux daemons (default: unset, "
                         "the daemons' default: one worker per CPU, one on 1-2 CPUs)")
    ap.add_argument("--daemon-cpus", default=None,
                    help="run both wanmux daemons under `taskset -c LIST` (e.g. 0: one core)")
    args = ap.parse_args()

    want = [c.strip() for c in args.contenders.split(",") if c.strip()]
    bad = [c for c in want if c not in ALL_CONTENDERS]
    tests = [t.strip() for t in args.tests.split(",") if t.strip()]
    if bad or any(t not in TESTS for t in tests) or args.reps < 1 or args.time <= 0 or args.rr_count < 1:
        ap.error(f"unknown contender(s) {bad} or bad --tests/--reps/--time/--rr-count")
    if "direct" not in want:
        want.insert(0, "direct")
    want = [c for c in ALL_CONTENDERS if c in want]

    command = " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    started = dt.datetime.now(dt.timezone.utc)
    benchlib.catch_signals()

    target = benchlib.target_dir()
    built_from = None
    if args.build:
        bins, built_from = build_clean(target)
    else:
        bins = args.bin_dir or target / "release"
    for b in benchlib.missing_bins(bins, ("wanmux-server", "wanmux-client", "wanmux-bench")):
        log(f"{b} missing. Build first: cargo build --release -p wanmux-server "
            "-p wanmux-client -p wanmux-bench (or pass --build, or --bin-dir DIR)")
        return 2
    bench = bins / "wanmux-bench"

    skipped = ensure_packages(want, args.no_install)
    tmp = Path(tempfile.mkdtemp(prefix="wanmux-compare-"))
    global BENCH_CHILD_CPU
    BENCH_CHILD_CPU = ChildCpu()
    samples: list[Sample] = []
    dead: dict[str, str] = {}
    contenders: dict[str, Contender] = {}
    load_start = os.getloadavg()
    uptime_start = try_cmd(["uptime"])
    interrupted = False
    failed_setup = None
    order: list[str] = []
    try:
        # The bench server that every contender forwards to.
        bs, bench_addr = start_bench_server(bench, tmp)
        log(f"bench server on {bench_addr}; tmp {tmp}")

        for name in want:
            if name in skipped:
                continue
            try:
                if name == "direct":
                    contenders[name] = Contender("direct", addr=bench_addr)
                elif name.startswith("wanmux-"):
                    count = name.split("-")[1]
                    quic = count.endswith("q")
                    contenders[name] = start_wanmux(name, int(count.rstrip("q")), bins, bench_addr, tmp,
                                                    args.threads, args.daemon_cpus,
                                                    "quic" if quic else "tcp")
                elif name == "stunnel":
                    contenders[name] = start_stunnel(bench_addr, tmp)
                elif name == "kcptun":
                    contenders[name] = start_kcptun(bench_addr, tmp)
                log(f"{name}: ready on {contenders[name].addr}")
            except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
                skipped[name] = f"skipped: could not start ({e})"
                log(f"{name}: {skipped[name]}")

        def ours_cpu() -> float:
            # The bench server, every tunnel process and this script.
            t = proc_cpu_seconds(os.getpid())
            for p in [bs] + [p for c in contenders.values() for _, p in c.tunnel]:
                try:
                    t += proc_cpu_seconds(p.pid)
                except OSError:
                    pass
            return t

        # Warm-up: the first connection through each tunnel, socket buffer growth, page faults.
        if args.warmup > 0:
            for c in contenders.values():
                r = subprocess.run([str(bench), "client", "--connect", c.addr, "-t", str(args.warmup),
                                    "-P", "2", "--json"], capture_output=True, text=True,
                                   timeout=args.warmup + 60)
                if r.returncode != 0:
                    log(f"{c.name}: warm-up failed: {r.stderr.strip()}")
            BENCH_CHILD_CPU.take()

        order = [n for n in want if n in contenders]
        total = len(order) * len(tests) * args.reps
        k = 0
        for rep in range(args.reps):
            # Rotate the order every repetition so no contender always runs first or last.
            rot = order[rep % len(order):] + order[:rep % len(order)]
            for test in tests:
                for name in rot:
                    c = contenders[name]
                    k += 1
                    if name in dead:
                        continue
                    why = c.check_alive()
                    if why:
                        dead[name] = why
                        log(f"{name}: {why}; not measured any more")
                        continue
                    s = run_bench(bench, c, test, rep, args, ours_cpu)
                    samples.append(s)
                    if s.ok:
                        val = (f"{s.gbps:.2f} Gbit/s, tunnel {fmt(s.cpu_s_per_gb, '.2f')} CPU s/GB"
                               if test != "rr" else f"p50 {s.p50_us:.0f} us, p99 {s.p99_us:.0f} us")
                        log(f"[{k}/{total}] rep {rep + 1} {test:>2} {name:<9} {val}"
                            f"  (others' load {fmt(s.foreign_cores, '.2f')} cores)")
                    else:
                        log(f"[{k}/{total}] rep {rep + 1} {test:>2} {name:<9} FAILED "
                            f"(status {s.status}): {s.error}")
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; stopping everything")
    except Exception as e:  # noqa: BLE001 - report, clean up, exit non-zero
        failed_setup = e
        log(f"error: {type(e).__name__}: {e}")
    finally:
        PROCS.stop_all()

    # Anything the tunnels said at WARN or ERROR level (or stunnel/kcptun errors).
    log_notes = []
    for c in contenders.values():
        for lp in c.logs:
            note = benchlib.log_warnings(lp, ("WARN", "ERROR", "panicked", "error", "LOG3", "LOG4"),
                                         300)
            if note:
                log_notes.append(f"{c.name} {note}")
    if interrupted or failed_setup:
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"configs and logs kept in {tmp}")
        return 130 if interrupted else 1

    rows = summarize(order, samples, skipped)
    all_names = [n for n in want]
    for n in all_names:
        if n not in rows and n not in skipped:
            skipped[n] = "skipped"
    finished = dt.datetime.now(dt.timezone.utc)
    load_end = os.getloadavg()
    info = machine_info()
    vers = versions(bins)
    foreign = [s.foreign_cores for s in samples if s.foreign_cores is not None]
    table = markdown_table(all_names, rows, skipped, dead)
    locked = lock_table(all_names, rows)

    report = [
        f"Command: `{command}`",
        "",
        f"Date: {started:%Y-%m-%d %H:%M} to {finished:%H:%M} UTC. "
        f"Machine: {info['nproc']} CPUs, {info['cpu']} ({info['cpu_flags']}), Linux {info['kernel']}. "
        f"Git: {git_info(bins, built_from)}.",
        f"Versions: {vers['wanmux']}; {vers['debian']}.",
        f"Load average (1/5/15 min) at start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}, "
        f"at end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}. "
        + (f"CPU used by other processes during the measurements (not this benchmark's): median "
           f"{statistics.median(foreign):.2f} cores, max {max(foreign):.2f}." if foreign else ""),
        f"Settings: tests {','.join(tests)}, {args.reps} repetitions, interleaved; throughput runs "
        f"{args.time:g} s (upload, `wanmux-bench client -P 1` and `-P 8`), rr {args.rr_count} "
        "round trips of 64 B; medians; every byte verified.",
        "",
        table,
        "",
        *([locked, "", "Session lock: time each wanmux daemon's session locks were held and "
           "waited for during the throughput runs (`status --json`, "
           "`session_lock_held_ns` / `session_lock_waited_ns`), per 10^9 payload bytes; medians.",
           ""] if locked else []),
        "Gbit/s: payload received and verified / receiver's time. CPU s/GB: utime+stime of both tunnel "
        "processes (from /proc/PID/stat) during the run, per 10^9 payload bytes. rr: one connection, "
        "64-byte request and echo; added = contender minus direct TCP (medians). rr tunnel CPU and "
        "context switches: of every tunnel process and thread during the rr run (/proc/PID/stat, "
        "/proc/PID/task/*/status), per round trip; they count work, not waiting, so they move less "
        "with the machine's load than the latencies do.",
    ]
    fails = [f"- {n}: {f}" for n in rows for f in rows[n]["fail"]]
    if fails:
        report += ["", "Failures:", *fails]
    if log_notes:
        report += ["", "Tunnel log warnings:", *[f"- {n}" for n in log_notes]]
    split = []
    for n in rows:
        a, b = rows[n]["p1_cpu_by_proc"], rows[n]["p8_cpu_by_proc"]
        if a or b:
            parts = [f"{k} {fmt(a.get(k), '.2f')} / {fmt(b.get(k), '.2f')}" for k in (a or b)]
            split.append(f"{n}: " + ", ".join(parts))
    if split:
        report += ["", "CPU s/GB by tunnel end, 1 / 8 streams (medians): " + "; ".join(split) + "."]
    spread = []
    for n in rows:
        for t in ("p1", "p8"):
            if rows[n][t + "_all"]:
                spread.append(f"{n} {t}: {rows[n][t + '_all']}")
    report += ["", "All samples (Gbit/s): " + "; ".join(spread) + "."]
    text = "\n".join(report) + "\n"
    print(text)

    out = args.out or HERE / "out" / f"loopback-{started:%Y%m%dT%H%M%SZ}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({
        "command": command, "started": started.isoformat(), "finished": finished.isoformat(),
        "machine": info, "load_start": load_start, "load_end": load_end,
        "skipped": skipped, "dead": dead, "summary": rows,
        "samples": [s.__dict__ for s in samples], "log_notes": log_notes,
    }, indent=1))
    log(f"wrote {out} and {out.with_suffix('.json')}")
    if args.keep_tmp:
        log(f"configs and logs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)

    if any(s.status == EXIT_VERIFY for s in samples):
        log("DATA VERIFICATION FAILED in at least one run")
        return EXIT_VERIFY
    if any(not s.ok for s in samples) or dead:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
