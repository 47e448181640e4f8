"""Run the bundle's YARA rules over executables (by content) and over process memory.

Results are cached by SHA-256, so a binary shared by many processes is scanned once.
Files are read through an already-opened, verified descriptor by the caller's hashing
path rules: this module only ever opens ``/proc/PID/exe`` or a path it re-checks as a
regular file without following symlinks.

Process memory is read region by region through ``/proc/PID/mem`` (which needs ptrace
access: root with CAP_SYS_PTRACE), never all of it: the mappings that hold a program's
strings (its executable's segments, heap, stack, small anonymous mappings) come first, a
mapping larger than ``MemoryLimits.region_bytes`` (a RandomX dataset or cache, a big
buffer: data, not strings) gives only its head, and one scan reads at most
``MemoryLimits.total_bytes``. The regions are joined, zero-separated, into one buffer that
is matched once with the external ``mw_memory_scan`` set, so "N of them" counts strings
across regions as a whole-process scan would.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import structlog
import yara

from agent.collectors.confined import Refused, open_regular
from agent.collectors.hashing import cache_key
from agent.collectors.procread import parse_stat, read_once
from agent.model import YaraHit
from agent.signatures import YARA_MEMORY_EXTERNAL

log = structlog.get_logger("minerwatch.yara")

_CACHE_MAX = 4096
YARA_FILE_BYTES = 32 << 20  # the most of one file the agent reads into memory for YARA


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


def _read_head(fd: int, limit: int) -> bytes:
    chunks, left = [], limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


@dataclass(frozen=True, slots=True)
class MemoryLimits:
    """How much of a process's memory one scan may read."""

    region_bytes: int = 64 << 20  # a mapping up to this size is read whole (a larger exe/heap: this much)
    head_bytes: int = 1 << 20  # of any other larger mapping only this head is read
    total_bytes: int = 256 << 20  # all regions of one scan together


@dataclass(frozen=True, slots=True)
class _Region:
    start: int
    length: int  # bytes to read from start (already capped)
    rank: int  # 0 is read first


_PAGE = os.sysconf("SC_PAGE_SIZE")
_GAP = 16  # zero bytes before each region, so a string never spans two regions
_CHUNK = 4 << 20
_MAX_BAD_PAGES = 64  # unreadable pages in one region before the rest of it is given up
_SKIP_NAMES = ("[vvar", "[vsyscall]", "[vdso]", "[uprobes]")
# Read-only mappings of these files are the installed packages' bytes: not read.
_SYSTEM_DIRS = ("/lib/", "/lib32/", "/lib64/", "/usr/lib/", "/usr/lib32/", "/usr/lib64/", "/usr/share/")


def _rank(perms: str, path: str, exe: str | None) -> int | None:
    """Reading order of one mapping, or None to skip it (unreadable, shared, kernel, device, system)."""
    if perms[0] != "r" or perms[3] != "p" or path.startswith(_SKIP_NAMES):
        return None
    if exe is not None and path == exe:
        return 0
    if path == "[heap]":
        return 1
    if not path or path.startswith(("[stack", "[anon")):
        return 2
    if path.startswith("/dev/") and not path.startswith("/dev/zero"):
        return None
    if perms[1] == "w":
        return 3  # a library's data segment, a private writable file mapping
    return None if path.startswith(_SYSTEM_DIRS) else 4


def plan_regions(maps: str, exe: str | None, limits: MemoryLimits) -> tuple[list[_Region], int, int]:
    """Choose what to read from a ``/proc/PID/maps`` text: (regions, skipped, truncated).

    ``exe`` is the ``/proc/PID/exe`` link text: mappings of that path are the program itself.
    """
    candidates, skipped = [], 0
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            continue
        start, _, end = fields[0].partition("-")
        lo, hi = int(start, 16), int(end, 16)
        rank = _rank(fields[1], fields[5] if len(fields) > 5 else "", exe)
        if rank is None or hi >= 1 << 63:
            skipped += fields[1][0] == "r"
            continue
        candidates.append((rank, hi - lo, lo))
    regions, truncated, left = [], 0, limits.total_bytes
    for rank, size, lo in sorted(candidates):
        # The program's own segments and its heap hold its strings: read up to region_bytes of
        # them; of any other large mapping (a dataset, a cache, a buffer) only the head.
        length = size if size <= limits.region_bytes else limits.region_bytes if rank <= 1 else limits.head_bytes
        length = min(length, left)
        if length <= 0:
            skipped += 1
            continue
        truncated += length < size
        regions.append(_Region(lo, length, rank))
        left -= length
    return regions, skipped, truncated


def _read_region(fd: int, view: memoryview, address: int) -> tuple[int, int]:
    """Fill ``view`` from ``address`` of an open ``/proc/PID/mem``: (bytes read, unreadable pages).

    An unreadable page (EIO/EFAULT: a hole, a guard page, a file mapping past its end) stays
    zero and reading goes on past it; a process that has exited reads as empty.
    """
    done = got_total = bad = 0
    while done < len(view) and bad <= _MAX_BAD_PAGES:
        try:
            got = os.preadv(fd, [view[done:done + _CHUNK]], address + done)
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.EFAULT):
                raise
            bad += 1
            done += _PAGE - (address + done) % _PAGE
            continue
        if got == 0:
            break
        done += got
        got_total += got
    return got_total, bad


class _Vanished(OSError):
    """The PID now names another process (or none)."""


class YaraScanner:
    """Owns the compiled rules in use and a bounded verdict cache keyed by SHA-256."""

    def __init__(self, rules, max_bytes: int = 128 << 20, timeout: int = 10, *,
                 proc_root: str = "/proc", memory_limits: MemoryLimits | None = None) -> None:
        self.rules = rules
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.proc_root = proc_root
        self.memory_limits = memory_limits or MemoryLimits()
        self._cache: OrderedDict[str, tuple[YaraHit, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self.scanned = 0
        self.errors = 0
        self._memory = dict.fromkeys(
            ("scans", "bytes", "regions", "regions_skipped", "regions_truncated", "unreadable_pages", "errors"), 0)

    def scan_process_exe(self, proc_root: str, pid: int) -> tuple[YaraHit, ...]:
        """YARA hits for a process's executable, read through the ``/proc/PID/exe`` magic link."""
        return self.scan_file(f"{proc_root}/{pid}/exe", follow=True)

    def scan_file(self, path: str, *, follow: bool = False) -> tuple[YaraHit, ...]:
        """YARA hits for the regular file at ``path`` (at most its first ``max_bytes``).

        The verdict is cached by the identity of the file actually read (device, inode, size,
        mtime, ctime of the open descriptor), like the hash cache, and only when the file did
        not change while it was read. The bytes are read into memory, never memory-mapped: a
        file truncated under an mmap would kill the agent with SIGBUS.
        """
        if self.rules is None:
            return ()
        try:
            fd = open_regular(path, follow_symlinks=follow)  # stat first: a device or FIFO is never opened
            try:
                key = cache_key(os.fstat(fd))
                with self._lock:
                    if key in self._cache:
                        self._cache.move_to_end(key)
                        return self._cache[key]
                data = _read_head(fd, self.max_bytes)
                hits = hits_from_matches(self.rules.match(data=data, timeout=self.timeout), "file") if data else ()
                unchanged = cache_key(os.fstat(fd)) == key
            finally:
                os.close(fd)
        except Refused:  # a symlink or a special file: not ours to read
            return ()
        except (OSError, yara.Error) as exc:  # a vanished file, a timeout: count, never raise
            self.errors += 1
            log.debug("yara_file_failed", path=path, error=str(exc))
            return ()
        self.scanned += 1
        if unchanged:
            with self._lock:
                self._cache[key] = hits
                while len(self._cache) > _CACHE_MAX:
                    self._cache.popitem(last=False)
        return hits

    def scan_memory(self, pid: int) -> tuple[YaraHit, ...]:
        """YARA hits over the string-bearing regions of a live process's memory, bounded by
        ``memory_limits`` (for candidates only). Never raises: a vanished process, denied
        access or a YARA error counts an error and gives ()."""
        if self.rules is None:
            return ()
        try:
            data, counts = self._read_memory(pid)
            hits = hits_from_matches(
                self.rules.match(data=data, externals={YARA_MEMORY_EXTERNAL: True}, timeout=self.timeout), "memory")
        except (OSError, ValueError, IndexError, yara.Error) as exc:  # gone, denied, odd /proc text, timeout
            with self._lock:
                self.errors += 1
                self._memory["errors"] += 1
            log.debug("yara_memory_failed", pid=pid, error=str(exc))
            return ()
        with self._lock:
            self._memory["scans"] += 1
            for key, value in counts.items():
                self._memory[key] += value
        return hits

    def memory_stats(self) -> dict[str, int]:
        """Counters of the memory scans so far (scans, bytes, regions read/skipped/truncated, errors)."""
        with self._lock:
            return dict(self._memory)

    def _read_memory(self, pid: int) -> tuple[bytearray, dict[str, int]]:
        """The chosen regions of ``pid``'s memory joined into one buffer, and what it took."""
        base = f"{self.proc_root}/{pid}"
        born = parse_stat(read_once(f"{base}/stat")).start_ticks  # with the PID, names one process for its lifetime
        fd = os.open(f"{base}/mem", os.O_RDONLY | os.O_CLOEXEC)
        try:
            with open(f"{base}/maps", encoding="utf-8", errors="surrogateescape") as f:
                maps = f.read()
            try:
                exe = os.readlink(f"{base}/exe")
            except OSError:  # a kernel thread or a zombie: no executable to recognise
                exe = None
            if parse_stat(read_once(f"{base}/stat")).start_ticks != born:
                raise _Vanished(errno.ESRCH, f"pid {pid} was reused")
            # fd and maps belong to the process born at ``born``; the mem fd keeps reading
            # that process's memory (or nothing, once it exits) whatever the PID names later.
            regions, skipped, truncated = plan_regions(maps, exe, self.memory_limits)
            data = bytearray(sum(_GAP + r.length for r in regions))
            view, at, read, bad = memoryview(data), 0, 0, 0
            for region in regions:
                at += _GAP
                got, unreadable = _read_region(fd, view[at:at + region.length], region.start)
                at += region.length
                read, bad = read + got, bad + unreadable
        finally:
            os.close(fd)
        return data, {"bytes": read, "regions": len(regions), "regions_skipped": skipped,
                      "regions_truncated": truncated, "unreadable_pages": bad}
