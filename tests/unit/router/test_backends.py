"""What a backend's active health checks do to its circuit breaker."""

from __future__ import annotations

import time

from hxp_runtime.config import CircuitBreaker as BreakerSettings
from hxp_runtime.router.backends import BackendRuntime
from hxp_runtime.router.breaker import BreakerState
from hxp_runtime.router.upstream import UpstreamPool
from tests.unit.router.test_strategies import backend


def runtime() -> BackendRuntime:
    chosen = backend("a")
    return BackendRuntime(
        chosen,
        UpstreamPool("http://127.0.0.1:9"),
        BreakerSettings(failure_threshold=1, open_s=30, half_open_requests=1),
        on_breaker=lambda backend_id, state: None,
        on_health=lambda backend_id, healthy: None,
    )


async def test_a_passing_check_after_an_outage_half_opens_an_open_breaker() -> None:
    live = runtime()
    live.failed()
    assert live.breaker.state is BreakerState.OPEN and live.stats.ejected
    live.check_failed_at = time.monotonic()  # the outage, seen by a check
    live.check_passed()
    assert live.breaker.state is BreakerState.HALF_OPEN and not live.stats.ejected
    assert live.check_failed_at is None
    assert live.breaker.acquire()
    live.succeeded(0.01)
    assert live.breaker.state is BreakerState.CLOSED


async def test_a_passing_check_alone_does_not_cut_the_open_period_short() -> None:
    live = runtime()
    live.check_failed_at = time.monotonic() - 1  # a failed check before the breaker opened
    live.failed()
    live.check_passed()
    assert live.breaker.state is BreakerState.OPEN  # real requests failed, /health passes


async def test_a_passing_check_frees_the_probe_slots_of_a_half_open_breaker() -> None:
    live = runtime()
    live.failed()
    live.breaker.half_open()
    assert live.breaker.acquire() and not live.breaker.acquire()  # a probe that never ends
    live.check_passed()
    assert live.breaker.acquire()


async def test_an_unprobed_half_open_backend_is_closed_by_its_next_passing_check() -> None:
    live = runtime()
    for _ in range(live.breaker.failure_threshold):
        live.failed()
    live.check_failed_at = time.monotonic()  # the outage, seen by a check
    live.check_passed()  # the backend is back: probes allowed
    assert live.breaker.state is BreakerState.HALF_OPEN
    live.check_passed()  # no request came in a whole interval
    assert live.breaker.state is BreakerState.CLOSED and not live.stats.ejected
