"""prefix_affinity with four router workers in front of three loopback replicas of one model.

Multi-turn conversations (message lists that grow turn by turn, six at once, every turn on a
new connection so the kernel spreads them over the workers) must each stay on one replica, the
same one whichever worker routes a turn (rendezvous hashing: no state shared between workers),
with two conversations a replica, as the bounded load keeps them. Then a replica goes down
mid-conversation: no request fails, only its conversations move, and each to one replica.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator

import pytest

from hxp_runtime.router.prefix import (
    prefix_hashes,
    render_chat,
    rendezvous_order,
    replica_key,
    session_hash,
)
from tests.integration.router.clients import ClientThreads
from tests.integration.router.conftest import RouterProcess, call, worker_pids
from tests.integration.router.loopback import Arrival, LoopbackBackend
from tests.integration.router.test_router_recovery import KEY, WORKERS, settings, wait_for

pytestmark = pytest.mark.slow

REPLICAS = ("conv", "conv-2", "conv-3")  # the router's ids for the three replicas of "conv"
GONE = "conv-3"  # the replica the test takes down
TURN_PAUSE_S = 0.05
BLOCK_CHARS = 64


def system_prompt(n: int) -> str:
    return f"You are assistant {n}; answer briefly and in plain words. " * 3


def first_messages(n: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": system_prompt(n)}]


def homes(n: int) -> list[str]:
    """The replicas in the rendezvous order of conversation ``n``'s first block."""
    first_block = prefix_hashes(render_chat(first_messages(n)), BLOCK_CHARS, 1)[0]
    return rendezvous_order(first_block, [(replica_key(r), r) for r in REPLICAS])


def pick_conversations() -> list[int]:
    """Two conversations a replica, and those of the replica that goes down bound for
    different replicas after it: the bounded load never needs to send one elsewhere (a
    replica holds one request of each conversation at most), so where a turn lands is
    rendezvous alone, and the test can say where that is."""
    chosen: dict[str, list[int]] = defaultdict(list)
    seconds: set[str] = set()
    for n in range(1000):
        order = homes(n)
        if len(chosen[order[0]]) == 2:
            continue
        if order[0] == GONE:
            if order[1] in seconds:
                continue
            seconds.add(order[1])
        chosen[order[0]].append(n)
        if sum(len(c) for c in chosen.values()) == 6:
            return sorted(n for c in chosen.values() for n in c)
    raise AssertionError("no balanced set of conversations among the first thousand")


class Conversations(ClientThreads):
    """One thread per conversation: a turn, its answer appended, the next turn, until told."""

    def __init__(self, router: RouterProcess, conversations: list[int]) -> None:
        self.router = router
        self.statuses: list[int] = []
        super().__init__([(n,) for n in conversations])

    def _run(self, n: int) -> None:
        messages = first_messages(n)
        turn = 0
        while not self._stop.is_set():
            messages.append({"role": "user", "content": f"Question {turn} of talk {n}, please."})
            body = {"model": "conv", "messages": messages, "max_tokens": 1, "user": f"talk-{n}"}
            status, _, _ = call(
                "POST", self.router.url + "/v1/chat/completions", body, KEY, timeout=15
            )
            self.statuses.append(status)
            messages.append({"role": "assistant", "content": f"Answer {turn}."})
            turn += 1
            time.sleep(TURN_PAUSE_S)


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RouterProcess, dict[str, LoopbackBackend]]]:
    router = RouterProcess(
        {}, {"api_keys": [{"name": "ops", "secret": KEY}]}, tmp_path_factory.mktemp("router")
    )
    backends = {
        r: LoopbackBackend("conv-served", lambda: worker_pids(router), work_s=0.02)
        for r in REPLICAS
    }
    for backend in backends.values():
        backend.start()
    router.settings = settings(
        [("conv", backends[r]) for r in REPLICAS],
        strategies=["explicit", "least_outstanding", "prefix_affinity"],
        prefix_routing={"block_chars": BLOCK_CHARS, "load_factor": 1.25},
        retries={"attempts": 2, "backoff_ms": 10},
    )
    try:
        router.start()
        yield router, backends
        assert router.stop() == 0, router.log_tail()
    finally:
        router.stop()
        for backend in backends.values():
            backend.close()


def replicas_of(
    backends: dict[str, LoopbackBackend], since: float, until: float
) -> dict[str, dict[str, int]]:
    """talk -> replica -> requests that arrived there in [since, until)."""
    seen: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for name, backend in backends.items():
        for arrival in backend.since(since):
            if arrival.at < until and arrival.user is not None:
                seen[arrival.user][name] += 1
    return {talk: dict(where) for talk, where in seen.items()}


def workers_of(arrivals: list[Arrival]) -> set[int | None]:
    return {a.worker for a in arrivals}


def test_conversations_stay_on_one_replica_and_move_only_when_it_goes(
    replicas: tuple[RouterProcess, dict[str, LoopbackBackend]],
) -> None:
    router, backends = replicas
    talks = pick_conversations()
    expected = {f"talk-{n}": homes(n) for n in talks}
    begin = time.monotonic()
    with Conversations(router, talks) as load:
        assert wait_for(lambda: len(load.statuses) >= 120, 60), load.statuses
        gone_at = time.monotonic()
        backends[GONE].stop()
        time.sleep(1.0)  # the failed attempts, retries and checks that take it out
        settled = time.monotonic()
        assert wait_for(lambda: len(load.statuses) >= 240, 60), len(load.statuses)
        end = time.monotonic()
    assert load.statuses and set(load.statuses) == {200}, sorted(set(load.statuses))

    before = replicas_of(backends, begin, gone_at)
    print(f"before the outage: {before}")
    assert set(before) == set(expected)
    for talk, where in before.items():
        assert list(where) == [expected[talk][0]], (talk, where, expected[talk])
        assert where[expected[talk][0]] >= 5, (talk, where)
    per_replica = {r: sum(w.get(r, 0) for w in before.values()) for r in REPLICAS}
    print(f"requests per replica before the outage: {per_replica}")
    mean = sum(per_replica.values()) / len(REPLICAS)
    assert all(0.6 * mean <= n <= 1.4 * mean for n in per_replica.values()), per_replica
    # Every turn went through whichever worker the kernel gave its connection to.
    assert len(workers_of([a for b in backends.values() for a in b.since(begin)])) >= 2

    after = replicas_of(backends, settled, end)
    print(f"after {GONE} went down: {after}")
    assert not backends[GONE].since(settled)
    for talk, where in after.items():
        order = expected[talk]
        home = order[1] if order[0] == GONE else order[0]
        assert list(where) == [home], (talk, where, order)
    moved = sorted(t for t, order in expected.items() if order[0] == GONE)
    assert len(moved) == 2 and {expected[t][1] for t in moved} == {"conv", "conv-2"}
    assert len(worker_pids(router)) == WORKERS


def test_a_session_header_keeps_unrelated_prompts_on_one_replica(
    replicas: tuple[RouterProcess, dict[str, LoopbackBackend]],
) -> None:
    """Sessions whose rendezvous replica is not the one the outage took down: theirs is the
    same whether it is up or not, and both others get one (load alone would pick one)."""
    router, backends = replicas
    expected: dict[str, str] = {}
    for n in range(100):
        home = rendezvous_order(
            session_hash(f"session-s{n}"), [(replica_key(r), r) for r in REPLICAS]
        )[0]
        if home != GONE and list(expected.values()).count(home) < 2:
            expected[f"s{n}"] = home
    begin = time.monotonic()
    for session in expected:
        for turn in range(12):  # new connections: the turns go through several workers
            body = {
                "model": "conv",
                "messages": [{"role": "user", "content": f"unrelated prompt {turn} " * 20}],
                "max_tokens": 1,
                "user": session,
            }
            status, _, _ = call(
                "POST",
                router.url + "/v1/chat/completions",
                body,
                KEY,
                headers={"X-HXP-Session": f"session-{session}"},
                timeout=15,
            )
            assert status == 200
    seen = replicas_of(backends, begin, time.monotonic())
    print(f"sessions: {seen}")
    assert seen == {session: {home: 12} for session, home in expected.items()}
