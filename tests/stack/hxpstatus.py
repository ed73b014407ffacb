"""`hxp status --json` run from the whole-stack tests, the way an operator's script runs it."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from tests.stack.router import CONFIG, REPO

# vLLM on CPU loads a tiny model in well under a minute; then one health interval of the router
# and the Prometheus alert of the stop resolving (a scrape and an evaluation).
BACK_WITHIN_S = 300.0


@dataclass(frozen=True)
class Status:
    code: int
    envelope: dict[str, Any]
    seconds: float
    cpu_seconds: float  # the command's own user and system time


def unit_problems(status: Status) -> list[str]:
    """The reasons it is degraded other than firing alerts. Alerts may fire from earlier
    traffic on the shared lab (an error budget burning over its hour-long window); the tests
    print them and judge units, models, backends and hosts."""
    return [
        p["message"] for p in status.envelope["problems"] if not p["message"].startswith("alert ")
    ]


def hxp_status() -> Status:
    started = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [sys.executable, "-m", "hxp_runtime.cli", "status", str(CONFIG), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    assert done.stdout, done.stderr
    return Status(done.returncode, json.loads(done.stdout), seconds, cpu)
