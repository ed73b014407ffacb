"""No two services listen on one host:port."""

from __future__ import annotations

from collections.abc import Iterator

from hxp_runtime.config.endpoints import MAX_PORT, service_endpoints
from hxp_runtime.config.problems import Dropped, Problem
from hxp_runtime.config.schema import SPARE_PORT_OFFSET, HxpConfig, RolloutStrategy


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


def blue_green_problems(cfg: HxpConfig, dropped: Dropped) -> Iterator[Problem]:
    """A blue-green model needs its spare port (port + 1000) to be a port, and the router's
    admin API, through which the swap switches the router over."""
    for i, model in enumerate(cfg.models):
        if not cfg.blue_green_wanted(model):
            continue
        where = ("models", i, "rollout", "strategy") if model.rollout.strategy else None
        if model.pipeline is not None:
            yield Problem(
                where or ("rollout", "strategy"),
                f"model {model.name} is split across hosts (pipeline), which blue-green swaps "
                "do not support (the new version would need every stage twice); set its "
                "rollout.strategy: rolling",
            )
        elif len(model.hosts or ()) > 1 or (model.replicas or 1) > 1:
            yield Problem(
                where or ("rollout", "strategy"),
                f"model {model.name} has replicas on several hosts, which blue-green swaps do "
                "not support (the router switches a model, not one replica); set its "
                "rollout.strategy: rolling, which drains and restarts one replica at a time "
                "while the others serve",
            )
        if model.spare_port > MAX_PORT:
            yield Problem(
                ("models", i, "port"),
                f"model {model.name} swaps blue-green, which needs port + "
                f"{SPARE_PORT_OFFSET} = {model.spare_port} as well, above {MAX_PORT}; choose a "
                f"port up to {MAX_PORT - SPARE_PORT_OFFSET} or set its rollout.strategy: rolling",
            )
        if cfg.router.admin_key is None and where is not None:
            yield Problem(where, _NO_ADMIN.format(what=f"model {model.name}"))
    if cfg.router.admin_key is None and cfg.rollout.strategy == RolloutStrategy.BLUE_GREEN:
        yield Problem(("rollout", "strategy"), _NO_ADMIN.format(what="rollout.strategy"))


_NO_ADMIN = (
    "{what} asks for blue-green swaps, which switch the router through its admin API: set "
    "router.admin_key (a secret reference), or use strategy: rolling"
)
