"""hxp.yml is untrusted input: strings stay data, secrets stay references, every problem at once.

The hostile-string tests render an inventory and let real Ansible evaluate it (local connection,
no network), so they prove what a deploy would see, not what the renderer meant to write.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from hxp_runtime.config import ConfigError, Problem, load_config, plan_deployment
from hxp_runtime.render import render_inventory
from tests.unit.conftest import BASE, line_of

REPO = Path(__file__).resolve().parents[2]
Problems = Callable[[str], list[Problem]]

# Strings that would run, break a template, or break a line-oriented file if hxp.yml's strings
# were spliced into code.
HOSTILE = [
    "it's",
    'say "hi"',
    "}}",
    "{{ 7 * 7 }}",
    "{% if true %}yes{% endif %}",
    "{# comment #}",
    "{{ lookup('pipe', 'touch PWNED') }}",
    "lookup('env', 'HOME')",
    "naïve ☃ 日本語",
    "${HOME} $(id) `id` %n \\",
]
# Newlines are allowed where the value is only ever data (secret file paths, category examples).
HOSTILE_MULTILINE = [*HOSTILE, "first\nsecond", "{{\n7 * 7\n}}"]


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _hostile_config(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A config whose every free-text field and secret path carries hostile strings; returns
    it and each secret file's path -> content."""
    secret_dir = tmp_path / "secrets"
    secrets: dict[str, str] = {}
    for i, name in enumerate(HOSTILE_MULTILINE):
        path = secret_dir / f"{i}-{name.replace('/', '_')}"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Secret values are hostile too (one line: the lookup refuses control characters, which
        # would split an environment file): Ansible must hand them over untouched.
        path.write_text(f"{HOSTILE[-1 - i % len(HOSTILE)]}-padding", encoding="utf-8")
        secrets[str(path)] = path.read_text(encoding="utf-8")
    paths = list(secrets)
    keys = "\n".join(
        f"    - {{name: key-{i}, secret: {_quoted('file:' + p)}}}" for i, p in enumerate(paths[1:])
    )
    text = BASE.replace(
        '  router_password: "env:HXP_DB_PASSWORD"',
        f"  router_password: {_quoted('file:' + paths[0])}",
    ).replace('  password: "env:HXP_REDIS_PASSWORD"', f"  password: {_quoted('file:' + paths[1])}")
    one_line = [s for s in HOSTILE if "\n" not in s]
    text = text.replace(
        "  - name: phi3\n    preset: phi-3-mini\n",
        "  - name: phi3\n    preset: phi-3-mini\n"
        f"    source: {{hf_id: {_quoted(one_line[0])}}}\n"
        f"    categories: [{', '.join(_quoted(s) for s in one_line)}]\n"
        f"    engine: {{extra_args: [{_quoted('--x=' + one_line[2])}]}}\n",
    )
    text = text.replace("    engine: {dtype: float16, max_model_len: 4096, max_num_seqs: 8}\n", "")
    text = text.replace(
        "router:\n",
        "router:\n"
        f"  api_keys:\n{keys}\n"
        "  categories:\n"
        f"    {_quoted(one_line[1])}:\n"
        f"      description: {_quoted(HOSTILE_MULTILINE[-2])}\n"
        f"      examples: [{', '.join(_quoted(s) for s in HOSTILE_MULTILINE)}]\n"
        f"      keywords: [{', '.join(_quoted(s) for s in one_line)}]\n"
        + "".join(f"    {_quoted(s)}: {{description: x}}\n" for s in one_line if s != one_line[1]),
    )
    config = tmp_path / "hxp.yml"
    config.write_text(text, encoding="utf-8")
    return config, secrets


def _evaluate(inventory: Path, tmp_path: Path) -> dict[str, object]:
    out = tmp_path / "evaluated.json"
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-tmp"),
    }
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(inventory / "hosts.yml"),
            str(REPO / "tests/unit/data/show_inventory.yml"),
            "-e",
            json.dumps({"hxp_test_out": str(out), "ansible_python_interpreter": sys.executable}),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_hostile_strings_reach_ansible_as_exactly_the_data_given(tmp_path: Path) -> None:
    config, secrets = _hostile_config(tmp_path)
    cfg = load_config(config, check_secrets=True)
    render_inventory(cfg, plan_deployment(cfg), tmp_path / "inv", config)
    seen = _evaluate(tmp_path / "inv", tmp_path)

    paths = list(secrets)
    refs = seen["refs"]
    assert isinstance(refs, dict)
    assert refs["database.router_password"] == {"scheme": "file", "value": paths[0]}
    assert refs["cache.password"] == {"scheme": "file", "value": paths[1]}
    for i, path in enumerate(paths[1:]):
        assert refs[f"router.api_keys[{i}].secret"] == {"scheme": "file", "value": path}
    # The lookup returns each file's content untouched (ansible.builtin.file's rstrip aside).
    assert seen["database_password"] == secrets[paths[0]].rstrip()
    api_keys = seen["api_keys"]
    assert isinstance(api_keys, list)
    assert [k["secret"] for k in api_keys] == [secrets[p].rstrip() for p in paths[1:]]

    one_line = [s for s in HOSTILE if "\n" not in s]
    settings = seen["settings"]
    assert isinstance(settings, dict)
    category = settings["categories"][one_line[1]]
    assert category["examples"] == HOSTILE_MULTILINE
    assert category["keywords"] == one_line
    assert category["description"] == HOSTILE_MULTILINE[-2]
    assert set(settings["categories"]) == set(one_line)
    phi3 = next(b for b in settings["backends"] if b["name"] == "phi3")
    assert phi3["categories"] == one_line
    instances = seen["instances"]
    assert isinstance(instances, list)
    assert instances[0]["extra_args"] == ["--x=" + one_line[2]]
    # Nothing ran: no file from the pipe lookup (the exact values above: no arithmetic).
    assert not list(tmp_path.rglob("PWNED"))


def test_rendered_inventory_holds_references_never_secret_values(tmp_path: Path) -> None:
    config, secrets = _hostile_config(tmp_path)
    cfg = load_config(config, check_secrets=True)
    render_inventory(cfg, plan_deployment(cfg), tmp_path / "inv", config)
    rendered = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "inv").rglob("*.yml"))
    for value in secrets.values():
        assert value not in rendered
    # Every secret variable is the one fixed expression, whatever the reference.
    group_all = yaml.safe_load(
        (tmp_path / "inv/group_vars/all/hxp.yml")
        .read_text(encoding="utf-8")
        .replace("!unsafe", "!!str")
    )
    assert group_all["hxp_postgresql_router_password"] == (
        "{{ lookup('hxp_secret', hxp_secret_refs['database.router_password']) }}"
    )


@pytest.mark.parametrize(
    "reference",
    [
        # Mapping forms go through the same checks as the string form.
        "{scheme: vault, value: \"x }}{{ lookup('pipe', 'id') }}\"}",
        "{scheme: env, value: \"A' + lookup('pipe','id') + '\"}",
        "{scheme: file, value: relative/path}",
        "{scheme: env, value: hunter2-is-my-password}",
        "{scheme: plain, value: hunter2hunter2hunter2}",
        "{value: hunter2hunter2hunter2}",
        "[env, HXP_X]",
        "12345678901234567890",
        '"hunter2hunter2hunter2"',
        '"env:"',
        '"vault:not a name"',
        '"file:"',
    ],
)
def test_secret_fields_accept_only_references(problems_of: Problems, reference: str) -> None:
    text = BASE.replace('"env:HXP_DB_PASSWORD"', reference)
    problems = problems_of(text)
    assert problems
    assert all(p.field.startswith("database.router_password") for p in problems), problems
    assert {p.line for p in problems} == {line_of(text, "router_password")}
    for secret in ("hunter2", "lookup", "relative/path"):
        assert all(secret not in p.message for p in problems), problems


def test_missing_secrets_are_problems_before_anything_is_rendered(
    write_config: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HXP_DB_PASSWORD", raising=False)
    monkeypatch.setenv("HXP_REDIS_PASSWORD", "")
    absent = tmp_path / "absent-secret"
    text = BASE + (
        f"metrics:\n  grafana_admin_password: file:{absent}\n"
        "  web_password: env:HXP_REDIS_PASSWORD\n"
    )
    text = text.replace("groups: [database]", "groups: [database, metrics]")
    config = write_config(text)
    load_config(config)  # validate does not need the values
    with pytest.raises(ConfigError) as caught:
        load_config(config, check_secrets=True)
    found = {(p.field, p.line) for p in caught.value.errors}
    assert found == {
        ("database.router_password", line_of(text, "router_password")),
        ("cache.password", line_of(text, "  password: ")),
        ("metrics.grafana_admin_password", line_of(text, "grafana_admin_password")),
        ("metrics.web_password", line_of(text, "web_password")),
    }
    messages = " ".join(p.message for p in caught.value.errors)
    assert "env:HXP_DB_PASSWORD" in messages
    assert str(absent) in messages


@pytest.mark.parametrize(
    ("field_line", "bad"),
    [
        (
            "    preset: phi-3-mini\n",
            '    preset: phi-3-mini\n    served_name: "a\\nExecStartPre=/bin/sh"\n',
        ),
        ("    preset: phi-3-mini\n", '    preset: phi-3-mini\n    aliases: ["a\\rb"]\n'),
        ("    preset: phi-3-mini\n", '    preset: phi-3-mini\n    source: {path: "/srv/a b"}\n'),
        ("    preset: phi-3-mini\n", "    preset: phi-3-mini\n    source: {path: /srv/../etc}\n"),
        ("    preset: phi-3-mini\n", "    preset: phi-3-mini\n    source: {path: models/x}\n"),
        (
            "    preset: all-minilm-l6-v2\n",
            '    preset: all-minilm-l6-v2\n    engine: {extra_args: ["--a\\nb"]}\n',
        ),
        ("    groups: [database]\n", '    groups: [database]\n    ssh_user: "root; id"\n'),
    ],
)
def test_strings_written_into_host_files_are_one_line(
    problems_of: Problems, field_line: str, bad: str
) -> None:
    text = BASE.replace(field_line, bad, 1)
    problem = problems_of(text)[0]
    assert problem.line == len(text[: text.index(bad)].splitlines()) + 2


@pytest.mark.parametrize("address", ["fd00::1", "::1", "2001:db8::10"])
def test_ipv6_addresses_are_refused_clearly(problems_of: Problems, address: str) -> None:
    text = BASE.replace("address: 10.0.0.11", f'address: "{address}"')
    (problem,) = problems_of(text)
    assert problem.field == "hosts[1].address"
    assert "IPv6 host addresses are not supported" in problem.message


# ----------------------------------------------------------------- task and category rules


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (("phi3: [small]", "phi3: [minilm]"), "router.fallbacks.phi3[0]", "task: embed"),
        (("phi3: [small]", "minilm: [small]"), "router.fallbacks.minilm[0]", "task: generate"),
        (("router:\n", "router:\n  default_model: minilm\n"), "router.default_model", "embed"),
        (
            (
                "    preset: all-minilm-l6-v2\n",
                "    preset: all-minilm-l6-v2\n    categories: [chat]\n",
            ),
            "models[1].categories",
            "cannot serve a routing category",
        ),
    ],
)
def test_embeddings_models_cannot_take_chat_roles(
    problems_of: Problems, change: tuple[str, str], field: str, words: str
) -> None:
    text = BASE.replace(*change)
    (problem,) = problems_of(text)
    assert problem.field == field
    assert words in problem.message


def test_a_category_no_model_serves(problems_of: Problems) -> None:
    text = BASE.replace(
        "router:\n",
        "router:\n  categories:\n    chat: {description: talk}\n    legal: {description: law}\n",
    ).replace("    preset: phi-3-mini\n", "    preset: phi-3-mini\n    categories: [chat]\n")
    (problem,) = problems_of(text)
    assert (problem.field, problem.line) == ("router.categories.legal", line_of(text, "legal:"))
    assert "no model serves category 'legal'" in problem.message


@pytest.mark.parametrize(
    ("keywords", "words"), [("[]", "empty keyword list"), ('[sum, " "]', "blank keyword")]
)
def test_category_keywords_must_match_something(
    problems_of: Problems, keywords: str, words: str
) -> None:
    text = BASE.replace(
        "router:\n", f"router:\n  categories:\n    quick: {{keywords: {keywords}}}\n"
    ).replace("    preset: phi-3-mini\n", "    preset: phi-3-mini\n    categories: [quick]\n")
    (problem,) = problems_of(text)
    assert problem.field.startswith("router.categories.quick.keywords")
    assert words in problem.message


# ----------------------------------------------------------------- every problem at once


def test_schema_cross_field_and_planner_problems_in_one_pass(problems_of: Problems) -> None:
    text = (
        BASE.replace("address: 10.0.0.11", "address: 10.0.0.999")  # schema
        .replace("phi3: [small]", "phi3: [small, gpt-9]")  # cross-field
        .replace("max_num_seqs: 8}", "max_num_seqs: 8000}")  # planner: does not fit
    )
    fields = {p.field for p in problems_of(text)}
    assert fields == {"hosts[1].address", "router.fallbacks.phi3[1]", "models[0]"}


def test_no_follow_on_problems_from_an_invalid_entry(problems_of: Problems) -> None:
    # The model 'small' is invalid: its fallback reference and the later models' positions must
    # not produce further problems, and later entries keep their own lines.
    text = BASE.replace("cpu_cores: 2", "cpu_cores: two").replace(
        "router:\n", "router:\n  default_model: small\n  port: 80000\n"
    )
    problems = problems_of(text)
    assert [(p.field, p.line) for p in problems] == [
        ("models[2].cpu_cores", line_of(text, "cpu_cores: two")),
        ("router.port", line_of(text, "port: 80000")),
    ]


def test_problems_after_a_dropped_entry_point_at_their_own_line(problems_of: Problems) -> None:
    text = BASE.replace(
        "    preset: phi-3-mini\n", "    preset: phi-3-mini\n    port: high\n"
    ).replace(
        "  - name: minilm\n    preset: all-minilm-l6-v2\n",
        "  - name: minilm\n    preset: all-minilm-l6-v2\n    host: llm-9\n",
    )
    problems = problems_of(text)
    assert [(p.field, p.line) for p in problems] == [
        ("models[0].port", line_of(text, "port: high")),
        ("models[1].host", line_of(text, "host: llm-9")),
    ]


def test_an_invalid_host_hides_no_other_problem_and_adds_none(problems_of: Problems) -> None:
    text = BASE.replace(
        "    groups: [database]\n", "    groups: [database]\n    ssh_port: 0\n"
    ).replace("phi3: [small]", "phi3: [nope]")
    fields = [p.field for p in problems_of(text)]
    # db-1 is invalid, so "database needs a host in group database" would only repeat it.
    assert fields == ["hosts[1].ssh_port", "router.fallbacks.phi3[0]"]


@pytest.mark.parametrize(
    ("typo", "field", "suggestion"),
    [
        ("  prot: 8000\n", "router.prot", "did you mean 'port'?"),
        ("  fallback: {}\n", "router.fallback", "did you mean 'fallbacks'?"),
        ("  helth_check: {}\n", "router.helth_check", "did you mean 'health_check'?"),
        ("  zzz: 1\n", "router.zzz", "remove it or check its spelling"),
    ],
)
def test_unknown_keys_get_a_did_you_mean(
    problems_of: Problems, typo: str, field: str, suggestion: str
) -> None:
    text = BASE.replace("router:\n", "router:\n" + typo)
    (problem,) = problems_of(text)
    assert (problem.field, problem.line) == (field, line_of(text, typo.strip()))
    assert suggestion in problem.message
    assert "allowed here:" in problem.message


# ----------------------------------------------------------------- what systemd, vLLM, pg_hba read


@pytest.mark.parametrize(
    ("line", "bad"),
    [
        # systemd expands $VAR and %x in ExecStartPost, which names the served model.
        ("    preset: phi-3-mini\n", '    served_name: "x${VLLM_API_KEY}"\n'),
        ("    preset: phi-3-mini\n", '    served_name: "phi%n"\n'),
        ("    preset: phi-3-mini\n", '    aliases: ["two words"]\n'),
        ("    preset: phi-3-mini\n", '    aliases: ["it\'s"]\n'),
        # systemd reads a backslash as an escape even inside quotes: arguments could be split.
        ("    preset: phi-3-mini\n", '    engine: {extra_args: ["--a\\\\", "b"]}\n'),
        # vLLM reads --api_key as --api-key, and --hf-overrides.x as --hf-overrides.
        ("    preset: phi-3-mini\n", '    engine: {extra_args: ["--api_key=known"]}\n'),
        ("    preset: phi-3-mini\n", '    engine: {extra_args: ["--hf-overrides.x=1"]}\n'),
        ("    preset: phi-3-mini\n", '    engine: {extra_args: ["--config=/tmp/x.yaml"]}\n'),
        ("    preset: phi-3-mini\n", '    source: {path: "/srv/models/x\\n"}\n'),
    ],
)
def test_model_fields_cannot_reach_systemd_or_vllm_as_code(
    problems_of: Problems, line: str, bad: str
) -> None:
    text = BASE.replace(line, line + bad, 1).replace(
        "    engine: {dtype: float16, max_model_len: 4096, max_num_seqs: 8}\n", "", 1
    )
    problem = problems_of(text)[0]
    assert problem.field.startswith("models[0].")
    assert problem.line == line_of(text, bad.strip().split(":")[0] + ":")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("database:\n", "database:\n  router_user: all\n"),
        ("database:\n", "database:\n  router_user: postgres\n"),
        ("database:\n", "database:\n  router_user: pg_monitor\n"),
        ("database:\n", "database:\n  name: replication\n"),
        ('"env:HXP_DB_PASSWORD"', '"env:HXP_DB_PASSWORD\\n"'),
    ],
)
def test_names_pg_hba_or_postgresql_give_a_meaning_are_refused(
    problems_of: Problems, old: str, new: str
) -> None:
    (problem,) = problems_of(BASE.replace(old, new))
    assert problem.field.startswith("database.")


def test_the_lookup_refuses_a_secret_that_is_not_one_line(tmp_path: Path) -> None:
    from ansible.errors import AnsibleError

    from tests.unit.conftest import load_file_module

    lookup = load_file_module("hxp_secret", REPO / "plugins/lookup/hxp_secret.py").LookupModule()
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("one-line-secret\n")
    bad.write_text("first-line\nEXTRA=injected\n")
    assert lookup.run([{"scheme": "file", "value": str(good)}]) == ["one-line-secret"]
    with pytest.raises(AnsibleError, match="one line") as caught:
        lookup.run([{"scheme": "file", "value": str(bad)}])
    assert "injected" not in str(caught.value)


def test_the_lookup_takes_pem_only_where_asked(tmp_path: Path) -> None:
    from ansible.errors import AnsibleError

    from tests.unit.conftest import load_file_module

    lookup = load_file_module("hxp_secret", REPO / "plugins/lookup/hxp_secret.py").LookupModule()
    pem, text = tmp_path / "router.crt", tmp_path / "notes"
    pem.write_text("-----BEGIN CERTIFICATE-----\r\nMIIB\r\n-----END CERTIFICATE-----\r\n\n")
    text.write_text("two\nlines\n")
    ref = {"scheme": "file", "value": str(pem)}
    assert lookup.run([ref], pem=True) == [
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    ]
    with pytest.raises(AnsibleError, match="one line"):
        lookup.run([ref])
    with pytest.raises(AnsibleError, match="not PEM text"):
        lookup.run([{"scheme": "file", "value": str(text)}], pem=True)


# ----------------------------------------------------------------- follow-on problems


def test_duplicates_name_the_first_definition_at_its_place_in_the_file(
    problems_of: Problems,
) -> None:
    # models[0] is left out (invalid port): the duplicate's first definition is models[2].
    text = (
        BASE.replace("    preset: phi-3-mini\n", "    preset: phi-3-mini\n    port: 0\n")
        .replace(
            "  - {name: small,",
            "  - {name: minilm-2, preset: all-minilm-l6-v2, port: 11411}\n  - {name: small,",
        )
        .replace("name: minilm-2", "name: small")
    )
    messages = {p.field: p.message for p in problems_of(text)}
    assert "first defined at models[2].name" in messages["models[3].name"]
    # One problem for one repeated name, not a second as "model name or alias".
    assert list(messages).count("models[3].name") == 1


def test_a_dropped_host_does_not_hide_unserved_categories(problems_of: Problems) -> None:
    text = (
        BASE.replace("    groups: [database]\n", "    groups: [database]\n    ssh_port: 0\n")
        .replace(
            "router:\n",
            "router:\n  categories:\n    chat: {description: talk}\n"
            "    legal: {description: law}\n",
        )
        .replace("    preset: phi-3-mini\n", "    preset: phi-3-mini\n    categories: [chat]\n")
    )
    fields = [p.field for p in problems_of(text)]
    assert fields == ["hosts[1].ssh_port", "router.categories.legal"]


def test_an_unusable_models_list_adds_no_reference_problems(problems_of: Problems) -> None:
    text = (
        BASE.split("models:\n")[0]
        + "models: {phi3: 1}\n"
        + "router:\n"
        + BASE.split("router:\n")[1].replace("router:\n", "router:\n  default_model: phi3\n")
    )
    fields = [p.field for p in problems_of(text)]
    assert fields == ["models"]


def test_receiver_names_are_unique(problems_of: Problems) -> None:
    text = (
        BASE.replace("groups: [database]", "groups: [database, metrics]")
        + "metrics:\n  grafana_admin_password: env:A\n  web_password: env:B\n  alerting:\n"
        "    receivers:\n      - {name: ops, webhook_url: 'http://a/'}\n"
        "      - {name: ops, webhook_url: 'http://b/'}\n"
    )
    (problem,) = problems_of(text)
    assert problem.field == "metrics.alerting.receivers[1].name"
