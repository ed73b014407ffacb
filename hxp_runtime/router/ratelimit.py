"""Per-key token buckets (requests and tokens per minute), shared through Redis.

A bucket holds up to ``capacity`` tokens (the per-minute limit, i.e. a minute's burst) and
refills at ``capacity / 60`` tokens per second. :func:`take` is the whole arithmetic; the Lua
script below is the same arithmetic run atomically inside Redis, so that every worker process
(and every router host) draws from one bucket per key.

Asking Redis on every request would cost more CPU than the rest of the request, so workers
lease: a worker takes a small batch of tokens at once (what the bucket refills in
``LEASE_S``, at least one) and spends it locally. Leased tokens are gone from the shared
bucket, so the limit is never exceeded across workers; a worker holds back at most one lease.
With a limit of 600 requests per minute the lease is one token, i.e. exact.

Tokens per minute are charged after the fact (a request's token count is known when it
ends): the worker's lease goes negative and the debt is paid to the shared bucket with the
next lease, or by the periodic flush. A key whose token bucket is empty gets 429.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
import redis.exceptions

log = logging.getLogger(__name__)

LEASE_S = 0.1
SECONDS_PER_MINUTE = 60.0
KEY_TTL_S = 120  # a full bucket needs no key: Redis forgets buckets idle for 2 minutes


@dataclass(slots=True)
class Bucket:
    tokens: float
    updated: float


def refill(bucket: Bucket, now: float, capacity: float, rate_per_s: float) -> None:
    elapsed = max(0.0, now - bucket.updated)
    bucket.tokens = min(capacity, bucket.tokens + elapsed * rate_per_s)
    bucket.updated = now


def take(
    bucket: Bucket, now: float, capacity: float, rate_per_s: float, want: int, debt: float
) -> tuple[int, float]:
    """Refill, charge ``debt`` (may go negative), then grant up to ``want`` whole tokens.

    Returns (granted, retry_after_s); retry_after_s is 0 unless nothing was granted, then it
    is how long until one whole token is back.
    """
    refill(bucket, now, capacity, rate_per_s)
    bucket.tokens -= debt
    granted = max(0, min(want, math.floor(bucket.tokens)))
    bucket.tokens -= granted
    if granted or want == 0:
        return granted, 0.0
    return 0, (1.0 - bucket.tokens) / rate_per_s


def lease_size(per_minute: int) -> int:
    return max(1, math.floor(per_minute / SECONDS_PER_MINUTE * LEASE_S))


# The same arithmetic as take(), atomically in Redis. KEYS[1]: the bucket (a hash with
# tokens and updated). ARGV: capacity, rate per second, want, debt, key TTL. Time comes from
# Redis itself so that every worker and host agrees on it.
TAKE_SCRIPT = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local debt = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1]) or capacity
local updated = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - updated) * rate)
tokens = tokens - debt
local granted = math.max(0, math.min(want, math.floor(tokens)))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('EXPIRE', KEYS[1], ARGV[5])
local retry = 0
if granted == 0 and want > 0 then retry = (1 - tokens) / rate end
return {granted, tostring(retry)}
"""


class BucketStore(Protocol):
    async def take(
        self, key: str, capacity: int, rate_per_s: float, want: int, debt: float
    ) -> tuple[int, float]: ...


class LocalBuckets:
    """Buckets in this process only: the fallback when no Redis is configured."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, Bucket] = {}

    async def take(
        self, key: str, capacity: int, rate_per_s: float, want: int, debt: float
    ) -> tuple[int, float]:
        now = self._clock()
        bucket = self._buckets.setdefault(key, Bucket(float(capacity), now))
        return take(bucket, now, capacity, rate_per_s, want, debt)


class RedisBuckets:
    """Buckets in Redis, shared by every worker and every router host."""

    def __init__(self, client: aioredis.Redis, prefix: str = "hxp:ratelimit:") -> None:
        self._script = client.register_script(TAKE_SCRIPT)
        self._prefix = prefix

    async def take(
        self, key: str, capacity: int, rate_per_s: float, want: int, debt: float
    ) -> tuple[int, float]:
        granted, retry = await self._script(
            keys=[self._prefix + key], args=[capacity, rate_per_s, want, debt, KEY_TTL_S]
        )
        return int(granted), float(retry)


@dataclass(slots=True)
class _Lease:
    available: float = 0.0
    per_minute: int = 0  # the limit last applied: the periodic debt flush needs it


class RateLimiter:
    """Admits or refuses a key's request; see the module docstring for the leasing."""

    def __init__(self, store: BucketStore) -> None:
        self.store = store
        # API key -> its (requests, tokens) leases; the shared buckets are "r:KEY" and "t:KEY".
        self._leases: dict[str, tuple[_Lease, _Lease]] = {}

    def _pair(self, key: str) -> tuple[_Lease, _Lease]:
        leases = self._leases.get(key)
        if leases is None:
            leases = self._leases[key] = (_Lease(), _Lease())
        return leases

    def admit_leased(self, key: str) -> bool:
        """Admit from this worker's leases (no I/O); False when a lease must be refilled."""
        leases = self._leases.get(key)
        if leases is None:
            return False
        requests, tokens = leases
        if requests.available >= 1 and tokens.available > 0:
            requests.available -= 1
            return True
        return False

    async def admit(
        self, key: str, requests_per_minute: int, tokens_per_minute: int
    ) -> float | None:
        """None when admitted (one request charged), else seconds until a retry may succeed."""
        if self.admit_leased(key):
            return None
        try:
            return await self._refill(key, requests_per_minute, tokens_per_minute)
        except (redis.exceptions.RedisError, OSError) as exc:
            # Rate limiting must not take the whole gateway down with Redis: admit, and say so.
            log.warning("rate limit store unavailable (%s); admitting key %s", exc, key)
            return None

    async def _refill(
        self, key: str, requests_per_minute: int, tokens_per_minute: int
    ) -> float | None:
        requests, tokens = self._pair(key)
        tokens.per_minute = tokens_per_minute
        if tokens.available <= 0:
            granted, retry = await self.store.take(
                "t:" + key,
                tokens_per_minute,
                tokens_per_minute / SECONDS_PER_MINUTE,
                lease_size(tokens_per_minute),
                -tokens.available,
            )
            tokens.available = granted
            if not granted:
                return retry
        if requests.available < 1:
            granted, retry = await self.store.take(
                "r:" + key,
                requests_per_minute,
                requests_per_minute / SECONDS_PER_MINUTE,
                lease_size(requests_per_minute),
                0,
            )
            requests.available += granted
            if not granted:
                return retry
        requests.available -= 1
        return None

    def charge_tokens(self, key: str, count: int) -> None:
        """Charge a finished request's tokens (may leave the lease in debt)."""
        self._pair(key)[1].available -= count

    async def flush_debts(self) -> None:
        """Pay every token debt to the shared buckets (run periodically)."""
        # Only token leases run into debt: a request is charged only once one was granted.
        for key, (_, lease) in list(self._leases.items()):
            if lease.available < 0 and lease.per_minute:
                limit = lease.per_minute
                debt, lease.available = -lease.available, 0.0
                try:
                    await self.store.take("t:" + key, limit, limit / SECONDS_PER_MINUTE, 0, debt)
                except (redis.exceptions.RedisError, OSError) as exc:
                    lease.available -= debt
                    log.warning("rate limit store unavailable (%s)", exc)
                    return
