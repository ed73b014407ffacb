"""The router's references to models (fallbacks, default model, categories, the semantic
strategy's embeddings model) name models that exist and can answer what is sent to them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from hxp_runtime.config.problems import Dropped, Problem
from hxp_runtime.config.schema import HxpConfig, Model, Strategy


@dataclass(frozen=True)
class _Names:
    """The names clients route by, and what to make of one that is not among them."""

    index: dict[str, Model]
    dropped: Dropped

    @property
    def known(self) -> str:
        return ", ".join(sorted(self.index)) or "(no models defined)"

    def left_out(self, name: str) -> bool:
        """A name that may be defined by an entry that failed validation: not missing, since
        that entry's own problem is reported already."""
        return name not in self.index and (name in self.dropped.names or self.dropped.all_models)

    def unknown(self, name: str) -> bool:
        return name not in self.index and not self.left_out(name)


def router_problems(cfg: HxpConfig, dropped: Dropped) -> Iterator[Problem]:
    names = _Names(cfg.routing_index(), dropped)
    yield from _fallback_problems(cfg, names)
    yield from _default_model_problems(cfg, names)
    yield from _category_problems(cfg, dropped)
    yield from _semantic_problems(cfg, names)


def _fallback_problems(cfg: HxpConfig, names: _Names) -> Iterator[Problem]:
    for name, chain in cfg.router.fallbacks.items():
        if names.unknown(name):
            yield Problem(
                ("router", "fallbacks", name),
                f"fallback for unknown model {name!r}; known: {names.known}",
            )
        for j, target in enumerate(chain):
            problem = _fallback_target_problem(names, name, target)
            if problem is not None:
                yield Problem(("router", "fallbacks", name, j), problem)


def _fallback_target_problem(names: _Names, name: str, target: str) -> str | None:
    index = names.index
    if names.unknown(target):
        return f"fallback to unknown model {target!r}; known: {names.known}"
    if target not in index:
        return None
    if index.get(name) is index[target]:
        return f"{target!r} falls back to itself"
    if name in index and index[name].task != index[target].task:
        return (
            f"{target!r} (task: {index[target].task}) cannot answer the requests "
            f"{name!r} (task: {index[name].task}) gets; fall back to a model with "
            f"task: {index[name].task}"
        )
    return None


def _default_model_problems(cfg: HxpConfig, names: _Names) -> Iterator[Problem]:
    default = cfg.router.default_model
    if default is not None and names.unknown(default):
        yield Problem(
            ("router", "default_model"), f"unknown model {default!r}; known: {names.known}"
        )
    elif default in names.index and names.index[default].task != "generate":
        yield Problem(
            ("router", "default_model"),
            f"{default!r} is an embeddings model (task: embed) and cannot answer chat or "
            "completion requests; choose a model with task: generate",
        )


def _category_problems(cfg: HxpConfig, dropped: Dropped) -> Iterator[Problem]:
    yield from _model_category_problems(cfg)
    for name, spec in cfg.router.categories.items():
        # Only hxp.yml can say `keywords: []`; the router's own settings file lists every field.
        if "keywords" in spec.model_fields_set and not spec.keywords:
            yield Problem(
                ("router", "categories", name, "keywords"),
                "an empty keyword list matches no prompt; add keywords or remove the key",
            )
    if dropped.models:
        return  # a left-out model may have served it
    served = {c for model in cfg.models if model.task != "embed" for c in model.categories}
    for category in cfg.router.categories:
        if category not in served:
            yield Problem(
                ("router", "categories", category),
                f"no model serves category {category!r}; add it to the categories of a "
                "model with task: generate, or remove it",
            )


def _model_category_problems(cfg: HxpConfig) -> Iterator[Problem]:
    defined = cfg.router.categories
    for i, model in enumerate(cfg.models):
        if model.task == "embed" and model.categories:
            yield Problem(
                ("models", i, "categories"),
                f"{model.name!r} is an embeddings model (task: embed) and cannot serve a "
                "routing category; remove its categories",
            )
            continue
        for j, category in enumerate(model.categories):
            if defined and category not in defined:
                yield Problem(
                    ("models", i, "categories", j),
                    f"category {category!r} is not defined under router.categories; "
                    f"defined: {', '.join(sorted(defined))}",
                )


def _semantic_problems(cfg: HxpConfig, names: _Names) -> Iterator[Problem]:
    semantic = cfg.router.semantic.embedding_model
    if (
        semantic is not None
        and not names.left_out(semantic)
        and (semantic not in names.index or names.index[semantic].task != "embed")
    ):
        yield Problem(
            ("router", "semantic", "embedding_model"),
            f"{semantic!r} is not a model with task: embed; define one or fix the name",
        )
    if Strategy.SEMANTIC in cfg.router.strategies and semantic is None:
        yield Problem(
            ("router", "strategies"),
            "strategy 'semantic' needs router.semantic.embedding_model (a model with task: embed)",
        )
