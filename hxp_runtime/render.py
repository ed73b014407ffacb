"""hxp.yml (validated) + plan -> an Ansible inventory directory.

The playbooks' only input is what this module writes:

    OUT/hosts.yml                    hosts, their addresses and groups
    OUT/group_vars/all/hxp.yml       deployment-wide variables, one block per role
    OUT/host_vars/HOST/hxp.yml       per-host variables (the vLLM instances of the plan)

Nothing from hxp.yml becomes code. Ansible evaluates every string of an inventory as a Jinja
template; the strings hxp.yml supplies are data, so each one that could start a template is
written with the ``!unsafe`` tag, which Ansible never evaluates. Secrets are written as
references, never as values: ``hxp_secret_refs`` maps each secret field of hxp.yml to its
reference (data), and the role variable holds one fixed expression that hands that reference to
the ``hxp_secret`` lookup plugin (plugins/lookup), which resolves it on the controller at run
time. Nothing here re-states a schema rule: the config has been validated before rendering.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from hxp_runtime.config import (
    HostGroup,
    HxpConfig,
    Metrics,
    SecretRef,
    ServiceTls,
    cache_address,
    database_address,
    format_path,
    plan_swaps,
    resolve_host,
    router_hosts,
    service_endpoints,
    walk_secret_refs,
)
from hxp_runtime.flows import firewall_settings, flow_matrix, host_sources, inbound
from hxp_runtime.observability.alerts import alert_rules, alertmanager_config
from hxp_runtime.observability.dashboards import dashboards
from hxp_runtime.observability.scrape import (
    QDRANT_KEY_FILE,
    ROUTER_CERTIFICATE_FILE,
    WEB_PASSWORD_FILE,
    scrape_configs,
    vllm_targets,
    vllm_targets_file,
)
from hxp_runtime.planner import Instance, Plan
from hxp_runtime.router.store import SCHEMA as ROUTER_SCHEMA

HEADER = "# Rendered by `hxp render` from {source}. Do not edit: edit hxp.yml and render again.\n"
Vars = dict[str, Any]


# Field paths of hxp.yml's schema (identifiers, dots, indices): safe inside the expression.
_SECRET_KEY = re.compile(r"^[A-Za-z0-9_.\[\]]+$")


class Expression(str):
    """A Jinja expression hxp writes itself, from constants only; the one kind of string in the
    inventory Ansible may evaluate."""


class _InventoryDumper(yaml.SafeDumper):
    """Writes hxp.yml's strings so that Ansible reads them as data, never as templates."""

    def ignore_aliases(self, data: object) -> bool:
        # A value used twice is written twice: an inventory reads better without anchors.
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    # Every Jinja delimiter ({{, {%, {#) starts with "{": a string without one is no template.
    if "{" in value:
        return dumper.represent_scalar("!unsafe", value, style='"')
    # Multi-line text (SQL, rules) reads as written; PyYAML quotes what a block cannot hold.
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_str(value)


def _represent_expression(dumper: yaml.SafeDumper, value: Expression) -> yaml.Node:
    return dumper.represent_str(str(value))


_InventoryDumper.add_representer(str, _represent_str)
_InventoryDumper.add_representer(Expression, _represent_expression)


def dump_inventory_yaml(data: Vars) -> str:
    return yaml.dump(
        data, Dumper=_InventoryDumper, sort_keys=False, default_flow_style=False, width=100
    )


def secret_refs(cfg: HxpConfig) -> dict[str, Vars]:
    """``hxp_secret_refs``: each secret field of hxp.yml (its path) -> its reference, as data."""
    return {
        format_path(path): {"scheme": ref.scheme.value, "value": ref.value}
        for path, ref in walk_secret_refs(cfg)
    }


def _secret(cfg: HxpConfig, ref: SecretRef | None, *, pem: bool = False) -> Expression | None:
    """The lookup of a secret field; ``pem``: a certificate or key, several lines."""
    if ref is None:
        return None
    key = next(format_path(path) for path, known in walk_secret_refs(cfg) if known is ref)
    if not _SECRET_KEY.match(key):
        raise ValueError(f"unexpected secret field path {key!r}")
    options = ", pem=true" if pem else ""
    return Expression(f"{{{{ lookup('hxp_secret', hxp_secret_refs['{key}']{options}) }}}}")


def _tls_pair(cfg: HxpConfig, tls: ServiceTls | None) -> dict[str, Expression | None]:
    """A server's certificate, key and CA (database.tls, cache.tls) as role variables."""
    return {
        "certificate": _secret(cfg, tls.certificate if tls else None, pem=True),
        "key": _secret(cfg, tls.key if tls else None, pem=True),
        "ca": _secret(cfg, tls.ca if tls else None, pem=True),
    }


def _address(cfg: HxpConfig, host: str | None) -> str | None:
    return str(cfg.host(host).address) if host else None


def common_vars(cfg: HxpConfig, plan: Plan) -> Vars:
    return {
        "hxp_deployment_name": cfg.name,
        "hxp_schema_version": cfg.version,
        "hxp_hosts": {h.name: str(h.address) for h in cfg.hosts},
        "hxp_secret_refs": secret_refs(cfg),
        # Absolute: ansible-runner does not run from where hxp.yml was given.
        "hxp_bundle_path": str((cfg.base_dir / cfg.bundle.path).resolve()) if cfg.bundle else None,
        # Role firewall: each host's share of the flow matrix is in its host_vars.
        "hxp_firewall_enabled": firewall_settings(cfg).enabled,
    }


def postgresql_vars(cfg: HxpConfig, plan: Plan) -> Vars:
    db = cfg.database
    if db is None:
        return {}
    tls = _tls_pair(cfg, db.tls)
    db_host = resolve_host(cfg, db.host, HostGroup.DATABASE)
    return {
        "hxp_postgresql_port": db.port,
        "hxp_postgresql_database": db.name,
        "hxp_postgresql_pool_size": db.pool_size,
        # Each router worker process opens its own pool.
        "hxp_postgresql_client_pools": cfg.router.workers,
        "hxp_postgresql_router_user": db.router_user,
        "hxp_postgresql_router_password": _secret(cfg, db.router_password),
        # The router's tables, as the router itself creates them at start-up: the role creates
        # them ahead, as the router's role, so that they are the router's.
        "hxp_postgresql_router_schema": ROUTER_SCHEMA,
        "hxp_postgresql_exporter_port": db.exporter_port,
        "hxp_postgresql_backup_dir": db.backup_dir,
        "hxp_postgresql_listen_address": _address(cfg, db_host),
        # Only the hosts the flow matrix sends to PostgreSQL (the router's), the same list the
        # firewall admits; the exporter and administration use the local socket.
        "hxp_postgresql_allowed_clients": (
            host_sources(flow_matrix(cfg, plan), db_host, db.port) if db_host else []
        ),
        # database.tls: ssl = on and pg_hba hostssl lines only (null: plain TCP).
        "hxp_postgresql_tls_certificate": tls["certificate"],
        "hxp_postgresql_tls_key": tls["key"],
    }


def redis_vars(cfg: HxpConfig, plan: Plan) -> Vars:
    cache = cfg.cache
    placed = cache_address(cfg)
    if cache is None:
        return {}
    tls = _tls_pair(cfg, cache.tls)
    return {
        "hxp_redis_port": cache.port,
        # Loopback on the router's host (its only client), else the cache host's address.
        "hxp_redis_bind_address": str(placed[1]) if placed else None,
        # Prometheus scrapes the exporter from the metrics host: it listens on the host address.
        "hxp_redis_exporter_address": _address(cfg, resolve_host(cfg, cache.host, HostGroup.CACHE)),
        # cache.tls: TLS only, no plain port (null: plain TCP).
        "hxp_redis_tls_certificate": tls["certificate"],
        "hxp_redis_tls_key": tls["key"],
        "hxp_redis_tls_ca": tls["ca"],
        "hxp_redis_password": _secret(cfg, cache.password),
        "hxp_redis_maxmemory_mb": cache.maxmemory_mb,
        "hxp_redis_maxmemory_policy": cache.maxmemory_policy,
        "hxp_redis_persistence": cache.persistence,
        "hxp_redis_exporter_port": cache.exporter_port,
    }


def qdrant_vars(cfg: HxpConfig, plan: Plan) -> Vars:
    vec = cfg.vector_db
    if vec is None:
        return {}
    return {
        "hxp_qdrant_http_port": vec.http_port,
        "hxp_qdrant_grpc_port": vec.grpc_port,
        "hxp_qdrant_bind_address": _address(cfg, resolve_host(cfg, vec.host, HostGroup.VECTOR)),
        "hxp_qdrant_api_key": _secret(cfg, vec.api_key),
        "hxp_qdrant_collections": [c.model_dump(mode="json") for c in vec.collections],
        "hxp_qdrant_snapshot_dir": vec.snapshot_dir,
        # Qdrant is installed only from the bundle's release archive. A lab (hxp.yml with a
        # `lab` section) without it gets everything but the binary; anywhere else it is an error.
        "hxp_qdrant_require_binary": cfg.lab is None,
    }


def _backends(cfg: HxpConfig, plan: Plan) -> list[Vars]:
    backends = []
    for inst in plan.instances:
        model = cfg.model(inst.model)
        backends.append(
            {
                "name": model.name,
                "served_name": model.routing_name,
                "aliases": model.aliases,
                "task": model.task,
                "url": f"http://{cfg.host(inst.host).address}:{inst.port}",
                "categories": model.categories,
                "slo": model.slo.model_dump(mode="json"),
            }
        )
    return backends


def router_vars(cfg: HxpConfig, plan: Plan) -> Vars:
    router = cfg.router
    settings = router.model_dump(
        mode="json",
        exclude={
            "api_keys", "upstream_api_key", "admin_key", "host", "hosts", "virtual_address", "tls"
        },
    )  # fmt: skip
    routers = router_hosts(cfg)
    # The gateway listens on its host's address (hxp_runtime.router.settings.RouterSettings);
    # behind a virtual address role router puts each host's own there, and adds the virtual one.
    settings["listen_host"] = _address(cfg, routers[0] if routers else None)
    settings["backends"] = _backends(cfg, plan)
    database, cache = database_address(cfg), cache_address(cfg)
    if cfg.database is not None:
        settings["database"] = {
            "host": str(database[1]) if database else None,
            "port": cfg.database.port,
            "name": cfg.database.name,
            "user": cfg.database.router_user,
            "pool_size": cfg.database.pool_size,
        }
    if cfg.cache is not None:
        settings["redis"] = {
            "host": str(cache[1]) if cache else None,
            "port": cfg.cache.port,
        }
    return {
        "hxp_router_settings": settings,
        # The hosts role router runs on, in hxp.yml's order: keepalived's priorities follow it.
        "hxp_router_hosts": routers,
        "hxp_router_virtual_address": (
            router.virtual_address.model_dump(mode="json") if router.virtual_address else None
        ),
        "hxp_router_api_keys": [
            {
                "name": key.name,
                "secret": _secret(cfg, key.secret),
                "requests_per_minute": key.requests_per_minute,
                "tokens_per_minute": key.tokens_per_minute,
            }
            for key in router.api_keys
        ],
        "hxp_router_upstream_api_key": _secret(cfg, router.upstream_api_key),
        # The role installs them and adds their paths to the settings (settings.tls).
        "hxp_router_tls_certificate": _secret(
            cfg, router.tls.certificate if router.tls else None, pem=True
        ),
        "hxp_router_tls_key": _secret(cfg, router.tls.key if router.tls else None, pem=True),
        "hxp_router_admin_key": _secret(cfg, router.admin_key),
        "hxp_router_database_password": _secret(
            cfg, cfg.database.router_password if cfg.database else None
        ),
        "hxp_router_redis_password": _secret(cfg, cfg.cache.password if cfg.cache else None),
        # The CAs the router verifies PostgreSQL and Redis with (database.tls, cache.tls); the
        # role installs them and adds their paths to the settings (database.ca_file, ...).
        "hxp_router_database_ca": _tls_pair(cfg, cfg.database.tls if cfg.database else None)["ca"],
        "hxp_router_redis_ca": _tls_pair(cfg, cfg.cache.tls if cfg.cache else None)["ca"],
    }


def metrics_vars(cfg: HxpConfig, plan: Plan) -> Vars:
    """Roles node_exporter (every host), prometheus, alertmanager and grafana (metrics host)."""
    m = cfg.metrics
    if m is None:
        return {"hxp_metrics_enabled": False}
    address = _address(cfg, resolve_host(cfg, m.host, HostGroup.METRICS))
    web_password = _secret(cfg, m.web_password)
    credentials = {Path(WEB_PASSWORD_FILE).name: web_password}
    if cfg.vector_db is not None:
        credentials[Path(QDRANT_KEY_FILE).name] = _secret(cfg, cfg.vector_db.api_key)
    if cfg.router.tls is not None:
        # Prometheus trusts the router's own certificate for its scrape (scrape.py).
        credentials[Path(ROUTER_CERTIFICATE_FILE).name] = _secret(
            cfg, cfg.router.tls.certificate, pem=True
        )
    return {
        "hxp_metrics_enabled": True,
        "hxp_node_exporter_port": m.node_exporter_port,
        "hxp_prometheus_port": m.prometheus_port,
        "hxp_prometheus_listen_address": address,
        "hxp_prometheus_retention_time": f"{m.retention_days}d",
        "hxp_prometheus_retention_size": (
            f"{round(m.retention_size_gb * 1024)}MB" if m.retention_size_gb else None
        ),
        "hxp_prometheus_scrape_interval_s": m.scrape_interval_s,
        "hxp_prometheus_evaluation_interval_s": m.scrape_interval_s,
        "hxp_prometheus_scrape_configs": scrape_configs(cfg, plan),
        # The model servers' targets: role prometheus writes each LLM host's file_sd file from
        # them and the slot records there (plugins/filter/hxp_vllm_slots.py).
        "hxp_prometheus_vllm_targets": [
            {**target, "file": vllm_targets_file(target["host"])}
            for target in vllm_targets(cfg, plan)
        ],
        "hxp_prometheus_rules": alert_rules(cfg),
        "hxp_prometheus_credentials": credentials,
        "hxp_prometheus_alertmanagers": [f"{address}:{m.alertmanager_port}"],
        "hxp_prometheus_web_user": m.web_user,
        "hxp_prometheus_web_password": web_password,
        "hxp_alertmanager_port": m.alertmanager_port,
        "hxp_alertmanager_listen_address": address,
        "hxp_alertmanager_config": alertmanager_config(cfg),
        "hxp_alertmanager_web_user": m.web_user,
        "hxp_alertmanager_web_password": web_password,
        "hxp_grafana_port": m.grafana_port,
        "hxp_grafana_listen_address": address,
        "hxp_grafana_admin_password": _secret(cfg, m.grafana_admin_password),
        "hxp_grafana_prometheus_url": f"http://{address}:{m.prometheus_port}",
        "hxp_grafana_prometheus_user": m.web_user,
        "hxp_grafana_prometheus_password": web_password,
        "hxp_grafana_dashboards": dashboards(cfg),
        "hxp_grafana_scrape_interval_s": m.scrape_interval_s,
        # Grafana is installed only from the bundle's release archive; a lab goes without it.
        "hxp_grafana_require_binary": cfg.lab is None,
    }


def rollout_vars(cfg: HxpConfig, plan: Plan) -> Vars:
    return {
        "hxp_vllm_rollout_batch_size": cfg.rollout.batch_size,
        "hxp_vllm_rollout_drain_deadline_s": cfg.rollout.drain_deadline_s,
        # A restarted server gets traffic again once a health check of every router worker saw
        # it: within one interval, a few to be safe on a loaded host.
        "hxp_vllm_rollout_readmit_timeout_s": math.ceil(
            3 * cfg.router.health_check.interval_s + 10
        ),
        # Changed servers are drained through the router's admin API, which needs its key, in
        # every router host: each keeps its own drains and settings (behind a virtual address,
        # one left out would keep sending a restarting server requests).
        "hxp_vllm_router_hosts": router_hosts(cfg) if cfg.router.admin_key is not None else [],
    }


def vllm_instance_vars(cfg: HxpConfig, inst: Instance) -> Vars:
    model = cfg.model(inst.model)
    engine = model.engine
    return {
        "name": model.name,
        "unit": model.unit_name,
        "served_name": model.routing_name,
        "aliases": model.aliases,
        "task": model.task,
        "port": inst.port,
        "spare_port": model.spare_port,
        "model_path": model.source.path,
        "model_artifact": model.source.artifact,
        "device": inst.device,
        "gpu_ids": list(inst.gpu_ids),
        "tensor_parallel_size": inst.tensor_parallel_size,
        "gpu_memory_utilization": inst.gpu_memory_utilization,
        "planned_gpu_memory_gib": round(inst.need_per_gpu_gib, 2),
        "kv_cache_bytes": int(inst.kv_gib * 2**30),
        "max_model_len": engine.max_model_len,
        "max_num_seqs": engine.max_num_seqs,
        "dtype": engine.dtype,
        "quantization": engine.quantization,
        "kv_cache_dtype": engine.kv_cache_dtype,
        "enable_prefix_caching": engine.enable_prefix_caching,
        "rope_scaling": (
            engine.rope_scaling.model_dump(mode="json", exclude_none=True)
            if engine.rope_scaling
            else None
        ),
        "extra_args": engine.extra_args,
        "memory_limit_gb": model.memory_limit_gb,
        "cpu_cores": model.cpu_cores,
        "start_order": inst.start_order,
        **_pipeline_vars(cfg, inst),
    }


def _pipeline_vars(cfg: HxpConfig, inst: Instance) -> Vars:
    """A pipeline stage's place in it: what vLLM's multi-node flags say (role vllm's unit), and
    for a worker the unit of its own. Nothing for a server of a whole model, whose vars stay as
    they were."""
    model = cfg.model(inst.model)
    if model.pipeline is None or inst.layers is None:
        return {}
    head = model.pipeline.hosts[0]
    stage = {
        "size": inst.pipeline_size,
        "rank": inst.pipeline_rank,
        "layers": list(inst.layers),
        "head": head,
        "master_address": str(cfg.host(head).address),
        "master_port": model.pipeline.master_port,
    }
    unit = {"unit": model.stage_unit_name(inst.pipeline_rank)} if inst.pipeline_rank else {}
    return {"pipeline": stage, **unit}


ROLE_VARS: tuple[Callable[[HxpConfig, Plan], Vars], ...] = (
    common_vars,
    postgresql_vars,
    redis_vars,
    qdrant_vars,
    router_vars,
    rollout_vars,
    metrics_vars,
)


def vllm_scrape_vars(cfg: HxpConfig, plan: Plan, host: str) -> Vars:
    """Where role vllm moves Prometheus's targets of this host's servers when a swap switches
    the router: the metrics host, its file_sd file for this host (null without a metrics host
    or without servers here), and the targets of this host's servers (scrape.py), as role
    prometheus has them."""
    monitor = resolve_host(cfg, cfg.metrics.host, HostGroup.METRICS) if cfg.metrics else None
    targets = [t for t in vllm_targets(cfg, plan) if t["host"] == host] if monitor else []
    return {
        "hxp_vllm_metrics_host": monitor,
        "hxp_vllm_scrape_targets_file": vllm_targets_file(host) if targets else None,
        "hxp_vllm_scrape_targets": targets,
    }


def inventory_hosts(cfg: HxpConfig) -> Vars:
    children: dict[str, Vars] = {}
    for group in HostGroup:
        members = cfg.hosts_in(group)
        if members:
            children[group.value] = {"hosts": {h.name: None for h in members}}
    hostvars = {
        h.name: {
            "ansible_host": str(h.address),
            "ansible_user": h.ssh_user,
            "ansible_port": h.ssh_port,
        }
        for h in cfg.hosts
    }
    return {"all": {"hosts": hostvars, "children": children}}


def host_vars(cfg: HxpConfig, plan: Plan, host: str) -> Vars:
    spec = cfg.host(host)
    instances = plan.for_host(host)
    backends = plan.backend_ids()
    swaps = plan_swaps(cfg, plan)
    return {
        "hxp_vllm_device": "cpu" if spec.accelerator == "cpu" else "cuda",
        "hxp_vllm_instances": [
            {
                **vllm_instance_vars(cfg, i),
                "backend": backends[i.host, i.port],
                # A new version starts beside the old (the planner says both fit) or in place.
                "blue_green": swaps[i.model].blue_green,
            }
            for i in instances
        ],
        **_pipeline_worker_vars(cfg, plan, host),
        **vllm_scrape_vars(cfg, plan, host),
        # The GPU exporter runs on every NVIDIA host, with or without a metrics section; without
        # one, its port is that field's default in the schema.
        "hxp_vllm_gpu_exporter_port": (
            cfg.metrics.gpu_exporter_port
            if cfg.metrics
            else Metrics.model_fields["gpu_exporter_port"].default
        ),
        # Every port an hxp service listens on here: role common reserves them, so that no
        # outgoing connection or port-0 bind takes one of them as its ephemeral port first.
        "hxp_host_listen_ports": sorted(
            {port for where, port, _, _ in service_endpoints(cfg) if where == host}
        ),
        # The flows of the matrix (hxp_runtime.flows) that end here: all role firewall admits.
        "hxp_firewall_inbound": inbound(flow_matrix(cfg, plan), host),
    }


def _pipeline_worker_vars(cfg: HxpConfig, plan: Plan, host: str) -> Vars:
    """The headless stages on ``host`` of models split across hosts (role vllm starts them
    before its servers); none: nothing, the role's default being an empty list."""
    workers = plan.workers_on(host)
    return (
        {"hxp_vllm_pipeline_workers": [vllm_instance_vars(cfg, w) for w in workers]}
        if workers
        else {}
    )


def inventory_files(cfg: HxpConfig, plan: Plan) -> dict[Path, Vars]:
    """What render hands the roles: each inventory file (relative to the inventory directory)
    and its data, before it is written as YAML."""
    files: dict[Path, Vars] = {Path("hosts.yml"): inventory_hosts(cfg)}
    group_all: Vars = {}
    for role_vars in ROLE_VARS:
        group_all.update(role_vars(cfg, plan))
    files[Path("group_vars", "all", "hxp.yml")] = group_all
    for host in cfg.hosts:
        files[Path("host_vars", host.name, "hxp.yml")] = host_vars(cfg, plan, host.name)
    return files


def render_inventory(cfg: HxpConfig, plan: Plan, out: Path, source: Path) -> list[Path]:
    """Write the inventory for ``cfg`` under ``out`` (replacing what hxp wrote there before)."""
    header = HEADER.format(source=source)
    files = {out / relative: data for relative, data in inventory_files(cfg, plan).items()}
    # Host vars of hosts that left the config go too; files hxp did not write stay.
    for old in out.glob("host_vars/*/hxp.yml"):
        if old not in files and old.read_text(encoding="utf-8").startswith(HEADER[:20]):
            old.unlink()
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + "---\n" + dump_inventory_yaml(data), encoding="utf-8")
    return list(files)
