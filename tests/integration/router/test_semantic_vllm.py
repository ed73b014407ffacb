"""The semantic decision against real vLLM serving all-MiniLM-L6-v2 on CPU.

How many embeddings calls a decision makes is read from the server itself: vLLM counts the
prompt tokens it processed (``vllm:prompt_tokens_total``), so a burst of requests with one new
prompt that shares one call adds that prompt's tokens once, not once per request.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from hxp_runtime.router.metrics import RouterMetrics
from hxp_runtime.router.pipeline import parse, route
from hxp_runtime.router.semantic import Embedder
from hxp_runtime.router.settings import RouterSettings
from hxp_runtime.router.strategies import BackendStats, Endpoint, RoutingTable, Stats
from tests.vllm_servers import EMBEDDINGS_MODEL, VllmServer, embeddings_spec

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
Servers = Callable[..., list[VllmServer]]
SLO = {"latency_ms": 1000, "throughput_rps": 10}
CATEGORIES = {
    "code": {"examples": ["Write a Python function that sorts a list of numbers."]},
    "chat": {"examples": ["Hello! How are you today?", "Good morning, nice to meet you."]},
}


def settings(embeddings_url: str) -> RouterSettings:
    def generating(name: str) -> dict[str, Any]:
        # Never called: the decision only names the model.
        url = "http://127.0.0.1:9"
        return {"name": name, "served_name": name, "url": url, "slo": SLO, "categories": [name]}

    embed = {"name": "minilm", "served_name": EMBEDDINGS_MODEL, "url": embeddings_url}
    return RouterSettings.model_validate(
        {
            "strategies": ["explicit", "semantic"],
            "categories": CATEGORIES,
            "semantic": {"embedding_model": "minilm"},
            "backends": [
                generating("code"),
                generating("chat"),
                {**embed, "slo": SLO, "task": "embed"},
            ],
        }
    )


def prompt_tokens_total(server: VllmServer) -> float:
    with urllib.request.urlopen(server.base_url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("vllm:prompt_tokens_total")
    )


def settled_prompt_tokens(server: VllmServer, at_least: float) -> float:
    """The counter once it reached ``at_least`` and stayed put for a second."""
    deadline = time.monotonic() + 30
    value = prompt_tokens_total(server)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        again = prompt_tokens_total(server)
        if again == value and value >= at_least:
            return value
        value = again
    return value


async def test_a_burst_with_one_new_prompt_makes_one_embeddings_call(
    vllm_servers: Servers,
) -> None:
    (server,) = vllm_servers(embeddings_spec())
    settings_ = settings(server.base_url)
    text = "Please write a Rust function that parses a CSV file into structs."
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": text}]})
    request = parse(Endpoint.CHAT, b"/v1/chat/completions", body.encode())
    async with aiohttp.ClientSession() as session:
        embedder = Embedder(
            session, server.base_url, EMBEDDINGS_MODEL, authorization=None, timeout_s=60
        )
        async with session.post(
            server.base_url + "/v1/embeddings", json={"model": EMBEDDINGS_MODEL, "input": [text]}
        ) as response:
            tokens = (await response.json())["usage"]["prompt_tokens"]
        table = RoutingTable(settings_, await embedder.prototypes(settings_.categories))
        stats = Stats({b.id: BackendStats() for b in table.backends})
        before = settled_prompt_tokens(server, 0)
        metrics = RouterMetrics()
        burst = await asyncio.gather(
            *(route(table, stats, request, None, None, embedder, metrics) for _ in range(8))
        )
    assert {r.primary for r in burst} == {"code"}
    assert settled_prompt_tokens(server, before + tokens) - before == tokens
