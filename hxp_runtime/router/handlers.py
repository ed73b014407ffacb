"""The gateway's HTTP endpoints: the proxied OpenAI endpoints and the plain ones.

A proxied request reads top to bottom as its steps: authenticate -> read -> parse -> admit -> route
-> cached answer (``pipeline``) -> attempts (``attempts``) -> relay (``relay``). A step that
refuses raises :class:`~hxp_runtime.router.pipeline.Rejected`; the answer the router gives
itself is counted like any other, against the model once routing chose one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
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

# Header names as ``forward`` looks them up: lower case (aiohttp's headers ignore the case).
CATEGORY_FIELD = CATEGORY_HEADER.lower()


@dataclass(slots=True)
class Forwarded:
    """A backend answered: what is left to do is relay the answer and account for it."""

    key: ApiKey
    answer: Answer
    cache_key: str | None  # where a 200 goes in the response cache, if anywhere
    started: float


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
        """A proxied request through aiohttp's server (``front`` serves the common ones)."""
        forwarded = await self.forward(endpoint, path, request.headers, request)
        if not isinstance(forwarded, Forwarded):
            return forwarded
        if forwarded.answer.streaming:
            sink = relay.AiohttpSink(request)
            await self.relay_stream(sink, forwarded)
            return sink.response
        return self.settle_buffered(forwarded) or relay.buffered(forwarded.answer)

    async def forward(
        self,
        endpoint: Endpoint,
        path: bytes,
        headers: Mapping[str, str],
        body: bytes | web.BaseRequest,
    ) -> Forwarded | web.Response:
        """Every step up to a backend's answer: the answer, or the router's own response.

        ``headers`` is looked up by lower-case names; ``body`` is the body itself, or the
        request it is still to be read from (at most ``router.max_body_bytes``).
        """
        gateway = self.gateway
        started = self._now()
        runtime = gateway.runtime
        try:
            if gateway.draining or runtime is None:
                raise draining()
            # Each step that can be answered without I/O is called as a plain function, and
            # its coroutine awaited only when I/O is needed: a coroutine per step and request
            # was a measurable part of the router's CPU (docs/benchmarks.md, router).
            authorization = headers.get("authorization")
            key = known_key(gateway.keys, gateway.settings.require_api_key, authorization)
            if isinstance(key, Miss):
                key = await look_up_key(gateway.keys, authorization)
            settings = runtime.settings
            if not isinstance(body, bytes):
                body = await read_body(body, settings.max_body_bytes)
            call = parse(endpoint, path, body)
            if not gateway.limiter.admit_leased(key.name):
                await admit_from_buckets(gateway.limiter, key, gateway.settings.rate_limit)
            table = runtime.table
            wanted = route_request(
                table,
                call,
                headers.get(CATEGORY_FIELD),
                headers.get(settings.prefix_routing.session_header.lower()),
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
        return Forwarded(key, answer, cached.key, started)

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

    def settle_buffered(self, forwarded: Forwarded) -> web.Response | None:
        """Account, count and cache a complete answer; None when it goes to the client as the
        backend sent it, else the router's error response in its place (a backend's refusal
        of the router's own key, for one, is the router's 502)."""
        gateway = self.gateway
        answer = forwarded.answer
        backend, status, body = answer.backend, answer.upstream.status, answer.upstream.body
        self._account(forwarded.key, backend.model, body, error=status >= 400)
        error = relay.buffered(answer) if status >= 400 else None
        elapsed = self._now() - forwarded.started
        gateway.metrics.observe(
            backend.model, backend.id, status if error is None else error.status, elapsed
        )
        cache = gateway.cache
        if forwarded.cache_key is not None and status == 200 and cache is not None:
            gateway.spawn(cache.put(forwarded.cache_key, body))
        return error

    async def relay_stream(self, sink: relay.StreamSink, forwarded: Forwarded) -> None:
        metrics = self.gateway.metrics
        answer, started = forwarded.answer, forwarded.started
        streamed = await relay.stream(sink, answer, started, metrics)
        backend = answer.backend
        self._record_usage(
            forwarded.key,
            backend.model,
            streamed.prompt_tokens,
            streamed.completion_tokens,
            streamed.failed,
        )
        elapsed = self._now() - started
        metrics.observe(backend.model, backend.id, 200, elapsed, streamed.ttft)

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
            # router.semantic.static: this worker decides sure prompts without an embeddings call.
            "static_table": runtime is not None and runtime.table.static is not None,
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
