"""Role vllm on a lab host: real vLLM on CPU, one hardened unit per model, ready and serving.

The servers are reached from the controller over the lab bridge, as the router and Prometheus
reach them. The tiny models answer noise: the tests check shapes, counts and metrics.
"""

import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from hxp_runtime.host.gpu_exporter import DEFAULT_PORT

SCENARIO = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
INSTANCES = yaml.safe_load((SCENARIO / "rendered/host_vars/hx-llm-server-01/hxp.yml").read_text())[
    "hxp_vllm_instances"
]
API_KEY = (SCENARIO / "secrets/vllm-api-key").read_text().strip()
GENERATORS = [i for i in INSTANCES if i["task"] == "generate"]
EMBEDDERS = [i for i in INSTANCES if i["task"] == "embed"]
ids = [i["name"] for i in INSTANCES]


def address(host):
    return host.ansible.get_variables()["ansible_host"]


def call(host, instance, path, body=None, key=API_KEY, timeout=60):
    request = urllib.request.Request(
        f"http://{address(host)}:{instance['port']}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http URL built above
        payload = response.read().decode()
    return json.loads(payload) if path.startswith("/v1") else payload


def chat(host, instance, tokens=4):
    return call(
        host,
        instance,
        "/v1/chat/completions",
        {
            "model": instance["served_name"],
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": tokens,
        },
    )


def test_five_servers_planned():
    assert len(GENERATORS) == 4 and len(EMBEDDERS) == 1
    assert sorted(i["start_order"] for i in INSTANCES) == list(range(1, 6))


@pytest.mark.parametrize("instance", INSTANCES, ids=ids)
def test_unit_is_active_enabled_and_listening(host, instance):
    service = host.service(instance["unit"])
    assert service.is_running and service.is_enabled
    assert host.socket(f"tcp://{address(host)}:{instance['port']}").is_listening


@pytest.mark.parametrize("instance", INSTANCES, ids=ids)
def test_models_endpoint_lists_the_served_name(host, instance):
    models = call(host, instance, "/v1/models")
    assert [m["id"] for m in models["data"]] == [instance["served_name"]]


@pytest.mark.parametrize("instance", GENERATORS, ids=[i["name"] for i in GENERATORS])
def test_chat_completion_answers(host, instance):
    answer = chat(host, instance)
    assert answer["model"] == instance["served_name"]
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["usage"]["completion_tokens"] == 4


def test_embeddings_are_384_dimensional(host):
    (embedder,) = EMBEDDERS
    answer = call(
        host, embedder, "/v1/embeddings", {"model": embedder["served_name"], "input": "a cat"}
    )
    assert len(answer["data"][0]["embedding"]) == 384


def test_api_key_is_required(host):
    with pytest.raises(urllib.error.HTTPError) as refused:
        call(host, GENERATORS[0], "/v1/models", key="wrong")
    refused.value.close()
    assert refused.value.code == 401


@pytest.mark.parametrize("instance", INSTANCES, ids=ids)
def test_vllm_metrics_are_exposed(host, instance):
    metrics = call(host, instance, "/metrics")
    for series in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        assert series in metrics
    if instance["task"] == "generate":
        assert "vllm:kv_cache_usage_perc" in metrics


def test_unit_carries_limits_and_hardening(assert_hardened):
    instance = GENERATORS[0]
    props = assert_hardened(
        instance["unit"],
        *("User", "Restart", "PrivateDevices", "CPUQuotaPerSecUSec", "MemoryMax"),
        *("TimeoutStartUSec", "ExecStartPost"),
    )
    assert props["User"] == "hxp-vllm"
    assert props["Restart"] == "on-failure"
    assert props["PrivateDevices"] == "yes"
    assert props["CPUQuotaPerSecUSec"] == f"{instance['cpu_cores']}s"
    assert int(props["MemoryMax"]) == int(instance["memory_limit_gb"] * 1024) * 2**20
    assert props["TimeoutStartUSec"] == "5min 30s"
    assert "vllm_ready.py" in props["ExecStartPost"]


def test_cpu_mode_comes_from_the_config(host):
    unit = host.file(f"/etc/systemd/system/{GENERATORS[0]['unit']}.service").content_string
    assert "VLLM_TARGET_DEVICE=cpu" in unit
    assert "--kv-cache-memory-bytes" in unit
    assert "--gpu-memory-utilization" not in unit


def test_models_come_from_the_bundle_or_the_controller(host):
    for instance in GENERATORS:
        unit = host.file(f"/etc/systemd/system/{instance['unit']}.service").content_string
        assert f"serve /var/cache/hxp/bundle/models/{instance['model_artifact']} " in unit
        assert f"bundle artifact {instance['model_artifact']}, sha256 " in unit
    (embedder,) = EMBEDDERS
    assert embedder["model_path"] == "/var/lib/hxp/models/minilm"
    assert host.file("/var/lib/hxp/models/minilm/model.safetensors").is_file


def test_later_servers_start_after_earlier_ones(host):
    last = max(INSTANCES, key=lambda i: i["start_order"])
    after = host.check_output(f"systemctl show {last['unit']} -p After")
    for earlier in INSTANCES:
        if earlier is not last:
            assert f"{earlier['unit']}.service" in after


def test_api_key_file_is_private(host):
    env = host.file(f"/etc/hxp/vllm/{INSTANCES[0]['name']}.env")
    assert (env.user, env.group, env.mode) == ("root", "hxp-vllm", 0o640)
    assert API_KEY not in host.check_output(f"systemctl show {INSTANCES[0]['unit']} -p ExecStart")


def test_gpu_exporter_runs_and_reports_no_driver(host):
    assert host.service("hxp-gpu-exporter").is_running
    url = f"http://{address(host)}:{DEFAULT_PORT}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert "hxp_gpu_nvml_up 0.0" in answer.read().decode()


def test_restarting_one_server_leaves_the_others_serving(host):
    target, others = GENERATORS[-1], GENERATORS[:-1]
    before = host.check_output(f"systemctl show -p MainPID --value {target['unit']}")
    outcome = {}
    restart = threading.Thread(
        target=lambda: outcome.update(rc=host.run(f"systemctl restart {target['unit']}").rc)
    )
    restart.start()
    served = 0
    try:
        while restart.is_alive():
            for other in others:
                assert chat(host, other, tokens=1)["usage"]["completion_tokens"] == 1
                served += 1
            time.sleep(0.5)
    finally:
        restart.join(timeout=400)
    assert outcome["rc"] == 0, "the restarted unit did not come back ready"
    assert served >= len(others)
    assert host.check_output(f"systemctl show -p MainPID --value {target['unit']}") != before
    assert chat(host, target)["usage"]["completion_tokens"] == 4
