"""What a backend's active health checks do to its circuit breaker, and how the workers of a
router poll a backend's load between them."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
from aiohttp import web

from hxp_runtime.config import CircuitBreaker as BreakerSettings
from hxp_runtime.config import HealthCheck
from hxp_runtime.router.backends import VLLM_GAUGES, BackendRuntime
from hxp_runtime.router.breaker import BreakerState
from hxp_runtime.router.shared import SharedState
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


# ---------------------------------------------------------------- load polls shared by workers


class MetricsDouble:
    """A double of a vLLM server's /metrics on loopback (a real aiohttp server): it counts the
    polls, the most at once, and answers the gauges it is given, after ``delay_s``."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.gauges = {"running": 3.0, "waiting": 5.0, "kv_usage": 0.25}
        self.polls = self.now = self.most = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def metrics(self, request: web.Request) -> web.Response:
        self.polls += 1
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.now -= 1
        names = {v: k for k, v in VLLM_GAUGES.items()}
        lines = [f'{names[k]}{{model_name="a"}} {v}' for k, v in self.gauges.items()]
        return web.Response(text="\n".join(lines) + "\n")

    async def __aenter__(self) -> MetricsDouble:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def watch_for(
    double: MetricsDouble, shared: SharedState | None, workers: int, interval_s: float, run_s: float
) -> list[BackendRuntime]:
    """``workers`` watchers of one backend, each as a router worker runs it, for ``run_s``."""
    lives = [runtime() for _ in range(workers)]
    health = HealthCheck(enabled=False)
    async with aiohttp.ClientSession() as session:
        for live in lives:
            live.backend = replace(live.backend, url=double.url)
        tasks = [
            asyncio.create_task(live.watch(session, {}, health, interval_s, shared))
            for live in lives
        ]
        await asyncio.sleep(run_s)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return lives


def gauges(live: BackendRuntime) -> dict[str, float]:
    return {name: getattr(live.stats, name) for name in VLLM_GAUGES.values()}


async def test_workers_that_share_state_poll_a_backend_once_per_interval(tmp_path: Path) -> None:
    shared = SharedState(tmp_path)
    async with MetricsDouble() as double:
        lives = await watch_for(double, shared, workers=4, interval_s=0.2, run_s=2.1)
        # Alone, each of the four would have polled 11 times; between them, about once a turn.
        assert 8 <= double.polls <= 14, double.polls
        assert all(gauges(live) == double.gauges for live in lives), [gauges(x) for x in lives]
        # The backend's load changes: every worker sees it within two turns.
        double.gauges = {"running": 0.0, "waiting": 1.0, "kv_usage": 0.5}
        lives = await watch_for(double, shared, workers=4, interval_s=0.2, run_s=0.5)
        assert all(gauges(live) == double.gauges for live in lives), [gauges(x) for x in lives]


async def test_without_shared_state_every_worker_polls_for_itself(tmp_path: Path) -> None:
    async with MetricsDouble() as double:
        lives = await watch_for(double, None, workers=2, interval_s=0.2, run_s=1.1)
        assert double.polls >= 10, double.polls  # six turns each
        assert all(gauges(live) == double.gauges for live in lives), [gauges(x) for x in lives]


async def test_a_slow_backend_is_polled_by_one_worker_at_a_time(tmp_path: Path) -> None:
    """The workers' turns come together (they started together) and the answer is slow: one
    polls, the others read the last answer meanwhile, and none sends a second poll to a
    server still working on one."""
    async with MetricsDouble(delay_s=0.15) as double:
        shared = SharedState(tmp_path)
        lives = await watch_for(double, shared, workers=4, interval_s=0.2, run_s=1.1)
        assert double.most == 1, double.most
        assert double.polls >= 3
        assert all(gauges(live) == double.gauges for live in lives), [gauges(x) for x in lives]


def test_a_published_load_holds_for_its_url_and_its_interval_only(tmp_path: Path) -> None:
    shared = SharedState(tmp_path)
    load = {"running": 1.0, "waiting": 2.0, "kv_usage": 0.5}
    shared.publish_load("a", "http://10.0.0.1:8000", load)
    assert shared.fresh_load("a", "http://10.0.0.1:8000", 5.0) == load
    assert shared.fresh_load("a", "http://10.0.0.2:8000", 5.0) is None  # moved by a reload
    assert shared.fresh_load("b", "http://10.0.0.1:8000", 5.0) is None
    time.sleep(0.06)
    assert shared.fresh_load("a", "http://10.0.0.1:8000", 0.05) is None  # older than a turn
    with shared.polling("a") as first, shared.polling("a") as second:
        assert (first, second) == (True, False)
    with shared.polling("a") as again:
        assert again  # released at the end of the block


def test_a_damaged_load_file_is_no_answer(tmp_path: Path) -> None:
    """The monitor reading it must not fail: it polls the backend instead."""
    shared = SharedState(tmp_path)
    url = "http://10.0.0.1:8000"
    fresh = time.monotonic()
    for text in (
        "[1, 2]",
        "{not json",
        b"\xff\xfe".decode("latin-1"),
        json.dumps({"url": url, "at": "soon", "gauges": {"running": 1.0}}),
        json.dumps({"url": url, "at": fresh, "gauges": {"running": "many"}}),
        json.dumps({"url": url, "at": fresh, "gauges": [1.0]}),
    ):
        (tmp_path / "load" / "a.json").write_text(text, encoding="latin-1")
        assert shared.fresh_load("a", url, 5.0) is None, text
    (tmp_path / "load" / "a.json").write_text(
        json.dumps({"url": url, "at": fresh, "gauges": {"running": 2}})
    )
    assert shared.fresh_load("a", url, 5.0) == {"running": 2.0}
