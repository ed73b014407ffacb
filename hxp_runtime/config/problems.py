"""What is wrong with an hxp.yml: one :class:`Problem` per field (pydantic's errors become
problems too), raised together as one :class:`ConfigError`; and :class:`Dropped`, what
validation left out, so that later rules do not repeat what is already reported."""

from __future__ import annotations

import difflib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from hxp_runtime.config.schema import HostGroup, HxpConfig, SecretRef
from hxp_runtime.yamlsource import LineMap, PathKey


@dataclass(frozen=True)
class Problem:
    path: PathKey
    message: str
    line: int | None = None

    @property
    def field(self) -> str:
        return format_path(self.path)


def format_path(path: PathKey) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(document)"


class ConfigError(Exception):
    """hxp.yml is unusable; ``errors`` lists every problem with its line."""

    def __init__(self, file: Path, errors: list[Problem]) -> None:
        self.file = file
        self.errors = errors
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.errors)
        head = f"{self.file}: {count} problem{'s' if count != 1 else ''}"
        lines = [head]
        for err in self.errors:
            where = f"{self.file}:{err.line}" if err.line else str(self.file)
            lines.append(f"  {where}: {err.field}: {err.message}")
        return "\n".join(lines)


def pydantic_problems(
    exc: ValidationError, lines: LineMap, root: type[BaseModel] | None = None
) -> list[Problem]:
    """pydantic's errors of validating a document against ``root`` (default: HxpConfig), one
    problem per field, with its line."""
    root = root or HxpConfig
    by_path: dict[PathKey, list[str]] = {}
    inputs: dict[PathKey, Any] = {}
    for err in exc.errors(include_url=False):
        loc: PathKey = tuple(p for p in err["loc"] if not _is_union_tag(p))
        kind = err["type"]
        msg = err["msg"].removeprefix("Value error, ")
        if kind == "extra_forbidden":
            msg = _unknown_key_message(root, loc)
        elif kind == "missing":
            msg = "required field is missing; add it"
        by_path.setdefault(loc, []).append(msg)
        inputs[loc] = err.get("input")
    problems = []
    for loc, messages in by_path.items():
        # A union (e.g. gpus: auto | count | ids) fails once per member: say it once. What was
        # given is repeated only where it cannot be a secret pasted in by mistake.
        given = "it" if _schema_type_at(root, loc) is SecretRef else repr(inputs[loc])
        message = (
            messages[0]
            if len(messages) == 1
            else f"{given} is not valid: " + "; or ".join(m[0].lower() + m[1:] for m in messages)
        )
        problems.append(Problem(loc, message, lines.line_of(loc)))
    return problems


def _unknown_key_message(root: type[BaseModel], loc: PathKey) -> str:
    key = str(loc[-1])
    owner = _schema_type_at(root, loc[:-1])
    allowed = (
        sorted(owner.model_fields)
        if isinstance(owner, type) and issubclass(owner, BaseModel)
        else []
    )
    hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    text = f"unknown key {key!r}; "
    text += f"did you mean {hint[0]!r}?" if hint else "remove it or check its spelling"
    if allowed:
        text += f" (allowed here: {', '.join(allowed)})"
    return text


def _schema_type_at(root: type[BaseModel], path: PathKey) -> Any:
    """The schema type (a model class, or a list/dict type) of the field at ``path``."""
    node: Any = root
    for part in path:
        node = _unwrap(node)
        origin = get_origin(node)
        if isinstance(node, type) and issubclass(node, BaseModel) and isinstance(part, str):
            field = node.model_fields.get(part)
            if field is None:
                return None
            node = field.annotation
        elif origin is list and isinstance(part, int):
            node = get_args(node)[0]
        elif origin is dict:
            node = get_args(node)[1]
        else:
            return None
    return _unwrap(node)


def _unwrap(node: Any) -> Any:
    """Strip Annotated[...] and pick the structured member of an Optional or union."""
    while True:
        origin = get_origin(node)
        if origin is Annotated:
            node = get_args(node)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(node) if a is not type(None)]
            structured = [
                a
                for a in members
                if get_origin(a) in (list, dict)
                or (isinstance(a, type) and issubclass(a, BaseModel))
            ]
            node = (structured or members)[0]
        else:
            return node


def _is_union_tag(part: str | int) -> bool:
    # pydantic inserts the member type into the location of union errors: "list[int]", "int"...
    return isinstance(part, str) and (
        part in {"literal['auto']", "int", "str", "dict", "list"}
        or "[" in part
        or part.startswith("function-")
        or part.startswith("constrained-")
    )


# The host group a top-level section's services go to when it names no host.
_SECTION_GROUPS = {
    "models": HostGroup.LLM,
    "router": HostGroup.LLM,
    "database": HostGroup.DATABASE,
    "vector_db": HostGroup.VECTOR,
    "cache": HostGroup.CACHE,
    "metrics": HostGroup.METRICS,
}
# Endpoints that name their host themselves (one per host), whatever their section.
_PER_HOST_FIELDS = {"node_exporter_port", "gpu_exporter_port"}


@dataclass(frozen=True)
class Dropped:
    """What was left out of a config because it failed validation (its problems are reported
    already): the rules skip what would only repeat them."""

    names: frozenset[str] = frozenset()  # hosts, models, served names and aliases
    # Groups a left-out host may have been in: who is in them is not known.
    groups: frozenset[HostGroup] = frozenset()
    models: bool = False  # a model entry, or the whole list, was left out
    all_models: bool = False  # the whole models list was left out
    # (section, field) pairs set back to their default (router.virtual_address, ...).
    fields: frozenset[tuple[str, str]] = frozenset()
    # Top-level list -> the file's position of each entry that was kept.
    positions: dict[str, list[int]] = field(default_factory=dict)

    def original(self, path: PathKey) -> PathKey:
        """``path`` in the config that was checked -> the same entry's path in the file."""
        if len(path) >= 2 and path[0] in self.positions and isinstance(path[1], int):
            return (path[0], self.positions[str(path[0])][path[1]], *path[2:])
        return path

    def hides_host_of(self, cfg: HxpConfig, path: PathKey) -> bool:
        """Whether the service at ``path`` goes on "the only host of its group" while a left-out
        host may have been in that group: where it runs is then not known."""
        group = _SECTION_GROUPS.get(str(path[0])) if path else None
        if group is None or group not in self.groups or path[-1] in _PER_HOST_FIELDS:
            return False
        if path[0] == "models":
            if not isinstance(path[1], int):
                return False
            model = cfg.models[path[1]]
            return model.host is None and model.hosts is None and model.pipeline is None
        section = getattr(cfg, str(path[0]))
        return section is not None and section.host is None
