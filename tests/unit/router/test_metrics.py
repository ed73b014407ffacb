"""The router's duration histogram has a bucket at every SLO latency of its settings, since the
SLO alert rules count the requests faster than each (hxp_runtime.observability.alerts)."""

from __future__ import annotations

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
