"""The router's duration histogram has a bucket at every SLO latency of its settings, since the
SLO alert rules count the requests faster than each (hxp_runtime.observability.alerts)."""

from __future__ import annotations

from hxp_runtime.config import Strategy
from hxp_runtime.router.app import Gateway
from hxp_runtime.router.metrics import (
    DURATION_BUCKETS,
    RouterMetrics,
    bucket_label,
    slo_thresholds_s,
)
from hxp_runtime.router.settings import RouterSecrets, RouterSettings

SETTINGS = {
    "slo": {"latency_ms": 100, "throughput_rps": 1000},
    "backends": [
        {
            "name": "hermes",
            "served_name": "hermes-2",
            "url": "http://127.0.0.1:11401",
            "slo": {"latency_ms": 1500, "throughput_rps": 30},
        },
        {
            "name": "phi3",
            "served_name": "phi-3-mini",
            "url": "http://127.0.0.1:11403",
            "slo": {"latency_ms": 333, "throughput_rps": 60},
        },
        {
            "name": "phi3",
            "served_name": "phi-3-mini",
            "url": "http://127.0.0.2:11403",
            "slo": {"latency_ms": 333, "throughput_rps": 60},
        },
    ],
}


def _le_values(metrics: RouterMetrics) -> list[str]:
    prefix = "hxp_router_request_duration_seconds_bucket{"
    lines = metrics.exposition().decode().splitlines()
    return [line.split('le="')[1].split('"')[0] for line in lines if line.startswith(prefix)]


def test_extra_buckets_are_merged_sorted_and_deduplicated() -> None:
    metrics = RouterMetrics([1.5, 0.5, 1.5, 0.333])
    assert metrics.duration_buckets == tuple(sorted({*DURATION_BUCKETS, 1.5, 0.333}))
    assert len(metrics.duration_buckets) == len(DURATION_BUCKETS) + 2
    metrics.observe("hermes", "hermes", 200, 1.2)
    assert _le_values(metrics) == [bucket_label(b) for b in metrics.duration_buckets] + ["+Inf"]


def test_without_extra_buckets_the_defaults_stay() -> None:
    assert RouterMetrics().duration_buckets == DURATION_BUCKETS


def test_slo_thresholds_are_the_router_and_every_backend() -> None:
    settings = RouterSettings.model_validate(SETTINGS)
    assert sorted(set(slo_thresholds_s(settings))) == [0.1, 0.333, 1.5]


def test_bucket_label_is_what_the_exposition_writes() -> None:
    metrics = RouterMetrics([1.5, 0.333])
    metrics.observe("hermes", "hermes", 200, 0.2)
    written = _le_values(metrics)
    for bound in (0.1, 0.333, 1.0, 1.5, 300.0):
        assert bucket_label(bound) in written


def test_the_gateway_counts_at_its_slo_thresholds() -> None:
    gateway = Gateway(RouterSettings.model_validate(SETTINGS), RouterSecrets())
    assert {0.1, 0.333, 1.5} <= set(gateway.metrics.duration_buckets)


def _without_created(metrics: RouterMetrics) -> list[str]:
    """The exposition less its creation timestamps, which differ between two instances."""
    return [
        line
        for line in metrics.exposition().decode().splitlines()
        if "_created" not in line.split("{")[0]
    ]


def test_the_request_metrics_count_as_prometheus_client_s_own_methods_do() -> None:
    """``observe`` and ``decided`` write the value objects directly (no per-call checks, the
    bucket found by bisection); the exposition is what ``inc`` and ``observe`` would give."""
    # Every bound itself, just around it, zero, a negative clock step, past the last bound.
    values = [0.0, -0.001, 400.0, 1e9]
    for bound in (*DURATION_BUCKETS, 0.333, 1.5):
        values += [bound, bound * 0.999999, bound * 1.000001]
    direct, reference = RouterMetrics([0.333, 1.5]), RouterMetrics([0.333, 1.5])
    for i, seconds in enumerate(values):
        model, backend, status = ("phi3", f"phi3-{i % 2}", (200, 429, 502)[i % 3])
        ttft = seconds / 2 if i % 4 else None
        direct.observe(model, backend, status, seconds, ttft)
        reference.requests.labels(model, backend, status).inc()
        reference.duration.labels(model, backend).observe(seconds)
        if ttft is not None:
            reference.ttft.labels(model, backend).observe(ttft)
        strategies = list(Strategy)[: 1 + i % 3]
        direct.decided(strategies)
        for strategy in strategies:
            reference.decisions.labels(strategy.value).inc()
    exposition = _without_created(direct)
    assert exposition == _without_created(reference)
    text = "\n".join(exposition)
    assert 'hxp_router_request_duration_seconds_bucket{backend="phi3-0",le="+Inf"' in text
    assert "hxp_router_time_to_first_token_seconds_sum" in text
