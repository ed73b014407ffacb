"""Role bundle on a lab host: artifacts verified on the controller arrive on the host in the
bundle's layout, byte for byte (sha256 of every file as in the manifest)."""

import json
import os
from pathlib import Path

import pytest

BUNDLE = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "bundle"
HOST_DIR = "/var/cache/hxp/bundle"
HOST = "hx-llm-server-01"


@pytest.fixture(scope="module")
def manifest():
    artifacts = json.loads((BUNDLE / "manifest.json").read_text())["artifacts"]
    return {a["name"]: a for a in artifacts}


def test_archive_arrives_intact(host, manifest):
    tool = manifest["tool"]
    copy = host.file(f"{HOST_DIR}/{tool['path']}")
    assert copy.is_file
    assert (copy.user, copy.group, copy.mode) == ("root", "root", 0o644)
    assert copy.sha256sum == tool["sha256"]
    assert copy.size == tool["size"]


def test_model_directory_arrives_intact(host, manifest):
    model = manifest["tiny-model"]
    root = f"{HOST_DIR}/{model['path']}"
    assert host.file(root).is_directory
    assert host.file(root).mode == 0o755
    on_host = sorted(host.check_output("cd %s && find . -type f -printf '%%P\\n'", root).split())
    assert on_host == sorted(f["path"] for f in model["files"])
    for entry in model["files"]:
        copy = host.file(f"{root}/{entry['path']}")
        assert copy.sha256sum == entry["sha256"]
        assert (copy.user, copy.group, copy.mode) == ("root", "root", 0o644)
    assert host.file(f"{root}/tokenizer").mode == 0o755


def test_a_damaged_or_missing_file_is_sent_again(host, manifest, converge):
    model = manifest["tiny-model"]
    root = f"{HOST_DIR}/{model['path']}"
    damaged, missing = f"{root}/config.json", f"{root}/tokenizer/vocab.txt"
    host.run_expect([0], f"echo tampered >> {damaged} && rm {missing}")
    run = converge({"hxp_bundle_path": str(BUNDLE)})
    assert run.returncode == 0, run.stdout[-3000:]
    assert run.recap(HOST)["changed"] > 0
    for entry in model["files"]:
        assert host.file(f"{root}/{entry['path']}").sha256sum == entry["sha256"]
    # Whole again: the next run sends nothing.
    again = converge({"hxp_bundle_path": str(BUNDLE)})
    assert (again.returncode, again.recap(HOST)["changed"]) == (0, 0), again.stdout[-3000:]
