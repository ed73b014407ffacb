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

Then the static table (``router.semantic.static``, hxp_runtime.router.static_embedding), built
from the same server once into ``--static-cache``: new labelled prompts of 64 tokens or more
(sentences of one category from tests/data/semantic_prompts.json, joined), each decided by the
table when it is sure and by the model otherwise; how many each decided, the time of each kind
and of all, and how often the choice matched the model's alone and the prompt's category.

Then the same through the real router (``python -m hxp_runtime.router``, one worker, no API
keys) in front of the same embeddings server, with benchmarks/fast_backend.py, a test double
of vLLM, as every generating model, so that no model's own answer is counted: an explicit-model
request, an embeddings request, an ``auto`` request with a new prompt, one with a new labelled
prompt (as above) and one with a repeated prompt (one-token answers), the router running with
the static table in ``--static-cache``, and the router's decision histogram
(``hxp_router_semantic_decision_duration_seconds``) as it exported it.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
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

from hxp_runtime.config.schema import StaticSemantic  # noqa: E402
from hxp_runtime.router.pipeline import choose_models  # noqa: E402
from hxp_runtime.router.semantic import Embedder  # noqa: E402
from hxp_runtime.router.settings import RouterSettings  # noqa: E402
from hxp_runtime.router.static_embedding import (  # noqa: E402
    StaticRouting,
    WordPiece,
    load_or_build,
    read_vocabulary,
)
from hxp_runtime.router.strategies import (  # noqa: E402
    BackendStats,
    Endpoint,
    RouteRequest,
    RoutingTable,
    Stats,
)
from tests.dataplane import free_port  # noqa: E402
from tests.vllm_servers import (  # noqa: E402
    EMBEDDINGS_MODEL,
    MODELS_DIR,
    VLLM_PYTHON,
    embeddings_spec,
    running_servers,
)

LAB_CONFIG = REPO / "inventory/lab/hxp.yml"
PROMPTS = REPO / "tests/data/semantic_prompts.json"
VOCABULARY = MODELS_DIR / EMBEDDINGS_MODEL / "vocab.txt"
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


def lab_router(embeddings_url: str, generate_url: str, served_name: str) -> dict[str, Any]:
    """The lab's categories and semantic settings; one model per category, plus MiniLM."""
    router = yaml.safe_load(LAB_CONFIG.read_text())["router"]
    slo = {"latency_ms": 1000, "throughput_rps": 10}
    backends: list[dict[str, Any]] = [
        {"name": name, "served_name": served_name, "url": generate_url, "slo": slo,
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
    return {
        "strategies": router["strategies"],
        "categories": router["categories"],
        "semantic": router["semantic"],
        "backends": backends,
    }


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


async def measure(url: str, rounds: int, words: int, burst: int, static_cache: Path) -> None:
    # The generating models are never called here: the decision only names them.
    settings = RouterSettings.model_validate(lab_router(url, "http://127.0.0.1:9", "none"))
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

        print()
        print_series(series)

        calls = count_calls(embedder)
        prompt = next(new)
        started = time.perf_counter()
        chosen = await asyncio.gather(*(decide(prompt) for _ in range(burst)))
        elapsed = (time.perf_counter() - started) * 1000
        print(
            f"\nburst: {burst} concurrent decisions for one new prompt: {calls()} embeddings "
            f"call(s), {elapsed:.1f} ms for all, models chosen: {sorted(set(map(str, chosen)))}"
        )
        await measure_static(settings, table, embedder, stats, rounds, static_cache)


def count_calls(embedder: Embedder) -> Callable[[], int]:
    """Count the embedder's embeddings calls from now on; the count, when called."""
    calls = 0
    embed = embedder.embed

    async def counted(texts: Any) -> list[tuple[float, ...]]:
        nonlocal calls
        calls += 1
        return await embed(texts)

    embedder.embed = counted  # type: ignore[method-assign]
    return lambda: calls


def labelled_prompts(
    rng: random.Random, tokens_of: Callable[[str], int]
) -> Iterator[tuple[str, str]]:
    """(category, prompt): sentences of one category (tests/data) joined to 64 tokens or more."""
    labelled = json.loads(PROMPTS.read_text())
    while True:
        category = rng.choice(sorted(labelled))
        sentences = rng.sample(labelled[category], len(labelled[category]))
        text = ""
        while tokens_of(text) < 64:
            text = (text + " " + sentences.pop()).strip() if sentences else text + " " + text
        yield category, text


async def measure_static(
    settings: RouterSettings,
    table: RoutingTable,
    embedder: Embedder,
    stats: Stats,
    rounds: int,
    cache_dir: Path,
) -> None:
    """The static table (router.semantic.static) in front of the same embeddings server."""
    started = time.perf_counter()
    static_table = await load_or_build(cache_dir, VOCABULARY, EMBEDDINGS_MODEL, embedder.embed_ids)
    print(f"\nstatic table: ready in {time.perf_counter() - started:.1f} s ({cache_dir})")
    margin = StaticSemantic(vocabulary=str(VOCABULARY)).confident_margin
    static = StaticRouting(static_table, static_table.prototypes(settings.categories), margin)
    cascade = RoutingTable(settings, table.prototypes, static=static)
    rng = random.Random(11)  # noqa: S311 - reproducible prompts, not secrets
    new = labelled_prompts(rng, lambda text: len(static_table.tokenizer.ids(text)))
    calls = count_calls(embedder)
    series: dict[str, list[float]] = {"table decided": [], "model decided": [], "all": []}
    agree = right = right_model = 0
    for _ in range(rounds * 2):
        category, prompt = next(new)
        before = calls()
        request = RouteRequest(Endpoint.CHAT, None, prompt)
        started = time.perf_counter()
        choice = await choose_models(cascade, request, embedder)
        chosen = cascade.decide(request, stats, choice).model
        elapsed = (time.perf_counter() - started) * 1000
        series["model decided" if calls() > before else "table decided"].append(elapsed)
        series["all"].append(elapsed)
        by_model = table.decide(request, stats, await choose_models(table, request, embedder))
        agree += chosen == by_model.model
        right += chosen == category
        right_model += by_model.model == category
    n = len(series["all"])
    print(
        f"decisions of {n} new labelled prompts (64-71 tokens, one category each): the table "
        f"decided {len(series['table decided'])}, the model {len(series['model decided'])}; "
        f"same model as the model alone: {agree}; right category: table then model {right}, "
        f"model alone {right_model} (margin {margin})"
    )
    print_series({k: v for k, v in series.items() if v})


def wait_semantic(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until the router has its category prototypes and its static table."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the router exited:\n{log.read_text()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/ready")
            ready = json.loads(connection.getresponse().read())
            if ready.get("semantic") and ready.get("static_table"):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"the router's semantic routing was not ready:\n{log.read_text()[-2000:]}")


def print_histogram(exported: str) -> None:
    """The router's own decision histogram, by path: count and mean."""
    print("\nthe router's decision histogram (mean = sum / count):")
    for path in ("cached", "static", "embedded", "failed"):
        prefix = f'hxp_router_semantic_decision_duration_seconds_%s{{path="{path}"}} '
        values = [
            float(line.split()[-1])
            for kind in ("sum", "count")
            for line in exported.splitlines()
            if line.startswith(prefix % kind)
        ]
        if len(values) == 2 and values[1]:
            mean_ms = values[0] / values[1] * 1000
            print(f"  {path:<9} count {values[1]:>5.0f}  mean {mean_ms:.3f} ms")


def through_router(url: str, rounds: int, words: int, static_cache: Path) -> None:
    backend_port, router_port = free_port(), free_port()
    directory = Path(tempfile.mkdtemp(prefix="semantic-bench-"))
    lab = lab_router(url, f"http://127.0.0.1:{backend_port}", "fast")
    # The lab's static table, with this controller's copy of the vocabulary and table.
    static = {"vocabulary": str(VOCABULARY), "cache_dir": str(static_cache)}
    settings = {
        **lab,
        "semantic": {**lab["semantic"], "static": static},
        "listen_host": "127.0.0.1",
        "port": router_port,
        "workers": 1,
        "require_api_key": False,
    }
    (directory / "settings.yml").write_text(yaml.safe_dump(settings))
    secrets = directory / "secrets.yml"
    secrets.write_text("{}\n")
    secrets.chmod(0o600)
    log = directory / "router.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    backend = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks/fast_backend.py"), "--port", str(backend_port)]
    )
    router = subprocess.Popen(
        [sys.executable, "-m", "hxp_runtime.router", "--settings", str(directory / "settings.yml"),
         "--secrets", str(secrets)],
        env=env, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_semantic(router_port, router, log)
        connection = http.client.HTTPConnection("127.0.0.1", router_port, timeout=60)

        def post(path: str, body: dict[str, Any]) -> float:
            started = time.perf_counter()
            connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"{path}: HTTP {response.status}\n{log.read_text()[-2000:]}")
            return (time.perf_counter() - started) * 1000

        def chat(model: str, prompt: str) -> dict[str, Any]:
            return {"model": model, "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": 1}  # fmt: skip

        new = prompts(random.Random(11), words)  # noqa: S311 - reproducible prompts, not secrets
        rng = random.Random(13)  # noqa: S311 - reproducible prompts, not secrets
        tokenizer = WordPiece(read_vocabulary(VOCABULARY)[0])
        labelled = labelled_prompts(rng, lambda text: len(tokenizer.ids(text)))
        repeated = next(new)
        explicit = settings["backends"][0]["name"]
        series: dict[str, list[float]] = {
            "explicit model": [],
            "embeddings": [],
            "auto, new prompt": [],
            "auto, new labelled": [],
            "auto, repeated": [],
        }
        for _ in range(3):  # warm-up
            post("/v1/chat/completions", chat("auto", next(new)))
        for _ in range(rounds):
            path = "/v1/chat/completions"
            series["explicit model"].append(post(path, chat(explicit, next(new))))
            series["embeddings"].append(
                post("/v1/embeddings", {"model": "minilm", "input": next(new)})
            )
            series["auto, new prompt"].append(post(path, chat("auto", next(new))))
            series["auto, new labelled"].append(post(path, chat("auto", next(labelled)[1])))
            series["auto, repeated"].append(post(path, chat("auto", repeated)))
        print("\nthrough the router (client -> router -> fast double / vLLM embeddings):")
        print_series(series)
        connection.request("GET", "/metrics")
        exported = connection.getresponse().read().decode()
        print_histogram(exported)
    finally:
        router.terminate()
        backend.terminate()
        router.wait(60)
        backend.wait(60)


def print_series(series: dict[str, list[float]]) -> None:
    print(f"{'series':<20} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, values in series.items():
        print(
            f"{name:<20} {len(values):>4} {statistics.median(values):>8.2f} "
            f"{percentile(values, 0.99):>8.2f} {max(values):>8.2f}"
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
    parser.add_argument("--no-router", action="store_true", help="skip the through-router part")
    parser.add_argument(
        "--static-cache",
        type=Path,
        default=REPO / ".cache" / "static-table",
        help="where the static table is built once and kept",
    )
    args = parser.parse_args()
    with embeddings_server(args.embeddings_url) as url:
        print(f"embeddings server: {url} ({EMBEDDINGS_MODEL}, vLLM on CPU)")
        asyncio.run(measure(url, args.rounds, args.words, args.burst, args.static_cache))
        if not args.no_router:
            through_router(url, args.rounds, args.words, args.static_cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
