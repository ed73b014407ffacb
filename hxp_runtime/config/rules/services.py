"""Every service runs on a defined host of its group: the one it names, or the only one."""

from __future__ import annotations

from collections.abc import Iterator

from hxp_runtime.config.problems import Dropped, Problem, format_path
from hxp_runtime.config.schema import Cache, Database, HostGroup, HxpConfig, Metrics, VectorDb
from hxp_runtime.yamlsource import PathKey


def service_host_problems(cfg: HxpConfig, dropped: Dropped) -> Iterator[Problem]:
    for i, model in enumerate(cfg.models):
        yield from _host_rule(
            cfg, model.host, HostGroup.LLM, ("models", i), f"model {model.name!r}", dropped
        )
    yield from _host_rule(cfg, cfg.router.host, HostGroup.LLM, ("router",), "the router", dropped)
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
    cfg: HxpConfig, wanted: str | None, group: HostGroup, path: PathKey, what: str, dropped: Dropped
) -> Iterator[Problem]:
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
                f"({found}); set {format_path((*path, 'host'))}",
            )
        return
    if wanted not in names:
        yield Problem(
            (*path, "host"),
            f"host {wanted!r} is not defined; use one of: {', '.join(sorted(names))}",
        )
    elif group not in names[wanted].groups:
        yield Problem(
            (*path, "host"),
            f"host {wanted!r} is not in group {group.value!r}; add {group.value!r} to its groups "
            f"or place {what} on another host",
        )
