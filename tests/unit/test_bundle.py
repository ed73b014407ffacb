"""hxp.bundle: a real small bundle (archive, model directory, wheelhouse built by pip offline)
is built, verified, then damaged one way at a time; verify must name the artifact and file."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hxp_runtime.bundle import (
    MANIFEST,
    BundleError,
    build_bundle,
    listing_sha256,
    load_manifest,
    load_spec,
    sha256_file,
    verify_bundle,
)
from hxp_runtime.cli import app
from hxp_runtime.config import ConfigError

runner = CliRunner()


def make_wheel(directory: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A minimal valid pure-Python wheel (what pip needs to resolve and copy it)."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist_info}/METADATA": "Metadata-Version: 2.1\n"
        f"Name: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{dist_info}/RECORD"] = "\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """A spec and everything it names: a release archive, a model directory, a wheel index."""
    src = tmp_path / "src"
    (src / "model" / "tokenizer").mkdir(parents=True)
    (src / "model" / "config.json").write_text('{"hidden_size": 64}\n')
    (src / "model" / "weights.bin").write_bytes(bytes(range(256)) * 64)
    (src / "model" / "tokenizer" / "vocab.txt").write_text("a\nb\nc\n")
    payload = io.BytesIO(b"#!/bin/sh\necho server\n")
    with tarfile.open(src / "server-1.2.3.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("server")
        info.size = len(payload.getvalue())
        info.mode = 0o755
        tar.addfile(info, payload)
    (src / "index").mkdir()
    make_wheel(src / "index", "tinypkg", "1.0", requires=("tinydep",))
    make_wheel(src / "index", "tinydep", "2.5")
    make_wheel(src / "index", "unrelated", "9.9")
    archive_sha = sha256_file(src / "server-1.2.3.tar.gz")
    (src / "bundle.yml").write_text(
        "version: 1\n"
        "pip: {no_index: true, find_links: [index]}\n"
        "artifacts:\n"
        "  - name: server\n"
        "    kind: archive\n"
        "    version: 1.2.3\n"
        "    source: server-1.2.3.tar.gz\n"
        f"    sha256: {archive_sha}\n"
        "  - {name: tiny-model, kind: model-dir, version: rev1, source: model}\n"
        "  - {name: tinypkg, kind: wheel, requirements: [tinypkg==1.0]}\n"
    )
    return src


@pytest.fixture
def bundle(sources: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    build_bundle(sources / "bundle.yml", out)
    return out


def test_build_writes_manifest_with_every_file_hashed(bundle: Path, sources: Path) -> None:
    manifest = load_manifest(bundle)
    by_name = {a.name: a for a in manifest.artifacts}
    server = by_name["server"]
    assert (server.kind, server.version, server.path) == (
        "archive",
        "1.2.3",
        "archives/server-1.2.3.tar.gz",
    )
    assert server.sha256 == sha256_file(sources / "server-1.2.3.tar.gz")
    assert server.size == (sources / "server-1.2.3.tar.gz").stat().st_size
    assert server.files is None

    model = by_name["tiny-model"]
    assert model.path == "models/tiny-model"
    assert [f.path for f in model.files or []] == [
        "config.json",
        "tokenizer/vocab.txt",
        "weights.bin",
    ]
    assert model.size == sum(f.size for f in model.files or [])
    assert model.sha256 == listing_sha256(model.files or [])
    weights = next(f for f in model.files or [] if f.path == "weights.bin")
    assert weights.sha256 == hashlib.sha256(bytes(range(256)) * 64).hexdigest()

    wheels = by_name["tinypkg"]
    assert wheels.version == "1.0"
    # pip resolved the dependency from the index and left the unrelated wheel out.
    assert sorted(f.path for f in wheels.files or []) == [
        "tinydep-2.5-py3-none-any.whl",
        "tinypkg-1.0-py3-none-any.whl",
    ]
    assert verify_bundle(bundle).ok


def flip_one_byte(path: Path, offset: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damaged", "artifact"),
    [
        ("archives/server-1.2.3.tar.gz", "server"),
        ("models/tiny-model/weights.bin", "tiny-model"),
        ("wheels/tinypkg/tinydep-2.5-py3-none-any.whl", "tinypkg"),
    ],
)
def test_verify_rejects_one_changed_byte(bundle: Path, damaged: str, artifact: str) -> None:
    flip_one_byte(bundle / damaged)
    result = runner.invoke(app, ["bundle", "verify", str(bundle)])
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert f"artifact '{artifact}'" in message
    assert f"{damaged} has sha256" in message
    assert "the file is corrupted or was changed" in message
    assert "hxp bundle build" in message
    # The other artifacts are still reported intact.
    assert len(verify_bundle(bundle).problems) == 1


def test_verify_rejects_missing_truncated_and_extra_files(bundle: Path) -> None:
    (bundle / "archives" / "server-1.2.3.tar.gz").unlink()
    weights = bundle / "models" / "tiny-model" / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:-1])
    (bundle / "models" / "tiny-model" / "extra.json").write_text("{}")
    problems = verify_bundle(bundle).problems
    assert any("archives/server-1.2.3.tar.gz is missing" in p for p in problems)
    assert any("weights.bin has 16383 bytes, the manifest says 16384" in p for p in problems)
    assert any("models/tiny-model/extra.json is not in the manifest" in p for p in problems)
    assert len(problems) == 3


def test_verify_selected_artifacts_and_unknown_name(bundle: Path) -> None:
    flip_one_byte(bundle / "archives" / "server-1.2.3.tar.gz")
    assert verify_bundle(bundle, ["tiny-model", "tinypkg"]).ok
    result = verify_bundle(bundle, ["qdrant"])
    assert not result.ok
    assert "has no artifact 'qdrant' (it holds: server, tiny-model, tinypkg)" in result.problems[0]
    # An optional artifact is checked when present and ignored when absent.
    optional = verify_bundle(bundle, ["tinypkg"], optional=["qdrant", "server"])
    assert [a.name for a in optional.artifacts] == ["tinypkg", "server"]
    assert len(optional.problems) == 1
    assert "artifact 'server'" in optional.problems[0]


def test_verify_json_gives_roles_the_controller_paths(bundle: Path) -> None:
    result = runner.invoke(app, ["bundle", "verify", str(bundle), "-a", "server", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] is True
    server = data["result"]["artifacts"]["server"]
    assert server["source"] == str(bundle / "archives" / "server-1.2.3.tar.gz")
    assert server["sha256"] == sha256_file(bundle / "archives" / "server-1.2.3.tar.gz")


def test_verify_rejects_edited_manifest(bundle: Path) -> None:
    data = json.loads((bundle / MANIFEST).read_text())
    model = next(a for a in data["artifacts"] if a["name"] == "tiny-model")
    model["files"].pop()
    (bundle / MANIFEST).write_text(json.dumps(data))
    problems = verify_bundle(bundle).problems
    assert any("manifest.json was edited" in p for p in problems)


def test_manifest_paths_must_stay_inside_the_bundle(bundle: Path) -> None:
    data = json.loads((bundle / MANIFEST).read_text())
    data["artifacts"][0]["path"] = "../../etc/passwd"
    (bundle / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="must be a relative path inside the bundle"):
        load_manifest(bundle)


def test_verify_without_manifest_says_how_to_make_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bundle", "verify", str(tmp_path)])
    assert result.exit_code == 1
    assert "this is not a bundle" in result.output
    assert "Traceback" not in result.output


def test_archive_with_unpublished_checksum_fails_and_leaves_nothing(
    sources: Path, tmp_path: Path
) -> None:
    spec = sources / "bundle.yml"
    good = sha256_file(sources / "server-1.2.3.tar.gz")
    spec.write_text(spec.read_text().replace(good, "f" * 64))
    out = tmp_path / "out" / "bundle"
    with pytest.raises(BundleError, match="not the published release"):
        build_bundle(spec, out)
    assert list((tmp_path / "out").iterdir()) == []


def test_build_out_is_relative_to_the_working_directory(
    sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    result = runner.invoke(app, ["bundle", "build", str(sources / "bundle.yml"), "--out", "b"])
    assert result.exit_code == 0, result.output
    manifest = load_manifest(tmp_path / "here" / "b")
    wheels = next(a for a in manifest.artifacts if a.name == "tinypkg")
    # pip runs from the spec's directory: its wheels still land in the bundle, nothing there.
    assert {w.name for w in (tmp_path / "here" / "b" / wheels.path).glob("*.whl")} == {
        "tinypkg-1.0-py3-none-any.whl",
        "tinydep-2.5-py3-none-any.whl",
    }
    assert not list(sources.glob(".b.*"))


def test_build_refuses_a_non_empty_directory(sources: Path, bundle: Path) -> None:
    result = runner.invoke(
        app, ["bundle", "build", str(sources / "bundle.yml"), "--out", str(bundle)]
    )
    assert result.exit_code == 1
    assert "exists and is not an empty directory" in result.output


def test_spec_errors_name_line_and_field(tmp_path: Path) -> None:
    spec = tmp_path / "bundle.yml"
    spec.write_text(
        "artifacts:\n"
        "  - {name: a, kind: archive, source: a.tar.gz}\n"
        "  - {name: b, kind: tarball, source: b}\n"
        "  - {name: c, kind: wheel, requirements: [x], source: y}\n"
        "  - {name: a, kind: model-dir, version: r, source: m}\n"
    )
    with pytest.raises(ConfigError) as exc:
        load_spec(spec)
    text = exc.value.render()
    assert f"{spec}:2: artifacts[0].version: required field is missing" in text
    assert f"{spec}:3: artifacts[1]" in text
    assert "kind must be one of: wheel, archive, model-dir, deb" in text
    assert f"{spec}:4: artifacts[2].source: unknown key 'source'" in text

    spec.write_text(
        "artifacts:\n"
        "  - {name: a, kind: model-dir, version: r, source: m}\n"
        "  - {name: a, kind: model-dir, version: r, source: m}\n"
    )
    with pytest.raises(ConfigError, match=r":3: artifacts\[1\].name: duplicate artifact name"):
        load_spec(spec)


def test_build_cli_reports_spec_errors_without_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "bundle.yml"
    spec.write_text("artifacts: []\n")
    result = runner.invoke(app, ["bundle", "build", str(spec), "--out", str(tmp_path / "b")])
    assert result.exit_code == 1
    assert "artifacts" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "b").exists()


# A PEP 517 backend inside the project, so that pip builds it offline with nothing installed.
# Its wheel lists every file the build saw: what a wheel built in place would pick up.
BACKEND = r"""
import os, zipfile

INFO = "tinyproj-3.1.dist-info"
METADATA = "Metadata-Version: 2.1\nName: tinyproj\nVersion: 3.1\n"
WHEEL = "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    seen = [os.path.relpath(os.path.join(d, f)) for d, _, files in os.walk(".") for f in files]
    name = "tinyproj-3.1-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as wheel:
        wheel.writestr("tinyproj/seen.txt", "\n".join(seen) + "\n")
        wheel.writestr(INFO + "/METADATA", METADATA)
        wheel.writestr(INFO + "/WHEEL", WHEEL)
        wheel.writestr(INFO + "/RECORD", "")
    return name
"""


def git(checkout: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(checkout), *args], check=True, capture_output=True)


@pytest.fixture
def project_spec(sources: Path) -> Path:
    """A spec whose wheelhouse holds a project's wheel, the project a git checkout with a stale
    build tree, an untracked module and a tracked file deleted in the working tree."""
    project = sources / "tinyproj"
    (project / "tinyproj").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
    )
    (project / "backend.py").write_text(BACKEND)
    (project / "tinyproj" / "__init__.py").write_text("VERSION = '3.1'\n")
    (project / "tinyproj" / "gone.py").write_text("")
    git(project, "init", "-q")
    git(project, "add", ".")
    (project / "tinyproj" / "gone.py").unlink()
    (project / "tinyproj" / "__init__.py").write_text("VERSION = '3.1'  # edited, not committed\n")
    (project / "build" / "lib" / "tinyproj").mkdir(parents=True)
    (project / "build" / "lib" / "tinyproj" / "stale.py").write_text("")
    (project / "tinyproj" / "untracked.py").write_text("")
    spec = sources / "project.yml"
    spec.write_text(
        "version: 1\n"
        "pip: {no_index: true, find_links: [index]}\n"
        "artifacts:\n"
        "  - name: app\n"
        "    kind: wheel\n"
        "    requirements: [tinypkg==1.0]\n"
        "    no_deps: true\n"
        "    project: tinyproj\n"
        "  - {name: tiny-model, kind: model-dir, version: rev1, source: model}\n"
    )
    return spec


def test_wheelhouse_holds_the_project_wheel_built_from_tracked_files(
    project_spec: Path, tmp_path: Path
) -> None:
    manifest = build_bundle(project_spec, tmp_path / "b")
    app_wheels = manifest.get("app")
    assert app_wheels is not None
    assert app_wheels.version == "3.1"
    assert sorted(f.path for f in app_wheels.files or []) == [
        "tinypkg-1.0-py3-none-any.whl",
        "tinyproj-3.1-py3-none-any.whl",
    ]
    with zipfile.ZipFile(tmp_path / "b" / app_wheels.path / "tinyproj-3.1-py3-none-any.whl") as w:
        seen = [p for p in w.read("tinyproj/seen.txt").decode().split() if "__pycache__" not in p]
    # Tracked files as the working tree has them; no build tree, untracked or deleted file.
    assert sorted(seen) == ["backend.py", "pyproject.toml", "tinyproj/__init__.py"]
    assert verify_bundle(tmp_path / "b").ok


def test_build_only_the_named_artifacts(project_spec: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["bundle", "build", str(project_spec), "--out", str(tmp_path / "b"), "-a", "app"]
    )
    assert result.exit_code == 0, result.output
    assert [a.name for a in load_manifest(tmp_path / "b").artifacts] == ["app"]
    with pytest.raises(BundleError, match=r"names no artifact 'nope' \(it names: app, tiny-model"):
        build_bundle(project_spec, tmp_path / "c", only=["app", "nope"])
    assert not (tmp_path / "c").exists()


def test_project_outside_git_is_refused_with_what_to_do(project_spec: Path, tmp_path: Path) -> None:
    shutil.rmtree(project_spec.parent / "tinyproj" / ".git")
    with pytest.raises(BundleError, match=r"is not a git checkout.*give the directory of a git"):
        build_bundle(project_spec, tmp_path / "b")
    assert not (tmp_path / "b").exists()
