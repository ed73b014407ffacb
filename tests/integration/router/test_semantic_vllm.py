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
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hxp_runtime.router.metrics import RouterMetrics
from hxp_runtime.router.pipeline import parse, route
from hxp_runtime.router.semantic import Embedder
from hxp_runtime.router.settings import RouterSettings
from hxp_runtime.router.static_embedding import (
    StaticRouting,
    load_or_build,
    read_vocabulary,
    token_weight,
)
from hxp_runtime.router.strategies import BackendStats, Endpoint, RoutingTable, Stats
from tests.integration.router.conftest import LAB_CATEGORIES, PROMPTS
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


def lab_settings(embeddings_url: str, static: dict[str, Any] | None) -> RouterSettings:
    """The lab's eight categories, one generating model each, as inventory/lab/hxp.yml has."""
    backends = [
        {
            "name": name,
            "served_name": name,
            "url": "http://127.0.0.1:9",  # never called: the decision only names the model
            "slo": SLO,
            "categories": [name],
        }
        for name in LAB_CATEGORIES
    ]
    embed = {"name": "minilm", "served_name": EMBEDDINGS_MODEL, "url": embeddings_url}
    return RouterSettings.model_validate(
        {
            "strategies": ["explicit", "semantic"],
            "categories": {n: {"examples": [e]} for n, e in LAB_CATEGORIES.items()},
            "semantic": {"embedding_model": "minilm", "static": static},
            "backends": [*backends, {**embed, "slo": SLO, "task": "embed"}],
        }
    )


async def test_the_static_table_built_from_vllm_decides_most_prompts_as_the_model_does(
    vllm_servers: Servers, static_vocabulary: Path, static_cache_dir: Path
) -> None:
    """Built from the real server, it answers most prompts alone and agrees with the model.

    64 labelled prompts over the lab's eight categories: the model decides all of them alone,
    then the table with the default margin decides what it is sure of and the model the rest.
    The table's rows are the server's own embeddings of each token, weighted.
    """
    (server,) = vllm_servers(embeddings_spec())
    vocab = static_vocabulary  # the pieces of these prompts (conftest)
    labelled = json.loads(PROMPTS.read_text())
    prompts = [(category, text) for category, texts in labelled.items() for text in texts]
    model_only = lab_settings(server.base_url, None)
    cache = {"vocabulary": str(vocab), "cache_dir": str(static_cache_dir)}
    cascade = lab_settings(server.base_url, cache)
    assert cascade.semantic.static is not None
    async with aiohttp.ClientSession() as session:
        embedder = Embedder(
            session, server.base_url, EMBEDDINGS_MODEL, authorization=None, timeout_s=120
        )
        started = time.monotonic()
        table = await load_or_build(static_cache_dir, vocab, EMBEDDINGS_MODEL, embedder.embed_ids)
        built_s = time.monotonic() - started
        vocabulary, _ = read_vocabulary(vocab)
        poem = vocabulary["poem"]
        (direct,) = await embedder.embed_ids([[vocabulary["[CLS]"], poem, vocabulary["[SEP]"]]])
        row = table.rows[poem * table.dims : (poem + 1) * table.dims]
        assert list(row) == pytest.approx([x * token_weight(poem) for x in direct], abs=1e-5)

        prototypes = await embedder.prototypes(model_only.categories)
        static = StaticRouting(
            table, table.prototypes(cascade.categories), cascade.semantic.static.confident_margin
        )
        by_model = RoutingTable(model_only, prototypes)
        by_cascade = RoutingTable(cascade, prototypes, static=static)
        metrics = RouterMetrics()
        embed_calls = 0
        real_embed = embedder.embed

        async def counted(texts: list[str]) -> list[tuple[float, ...]]:
            nonlocal embed_calls
            embed_calls += 1
            return await real_embed(texts)

        embedder.embed = counted  # type: ignore[method-assign]
        agree = static_count = right_model = right_cascade = 0
        for category, text in prompts:
            body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": text}]})
            request = parse(Endpoint.CHAT, b"/v1/chat/completions", body.encode())
            stats = Stats({b.id: BackendStats() for b in by_model.backends})
            before = embed_calls
            cascaded = await route(by_cascade, stats, request, None, None, embedder, metrics)
            asked_model = embed_calls > before
            modelled = await route(by_model, stats, request, None, None, embedder, metrics)
            static_count += not asked_model
            agree += cascaded.primary == modelled.primary
            right_model += modelled.primary == category
            right_cascade += cascaded.primary == category
    print(
        f"static table ready in {built_s:.1f} s; of {len(prompts)} prompts the table decided "
        f"{static_count}, agreed with the model on {agree}; right: model {right_model}, "
        f"table then model {right_cascade}"
    )
    # Measured: 39 of 64 decided by the table, 61 of 64 agreeing (docs/benchmarks.md).
    assert static_count >= len(prompts) * 0.4
    assert agree >= len(prompts) * 0.9
    assert right_cascade >= right_model - 3
