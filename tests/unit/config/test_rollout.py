"""hxp.yml's rollout section: its defaults, its bounds, and what it renders for role vllm."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hxp_runtime.config import HxpConfig, plan_deployment
from hxp_runtime.config.problems import Problem
from hxp_runtime.render import backend_ids, host_vars, rollout_vars
from tests.unit.conftest import BASE, line_of, only

WITH_ADMIN_KEY = BASE.replace("router:\n", 'router:\n  admin_key: "env:HXP_ADMIN_KEY"\n')


def test_defaults_change_one_server_at_a_time(load_text: Callable[[str], HxpConfig]) -> None:
    cfg = load_text(BASE)
    assert (cfg.rollout.batch_size, cfg.rollout.drain_deadline_s) == (1, 60)


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("{batch_size: 0}", "rollout.batch_size"),
        ("{drain_deadline_s: -1}", "rollout.drain_deadline_s"),
        ("{drain_deadline_s: 3601}", "rollout.drain_deadline_s"),
        ("{serial: 2}", "rollout.serial"),
    ],
)
def test_out_of_bounds_or_unknown_settings_are_refused_with_their_line(
    problems_of: Callable[[str], list[Problem]], setting: str, field: str
) -> None:
    text = BASE + f"rollout: {setting}\n"
    problem = only(problems_of(text))
    assert problem.field == field
    assert problem.line == line_of(text, "rollout:")


def test_rendered_for_role_vllm(load_text: Callable[[str], HxpConfig]) -> None:
    cfg = load_text(WITH_ADMIN_KEY + "rollout: {batch_size: 2, drain_deadline_s: 15}\n")
    rendered = rollout_vars(cfg, plan_deployment(cfg))
    assert rendered["hxp_vllm_rollout_batch_size"] == 2
    assert rendered["hxp_vllm_rollout_drain_deadline_s"] == 15
    # The router runs on the only llm host; its health checks every 10 s by default.
    assert rendered["hxp_vllm_router_host"] == "llm-1"
    assert rendered["hxp_vllm_rollout_readmit_timeout_s"] == 40


def test_no_admin_key_means_no_drain(load_text: Callable[[str], HxpConfig]) -> None:
    cfg = load_text(BASE)
    assert rollout_vars(cfg, plan_deployment(cfg))["hxp_vllm_router_host"] is None


def test_each_server_knows_its_backend_in_the_router(
    load_text: Callable[[str], HxpConfig],
) -> None:
    cfg = load_text(BASE)
    plan = plan_deployment(cfg)
    instances = host_vars(cfg, plan, "llm-1")["hxp_vllm_instances"]
    assert {i["name"]: i["backend"] for i in instances} == {
        "phi3": "phi3",
        "minilm": "minilm",
        "small": "small",
    }
    assert sorted(backend_ids(plan).values()) == ["minilm", "phi3", "small"]
