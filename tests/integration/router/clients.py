"""Client threads for load against a router under test: one thread per argument tuple, each
running ``_run`` until the ``with`` block ends."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Self


class ClientThreads:
    """Starts a thread per entry of ``args`` on entering, stops and joins them on leaving.
    Subclasses loop in ``_run`` while ``self._stop`` is not set."""

    join_s = 30.0

    def __init__(self, args: Sequence[tuple[Any, ...]]) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=a) for a in args]

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.join_s)

    def _run(self, *args: Any) -> None:
        raise NotImplementedError
