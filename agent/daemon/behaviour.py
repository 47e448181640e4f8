"""CPU behaviour over a sliding window, per process and per container cgroup.

``BehaviourModel`` is fed samples in time order by one owner (the daemon's sampling loop)
and answers verdicts. It does no I/O; the clock is injected and only paces the memory-scan
rate limit, everything else runs on the samples' own ``t`` (the same monotonic time base).
State is bounded: entries not seen for two windows are forgotten, and at most ``max_pids``
processes / ``max_cgroups`` containers are tracked. A process gets an entry only once its CPU
moves (or a detailed reading, a noted artefact or a scan request names it): the sampler keeps its
last reading and hands it over in the sample (``since``), which seeds the entry's series, and
reports a sleeping process only while it has an entry (``tracked``). A host of 50,000 sleeping
processes so costs a small table, not a full one churned every pass. When
the table is full, an idle entry (no CPU since its last reading, nothing noted) is evicted
first, oldest first: a flood of idle or nearly idle processes must never push out the busy or
suspicious ones (every eviction is counted).

CPU is judged against what a process may use: a process (or a container cgroup) whose samples
carry a CPU limit (its cgroup's quota, below ``busy_core``) is sustained when it keeps using
``limit_share`` of it, flat, even at a fraction of a core; a miner capped by its quota is.
"""

from __future__ import annotations

import statistics
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection

from agent.daemon.cpu_series import MAX_READINGS, CpuSeries
from agent.detectors.behaviour import randomx_size
from agent.model import (
    HUGEPAGES_RAISED, MSR_LOADED, MSR_WRITES_ON, BehaviourVerdict, CgroupCpuSample, CgroupVerdict, CpuStats,
    HostArtefacts, ProcessCpuSample,
)

_EVICT_SCAN = 256  # entries looked at (oldest first) for an idle one to evict
_IDLE_CORES = 0.01
_MIN_LIMIT_CORES = 0.05  # a limit below this is not judged relative (a few ms per second say nothing)


class _Proc:
    __slots__ = ("start_ticks", "series", "busy_counts", "threads", "hugetlb_kb", "first_hugetlb_t",
                 "anon_mb", "msr_open", "noted", "first_seen", "last_seen", "last_scan", "scan_requested",
                 "limit", "scanned_sustained")

    def __init__(self, start_ticks: int, t: float) -> None:
        self.start_ticks = start_ticks
        self.series = CpuSeries()
        self.busy_counts: deque[tuple[float, int]] = deque(maxlen=MAX_READINGS)
        self.threads = 0
        self.hugetlb_kb = 0
        self.first_hugetlb_t: float | None = None
        self.anon_mb: tuple[int, ...] = ()
        self.msr_open = False
        self.noted: dict[str, None] = {}
        self.first_seen = self.last_seen = t
        self.last_scan: float | None = None
        self.scan_requested = False
        self.limit: float | None = None
        self.scanned_sustained = False  # scanned while sustained: the first sustained verdict gets a scan

    def randomx_sized(self) -> bool:
        return bool(randomx_size(self.hugetlb_kb / 1024)) or any(randomx_size(mb) for mb in self.anon_mb)


class _Cgroup:
    __slots__ = ("series", "last_seen", "limit")

    def __init__(self, t: float) -> None:
        self.series = CpuSeries()
        self.last_seen = t
        self.limit: float | None = None


class BehaviourModel:
    """Sliding-window CPU behaviour and RandomX artefacts; one owner feeds it in time order."""

    def __init__(
        self,
        window_s: float = 60.0,
        min_samples: int = 4,
        *,
        min_span_s: float = 20.0,
        busy_core: float = 0.8,
        scan_core: float = 0.5,
        limit_share: float = 0.85,
        max_cv: float = 0.25,
        rescan_s: float = 600.0,
        max_pids: int = 20_000,
        max_cgroups: int = 5_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s, self.min_samples, self.min_span_s = window_s, min_samples, min_span_s
        self.busy_core, self.scan_core, self.max_cv, self.rescan_s = busy_core, scan_core, max_cv, rescan_s
        self.limit_share = limit_share
        self.max_pids, self.max_cgroups = max_pids, max_cgroups
        self._clock = clock
        self._procs: OrderedDict[int, _Proc] = OrderedDict()  # least recently seen first
        self._cgroups: OrderedDict[str, _Cgroup] = OrderedDict()
        self._host: HostArtefacts | None = None
        self._host_changes: deque[tuple[float, str]] = deque(maxlen=32)
        self._latest_t = float("-inf")
        self._last_prune = float("-inf")
        self.evicted = 0
        self.forgotten = 0

    # ------------------------------------------------------------------ feeding

    def observe(self, s: ProcessCpuSample) -> None:
        st = self._procs.get(s.pid)
        if st is None or st.start_ticks != s.start_ticks:
            if st is not None:
                del self._procs[s.pid]  # the pid was reused: the old history belongs to another process
            seed = s.since
            moved = seed is not None and seed[0] < s.t and seed[1] < s.cpu_seconds_total
            detailed = s.hugetlb_kb is not None or s.cpu_limit is not None or s.anon_big_mappings_mb or s.msr_open
            if not (moved or detailed):  # idle (or first seen): no entry yet
                self._advance(s.t)
                return
        st = self._proc(s.pid, s.start_ticks, s.t)
        if not st.series.readings and s.since is not None and s.since[0] < s.t:
            st.series.add(*s.since, self.window_s)  # the reading before it moved (or was named)
            st.first_seen = min(st.first_seen, s.since[0])
        st.last_seen = max(st.last_seen, s.t)
        st.series.add(s.t, s.cpu_seconds_total, self.window_s)
        st.threads = s.threads or st.threads
        if s.per_thread_busy:
            st.busy_counts.append((s.t, sum(1 for b in s.per_thread_busy if b >= self.busy_core)))
        if s.hugetlb_kb is not None:  # a detailed read: artefacts are current
            st.hugetlb_kb = s.hugetlb_kb
            if s.hugetlb_kb > 0 and st.first_hugetlb_t is None:
                st.first_hugetlb_t = s.t
        if s.hugetlb_kb is not None or s.anon_big_mappings_mb:
            st.anon_mb = s.anon_big_mappings_mb
        if s.hugetlb_kb is not None or s.cpu_limit is not None:  # its CPU moved: status and limit were read
            st.limit = s.cpu_limit
        st.msr_open = st.msr_open or s.msr_open
        self._advance(s.t)

    def observe_cgroup(self, s: CgroupCpuSample) -> None:
        cg = self._cgroups.get(s.container_id)
        if cg is None:
            if len(self._cgroups) >= self.max_cgroups:
                self._cgroups.popitem(last=False)
                self.evicted += 1
            cg = self._cgroups[s.container_id] = _Cgroup(s.t)
        else:
            self._cgroups.move_to_end(s.container_id)
        cg.series.add(s.t, s.usage_seconds, self.window_s)
        cg.limit = s.cpu_limit
        cg.last_seen = max(cg.last_seen, s.t)
        self._advance(s.t)

    def observe_host(self, h: HostArtefacts) -> tuple[str, ...]:
        """Record host tampering since the previous reading; returns the changes seen (the first reading is the baseline)."""
        prev, self._host = self._host, h
        if prev is None:
            return ()
        changes = []
        if h.nr_hugepages_total > prev.nr_hugepages_total:
            changes.append(HUGEPAGES_RAISED)
        if h.msr_loaded and not prev.msr_loaded:
            changes.append(MSR_LOADED)
        if h.msr_allow_writes == "on" and prev.msr_allow_writes != "on":
            changes.append(MSR_WRITES_ON)
        for kind in changes:
            self._host_changes.append((h.t, kind))
        return tuple(changes)

    def note_artefact(self, pid: int, start_ticks: int, artefact: str, t: float) -> None:
        """Attach an artefact seen elsewhere (e.g. MSR_MODPROBE_CHILD from an exec event) to a process."""
        self._proc(pid, start_ticks, t).noted[artefact] = None

    def request_scan(self, pid: int, start_ticks: int, t: float) -> None:
        """Make a process a memory-scan candidate whatever its CPU use (still rate-limited)."""
        self._proc(pid, start_ticks, t).scan_requested = True

    def forget(self, pid: int) -> None:
        if self._procs.pop(pid, None) is not None:
            self.forgotten += 1

    # ---------------------------------------------------------------- answering

    def verdict(self, pid: int, start_ticks: int | None = None) -> BehaviourVerdict | None:
        st = self._procs.get(pid)
        if st is None or (start_ticks is not None and start_ticks != st.start_ticks):
            return None
        stats = st.series.stats()
        sustained = self._judge_cpu(stats, st.limit)
        recent = [n for t, n in st.busy_counts if t >= st.last_seen - self.window_s]
        busy = int(statistics.median_low(recent)) if recent else 0
        return BehaviourVerdict(pid, st.start_ticks, stats, sustained, busy, st.threads, st.hugetlb_kb, st.anon_mb,
                                st.msr_open, self._artefacts(st, sustained), st.limit)

    def cgroup_verdict(self, container_id: str) -> CgroupVerdict | None:
        cg = self._cgroups.get(container_id)
        if cg is None:
            return None
        stats = cg.series.stats()
        return CgroupVerdict(container_id, stats, self._judge_cpu(stats, cg.limit), cg.limit)

    def candidates(self, limit: int = 2) -> list[int]:
        """Pids to scan in memory now, marked as scanned: requested, with artefacts, or steadily busy.

        Steadily busy uses ``scan_core`` (lower than ``busy_core``: a miner on a contended host gets
        less than a core per thread, and a scan of a small process costs tens of milliseconds), or
        sustained at its CPU limit. A process using any CPU with a RandomX-sized allocation (huge
        pages or an anonymous mapping) is a candidate whatever its rate. The same process (pid and
        start time) is handed out at most once per ``rescan_s``, except once more when it first
        turns sustained (its memory hits are judged beside the sustained CPU then).
        """
        now = self._clock()
        ranked = []
        for pid, st in self._procs.items():
            fresh = st.last_scan is None or now - st.last_scan >= self.rescan_s
            if not fresh and st.scanned_sustained:
                continue
            rate = st.series.last_rate()
            sized = rate > _IDLE_CORES and st.randomx_sized()
            limited = st.limit is not None and rate >= self.limit_share * st.limit / 2
            if not (st.scan_requested or st.msr_open or st.noted or sized or limited or rate >= self.scan_core / 2):
                continue  # the cheap check first: idle processes cost no statistics
            v = self.verdict(pid)
            if not fresh and not v.sustained:
                continue  # scanned lately; only turning sustained earns another scan
            suspicious = st.scan_requested or v.msr_open or bool(v.artefacts) or sized
            if suspicious or v.sustained or self._steady(v.stats, self.scan_core):
                ranked.append((not suspicious, -v.mean_cpu, pid, v.sustained))
        ranked.sort()
        out = []
        for _, _, pid, sustained in ranked[:limit]:
            st = self._procs[pid]
            st.last_scan, st.scan_requested = now, False
            st.scanned_sustained = st.scanned_sustained or sustained
            out.append(pid)
        return out

    def __len__(self) -> int:
        return len(self._procs)

    def tracked(self) -> Collection[int]:
        """The pids with an entry (a live view): the idle processes the sampler is to report."""
        return self._procs.keys()

    # ---------------------------------------------------------------- internals

    def _judge_cpu(self, s: CpuStats, limit: float | None) -> bool:
        """Sustained: flat at ``busy_core``, or flat at ``limit_share`` of a lower CPU limit."""
        if limit is None or limit < _MIN_LIMIT_CORES:
            return self._steady(s, self.busy_core)
        return self._steady(s, min(self.busy_core, self.limit_share * limit))

    def _steady(self, s: CpuStats, core: float) -> bool:
        return (s.samples >= self.min_samples and s.span_s >= self.min_span_s
                and s.mean_cpu >= core and s.flatness <= self.max_cv)

    def _proc(self, pid: int, start_ticks: int, t: float) -> _Proc:
        st = self._procs.get(pid)
        if st is not None and st.start_ticks != start_ticks:
            del self._procs[pid]  # the pid was reused: the old history belongs to another process
            st = None
        if st is None:
            if len(self._procs) >= self.max_pids:
                self._evict_one()
            st = self._procs[pid] = _Proc(start_ticks, t)
        else:
            self._procs.move_to_end(pid)
        return st

    def _evict_one(self) -> None:
        """Make room for one entry. First choice: the least recently seen entry known to be idle (two
        readings, no CPU, nothing noted). Else the *newest* entry with a single reading: the older ones
        then keep their place until their second reading shows whether they are busy, so a table
        overrun by a flood still settles (idle entries rotate, busy ones stay) instead of evicting
        everything before it is read twice. Else the least recently seen."""
        victim = None
        for n, (pid, st) in enumerate(self._procs.items()):
            if n >= _EVICT_SCAN:
                break
            if self._evictable(st) and len(st.series.readings) >= 2 and st.series.last_rate() < _IDLE_CORES:
                victim = pid
                break
        if victim is None:
            for n, pid in enumerate(reversed(self._procs)):
                if n >= _EVICT_SCAN:
                    break
                st = self._procs[pid]
                if self._evictable(st) and len(st.series.readings) < 2:
                    victim = pid
                    break
        if victim is None:
            victim = next(iter(self._procs))
        del self._procs[victim]
        self.evicted += 1

    @staticmethod
    def _evictable(st: _Proc) -> bool:
        return not (st.noted or st.msr_open or st.scan_requested or st.hugetlb_kb or st.randomx_sized())

    def _artefacts(self, st: _Proc, sustained: bool) -> tuple[str, ...]:
        found = dict(st.noted)
        for t, kind in self._host_changes:
            if kind == HUGEPAGES_RAISED:
                if st.first_hugetlb_t is not None and abs(st.first_hugetlb_t - t) <= self.window_s:
                    found[kind] = None
            elif sustained and abs(st.first_seen - t) <= self.window_s:
                found[kind] = None  # the msr module appeared around when this busy process started
        return tuple(found)

    def _advance(self, t: float) -> None:
        """Forget what has not been seen for two windows (checked once per window)."""
        self._latest_t = max(self._latest_t, t)
        if self._latest_t - self._last_prune < self.window_s:
            return
        self._last_prune = self._latest_t
        horizon = self._latest_t - 2 * self.window_s
        for pid in [p for p, st in self._procs.items() if st.last_seen < horizon]:
            del self._procs[pid]
            self.forgotten += 1
        for cid in [c for c, cg in self._cgroups.items() if cg.last_seen < horizon]:
            del self._cgroups[cid]
        while self._host_changes and self._host_changes[0][0] < horizon:
            self._host_changes.popleft()


def is_msr_modprobe(cmdline: tuple[str, ...]) -> bool:
    """True for ``modprobe msr ...`` or a shell running it (XMRig's ``sh -c "/sbin/modprobe msr allow_writes=on"``)."""
    words = " ".join(cmdline).replace(";", " ").replace("&", " ").split()
    for i, word in enumerate(words):
        if word.rsplit("/", 1)[-1] == "modprobe" and "msr" in words[i + 1:i + 4]:
            return True
    return False
