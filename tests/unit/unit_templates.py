"""The roles' systemd unit templates, rendered through Ansible's own templating the way a deploy
renders them: each role's defaults and vars under the inventory `hxp render` writes (the golden
renders of inventory/sample and inventory/lab, tests/golden), with the few facts the roles set at
run time given here.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import filter_loader, init_plugin_loader
from ansible.template import Templar, trust_as_template

REPO = Path(__file__).resolve().parents[2]
FILTER_PLUGINS = REPO / "plugins" / "filter"
GOLDEN = REPO / "tests" / "golden"

# Every template of a unit or drop-in that runs a process (a timer, a socket or a path has none).
UNIT_TEMPLATES = sorted(
    path
    for path in REPO.glob("roles/*/templates/etc/systemd/system/**/*.j2")
    if not path.name.endswith((".timer.j2", ".socket.j2", ".path.j2"))
)
# The templates of whole units (not drop-ins on a Debian unit).
FULL_UNIT_TEMPLATES = [path for path in UNIT_TEMPLATES if path.name.endswith(".service.j2")]

# Golden render -> the vLLM device of its LLM host: the lab runs vLLM on CPUs, the sample on GPUs.
DEVICES = {"lab": "cpu", "sample": "cuda"}
# The host whose variables a template is rendered with. Host variables hold only the vLLM
# instances and the firewall's lists, which no other role's unit reads.
HOST = "hx-llm-server-01"


def role(template: Path) -> str:
    return template.relative_to(REPO / "roles").parts[0]


@functools.cache
def _plugins_loaded() -> None:
    """Ansible's plugin loader, once per process (it refuses a second set-up)."""
    init_plugin_loader()
    filter_loader.add_directory(str(FILTER_PLUGINS))


@functools.cache
def _variables_file(path: Path) -> dict[str, Any]:
    """A variables file as Ansible reads it, once per process (the rendered group variables take
    seconds to parse); the templating only reads it."""
    # Trusted as Ansible trusts the files it reads itself; `!unsafe` strings stay data.
    data = DataLoader().load_from_file(str(path), unsafe=True, trusted_as_template=True)
    return dict(data or {})


def variables(
    template: Path, golden: str, host: str = HOST, units: str = "hxp_vllm_instances"
) -> dict[str, Any]:
    """What Ansible gives the template on ``host``: role defaults, role vars, the rendered
    inventory (in Ansible's order of precedence), and run-time facts. Role vllm's unit is
    rendered for the first item of ``units`` (its servers, or hxp_vllm_pipeline_workers)."""
    found: dict[str, Any] = {}
    for path in [
        REPO / "roles" / role(template) / "defaults" / "main.yml",
        REPO / "roles" / role(template) / "vars" / "main.yml",
        GOLDEN / golden / "group_vars" / "all" / "hxp.yml",
        GOLDEN / golden / "host_vars" / host / "hxp.yml",
    ]:
        if path.exists():  # a role may have no vars/ (role firewall)
            found.update(_variables_file(path))
    hosts = _variables_file(GOLDEN / golden / "hosts.yml")
    instances = found.get(units) or []
    found.update(
        ansible_managed="Ansible managed",
        ansible_host=hosts["all"]["hosts"][host]["ansible_host"],
        # Debian 12.
        ansible_facts={"systemd": {"version": 252}},
        # Role vllm renders its unit once per instance (loop item) after its model tasks have
        # found each model's directory and role bundle has verified each artifact.
        item=instances[0] if instances else None,
        _hxp_vllm_model_dirs={i["name"]: f"/var/lib/hxp/models/{i['name']}" for i in instances},
        hxp_bundle_verified={
            i["model_artifact"]: {"sha256": "0" * 64} for i in instances if i["model_artifact"]
        },
    )
    return found


def render(
    template: Path, golden: str = "lab", host: str = HOST, units: str = "hxp_vllm_instances"
) -> str:
    """The text Ansible's template module writes from template, for golden render `golden`."""
    _plugins_loaded()
    templar = Templar(loader=DataLoader(), variables=variables(template, golden, host, units))
    return str(templar.template(trust_as_template(template.read_text())))


def installed_name(template: Path, golden: str = "lab") -> str:
    """The name of the file the template is installed as: role vllm's unit is written once per
    model instance (render() renders the first), every other template once."""
    if template.name == "hxp-vllm.service.j2":
        return f"{variables(template, golden)['item']['unit']}.service"
    return template.name.removesuffix(".j2")
