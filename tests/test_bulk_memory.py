"""The bulk lane gives a burst's freed heap back to the kernel when its queue runs dry (not only at the main
thread's trim every few minutes), and not after every odd file."""

from __future__ import annotations

import time

from agent.collectors.file_inspector import FileInspector
from agent.collectors.hashing import HashCache
from agent.collectors.yarascan import YaraScanner
from agent.daemon import bulk as bulk_mod
from agent.daemon import memory
from agent.daemon.bulk import TRIM_AFTER, BulkLane
from agent.events import EventQueue, FileEvent
from agent.signatures import load_bundle


def _wait(predicate, timeout: float = 30.0, what=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out {what()}"
        time.sleep(0.05)


def test_a_burst_of_files_ends_with_a_trim_and_a_few_files_do_not(tmp_path, monkeypatch):
    trims, real_trim = [], memory.trim

    def counting_trim():
        trims.append(time.monotonic())
        return real_trim()

    monkeypatch.setattr(bulk_mod.memory, "trim", counting_trim)
    inbox, results = EventQueue(1000), EventQueue(1000)
    lane = BulkLane(inbox, results, FileInspector(HashCache(), YaraScanner(load_bundle(None).yara), 1 << 20), None)
    paths = []
    for i in range(TRIM_AFTER + 8):
        p = tmp_path / f"f{i}.sh"
        p.write_bytes(b"#!/bin/sh\necho %d\n" % i + bytes(64 << 10))
        p.chmod(0o755)
        paths.append(str(p))
    lane.start()
    try:
        for p in paths:
            assert lane.submit(FileEvent(p))
        _wait(lambda: lane.counts["files"] == len(paths) and inbox.qsize() == 0)
        _wait(lambda: len(trims) == 1, what=lambda: lane.is_alive())  # the lane went idle after the burst
        for p in paths[:3]:  # a few more (rewritten: not debounced) stay below the burst size
            with open(p, "ab") as f:
                f.write(b"x")
            assert lane.submit(FileEvent(p))
        _wait(lambda: lane.counts["files"] == len(paths) + 3, what=lambda: (dict(lane.counts), inbox.qsize(), lane.is_alive()))
        time.sleep(1.5)  # idle for three of its 0.5 s waits
        assert len(trims) == 1
        assert lane.counts["errors"] == 0
    finally:
        lane.stop()
