"""One call in flight per key: requests that ask the same thing while it runs wait for it.

Used where a burst of requests would otherwise send the same slow call once each: a database
key's lookup (auth) and a new prompt's embeddings call (pipeline).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

K = TypeVar("K")
T = TypeVar("T")


async def shared_call(
    pending: dict[K, asyncio.Future[T]], key: K, start: Callable[[], Coroutine[Any, Any, T]]
) -> T:
    """The result of ``start()``, started only when ``pending`` holds no call for ``key``.

    The call stays in ``pending`` until it ends. Shielded: a request that goes away does not
    cancel the call the others wait for.
    """
    flight = pending.get(key)
    if flight is None:
        flight = asyncio.ensure_future(start())
        pending[key] = flight
        flight.add_done_callback(lambda _: pending.pop(key, None))
    return await asyncio.shield(flight)
