"""Usage accounting: tokens per key and model, written to PostgreSQL in batches.

``record`` only adds to an in-memory tally (a dict update, no I/O); a background task writes
one row per (key, model) per flush period. A failed write keeps the tally for the next try, so
a PostgreSQL outage delays accounting but neither loses it nor slows requests (the tally is
capped: past ``MAX_PENDING_PERIODS`` failed flushes the oldest counts are dropped and logged).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from hxp_runtime.router.store import UsageRow

log = logging.getLogger(__name__)

MAX_PENDING_PERIODS = 60
_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_USAGE = b'"usage"'

Writer = Callable[[list[UsageRow]], Awaitable[None]]


def usage_of(body: bytes) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) from an OpenAI response body or SSE event, if any.

    Looks only after the last ``"usage"`` key, without decoding the JSON: the router does not
    parse response bodies.
    """
    at = body.rfind(_USAGE)
    if at < 0:
        return None
    tail = body[at:]
    prompt = _PROMPT.search(tail)
    if prompt is None:
        return None
    completion = _COMPLETION.search(tail)
    return int(prompt.group(1)), int(completion.group(1)) if completion else 0


class UsageRecorder:
    def __init__(self, writer: Writer | None, interval_s: float) -> None:
        self._writer = writer
        self._interval_s = interval_s
        # (key, model) -> [requests, errors, prompt_tokens, completion_tokens]
        self._tally: dict[tuple[str, str], list[int]] = {}
        self._pending: list[list[UsageRow]] = []
        self._since = datetime.now(UTC)

    def record(self, key: str, model: str, prompt: int, completion: int, error: bool) -> None:
        counts = self._tally.get((key, model))
        if counts is None:
            counts = self._tally[(key, model)] = [0, 0, 0, 0]
        counts[0] += 1
        counts[1] += error
        counts[2] += prompt
        counts[3] += completion

    def take_rows(self) -> list[UsageRow]:
        now = datetime.now(UTC)
        tally, self._tally = self._tally, {}
        rows: list[UsageRow] = [
            (self._since, now, key, model, c[0], c[1], c[2], c[3])
            for (key, model), c in tally.items()
        ]
        self._since = now
        return rows

    async def flush(self) -> None:
        rows = self.take_rows()
        if rows:
            self._pending.append(rows)
        if self._writer is None:
            self._pending.clear()
            return
        while self._pending:
            try:
                await self._writer(self._pending[0])
            except Exception as exc:  # any failure: keep the rows, try later
                log.warning("writing usage to PostgreSQL failed (%s); will retry", exc)
                if len(self._pending) > MAX_PENDING_PERIODS:
                    dropped = self._pending.pop(0)
                    log.error("dropped %d usage rows after repeated failures", len(dropped))
                return
            self._pending.pop(0)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.flush()
