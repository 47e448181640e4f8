"""SHA-256, SHA-1 and MD5 of a file from one read, and a bounded cache of them.

Files are opened by the rules of ``agent.collectors.confined`` (regular files only, no
symlink followed, never out of a root); nothing more than ``max_bytes`` is read.
``/proc/PID/exe`` is the one link followed: the kernel resolves it to the very file the
process executes, also when that file was deleted or lives in a container.

Large files are hashed by two threads on the same buffers: the reading thread updates
SHA-256 and SHA-1 while a helper updates MD5 on the previous buffer (hashlib releases the
GIL for large updates). See ``bench/hash_throughput.py`` for the figures.
"""

from __future__ import annotations

import hashlib
import os
import queue
import stat
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import BinaryIO

from agent.collectors.confined import Refused, open_parent_beneath, open_regular
from agent.model import Hashes

CHUNK = 1 << 20  # bytes per read
PARALLEL_MIN = 4 << 20  # files at least this big are hashed by two threads
_BUFFERS = 3  # buffers in flight in the two-thread pipeline

SETTLE_NS = 1_000_000_000  # a file changed less than this long ago may change again within its timestamp tick

CacheKey = tuple[int, int, int, int, int]


class FileTooLarge(ValueError):
    """The file grew past the byte limit while it was being read."""


def cache_key(st: os.stat_result) -> CacheKey:
    """Identity of a file's content for caching: device, inode, size, mtime and ctime.

    ctime is included because mtime can be set back by anyone who can write the file;
    ctime cannot.
    """
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


_KEY = struct.Struct("<3Q2q")  # device, inode, size; mtime and ctime in ns (may be negative)
_SIZE = struct.Struct("<q")


def _packed(hashes: Hashes) -> bytes | Hashes:
    """Digests and size in 76 bytes (a Hashes with its three hex strings is ~450); odd ones kept as they are."""
    try:
        raw = bytes.fromhex(hashes.sha256 + hashes.sha1 + hashes.md5)
    except ValueError:
        return hashes
    if len(raw) != 68 or raw.hex() != hashes.sha256 + hashes.sha1 + hashes.md5:  # not lower-case hex of 32+20+16
        return hashes
    return raw + _SIZE.pack(hashes.size)


def _unpacked(value: bytes | Hashes) -> Hashes:
    if isinstance(value, Hashes):
        return value
    return Hashes(sha256=value[:32].hex(), sha1=value[32:52].hex(), md5=value[52:68].hex(),
                  size=_SIZE.unpack_from(value, 68)[0])


class HashCache:
    """Thread-safe, bounded LRU of ``cache_key -> Hashes`` with hit, miss and refusal counters.

    Entries are packed (the key in 40 bytes, digests and size in 76): about 250 bytes each instead of
    about 680, 5 MiB rather than 13 at the default 20,000 entries (every file of a first scan)."""

    def __init__(self, max_entries: int = 20_000, *, wall_ns: Callable[[], int] = time.time_ns) -> None:
        self._max = max_entries
        self.wall_ns = wall_ns
        self._data: OrderedDict[bytes, bytes | Hashes] = OrderedDict()
        # Files read and found not to be candidates (not executable, no ELF or script head), by the same
        # content identity: a walk does not open them again until their content, mode or ctime changes.
        self._plain: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.refused: dict[str, int] = {}

    def get(self, key: CacheKey, *, count_miss: bool = True) -> Hashes | None:
        packed = _KEY.pack(*key)
        with self._lock:
            value = self._data.get(packed)
            if value is None:
                self.misses += count_miss
                return None
            self.hits += 1
            self._data.move_to_end(packed)
        return _unpacked(value)

    def put(self, key: CacheKey, hashes: Hashes) -> None:
        packed, value = _KEY.pack(*key), _packed(hashes)
        with self._lock:
            self._data[packed] = value
            self._data.move_to_end(packed)
            while len(self._data) > self._max:
                self._data.popitem(last=False)

    def is_plain(self, st: os.stat_result) -> bool:
        """Whether the file with this stat (its content identity, ``cache_key``) was found not to be a candidate."""
        packed = _KEY.pack(*cache_key(st))
        with self._lock:
            if known := packed in self._plain:
                self._plain.move_to_end(packed)
            return known

    def note_plain(self, st: os.stat_result) -> None:
        """Remember that the file with this ``fstat`` (of the descriptor read) is not a candidate."""
        packed = _KEY.pack(*cache_key(st))
        with self._lock:
            self._plain[packed] = None
            self._plain.move_to_end(packed)
            while len(self._plain) > self._max:
                self._plain.popitem(last=False)

    def count_refused(self, reason: str) -> None:
        with self._lock:
            self.refused[reason] = self.refused.get(reason, 0) + 1

    def __contains__(self, key: CacheKey) -> bool:
        with self._lock:
            return _KEY.pack(*key) in self._data

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def stats(self) -> dict[str, int]:
        """Counters for metrics: entries, hits, misses and ``refused_<reason>``."""
        with self._lock:
            out = {"entries": len(self._data), "plain": len(self._plain), "hits": self.hits, "misses": self.misses}
            out.update({f"refused_{k}": v for k, v in self.refused.items()})
            return out


# --------------------------------------------------------------------------- hashing


def _readinto_of(src: BinaryIO | int) -> Callable[[bytearray | memoryview], int]:
    if isinstance(src, int):
        return lambda buf: os.readv(src, [buf])
    return src.readinto  # type: ignore[return-value]


def _hash_serial(readinto: Callable, limit: int | None, size_hint: int) -> Hashes:
    s256, s1, m5 = hashlib.sha256(), hashlib.sha1(), hashlib.md5()
    buf = bytearray(CHUNK if size_hint <= 0 else min(CHUNK, size_hint + 1))
    view = memoryview(buf)
    total = 0
    while True:
        n = readinto(buf)
        if not n:
            break
        total += n
        if limit is not None and total > limit:
            raise FileTooLarge(f"more than {limit} bytes")
        chunk = view[:n]
        s256.update(chunk)
        s1.update(chunk)
        m5.update(chunk)
    return Hashes(sha256=s256.hexdigest(), sha1=s1.hexdigest(), md5=m5.hexdigest(), size=total)


def _hash_parallel(readinto: Callable, limit: int | None) -> Hashes:
    """Reader thread: read + SHA-256 + SHA-1; helper thread: MD5 of the buffer just finished."""
    s256, s1, m5 = hashlib.sha256(), hashlib.sha1(), hashlib.md5()
    bufs = [bytearray(CHUNK) for _ in range(_BUFFERS)]
    free: queue.SimpleQueue[int] = queue.SimpleQueue()
    todo: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
    for i in range(_BUFFERS):
        free.put(i)

    def md5_worker() -> None:
        while (item := todo.get()) is not None:
            i, n = item
            m5.update(memoryview(bufs[i])[:n])
            free.put(i)

    helper = threading.Thread(target=md5_worker, name="md5-hash", daemon=True)
    helper.start()
    total = 0
    try:
        while True:
            i = free.get()
            n = readinto(bufs[i])
            if not n:
                break
            total += n
            if limit is not None and total > limit:
                raise FileTooLarge(f"more than {limit} bytes")
            chunk = memoryview(bufs[i])[:n]
            s256.update(chunk)
            s1.update(chunk)
            todo.put((i, n))
    finally:
        todo.put(None)
        helper.join()
    return Hashes(sha256=s256.hexdigest(), sha1=s1.hexdigest(), md5=m5.hexdigest(), size=total)


def hash_file(src: BinaryIO | int | str | os.PathLike, *, limit: int | None = None) -> Hashes:
    """SHA-256, SHA-1, MD5 and size of a file object, an open descriptor or a path, in one read.

    A path is opened with the same rules as ``hash_path`` minus the cache (regular files
    only, no blocking on FIFOs) and ``Refused`` is raised otherwise. A descriptor or file
    object is read from its current position to EOF. ``FileTooLarge`` is raised when more
    than ``limit`` bytes come out.
    """
    if isinstance(src, (str, bytes, os.PathLike)):
        fd = open_regular(src, follow_symlinks=True)
        try:
            return hash_file(fd, limit=limit)
        finally:
            os.close(fd)
    fileno = src if isinstance(src, int) else _fileno(src)
    size = -1
    if fileno is not None:
        st = os.fstat(fileno)
        if stat.S_ISREG(st.st_mode):
            size = st.st_size
    readinto = _readinto_of(src)
    if size >= PARALLEL_MIN:
        return _hash_parallel(readinto, limit)
    return _hash_serial(readinto, limit, size)


def _fileno(f: BinaryIO) -> int | None:
    try:
        return f.fileno()
    except (AttributeError, OSError, ValueError):  # BytesIO and friends have no descriptor
        return None


# --------------------------------------------------------------------------- hashing with policy


def hash_fd(fd: int, cache: HashCache, max_bytes: int) -> Hashes | None:
    """Hashes of the regular file open at ``fd`` (from its current position), cached by its identity."""
    before = os.fstat(fd)
    if before.st_size > max_bytes:
        cache.count_refused("too_large")
        return None
    key = cache_key(before)
    hashes = cache.get(key)
    if hashes is not None:
        return hashes
    try:
        hashes = hash_file(fd, limit=max_bytes)
    except FileTooLarge:
        cache.count_refused("too_large")
        return None
    # Cache only what was read from a file that did not change meanwhile and whose last change
    # is old enough that a further write could not reuse the same (coarse) timestamps.
    if cache_key(os.fstat(fd)) == key and hashes.size == before.st_size and \
            before.st_ctime_ns < cache.wall_ns() - SETTLE_NS:
        cache.put(key, hashes)
    return hashes


def hash_process_exe(proc_root, pid: int, cache: HashCache, max_bytes: int, *,
                     dir_fd: int | None = None) -> Hashes | None:
    """Hashes of the file a process executes, read through ``{proc_root}/{pid}/exe``.

    Works for deleted executables, memfd executables and container processes. Returns None
    when the file is not a regular file or is larger than ``max_bytes``. ``OSError``
    (``FileNotFoundError`` for kernel threads and vanished processes, ``PermissionError``)
    is left to the caller. With ``dir_fd`` (an open ``/proc/PID`` directory) the
    ``exe`` link is opened relative to it, which pins the process identity.
    """
    path = "exe" if dir_fd is not None else f"{os.fspath(proc_root)}/{pid}/exe"
    st = os.stat(path, dir_fd=dir_fd)  # the very file (a stat opens nothing): known already, not opened
    if stat.S_ISREG(st.st_mode) and (known := cache.get(cache_key(st), count_miss=False)) is not None:
        return known
    try:
        fd = open_regular(path, follow_symlinks=True, dir_fd=dir_fd)
    except Refused as e:
        cache.count_refused(e.reason)
        return None
    try:
        return hash_fd(fd, cache, max_bytes)
    finally:
        os.close(fd)


def hash_path(path: str | os.PathLike, cache: HashCache, max_bytes: int, *, root: str | None = None) -> Hashes | None:
    """Hashes of a regular file on disk, never following a symlink and never opening a special file.

    Returns None (and counts the reason in ``cache.refused``) for symlinks, FIFOs, sockets,
    devices, directories, files larger than ``max_bytes``, and, when ``root`` is given,
    paths whose resolved location is outside ``root``. ``OSError`` such as
    ``FileNotFoundError`` or ``PermissionError`` is left to the caller.
    """
    path = os.fspath(path)
    if root is not None:
        name = os.path.basename(path)
        if name in ("", ".", ".."):
            cache.count_refused("outside_root")
            return None
        try:
            dir_fd = open_parent_beneath(path, root)
        except Refused as e:
            cache.count_refused(e.reason)
            return None
        if dir_fd is None:
            cache.count_refused("outside_root")
            return None
        try:
            fd = open_regular(name, dir_fd=dir_fd)
        except Refused as e:
            cache.count_refused(e.reason)
            return None
        finally:
            os.close(dir_fd)
    else:
        try:
            fd = open_regular(path)
        except Refused as e:
            cache.count_refused(e.reason)
            return None
    try:
        return hash_fd(fd, cache, max_bytes)
    finally:
        os.close(fd)


def hash_buffer(data: bytes | bytearray | memoryview) -> Hashes:
    """SHA-256, SHA-1, MD5 and size of bytes already in memory, without copying them.

    Each digest takes the whole buffer in one ``update`` (not the constructor, which keeps the GIL
    in Python 3.11), so hashlib releases the GIL for all of it: another thread can YARA-scan or
    hash meanwhile.
    """
    digests = (hashlib.sha256(), hashlib.sha1(), hashlib.md5())
    with memoryview(data) as view:
        for h in digests:
            h.update(view)
        size = view.nbytes
    s256, s1, m5 = (h.hexdigest() for h in digests)
    return Hashes(sha256=s256, sha1=s1, md5=m5, size=size)
