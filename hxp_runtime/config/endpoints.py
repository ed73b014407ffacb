"""Where a deployment's services run and listen: the host each one resolves to and every
(host, port) it takes. The rules check these; the renderer opens the firewall for them."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from hxp_runtime.config.schema import SPARE_PORT_OFFSET, Host, HostGroup, HxpConfig, Service
from hxp_runtime.yamlsource import PathKey

MAX_PORT = 65535
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


def resolve_host(cfg: HxpConfig, wanted: str | None, group: HostGroup) -> str | None:
    """The host a service runs on: the one named, or the only host in its group."""
    if wanted is not None:
        return wanted
    members = cfg.hosts_in(group)
    return members[0].name if len(members) == 1 else None


def router_hosts(cfg: HxpConfig) -> list[str]:
    """The hosts a router runs on: router.hosts (behind router.virtual_address), else
    router.host or the only llm host; none when that cannot be resolved (a rule says why)."""
    if cfg.router.hosts is not None:
        return list(cfg.router.hosts)
    host = resolve_host(cfg, cfg.router.host, HostGroup.LLM)
    return [] if host is None else [host]


def router_address(cfg: HxpConfig) -> ipaddress.IPv4Address | None:
    """The address clients reach the router at: the virtual address, else its host's."""
    if cfg.router.virtual_address is not None:
        return cfg.router.virtual_address.address
    placed = _placed(cfg, next(iter(router_hosts(cfg)), None))
    return placed[1] if placed else None


def model_hosts(cfg: HxpConfig) -> dict[str, tuple[str, ...]]:
    """Each model -> the hosts of its replicas, in the order the router numbers its backends
    (name, name-2, ...): ``host`` (or the only llm host), every host of ``hosts``, for
    ``replicas: N`` the N llm hosts picked in hxp.yml's order of models, or for ``pipeline`` its
    head (the one server of a model split across hosts; :func:`engine_hosts` has every stage).

    A replicas: N model goes to the N llm hosts with the most free memory, where free memory is
    what hxp.yml states: the host's memory_gb (none given: nothing) less the memory_limit_gb of
    the servers already on it. Ties go to the host listed first, so the choice is the same on
    every run. Hosts whose memory_gb is given and cannot hold the model's memory_limit_gb are
    not picked; the planner checks the GPUs of the hosts picked. A model whose hosts cannot be
    resolved (a rule reports why) gets none.
    """
    llm_hosts = cfg.hosts_in(HostGroup.LLM)
    committed = {h.name: 0.0 for h in cfg.hosts}
    placed: dict[str, tuple[str, ...]] = {}
    # Named hosts commit their memory first: the picked replicas spread around them.
    for model in cfg.models:
        if model.replicas is None:
            if model.pipeline is not None:
                # The head alone serves; every stage's unit takes memory_limit_gb of its host.
                stages = tuple(model.pipeline.hosts)
                placed[model.name] = stages[:1]
            else:
                wanted: list[str | None] = (
                    list(model.hosts)
                    if model.hosts
                    else [resolve_host(cfg, model.host, HostGroup.LLM)]
                )
                placed[model.name] = stages = tuple(h for h in wanted if h is not None)
            for host in stages:
                if host in committed:
                    committed[host] += model.memory_limit_gb
    for model in cfg.models:
        if model.replicas is not None:
            picked = pick_replica_hosts(llm_hosts, committed, model.memory_limit_gb, model.replicas)
            placed[model.name] = picked
            for host in picked:
                committed[host] += model.memory_limit_gb
    return {m.name: placed[m.name] for m in cfg.models}


def engine_hosts(cfg: HxpConfig) -> dict[str, tuple[str, ...]]:
    """Each model -> every host that runs a process of its engine: its replicas' hosts, or for a
    model split across hosts (``pipeline``) all of its stages' hosts, the head first. Its
    servers, the router's backends, are :func:`model_hosts`."""
    servers = model_hosts(cfg)
    return {
        m.name: tuple(m.pipeline.hosts) if m.pipeline is not None else servers[m.name]
        for m in cfg.models
    }


def pick_replica_hosts(
    hosts: list[Host], committed: dict[str, float], need_gb: float, count: int
) -> tuple[str, ...]:
    """``count`` distinct hosts with room for ``need_gb``, the most free memory first (the
    host listed first on a tie); none when fewer than ``count`` have room."""

    def free(host: Host) -> float:
        return (host.memory_gb or 0.0) - committed[host.name]

    roomy = [h for h in hosts if h.memory_gb is None or free(h) >= need_gb]
    if len(roomy) < count:
        return ()
    ranked = sorted(enumerate(roomy), key=lambda pair: (-free(pair[1]), pair[0]))
    chosen = {h.name for _, h in ranked[:count]}
    # The router numbers the replicas in the hosts' order, whatever the memory said.
    return tuple(h.name for h in roomy if h.name in chosen)


def database_address(cfg: HxpConfig) -> tuple[str, ipaddress.IPv4Address] | None:
    """(host, address) the router connects to PostgreSQL at; None without a database host."""
    host = resolve_host(cfg, cfg.database.host, HostGroup.DATABASE) if cfg.database else None
    return _placed(cfg, host)


def cache_address(cfg: HxpConfig) -> tuple[str, ipaddress.IPv4Address] | None:
    """(host, address) Redis listens on and the routers connect to. The router is Redis's only
    client, so on the host of the only router Redis listens on loopback only: nothing off the
    host can reach it, whatever the firewall says."""
    host = resolve_host(cfg, cfg.cache.host, HostGroup.CACHE) if cfg.cache else None
    placed = _placed(cfg, host)
    # Routers on other hosts share it (rate limits, cache): then it listens on its address.
    if placed is not None and router_hosts(cfg) == [host]:
        return placed[0], LOOPBACK
    return placed


def _placed(cfg: HxpConfig, host: str | None) -> tuple[str, ipaddress.IPv4Address] | None:
    # A host name hxp.yml does not define is the rules' to report; here it has no address.
    found = [h for h in cfg.hosts if h.name == host]
    return (found[0].name, found[0].address) if found else None


def service_endpoints(cfg: HxpConfig) -> Iterator[tuple[str | None, int, str, PathKey]]:
    """Every (host, port) a deployment listens on, with a label and the field that sets it."""
    replicas = model_hosts(cfg)
    for i, model in enumerate(cfg.models):
        if model.pipeline is not None:
            yield (
                model.pipeline.hosts[0],
                model.pipeline.master_port,
                f"model {model.name}'s pipeline master port",
                ("models", i, "pipeline", "master_port"),
            )
        for model_host in replicas[model.name] or (None,):
            yield model_host, model.port, f"model {model.name}", ("models", i, "port")
            # The other version of a blue-green swap listens there, for a while or for good.
            if cfg.blue_green_wanted(model) and model.spare_port <= MAX_PORT:
                yield (
                    model_host,
                    model.spare_port,
                    f"model {model.name}'s blue-green spare port (port + {SPARE_PORT_OFFSET})",
                    ("models", i, "port"),
                )
    routers: list[str | None] = [*router_hosts(cfg)] or [None]
    for router_host in routers:
        yield router_host, cfg.router.port, "router", ("router", "port")
        # Loopback only, but a server on the host's address with the same port would clash.
        yield router_host, cfg.router.admin_port, "router admin API", ("router", "admin_port")
    if cfg.database:
        db = resolve_host(cfg, cfg.database.host, HostGroup.DATABASE)
        yield db, cfg.database.port, "postgresql", ("database", "port")
        yield db, cfg.database.exporter_port, "postgres exporter", ("database", "exporter_port")
    if cfg.vector_db:
        vec = resolve_host(cfg, cfg.vector_db.host, HostGroup.VECTOR)
        yield vec, cfg.vector_db.http_port, "qdrant http", ("vector_db", "http_port")
        yield vec, cfg.vector_db.grpc_port, "qdrant grpc", ("vector_db", "grpc_port")
    if cfg.cache:
        cache = resolve_host(cfg, cfg.cache.host, HostGroup.CACHE)
        yield cache, cfg.cache.port, "redis", ("cache", "port")
        yield cache, cfg.cache.exporter_port, "redis exporter", ("cache", "exporter_port")
    if cfg.metrics:
        mon = resolve_host(cfg, cfg.metrics.host, HostGroup.METRICS)
        m = cfg.metrics
        yield mon, m.prometheus_port, "prometheus", ("metrics", "prometheus_port")
        yield mon, m.alertmanager_port, "alertmanager", ("metrics", "alertmanager_port")
        yield mon, m.grafana_port, "grafana", ("metrics", "grafana_port")
        for host in cfg.hosts:
            yield (
                host.name,
                m.node_exporter_port,
                "node exporter",
                ("metrics", "node_exporter_port"),
            )
        for host in cfg.hosts_in(HostGroup.LLM):
            if host.accelerator == "nvidia":
                yield (
                    host.name,
                    m.gpu_exporter_port,
                    "gpu exporter",
                    (
                        "metrics",
                        "gpu_exporter_port",
                    ),
                )


def service_hosts(cfg: HxpConfig) -> dict[Service, list[str]]:
    """The hosts each deployed service runs on (vllm: the hosts of the models)."""
    placed: dict[Service, list[str | None]] = {
        Service.VLLM: [h for hosts in engine_hosts(cfg).values() for h in hosts],
        Service.ROUTER: [*router_hosts(cfg)],
        Service.GPU_EXPORTER: [
            h.name for h in cfg.hosts_in(HostGroup.LLM) if h.accelerator == "nvidia"
        ],
    }
    if cfg.database:
        db = resolve_host(cfg, cfg.database.host, HostGroup.DATABASE)
        placed[Service.POSTGRESQL] = placed[Service.POSTGRES_EXPORTER] = [db]
    if cfg.cache:
        cache = resolve_host(cfg, cfg.cache.host, HostGroup.CACHE)
        placed[Service.REDIS] = placed[Service.REDIS_EXPORTER] = [cache]
    if cfg.vector_db:
        placed[Service.QDRANT] = [resolve_host(cfg, cfg.vector_db.host, HostGroup.VECTOR)]
    if cfg.metrics:
        mon = resolve_host(cfg, cfg.metrics.host, HostGroup.METRICS)
        for service in (Service.PROMETHEUS, Service.ALERTMANAGER, Service.GRAFANA):
            placed[service] = [mon]
        placed[Service.NODE_EXPORTER] = [h.name for h in cfg.hosts]
    hosts = {
        service: list(dict.fromkeys(h for h in names if h is not None))
        for service, names in placed.items()
    }
    return {service: names for service, names in hosts.items() if names}
