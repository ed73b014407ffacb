"""Every role's meta/argument_specs.yml mirrors its defaults/main.yml: the same variables, the
same default values, a type the default actually has, and a description for each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "roles"
ALL_ROLES = sorted(p.name for p in ROLES.iterdir() if (p / "tasks").is_dir())
PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "path": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.exists() else None


def test_roles_are_found() -> None:
    assert "common" in ALL_ROLES


@pytest.mark.parametrize("role", ALL_ROLES)
def test_defaults_and_argument_specs_come_together(role: str) -> None:
    has_defaults = (ROLES / role / "defaults" / "main.yml").exists()
    has_specs = (ROLES / role / "meta" / "argument_specs.yml").exists()
    assert has_specs, f"roles/{role}: add meta/argument_specs.yml (the role's interface)"
    assert has_defaults or not _options(role), f"roles/{role}: add defaults/main.yml"


def _options(role: str) -> dict[str, dict[str, Any]]:
    specs = load(ROLES / role / "meta" / "argument_specs.yml") or {}
    return (specs.get("argument_specs", {}).get("main") or {}).get("options") or {}


@pytest.mark.parametrize("role", ALL_ROLES)
def test_main_options_are_the_defaults(role: str) -> None:
    defaults = load(ROLES / role / "defaults" / "main.yml") or {}
    options = _options(role)
    missing = sorted(set(defaults) - set(options))
    extra = sorted(set(options) - set(defaults))
    assert not missing, f"roles/{role}: in defaults/main.yml but not in argument_specs: {missing}"
    assert not extra, f"roles/{role}: in argument_specs but not in defaults/main.yml: {extra}"


@pytest.mark.parametrize("role", ALL_ROLES)
def test_option_defaults_types_and_descriptions(role: str) -> None:
    defaults = load(ROLES / role / "defaults" / "main.yml") or {}
    for name, option in _options(role).items():
        if name not in defaults:
            continue  # reported by test_main_options_are_the_defaults
        value = defaults[name]
        assert option.get("description"), f"roles/{role}: {name} has no description"
        assert option.get("default") == value, (
            f"roles/{role}: {name}: argument_specs default {option.get('default')!r} "
            f"differs from defaults/main.yml {value!r}"
        )
        kind = option.get("type", "str")
        if value is None or kind not in PYTHON_TYPES:
            continue
        if isinstance(value, str) and "{{" in value:
            continue  # a template: its type is known only when Ansible renders it
        assert isinstance(value, PYTHON_TYPES[kind]) and not (
            kind in {"int", "float"} and isinstance(value, bool)
        ), f"roles/{role}: {name} is declared {kind} but defaults to {value!r}"
