"""hxp_vllm_router_views, hxp_vllm_router_drains: role vllm's view of the routers it drains a
changed server in before its restart (tasks/restart.yml, rolling.yml). Each router host keeps
its own drains (hxp_runtime.router.shared), so with several routers behind a virtual address
every one of them drains the server: one left out would keep sending it requests."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any


def hxp_vllm_router_views(results: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Router host -> the backends it has, from the results of ``hxp-router admin backends``
    run on each router host (a loop over hxp_vllm_router_hosts). A router that did not answer
    (not deployed or not running yet, unreachable, an answer that is not the admin API's) is
    left out: it routes nothing, so there is nothing to drain there."""
    views = {}
    for result in results:
        if result.get("rc") != 0 or result.get("unreachable") or result.get("skipped"):
            continue
        try:
            backends = json.loads(result.get("stdout", ""))["backends"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(backends, Mapping):
            views[str(result["item"])] = sorted(backends)
    return views


def hxp_vllm_router_drains(
    views: Mapping[str, list[str]], backends: Iterable[str]
) -> list[dict[str, str]]:
    """One ``{"router", "backend"}`` per router and backend of ``backends`` it has, router by
    router: the drains (and later undrains) of one batch. A backend a router does not have yet
    (a model this deploy adds) is not drained there."""
    wanted = list(dict.fromkeys(backends))
    return [
        {"router": router, "backend": backend}
        for router, known in views.items()
        for backend in wanted
        if backend in known
    ]


def hxp_vllm_drains_by_router(drains: Iterable[Mapping[str, str]]) -> dict[str, list[str]]:
    """Router host -> the backends drained there, in the drains' order: what each router's
    workers must route to again before the next batch."""
    by_router: dict[str, list[str]] = {}
    for drain in drains:
        by_router.setdefault(drain["router"], []).append(drain["backend"])
    return by_router


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "hxp_vllm_router_views": hxp_vllm_router_views,
            "hxp_vllm_router_drains": hxp_vllm_router_drains,
            "hxp_vllm_drains_by_router": hxp_vllm_drains_by_router,
        }
