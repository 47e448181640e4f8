"""``minerwatch scan PATH...``: every regular file under the paths, hashed and YARA-scanned, scripts and
config files read as text.

Opening follows the sweep's rules (``agent.collectors.confined``): a path given on the command line
is opened without following a symlink as its last component; directories are walked descriptor by
descriptor (``files.walk_at``: never into a symlink, never out of the tree); each file is opened once
by ``confined.open_regular`` relative to its directory, so a FIFO or a device is never opened, and
its bytes, hashes, YARA hits and text all come from that one descriptor.

Every regular file is read once, up to ``max_bytes`` (``[watch] max_file_mb``), into its worker's
buffer (one per worker, grown to the largest file it has read, at most ``max_bytes + 1``, reused: no
copy, no allocation per file): SHA-256, SHA-1 and MD5 (``hashing.hash_buffer``) and YARA read that same
memory, and its first ``MAX_TEXT_BYTES`` become ``FileSnapshot.text`` when it is a script or config
file (``text_of``, tried only when the first bytes hold no NUL and no ELF header).
A larger file gets no hashes, YARA on its first ``max_bytes``, and ``partial=("hashes",)``.
Two worker threads share the files, and the GIL is released for the read, each digest and YARA, so both
cores work; a file of ``SPLIT_MIN`` or more offers its YARA scan to the other worker while it hashes
(the last files, or one big file, then take half the time). The walking thread opens the files and
hands over the descriptors, at most ``2 * workers`` at a time. ``bench/scan.py`` has the figures.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import yara

from agent.collectors.confined import DIR_FLAGS, Refused, open_regular
from agent.collectors.files import ELF_MAGIC, walk_at
from agent.collectors.hashing import hash_buffer
from agent.collectors.yarascan import hits_from_matches
from agent.model import FileSnapshot

MAX_TEXT_BYTES = 64 << 10  # of a script or config file, read as text
MAX_DEPTH = 64
MAX_FILES = 10_000_000
_YARA_TIMEOUT_S = 60
_SNIFF = 512  # first bytes looked at for every file (magic, script, NUL)
SPLIT_MIN = 4 << 20  # files this big offer their YARA scan to the other worker (the last file, one big file)
_GROW = 1 << 20  # worker buffers grow by whole MiBs
# Names that say "config or script" whatever the content looks like (scan-image reads only these and #! files).
TEXT_SUFFIXES = (".json", ".jsonc", ".toml", ".yaml", ".yml", ".ini", ".conf", ".cfg", ".sh", ".bash", ".env",
                 ".properties", ".service", ".py", ".pl")
_CONTROL = bytes(c for c in range(32) if c not in (9, 10, 12, 13)) + b"\x7f"


def text_of(name: str, data: bytes | bytearray | memoryview, *, by_name: bool = False) -> str:
    """The first ``MAX_TEXT_BYTES`` of a script or config file as text, "" for anything else.

    A script starts with ``#!``; a config file has a config name (``TEXT_SUFFIXES``) or, unless
    ``by_name``, looks like text: valid UTF-8 without NUL and almost no control characters. An ELF
    file is never text.
    """
    head = bytes(data[:MAX_TEXT_BYTES])
    if not head or head.startswith(ELF_MAGIC) or b"\0" in head:
        return ""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(head) < MAX_TEXT_BYTES or exc.start < len(head) - 3:  # not only a character cut at the end
            return ""
        text = head[:exc.start].decode("utf-8")
    if head.startswith(b"#!") or name.lower().endswith(TEXT_SUFFIXES):
        return text
    if by_name:
        return ""
    controls = sum(head.count(c) for c in _CONTROL)
    return text if controls * 100 <= len(head) else ""


@dataclass
class PathScanStats:
    files: int = 0  # regular files examined
    bytes_read: int = 0
    partial: int = 0  # files not hashed whole (too large) or not YARA-scanned whole
    errors: int = 0  # files that vanished or could not be read
    refused: Counter = field(default_factory=Counter)  # top-level paths refused: symlink, not_regular, missing
    cpu_ns: Counter = field(default_factory=Counter)  # worker CPU time per stage: read, hash, yara, text
    notes: list[str] = field(default_factory=list)


class PathScanner:
    """Examines files: ``scan(paths)`` yields a FileSnapshot (hashes, YARA hits, text) for each regular file."""

    def __init__(self, rules, *, max_bytes: int = 128 << 20, workers: int = 2) -> None:
        self.rules, self.max_bytes, self.workers = rules, max_bytes, max(1, workers)
        self.stats = PathScanStats()
        self._local = threading.local()  # each worker's read buffer, freed with the worker threads

    def scan(self, paths: Iterable[str], progress: Callable[[PathScanStats], None] | None = None
             ) -> Iterator[FileSnapshot]:
        inflight: deque[Future] = deque()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="scan") as pool:
            self._pool = pool
            try:
                for fd, path in self._opened(paths):
                    inflight.append(pool.submit(self._examine, fd, path))
                    while inflight and (inflight[0].done() or len(inflight) > 2 * self.workers):
                        if (snap := self._settle(inflight.popleft(), progress)) is not None:
                            yield snap
                while inflight:
                    if (snap := self._settle(inflight.popleft(), progress)) is not None:
                        yield snap
            finally:  # the consumer stopped early: let the workers finish and close their descriptors
                for fut in inflight:
                    fut.result()

    # ------------------------------------------------------------------ internals

    def _settle(self, fut: Future, progress) -> FileSnapshot | None:
        """The worker's snapshot, counted here (one thread keeps the stats)."""
        snap, read, error, cpu = fut.result()
        for stage, ns in zip(("read", "hash", "yara", "text"), cpu):
            self.stats.cpu_ns[stage] += ns
        if error is not None:
            self._error(*error)
        elif snap is not None:
            self.stats.files += 1
            self.stats.bytes_read += read
            self.stats.partial += bool(snap.partial)
        if progress is not None:
            progress(self.stats)
        return snap

    def _opened(self, paths: Iterable[str]) -> Iterator[tuple[int, str]]:
        """(descriptor, path) of every regular file under ``paths``; the worker closes the descriptor."""
        for top in paths:
            try:
                st = os.lstat(top)
            except OSError as exc:
                self.stats.refused["missing"] += 1
                self.stats.notes.append(f"{top}: {exc.strerror or exc}")
                continue
            if stat.S_ISDIR(st.st_mode):
                for dir_fd, name, path, _ in walk_at(top, MAX_DEPTH, MAX_FILES):
                    if (fd := self._open(name, dir_fd, path)) is not None:
                        yield fd, path
            elif stat.S_ISREG(st.st_mode):
                if (fd := self._open_top(top)) is not None:
                    yield fd, top
            else:
                kind = "symlink" if stat.S_ISLNK(st.st_mode) else "not_regular"
                self.stats.refused[kind] += 1
                self.stats.notes.append(f"{top}: not scanned ({'a symlink, never followed' if kind == 'symlink' else 'not a regular file'})")

    def _open_top(self, path: str) -> int | None:
        try:
            parent = os.open(os.path.dirname(os.path.abspath(path)) or "/", DIR_FLAGS)
        except OSError as exc:
            return self._error(path, exc)
        try:
            return self._open(os.path.basename(path), parent, path)
        finally:
            os.close(parent)

    def _open(self, name: str, dir_fd: int, path: str) -> int | None:
        try:
            return open_regular(name, dir_fd=dir_fd)
        except Refused:  # swapped for a symlink or a special file since the walk saw it: never opened
            self.stats.refused["changed"] += 1
            return None
        except OSError as exc:
            return self._error(path, exc)

    def _error(self, path: str, exc: OSError) -> None:
        self.stats.errors += 1
        if len(self.stats.notes) < 50:
            self.stats.notes.append(f"{path}: {exc.strerror or exc}")
        return None

    def _examine(self, fd: int, path: str) -> tuple[FileSnapshot | None, int, tuple[str, OSError] | None, tuple]:
        """Read the file open at ``fd`` once (bounded) into this worker's buffer and make its snapshot:
        (snapshot, bytes read, (path, error) when it could not be read, CPU ns per stage); closes ``fd``.
        Runs on a worker thread; the GIL is released for the read, each digest and YARA."""
        t0 = time.thread_time_ns()
        try:
            st = os.fstat(fd)
            want = min(st.st_size, self.max_bytes) + 1  # one byte more than allowed tells "larger"
            buf = self._buffer(want)
            got = _read_into(fd, buf, want)
        except OSError as exc:
            return None, 0, (path, exc), ()
        finally:
            os.close(fd)
        t1 = time.thread_time_ns()
        whole = got <= self.max_bytes
        partial: tuple[str, ...] = () if whole else ("hashes",)
        size = min(got, self.max_bytes)
        with memoryview(buf) as view, view[:size] as data:
            scan = _Shared(lambda: self._yara(data))
            if self.workers > 1 and size >= SPLIT_MIN:  # the other worker may take YARA while this one hashes
                self._pool.submit(scan.run)
            hashes = hash_buffer(data) if whole else None
            t2 = time.thread_time_ns()
            hits, failed = scan.join()  # run here unless the other worker has it (then wait for it)
            if failed:  # a timeout or a scan limit: unknown, not clean
                partial = (*partial, "yara")
            t3 = time.thread_time_ns()
            head = bytes(data[:_SNIFF])
            # text_of is bounded (MAX_TEXT_BYTES); the first bytes already rule out most binaries
            text = text_of(os.path.basename(path), data) if _may_be_text(head) else ""
            snap = FileSnapshot(path=path, size=st.st_size, mode=st.st_mode, hashes=hashes,
                                is_elf=head[:4] == ELF_MAGIC, is_script=head[:2] == b"#!", head=head[:16],
                                partial=partial, yara=hits, text=text)
        return snap, size, None, (t1 - t0, t2 - t1, t3 - t2 + scan.cpu_ns, time.thread_time_ns() - t3)

    def _yara(self, data: memoryview) -> tuple[tuple, bool]:
        """(hits, failed) of YARA over ``data``; failed is a timeout or a scan limit."""
        if self.rules is None or not data:
            return (), False
        try:
            return hits_from_matches(self.rules.match(data=data, timeout=_YARA_TIMEOUT_S), "file"), False
        except yara.Error:
            return (), True

    def _buffer(self, n: int) -> bytearray:
        """This worker's read buffer, at least ``n`` bytes: grown (whole MiBs, at most ``max_bytes + 1``) to
        the largest file it has read, and reused for every file after (no allocation, no page faults)."""
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) < n:
            self._local.buf = None  # the old one goes first
            buf = self._local.buf = bytearray(min(-(-n // _GROW) * _GROW, self.max_bytes + 1))
        return buf


class _Shared:
    """One part of a file's work that either worker may do: the owner offers it to the pool, does the
    rest, then ``join``s: it runs the part itself unless the other worker has claimed it (then waits).
    The owner's buffer stays untouched until ``join`` returns."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self._claim, self._done = fn, threading.Lock(), threading.Event()
        self.result = self.error = None
        self.cpu_ns = 0  # on the other worker, when it ran there

    def run(self) -> bool:
        """Run it if nobody has yet: True when this call did."""
        if not self._claim.acquire(blocking=False):
            return False
        started = time.thread_time_ns()
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the owner by join
            self.error = exc
        finally:
            self.cpu_ns = time.thread_time_ns() - started
            self._done.set()
        return True

    def join(self):
        if self.run():
            self.cpu_ns = 0  # counted in the owner's own time
        else:
            self._done.wait()
        if self.error is not None:
            raise self.error
        return self.result


def _may_be_text(head: bytes) -> bool:
    """False when the first bytes already say ``text_of`` would return "" (a NUL, an ELF header, empty)."""
    return bool(head) and b"\0" not in head and not head.startswith(ELF_MAGIC)


def _read_into(fd: int, buf: bytearray, n: int) -> int:
    """Read at most ``n`` bytes from ``fd``'s current position (fewer at EOF) into the start of ``buf``."""
    got = 0
    with memoryview(buf) as view:
        while got < n:
            with view[got:n] as rest:
                k = os.readv(fd, [rest])
            if not k:
                break
            got += k
    return got
