"""Nothing rendered is dead, nothing read is undefined.

`hxp render` writes variables for the roles; a variable no role or playbook reads is a setting
that silently does nothing, and a public variable a role reads that is neither rendered nor
defaulted nor set by a task fails (or worse, misbehaves) at deploy time.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from hxp_runtime.config import load_config, plan_deployment
from hxp_runtime.host import gpu_exporter
from hxp_runtime.render import ROLE_VARS, common_vars, host_vars, postgresql_vars, render_inventory
from hxp_runtime.router.store import SCHEMA

REPO = Path(__file__).resolve().parents[2]
SAMPLES = sorted((REPO / "inventory").glob("*/hxp.yml"))
# Where roles and playbooks read variables: tasks, handlers, templates, defaults, vars, meta.
SOURCES = [
    *REPO.glob("roles/*/*/**/*.yml"),
    *REPO.glob("roles/*/templates/**/*.j2"),
    *REPO.glob("playbooks/*.yml"),
]
TOKEN = re.compile(r"(?<![\w.'\"/-])(hxp_[a-z0-9_]+)")
# Set by the lab's inventory, not by hxp render.
NOT_RENDERED = {"hxp_lab_gateway"}
# Names that look like variables but are not: modules shipped in roles/*/library, plugins, the
# Python package, the router's PostgreSQL login role and metric names.
NOT_VARIABLES = {
    *(p.stem for p in REPO.glob("roles/*/library/*.py")),
    *(p.stem for p in REPO.glob("plugins/*/*.py")),
    # A plugin file may hold more than one filter.
    *(
        name
        for p in REPO.glob("plugins/filter/*.py")
        for name in re.findall(r"^def (hxp_\w+)\(", p.read_text(), re.MULTILINE)
    ),
    "hxp_runtime",
    "hxp_router",
    # The metrics role node_exporter's certificate export writes.
    "hxp_certificate_expiry_timestamp_seconds",
    "hxp_certificate_read_error",
}


def _read_text() -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in SOURCES if "molecule" not in p.parts}


def _rendered_names() -> set[str]:
    names: set[str] = set()
    for sample in SAMPLES:
        cfg = load_config(sample)
        plan = plan_deployment(cfg)
        for role_vars in ROLE_VARS:
            names |= set(role_vars(cfg, plan))
        names |= set(common_vars(cfg, plan))
        for host in cfg.hosts:
            names |= set(host_vars(cfg, plan, host.name))
    return names


def _defined_by_roles(texts: dict[Path, str]) -> set[str]:
    defined: set[str] = set()
    for path, text in texts.items():
        if path.parts[-2] in {"defaults", "vars"} and path.name == "main.yml":
            defined |= set((yaml.safe_load(text) or {}).keys())
        # set_fact and register give names too.
        defined |= (
            set(re.findall(r"^\s+(hxp_[a-z0-9_]+):", text, re.M)) if "set_fact" in text else set()
        )
        defined |= set(re.findall(r"register:\s*(hxp_[a-z0-9_]+)", text))
    # An entry point other than main (include_role tasks_from) declares the inputs its callers
    # pass with it: role node_exporter's `certificate`.
    for specs in REPO.glob("roles/*/meta/argument_specs.yml"):
        for entry, spec in (yaml.safe_load(specs.read_text()) or {})["argument_specs"].items():
            if entry != "main":
                defined |= set(spec.get("options") or {})
    return defined


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.parent.name)
def test_every_rendered_variable_is_read_by_a_role(sample: Path) -> None:
    cfg = load_config(sample)
    plan = plan_deployment(cfg)
    rendered = set(common_vars(cfg, plan))
    for role_vars in ROLE_VARS:
        rendered |= set(role_vars(cfg, plan))
    for host in cfg.hosts:
        rendered |= set(host_vars(cfg, plan, host.name))
    read = set()
    for text in _read_text().values():
        read |= set(TOKEN.findall(text))
    dead = sorted(rendered - read)
    assert not dead, f"rendered but read by no role or playbook: {dead}"


def test_every_public_variable_a_role_reads_is_rendered_or_defaulted() -> None:
    texts = _read_text()
    read = set()
    for text in texts.values():
        read |= set(TOKEN.findall(text))
    known = _rendered_names() | _defined_by_roles(texts) | NOT_RENDERED | NOT_VARIABLES
    undefined = sorted(read - known)
    assert not undefined, f"read by a role but neither rendered nor defaulted: {undefined}"


def test_postgresql_gets_the_routers_schema_from_render(tmp_path: Path) -> None:
    sample = REPO / "inventory" / "sample" / "hxp.yml"
    cfg = load_config(sample)
    plan = plan_deployment(cfg)
    assert postgresql_vars(cfg, plan)["hxp_postgresql_router_schema"] == SCHEMA
    render_inventory(cfg, plan, tmp_path, sample)
    text = (tmp_path / "group_vars" / "all" / "hxp.yml").read_text()
    # Ansible reads it back byte for byte: the statements the router runs at start-up.
    rendered = yaml.safe_load(text.replace("!unsafe", "!!str"))
    assert rendered["hxp_postgresql_router_schema"] == SCHEMA
    template = (REPO / "roles/postgresql/templates/schema.sql.j2").read_text()
    assert "{{ hxp_postgresql_router_schema }}" in template


# The one program a role runs on the controller: `hxp bundle verify` (role bundle, verify.yml),
# from the hxp installed there. Nothing reads the checkout or builds from it at deploy time.
CONTROLLER_PROGRAMS = re.compile(
    r"lookup\(\s*'(ansible\.builtin\.)?pipe'|pip\s+wheel|\bwheel\b.*delegate_to|ansible_playbook_python"
)


def test_roles_run_nothing_from_the_checkout_on_the_controller() -> None:
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path, text in _read_text().items()
        if path != REPO / "roles/bundle/tasks/verify.yml"
        for number, line in enumerate(text.splitlines(), 1)
        if CONTROLLER_PROGRAMS.search(line) and not line.lstrip().startswith("#")
    ]
    assert not found, "roles must not run Python or build on the controller:\n" + "\n".join(found)


# `X | default(LITERAL)` on a rendered variable restates what hxp.yml's schema already decided
# (render writes every field, defaults included): one of the two is wrong one day.
LITERAL_FALLBACK = re.compile(
    r"\b(_?hxp_[a-z0-9_]+)((?:\.[a-z0-9_]+)*)\s*\|\s*default\(\s*(['\"]|\d|true\b|false\b)"
)
# A fallback that is no value the role uses: how a message prints a null.
DISPLAY_ONLY = {"hxp_prometheus_retention_size"}


def test_no_literal_fallback_for_what_render_writes() -> None:
    rendered = _rendered_names()
    found = [
        f"{path.relative_to(REPO)}: {match[0]}"
        for path, text in _read_text().items()
        if "roles" in path.parts
        for match in LITERAL_FALLBACK.finditer(text)
        if match[1] in rendered and match[1] not in DISPLAY_ONLY
    ]
    assert not found, "literal defaults of rendered variables:\n" + "\n".join(found)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.parent.name)
def test_gpu_exporter_port_is_rendered_for_every_host(sample: Path) -> None:
    cfg = load_config(sample)
    plan = plan_deployment(cfg)
    expected = cfg.metrics.gpu_exporter_port if cfg.metrics else gpu_exporter.DEFAULT_PORT
    for host in cfg.hosts:
        assert host_vars(cfg, plan, host.name)["hxp_vllm_gpu_exporter_port"] == expected


def test_router_admin_key_goes_to_the_secrets_file_and_its_port_to_settings() -> None:
    from hxp_runtime.render import router_vars
    from hxp_runtime.router.settings import RouterSettings

    sample = REPO / "inventory" / "sample" / "hxp.yml"
    cfg = load_config(sample)
    assert cfg.router.admin_key is not None
    rendered = router_vars(cfg, plan_deployment(cfg))
    # A lookup at run time, never the value, and never in the world-readable settings file.
    assert "lookup('hxp_secret'" in str(rendered["hxp_router_admin_key"])
    assert "admin_key" not in rendered["hxp_router_settings"]
    settings = RouterSettings.model_validate(rendered["hxp_router_settings"])
    assert settings.admin_port == cfg.router.admin_port
    role_vars = (REPO / "roles/router/vars/main.yml").read_text()
    assert 'admin_key: "{{ hxp_router_admin_key }}"' in role_vars
