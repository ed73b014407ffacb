"""Small pure pieces of the gateway: prompt extraction, usage scanning, cacheability, vLLM
metrics parsing, error bodies, metric names."""

from __future__ import annotations

import json

from hxp_runtime.router.backends import parse_vllm_load
from hxp_runtime.router.cache import cache_key, cacheable
from hxp_runtime.router.errors import error_body
from hxp_runtime.router.metrics import RouterMetrics
from hxp_runtime.router.pipeline import prompt_of
from hxp_runtime.router.strategies import Endpoint
from hxp_runtime.router.usage import UsageRecorder, usage_of


def test_prompt_is_the_last_user_message_or_the_prompt() -> None:
    chat = {
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "reply"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "second"}, {"type": "image_url"}],
            },
            {"role": "system", "content": "be nice"},
        ]
    }
    assert prompt_of(Endpoint.CHAT, chat) == "second"
    assert prompt_of(Endpoint.COMPLETION, {"prompt": ["a", "b"]}) == "a b"
    assert prompt_of(Endpoint.EMBEDDING, {"input": "x"}) == "x"
    assert prompt_of(Endpoint.CHAT, {"messages": "not a list of messages"}) == ""


def test_usage_is_read_without_parsing_the_body() -> None:
    body = json.dumps(
        {
            "choices": [{"text": "prompt_tokens"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7},
        }
    ).encode()
    assert usage_of(body) == (12, 7)
    assert usage_of(b'{"usage":{"prompt_tokens":4,"total_tokens":4}}') == (4, 0)  # embeddings
    assert usage_of(b'data: {"choices":[]}\n\n') is None
    sse_tail = (
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9}}\n\n'
        b"data: [DONE]\n\n"
    )
    assert usage_of(sse_tail) == (3, 9)


def test_usage_tally_per_key_and_model() -> None:
    recorder = UsageRecorder(None, 60)
    recorder.record("k", "m", 10, 5, error=False)
    recorder.record("k", "m", 1, 1, error=True)
    recorder.record("k", "other", 2, 2, error=False)
    rows = {(r[2], r[3]): r[4:] for r in recorder.take_rows()}
    assert rows == {("k", "m"): (2, 1, 11, 6), ("k", "other"): (1, 0, 2, 2)}
    assert recorder.take_rows() == []


def test_only_greedy_single_choice_requests_are_cacheable() -> None:
    assert cacheable({"temperature": 0})
    assert cacheable({"temperature": 0.0, "n": 1})
    assert not cacheable({})  # vLLM's default temperature is not 0
    assert not cacheable({"temperature": 0, "stream": True})
    assert not cacheable({"temperature": 0, "n": 2})
    assert not cacheable({"temperature": False})
    assert cache_key(b"/v1/completions", "m", b"{}") != cache_key(b"/v1/completions", "n", b"{}")


def test_vllm_load_gauges_are_summed_over_label_sets() -> None:
    text = "\n".join(
        [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            'vllm:num_requests_running{engine="0",model_name="m"} 3.0',
            'vllm:num_requests_running{engine="1",model_name="m"} 1.0',
            'vllm:num_requests_waiting{engine="0",model_name="m"} 14.0',
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25',
            'vllm:num_requests_waiting_by_reason{reason="x"} 99.0',
            "process_cpu_seconds_total 1.0",
        ]
    )
    assert parse_vllm_load(text) == {"running": 4.0, "waiting": 14.0, "kv_usage": 0.25}


def test_error_bodies_are_openai_shaped() -> None:
    error = json.loads(error_body(429, "slow down", "rate_limit_exceeded"))["error"]
    assert error == {
        "message": "slow down",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }


def test_metric_names_follow_prometheus_conventions() -> None:
    metrics = RouterMetrics()
    metrics.observe("hermes", "hermes", 200, 0.05, ttft=0.01)
    metrics.breaker_state.labels("hermes").set(0)
    metrics.upstream_healthy.labels("hermes").set(1)
    text = metrics.exposition().decode()
    for line in (
        'hxp_router_requests_total{backend="hermes",model="hermes",status="200"} 1.0',
        'hxp_router_request_duration_seconds_bucket{backend="hermes",le="0.05",model="hermes"} 1.0',
        'hxp_router_time_to_first_token_seconds_count{backend="hermes",model="hermes"} 1.0',
        'hxp_router_circuit_breaker_state{backend="hermes"} 0.0',
        'hxp_router_upstream_healthy{backend="hermes"} 1.0',
    ):
        assert line in text, line
    names = {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")
    }
    assert all(":" not in name and name.startswith("hxp_router_") for name in names)
