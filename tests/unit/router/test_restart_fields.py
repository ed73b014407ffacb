"""The settings a reload cannot apply are listed once, in hxp_runtime.router.server; the router
role asks the installed router for them (``hxp-router --restart-fields``) instead of a copy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hxp_runtime.router.server import RESTART_FIELDS, main
from hxp_runtime.router.settings import RouterSettings

ROLE = Path(__file__).resolve().parents[3] / "roles" / "router"


def test_restart_fields_prints_the_list_without_reading_the_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.yml"
    assert main(["--restart-fields", "--settings", str(missing)]) == 0
    assert json.loads(capsys.readouterr().out) == list(RESTART_FIELDS)


def test_every_restart_field_is_a_setting() -> None:
    assert set(RESTART_FIELDS) <= set(RouterSettings.model_fields)


def yaml_values(node: Any) -> Iterator[Any]:
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
        yield from yaml_values(child)


def test_the_role_asks_the_router_and_keeps_no_copy() -> None:
    documents = {path: yaml.safe_load(path.read_text()) for path in sorted(ROLE.rglob("*.yml"))}
    copies = [
        str(path.relative_to(ROLE))
        for path, document in documents.items()
        for value in yaml_values(document)
        if isinstance(value, list) and set(RESTART_FIELDS) <= set(map(str, value))
    ]
    assert copies == []
    asks = [
        task
        for task in documents[ROLE / "tasks" / "configure.yml"]
        if "--restart-fields" in (task.get("ansible.builtin.command") or {}).get("argv", [])
    ]
    assert [task["register"] for task in asks] == ["__hxp_router_restart_fields"]
