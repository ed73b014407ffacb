"""No two services listen on one host:port."""

from __future__ import annotations

from collections.abc import Iterator

from hxp_runtime.config.endpoints import service_endpoints
from hxp_runtime.config.problems import Dropped, Problem
from hxp_runtime.config.schema import HxpConfig


def port_problems(cfg: HxpConfig, dropped: Dropped) -> Iterator[Problem]:
    taken: dict[tuple[str, int], str] = {}
    for on_host, port, label, path in service_endpoints(cfg):
        if on_host is None or dropped.hides_host_of(cfg, path):
            continue
        if (on_host, port) in taken and taken[(on_host, port)] != label:
            yield Problem(
                path,
                f"port {port} on host {on_host!r} is already used by {taken[(on_host, port)]}; "
                "choose a free port",
            )
        taken.setdefault((on_host, port), label)
