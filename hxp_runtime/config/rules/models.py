"""Each model's GPUs and tensor parallelism against what its host has (whether the model fits
in their memory is the planner's, in :mod:`hxp_runtime.config.fit`)."""

from __future__ import annotations

from collections.abc import Iterator

from hxp_runtime.config.endpoints import engine_hosts
from hxp_runtime.config.problems import Dropped, Problem
from hxp_runtime.config.rules.duplicates import duplicates
from hxp_runtime.config.schema import Host, HostGroup, HxpConfig, Model
from hxp_runtime.yamlsource import PathKey


def gpu_problems(cfg: HxpConfig, dropped: Dropped) -> Iterator[Problem]:
    hosts = {h.name: h for h in cfg.hosts}
    # Every stage of a model split across hosts has the GPUs of its own host.
    replicas = engine_hosts(cfg)
    for i, model in enumerate(cfg.models):
        if dropped.hides_host_of(cfg, ("models", i)):
            continue
        for name in replicas[model.name]:
            llm_host = hosts.get(name)
            if llm_host is None or HostGroup.LLM not in llm_host.groups:
                continue  # the service host rule already reported it
            yield from _gpu_rules(model, llm_host, ("models", i))
        yield from _one_platform(model, hosts, ("models", i))
        yield from _cpu_stages_compiled(model, hosts, ("models", i))


def _one_platform(model: Model, hosts: dict[str, Host], path: PathKey) -> Iterator[Problem]:
    """The stages of a pipeline run one engine: vLLM's build for one platform, GPU or CPU."""
    if model.pipeline is None:
        return
    kinds = {hosts[h].accelerator: h for h in model.pipeline.hosts if h in hosts}
    if len(kinds) > 1:
        found = ", ".join(f"{h}: {kind}" for kind, h in sorted(kinds.items()))
        yield Problem(
            (*path, "pipeline", "hosts"),
            f"the stages of model {model.name!r} are on hosts of different accelerators "
            f"({found}); one model's stages all run on nvidia hosts or all on cpu hosts: "
            "list hosts of one kind",
        )


def _cpu_stages_compiled(model: Model, hosts: dict[str, Host], path: PathKey) -> Iterator[Problem]:
    """vLLM 0.32 on CPU allocates a later stage's buffer for the activations it receives only in
    its compilation warm-up (CPUModelRunner.warming_up_model, skipped in eager mode): with
    --enforce-eager the first request kills the engine (docs/benchmarks.md, "A model split
    across two processes")."""
    if model.pipeline is None or not any(
        h in hosts and hosts[h].accelerator == "cpu" for h in model.pipeline.hosts
    ):
        return
    for j, arg in enumerate(model.engine.extra_args):
        if arg.split("=", 1)[0].replace("_", "-") == "--enforce-eager":
            yield Problem(
                (*path, "engine", "extra_args", j),
                f"model {model.name!r} is split across CPU hosts, where vLLM's pipeline stages "
                "fail the first request in eager mode (the later stages' buffers are set up "
                "only while compiling); remove --enforce-eager",
            )


def _gpu_rules(model: Model, host: Host, path: PathKey) -> Iterator[Problem]:
    if host.accelerator == "cpu":
        yield from _cpu_host_rules(model, host, path)
        return
    if not host.gpus:
        yield Problem(
            (*path, "host"),
            f"host {host.name!r} declares no GPUs; add hosts[].gpus or set accelerator: cpu",
        )
        return
    yield from _gpu_choice_problems(model, host, path)
    tp = model.engine.tensor_parallel_size
    count = _gpu_count(model, host)
    if tp is not None and tp > count:
        yield Problem(
            (*path, "engine", "tensor_parallel_size"),
            f"tensor_parallel_size {tp} exceeds the {count} GPUs available to the model; "
            "lower it or give the model more GPUs",
        )


def _cpu_host_rules(model: Model, host: Host, path: PathKey) -> Iterator[Problem]:
    if isinstance(model.gpus, (list, int)):
        yield Problem(
            (*path, "gpus"),
            f"host {host.name!r} runs models on CPU (accelerator: cpu); remove gpus "
            "or use an nvidia host",
        )
    if model.engine.tensor_parallel_size not in (None, 1):
        yield Problem(
            (*path, "engine", "tensor_parallel_size"),
            f"host {host.name!r} has no GPUs; tensor_parallel_size must be 1",
        )


def _gpu_choice_problems(model: Model, host: Host, path: PathKey) -> Iterator[Problem]:
    """GPUs given by index must exist on the host, once each; a count must not exceed it."""
    available = host.gpu_by_index()
    if isinstance(model.gpus, list):
        for j, gpu in enumerate(model.gpus):
            if gpu not in available:
                yield Problem(
                    (*path, "gpus", j),
                    f"GPU {gpu} does not exist on {host.name!r} (it has {sorted(available)})",
                )
        yield from duplicates(
            [(str(g), (*path, "gpus", j)) for j, g in enumerate(model.gpus)], "GPU"
        )
    elif isinstance(model.gpus, int) and model.gpus > len(available):
        yield Problem(
            (*path, "gpus"),
            f"asks for {model.gpus} GPUs but {host.name!r} has {len(available)}",
        )


def _gpu_count(model: Model, host: Host) -> int:
    """How many GPUs the model runs on: those it names, the count it gives, or all the host's
    (by distinct index: a repeated index is its own problem)."""
    if isinstance(model.gpus, list):
        return len(model.gpus)
    if isinstance(model.gpus, int):
        return model.gpus
    return len(host.gpu_by_index())
