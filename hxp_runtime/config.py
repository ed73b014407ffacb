"""The one schema of an hxp deployment (hxp.yml) and its loader.

``load_config(path)`` parses the YAML, validates types (pydantic v2, ``extra="forbid"``), then
checks every rule that spans fields (names, host:port clashes, groups, references, secrets,
tensor parallelism, GPU fit). All problems are collected and raised together as one
:class:`ConfigError`, each naming the file, the line, the field path and what to do.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from hxp_runtime.catalog import PRESETS, merge_preset
from hxp_runtime.yamlsource import LineMap, PathKey, YamlSourceError, load_yaml

NAME_PATTERN = r"^[a-z0-9][a-z0-9.-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]
SqlName = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$", max_length=63)]
Port = Annotated[int, Field(ge=1, le=65535)]
PositiveFloat = Annotated[float, Field(gt=0)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- secrets


class SecretScheme(StrEnum):
    ENV = "env"  # environment variable on the controller at deploy time
    FILE = "file"  # file on the controller (absolute path)
    VAULT = "vault"  # Ansible variable, typically from an ansible-vault encrypted vars file


REFERENCE_HINT = (
    "give a secret reference instead of the value: env:VARIABLE, file:/absolute/path "
    "or vault:ansible_variable"
)
_SECRET_RE = re.compile(r"^(env|file|vault):(.+)$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SecretRef(Strict):
    """Where a secret lives. hxp.yml never holds a secret value itself."""

    scheme: SecretScheme
    value: str

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return data
        if not isinstance(data, str):
            raise ValueError(f"a secret reference must be a string; {REFERENCE_HINT}")
        match = _SECRET_RE.match(data)
        if not match:
            raise ValueError(f"plaintext secret is not allowed; {REFERENCE_HINT}")
        scheme, value = match.groups()
        if scheme == "env" and not _ENV_RE.match(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        if scheme == "file" and not value.startswith("/"):
            raise ValueError(f"secret file {value!r} must be an absolute path")
        if scheme == "vault" and not _ENV_RE.match(value):
            raise ValueError(f"{value!r} is not an Ansible variable name")
        return {"scheme": scheme, "value": value}

    def __str__(self) -> str:
        return f"{self.scheme.value}:{self.value}"

    def ansible_expression(self) -> str:
        """The Jinja expression Ansible evaluates on the controller to obtain the value."""
        if self.scheme is SecretScheme.ENV:
            return f"{{{{ lookup('ansible.builtin.env', '{self.value}') }}}}"
        if self.scheme is SecretScheme.FILE:
            return f"{{{{ lookup('ansible.builtin.file', '{self.value}') }}}}"
        return f"{{{{ {self.value} }}}}"


# --------------------------------------------------------------------------- hosts


class HostGroup(StrEnum):
    LLM = "llm"
    DATABASE = "database"
    VECTOR = "vector"
    METRICS = "metrics"
    CACHE = "cache"


class Gpu(Strict):
    index: Annotated[int, Field(ge=0)]
    name: str = "NVIDIA GPU"
    memory_gb: PositiveFloat = Field(description="GPU memory in GiB, as nvidia-smi reports it")


class Host(Strict):
    name: Name
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    ssh_user: str = "root"
    ssh_port: Port = 22
    groups: list[HostGroup] = Field(min_length=1)
    accelerator: Literal["nvidia", "cpu"] = "nvidia"
    gpus: list[Gpu] = Field(default_factory=list)

    def gpu_by_index(self) -> dict[int, Gpu]:
        return {gpu.index: gpu for gpu in self.gpus}


# --------------------------------------------------------------------------- models


class ModelSource(Strict):
    path: str | None = Field(None, description="model directory on the LLM host")
    artifact: str | None = Field(None, description="name of a model directory in the bundle")
    local_path: Path | None = Field(
        None, description="the same model's directory on the controller, read to size it"
    )
    hf_id: str | None = Field(None, description="where the weights come from; informational")

    @model_validator(mode="after")
    def _one_location(self) -> ModelSource:
        if self.path and self.artifact:
            raise ValueError("give source.path or source.artifact, not both")
        return self


class Architecture(Strict):
    """A declared model size, used when no config.json is at hand."""

    params_b: PositiveFloat = Field(description="parameters, in billions")
    num_layers: Annotated[int, Field(ge=1)]
    num_attention_heads: Annotated[int, Field(ge=1)]
    num_kv_heads: Annotated[int, Field(ge=1)]
    head_dim: Annotated[int, Field(ge=1)]
    max_position_embeddings: Annotated[int, Field(ge=1)] | None = None


Dtype = Literal["auto", "float16", "bfloat16", "float32"]
Quantization = Literal["awq", "gptq", "fp8", "int8", "bitsandbytes"]
KvCacheDtype = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"]
# Engine flags hxp sets itself; giving them again in extra_args would contradict the plan.
MANAGED_ENGINE_FLAGS = frozenset(
    {
        "--host",
        "--port",
        "--served-model-name",
        "--tensor-parallel-size",
        "--gpu-memory-utilization",
        "--max-model-len",
        "--max-num-seqs",
        "--dtype",
        "--quantization",
        "--kv-cache-dtype",
        "--api-key",
        "--hf-overrides",
    }
)


class RopeScaling(Strict):
    """Opt-in context extension (passed to vLLM as --hf-overrides): lets max_model_len exceed
    the model's max_position_embeddings, up to factor x original_max_position_embeddings."""

    rope_type: Literal["yarn", "dynamic", "linear", "longrope", "llama3"] = "yarn"
    factor: Annotated[float, Field(gt=1, le=64)]
    original_max_position_embeddings: Annotated[int, Field(ge=1)] | None = Field(
        None, description="defaults to the model's max_position_embeddings"
    )


class Engine(Strict):
    dtype: Dtype = "auto"
    quantization: Quantization | None = None
    tensor_parallel_size: Annotated[int, Field(ge=1)] | None = None
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] | None = None
    max_model_len: Annotated[int, Field(ge=16)] = 4096
    max_num_seqs: Annotated[int, Field(ge=1)] = 16
    kv_cache_dtype: KvCacheDtype = "auto"
    enable_prefix_caching: bool = True
    rope_scaling: RopeScaling | None = None
    extra_args: list[str] = Field(default_factory=list)

    @field_validator("extra_args")
    @classmethod
    def _no_managed_flags(cls, args: list[str]) -> list[str]:
        clashes = sorted({a.split("=", 1)[0] for a in args} & MANAGED_ENGINE_FLAGS)
        if clashes:
            raise ValueError(
                f"{', '.join(clashes)} is set by hxp from the model's own fields; "
                "set the field instead of passing the flag"
            )
        return args


class Slo(Strict):
    latency_ms: PositiveFloat
    throughput_rps: PositiveFloat


class Model(Strict):
    name: Name
    preset: str | None = None
    task: Literal["generate", "embed"] = "generate"
    served_name: str | None = None
    aliases: list[str] = Field(default_factory=list)
    host: str | None = Field(None, description="defaults to the only host in group llm")
    source: ModelSource = Field(default_factory=ModelSource)
    port: Port
    gpus: Literal["auto"] | Annotated[int, Field(ge=1)] | list[Annotated[int, Field(ge=0)]] = "auto"
    engine: Engine = Field(default_factory=Engine)
    architecture: Architecture | None = None
    memory_limit_gb: PositiveFloat
    cpu_cores: Annotated[int, Field(ge=1)]
    categories: list[str] = Field(default_factory=list)
    slo: Slo

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("preset") is None:
            return data
        preset = data["preset"]
        if preset not in PRESETS:
            raise ValueError(
                f"unknown preset {preset!r}; known presets: {', '.join(sorted(PRESETS))}"
            )
        return merge_preset(PRESETS[preset], data)

    @property
    def routing_name(self) -> str:
        return self.served_name or self.name

    @property
    def unit_name(self) -> str:
        return f"hxp-vllm-{self.name}"


# --------------------------------------------------------------------------- router


class Strategy(StrEnum):
    EXPLICIT = "explicit"
    HIERARCHICAL = "hierarchical"
    SEMANTIC = "semantic"
    ADAPTIVE = "adaptive"
    LEAST_OUTSTANDING = "least_outstanding"
    POWER_OF_TWO = "power_of_two"


class Category(Strict):
    description: str = ""
    examples: list[str] = Field(
        default_factory=list, description="prompts whose embeddings form the prototype"
    )
    keywords: list[str] = Field(default_factory=list)


class ApiKeyRef(Strict):
    name: Name
    secret: SecretRef
    requests_per_minute: Annotated[int, Field(ge=1)] | None = None
    tokens_per_minute: Annotated[int, Field(ge=1)] | None = None


class RateLimit(Strict):
    requests_per_minute: Annotated[int, Field(ge=1)] = 600
    tokens_per_minute: Annotated[int, Field(ge=1)] = 200_000


class ResponseCache(Strict):
    enabled: bool = False
    ttl_s: Annotated[int, Field(ge=1)] = 300


class HealthCheck(Strict):
    enabled: bool = True
    interval_s: PositiveFloat = 10
    timeout_s: PositiveFloat = 2


class CircuitBreaker(Strict):
    failure_threshold: Annotated[int, Field(ge=1)] = 5
    open_s: PositiveFloat = 30
    half_open_requests: Annotated[int, Field(ge=1)] = 1


class Retries(Strict):
    attempts: Annotated[int, Field(ge=0, le=10)] = 2
    backoff_ms: Annotated[int, Field(ge=0)] = 50


class Semantic(Strict):
    embedding_model: str | None = Field(None, description="a model with task: embed")
    temperature: PositiveFloat = 0.1


class RouterPolicy(Strict):
    """The router fields its daemon reads itself (hxp_runtime.router.settings extends them)."""

    port: Port = 8000
    workers: Annotated[int, Field(ge=1, le=64)] = 4
    timeout_s: PositiveFloat = 300
    drain_timeout_s: PositiveFloat = Field(30, description="SIGTERM: in-flight requests' grace")
    strategies: list[Strategy] = Field(
        default_factory=lambda: [Strategy.EXPLICIT, Strategy.LEAST_OUTSTANDING], min_length=1
    )
    default_model: str | None = None
    categories: dict[str, Category] = Field(default_factory=dict)
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    cache: ResponseCache = Field(default_factory=ResponseCache)
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    circuit_breaker: CircuitBreaker = Field(default_factory=CircuitBreaker)
    retries: Retries = Field(default_factory=Retries)
    semantic: Semantic = Field(default_factory=Semantic)
    decision_cache_size: Annotated[int, Field(ge=0)] = 4096
    slo: Slo = Field(default_factory=lambda: Slo(latency_ms=100, throughput_rps=1000))


class Router(RouterPolicy):
    host: str | None = None
    api_keys: list[ApiKeyRef] = Field(default_factory=list)
    upstream_api_key: SecretRef | None = Field(
        None, description="key the vLLM servers require (--api-key); health checks send it"
    )


# --------------------------------------------------------------------------- data plane


class Database(Strict):
    host: str | None = None
    port: Port = 5433
    name: SqlName = "citadel_ai"
    pool_size: Annotated[int, Field(ge=1, le=1000)] = 20
    router_user: SqlName = "hxp_router"
    router_password: SecretRef
    exporter_port: Port = 9187
    backup_dir: str = "/var/backups/hxp/postgresql"


class Distance(StrEnum):
    COSINE = "Cosine"
    DOT = "Dot"
    EUCLID = "Euclid"
    MANHATTAN = "Manhattan"


class Collection(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$", max_length=255)]
    vector_size: Annotated[int, Field(ge=1, le=65536)]
    distance: Distance = Distance.COSINE


class VectorDb(Strict):
    host: str | None = None
    http_port: Port = 6333
    grpc_port: Port = 6334
    prefer_grpc: bool = True
    api_key: SecretRef
    collections: list[Collection] = Field(default_factory=list)
    snapshot_dir: str = "/var/backups/hxp/qdrant"


class Cache(Strict):
    host: str | None = None
    port: Port = 6379
    password: SecretRef
    maxmemory_mb: Annotated[int, Field(ge=16)] = 1024
    maxmemory_policy: Literal["allkeys-lru", "allkeys-lfu", "volatile-lru", "volatile-lfu"] = (
        "allkeys-lru"
    )
    persistence: bool = False
    exporter_port: Port = 9121


class Metrics(Strict):
    host: str | None = None
    prometheus_port: Port = 9090
    alertmanager_port: Port = 9093
    grafana_port: Port = 3000
    scrape_interval_s: Annotated[int, Field(ge=1)] = 15
    health_check_interval_s: Annotated[int, Field(ge=1)] = 10
    retention_days: Annotated[int, Field(ge=1)] = 15
    grafana_admin_password: SecretRef
    node_exporter_port: Port = 9100
    gpu_exporter_port: Port = 9835


class Planner(Strict):
    placement: Literal["best-fit", "spread"] = "best-fit"
    max_gpu_utilization: Annotated[float, Field(gt=0, le=0.99)] = 0.92
    overhead_gb_per_gpu: Annotated[float, Field(ge=0)] = 2.0


class Bundle(Strict):
    path: Path = Field(description="bundle directory on the controller (holds manifest.json)")


class LabSettings(Strict):
    bridge: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,15}$")] = "hxpbr0"
    gateway: ipaddress.IPv4Interface = ipaddress.IPv4Interface("10.77.0.1/24")
    state_dir: Path = Path(".lab")
    apt_proxy_port: Port = 3142


# --------------------------------------------------------------------------- the deployment


class HxpConfig(Strict):
    version: Literal[1] = 1
    name: Name
    hosts: list[Host] = Field(min_length=1)
    models: list[Model] = Field(default_factory=list)
    router: Router = Field(default_factory=Router)
    database: Database | None = None
    vector_db: VectorDb | None = None
    cache: Cache | None = None
    metrics: Metrics | None = None
    planner: Planner = Field(default_factory=Planner)
    bundle: Bundle | None = None
    lab: LabSettings | None = None

    _source_file: Path | None = PrivateAttr(None)

    @property
    def base_dir(self) -> Path:
        """Directory relative paths in the file (source.local_path, bundle.path) start from."""
        return self._source_file.parent if self._source_file else Path.cwd()

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def hosts_in(self, group: HostGroup) -> list[Host]:
        return [h for h in self.hosts if group in h.groups]

    def model(self, name: str) -> Model:
        return next(m for m in self.models if m.name == name)

    def routing_index(self) -> dict[str, Model]:
        """Every name a client may ask for (model name, served name, alias) -> model."""
        index: dict[str, Model] = {}
        for model in self.models:
            for alias in (model.name, model.routing_name, *model.aliases):
                index.setdefault(alias, model)
        return index

    def secret_refs(self) -> list[SecretRef]:
        return list(_walk_secret_refs(self))


def _walk_secret_refs(node: Any) -> Iterator[SecretRef]:
    if isinstance(node, SecretRef):
        yield node
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _walk_secret_refs(getattr(node, name))
    elif isinstance(node, list | tuple):
        for item in node:
            yield from _walk_secret_refs(item)
    elif isinstance(node, dict):
        for item in node.values():
            yield from _walk_secret_refs(item)


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    path: PathKey
    message: str
    line: int | None = None

    @property
    def field(self) -> str:
        return format_path(self.path)


def format_path(path: PathKey) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(document)"


class ConfigError(Exception):
    """hxp.yml is unusable; ``errors`` lists every problem with its line."""

    def __init__(self, file: Path, errors: list[Problem]) -> None:
        self.file = file
        self.errors = errors
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.errors)
        head = f"{self.file}: {count} problem{'s' if count != 1 else ''}"
        lines = [head]
        for err in self.errors:
            where = f"{self.file}:{err.line}" if err.line else str(self.file)
            lines.append(f"  {where}: {err.field}: {err.message}")
        return "\n".join(lines)


def _pydantic_problems(exc: ValidationError, lines: LineMap) -> list[Problem]:
    by_path: dict[PathKey, list[str]] = {}
    inputs: dict[PathKey, Any] = {}
    for err in exc.errors(include_url=False):
        loc: PathKey = tuple(p for p in err["loc"] if not _is_union_tag(p))
        kind = err["type"]
        msg = err["msg"].removeprefix("Value error, ")
        if kind == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}; remove it or check its spelling"
        elif kind == "missing":
            msg = "required field is missing; add it"
        by_path.setdefault(loc, []).append(msg)
        inputs[loc] = err.get("input")
    problems = []
    for loc, messages in by_path.items():
        # A union (e.g. gpus: auto | count | ids) fails once per member: say it once.
        message = (
            messages[0]
            if len(messages) == 1
            else (
                f"{inputs[loc]!r} is not valid: "
                + "; or ".join(m[0].lower() + m[1:] for m in messages)
            )
        )
        problems.append(Problem(loc, message, lines.line_of(loc)))
    return problems


def _is_union_tag(part: str | int) -> bool:
    # pydantic inserts the member type into the location of union errors: "list[int]", "int"...
    return isinstance(part, str) and (
        part in {"literal['auto']", "int", "str", "dict", "list"}
        or "[" in part
        or part.startswith("function-")
        or part.startswith("constrained-")
    )


def load_config(
    file: Path,
    *,
    text: bytes | None = None,
    check_fit: bool = True,
    check_secrets: bool = False,
) -> HxpConfig:
    """Load and fully validate ``file``; raise ConfigError listing every problem.

    ``text`` is the file's content when it does not come from ``file`` (stdin); ``file`` then only
    names it in messages, and relative paths start from the working directory.
    ``check_fit`` runs the GPU planner as the last rule (a model that does not fit its GPUs is a
    configuration error). It reads model config.json files named by ``source.local_path``.
    ``check_secrets`` also requires every env: and file: secret reference to resolve on this
    machine (render and deploy need the values; validate does not).
    """
    try:
        data, lines = load_yaml(file, text=text)
    except YamlSourceError as exc:
        raise ConfigError(file, [Problem((), exc.message, exc.line)]) from None
    if not isinstance(data, dict):
        raise ConfigError(
            file, [Problem((), "the file must be a YAML mapping (keys: name, hosts, models...)", 1)]
        )
    # Top-level "x-" keys hold YAML anchors for reuse (as in Compose files); hxp ignores them.
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    try:
        cfg = HxpConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(file, _pydantic_problems(exc, lines)) from None
    cfg._source_file = file
    problems = list(cross_field_problems(cfg))
    if not problems and check_fit:
        from hxp_runtime.planner import PlanError, plan_deployment  # noqa: PLC0415 - cycle

        try:
            plan_deployment(cfg)
        except PlanError as exc:
            problems.extend(Problem(p.path, p.message) for p in exc.problems)
    if problems:
        raise ConfigError(
            file, [Problem(p.path, p.message, lines.line_of(p.path)) for p in problems]
        )
    return cfg


# --------------------------------------------------------------------------- cross-field rules


def _duplicates(items: list[tuple[str, PathKey]], what: str) -> Iterator[Problem]:
    seen: dict[str, PathKey] = {}
    for value, path in items:
        if value in seen:
            yield Problem(
                path,
                f"duplicate {what} {value!r} (first defined at {format_path(seen[value])}); "
                "names must be unique",
            )
        else:
            seen[value] = path


def resolve_host(cfg: HxpConfig, wanted: str | None, group: HostGroup) -> str | None:
    """The host a service runs on: the one named, or the only host in its group."""
    if wanted is not None:
        return wanted
    members = cfg.hosts_in(group)
    return members[0].name if len(members) == 1 else None


def _host_rule(
    cfg: HxpConfig, wanted: str | None, group: HostGroup, path: PathKey, what: str
) -> Iterator[Problem]:
    names = {h.name: h for h in cfg.hosts}
    if wanted is None:
        members = cfg.hosts_in(group)
        if len(members) != 1:
            found = ", ".join(h.name for h in members) or "none"
            yield Problem(
                path,
                f"{what} needs a host: {len(members)} hosts are in group {group.value!r} "
                f"({found}); set {format_path((*path, 'host'))}",
            )
        return
    if wanted not in names:
        yield Problem(
            (*path, "host"),
            f"host {wanted!r} is not defined; use one of: {', '.join(sorted(names))}",
        )
    elif group not in names[wanted].groups:
        yield Problem(
            (*path, "host"),
            f"host {wanted!r} is not in group {group.value!r}; add {group.value!r} to its groups "
            f"or place {what} on another host",
        )


def service_endpoints(cfg: HxpConfig) -> Iterator[tuple[str | None, int, str, PathKey]]:
    """Every (host, port) a deployment listens on, with a label and the field that sets it."""
    llm_host = resolve_host(cfg, cfg.router.host, HostGroup.LLM)
    for i, model in enumerate(cfg.models):
        yield (
            resolve_host(cfg, model.host, HostGroup.LLM),
            model.port,
            (f"model {model.name}"),
            ("models", i, "port"),
        )
    yield llm_host, cfg.router.port, "router", ("router", "port")
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


def cross_field_problems(cfg: HxpConfig) -> Iterator[Problem]:
    """Every rule that spans more than one field; yields all problems, never stops early."""
    yield from _duplicates(
        [(h.name, ("hosts", i, "name")) for i, h in enumerate(cfg.hosts)], "host name"
    )
    yield from _duplicates(
        [(str(h.address), ("hosts", i, "address")) for i, h in enumerate(cfg.hosts)],
        "host address",
    )
    for i, host in enumerate(cfg.hosts):
        yield from _duplicates(
            [(str(g.index), ("hosts", i, "gpus", j, "index")) for j, g in enumerate(host.gpus)],
            "GPU index",
        )
        if host.accelerator == "cpu" and host.gpus:
            yield Problem(
                ("hosts", i, "gpus"),
                "a host with accelerator: cpu declares GPUs; "
                "remove gpus or set accelerator: nvidia",
            )
    yield from _duplicates(
        [(m.name, ("models", i, "name")) for i, m in enumerate(cfg.models)], "model name"
    )
    routing: list[tuple[str, PathKey]] = []
    for i, m in enumerate(cfg.models):
        names: dict[str, PathKey] = {m.name: ("models", i, "name")}
        names.setdefault(m.routing_name, ("models", i, "served_name"))
        for j, alias in enumerate(m.aliases):
            names.setdefault(alias, ("models", i, "aliases", j))
        routing.extend(names.items())
    yield from _duplicates(routing, "model name or alias")
    yield from _duplicates(
        [(k.name, ("router", "api_keys", i, "name")) for i, k in enumerate(cfg.router.api_keys)],
        "API key name",
    )
    if cfg.vector_db:
        yield from _duplicates(
            [
                (c.name, ("vector_db", "collections", i, "name"))
                for i, c in enumerate(cfg.vector_db.collections)
            ],
            "collection name",
        )

    # Hosts and groups.
    for i, model in enumerate(cfg.models):
        yield from _host_rule(
            cfg, model.host, HostGroup.LLM, ("models", i), f"model {model.name!r}"
        )
    yield from _host_rule(cfg, cfg.router.host, HostGroup.LLM, ("router",), "the router")
    sections: list[tuple[str, Database | VectorDb | Cache | Metrics | None, HostGroup]] = [
        ("database", cfg.database, HostGroup.DATABASE),
        ("vector_db", cfg.vector_db, HostGroup.VECTOR),
        ("cache", cfg.cache, HostGroup.CACHE),
        ("metrics", cfg.metrics, HostGroup.METRICS),
    ]
    for key, section, group in sections:
        if section is not None:
            yield from _host_rule(cfg, section.host, group, (key,), key)

    # host:port clashes.
    taken: dict[tuple[str, int], str] = {}
    for on_host, port, label, path in service_endpoints(cfg):
        if on_host is None:
            continue
        if (on_host, port) in taken and taken[(on_host, port)] != label:
            yield Problem(
                path,
                f"port {port} on host {on_host!r} is already used by {taken[(on_host, port)]}; "
                "choose a free port",
            )
        taken.setdefault((on_host, port), label)

    # References to models.
    index = cfg.routing_index()
    known = ", ".join(sorted(index)) or "(no models defined)"
    for name, chain in cfg.router.fallbacks.items():
        if name not in index:
            yield Problem(
                ("router", "fallbacks", name),
                f"fallback for unknown model {name!r}; known: {known}",
            )
        for j, target in enumerate(chain):
            if target not in index:
                yield Problem(
                    ("router", "fallbacks", name, j),
                    f"fallback to unknown model {target!r}; known: {known}",
                )
            elif index.get(name) is index[target]:
                yield Problem(("router", "fallbacks", name, j), f"{target!r} falls back to itself")
    if cfg.router.default_model is not None and cfg.router.default_model not in index:
        yield Problem(
            ("router", "default_model"),
            f"unknown model {cfg.router.default_model!r}; known: {known}",
        )
    for i, model in enumerate(cfg.models):
        for j, category in enumerate(model.categories):
            if cfg.router.categories and category not in cfg.router.categories:
                yield Problem(
                    ("models", i, "categories", j),
                    f"category {category!r} is not defined under router.categories; "
                    f"defined: {', '.join(sorted(cfg.router.categories))}",
                )
    semantic = cfg.router.semantic.embedding_model
    if semantic is not None and (semantic not in index or index[semantic].task != "embed"):
        yield Problem(
            ("router", "semantic", "embedding_model"),
            f"{semantic!r} is not a model with task: embed; define one or fix the name",
        )
    if Strategy.SEMANTIC in cfg.router.strategies and semantic is None:
        yield Problem(
            ("router", "strategies"),
            "strategy 'semantic' needs router.semantic.embedding_model (a model with task: embed)",
        )

    # GPUs and tensor parallelism.
    hosts = {h.name: h for h in cfg.hosts}
    for i, model in enumerate(cfg.models):
        llm_host = hosts.get(resolve_host(cfg, model.host, HostGroup.LLM) or "")
        if llm_host is None or HostGroup.LLM not in llm_host.groups:
            continue  # the host rule above already reported it
        yield from _gpu_rules(model, llm_host, ("models", i))


def _gpu_rules(model: Model, host: Host, path: PathKey) -> Iterator[Problem]:
    tp = model.engine.tensor_parallel_size
    if host.accelerator == "cpu":
        if isinstance(model.gpus, (list, int)):
            yield Problem(
                (*path, "gpus"),
                f"host {host.name!r} runs models on CPU (accelerator: cpu); remove gpus "
                "or use an nvidia host",
            )
        if tp not in (None, 1):
            yield Problem(
                (*path, "engine", "tensor_parallel_size"),
                f"host {host.name!r} has no GPUs; tensor_parallel_size must be 1",
            )
        return
    if not host.gpus:
        yield Problem(
            (*path, "host"),
            f"host {host.name!r} declares no GPUs; add hosts[].gpus or set accelerator: cpu",
        )
        return
    available = host.gpu_by_index()
    if isinstance(model.gpus, list):
        for j, gpu in enumerate(model.gpus):
            if gpu not in available:
                yield Problem(
                    (*path, "gpus", j),
                    f"GPU {gpu} does not exist on {host.name!r} (it has {sorted(available)})",
                )
        yield from _duplicates(
            [(str(g), (*path, "gpus", j)) for j, g in enumerate(model.gpus)], "GPU"
        )
        count = len(model.gpus)
    elif isinstance(model.gpus, int):
        count = model.gpus
        if count > len(available):
            yield Problem(
                (*path, "gpus"),
                f"asks for {count} GPUs but {host.name!r} has {len(available)}",
            )
    else:
        count = len(available)
    if tp is not None and tp > count:
        yield Problem(
            (*path, "engine", "tensor_parallel_size"),
            f"tensor_parallel_size {tp} exceeds the {count} GPUs available to the model; "
            "lower it or give the model more GPUs",
        )
