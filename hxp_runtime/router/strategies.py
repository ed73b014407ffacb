"""Routing strategies: pure functions of (request, candidate backends, live stats).

Every strategy has the same shape::

    strategy(request: RouteRequest, candidates: Candidates, stats: Stats) -> Candidates

and returns the candidates it keeps, most preferred first. Candidates are kept grouped by model
(all replicas of a model next to each other), so that strategies compose: a pipeline runs the
configured strategies in turn, each narrowing or reordering what the previous one left.
Strategy-specific configuration (aliases, keywords, prototypes, a temperature) is bound with
``functools.partial`` when the pipeline is built; nothing here performs I/O or reads a clock.

Two kinds exist, and :class:`RoutingTable` runs them in two stages:

* model choice, which depends only on the request: ``explicit`` (the model or alias asked
  for), ``hierarchical`` (task category -> model) and ``semantic`` (the prompt's embedding
  against per-category prototypes). Their result is cached in an LRU keyed by what they read.
* live choice, run per request on the current stats: ``adaptive`` (models ranked by learned
  latency and error rate against their SLOs), ``least_outstanding`` and ``power_of_two``
  (replica choice inside a model, fed by vLLM's own queue metrics) and ``prefix_affinity``
  (the replica likely to hold the prompt's prefix in its KV cache, under a load bound;
  :mod:`hxp_runtime.router.prefix`).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from itertools import groupby
from typing import Any

from hxp_runtime.config import Strategy
from hxp_runtime.router.prefix import (
    PrefixIndex,
    load_bound,
    prefix_hashes,
    prompt_text,
    rendezvous_order,
    replica_key,
    session_hash,
)
from hxp_runtime.router.settings import RouterSettings
from hxp_runtime.router.static_embedding import StaticRouting

# Strategies whose result depends only on the request (cached), in contrast to live ones.
MODEL_STRATEGIES = frozenset({Strategy.EXPLICIT, Strategy.HIERARCHICAL, Strategy.SEMANTIC})
# An error rate above this makes a model miss its SLO, whatever its latency.
MAX_SLO_ERROR_RATE = 0.1
ERROR_WEIGHT = 4.0
ADAPTIVE_EXPLORATION = 0.05


class Endpoint(StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"

    @property
    def task(self) -> str:
        return "embed" if self is Endpoint.EMBEDDING else "generate"


class RoutingError(Exception):
    """No backend can take the request; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass(frozen=True, slots=True)
class Backend:
    """One replica of one model, as routing sees it (static)."""

    id: str
    model: str
    served_name: str
    task: str
    url: str
    categories: tuple[str, ...] = ()
    slo_latency_ms: float = 1000.0


@dataclass(slots=True)
class BackendStats:
    """What the router currently knows about a backend (live, updated in place)."""

    healthy: bool = True
    ejected: bool = False  # the circuit breaker is open
    draining: bool = False  # an operator drained it: no new requests, in every worker
    outstanding: int = 0  # requests this process has in flight there
    running: float = 0.0  # vllm:num_requests_running
    waiting: float = 0.0  # vllm:num_requests_waiting
    kv_usage: float = 0.0  # vllm:kv_cache_usage_perc (0..1)
    latency_ms: float | None = None  # EWMA of observed latency (time to first token for streams)
    error_rate: float = 0.0  # EWMA of failures (0..1)

    @property
    def available(self) -> bool:
        return self.healthy and not self.ejected and not self.draining

    @property
    def load(self) -> float:
        """Queue depth: our own in-flight requests plus what vLLM reports it is busy with."""
        return self.outstanding + self.running + self.waiting


@dataclass(frozen=True, slots=True)
class RouteRequest:
    endpoint: Endpoint
    model: str | None  # None: "auto", pick by strategy
    prompt: str = ""
    category: str | None = None  # a client's hint (X-HXP-Category header)
    embedding: tuple[float, ...] | None = None
    # The embedding is the static table's (compared with its own prototypes), not the model's.
    static: bool = False
    # Prefix hashes of the prompt's blocks, shortest first, or a session's one hash
    # (prefix_affinity only; empty otherwise).
    affinity: tuple[int, ...] = ()


@dataclass(slots=True)
class Stats:
    backends: Mapping[str, BackendStats]
    rng: random.Random = field(default_factory=random.Random)

    def of(self, backend: Backend) -> BackendStats:
        return self.backends[backend.id]


Candidates = tuple[Backend, ...]
# The model-choice stage's result: the candidates it kept and the strategies that decided.
ModelChoice = tuple[Candidates, tuple[Strategy, ...]]
StrategyFn = Callable[[RouteRequest, Candidates, Stats], Candidates]


def model_groups(candidates: Candidates) -> Iterator[tuple[str, Candidates]]:
    for model, group in groupby(candidates, key=lambda b: b.model):
        yield model, tuple(group)


def single_model(candidates: Candidates) -> bool:
    if len(candidates) < 2:  # the common case, without a generator per request
        return True
    return all(b.model == candidates[0].model for b in candidates)


def _by_category(candidates: Candidates, category: str) -> Candidates:
    """The models serving ``category``, those that list it first (their speciality) first."""
    serving = [b for b in candidates if category in b.categories]
    # sorted() is stable: replicas of one model stay together and in order.
    return tuple(sorted(serving, key=lambda b: b.categories.index(category)))


# --------------------------------------------------------------------------- model choice


def explicit(
    request: RouteRequest, candidates: Candidates, stats: Stats, *, index: Mapping[str, str]
) -> Candidates:
    """The model (or alias) the client named; "auto" leaves the choice to later strategies."""
    if request.model is None:
        return candidates
    model = index.get(request.model)
    if model is None:
        raise RoutingError(
            404,
            f"The model {request.model!r} does not exist; GET /v1/models lists the models "
            f"and aliases, or ask for 'auto'.",
            "model_not_found",
        )
    chosen = tuple(b for b in candidates if b.model == model)
    if not chosen:
        raise RoutingError(
            400,
            f"The model {request.model!r} cannot serve /v1/{request.endpoint.value} requests.",
            "model_not_supported",
        )
    return chosen


def match_keywords(prompt: str, keywords: Mapping[str, Sequence[str]]) -> str | None:
    """The category with the most keyword hits in the prompt (first defined wins ties)."""
    text = prompt.lower()
    best, hits = None, 0
    for category, words in keywords.items():
        count = sum(1 for word in words if word in text)
        if count > hits:
            best, hits = category, count
    return best


def hierarchical(
    request: RouteRequest,
    candidates: Candidates,
    stats: Stats,
    *,
    keywords: Mapping[str, Sequence[str]],
) -> Candidates:
    """Task category -> the models serving it -> their replicas.

    The category is the client's hint when it names a known category, else the one whose
    keywords the prompt matches most. Models that list the category first come first.
    """
    if single_model(candidates):
        return candidates
    category = request.category if request.category in keywords else None
    if category is None:
        category = match_keywords(request.prompt, keywords)
    if category is None:
        return candidates
    return _by_category(candidates, category) or candidates


def category_probabilities(
    embedding: Sequence[float], prototypes: Mapping[str, Sequence[float]], temperature: float
) -> list[tuple[str, float]]:
    """Attention over the categories: softmax(cosine(prompt, prototype) / temperature).

    Embeddings and prototypes are unit vectors, so the dot product is the cosine. Sorted from
    the most to the least likely category.
    """
    scores = {
        name: sum(a * b for a, b in zip(embedding, proto, strict=True)) / temperature
        for name, proto in prototypes.items()
    }
    top = max(scores.values())
    weights = {name: math.exp(score - top) for name, score in scores.items()}
    total = sum(weights.values())
    return sorted(((n, w / total) for n, w in weights.items()), key=lambda item: -item[1])


def semantic(
    request: RouteRequest,
    candidates: Candidates,
    stats: Stats,
    *,
    prototypes: Mapping[str, Sequence[float]],
    temperature: float,
    static_prototypes: Mapping[str, Sequence[float]] | None = None,
) -> Candidates:
    """The most probable category (by prompt embedding) that some candidate serves."""
    if request.static:
        prototypes = static_prototypes or {}
    if single_model(candidates) or request.embedding is None or not prototypes:
        return candidates
    for category, _ in category_probabilities(request.embedding, prototypes, temperature):
        chosen = _by_category(candidates, category)
        if chosen:
            return chosen
    return candidates


# --------------------------------------------------------------------------- live choice


def _model_score(group: Candidates, stats: Stats) -> tuple[bool, float]:
    """(misses its SLO, score): lower is better; a model nobody measured yet scores 0."""
    live = [stats.of(b) for b in group]
    measured = [s.latency_ms for s in live if s.latency_ms is not None]
    latency = sum(measured) / len(measured) if measured else 0.0
    errors = sum(s.error_rate for s in live) / len(live)
    slo = group[0].slo_latency_ms
    misses = latency > slo or errors > MAX_SLO_ERROR_RATE
    return misses, latency / slo + ERROR_WEIGHT * errors


def adaptive(
    request: RouteRequest,
    candidates: Candidates,
    stats: Stats,
    *,
    exploration: float = ADAPTIVE_EXPLORATION,
) -> Candidates:
    """Rank models by learned latency and error rate; those meeting their SLO first.

    Latency and errors are EWMAs of live traffic. With probability ``exploration`` a random
    model goes first, so that a model that was slow once gets measured again (epsilon-greedy).
    """
    groups = list(model_groups(candidates))
    if len(groups) < 2:
        return candidates
    ranked = sorted(groups, key=lambda item: _model_score(item[1], stats))
    if stats.rng.random() < exploration:
        ranked.insert(0, ranked.pop(stats.rng.randrange(len(ranked))))
    return tuple(b for _, group in ranked for b in group)


def _least_loaded_first(group: Candidates, stats: Stats) -> Candidates:
    return tuple(sorted(group, key=lambda b: (stats.of(b).load, stats.of(b).kv_usage)))


def least_outstanding(request: RouteRequest, candidates: Candidates, stats: Stats) -> Candidates:
    """Within each model, the replica with the shortest queue first (then the emptiest KV)."""
    if len(candidates) < 2:
        return candidates
    return tuple(
        b for _, group in model_groups(candidates) for b in _least_loaded_first(group, stats)
    )


def power_of_two(request: RouteRequest, candidates: Candidates, stats: Stats) -> Candidates:
    """Within each model, the less loaded of two random replicas first, the rest after."""
    if len(candidates) < 2:
        return candidates
    ordered: list[Backend] = []
    for _, group in model_groups(candidates):
        if len(group) > 2:
            best = _least_loaded_first(tuple(stats.rng.sample(group, 2)), stats)[0]
            ordered.append(best)
            ordered.extend(b for b in group if b is not best)
        else:
            ordered.extend(_least_loaded_first(group, stats))
    return tuple(ordered)


def prefix_affinity(
    request: RouteRequest,
    candidates: Candidates,
    stats: Stats,
    *,
    index: PrefixIndex,
    keys: Mapping[str, bytes],
    load_factor: float,
) -> Candidates:
    """Within each model, the replica likely to hold the prompt's prefix first, the rest in
    the order they came (so an earlier load strategy orders the retries).

    That replica is the one this worker last sent the longest known prefix to, else the first
    in rendezvous order of the first block's hash; either is passed over while its load would
    the bound (:func:`~hxp_runtime.router.prefix.load_bound`), for the next in rendezvous
    order within it.
    """
    hashes = request.affinity
    if not hashes or len(candidates) < 2:
        return candidates
    ordered: list[Backend] = []
    for _, group in model_groups(candidates):
        if len(group) > 1:
            chosen = _affine_replica(hashes, group, stats, index, keys, load_factor)
            ordered.append(chosen)
            ordered.extend(b for b in group if b is not chosen)
        else:
            ordered.extend(group)
    return tuple(ordered)


def _affine_replica(
    hashes: tuple[int, ...],
    group: Candidates,
    stats: Stats,
    index: PrefixIndex,
    keys: Mapping[str, bytes],
    load_factor: float,
) -> Backend:
    bound = load_bound([stats.of(b).load for b in group], load_factor)
    order = rendezvous_order(hashes[0], [(keys[b.id], b) for b in group])
    known = index.longest(hashes)
    if known is not None:
        order.sort(key=lambda b: b.id != known)  # stable: the rest stay in rendezvous order
    # The least loaded replica is never above the average, so one is always within the bound.
    return next((b for b in order if stats.of(b).load <= bound), order[0])


# --------------------------------------------------------------------------- the pipeline


@dataclass(frozen=True, slots=True)
class Decision:
    """Where to send a request: backends to try in order, and which strategies decided."""

    attempts: Candidates
    strategies: tuple[Strategy, ...]

    @property
    def model(self) -> str | None:
        return self.attempts[0].model if self.attempts else None


class DecisionCache:
    """A bounded LRU of model-choice results, and the choices being made (``pending``).

    ``pending`` maps a key to the task computing its choice (an embeddings call), so that
    requests asking the same thing meanwhile wait for that task instead of starting another.
    The tasks belong to the request path (``pipeline``); the cache only holds them, so that
    they go with the table when the settings reload.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[object, ModelChoice] = OrderedDict()
        self.pending: dict[object, asyncio.Future[tuple[ModelChoice, bool]]] = {}

    def get(self, key: object) -> ModelChoice | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: object, value: ModelChoice) -> None:
        if self.size == 0:
            return
        self._entries[key] = value
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def backends_from(settings: RouterSettings) -> Candidates:
    """Backends with ids unique per replica (model name, or name-2, name-3... for replicas)."""
    counts: dict[str, int] = {}
    backends = []
    for spec in settings.backends:
        counts[spec.name] = counts.get(spec.name, 0) + 1
        n = counts[spec.name]
        backends.append(
            Backend(
                id=spec.name if n == 1 else f"{spec.name}-{n}",
                model=spec.name,
                served_name=spec.served_name,
                task=spec.task,
                url=spec.url,
                categories=tuple(spec.categories),
                slo_latency_ms=spec.slo.latency_ms,
            )
        )
    # Replicas of a model sit together, models in the order they were declared.
    order = {name: i for i, name in enumerate(counts)}
    return tuple(sorted(backends, key=lambda b: order[b.model]))


class RoutingTable:
    """The configured strategies over the configured backends; built once per settings load."""

    def __init__(
        self,
        settings: RouterSettings,
        prototypes: Mapping[str, Sequence[float]] | None = None,
        static: StaticRouting | None = None,
    ) -> None:
        self.backends = backends_from(settings)
        self.index = settings.routing_index()
        self.default_model = self.index.get(settings.default_model or "")
        self.fallbacks = {
            self.index[name]: tuple(dict.fromkeys(self.index[n] for n in chain))
            for name, chain in settings.fallbacks.items()
        }
        self.prototypes: Mapping[str, Sequence[float]] = prototypes or {}
        # Decides new prompts in-process when it is sure (hxp_runtime.router.static_embedding).
        self.static = static if self.prototypes else None
        self.keywords = {
            name: tuple(word.lower() for word in category.keywords)
            for name, category in settings.categories.items()
        }
        self.cache = DecisionCache(settings.decision_cache_size)
        self._by_task = {
            endpoint: tuple(b for b in self.backends if b.task == endpoint.task)
            for endpoint in Endpoint
        }
        self.semantic_enabled = Strategy.SEMANTIC in settings.strategies
        bound: dict[Strategy, StrategyFn] = {
            Strategy.EXPLICIT: partial(explicit, index=self.index),
            Strategy.HIERARCHICAL: partial(hierarchical, keywords=self.keywords),
            Strategy.SEMANTIC: partial(
                semantic,
                prototypes=self.prototypes,
                temperature=settings.semantic.temperature,
                static_prototypes=static.prototypes if static is not None else None,
            ),
            Strategy.ADAPTIVE: adaptive,
            Strategy.LEAST_OUTSTANDING: least_outstanding,
            Strategy.POWER_OF_TWO: power_of_two,
        }
        self.prefix = settings.prefix_routing
        self.prefix_enabled = Strategy.PREFIX_AFFINITY in settings.strategies
        self.prefix_index = PrefixIndex(self.prefix.index_size if self.prefix_enabled else 0)
        bound[Strategy.PREFIX_AFFINITY] = partial(
            prefix_affinity,
            index=self.prefix_index,
            keys={b.id: replica_key(b.id) for b in self.backends},
            load_factor=self.prefix.load_factor,
        )
        # Explicit always applies: a named model is never second-guessed.
        names = list(dict.fromkeys([Strategy.EXPLICIT, *settings.strategies]))
        self.model_stage = [(s, bound[s]) for s in names if s in MODEL_STRATEGIES]
        self.live_stage = [(s, bound[s]) for s in names if s not in MODEL_STRATEGIES]
        self._prompt_dependent = self.semantic_enabled or (
            Strategy.HIERARCHICAL in settings.strategies and any(self.keywords.values())
        )

    def affinity(
        self, endpoint: Endpoint, payload: dict[str, Any], session: str | None
    ) -> tuple[int, ...]:
        """What prefix_affinity keys on: the session's hash, else the prompt's block hashes."""
        if not self.prefix_enabled or endpoint is Endpoint.EMBEDDING:
            return ()
        if session:
            return (session_hash(session),)
        text = prompt_text(endpoint is Endpoint.CHAT, payload)
        return prefix_hashes(text, self.prefix.block_chars, self.prefix.max_blocks)

    def needs_embedding(self, request: RouteRequest) -> bool:
        return request.model is None and self.semantic_enabled and bool(self.prototypes)

    def cache_key(self, request: RouteRequest) -> tuple[object, ...]:
        if request.model is not None or not self._prompt_dependent:
            return (request.endpoint, request.model, request.category)
        digest = hashlib.blake2b(request.prompt.encode(), digest_size=16).digest()
        return (request.endpoint, None, request.category, digest)

    def choose_models(self, request: RouteRequest) -> ModelChoice:
        """Model choice (explicit, hierarchical, semantic): no live stats involved."""
        candidates = self._by_task[request.endpoint]
        if not candidates:
            raise RoutingError(
                503, f"No model serves /v1/{request.endpoint.value} here.", "no_backend"
            )
        deciders: list[Strategy] = []
        stats = Stats({})
        for name, strategy in self.model_stage:
            chosen = strategy(request, candidates, stats)
            if chosen != candidates:
                deciders.append(name)
                candidates = chosen
        if not single_model(candidates) and not deciders and self.default_model:
            default = tuple(b for b in candidates if b.model == self.default_model)
            candidates = default or candidates
        return candidates, tuple(deciders)

    def decide(
        self,
        request: RouteRequest,
        stats: Stats,
        model_choice: ModelChoice,
    ) -> Decision:
        """Live choice over the available candidates, then the fallback chain.

        Attempts: the first model's available replicas in live order, then its configured
        fallbacks in their configured order, then any other candidate models.
        """
        candidates, deciders = model_choice
        live: Candidates
        if len(candidates) == 1:
            live = candidates if stats.of(candidates[0]).available else ()
        else:
            live = tuple(b for b in candidates if stats.of(b).available)
        used = list(deciders)
        if len(live) > 1:
            for name, strategy in self.live_stage:
                ordered = strategy(request, live, stats)
                if ordered != live:
                    used.append(name)
                live = ordered
            if request.affinity:
                self.prefix_index.record(request.affinity, live[0].id)
        primary = live[0].model if live else candidates[0].model
        fallbacks = self.fallbacks.get(primary)
        if not fallbacks and single_model(live):
            return Decision(live, tuple(used))
        attempts = [b for b in live if b.model == primary]
        for model in fallbacks or ():
            replicas = tuple(
                b
                for b in self._by_task[request.endpoint]
                if b.model == model and stats.of(b).available
            )
            attempts.extend(self._live_order(request, replicas, stats))
        attempts.extend(b for b in live if b.model != primary)
        return Decision(tuple(dict.fromkeys(attempts)), tuple(used))

    def _live_order(self, request: RouteRequest, replicas: Candidates, stats: Stats) -> Candidates:
        for _, strategy in self.live_stage:
            if replicas:
                replicas = strategy(request, replicas, stats)
        return replicas
