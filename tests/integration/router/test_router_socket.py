"""A router restart on a socket that outlives the process, as ``hxp-router.socket`` gives it.

The test holds the listening socket, as systemd does, and starts each router on it through the
sd_listen_fds protocol (the socket at fd 3, ``LISTEN_FDS``, ``LISTEN_PID``), through
``systemd-socket-activate`` when the host has it (it passes inherited sockets on). Four workers
serve in front of ``benchmarks/fast_backend.py``; under load the router is stopped with SIGTERM
and a new one started on the same socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.dataplane import free_port
from tests.integration.router.clients import ClientThreads
from tests.integration.router.conftest import REPO, RouterProcess, call, fast_backend, worker_pids

pytestmark = pytest.mark.slow

WORKERS = 4
CLIENTS = 8
ACTIVATE = shutil.which("systemd-socket-activate") or next(
    (p for p in ("/lib/systemd/systemd-socket-activate",) if Path(p).exists()), None
)
# Puts the socket at fd 3 and names this process as its receiver, then runs the command: what
# systemd does for a socket unit's service.
SHIM = """
import os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execv(sys.argv[2], sys.argv[2:])
"""
BODY = {"model": "fast", "prompt": "restart", "max_tokens": 4}
KEY = "hxp-socket-test-key-0123456789"
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
# A limit the load cannot reach: a 429 is not what this test counts.
SECRETS = {
    "api_keys": [
        {"name": "load", "secret": KEY, "requests_per_minute": 10**7, "tokens_per_minute": 10**9}
    ]
}


@dataclass
class SocketRouter(RouterProcess):
    listener: socket.socket | None = None
    activate: str | None = None

    def spawn(self) -> subprocess.Popen[bytes]:
        assert self.listener is not None
        fd = self.listener.fileno()
        router = [sys.executable, "-m", "hxp_runtime.router"]
        router += ["--settings", str(self.settings_path)]
        router += ["--secrets", str(self.directory / "secrets.yml")]
        command = [self.activate, *router] if self.activate else router
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-c", SHIM, str(fd), *command],
                pass_fds=(fd,),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )


@dataclass
class Tally:
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())


class CloseAwareLoad(ClientThreads):
    """http.client keep-alive connections that reconnect after ``Connection: close``; no retry."""

    join_s = 60.0

    def __init__(self, port: int) -> None:
        self.port = port
        self.tally = Tally()
        self._lock = threading.Lock()
        super().__init__([() for _ in range(CLIENTS)])

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        payload = json.dumps(BODY)
        while not self._stop.is_set():
            try:
                connection.request("POST", "/v1/completions", payload, HEADERS)
                response = connection.getresponse()
                response.read()
                cause = None if response.status == 200 else f"http_{response.status}"
            except OSError as exc:
                cause = type(exc).__name__
                connection.close()
            with self._lock:
                if cause is None:
                    self.tally.ok += 1
                else:
                    self.tally.failed[cause] += 1
        connection.close()


class KeepAliveLoad:
    """aiohttp's client at its defaults (a pooled keep-alive connection each), no retries."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.tally = Tally()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()))

    def __enter__(self) -> KeepAliveLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    async def _run(self) -> None:
        url = f"http://127.0.0.1:{self.port}/v1/completions"
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout, headers=HEADERS) as session:

            async def client() -> None:
                while not self._stop.is_set():
                    try:
                        async with session.post(url, json=BODY) as response:
                            await response.read()
                            cause = None if response.status == 200 else f"http_{response.status}"
                    except (aiohttp.ClientError, OSError) as exc:
                        cause = type(exc).__name__
                    if cause is None:
                        self.tally.ok += 1
                    else:
                        self.tally.failed[cause] += 1

            await asyncio.gather(*(client() for _ in range(CLIENTS)))


def router_on(listener: socket.socket, backend_port: int, directory: Path) -> SocketRouter:
    port = listener.getsockname()[1]
    settings = {
        "listen_host": "127.0.0.1",
        "port": port,
        "workers": WORKERS,
        "drain_timeout_s": 10,
        "health_check": {"enabled": True, "interval_s": 1, "timeout_s": 1},
        "backends": [fast_backend(backend_port)],
    }
    return SocketRouter(settings, SECRETS, directory, listener=listener, activate=ACTIVATE)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", free_port()), backlog=4096)
    yield sock
    sock.close()


def listening_sockets(pids: set[int], port: int) -> int:
    """How many LISTEN sockets on ``port`` the processes hold their own (by inode)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
            inodes.add(fields[9])
    held = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = fd.readlink().name
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        held.add(target[8:-1])
    return len(held)


def test_the_workers_serve_on_the_socket_they_were_given(
    listener: socket.socket, backend_port: int, tmp_path: Path
) -> None:
    router = router_on(listener, backend_port, tmp_path)
    router.start()
    try:
        workers = worker_pids(router)
        assert len(workers) == WORKERS, router.log_tail()
        port = listener.getsockname()[1]
        # One listening socket on the port, the test's: no worker bound one of its own.
        assert listening_sockets({os.getpid(), router.process.pid, *workers}, port) == 1  # type: ignore[union-attr]
        assert "sockets from systemd" in router.log_tail()
        assert call("POST", router.url + "/v1/completions", BODY, KEY)[0] == 200
    finally:
        assert router.stop() == 0, router.log_tail()
    # The socket outlived the router: a connection is queued, not refused.
    with socket.create_connection(("127.0.0.1", listener.getsockname()[1]), timeout=2):
        pass


@pytest.mark.parametrize("client", ["close-aware", "keep-alive"])
def test_a_restart_under_load_fails_no_request(
    client: str, listener: socket.socket, backend_port: int, tmp_path: Path
) -> None:
    old = router_on(listener, backend_port, tmp_path / "old")
    old.start()
    port = listener.getsockname()[1]
    load_type = CloseAwareLoad if client == "close-aware" else KeepAliveLoad
    new = router_on(listener, backend_port, tmp_path / "new")
    try:
        with load_type(port) as load:
            time.sleep(2)
            before = load.tally.ok
            stopped = time.monotonic()
            assert old.stop() == 0, old.log_tail()
            stop_s = time.monotonic() - stopped
            new.write()
            new.process = new.spawn()
            new.wait_ready()
            gap_s = time.monotonic() - stopped
            after_restart = load.tally.ok
            time.sleep(2)
        tally = load.tally
    finally:
        new.stop()
        old.stop()
    print(
        f"\n{client} client, no retries: {tally.ok} ok, {tally.failed_total} failed "
        f"{dict(tally.failed)} across a {gap_s:.1f} s restart ({stop_s:.1f} s to stop, the rest "
        f"to start; {WORKERS} workers, {CLIENTS} clients)"
    )
    assert before > 0 and tally.ok > after_restart, "the load did not run on both routers"
    if client == "close-aware":
        assert tally.failed_total == 0, dict(tally.failed)
    else:
        assert tally.failed_total <= CLIENTS, dict(tally.failed)
