"""The base image: the controller's mirror, the cache key, the commands that build it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hxp_runtime.lab import image
from hxp_runtime.lab.image import (
    BASE_PACKAGES,
    DEFAULT_MIRROR,
    BaseImage,
    archive_command,
    base_image_key,
    controller_mirror,
    debootstrap_command,
    empty_apt_lists,
    extract_command,
)


def test_controller_mirror() -> None:
    deb822 = (
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    assert controller_mirror({"debian.sources": deb822}) == "http://mirror.example/debian"
    one_line = "# a comment\ndeb [arch=amd64] http://other.example/debian bookworm main\n"
    assert controller_mirror({"sources.list": one_line}) == "http://other.example/debian"
    assert controller_mirror({"x.list": "deb https://nodesource/ nodistro main"}) == (
        DEFAULT_MIRROR
    )


def test_controller_mirror_takes_the_first_file_that_names_one() -> None:
    sources = {
        "b.list": "deb http://second.example/debian bookworm main\n",
        "a.sources": "Types: deb\nURIs: http://first.example/debian\nSuites: bookworm\n",
        "0.list": "# deb http://commented.example/debian bookworm main\n",
    }
    assert controller_mirror(sources) == "http://first.example/debian"


def test_base_image_key_covers_its_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    key = base_image_key("http://a/debian", {"ca.crt": b"x"})
    assert key == base_image_key("http://a/debian", {"ca.crt": b"x"})
    assert key != base_image_key("http://b/debian", {"ca.crt": b"x"})
    assert key != base_image_key("http://a/debian", {"ca.crt": b"y"})
    assert key != base_image_key("http://a/debian", {"other.crt": b"x"})
    assert len(key) == 12
    monkeypatch.setattr(image, "BASE_FORMAT", image.BASE_FORMAT + 1)
    assert key != base_image_key("http://a/debian", {"ca.crt": b"x"})


def test_base_image_paths_carry_the_key(tmp_path: Path) -> None:
    base = BaseImage(tmp_path, "http://a/debian", {})
    key = base_image_key("http://a/debian", {})
    assert base.key == key
    assert base.archive == tmp_path / f"base-{key}.tar.zst"
    assert base.rootfs == tmp_path / f"rootfs-{key}"
    assert base.lock == tmp_path / "lock"


def test_default_image_follows_the_cache_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HXP_LAB_CACHE", str(tmp_path))
    assert BaseImage.default().cache_dir == tmp_path


def test_an_extracted_rootfs_is_used_as_it_is(tmp_path: Path) -> None:
    base = BaseImage(tmp_path, "http://a/debian", {})
    base.rootfs.mkdir()
    logged: list[str] = []
    assert base.ensure(logged.append) == base.rootfs
    assert logged == []  # neither built nor extracted
    assert not base.lock.exists()  # nor waited for


def test_debootstrap_command() -> None:
    argv = debootstrap_command(Path("/tmp/root"), "http://a/debian")
    assert argv[:2] == ["debootstrap", "--variant=minbase"]
    assert argv[-3:] == ["bookworm", "/tmp/root", "http://a/debian"]
    included = argv[2].removeprefix("--include=").split(",")
    assert tuple(included) == BASE_PACKAGES
    assert {"systemd", "openssh-server", "python3"} <= set(included)


def test_archive_and_extract_keep_owners() -> None:
    pack = archive_command(Path("/c/base.tar.zst.tmp"), Path("/c/rootfs.tmp"))
    unpack = extract_command(Path("/c/base.tar.zst"), Path("/c/rootfs.tmp"))
    for argv in (pack, unpack):
        assert argv[0] == "tar"
        assert "--numeric-owner" in argv
    assert pack[pack.index("-cpf") + 1] == "/c/base.tar.zst.tmp"
    assert pack[-3:] == ["-C", "/c/rootfs.tmp", "."]
    assert unpack[unpack.index("-xpf") + 1] == "/c/base.tar.zst"
    assert unpack[-2:] == ["-C", "/c/rootfs.tmp"]


def test_empty_apt_lists(tmp_path: Path) -> None:
    lists = tmp_path / "var/lib/apt/lists"
    (lists / "partial").mkdir(parents=True)
    (lists / "deb.debian.org_debian_dists_bookworm_InRelease").write_text("x")
    stamp = tmp_path / "var/lib/apt/periodic/update-success-stamp"
    stamp.parent.mkdir(parents=True)
    stamp.write_text("")
    empty_apt_lists(tmp_path)
    assert [p.name for p in lists.iterdir()] == ["partial"]
    assert not stamp.exists()
    assert os.stat(lists).st_mtime == 0
