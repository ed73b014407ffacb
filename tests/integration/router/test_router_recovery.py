"""Day-2 operations of the router with four workers in front of loopback backends.

No vLLM, PostgreSQL or Redis: the backends are ``LoopbackBackend`` servers, which attribute
every request to the router worker that sent it, so each test can ask what every worker does.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dataplane import free_port
from tests.integration.router.conftest import RouterProcess, call, worker_pids
from tests.integration.router.loopback import LoopbackBackend

pytestmark = pytest.mark.slow

WORKERS = 4
KEY = "hxp-recovery-test-key-0123456789"
HEALTH_INTERVAL_S = 0.5
SLO = {"latency_ms": 2000, "throughput_rps": 10}


def settings(backends: list[tuple[str, LoopbackBackend]], **extra: Any) -> dict[str, Any]:
    return {
        "listen_host": "127.0.0.1",
        "port": free_port(),
        "workers": WORKERS,
        "timeout_s": 10,
        "drain_timeout_s": 5,
        "strategies": ["explicit", "least_outstanding"],
        "health_check": {"enabled": True, "interval_s": HEALTH_INTERVAL_S, "timeout_s": 1},
        # Long enough that waiting out the open period cannot pass for recovery.
        "circuit_breaker": {"failure_threshold": 2, "open_s": 30, "half_open_requests": 1},
        "retries": {"attempts": 1, "backoff_ms": 10},
        "backends": [
            {"name": name, "served_name": b.served_name, "url": b.url, "slo": SLO}
            for name, b in backends
        ],
        "load_poll_interval_s": 1,
        **extra,
    }


class Load:
    """``clients`` threads sending completions over new connections (spread over workers)."""

    def __init__(self, router: RouterProcess, model: str, clients: int) -> None:
        self.router, self.model = router, model
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        body = {"model": self.model, "prompt": "load", "max_tokens": 1}
        while not self._stop.is_set():
            status, _, _ = call("POST", self.router.url + "/v1/completions", body, KEY, timeout=15)
            self.statuses.append(status)
            if status != 200:
                time.sleep(0.02)  # a failing router answers at once; do not spin on it


def wait_for(condition: Any, timeout_s: float, step_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step_s)
    return bool(condition())


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[RouterProcess]]:
    """Routers a test started; stopped (and their logs kept) whatever happens."""
    routers: list[RouterProcess] = []
    yield routers
    for router in routers:
        assert router.stop() == 0, router.log_tail()


def test_a_restarted_backend_gets_traffic_from_every_worker_again(
    tmp_path: Path, started: list[RouterProcess]
) -> None:
    router = RouterProcess({}, {"api_keys": [{"name": "ops", "secret": KEY}]}, tmp_path)
    solo = LoopbackBackend("solo-served", lambda: worker_pids(router))
    solo.start()
    router.settings = settings([("solo", solo)])
    started.append(router)
    router.start()
    try:
        with Load(router, "solo", clients=8):
            workers = worker_pids(router)
            assert len(workers) == WORKERS
            begin = time.monotonic()
            assert wait_for(lambda: {a.worker for a in solo.since(begin)} >= workers, 20), (
                "not every worker took load before the restart"
            )
            solo.stop()
            # Long enough for every worker's checks to fail and its breaker to open.
            time.sleep(HEALTH_INTERVAL_S * 4)
            restarted = time.monotonic()
            solo.start()
            bound_s = HEALTH_INTERVAL_S + 2.0  # one check interval, one probe, a busy machine
            wait_for(lambda: {a.worker for a in solo.since(restarted)} >= workers, bound_s + 10)
        first: dict[int, float] = {}
        for arrival in solo.since(restarted):
            if arrival.worker is not None:
                first.setdefault(arrival.worker, arrival.at - restarted)
        recovery_s = max(first.get(w, float("inf")) for w in workers)
        print(f"recovery: every worker sends traffic again after {recovery_s:.2f} s: {first}")
        assert set(first) >= workers, f"workers without traffic after the restart: {first}"
        assert recovery_s <= bound_s, first
        assert worker_pids(router) == workers  # no worker died on the way
    finally:
        solo.close()


def test_reloads_right_after_start_and_in_a_row_keep_every_worker(
    tmp_path: Path, started: list[RouterProcess]
) -> None:
    router = RouterProcess({}, {"api_keys": [{"name": "ops", "secret": KEY}]}, tmp_path)
    solo = LoopbackBackend("solo-served", lambda: worker_pids(router))
    solo.start()
    router.settings = settings([("solo", solo)])
    router.write()
    started.append(router)
    try:
        router.process = router.spawn()
        # The supervisor has spawned its workers once it says so; they are still importing.
        assert wait_for(lambda: "supervising" in router.log_tail(), 30), router.log_tail()
        router.signal(signal.SIGHUP)
        spawned = worker_pids(router)
        time.sleep(0.3)
        router.signal(signal.SIGHUP)  # mid start-up: imports done, gateways starting
        router.wait_ready()
        workers = worker_pids(router)
        assert len(workers) == WORKERS and workers == spawned, router.log_tail()
        with Load(router, "solo", clients=2) as load:
            time.sleep(0.5)
            for _ in range(5):
                router.signal(signal.SIGHUP)
                time.sleep(0.05)
            time.sleep(1.5)  # reloads finish while the load goes on
        assert load.statuses and set(load.statuses) == {200}, load.statuses
        assert worker_pids(router) == workers, router.log_tail()
        log = router.log_path.read_text()
        assert "died" not in log and log.count("reloaded") >= WORKERS, log
    finally:
        solo.close()
