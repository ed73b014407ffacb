"""The semantic routing decision's latency: prompt -> chosen model, against real vLLM on CPU.

Not a test: it prints numbers for docs/benchmarks.md. The decision runs in this process through
the router's own code (``pipeline.choose_models`` then ``RoutingTable.decide``, the router's
``Embedder`` on one aiohttp session as the gateway holds it), over the lab's categories
(``inventory/lab/hxp.yml``: eight, one example each), one model per category. The embeddings
backend is a real ``vllm serve`` of all-MiniLM-L6-v2 on loopback (tests/vllm_servers.py), or
the one at ``--embeddings-url``::

    nice -n 10 .venv/bin/python benchmarks/semantic_decision.py [--rounds 50] [--words 62]

Four series, interleaved so that they share whatever else the machine is doing:

* ``embeddings call``: one ``POST /v1/embeddings`` of a new prompt, alone;
* ``decision, cold``: the decision for a prompt never seen (one embeddings call inside);
* ``decision, cached``: the decision for a prompt seen before (the decision cache);
* ``decision, no call``: the cold decision's own work with the embedding already at hand
  (everything the router adds to the embeddings call: cosine, softmax, candidates).

Then a burst of ``--burst`` concurrent requests with one new prompt, and how many embeddings
calls it made (one: the requests share it). Prompts are distinct sentences of common words;
their length in the model's tokens is read from vLLM's ``usage.prompt_tokens`` and printed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hxp_runtime.router.pipeline import choose_models  # noqa: E402
from hxp_runtime.router.semantic import Embedder  # noqa: E402
from hxp_runtime.router.settings import RouterSettings  # noqa: E402
from hxp_runtime.router.strategies import (  # noqa: E402
    BackendStats,
    Endpoint,
    RouteRequest,
    RoutingTable,
    Stats,
)
from tests.vllm_servers import (  # noqa: E402
    EMBEDDINGS_MODEL,
    MODELS_DIR,
    VLLM_PYTHON,
    embeddings_spec,
    running_servers,
)

LAB_CONFIG = REPO / "inventory/lab/hxp.yml"
# Common English words: one WordPiece token each for MiniLM.
WORDS = (
    "time", "person", "year", "way", "day", "thing", "man", "world", "life", "hand", "part",
    "child", "eye", "woman", "place", "work", "week", "case", "point", "government", "company",
    "number", "group", "problem", "fact", "water", "money", "story", "month", "lot", "right",
    "study", "book", "word", "business", "issue", "side", "kind", "head", "house", "service",
    "friend", "father", "power", "hour", "game", "line", "end", "member", "law", "car", "city",
    "community", "name", "president", "team", "minute", "idea", "kid", "body", "information",
    "back", "parent", "face", "others", "level", "office", "door", "health", "art", "war",
    "history", "party", "result", "change", "morning", "reason", "research", "girl", "guy",
    "moment", "air", "teacher", "force", "education",
)  # fmt: skip


def lab_settings(embeddings_url: str) -> RouterSettings:
    """The lab's categories and semantic settings; one model per category, plus MiniLM."""
    router = yaml.safe_load(LAB_CONFIG.read_text())["router"]
    slo = {"latency_ms": 1000, "throughput_rps": 10}
    backends: list[dict[str, Any]] = [
        # Never called: the decision only names them.
        {"name": name, "served_name": name, "url": "http://127.0.0.1:9", "slo": slo,
         "categories": [name]}
        for name in router["categories"]
    ]  # fmt: skip
    backends.append(
        {
            "name": "minilm",
            "served_name": EMBEDDINGS_MODEL,
            "url": embeddings_url,
            "slo": slo,
            "task": "embed",
        }
    )
    return RouterSettings.model_validate(
        {
            "strategies": router["strategies"],
            "categories": router["categories"],
            "semantic": router["semantic"],
            "backends": backends,
        }
    )


def prompts(rng: random.Random, words: int) -> Iterator[str]:
    while True:
        yield " ".join(rng.choice(WORDS) for _ in range(words)) + "?"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await call()
    return (time.perf_counter() - started) * 1000


async def measure(url: str, rounds: int, words: int, burst: int) -> None:
    settings = lab_settings(url)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=4)
    ) as session:
        embedder = Embedder(session, url, EMBEDDINGS_MODEL, authorization=None, timeout_s=30)
        table = RoutingTable(settings, await embedder.prototypes(settings.categories))
        stats = Stats({b.id: BackendStats() for b in table.backends}, random.Random(1))  # noqa: S311 - load spreading, not secrets
        rng = random.Random(7)  # noqa: S311 - reproducible prompts, not secrets
        new = prompts(rng, words)

        async with session.post(
            url + "/v1/embeddings", json={"model": EMBEDDINGS_MODEL, "input": [next(new)]}
        ) as response:
            tokens = (await response.json())["usage"]["prompt_tokens"]
        print(f"prompt length: {words} words = {tokens} tokens (vLLM usage.prompt_tokens)")

        async def decide(prompt: str) -> str | None:
            request = RouteRequest(Endpoint.CHAT, None, prompt)
            choice = await choose_models(table, request, embedder)
            return table.decide(request, stats, choice).model

        async def decide_embedded(prompt: str, embedding: tuple[float, ...]) -> str | None:
            request = RouteRequest(Endpoint.CHAT, None, prompt, embedding=embedding)
            return table.decide(request, stats, table.choose_models(request)).model

        seen = [next(new) for _ in range(8)]
        for prompt in seen:
            await decide(prompt)
        series: dict[str, list[float]] = {
            "embeddings call": [],
            "decision, cold": [],
            "decision, cached": [],
            "decision, no call": [],
        }
        for _ in range(3):  # warm-up: connection, allocator, vLLM's first batches
            await embedder.embed([next(new)])
        for _ in range(rounds):
            series["embeddings call"].append(await timed(lambda: embedder.embed([next(new)])))
            series["decision, cold"].append(await timed(lambda: decide(next(new))))
            series["decision, cached"].append(await timed(lambda: decide(rng.choice(seen))))
            prompt = next(new)
            (embedding,) = await embedder.embed([prompt])
            series["decision, no call"].append(
                await timed(partial(decide_embedded, prompt, embedding))
            )

        print(f"\n{'series':<20} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for name, values in series.items():
            print(
                f"{name:<20} {len(values):>4} {statistics.median(values):>8.2f} "
                f"{percentile(values, 0.99):>8.2f} {max(values):>8.2f}"
            )

        calls = 0
        embed = embedder.embed

        async def counted(texts: Any) -> list[tuple[float, ...]]:
            nonlocal calls
            calls += 1
            return await embed(texts)

        embedder.embed = counted  # type: ignore[method-assign]
        prompt = next(new)
        started = time.perf_counter()
        chosen = await asyncio.gather(*(decide(prompt) for _ in range(burst)))
        elapsed = (time.perf_counter() - started) * 1000
        print(
            f"\nburst: {burst} concurrent decisions for one new prompt: {calls} embeddings "
            f"call(s), {elapsed:.1f} ms for all, models chosen: {sorted(set(map(str, chosen)))}"
        )


@contextmanager
def embeddings_server(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url.rstrip("/")
        return
    spec = replace(embeddings_spec(), max_num_seqs=4)  # the lab's engine setting for minilm
    with running_servers([spec], models_dir=MODELS_DIR, python=VLLM_PYTHON) as servers:
        yield servers[0].base_url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument(
        "--words", type=int, default=61, help="61 common words and a question mark: 64 tokens"
    )
    parser.add_argument("--burst", type=int, default=16)
    parser.add_argument("--embeddings-url", help="an embeddings server already running")
    args = parser.parse_args()
    with embeddings_server(args.embeddings_url) as url:
        print(f"embeddings server: {url} ({EMBEDDINGS_MODEL}, vLLM on CPU)")
        asyncio.run(measure(url, args.rounds, args.words, args.burst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
