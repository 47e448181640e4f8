"""Hand-made ``docker save`` archives, for images ``docker build`` would refuse to make.

    layer = layer_tar([reg("usr/bin/m", data, 0o755), whiteout("usr/bin/old"), fifo("run/p")])
    archive = save_archive([layer], repo_tag="mwtest/x:1", entrypoint=["/dao.py"])
    scanner.scan(io.BytesIO(archive), "mwtest/x:1")        # straight into the scanner
    image_id = load(client, archive)                         # or into Docker (tracked tag)

``sparse()`` writes an old-GNU sparse member by hand (tarfile cannot write them): a huge
file that takes a few blocks in the archive. Docker's ``load`` refuses sparse members and
``../`` names make ``docker save`` fail later, so archives with them are for the scanner only.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    name: str
    data: bytes = b""
    mode: int = 0o644
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    raw: bytes = b""  # a ready-made member (header + data), written as is


def reg(name: str, data: bytes, mode: int = 0o644) -> Entry:
    return Entry(name, data, mode)


def directory(name: str) -> Entry:
    return Entry(name, mode=0o755, type=tarfile.DIRTYPE)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, mode=0o777, type=tarfile.SYMTYPE, linkname=target)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name, mode=0o644, type=tarfile.LNKTYPE, linkname=target)


def fifo(name: str) -> Entry:
    return Entry(name, mode=0o644, type=tarfile.FIFOTYPE)


def chardev(name: str, major: int = 1, minor: int = 3) -> Entry:
    return Entry(name, mode=0o666, type=tarfile.CHRTYPE, devmajor=major, devminor=minor)


def whiteout(path: str) -> Entry:
    parent, _, base = path.rpartition("/")
    return Entry(f"{parent}/.wh.{base}" if parent else f".wh.{base}")


def opaque(directory_path: str) -> Entry:
    return Entry(f"{directory_path.rstrip('/')}/.wh..wh..opq")


def _octal(n: int, width: int) -> bytes:
    return tarfile.itn(n, width, tarfile.GNU_FORMAT)  # octal, or base-256 when too big (8 GiB is)


def sparse(name: str, real_size: int, head: bytes = b"", tail: bytes = b"", mode: int = 0o755) -> Entry:
    """An old-GNU sparse member ('S') of ``real_size`` bytes: ``head`` at 0, ``tail`` at the end, holes between."""
    stored = head + tail
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(stored), mode, 0
    block = bytearray(ti.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")[-512:])
    block[156:157] = tarfile.GNUTYPE_SPARSE
    chunks = [(0, len(head)), (real_size - len(tail), len(tail)), (real_size, 0), (real_size, 0)]
    for i, (offset, numbytes) in enumerate(chunks):
        pos = 386 + 24 * i
        block[pos:pos + 12], block[pos + 12:pos + 24] = _octal(offset, 12), _octal(numbytes, 12)
    block[482] = 0
    block[483:495] = _octal(real_size, 12)
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    pad = b"\0" * (-len(stored) % 512)
    return Entry(name, raw=bytes(block) + stored + pad)


def layer_tar(entries: list[Entry], compress: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for e in entries:
            if e.raw:
                tar.fileobj.write(e.raw)
                tar.offset += len(e.raw)
                continue
            ti = tarfile.TarInfo(e.name)
            ti.type, ti.mode, ti.linkname, ti.mtime = e.type, e.mode, e.linkname, 0
            ti.devmajor, ti.devminor = e.devmajor, e.devminor
            if e.type == tarfile.REGTYPE:
                ti.size = len(e.data)
                tar.addfile(ti, io.BytesIO(e.data))
            else:
                tar.addfile(ti)
    data = buf.getvalue()
    return gzip.compress(data, mtime=0) if compress else data


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
    tar.addfile(ti, io.BytesIO(data))


def image_config(layers: list[bytes], *, entrypoint=None, cmd=("sh",), env=(), labels=None) -> bytes:
    diff_ids = ["sha256:" + hashlib.sha256(gzip.decompress(t) if t[:2] == b"\x1f\x8b" else t).hexdigest() for t in layers]
    return json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2020-01-01T00:00:00Z",
        "config": {"Entrypoint": list(entrypoint) if entrypoint else None, "Cmd": list(cmd) if cmd else None,
                   "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", *env], "Labels": labels or {}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()


def save_archive(layers: list[bytes], *, repo_tag: str = "mwtest/handmade:1", layout: str = "legacy",
                 manifest_first: bool = False, config: bytes | None = None, extra: list[tuple[str, bytes]] = (),
                 **config_kw) -> bytes:
    """A ``docker save`` tar: ``legacy`` (``<id>/layer.tar``, ``<hex>.json``), ``oci`` (``blobs/sha256/<hex>``)
    or ``linked`` (blobs, with ``<id>/layer.tar`` symlinks to them named in the manifest)."""
    config = config if config is not None else image_config(layers, **config_kw)
    config_hex = hashlib.sha256(config).hexdigest()
    blobs = [f"blobs/sha256/{hashlib.sha256(t).hexdigest()}" for t in layers]
    legacy = [f"{hashlib.sha256(t).hexdigest()}/layer.tar" for t in layers]
    paths = {"oci": blobs, "legacy": legacy, "linked": legacy}[layout]
    config_path = f"blobs/sha256/{config_hex}" if layout == "oci" else f"{config_hex}.json"
    manifest = json.dumps([{"Config": config_path, "RepoTags": [repo_tag], "Layers": paths}]).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        if manifest_first:
            _add(tar, "manifest.json", manifest)
        for path, blob, data in zip(paths, blobs, layers):
            if layout == "linked":  # Docker 25+: the blob, and <id>/layer.tar as a symlink to it
                _add(tar, blob, data)
                link = tarfile.TarInfo(path)
                link.type, link.linkname = tarfile.SYMTYPE, f"../{blob}"
                tar.addfile(link)
            else:
                _add(tar, path, data)
        _add(tar, config_path, config)
        for name, data in extra:
            _add(tar, name, data)
        if not manifest_first:
            _add(tar, "manifest.json", manifest)
    return out.getvalue()


def load(client, archive: bytes, repo_tag: str) -> str:
    """``docker load`` the archive; the tag is removed at the end of the test. Returns the image id."""
    from . import containers

    containers.track_image(client, repo_tag)
    images = client.images.load(archive)
    return images[0].id
