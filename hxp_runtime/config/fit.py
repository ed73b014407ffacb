"""Fit: size each model and plan its GPUs (the last rule of hxp.yml, and ``hxp plan``).

Sizing reads what the planner cannot: a model's shape from its files on the controller
(``source.local_path``, through :mod:`hxp_runtime.modelinfo`) or from its declared
``architecture`` (a preset's included), its host from the config. The planner then places the
sized models as plain data (:func:`hxp_runtime.planner.plan_models`).
"""

from __future__ import annotations

import math
from pathlib import Path

from hxp_runtime.config.endpoints import engine_hosts
from hxp_runtime.config.problems import Dropped, Problem
from hxp_runtime.config.schema import Architecture, HxpConfig, Model
from hxp_runtime.modelinfo import ModelInfoError, ModelShape, shape_from_directory
from hxp_runtime.planner import (
    Change,
    EngineSpec,
    GpuSpec,
    HostSpec,
    Plan,
    PlanError,
    PlannerSettings,
    PlanProblem,
    SizedModel,
    SwapFit,
    plan_models,
    swap_fits,
)


def plan_deployment(cfg: HxpConfig) -> Plan:
    """Place every model of ``cfg``; raise PlanError listing every model that cannot be sized
    or does not fit."""
    problems: list[PlanProblem] = []
    sized: list[SizedModel] = []
    placed = engine_hosts(cfg)
    for position, model in enumerate(cfg.models):
        if not placed[model.name]:
            continue  # reported by the config's host rule
        shape = _shape(model, position, cfg.base_dir)
        if isinstance(shape, PlanProblem):
            problems.append(shape)
            continue
        context = _context_problem(model, shape, position)
        if context is not None:
            problems.append(context)
        stages = _stages_problem(model, shape, position)
        if stages is not None:
            problems.append(stages)
            continue
        # Each replica, or each stage of a pipeline, is placed on its host's GPUs as a model of
        # its own.
        sized.extend(
            sized_model(model, position, host, shape, rank)
            for rank, host in enumerate(placed[model.name])
        )
    try:
        plan = plan_models(planner_settings(cfg), host_specs(cfg), sized)
    except PlanError as exc:
        raise PlanError(problems + exc.problems) from None
    if problems:
        raise PlanError(problems)
    return plan


def plan_swaps(cfg: HxpConfig, plan: Plan) -> dict[str, SwapFit]:
    """Per model of ``plan``: whether a new version of it swaps blue-green or rolls."""
    return swap_fits(
        planner_settings(cfg),
        plan,
        {m.name: cfg.blue_green_wanted(m) for m in cfg.models},
        {h.name: h.memory_gb for h in cfg.hosts},
        {m.name: m.memory_limit_gb for m in cfg.models},
    )


def plan_problems(cfg: HxpConfig, found: list[Problem], dropped: Dropped) -> list[Problem]:
    """The planner's problems for the models no earlier rule found fault with."""
    plannable = _plannable(cfg, found, dropped)
    subset = cfg.model_copy(update={"models": [cfg.models[i] for i in plannable]})
    subset._source_file = cfg._source_file
    try:
        plan_deployment(subset)
    except PlanError as exc:
        return [
            Problem(
                ("models", plannable[p.path[1]], *p.path[2:])
                if len(p.path) > 1 and isinstance(p.path[1], int)
                else p.path,
                p.message,
            )
            for p in exc.problems
        ]
    return []


def _plannable(cfg: HxpConfig, found: list[Problem], dropped: Dropped) -> list[int]:
    """Positions of the models on a known, faultless host whose entries have no problem."""
    faulty_hosts = {
        cfg.hosts[p.path[1]].name
        for p in found
        if p.path[:1] == ("hosts",) and len(p.path) > 1 and isinstance(p.path[1], int)
    }
    known_hosts = {h.name for h in cfg.hosts}
    placed = engine_hosts(cfg)
    plannable: list[int] = []
    for i, model in enumerate(cfg.models):
        hosts = set(placed[model.name])
        if (
            hosts
            and hosts <= known_hosts
            and not hosts & faulty_hosts
            and not dropped.hides_host_of(cfg, ("models", i))
            and not any(p.path[:2] == ("models", i) for p in found)
        ):
            plannable.append(i)
    return plannable


def apply_change(model: Model, change: Change) -> Model:
    """``model`` as hxp.yml would give it with ``change`` written into its entry."""
    data = model.model_dump()
    for key, value in change.items():
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[leaf] = value
    return Model.model_validate(data)


# --------------------------------------------------------------------------- the planner's inputs


def planner_settings(cfg: HxpConfig) -> PlannerSettings:
    return PlannerSettings(
        placement=cfg.planner.placement,
        max_gpu_utilization=cfg.planner.max_gpu_utilization,
        overhead_gib_per_gpu=cfg.planner.overhead_gb_per_gpu,
    )


def host_specs(cfg: HxpConfig) -> dict[str, HostSpec]:
    specs: dict[str, HostSpec] = {}
    for host in cfg.hosts:
        gpus = tuple(GpuSpec(g.index, g.name, g.memory_gb) for g in host.gpus)
        specs.setdefault(host.name, HostSpec(host.name, host.accelerator, gpus))
    return specs


def sized_model(
    model: Model, position: int, host: str, shape: ModelShape, rank: int = 0
) -> SizedModel:
    """The planner's view of ``model`` on ``host``: a replica, or pipeline stage ``rank``."""
    engine = model.engine
    return SizedModel(
        position=position,
        name=model.name,
        host=host,
        port=model.port,
        task=model.task,
        gpus=model.gpus,
        engine=EngineSpec(
            dtype=engine.dtype,
            quantization=engine.quantization,
            kv_cache_dtype=engine.kv_cache_dtype,
            max_model_len=engine.max_model_len,
            max_num_seqs=engine.max_num_seqs,
            tensor_parallel_size=engine.tensor_parallel_size,
            gpu_memory_utilization=engine.gpu_memory_utilization,
        ),
        shape=shape,
        pipeline_rank=rank if model.pipeline is not None else 0,
        pipeline_size=model.pipeline_size,
    )


# --------------------------------------------------------------------------- sizing


def resolve_shape(model: Model, base_dir: Path) -> ModelShape | None:
    """The model's shape from its local files if given, else its declared architecture."""
    if model.source.local_path is not None:
        return shape_from_directory(base_dir / model.source.local_path)
    if model.architecture is not None:
        return shape_from_architecture(model.architecture)
    return None


def shape_from_architecture(arch: Architecture) -> ModelShape:
    return ModelShape(
        params=arch.params_b * 1e9,
        num_layers=arch.num_layers,
        num_attention_heads=arch.num_attention_heads,
        num_kv_heads=arch.num_kv_heads,
        head_dim=arch.head_dim,
        max_position_embeddings=arch.max_position_embeddings,
    )


def _shape(model: Model, position: int, base_dir: Path) -> ModelShape | PlanProblem:
    """The model's shape, or why it cannot be sized."""
    try:
        shape = resolve_shape(model, base_dir)
    except ModelInfoError as exc:
        return PlanProblem(("models", position, "source", "local_path"), str(exc))
    if shape is None:
        return PlanProblem(
            ("models", position),
            f"cannot size model {model.name!r}: give source.local_path (a directory with "
            "config.json), an architecture: block, or a preset",
        )
    return shape


def _stages_problem(model: Model, shape: ModelShape, position: int) -> PlanProblem | None:
    """vLLM gives each pipeline stage at least one layer."""
    if model.pipeline_size <= shape.num_layers:
        return None
    return PlanProblem(
        ("models", position, "pipeline", "hosts"),
        f"model {model.name!r} has {shape.num_layers} layers, too few for "
        f"{model.pipeline_size} pipeline stages (each stage holds at least one); list at most "
        f"{shape.num_layers} hosts",
    )


def _context_problem(model: Model, shape: ModelShape, position: int) -> PlanProblem | None:
    """max_model_len beyond the model's context: vLLM refuses to start (positions past the
    trained ones give nonsense) unless engine.rope_scaling extends the context."""
    engine = model.engine
    wanted = engine.max_model_len
    trained = shape.max_position_embeddings
    rope = engine.rope_scaling
    source = (
        "architecture.max_position_embeddings"
        if shape.origin == "declared"
        else "max_position_embeddings in its config.json"
    )
    path = ("models", position, "engine", "max_model_len")
    if rope is None:
        if trained is None or wanted <= trained:
            return None
        return PlanProblem(
            path,
            f"max_model_len {wanted} is above the {trained}-token context of model "
            f"{model.name!r} ({source}); lower max_model_len to {trained} or less, or, for a "
            f"RoPE model, extend the context with engine.rope_scaling (e.g. rope_type: yarn, "
            f"factor: {_factor_for(wanted, trained)})",
        )
    original = rope.original_max_position_embeddings or trained
    if original is None:
        return None
    limit = int(rope.factor * original)
    if wanted <= limit:
        return None
    return PlanProblem(
        path,
        f"max_model_len {wanted} is above the {limit} tokens engine.rope_scaling gives model "
        f"{model.name!r} (factor {rope.factor:g} x {original}); lower max_model_len to {limit} "
        f"or less, or raise engine.rope_scaling.factor to {_factor_for(wanted, original)}",
    )


def _factor_for(length: int, original: int) -> float:
    """The smallest RoPE factor (two decimals) that stretches ``original`` to ``length``."""
    return math.ceil(length / original * 100) / 100
