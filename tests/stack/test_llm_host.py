"""Role vllm as the whole stack deploys it: one hardened unit per model on the LLM host, real vLLM
on CPU, ready and serving, reached at the host's address from the host itself, as the router
reaches it (the firewall admits no one else but Prometheus).

These checks ran in the vllm role's own Molecule scenario, on a host of their own that booted
and deployed the same five servers again; here they run against the stack's LLM host, so CI
starts those servers once. The tiny models answer noise: the tests check shapes, counts and
metrics.
"""

from __future__ import annotations

import json
import urllib.error
from typing import Any

import pytest
import testinfra
import yaml

from hxp_runtime.config import HostGroup, HxpConfig, load_config
from hxp_runtime.host.gpu_exporter import DEFAULT_PORT
from tests.stack.conftest import host_in, http_on, secret
from tests.stack.router import CONFIG, REPO

Hosts = dict[str, testinfra.host.Host]
Instance = dict[str, Any]


def _instances() -> list[Instance]:
    """The servers `hxp deploy` rendered for the LLM host (its host_vars), at collection time."""
    cfg = load_config(CONFIG)
    llm = next(h.name for h in cfg.hosts if HostGroup.LLM in h.groups)
    rendered = REPO / ".hxp" / cfg.name / "inventory" / "host_vars" / llm / "hxp.yml"
    if not rendered.is_file():
        return []  # no deploy yet: the fixtures below fail with the reason
    instances: list[Instance] = yaml.safe_load(rendered.read_text())["hxp_vllm_instances"]
    return instances


INSTANCES = _instances()
GENERATORS = [i for i in INSTANCES if i["task"] == "generate"]
EMBEDDERS = [i for i in INSTANCES if i["task"] == "embed"]


@pytest.fixture(scope="module")
def llm(cfg: HxpConfig, hosts: Hosts) -> testinfra.host.Host:
    assert INSTANCES, f"no rendered inventory under {REPO / '.hxp'}: run scripts/stack up first"
    return host_in(cfg, hosts, HostGroup.LLM)


@pytest.fixture(scope="module")
def address(cfg: HxpConfig, llm: testinfra.host.Host) -> str:
    return str(cfg.host(llm.backend.get_hostname()).address)


@pytest.fixture(scope="module")
def api_key(cfg: HxpConfig) -> str:
    assert cfg.router.upstream_api_key is not None
    return secret(cfg.router.upstream_api_key.value)


def call(
    llm: testinfra.host.Host,
    address: str,
    instance: Instance,
    path: str,
    body: Any = None,
    key: str | None = None,
) -> Any:
    """``path`` of the server, asked from the LLM host as the router asks it, with the server's
    own key (read there from its env file) unless ``key`` is given."""
    payload = http_on(
        llm,
        f"http://{address}:{instance['port']}{path}",
        body,
        key=key,
        env_file=f"/etc/hxp/vllm/{instance['name']}.env",
    )
    return json.loads(payload) if path.startswith("/v1") else payload


def chat(llm: testinfra.host.Host, address: str, instance: Instance, tokens: int = 4) -> Any:
    body = {
        "model": instance["served_name"],
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": tokens,
    }
    return call(llm, address, instance, "/v1/chat/completions", body)


def test_every_model_is_planned_in_one_start_wave(cfg: HxpConfig) -> None:
    # A CPU host: its servers start together (hxp_runtime/planner.py, _place_cpu_host).
    assert sorted(i["name"] for i in INSTANCES) == sorted(m.name for m in cfg.models)
    assert {i["start_order"] for i in INSTANCES} == {1}
    assert GENERATORS and EMBEDDERS


@pytest.mark.parametrize("instance", INSTANCES, ids=[i["name"] for i in INSTANCES])
def test_server_is_enabled_listening_and_names_its_model(
    llm: testinfra.host.Host, address: str, instance: Instance
) -> None:
    service = llm.service(instance["unit"])
    assert service.is_running and service.is_enabled
    assert llm.socket(f"tcp://{address}:{instance['port']}").is_listening
    models = call(llm, address, instance, "/v1/models")
    assert [m["id"] for m in models["data"]] == [instance["served_name"]]
    metrics = call(llm, address, instance, "/metrics")
    for series in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        assert series in metrics
    if instance["task"] == "generate":
        assert "vllm:kv_cache_usage_perc" in metrics
        answer = chat(llm, address, instance)
        assert answer["model"] == instance["served_name"]
        assert answer["choices"][0]["message"]["role"] == "assistant"
        assert answer["usage"]["completion_tokens"] == 4
    else:
        body = {"model": instance["served_name"], "input": "a cat"}
        answer = call(llm, address, instance, "/v1/embeddings", body)
        assert len(answer["data"][0]["embedding"]) == 384


def test_api_key_is_required(llm: testinfra.host.Host, address: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        call(llm, address, GENERATORS[0], "/v1/models", key="wrong")
    refused.value.close()
    assert refused.value.code == 401


def test_unit_carries_the_planned_limits(llm: testinfra.host.Host) -> None:
    instance = GENERATORS[0]
    shown = llm.check_output(
        "systemctl show %s -p User -p Restart -p PrivateDevices -p CPUQuotaPerSecUSec "
        "-p MemoryMax -p ExecStartPost",
        instance["unit"],
    )
    props = dict(line.split("=", 1) for line in shown.splitlines())
    assert props["User"] == "hxp-vllm"
    assert props["Restart"] == "on-failure"
    assert props["PrivateDevices"] == "yes"
    assert props["CPUQuotaPerSecUSec"] == f"{instance['cpu_cores']}s"
    assert int(props["MemoryMax"]) == int(instance["memory_limit_gb"] * 1024) * 2**20
    assert "vllm_ready.py" in props["ExecStartPost"]


def test_cpu_mode_and_models_come_from_the_config_and_bundle(llm: testinfra.host.Host) -> None:
    for instance in GENERATORS:
        unit = llm.file(f"/etc/systemd/system/{instance['unit']}.service").content_string
        assert "VLLM_TARGET_DEVICE=cpu" in unit
        assert "--kv-cache-memory-bytes" in unit
        assert "--gpu-memory-utilization" not in unit
        assert f"serve /var/cache/hxp/bundle/models/{instance['model_artifact']} " in unit
        assert f"bundle artifact {instance['model_artifact']}, sha256 " in unit


def test_no_server_waits_for_another(llm: testinfra.host.Host) -> None:
    # One start wave: no server is ordered after another, at boot as in a deploy.
    units = [i["unit"] for i in INSTANCES]
    for unit in units:
        after = llm.check_output(f"systemctl show {unit} -p After --value").split()
        assert not [u for u in units if f"{u}.service" in after], (unit, after)


def test_api_key_stays_out_of_the_unit(llm: testinfra.host.Host, api_key: str) -> None:
    env = llm.file(f"/etc/hxp/vllm/{INSTANCES[0]['name']}.env")
    assert (env.user, env.group, env.mode) == ("root", "hxp-vllm", 0o640)
    shown = llm.check_output(f"systemctl show {INSTANCES[0]['unit']} -p ExecStart")
    assert api_key not in shown


def test_no_gpu_exporter_on_a_host_without_gpus(llm: testinfra.host.Host, address: str) -> None:
    # The lab's LLM host is `accelerator: cpu`: the role installs the exporter only with CUDA
    # (the exporter process itself: tests/integration/test_gpu_exporter_process.py).
    assert not llm.service("hxp-gpu-exporter").is_running
    assert not llm.socket(f"tcp://{address}:{DEFAULT_PORT}").is_listening
