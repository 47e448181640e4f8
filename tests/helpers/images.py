"""Offline test images (no registry: built with ``docker import`` of a rootfs tarball).

``minerwatch-test/base:1``: busybox-static (/bin/busybox plus one symlink per applet, as
``busybox --install`` would lay them: sh, sleep, nc, wget, ps, cat, sha256sum...) and the
static helpers in /usr/local/bin (fakeminer, fakeminer-plain, fakepool, burner).
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin, WORKDIR /, CMD ["sh"].

The image carries the label ``minerwatch.test.content=<hash of its files>``; when an image
with that tag and label already exists it is reused (across sessions too) and nothing is
rebuilt. Base images are left in place after the session (tags made with
``containers.tag_image`` are removed).
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import os
import subprocess
import tarfile
import time
from pathlib import Path

from .build import HelperBins

BASE_IMAGE = "minerwatch-test/base:1"
CONTENT_LABEL = "minerwatch.test.content"
BUSYBOX = os.environ.get("MINERWATCH_TEST_BUSYBOX", "/bin/busybox")
LAYOUT_VERSION = "1"
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _busybox_applets(busybox: str) -> list[str]:
    out = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout
    return sorted({line.strip().lstrip("/") for line in out.splitlines() if line.strip()})


def _add_dir(tar: tarfile.TarFile, path: str, mode: int = 0o755) -> None:
    ti = tarfile.TarInfo(path)
    ti.type = tarfile.DIRTYPE
    ti.mode = mode
    ti.mtime = 0
    tar.addfile(ti)


def _add_file(tar: tarfile.TarFile, path: str, data: bytes, mode: int = 0o644) -> None:
    ti = tarfile.TarInfo(path)
    ti.size = len(data)
    ti.mode = mode
    ti.mtime = 0
    tar.addfile(ti, io.BytesIO(data))


def _add_symlink(tar: tarfile.TarFile, path: str, target: str) -> None:
    ti = tarfile.TarInfo(path)
    ti.type = tarfile.SYMTYPE
    ti.linkname = target
    ti.mode = 0o777
    ti.mtime = 0
    tar.addfile(ti)


def rootfs_tar(files: dict[str, tuple[bytes, int]], busybox: str = BUSYBOX) -> bytes:
    """A rootfs tarball: busybox with applet symlinks, a minimal /etc, and ``files``
    ({"/usr/local/bin/x": (bytes, mode)})."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        dirs = {"bin", "sbin", "usr", "usr/bin", "usr/sbin", "usr/local", "usr/local/bin",
                "usr/local/sbin", "etc", "root", "proc", "sys", "dev", "var", "run", "home",
                "opt", "app"}
        for d in sorted(dirs):
            _add_dir(tar, d, 0o700 if d == "root" else 0o755)
        for d in ("tmp", "var/tmp"):
            _add_dir(tar, d, 0o1777)
        _add_file(tar, "bin/busybox", Path(busybox).read_bytes(), 0o755)
        for applet in _busybox_applets(busybox):
            if applet in ("bin/busybox",):
                continue
            parent = os.path.dirname(applet)
            if parent and parent not in dirs:
                _add_dir(tar, parent)
                dirs.add(parent)
            _add_symlink(tar, applet, "/bin/busybox")
        _add_file(tar, "etc/passwd",
                  b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
        _add_file(tar, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        for path, (data, mode) in sorted(files.items()):
            rel = path.lstrip("/")
            parent = os.path.dirname(rel)
            if parent and parent not in dirs:
                for i, _ in enumerate(parent.split("/")):
                    sub = "/".join(parent.split("/")[: i + 1])
                    if sub not in dirs:
                        _add_dir(tar, sub)
                        dirs.add(sub)
            _add_file(tar, rel, data, mode)
    return buf.getvalue()


def import_image(client, tag: str, files: dict[str, tuple[bytes, int]], *,
                 labels: dict[str, str] | None = None, cmd: str = '["sh"]',
                 env: dict[str, str] | None = None, workdir: str = "/",
                 entrypoint: str | None = None, busybox: str = BUSYBOX,
                 track: bool = False) -> str:
    """Builds an image from a busybox rootfs plus ``files`` ({"/path": (bytes, mode)}) with
    docker import (offline) and returns ``tag``. ``cmd``/``entrypoint`` are Dockerfile JSON
    forms, e.g. '["sh"]' or '["python3", "dao.py"]'. Reused when an image with this tag and
    the same content exists. ``track=True`` registers the tag in the current tracking scope
    so it is removed at the end of the test (use it for one-off images)."""
    content = hashlib.sha256()
    content.update(LAYOUT_VERSION.encode())
    content.update(Path(busybox).read_bytes())
    for path, (data, mode) in sorted(files.items()):
        content.update(path.encode() + b"\0" + str(mode).encode() + b"\0" + hashlib.sha256(data).digest())
    envs = {"PATH": PATH_ENV, **(env or {})}
    changes = [f"ENV {k}={v}" for k, v in envs.items()]
    changes += [f"WORKDIR {workdir}", f"CMD {cmd}"]
    if entrypoint:
        changes.append(f"ENTRYPOINT {entrypoint}")
    meta = "\n".join(changes) + repr(sorted((labels or {}).items()))
    content.update(meta.encode())
    digest = content.hexdigest()[:20]
    all_labels = {"minerwatch.test": "1", CONTENT_LABEL: digest, **(labels or {})}
    changes += [f'LABEL {k}="{v}"' for k, v in all_labels.items()]

    if track:
        from . import containers

        containers.track_image(client, tag)
    existing = _image_label(client, tag)
    if existing == digest:
        return tag
    lock_path = "/tmp/minerwatch-test-image.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _image_label(client, tag) == digest:
            return tag
        if ":" in tag.rsplit("/", 1)[-1]:
            repo, ver = tag.rsplit(":", 1)
        else:
            repo, ver = tag, "latest"
        data = rootfs_tar(files, busybox)
        client.api.import_image_from_data(data, repository=repo, tag=ver, changes=changes)
        deadline = time.monotonic() + 30
        while _image_label(client, tag) != digest:
            if time.monotonic() > deadline:
                raise RuntimeError(f"docker import of {tag} did not produce the image")
            time.sleep(0.1)
    return tag


def _image_label(client, tag: str) -> str | None:
    import docker

    try:
        img = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    return (img.labels or {}).get(CONTENT_LABEL)


def build_base_image(client, bins: HelperBins, tag: str = BASE_IMAGE) -> str:
    """Builds (or reuses) minerwatch-test/base:1 with the helpers in /usr/local/bin.
    Returns the tag."""
    files = {f"/usr/local/bin/{name}": (path.read_bytes(), 0o755) for name, path in bins.as_dict().items()}
    return import_image(client, tag, files)
