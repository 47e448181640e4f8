"""Behaviour samples from procfs and sysfs: CPU time per process, thread and container cgroup,
and the RandomX artefacts (huge pages, big anonymous mappings, the msr device and module).

Cheap check first: every process costs one read of ``/proc/PID/stat``; only a process that
used more than ``detail_core`` cores since its previous sample (or one the caller names in
``detail``) gets its threads, ``status``, ``maps`` and ``fd`` read. The sampler keeps the
previous reading of each pid to compute those deltas: its only state, owned by the one
thread that calls ``sample``, and pruned to the pids of the latest call.

A pid that vanishes mid-read is skipped and counted (``vanished``); a field that cannot be
read stays empty (``hugetlb_kb=None``) and is counted (``partial``).
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.collectors.procread import parse_stat, read_bounded, read_int, read_once
from agent.model import CgroupCpuSample, HostArtefacts, ProcessCpuSample

CLK_TCK = os.sysconf("SC_CLK_TCK")
BIG_MAPPING_MB = 128  # anonymous mappings at least this big are reported
MAX_BIG_MAPPINGS = 8
MAX_THREADS = 256  # per-thread stats read for at most this many threads of one process
MAX_FDS = 4096
MAPS_LIMIT = 8 << 20
_SMALL = 1 << 16  # status, cpu.stat: a few KiB
_VANISHED = (errno.ENOENT, errno.ESRCH)
_MSR_PATH = re.compile(r"^/dev/cpu/\d+/msr$")
_HUGEPAGE_DIR = re.compile(r"^hugepages-(\d+)kB$")


@dataclass(frozen=True, slots=True)
class _Prev:
    start_ticks: int
    t: float
    ticks: int
    thread_ticks: dict[int, int] | None  # from this reading, when it was a detailed one


def parse_hugetlb_kb(status: bytes) -> int | None:
    """``HugetlbPages`` in kB from ``/proc/PID/status`` text; None when the kernel does not report it."""
    for line in status.splitlines():
        if line.startswith(b"HugetlbPages:"):
            return int(line.split()[1])
    return None


def parse_big_anon_mappings(maps: bytes, min_mb: int = BIG_MAPPING_MB) -> tuple[int, ...]:
    """Sizes (MiB, largest first) of writable anonymous mappings (incl. hugetlb ones) from ``/proc/PID/maps``."""
    sizes = []
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5 or parts[1][:2] != b"rw":
            continue
        path = parts[5].strip() if len(parts) == 6 else b""
        if parts[4] != b"0" and not path.startswith(b"/anon_hugepage"):
            continue  # file-backed
        if path and path not in (b"[heap]",) and not path.startswith(b"/anon_hugepage"):
            continue  # stacks, vdso, SysV shm ...
        lo, _, hi = parts[0].partition(b"-")
        mb = (int(hi, 16) - int(lo, 16)) >> 20
        if mb >= min_mb:
            sizes.append(mb)
    return tuple(sorted(sizes, reverse=True)[:MAX_BIG_MAPPINGS])


def parse_cpu_stat_usec(text: bytes) -> int:
    """``usage_usec`` from a cgroup v2 ``cpu.stat``; ValueError when absent."""
    for line in text.splitlines():
        if line.startswith(b"usage_usec "):
            return int(line.split()[1])
    raise ValueError("no usage_usec in cpu.stat")


class CpuSampler:
    """Reads behaviour samples; ``proc_root``/``sys_root`` are ``/host/proc``/``/host/sys`` in a container."""

    def __init__(self, proc_root: Path = Path("/proc"), sys_root: Path = Path("/sys"), *, detail_core: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.proc_root, self.sys_root = Path(proc_root), Path(sys_root)
        self.detail_core = detail_core
        self._clock = clock
        self._prev: dict[int, _Prev] = {}
        self._cgroup_layout: tuple[tuple[str, str], ...] | None = None
        self.vanished = 0  # pids gone before or during their read
        self.denied = 0  # pids whose stat could not be read for another reason
        self.partial = 0  # detail fields that could not be read
        self.cgroup_missing = 0  # cgroup paths with no readable CPU counter

    # ---------------------------------------------------------------- processes

    def sample(self, pids: Iterable[int], detail: Collection[int] = ()) -> list[ProcessCpuSample]:
        """One sample per live pid; busy ones (and those in ``detail``) with threads and artefacts."""
        out, prev, self._prev = [], self._prev, {}
        for pid in pids:
            s = self._sample_one(pid, prev.get(pid), pid in detail)
            if s is not None:
                out.append(s)
        return out

    def _sample_one(self, pid: int, prev: _Prev | None, force: bool) -> ProcessCpuSample | None:
        try:
            t = self._clock()
            st = parse_stat(read_once(f"{self.proc_root}/{pid}/stat"))  # the cheap path's only syscalls
            ticks, threads, start = st.cpu_ticks, st.num_threads, st.start_ticks
        except (OSError, ValueError, IndexError) as exc:
            self._skipped(exc)
            return None
        if prev is not None and prev.start_ticks != start:
            prev = None  # the pid was reused
        busy = prev is not None and t > prev.t and (ticks - prev.ticks) / CLK_TCK / (t - prev.t) >= self.detail_core
        if not (busy or force):
            self._prev[pid] = _Prev(start, t, ticks, None)
            return ProcessCpuSample(pid, start, t, ticks / CLK_TCK, threads=threads)
        try:
            return self._detailed(pid, prev, start, t, ticks, threads)
        except (OSError, ValueError, IndexError) as exc:
            self._skipped(exc)
            return None

    def _detailed(self, pid: int, prev: _Prev | None, start: int, t: float, ticks: int, threads: int) -> ProcessCpuSample | None:
        """Threads and artefacts, all read through one directory fd checked to be the same process."""
        dfd = os.open(f"{self.proc_root}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if parse_stat(read_once("stat", dir_fd=dfd)).start_ticks != start:
                self.vanished += 1  # exited and its pid reused between the two reads
                return None
            thread_ticks = self._thread_ticks(dfd)
            per_thread: tuple[float, ...] = ()
            if prev is not None and prev.thread_ticks is not None and thread_ticks:
                dt = t - prev.t
                per_thread = tuple(round(max(0, n - prev.thread_ticks[tid]) / CLK_TCK / dt, 3)
                                   for tid, n in thread_ticks.items() if tid in prev.thread_ticks)
            self._prev[pid] = _Prev(start, t, ticks, thread_ticks)
            return ProcessCpuSample(pid, start, t, ticks / CLK_TCK, per_thread, threads, self._hugetlb(dfd),
                                    self._big_mappings(dfd), self._msr_open(dfd))
        finally:
            os.close(dfd)

    def _skipped(self, exc: Exception) -> None:
        if isinstance(exc, OSError) and exc.errno not in _VANISHED:
            self.denied += 1  # EACCES and the like: no sample for this pid, counted
        else:
            self.vanished += 1  # ESRCH/ENOENT, or a stat line cut short: the process exited mid-read

    def _thread_ticks(self, dfd: int) -> dict[int, int]:
        out: dict[int, int] = {}
        try:
            tfd = os.open("task", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
        except OSError as exc:
            if exc.errno in _VANISHED:
                raise
            self.partial += 1
            return out
        try:
            for name in sorted(os.listdir(tfd), key=int)[:MAX_THREADS]:
                try:
                    out[int(name)] = parse_stat(read_once(f"{name}/stat", dir_fd=tfd)).cpu_ticks
                except (OSError, ValueError, IndexError):  # this thread exited: the others still count
                    continue
        finally:
            os.close(tfd)
        return out

    def _hugetlb(self, dfd: int) -> int | None:
        try:
            return parse_hugetlb_kb(read_bounded("status", dir_fd=dfd, limit=_SMALL))
        except (OSError, ValueError, IndexError) as exc:
            if isinstance(exc, OSError) and exc.errno in _VANISHED:
                raise
            self.partial += 1
            return None

    def _big_mappings(self, dfd: int) -> tuple[int, ...]:
        try:
            return parse_big_anon_mappings(read_bounded("maps", dir_fd=dfd, limit=MAPS_LIMIT))
        except (OSError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno in _VANISHED:
                raise
            self.partial += 1
            return ()

    def _msr_open(self, dfd: int) -> bool:
        try:
            ffd = os.open("fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
        except OSError as exc:
            if exc.errno in _VANISHED:
                raise
            self.partial += 1
            return False
        try:
            for name in os.listdir(ffd)[:MAX_FDS]:
                try:
                    if _MSR_PATH.match(os.readlink(name, dir_fd=ffd)):
                        return True
                except OSError:  # the fd was closed between listing and readlink
                    continue
            return False
        finally:
            os.close(ffd)

    # ------------------------------------------------------------------ cgroups

    def sample_cgroups(self, cgroup_paths: Mapping[str, str]) -> list[CgroupCpuSample]:
        """CPU usage of each container's cgroup; ``cgroup_paths`` maps container id -> path from ``/proc/PID/cgroup``."""
        out = []
        for cid, path in cgroup_paths.items():
            usage = self._cgroup_usage(path.rstrip("/"))
            if usage is None:
                self.cgroup_missing += 1
            else:
                out.append(CgroupCpuSample(cid, self._clock(), usage))
        return out

    def _layout(self) -> tuple[tuple[str, str], ...]:
        """(directory under fs/cgroup, counter kind) to try, in order; v2-only hosts have cgroup.controllers at the root."""
        if self._cgroup_layout is None:
            if (self.sys_root / "fs/cgroup/cgroup.controllers").exists():
                self._cgroup_layout = (("", "v2"),)
            else:
                self._cgroup_layout = (("cpuacct", "v1"), ("cpu,cpuacct", "v1"), ("unified", "v2"))
        return self._cgroup_layout

    def _cgroup_usage(self, path: str) -> float | None:
        if ".." in path.split("/"):
            return None
        for sub, kind in self._layout():
            base = self.sys_root / "fs/cgroup" / sub / path.lstrip("/")
            try:
                if kind == "v1":
                    return read_int(base / "cpuacct.usage") / 1e9
                return parse_cpu_stat_usec(read_bounded(base / "cpu.stat", limit=_SMALL)) / 1e6
            except (OSError, ValueError):  # not this layout (or the cgroup is gone): try the next
                continue
        return None

    # --------------------------------------------------------------------- host

    def host_artefacts(self) -> HostArtefacts:
        """Reserved huge pages and the msr module's state, host-wide."""
        pages, kb = self._hugepages(self.sys_root / "kernel/mm/hugepages")
        if pages is None:
            pages, kb = 0, 0
            for node in sorted((self.sys_root / "devices/system/node").glob("node[0-9]*")):
                n, k = self._hugepages(node / "hugepages")
                pages, kb = pages + (n or 0), kb + k
        msr = self.sys_root / "module/msr"
        try:
            writes = read_once(msr / "parameters/allow_writes").decode("ascii", "replace").strip()
        except OSError:  # not loaded, or a kernel without the parameter
            writes = ""
        return HostArtefacts(pages, msr.is_dir(), writes, kb, self._clock())

    def _hugepages(self, root: Path) -> tuple[int | None, int]:
        """(pages, kB) reserved under one hugepages directory; pages None when it does not exist."""
        try:
            names = os.listdir(root)
        except OSError:
            return None, 0
        pages = kb = 0
        for name in names:
            m = _HUGEPAGE_DIR.match(name)
            if not m:
                continue
            try:
                n = read_int(root / name / "nr_hugepages")
            except (OSError, ValueError):
                self.partial += 1
                continue
            pages, kb = pages + n, kb + n * int(m.group(1))
        return pages, kb
