"""Every task that refreshes the apt index has a task timeout: a fetch that stalls (apt through
apt-cacher-ng once hung a CI run for over an hour with no socket open) fails the run with the
task's name instead of holding it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
# A cold install of a role's packages through the lab's proxy takes minutes, not fifteen.
MIN_TIMEOUT = 900
APT = {"ansible.builtin.apt", "apt"}
SHELLS = {"ansible.builtin.raw", "ansible.builtin.shell", "ansible.builtin.command"}
NESTED = ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks", "handlers")


# libyaml's loader where PyYAML has it: several times faster than the pure-Python one.
class _AnyTagLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Reads task files and playbooks whatever Ansible tags (!unsafe, !vault) they hold."""


def _untagged(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_mapping(node)  # type: ignore[arg-type]


_AnyTagLoader.add_multi_constructor("!", _untagged)


def ansible_files() -> Iterator[Path]:
    for pattern in (
        "roles/*/tasks/*.yml",
        "roles/*/handlers/*.yml",
        "roles/*/molecule/*/*.yml",
        "playbooks/*.yml",
        "molecule/*/*.yml",
    ):
        yield from sorted(REPO.glob(pattern))


def tasks(node: Any) -> Iterator[dict[str, Any]]:
    """Every task of a task file or playbook, those inside blocks and plays included."""
    if isinstance(node, list):
        for entry in node:
            yield from tasks(entry)
    elif isinstance(node, dict):
        if "hosts" not in node and "block" not in node:
            yield node
        for key in NESTED:
            yield from tasks(node.get(key))


def refreshes_the_apt_index(task: dict[str, Any]) -> bool:
    apt = next((task[m] or {} for m in APT if m in task), None)
    if apt is not None:  # cache_valid_time alone refreshes a stale index too
        return bool(apt.get("update_cache")) or "cache_valid_time" in apt
    command = next((str(task[m]) for m in SHELLS if m in task), "")
    return "apt-get" in command and " update" in command


def test_the_checks_below_recognise_an_index_refresh() -> None:
    assert refreshes_the_apt_index({"ansible.builtin.apt": {"name": "x", "update_cache": True}})
    assert refreshes_the_apt_index({"ansible.builtin.apt": {"cache_valid_time": 3600}})
    assert refreshes_the_apt_index({"ansible.builtin.raw": "apt-get -q update && apt-get install"})
    assert not refreshes_the_apt_index({"ansible.builtin.apt": {"name": "x"}})
    assert not refreshes_the_apt_index({"ansible.builtin.raw": "apt-get install -y x"})
    nested = [{"hosts": "all", "tasks": [{"block": [{"name": "a"}], "rescue": [{"name": "b"}]}]}]
    assert [t["name"] for t in tasks(nested)] == ["a", "b"]


def test_every_apt_index_refresh_has_a_timeout() -> None:
    found = []
    missing = []
    for path in ansible_files():
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_AnyTagLoader)
        for task in tasks(document):
            if not refreshes_the_apt_index(task):
                continue
            where = f"{path.relative_to(REPO)}: {task.get('name', '(unnamed task)')}"
            found.append(where)
            if int(task.get("timeout", 0)) < MIN_TIMEOUT:
                missing.append(f"{where}: timeout {task.get('timeout')!r}")
    assert len(found) >= 10, found  # the roles' package installs and the python3 bootstrap
    assert not missing, f"set `timeout: {MIN_TIMEOUT}` (seconds) on:\n" + "\n".join(missing)
