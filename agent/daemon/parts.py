"""What the worker works with: its parts (each owning its own state) and the counters it keeps.

Apart from ``worker.py`` so that the worker's own parts (``processes.py``) can name them without
importing the worker.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the parts' types only: the worker is handed instances, it builds none
    from agent.collectors.cpu_sampler import CpuSampler
    from agent.collectors.crossview import CrossView
    from agent.collectors.fswatch import FileWatcher
    from agent.collectors.snapshots import SnapshotCollector
    from agent.daemon.behaviour import BehaviourModel
    from agent.daemon.bulk import BulkLane
    from agent.daemon.containers import ContainerRegistry
    from agent.daemon.emitter import Emitter
    from agent.daemon.known_execs import KnownExecutables
    from agent.daemon.tracker import ProcessTracker
    from agent.judge import Judge


@dataclass
class WorkerStats:
    """Counters owned by the worker thread; the metrics collector only reads them."""

    events: Counter = field(default_factory=Counter)
    findings: Counter = field(default_factory=Counter)
    scans: int = 0
    scan_seconds: float = 0.0
    last_scan_seconds: float = 0.0
    reloads: int = 0
    reload_failures: int = 0
    worker_errors: int = 0
    alert_spool_errors: int = 0
    over_budget: Counter = field(default_factory=Counter)  # units of work that took longer than their budget
    execs: Counter = field(default_factory=Counter)  # quiet_at_a_glance, read_whole, glance_failed
    crossview: Counter = field(default_factory=Counter)  # runs, census_agreed, hidden, mounted, preload_files
    crossview_seconds: float = 0.0  # the last cross-view's cost


@dataclass
class Parts:
    """What the worker works with; each part owns its own state (see docs/ARCHITECTURE.md)."""

    snapshots: SnapshotCollector  # process snapshots with YARA on their executable
    bulk: BulkLane  # file inspections and memory scans, off this thread (results come back as events)
    file_watcher: FileWatcher  # watched paths and writable layers (the worker refreshes it)
    containers: ContainerRegistry  # containers, image evidence, cgroups, layer watches
    tracker: ProcessTracker  # which processes to look at again
    known: KnownExecutables  # executables judged clean whole: their execs stop at a glance
    behaviour: BehaviourModel  # CPU behaviour and RandomX artefacts over time
    sampler: CpuSampler  # the periodic CPU readings that feed it
    judge: Judge  # pure: snapshot + context -> finding
    emitter: Emitter  # response by policy, then the alert
    crossview: CrossView | None = None  # hidden processes and preload libraries (None: not looked for)
