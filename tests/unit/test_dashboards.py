"""Dashboards as code: which boards a deployment gets, and that every panel query is PromQL that
Prometheus 2.42 parses, over metrics the stack's exporters really export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from hxp_runtime.config import HxpConfig, Slo, load_config
from hxp_runtime.host import gpu_exporter
from hxp_runtime.observability.dashboards import (
    BUILTIN_VARIABLES,
    dashboards,
    panel_queries,
    template_variables,
)
from hxp_runtime.router.metrics import MULTIPROC_ENV, RouterMetrics

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "inventory/lab/hxp.yml"
SAMPLE = REPO / "inventory/sample/hxp.yml"
# Where the vLLM series measured on a real server are written down (outside the repository).
VLLM_NOTES = Path("/work/shared/notes/vllm-cpu.md")
VARIABLES = {"model": "phi3", "host": "hx-llm-server-01"}

Board = dict[str, Any]


def _histogram(name: str) -> set[str]:
    return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}


# --------------------------------------------------------------------------- what sources export

UP = {"up"}
# Seen on vLLM 0.32 (CPU) /metrics; vllm:gpu_cache_usage_perc is gone (kv_cache_usage_perc).
VLLM = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:engine_sleep_state",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:num_preemptions_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
}.union(
    *(
        _histogram(f"vllm:{name}")
        for name in (
            "time_to_first_token_seconds",
            "inter_token_latency_seconds",
            "e2e_request_latency_seconds",
            "request_queue_time_seconds",
        )
    )
)
NODE = {
    "node_cpu_seconds_total",
    "node_load1",
    "node_memory_MemAvailable_bytes",
    "node_memory_MemTotal_bytes",
    "node_filesystem_avail_bytes",
    "node_filesystem_size_bytes",
    "node_disk_read_bytes_total",
    "node_disk_written_bytes_total",
    "node_network_receive_bytes_total",
    "node_network_transmit_bytes_total",
}
# postgres_exporter 0.11: the default metric map (pg_stat_database_* without _total) and the
# pg_database collector.
POSTGRES = {
    "pg_up",
    "pg_stat_activity_count",
    "pg_stat_activity_max_tx_duration",
    "pg_stat_database_numbackends",
    "pg_stat_database_xact_commit",
    "pg_stat_database_xact_rollback",
    "pg_stat_database_blks_hit",
    "pg_stat_database_blks_read",
    "pg_stat_database_tup_fetched",
    "pg_stat_database_tup_inserted",
    "pg_stat_database_tup_updated",
    "pg_stat_database_tup_deleted",
    "pg_stat_database_deadlocks",
    "pg_settings_max_connections",
    "pg_locks_count",
    "pg_database_size_bytes",
}
# redis_exporter 1.45.
REDIS = {
    "redis_up",
    "redis_connected_clients",
    "redis_blocked_clients",
    "redis_memory_used_bytes",
    "redis_memory_max_bytes",
    "redis_commands_processed_total",
    "redis_keyspace_hits_total",
    "redis_keyspace_misses_total",
    "redis_evicted_keys_total",
    "redis_expired_keys_total",
    "redis_db_keys",
    "redis_net_input_bytes_total",
    "redis_net_output_bytes_total",
}
# Qdrant's own /metrics (the series its documentation lists for every release since 1.0).
QDRANT = {
    "app_info",
    "collections_total",
    "collections_vector_total",
    "rest_responses_total",
    "rest_responses_fail_total",
    "rest_responses_avg_duration_seconds",
    "grpc_responses_total",
    "grpc_responses_fail_total",
}


def router_metrics() -> set[str]:
    """The series names hxp_runtime/router/metrics.py registers."""
    names: set[str] = set()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(MULTIPROC_ENV, raising=False)
        families = list(RouterMetrics().registry.collect())
    for family in families:
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= _histogram(family.name)
        else:
            names.add(family.name)
    return names


def gpu_metrics() -> set[str]:
    """The series names hxp_runtime/host/gpu_exporter.py exports."""
    return {r.name for r in gpu_exporter.READINGS} | {"hxp_gpu_nvml_up", "hxp_gpu_info"}


SOURCES = {
    "hxp-overview.json": UP | router_metrics() | VLLM,
    "hxp-router.json": UP | router_metrics(),
    "hxp-vllm.json": UP | VLLM,
    "hxp-gpus.json": UP | gpu_metrics(),
    "hxp-postgresql.json": UP | POSTGRES,
    "hxp-redis.json": UP | REDIS,
    "hxp-qdrant.json": UP | QDRANT,
    "hxp-hosts.json": UP | NODE,
}


# --------------------------------------------------------------------------- PromQL helpers

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right"}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (not functions, labels, keywords or strings)."""
    text = _GROUPING.sub(" ", _RANGE.sub(" ", _MATCHERS.sub(" ", _STRING.sub('""', expr))))
    return {
        m.group()
        for m in _IDENTIFIER.finditer(text)
        if m.group() not in _KEYWORDS and not text[m.end() :].lstrip().startswith("(")
    }


def balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in _STRING.sub('""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def raw_queries(board: Board) -> Iterator[tuple[str, str]]:
    """(title, expression) of every panel, variables left as Grafana sees them."""
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def panels(board: Board) -> Iterator[Board]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def lab() -> HxpConfig:
    return load_config(LAB)


@pytest.fixture(scope="module")
def sample() -> HxpConfig:
    return load_config(SAMPLE)


@pytest.fixture(scope="module")
def every_board(lab: HxpConfig, sample: HxpConfig) -> list[tuple[str, Board]]:
    """The lab's and the sample's boards: together they hold every kind of panel."""
    return [*dashboards(lab).items(), *dashboards(sample).items()]


# --------------------------------------------------------------------------- which boards


COMMON = [
    "hxp-overview.json",
    "hxp-router.json",
    "hxp-vllm.json",
    "hxp-postgresql.json",
    "hxp-redis.json",
    "hxp-qdrant.json",
    "hxp-hosts.json",
]


def test_the_lab_gets_no_gpu_board(lab: HxpConfig) -> None:
    assert sorted(dashboards(lab)) == sorted(COMMON)


def test_the_sample_gets_a_gpu_board_for_its_nvidia_llm_host(sample: HxpConfig) -> None:
    assert sorted(dashboards(sample)) == sorted([*COMMON, "hxp-gpus.json"])


def test_data_plane_boards_follow_their_sections(lab: HxpConfig) -> None:
    bare = lab.model_copy(update={"database": None, "cache": None, "vector_db": None})
    assert sorted(dashboards(bare)) == sorted(
        ["hxp-overview.json", "hxp-router.json", "hxp-vllm.json", "hxp-hosts.json"]
    )


def test_uids_are_unique_stable_and_name_the_file(lab: HxpConfig, sample: HxpConfig) -> None:
    first, again, other = dashboards(sample), dashboards(sample), dashboards(lab)
    uids = [board["uid"] for board in first.values()]
    assert len(set(uids)) == len(uids)
    assert all(name == f"{board['uid']}.json" for name, board in first.items())
    assert [b["uid"] for b in again.values()] == uids
    # Derived from the board's name only: the same board keeps its uid across deployments.
    assert all(other[name]["uid"] == first[name]["uid"] for name in other)
    assert all(len(uid) <= 40 for uid in uids)  # Grafana's limit


def test_dashboards_are_deterministic_json(sample: HxpConfig) -> None:
    assert dashboards(sample) == dashboards(sample)
    assert json.loads(json.dumps(dashboards(sample))) == dashboards(sample)


# --------------------------------------------------------------------------- panels


def test_every_panel_has_a_title_and_a_query(every_board: list[tuple[str, Board]]) -> None:
    for name, board in every_board:
        for panel in panels(board):
            if panel["type"] == "row":
                assert panel["title"], name
                continue
            assert panel.get("title"), f"{name}: a panel without a title"
            assert panel.get("targets"), f"{name}: {panel['title']} has no query"
            assert all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]


def test_panel_titles_and_ids_are_unique_within_a_board(
    every_board: list[tuple[str, Board]],
) -> None:
    # The whole-stack test names an empty panel by its title.
    for name, board in every_board:
        titles = [p["title"] for p in panels(board)]
        ids = [p["id"] for p in panels(board)]
        assert len(set(titles)) == len(titles), name
        assert len(set(ids)) == len(ids), name


def test_the_datasource_is_referenced_by_uid(lab: HxpConfig) -> None:
    expected = {"type": "prometheus", "uid": "prom-1"}
    for board in dashboards(lab, datasource_uid="prom-1").values():
        for panel in panels(board):
            assert panel["datasource"] == expected
            assert all(t["datasource"] == expected for t in panel.get("targets", []))
        assert all(v["datasource"] == expected for v in board["templating"].get("list", []))


def test_the_overview_has_a_row_per_model_with_its_slo(sample: HxpConfig) -> None:
    board = dashboards(sample)["hxp-overview.json"]
    rows = [p for p in board["panels"] if p["type"] == "row"]
    assert [r["title"].split()[0] for r in rows] == [m.name for m in sample.models]
    for row, model in zip(rows, sample.models, strict=True):
        lines = {
            p["title"]: [s["value"] for s in p["fieldConfig"]["defaults"]["thresholds"]["steps"]]
            for p in row["panels"]
            if p["fieldConfig"]["defaults"].get("custom", {}).get("thresholdsStyle")
        }
        expected = [f"{model.name}: end-to-end latency"]
        if model.task == "generate":
            expected.append(f"{model.name}: time to first token and inter-token latency")
        assert sorted(lines) == sorted(expected)
        assert all(steps == [None, model.slo.latency_ms / 1000] for steps in lines.values())


def test_prefix_cache_panels_follow_the_engine_setting(lab: HxpConfig, sample: HxpConfig) -> None:
    # The lab's generating models run with enable_prefix_caching: false.
    def titles(cfg: HxpConfig) -> list[str]:
        return [t for b in dashboards(cfg).values() for t, _ in raw_queries(b)]

    assert not [t for t in titles(lab) if "prefix cache" in t.lower()]
    assert "phi3: prefix cache hit rate" in titles(sample)
    assert "Prefix cache hit rate" in titles(sample)
    assert "minilm: prefix cache hit rate" not in titles(sample)  # an embedding model


def test_the_response_cache_panel_follows_the_router_setting(lab: HxpConfig) -> None:
    router = lab.router.model_copy(
        update={"cache": lab.router.cache.model_copy(update={"enabled": False})}
    )
    off = lab.model_copy(update={"router": router})
    assert "Response cache hit ratio" in [
        t for t, _ in raw_queries(dashboards(lab)["hxp-router.json"])
    ]
    assert "Response cache hit ratio" not in [
        t for t, _ in raw_queries(dashboards(off)["hxp-router.json"])
    ]


# --------------------------------------------------------------------------- queries


def test_queries_have_balanced_brackets(every_board: list[tuple[str, Board]]) -> None:
    for name, board in every_board:
        for title, expr in raw_queries(board):
            assert balanced(expr), f"{name}: {title}: {expr}"


def test_every_metric_is_one_its_source_exports(every_board: list[tuple[str, Board]]) -> None:
    for name, board in every_board:
        for title, expr in raw_queries(board):
            used = metric_names(expr)
            assert used, f"{name}: {title}: no metric in {expr}"
            unknown = used - SOURCES[name]
            assert not unknown, f"{name}: {title}: {sorted(unknown)} not exported by its source"


def test_the_metric_name_extractor() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(a_bucket{x="y(z)"}[$__rate_interval])))'
        " / on (model) group_left b or vector(0)"
    )
    assert metric_names(expr) == {"a_bucket", "b"}


# The notes live outside the repository, so no install step brings them: where they are absent
# the test skips, in CI too (the prefix, see conftest.py).
@pytest.mark.skipif(
    not VLLM_NOTES.is_file(), reason=f"not obtainable here: {VLLM_NOTES} is not on this machine"
)
def test_vllm_metrics_are_the_measured_ones(every_board: list[tuple[str, Board]]) -> None:
    notes = VLLM_NOTES.read_text(encoding="utf-8")
    useful = notes.split("Useful:", 1)[1].split("\n- ", 1)[0]
    measured: set[str] = set()
    for token in re.findall(r"[a-z0-9_]+(?:/[a-z0-9_]+)?", useful):
        first, _, second = token.partition("/")
        if second:  # "prefix_cache_queries/hits_total"
            stem, _, suffix = second.partition("_")
            measured |= {f"{first}_{suffix}", f"{first.rsplit('_', 1)[0]}_{stem}_{suffix}"}
        else:
            measured.add(token)
    used = {
        re.sub(r"_(bucket|sum|count)$", "", name).removeprefix("vllm:")
        for _, board in every_board
        for _, expr in raw_queries(board)
        for name in metric_names(expr)
        if name.startswith("vllm:")
    }
    assert "gpu_cache_usage_perc" not in used
    assert used <= measured, sorted(used - measured)


def test_rates_use_the_rate_interval(every_board: list[tuple[str, Board]]) -> None:
    for name, board in every_board:
        for title, expr in raw_queries(board):
            ranges = re.findall(r"\[[^\]]*\]", _STRING.sub('""', expr))
            assert all(r == "[$__rate_interval]" for r in ranges), f"{name}: {title}: {expr}"


def test_quantiles_come_from_summed_bucket_rates(every_board: list[tuple[str, Board]]) -> None:
    quantile = re.compile(
        r"histogram_quantile\(0\.\d+, sum by \(le(, \w+)?\) \(rate\([\w:]+_bucket[{\[]"
    )
    for name, board in every_board:
        for title, expr in raw_queries(board):
            buckets = expr.count("_bucket")
            assert buckets == len(quantile.findall(expr)), f"{name}: {title}: {expr}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_queries_parse_as_promql(every_board: list[tuple[str, Board]], tmp_path: Path) -> None:
    # promtool parses PromQL offline when it checks recording rules.
    rules = [
        {"record": f"hxp:panel_{n}", "expr": expr}
        for n, (_, expr) in enumerate(
            (title, expr)
            for _, board in every_board
            for title, expr in panel_queries(board, VARIABLES)
        )
    ]
    path = tmp_path / "panels.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


# --------------------------------------------------------------------------- variables


def test_template_variables_are_label_values_queries(sample: HxpConfig) -> None:
    boards = dashboards(sample)
    assert template_variables(boards["hxp-vllm.json"]) == {
        "model": 'label_values(up{service="vllm"}, model)'
    }
    assert template_variables(boards["hxp-hosts.json"]) == {
        "host": 'label_values(up{service="node"}, host)'
    }
    assert template_variables(boards["hxp-gpus.json"]) == {
        "host": 'label_values(up{service="gpu"}, host)'
    }
    assert template_variables(boards["hxp-overview.json"]) == {}


def test_panel_queries_substitute_every_variable(every_board: list[tuple[str, Board]]) -> None:
    for name, board in every_board:
        queries = panel_queries(board, {**VARIABLES, "unused": "x"})
        assert len(queries) == len(list(raw_queries(board))), name
        for title, expr in queries:
            assert "$" not in expr, f"{name}: {title}: {expr}"
    vllm = dict(every_board)["hxp-vllm.json"]
    assert any('model=~"phi3"' in expr for _, expr in panel_queries(vllm, VARIABLES))
    assert any(
        f"[{BUILTIN_VARIABLES['__rate_interval']}]" in e for _, e in panel_queries(vllm, VARIABLES)
    )


def test_panel_queries_name_a_variable_without_a_value(sample: HxpConfig) -> None:
    with pytest.raises(ValueError, match=r"\$model"):
        panel_queries(dashboards(sample)["hxp-vllm.json"], {"host": "h"})


# --------------------------------------------------------------------------- property


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_overview_rows_follow_the_models(sample: HxpConfig, data: st.DataObject) -> None:
    """Any subset of the sample's models, any SLOs: one row per model in order, its SLO line,
    and the same boards on every call."""
    models = [
        m.model_copy(
            update={"slo": Slo(latency_ms=data.draw(st.integers(1, 60_000)), throughput_rps=1)}
        )
        for m in sample.models
        if data.draw(st.booleans())
    ]
    cfg = sample.model_copy(update={"models": models})
    boards = dashboards(cfg)
    assert boards == dashboards(cfg)
    rows = [p for p in boards["hxp-overview.json"]["panels"] if p["type"] == "row"]
    assert [r["title"].split()[0] for r in rows] == [m.name for m in models]
    for row, model in zip(rows, models, strict=True):
        latency = next(p for p in row["panels"] if p["title"].endswith("end-to-end latency"))
        steps = latency["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[-1]["value"] == model.slo.latency_ms / 1000
