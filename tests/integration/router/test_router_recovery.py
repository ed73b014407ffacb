"""Day-2 operations of the router with four workers in front of loopback backends.

No vLLM, PostgreSQL or Redis: the backends are ``LoopbackBackend`` servers, which attribute
every request to the router worker that sent it, so each test can ask what every worker does.
One router serves the module (starting four workers is most of the time these tests take):
``solo`` has one backend, ``duo`` two. It was sent SIGHUPs while its workers were starting;
each test leaves its model as it found it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from hxp_runtime.router.admin_cli import call_admin
from tests.dataplane import free_port
from tests.integration.router.clients import ClientThreads
from tests.integration.router.conftest import RouterProcess, call, worker_pids
from tests.integration.router.loopback import LoopbackBackend

pytestmark = pytest.mark.slow

WORKERS = 4
KEY = "hxp-recovery-test-key-0123456789"
ADMIN_KEY = "hxp-admin-test-key-0123456789abcdef"
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


class Load(ClientThreads):
    """``clients`` threads sending completions over new connections (spread over workers)."""

    def __init__(self, router: RouterProcess, model: str, clients: int) -> None:
        self.router, self.model = router, model
        self.statuses: list[int] = []
        super().__init__([() for _ in range(clients)])

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


@dataclass
class Fleet:
    router: RouterProcess
    solo: LoopbackBackend
    duo: tuple[LoopbackBackend, LoopbackBackend]
    spawned: set[int]  # the workers as the supervisor first started them
    admin_port: int


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    router = RouterProcess(
        {},
        {"api_keys": [{"name": "ops", "secret": KEY}], "admin_key": ADMIN_KEY},
        tmp_path_factory.mktemp("router"),
    )

    def workers() -> set[int]:
        return worker_pids(router)

    solo = LoopbackBackend("solo-served", workers)
    duo = (
        LoopbackBackend("duo-served", workers, work_s=0.05),
        LoopbackBackend("duo-served", workers, work_s=0.05),
    )
    for backend in (solo, *duo):
        backend.start()
    admin_port = free_port()
    router.settings = settings(
        [("solo", solo), ("duo", duo[0]), ("duo", duo[1])], admin_port=admin_port
    )
    router.write()
    try:
        router.process = router.spawn()
        # The supervisor has spawned its workers once it says so; they are still importing.
        assert wait_for(lambda: "supervising" in router.log_tail(), 30), router.log_tail()
        router.signal(signal.SIGHUP)
        spawned = worker_pids(router)
        time.sleep(0.3)
        router.signal(signal.SIGHUP)  # mid start-up: imports done, gateways starting
        router.wait_ready()
        yield Fleet(router, solo, duo, spawned, admin_port)
        assert router.stop() == 0, router.log_tail()
    finally:
        router.stop()
        for backend in (solo, *duo):
            backend.close()


def test_sighups_right_after_start_and_in_a_row_keep_every_worker(fleet: Fleet) -> None:
    router = fleet.router
    workers = worker_pids(router)
    assert len(workers) == WORKERS and workers == fleet.spawned, router.log_tail()
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


def test_a_restarted_backend_gets_traffic_from_every_worker_again(fleet: Fleet) -> None:
    router, solo = fleet.router, fleet.solo
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


def test_an_idle_backend_back_from_an_outage_is_closed_in_every_worker(fleet: Fleet) -> None:
    """No request comes after the backend is back, so no probe could close the breakers that
    the outage opened: the health checks must, or the router reports it degraded for ever."""
    router, solo = fleet.router, fleet.solo
    solo.stop()
    with Load(router, "solo", clients=8) as load:  # failures open every worker's breaker
        assert wait_for(lambda: worst_breaker(router, "solo") == "open", 20), load.statuses
    time.sleep(HEALTH_INTERVAL_S * 3)  # every worker's checks see the outage too
    solo.start()
    restarted = time.monotonic()
    bound_s = HEALTH_INTERVAL_S * 2 + 2.0  # two passing checks, a busy machine
    closed = wait_for(lambda: worst_breaker(router, "solo") == "closed", bound_s + 10)
    took_s = time.monotonic() - restarted
    print(f"idle recovery: every worker's breaker closed {took_s:.2f} s after the restart")
    assert closed, admin(router, "GET", "/admin/backends")[1]["backends"]["solo"]
    assert took_s <= bound_s
    assert not solo.since(restarted), "a request reached the backend: it was not idle"


def worst_breaker(router: RouterProcess, backend: str) -> str:
    """The worst breaker state of ``backend`` over every worker, as the admin API merges it."""
    status, state = admin(router, "GET", "/admin/backends")
    assert status == 200 and state["workers"] == WORKERS, state
    return str(state["backends"][backend]["breaker"])


def admin_cli(router: RouterProcess, *args: str) -> tuple[int, dict[str, Any]]:
    """``hxp-router admin ARGS`` against the router: (exit status, its JSON answer)."""
    done = subprocess.run(
        [
            sys.executable,
            *("-m", "hxp_runtime.router", "admin"),
            *("--settings", str(router.settings_path)),
            *("--secrets", str(router.directory / "secrets.yml")),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def admin(router: RouterProcess, method: str, path: str) -> tuple[int, dict[str, Any]]:
    return call_admin(router.settings_path, router.directory / "secrets.yml", method, path)


def test_a_drained_backend_gets_no_requests_from_any_worker_until_undrained(
    fleet: Fleet,
) -> None:
    router, (first, second) = fleet.router, fleet.duo
    # The admin API is on loopback, on its own port, and wants the key.
    assert call("GET", router.url + "/admin/backends", key=ADMIN_KEY)[0] == 404
    admin_url = f"http://127.0.0.1:{fleet.admin_port}/admin/backends"
    assert call("GET", admin_url)[0] == 401
    assert call("GET", admin_url, key=ADMIN_KEY[:-1] + "x")[0] == 401
    with Load(router, "duo", clients=6) as load:
        workers = worker_pids(router)
        begin = time.monotonic()
        assert wait_for(lambda: {a.worker for a in first.since(begin)} >= workers, 20)
        code, drained = admin_cli(router, "drain", "duo", "--deadline-s", "10")
        answered = time.monotonic()
        assert code == 0 and drained["drained"], drained
        time.sleep(0.5)
        router.signal(signal.SIGHUP)  # the drain outlives a reload
        time.sleep(1.0)
        status, state = admin(router, "GET", "/admin/backends")
        back = time.monotonic()
        undrained_status, undrained = admin(router, "POST", "/admin/backends/duo/undrain")
        assert wait_for(lambda: {a.worker for a in first.since(back)} >= workers, 10)
    while_drained = [a for a in first.since(answered) if a.at < back]
    print(
        f"drain answered after {drained['waited_s']} s; requests reaching the drained backend "
        f"after that: {len(while_drained)}; {len(load.statuses)} requests, "
        f"failed: {sum(s != 200 for s in load.statuses)}"
    )
    assert while_drained == [], "requests reached the drained backend"
    assert second.since(answered), "the other replica took no load during the drain"
    assert set(load.statuses) == {200}, load.statuses
    assert status == 200 and state["workers"] == WORKERS, state
    duo = state["backends"]["duo"]
    assert duo["draining"] and duo["in_flight"] == 0 and duo["healthy"], duo
    assert {w["draining"] for w in duo["workers"].values()} == {True}, duo
    assert not state["backends"]["duo-2"]["draining"], state
    assert undrained_status == 200 and undrained["was_drained"], undrained
    assert worker_pids(router) == workers
    assert ADMIN_KEY not in router.log_path.read_text()
