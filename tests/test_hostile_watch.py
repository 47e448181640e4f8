"""Issue 12, "Escaping the watch": a directory of a layer swapped for a symlink out of it.

A real directory poses as a container's writable layer; beside it, a "host" tree stands for
``/`` (the real ``/`` is not used: the code before the fix would walk and watch all of it).
A racer keeps exchanging (``renameat2(RENAME_EXCHANGE)``) the layer's ``sub`` directory with
a symlink to the host tree while the watcher re-adds and refreshes the layer and new
directories appear inside ``sub``; meanwhile files are written in the host tree.

What the kernel says is watched is read from ``/proc/self/fdinfo/<inotify fd>`` (every
watch's inode and device): each must be a directory of the layer, none of the host tree,
and no host write may arrive as an event of the layer. The caps are checked the same way.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys

from agent.collectors.fswatch import FileWatcher
from agent.events import EventQueue

RENAME_EXCHANGE = 2
ROUNDS = 100
# The container's side, in its own process: swap the two names as fast as it can until killed.
RACER = ("import ctypes, os, sys\n"
         "libc = ctypes.CDLL(None, use_errno=True)\n"
         "a, b = os.fsencode(sys.argv[1]), os.fsencode(sys.argv[2])\n"
         "assert libc.renameat2(-100, a, -100, b, 2) == 0\n"
         "print('racing', flush=True)\n"
         "while True:\n"
         "    libc.renameat2(-100, a, -100, b, 2)\n")
_libc = ctypes.CDLL(None, use_errno=True)


def exchange(a: str, b: str) -> None:
    if _libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), a)


def inotify_fds() -> set[int]:
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:inotify":
                out.add(int(name))
        except OSError:
            continue
    return out


def watched(fds: set[int]) -> set[tuple[int, int]]:
    """(kernel s_dev, inode) of every watch of these inotify descriptors, as the kernel lists them."""
    out = set()
    for fd in fds:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("inotify wd:"):
                    fields = dict(part.split(":", 1) for part in line.split()[1:4])
                    out.add((int(fields["sdev"], 16), int(fields["ino"], 16)))
    return out


def kdev(st: os.stat_result) -> tuple[int, int]:
    return ((os.major(st.st_dev) << 20) | os.minor(st.st_dev), st.st_ino)


def dirs_under(top: str) -> set[tuple[int, int]]:
    out = {kdev(os.stat(top))}
    for root, dirnames, _ in os.walk(top):  # never follows a symlink
        out.update(kdev(os.lstat(os.path.join(root, d))) for d in dirnames
                   if not os.path.islink(os.path.join(root, d)))
    return out


def drain(events: EventQueue, most: int = 5000) -> list:
    """Up to ``most`` queued events (the racer's renames keep adding some: the symlink moved into place)."""
    got = []
    while len(got) < most and (ev := events.get(timeout=0.01)) is not None:
        got.append(ev)
    return got


def test_swapping_a_layer_directory_for_a_symlink_never_watches_outside(tmp_path):
    layer, host = tmp_path / "layer", tmp_path / "host"
    for d in ("sub/a/b", "keep"):
        (layer / d).mkdir(parents=True)
    for d in ("etc", "var/lib", "home/user"):
        (host / d).mkdir(parents=True)
    os.symlink(host, layer / "link")
    sub_fd = os.open(layer / "sub", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # the real directory, wherever it is
    events = EventQueue(100_000)
    before = inotify_fds()
    watcher = FileWatcher(events)
    racer = None
    got = []
    try:
        assert watcher.start()
        mine = inotify_fds() - before
        assert mine, "the watcher holds no inotify descriptor"
        assert watcher.add_layer("c1", str(layer))
        racer = subprocess.Popen([sys.executable, "-c", RACER, str(layer / "sub"), str(layer / "link")],
                                 stdout=subprocess.PIPE)
        assert racer.stdout.readline() == b"racing\n"
        for i in range(ROUNDS):
            os.mkdir(f"new{i}", dir_fd=sub_fd)  # a new directory to watch, found through either name
            (host / ("etc", "var/lib", "home/user")[i % 3] / f"hostwrite-{i}").write_bytes(b"host\n")
            if i % 10 == 0:
                watcher.remove_layer("c1")
                watcher.add_layer("c1", str(layer))  # a full walk of the layer while it is being swapped
            watcher.refresh()
            got += drain(events)
        racer.kill()
        racer.wait()
        (layer / "keep" / "after").write_bytes(b"layer\n")  # the layer is still watched
        for _ in range(3000):  # a bound against a hang, not a timing assertion
            got += drain(events)
            if any(e.path.endswith("/keep/after") for e in got):
                break
            watcher.refresh()
        kernel_watches = watched(mine)
        stats = watcher.stats()
    finally:
        if racer is not None:
            racer.kill()
            racer.wait()
            racer.stdout.close()
        watcher.stop()
        os.close(sub_fd)
    layer_dirs, host_dirs = dirs_under(str(layer)), dirs_under(str(host))
    assert kernel_watches and kernel_watches <= layer_dirs, kernel_watches - layer_dirs
    assert not kernel_watches & host_dirs
    assert not [e for e in got if "hostwrite" in e.path], "host writes arrived as layer events"
    assert any(e.path == str(layer / "keep" / "after") and e.container_id == "c1" for e in got)
    assert stats["watch_refused_tree_cap"] == stats["watch_refused_total_cap"] == 0


def test_watches_are_capped_per_layer_and_in_all(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for top in (a, b):
        for i in range(10):
            (top / f"d{i}").mkdir(parents=True)
    before = inotify_fds()
    watcher = FileWatcher(EventQueue(1000), max_layer_watches=4, max_watches=6)
    try:
        assert watcher.start()
        mine = inotify_fds() - before
        assert watcher.add_layer("ca", str(a))
        assert len(watched(mine)) == 4
        assert watcher.add_layer("cb", str(b))
        assert len(watched(mine)) == 6  # 4 of a, then b until the total cap
        stats = watcher.stats()
        assert stats["watch_refused_tree_cap"] == 11 - 4 and stats["watch_refused_total_cap"] == 11 - 2
        assert stats["inotify_watches"] == 6
    finally:
        watcher.stop()
