"""The command-line contract: every --json answer matches data/cli-output.schema.json, for
success, invalid input and usage errors alike; exit codes; --version; stdin; piped tables."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from hxp_runtime.certs import create_ca
from hxp_runtime.cli import main
from hxp_runtime.lab import load_lab
from hxp_runtime.lab.lifecycle import write_tls_files
from tests.unit.conftest import BASE, line_of

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "inventory/sample/hxp.yml"
LAB = REPO / "inventory/lab/hxp.yml"
SCHEMA = json.loads(
    files("hxp_runtime").joinpath("data/cli-output.schema.json").read_text(encoding="utf-8")
)
# BASE's env: secrets, which render and deploy need to resolve.
BASE_SECRETS = {"HXP_DB_PASSWORD": "db-secret", "HXP_REDIS_PASSWORD": "redis-secret"}


def lab_config_with_secrets(tmp_path: Path) -> str:
    """inventory/lab/hxp.yml with its file: secrets (written by `hxp lab up` under /var/lib)
    moved to files of this test; relative paths in it start from inventory/lab."""
    text = LAB.read_text(encoding="utf-8")
    for secret in sorted(set(re.findall(r"file:(/var/lib/hxp-lab/secrets/[\w.-]+)", text))):
        moved = tmp_path / Path(secret).name
        moved.write_text("lab-secret\n", encoding="utf-8")
        text = text.replace(f"file:{secret}", f"file:{moved}")
    # Its TLS files as `hxp lab up` makes them, from a CA of this test.
    (tmp_path / "lab.yml").write_text(text, encoding="utf-8")
    tls = load_lab(tmp_path / "lab.yml").tls
    assert tls is not None
    for path in tls.files:
        path.unlink()
    write_tls_files(tls, create_ca("unit CA"), lambda _: None)
    return text


@dataclass(frozen=True)
class Done:
    code: int
    stdout: str
    stderr: str

    def envelope(self, command: str | None) -> dict[str, Any]:
        """stdout as the one JSON document of the contract, checked against the schema."""
        document: dict[str, Any] = json.loads(self.stdout)
        jsonschema.validate(document, SCHEMA, cls=jsonschema.Draft202012Validator)
        assert (document["command"], document["exit_code"]) == (command, self.code)
        return document


Hxp = Callable[..., Done]


@pytest.fixture
def hxp(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Hxp:
    """Run `hxp ARGS` in this process through main(), as the console script does."""
    for name, value in BASE_SECRETS.items():
        monkeypatch.setenv(name, value)

    def run(*args: str | Path, stdin: str = "") -> Done:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return Done(code, out, err)

    return run


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("config", [SAMPLE, LAB], ids=["sample", "lab"])
@pytest.mark.parametrize("command", ["validate", "plan"])
def test_success_envelope(hxp: Hxp, command: str, config: Path) -> None:
    done = hxp(command, config, "--json")
    report = done.envelope(command)
    assert (report["ok"], report["file"], report["problems"]) == (True, str(config), [])
    assert done.stderr == ""


def test_validate_result_names_the_deployment(hxp: Hxp) -> None:
    result = hxp("validate", SAMPLE, "--json").envelope("validate")["result"]
    assert result["name"] == "hxp-production"
    assert "hx-llm-server-01" in result["hosts"]
    assert "mixtral" in result["models"]


def test_render_envelope_lists_the_written_files(hxp: Hxp, tmp_path: Path) -> None:
    done = hxp("render", SAMPLE, "--out", tmp_path, "--json")
    result = done.envelope("render")["result"]
    assert result["inventory"] == str(tmp_path)
    assert str(tmp_path / "hosts.yml") in result["files"]
    assert all(Path(f).is_file() for f in result["files"])


def test_render_reads_stdin_with_paths_from_the_working_directory(
    hxp: Hxp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = lab_config_with_secrets(tmp_path)
    monkeypatch.chdir(LAB.parent)  # the lab's bundle.path is relative: ../../.cache/bundle-lab
    done = hxp("render", "-", "--out", tmp_path / "inventory", "--json", stdin=config)
    report = done.envelope("render")
    assert report["file"] == "<stdin>"
    assert "from <stdin>" in (tmp_path / "inventory/hosts.yml").read_text()


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_stdin_is_read_as_the_config(hxp: Hxp, command: str) -> None:
    from_file = hxp(command, SAMPLE, "--json").envelope(command)
    from_stdin = hxp(command, "-", "--json", stdin=SAMPLE.read_text()).envelope(command)
    assert from_stdin["file"] == "<stdin>"
    assert from_stdin["result"] == from_file["result"]


def test_invalid_stdin_names_stdin_and_the_line(hxp: Hxp) -> None:
    done = hxp("validate", "-", stdin=BASE.replace("max_num_seqs: 8", "max_num_seqs: -1"))
    assert done.code == 1
    line = line_of(BASE, "max_num_seqs: 8")
    assert f"<stdin>:{line}: models[0].engine.max_num_seqs:" in done.stderr


@pytest.mark.parametrize("command", ["validate", "plan", "render"])
def test_invalid_config_envelope(hxp: Hxp, tmp_path: Path, command: str) -> None:
    config = tmp_path / "hxp.yml"
    config.write_text(BASE.replace("phi3: [small]", "phi3: [nope]"))
    done = hxp(command, config, "--json", *(["--out", tmp_path / "inv"] * (command == "render")))
    report = done.envelope(command)
    assert (report["ok"], report["exit_code"], report["result"]) == (False, 1, None)
    [problem] = report["problems"]
    assert problem == {
        "file": str(config),
        "line": line_of(BASE, "phi3: [small]"),
        "field": "router.fallbacks.phi3[0]",
        "message": problem["message"],
        "kind": "config",
    }
    assert "nope" in problem["message"]


def test_render_needs_the_secrets_validate_does_not(
    hxp: Hxp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "hxp.yml"
    config.write_text(BASE)
    monkeypatch.delenv("HXP_DB_PASSWORD")
    assert hxp("validate", config, "--json").envelope("validate")["ok"]
    done = hxp("render", config, "--out", tmp_path / "inv", "--json")
    [problem] = done.envelope("render")["problems"]
    assert (problem["kind"], problem["field"]) == ("config", "database.router_password")
    assert "HXP_DB_PASSWORD" in problem["message"]
    assert not (tmp_path / "inv").exists()


def test_unwritable_out_is_an_io_problem(hxp: Hxp, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a directory\n")
    done = hxp("render", SAMPLE, "--out", tmp_path / "taken/inventory", "--json")
    [problem] = done.envelope("render")["problems"]
    assert (done.code, problem["kind"], problem["field"]) == (1, "io", "--out")
    assert "choose a writable directory with --out" in problem["message"]


@pytest.mark.parametrize(
    ("args", "command", "field", "message"),
    [
        (["validate", "{tmp}/nope.yml"], "validate", "file", "file not found; check the path"),
        (["plan", "{tmp}"], "plan", "file", "is a directory; give the hxp.yml file inside it"),
        (["render", "{tmp}", "--out", "{tmp}/inv"], "render", "file", "is a directory"),
        (["plan", "--no-such-flag", "{sample}"], "plan", "--no-such-flag", "No such option"),
        (["validate"], "validate", "file", "Missing argument 'file'"),
        (["render", "{sample}"], "render", "--out", "Missing option '--out'"),
        (["bundle", "verify"], "bundle verify", "bundle", "Missing argument 'bundle'"),
        (["nope"], None, "(command line)", "No such command 'nope'"),
    ],
)
def test_usage_errors_exit_2_with_the_envelope(
    hxp: Hxp,
    tmp_path: Path,
    args: list[str],
    command: str | None,
    field: str,
    message: str,
) -> None:
    argv = [a.format(tmp=tmp_path, sample=SAMPLE) for a in args]
    done = hxp(*argv, "--json")
    assert done.code == 2
    report = done.envelope(command)
    [problem] = report["problems"]
    assert (problem["kind"], problem["field"]) == ("usage", field)
    assert message in problem["message"]
    assert done.stderr == ""
    # Without --json the same error is for people: stderr, no JSON, no traceback.
    human = hxp(*argv)
    assert (human.code, human.stdout) == (2, "")
    assert message in human.stderr
    assert "Traceback" not in human.stderr


LOCAL_INVENTORY = """\
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
"""


@pytest.fixture
def deployable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """BASE in the working directory, with an inventory that runs every host's tasks locally."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local.yml").write_text(LOCAL_INVENTORY)
    (tmp_path / "hxp.yml").write_text(BASE)
    return tmp_path / "hxp.yml"


@pytest.mark.slow  # runs ansible-playbook
def test_deploy_envelope_counts_the_tasks(hxp: Hxp, deployable: Path) -> None:
    done = hxp(
        "deploy", deployable, "--playbook", "validate.yml", "--inventory", "local.yml", "--json"
    )
    result = done.envelope("deploy")["result"]
    assert result["inventories"] == [".hxp/unit/inventory/hosts.yml", "local.yml"]
    assert (result["changed"], result["hosts"]["llm-1"]) == (0, {"ok": 3})
    assert "PLAY" in done.stderr, "progress goes to stderr, stdout holds the envelope alone"


@pytest.mark.slow  # runs ansible-playbook
def test_deploy_envelope_of_a_failed_playbook(hxp: Hxp, deployable: Path) -> None:
    done = hxp("deploy", deployable, "--playbook", "nope.yml", "--inventory", "local.yml", "--json")
    [problem] = done.envelope("deploy")["problems"]
    assert (done.code, problem["kind"]) == (1, "deploy")
    assert "ansible-playbook exited with" in problem["message"]


def test_deploy_names_a_missing_inventory(hxp: Hxp, deployable: Path) -> None:
    done = hxp("deploy", deployable, "--inventory", "missing.yml", "--json")
    [problem] = done.envelope("deploy")["problems"]
    assert done.code == 2
    assert (problem["kind"], problem["field"], problem["file"]) == (
        "usage",
        "--inventory",
        "missing.yml",
    )


def test_deploy_wants_a_lab_config_as_a_file(
    hxp: Hxp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = lab_config_with_secrets(tmp_path)
    monkeypatch.chdir(LAB.parent)
    done = hxp("deploy", "-", "--inventory-dir", tmp_path / "inventory", "--json", stdin=config)
    [problem] = done.envelope("deploy")["problems"]
    assert (done.code, problem["kind"], problem["field"]) == (2, "usage", "file")
    assert "lab" in problem["message"]
    assert not (tmp_path / "inventory").exists(), "refused before anything is written"


def test_bundle_verify_uses_the_envelope(hxp: Hxp, tmp_path: Path) -> None:
    done = hxp("bundle", "verify", tmp_path, "--json")
    report = done.envelope("bundle verify")
    assert (done.code, report["file"]) == (1, str(tmp_path))
    assert {p["kind"] for p in report["problems"]} == {"bundle"}


def test_lab_list_uses_the_envelope(hxp: Hxp) -> None:
    result = hxp("lab", "list", "--json").envelope("lab list")["result"]
    assert isinstance(result["labs"], list)


@pytest.mark.parametrize("command", ["create", "list"])
def test_keys_report_an_unreachable_database_in_the_envelope(hxp: Hxp, command: str) -> None:
    name = ["team-a"] if command == "create" else []
    done = hxp("keys", command, *name, "--dsn", "postgresql://hxp@127.0.0.1:9/hxp", "--json")
    [problem] = done.envelope(f"keys {command}")["problems"]
    assert (done.code, problem["kind"]) == (1, "database")
    assert "cannot use PostgreSQL" in problem["message"]


def test_version_comes_from_the_package_metadata() -> None:
    script = Path(sys.executable).with_name("hxp")
    done = subprocess.run([script, "--version"], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout) == (0, f"hxp {version('hxp')}\n")


def test_piped_plan_shows_long_names_whole(tmp_path: Path) -> None:
    model = "a-model-name-long-enough-to-be-cut-by-an-eighty-column-table-x"
    host = "llm-host-with-a-name-long-enough-to-be-cut-in-eighty-columns"
    config = tmp_path / "hxp.yml"
    config.write_text(BASE.replace("phi3", model).replace("llm-1", host))
    done = subprocess.run(
        [Path(sys.executable).with_name("hxp"), "plan", config],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "80"},
    )
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    rows = [line for line in done.stdout.splitlines() if model in line]
    assert len(rows) == 2, "the model's row of the plan and of the GPUs table, one line each"
    assert all(host in row for row in rows), "the table widens instead of wrapping"
    for header in ("weights GiB", "KV GiB", "need/GPU GiB", "headroom GiB", "memory GiB"):
        assert header in done.stdout
