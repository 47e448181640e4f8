"""Judging processes, for the worker: an exec, a process read whole, a memory scan's answer.

The worker hands every process here (``Worker.processes``): an exec is glanced at first
(``collectors.glance``: a known-clean executable with nothing on the glance stops there), anything
else is read whole (``SnapshotCollector.snapshot``) and judged in its container's context with its
behaviour attached, through the tracker, the registry and the judge; a finding goes to the
emitter. Only the agent's own process tree is never judged. Runs on the worker thread only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from agent.collectors import netns
from agent.collectors.glance import GONE, Glance
from agent.daemon.behaviour import is_msr_modprobe
from agent.events import MemoryScanned
from agent.model import MSR_MODPROBE_CHILD, Finding, ProcessSnapshot, Severity

if TYPE_CHECKING:
    from agent.daemon.parts import Parts, WorkerStats


QUIET_MEMO = 2048  # glance facts remembered as quiet (cleared when full)
QUIET_MEMO_CMDLINE = 512  # characters: longer command lines are judged every time (and not kept)


class Processes:
    def __init__(self, parts: Parts, stats: WorkerStats, *, clock: Callable[[], float], own_pid: int,
                 own_ancestors: Collection[int] = (), own_container: str = "") -> None:
        """``own_pid`` and ``own_ancestors``: the agent's own process tree, the only processes never judged
        (its container, ``own_container``, is judged like any other)."""
        self.p = parts
        self.stats = stats
        self.clock = clock
        self.own_pid = own_pid
        self.own_tree = {own_pid, *own_ancestors}
        self.own_children: set[int] = set()  # processes the agent started (bounded by what it starts: none today)
        self.own_container = own_container
        self.entered: set[int] = set()  # processes of the agent's container that came in from outside
        # TCP tables per network namespace, read at most once per periodic pass: a process seen at
        # exec has no connection yet, and its recheck in the next pass reads fresh tables.
        self.net_tables = netns.NetTables()
        # What the cross-view found hiding a process (``hidden_from``, ``proc_mounted``), by PID with its
        # start time: attached each time it is judged, while it lives.
        self.hidden: dict[int, tuple[int, dict]] = {}
        # Glance facts judged quiet -> (the judge, container, image evidence) they were judged with.
        self.quiet: dict[tuple, tuple] = {}

    def new_pass(self, alive: Collection[int]) -> None:
        """A periodic pass begins: fresh TCP tables; forget children of ours that exited."""
        self.net_tables.clear()
        alive = set(alive)
        self.own_children &= alive
        self.entered &= alive
        self.hidden = {pid: v for pid, v in self.hidden.items() if pid in alive}

    def on_memory(self, scanned: MemoryScanned) -> None:
        """A memory scan came back: judge the process (still the same one) with the hits found."""
        snap = self.p.snapshots.snapshot(scanned.pid, self.net_tables)
        if snap is None or snap.start_ticks != scanned.start_ticks:
            return  # exited, or the PID is another process's now
        self.judge(dataclasses.replace(snap, yara=snap.yara + scanned.hits), memory_scanned=True)

    def is_own(self, snap: ProcessSnapshot) -> bool:
        """The agent, its ancestors, or a process it started (directly or through one it started)."""
        if snap.pid in self.own_tree or snap.pid in self.own_children:
            return True
        if snap.ppid == self.own_pid or snap.ppid in self.own_children:
            self.own_children.add(snap.pid)
            return True
        return False

    def on_exec(self, pid: int) -> None:
        """An exec: a glance first (five reads); a known-clean executable with nothing on the glance is
        quiet (tracked, read fully by the next passes if it lives on); anything else is read whole now."""
        if pid == self.own_pid:
            return
        p = self.p
        seen = p.snapshots.glance(pid)
        if seen is GONE:  # exited and reaped before it could be read: a whole read would find nothing either
            self.stats.execs["gone"] += 1
            return
        if seen is None:
            self.stats.execs["glance_failed"] += 1
            self.inspect_pid(pid)
            return
        snap = seen.snap
        if self.is_own(snap):
            return
        if (seen.exe_key is not None and seen.exe_key in p.known
                and (not snap.container_id or snap.container_id in p.containers)
                and not is_msr_modprobe(snap.cmdline) and self._quiet(seen)):
            p.tracker.seen(snap)
            p.containers.note_cgroup(snap.container_id, snap.cgroup_path)
            self.stats.execs["quiet_at_a_glance"] += 1
            return
        self.stats.execs["read_whole"] += 1
        full = p.snapshots.snapshot(pid, self.net_tables)
        if full is None:
            return
        if self.judge(full) is None and full.start_ticks == snap.start_ticks and full.hashes is not None \
                and seen.exe_key is not None and not self.is_own(full):
            p.known.add(seen.exe_key)  # judged whole and clean: the next exec of this very file stops at a glance

    def _quiet(self, seen: Glance) -> bool:
        """The judge finds nothing on this glance. The same glance facts (everything but the PID and its start
        time) judged by the same judge in the same container context get the same answer: a short command
        line's quiet verdict is remembered (bounded); anything else is judged every time."""
        p, snap = self.p, seen.snap
        container = p.containers.get(snap.container_id)
        evidence = p.containers.image_evidence(snap.container_id)
        key = None
        if sum(map(len, snap.cmdline)) <= QUIET_MEMO_CMDLINE:
            key = (seen.exe_key, snap.exe, snap.exe_deleted, snap.name, snap.cmdline, snap.ppid, snap.num_threads,
                   snap.is_kernel_thread, snap.container_id, snap.container_runtime, snap.cgroup_path,
                   snap.cgroup_claim, snap.partial)
            memo = self.quiet.get(key)
            if memo is not None and memo[0] is p.judge and memo[1] is container and memo[2] == evidence:
                self.stats.execs["quiet_remembered"] += 1
                return True
        if p.judge.process(snap, container, evidence) is not None:
            return False
        if key is not None:
            if len(self.quiet) >= QUIET_MEMO:
                self.quiet.clear()
            self.quiet[key] = (p.judge, container, evidence)
        return True

    def inspect_pid(self, pid: int, *, in_container: str = "", hidden: dict | None = None) -> bool:
        """Read ``pid`` whole and judge it; False when it is gone (or, with ``in_container``, not in it).
        ``hidden``: what the cross-view found hiding it (snapshot fields), attached now and later."""
        if pid in self.own_tree or pid in self.own_children:  # never judged: not read either (the
            return False  # ancestors are never tracked, so every pass would read them whole for nothing)
        snap = self.p.snapshots.snapshot(pid, self.net_tables)
        if snap is None and hidden and hidden.get("proc_mounted"):
            snap = ProcessSnapshot(pid=pid, partial=("stat",))  # /proc/PID is covered: judged on that alone
        if snap is None or (in_container and snap.container_id != in_container):
            return False
        if hidden:
            self.hidden[pid] = (snap.start_ticks, hidden)
        self.judge(snap)
        return True

    def judge(self, snap: ProcessSnapshot, *, memory_scanned: bool = False) -> Finding | None:
        """Judge one (collected, exe-scanned) process; ``memory_scanned``: its memory hits are attached."""
        if self.is_own(snap):
            return None
        if (facts := self.hidden.get(snap.pid)) is not None and facts[0] == snap.start_ticks:
            snap = dataclasses.replace(snap, **facts[1])
        entry = self.p.tracker.seen(snap)
        self.p.containers.note_cgroup(snap.container_id, snap.cgroup_path)
        if entry.checks == 1 and is_msr_modprobe(snap.cmdline):
            self.blame_msr_modprobe(snap)
        container = self.p.containers.get(snap.container_id) if snap.container_id else None
        if snap.container_id and container is None and snap.container_runtime in ("docker", ""):
            container = self.p.containers.refresh(snap.container_id)
        snap = dataclasses.replace(snap, behaviour=self.p.behaviour.verdict(snap.pid, snap.start_ticks))
        if self.own_container and snap.container_id == self.own_container:
            snap = dataclasses.replace(snap, entered_from_outside=self._entered(snap))
        finding = self.p.judge.process(snap, container, self.p.containers.image_evidence(snap.container_id))
        if finding is None:
            return None
        self.p.tracker.record(snap.pid, finding)
        if not memory_scanned and finding.severity >= Severity.MEDIUM and not any(e.signal == "yara" for e in finding.evidence):
            # Suspicious but nothing in its file: a packed miner shows itself in memory once it runs.
            self.p.behaviour.request_scan(snap.pid, snap.start_ticks, self.clock())
        return self.p.emitter.emit(finding)

    def _entered(self, snap: ProcessSnapshot) -> bool:
        """A process of the agent's container came in from outside: its parent is not in the container,
        or came in so itself (remembered while it lives)."""
        if snap.pid in self.entered:
            return True
        came_in = snap.ppid in self.entered or self.p.snapshots.container_of(snap.ppid) != self.own_container
        if came_in:
            self.entered.add(snap.pid)
        return came_in

    def blame_msr_modprobe(self, snap: ProcessSnapshot) -> None:
        """xmrig runs ``sh -c "modprobe msr allow_writes=on"``: blame the miner (the shell's parent or itself)."""
        parent = self.p.snapshots.procfs.snapshot(snap.ppid) if snap.ppid else None
        for pid in (snap.ppid, parent.ppid if parent is not None else 0):
            entry = self.p.tracker.get(pid) if pid else None
            if entry is not None:
                self.p.behaviour.note_artefact(pid, entry.start_ticks, MSR_MODPROBE_CHILD, self.clock())
                self.p.behaviour.request_scan(pid, entry.start_ticks, self.clock())
