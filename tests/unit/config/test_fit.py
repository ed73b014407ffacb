"""Fit (hxp_runtime.config.fit): models are sized from hxp.yml and handed to the planner; its
problems come out of load_config as problems of the model's entry, at its line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hxp_runtime.config import HxpConfig, apply_change, plan_deployment, resolve_shape
from hxp_runtime.config.fit import shape_from_architecture, sized_model
from hxp_runtime.planner import Change, PlanError, with_change
from tests.unit.conftest import BASE, Problems, line_of, only


def test_tensor_parallel_size_must_divide_heads(problems_of: Problems) -> None:
    text = BASE.replace(
        "    gpus:\n      - {index: 0, memory_gb: 80}\n",
        "    gpus:\n      - {index: 0, memory_gb: 80}\n      - {index: 1, memory_gb: 80}\n"
        "      - {index: 2, memory_gb: 80}\n",
    ).replace("max_num_seqs: 8}", "max_num_seqs: 8, tensor_parallel_size: 3}")
    p = only(problems_of(text))
    assert p.field == "models[0].engine.tensor_parallel_size"
    assert "does not divide the model's 32 attention heads" in p.message
    assert "[1, 2]" in p.message
    assert p.line == line_of(text, "tensor_parallel_size: 3")


def test_model_that_does_not_fit_its_gpu(problems_of: Problems) -> None:
    text = BASE.replace(
        "  - name: minilm\n",
        "  - name: mixtral\n    preset: mixtral-8x7b\n    engine: {dtype: float16}\n"
        "  - name: minilm\n",
    )
    p = only(problems_of(text))
    assert p.field == "models[1]"
    assert "does not fit" in p.message
    assert "quantization: awq" in p.message
    assert p.line == line_of(text, "name: mixtral")


def one_host(*models: dict[str, Any], gpu_gb: float = 80) -> HxpConfig:
    return HxpConfig.model_validate(
        {
            "name": "fit",
            "hosts": [
                {
                    "name": "llm-1",
                    "address": "10.0.0.1",
                    "groups": ["llm"],
                    "gpus": [{"index": i, "memory_gb": gpu_gb} for i in range(4)],
                }
            ],
            "models": list(models),
        }
    )


PHI3 = {"name": "phi3", "preset": "phi-3-mini", "engine": {"dtype": "float16"}}


@pytest.mark.parametrize(
    "change",
    [
        {"engine.quantization": "fp8"},
        {"gpus": 2, "engine.tensor_parallel_size": 2},
        {"engine.max_model_len": 1000},
        {"engine.max_num_seqs": 3},
    ],
)
def test_the_planner_reads_a_changed_entry_as_hxp_yml_gives_it(change: Change) -> None:
    # The planner tries its suggestions on its own copy of the entry; written into hxp.yml, each
    # must give the model the planner tried.
    model = one_host(PHI3).models[0]
    shape = shape_from_architecture(model.architecture) if model.architecture else None
    assert shape is not None
    in_file = sized_model(apply_change(model, change), 0, "llm-1", shape)
    assert in_file == with_change(sized_model(model, 0, "llm-1", shape), change)
    assert in_file != sized_model(model, 0, "llm-1", shape)


def test_sizing_problems_come_before_placement_problems() -> None:
    unsized = {
        "name": "mystery",
        "port": 11500,
        "memory_limit_gb": 4,
        "cpu_cores": 1,
        "slo": {"latency_ms": 100, "throughput_rps": 1},
    }
    big = {"name": "mixtral", "preset": "mixtral-8x7b", "engine": {"dtype": "float16"}}
    with pytest.raises(PlanError) as caught:
        plan_deployment(one_host(big, unsized, gpu_gb=16))
    paths = [p.path for p in caught.value.problems]
    assert paths == [("models", 1), ("models", 0)]
    assert "cannot size model 'mystery'" in caught.value.problems[0].message
    assert "does not fit on llm-1" in caught.value.problems[1].message


def test_a_declared_architecture_is_the_shape() -> None:
    model = one_host(PHI3).models[0]
    assert model.architecture is not None
    shape = resolve_shape(model, Path("/nonexistent"))
    assert shape is not None
    assert (shape.params, shape.num_attention_heads, shape.origin) == (3.82e9, 32, "declared")
