"""Property: any single mistake in a valid hxp.yml is reported at its own line, quickly, cleanly.

Hypothesis generates valid deployments, then applies one mutation of a kind operators make
(wrong type, out of range, unknown key, missing field, dangling reference, duplicate name,
plaintext secret, port clash, control character, IPv6 address, a model that does not fit, a
context longer than the model's). `hxp validate` must exit 1 with a problem on the mutated
field's line, never a traceback, in under a second.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from hxp_runtime.cli import app
from hxp_runtime.yamlsource import PathKey, load_yaml

Doc = dict[str, Any]
GPU_MEMORY_GB = 80


@st.composite
def valid_configs(draw: st.DrawFn) -> Doc:
    gpu_host = draw(st.booleans())
    llm: Doc = {"name": "llm-1", "address": "10.0.0.10", "groups": ["llm"]}
    if gpu_host:
        count = draw(st.integers(1, 4))
        llm["gpus"] = [{"index": i, "memory_gb": GPU_MEMORY_GB} for i in range(count)]
    else:
        llm["accelerator"] = "cpu"
    hosts = [llm, {"name": "db-1", "address": "10.0.0.11", "groups": ["database", "cache"]}]
    models = []
    for i in range(draw(st.integers(1, 4))):
        models.append(
            {
                "name": f"m{i}",
                "port": 11400 + i,
                "memory_limit_gb": 8,
                "cpu_cores": 2,
                "slo": {"latency_ms": 500, "throughput_rps": 5},
                "architecture": {
                    "params_b": draw(st.sampled_from([0.1, 0.5, 1.0])),
                    "num_layers": 4,
                    "num_attention_heads": 8,
                    "num_kv_heads": 8,
                    "head_dim": 64,
                    "max_position_embeddings": 4096,
                },
                "engine": {
                    "max_model_len": draw(st.sampled_from([512, 1024, 2048])),
                    "max_num_seqs": draw(st.integers(1, 8)),
                },
            }
        )
    doc: Doc = {
        "version": 1,
        "name": "prop",
        "hosts": hosts,
        "models": models,
        "router": {"port": 8000, "workers": draw(st.integers(1, 8))},
        "database": {"router_password": "env:HXP_DB_PASSWORD"},
        "cache": {"password": "env:HXP_REDIS_PASSWORD"},
    }
    if len(models) > 1:
        doc["router"]["fallbacks"] = {"m0": ["m1"]}
    return doc


def _model(doc: Doc, draw: st.DrawFn) -> tuple[int, Doc]:
    i = draw(st.integers(0, len(doc["models"]) - 1))
    return i, doc["models"][i]


# Each mutation changes ``doc`` in place and returns the path whose line a problem must name.
Mutation = Callable[[Doc, st.DrawFn], PathKey]


def wrong_type(doc: Doc, draw: st.DrawFn) -> PathKey:
    i, model = _model(doc, draw)
    model["port"] = "high"
    return ("models", i, "port")


def out_of_range(doc: Doc, draw: st.DrawFn) -> PathKey:
    field, value = draw(st.sampled_from([("port", 70000), ("workers", 0), ("timeout_s", -1)]))
    doc["router"][field] = value
    return ("router", field)


def unknown_key(doc: Doc, draw: st.DrawFn) -> PathKey:
    i, model = _model(doc, draw)
    model["engine"]["max_model_length"] = 4096
    return ("models", i, "engine", "max_model_length")


def missing_field(doc: Doc, draw: st.DrawFn) -> PathKey:
    i, model = _model(doc, draw)
    del model[draw(st.sampled_from(["slo", "memory_limit_gb", "cpu_cores", "port"]))]
    return ("models", i)


def dangling_reference(doc: Doc, draw: st.DrawFn) -> PathKey:
    if draw(st.booleans()):
        doc["router"]["fallbacks"] = {"m0": ["ghost"]}
        return ("router", "fallbacks", "m0", 0)
    i, model = _model(doc, draw)
    model["host"] = "ghost-host"
    return ("models", i, "host")


def duplicate_name(doc: Doc, draw: st.DrawFn) -> PathKey:
    doc["hosts"][1]["name"] = "llm-1"
    return ("hosts", 1, "name")


def plaintext_secret(doc: Doc, draw: st.DrawFn) -> PathKey:
    doc["database"]["router_password"] = draw(st.sampled_from(["hunter2hunter2", "env-X", ""]))
    return ("database", "router_password")


def port_clash(doc: Doc, draw: st.DrawFn) -> PathKey:
    _, model = _model(doc, draw)
    model["port"] = 8000
    # The router comes after the models in the endpoint list: the clash is reported there.
    return ("router", "port")


def control_character(doc: Doc, draw: st.DrawFn) -> PathKey:
    i, model = _model(doc, draw)
    model["served_name"] = "x" + draw(st.sampled_from(["\n", "\r", "\t", "\x00", "\x7f"])) + "y"
    return ("models", i, "served_name")


def ipv6_address(doc: Doc, draw: st.DrawFn) -> PathKey:
    doc["hosts"][1]["address"] = draw(st.sampled_from(["fd00::1", "2001:db8::2"]))
    return ("hosts", 1, "address")


def does_not_fit(doc: Doc, draw: st.DrawFn) -> PathKey:
    i, model = _model(doc, draw)
    if "gpus" not in doc["hosts"][0]:
        doc["hosts"][0]["accelerator"] = "nvidia"
        doc["hosts"][0]["gpus"] = [{"index": 0, "memory_gb": GPU_MEMORY_GB}]
    model["architecture"]["params_b"] = 500.0
    return ("models", i)


def context_too_long(doc: Doc, draw: st.DrawFn) -> PathKey:
    i, model = _model(doc, draw)
    model["engine"]["max_model_len"] = 8192
    return ("models", i, "engine", "max_model_len")


MUTATIONS: list[Mutation] = [
    wrong_type,
    out_of_range,
    unknown_key,
    missing_field,
    dangling_reference,
    duplicate_name,
    plaintext_secret,
    port_clash,
    control_character,
    ipv6_address,
    does_not_fit,
    context_too_long,
]


@pytest.mark.slow  # twenty examples per mutation: about a second each
@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.__name__)
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(doc=valid_configs(), data=st.data())
def test_a_single_mistake_is_reported_at_its_line(
    tmp_path: Path, doc: Doc, mutation: Mutation, data: st.DataObject
) -> None:
    runner = CliRunner()
    config = tmp_path / "hxp.yml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    valid = runner.invoke(app, ["validate", str(config)])
    assert valid.exit_code == 0, valid.output

    broken = copy.deepcopy(doc)
    path = mutation(broken, data.draw)
    config.write_text(yaml.safe_dump(broken, sort_keys=False), encoding="utf-8")
    _, lines = load_yaml(config)
    expected_line = lines.line_of(path)

    # CPU time, not wall-clock time: other processes on a loaded machine do not count.
    started = time.process_time()
    result = runner.invoke(app, ["validate", "--json", str(config)])
    elapsed = time.process_time() - started
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    report = json.loads(result.stdout)
    assert not report["ok"]
    lines_reported = {p["line"] for p in report["problems"]}
    assert expected_line in lines_reported, (mutation.__name__, path, report["problems"])
    assert elapsed < 1.0, f"{mutation.__name__}: {elapsed:.2f} s"
