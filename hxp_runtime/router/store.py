"""The router's PostgreSQL tables: API keys (hashed) and usage per key and model.

The router creates its tables when it starts (idempotent, under an advisory lock so that
workers starting together do not race). A key is stored as the SHA-256 of its secret plus an
8-character prefix to recognise it by; the secret itself is shown once, by ``hxp keys create``,
and never stored. Keys from hxp.yml (``router.api_keys``) are registered here too (source
``config``), so that ``hxp keys list`` shows every key and usage rows name them.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from hxp_runtime.router.settings import DatabaseSettings
from hxp_runtime.router.tls import client_context

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Conn = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
    Executor = Conn | asyncpg.Pool[asyncpg.Record]

KEY_PREFIX = "hxp-"
SCHEMA_LOCK = 0x6878705F726F7574  # "hxp_rout": pg_advisory_xact_lock id for the DDL below

SCHEMA = """
CREATE TABLE IF NOT EXISTS hxp_api_keys (
    id                  bigserial PRIMARY KEY,
    name                text NOT NULL,
    key_hash            text NOT NULL UNIQUE,
    key_prefix          text NOT NULL,
    source              text NOT NULL DEFAULT 'cli',
    requests_per_minute integer,
    tokens_per_minute   integer,
    created_at          timestamptz NOT NULL DEFAULT now(),
    revoked_at          timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS hxp_api_keys_active_name
    ON hxp_api_keys (name) WHERE revoked_at IS NULL;
CREATE TABLE IF NOT EXISTS hxp_usage (
    id                bigserial PRIMARY KEY,
    period_start      timestamptz NOT NULL,
    period_end        timestamptz NOT NULL,
    key_name          text NOT NULL,
    model             text NOT NULL,
    requests          integer NOT NULL,
    errors            integer NOT NULL,
    prompt_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS hxp_usage_key_model ON hxp_usage (key_name, model, period_start);
"""


class KeyOperationError(Exception):
    """A key operation cannot be done; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A client key as the router enforces it."""

    name: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    name: str
    prefix: str
    source: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    created_at: datetime
    revoked_at: datetime | None


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def ensure_schema(conn: Conn) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
        await conn.execute(SCHEMA)


async def create_key(
    conn: Conn,
    name: str,
    *,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
) -> str:
    """Store a new key for ``name`` and return its secret (shown once, never stored)."""
    secret = generate_key()
    try:
        await conn.execute(
            "INSERT INTO hxp_api_keys (name, key_hash, key_prefix, requests_per_minute,"
            " tokens_per_minute) VALUES ($1, $2, $3, $4, $5)",
            name,
            hash_key(secret),
            secret[:8],
            requests_per_minute,
            tokens_per_minute,
        )
    except asyncpg.UniqueViolationError:
        raise KeyOperationError(
            f"an active key named {name!r} exists; revoke it first or choose another name"
        ) from None
    return secret


async def register_config_key(
    conn: Conn, name: str, secret_hash: str, prefix: str, key: ApiKey
) -> None:
    """Record a key from hxp.yml; a rotated secret revokes the previous config key's row."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE hxp_api_keys SET revoked_at = now() WHERE name = $1 AND source = 'config'"
            " AND key_hash <> $2 AND revoked_at IS NULL",
            name,
            secret_hash,
        )
        await conn.execute(
            "INSERT INTO hxp_api_keys (name, key_hash, key_prefix, source, requests_per_minute,"
            " tokens_per_minute) VALUES ($1, $2, $3, 'config', $4, $5)"
            " ON CONFLICT (key_hash) DO UPDATE SET requests_per_minute = $4,"
            " tokens_per_minute = $5, revoked_at = NULL",
            name,
            secret_hash,
            prefix,
            key.requests_per_minute,
            key.tokens_per_minute,
        )


async def list_keys(conn: Conn, *, include_revoked: bool = False) -> list[KeyRecord]:
    rows = await conn.fetch(
        "SELECT name, key_prefix, source, requests_per_minute, tokens_per_minute, created_at,"
        " revoked_at FROM hxp_api_keys WHERE $1 OR revoked_at IS NULL ORDER BY name, created_at",
        include_revoked,
    )
    return [KeyRecord(*row.values()) for row in rows]


async def revoke_key(conn: Conn, name: str) -> bool:
    result = await conn.execute(
        "UPDATE hxp_api_keys SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL", name
    )
    return str(result).endswith(" 1")


async def find_key(conn: Executor, secret_hash: str) -> ApiKey | None:
    row = await conn.fetchrow(
        "SELECT name, requests_per_minute, tokens_per_minute FROM hxp_api_keys"
        " WHERE key_hash = $1 AND revoked_at IS NULL",
        secret_hash,
    )
    return None if row is None else ApiKey(*row.values())


UsageRow = tuple[datetime, datetime, str, str, int, int, int, int]


async def write_usage(conn: Executor, rows: list[UsageRow]) -> None:
    await conn.executemany(
        "INSERT INTO hxp_usage (period_start, period_end, key_name, model, requests, errors,"
        " prompt_tokens, completion_tokens) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        rows,
    )


def connect_kwargs(db: DatabaseSettings, password: str | None) -> dict[str, Any]:
    """asyncpg's arguments for the database of the settings; with ``ca_file`` TLS only, the
    server's certificate and address verified (libpq's sslmode=verify-full)."""
    return {
        "host": db.host,
        "port": db.port,
        "database": db.name,
        "user": db.user,
        "password": password,
        "ssl": client_context(db.ca_file) if db.ca_file is not None else False,
        "timeout": 5,
        "command_timeout": 10,
    }
