"""Alerts appended as JSON lines to a file that logrotate may rotate under us.

- rename-and-create (logrotate's default): before each write the path is compared with the
  open file (device, inode); when it is another file, the path is opened again; when it is
  gone, the renamed file is still written for a few seconds (logrotate creates the new file
  with O_EXCL right after its rename) before the sink re-creates the path itself.
  Lines written between the rename and that check land in the rotated file, not lost.
- copytruncate: the file is opened with O_APPEND, so writes after the truncation start at
  the new end. Lines written after logrotate's copy read the end of the file but before its
  truncate (logrotate fsyncs the copy in between: milliseconds, or seconds on a busy disk)
  would be lost. When a truncation is seen (the file shrank below what we wrote), the sink
  looks for logrotate's copy beside the file (``alerts.jsonl.1``, ``alerts.jsonl-20261201``...:
  the newest few regular files named after it, opened without following symlinks) and
  checks it holds, at the offset the sink wrote it, one of its own recent lines; the copy's
  size then says exactly which lines it missed (and a line it holds only in part), and only
  those are written again: none at all when nothing was written between copy and truncate.
  When no copy can be verified (compressed or moved away at once, ``olddir`` elsewhere), the
  lines written within ``copytruncate_grace`` seconds before the truncation are written again.
  Repeats share their ``event.id``, which SIEMs deduplicate on.
- ``reopen()`` (SIGHUP) closes and reopens on the next send.

Created files get mode 0640; an existing file keeps the mode logrotate gave it.
"""

from __future__ import annotations

import collections
import os
import stat
import threading
import time
from collections.abc import Callable

import structlog

from agent.sinks.base import Record, SinkError

log = structlog.get_logger("minerwatch.alerts")

_RECENT_LINES = 2000  # bound on the lines kept for copytruncate recovery


_CREATE_GRACE_S = 5.0  # how long a renamed-away file is still written before the sink re-creates the path
_COPY_CANDIDATES = 3  # newest files named after the alert file checked for logrotate's copy
_MAX_DIR_ENTRIES = 4096  # entries of the alert file's directory looked at for it


class FileSink:
    name = "file"

    def __init__(self, path: str, *, copytruncate_grace: float = 2.0, wall_clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._grace = copytruncate_grace
        self._clock = wall_clock
        self._fd: int | None = None
        self._ident: tuple[int, int] = (0, 0)
        self._end = 0  # file size after our last write
        self._reopen = threading.Event()
        # (wall time, generation, offset, line) of recent lines; a generation is one open file between
        # truncations, so offsets of one generation are positions in one file's content
        self._recent: collections.deque[tuple[float, int, int, bytes]] = collections.deque(maxlen=_RECENT_LINES)
        self._gen = 0
        self._missing_since: float | None = None  # when the path was first seen renamed away
        self.rotations = 0  # renames and truncations seen
        self.rewritten = 0  # lines written again after a copytruncate
        self.recovered_by = {"copy": 0, "grace": 0}  # truncations recovered by the verified copy / by time

    def describe(self) -> str:
        return f"file {self.path}"

    def reopen(self) -> None:
        self._reopen.set()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def send(self, record: Record) -> None:
        data = record.line + b"\n"
        try:
            self._prepare()
            before = self._end
            self._write(data)
            end = os.lseek(self._fd, 0, os.SEEK_CUR)  # O_APPEND: the end of this write
            start = end - len(data)
            if end < before + len(data):  # truncated between our check and our write: this line is in the new file
                self.rotations += 1
                self._gen += 1
                n = self._recover(self._clock() - self._grace, self._gen - 1)
                log.info("alert_file_rotated", path=self.path, how="truncated", rewritten=n)
                end = os.lseek(self._fd, 0, os.SEEK_CUR)
            self._end = end
            self._recent.append((self._clock(), self._gen, start, data))
        except OSError as exc:
            self.close()
            raise SinkError(self.name, f"cannot write {self.path}: {exc.strerror or exc}") from None

    # ------------------------------------------------------------------ internals

    def _prepare(self) -> None:
        if self._reopen.is_set():
            self._reopen.clear()
            self.close()
        if self._fd is not None:
            try:
                st = os.stat(self.path)
                moved = (st.st_dev, st.st_ino) != self._ident
                self._missing_since = None
            except FileNotFoundError:
                # Renamed away: logrotate creates the new file next (with O_EXCL). Creating it ourselves
                # first would make logrotate fail; keep writing to the renamed file for a short while.
                now = self._clock()
                if self._missing_since is None:
                    self._missing_since = now
                moved = now - self._missing_since >= _CREATE_GRACE_S
                if moved:
                    self._missing_since = None
            if moved:
                self.rotations += 1
                log.info("alert_file_rotated", path=self.path, how="renamed")
                self.close()
        if self._fd is None:
            self._open()
            return
        st = os.fstat(self._fd)
        self._end, shrunk = st.st_size, st.st_size < self._end  # one fstat: a truncation after it is seen after the write
        if shrunk:
            self.rotations += 1
            self._gen += 1
            n = self._recover(st.st_mtime - self._grace, self._gen - 1)
            log.info("alert_file_rotated", path=self.path, how="truncated", rewritten=n)
            if n:
                self._end = os.lseek(self._fd, 0, os.SEEK_CUR)  # O_APPEND: the end of our last write

    def _open(self) -> None:
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, mode=0o750, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o640)
            os.fchmod(fd, 0o640)  # whatever the umask
        except FileExistsError:
            fd = os.open(self.path, flags)
        st = os.fstat(fd)
        self._fd, self._ident, self._end = fd, (st.st_dev, st.st_ino), st.st_size
        self._gen += 1

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def _recover(self, since: float, gen: int) -> int:
        """Write again the lines of generation ``gen`` (the file before its truncation) that logrotate's
        copy may lack: those past the verified copy's size, or else those written at or after ``since``
        (wall clock). They are written to the current generation and remembered with their new offsets."""
        old = [(t, start, d) for t, g, start, d in self._recent if g == gen]
        copied = self._copied_size(old)
        if copied is not None:
            self.recovered_by["copy"] += 1
            lines = [(t, d) for t, start, d in old if start + len(d) > copied]
        else:
            self.recovered_by["grace"] += 1
            lines = [(t, d) for t, _, d in old if t >= since]
        for t, data in lines:
            self._write(data)
            self._recent.append((t, self._gen, os.lseek(self._fd, 0, os.SEEK_CUR) - len(data), data))
        self.rewritten += len(lines)
        return len(lines)

    def _copied_size(self, old: list[tuple[float, int, bytes]]) -> int | None:
        """The size of logrotate's copy of the truncated file, when a file beside it, named after it, holds
        one of ``old`` (recent lines, with their offsets) at its offset: the last one that fits in it.
        None when no such copy is found."""
        if not old:
            return None
        directory, base = os.path.split(self.path)
        directory = directory or "."
        found: list[tuple[int, str]] = []
        try:
            with os.scandir(directory) as entries:
                for i, entry in enumerate(entries):
                    if i >= _MAX_DIR_ENTRIES:
                        break
                    name = entry.name
                    if len(name) > len(base) and name.startswith(base) and name[len(base)] in ".-_":
                        st = entry.stat(follow_symlinks=False)
                        if stat.S_ISREG(st.st_mode) and st.st_size:
                            found.append((st.st_mtime_ns, name))
        except OSError:
            return None
        for _, name in sorted(found, reverse=True)[:_COPY_CANDIDATES]:
            try:
                fd = os.open(os.path.join(directory, name),
                             os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                fits = [(start, d) for _, start, d in old if start + len(d) <= st.st_size]
                if stat.S_ISREG(st.st_mode) and fits:
                    start, data = max(fits)
                    if os.pread(fd, len(data), start) == data:
                        return st.st_size
            except OSError:
                continue
            finally:
                os.close(fd)
        return None
