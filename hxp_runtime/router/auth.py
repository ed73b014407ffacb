"""Client authentication: ``Authorization: Bearer <key>`` checked against hashed keys.

Keys from hxp.yml (the secrets file) are hashed once at start-up; keys made with
``hxp keys create`` live in PostgreSQL and are looked up by hash on first use, then trusted
for ``ttl_s`` (a revoked key stops working within that time). Unknown keys are remembered
for the same time so that a client retrying a bad key cannot hammer the database. When
PostgreSQL is unreachable, keys already seen keep working and unknown keys are refused.

No key reaches a log or an error message: :func:`redact` blanks what looks like one in text
that may quote a request (a parser's complaint, a backend's error message).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping

import asyncpg

from hxp_runtime.router.flight import shared_call
from hxp_runtime.router.store import ApiKey

log = logging.getLogger(__name__)

BEARER = "Bearer "
MAX_NEGATIVE_ENTRIES = 10_000
_FOREVER = float("inf")  # a static key's entry never expires

Lookup = Callable[[str], Awaitable[ApiKey | None]]

# A header or parameter that carries a credential ("Authorization: ...", "api_key=..."), in any
# quoting a message or a repr may have, and a scheme's credential on its own ("Bearer sk-...";
# eight characters at least, so that "bearer of bad news" stays as it is).
_CREDENTIAL = re.compile(
    r"(?i)(\b(?:authorization|x-api-key|api[-_]?key|password|secret)[\"']?\s*[:=]\s*[\"']?"
    r"(?:(?:bearer|basic)\s+)?)[^\s'\",;&]+"
    r"|(\b(?:bearer|basic)\s+)[^\s'\",;&]{8,}"
)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` with every credential it seems to quote replaced by ``[redacted]``."""
    return _CREDENTIAL.sub(lambda m: (m.group(1) or m.group(2)) + REDACTED, text)


class Miss:
    """``KeyStore.cached`` cannot tell without asking PostgreSQL."""


MISS = Miss()


def _digest(authorization: str | None) -> str | None:
    """SHA-256 (hex) of the bearer token of an Authorization header, None without one."""
    if not authorization or not authorization.startswith(BEARER):
        return None
    return hashlib.sha256(authorization[len(BEARER) :].strip().encode()).hexdigest()


class KeyStore:
    def __init__(
        self,
        static: Mapping[str, ApiKey],
        lookup: Lookup | None,
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``static``: hash -> key (never expire); ``lookup``: hash -> key from PostgreSQL."""
        self._static = dict(static)
        self._lookup = lookup
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[ApiKey | None, float]] = {}
        self._negatives = 0
        self._pending: dict[str, asyncio.Future[ApiKey | None]] = {}
        # The header object last found to hold a valid key, that key, and until when it holds.
        # The front keeps a connection's header fields while its head repeats (front.LastHead),
        # so a keep-alive client presents the very same str object request after request: an
        # identity test (which reads no byte of the key, so it tells no timing about it) then
        # stands for the SHA-256 and the lookups.
        self._last: tuple[str | None, ApiKey | None, float] = (None, None, 0.0)

    def replace_static(self, static: Mapping[str, ApiKey]) -> None:
        self._static = dict(static)
        self._last = (None, None, 0.0)  # a key taken out stops working at once

    def cached(self, authorization: str | None) -> ApiKey | Miss | None:
        """The key for this header when known without I/O; MISS when it must be looked up.

        The hot path: the header object last accepted again costs an identity test; a static
        key or a fresh cache entry costs one SHA-256 and a dict hit.
        """
        last = self._last
        if authorization is last[0] and authorization is not None and last[2] > self._clock():
            return last[1]
        digest = _digest(authorization)
        if digest is None:
            return None
        known, until = self._known(digest)
        if isinstance(known, ApiKey):
            self._last = (authorization, known, until)
        return known

    def _known(self, digest: str) -> tuple[ApiKey | Miss | None, float]:
        """The key for a digest when known without I/O, and until when that answer holds."""
        key = self._static.get(digest)
        if key is not None:
            return key, _FOREVER
        entry = self._cache.get(digest)
        if entry is not None and entry[1] > self._clock():
            return entry
        return (None if self._lookup is None else MISS), 0.0

    async def authenticate(self, authorization: str | None) -> ApiKey | None:
        """The key for this header, asking PostgreSQL when the cache cannot tell.

        One lookup per key at a time: when a busy key's entry expires, every request that
        arrives before the answer waits for the same query instead of sending its own (at
        concurrency 64, 64 queries on the core the router shares with PostgreSQL).
        """
        digest = _digest(authorization)
        if digest is None:
            return None
        known, _ = self._known(digest)
        if not isinstance(known, Miss):
            return known
        return await shared_call(self._pending, digest, lambda: self._look_up(digest))

    async def _look_up(self, digest: str) -> ApiKey | None:
        assert self._lookup is not None  # MISS only when there is a lookup
        entry = self._cache.get(digest)
        now = self._clock()
        try:
            key = await self._lookup(digest)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            log.warning("API key lookup failed (%s); using what is cached", exc)
            return entry[0] if entry is not None else None
        if key is None:
            self._negatives += 1
            if self._negatives > MAX_NEGATIVE_ENTRIES:
                self._cache = {h: e for h, e in self._cache.items() if e[0] is not None}
                self._negatives = 0
        self._cache[digest] = (key, now + self._ttl_s)
        return key
