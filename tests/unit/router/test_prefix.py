"""Prefix affinity: block hashes, rendezvous, bounded load, the index, the session header."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import pytest
from pydantic import ValidationError

from hxp_runtime.router.metrics import RouterMetrics
from hxp_runtime.router.pipeline import Rejected, parse, route
from hxp_runtime.router.prefix import (
    PrefixIndex,
    load_bound,
    prefix_hashes,
    prompt_text,
    render_chat,
    rendezvous_order,
    replica_key,
    session_hash,
)
from hxp_runtime.router.strategies import (
    Endpoint,
    RouteRequest,
    RoutingTable,
    Stats,
    prefix_affinity,
)
from tests.unit.router.test_strategies import backend, ids, settings, stats_for, table_stats

CHAT = Endpoint.CHAT
PREFIX_STRATEGIES = ["explicit", "least_outstanding", "prefix_affinity"]
R1, R2, R3 = backend("m", 1), backend("m", 2), backend("m", 3)
REPLICAS = ["m", "m-2", "m-3"]
KEYS = {b.id: replica_key(b.id) for b in (R1, R2, R3)}


def key(replica: str) -> str:
    """A replica's id as the stats helpers' keyword."""
    return replica.replace("-", "_")


def affine(hashes: tuple[int, ...], stats: Stats, index: PrefixIndex | None = None) -> list[str]:
    return ids(
        prefix_affinity(
            RouteRequest(CHAT, "m", affinity=hashes),
            (R1, R2, R3),
            stats,
            index=index or PrefixIndex(16),
            keys=KEYS,
            load_factor=1.25,
        )
    )


def conversation(n: int, turns: int) -> list[list[dict[str, str]]]:
    """The message lists of a conversation's turns, each the previous plus two messages."""
    messages = [{"role": "system", "content": f"You are assistant number {n}. " * 4}]
    lists = []
    for turn in range(turns):
        messages = [*messages, {"role": "user", "content": f"question {turn} of {n} " * 6}]
        lists.append(messages)
        messages = [*messages, {"role": "assistant", "content": f"answer {turn} " * 8}]
    return lists


# --------------------------------------------------------------------------- hashing


def test_prompts_share_block_hashes_exactly_as_long_as_they_share_text() -> None:
    a = prefix_hashes("x" * 100 + "a" * 100, 32, 100)
    b = prefix_hashes("x" * 100 + "b" * 100, 32, 100)
    assert len(a) == len(b) == 6  # 200 // 32 full blocks; the partial last one is not hashed
    assert a[:3] == b[:3]  # blocks 0-2 end at 96, inside the common 100 characters
    assert all(x != y for x, y in zip(a[3:], b[3:], strict=True))
    assert prefix_hashes("x" * 31, 32, 100) == ()
    assert len(prefix_hashes("x" * 10_000, 32, 8)) == 8


def test_a_chat_rendering_is_a_prefix_of_its_next_turns() -> None:
    turns = conversation(1, 3)
    rendered = [render_chat(messages) for messages in turns]
    assert rendered[1].startswith(rendered[0]) and rendered[2].startswith(rendered[1])
    assert render_chat([{"role": "user", "content": "ab"}]) != render_chat(
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    )
    parts = [{"type": "text", "text": "hello"}, {"type": "image_url"}]
    assert "hello" in render_chat([{"role": "user", "content": parts}])
    assert render_chat("not a list") == render_chat([1, None]) == ""


def test_prompt_text_of_completions_and_chats() -> None:
    assert prompt_text(False, {"prompt": "once upon"}) == "once upon"
    assert prompt_text(False, {"prompt": ["first", "second"]}) == "first"
    assert prompt_text(False, {"prompt": [1, 2, 3]}) == ""
    assert prompt_text(True, {"messages": [{"role": "user", "content": "hi"}]}).endswith("hi\x1f")


# --------------------------------------------------------------------------- rendezvous


def test_rendezvous_spreads_prefixes_and_moves_only_those_of_a_removed_replica() -> None:
    replicas = [(KEYS[b.id], b.id) for b in (R1, R2, R3)]
    prefixes = [session_hash(f"s{i}") for i in range(3000)]
    first = {p: rendezvous_order(p, replicas)[0] for p in prefixes}
    assert all(900 < n < 1100 for n in Counter(first.values()).values())
    without_r2 = {p: rendezvous_order(p, replicas[::2])[0] for p in prefixes}
    moved = [p for p in prefixes if first[p] != without_r2[p]]
    assert moved and all(first[p] == "m-2" for p in moved)


CHOICES = """
import json
from hxp_runtime.router.strategies import RouteRequest, RoutingTable, Endpoint
from tests.unit.router.test_prefix import conversation, prefix_settings
from tests.unit.router.test_strategies import table_stats
table = RoutingTable(prefix_settings())
choices = []
for n in range(40):
    for messages in conversation(n, 2):
        affinity = table.affinity(Endpoint.CHAT, {"messages": messages}, None)
        request = RouteRequest(Endpoint.CHAT, "chatty", affinity=affinity)
        decision = table.decide(request, table_stats(table), table.choose_models(request))
        choices.append(decision.attempts[0].id)
print(json.dumps(choices))
"""


def prefix_settings(**extra: Any) -> Any:
    return settings(strategies=PREFIX_STRATEGIES, **extra)


def test_every_process_picks_the_same_replica_without_shared_state() -> None:
    """Two interpreters with different hash seeds (as two router workers, or two routers)."""
    picks = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", CHOICES], env=env, capture_output=True, text=True, check=True
        )
        picks.append(json.loads(out.stdout))
    assert picks[0] == picks[1]
    assert set(picks[0]) == {"chatty", "chatty-2"}
    # Each conversation's two turns went to one replica.
    assert all(picks[0][i] == picks[0][i + 1] for i in range(0, len(picks[0]), 2))


# --------------------------------------------------------------------------- bounded load


def test_load_bound_is_the_ceiling_of_the_factor_times_the_average() -> None:
    assert load_bound([0, 0], 1.25) == 0
    assert load_bound([3, 1], 1.25) == 3  # ceil(1.25 * 4/2) = ceil(2.5)
    assert load_bound([2, 2, 2], 1.0) == 2
    assert load_bound([0.5, 0.25], 1.25) == 1


def test_a_replica_over_the_bound_is_passed_over_for_the_next_in_rendezvous_order() -> None:
    prefix = (session_hash("conversation"),)
    home, second, third = rendezvous_order(prefix[0], [(KEYS[b.id], b.id) for b in (R1, R2, R3)])
    assert affine(prefix, stats_for(R1, R2, R3))[0] == home
    # home has 1, the others 0: the bound is ceil(1.25 * 1/3) = 1, which home does not pass.
    assert affine(prefix, stats_for(R1, R2, R3, **{key(home): {"outstanding": 1}}))[0] == home
    # home has 2, the others 0: the bound is ceil(1.25 * 2/3) = 1.
    busy = stats_for(R1, R2, R3, **{key(home): {"outstanding": 2}})
    assert affine(prefix, busy)[0] == second
    both = stats_for(R1, R2, R3, **{key(home): {"outstanding": 6}, key(second): {"running": 6.0}})
    assert affine(prefix, both)[0] == third  # the bound is ceil(1.25 * 12/3) = 5
    # Everyone at the same load: all are within the bound, home goes first again.
    even = stats_for(R1, R2, R3, **{key(b.id): {"outstanding": 5} for b in (R1, R2, R3)})
    assert affine(prefix, even)[0] == home


def test_the_rest_keep_the_order_they_came_in() -> None:
    prefix = (session_hash("conversation"),)
    chosen = affine(prefix, stats_for(R1, R2, R3))
    assert chosen[1:] == [b for b in REPLICAS if b != chosen[0]]
    assert affine((), stats_for(R1, R2, R3)) == REPLICAS


# --------------------------------------------------------------------------- the index


def test_the_index_names_the_replica_of_the_longest_known_prefix() -> None:
    index = PrefixIndex(2)
    short, longer = prefix_hashes("a" * 64, 32, 10), prefix_hashes("a" * 128, 32, 10)
    index.record(short, "m-3")
    assert index.longest(longer) == "m-3"  # the next turn extends the recorded prompt
    index.record(longer, "m-2")
    assert index.longest((*longer, 12345)) == "m-2"
    assert index.longest(prefix_hashes("b" * 128, 32, 10)) is None
    index.record((67890,), "m")
    assert len(index) == 2  # bounded: the least recently used entry went
    assert PrefixIndex(0).record(short, "m") is None and len(PrefixIndex(0)) == 0


def test_the_index_wins_over_rendezvous_within_the_bound() -> None:
    prefix = prefix_hashes("y" * 256, 64, 10)
    home = affine(prefix, stats_for(R1, R2, R3))[0]
    elsewhere = next(b for b in REPLICAS if b != home)
    index = PrefixIndex(16)
    index.record(prefix[:2], elsewhere)
    assert affine(prefix, stats_for(R1, R2, R3), index)[0] == elsewhere
    loaded = stats_for(R1, R2, R3, **{key(elsewhere): {"outstanding": 3}})
    assert affine(prefix, loaded, index)[0] == home


def test_a_conversation_sent_away_by_the_bound_stays_where_it_went() -> None:
    table = RoutingTable(prefix_settings())
    turns = conversation(7, 3)
    first = RouteRequest(
        CHAT, "chatty", affinity=table.affinity(CHAT, {"messages": turns[0]}, None)
    )
    home = table.decide(first, table_stats(table), table.choose_models(first)).attempts[0].id
    away = "chatty" if home == "chatty-2" else "chatty-2"
    busy = table_stats(table, **{key(home): {"outstanding": 3}})
    assert table.decide(first, busy, table.choose_models(first)).attempts[0].id == away
    for messages in turns[1:]:
        request = RouteRequest(
            CHAT, "chatty", affinity=table.affinity(CHAT, {"messages": messages}, None)
        )
        decision = table.decide(request, table_stats(table), table.choose_models(request))
        assert decision.attempts[0].id == away


# --------------------------------------------------------------------------- the table and pipeline


def test_affinity_is_the_session_hash_else_the_blocks_and_never_for_embeddings() -> None:
    table = RoutingTable(prefix_settings(prefix_routing={"block_chars": 16}))
    payload = {"prompt": "p" * 40}
    assert table.affinity(Endpoint.COMPLETION, payload, None) == prefix_hashes("p" * 40, 16, 256)
    assert table.affinity(Endpoint.COMPLETION, payload, "abc") == (session_hash("abc"),)
    assert table.affinity(Endpoint.EMBEDDING, {"input": "p" * 40}, None) == ()
    assert RoutingTable(settings()).affinity(Endpoint.COMPLETION, payload, "abc") == ()


async def test_a_session_keeps_its_replica_and_an_overlong_one_is_refused_unechoed() -> None:
    table = RoutingTable(prefix_settings(prefix_routing={"session_max_chars": 32}))
    stats = table_stats(table)
    picks = set()
    for n in range(5):
        body = {"model": "chatty", "messages": [{"role": "user", "content": f"turn {n}"}]}
        call = parse(CHAT, b"/v1/chat/completions", json.dumps(body).encode())
        routed = await route(table, stats, call, None, "session-42", None, RouterMetrics())
        picks.add(routed.first.id)
    assert len(picks) == 1
    secret = "s3cr3t-" * 10
    with pytest.raises(Rejected) as refused:
        await route(table, stats, call, None, secret, None, RouterMetrics())
    assert refused.value.response.status == 400
    text = refused.value.response.text or ""
    assert "X-HXP-Session" in text and "32 characters" in text and "s3cr3t" not in text
    # Without prefix_affinity the header means nothing and is not checked.
    plain = RoutingTable(settings())
    assert await route(plain, table_stats(plain), call, None, secret, None, RouterMetrics())


# --------------------------------------------------------------------------- settings


def test_prefix_affinity_after_a_load_strategy_and_a_session_header_of_its_own() -> None:
    with pytest.raises(ValidationError, match="least_outstanding after prefix_affinity"):
        settings(strategies=["explicit", "prefix_affinity", "least_outstanding"])
    with pytest.raises(ValidationError, match="carries credentials"):
        prefix_settings(prefix_routing={"session_header": "Authorization"})
    with pytest.raises(ValidationError, match="session_header"):
        prefix_settings(prefix_routing={"session_header": "X Session: evil"})
    with pytest.raises(ValidationError, match="load_factor"):
        prefix_settings(prefix_routing={"load_factor": 0.5})
    assert prefix_settings().prefix_routing.block_chars == 64


# --------------------------------------------------------------------------- cost


def test_the_decision_costs_microseconds(capsys: pytest.CaptureFixture[str]) -> None:
    """CPU per request of prefix hashing plus the decision, for an 8,000-character chat
    (125 blocks) over three replicas; printed, and bounded loosely against a slow machine."""
    table = RoutingTable(
        prefix_settings(
            backends=[
                {
                    "name": "m",
                    "served_name": "m",
                    "url": f"http://127.0.0.1:{9000 + i}",
                    "slo": {"latency_ms": 100, "throughput_rps": 10},
                }
                for i in range(3)
            ]
        )
    )
    messages = [{"role": "system", "content": "s" * 4000}, {"role": "user", "content": "u" * 4000}]
    stats = table_stats(table)
    choice = table.choose_models(RouteRequest(CHAT, "m"))
    rounds = 2000
    started = time.process_time()
    for _ in range(rounds):
        request = RouteRequest(
            CHAT, "m", affinity=table.affinity(CHAT, {"messages": messages}, None)
        )
        table.decide(request, stats, choice)
    per_request_us = (time.process_time() - started) / rounds * 1e6
    with capsys.disabled():
        print(
            f"\nprefix_affinity: {per_request_us:.1f} us CPU per request (8,000 characters, "
            "125 blocks, 3 replicas)"
        )
    assert per_request_us < 2000
