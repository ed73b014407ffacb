"""Time `hxp bundle build` and `hxp bundle verify` on a model-sized directory.

Usage: .venv/bin/python benchmarks/bundle.py [--mib 512] [--files 8] [--rounds 3]

Writes a model directory of random bytes (MIB MiB over FILES files) and a release archive into
a temporary directory, builds a bundle from them, then verifies it ROUNDS times (the files are
in the page cache, as right after a build or a copy; a cold disk is slower). Prints the build
time, each verify time and the verify throughput: how long a role's preflight takes per GiB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from hxp_runtime.bundle import build_bundle, verify_bundle

MIB = 1 << 20


def make_sources(root: Path, mib: int, files: int) -> Path:
    model = root / "model"
    model.mkdir()
    per_file = mib * MIB // files
    for index in range(files):
        with (model / f"model-{index:05d}-of-{files:05d}.safetensors").open("wb") as handle:
            remaining = per_file
            while remaining:
                chunk = min(remaining, 16 * MIB)
                handle.write(os.urandom(chunk))
                remaining -= chunk
    (model / "config.json").write_text('{"hidden_size": 4096}\n')
    (root / "server.tar.gz").write_bytes(os.urandom(8 * MIB))
    spec = root / "bundle.yml"
    spec.write_text(
        "artifacts:\n"
        "  - {name: server, kind: archive, version: '1', source: server.tar.gz}\n"
        "  - {name: model, kind: model-dir, version: bench, source: model}\n"
    )
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="size of the model directory")
    parser.add_argument("--files", type=int, default=8, help="files in the model directory")
    parser.add_argument("--rounds", type=int, default=3, help="verify runs")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hxp-bundle-bench-") as tmp:
        root = Path(tmp)
        spec = make_sources(root, args.mib, args.files)
        total_mib = args.mib + 8
        start = time.perf_counter()
        build_bundle(spec, root / "bundle")
        build_s = time.perf_counter() - start
        print(f"build: {total_mib} MiB in {build_s:.2f} s ({total_mib / build_s:.0f} MiB/s)")
        timings = []
        for round_ in range(1, args.rounds + 1):
            start = time.perf_counter()
            result = verify_bundle(root / "bundle")
            elapsed = time.perf_counter() - start
            assert result.ok, result.problems
            timings.append(elapsed)
            print(f"verify round {round_}: {elapsed:.2f} s ({total_mib / elapsed:.0f} MiB/s)")
        median = statistics.median(timings)
        print(
            f"verify median: {median:.2f} s for {total_mib} MiB = "
            f"{median / total_mib * 1024:.1f} s per GiB"
        )


if __name__ == "__main__":
    main()
