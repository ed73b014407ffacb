"""The whole-stack tests (tests/stack) and the scale-out tests (tests/scale) run only on a
deployed lab; an import that broke in them would surface an hour into a run. Collecting them
needs no lab, so it is checked here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("directory", ["tests/stack", "tests/scale"])
def test_every_lab_test_module_imports_and_is_collected(directory: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "", "-p", "no:cacheprovider",
         directory],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    collected = [line for line in done.stdout.splitlines() if line.startswith(f"{directory}/")]
    modules = {line.split("::", 1)[0] for line in collected}
    expected = {str(p.relative_to(REPO)) for p in (REPO / directory).glob("test_*.py")}
    assert modules == expected
