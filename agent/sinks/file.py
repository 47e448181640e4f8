"""Alerts appended as JSON lines to a file that logrotate may rotate under us.

- rename-and-create (logrotate's default): before each write the path is compared with the
  open file (device, inode); when it is another file, the path is opened again; when it is
  gone, the renamed file is still written for a few seconds (logrotate creates the new file
  with O_EXCL right after its rename) before the sink re-creates the path itself.
  Lines written between the rename and that check land in the rotated file, not lost.
- copytruncate: the file is opened with O_APPEND, so writes after the truncation start at
  the new end. Lines written after logrotate's copy but before its truncate would be lost;
  so when a truncation is seen (the file shrank below what we wrote), the lines written
  within ``copytruncate_grace`` seconds before it are written again. Repeats share their
  ``event.id``, which SIEMs deduplicate on.
- ``reopen()`` (SIGHUP) closes and reopens on the next send.

Created files get mode 0640; an existing file keeps the mode logrotate gave it.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Callable

import structlog

from agent.sinks.base import Record, SinkError

log = structlog.get_logger("minerwatch.alerts")

_RECENT_LINES = 2000  # bound on the lines kept for copytruncate recovery


_CREATE_GRACE_S = 5.0  # how long a renamed-away file is still written before the sink re-creates the path


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
        self._recent: collections.deque[tuple[float, bytes]] = collections.deque(maxlen=_RECENT_LINES)
        self._missing_since: float | None = None  # when the path was first seen renamed away
        self.rotations = 0  # renames and truncations seen
        self.rewritten = 0  # lines written again after a copytruncate

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
            end = os.lseek(self._fd, 0, os.SEEK_CUR)
            if end < before + len(data):  # truncated between our check and our write
                self.rotations += 1
                n = self._recover(self._clock() - self._grace)
                log.info("alert_file_rotated", path=self.path, how="truncated", rewritten=n)
                end = os.lseek(self._fd, 0, os.SEEK_CUR)
            self._end = end
            self._recent.append((self._clock(), data))
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
            n = self._recover(st.st_mtime - self._grace)
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

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def _recover(self, since: float) -> int:
        """Write again the recent lines written at or after ``since`` (wall clock)."""
        lines = [d for t, d in self._recent if t >= since]
        for data in lines:
            self._write(data)
        self.rewritten += len(lines)
        return len(lines)
