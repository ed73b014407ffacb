"""Live state of each backend: connection pool, circuit breaker, stats, and their monitors.

Active health checks (``GET /health`` with the upstream key, a hard timeout, on by default)
mark a backend healthy or not. Passive ejection is the circuit breaker: failures of real
requests open it and take the backend out of routing until a half-open probe succeeds.
Every worker process checks every backend itself and acts on what it sees: once a backend that
failed a check passes one again, the worker half-opens its breaker at once instead of waiting
out ``open_s`` (a breaker opened by an outage ends with the outage, in every worker within one
check interval and one probe). A half-open breaker gets its probe slots back at each passing
check, so no lost probe keeps a healthy backend out for longer than one interval. A
second loop polls the backend's ``/metrics`` for vLLM's own queue gauges, which the
load-balancing strategies read. Workers that share state (hxp_runtime.router.shared) poll a
backend once per interval between them: the first whose turn comes reads /metrics and
publishes the gauges, the others read them from there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp

from hxp_runtime.config import CircuitBreaker as BreakerSettings
from hxp_runtime.config import HealthCheck
from hxp_runtime.router.breaker import BreakerState, CircuitBreaker
from hxp_runtime.router.shared import SharedState
from hxp_runtime.router.strategies import Backend, BackendStats
from hxp_runtime.router.upstream import UpstreamPool

log = logging.getLogger(__name__)

EWMA_ALPHA = 0.2
# One slow answer from a busy server is not an outage: a backend fails its active checks after
# this many failures in a row (real requests eject faster, through the circuit breaker).
FAILED_CHECKS_TO_EJECT = 2
# A poll another worker made less than this share of the interval ago stands for this worker's
# own: the worker that polled published a little after its turn (the poll's own time), so at
# its next turn, one interval later, the gauges are a little younger than the interval.
FRESH_SHARE = 0.9
# How often a worker looks again while another polls the backend it wants the load of.
SHARED_POLL_WAIT_S = 0.01
VLLM_GAUGES = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_usage",
}


def parse_vllm_load(text: str) -> dict[str, float]:
    """Sum vLLM's queue gauges over their label sets (engines, model names)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        field = VLLM_GAUGES.get(name)
        if field is not None:
            found[field] = found.get(field, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


class BackendRuntime:
    def __init__(
        self,
        backend: Backend,
        pool: UpstreamPool,
        breaker_settings: BreakerSettings,
        *,
        on_breaker: Callable[[str, BreakerState], None],
        on_health: Callable[[str, bool], None],
    ) -> None:
        self.backend = backend
        self.pool = pool
        self.stats = BackendStats()
        self._on_breaker = on_breaker
        self._on_health = on_health
        self.breaker = CircuitBreaker(
            breaker_settings.failure_threshold,
            breaker_settings.open_s,
            breaker_settings.half_open_requests,
            on_change=self._breaker_changed,
        )
        self.checked = False  # an active health check has passed at least once
        self.check_failed_at: float | None = None  # time.monotonic() of the last failed check
        self.monitor: asyncio.Task[None] | None = None

    def _breaker_changed(self, state: BreakerState) -> None:
        self.stats.ejected = state is BreakerState.OPEN
        if state is BreakerState.OPEN:
            log.warning("backend %s ejected: circuit breaker open", self.backend.id)
            # Nothing routes to an ejected backend, so nothing would notice it may be probed
            # again: look at the breaker once its open period has passed.
            asyncio.get_running_loop().call_later(self.breaker.open_s, lambda: self.breaker.state)
        elif state is BreakerState.CLOSED:
            log.info("backend %s back in rotation: circuit breaker closed", self.backend.id)
        self._on_breaker(self.backend.id, state)

    def succeeded(self, latency_s: float) -> None:
        self.breaker.record_success()
        stats = self.stats
        ms = latency_s * 1000
        stats.latency_ms = (
            ms
            if stats.latency_ms is None
            else stats.latency_ms + EWMA_ALPHA * (ms - stats.latency_ms)
        )
        stats.error_rate -= EWMA_ALPHA * stats.error_rate

    def failed(self) -> None:
        self.breaker.record_failure()
        self.stats.error_rate += EWMA_ALPHA * (1.0 - self.stats.error_rate)

    def check_passed(self) -> None:
        """A passing active check: a breaker opened before a failed check is half-opened, and a
        half-open one that no request probes is closed after a whole check interval."""
        state = self.breaker.state
        failed_at = self.check_failed_at
        if state is BreakerState.HALF_OPEN or (
            state is BreakerState.OPEN
            and failed_at is not None
            and failed_at >= self.breaker.opened_at
        ):
            self.breaker.half_open()
        self.breaker.health_passed()
        self.check_failed_at = None

    def set_health(self, healthy: bool) -> None:
        if healthy:
            self.checked = True
        if healthy != self.stats.healthy:
            log.warning(
                "backend %s is %s", self.backend.id, "healthy" if healthy else "failing checks"
            )
        self.stats.healthy = healthy
        self._on_health(self.backend.id, healthy)

    async def _get(
        self, session: aiohttp.ClientSession, path: str, headers: dict[str, str], timeout_s: float
    ) -> tuple[int, str] | None:
        """(status, body) of a GET to the backend, or None when it did not answer in time."""
        try:
            async with session.get(
                self.backend.url + path,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
            return None

    async def check_health(
        self, session: aiohttp.ClientSession, headers: dict[str, str], timeout_s: float
    ) -> bool:
        answer = await self._get(session, "/health", headers, timeout_s)
        return answer is not None and answer[0] == 200

    async def poll_load(
        self,
        session: aiohttp.ClientSession,
        headers: dict[str, str],
        timeout_s: float,
        shared: SharedState | None = None,
        interval_s: float = 0.0,
    ) -> None:
        """vLLM's load gauges into the stats: from the worker that read them from this URL
        within most of ``interval_s`` (``shared``), else from the backend's /metrics."""
        if shared is None:
            gauges = await self._read_load(session, headers, timeout_s)
        else:
            gauges = await self._shared_load(session, headers, timeout_s, shared, interval_s)
        if gauges is None:
            return
        for name in VLLM_GAUGES.values():  # these names only: a shared file is read too
            if name in gauges:
                setattr(self.stats, name, gauges[name])

    async def _read_load(
        self, session: aiohttp.ClientSession, headers: dict[str, str], timeout_s: float
    ) -> dict[str, float] | None:
        answer = await self._get(session, "/metrics", headers, timeout_s)
        return parse_vllm_load(answer[1]) if answer is not None and answer[0] == 200 else None

    async def _shared_load(
        self,
        session: aiohttp.ClientSession,
        headers: dict[str, str],
        timeout_s: float,
        shared: SharedState,
        interval_s: float,
    ) -> dict[str, float] | None:
        """A fresh poll of another worker; else this worker's own, published. While another
        worker polls the backend, wait for its answer (up to ``timeout_s``) rather than send a
        second poll: workers whose turns come together would otherwise find the lock taken at
        every turn and never see a fresh answer."""
        backend_id, url = self.backend.id, self.backend.url
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while True:
                with shared.polling(backend_id) as mine:
                    seen = shared.fresh_load(backend_id, url, interval_s * FRESH_SHARE)
                    if seen is not None:
                        return seen
                    if mine:
                        gauges = await self._read_load(session, headers, timeout_s)
                        if gauges is not None:
                            shared.publish_load(backend_id, url, gauges)
                        return gauges
                if loop.time() >= deadline:
                    return None
                await asyncio.sleep(SHARED_POLL_WAIT_S)
        except OSError as exc:
            log.warning(
                "backend %s: shared load state unusable (%s); polling alone", backend_id, exc
            )
            return await self._read_load(session, headers, timeout_s)

    async def watch(
        self,
        session: aiohttp.ClientSession,
        headers: dict[str, str],
        health: HealthCheck,
        load_interval_s: float,
        shared: SharedState | None = None,
    ) -> None:
        """Health checks every ``health.interval_s``, load polls every ``load_interval_s``
        (between all the workers that share ``shared``)."""
        loop = asyncio.get_running_loop()
        next_health = next_load = loop.time()
        failures = 0
        while True:
            now = loop.time()
            if health.enabled and now >= next_health:
                next_health = now + health.interval_s
                passed = await self.check_health(session, headers, health.timeout_s)
                failures = 0 if passed else failures + 1
                if passed:
                    self.check_passed()
                else:
                    self.check_failed_at = time.monotonic()
                if passed or failures >= FAILED_CHECKS_TO_EJECT:
                    self.set_health(passed)
            if now >= next_load:
                next_load = now + load_interval_s
                timeout_s = min(load_interval_s, health.timeout_s)
                await self.poll_load(session, headers, timeout_s, shared, load_interval_s)
            upcoming = min(next_health, next_load) if health.enabled else next_load
            await asyncio.sleep(max(0.0, upcoming - loop.time()))
