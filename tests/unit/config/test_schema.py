"""The schema: samples and presets load, and each field refuses what it must, named with its
line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hxp_runtime.config import HxpConfig, SecretRef, SecretScheme, load_config
from tests.unit.conftest import BASE, Problems, line_of, only

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("sample", sorted((REPO / "inventory").glob("*/hxp.yml")), ids=str)
def test_every_sample_loads_through_the_schema(sample: Path) -> None:
    cfg = load_config(sample)
    assert cfg.hosts and cfg.models


def test_production_sample_is_the_hxp_topology() -> None:
    cfg = load_config(REPO / "inventory/sample/hxp.yml")
    addresses = {h.name: str(h.address) for h in cfg.hosts}
    assert addresses == {
        "hx-llm-server-01": "192.168.10.29",
        "hx-postgres-server-01": "192.168.10.35",
        "hx-vectordb-server-01": "192.168.10.30",
        "hx-metrics-server-01": "192.168.10.37",
    }
    assert cfg.database is not None
    assert (cfg.database.port, cfg.database.name) == (5433, "citadel_ai")


def test_defaults_are_the_hxp_design_values(load_text: Callable[[str], HxpConfig]) -> None:
    text = BASE.replace(
        "  - name: minilm\n    preset: all-minilm-l6-v2\n",
        "  - name: minilm\n    preset: all-minilm-l6-v2\n"
        "  - {name: mixtral, preset: mixtral-8x7b, host: llm-1, gpus: 1,"
        " engine: {quantization: awq, max_model_len: 1024, max_num_seqs: 4}}\n"
        "  - {name: hermes, preset: hermes-2, engine: {quantization: awq, max_model_len: 1024,"
        " max_num_seqs: 4}}\n"
        "  - {name: openchat, preset: openchat-3.5, engine: {quantization: awq,"
        " max_model_len: 1024, max_num_seqs: 4}}\n",
    )
    cfg = load_text(text)
    expected = {
        "mixtral": (11400, 90, 8, 2000, 50),
        "hermes": (11401, 15, 4, 1500, 30),
        "openchat": (11402, 8, 4, 1000, 40),
        "phi3": (11403, 4, 2, 500, 60),
    }
    for name, (port, memory, cores, latency, rps) in expected.items():
        m = cfg.model(name)
        assert (m.port, m.memory_limit_gb, m.cpu_cores) == (port, memory, cores)
        assert (m.slo.latency_ms, m.slo.throughput_rps) == (latency, rps)
    assert (cfg.router.port, cfg.router.workers, cfg.router.timeout_s) == (8000, 4, 300)
    assert (cfg.router.slo.latency_ms, cfg.router.slo.throughput_rps) == (100, 1000)
    assert cfg.database is not None and cfg.database.port == 5433
    assert cfg.database.name == "citadel_ai"


def test_entry_values_override_the_preset(load_text: Callable[[str], HxpConfig]) -> None:
    cfg = load_text(BASE.replace("preset: phi-3-mini\n", "preset: phi-3-mini\n    port: 12000\n"))
    phi3 = cfg.model("phi3")
    assert phi3.port == 12000
    assert phi3.slo.latency_ms == 500  # still from the preset


def test_secret_references_parse() -> None:
    assert SecretRef.model_validate("env:HXP_X").scheme is SecretScheme.ENV
    ref = SecretRef.model_validate("file:/etc/hxp/key")
    assert (ref.scheme, ref.value) == (SecretScheme.FILE, "/etc/hxp/key")
    assert SecretRef.model_validate({"scheme": "file", "value": "/etc/hxp/key"}) == ref
    assert str(SecretRef.model_validate("vault:vault_key")) == "vault:vault_key"


def test_unknown_key_is_named_with_its_line(problems_of: Problems) -> None:
    text = BASE.replace("    groups: [database]\n", "    groups: [database]\n    colour: blue\n")
    p = only(problems_of(text))
    assert p.field == "hosts[1].colour"
    assert "unknown key 'colour'" in p.message
    assert p.line == line_of(text, "colour: blue")


def test_wrong_type_names_field_and_line(problems_of: Problems) -> None:
    text = BASE.replace("max_num_seqs: 8", "max_num_seqs: many")
    p = only(problems_of(text))
    assert p.field == "models[0].engine.max_num_seqs"
    assert p.line == line_of(text, "max_num_seqs: many")


def test_missing_required_field(problems_of: Problems) -> None:
    text = BASE.replace('  router_password: "env:HXP_DB_PASSWORD"\n', "  port: 5433\n")
    p = only(problems_of(text))
    assert p.field == "database.router_password"
    assert "missing" in p.message
    assert p.line == line_of(text, "database:")


def test_union_field_errors_are_reported_once(problems_of: Problems) -> None:
    text = BASE.replace("preset: phi-3-mini\n", "preset: phi-3-mini\n    gpus: lots\n")
    p = only(problems_of(text))
    assert p.field == "models[0].gpus"
    assert "'lots' is not valid" in p.message
    assert p.line == line_of(text, "gpus: lots")


def test_plaintext_secret_is_rejected(problems_of: Problems) -> None:
    text = BASE.replace('"env:HXP_REDIS_PASSWORD"', "hunter2")
    p = only(problems_of(text))
    assert p.field == "cache.password"
    assert "plaintext secret is not allowed" in p.message
    assert "env:VARIABLE" in p.message
    assert p.line == line_of(text, "hunter2")


def test_relative_secret_file_is_rejected(problems_of: Problems) -> None:
    text = BASE.replace('"env:HXP_REDIS_PASSWORD"', '"file:secrets/redis"')
    p = only(problems_of(text))
    assert "absolute path" in p.message


def test_managed_engine_flag_in_extra_args(problems_of: Problems) -> None:
    text = BASE.replace("max_num_seqs: 8}", "max_num_seqs: 8, extra_args: ['--port=9']}")
    p = only(problems_of(text))
    assert p.field == "models[0].engine.extra_args"
    assert "--port is set by hxp" in p.message


def test_unknown_preset(problems_of: Problems) -> None:
    text = BASE.replace("preset: phi-3-mini", "preset: phi-4")
    p = only(problems_of(text))
    assert p.field == "models[0]"
    assert "unknown preset 'phi-4'" in p.message
