"""``hxp keys create|list|revoke``: API keys in the router's PostgreSQL database.

Run from hxp's venv wherever PostgreSQL is reachable (the router's venv holds the router
only): the connection comes from the router's settings and secrets files (``--settings``,
``--secrets``; by default ``/etc/hxp-router/``), or from ``--dsn`` / ``HXP_KEYS_DSN``.
``create`` prints the new key once; only its SHA-256 is stored. A revoked key stops working
within the router's ``auth_cache_ttl_s`` (30 s by default).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import asyncpg
import typer
from rich.console import Console
from rich.table import Table

from hxp_runtime.cli_output import EXIT_FAILED, JSON_FLAG, CliProblem, Kind, Report
from hxp_runtime.router import store
from hxp_runtime.router.settings import (
    DEFAULT_SECRETS,
    DEFAULT_SETTINGS,
    SettingsError,
    load_secrets,
    load_settings,
)
from hxp_runtime.router.tls import TlsError

T = TypeVar("T")

keys_app = typer.Typer(
    help="API keys for the router: create (printed once), list, revoke.",
    no_args_is_help=True,
)
out = Console()

SettingsOption = Annotated[
    Path, typer.Option("--settings", help="the router's settings file (database location)")
]
SecretsOption = Annotated[
    Path, typer.Option("--secrets", help="the router's secrets file (database password)")
]
DsnOption = Annotated[
    str | None,
    typer.Option(
        "--dsn",
        envvar="HXP_KEYS_DSN",
        help="postgresql://user:password@host:port/db instead of the router's files",
    ),
]
JsonFlag = Annotated[bool, typer.Option(JSON_FLAG, help="print machine-readable JSON")]
PerMinute = Annotated[int | None, typer.Option(min=1)]


def _fail(report: Report, message: str) -> NoReturn:
    report.fail([CliProblem(Kind.DATABASE, message, "(database)")], EXIT_FAILED)


def _connect_kwargs(
    report: Report, settings_file: Path, secrets_file: Path, dsn: str | None
) -> dict[str, Any]:
    if dsn:
        return {"dsn": dsn, "timeout": 5}
    try:
        settings = load_settings(settings_file)
        secrets = load_secrets(secrets_file if secrets_file.exists() else None)
    except SettingsError as exc:
        report.invalid(exc)
    db = settings.database
    if db is None:
        problem = "no database section; keys need PostgreSQL (or give --dsn)"
        report.fail([CliProblem(Kind.CONFIG, problem, "database", str(settings_file))], EXIT_FAILED)
    password = secrets.database_password
    try:
        return store.connect_kwargs(db, password.get_secret_value() if password else None)
    except TlsError as exc:
        report.fail(
            [CliProblem(Kind.CONFIG, str(exc), "database.ca_file", str(settings_file))],
            EXIT_FAILED,
        )


def _run(report: Report, kwargs: dict[str, Any], work: Callable[[Any], Awaitable[T]]) -> T:
    async def session() -> T:
        conn = await asyncpg.connect(**kwargs)
        try:
            await store.ensure_schema(conn)
            return await work(conn)
        finally:
            await conn.close()

    where = kwargs.get("host", "the --dsn server")
    try:
        return asyncio.run(session())
    except store.KeyOperationError as exc:
        _fail(report, str(exc))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        _fail(report, f"cannot use PostgreSQL at {where}: {exc}")


@keys_app.command()
def create(
    name: Annotated[str, typer.Argument(help="who the key is for, e.g. a team or service")],
    requests_per_minute: PerMinute = None,
    tokens_per_minute: PerMinute = None,
    settings: SettingsOption = DEFAULT_SETTINGS,
    secrets: SecretsOption = DEFAULT_SECRETS,
    dsn: DsnOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a key; it is printed once and cannot be shown again."""
    report = Report("keys create", as_json)
    kwargs = _connect_kwargs(report, settings, secrets, dsn)
    key = _run(
        report,
        kwargs,
        lambda conn: store.create_key(
            conn,
            name,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
        ),
    )
    if as_json:
        report.succeed({"name": name, "key": key, "prefix": key[:8]})
        return
    out.print(f"created key [bold]{name}[/]; store it now, it is not shown again:")
    print(key)


@keys_app.command("list")
def list_(
    include_revoked: Annotated[bool, typer.Option("--all", help="include revoked keys")] = False,
    settings: SettingsOption = DEFAULT_SETTINGS,
    secrets: SecretsOption = DEFAULT_SECRETS,
    dsn: DsnOption = None,
    as_json: JsonFlag = False,
) -> None:
    """List keys (name, prefix, limits, dates); never the keys themselves."""
    report = Report("keys list", as_json)
    kwargs = _connect_kwargs(report, settings, secrets, dsn)
    records = _run(
        report, kwargs, lambda conn: store.list_keys(conn, include_revoked=include_revoked)
    )
    if as_json:
        rows = [
            {
                "name": r.name,
                "prefix": r.prefix,
                "source": r.source,
                "requests_per_minute": r.requests_per_minute,
                "tokens_per_minute": r.tokens_per_minute,
                "created_at": r.created_at.isoformat(),
                "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
            }
            for r in records
        ]
        report.succeed({"keys": rows})
        return
    table = Table(title="API keys", header_style="bold")
    for column in ("name", "prefix", "source", "req/min", "tokens/min", "created", "revoked"):
        table.add_column(column)
    for r in records:
        table.add_row(
            r.name,
            r.prefix + "…",
            r.source,
            str(r.requests_per_minute or "default"),
            str(r.tokens_per_minute or "default"),
            f"{r.created_at:%Y-%m-%d %H:%M}",
            f"{r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "",
        )
    out.print(table)


@keys_app.command()
def revoke(
    name: Annotated[str, typer.Argument(help="the key's name")],
    settings: SettingsOption = DEFAULT_SETTINGS,
    secrets: SecretsOption = DEFAULT_SECRETS,
    dsn: DsnOption = None,
) -> None:
    """Revoke the active key with this name."""
    report = Report("keys revoke", False)
    kwargs = _connect_kwargs(report, settings, secrets, dsn)
    if not _run(report, kwargs, lambda conn: store.revoke_key(conn, name)):
        _fail(report, f"no active key named {name!r}; `hxp keys list` shows the keys")
    out.print(f"revoked key [bold]{name}[/]", highlight=False)
