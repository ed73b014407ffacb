"""`hxp render` output read by ansible-inventory, and the CLI's exit codes and error output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.unit.conftest import BASE
from tests.unit.test_cli_contract import BASE_SECRETS, lab_config_with_secrets

REPO = Path(__file__).resolve().parents[2]
HXP = [sys.executable, "-m", "hxp_runtime.cli"]
# Every test here starts `hxp` as a process, some ansible-inventory too: about a second each,
# so they run in the full suite only. The fast loop covers the same commands in-process
# (test_cli_contract.py).
pytestmark = pytest.mark.slow


def hxp(
    *args: str | Path,
    env: dict[str, str] | None = None,
    stdin: str = "",
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HXP, *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        input=stdin,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200", **BASE_SECRETS, **(env or {})},
    )


def ansible_inventory(inventory: Path) -> dict[str, object]:
    tool = shutil.which("ansible-inventory", path=str(Path(sys.executable).parent))
    assert tool, "ansible-inventory is installed with the project"
    done = subprocess.run(
        [tool, "-i", str(inventory / "hosts.yml"), "--list"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("sample", ["sample", "lab"])
def test_rendered_inventory_is_read_by_ansible_inventory(sample: str, tmp_path: Path) -> None:
    inventory = tmp_path / "inventory"
    if sample == "sample":  # its secrets are vault: variables, resolved by Ansible
        done = hxp("render", REPO / "inventory/sample/hxp.yml", "--out", inventory)
    else:  # its secrets are files `hxp lab up` writes: here, files of this test
        config = lab_config_with_secrets(tmp_path)
        done = hxp("render", "-", "--out", inventory, stdin=config, cwd=REPO / "inventory/lab")
    assert done.returncode == 0, done.stderr
    listing = ansible_inventory(inventory)
    groups = {g for g in listing if g not in {"_meta", "all", "ungrouped"}}
    assert {"llm", "database", "vector", "metrics", "cache"} <= groups
    hostvars = listing["_meta"]["hostvars"]  # type: ignore[index]
    llm = hostvars["hx-llm-server-01"]
    names = [i["name"] for i in llm["hxp_vllm_instances"]]
    assert names == ["mixtral", "hermes", "openchat", "phi3", "minilm"]
    assert [i["port"] for i in llm["hxp_vllm_instances"]] == [11400, 11401, 11402, 11403, 11404]
    db = hostvars["hx-postgres-server-01"]
    assert db["hxp_postgresql_port"] == 5433
    assert db["hxp_postgresql_database"] == "citadel_ai"
    assert db["hxp_postgresql_allowed_clients"] == [f"{llm['ansible_host']}/32"]
    # The ports role common reserves: each host's own services, and nothing of another host's.
    assert {8000, 6379, 11400, 11401, 11402, 11403, 11404} <= set(llm["hxp_host_listen_ports"])
    assert 5433 not in llm["hxp_host_listen_ports"]
    assert {5433, 9187} <= set(db["hxp_host_listen_ports"])
    assert 8000 not in db["hxp_host_listen_ports"]


def test_render_writes_secret_lookups_never_values(tmp_path: Path) -> None:
    cfg = tmp_path / "hxp.yml"
    cfg.write_text(BASE)
    secret = "s3cr3t-value-that-must-not-leak"
    done = hxp("render", cfg, "--out", tmp_path / "inv", env={"HXP_DB_PASSWORD": secret})
    assert done.returncode == 0, done.stderr
    rendered = "".join(p.read_text() for p in (tmp_path / "inv").rglob("*.yml"))
    assert secret not in rendered
    group_all = yaml.safe_load((tmp_path / "inv/group_vars/all/hxp.yml").read_text())
    expected = "{{ lookup('hxp_secret', hxp_secret_refs['database.router_password']) }}"
    assert group_all["hxp_postgresql_router_password"] == expected
    assert group_all["hxp_secret_refs"]["database.router_password"] == {
        "scheme": "env",
        "value": "HXP_DB_PASSWORD",
    }


def test_render_removes_host_vars_of_hosts_that_left(tmp_path: Path) -> None:
    cfg = tmp_path / "hxp.yml"
    cfg.write_text(BASE)
    assert hxp("render", cfg, "--out", tmp_path / "inv").returncode == 0
    own = tmp_path / "inv/host_vars/db-1/other.yml"
    own.write_text("kept: true\n")
    cfg.write_text(BASE.replace("db-1", "db-2"))
    assert hxp("render", cfg, "--out", tmp_path / "inv").returncode == 0
    assert not (tmp_path / "inv/host_vars/db-1/hxp.yml").exists()
    assert own.exists(), "files hxp did not write are left alone"
    assert (tmp_path / "inv/host_vars/db-2/hxp.yml").exists()


def test_validate_ok_and_json(tmp_path: Path) -> None:
    cfg = tmp_path / "hxp.yml"
    cfg.write_text(BASE)
    done = hxp("validate", cfg, "--json")
    assert done.returncode == 0
    report = json.loads(done.stdout)
    assert (report["ok"], report["file"], report["problems"]) == (True, str(cfg), [])
    assert report["result"]["name"] == "unit"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BASE.replace("  - name: db-1\n", "  - name: db-1\n   bad: [\n"), "YAML syntax error"),
        (BASE.replace("name: unit\n", "name: unit\nflavour: x\n"), "unknown key 'flavour'"),
        (BASE.replace("max_num_seqs: 8", "max_num_seqs: -1"), "greater than or equal to 1"),
        (BASE.replace('"env:HXP_REDIS_PASSWORD"', "pa55"), "plaintext secret"),
        ("", "must be a YAML mapping"),
        ("\x00\x01", "YAML error"),
        # rich markup must not swallow the brackets of a pattern
        (BASE.replace("name: unit", "name: Unit_Name"), "'^[a-z0-9][a-z0-9.-]*$'"),
    ],
)
def test_bad_input_exits_1_without_traceback(tmp_path: Path, text: str, expected: str) -> None:
    cfg = tmp_path / "hxp.yml"
    cfg.write_text(text)
    for command in ("validate", "plan"):
        done = hxp(command, cfg)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr + done.stdout
        assert str(cfg) in done.stderr
        assert expected in done.stderr


def test_bad_input_json_lists_problems(tmp_path: Path) -> None:
    cfg = tmp_path / "hxp.yml"
    cfg.write_text(BASE.replace("phi3: [small]", "phi3: [nope]"))
    done = hxp("validate", cfg, "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["ok"] is False
    [problem] = report["problems"]
    assert problem["field"] == "router.fallbacks.phi3[0]"
    assert problem["line"] == BASE.splitlines().index("    phi3: [small]") + 1


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    done = hxp("validate", tmp_path / "nope.yml")
    assert done.returncode == 2
    assert "file not found" in done.stderr
    assert "Traceback" not in done.stderr


def test_usage_errors_exit_2() -> None:
    assert hxp("validate").returncode == 2
    assert hxp("plan", "--no-such-flag", "x").returncode == 2


def test_plan_prints_the_table_and_json() -> None:
    sample = REPO / "inventory/sample/hxp.yml"
    done = hxp("plan", sample)
    assert done.returncode == 0, done.stderr
    for column in ("model", "GPUs", "TP", "weights GiB", "KV GiB", "headroom GiB"):
        assert column in done.stdout
    report = json.loads(hxp("plan", sample, "--json").stdout)["result"]
    mixtral = next(i for i in report["instances"] if i["model"] == "mixtral")
    assert (mixtral["gpu_ids"], mixtral["tensor_parallel_size"]) == ([0, 1], 2)
    for gpu in report["gpus"]:
        assert gpu["utilization_sum"] <= 0.92
