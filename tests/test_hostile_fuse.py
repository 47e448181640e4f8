"""Issue 12, "Hanging the worker": a busy process maps a file from a FUSE mount whose READ never answers.

The FUSE server is a few lines here (no libfuse): it opens ``/dev/fuse``, mounts it with
``fd=N,rootmode=40000,user_id=0,group_id=0`` (no ``allow_other``), answers INIT, LOOKUP,
GETATTR, OPEN and friends, and never answers READ. A process maps the one file it serves
(``PROT_READ|PROT_EXEC``, never touching it) and burns CPU. Reading that mapping through
``/proc/PID/mem`` waits for the server forever.

* By default the memory scan skips the mapping (its file system is FUSE, by mountinfo): the
  scan completes, the skip is counted, the server never sees a READ.
* With the file system check switched off, the helper process that reads does block: it is
  killed at the deadline, the timeout is counted, the process is not scanned again, and the
  scanner goes on with the next process.

Each scan runs in a thread joined with a generous bound, so a hang fails the test instead of
blocking it (the assertions are on counts, not on times). Cleanup aborts the FUSE connection,
unmounts (``umount -l``) and kills every process, also when the test fails.
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct
import subprocess
import sys
import threading

import pytest

from agent.collectors.yarascan import MemoryLimits, YaraScanner
from agent.signatures import load_bundle

HANG_GUARD_S = 90.0  # far above any deadline used here: only a hang reaches it
_libc = ctypes.CDLL(None, use_errno=True)

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="needs root and /dev/fuse")

LOOKUP, FORGET, GETATTR, OPEN, READ, STATFS, RELEASE, FLUSH, INIT = 1, 2, 3, 14, 15, 17, 18, 25, 26
OPENDIR, RELEASEDIR, ACCESS, INTERRUPT, BATCH_FORGET = 27, 29, 34, 36, 42
NO_REPLY = {FORGET, BATCH_FORGET, INTERRUPT}
FILE_NODE, FILE_SIZE = 2, 1 << 20


def _attr(node: int) -> bytes:
    mode, size = (0o40755, 0) if node == 1 else (0o100755, FILE_SIZE)
    return struct.pack("<QQQQQQIIIIIIIIII", node, size, (size + 511) // 512, 0, 0, 0, 0, 0, 0, mode, 1, 0, 0,
                       0, 4096, 0)


class SilentFuse(threading.Thread):
    """Serves ``/blob`` and never answers a READ (counted in ``reads``)."""

    def __init__(self, mountpoint: str) -> None:
        super().__init__(daemon=True, name="silent-fuse")
        self.mountpoint, self.reads, self.released = mountpoint, 0, False
        self._unanswered: list[int] = []
        self._lock = threading.Lock()
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        opts = f"fd={self.fd},rootmode=40000,user_id=0,group_id=0".encode()
        if _libc.mount(b"silentfuse", mountpoint.encode(), b"fuse", 2 | 4, opts) != 0:  # MS_NOSUID|MS_NODEV
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, os.strerror(err), mountpoint)
        self.mounted = True

    def _reply(self, unique: int, body: bytes = b"", error: int = 0) -> None:
        os.write(self.fd, struct.pack("<IiQ", 16 + len(body), -error, unique) + body)

    def run(self) -> None:
        while True:
            try:
                msg = os.read(self.fd, (1 << 20) + 4096)
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.ENOENT):  # ENOENT: a request interrupted before we read it
                    continue
                return  # ENODEV: the connection was aborted or unmounted
            _, opcode, unique, node = struct.unpack_from("<IIQQ", msg)
            body = msg[40:]
            try:
                self._answer(opcode, unique, node, body)
            except OSError:  # ENOENT: the kernel gave up on that request meanwhile
                pass

    def _answer(self, opcode: int, unique: int, node: int, body: bytes) -> None:
        if opcode in NO_REPLY:
            return
        if opcode == INIT:
            major, minor, readahead = struct.unpack_from("<III", body)
            self._reply(unique, struct.pack("<IIIIHHIIHHII6I", 7, 31, readahead, 0, 16, 12, 65536, 1, 32, 0, 0,
                                            0, *([0] * 6)))
        elif opcode == LOOKUP:
            if node == 1 and body.rstrip(b"\0") == b"blob":
                self._reply(unique, struct.pack("<QQQQII", FILE_NODE, 0, 60, 60, 0, 0) + _attr(FILE_NODE))
            else:
                self._reply(unique, error=errno.ENOENT)
        elif opcode == GETATTR:
            self._reply(unique, struct.pack("<QII", 60, 0, 0) + _attr(node))
        elif opcode in (OPEN, OPENDIR):
            self._reply(unique, struct.pack("<QII", 1, 0, 0))
        elif opcode in (RELEASE, RELEASEDIR, FLUSH, ACCESS):
            self._reply(unique)
        elif opcode == STATFS:
            self._reply(unique, struct.pack("<QQQQQIIII6I", 0, 0, 0, 0, 0, 4096, 255, 4096, 0, *([0] * 6)))
        elif opcode == READ:
            with self._lock:
                self.reads += 1
                if not self.released:
                    self._unanswered.append(unique)  # never answered (until release)
                    return
            self._reply(unique, error=errno.EIO)
        else:
            self._reply(unique, error=errno.ENOSYS)

    def release(self) -> None:
        """Answer every READ kept waiting, and all later ones, with EIO: whoever waited is let go."""
        with self._lock:
            self.released, waiting, self._unanswered = True, self._unanswered, []
        for unique in waiting:
            try:
                self._reply(unique, error=errno.EIO)
            except OSError:  # the kernel gave up on it already
                pass

    def abort(self) -> None:
        """Release the waiting READs, unmount lazily, close the device (once; after the mapping process died)."""
        if self.fd < 0:
            return
        self.release()
        if self.mounted:
            subprocess.run(["umount", "-l", self.mountpoint], check=False)
            self.mounted = False
        self.join(10)
        os.close(self.fd)
        self.fd = -1


BUSY = ("import mmap, sys\n"
        "f = open(sys.argv[1], 'rb')\n"
        "m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_EXEC)\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    pass\n")


@pytest.fixture
def fuse_mapped(tmp_path):
    """(server, pid of a busy process mapping a file of the silent FUSE mount); all undone afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    server = SilentFuse(str(mnt))
    busy = None
    try:
        server.start()
        busy = subprocess.Popen([sys.executable, "-c", BUSY, str(mnt / "blob")], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        assert busy.stdout.readline() == b"ready\n"
        yield server, busy.pid
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
            busy.stdout.close()
        server.abort()


def bounded(fn):
    """Run ``fn`` in a thread; a hang fails the test (the thread stays behind, blocked) instead of blocking it."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(HANG_GUARD_S)
    assert not t.is_alive(), "the memory scan hung"
    return out[0]


@pytest.fixture(scope="module")
def rules():
    return load_bundle().yara


def test_fuse_mapping_is_skipped_by_its_file_system(rules, fuse_mapped):
    server, pid = fuse_mapped
    scanner = YaraScanner(rules)
    assert bounded(lambda: scanner.scan_memory(pid)) == ()
    stats = scanner.memory_stats()
    assert stats["scans"] == 1 and stats["errors"] == 0 and stats["timeouts"] == 0
    assert stats["regions_unsafe_fs"] >= 1 and stats["bytes"] > 0  # the rest of the process was read
    assert server.reads == 0


def test_a_read_that_never_returns_times_out_and_the_scanner_goes_on(rules, fuse_mapped):
    server, pid = fuse_mapped
    scanner = YaraScanner(rules, memory_limits=MemoryLimits(deadline_s=3.0, unsafe_fs=()))  # no fs check
    try:
        assert bounded(lambda: scanner.scan_memory(pid)) == ()
        stats = scanner.memory_stats()
        assert stats["timeouts"] == 1 and stats["scans"] == 0, stats
        assert server.reads >= 1  # the helper really was stuck in the FUSE read
        assert bounded(lambda: scanner.scan_memory(pid)) == ()  # not tried again
        assert scanner.memory_stats()["skipped_timed_out"] == 1
        other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        try:
            bounded(lambda: scanner.scan_memory(other.pid))
        finally:
            other.kill()
            other.wait()
        assert scanner.memory_stats()["scans"] == 1  # the next process is scanned as usual
        stuck = list(scanner._stuck)  # killed helpers the kernel kept in the FUSE wait
    finally:
        server.release()  # the waiting READ fails: a helper the kernel kept in it dies of its SIGKILL
    for helper in stuck:
        assert helper.wait(HANG_GUARD_S) == -9
