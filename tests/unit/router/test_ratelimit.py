"""Token-bucket arithmetic, leasing, and token charging (Redis's copy is tested for real in
tests/integration/router)."""

from __future__ import annotations

import pytest

from hxp_runtime.router.ratelimit import Bucket, LocalBuckets, RateLimiter, lease_size, take


def test_a_full_bucket_grants_up_to_what_is_asked() -> None:
    bucket = Bucket(tokens=10.0, updated=0.0)
    assert take(bucket, 0.0, 10, 1.0, want=4, debt=0) == (4, 0.0)
    assert take(bucket, 0.0, 10, 1.0, want=10, debt=0) == (6, 0.0)
    granted, retry = take(bucket, 0.0, 10, 1.0, want=1, debt=0)
    assert granted == 0 and retry == pytest.approx(1.0)


def test_refill_is_linear_and_capped_at_capacity() -> None:
    bucket = Bucket(tokens=0.0, updated=0.0)
    assert take(bucket, 2.5, 10, 2.0, want=100, debt=0) == (5, 0.0)
    assert take(bucket, 1000.0, 10, 2.0, want=100, debt=0) == (10, 0.0)


def test_debt_is_charged_before_granting_and_may_go_negative() -> None:
    bucket = Bucket(tokens=10.0, updated=0.0)
    granted, retry = take(bucket, 0.0, 10, 1.0, want=1, debt=15)
    assert granted == 0
    assert bucket.tokens == -5.0
    assert retry == pytest.approx(6.0)  # from -5 back to one whole token at 1 token/s
    assert take(bucket, 0.0, 10, 1.0, want=0, debt=1) == (0, 0.0)  # paying debt only


def test_lease_is_a_tenth_of_a_second_of_refill_at_least_one() -> None:
    assert lease_size(5) == 1
    assert lease_size(600) == 1
    assert lease_size(6000) == 10
    assert lease_size(60_000_000) == 100_000


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_requests_per_minute_admit_the_burst_then_refuse() -> None:
    clock = Clock()
    limiter = RateLimiter(LocalBuckets(clock))
    results = [await limiter.admit("k", 5, 1000) for _ in range(6)]
    assert results[:5] == [None] * 5
    assert results[5] == pytest.approx(12.0)  # 5/min refills one request every 12 s
    clock.now += 12
    assert await limiter.admit("k", 5, 1000) is None
    assert await limiter.admit("other", 5, 1000) is None  # buckets are per key


async def test_tokens_are_charged_after_the_fact() -> None:
    clock = Clock()
    limiter = RateLimiter(LocalBuckets(clock))
    assert await limiter.admit("k", 100, 60) is None
    limiter.charge_tokens("k", 500)  # far over the 60 tokens/min budget
    retry = await limiter.admit("k", 100, 60)
    assert retry is not None and retry > 60  # the debt must refill first
    clock.now += retry
    assert await limiter.admit("k", 100, 60) is None


async def test_debts_are_flushed_to_the_shared_bucket() -> None:
    clock = Clock()
    store = LocalBuckets(clock)
    first, second = RateLimiter(store), RateLimiter(store)  # two workers, one store
    assert await first.admit("k", 100, 60) is None
    first.charge_tokens("k", 70)
    await first.flush_debts()
    assert await second.admit("k", 100, 60) is not None  # the other worker sees the debt
