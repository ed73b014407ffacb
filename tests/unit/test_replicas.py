"""Replicas of a model on several LLM hosts (models[].hosts, models[].replicas): validation,
the planner's choice of hosts and placement, and what render, the flows, the scrape config and
`hxp status` derive from the replicas."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from hxp_runtime.config import (
    ConfigError,
    HxpConfig,
    load_config,
    model_hosts,
    plan_deployment,
)
from hxp_runtime.config.schema import ExpectedService, Service, StatusSettings
from hxp_runtime.flows import allowed, flow_matrix
from hxp_runtime.observability.scrape import vllm_targets
from hxp_runtime.planner import PlanError
from hxp_runtime.render import inventory_files
from hxp_runtime.status.collect import HostAnswer
from hxp_runtime.status.targets import host_targets
from hxp_runtime.status.verdict import judge
from tests.unit.conftest import Problems, line_of, only

REPO = Path(__file__).resolve().parents[2]
LAB_SCALE = REPO / "inventory/lab-scale/hxp.yml"

SMALL = """{name: small, port: 11410, memory_limit_gb: 4, cpu_cores: 2,
     slo: {latency_ms: 500, throughput_rps: 10}, REPLICAS
     architecture: {params_b: 0.5, num_layers: 4, num_attention_heads: 8, num_kv_heads: 8,
                    head_dim: 64}}"""
# Three GPU hosts; phi3 (memory_limit_gb 4) names two of them, small asks for replicas.
CONFIG = """\
version: 1
name: unit-replicas
hosts:
  - {name: llm-1, address: 10.0.0.10, groups: [llm, cache], memory_gb: 64,
     gpus: [{index: 0, memory_gb: 80}]}
  - {name: llm-2, address: 10.0.0.11, groups: [llm], memory_gb: 64,
     gpus: [{index: 0, memory_gb: 80}]}
  - {name: llm-3, address: 10.0.0.12, groups: [llm], memory_gb: 64,
     gpus: [{index: 0, memory_gb: 80}]}
  - {name: db-1, address: 10.0.0.20, groups: [database]}
models:
  - name: phi3
    preset: phi-3-mini
    engine: {dtype: float16, max_model_len: 4096, max_num_seqs: 8}
    hosts: [llm-2, llm-1]
  - SMALL
router:
  host: llm-1
database:
  router_password: "env:HXP_DB_PASSWORD"
cache:
  password: "env:HXP_REDIS_PASSWORD"
"""


def config(replicas: str = "replicas: 2,", small: str = SMALL) -> str:
    return CONFIG.replace("SMALL", small.replace("REPLICAS", replicas))


@pytest.fixture
def cfg(load_text: Callable[[str], HxpConfig]) -> HxpConfig:
    return load_text(config())


@pytest.fixture(scope="module")
def lab_scale() -> HxpConfig:
    return load_config(LAB_SCALE)


# --------------------------------------------------------------------------- schema and rules


def test_host_hosts_and_replicas_exclude_each_other(problems_of: Problems) -> None:
    text = config("replicas: 2, host: llm-1,")
    p = only(problems_of(text))
    assert p.field == "models[1]"
    assert "give one of host, hosts, replicas and pipeline, not host and replicas" in p.message


def test_a_host_listed_twice(problems_of: Problems) -> None:
    text = config().replace("hosts: [llm-2, llm-1]", "hosts: [llm-2, llm-1, llm-2]")
    p = only(problems_of(text))
    assert p.field == "models[0]"
    assert "hosts names llm-2 more than once" in p.message


def test_a_model_without_a_host_among_several(problems_of: Problems) -> None:
    p = only(problems_of(config("")))
    assert p.field == "models[1]"
    assert p.message.endswith(
        "set models[1].host, or hosts (a replica on each), replicas (how many) or pipeline "
        "(one server split across hosts)"
    )


def test_an_unknown_replica_host(problems_of: Problems) -> None:
    text = config().replace("hosts: [llm-2, llm-1]", "hosts: [llm-2, llm-9]")
    p = only(problems_of(text))
    assert p.field == "models[0].hosts[1]"
    assert "host 'llm-9' is not defined" in p.message
    assert p.line == line_of(text, "hosts: [llm-2, llm-9]")


def test_a_replica_host_outside_group_llm(problems_of: Problems) -> None:
    text = config().replace("hosts: [llm-2, llm-1]", "hosts: [db-1, llm-1]")
    p = only(problems_of(text))
    assert p.field == "models[0].hosts[0]"
    assert "host 'db-1' is not in group 'llm'" in p.message


def test_more_replicas_than_llm_hosts(problems_of: Problems) -> None:
    p = only(problems_of(config("replicas: 4,")))
    assert p.field == "models[1].replicas"
    assert "asks for 4 replicas but 3 hosts are in group 'llm' (llm-1, llm-2, llm-3)" in p.message


def test_replicas_without_room(problems_of: Problems) -> None:
    # Each host states 64 GiB; phi3 took 4 on llm-1 and llm-2: only llm-3 holds 62 more.
    text = config("replicas: 2,").replace(
        "memory_limit_gb: 4, cpu_cores: 2", "memory_limit_gb: 62, cpu_cores: 2"
    )
    p = only(problems_of(text))
    assert p.field == "models[1].replicas"
    assert "fewer llm hosts have 62 GiB (its memory_limit_gb) left" in p.message


def test_a_port_clash_on_one_replica_host(problems_of: Problems) -> None:
    # small's replicas go to llm-3 and llm-1; the router's port on llm-1 clashes with one.
    text = config().replace("router:\n  host: llm-1\n", "router:\n  host: llm-1\n  port: 11410\n")
    p = only(problems_of(text))
    assert p.field == "router.port"
    assert "port 11410 on host 'llm-1' is already used by model small" in p.message


def test_blue_green_is_refused_for_replicas(problems_of: Problems) -> None:
    text = config() + "rollout: {strategy: blue-green}\n"
    text = text.replace("router:\n", 'router:\n  admin_key: "env:HXP_ADMIN_KEY"\n')
    problems = problems_of(text)
    assert {p.field for p in problems} == {"rollout.strategy"}
    assert all("set its rollout.strategy: rolling" in p.message for p in problems)
    assert {p.message.split()[1] for p in problems} == {"phi3", "small"}


def test_one_replica_may_swap_blue_green(load_text: Callable[[str], HxpConfig]) -> None:
    text = config("replicas: 1, rollout: {strategy: blue-green},")
    text = text.replace("router:\n", 'router:\n  admin_key: "env:HXP_ADMIN_KEY"\n')
    assert model_hosts(load_text(text))["small"] == ("llm-3",)


# --------------------------------------------------------------------------- the planner


def test_replicas_go_to_the_hosts_with_the_most_free_memory(cfg: HxpConfig) -> None:
    # llm-3 has all its 64 GiB free; llm-1 and llm-2 60 each, the tie to the one listed first.
    assert model_hosts(cfg) == {"phi3": ("llm-2", "llm-1"), "small": ("llm-1", "llm-3")}


def test_the_choice_of_hosts_is_deterministic(load_text: Callable[[str], HxpConfig]) -> None:
    first, second = load_text(config()), load_text(config())
    assert model_hosts(first) == model_hosts(second)
    assert plan_deployment(first) == plan_deployment(second)


def test_each_replica_is_placed_on_its_hosts_gpus(cfg: HxpConfig) -> None:
    plan = plan_deployment(cfg)
    rows = [(i.model, i.host, i.port, i.gpu_ids) for i in plan.instances]
    # hxp.yml's order of models, a model's replicas in the order of its hosts.
    assert rows == [
        ("phi3", "llm-2", 11403, (0,)),
        ("phi3", "llm-1", 11403, (0,)),
        ("small", "llm-1", 11410, (0,)),
        ("small", "llm-3", 11410, (0,)),
    ]
    tenants = {(g.host, g.index): g.tenants for g in plan.gpus}
    assert tenants == {
        ("llm-1", 0): ("phi3", "small"),
        ("llm-2", 0): ("phi3",),
        ("llm-3", 0): ("small",),
    }


def test_a_replica_that_does_not_fit_names_its_host(load_text: Callable[[str], HxpConfig]) -> None:
    text = config().replace(
        "- {name: llm-2, address: 10.0.0.11, groups: [llm], memory_gb: 64,\n"
        "     gpus: [{index: 0, memory_gb: 80}]}",
        "- {name: llm-2, address: 10.0.0.11, groups: [llm], memory_gb: 64,\n"
        "     gpus: [{index: 0, memory_gb: 4}]}",
    )
    with pytest.raises(ConfigError) as caught:
        load_text(text)
    p = only(caught.value.errors)
    assert p.field == "models[0]"
    assert "model 'phi3' does not fit on llm-2" in p.message


def test_plan_error_lists_each_replica_that_does_not_fit(cfg: HxpConfig) -> None:
    small_gpus = cfg.model_copy(
        update={
            "hosts": [
                h.model_copy(
                    update={"gpus": [g.model_copy(update={"memory_gb": 4.0}) for g in h.gpus]}
                )
                for h in cfg.hosts
            ]
        }
    )
    with pytest.raises(PlanError) as caught:
        plan_deployment(small_gpus)
    unfit = sorted(p.message.split(":")[0] for p in caught.value.problems)
    assert unfit == [
        "model 'phi3' does not fit on llm-1",
        "model 'phi3' does not fit on llm-2",
    ]


# --------------------------------------------------------------------------- what derives from it


def test_the_router_gets_a_backend_per_replica(lab_scale: HxpConfig) -> None:
    files = inventory_files(lab_scale, plan_deployment(lab_scale))
    backends = files[Path("group_vars/all/hxp.yml")]["hxp_router_settings"]["backends"]
    assert [(b["name"], b["url"]) for b in backends] == [
        ("phi3", "http://10.78.0.10:11403"),
        ("phi3", "http://10.78.0.11:11403"),
        ("hermes", "http://10.78.0.10:11401"),
        ("hermes", "http://10.78.0.11:11401"),
    ]
    assert set(plan_deployment(lab_scale).backend_ids().values()) == {
        "phi3",
        "phi3-2",
        "hermes",
        "hermes-2",
    }


def test_each_llm_host_gets_exactly_its_replicas(lab_scale: HxpConfig) -> None:
    files = inventory_files(lab_scale, plan_deployment(lab_scale))

    def instances(host: str) -> list[tuple[str, str, int]]:
        found = files[Path("host_vars", host, "hxp.yml")]["hxp_vllm_instances"]
        return [(i["name"], i["backend"], i["port"]) for i in found]

    assert instances("hx-llm-server-01") == [("phi3", "phi3", 11403), ("hermes", "hermes", 11401)]
    assert instances("hx-llm-server-02") == [
        ("phi3", "phi3-2", 11403),
        ("hermes", "hermes-2", 11401),
    ]
    assert instances("hx-postgres-server-01") == []
    # No replica swaps blue-green; the rolling path drains each by its backend id.
    host_vars = files[Path("host_vars/hx-llm-server-02/hxp.yml")]
    assert not any(i["blue_green"] for i in host_vars["hxp_vllm_instances"])
    # A router on each LLM host: a restarting replica is drained in both.
    assert files[Path("group_vars/all/hxp.yml")]["hxp_vllm_router_hosts"] == [
        "hx-llm-server-01",
        "hx-llm-server-02",
    ]


def test_flows_admit_the_router_and_prometheus_to_every_replica(lab_scale: HxpConfig) -> None:
    flows = flow_matrix(lab_scale, plan_deployment(lab_scale))
    routers, monitor, other = ("10.78.0.10", "10.78.0.11"), "10.78.0.13", "10.78.0.12"
    for host in ("hx-llm-server-01", "hx-llm-server-02"):
        for port in (11401, 11403):
            assert all(allowed(flows, router, host, port) for router in routers)
            assert allowed(flows, monitor, host, port)
            assert not allowed(flows, other, host, port)


def test_prometheus_scrapes_each_replica(lab_scale: HxpConfig) -> None:
    targets = [
        (t["slots"], t["labels"]["host"], t["labels"]["model"])
        for t in vllm_targets(lab_scale, plan_deployment(lab_scale))
    ]
    assert targets == [
        ({"blue": "10.78.0.10:11403"}, "hx-llm-server-01", "phi3"),
        ({"blue": "10.78.0.11:11403"}, "hx-llm-server-02", "phi3"),
        ({"blue": "10.78.0.10:11401"}, "hx-llm-server-01", "hermes"),
        ({"blue": "10.78.0.11:11401"}, "hx-llm-server-02", "hermes"),
    ]


def test_status_looks_at_each_replica_on_its_host(lab_scale: HxpConfig) -> None:
    targets = {t.name: t for t in host_targets(lab_scale, plan_deployment(lab_scale))}
    for host, address in (("hx-llm-server-01", "10.78.0.10"), ("hx-llm-server-02", "10.78.0.11")):
        target = targets[host]
        assert [(m.model, m.url) for m in target.models] == [
            ("phi3", f"http://{address}:11403"),
            ("hermes", f"http://{address}:11401"),
        ]
        assert [u.unit for u in target.units if u.model] == ["hxp-vllm-phi3", "hxp-vllm-hermes"]
    assert [m.backend for m in targets["hx-llm-server-02"].models] == ["phi3-2", "hermes-2"]
    # Each LLM host runs a router (behind the virtual address): status asks both.
    assert targets["hx-llm-server-01"].router_admin
    assert targets["hx-llm-server-02"].router_admin
    for host in ("hx-llm-server-01", "hx-llm-server-02"):
        assert any(u.unit == "hxp-router" for u in targets[host].units), host


def test_the_lab_scale_config_validates_and_plans(lab_scale: HxpConfig) -> None:
    assert model_hosts(lab_scale) == {
        "phi3": ("hx-llm-server-01", "hx-llm-server-02"),
        "hermes": ("hx-llm-server-01", "hx-llm-server-02"),
    }
    plan = plan_deployment(lab_scale)
    assert {(i.model, i.host, i.device) for i in plan.instances} == {
        (model, host, "cpu")
        for model in ("phi3", "hermes")
        for host in ("hx-llm-server-01", "hx-llm-server-02")
    }
    # Its own lab beside the main one: another bridge, network and state directory.
    main = load_config(REPO / "inventory/lab/hxp.yml")
    assert lab_scale.lab is not None and main.lab is not None
    assert lab_scale.name != main.name
    assert lab_scale.lab.bridge != main.lab.bridge
    assert lab_scale.lab.gateway.network != main.lab.gateway.network
    assert lab_scale.lab.state_dir != main.lab.state_dir
    # The servers' memory limits stay well under the 10 GiB the whole lab may take.
    assert sum(lab_scale.model(i.model).memory_limit_gb for i in plan.instances) <= 8


def test_status_judges_each_replica_as_a_backend_of_its_host(lab_scale: HxpConfig) -> None:
    targets = host_targets(lab_scale, plan_deployment(lab_scale))
    up = {"healthy": True, "breaker": "closed", "in_flight": 0, "draining": False}
    # The router knows phi3-2 (unhealthy) but not hermes-2, both on hx-llm-server-02.
    backends = {"phi3": up, "phi3-2": {**up, "healthy": False}, "hermes": up}
    router = {"router:backends": {"status": 200, "error": None, "body": {"backends": backends}}}
    answers = {
        t.name: HostAnswer(
            t.name,
            {"units": {}, "http": router if t.router_admin else {}, "skipped": {}},
            None,
            0.1,
        )
        for t in targets
    }
    degraded = judge(lab_scale, targets, answers).degraded
    assert "backend hermes-2: the router does not know it" in degraded
    assert "backend phi3-2 in the router: unhealthy" in degraded
    assert not any(line.startswith(("backend phi3:", "backend hermes:")) for line in degraded)
    # Known to be off on hx-llm-server-02: both are expected there, not degraded.
    off = ExpectedService(
        service=Service.VLLM, host="hx-llm-server-02", state="stopped", reason="maintenance"
    )
    quiet = lab_scale.model_copy(update={"status": StatusSettings(expected=[off])})
    verdict = judge(quiet, targets, answers)
    assert not any("hermes-2" in line or "phi3-2" in line for line in verdict.degraded)
    assert "vllm on hx-llm-server-02 stopped: maintenance" in verdict.expected


def test_rolling_changes_take_one_llm_host_at_a_time() -> None:
    # Two replicas of a model must never restart together; routers run on their hosts only, one
    # host at a time.
    # (The first play converges the hosts of pipeline stages, the second every llm host.)
    plays = yaml.safe_load((REPO / "playbooks/llm.yml").read_text(encoding="utf-8"))
    assert [(play["hosts"], play["serial"]) for play in plays] == [("llm", 1), ("llm", 1)]
    (router,) = yaml.safe_load((REPO / "playbooks/router.yml").read_text(encoding="utf-8"))
    assert router["serial"] == 1
    (leave,) = router["pre_tasks"]
    assert leave["ansible.builtin.meta"] == "end_host"
    assert leave["when"] == "inventory_hostname not in hxp_router_hosts"
