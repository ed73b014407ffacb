"""Cold start to ready of real vLLM CPU servers, per lab model, on this machine.

Usage: .venv/bin/python benchmarks/vllm_cold_start.py [--rounds 3] [--model NAME ...]

For each model (default: the four tiny lab models and the MiniLM embeddings model), ROUNDS
times: start ``vllm serve`` from the vLLM CPU venv (scripts/setup) with the lab's engine
settings, and time until it is ready as the systemd unit's ExecStartPost defines it
(hxp_runtime.host.vllm_ready: /health OK, /v1/models lists it, a one-token request answers); then
stop it and wait for its whole process group to exit. One server at a time, as the role starts
them. Prints each time, the median per model, and the peak memory of the server's processes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from hxp_runtime.labmodels import generate_models
from tests.vllm_servers import (
    EMBEDDINGS_MODEL,
    LAB_MODELS,
    MODELS_DIR,
    VLLM_PYTHON,
    ServerSpec,
    VllmServer,
    embeddings_spec,
)


def group_rss_mib(pgid: int) -> float:
    """Resident memory of every process in the group (shared pages counted per process)."""
    total_kib = 0
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                statm = (status.parent / "statm").read_text().split()
                total_kib += int(statm[1]) * 4
        except (OSError, ValueError, IndexError):
            continue
    return total_kib / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", action="append", dest="models")
    args = parser.parse_args()
    models = args.models or [*LAB_MODELS, EMBEDDINGS_MODEL]
    result = generate_models(MODELS_DIR, python=VLLM_PYTHON)
    if result.returncode:
        raise SystemExit(result.stderr)
    with tempfile.TemporaryDirectory() as logs:
        print(f"{'model':<20} {'round':>5} {'ready s':>8} {'RSS MiB':>8}")
        medians = {}
        for model in models:
            spec = embeddings_spec() if model == EMBEDDINGS_MODEL else ServerSpec(model)
            times = []
            for round_ in range(1, args.rounds + 1):
                log = Path(logs) / f"{model}-{round_}.log"
                server = VllmServer.on_free_port(spec, MODELS_DIR, VLLM_PYTHON, log)
                started = time.monotonic()
                server.start()
                try:
                    server.wait_ready()
                    ready = time.monotonic() - started
                    assert server.process is not None
                    rss = group_rss_mib(server.process.pid)
                finally:
                    server.stop()
                times.append(ready)
                print(f"{model:<20} {round_:>5} {ready:>8.1f} {rss:>8.0f}", flush=True)
            medians[model] = statistics.median(times)
        print("\nmedian cold start to ready (s):")
        for model, median in medians.items():
            print(f"  {model:<20} {median:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
