"""The hxp_vllm_slots filters: which slot each model server lives in, and when a new version
swaps blue-green (role vllm, tasks/configure.yml and swap.yml)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from tests.unit.conftest import load_file_module

PLUGIN = Path(__file__).resolve().parents[2] / "plugins/filter/hxp_vllm_slots.py"
slots = load_file_module("hxp_vllm_slots", PLUGIN)
VERIFIED = {
    "tiny-phi3": {"version": "seed-0", "sha256": "a" * 64},
    "tiny-phi3-v2": {"version": "seed-1", "sha256": "b" * 64},
}


def instance(artifact: str = "tiny-phi3", *, blue_green: bool = True) -> dict[str, Any]:
    return {
        "name": "phi3",
        "unit": "hxp-vllm-phi3",
        "port": 11403,
        "spare_port": 12403,
        "model_artifact": artifact,
        "model_path": None,
        "blue_green": blue_green,
    }


def slurped(record: object) -> dict[str, Any]:
    content = base64.b64encode(json.dumps(record).encode()).decode()
    return {"item": {"name": "phi3"}, "content": content}


def test_records_are_read_and_missing_or_damaged_ones_left_out() -> None:
    record = {"slot": "green", "version": "v"}
    found = slots.hxp_vllm_slot_records(
        [
            slurped(record),
            {"item": {"name": "absent"}, "failed": True, "msg": "file not found"},
            {"item": {"name": "damaged"}, "content": base64.b64encode(b"{").decode()},
            {**slurped({"slot": "purple"}), "item": {"name": "odd"}},
        ]
    )
    assert found == {"phi3": record}


def test_without_a_record_a_server_lives_in_slot_blue_and_does_not_swap() -> None:
    [live] = slots.hxp_vllm_slots([instance()], {}, VERIFIED)
    assert (live["slot"], live["unit"], live["port"]) == ("blue", "hxp-vllm-phi3", 11403)
    assert live["version"] == f"artifact tiny-phi3 seed-0 sha256 {'a' * 12}"
    assert live["live_version"] is None and not live["swap"]
    assert live["next"] == {"slot": "green", "unit": "hxp-vllm-phi3-green", "port": 12403}


def test_a_changed_version_swaps_into_the_other_slot() -> None:
    old = slots.hxp_vllm_slots([instance()], {}, VERIFIED)[0]["version"]
    records = {"phi3": {"slot": "green", "version": old}}
    [live] = slots.hxp_vllm_slots([instance("tiny-phi3-v2")], records, VERIFIED)
    assert (live["slot"], live["unit"], live["port"]) == ("green", "hxp-vllm-phi3-green", 12403)
    assert live["swap"] and live["live_version"] == old
    assert live["next"] == {"slot": "blue", "unit": "hxp-vllm-phi3", "port": 11403}
    # Rolling servers restart in place, in whichever slot they live.
    [rolling] = slots.hxp_vllm_slots(
        [instance("tiny-phi3-v2", blue_green=False)], records, VERIFIED
    )
    assert not rolling["swap"] and rolling["unit"] == "hxp-vllm-phi3-green"


def test_the_same_version_does_not_swap_and_a_path_is_a_version() -> None:
    version = slots.hxp_vllm_slots([instance()], {}, VERIFIED)[0]["version"]
    [same] = slots.hxp_vllm_slots(
        [instance()], {"phi3": {"slot": "blue", "version": version}}, VERIFIED
    )
    assert not same["swap"]
    by_path = {**instance(artifact=""), "model_path": "/srv/models/phi3"}
    assert slots.model_version(by_path, VERIFIED) == "path /srv/models/phi3"


def test_records_read_for_prometheus_are_kept_apart_by_host() -> None:
    # Role prometheus reads the record of every target on the target's own host: two hosts
    # may serve replicas of one model, each in a slot of its own.
    green, blue = {"slot": "green", "version": "v"}, {"slot": "blue", "version": "v"}
    found = slots.hxp_vllm_host_slot_records(
        [
            {**slurped(green), "item": {"host": "llm-1", "name": "phi3"}},
            {**slurped(blue), "item": {"host": "llm-2", "name": "phi3"}},
            {"item": {"host": "llm-2", "name": "absent"}, "failed": True},
        ]
    )
    assert found == {"llm-1": {"phi3": green}, "llm-2": {"phi3": blue}}
