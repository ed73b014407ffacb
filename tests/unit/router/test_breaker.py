"""The circuit breaker's states and transitions, on an injected clock."""

from __future__ import annotations

from hxp_runtime.router.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, changes: list[BreakerState] | None = None) -> CircuitBreaker:
    return CircuitBreaker(
        3, 30.0, 2, clock=clock, on_change=changes.append if changes is not None else None
    )


def opened(cb: CircuitBreaker) -> CircuitBreaker:
    """``cb`` after as many failures in a row as open it."""
    for _ in range(cb.failure_threshold):
        cb.record_failure()
    return cb


def test_opens_after_consecutive_failures_only() -> None:
    clock = Clock()
    cb = breaker(clock)
    cb.record_failure()
    cb.record_failure()
    cb.record_success()  # resets the count
    cb.record_failure()
    cb.record_failure()
    assert cb.state is BreakerState.CLOSED and cb.acquire()
    cb.record_failure()
    assert cb.state is BreakerState.OPEN
    assert not cb.allows() and not cb.acquire()


def test_half_open_after_the_open_period_lets_a_limited_number_of_probes() -> None:
    clock = Clock()
    cb = breaker(clock)
    opened(cb)
    clock.now += 29.9
    assert cb.state is BreakerState.OPEN
    clock.now += 0.2
    assert cb.state is BreakerState.HALF_OPEN
    assert cb.allows()
    assert cb.acquire() and cb.acquire()
    assert not cb.acquire()  # half_open_requests = 2 probes at once


def test_a_successful_probe_closes_a_failed_one_reopens() -> None:
    clock = Clock()
    changes: list[BreakerState] = []
    cb = breaker(clock, changes)
    opened(cb)
    clock.now += 31
    assert cb.acquire()
    cb.record_failure()
    assert cb.state is BreakerState.OPEN
    clock.now += 29
    assert cb.state is BreakerState.OPEN  # the open period restarted at the failed probe
    clock.now += 2
    assert cb.acquire()
    cb.record_success()
    assert cb.state is BreakerState.CLOSED and cb.allows()
    assert changes == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


def test_reconfigure_applies_new_thresholds() -> None:
    clock = Clock()
    cb = breaker(clock)
    cb.reconfigure(failure_threshold=1, open_s=5, half_open_requests=1)
    cb.record_failure()
    assert cb.state is BreakerState.OPEN
    clock.now += 5
    assert cb.state is BreakerState.HALF_OPEN


def test_a_released_probe_slot_can_be_taken_again() -> None:
    clock = Clock()
    cb = breaker(clock)
    opened(cb)
    clock.now += 30
    assert cb.acquire() and cb.acquire() and not cb.acquire()
    cb.release()  # an abandoned probe: no verdict, but its slot is free again
    assert cb.state is BreakerState.HALF_OPEN and cb.acquire()
    assert not cb.acquire()


def test_half_open_ends_the_open_period_early_with_every_slot_free() -> None:
    clock = Clock()
    changes: list[BreakerState] = []
    cb = breaker(clock, changes)
    cb.half_open()
    assert cb.state is BreakerState.CLOSED and changes == []  # a closed breaker stays closed
    opened(cb)
    assert cb.opened_at == clock.now
    clock.now += 1
    cb.half_open()
    assert cb.state is BreakerState.HALF_OPEN
    assert cb.acquire() and cb.acquire() and not cb.acquire()
    cb.half_open()  # probes lost on the way: a later health check frees their slots
    assert cb.acquire()
    cb.record_success()
    assert cb.state is BreakerState.CLOSED
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_passing_checks_close_a_half_open_breaker_that_no_request_probes() -> None:
    clock = Clock()
    changes: list[BreakerState] = []
    cb = breaker(clock, changes)
    opened(cb)
    clock.now += 31
    cb.health_passed()  # the first check may come the instant it half-opens
    assert cb.state is BreakerState.HALF_OPEN
    cb.health_passed()  # a whole interval with no request to probe it
    assert cb.state is BreakerState.CLOSED
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
    cb.record_failure()
    cb.record_failure()
    assert cb.state is BreakerState.CLOSED  # the failure count started again


def test_a_probe_between_checks_leaves_the_decision_to_the_probes() -> None:
    clock = Clock()
    cb = breaker(clock)
    opened(cb)
    clock.now += 31
    cb.health_passed()
    assert cb.acquire()  # traffic probes it: its result decides, not the checks
    cb.health_passed()
    cb.health_passed()
    assert cb.state is BreakerState.HALF_OPEN
    cb.record_failure()
    assert cb.state is BreakerState.OPEN


def test_checks_do_not_close_an_open_breaker() -> None:
    clock = Clock()
    cb = breaker(clock)
    opened(cb)
    for _ in range(5):
        cb.health_passed()
    assert cb.state is BreakerState.OPEN  # only the open period or a failed check ends it
