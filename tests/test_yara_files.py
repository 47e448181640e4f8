"""YARA over files: the head of a file is read into one buffer (the first scan's peak memory), every byte
of it is matched, a file that grows while it is read is read on up to the limit."""

from __future__ import annotations

import os
import tracemalloc

import pytest
import yara

from agent.collectors.yarascan import YaraScanner, _read_head

MARK = b"MW-TEST-MARKER-7d1c"
RULES = yara.compile(source='rule marker { strings: $m = "MW-TEST-MARKER-7d1c" condition: $m }')


def _file(path, size: int, mark_at: int | None) -> str:
    data = bytearray(os.urandom(size))
    if mark_at is not None:
        data[mark_at:mark_at + len(MARK)] = MARK
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("mark_at", [0, (1 << 20) - 5, (3 << 20) + 17, (6 << 20) - len(MARK)])
def test_a_marker_anywhere_in_the_head_is_found_and_the_whole_file_was_read(tmp_path, mark_at):
    """Across read boundaries and at the very end, the marker is seen; the file was read whole."""
    path = _file(tmp_path / "f.bin", 6 << 20, mark_at)
    hits, whole = YaraScanner(RULES, max_bytes=8 << 20).scan_file_head(path)
    assert [h.rule for h in hits] == ["marker"] and whole


def test_past_the_limit_nothing_is_read_and_the_scan_says_so(tmp_path):
    """A marker after ``max_bytes`` is not seen (and ``whole`` is False); one just before it is."""
    scanner = YaraScanner(RULES, max_bytes=2 << 20)
    late = _file(tmp_path / "late.bin", 3 << 20, (2 << 20) + 1)
    assert scanner.scan_file_head(late) == ((), False)
    edge = _file(tmp_path / "edge.bin", 3 << 20, (2 << 20) - len(MARK))
    hits, whole = scanner.scan_file_head(edge)
    assert [h.rule for h in hits] == ["marker"] and not whole


def test_a_file_that_grew_since_its_stat_is_read_on_up_to_the_limit(tmp_path):
    """The buffer is sized by the fstat; bytes appended after it are read too, never past ``limit``."""
    path = tmp_path / "grown.bin"
    path.write_bytes(b"a" * 1000 + b"b" * 5000)
    fd = os.open(path, os.O_RDONLY)
    try:
        with _read_head(fd, 4096, 1000) as view:  # as if it had 1000 bytes when stat'ed
            assert bytes(view) == b"a" * 1000 + b"b" * 3096
        os.lseek(fd, 0, os.SEEK_SET)
        with _read_head(fd, 1 << 20, 6000) as view:
            assert bytes(view) == b"a" * 1000 + b"b" * 5000
        os.lseek(fd, 0, os.SEEK_SET)
        with _read_head(fd, 1 << 20, 9000) as view:  # shrank since: what is there
            assert len(view) == 6000
    finally:
        os.close(fd)


def test_the_head_of_a_file_is_in_memory_once(tmp_path):
    """Scanning an 8 MiB file allocates about 8 MiB at most (chunks and their join held it twice)."""
    path = _file(tmp_path / "big.bin", 8 << 20, 100)
    scanner = YaraScanner(RULES, max_bytes=32 << 20)
    tracemalloc.start()
    try:
        hits, _ = scanner.scan_file_head(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [h.rule for h in hits] == ["marker"]
    assert peak < (8 << 20) * 1.1, peak


_BUNDLE_COST = r"""
import gc
from agent.signatures import load_bundle
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096
load_bundle(None)  # imports and first-use allocations out of the way
gc.collect()
before = rss()
kept = load_bundle(None)
gc.collect()
print(rss() - before)
"""


def test_a_loaded_bundle_costs_a_few_mib_resident():
    """The signature bundle (RE2 patterns and their sets, YARA rules) adds a few MiB to a process: its
    YARA rules compiled alone left ~9 MiB of libyara arenas resident, the per-position wallet
    patterns ~19 MiB."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _BUNDLE_COST], capture_output=True, text=True, timeout=120, check=True)
    cost = int(res.stdout.strip().splitlines()[-1])
    assert cost < 8 << 20, f"{cost / 2**20:.1f} MiB"


def test_one_big_head_at_a_time_across_scanners(tmp_path, monkeypatch):
    """While one scanner holds a big head (16 MiB or more), another scanner's big read waits for it (the
    worker's and the bulk lane's 32 MiB heads together were the first scan's peak); a small file does not."""
    import threading

    from agent.collectors import yarascan

    monkeypatch.setattr(yarascan, "BIG_READ_WAIT_S", 60.0)  # no giving up on a slow host
    big = _file(tmp_path / "big.bin", 17 << 20, 5)
    small = _file(tmp_path / "small.bin", 1 << 20, 5)
    other = YaraScanner(RULES, max_bytes=32 << 20)
    done = threading.Event()
    waited = yarascan.BIG_READ_STATS["waited"]
    with yarascan._big_read(20 << 20):  # the other lane's head is in memory
        assert [h.rule for h in other.scan_file_head(small)[0]] == ["marker"]
        assert yarascan.BIG_READ_STATS["waited"] == waited
        t = threading.Thread(target=lambda: (other.scan_file_head(big), done.set()))
        t.start()
        assert not done.wait(0.3)  # waiting for the head held here
        assert yarascan.BIG_READ_STATS["waited"] == waited + 1
    assert done.wait(10)
    t.join()
    assert yarascan.BIG_READ_STATS["gave_up"] == 0
