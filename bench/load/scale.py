#!/usr/bin/env python3
"""Scale: many concurrent idle connections through one client and one server on loopback.

Each round starts a fresh one-node tunnel (TCP links, Noise IKpsk2) in front of a fresh echo
service, then, in an order that alternates between rounds:

- **direct**: opens `-n` connections straight to the echo service, at most `--concurrency`
  setting up at once; a connection is set up when one byte sent came back (through the tunnel
  that is the whole path: client accept, stream open, the node's connect to the service, the
  data both ways). Rate = connections / seconds until the last one was set up. Then closes them.
- **tunnel**: the same through the client's mapped port, then holds all of them open and idle,
  waits for the daemons to settle and reads both daemons' VmRSS; checks that every connection
  still echoes a byte; closes them all and reads VmRSS again once the streams are gone.

Memory per connection = (VmRSS of both daemons with the connections open - VmRSS of both before
they were opened) / connections. Kernel socket memory (/proc/net/sockstat) is reported beside it
but not counted (it is the kernel's, for direct connections too). Reports every round and the
medians, as a table and (with --json) as JSON.

    python3 bench/load/scale.py -n 10000 --rounds 3

Raises its own soft open-file limit to the hard one; the daemons raise theirs. Python 3.11
standard library only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import selectors
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import benchlib  # noqa: E402

log = benchlib.logger("scale")
PROCS = benchlib.Procs(log)


def open_many(addr: tuple[str, int], n: int, conc: int, timeout: float
              ) -> tuple[list[socket.socket], float, list[str]]:
    """Opens `n` connections to `addr`, at most `conc` in set-up at once; each is set up when
    the byte it sent came back. Returns the set-up ones, the seconds it took, the failures."""
    sel = selectors.DefaultSelector()
    done: list[socket.socket] = []
    fails: list[str] = []
    started = 0
    inflight = 0
    t0 = time.monotonic()
    deadline: dict[socket.socket, float] = {}
    while len(done) + len(fails) < n:
        while inflight < conc and started < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            err = s.connect_ex(addr)
            if err not in (0, 115):  # EINPROGRESS
                fails.append(f"connect: errno {err}")
                s.close()
            else:
                sel.register(s, selectors.EVENT_WRITE, ("connect", started % 251))
                deadline[s] = time.monotonic() + timeout
                inflight += 1
            started += 1
        for key, ev in sel.select(timeout=0.5):
            s = key.fileobj
            what, b = key.data
            if what == "connect":
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fails.append(f"connect: errno {err}")
                    sel.unregister(s)
                    s.close()
                    inflight -= 1
                    del deadline[s]
                    continue
                s.send(bytes([b]))
                sel.modify(s, selectors.EVENT_READ, ("echo", b))
            else:
                try:
                    got = s.recv(16)
                except OSError as e:
                    got = f"{e}".encode()
                sel.unregister(s)
                inflight -= 1
                del deadline[s]
                if got == bytes([b]):
                    done.append(s)
                else:
                    fails.append(f"echo: got {got[:40]!r}")
                    s.close()
        now = time.monotonic()
        for s, dl in list(deadline.items()):
            if now > dl:
                fails.append("set-up timed out")
                sel.unregister(s)
                s.close()
                inflight -= 1
                del deadline[s]
    elapsed = time.monotonic() - t0
    sel.close()
    return done, elapsed, fails


def echo_all(socks: list[socket.socket], timeout: float) -> int:
    """Sends one byte on every connection and waits for its echo; returns how many failed."""
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        try:
            s.send(bytes([i % 251]))
            sel.register(s, selectors.EVENT_READ, i % 251)
        except OSError:
            pass
    ok = 0
    deadline = time.monotonic() + timeout
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            try:
                got = key.fileobj.recv(16)
            except OSError:
                got = b""
            if got == bytes([key.data]):
                ok += 1
            sel.unregister(key.fileobj)
    sel.close()
    return len(socks) - ok


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def self_cpu_secs() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]  # idle, iowait
    total = sum(f[:8])  # user nice system idle iowait irq softirq steal
    return total - idle, total


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by this script ("gen") and each of `pids`, and the machine's
    busy and total ticks ("_busy", "_total")."""
    snap = {name: common.cpu_secs(pid) for name, pid in pids.items()}
    snap["gen"] = self_cpu_secs()
    snap["_busy"], snap["_total"] = machine_ticks()
    return snap


def cpu_per_setup(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """Microseconds of CPU per set-up of each process between two snapshots, and the share of
    the machine's CPU time that was busy meanwhile ("machine_busy", whoever used it)."""
    us = {k: (after[k] - before[k]) * 1e6 / max(n, 1) for k in before if not k.startswith("_")}
    total = after["_total"] - before["_total"]
    us["machine_busy"] = (after["_busy"] - before["_busy"]) / total if total else 0.0
    return us


def sockstat_kib() -> int:
    """Kernel TCP socket memory (/proc/net/sockstat `TCP: ... mem PAGES`), KiB."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            f = line.split()
            return int(f[f.index("mem") + 1]) * 4
    return 0


def settle_rss(t: common.Tunnel, secs: float) -> tuple[int, int]:
    time.sleep(secs)
    return common.rss_kib(t.client.pid), common.rss_kib(t.server.pid)


def one_round(i: int, args, bins: Path, out: Path) -> dict:
    d = out / f"round{i}"
    d.mkdir(parents=True, exist_ok=True)
    echo_p, echo = common.start_echo(PROCS, d / "echo.log")
    t = common.start_tunnel(PROCS, bins, d / "tunnel", echo, links=args.links,
                            limits=args.limits, threads=args.threads)
    r: dict = {"round": i, "load_start": common.loadavg()}
    try:
        host, port = echo.rsplit(":", 1)
        direct_addr = (host, int(port))
        host, port = t.map_addr.rsplit(":", 1)
        tunnel_addr = (host, int(port))
        time.sleep(2)
        order = ["direct", "tunnel"] if i % 2 else ["tunnel", "direct"]
        pids = {"echo": echo_p.pid, "client": t.client.pid, "server": t.server.pid}
        for what in order:
            if what == "direct":
                cpu0 = cpu_snapshot(pids)
                socks, secs, fails = open_many(direct_addr, args.n, args.concurrency, args.timeout)
                r["direct_cpu_us"] = cpu_per_setup(cpu0, cpu_snapshot(pids), len(socks))
                r["direct_secs"], r["direct_rate"] = secs, len(socks) / secs
                r["direct_failed"] = len(fails) + echo_all(socks, args.timeout)
                close_all(socks)
                time.sleep(2)
                continue
            c0, s0 = settle_rss(t, 1)
            k0 = sockstat_kib()
            cpu0 = cpu_snapshot(pids)
            socks, secs, fails = open_many(tunnel_addr, args.n, args.concurrency, args.timeout)
            r["tunnel_cpu_us"] = cpu_per_setup(cpu0, cpu_snapshot(pids), len(socks))
            r["tunnel_secs"], r["tunnel_rate"] = secs, len(socks) / secs
            r["tunnel_set_up"] = len(socks)
            r["tunnel_failed_setup"] = len(fails)
            r["first_failures"] = fails[:5]
            c1, s1 = settle_rss(t, args.hold)
            k1 = sockstat_kib()
            r["client_fds_open"] = common.fd_count(t.client.pid)
            r["server_fds_open"] = common.fd_count(t.server.pid)
            r["tunnel_failed_idle_echo"] = echo_all(socks, args.timeout)
            close_all(socks)
            c2, s2 = settle_rss(t, args.hold)
            r.update(client_rss_before=c0, server_rss_before=s0, client_rss_open=c1,
                     server_rss_open=s1, client_rss_closed=c2, server_rss_closed=s2,
                     kernel_tcp_kib_delta=k1 - k0)
            n = max(len(socks), 1)
            r["client_kib_per_conn"] = (c1 - c0) / n
            r["server_kib_per_conn"] = (s1 - s0) / n
            r["both_kib_per_conn"] = (c1 - c0 + s1 - s0) / n
        r["ratio"] = r["tunnel_rate"] / r["direct_rate"]
        r["load_end"] = common.loadavg()
        common.check_alive(t)
        return r
    finally:
        PROCS.stop(t.client)
        PROCS.stop(t.server)
        PROCS.stop(echo_p)


CPU_KEYS = ("gen", "echo", "client", "server")


def cpu_line(us: dict[str, float]) -> str:
    busy = f" (machine {us['machine_busy']:.0%} busy)"
    return " ".join(f"{k} {us[k]:.0f}" for k in CPU_KEYS) + busy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-n", type=int, default=10000, help="connections (default 10000)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64, help="set-ups in flight at once")
    ap.add_argument("--links", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None,
                    help="server.threads and client.threads of both daemons (default: unset, the "
                         "daemons' default: one worker per CPU, one on 1-2 CPUs)")
    ap.add_argument("--limits", default="", help="a [limits] section for both daemons")
    ap.add_argument("--hold", type=float, default=5, help="seconds to settle before reading RSS")
    ap.add_argument("--timeout", type=float, default=30, help="per set-up, seconds")
    ap.add_argument("--bins", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    benchlib.catch_signals()
    limit = common.raise_nofile()
    if limit < args.n + 100:
        sys.exit(f"open-file hard limit {limit} is below {args.n} + 100")
    bins = common.bins_dir(args.bins)
    out = args.out or Path(tempfile.mkdtemp(prefix="wanmux-scale-"))
    meta = {"commit": benchlib.git_head(), "date": dt.datetime.now(dt.timezone.utc)
            .strftime("%Y-%m-%d %H:%M UTC"), "n": args.n, "concurrency": args.concurrency,
            "links": args.links, "bins": str(bins)}
    rounds = []
    try:
        for i in range(1, args.rounds + 1):
            r = one_round(i, args, bins, out)
            rounds.append(r)
            log(f"round {i}: direct {r['direct_rate']:.0f}/s, tunnel {r['tunnel_rate']:.0f}/s "
                f"({r['ratio']:.0%}), failed {r['tunnel_failed_setup']}+"
                f"{r['tunnel_failed_idle_echo']} (direct {r['direct_failed']}), "
                f"{r['both_kib_per_conn']:.2f} KiB/conn (client {r['client_kib_per_conn']:.2f}, "
                f"server {r['server_kib_per_conn']:.2f}), load {r['load_end']}; CPU us/set-up "
                f"direct {cpu_line(r['direct_cpu_us'])}, tunnel {cpu_line(r['tunnel_cpu_us'])}")
    except (KeyboardInterrupt, RuntimeError) as e:
        log(f"stopped: {e}")
        PROCS.stop_all()
        sys.exit(2)
    PROCS.stop_all()
    med = {k: statistics.median(r[k] for r in rounds) for k in
           ("direct_rate", "tunnel_rate", "ratio", "client_kib_per_conn", "server_kib_per_conn",
            "both_kib_per_conn")}
    for phase in ("direct", "tunnel"):
        for k in CPU_KEYS + ("machine_busy",):
            med[f"{phase}_cpu_us_{k}"] = statistics.median(r[f"{phase}_cpu_us"][k] for r in rounds)
    failed = sum(r["tunnel_failed_setup"] + r["tunnel_failed_idle_echo"] for r in rounds)
    if args.json:
        print(json.dumps({"meta": meta, "rounds": rounds, "median": med}, indent=1))
    else:
        print(f"| round | direct set-ups/s | tunnel set-ups/s | ratio | failed | client KiB/conn "
              f"| server KiB/conn | both KiB/conn | RSS client/server before, open, closed (MiB) "
              f"| kernel TCP mem (MiB) | load |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rounds:
            mib = lambda k: f"{r[k] / 1024:.1f}"  # noqa: E731
            print(f"| {r['round']} | {r['direct_rate']:,.0f} | {r['tunnel_rate']:,.0f} | "
                  f"{r['ratio']:.0%} | {r['tunnel_failed_setup'] + r['tunnel_failed_idle_echo']} "
                  f"| {r['client_kib_per_conn']:.2f} | {r['server_kib_per_conn']:.2f} | "
                  f"{r['both_kib_per_conn']:.2f} | {mib('client_rss_before')}/"
                  f"{mib('server_rss_before')}, {mib('client_rss_open')}/{mib('server_rss_open')}, "
                  f"{mib('client_rss_closed')}/{mib('server_rss_closed')} | "
                  f"{r['kernel_tcp_kib_delta'] / 1024:.1f} | {r['load_end']} |")
        print(f"| median | {med['direct_rate']:,.0f} | {med['tunnel_rate']:,.0f} | "
              f"{med['ratio']:.0%} | {failed} | {med['client_kib_per_conn']:.2f} | "
              f"{med['server_kib_per_conn']:.2f} | {med['both_kib_per_conn']:.2f} | | | |")
        print("\n| CPU us per set-up (median) | load generator | echo service | wanmux-client "
              "| wanmux-server | total | machine busy |")
        print("|---|---|---|---|---|---|---|")
        for phase in ("direct", "tunnel"):
            v = [med[f"{phase}_cpu_us_{k}"] for k in CPU_KEYS]
            print(f"| {phase} | " + " | ".join(f"{x:.0f}" for x in v) + f" | {sum(v):.0f} | "
                  f"{med[f'{phase}_cpu_us_machine_busy']:.0%} |")
        print(f"\n{json.dumps(meta)}")
    (out / "scale.json").write_text(json.dumps({"meta": meta, "rounds": rounds, "median": med},
                                               indent=1))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
