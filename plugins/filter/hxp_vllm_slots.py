"""hxp_vllm_slots: which of its two slots each model server lives in, for role vllm's blue-green
swaps. Slot blue is the model's unit on its port, slot green the unit NAME-green on its spare
port (port + 1000); /etc/hxp/vllm/NAME.slot.json records the live slot and the version (model
source) it serves, so that a deploy knows whether the version changed and where it runs."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

BLUE, GREEN = "blue", "green"


def _slot_record(result: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record a slurp read, or None when it is missing or unreadable."""
    if "content" not in result:
        return None
    try:
        record = json.loads(base64.b64decode(result["content"]))
    except ValueError:
        return None
    return record if isinstance(record, dict) and record.get("slot") in (BLUE, GREEN) else None


def hxp_vllm_slot_records(slurped: list[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Instance name -> its slot record, from role vllm's slurp of every record (loop over
    hxp_vllm_instances). A missing or unreadable record is left out: the deploy writes it."""
    records = {}
    for result in slurped:
        record = _slot_record(result)
        if record is not None:
            records[result["item"]["name"]] = record
    return records


def hxp_vllm_host_slot_records(
    slurped: list[Mapping[str, Any]],
) -> dict[str, dict[str, dict[str, Any]]]:
    """LLM host -> instance name -> slot record, from role prometheus's slurp of the records
    of every target (loop over hxp_prometheus_vllm_targets, each read on its host)."""
    records: dict[str, dict[str, dict[str, Any]]] = {}
    for result in slurped:
        record = _slot_record(result)
        if record is not None:
            records.setdefault(result["item"]["host"], {})[result["item"]["name"]] = record
    return records


def hxp_vllm_live_targets(
    targets: list[Mapping[str, Any]], records: Mapping[str, Mapping[str, Mapping[str, Any]]]
) -> list[dict[str, Any]]:
    """Prometheus file_sd target groups of model servers: each server at the address of the
    slot its record (``records``: host -> instance name -> record) says is live, labelled with
    that slot. ``targets`` are hxp_runtime.observability.scrape.vllm_targets: the address of
    every slot a server may live in, and its labels.

    Without a record a server lives in slot blue (as hxp_vllm_slots has it). A record that
    names slot green for a model that no longer swaps blue-green falls back to the model's
    port: hxp.yml gives that model no spare port any more, and the firewall admits none."""
    groups = []
    for target in targets:
        record = records.get(target["host"], {}).get(target["name"], {})
        slot = record.get("slot", BLUE)
        if slot not in target["slots"]:
            slot = BLUE
        groups.append(
            {"targets": [target["slots"][slot]], "labels": {**target["labels"], "slot": slot}}
        )
    return groups


def model_version(instance: Mapping[str, Any], verified: Mapping[str, Any]) -> str:
    """What a server serves: its bundle artifact with that artifact's version and sha256, or
    its directory on the host."""
    artifact = instance.get("model_artifact")
    if not artifact:
        return f"path {instance['model_path']}"
    item = verified.get(artifact, {})
    return f"artifact {artifact} {item.get('version') or ''} sha256 {item.get('sha256', '')[:12]}"


def _slot(instance: Mapping[str, Any], slot: str) -> dict[str, Any]:
    if slot == BLUE:
        return {"slot": BLUE, "unit": instance["unit"], "port": instance["port"]}
    return {"slot": GREEN, "unit": f"{instance['unit']}-green", "port": instance["spare_port"]}


def hxp_vllm_slots(
    instances: list[Mapping[str, Any]],
    records: Mapping[str, Mapping[str, Any]],
    verified: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Each instance as it runs now: ``unit``, ``port`` and ``slot`` of its live slot, and

    - ``version``: what hxp.yml asks for; ``live_version``: what the record says runs (None
      before the first record);
    - ``swap``: the version changed and the instance swaps blue-green: the new version starts
      in the other slot, ``next`` (its slot, unit and port), beside the live one.
    """
    live = []
    for instance in instances:
        record = records.get(instance["name"], {})
        current = _slot(instance, record.get("slot", BLUE))
        version = model_version(instance, verified)
        live_version = record.get("version")
        live.append(
            {
                **instance,
                **current,
                "version": version,
                "live_version": live_version,
                "swap": bool(instance.get("blue_green"))
                and live_version is not None
                and live_version != version,
                "next": _slot(instance, GREEN if current["slot"] == BLUE else BLUE),
            }
        )
    return live


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "hxp_vllm_slots": hxp_vllm_slots,
            "hxp_vllm_slot_records": hxp_vllm_slot_records,
            "hxp_vllm_host_slot_records": hxp_vllm_host_slot_records,
            "hxp_vllm_live_targets": hxp_vllm_live_targets,
        }
