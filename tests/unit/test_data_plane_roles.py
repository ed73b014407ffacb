"""The data-plane roles (postgresql, redis, qdrant, bundle) and the renderer agree on names:
argument_specs.yml mirrors defaults/main.yml, and every variable `hxp render` writes for a role
is one of that role's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hxp_runtime.config import load_config, plan_deployment
from hxp_runtime.render import postgresql_vars, qdrant_vars, redis_vars

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "roles"
RENDERERS = {"postgresql": postgresql_vars, "redis": redis_vars, "qdrant": qdrant_vars}


def defaults(role: str) -> dict[str, object]:
    return yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())


def argument_specs(role: str) -> dict[str, dict[str, object]]:
    return yaml.safe_load((ROLES / role / "meta" / "argument_specs.yml").read_text())[
        "argument_specs"
    ]


@pytest.mark.parametrize("role", [*RENDERERS, "bundle"])
def test_argument_specs_mirror_defaults(role: str) -> None:
    values = defaults(role)
    for entry_point, spec in argument_specs(role).items():
        options = spec["options"]
        assert set(options) == set(values), f"{role} entry point {entry_point}"
        for name, option in options.items():
            # An option without a default (required, or optional like the bundle path) is
            # null in defaults/main.yml.
            assert option.get("default") == values[name], f"{role}: {name}"


@pytest.mark.parametrize("role", RENDERERS)
@pytest.mark.parametrize("sample", ["sample", "lab"])
def test_rendered_variables_are_role_defaults(role: str, sample: str) -> None:
    cfg = load_config(REPO / "inventory" / sample / "hxp.yml")
    rendered = RENDERERS[role](cfg, plan_deployment(cfg))
    assert rendered, f"inventory/{sample} has no {role} section"
    assert set(rendered) <= set(defaults(role))


@pytest.mark.parametrize("role", RENDERERS)
def test_secrets_are_marked_no_log(role: str) -> None:
    options = argument_specs(role)["main"]["options"]
    secrets = {name for name in options if name.endswith(("_password", "_api_key"))}
    assert secrets
    for name in secrets:
        assert options[name].get("no_log") is True, name
