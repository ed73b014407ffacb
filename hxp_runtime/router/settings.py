"""The router daemon's two files: its settings and its secrets.

Both are written by the ``router`` role: the settings file (``to_nice_yaml`` of
``hxp_router_settings``, which ``hxp_runtime.render.router_vars`` derives from hxp.yml) and the
secrets file (mode 0600, owned by the service user). The settings extend hxp.yml's router
section (:class:`~hxp_runtime.config.RouterPolicy`) with what the renderer resolved: the
address to listen on, every backend's URL, and where PostgreSQL and Redis are. Secrets never
appear in the settings file, and the settings file never holds a secret.

Loading either file validates it completely; a problem is reported with the file, the line,
the field and what to do, like hxp.yml itself.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator

from hxp_runtime.config import (
    ConfigError,
    Name,
    Port,
    PositiveFloat,
    Problem,
    RouterPolicy,
    Slo,
    Strict,
    _pydantic_problems,
)
from hxp_runtime.yamlsource import YamlSourceError, load_yaml

DEFAULT_SETTINGS = Path("/etc/hxp-router/settings.yml")
DEFAULT_SECRETS = Path("/etc/hxp-router/secrets.yml")
AUTO_MODEL = "auto"
# The admin API listens here: this machine only, whatever listen_host says.
ADMIN_HOST = "127.0.0.1"
_URL = re.compile(r"^http://(\[[0-9a-fA-F:.]+\]|[^/\s:\[\]]+):\d+$")


class BackendSpec(Strict):
    """One vLLM server the router may send requests to."""

    name: Name = Field(description="the model's name in hxp.yml")
    served_name: str = Field(description="the name vLLM serves the model under")
    aliases: list[str] = Field(default_factory=list)
    task: Literal["generate", "embed"] = "generate"
    url: str = Field(description="http://host:port of the vLLM server")
    categories: list[str] = Field(default_factory=list)
    slo: Slo

    @field_validator("url")
    @classmethod
    def _plain_http(cls, url: str) -> str:
        if not _URL.match(url):
            raise ValueError(f"{url!r} must look like http://host:port (no path)")
        return url

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a client may ask for this model by."""
        return tuple(dict.fromkeys((self.name, self.served_name, *self.aliases)))


class DatabaseSettings(Strict):
    host: str
    port: Port = 5432
    name: str
    user: str
    pool_size: Annotated[int, Field(ge=1, le=1000)] = 20
    ca_file: Path | None = Field(
        None,
        description="PEM CA the server's certificate is verified with: TLS with "
        "sslmode=verify-full (none: plain TCP)",
    )


class RedisSettings(Strict):
    host: str
    port: Port = 6379
    db: Annotated[int, Field(ge=0)] = 0
    ca_file: Path | None = Field(
        None,
        description="PEM CA the server's certificate and address are verified with: TLS "
        "(rediss://; none: plain TCP)",
    )


class TlsFiles(Strict):
    """The public port's certificate and key on the host (PEM), read at start and on reload."""

    certificate_file: Path
    key_file: Path


class RouterSettings(RouterPolicy):
    listen_host: str = Field("127.0.0.1", description="address the router binds to")
    tls: TlsFiles | None = Field(None, description="serve HTTPS on the public port")
    backends: list[BackendSpec] = Field(min_length=1)
    database: DatabaseSettings | None = None
    redis: RedisSettings | None = None
    # Runtime knobs hxp.yml does not expose; the defaults suit production.
    require_api_key: bool = True
    auth_cache_ttl_s: PositiveFloat = Field(30, description="how long a looked-up key is trusted")
    load_poll_interval_s: PositiveFloat = Field(
        1, description="vLLM /metrics polling period (one poll per period for all workers)"
    )
    usage_flush_interval_s: PositiveFloat = 5

    @model_validator(mode="after")
    def _references(self) -> RouterSettings:
        problems = list(self.reference_problems())
        if self.admin_port == self.port:
            problems.append(f"admin_port {self.admin_port} must differ from the public port")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def routing_index(self) -> dict[str, str]:
        """Every name a client may use (name, served name, alias) -> the model's name."""
        index: dict[str, str] = {}
        for backend in self.backends:
            for alias in backend.names:
                index.setdefault(alias, backend.name)
        return index

    def reference_problems(self) -> list[str]:
        index = self.routing_index()
        known = ", ".join(sorted(index))
        problems = []
        for model, chain in self.fallbacks.items():
            for name in (model, *chain):
                if name not in index:
                    problems.append(f"fallbacks name unknown model {name!r} (known: {known})")
        for what, reference in (
            ("default_model", self.default_model),
            ("semantic.embedding_model", self.semantic.embedding_model),
        ):
            if reference is not None and reference not in index:
                problems.append(f"{what} {reference!r} is not a backend (known: {known})")
        if AUTO_MODEL in index:
            problems.append(f"{AUTO_MODEL!r} is reserved for routing by strategy; rename it")
        for backend in self.backends:
            for category in backend.categories:
                if self.categories and category not in self.categories:
                    problems.append(
                        f"backend {backend.name!r} names undefined category {category!r}"
                    )
        return problems


class ApiKeySecret(Strict):
    """A key from hxp.yml's router.api_keys; the router stores only its hash."""

    name: Name
    secret: SecretStr = Field(min_length=16)
    requests_per_minute: Annotated[int, Field(ge=1)] | None = None
    tokens_per_minute: Annotated[int, Field(ge=1)] | None = None


class RouterSecrets(Strict):
    upstream_api_key: SecretStr | None = None
    database_password: SecretStr | None = None
    redis_password: SecretStr | None = None
    api_keys: list[ApiKeySecret] = Field(default_factory=list)
    admin_key: SecretStr | None = Field(
        None, min_length=16, description="bearer key of the admin API (none: no admin API)"
    )


class SettingsError(ConfigError):
    """A settings or secrets file is unusable; the message lists every problem with its line."""


ModelT = TypeVar("ModelT", bound=Strict)


def _load(file: Path, model: type[ModelT]) -> ModelT:
    try:
        data, lines = load_yaml(file)
    except YamlSourceError as exc:
        raise SettingsError(file, [Problem((), str(exc).removeprefix(f"{file}: "))]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsError(file, [Problem((), "the file must be a YAML mapping", 1)])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(file, _pydantic_problems(exc, lines, model)) from None


def load_settings(file: Path) -> RouterSettings:
    """The settings file with the live URLs of blue-green swaps (:func:`backend_urls_file`)."""
    settings = _load(file, RouterSettings)
    urls = load_backend_urls(backend_urls_file(file))
    if not urls:
        return settings
    backends = [
        b.model_copy(update={"url": urls[b.name]}) if b.name in urls else b
        for b in settings.backends
    ]
    return settings.model_copy(update={"backends": backends})


def backend_urls_file(settings_file: Path) -> Path:
    """Beside the settings: the URL each blue-green backend serves on now (backend -> URL).

    Its own file because a swap, not the router role, decides it: the role writes the settings
    from hxp.yml (each model's own port), a swap moves a backend to the model's spare port and
    back, and a deploy after it must change nothing."""
    return settings_file.with_name("backend-urls.json")


def load_backend_urls(file: Path) -> dict[str, str]:
    """What :func:`write_backend_url` wrote; nothing when no swap ever ran."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SettingsError(
            file, [Problem((), f"unreadable ({exc}); deploy again to write it anew")]
        ) from None
    problems = [
        Problem((name,), f"{url!r} must look like http://host:port (no path)")
        for name, url in (data.items() if isinstance(data, dict) else [])
        if not isinstance(url, str) or not _URL.match(url)
    ]
    if not isinstance(data, dict):
        problems.append(Problem((), "must be a JSON object: backend name -> URL"))
    if problems:
        raise SettingsError(file, problems)
    return data


def write_backend_url(settings_file: Path, name: str, url: str) -> Path:
    """Record that backend ``name`` serves on ``url`` from now on, in one rename (a reload
    reads the old file or the new one, never half of one). Owner, group and mode follow the
    settings file's, which the router's account can read."""
    if not _URL.match(url):
        raise ValueError(f"{url!r} must look like http://host:port (no path)")
    settings = load_settings(settings_file)
    if name not in {b.name for b in settings.backends}:
        known = ", ".join(b.name for b in settings.backends)
        raise ValueError(f"{settings_file} has no backend {name!r} (known: {known})")
    file = backend_urls_file(settings_file)
    urls = {**load_backend_urls(file), name: url}
    owner = settings_file.stat()
    fd, temporary = tempfile.mkstemp(prefix=".backend-urls-", dir=file.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(urls, out, indent=2, sort_keys=True)
            out.write("\n")
        os.chmod(temporary, owner.st_mode & 0o777)
        if os.geteuid() == 0:
            os.chown(temporary, owner.st_uid, owner.st_gid)
        os.replace(temporary, file)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return file


def load_secrets(file: Path | None) -> RouterSecrets:
    """The secrets file, or no secrets at all when none is given."""
    return RouterSecrets() if file is None else _load(file, RouterSecrets)
