"""File watching (agent/collectors/fswatch.py) and file inspection (agent/file_worker.py).

Real temp dirs, real files, real inotify threads, a real container's writable layer.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable

import pytest

from agent.collectors.fswatch import STOP_TIMEOUT_S, FileWatcher
from agent.collectors.hashing import HashCache
from agent.collectors.yarascan import YaraScanner
from agent.events import EventQueue, FileEvent
from agent.collectors.file_inspector import FileInspector, container_path
from agent.signatures import load_bundle
from tests.helpers.openspy import OpenSpy

TIMEOUT = 20.0  # generous: the machine is small and shared


# ------------------------------------------------------------------------------ fixtures


def _watchdog_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate()
            if type(t).__module__.startswith(("watchdog", "agent.collectors.inotify"))}


@pytest.fixture(autouse=True)
def _no_leaked_watch_threads():
    """Every test must leave no watchdog thread behind."""
    before = _watchdog_threads()
    yield
    deadline = time.monotonic() + 5
    while (leaked := _watchdog_threads() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leaked, f"leaked watchdog threads: {leaked}"


@pytest.fixture(scope="module")
def signatures():
    return load_bundle()


@pytest.fixture
def events() -> EventQueue:
    return EventQueue(10_000)


@pytest.fixture
def watcher(events):
    w = FileWatcher(events)
    assert w.start()
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture
def inspector(signatures) -> FileInspector:
    return FileInspector(HashCache(), YaraScanner(signatures.yara), 128 << 20)


def collect(events: EventQueue, until, timeout: float = TIMEOUT) -> list[FileEvent]:
    """Drain ``events`` until ``until(collected)`` is true (or the timeout passes)."""
    got: list[FileEvent] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ev = events.get(timeout=0.1)
        if ev is not None:
            got.append(ev)
        if until(got):
            break
    return got


def has_path(path) -> Callable[[list[FileEvent]], bool]:
    return lambda got: any(e.path == str(path) for e in got)


def write_exec(path, data: bytes = b"#!/bin/sh\necho payload\n") -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o755)


def inspect_bounded(inspector: FileInspector, event: FileEvent, timeout: float = 10.0):
    """Run inspect() in a thread so that a hang (an opened FIFO) fails the test instead of blocking it."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(inspector.inspect(event)), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"inspect({event.path}) hung"
    return out[0]


# ------------------------------------------------------------------------------ watching


def test_created_file_arrives_as_event(watcher, events, tmp_path):
    """A file created in a watched directory arrives as a host FileEvent."""
    watcher.watch_host_paths([str(tmp_path)])
    target = tmp_path / "sub" / "dropper.sh"
    target.parent.mkdir()
    write_exec(target)
    got = collect(events, has_path(target))
    ev = next(e for e in got if e.path == str(target))
    assert (ev.container_id, ev.root) == ("", "")
    assert watcher.stats()["queued"] >= 1


def test_existing_file_reported_once_when_watch_added(watcher, events, tmp_path):
    """A file that existed before the watch was added is reported exactly once, at add time."""
    old = tmp_path / "old.sh"
    write_exec(old)
    (tmp_path / "empty").touch()
    watcher.watch_host_paths([str(tmp_path)])
    got = collect(events, lambda g: False, timeout=2.0)  # let any duplicate show up
    assert [e.path for e in got] == [str(old)]
    assert watcher.stats()["initial"] == 1


def test_pending_path_is_watched_after_it_appears(watcher, events, tmp_path):
    """A missing path stays pending; after it appears, refresh() watches it and reports what is already there."""
    later = tmp_path / "later"
    watcher.watch_host_paths([str(later)])
    assert (watcher.stats()["watches"], watcher.stats()["pending"]) == (0, 1)
    later.mkdir()
    early = later / "early"
    write_exec(early)
    watcher.refresh()
    assert (watcher.stats()["watches"], watcher.stats()["pending"]) == (1, 0)
    assert has_path(early)(collect(events, has_path(early)))
    fresh = later / "fresh"
    write_exec(fresh)
    assert has_path(fresh)(collect(events, has_path(fresh)))


def test_replaced_directory_is_watched_again_on_refresh(watcher, events, tmp_path):
    """A watched directory moved away and recreated is watched again after refresh()."""
    d = tmp_path / "d"
    d.mkdir()
    watcher.watch_host_paths([str(d)])
    d.rename(tmp_path / "d.old")
    d.mkdir()
    watcher.refresh()
    assert watcher.stats()["watches_lost"] == 1
    target = d / "x"
    write_exec(target)
    assert has_path(target)(collect(events, has_path(target)))


def test_deleted_directory_is_pending_until_recreated(watcher, events, tmp_path):
    """A watched directory that is deleted goes back to pending and is watched again once recreated."""
    d = tmp_path / "d"
    d.mkdir()
    watcher.watch_host_paths([str(d)])
    d.rmdir()
    deadline = time.monotonic() + TIMEOUT
    while watcher.stats()["pending"] == 0 and time.monotonic() < deadline:
        watcher.refresh()
        time.sleep(0.05)
    assert watcher.stats()["pending"] == 1
    d.mkdir()
    watcher.refresh()
    target = d / "x"
    write_exec(target)
    assert has_path(target)(collect(events, has_path(target)))


def test_refresh_restarts_a_dead_observer(watcher, events, tmp_path):
    """When the observer thread has died, refresh() starts a new one with every wanted watch."""
    watcher.watch_host_paths([str(tmp_path)])
    watcher._observer.stop()  # stands for a crash of the observer thread
    watcher._observer.join(STOP_TIMEOUT_S)
    assert not watcher.is_alive()
    watcher.refresh()
    assert watcher.is_alive() and watcher.stats()["watches"] == 1
    target = tmp_path / "x"
    write_exec(target)
    assert has_path(target)(collect(events, has_path(target)))


def test_watch_host_paths_again_replaces_the_set(watcher, events, tmp_path):
    """Calling watch_host_paths again (a config reload) adds new paths and stops watching dropped ones."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    watcher.watch_host_paths([str(a)])
    watcher.watch_host_paths([str(b)])
    assert watcher.stats()["watches"] == 1
    write_exec(a / "dropped")
    write_exec(b / "kept")
    got = collect(events, has_path(b / "kept"))
    assert has_path(b / "kept")(got)
    assert not has_path(a / "dropped")(got + collect(events, lambda g: False, timeout=1.0))


def test_symlink_watch_root_is_refused(watcher, tmp_path):
    """A watch root that is a symlink is refused and counted, never followed."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    watcher.watch_host_paths([str(tmp_path / "link")])
    stats = watcher.stats()
    assert stats["watches"] == 0 and stats["watch_refused"] == 1


def test_add_and_remove_layer(watcher, events, tmp_path):
    """A layer's files arrive with its container id and root; after remove_layer nothing more arrives."""
    upper = tmp_path / "overlay2" / "abc" / "diff"
    (upper / "etc").mkdir(parents=True)
    before = upper / "etc" / "planted"
    write_exec(before)
    assert watcher.add_layer("c1", str(upper))
    assert watcher.stats()["layers"] == 1
    (upper / "tmp").mkdir()
    target = upper / "tmp" / "x"
    write_exec(target)
    got = collect(events, lambda g: has_path(target)(g) and has_path(before)(g))
    assert has_path(target)(got) and has_path(before)(got), got
    for ev in got:
        assert (ev.container_id, ev.root) == ("c1", str(upper))
    assert container_path(str(target), str(upper)) == "/tmp/x"

    watcher.remove_layer("c1")
    stats = watcher.stats()
    assert (stats["layers"], stats["watches"]) == (0, 0)
    write_exec(upper / "tmp" / "y")
    assert not has_path(upper / "tmp" / "y")(collect(events, lambda g: False, timeout=1.5))


@pytest.mark.docker
def test_real_container_layer(watcher, events, docker_client, docker_run, base_image, helper_bins, inspector):
    """A binary copied inside a running container shows up under its UpperDir and is inspected as /tmp/x."""
    c = docker_run(base_image, ["sleep", "600"])
    upper = docker_client.api.inspect_container(c.id)["GraphDriver"]["Data"]["UpperDir"]
    assert os.path.isdir(upper), f"UpperDir {upper} not visible to the tests"
    assert watcher.add_layer(c.id, upper)
    res = c.exec_run(["sh", "-c", "cp /usr/local/bin/fakeminer /tmp/x"])
    assert res.exit_code == 0, res.output
    target = os.path.join(upper, "tmp", "x")
    got = collect(events, has_path(target))
    ev = next(e for e in got if e.path == target)
    assert (ev.container_id, ev.root) == (c.id, upper)

    snap = inspector.inspect(ev)
    assert snap is not None
    assert (snap.path, snap.container_id, snap.is_elf) == ("/tmp/x", c.id, True)
    assert snap.hashes.sha256 == hashlib.sha256(helper_bins.fakeminer.read_bytes()).hexdigest()
    assert any(h.category == "miner" for h in snap.yara), snap.yara


def test_storm_keeps_queue_bounded(tmp_path):
    """20,000 new files into a small queue: bounded, drops counted, no crash, the watcher still works."""
    events = EventQueue(maxsize=1000)
    watcher = FileWatcher(events)
    assert watcher.start()
    try:
        storm = tmp_path / "storm"
        storm.mkdir()
        watcher.watch_host_paths([str(storm)])
        for i in range(20_000):
            fd = os.open(storm / f"f{i}", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"x")
            os.close(fd)
        # wait until the observer has worked through the burst (the counters stop moving)
        last, stable_since, deadline = None, time.monotonic(), time.monotonic() + 120
        while time.monotonic() < deadline:
            stats = watcher.stats()
            now = (stats["queued"], stats["dropped"])
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since > 2.0:
                break
            assert events.qsize() <= 1000
            time.sleep(0.1)
        stats = watcher.stats()
        assert events.qsize() <= 1000
        assert stats["dropped"] > 0 and events.dropped["FileEvent"] == stats["dropped"]
        assert stats["queued"] <= 1000
        assert watcher.is_alive()

        while events.get(timeout=0.05) is not None:
            pass
        after = storm / "after.sh"
        write_exec(after)
        assert has_path(after)(collect(events, has_path(after)))
    finally:
        watcher.stop()


def test_a_first_walk_bigger_than_the_queue_goes_on_where_it_stopped(tmp_path):
    """Existing files beyond the queue's room are not dropped and walked again: the walk stops at the
    full queue and goes on from that file as the queue drains (at each refresh); each arrives once."""
    events = EventQueue(maxsize=10)
    watcher = FileWatcher(events)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    made = {str(tree / ("sub" if i % 2 else "") / f"f{i}.sh") for i in range(35)}
    for path in made:
        write_exec(path)
    assert watcher.start()
    try:
        watcher.watch_host_paths([str(tree)])
        got: list[str] = []
        for _ in range(10):
            while (ev := events.get(timeout=0.05)) is not None:
                got.append(ev.path)
            if len(got) >= len(made):
                break
            watcher.refresh()
        stats = watcher.stats()
        assert sorted(got) == sorted(made), "every file once: none dropped, none walked twice"
        assert stats["dropped"] == 0 and stats["rescans"] == 0 and stats["walks_resumed"] == 1
    finally:
        watcher.stop()


def test_stop_leaves_no_threads(tmp_path):
    """stop() joins within its timeout and leaves no thread behind; start() again re-adds the wanted watches."""
    before = set(threading.enumerate())
    events = EventQueue(100)
    watcher = FileWatcher(events)
    (tmp_path / "a").mkdir()
    (tmp_path / "layer").mkdir()
    watcher.watch_host_paths([str(tmp_path / "a")])
    watcher.add_layer("c1", str(tmp_path / "layer"))
    assert watcher.start()
    assert watcher.stats()["watches"] == 2
    assert len(set(threading.enumerate()) - before) == 1  # the inotify reader
    started = time.monotonic()
    watcher.stop()
    assert time.monotonic() - started < STOP_TIMEOUT_S + 1.0
    assert set(threading.enumerate()) - before == set()
    assert watcher.stats()["watches"] == 0

    assert watcher.start()
    try:
        assert watcher.stats()["watches"] == 2
        write_exec(tmp_path / "a" / "again")
        assert has_path(tmp_path / "a" / "again")(collect(events, has_path(tmp_path / "a" / "again")))
    finally:
        watcher.stop()
    assert set(threading.enumerate()) - before == set()


# ------------------------------------------------------------------------------ inspecting


def test_fifo_socket_and_symlinks_are_never_opened(watcher, events, inspector, tmp_path, helper_bins):
    """A FIFO, a socket and symlinks (to /etc/shadow, to an executable outside) are reported but never opened."""
    watched = tmp_path / "w"
    watched.mkdir()
    outside = tmp_path / "outside-miner"
    shutil.copy2(helper_bins.fakeminer, outside)
    watcher.watch_host_paths([str(watched)])

    fifo = watched / "fifo"
    os.mkfifo(fifo)
    sock_path = watched / "sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(sock_path))
        (watched / "shadow").symlink_to("/etc/shadow")
        (watched / "miner").symlink_to(outside)
        names = [fifo, sock_path, watched / "shadow", watched / "miner"]
        got = collect(events, lambda g: all(has_path(p)(g) for p in names))
        assert all(has_path(p)(got) for p in names), got
        with OpenSpy(fifo) as fifo_spy, OpenSpy(outside) as miner_spy:
            results = [inspect_bounded(inspector, ev) for ev in got]
            assert not fifo_spy.opened() and not miner_spy.opened()
    finally:
        sock.close()
    assert results and all(r is None for r in results)
    assert inspector.yara_scanner.scanned == 0 and inspector.hash_cache.stats()["misses"] == 0
    assert inspector.counters["refused_not_regular"] >= 2 and inspector.counters["refused_symlink"] >= 2


def test_symlinked_directory_escaping_layer_is_refused(inspector, tmp_path, helper_bins):
    """A directory in the layer that is a symlink out of it (absolute or relative) is refused, its target never opened."""
    upper = tmp_path / "diff"
    upper.mkdir()
    outside = tmp_path / "host-bin"
    outside.mkdir()
    shutil.copy2(helper_bins.fakeminer, outside / "x")
    (upper / "tmp").symlink_to(outside)
    (upper / "rel").symlink_to("../host-bin")
    with OpenSpy(outside / "x") as spy:
        for d in ("tmp", "rel"):
            ev = FileEvent(str(upper / d / "x"), "c1", str(upper))
            assert inspect_bounded(inspector, ev) is None
        assert not spy.opened()
    assert inspector.counters["refused_outside_root"] == 2


def test_layer_file_reported_with_container_path(inspector, tmp_path, helper_bins):
    """A miner in a layer becomes a snapshot with the container's view of the path, hashes and a YARA miner hit."""
    upper = tmp_path / "diff"
    (upper / "usr" / "bin").mkdir(parents=True)
    shutil.copy2(helper_bins.fakeminer, upper / "usr" / "bin" / "kworker")
    snap = inspector.inspect(FileEvent(str(upper / "usr" / "bin" / "kworker"), "c1", str(upper)))
    assert snap is not None
    assert (snap.path, snap.container_id, snap.is_elf, snap.partial) == ("/usr/bin/kworker", "c1", True, ())
    assert snap.hashes.md5 == hashlib.md5(helper_bins.fakeminer.read_bytes()).hexdigest()
    assert any(h.category == "miner" for h in snap.yara)


def test_host_file_keeps_host_path(inspector, tmp_path):
    """A host file's snapshot keeps its host path and no container id."""
    target = tmp_path / "run.sh"
    write_exec(target)
    snap = inspector.inspect(FileEvent(str(target)))
    assert snap is not None and (snap.path, snap.container_id, snap.is_script) == (str(target), "", True)


def test_chunked_write_is_inspected_once(watcher, events, inspector, tmp_path):
    """A file written in several chunks fires several events but is inspected once per version."""
    watcher.watch_host_paths([str(tmp_path)])
    target = tmp_path / "chunked.sh"
    with open(target, "wb") as f:
        for _ in range(3):
            f.write(b"#!/bin/sh\n" + b"# filler\n" * 1000)
            f.flush()
            os.fsync(f.fileno())
    os.chmod(target, 0o755)
    got = collect(events, lambda g: sum(e.path == str(target) for e in g) >= 2)
    assert sum(e.path == str(target) for e in got) >= 2  # created + closed
    snaps = [inspector.inspect(e) for e in got if e.path == str(target)]
    assert sum(s is not None for s in snaps) == 1
    assert inspector.counters["debounced"] >= 1
    with open(target, "ab") as f:
        f.write(b"echo more\n")
    assert inspector.inspect(FileEvent(str(target))) is not None  # a new version is inspected again


def test_large_file_is_not_read(signatures, tmp_path, helper_bins):
    """A candidate larger than max_bytes is reported with partial hashes and is neither hashed nor YARA-scanned."""
    cache = HashCache()
    inspector = FileInspector(cache, YaraScanner(signatures.yara), 4096)
    big = tmp_path / "big"
    shutil.copy2(helper_bins.fakeminer, big)
    snap = inspector.inspect(FileEvent(str(big)))
    assert snap is not None
    assert (snap.hashes, snap.partial, snap.yara, snap.is_elf) == (None, ("hashes",), (), True)
    assert snap.size == big.stat().st_size
    assert inspector.yara_scanner.scanned == 0 and cache.stats()["misses"] == 0


def test_non_candidates_and_vanished_files_give_nothing(inspector, tmp_path):
    """A plain data file, an empty file and a file that vanished give no snapshot and no error."""
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "empty").touch()
    for name in ("notes.txt", "empty", "gone"):
        assert inspector.inspect(FileEvent(str(tmp_path / name))) is None
    assert inspector.counters["errors"] == 0
    assert inspector.counters["not_candidate"] == 1 and inspector.counters["vanished"] == 1


def test_a_plain_file_is_not_opened_again_until_its_content_identity_changes(inspector, tmp_path):
    """A walked file found not to be a candidate is not opened by the next walk; a same-size rewrite
    with its mtime set back (ctime moves) or a chmod +x makes it read again. The inspector's
    debounce of repeated events keys on ctime too, so the same rewrite is inspected, not debounced."""
    from agent.collectors import files

    cache = HashCache()
    data = tmp_path / "notes.bin"
    data.write_bytes(b"hello, plain data\n" * 4)
    other = tmp_path / "other.txt"
    other.write_text("just text\n")
    assert list(files.scan_paths([str(tmp_path)], cache, 1 << 20)) == [] and cache.stats()["plain"] == 2
    with OpenSpy(data) as spy:
        assert list(files.scan_paths([str(tmp_path)], cache, 1 << 20)) == []
        assert not spy.opened(), "a plain file was opened again although nothing about it changed"
    assert inspector.inspect(FileEvent(str(data))) is None and inspector.counters["not_candidate"] == 1
    before = data.stat()
    size = before.st_size
    data.write_bytes((b"\x7fELF" + b"\0" * size)[:size])  # the same size, an ELF now, mtime set back
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert data.stat().st_mtime_ns == before.st_mtime_ns and data.stat().st_size == size
    (snap,) = files.scan_paths([str(tmp_path)], cache, 1 << 20)
    assert snap.path == str(data) and snap.is_elf
    assert inspector.inspect(FileEvent(str(data))) is not None, "debounced on (size, mtime) alone"
    other.chmod(0o755)
    assert [s.path for s in files.scan_paths([str(tmp_path)], cache, 1 << 20)] == [str(data), str(other)]


def test_non_utf8_file_name(inspector, tmp_path):
    """A file name that is not UTF-8 is inspected without error."""
    raw = os.path.join(os.fsencode(tmp_path), b"\xff\xfe-miner")
    with open(raw, "wb") as f:
        f.write(b"#!/bin/sh\nexit 0\n")
    snap = inspector.inspect(FileEvent(os.fsdecode(raw)))
    assert snap is not None and snap.is_script


def test_event_outside_its_root_is_refused(inspector, tmp_path):
    """An event whose path is not under its layer root is refused."""
    write_exec(tmp_path / "elsewhere")
    assert inspector.inspect(FileEvent(str(tmp_path / "elsewhere"), "c1", str(tmp_path / "diff"))) is None
    assert inspector.counters["refused_outside_root"] == 1
