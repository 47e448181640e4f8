"""The worker thread: routes each event to the part that owns it, and runs the periodic pass.

It owns no detection state of its own: the parts it is given own theirs (``wiring`` builds
them), and all of them are used from this thread only. An exec event becomes a snapshot,
judged in its container's context with its behaviour attached; a container event updates
the registry and judges the container's processes. Bulk work (file inspections, memory
scans) runs in the bulk lane (``daemon/bulk.py``); its results come back here to be judged.
Every finding goes out through the emitter (response by policy, then the alert).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Collection

import structlog

from agent.collectors.cpu_sampler import SampledPass
from agent.config import Config
from agent.daemon.bulk import UseRules
from agent.daemon.parts import Parts, WorkerStats
from agent.daemon.processes import Processes
from agent.errors import MinerwatchError
from agent.events import ContainerEvent, EventQueue, ExecEvent, FileScanned, MemoryScan, MemoryScanned, Reload
from agent.signatures import Signatures

log = structlog.get_logger("minerwatch.worker")

MEMORY_SCANS_PER_PASS = 2
SERVE_EVERY = 16  # processes of the first scan between two looks at the waiting events
CROSSVIEW_EVERY = 3  # periodic passes between two cross-views of the process table (and one at start)
EVENT_BUDGET_S = 1.0  # one event (a process, a container, a file's verdict) should take less; the pass: one interval


class Worker:
    def __init__(self, config: Config, signatures: Signatures, parts: Parts, queue: EventQueue, *,
                 clock: Callable[[], float], own_pid: int, own_ancestors: Collection[int] = (), own_container: str = "",
                 load: Callable[[], tuple[Config, Signatures]] | None = None,
                 on_reload: Callable[[str], None] | None = None, stats: WorkerStats | None = None) -> None:
        """``own_pid`` and ``own_ancestors``: the agent's own process tree, the only processes never judged
        (its container is judged like any other); ``load`` reads config and signatures afresh for a
        ``Reload`` event (MinerwatchError when bad); ``on_reload(status)`` is told how it went."""
        self.config, self.signatures = config, signatures
        self.p = parts
        self.queue = queue
        self.clock = clock
        self.load, self.on_reload = load, on_reload or (lambda status: None)
        self.stats = stats or WorkerStats()
        self.processes = Processes(parts, self.stats, clock=clock, own_pid=own_pid, own_ancestors=own_ancestors,
                                   own_container=own_container)
        self.ready = threading.Event()
        self.heartbeat = clock()

    # ------------------------------------------------------------------ the thread

    def run(self, stop: threading.Event) -> None:
        """The worker thread's loop: the first scan, then events and a periodic pass every interval."""
        try:
            self.initial_scan(stop)
        except Exception as exc:  # crash barrier: a bad first scan must not keep the agent from running
            self.stats.worker_errors += 1
            log.exception("initial_scan_failed", error=repr(exc))
        self.ready.set()
        next_tick = self.clock() + self.config.agent.interval
        while not stop.is_set():
            self.heartbeat = self.clock()
            event = self.queue.get(timeout=max(0.0, min(0.5, next_tick - self.clock())))
            if event is not None:
                self._handle_safely(event)
            if self.clock() >= next_tick:
                self._handle_safely(None)
                next_tick = self.clock() + self.config.agent.interval

    def _handle_safely(self, event) -> None:
        """One unit of work (an event; None: the periodic pass) behind the crash barrier, timed against
        its budget: a failure never kills the worker, and a unit over budget is counted and logged."""
        started = self.clock()
        try:
            if event is None:
                self.periodic()
            else:
                self.handle(event)
        except Exception as exc:  # crash barrier: logged and counted, the next event goes on
            self.stats.worker_errors += 1
            # Not event=: that is structlog's own first argument, and the TypeError killed the worker.
            log.exception("worker_error", failed_event=repr(event)[:200], error=repr(exc))
        elapsed = self.clock() - started
        budget = self.config.agent.interval if event is None else EVENT_BUDGET_S
        if elapsed > budget:
            kind = "periodic" if event is None else type(event).__name__
            self.stats.over_budget[kind] += 1
            log.warning("work_over_budget", unit=kind, seconds=round(elapsed, 3), budget=budget,
                        subject=repr(event)[:200] if event is not None else "")

    def serve_waiting(self, limit: int = 256) -> None:
        """Handle events already waiting (exec, container, results), so long work never holds them up."""
        for _ in range(limit):
            event = self.queue.get(timeout=0)
            if event is None:
                return
            self.heartbeat = self.clock()
            self._handle_safely(event)

    def handle(self, event) -> None:
        self.stats.events[type(event).__name__] += 1
        if isinstance(event, ExecEvent):
            self.processes.on_exec(event.pid)
        elif isinstance(event, ContainerEvent):
            self.on_container(event)
        elif isinstance(event, FileScanned):
            self.on_file(event)
        elif isinstance(event, MemoryScanned):
            self.on_memory(event)
        elif isinstance(event, Reload):
            self.on_reload_event()

    # ------------------------------------------------------------------ containers

    def on_container(self, event: ContainerEvent) -> None:
        if event.action == "resync":
            self.resync()
        elif event.action in ("start", "unpause", "exec_start"):
            if self.p.containers.refresh(event.container_id) is not None:
                self.judge_container_processes(event.container_id)
        elif event.action in ("die", "destroy"):
            self.p.containers.forget(event.container_id)

    def resync(self) -> None:
        for cid in self.p.containers.resync() or ():
            self.judge_container_processes(cid)

    def judge_container_processes(self, container_id: str) -> None:
        """Judge every process of a container now (a start event may come before its exec events);
        a container none of whose processes can be read yet is judged on its own."""
        found = False
        info = self.p.containers.get(container_id)
        for pid in self.p.snapshots.container_pids(container_id, info.pid if info is not None else 0):
            found |= self.processes.inspect_pid(pid, in_container=container_id)
        if not found:
            self.judge_container(container_id)

    def judge_container(self, container_id: str) -> None:
        """A container with image evidence: judged on it and on its cgroup's CPU behaviour."""
        info = self.p.containers.get(container_id)
        if info is None or not self.p.containers.image_evidence(container_id):
            return
        info = dataclasses.replace(info, behaviour=self.p.behaviour.cgroup_verdict(container_id))
        if finding := self.p.judge.container(info):
            self.p.emitter.emit(finding)

    # ------------------------------------------------------------------ files

    def on_file(self, scanned: FileScanned) -> None:
        cid = scanned.event.container_id
        container = self.p.containers.get(cid) if cid else None
        if finding := self.p.judge.file(scanned.snap, container):
            self.p.emitter.emit(finding)

    def on_memory(self, scanned: MemoryScanned) -> None:
        self.processes.on_memory(scanned)

    # ------------------------------------------------------------------ periodic

    def initial_scan(self, stop: threading.Event) -> None:
        """At start: every running container and every process, like a sweep (until ``stop``)."""
        self.resync()
        self.cross_view()  # first: a hidden process is judged with what hides it
        pids = self.p.snapshots.pids()
        self.note_listed(pids)
        for n, pid in enumerate(pids):
            if stop.is_set():
                return
            if pid not in self.p.tracker:
                self.processes.inspect_pid(pid)
            if n % SERVE_EVERY == SERVE_EVERY - 1:
                self.serve_waiting()  # an exec or a container start during a long first scan is judged now

    def periodic(self) -> None:
        started = self.clock()
        p = self.p
        pids = p.snapshots.pids()
        self.processes.new_pass(alive := set(pids))
        for pid in p.tracker.forget_gone(alive):
            p.behaviour.forget(pid)
        cross = self.stats.scans % CROSSVIEW_EVERY == CROSSVIEW_EVERY - 1 and p.crossview is not None
        before = p.crossview.task_counters() if cross else None
        # Behaviour: one cheap stat read per process; details only for busy ones (see CpuSampler).
        sampled = self.note_listed(pids)
        self.serve_waiting()
        if cross:  # the sampler's thread count is the census: no second read of every stat
            own = p.crossview.threads_of(self.processes.own_pid)
            listed = sampled.threads + own if own is not None else None
            same = listed is not None and before is not None and p.crossview.task_counters() == before
            self.cross_view(census=(listed, before) if same else None)
            self.serve_waiting()
        for sample in p.sampler.sample_cgroups(p.containers.cgroups()):
            p.behaviour.observe_cgroup(sample)
        p.behaviour.observe_host(p.sampler.host_artefacts())
        for pid in p.behaviour.candidates(limit=MEMORY_SCANS_PER_PASS):
            if (verdict := p.behaviour.verdict(pid)) is not None:  # the answer comes back as MemoryScanned
                p.bulk.submit(MemoryScan(pid, verdict.start_ticks))
        # A process started before this is not young: its connections are all there to be read.
        young_s = (p.tracker.young_rechecks + 1) * self.config.agent.interval
        born_before = p.snapshots.ticks_ago(young_s)
        for n, pid in enumerate(pids):
            # Young or suspicious: read whole. Untracked: read whole when new (missed by the connector,
            # or none) or a reused PID (``sampled.new``); one the sampler read as the same process in the
            # previous pass (or the first scan) was read whole then (judged, and evicted from a full table
            # or never kept): reading it again every pass would evict another. Its behaviour is sampled.
            if pid in p.tracker:
                due = p.tracker.due(pid, born_before=born_before, pass_no=self.stats.scans)
            else:
                due = pid in sampled.new
            if due:
                self.processes.inspect_pid(pid)
            if n % (4 * SERVE_EVERY) == 4 * SERVE_EVERY - 1:
                self.serve_waiting()
        p.file_watcher.refresh()
        if p.containers.needs_resync():
            self.resync()
        elapsed = self.clock() - started
        self.stats.scans += 1
        self.stats.scan_seconds += elapsed
        self.stats.last_scan_seconds = elapsed

    def note_listed(self, pids: list[int]) -> SampledPass:
        """Sample every process and feed the behaviour model what it keeps (what moved, or has an entry).
        The sampler remembers each process it read (PID and start time): the next pass reads an untracked
        one whole only if it is new (``SampledPass.new``). At start too: the first pass then does not read
        again what the first scan judged and a full tracker evicted (which, in PID order, evicted the
        next one, through the whole table)."""
        sampled = self.p.sampler.sample_pass([pid for pid in pids if pid != self.processes.own_pid],
                                             report=self.p.behaviour.tracked(), between=self.serve_waiting)
        for sample in sampled.samples:
            self.p.behaviour.observe(sample)
        return sampled

    def cross_view(self, census: tuple[int, tuple[int, int]] | None = None) -> None:
        """The process table through every view (``collectors/crossview.py``): each hidden process is judged
        with what hides it; each ``/etc/ld.so.preload`` (the host's, a known container's) as a file.
        ``census``: (the threads of every listed process, the task counters unchanged around that read)."""
        p = self.p
        if p.crossview is None:
            return
        roots = [(cid, info.pid) for cid in p.containers.cgroups() if (info := p.containers.get(cid)) is not None]
        try:
            result = p.crossview.run(roots, census=census)
        except Exception as exc:  # crash barrier: a bad cross-view must not cost the first scan or the pass
            self.stats.worker_errors += 1
            log.exception("crossview_failed", error=repr(exc))
            return
        self.stats.crossview["runs"] += 1
        if result.probed == (0, 0):
            self.stats.crossview["census_agreed"] += 1  # every task listed: no probe, no cgroup walk
        self.stats.crossview_seconds = result.elapsed
        for pid, views in result.hidden.items():
            self.stats.crossview["hidden"] += 1
            log.warning("hidden_process", pid=pid, hidden_from=list(views))
            self.processes.inspect_pid(pid, hidden={"hidden_from": views, "proc_mounted": pid in result.mounted})
        for pid in result.mounted - result.hidden.keys():
            self.stats.crossview["mounted"] += 1
            self.processes.inspect_pid(pid, hidden={"proc_mounted": True})
        for snap in result.preloads:
            self.stats.crossview["preload_files"] += 1
            container = p.containers.get(snap.container_id) if snap.container_id else None
            if finding := p.judge.file(snap, container):
                p.emitter.emit(finding)

    # ------------------------------------------------------------------ reload

    def on_reload_event(self) -> None:
        """Load config and signatures again; keep the last good ones (and say why) when they are bad."""
        if self.load is None:
            return
        try:
            config, signatures = self.load()
        except MinerwatchError as exc:
            self.stats.reload_failures += 1
            log.error("reload_failed", error=str(exc), keeping=self.signatures.version)
            self.on_reload(f"reload failed, running on the last good configuration: {str(exc)[:200]}")
            return
        self.reload(config, signatures)
        log.info("reloaded", signatures=signatures.version, config=config.source)
        self.on_reload("")

    def reload(self, config: Config, signatures: Signatures) -> None:
        """Swap in a reloaded config and signature bundle, in one place: the judge, the collectors'
        rules, image evidence, watched paths and policy. What the responder did or logged is kept."""
        old, p = self.config, self.p
        self.config, self.signatures = config, signatures
        p.judge = p.judge.with_signatures(config, signatures)
        p.snapshots.use(config, signatures)
        p.known.clear()  # new rules and IOCs: what was clean is judged again
        self.processes.quiet.clear()  # its entries hold the old judge (and its bundle) alive
        p.bulk.submit(UseRules(p.snapshots.yara_scanner()))
        p.containers.use(p.judge)
        if config.watch.paths != old.watch.paths:
            p.file_watcher.watch_host_paths(config.watch.paths)
        p.emitter.use(config)
        self.stats.reloads += 1
        for key in ("docker", "alerts", "metrics"):
            if getattr(config, key) != getattr(old, key):
                log.warning("reload_needs_restart", section=key)
