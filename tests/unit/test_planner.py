"""Planner maths against hand-computed cases (GiB = 2**30 bytes): through hxp.yml (the models
sized by hxp_runtime.config.fit) and on plain data (plan_models, no config at all).

Mixtral-8x7B: 46.7e9 parameters, 32 layers, 8 KV heads of 128, 32 attention heads.
  fp16 weights = 46.7e9 * 2 / 2**30 = 86.9855 GiB
  KV per token = 2 * 32 * 8 * 128 * 2 B = 131072 B; x 4096 tokens x 16 seqs = 8 GiB
Phi-3-mini: 3.82e9 parameters, 32 layers, 32 KV heads of 96.
  fp16 weights = 3.82e9 * 2 / 2**30 = 7.1153 GiB
  KV per token = 2 * 32 * 32 * 96 * 2 B = 393216 B; x 4096 x 16 = 24 GiB; x 4096 x 8 = 12 GiB
Overhead 2 GiB per GPU; usable = memory x 0.92 (80 GB -> 73.6, 24 GB -> 22.08).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hxp_runtime.config import HxpConfig, Problem, apply_change, plan_deployment, plan_swaps
from hxp_runtime.modelinfo import (
    ModelInfoError,
    ModelShape,
    params_from_config,
    safetensors_param_count,
    shape_from_directory,
)
from hxp_runtime.planner import (
    Change,
    EngineSpec,
    GpuSpec,
    HostSpec,
    PlanError,
    PlannerSettings,
    PlanProblem,
    SizedModel,
    plan_models,
    with_change,
)
from tests.unit.conftest import BASE, line_of

MIXTRAL_WEIGHTS = 46.7e9 * 2 / 2**30
PHI3_WEIGHTS = 3.82e9 * 2 / 2**30


def deployment(
    gpu_gb: float, gpu_count: int, *models: dict[str, Any], placement: str = "best-fit"
) -> HxpConfig:
    return HxpConfig.model_validate(
        {
            "name": "plan",
            "hosts": [
                {
                    "name": "llm-1",
                    "address": "10.0.0.1",
                    "groups": ["llm"],
                    "gpus": [{"index": i, "memory_gb": gpu_gb} for i in range(gpu_count)],
                }
            ],
            "models": list(models),
            "planner": {"placement": placement},
        }
    )


def changes(problem: PlanProblem) -> list[Change]:
    return [s.change for s in problem.suggestions]


def mixtral(**engine: Any) -> dict[str, Any]:
    return {"name": "mixtral", "preset": "mixtral-8x7b", "engine": {"dtype": "float16", **engine}}


def phi3(name: str = "phi3", port: int = 11403, **engine: Any) -> dict[str, Any]:
    return {
        "name": name,
        "preset": "phi-3-mini",
        "port": port,
        "engine": {"dtype": "float16", **engine},
    }


def test_mixtral_fp16_does_not_fit_one_80gb_gpu_and_says_what_would() -> None:
    with pytest.raises(PlanError) as caught:
        plan_deployment(deployment(80, 1, mixtral()))
    message = caught.value.problems[0].message
    # 86.99 + 8 + 2 = 96.99 GiB > 73.6 GiB usable
    assert "needs 97.0 GiB per GPU with tensor_parallel_size 1" in message
    assert "weights 87.0 GiB + KV cache 8.0 GiB" in message
    # fp8 halves the weights: 43.49 + 8 + 2 = 53.49
    assert "quantization: fp8 (needs 53.5 GiB per GPU)" in message
    # two GPUs: 94.99 / 2 + 2 = 49.49; no change to the entry gives a host more GPUs
    assert "a host with 2 such GPUs" in message
    assert changes(caught.value.problems[0]) == [{"engine.quantization": "fp8"}]


def test_mixtral_fp16_on_two_80gb_gpus_uses_tensor_parallel_2() -> None:
    plan = plan_deployment(deployment(80, 2, mixtral()))
    inst = plan.instance("mixtral")
    assert inst.gpu_ids == (0, 1)
    assert inst.tensor_parallel_size == 2
    assert inst.weights_gib == pytest.approx(MIXTRAL_WEIGHTS)
    assert inst.kv_gib == pytest.approx(8.0)
    assert inst.need_per_gpu_gib == pytest.approx((MIXTRAL_WEIGHTS + 8) / 2 + 2)  # 49.49
    # alone on its GPUs: it may use all of max_gpu_utilization
    assert inst.gpu_memory_utilization == 0.92


def test_mixtral_on_four_24gb_gpus_needs_quantization() -> None:
    with pytest.raises(PlanError) as caught:
        plan_deployment(deployment(24, 4, mixtral()))
    message = caught.value.problems[0].message
    # best it can do is TP 4: 94.99 / 4 + 2 = 25.75 > 22.08
    assert "needs 25.7 GiB per GPU with tensor_parallel_size 4" in message
    # fp8 at TP 4: (43.49 + 8) / 4 + 2 = 14.87
    assert "quantization: fp8 (needs 14.9 GiB per GPU)" in message
    # 8 GPUs: 94.99 / 8 + 2 = 13.87
    assert "a host with 8 such GPUs" in message


def test_mixtral_awq_on_four_24gb_gpus_fits() -> None:
    plan = plan_deployment(deployment(24, 4, mixtral(quantization="awq")))
    inst = plan.instance("mixtral")
    # 4-bit weights: 46.7e9 * 0.5 / 2**30 = 21.746 GiB; needs TP 2: (21.746 + 8) / 2 + 2 = 16.87
    assert inst.weights_gib == pytest.approx(46.7e9 * 0.5 / 2**30)
    assert inst.tensor_parallel_size == 2
    assert inst.need_per_gpu_gib == pytest.approx((46.7e9 * 0.5 / 2**30 + 8) / 2 + 2)


def test_phi3_on_80gb_gpu() -> None:
    plan = plan_deployment(deployment(80, 1, phi3(max_model_len=4096, max_num_seqs=16)))
    inst = plan.instance("phi3")
    assert inst.weights_gib == pytest.approx(PHI3_WEIGHTS)
    assert inst.kv_gib == pytest.approx(24.0)
    assert inst.need_per_gpu_gib == pytest.approx(PHI3_WEIGHTS + 24 + 2)  # 33.12
    assert inst.gpu_memory_utilization == 0.92
    assert inst.headroom_gib == pytest.approx(80 * 0.92 - (PHI3_WEIGHTS + 26))


PHI3_SHAPE = ModelShape(
    params=3.82e9, num_layers=32, num_attention_heads=32, num_kv_heads=32, head_dim=96
)
SETTINGS = PlannerSettings(placement="best-fit", max_gpu_utilization=0.92, overhead_gib_per_gpu=2)


def sized_phi3(name: str = "phi3", host: str = "llm-1", **engine: Any) -> SizedModel:
    fields: dict[str, Any] = {
        "dtype": "float16",
        "quantization": None,
        "kv_cache_dtype": "auto",
        "max_model_len": 4096,
        "max_num_seqs": 16,
        "tensor_parallel_size": None,
        "gpu_memory_utilization": None,
    }
    return SizedModel(
        position=0,
        name=name,
        host=host,
        port=11403,
        task="generate",
        gpus="auto",
        engine=EngineSpec(**{**fields, **engine}),
        shape=PHI3_SHAPE,
    )


def gpu_host(name: str, gpu_gib: float, count: int) -> HostSpec:
    return HostSpec(name, "nvidia", tuple(GpuSpec(i, "GPU", gpu_gib) for i in range(count)))


def test_plan_models_places_plain_data() -> None:
    plan = plan_models(SETTINGS, {"llm-1": gpu_host("llm-1", 80, 1)}, [sized_phi3()])
    inst = plan.instance("phi3")
    assert inst.need_per_gpu_gib == pytest.approx(PHI3_WEIGHTS + 24 + 2)
    assert (inst.gpu_ids, inst.gpu_memory_utilization, inst.start_order) == ((0,), 0.92, 1)


def test_plan_models_names_the_entry_by_its_position_and_suggests_changes() -> None:
    model = replace(sized_phi3(), position=3)
    with pytest.raises(PlanError) as caught:
        plan_models(SETTINGS, {"llm-1": gpu_host("llm-1", 24, 1)}, [model])
    (problem,) = caught.value.problems
    assert problem.path == ("models", 3)
    assert changes(problem) == [{"engine.max_model_len": 2212}, {"engine.max_num_seqs": 8}]


def test_plan_models_keeps_each_host_to_itself() -> None:
    hosts = {"a": gpu_host("a", 80, 1), "b": HostSpec("b", "cpu", ())}
    models = [sized_phi3("on-a", "a"), replace(sized_phi3("on-b", "b"), position=1)]
    plan = plan_models(SETTINGS, hosts, models)
    assert [(i.model, i.host, i.device) for i in plan.instances] == [
        ("on-a", "a", "cuda"),
        ("on-b", "b", "cpu"),
    ]
    assert [g.host for g in plan.gpus] == ["a"]


def test_with_change_reads_hxp_yml_keys() -> None:
    model = sized_phi3()
    changed = with_change(model, {"gpus": 2, "engine.tensor_parallel_size": 2})
    assert (changed.gpus, changed.engine.tensor_parallel_size) == (2, 2)
    assert changed.engine.max_model_len == model.engine.max_model_len
    assert with_change(model, {"engine.max_num_seqs": 4}).engine.max_num_seqs == 4
    with pytest.raises(ValueError, match=r"does not read 'slo\.latency_ms'"):
        with_change(model, {"slo.latency_ms": 5})


def test_phi3_does_not_fit_24gb_with_16_sequences_and_suggests_shorter_context() -> None:
    with pytest.raises(PlanError) as caught:
        plan_deployment(deployment(24, 1, phi3(max_model_len=4096, max_num_seqs=16)))
    message = caught.value.problems[0].message
    assert "needs 33.1 GiB per GPU" in message
    # KV room = 22.08 - 2 - 7.1153 = 12.9647 GiB; 24 GiB / 4096 tokens -> 2212 tokens
    assert "max_model_len: 2212 (with max_num_seqs 16)" in message
    # 1.5 GiB per sequence -> 8 sequences
    assert "max_num_seqs: 8 (with max_model_len 4096)" in message
    assert changes(caught.value.problems[0]) == [
        {"engine.max_model_len": 2212},
        {"engine.max_num_seqs": 8},
    ]


def test_phi3_fits_24gb_with_8_sequences() -> None:
    plan = plan_deployment(deployment(24, 1, phi3(max_model_len=4096, max_num_seqs=8)))
    inst = plan.instance("phi3")
    assert inst.need_per_gpu_gib == pytest.approx(PHI3_WEIGHTS + 12 + 2)  # 21.12 GiB
    # 21.1153 / 24 = 0.8798 -> 0.880, plus the spare 0.040
    assert inst.gpu_memory_utilization == 0.92


def test_colocated_instances_never_oversubscribe_and_start_one_at_a_time() -> None:
    plan = plan_deployment(
        deployment(80, 1, phi3("a", 11403, max_num_seqs=16), phi3("b", 11404, max_num_seqs=16))
    )
    a, b = plan.instance("a"), plan.instance("b")
    assert a.gpu_ids == b.gpu_ids == (0,)
    # each 33.1153 GiB: base ceil(0.41394) = 0.414, spare 0.92 - 0.828 = 0.092 split in half
    assert a.gpu_memory_utilization == b.gpu_memory_utilization == 0.46
    assert plan.gpus[0].utilization_sum <= 0.92
    assert {a.start_order, b.start_order} == {1, 2}


def test_best_fit_packs_and_spread_spreads() -> None:
    small = {"name": "minilm", "preset": "all-minilm-l6-v2"}
    big = phi3(max_num_seqs=16)
    packed = plan_deployment(deployment(80, 2, big, small))
    assert packed.instance("minilm").gpu_ids == packed.instance("phi3").gpu_ids
    spread = plan_deployment(deployment(80, 2, big, small, placement="spread"))
    assert spread.instance("minilm").gpu_ids != spread.instance("phi3").gpu_ids
    assert spread.instance("minilm").start_order == 1


def test_explicit_utilization_over_the_limit_is_an_error() -> None:
    with pytest.raises(PlanError) as caught:
        plan_deployment(
            deployment(
                80,
                1,
                phi3("a", 11403, max_num_seqs=4, gpu_memory_utilization=0.6),
                phi3("b", 11404, max_num_seqs=4, gpu_memory_utilization=0.6),
            )
        )
    assert "adds up to 1.20" in caught.value.problems[0].message


def test_explicit_utilization_leaves_the_rest_to_the_planner_s_tenants() -> None:
    a = phi3("a", 11403, max_num_seqs=16, gpu_memory_utilization=0.5)
    plan = plan_deployment(deployment(80, 1, a, phi3("b", 11404, max_num_seqs=16)))
    # b: its need 0.414, plus what a's 0.5 and that leave of 0.92
    assert plan.instance("b").gpu_memory_utilization == 0.42
    assert plan.gpus[0].utilization_sum == 0.92


def problem_of(cfg: HxpConfig) -> PlanProblem:
    with pytest.raises(PlanError) as caught:
        plan_deployment(cfg)
    (problem,) = caught.value.problems
    return problem


def changed(cfg: HxpConfig, position: int, change: Change) -> HxpConfig:
    """``cfg`` as hxp.yml would give it with ``change`` written into model ``position``."""
    data = cfg.model_dump()
    data["models"][position] = apply_change(cfg.models[position], change).model_dump()
    return HxpConfig.model_validate(data)


# --------------------------------------------------------------------------- tensor parallelism


@pytest.mark.parametrize("gpus", [3, [0, 1, 2]], ids=["count", "list"])
def test_gpus_imply_a_tensor_parallel_size_that_must_divide_the_heads(gpus: Any) -> None:
    problem = problem_of(deployment(80, 4, {**phi3(), "gpus": gpus}))
    assert problem.path == ("models", 0, "gpus")
    assert (
        "tensor_parallel_size 3, which does not divide the model's 32 attention heads"
        in problem.message
    )
    assert "give it a number of GPUs in [1, 2, 4]" in problem.message


@pytest.mark.parametrize("gpus", [2, [1, 3]], ids=["count", "list"])
def test_gpus_that_divide_the_heads_set_the_tensor_parallel_size(gpus: Any) -> None:
    inst = plan_deployment(deployment(80, 4, {**phi3(), "gpus": gpus})).instance("phi3")
    assert (len(inst.gpu_ids), inst.tensor_parallel_size) == (2, 2)


def test_explicit_tensor_parallel_size_is_checked_before_the_gpus() -> None:
    problem = problem_of(deployment(80, 4, {**phi3(tensor_parallel_size=3), "gpus": 3}))
    assert problem.path == ("models", 0, "engine", "tensor_parallel_size")


# --------------------------------------------------------------------------- explicit utilization


def test_explicit_utilization_below_the_need_names_the_minimum() -> None:
    problem = problem_of(deployment(80, 1, phi3(max_num_seqs=16, gpu_memory_utilization=0.41)))
    assert problem.path == ("models", 0, "engine", "gpu_memory_utilization")
    # 33.1153 GiB of 80 GiB = 0.41394 -> 0.414
    assert "needs: 33.1 GiB per GPU of 80.0 GiB" in problem.message
    assert "set it to at least 0.414 or remove it" in problem.message


def test_explicit_utilization_at_the_minimum_is_kept() -> None:
    plan = plan_deployment(deployment(80, 1, phi3(max_num_seqs=16, gpu_memory_utilization=0.414)))
    assert plan.instance("phi3").gpu_memory_utilization == 0.414


def test_explicit_utilization_is_checked_against_the_need_per_gpu() -> None:
    model = {**phi3(max_num_seqs=16, gpu_memory_utilization=0.2), "gpus": 2}
    problem = problem_of(deployment(80, 2, model))
    # tensor_parallel_size 2: 31.1153 / 2 + 2 = 17.5577 GiB of 80 GiB = 0.21947 -> 0.22
    assert "needs: 17.6 GiB per GPU" in problem.message
    assert "at least 0.22 " in problem.message


# --------------------------------------------------------------------------- context length


def test_max_model_len_above_the_context_names_the_limit_and_both_fixes() -> None:
    problem = problem_of(deployment(80, 1, phi3(max_model_len=8192, max_num_seqs=4)))
    assert problem.path == ("models", 0, "engine", "max_model_len")
    assert "above the 4096-token context of model 'phi3'" in problem.message
    assert "(architecture.max_position_embeddings)" in problem.message
    assert "lower max_model_len to 4096 or less" in problem.message
    assert "engine.rope_scaling (e.g. rope_type: yarn, factor: 2.0)" in problem.message


def test_rope_scaling_extends_the_context_by_its_factor() -> None:
    rope = {"rope_type": "yarn", "factor": 2}
    model = phi3(max_model_len=8192, max_num_seqs=8, rope_scaling=rope)
    plan = plan_deployment(deployment(80, 1, model))
    assert plan.instance("phi3").kv_gib == pytest.approx(24.0)  # 8192 tokens x 8 sequences


def test_max_model_len_above_what_rope_scaling_gives() -> None:
    rope = {"rope_type": "yarn", "factor": 2}
    problem = problem_of(deployment(80, 1, phi3(max_model_len=10000, rope_scaling=rope)))
    assert problem.path == ("models", 0, "engine", "max_model_len")
    assert "above the 8192 tokens engine.rope_scaling gives" in problem.message
    assert "(factor 2 x 4096)" in problem.message
    # 10000 / 4096 = 2.4414 -> 2.45
    assert "lower max_model_len to 8192 or less" in problem.message
    assert "raise engine.rope_scaling.factor to 2.45" in problem.message


@pytest.mark.parametrize(("length", "fits"), [(4096, True), (4097, False)])
def test_rope_scaling_counts_from_its_original_length(length: int, fits: bool) -> None:
    rope = {"factor": 4, "original_max_position_embeddings": 1024}
    cfg = deployment(80, 1, phi3(max_model_len=length, max_num_seqs=4, rope_scaling=rope))
    if fits:
        plan_deployment(cfg)
    else:
        assert "(factor 4 x 1024)" in problem_of(cfg).message


def test_context_comes_from_the_model_config_json(tmp_path: Path) -> None:
    write_llama_config(tmp_path, max_position_embeddings=1024)
    model = {**phi3(max_model_len=2048), "source": {"local_path": str(tmp_path)}}
    problem = problem_of(deployment(80, 1, model))
    assert "above the 1024-token context" in problem.message
    assert "(max_position_embeddings in its config.json)" in problem.message


def test_embeddings_preset_defaults_to_its_whole_context() -> None:
    cfg = deployment(80, 1, {"name": "minilm", "preset": "all-minilm-l6-v2"})
    assert cfg.model("minilm").engine.max_model_len == 512
    plan_deployment(cfg)


# --------------------------------------------------------------------------- suggestions


def test_suggestions_count_the_other_models_on_the_gpu() -> None:
    """b (57.1153 GiB) places first; a finds 16.4847 GiB left, so a's own 9.1153 GiB of weights
    and overhead leave room for 4 sequences of 1.5 GiB, or 1256 tokens of each of 16."""
    cfg = deployment(80, 1, phi3("a", 11403, max_num_seqs=16), phi3("b", 11404, max_num_seqs=32))
    problem = problem_of(cfg)
    assert problem.path == ("models", 0)
    assert changes(problem) == [{"engine.max_model_len": 1256}, {"engine.max_num_seqs": 4}]
    for change in changes(problem):
        plan = plan_deployment(changed(cfg, 0, change))
        assert plan.instance("a").gpu_ids == plan.instance("b").gpu_ids == (0,)
        assert plan.gpus[0].utilization_sum <= 0.92


def test_no_quantization_is_suggested_where_the_other_models_leave_no_room() -> None:
    # Alone, fp8 would fit (53.5 GiB); next to b's 57.1 GiB nothing of mixtral does.
    problem = problem_of(deployment(80, 1, mixtral(), phi3("b", 11404, max_num_seqs=32)))
    assert problem.path == ("models", 0)
    assert problem.suggestions == ()
    assert "quantization" not in problem.message


def test_a_suggestion_never_pushes_out_a_model_that_placed() -> None:
    b = phi3("b", 11403, max_num_seqs=48, tensor_parallel_size=1)  # 81.1 GiB: fits no GPU
    c = phi3("c", 11404, max_num_seqs=16, tensor_parallel_size=1)  # 33.1 GiB
    cfg = deployment(80, 2, b, c)
    problem = problem_of(cfg)
    # b on both GPUs (41.6 GiB each) would leave c 32.0 GiB: that is not offered.
    assert changes(problem) == [{"engine.max_model_len": 3668}, {"engine.max_num_seqs": 42}]
    with pytest.raises(PlanError) as caught:
        plan_deployment(changed(cfg, 0, {"gpus": 2, "engine.tensor_parallel_size": 2}))
    assert [p.path for p in caught.value.problems] == [("models", 1)]


def test_a_model_on_named_gpus_is_offered_the_planner_s_choice() -> None:
    a = {**phi3("a", 11403, max_num_seqs=32), "gpus": [0]}
    b = {**phi3("b", 11404, max_num_seqs=16), "gpus": [0]}
    cfg = deployment(80, 2, a, b)
    problem = problem_of(cfg)
    assert problem.path == ("models", 1)
    assert changes(problem)[0] == {"gpus": 1, "engine.tensor_parallel_size": 1}
    assert "gpus: 1 with tensor_parallel_size: 1 (needs 33.1 GiB per GPU)" in problem.message
    plan = plan_deployment(changed(cfg, 1, changes(problem)[0]))
    assert plan.instance("b").gpu_ids == (1,)


def test_more_gpus_are_suggested_with_a_matching_tensor_parallel_size() -> None:
    problem = problem_of(deployment(80, 4, mixtral(tensor_parallel_size=1)))
    # two GPUs: 94.99 / 2 + 2 = 49.49 GiB each
    assert {"gpus": 2, "engine.tensor_parallel_size": 2} in changes(problem)
    assert "gpus: 2 with tensor_parallel_size: 2 (needs 49.5 GiB per GPU)" in problem.message
    assert "a host with" not in problem.message


def test_params_from_mixtral_config_json() -> None:
    config = {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 32000,
        "num_local_experts": 8,
    }
    assert params_from_config(config) == pytest.approx(46.70e9, rel=1e-3)


def write_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    header: dict[str, Any] = {}
    offset = 0
    for name, shape in shapes.items():
        count = 1
        for dim in shape:
            count *= dim
        header[name] = {
            "dtype": "F32",
            "shape": shape,
            "data_offsets": [offset, offset + 4 * count],
        }
        offset += 4 * count
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def write_llama_config(directory: Path, **fields: Any) -> None:
    config = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "vocab_size": 512,
        "torch_dtype": "float32",
    }
    (directory / "config.json").write_text(json.dumps({**config, **fields}))


def test_shape_from_directory_counts_safetensors_parameters(tmp_path: Path) -> None:
    write_llama_config(tmp_path)
    write_safetensors(tmp_path / "model.safetensors", {"a": [512, 64], "b": [64, 64], "c": [64]})
    shape = shape_from_directory(tmp_path)
    assert shape.params == 512 * 64 + 64 * 64 + 64
    assert (shape.num_kv_heads, shape.head_dim, shape.origin) == (2, 32, "safetensors")
    assert safetensors_param_count([tmp_path / "model.safetensors"]) == 36928


def test_shape_from_directory_reads_the_context(tmp_path: Path) -> None:
    write_llama_config(tmp_path, max_position_embeddings=2048)
    assert shape_from_directory(tmp_path).max_position_embeddings == 2048


@pytest.mark.parametrize("value", ["4096", 0, 4096.5])
def test_shape_from_directory_rejects_a_bad_context(tmp_path: Path, value: object) -> None:
    write_llama_config(tmp_path, max_position_embeddings=value)
    with pytest.raises(
        ModelInfoError, match=r"max_position_embeddings .* is not a positive integer"
    ):
        shape_from_directory(tmp_path)


# --------------------------------------------------------------------------- through the loader

FOUR_GPUS = BASE.replace(
    "      - {index: 0, memory_gb: 80}\n",
    "".join(f"      - {{index: {i}, memory_gb: 80}}\n" for i in range(4)),
)


@pytest.mark.parametrize(
    ("text", "field", "needle"),
    [
        (
            FOUR_GPUS.replace("preset: phi-3-mini\n", "preset: phi-3-mini\n    gpus: [0, 1, 2]\n"),
            "models[0].gpus",
            "gpus: [0, 1, 2]",
        ),
        (
            BASE.replace("max_num_seqs: 8}", "max_num_seqs: 8, gpu_memory_utilization: 0.2}"),
            "models[0].engine.gpu_memory_utilization",
            "gpu_memory_utilization: 0.2",
        ),
        (
            BASE.replace("max_model_len: 4096", "max_model_len: 8192"),
            "models[0].engine.max_model_len",
            "max_model_len: 8192",
        ),
    ],
    ids=["gpus", "gpu_memory_utilization", "max_model_len"],
)
def test_each_rule_points_at_its_line(
    problems_of: Callable[[str], list[Problem]], text: str, field: str, needle: str
) -> None:
    (problem,) = problems_of(text)
    assert problem.field == field
    assert problem.line == line_of(text, needle)


# --------------------------------------------------------------------------- blue-green swaps


def blue_green(model: dict[str, Any]) -> dict[str, Any]:
    return {**model, "rollout": {"strategy": "blue-green"}}


def test_a_model_that_takes_its_gpu_whole_rolls_and_says_what_blue_green_lacks() -> None:
    cfg = deployment(80, 1, blue_green(phi3(max_model_len=4096, max_num_seqs=16)))
    fit = plan_swaps(cfg, plan_deployment(cfg))["phi3"]
    # The planner gives the only tenant the GPU up to 0.92: a second copy would need all of it.
    assert not fit.blue_green
    assert fit.short_gib == pytest.approx(0.92 * 80)
    assert fit.describe() == "rolling (blue-green needs 73.6 GiB more than free)"


def test_a_model_with_room_for_a_second_copy_on_its_gpu_swaps_blue_green() -> None:
    model = phi3(max_model_len=4096, max_num_seqs=8, gpu_memory_utilization=0.45)
    cfg = deployment(80, 1, blue_green(model))
    fit = plan_swaps(cfg, plan_deployment(cfg))["phi3"]
    assert fit.blue_green and fit.short_gib == 0
    assert fit.describe() == "blue-green"
    # A little more and a second copy no longer fits: 0.47 + 0.47 = 0.94 of 80 GiB > 0.92.
    cfg = deployment(
        80, 1, blue_green({**model, "engine": {**model["engine"], "gpu_memory_utilization": 0.47}})
    )
    fit = plan_swaps(cfg, plan_deployment(cfg))["phi3"]
    assert not fit.blue_green and fit.short_gib == pytest.approx(1.6)


def test_a_model_that_does_not_ask_for_blue_green_rolls() -> None:
    cfg = deployment(80, 1, phi3(max_model_len=4096, max_num_seqs=8, gpu_memory_utilization=0.3))
    fit = plan_swaps(cfg, plan_deployment(cfg))["phi3"]
    assert not fit.wanted and fit.describe() == "rolling"
    cfg = cfg.model_copy(
        update={"rollout": cfg.rollout.model_copy(update={"strategy": "blue-green"})}
    )
    assert plan_swaps(cfg, plan_deployment(cfg))["phi3"].blue_green


def cpu_deployment(memory_gb: float | None) -> HxpConfig:
    host = {"name": "cpu-1", "address": "10.0.0.2", "groups": ["llm"], "accelerator": "cpu"}
    models = [
        {**phi3(name, port, dtype="float32"), "memory_limit_gb": 6}
        for name, port in (("a", 11400), ("b", 11401))
    ]
    return HxpConfig.model_validate(
        {
            "name": "plan",
            "hosts": [host if memory_gb is None else {**host, "memory_gb": memory_gb}],
            "models": [blue_green(models[0]), models[1]],
        }
    )


def test_on_a_cpu_host_the_memory_limits_with_a_second_copy_must_fit_its_memory() -> None:
    for memory_gb, short in ((18, 0.0), (17, 1.0)):
        cfg = cpu_deployment(memory_gb)
        fits = plan_swaps(cfg, plan_deployment(cfg))
        assert fits["a"].short_gib == pytest.approx(short)
        assert fits["a"].blue_green == (short == 0)
        assert fits["b"].describe() == "rolling"
    cfg = cpu_deployment(None)
    assert plan_swaps(cfg, plan_deployment(cfg))["a"].describe() == (
        "rolling (blue-green needs the host's memory_gb to check that both fit)"
    )


def test_a_cpu_hosts_servers_start_together_and_gpu_sharers_one_after_another() -> None:
    # One wave on a CPU host (nothing is profiled at a CPU server's start); on one GPU, one
    # wave per server, and a model on another GPU of the same host starts with the first.
    cpu = plan_deployment(cpu_deployment(18))
    assert [(i.model, i.start_order) for i in cpu.instances] == [("a", 1), ("b", 1)]
    shared = plan_deployment(
        deployment(80, 1, phi3("a", 11403, max_num_seqs=16), phi3("b", 11404, max_num_seqs=16))
    )
    assert sorted(i.start_order for i in shared.instances) == [1, 2]
    spread = plan_deployment(
        deployment(
            80,
            2,
            phi3("a", 11403, max_num_seqs=16),
            phi3("b", 11404, max_num_seqs=16),
            placement="spread",
        )
    )
    assert [i.start_order for i in spread.instances] == [1, 1]
