"""What the tests that boot lab hosts (`hxp lab`) share: their marks (root, systemd-nspawn and
debootstrap) and the hxp command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

NEEDS_LAB = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(
        not (shutil.which("systemd-nspawn") and shutil.which("debootstrap")),
        reason="systemd-nspawn or debootstrap is not installed (run scripts/setup)",
    ),
]


def hxp(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``hxp ARGS`` by this interpreter; with check, it must succeed (its output in the error)."""
    result = subprocess.run(
        [sys.executable, "-m", "hxp_runtime.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, f"hxp {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result
