"""What a request costs the servers the router is built from, before any of the router's own work.

Not a test: it prints numbers for docs/benchmarks.md ("Router", the floor under the targets).
The same setup as router_bench.py (the fast backend and the server under test pinned to core 1,
wrk ``-t1`` on core 0, the benchmark's POST /v1/chat/completions, CPU = utime + stime of the
server's process over the measured run), for three servers that do less than the router::

    .venv/bin/python benchmarks/server_floor.py [--duration 10] [--json out.json]

- ``raw uvloop``: the fast backend itself (a raw asyncio protocol on uvloop, canned answer),
  called directly: what Python and the event loop cost per request at the least.
- ``aiohttp``: an aiohttp ``web.Application`` on uvloop (the router's HTTP server) whose one
  route reads the body and answers the fast backend's canned body: aiohttp's own cost.
- ``aiohttp + upstream``: the same route passing the body through the router's upstream client
  (``hxp_runtime.router.upstream.UpstreamPool``, keep-alive) to the fast backend and answering
  its body: a pass-through proxy with no authentication, rate limit, routing, metrics or usage.
- ``raw uvloop + upstream``: the same pass-through with no framework (``RawPassThrough``: the
  head parsed for its Content-Length, a task per request): what a server of the router's own
  would start from.

The router's target (issue 14) is 150 µs of CPU per request at every concurrency; what these
cost at concurrency 1 is the part of that budget spent before the router's own work begins.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.fast_backend import completion_body  # noqa: E402
from benchmarks.router_bench import (  # noqa: E402
    LOAD_CORE,
    SERVER_CORE,
    Bench,
    Target,
    cpu_model,
    measure,
    pinned,
    start_backend,
    wait_http,
)
from hxp_runtime.router.upstream import UpstreamPool  # noqa: E402
from tests.dataplane import free_port  # noqa: E402


async def serve(port: int, upstream: str | None) -> None:
    pool = UpstreamPool(upstream) if upstream else None
    canned = completion_body(chat=True)  # the fast backend's own answer
    loop = asyncio.get_running_loop()

    async def chat(request: web.Request) -> web.Response:
        body = await request.read()
        if pool is None:
            return web.Response(body=canned, content_type="application/json")
        answer = await pool.post(b"/v1/chat/completions", body, loop.time() + 30, buffered=True)
        return web.Response(status=answer.status, body=answer.body, content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


class RawPassThrough(asyncio.Protocol):
    """HTTP/1.1 keep-alive with no framework: the head parsed for its Content-Length, the body
    passed through ``pool`` and its answer written back. Enough for wrk and wait_http, nothing
    more (no chunked bodies, limits, TLS or errors): a floor, not a server."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 : head.find(b"\r\n", at)]) if at >= 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        body, self.buffer = self.buffer[end + 4 : end + 4 + length], self.buffer[end + 4 + length :]
        if head.startswith(b"get"):
            self._answer(200, b"ok")
        else:
            self.pool.loop.create_task(self._forward(body))

    async def _forward(self, body: bytes) -> None:
        deadline = self.pool.loop.time() + 30
        answer = await self.pool.post(b"/v1/chat/completions", body, deadline, buffered=True)
        self._answer(answer.status, answer.body)

    def _answer(self, status: int, body: bytes) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
            % (status, len(body), body)
        )


async def serve_raw(port: int, upstream: str) -> None:
    pool = UpstreamPool(upstream)
    await asyncio.get_running_loop().create_server(lambda: RawPassThrough(pool), "127.0.0.1", port)
    await asyncio.Event().wait()


def start_floor(bench: Bench, name: str, backend: int, through: bool, raw: bool = False) -> Target:
    port = free_port()
    command = [sys.executable, str(Path(__file__)), "--serve", str(port)]
    if through:
        command += ["--upstream", f"http://127.0.0.1:{backend}"]
    if raw:
        command += ["--raw"]
    process = bench.spawn(name.replace(" ", "-"), pinned(SERVER_CORE, command), cwd=REPO)
    wait_http(f"http://127.0.0.1:{port}/health", 20)
    return Target(name, port, pids=[process.pid])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        uvloop.run(
            serve_raw(args.serve, args.upstream) if args.raw else serve(args.serve, args.upstream)
        )
        return 0
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu": cpu_model(),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "targets": {},
    }
    print("| server | c | req/s | CPU/request | of it, kernel |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="hxp-floor-") as tmp, Bench(Path(tmp)) as bench:
        backend = start_backend(bench)
        targets = [
            Target("raw uvloop", backend, pids=[bench.pids["backend"]]),
            start_floor(bench, "aiohttp", backend, through=False),
            start_floor(bench, "aiohttp + upstream", backend, through=True),
            start_floor(bench, "raw uvloop + upstream", backend, through=True, raw=True),
        ]
        for target in targets:
            rows = results["targets"][target.name] = {}
            for c in args.concurrency:
                r = rows[c] = measure(target, c, args.duration, args.warmup, bench.work)
                print(
                    f"| {target.name} | {c} | {r['rps']:,.0f} | {r['cpu_us_per_request']:.0f} µs"
                    f" | {r['system_us_per_request']:.0f} µs |",
                    flush=True,
                )
    results["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    print(f"\nload average before {results['loadavg_before']}, after {results['loadavg_after']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
