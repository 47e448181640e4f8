"""Issue 12, "Opening devices": no FIFO or device is ever opened, whatever is swapped in between.

A racer thread keeps exchanging (``renameat2(RENAME_EXCHANGE)``) a regular file with a FIFO,
a character device (``/dev/null``'s numbers: harmless) or a symlink to the FIFO, and a
directory on the path with a symlink to a directory of such nodes (standing for ``/dev``),
while the sweep's walker (``files.scan_paths``), the hashing (``hash_path``, with and without
a root), ``read_head``, ``open_regular`` and the miner-config reader open it, 10,000 times.

Observed, not timed: an inotify watch with ``IN_OPEN`` on the FIFO and the device inodes
(through hard links that never move) reports every open of them (an ``O_PATH`` open is not
one), and a thread keeps trying ``open(fifo, O_WRONLY|O_NONBLOCK)``, which succeeds only
while someone has the read side open. Both must never fire.
"""
from __future__ import annotations

import ctypes
import os
import stat
import struct
import threading

import pytest

from agent.collectors import files, minerconfig
from agent.collectors.confined import Refused, open_regular
from agent.collectors.hashing import HashCache, hash_path

TRIES = 10_000
RENAME_EXCHANGE = 2
IN_OPEN = 0x20
_libc = ctypes.CDLL(None, use_errno=True)


def exchange(a: str, b: str) -> None:
    if _libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), a)


class OpenWatch:
    """Counts IN_OPEN events on some inodes (any name they are opened by)."""

    def __init__(self, paths: list[str]) -> None:
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0
        for p in paths:
            assert _libc.inotify_add_watch(self.fd, os.fsencode(p), IN_OPEN) >= 0

    def opens(self) -> int:
        n = 0
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return n
            at = 0
            while at < len(buf):
                _, mask, _, length = struct.unpack_from("iIII", buf, at)
                n += bool(mask & IN_OPEN)
                at += 16 + length

    def close(self) -> None:
        os.close(self.fd)


class Racer(threading.Thread):
    """Exchanges each (a, b) pair in turn until stopped."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        super().__init__(daemon=True)
        self.pairs, self.stop, self.swaps = pairs, threading.Event(), 0

    def run(self) -> None:
        while not self.stop.is_set():
            for a, b in self.pairs:
                exchange(a, b)
                exchange(a, b)  # back: every pair spends half its time swapped
                self.swaps += 1


class FifoWriter(threading.Thread):
    """Succeeds in opening the FIFO for writing only while a reader has it open."""

    def __init__(self, fifo: str) -> None:
        super().__init__(daemon=True)
        self.fifo, self.stop, self.opened, self.tries = fifo, threading.Event(), 0, 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.tries += 1
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:  # ENXIO: nobody reads it
                continue
            self.opened += 1
            os.close(fd)


@pytest.fixture
def arena(tmp_path):
    """walked/victim (a regular file) and its swap partners; nodes/ holds stable hard links to the specials."""
    nodes, walked, devdir = tmp_path / "nodes", tmp_path / "walked", tmp_path / "walked" / "sub"
    nodes.mkdir()
    devdir.mkdir(parents=True)
    fifo, dev = str(nodes / "fifo"), str(nodes / "null")
    os.mkfifo(fifo)
    os.mknod(dev, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    victim = walked / "victim"
    victim.write_bytes(b"#!/bin/sh\necho payload\n")
    victim.chmod(0o755)
    (devdir / "cfg.json").write_text('{"pools": [{"url": "pool.example:3333"}]}')
    os.link(fifo, walked / "fifo")  # swap partners: the very inodes of nodes/fifo and nodes/null
    os.link(dev, walked / "dev")
    os.symlink(fifo, walked / "to_fifo")
    # /dev stand-in: a directory of specials with the names the readers look for
    fake_dev = tmp_path / "fakedev"
    fake_dev.mkdir()
    os.link(fifo, fake_dev / "victim")
    os.link(dev, fake_dev / "cfg.json")
    os.symlink(fake_dev, walked / "to_dev")
    return tmp_path, fifo, dev


def test_no_fifo_or_device_is_opened_across_10000_swaps(arena):
    tmp_path, fifo, dev = arena
    walked = str(tmp_path / "walked")
    victim, sub = f"{walked}/victim", f"{walked}/sub"
    racer = Racer([(victim, f"{walked}/fifo"), (victim, f"{walked}/dev"), (victim, f"{walked}/to_fifo"),
                   (sub, f"{walked}/to_dev")])
    writer = FifoWriter(fifo)
    watch = OpenWatch([fifo, dev])
    cache = HashCache(wall_ns=lambda: 0)  # nothing is ever cached: every try really opens
    read, refused = 0, 0

    def sub_fd() -> int:
        return os.open(sub, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # follows to_dev when swapped: on purpose

    openers = [
        lambda: list(files.scan_paths([walked], cache, 1 << 20)),
        lambda: hash_path(victim, cache, 1 << 20),
        lambda: hash_path(f"{sub}/cfg.json", cache, 1 << 20),  # a component may be the symlink to fakedev
        lambda: hash_path(victim, cache, 1 << 20, root=walked),
        lambda: files.read_head(victim),
        lambda: os.close(open_regular(victim)),
    ]
    racer.start()
    writer.start()
    try:
        for i in range(TRIES):
            try:
                got = openers[i % len(openers)]()
                read += got is not None
            except Refused:
                refused += 1
            except OSError:  # a name that was mid-swap (ENOENT): fine
                pass
            fd = None
            try:
                fd = sub_fd()
                minerconfig.read_regular(fd, "cfg.json", 1 << 16)
                read += 1
            except Refused:
                refused += 1
            except OSError:
                pass
            finally:
                if fd is not None:
                    os.close(fd)
    finally:
        racer.stop.set()
        writer.stop.set()
        racer.join()
        writer.join()
    opens = watch.opens()
    watch.close()
    assert racer.swaps > 0 and writer.tries > 0
    refused += sum(v for k, v in cache.stats().items() if k.startswith("refused_"))
    assert read > 0 and refused > 0, "the race never showed both sides: the test proved nothing"
    assert opens == 0, f"a FIFO or device was opened {opens} times"
    assert writer.opened == 0, "someone held the FIFO's read side open"
    specials = {(st.st_dev, st.st_ino) for st in map(os.stat, (fifo, dev))}
    assert not [n for n in _open_fds() if n in specials], "a FIFO or device descriptor was left open"


def _open_fds() -> list[tuple[int, int]]:
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own descriptor, gone by now
            continue
        out.append((st.st_dev, st.st_ino))
    return out


def test_walk_never_enters_a_directory_swapped_for_a_symlink(tmp_path):
    """The sweep's walk re-resolves nothing: a directory that is a symlink to / when reached is not entered."""
    top = tmp_path / "top"
    (top / "d").mkdir(parents=True)
    os.symlink("/", top / "link")
    (top / "d" / "x").write_bytes(b"#!/bin/sh\n")
    seen = [p for p, _ in files.walk(str(top))]
    assert seen == [str(top / "d" / "x")]
    exchange(str(top / "d"), str(top / "link"))  # now d -> /, and link is the real directory
    seen = [p for p, _ in files.walk(str(top))]
    assert seen == [str(top / "link" / "x")]
