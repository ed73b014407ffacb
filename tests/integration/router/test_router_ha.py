"""Two routers behind one address share their state only through Redis and PostgreSQL: a key's
rate limit holds exactly across both (one token bucket in Redis, leased per worker), and its
usage is counted once per request whichever router served it (each router writes its own
tally's rows; the sum is the truth).

Two router processes of two workers each, as two router hosts would run them, on loopback,
against one real PostgreSQL and one real Redis and the benchmark's fixed-reply backend.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.router.conftest import Dataplane, RouterProcess, call, fast_backend, new_key
from tests.vllm_servers import free_port

pytestmark = pytest.mark.slow

ROUTERS = 2
WORKERS = 2
LIMIT_PER_MINUTE = 20
SENT = 2 * LIMIT_PER_MINUTE
# Requests sent through each router one after another before the burst.
PRIMING = 2
BODY = {"model": "fast", "prompt": "a", "max_tokens": 1}


def settings(dataplane: Dataplane, backend_port: int) -> dict[str, Any]:
    pg, redis = dataplane.postgres, dataplane.redis
    return {
        "listen_host": "127.0.0.1",
        "port": free_port(),
        "workers": WORKERS,
        "drain_timeout_s": 5,
        "strategies": ["explicit", "least_outstanding"],
        "health_check": {"enabled": True, "interval_s": 1, "timeout_s": 1},
        "backends": [fast_backend(backend_port)],
        "database": {"host": pg.host, "port": pg.port, "name": pg.database, "user": pg.user},
        "redis": {"host": redis.host, "port": redis.port},
        "auth_cache_ttl_s": 1,
        "usage_flush_interval_s": 0.5,
    }


@pytest.fixture(scope="module")
def routers(
    dataplane: Dataplane, backend_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RouterProcess]]:
    secrets = {
        "database_password": dataplane.postgres.password,
        "redis_password": dataplane.redis.password,
    }
    started: list[RouterProcess] = []
    try:
        for _ in range(ROUTERS):
            router = RouterProcess(
                settings(dataplane, backend_port), secrets, tmp_path_factory.mktemp("router")
            )
            router.start()
            started.append(router)
        yield started
    finally:
        for router in started:
            assert router.stop() == 0, router.log_tail()


def usage_requests(dataplane: Dataplane, key_name: str) -> int:
    done = subprocess.run(
        ["psql", dataplane.postgres.dsn, "-Atc",
         f"SELECT coalesce(sum(requests), 0) FROM hxp_usage WHERE key_name = '{key_name}'"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(done.stdout.strip())


def test_a_keys_limit_holds_exactly_across_two_routers_and_usage_counts_once(
    routers: list[RouterProcess], dataplane: Dataplane
) -> None:
    key = new_key(dataplane, "shared", "--requests-per-minute", str(LIMIT_PER_MINUTE))
    statuses: list[tuple[int, int]] = []  # (router index, status)
    lock = threading.Lock()
    started = time.monotonic()
    # A few one after another through each router first: both take from the one bucket, even
    # when, in the burst below, one router's workers lease all that is left before the other's
    # (on a loaded machine one router answered the whole burst's admitted share).
    for index in range(PRIMING * ROUTERS):
        router = index % ROUTERS
        status, _, _ = call("POST", routers[router].url + "/v1/completions", BODY, key)
        assert status == 200, f"request {index} through router {router}: {status}"
        statuses.append((router, status))
    burst = SENT - len(statuses)
    gate = threading.Barrier(burst)

    def send(index: int) -> None:
        router = index % ROUTERS
        gate.wait()  # all at once: the routers' workers race for the one bucket
        status, _, _ = call("POST", routers[router].url + "/v1/completions", BODY, key)
        with lock:
            statuses.append((router, status))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(burst)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    took = time.monotonic() - started
    ok = sorted(r for r, s in statuses if s == 200)
    refused = [s for _, s in statuses if s == 429]
    # The bucket refills at LIMIT/60 per second: what the burst's own length let back in.
    refilled = int(took * LIMIT_PER_MINUTE / 60)
    print(
        f"\n{SENT} requests ({PRIMING} through each router, then the rest at once) over "
        f"{ROUTERS} routers x {WORKERS} workers in {took:.2f} s: "
        f"{len(ok)} admitted (router 0: {ok.count(0)}, router 1: {ok.count(1)}), "
        f"{len(refused)} refused with 429; limit {LIMIT_PER_MINUTE}/min (+{refilled} refilled)"
    )
    assert len(statuses) == SENT and len(ok) + len(refused) == SENT, statuses
    assert LIMIT_PER_MINUTE <= len(ok) <= LIMIT_PER_MINUTE + refilled
    assert ok.count(0) >= PRIMING and ok.count(1) >= PRIMING, "both routers admitted requests"
    # Each router flushes its own tally; together they count every admitted request once.
    deadline = time.monotonic() + 15
    while (counted := usage_requests(dataplane, "shared")) < len(ok):
        assert time.monotonic() < deadline, f"usage counted {counted} of {len(ok)} requests"
        time.sleep(0.5)
    time.sleep(1.5)  # three more flush intervals: nothing else may arrive
    assert usage_requests(dataplane, "shared") == len(ok)
