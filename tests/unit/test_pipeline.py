"""A model split across LLM hosts (models[].pipeline): validation, the planner's stages, what
render gives role vllm (the head's unit and the headless stage's), and the flows the firewall
admits between the stage hosts only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from hxp_runtime.cli import plan_json
from hxp_runtime.config import (
    ConfigError,
    HxpConfig,
    engine_hosts,
    load_config,
    model_hosts,
    plan_deployment,
    plan_swaps,
)
from hxp_runtime.flows import ENGINE_PORTS, allowed, flow_matrix
from hxp_runtime.planner import stage_layers
from hxp_runtime.render import inventory_files, router_vars
from hxp_runtime.status.targets import host_targets
from tests.playbooks import run_play
from tests.unit.conftest import Problems, line_of, load_file_module, only
from tests.unit.unit_templates import REPO, render

PIPELINE = REPO / "inventory/pipeline/hxp.yml"
NFTABLES = REPO / "roles/firewall/templates/etc/nftables.conf.j2"
VLLM_UNIT = REPO / "roles/vllm/templates/etc/systemd/system/hxp-vllm.service.j2"
HEAD, WORKER = "hx-llm-server-01", "hx-llm-server-02"
hxp_firewall_admits = load_file_module(
    "hxp_firewall_admits", REPO / "plugins/filter/hxp_firewall_admits.py"
).hxp_firewall_admits

# Three GPU hosts with two 80 GB GPUs each and a database host; "big" is split over llm-1 and
# llm-2, "small" runs whole on llm-3.
CONFIG = """\
version: 1
name: unit-pipeline
hosts:
  - {name: llm-1, address: 10.0.0.10, groups: [llm, cache],
     gpus: [{index: 0, memory_gb: 80}, {index: 1, memory_gb: 80}]}
  - {name: llm-2, address: 10.0.0.11, groups: [llm],
     gpus: [{index: 0, memory_gb: 80}, {index: 1, memory_gb: 80}]}
  - {name: llm-3, address: 10.0.0.12, groups: [llm],
     gpus: [{index: 0, memory_gb: 80}, {index: 1, memory_gb: 80}]}
  - {name: db-1, address: 10.0.0.20, groups: [database]}
models:
  - name: big
    architecture: {params_b: 70, num_layers: 80, num_attention_heads: 64, num_kv_heads: 8,
                   head_dim: 128, max_position_embeddings: 8192}
    engine: {dtype: bfloat16, max_model_len: 8192, max_num_seqs: 16}
    PLACEMENT
    port: 11420
    memory_limit_gb: 64
    cpu_cores: 8
    slo: {latency_ms: 4000, throughput_rps: 2}
  - name: small
    host: llm-3
    architecture: {params_b: 0.5, num_layers: 4, num_attention_heads: 8, num_kv_heads: 8,
                   head_dim: 64}
    port: 11421
    memory_limit_gb: 4
    cpu_cores: 2
    slo: {latency_ms: 500, throughput_rps: 10}
router:
  host: llm-1
database:
  router_password: "env:HXP_DB_PASSWORD"
cache:
  password: "env:HXP_REDIS_PASSWORD"
"""
SPLIT = "pipeline: {hosts: [llm-1, llm-2], master_port: 29501}"


def config(placement: str = SPLIT) -> str:
    return CONFIG.replace("PLACEMENT", placement)


@pytest.fixture
def cfg(load_text: Callable[[str], HxpConfig]) -> HxpConfig:
    return load_text(config())


@pytest.fixture(scope="module")
def example() -> HxpConfig:
    return load_config(PIPELINE)


# --------------------------------------------------------------------------- schema and rules


def test_pipeline_excludes_the_other_placements(problems_of: Problems) -> None:
    p = only(problems_of(config(f"{SPLIT}\n    host: llm-1")))
    assert p.field == "models[0]"
    assert "give one of host, hosts, replicas and pipeline, not host and pipeline" in p.message


def test_a_pipeline_needs_two_hosts(problems_of: Problems) -> None:
    p = only(problems_of(config("pipeline: {hosts: [llm-1]}")))
    assert p.field == "models[0].pipeline.hosts"
    assert "at least 2" in p.message


def test_a_stage_host_listed_twice(problems_of: Problems) -> None:
    p = only(problems_of(config("pipeline: {hosts: [llm-1, llm-2, llm-1]}")))
    assert p.field == "models[0].pipeline.hosts"
    assert "names llm-1 more than once; each stage runs on a host of its own" in p.message


def test_an_unknown_stage_host(problems_of: Problems) -> None:
    text = config("pipeline: {hosts: [llm-1, llm-9]}")
    p = only(problems_of(text))
    assert p.field == "models[0].pipeline.hosts[1]"
    assert "host 'llm-9' is not defined" in p.message
    assert p.line == line_of(text, "pipeline: {hosts: [llm-1, llm-9]}")


def test_a_stage_host_outside_group_llm(problems_of: Problems) -> None:
    p = only(problems_of(config("pipeline: {hosts: [llm-1, db-1]}")))
    assert p.field == "models[0].pipeline.hosts[1]"
    assert "host 'db-1' is not in group 'llm'" in p.message


def test_stages_on_one_kind_of_host(problems_of: Problems) -> None:
    text = config().replace(
        "  - {name: llm-2, address: 10.0.0.11, groups: [llm],\n"
        "     gpus: [{index: 0, memory_gb: 80}, {index: 1, memory_gb: 80}]}",
        "  - {name: llm-2, address: 10.0.0.11, groups: [llm], accelerator: cpu}",
    )
    p = only(problems_of(text))
    assert p.field == "models[0].pipeline.hosts"
    assert "different accelerators (llm-2: cpu, llm-1: nvidia)" in p.message


def test_cpu_stages_are_not_eager(problems_of: Problems) -> None:
    cpu_hosts = (
        config()
        .replace(
            "groups: [llm, cache],\n     gpus: [{index: 0, memory_gb: 80}, {index: 1, "
            "memory_gb: 80}]}",
            "groups: [llm, cache], accelerator: cpu}",
        )
        .replace(
            "groups: [llm],\n     gpus: [{index: 0, memory_gb: 80}, {index: 1, memory_gb: 80}]}",
            "groups: [llm], accelerator: cpu}",
            1,
        )
        .replace("max_num_seqs: 16}", "max_num_seqs: 16, extra_args: [--enforce_eager]}", 1)
    )
    p = only(problems_of(cpu_hosts))
    assert p.field == "models[0].engine.extra_args[0]"
    assert "split across CPU hosts" in p.message and "remove --enforce-eager" in p.message


def test_the_master_port_must_be_free_on_the_head(problems_of: Problems) -> None:
    # The router listens on llm-1:8000, the head's host.
    p = only(problems_of(config("pipeline: {hosts: [llm-1, llm-2], master_port: 8000}")))
    assert "port 8000 on host 'llm-1' is already used by" in p.message
    assert {p.field} <= {"router.port", "models[0].pipeline.master_port"}


def test_the_master_port_may_repeat_on_a_worker_host(load_text: Callable[[str], HxpConfig]) -> None:
    # Only the head listens on it: a worker host's own service may use the same number.
    text = config("pipeline: {hosts: [llm-2, llm-1], master_port: 8000}")
    assert model_hosts(load_text(text))["big"] == ("llm-2",)


def test_multi_node_flags_are_not_extra_args(problems_of: Problems) -> None:
    text = config(f"{SPLIT}\n    engine: {{extra_args: [--nnodes=3]}}").replace(
        "    engine: {dtype: bfloat16, max_model_len: 8192, max_num_seqs: 16}\n", "", 1
    )
    p = only(problems_of(text))
    assert p.field == "models[0].engine.extra_args"
    assert "--nnodes is set by hxp" in p.message


def test_blue_green_is_refused_for_a_split_model(problems_of: Problems) -> None:
    text = config(f"{SPLIT}\n    rollout: {{strategy: blue-green}}").replace(
        "router:\n", 'router:\n  admin_key: "env:HXP_ADMIN_KEY"\n'
    )
    p = only(problems_of(text))
    assert p.field == "models[0].rollout.strategy"
    assert "split across hosts (pipeline)" in p.message
    assert "set its rollout.strategy: rolling" in p.message


def test_more_stages_than_layers(problems_of: Problems) -> None:
    text = config("pipeline: {hosts: [llm-1, llm-2, llm-3]}").replace(
        "num_layers: 80", "num_layers: 2", 1
    )
    p = only(problems_of(text))
    assert p.field == "models[0].pipeline.hosts"
    assert "has 2 layers, too few for 3 pipeline stages" in p.message


def test_stages_must_share_one_tensor_parallel_size(problems_of: Problems) -> None:
    # A 30B stage (~56 GiB) needs both 40 GB GPUs of llm-1 but only the one 80 GB GPU of llm-2.
    text = (
        config()
        .replace(
            "  - {name: llm-1, address: 10.0.0.10, groups: [llm, cache],\n"
            "     gpus: [{index: 0, memory_gb: 80}, {index: 1, memory_gb: 80}]}",
            "  - {name: llm-1, address: 10.0.0.10, groups: [llm, cache],\n"
            "     gpus: [{index: 0, memory_gb: 40}, {index: 1, memory_gb: 40}]}",
        )
        .replace(
            "  - {name: llm-2, address: 10.0.0.11, groups: [llm],\n"
            "     gpus: [{index: 0, memory_gb: 80}, {index: 1, memory_gb: 80}]}",
            "  - {name: llm-2, address: 10.0.0.11, groups: [llm],\n"
            "     gpus: [{index: 0, memory_gb: 80}]}",
        )
        .replace("max_num_seqs: 16", "max_num_seqs: 1")
        .replace("params_b: 70", "params_b: 60")
    )
    p = only(problems_of(text))
    assert p.field == "models[0].engine.tensor_parallel_size"
    assert "got different tensor-parallel sizes (llm-1: 2, llm-2: 1)" in p.message


# --------------------------------------------------------------------------- the planner


@pytest.mark.parametrize(
    ("layers", "size", "expected"),
    [
        (80, 2, [(0, 40), (40, 80)]),
        (2, 2, [(0, 1), (1, 2)]),
        # vLLM's get_pp_indices: the remainder goes to the stages before the last.
        (5, 2, [(0, 3), (3, 5)]),
        (7, 3, [(0, 2), (2, 5), (5, 7)]),
        (10, 4, [(0, 2), (2, 5), (5, 8), (8, 10)]),
    ],
)
def test_layers_split_as_vllm_splits_them(
    layers: int, size: int, expected: list[tuple[int, int]]
) -> None:
    assert [stage_layers(layers, rank, size) for rank in range(size)] == expected


def test_the_head_serves_and_the_other_stages_run_headless(cfg: HxpConfig) -> None:
    plan = plan_deployment(cfg)
    assert model_hosts(cfg)["big"] == ("llm-1",)
    assert engine_hosts(cfg)["big"] == ("llm-1", "llm-2")
    assert [(i.model, i.host, i.pipeline_rank) for i in plan.instances] == [
        ("big", "llm-1", 0),
        ("small", "llm-3", 0),
    ]
    assert [(w.model, w.host, w.pipeline_rank, w.layers) for w in plan.workers] == [
        ("big", "llm-2", 1, (40, 80))
    ]
    assert [s.host for s in plan.stages("big")] == ["llm-1", "llm-2"]


def test_each_stage_holds_its_share_of_the_memory(load_text: Callable[[str], HxpConfig]) -> None:
    # 70B in bf16 (130 GiB) + 20 GiB of KV cache do not fit one host's two 80 GB GPUs at 0.9.
    with pytest.raises(ConfigError) as caught:
        load_text(config("host: llm-1"))
    assert "does not fit on llm-1" in only(caught.value.errors).message
    split = plan_deployment(load_text(config()))
    head, worker = split.stages("big")
    whole_weights = 70e9 * 2 / 2**30
    assert head.weights_gib == pytest.approx(whole_weights / 2)
    assert worker.weights_gib == pytest.approx(whole_weights / 2)
    assert head.kv_gib == pytest.approx(worker.kv_gib)
    # Tensor parallel within each host: both GPUs of each, the same size on both.
    assert (head.gpu_ids, head.tensor_parallel_size) == ((0, 1), 2)
    assert (worker.gpu_ids, worker.tensor_parallel_size) == ((0, 1), 2)
    tenants = {(g.host, g.index): g.tenants for g in split.gpus}
    assert tenants[("llm-2", 0)] == ("big",)


def test_plan_shows_the_split(cfg: HxpConfig) -> None:
    plan = plan_deployment(cfg)
    answer = plan_json(plan, plan_swaps(cfg, plan))
    (head,) = [i for i in answer["instances"] if i["model"] == "big"]
    assert head["pipeline"] == {"rank": 0, "size": 2, "layers": [0, 40]}
    assert [(w["host"], w["pipeline"]) for w in answer["pipeline_workers"]] == [
        ("llm-2", {"rank": 1, "size": 2, "layers": [40, 80]})
    ]
    (small,) = [i for i in answer["instances"] if i["model"] == "small"]
    assert "pipeline" not in small


# --------------------------------------------------------------------------- render


def test_render_gives_the_head_and_the_worker_their_stage(cfg: HxpConfig) -> None:
    files = inventory_files(cfg, plan_deployment(cfg))
    head = files[Path("host_vars/llm-1/hxp.yml")]
    worker = files[Path("host_vars/llm-2/hxp.yml")]
    (server,) = [i for i in head["hxp_vllm_instances"] if i["name"] == "big"]
    assert server["unit"] == "hxp-vllm-big"
    assert server["pipeline"] == {
        "size": 2,
        "rank": 0,
        "layers": [0, 40],
        "head": "llm-1",
        "master_address": "10.0.0.10",
        "master_port": 29501,
    }
    assert "hxp_vllm_pipeline_workers" not in head
    assert worker["hxp_vllm_instances"] == []
    (stage,) = worker["hxp_vllm_pipeline_workers"]
    assert stage["unit"] == "hxp-vllm-big-stage2"
    assert stage["pipeline"]["rank"] == 1
    assert stage["pipeline"]["master_address"] == "10.0.0.10"
    # A model that is not split keeps its vars as they were.
    small = files[Path("host_vars/llm-3/hxp.yml")]["hxp_vllm_instances"][0]
    assert "pipeline" not in small


def test_the_router_routes_to_the_head_only(cfg: HxpConfig) -> None:
    backends = router_vars(cfg, plan_deployment(cfg))["hxp_router_settings"]["backends"]
    assert [b["url"] for b in backends if b["name"] == "big"] == ["http://10.0.0.10:11420"]


def test_the_head_unit_serves_and_waits_for_readiness(example: HxpConfig) -> None:
    unit = render(VLLM_UNIT, "pipeline")
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "--host 10.77.50.10 --port 11420" in exec_start
    assert (
        "--pipeline-parallel-size 2 --distributed-executor-backend mp --nnodes 2 "
        "--node-rank 0 --master-addr 10.77.50.10 --master-port 29501 --tensor-parallel-size 2"
    ) in exec_start
    assert "--headless" not in exec_start
    assert "ExecStartPost=" in unit and "vllm_ready.py" in unit


def test_the_worker_unit_runs_headless(example: HxpConfig) -> None:
    unit = render(VLLM_UNIT, "pipeline", host=WORKER, units="hxp_vllm_pipeline_workers")
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "--node-rank 1 --master-addr 10.77.50.10 --master-port 29501 --headless" in exec_start
    assert "--port" not in exec_start.replace("--master-port", "")
    assert "--host" not in exec_start
    assert "ExecStartPost=" not in unit
    assert "Description=vLLM pipeline stage 2/2 of llama70b (head on hx-llm-server-01)" in unit
    # The engine's sockets bind the host's own address, which the head reaches.
    assert "Environment=VLLM_HOST_IP=10.77.50.11" in unit


def test_status_checks_the_worker_unit_and_the_head_model(cfg: HxpConfig) -> None:
    targets = {t.name: t for t in host_targets(cfg, plan_deployment(cfg))}
    assert [(u.unit, u.model) for u in targets["llm-2"].units if u.model] == [
        ("hxp-vllm-big-stage2", "big")
    ]
    assert targets["llm-2"].models == []
    assert [m.url for m in targets["llm-1"].models if m.model == "big"] == [
        "http://10.0.0.10:11420"
    ]


# --------------------------------------------------------------------------- flows


def test_engine_traffic_only_between_the_stage_hosts(cfg: HxpConfig) -> None:
    flows = flow_matrix(cfg, plan_deployment(cfg))
    llm1, llm2, llm3, db = "10.0.0.10", "10.0.0.11", "10.0.0.12", "10.0.0.20"
    # The worker joins the head's store; then both reach each other's ephemeral sockets.
    assert allowed(flows, llm2, "llm-1", 29501)
    assert allowed(flows, llm2, "llm-1", 40000)
    assert allowed(flows, llm1, "llm-2", 40000)
    # No other host reaches them, nor does the worker's host reach the third host.
    for source in (llm3, db, "10.9.9.9"):
        assert not allowed(flows, source, "llm-1", 29501)
        assert not allowed(flows, source, "llm-2", 40000)
    assert not allowed(flows, llm2, "llm-3", 40000)
    assert not allowed(flows, llm1, "llm-3", 40000)
    # The router reaches the head's API, never the headless stage's (which has none).
    assert allowed(flows, llm1, "llm-1", 11420)
    assert not any(f.destination == "llm-2" and f.port == 11420 for f in flows)


def test_the_engine_range_is_the_llm_hosts_ephemeral_range() -> None:
    defaults = yaml.safe_load((REPO / "roles/common/defaults/main.yml").read_text())
    first, last = defaults["hxp_common_sysctl_llm"]["net.ipv4.ip_local_port_range"].split()
    assert (int(first), int(last)) == ENGINE_PORTS


def test_the_firewall_writes_the_range_as_one_rule(example: HxpConfig) -> None:
    ruleset = render(NFTABLES, "pipeline", WORKER)
    (rule,) = [line.strip() for line in ruleset.splitlines() if "engine sockets" in line]
    assert rule.startswith("ip saddr { 10.77.50.10/32 } tcp dport 10240-65000 accept")
    # And the check before the rules apply reads the range the same way.
    inbound = example_inbound(WORKER)
    assert hxp_firewall_admits(inbound, "10.77.50.10", 40000)
    assert not hxp_firewall_admits(inbound, "10.77.50.12", 40000)
    assert not hxp_firewall_admits(inbound, "10.77.50.10", 65001)


def example_inbound(host: str) -> list[dict[str, Any]]:
    files = yaml.safe_load((REPO / f"tests/golden/pipeline/host_vars/{host}/hxp.yml").read_text())
    inbound: list[dict[str, Any]] = files["hxp_firewall_inbound"]
    return inbound


# Role vllm installs a C++ compiler where vLLM compiles a model on CPU (_hxp_vllm_compiles_on_cpu,
# roles/vllm/vars/main.yml): each task gives the host's engines and what the variable must be.
COMPILER_PLAY = """\
- name: Which hosts need the C++ compiler
  hosts: localhost
  gather_facts: false
  vars_files: [{vars_file}]
  vars:
    eager: {{name: a, extra_args: [--enforce-eager]}}
    compiled: {{name: b, extra_args: []}}
  tasks:
{tasks}
"""
COMPILER_CASES = [
    ("cpu", "[eager]", "[]", False),  # the main lab: every engine eager
    ("cpu", "[eager, compiled]", "[]", True),
    ("cpu", "[]", "[compiled]", True),  # a host with only a pipeline stage
    ("nvidia", "[compiled]", "[compiled]", False),
]


@pytest.mark.slow  # runs ansible-playbook
def test_the_compiler_goes_to_cpu_hosts_with_a_compiled_engine(tmp_path: Path) -> None:
    tasks = "".join(
        f"""    - name: Case {n}
      ansible.builtin.assert:
        that: (_hxp_vllm_compiles_on_cpu | bool) == {expected}
      vars:
        hxp_vllm_device: {device}
        hxp_vllm_instances: "{{{{ {instances} }}}}"
        hxp_vllm_pipeline_workers: "{{{{ {workers} }}}}"
"""
        for n, (device, instances, workers, expected) in enumerate(COMPILER_CASES)
    )
    play = COMPILER_PLAY.format(vars_file=REPO / "roles/vllm/vars/main.yml", tasks=tasks)
    rc, progress, output = run_play(tmp_path, play, "localhost,", {})
    assert rc == 0, output
    assert progress.counts["localhost"]["ok"] == len(COMPILER_CASES), output
