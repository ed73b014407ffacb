"""Prometheus alert rules and the Alertmanager configuration, both derived from hxp.yml.

``alert_rules(cfg)`` is a Prometheus rules file (``{"groups": [...]}``) and
``alertmanager_config(cfg)`` the whole alertmanager.yml. Both are pure functions of the config.

Selectors rely on the scrape contract of :mod:`hxp_runtime.observability.scrape`: every series
carries ``host`` and ``service`` (the job name), a model server's also ``model`` (the hxp model
name, the value the router's own ``model`` label holds too).

Latency SLOs (``models[].slo`` and ``router.slo``) are alerted on with multi-window,
multi-burn-rate alerts (Google SRE workbook, "Alerting on SLOs"), for a 30-day SLO period. The
SLI is the share of bad requests through the router: slower than ``latency_ms`` (counted from
the duration histogram's bucket at exactly that bound) or answered with a 5xx. Recording rules
keep that ratio per window; an alert fires when both a long and a short window burn the error
budget (1 - objective) faster than a factor: the long window makes it significant, the short
one makes it stop soon after the problem does.

    page    14.4x over 1h and 5m     2% of the month's budget in an hour
    ticket   6x   over 6h and 30m    5% in six hours
             3x   over 1d and 2h    10% in a day (the short window is 1/12 of the long one)

Every alert has the label ``severity`` (page, ticket or info; info is never notified), the
annotations ``summary`` and ``description`` (Prometheus templates: the values and labels of the
alert) and ``runbook_url``: docs/runbooks/<alertname>.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from hxp_runtime.config import (
    Alerting,
    HostGroup,
    HxpConfig,
    Metrics,
    Slo,
    resolve_host,
    router_hosts,
)
from hxp_runtime.router.metrics import bucket_label, slo_threshold_s

RUNBOOK_BASE_URL = "https://github.com/hxp-project/hxp/blob/main/docs/runbooks/"
# Alertmanager's receiver for what is sent nowhere: info alerts, and all alerts without receivers.
NULL_RECEIVER = "null"

# Four failed scrapes in a row: one slow or lost scrape is not an outage, and the bound stays a
# small multiple of the scrape interval (20 s in the lab, 1 m at the default 15 s).
DOWN_SCRAPES = 4
ERROR_RATIO_HIGH = 0.05
FALLBACK_SHARE_HIGH = 0.05
# Time left to replace a certificate (the router's, PostgreSQL's, Redis's): two weeks, for a
# ticket to be worked on.
CERTIFICATE_EXPIRY_WARNING_S = 14 * 86400
# The certificates role node_exporter exports (label `certificate`, the name the service's role
# registers it under) -> the hxp.yml field that gives each.
EXPORTED_CERTIFICATES = {"postgresql": "database.tls", "redis": "cache.tls"}
KV_CACHE_USAGE_HIGH = 0.9
GPU_TEMPERATURE_HIGH_C = 85  # where datacenter GPUs begin to slow their clocks
# Filesystems that hold no data of their own: their free space says nothing about the host.
VIRTUAL_FILESYSTEMS = "tmpfs|ramfs|squashfs|overlay|nsfs|fuse.lxcfs"

Rule = dict[str, Any]
Group = dict[str, Any]


class Severity(StrEnum):
    PAGE = "page"  # someone must act now
    TICKET = "ticket"  # someone must act within a working day
    INFO = "info"  # context for the others; shown in Alertmanager and Grafana, never sent


# Disk: (free share below, predicted empty within seconds, for seconds, severity).
DISK_FILLING = (
    (0.15, 4 * 3600, 30 * 60, Severity.PAGE),
    (0.40, 24 * 3600, 60 * 60, Severity.TICKET),
)


@dataclass(frozen=True)
class Burn:
    """Alert when both windows burn the error budget more than ``factor`` times too fast."""

    factor: float
    long_s: int
    short_s: int


PAGE_BURNS = (Burn(14.4, 3600, 300),)
TICKET_BURNS = (Burn(6, 6 * 3600, 1800), Burn(3, 86400, 2 * 3600))
# Every window a burn looks at, shortest first: one recording rule each.
SLO_WINDOWS_S = tuple(
    sorted({w for b in (*PAGE_BURNS, *TICKET_BURNS) for w in (b.long_s, b.short_s)})
)


def runbook_url(alertname: str) -> str:
    return f"{RUNBOOK_BASE_URL}{alertname}.md"


def duration(seconds: float) -> str:
    """A Prometheus/Alertmanager duration in its largest whole unit: 300 -> "5m"."""
    whole = math.ceil(seconds)
    if whole == 0:
        return "0s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def _number(value: float) -> str:
    return f"{value:g}"


def _percent(share: float) -> str:
    return f"{share * 100:g}%"


def _alert(
    name: str,
    expr: str,
    severity: Severity,
    summary: str,
    description: str,
    *,
    for_s: float = 0,
    labels: dict[str, str] | None = None,
) -> Rule:
    rule: Rule = {"alert": name, "expr": expr}
    if for_s:
        rule["for"] = duration(for_s)
    rule["labels"] = {"severity": severity.value, **(labels or {})}
    rule["annotations"] = {
        "summary": summary,
        "description": description,
        "runbook_url": runbook_url(name),
    }
    return rule


def _scrape_interval_s(cfg: HxpConfig) -> int:
    if cfg.metrics is not None:
        return cfg.metrics.scrape_interval_s
    default: int = Metrics.model_fields["scrape_interval_s"].default
    return default


def _down_for_s(cfg: HxpConfig) -> int:
    return DOWN_SCRAPES * _scrape_interval_s(cfg)


# --------------------------------------------------------------------------- latency SLOs


@dataclass(frozen=True)
class _SloTarget:
    """One latency SLO and the router series its SLI counts."""

    alertname: str
    level: str  # the recording rules' aggregation level: "model" or "router"
    matchers: str  # label matchers of the router's series, service="router" included
    series_labels: dict[str, str]  # on its recording rules: which SLO a ratio belongs to
    host: str  # on its alerts: HostDown of this host inhibits them
    subject: str  # in the annotations: whose requests
    slo: Slo

    def record(self, window_s: int) -> str:
        return f"{self.level}:hxp_router_request_errors:ratio_rate{duration(window_s)}"

    def recorded(self, window_s: int) -> str:
        inner = ",".join(f'{k}="{v}"' for k, v in self.series_labels.items())
        return f"{self.record(window_s)}{{{inner}}}" if inner else self.record(window_s)

    @property
    def alert_labels(self) -> dict[str, str]:
        return {**self.series_labels, "host": self.host}

    @property
    def le(self) -> str:
        """The bucket whose count is the requests within the SLO's latency."""
        return bucket_label(slo_threshold_s(self.slo.latency_ms))

    @property
    def budget(self) -> float:
        return 1 - self.slo.objective


def _slo_targets(cfg: HxpConfig, router_host: str) -> list[_SloTarget]:
    targets = [
        _SloTarget(
            alertname="ModelErrorBudgetBurn",
            level="model",
            matchers=f'service="router",model="{model.name}"',
            series_labels={"model": model.name},
            # The model's own host (the router's series carry the router's): the host whose
            # outage explains a burn, and whose HostDown inhibits it.
            host=resolve_host(cfg, model.host, HostGroup.LLM) or router_host,
            subject=f"model {model.name}",
            slo=model.slo,
        )
        for model in cfg.models
    ]
    targets.append(
        _SloTarget(
            alertname="RouterErrorBudgetBurn",
            level="router",
            matchers='service="router"',
            series_labels={},
            host=router_host,
            subject="the router (all models)",
            slo=cfg.router.slo,
        )
    )
    return targets


def _error_ratio(target: _SloTarget, window_s: int) -> str:
    """Share of requests slower than the SLO's latency or answered 5xx, over the window.

    A slow 5xx counts twice (clamped at 1): it errs towards alerting, and only matters when most
    failures are slow anyway. ``or vector(0)``: no 5xx series at all means no failures, not no
    answer.
    """
    window = duration(window_s)
    total = f"sum(rate(hxp_router_request_duration_seconds_count{{{target.matchers}}}[{window}]))"
    fast = (
        "sum(rate(hxp_router_request_duration_seconds_bucket"
        f'{{{target.matchers},le="{target.le}"}}[{window}]))'
    )
    failed = (
        f'(sum(rate(hxp_router_requests_total{{{target.matchers},status=~"5.."}}[{window}]))'
        " or vector(0))"
    )
    return f"clamp_max(({total} - {fast} + {failed}) / {total}, 1)"


def _burn_condition(target: _SloTarget, burns: tuple[Burn, ...]) -> str:
    budget = _number(target.budget)
    return " or ".join(
        f"({target.recorded(b.long_s)} > {_number(b.factor)} * {budget}"
        f" and {target.recorded(b.short_s)} > {_number(b.factor)} * {budget})"
        for b in burns
    )


def _slo_group(cfg: HxpConfig, target: _SloTarget) -> Group:
    slo = target.slo
    latency = f"{slo.latency_ms:g} ms"
    allowed = (
        f"the objective ({_percent(slo.objective)} within {latency}) allows "
        f"{_percent(target.budget)}"
    )
    rules: list[Rule] = []
    for window_s in SLO_WINDOWS_S:
        rule: Rule = {"record": target.record(window_s), "expr": _error_ratio(target, window_s)}
        if target.series_labels:
            rule["labels"] = dict(target.series_labels)  # a copy: no YAML anchors when dumped
        rules.append(rule)
    page, ticket = PAGE_BURNS[0], TICKET_BURNS[0]
    subject = target.subject
    title = subject[0].upper() + subject[1:]
    rules.append(
        _alert(
            target.alertname,
            _burn_condition(target, PAGE_BURNS),
            Severity.PAGE,
            f"{title} burns its latency error budget fast",
            f"{{{{ $value | humanizePercentage }}}} of the requests to {subject} in the last "
            f"{duration(page.long_s)} took longer than {latency} or failed (5xx); {allowed}. "
            f"At over {_number(page.factor)} times the sustainable rate, the 30-day error "
            f"budget lasts less than {_number(round(30 / page.factor, 1))} days.",
            labels=target.alert_labels,
        )
    )
    rules.append(
        _alert(
            target.alertname,
            _burn_condition(target, TICKET_BURNS),
            Severity.TICKET,
            f"{title} burns its latency error budget",
            f"{{{{ $value | humanizePercentage }}}} of the requests to {subject} in the last "
            f"{duration(ticket.long_s)} (or day, for a slower burn) took longer than {latency} "
            f"or failed (5xx); {allowed}. At this rate the 30-day error budget is gone before "
            "the 30 days are.",
            labels=target.alert_labels,
        )
    )
    le = target.le
    suffix = "".join(f"-{value}" for value in target.series_labels.values())
    rules.append(
        _alert(
            "SloBucketMissing",
            f"sum(hxp_router_request_duration_seconds_count{{{target.matchers}}}) unless "
            f'sum(hxp_router_request_duration_seconds_bucket{{{target.matchers},le="{le}"}})',
            Severity.TICKET,
            f"No duration bucket at the latency SLO of {subject}",
            f"The router's duration histogram counts requests to {subject} but has no bucket "
            f"at {le} s, the SLO's latency, so its {target.alertname} alerts cannot fire. The "
            "router adds its SLO buckets when it starts; a reload (SIGHUP) does not.",
            for_s=_down_for_s(cfg),
            labels=target.alert_labels,
        )
    )
    return {"name": f"hxp-slo-{target.level}{suffix}", "rules": rules}


# --------------------------------------------------------------------------- router


def _router_group(cfg: HxpConfig) -> Group:
    down_for = _down_for_s(cfg)
    # A broken backend's breaker goes half-open after open_s, fails its probe and opens again:
    # the gauge alternates, so `== 2` alone would restart `for` at every probe. Over a window
    # of open_s plus two scrapes, a breaker that keeps opening was seen open at least once. One
    # that recovers at its first probe holds the condition for open_s + window, less than
    # twice the window: that long, and the breaker has failed a probe.
    breaker = cfg.router.circuit_breaker
    breaker_window_s = math.ceil(breaker.open_s) + 2 * _scrape_interval_s(cfg)
    breaker_for_s = 2 * breaker_window_s
    requests = "hxp_router_requests_total"
    return {
        "name": "hxp-router",
        "rules": [
            _alert(
                "RouterDown",
                'up{service="router"} == 0',
                Severity.PAGE,
                "The router on {{ $labels.host }} is down",
                "Prometheus has not scraped the router at {{ $labels.instance }} for "
                f"{duration(down_for)}: no request reaches any model.",
                for_s=down_for,
            ),
            _alert(
                "RouterBackendUnhealthy",
                'hxp_router_upstream_healthy{service="router"} == 0',
                Severity.TICKET,
                "The router finds backend {{ $labels.backend }} unhealthy",
                "The router's health checks (GET /health) of backend {{ $labels.backend }} "
                f"have failed for {duration(down_for)}; it sends the backend no requests.",
                for_s=down_for,
            ),
            _alert(
                "RouterCircuitBreakerOpen",
                "max_over_time(hxp_router_circuit_breaker_state"
                f'{{service="router"}}[{duration(breaker_window_s)}]) == 2',
                Severity.TICKET,
                "The router keeps ejecting backend {{ $labels.backend }}",
                "The circuit breaker of backend {{ $labels.backend }} has kept opening for "
                f"{duration(breaker_for_s)}: requests to it keep failing (errors or timeouts, "
                f"{breaker.failure_threshold} in a row), so the router ejects it for "
                f"{breaker.open_s:g} s at a time.",
                for_s=breaker_for_s,
            ),
            _alert(
                "RouterErrorRatioHigh",
                f'sum by (host) (rate({requests}{{service="router",status=~"5.."}}[5m])) / '
                f'sum by (host) (rate({requests}{{service="router"}}[5m])) > '
                f"{_number(ERROR_RATIO_HIGH)}",
                Severity.TICKET,
                "The router answers many requests with 5xx",
                "{{ $value | humanizePercentage }} of the router's answers in the last 5 minutes "
                f"were server errors (5xx), more than {_percent(ERROR_RATIO_HIGH)}.",
                for_s=300,
            ),
            _alert(
                "RouterFallbacksFrequent",
                'sum by (host) (rate(hxp_router_fallbacks_total{service="router"}[10m])) / '
                f'sum by (host) (rate({requests}{{service="router"}}[10m])) > '
                f"{_number(FALLBACK_SHARE_HIGH)}",
                Severity.TICKET,
                "Many requests are answered by fallback models",
                "{{ $value | humanizePercentage }} of the requests in the last 10 minutes were "
                "answered by a fallback model instead of the one routing chose, more than "
                f"{_percent(FALLBACK_SHARE_HIGH)}: a model fails or is ejected.",
                for_s=600,
            ),
            # Always in the rules: a router without router.tls exports no expiry series, so the
            # rule matches nothing there, and switching TLS on needs no new rules file.
            _alert(
                "RouterCertificateExpiresSoon",
                "hxp_router_tls_certificate_expiry_timestamp_seconds"
                f'{{service="router"}} - time() < {CERTIFICATE_EXPIRY_WARNING_S}',
                Severity.TICKET,
                "The router's TLS certificate on {{ $labels.host }} expires soon",
                "The certificate of the router's public port expires in "
                "{{ $value | humanizeDuration }}, less than "
                f"{duration(CERTIFICATE_EXPIRY_WARNING_S)}: issue a new one, point "
                "router.tls at it (or replace the secret) and deploy; the router reloads it.",
            ),
        ],
    }


# --------------------------------------------------------------------------- model servers


_VLLM_DOWN = 'up{service="vllm"} == 0'
_VLLM_UP = '(up{service="vllm"} == 1)'


def _model_server_group(cfg: HxpConfig) -> Group:
    down_for = _down_for_s(cfg)
    rules = [
        # A model with replicas on several hosts is down when none of them is scraped: that
        # pages, once per replica; one replica down while another serves is a ticket.
        _alert(
            "ModelServerDown",
            f"{_VLLM_DOWN} unless on (model) {_VLLM_UP}",
            Severity.PAGE,
            "Model server {{ $labels.model }} on {{ $labels.host }} is down",
            "Prometheus has not scraped the vLLM server of {{ $labels.model }} at "
            f"{{{{ $labels.instance }}}} for {duration(down_for)}: it is stopped, still loading "
            "its model, or unreachable. The router sends its requests to fallbacks, if any.",
            for_s=down_for,
        ),
        _alert(
            "ModelReplicaDown",
            f"{_VLLM_DOWN} and on (model) {_VLLM_UP}",
            Severity.TICKET,
            "A replica of {{ $labels.model }} on {{ $labels.host }} is down",
            "Prometheus has not scraped the vLLM server of {{ $labels.model }} at "
            f"{{{{ $labels.instance }}}} for {duration(down_for)}, while another replica of the "
            "model is up: the router sends the model's requests to the replicas left.",
            for_s=down_for,
        ),
        _alert(
            "ModelKvCacheHigh",
            'max by (host, model) (vllm:kv_cache_usage_perc{service="vllm"}) > '
            f"{_number(KV_CACHE_USAGE_HIGH)}",
            Severity.INFO,
            "The KV cache of {{ $labels.model }} on {{ $labels.host }} is nearly full",
            "{{ $value | humanizePercentage }} of the KV cache of {{ $labels.model }} is in use "
            f"(above {_percent(KV_CACHE_USAGE_HIGH)} for 15 minutes): new requests wait for "
            "room and running ones may be preempted.",
            for_s=900,
        ),
    ]
    # A queue as long as a whole batch: each waiting request waits for a full generation. One
    # rule per model, since each has its own batch size.
    rules.extend(
        _alert(
            "ModelRequestsQueued",
            "max by (host, model) "
            f'(vllm:num_requests_waiting{{service="vllm",model="{model.name}"}}) > '
            f"{model.engine.max_num_seqs}",
            Severity.TICKET,
            "Requests queue up at {{ $labels.model }} on {{ $labels.host }}",
            "{{ $value }} requests wait for a slot on {{ $labels.model }}, more than a whole "
            f"batch (max_num_seqs {model.engine.max_num_seqs}), for 10 minutes: the model "
            "server cannot keep up with its load.",
            for_s=600,
            # The same labels as the series; without them the rules would differ only in expr.
            labels={"model": model.name},
        )
        for model in cfg.models
    )
    rules.append(
        _alert(
            "ModelPreemptions",
            # Preemptions come one at a time: a count per 5 minutes reads better than a rate.
            'sum by (host, model) (increase(vllm:num_preemptions_total{service="vllm"}[5m])) > 0',
            Severity.TICKET,
            "vLLM preempts requests of {{ $labels.model }} on {{ $labels.host }}",
            "The vLLM server of {{ $labels.model }} has preempted requests for 15 minutes, "
            "{{ $value | humanize }} in the last 5 minutes: its KV cache cannot hold the running "
            "batch, and every preempted request is computed again.",
            for_s=900,
        )
    )
    return {"name": "hxp-model-servers", "rules": rules}


# --------------------------------------------------------------------------- GPUs


def _gpu_group(cfg: HxpConfig) -> Group:
    down_for = _down_for_s(cfg)
    # vLLM takes up to planner.max_gpu_utilization of a GPU's memory by design: only what lies
    # well beyond it is alarming (another process, or a leak), halfway to full.
    planned = cfg.planner.max_gpu_utilization
    memory_high = round((1 + planned) / 2, 3)
    return {
        "name": "hxp-gpus",
        "rules": [
            _alert(
                "GpuNvmlDown",
                'hxp_gpu_nvml_up{service="gpu"} == 0',
                Severity.TICKET,
                "NVML does not answer on {{ $labels.host }}",
                "The GPU exporter on {{ $labels.host }} has had no answer from NVML for "
                f"{duration(down_for)}: the NVIDIA driver is not loaded, or a GPU fell off "
                "the bus (an Xid error in the kernel log).",
                for_s=down_for,
            ),
            _alert(
                "GpuMemoryNearlyFull",
                'hxp_gpu_memory_used_bytes{service="gpu"} / '
                f'hxp_gpu_memory_total_bytes{{service="gpu"}} > {_number(memory_high)}',
                Severity.TICKET,
                "GPU {{ $labels.gpu }} on {{ $labels.host }} is nearly out of memory",
                "{{ $value | humanizePercentage }} of the memory of GPU {{ $labels.gpu }} has "
                f"been in use for 10 minutes, more than {_percent(memory_high)}, well beyond the "
                f"{_percent(planned)} vLLM is planned to take (planner.max_gpu_utilization).",
                for_s=600,
            ),
            _alert(
                "GpuTemperatureHigh",
                f'hxp_gpu_temperature_celsius{{service="gpu"}} > {GPU_TEMPERATURE_HIGH_C}',
                Severity.TICKET,
                "GPU {{ $labels.gpu }} on {{ $labels.host }} runs hot",
                "GPU {{ $labels.gpu }} has been at {{ $value }} °C, above "
                f"{GPU_TEMPERATURE_HIGH_C} °C, for 5 minutes: it slows its clocks to cool down.",
                for_s=300,
            ),
        ],
    }


# --------------------------------------------------------------------------- hosts


def _host_group(cfg: HxpConfig) -> Group:
    down_for = _down_for_s(cfg)
    filesystem = f'service="node",fstype!~"{VIRTUAL_FILESYSTEMS}"'
    avail = f"node_filesystem_avail_bytes{{{filesystem}}}"
    rules = [
        _alert(
            "HostDown",
            # Only when nothing else on the host answers either: a lone dead node exporter is
            # MonitoringTargetDown, not a host outage.
            'up{service="node"} == 0 unless on (host) up{service!="node"} == 1',
            Severity.PAGE,
            "Host {{ $labels.host }} is down",
            "Neither the node exporter nor any other service on {{ $labels.host }} has "
            f"answered a scrape for {duration(down_for)}: the host is down or unreachable.",
            for_s=down_for,
        )
    ]
    rules.extend(
        _alert(
            "HostDiskFilling",
            f"{avail} / node_filesystem_size_bytes{{{filesystem}}} < {_number(free)}"
            f" and predict_linear({avail}[6h], {within_s}) < 0"
            f" and node_filesystem_readonly{{{filesystem}}} == 0",
            severity,
            "{{ $labels.mountpoint }} on {{ $labels.host }} is filling up",
            "{{ $labels.mountpoint }} on {{ $labels.host }} has {{ $value | humanizePercentage }} "
            f"free and, growing as in the last 6 hours, is full within {duration(within_s)}.",
            for_s=for_s,
        )
        for free, within_s, for_s, severity in DISK_FILLING
    )
    rules += _certificate_rules()
    return {"name": "hxp-hosts", "rules": rules}


def _certificate_rules() -> list[Rule]:
    """The expiry of the data services' TLS certificates, as each host's node exporter reads it
    from its textfile directory (role node_exporter, hxp-certificate-expiry). The router exports
    its own (RouterCertificateExpiresSoon). Always in the rules: a host without a registered
    certificate exports no series, and switching TLS on needs no new rules file.

    The label is `certificate`, not `service`: every series of the node exporter has
    service="node" (the scrape contract), so a scraped `service` would become `exported_service`.
    """
    where = ", ".join(f"{field} for {name}" for name, field in EXPORTED_CERTIFICATES.items())
    return [
        _alert(
            "CertificateExpiresSoon",
            'hxp_certificate_expiry_timestamp_seconds{service="node"} - time() < '
            f"{CERTIFICATE_EXPIRY_WARNING_S}",
            Severity.TICKET,
            "The TLS certificate of {{ $labels.certificate }} on {{ $labels.host }} expires soon",
            "The certificate {{ $labels.certificate }} serves on {{ $labels.host }} expires in "
            "{{ $value | humanizeDuration }}, less than "
            f"{duration(CERTIFICATE_EXPIRY_WARNING_S)}: issue a new one, point hxp.yml at it "
            f"({where}) and deploy.",
        ),
        _alert(
            "CertificateUnreadable",
            'hxp_certificate_read_error{service="node"} == 1',
            Severity.TICKET,
            "The TLS certificate of {{ $labels.certificate }} on {{ $labels.host }} cannot be read",
            "The copy of its certificate registered on {{ $labels.host }} for the expiry export "
            "is not a certificate openssl can read (`journalctl -u hxp-certificate-expiry` "
            "names the file), so its expiry is not known: deploy again, which writes it anew.",
        ),
    ]


# --------------------------------------------------------------------------- data services


def _data_group(cfg: HxpConfig) -> Group:
    down_for = _down_for_s(cfg)
    rules = []
    if cfg.database is not None:
        rules.append(
            _alert(
                "PostgresDown",
                'pg_up{service="postgres"} == 0 or up{service="postgres"} == 0',
                Severity.PAGE,
                "PostgreSQL on {{ $labels.host }} is down",
                "PostgreSQL, or its exporter at {{ $labels.instance }}, has not answered for "
                f"{duration(down_for)}: the router cannot check API keys it has not cached, "
                "nor record usage.",
                for_s=down_for,
            )
        )
    if cfg.cache is not None:
        rules.append(
            _alert(
                "RedisDown",
                'redis_up{service="redis"} == 0 or up{service="redis"} == 0',
                Severity.TICKET,
                "Redis on {{ $labels.host }} is down",
                "Redis, or its exporter at {{ $labels.instance }}, has not answered for "
                f"{duration(down_for)}: the router's shared rate limits and response cache "
                "are unavailable.",
                for_s=down_for,
            )
        )
    if cfg.vector_db is not None:
        rules.append(
            _alert(
                "QdrantDown",
                'up{service="qdrant"} == 0',
                Severity.PAGE,
                "Qdrant on {{ $labels.host }} is down",
                "Qdrant at {{ $labels.instance }} has not answered a scrape for "
                f"{duration(down_for)}: applications cannot search or store vectors.",
                for_s=down_for,
            )
        )
    return {"name": "hxp-data", "rules": rules}


# --------------------------------------------------------------------------- monitoring


def _monitoring_group(cfg: HxpConfig, gpu_hosts: bool) -> Group:
    down_for = _down_for_s(cfg)
    services = ["node", *(["gpu"] if gpu_hosts else [])]
    if cfg.metrics is not None:
        services += ["prometheus", "alertmanager"]
    return {
        "name": "hxp-monitoring",
        "rules": [
            _alert(
                "MonitoringTargetDown",
                f'up{{service=~"{"|".join(services)}"}} == 0',
                Severity.TICKET,
                "{{ $labels.service }} on {{ $labels.host }} cannot be scraped",
                "Prometheus has not scraped {{ $labels.service }} at {{ $labels.instance }} for "
                f"{duration(down_for)}: its metrics are missing, and the alerts that need them "
                "cannot fire.",
                for_s=down_for,
            )
        ],
    }


def alert_rules(cfg: HxpConfig) -> dict[str, Any]:
    """The Prometheus rules file: recording rules of the SLOs and every alert of the stack."""
    groups: list[Group] = []
    # Behind a virtual address the first router host labels the router's SLO alerts.
    router_host = next(iter(router_hosts(cfg)), None)
    if router_host is not None:  # no LLM host, no router: nothing it could count
        groups.extend(_slo_group(cfg, target) for target in _slo_targets(cfg, router_host))
        groups.append(_router_group(cfg))
    if cfg.models:
        groups.append(_model_server_group(cfg))
    gpu_hosts = any(h.accelerator == "nvidia" for h in cfg.hosts_in(HostGroup.LLM))
    if gpu_hosts:
        groups.append(_gpu_group(cfg))
    groups += [_host_group(cfg), _data_group(cfg), _monitoring_group(cfg, gpu_hosts)]
    return {"groups": [group for group in groups if group["rules"]]}


# --------------------------------------------------------------------------- Alertmanager


def alertmanager_config(cfg: HxpConfig) -> dict[str, Any]:
    """The whole alertmanager.yml: one notification per alert, host and model, sent to every
    receiver of metrics.alerting; info alerts and configs without receivers go nowhere."""
    alerting = cfg.metrics.alerting if cfg.metrics is not None else Alerting()
    routes: list[dict[str, Any]] = [
        {"matchers": [f'severity="{Severity.INFO}"'], "receiver": NULL_RECEIVER}
    ]
    # `continue`: every receiver gets every notification, not only the first that matches.
    routes += [{"receiver": r.name, "continue": True} for r in alerting.receivers]
    return {
        "route": {
            "receiver": NULL_RECEIVER,
            "group_by": ["alertname", "host", "model"],
            "group_wait": duration(alerting.group_wait_s),
            "group_interval": duration(alerting.group_interval_s),
            "repeat_interval": duration(alerting.repeat_interval_s),
            "routes": routes,
        },
        "receivers": [
            {"name": NULL_RECEIVER},
            *(
                {
                    "name": r.name,
                    "webhook_configs": [{"url": r.webhook_url, "send_resolved": r.send_resolved}],
                }
                for r in alerting.receivers
            ),
        ],
        "inhibit_rules": [
            # A host that is down explains everything else that fails on it.
            {
                "source_matchers": ['alertname="HostDown"'],
                "target_matchers": ['alertname!="HostDown"'],
                "equal": ["host"],
            },
            # The page says it already: its ticket (slower windows, same alert) adds nothing.
            {
                "source_matchers": [f'severity="{Severity.PAGE}"'],
                "target_matchers": [f'severity="{Severity.TICKET}"'],
                "equal": ["alertname", "host", "model", "mountpoint"],
            },
        ],
    }
