"""The schema and every validation rule: one bad config per rule, checking field and line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hxp_runtime.config import (
    ConfigError,
    HxpConfig,
    Problem,
    SecretRef,
    SecretScheme,
    load_config,
)
from tests.unit.conftest import BASE, line_of

REPO = Path(__file__).resolve().parents[2]
Problems = Callable[[str], list[Problem]]


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, problems
    return problems[0]


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


# ----------------------------------------------------------------- one bad config per rule


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


def test_duplicate_host_name(problems_of: Problems) -> None:
    text = BASE.replace("  - name: db-1\n", "  - name: llm-1\n")
    problems = problems_of(text)
    dup = [p for p in problems if "duplicate host name" in p.message]
    assert len(dup) == 1
    assert dup[0].field == "hosts[1].name"
    assert dup[0].line == line_of(text, "address: 10.0.0.11") - 1


def test_duplicate_model_name(problems_of: Problems) -> None:
    text = BASE.replace("  - name: minilm\n", "  - name: phi3\n")
    problems = problems_of(text)
    dup = [p for p in problems if "duplicate model name 'phi3'" in p.message]
    assert len(dup) == 1
    assert dup[0].field == "models[1].name"
    assert dup[0].line == line_of(text, "preset: all-minilm-l6-v2") - 1


def test_duplicate_alias_across_models(problems_of: Problems) -> None:
    text = BASE.replace(
        "preset: all-minilm-l6-v2\n", "preset: all-minilm-l6-v2\n    aliases: [phi3]\n"
    )
    p = only(problems_of(text))
    assert p.field == "models[1].aliases[0]"
    assert "duplicate model name or alias 'phi3'" in p.message
    assert p.line == line_of(text, "aliases: [phi3]")


def test_two_services_on_one_host_port(problems_of: Problems) -> None:
    text = BASE.replace("router:\n", "router:\n  port: 11403\n")
    p = only(problems_of(text))
    assert p.field == "router.port"
    assert "port 11403 on host 'llm-1' is already used by model phi3" in p.message
    assert p.line == line_of(text, "port: 11403")


def test_model_on_unknown_host(problems_of: Problems) -> None:
    text = BASE.replace("preset: phi-3-mini\n", "preset: phi-3-mini\n    host: llm-9\n")
    p = only(problems_of(text))
    assert p.field == "models[0].host"
    assert "host 'llm-9' is not defined" in p.message
    assert p.line == line_of(text, "host: llm-9")


def test_model_on_host_without_llm_group(problems_of: Problems) -> None:
    text = BASE.replace("preset: phi-3-mini\n", "preset: phi-3-mini\n    host: db-1\n")
    p = only(problems_of(text))
    assert p.field == "models[0].host"
    assert "not in group 'llm'" in p.message
    assert p.line == line_of(text, "host: db-1")


def test_service_whose_group_has_no_host(problems_of: Problems) -> None:
    text = BASE + "vector_db:\n  api_key: env:HXP_QDRANT_KEY\n"
    p = only(problems_of(text))
    assert p.field == "vector_db"
    assert "0 hosts are in group 'vector'" in p.message
    assert p.line == line_of(text, "vector_db:")


def test_fallback_to_unknown_model(problems_of: Problems) -> None:
    text = BASE.replace("phi3: [small]", "phi3: [small, gpt-5]")
    p = only(problems_of(text))
    assert p.field == "router.fallbacks.phi3[1]"
    assert "fallback to unknown model 'gpt-5'" in p.message
    assert p.line == line_of(text, "phi3: [small, gpt-5]")


def test_default_model_unknown(problems_of: Problems) -> None:
    text = BASE.replace("router:\n", "router:\n  default_model: llama\n")
    p = only(problems_of(text))
    assert p.field == "router.default_model"
    assert p.line == line_of(text, "default_model: llama")


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


def test_tensor_parallel_size_must_divide_heads(problems_of: Problems) -> None:
    text = BASE.replace(
        "    gpus:\n      - {index: 0, memory_gb: 80}\n",
        "    gpus:\n      - {index: 0, memory_gb: 80}\n      - {index: 1, memory_gb: 80}\n"
        "      - {index: 2, memory_gb: 80}\n",
    ).replace("max_num_seqs: 8}", "max_num_seqs: 8, tensor_parallel_size: 3}")
    p = only(problems_of(text))
    assert p.field == "models[0].engine.tensor_parallel_size"
    assert "does not divide the model's 32 attention heads" in p.message
    assert "[1, 2]" in p.message
    assert p.line == line_of(text, "tensor_parallel_size: 3")


def test_tensor_parallel_size_exceeds_gpus(problems_of: Problems) -> None:
    text = BASE.replace("max_num_seqs: 8}", "max_num_seqs: 8, tensor_parallel_size: 2}")
    p = only(problems_of(text))
    assert p.field == "models[0].engine.tensor_parallel_size"
    assert "exceeds the 1 GPUs" in p.message
    assert p.line == line_of(text, "tensor_parallel_size: 2")


def test_gpu_index_that_does_not_exist(problems_of: Problems) -> None:
    text = BASE.replace("preset: phi-3-mini\n", "preset: phi-3-mini\n    gpus: [3]\n")
    p = only(problems_of(text))
    assert p.field == "models[0].gpus[0]"
    assert "GPU 3 does not exist" in p.message
    assert p.line == line_of(text, "gpus: [3]")


def test_model_that_does_not_fit_its_gpu(problems_of: Problems) -> None:
    text = BASE.replace(
        "  - name: minilm\n",
        "  - name: mixtral\n    preset: mixtral-8x7b\n    engine: {dtype: float16}\n"
        "  - name: minilm\n",
    )
    p = only(problems_of(text))
    assert p.field == "models[1]"
    assert "does not fit" in p.message
    assert "quantization: awq" in p.message
    assert p.line == line_of(text, "name: mixtral")


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


def test_semantic_strategy_needs_an_embeddings_model(problems_of: Problems) -> None:
    text = BASE.replace("router:\n", "router:\n  strategies: [semantic]\n")
    p = only(problems_of(text))
    assert p.field == "router.strategies"
    assert "embedding_model" in p.message


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


def test_union_field_errors_are_reported_once(problems_of: Problems) -> None:
    text = BASE.replace("preset: phi-3-mini\n", "preset: phi-3-mini\n    gpus: lots\n")
    p = only(problems_of(text))
    assert p.field == "models[0].gpus"
    assert "'lots' is not valid" in p.message
    assert p.line == line_of(text, "gpus: lots")


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
