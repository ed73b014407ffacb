"""The admin API: every backend's live state, and draining a backend out of rotation.

It listens on loopback only, on ``admin_port``, never on the public port, and only when the
secrets file holds an ``admin_key``; every request carries that key as a bearer token,
compared in constant time and never logged. Each worker serves it (SO_REUSEPORT, like the
public port) from the state all workers share (``shared``), so any worker answers for all:

    GET  /admin/backends                          live state merged over every worker
    POST /admin/backends/{name}/drain?deadline_s=N
    POST /admin/backends/{name}/undrain

A drain answers once every worker has stopped routing to the backend and its requests in
flight have finished, or when the deadline passes; the answer says which.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from hxp_runtime.router.backends import BackendRuntime
from hxp_runtime.router.breaker import BreakerState
from hxp_runtime.router.shared import SharedState

if TYPE_CHECKING:
    from hxp_runtime.router.app import Gateway

DEFAULT_DEADLINE_S = 30.0
MAX_DEADLINE_S = 3600.0
POLL_S = 0.05
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def worker_view(backends: Mapping[str, BackendRuntime], drain_tokens: list[str]) -> dict[str, Any]:
    """What one worker publishes: the drains it applied and its view of every backend."""
    return {
        "drains": sorted(drain_tokens),
        "backends": {
            backend_id: {
                "healthy": live.stats.healthy,
                "breaker": live.breaker.state.name.lower(),
                "in_flight": live.stats.outstanding,
                "latency_ms": live.stats.latency_ms,
                "draining": live.stats.draining,
                "url": live.backend.url,
            }
            for backend_id, live in backends.items()
        },
    }


def merge_views(
    names: list[str], views: Mapping[int, dict[str, Any]], drained: Mapping[str, str]
) -> dict[str, Any]:
    """Every backend over every worker: healthy where all agree, the worst breaker state, the
    sum of requests in flight, the mean latency, each worker's own view alongside."""
    worst = {state.name.lower(): state for state in BreakerState}
    merged = {}
    for name in names:
        seen = {
            pid: view["backends"][name] for pid, view in views.items() if name in view["backends"]
        }
        latencies = [v["latency_ms"] for v in seen.values() if v["latency_ms"] is not None]
        breakers = [worst[v["breaker"]] for v in seen.values()]
        merged[name] = {
            "healthy": bool(seen) and all(v["healthy"] for v in seen.values()),
            "breaker": max(breakers, default=BreakerState.CLOSED).name.lower(),
            "in_flight": sum(v["in_flight"] for v in seen.values()),
            "latency_ms": round(sum(latencies) / len(latencies), 3) if latencies else None,
            "draining": name in drained,
            # One URL once every worker has reloaded after a blue-green switch; two meanwhile.
            "urls": sorted({v["url"] for v in seen.values() if "url" in v}),
            "workers": {str(pid): v for pid, v in sorted(seen.items())},
        }
    return {"workers": len(views), "backends": merged}


def drain_progress(
    backend_id: str, token: str, views: Mapping[int, dict[str, Any]]
) -> tuple[bool, int]:
    """(every worker applied the drain, requests still in flight there over all workers)."""
    applied = bool(views) and all(token in view["drains"] for view in views.values())
    in_flight = sum(
        view["backends"].get(backend_id, {}).get("in_flight", 0) for view in views.values()
    )
    return applied, in_flight


def authorised(expected: str, header: str | None) -> bool:
    given = (header or "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), expected.encode())


class AdminApi:
    def __init__(self, gateway: Gateway, shared: SharedState) -> None:
        self.gateway = gateway
        self.shared = shared

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._authenticate])
        app.router.add_get("/admin/backends", self.backends)
        app.router.add_post("/admin/backends/{name}/drain", self.drain)
        app.router.add_post("/admin/backends/{name}/undrain", self.undrain)
        return app

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        key = self.gateway.secrets.admin_key  # the current one: a reload may rotate it
        if key is None:
            return error(403, "the admin API is off: the secrets file has no admin_key")
        if not authorised(key.get_secret_value(), request.headers.get("Authorization")):
            return error(401, "missing or wrong admin key (Authorization: Bearer <admin_key>)")
        return await handler(request)

    def _names(self) -> list[str]:
        runtime = self.gateway.runtime
        return list(runtime.backends) if runtime is not None else []

    def _backend(self, request: web.Request) -> str:
        name = request.match_info["name"]
        if name not in self._names():
            raise web.HTTPNotFound(text=f"no backend {name!r} (known: {', '.join(self._names())})")
        return name

    async def backends(self, request: web.Request) -> web.Response:
        return web.json_response(
            merge_views(self._names(), self.shared.views(), self.shared.drained())
        )

    async def drain(self, request: web.Request) -> web.Response:
        name = self._backend(request)
        try:
            deadline_s = float(request.query.get("deadline_s", DEFAULT_DEADLINE_S))
        except ValueError:
            deadline_s = math.nan
        if not 0 <= deadline_s <= MAX_DEADLINE_S:
            return error(
                400, f"deadline_s must be a number of seconds from 0 to {MAX_DEADLINE_S:g}"
            )
        token = self.shared.drain(name)
        self.gateway.apply_drains()  # this worker at once; the others within their next look
        started = time.monotonic()
        while True:
            applied, in_flight = drain_progress(name, token, self.shared.views())
            waited = time.monotonic() - started
            if (applied and in_flight == 0) or waited >= deadline_s:
                break
            await asyncio.sleep(POLL_S)
        return web.json_response(
            {
                "backend": name,
                "draining": True,
                "every_worker_stopped_routing": applied,
                "in_flight": in_flight,
                "drained": applied and in_flight == 0,
                "waited_s": round(waited, 3),
            }
        )

    async def undrain(self, request: web.Request) -> web.Response:
        name = self._backend(request)
        was_drained = self.shared.undrain(name)
        self.gateway.apply_drains()
        return web.json_response({"backend": name, "draining": False, "was_drained": was_drained})


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
