"""Whole-stack checks on the lab deployed by `scripts/stack up` (the README's main job).

These tests need the running lab, so `scripts/test` runs them through `scripts/stack verify`,
not with the unit and integration tests. HXP_STACK_CONFIG names the lab's hxp.yml
(default inventory/lab/hxp.yml).
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import testinfra

from hxp_runtime.config import HostGroup, HxpConfig, load_config, resolve_host
from hxp_runtime.lab import load_lab
from tests.stack.router import CONFIG


@pytest.fixture(scope="session")
def cfg() -> HxpConfig:
    return load_config(CONFIG)


@pytest.fixture(scope="session")
def lab_inventory() -> Path:
    inventory = load_lab(CONFIG).inventory_file
    if not inventory.is_file():
        pytest.fail(f"the lab of {CONFIG} is not up: run scripts/stack up first")
    return inventory


@pytest.fixture(scope="session")
def hosts(lab_inventory: Path) -> dict[str, testinfra.host.Host]:
    found = testinfra.get_hosts(["ansible://all"], ansible_inventory=str(lab_inventory))
    return {h.backend.get_hostname(): h for h in found}


def host_in(
    cfg: HxpConfig, hosts: dict[str, testinfra.host.Host], group: HostGroup
) -> testinfra.host.Host:
    name = resolve_host(cfg, None, group)
    assert name is not None, f"the lab config has no single {group.value} host"
    return hosts[name]


@pytest.fixture
def config_copy() -> Iterator[Path]:
    """A path for a changed hxp.yml in a directory beside the lab's, so that its relative paths
    (bundle, lab state) resolve from the copy as from the original."""
    where = Path(tempfile.mkdtemp(prefix="hxp-ops-", dir=CONFIG.parent.parent))
    yield where / CONFIG.name
    shutil.rmtree(where)


def secret(path: str) -> str:
    """A lab secret: `hxp lab up` wrote it (0600) on this controller."""
    return Path(path).read_text(encoding="utf-8").strip()


# Run with python3 on a lab host: argv[1] is [url, body or null, key or null, env file or null];
# the bearer key is given, or read there from the env file's VLLM_API_KEY line, so that a
# credential of the host never travels on a command line. Prints [status, body].
HTTP_ON_HOST = """
import json, sys, urllib.error, urllib.request
url, body, key, env_file = json.loads(sys.argv[1])
if key is None and env_file is not None:
    for line in open(env_file, encoding="utf-8"):
        name, _, value = line.strip().partition("=")
        if name == "VLLM_API_KEY":
            key = value
headers = {"Content-Type": "application/json"}
if key is not None:
    headers["Authorization"] = "Bearer " + key
data = json.dumps(body).encode() if body is not None else None
request = urllib.request.Request(url, data=data, headers=headers)
try:
    with urllib.request.urlopen(request, timeout=120) as answer:
        print(json.dumps([answer.status, answer.read().decode()]))
except urllib.error.HTTPError as refused:
    print(json.dumps([refused.code, refused.read().decode()]))
"""


def http_on(
    host: testinfra.host.Host,
    url: str,
    body: Any = None,
    *,
    key: str | None = None,
    env_file: str | None = None,
) -> str:
    """An HTTP request sent from a lab host (the firewall admits a model server's port from its
    own host and Prometheus only, not from this controller). Returns the body of a 2xx answer;
    raises urllib.error.HTTPError for any other status, as urlopen would."""
    answer = host.run("python3 -c %s %s", HTTP_ON_HOST, json.dumps([url, body, key, env_file]))
    if answer.rc != 0:
        raise ConnectionError(f"{url} from {host.backend.get_hostname()}: {answer.stderr[-500:]}")
    status, text = json.loads(answer.stdout)
    if not 200 <= status < 300:
        raise urllib.error.HTTPError(url, status, text[:200], Message(), None)
    return str(text)


class Prometheus:
    """Prometheus's HTTP API with the deployment's basic auth."""

    def __init__(self, base_url: str, user: str, password: str) -> None:
        self.base_url = base_url
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base_url}{path}?{urlencode(params)}"
        request = urllib.request.Request(url, headers=self.headers)
        with urllib.request.urlopen(request, timeout=30) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        return body["data"]


@pytest.fixture(scope="module")
def prometheus(cfg: HxpConfig) -> Prometheus:
    assert cfg.metrics is not None
    password = secret(cfg.metrics.web_password.value)
    return Prometheus(_prometheus_url(cfg), cfg.metrics.web_user, password)


def _prometheus_url(cfg: HxpConfig) -> str:
    assert cfg.metrics is not None
    host = resolve_host(cfg, cfg.metrics.host, HostGroup.METRICS)
    assert host is not None
    return f"http://{cfg.host(host).address}:{cfg.metrics.prometheus_port}"
