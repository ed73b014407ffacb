"""The one schema of an hxp deployment (hxp.yml) and its loader.

``load_config(path)`` parses the YAML, validates types (pydantic v2, ``extra="forbid"``), then
checks every rule that spans fields (names, host:port clashes, groups, references, secrets,
tensor parallelism, GPU fit). All problems are collected and raised together as one
:class:`ConfigError`, each naming the file, the line, the field path and what to do.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from hxp_runtime.catalog import PRESETS, merge_preset
from hxp_runtime.host import gpu_exporter
from hxp_runtime.yamlsource import LineMap, PathKey, YamlSourceError, load_yaml

NAME_PATTERN = r"^[a-z0-9][a-z0-9.-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]
# Names pg_hba.conf or PostgreSQL give a meaning of their own: a database or login role named so
# would widen access (pg_hba's "all") or take over a built-in role.
_RESERVED_SQL_NAMES = frozenset(
    {"all", "sameuser", "samerole", "samegroup", "replication", "public", "postgres",
     "prometheus", "template0", "template1"}
)  # fmt: skip


def _not_reserved_sql(name: str) -> str:
    if name in _RESERVED_SQL_NAMES or name.startswith("pg_"):
        raise ValueError(
            f"{name!r} is reserved by PostgreSQL or pg_hba.conf (or used by the exporter); "
            "choose another name"
        )
    return name


SqlName = Annotated[
    str, Field(pattern=r"^[a-z_][a-z0-9_]*$", max_length=63), AfterValidator(_not_reserved_sql)
]
Port = Annotated[int, Field(ge=1, le=65535)]
PositiveFloat = Annotated[float, Field(gt=0)]

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_HOST_PATH_RE = re.compile(r"^/[A-Za-z0-9._/@+-]*\Z")
# Model names clients send (served names, aliases): what OpenAI-style ids are made of, and
# nothing systemd or a shell would read as a specifier, variable, quote or escape.
_MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*\Z")


def _one_line(value: str) -> str:
    # Such values end up in systemd units and environment files, which are line oriented: a
    # newline there would start a directive of the attacker's choosing.
    if _CONTROL_CHARS.search(value):
        raise ValueError(
            "control characters (newline, tab, NUL...) are not allowed here: the value is "
            "written into unit and configuration files; remove them"
        )
    return value


def _host_path(value: str) -> str:
    if not _HOST_PATH_RE.match(value) or "/../" in f"{value}/":
        raise ValueError(
            "must be an absolute path on the host made of letters, digits and . _ - / @ + "
            "(no spaces, quotes or '..'), e.g. /srv/models/phi-3-mini"
        )
    return value


def _model_id(value: str) -> str:
    if not _MODEL_ID_RE.match(value):
        raise ValueError(
            "a model name clients use is made of letters, digits and . _ : / @ + - (no spaces, "
            "quotes, $, % or backslashes), e.g. mistralai/Mixtral-8x7B-Instruct-v0.1"
        )
    return value


def _no_backslash(value: str) -> str:
    # systemd unquotes ExecStart itself and reads a backslash as an escape even inside quotes.
    if "\\" in value:
        raise ValueError("backslashes are not allowed in engine arguments; remove them")
    return value


# Any string that reaches a host's files: one line, bounded.
Text = Annotated[str, Field(max_length=1024), AfterValidator(_one_line)]
ModelId = Annotated[str, Field(max_length=256), AfterValidator(_model_id)]
EngineArg = Annotated[Text, AfterValidator(_no_backslash)]
HostPath = Annotated[str, Field(max_length=4096), AfterValidator(_host_path)]
UserName = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")]


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
_SECRET_RE = re.compile(r"^(env|file|vault):(.+)\Z", re.DOTALL)
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


class SecretRef(Strict):
    """Where a secret lives. hxp.yml never holds a secret value itself.

    Written as ``scheme:value`` or as a mapping ``{scheme: ..., value: ...}``; both forms go
    through the same checks, and no message ever repeats what was given (it may be a value
    pasted in by mistake).
    """

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
        return {"scheme": scheme, "value": value}

    @model_validator(mode="after")
    def _check_value(self) -> SecretRef:
        if self.scheme is SecretScheme.ENV and not _ENV_RE.match(self.value):
            raise ValueError(
                "after env: comes an environment variable name (letters, digits, _; "
                f"not starting with a digit); {REFERENCE_HINT}"
            )
        if self.scheme is SecretScheme.FILE and (
            not self.value.startswith("/") or "\x00" in self.value
        ):
            raise ValueError("after file: comes an absolute path (starting with /)")
        if self.scheme is SecretScheme.VAULT and not _ENV_RE.match(self.value):
            raise ValueError(
                "after vault: comes an Ansible variable name (letters, digits, _; "
                "not starting with a digit)"
            )
        return self

    def __str__(self) -> str:
        return f"{self.scheme.value}:{self.value}"

    def unresolvable(self) -> str | None:
        """Why this reference cannot be resolved on this machine now, or None.

        vault: references are resolved by Ansible from the vault files of the run and are not
        checked here.
        """
        if self.scheme is SecretScheme.ENV:
            if not os.environ.get(self.value):
                return (
                    f"the environment variable {self.value} is not set (or empty) on this "
                    "machine; export it before rendering or deploying, or change the reference"
                )
        elif self.scheme is SecretScheme.FILE:
            path = Path(self.value)
            if not path.is_file():
                return (
                    f"the secret file {self.value!r} does not exist; create it (mode 0600) "
                    "or change the reference"
                )
            if not os.access(path, os.R_OK):
                return f"the secret file {self.value!r} is not readable by this user"
        return None


# --------------------------------------------------------------------------- hosts


class HostGroup(StrEnum):
    LLM = "llm"
    DATABASE = "database"
    VECTOR = "vector"
    METRICS = "metrics"
    CACHE = "cache"


class Gpu(Strict):
    index: Annotated[int, Field(ge=0)]
    name: Text = "NVIDIA GPU"
    memory_gb: PositiveFloat = Field(description="GPU memory in GiB, as nvidia-smi reports it")


class Host(Strict):
    name: Name
    address: ipaddress.IPv4Address
    ssh_user: UserName = "root"
    ssh_port: Port = 22
    groups: list[HostGroup] = Field(min_length=1)
    accelerator: Literal["nvidia", "cpu"] = "nvidia"
    gpus: list[Gpu] = Field(default_factory=list)

    @field_validator("address", mode="before")
    @classmethod
    def _ipv4_only(cls, value: Any) -> Any:
        # IPv6 is refused rather than half supported: the lab, the firewall-free flows and the
        # URLs hxp writes (http://ADDRESS:PORT) are built and tested on IPv4 only.
        if isinstance(value, str):
            try:
                address = ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(
                    "not an IP address; give the host's IPv4 address, e.g. 192.0.2.10"
                ) from None
            if address.version == 6:
                raise ValueError(
                    "IPv6 host addresses are not supported; give the host's IPv4 address "
                    "(hxp's roles, URLs and lab are built and tested on IPv4)"
                )
        return value

    def gpu_by_index(self) -> dict[int, Gpu]:
        return {gpu.index: gpu for gpu in self.gpus}


# --------------------------------------------------------------------------- models


class ModelSource(Strict):
    path: HostPath | None = Field(None, description="model directory on the LLM host")
    artifact: Text | None = Field(None, description="name of a model directory in the bundle")
    local_path: Path | None = Field(
        None, description="the same model's directory on the controller, read to size it"
    )
    hf_id: Text | None = Field(None, description="where the weights come from; informational")

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
        "--config",
        "--runner",
        "--kv-cache-memory-bytes",
        "--enable-prefix-caching",
        "--no-enable-prefix-caching",
    }
)


class RopeScaling(Strict):
    """Opt-in context extension (passed to vLLM as --hf-overrides): lets max_model_len exceed
    the model's max_position_embeddings, up to factor x original_max_position_embeddings."""

    # llama3 and longrope need further fields (frequency factors) that hxp does not take yet.
    rope_type: Literal["yarn", "dynamic", "linear"] = "yarn"
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
    extra_args: list[EngineArg] = Field(default_factory=list)

    @field_validator("extra_args")
    @classmethod
    def _no_managed_flags(cls, args: list[str]) -> list[str]:
        # vLLM's parser reads --api_key as --api-key and --hf-overrides.x=... as --hf-overrides.
        given = {a.split("=", 1)[0].split(".", 1)[0].replace("_", "-") for a in args}
        clashes = sorted(given & MANAGED_ENGINE_FLAGS)
        if clashes:
            raise ValueError(
                f"{', '.join(clashes)} is set by hxp from the model's own fields; "
                "set the field instead of passing the flag"
            )
        return args


class Slo(Strict):
    latency_ms: PositiveFloat
    throughput_rps: PositiveFloat
    # Share of requests that must finish within latency_ms; alerts fire on its error budget.
    objective: Annotated[float, Field(ge=0.5, lt=1)] = 0.99


class Model(Strict):
    name: Name
    preset: str | None = None
    task: Literal["generate", "embed"] = "generate"
    served_name: ModelId | None = None
    aliases: list[ModelId] = Field(default_factory=list)
    host: str | None = Field(None, description="defaults to the only host in group llm")
    source: ModelSource = Field(default_factory=ModelSource)
    port: Port
    gpus: Literal["auto"] | Annotated[int, Field(ge=1)] | list[Annotated[int, Field(ge=0)]] = "auto"
    engine: Engine = Field(default_factory=Engine)
    architecture: Architecture | None = None
    memory_limit_gb: PositiveFloat
    cpu_cores: Annotated[int, Field(ge=1)]
    categories: list[Text] = Field(default_factory=list)
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
    keywords: list[Text] = Field(default_factory=list)

    @field_validator("keywords")
    @classmethod
    def _no_blank_keyword(cls, keywords: list[str]) -> list[str]:
        if any(not k.strip() for k in keywords):
            raise ValueError("a blank keyword matches every prompt; remove it")
        return keywords


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
    embedding_model: Text | None = Field(None, description="a model with task: embed")
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
    default_model: Text | None = None
    categories: dict[Text, Category] = Field(default_factory=dict)
    fallbacks: dict[Text, list[Text]] = Field(default_factory=dict)
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
    backup_dir: HostPath = "/var/backups/hxp/postgresql"


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
    snapshot_dir: HostPath = "/var/backups/hxp/qdrant"


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


class Receiver(Strict):
    """Where Alertmanager sends notifications: a webhook (Alertmanager's webhook format)."""

    name: Name
    webhook_url: Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2048)]
    send_resolved: bool = True

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name == "null":
            raise ValueError(
                "'null' is the receiver hxp routes info alerts to; choose another name"
            )
        return name


class Alerting(Strict):
    # No receiver: alerts are visible in Alertmanager and Grafana but sent nowhere.
    receivers: list[Receiver] = Field(default_factory=list)
    group_wait_s: Annotated[int, Field(ge=0, le=3600)] = 30
    group_interval_s: Annotated[int, Field(ge=1, le=86400)] = 300
    repeat_interval_s: Annotated[int, Field(ge=60, le=604800)] = 14400


class Metrics(Strict):
    host: str | None = None
    prometheus_port: Port = 9090
    alertmanager_port: Port = 9093
    grafana_port: Port = 3000
    scrape_interval_s: Annotated[int, Field(ge=1)] = 15
    health_check_interval_s: Annotated[int, Field(ge=1)] = 10
    retention_days: Annotated[int, Field(ge=1)] = 15
    retention_size_gb: PositiveFloat | None = Field(
        None, description="Prometheus deletes the oldest data beyond this size"
    )
    grafana_admin_password: SecretRef
    # Basic auth of Prometheus's and Alertmanager's web endpoints; Grafana's datasource uses it.
    web_user: Name = "hxp"
    web_password: SecretRef
    alerting: Alerting = Field(default_factory=Alerting)
    node_exporter_port: Port = 9100
    # One number: the exporter's own default, also what `hxp render` writes without metrics.
    gpu_exporter_port: Port = gpu_exporter.DEFAULT_PORT


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
        return [ref for _, ref in walk_secret_refs(self)]


def walk_secret_refs(node: Any, path: PathKey = ()) -> Iterator[tuple[PathKey, SecretRef]]:
    """Every secret reference under ``node`` with the path of its field."""
    if isinstance(node, SecretRef):
        yield path, node
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from walk_secret_refs(getattr(node, name), (*path, name))
    elif isinstance(node, list | tuple):
        for i, item in enumerate(node):
            yield from walk_secret_refs(item, (*path, i))
    elif isinstance(node, dict):
        for key, item in node.items():
            yield from walk_secret_refs(item, (*path, key))


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


def _pydantic_problems(
    exc: ValidationError, lines: LineMap, root: type[BaseModel] | None = None
) -> list[Problem]:
    """pydantic's errors of validating a document against ``root`` (default: HxpConfig), one
    problem per field, with its line."""
    root = root or HxpConfig
    by_path: dict[PathKey, list[str]] = {}
    inputs: dict[PathKey, Any] = {}
    for err in exc.errors(include_url=False):
        loc: PathKey = tuple(p for p in err["loc"] if not _is_union_tag(p))
        kind = err["type"]
        msg = err["msg"].removeprefix("Value error, ")
        if kind == "extra_forbidden":
            msg = _unknown_key_message(root, loc)
        elif kind == "missing":
            msg = "required field is missing; add it"
        by_path.setdefault(loc, []).append(msg)
        inputs[loc] = err.get("input")
    problems = []
    for loc, messages in by_path.items():
        # A union (e.g. gpus: auto | count | ids) fails once per member: say it once. What was
        # given is repeated only where it cannot be a secret pasted in by mistake.
        given = "it" if _schema_type_at(root, loc) is SecretRef else repr(inputs[loc])
        message = (
            messages[0]
            if len(messages) == 1
            else f"{given} is not valid: " + "; or ".join(m[0].lower() + m[1:] for m in messages)
        )
        problems.append(Problem(loc, message, lines.line_of(loc)))
    return problems


def _unknown_key_message(root: type[BaseModel], loc: PathKey) -> str:
    key = str(loc[-1])
    owner = _schema_type_at(root, loc[:-1])
    allowed = (
        sorted(owner.model_fields)
        if isinstance(owner, type) and issubclass(owner, BaseModel)
        else []
    )
    hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    text = f"unknown key {key!r}; "
    text += f"did you mean {hint[0]!r}?" if hint else "remove it or check its spelling"
    if allowed:
        text += f" (allowed here: {', '.join(allowed)})"
    return text


def _schema_type_at(root: type[BaseModel], path: PathKey) -> Any:
    """The schema type (a model class, or a list/dict type) of the field at ``path``."""
    node: Any = root
    for part in path:
        node = _unwrap(node)
        origin = get_origin(node)
        if isinstance(node, type) and issubclass(node, BaseModel) and isinstance(part, str):
            field = node.model_fields.get(part)
            if field is None:
                return None
            node = field.annotation
        elif origin is list and isinstance(part, int):
            node = get_args(node)[0]
        elif origin is dict:
            node = get_args(node)[1]
        else:
            return None
    return _unwrap(node)


def _unwrap(node: Any) -> Any:
    """Strip Annotated[...] and pick the structured member of an Optional or union."""
    while True:
        origin = get_origin(node)
        if origin is Annotated:
            node = get_args(node)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(node) if a is not type(None)]
            structured = [
                a
                for a in members
                if get_origin(a) in (list, dict)
                or (isinstance(a, type) and issubclass(a, BaseModel))
            ]
            node = (structured or members)[0]
        else:
            return node


def _is_union_tag(part: str | int) -> bool:
    # pydantic inserts the member type into the location of union errors: "list[int]", "int"...
    return isinstance(part, str) and (
        part in {"literal['auto']", "int", "str", "dict", "list"}
        or "[" in part
        or part.startswith("function-")
        or part.startswith("constrained-")
    )


# Top-level lists whose entries are validated one by one when some of them are invalid.
_ENTRY_LISTS = ("hosts", "models")
# Required top-level fields and a stand-in that lets the other rules run when they are invalid.
_STAND_INS: dict[str, Any] = {"name": "invalid-name"}


def _entry_names(entry: Any) -> set[str]:
    if not isinstance(entry, dict):
        return set()
    names = [entry.get("name"), entry.get("served_name")]
    aliases = entry.get("aliases")
    if isinstance(aliases, list):
        names.extend(aliases)
    return {n for n in names if isinstance(n, str)}


def _entry_groups(entry: Any) -> set[HostGroup]:
    """The groups a host entry names, or every group when they cannot be read."""
    wanted = entry.get("groups") if isinstance(entry, dict) else None
    known = {g.value for g in HostGroup}
    if isinstance(wanted, list) and all(isinstance(g, str) and g in known for g in wanted):
        return {HostGroup(g) for g in wanted}
    return set(HostGroup)


def _salvage(data: dict[str, Any], problems: list[Problem]) -> tuple[HxpConfig, Dropped] | None:
    """Leave out what failed validation, so the cross-field rules and the planner can check the
    rest; None when too little is left to check (hosts unusable)."""
    doc = dict(data)
    bad_entries: dict[str, set[int]] = {key: set() for key in _ENTRY_LISTS}
    for problem in problems:
        path = problem.path
        if not path:
            return None
        top = str(path[0])
        if top in _ENTRY_LISTS and len(path) >= 2 and isinstance(path[1], int):
            bad_entries[top].add(path[1])
        elif len(path) >= 2 and isinstance(doc.get(top), dict) and top not in _ENTRY_LISTS:
            section = dict(doc[top])
            section.pop(path[1], None)  # back to the field's default
            doc[top] = section
        elif top in _STAND_INS:
            doc[top] = _STAND_INS[top]
        else:
            doc.pop(top, None)
    names: set[str] = set()
    positions: dict[str, list[int]] = {}
    for key in _ENTRY_LISTS:
        entries = doc.get(key)
        if not isinstance(entries, list):
            continue
        positions[key] = [i for i in range(len(entries)) if i not in bad_entries[key]]
        for i in bad_entries[key]:
            names |= _entry_names(entries[i])
        doc[key] = [entries[i] for i in positions[key]]
    groups: set[HostGroup] = set()
    hosts = data.get("hosts")
    for i in bad_entries["hosts"]:
        groups |= _entry_groups(hosts[i] if isinstance(hosts, list) else None)
    all_models = "models" in data and "models" not in positions  # not a list at all
    dropped = Dropped(
        frozenset(names),
        frozenset(groups),
        models=bool(bad_entries["models"]) or all_models,
        all_models=all_models,
        positions=positions,
    )
    for _ in range(3):
        try:
            return HxpConfig.model_validate(doc), dropped
        except ValidationError as exc:
            # What still fails only fails because of what was left out: leave out its whole
            # section too, quietly (an entry list or the hosts cannot be left out).
            tops = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
            if tops & {"hosts", "name"} or not tops:
                return None
            for top in tops:
                if top in _ENTRY_LISTS:
                    return None
                doc.pop(top, None)
    return None


def load_config(
    file: Path,
    *,
    text: bytes | None = None,
    check_fit: bool = True,
    check_secrets: bool = False,
) -> HxpConfig:
    """Load and fully validate ``file``; raise ConfigError listing every problem.

    Every stage runs on what the stages before it found valid, so one pass reports the schema's,
    the cross-field rules' and the planner's problems together, without follow-on problems of
    entries that are already reported.
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
    problems: list[Problem] = []
    try:
        cfg = HxpConfig.model_validate(data)
        dropped = Dropped()
    except ValidationError as exc:
        problems = _pydantic_problems(exc, lines)
        salvaged = _salvage(data, problems)
        if salvaged is None:
            raise ConfigError(file, _with_lines(problems, lines)) from None
        cfg, dropped = salvaged
    cfg._source_file = file if text is None else None
    later = list(cross_field_problems(cfg, dropped))
    if check_secrets:
        later.extend(_secret_problems(cfg))
    if check_fit:
        later.extend(_plan_problems(cfg, later, dropped))
    problems.extend(Problem(dropped.original(p.path), p.message) for p in later)
    if problems:
        raise ConfigError(file, _with_lines(problems, lines))
    return cfg


def _with_lines(problems: list[Problem], lines: LineMap) -> list[Problem]:
    return [Problem(p.path, p.message, lines.line_of(p.path)) for p in problems]


def _secret_problems(cfg: HxpConfig) -> Iterator[Problem]:
    for path, ref in walk_secret_refs(cfg):
        reason = ref.unresolvable()
        if reason:
            yield Problem(path, f"secret reference {ref}: {reason}")


def _plan_problems(cfg: HxpConfig, found: list[Problem], dropped: Dropped) -> list[Problem]:
    """The planner's problems for the models no earlier rule found fault with."""
    from hxp_runtime.planner import PlanError, plan_deployment  # noqa: PLC0415 - cycle

    faulty_hosts = {
        cfg.hosts[p.path[1]].name
        for p in found
        if p.path[:1] == ("hosts",) and len(p.path) > 1 and isinstance(p.path[1], int)
    }
    known_hosts = {h.name for h in cfg.hosts}
    plannable: list[int] = []
    for i, model in enumerate(cfg.models):
        host = resolve_host(cfg, model.host, HostGroup.LLM)
        if (
            host in known_hosts
            and host not in faulty_hosts
            and not (model.host is None and HostGroup.LLM in dropped.groups)
            and not any(p.path[:2] == ("models", i) for p in found)
        ):
            plannable.append(i)
    subset = cfg.model_copy(update={"models": [cfg.models[i] for i in plannable]})
    subset._source_file = cfg._source_file
    try:
        plan_deployment(subset)
    except PlanError as exc:
        return [
            Problem(
                ("models", plannable[p.path[1]], *p.path[2:])
                if len(p.path) > 1 and isinstance(p.path[1], int)
                else p.path,
                p.message,
            )
            for p in exc.problems
        ]
    return []


# --------------------------------------------------------------------------- cross-field rules


def _duplicates(
    items: list[tuple[str, PathKey]],
    what: str,
    dropped: Dropped | None = None,
    already: Callable[[PathKey, PathKey], bool] = lambda first, again: False,
) -> Iterator[Problem]:
    """A problem for each repeated value, naming where it was first defined (in the file's
    positions); ``already`` says which pairs another rule reports."""
    seen: dict[str, PathKey] = {}
    original = dropped.original if dropped else (lambda path: path)
    for value, path in items:
        if value in seen:
            if not already(seen[value], path):
                yield Problem(
                    path,
                    f"duplicate {what} {value!r} (first defined at "
                    f"{format_path(original(seen[value]))}); names must be unique",
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
    cfg: HxpConfig, wanted: str | None, group: HostGroup, path: PathKey, what: str, dropped: Dropped
) -> Iterator[Problem]:
    names = {h.name: h for h in cfg.hosts}
    if (wanted is None and group in dropped.groups) or (
        wanted in dropped.names and wanted not in names
    ):
        return
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


@dataclass(frozen=True)
class Dropped:
    """What was left out of a config because it failed validation (its problems are reported
    already): the rules skip what would only repeat them."""

    names: frozenset[str] = frozenset()  # hosts, models, served names and aliases
    # Groups a left-out host may have been in: who is in them is not known.
    groups: frozenset[HostGroup] = frozenset()
    models: bool = False  # a model entry, or the whole list, was left out
    all_models: bool = False  # the whole models list was left out
    # Top-level list -> the file's position of each entry that was kept.
    positions: dict[str, list[int]] = field(default_factory=dict)

    def original(self, path: PathKey) -> PathKey:
        """``path`` in the config that was checked -> the same entry's path in the file."""
        if len(path) >= 2 and path[0] in self.positions and isinstance(path[1], int):
            return (path[0], self.positions[str(path[0])][path[1]], *path[2:])
        return path


def cross_field_problems(cfg: HxpConfig, dropped: Dropped = Dropped()) -> Iterator[Problem]:
    """Every rule that spans more than one field; yields all problems, never stops early."""
    dropped_names = dropped.names
    yield from _duplicates(
        [(h.name, ("hosts", i, "name")) for i, h in enumerate(cfg.hosts)], "host name", dropped
    )
    yield from _duplicates(
        [(str(h.address), ("hosts", i, "address")) for i, h in enumerate(cfg.hosts)],
        "host address",
        dropped,
    )
    for i, host in enumerate(cfg.hosts):
        yield from _duplicates(
            [(str(g.index), ("hosts", i, "gpus", j, "index")) for j, g in enumerate(host.gpus)],
            "GPU index",
            dropped,
        )
        if host.accelerator == "cpu" and host.gpus:
            yield Problem(
                ("hosts", i, "gpus"),
                "a host with accelerator: cpu declares GPUs; "
                "remove gpus or set accelerator: nvidia",
            )
    yield from _duplicates(
        [(m.name, ("models", i, "name")) for i, m in enumerate(cfg.models)], "model name", dropped
    )
    routing: list[tuple[str, PathKey]] = []
    for i, m in enumerate(cfg.models):
        names: dict[str, PathKey] = {m.name: ("models", i, "name")}
        names.setdefault(m.routing_name, ("models", i, "served_name"))
        for j, alias in enumerate(m.aliases):
            names.setdefault(alias, ("models", i, "aliases", j))
        routing.extend(names.items())
    # Two models of one name are reported above already.
    yield from _duplicates(
        routing,
        "model name or alias",
        dropped,
        lambda first, again: first[-1] == again[-1] == "name",
    )
    yield from _duplicates(
        [(k.name, ("router", "api_keys", i, "name")) for i, k in enumerate(cfg.router.api_keys)],
        "API key name",
    )
    if cfg.metrics:
        yield from _duplicates(
            [
                (r.name, ("metrics", "alerting", "receivers", i, "name"))
                for i, r in enumerate(cfg.metrics.alerting.receivers)
            ],
            "receiver name",
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
            cfg, model.host, HostGroup.LLM, ("models", i), f"model {model.name!r}", dropped
        )
    yield from _host_rule(cfg, cfg.router.host, HostGroup.LLM, ("router",), "the router", dropped)
    sections: list[tuple[str, Database | VectorDb | Cache | Metrics | None, HostGroup]] = [
        ("database", cfg.database, HostGroup.DATABASE),
        ("vector_db", cfg.vector_db, HostGroup.VECTOR),
        ("cache", cfg.cache, HostGroup.CACHE),
        ("metrics", cfg.metrics, HostGroup.METRICS),
    ]
    for key, section, group in sections:
        if section is not None:
            yield from _host_rule(cfg, section.host, group, (key,), key, dropped)

    # host:port clashes.
    taken: dict[tuple[str, int], str] = {}
    for on_host, port, label, path in service_endpoints(cfg):
        if on_host is None or _placed_among_dropped(cfg, path, dropped):
            continue
        if (on_host, port) in taken and taken[(on_host, port)] != label:
            yield Problem(
                path,
                f"port {port} on host {on_host!r} is already used by {taken[(on_host, port)]}; "
                "choose a free port",
            )
        taken.setdefault((on_host, port), label)

    # References to models. A name defined by an entry that failed validation is unknown here
    # but not missing: its entry's own problem is already reported.
    index = cfg.routing_index()
    known = ", ".join(sorted(index)) or "(no models defined)"

    def unknown(name: str) -> bool:
        return name not in index and name not in dropped_names and not dropped.all_models

    for name, chain in cfg.router.fallbacks.items():
        if unknown(name):
            yield Problem(
                ("router", "fallbacks", name),
                f"fallback for unknown model {name!r}; known: {known}",
            )
        for j, target in enumerate(chain):
            if unknown(target):
                yield Problem(
                    ("router", "fallbacks", name, j),
                    f"fallback to unknown model {target!r}; known: {known}",
                )
            elif target not in index:
                continue
            elif index.get(name) is index[target]:
                yield Problem(("router", "fallbacks", name, j), f"{target!r} falls back to itself")
            elif name in index and index[name].task != index[target].task:
                yield Problem(
                    ("router", "fallbacks", name, j),
                    f"{target!r} (task: {index[target].task}) cannot answer the requests "
                    f"{name!r} (task: {index[name].task}) gets; fall back to a model with "
                    f"task: {index[name].task}",
                )
    default = cfg.router.default_model
    if default is not None and unknown(default):
        yield Problem(("router", "default_model"), f"unknown model {default!r}; known: {known}")
    elif default in index and index[default].task != "generate":
        yield Problem(
            ("router", "default_model"),
            f"{default!r} is an embeddings model (task: embed) and cannot answer chat or "
            "completion requests; choose a model with task: generate",
        )
    served: set[str] = set()
    for i, model in enumerate(cfg.models):
        if model.task == "embed" and model.categories:
            yield Problem(
                ("models", i, "categories"),
                f"{model.name!r} is an embeddings model (task: embed) and cannot serve a "
                "routing category; remove its categories",
            )
            continue
        served.update(model.categories)
        for j, category in enumerate(model.categories):
            if cfg.router.categories and category not in cfg.router.categories:
                yield Problem(
                    ("models", i, "categories", j),
                    f"category {category!r} is not defined under router.categories; "
                    f"defined: {', '.join(sorted(cfg.router.categories))}",
                )
    for name, spec in cfg.router.categories.items():
        # Only hxp.yml can say `keywords: []`; the router's own settings file lists every field.
        if "keywords" in spec.model_fields_set and not spec.keywords:
            yield Problem(
                ("router", "categories", name, "keywords"),
                "an empty keyword list matches no prompt; add keywords or remove the key",
            )
    if not dropped.models:
        for category in cfg.router.categories:
            if category not in served:
                yield Problem(
                    ("router", "categories", category),
                    f"no model serves category {category!r}; add it to the categories of a "
                    "model with task: generate, or remove it",
                )
    semantic = cfg.router.semantic.embedding_model
    if (
        semantic is not None
        and not (semantic not in index and (semantic in dropped_names or dropped.all_models))
        and (semantic not in index or index[semantic].task != "embed")
    ):
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
        if _placed_among_dropped(cfg, ("models", i), dropped):
            continue
        yield from _gpu_rules(model, llm_host, ("models", i))


_SECTION_GROUPS = {
    "models": HostGroup.LLM,
    "router": HostGroup.LLM,
    "database": HostGroup.DATABASE,
    "vector_db": HostGroup.VECTOR,
    "cache": HostGroup.CACHE,
    "metrics": HostGroup.METRICS,
}
# Endpoints that name their host themselves (one per host), whatever their section.
_PER_HOST_FIELDS = {"node_exporter_port", "gpu_exporter_port"}


def _placed_among_dropped(cfg: HxpConfig, path: PathKey, dropped: Dropped) -> bool:
    """Whether the service at ``path`` goes on "the only host of its group" while a left-out
    host may have been in that group: where it runs is then not known."""
    group = _SECTION_GROUPS.get(str(path[0])) if path else None
    if group is None or group not in dropped.groups or path[-1] in _PER_HOST_FIELDS:
        return False
    if path[0] == "models":
        return isinstance(path[1], int) and cfg.models[path[1]].host is None
    section = getattr(cfg, str(path[0]))
    return section is not None and section.host is None


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
