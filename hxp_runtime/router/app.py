"""The gateway: aiohttp handlers, the proxy hot path, and the process's shared resources.

One :class:`Gateway` per worker process owns everything long-lived: the aiohttp ClientSession
(health checks, metrics polls, embeddings), one keep-alive :class:`UpstreamPool` per backend
(the proxy's own lean client), the PostgreSQL pool, the Redis client, the metrics and the
background tasks. Everything built from the settings file is one :class:`Runtime`, replaced
whole on reload (SIGHUP): requests in flight finish on the runtime they started with.

The hot path (``proxy``) does, in order: key check (a dict hit), body parse, rate-limit lease
(a counter), routing (an LRU hit plus live ordering), optional cache lookup, then the attempts:
the chosen replicas, retries with backoff, the fallback chain. A stream is committed to the
client only after its first bytes arrived, so retries and fallbacks never duplicate output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from hxp_runtime import __version__
from hxp_runtime.config import Strategy
from hxp_runtime.router import cache as response_cache
from hxp_runtime.router import store
from hxp_runtime.router.auth import KeyStore, Miss
from hxp_runtime.router.backends import BackendRuntime
from hxp_runtime.router.breaker import BreakerState
from hxp_runtime.router.errors import error_response
from hxp_runtime.router.metrics import CONTENT_TYPE, RouterMetrics, slo_thresholds_s
from hxp_runtime.router.openapi import openapi_document
from hxp_runtime.router.ratelimit import LocalBuckets, RateLimiter, RedisBuckets
from hxp_runtime.router.semantic import Embedder, EmbeddingError
from hxp_runtime.router.settings import AUTO_MODEL, RouterSecrets, RouterSettings
from hxp_runtime.router.store import ApiKey
from hxp_runtime.router.strategies import (
    Backend,
    Decision,
    Endpoint,
    RouteRequest,
    RoutingError,
    RoutingTable,
    Stats,
    backends_from,
)
from hxp_runtime.router.upstream import (
    STREAM_HIGH_WATER,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
)
from hxp_runtime.router.usage import UsageRecorder, usage_of

log = logging.getLogger(__name__)

ANONYMOUS = ApiKey("anonymous")
CATEGORY_HEADER = "X-HXP-Category"
BACKEND_HEADER = "x-hxp-backend"
PROXIED = (
    ("/v1/chat/completions", Endpoint.CHAT),
    ("/v1/completions", Endpoint.COMPLETION),
    ("/v1/embeddings", Endpoint.EMBEDDING),
)
SSE_DATA = b"data: "
STREAM_ERROR_EVENT = (
    b'data: {"error": {"message": "the backend failed in the middle of the answer", '
    b'"type": "server_error", "param": null, "code": "upstream_failed"}}\n\n'
)


def prompt_of(endpoint: Endpoint, payload: dict[str, Any]) -> str:
    """The text routing looks at: the last user message, the prompt, or the input."""
    if endpoint is Endpoint.CHAT:
        for message in reversed(payload.get("messages") or []):
            if isinstance(message, dict) and message.get("role") == "user":
                return _text(message.get("content"))
        return ""
    return _text(payload.get("prompt" if endpoint is Endpoint.COMPLETION else "input"))


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (p.get("text") if isinstance(p, dict) else p for p in content)
        return " ".join(p for p in parts if isinstance(p, str) and p)
    return ""


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything derived from one settings load."""

    settings: RouterSettings
    table: RoutingTable
    backends: dict[str, BackendRuntime]
    stats: Stats

    def attempt_order(self, decision: Decision) -> Iterator[Backend]:
        """The first model gets 1 + retries tries across its replicas, each fallback one pass."""
        attempts = decision.attempts
        primary = [b for b in attempts if b.model == attempts[0].model]
        tries = 1 + self.settings.retries.attempts
        for i in range(max(tries, len(primary))):
            yield primary[i % len(primary)]
        yield from attempts[len(primary) :]


class Gateway:
    def __init__(self, settings: RouterSettings, secrets: RouterSecrets) -> None:
        self.settings = settings
        self.secrets = secrets
        self.metrics = RouterMetrics(slo_thresholds_s(settings))
        self.draining = False
        self.started_at = int(time.time())
        self._tasks: set[asyncio.Task[Any]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._db: asyncpg.Pool | None = None
        self._redis: aioredis.Redis | None = None
        self._cache: response_cache.ResponseCache | None = None
        self._embedder: Embedder | None = None
        self.keys = KeyStore({}, None, ttl_s=settings.auth_cache_ttl_s)
        self.limiter = RateLimiter(LocalBuckets())
        self.usage = UsageRecorder(None, settings.usage_flush_interval_s)
        self._decision_children: dict[Strategy, Any] = {}
        self._openapi = json.dumps(openapi_document(__version__)).encode()
        self.runtime: Runtime | None = None
        self._prototype_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def build_app(self) -> web.Application:
        app = web.Application(
            client_max_size=32 * 1024 * 1024, handler_args={"tcp_keepalive": True}
        )
        for path, endpoint in PROXIED:
            app.router.add_post(path, partial(self.proxy, endpoint=endpoint, path=path.encode()))
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ready", self.ready)
        app.router.add_get("/metrics", self.metrics_handler)
        app.router.add_get("/openapi.json", self.openapi)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, app: web.Application) -> None:
        await self.start()

    async def _on_shutdown(self, app: web.Application) -> None:
        self.draining = True

    async def _cleanup(self, app: web.Application) -> None:
        await self.stop()

    async def start(self) -> None:
        settings, secrets = self.settings, self.secrets
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=4)
        )
        if settings.database is not None:
            db = settings.database
            password = secrets.database_password
            self._db = await asyncpg.create_pool(
                **store.connect_kwargs(
                    db.host,
                    db.port,
                    db.name,
                    db.user,
                    password.get_secret_value() if password else None,
                ),
                min_size=1,
                max_size=max(1, min(db.pool_size, 4)),
            )
            async with self._db.acquire() as conn:
                await store.ensure_schema(conn)
            self.usage = UsageRecorder(self._write_usage, settings.usage_flush_interval_s)
        if settings.redis is not None:
            password = secrets.redis_password
            self._redis = aioredis.Redis(
                host=settings.redis.host,
                port=settings.redis.port,
                db=settings.redis.db,
                password=password.get_secret_value() if password else None,
                socket_timeout=2,
                socket_connect_timeout=2,
            )
            self.limiter = RateLimiter(RedisBuckets(self._redis))
        self.keys = KeyStore(
            {},
            self._find_key if self._db is not None else None,
            ttl_s=settings.auth_cache_ttl_s,
        )
        await self.apply(settings, secrets)
        self._spawn(self.usage.run())
        self._spawn(self._flush_token_debts())

    async def stop(self) -> None:
        """After the drain: stop background work, write what is pending, close clients."""
        for task in list(self._tasks):
            task.cancel()
        if self.runtime is not None:
            for backend in self.runtime.backends.values():
                if backend.monitor is not None:
                    backend.monitor.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.usage.flush()
        if self.runtime is not None:
            for backend in self.runtime.backends.values():
                backend.pool.close()
        if self._session is not None:
            await self._session.close()
        if self._db is not None:
            await self._db.close()
        if self._redis is not None:
            await self._redis.aclose()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def apply(self, settings: RouterSettings, secrets: RouterSecrets) -> None:
        """Build a Runtime from settings and secrets and switch to it (start-up and SIGHUP).

        Backends that keep their id and URL keep their pool, breaker, stats and monitor.
        """
        assert self._session is not None
        upstream_key = (
            secrets.upstream_api_key.get_secret_value() if secrets.upstream_api_key else None
        )
        previous = self.runtime.backends if self.runtime is not None else {}
        keep_pools = self.secrets.upstream_api_key == secrets.upstream_api_key
        headers = {"Authorization": f"Bearer {upstream_key}"} if upstream_key else {}
        backends: dict[str, BackendRuntime] = {}
        for backend in backends_from(settings):
            old = previous.get(backend.id)
            if old is not None and old.backend.url == backend.url and keep_pools:
                old.backend = backend
                old.breaker.reconfigure(**settings.circuit_breaker.model_dump())
                backends[backend.id] = old
                if old.monitor is not None:
                    old.monitor.cancel()
            else:
                backends[backend.id] = BackendRuntime(
                    backend,
                    UpstreamPool(backend.url, authorization=upstream_key),
                    settings.circuit_breaker,
                    on_breaker=self._breaker_changed,
                    on_health=self._health_changed,
                )
            runtime = backends[backend.id]
            runtime.monitor = self._spawn(
                runtime.watch(
                    self._session, headers, settings.health_check, settings.load_poll_interval_s
                )
            )
        for backend_id, old in previous.items():
            if backends.get(backend_id) is not old:
                if old.monitor is not None:
                    old.monitor.cancel()
                old.pool.close()
        self.keys.replace_static(await self._static_keys(secrets))
        stats = Stats({i: b.stats for i, b in backends.items()}, random.Random())  # noqa: S311 - load spreading, not secrets
        self.settings, self.secrets = settings, secrets
        self.runtime = Runtime(settings, RoutingTable(settings), backends, stats)
        self._embedder = None
        self._cache = None
        if settings.cache.enabled and self._redis is not None:
            self._cache = response_cache.ResponseCache(self._redis, settings.cache.ttl_s)
        if self._prototype_task is not None:
            self._prototype_task.cancel()
            self._prototype_task = None
        if settings.semantic.embedding_model is not None and settings.categories:
            self._prototype_task = self._spawn(self._load_prototypes(settings, upstream_key))

    async def _static_keys(self, secrets: RouterSecrets) -> dict[str, ApiKey]:
        keys = {}
        for entry in secrets.api_keys:
            secret = entry.secret.get_secret_value()
            key = ApiKey(entry.name, entry.requests_per_minute, entry.tokens_per_minute)
            digest = store.hash_key(secret)
            keys[digest] = key
            if self._db is not None:
                try:
                    async with self._db.acquire() as conn:
                        await store.register_config_key(conn, entry.name, digest, secret[:8], key)
                except asyncpg.PostgresError as exc:
                    log.warning("could not register key %s in PostgreSQL: %s", entry.name, exc)
        return keys

    async def _load_prototypes(self, settings: RouterSettings, upstream_key: str | None) -> None:
        """Embed the categories' examples; retried until the embeddings backend answers."""
        assert self._session is not None and self.runtime is not None
        index = settings.routing_index()
        model = index[settings.semantic.embedding_model or ""]
        spec = next(b for b in settings.backends if b.name == model)
        embedder = Embedder(
            self._session,
            spec.url,
            spec.served_name,
            authorization=upstream_key,
            timeout_s=settings.health_check.timeout_s * 5,
        )
        delay = 1.0
        while True:
            try:
                prototypes = await embedder.prototypes(settings.categories)
                break
            except EmbeddingError as exc:
                log.info("category prototypes not ready (%s); retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        if self.runtime.settings is not settings:
            return  # reloaded meanwhile; the new settings load their own prototypes
        self._embedder = embedder
        self.runtime = replace(self.runtime, table=RoutingTable(settings, prototypes))
        log.info("semantic routing ready: %d category prototypes", len(prototypes))

    def _breaker_changed(self, backend_id: str, state: BreakerState) -> None:
        self.metrics.breaker_state.labels(backend_id).set(int(state))

    def _health_changed(self, backend_id: str, healthy: bool) -> None:
        self.metrics.upstream_healthy.labels(backend_id).set(int(healthy))

    async def _find_key(self, digest: str) -> ApiKey | None:
        assert self._db is not None
        return await store.find_key(self._db, digest)

    async def _write_usage(self, rows: list[store.UsageRow]) -> None:
        assert self._db is not None
        await store.write_usage(self._db, rows)

    async def _flush_token_debts(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.limiter.flush_debts()

    def _limits(self, key: ApiKey | None) -> tuple[int, int]:
        limits = self.settings.rate_limit
        if key is None:
            return limits.requests_per_minute, limits.tokens_per_minute
        return (
            key.requests_per_minute or limits.requests_per_minute,
            key.tokens_per_minute or limits.tokens_per_minute,
        )

    # ------------------------------------------------------------------ plain endpoints

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "draining" if self.draining else "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        runtime = self.runtime
        backends = runtime.backends if runtime is not None else {}
        checks = self.settings.health_check.enabled
        up = {i: b.stats.available and (b.checked or not checks) for i, b in backends.items()}
        ready = not self.draining and any(up.values())
        body = {
            "ready": ready,
            "draining": self.draining,
            "semantic": self._embedder is not None,
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

    async def metrics_handler(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    async def models(self, request: web.Request) -> web.Response:
        if await self._authenticate(request) is None:
            return _unauthorized()
        runtime = self.runtime
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
                "created": self.started_at,
                "owned_by": "hxp",
                "root": root,
            }
            for name, root in names.items()
        ]
        return web.json_response({"object": "list", "data": data})

    # ------------------------------------------------------------------ the proxy

    async def _authenticate(self, request: web.Request) -> ApiKey | None:
        if not self.settings.require_api_key:
            return ANONYMOUS
        return await self.keys.authenticate(request.headers.get("Authorization"))

    def _reject(self, started: float, response: web.Response, model: str = "") -> web.Response:
        """An answer the router gives itself; ``model``, once routing chose one, so that the
        model's error-budget alerts count it."""
        elapsed = asyncio.get_running_loop().time() - started
        self.metrics.observe(model, "", response.status, elapsed)
        return response

    async def proxy(  # the hot path reads best top to bottom
        self, request: web.Request, endpoint: Endpoint, path: bytes
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        started = loop.time()
        runtime = self.runtime
        if self.draining or runtime is None:
            return self._reject(
                started, error_response(503, "The router is shutting down.", "draining")
            )
        if self.settings.require_api_key:
            known = self.keys.cached(request.headers.get("Authorization"))
            key = await self._authenticate(request) if isinstance(known, Miss) else known
        else:
            key = ANONYMOUS
        if key is None:
            return self._reject(started, _unauthorized())
        body = await request.read()
        try:
            payload = json.loads(body)
        except ValueError as exc:
            return self._reject(
                started, error_response(400, f"The body is not valid JSON: {exc}", "invalid_json")
            )
        if type(payload) is not dict:
            return self._reject(
                started, error_response(400, "The body must be a JSON object.", "invalid_request")
            )
        model = payload.get("model")
        if model is not None and not isinstance(model, str):
            return self._reject(
                started, error_response(400, "'model' must be a string.", "invalid_model")
            )
        stream = endpoint is not Endpoint.EMBEDDING and payload.get("stream") is True

        if not self.limiter.admit_leased(key.name):
            requests_per_minute, tokens_per_minute = self._limits(key)
            retry_after = await self.limiter.admit(key.name, requests_per_minute, tokens_per_minute)
        else:
            retry_after = None
        if retry_after is not None:
            seconds = max(1, round(retry_after + 0.5))
            return self._reject(
                started,
                error_response(
                    429,
                    f"Rate limit reached for key {key.name!r} ({requests_per_minute} requests, "
                    f"{tokens_per_minute} tokens per minute); retry after {seconds} s.",
                    "rate_limit_exceeded",
                    {"Retry-After": str(seconds)},
                ),
            )

        table = runtime.table
        wanted = None if model in (None, AUTO_MODEL) else model
        route = RouteRequest(
            endpoint,
            wanted,
            prompt_of(endpoint, payload) if wanted is None else "",
            request.headers.get(CATEGORY_HEADER),
        )
        cache_key = table.cache_key(route)
        choice = table.cache.get(cache_key)
        if choice is None:
            remember = True
            if table.needs_embedding(route) and self._embedder is not None:
                try:
                    (embedding,) = await self._embedder.embed([route.prompt])
                    route = replace(route, embedding=embedding)
                except EmbeddingError as exc:
                    log.warning("semantic routing skipped: %s", exc)
                    remember = False
            try:
                choice = table.choose_models(route)
            except RoutingError as exc:
                return self._reject(started, error_response(exc.status, exc.message, exc.code))
            if remember:
                table.cache.put(cache_key, choice)
        decision = table.decide(route, runtime.stats, choice)
        primary = choice[0][0].model  # what routing chose, before health and breakers
        for strategy in decision.strategies:
            counter = self._decision_children.get(strategy)
            if counter is None:
                counter = self._decision_children[strategy] = self.metrics.decisions.labels(
                    strategy.value
                )
            counter.inc()
        if not decision.attempts:
            return self._reject(
                started,
                error_response(
                    503,
                    "No healthy backend can serve this model now; retry later.",
                    "no_healthy_backend",
                ),
                primary,
            )

        cache_id = None
        if self._cache is not None and response_cache.cacheable(payload):
            cache_id = response_cache.cache_key(path, decision.attempts[0].model, body)
            cached = await self._cache.get(cache_id)
            self.metrics.cache.labels("hit" if cached is not None else "miss").inc()
            if cached is not None:
                first = decision.attempts[0]
                self._account(key, first.model, cached, error=False)
                self.metrics.observe(first.model, first.id, 200, loop.time() - started)
                return web.Response(
                    body=cached,
                    headers={
                        "Content-Type": "application/json",
                        BACKEND_HEADER: first.id,
                        "x-hxp-cache": "hit",
                    },
                )

        deadline = started + runtime.settings.timeout_s
        backoff_s = runtime.settings.retries.backoff_ms / 1000
        bodies: dict[str, bytes] = {}
        previous: Backend | None = None
        retry = 0
        failure: UpstreamError | None = None
        for backend in runtime.attempt_order(decision):
            live = runtime.backends[backend.id]
            if not live.breaker.acquire():
                continue
            if previous is not None and previous.model == backend.model:
                retry += 1
                delay = backoff_s * 2 ** (retry - 1)
                if loop.time() + delay >= deadline:
                    break
                await asyncio.sleep(delay)
            else:
                retry = 0
            previous = backend
            outgoing = bodies.get(backend.served_name)
            if outgoing is None:
                outgoing = (
                    body
                    if model == backend.served_name
                    else _with_model(payload, backend.served_name)
                )
                bodies[backend.served_name] = outgoing
            attempt_started = loop.time()
            live.stats.outstanding += 1
            try:
                upstream = await live.pool.post(path, outgoing, deadline, buffered=not stream)
                if stream:
                    first_piece = (
                        await upstream.read()
                        if upstream.status == 200
                        else await upstream.read_all()
                    )
                    if upstream.status != 200:
                        upstream.close()
                        upstream.body = first_piece
            except UpstreamError as exc:
                live.stats.outstanding -= 1
                live.failed()
                self.metrics.upstream_failures.labels(backend.model, backend.id, exc.reason).inc()
                failure = exc
                if loop.time() >= deadline:
                    break
                continue
            if upstream.status >= 500:
                live.stats.outstanding -= 1
                live.failed()
                self.metrics.upstream_failures.labels(backend.model, backend.id, "status").inc()
                failure = UpstreamError(
                    "status", f"HTTP {upstream.status}: {upstream.body[:200]!r}"
                )
                continue
            if backend.model != primary:
                self.metrics.fallbacks.labels(backend.model, backend.id).inc()
            if not stream or upstream.status != 200:
                live.stats.outstanding -= 1
                live.succeeded(loop.time() - attempt_started)
                status = upstream.status
                self._account(key, backend.model, upstream.body, error=status >= 400)
                self.metrics.observe(backend.model, backend.id, status, loop.time() - started)
                if cache_id is not None and status == 200 and self._cache is not None:
                    self._spawn(self._cache.put(cache_id, upstream.body))
                return web.Response(
                    status=status,
                    body=upstream.body,
                    headers={
                        "Content-Type": upstream.content_type.decode("latin-1"),
                        BACKEND_HEADER: backend.id,
                    },
                )
            return await self._stream(
                request, key, backend, live, upstream, first_piece, started, attempt_started
            )

        if (failure is not None and failure.reason == "timeout") or loop.time() >= deadline:
            return self._reject(
                started,
                error_response(
                    504, "The backends did not answer before the request's deadline.", "timeout"
                ),
                primary,
            )
        if failure is None:
            return self._reject(
                started,
                error_response(
                    503,
                    "Every backend for this model is ejected (circuit open); retry later.",
                    "circuit_open",
                ),
                primary,
            )
        return self._reject(
            started,
            error_response(502, f"The backends failed to answer: {failure}", "upstream_failed"),
            primary,
        )

    async def _stream(
        self,
        request: web.Request,
        key: ApiKey,
        backend: Backend,
        live: BackendRuntime,
        upstream: UpstreamResponse,
        first_piece: bytes,
        started: float,
        attempt_started: float,
    ) -> web.StreamResponse:
        """Pass an SSE answer through as it arrives; committed once its first bytes are here."""
        loop = asyncio.get_running_loop()
        response = web.StreamResponse(
            headers={
                "Content-Type": upstream.content_type.decode("latin-1"),
                "Cache-Control": "no-cache",
                BACKEND_HEADER: backend.id,
            }
        )
        events = first_piece.count(SSE_DATA)
        tail = first_piece
        failed = client_gone = False
        ttft = None
        transport = request.transport
        framed = True

        def forward(piece: bytes) -> None:
            """Runs in the upstream protocol's callback for every piece after the first."""
            nonlocal events, tail, client_gone
            events += piece.count(SSE_DATA)
            tail = tail[-512:] + piece
            if transport is None or transport.is_closing():
                # The client went away; closing the upstream connection stops the generation.
                client_gone = True
                upstream.close()
                return
            transport.write(b"%x\r\n%b\r\n" % (len(piece), piece) if framed else piece)
            if transport.get_write_buffer_size() > STREAM_HIGH_WATER:
                upstream.pause()
                loop.call_later(0.005, resume_when_drained)

        def resume_when_drained() -> None:
            if transport is None or transport.get_write_buffer_size() <= STREAM_HIGH_WATER // 4:
                upstream.resume()
            else:
                loop.call_later(0.005, resume_when_drained)

        try:
            await response.prepare(request)
            await response.write(first_piece)  # the head and the first piece, through aiohttp
            ttft = loop.time() - started
            live.succeeded(loop.time() - attempt_started)
            # aiohttp chose chunked transfer coding for an HTTP/1.1 client (not for 1.0).
            framed = response.headers.get("Transfer-Encoding") == "chunked"
            await upstream.relay(forward)
        except UpstreamError as exc:
            failed = True
            if not client_gone:
                live.failed()
                self.metrics.upstream_failures.labels(backend.model, backend.id, exc.reason).inc()
                try:
                    await response.write(STREAM_ERROR_EVENT)
                except ConnectionError:
                    client_gone = True
        except ConnectionError:
            failed = client_gone = True
        finally:
            live.stats.outstanding -= 1
            upstream.close()
        if not client_gone:
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
        usage = usage_of(tail)
        # Without stream_options.include_usage vLLM sends no usage: count one token per event.
        prompt, completion = usage if usage else (0, max(0, events - 2))
        self._record_usage(key, backend.model, prompt, completion, failed)
        self.metrics.observe(backend.model, backend.id, 200, loop.time() - started, ttft)
        return response

    def _account(self, key: ApiKey, model: str, body: bytes, *, error: bool) -> None:
        usage = usage_of(body)
        prompt, completion = usage if usage else (0, 0)
        self._record_usage(key, model, prompt, completion, error)

    def _record_usage(
        self, key: ApiKey, model: str, prompt: int, completion: int, error: bool
    ) -> None:
        self.usage.record(key.name, model, prompt, completion, error)
        if prompt or completion:
            self.limiter.charge_tokens(key.name, prompt + completion)


def _with_model(payload: dict[str, Any], served_name: str) -> bytes:
    return json.dumps({**payload, "model": served_name}).encode()


def _unauthorized() -> web.Response:
    return error_response(
        401,
        "Missing or invalid API key: send 'Authorization: Bearer <key>' (hxp keys create).",
        "invalid_api_key",
    )
