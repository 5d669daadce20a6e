#!/usr/bin/env python3
"""User-space instructions per connection set-up of both daemons, counted by callgrind.

    python3 bench/load/callgrind.py --bins DIR [-n 2000] [--concurrency 16] [--links 4]

Starts `scale.py`'s one-node tunnel (release binaries from DIR) with both daemons under
`valgrind --tool=callgrind`, zeroes the counters once every link is up, opens `-n`
connections through the tunnel as `scale.py` does (each set up when one byte came back), dumps
the counters and prints each daemon's instructions per set-up. Instruction counts depend less on
how busy the machine is than set-up rates, but not nothing: how many engine calls a set-up takes
depends on how events batch (the same build gave 75k-85k per set-up in four runs), so compare
builds in interleaved pairs, several of each.
Needs valgrind (`apt-get install valgrind`).
"""
from __future__ import annotations

import argparse
import atexit
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import scale  # noqa: E402


def wrap(bins: Path, out: Path, d: Path) -> Path:
    """A directory of wrapper scripts that run each daemon's `run` under callgrind, writing
    `out`/NAME.PID files, and everything else (`keygen`, `check`) as it is."""
    d.mkdir(parents=True, exist_ok=True)
    for name in ("wanmux-client", "wanmux-server"):
        real = (bins / name).resolve()
        script = d / name
        script.write_text(
            "#!/bin/sh\n"
            f'if [ "$1" = run ]; then exec valgrind --tool=callgrind --dump-instr=no '
            f"--collect-atstart=yes --callgrind-out-file={out}/{name}.%p {real} \"$@\"; fi\n"
            f'exec {real} "$@"\n')
        script.chmod(0o755)
    return d


def dumped(out: Path, name: str) -> int:
    """Instructions in the dumps of `name` triggered by `callgrind_control -d setup`."""
    total = 0
    for f in out.glob(f"{name}.*"):
        text = f.read_text(errors="replace")
        if "Trigger: dump setup" not in text:
            continue
        m = re.search(r"^(?:totals|summary): (\d+)", text, re.M)
        total += int(m.group(1)) if m else 0
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bins", type=Path, required=True, help="release wanmux-client and -server")
    ap.add_argument("-n", type=int, default=2000, help="connections to set up")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--links", type=int, default=4)
    args = ap.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    tmp = Path(tempfile.mkdtemp(prefix="wanmux-callgrind-"))
    out = tmp / "out"
    out.mkdir()
    bins = wrap(args.bins, out, tmp / "bins")
    common.raise_nofile()
    procs = scale.PROCS
    atexit.register(procs.stop_all)
    _, echo = common.start_echo(procs, tmp / "echo.log")
    t = common.start_tunnel(procs, bins, tmp / "tunnel", echo, links=args.links)
    host, port = t.map_addr.rsplit(":", 1)
    time.sleep(3)  # the links' first pings and the runtime's warm-up stay out of the count
    for p in (t.client, t.server):
        subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True, check=False)
    socks, secs, fails = scale.open_many((host, int(port)), args.n, args.concurrency, 60)
    for p in (t.client, t.server):
        subprocess.run(["callgrind_control", "-d", "setup", str(p.pid)], capture_output=True,
                       check=False)
    scale.close_all(socks)
    procs.stop(t.client)
    procs.stop(t.server)
    if not socks:
        sys.exit(f"no connection was set up ({len(fails)} failed)")
    print(f"{len(socks)} set up, {len(fails)} failed, {len(socks) / secs:.0f}/s under callgrind")
    for name in ("wanmux-client", "wanmux-server"):
        print(f"{name}: {dumped(out, name) / len(socks):.0f} instructions per set-up")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
