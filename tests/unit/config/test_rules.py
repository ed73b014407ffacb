"""The cross-field rules (hxp_runtime.config.rules): one bad config per rule, checking field and
line."""

from __future__ import annotations

from collections.abc import Callable

from hxp_runtime.config import HxpConfig
from tests.unit.conftest import BASE, Problems, line_of, only


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


def test_two_services_on_one_host_port(problems_of: Problems) -> None:
    text = BASE.replace("router:\n", "router:\n  port: 11403\n")
    p = only(problems_of(text))
    assert p.field == "router.port"
    assert "port 11403 on host 'llm-1' is already used by model phi3" in p.message
    assert p.line == line_of(text, "port: 11403")


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


def test_semantic_strategy_needs_an_embeddings_model(problems_of: Problems) -> None:
    text = BASE.replace("router:\n", "router:\n  strategies: [semantic]\n")
    p = only(problems_of(text))
    assert p.field == "router.strategies"
    assert "embedding_model" in p.message


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


def test_router_admin_port_on_a_model_port(problems_of: Problems) -> None:
    text = BASE.replace("router:\n", "router:\n  admin_port: 11403\n")
    p = only(problems_of(text))
    assert p.field == "router.admin_port"
    assert "port 11403 on host 'llm-1' is already used by model phi3" in p.message
    assert p.line == line_of(text, "admin_port: 11403")


def test_router_admin_key_must_be_a_secret_reference(problems_of: Problems) -> None:
    text = BASE.replace("router:\n", "router:\n  admin_key: plain-text-key-0123456789\n")
    p = only(problems_of(text))
    assert p.field == "router.admin_key"
    assert "plain-text-key" not in p.message


STATUS = """
status:
  expected:
    - {service: SERVICE, host: HOST, reason: "knowingly off"}
"""


def test_expected_service_on_an_unknown_host(problems_of: Problems) -> None:
    text = BASE + STATUS.replace("SERVICE", "redis").replace("HOST", "db-9")
    problem = only(problems_of(text))
    assert problem.field == "status.expected[0].host"
    assert "no host 'db-9'" in problem.message
    assert problem.line == line_of(text, "db-9")


def test_expected_service_the_deployment_does_not_run(problems_of: Problems) -> None:
    text = BASE + STATUS.replace("SERVICE", "qdrant").replace("HOST", "db-1")
    problem = only(problems_of(text))
    assert problem.field == "status.expected[0].service"
    assert "runs no qdrant" in problem.message


def test_expected_service_on_a_host_it_does_not_run_on(problems_of: Problems) -> None:
    text = BASE + STATUS.replace("SERVICE", "redis").replace("HOST", "db-1")
    problem = only(problems_of(text))
    assert problem.field == "status.expected[0].host"
    assert "redis does not run on db-1 (it runs on llm-1)" in problem.message


def test_expected_service_where_it_runs_is_valid(load_text: Callable[[str], HxpConfig]) -> None:
    cfg = load_text(BASE + STATUS.replace("SERVICE", "redis").replace("HOST", "llm-1"))
    [expected] = cfg.status.expected
    assert (expected.service, expected.state, expected.host) == ("redis", "skipped", "llm-1")


def test_prefix_affinity_before_a_load_strategy_is_refused(problems_of: Problems) -> None:
    text = BASE.replace(
        "router:\n", "router:\n  strategies: [explicit, prefix_affinity, power_of_two]\n"
    )
    p = only(problems_of(text))
    assert p.field == "router.strategies"
    assert "power_of_two after prefix_affinity" in p.message
    assert p.line == line_of(text, "strategies: [explicit, prefix_affinity")


def test_a_credential_header_cannot_name_sessions(problems_of: Problems) -> None:
    text = BASE.replace("router:\n", "router:\n  prefix_routing:\n    session_header: Cookie\n")
    p = only(problems_of(text))
    assert p.field == "router.prefix_routing.session_header"
    assert "carries credentials" in p.message
    assert p.line == line_of(text, "session_header: Cookie")


def test_static_table_needs_the_embedding_model_and_an_absolute_vocabulary(
    problems_of: Problems,
) -> None:
    text = BASE.replace(
        "router:\n", "router:\n  semantic: {static: {vocabulary: /srv/vocab.txt}}\n"
    )
    p = only(problems_of(text))
    assert p.field == "router.semantic"
    assert "static needs embedding_model" in p.message
    relative = BASE.replace("router:\n", "router:\n  semantic: {static: {vocabulary: vocab.txt}}\n")
    p = only(problems_of(relative))
    assert p.field == "router.semantic.static.vocabulary"
    assert "absolute path" in p.message
    margin = BASE.replace(
        "router:\n", "router:\n  semantic: {static: {vocabulary: /v.txt, confident_margin: -1}}\n"
    )
    assert any(q.field == "router.semantic.static.confident_margin" for q in problems_of(margin))
