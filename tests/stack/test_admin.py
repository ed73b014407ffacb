"""The router's admin API on the lab: loopback only, keyed, and a drain that every worker obeys."""

from __future__ import annotations

import json
import shlex

import pytest
import testinfra

from hxp_runtime.config import HostGroup, HxpConfig
from tests.stack.conftest import host_in, secret
from tests.stack.router import openai_client

Hosts = dict[str, testinfra.host.Host]
ADMIN = "/opt/hxp/router/bin/hxp-router admin"


def admin(llm: testinfra.host.Host, *args: str) -> tuple[int, dict]:
    result = llm.run(f"{ADMIN} {shlex.join(args)}")
    return result.rc, json.loads(result.stdout) if result.stdout.strip() else {}


@pytest.fixture(scope="module")
def llm(cfg: HxpConfig, hosts: Hosts) -> testinfra.host.Host:
    return host_in(cfg, hosts, HostGroup.LLM)


def test_admin_api_lists_every_backend_healthy_over_every_worker(
    cfg: HxpConfig, llm: testinfra.host.Host
) -> None:
    rc, answer = admin(llm, "backends")
    assert rc == 0, answer
    assert answer["workers"] == cfg.router.workers
    backends = answer["backends"]
    assert len(backends) == len(cfg.models)
    for name, state in backends.items():
        assert state["healthy"], (name, state)
        assert state["breaker"] == "closed", (name, state)
        assert not state["draining"], (name, state)
        assert len(state["workers"]) == cfg.router.workers, (name, state)


def test_admin_api_wants_the_key_and_is_not_on_the_network(
    cfg: HxpConfig, hosts: Hosts, llm: testinfra.host.Host
) -> None:
    url = f"http://127.0.0.1:{cfg.router.admin_port}/admin/backends"
    probe = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        f"    urllib.request.urlopen({url!r}, timeout=5)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code)\n"
    )
    assert llm.check_output(f"python3 -c {shlex.quote(probe)}").strip() == "401"
    address = cfg.host(llm.backend.get_hostname()).address
    metrics = host_in(cfg, hosts, HostGroup.METRICS)
    reach = f"import socket; socket.create_connection(({address!r}, {cfg.router.admin_port}), 3)"
    assert metrics.run(f"python3 -c {shlex.quote(reach)}").rc != 0, "admin port reachable"


def test_a_drained_backend_gets_no_requests_until_undrained(
    cfg: HxpConfig, llm: testinfra.host.Host
) -> None:
    model = next(m for m in cfg.models if m.task == "generate")
    name = model.name  # the backend's id: the model's name (its only replica in the lab)
    key = secret(cfg.router.api_keys[0].secret.value)
    with openai_client(cfg, key, timeout=60, max_retries=0) as client:
        rc, answer = admin(llm, "drain", name, "--deadline-s", "30")
        try:
            assert rc == 0 and answer["drained"], answer
            served = {m.id for m in client.models.list()}
            assert model.routing_name not in served, f"{model.name} listed while it drains"
        finally:
            rc, answer = admin(llm, "undrain", name)
        assert rc == 0, answer
        reply = client.chat.completions.create(
            model=model.name, messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )
        assert reply.choices
