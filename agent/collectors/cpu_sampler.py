"""Behaviour samples from procfs and sysfs: CPU time per process, thread and container cgroup, the
CPU each may use (its cgroup's quota), and the RandomX artefacts (huge pages, big anonymous mappings,
the msr device and module).

Cost follows activity: every process costs one ``stat`` read. One whose CPU time moved since its last
sample also gets ``status`` (HugetlbPages, VmRSS, Threads) and ``cgroup`` (its limit: the tightest
quota of its cgroup and ancestors, at most the host's cores, read once per cgroup every ``LIMIT_PASSES``
passes: a quota changed by ``docker update`` counts within that many passes, and a container cannot change
its own), and
``maps`` when its RSS or huge pages could hold a RandomX cache. Threads and ``fd`` only for one above
``detail_core``, near its limit (``LIMIT_SHARE``) or named in ``detail``. State: the previous reading
of each pid (pruned to the latest call) and the limit cache, owned by the caller's thread.

A pid that vanishes mid-read is skipped and counted (``vanished``); a field that cannot be
read stays empty (``hugetlb_kb=None``) and is counted (``partial``).

Why this module is long: the per-pass cost of behaviour sampling is decided here and nowhere else (which
process gets which read, and the limit cache shared by processes and container cgroups).
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.collectors.procread import parse_stat, read_bounded, read_int, read_once, stat_counters
from agent.model import CgroupCpuSample, HostArtefacts, ProcessCpuSample

CLK_TCK = os.sysconf("SC_CLK_TCK")
BIG_MAPPING_MB = 128  # anonymous mappings at least this big are reported
MAX_BIG_MAPPINGS = 8
MAX_THREADS = 256  # per-thread stats read for at most this many threads of one process
MAX_FDS = 4096
MAPS_LIMIT = 8 << 20
MAPS_MIN_KB = 200 << 10  # a light read looks at maps only with this much RSS or huge pages (a RandomX cache)
LIMIT_SHARE = 0.75  # a process using this share of its CPU limit gets the full detailed read
MAX_CGROUP_DEPTH = 16
LIMIT_PASSES = 6  # cgroup CPU limits are read again every this many passes (``sample`` calls)
BETWEEN_EVERY = 512  # pids read between two calls of a pass's ``between`` (about 5 ms; ``between_every``)
NCPU = os.cpu_count() or 1
_SMALL = 1 << 16  # status, cpu.stat: a few KiB
_VANISHED = (errno.ENOENT, errno.ESRCH)
_MSR_PATH = re.compile(r"^/dev/cpu/\d+/msr$")
_HUGEPAGE_DIR = re.compile(r"^hugepages-(\d+)kB$")


# The previous reading of a pid: (start ticks, t, CPU ticks, thread ticks of a detailed reading or None).
# A plain tuple: one is kept for every process every pass (a frozen dataclass cost twice as much).
_Prev = tuple[int, float, int, "dict[int, int] | None"]


@dataclass(slots=True)
class SampledPass:
    """What one ``sample_pass`` over the process table found.

    ``samples``: the processes reported (see ``sample_pass``); ``new``: the listed pids with no reading of
    the same process (PID and start time) in the previous pass, or none that could be read now; ``threads``:
    the threads of every process read (the cross-view's census)."""

    samples: list[ProcessCpuSample] = field(default_factory=list)
    new: set[int] = field(default_factory=set)
    threads: int = 0


def parse_status(status: bytes) -> tuple[int | None, int | None, int | None]:
    """(HugetlbPages kB, VmRSS kB, Threads) from ``/proc/PID/status``; None for a field not there.
    Each key is looked for at a line start (a find, not a split of every line: read for every moving process)."""
    def field(key: bytes) -> int | None:
        at = status.find(b"\n" + key + b":")
        if at < 0 and not status.startswith(key + b":"):
            return None
        start = at + len(key) + 2 if at >= 0 else len(key) + 1
        end = status.find(b"\n", start)
        words = status[start:end if end >= 0 else len(status)].split()
        return int(words[0]) if words else None

    return field(b"HugetlbPages"), field(b"VmRSS"), field(b"Threads")


def parse_cpu_cgroup(text: bytes) -> tuple[str, str] | None:
    """(kind, path) of the cgroup that sets a process's CPU limit, from ``/proc/PID/cgroup``: the v1
    hierarchy with the ``cpu`` controller, else the v2 one (``0::``)."""
    v2 = None
    for line in text.decode("utf-8", "replace").splitlines():
        _, ctrl, path = (line.split(":", 2) + ["", ""])[:3]
        if "cpu" in ctrl.split(","):
            return "v1", path
        v2 = ("v2", path) if ctrl == "" and path else v2
    return v2


def parse_quota(kind: str, raw: bytes, period: bytes = b"") -> float | None:
    """Cores a cgroup may use: v1 ``cpu.cfs_quota_us`` (-1: none) over ``cpu.cfs_period_us``; v2 ``cpu.max``."""
    if kind == "v2":
        quota, _, period = raw.strip().partition(b" ")
    else:
        quota = raw.strip()
    if quota in (b"max", b"-1") or not quota:
        return None
    q, p = int(quota), int(period.strip() or b"100000")
    return q / p if q > 0 and p > 0 else None


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
                 clock: Callable[[], float] = time.monotonic, between_every: int = BETWEEN_EVERY) -> None:
        self.proc_root, self.sys_root = Path(proc_root), Path(sys_root)
        self.between_every = max(1, between_every)
        self._cgroup_fs = f"{self.sys_root}/fs/cgroup"
        self._passes = 0
        self.detail_core = detail_core
        self._clock = clock
        self._prev: dict[int, _Prev] = {}
        self._cgroup_layout: tuple[tuple[str, str], ...] | None = None
        self._limits: dict[tuple[str, str], float | None] = {}  # (kind, cgroup path) -> cores; LIMIT_PASSES
        self._quotas: dict[str, float | None] = {}  # cgroup directory -> its own quota (shared ancestors read once)
        self.vanished = 0  # pids gone before or during their read
        self.denied = 0  # pids whose stat could not be read for another reason
        self.partial = 0  # detail fields that could not be read
        self.cgroup_missing = 0  # cgroup paths with no readable CPU counter

    # ---------------------------------------------------------------- processes

    def sample(self, pids: Iterable[int], detail: Collection[int] = ()) -> list[ProcessCpuSample]:
        """One sample per live pid; busy ones (and those in ``detail``) with threads and artefacts."""
        return self.sample_pass(pids, detail).samples

    def sample_pass(self, pids: Iterable[int], detail: Collection[int] = (),
                    report: Collection[int] | None = None, between: Callable[[], None] | None = None) -> SampledPass:
        """Read every pid once: a moving one (and one in ``detail``) in detail, with the previous reading
        in the sample (``since``). ``report``: the idle processes to give a sample for (None: all); a
        process that moved or was read in detail is always reported, so a caller that keeps entries only
        for those (the behaviour model) passes the pids it has entries for, and a sleeping process costs
        one read and one tuple a pass. ``between``: called every ``between_every`` pids (the daemon serves
        its waiting events there; it must not sample)."""
        out = SampledPass()
        prev, self._prev = self._prev, {}
        self._passes += 1
        if self._passes % LIMIT_PASSES == 0:
            self._limits, self._quotas = {}, {}
        clock, root, keep, every = self._clock, self.proc_root, self._prev, self.between_every
        for n, pid in enumerate(pids):
            if between is not None and n % every == every - 1:
                between()
            try:
                t = clock()
                ticks, threads, start = stat_counters(read_once(f"{root}/{pid}/stat"))  # the cheap path's only syscalls
            except (OSError, ValueError, IndexError) as exc:
                self._skipped(exc)
                out.new.add(pid)
                continue
            out.threads += threads
            last = prev.get(pid)
            if last is not None and last[0] != start:
                last = None  # the pid was reused
            if last is None:
                out.new.add(pid)
            moved = last is not None and t > last[1] and ticks > last[2]
            if moved or pid in detail:
                s = self._read_detailed(pid, last, start, t, ticks, threads, moved, pid in detail)
                if s is not None:
                    out.samples.append(s)
                continue
            keep[pid] = (start, t, ticks, None)
            if report is None or pid in report:
                out.samples.append(ProcessCpuSample(pid, start, t, ticks / CLK_TCK, threads=threads,
                                                    since=(last[1], last[2] / CLK_TCK) if last else None))
        return out

    def _read_detailed(self, pid: int, prev: _Prev | None, start: int, t: float, ticks: int, threads: int,
                       moved: bool, force: bool) -> ProcessCpuSample | None:
        rate = (ticks - prev[2]) / CLK_TCK / (t - prev[1]) if moved and prev is not None else 0.0
        try:
            return self._detailed(pid, prev, start, t, ticks, threads, rate, force)
        except (OSError, ValueError, IndexError) as exc:
            self._skipped(exc)
            return None

    def _detailed(self, pid: int, prev: _Prev | None, start: int, t: float, ticks: int, threads: int,
                  rate: float, force: bool) -> ProcessCpuSample | None:
        """Artefacts and limit (and, when busy, threads and fds), read through one directory fd checked
        to be the same process."""
        dfd = os.open(f"{self.proc_root}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if parse_stat(read_once("stat", dir_fd=dfd)).start_ticks != start:
                self.vanished += 1  # exited and its pid reused between the two reads
                return None
            hugetlb, rss, n = self._status(dfd)
            limit = self._limit(dfd)
            big = (rss or 0) >= MAPS_MIN_KB or (hugetlb or 0) >= MAPS_MIN_KB
            mappings = self._big_mappings(dfd) if big or force else ()
            full = force or rate >= self.detail_core or (limit is not None and rate >= LIMIT_SHARE * limit)
            since = (prev[1], prev[2] / CLK_TCK) if prev is not None else None
            if not full:
                self._prev[pid] = (start, t, ticks, None)
                return ProcessCpuSample(pid, start, t, ticks / CLK_TCK, (), n or threads, hugetlb, mappings,
                                        cpu_limit=limit, since=since)
            thread_ticks = self._thread_ticks(dfd)
            per_thread: tuple[float, ...] = ()
            if prev is not None and prev[3] is not None and thread_ticks:
                dt, before = t - prev[1], prev[3]
                per_thread = tuple(round(max(0, n - before[tid]) / CLK_TCK / dt, 3)
                                   for tid, n in thread_ticks.items() if tid in before)
            self._prev[pid] = (start, t, ticks, thread_ticks)
            return ProcessCpuSample(pid, start, t, ticks / CLK_TCK, per_thread, threads, hugetlb,
                                    mappings, self._msr_open(dfd), limit, since)
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

    def _status(self, dfd: int) -> tuple[int | None, int | None, int | None]:
        try:
            return parse_status(read_bounded("status", dir_fd=dfd, limit=_SMALL))
        except (OSError, ValueError, IndexError) as exc:
            if isinstance(exc, OSError) and exc.errno in _VANISHED:
                raise
            self.partial += 1
            return None, None, None

    def _limit(self, dfd: int) -> float | None:
        """Cores this process may use: its CPU cgroup's quota (the tightest of it and its ancestors), at
        most the host's cores; None when nothing limits it below the host or it cannot be read."""
        try:
            where = parse_cpu_cgroup(read_once("cgroup", dir_fd=dfd))
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                raise
            self.partial += 1  # (a tree without cgroup files, such as a fake /proc, has no limit)
            return None
        if where is None:
            return None
        if where not in self._limits:
            self._limits[where] = self.cgroup_limit(*where)
        return self._limits[where]

    def cgroup_limit(self, kind: str, path: str) -> float | None:
        """The CPU limit (cores) of a cgroup path and its ancestors, or None when only the host's cores bound it."""
        parts = [p for p in path.split("/") if p]
        if ".." in parts:
            return None
        best: float = NCPU
        subs = ("cpu", "cpu,cpuacct") if kind == "v1" else ("",) if self._v2_only() else ("unified",)
        for depth in range(min(len(parts), MAX_CGROUP_DEPTH), 0, -1):
            rel = "/".join(parts[:depth])
            for sub in subs:
                base = f"{self._cgroup_fs}/{sub}/{rel}" if sub else f"{self._cgroup_fs}/{rel}"
                if base in self._quotas:
                    q = self._quotas[base]
                else:
                    try:
                        q = (parse_quota(kind, read_once(f"{base}/cpu.cfs_quota_us"), read_once(f"{base}/cpu.cfs_period_us"))
                             if kind == "v1" else parse_quota(kind, read_once(f"{base}/cpu.max")))
                    except (OSError, ValueError):
                        continue
                    self._quotas[base] = q
                if q is not None:
                    best = min(best, q)
                break
        return round(best, 3) if best < NCPU else None

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
                kind = "v2" if self._v2_only() else "v1"
                if (kind, path) not in self._limits:
                    self._limits[(kind, path)] = self.cgroup_limit(kind, path)
                out.append(CgroupCpuSample(cid, self._clock(), usage, self._limits[(kind, path)]))
        return out

    def _layout(self) -> tuple[tuple[str, str], ...]:
        """(directory under fs/cgroup, counter kind) to try, in order; v2-only hosts have cgroup.controllers at the root."""
        if self._cgroup_layout is None:
            if (self.sys_root / "fs/cgroup/cgroup.controllers").exists():
                self._cgroup_layout = (("", "v2"),)
            else:
                self._cgroup_layout = (("cpuacct", "v1"), ("cpu,cpuacct", "v1"), ("unified", "v2"))
        return self._cgroup_layout

    def _v2_only(self) -> bool:
        return self._layout() == (("", "v2"),)

    def _cgroup_usage(self, path: str) -> float | None:
        if ".." in path.split("/"):
            return None
        for sub, kind in self._layout():
            rel = path.lstrip("/")
            base = f"{self._cgroup_fs}/{sub}/{rel}" if sub else f"{self._cgroup_fs}/{rel}"
            try:
                if kind == "v1":
                    return read_int(f"{base}/cpuacct.usage") / 1e9
                return parse_cpu_stat_usec(read_bounded(f"{base}/cpu.stat", limit=_SMALL)) / 1e6
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
