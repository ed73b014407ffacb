"""`hxp deploy` runs the real playbooks through ansible-runner (local connection, no network)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from rich.console import Console

from hxp_runtime.config import load_config, plan_deployment
from hxp_runtime.deploy import Progress, Skipped, run_playbook
from hxp_runtime.render import render_inventory
from tests.playbooks import run_play
from tests.unit.conftest import BASE

# Each test runs ansible-playbook through ansible-runner: about a second apiece.
pytestmark = pytest.mark.slow

PIPELINE = Path(__file__).resolve().parents[2] / "inventory/pipeline/hxp.yml"
LOCAL = {
    "ansible_connection": "local",
    "ansible_python_interpreter": "{{ ansible_playbook_python }}",
}


def _render(source: Path, tmp_path: Path) -> Path:
    cfg = load_config(source)
    render_inventory(cfg, plan_deployment(cfg), tmp_path / "inv", source)
    return tmp_path / "inv/hosts.yml"


def _render_base(tmp_path: Path) -> Path:
    source = tmp_path / "hxp.yml"
    source.write_text(BASE)
    return _render(source, tmp_path)


@pytest.fixture
def env_secrets(monkeypatch: pytest.MonkeyPatch) -> str:
    """The secrets BASE and inventory/pipeline read from the environment; returns the first."""
    secret = "value-of-an-env-secret"
    monkeypatch.setenv("HXP_DB_PASSWORD", secret)
    monkeypatch.setenv("HXP_REDIS_PASSWORD", secret + "-redis")
    return secret


def _validation_play(inventory: Path, tmp_path: Path) -> tuple[int, Progress, str]:
    buffer = io.StringIO()
    rc, progress = run_playbook(
        inventory,
        playbook="validate.yml",
        state_dir=tmp_path / "runner",
        extra_vars=LOCAL,
        console=Console(file=buffer, width=200),
    )
    return rc, progress, buffer.getvalue()


def test_validation_play_passes_on_a_rendered_inventory(tmp_path: Path, env_secrets: str) -> None:
    rc, progress, output = _validation_play(_render_base(tmp_path), tmp_path)
    assert rc == 0, output
    assert set(progress.counts) == {"llm-1", "db-1"}
    # The assertions, and the secrets resolved once, on the controller.
    assert progress.counts["llm-1"]["ok"] == 3
    assert progress.counts["db-1"]["skipped"] == 1
    assert (tmp_path / "runner").stat().st_mode & 0o077 == 0
    for artifact in (tmp_path / "runner").rglob("*"):
        if artifact.is_file():
            assert env_secrets not in artifact.read_text(errors="replace"), artifact


@pytest.mark.usefixtures("env_secrets")
def test_validation_play_passes_for_a_host_with_only_a_pipeline_stage(tmp_path: Path) -> None:
    """inventory/pipeline: hx-llm-server-02 runs stage 2 of llama70b and no server of its own."""
    rc, progress, output = _validation_play(_render(PIPELINE, tmp_path), tmp_path)
    assert rc == 0, output
    assert progress.counts["hx-llm-server-02"]["ok"] == 2  # its rendering, its units
    assert progress.counts["hx-llm-server-02"].get("failed", 0) == 0


def test_validation_play_refuses_a_foreign_inventory(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    somehost: {}\n")
    rc, progress, _ = _validation_play(inventory, tmp_path)
    assert rc != 0
    assert progress.counts["somehost"]["failed"] == 1
    assert "was not rendered by `hxp render`" in progress.failures[0]


@pytest.mark.usefixtures("env_secrets")
def test_validation_play_stops_at_a_secret_that_does_not_resolve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory = _render_base(tmp_path)
    monkeypatch.delenv("HXP_REDIS_PASSWORD")
    rc, progress, _ = _validation_play(inventory, tmp_path)
    assert rc != 0
    assert "secret reference env:HXP_REDIS_PASSWORD" in progress.failures[0]
    assert "not set" in progress.failures[0]


SKIP_PLAY = """\
- name: Set up a service without its binary
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Record whether the service was skipped
      ansible.builtin.include_role:
        name: bundle
        tasks_from: skipped
      vars:
        hxp_bundle_skipped_service: qdrant
        hxp_bundle_skipped_reason: "{{ reason }}"
        hxp_bundle_skipped_dir: "{{ marker_dir }}"
"""


def _skip_run(tmp_path: Path, reason: str) -> tuple[Progress, str]:
    """The bundle role's `skipped` entry point, run on localhost by ansible-runner."""
    rc, progress, output = run_play(
        tmp_path / "project",
        SKIP_PLAY,
        "localhost ansible_connection=local",
        {
            "reason": reason,
            "marker_dir": str(tmp_path / "skipped"),
            "ansible_python_interpreter": sys.executable,
        },
    )
    assert rc == 0, output
    return progress, output


def test_a_skipped_service_is_in_the_runs_stats_and_on_the_host(tmp_path: Path) -> None:
    reason = "the bundle holds no artifact qdrant"
    progress, _ = _skip_run(tmp_path, reason)
    assert progress.skipped == [Skipped("qdrant", "localhost", reason)]
    assert progress.skipped[0].line() == f"skipped: qdrant on localhost: {reason}"
    marker = tmp_path / "skipped" / "qdrant"
    assert marker.read_text() == reason + "\n"
    assert progress.counts["localhost"]["changed"] == 2  # the directory and the marker
    again, _ = _skip_run(tmp_path, reason)
    assert again.skipped == progress.skipped
    assert again.counts["localhost"]["changed"] == 0, again.changes
    installed, _ = _skip_run(tmp_path, "")
    assert installed.skipped == [] and not marker.exists()
    assert installed.changes == ["localhost: Remove the marker of a service that is installed now"]
