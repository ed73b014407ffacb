"""A model split across two LLM hosts, deployed by `hxp deploy`: vLLM's pipeline parallelism on
CPU, in its multiprocessing multi-node mode. The head (stage 1: the API, the model's server
`hxp-vllm-NAME`) runs on the first host of ``models[].pipeline.hosts``, stage 2 headless on the
second (its own unit, ``Model.stage_unit_name``). Completions through the router need both
stages, and every request moves data between them; the head's engine ports admit the stage
hosts only. A restart of either side takes the other with it (the launchers' pipeline watch), so
the model serves again without a hand on the other host.

Needs the lab of inventory/lab-pipeline/hxp.yml deployed (README, "A model split across
hosts")::

    hxp lab up inventory/lab-pipeline/hxp.yml && hxp deploy inventory/lab-pipeline/hxp.yml
    HXP_STACK_CONFIG=inventory/lab-pipeline/hxp.yml pytest -m "" tests/pipeline -rP -s
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass

import openai
import pytest
import testinfra

from hxp_runtime.config import HxpConfig
from tests.stack.conftest import secret
from tests.stack.router import openai_client

pytestmark = pytest.mark.slow
Hosts = dict[str, testinfra.host.Host]

REQUESTS = 8
MAX_TOKENS = 8
# The engine's ports on the head, tried from each host: a refused or dropped connection within
# this many seconds is "not admitted".
CONNECT_TIMEOUT_S = 3.0
# A restarted stage or head: the other stops, restarts (RestartSec) and both start over, the
# compile cache warm.
REJOIN_TIMEOUT_S = 600
# Run with python3 on a lab host: connect to argv[1]:argv[2], print "ok" or why not.
CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("ok")
except OSError as exc:
    print(type(exc).__name__)
"""


@dataclass(frozen=True)
class Split:
    model: str  # the name clients ask the router for
    head: str  # host names
    stage: str
    head_address: str
    stage_address: str
    master_port: int
    head_unit: str
    stage_unit: str


@pytest.fixture(scope="module")
def split(cfg: HxpConfig) -> Split:
    pipelines = [(m, m.pipeline) for m in cfg.models if m.pipeline is not None]
    if len(pipelines) != 1 or len(pipelines[0][1].hosts) != 2:
        pytest.fail("these checks need one model split across two hosts (inventory/lab-pipeline)")
    model, pipeline = pipelines[0]
    head, stage = pipeline.hosts
    return Split(
        model.name,
        head,
        stage,
        str(cfg.host(head).address),
        str(cfg.host(stage).address),
        pipeline.master_port,
        model.stage_unit_name(0) + ".service",
        model.stage_unit_name(1) + ".service",
    )


def connects(host: testinfra.host.Host, address: str, port: int) -> str:
    answer = host.run("python3 -c %s %s %s %s", CONNECT, address, str(port), str(CONNECT_TIMEOUT_S))
    assert answer.rc == 0, answer.stderr
    return str(answer.stdout.strip())


def connects_from_controller(address: str, port: int) -> str:
    try:
        socket.create_connection((address, port), timeout=CONNECT_TIMEOUT_S).close()
        return "ok"
    except OSError as exc:
        return type(exc).__name__


def unit_pids(host: testinfra.host.Host, unit: str) -> set[int]:
    """Every process of a unit: vLLM's server, engine and worker (`ps`'s systemd unit column)."""
    out = host.check_output("ps -e -o pid=,unit=")
    pids = set()
    for line in out.splitlines():
        pid, _, owner = line.strip().partition(" ")
        if owner.strip() == unit:
            pids.add(int(pid))
    assert pids, f"no process of {unit} on {host.backend.get_hostname()}"
    return pids


def owned_by(ss_line: str, pids: set[int]) -> bool:
    """Whether a line of `ss -p` names one of ``pids`` as the socket's owner."""
    return any(f"pid={pid}," in ss_line for pid in pids)


def stage_traffic(host: testinfra.host.Host, split: Split) -> int:
    """Bytes the stage's processes have sent and received so far on their TCP connections with
    the head (`ss -tni`: bytes_sent, bytes_received of each established connection)."""
    pids = unit_pids(host, split.stage_unit)
    out = host.check_output("ss -Htnpi state established dst %s", split.head_address)
    total = 0
    owner_line = ""
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            owner_line = line
            continue
        if not owned_by(owner_line, pids):
            continue
        for field in line.split():
            name, _, value = field.partition(":")
            if name in ("bytes_sent", "bytes_received"):
                total += int(value)
    return total


def test_the_head_and_its_stage_run_as_units_on_their_hosts(hosts: Hosts, split: Split) -> None:
    head, stage = hosts[split.head], hosts[split.stage]
    assert head.service(split.head_unit).is_running
    assert stage.service(split.stage_unit).is_running
    assert not stage.service(split.head_unit).is_running  # the stage host serves no API
    command = stage.check_output("systemctl show -p ExecStart --value %s", split.stage_unit)
    for flag in (
        "--headless",
        "--node-rank 1",
        "--nnodes 2",
        f"--master-addr {split.head_address}",
    ):
        assert flag in command, command
    joined = stage.check_output("ss -Htnp state established dst %s", split.head_address)
    pids = unit_pids(stage, split.stage_unit)
    links = [line for line in joined.splitlines() if owned_by(line, pids)]
    print(f"stage 2 on {split.stage}: {len(links)} connections with the head on {split.head}")
    assert links, joined


def test_completions_take_both_stages(cfg: HxpConfig, hosts: Hosts, split: Split) -> None:
    stage = hosts[split.stage]
    key = secret(cfg.router.api_keys[0].secret.value)
    client = openai_client(cfg, key, timeout=120, max_retries=0)
    # Idle, the stages exchange nothing per second (or next to nothing): the baseline.
    before = stage_traffic(stage, split)
    time.sleep(5)
    idle = stage_traffic(stage, split) - before

    before = stage_traffic(stage, split)
    began = time.monotonic()
    tokens = []
    for n in range(REQUESTS):
        answer = client.completions.create(
            model=split.model,
            prompt=f"Count to {n}:",
            max_tokens=MAX_TOKENS,
            temperature=0,
        )
        assert answer.usage is not None
        tokens.append(answer.usage.completion_tokens)
    took = time.monotonic() - began
    moved = stage_traffic(stage, split) - before
    print(
        f"{REQUESTS} completions of {MAX_TOKENS} tokens through the router in {took:.1f} s: "
        f"{moved} bytes between the stages ({moved / REQUESTS:.0f} per request); "
        f"{idle} bytes in 5 s idle"
    )
    assert tokens == [MAX_TOKENS] * REQUESTS
    # Each generated token is one step of both stages: the head's scheduler output to stage 2,
    # its result back, and the activations between them.
    assert moved >= REQUESTS * MAX_TOKENS * 64, moved
    assert moved > 10 * idle, (moved, idle)


def test_the_engine_ports_admit_the_stage_hosts_only(
    cfg: HxpConfig, hosts: Hosts, split: Split
) -> None:
    head = hosts[split.head]
    pids = unit_pids(head, split.head_unit)
    # Sockets on the head's address or on every address: those other hosts could reach.
    listening = head.check_output("ss -Htlnp")
    ports = set()
    for line in listening.splitlines():
        address, _, port = line.split()[3].rpartition(":")
        if address in (split.head_address, "0.0.0.0", "*", "[::]") and owned_by(line, pids):
            ports.add(int(port))
    model = next(m for m in cfg.models if m.name == split.model)
    engine = sorted(p for p in ports if p != model.port)
    print(f"the head's engine listens on {split.head_address}: {engine} (API: {model.port})")
    assert split.master_port in engine
    others = [name for name in hosts if name not in (split.head, split.stage)]
    assert others, "the lab has no host beside the two stages to try from"
    tried = {}
    for port in engine:
        tried[port] = {
            split.stage: connects(hosts[split.stage], split.head_address, port),
            **{name: connects(hosts[name], split.head_address, port) for name in others},
            "controller": connects_from_controller(split.head_address, port),
        }
    print(json.dumps(tried, indent=1))
    for port, answers in tried.items():
        assert answers[split.stage] == "ok", (port, answers)
        for source, answer in answers.items():
            if source != split.stage:
                assert answer != "ok", (port, source)


def unit_state(host: testinfra.host.Host, unit: str) -> dict[str, str]:
    out = host.check_output("systemctl show -p ActiveState,MainPID,NRestarts %s", unit)
    return dict(line.split("=", 1) for line in out.splitlines())


def restarted_by_itself(
    host: testinfra.host.Host, unit: str, since: dict[str, str], began: float
) -> tuple[dict[str, str], str]:
    """The unit's state once it restarted by itself (NRestarts grew, another main process) and
    is active again, and its journal since ``began``."""
    deadline = time.monotonic() + REJOIN_TIMEOUT_S
    while time.monotonic() < deadline:
        state = unit_state(host, unit)
        if int(state["NRestarts"]) > int(since["NRestarts"]) and state["ActiveState"] == "active":
            assert state["MainPID"] != since["MainPID"]
            log = host.check_output("journalctl -q -o cat -u %s --since %s", unit, f"@{began:.0f}")
            return state, str(log)
        time.sleep(2)
    pytest.fail(f"{unit} did not restart and become active within {REJOIN_TIMEOUT_S} s: {state}")


def serves(cfg: HxpConfig, split: Split) -> float:
    """Seconds until a completion through the router answers in full (the router's health
    check takes the head back after its restart)."""
    client = openai_client(
        cfg, secret(cfg.router.api_keys[0].secret.value), timeout=60, max_retries=0
    )
    began = time.monotonic()
    while True:
        try:
            answer = client.completions.create(
                model=split.model, prompt="Again:", max_tokens=MAX_TOKENS, temperature=0
            )
            assert answer.usage is not None and answer.usage.completion_tokens == MAX_TOKENS
            return time.monotonic() - began
        except openai.APIError:
            if time.monotonic() - began > REJOIN_TIMEOUT_S:
                raise
            time.sleep(2)


def test_a_restarted_head_takes_its_stage_with_it(
    cfg: HxpConfig, hosts: Hosts, split: Split
) -> None:
    head, stage = hosts[split.head], hosts[split.stage]
    before = unit_state(stage, split.stage_unit)
    began = time.time()
    # Returns once the new head is ready, which it is only once the stage has joined it.
    restart = head.run("timeout %s systemctl restart %s", str(REJOIN_TIMEOUT_S), split.head_unit)
    ready = time.time() - began
    assert restart.rc == 0, restart.stderr
    after, log = restarted_by_itself(stage, split.stage_unit, before, began)
    assert f"the head at {split.head_address}:{split.master_port} has gone" in log, log
    assert f"joined the head at {split.head_address}:{split.master_port}" in log, log
    serving = serves(cfg, split)
    print(
        f"head restarted: ready again after {ready:.0f} s (the stage rejoined it by itself: "
        f"restart {after['NRestarts']}), serving through the router {serving:.1f} s later"
    )


def test_a_restarted_stage_takes_its_head_with_it(
    cfg: HxpConfig, hosts: Hosts, split: Split
) -> None:
    head, stage = hosts[split.head], hosts[split.stage]
    before = unit_state(head, split.head_unit)
    began = time.time()
    stage.check_output("systemctl restart %s", split.stage_unit)
    # The old head would keep answering /health and hang every request: it restarts instead.
    after, log = restarted_by_itself(head, split.head_unit, before, began)
    ready = time.time() - began
    assert f"the stage at {split.stage_address} has gone" in log, log
    serving = serves(cfg, split)
    print(
        f"stage restarted: the head restarted by itself (restart {after['NRestarts']}) and was "
        f"ready after {ready:.0f} s, serving through the router {serving:.1f} s later"
    )
