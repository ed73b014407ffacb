"""Planner properties over random one-host deployments (hypothesis).

The GPUs are few and small next to the models, so that most deployments fail and their
suggestions get tried: each one, written into hxp.yml's model entry, must make that model's
problem go away without adding any. A bounded number of examples keeps this to seconds.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hxp_runtime.catalog import PRESETS
from hxp_runtime.config import HxpConfig, cross_field_problems, plan_deployment
from hxp_runtime.planner import PlanError, PlanProblem

Entry = dict[str, Any]
# No wall-clock deadline: on a loaded machine an example can wait for a CPU for seconds.
# plan_problems bounds each plan's CPU time instead.
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, database=None)
# A plan, suggestions included, takes milliseconds of CPU; this is far above that on any machine.
PLAN_SECONDS = 1.0


def rarely(strategy: st.SearchStrategy[Any], otherwise: Any) -> st.SearchStrategy[Any]:
    """``strategy`` one time in four: settings that break a rule leave the fit rule less to do."""
    return st.integers(0, 3).flatmap(lambda n: strategy if n == 0 else st.just(otherwise))


@st.composite
def architectures(draw: st.DrawFn) -> tuple[Entry, int | None]:
    heads = draw(st.sampled_from([1, 2, 4, 6, 8, 12, 16, 24, 32, 40, 64]))
    context = draw(st.none() | st.sampled_from([512, 2048, 4096, 8192, 32768]))
    architecture = {
        "params_b": draw(st.floats(0.05, 120, allow_nan=False)),
        "num_layers": draw(st.integers(1, 80)),
        "num_attention_heads": heads,
        "num_kv_heads": draw(st.sampled_from([k for k in range(1, heads + 1) if heads % k == 0])),
        "head_dim": draw(st.sampled_from([32, 64, 96, 128])),
        "max_position_embeddings": context,
    }
    return architecture, context


@st.composite
def models(draw: st.DrawFn, position: int, gpu_count: int) -> Entry:
    name = f"m{position}"
    entry: Entry = {"name": name, "served_name": name, "port": 11400 + position}
    preset = draw(st.none() | st.sampled_from(sorted(PRESETS)))
    if preset is None:
        architecture, context = draw(architectures())
        entry |= {
            "architecture": architecture,
            "memory_limit_gb": 16,
            "cpu_cores": 2,
            "slo": {"latency_ms": 1000, "throughput_rps": 10},
        }
    else:
        entry["preset"] = preset
        context = PRESETS[preset]["architecture"]["max_position_embeddings"]
    gpus = draw(
        st.just("auto")
        | rarely(st.integers(1, gpu_count), "auto")
        | rarely(st.lists(st.integers(0, gpu_count - 1), min_size=1, unique=True), "auto")
    )
    ranks = gpu_count if gpus == "auto" else gpus if isinstance(gpus, int) else len(gpus)
    entry["gpus"] = gpus
    length = context or 32768
    entry["engine"] = {
        "dtype": draw(st.sampled_from(["auto", "float16", "bfloat16", "float32"])),
        "quantization": draw(rarely(st.sampled_from(["awq", "gptq", "fp8", "int8"]), None)),
        "kv_cache_dtype": draw(st.sampled_from(["auto", "fp8"])),
        "tensor_parallel_size": draw(rarely(st.integers(1, ranks), None)),
        # Past the context at times, so the context rule's problems are among those kept.
        "max_model_len": draw(st.integers(16, length) | rarely(st.integers(16, 2 * length), 16)),
        "max_num_seqs": draw(st.integers(1, 64)),
        "gpu_memory_utilization": draw(
            rarely(st.floats(0.05, 0.95).map(lambda u: round(u, 2)), None)
        ),
        "rope_scaling": draw(rarely(st.builds(dict, factor=st.floats(1.5, 8)), None)),
    }
    return entry


@st.composite
def deployments(draw: st.DrawFn) -> Entry:
    gpu_count = draw(st.integers(1, 8))
    sizes = st.sampled_from([8, 16, 24, 40, 48, 80])
    model_count = draw(st.integers(1, 4))
    return {
        "name": "prop",
        "hosts": [
            {
                "name": "llm-1",
                "address": "10.0.0.1",
                "groups": ["llm"],
                "gpus": [{"index": i, "memory_gb": draw(sizes)} for i in range(gpu_count)],
            }
        ],
        "models": [draw(models(i, gpu_count)) for i in range(model_count)],
        "planner": {
            "placement": draw(st.sampled_from(["best-fit", "spread"])),
            "max_gpu_utilization": draw(st.sampled_from([0.8, 0.92, 0.95])),
            "overhead_gb_per_gpu": draw(st.sampled_from([0.0, 1.0, 2.0])),
        },
    }


def valid(data: Entry) -> HxpConfig:
    """The deployment as load_config would accept it: the schema and every cross-field rule."""
    cfg = HxpConfig.model_validate(data)
    assert list(cross_field_problems(cfg)) == []
    return cfg


def plan_problems(cfg: HxpConfig) -> list[PlanProblem]:
    start = time.process_time()
    try:
        plan_deployment(cfg)
    except PlanError as exc:
        return exc.problems
    finally:
        assert time.process_time() - start < PLAN_SECONDS
    return []


def with_change(data: Entry, position: int, change: dict[str, int | str]) -> Entry:
    """``data`` with ``change`` written into model ``position``'s entry, as a user would."""
    changed = copy.deepcopy(data)
    entry = changed["models"][position]
    for key, value in change.items():
        if key.startswith("engine."):
            entry.setdefault("engine", {})[key.removeprefix("engine.")] = value
        else:
            entry[key] = value
    return changed


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(deployments())
def test_planning_fails_only_with_plan_errors_and_fast(data: Entry) -> None:
    plan_problems(valid(data))


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(deployments())
def test_each_suggestion_fixes_its_model_and_breaks_nothing(data: Entry) -> None:
    before = plan_problems(valid(data))
    for problem in (p for p in before if p.suggestions):
        position = problem.path[1]
        assert isinstance(position, int)
        for suggestion in problem.suggestions:
            after = plan_problems(valid(with_change(data, position, dict(suggestion.change))))
            left = Counter(p.path for p in before)
            left[problem.path] -= 1
            new = Counter(p.path for p in after) - left
            assert not new, f"{suggestion.text}: {[p.message for p in after]}"
