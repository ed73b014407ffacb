"""prefix_affinity against least_outstanding on real vLLM: prefix-cache hit rate and time to
first token, on the same multi-turn workload, both strategies in one run.

Two replicas of one tiny model (vLLM CPU, ``--enable-prefix-caching``) on loopback, behind the
hxp router (two workers). Each strategy gets its own router start and the same shape of work:
CONVERSATIONS conversations at once, each TURNS turns long, every turn a streamed chat
completion whose messages are the whole conversation so far (a long system prompt of its own,
then the user and assistant turns), sent on a new connection. The two strategies' conversations
differ in their text, so what one run cached cannot serve the other.

What it prints, per strategy: vLLM's prefix-cache hits / queries (in tokens, from both
replicas' ``vllm:prefix_cache_hits_total`` and ``vllm:prefix_cache_queries_total``, the run's
increase), time to first token p50/p90 and how many conversations stayed on one replica.

    .venv/bin/python -m benchmarks.prefix_vllm [--conversations 8] [--turns 6]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from tests.integration.router.conftest import RouterProcess
from tests.vllm_servers import ServerSpec, free_port, running_servers

KEY = "hxp-prefix-bench-key-0123456789"
MODEL = "conv"
WORKERS = 2
SLO = {"latency_ms": 5000, "throughput_rps": 10}
COUNTERS = ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total")
WORDS = [
    "river",
    "stone",
    "cloud",
    "lantern",
    "copper",
    "meadow",
    "violet",
    "harbor",
    "signal",
    "orchard",
    "granite",
    "willow",
    "ember",
    "canyon",
    "thistle",
    "beacon",
    "marble",
    "falcon",
    "juniper",
    "tide",
]


def system_prompt(seed: int) -> str:
    """About 1,200 characters of instructions of one conversation's own."""
    words = [WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(180)]
    return f"Conversation {seed}. Keep to these notes: " + " ".join(words)


def user_turn(seed: int, turn: int) -> str:
    return f"Turn {turn} of conversation {seed}: tell me about the {WORDS[(seed + turn) % 20]}."


def counters(url: str) -> dict[str, float]:
    """The prefix-cache counters of one vLLM server, summed over their labels."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:  # noqa: S310 - loopback
        text = answer.read().decode()
    found = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in found:
            found[name] += float(line.rsplit(" ", 1)[1])
    return found


@dataclass
class Run:
    strategy: str
    ttft_s: list[float] = field(default_factory=list)
    replicas: dict[int, Counter[str]] = field(default_factory=dict)
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def conversation(router: RouterProcess, run: Run, seed: int, turns: int) -> None:
    messages: list[dict[str, str]] = [{"role": "system", "content": system_prompt(seed)}]
    served: Counter[str] = Counter()
    for turn in range(turns):
        messages.append({"role": "user", "content": user_turn(seed, turn)})
        # A client of its own per turn: a new connection, so any router worker may route it.
        with openai.OpenAI(
            base_url=router.url + "/v1", api_key=KEY, max_retries=0, timeout=120
        ) as client:
            started = time.monotonic()
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model=MODEL,
                    messages=messages,
                    max_tokens=8,
                    stream=True,  # type: ignore[arg-type]
                )
                first, reply = None, []
                stream: Any = raw.parse()
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        first = first or time.monotonic()
                        reply.append(chunk.choices[0].delta.content)
            except openai.APIError as error:
                print(f"conversation {seed} turn {turn}: {error}")
                with run.lock:
                    run.failed += 1
                return
        served[raw.headers.get("x-hxp-backend", "?")] += 1
        with run.lock:
            run.ttft_s.append((first or time.monotonic()) - started)
        messages.append({"role": "assistant", "content": "".join(reply)})
    with run.lock:
        run.replicas[seed] = served


def measure(
    strategy: str, urls: list[str], conversations: int, turns: int, seed_base: int
) -> tuple[Run, dict[str, float]]:
    settings: dict[str, Any] = {
        "listen_host": "127.0.0.1",
        "port": free_port(),
        "workers": WORKERS,
        "timeout_s": 120,
        "strategies": ["explicit", strategy],
        "health_check": {"enabled": True, "interval_s": 1, "timeout_s": 5},
        "load_poll_interval_s": 0.5,
        "backends": [{"name": MODEL, "served_name": MODEL, "url": u, "slo": SLO} for u in urls],
    }
    router = RouterProcess(
        settings,
        {"api_keys": [{"name": "bench", "secret": KEY}]},
        Path(tempfile.mkdtemp(prefix=f"prefix-bench-{strategy}-")),
    )
    router.start()
    before = [counters(u) for u in urls]
    run = Run(strategy)
    try:
        threads = [
            threading.Thread(target=conversation, args=(router, run, seed_base + n, turns))
            for n in range(conversations)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        router.stop()
    after = [counters(u) for u in urls]
    delta = {c: sum(a[c] - b[c] for a, b in zip(after, before, strict=True)) for c in COUNTERS}
    return run, delta


def report(run: Run, delta: dict[str, float]) -> str:
    hits, queries = (delta[c] for c in COUNTERS)
    ttft = sorted(run.ttft_s)
    p90 = ttft[max(0, int(len(ttft) * 0.9) - 1)] if ttft else float("nan")
    sticky = sum(1 for served in run.replicas.values() if len(served) == 1)
    return (
        f"{run.strategy:<20} {len(ttft):>8} {run.failed:>6} {hits:>10.0f} {queries:>10.0f} "
        f"{(hits / queries if queries else 0):>8.1%} "
        f"{statistics.median(ttft) * 1000 if ttft else float('nan'):>9.1f} {p90 * 1000:>9.1f} "
        f"{sticky:>3}/{len(run.replicas)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=6)
    args = parser.parse_args()
    spec = ServerSpec(
        "phi3", served_name=MODEL, max_model_len=2048, extra_args=("--enable-prefix-caching",)
    )
    with running_servers([spec, spec]) as servers:
        urls = [s.base_url for s in servers]
        print(
            f"two replicas of a tiny model (vLLM CPU, prefix caching on) at {', '.join(urls)}; "
            f"{args.conversations} conversations x {args.turns} turns, router {WORKERS} workers"
        )
        results = [
            measure(strategy, urls, args.conversations, args.turns, seed_base=1000 * index)
            for index, strategy in enumerate(("least_outstanding", "prefix_affinity"))
        ]
    print(
        f"{'strategy':<20} {'requests':>8} {'failed':>6} {'hit tok':>10} {'query tok':>10} "
        f"{'hit rate':>8} {'TTFT p50':>9} {'TTFT p90':>9} one replica"
    )
    for run, delta in results:
        print(report(run, delta))
    print("TTFT in ms; 'one replica': conversations whose every turn went to the same replica")


if __name__ == "__main__":
    main()
