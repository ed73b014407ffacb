"""The request path's steps one by one: authenticate, parse, admit, route, cached answer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from hxp_runtime.config import RateLimit, Strategy
from hxp_runtime.router.auth import KeyStore
from hxp_runtime.router.cache import ResponseCache
from hxp_runtime.router.metrics import RouterMetrics
from hxp_runtime.router.pipeline import (
    ANONYMOUS,
    NOT_CACHED,
    ClientRequest,
    Rejected,
    Routed,
    admit,
    authenticate,
    cached_answer,
    limits_of,
    parse,
    route,
    route_request,
)
from hxp_runtime.router.ratelimit import LocalBuckets, RateLimiter
from hxp_runtime.router.semantic import Embedder
from hxp_runtime.router.store import ApiKey
from hxp_runtime.router.strategies import Endpoint, RoutingTable
from tests.dataplane import ServiceMissing, free_port, redis_server
from tests.unit.router.test_strategies import settings, table_stats

CHAT = Endpoint.CHAT
CHAT_PATH = b"/v1/chat/completions"


def error_in(response: web.Response) -> dict[str, Any]:
    """The OpenAI-shaped error of an answer the router gave itself."""
    assert isinstance(response.body, bytes) and response.content_type == "application/json"
    error: dict[str, Any] = json.loads(response.body)["error"]
    return error


def error_of(rejected: pytest.ExceptionInfo[Rejected]) -> tuple[int, str]:
    response = rejected.value.response
    return response.status, error_in(response)["code"]


def chat(**payload: Any) -> ClientRequest:
    return parse(CHAT, CHAT_PATH, json.dumps(payload).encode())


def counted(metrics: RouterMetrics, name: str) -> dict[str, float]:
    """Every sample of one metric family, by its labels."""
    return {
        json.dumps(sample.labels, sort_keys=True): sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == name
    }


# --------------------------------------------------------------------------- authenticate


async def test_without_required_keys_everyone_is_anonymous() -> None:
    keys = KeyStore({}, None, ttl_s=10)
    assert await authenticate(keys, False, None) is ANONYMOUS
    assert await authenticate(keys, False, "Bearer whatever") is ANONYMOUS


async def test_a_static_key_is_known_without_a_lookup() -> None:
    admin = ApiKey("admin")
    keys = KeyStore({hashlib.sha256(b"s3cret").hexdigest(): admin}, None, ttl_s=10)
    assert await authenticate(keys, True, "Bearer s3cret") is admin


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic s3cret", "s3cret"])
async def test_a_missing_or_unknown_key_is_401(header: str | None) -> None:
    keys = KeyStore({hashlib.sha256(b"s3cret").hexdigest(): ApiKey("admin")}, None, ttl_s=10)
    with pytest.raises(Rejected) as rejected:
        await authenticate(keys, True, header)
    assert error_of(rejected) == (401, "invalid_api_key")
    assert rejected.value.model == ""


async def test_an_unseen_key_is_looked_up_once_then_cached() -> None:
    asked: list[str] = []
    stored = ApiKey("from-db", requests_per_minute=5)

    async def lookup(digest: str) -> ApiKey | None:
        asked.append(digest)
        return stored if digest == hashlib.sha256(b"db-key").hexdigest() else None

    keys = KeyStore({}, lookup, ttl_s=60)
    assert await authenticate(keys, True, "Bearer db-key") is stored
    assert await authenticate(keys, True, "Bearer db-key") is stored
    assert len(asked) == 1


# --------------------------------------------------------------------------- parse


def test_parse_keeps_the_bytes_and_reads_model_and_stream() -> None:
    body = b'{"model": "coder", "stream": true, "messages": []}'
    request = parse(CHAT, CHAT_PATH, body)
    assert (request.body, request.path, request.model, request.stream) == (
        body,
        CHAT_PATH,
        "coder",
        True,
    )
    assert request.payload == {"model": "coder", "stream": True, "messages": []}
    assert parse(CHAT, CHAT_PATH, b'{"stream": "yes"}').stream is False  # only a real true
    assert parse(CHAT, CHAT_PATH, b"{}").model is None


@pytest.mark.parametrize(
    "body",
    [
        '{"model": "cöder", "messages": []}'.encode(),
        '{"model": "cöder", "messages": []}'.encode("utf-16"),
        '{"model": "cöder", "messages": []}'.encode("utf-16-le"),
        '{"model": "cöder", "messages": []}'.encode("utf-8-sig"),
        b' \n{"model": "c\xc3\xb6der", "messages": []}',
        b'{"model": "c\\ud800der", "messages": []}',  # an unpaired escape, as json.loads takes it
    ],
)
def test_parse_reads_a_body_as_json_loads_does(body: bytes) -> None:
    assert parse(CHAT, CHAT_PATH, body).payload == json.loads(body)


def test_a_body_not_in_utf8_is_refused_as_json_loads_refuses_it() -> None:
    with pytest.raises(Rejected) as rejected:
        parse(CHAT, CHAT_PATH, b'{"model": "c\xf6der"}')
    assert error_of(rejected) == (400, "invalid_json")


def test_embeddings_never_stream() -> None:
    request = parse(Endpoint.EMBEDDING, b"/v1/embeddings", b'{"input": "x", "stream": true}')
    assert request.stream is False


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"[1, 2]", "invalid_request"),
        (b'"a string"', "invalid_request"),
        (b'{"model": 7}', "invalid_model"),
        (b'{"model": ["coder"]}', "invalid_model"),
    ],
)
def test_parse_refuses_what_is_not_an_openai_request(body: bytes, code: str) -> None:
    with pytest.raises(Rejected) as rejected:
        parse(CHAT, CHAT_PATH, body)
    assert error_of(rejected) == (400, code)


# --------------------------------------------------------------------------- admit


def test_a_key_s_own_limits_win_over_the_router_s() -> None:
    defaults = RateLimit(requests_per_minute=600, tokens_per_minute=1000)
    assert limits_of(ApiKey("plain"), defaults) == (600, 1000)
    assert limits_of(ApiKey("vip", 6000, None), defaults) == (6000, 1000)
    assert limits_of(ApiKey("small", 2, 50), defaults) == (2, 50)


async def test_admit_refuses_with_429_and_retry_after_once_the_bucket_is_empty() -> None:
    limiter = RateLimiter(LocalBuckets(clock=lambda: 0.0))
    key = ApiKey("tight", requests_per_minute=2)
    defaults = RateLimit()
    await admit(limiter, key, defaults)
    await admit(limiter, key, defaults)
    with pytest.raises(Rejected) as rejected:
        await admit(limiter, key, defaults)
    assert error_of(rejected) == (429, "rate_limit_exceeded")
    response = rejected.value.response
    # 2 requests per minute refill one every 30 s.
    assert response.headers["Retry-After"] == "30"
    message = error_in(response)["message"]
    assert "'tight'" in message and "2 requests" in message and "retry after 30 s" in message
    await admit(limiter, ApiKey("other", requests_per_minute=2), defaults)  # per key


class CountingBuckets(LocalBuckets):
    """Local buckets that count how often the limiter had to ask the shared store."""

    def __init__(self) -> None:
        super().__init__(clock=lambda: 0.0)
        self.takes = 0

    async def take(
        self, key: str, capacity: int, rate_per_s: float, want: int, debt: float
    ) -> tuple[int, float]:
        self.takes += 1
        return await super().take(key, capacity, rate_per_s, want, debt)


async def test_admit_spends_a_lease_without_asking_the_store() -> None:
    buckets = CountingBuckets()
    limiter = RateLimiter(buckets)
    key = ApiKey("busy", requests_per_minute=6000)  # a lease of 10 requests
    for _ in range(10):
        await admit(limiter, key, RateLimit())
    assert buckets.takes == 2  # one lease of requests, one of tokens


# --------------------------------------------------------------------------- route


def test_routing_reads_the_prompt_only_for_auto() -> None:
    table = RoutingTable(settings())
    messages = [{"role": "user", "content": "write a python poem"}]
    named = route_request(table, chat(model="coder", messages=messages), "code", None)
    assert (named.model, named.prompt, named.category) == ("coder", "", "code")
    auto = route_request(table, chat(model="auto", messages=messages), None, None)
    assert (auto.model, auto.prompt) == (None, "write a python poem")
    assert route_request(table, chat(messages=messages), None, None).model is None


async def test_route_names_the_model_asked_for_and_counts_the_strategies() -> None:
    table = RoutingTable(settings(strategies=["explicit", "least_outstanding"]))
    stats = table_stats(table, chatty={"outstanding": 3})
    metrics = RouterMetrics()
    routed = await route(table, stats, chat(model="chatty"), None, None, None, metrics)
    assert [b.id for b in routed.decision.attempts] == ["chatty-2", "chatty"]
    assert routed.primary == "chatty" and routed.first.id == "chatty-2"
    decisions = counted(metrics, "hxp_router_routing_decisions_total")
    assert decisions == {'{"strategy": "explicit"}': 1.0, '{"strategy": "least_outstanding"}': 1.0}


async def test_route_by_keywords_and_the_category_hint() -> None:
    table = RoutingTable(settings(strategies=["explicit", "hierarchical"]))
    stats = table_stats(table)
    metrics = RouterMetrics()
    poem = chat(messages=[{"role": "user", "content": "a poem please"}])
    assert (await route(table, stats, poem, None, None, None, metrics)).primary == "writer"
    hinted = await route(table, stats, poem, "code", None, None, metrics)
    assert hinted.primary == "coder"


async def test_an_unknown_model_is_404_against_no_model() -> None:
    table = RoutingTable(settings())
    with pytest.raises(Rejected) as rejected:
        await route(
            table, table_stats(table), chat(model="gpt-4"), None, None, None, RouterMetrics()
        )
    assert error_of(rejected) == (404, "model_not_found")
    assert rejected.value.model == ""  # a client's name is never a label value


async def test_no_healthy_replica_is_503_against_the_chosen_model() -> None:
    table = RoutingTable(settings())
    stats = table_stats(table, writer={"healthy": False})
    metrics = RouterMetrics()
    with pytest.raises(Rejected) as rejected:
        await route(table, stats, chat(model="writer"), None, None, None, metrics)
    assert error_of(rejected) == (503, "no_healthy_backend")
    assert rejected.value.model == "writer"
    # The decision was taken (and counted) before health left nothing to try.
    assert counted(metrics, "hxp_router_routing_decisions_total") == {
        '{"strategy": "explicit"}': 1.0
    }


async def test_the_model_choice_is_remembered_per_prompt() -> None:
    table = RoutingTable(settings(strategies=["explicit", "hierarchical"]))
    stats = table_stats(table)
    hello = chat(messages=[{"role": "user", "content": "hello"}])
    await route(table, stats, hello, None, None, None, RouterMetrics())
    await route(table, stats, hello, None, None, None, RouterMetrics())
    assert len(table.cache) == 1
    other = chat(messages=[{"role": "user", "content": "a poem"}])
    await route(table, stats, other, None, None, None, RouterMetrics())
    assert len(table.cache) == 2


@pytest.fixture
async def embeddings() -> AsyncIterator[tuple[str, list[Any]]]:
    """An embeddings server: answers with the vectors queued in the list, 500 when empty."""
    queued: list[Any] = []

    async def embed(request: web.Request) -> web.Response:
        body = await request.json()
        if not queued:
            return web.Response(status=500, text="model not loaded")
        vectors = queued.pop(0)
        assert len(vectors) == len(body["input"])
        data = [{"index": i, "embedding": v} for i, v in enumerate(vectors)]
        return web.json_response({"data": data})

    app = web.Application()
    app.router.add_post("/v1/embeddings", embed)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("")).rstrip("/"), queued


def semantic_table() -> RoutingTable:
    return RoutingTable(
        settings(strategies=["explicit", "semantic"], semantic={"embedding_model": "embed"}),
        prototypes={"code": (1.0, 0.0), "chat": (0.0, 1.0)},
    )


async def test_semantic_routing_embeds_the_prompt(embeddings: tuple[str, list[Any]]) -> None:
    url, queued = embeddings
    table = semantic_table()
    async with aiohttp.ClientSession() as session:
        embedder = Embedder(session, url, "minilm", authorization=None, timeout_s=5)
        queued.append([[0.1, 3.0]])  # close to the chat prototype
        prompt = chat(messages=[{"role": "user", "content": "how are you"}])
        routed = await route(
            table, table_stats(table), prompt, None, None, embedder, RouterMetrics()
        )
    assert routed.primary == "chatty"
    assert routed.decision.strategies[0] is Strategy.SEMANTIC
    assert len(table.cache) == 1


async def test_a_failed_embedding_routes_without_it_and_is_not_remembered(
    embeddings: tuple[str, list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = embeddings  # nothing queued: the server answers 500
    table = semantic_table()
    async with aiohttp.ClientSession() as session:
        embedder = Embedder(session, url, "minilm", authorization=None, timeout_s=5)
        prompt = chat(messages=[{"role": "user", "content": "how are you"}])
        with caplog.at_level(logging.WARNING, logger="hxp_runtime.router.pipeline"):
            routed = await route(
                table, table_stats(table), prompt, None, None, embedder, RouterMetrics()
            )
    assert routed.decision.attempts  # routed all the same
    assert len(table.cache) == 0  # the next request with this prompt tries again
    assert "semantic routing skipped" in caplog.text and "HTTP 500" in caplog.text


def decision_counts(metrics: RouterMetrics) -> dict[str, float]:
    return {
        json.loads(labels)["path"]: value
        for labels, value in counted(
            metrics, "hxp_router_semantic_decision_duration_seconds_count"
        ).items()
    }


async def test_concurrent_requests_with_one_new_prompt_share_one_embeddings_call(
    embeddings: tuple[str, list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    url, queued = embeddings  # one answer queued: a second call would get a 500
    table = semantic_table()
    metrics = RouterMetrics()
    prompt = chat(messages=[{"role": "user", "content": "how are you"}])
    async with aiohttp.ClientSession() as session:
        embedder = Embedder(session, url, "minilm", authorization=None, timeout_s=5)
        queued.append([[0.1, 3.0]])
        with caplog.at_level(logging.WARNING, logger="hxp_runtime.router.pipeline"):
            burst = await asyncio.gather(
                *(
                    route(table, table_stats(table), prompt, None, None, embedder, metrics)
                    for _ in range(8)
                )
            )
            again = await route(table, table_stats(table), prompt, None, None, embedder, metrics)
    assert "semantic routing skipped" not in caplog.text  # no second call was made
    assert {r.primary for r in [*burst, again]} == {"chatty"}
    assert all(r.decision.strategies[0] is Strategy.SEMANTIC for r in burst)
    assert table.cache.pending == {}
    assert decision_counts(metrics) == {"embedded": 8, "cached": 1}


async def test_a_client_going_away_does_not_cancel_the_call_others_wait_for(
    embeddings: tuple[str, list[Any]],
) -> None:
    url, queued = embeddings
    table = semantic_table()
    prompt = chat(messages=[{"role": "user", "content": "how are you"}])
    async with aiohttp.ClientSession() as session:
        embedder = Embedder(session, url, "minilm", authorization=None, timeout_s=5)
        queued.append([[0.1, 3.0]])

        def routing() -> asyncio.Task[Routed]:
            coro = route(table, table_stats(table), prompt, None, None, embedder, RouterMetrics())
            return asyncio.get_running_loop().create_task(coro)

        first = routing()
        await asyncio.sleep(0)  # the first request starts the embeddings call
        second = routing()
        await asyncio.sleep(0)
        first.cancel()
        routed = await second
    assert first.cancelled()
    assert routed.primary == "chatty" and routed.decision.strategies[0] is Strategy.SEMANTIC


async def test_a_failed_embedding_is_counted_as_such(embeddings: tuple[str, list[Any]]) -> None:
    url, _ = embeddings  # nothing queued: the server answers 500
    table = semantic_table()
    metrics = RouterMetrics()
    async with aiohttp.ClientSession() as session:
        embedder = Embedder(session, url, "minilm", authorization=None, timeout_s=5)
        prompt = chat(messages=[{"role": "user", "content": "how are you"}])
        await route(table, table_stats(table), prompt, None, None, embedder, metrics)
    assert decision_counts(metrics) == {"failed": 1}


# --------------------------------------------------------------------------- cached answer


@pytest.fixture(scope="module")
def redis_port() -> Iterator[tuple[int, str]]:
    try:
        with redis_server() as redis:
            yield redis.port, redis.password
    except ServiceMissing as missing:
        pytest.skip(str(missing))


async def routed_to_coder() -> Routed:
    table = RoutingTable(settings())
    return await route(
        table, table_stats(table), chat(model="coder"), None, None, None, RouterMetrics()
    )


async def test_only_deterministic_requests_look_in_the_cache() -> None:
    client = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    cache = ResponseCache(client, ttl_s=60)
    metrics = RouterMetrics()
    routed = await routed_to_coder()
    assert await cached_answer(cache, chat(model="coder"), routed, metrics) is NOT_CACHED
    greedy = chat(model="coder", temperature=0)
    assert await cached_answer(None, greedy, routed, metrics) is NOT_CACHED
    assert counted(metrics, "hxp_router_response_cache_lookups_total") == {}
    await client.aclose()


@pytest.mark.slow  # the client's retries back off for seconds before it gives up
async def test_an_unreachable_cache_is_a_miss() -> None:
    client = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    metrics = RouterMetrics()
    greedy = chat(model="coder", temperature=0)
    lookup = await cached_answer(
        ResponseCache(client, 60), greedy, await routed_to_coder(), metrics
    )
    assert lookup.key is not None and lookup.body is None
    assert counted(metrics, "hxp_router_response_cache_lookups_total") == {
        '{"result": "miss"}': 1.0
    }
    await client.aclose()


async def test_a_cached_answer_is_found_by_model_and_body(redis_port: tuple[int, str]) -> None:
    port, password = redis_port
    client = aioredis.Redis(host="127.0.0.1", port=port, password=password)
    cache = ResponseCache(client, ttl_s=60)
    metrics = RouterMetrics()
    routed = await routed_to_coder()
    greedy = chat(model="coder", temperature=0, messages=[{"role": "user", "content": "hi"}])
    miss = await cached_answer(cache, greedy, routed, metrics)
    assert miss.key is not None and miss.body is None
    await cache.put(miss.key, b'{"answer": 42}')
    hit = await cached_answer(cache, greedy, routed, metrics)
    assert (hit.key, hit.body) == (miss.key, b'{"answer": 42}')
    other = chat(model="coder", temperature=0, messages=[{"role": "user", "content": "ho"}])
    assert (await cached_answer(cache, other, routed, metrics)).body is None
    assert counted(metrics, "hxp_router_response_cache_lookups_total") == {
        '{"result": "hit"}': 1.0,
        '{"result": "miss"}': 2.0,
    }
    await client.aclose()
