"""Real vLLM on CPU serving tiny models: the launcher, the readiness check, the test helper."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hxp_runtime.host.vllm_ready import NotReady, check_ready
from tests.vllm_servers import REPO, ServerSpec, VllmServer, embeddings_spec

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
Servers = Callable[..., list[VllmServer]]


def post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


def test_tiny_models_are_deterministic(vllm_python: Path, tmp_path: Path) -> None:
    for out in ("a", "b"):
        subprocess.run(
            [
                *(str(vllm_python), "-m", "hxp_runtime.tinymodel"),
                *("--out", str(tmp_path / out), "--name", "phi3", "--embeddings", ""),
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            check=True,
            capture_output=True,
        )
    a, b = tmp_path / "a" / "phi3", tmp_path / "b" / "phi3"
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for path in a.iterdir():
        assert path.read_bytes() == (b / path.name).read_bytes(), path.name
    config = json.loads((a / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (64, 2)
    assert config["hidden_size"] // config["num_attention_heads"] == 32
    assert 256 < config["vocab_size"] <= 512


def test_generate_server_answers_and_exports_metrics(vllm_servers: Servers) -> None:
    (server,) = vllm_servers(ServerSpec("mixtral"))
    models = json.loads(get_text(f"{server.base_url}/v1/models"))
    assert [m["id"] for m in models["data"]] == ["mixtral"]

    chat = post(
        f"{server.base_url}/v1/chat/completions",
        {"model": "mixtral", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8},
    )
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["usage"]["completion_tokens"] == 8

    metrics = get_text(f"{server.base_url}/metrics")
    for series in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:generation_tokens_total",
    ):
        assert series in metrics, series


def test_readiness_names_the_failing_check(vllm_servers: Servers) -> None:
    (server,) = vllm_servers(ServerSpec("mixtral"))
    check_ready(server.base_url, "mixtral")
    with pytest.raises(NotReady, match=r"lists \['mixtral'\], not 'hermes'"):
        check_ready(server.base_url, "hermes")
    with pytest.raises(NotReady, match="did not answer"):
        check_ready(f"http://127.0.0.1:{server.port + 1}", "mixtral", timeout=2)


def test_embeddings_server_returns_normalised_vectors(vllm_servers: Servers) -> None:
    (server,) = vllm_servers(embeddings_spec())
    answer = post(
        f"{server.base_url}/v1/embeddings",
        {"model": "all-minilm-l6-v2", "input": ["a cat", "a dog"]},
    )
    vectors = [item["embedding"] for item in answer["data"]]
    assert [len(v) for v in vectors] == [384, 384]
    assert sum(x * x for x in vectors[0]) == pytest.approx(1.0, abs=1e-3)


def test_stop_ends_the_whole_process_group(vllm_servers: Servers) -> None:
    # The last test of the session that uses vLLM (the servers stop after it anyway): starting
    # this server again would cost a minute and more of CI for a path the model servers' own
    # tests cover on the stack (test_observability stops and starts one under systemd).
    (server,) = vllm_servers(ServerSpec("mixtral"))
    assert server.process is not None
    group = server.process.pid
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
    assert not server.running
