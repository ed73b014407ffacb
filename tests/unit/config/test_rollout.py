"""hxp.yml's rollout section: its defaults, its bounds, and what it renders for role vllm."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hxp_runtime.config import HxpConfig, plan_deployment
from hxp_runtime.config.problems import Problem
from hxp_runtime.render import host_vars, rollout_vars
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
    assert rendered["hxp_vllm_router_hosts"] == ["llm-1"]
    assert rendered["hxp_vllm_rollout_readmit_timeout_s"] == 40


def test_no_admin_key_means_no_drain(load_text: Callable[[str], HxpConfig]) -> None:
    cfg = load_text(BASE)
    assert rollout_vars(cfg, plan_deployment(cfg))["hxp_vllm_router_hosts"] == []


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
    assert sorted(plan.backend_ids().values()) == ["minilm", "phi3", "small"]


def test_blue_green_is_off_unless_asked_for(load_text: Callable[[str], HxpConfig]) -> None:
    cfg = load_text(BASE)
    assert cfg.rollout.strategy == "rolling"
    assert not any(cfg.blue_green_wanted(m) for m in cfg.models)
    per_model = load_text(
        WITH_ADMIN_KEY.replace(
            "    preset: phi-3-mini\n",
            "    preset: phi-3-mini\n    rollout: {strategy: blue-green}\n",
        )
    )
    assert [m.name for m in per_model.models if per_model.blue_green_wanted(m)] == ["phi3"]


def test_blue_green_needs_the_routers_admin_api(
    problems_of: Callable[[str], list[Problem]],
) -> None:
    text = BASE + "rollout: {strategy: blue-green}\n"
    problem = only(problems_of(text))
    assert problem.field == "rollout.strategy"
    assert "set router.admin_key" in problem.message


def test_the_spare_port_may_clash_with_no_other_port(
    problems_of: Callable[[str], list[Problem]],
) -> None:
    # phi3 (port 11403) swaps blue-green: small may not take its spare port.
    text = (
        WITH_ADMIN_KEY.replace("port: 11410", "port: 12403") + "rollout: {strategy: blue-green}\n"
    )
    problem = only(problems_of(text))
    assert problem.message == (
        "port 12403 on host 'llm-1' is already used by model phi3's blue-green spare port "
        "(port + 1000); choose a free port"
    )
    assert problem.field == "models[2].port"


def test_the_spare_port_must_be_a_port(problems_of: Callable[[str], list[Problem]]) -> None:
    text = (
        WITH_ADMIN_KEY.replace("port: 11410", "port: 65000") + "rollout: {strategy: blue-green}\n"
    )
    problem = only(problems_of(text))
    assert problem.field == "models[2].port"
    assert "needs port + 1000 = 66000 as well, above 65535; choose a port up to 64535" in (
        problem.message
    )


def test_rendered_blue_green_follows_the_plan(load_text: Callable[[str], HxpConfig]) -> None:
    # Every tenant of the GPU says what it takes, leaving 0.27 of it (21.6 GiB) free: room for
    # a second copy of small (0.1), not of phi3 (0.5).
    text = WITH_ADMIN_KEY.replace(
        "max_num_seqs: 8}", "max_num_seqs: 8, gpu_memory_utilization: 0.5}"
    ).replace("port: 11410", "port: 11410, engine: {gpu_memory_utilization: 0.1}")
    text = text.replace(
        "    preset: all-minilm-l6-v2\n",
        "    preset: all-minilm-l6-v2\n    engine: {gpu_memory_utilization: 0.05}\n",
    )
    cfg = load_text(text + "rollout: {strategy: blue-green}\n")
    instances = host_vars(cfg, plan_deployment(cfg), "llm-1")["hxp_vllm_instances"]
    rendered = {i["name"]: (i["blue_green"], i["port"], i["spare_port"]) for i in instances}
    assert rendered["small"] == (True, 11410, 12410)
    assert rendered["phi3"] == (False, 11403, 12403)
