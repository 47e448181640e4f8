"""Which processes the worker knows, and which of them to look at again in the periodic pass.

A process is re-inspected in its first ``young_rechecks`` passes while it is young (its pool
connection comes after exec; a process already old when first seen, at start-up, is not young),
in every pass once it has had evidence of at least medium severity, and every
``low_every`` passes when all it showed is low (a binary in /tmp: CI runners have thousands). The table is bounded: when it is
full, the least suspicious entry is evicted (never the newest: a flood of idle processes
must not push out the miner), and every eviction is counted and logged. A process that is
not tracked is still judged when it comes; it is just not remembered.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import structlog

from agent.model import Finding, ProcessSnapshot, Severity

log = structlog.get_logger("minerwatch.tracker")

YOUNG_RECHECKS = 3
LOW_EVERY = 6  # passes between two whole reads of a process whose worst was low
MAX_TRACKED = 50_000
_LOG_EVERY = 1000  # evictions between two log lines (the first is always logged)


@dataclass
class Tracked:
    start_ticks: int
    container_id: str
    checks: int = 0  # inspections so far
    severity: Severity = Severity.NONE  # highest severity of its findings so far

    @property
    def interesting(self) -> bool:
        return self.severity > Severity.NONE


class ProcessTracker:
    def __init__(self, max_tracked: int = MAX_TRACKED, young_rechecks: int = YOUNG_RECHECKS,
                 low_every: int = LOW_EVERY) -> None:
        self.max_tracked = max_tracked
        self.young_rechecks = young_rechecks
        self.low_every = low_every
        # Two tables, oldest first: evidence-free processes are evicted before any with evidence.
        self._plain: OrderedDict[int, Tracked] = OrderedDict()
        self._flagged: OrderedDict[int, Tracked] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._plain) + len(self._flagged)

    def __contains__(self, pid: int) -> bool:
        return pid in self._plain or pid in self._flagged

    def get(self, pid: int) -> Tracked | None:
        return self._plain.get(pid) or self._flagged.get(pid)

    def seen(self, snap: ProcessSnapshot) -> Tracked:
        """The entry for this process (a new one for a new process or a reused PID), its check counted."""
        entry = self.get(snap.pid)
        if entry is None or entry.start_ticks != snap.start_ticks:
            self._drop(snap.pid)
            if len(self) >= self.max_tracked:
                self._evict()
            entry = self._plain[snap.pid] = Tracked(snap.start_ticks, snap.container_id)
        entry.checks += 1
        return entry

    def record(self, pid: int, finding: Finding) -> None:
        """A finding for ``pid``: it is re-inspected every pass from now on."""
        entry = self.get(pid)
        if entry is None:
            return
        if not entry.interesting:
            del self._plain[pid]
            self._flagged[pid] = entry
        entry.severity = max(entry.severity, finding.severity)

    def due(self, pid: int, *, born_before: int = -1, pass_no: int = 0) -> bool:
        """Whether the periodic pass should read a tracked ``pid`` whole again: young (started after
        ``born_before``, in clock ticks since boot, and checked fewer than ``young_rechecks`` times),
        medium or worse, or low and this is one of its every-``low_every`` passes."""
        entry = self.get(pid)
        if entry is None:
            return False
        if entry.checks <= self.young_rechecks and entry.start_ticks >= born_before:
            return True
        if entry.severity >= Severity.MEDIUM:
            return True
        return entry.interesting and (pass_no + pid) % self.low_every == 0

    def forget_gone(self, alive: Collection[int]) -> list[int]:
        """Drop processes not in ``alive``; returns their PIDs."""
        gone = [p for table in (self._plain, self._flagged) for p in table if p not in alive]
        for pid in gone:
            self._drop(pid)
        return gone

    def pids(self) -> Iterable[int]:
        return [*self._plain, *self._flagged]

    def _drop(self, pid: int) -> None:
        self._plain.pop(pid, None)
        self._flagged.pop(pid, None)

    def _evict(self) -> None:
        if self._plain:
            pid, _ = self._plain.popitem(last=False)
        else:  # everything has evidence: the oldest of the least severe goes
            pid = min(self._flagged, key=lambda p: self._flagged[p].severity)
            del self._flagged[pid]
        self.evicted += 1
        if self.evicted % _LOG_EVERY == 1:
            log.warning("tracker_full", max_tracked=self.max_tracked, evicted=self.evicted, last_evicted=pid)
