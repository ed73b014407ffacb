"""Planner maths against hand-computed cases (GiB = 2**30 bytes).

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
from pathlib import Path
from typing import Any

import pytest

from hxp_runtime.config import HxpConfig
from hxp_runtime.modelinfo import params_from_config, safetensors_param_count, shape_from_directory
from hxp_runtime.planner import PlanError, plan_deployment

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
    # two GPUs: 94.99 / 2 + 2 = 49.49
    assert "a host with 2 such GPUs" in message


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


def test_phi3_does_not_fit_24gb_with_16_sequences_and_suggests_shorter_context() -> None:
    with pytest.raises(PlanError) as caught:
        plan_deployment(deployment(24, 1, phi3(max_model_len=4096, max_num_seqs=16)))
    message = caught.value.problems[0].message
    assert "needs 33.1 GiB per GPU" in message
    # KV room = 22.08 - 2 - 7.1153 = 12.9647 GiB; 24 GiB / 4096 tokens -> 2212 tokens
    assert "max_model_len: 2212 or less" in message
    # 1.5 GiB per sequence -> 8 sequences
    assert "max_num_seqs: 8 or less" in message


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


def test_shape_from_directory_counts_safetensors_parameters(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "vocab_size": 512,
                "torch_dtype": "float32",
            }
        )
    )
    write_safetensors(tmp_path / "model.safetensors", {"a": [512, 64], "b": [64, 64], "c": [64]})
    shape = shape_from_directory(tmp_path)
    assert shape.params == 512 * 64 + 64 * 64 + 64
    assert (shape.num_kv_heads, shape.head_dim, shape.origin) == (2, 32, "safetensors")
    assert safetensors_param_count([tmp_path / "model.safetensors"]) == 36928
