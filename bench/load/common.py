"""What the load benchmarks (scale.py, soak.py) share: an echo service, a one-node tunnel on
loopback with TCP (or QUIC) links, a cluster of nodes on loopback, and reading a daemon's memory
and open files from /proc.

Python 3.11 standard library only. Run as a script it is the echo service:

    python3 bench/load/common.py echo [--listen 127.0.0.1:0]

which prints `listening on ADDR` and echoes every connection's bytes back until the peer
closes (or resets) it. It raises its soft open-file limit to the hard one first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchlib  # noqa: E402
from benchlib import run_cmd  # noqa: E402

HERE = Path(__file__).resolve().parent


def raise_nofile() -> int:
    """Raises this process's soft RLIMIT_NOFILE to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# ---------------------------------------------------------------------------------------------
# /proc

def rss_kib(pid: int) -> int:
    """VmRSS of `pid` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_secs(pid: int) -> float:
    """User + system CPU seconds `pid` has used (all its threads), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    f = stat[stat.rindex(")") + 2:].split()
    # Fields 14 and 15 (utime, stime), counted from 1 with the pid and comm before `)`.
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def fd_count(pid: int) -> int:
    """Open file descriptors of `pid`."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---------------------------------------------------------------------------------------------
# The echo service

async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def _serve(listen: str) -> None:
    host, port = listen.rsplit(":", 1)
    srv = await asyncio.start_server(_echo, host, int(port), backlog=4096, limit=65536)
    addr = srv.sockets[0].getsockname()
    print(f"listening on {addr[0]}:{addr[1]}", flush=True)
    async with srv:
        await srv.serve_forever()


def start_echo(procs: benchlib.Procs, logfile: Path) -> tuple[subprocess.Popen, str]:
    """Starts the echo service in a process of its own; returns it and its address."""
    p = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "echo"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=open(logfile, "ab"), text=True, start_new_session=True)
    procs.track("echo service", p)
    line = p.stdout.readline().strip()
    if not line.startswith("listening on "):
        raise RuntimeError(f"echo service did not start: {line!r}")
    return p, line.removeprefix("listening on ")


# ---------------------------------------------------------------------------------------------
# The tunnel

@dataclass
class Tunnel:
    server: subprocess.Popen
    client: subprocess.Popen
    map_addr: str
    link_port: int
    logs: list[Path] = field(default_factory=list)
    transport: str = "tcp"


def links_up(t: Tunnel) -> int:
    """The client's links that are up: its established TCP connections to the node, or for QUIC
    links (which share one UDP socket) the "link up" lines of its log less its "link ended"
    lines."""
    if t.transport == "tcp":
        return len(link_sockets(t.link_port))
    up = ended = 0
    with open(t.logs[1], errors="replace") as f:
        for line in f:
            if "link up" in line:
                up += 1
            elif "link ended" in line:
                ended += 1
    return up - ended


def start_tunnel(procs: benchlib.Procs, bins: Path, d: Path, target: str, *, links: int,
                 limits: str = "", server_extra: str = "", transport: str = "tcp",
                 threads: int | None = None) -> Tunnel:
    """Writes keys and configs into `d` and starts a one-node tunnel with `links` links over
    `transport` ("tcp" or "quic"; Noise IKpsk2) from a mapped port on 127.0.0.1 to `target`;
    returns once the mapped port listens and every link is up. `threads` sets both daemons'
    `threads` (unset: the daemons' default, one worker per CPU or one on 1-2 CPUs)."""
    d.mkdir(parents=True, exist_ok=True)
    srv, cli = str(bins / "wanmux-server"), str(bins / "wanmux-client")
    server_pub = benchlib.public_key(run_cmd([srv, "keygen", "--out", str(d / "server.key")]))
    client_pub = benchlib.public_key(run_cmd([cli, "keygen", "--out", str(d / "client.key")]))
    run_cmd([srv, "keygen", "--psk", "--out", str(d / "wanmux.psk")])
    link_port, map_port = free_tcp_port(), free_tcp_port()
    benchlib.write_configs(
        d, listen=f"127.0.0.1:{link_port}", node_addr=f'"127.0.0.1:{link_port}"', target=target,
        map_listen=f"127.0.0.1:{map_port}", server_key="server.key", client_key="client.key",
        server_pub=server_pub, client_pub=client_pub,
        links=f'count = {links}\ntransport = "{transport}"', psk_file="wanmux.psk",
        server_extra=server_extra + (f"\nthreads = {threads}\n" if threads else ""),
        client_extra=f"threads = {threads}\n" if threads else "", limits=limits)
    benchlib.check_configs("tunnel", bins, d)
    env = benchlib.daemon_env()
    logs = [d / "server.log", d / "client.log"]
    ps = procs.start("wanmux-server", [srv, "run", "--config", str(d / "server.toml")], logs[0],
                     env=env)
    benchlib.wait_for(lambda: listening(link_port), "wanmux-server listening", [ps])
    pc = procs.start("wanmux-client", [cli, "run", "--config", str(d / "client.toml")], logs[1],
                     env=env)
    benchlib.wait_for(lambda: listening(map_port), "wanmux-client listening", [ps, pc])
    t = Tunnel(ps, pc, f"127.0.0.1:{map_port}", link_port, logs, transport)
    benchlib.wait_for(lambda: links_up(t) >= links, "links up", [ps, pc])
    return t


@dataclass
class ClusterTunnel:
    """A client and `len(nodes)` server nodes of one cluster, every node listing every other as
    a `[[peer]]`: the client's links to node K go to `link_ports[K-1]`, the peer links between
    nodes to their `peer_ports`. `logs` holds the nodes' logs, then the client's."""
    nodes: list[subprocess.Popen]
    client: subprocess.Popen
    map_addr: str
    link_ports: list[int]
    peer_ports: list[int]
    logs: list[Path] = field(default_factory=list)
    transport: str = "tcp"
    # What `restart_node` needs: the configs' directory, the binaries, the process list.
    d: Path | None = None
    bins: Path | None = None
    procs: benchlib.Procs | None = None


def restart_node(t: ClusterTunnel, k: int) -> None:
    """Starts node `k` (1-based) again from its config, its log appended to, once it ended;
    returns when it listens for client links again."""
    srv = str(t.bins / "wanmux-server")
    old = t.nodes[k - 1]
    t.procs.forget(old)
    t.nodes[k - 1] = t.procs.start(f"wanmux-server node {k}",
                                   [srv, "run", "--config", str(t.d / f"node{k}.toml")],
                                   t.logs[k - 1], env=benchlib.daemon_env())
    benchlib.wait_for(lambda: listening(t.link_ports[k - 1]), f"node {k} listening again",
                      [t.nodes[k - 1]])


def cluster_links_up(t: ClusterTunnel) -> int:
    """The client's links that are up, to every node (TCP links only)."""
    return sum(len(link_sockets(p)) for p in t.link_ports)


def peer_sockets(t: ClusterTunnel) -> list[tuple[int, int]]:
    """The peer links between the nodes, as (peer port dialled, local port of the dialling
    end): the connections to a node's `[cluster] listen` from the other nodes."""
    return [(p, lp) for p in t.peer_ports for lp in link_sockets(p)]


def start_cluster(procs: benchlib.Procs, bins: Path, d: Path, target: str, *, nodes: int,
                  links: int, spread: str = "stripe",
                  owner: str = "least_loaded") -> ClusterTunnel:
    """Writes keys and configs into `d` and starts a cluster of `nodes` server nodes on
    127.0.0.1 (TCP links; Noise IKpsk2 to the client, every node a peer of every other) and a
    client listing them all (`cluster.owner = owner`), mapping a port on 127.0.0.1 to `target`
    with `spread`; returns
    once the mapped port listens, every node has a peer link to every other and the client
    has `links` links to each node."""
    d.mkdir(parents=True, exist_ok=True)
    srv, cli = str(bins / "wanmux-server"), str(bins / "wanmux-client")
    client_pub = benchlib.public_key(run_cmd([cli, "keygen", "--out", str(d / "client.key")]))
    run_cmd([srv, "keygen", "--psk", "--out", str(d / "wanmux.psk")])
    pubs = [benchlib.public_key(run_cmd([srv, "keygen", "--out", str(d / f"node{k}.key")]))
            for k in range(1, nodes + 1)]
    link_ports = [free_tcp_port() for _ in range(nodes)]
    peer_ports = [free_tcp_port() for _ in range(nodes)]
    map_port = free_tcp_port()
    for k in range(1, nodes + 1):
        peers = "".join(f'[[peer]]\nid = {j}\naddr = "127.0.0.1:{peer_ports[j - 1]}"\n'
                        f'public_key = "{pubs[j - 1]}"\n\n'
                        for j in range(1, nodes + 1) if j != k)
        (d / f"node{k}.toml").write_text(f"""\
[server]
listen = "127.0.0.1:{link_ports[k - 1]}"
node_id = {k}
private_key_file = "node{k}.key"
psk_file = "wanmux.psk"
allowed_clients = ["{client_pub}"]

[cluster]
listen = "127.0.0.1:{peer_ports[k - 1]}"

{peers}[[service]]
name = "bench"
target = "{target}"
""")
    node_list = "".join(f'[[node]]\nid = {k}\naddr = "127.0.0.1:{link_ports[k - 1]}"\n'
                        f'public_key = "{pubs[k - 1]}"\n\n' for k in range(1, nodes + 1))
    (d / "client.toml").write_text(f"""\
[client]
private_key_file = "client.key"
psk_file = "wanmux.psk"

[cluster]
owner = "{owner}"

{node_list}[links]
count = {links}
transport = "tcp"

[[map]]
listen = "127.0.0.1:{map_port}"
service = "bench"
spread = "{spread}"
""")
    for k in range(1, nodes + 1):
        r = subprocess.run([srv, "check", "--config", str(d / f"node{k}.toml")],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"node{k}.toml: {r.stdout}{r.stderr}")
    r = subprocess.run([cli, "check", "--config", str(d / "client.toml")], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise RuntimeError(f"client.toml: {r.stdout}{r.stderr}")
    env = benchlib.daemon_env()
    logs = [d / f"node{k}.log" for k in range(1, nodes + 1)] + [d / "client.log"]
    ps = [procs.start(f"wanmux-server node {k}",
                      [srv, "run", "--config", str(d / f"node{k}.toml")], logs[k - 1], env=env)
          for k in range(1, nodes + 1)]
    for p in link_ports + peer_ports:
        benchlib.wait_for(lambda p=p: listening(p), f"node listening on {p}", ps)
    pc = procs.start("wanmux-client", [cli, "run", "--config", str(d / "client.toml")], logs[-1],
                     env=env)
    benchlib.wait_for(lambda: listening(map_port), "wanmux-client listening", ps + [pc])
    t = ClusterTunnel(ps, pc, f"127.0.0.1:{map_port}", link_ports, peer_ports, logs, d=d,
                      bins=bins, procs=procs)
    # Each pair of nodes has one peer link (or two for a while, when both dialled).
    benchlib.wait_for(lambda: len(peer_sockets(t)) >= nodes * (nodes - 1) // 2,
                      "peer links up", ps + [pc])
    benchlib.wait_for(lambda: all(len(link_sockets(p)) >= links for p in link_ports),
                      "links up", ps + [pc])
    return t


def check_alive(t: Tunnel) -> None:
    """Raises RuntimeError if either daemon of `t` has exited."""
    for name, p in (("wanmux-server", t.server), ("wanmux-client", t.client)):
        if p.poll() is not None:
            raise RuntimeError(f"{name} exited with status {p.returncode}")


def free_tcp_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    want = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1] == want and f[3] == "0A":
            return True
    return False


def link_sockets(link_port: int) -> list[int]:
    """The local ports of the client's established links to the node (their dialling ends)."""
    want = f":{link_port:04X}"
    ports = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[2].endswith(want) and f[2].startswith("0100007F") and f[3] == "01":
            ports.append(int(f[1].split(":")[1], 16))
    return ports


def kill_link(link_port: int, local_port: int) -> bool:
    """Aborts one link's TCP connection (both ends get a reset) with `ss -K`."""
    r = subprocess.run(["ss", "-K", "-tnH", "dst", f"127.0.0.1:{link_port}", "sport", "=",
                        str(local_port)], capture_output=True, text=True)
    return r.returncode == 0 and bool(r.stdout.strip())


def bins_dir(arg: Path | None) -> Path:
    bins = arg or benchlib.target_dir() / "release"
    missing = benchlib.missing_bins(bins, ("wanmux-server", "wanmux-client"))
    if missing:
        raise SystemExit(f"missing {', '.join(map(str, missing))}: build with "
                         "`cargo build --release -p wanmux-server -p wanmux-client` or pass --bins")
    return bins


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("echo", help="run the echo service")
    e.add_argument("--listen", default="127.0.0.1:0")
    args = ap.parse_args()
    if args.cmd == "echo":
        raise_nofile()
        try:
            asyncio.run(_serve(args.listen))
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
