"""The static table in the router daemon: four workers, one build, decisions without calls.

The daemon runs with ``router.semantic.static`` in front of real vLLM serving MiniLM on CPU,
with benchmarks/fast_backend.py (a test double of vLLM) as every generating model. What the
embeddings server did is read from the server itself (``vllm:prompt_tokens_total``): one
build of the table costs three prompt tokens per vocabulary token it embeds, so four workers
that each built it would cost four times as much. The vocabulary is the model's, reduced to
the pieces of the prompts sent here (``static_vocabulary``, conftest.py): a build of a few
hundred rows, which decides those prompts as the whole table would.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from hxp_runtime.router.static_embedding import read_vocabulary, skipped_ids
from tests.integration.router.conftest import (
    LAB_CATEGORIES,
    PROMPTS,
    RouterProcess,
    call,
    metric_sum,
    worker_pids,
)
from tests.integration.router.test_semantic_vllm import settled_prompt_tokens
from tests.vllm_servers import EMBEDDINGS_MODEL, VllmServer, embeddings_spec, free_port

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
Servers = Callable[..., list[VllmServer]]
WORKERS = 4
SLO = {"latency_ms": 2000, "throughput_rps": 10}
KEY = "sk-static-table-test-key-000000000000"
BUILD_TIMEOUT_S = 600.0


def settings(
    port: int, backend_port: int, embeddings_url: str, vocab: Path, cache: Path
) -> dict[str, Any]:
    generating = [
        {
            "name": name,
            "served_name": "fast",
            "url": f"http://127.0.0.1:{backend_port}",
            "slo": SLO,
            "categories": [name],
        }
        for name in LAB_CATEGORIES
    ]
    return {
        "listen_host": "127.0.0.1",
        "port": port,
        "workers": WORKERS,
        "drain_timeout_s": 10,
        "strategies": ["explicit", "semantic"],
        "categories": {n: {"examples": [e]} for n, e in LAB_CATEGORIES.items()},
        "semantic": {
            "embedding_model": "minilm",
            "static": {"vocabulary": str(vocab), "cache_dir": str(cache)},
        },
        "health_check": {"enabled": True, "interval_s": 1, "timeout_s": 5},
        "backends": [
            *generating,
            {
                "name": "minilm",
                "served_name": EMBEDDINGS_MODEL,
                "url": embeddings_url,
                "slo": SLO,
                "task": "embed",
            },
        ],
    }


def wait_for_tables(router: RouterProcess, starts: int, timeout: float) -> float:
    """Seconds until every worker of ``starts`` starts logged its table ready."""
    began = time.monotonic()
    want = WORKERS * starts
    while time.monotonic() - began < timeout:
        assert router.process is not None and router.process.poll() is None, router.log_tail()
        if router.log_path.read_text(errors="replace").count("static table ready") >= want:
            return time.monotonic() - began
        time.sleep(0.5)
    raise AssertionError(f"the workers' tables were not ready:\n{router.log_tail()}")


def labelled_prompts(count: int, seed: int) -> list[tuple[str, str]]:
    """(category, prompt): a category's sentences joined, about 64 tokens, all different."""
    labelled = json.loads(PROMPTS.read_text())
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        category = rng.choice(sorted(labelled))
        out.append((category, " ".join(rng.sample(labelled[category], 5))))
    return out


def test_four_workers_build_one_table_and_decide_without_embeddings_calls(
    vllm_servers: Servers,
    static_vocabulary: Path,
    backend_port: int,
    static_cache_dir: Path,
    tmp_path: Path,
) -> None:
    (server,) = vllm_servers(embeddings_spec())
    # The session's table directory, unless a test before this one built the table there.
    state = tmp_path / "state" if any(static_cache_dir.iterdir()) else static_cache_dir
    vocab = static_vocabulary  # the pieces of the test's prompts (conftest)
    vocabulary, _ = read_vocabulary(vocab)
    one_build = 3 * (len(vocabulary) - len(skipped_ids(vocabulary)))
    port = free_port()
    router = RouterProcess(
        settings(port, backend_port, server.base_url, vocab, state),
        {"api_keys": [{"name": "static", "secret": KEY}]},
        tmp_path / "router",
    )
    before = settled_prompt_tokens(server, 0)
    router.start()
    try:
        assert len(worker_pids(router)) == WORKERS
        built_s = wait_for_tables(router, 1, BUILD_TIMEOUT_S)
        spent = settled_prompt_tokens(server, before + one_build) - before
        # One build, plus each worker's category prototypes (8 short examples each).
        assert one_build <= spent < one_build + WORKERS * 200, (spent, one_build)
        (table,) = state.glob("static-*.bin")
        assert table.stat().st_mode & 0o777 == 0o600

        # A restart in the middle: the new workers read the table; nothing is built again.
        before = settled_prompt_tokens(server, 0)
        router.signal(signal.SIGTERM)
        assert router.stop(signalled=True) == 0, router.log_tail()
        router.start()
        read_s = wait_for_tables(router, 2, 120)
        spent = settled_prompt_tokens(server, before) - before
        assert spent < WORKERS * 200, spent  # the prototypes only
        status, _, body = call("GET", router.url + "/ready")
        assert status == 200 and json.loads(body)["static_table"] is True

        # Sixty new prompts from eight clients, spread over the workers by the kernel.
        prompts = labelled_prompts(60, seed=5)
        before = settled_prompt_tokens(server, 0)

        def ask(item: tuple[str, str]) -> tuple[str, int, str]:
            category, prompt = item
            body = {"model": "auto", "messages": [{"role": "user", "content": prompt}]}
            status, headers, _ = call(
                "POST", router.url + "/v1/chat/completions", body, KEY, timeout=60
            )
            return category, status, headers.get("x-hxp-backend", "")

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, prompts))
        assert {status for _, status, _ in answers} == {200}
        metrics = call("GET", router.url + "/metrics")[2].decode()
        count = "hxp_router_semantic_decision_duration_seconds_count"
        static = metric_sum(metrics, count, path="static")
        embedded = metric_sum(metrics, count, path="embedded")
        spent = settled_prompt_tokens(server, before) - before
        right = sum(category == backend for category, _, backend in answers)
        print(
            f"{WORKERS} workers: table built in {built_s:.0f} s ({one_build} prompt tokens at "
            f"the server), read after a restart in {read_s:.1f} s; of {len(prompts)} new "
            f"prompts the table decided {static:.0f}, the model {embedded:.0f} "
            f"({spent:.0f} prompt tokens); {right} went to their category's model"
        )
        assert static + embedded == len(prompts)
        assert static >= len(prompts) / 2
        assert spent <= embedded * 100  # only the model's decisions reached the server
        assert right >= len(prompts) * 0.8
    finally:
        router.stop()
