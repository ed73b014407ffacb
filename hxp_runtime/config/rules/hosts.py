"""Rules of each host entry on its own: its GPUs."""

from __future__ import annotations

from collections.abc import Iterator

from hxp_runtime.config.problems import Dropped, Problem
from hxp_runtime.config.rules.duplicates import duplicates
from hxp_runtime.config.schema import HxpConfig


def host_problems(cfg: HxpConfig, dropped: Dropped) -> Iterator[Problem]:
    for i, host in enumerate(cfg.hosts):
        yield from duplicates(
            [(str(g.index), ("hosts", i, "gpus", j, "index")) for j, g in enumerate(host.gpus)],
            "GPU index",
            dropped,
        )
        if host.accelerator == "cpu" and host.gpus:
            yield Problem(
                ("hosts", i, "gpus"),
                "a host with accelerator: cpu declares GPUs; "
                "remove gpus or set accelerator: nvidia",
            )
