"""The gateway's lifecycle: start-up -> serve -> shutdown, and the process's shared resources.

One :class:`Gateway` per worker process owns everything long-lived: the aiohttp ClientSession
(health checks, metrics polls, embeddings), one keep-alive :class:`UpstreamPool` per backend
(the proxy's own lean client), the PostgreSQL pool, the Redis client, the metrics and the
background tasks. Everything built from the settings file is one :class:`Runtime`, replaced
whole on reload (SIGHUP): requests in flight finish on the runtime they started with.
With the state shared between workers (``shared``), the gateway applies drained backends to
its routing and publishes its view of every backend for the admin API (``admin``).

The endpoints are in ``handlers``; a proxied request's steps in ``pipeline`` (authenticate,
parse, admit, route, cached answer), ``attempts`` (backends, retries, fallbacks) and ``relay``
(buffered and streamed answers). ``server`` runs the lifecycle: it stops accepting, drains
requests in flight for up to ``drain_timeout_s``, then :meth:`Gateway.stop` closes the rest.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from hxp_runtime.router import cache as response_cache
from hxp_runtime.router import store
from hxp_runtime.router.admin import worker_view
from hxp_runtime.router.auth import KeyStore
from hxp_runtime.router.backends import BackendRuntime
from hxp_runtime.router.breaker import BreakerState
from hxp_runtime.router.handlers import Handlers
from hxp_runtime.router.metrics import RouterMetrics, slo_thresholds_s
from hxp_runtime.router.ratelimit import LocalBuckets, RateLimiter, RedisBuckets
from hxp_runtime.router.semantic import Embedder, EmbeddingError
from hxp_runtime.router.settings import RouterSecrets, RouterSettings
from hxp_runtime.router.shared import SharedState
from hxp_runtime.router.static_embedding import StaticRouting, StaticTableError, load_or_build
from hxp_runtime.router.store import ApiKey
from hxp_runtime.router.strategies import (
    Endpoint,
    RoutingTable,
    Stats,
    backends_from,
)
from hxp_runtime.router.tls import redis_tls_kwargs
from hxp_runtime.router.upstream import UpstreamPool
from hxp_runtime.router.usage import UsageRecorder

log = logging.getLogger(__name__)

# How often a worker looks for drains and publishes its view: a drain reaches every worker
# within this, and the admin API's in-flight counts are this fresh.
SHARE_INTERVAL_S = 0.1
T = TypeVar("T")

PROXIED = (
    ("/v1/chat/completions", Endpoint.CHAT),
    ("/v1/completions", Endpoint.COMPLETION),
    ("/v1/embeddings", Endpoint.EMBEDDING),
)


async def until_answered(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """``call()`` again until the embeddings backend answers it, 1 s apart and up to 30 s."""
    delay = 1.0
    while True:
        try:
            return await call()
        except EmbeddingError as exc:
            log.info("%s not ready (%s); retrying in %.0f s", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything derived from one settings load."""

    settings: RouterSettings
    table: RoutingTable
    backends: dict[str, BackendRuntime]
    stats: Stats


class Gateway:
    def __init__(
        self,
        settings: RouterSettings,
        secrets: RouterSecrets,
        shared: SharedState | None = None,
    ) -> None:
        self.settings = settings
        self.secrets = secrets
        self.shared = shared  # state shared with the other workers (drains, their views)
        self._drain_tokens: list[str] = []
        self.metrics = RouterMetrics(slo_thresholds_s(settings), tls=settings.tls is not None)
        self.draining = False
        self.started_at = int(time.time())
        self._tasks: set[asyncio.Task[Any]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._db: asyncpg.Pool | None = None
        self._redis: aioredis.Redis | None = None
        # Read by every request; replaced by apply() and once the category prototypes load.
        self.cache: response_cache.ResponseCache | None = None
        self.embedder: Embedder | None = None
        self.keys = KeyStore({}, None, ttl_s=settings.auth_cache_ttl_s)
        self.limiter = RateLimiter(LocalBuckets())
        self.usage = UsageRecorder(None, settings.usage_flush_interval_s)
        self.runtime: Runtime | None = None
        self._prototype_task: asyncio.Task[None] | None = None
        self.handlers: Handlers | None = None  # made with the app (build_app)

    # ------------------------------------------------------------------ lifecycle

    def build_app(self) -> web.Application:
        handlers = self.handlers = Handlers(self)
        # The proxied endpoints read their bodies themselves, up to router.max_body_bytes
        # (pipeline.read_body): aiohttp's client_max_size is not theirs.
        app = web.Application(handler_args={"tcp_keepalive": True})
        for path, endpoint in PROXIED:
            app.router.add_post(
                path,
                partial(handlers.proxy, endpoint=endpoint, path=path.encode()),
                expect_handler=handlers.expect,
            )
        app.router.add_get("/v1/models", handlers.models)
        app.router.add_get("/health", handlers.health)
        app.router.add_get("/ready", handlers.ready)
        app.router.add_get("/metrics", handlers.metrics)
        app.router.add_get("/openapi.json", handlers.openapi)
        # Last, so that it answers only what nothing above did, in the router's error format.
        app.router.add_route("*", "/{path:.*}", handlers.unknown)
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
                **store.connect_kwargs(db, password.get_secret_value() if password else None),
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
                # TLS only when the settings name the CA: the certificate and the address it
                # is reached at are verified (rediss:// with ssl_cert_reqs=required).
                **redis_tls_kwargs(settings.redis.ca_file),
            )
            self.limiter = RateLimiter(RedisBuckets(self._redis))
        self.keys = KeyStore(
            {},
            self._find_key if self._db is not None else None,
            ttl_s=settings.auth_cache_ttl_s,
        )
        await self.apply(settings, secrets)
        if self.shared is not None:
            self.spawn(self._share(self.shared))
        self.spawn(self.usage.run())
        self.spawn(self._flush_token_debts())

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

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
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
            runtime.monitor = self.spawn(
                runtime.watch(
                    self._session,
                    headers,
                    settings.health_check,
                    settings.load_poll_interval_s,
                    self.shared,
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
        self.embedder = None
        self.cache = None
        if settings.cache.enabled and self._redis is not None:
            self.cache = response_cache.ResponseCache(self._redis, settings.cache.ttl_s)
        if self._prototype_task is not None:
            self._prototype_task.cancel()
            self._prototype_task = None
        if settings.semantic.embedding_model is not None and settings.categories:
            self._prototype_task = self.spawn(self._load_prototypes(settings, upstream_key))
        self.apply_drains()

    def apply_drains(self) -> None:
        """Route around the backends drained in the shared state (new backends included)."""
        if self.shared is None or self.runtime is None:
            return
        try:
            drained = self.shared.drained()
        except OSError as exc:
            log.error("cannot read the drained backends (%s); routing stays as it was", exc)
            return
        for backend_id, live in self.runtime.backends.items():
            if live.stats.draining != (backend_id in drained):
                log.warning(
                    "backend %s %s", backend_id, "drained" if backend_id in drained else "undrained"
                )
            live.stats.draining = backend_id in drained
        self._drain_tokens = list(drained.values())

    async def _share(self, shared: SharedState) -> None:
        """Apply drains and publish this worker's view: on change, and at least every second."""
        pid = os.getpid()
        published: dict[str, Any] | None = None
        published_at = 0.0
        try:
            while True:
                self.apply_drains()
                if self.runtime is not None:
                    view = worker_view(self.runtime.backends, self._drain_tokens)
                    now = time.monotonic()
                    if view != published or now - published_at >= 1.0:
                        try:
                            shared.publish(pid, view)
                            published, published_at = view, now
                        except OSError as exc:
                            log.error("cannot publish this worker's state: %s", exc)
                await asyncio.sleep(SHARE_INTERVAL_S)
        finally:
            shared.forget(pid)

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
        prototypes = await until_answered(
            "category prototypes", partial(embedder.prototypes, settings.categories)
        )
        if self.runtime.settings is not settings:
            return  # reloaded meanwhile; the new settings load their own prototypes
        self.embedder = embedder
        self.runtime = replace(self.runtime, table=RoutingTable(settings, prototypes))
        log.info("semantic routing ready: %d category prototypes", len(prototypes))
        if settings.semantic.static is not None:
            await self._load_static(settings, embedder, prototypes, spec.served_name)

    async def _load_static(
        self,
        settings: RouterSettings,
        embedder: Embedder,
        prototypes: dict[str, tuple[float, ...]],
        model: str,
    ) -> None:
        """The static table, read or built once; new prompts go to the model until it is."""
        assert self.runtime is not None and settings.semantic.static is not None
        config = settings.semantic.static
        build = partial(
            load_or_build,
            Path(config.cache_dir),
            Path(config.vocabulary),
            model,
            embedder.embed_ids,
        )
        try:
            table = await until_answered("static table", build)
        except StaticTableError as exc:
            log.error("static table not used: %s", exc)
            return
        if self.runtime.settings is not settings:
            return
        static = StaticRouting(
            table, table.prototypes(settings.categories), config.confident_margin
        )
        self.runtime = replace(
            self.runtime, table=RoutingTable(settings, prototypes, static=static)
        )
        log.info(
            "static table ready: %d tokens of %d dims, margin %.3f",
            len(table.rows) // table.dims,
            table.dims,
            config.confident_margin,
        )

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
