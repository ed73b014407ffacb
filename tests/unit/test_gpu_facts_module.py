"""Module hxp_gpu_facts (roles/vllm/library): GPUs via pynvml, and the plan checked against them.

NVML itself is a double (tests/nvml_double.py) because no GPU exists here; the no-driver case
is this machine's real pynvml behaviour.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pynvml

from hxp_runtime.config import HxpConfig, plan_deployment
from hxp_runtime.render import vllm_instance_vars
from tests.nvml_double import FakeGpu, fake_nvml
from tests.unit.conftest import load_file_module

MODULE_PATH = Path(__file__).resolve().parents[2] / "roles/vllm/library/hxp_gpu_facts.py"
GIB = 2**30


def load_module() -> ModuleType:
    return load_file_module("hxp_gpu_facts", MODULE_PATH)


facts_module = load_module()
H100 = FakeGpu(name="NVIDIA H100 80GB HBM3", memory_total=85_520_809_984, memory_used=5 * GIB)


def test_gpus_are_read_through_pynvml() -> None:
    with fake_nvml([H100, FakeGpu(name="NVIDIA L4", uuid="GPU-L4", memory_total=24 * GIB)]):
        facts = facts_module.read_gpus(pynvml)
    assert facts["hxp_nvml_available"] is True
    assert facts["hxp_nvidia_driver_version"] == "550.54.15"
    assert facts["hxp_cuda_driver_version"] == "12.4"
    assert [g["name"] for g in facts["hxp_gpus"]] == ["NVIDIA H100 80GB HBM3", "NVIDIA L4"]
    assert facts["hxp_gpus"][0]["memory_gib"] == 79.6
    assert facts["hxp_gpus"][0]["memory_used_bytes"] == 5 * GIB
    assert facts["hxp_gpus"][1]["uuid"] == "GPU-L4"


def test_no_nvidia_driver_is_a_clear_result_not_a_failure() -> None:
    facts = facts_module.read_gpus(pynvml)  # real pynvml: this machine has no driver
    assert facts["hxp_nvml_available"] is False
    assert "NVML Shared Library Not Found" in facts["hxp_nvml_error"]
    assert facts["hxp_gpus"] == []


def deployment(gpus: list[dict[str, Any]], **engine: Any) -> HxpConfig:
    host = {"name": "llm-1", "address": "10.0.0.1", "groups": ["llm"], "gpus": gpus}
    model = {"name": "phi3", "preset": "phi-3-mini", "engine": {"dtype": "float16", **engine}}
    return HxpConfig.model_validate({"name": "gpu", "hosts": [host], "models": [model]})


def test_gathered_gpus_are_the_planner_input_and_the_plan_fits_them() -> None:
    with fake_nvml([H100]):
        facts = facts_module.read_gpus(pynvml)
    declared = facts_module.config_gpus(facts["hxp_gpus"])
    assert declared == [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_gb": 79.6}]
    cfg = deployment(declared)
    plan = plan_deployment(cfg)
    instances = [vllm_instance_vars(cfg, inst) for inst in plan.instances]
    assert instances[0]["gpu_ids"] == [0]
    assert facts_module.plan_problems(facts["hxp_gpus"], instances) == []


def test_a_plan_made_for_a_bigger_gpu_than_the_host_has_is_refused() -> None:
    cfg = deployment([{"index": 0, "memory_gb": 80}], max_num_seqs=16)
    instances = [vllm_instance_vars(cfg, inst) for inst in plan_deployment(cfg).instances]
    with fake_nvml([FakeGpu(name="NVIDIA L4", memory_total=24 * GIB)]):
        facts = facts_module.read_gpus(pynvml)
    problems = facts_module.plan_problems(facts["hxp_gpus"], instances)
    assert any("model phi3 needs" in p and "GPU 0" in p for p in problems), problems
    assert any("has 24.0 GiB but the plan puts" in p for p in problems), problems


def test_a_gpu_the_host_does_not_have_is_named() -> None:
    gpus = [{"index": 0, "name": "NVIDIA L4", "memory_total_bytes": 24 * GIB, "memory_gib": 24.0}]
    required = [
        {
            "name": "big",
            "gpu_ids": [0, 1],
            "gpu_memory_utilization": 0.9,
            "planned_gpu_memory_gib": 10.0,
        },
    ]
    (problem,) = facts_module.plan_problems(gpus, required)
    assert problem.startswith("model big is planned on GPU 1, which this host does not have")
    assert "0 (NVIDIA L4, 24.0 GiB)" in problem


def test_shares_of_one_gpu_over_the_whole_of_it_are_refused() -> None:
    """vLLM starts a model only when its gpu_memory_utilization share of the GPU is free: two
    models of 0.6 each fit their needs (10 GiB each) and still cannot both start."""
    gpus = [{"index": 0, "name": "NVIDIA L4", "memory_total_bytes": 24 * GIB, "memory_gib": 24.0}]

    def model(name: str, share: float) -> dict[str, Any]:
        return {
            "name": name,
            "gpu_ids": [0],
            "gpu_memory_utilization": share,
            "planned_gpu_memory_gib": 10.0,
        }

    (problem,) = facts_module.plan_problems(gpus, [model("a", 0.6), model("b", 0.6)])
    assert problem.startswith("GPU 0 (NVIDIA L4): the gpu_memory_utilization of the models on")
    assert "add up to 1.20 (a 0.6, b 0.6)" in problem
    assert facts_module.plan_problems(gpus, [model("a", 0.45), model("b", 0.45)]) == []
