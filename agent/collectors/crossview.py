"""Hidden processes, without kernel support: the same processes seen through several views.

A library in ``/etc/ld.so.preload`` that filters ``readdir()`` (libprocesshider) hides a process
from ``os.listdir("/proc")`` in every dynamically linked program, ours too; host root can also
bind-mount an empty directory over ``/proc/PID``. ``CrossView.run`` compares:

* ``readdir``: libc's listing of ``/proc`` (``os.listdir``), what a preload library filters;
* ``getdents``: the raw ``getdents64`` listing (``proclist``), which no preload library sees;
* ``cgroup``: the PIDs in every cgroup's ``cgroup.procs`` (plain reads; directories listed with
  raw ``getdents`` too) of the unified hierarchy, or of the v1 ``pids``/``cpu`` one;
* a probe: does ``/proc/N`` exist (``faccessat``) for a slice of N up to ``pid_max`` per run (bounded work; the
  next run goes on where this one stopped), for what no listing shows;
* with ``census``, the kernel's own count of tasks (``nr_threads``, the fourth field of ``/proc/loadavg``)
  against the threads of the listed processes (``num_threads`` of each ``stat``), taken with the fork
  counter of ``/proc/stat`` unchanged around it: when they agree, no task exists that a listing lacks
  and the probe is skipped (a sweep's probe of all of ``pid_max`` costs most of a warm sweep); when they
  disagree (a task born or gone meanwhile, another PID namespace's /proc, or something hidden), the
  probe runs. A getdents hook in the kernel does not change ``nr_threads``; one that did could answer
  the probe's lookups as well. The daemon brings its own count (``run(census=...)``: the threads its
  pass just read from every ``stat`` for behaviour), and an agreeing count spares the cgroup walk too.

A PID missing from the ``readdir`` or ``getdents`` listing while another view has it, still
missing when that listing is taken again after every other view (a process born or gone in
between is not hidden) and still alive as a thread-group leader, is hidden from that listing.
Missing from ``cgroup`` alone is not: zombies leave their cgroup, and processes migrate during
the walk. Besides: mounts on ``/proc/PID`` (our ``mountinfo`` and PID 1's) and
``/etc/ld.so.preload`` in the host's root and in each container's (opened beneath that root,
never through a symlink out, bounded), as ``FileSnapshot``s with their ``text``.

I/O only; what any of it means is ``detectors/hiding.py``'s. Owned by one thread.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent.collectors import cgroup_procs, proclist
from agent.collectors.confined import Refused, open_beneath
from agent.collectors.procparse import decode
from agent.collectors.procread import parse_stat, read_bounded, read_once
from agent.model import FileSnapshot, Hashes

PROBE_SLICE = 4096  # /proc/N probed per run
MAX_CGROUPS = 20_000  # cgroup directories walked per run
MAX_PRELOAD_BYTES = 16 << 10
PRELOAD_PATH = "/etc/ld.so.preload"
_HIERARCHIES = ("", "unified", "pids", "cpu", "cpu,cpuacct", "systemd")  # the first with a cgroup.procs at its top
READDIR, GETDENTS, CGROUP = "readdir", "getdents", "cgroup"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW


@dataclass(frozen=True, slots=True)
class CrossViewResult:
    """What one run saw. ``hidden``: PID -> the listings it is missing from (``readdir``, ``getdents``)."""

    hidden: dict[int, tuple[str, ...]] = field(default_factory=dict)
    mounted: frozenset[int] = frozenset()  # PIDs with a mount on /proc/PID (or below it)
    preloads: tuple[FileSnapshot, ...] = ()  # /etc/ld.so.preload files found (host: container_id "")
    views: dict[str, int] = field(default_factory=dict)  # PIDs per view (the cgroup one absent when unreadable)
    probed: tuple[int, int] = (0, 0)  # the N probed: [lo, hi); (0, 0) when the census agreed
    elapsed: float = 0.0


def _digits(names: Iterable[str]) -> set[int]:
    return {int(n) for n in names if n.isascii() and n.isdigit()}


class CrossView:
    def __init__(self, proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup", *, probe_slice: int = PROBE_SLICE,
                 max_cgroups: int = MAX_CGROUPS, census: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.proc_root = os.fspath(proc_root)
        self.cgroup_root = os.fspath(cgroup_root)
        self.probe_slice = probe_slice
        self.census = census
        self.max_cgroups = max_cgroups
        self.clock = clock
        self.cursor = 1  # the next N the probe looks at
        self.cgroups_truncated = 0  # runs whose cgroup walk hit max_cgroups

    # ------------------------------------------------------------------ the views

    def readdir_view(self) -> set[int]:
        return _digits(os.listdir(self.proc_root))

    def getdents_view(self) -> set[int]:
        return set(proclist.pids(self.proc_root))

    def cgroup_view(self) -> set[int] | None:
        """Every PID in a ``cgroup.procs`` of one hierarchy; None when no hierarchy can be read."""
        for name in _HIERARCHIES:
            top = os.path.join(self.cgroup_root, name) if name else self.cgroup_root
            try:
                fd = os.open(top, _DIR_FLAGS)
            except OSError:
                continue
            try:
                try:
                    os.stat("cgroup.procs", dir_fd=fd)
                except OSError:
                    continue
                found: set[int] = set()
                if not cgroup_procs.walk(fd, found, self.max_cgroups):
                    self.cgroups_truncated += 1
                return found
            finally:
                os.close(fd)
        return None

    def pid_max(self) -> int:
        try:
            return max(2, int(read_once(f"{self.proc_root}/sys/kernel/pid_max")))
        except (OSError, ValueError):
            return 1 << 22  # the kernel's upper limit on 64-bit

    def probe(self, known: set[int]) -> tuple[set[int], tuple[int, int]]:
        """Whether ``/proc/N`` exists, for the next ``probe_slice`` N (wrapping at ``pid_max``): the
        thread-group leaders found that ``known`` lacks, and the range probed."""
        top = self.pid_max()
        lo = self.cursor if 1 <= self.cursor < top else 1
        hi = min(top, lo + self.probe_slice)
        self.cursor = hi if hi < top else 1
        found: set[int] = set()
        dfd = os.open(self.proc_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            exists = os.access  # faccessat: no exception object per absent N (a third cheaper than stat)
            for n in range(lo, hi):
                if n in known or not exists(str(n), os.F_OK, dir_fd=dfd):
                    continue
                if self._is_leader(n):  # a thread's /proc/TID answers too, unlisted: not a process
                    found.add(n)
        finally:
            os.close(dfd)
        return found, (lo, hi)

    def task_counters(self) -> tuple[int, int] | None:
        """(tasks ever created: ``processes`` of ``/proc/stat``, tasks now: ``nr_threads`` of ``/proc/loadavg``)."""
        try:
            forks = re.search(rb"^processes\s+(\d+)", read_bounded(f"{self.proc_root}/stat", limit=1 << 20), re.MULTILINE)
            loadavg = read_once(f"{self.proc_root}/loadavg").split()
            return (int(forks.group(1)), int(loadavg[3].split(b"/")[1])) if forks else None
        except (OSError, ValueError, IndexError):
            return None

    def census_agrees(self, pids: Iterable[int], tries: int = 1) -> bool:
        """The threads of ``pids`` are every task the kernel counts, and no task was created meanwhile.
        ``tries``: attempts while tasks come and go (an attempt stops at the first fork it notices)."""
        pids = list(pids)
        for _ in range(tries):
            before = self.task_counters()
            if before is None:
                return False
            total, moved = 0, False
            for n, pid in enumerate(pids, 1):
                try:
                    total += parse_stat(read_once(f"{self.proc_root}/{pid}/stat")).num_threads
                except (OSError, ValueError):  # gone (the count moved) or unreadable: no agreement
                    moved = True
                    break
                if n % 256 == 0 and self.task_counters() != before:
                    moved = True
                    break
            if not moved and self.task_counters() == before:
                return total == before[1]  # steady and still apart: something is unlisted
        return False

    def threads_of(self, pid: int) -> int | None:
        try:
            return parse_stat(read_once(f"{self.proc_root}/{pid}/stat")).num_threads
        except (OSError, ValueError):
            return None

    def _is_leader(self, pid: int) -> bool:
        """``pid`` is alive and a thread-group leader (``Tgid`` in its status is itself)."""
        try:
            text = read_once(f"{self.proc_root}/{pid}/status", size=16384)
        except OSError:
            return False
        m = re.search(rb"^Tgid:\s*(\d+)", text, re.MULTILINE)
        return m is not None and int(m.group(1)) == pid

    # ------------------------------------------------------------------ mounts and preload files

    def mounted(self) -> set[int]:
        """PIDs with something mounted on ``/proc/PID`` (or below it), in our mount namespace or PID 1's."""
        found: set[int] = set()
        root = self.proc_root.rstrip("/")
        for source, prefix in ((f"{root}/self/mountinfo", root + "/"), (f"{root}/1/mountinfo", "/proc/")):
            try:
                text = decode(read_bounded(source, limit=16 << 20))
            except OSError:
                continue
            for line in text.splitlines():
                fields = line.split(" ", 5)
                if len(fields) < 5 or not fields[4].startswith(prefix):
                    continue
                head = fields[4][len(prefix):].split("/", 1)[0]
                if head.isascii() and head.isdigit():
                    found.add(int(head))
        return found

    def preload_file(self, pid: int | str, container_id: str = "") -> FileSnapshot | None:
        """``/etc/ld.so.preload`` in the root of ``pid`` (1: the host's; "self": ours), opened beneath that root."""
        root = f"{self.proc_root}/{pid}/root"
        try:
            fd = open_beneath(root, PRELOAD_PATH)
        except Refused as e:  # a symlink, or not a regular file: ld.so would follow it, we do not
            return FileSnapshot(path=PRELOAD_PATH, size=0, mode=stat.S_IFLNK if e.reason == "symlink" else 0,
                                container_id=container_id, partial=(e.reason,))
        except PermissionError:
            raise
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ESRCH):
                return None
            return FileSnapshot(path=PRELOAD_PATH, size=0, mode=0, container_id=container_id, partial=("open",))
        try:
            st = os.fstat(fd)
            raw = os.read(fd, MAX_PRELOAD_BYTES + 1)
        finally:
            os.close(fd)
        partial = ("text",) if len(raw) > MAX_PRELOAD_BYTES else ()
        raw = raw[:MAX_PRELOAD_BYTES]
        hashes = None if partial else Hashes(hashlib.sha256(raw).hexdigest(), hashlib.sha1(raw).hexdigest(),
                                             hashlib.md5(raw).hexdigest(), len(raw))
        return FileSnapshot(path=PRELOAD_PATH, size=st.st_size, mode=st.st_mode, hashes=hashes, container_id=container_id,
                            head=raw[:64], text=decode(raw), partial=partial)

    def preload_files(self, roots: Iterable[tuple[str, int]] = ()) -> list[FileSnapshot]:
        """The host's preload file and each ``(container_id, init pid)``'s."""
        out = []
        try:
            host = self.preload_file(1)
        except PermissionError:  # PID 1 out of our reach (a VM's init, a stricter LSM): our own root
            host = self.preload_file("self")
        if host is not None:
            out.append(host)
        for cid, pid in roots:
            if pid <= 1:
                continue
            try:
                snap = self.preload_file(pid, cid)
            except OSError:
                continue
            if snap is not None:
                out.append(snap)
        return out

    # ------------------------------------------------------------------ all of it

    def run(self, roots: Iterable[tuple[str, int]] = (), *,
            census: tuple[int, tuple[int, int]] | None = None) -> CrossViewResult:
        """Every view once (the probe: one slice), then the listings again for what one of them lacked.

        ``census``: (the caller's count of the threads of every process it listed, the ``task_counters``
        it read the same before and after); when the count is that ``nr_threads`` and the counters are
        still the same now (no task created or gone since), no task is unlisted, and neither the cgroup
        walk nor the probe is made (the daemon's pass has just read every ``stat`` for behaviour: the
        count costs it nothing)."""
        started = self.clock()
        agreed = census is not None and census[0] == census[1][1] and self.task_counters() == census[1]
        raw1 = self.getdents_view()
        cg = None if agreed else self.cgroup_view()
        libc1 = self.readdir_view()
        known = raw1 | libc1 | (cg or set())
        if agreed or (self.census and known == raw1 and self.census_agrees(raw1, tries=3)):
            probed, span = set(), (0, 0)  # every task the kernel counts is listed: nothing for the probe to find
        else:
            probed, span = self.probe(known)
        everyone = known | probed
        suspects = (everyone - raw1) | (everyone - libc1)
        hidden: dict[int, tuple[str, ...]] = {}
        if suspects:  # taken again after every other view: a PID born since is in it now
            raw2, libc2 = self.getdents_view(), self.readdir_view()
            for pid in sorted(suspects):
                views = tuple(v for v, first, again in ((READDIR, libc1, libc2), (GETDENTS, raw1, raw2))
                              if pid not in first and pid not in again)
                if views and self._is_leader(pid):
                    hidden[pid] = views
        sizes = {READDIR: len(libc1), GETDENTS: len(raw1)}
        if cg is not None:
            sizes[CGROUP] = len(cg)
        return CrossViewResult(hidden=hidden, mounted=frozenset(self.mounted()), preloads=tuple(self.preload_files(roots)),
                               views=sizes, probed=span, elapsed=self.clock() - started)
