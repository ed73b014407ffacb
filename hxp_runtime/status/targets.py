"""What `hxp status` looks at on each host: derived from the validated config and its plan,
as `hxp render` derives what the roles install, so status never guesses a unit name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hxp_runtime.config import (
    HostGroup,
    HxpConfig,
    SecretRef,
    SecretScheme,
    Service,
    resolve_host,
    router_hosts,
    service_hosts,
)
from hxp_runtime.planner import Plan
from hxp_runtime.router.settings import ADMIN_HOST

ROLES = Path(__file__).resolve().parents[2] / "roles"
ROUTER_UNIT = "hxp-router"
# Units of one service each (vllm and postgresql are named per model and per cluster).
UNITS: dict[Service, str] = {
    Service.ROUTER: ROUTER_UNIT,
    Service.GPU_EXPORTER: "hxp-gpu-exporter",
    Service.POSTGRES_EXPORTER: "prometheus-postgres-exporter",
    Service.REDIS: "redis-server",
    Service.REDIS_EXPORTER: "prometheus-redis-exporter",
    Service.QDRANT: "qdrant",
    Service.PROMETHEUS: "prometheus",
    Service.ALERTMANAGER: "prometheus-alertmanager",
    Service.GRAFANA: "grafana-server",
    Service.NODE_EXPORTER: "prometheus-node-exporter",
}


class SecretUnavailable(Exception):
    """A secret status needs cannot be read on the controller."""


@dataclass(frozen=True)
class UnitTarget:
    service: Service
    unit: str
    model: str | None = None


@dataclass(frozen=True)
class ModelTarget:
    model: str
    served_name: str
    artifact: str | None
    path: str | None
    url: str
    backend: str  # its id in the router: the model's name, name-2... for further replicas


@dataclass
class HostTarget:
    name: str
    address: str
    ssh_user: str
    ssh_port: int
    units: list[UnitTarget] = field(default_factory=list)
    models: list[ModelTarget] = field(default_factory=list)
    router_admin: bool = False
    prometheus_url: str | None = None


def role_default(role: str, name: str) -> Any:
    """A role's default that hxp.yml does not set: read where the role defines it."""
    return yaml.safe_load((ROLES / role / "defaults/main.yml").read_text(encoding="utf-8"))[name]


def postgresql_unit() -> str:
    version = role_default("postgresql", "hxp_postgresql_version")
    return f"postgresql@{version}-{role_default('postgresql', 'hxp_postgresql_cluster')}"


def secret_value(ref: SecretRef) -> str:
    """The value of an env: or file: secret on the controller (as the hxp_secret lookup reads
    it); vault: secrets are Ansible's alone."""
    try:
        value = ref.controller_value()
    except OSError as exc:
        raise SecretUnavailable(f"{ref}: {exc.strerror}") from None
    except KeyError:
        value = ""
    if ref.scheme is SecretScheme.VAULT:
        raise SecretUnavailable(f"{ref}: a vault: secret is read by Ansible only")
    if value is None or (ref.scheme is SecretScheme.ENV and not value):
        raise SecretUnavailable(f"{ref}: the environment variable is not set")
    return value


def host_targets(cfg: HxpConfig, plan: Plan) -> list[HostTarget]:
    hosts = {h.name: HostTarget(h.name, str(h.address), h.ssh_user, h.ssh_port) for h in cfg.hosts}
    for service, names in service_hosts(cfg).items():
        if service in UNITS:
            for name in names:
                hosts[name].units.append(UnitTarget(service, UNITS[service]))
        elif service is Service.POSTGRESQL:
            for name in names:
                hosts[name].units.append(UnitTarget(service, postgresql_unit()))
    backends = plan.backend_ids()
    for inst in plan.instances:
        model = cfg.model(inst.model)
        host = hosts[inst.host]
        host.units.append(UnitTarget(Service.VLLM, model.unit_name, model.name))
        host.models.append(
            ModelTarget(
                model.name,
                model.routing_name,
                model.source.artifact,
                model.source.path,
                f"http://{host.address}:{inst.port}",
                backends[inst.host, inst.port],
            )
        )
    # The headless stages of models split across hosts: a unit each, no API of their own.
    for worker in plan.workers:
        model = cfg.model(worker.model)
        unit = model.stage_unit_name(worker.pipeline_rank)
        hosts[worker.host].units.append(UnitTarget(Service.VLLM, unit, model.name))
    if cfg.router.admin_key is not None:
        for router_host in router_hosts(cfg):
            hosts[router_host].router_admin = True
    if cfg.metrics is not None:
        metrics_host = resolve_host(cfg, cfg.metrics.host, HostGroup.METRICS)
        if metrics_host is not None:
            address = hosts[metrics_host].address
            hosts[metrics_host].prometheus_url = f"http://{address}:{cfg.metrics.prometheus_port}"
    return list(hosts.values())


def probe_params(cfg: HxpConfig, target: HostTarget) -> dict[str, Any]:
    """The input of :func:`hxp_runtime.status.probe.gather` on ``target``; the secrets in it
    travel on the SSH connection's stdin only."""
    http: dict[str, Any] = {}
    upstream = cfg.router.upstream_api_key
    model_headers = {"Authorization": f"Bearer {secret_value(upstream)}"} if upstream else {}
    for model in target.models:
        http[f"health:{model.model}"] = {"url": f"{model.url}/health"}
        http[f"models:{model.model}"] = {"url": f"{model.url}/v1/models", "headers": model_headers}
    if target.router_admin and cfg.router.admin_key is not None:
        http["router:backends"] = {
            "url": f"http://{ADMIN_HOST}:{cfg.router.admin_port}/admin/backends",
            "headers": {"Authorization": f"Bearer {secret_value(cfg.router.admin_key)}"},
        }
    if target.prometheus_url and cfg.metrics is not None:
        http["prometheus:alerts"] = {
            "url": f"{target.prometheus_url}/api/v1/alerts",
            "basic_auth": [cfg.metrics.web_user, secret_value(cfg.metrics.web_password)],
        }
    return {
        "units": [u.unit for u in target.units],
        "skipped_dir": role_default("bundle", "hxp_bundle_skipped_dir"),
        "http": http,
    }
