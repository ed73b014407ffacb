"""Load on the lab's router while a whole-stack test changes something: `hxp loadtest` in a
subprocess, so that the test itself is free to restart units, deploy, and wait::

    run = start_load(cfg, models=["hermes", "phi3"], duration_s=20)
    ...  # restart the router, roll a model
    report = run.wait()
    assert report["failed"] == {}

The subprocess runs this checkout's hxp_runtime (not whichever hxp the venv installed), against
the router on the lab's LLM host with the lab's router API key (over HTTPS, verified against
the lab's CA, when hxp.yml sets router.tls). Models with ``task: embed`` are
sent embeddings requests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hxp_runtime.config import HxpConfig
from tests.stack.router import router_ca, router_url

REPO = Path(__file__).resolve().parents[2]
# How long a run may take beyond its duration: the requests in flight at its end finish or
# time out (the load tool's per-request timeout, 60 s), plus the interpreter's start.
GRACE_S = 90.0


def loadtest_command(
    cfg: HxpConfig,
    *,
    models: list[str],
    concurrency: int,
    duration_s: float,
    client: str,
    retries: bool,
    url: str | None = None,
) -> list[str]:
    assert cfg.router.api_keys, "the lab config has no router API key to send load with"
    embeddings = {m.name for m in cfg.models if m.task == "embed"}
    command = [
        sys.executable,
        "-m",
        "hxp_runtime.cli",
        "loadtest",
        url or router_url(cfg),
        "--key-file",
        cfg.router.api_keys[0].secret.value,
        "--concurrency",
        str(concurrency),
        "--duration",
        str(duration_s),
        "--client",
        client,
        "--json",
    ]
    ca = router_ca(cfg)
    if ca is not None:
        command += ["--ca", str(ca)]
    for model in models:
        command += ["--embeddings-model" if model in embeddings else "--model", model]
    if not retries:
        command.append("--no-retries")
    return command


@dataclass
class LoadRun:
    """A load run under way; :meth:`wait` for its report."""

    process: subprocess.Popen[str]
    duration_s: float

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """The run's report (exit 1, some requests failed, is a report too); prints one line."""
        try:
            stdout, stderr = self.process.communicate(
                timeout=self.duration_s + GRACE_S if timeout is None else timeout
            )
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise
        if self.process.returncode not in (0, 1):
            raise AssertionError(f"hxp loadtest exited {self.process.returncode}: {stderr}{stdout}")
        report: dict[str, Any] = json.loads(stdout)
        print(summary_line(report))
        return report


def summary_line(report: dict[str, Any]) -> str:
    latency = report["latency_ms"]
    return (
        f"load ({report['client']} client, retries {report['retries']}): "
        f"{report['sent']} sent in {report['duration_s']} s, ok {report['ok']}, "
        f"failed {report['failed'] or 0}, p50 {latency['p50']} ms, p99 {latency['p99']} ms, "
        f"by backend {report['by_backend']}"
    )


def start_load(
    cfg: HxpConfig,
    *,
    models: list[str],
    concurrency: int = 8,
    duration_s: float = 30.0,
    client: str = "hxp",
    retries: bool = True,
    url: str | None = None,
) -> LoadRun:
    """Start `hxp loadtest` against the lab's router (``url``: one router host's own, else the
    address clients use) and return at once."""
    command = loadtest_command(
        cfg,
        models=models,
        concurrency=concurrency,
        duration_s=duration_s,
        client=client,
        retries=retries,
        url=url,
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    return LoadRun(process, duration_s)
