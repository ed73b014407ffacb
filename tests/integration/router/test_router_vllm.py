"""The router in front of real vLLM CPU servers, with real PostgreSQL and Redis on loopback.

Servers (tests/vllm_servers.py): ``mixtral`` (shared with the vLLM tests), ``phi3`` (requires
the upstream API key, so every proxied request and health check must carry it) and the MiniLM
embeddings server. The router runs as its own process with two SO_REUSEPORT workers.

Backends as the router sees them:
    coder  -> mixtral                 category code
    chat   -> phi3, chat-2 -> mixtral category chat (two replicas of one model)
    tapped -> phi3 through a recording relay (byte-exact streaming check)
    minilm -> the embeddings server
    ghost, phantom -> closed ports (fallback chains)
The failover test kills phi3, so it runs last.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.integration.router.conftest import (
    Dataplane,
    RouterProcess,
    Tap,
    call,
    dechunk,
    hxp_keys,
    metric_sum,
    new_key,
    worker_pids,
)
from tests.vllm_servers import ServerSpec, VllmServer, embeddings_spec, free_port

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
Servers = Callable[..., list[VllmServer]]

UPSTREAM_KEY = "upstream-secret-key"
ADMIN_KEY = "hxp-admin-static-key-0123456789"
SLO = {"latency_ms": 2000, "throughput_rps": 10}
HELLO = [{"role": "user", "content": "Hello there"}]


def backend(name: str, served: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "served_name": served, "url": url, "slo": SLO, **extra}


@pytest.fixture(scope="module")
def servers(vllm_servers: Servers) -> dict[str, VllmServer]:
    mixtral, phi3, minilm = vllm_servers(
        ServerSpec("mixtral"), ServerSpec("phi3", api_key=UPSTREAM_KEY), embeddings_spec()
    )
    return {"mixtral": mixtral, "phi3": phi3, "minilm": minilm}


@pytest.fixture(scope="module")
def tap(servers: dict[str, VllmServer]) -> Iterator[Tap]:
    relay = Tap(servers["phi3"].port)
    yield relay
    relay.close()


def router_settings(
    servers: dict[str, VllmServer], tap: Tap, dataplane: Dataplane, port: int
) -> dict[str, Any]:
    mixtral, phi3, minilm = (servers[n].base_url for n in ("mixtral", "phi3", "minilm"))
    pg, redis = dataplane.postgres, dataplane.redis
    return {
        "listen_host": "127.0.0.1",
        "port": port,
        "workers": 2,
        "timeout_s": 60,
        "drain_timeout_s": 20,
        "strategies": ["explicit", "hierarchical", "semantic", "adaptive", "least_outstanding"],
        "default_model": "chat",
        "categories": {
            "code": {
                "description": "programming",
                "examples": [
                    "Write a Python function that sorts a list of numbers.",
                    "Why does my JavaScript code throw a TypeError?",
                    "Implement binary search in C++.",
                ],
            },
            "chat": {
                "description": "conversation",
                "examples": [
                    "Hello! How are you today?",
                    "Good morning, nice to meet you.",
                    "Thanks a lot, have a lovely weekend!",
                ],
            },
        },
        "fallbacks": {"ghost": ["chat", "coder"], "phantom": ["coder", "chat"]},
        "rate_limit": {"requests_per_minute": 100_000, "tokens_per_minute": 10_000_000},
        "cache": {"enabled": True, "ttl_s": 60},
        "health_check": {"enabled": True, "interval_s": 0.5, "timeout_s": 5},
        "circuit_breaker": {"failure_threshold": 2, "open_s": 30, "half_open_requests": 1},
        "retries": {"attempts": 2, "backoff_ms": 20},
        "semantic": {"embedding_model": "minilm", "temperature": 0.1},
        "backends": [
            backend("coder", "mixtral", mixtral, categories=["code"]),
            backend("chat", "phi3", phi3, categories=["chat"]),
            backend("chat", "mixtral", mixtral, categories=["chat"]),
            backend("tapped", "phi3", f"http://127.0.0.1:{tap.port}"),
            backend("minilm", "all-minilm-l6-v2", minilm, task="embed"),
            backend("ghost", "ghost", f"http://127.0.0.1:{free_port()}"),
            backend("phantom", "phantom", f"http://127.0.0.1:{free_port()}"),
        ],
        "database": {"host": pg.host, "port": pg.port, "name": pg.database, "user": pg.user},
        "redis": {"host": redis.host, "port": redis.port},
        "auth_cache_ttl_s": 1,
        "usage_flush_interval_s": 0.5,
        "load_poll_interval_s": 0.5,
    }


@pytest.fixture(scope="module")
def router(
    servers: dict[str, VllmServer],
    tap: Tap,
    dataplane: Dataplane,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RouterProcess]:
    process = RouterProcess(
        router_settings(servers, tap, dataplane, free_port()),
        {
            "upstream_api_key": UPSTREAM_KEY,
            "database_password": dataplane.postgres.password,
            "redis_password": dataplane.redis.password,
            "api_keys": [{"name": "admin", "secret": ADMIN_KEY}],
        },
        tmp_path_factory.mktemp("router"),
    )
    process.start()
    process.wait_ready("semantic")
    yield process
    assert process.stop() == 0, process.log_tail()


def client(router: RouterProcess, key: str = ADMIN_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key=key, max_retries=0, timeout=60)


# --------------------------------------------------------------------------- API


def test_openai_client_works_unchanged(router: RouterProcess) -> None:
    api = client(router)
    chat = api.chat.completions.create(model="chat", messages=HELLO, max_tokens=8)  # type: ignore[arg-type]
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage is not None and chat.usage.completion_tokens == 8
    text = api.completions.create(model="coder", prompt="The router", max_tokens=5)
    assert text.model == "mixtral" and text.usage is not None
    vectors = api.embeddings.create(model="minilm", input=["one", "two"])
    assert [len(v.embedding) for v in vectors.data] == [384, 384]
    chunks = list(
        api.chat.completions.create(model="coder", messages=HELLO, max_tokens=6, stream=True)  # type: ignore[arg-type]
    )
    assert chunks and chunks[-1].choices[0].finish_reason == "length"
    models = {m.id for m in api.models.list()}
    assert {"coder", "chat", "mixtral", "phi3", "minilm", "auto"} <= models
    # Unhealthy backends are not listed once a worker's health checks have seen them fail. Each
    # worker checks on its own (a worker may still be starting when the first request comes),
    # so ask on new connections, which land on either worker, until several answers in a row
    # leave the dead backends out, within a few health intervals.
    clean, deadline = 0, time.monotonic() + 30  # seconds on a loaded machine
    while clean < 6:
        assert time.monotonic() < deadline, f"dead backends still listed: {models}"
        models = {m.id for m in client(router).models.list()}
        clean = clean + 1 if not {"ghost", "phantom"} & models else 0
        time.sleep(0.1)


def test_streaming_passthrough_is_byte_exact(router: RouterProcess, tap: Tap) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
    body = {"model": "tapped", "messages": HELLO, "max_tokens": 60, "stream": True}
    before = len(tap.recorded)
    # The tap passes on the stream's head and first chunk and holds the rest back: the router
    # must pass that first piece on before the backend has sent the rest, not gather it first.
    tap.hold_next_stream()
    connection = http.client.HTTPConnection("127.0.0.1", router.settings["port"], timeout=60)
    try:
        connection.request("POST", "/v1/chat/completions", json.dumps(body), headers)
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type", "").startswith("text/event-stream")
        try:
            first = response.read1(65536)
        except TimeoutError:
            pytest.fail("no piece of the stream came while the backend held the rest back")
        assert tap.holding.wait(5)
        tap.release()
        received = first + response.read()
    finally:
        tap.release()
        connection.close()
    assert first.startswith(b"data: ") and not first.endswith(b"data: [DONE]\n\n")
    assert received.endswith(b"data: [DONE]\n\n")
    streams = [bytes(r) for r in tap.recorded[before:] if b"text/event-stream" in r]
    streams += [bytes(r) for r in tap.recorded[:before] if b"text/event-stream" in r]
    sent_by_vllm = [dechunk(r.split(b"\r\n\r\n", 1)[1]) for r in streams]
    assert received in sent_by_vllm


def test_errors_are_openai_shaped(router: RouterProcess) -> None:
    api = client(router)
    with pytest.raises(openai.NotFoundError) as unknown:
        api.chat.completions.create(model="gpt-4", messages=HELLO)  # type: ignore[arg-type]
    assert unknown.value.code == "model_not_found"
    status, _, body = call("POST", router.url + "/v1/chat/completions", None, ADMIN_KEY)
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        api.embeddings.create(model="chat", input="x")
    # vLLM's own refusal reaches the client in the router's shape, vLLM's message kept.
    with pytest.raises(openai.BadRequestError) as too_long:
        api.chat.completions.create(model="chat", messages=HELLO, max_tokens=10**7)  # type: ignore[arg-type]
    refused = too_long.value
    assert isinstance(refused.body, dict)
    assert set(refused.body) == {"message", "type", "param", "code"}
    assert (refused.type, refused.code) == ("invalid_request_error", "upstream_error")
    assert "max_tokens" in refused.message or "context" in refused.message
    status, _, body = call("GET", router.url + "/openapi.json")
    assert status == 200 and "/v1/chat/completions" in json.loads(body)["paths"]


# --------------------------------------------------------------------------- edge


def test_auth_failures_are_rejected(router: RouterProcess, dataplane: Dataplane) -> None:
    for key in (None, "hxp-not-a-key-at-all-000000", ADMIN_KEY[:-1]):
        status, _, body = call("POST", router.url + "/v1/chat/completions", {"model": "chat"}, key)
        assert status == 401, body
        assert json.loads(body)["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(router, "wrong").models.list()

    key = new_key(dataplane, "team-a")
    assert client(router, key).chat.completions.create(model="chat", messages=HELLO, max_tokens=2)  # type: ignore[arg-type]
    listed = hxp_keys(dataplane, "list", "--json")
    rows = {row["name"]: row for row in json.loads(listed.stdout)["result"]["keys"]}
    assert rows["team-a"]["prefix"] == key[:8] and rows["admin"]["source"] == "config"
    assert key not in listed.stdout
    assert hxp_keys(dataplane, "revoke", "team-a").returncode == 0
    time.sleep(1.5)  # auth_cache_ttl_s: 1
    with pytest.raises(openai.AuthenticationError):
        client(router, key).chat.completions.create(model="chat", messages=HELLO, max_tokens=2)  # type: ignore[arg-type]


def test_rate_limit_answers_429_across_workers(router: RouterProcess, dataplane: Dataplane) -> None:
    key = new_key(dataplane, "limited", "--requests-per-minute", "4")
    statuses = []
    for _ in range(6):  # a new connection each time: SO_REUSEPORT spreads them over workers
        status, headers, body = call(
            "POST",
            router.url + "/v1/completions",
            {"model": "coder", "prompt": "a", "max_tokens": 1},
            key,
        )
        statuses.append(status)
    assert statuses == [200] * 4 + [429] * 2
    assert int(headers["Retry-After"]) >= 1
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError):
        client(router, key).completions.create(model="coder", prompt="a", max_tokens=1)
    assert dataplane.redis.cli("EXISTS", "hxp:ratelimit:r:limited") == "1"


def test_usage_is_written_to_postgresql(router: RouterProcess, dataplane: Dataplane) -> None:
    key = new_key(dataplane, "metered")
    client(router, key).completions.create(model="coder", prompt="count me", max_tokens=7)
    deadline = time.monotonic() + 30  # seconds on a loaded machine
    rows: list[str] = []
    while time.monotonic() < deadline and not rows:
        time.sleep(0.5)
        done = subprocess.run(
            ["psql", dataplane.postgres.dsn, "-Atc",
             "SELECT model, sum(requests), sum(completion_tokens) FROM hxp_usage"
             " WHERE key_name = 'metered' GROUP BY model"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows = done.stdout.split()
    assert rows == ["coder|1|7"]


def test_temperature_zero_answers_come_from_the_cache(router: RouterProcess) -> None:
    body = {"model": "coder", "prompt": "cache me", "max_tokens": 4, "temperature": 0}
    first = call("POST", router.url + "/v1/completions", body, ADMIN_KEY)
    assert first[0] == 200 and "x-hxp-cache" not in first[1]
    # The router stores the answer in Redis after it has sent it (a task of its own, off the
    # client's path): on a loaded machine the next request can come first and miss (vLLM
    # answers it again, and that answer is stored too). Asked again until it is a hit, the hit
    # is one of the answers vLLM gave, byte for byte.
    answers = {first[2]}
    deadline = time.monotonic() + 30  # seconds on a loaded machine
    while True:
        again = call("POST", router.url + "/v1/completions", body, ADMIN_KEY)
        assert again[0] == 200
        if again[1].get("x-hxp-cache") == "hit" or time.monotonic() > deadline:
            break
        answers.add(again[2])
        time.sleep(0.1)
    assert again[1].get("x-hxp-cache") == "hit", again[1]
    assert again[2] in answers


# --------------------------------------------------------------------------- routing


def test_auto_routes_by_prompt_meaning(router: RouterProcess) -> None:
    api = client(router)
    code = api.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "Write a Python function to reverse a string."}],
        max_tokens=2,
    )
    chat = api.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "Hi! How are you doing this morning?"}],
        max_tokens=2,
    )
    assert code.headers["x-hxp-backend"] == "coder"
    assert chat.headers["x-hxp-backend"] in {"chat", "chat-2"}


def test_category_hint_routes_hierarchically(router: RouterProcess) -> None:
    status, headers, _ = call(
        "POST",
        router.url + "/v1/completions",
        {"model": "auto", "prompt": "x", "max_tokens": 1},
        ADMIN_KEY,
        {"X-HXP-Category": "code"},
    )
    assert status == 200 and headers["x-hxp-backend"] == "coder"


def test_fallbacks_happen_in_the_configured_order(router: RouterProcess) -> None:
    body: dict[str, Any] = {"prompt": "fallback", "max_tokens": 1}
    ghost = call("POST", router.url + "/v1/completions", {**body, "model": "ghost"}, ADMIN_KEY)
    phantom = call("POST", router.url + "/v1/completions", {**body, "model": "phantom"}, ADMIN_KEY)
    # ghost: [chat, coder]; phantom: [coder, chat]. Both primaries listen nowhere.
    assert ghost[0] == phantom[0] == 200
    assert ghost[1]["x-hxp-backend"] in {"chat", "chat-2"}
    assert phantom[1]["x-hxp-backend"] == "coder"
    metrics = call("GET", router.url + "/metrics")[2].decode()
    assert 'hxp_router_fallbacks_total{backend="coder",model="coder"}' in metrics
    assert 'hxp_router_upstream_healthy{backend="ghost"} 0.0' in metrics


def test_metrics_are_aggregated_over_workers(router: RouterProcess) -> None:
    def scrape() -> str:
        return call("GET", router.url + "/metrics")[2].decode()

    counted = {
        "coder 200": ("hxp_router_requests_total", {"model": "coder", "status": "200"}),
        "401": ("hxp_router_requests_total", {"status": "401"}),
        "semantic": ("hxp_router_routing_decisions_total", {"strategy": "semantic"}),
        "embedded": ("hxp_router_semantic_decision_duration_seconds_count", {"path": "embedded"}),
    }
    before = scrape()
    # Each request on a new connection: SO_REUSEPORT spreads them over both workers, and one
    # scrape must count them all, whichever worker answers it.
    for _ in range(6):
        body = {"model": "coder", "prompt": "count", "max_tokens": 1}
        assert call("POST", router.url + "/v1/completions", body, ADMIN_KEY)[0] == 200
    for _ in range(3):
        refused = call("POST", router.url + "/v1/chat/completions", {"model": "chat"}, "no-key")
        assert refused[0] == 401
    stream = {"model": "coder", "messages": HELLO, "max_tokens": 1, "stream": True}
    streamed = call("POST", router.url + "/v1/chat/completions", stream, ADMIN_KEY)
    assert streamed[0] == 200 and streamed[2].endswith(b"data: [DONE]\n\n")
    new_prompt = f"Write a Rust function that parses {time.time_ns()} as a date."
    auto = {"model": "auto", "prompt": new_prompt, "max_tokens": 1}
    status, headers, _ = call("POST", router.url + "/v1/completions", auto, ADMIN_KEY)
    assert status == 200
    after = scrape()
    grown = {what: metric_sum(after, name, **labels) - metric_sum(before, name, **labels)
             for what, (name, labels) in counted.items()}  # fmt: skip
    coder = 7 + (headers["x-hxp-backend"] == "coder")  # the new prompt asks for code
    assert grown == {"coder 200": coder, "401": 3, "semantic": 1, "embedded": 1}
    assert "hxp_router_request_duration_seconds_bucket" in after
    assert "hxp_router_time_to_first_token_seconds_bucket" in after


# --------------------------------------------------------------------------- lifecycle


def test_sighup_reloads_without_dropping_connections(router: RouterProcess) -> None:
    port = router.settings["port"]
    keep_alive = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
    keep_alive.request("GET", "/v1/models", headers=headers)
    assert keep_alive.getresponse().read()

    streaming = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = {"model": "coder", "messages": HELLO, "max_tokens": 150, "stream": True}
    streaming.request("POST", "/v1/chat/completions", json.dumps(body), headers)
    response = streaming.getresponse()
    first = response.read1(65536)

    for spec in router.settings["backends"]:
        if spec["name"] == "chat":
            spec["aliases"] = ["chatty"]
    router.write()
    router.signal(signal.SIGHUP)
    rest = response.read()
    assert (first + rest).endswith(b"data: [DONE]\n\n")  # the stream in flight finished

    deadline = time.monotonic() + 30  # seconds on a loaded machine
    while time.monotonic() < deadline:  # both workers, over new connections
        statuses = {
            call("POST", router.url + "/v1/completions",
                 {"model": "chatty", "prompt": "a", "max_tokens": 1}, ADMIN_KEY)[0]
            for _ in range(6)
        }  # fmt: skip
        if statuses == {200}:
            break
        time.sleep(0.2)
    assert statuses == {200}
    keep_alive.request("GET", "/v1/models", headers=headers)  # the same connection still works
    models = json.loads(keep_alive.getresponse().read())
    assert "chatty" in {m["id"] for m in models["data"]}
    keep_alive.close()
    streaming.close()


def test_a_dead_worker_is_replaced(router: RouterProcess) -> None:
    workers = worker_pids(router)
    assert len(workers) == 2
    os.kill(min(workers), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = worker_pids(router)
        if len(now) == 2 and min(workers) not in now:
            break
        time.sleep(0.2)
    assert len(now) == 2 and min(workers) not in now
    router.wait_ready()
    body = {"model": "coder", "prompt": "again", "max_tokens": 1}
    assert {call("POST", router.url + "/v1/completions", body, ADMIN_KEY)[0] for _ in range(4)} == {
        200
    }


def test_failover_when_a_backend_is_killed_under_load(
    router: RouterProcess, servers: dict[str, VllmServer]
) -> None:
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            status, headers, _ = call(
                "POST", router.url + "/v1/completions",
                {"model": "chat", "prompt": "under load", "max_tokens": 12}, ADMIN_KEY,
            )  # fmt: skip
            results.append((status, headers.get("x-hxp-backend", "")))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    # Both replicas must be taking load before one dies; on a busy machine that takes longer.
    deadline = time.monotonic() + 30
    while {backend for _, backend in results} != {"chat", "chat-2"} and time.monotonic() < deadline:
        time.sleep(0.2)
    served_before = {backend for _, backend in results}
    before = call("GET", router.url + "/ready")[2].decode()
    servers["phi3"].stop()  # the "chat" replica on phi3 dies with requests in flight
    killed_at = len(results)
    time.sleep(4)
    stop.set()
    for worker in workers:
        worker.join(60)
    assert served_before == {"chat", "chat-2"}, before  # both replicas took load before
    assert results and all(status == 200 for status, _ in results), results
    assert {backend for _, backend in results[killed_at + 8 :]} == {"chat-2"}


CHOICES = 4
HELD_S = 1.5


def test_sigterm_drains_requests_in_flight(servers: dict[str, VllmServer], tmp_path: Path) -> None:
    # The backend is reached through a tap that holds its stream back after its first chunk:
    # the stream is in flight for as long as the test says, however fast or slow the machine.
    tap = Tap(servers["mixtral"].port)
    drained = RouterProcess(
        {
            "port": free_port(),
            "workers": 1,
            "drain_timeout_s": 90,
            "require_api_key": False,
            "health_check": {"enabled": False},
            "backends": [backend("coder", "mixtral", f"http://127.0.0.1:{tap.port}")],
        },
        {},
        tmp_path,
    )
    try:
        drained.start()
        connection = http.client.HTTPConnection("127.0.0.1", drained.settings["port"], timeout=120)
        body = {"model": "coder", "messages": HELLO, "max_tokens": 16, "n": CHOICES, "stream": True}
        body["ignore_eos"] = True
        tap.hold_next_stream()
        connection.request(
            "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        first = response.read1(65536)
        assert tap.holding.wait(10), "the backend's stream did not start"
        drained.signal(signal.SIGTERM)
        # It stops accepting new connections at once: within a moment on a quiet machine,
        # within seconds on a loaded one.
        deadline = time.monotonic() + 30
        while True:
            try:
                call("GET", drained.url + "/health", timeout=2)
            except OSError:
                break
            assert time.monotonic() < deadline, "still accepting connections 30 s after SIGTERM"
            time.sleep(0.2)
        time.sleep(HELD_S)
        assert drained.process is not None
        alive = drained.process.poll() is None
        tap.release()
        rest = response.read()
        connection.close()
    except BaseException:
        drained.stop()
        raise
    finally:
        tap.close()
    assert alive, (
        f"stopped with a stream in flight ({(first + rest)[-60:]!r}):\n{drained.log_tail()}"
    )
    assert (first + rest).endswith(b"data: [DONE]\n\n")
    assert (first + rest).count(b'"finish_reason":"length"') == CHOICES  # every choice finished
    assert drained.stop(signalled=True) == 0, drained.log_tail()
    drain = re.search(r"stopped after a ([0-9.]+) s drain", drained.log_tail())
    assert drain is not None and float(drain.group(1)) >= HELD_S - 0.1  # it waited for the stream


def test_deadline_504_upstream_502_and_open_breaker_503(
    servers: dict[str, VllmServer], tmp_path: Path
) -> None:
    strict = RouterProcess(
        {
            "port": free_port(),
            "workers": 1,
            "timeout_s": 0.3,
            "require_api_key": False,
            "health_check": {"enabled": False},
            "circuit_breaker": {"failure_threshold": 3, "open_s": 60},
            "retries": {"attempts": 1, "backoff_ms": 1},
            "backends": [
                backend("coder", "mixtral", servers["mixtral"].base_url),
                backend("ghost", "ghost", f"http://127.0.0.1:{free_port()}"),
            ],
        },
        {},
        tmp_path,
    )
    strict.start()
    try:
        # 128 choices of 240 tokens, 16 at a time: seconds of work, far beyond the 0.3 s deadline
        # (64 choices once came back as a 200 in a CI run on a heavily loaded machine).
        slow = {"model": "coder", "prompt": "long", "max_tokens": 240, "n": 128, "ignore_eos": True}
        status, _, body = call("POST", strict.url + "/v1/completions", slow)
        assert status == 504, body
        ghost = {"model": "ghost", "prompt": "x", "max_tokens": 1}
        statuses = [call("POST", strict.url + "/v1/completions", ghost)[0] for _ in range(3)]
        # Two attempts per request (1 + 1 retry): the third failure opens the breaker, and
        # an ejected backend with no fallback is not tried at all.
        assert statuses == [502, 502, 503]
        # The router's own refusals count against the model routing chose (its SLO alerts).
        text = call("GET", strict.url + "/metrics")[2].decode()
        refusals = {
            (line.split('model="')[1].split('"')[0], line.split('status="')[1].split('"')[0])
            for line in text.splitlines()
            if line.startswith("hxp_router_requests_total{")
        }
        assert {("coder", "504"), ("ghost", "502"), ("ghost", "503")} <= refusals
    finally:
        strict.stop()
