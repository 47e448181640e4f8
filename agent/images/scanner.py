"""``minerwatch scan-image``: a static scan of a local image, streamed from Docker's image export.

Nothing is extracted or written (``agent.images.export`` reads the ``docker save`` stream).
Every regular file that is executable, an ELF or a script, in every layer, is hashed
(SHA-256, SHA-1, MD5) and YARA-scanned from its bytes; scripts (``#!``) and config files (by
name: ``config.json``, ``*.yaml``, ``*.toml``, ``*.sh``...; their first ``MAX_TEXT_BYTES``) are
read as text (``FileSnapshot.text``) for the command-line, wallet and pool patterns
(``detectors.file_text``); files deleted or replaced by a later layer are still reported, as
hidden in their layer. The image config (entrypoint, command,
environment, labels) and the name the user gave go through the image policy detector. All
evidence is scored by the engine, as in the sweep.

Two threads share the work: the reader parses the tars and computes SHA-256 and SHA-1;
one helper computes MD5 and runs YARA on files the reader has finished (hashlib and YARA
release the GIL); files under 256 KiB are cheaper to finish on the reader. At most
``MAX_INFLIGHT_BYTES`` (and ``MAX_INFLIGHT_FILES``) wait for the helper.

Bounds: ``max_file_bytes`` per file (``[watch] max_file_mb``; a larger file gets no hashes
and YARA sees its first ``max_file_bytes``), ``max_total_bytes`` of file content over the
image, ``max_members`` tar entries, and ``timeout_s`` of wall-clock time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import tarfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import yara

from agent import alert
from agent.collectors import files
from agent.collectors.docker_api import ContainerGone, DockerDown, DockerHandle, DockerRefused
from agent.collectors.scan_paths import MAX_TEXT_BYTES, TEXT_SUFFIXES, text_of
from agent.collectors.yarascan import hits_from_matches
from agent.detectors.base import Context
from agent.engine import Engine, finding_id
from agent.errors import MinerwatchError
from agent.images.export import ExportError, ExportReader, Layer, Source, hidden_by, image_subject
from agent.model import ContainerInfo, FileSnapshot, Finding, Hashes
from agent.signatures import Signatures

MAX_TOTAL_BYTES = 4 << 30  # file content read over the whole image
MAX_INFLIGHT_BYTES = 128 << 20  # file content waiting for the helper thread
MAX_INFLIGHT_FILES = 256
_HANDOFF_BYTES = 256 << 10  # smaller files are finished on the reading thread
_YARA_CACHE_MAX = 4096
DEFAULT_TIMEOUT_S = 600.0
_HEAD = 64
_YARA_TIMEOUT_S = 60
_PARTIAL_NOTES = 20


class ImageScanError(MinerwatchError):
    """The image could not be scanned: export failed or unreadable, timed out."""


class ImageNotFound(ImageScanError):
    """No local image has that name or id."""


@dataclass(frozen=True, slots=True)
class ScanLimits:
    max_file_bytes: int = 128 << 20
    max_total_bytes: int = MAX_TOTAL_BYTES
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_members: int = 1_000_000


@dataclass(frozen=True, slots=True)
class LayerSummary:
    index: int  # 1 = bottom layer
    id: str  # diff id ("sha256:...") or the blob's path in the export
    files: int = 0
    whiteouts: int = 0
    error: str = ""


@dataclass
class ImageScanResult:
    image: str
    image_id: str = ""
    findings: list[Finding] = field(default_factory=list)
    layers: list[LayerSummary] = field(default_factory=list)
    layer_of: dict[str, int] = field(default_factory=dict)  # finding_id of a file finding -> layer index
    files: int = 0  # regular files in all layers
    candidates: int = 0  # executables, ELF files and scripts among them
    bytes_hashed: int = 0  # file content read for hashing and YARA
    bytes_streamed: int = 0  # export bytes read
    partial_files: int = 0  # candidates not fully hashed or YARA-scanned
    skipped: Counter = field(default_factory=Counter)  # symlink, hardlink, fifo, device, odd_name
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Pending:
    """A candidate file whose MD5 and YARA the helper is computing; ``snap`` is None once found clean."""

    snap: FileSnapshot | None
    future: Future | None
    size: int


def _read_up_to(fobj, head: bytes, n: int) -> bytearray:
    """``head`` and the member bytes after it, ``n`` in all (fewer at EOF), read into one buffer."""
    data = bytearray(n)
    data[:len(head)] = head[:n]
    got = min(len(head), n)
    with memoryview(data) as view:
        while got < n and (k := fobj.readinto(view[got:])):
            got += k
    del data[got:]
    return data


class _Queue:
    """Files handed to the helper, oldest first, settled in order; bounded in bytes and count."""

    def __init__(self, settle: Callable[[_Pending], None]) -> None:
        self.items: deque[_Pending] = deque()
        self.bytes = 0
        self.settle = settle

    def add(self, item: _Pending) -> None:
        self.items.append(item)
        self.bytes += item.size
        while self.items and (self.items[0].future.done() or self.bytes > MAX_INFLIGHT_BYTES
                              or len(self.items) > MAX_INFLIGHT_FILES):
            self._pop()  # waits for the helper when it is the oldest that is not done

    def drain(self) -> None:
        while self.items:
            self._pop()

    def _pop(self) -> None:
        item = self.items.popleft()
        self.bytes -= item.size
        self.settle(item)


class ImageScanner:
    """Scans export streams, one at a time; the YARA verdict cache (by SHA-256) lives across ``scan`` calls."""

    def __init__(self, signatures: Signatures, *, limits: ScanLimits = ScanLimits(), image_allow: tuple[str, ...] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.signatures, self.limits, self.clock = signatures, limits, clock
        self.engine = Engine()
        self._ctx = Context(signatures=signatures, image_allow=image_allow)
        self._yara_cache: dict[str, tuple] = {}  # sha256 -> hits; the reading thread's only

    def scan(self, source, image: str, progress: Callable[[int], None] | None = None) -> ImageScanResult:
        """Scan a ``docker save`` export (a binary file object or an iterable of byte chunks) of ``image``.

        ImageScanError when the export cannot be read to the end or the time runs out.
        """
        started = self.clock()
        result = ImageScanResult(image=image)
        deadline = started + self.limits.timeout_s
        src = Source(source, deadline, self.clock, progress)
        pending = _Queue(lambda item: self._settle(item, result))
        with ThreadPoolExecutor(1, thread_name_prefix="scan-image") as helper:
            def on_file(fobj, member: tarfile.TarInfo, path: str) -> _Pending | None:
                item = self._read(fobj, member, path, result, deadline, helper)
                if item is not None:
                    pending.add(item)
                return item

            reader = ExportReader(src, on_file, launcher_names=frozenset(self.signatures.launchers),
                                  max_members=self.limits.max_members)
            try:
                reader.run()
            except ExportError as exc:
                helper.shutdown(cancel_futures=True)
                raise ImageScanError(f"{image}: {exc}") from None
            pending.drain()
        self._finish(reader, result)
        result.bytes_streamed = src.bytes_read
        result.skipped.update(reader.counts)
        result.notes.extend(reader.notes)
        result.duration_s = self.clock() - started
        return result

    def _read(self, fobj, member: tarfile.TarInfo, path: str, result: ImageScanResult, deadline: float,
              helper: ThreadPoolExecutor) -> _Pending | None:
        """Read a candidate file (bounded), SHA-256 and SHA-1 it, and hand MD5 and YARA to the helper."""
        head = fobj.read(_HEAD)
        st = os.stat_result((stat.S_IFREG | (member.mode & 0o7777), 0, 0, 0, 0, 0, member.size, 0, 0, 0))
        candidate, is_elf, is_script = files.is_candidate(st, head)
        result.files += 1
        # A config file by its name (config.json, *.yaml, *.toml, *.ini, *.sh...) is read too, for its text.
        config_file = not candidate and path.lower().endswith(TEXT_SUFFIXES)
        if not candidate and not config_file:
            return None
        result.candidates += candidate
        left = self.limits.max_total_bytes - result.bytes_hashed
        limit = min(self.limits.max_file_bytes, MAX_TEXT_BYTES) if config_file else self.limits.max_file_bytes
        whole = member.size <= min(limit, left)
        # A file too big to hash is read as on disk: its first max_file_bytes go to YARA (a config file: its text).
        data = _read_up_to(fobj, head, member.size if whole else max(0, min(limit, left)))
        result.bytes_hashed += len(data)
        if not whole and not config_file:
            if result.partial_files < _PARTIAL_NOTES:
                why = "the per-file limit" if left >= member.size else "the total byte limit of the scan"
                result.notes.append(f"{path} ({member.size} bytes) was read only in part: larger than {why}")
            result.partial_files += 1
        sha256 = hashlib.sha256(data).hexdigest() if whole else ""
        cached = self._yara_cache.get(sha256) if whole else None
        if len(data) >= _HANDOFF_BYTES:
            future = helper.submit(self._md5_and_yara, data, whole, cached is None, deadline)
        else:  # a small file costs less to finish here than to hand over
            future = Future()
            future.set_result(self._md5_and_yara(data, whole, cached is None, deadline))
        hashes = Hashes(sha256, hashlib.sha1(data).hexdigest(), "", len(data)) if whole else None
        snap = FileSnapshot(path=path, size=member.size, mode=st.st_mode, hashes=hashes, is_elf=is_elf,
                            is_script=is_script, head=head[:16],
                            partial=() if whole or config_file else ("hashes", "yara"), yara=cached or (),
                            text=text_of(path, data, by_name=True))
        return _Pending(snap, future, len(data))

    def _md5_and_yara(self, data: bytearray, whole: bool, scan: bool, deadline: float):
        """(MD5 or "", YARA hits or None when not scanned, YARA incomplete); runs on either thread."""
        md5 = hashlib.md5(data).hexdigest() if whole else ""
        rules = self.signatures.yara
        if not scan or rules is None or not data:
            return md5, None, False
        timeout = max(1, min(_YARA_TIMEOUT_S, int(deadline - self.clock())))
        try:
            return md5, hits_from_matches(rules.match(data=data, timeout=timeout), "file"), False
        except yara.Error:  # a timeout or a scan limit: the file counts as partly scanned
            return md5, (), True

    def _settle(self, item: _Pending, result: ImageScanResult) -> None:
        """Complete a pending file with the helper's results; forget it unless it has evidence."""
        md5, hits, yara_incomplete = item.future.result()
        snap, partial = item.snap, item.snap.partial
        if yara_incomplete and "yara" not in partial:
            result.partial_files += "hashes" not in partial
            partial = (*partial, "yara")
        if hits is None:
            hits = snap.yara
        elif snap.hashes is not None and not yara_incomplete:
            if len(self._yara_cache) >= _YARA_CACHE_MAX:
                self._yara_cache.pop(next(iter(self._yara_cache)))
            self._yara_cache[snap.hashes.sha256] = hits
        hashes = dataclasses.replace(snap.hashes, md5=md5) if snap.hashes is not None else None
        snap = dataclasses.replace(snap, hashes=hashes, partial=partial, yara=hits)
        item.snap = snap if self.engine.evaluate_file(snap, self._ctx) is not None else None
        item.future, item.size = None, 0

    def _finish(self, reader: ExportReader, result: ImageScanResult) -> None:
        """Order the layers, mark hidden files, and turn files and config into findings."""
        entry = reader.manifest_entry(result.image)
        config, raw = reader.config(entry)
        result.image_id = "sha256:" + hashlib.sha256(raw).hexdigest() if raw else ""
        layers = reader.ordered(entry, config)
        launchers = tuple(f"{path} (layer {i})" for i, layer in enumerate(layers, 1) for path in layer.launchers)
        subject = dataclasses.replace(image_subject(config, result.image, result.image_id), launchers=launchers)
        ctx = dataclasses.replace(self._ctx, container=subject)
        best: dict[str, tuple[Finding, int]] = {}
        for index, layer in enumerate(layers, 1):
            for finding in self._file_findings(layer, index, layers, subject, ctx):
                cur = best.get(finding.finding_id)
                if cur is None or (finding.severity, not finding.file.hidden) > (cur[0].severity, not cur[0].file.hidden):
                    best[finding.finding_id] = (finding, index)
        findings = [f for f, _ in best.values()]
        if (cf := self.engine.evaluate_container(subject, ctx)) is not None:
            findings.append(cf)
        result.findings = sorted(findings, key=lambda f: (-f.severity, -f.score, f.finding_id))
        result.layer_of = {fid: index for fid, (_, index) in best.items()}
        result.layers = [LayerSummary(i, layer.id, layer.files, len(layer.whiteouts) + len(layer.opaque), layer.error)
                         for i, layer in enumerate(layers, 1)]
        result.notes.extend(f"layer {i} ({layer.id}): {layer.error}" for i, layer in enumerate(layers, 1) if layer.error)

    def _file_findings(self, layer: Layer, index: int, layers: list[Layer], subject: ContainerInfo, ctx: Context):
        later = list(enumerate(layers[index:], index + 1))
        for item in layer.flagged:
            if item.snap is None:
                continue
            hidden = hidden_by(item.snap.path, later)
            note = (f"hidden in layer {index} of {len(layers)} ({layer.id}): {hidden[1]} by layer {hidden[0]}"
                    if hidden is not None else "")
            snap = dataclasses.replace(item.snap, layer=layer.id, hidden=hidden is not None, hidden_note=note,
                                       container_id=subject.id)
            finding = self.engine.evaluate_file(snap, ctx)
            if finding is None:
                continue
            # One finding per file of the image (the engine's ids make one incident per container);
            # the same file copied up into a later layer is the same finding.
            fid = finding_id("image-file", subject.id, snap.path, snap.hashes.sha256 if snap.hashes else "")
            yield dataclasses.replace(finding, finding_id=fid)


def scan_local_image(name: str, cfg, sig: Signatures, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                     docker: DockerHandle | None = None, progress: Callable[[int], None] | None = None) -> ImageScanResult:
    """Scan local image ``name`` (reference or id) through the Docker API at ``cfg.docker.url``; never pulls."""
    # Docker 20.10 writes the whole export aside before its first byte: the timeout is the scan's.
    docker = docker or DockerHandle(cfg.docker.url, timeout=timeout_s)
    try:
        info = docker.inspect_image(name)
    except ContainerGone:
        raise ImageNotFound(f"no local image {name!r} (scan-image never pulls)") from None
    except DockerRefused as exc:
        raise ImageScanError(f"Docker could not export image {name!r}: {exc}") from None
    policy_name, hex_id = name, name.lower().removeprefix("sha256:")
    if len(hex_id) >= 12 and str(info.get("Id", "")).startswith("sha256:" + hex_id):  # an id: judge it by its first tag
        policy_name = next(iter(info.get("RepoTags") or ()), name)
    limits = ScanLimits(max_file_bytes=cfg.watch.max_file_mb << 20, timeout_s=timeout_s)
    scanner = ImageScanner(sig, limits=limits, image_allow=cfg.images.allow)
    return scanner.scan(_guarded(docker.export_image(name)), policy_name, progress)


def _guarded(chunks):
    """The export's chunks; a refused or broken export becomes an ExportError."""
    try:
        yield from chunks
    except DockerRefused as exc:  # refused before the first byte (20.10 writes a full copy first)
        raise ExportError(f"Docker could not export the image: {exc}") from None
    except (ContainerGone, DockerDown) as exc:
        raise ExportError(f"the image export broke off: {exc}") from None


def alerts(result: ImageScanResult, findings: Iterable[Finding]) -> list[dict]:
    """ECS alerts for ``findings``, each with ``minerwatch.image`` (name, id; layer and hidden for a file)."""

    out = []
    for f in findings:
        a = alert.build(f)
        image = {"name": result.image, "id": result.image_id}
        if f.file is not None:
            image.update(layer=f.file.layer, layer_index=result.layer_of.get(f.finding_id, 0), hidden=f.file.hidden)
        a["minerwatch"]["image"] = image
        out.append(alert.bounded(a))  # the image's names and layer ids count against the alert's size too
    return out
