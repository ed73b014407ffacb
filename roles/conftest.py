"""Fixtures shared by the roles' Testinfra verifiers.

pytest reads this file for every test below roles/ (the repository's pyproject.toml makes the
repository its rootdir), so each role's molecule/*/tests asks for these fixtures by name.

A role's checks run on one of two deployments:

- its Molecule scenario's lab hosts, converged with the scenario's variables (`molecule test`;
  Molecule's verifier sets MOLECULE_INVENTORY_FILE);
- the whole stack's lab, deployed by `hxp deploy` with the variables `hxp render` wrote
  (`scripts/stack verify` runs them after the whole-stack tests; HXP_STACK_CONFIG names the
  lab's hxp.yml, default inventory/lab/hxp.yml). CI checks these roles this way only, so that
  it converges them once, in the stack, instead of once more in a scenario of their own.

A module picks its hosts by hxp host group (``testinfra_hosts = ["database"]``), which both
deployments define; what it compares against comes from the ``deployed`` fixture: the rendered
variables on the stack, the module's own constants (the scenario's converge.yml) otherwise. A
check that needs what only the scenario sets up is marked ``scenario_only`` with the reason; on
the stack it is deselected, and the reason is printed.
"""

from __future__ import annotations

import base64
import copy
import datetime
import functools
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml


def _load_file(name: str, relative: str) -> Any:
    """A module of this repository by its path: the roles' checks run without the repository
    on sys.path (pytest puts roles/ there, which is no package)."""
    path = Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# What every hxp unit and drop-in sets (the baseline's core), as `systemctl show` prints it:
# the baseline every unit template renders.
_BASELINE = _load_file("hxp_systemd_hardening", "plugins/filter/hxp_systemd_hardening.py")
HARDENING = {name: _BASELINE.shown(value) for name, value in _BASELINE.CORE.items()}
EXPOSURE_LIMIT: float = _BASELINE.EXPOSURE_LIMIT


REPO = Path(__file__).resolve().parents[1]
# Molecule's verifier sets MOLECULE_INVENTORY_FILE; without it the checks run on the stack.
ON_STACK = "MOLECULE_INVENTORY_FILE" not in os.environ


@dataclass(frozen=True)
class Stack:
    """The whole stack's lab the checks run on: its config, the lab's inventory (SSH key,
    proxy) and the directory `hxp render` wrote the deployment's variables into."""

    cfg: Any  # hxp_runtime.config.HxpConfig
    inventory: Path
    rendered: Path

    def variables(self, hostname: str) -> dict[str, Any]:
        """The variables `hxp render` gave hostname: group_vars/all, then its host_vars. A
        copy: a check may change what it is given without another check seeing it."""
        merged: dict[str, Any] = {}
        for path in (
            self.rendered / "group_vars" / "all" / "hxp.yml",
            self.rendered / "host_vars" / hostname / "hxp.yml",
        ):
            merged.update(_rendered_file(path))
        return copy.deepcopy(merged)


@functools.cache
def _rendered_file(path: Path) -> dict[str, Any]:
    """One file `hxp render` wrote, parsed once per run (group_vars/all is thousands of
    lines, and every module and host asks for it); empty when there is none."""
    if not path.is_file():
        return {}
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_RenderedLoader) or {}  # noqa: S506


class _RenderedLoader(yaml.SafeLoader):
    """Reads what `hxp render` wrote: Ansible's !unsafe strings (Prometheus's own templates in
    rules) are plain strings to the checks, as to the roles."""


_RenderedLoader.add_constructor(
    "!unsafe",
    lambda loader, node: loader.construct_scalar(node),  # type: ignore[arg-type]
)


@functools.cache
def _stack() -> Stack:
    # Only the stack needs hxp and the whole-stack tests' config (HXP_STACK_CONFIG, else the
    # main lab's); a Molecule scenario's checks import neither.
    from hxp_runtime.config import load_config  # noqa: PLC0415
    from hxp_runtime.lab import load_lab  # noqa: PLC0415

    config = _load_file("hxp_stack_router", "tests/stack/router.py").CONFIG
    cfg = load_config(config)
    inventory = load_lab(config).inventory_file
    rendered = REPO / ".hxp" / cfg.name / "inventory"
    if not inventory.is_file() or not rendered.is_dir():
        raise pytest.UsageError(
            f"the lab of {config} is not deployed: run scripts/stack up first "
            "(or run a role's checks on its scenario with `molecule test`)"
        )
    return Stack(cfg, inventory, rendered)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "scenario_only(reason): needs what only the role's Molecule scenario sets up; "
        "deselected when the checks run on the stack",
    )
    if ON_STACK and any(
        Path(arg.split("::")[0]).resolve().is_relative_to(REPO / "roles") for arg in config.args
    ):
        # Testinfra reaches the stack's hosts through the lab's inventory, as Molecule's
        # verifier does through the scenario's.
        config.option.connection = "ansible"
        config.option.ansible_inventory = str(_stack().inventory)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not ON_STACK:
        return
    kept, left_out = [], []
    for item in items:
        marker = item.get_closest_marker("scenario_only")
        (left_out if marker else kept).append(item)
    for item in left_out:
        reason = item.get_closest_marker("scenario_only").args[0]  # type: ignore[union-attr]
        print(f"not on the stack (scenario only: {reason}): {item.nodeid}")
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


@pytest.fixture(scope="session")
def on_stack() -> bool:
    """True when the checks run on the whole stack's lab, not on a Molecule scenario."""
    return ON_STACK


@pytest.fixture(scope="session")
def group_hosts() -> Callable[[str], list[Any]]:
    """group_hosts(group): the deployment's hosts in an hxp host group (llm, database, ...)."""
    import testinfra  # noqa: PLC0415

    inventory = str(_stack().inventory) if ON_STACK else os.environ["MOLECULE_INVENTORY_FILE"]
    return lambda group: testinfra.get_hosts(
        [group], connection="ansible", ansible_inventory=inventory
    )


@pytest.fixture(scope="module")
def deployed(host: Any) -> dict[str, Any] | None:
    """The variables the stack's deployment gave the host under test (`hxp render`'s group and
    host variables, secrets as their lookups), or None on a Molecule scenario, whose values the
    module states itself (its converge.yml's)."""
    return _stack().variables(host.backend.get_hostname()) if ON_STACK else None


# One HTTP request, a script for python3 on the controller or on a host: argv[1] is the request
# as JSON, the answer is printed as JSON [status, body]. No proxy of the environment: the tests
# reach the lab's addresses directly, as the services that use them do.
HTTP_REQUEST = """
import json, sys, urllib.error, urllib.request
spec = json.loads(sys.argv[1])
body = None if spec["body"] is None else json.dumps(spec["body"]).encode()
request = urllib.request.Request(spec["url"], data=body, headers=spec["headers"])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(request, timeout=30) as response:
        print(json.dumps([response.status, response.read().decode()]))
except urllib.error.HTTPError as error:
    print(json.dumps([error.code, error.read().decode()]))
"""


class HttpRequest(Protocol):
    """(status, body) of one request: a GET, or a POST of body as JSON where a body is given."""

    def __call__(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        user: str | None = None,
        password: str | None = None,
        body: Any = None,
    ) -> tuple[int, str]: ...


def _http_request(run_script: Callable[[str], str]) -> HttpRequest:
    """An HttpRequest that runs HTTP_REQUEST with run_script(spec) and reads its answer."""

    def request(
        url: str,
        *,
        headers: dict[str, str] | None = None,
        user: str | None = None,
        password: str | None = None,
        body: Any = None,
    ) -> tuple[int, str]:
        sent = dict(headers or {})
        if user is not None:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            sent["Authorization"] = f"Basic {token}"
        if body is not None:
            sent["Content-Type"] = "application/json"
        spec = {"url": url, "headers": sent, "body": body}
        status, text = json.loads(run_script(json.dumps(spec)))
        return int(status), str(text)

    return request


@pytest.fixture(scope="session")
def http_from_controller() -> HttpRequest:
    """http_from_controller(url, ...): a request from the controller over the lab bridge."""

    def run(spec: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", HTTP_REQUEST, spec], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    return _http_request(run)


@pytest.fixture(scope="module")
def http_on_host(host: Any) -> HttpRequest:
    """http_on_host(url, ...): a request made on the host under test (python3 there; no curl)."""
    return _http_request(lambda spec: host.check_output("python3 -c %s %s", HTTP_REQUEST, spec))


@pytest.fixture(scope="session")
def assert_basic_auth_required(
    http_from_controller: HttpRequest,
) -> Callable[[str, str, str], None]:
    """assert_basic_auth_required(url, user, password): url answers 401 to a request without the
    user's password or with a wrong one, and 200 to one with it."""

    def check(url: str, user: str, password: str) -> None:
        assert http_from_controller(url)[0] == 401
        assert http_from_controller(url, user=user, password=f"not-{password}")[0] == 401
        assert http_from_controller(url, user=user, password=password)[0] == 200

    return check


@pytest.fixture(scope="module")
def address(host: Any) -> str:
    """The lab address of the host under test."""
    return str(host.ansible.get_variables()["ansible_host"])


@pytest.fixture(scope="session")
def scenario_secret() -> Callable[[str], str]:
    """scenario_secret(name): a secret the role was given, by its file name: written by the
    scenario's prepare step under its ephemeral directory, or, on the stack, by `hxp lab up`
    (the secret file of hxp.yml's references with that name)."""
    if ON_STACK:
        files = {Path(ref.value).name: Path(ref.value) for ref in _stack().cfg.secret_refs()}
        return lambda name: files[name].read_text().strip()
    secrets = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "secrets"
    return lambda name: (secrets / name).read_text().strip()


@pytest.fixture
def running(host: Any, request: pytest.FixtureRequest) -> None:
    """Skips a test that needs the role's server when its binary is not installed. A role whose
    server may be absent from the lab names the binary in its test module as BINARY, and the
    reason it may be absent as NO_BINARY."""
    if not host.file(request.module.BINARY).exists:
        pytest.skip(request.module.NO_BINARY)


@pytest.fixture(scope="module")
def assert_running_and_enabled(host: Any) -> Callable[[str], None]:
    """assert_running_and_enabled(unit): the unit runs now and starts at boot."""

    def check(unit: str) -> None:
        service = host.service(unit)
        assert service.is_running, f"{unit} is not running"
        assert service.is_enabled, f"{unit} is not enabled"

    return check


@pytest.fixture(scope="module")
def assert_listens_on_address_only(host: Any, address: str) -> Callable[..., None]:
    """assert_listens_on_address_only(*ports): each port is open on the host's lab address and
    on no other address."""

    def check(*ports: int) -> None:
        listening = host.socket.get_listening_sockets()
        for port in ports:
            assert [s for s in listening if s.endswith(f":{port}")] == [f"tcp://{address}:{port}"]

    return check


@pytest.fixture(scope="module")
def assert_system_user(host: Any) -> Callable[[str, str], None]:
    """assert_system_user(name, home): a system account that cannot log in, in its own group."""

    def check(name: str, home: str) -> None:
        user = host.user(name)
        assert user.exists
        assert user.uid < 1000, "a system account"
        assert user.shell == "/usr/sbin/nologin"
        assert user.home == home
        assert user.group == name

    return check


@pytest.fixture(scope="module")
def assert_directory(host: Any) -> Callable[[str, str, str, int], None]:
    """assert_directory(path, owner, group, mode): a directory with that owner, group and mode."""

    def check(path: str, owner: str, group: str, mode: int) -> None:
        directory = host.file(path)
        assert directory.is_directory, f"{path} is not a directory"
        assert (directory.user, directory.group, directory.mode) == (owner, group, mode), path

    return check


@pytest.fixture(scope="module")
def assert_units_verify(host: Any) -> Callable[..., None]:
    """assert_units_verify(binary, *units): `systemd-analyze verify` passes on the units installed
    in /etc/systemd/system. Without binary on the host, verify reads copies of them in which an
    ExecStart of binary names an executable that exists; every other line is the installed one."""

    def check(binary: str, *units: str) -> None:
        paths = [f"/etc/systemd/system/{unit}" for unit in units]
        search_path = ""
        if not host.file(binary).exists:
            host.run_expect([0], "rm -rf /run/hxp-verify && mkdir -p /run/hxp-verify")
            for unit, path in zip(units, paths, strict=True):
                replace = f"s|^ExecStart={binary}|ExecStart=/bin/true|;/^AssertFileIsExecutable=/d"
                host.run_expect([0], f"sed %s %s > /run/hxp-verify/{unit}", replace, path)
            search_path = "SYSTEMD_UNIT_PATH=/run/hxp-verify: "
            paths = [f"/run/hxp-verify/{unit}" for unit in units]
        checked = host.run(f"{search_path}systemd-analyze verify {shlex.join(paths)}")
        assert checked.rc == 0, checked.stderr

    return check


@pytest.fixture(scope="module")
def unit_properties(host: Any) -> Callable[..., dict[str, str]]:
    """unit_properties(unit, *names): the named properties of a unit, from `systemctl show`."""

    def read(unit: str, *names: str) -> dict[str, str]:
        output = host.check_output(f"systemctl show {unit} " + " ".join(f"-p {n}" for n in names))
        return dict(line.split("=", 1) for line in output.splitlines())

    return read


@pytest.fixture(scope="module")
def assert_hardened(
    unit_properties: Callable[..., dict[str, str]],
) -> Callable[..., dict[str, str]]:
    """assert_hardened(unit, *more): checks HARDENING, returns it with the properties in more."""

    def check(unit: str, *more: str) -> dict[str, str]:
        properties = unit_properties(unit, *HARDENING, *more)
        for name, expected in HARDENING.items():
            assert properties[name] == expected, f"{unit}: {name}={properties[name]!r}"
        return properties

    return check


@pytest.fixture(scope="module")
def assert_exposure(host: Any) -> Callable[..., float]:
    """assert_exposure(unit, limit=EXPOSURE_LIMIT): `systemd-analyze security` on the host rates
    the loaded unit (drop-ins included) at most limit; prints the rating (the scenarios run
    pytest with -rP, so it shows in the verify log) and returns it."""

    def check(unit: str, limit: float = EXPOSURE_LIMIT) -> float:
        analysed = host.run("systemd-analyze security --no-pager %s", unit)
        assert analysed.rc == 0, f"{unit}: {analysed.stderr}"
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", analysed.stdout)
        assert match, f"{unit}: no exposure level in:\n{analysed.stdout[-2000:]}"
        exposure = float(match.group(1))
        print(f"systemd-analyze security {unit}: overall exposure {exposure} (limit {limit})")
        # The whole table names the directives that cost exposure, for the reader of a failure.
        assert exposure <= limit, f"{unit}: exposure {exposure} > {limit}:\n{analysed.stdout}"
        return exposure

    return check


@dataclass(frozen=True)
class PlayRun:
    """One ansible-playbook run: its exit status and plain-text output."""

    returncode: int
    stdout: str
    stderr: str

    def recap(self, host: str) -> dict[str, int]:
        """The PLAY RECAP counters of host: ok, changed, failed, ..."""
        line = next((ln for ln in self.stdout.splitlines() if ln.startswith(f"{host} ")), None)
        assert line, f"no recap for {host} in:\n{self.stdout[-3000:]}"
        return {name: int(count) for name, count in re.findall(r"(\w+)=(\d+)", line)}


def _converge_stack(playbook: str, hostname: str, extra_vars: dict[str, Any]) -> PlayRun:
    """The stack's own play (playbooks/PLAYBOOK) once more on hostname, as `hxp deploy` runs
    it, with extra_vars on top of the rendered variables."""
    import io  # noqa: PLC0415

    from rich.console import Console  # noqa: PLC0415

    from hxp_runtime.deploy import run_playbook  # noqa: PLC0415 - ansible-runner loads slowly

    stack = _stack()
    output = io.StringIO()
    state = stack.rendered.parent / "runner-role-checks"
    rc, progress = run_playbook(
        [stack.rendered / "hosts.yml", stack.inventory],
        playbook=playbook,
        state_dir=state,
        limit=hostname,
        extra_vars=extra_vars,
        console=Console(file=output, width=200, no_color=True),
    )
    return PlayRun(rc, output.getvalue() + "".join(f"\n{f}" for f in progress.failures), "")


@pytest.fixture
def converge(request: pytest.FixtureRequest) -> Callable[[dict[str, Any]], PlayRun]:
    """converge(extra_vars): the scenario's converge playbook once more, on its lab hosts; on the
    stack, the stack's play for the role (the module's STACK_PLAYBOOK) on the host under test."""
    scenario = request.path.parents[1]

    def run(extra_vars: dict[str, Any]) -> PlayRun:
        if ON_STACK:
            hostname = request.getfixturevalue("host").backend.get_hostname()
            return _converge_stack(request.module.STACK_PLAYBOOK, hostname, extra_vars)
        done = subprocess.run(
            [
                str(Path(sys.executable).with_name("ansible-playbook")),
                *("-i", os.environ["MOLECULE_INVENTORY_FILE"]),
                *("-e", json.dumps(extra_vars)),
                str(scenario / "converge.yml"),
            ],
            capture_output=True,
            text=True,
            env={
                **os.environ,
                "ANSIBLE_ROLES_PATH": str(scenario.parents[2]),
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_FORCE_COLOR": "0",
            },
            check=False,
        )
        return PlayRun(done.returncode, done.stdout, done.stderr)

    return run


@pytest.fixture(scope="module")
def assert_certificate_exported(
    host: Any, address: str, http_on_host: HttpRequest
) -> Callable[[str, str], None]:
    """assert_certificate_exported(name, served): role node_exporter's export of the certificate
    the service serves from ``served``: registered as ``name`` (a copy of the served file), and
    its notAfter, as `openssl x509 -enddate` reads it, in the textfile and in the node exporter's
    answer, with no read error."""

    def check(name: str, served: str) -> None:
        registered = host.file(f"/etc/hxp-certificates.d/{name}.crt")
        assert registered.mode == 0o644
        assert registered.content_string == host.file(served).content_string
        end = host.check_output("openssl x509 -noout -enddate -in %s", served)
        not_after = datetime.datetime.strptime(
            end.removeprefix("notAfter="), "%b %d %H:%M:%S %Y %Z"
        ).replace(tzinfo=datetime.UTC)
        expected = [
            f'hxp_certificate_expiry_timestamp_seconds{{certificate="{name}"}} '
            f"{int(not_after.timestamp())}",
            f'hxp_certificate_read_error{{certificate="{name}"}} 0',
        ]
        textfile = "/var/lib/hxp-node-exporter/hxp-certificates.prom"
        # The timer's first run starts with it, at the end of the converge: moments, not minutes.
        host.run("timeout 30 sh -c %s", f"until [ -s {textfile} ]; do sleep 1; done")
        text = host.file(textfile).content_string
        assert all(line in text.splitlines() for line in expected), text
        status, metrics = http_on_host(f"http://{address}:9100/metrics")
        assert status == 200

        # Go writes 1.9e+09 where the file has 1900000000: compare numbers.
        def value(line: str) -> tuple[str, float]:
            series, number = line.rsplit(" ", 1)
            return series, float(number)

        wanted = dict(map(value, expected))
        served = dict(value(ln) for ln in metrics.splitlines() if ln.startswith("hxp_certificate_"))
        assert {series: served.get(series) for series in wanted} == wanted, metrics

    return check
