"""The router as the openai SDK sees it: latency and throughput through the official client.

Not a test: it prints numbers for docs/benchmarks.md ("Router", the openai SDK). The setup is
router_bench.py's: the fast backend and the proxy under test pinned to core 1 with PostgreSQL
and Redis, the router with a database key, rate limits, usage rows and metrics on. Only the
client differs. Here it is the openai SDK (``openai.OpenAI``, then ``openai.AsyncOpenAI`` for
concurrency) on core 0 instead of wrk, sending the benchmark's chat request. This is how users
measure a gateway::

    .venv/bin/python benchmarks/router_openai.py [--requests 2000] [--rounds 10] [--concurrency 16]
        [--duration 8] [--compare-tree DIR] [--json out.json]

For each target (the backend called directly, the hxp router, nginx) it prints:

- c=1: ``--requests`` requests one after another, each one's wall time from the call to the
  parsed completion, p50 and p99; sent in ``--rounds`` rounds, the targets taking turns, so
  that the machine's drift over the run falls on all of them alike;
- c=``--concurrency``: that many tasks on one AsyncOpenAI client for ``--duration`` seconds,
  requests per second;
- the proxy's CPU per request (utime + stime over the c=1 run).

The SDK's own work (building the request, httpx, pydantic parsing of the answer) is about a
millisecond per request on this machine. A proxy's added latency is the difference from the
direct run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import openai

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.router_bench import (  # noqa: E402
    BODY,
    LOAD_CORE,
    Bench,
    Target,
    cpu_model,
    cpu_seconds,
    start_backend,
    start_nginx,
    start_router,
)

# The benchmark's request (router_bench.BODY), typed loosely for the SDK's overloads.
MODEL = str(BODY["model"])
MESSAGES: Any = BODY["messages"]
MAX_TOKENS = int(str(BODY["max_tokens"]))


def api_key(target: Target) -> str:
    return target.headers.get("Authorization", "Bearer none").removeprefix("Bearer ")


class Sequential:
    """One target's c=1 series, sent in rounds; CPU is counted over the rounds alone."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.client = openai.OpenAI(
            base_url=target.url + "/v1", api_key=api_key(target), max_retries=0
        )
        self.times: list[float] = []
        self.cpu = 0.0
        for _ in range(200):  # warm-up: the connection, caches, the key's lookup
            self.call()

    def call(self) -> None:
        completion = self.client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS
        )
        assert completion.choices, completion

    def round(self, requests: int) -> None:
        before = cpu_seconds(self.target.pids)
        for _ in range(requests):
            began = time.perf_counter()
            self.call()
            self.times.append(time.perf_counter() - began)
        after = cpu_seconds(self.target.pids)
        self.cpu += after[0] + after[1] - before[0] - before[1]

    def result(self) -> dict[str, Any]:
        self.client.close()
        times = sorted(self.times)
        return {
            "requests": len(times),
            "p50_ms": statistics.median(times) * 1000,
            "p99_ms": times[int(len(times) * 0.99)] * 1000,
            "cpu_us_per_request": self.cpu / len(times) * 1e6 if self.target.pids else None,
        }


async def concurrent(target: Target, concurrency: int, duration: float) -> dict[str, Any]:
    client = openai.AsyncOpenAI(base_url=target.url + "/v1", api_key=api_key(target), max_retries=0)
    done = 0
    failed = 0
    stop_at = 0.0

    async def worker() -> None:
        nonlocal done, failed
        while time.perf_counter() < stop_at:
            try:
                await client.chat.completions.create(
                    model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS
                )
                done += 1
            except openai.OpenAIError:
                failed += 1

    stop_at = time.perf_counter() + 1.0  # warm-up
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = failed = 0
    began = time.perf_counter()
    stop_at = began + duration
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    await client.close()
    return {"requests_per_s": done / elapsed, "failed": failed}


def report(results: dict[str, Any], concurrency: int) -> str:
    direct = results["targets"]["direct"]["c1"]["p50_ms"]
    lines = [
        "| target | c=1 p50 | c=1 p99 | added p50 | proxy CPU/request "
        f"| requests/s at c={concurrency} |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in results["targets"].items():
        c1, cn = result["c1"], result["concurrent"]
        cpu = c1["cpu_us_per_request"]
        added = "-" if name == "direct" else f"{c1['p50_ms'] - direct:+.3f} ms"
        lines.append(
            f"| {name} | {c1['p50_ms']:.3f} ms | {c1['p99_ms']:.3f} ms | {added} | "
            f"{'-' if cpu is None else f'{cpu:.0f} µs'} | {cn['requests_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=10, help="c=1 rounds per target")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument(
        "--compare-tree",
        type=Path,
        help="also run the router of this checkout (git worktree add DIR COMMIT), e.g. an "
        "older commit's",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu": cpu_model(),
        "openai": openai.__version__,
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "targets": {},
    }
    with tempfile.TemporaryDirectory(prefix="hxp-openai-") as tmp, Bench(Path(tmp)) as bench:
        backend = start_backend(bench)
        targets = [Target("direct", backend), start_router(bench, backend, True)]
        if args.compare_tree is not None:
            other = start_router(bench, backend, True, tree=args.compare_tree.resolve())
            targets.append(replace(other, name=f"hxp router at {args.compare_tree.name}"))
        if nginx := start_nginx(bench, backend):
            targets.append(nginx)
        # The c=1 series in rounds, the targets taking turns: the machine's drift over the run
        # falls on every target alike.
        series = [Sequential(target) for target in targets]
        for _ in range(args.rounds):
            for one in series:
                one.round(args.requests // args.rounds)
        for target, one in zip(targets, series, strict=True):
            results["targets"][target.name] = {
                "c1": one.result(),
                "concurrent": asyncio.run(concurrent(target, args.concurrency, args.duration)),
            }
            print(target.name, json.dumps(results["targets"][target.name]), flush=True)
    results["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    print()
    print(report(results, args.concurrency))
    print(f"\nload average before {results['loadavg_before']}, after {results['loadavg_after']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
