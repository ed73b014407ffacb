"""Helpers shared by the unit tests: write a config to a temp file and load it."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from hxp_runtime.config import ConfigError, HxpConfig, Problem, load_config

BASE = """\
version: 1
name: unit
hosts:
  - name: llm-1
    address: 10.0.0.10
    groups: [llm, cache]
    gpus:
      - {index: 0, memory_gb: 80}
  - name: db-1
    address: 10.0.0.11
    groups: [database]
models:
  - name: phi3
    preset: phi-3-mini
    engine: {dtype: float16, max_model_len: 4096, max_num_seqs: 8}
  - name: minilm
    preset: all-minilm-l6-v2
  - {name: small, port: 11410, memory_limit_gb: 4, cpu_cores: 2, slo: {latency_ms: 500,
     throughput_rps: 10}, architecture: {params_b: 0.5, num_layers: 4, num_attention_heads: 8,
     num_kv_heads: 8, head_dim: 64}}
router:
  fallbacks:
    phi3: [small]
database:
  router_password: "env:HXP_DB_PASSWORD"
cache:
  password: "env:HXP_REDIS_PASSWORD"
"""


def load_file_module(name: str, path: Path) -> ModuleType:
    """Import a module that lives outside the package (an Ansible module or plugin) by path."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Problems = Callable[[str], list[Problem]]


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, problems
    return problems[0]


def line_of(text: str, needle: str) -> int:
    """1-based line of the only line containing ``needle``."""
    hits = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(hits) == 1, f"{needle!r} found on lines {hits}"
    return hits[0]


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str) -> Path:
        path = tmp_path / "hxp.yml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def load_text(write_config: Callable[[str], Path]) -> Callable[[str], HxpConfig]:
    def load(text: str) -> HxpConfig:
        return load_config(write_config(text))

    return load


@pytest.fixture
def problems_of(write_config: Callable[[str], Path]) -> Callable[[str], list[Problem]]:
    def problems(text: str) -> list[Problem]:
        with pytest.raises(ConfigError) as caught:
            load_config(write_config(text))
        return caught.value.errors

    return problems
