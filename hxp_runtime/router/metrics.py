"""The router's Prometheus metrics (prometheus-client), one object per process.

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms with explicit
buckets); labels are bounded: ``model`` and ``backend`` come from the settings file, ``status``
is an HTTP status the router sent, ``strategy``/``reason``/``result`` are fixed sets. A model
name a client sent is never a label value (unknown models are answered with 404 before any
metric is labelled with them).

With several workers, ``PROMETHEUS_MULTIPROC_DIR`` is set by the supervisor before a worker
starts; prometheus-client then keeps values in per-process files and /metrics aggregates them.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

from hxp_runtime.config import Strategy
from hxp_runtime.router.settings import RouterSettings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds. From a cached answer (sub-millisecond) to a long generation (minutes).
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
)  # fmt: skip
TTFT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# Seconds. A cached choice takes microseconds; 0.015 is the semantic decision's target.
DECISION_BUCKETS = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
CONTENT_TYPE = CONTENT_TYPE_LATEST

Increment = Callable[[float], None]
# A histogram child's sum, its buckets' upper bounds (+Inf last) and each bucket's increment.
HistogramParts = tuple[Increment, tuple[float, ...], tuple[Increment, ...]]


def counter_increment(child: Counter) -> Increment:
    """What ``child.inc(n)`` comes to for n >= 0 without an exemplar: its value's increment."""
    return child._value.inc  # prometheus-client 0.26, pinned in pyproject.toml


def histogram_parts(child: Histogram) -> HistogramParts:
    """What ``child.observe(x)`` does, as parts: add x to the sum, count it in the first bucket
    whose bound is >= x (``bisect_left`` over the bounds)."""
    bounds = tuple(child._upper_bounds)
    buckets = tuple(bucket.inc for bucket in child._buckets)
    return child._sum.inc, bounds, buckets


def slo_threshold_s(latency_ms: float) -> float:
    """An SLO's latency bound as a duration bucket bound (seconds); alert rules use the same."""
    return latency_ms / 1000


def bucket_label(bound_s: float) -> str:
    """The ``le`` label value the exposition writes for a bucket bound: an alert rule that
    selects a bucket must spell it exactly so, or its selector matches nothing."""
    return floatToGoString(bound_s)


def slo_thresholds_s(settings: RouterSettings) -> tuple[float, ...]:
    """The latency bounds of the router's SLO and of every backend's: the SLO alert rules count
    the requests faster than each, which only a bucket with that exact bound can answer."""
    specs = [settings.slo, *(backend.slo for backend in settings.backends)]
    return tuple(slo_threshold_s(slo.latency_ms) for slo in specs)


class RouterMetrics:
    def __init__(self, extra_duration_buckets: Iterable[float] = (), *, tls: bool = False) -> None:
        """``extra_duration_buckets`` (seconds) join DURATION_BUCKETS: the SLO thresholds.
        ``tls``: the public port serves HTTPS; only then is its certificate's expiry a series
        (a router without TLS exports none, rather than an expiry of 0).

        Buckets are fixed when the histogram is created: a SIGHUP that changes an SLO's
        latency adds no bucket, a restart does.
        """
        self.duration_buckets = tuple(sorted({*DURATION_BUCKETS, *extra_duration_buckets}))
        self.multiprocess = MULTIPROC_ENV in os.environ
        # Single process: metrics live in this registry. Several: in files, read at scrape.
        self.registry = CollectorRegistry(auto_describe=True)
        registry = None if self.multiprocess else self.registry
        self.requests = Counter(
            "hxp_router_requests",
            "Requests answered, by model, backend and HTTP status.",
            ["model", "backend", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "hxp_router_request_duration_seconds",
            "Time from receiving a request to the end of its answer.",
            ["model", "backend"],
            buckets=self.duration_buckets,
            registry=registry,
        )
        self.ttft = Histogram(
            "hxp_router_time_to_first_token_seconds",
            "Streaming requests: time from receiving the request to its first byte of answer.",
            ["model", "backend"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.upstream_failures = Counter(
            "hxp_router_upstream_failures",
            "Failed attempts at a backend (retried or not), by reason.",
            ["model", "backend", "reason"],
            registry=registry,
        )
        self.decisions = Counter(
            "hxp_router_routing_decisions",
            "Routing decisions a strategy took part in.",
            ["strategy"],
            registry=registry,
        )
        self.model_choice_duration = Histogram(
            "hxp_router_semantic_decision_duration_seconds",
            "Model choice of requests routed by prompt meaning (auto), by how it was made: "
            "cached (a prompt seen before), static (the static table was sure of a new prompt), "
            "embedded (an embeddings call, or one in flight for the same prompt), failed (the "
            "embeddings call failed; chosen without it).",
            ["path"],
            buckets=DECISION_BUCKETS,
            registry=registry,
        )
        self.fallbacks = Counter(
            "hxp_router_fallbacks",
            "Requests answered by another model than the one first chosen.",
            ["model", "backend"],
            registry=registry,
        )
        self.cache = Counter(
            "hxp_router_response_cache_lookups",
            "Response cache lookups (temperature-0 requests), by result.",
            ["result"],
            registry=registry,
        )
        self.breaker_state = Gauge(
            "hxp_router_circuit_breaker_state",
            "Circuit breaker per backend: 0 closed, 1 half-open, 2 open.",
            ["backend"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.upstream_healthy = Gauge(
            "hxp_router_upstream_healthy",
            "Whether the last active health check of a backend passed (1) or not (0).",
            ["backend"],
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.connections = Counter(
            "hxp_router_connections",
            "Client connections, by what happened to them: accepted (by the router's own "
            "front), handed_over (to aiohttp's server, for a request the front leaves to it).",
            ["event"],
            registry=registry,
        )
        self.connections_accepted = self.connections.labels("accepted")
        self.connections_handed_over = self.connections.labels("handed_over")
        self.tls_expiry = (
            Gauge(
                "hxp_router_tls_certificate_expiry_timestamp_seconds",
                "When the public port's TLS certificate expires (Unix time, its notAfter).",
                registry=registry,
                multiprocess_mode="livemostrecent",
            )
            if tls
            else None
        )
        # The label children of the per-request metrics, as the value objects' own methods:
        # prometheus-client's Counter.inc and Histogram.observe check, per call, what these
        # metrics settle once (observable, a count never negative), and a histogram looks for
        # its bucket in a Python loop. ``test_metrics`` holds the result to theirs.
        self._request_children: dict[tuple[str, str, int], Increment] = {}
        self._duration_children: dict[tuple[str, str], HistogramParts] = {}
        self._ttft_children: dict[tuple[str, str], HistogramParts] = {}
        self._decision_children: dict[Strategy, Increment] = {}
        self._model_choice_children: dict[str, Histogram] = {}

    def observe(
        self, model: str, backend: str, status: int, seconds: float, ttft: float | None = None
    ) -> None:
        """One answered request; the label children are cached (a dict hit per call)."""
        key = (model, backend, status)
        increment = self._request_children.get(key)
        if increment is None:
            increment = self._request_children[key] = counter_increment(
                self.requests.labels(model, backend, status)
            )
        increment(1)
        pair = (model, backend)
        duration = self._duration_children.get(pair)
        if duration is None:
            duration = self._duration_children[pair] = histogram_parts(
                self.duration.labels(model, backend)
            )
        add_sum, bounds, buckets = duration
        add_sum(seconds)
        buckets[bisect_left(bounds, seconds)](1)
        if ttft is not None:
            first = self._ttft_children.get(pair)
            if first is None:
                first = self._ttft_children[pair] = histogram_parts(
                    self.ttft.labels(model, backend)
                )
            add_sum, bounds, buckets = first
            add_sum(ttft)
            buckets[bisect_left(bounds, ttft)](1)

    def decided(self, strategies: Iterable[Strategy]) -> None:
        """One routing decision these strategies took part in (cached children, as above)."""
        for strategy in strategies:
            increment = self._decision_children.get(strategy)
            if increment is None:
                increment = self._decision_children[strategy] = counter_increment(
                    self.decisions.labels(strategy.value)
                )
            increment(1)

    def model_choice(self, path: str, seconds: float) -> None:
        """One semantic model choice; ``path`` is cached, static, embedded or failed."""
        child = self._model_choice_children.get(path)
        if child is None:
            child = self._model_choice_children[path] = self.model_choice_duration.labels(path)
        child.observe(seconds)

    def exposition(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
