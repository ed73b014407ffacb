"""Memory-aware GPU placement: which GPUs each model gets, its tensor-parallel size, its
gpu_memory_utilization, and the order instances start in.

The maths (all sizes in GiB = 2**30 bytes, as nvidia-smi and vLLM report GPU memory):

- weights   = parameters x bytes per parameter (dtype, or the quantization's width)
- KV cache  = 2 (K and V) x layers x KV heads x head size x KV dtype bytes, per token,
              x max_model_len x max_num_seqs (every sequence at full length: the worst case)
- per GPU   = (weights + KV cache) / tensor_parallel_size + runtime overhead per GPU
- usable    = GPU memory x planner.max_gpu_utilization (the rest is left to CUDA and others)

A model fits when its per-GPU need fits the usable memory left on each of its GPUs. Every
instance then gets gpu_memory_utilization = its need / GPU memory plus its share of the spare
room, so that the instances on one GPU add up to at most max_gpu_utilization: vLLM may claim
that fraction, and co-located instances can never oversubscribe a GPU.

Rules it reports besides fit, each at the field to change: the tensor-parallel size, explicit or
implied by ``gpus`` (a count or a list), divides the attention heads; an explicit
gpu_memory_utilization covers the model's need.

A model that does not fit gets suggestions: single changes to its entry (quantization, more
GPUs, a shorter context, fewer sequences). Each is kept only after planning its host again with
the change applied: the model then places and no model that placed before stops placing, so a
suggestion is exact, not an estimate that ignores the GPUs' other tenants.

Everything here is a pure function of its arguments, which are plain data: each model entry
with its shape already resolved (:class:`SizedModel`), the hosts' GPUs and the planner's
settings. Reading hxp.yml and model files, and resolving hosts and shapes, is
:mod:`hxp_runtime.config.fit`'s; this module imports nothing of the config package, so that the
config can call it without an import cycle.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from hxp_runtime.modelinfo import ModelShape
from hxp_runtime.yamlsource import PathKey

GIB = float(2**30)
QUANT_BYTES = {"awq": 0.5, "gptq": 0.5, "bitsandbytes": 0.5, "fp8": 1.0, "int8": 1.0}
DTYPE_BYTES = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0}
KV_DTYPE_BYTES = {"fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0}
# What `dtype: auto` resolves to when config.json does not say (vLLM's own default for fp32
# checkpoints on GPU is half precision).
AUTO_DTYPE_BYTES = 2.0
# Tried in this order: fp8 keeps the checkpoint; awq needs an AWQ checkpoint of the model.
SUGGESTED_QUANTIZATIONS = ("fp8", "awq")
# GPU counts of a host of the model's own, tried when its host has too few GPUs for it.
OWN_HOST_GPU_COUNTS = (1, 2, 4, 8, 16)

# A change to one model entry of hxp.yml: a field ("gpus", "engine.quantization") -> new value.
Change = Mapping[str, int | str]


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class PlannerSettings:
    placement: Literal["best-fit", "spread"]
    max_gpu_utilization: float
    overhead_gib_per_gpu: float


@dataclass(frozen=True)
class GpuSpec:
    index: int
    name: str
    memory_gib: float


@dataclass(frozen=True)
class HostSpec:
    name: str
    accelerator: Literal["nvidia", "cpu"]
    gpus: tuple[GpuSpec, ...]


@dataclass(frozen=True)
class EngineSpec:
    """The engine fields of a model entry that size and place it (hxp.yml's names)."""

    dtype: str
    quantization: str | None
    kv_cache_dtype: str
    max_model_len: int
    max_num_seqs: int
    tensor_parallel_size: int | None
    gpu_memory_utilization: float | None


@dataclass(frozen=True)
class SizedModel:
    """A model entry as the planner reads it: its host resolved and its shape known. A model
    with replicas is one SizedModel per replica, each with its own host; a model split across
    hosts (pipeline parallel) one per stage, ``pipeline_rank`` of ``pipeline_size``."""

    position: int  # in hxp.yml's models list; problems name models[position]
    name: str
    host: str
    port: int
    task: str
    gpus: str | int | list[int]  # "auto", a count, or GPU indexes
    engine: EngineSpec
    shape: ModelShape
    pipeline_rank: int = 0
    pipeline_size: int = 1

    @property
    def layers(self) -> tuple[int, int]:
        """[start, end) of the layers this stage holds (all of them without a pipeline)."""
        return stage_layers(self.shape.num_layers, self.pipeline_rank, self.pipeline_size)


def stage_layers(num_layers: int, rank: int, size: int) -> tuple[int, int]:
    """The layers pipeline stage ``rank`` of ``size`` holds, [start, end), split as vLLM splits
    them (vllm.distributed.utils.get_pp_indices): evenly, the remainder one each to the stages
    before the last, from the last but one backwards."""
    partitions = [num_layers // size] * size
    for i in range(2, num_layers % size + 2):
        partitions[-i] += 1
    start = sum(partitions[:rank])
    return start, start + partitions[rank]


def with_change(model: SizedModel, change: Change) -> SizedModel:
    """``model`` as the planner would read it with ``change`` written into its hxp.yml entry."""
    engine: dict[str, Any] = {}
    entry: dict[str, Any] = {}
    for key, value in change.items():
        section, _, leaf = key.rpartition(".")
        if section not in ("", "engine"):
            raise ValueError(f"the planner does not read {key!r}")
        (engine if section else entry)[leaf] = value
    return replace(model, engine=replace(model.engine, **engine), **entry)


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Suggestion:
    """A change that makes a model fit, found by planning its host again with it applied."""

    text: str
    change: Change


@dataclass(frozen=True)
class PlanProblem:
    path: PathKey
    message: str
    suggestions: tuple[Suggestion, ...] = ()


class PlanError(Exception):
    def __init__(self, problems: list[PlanProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(p.message for p in problems))


# --------------------------------------------------------------------------- sizing


def weight_bytes_per_param(dtype: str, quantization: str | None, torch_dtype: str | None) -> float:
    if quantization is not None:
        return QUANT_BYTES[quantization]
    if dtype != "auto":
        return DTYPE_BYTES[dtype]
    if torch_dtype in DTYPE_BYTES and torch_dtype != "float32":
        return DTYPE_BYTES[torch_dtype]
    return AUTO_DTYPE_BYTES


def kv_bytes_per_token(shape: ModelShape, kv_dtype_bytes: float) -> float:
    return 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * kv_dtype_bytes


@dataclass(frozen=True)
class MemoryEstimate:
    weights_gib: float
    kv_gib: float
    overhead_gib_per_gpu: float

    def per_gpu_gib(self, tp: int) -> float:
        return (self.weights_gib + self.kv_gib) / tp + self.overhead_gib_per_gpu


def estimate_memory(
    shape: ModelShape,
    *,
    dtype: str,
    quantization: str | None,
    kv_cache_dtype: str,
    max_model_len: int,
    max_num_seqs: int,
    overhead_gib_per_gpu: float,
    task: str = "generate",
) -> MemoryEstimate:
    weight_bytes = weight_bytes_per_param(dtype, quantization, shape.torch_dtype)
    kv_dtype = KV_DTYPE_BYTES.get(kv_cache_dtype, weight_bytes if quantization is None else 2.0)
    weights = shape.params * weight_bytes / GIB
    # An embeddings (pooling) model keeps no KV cache between steps.
    kv = (
        0.0
        if task == "embed"
        else (kv_bytes_per_token(shape, kv_dtype) * max_model_len * max_num_seqs / GIB)
    )
    return MemoryEstimate(weights, kv, overhead_gib_per_gpu)


def _estimate(model: SizedModel, overhead: float) -> MemoryEstimate:
    """The model's memory, or a pipeline stage's: its share of the layers' weights and KV cache
    (embeddings and the output head are counted as spread evenly, which is close for large
    models and slightly low for the first and last stage of a small one)."""
    engine = model.engine
    whole = estimate_memory(
        model.shape,
        dtype=engine.dtype,
        quantization=engine.quantization,
        kv_cache_dtype=engine.kv_cache_dtype,
        max_model_len=engine.max_model_len,
        max_num_seqs=engine.max_num_seqs,
        overhead_gib_per_gpu=overhead,
        task=model.task,
    )
    start, end = model.layers
    share = (end - start) / model.shape.num_layers
    return replace(whole, weights_gib=whole.weights_gib * share, kv_gib=whole.kv_gib * share)


# --------------------------------------------------------------------------- placement


@dataclass
class GpuState:
    index: int
    name: str
    memory_gib: float
    max_utilization: float
    tenants: list[str] = field(default_factory=list)
    needs: list[float] = field(default_factory=list)
    # Each tenant's gpu_memory_utilization from hxp.yml; None where the planner sets it.
    explicit: list[float | None] = field(default_factory=list)

    @property
    def usable_gib(self) -> float:
        return self.memory_gib * self.max_utilization

    @property
    def used_gib(self) -> float:
        return sum(self.needs)

    @property
    def free_gib(self) -> float:
        return self.usable_gib - self.used_gib

    def fraction(self, need: float) -> float:
        """``need`` as a gpu_memory_utilization of this GPU: rounded up, so vLLM gets it all."""
        return _ceil(need / self.memory_gib)

    def has_room(self, need: float) -> bool:
        # In rounded-up fractions rather than GiB: otherwise tenants that fit to the byte could
        # be given utilizations adding up to just over max_utilization. (It implies the GiB fit.)
        rounded = sum(self.fraction(n) for n in (*self.needs, need))
        return rounded <= self.max_utilization + 1e-9

    def add(self, model: str, need: float, explicit: float | None) -> None:
        self.tenants.append(model)
        self.needs.append(need)
        self.explicit.append(explicit)

    @property
    def spare(self) -> float:
        """What max_utilization leaves after each tenant's explicit gpu_memory_utilization or,
        where the planner sets it, its need rounded up: the planner's tenants share it."""
        taken = sum(
            self.fraction(need) if explicit is None else explicit
            for need, explicit in zip(self.needs, self.explicit, strict=True)
        )
        return max(self.max_utilization - taken, 0.0)

    @property
    def shared_gib(self) -> float:
        """The needs of the tenants whose gpu_memory_utilization the planner sets."""
        return sum(n for n, e in zip(self.needs, self.explicit, strict=True) if e is None)


@dataclass(frozen=True)
class Instance:
    """One vLLM server of the plan, or one stage of a model split across hosts: stage 0 (the
    head) serves, the others (``Plan.workers``) run headless."""

    model: str
    host: str
    port: int
    device: Literal["cuda", "cpu"]
    gpu_ids: tuple[int, ...]
    tensor_parallel_size: int
    weights_gib: float
    kv_gib: float
    need_per_gpu_gib: float
    gpu_memory_utilization: float | None
    headroom_gib: float | None
    start_order: int
    shape_origin: str
    pipeline_rank: int = 0
    pipeline_size: int = 1
    layers: tuple[int, int] | None = None  # [start, end) of a pipeline stage; None: all


@dataclass(frozen=True)
class GpuUsage:
    host: str
    index: int
    name: str
    memory_gib: float
    planned_gib: float
    utilization_sum: float
    tenants: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    instances: tuple[Instance, ...]  # the servers: the router's backends
    gpus: tuple[GpuUsage, ...]
    # The headless stages of models split across hosts (their heads are among the instances).
    workers: tuple[Instance, ...] = ()

    def for_host(self, host: str) -> list[Instance]:
        return [i for i in self.instances if i.host == host]

    def workers_on(self, host: str) -> list[Instance]:
        return [w for w in self.workers if w.host == host]

    def stages(self, model: str) -> list[Instance]:
        """A model's engine processes, stage by stage (its servers without a pipeline)."""
        engines = [i for i in (*self.instances, *self.workers) if i.model == model]
        return sorted(engines, key=lambda i: i.pipeline_rank)

    def instance(self, model: str) -> Instance:
        """The model's first replica (its only one, unless it has replicas)."""
        return next(i for i in self.instances if i.model == model)

    def backend_ids(self) -> dict[tuple[str, int], str]:
        """(host, port) of each server -> its backend in the router: the model's name, name-2...
        for further replicas, in the plan's order (hxp_runtime.router.strategies.backends_from)."""
        counts: dict[str, int] = {}
        ids = {}
        for inst in self.instances:
            counts[inst.model] = n = counts.get(inst.model, 0) + 1
            ids[inst.host, inst.port] = inst.model if n == 1 else f"{inst.model}-{n}"
        return ids


def valid_tp_sizes(heads: int, gpu_count: int) -> list[int]:
    return [tp for tp in range(1, gpu_count + 1) if heads % tp == 0]


def _choose_gpus(
    gpus: list[GpuState], count: int, need: float, placement: str
) -> list[GpuState] | None:
    fitting = [g for g in gpus if g.has_room(need)]
    if len(fitting) < count:
        return None
    # best-fit packs onto the fullest GPUs that still fit; spread takes the emptiest.
    fitting.sort(key=lambda g: (g.free_gib, g.index), reverse=placement == "spread")
    return sorted(fitting[:count], key=lambda g: g.index)


@dataclass(frozen=True)
class _Demand:
    model: SizedModel
    estimate: MemoryEstimate

    @property
    def position(self) -> int:
        return self.model.position

    @property
    def shape(self) -> ModelShape:
        return self.model.shape

    @property
    def path(self) -> PathKey:
        return ("models", self.model.position)


@dataclass(frozen=True)
class _Placement:
    """The GPUs a model got, its tensor-parallel size and its need per GPU."""

    gpus: list[GpuState]
    tensor_parallel_size: int
    need_gib: float


@dataclass(frozen=True)
class _Unfit:
    """A model that found no GPUs, and the tensor-parallel size its problem reports."""

    demand: _Demand
    tensor_parallel_size: int


@dataclass
class _HostPlan:
    instances: list[Instance]
    usage: list[GpuUsage]
    problems: list[PlanProblem]
    unfit: dict[PathKey, _Unfit] = field(default_factory=dict)


# --------------------------------------------------------------------------- rules


def _parallelism_problem(demand: _Demand, host_gpu_count: int) -> PlanProblem | None:
    """vLLM splits the attention heads evenly across the tensor-parallel ranks; the size is
    engine.tensor_parallel_size, or else the number of GPUs the model is given."""
    model, heads = demand.model, demand.shape.num_attention_heads
    valid = valid_tp_sizes(heads, host_gpu_count)
    tp = model.engine.tensor_parallel_size
    if tp is not None:
        if heads % tp == 0:
            return None
        return PlanProblem(
            (*demand.path, "engine", "tensor_parallel_size"),
            f"tensor_parallel_size {tp} does not divide the model's {heads} attention heads; "
            f"use one of {valid}",
        )
    if isinstance(model.gpus, str):
        return None
    implied = len(model.gpus) if isinstance(model.gpus, list) else model.gpus
    if heads % implied == 0:
        return None
    return PlanProblem(
        (*demand.path, "gpus"),
        f"gpus: {model.gpus} runs model {model.name!r} with tensor_parallel_size {implied}, "
        f"which does not divide the model's {heads} attention heads; give it a number of "
        f"GPUs in {valid}",
    )


def _utilization_problem(
    demand: _Demand, need: float, chosen: list[GpuState]
) -> PlanProblem | None:
    """An explicit gpu_memory_utilization smaller than the model's need: vLLM would find no
    room for the KV cache the plan counts on (or none for the weights)."""
    explicit = demand.model.engine.gpu_memory_utilization
    smallest = min(g.memory_gib for g in chosen)
    if explicit is None or explicit >= need / smallest:
        return None
    return PlanProblem(
        (*demand.path, "engine", "gpu_memory_utilization"),
        f"gpu_memory_utilization {explicit} is below what model {demand.model.name!r} needs: "
        f"{need:.1f} GiB per GPU of {smallest:.1f} GiB; set it to at least "
        f"{_ceil(need / smallest)} or remove it to let the planner choose",
    )


# --------------------------------------------------------------------------- placement


def _place_cpu_host(host_name: str, demands: list[_Demand]) -> list[Instance]:
    # CPU instances start together, in one wave: a CPU server's KV cache size is fixed by the
    # plan (--kv-cache-memory-bytes), not profiled from free memory at its start as on a GPU, so
    # starts cannot race; and most of a start is single-threaded (imports, loading, warm-up):
    # three tiny models on 2 cores were ready in 101 s together, 155 s one after another.
    return [
        Instance(
            model=d.model.name,
            host=host_name,
            port=d.model.port,
            device="cpu",
            gpu_ids=(),
            tensor_parallel_size=1,
            weights_gib=d.estimate.weights_gib,
            kv_gib=d.estimate.kv_gib,
            need_per_gpu_gib=0.0,
            gpu_memory_utilization=None,
            headroom_gib=None,
            start_order=1,
            shape_origin=d.shape.origin,
            **_stage_fields(d.model),
        )
        for d in sorted(demands, key=lambda d: d.position)
    ]


def _sizes_to_try(model: SizedModel, heads: int, host_gpu_count: int) -> list[int]:
    if model.engine.tensor_parallel_size:
        return [model.engine.tensor_parallel_size]
    if isinstance(model.gpus, list):
        return [len(model.gpus)]
    if isinstance(model.gpus, int):
        return [model.gpus]
    return valid_tp_sizes(heads, host_gpu_count)


def _fit(
    demand: _Demand, sizes: list[int], gpus: dict[int, GpuState], placement: str
) -> _Placement | None:
    """The first size in ``sizes`` the model fits with: its GPUs, that size, its need per GPU."""
    wanted = demand.model.gpus
    for size in sizes:
        need = demand.estimate.per_gpu_gib(size)
        if isinstance(wanted, list):
            chosen = [gpus[i] for i in wanted]
            if all(g.has_room(need) for g in chosen):
                return _Placement(chosen, size, need)
        else:
            count = wanted if isinstance(wanted, int) else size
            picked = _choose_gpus(list(gpus.values()), count, need, placement)
            if picked is not None:
                return _Placement(picked, size, need)
    return None


def _place_host(settings: PlannerSettings, host: HostSpec, demands: list[_Demand]) -> _HostPlan:
    """Give the host's models their GPUs, then each its gpu_memory_utilization and start
    wave, then check that no GPU is promised beyond max_gpu_utilization."""
    if host.accelerator == "cpu":
        return _HostPlan(_place_cpu_host(host.name, demands), [], [])
    gpus = {
        g.index: GpuState(g.index, g.name, g.memory_gib, settings.max_gpu_utilization)
        for g in host.gpus
    }
    plan = _HostPlan([], [], [])
    placed = _assign_gpus(settings, host.name, demands, gpus, plan)
    plan.instances = _gpu_instances(host.name, demands, placed, plan.problems)
    plan.usage = _gpu_usage(host.name, gpus, plan.instances)
    plan.problems.extend(_oversubscribed(settings, host.name, plan.usage))
    return plan


def _assign_gpus(
    settings: PlannerSettings,
    host_name: str,
    demands: list[_Demand],
    gpus: dict[int, GpuState],
    plan: _HostPlan,
) -> dict[str, _Placement]:
    """Each model that fits -> its placement; the others' problems go to ``plan``.

    Explicit placements first, then the largest models first (first-fit decreasing).
    """
    placed: dict[str, _Placement] = {}
    ordered = sorted(
        demands,
        key=lambda d: (not isinstance(d.model.gpus, list), -d.estimate.per_gpu_gib(1), d.position),
    )
    for d in ordered:
        problem = _parallelism_problem(d, len(gpus))
        if problem is not None:
            plan.problems.append(problem)
            continue
        sizes = _sizes_to_try(d.model, d.shape.num_attention_heads, len(gpus))
        placement = _fit(d, sizes, gpus, settings.placement)
        if placement is None:
            size = max(sizes) if d.model.gpus == "auto" else sizes[0]
            plan.problems.append(_unfit_problem(settings, host_name, d, size, gpus))
            plan.unfit[d.path] = _Unfit(d, size)
            continue
        for gpu in placement.gpus:
            gpu.add(d.model.name, placement.need_gib, d.model.engine.gpu_memory_utilization)
        placed[d.model.name] = placement
    return placed


def _gpu_instances(
    host_name: str,
    demands: list[_Demand],
    placed: dict[str, _Placement],
    problems: list[PlanProblem],
) -> list[Instance]:
    """The placed models in hxp.yml's order; instances that share a GPU start one after
    another. Problems of explicit gpu_memory_utilization values go to ``problems``."""
    instances: list[Instance] = []
    started: dict[int, int] = {}  # gpu index -> last start wave on it
    for d in sorted(demands, key=lambda d: d.position):
        placement = placed.get(d.model.name)
        if placement is None:
            continue
        problem = _utilization_problem(d, placement.need_gib, placement.gpus)
        if problem is not None:
            problems.append(problem)
        wave = 1 + max((started.get(g.index, 0) for g in placement.gpus), default=0)
        for g in placement.gpus:
            started[g.index] = wave
        instances.append(_gpu_instance(host_name, d, placement, wave))
    return instances


def _gpu_instance(host_name: str, demand: _Demand, placement: _Placement, wave: int) -> Instance:
    need, chosen = placement.need_gib, placement.gpus
    utilization = _utilization(demand.model, need, chosen)
    return Instance(
        model=demand.model.name,
        host=host_name,
        port=demand.model.port,
        device="cuda",
        gpu_ids=tuple(g.index for g in chosen),
        tensor_parallel_size=placement.tensor_parallel_size,
        weights_gib=demand.estimate.weights_gib,
        kv_gib=demand.estimate.kv_gib,
        need_per_gpu_gib=need,
        gpu_memory_utilization=utilization,
        headroom_gib=min(g.memory_gib for g in chosen) * utilization - need,
        start_order=wave,
        shape_origin=demand.shape.origin,
        **_stage_fields(demand.model),
    )


def _stage_fields(model: SizedModel) -> dict[str, Any]:
    if model.pipeline_size == 1:
        return {}
    return {
        "pipeline_rank": model.pipeline_rank,
        "pipeline_size": model.pipeline_size,
        "layers": model.layers,
    }


def _gpu_usage(
    host_name: str, gpus: dict[int, GpuState], instances: list[Instance]
) -> list[GpuUsage]:
    return [
        GpuUsage(
            host=host_name,
            index=g.index,
            name=g.name,
            memory_gib=g.memory_gib,
            planned_gib=g.used_gib,
            utilization_sum=round(
                sum(i.gpu_memory_utilization or 0 for i in instances if g.index in i.gpu_ids),
                4,
            ),
            tenants=tuple(g.tenants),
        )
        for g in gpus.values()
    ]


def _oversubscribed(
    settings: PlannerSettings, host_name: str, usage: list[GpuUsage]
) -> Iterator[PlanProblem]:
    """GPUs whose tenants' explicit gpu_memory_utilization values add up to too much."""
    for row in usage:
        if row.utilization_sum > settings.max_gpu_utilization + 1e-9:
            yield PlanProblem(
                ("models",),
                f"GPU {row.index} on {host_name}: gpu_memory_utilization of "
                f"{', '.join(row.tenants)} adds up to {row.utilization_sum:.2f}, "
                "above planner.max_gpu_utilization "
                f"{settings.max_gpu_utilization:.2f}; lower the explicit values",
            )


def _unfit_problem(
    settings: PlannerSettings,
    host_name: str,
    demand: _Demand,
    size: int,
    gpus: dict[int, GpuState],
) -> PlanProblem:
    estimate = demand.estimate
    best = max(g.free_gib for g in gpus.values())
    return PlanProblem(
        demand.path,
        f"model {demand.model.name!r} does not fit on {host_name}: it needs "
        f"{estimate.per_gpu_gib(size):.1f} GiB per GPU with tensor_parallel_size {size} "
        f"(weights {estimate.weights_gib:.1f} GiB + KV cache {estimate.kv_gib:.1f} GiB, "
        f"split {size} ways, + {settings.overhead_gib_per_gpu:.1f} GiB overhead) but "
        f"at most {best:.1f} GiB is free on a GPU ({settings.max_gpu_utilization:.0%}"
        " of its memory, less what other models use)",
    )


def _ceil(value: float) -> float:
    return math.ceil(value * 1000 - 1e-9) / 1000


def _utilization(model: SizedModel, need: float, chosen: list[GpuState]) -> float:
    """need / memory (rounded up), plus this instance's share of each GPU's spare fraction.

    The spare fraction is shared among the tenants the planner sets utilization for, in
    proportion to need and rounded down: with the explicit values, the tenants of a GPU add up
    to at most max_gpu_utilization unless the explicit values alone leave too little.
    """
    if model.engine.gpu_memory_utilization is not None:
        return model.engine.gpu_memory_utilization
    base = chosen[0].fraction(need)
    share = min(gpu.spare * need / gpu.shared_gib for gpu in chosen)
    return round(base + math.floor(share * 1000) / 1000, 3)


# --------------------------------------------------------------------------- suggestions


@dataclass(frozen=True)
class _Host:
    """One host's planning problem: what a suggestion is tried against."""

    settings: PlannerSettings
    spec: HostSpec
    demands: list[_Demand]


def _trial(host: _Host, before: _HostPlan, unfit: _Unfit) -> Callable[[Change], Instance | None]:
    """Plans the host again with a change to the unfit model: its instance if that model then
    places, every model placed before still does, and no problem is new."""
    target = unfit.demand
    placed_before = {i.model for i in before.instances} | {target.model.name}
    allowed = Counter(p.path for p in before.problems if p.path != target.path)
    overhead = host.settings.overhead_gib_per_gpu

    def placed_with(change: Change) -> Instance | None:
        model = with_change(target.model, change)
        changed = _Demand(model, _estimate(model, overhead))
        demands = [changed if d is target else d for d in host.demands]
        after = _place_host(host.settings, host.spec, demands)
        instances = {i.model: i for i in after.instances}
        if placed_before <= instances.keys() and Counter(p.path for p in after.problems) <= allowed:
            return instances[model.name]
        return None

    return placed_with


def _largest_value(
    placed_with: Callable[[Change], Instance | None], key: str, low: int, high: int
) -> int | None:
    """The largest value of ``key`` in [low, high] the model places with, by bisection (fewer
    tokens or sequences need less memory); only a value that placed is ever returned."""
    if high < low or placed_with({key: low}) is None:
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if placed_with({key: middle}) is None:
            high = middle - 1
        else:
            low = middle
    return low


def _suggestions(host: _Host, before: _HostPlan, unfit: _Unfit) -> Iterator[Suggestion]:
    placed_with = _trial(host, before, unfit)
    yield from _quantization_suggestion(placed_with, unfit.demand.model)
    yield from _more_gpus_suggestion(placed_with, host.spec, unfit)
    yield from _smaller_batch_suggestions(placed_with, unfit.demand.model.engine)


def _quantization_suggestion(
    placed_with: Callable[[Change], Instance | None], model: SizedModel
) -> Iterator[Suggestion]:
    if model.engine.quantization is not None:
        return
    for quantization in SUGGESTED_QUANTIZATIONS:
        change: Change = {"engine.quantization": quantization}
        if instance := placed_with(change):
            yield Suggestion(
                f"quantization: {quantization} (needs {instance.need_per_gpu_gib:.1f} GiB per GPU)",
                change,
            )
            return


def _more_gpus_suggestion(
    placed_with: Callable[[Change], Instance | None], host: HostSpec, unfit: _Unfit
) -> Iterator[Suggestion]:
    model = unfit.demand.model
    for size in valid_tp_sizes(model.shape.num_attention_heads, len(host.gpus)):
        # The size already tried, unless the model named its GPUs: others may have room.
        if size < unfit.tensor_parallel_size or (
            size == unfit.tensor_parallel_size and not isinstance(model.gpus, list)
        ):
            continue
        change: Change = {"gpus": size, "engine.tensor_parallel_size": size}
        if instance := placed_with(change):
            yield Suggestion(
                f"gpus: {size} with tensor_parallel_size: {size} "
                f"(needs {instance.need_per_gpu_gib:.1f} GiB per GPU)",
                change,
            )
            return


def _smaller_batch_suggestions(
    placed_with: Callable[[Change], Instance | None], engine: EngineSpec
) -> Iterator[Suggestion]:
    """The longest context, then the most sequences, the model places with."""
    length = _largest_value(placed_with, "engine.max_model_len", 16, engine.max_model_len - 1)
    if length is not None:
        yield Suggestion(
            f"max_model_len: {length} (with max_num_seqs {engine.max_num_seqs})",
            {"engine.max_model_len": length},
        )
    sequences = _largest_value(placed_with, "engine.max_num_seqs", 1, engine.max_num_seqs - 1)
    if sequences is not None:
        yield Suggestion(
            f"max_num_seqs: {sequences} (with max_model_len {engine.max_model_len})",
            {"engine.max_num_seqs": sequences},
        )


def _larger_host(host: _Host, demand: _Demand) -> str | None:
    """A host of more GPUs like this one's largest that the model would fit alone: no change
    to its entry gives that, so it is part of the message, not a suggestion."""
    usable = max(g.memory_gib for g in host.spec.gpus) * host.settings.max_gpu_utilization
    count = next(
        (
            n
            for n in OWN_HOST_GPU_COUNTS
            if demand.shape.num_attention_heads % n == 0
            and demand.estimate.per_gpu_gib(n) <= usable
        ),
        None,
    )
    if count is None or count <= len(host.spec.gpus):
        return None
    return f"a host with {count} such GPUs (tensor_parallel_size: {count})"


def _with_suggestions(host: _Host, plan: _HostPlan) -> list[PlanProblem]:
    """The host's problems, those of models that do not fit with what would make them fit."""
    problems = []
    for problem in plan.problems:
        unfit = plan.unfit.get(problem.path)
        if unfit is None:
            problems.append(problem)
            continue
        suggestions = tuple(_suggestions(host, plan, unfit))
        more_gpus = any("gpus" in s.change for s in suggestions)
        larger_host = None if more_gpus else _larger_host(host, unfit.demand)
        hints = [s.text for s in suggestions] + ([larger_host] if larger_host else [])
        message = problem.message + (f"; what would fit: {'; '.join(hints)}" if hints else "")
        problems.append(replace(problem, message=message, suggestions=suggestions))
    return problems


# --------------------------------------------------------------------------- the plan


def plan_models(
    settings: PlannerSettings, hosts: Mapping[str, HostSpec], models: Sequence[SizedModel]
) -> Plan:
    """Place every model on its host; raise PlanError listing every model that does not fit,
    with what would make it fit."""
    by_host: dict[str, list[_Demand]] = {}
    for model in models:
        demand = _Demand(model, _estimate(model, settings.overhead_gib_per_gpu))
        by_host.setdefault(model.host, []).append(demand)
    instances: list[Instance] = []
    usage: list[GpuUsage] = []
    problems: list[PlanProblem] = []
    for host_name, demands in by_host.items():
        host = _Host(settings, hosts[host_name], demands)
        placement = _place_host(settings, host.spec, demands)
        instances.extend(placement.instances)
        usage.extend(placement.usage)
        problems.extend(_with_suggestions(host, placement))
    problems.extend(_pipeline_problems(models, instances))
    if problems:
        raise PlanError(problems)
    # hxp.yml's order of models, each model's replicas in the order of its hosts: the order
    # the router numbers a model's backends in (name, name-2, ...).
    order = {(m.name, m.host): (m.position, k) for k, m in enumerate(models)}
    ordered = sorted(instances, key=lambda i: order[i.model, i.host])
    return Plan(
        tuple(i for i in ordered if i.pipeline_rank == 0),
        tuple(usage),
        tuple(i for i in ordered if i.pipeline_rank > 0),
    )


def _pipeline_problems(
    models: Sequence[SizedModel], instances: list[Instance]
) -> Iterator[PlanProblem]:
    """vLLM runs every stage of a pipeline with one tensor-parallel size (its world is
    pipeline x tensor ranks, the same number on each node)."""
    stages: dict[str, list[Instance]] = {}
    for inst in instances:
        if inst.pipeline_size > 1:
            stages.setdefault(inst.model, []).append(inst)
    position = {m.name: m.position for m in models}
    for model, placed in stages.items():
        sizes = {i.host: i.tensor_parallel_size for i in placed}
        if len(set(sizes.values())) > 1:
            given = ", ".join(f"{h}: {tp}" for h, tp in sizes.items())
            yield PlanProblem(
                ("models", position[model], "engine", "tensor_parallel_size"),
                f"the stages of model {model!r} got different tensor-parallel sizes ({given}); "
                "vLLM runs every stage with the same size: set engine.tensor_parallel_size to "
                f"one that fits on every host of its pipeline (at most {min(sizes.values())} "
                "here)",
            )


# --------------------------------------------------------------------------- blue-green swaps


@dataclass(frozen=True)
class SwapFit:
    """Whether a model's new version can start beside its old one. ``short_gib``: the memory
    the new version lacks (0 when it fits; None when the host gives nothing to check against)."""

    model: str
    wanted: bool
    short_gib: float | None

    @property
    def blue_green(self) -> bool:
        return self.wanted and self.short_gib == 0

    def describe(self) -> str:
        if not self.wanted:
            return "rolling"
        if self.short_gib is None:
            return "rolling (blue-green needs the host's memory_gb to check that both fit)"
        if self.short_gib > 0:
            return f"rolling (blue-green needs {self.short_gib:.1f} GiB more than free)"
        return "blue-green"


def _gpu_short_gib(settings: PlannerSettings, plan: Plan, inst: Instance) -> float:
    """What the new version lacks on the fullest of the old one's GPUs: it takes what the old
    one took (its gpu_memory_utilization of the GPU, or its planned need) while both run."""
    short = 0.0
    for gpu in plan.gpus:
        if gpu.host != inst.host or gpu.index not in inst.gpu_ids:
            continue
        free = gpu.memory_gib * (settings.max_gpu_utilization - gpu.utilization_sum)
        need = (
            inst.gpu_memory_utilization * gpu.memory_gib
            if inst.gpu_memory_utilization is not None
            else inst.need_per_gpu_gib
        )
        short = max(short, need - free)
    return _ceil(short) if short > 0 else 0.0


def swap_fits(
    settings: PlannerSettings,
    plan: Plan,
    wanted: Mapping[str, bool],
    host_memory_gib: Mapping[str, float | None],
    memory_limit_gib: Mapping[str, float],
) -> dict[str, SwapFit]:
    """Per model: can its next version start beside the running one (blue-green), or must it
    restart in place (rolling)? Swaps run one model at a time, so each is checked against the
    plan alone. On a GPU its GPUs must have room for a second copy; on a CPU host the servers'
    memory limits with a second copy of this one must fit in the host's memory_gb."""
    fits = {}
    for inst in plan.instances:
        if not wanted.get(inst.model, False):
            fits[inst.model] = SwapFit(inst.model, False, None)
            continue
        short: float | None
        if inst.device == "cuda":
            short = _gpu_short_gib(settings, plan, inst)
        elif (memory := host_memory_gib.get(inst.host)) is None:
            short = None
        else:
            here = (*plan.for_host(inst.host), *plan.workers_on(inst.host))
            limits = sum(memory_limit_gib[i.model] for i in here)
            short = max(limits + memory_limit_gib[inst.model] - memory, 0.0)
        fits[inst.model] = SwapFit(inst.model, True, short)
    return fits
