"""The version has one source, pyproject.toml: the code reads it from the package metadata."""

from __future__ import annotations

import json
import re
from importlib.metadata import version
from pathlib import Path

from aiohttp.test_utils import make_mocked_request

import hxp_runtime
from hxp_runtime.router.app import Gateway
from hxp_runtime.router.handlers import Handlers
from hxp_runtime.router.settings import RouterSecrets, RouterSettings

PACKAGE = Path(hxp_runtime.__file__).parent
BACKEND = {"name": "phi3", "served_name": "phi-3-mini", "url": "http://127.0.0.1:11403"}
SETTINGS = {"backends": [{**BACKEND, "slo": {"latency_ms": 1500, "throughput_rps": 30}}]}


def test_the_package_version_is_the_distributions() -> None:
    assert hxp_runtime.__version__ == version("hxp")


async def test_the_routers_api_document_carries_the_package_version() -> None:
    gateway = Gateway(RouterSettings.model_validate(SETTINGS), RouterSecrets())
    handlers = Handlers(gateway)
    response = await handlers.openapi(make_mocked_request("GET", "/openapi.json"))
    assert isinstance(response.body, bytes)
    assert json.loads(response.body)["info"]["version"] == version("hxp")


def test_no_module_restates_the_version() -> None:
    literal = re.compile(rf"""["']{re.escape(version("hxp"))}["']""")
    restated = [
        f"{path.relative_to(PACKAGE.parent)}:{number}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if literal.search(line)
    ]
    assert restated == []
