"""The hxp_vllm_routers filters: which routers drain a changed model server before its restart,
from what each router's admin API answered (role vllm, tasks/restart.yml and rolling.yml)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.unit.conftest import load_file_module

PLUGIN = Path(__file__).resolve().parents[2] / "plugins/filter/hxp_vllm_routers.py"
routers = load_file_module("hxp_vllm_routers", PLUGIN)


def answered(host: str, *backends: str) -> dict[str, Any]:
    """A result of `hxp-router admin backends` run on ``host`` (a loop item)."""
    view = {name: {"healthy": True, "breaker": "closed"} for name in backends}
    return {"item": host, "rc": 0, "stdout": json.dumps({"backends": view}), "stderr": ""}


def test_every_router_that_answered_drains_the_backends_it_has() -> None:
    views = routers.hxp_vllm_router_views(
        [answered("llm-1", "phi3", "phi3-2", "hermes"), answered("llm-2", "phi3", "phi3-2")]
    )
    assert views == {"llm-1": ["hermes", "phi3", "phi3-2"], "llm-2": ["phi3", "phi3-2"]}
    drains = routers.hxp_vllm_router_drains(views, ["phi3-2", "hermes"])
    assert drains == [
        {"router": "llm-1", "backend": "phi3-2"},
        {"router": "llm-1", "backend": "hermes"},
        {"router": "llm-2", "backend": "phi3-2"},
    ]
    # What the readmit wait checks in each router: the backends drained there, and only those.
    assert routers.hxp_vllm_drains_by_router(drains) == {
        "llm-1": ["phi3-2", "hermes"],
        "llm-2": ["phi3-2"],
    }
    assert routers.hxp_vllm_drains_by_router([]) == {}


def test_a_router_that_did_not_answer_is_left_out() -> None:
    results = [
        answered("llm-1", "phi3"),
        # Not running yet (a first deploy): the admin command fails.
        {"item": "llm-2", "rc": 1, "stdout": "", "stderr": "connection refused"},
        # The host is down: ignore_unreachable leaves a result without rc.
        {"item": "llm-3", "unreachable": True, "msg": "ssh: connect to host: No route"},
        # The task was skipped (nothing to restart).
        {"item": "llm-4", "skipped": True},
        # Something answered that is not the admin API.
        {"item": "llm-5", "rc": 0, "stdout": "<html>", "stderr": ""},
        {"item": "llm-6", "rc": 0, "stdout": '{"backends": ["phi3"]}', "stderr": ""},
    ]
    views = routers.hxp_vllm_router_views(results)
    assert views == {"llm-1": ["phi3"]}
    assert routers.hxp_vllm_router_drains(views, ["phi3"]) == [
        {"router": "llm-1", "backend": "phi3"}
    ]


def test_a_backend_no_router_has_yet_is_drained_nowhere_and_each_pair_once() -> None:
    views = {"llm-1": ["phi3"], "llm-2": ["phi3"]}
    assert routers.hxp_vllm_router_drains(views, ["new-model"]) == []
    assert routers.hxp_vllm_router_drains(views, ["phi3", "phi3"]) == [
        {"router": "llm-1", "backend": "phi3"},
        {"router": "llm-2", "backend": "phi3"},
    ]
    assert routers.hxp_vllm_router_drains({}, ["phi3"]) == []
