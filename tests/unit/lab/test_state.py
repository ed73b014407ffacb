"""What is on disk about labs: state.json round trips, the machine's registry of labs."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from hxp_runtime.lab.errors import LabError
from hxp_runtime.lab.spec import LabSpec
from hxp_runtime.lab.state import (
    LabState,
    RegisteredLab,
    load_state,
    register,
    registered_labs,
    registry_owner,
    save_state,
    unregister,
)


def test_state_round_trip(tmp_path: Path, spec: LabSpec) -> None:
    state = LabState.of(spec)
    state.created_bridge = True
    state.created_dirs.append("/srv/made")
    save_state(tmp_path, state)
    assert stat.S_IMODE((tmp_path / "state.json").stat().st_mode) == 0o600
    loaded = load_state(tmp_path)
    assert loaded == state
    assert loaded.spec(spec.state_dir).hosts == spec.hosts
    assert loaded.spec(spec.state_dir).gateway == spec.gateway


def test_state_spec_drops_what_the_state_does_not_record(spec: LabSpec) -> None:
    recorded = LabState.of(spec).spec(spec.state_dir)
    assert recorded.secret_files == ()
    assert (recorded.name, recorded.bridge, recorded.apt_proxy_port) == (
        spec.name,
        spec.bridge,
        spec.apt_proxy_port,
    )


def test_unreadable_or_absent_state(tmp_path: Path) -> None:
    assert load_state(tmp_path / "absent") is None
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(LabError, match="unreadable lab state"):
        load_state(tmp_path)
    (tmp_path / "state.json").write_text('{"name": "x", "unknown": 1}')
    with pytest.raises(LabError, match="remove the lab by hand"):
        load_state(tmp_path)


def test_a_state_without_newer_fields_still_loads(tmp_path: Path, spec: LabSpec) -> None:
    recorded = {
        "name": spec.name,
        "bridge": spec.bridge,
        "gateway": str(spec.gateway),
        "apt_proxy_port": 3142,
        "hosts": [],
    }
    (tmp_path / "state.json").write_text(json.dumps(recorded))
    loaded = load_state(tmp_path)
    assert loaded is not None
    assert (loaded.run, loaded.created_bridge, loaded.created_dirs) == ("", False, [])


def test_registry_records_who_owns_a_name(tmp_path: Path) -> None:
    registry = tmp_path / "run"
    assert registry_owner(registry, "a") is None
    register(registry, "a", tmp_path / "state-a", "run-1")
    register(registry, "b", tmp_path / "state-b", "")
    assert registry_owner(registry, "a") == tmp_path / "state-a"
    assert registered_labs(registry) == [
        RegisteredLab("a", tmp_path / "state-a", "run-1"),
        RegisteredLab("b", tmp_path / "state-b", ""),
    ]
    unregister(registry, "a")
    assert registry_owner(registry, "a") is None
    assert registry.is_dir()  # b is still registered
    unregister(registry, "b")
    assert not registry.exists()


def test_registry_skips_entries_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "nodir.json").write_text('{"run": "x"}')
    (tmp_path / "old.json").write_text('{"state_dir": "/srv/old"}')
    assert registry_owner(tmp_path, "broken") is None
    assert registered_labs(tmp_path) == [RegisteredLab("old", Path("/srv/old"), "")]
