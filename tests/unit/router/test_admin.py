"""The admin API's pieces: the shared state files, merging worker views, the endpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from hxp_runtime.router.admin import AdminApi, authorised, drain_progress, merge_views
from hxp_runtime.router.app import Gateway
from hxp_runtime.router.settings import RouterSecrets, RouterSettings
from hxp_runtime.router.shared import SharedState
from tests.unit.router.test_handlers import AUTH, KEY, call

ADMIN_KEY = "unit-admin-key-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SLO = {"latency_ms": 1000, "throughput_rps": 10}


def dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_drains_are_files_every_worker_reads_with_a_token_per_drain(tmp_path: Path) -> None:
    shared, other = SharedState(tmp_path), SharedState(tmp_path)  # two workers' handles
    token = shared.drain("chat")
    assert other.drained() == {"chat": token}
    assert shared.drain("chat") == token  # draining again is the same drain
    assert other.undrain("chat") and not other.undrain("chat")
    assert shared.drained() == {}
    assert shared.drain("chat") != token  # a new drain, a new token


def test_views_of_dead_workers_are_dropped(tmp_path: Path) -> None:
    shared = SharedState(tmp_path)
    alive, gone = 1, dead_pid()  # pid 1 is always there
    shared.publish(alive, {"drains": [], "backends": {}})
    shared.publish(gone, {"drains": [], "backends": {}})
    assert set(shared.views()) == {alive}
    assert not (tmp_path / "workers" / f"{gone}.json").exists()


def view(healthy: bool, breaker: str, in_flight: int, latency: float | None) -> dict[str, Any]:
    state = {"healthy": healthy, "breaker": breaker, "in_flight": in_flight, "draining": False}
    return {"drains": ["t1"], "backends": {"a": {**state, "latency_ms": latency}}}


def test_merged_views_take_the_worst_breaker_the_sum_in_flight_and_the_mean_latency() -> None:
    views = {
        10: view(True, "closed", 2, 10.0),
        11: view(False, "open", 1, None),
        12: view(True, "half_open", 0, 30.0),
    }
    merged = merge_views(["a", "b"], views, {"a": "t1"})
    a = merged["backends"]["a"]
    assert merged["workers"] == 3
    assert (a["healthy"], a["breaker"], a["in_flight"], a["latency_ms"]) == (
        False,
        "open",
        3,
        20.0,
    )
    assert a["draining"] and set(a["workers"]) == {"10", "11", "12"}
    b = merged["backends"]["b"]  # no worker knows it (yet): not claimed healthy
    assert not b["healthy"] and b["breaker"] == "closed" and b["in_flight"] == 0


def test_a_drain_is_done_once_every_worker_applied_it_and_nothing_is_in_flight() -> None:
    views = {10: view(True, "closed", 0, None), 11: view(True, "closed", 2, None)}
    assert drain_progress("a", "t1", views) == (True, 2)
    assert drain_progress("a", "t2", views) == (False, 2)
    assert drain_progress("a", "t1", {}) == (False, 0)


def test_the_admin_key_must_match_exactly() -> None:
    assert authorised(ADMIN_KEY, f"Bearer {ADMIN_KEY}")
    assert not authorised(ADMIN_KEY, f"Bearer {ADMIN_KEY[:-1]}")
    assert not authorised(ADMIN_KEY, None)
    assert not authorised(ADMIN_KEY, ADMIN_KEY + "x")


def test_settings_keep_the_admin_api_off_the_public_port() -> None:
    backend_spec = {"name": "a", "served_name": "a", "url": "http://127.0.0.1:9", "slo": SLO}
    with pytest.raises(ValidationError, match="admin_port 8000 must differ"):
        RouterSettings.model_validate({"backends": [backend_spec], "admin_port": 8000})
    assert RouterSettings.model_validate({"backends": [backend_spec]}).admin_port == 8001
    with pytest.raises(ValidationError):
        RouterSecrets.model_validate({"admin_key": "short"})
    assert RouterSecrets().admin_key is None


@pytest.fixture
async def admin_api(backend: str, tmp_path: Path) -> AsyncIterator[tuple[Gateway, str, str]]:
    """A started gateway with shared state, its public and its admin URL."""
    settings = RouterSettings.model_validate(
        {
            "backends": [{"name": "chat", "served_name": "chat-v1", "url": backend, "slo": SLO}],
            "health_check": {"enabled": False},
        }
    )
    secrets = RouterSecrets.model_validate(
        {"api_keys": [{"name": "ops", "secret": KEY}], "admin_key": ADMIN_KEY}
    )
    shared = SharedState(tmp_path)
    gateway = Gateway(settings, secrets, shared)
    public = web.AppRunner(gateway.build_app(), access_log=None)
    admin = web.AppRunner(AdminApi(gateway, shared).build_app(), access_log=None)
    await public.setup()
    await admin.setup()
    await web.TCPSite(public, "127.0.0.1", 0).start()
    await web.TCPSite(admin, "127.0.0.1", 0).start()
    try:
        yield (
            gateway,
            f"http://127.0.0.1:{public.addresses[0][1]}",
            f"http://127.0.0.1:{admin.addresses[0][1]}",
        )
    finally:
        await admin.cleanup()
        await public.cleanup()


async def test_drain_and_undrain_through_the_admin_api(
    admin_api: tuple[Gateway, str, str],
) -> None:
    gateway, public, admin = admin_api
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    assert (await call("POST", public + "/v1/chat/completions", chat, AUTH))[0] == 200
    assert (await call("GET", admin + "/admin/backends"))[0] == 401
    assert (await call("POST", admin + "/admin/backends/nope/drain", headers=ADMIN))[0] == 404
    bad = await call("POST", admin + "/admin/backends/chat/drain?deadline_s=-1", headers=ADMIN)
    assert bad[0] == 400
    status, _, body = await call(
        "POST", admin + "/admin/backends/chat/drain?deadline_s=5", headers=ADMIN
    )
    answer = json.loads(body)
    assert status == 200 and answer["drained"] and answer["in_flight"] == 0, answer
    assert (await call("POST", public + "/v1/chat/completions", chat, AUTH))[0] == 503
    state = json.loads((await call("GET", admin + "/admin/backends", headers=ADMIN))[2])
    assert state["workers"] == 1 and state["backends"]["chat"]["draining"]
    status, _, body = await call("POST", admin + "/admin/backends/chat/undrain", headers=ADMIN)
    assert status == 200 and json.loads(body)["was_drained"]
    assert (await call("POST", public + "/v1/chat/completions", chat, AUTH))[0] == 200
    gateway.secrets = RouterSecrets()  # a reload that removed the key turns the API off
    assert (await call("GET", admin + "/admin/backends", headers=ADMIN))[0] == 403


def test_merged_views_show_every_url_the_workers_route_a_backend_to() -> None:
    old, new = "http://10.0.0.10:11403", "http://10.0.0.10:12403"

    def routed_to(url: str) -> dict[str, Any]:
        routed = view(True, "closed", 0, None)
        routed["backends"]["a"]["url"] = url
        return routed

    # Between a blue-green switch and the last worker's reload: both; after it: the new one.
    assert merge_views(["a"], {1: routed_to(old), 2: routed_to(new)}, {})["backends"]["a"][
        "urls"
    ] == [old, new]
    assert merge_views(["a"], {1: routed_to(new), 2: routed_to(new)}, {})["backends"]["a"][
        "urls"
    ] == [new]
