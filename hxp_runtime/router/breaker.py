"""A circuit breaker per backend: closed -> open -> half-open -> closed.

Closed: requests flow; ``failure_threshold`` consecutive failures open it. Open: the backend is
ejected from routing for ``open_s`` seconds. Half-open: up to ``half_open_requests`` probe
requests may go through at once; a success closes the breaker, a failure opens it again.
Every slot ``acquire`` hands out is given back by ``record_success``, ``record_failure`` or
``release``: a slot that leaked would keep the breaker half-open with no probe allowed, an
outage that outlives its cause. The backend's own health checks may also half-open it early
(``half_open``): each process checks for itself, so every process recovers on its own clock.
A half-open breaker that no request probes is closed by the checks alone (``health_passed``):
an idle backend would otherwise stay half-open, reported as degraded, until a request came.
The clock is injected so that the transitions are testable without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum

# Passing health checks in a row, with no request probing the backend in between, that close a
# half-open breaker: the first may come the instant it half-opens, so two span a whole interval.
UNPROBED_CHECKS_TO_CLOSE = 2


class BreakerState(IntEnum):
    """Values exported as the hxp_router_circuit_breaker_state gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int,
        open_s: float,
        half_open_requests: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self.half_open_requests = half_open_requests
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0
        self._probed = False  # a half-open probe was taken since the last passing check
        self._unprobed_checks = 0

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.open_s:
            self._set(BreakerState.HALF_OPEN)
            self._probes = 0
        return self._state

    def allows(self) -> bool:
        """Whether a request may be sent now (without taking a half-open probe slot)."""
        if self._state is BreakerState.CLOSED:
            return True
        state = self.state
        return state is BreakerState.HALF_OPEN and self._probes < self.half_open_requests

    def acquire(self) -> bool:
        """Take the right to send one request; pair it with record_success/record_failure."""
        if self._state is BreakerState.CLOSED:
            return True
        if not self.allows():
            return False
        self._probes += 1
        self._probed = True
        return True

    def release(self) -> None:
        """Give back a slot acquired for an attempt that was abandoned before it had a result."""
        if self._state is BreakerState.HALF_OPEN:
            self._probes = max(0, self._probes - 1)

    def half_open(self) -> None:
        """Allow probes now, with every slot free: a health check says the backend answers."""
        if self._state is not BreakerState.CLOSED:
            self._probes = 0
            self._set(BreakerState.HALF_OPEN)

    def health_passed(self) -> None:
        """A passing health check: closes a half-open breaker that no request has probed.

        Under traffic the probes decide, as before; this only ends the wait of a backend that
        answers its checks while no request comes to prove it.
        """
        if self.state is not BreakerState.HALF_OPEN:
            return
        self._unprobed_checks = 0 if self._probed else self._unprobed_checks + 1
        self._probed = False
        if self._unprobed_checks >= UNPROBED_CHECKS_TO_CLOSE:
            self._failures = 0
            self._set(BreakerState.CLOSED)

    @property
    def opened_at(self) -> float:
        """When the breaker last opened, on its clock."""
        return self._opened_at

    def record_success(self) -> None:
        self._failures = 0
        if self._state is not BreakerState.CLOSED:
            self._probes = max(0, self._probes - 1)
            self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or (
            self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold
        ):
            self._opened_at = self._clock()
            self._probes = 0
            self._set(BreakerState.OPEN)

    def reconfigure(self, failure_threshold: int, open_s: float, half_open_requests: int) -> None:
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self.half_open_requests = half_open_requests

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            self._probed = False
            self._unprobed_checks = 0
            if self._on_change is not None:
                self._on_change(state)
