"""Read a ``docker save`` export as a stream: layer tars, their whiteouts, the manifest and config.

Nothing is extracted. The export and each layer blob in it (plain or gzip tar; legacy
``<id>/layer.tar`` or OCI ``blobs/sha256/<hex>``) are read with ``tarfile`` in stream mode.
``manifest.json`` may come before or after the layers, so layers are read as they come,
keyed by their path in the export, and put in order by the manifest at the end. Member
names only become paths inside the image (``../x`` and ``/x`` are both ``/x``); links,
devices and FIFOs are counted and never opened. The caller gets each regular file through
``on_file(fobj, member, path)`` and decides what to read; what it returns is kept with the
layer (``Layer.flagged``).
"""

from __future__ import annotations

import json
import posixpath
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.detectors.image_policy import split_reference
from agent.errors import MinerwatchError
from agent.model import ContainerInfo

MAX_JSON_BYTES = 8 << 20  # a manifest or config larger than this is not read
MAX_JSON_TOTAL = 64 << 20  # JSON documents kept from one export
MAX_HEADER_BYTES = 1 << 20  # pax and GNU long-name headers (tarfile holds them in memory)
_SPECIAL = {tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink", tarfile.FIFOTYPE: "fifo",
            tarfile.CHRTYPE: "device", tarfile.BLKTYPE: "device"}
_ZSTD = b"\x28\xb5\x2f\xfd"


class ExportError(MinerwatchError):
    """The export could not be read to the end (broken, not a tar, too many entries, timed out)."""


@dataclass
class Layer:
    path: str  # in the export
    id: str = ""  # diff id when the config lists one per layer, else ``path``
    entries: dict[str, bool] = field(default_factory=dict)  # path -> is a directory
    whiteouts: set[str] = field(default_factory=set)
    opaque: set[str] = field(default_factory=set)  # directories whose lower contents are hidden
    flagged: list = field(default_factory=list)  # what on_file returned (when not None)
    launchers: list[str] = field(default_factory=list)  # paths whose base name is in ``launcher_names``
    files: int = 0
    error: str = ""


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses pax and GNU long-name headers larger than MAX_HEADER_BYTES (tarfile reads them whole)."""

    def _proc_gnulong(self, archive):
        if self.size > MAX_HEADER_BYTES:
            raise tarfile.ReadError(f"GNU long-name header of {self.size} bytes")
        return super()._proc_gnulong(archive)

    def _proc_pax(self, archive):
        if self.size > MAX_HEADER_BYTES:
            raise tarfile.ReadError(f"pax header of {self.size} bytes")
        return super()._proc_pax(archive)


class Source:
    """The export as a file object for tarfile: counts bytes and checks the deadline on every read."""

    def __init__(self, source, deadline: float, clock: Callable[[], float],
                 progress: Callable[[int], None] | None = None) -> None:
        chunks = iter(lambda: source.read(1 << 20), b"") if hasattr(source, "read") else iter(source)
        self._chunks, self._deadline, self._clock, self._progress = chunks, deadline, clock, progress
        self._buf, self._pos, self.bytes_read, self._pulled = b"", 0, 0, 0

    def read(self, n: int = -1) -> bytes:
        if self._clock() > self._deadline:
            raise ExportError("the image scan timed out")
        n = (1 << 62) if n is None or n < 0 else n
        if len(self._buf) - self._pos < n:
            parts, have = [self._buf[self._pos:]], len(self._buf) - self._pos
            while have < n and (chunk := next(self._chunks, None)) is not None:
                parts.append(chunk)
                have += len(chunk)
                self._pulled += len(chunk)
                if self._progress:
                    self._progress(self._pulled)
            self._buf, self._pos = b"".join(parts), 0
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        self.bytes_read += len(out)
        return out


def inner_path(name: str) -> tuple[str, bool]:
    """Absolute path inside the image for a layer member name; True when the name was absolute or had ``..``."""
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    odd = name.startswith("/") or ".." in name.split("/")
    return posixpath.normpath("/" + name.lstrip("/")), odd


def _export_path(name: str) -> str:
    return posixpath.normpath("/" + str(name).lstrip("/"))[1:]


class ExportReader:
    """Reads one export; ``layers`` keyed by export path, ``counts`` of skipped entry kinds, ``notes``."""

    def __init__(self, source: Source, on_file: Callable, *, launcher_names=frozenset(), max_members: int = 1_000_000) -> None:
        self.source, self.on_file = source, on_file
        self.launcher_names, self.max_members = launcher_names, max_members
        self.layers: dict[str, Layer] = {}
        self.jsons: dict[str, bytes] = {}
        self.links: dict[str, str] = {}
        self.counts: Counter = Counter()
        self.notes: list[str] = []
        self._members = self._json_bytes = 0

    def _count(self) -> None:
        self._members += 1
        if self._members > self.max_members:
            raise ExportError(f"the export has more than {self.max_members} tar entries")

    def run(self) -> None:
        """Read the whole export; ExportError when it is not a readable tar or breaks off."""
        try:
            outer = tarfile.open(fileobj=self.source, mode="r|*", tarinfo=_BoundedTarInfo)
            for member in outer:
                outer.members.clear()  # stream mode keeps every TarInfo otherwise
                self._count()
                self._outer(outer, member)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise ExportError(f"the image export is not a readable docker save archive: {exc}") from None

    def _outer(self, outer: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        path = _export_path(member.name)
        if member.issym() or member.islnk():  # Docker 25+ links <id>/layer.tar to blobs/sha256/<hex>
            base = posixpath.dirname(path) if member.issym() else ""
            self.links[path] = _export_path(posixpath.join(base, member.linkname))
            return
        if not member.isreg() or member.size == 0:
            return
        fobj = outer.extractfile(member)
        head = fobj.peek(512)[:512]
        if head.lstrip()[:1] in (b"{", b"["):
            if member.size <= MAX_JSON_BYTES and self._json_bytes + member.size <= MAX_JSON_TOTAL:
                self.jsons[path] = fobj.read()
                self._json_bytes += member.size
        elif head[257:262] == b"ustar" or head[:2] == b"\x1f\x8b" or path.endswith(".tar") or not head.strip(b"\0"):
            self._layer(path, fobj)
        elif head[:4] == _ZSTD:
            self.layers[path] = Layer(path, error="zstd-compressed layer: not supported, not scanned")

    def _layer(self, path: str, fobj) -> None:
        layer = self.layers[path] = Layer(path)
        try:
            with tarfile.open(fileobj=fobj, mode="r|*", tarinfo=_BoundedTarInfo) as tar:
                for member in tar:
                    tar.members.clear()
                    self._count()
                    self._entry(tar, member, layer)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            layer.error = f"unreadable after {layer.files} files: {exc}"

    def _entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo, layer: Layer) -> None:
        path, odd = inner_path(member.name)
        if odd:
            self.counts["odd_name"] += 1
        parent, base = posixpath.split(path)
        if base.startswith(".wh."):
            if base == ".wh..wh..opq":
                layer.opaque.add(parent)
            elif not base.startswith(".wh..wh."):  # .wh..wh.plnk and friends are AUFS bookkeeping
                layer.whiteouts.add(posixpath.join(parent, base[4:]))
            return
        layer.entries[path] = member.isdir()
        if member.isreg():
            layer.files += 1
            if base.lower() in self.launcher_names:
                layer.launchers.append(path)
            fobj = tar.extractfile(member)
            if fobj is not None and (snap := self.on_file(fobj, member, path)) is not None:
                layer.flagged.append(snap)
        elif not member.isdir():
            self.counts[_SPECIAL.get(member.type, "other")] += 1

    # ------------------------------------------------------------------ after the stream

    def _resolve(self, path: str) -> str:
        for _ in range(8):
            if path not in self.links:
                break
            path = self.links[path]
        return path

    def _json(self, path: str):
        raw = self.jsons.get(self._resolve(_export_path(path)))
        if raw is None:
            return None, b""
        try:
            return json.loads(raw), raw
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.notes.append(f"{path} in the export is not valid JSON: {exc}")
            return None, b""

    def manifest_entry(self, image: str) -> dict | None:
        """The manifest.json entry for ``image`` (by tag), else the first one; None without a manifest."""
        manifest, _ = self._json("manifest.json")
        entries = [e for e in manifest if isinstance(e, dict)] if isinstance(manifest, list) else []
        if not entries:
            return None
        registry, namespace, repo = split_reference(image)
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else "latest"
        for entry in entries:
            for ref in entry.get("RepoTags") or ():
                if isinstance(ref, str) and split_reference(ref) == (registry, namespace, repo) \
                        and ref.rsplit(":", 1)[-1] == tag:
                    return entry
        return entries[0]

    def config(self, entry: dict | None) -> tuple[dict, bytes]:
        """The image config (parsed, raw bytes); ({}, b"") when it is missing."""
        data, raw = self._json(entry["Config"]) if entry and isinstance(entry.get("Config"), str) else (None, b"")
        if not isinstance(data, dict):
            self.notes.append("the image config was not found in the export: entrypoint, command and environment not checked")
            return {}, b""
        return data, raw

    def ordered(self, entry: dict | None, config: dict) -> list[Layer]:
        """Layers bottom first, as the manifest lists them; stream order without a manifest."""
        if entry is None:
            self.notes.append("no usable manifest.json in the export: layers are taken in the order they came")
            layers = list(self.layers.values())
        else:
            layers = []
            for raw in entry.get("Layers") or ():
                key = self._resolve(_export_path(raw))
                layers.append(self.layers.get(key) or Layer(key, error="listed in manifest.json but missing from the export"))
            if unused := sorted(set(self.layers) - {layer.path for layer in layers}):
                self.notes.append(f"layer blobs not listed in manifest.json were scanned but not placed: {', '.join(unused[:3])}")
        rootfs = config.get("rootfs") if isinstance(config.get("rootfs"), dict) else {}
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs.get("diff_ids"), list) else []
        for i, layer in enumerate(layers):
            good = len(diff_ids) == len(layers) and isinstance(diff_ids[i], str)
            layer.id = diff_ids[i] if good else layer.path
        return layers


def _strings(value) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def image_subject(config: dict, name: str, image_id: str) -> ContainerInfo:
    """What the image policy judges: the image config (``docker save`` JSON) under the name the user gave."""
    c = config.get("config") if isinstance(config.get("config"), dict) else {}
    labels = c.get("Labels") if isinstance(c.get("Labels"), dict) else {}
    return ContainerInfo(id=image_id or name, image=name, image_id=image_id, runtime="docker",
                         labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
                         entrypoint=_strings(c.get("Entrypoint")), command=_strings(c.get("Cmd")),
                         env=_strings(c.get("Env")))


def hidden_by(path: str, later: list[tuple[int, Layer]]) -> tuple[int, str] | None:
    """(index, "deleted" or "replaced") of the first later layer that hides ``path``, or None."""
    ancestors, p = [], path
    while p != "/":
        p = posixpath.dirname(p)
        ancestors.append(p)
    for index, layer in later:
        if path in layer.whiteouts:
            return index, "deleted"
        if path in layer.entries:
            return index, "replaced"
        for a in ancestors:
            if a in layer.whiteouts or a in layer.opaque or layer.entries.get(a) is False:
                return index, "deleted"
    return None

