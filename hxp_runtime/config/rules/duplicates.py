"""Names that must be unique: hosts and their addresses, models with every name a client may
use for one, API keys, alert receivers, vector collections."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from hxp_runtime.config.problems import Dropped, Problem, format_path
from hxp_runtime.config.schema import HxpConfig
from hxp_runtime.yamlsource import PathKey


def duplicates(
    items: list[tuple[str, PathKey]],
    what: str,
    dropped: Dropped | None = None,
    already: Callable[[PathKey, PathKey], bool] = lambda first, again: False,
) -> Iterator[Problem]:
    """A problem for each repeated value, naming where it was first defined (in the file's
    positions); ``already`` says which pairs another rule reports."""
    seen: dict[str, PathKey] = {}
    original = dropped.original if dropped else (lambda path: path)
    for value, path in items:
        if value in seen:
            if not already(seen[value], path):
                yield Problem(
                    path,
                    f"duplicate {what} {value!r} (first defined at "
                    f"{format_path(original(seen[value]))}); names must be unique",
                )
        else:
            seen[value] = path


def duplicate_hosts(cfg: HxpConfig, dropped: Dropped) -> Iterator[Problem]:
    yield from duplicates(
        [(h.name, ("hosts", i, "name")) for i, h in enumerate(cfg.hosts)], "host name", dropped
    )
    yield from duplicates(
        [(str(h.address), ("hosts", i, "address")) for i, h in enumerate(cfg.hosts)],
        "host address",
        dropped,
    )


def duplicate_names(cfg: HxpConfig, dropped: Dropped) -> Iterator[Problem]:
    """Models, the names clients route by, and the named entries of the other sections."""
    yield from duplicates(
        [(m.name, ("models", i, "name")) for i, m in enumerate(cfg.models)], "model name", dropped
    )
    # Two models of one name are reported above already.
    yield from duplicates(
        _routing_names(cfg),
        "model name or alias",
        dropped,
        lambda first, again: first[-1] == again[-1] == "name",
    )
    yield from duplicates(
        [(k.name, ("router", "api_keys", i, "name")) for i, k in enumerate(cfg.router.api_keys)],
        "API key name",
    )
    if cfg.metrics:
        yield from duplicates(
            [
                (r.name, ("metrics", "alerting", "receivers", i, "name"))
                for i, r in enumerate(cfg.metrics.alerting.receivers)
            ],
            "receiver name",
        )
    if cfg.vector_db:
        yield from duplicates(
            [
                (c.name, ("vector_db", "collections", i, "name"))
                for i, c in enumerate(cfg.vector_db.collections)
            ],
            "collection name",
        )


def _routing_names(cfg: HxpConfig) -> list[tuple[str, PathKey]]:
    """Each model's distinct names (name, served name, aliases) with the field that sets it."""
    routing: list[tuple[str, PathKey]] = []
    for i, m in enumerate(cfg.models):
        names: dict[str, PathKey] = {m.name: ("models", i, "name")}
        names.setdefault(m.routing_name, ("models", i, "served_name"))
        for j, alias in enumerate(m.aliases):
            names.setdefault(alias, ("models", i, "aliases", j))
        routing.extend(names.items())
    return routing
