"""The router's settings and secrets files: validation, errors with lines, the renderer's output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hxp_runtime.config import load_config, plan_deployment
from hxp_runtime.render import router_vars
from hxp_runtime.router.settings import (
    RouterSettings,
    SettingsError,
    backend_urls_file,
    load_secrets,
    load_settings,
    write_backend_url,
)

REPO = Path(__file__).resolve().parents[3]
VALID = """\
port: 8000
workers: 2
strategies: [explicit, least_outstanding]
fallbacks:
  hermes: [phi]
backends:
  - name: hermes
    served_name: hermes
    aliases: [nous-hermes]
    url: http://127.0.0.1:11401
    slo: {latency_ms: 100, throughput_rps: 10}
  - name: phi
    served_name: phi-3
    url: http://127.0.0.1:11403
    slo: {latency_ms: 100, throughput_rps: 10}
"""


def write(tmp_path: Path, text: str, name: str = "settings.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_valid_file_loads(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, VALID))
    assert settings.routing_index() == {
        "hermes": "hermes",
        "nous-hermes": "hermes",
        "phi": "phi",
        "phi-3": "phi",
    }
    assert settings.health_check.enabled  # active health checks are on by default
    assert settings.require_api_key


@pytest.mark.parametrize(
    ("change", "line", "expected"),
    [
        (("workers: 2", "workers: 0"), 2, "workers: Input should be greater than or equal to 1"),
        (("port: 8000", "port: 8000\nlisten: x"), 2, "unknown key 'listen'"),
        (
            ("url: http://127.0.0.1:11401", "url: 127.0.0.1:11401"),
            10,
            "must look like http://host:port",
        ),
        (("strategies: [explicit", "strategies: [magic"), 3, "strategies[0]"),
    ],
)
def test_problems_name_the_line_and_field(
    tmp_path: Path, change: tuple[str, str], line: int, expected: str
) -> None:
    path = write(tmp_path, VALID.replace(*change))
    with pytest.raises(SettingsError) as error:
        load_settings(path)
    text = error.value.render()
    assert f"{path}:{line}:" in text
    assert expected in text


def test_references_must_name_backends(tmp_path: Path) -> None:
    text = VALID.replace("hermes: [phi]", "hermes: [gpt-4]") + "default_model: nope\n"
    with pytest.raises(SettingsError) as error:
        load_settings(write(tmp_path, text))
    message = error.value.render()
    assert "fallbacks name unknown model 'gpt-4'" in message
    assert "default_model 'nope' is not a backend" in message


def test_auto_is_reserved(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="'auto' is reserved"):
        load_settings(write(tmp_path, VALID.replace("aliases: [nous-hermes]", "aliases: [auto]")))


def test_secrets_hide_values_and_reject_short_keys(tmp_path: Path) -> None:
    secrets = load_secrets(
        write(
            tmp_path,
            "upstream_api_key: s3cret-upstream\n"
            "api_keys:\n  - {name: admin, secret: hxp-0123456789abcdef}\n",
            "secrets.yml",
        )
    )
    assert "hxp-0123456789abcdef" not in repr(secrets)
    assert secrets.api_keys[0].secret.get_secret_value() == "hxp-0123456789abcdef"
    with pytest.raises(SettingsError, match="at least 16"):
        load_secrets(write(tmp_path, "api_keys:\n  - {name: a, secret: short}\n", "s.yml"))
    assert load_secrets(None).api_keys == []


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"missing\.yml"):
        load_settings(tmp_path / "missing.yml")


@pytest.mark.parametrize("inventory", ["sample", "lab"])
def test_rendered_router_settings_are_valid(inventory: str) -> None:
    # The role writes hxp_router_settings as the settings file: the renderer and this schema
    # must agree for every sample inventory.
    cfg = load_config(REPO / "inventory" / inventory / "hxp.yml")
    rendered = router_vars(cfg, plan_deployment(cfg))["hxp_router_settings"]
    settings = RouterSettings.model_validate(rendered)
    assert settings.listen_host == str(cfg.hosts_in(cfg.hosts[0].groups[0])[0].address)
    assert {b.name for b in settings.backends} == {m.name for m in cfg.models}


def test_a_blue_green_switch_moves_one_backend_and_survives_the_settings_rewrite(
    tmp_path: Path,
) -> None:
    settings_file = write(tmp_path, VALID)
    written = write_backend_url(settings_file, "phi", "http://127.0.0.1:12403")
    assert written == backend_urls_file(settings_file) == tmp_path / "backend-urls.json"
    assert written.stat().st_mode & 0o777 == settings_file.stat().st_mode & 0o777
    urls = {b.name: b.url for b in load_settings(settings_file).backends}
    assert urls == {"hermes": "http://127.0.0.1:11401", "phi": "http://127.0.0.1:12403"}
    # The router role writes the settings again from hxp.yml: the switch still holds.
    settings_file.write_text(VALID)
    assert load_settings(settings_file).backends[1].url == "http://127.0.0.1:12403"
    write_backend_url(settings_file, "phi", "http://127.0.0.1:11403")
    assert json.loads(written.read_text()) == {"phi": "http://127.0.0.1:11403"}


def test_a_switch_names_a_backend_and_a_plain_url(tmp_path: Path) -> None:
    settings_file = write(tmp_path, VALID)
    with pytest.raises(ValueError, match="has no backend 'mixtral' \\(known: hermes, phi\\)"):
        write_backend_url(settings_file, "mixtral", "http://127.0.0.1:12400")
    with pytest.raises(ValueError, match="must look like http://host:port"):
        write_backend_url(settings_file, "phi", "http://127.0.0.1:12403/v1")
    assert not backend_urls_file(settings_file).exists()
    backend_urls_file(settings_file).write_text('{"phi": "ftp://x"}')
    with pytest.raises(SettingsError, match="phi: 'ftp://x' must look like http://host:port"):
        load_settings(settings_file)
