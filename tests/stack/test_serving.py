"""The serving path of the deployed stack, end to end: a client on this controller talks to the
hxp router on the LLM host with the official openai client; the router routes to real vLLM
servers (tiny models on CPU) and accounts usage in PostgreSQL on the database host."""

from __future__ import annotations

import ssl
import time
import urllib.request
from collections.abc import Iterator

import openai
import pytest
import testinfra

from hxp_runtime.config import HostGroup, HxpConfig
from tests.stack.conftest import host_in, secret
from tests.stack.router import openai_client, router_ca, router_url

Hosts = dict[str, testinfra.host.Host]


@pytest.fixture(scope="module")
def client(cfg: HxpConfig, hosts: Hosts) -> Iterator[openai.OpenAI]:
    with openai_client(cfg, secret(cfg.router.api_keys[0].secret.value), timeout=60) as client:
        yield client


def test_every_model_unit_is_active(cfg: HxpConfig, hosts: Hosts) -> None:
    llm = host_in(cfg, hosts, HostGroup.LLM)
    for model in cfg.models:
        assert llm.service(model.unit_name).is_running, model.unit_name
        assert llm.service(model.unit_name).is_enabled, model.unit_name
    assert llm.service("hxp-router").is_running
    # The router's listening socket, held by systemd across restarts.
    assert llm.service("hxp-router.socket").is_running
    assert llm.service("hxp-router.socket").is_enabled


def test_router_lists_every_model_and_alias(cfg: HxpConfig, client: openai.OpenAI) -> None:
    listed = {m.id for m in client.models.list()}
    assert set(cfg.routing_index()) <= listed


@pytest.mark.parametrize("name", ["mixtral", "hermes-2", "openchat", "phi-3-mini"])
def test_chat_completion_through_the_router(client: openai.OpenAI, name: str) -> None:
    reply = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None
    assert reply.usage is not None and reply.usage.completion_tokens >= 1


def test_streaming_through_the_router(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "Write a Python function to sort a list."}],
        max_tokens=8,
        stream=True,
    )
    chunks = [c for c in stream if c.choices and c.choices[0].delta.content]
    assert len(chunks) >= 2


def test_embeddings_through_the_router(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="minilm", input=["a sentence to embed"])
    assert len(result.data[0].embedding) == 384


def test_wrong_key_is_rejected(cfg: HxpConfig, client: openai.OpenAI) -> None:
    intruder = client.with_options(api_key="not-a-key-of-this-deployment", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        intruder.models.list()


def test_usage_is_accounted_in_postgresql(
    cfg: HxpConfig, hosts: Hosts, client: openai.OpenAI
) -> None:
    assert cfg.database is not None
    db = host_in(cfg, hosts, HostGroup.DATABASE)
    count = (
        f"runuser -u postgres -- psql -p {cfg.database.port} -d {cfg.database.name} -Atc "
        "'select coalesce(sum(requests), 0) from hxp_usage'"
    )
    before = int(db.check_output(count))
    client.chat.completions.create(
        model="phi3", messages=[{"role": "user", "content": "x"}], max_tokens=2
    )
    deadline = time.monotonic() + 60
    while int(db.check_output(count)) <= before:
        assert time.monotonic() < deadline, "the router wrote no usage row within 60 s"
        time.sleep(1)


STATIC_READY_S = 600.0  # the build at the router's first start: ~90 s of MiniLM on the lab's CPU
SURE_PROMPTS = [  # sentences of one category (tests/data/semantic_prompts.json), joined
    "Write a Python function that reverses a string. Implement binary search in Java. "
    "Write a Rust function that sorts a vector of integers. Implement a linked list in C++.",
    "Compose a haiku about the sea. Write a poem about the autumn wind. Create a short poem "
    "about the stars at night. Write a sonnet about snow falling on a city.",
]


def router_metrics(cfg: HxpConfig) -> str:
    ca = router_ca(cfg)
    context = ssl.create_default_context(cafile=ca) if ca is not None else None
    with urllib.request.urlopen(router_url(cfg) + "/metrics", timeout=30, context=context) as r:
        return str(r.read().decode())


def static_decisions(cfg: HxpConfig) -> float:
    prefix = 'hxp_router_semantic_decision_duration_seconds_count{path="static"} '
    return sum(
        float(line.split()[-1])
        for line in router_metrics(cfg).splitlines()
        if line.startswith(prefix)
    )


def test_the_router_decides_sure_prompts_with_its_static_table(
    cfg: HxpConfig, hosts: Hosts, client: openai.OpenAI
) -> None:
    """Built once from the lab's MiniLM in the unit's StateDirectory; read by every worker."""
    static = cfg.router.semantic.static
    assert static is not None, "inventory/lab/hxp.yml turns router.semantic.static on"
    llm = host_in(cfg, hosts, HostGroup.LLM)
    deadline = time.monotonic() + STATIC_READY_S
    tables: list[str] = []
    while not tables and time.monotonic() < deadline:
        listing = llm.run("ls %s", static.cache_dir)
        tables = [
            n for n in listing.stdout.split() if n.startswith("static-") and n.endswith(".bin")
        ]
        if not tables:
            time.sleep(5)
    assert len(tables) == 1, llm.run("journalctl -u hxp-router -n 30 --no-pager").stdout
    table = llm.file(f"{static.cache_dir}/{tables[0]}")
    assert table.mode == 0o600 and table.user == "hxp-router"
    # Every worker of the running router has read it (each logs it once per start).
    while time.monotonic() < deadline:
        journal = llm.run("journalctl -u hxp-router -b --no-pager -o cat").stdout
        if journal.count("static table ready") >= cfg.router.workers:
            break
        time.sleep(2)
    before = static_decisions(cfg)
    for prompt in SURE_PROMPTS:
        suffix = f" ({time.time_ns()})"  # a new prompt for the decision cache of every run
        reply = client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": prompt + suffix}], max_tokens=2
        )
        assert reply.choices[0].message.content is not None
    assert static_decisions(cfg) - before >= 1
