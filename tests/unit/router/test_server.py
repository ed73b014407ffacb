"""The daemon's reload handling: one at a time, and none lost before the loop runs."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any, cast

import yaml

from hxp_runtime.router import server
from hxp_runtime.router.server import EarlyReload, Gateway, Reloader
from hxp_runtime.router.settings import RouterSecrets, RouterSettings, load_settings

SLO = {"latency_ms": 1000, "throughput_rps": 10}


class SlowGateway:
    """Records how many applies overlap; each takes a while, as a real one awaits PostgreSQL."""

    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.secrets = RouterSecrets()
        self.applied = 0
        self.running = 0
        self.most_at_once = 0

    async def apply(self, settings: RouterSettings, secrets: RouterSecrets) -> None:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        await asyncio.sleep(0.05)
        self.running -= 1
        self.applied += 1


def settings_file(tmp_path: Path) -> Path:
    path = tmp_path / "settings.yml"
    backend = {"name": "a", "served_name": "a", "url": "http://127.0.0.1:9", "slo": SLO}
    path.write_text(yaml.safe_dump({"backends": [backend]}))
    return path


async def test_reloads_run_one_at_a_time_and_a_burst_folds_into_one_more(tmp_path: Path) -> None:
    path = settings_file(tmp_path)
    gateway = SlowGateway(load_settings(path))
    args = argparse.Namespace(settings=path, secrets=None)
    reloader = Reloader(args, cast(Gateway, gateway))
    await asyncio.gather(*(reloader.request() for _ in range(5)))
    assert gateway.most_at_once == 1
    assert gateway.applied == 2  # the one running, then one for everything that came meanwhile
    await reloader.request()
    assert gateway.applied == 3


def test_a_sighup_before_the_loop_runs_is_kept_for_later() -> None:
    early = EarlyReload()
    previous: Any = signal.getsignal(signal.SIGHUP)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        os.kill(os.getpid(), signal.SIGHUP)  # pending while blocked, as in a new worker
        assert not early.take()
        early.install()  # takes the signal over and unblocks it: the pending one arrives
        assert early.take()
        assert not early.take()
    finally:
        signal.signal(signal.SIGHUP, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def test_sockets_from_systemd_are_taken_only_by_the_process_it_names(monkeypatch: Any) -> None:
    # Two sockets, as hxp-router.socket passes behind a virtual address (the host's address and
    # the virtual one), at consecutive descriptors from SD_LISTEN_FDS_START as systemd puts them.
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    first = 200
    for offset, listener in enumerate(listeners):
        os.dup2(listener.fileno(), first + offset)
    try:
        monkeypatch.setattr(server, "SD_LISTEN_FDS_START", first)
        monkeypatch.setenv("LISTEN_FDS", "2")
        monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))  # another process's
        assert server.inherited_sockets() == []
        assert "LISTEN_FDS" not in os.environ  # not passed on to a child either
        monkeypatch.setenv("LISTEN_FDS", "2")
        monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
        taken = server.inherited_sockets()
        assert [s.getsockname() for s in taken] == [s.getsockname() for s in listeners]
        assert not any(os.get_inheritable(s.fileno()) for s in taken)
        for sock in taken:
            sock.close()  # the descriptors at first, first + 1
    finally:
        for listener in listeners:
            listener.close()
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    assert server.inherited_sockets() == []  # a manual run binds the port itself


def test_a_socket_that_does_not_listen_is_refused() -> None:
    with socket.socket() as unbound:
        try:
            server.listening_socket(unbound.fileno())
        except OSError as exc:
            assert "not a listening TCP socket" in str(exc)
        else:
            raise AssertionError("an unbound socket was taken")
        assert unbound.fileno() >= 0  # left to its owner, not closed


def test_the_event_loop_is_uvloop_when_installed() -> None:
    new_loop, name = server.loop_factory()
    loop = new_loop()
    try:
        assert type(loop).__module__.startswith("uvloop")
        assert name.startswith("uvloop ")
    finally:
        loop.close()


def test_without_uvloop_the_worker_runs_on_asyncio_and_says_so(monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    new_loop, name = server.loop_factory()
    assert new_loop is asyncio.new_event_loop
    assert name == "asyncio (uvloop is not installed)"
