"""Run the bundle's YARA rules over executables (by content) and over process memory.

Results are cached by SHA-256, so a binary shared by many processes is scanned once.
Files are read through an already-opened, verified descriptor by the caller's hashing
path rules: this module only ever opens ``/proc/PID/exe`` or a path it re-checks as a
regular file without following symlinks.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections import OrderedDict

import structlog
import yara

from agent.model import YaraHit

log = structlog.get_logger("minerwatch.yara")

_CACHE_MAX = 4096


def hits_from_matches(matches, source: str) -> tuple[YaraHit, ...]:
    """Translate yara-python match objects into YaraHit records using each rule's meta."""
    out = []
    for m in matches:
        meta = getattr(m, "meta", {}) or {}
        try:
            weight = int(meta.get("weight", 0))
        except (TypeError, ValueError):
            weight = 0
        out.append(
            YaraHit(
                rule=m.rule,
                namespace=getattr(m, "namespace", ""),
                source=source,
                category=str(meta.get("category", "miner")),
                weight=weight,
                description=str(meta.get("description", "")),
            )
        )
    return tuple(out)


def _read_regular(path: str, limit: int, *, follow: bool = False) -> bytes | None:
    """Read at most ``limit`` bytes of a regular file without opening a FIFO/device.

    A final symlink is never followed unless ``follow`` (only for ``/proc/PID/exe``, a magic link).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    if not follow:
        flags |= os.O_NOFOLLOW
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class YaraScanner:
    """Owns the compiled rules in use and a bounded verdict cache keyed by SHA-256."""

    def __init__(self, rules, max_bytes: int = 128 << 20, timeout: int = 10) -> None:
        self.rules = rules
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._cache: OrderedDict[str, tuple[YaraHit, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self.scanned = 0
        self.errors = 0

    def scan_process_exe(self, proc_root: str, pid: int, sha256: str | None) -> tuple[YaraHit, ...]:
        """YARA hits for a process's executable, read through the ``/proc/PID/exe`` magic link."""
        return self.scan_file(f"{proc_root}/{pid}/exe", sha256, follow=True)

    def scan_file(self, path: str, sha256: str | None, *, follow: bool = False) -> tuple[YaraHit, ...]:
        """YARA hits for the regular file at ``path``; the verdict is cached by SHA-256.

        The cache key is checked against the bytes actually scanned, so a file rewritten between
        hashing and scanning cannot store a clean verdict under a miner's hash.
        """
        if self.rules is None:
            return ()
        if sha256:
            with self._lock:
                if sha256 in self._cache:
                    self._cache.move_to_end(sha256)
                    return self._cache[sha256]
        try:
            data = _read_regular(path, self.max_bytes, follow=follow)
            if data is None:
                return ()
            hits = hits_from_matches(self.rules.match(data=data, timeout=self.timeout), "file")
            if sha256 and hashlib.sha256(data).hexdigest() != sha256:
                sha256 = None  # changed since it was hashed (or larger than max_bytes): do not cache
        except (OSError, yara.Error) as exc:  # a vanished file, a timeout: count, never raise
            self.errors += 1
            log.debug("yara_file_failed", path=path, error=str(exc))
            return ()
        self.scanned += 1
        if sha256:
            with self._lock:
                self._cache[sha256] = hits
                while len(self._cache) > _CACHE_MAX:
                    self._cache.popitem(last=False)
        return hits

    def scan_memory(self, pid: int) -> tuple[YaraHit, ...]:
        """YARA hits over a live process's memory (for candidates only: it is costly)."""
        if self.rules is None:
            return ()
        try:
            return hits_from_matches(self.rules.match(pid=pid, timeout=self.timeout), "memory")
        except yara.Error as exc:  # the process vanished or its memory is unreadable
            self.errors += 1
            log.debug("yara_memory_failed", pid=pid, error=str(exc))
            return ()
