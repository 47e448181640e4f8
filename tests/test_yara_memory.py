"""Tests for YaraScanner.scan_memory: region-selective, bounded reads of real processes' memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.collectors.yarascan import MemoryLimits, YaraScanner, plan_regions
from agent.signatures import load_bundle
from tests.helpers import procs

MIB = 1 << 20


@pytest.fixture(scope="module")
def rules():
    return load_bundle().yara


def _rss_mib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) >> 10


def _fakeminer_plain(spawn, helper_bins, alloc_mb: int = 0) -> int:
    """Start fakeminer-plain (no pool reachable, no busy threads), wait until its dataset is touched."""
    extra = ["--alloc-mb", str(alloc_mb)] if alloc_mb else []
    p = spawn([helper_bins.fakeminer_plain, "-o", "127.0.0.1:9", "-t", "0", "--seconds", "120", *extra],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.wait_until(lambda: p.poll() is None and _rss_mib(p.pid) >= alloc_mb * 0.95, timeout=60,
                     message=f"fakeminer-plain touching {alloc_mb} MiB")
    return p.pid


def _scan_until_hit(scanner: YaraScanner, pid: int, rule: str) -> set[str]:
    """Scan until ``rule`` shows (the strings are decoded into the heap right after start)."""
    def found() -> set[str]:
        rules = {h.rule for h in scanner.scan_memory(pid)}
        return rules if rule in rules else set()

    return procs.wait_until(found, timeout=15, message=f"{rule} in the memory of {pid}")


def test_obfuscated_miner_is_found_in_memory_but_not_in_its_file(rules, spawn, helper_bins):
    """fakeminer-plain's memory matches MW_XMRig_Memory as a memory hit; a file scan of its binary finds nothing."""
    scanner = YaraScanner(rules)
    assert scanner.scan_file(str(helper_bins.fakeminer_plain)) == ()
    pid = _fakeminer_plain(spawn, helper_bins)
    found = _scan_until_hit(scanner, pid, "MW_XMRig_Memory")
    assert "MW_XMRig_ELF" not in found and "MW_UPX_Packed_ELF" not in found
    hits = scanner.scan_memory(pid)
    assert {h.source for h in hits} == {"memory"}
    stats = scanner.memory_stats()
    assert stats["scans"] >= 2 and stats["errors"] == 0 and 0 < stats["bytes"] <= MemoryLimits().total_bytes


def test_large_dataset_is_not_read_and_the_miner_is_still_found(rules, spawn, helper_bins):
    """With a 600 MiB RandomX-like allocation, a scan reads only its head, far below the cap, and still matches."""
    scanner = YaraScanner(rules)
    pid = _fakeminer_plain(spawn, helper_bins, alloc_mb=600)
    _scan_until_hit(scanner, pid, "MW_XMRig_Memory")
    stats = scanner.memory_stats()
    limits = MemoryLimits()
    assert stats["errors"] == 0 and stats["regions_truncated"] >= stats["scans"] >= 1
    assert stats["bytes"] <= stats["scans"] * (limits.region_bytes + limits.head_bytes)
    assert stats["bytes"] <= stats["scans"] * limits.total_bytes


def test_total_cap_bounds_the_bytes_read_and_the_program_comes_first(rules, spawn, helper_bins):
    """A 4 MiB total cap is never exceeded, and the executable and heap read first still hold the miner strings."""
    limits = MemoryLimits(region_bytes=64 * MIB, head_bytes=MIB, total_bytes=4 * MIB)
    scanner = YaraScanner(rules, memory_limits=limits)
    pid = _fakeminer_plain(spawn, helper_bins, alloc_mb=600)
    _scan_until_hit(scanner, pid, "MW_XMRig_Memory")
    stats = scanner.memory_stats()
    assert stats["bytes"] <= stats["scans"] * limits.total_bytes


@pytest.mark.parametrize("args", [
    [sys.executable, "-c", "import time\nb = bytearray(100 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\n"
                           "print('ready', flush=True)\ntime.sleep(120)"],
    ["/bin/sleep", "120"],
], ids=["python-100MB", "sleep"])
def test_benign_processes_have_no_memory_hits(rules, spawn, args):
    """A Python process holding a 100 MB buffer and /bin/sleep yield no YARA hits and no errors."""
    p = spawn(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    if args[0] == sys.executable:
        assert p.stdout.readline() == b"ready\n"
    else:
        procs.wait_until(lambda: procs.exe(p.pid).endswith("sleep"), message="sleep exec'd")
    scanner = YaraScanner(rules)
    assert scanner.scan_memory(p.pid) == ()
    stats = scanner.memory_stats()
    assert stats["scans"] == 1 and stats["errors"] == 0
    assert 0 < stats["bytes"] <= MemoryLimits().total_bytes


def test_vanished_process_gives_nothing_and_counts_an_error(rules, spawn):
    """A PID whose process has exited and been reaped yields () and one counted error, never an exception."""
    p = spawn(["/bin/true"])
    p.wait(timeout=10)
    scanner = YaraScanner(rules)
    assert scanner.scan_memory(p.pid) == ()
    assert scanner.memory_stats()["errors"] == 1 and scanner.memory_stats()["scans"] == 0
    assert scanner.errors == 1


def test_unreadable_pages_are_skipped_not_fatal(rules, spawn, tmp_path):
    """A file mapping cut short by truncation (reads past the end fail) is skipped page by page; the scan succeeds."""
    data = tmp_path / "mapped.bin"
    data.write_bytes(b"\x01" * (64 << 10))
    code = ("import mmap, os, sys, time\n"
            "f = open(sys.argv[1], 'rb')\n"
            "m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)\n"
            "os.truncate(sys.argv[1], 4096)\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n")
    p = spawn([sys.executable, "-c", code, data], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert p.stdout.readline() == b"ready\n"
    scanner = YaraScanner(rules)
    assert scanner.scan_memory(p.pid) == ()
    stats = scanner.memory_stats()
    assert stats["scans"] == 1 and stats["errors"] == 0 and stats["unreadable_pages"] >= 1


def test_plan_regions_orders_skips_and_caps():
    """Executable and heap first; kernel, shared, device and system-library mappings skipped; big ones capped."""
    exe = "/opt/app/bin/app"
    maps = "\n".join([
        f"00400000-00500000 r-xp 00000000 fe:00 11 {exe}",
        "01000000-01100000 rw-p 00000000 00:00 0 [heap]",
        "7f0000000000-7f0080000000 rw-p 00000000 00:00 0 ",                  # 2 GiB dataset
        "7f1000000000-7f1000200000 rw-p 00000000 00:00 0 ",                  # 2 MiB scratchpad
        "7f2000000000-7f2000100000 r-xp 00000000 fe:00 12 /usr/lib/x86_64-linux-gnu/libc.so.6",
        "7f2000100000-7f2000101000 rw-p 00100000 fe:00 12 /usr/lib/x86_64-linux-gnu/libc.so.6",
        "7f3000000000-7f3000001000 rw-s 00000000 00:01 13 /SYSV00000000 (deleted)",
        "7f4000000000-7f4000001000 rw-p 00000000 00:06 14 /dev/dri/card0",
        "7f5000000000-7f5000001000 ---p 00000000 00:00 0 ",
        "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]",
        "7ffd10000000-7ffd10002000 r--p 00000000 00:00 0 [vvar]",
        "7ffd10002000-7ffd10004000 r-xp 00000000 00:00 0 [vdso]",
        "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]",
    ])
    regions, skipped, truncated = plan_regions(maps, exe, MemoryLimits(region_bytes=64 * MIB, head_bytes=MIB,
                                                                       total_bytes=256 * MIB))
    assert [hex(r.start) for r in regions] == ["0x400000", "0x1000000", "0x7ffd00000000", "0x7f1000000000",
                                               "0x7f0000000000", "0x7f2000100000"]
    assert regions[4].length == MIB and truncated == 1
    assert skipped == 5  # libc text, shared SysV, device, vvar, vdso (unreadable ones are not counted)
    small, _, _ = plan_regions(maps, exe, MemoryLimits(total_bytes=2 * MIB))
    assert sum(r.length for r in small) == 2 * MIB and [r.start for r in small][:2] == [0x400000, 0x1000000]


@pytest.mark.parametrize("name", ["README.md", "yara/xmrig.yar", "yara/miners.yar", "yara/packers.yar",
                                  "yara/noisy.yar"])
def test_signature_texts_never_match_as_files(rules, name):
    """The rule files and the bundle README quote miner strings, yet a file scan of them matches nothing."""
    path = Path(load_bundle().directory) / name
    assert YaraScanner(rules).scan_file(str(path)) == ()
    assert rules.match(str(path)) == []


def test_the_scanned_memory_is_held_by_the_helper_not_by_the_scanner(rules, spawn, helper_bins):
    """A scan reading tens of MiB of a process's memory finds the miner while the scanning process allocates
    next to nothing: the helper joins the regions and matches them (the buffer was the daemon's peak)."""
    import tracemalloc

    pid = _fakeminer_plain(spawn, helper_bins, alloc_mb=48)
    scanner = YaraScanner(rules)
    _scan_until_hit(scanner, pid, "MW_XMRig_Memory")  # the strings are in the heap now
    tracemalloc.start()
    try:
        hits = {h.rule for h in scanner.scan_memory(pid)}
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    read = scanner.memory_stats()["bytes"] / scanner.memory_stats()["scans"]
    assert "MW_XMRig_Memory" in hits
    assert read > 16 * MIB, read  # the scan read that much of the process...
    assert peak < 2 * MIB, peak  # ...and none of it was here
