"""Stand-ins for vLLM servers on loopback, and who among the router's workers called them.

``LoopbackBackend`` answers ``/health``, ``/metrics``, ``/v1/completions`` and
``/v1/chat/completions`` the way vLLM does, can be stopped and started again on the same port,
and records every completion request (and its ``user`` field, which tells a client's requests
apart) with the pid of the router worker that sent it: the worker owning the socket at the other end
of the connection (found through ``/proc``), so a test sees each worker's traffic separately
without the router saying anything about itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from tests.dataplane import free_port


@dataclass(frozen=True)
class Arrival:
    at: float  # time.monotonic() when the request arrived
    worker: int | None  # pid of the router worker that sent it
    user: str | None = None  # the request's OpenAI ``user`` field


def socket_owners(pids: set[int], remote_port: int) -> dict[int, int]:
    """Local port -> pid, for the loopback TCP connections of ``pids`` to ``remote_port``."""
    inode_pid: dict[str, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = fd.readlink().name
                    if target.startswith("socket:["):
                        inode_pid[target[8:-1]] = pid
    owners = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(remote.split(":")[1], 16) == remote_port and inode in inode_pid:
            owners[int(local.split(":")[1], 16)] = inode_pid[inode]
    return owners


class LoopbackBackend:
    """A vLLM-shaped server in a thread of its own; ``workers`` lists the pids to attribute."""

    def __init__(self, served_name: str, workers: Callable[[], set[int]], work_s: float = 0.01):
        self.served_name = served_name
        self.workers = workers
        self.work_s = work_s
        self.port = free_port()
        self.arrivals: list[Arrival] = []
        self._owners: dict[int, int] = {}
        self._runner: web.AppRunner | None = None
        self._listener: socket.socket | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)  # type: ignore[arg-type]

    def start(self) -> None:
        self._run(self._start())

    def stop(self) -> None:
        """Close the listener and every connection: the server is gone, as after a kill."""
        self._run(self._stop())

    def close(self) -> None:
        if self._runner is not None:
            self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def since(self, at: float) -> list[Arrival]:
        return [a for a in list(self.arrivals) if a.at >= at]

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/completions", self._completion)
        app.router.add_post("/v1/chat/completions", self._completion)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
        except OSError:
            listener.close()
            raise
        self._listener = listener
        await web.SockSite(self._runner, listener).start()

    async def _stop(self) -> None:
        assert self._runner is not None and self._listener is not None
        server = self._runner.server
        # asyncio accepts a connection in a task of its own, which makes its transport an
        # iteration later; had the listener closed meanwhile, that task fails on an assertion
        # (Server._attach, Python 3.11), silently, and leaves the accepted socket to the garbage
        # collector: a ResourceWarning that fails whichever test is running then (CI saw it).
        # So accepting stops first, and the accepts already under way finish while the listener
        # is still open; then aiohttp closes it and every connection.
        asyncio.get_running_loop().remove_reader(self._listener.fileno())
        for _ in range(3):
            await asyncio.sleep(0)
        await self._runner.cleanup()
        self._runner = self._listener = None
        # A closed transport closes its socket in a callback of a later iteration: connections
        # are closed until none is left (aiohttp forgets one once it is lost, its socket closed)
        # and no task of this loop (the backend's alone: accepts, handlers) is running, so that
        # none outlives a stopped loop.
        me = asyncio.current_task()
        deadline = time.monotonic() + 20
        while True:
            connections = server.connections if server is not None else []  # a new list
            if not connections and all(t is me or t.done() for t in asyncio.all_tasks()):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the loopback backend on {self.port} did not stop")
            for handler in connections:
                handler.force_close()
            await asyncio.sleep(0.01)
        self._owners.clear()  # the router's next connections may reuse these ports

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text="vllm:num_requests_running 0.0\nvllm:num_requests_waiting 0.0\n")

    async def _completion(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        at, worker = time.monotonic(), self._worker_of(peer[1] if peer else 0)
        user = (await request.json()).get("user")
        self.arrivals.append(Arrival(at, worker, user))
        await asyncio.sleep(self.work_s)
        chat = request.path.endswith("/chat/completions")
        choice: dict[str, object] = {"index": 0, "finish_reason": "length"}
        if chat:
            choice["message"] = {"role": "assistant", "content": "ok"}
        else:
            choice["text"] = " ok"
        return web.json_response(
            {
                "id": "cmpl-loopback",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": self.served_name,
                "choices": [choice],
                "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
            }
        )

    def _worker_of(self, peer_port: int) -> int | None:
        if peer_port not in self._owners:
            self._owners.update(socket_owners(self.workers(), self.port))
        return self._owners.get(peer_port)
