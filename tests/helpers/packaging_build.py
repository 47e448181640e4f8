"""Build the PyInstaller executables, the .deb and the agent image once, and cache them.

    from tests.helpers import packaging_build as pb
    dist = pb.build_dist()              # Dist: .dir, .onefile, .onedir, .key
    deb = pb.build_deb(dist)            # Path of the .deb
    tag = pb.build_image(client, dist)  # "minerwatch-test/agent:<key>"

Everything goes through the project's own scripts (packaging/pyinstaller/build.sh,
packaging/deb/build.sh, packaging/container/build.sh). Outputs land in
``$MINERWATCH_TEST_DIST or /tmp/minerwatch-test-dist/<key>/``; the key hashes the sources
that go into each output (agent/, signatures/, pyproject.toml and the packaging files,
plus the interpreter's version), so an unchanged tree reuses them across runs and
sessions; the newest three builds (and agent images) are kept. The build venv
(PyInstaller + the agent's dependencies) lives in ``<cache root>/build-venv`` and is reused
while its requirements stay the same. Safe against concurrent builders (file lock + atomic
rename).

    python -m tests.helpers.packaging_build    # builds and prints the directory and the .deb
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE_ROOT = Path(os.environ.get("MINERWATCH_TEST_DIST", "/tmp/minerwatch-test-dist"))
IMAGE_REPO = "minerwatch-test/agent"
BUILD_TIMEOUT = 900
KEEP_BUILDS = 3  # cached builds kept (other sessions of other trees may be using theirs)

PYINSTALLER_INPUTS = ("agent", "signatures", "pyproject.toml", "packaging/pyinstaller")
DEB_INPUTS = ("packaging/deb", "packaging/man", "packaging/system-libs.sh", "systemd/minerwatch.service", "README.md")
IMAGE_INPUTS = ("packaging/container", "packaging/system-libs.sh")


@dataclass(frozen=True)
class Dist:
    """One cached PyInstaller build."""

    dir: Path
    key: str

    @property
    def onefile(self) -> Path:
        return self.dir / "minerwatch"

    @property
    def onedir(self) -> Path:
        return self.dir / "minerwatch-dir"


def _hash_inputs(h, rels) -> None:
    for rel in rels:
        top = REPO / rel
        files = [top] if top.is_file() else sorted(
            p for p in top.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
        for path in files:
            h.update(path.relative_to(REPO).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
            h.update(b"x" if os.access(path, os.X_OK) else b"-")


def source_key(*groups, base: str = "") -> str:
    h = hashlib.sha256(base.encode() + sys.version.encode())
    for rels in groups:
        _hash_inputs(h, rels)
    return h.hexdigest()[:16]


def _run(cmd: list[str], what: str, **env: str) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                         env={**os.environ, **env}, cwd=REPO)
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed ({' '.join(cmd)}):\n{res.stdout[-4000:]}{res.stderr[-8000:]}")
    return res.stdout


def _locked_build(final: Path, build) -> Path:
    """Run ``build(tmpdir)`` under the cache lock unless ``final`` is complete; atomic rename."""
    if (final / ".complete").exists():
        return final
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".complete").exists():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
        try:
            build(tmp)
            (tmp / ".complete").write_text("ok\n")
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def _prune(keep: Path) -> None:
    """Remove all but the newest KEEP_BUILDS cached builds (each is about 110 MB)."""
    builds = [p for p in CACHE_ROOT.iterdir() if p.is_dir() and len(p.name) == 16 and p != keep]
    builds.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[KEEP_BUILDS - 1:]:
        shutil.rmtree(old, ignore_errors=True)


def build_dist() -> Dist:
    """The single-file and one-directory builds of this tree (built on first use)."""
    key = source_key(PYINSTALLER_INPUTS)

    def build(tmp: Path) -> None:
        _run(["bash", str(REPO / "packaging/pyinstaller/build.sh"), str(tmp)], "PyInstaller build",
             PYTHON=sys.executable, MINERWATCH_BUILD_VENV=str(CACHE_ROOT / "build-venv"))

    final = _locked_build(CACHE_ROOT / key, build)
    os.utime(final)  # in use: the newest to keep
    _prune(final)
    return Dist(dir=final, key=key)


def build_deb(dist: Dist) -> Path:
    """The .deb made by packaging/deb/build.sh from ``dist`` (gzip: faster than xz here)."""
    key = source_key(DEB_INPUTS, base=dist.key)

    def build(tmp: Path) -> None:
        (tmp / "minerwatch-dir").symlink_to(dist.onedir)
        out = _run(["bash", str(REPO / "packaging/deb/build.sh"), str(tmp)], "deb build", DEB_COMPRESSION="gzip")
        built = Path(out.strip().splitlines()[-1])
        (tmp / "minerwatch-dir").unlink()
        os.replace(built, tmp / "minerwatch.deb")

    return _locked_build(dist.dir / f"deb-{key}", build) / "minerwatch.deb"


def build_image(client, dist: Dist) -> str:
    """The agent image made by packaging/container/build.sh from ``dist``; reused by tag."""
    import docker

    tag = f"{IMAGE_REPO}:{source_key(IMAGE_INPUTS, base=dist.key)}"
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / ".image-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            client.images.get(tag)
        except docker.errors.ImageNotFound:
            _run(["bash", str(REPO / "packaging/container/build.sh"), str(dist.dir), tag], "image build")
            _prune_images(client, tag)
    return tag


def _prune_images(client, keep: str) -> None:
    """Untag all but the newest KEEP_BUILDS agent test images; one still in use stays."""
    import docker

    images = sorted(client.images.list(name=IMAGE_REPO), key=lambda i: i.attrs.get("Created", ""), reverse=True)
    for image in images[KEEP_BUILDS:]:
        for tag in image.tags:
            if tag != keep:
                try:
                    client.images.remove(tag)
                except docker.errors.APIError:  # used by a container of another session: leave it
                    pass


def system_libs(dist: Dist) -> list[str]:
    """What packaging/system-libs.sh says the build loads from the system."""
    out = _run(["bash", str(REPO / "packaging/system-libs.sh"), str(dist.onedir)], "system-libs.sh")
    return [line for line in out.splitlines() if line.strip()]


if __name__ == "__main__":
    d = build_dist()
    print(d.dir)
    print(build_deb(d))
