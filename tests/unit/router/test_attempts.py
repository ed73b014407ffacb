"""The attempts at the backends, against real loopback servers that answer with exact bytes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from hxp_runtime.config import Retries
from hxp_runtime.router.attempts import (
    Backoff,
    OutgoingBodies,
    attempt,
    attempt_order,
)
from hxp_runtime.router.backends import BackendRuntime
from hxp_runtime.router.breaker import BreakerState
from hxp_runtime.router.metrics import RouterMetrics
from hxp_runtime.router.pipeline import Rejected, Routed, parse, route
from hxp_runtime.router.settings import RouterSettings
from hxp_runtime.router.strategies import Backend, Decision, Endpoint, RoutingTable, Stats
from hxp_runtime.router.upstream import UpstreamPool
from tests.dataplane import free_port
from tests.unit.router.test_pipeline import counted, error_in
from tests.unit.router.test_strategies import backend
from tests.unit.router.test_upstream import CHUNKED_HEAD, TWO_EVENTS_WIRE, ok, server

CHAT_PATH = b"/v1/chat/completions"
SLO = {"latency_ms": 1000, "throughput_rps": 10}


def failing(status: int = 500) -> bytes:
    body = b'{"error": "overloaded"}'
    return (
        f"HTTP/1.1 {status} Oops\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


def stopped() -> str:
    """The URL of a port nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


class Setup:
    """A routing table and live backends for ``primary`` (replicas at ``urls``) and its
    fallback ``spare``, as the gateway builds them from its settings."""

    def __init__(self, urls: list[str], spare: str | None = None, **router: Any) -> None:
        specs = [
            {"name": "primary", "served_name": "primary-v2", "url": url, "slo": SLO} for url in urls
        ]
        if spare is not None:
            specs.append({"name": "spare", "served_name": "spare", "url": spare, "slo": SLO})
        self.settings = RouterSettings.model_validate(
            {
                "backends": specs,
                "strategies": ["explicit"],
                "fallbacks": {"primary": ["spare"]} if spare is not None else {},
                "circuit_breaker": {"failure_threshold": 2, "open_s": 30},
                **router,
            }
        )
        self.table = RoutingTable(self.settings)
        self.live = {
            b.id: BackendRuntime(
                b,
                UpstreamPool(b.url),
                self.settings.circuit_breaker,
                on_breaker=lambda backend_id, state: None,
                on_health=lambda backend_id, healthy: None,
            )
            for b in self.table.backends
        }
        self.stats = Stats({i: b.stats for i, b in self.live.items()})
        self.metrics = RouterMetrics()

    async def attempt(self, body: dict[str, Any], timeout_s: float = 5.0) -> Any:
        request = parse(Endpoint.CHAT, CHAT_PATH, json.dumps(body).encode())
        routed = await route(self.table, self.stats, request, None, None, None, self.metrics)
        deadline = asyncio.get_running_loop().time() + timeout_s
        retries = self.settings.retries
        return await attempt(request, routed, self.live, retries, deadline, self.metrics)

    def close(self) -> None:
        for live in self.live.values():
            live.pool.close()


# --------------------------------------------------------------------------- the order


def test_the_first_model_is_retried_across_its_replicas_then_each_fallback_once() -> None:
    a1, a2, b1 = backend("a"), backend("a", 2), backend("b")
    decision = Decision((a1, a2, b1), ())
    assert list(attempt_order(decision, 2)) == [a1, a2, a1, b1]
    assert list(attempt_order(decision, 0)) == [a1, a2, b1]
    assert list(attempt_order(Decision((b1,), ()), 1)) == [b1, b1]


def test_every_replica_gets_a_try_even_without_retries() -> None:
    replicas = tuple(backend("a", n) for n in (1, 2, 3))
    assert list(attempt_order(Decision(replicas, ()), 0)) == list(replicas)


async def test_backoff_doubles_per_retry_of_a_model_and_resets_for_another() -> None:
    loop = asyncio.get_running_loop()
    backoff = Backoff(0.05)
    a, b = backend("a"), backend("b")
    waited = []
    for chosen in (a, a, a, b, b):
        before = loop.time()
        assert await backoff.before(chosen, loop.time() + 10)
        waited.append(loop.time() - before)
    assert waited[0] < 0.05 and waited[3] < 0.05  # a new model goes at once
    assert waited[1] >= 0.05 and waited[2] >= 0.1 and waited[4] >= 0.05
    assert waited[2] < 0.2 and waited[4] < 0.1


async def test_backoff_gives_up_rather_than_sleep_past_the_deadline() -> None:
    loop = asyncio.get_running_loop()
    backoff = Backoff(1.0)
    a = backend("a")
    assert await backoff.before(a, loop.time() + 0.5)  # the first try never waits
    before = loop.time()
    assert not await backoff.before(a, loop.time() + 0.5)
    assert loop.time() - before < 0.5


def test_the_body_names_each_server_s_model_and_is_encoded_once() -> None:
    a = Backend("a", "a", "a-served", "generate", "http://127.0.0.1:1")
    a2 = Backend("a-2", "a", "a-served", "generate", "http://127.0.0.1:2")
    b = Backend("b", "b", "b", "generate", "http://127.0.0.1:3")
    original = b'{"model":  "b", "messages": []}'
    bodies = OutgoingBodies(parse(Endpoint.CHAT, CHAT_PATH, original))
    assert bodies.for_backend(b) is bodies.for_backend(b) == original  # sent as it came
    rewritten = bodies.for_backend(a)
    assert json.loads(rewritten) == {"model": "a-served", "messages": []}
    assert bodies.for_backend(a2) is rewritten


# --------------------------------------------------------------------------- attempts


async def test_an_answer_settles_the_backend() -> None:
    async with server(ok(b'{"id": 1}')) as (url, requests, _):
        setup = Setup([url])
        answer = await setup.attempt({"model": "primary", "messages": []})
        setup.close()
    assert (answer.upstream.status, answer.upstream.body) == (200, b'{"id": 1}')
    assert answer.backend.id == "primary" and not answer.streaming
    stats = setup.live["primary"].stats
    assert stats.outstanding == 0 and stats.latency_ms is not None
    # The server got the body with its own name for the model.
    assert json.loads(requests[0].split(b"\r\n\r\n", 1)[1])["model"] == "primary-v2"
    assert counted(setup.metrics, "hxp_router_fallbacks_total") == {}


async def test_a_5xx_counts_against_the_replica_and_the_next_one_answers() -> None:
    async with (
        server(failing(503)) as (broken, _, _),
        server(ok(b'{"id": 2}')) as (healthy, _, _),
    ):
        setup = Setup([broken, healthy])
        answer = await setup.attempt({"model": "primary"})
        setup.close()
    assert answer.backend.id == "primary-2" and answer.upstream.body == b'{"id": 2}'
    first = setup.live["primary"]
    assert first.stats.error_rate > 0 and first.stats.outstanding == 0
    assert counted(setup.metrics, "hxp_router_upstream_failures_total") == {
        '{"backend": "primary", "model": "primary", "reason": "status"}': 1.0
    }


async def test_a_model_is_retried_until_it_answers() -> None:
    async with server(failing(), failing(), ok(b"{}")) as (url, requests, _):
        setup = Setup(
            [url],
            retries={"attempts": 2, "backoff_ms": 1},
            circuit_breaker={"failure_threshold": 3, "open_s": 30},
        )
        answer = await setup.attempt({"model": "primary"})
        setup.close()
    assert answer.upstream.status == 200 and len(requests) == 3
    live = setup.live["primary"]
    assert live.breaker.state is BreakerState.CLOSED and live.stats.error_rate > 0


async def test_retries_stop_once_the_breaker_opens() -> None:
    async with server(failing(), failing(), ok(b"{}")) as (url, requests, _):
        setup = Setup([url], retries={"attempts": 2, "backoff_ms": 1})
        with pytest.raises(Rejected) as rejected:
            await setup.attempt({"model": "primary"})
        setup.close()
    # Two failures reached the threshold of 2: the third try was not made.
    assert rejected.value.response.status == 502 and len(requests) == 2
    assert setup.live["primary"].breaker.state is BreakerState.OPEN


async def test_the_fallback_answers_when_the_model_cannot_and_is_counted() -> None:
    async with server(ok(b'{"from": "spare"}')) as (spare, _, _):
        setup = Setup([stopped()], spare=spare, retries={"attempts": 1, "backoff_ms": 1})
        answer = await setup.attempt({"model": "primary"})
        setup.close()
    assert answer.backend.id == "spare" and answer.upstream.body == b'{"from": "spare"}'
    assert counted(setup.metrics, "hxp_router_fallbacks_total") == {
        '{"backend": "spare", "model": "spare"}': 1.0
    }
    assert counted(setup.metrics, "hxp_router_upstream_failures_total") == {
        '{"backend": "primary", "model": "primary", "reason": "connect"}': 2.0
    }
    assert setup.live["primary"].breaker.state is BreakerState.OPEN


async def test_when_every_attempt_fails_the_last_failure_is_a_502() -> None:
    async with server(failing()) as (url, requests, _):
        setup = Setup([url], retries={"attempts": 1, "backoff_ms": 1})
        with pytest.raises(Rejected) as rejected:
            await setup.attempt({"model": "primary"})
        setup.close()
    response = rejected.value.response
    error = error_in(response)
    assert (response.status, error["code"]) == (502, "upstream_failed")
    assert "HTTP 500" in error["message"] and "overloaded" in error["message"]
    assert rejected.value.model == "primary" and len(requests) == 2


async def test_open_breakers_everywhere_are_a_503_without_a_try() -> None:
    async with server(ok(b"{}")) as (url, requests, _):
        setup = Setup([url])
        breaker = setup.live["primary"].breaker
        breaker.record_failure()
        breaker.record_failure()
        assert breaker.state is BreakerState.OPEN
        # The breaker opened between routing and the attempt (routing saw it available).
        setup.stats.backends["primary"].ejected = False
        with pytest.raises(Rejected) as rejected:
            await setup.attempt({"model": "primary"})
        setup.close()
    error = error_in(rejected.value.response)
    assert (rejected.value.response.status, error["code"]) == (503, "circuit_open")
    assert requests == []


async def test_a_backend_that_does_not_answer_in_time_is_a_504() -> None:
    async with server([b"HTTP/1.1 200 OK\r\n"]) as (url, _, _):
        setup = Setup([url])
        with pytest.raises(Rejected) as rejected:
            await setup.attempt({"model": "primary"}, timeout_s=0.3)
        setup.close()
    error = error_in(rejected.value.response)
    assert (rejected.value.response.status, error["code"]) == (504, "timeout")
    assert counted(setup.metrics, "hxp_router_upstream_failures_total") == {
        '{"backend": "primary", "model": "primary", "reason": "timeout"}': 1.0
    }


async def test_a_stream_is_answered_with_its_first_bytes_and_stays_in_flight() -> None:
    async with server(TWO_EVENTS_WIRE) as (url, _, _):
        setup = Setup([url])
        answer = await setup.attempt({"model": "primary", "stream": True})
        assert answer.streaming and answer.first_piece == b"data: one\n\n"
        live = setup.live["primary"]
        # Settled by the relay, once the client has the first piece.
        assert live.stats.outstanding == 1 and live.stats.latency_ms is None
        answer.upstream.close()
        setup.close()


async def test_a_stream_refused_with_an_error_status_is_read_whole() -> None:
    refusal = CHUNKED_HEAD.replace(b"200 OK", b"400 Bad Request") + b"5\r\nnope!\r\n0\r\n\r\n"
    async with server(refusal) as (url, _, _):
        setup = Setup([url])
        answer = await setup.attempt({"model": "primary", "stream": True})
        setup.close()
    assert not answer.streaming
    assert (answer.upstream.status, answer.upstream.body) == (400, b"nope!")
    assert setup.live["primary"].stats.outstanding == 0


async def test_routed_primary_decides_what_counts_as_a_fallback() -> None:
    async with server(ok(b"{}")) as (spare, _, _):
        setup = Setup([stopped()], spare=spare)
        request = parse(Endpoint.CHAT, CHAT_PATH, b'{"model": "primary"}')
        # Routing found the primary unavailable: only the fallback is left to try.
        setup.stats.backends["primary"].healthy = False
        routed: Routed = await route(
            setup.table, setup.stats, request, None, None, None, setup.metrics
        )
        assert [b.id for b in routed.decision.attempts] == ["spare"]
        deadline = asyncio.get_running_loop().time() + 5
        answer = await attempt(request, routed, setup.live, Retries(), deadline, setup.metrics)
        setup.close()
    assert answer.backend.id == "spare"
    assert counted(setup.metrics, "hxp_router_fallbacks_total") == {
        '{"backend": "spare", "model": "spare"}': 1.0
    }


async def test_a_probe_cancelled_with_its_client_gives_its_slot_back() -> None:
    hung_up = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the router hangs up
        writer.close()
        await writer.wait_closed()
        hung_up.set()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    setup = Setup([f"http://127.0.0.1:{port}"])
    live = setup.live["primary"]
    try:
        live.failed()
        live.failed()
        live.breaker.half_open()
        task = asyncio.create_task(setup.attempt({"model": "primary", "messages": []}))
        for _ in range(100):
            if live.stats.outstanding:
                break
            await asyncio.sleep(0.01)
        assert live.stats.outstanding == 1 and not live.breaker.allows()  # the probe is out
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert live.breaker.state is BreakerState.HALF_OPEN and live.breaker.allows()
        assert live.stats.outstanding == 0
    finally:
        setup.close()
        await asyncio.wait_for(hung_up.wait(), 5)
        listener.close()
        await listener.wait_closed()
