"""What Prometheus scrapes: one job per kind of service, derived from hxp.yml.

Every target carries the labels ``host`` (the hxp host name) and ``service`` (the job name);
model servers also carry ``model`` (the hxp model name). Alert rules and dashboards select on
these labels, so they are the contract between this module, alerts.py and dashboards.py.
"""

from __future__ import annotations

from typing import Any

from hxp_runtime.config import HostGroup, HxpConfig, resolve_host
from hxp_runtime.planner import Plan

# Files the prometheus role writes on the metrics host (0640 root:prometheus), so that no
# credential is written into prometheus.yml itself.
CREDENTIALS_DIR = "/etc/prometheus/credentials"
WEB_PASSWORD_FILE = f"{CREDENTIALS_DIR}/web-password"
QDRANT_KEY_FILE = f"{CREDENTIALS_DIR}/qdrant-api-key"
# Not a secret, but installed the same way: the router's certificate (router.tls), which
# Prometheus trusts as it is (a certificate in the trust pool verifies itself), so that no CA
# has to be given to hxp besides the pair.
ROUTER_CERTIFICATE_FILE = f"{CREDENTIALS_DIR}/router-certificate.pem"

Target = dict[str, Any]


def _target(address: str, port: int, host: str, **labels: str) -> Target:
    return {"targets": [f"{address}:{port}"], "labels": {"host": host, **labels}}


def _job(service: str, targets: list[Target], **options: Any) -> dict[str, Any]:
    for target in targets:
        target["labels"]["service"] = service
    return {"job_name": service, **options, "static_configs": targets}


def scrape_configs(cfg: HxpConfig, plan: Plan) -> list[dict[str, Any]]:
    """Prometheus's scrape_configs for every exporter and /metrics endpoint of the deployment."""
    metrics = cfg.metrics
    if metrics is None:
        return []
    address = {h.name: str(h.address) for h in cfg.hosts}
    web_auth = {"basic_auth": {"username": metrics.web_user, "password_file": WEB_PASSWORD_FILE}}
    jobs = []
    monitor = resolve_host(cfg, metrics.host, HostGroup.METRICS)
    if monitor is not None:
        jobs.append(
            _job(
                "prometheus",
                [_target(address[monitor], metrics.prometheus_port, monitor)],
                **web_auth,
            )
        )
        jobs.append(
            _job(
                "alertmanager",
                [_target(address[monitor], metrics.alertmanager_port, monitor)],
                **web_auth,
            )
        )
    jobs.append(
        _job(
            "node",
            [_target(address[h.name], metrics.node_exporter_port, h.name) for h in cfg.hosts],
        )
    )
    jobs.append(
        _job(
            "vllm",
            [_target(address[i.host], i.port, i.host, model=i.model) for i in plan.instances],
        )
    )
    router_host = resolve_host(cfg, cfg.router.host, HostGroup.LLM)
    if router_host is not None:
        https = (
            {"scheme": "https", "tls_config": {"ca_file": ROUTER_CERTIFICATE_FILE}}
            if cfg.router.tls is not None
            else {}
        )
        jobs.append(
            _job("router", [_target(address[router_host], cfg.router.port, router_host)], **https)
        )
    gpu_hosts = [h for h in cfg.hosts_in(HostGroup.LLM) if h.accelerator == "nvidia"]
    if gpu_hosts:
        jobs.append(
            _job(
                "gpu",
                [_target(address[h.name], metrics.gpu_exporter_port, h.name) for h in gpu_hosts],
            )
        )
    if cfg.database is not None:
        db = resolve_host(cfg, cfg.database.host, HostGroup.DATABASE)
        if db is not None:
            jobs.append(_job("postgres", [_target(address[db], cfg.database.exporter_port, db)]))
    if cfg.cache is not None:
        cache = resolve_host(cfg, cfg.cache.host, HostGroup.CACHE)
        if cache is not None:
            jobs.append(_job("redis", [_target(address[cache], cfg.cache.exporter_port, cache)]))
    if cfg.vector_db is not None:
        vector = resolve_host(cfg, cfg.vector_db.host, HostGroup.VECTOR)
        if vector is not None:
            jobs.append(
                _job(
                    "qdrant",
                    [_target(address[vector], cfg.vector_db.http_port, vector)],
                    authorization={"type": "Bearer", "credentials_file": QDRANT_KEY_FILE},
                )
            )
    return jobs
