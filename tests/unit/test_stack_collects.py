"""The whole-stack tests run only in CI's last stage, on a deployed lab; an import that broke in
them would surface an hour into the run. Collecting them needs no lab, so it is checked here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_every_stack_test_module_imports_and_is_collected() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "", "-p", "no:cacheprovider",
         "tests/stack"],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    collected = [line for line in done.stdout.splitlines() if line.startswith("tests/stack/")]
    modules = {line.split("::", 1)[0] for line in collected}
    expected = {str(p.relative_to(REPO)) for p in (REPO / "tests/stack").glob("test_*.py")}
    assert modules == expected
