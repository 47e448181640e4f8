"""Collecting: snapshots of processes and files with their YARA hits, for the sweep and the daemon.

The I/O half of an inspection (``agent.judge`` is the pure half). Owns the hash cache (kept
across signature reloads: a file's digests do not change with the rules), the procfs
collector and the YARA scanner. One owner: the sweep, or the daemon's worker thread.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from agent.collectors import netns, procread
from agent.collectors.glance import Glance, glance
from agent.collectors.hashing import HashCache
from agent.collectors.procfs import ProcfsCollector
from agent.collectors.yarascan import YARA_FILE_BYTES, YaraScanner
from agent.config import Config
from agent.model import FileSnapshot, ProcessSnapshot
from agent.signatures import Signatures


_CLK_TCK = os.sysconf("SC_CLK_TCK")


class SnapshotCollector:
    def __init__(self, config: Config, signatures: Signatures, *, hash_cache: HashCache | None = None) -> None:
        self.hash_cache = hash_cache or HashCache()
        self.max_bytes = config.watch.max_file_mb << 20
        self.proc_root = config.agent.proc_root
        self.use(config, signatures)

    def use(self, config: Config, signatures: Signatures) -> None:
        """Collect with (reloaded) config and signatures from now on; the hash cache stays."""
        self.max_bytes = config.watch.max_file_mb << 20
        self.proc_root = config.agent.proc_root
        self.procfs = ProcfsCollector(
            proc_root=Path(config.agent.proc_root), hash_cache=self.hash_cache, max_exe_bytes=self.max_bytes,
            env_names=frozenset(n for n in signatures.env_vars if not n.endswith("*")),
        )
        self._rules = signatures.yara
        self.yara = self.yara_scanner()

    def yara_scanner(self) -> YaraScanner:
        """A scanner over the current rules (compiled once, shared); one per thread that scans."""
        # YARA reads a file into memory: its first YARA_FILE_BYTES (the agent's memory budget), all of it
        # for ordinary miners (a static xmrig is under 10 MB); hashes still cover the whole file.
        return YaraScanner(self._rules, max_bytes=min(self.max_bytes, YARA_FILE_BYTES), proc_root=self.proc_root)

    # ------------------------------------------------------------------ processes

    def pids(self) -> list[int]:
        return self.procfs.pids()

    def container_pids(self, container_id: str, leader: int = 0) -> list[int]:
        return self.procfs.container_pids(container_id, leader)

    def container_of(self, pid: int) -> str | None:
        """The container id of ``pid`` from its cgroup ("" on the host; None: gone or unreadable)."""
        return self.procfs.container_of(pid)

    def ticks_ago(self, seconds: float) -> int:
        """The boot-relative clock tick of ``seconds`` ago (as ``/proc/PID/stat`` start times count); -1 unknown."""
        try:
            uptime = float(procread.read_once(f"{self.proc_root}/uptime").split()[0])
        except (OSError, ValueError, IndexError):
            return -1
        return int((uptime - seconds) * _CLK_TCK)

    def glance(self, pid: int) -> Glance | None:
        """The few reads an exec is judged on first (``collectors.glance``); None: read it fully."""
        return glance(self.proc_root, pid)

    def snapshot(self, pid: int, tables: netns.NetTables | None = None) -> ProcessSnapshot | None:
        """A snapshot of ``pid`` (None: gone), its executable YARA-scanned."""
        snap = self.procfs.snapshot(pid, tables=tables)
        return self.scan_exe(snap) if snap is not None else None

    def scan_exe(self, proc: ProcessSnapshot) -> ProcessSnapshot:
        """Attach YARA hits on the process's executable (read through /proc/PID/exe, cached by identity) and,
        when that is the dynamic loader, on the program it runs (through /proc/PID/map_files).

        An executable of any size gets YARA over its first ``max_bytes`` (one too big to hash too): padding a
        binary hides nothing at its start; what was not read whole is marked ``yara`` in ``partial``."""
        if proc.is_kernel_thread or not proc.exe or "exe" in proc.partial or any(h.source == "file" for h in proc.yara):
            return proc
        hits, whole = self.yara.scan_process_file(self.proc_root, proc.pid)
        if proc.program_mapping:
            more, whole_program = self.yara.scan_process_file(self.proc_root, proc.pid,
                                                              f"map_files/{proc.program_mapping}")
            hits, whole = hits + tuple(h for h in more if h not in hits), whole and whole_program
        partial = proc.partial if whole or "yara" in proc.partial else proc.partial + ("yara",)
        if not hits and partial == proc.partial:
            return proc
        return dataclasses.replace(proc, yara=proc.yara + hits, partial=partial)

    def scan_memory(self, proc: ProcessSnapshot) -> ProcessSnapshot:
        hits = self.yara.scan_memory(proc.pid)
        return dataclasses.replace(proc, yara=proc.yara + hits) if hits else proc

    # ------------------------------------------------------------------ files

    def scan_host_file(self, snap: FileSnapshot) -> FileSnapshot:
        """Attach YARA hits for a file on the host's own file system (``snap.path`` is a host path)."""
        hits = self.yara.scan_file(snap.path)
        return dataclasses.replace(snap, yara=hits) if hits else snap
