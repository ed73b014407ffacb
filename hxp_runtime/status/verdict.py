"""The hosts' answers against what the deployment expects: healthy, or every reason it is not.

Pure: no I/O, so each rule is tested on real answers of the probe. A service or alert that
status.expected / status.expected_alerts declares is listed as expected with its reason and
does not make the deployment degraded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hxp_runtime.config import ExpectedAlert, ExpectedService, HxpConfig, Service
from hxp_runtime.status.collect import HostAnswer
from hxp_runtime.status.targets import HostTarget, ModelTarget, UnitTarget

ROUTER_BACKENDS = "router:backends"
PROMETHEUS_ALERTS = "prometheus:alerts"


@dataclass
class Verdict:
    hosts: list[dict[str, Any]] = field(default_factory=list)
    backends: dict[str, Any] | None = None
    alerts: list[dict[str, Any]] | None = None
    degraded: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.degraded

    def as_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "degraded": self.degraded,
            "expected": self.expected,
            "hosts": self.hosts,
            "backends": self.backends,
            "alerts": self.alerts,
        }


def when(epoch_s: int | None) -> str:
    if not epoch_s:
        return "never"
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class Expectations:
    def __init__(self, cfg: HxpConfig) -> None:
        self.services = cfg.status.expected
        self.alerts = {a.alert: a for a in cfg.status.expected_alerts}

    def service(self, service: str, host: str) -> ExpectedService | None:
        return next(
            (e for e in self.services if e.service.value == service and e.host in (None, host)),
            None,
        )

    def alert(self, name: str) -> ExpectedAlert | None:
        return self.alerts.get(name)


def judge(cfg: HxpConfig, targets: list[HostTarget], answers: dict[str, HostAnswer]) -> Verdict:
    verdict = Verdict()
    expect = Expectations(cfg)
    noted: set[tuple[str, str]] = set()

    def off(service: str, host: str, problem: str) -> None:
        """A problem of ``service`` on ``host``: expected (once, with its reason) or degraded."""
        expected = expect.service(service, host)
        if expected is None:
            verdict.degraded.append(problem)
        elif (service, host) not in noted:
            noted.add((service, host))
            verdict.expected.append(f"{service} on {host} {expected.state}: {expected.reason}")

    for target in targets:
        answer = answers[target.name]
        entry: dict[str, Any] = {
            "name": target.name,
            "address": target.address,
            "reachable": answer.facts is not None,
            "error": answer.error,
            "seconds": answer.seconds,
        }
        verdict.hosts.append(entry)
        if answer.facts is None:
            verdict.degraded.append(f"host {target.name}: {answer.error}")
            continue
        facts = answer.facts
        http = facts.get("http") or {}
        entry["skipped"] = facts.get("skipped") or {}
        for service, reason in sorted(entry["skipped"].items()):
            off(service, target.name, f"{service} on {target.name} skipped by the deploy: {reason}")
        entry["units"] = [_unit(unit, facts, target.name, off) for unit in target.units]
        entry["models"] = [_model(model, http, target.name, off) for model in target.models]
        if ROUTER_BACKENDS in http:
            verdict.backends = _backends(cfg, target, http[ROUTER_BACKENDS], targets, off)
        if PROMETHEUS_ALERTS in http:
            verdict.alerts = _alerts(http[PROMETHEUS_ALERTS], target.name, expect, verdict)
    return verdict


def _unit(unit: UnitTarget, facts: dict[str, Any], host: str, off: Any) -> dict[str, Any]:
    state = (facts.get("units") or {}).get(unit.unit) or {"error": "not reported"}
    row = {"unit": unit.unit, "service": unit.service.value, "model": unit.model, **state}
    if state.get("error"):
        off(unit.service.value, host, f"unit {unit.unit} on {host}: {state['error']}")
    elif state.get("active") != "active":
        detail = "not installed" if state.get("load") == "not-found" else state.get("sub")
        off(
            unit.service.value,
            host,
            f"unit {unit.unit} on {host} is {state.get('active')} ({detail}) "
            f"since {when(state.get('since'))}",
        )
    return row


def _problem(answer: dict[str, Any] | None) -> str | None:
    if answer is None:
        return "not asked"
    if answer.get("error"):
        return str(answer["error"])
    if answer.get("status") != 200:
        return f"HTTP {answer.get('status')}"
    return None


def _model(model: ModelTarget, http: dict[str, Any], host: str, off: Any) -> dict[str, Any]:
    health, listing = http.get(f"health:{model.model}"), http.get(f"models:{model.model}")
    served = []
    if listing and isinstance(listing.get("body"), dict):
        served = [
            {"id": m.get("id"), "root": m.get("root")}
            for m in listing["body"].get("data") or []
            if isinstance(m, dict)
        ]
    problem = _problem(health) and f"/health: {_problem(health)}"
    problem = problem or (_problem(listing) and f"/v1/models: {_problem(listing)}")
    if problem is None and model.served_name not in {m["id"] for m in served}:
        problem = f"/v1/models does not list {model.served_name}"
    if problem:
        off(Service.VLLM.value, host, f"model {model.model} on {host} is not ready: {problem}")
    return {
        "model": model.model,
        "backend": model.backend,
        "served_name": model.served_name,
        "artifact": model.artifact,
        "path": model.path,
        "url": model.url,
        "ready": problem is None,
        "problem": problem,
        "served": served,
    }


def _backends(
    cfg: HxpConfig,
    router: HostTarget,
    answer: dict[str, Any],
    targets: list[HostTarget],
    off: Any,
) -> dict[str, Any] | None:
    problem = _problem(answer)
    if problem:
        off(Service.ROUTER.value, router.name, f"router admin API on {router.name}: {problem}")
        return None
    backends: dict[str, Any] = (answer.get("body") or {}).get("backends") or {}
    # Each replica is a backend of its own (phi3, phi3-2...), on its own host.
    backend_host = {m.backend: t.name for t in targets for m in t.models}
    for backend, host in backend_host.items():
        if backend not in backends:
            off(Service.VLLM.value, host, f"backend {backend}: the router does not know it")
    for name, state in sorted(backends.items()):
        host = backend_host.get(name, router.name)
        issues = [
            *([] if state.get("healthy") else ["unhealthy"]),
            *([] if state.get("breaker") == "closed" else [f"breaker {state.get('breaker')}"]),
            *(["draining"] if state.get("draining") else []),
        ]
        if issues:
            off(Service.VLLM.value, host, f"backend {name} in the router: {', '.join(issues)}")
    return backends


def _alerts(
    answer: dict[str, Any], host: str, expect: Expectations, verdict: Verdict
) -> list[dict[str, Any]] | None:
    problem = _problem(answer)
    if problem:
        verdict.degraded.append(f"prometheus on {host}: /api/v1/alerts: {problem}")
        return None
    alerts = []
    for alert in ((answer.get("body") or {}).get("data") or {}).get("alerts") or []:
        labels = alert.get("labels") or {}
        name = str(labels.get("alertname", "?"))
        expected = expect.alert(name)
        alerts.append(
            {
                "alert": name,
                "state": alert.get("state"),
                "labels": labels,
                "active_at": alert.get("activeAt"),
                "expected": expected.reason if expected else None,
            }
        )
        if alert.get("state") != "firing":
            continue
        where = ", ".join(f"{k}={labels[k]}" for k in ("host", "model", "service") if k in labels)
        if expected:
            verdict.expected.append(f"alert {name} ({where}) firing: {expected.reason}")
        else:
            verdict.degraded.append(f"alert {name} firing ({where})")
    return alerts
