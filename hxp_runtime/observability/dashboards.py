"""Grafana dashboards of a deployment, built from hxp.yml with grafana-foundation-sdk.

``dashboards(cfg)`` returns every board as Grafana's JSON model, keyed by its file name; the
metrics host provisions them from files. Queries select on the scrape labels ``scrape.py``
writes (``service`` = job, ``host``, and ``model`` on model servers), so these boards, the alert
rules and the scrape jobs share one contract.

What the boards show follows the configuration: the overview has one row per model with that
model's SLO as a threshold line, panels of features a deployment has turned off (prefix cache,
response cache) are left out, and the GPU, PostgreSQL, Redis and Qdrant boards exist only when
hxp.yml has NVIDIA LLM hosts or those sections.

``panel_queries`` and ``template_variables`` let a test run every panel's query against a real
Prometheus. All queries work on Prometheus 2.42: rates over ``$__rate_interval``, quantiles as
``histogram_quantile`` over ``sum by (le, ...)`` of bucket rates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as board_builders
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as board_models
from grafana_foundation_sdk.models import prometheus as prometheus_models

from hxp_runtime.config import HostGroup, HxpConfig, Model
from hxp_runtime.router.breaker import BreakerState

DEFAULT_DATASOURCE_UID = "hxp-prometheus"
RATE = "$__rate_interval"
LATENCY_QUANTILES = (0.5, 0.95, 0.99)
# Values panel_queries gives Grafana's built-in variables: what Grafana would use for a one-hour
# view of a Prometheus scraped every 15 s.
BUILTIN_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
# $name, ${name} and ${name:format}: the forms a panel query may use.
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")

Query = tuple[str, str]  # (PromQL expression, legend)
AnyPanel = TypeVar("AnyPanel", timeseries.Panel, stat.Panel, statetimeline.Panel)


# --------------------------------------------------------------------------- PromQL


def _rate(metric: str, selector: str = "") -> str:
    matchers = f"{{{selector}}}" if selector else ""
    return f"rate({metric}{matchers}[{RATE}])"


def _quantile(q: float, histogram: str, selector: str = "", by: str = "") -> str:
    group = ", ".join(label for label in ("le", by) if label)
    return f"histogram_quantile({q}, sum by ({group}) ({_rate(histogram + '_bucket', selector)}))"


def _quantiles(histogram: str, selector: str = "") -> list[Query]:
    return [(_quantile(q, histogram, selector), f"p{round(q * 100)}") for q in LATENCY_QUANTILES]


def _share(part: str, whole: str, by: str = "") -> str:
    """sum(part) / sum(whole), grouped ``by``; a group whose part has no series (no errors yet)
    is a share of 0 rather than a gap."""
    total = f"sum by ({by}) ({whole})" if by else f"sum({whole})"
    share = f"sum by ({by}) ({part})" if by else f"sum({part})"
    return f"({share} or 0 * {total}) / {total}"


# --------------------------------------------------------------------------- panels


def _targets(panel: AnyPanel, queries: Sequence[Query]) -> AnyPanel:
    for index, (expr, legend) in enumerate(queries):
        panel = panel.with_target(
            prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + index))
        )
    return panel


def _graph(
    title: str,
    queries: Sequence[Query],
    unit: str = "short",
    *,
    description: str = "",
    slo_s: float | None = None,
    maximum: float | None = None,
) -> timeseries.Panel:
    """A time series panel; ``slo_s`` draws the latency objective as a dashed red line."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .span(8)
        .height(8)
        .min(0)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )
    if maximum is not None:
        panel = panel.max(maximum)
    if slo_s is not None:
        panel = panel.thresholds(
            board_builders.ThresholdsConfig()
            .mode(board_models.ThresholdsMode.ABSOLUTE)
            .steps([board_models.Threshold(None, "green"), board_models.Threshold(slo_s, "red")])
        ).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.DASHED)
        )
    return _targets(panel, queries)


def _stat(title: str, queries: Sequence[Query]) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .span(4)
        .height(4)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
    )
    return _targets(panel, queries)


def _states(
    title: str, queries: Sequence[Query], states: Mapping[int, tuple[str, str]]
) -> statetimeline.Panel:
    """A state timeline; ``states`` maps each value to its (text, colour)."""
    mapping = board_models.ValueMap(
        {
            str(int(value)): board_models.ValueMappingResult(text=text, color=color, index=index)
            for index, (value, (text, color)) in enumerate(sorted(states.items()))
        }
    )
    panel = statetimeline.Panel().title(title).span(12).height(8).mappings([mapping])
    return _targets(panel, queries)


BREAKER_STATES: dict[int, tuple[str, str]] = {
    BreakerState.CLOSED: ("closed", "green"),
    BreakerState.HALF_OPEN: ("half-open", "yellow"),
    BreakerState.OPEN: ("open", "red"),
}
HEALTH_STATES: dict[int, tuple[str, str]] = {0: ("failing", "red"), 1: ("healthy", "green")}


# --------------------------------------------------------------------------- boards


def _board(
    cfg: HxpConfig,
    slug: str,
    title: str,
    description: str,
    panels: Sequence[Builder[board_models.Panel]],
    variables: Sequence[board_builders.QueryVariable] = (),
) -> board_builders.Dashboard:
    """A board in the shared frame: uid hxp-<slug>, tags, time range, links to its siblings."""
    board = (
        board_builders.Dashboard(f"{cfg.name}: {title}")
        .uid(f"hxp-{slug}")
        .description(description)
        .tags(["hxp", slug])
        .timezone("browser")
        .time("now-1h", "now")
        .refresh("30s")
        .readonly()
        .link(
            board_builders.DashboardLink("hxp")
            .type(board_models.DashboardLinkType.DASHBOARDS)
            .tags(["hxp"])
            .as_dropdown(True)
            .keep_time(True)
            .include_vars(False)
        )
    )
    for variable in variables:
        board = board.with_variable(variable)
    for panel in panels:
        board = board.with_panel(panel)
    return board


def _variable(name: str, query: str, *, multi: bool = False) -> board_builders.QueryVariable:
    variable = (
        board_builders.QueryVariable(name)
        .label(name)
        .query(query)
        .refresh(board_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(board_models.VariableSort.ALPHABETICAL_ASC)
    )
    if multi:
        variable = variable.multi(True).include_all(True).all_value(".+")
    return variable


def _router_health_panels() -> list[timeseries.Panel | statetimeline.Panel]:
    """The router's view of its backends: strategies, fallbacks, breakers, health checks."""
    return [
        _graph(
            "Routing decisions by strategy",
            [
                (
                    f"sum by (strategy) ({_rate('hxp_router_routing_decisions_total')})",
                    "{{strategy}}",
                )
            ],
            "ops",
        ),
        _graph(
            "Fallbacks by model",
            [(f"sum by (model) ({_rate('hxp_router_fallbacks_total')})", "{{model}}")],
            "ops",
            description="Requests answered by another model than the one first chosen.",
        ),
        _graph(
            "Client connections",
            [
                (
                    f"sum by (event) ({_rate('hxp_router_connections_total')})",
                    "{{event}}",
                )
            ],
            "ops",
            description="Connections the router accepted, and those it handed to aiohttp's "
            "server for a request its own front does not serve (plain endpoints, Expect, "
            "chunked bodies, malformed input). A rising share handed over means a client "
            "is off the fast path.",
        ),
        _graph(
            "Healthy backends",
            [
                ("sum(min by (backend) (hxp_router_upstream_healthy))", "healthy"),
                ("count(min by (backend) (hxp_router_upstream_healthy))", "backends"),
            ],
            description="Backends whose last active health check passed.",
        ),
        _states(
            "Circuit breaker state by backend",
            [("max by (backend) (hxp_router_circuit_breaker_state)", "{{backend}}")],
            BREAKER_STATES,
        ),
        _states(
            "Health check by backend",
            [("min by (backend) (hxp_router_upstream_healthy)", "{{backend}}")],
            HEALTH_STATES,
        ),
    ]


def _tokens_panel(title: str, server: str, *, generates: bool = True) -> timeseries.Panel:
    queries = [(f"sum({_rate('vllm:prompt_tokens_total', server)})", "prompt")]
    if generates:
        queries.append((f"sum({_rate('vllm:generation_tokens_total', server)})", "generated"))
    return _graph(title, queries)


def _queue_panel(title: str, server: str) -> timeseries.Panel:
    return _graph(
        title,
        [
            (f"sum(vllm:num_requests_running{{{server}}})", "running"),
            (f"sum(vllm:num_requests_waiting{{{server}}})", "waiting"),
        ],
    )


def _kv_cache_panel(title: str, server: str) -> timeseries.Panel:
    return _graph(
        title,
        [(f"max(vllm:kv_cache_usage_perc{{{server}}})", "used")],
        "percentunit",
        maximum=1,
    )


def _prefix_cache_panel(title: str, server: str) -> timeseries.Panel:
    hits = _share(
        _rate("vllm:prefix_cache_hits_total", server),
        _rate("vllm:prefix_cache_queries_total", server),
    )
    return _graph(title, [(hits, "hits")], "percentunit", maximum=1)


def _model_panels(model: Model) -> list[timeseries.Panel]:
    """One model as its clients and its vLLM server see it, against its SLO."""
    name = model.name
    router = f'model="{name}"'
    server = f'service="vllm", model="{name}"'
    slo_s = model.slo.latency_ms / 1000
    generates = model.task == "generate"
    panels = [
        _graph(
            f"{name}: requests/s by status",
            [(f"sum by (status) ({_rate('hxp_router_requests_total', router)})", "{{status}}")],
            "reqps",
            description="Answers the router sent for this model, by HTTP status.",
        ),
        _graph(
            f"{name}: error ratio",
            [
                (
                    _share(
                        _rate("hxp_router_requests_total", f'{router}, status=~"5.."'),
                        _rate("hxp_router_requests_total", router),
                    ),
                    "5xx share",
                )
            ],
            "percentunit",
            maximum=1,
        ),
        _graph(
            f"{name}: end-to-end latency",
            _quantiles("hxp_router_request_duration_seconds", router),
            "s",
            description=f"As clients see it, through the router; SLO {model.slo.latency_ms:g} ms.",
            slo_s=slo_s,
        ),
    ]
    if generates:
        panels.append(
            _graph(
                f"{name}: time to first token and inter-token latency",
                [
                    (_quantile(0.95, "vllm:time_to_first_token_seconds", server), "TTFT p95"),
                    (_quantile(0.95, "vllm:inter_token_latency_seconds", server), "ITL p95"),
                ],
                "s",
                description=f"At the vLLM server; SLO {model.slo.latency_ms:g} ms.",
                slo_s=slo_s,
            )
        )
    panels += [
        _tokens_panel(f"{name}: tokens/s", server, generates=generates),
        _queue_panel(f"{name}: running and waiting requests", server),
    ]
    if generates:
        panels.append(_kv_cache_panel(f"{name}: KV cache usage", server))
    if generates and model.engine.enable_prefix_caching:
        panels.append(_prefix_cache_panel(f"{name}: prefix cache hit rate", server))
    return panels


def _overview(cfg: HxpConfig) -> board_builders.Dashboard:
    stack = [
        _stat("Targets down", [("count(up == 0) or vector(0)", "down")]),
        _graph(
            "Targets up by service",
            [("sum by (service) (up)", "{{service}}")],
            description="Scrape targets answering, by service (job).",
        ).span(10),
        _graph(
            "Requests/s by model",
            [(f"sum by (model) ({_rate('hxp_router_requests_total')})", "{{model}}")],
            "reqps",
        ).span(10),
        *_router_health_panels(),
    ]
    board = _board(
        cfg,
        "overview",
        "Overview",
        "The stack at a glance, then one row per model against its SLO.",
        stack,
    )
    for model in cfg.models:
        row = board_builders.Row(f"{model.name} ({model.routing_name}, {model.task})")
        for panel in _model_panels(model):
            row = row.with_panel(panel)
        board = board.with_row(row)
    return board


def _router(cfg: HxpConfig) -> board_builders.Dashboard:
    requests = "hxp_router_requests_total"
    panels: list[timeseries.Panel | statetimeline.Panel] = [
        _graph("Router up", [('up{service="router"}', "{{host}}")], maximum=1),
        _graph(
            "Requests/s by status",
            [(f"sum by (status) ({_rate(requests)})", "{{status}}")],
            "reqps",
        ),
        _graph(
            "Error ratio by model",
            [
                (
                    _share(_rate(requests, 'status=~"5.."'), _rate(requests), by="model"),
                    "{{model}}",
                ),
                (_share(_rate(requests, 'status=~"5.."'), _rate(requests)), "all"),
            ],
            "percentunit",
            description="Share of answers with a 5xx status.",
            maximum=1,
        ),
        _graph(
            "Request duration",
            _quantiles("hxp_router_request_duration_seconds"),
            "s",
            slo_s=cfg.router.slo.latency_ms / 1000,
        ),
        _graph(
            "Request duration p95 by model",
            [(_quantile(0.95, "hxp_router_request_duration_seconds", by="model"), "{{model}}")],
            "s",
        ),
        _graph(
            "Time to first byte p95 by model (streaming)",
            [(_quantile(0.95, "hxp_router_time_to_first_token_seconds", by="model"), "{{model}}")],
            "s",
        ),
        _graph(
            "Upstream failures by reason",
            [(f"sum by (reason) ({_rate('hxp_router_upstream_failures_total')})", "{{reason}}")],
            "ops",
            description="Failed attempts at a backend, retried or not.",
        ),
        *_router_health_panels(),
    ]
    if cfg.router.cache.enabled:
        lookups = "hxp_router_response_cache_lookups_total"
        panels.append(
            _graph(
                "Response cache hit ratio",
                [(_share(_rate(lookups, 'result="hit"'), _rate(lookups)), "hits")],
                "percentunit",
                description="Lookups happen for temperature-0 requests only.",
                maximum=1,
            )
        )
    return _board(
        cfg, "router", "Router", "The hxp router: traffic, latency and its backends.", panels
    )


def _vllm(cfg: HxpConfig) -> board_builders.Dashboard:
    server = 'service="vllm", model=~"$model"'
    panels = [
        _graph("Server up", [(f"up{{{server}}}", "{{host}}")], maximum=1),
        _graph(
            "Finished requests/s by reason",
            [
                (
                    f"sum by (finished_reason) ({_rate('vllm:request_success_total', server)})",
                    "{{finished_reason}}",
                )
            ],
            "reqps",
        ),
        _queue_panel("Running and waiting requests", server),
        _graph("End-to-end latency", _quantiles("vllm:e2e_request_latency_seconds", server), "s"),
        _graph("Time to first token", _quantiles("vllm:time_to_first_token_seconds", server), "s"),
        _graph("Inter-token latency", _quantiles("vllm:inter_token_latency_seconds", server), "s"),
        _graph("Queue time", _quantiles("vllm:request_queue_time_seconds", server), "s"),
        _tokens_panel("Tokens/s", server),
        _kv_cache_panel("KV cache usage", server),
        _graph(
            "Preemptions/s",
            [(f"sum({_rate('vllm:num_preemptions_total', server)})", "preempted")],
            "ops",
            description="Requests evicted from the KV cache to make room; a sign of overload.",
        ),
    ]
    if any(m.task == "generate" and m.engine.enable_prefix_caching for m in cfg.models):
        panels.append(_prefix_cache_panel("Prefix cache hit rate", server))
    return _board(
        cfg,
        "vllm",
        "vLLM",
        "One vLLM model server (choose it with model).",
        panels,
        [_variable("model", 'label_values(up{service="vllm"}, model)')],
    )


def _gpus(cfg: HxpConfig) -> board_builders.Dashboard:
    gpu = 'service="gpu", host=~"$host"'
    legend = "{{host}} GPU {{gpu}}"
    panels = [
        _graph(
            "NVML answering",
            [(f"hxp_gpu_nvml_up{{{gpu}}}", "{{host}}")],
            description="0: the exporter runs but the NVIDIA driver did not answer.",
            maximum=1,
        ),
        _graph("Utilisation", [(f"hxp_gpu_utilization_ratio{{{gpu}}}", legend)], "percentunit"),
        _graph(
            "Memory used",
            [
                (
                    f"hxp_gpu_memory_used_bytes{{{gpu}}} / hxp_gpu_memory_total_bytes{{{gpu}}}",
                    legend,
                )
            ],
            "percentunit",
            maximum=1,
        ),
        _graph("Memory used (bytes)", [(f"hxp_gpu_memory_used_bytes{{{gpu}}}", legend)], "bytes"),
        _graph("Temperature", [(f"hxp_gpu_temperature_celsius{{{gpu}}}", legend)], "celsius"),
        _graph(
            "Power draw against limit",
            [
                (f"hxp_gpu_power_watts{{{gpu}}}", legend),
                (f"hxp_gpu_power_limit_watts{{{gpu}}}", "{{host}} GPU {{gpu}} limit"),
            ],
            "watt",
        ),
    ]
    return _board(
        cfg,
        "gpus",
        "GPUs",
        "NVIDIA GPUs of the LLM hosts (hxp GPU exporter).",
        panels,
        [_variable("host", 'label_values(up{service="gpu"}, host)', multi=True)],
    )


def _postgresql(cfg: HxpConfig) -> board_builders.Dashboard:
    assert cfg.database is not None
    db = f'datname="{cfg.database.name}"'
    panels = [
        _graph("Exporter reaches PostgreSQL", [('pg_up{service="postgres"}', "{{host}}")]),
        _graph(
            "Connections by state",
            [(f"sum by (state) (pg_stat_activity_count{{{db}}})", "{{state}}")],
        ),
        _graph(
            "Connections used",
            [
                (
                    "sum(pg_stat_database_numbackends) / max(pg_settings_max_connections)",
                    "of max_connections",
                )
            ],
            "percentunit",
            description="All databases of the server against its max_connections.",
            maximum=1,
        ),
        _graph(
            "Transactions/s",
            [
                (f"sum({_rate('pg_stat_database_xact_commit', db)})", "commit"),
                (f"sum({_rate('pg_stat_database_xact_rollback', db)})", "rollback"),
            ],
            "ops",
        ),
        _graph(
            "Buffer cache hit ratio",
            [
                (
                    f"sum({_rate('pg_stat_database_blks_hit', db)}) / "
                    f"(sum({_rate('pg_stat_database_blks_hit', db)}) + "
                    f"sum({_rate('pg_stat_database_blks_read', db)}))",
                    "hits",
                )
            ],
            "percentunit",
            maximum=1,
        ),
        _graph(
            "Rows/s",
            [
                (f"sum({_rate(f'pg_stat_database_tup_{kind}', db)})", kind)
                for kind in ("fetched", "inserted", "updated", "deleted")
            ],
            "ops",
        ),
        _graph(
            "Deadlocks/s",
            [(f"sum({_rate('pg_stat_database_deadlocks', db)})", "deadlocks")],
            "ops",
        ),
        _graph(
            "Longest transaction",
            [(f"max(pg_stat_activity_max_tx_duration{{{db}}})", "longest")],
            "s",
        ),
        _graph("Locks by mode", [(f"sum by (mode) (pg_locks_count{{{db}}})", "{{mode}}")]),
        _graph("Database size", [(f"pg_database_size_bytes{{{db}}}", "{{datname}}")], "bytes"),
    ]
    return _board(
        cfg, "postgresql", "PostgreSQL", f"The router's database {cfg.database.name}.", panels
    )


def _redis(cfg: HxpConfig) -> board_builders.Dashboard:
    panels = [
        _graph("Exporter reaches Redis", [('redis_up{service="redis"}', "{{host}}")]),
        _graph(
            "Clients",
            [
                ("sum(redis_connected_clients)", "connected"),
                ("sum(redis_blocked_clients)", "blocked"),
            ],
        ),
        _graph(
            "Memory used",
            [
                ("sum(redis_memory_used_bytes)", "used"),
                ("sum(redis_memory_max_bytes)", "maxmemory"),
            ],
            "bytes",
        ),
        _graph(
            "Commands/s",
            [(f"sum({_rate('redis_commands_processed_total')})", "commands")],
            "ops",
        ),
        _graph(
            "Keyspace hit ratio",
            [
                (
                    f"sum({_rate('redis_keyspace_hits_total')}) / "
                    f"(sum({_rate('redis_keyspace_hits_total')}) + "
                    f"sum({_rate('redis_keyspace_misses_total')}))",
                    "hits",
                )
            ],
            "percentunit",
            maximum=1,
        ),
        _graph(
            "Evicted and expired keys/s",
            [
                (f"sum({_rate('redis_evicted_keys_total')})", "evicted"),
                (f"sum({_rate('redis_expired_keys_total')})", "expired"),
            ],
            "ops",
            description="Evictions mean maxmemory is reached (cache.maxmemory_mb in hxp.yml).",
        ),
        _graph("Keys by database", [("sum by (db) (redis_db_keys)", "{{db}}")]),
        _graph(
            "Network",
            [
                (f"sum({_rate('redis_net_input_bytes_total')})", "in"),
                (f"sum({_rate('redis_net_output_bytes_total')})", "out"),
            ],
            "Bps",
        ),
    ]
    return _board(cfg, "redis", "Redis", "The router's cache and rate limiter.", panels)


def _qdrant(cfg: HxpConfig) -> board_builders.Dashboard:
    panels = [
        _graph("Qdrant up", [('up{service="qdrant"}', "{{host}}")], maximum=1),
        _stat("Version", [("app_info", "{{version}}")]),
        _stat("Collections", [("sum(collections_total)", "collections")]),
        _stat("Vectors", [("sum(collections_vector_total)", "vectors")]),
        _graph(
            "REST responses/s by endpoint",
            [(f"sum by (endpoint) ({_rate('rest_responses_total')})", "{{endpoint}}")],
            "reqps",
        ),
        _graph(
            "REST failures/s by endpoint",
            [(f"sum by (endpoint) ({_rate('rest_responses_fail_total')})", "{{endpoint}}")],
            "reqps",
        ),
        _graph(
            "REST average duration by endpoint",
            [("max by (endpoint) (rest_responses_avg_duration_seconds)", "{{endpoint}}")],
            "s",
        ),
        _graph(
            "gRPC responses/s by endpoint",
            [(f"sum by (endpoint) ({_rate('grpc_responses_total')})", "{{endpoint}}")],
            "reqps",
        ),
        _graph(
            "gRPC failures/s by endpoint",
            [(f"sum by (endpoint) ({_rate('grpc_responses_fail_total')})", "{{endpoint}}")],
            "reqps",
        ),
    ]
    return _board(cfg, "qdrant", "Qdrant", "The vector database.", panels)


def _hosts(cfg: HxpConfig) -> board_builders.Dashboard:
    node = 'service="node", host=~"$host"'
    idle = f'{node}, mode="idle"'
    interfaces = f'{node}, device!="lo"'
    # No fstype filter: node_exporter already leaves out pseudo filesystems, and lab hosts
    # (overlay roots, which it leaves out too) would otherwise show no filesystem at all.
    panels = [
        _graph(
            "CPU busy",
            [
                (
                    f"1 - avg by (host) ({_rate('node_cpu_seconds_total', idle)})",
                    "{{host}}",
                )
            ],
            "percentunit",
            maximum=1,
        ),
        _graph("Load average (1 min)", [(f"node_load1{{{node}}}", "{{host}}")]),
        _graph(
            "Memory used",
            [
                (
                    f"1 - node_memory_MemAvailable_bytes{{{node}}} / "
                    f"node_memory_MemTotal_bytes{{{node}}}",
                    "{{host}}",
                )
            ],
            "percentunit",
            maximum=1,
        ),
        _graph(
            "Filesystem space used",
            [
                (
                    f"1 - node_filesystem_avail_bytes{{{node}}} / "
                    f"node_filesystem_size_bytes{{{node}}}",
                    "{{host}} {{mountpoint}}",
                )
            ],
            "percentunit",
            maximum=1,
        ),
        _graph(
            "Disk I/O",
            [
                (f"sum by (host) ({_rate('node_disk_read_bytes_total', node)})", "{{host}} read"),
                (
                    f"sum by (host) ({_rate('node_disk_written_bytes_total', node)})",
                    "{{host}} written",
                ),
            ],
            "Bps",
        ),
        _graph(
            "Network",
            [
                (
                    f"sum by (host) ({_rate('node_network_receive_bytes_total', interfaces)})",
                    "{{host}} received",
                ),
                (
                    f"sum by (host) ({_rate('node_network_transmit_bytes_total', interfaces)})",
                    "{{host}} sent",
                ),
            ],
            "Bps",
        ),
    ]
    return _board(
        cfg,
        "hosts",
        "Hosts",
        "Every host of hxp.yml (node exporter).",
        panels,
        [_variable("host", 'label_values(up{service="node"}, host)', multi=True)],
    )


def _has_nvidia_llm_hosts(cfg: HxpConfig) -> bool:
    return any(h.accelerator == "nvidia" for h in cfg.hosts_in(HostGroup.LLM))


def _boards(cfg: HxpConfig) -> Iterator[board_builders.Dashboard]:
    yield _overview(cfg)
    yield _router(cfg)
    yield _vllm(cfg)
    if _has_nvidia_llm_hosts(cfg):
        yield _gpus(cfg)
    if cfg.database is not None:
        yield _postgresql(cfg)
    if cfg.cache is not None:
        yield _redis(cfg)
    if cfg.vector_db is not None:
        yield _qdrant(cfg)
    yield _hosts(cfg)


def _finish(
    board: board_builders.Dashboard, datasource: board_models.DataSourceRef
) -> dict[str, Any]:
    """The board as Grafana's JSON model: panels numbered in order, every panel, query and
    variable on the one datasource."""
    model = board.build()
    next_id = 1
    for panel in model.panels or []:
        children = panel.panels if isinstance(panel, board_models.RowPanel) else []
        for item in [panel, *children]:
            item.id_val = next_id
            next_id += 1
            item.datasource = datasource
            if isinstance(item, board_models.Panel):
                for target in item.targets or []:
                    if isinstance(target, prometheus_models.Dataquery):
                        target.datasource = datasource
    if model.templating is not None:
        for variable in model.templating.list_val or []:
            variable.datasource = datasource
    encoded: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    return encoded


# --------------------------------------------------------------------------- public


def dashboards(
    cfg: HxpConfig, datasource_uid: str = DEFAULT_DATASOURCE_UID
) -> dict[str, dict[str, Any]]:
    """Every dashboard of the deployment: file name (``<uid>.json``) -> Grafana JSON model.

    ``datasource_uid`` is the uid Grafana's Prometheus datasource is provisioned with.
    """
    datasource = board_models.DataSourceRef(type_val="prometheus", uid=datasource_uid)
    boards = {}
    for board in _boards(cfg):
        model = _finish(board, datasource)
        boards[f"{model['uid']}.json"] = model
    return boards


def _panels(dashboard: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def template_variables(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """The template variables a dashboard defines: name -> its query (``label_values(...)``)."""
    return {v["name"]: v["query"] for v in dashboard.get("templating", {}).get("list", [])}


def panel_queries(
    dashboard: Mapping[str, Any], variables: Mapping[str, str]
) -> list[tuple[str, str]]:
    """Every (panel title, PromQL expression) of a dashboard, ready to send to Prometheus.

    The dashboard's template variables take their values from ``variables`` (extra entries are
    ignored); Grafana's built-in ones (``$__rate_interval``...) take ``BUILTIN_VARIABLES``.
    Raises ValueError naming a variable that is neither.
    """
    values = {**BUILTIN_VARIABLES, **variables}

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise ValueError(
                f"dashboard {dashboard.get('uid')!r} uses ${name}, which has no value: pass "
                f"it in variables (the dashboard defines {sorted(template_variables(dashboard))})"
            )
        return values[name]

    return [
        (panel["title"], _VARIABLE.sub(value, target["expr"]))
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
    ]
