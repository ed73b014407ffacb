"""docs/config-reference.md: each hxp.yml key -> Ansible variables -> templates -> host paths.

Nothing here is listed by hand. The keys, their types, defaults and descriptions come from the
schema (``HxpConfig``). Which variables a key reaches is measured: each key is changed alone in
a validated copy of inventory/sample/hxp.yml (or of inventory/lab/hxp.yml, where no change is
valid in the sample), and the variables render hands the roles (``render.inventory_files``) are
compared with those of the unchanged copy. Which templates use a variable is found by scanning
roles/*/templates for its name (and for the role's own variables in vars/ and defaults/ that are
built from it, and template tasks that loop over them); a template's path on the host is the
``dest:`` of the task that writes it.

``python -m hxp_runtime.config_reference`` writes the page; ``--key router.port`` prints one
entry; ``--check`` exits 1 when the page is out of date.
"""

from __future__ import annotations

import argparse
import difflib
import enum
import ipaddress
import json
import re
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from hxp_runtime.config import HxpConfig, SecretRef, cross_field_problems, plan_deployment
from hxp_runtime.planner import PlanError
from hxp_runtime.render import Vars, inventory_files

REPO = Path(__file__).resolve().parents[1]
PAGE = Path("docs/config-reference.md")
CONFIGS = (Path("inventory/sample/hxp.yml"), Path("inventory/lab/hxp.yml"))
COMMAND = "python -m hxp_runtime.config_reference"
LIST_ITEM = "[]"
MAP_ENTRY = "<name>"
# Valid changes of a key that reach no variable before the key counts as reaching nothing.
MAX_VALID_TRIES = 2
# Changes tried per config (most fail validation: a name others refer to, a port in use).
MAX_ATTEMPTS = 12
Place = tuple[str | int, ...]
HostVars = dict[str, Any]


# --------------------------------------------------------------------------- schema keys


@dataclass(frozen=True)
class Key:
    """One leaf of hxp.yml's schema: ``router.port``, ``models[].engine.dtype``."""

    path: tuple[str, ...]
    annotation: Any
    info: FieldInfo
    # Per segment, the model its value (or each item, for [] and <name>) holds; None for a
    # leaf or a list itself: what a section left out of a config is built as.
    models: tuple[type[BaseModel] | None, ...]

    @property
    def name(self) -> str:
        text = ""
        for part in self.path:
            text += part if part == LIST_ITEM else f".{part}" if text else part
        return text


def _field_type(info: FieldInfo) -> Any:
    """The field's type with its constraints (pydantic keeps them apart)."""
    return Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """(type, constraints) of ``Annotated[type, *constraints]``, nested Annotated flattened."""
    metadata: list[Any] = []
    while get_origin(annotation) is Annotated:
        annotation, *more = get_args(annotation)
        metadata = [*more, *metadata]
    return annotation, metadata


def _arms(annotation: Any) -> list[Any]:
    """The non-null types of a union (or the type itself)."""
    inner, metadata = _unwrap(annotation)
    if get_origin(inner) in (Union, types.UnionType):
        arms = [arm for arm in get_args(inner) if arm is not type(None)]
        return [Annotated[(arm, *metadata)] if metadata else arm for arm in arms]
    return [annotation]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model class a field holds (directly or as ``Model | None``), else None."""
    arms = [_unwrap(arm)[0] for arm in _arms(annotation)]
    if len(arms) == 1 and isinstance(arms[0], type) and issubclass(arms[0], BaseModel):
        return None if arms[0] is SecretRef else arms[0]
    return None


def _container_model(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """(``[]`` or ``<name>``, model) for ``list[Model]`` and ``dict[str, Model]``."""
    arms = [_unwrap(arm)[0] for arm in _arms(annotation)]
    if len(arms) != 1:
        return None
    origin, args = get_origin(arms[0]), get_args(arms[0])
    if origin is list:
        item = _model_of(args[0])
        return (LIST_ITEM, item) if item else None
    if origin is dict:
        value = _model_of(args[1])
        return (MAP_ENTRY, value) if value else None
    return None


def schema_keys(
    model: type[BaseModel] = HxpConfig,
    prefix: tuple[str, ...] = (),
    models: tuple[type[BaseModel] | None, ...] = (),
) -> list[Key]:
    """Every leaf key of ``model``, sorted by name."""
    keys: list[Key] = []
    for name, info in model.model_fields.items():
        path = (*prefix, name)
        nested = _model_of(info.annotation)
        container = _container_model(info.annotation)
        if nested is not None:
            keys += schema_keys(nested, path, (*models, nested))
        elif container is not None:
            marker, item = container
            keys += schema_keys(item, (*path, marker), (*models, None, item))
        else:
            keys.append(Key(path, _field_type(info), info, (*models, None)))
    return sorted(keys, key=lambda k: k.name)


def _type_name(annotation: Any) -> str:
    annotation, metadata = _unwrap(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        arms = [a for a in args if a is not type(None)]
        text = " or ".join(_type_name(a) for a in arms)
        return f"{text} or null" if len(arms) < len(args) else text
    if origin is Literal:
        text = " | ".join(json.dumps(a) for a in args)
    elif origin is list:
        text = f"list of {_type_name(args[0])}"
    elif origin is dict:
        text = f"mapping of {_type_name(args[0])} to {_type_name(args[1])}"
    elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        text = " | ".join(json.dumps(m.value) for m in annotation)
    elif annotation is SecretRef:
        text = "secret reference (env:NAME, file:/path or vault:NAME)"
    elif annotation is ipaddress.IPv4Address:
        text = "IPv4 address"
    elif annotation is ipaddress.IPv4Interface:
        text = "IPv4 address/prefix"
    elif annotation is Path:
        text = "path"
    else:
        text = getattr(annotation, "__name__", str(annotation))
    return " ".join([text, *_constraints(metadata)])


def _constraints(metadata: Sequence[Any]) -> list[str]:
    found = []
    for item in metadata:
        for attribute, sign in (
            ("ge", ">="),
            ("gt", ">"),
            ("le", "<="),
            ("lt", "<"),
            ("min_length", "length >="),
            ("max_length", "length <="),
        ):
            value = getattr(item, attribute, None)
            if value is not None:
                found.append(f"{sign} {value}")
        pattern = getattr(item, "pattern", None)
        if pattern is not None:
            found.append(f"matching `{pattern}`")
    return [f"({', '.join(found)})"] if found else []


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(
        value, Path | ipaddress.IPv4Address | ipaddress.IPv4Interface | ipaddress.IPv4Network
    ):
        return str(value)
    return value


def _default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return info.default


def default_text(info: FieldInfo) -> str:
    return "required" if info.is_required() else f"`{json.dumps(_plain(_default(info)))}`"


# --------------------------------------------------------------------------- changed values


def _is_type(annotation: Any, kind: type) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, kind)


def _fits(value: Any, metadata: Sequence[Any]) -> bool:
    """Whether a number keeps the bounds of its field (the schema refuses it otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True
    for item in metadata:
        for attribute, ok in (
            ("ge", lambda v, b: v >= b),
            ("gt", lambda v, b: v > b),
            ("le", lambda v, b: v <= b),
            ("lt", lambda v, b: v < b),
        ):
            bound = getattr(item, attribute, None)
            if bound is not None and not ok(value, bound):
                return False
    return True


# Values to try for a field of these types that a config leaves out.
_FRESH: dict[Any, list[Any]] = {
    bool: [True, False],
    int: [1, 2, 8, 64, 1024],
    float: [0.5, 1.5, 2.0, 10.0],
    SecretRef: ["vault:vault_example", "env:HXP_EXAMPLE", "file:/etc/hxp/example"],
    ipaddress.IPv4Address: ["10.99.0.1"],
    ipaddress.IPv4Interface: ["10.99.0.1/24"],
    Path: ["/srv/hxp-example"],
}


def _fresh(annotation: Any, hints: Sequence[str]) -> list[Any]:
    """Values of ``annotation`` to try where a config gives none."""
    values: list[Any] = []
    for annotated in _arms(annotation):
        arm, metadata = _unwrap(annotated)
        origin = get_origin(arm)
        if origin is Literal:
            values += list(get_args(arm))
        elif _is_type(arm, enum.Enum):
            values += [m.value for m in arm]
        elif arm in _FRESH:
            values += [v for v in _FRESH[arm] if _fits(v, metadata)]
        elif arm is str:
            values += ["example", "/srv/hxp-example", *hints]
        elif origin is list:
            values += [[item] for item in _fresh(get_args(arm)[0], hints)[:3]]
        elif origin is dict:
            values += [{"example": item} for item in _fresh(get_args(arm)[1], hints)[:2]]
        elif _is_type(arm, BaseModel):
            values.append(_build(arm, hints))
    return values


def _changed(annotation: Any, current: Any, hints: Sequence[str]) -> list[Any]:
    """Values other than ``current`` to try, most likely valid first."""
    values: list[Any] = []
    for annotated in _arms(annotation):
        arm, metadata = _unwrap(annotated)
        origin = get_origin(arm)
        if origin is Literal or _is_type(arm, enum.Enum) or arm is bool:
            values += _fresh(arm, hints)
        elif arm in (int, float) and isinstance(current, int | float):
            if not isinstance(current, bool):
                steps = [current + 1, current - 1, current * 2, round(current * 0.9, 4)]
                values += [n for n in steps if _fits(n, metadata)]
        elif arm is SecretRef and isinstance(current, str):
            scheme, _, rest = current.partition(":")
            values.append(f"{scheme}:{rest}-other" if scheme == "file" else f"{current}_other")
        elif arm is ipaddress.IPv4Address and isinstance(current, str):
            values += [str(ipaddress.IPv4Address(current) + step) for step in (100, 1, -1)]
        elif arm is ipaddress.IPv4Interface and isinstance(current, str):
            interface = ipaddress.IPv4Interface(current)
            values.append(f"{interface.ip + 1}/{interface.network.prefixlen}")
        elif arm in (str, Path) and isinstance(current, str):
            values += [f"{current}-other", f"{current}x", *hints]
        elif origin is list and isinstance(current, list):
            if current:
                values.append(current[:-1])
            fresh = [item for item in _fresh(get_args(arm)[0], hints) if item not in current]
            values += [[*current, item] for item in fresh[:4]]
        elif origin is dict and isinstance(current, dict) and current:
            values.append(dict(list(current.items())[:-1]))
        else:
            values += _fresh(Annotated[(arm, *metadata)] if metadata else arm, hints)
    return [v for v in values if v != current]


def _build(model: type[BaseModel], hints: Sequence[str]) -> dict[str, Any]:
    """A mapping of ``model`` with a first guess for each required field."""
    built: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if info.is_required():
            guesses = _fresh(_field_type(info), hints)
            built[name] = guesses[0] if guesses else None
    return built


def _copy(data: Any) -> Any:
    """A deep copy that does not share what YAML aliases shared (``*tiny_engine``)."""
    if isinstance(data, dict):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_copy(v) for v in data]
    return data


def _places(
    data: dict[str, Any], effective: dict[str, Any], key: Key, hints: Sequence[str]
) -> tuple[Any, list[Place]]:
    """(copy of ``data`` in which every section above ``key`` exists, each concrete path of
    ``key`` in it).

    A section the config leaves out is written as it is in effect (``effective``: the validated
    config, presets and defaults filled in), or, where it is null, with a guess for each of its
    required fields. Each list item and mapping entry on the way is one place.
    """
    base = _copy(data)
    places: list[Place] = []

    def section(node: dict[str, Any], known: Any, part: str, built: Any) -> Any:
        if not node.get(part):
            in_effect = known.get(part) if isinstance(known, dict) else None
            node[part] = _copy(in_effect) if in_effect else built
        return node[part]

    def walk(node: dict[str, Any], known: Any, depth: int, path: Place) -> None:
        part = key.path[depth]
        if depth == len(key.path) - 1:
            places.append((*path, part))
            return
        marker = key.path[depth + 1]
        model = key.models[depth + 1] if marker in (LIST_ITEM, MAP_ENTRY) else key.models[depth]
        assert model is not None, key.name
        inner = known.get(part) if isinstance(known, dict) else None
        if marker == LIST_ITEM:
            items = section(node, known, part, [_build(model, hints)])
            for index, item in enumerate(items):
                same = inner[index] if isinstance(inner, list) and index < len(inner) else None
                walk(item, same, depth + 2, (*path, part, index))
        elif marker == MAP_ENTRY:
            entries = section(node, known, part, {"example": _build(model, hints)})
            for name in sorted(entries):
                same = inner.get(name) if isinstance(inner, dict) else None
                walk(entries[name], same, depth + 2, (*path, part, name))
        else:
            walk(section(node, known, part, _build(model, hints)), inner, depth + 1, (*path, part))

    walk(base, effective, 0, ())
    return base, places


# --------------------------------------------------------------------------- key -> variables


def _flatten(files: dict[Path, Vars]) -> list[HostVars]:
    """Per host (in hxp.yml's order, so that a renamed host is the same host): every variable
    its playbooks see from the inventory, plus its name and groups."""
    inventory = files[Path("hosts.yml")]["all"]
    group_all = files[Path("group_vars", "all", "hxp.yml")]
    flat = []
    for name, connection in inventory["hosts"].items():
        groups = sorted(
            g for g, members in inventory["children"].items() if name in members["hosts"]
        )
        own = files.get(Path("host_vars", name, "hxp.yml"), {})
        flat.append(
            {"inventory_hostname": name, "group_names": groups, **connection, **group_all, **own}
        )
    return flat


_ABSENT = object()


def _changed_fields(old: Any, new: Any) -> set[str]:
    """The fields of a mapping (or of the mappings in a list) that differ; empty for a value
    that changed as a whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {
            f".{k}" for k in old.keys() | new.keys() if old.get(k, _ABSENT) != new.get(k, _ABSENT)
        }
    if (
        isinstance(old, list)
        and isinstance(new, list)
        and len(old) == len(new)
        and all(isinstance(x, dict) and isinstance(y, dict) for x, y in zip(old, new, strict=True))
    ):
        return {f"[]{f}" for x, y in zip(old, new, strict=True) for f in _changed_fields(x, y)}
    return set()


def _compare(old: list[HostVars], new: list[HostVars]) -> dict[str, set[str]]:
    reached: dict[str, set[str]] = {}
    for before, after in zip(old, new, strict=True):
        for name in before.keys() | after.keys():
            a, b = before.get(name, _ABSENT), after.get(name, _ABSENT)
            if a != b:
                reached.setdefault(name, set()).update(_changed_fields(a, b))
    return reached


def _get(data: Any, path: Place) -> Any:
    for part in path[:-1]:
        data = data[part]
    return data.get(path[-1], _ABSENT) if isinstance(data, dict) else _ABSENT


def _set(data: Any, path: Place, value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


@dataclass
class Rendered:
    """A valid copy of a config and what render hands the roles for it."""

    cfg: HxpConfig
    hosts: list[HostVars]

    @cached_property
    def values(self) -> dict[str, Any]:
        """Every value of the config, presets and defaults filled in."""
        return self.cfg.model_dump(mode="json")


@dataclass
class Renders:
    """Configs' raw data and the renders of their changed copies, by content."""

    repo: Path = REPO
    _raw: dict[Path, dict[str, Any]] = field(default_factory=dict)
    _done: dict[str, Rendered | None] = field(default_factory=dict)

    def raw(self, config: Path) -> dict[str, Any]:
        if config not in self._raw:
            data = yaml.safe_load((self.repo / config).read_text(encoding="utf-8"))
            self._raw[config] = {k: v for k, v in data.items() if not str(k).startswith("x-")}
        return self._raw[config]

    def render(self, data: dict[str, Any]) -> Rendered | None:
        """The render of ``data``, or None when it is not a valid config.

        Validated by the stages load_config runs once the YAML is parsed (schema, cross-field
        rules, the planner's fit), without parsing YAML again for every copy.
        """
        text = json.dumps(data)
        if text not in self._done:
            try:
                cfg = HxpConfig.model_validate(data)
                valid = next(cross_field_problems(cfg), None) is None
                plan = plan_deployment(cfg) if valid else None
            except (ValidationError, PlanError):
                plan = None
            self._done[text] = (
                None if plan is None else Rendered(cfg, _flatten(inventory_files(cfg, plan)))
            )
        return self._done[text]


def _hints(data: dict[str, Any]) -> list[str]:
    """Names a reference may point at: hosts, models and the router's categories."""
    names = [entry["name"] for section in ("hosts", "models") for entry in data.get(section, [])]
    return [*names, *sorted((data.get("router") or {}).get("categories") or {})]


@dataclass(frozen=True)
class Measured:
    """What changing one key alone did: the config and values of the change, and the variables
    (with the fields inside them) that changed; no change is None when none was valid."""

    change: tuple[Path, Place, Any, Any] | None
    variables: dict[str, frozenset[str]]


def measure(key: Key, renders: Renders) -> Measured:
    """Change ``key`` alone in the first config where a valid change exists (the sample, else
    the lab): the first valid change that reaches a variable, else the last valid one."""
    last: Measured = Measured(None, {})
    for config in CONFIGS:
        data = renders.raw(config)
        hints = _hints(data)
        original = renders.render(data)
        if original is None:
            raise ValueError(f"{config} is not a valid config; run `hxp validate {config}`")
        base, places = _places(data, original.values, key, hints)
        before = renders.render(base)
        if before is None:
            continue
        attempts = valid = 0
        for place in places:
            current = _get(base, place)
            # Left out: the value the schema (or the model's preset) gives it.
            current = _get(before.values, place) if current is _ABSENT else current
            for value in _changed(key.annotation, current, hints):
                attempts += 1
                changed = _copy(base)
                _set(changed, place, value)
                after = renders.render(changed)
                if after is not None:
                    valid += 1
                    reached = _compare(before.hosts, after.hosts)
                    last = Measured(
                        (config, place, current, value),
                        {name: frozenset(fields) for name, fields in reached.items()},
                    )
                    if reached or valid >= MAX_VALID_TRIES:
                        return last
                if attempts >= MAX_ATTEMPTS:
                    break
            if attempts >= MAX_ATTEMPTS:
                break
        if last.change is not None:
            return last
    return last


# --------------------------------------------------------------------------- variable -> host


_EXPRESSION = re.compile(r"\{\{.*?\}\}")
_SIMPLE_REFERENCE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@dataclass(frozen=True)
class TemplateTask:
    src: str
    dest: str
    text: str  # the whole task, to find the variables it loops over


@dataclass(frozen=True)
class Role:
    name: str
    definitions: dict[str, str]  # defaults/ and vars/: name -> its value as text
    tasks: dict[str, str]  # tasks/*.yml: path -> text
    template_tasks: tuple[TemplateTask, ...]
    templates: dict[str, str]  # roles/R/templates/...: path -> text


def _mentions(text: str, names: set[str]) -> bool:
    return any(re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text) for name in names)


def _task_list(node: Any) -> Iterator[dict[str, Any]]:
    for task in node if isinstance(node, list) else []:
        if isinstance(task, dict):
            yield task
            for section in ("block", "rescue", "always"):
                yield from _task_list(task.get(section))


def load_role(directory: Path, repo: Path) -> Role:
    definitions: dict[str, str] = {}
    for part in ("defaults", "vars"):
        values = yaml.safe_load(_read(directory / part / "main.yml") or "{}") or {}
        definitions |= {name: json.dumps(value) for name, value in values.items()}
    tasks, template_tasks = {}, []
    for path in sorted(directory.glob("tasks/*.yml")):
        text = path.read_text(encoding="utf-8")
        tasks[str(path.relative_to(repo))] = text
        for task in _task_list(yaml.safe_load(text)):
            module = task.get("ansible.builtin.template") or task.get("template")
            if isinstance(module, dict) and "src" in module and "dest" in module:
                template_tasks.append(
                    TemplateTask(str(module["src"]), str(module["dest"]), json.dumps(task))
                )
    templates = {
        str(path.relative_to(repo)): path.read_text(encoding="utf-8")
        for path in sorted(directory.glob("templates/**/*.j2"))
    }
    return Role(directory.name, definitions, tasks, tuple(template_tasks), templates)


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def load_roles(repo: Path = REPO) -> list[Role]:
    return [load_role(d, repo) for d in sorted(repo.glob("roles/*")) if (d / "tasks").is_dir()]


def _closure(role: Role, variable: str) -> set[str]:
    """``variable`` and the role's own variables built from it, directly or not."""
    names = {variable}
    grown = True
    while grown:
        more = {
            n for n, text in role.definitions.items() if n not in names and _mentions(text, names)
        }
        names |= more
        grown = bool(more)
    return names


def _resolve(text: str, role: Role) -> str:
    """``{{ name }}`` of a string the role defines (itself plain or made of such references),
    replaced by that string."""

    def plain(match: re.Match[str]) -> str:
        value = role.definitions.get(match[1])
        loaded = json.loads(value) if value is not None else None
        if isinstance(loaded, int | float) and not isinstance(loaded, bool):
            return str(loaded)
        if isinstance(loaded, str) and all(
            _SIMPLE_REFERENCE.fullmatch(e) for e in _EXPRESSION.findall(loaded)
        ):
            return loaded
        return match[0]

    for _ in range(4):  # references of references; roles nest them two or three deep
        text = _SIMPLE_REFERENCE.sub(plain, text)
    return text


def destinations(role: Role, template: str) -> list[str]:
    """Where the template tasks of ``role`` write ``template`` on the host."""
    relative = template.split("/templates/", 1)[1]
    found = []
    for task in role.template_tasks:
        parts = _EXPRESSION.split(task.src)
        expressions = _EXPRESSION.findall(task.src)
        pattern = "(.+?)".join(re.escape(p) for p in parts)
        match = re.fullmatch(pattern, relative)
        if not match:
            continue
        dest = task.dest
        for expression, value in zip(expressions, match.groups(), strict=True):
            dest = dest.replace(expression, value)
        found.append(_resolve(dest, role))
    return sorted(set(found))


@dataclass(frozen=True)
class Use:
    """Where a variable goes: a template and its paths on the host, or a file that reads it."""

    variable: str
    template: str | None
    dests: tuple[str, ...]
    readers: tuple[str, ...]  # task files and playbooks that read it (no template)


def uses(variable: str, roles: Sequence[Role], playbooks: dict[str, str]) -> list[Use]:
    found: list[Use] = []
    readers: list[str] = [p for p, text in sorted(playbooks.items()) if _mentions(text, {variable})]
    for role in roles:
        names = _closure(role, variable)
        by_tasks = {t.src for t in role.template_tasks if _mentions(t.text, names)}
        for path, text in role.templates.items():
            relative = path.split("/templates/", 1)[1]
            looped = any(
                re.fullmatch("(.+?)".join(map(re.escape, _EXPRESSION.split(src))), relative)
                for src in by_tasks
            )
            if _mentions(text, names) or looped:
                found.append(Use(variable, path, tuple(destinations(role, path)), ()))
        readers += [p for p, text in role.tasks.items() if _mentions(text, names)]
    if readers:
        found.append(Use(variable, None, (), tuple(sorted(set(readers)))))
    return found


# --------------------------------------------------------------------------- the page


@dataclass(frozen=True)
class Entry:
    key: Key
    measured: Measured
    uses: dict[str, list[Use]]


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def entry_text(entry: Entry) -> str:
    key, measured = entry.key, entry.measured
    required = "required" if len(key.path) == 1 else "required (when its section is given)"
    default = default_text(key.info)
    lines = [
        f"### `{key.name}`",
        "",
        f"- Type: {_type_name(key.annotation)}",
        f"- Default: {required if default == 'required' else default}",
        f"- Description: {key.info.description or '(none in the schema)'}",
    ]
    if measured.change is None:
        lines += [
            "- Reaches: not measured: no change of this key alone gave a valid config in "
            + " or ".join(f"`{c}`" for c in CONFIGS)
            + " (it has one allowed value, or must agree with other keys)",
            "",
        ]
        return "\n".join(lines)
    config, place, before, after = measured.change
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in place).lstrip(".")
    lines.append(
        f"- Measured: `{where}` changed from `{_short(before)}` to `{_short(after)}` in `{config}`"
    )
    if not measured.variables:
        lines += ["- Reaches: nothing `hxp render` writes", ""]
        return "\n".join(lines)
    lines += ["", "| variable | template | on the host |", "|---|---|---|"]
    for variable in sorted(measured.variables):
        fields = ", ".join(f"`{f}`" for f in sorted(measured.variables[variable]))
        name = f"`{variable}`" + (f" ({fields})" if fields else "")
        templates = [u for u in entry.uses.get(variable, []) if u.template]
        readers = [r for u in entry.uses.get(variable, []) for r in u.readers]
        for use in templates:
            dests = ", ".join(f"`{d}`" for d in use.dests) or "(no file: rendered for a task)"
            lines.append(f"| {_cell(name)} | `{use.template}` | {_cell(dests)} |")
        if not templates:
            readers_text = ", ".join(f"`{r}`" for r in readers) if readers else "no role"
            lines.append(f"| {_cell(name)} | (none; read by {readers_text}) | |")
    lines.append("")
    return "\n".join(lines)


def entries(repo: Path = REPO, keys: Sequence[Key] | None = None) -> list[Entry]:
    """The entry of each of ``keys`` (default: every key of the schema)."""
    renders = Renders(repo)
    roles = load_roles(repo)
    playbooks = {
        str(p.relative_to(repo)): p.read_text(encoding="utf-8")
        for p in sorted(repo.glob("playbooks/*.yml"))
    }
    found: list[Entry] = []
    known: dict[str, list[Use]] = {}
    for key in schema_keys() if keys is None else keys:
        measured = measure(key, renders)
        for variable in measured.variables:
            if variable not in known:
                known[variable] = uses(variable, roles, playbooks)
        found.append(Entry(key, measured, {v: known[v] for v in measured.variables}))
    return found


HEADER = """# hxp.yml reference

Generated by `{command}` from the schema (`hxp_runtime/config`), `hxp render`
and the roles; do not edit. tests/unit/test_config_reference.py fails when it is out of date.

Each key of hxp.yml: its type, default and description from the schema; the Ansible variables
`hxp render` writes it into; the role templates that use those variables and the file each
template becomes on the host.

How the variables are found: the key is changed alone in a validated copy of
`inventory/sample/hxp.yml` (or, where no such change is valid there, of `inventory/lab/hxp.yml`)
and the variables render hands the roles are compared with those of the unchanged copy; the
change made is shown. A section the config leaves out is first written as it is in effect
(defaults, the model's preset). A key whose valid changes kept the same effect (a `host` key set
to the one host of its group, the one it defaults to) shows as reaching nothing. A variable
that is a mapping or a list of mappings names the fields that changed. The templates are those
that name the variable, or a variable of the same role built from it (`defaults/`, `vars/`), or
that a template task loops over; the path on the host is the `dest:` of that task. `[]` stands
for every item of a list, `<name>` for every entry of a mapping.
"""


def page(found: Sequence[Entry]) -> str:
    nothing = [e.key.name for e in found if e.measured.change and not e.measured.variables]
    unmeasured = [e.key.name for e in found if e.measured.change is None]
    parts = [HEADER.format(command=COMMAND)]
    parts.append(
        "Keys whose measured change reached nothing `hxp render` writes (read by `hxp` itself, "
        "unused, or see above):"
    )
    parts.append("\n".join(f"- `{name}`" for name in nothing) + "\n")
    parts.append(
        "Keys with no valid change of their own (one allowed value, or they must agree with "
        "other keys):"
    )
    parts.append("\n".join(f"- `{name}`" for name in unmeasured) + "\n")
    section = None
    for entry in found:
        top = entry.key.path[0]
        if top != section:
            section = top
            parts.append(f"## {top}\n")
        parts.append(entry_text(entry))
    return "\n".join(parts).rstrip("\n") + "\n"


def normalise_key(text: str) -> str:
    """``models[0].engine.dtype`` -> ``models[].engine.dtype``."""
    return re.sub(r"\[\d+\]", LIST_ITEM, text.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--key", help="print the entry of one key, e.g. router.port")
    parser.add_argument("--out", type=Path, default=REPO / PAGE, help="the page to write")
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    if args.key:
        wanted = normalise_key(args.key)
        keys = {k.name: k for k in schema_keys()}
        if wanted not in keys:
            close = difflib.get_close_matches(wanted, list(keys), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            print(f"{args.key}: no such key in hxp.yml's schema{hint}", file=sys.stderr)
            return 2
        print(entry_text(entries(keys=[keys[wanted]])[0]), end="")
        return 0
    text = page(entries())
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is out of date; run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
