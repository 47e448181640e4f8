"""Hashing: one read for three digests, the cache, and the rules for what may be opened."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import threading
import time

import pytest

from agent.collectors import confined, hashing
from agent.collectors.confined import Refused, open_beneath
from agent.collectors.hashing import (
    HashCache,
    cache_key,
    hash_file,
    hash_path,
    hash_process_exe,
)
from agent.model import Hashes


def settled_cache(**kw) -> HashCache:
    """A cache whose clock runs 10 s ahead, so files written by the test count as settled."""
    return HashCache(wall_ns=lambda: time.time_ns() + 10_000_000_000, **kw)


def expected(data: bytes) -> Hashes:
    return Hashes(hashlib.sha256(data).hexdigest(), hashlib.sha1(data).hexdigest(), hashlib.md5(data).hexdigest(),
                  len(data))


def call_with_timeout(fn, timeout: float = 5.0):
    """Run fn in a daemon thread; fail (instead of hanging the suite) if it blocks."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed back to the test thread
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "call blocked: a special file was opened"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture
def procs():
    """Start processes that are killed and reaped however the test ends."""
    started: list[subprocess.Popen] = []

    def start(*args, **kw):
        p = subprocess.Popen(*args, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


@pytest.mark.parametrize("size", [0, 1, 4095, hashing.CHUNK, hashing.CHUNK + 7, hashing.PARALLEL_MIN + 12345])
def test_hash_file_matches_hashlib(tmp_path, size):
    """Digests and size equal hashlib's for empty, small, chunk-sized and two-thread-sized files."""
    data = os.urandom(size)
    p = tmp_path / "f"
    p.write_bytes(data)
    assert hash_file(p) == expected(data)
    with open(p, "rb") as f:
        assert hash_file(f) == expected(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert hash_file(fd) == expected(data)
    finally:
        os.close(fd)


def test_hash_file_object_without_descriptor():
    """A file object without a descriptor (BytesIO) is hashed too."""
    data = os.urandom(3 << 20)
    assert hash_file(io.BytesIO(data)) == expected(data)


def test_hash_file_limit(tmp_path):
    """Reading past the limit raises FileTooLarge, in both the serial and the two-thread path."""
    for size in (1000, hashing.PARALLEL_MIN + 1):
        p = tmp_path / f"f{size}"
        p.write_bytes(b"x" * size)
        with pytest.raises(hashing.FileTooLarge):
            hash_file(p, limit=size - 1)
        assert hash_file(p, limit=size).size == size
    assert threading.active_count() == 1 or all(t.name != "md5-hash" for t in threading.enumerate())


def test_cache_hits_on_second_call(tmp_path):
    """The second hash of an unchanged file is a cache hit and gives the same digests."""
    p = tmp_path / "bin"
    p.write_bytes(b"\x7fELF" + os.urandom(5000))
    cache = settled_cache()
    first = hash_path(p, cache, 1 << 20)
    assert (cache.hits, cache.misses) == (0, 1)
    second = hash_path(p, cache, 1 << 20)
    assert second == first == expected(p.read_bytes())
    assert (cache.hits, cache.misses) == (1, 1)


def test_fresh_file_is_not_cached(tmp_path):
    """A file changed within the last second is hashed but not cached (its timestamps may not move again)."""
    p = tmp_path / "new"
    p.write_bytes(b"payload")
    cache = HashCache()
    assert hash_path(p, cache, 100) == expected(b"payload")
    assert len(cache) == 0
    assert hash_path(p, cache, 100) == expected(b"payload") and cache.hits == 0


def test_cache_misses_after_rewrite(tmp_path):
    """Rewriting a file (new size or mtime) misses the cache and yields the new digests."""
    p = tmp_path / "bin"
    p.write_bytes(b"one")
    cache = HashCache()
    hash_path(p, cache, 100)
    p.write_bytes(b"two!")
    assert hash_path(p, cache, 100) == expected(b"two!")
    assert cache.misses == 2


def test_cache_is_bounded_lru():
    """The cache keeps at most max_entries, evicting the least recently used."""
    cache = HashCache(max_entries=2)
    h = expected(b"")
    cache.put((1, 1, 0, 0, 0), h)
    cache.put((1, 2, 0, 0, 0), h)
    assert cache.get((1, 1, 0, 0, 0)) == h  # 1 is now most recent (an equal Hashes: entries are packed)
    cache.put((1, 3, 0, 0, 0), h)
    assert len(cache) == 2
    assert cache.get((1, 2, 0, 0, 0)) is None
    assert cache.get((1, 1, 0, 0, 0)) == h


def test_cache_is_thread_safe(tmp_path):
    """Many threads hashing the same files concurrently agree and the counters add up."""
    files = []
    for i in range(8):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(20000 + i))
        files.append(p)
    cache = settled_cache(max_entries=4)
    errors = []

    def work():
        for _ in range(20):
            for p in files:
                if hash_path(p, cache, 1 << 20) != expected(p.read_bytes()):
                    errors.append(p)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert cache.hits + cache.misses == 6 * 20 * 8
    assert len(cache) <= 4


def test_hash_path_refuses_fifo_without_opening_it(tmp_path):
    """A FIFO with no writer is refused at once (opening it for reading would block)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cache = HashCache()
    started = time.monotonic()
    assert call_with_timeout(lambda: hash_path(fifo, cache, 1 << 20)) is None
    assert time.monotonic() - started < 2
    assert cache.refused == {"not_regular": 1}


def test_hash_path_refuses_devices_sockets_and_directories(tmp_path):
    """Character devices, directories and sockets are refused, never read."""
    import socket

    cache = HashCache()
    sock_path = tmp_path / "s"
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(sock_path))
        for p in ("/dev/zero", "/dev/null", str(tmp_path), str(sock_path)):
            assert call_with_timeout(lambda p=p: hash_path(p, cache, 1 << 20)) is None
    finally:
        s.close()
    assert cache.refused["not_regular"] == 4


def test_hash_process_exe_refuses_fifo(tmp_path):
    """The open helper used for /proc/PID/exe refuses a FIFO even when asked to follow links."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(Refused):
        call_with_timeout(lambda: confined.open_regular(str(fifo), follow_symlinks=True))


def test_a_known_executable_is_not_opened_again(tmp_path, procs):
    """Hashes and YARA verdict of a process's executable come from the caches by a stat of /proc/PID/exe
    while its identity is the same: the file is not opened again. A new version (ctime) is read."""
    from agent.collectors.yarascan import YaraScanner
    from agent.signatures import load_bundle
    from tests.helpers.openspy import OpenSpy

    exe = tmp_path / "sleeper"
    shutil.copy2(shutil.which("sleep"), exe)
    cache, yara = settled_cache(), YaraScanner(load_bundle(None).yara)
    p = procs([str(exe), "30"])
    for _ in range(100):
        if os.readlink(f"/proc/{p.pid}/exe") == str(exe):
            break
        time.sleep(0.02)
    first = hash_process_exe("/proc", p.pid, cache, 64 << 20)
    verdict = yara.scan_process_file("/proc", p.pid)
    assert first == expected(exe.read_bytes()) and verdict == ((), True)
    with OpenSpy(exe) as spy:
        assert hash_process_exe("/proc", p.pid, cache, 64 << 20) == first
        assert yara.scan_process_file("/proc", p.pid) == verdict
        assert not spy.opened(), "a known executable was read again"
    assert cache.hits == 1 and cache.misses == 1
    os.chmod(exe, 0o700)  # ctime moves: another identity
    with OpenSpy(exe) as spy:
        assert hash_process_exe("/proc", p.pid, cache, 64 << 20) == first
        assert spy.opened()


def test_hash_path_refuses_symlink(tmp_path):
    """A symlink, even to a good regular file, is not followed."""
    target = tmp_path / "real"
    target.write_bytes(b"data")
    link = tmp_path / "link"
    link.symlink_to(target)
    cache = HashCache()
    assert hash_path(link, cache, 100) is None
    assert cache.refused == {"symlink": 1}
    assert hash_path(target, cache, 100) == expected(b"data")


def test_hash_path_refuses_escape_from_root(tmp_path):
    """With a root, paths through symlinked directories or '..' that lead outside it are refused."""
    root = tmp_path / "layer"
    (root / "tmp").mkdir(parents=True)
    outside = tmp_path / "host"
    outside.mkdir()
    (outside / "secret").write_bytes(b"host file")
    (root / "tmp" / "ok").write_bytes(b"inside")
    (root / "etc").symlink_to(outside)  # absolute symlink out of the layer
    (root / "rel").symlink_to("../host")  # relative symlink out of the layer
    cache = HashCache()
    assert hash_path(root / "etc" / "secret", cache, 100, root=str(root)) is None
    assert hash_path(root / "rel" / "secret", cache, 100, root=str(root)) is None
    assert hash_path(f"{root}/tmp/../../host/secret", cache, 100, root=str(root)) is None
    assert cache.refused == {"outside_root": 3}
    assert hash_path(root / "tmp" / "ok", cache, 100, root=str(root)) == expected(b"inside")


def test_hash_path_too_large(tmp_path):
    """A file over max_bytes is skipped without reading and counted."""
    p = tmp_path / "big"
    p.write_bytes(b"x" * 1000)
    cache = HashCache()
    assert hash_path(p, cache, 999) is None
    assert cache.refused == {"too_large": 1}
    assert cache.misses == 0


def test_hash_path_missing_file_raises(tmp_path):
    """A missing file is an OSError for the caller to translate, not a silent None."""
    with pytest.raises(FileNotFoundError):
        hash_path(tmp_path / "nope", HashCache(), 100)


def test_open_beneath_refuses_symlinks_and_dotdot(tmp_path):
    """open_beneath walks component by component and refuses any symlink or '..'."""
    root = tmp_path / "root"
    (root / "app").mkdir(parents=True)
    (root / "app" / "config.json").write_text("{}")
    (root / "link").symlink_to(root / "app")
    fd = open_beneath(str(root), "/app/config.json")
    os.close(fd)
    for rel in ("/link/config.json", "app/../app/config.json", "/app"):
        with pytest.raises(Refused):
            open_beneath(str(root), rel)


def test_process_exe_hash_matches_file(tmp_path, procs):
    """hash_process_exe of a running copy of sleep equals hashlib of the file, and caches by its inode."""
    exe = tmp_path / "sleeper"
    shutil.copy2(shutil.which("sleep"), exe)
    p = procs([str(exe), "60"])
    cache = settled_cache()
    h = hash_process_exe("/proc", p.pid, cache, 64 << 20)
    assert h == expected(exe.read_bytes())
    assert hash_process_exe("/proc", p.pid, cache, 64 << 20) == h
    assert cache.hits == 1
    assert cache_key(os.stat(exe)) in cache


def test_process_exe_hash_after_delete(tmp_path, procs):
    """A process whose executable was deleted after start still hashes to the original content."""
    exe = tmp_path / "gone"
    shutil.copy2(shutil.which("sleep"), exe)
    data = exe.read_bytes()
    p = procs([str(exe), "60"])
    deadline = time.monotonic() + 5
    while os.readlink(f"/proc/{p.pid}/exe") != str(exe) and time.monotonic() < deadline:
        time.sleep(0.01)
    exe.unlink()
    assert hash_process_exe("/proc", p.pid, HashCache(), 64 << 20) == expected(data)


def test_process_exe_of_vanished_process_raises(procs):
    """A PID that no longer exists raises FileNotFoundError for the collector to count."""
    p = procs(["true"])
    p.wait()
    with pytest.raises(FileNotFoundError):
        hash_process_exe("/proc", p.pid, HashCache(), 1 << 20)


def test_the_cache_gives_back_exactly_what_was_put_in_a_third_of_the_memory(tmp_path):
    """Entries are packed: the same Hashes come back (also odd ones: upper-case or non-hex digests, a
    64-bit inode, times before 1970), and 10,000 entries cost under 350 bytes each (about 680 unpacked)."""
    import tracemalloc

    from agent.collectors.hashing import HashCache, hash_file
    from agent.model import Hashes

    f = tmp_path / "f"
    f.write_bytes(b"minerwatch" * 1000)
    cache = HashCache()
    real = hash_file(str(f))
    odd = [Hashes(sha256="ABC", sha1="x" * 40, md5="0" * 32, size=1),
           Hashes(sha256="A" * 64, sha1="b" * 40, md5="c" * 32, size=0)]
    keys = [cache_key(os.stat(f)), (2**64 - 1, 2**64 - 2, 2**40, -5, -(2**62)), (1, 2, 3, 4, 5)]
    for key, hashes in zip(keys, [real, *odd]):
        cache.put(key, hashes)
    for key, hashes in zip(keys, [real, *odd]):
        assert cache.get(key) == hashes and key in cache
    assert cache.get((9, 9, 9, 9, 9)) is None

    big = HashCache()
    tracemalloc.start()
    try:
        for i in range(10_000):
            big.put((2049, 10**6 + i, 10**5 + i, 1_700_000_000 * 10**9 + i, 1_700_000_000 * 10**9 + i),
                    Hashes(sha256=f"{i:064x}", sha1=f"{i:040x}", md5=f"{i:032x}", size=10**5 + i))
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert used / 10_000 < 350, used / 10_000
