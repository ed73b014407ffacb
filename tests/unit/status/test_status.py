"""`hxp status`: the probe run as a host runs it (a python3 child with the script on stdin)
against local servers that answer as vLLM, the admin API and Prometheus; the targets derived
from hxp.yml; and the verdict (degraded reasons, expected entries) on the probe's answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hxp_runtime.config import HxpConfig, Service, load_config, plan_deployment
from hxp_runtime.status import probe
from hxp_runtime.status.collect import HostAnswer, run_probe, ssh_settings
from hxp_runtime.status.targets import (
    HostTarget,
    SecretUnavailable,
    host_targets,
    probe_params,
    secret_value,
)
from hxp_runtime.status.verdict import Verdict, judge
from tests.unit.status.conftest import (
    ADMIN_KEY,
    METRICS_AUTH,
    RUNNING,
    UPSTREAM_KEY,
    LocalHost,
)
from tests.unit.test_cli_contract import Hxp, lab_config_with_secrets

REPO = Path(__file__).resolve().parents[3]
TINY = """{params_b: 0.0001, num_layers: 2, num_attention_heads: 2, num_kv_heads: 2,
                   head_dim: 32, max_position_embeddings: 256}"""
CONFIG = f"""\
version: 1
name: unit-status
hosts:
  - {{name: llm-1, address: 10.0.0.10, groups: [llm], accelerator: cpu}}
  - {{name: vec-1, address: 10.0.0.12, groups: [vector]}}
  - {{name: mon-1, address: 10.0.0.13, groups: [metrics]}}
models:
  - name: hermes
    served_name: hermes-2
    port: 8101
    slo: {{latency_ms: 1000, throughput_rps: 10}}
    source: {{artifact: tiny-hermes}}
    architecture: {TINY}
    engine: {{dtype: float32, max_model_len: 256, max_num_seqs: 4}}
    memory_limit_gb: 3
    cpu_cores: 1
router:
  upstream_api_key: "file:SECRETS/upstream"
  admin_key: "file:SECRETS/admin"
vector_db:
  api_key: "file:SECRETS/qdrant"
metrics:
  grafana_admin_password: "file:SECRETS/grafana"
  web_password: "file:SECRETS/metrics"
"""
EXPECTED = """\
status:
  expected:
    - {service: qdrant, state: skipped, reason: "no Qdrant archive in this bundle"}
  expected_alerts:
    - {alert: QdrantDown, reason: "Qdrant does not run here"}
"""


@pytest.fixture
def config(tmp_path: Path) -> Callable[[str], HxpConfig]:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    values = {
        "upstream": UPSTREAM_KEY,
        "admin": ADMIN_KEY,
        "metrics": METRICS_AUTH[1],
        "qdrant": "qdrant-key-0123456789",
        "grafana": "grafana-password-0123",
    }
    for name, value in values.items():
        (secrets / name).write_text(value + "\n", encoding="utf-8")

    def load(extra: str = "") -> HxpConfig:
        path = tmp_path / "hxp.yml"
        path.write_text(CONFIG.replace("SECRETS", str(secrets)) + extra, encoding="utf-8")
        return load_config(path)

    return load


def units_running(monkeypatch: pytest.MonkeyPatch, cfg: HxpConfig, **states: Any) -> None:
    """Every unit of ``cfg`` running, but those in ``states`` (unit -> state)."""
    every = {u.unit: RUNNING for t in host_targets(cfg, plan_deployment(cfg)) for u in t.units}
    monkeypatch.setenv("UNITS_JSON", json.dumps({**every, **states}))


def survey_here(cfg: HxpConfig, local: LocalHost) -> Verdict:
    """The survey of ``cfg`` with every host played by this machine: each target's probe runs
    as `python3 -` and its URLs lead to the local server."""
    targets = host_targets(cfg, plan_deployment(cfg))
    answers = {}
    for target in targets:
        params = probe_params(cfg, target)
        params["skipped_dir"] = str(local.skipped_dir / target.name)
        for check in params["http"].values():
            path = "/" + check["url"].split("/", 3)[3]
            check["url"] = local.url + path
        answers[target.name] = run_probe(["python3", "-"], target.name, params)
    return judge(cfg, targets, answers)


def skip_marker(local: LocalHost, host: str, service: str, reason: str) -> None:
    (local.skipped_dir / host).mkdir(exist_ok=True)
    (local.skipped_dir / host / service).write_text(reason + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- the probe


def test_the_probe_reports_units_markers_and_http_answers(
    local_host: LocalHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNITS_JSON", json.dumps({"hxp-router": {**RUNNING, "restarts": 3}}))
    skip_marker(local_host, "h", "qdrant", "the bundle holds no artifact qdrant")
    params = {
        "units": ["hxp-router", "qdrant"],
        "skipped_dir": str(local_host.skipped_dir / "h"),
        "http": {
            "models": {
                "url": f"{local_host.url}/v1/models",
                "headers": {"Authorization": f"Bearer {UPSTREAM_KEY}"},
            },
            "wrong key": {"url": f"{local_host.url}/admin/backends"},
            "alerts": {"url": f"{local_host.url}/api/v1/alerts", "basic_auth": METRICS_AUTH},
            "closed port": {"url": "http://127.0.0.1:1/health"},
        },
    }
    answer = run_probe(["python3", "-"], "h", params)
    assert answer.error is None and answer.facts is not None
    facts = answer.facts
    assert facts["units"]["hxp-router"] == {
        "load": "loaded",
        "active": "active",
        "sub": "running",
        "since": RUNNING["since"],
        "restarts": 3,
    }
    assert facts["units"]["qdrant"]["load"] == "not-found"
    assert facts["units"]["qdrant"]["since"] is None
    assert facts["skipped"] == {"qdrant": "the bundle holds no artifact qdrant"}
    http = facts["http"]
    assert http["models"]["status"] == 200
    assert http["models"]["body"]["data"][0]["id"] == "hermes-2"
    assert http["wrong key"]["status"] == 401
    assert http["alerts"]["body"]["data"]["alerts"][0]["state"] == "firing"
    assert http["closed port"]["status"] is None
    assert "refused" in http["closed port"]["error"].lower()


def test_a_host_without_systemctl_reports_every_unit_as_an_error(
    local_host: LocalHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(local_host.skipped_dir))  # no systemctl there
    facts = probe.gather({"units": ["hxp-router"], "skipped_dir": "/nonexistent"})
    assert "systemctl show failed" in facts["units"]["hxp-router"]["error"]
    assert facts["skipped"] == {}


def test_a_probe_that_cannot_run_is_an_unreachable_host() -> None:
    answer = run_probe(["python3", "-c", "import sys; sys.exit('ssh: no route to host')"], "h", {})
    assert (answer.facts, answer.error) == (None, "unreachable: ssh: no route to host")


# --------------------------------------------------------------------------- targets


def test_targets_come_from_the_config_and_the_roles(config: Callable[[str], HxpConfig]) -> None:
    cfg = config()
    targets = {t.name: t for t in host_targets(cfg, plan_deployment(cfg))}
    assert [u.unit for u in targets["llm-1"].units] == [
        "hxp-router",
        "prometheus-node-exporter",
        "hxp-vllm-hermes",
    ]
    assert [u.unit for u in targets["vec-1"].units] == ["qdrant", "prometheus-node-exporter"]
    assert {u.service for u in targets["mon-1"].units} >= {Service.PROMETHEUS, Service.GRAFANA}
    assert targets["llm-1"].router_admin and not targets["mon-1"].router_admin
    assert targets["mon-1"].prometheus_url == "http://10.0.0.13:9090"
    params = probe_params(cfg, targets["llm-1"])
    assert params["skipped_dir"] == "/var/lib/hxp/skipped"  # where roles/bundle writes
    assert params["http"]["router:backends"]["headers"] == {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert params["http"]["models:hermes"]["url"].startswith("http://10.0.0.10:")


def test_the_lab_runs_postgresql_under_the_roles_cluster_name(tmp_path: Path) -> None:
    lab = tmp_path / "inventory/lab"
    lab.mkdir(parents=True)
    (lab / "hxp.yml").write_text(lab_config_with_secrets(tmp_path), encoding="utf-8")
    cfg = load_config(lab / "hxp.yml")
    targets = {t.name: t for t in host_targets(cfg, plan_deployment(cfg))}
    db_units = [u.unit for u in targets["hx-postgres-server-01"].units]
    assert "postgresql@15-main" in db_units
    llm_units = {u.unit for u in targets["hx-llm-server-01"].units}
    assert {f"hxp-vllm-{m.name}" for m in cfg.models} <= llm_units


def test_secrets_are_read_on_the_controller(
    config: Callable[[str], HxpConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config()
    assert cfg.router.admin_key is not None
    assert secret_value(cfg.router.admin_key) == ADMIN_KEY  # the trailing newline stripped
    Path(cfg.router.admin_key.value).unlink()
    with pytest.raises(SecretUnavailable, match="No such file"):
        secret_value(cfg.router.admin_key)


def test_ssh_settings_are_ansibles(tmp_path: Path) -> None:
    lab = tmp_path / "lab.yml"
    lab.write_text(
        "all:\n  vars:\n    ansible_user: root\n    ansible_ssh_private_key_file: /k/id\n"
        "    ansible_ssh_common_args: -o StrictHostKeyChecking=no -o LogLevel=ERROR\n"
        "  hosts:\n    llm-1: {ansible_host: 10.9.0.10}\n",
        encoding="utf-8",
    )
    target = HostTarget("llm-1", "10.0.0.10", "hxp", 2222)
    command = ssh_settings(target, [lab]).command()
    assert command[-3:] == ["root@10.9.0.10", "python3", "-"]
    assert command[command.index("-p") : command.index("-p") + 2] == ["-p", "2222"]
    assert command[command.index("-i") : command.index("-i") + 2] == ["-i", "/k/id"]
    assert "StrictHostKeyChecking=no" in command
    plain = ssh_settings(target, []).command()
    assert plain[-3] == "hxp@10.0.0.10" and "-i" not in plain


# --------------------------------------------------------------------------- the verdict


def test_a_stopped_model_unit_and_its_backend_make_it_degraded(
    config: Callable[[str], HxpConfig], local_host: LocalHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(EXPECTED)
    stopped = {"load": "loaded", "active": "inactive", "sub": "dead", "since": 1764568012}
    units_running(monkeypatch, cfg, **{"hxp-vllm-hermes": stopped})
    skip_marker(local_host, "vec-1", "qdrant", "the bundle holds no artifact qdrant")
    verdict = survey_here(cfg, local_host)
    assert not verdict.healthy
    assert verdict.degraded == [
        "unit hxp-vllm-hermes on llm-1 is inactive (dead) since 2025-12-01 05:46:52 UTC",
        "backend hermes in the router: unhealthy, breaker open",
    ]
    assert verdict.expected == [
        "qdrant on vec-1 skipped: no Qdrant archive in this bundle",
        "alert QdrantDown (host=hx-vectordb-server-01) firing: Qdrant does not run here",
    ]
    hermes = verdict.as_json()["hosts"][0]["models"][0]
    assert hermes["ready"] and hermes["served"] == [
        {"id": "hermes-2", "root": "/var/lib/hxp/models/hermes"}
    ]
    assert verdict.backends is not None and verdict.backends["hermes"]["workers"]


def test_without_expectations_a_skipped_service_and_its_alert_are_degraded(
    config: Callable[[str], HxpConfig], local_host: LocalHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config()
    units_running(
        monkeypatch, cfg, qdrant={"load": "not-found", "active": "inactive", "sub": "dead"}
    )
    skip_marker(local_host, "vec-1", "qdrant", "the bundle holds no artifact qdrant")
    verdict = survey_here(cfg, local_host)
    assert verdict.expected == []
    assert verdict.degraded == [
        "backend hermes in the router: unhealthy, breaker open",
        "qdrant on vec-1 skipped by the deploy: the bundle holds no artifact qdrant",
        "unit qdrant on vec-1 is inactive (not installed) since never",
        "alert QdrantDown firing (host=hx-vectordb-server-01)",
    ]


def test_everything_up_is_healthy_and_pending_alerts_do_not_count(
    config: Callable[[str], HxpConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config()
    targets = host_targets(cfg, plan_deployment(cfg))
    running = {u.unit: RUNNING for t in targets for u in t.units}
    ok = {"status": 200, "error": None}
    models = {"data": [{"id": "hermes-2", "root": "/m/hermes"}]}
    backend = {"healthy": True, "breaker": "closed", "in_flight": 1, "draining": False}
    alerts = {"data": {"alerts": [{"labels": {"alertname": "X"}, "state": "pending"}]}}
    facts: dict[str, dict[str, Any]] = {
        "llm-1": {
            "health:hermes": {**ok, "body": {}},
            "models:hermes": {**ok, "body": models},
            "router:backends": {**ok, "body": {"backends": {"hermes": backend}}},
        },
        "vec-1": {},
        "mon-1": {"prometheus:alerts": {**ok, "body": alerts}},
    }
    answers = {
        name: HostAnswer(name, {"units": running, "skipped": {}, "http": http}, None, 0.1)
        for name, http in facts.items()
    }
    verdict = judge(cfg, targets, answers)
    assert verdict.healthy, verdict.degraded
    assert verdict.alerts is not None and verdict.alerts[0]["state"] == "pending"
    answers["vec-1"] = HostAnswer("vec-1", None, "unreachable: Connection timed out", 3.0)
    assert judge(cfg, targets, answers).degraded == [
        "host vec-1: unreachable: Connection timed out"
    ]
    drained = {"backends": {"hermes": {**backend, "draining": True}}}
    answers["vec-1"] = HostAnswer("vec-1", {"units": running, "http": {}}, None, 0.1)
    answers["llm-1"].facts["http"]["router:backends"]["body"] = drained  # type: ignore[index]
    answers["llm-1"].facts["http"]["models:hermes"]["body"] = {"data": []}  # type: ignore[index]
    assert judge(cfg, targets, answers).degraded == [
        "model hermes on llm-1 is not ready: /v1/models does not list hermes-2",
        "backend hermes in the router: draining",
    ]


# --------------------------------------------------------------------------- the command


def test_status_of_unreachable_hosts_is_degraded_in_the_envelope(
    config: Callable[[str], HxpConfig], tmp_path: Path, hxp: Hxp
) -> None:
    config()
    cfg_file = tmp_path / "hxp.yml"
    closed = tmp_path / "closed.yml"  # every host on a closed port of this machine
    closed.write_text("all:\n  vars: {ansible_host: 127.0.0.1, ansible_port: 1}\n")
    done = hxp("status", cfg_file, "--inventory", closed, "--json")
    envelope = done.envelope("status")
    problems = envelope["problems"]
    assert done.code == 1
    assert envelope["result"]["degraded"] == [p["message"] for p in problems]
    assert [h["reachable"] for h in envelope["result"]["hosts"]] == [False, False, False]
    assert [p["message"].split(":")[0] for p in problems] == [
        "host llm-1",
        "host vec-1",
        "host mon-1",
    ]
    assert all(p["kind"] == "status" and "unreachable" in p["message"] for p in problems)
    human = hxp("status", cfg_file, "--inventory", closed)
    assert human.code == 1 and "degraded (3 reasons above)" in human.stderr
    assert "unreachable" in human.stdout


def test_status_without_a_secret_it_needs_is_a_usage_error(
    config: Callable[[str], HxpConfig], tmp_path: Path, hxp: Hxp
) -> None:
    cfg = config()
    assert cfg.router.admin_key is not None
    Path(cfg.router.admin_key.value).unlink()
    done = hxp("status", tmp_path / "hxp.yml", "--json")
    [problem] = done.envelope("status")["problems"]
    assert done.code == 2 and "cannot read a secret status needs" in problem["message"]
