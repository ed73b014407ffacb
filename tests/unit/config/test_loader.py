"""load_config: every problem at once, each with file, line and field; files that are not
YAML mappings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hxp_runtime.config import ConfigError, load_config
from tests.unit.conftest import BASE, Problems, line_of, only


def test_every_problem_is_reported_at_once(problems_of: Problems) -> None:
    text = BASE.replace("phi3: [small]", "phi3: [nope]").replace(
        "router:\n", "router:\n  port: 11404\n"
    )
    fields = sorted(p.field for p in problems_of(text))
    assert fields == ["router.fallbacks.phi3[0]", "router.port"]


def test_yaml_syntax_error_gives_line(problems_of: Problems) -> None:
    text = BASE.replace("  - name: db-1\n", "  - name: db-1\n   broken: [\n")
    p = only(problems_of(text))
    assert "YAML syntax error" in p.message
    assert p.line == line_of(text, "broken: [")


def test_duplicate_yaml_key_is_an_error(problems_of: Problems) -> None:
    text = BASE.replace("name: unit\n", "name: unit\nname: again\n")
    p = only(problems_of(text))
    assert "duplicate key 'name'" in p.message
    assert p.line == line_of(text, "name: again")


def test_missing_file_is_reported_as_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.yml")
    assert "file not found" in str(caught.value)


def test_document_that_is_not_a_mapping(problems_of: Problems) -> None:
    p = only(problems_of("- just\n- a list\n"))
    assert "must be a YAML mapping" in p.message


def test_error_text_names_file_line_and_field(write_config: Callable[[str], Path]) -> None:
    text = BASE.replace("phi3: [small]", "phi3: [nope]")
    path = write_config(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    rendered = str(caught.value)
    assert f"{path}:{line_of(text, 'phi3: [nope]')}: router.fallbacks.phi3[0]:" in rendered
