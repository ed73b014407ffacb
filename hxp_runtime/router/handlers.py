"""The gateway's HTTP endpoints: the proxied OpenAI endpoints and the plain ones.

A proxied request reads top to bottom as its steps: authenticate -> read -> parse -> admit -> route
-> cached answer (``pipeline``) -> attempts (``attempts``) -> relay (``relay``). A step that
refuses raises :class:`~hxp_runtime.router.pipeline.Rejected`; the answer the router gives
itself is counted like any other, against the model once routing chose one.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from aiohttp import HttpVersion11, hdrs, web

from hxp_runtime import __version__
from hxp_runtime.router import relay
from hxp_runtime.router.attempts import Answer, attempt
from hxp_runtime.router.auth import Miss
from hxp_runtime.router.errors import error_response
from hxp_runtime.router.metrics import CONTENT_TYPE
from hxp_runtime.router.openapi import openapi_document
from hxp_runtime.router.pipeline import (
    CATEGORY_HEADER,
    NOT_CACHED,
    Rejected,
    admit_from_buckets,
    authenticate,
    body_too_large,
    cached_answer,
    draining,
    embedded_choice,
    known_choice,
    known_key,
    live_route,
    look_up_key,
    parse,
    read_body,
    route_request,
)
from hxp_runtime.router.settings import AUTO_MODEL
from hxp_runtime.router.store import ApiKey
from hxp_runtime.router.strategies import Backend, Endpoint
from hxp_runtime.router.usage import usage_of

if TYPE_CHECKING:
    from hxp_runtime.router.app import Gateway


class Handlers:
    """The endpoints of one gateway; they read its current runtime on every request."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        # Made in the worker's running loop; its clock is kept as one bound method because
        # every asyncio.get_running_loop() costs a getpid() system call (CPython's fork check).
        self._now = asyncio.get_running_loop().time
        self._openapi = json.dumps(openapi_document(__version__)).encode()

    # ------------------------------------------------------------------ the proxy

    async def proxy(
        self, request: web.Request, endpoint: Endpoint, path: bytes
    ) -> web.StreamResponse:
        gateway = self.gateway
        started = self._now()
        runtime = gateway.runtime
        try:
            if gateway.draining or runtime is None:
                raise draining()
            # Each step that can be answered without I/O is called as a plain function, and
            # its coroutine awaited only when I/O is needed: a coroutine per step and request
            # was a measurable part of the router's CPU (docs/benchmarks.md, router).
            authorization = request.headers.get("Authorization")
            key = known_key(gateway.keys, gateway.settings.require_api_key, authorization)
            if isinstance(key, Miss):
                key = await look_up_key(gateway.keys, authorization)
            settings = runtime.settings
            call = parse(endpoint, path, await read_body(request, settings.max_body_bytes))
            if not gateway.limiter.admit_leased(key.name):
                await admit_from_buckets(gateway.limiter, key, gateway.settings.rate_limit)
            table = runtime.table
            wanted = route_request(
                table,
                call,
                request.headers.get(CATEGORY_HEADER),
                request.headers.get(settings.prefix_routing.session_header),
            )
            cache_key = table.cache_key(wanted)
            choice = known_choice(table, wanted, cache_key, gateway.embedder, gateway.metrics)
            if choice is None:
                choice = await embedded_choice(
                    table, wanted, cache_key, gateway.embedder, gateway.metrics
                )
            routed = live_route(table, runtime.stats, wanted, choice, gateway.metrics)
            cached = NOT_CACHED
            if gateway.cache is not None:
                cached = await cached_answer(gateway.cache, call, routed, gateway.metrics)
                if cached.body is not None:
                    return self._answer_from_cache(key, routed.first, cached.body, started)
            answer = await attempt(
                call,
                routed,
                runtime.backends,
                settings.retries,
                started + settings.timeout_s,
                gateway.metrics,
            )
        except Rejected as rejected:
            return self._reject(started, rejected.response, rejected.model)
        if answer.streaming:
            return await self._relay_stream(request, key, answer, started)
        return self._relay_buffered(key, answer, cached.key, started)

    async def expect(self, request: web.Request) -> web.Response | None:
        """``Expect: 100-continue``: a body declared too large is refused before it is sent."""
        runtime = self.gateway.runtime
        length = request.content_length
        if runtime is not None and length is not None and length > runtime.settings.max_body_bytes:
            started = self._now()
            return self._reject(
                started, body_too_large(runtime.settings.max_body_bytes).response, ""
            )
        if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
            return error_response(
                417, "Only 'Expect: 100-continue' is understood.", "expectation_failed"
            )
        if request.version >= HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the interim answer is not the response's start
        return None

    def _reject(self, started: float, response: web.Response, model: str) -> web.Response:
        elapsed = self._now() - started
        self.gateway.metrics.observe(model, "", response.status, elapsed)
        return response

    def _answer_from_cache(
        self, key: ApiKey, backend: Backend, body: bytes, started: float
    ) -> web.Response:
        self._account(key, backend.model, body, error=False)
        elapsed = self._now() - started
        self.gateway.metrics.observe(backend.model, backend.id, 200, elapsed)
        return relay.cached(body, backend)

    def _relay_buffered(
        self, key: ApiKey, answer: Answer, cache_key: str | None, started: float
    ) -> web.Response:
        gateway = self.gateway
        backend, status, body = answer.backend, answer.upstream.status, answer.upstream.body
        self._account(key, backend.model, body, error=status >= 400)
        response = relay.buffered(answer)
        elapsed = self._now() - started
        # The status the client got: a backend's refusal of the router's key is the router's 502.
        gateway.metrics.observe(backend.model, backend.id, response.status, elapsed)
        cache = gateway.cache
        if cache_key is not None and status == 200 and cache is not None:
            gateway.spawn(cache.put(cache_key, body))
        return response

    async def _relay_stream(
        self, request: web.Request, key: ApiKey, answer: Answer, started: float
    ) -> web.StreamResponse:
        metrics = self.gateway.metrics
        streamed = await relay.stream(request, answer, started, metrics)
        backend = answer.backend
        self._record_usage(
            key, backend.model, streamed.prompt_tokens, streamed.completion_tokens, streamed.failed
        )
        elapsed = self._now() - started
        metrics.observe(backend.model, backend.id, 200, elapsed, streamed.ttft)
        return streamed.response

    def _account(self, key: ApiKey, model: str, body: bytes, *, error: bool) -> None:
        usage = usage_of(body)
        prompt, completion = usage if usage else (0, 0)
        self._record_usage(key, model, prompt, completion, error)

    def _record_usage(
        self, key: ApiKey, model: str, prompt: int, completion: int, error: bool
    ) -> None:
        self.gateway.usage.record(key.name, model, prompt, completion, error)
        if prompt or completion:
            self.gateway.limiter.charge_tokens(key.name, prompt + completion)

    # ------------------------------------------------------------------ plain endpoints

    async def unknown(self, request: web.Request) -> web.Response:
        """Any other method or path: 405 for a known path, else 404 (aiohttp's are text)."""
        allowed = sorted(
            route.method
            for resource in request.app.router.resources()
            if resource.canonical == request.path
            for route in resource
        )
        if allowed:
            return error_response(
                405,
                f"{request.method} is not allowed here; use {', '.join(allowed)}.",
                "method_not_allowed",
                {"Allow": ", ".join(allowed)},
            )
        return error_response(
            404, "No such endpoint; /openapi.json lists them.", "unknown_endpoint"
        )

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "draining" if self.gateway.draining else "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        gateway = self.gateway
        runtime = gateway.runtime
        backends = runtime.backends if runtime is not None else {}
        checks = gateway.settings.health_check.enabled
        up = {i: b.stats.available and (b.checked or not checks) for i, b in backends.items()}
        ready = not gateway.draining and any(up.values())
        body = {
            "ready": ready,
            "draining": gateway.draining,
            "semantic": gateway.embedder is not None,
            "backends": up,
            # What this worker's routing sees, for whoever wonders where requests go.
            "load": {
                i: {
                    "outstanding": b.stats.outstanding,
                    "running": b.stats.running,
                    "waiting": b.stats.waiting,
                    "kv_cache_usage": b.stats.kv_usage,
                    "latency_ms": b.stats.latency_ms,
                    "error_rate": round(b.stats.error_rate, 4),
                    "breaker": b.breaker.state.name.lower(),
                }
                for i, b in backends.items()
            },
        }
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.gateway.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE}
        )

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    async def models(self, request: web.Request) -> web.Response:
        gateway = self.gateway
        try:
            await authenticate(
                gateway.keys, gateway.settings.require_api_key, request.headers.get("Authorization")
            )
        except Rejected as rejected:
            return rejected.response
        runtime = gateway.runtime
        assert runtime is not None
        names: dict[str, str] = {}
        for spec in runtime.settings.backends:
            if any(
                b.stats.available for b in runtime.backends.values() if b.backend.model == spec.name
            ):
                for name in spec.names:
                    names.setdefault(name, spec.served_name)
        if names:
            names[AUTO_MODEL] = AUTO_MODEL
        data = [
            {
                "id": name,
                "object": "model",
                "created": gateway.started_at,
                "owned_by": "hxp",
                "root": root,
            }
            for name, root in names.items()
        ]
        return web.json_response({"object": "list", "data": data})
