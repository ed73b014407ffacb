"""An optional response cache in Redis for deterministic requests (temperature 0).

Only non-streaming requests that set ``temperature`` to 0 (and ask for one choice) are
cached: for those vLLM's greedy decoding gives the same answer every time. The key is a hash
of the endpoint, the model that answers and the request body; entries expire after
``ttl_s``. A Redis failure is a cache miss, never an error for the client.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

log = logging.getLogger(__name__)

PREFIX = "hxp:cache:"


def cacheable(payload: dict[str, Any]) -> bool:
    temperature = payload.get("temperature")
    return (
        payload.get("stream") is not True
        and type(temperature) in (int, float)
        and temperature == 0
        and payload.get("n", 1) == 1
    )


def cache_key(path: bytes, model: str, body: bytes) -> str:
    digest = hashlib.sha256(path + b"\0" + model.encode() + b"\0" + body).hexdigest()
    return PREFIX + digest


class ResponseCache:
    def __init__(self, client: aioredis.Redis, ttl_s: int) -> None:
        self._client = client
        self.ttl_s = ttl_s

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._client.get(key)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("response cache unavailable (%s)", exc)
            return None
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, body: bytes) -> None:
        try:
            await self._client.set(key, body, ex=self.ttl_s)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("response cache unavailable (%s)", exc)
