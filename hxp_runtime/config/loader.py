"""``load_config(path)``: hxp.yml to a checked :class:`HxpConfig`, or every problem at once.

It parses the YAML (with the line of every value), validates types (pydantic v2,
``extra="forbid"``), then checks every rule that spans fields (names, host:port clashes, groups,
references, secrets, tensor parallelism, GPU fit). All problems are collected and raised
together as one :class:`ConfigError`, each naming the file, the line, the field path and what to
do.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hxp_runtime.config.fit import plan_problems
from hxp_runtime.config.problems import ConfigError, Dropped, Problem, pydantic_problems
from hxp_runtime.config.rules import cross_field_problems, secret_problems, tls_problems
from hxp_runtime.config.schema import HostGroup, HxpConfig
from hxp_runtime.yamlsource import LineMap, YamlSourceError, load_yaml

# Top-level lists whose entries are validated one by one when some of them are invalid.
_ENTRY_LISTS = ("hosts", "models")
# Required top-level fields and a stand-in that lets the other rules run when they are invalid.
_STAND_INS: dict[str, Any] = {"name": "invalid-name"}


def load_config(
    file: Path,
    *,
    text: bytes | None = None,
    check_fit: bool = True,
    check_secrets: bool = False,
) -> HxpConfig:
    """Load and fully validate ``file``; raise ConfigError listing every problem.

    Every stage runs on what the stages before it found valid, so one pass reports the schema's,
    the cross-field rules' and the planner's problems together, without follow-on problems of
    entries that are already reported.
    ``text`` is the file's content when it does not come from ``file`` (stdin); ``file`` then only
    names it in messages, and relative paths start from the working directory.
    ``check_fit`` runs the GPU planner as the last rule (a model that does not fit its GPUs is a
    configuration error). It reads model config.json files named by ``source.local_path``.
    ``check_secrets`` also requires every env: and file: secret reference to resolve on this
    machine (render and deploy need the values; validate does not), and checks the router's
    certificate and key (router.tls) it can read.
    """
    data, lines = _read_document(file, text)
    cfg, dropped, problems = _validate(file, data, lines)
    cfg._source_file = file if text is None else None
    later = list(cross_field_problems(cfg, dropped))
    if check_secrets:
        later.extend(secret_problems(cfg))
        later.extend(tls_problems(cfg))
    if check_fit:
        later.extend(plan_problems(cfg, later, dropped))
    problems.extend(Problem(dropped.original(p.path), p.message) for p in later)
    if problems:
        raise ConfigError(file, _with_lines(problems, lines))
    return cfg


def _read_document(file: Path, text: bytes | None) -> tuple[dict[str, Any], LineMap]:
    """The file's top-level mapping, without the keys hxp ignores, and its lines."""
    try:
        data, lines = load_yaml(file, text=text)
    except YamlSourceError as exc:
        raise ConfigError(file, [Problem((), exc.message, exc.line)]) from None
    if not isinstance(data, dict):
        raise ConfigError(
            file, [Problem((), "the file must be a YAML mapping (keys: name, hosts, models...)", 1)]
        )
    # Top-level "x-" keys hold YAML anchors for reuse (as in Compose files); hxp ignores them.
    return {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}, lines


def _validate(
    file: Path, data: dict[str, Any], lines: LineMap
) -> tuple[HxpConfig, Dropped, list[Problem]]:
    """The config, what was left out of it to make it valid, and the schema's problems; raise
    ConfigError when too little is left for the other rules to check."""
    try:
        return HxpConfig.model_validate(data), Dropped(), []
    except ValidationError as exc:
        problems = pydantic_problems(exc, lines)
    salvaged = _salvage(data, problems)
    if salvaged is None:
        raise ConfigError(file, _with_lines(problems, lines))
    cfg, dropped = salvaged
    return cfg, dropped, problems


def _with_lines(problems: list[Problem], lines: LineMap) -> list[Problem]:
    return [Problem(p.path, p.message, lines.line_of(p.path)) for p in problems]


# --------------------------------------------------------------------------- salvage


def _salvage(data: dict[str, Any], problems: list[Problem]) -> tuple[HxpConfig, Dropped] | None:
    """Leave out what failed validation, so the cross-field rules and the planner can check the
    rest; None when too little is left to check (hosts unusable)."""
    left = _without_failed_fields(data, problems)
    if left is None:
        return None
    doc, bad_entries, reset = left
    dropped = replace(_drop_entries(data, doc, bad_entries), fields=frozenset(reset))
    cfg = _validate_rest(doc)
    return None if cfg is None else (cfg, dropped)


def _without_failed_fields(
    data: dict[str, Any], problems: list[Problem]
) -> tuple[dict[str, Any], dict[str, set[int]], set[tuple[str, str]]] | None:
    """``data`` with each failed section field back to its default and each failed top-level
    field replaced or left out, the positions of the failed entries of each entry list, and the
    (section, field) pairs set back; None when a problem is about the whole document."""
    doc = dict(data)
    bad_entries: dict[str, set[int]] = {key: set() for key in _ENTRY_LISTS}
    reset: set[tuple[str, str]] = set()
    for problem in problems:
        path = problem.path
        if not path:
            return None
        top = str(path[0])
        if top in _ENTRY_LISTS and len(path) >= 2 and isinstance(path[1], int):
            bad_entries[top].add(path[1])
        elif len(path) >= 2 and isinstance(doc.get(top), dict) and top not in _ENTRY_LISTS:
            section = dict(doc[top])
            section.pop(path[1], None)  # back to the field's default
            doc[top] = section
            reset.add((top, str(path[1])))
        elif top in _STAND_INS:
            doc[top] = _STAND_INS[top]
        else:
            doc.pop(top, None)
    return doc, bad_entries, reset


def _drop_entries(
    data: dict[str, Any], doc: dict[str, Any], bad_entries: dict[str, set[int]]
) -> Dropped:
    """Take the failed entries out of ``doc``'s entry lists; say what they may have defined."""
    names: set[str] = set()
    positions: dict[str, list[int]] = {}
    for key in _ENTRY_LISTS:
        entries = doc.get(key)
        if not isinstance(entries, list):
            continue
        positions[key] = [i for i in range(len(entries)) if i not in bad_entries[key]]
        for i in bad_entries[key]:
            names |= _entry_names(entries[i])
        doc[key] = [entries[i] for i in positions[key]]
    groups: set[HostGroup] = set()
    hosts = data.get("hosts")
    for i in bad_entries["hosts"]:
        groups |= _entry_groups(hosts[i] if isinstance(hosts, list) else None)
    all_models = "models" in data and "models" not in positions  # not a list at all
    return Dropped(
        frozenset(names),
        frozenset(groups),
        models=bool(bad_entries["models"]) or all_models,
        all_models=all_models,
        positions=positions,
    )


def _validate_rest(doc: dict[str, Any]) -> HxpConfig | None:
    for _ in range(3):
        try:
            return HxpConfig.model_validate(doc)
        except ValidationError as exc:
            # What still fails only fails because of what was left out: leave out its whole
            # section too, quietly (an entry list or the hosts cannot be left out).
            tops = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
            if tops & {"hosts", "name"} or not tops:
                return None
            for top in tops:
                if top in _ENTRY_LISTS:
                    return None
                doc.pop(top, None)
    return None


def _entry_names(entry: Any) -> set[str]:
    if not isinstance(entry, dict):
        return set()
    names = [entry.get("name"), entry.get("served_name")]
    aliases = entry.get("aliases")
    if isinstance(aliases, list):
        names.extend(aliases)
    return {n for n in names if isinstance(n, str)}


def _entry_groups(entry: Any) -> set[HostGroup]:
    """The groups a host entry names, or every group when they cannot be read."""
    wanted = entry.get("groups") if isinstance(entry, dict) else None
    known = {g.value for g in HostGroup}
    if isinstance(wanted, list) and all(isinstance(g, str) and g in known for g in wanted):
        return {HostGroup(g) for g in wanted}
    return set(HostGroup)
