"""The exporter's port is one number: the exporter's DEFAULT_PORT, which hxp.yml's default
takes and which the unit leaves in force when the role is given no port."""

from __future__ import annotations

import shlex
from pathlib import Path

import jinja2
import pytest
import yaml

from hxp_runtime.config import Metrics
from hxp_runtime.host import gpu_exporter

ROLE = Path(__file__).resolve().parents[3] / "roles" / "vllm"
UNIT = ROLE / "templates" / "etc" / "systemd" / "system" / "hxp-gpu-exporter.service.j2"


def exporter_arguments(port: int | None) -> list[str]:
    """The arguments the unit's ExecStart gives gpu_exporter.py, rendered as Ansible would."""
    environment = jinja2.Environment(
        trim_blocks=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    environment.filters["comment"] = lambda text: f"# {text}"
    unit = environment.from_string(UNIT.read_text()).render(
        ansible_managed="managed",
        _hxp_vllm_python="/opt/hxp/vllm/bin/python",
        _hxp_vllm_libexec="/opt/hxp/vllm/libexec/hxp",
        hxp_vllm_bind_address="10.0.0.5",
        hxp_vllm_gpu_exporter_port=port,
    )
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    words = shlex.split(exec_start.removeprefix("ExecStart="))
    assert words[1] == "/opt/hxp/vllm/libexec/hxp/gpu_exporter.py"
    return words[2:]


def test_the_schema_default_is_the_exporters() -> None:
    assert Metrics.model_fields["gpu_exporter_port"].default == gpu_exporter.DEFAULT_PORT


@pytest.mark.parametrize(("port", "listens_on"), [(None, gpu_exporter.DEFAULT_PORT), (9900, 9900)])
def test_the_unit_passes_the_port_or_leaves_the_exporters_default(
    port: int | None, listens_on: int
) -> None:
    args = gpu_exporter.parse_args(exporter_arguments(port))
    assert (args.address, args.port) == ("10.0.0.5", listens_on)


def test_the_role_default_names_no_port_of_its_own() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert str(gpu_exporter.DEFAULT_PORT) not in str(defaults["hxp_vllm_gpu_exporter_port"])
