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

Everything here is a pure function of its arguments; file reading lives in modelinfo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from hxp_runtime.config import HostGroup, HxpConfig, Model, PathKey, resolve_host
from hxp_runtime.modelinfo import ModelInfoError, ModelShape, resolve_shape

GIB = float(2**30)
QUANT_BYTES = {"awq": 0.5, "gptq": 0.5, "bitsandbytes": 0.5, "fp8": 1.0, "int8": 1.0}
DTYPE_BYTES = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0}
KV_DTYPE_BYTES = {"fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0}
# What `dtype: auto` resolves to when config.json does not say (vLLM's own default for fp32
# checkpoints on GPU is half precision).
AUTO_DTYPE_BYTES = 2.0


@dataclass(frozen=True)
class PlanProblem:
    path: PathKey
    message: str


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


def _estimate_for(
    model: Model, shape: ModelShape, overhead: float, **change: object
) -> MemoryEstimate:
    engine = model.engine.model_copy(update=change)
    return estimate_memory(
        shape,
        dtype=engine.dtype,
        quantization=engine.quantization,
        kv_cache_dtype=engine.kv_cache_dtype,
        max_model_len=engine.max_model_len,
        max_num_seqs=engine.max_num_seqs,
        overhead_gib_per_gpu=overhead,
        task=model.task,
    )


# --------------------------------------------------------------------------- placement


@dataclass
class GpuState:
    index: int
    name: str
    memory_gib: float
    usable_gib: float
    tenants: list[str] = field(default_factory=list)
    needs: list[float] = field(default_factory=list)

    @property
    def used_gib(self) -> float:
        return sum(self.needs)

    @property
    def free_gib(self) -> float:
        return self.usable_gib - self.used_gib


@dataclass(frozen=True)
class Instance:
    """One vLLM server of the plan."""

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
    instances: tuple[Instance, ...]
    gpus: tuple[GpuUsage, ...]

    def for_host(self, host: str) -> list[Instance]:
        return [i for i in self.instances if i.host == host]

    def instance(self, model: str) -> Instance:
        return next(i for i in self.instances if i.model == model)


def valid_tp_sizes(heads: int, gpu_count: int) -> list[int]:
    return [tp for tp in range(1, gpu_count + 1) if heads % tp == 0]


def _choose_gpus(
    gpus: list[GpuState], count: int, need: float, placement: str
) -> list[GpuState] | None:
    fitting = [g for g in gpus if g.free_gib >= need]
    if len(fitting) < count:
        return None
    # best-fit packs onto the fullest GPUs that still fit; spread takes the emptiest.
    fitting.sort(key=lambda g: (g.free_gib, g.index), reverse=placement == "spread")
    return sorted(fitting[:count], key=lambda g: g.index)


@dataclass
class _Demand:
    position: int
    model: Model
    shape: ModelShape
    estimate: MemoryEstimate


def _suggestions(demand: _Demand, gpus: list[GpuState], overhead: float, tp: int) -> list[str]:
    """What would make a model fit: quantization, more GPUs, a shorter context."""
    model, shape = demand.model, demand.shape
    usable = max(g.usable_gib for g in gpus)
    out: list[str] = []
    if model.engine.quantization is None:
        for quant in ("fp8", "awq"):
            need = _estimate_for(model, shape, overhead, quantization=quant).per_gpu_gib(tp)
            if need <= usable:
                out.append(f"quantization: {quant} (needs {need:.1f} GiB per GPU)")
                break
    for more in valid_tp_sizes(shape.num_attention_heads, len(gpus)):
        if more > tp and demand.estimate.per_gpu_gib(more) <= usable:
            out.append(
                f"gpus: {more} with tensor_parallel_size: {more} "
                f"(needs {demand.estimate.per_gpu_gib(more):.1f} GiB per GPU)"
            )
            break
    else:
        smallest = next(
            (
                n
                for n in (2, 4, 8, 16)
                if shape.num_attention_heads % n == 0 and demand.estimate.per_gpu_gib(n) <= usable
            ),
            None,
        )
        if smallest and smallest > len(gpus):
            out.append(f"a host with {smallest} such GPUs (tensor_parallel_size: {smallest})")
    kv_room = (usable - overhead) * tp - demand.estimate.weights_gib
    per_len = demand.estimate.kv_gib / model.engine.max_model_len if demand.estimate.kv_gib else 0
    if per_len and kv_room > 0:
        fit_len = int(kv_room / per_len)
        if 16 <= fit_len < model.engine.max_model_len:
            out.append(
                f"max_model_len: {fit_len} or less (with max_num_seqs {model.engine.max_num_seqs})"
            )
        per_seq = demand.estimate.kv_gib / model.engine.max_num_seqs
        fit_seqs = int(kv_room / per_seq)
        if 1 <= fit_seqs < model.engine.max_num_seqs:
            out.append(f"max_num_seqs: {fit_seqs} or less")
    return out


def _place_cpu_host(host_name: str, demands: list[_Demand]) -> list[Instance]:
    # CPU instances share the host's memory bandwidth and cores: start one at a time.
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
            start_order=order,
            shape_origin=d.shape.origin,
        )
        for order, d in enumerate(sorted(demands, key=lambda d: d.position), start=1)
    ]


def _place_host(
    cfg: HxpConfig, host_name: str, demands: list[_Demand]
) -> tuple[list[Instance], list[GpuUsage], list[PlanProblem]]:
    host = cfg.host(host_name)
    settings = cfg.planner
    problems: list[PlanProblem] = []
    if host.accelerator == "cpu":
        return _place_cpu_host(host_name, demands), [], problems

    gpus = {
        g.index: GpuState(g.index, g.name, g.memory_gb, g.memory_gb * settings.max_gpu_utilization)
        for g in host.gpus
    }
    placed: dict[str, tuple[list[GpuState], int, float]] = {}
    # Explicit placements first, then the largest models first (first-fit decreasing).
    ordered = sorted(
        demands,
        key=lambda d: (not isinstance(d.model.gpus, list), -d.estimate.per_gpu_gib(1), d.position),
    )
    for d in ordered:
        model, path = d.model, ("models", d.position)
        heads = d.shape.num_attention_heads
        tp = model.engine.tensor_parallel_size
        if tp is not None and heads % tp:
            problems.append(
                PlanProblem(
                    (*path, "engine", "tensor_parallel_size"),
                    f"tensor_parallel_size {tp} does not divide the model's {heads} attention "
                    f"heads; use one of {valid_tp_sizes(heads, len(gpus))}",
                )
            )
            continue
        if isinstance(model.gpus, list):
            chosen = [gpus[i] for i in model.gpus]
            tp = tp or len(chosen)
            sizes = [tp]
        else:
            count = model.gpus if isinstance(model.gpus, int) else None
            sizes = [tp] if tp else [count] if count else valid_tp_sizes(heads, len(gpus))
            chosen = []
        result = None
        for size in sizes:
            need = d.estimate.per_gpu_gib(size)
            if isinstance(model.gpus, list):
                if all(g.free_gib >= need for g in chosen):
                    result = (chosen, size, need)
            else:
                picked = _choose_gpus(
                    list(gpus.values()),
                    model.gpus if isinstance(model.gpus, int) else size,
                    need,
                    settings.placement,
                )
                if picked is not None:
                    result = (picked, size, need)
            if result:
                break
        if result is None:
            size = sizes[0] if not isinstance(model.gpus, str) else max(sizes)
            need = d.estimate.per_gpu_gib(size)
            best = max(g.free_gib for g in gpus.values())
            hints = _suggestions(d, list(gpus.values()), settings.overhead_gb_per_gpu, size)
            problems.append(
                PlanProblem(
                    path,
                    f"model {model.name!r} does not fit on {host_name}: it needs "
                    f"{need:.1f} GiB per GPU with tensor_parallel_size {size} (weights "
                    f"{d.estimate.weights_gib:.1f} GiB + KV cache {d.estimate.kv_gib:.1f} GiB, "
                    f"split {size} ways, + {settings.overhead_gb_per_gpu:.1f} GiB overhead) but "
                    f"at most {best:.1f} GiB is free on a GPU ({settings.max_gpu_utilization:.0%}"
                    " of its memory, less what other models use)"
                    + (f"; what would fit: {'; '.join(hints)}" if hints else ""),
                )
            )
            continue
        chosen_gpus, size, need = result
        for gpu in chosen_gpus:
            gpu.needs.append(need)
            gpu.tenants.append(model.name)
        placed[model.name] = (chosen_gpus, size, need)

    instances: list[Instance] = []
    started: dict[int, int] = {}  # gpu index -> last start wave on it
    for d in sorted(demands, key=lambda d: d.position):
        if d.model.name not in placed:
            continue
        chosen_gpus, size, need = placed[d.model.name]
        utilization = _utilization(d.model, need, chosen_gpus, settings.max_gpu_utilization)
        wave = 1 + max((started.get(g.index, 0) for g in chosen_gpus), default=0)
        for g in chosen_gpus:
            started[g.index] = wave
        instances.append(
            Instance(
                model=d.model.name,
                host=host_name,
                port=d.model.port,
                device="cuda",
                gpu_ids=tuple(g.index for g in chosen_gpus),
                tensor_parallel_size=size,
                weights_gib=d.estimate.weights_gib,
                kv_gib=d.estimate.kv_gib,
                need_per_gpu_gib=need,
                gpu_memory_utilization=utilization,
                headroom_gib=min(g.memory_gib for g in chosen_gpus) * utilization - need,
                start_order=wave,
                shape_origin=d.shape.origin,
            )
        )
    usage = [
        GpuUsage(
            host=host_name,
            index=g.index,
            name=g.name,
            memory_gib=g.memory_gib,
            planned_gib=g.used_gib,
            utilization_sum=round(
                sum(i.gpu_memory_utilization or 0 for i in instances if g.index in i.gpu_ids), 4
            ),
            tenants=tuple(g.tenants),
        )
        for g in gpus.values()
    ]
    for row in usage:
        if row.utilization_sum > settings.max_gpu_utilization + 1e-9:
            problems.append(
                PlanProblem(
                    ("models",),
                    f"GPU {row.index} on {host_name}: gpu_memory_utilization of "
                    f"{', '.join(row.tenants)} adds up to {row.utilization_sum:.2f}, "
                    "above planner.max_gpu_utilization "
                    f"{settings.max_gpu_utilization:.2f}; lower the explicit values",
                )
            )
    return instances, usage, problems


def _ceil(value: float) -> float:
    return math.ceil(value * 1000 - 1e-9) / 1000


def _utilization(model: Model, need: float, chosen: list[GpuState], limit: float) -> float:
    """need / memory (rounded up), plus this instance's share of each GPU's spare fraction.

    The spare fraction of a GPU is what max_gpu_utilization leaves after every tenant's rounded
    need; it is shared in proportion to need and rounded down, so the tenants of a GPU add up
    to at most max_gpu_utilization.
    """
    if model.engine.gpu_memory_utilization is not None:
        return model.engine.gpu_memory_utilization
    base = _ceil(need / chosen[0].memory_gib)
    extras = []
    for gpu in chosen:
        # Every tenant of this GPU uses the same rounding, so their bases add up as below.
        tenants_base = sum(_ceil(n / gpu.memory_gib) for n in gpu.needs)
        spare = max(limit - tenants_base, 0.0)
        extras.append(spare * need / gpu.used_gib)
    return round(base + math.floor(min(extras) * 1000) / 1000, 3)


def plan_deployment(cfg: HxpConfig) -> Plan:
    """Place every model of ``cfg``; raise PlanError listing every model that does not fit."""
    problems: list[PlanProblem] = []
    by_host: dict[str, list[_Demand]] = {}
    for position, model in enumerate(cfg.models):
        host = resolve_host(cfg, model.host, HostGroup.LLM)
        if host is None:
            continue  # reported by the config's host rule
        try:
            shape = resolve_shape(model, cfg.base_dir)
        except ModelInfoError as exc:
            problems.append(PlanProblem(("models", position, "source", "local_path"), str(exc)))
            continue
        if shape is None:
            problems.append(
                PlanProblem(
                    ("models", position),
                    f"cannot size model {model.name!r}: give source.local_path (a directory with "
                    "config.json), an architecture: block, or a preset",
                )
            )
            continue
        estimate = _estimate_for(model, shape, cfg.planner.overhead_gb_per_gpu)
        by_host.setdefault(host, []).append(_Demand(position, model, shape, estimate))
    instances: list[Instance] = []
    usage: list[GpuUsage] = []
    for host, demands in by_host.items():
        host_instances, host_usage, host_problems = _place_host(cfg, host, demands)
        instances.extend(host_instances)
        usage.extend(host_usage)
        problems.extend(host_problems)
    if problems:
        raise PlanError(problems)
    order = {m.name: i for i, m in enumerate(cfg.models)}
    return Plan(tuple(sorted(instances, key=lambda i: order[i.model])), tuple(usage))
