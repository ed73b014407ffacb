"""The exporter's port is one number, the exporter's DEFAULT_PORT: hxp.yml's default takes it,
`hxp render` writes it for the role, and the unit hands it to the exporter."""

from __future__ import annotations

import shlex
from pathlib import Path

import jinja2
import yaml

from hxp_runtime.config import Metrics
from hxp_runtime.host import gpu_exporter

ROLE = Path(__file__).resolve().parents[3] / "roles" / "vllm"
UNIT = ROLE / "templates" / "etc" / "systemd" / "system" / "hxp-gpu-exporter.service.j2"


def exporter_arguments(port: int) -> list[str]:
    """The arguments the unit's ExecStart line gives gpu_exporter.py, rendered by Jinja."""
    (line,) = [line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart=")]
    exec_start = (
        jinja2.Environment(undefined=jinja2.StrictUndefined)
        .from_string(line)
        .render(
            _hxp_vllm_python="/opt/hxp/vllm/bin/python",
            _hxp_vllm_libexec="/opt/hxp/vllm/libexec/hxp",
            hxp_vllm_bind_address="10.0.0.5",
            hxp_vllm_gpu_exporter_port=port,
        )
    )
    words = shlex.split(exec_start.removeprefix("ExecStart="))
    assert words[1] == "/opt/hxp/vllm/libexec/hxp/gpu_exporter.py"
    return words[2:]


def test_the_schema_default_is_the_exporters() -> None:
    assert Metrics.model_fields["gpu_exporter_port"].default == gpu_exporter.DEFAULT_PORT


def test_the_unit_hands_the_rendered_port_to_the_exporter() -> None:
    args = gpu_exporter.parse_args(exporter_arguments(9900))
    assert (args.address, args.port) == ("10.0.0.5", 9900)


def test_the_role_default_names_no_port_of_its_own() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert str(gpu_exporter.DEFAULT_PORT) not in str(defaults["hxp_vllm_gpu_exporter_port"])
