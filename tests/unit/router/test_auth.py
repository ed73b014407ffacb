"""KeyStore: static keys, cached lookups with a TTL, negative answers, and MISS for I/O."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from hxp_runtime.router import auth
from hxp_runtime.router.auth import MISS, KeyStore, redact
from hxp_runtime.router.store import ApiKey


def sha(token: bytes) -> str:
    return hashlib.sha256(token).hexdigest()


async def test_static_cached_and_looked_up_keys() -> None:
    asked: list[str] = []
    stored, static = ApiKey("from-db"), ApiKey("static")

    async def lookup(digest: str) -> ApiKey | None:
        asked.append(digest)
        return stored if digest == sha(b"from-db") else None

    now = [0.0]
    keys = KeyStore({sha(b"static"): static}, lookup, ttl_s=10, clock=lambda: now[0])
    assert keys.cached("Bearer static") is static
    assert keys.cached(None) is None and keys.cached("Basic static") is None
    # Unknown without I/O: the caller must look it up.
    assert keys.cached("Bearer from-db") is MISS
    assert await keys.authenticate("Bearer from-db") is stored
    assert keys.cached("Bearer from-db") is stored and asked == [sha(b"from-db")]
    # A refusal is cached too, and both expire with the TTL.
    assert await keys.authenticate("Bearer wrong") is None
    assert keys.cached("Bearer wrong") is None and len(asked) == 2
    now[0] = 11.0
    assert keys.cached("Bearer from-db") is MISS


def header(token: str) -> str:
    """An Authorization value built at run time, as the front decodes one: a new object."""
    return "".join(["Bearer ", token])


async def test_the_header_object_last_accepted_needs_no_hash_while_its_key_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hashed: list[str | None] = []
    digest = auth._digest
    monkeypatch.setattr(auth, "_digest", lambda value: hashed.append(value) or digest(value))
    static, stored = ApiKey("static"), ApiKey("from-db")

    async def lookup(digest: str) -> ApiKey | None:
        return stored if digest == sha(b"from-db") else None

    now = [0.0]
    keys = KeyStore({sha(b"static"): static}, lookup, ttl_s=10, clock=lambda: now[0])
    presented = header("static")
    assert keys.cached(presented) is static and keys.cached(presented) is static
    assert hashed == [presented]
    # The same text in another object is hashed again; another text is never the last key's.
    again = header("static")
    assert again is not presented and keys.cached(again) is static and len(hashed) == 2
    assert keys.cached(header("statid")) is MISS and len(hashed) == 3
    assert keys.cached(None) is None and keys.cached("") is None
    # A key taken out of the secrets file (a reload) is refused at once, this object too.
    accepted = header("static")
    assert keys.cached(accepted) is static
    keys.replace_static({})
    assert keys.cached(accepted) is MISS and await keys.authenticate(accepted) is None
    assert keys.cached(accepted) is None
    # A database key's object holds for as long as its cache entry, and not longer.
    from_db = header("from-db")
    assert await keys.authenticate(from_db) is stored
    assert keys.cached(from_db) is stored
    count = len(hashed)
    now[0] = 9.9
    assert keys.cached(from_db) is stored and len(hashed) == count
    now[0] = 10.0
    assert keys.cached(from_db) is MISS and len(hashed) == count + 1


async def test_without_a_database_an_unknown_key_is_refused() -> None:
    keys = KeyStore({}, None, ttl_s=10)
    assert keys.cached("Bearer anything") is None
    assert await keys.authenticate("Bearer anything") is None


def test_redact_blanks_credentials_and_leaves_prose_alone() -> None:
    token = "sk-" + "a1b2c3d4" * 4
    quoted = f"Got more than 8190 bytes when reading: b'Authorization: Bearer {token}'."
    expected = "Got more than 8190 bytes when reading: b'Authorization: Bearer [redacted]'."
    assert redact(quoted) == expected
    assert redact(f'{{"api_key": "{token}"}}') == '{"api_key": "[redacted]"}'
    assert redact(f"retry with Bearer {token} later") == "retry with Bearer [redacted] later"
    prose = "the bearer of bad news asked for 5 tokens; basic usage"
    assert redact(prose) == prose


async def test_requests_that_miss_together_share_one_lookup() -> None:
    asked: list[str] = []
    release = asyncio.Event()
    stored = ApiKey("from-db")

    async def lookup(digest: str) -> ApiKey | None:
        asked.append(digest)
        await release.wait()
        return stored

    keys = KeyStore({}, lookup, ttl_s=10)
    waiting = [asyncio.ensure_future(keys.authenticate("Bearer from-db")) for _ in range(64)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # a client gone does not cancel the query the others wait for
    release.set()
    answers = await asyncio.gather(*waiting[1:])
    assert answers == [stored] * 63 and asked == [sha(b"from-db")]
    # The next miss (another key) asks again.
    assert await keys.authenticate("Bearer other") is stored and len(asked) == 2
