"""The whole survey: targets from the config, one probe per host over SSH, the verdict."""

from __future__ import annotations

import time
from pathlib import Path

from hxp_runtime.config import HxpConfig, plan_deployment
from hxp_runtime.status.collect import collect, ssh_settings
from hxp_runtime.status.targets import host_targets, probe_params
from hxp_runtime.status.verdict import Verdict, judge


def survey(cfg: HxpConfig, inventories: list[Path]) -> tuple[Verdict, float]:
    """(verdict, wall seconds). Raises SecretUnavailable when a secret cannot be read here."""
    started = time.monotonic()
    targets = host_targets(cfg, plan_deployment(cfg))
    jobs = [
        (target, ssh_settings(target, inventories).command(), probe_params(cfg, target))
        for target in targets
    ]
    verdict = judge(cfg, targets, collect(jobs))
    return verdict, round(time.monotonic() - started, 3)
