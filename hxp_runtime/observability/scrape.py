"""What Prometheus scrapes: one job per kind of service, derived from hxp.yml.

Every target carries the labels ``host`` (the hxp host name) and ``service`` (the job name);
model servers also carry ``model`` (the hxp model name) and ``slot`` (blue or green). Alert rules
and dashboards select on these labels, so they are the contract between this module, alerts.py
and dashboards.py.

Model servers are not static targets: a blue-green swap moves a model from its port to its spare
port and back (role vllm, plugins/filter/hxp_vllm_slots.py), so Prometheus reads them from one
file_sd file per LLM host, which follows the slot records on that host. This module renders
what those files are made of (``vllm_targets``: every slot a server may live in) and the job
that reads them; the filter ``hxp_vllm_live_targets`` picks the live slot.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hxp_runtime.config import HostGroup, HxpConfig, resolve_host, router_hosts
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
# The model servers' targets, one file per LLM host (written by role prometheus from the slot
# records, and by role vllm when a swap switches the router). Prometheus watches them: a
# changed file takes effect without a reload.
FILE_SD_DIR = "/etc/prometheus/file_sd"
VLLM_JOB = "vllm"

Target = dict[str, Any]


def _target(address: str, port: int, host: str, **labels: str) -> Target:
    return {"targets": [f"{address}:{port}"], "labels": {"host": host, **labels}}


def _job(service: str, targets: list[Target], **options: Any) -> dict[str, Any]:
    for target in targets:
        target["labels"]["service"] = service
    return {"job_name": service, **options, "static_configs": targets}


def vllm_targets_file(host: str) -> str:
    """The file_sd file of the model servers on LLM host ``host``."""
    return f"{FILE_SD_DIR}/{VLLM_JOB}-{host}.json"


def vllm_targets(cfg: HxpConfig, plan: Plan) -> list[dict[str, Any]]:
    """Each model server as Prometheus may find it: its host and name (the key of its slot
    record), the address of each slot it may live in, and its labels. Slot green (the spare
    port) only where the model swaps blue-green, as the firewall admits it (flows.py)."""
    address = {h.name: str(h.address) for h in cfg.hosts}
    targets = []
    for inst in plan.instances:
        model = cfg.model(inst.model)
        slots = {"blue": f"{address[inst.host]}:{inst.port}"}
        if cfg.blue_green_wanted(model):
            slots["green"] = f"{address[inst.host]}:{model.spare_port}"
        targets.append(
            {
                "host": inst.host,
                "name": model.name,
                "slots": slots,
                "labels": {"host": inst.host, "service": VLLM_JOB, "model": model.name},
            }
        )
    return targets


def scraped_addresses(cfg: HxpConfig, plan: Plan) -> Iterator[tuple[str, str]]:
    """(job, "address:port") of every target Prometheus may scrape: each static target and
    every slot of each model server (the live one changes without a deploy)."""
    for job in scrape_configs(cfg, plan):
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                yield job["job_name"], target
    if cfg.metrics is not None:
        for server in vllm_targets(cfg, plan):
            for target in server["slots"].values():
                yield VLLM_JOB, target


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
    jobs.append({"job_name": VLLM_JOB, "file_sd_configs": [{"files": [vllm_targets_file("*")]}]})
    routers = router_hosts(cfg)
    if routers:
        https = (
            {"scheme": "https", "tls_config": {"ca_file": ROUTER_CERTIFICATE_FILE}}
            if cfg.router.tls is not None
            else {}
        )
        # Every router host at its own address: the one without the virtual address too.
        targets = [_target(address[host], cfg.router.port, host) for host in routers]
        jobs.append(_job("router", targets, **https))
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
