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

A memory scan never blocks the worker: the plan, the reads and the match happen in a helper
process (``agent.collectors.memread --yara``, handed the rules in use as ``Rules.save`` bytes),
which skips mappings on FUSE and network file systems and device mappings, and is killed when
it misses ``MemoryLimits.deadline_s``: counted (``memory_stats()["timeouts"]``), logged, and that
process is not memory-scanned again. The joined buffer (up to ``total_bytes``) is only ever in
the helper: the daemon gets the matches (rule, meta, offsets), so its peak does not grow with it.

Why this module is long: file and memory scans share the rules, the verdict cache, the counters
and their lock, and the helper's output is read here, under its deadline.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import errno
import io
import json
import os
import selectors
import stat
import subprocess
import threading
import time
from collections import OrderedDict

import structlog
import yara

from agent.collectors import memread
from agent.collectors.confined import Refused, open_regular
from agent.collectors.hashing import cache_key
from agent.collectors.memread import MemoryLimits, plan_regions  # noqa: F401  (plan_regions: re-exported)
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


_MAX_INSTANCES = 64  # per matched string, when telling where a memory hit lies
_WEAK_ORDER = ("heap", "data", "stack")  # ties among data kinds: the first


def region_of(match, layout) -> str:
    """Where a memory match lies (``memread.KINDS``): "code" (or "anon-exec") when at least half of its
    distinct matched strings have an instance there (a miner's strings are in its image, and are often
    copied into its heap too), else the data kind most of them lie in. Rule text or an IOC feed held by
    a scanner is in its heap and data only; a string or two that also sit in some code do not make it code.

    ``layout`` is the helper's ``[[length, kind], ...]`` in buffer order, each region after ``GAP``
    zero bytes. "" when the offsets are unknown (an older helper, a rule that matched on no string)."""
    if not layout:
        return ""
    ends, kinds, at = [], [], 0
    for length, kind in layout:
        at += memread.GAP + int(length)
        ends.append(at)
        kinds.append(str(kind))
    votes: dict[str, int] = {}
    strings = 0
    for s in getattr(match, "strings", ()) or ():
        seen = set()
        for inst in list(getattr(s, "instances", ()))[:_MAX_INSTANCES]:
            i = bisect.bisect_right(ends, inst.offset)
            if i < len(kinds):
                seen.add(kinds[i])
        strings += bool(seen)
        for kind in seen:
            votes[kind] = votes.get(kind, 0) + 1
    if not strings:
        return ""
    best_exec = max(("code", "anon-exec"), key=lambda k: votes.get(k, 0))
    if 2 * votes.get(best_exec, 0) >= strings:
        return best_exec
    rest = {k: v for k, v in votes.items() if k not in ("code", "anon-exec")}
    return max(rest, key=lambda k: (rest[k], -_WEAK_ORDER.index(k) if k in _WEAK_ORDER else -9)) if rest else best_exec


def _read_head(fd: int, limit: int, size: int) -> memoryview:
    """At most ``limit`` bytes from ``fd``, read into one buffer of the file's ``size`` (capped at ``limit``):
    the file's bytes are in memory once, never as chunks and their join (which doubled the first scan's peak
    for every executable of 32 MiB or more). A file that grew meanwhile is read on, up to ``limit``."""
    buf = bytearray(min(max(size, 0), limit))
    view, at = memoryview(buf), 0
    while at < len(buf):
        n = os.readv(fd, [view[at:]])
        if not n:
            return view[:at]
        at += n
    if at < limit and (more := os.read(fd, min(limit - at, 1 << 16))):  # it grew since the fstat
        view.release()
        buf += more
        while len(buf) < limit and (more := os.read(fd, min(limit - len(buf), 1 << 20))):
            buf += more
        return memoryview(buf)
    return view


# One big file head in memory at a time, whichever scanner (the worker's, the bulk lane's) reads it: two
# 32 MiB heads at once were the first scan's peak. A reader waits at most BIG_READ_WAIT_S, then reads anyway
# (the exec path never waits longer than that for the bulk lane).
BIG_READ_BYTES = 16 << 20
BIG_READ_WAIT_S = 1.0
_BIG_READS = threading.Semaphore(1)
BIG_READ_STATS = {"waited": 0, "gave_up": 0}


@contextlib.contextmanager
def _big_read(size: int):
    if size < BIG_READ_BYTES:
        yield
        return
    held = _BIG_READS.acquire(blocking=False)
    if not held:
        BIG_READ_STATS["waited"] += 1
        held = _BIG_READS.acquire(timeout=BIG_READ_WAIT_S)
        BIG_READ_STATS["gave_up"] += not held
    try:
        yield
    finally:
        if held:
            _BIG_READS.release()


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
        self._cache: OrderedDict[tuple, tuple[tuple[YaraHit, ...], bool]] = OrderedDict()  # -> (hits, whole file read)
        self._lock = threading.Lock()
        self.scanned = 0
        self.errors = 0
        self._memory = dict.fromkeys(
            ("scans", "bytes", "regions", "regions_skipped", "regions_truncated", "regions_unsafe_fs",
             "regions_device", "unreadable_pages", "errors", "timeouts", "skipped_timed_out", "skipped_stuck"), 0)
        self._stuck: list[subprocess.Popen] = []  # killed helpers the kernel has not let go yet
        self._timed_out: OrderedDict[tuple[int, int], None] = OrderedDict()  # (pid, start ticks)
        self._saved: tuple[object, bytes] = (None, b"")  # (rules, their Rules.save bytes) for the helper

    def scan_process_exe(self, proc_root: str, pid: int) -> tuple[YaraHit, ...]:
        """YARA hits for a process's executable, read through the ``/proc/PID/exe`` magic link."""
        return self.scan_file(f"{proc_root}/{pid}/exe", follow=True)

    def scan_process_file(self, proc_root: str, pid: int, link: str = "exe") -> tuple[tuple[YaraHit, ...], bool]:
        """``(hits, whole)`` for a file a process runs, through a magic link of ``/proc/PID`` (``exe``, or
        ``map_files/lo-hi`` for the program behind a loader); ``whole`` is False when only its first
        ``max_bytes`` were scanned (a file of any size gets YARA over its head) or it could not be read."""
        return self.scan_file_head(f"{proc_root}/{pid}/{link}", follow=True)

    def scan_file(self, path: str, *, follow: bool = False) -> tuple[YaraHit, ...]:
        """YARA hits for the regular file at ``path`` (at most its first ``max_bytes``)."""
        return self.scan_file_head(path, follow=follow)[0]

    def scan_file_head(self, path: str, *, follow: bool = False) -> tuple[tuple[YaraHit, ...], bool]:
        """``(hits, whole)``: YARA hits for the regular file at ``path`` over at most its first ``max_bytes``,
        and whether that was the whole file.

        The verdict is cached by the identity of the file actually read (device, inode, size,
        mtime, ctime of the open descriptor), like the hash cache, and only when the file did
        not change while it was read. The bytes are read into memory, never memory-mapped: a
        file truncated under an mmap would kill the agent with SIGBUS.
        """
        if self.rules is None:
            return (), True
        try:
            st = os.stat(path, follow_symlinks=follow)  # a verdict known for this identity: not opened again
            if stat.S_ISREG(st.st_mode):
                key = cache_key(st)
                with self._lock:
                    if (known := self._cache.get(key)) is not None:
                        self._cache.move_to_end(key)
                        return known
        except OSError:
            pass  # the open below tells what it is
        try:
            fd = open_regular(path, follow_symlinks=follow)  # stat first: a device or FIFO is never opened
            try:
                st = os.fstat(fd)
                key = cache_key(st)
                with self._lock:
                    if key in self._cache:
                        self._cache.move_to_end(key)
                        return self._cache[key]
                with _big_read(min(st.st_size, self.max_bytes)), _read_head(fd, self.max_bytes, st.st_size) as data:
                    hits = hits_from_matches(self.rules.match(data=data, timeout=self.timeout), "file") if data else ()
                whole = st.st_size <= self.max_bytes
                unchanged = cache_key(os.fstat(fd)) == key
            finally:
                os.close(fd)
        except Refused:  # a symlink or a special file: not ours to read
            return (), True
        except (OSError, yara.Error) as exc:  # a vanished file, a timeout: count, never raise
            self.errors += 1
            log.debug("yara_file_failed", path=path, error=str(exc))
            return (), False
        self.scanned += 1
        if unchanged:
            with self._lock:
                self._cache[key] = (hits, whole)
                while len(self._cache) > _CACHE_MAX:
                    self._cache.popitem(last=False)
        return hits, whole

    def scan_memory(self, pid: int) -> tuple[YaraHit, ...]:
        """YARA hits over the string-bearing regions of a live process's memory, bounded by
        ``memory_limits`` (for candidates only). Never raises: a vanished process, denied
        access or a YARA error counts an error and gives ()."""
        if self.rules is None:
            return ()
        try:
            found, counts = self._read_memory(pid)
            layout = counts.pop("layout", [])
            matches = [_HelperMatch(m) for m in found]
            hits = tuple(dataclasses.replace(hit, region=region_of(m, layout))
                         for hit, m in zip(hits_from_matches(matches, "memory"), matches))
        except _Skipped as exc:  # counted where it happened; the worker goes on
            log.debug("yara_memory_skipped", pid=pid, reason=str(exc))
            return ()
        except (OSError, ValueError, IndexError, KeyError, yara.Error) as exc:  # gone, denied, odd text, timeout
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

    def _saved_rules(self) -> bytes:
        """The rules in use as ``Rules.save`` bytes (what the memory-scan helper loads), made once per rules."""
        with self._lock:
            if self._saved[0] is not self.rules:
                buf = io.BytesIO()
                self.rules.save(file=buf)
                self._saved = (self.rules, buf.getvalue())
            return self._saved[1]

    def _read_memory(self, pid: int) -> tuple[list[dict], dict[str, int]]:
        """YARA matches over the chosen regions of ``pid``'s memory (as the helper's JSON), and what it took.

        Read and matched by a helper process (``memread --yara``, given our rules on stdin) under
        ``memory_limits.deadline_s``, so the joined regions (up to ``total_bytes``) are never in the
        daemon's memory: one that does not finish in time is killed, counted (``timeouts``) and logged,
        and that process is not scanned again; a helper the kernel will not let die yet is reaped later.
        """
        born = parse_stat(read_once(f"{self.proc_root}/{pid}/stat")).start_ticks
        with self._lock:
            self._stuck = [p for p in self._stuck if p.poll() is None]
            stuck, timed_out = len(self._stuck), (pid, born) in self._timed_out
        if timed_out or stuck >= MAX_STUCK_HELPERS:
            with self._lock:
                self._memory["skipped_timed_out" if timed_out else "skipped_stuck"] += 1
            raise _Skipped(errno.EBUSY, "timed out before" if timed_out else f"{stuck} helpers still stuck")
        limits = self.memory_limits
        argv = memread.helper_argv([self.proc_root, str(pid), str(limits.region_bytes),
                                    str(limits.head_bytes), str(limits.total_bytes), ",".join(limits.unsafe_fs),
                                    "--yara", os.path.dirname(yara.__file__), YARA_MEMORY_EXTERNAL, str(self.timeout)])
        saved = self._saved_rules()
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                close_fds=True)
        try:
            out = _collect(proc, limits.deadline_s, saved)
        except TimeoutError:
            proc.kill()
            try:
                proc.wait(KILL_WAIT_S)
            except subprocess.TimeoutExpired:  # in an uninterruptible wait: reaped by a later scan
                with self._lock:
                    self._stuck.append(proc)
            with self._lock:
                self._memory["timeouts"] += 1
                self._timed_out[(pid, born)] = None
                while len(self._timed_out) > _CACHE_MAX:
                    self._timed_out.popitem(last=False)
            log.warning("yara_memory_timeout", pid=pid, deadline_s=limits.deadline_s,
                        reaped=proc.returncode is not None)
            raise _Skipped(errno.ETIMEDOUT, f"memory of pid {pid} not read within {limits.deadline_s} s") from None
        finally:
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                pipe.close()
        return out


MAX_STUCK_HELPERS = 4  # killed helpers not reaped yet; past this, memory scans wait (counted)
KILL_WAIT_S = 1.0


class _Skipped(OSError):
    """The memory scan was not done (timed out now or before, too many stuck helpers): counted apart."""


class _HelperMatch:
    """A match as the helper wrote it, with the attributes ``hits_from_matches`` and ``region_of`` read."""

    class _At:
        __slots__ = ("offset",)

        def __init__(self, offset: int) -> None:
            self.offset = offset

    class _String:
        __slots__ = ("instances",)

        def __init__(self, offsets) -> None:
            self.instances = [_HelperMatch._At(int(o)) for o in offsets]

    def __init__(self, found: dict) -> None:
        self.rule = str(found["rule"])
        self.namespace = str(found.get("namespace", ""))
        self.meta = dict(found.get("meta") or {})
        self.strings = [self._String(offsets) for offsets in found.get("strings", ())]


def _collect(proc: subprocess.Popen, deadline_s: float, rules: bytes) -> tuple[list[dict], dict[str, int]]:
    """Write ``rules`` to a ``memread --yara`` helper and read its three lines (header, matches, trailer),
    all within ``deadline_s``; ``TimeoutError`` past it. Its output is small: counts, the layout, the matches."""
    end = time.monotonic() + deadline_s
    out_fd, err_fd, in_fd = proc.stdout.fileno(), proc.stderr.fileno(), proc.stdin.fileno()
    out, err, open_fds = bytearray(), bytearray(), {out_fd, err_fd}
    os.set_blocking(in_fd, False)
    pending = memoryview(rules)
    with selectors.DefaultSelector() as sel:
        for fd in open_fds:
            sel.register(fd, selectors.EVENT_READ)
        sel.register(in_fd, selectors.EVENT_WRITE)
        while open_fds:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError
            for key, _ in sel.select(left):
                if key.fd == in_fd:  # the rules, read first thing by the helper
                    try:
                        pending = pending[os.write(in_fd, pending):]
                    except BrokenPipeError:  # it died already: its stderr says why
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(in_fd)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 1 << 16)
                if key.fd == err_fd:
                    err += chunk[:4096 - len(err)]
                elif len(out) < _HELPER_OUTPUT_MAX:
                    out += chunk
                if not chunk:
                    sel.unregister(key.fd)
                    open_fds.discard(key.fd)
        code = proc.wait(max(end - time.monotonic(), 0.001))  # output ended: it is exiting
    lines = bytes(out).split(b"\n")
    if code != 0 or len(lines) < 4:
        num, _, msg = err.decode("utf-8", "replace").partition(":")
        err_no = int(num) if num.isdigit() else errno.EIO
        raise _Vanished(err_no, msg.strip()) if code == 3 else OSError(err_no, msg.strip() or f"memread exit {code}")
    counts = {k: v for k, v in json.loads(lines[0]).items() if k != "size"}
    counts.update(json.loads(lines[2]))
    return json.loads(lines[1]), counts


_HELPER_OUTPUT_MAX = 16 << 20  # of JSON from one helper (a rule matching everywhere: 64 offsets a string)
