"""Every routing strategy, and the pipeline that combines them."""

from __future__ import annotations

import random
from typing import Any

import pytest

from hxp_runtime.config import Strategy
from hxp_runtime.router.settings import RouterSettings
from hxp_runtime.router.strategies import (
    Backend,
    BackendStats,
    Endpoint,
    RouteRequest,
    RoutingError,
    RoutingTable,
    Stats,
    adaptive,
    category_probabilities,
    explicit,
    hierarchical,
    least_outstanding,
    match_keywords,
    power_of_two,
    semantic,
)


def backend(
    model: str, replica: int = 1, categories: tuple[str, ...] = (), slo: float = 100
) -> Backend:
    return Backend(
        id=model if replica == 1 else f"{model}-{replica}",
        model=model,
        served_name=model,
        task="generate",
        url=f"http://127.0.0.1:{9000 + replica}",
        categories=categories,
        slo_latency_ms=slo,
    )


def stats_for(*backends: Backend, seed: int = 1, **per_id: dict[str, Any]) -> Stats:
    table = {b.id: BackendStats(**per_id.get(b.id.replace("-", "_"), {})) for b in backends}
    return Stats(table, random.Random(seed))


CHAT = Endpoint.CHAT
CODER = backend("coder", categories=("code", "chat"))
CHATTY = backend("chatty", categories=("chat", "code"))
WRITER = backend("writer", categories=("creative",))
ALL = (CODER, CHATTY, WRITER)
STATS = stats_for(*ALL)


def ids(candidates: tuple[Backend, ...]) -> list[str]:
    return [b.id for b in candidates]


# --------------------------------------------------------------------------- explicit


def test_explicit_resolves_names_and_aliases() -> None:
    index = {"coder": "coder", "deepseek": "coder", "chatty": "chatty", "writer": "writer"}
    chosen = explicit(RouteRequest(CHAT, "deepseek"), ALL, STATS, index=index)
    assert ids(chosen) == ["coder"]


def test_explicit_leaves_auto_to_the_other_strategies() -> None:
    assert explicit(RouteRequest(CHAT, None), ALL, STATS, index={}) == ALL


def test_explicit_unknown_model_is_404_and_wrong_endpoint_400() -> None:
    with pytest.raises(RoutingError) as unknown:
        explicit(RouteRequest(CHAT, "gpt-4"), ALL, STATS, index={"coder": "coder"})
    assert unknown.value.status == 404
    with pytest.raises(RoutingError) as wrong:
        explicit(RouteRequest(Endpoint.EMBEDDING, "coder"), (), STATS, index={"coder": "coder"})
    assert wrong.value.status == 400


# --------------------------------------------------------------------------- hierarchical


KEYWORDS = {"code": ("python", "function"), "chat": ("hello",), "creative": ("poem", "story")}


def test_hierarchical_category_hint_then_speciality_first() -> None:
    chosen = hierarchical(RouteRequest(CHAT, None, category="chat"), ALL, STATS, keywords=KEYWORDS)
    # Both serve chat; chatty lists it first (its speciality), coder second.
    assert ids(chosen) == ["chatty", "coder"]


def test_hierarchical_keywords_pick_the_category() -> None:
    request = RouteRequest(CHAT, None, prompt="Write a Python function that adds")
    assert ids(hierarchical(request, ALL, STATS, keywords=KEYWORDS)) == ["coder", "chatty"]
    poem = RouteRequest(CHAT, None, prompt="A poem, please")
    assert ids(hierarchical(poem, ALL, STATS, keywords=KEYWORDS)) == ["writer"]


def test_hierarchical_without_a_category_changes_nothing() -> None:
    request = RouteRequest(CHAT, None, prompt="weather?", category="unknown-category")
    assert hierarchical(request, ALL, STATS, keywords=KEYWORDS) == ALL


def test_keyword_ties_go_to_the_first_category() -> None:
    assert match_keywords("hello python", {"chat": ("hello",), "code": ("python",)}) == "chat"
    assert match_keywords("nothing here", KEYWORDS) is None


# --------------------------------------------------------------------------- semantic


PROTOTYPES = {"code": (1.0, 0.0, 0.0), "chat": (0.0, 1.0, 0.0), "creative": (0.0, 0.0, 1.0)}


def test_softmax_over_cosines_with_temperature() -> None:
    prompt = (0.8, 0.6, 0.0)
    sharp = category_probabilities(prompt, PROTOTYPES, temperature=0.05)
    soft = category_probabilities(prompt, PROTOTYPES, temperature=10.0)
    assert [name for name, _ in sharp] == ["code", "chat", "creative"]
    assert sum(p for _, p in sharp) == pytest.approx(1.0)
    assert sharp[0][1] > 0.98  # a low temperature concentrates the attention
    assert max(p for _, p in soft) < 0.4  # a high one spreads it
    assert dict(sharp)["code"] / dict(sharp)["chat"] == pytest.approx(2.718281828 ** (0.2 / 0.05))


def test_semantic_routes_to_the_most_probable_served_category() -> None:
    request = RouteRequest(CHAT, None, embedding=(0.1, 0.2, 0.97))
    assert ids(semantic(request, ALL, STATS, prototypes=PROTOTYPES, temperature=0.1)) == ["writer"]
    # No candidate serves "creative": the next most probable category that one serves.
    chosen = semantic(request, (CODER, CHATTY), STATS, prototypes=PROTOTYPES, temperature=0.1)
    assert ids(chosen) == ["chatty", "coder"]


def test_semantic_needs_an_embedding() -> None:
    assert (
        semantic(RouteRequest(CHAT, None), ALL, STATS, prototypes=PROTOTYPES, temperature=0.1)
        == ALL
    )


# --------------------------------------------------------------------------- adaptive


def test_adaptive_prefers_models_within_their_slo() -> None:
    stats = stats_for(
        *ALL,
        coder={"latency_ms": 250.0},  # slower than its 100 ms SLO
        chatty={"latency_ms": 80.0},
        writer={"latency_ms": 20.0, "error_rate": 0.5},  # fast but failing
    )
    # chatty meets its SLO; the two others miss it and rank by score: latency / SLO plus
    # 4 x error rate (writer 0.2 + 2.0 < coder 2.5).
    assert ids(adaptive(RouteRequest(CHAT, None), ALL, stats, exploration=0.0)) == [
        "chatty",
        "writer",
        "coder",
    ]


def test_adaptive_tries_unmeasured_models_and_explores() -> None:
    stats = stats_for(CODER, CHATTY, coder={"latency_ms": 10.0})
    assert ids(adaptive(RouteRequest(CHAT, None), (CODER, CHATTY), stats, exploration=0.0)) == [
        "chatty",
        "coder",
    ]
    firsts = {
        adaptive(
            RouteRequest(CHAT, None),
            (CODER, CHATTY),
            stats_for(CODER, CHATTY, seed=s),
            exploration=1.0,
        )[0].id
        for s in range(20)
    }
    assert firsts == {"coder", "chatty"}


def test_adaptive_keeps_a_single_model_as_is() -> None:
    replicas = (backend("m", 1), backend("m", 2))
    assert adaptive(RouteRequest(CHAT, "m"), replicas, stats_for(*replicas)) == replicas


# --------------------------------------------------------------------------- load balancing


A1, A2, A3 = backend("a", 1), backend("a", 2), backend("a", 3)
B1, B2 = backend("b", 1), backend("b", 2)


def test_least_outstanding_orders_replicas_within_each_model() -> None:
    stats = stats_for(
        A1, A2, A3, B1, B2,
        a={"outstanding": 3},
        a_2={"running": 1.0, "waiting": 4.0},
        a_3={"outstanding": 1, "kv_usage": 0.9},
        b={"waiting": 2.0},
        b_2={"outstanding": 1, "kv_usage": 0.1},
    )  # fmt: skip
    ordered = least_outstanding(RouteRequest(CHAT, None), (A1, A2, A3, B1, B2), stats)
    # Model order is kept (a before b); inside a model, the shortest queue first.
    assert ids(ordered) == ["a-3", "a", "a-2", "b-2", "b"]


def test_least_outstanding_breaks_ties_on_kv_cache_usage() -> None:
    stats = stats_for(A1, A2, a={"kv_usage": 0.7}, a_2={"kv_usage": 0.2})
    assert ids(least_outstanding(RouteRequest(CHAT, None), (A1, A2), stats)) == ["a-2", "a"]


def test_power_of_two_takes_the_less_loaded_of_two_random_replicas() -> None:
    loads = {"a": {"waiting": 5.0}, "a_2": {"waiting": 1.0}, "a_3": {"waiting": 3.0}}
    firsts = []
    for seed in range(30):
        stats = stats_for(A1, A2, A3, seed=seed, **loads)
        ordered = power_of_two(RouteRequest(CHAT, None), (A1, A2, A3), stats)
        assert sorted(ids(ordered)) == ["a", "a-2", "a-3"]
        firsts.append(ordered[0].id)
    # The most loaded replica can never win a pair; the others both do, over many draws.
    assert "a" not in firsts
    assert set(firsts) == {"a-2", "a-3"}


def test_power_of_two_with_two_replicas_is_least_loaded() -> None:
    stats = stats_for(A1, A2, a={"outstanding": 2})
    assert ids(power_of_two(RouteRequest(CHAT, None), (A1, A2), stats)) == ["a-2", "a"]


# --------------------------------------------------------------------------- the pipeline


def settings(**router: Any) -> RouterSettings:
    slo = {"latency_ms": 100, "throughput_rps": 10}

    def spec(name: str, port: int, **extra: Any) -> dict[str, Any]:
        url = f"http://127.0.0.1:{port}"
        return {"name": name, "served_name": name, "url": url, "slo": slo, **extra}

    backends = [
        spec("coder", 9001, served_name="coder-v1", aliases=["deepseek"], categories=["code"]),
        spec("chatty", 9002, categories=["chat"]),
        spec("chatty", 9003, categories=["chat"]),
        spec("writer", 9004, categories=["creative"]),
        spec("embed", 9005, served_name="minilm", task="embed"),
    ]
    categories = {
        "code": {"keywords": ["python"]},
        "chat": {"keywords": ["hello"]},
        "creative": {"keywords": ["poem"]},
    }
    return RouterSettings.model_validate({"backends": backends, "categories": categories, **router})


def table_stats(table: RoutingTable, **per_id: dict[str, Any]) -> Stats:
    return Stats(
        {b.id: BackendStats(**per_id.get(b.id.replace("-", "_"), {})) for b in table.backends},
        random.Random(3),
    )


def route(table: RoutingTable, request: RouteRequest, stats: Stats) -> list[str]:
    return ids(table.decide(request, stats, table.choose_models(request)).attempts)


def test_replicas_get_distinct_ids() -> None:
    table = RoutingTable(settings())
    assert [b.id for b in table.backends] == ["coder", "chatty", "chatty-2", "writer", "embed"]


def test_explicit_alias_then_least_outstanding_replica() -> None:
    table = RoutingTable(settings(strategies=["explicit", "least_outstanding"]))
    stats = table_stats(table, chatty={"outstanding": 4})
    assert route(table, RouteRequest(CHAT, "chatty"), stats) == ["chatty-2", "chatty"]
    assert route(table, RouteRequest(CHAT, "deepseek"), stats) == ["coder"]


def test_fallbacks_follow_the_configured_order() -> None:
    table = RoutingTable(settings(fallbacks={"coder": ["writer", "chatty"]}))
    stats = table_stats(table)
    assert route(table, RouteRequest(CHAT, "coder"), stats) == [
        "coder",
        "writer",
        "chatty",
        "chatty-2",
    ]
    # The primary ejected: the fallbacks are all that is left, still in order.
    stats.backends["coder"].ejected = True
    assert route(table, RouteRequest(CHAT, "coder"), stats) == ["writer", "chatty", "chatty-2"]


def test_a_drained_backend_leaves_its_model_to_replicas_then_fallbacks() -> None:
    """A rolling restart drains one server at a time: its model's requests must still land."""
    table = RoutingTable(settings(fallbacks={"coder": ["chatty"], "chatty": ["writer"]}))
    stats = table_stats(table, coder={"draining": True}, chatty={"draining": True})
    # No replica: the configured fallbacks, both replicas of chatty but the drained one.
    assert route(table, RouteRequest(CHAT, "coder"), stats) == ["chatty-2"]
    # A replica left: it first, then the model's fallbacks.
    assert route(table, RouteRequest(CHAT, "chatty"), stats) == ["chatty-2", "writer"]
    stats.backends["chatty-2"].draining = True
    assert route(table, RouteRequest(CHAT, "coder"), stats) == []
    assert route(table, RouteRequest(CHAT, "chatty"), stats) == ["writer"]


def test_no_available_backend_means_no_attempts() -> None:
    table = RoutingTable(settings())
    stats = table_stats(table, writer={"healthy": False})
    assert route(table, RouteRequest(CHAT, "writer"), stats) == []


def test_auto_uses_the_default_model_when_nothing_decides() -> None:
    table = RoutingTable(settings(strategies=["explicit", "hierarchical"], default_model="writer"))
    stats = table_stats(table)
    assert route(table, RouteRequest(CHAT, None, prompt="what time is it"), stats) == ["writer"]
    assert route(table, RouteRequest(CHAT, None, prompt="hello there"), stats)[0].startswith(
        "chatty"
    )


def test_embeddings_only_go_to_embedding_models() -> None:
    table = RoutingTable(settings())
    assert route(table, RouteRequest(Endpoint.EMBEDDING, None), table_stats(table)) == ["embed"]
    with pytest.raises(RoutingError):
        table.choose_models(RouteRequest(Endpoint.EMBEDDING, "coder"))


def test_semantic_pipeline_uses_prototypes() -> None:
    table = RoutingTable(
        settings(
            strategies=["explicit", "semantic", "least_outstanding"],
            semantic={"embedding_model": "embed"},
        ),
        prototypes={"code": (1.0, 0.0), "chat": (0.0, 1.0)},
    )
    request = RouteRequest(CHAT, None, prompt="anything", embedding=(0.9, 0.1))
    assert table.needs_embedding(RouteRequest(CHAT, None))
    assert not table.needs_embedding(RouteRequest(CHAT, "coder"))
    candidates, deciders = table.choose_models(request)
    assert ids(candidates) == ["coder"]
    assert deciders == (Strategy.SEMANTIC,)


def test_adaptive_in_the_pipeline_picks_the_model_meeting_its_slo() -> None:
    table = RoutingTable(settings(strategies=["explicit", "adaptive"]))
    stats = table_stats(
        table,
        coder={"latency_ms": 500.0},
        writer={"latency_ms": 30.0},
        chatty={"latency_ms": 50.0},
        chatty_2={"latency_ms": 60.0},
    )
    stats.rng = random.Random(0)  # first draw 0.84 > exploration: no exploring
    assert route(table, RouteRequest(CHAT, None), stats)[0] == "writer"


def test_decision_cache_is_an_lru_keyed_by_what_model_choice_reads() -> None:
    table = RoutingTable(settings(strategies=["explicit", "hierarchical"], decision_cache_size=2))
    named = table.cache_key(RouteRequest(CHAT, "coder", prompt="ignored"))
    assert named == table.cache_key(RouteRequest(CHAT, "coder", prompt="other"))
    auto_a = table.cache_key(RouteRequest(CHAT, None, prompt="python please"))
    auto_b = table.cache_key(RouteRequest(CHAT, None, prompt="a poem please"))
    assert auto_a != auto_b
    for key in (named, auto_a, auto_b):
        table.cache.put(key, ((), ()))
    assert len(table.cache) == 2
    assert table.cache.get(named) is None  # the least recently used went first
    assert table.cache.get(auto_b) is not None


def test_decision_cache_size_zero_caches_nothing() -> None:
    table = RoutingTable(settings(decision_cache_size=0))
    table.cache.put("k", ((), ()))
    assert table.cache.get("k") is None
