"""Air-gapped artifact bundle: built from a spec on a connected machine, verified before use.

A bundle is a directory that is carried to the controller of an offline site:

    manifest.json          every artifact: kind, name, version, relative path, sha256, size
    archives/FILE          kind ``archive``   release archives (Qdrant, Grafana, exporters)
    models/NAME/...        kind ``model-dir`` a model directory, every file hashed
    wheels/NAME/*.whl      kind ``wheel``     a wheelhouse: requirements and their dependencies,
                                              and the wheel of a project when the spec names one
    debs/NAME/*.deb        kind ``deb``       Debian packages with their dependencies, plus a
                                              ``Packages`` index (a flat apt repository)

An archive is one file; the other kinds are directories. A directory artifact lists its files
(relative path, sha256, size); its own sha256 is the sha256 of the ``sha256sum``-style listing
of those files ("<sha256>  <path>\\n", sorted by path), and its size is their total size.

``hxp bundle build SPEC --out DIR`` collects the artifacts the spec names (``pip wheel`` for
wheels, ``apt-get`` for Debian packages, local files and directories for archives and models)
and writes the manifest. ``hxp bundle verify DIR`` checks every file against it; the roles run
the same check on the controller before they change anything on a host.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError

from hxp_runtime.config import ConfigError, Name, Problem, Strict
from hxp_runtime.yamlsource import YamlSourceError, load_yaml

MANIFEST = "manifest.json"
CHUNK = 1 << 20
REBUILD_HINT = (
    "copy the bundle again from where it was built, or rebuild it with `hxp bundle build`"
)

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ArtifactKind(StrEnum):
    WHEEL = "wheel"
    ARCHIVE = "archive"
    MODEL_DIR = "model-dir"
    DEB = "deb"


KIND_DIRS = {
    ArtifactKind.WHEEL: "wheels",
    ArtifactKind.ARCHIVE: "archives",
    ArtifactKind.MODEL_DIR: "models",
    ArtifactKind.DEB: "debs",
}


def _relative(path: str) -> str:
    """A path inside the bundle: relative, POSIX, no ``..``, no empty parts."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or path != str(pure) or path in {"", "."}:
        raise ValueError(f"{path!r} must be a relative path inside the bundle, without '..'")
    return path


RelPath = Annotated[str, AfterValidator(_relative)]


# --------------------------------------------------------------------------- manifest


class FileEntry(Strict):
    path: RelPath
    sha256: Sha256
    size: Annotated[int, Field(ge=0)]


class Artifact(Strict):
    name: Name
    kind: ArtifactKind
    version: str
    path: RelPath
    sha256: Sha256
    size: Annotated[int, Field(ge=0)]
    files: list[FileEntry] | None = Field(
        None, description="the files of a directory artifact; None for a single file"
    )

    @property
    def label(self) -> str:
        return f"artifact {self.name!r} ({self.kind.value} {self.version})"


class Manifest(Strict):
    format: Literal[1] = 1
    created: str
    artifacts: list[Artifact]

    def get(self, name: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.name == name), None)


# --------------------------------------------------------------------------- spec


class PipOptions(Strict):
    """Where ``pip wheel`` looks; by default pip's own configuration decides."""

    index_url: str | None = None
    extra_index_urls: list[str] = Field(default_factory=list)
    find_links: list[str] = Field(default_factory=list)
    no_index: bool = False

    def args(self) -> list[str]:
        args = ["--index-url", self.index_url] if self.index_url else []
        for url in self.extra_index_urls:
            args += ["--extra-index-url", url]
        for link in self.find_links:
            args += ["--find-links", link]
        return [*args, "--no-index"] if self.no_index else args


class WheelSpec(Strict):
    name: Name
    kind: Literal[ArtifactKind.WHEEL]
    version: str | None = Field(
        None, description="default: the version of the wheel named NAME, else of project's wheel"
    )
    requirements: list[str] = Field(
        min_length=1, description="pip requirement specifiers, '-r FILE' or a project directory"
    )
    no_deps: bool = False
    project: Path | None = Field(
        None,
        description="a git checkout whose own wheel joins the wheelhouse, built --no-deps from "
        "a copy of its tracked files (never from its build directories or untracked files)",
    )


class ArchiveSpec(Strict):
    name: Name
    kind: Literal[ArtifactKind.ARCHIVE]
    version: str
    source: Path = Field(description="the release archive on this machine")
    sha256: Sha256 | None = Field(None, description="the checksum its publisher gives")


class ModelDirSpec(Strict):
    name: Name
    kind: Literal[ArtifactKind.MODEL_DIR]
    version: str = Field(description="a revision, commit or date that identifies the weights")
    source: Path = Field(description="the model directory on this machine")


class DebSpec(Strict):
    name: Name
    kind: Literal[ArtifactKind.DEB]
    version: str | None = Field(None, description="default: the version of the package NAME")
    packages: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9+.-]+$")]] = Field(min_length=1)


ArtifactSpec = Annotated[
    WheelSpec | ArchiveSpec | ModelDirSpec | DebSpec, Field(discriminator="kind")
]


class BundleSpec(Strict):
    version: Literal[1] = 1
    pip: PipOptions = Field(default_factory=PipOptions)
    artifacts: list[ArtifactSpec] = Field(min_length=1)


def load_spec(file: Path) -> BundleSpec:
    """Load a bundle spec (YAML); raise ConfigError naming the line of every problem."""
    try:
        data, lines = load_yaml(file)
    except YamlSourceError as exc:
        raise ConfigError(file, [Problem((), str(exc).removeprefix(f"{file}: "))]) from None
    try:
        spec = BundleSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            # Drop the union member pydantic puts into the location ("archive", "model-dir").
            loc = tuple(p for p in err["loc"] if p not in set(ArtifactKind))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown key {loc[-1]!r} for this kind; remove it or check its spelling"
            elif err["type"] == "missing":
                msg = "required field is missing; add it"
            elif err["type"] == "union_tag_invalid":
                msg = f"kind must be one of: {', '.join(ArtifactKind)}"
            problems.append(Problem(loc, msg, lines.line_of(loc)))
        raise ConfigError(file, problems) from None
    seen: set[str] = set()
    duplicates = []
    for index, artifact in enumerate(spec.artifacts):
        if artifact.name in seen:
            path = ("artifacts", index, "name")
            message = f"duplicate artifact name {artifact.name!r}; names must be unique"
            duplicates.append(Problem(path, message, lines.line_of(path)))
        seen.add(artifact.name)
    if duplicates:
        raise ConfigError(file, duplicates)
    return spec


# --------------------------------------------------------------------------- hashing


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def listing_sha256(files: Iterable[FileEntry]) -> str:
    """The sha256 of a directory artifact: of its files' sha256sum-style listing."""
    lines = "".join(f"{f.sha256}  {f.path}\n" for f in sorted(files, key=lambda f: f.path))
    return hashlib.sha256(lines.encode()).hexdigest()


def _tree_files(root: Path) -> list[Path]:
    """Every regular file under ``root`` (links followed), as paths relative to it, sorted."""
    found = []
    for dirpath, _dirs, files in os.walk(root, followlinks=True):
        found += [(Path(dirpath) / name).relative_to(root) for name in files]
    return sorted(found, key=lambda p: p.as_posix())


def _hash_artifact(name: str, kind: ArtifactKind, version: str, bundle: Path, rel: str) -> Artifact:
    """The manifest entry of what was collected at ``bundle/rel``: a file or a directory."""
    root = bundle / rel
    if root.is_file():
        return Artifact(
            name=name,
            kind=kind,
            version=version,
            path=rel,
            sha256=sha256_file(root),
            size=root.stat().st_size,
        )
    files = [
        FileEntry(path=f.as_posix(), sha256=sha256_file(root / f), size=(root / f).stat().st_size)
        for f in _tree_files(root)
    ]
    return Artifact(
        name=name,
        kind=kind,
        version=version,
        path=rel,
        sha256=listing_sha256(files),
        size=sum(f.size for f in files),
        files=files,
    )


# --------------------------------------------------------------------------- build


class BundleError(Exception):
    """A bundle cannot be built or used; every line says what is wrong and what to do."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


Log = Callable[[str], None]


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise BundleError([f"{what} failed (exit {result.returncode}): {' '.join(argv)}\n{tail}"])
    return result.stdout


_WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)-.*\.whl$")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pip_wheel(pip: PipOptions, dest: Path) -> list[str]:
    return [
        sys.executable,
        *("-m", "pip", "wheel", "--disable-pip-version-check", "--quiet"),
        *("--wheel-dir", str(dest), *pip.args()),
    ]


def _wheel_versions(wheels: Iterable[Path]) -> dict[str, str]:
    """Normalised project name -> version, read from the wheels' file names."""
    return {
        _normalise(match["name"]): match["version"]
        for wheel in wheels
        if (match := _WHEEL_NAME.match(wheel.name))
    }


def _copy_tracked_files(checkout: Path, dest: Path) -> None:
    """Copy the files git tracks in ``checkout`` (as they are in its working tree) to ``dest``.

    A wheel built in place picks up whatever lies in the checkout: a stale ``build/`` tree, an
    ``*.egg-info`` of another version, untracked modules. The copy holds none of them.
    """
    listed = subprocess.run(
        ["git", "-C", str(checkout), "ls-files", "-z", "--cached"],
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:
        raise BundleError(
            [
                f"{checkout} is not a git checkout ({listed.stderr.decode().strip()}): a "
                "project's wheel is built from the files git tracks only; give the directory "
                "of a git clone of the project"
            ]
        )
    for name in listed.stdout.decode().split("\0"):
        source = checkout / name
        # A tracked file deleted in the working tree is not part of what is built.
        if name and source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def _build_project_wheel(spec: WheelSpec, pip: PipOptions, base: Path, dest: Path) -> str:
    """Build the wheel of ``spec.project`` into ``dest``; return its version."""
    project = base / (spec.project or ".")
    with tempfile.TemporaryDirectory(prefix="hxp-project-") as scratch:
        copy = Path(scratch) / "src"
        built = Path(scratch) / "wheel"
        _copy_tracked_files(project, copy)
        argv = [*_pip_wheel(pip, built), "--no-deps", str(copy)]
        # From the spec's directory, like the requirements: its find-links are relative to it.
        _run(argv, f"building the wheel of {project} for artifact {spec.name!r}", cwd=base)
        wheels = list(built.glob("*.whl"))
        if len(wheels) != 1:
            raise BundleError(
                [f"artifact {spec.name!r}: building {project} gave {len(wheels)} wheels, not 1"]
            )
        shutil.move(wheels[0], dest / wheels[0].name)
    return next(iter(_wheel_versions(wheels).values()), "")


def _collect_wheels(spec: WheelSpec, pip: PipOptions, base: Path, dest: Path) -> str:
    argv = _pip_wheel(pip, dest)
    argv += ["--no-deps"] if spec.no_deps else []
    for requirement in spec.requirements:
        argv += requirement.split(maxsplit=1) if requirement.startswith("-r ") else [requirement]
    _run(argv, f"pip wheel for artifact {spec.name!r}", cwd=base)
    versions = _wheel_versions(dest.glob("*.whl"))
    if not versions:
        raise BundleError(
            [f"artifact {spec.name!r}: pip wrote no wheel to {dest}; check its requirements"]
        )
    project_version = _build_project_wheel(spec, pip, base, dest) if spec.project else ""
    return spec.version or versions.get(_normalise(spec.name), project_version)


def _collect_debs(spec: DebSpec, dest: Path) -> str:
    """Download the packages with every dependency a bare system lacks, and index them.

    apt resolves against an empty package status, so the set is complete for a minimal host;
    the host's apt then installs only what it is missing. The ``Packages`` index makes the
    directory a flat repository (``deb [trusted=yes] file:DIR ./``): the trust comes from the
    manifest's checksums, which the roles verify before they add it.
    """
    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="hxp-apt-") as state:
        status = Path(state) / "status"
        status.touch()
        (Path(state) / "partial").mkdir()
        _run(
            [
                "apt-get",
                "install",
                "--download-only",
                "--yes",
                "--no-install-recommends",
                "-o",
                f"Dir::State::status={status}",
                "-o",
                f"Dir::Cache::archives={state}",
                "-o",
                "APT::Sandbox::User=root",
                "-o",
                "Debug::NoLocking=1",
                *spec.packages,
            ],
            f"apt-get download for artifact {spec.name!r}",
        )
        stanzas = {}
        for deb in Path(state).glob("*.deb"):
            control = _run(["dpkg-deb", "--field", str(deb)], f"reading {deb.name}").rstrip("\n")
            fields = dict(re.findall(r"^(Package|Version|Architecture): (.+)$", control, re.M))
            # apt names downloads with the epoch URL-encoded ("1%3a2.0"), which a file: URI
            # would decode; use the pool's name, without the epoch.
            name = (
                f"{fields['Package']}_{fields['Version'].split(':')[-1]}_{fields['Architecture']}"
            )
            target = dest / f"{name}.deb"
            shutil.move(deb, target)
            stanzas[name] = (
                f"{control}\nFilename: ./{target.name}\nSize: {target.stat().st_size}\n"
                f"SHA256: {sha256_file(target)}\n"
            )
            versions[fields["Package"]] = fields["Version"]
    packages = dest / "Packages"
    packages.write_text("\n".join(stanzas[n] for n in sorted(stanzas)), encoding="utf-8")
    (dest / "Release").write_text(
        f"Origin: hxp bundle\nLabel: {spec.name}\n"
        f"Date: {datetime.now(UTC).strftime('%a, %d %b %Y %H:%M:%S UTC')}\n"
        f"SHA256:\n {sha256_file(packages)} {packages.stat().st_size} Packages\n",
        encoding="utf-8",
    )
    return spec.version or versions.get(spec.name, "")


def _collect(spec: Any, pip: PipOptions, base: Path, bundle: Path, log: Log) -> Artifact:
    kind = ArtifactKind(spec.kind)
    log(f"collecting {kind.value} {spec.name}")
    if isinstance(spec, ArchiveSpec):
        source = base / spec.source
        if not source.is_file():
            raise BundleError([f"artifact {spec.name!r}: {source} is not a file; fix source"])
        rel = f"{KIND_DIRS[kind]}/{source.name}"
        (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, bundle / rel)
        artifact = _hash_artifact(spec.name, kind, spec.version, bundle, rel)
        if spec.sha256 and artifact.sha256 != spec.sha256:
            raise BundleError(
                [
                    f"artifact {spec.name!r}: {source} has sha256 {artifact.sha256}, but the "
                    f"spec says {spec.sha256}: the download is corrupted or not the published "
                    "release; download it again and compare with the publisher's checksum"
                ]
            )
        return artifact
    rel = f"{KIND_DIRS[kind]}/{spec.name}"
    dest = bundle / rel
    if isinstance(spec, ModelDirSpec):
        source = base / spec.source
        if not source.is_dir():
            raise BundleError([f"artifact {spec.name!r}: {source} is not a directory; fix source"])
        shutil.copytree(source, dest, symlinks=False)
        version = spec.version
    else:
        dest.mkdir(parents=True)
        if isinstance(spec, WheelSpec):
            version = _collect_wheels(spec, pip, base, dest)
        else:
            version = _collect_debs(spec, dest)
    return _hash_artifact(spec.name, kind, version, bundle, rel)


def build_bundle(
    spec_file: Path, out: Path, log: Log = lambda _line: None, only: Sequence[str] = ()
) -> Manifest:
    """Collect every artifact of ``spec_file`` (those named ``only``, when given) into the new
    directory ``out``.

    The bundle is assembled in a hidden directory beside ``out`` and renamed at the end, so a
    failed build leaves nothing behind.
    """
    spec = load_spec(spec_file)
    unknown = sorted(set(only) - {a.name for a in spec.artifacts})
    if unknown:
        named = ", ".join(a.name for a in spec.artifacts)
        raise BundleError(
            [f"{spec_file}: names no artifact {n!r} (it names: {named})" for n in unknown]
        )
    # Relative to where hxp was called: pip runs from the spec's directory.
    out = out.absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError([f"{out}: exists and is not an empty directory; give a new directory"])
    out.parent.mkdir(parents=True, exist_ok=True)
    base = spec_file.resolve().parent
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        artifacts = [
            _collect(a, spec.pip, base, staging, log)
            for a in spec.artifacts
            if not only or a.name in only
        ]
        manifest = Manifest(
            created=datetime.now(UTC).isoformat(timespec="seconds"), artifacts=artifacts
        )
        (staging / MANIFEST).write_text(
            json.dumps(manifest.model_dump(mode="json", exclude_none=True), indent=2) + "\n",
            encoding="utf-8",
        )
        staging.chmod(0o755)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


# --------------------------------------------------------------------------- verify


def load_manifest(bundle: Path) -> Manifest:
    """Read ``bundle``/manifest.json; raise BundleError saying what to do when it is unusable."""
    file = bundle / MANIFEST
    if not bundle.is_dir():
        raise BundleError([f"{bundle}: no such directory; give the directory of a bundle"])
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(
            [f"{file}: missing; this is not a bundle (build one with `hxp bundle build`)"]
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError([f"{file}: unreadable ({exc}); {REBUILD_HINT}"]) from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{file}: {'.'.join(map(str, e['loc'])) or '(document)'}: {e['msg']}; {REBUILD_HINT}"
            for e in exc.errors(include_url=False)
        ]
        raise BundleError(problems) from None


def _check_file(label: str, path: Path, shown: str, sha256: str, size: int) -> list[str]:
    if not path.is_file():
        return [f"{label}: {shown} is missing; {REBUILD_HINT}"]
    actual_size = path.stat().st_size
    if actual_size != size:
        return [
            f"{label}: {shown} has {actual_size} bytes, the manifest says {size}: the file is "
            f"truncated or was changed; {REBUILD_HINT}"
        ]
    actual = sha256_file(path)
    if actual != sha256:
        return [
            f"{label}: {shown} has sha256 {actual}, the manifest says {sha256}: the file is "
            f"corrupted or was changed; {REBUILD_HINT}"
        ]
    return []


def check_artifact(bundle: Path, artifact: Artifact) -> list[str]:
    """Every way ``artifact``'s files in ``bundle`` differ from the manifest (empty: intact)."""
    root = bundle / artifact.path
    if artifact.files is None:
        return _check_file(artifact.label, root, artifact.path, artifact.sha256, artifact.size)
    if not root.is_dir():
        return [f"{artifact.label}: directory {artifact.path} is missing; {REBUILD_HINT}"]
    problems = []
    if listing_sha256(artifact.files) != artifact.sha256:
        problems.append(
            f"{artifact.label}: its file list does not match its sha256 in the manifest: "
            f"manifest.json was edited; {REBUILD_HINT}"
        )
    for entry in artifact.files:
        shown = f"{artifact.path}/{entry.path}"
        problems += _check_file(artifact.label, root / entry.path, shown, entry.sha256, entry.size)
    listed = {entry.path for entry in artifact.files}
    for extra in _tree_files(root):
        if extra.as_posix() not in listed:
            problems.append(
                f"{artifact.label}: {artifact.path}/{extra.as_posix()} is not in the manifest; "
                f"remove it, or add it to the source and rebuild the bundle"
            )
    return problems


@dataclass
class Verification:
    bundle: Path
    artifacts: list[Artifact] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """What roles read: every checked artifact with its absolute path on the controller."""
        return {
            "bundle": str(self.bundle),
            "artifacts": {
                a.name: {
                    **a.model_dump(mode="json", exclude_none=True),
                    "source": str(self.bundle / a.path),
                }
                for a in self.artifacts
            },
        }


def verify_bundle(
    bundle: Path, names: Sequence[str] = (), optional: Sequence[str] = ()
) -> Verification:
    """Check the artifacts ``names`` of ``bundle`` against its manifest, and those of
    ``optional`` that it holds; every artifact when both are empty."""
    bundle = bundle.resolve()
    result = Verification(bundle)
    try:
        manifest = load_manifest(bundle)
    except BundleError as exc:
        result.problems = exc.problems
        return result
    held = ", ".join(a.name for a in manifest.artifacts) or "nothing"
    if not names and not optional:
        names = [a.name for a in manifest.artifacts]
    names = [*names, *(n for n in optional if manifest.get(n) and n not in names)]
    for name in names:
        artifact = manifest.get(name)
        if artifact is None:
            result.problems.append(
                f"{bundle}: has no artifact {name!r} (it holds: {held}); add it to the bundle "
                "spec and build the bundle again"
            )
            continue
        result.artifacts.append(artifact)
        result.problems += check_artifact(bundle, artifact)
    return result
