"""A durable, bounded, multi-reader spool of alert lines in the state directory.

Layout of ``directory`` (0700): segment files ``000000000001.jsonl``... (0600), append-only,
one JSON alert per line; ``NAME.pos`` per reader (sink): ``{"segment", "offset", "inflight"}``.

- ``append`` writes a line to the newest segment and, with ``fsync=True``, fsyncs it before
  returning: an accepted alert survives a crash of the agent or of the host.
- Each reader takes records in order from its own position (``next``) and moves past one
  only with ``commit``, after the sink took it: at-least-once. Before a record is handed out
  its position file says ``inflight``; a reader restored with ``inflight`` set had a send
  cut short, so its first record may be a repeat (``Entry.maybe_repeat``).
- Bounded: when the segments exceed ``max_bytes`` the oldest segment goes, whatever the
  readers have not taken yet is counted in ``dropped`` (total) and per reader, and logged.
  Segments every reader has passed are deleted.

All methods are thread-safe (one lock); every reader name is used by one thread.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import structlog

log = structlog.get_logger("minerwatch.alerts")

_SEGMENT = re.compile(r"^(\d{12})\.jsonl$")
_READER = re.compile(r"^[a-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Entry:
    """One record handed to a reader: where it lies and its bytes (without the newline)."""

    segment: int
    start: int
    end: int
    line: bytes
    maybe_repeat: bool = False  # a previous run may already have delivered it


@dataclass(slots=True)
class _Reader:
    segment: int
    offset: int
    inflight: Entry | None = None
    restored_inflight: bool = False
    dropped: int = 0


class Spool:
    def __init__(self, directory: str | os.PathLike[str], readers: Iterable[str], *,
                 max_bytes: int = 64 << 20, segment_bytes: int = 1 << 20, fsync: bool = True) -> None:
        if segment_bytes < 1 or max_bytes < segment_bytes:
            raise ValueError("need 0 < segment_bytes <= max_bytes")
        self.dir = Path(directory)
        self.max_bytes, self.segment_bytes, self.fsync = max_bytes, segment_bytes, fsync
        self.dropped = 0  # records evicted before every reader had them
        self.skipped = 0  # partial lines left by a crash, skipped
        self._lock = threading.Condition()
        self._fd: int | None = None
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        self._sizes: dict[int, int] = {}
        for p in self.dir.iterdir():
            if m := _SEGMENT.match(p.name):
                self._sizes[int(m.group(1))] = p.stat().st_size
        self._readers: dict[str, _Reader] = {}
        names = list(readers)
        loaded = {n: self._load_position(n) for n in names}
        self._active = max([*self._sizes, *(r.segment for r in loaded.values() if r), 1])
        self._sizes.setdefault(self._active, 0)
        self._repair_tail()
        for name in names:
            self._readers[name] = loaded[name] or _Reader(self._active, self._sizes[self._active])
            self._clamp(name)
            self._save(name)
        self._gc()

    # ------------------------------------------------------------------ writer

    def append(self, line: bytes) -> None:
        """Store one record (``line`` must not contain a newline); durable on return with fsync."""
        if b"\n" in line:
            raise ValueError("a spool record must be a single line")
        data = line + b"\n"
        with self._lock:
            if self._sizes[self._active] >= self.segment_bytes:
                self._roll()
            if self._fd is None:
                self._fd = os.open(self._path(self._active), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                if self.fsync:
                    _fsync_dir(self.dir)
            size = self._sizes[self._active]
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
                if self.fsync:
                    os.fsync(self._fd)
            except OSError:
                _truncate_quietly(self._fd, size)  # no torn record in front of the next one
                raise
            self._sizes[self._active] = size + len(data)
            while self.size_bytes > self.max_bytes and len(self._sizes) > 1:
                self._evict_oldest()
            self._lock.notify_all()

    # ------------------------------------------------------------------ readers

    def next(self, name: str) -> Entry | None:
        """The reader's next record (the same one again until it is committed), or None."""
        with self._lock:
            r = self._readers[name]
            if r.inflight is not None:
                return r.inflight
            while True:
                self._clamp(name)
                size = self._sizes[r.segment]
                if r.offset < size:
                    with open(self._path(r.segment), "rb") as f:
                        f.seek(r.offset)
                        line = f.readline(size - r.offset)
                    if line.endswith(b"\n"):
                        entry = Entry(r.segment, r.offset, r.offset + len(line), line[:-1], r.restored_inflight)
                        r.inflight, r.restored_inflight = entry, False
                        self._save(name, inflight=True)
                        return entry
                    self.skipped += 1  # a torn write before a crash
                    r.offset = size
                elif r.segment < self._active:
                    r.segment, r.offset = self._after(r.segment), 0
                    self._save(name)
                    self._gc()
                else:
                    return None

    def commit(self, name: str, entry: Entry) -> None:
        """The reader's sink took ``entry``: move past it."""
        with self._lock:
            r = self._readers[name]
            r.inflight = None
            if (r.segment, r.offset) == (entry.segment, entry.start):
                r.offset = entry.end
            self._save(name)
            self._lock.notify_all()

    def release(self, name: str, entry: Entry) -> None:
        """The reader stops without delivering ``entry``; it stays for the next run unless it
        was evicted meanwhile (then it is counted as dropped)."""
        with self._lock:
            r = self._readers[name]
            r.inflight = None
            if entry.segment < r.segment:
                r.dropped += 1
                self.dropped += 1

    def wait(self, name: str, timeout: float, cancel: threading.Event | None = None) -> None:
        """Sleep until reader ``name`` has a record to take, ``cancel`` is set (then ``wake``
        it), or ``timeout`` passes."""
        with self._lock:
            if self._unread(name) or (cancel is not None and cancel.is_set()):
                return
            self._lock.wait(timeout)

    def idle(self) -> bool:
        """True when every reader has taken and committed everything."""
        with self._lock:
            return not any(r.inflight is not None or self._unread(n) for n, r in self._readers.items())

    def wake(self) -> None:
        """Wake every thread in ``wait``."""
        with self._lock:
            self._lock.notify_all()

    def lag_bytes(self, name: str) -> int:
        """Bytes between the reader's position and the end of the spool."""
        with self._lock:
            r = self._readers[name]
            return sum(s for seg, s in self._sizes.items() if seg >= r.segment) - (r.offset if r.segment in self._sizes else 0)

    def reader_dropped(self, name: str) -> int:
        with self._lock:
            return self._readers[name].dropped

    @property
    def size_bytes(self) -> int:
        """Bytes on disk in segments (delivered records included until their segment goes)."""
        with self._lock:
            return sum(self._sizes.values())

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    # ------------------------------------------------------------------ internals

    def _unread(self, name: str) -> bool:
        r = self._readers[name]
        return r.segment < self._active or r.offset < self._sizes[r.segment]

    @property
    def _first(self) -> int:
        return min(self._sizes)

    def _path(self, segment: int) -> Path:
        return self.dir / f"{segment:012d}.jsonl"

    def _roll(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._active += 1
        self._sizes[self._active] = 0

    def _evict_oldest(self) -> None:
        seg = self._first
        if seg == self._active:
            self._roll()
        data = self._path(seg).read_bytes() if self._sizes[seg] else b""
        worst = 0
        for name, r in self._readers.items():
            if r.segment > seg:
                continue
            start = r.offset if r.segment == seg else 0
            if r.inflight is not None and r.inflight.segment == seg:
                start = max(start, r.inflight.end)  # the worker holds it and keeps trying
            lost = data[start:].count(b"\n")
            r.dropped += lost
            worst = max(worst, lost)
            r.segment, r.offset = self._after(seg), 0
            self._save(name)
        self._path(seg).unlink(missing_ok=True)
        del self._sizes[seg]
        self.dropped += worst
        if worst:
            log.warning("alert_spool_full", dropped=worst, dropped_total=self.dropped,
                        spool_bytes=self.size_bytes, max_bytes=self.max_bytes)

    def _gc(self) -> None:
        """Delete the segments every reader has passed."""
        low = min((r.segment for r in self._readers.values()), default=self._active)
        for seg in sorted(self._sizes):
            if seg >= low or seg == self._active:
                break
            if any(r.inflight is not None and r.inflight.segment == seg for r in self._readers.values()):
                break
            self._path(seg).unlink(missing_ok=True)
            del self._sizes[seg]

    def _after(self, segment: int) -> int:
        """The first existing segment after ``segment`` (the active one always exists)."""
        return min(s for s in self._sizes if s > segment)

    def _clamp(self, name: str) -> None:
        r = self._readers[name]
        if r.segment not in self._sizes:
            r.segment, r.offset = min(s for s in self._sizes if s > r.segment), 0
        r.offset = min(r.offset, self._sizes[r.segment])

    def _repair_tail(self) -> None:
        """Cut a torn last line (a write cut short by a crash was never acknowledged)."""
        path, size = self._path(self._active), self._sizes[self._active]
        if not size:
            return
        with open(path, "r+b") as f:
            f.seek(max(0, size - 65536))
            tail = f.read()
            if tail.endswith(b"\n"):
                return
            cut = tail.rfind(b"\n")
            new_size = size - len(tail) + cut + 1 if cut >= 0 else 0
            if cut < 0 and size > len(tail):
                return  # torn line longer than 64 KiB: leave it, readers skip it
            f.truncate(new_size)
        self._sizes[self._active] = new_size
        log.warning("alert_spool_repaired", segment=self._active, cut_bytes=size - new_size)

    def _load_position(self, name: str) -> _Reader | None:
        if not _READER.match(name):
            raise ValueError(f"bad spool reader name {name!r}")
        path = self.dir / f"{name}.pos"
        try:
            raw = json.loads(path.read_bytes())
            seg, off, inflight = int(raw["segment"]), int(raw["offset"]), bool(raw.get("inflight", False))
            if seg < 1 or off < 0:
                raise ValueError("negative position")
        except FileNotFoundError:
            return None  # a new sink starts at the end: it gets new alerts, not old ones
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("alert_spool_position_unreadable", reader=name, error=str(exc), action="replay from the oldest record")
            return _Reader(0, 0, restored_inflight=True)
        return _Reader(seg, off, restored_inflight=inflight)

    def _save(self, name: str, *, inflight: bool = False) -> None:
        r = self._readers[name]
        path = self.dir / f"{name}.pos"
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps({"segment": r.segment, "offset": r.offset, "inflight": inflight}).encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)


def _truncate_quietly(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError:  # the disk is failing already; the caller reports the first error
        pass


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
