"""CPU per routing decision, prefix_affinity against least_outstanding, by prompt length.

What it times is what the router does per request on top of parsing the body: the prompt's
block hashes (prefix_affinity only) and the live choice over three replicas of one model.

    .venv/bin/python -m benchmarks.prefix_decision [--rounds 3000]   # from the checkout
"""

from __future__ import annotations

import argparse
import time

from hxp_runtime.router.settings import RouterSettings
from hxp_runtime.router.strategies import BackendStats, Endpoint, RouteRequest, RoutingTable, Stats

REPLICAS = 3
PROMPT_CHARS = (500, 2000, 8000)


def table(strategies: list[str]) -> RoutingTable:
    slo = {"latency_ms": 100, "throughput_rps": 10}
    backends = [
        {"name": "m", "served_name": "m", "url": f"http://127.0.0.1:{9000 + i}", "slo": slo}
        for i in range(REPLICAS)
    ]
    return RoutingTable(
        RouterSettings.model_validate({"backends": backends, "strategies": strategies})
    )


def per_decision_us(routing: RoutingTable, chars: int, rounds: int) -> float:
    half = chars // 2
    payload = {
        "messages": [
            {"role": "system", "content": "s" * half},
            {"role": "user", "content": "u" * half},
        ]
    }
    stats = Stats({b.id: BackendStats() for b in routing.backends})
    choice = routing.choose_models(RouteRequest(Endpoint.CHAT, "m"))
    started = time.process_time()
    for _ in range(rounds):
        affinity = routing.affinity(Endpoint.CHAT, payload, None)
        routing.decide(RouteRequest(Endpoint.CHAT, "m", affinity=affinity), stats, choice)
    return (time.process_time() - started) / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3000)
    rounds = parser.parse_args().rounds
    tables = {
        "least_outstanding": table(["explicit", "least_outstanding"]),
        "prefix_affinity": table(["explicit", "least_outstanding", "prefix_affinity"]),
    }
    print(f"CPU per decision, {REPLICAS} replicas, {rounds} rounds (µs)")
    print("prompt chars | " + " | ".join(tables))
    for chars in PROMPT_CHARS:
        row = [f"{per_decision_us(t, chars, rounds):.1f}" for t in tables.values()]
        print(f"{chars} | " + " | ".join(row))


if __name__ == "__main__":
    main()
