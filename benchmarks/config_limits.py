"""How fast and how lean hxp.yml's loader refuses hostile files, and how fast it validates.

Usage: .venv/bin/python benchmarks/config_limits.py
Prints, per input: the outcome (the limit named, or "valid"), wall time and peak traced memory.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory

from hxp_runtime.config import ConfigError, load_config
from hxp_runtime.yamlsource import MAX_BYTES, MAX_DEPTH

REPO = Path(__file__).resolve().parents[1]


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


INPUTS: dict[str, Callable[[], bytes]] = {
    "billion laughs (9 levels, 10^9 nodes expanded)": lambda: billion_laughs().encode(),
    f"nesting of 100,000 '[' (limit {MAX_DEPTH})": lambda: b"[" * 100_000,
    "nesting of 100,000 '{a: '": lambda: b"{a: " * 100_000,
    f"{MAX_BYTES // 2**20 * 2} MiB file (limit {MAX_BYTES // 2**20} MiB)": lambda: (
        b"# " + b"x" * (2 * MAX_BYTES) + b"\n"
    ),
    "flat list of 100,000 items": lambda: (
        b"items:\n" + b"".join(b"  - %d\n" % i for i in range(100_000))
    ),
    "invalid UTF-8 at byte 100,000": lambda: b"a: 1\n" * 20_000 + b"b: \xff\n",
    "the sample deployment (valid)": (REPO / "inventory/sample/hxp.yml").read_bytes,
}


def main() -> None:
    print(f"{'input':<52} {'ms':>8} {'peak MiB':>9}  outcome")
    with TemporaryDirectory() as tmp:
        for name, make in INPUTS.items():
            path = Path(tmp) / "hxp.yml"
            path.write_bytes(make())
            tracemalloc.start()
            started = time.perf_counter()
            try:
                load_config(path)
                outcome = "valid"
            except ConfigError as exc:
                outcome = exc.errors[0].message[:70]
            elapsed = time.perf_counter() - started
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(f"{name:<52} {elapsed * 1000:8.1f} {peak / 2**20:9.1f}  {outcome}")


if __name__ == "__main__":
    main()
