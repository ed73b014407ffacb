"""status.expected names services this deployment runs, on hosts it has."""

from __future__ import annotations

from collections.abc import Iterator

from hxp_runtime.config.endpoints import service_hosts
from hxp_runtime.config.problems import Dropped, Problem
from hxp_runtime.config.schema import HxpConfig


def expected_problems(cfg: HxpConfig, dropped: Dropped) -> Iterator[Problem]:
    deployed = service_hosts(cfg)
    hosts = {h.name for h in cfg.hosts}
    for i, entry in enumerate(cfg.status.expected):
        path = ("status", "expected", i)
        where = deployed.get(entry.service, [])
        if entry.host is not None and entry.host not in hosts:
            if entry.host not in dropped.names:
                known = ", ".join(sorted(hosts))
                yield Problem((*path, "host"), f"no host {entry.host!r} in hosts (known: {known})")
        elif not where:
            yield Problem(
                (*path, "service"),
                f"this deployment runs no {entry.service.value}; remove the entry",
            )
        elif entry.host is not None and entry.host not in where:
            yield Problem(
                (*path, "host"),
                f"{entry.service.value} does not run on {entry.host} "
                f"(it runs on {', '.join(where)}); name one of those or leave host out",
            )
