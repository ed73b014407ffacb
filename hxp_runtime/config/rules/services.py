"""Every service runs on a defined host of its group: the one it names, or the only one."""

from __future__ import annotations

from collections.abc import Iterator

from hxp_runtime.config.endpoints import model_hosts
from hxp_runtime.config.problems import Dropped, Problem, format_path
from hxp_runtime.config.schema import (
    Cache,
    Database,
    HostGroup,
    HxpConfig,
    Metrics,
    Model,
    VectorDb,
)
from hxp_runtime.yamlsource import PathKey


def service_host_problems(cfg: HxpConfig, dropped: Dropped) -> Iterator[Problem]:
    for i, model in enumerate(cfg.models):
        what = f"model {model.name!r}"
        if model.hosts is not None:
            for j, host in enumerate(model.hosts):
                yield from _named_host_rule(
                    cfg, host, HostGroup.LLM, ("models", i, "hosts", j), what, dropped
                )
        elif model.replicas is not None:
            yield from _replicas_rule(cfg, model, ("models", i, "replicas"), dropped)
        elif model.pipeline is not None:
            for j, host in enumerate(model.pipeline.hosts):
                yield from _named_host_rule(
                    cfg, host, HostGroup.LLM, ("models", i, "pipeline", "hosts", j), what, dropped
                )
        else:
            yield from _host_rule(
                cfg,
                model.host,
                HostGroup.LLM,
                ("models", i),
                what,
                dropped,
                or_else=(
                    ", or hosts (a replica on each), replicas (how many) or pipeline (one "
                    "server split across hosts)"
                ),
            )
    if cfg.router.hosts is not None:
        for j, host in enumerate(cfg.router.hosts):
            yield from _named_host_rule(
                cfg, host, HostGroup.LLM, ("router", "hosts", j), "a router", dropped
            )
    else:
        yield from _host_rule(
            cfg,
            cfg.router.host,
            HostGroup.LLM,
            ("router",),
            "the router",
            dropped,
            or_else=", or hosts and virtual_address (routers behind one address)",
        )
    sections: list[tuple[str, Database | VectorDb | Cache | Metrics | None, HostGroup]] = [
        ("database", cfg.database, HostGroup.DATABASE),
        ("vector_db", cfg.vector_db, HostGroup.VECTOR),
        ("cache", cfg.cache, HostGroup.CACHE),
        ("metrics", cfg.metrics, HostGroup.METRICS),
    ]
    for key, section, group in sections:
        if section is not None:
            yield from _host_rule(cfg, section.host, group, (key,), key, dropped)


def _host_rule(
    cfg: HxpConfig,
    wanted: str | None,
    group: HostGroup,
    path: PathKey,
    what: str,
    dropped: Dropped,
    or_else: str = "",
) -> Iterator[Problem]:
    """``wanted`` or, when not given, the only host of ``group``; ``or_else``: what else the
    entry may set instead of a host."""
    names = {h.name: h for h in cfg.hosts}
    if (wanted is None and group in dropped.groups) or (
        wanted in dropped.names and wanted not in names
    ):
        return
    if wanted is None:
        members = cfg.hosts_in(group)
        if len(members) != 1:
            found = ", ".join(h.name for h in members) or "none"
            yield Problem(
                path,
                f"{what} needs a host: {len(members)} hosts are in group {group.value!r} "
                f"({found}); set {format_path((*path, 'host'))}{or_else}",
            )
        return
    yield from _named_host_rule(cfg, wanted, group, (*path, "host"), what, dropped)


def _named_host_rule(
    cfg: HxpConfig, wanted: str, group: HostGroup, path: PathKey, what: str, dropped: Dropped
) -> Iterator[Problem]:
    """``wanted`` (given at ``path``) is a defined host of ``group``."""
    names = {h.name: h for h in cfg.hosts}
    if wanted in dropped.names and wanted not in names:
        return
    if wanted not in names:
        yield Problem(
            path, f"host {wanted!r} is not defined; use one of: {', '.join(sorted(names))}"
        )
    elif group not in names[wanted].groups:
        yield Problem(
            path,
            f"host {wanted!r} is not in group {group.value!r}; add {group.value!r} to its groups "
            f"or place {what} on another host",
        )


def _replicas_rule(
    cfg: HxpConfig, model: Model, path: PathKey, dropped: Dropped
) -> Iterator[Problem]:
    """replicas: N needs N llm hosts, N with room where hosts state their memory_gb."""
    if HostGroup.LLM in dropped.groups:
        return
    llm = cfg.hosts_in(HostGroup.LLM)
    if model.replicas is None or model_hosts(cfg)[model.name]:
        return
    if model.replicas > len(llm):
        yield Problem(
            path,
            f"model {model.name!r} asks for {model.replicas} replicas but {len(llm)} hosts are "
            f"in group 'llm' ({', '.join(h.name for h in llm) or 'none'}); a host runs one "
            "replica of a model: lower replicas or add llm hosts",
        )
    else:
        yield Problem(
            path,
            f"model {model.name!r} asks for {model.replicas} replicas but fewer llm hosts have "
            f"{model.memory_limit_gb:g} GiB (its memory_limit_gb) left of their memory_gb after "
            "the models already placed; lower replicas or memory_limit_gb, or raise memory_gb",
        )
