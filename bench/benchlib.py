"""Helpers shared by the benchmark scripts (compare/loopback.py, wanlab/scenarios.py): logging,
the processes they start and end, commands, wanmux keys and configs, wanmux-bench's JSON
reports, tunnel logs, and where the binaries are.

Python 3.11 standard library only. A script beside it imports it with

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import benchlib
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

REPO = Path(__file__).resolve().parent.parent
EXIT_VERIFY = 3  # wanmux-bench's exit status for a data verification failure
# kcptun's settings for every run: AES, the fast3 mode, no per-connection log lines.
KCPTUN_FLAGS = ["--crypt", "aes", "--mode", "fast3", "--quiet"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")

Log = Callable[[str], None]


def logger(prefix: str) -> Log:
    """A function that prints `[prefix] msg` lines to stderr."""

    def log(msg: str) -> None:
        print(f"[{prefix}] {msg}", file=sys.stderr, flush=True)

    return log


def _on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def catch_signals() -> None:
    """Turns SIGINT, SIGTERM and SIGHUP into KeyboardInterrupt, so every exit path runs the
    script's clean-up."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)


# ---------------------------------------------------------------------------------------------
# Processes

class Procs:
    """Every process a script starts, registered here and ended (newest first) on every exit
    path."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], logfile: Path, env: dict | None = None,
              **kw) -> subprocess.Popen:
        """Starts `argv` with its output appended to `logfile`, in a session of its own: a
        Ctrl-C in the terminal reaches only the script, which ends the children in order (a
        half-dead tunnel would otherwise spray errors)."""
        with open(logfile, "ab") as f:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f,
                                 stderr=subprocess.STDOUT, start_new_session=True, env=env, **kw)
        self.procs.append((name, p))
        return p

    def track(self, name: str, p: subprocess.Popen) -> None:
        """Registers a process started elsewhere (one whose output the script reads)."""
        self.procs.append((name, p))

    def forget(self, p: subprocess.Popen) -> None:
        """Unregisters `p` (it ended)."""
        self.procs = [(n, q) for n, q in self.procs if q is not p]

    def stop(self, p: subprocess.Popen) -> None:
        """SIGTERM; after 5 s a second SIGTERM (wanmux drains on the first and stops at once on
        the second); after 3 s more SIGKILL."""
        name = next((n for n, q in self.procs if q is p), "process")
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGTERM, 3), (signal.SIGKILL, 5)):
            if p.poll() is not None:
                break
            if sig == signal.SIGKILL or wait == 3:
                self.log(f"{name} (pid {p.pid}) still running; sending {signal.Signals(sig).name}")
            try:
                p.send_signal(sig)
                p.wait(timeout=wait)
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                pass
        self.forget(p)

    def stop_all(self) -> None:
        """Stops everything, newest first (bench clients, then each tunnel's client before its
        server), one at a time, so that no daemon logs its peer vanishing during shutdown."""
        for _, p in list(reversed(self.procs)):
            self.stop(p)


def first_exit(procs: Iterable[tuple[str, subprocess.Popen]]) -> str | None:
    """Why the first of `procs` that ended is gone, or None while all run."""
    for name, p in procs:
        if p.poll() is not None:
            return f"{name} exited with status {p.returncode}"
    return None


def communicate(p: subprocess.Popen, limit: float) -> tuple[int, str, str]:
    """Waits up to `limit` seconds for `p` (started with text pipes) and returns its status,
    stdout and stderr; kills it if it takes longer and says so in stderr."""
    try:
        out, err = p.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        err = f"killed after {limit:.0f} s without finishing. {err}"
    return p.returncode, out, err


def wait_for(cond: Callable[[], bool], what: str, procs: list[subprocess.Popen],
             timeout: float = 30.0, interval: float = 0.1) -> None:
    """Polls `cond` until it holds; raises RuntimeError if one of `procs` exits first or
    `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: a process exited with status {p.returncode}")
        if cond():
            return
        time.sleep(interval)
    raise RuntimeError(f"{what}: not ready after {timeout:.0f} s")


# ---------------------------------------------------------------------------------------------
# Commands and numbers

def run_cmd(argv: list[str], **kw) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw).stdout


def try_cmd(argv: list[str], cwd: Path | None = None) -> str | None:
    """The stripped output of `argv`, or None if it could not run or failed."""
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, cwd=cwd,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def fmt(x: float | None, spec: str, none: str = "-") -> str:
    return none if x is None else format(x, spec)


# ---------------------------------------------------------------------------------------------
# wanmux and wanmux-bench

def public_key(keygen_output: str) -> str:
    """The public key that `wanmux-server keygen` / `wanmux-client keygen` printed."""
    for line in keygen_output.splitlines():
        k, _, v = line.partition("=")
        if k.strip() == "public_key":
            return v.strip().strip('"')
    raise RuntimeError(f"no public_key in keygen output {keygen_output!r}")


def write_configs(d: Path, *, listen: str, node_addr: str, target: str, map_listen: str,
                  server_key: str, client_key: str, server_pub: str, client_pub: str,
                  links: str, psk_file: str | None = None, server_extra: str = "",
                  limits: str = "", client_extra: str = "") -> None:
    """Writes `d`/server.toml and `d`/client.toml for a static-key tunnel (Noise IK, or IKpsk2
    with `psk_file`) from the client's `map_listen` to the service "bench" at `target`.
    `node_addr` is TOML (one quoted address, or an array of them); `links` is the body of the
    client's [links], `server_extra` and `client_extra` more lines of [server] and [client],
    `limits` a [limits] section for both ends."""
    psk = f'psk_file = "{psk_file}"\n' if psk_file else ""
    (d / "server.toml").write_text(f"""\
[server]
listen = "{listen}"
node_id = 1
private_key_file = "{server_key}"
{psk}allowed_clients = ["{client_pub}"]
{server_extra}
{limits}
[[service]]
name = "bench"
target = "{target}"
""")
    (d / "client.toml").write_text(f"""\
[client]
private_key_file = "{client_key}"
{psk}{client_extra}
[[node]]
id = 1
addr = {node_addr}
public_key = "{server_pub}"

[links]
{links}
{limits}
[[map]]
listen = "{map_listen}"
service = "bench"
""")


def ensure_installed(binaries: list[str], packages: list[str], no_install: bool,
                     log: Log) -> str | None:
    """None when every one of `binaries` is on PATH, installing Debian's `packages` first if one
    is missing and that is allowed (root, apt-get, not `no_install`); else what is missing."""
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing and not no_install and os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"installing {' '.join(packages)} (apt-get)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", *packages], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        missing = [b for b in binaries if shutil.which(b) is None]
    return f"{', '.join(missing)} not found" if missing else None


def save_report(text: str, out: Path, log: Log) -> None:
    """Writes the markdown report `text` to `out` (making its directory) and prints it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    log(f"wrote {out}")


def daemon_env() -> dict[str, str]:
    """The environment for wanmux daemons: this one, logging at info unless RUST_LOG says."""
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "info")
    return env


def check_configs(name: str, bins: Path, d: Path) -> None:
    """Runs the daemons' `check` on `d`/server.toml and `d`/client.toml; raises RuntimeError
    with what they printed if one fails."""
    for exe, cfg in (("wanmux-server", "server.toml"), ("wanmux-client", "client.toml")):
        r = subprocess.run([str(bins / exe), "check", "--config", str(d / cfg)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{name}: {cfg} does not check: {r.stdout}{r.stderr}")


def bench_report(status: int, out: str, err: str) -> tuple[dict | None, int, str]:
    """The JSON report of a finished `wanmux-bench ... --json` run, its exit status and an
    error: the report is None when the run failed (the last line of its stderr), printed no
    JSON, or says its data did not verify (status EXIT_VERIFY)."""
    if status != 0:
        return None, status, (err.strip().splitlines() or [f"exit status {status}"])[-1][:300]
    try:
        j = json.loads(out)
    except json.JSONDecodeError:
        return None, status, f"unparsable output: {out[:200]!r}"
    if not j.get("verified"):
        return None, EXIT_VERIFY, "output says verified = false"
    return j, status, ""


def log_warnings(logfile: Path, words: tuple[str, ...], width: int) -> str | None:
    """`NAME: N warning/error lines of M, first: ...` for a tunnel log with lines holding any of
    `words`, None for a clean (or missing) one."""
    try:
        lines = logfile.read_text(errors="replace").splitlines()
    except OSError:
        return None
    bad = [line for line in lines if any(w in line for w in words)]
    if not bad:
        return None
    first = ANSI.sub("", bad[0]).strip()[:width]
    return f"{logfile.name}: {len(bad)} warning/error lines of {len(lines)}, first: {first}"


def wanmux_version(bins: Path) -> str | None:
    return try_cmd([str(bins / "wanmux-server"), "--version"])


def dpkg_versions(*packages: str) -> str | None:
    """`package version` of each installed Debian package, one a line."""
    return try_cmd(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *packages])


def git_head(cwd: Path = REPO) -> str | None:
    return try_cmd(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd)


def target_dir() -> Path:
    """Where cargo builds: $CARGO_TARGET_DIR, else <repo>/target."""
    return Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")


def missing_bins(bins: Path, names: Iterable[str]) -> list[Path]:
    """Those of `names` in `bins` that are missing or not executable."""
    return [bins / b for b in names if not os.access(bins / b, os.X_OK)]
