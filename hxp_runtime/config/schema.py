"""The schema of an hxp deployment (hxp.yml): pydantic v2 models, ``extra="forbid"``.

Each field checks only itself here; rules that span fields live in :mod:`.rules`, and
:mod:`.loader` turns a file into a checked :class:`HxpConfig` or every problem at once.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from hxp_runtime.catalog import PRESETS, merge_preset
from hxp_runtime.host import gpu_exporter
from hxp_runtime.yamlsource import PathKey

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

    def controller_value(self) -> str | None:
        """The secret as the hxp_secret lookup reads it on this machine (a file's trailing
        whitespace stripped); None for vault: (Ansible's alone). Raises OSError for a file that
        cannot be read and KeyError for an unset variable."""
        if self.scheme is SecretScheme.ENV:
            return os.environ[self.value]
        if self.scheme is SecretScheme.FILE:
            return Path(self.value).read_text(encoding="utf-8").rstrip()
        return None

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
    memory_gb: PositiveFloat | None = Field(
        None,
        description="memory in GiB the model servers of a CPU host may use together; with it, "
        "a blue-green swap there checks that both versions' memory_limit_gb fit",
    )

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
        # A model split across hosts (models[].pipeline) gets these from the plan.
        "--pipeline-parallel-size",
        "--distributed-executor-backend",
        "--nnodes",
        "--node-rank",
        "--master-addr",
        "--master-port",
        "--headless",
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


class RolloutStrategy(StrEnum):
    """How ``hxp deploy`` brings a changed model server into service."""

    ROLLING = "rolling"
    BLUE_GREEN = "blue-green"


# A blue-green swap starts the new version on the model's port plus this, beside the old.
SPARE_PORT_OFFSET = 1000


class ModelRollout(Strict):
    strategy: RolloutStrategy | None = Field(
        None, description="this model's rollout strategy; none: rollout.strategy"
    )


def _repeated(names: list[str]) -> list[str]:
    """The names listed more than once, each once, in the order they first repeat."""
    return list(dict.fromkeys(n for i, n in enumerate(names) if n in names[:i]))


class Pipeline(Strict):
    """One model split across llm hosts: vLLM's pipeline parallelism in its multiprocessing
    multi-node mode (no Ray). Stage k runs on hosts[k] and holds its share of the layers; the
    first host is the head, which serves the API on the model's port; the others run headless.
    Tensor parallelism, if any, stays within each host."""

    hosts: list[str] = Field(
        min_length=2,
        description="the llm hosts of the stages, in order; the first serves the API (the "
        "router's only backend for the model)",
    )
    master_port: Port = Field(
        29501,
        description="the head's port for the engine's process group (torch.distributed); the "
        "firewall admits it, and the engine's other inter-node sockets, only between these hosts",
    )

    @field_validator("hosts")
    @classmethod
    def _distinct(cls, hosts: list[str]) -> list[str]:
        if seen := _repeated(hosts):
            raise ValueError(
                f"names {', '.join(seen)} more than once; each stage runs on a host of its own "
                "(tensor parallelism uses a host's GPUs), list each host once"
            )
        return hosts


class Model(Strict):
    name: Name
    preset: str | None = None
    task: Literal["generate", "embed"] = "generate"
    served_name: ModelId | None = None
    aliases: list[ModelId] = Field(default_factory=list)
    host: str | None = Field(None, description="defaults to the only host in group llm")
    hosts: list[str] | None = Field(
        None,
        min_length=1,
        description="a replica on each of these llm hosts (instead of host); the router "
        "balances requests over all of them",
    )
    replicas: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description="this many replicas on distinct llm hosts the planner picks (the most free "
        "memory first); instead of host and hosts",
    )
    pipeline: Pipeline | None = Field(
        None,
        description="one server split across these llm hosts (pipeline parallel); instead of "
        "host, hosts and replicas",
    )
    source: ModelSource = Field(default_factory=ModelSource)
    port: Port
    gpus: Literal["auto"] | Annotated[int, Field(ge=1)] | list[Annotated[int, Field(ge=0)]] = "auto"
    engine: Engine = Field(default_factory=Engine)
    architecture: Architecture | None = None
    memory_limit_gb: PositiveFloat
    cpu_cores: Annotated[int, Field(ge=1)]
    categories: list[Text] = Field(default_factory=list)
    slo: Slo
    rollout: ModelRollout = Field(default_factory=ModelRollout)

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

    @model_validator(mode="after")
    def _one_placement(self) -> Model:
        placements = ("host", "hosts", "replicas", "pipeline")
        given = [f for f in placements if getattr(self, f) is not None]
        if len(given) > 1:
            raise ValueError(
                f"give one of host, hosts, replicas and pipeline, not {' and '.join(given)}: "
                "host places one server, hosts a replica on each host named, replicas N on N "
                "llm hosts the planner picks, pipeline one server split across the hosts named"
            )
        if self.hosts is not None and (seen := _repeated(self.hosts)):
            raise ValueError(
                f"hosts names {', '.join(seen)} more than once; a host runs one replica of a "
                "model, list each host once"
            )
        return self

    @property
    def routing_name(self) -> str:
        return self.served_name or self.name

    @property
    def pipeline_size(self) -> int:
        return len(self.pipeline.hosts) if self.pipeline else 1

    @property
    def unit_name(self) -> str:
        return f"hxp-vllm-{self.name}"

    def stage_unit_name(self, rank: int) -> str:
        """The unit of the stage of vLLM node rank ``rank``, numbered from 1 as `hxp plan` and the
        unit's description number it (stage 2 is rank 1); the head's is the model's own unit."""
        return self.unit_name if rank == 0 else f"{self.unit_name}-stage{rank + 1}"

    @property
    def spare_port(self) -> int:
        """Where a blue-green swap starts the other version (then the live one, until the next)."""
        return self.port + SPARE_PORT_OFFSET


# --------------------------------------------------------------------------- router


class Strategy(StrEnum):
    EXPLICIT = "explicit"
    HIERARCHICAL = "hierarchical"
    SEMANTIC = "semantic"
    ADAPTIVE = "adaptive"
    LEAST_OUTSTANDING = "least_outstanding"
    POWER_OF_TWO = "power_of_two"
    PREFIX_AFFINITY = "prefix_affinity"


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


class StaticSemantic(Strict):
    """A static table that decides new prompts without an embeddings call when it is sure.

    hxp_runtime.router.static_embedding explains the table and the margin.
    """

    vocabulary: HostPath = Field(
        description="the embedding model's WordPiece vocab.txt on the router host (the table "
        "is built from it and the embeddings backend at the router's first start)"
    )
    confident_margin: Annotated[float, Field(ge=0.0, le=2.0)] = Field(
        0.04,
        description="the nearest category's cosine must beat the second's by this much for the "
        "static vector to decide; below it the embedding model decides. 0: the table always "
        "decides",
    )
    cache_dir: HostPath = Field(
        "/var/lib/hxp-router",
        description="where the built table is kept (the router unit's StateDirectory)",
    )


class Semantic(Strict):
    embedding_model: Text | None = Field(None, description="a model with task: embed")
    temperature: PositiveFloat = 0.1
    static: StaticSemantic | None = Field(
        None, description="decide most new prompts in-process, without an embeddings call"
    )

    @model_validator(mode="after")
    def _static_needs_the_model(self) -> Semantic:
        if self.static is not None and self.embedding_model is None:
            raise ValueError(
                "static needs embedding_model: the table is built from that model's embeddings "
                "and the prompts it is unsure of go to it; name a model with task: embed"
            )
        return self


# Headers that carry credentials: routing by one would make a secret a routing key.
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
# Strategies that order replicas by load alone: after prefix_affinity they would undo it.
_REPLICA_ORDER_STRATEGIES = (Strategy.LEAST_OUTSTANDING, Strategy.POWER_OF_TWO)


class PrefixRouting(Strict):
    """Settings of the prefix_affinity strategy (hxp_runtime.router.prefix explains it)."""

    block_chars: Annotated[int, Field(ge=1, le=65536)] = Field(
        64,
        description="characters (UTF-8 bytes) per hashed prompt block; 64 is about vLLM's "
        "16-token KV block at 4 characters a token",
    )
    max_blocks: Annotated[int, Field(ge=1, le=65536)] = Field(
        256,
        description="blocks hashed at most per prompt: caps a long prompt's cost; a "
        "conversation longer than this keeps its replica by its first blocks",
    )
    load_factor: Annotated[float, Field(ge=1.0, le=10.0)] = Field(
        1.25,
        description="bounded load: a replica whose load exceeds ceil(load_factor x average) "
        "is passed over for the next one in rendezvous order",
    )
    index_size: Annotated[int, Field(ge=0, le=10_000_000)] = Field(
        65536, description="prefixes each router worker remembers (replica it sent them to)"
    )
    session_header: Annotated[str, Field(pattern=r"^[A-Za-z0-9-]{1,64}$")] = Field(
        "X-HXP-Session",
        description="request header naming a session; its hash replaces the prompt's blocks",
    )
    session_max_chars: Annotated[int, Field(ge=1, le=4096)] = Field(
        256, description="longest session header value accepted (longer: 400)"
    )

    @field_validator("session_header")
    @classmethod
    def _not_a_credential(cls, header: str) -> str:
        if header.lower() in _CREDENTIAL_HEADERS:
            raise ValueError(
                f"{header} carries credentials and cannot name a session; "
                "use a header of its own such as X-HXP-Session"
            )
        return header


class RouterPolicy(Strict):
    """The router fields its daemon reads itself (hxp_runtime.router.settings extends them)."""

    port: Port = 8000
    workers: Annotated[int, Field(ge=1, le=64)] = 4
    timeout_s: PositiveFloat = 300
    drain_timeout_s: PositiveFloat = Field(30, description="SIGTERM: in-flight requests' grace")
    max_body_bytes: Annotated[int, Field(ge=1024, le=1024**3)] = Field(
        8 * 1024**2,
        description="largest request body the router accepts (bytes, after decompression); "
        "a larger one is answered 413 before any backend is asked",
    )
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
    prefix_routing: PrefixRouting = Field(
        default_factory=PrefixRouting, description="settings of the prefix_affinity strategy"
    )
    decision_cache_size: Annotated[int, Field(ge=0)] = 4096
    slo: Slo = Field(default_factory=lambda: Slo(latency_ms=100, throughput_rps=1000))
    admin_port: Port = Field(
        8001,
        description="loopback port of the router's admin API (backend state, drain, undrain); "
        "it listens only when router.admin_key is set",
    )

    @field_validator("strategies")
    @classmethod
    def _prefix_affinity_last(cls, strategies: list[Strategy]) -> list[Strategy]:
        if Strategy.PREFIX_AFFINITY in strategies:
            position = strategies.index(Strategy.PREFIX_AFFINITY)
            later = [s.value for s in strategies[position:] if s in _REPLICA_ORDER_STRATEGIES]
            if later:
                raise ValueError(
                    f"{', '.join(later)} after prefix_affinity would reorder the replicas it "
                    "chose by load alone; list prefix_affinity after them (they then order its "
                    "fallbacks only)"
                )
        return strategies


class TlsPair(Strict):
    """A server's PEM certificate (chain after it) and its key, both secret references."""

    certificate: SecretRef = Field(
        description="PEM certificate (its chain after it) covering the address clients connect "
        "to in subjectAltName; render and deploy check it with the key"
    )
    key: SecretRef = Field(
        description="the certificate's PEM private key, unencrypted; written 0600 on the host"
    )

    @model_validator(mode="before")
    @classmethod
    def _both(cls, data: Any) -> Any:
        if isinstance(data, dict) and len({"certificate", "key"} & set(data)) == 1:
            missing = "key" if "certificate" in data else "certificate"
            raise ValueError(
                f"needs both certificate and key; add {missing} (a secret reference) "
                "or remove tls to go without TLS"
            )
        return data


class RouterTls(TlsPair):
    """HTTPS on the router's public port: a PEM certificate (chain after it) and its key."""


class ServiceTls(TlsPair):
    """TLS on a connection the router opens (PostgreSQL, Redis): the server's pair, and the CA
    the router verifies the server's certificate and address with."""

    ca: SecretRef = Field(
        description="PEM certificate(s) of the CA that issued the server's certificate; the "
        "router trusts only these for this connection"
    )


class VirtualAddress(Strict):
    """The one address clients reach the router at when it runs on several hosts: keepalived
    (VRRP) holds it on one router host, and moves it to the next when that host or its router
    stops answering."""

    address: ipaddress.IPv4Address = Field(
        description="the virtual IPv4 address, a free one in the router hosts' network"
    )
    prefix_length: Annotated[int, Field(ge=8, le=30)] = Field(
        24, description="prefix length of the router hosts' network (the address is added so)"
    )
    virtual_router_id: Annotated[int, Field(ge=1, le=255)] = Field(
        description="VRRP router id, 1-255, unique among the VRRP groups of that network"
    )


class Router(RouterPolicy):
    host: str | None = Field(None, description="the one llm host the router runs on")
    hosts: list[str] | None = Field(
        None,
        description="the llm hosts routers run on behind virtual_address (instead of host); "
        "the first holds the address first",
    )
    virtual_address: VirtualAddress | None = Field(
        None, description="the address clients use when the router runs on several hosts"
    )
    tls: RouterTls | None = Field(
        None,
        description="serve HTTPS on the public port (plain HTTP there gets no answer); "
        "none: plain HTTP",
    )
    api_keys: list[ApiKeyRef] = Field(default_factory=list)
    upstream_api_key: SecretRef | None = Field(
        None, description="key the vLLM servers require (--api-key); health checks send it"
    )
    admin_key: SecretRef | None = Field(
        None,
        description="bearer key of the router's loopback admin API, at least 16 characters "
        "(none: no admin API)",
    )


# --------------------------------------------------------------------------- data plane


class Database(Strict):
    host: str | None = None
    port: Port = 5433
    name: SqlName = "citadel_ai"
    pool_size: Annotated[int, Field(ge=1, le=1000)] = 20
    router_user: SqlName = "hxp_router"
    router_password: SecretRef
    tls: ServiceTls | None = Field(
        None,
        description="TLS only on TCP (pg_hba hostssl; a plain connection is refused); the router "
        "connects with sslmode=verify-full. none: plain TCP",
    )
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
    tls: ServiceTls | None = Field(
        None,
        description="TLS only (no plain port); the router verifies the server's certificate and "
        "address. On the router's host Redis listens on 127.0.0.1: the certificate covers it. "
        "none: plain TCP",
    )
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


class Rollout(Strict):
    """How ``hxp deploy`` changes running model servers (engine settings, environment, version).

    Each changed server is drained through the router (no new requests, those in flight
    finish), restarted, waited for until ready, and given traffic again before the next batch.
    """

    batch_size: Annotated[int, Field(ge=1, le=64)] = Field(
        1,
        description="changed servers of one host restarted together; 1 keeps every other "
        "replica and fallback serving",
    )
    drain_deadline_s: Annotated[float, Field(ge=0, le=3600)] = Field(
        60,
        description="longest wait for a drained server's requests in flight before its restart",
    )
    strategy: RolloutStrategy = Field(
        RolloutStrategy.ROLLING,
        description="blue-green: a model whose version (source) changes starts the new version "
        "on its port + 1000 beside the old, where the planner says both fit, and the router "
        "switches to it once ready; rolling: the server restarts in place (drained first)",
    )


class Bundle(Strict):
    path: Path = Field(description="bundle directory on the controller (holds manifest.json)")


class LabSettings(Strict):
    bridge: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,15}$")] = "hxpbr0"
    gateway: ipaddress.IPv4Interface = ipaddress.IPv4Interface("10.77.0.1/24")
    state_dir: Path = Path(".lab")
    apt_proxy_port: Port = 3142


class Firewall(Strict):
    """nftables on every host (role firewall): inbound traffic is dropped unless a flow of the
    matrix (hxp_runtime.flows) admits it, from its source addresses only."""

    enabled: bool = True
    client_networks: list[ipaddress.IPv4Network] = Field(
        default_factory=lambda: [ipaddress.IPv4Network("0.0.0.0/0")],
        description="networks whose clients may reach the router's public port (default: any "
        "address; the port is guarded by API keys)",
    )
    controller: list[ipaddress.IPv4Network] = Field(
        default_factory=list,
        description="addresses hxp deploys from: SSH to every host, the operators' web "
        "interfaces (default: the lab's gateway in a lab; elsewhere, give it)",
    )


# --------------------------------------------------------------------------- status


class Service(StrEnum):
    """A service hxp runs on a host, as `hxp status` and status.expected name it."""

    ROUTER = "router"
    VLLM = "vllm"
    GPU_EXPORTER = "gpu-exporter"
    POSTGRESQL = "postgresql"
    POSTGRES_EXPORTER = "postgres-exporter"
    REDIS = "redis"
    REDIS_EXPORTER = "redis-exporter"
    QDRANT = "qdrant"
    PROMETHEUS = "prometheus"
    ALERTMANAGER = "alertmanager"
    GRAFANA = "grafana"
    NODE_EXPORTER = "node-exporter"


class ExpectedService(Strict):
    """A service knowingly not running: `hxp status` lists it as expected, not degraded."""

    service: Service = Field(description="the service, as `hxp status` names it")
    host: str | None = Field(
        None, description="only on this host (a name from hosts); null: on every host"
    )
    state: Literal["skipped", "stopped"] = Field(
        "skipped",
        description=(
            "skipped: the deploy set it up without its binary (not in the bundle); "
            "stopped: installed, but its units are not running"
        ),
    )
    reason: Text = Field(description="why; `hxp status` prints it")


class ExpectedAlert(Strict):
    """A Prometheus alert that knowingly fires (for example for a service that is skipped)."""

    alert: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=200)] = Field(
        description="the alert's name (its alertname label)"
    )
    reason: Text = Field(description="why it fires; `hxp status` prints it")


class StatusSettings(Strict):
    """What `hxp status` accepts as knowingly off in this deployment."""

    expected: list[ExpectedService] = Field(
        default_factory=list, description="services knowingly not running"
    )
    expected_alerts: list[ExpectedAlert] = Field(
        default_factory=list, description="alerts knowingly firing"
    )


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
    rollout: Rollout = Field(default_factory=Rollout)
    bundle: Bundle | None = None
    lab: LabSettings | None = None
    firewall: Firewall | None = None
    status: StatusSettings = Field(default_factory=StatusSettings)

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

    def blue_green_wanted(self, model: Model) -> bool:
        """The model opts into blue-green swaps (its own rollout, else rollout.strategy)."""
        strategy = model.rollout.strategy or self.rollout.strategy
        return strategy == RolloutStrategy.BLUE_GREEN

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
