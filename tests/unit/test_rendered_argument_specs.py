"""What `hxp render` writes and what the roles declare agree, for inventory/sample and lab.

Every variable render writes into the inventory is an option some role declares in
meta/argument_specs.yml (its interface), or one of the few variables Ansible or a playbook reads
itself (INVENTORY_LEVEL). Every option a role needs a value for (``required: true``, or null in
defaults/main.yml) is rendered for each host a playbook runs the role on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hxp_runtime.config import HxpConfig, load_config, plan_deployment
from hxp_runtime.render import inventory_files

REPO = Path(__file__).resolve().parents[2]
CONFIGS = [REPO / "inventory/sample/hxp.yml", REPO / "inventory/lab/hxp.yml"]
HOSTS_FILE = Path("hosts.yml")

# Rendered variables no role reads as an option, each with who reads it instead.
INVENTORY_LEVEL = {
    # Connection settings: Ansible's own connection plugins read them.
    "ansible_host": "the address Ansible connects to",
    "ansible_user": "the user Ansible logs in as",
    "ansible_port": "the SSH port Ansible connects to",
    # playbooks/validate.yml asserts them: they mark an inventory as rendered by hxp.
    "hxp_schema_version": "playbooks/validate.yml checks the inventory's schema version",
    "hxp_deployment_name": "playbooks/validate.yml checks the inventory came from hxp render",
    # The data the secret expressions render writes hand to the hxp_secret lookup plugin.
    "hxp_secret_refs": "plugins/lookup/hxp_secret.py and playbooks/validate.yml read it",
    # A play's switch, not a role's input: whether node_exporter runs at all.
    "hxp_metrics_enabled": "playbooks/metrics.yml decides whether node_exporter runs",
}
# Options whose null default is a setting of its own (the description says what null means).
NULL_IS_A_SETTING = {
    "hxp_router_source_dir": "null: the checkout the controller's hxp package comes from",
}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def declared_options() -> dict[str, list[str]]:
    """Option name -> the argument_specs files (every entry point) that declare it."""
    declared: dict[str, list[str]] = {}
    for specs in sorted(REPO.glob("roles/*/meta/argument_specs.yml")):
        for entry in (load(specs) or {}).get("argument_specs", {}).values():
            for name in (entry or {}).get("options") or {}:
                where = str(specs.relative_to(REPO))
                if where not in declared.setdefault(name, []):
                    declared[name].append(where)
    return declared


def needed_options(role: str) -> dict[str, str]:
    """Options of ``role``'s main entry point it needs a value for -> why."""
    role_dir = REPO / "roles" / role
    options = (load(role_dir / "meta" / "argument_specs.yml") or {})["argument_specs"]["main"]
    defaults = load(role_dir / "defaults" / "main.yml") or {}
    needed = {}
    for name, option in (options.get("options") or {}).items():
        if option.get("required"):
            needed[name] = "required: true"
        elif defaults.get(name) is None and name not in NULL_IS_A_SETTING:
            needed[name] = "no default in defaults/main.yml"
    return needed


def roles_by_play_hosts() -> list[tuple[str, str]]:
    """(host pattern, role) of every role a play in playbooks/ applies."""
    found = []
    for playbook in sorted(REPO.glob("playbooks/*.yml")):
        for play in load(playbook) or []:
            for role in play.get("roles") or []:
                name = role if isinstance(role, str) else role["role"]
                found.append((play["hosts"], name))
    return found


def hosts_matching(pattern: str, inventory: dict[str, Any]) -> set[str]:
    hosts: set[str] = set()
    children = inventory["all"]["children"]
    for part in pattern.replace(",", ":").split(":"):
        if part == "all":
            hosts |= set(inventory["all"]["hosts"])
        elif part in children:
            hosts |= set(children[part]["hosts"])
    return hosts


def variables_by_host(cfg: HxpConfig) -> dict[str, dict[str, tuple[Any, str]]]:
    """Host -> every variable render writes for it -> (value, inventory file it is in)."""
    files = inventory_files(cfg, plan_deployment(cfg))
    inventory = files[HOSTS_FILE]
    group_all = files[Path("group_vars", "all", "hxp.yml")]
    by_host = {}
    for host, connection in inventory["all"]["hosts"].items():
        variables = {name: (value, str(HOSTS_FILE)) for name, value in connection.items()}
        variables |= {name: (value, "group_vars/all/hxp.yml") for name, value in group_all.items()}
        own = Path("host_vars", host, "hxp.yml")
        variables |= {name: (value, str(own)) for name, value in files.get(own, {}).items()}
        by_host[host] = variables
    return by_host


def test_plays_apply_roles_to_groups_render_writes() -> None:
    cfg = load_config(CONFIGS[0])
    inventory = inventory_files(cfg, plan_deployment(cfg))[HOSTS_FILE]
    applied = roles_by_play_hosts()
    assert {"common", "vllm", "router", "postgresql", "prometheus"} <= {r for _, r in applied}
    for pattern, role in applied:
        assert hosts_matching(pattern, inventory), f"no host of the sample runs {role}"


def undeclared(by_host: dict[str, dict[str, tuple[Any, str]]]) -> set[str]:
    declared = declared_options()
    return {
        f"{name} (in {where})"
        for variables in by_host.values()
        for name, (_, where) in variables.items()
        if name not in declared and name not in INVENTORY_LEVEL
    }


def not_rendered(
    by_host: dict[str, dict[str, tuple[Any, str]]], inventory: dict[str, Any]
) -> set[str]:
    missing = set()
    for pattern, role in roles_by_play_hosts():
        for name, why in needed_options(role).items():
            for host in sorted(hosts_matching(pattern, inventory)):
                value, _ = by_host[host].get(name, (None, ""))
                if name not in by_host[host] or (why == "required: true" and value is None):
                    where = f"roles/{role}/meta/argument_specs.yml"
                    missing.add(f"{where}: {name} ({why}) for {host}")
    return missing


def rendered(config: Path) -> tuple[dict[str, dict[str, tuple[Any, str]]], dict[str, Any]]:
    cfg = load_config(config)
    return variables_by_host(cfg), inventory_files(cfg, plan_deployment(cfg))[HOSTS_FILE]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.parent.name)
def test_every_rendered_variable_is_declared(config: Path) -> None:
    found = undeclared(rendered(config)[0])
    assert not found, (
        f"{config.relative_to(REPO)}: rendered but declared in no roles/*/meta/argument_specs.yml:"
        f" {sorted(found)}; declare each in the role that reads it (and its "
        "defaults/main.yml), or list it in INVENTORY_LEVEL with the reason"
    )


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.parent.name)
def test_every_needed_option_is_rendered_for_the_hosts_of_its_role(config: Path) -> None:
    found = not_rendered(*rendered(config))
    assert not found, (
        f"{config.relative_to(REPO)}: options a role needs that render does not write: "
        f"{sorted(found)}"
    )


def test_gaps_are_named_with_the_variable_and_the_file() -> None:
    by_host, inventory = rendered(CONFIGS[0])
    metrics = by_host["hx-metrics-server-01"]
    del metrics["hxp_grafana_prometheus_url"]
    metrics["hxp_grafana_admin_password"] = (None, "group_vars/all/hxp.yml")
    metrics["hxp_grafana_theme"] = ("dark", "host_vars/hx-metrics-server-01/hxp.yml")
    assert undeclared(by_host) == {"hxp_grafana_theme (in host_vars/hx-metrics-server-01/hxp.yml)"}
    assert not_rendered(by_host, inventory) == {
        "roles/grafana/meta/argument_specs.yml: hxp_grafana_prometheus_url (required: true) "
        "for hx-metrics-server-01",
        "roles/grafana/meta/argument_specs.yml: hxp_grafana_admin_password (required: true) "
        "for hx-metrics-server-01",
    }


def test_null_defaults_need_a_value_unless_null_is_a_setting() -> None:
    assert needed_options("grafana")["hxp_grafana_prometheus_password"] == (
        "no default in defaults/main.yml"
    )
    assert "hxp_router_source_dir" not in needed_options("router")
