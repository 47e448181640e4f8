"""The daemon's worker through its constructor seams: real processes, real files, a fake Docker and a fake clock.

Docker, the file watcher, the responder and the alert pipeline are plain fakes (Docker is
not needed to test routing); procfs, YARA, the judge, the tracker and the behaviour model
are the real parts the wiring builds.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from agent.collectors.cpu_sampler import CpuSampler
from agent.collectors.docker_api import ContainerGone, DockerDown
from agent.collectors.file_inspector import FileInspector
from agent.collectors.snapshots import SnapshotCollector
from agent.config import from_dict
from agent.daemon.behaviour import BehaviourModel
from agent.daemon.bulk import BulkLane, UseRules
from agent.daemon.containers import ContainerRegistry
from agent.daemon.emitter import Emitter
from agent.daemon.known_execs import KnownExecutables
from agent.daemon.tracker import ProcessTracker
from agent.daemon.parts import Parts, WorkerStats
from agent.daemon.worker import Worker
from agent.events import ContainerEvent, EventQueue, ExecEvent, FileEvent, FileScanned, MemoryScan, MemoryScanned, Reload
from agent.judge import Judge
from agent.model import ContainerInfo, Finding, ProcessSnapshot, Severity
from agent.signatures import load_bundle
from tests.helpers import procs

CID = "c" * 64


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeDocker:
    """What ContainerRegistry asks of a DockerHandle, answered from a dict; ``down`` makes every call fail."""

    def __init__(self, containers: dict[str, ContainerInfo] | None = None) -> None:
        self.containers = dict(containers or {})
        self.down = False
        self.inspected: list[str] = []

    def inspect_container(self, cid: str) -> ContainerInfo:
        self.inspected.append(cid)
        if self.down:
            raise DockerDown("fake docker is down")
        if cid not in self.containers:
            raise ContainerGone(f"container {cid[:12]} not found")
        return self.containers[cid]

    def running(self) -> dict[str, ContainerInfo]:
        if self.down:
            raise DockerDown("fake docker is down")
        return dict(self.containers)

    def available(self) -> bool:
        return not self.down


class FakeWatcher:
    def __init__(self) -> None:
        self.layers: dict[str, str] = {}
        self.paths: tuple[str, ...] = ()
        self.refreshed = 0

    def add_layer(self, cid: str, upper: str) -> bool:
        self.layers[cid] = upper
        return True

    def remove_layer(self, cid: str) -> None:
        self.layers.pop(cid, None)

    def watch_host_paths(self, paths) -> None:
        self.paths = tuple(paths)

    def refresh(self) -> None:
        self.refreshed += 1


class FakeResponder:
    def __init__(self) -> None:
        self.seen: list[Finding] = []
        self.config = None

    def respond(self, finding: Finding) -> Finding:
        self.seen.append(finding)
        return finding

    def reconfigure(self, config) -> None:
        self.config = config


class FakeAlerts:
    def __init__(self) -> None:
        self.submitted: list[dict] = []
        self.reopened = 0

    def submit(self, alert: dict) -> bool:
        self.submitted.append(alert)
        return True

    def reopen(self) -> None:
        self.reopened += 1


class Rig:
    """A worker over real collectors and fakes, as the wiring would build it."""

    def __init__(self, tmp_path, *, docker: FakeDocker | None = None, max_tracked: int = 50_000,
                 overrides: dict | None = None, own_pid: int = -1) -> None:
        """``own_pid``: the "agent" whose process tree is exempt; by default none (this test process
        starts the processes under test, so it cannot be the agent)."""
        self.cfg = from_dict({"agent": {"state_dir": str(tmp_path / "state"), "interval": 5},
                              "watch": {"paths": [str(tmp_path / "watched")]}, **(overrides or {})})
        self.sig = load_bundle(None)
        self.clock = Clock()
        self.docker = docker or FakeDocker()
        self.watcher = FakeWatcher()
        self.responder = FakeResponder()
        self.alerts = FakeAlerts()
        self.queue = EventQueue(100)
        self.bulk_inbox = EventQueue(100)
        self.stats = WorkerStats()
        snapshots = SnapshotCollector(self.cfg, self.sig)
        judge = Judge.from_config(self.cfg, self.sig)
        # The bulk lane is real but not started: tests run its work with bulk.handle() where they need it.
        self.bulk = BulkLane(self.bulk_inbox, self.queue,
                             FileInspector(snapshots.hash_cache, snapshots.yara_scanner(), snapshots.max_bytes),
                             snapshots.yara_scanner())
        self.parts = Parts(
            snapshots=snapshots,
            bulk=self.bulk,
            file_watcher=self.watcher,
            containers=ContainerRegistry(self.docker, judge, self.watcher),
            tracker=ProcessTracker(max_tracked=max_tracked),
            known=KnownExecutables(),
            behaviour=BehaviourModel(clock=self.clock),
            sampler=CpuSampler(clock=self.clock),
            judge=judge,
            emitter=Emitter(self.cfg, self.responder, self.alerts, self.stats),
        )
        self.reloads: list[str] = []
        self.next_load = (self.cfg, self.sig)
        self.worker = Worker(self.cfg, self.sig, self.parts, self.queue, clock=self.clock, own_pid=own_pid,
                             load=self._load, on_reload=self.reloads.append, stats=self.stats)

    def _load(self):
        if isinstance(self.next_load, Exception):
            raise self.next_load
        return self.next_load

    def findings_for(self, pid: int) -> list[Finding]:
        return [f for f in self.responder.seen if f.process is not None and f.process.pid == pid]


def start_miner(spawn, helper_bins, fake_pool):
    p = spawn([helper_bins.fakeminer, "-o", fake_pool.hostport, "-t", "1", "--seconds", "60"],
              stderr=open(os.devnull, "wb"), stdout=open(os.devnull, "wb"))
    # The exe link changes before the new argv is in place: wait for both (the kernel's exec event,
    # which the daemon gets, comes after both).
    procs.wait_until(lambda: procs.exe(p.pid).endswith("fakeminer") and procs.cmdline(p.pid), 10, 0.02,
                     "the miner exec'd")
    return p


def test_an_exec_event_is_judged_and_alerted(tmp_path, spawn, helper_bins, fake_pool):
    """An exec event for a miner becomes a critical finding with its PID, responded to and alerted."""
    rig = Rig(tmp_path)
    p = start_miner(spawn, helper_bins, fake_pool)
    rig.worker.handle(ExecEvent(p.pid))
    (found,) = rig.findings_for(p.pid)
    assert found.severity is Severity.CRITICAL and found.process.cmdline[0].endswith("fakeminer")
    assert rig.alerts.submitted[-1]["process"]["pid"] == p.pid
    assert p.pid in rig.parts.tracker and rig.stats.events["ExecEvent"] == 1


def test_an_exec_event_for_a_benign_process_gives_nothing(tmp_path, spawn):
    """A plain sleep is tracked, judged and not alerted."""
    rig = Rig(tmp_path)
    p = spawn(["sleep", "30"])
    rig.worker.handle(ExecEvent(p.pid))
    assert rig.findings_for(p.pid) == [] and rig.alerts.submitted == []
    assert p.pid in rig.parts.tracker


def test_a_container_start_registers_it_and_judges_its_image(tmp_path):
    """A start event inspects the container (fake Docker), watches its layer, and judges it on its image
    when none of its processes can be read (the container id names no process on this host)."""
    upper = tmp_path / "upper"
    upper.mkdir()
    info = ContainerInfo(id=CID, name="openjdk", image="thanhtudo/openjdk:latest", upper_dir=str(upper),
                         command=("python3", "dao.py"))
    rig = Rig(tmp_path, docker=FakeDocker({CID: info}))
    rig.worker.handle(ContainerEvent("start", CID))
    assert rig.parts.containers.get(CID) == info and rig.watcher.layers == {CID: str(upper)}
    assert rig.parts.containers.image_evidence(CID), "a throwaway-namespace look-alike image is evidence"
    (found,) = rig.responder.seen
    assert found.container.id == CID and found.process is None and found.severity >= Severity.MEDIUM
    rig.worker.handle(ContainerEvent("die", CID))
    assert rig.parts.containers.get(CID) is None and rig.watcher.layers == {}


def test_a_container_gone_before_inspection_is_forgotten(tmp_path):
    """A start event for a container Docker no longer knows leaves nothing behind and alerts nothing."""
    rig = Rig(tmp_path)
    rig.worker.handle(ContainerEvent("start", CID))
    assert len(rig.parts.containers) == 0 and rig.responder.seen == [] and rig.docker.inspected == [CID]


def test_docker_down_then_back_resyncs_in_the_periodic_pass(tmp_path):
    """While Docker is down the resync fails quietly; the first pass after it answers again registers its containers."""
    info = ContainerInfo(id=CID, name="web", image="nginx:1.25")
    docker = FakeDocker({CID: info})
    docker.down = True
    rig = Rig(tmp_path, docker=docker)
    rig.worker.handle(ContainerEvent("resync"))
    assert len(rig.parts.containers) == 0
    docker.down = False
    rig.worker.periodic()
    assert rig.parts.containers.get(CID) == info


def test_a_file_event_is_inspected_in_the_bulk_lane_and_judged(tmp_path, helper_bins):
    """A miner binary written into a watched path is hashed and YARA-scanned by the bulk lane, handed back,
    and alerted as a file by the worker."""
    rig = Rig(tmp_path)
    watched = tmp_path / "watched"
    watched.mkdir()
    dropped = watched / "kworkerds"
    dropped.write_bytes(helper_bins.fakeminer.read_bytes())
    dropped.chmod(0o755)
    past = time.time() - 10  # settled: its hashes may be cached
    os.utime(dropped, (past, past))
    rig.bulk.handle(FileEvent(str(dropped)))
    scanned = rig.queue.get(timeout=1)
    assert isinstance(scanned, FileScanned) and scanned.snap.hashes is not None
    assert rig.responder.seen == [], "the lane only inspects; judging is the worker's"
    rig.worker.handle(scanned)
    (found,) = rig.responder.seen
    assert found.file is not None and found.file.path == str(dropped) and found.severity is Severity.CRITICAL
    assert any(e.signal == "yara" for e in found.evidence)


def test_the_periodic_pass_samples_rechecks_and_forgets(tmp_path, spawn, helper_bins, fake_pool):
    """The pass finds a process no exec event reported, re-judges it, feeds the behaviour model,
    refreshes the file watcher and forgets a process that exited."""
    rig = Rig(tmp_path)
    miner = start_miner(spawn, helper_bins, fake_pool)
    quiet = spawn(["sleep", "30"])
    rig.worker.periodic()
    assert miner.pid in rig.parts.tracker and quiet.pid in rig.parts.tracker
    assert rig.findings_for(miner.pid) and rig.watcher.refreshed == 1
    rig.clock.t += 5
    rig.worker.periodic()
    assert len(rig.findings_for(miner.pid)) == 2, "a process with evidence is re-judged every pass"
    assert rig.parts.behaviour.verdict(miner.pid) is not None
    quiet.kill()
    quiet.wait()
    rig.clock.t += 5
    rig.worker.periodic()
    assert quiet.pid not in rig.parts.tracker and rig.stats.scans == 3


def test_behaviour_reaches_the_detector_on_the_snapshot(tmp_path, spawn, helper_bins, fake_pool):
    """What the behaviour model knows of a process is attached to its snapshot before judging."""
    rig = Rig(tmp_path)
    miner = start_miner(spawn, helper_bins, fake_pool)
    rig.worker.handle(ExecEvent(miner.pid))
    (first,) = rig.findings_for(miner.pid)
    assert first.process.behaviour is None  # no samples yet
    rig.worker.periodic()
    assert rig.findings_for(miner.pid)[-1].process.behaviour is None, "one reading: no rate yet, no entry"
    used = procs.cpu_seconds(miner.pid)
    procs.wait_until(lambda: procs.cpu_seconds(miner.pid) > used, 10, 0.02, "the miner used CPU")
    rig.clock.t += 5
    rig.worker.periodic()
    last = rig.findings_for(miner.pid)[-1]
    assert last.process.behaviour is not None and last.process.behaviour.pid == miner.pid
    assert last.process.behaviour.stats.samples == 1, "its first rate, from the reading before it"


def test_a_reload_swaps_judge_and_rules_in_one_place_and_keeps_the_responder(tmp_path):
    """A good reload replaces the judge and the collectors' rules and reconfigures (not rebuilds) the
    responder; a bad one keeps everything and says why."""
    from agent.errors import ConfigError

    rig = Rig(tmp_path)
    old_judge, old_yara, responder = rig.parts.judge, rig.parts.snapshots.yara, rig.parts.emitter.responder
    new_cfg = from_dict({"agent": {"state_dir": str(tmp_path / "state")}, "watch": {"paths": [str(tmp_path)]},
                         "detect": {"alert_severity": "high"}})
    rig.next_load = (new_cfg, load_bundle(None))
    rig.worker.handle(Reload())
    assert rig.parts.judge is not old_judge and rig.parts.judge.engine is old_judge.engine
    assert rig.parts.snapshots.yara is not old_yara
    use = rig.bulk_inbox.get(timeout=1)
    assert isinstance(use, UseRules), "the bulk lane gets the new rules through its queue, in order"
    rig.bulk.handle(use)
    assert rig.bulk.files.yara_scanner is use.yara and rig.bulk.yara is use.yara
    assert rig.parts.emitter.responder is responder and responder.config is new_cfg
    assert rig.parts.emitter.alert_severity is Severity.HIGH and rig.alerts.reopened == 1
    assert rig.watcher.paths == (str(tmp_path),) and rig.reloads == [""] and rig.stats.reloads == 1
    judge = rig.parts.judge
    rig.next_load = ConfigError("/etc/minerwatch/config.toml", "agent.interval", "must be a number")
    rig.worker.handle(Reload())
    assert rig.parts.judge is judge and rig.stats.reload_failures == 1
    assert rig.reloads[-1].startswith("reload failed") and "agent.interval" in rig.reloads[-1]


def test_events_waiting_are_served_while_the_pass_samples(tmp_path, spawn, helper_bins, fake_pool):
    """An exec event that arrives as a periodic pass begins is judged during the pass's CPU sampling
    (every ``between_every`` processes), not after it: at 50,000 processes the sampling alone is ~0.5 s."""
    rig = Rig(tmp_path)
    p = start_miner(spawn, helper_bins, fake_pool)
    judged_by_end_of_sampling = []

    class Recording(CpuSampler):
        def sample_pass(self, *args, **kw):
            out = super().sample_pass(*args, **kw)
            judged_by_end_of_sampling.append(bool(rig.findings_for(p.pid)))
            return out

    rig.parts.sampler = Recording(clock=rig.clock, between_every=4)
    assert len(rig.parts.snapshots.pids()) > 8
    rig.queue.put(ExecEvent(p.pid))
    rig.worker.periodic()
    assert judged_by_end_of_sampling == [True] and rig.stats.events["ExecEvent"] == 1


def test_a_full_tracker_evicts_the_least_suspicious_and_still_judges(tmp_path, spawn, helper_bins, fake_pool):
    """At the limit a new process is still judged and tracked; an evidence-free entry is evicted
    (counted), never the one with evidence."""
    rig = Rig(tmp_path, max_tracked=2)
    miner = start_miner(spawn, helper_bins, fake_pool)
    quiet = [spawn(["sleep", "30"]) for _ in range(3)]
    rig.worker.handle(ExecEvent(miner.pid))
    for p in quiet:
        rig.worker.handle(ExecEvent(p.pid))
    tracker = rig.parts.tracker
    assert len(tracker) == 2 and tracker.evicted == 2
    assert miner.pid in tracker and quiet[-1].pid in tracker
    late = start_miner(spawn, helper_bins, fake_pool)
    rig.worker.handle(ExecEvent(late.pid))
    assert rig.findings_for(late.pid), "judging never stops at the limit"


def test_a_full_tracker_is_not_refilled_by_every_pass(tmp_path, spawn, helper_bins, fake_pool):
    """Over a full table, a process judged and evicted in one pass is not read whole again in the next
    (that would evict another, every pass: the 50,000-process flood); a new one still is."""
    rig = Rig(tmp_path, max_tracked=4)
    miner = start_miner(spawn, helper_bins, fake_pool)
    rig.worker.initial_scan(threading.Event())
    tracker = rig.parts.tracker
    host = len(rig.parts.snapshots.pids())
    assert host > 20 and tracker.evicted >= host - 4 - 5, "the first scan read every process (and evicted)"
    first = tracker.evicted
    rig.worker.periodic()  # it used to read the evicted ones again, each evicting the next, in PID order
    assert tracker.evicted - first < 10, f"{tracker.evicted - first} evictions: the pass re-read what was evicted"
    first = tracker.evicted
    late = spawn(["sleep", "30"])
    rig.clock.t += 5
    rig.worker.periodic()
    assert late.pid in tracker, "a process new since the last pass is read and tracked"
    assert tracker.evicted - first < 10, f"{tracker.evicted - first} evictions: the pass re-read what it evicted"
    assert miner.pid in tracker and len(rig.findings_for(miner.pid)) == 3, "the one with evidence: every pass"


def test_tracker_eviction_order_on_plain_snapshots():
    """Plain entries go oldest first; when all have evidence, the least severe goes."""
    t = ProcessTracker(max_tracked=2)
    a, b, c = (ProcessSnapshot(pid=n, start_ticks=n) for n in (1, 2, 3))
    t.seen(a)
    t.seen(b)
    t.record(1, Finding("f", Severity.HIGH, 60, "r", ()))
    t.seen(c)
    assert set(t.pids()) == {1, 3} and t.evicted == 1
    t.record(3, Finding("g", Severity.LOW, 5, "r", ()))
    t.seen(ProcessSnapshot(pid=4, start_ticks=4))
    assert set(t.pids()) == {1, 4}, "the low-severity entry went, the high one stayed"
    t.seen(ProcessSnapshot(pid=1, start_ticks=99))  # a reused PID is a new process
    assert t.get(1).checks == 1 and not t.get(1).interesting


def test_crash_barrier_survives_a_failing_event(tmp_path):
    """An exception while handling one event is logged and counted; the worker thread lives on and handles the next."""
    from structlog.testing import capture_logs

    class Exploding(FakeDocker):
        def inspect_container(self, cid):
            if cid.startswith("bad"):
                raise RecursionError("a parser bug on hostile input")
            return super().inspect_container(cid)

    good = ContainerInfo(id="g" * 64, name="good", image="nginx:1.25")
    rig = Rig(tmp_path, docker=Exploding({good.id: good}))
    stop = threading.Event()
    thread = threading.Thread(target=rig.worker.run, args=(stop,), daemon=True)
    with capture_logs() as logs:
        thread.start()
        assert rig.worker.ready.wait(30)
        rig.queue.put(ContainerEvent("start", "bad" + "0" * 61))
        rig.queue.put(ContainerEvent("start", good.id))
        procs.wait_until(lambda: rig.parts.containers.get(good.id), 10, 0.02, "the good event handled")
        stop.set()
        thread.join(5)
    assert not thread.is_alive() and rig.stats.worker_errors == 1
    assert any(e["event"] == "worker_error" and "bad" in e["failed_event"] for e in logs), logs


@pytest.mark.parametrize("action", ["pause", "stop", "kill", "restart", "create"])
def test_container_actions_nobody_sends_are_ignored(tmp_path, action):
    """Only start/unpause/exec_start/die/destroy/resync are acted on (the watcher forwards only those)."""
    from agent.collectors.docker_events import FORWARDED_ACTIONS

    assert action not in FORWARDED_ACTIONS
    rig = Rig(tmp_path, docker=FakeDocker({CID: ContainerInfo(id=CID)}))
    rig.worker.handle(ContainerEvent(action, CID))
    assert rig.docker.inspected == [] and len(rig.parts.containers) == 0


def test_only_the_agents_own_process_tree_is_exempt(tmp_path, helper_bins, fake_pool):
    """A miner the agent itself started (its child) is never judged; the same miner started by anyone else is."""
    import subprocess

    rig = Rig(tmp_path, own_pid=os.getpid())  # this test process plays the agent
    child = subprocess.Popen([helper_bins.fakeminer, "-o", fake_pool.hostport, "-t", "1", "--seconds", "30"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        procs.wait_until(lambda: procs.exe(child.pid).endswith("fakeminer") and procs.cmdline(child.pid), 10, 0.02,
                         "the child exec'd")
        rig.worker.handle(ExecEvent(child.pid))
        assert rig.findings_for(child.pid) == [] and child.pid in rig.worker.processes.own_children
    finally:
        child.kill()
        child.wait()


def test_a_foreign_process_in_the_agents_container_is_evidence():
    """The agent_container detector: strong evidence for a process in the agent's container, nothing elsewhere."""
    from agent.detectors import agent_container
    from agent.detectors.base import Context

    sigs = load_bundle(None)
    proc = ProcessSnapshot(pid=7, exe="/usr/bin/xmrig", container_id=CID)
    (e,) = agent_container.detect(proc, Context(sigs, agent_container=CID))
    assert e.strong and "own container" in e.detail
    assert agent_container.detect(proc, Context(sigs, agent_container="")) == []
    started_inside = ProcessSnapshot(pid=7, exe="/usr/sbin/cron", container_id=CID, entered_from_outside=False)
    assert agent_container.detect(started_inside, Context(sigs, agent_container=CID)) == [], \
        "a process the container's own init started is judged on its own evidence only"
    assert agent_container.detect(ProcessSnapshot(pid=7, container_id="d" * 64), Context(sigs, agent_container=CID)) == []


def test_memory_scans_go_to_the_bulk_lane_and_come_back_to_be_judged(tmp_path, spawn, helper_bins, fake_pool):
    """A memory-scan candidate is handed to the bulk lane (not scanned on the worker); the lane's answer
    is judged with the hits attached; an answer for a PID that is another process now is dropped."""
    rig = Rig(tmp_path)
    plain = spawn([helper_bins.fakeminer_plain, "-o", fake_pool.hostport, "-t", "1", "--seconds", "60"],
                  stderr=open(os.devnull, "wb"), stdout=open(os.devnull, "wb"))
    procs.wait_until(lambda: procs.exe(plain.pid).endswith("fakeminer-plain") and procs.cmdline(plain.pid), 10, 0.02,
                     "exec'd")
    fake_pool.wait_for_login(timeout=15)
    rig.worker.handle(ExecEvent(plain.pid))
    start = procs.wait_until(lambda: rig.parts.snapshots.snapshot(plain.pid), 5, 0.05, "snapshot").start_ticks
    rig.parts.behaviour.request_scan(plain.pid, start, rig.clock())  # what a suspicious verdict asks for
    rig.worker.periodic()
    request = rig.bulk_inbox.get(timeout=1)
    assert request == MemoryScan(plain.pid, start)
    rig.bulk.handle(request)
    answer = rig.queue.get(timeout=5)
    assert isinstance(answer, MemoryScanned) and "MW_XMRig_Memory" in {h.rule for h in answer.hits}
    rig.worker.handle(answer)
    last = rig.findings_for(plain.pid)[-1]
    assert last.severity is Severity.CRITICAL and any(h.source == "memory" for h in last.process.yara)
    before = len(rig.responder.seen)
    rig.worker.handle(MemoryScanned(plain.pid, start + 1, answer.hits))  # a reused PID: not this process
    assert len(rig.responder.seen) == before


def test_a_unit_of_work_over_its_budget_is_counted_and_logged(tmp_path):
    """An event that takes longer than its budget (here: a Docker inspect that hangs for 1.5 s on the clock)
    is measured, counted by kind and logged; the worker goes on."""
    from structlog.testing import capture_logs

    class Slow(FakeDocker):
        def inspect_container(self, cid):
            rig.clock.t += 1.5  # the time it took
            return super().inspect_container(cid)

    rig = Rig(tmp_path)
    rig.parts.containers.docker = Slow({CID: ContainerInfo(id=CID, image="nginx:1.25")})
    with capture_logs() as logs:
        rig.worker._handle_safely(ContainerEvent("start", CID))
        rig.worker._handle_safely(ContainerEvent("die", CID))
    assert rig.stats.over_budget == {"ContainerEvent": 1}
    (slow,) = [e for e in logs if e["event"] == "work_over_budget"]
    assert slow["unit"] == "ContainerEvent" and slow["seconds"] == 1.5 and CID[:12] in slow["subject"]


def test_a_clean_known_executable_stops_at_a_glance_and_anything_suspicious_is_read_whole(tmp_path, spawn):
    """The first exec of a program is read whole and, clean, makes its file known; the next exec of the
    same file is quiet at a glance (still tracked, read whole by the next pass); the same known file with
    a miner's command line, or a copy of it elsewhere, is read whole at once."""
    import shutil

    rig = Rig(tmp_path)
    first = spawn(["sleep", "30"])
    procs.wait_until(lambda: procs.cmdline(first.pid), 5, 0.02, "exec'd")
    rig.worker.handle(ExecEvent(first.pid))
    assert rig.stats.execs == {"read_whole": 1} and len(rig.parts.known) == 1
    second = spawn(["sleep", "31"])
    procs.wait_until(lambda: procs.cmdline(second.pid), 5, 0.02, "exec'd")
    rig.worker.handle(ExecEvent(second.pid))
    assert rig.stats.execs["quiet_at_a_glance"] == 1 and second.pid in rig.parts.tracker
    rig.worker.periodic()
    assert rig.parts.tracker.get(second.pid).checks == 2, "the pass reads a glanced process whole"
    miner_args = spawn(["sh", "-c", "sleep 30", "xmrig", "-o", "stratum+tcp://127.0.0.1:3333", "--donate-level", "1"])
    clean_sh = spawn(["sh", "-c", "sleep 30"])
    for p in (clean_sh, miner_args):
        procs.wait_until(lambda p=p: procs.cmdline(p.pid), 5, 0.02, "exec'd")
        rig.worker.handle(ExecEvent(p.pid))
    assert rig.findings_for(miner_args.pid), "a miner's command line on a known-clean shell is judged whole"
    copy = tmp_path / "sleep-copy"
    shutil.copy2(shutil.which("sleep"), copy)
    moved = spawn([copy, "30"])
    procs.wait_until(lambda: procs.cmdline(moved.pid), 5, 0.02, "exec'd")
    before = rig.stats.execs["read_whole"]
    rig.worker.handle(ExecEvent(moved.pid))
    assert rig.stats.execs["read_whole"] == before + 1, "another file (another identity) is read whole"


def test_a_reload_forgets_the_known_executables(tmp_path, spawn):
    """New signatures may name a file that was clean: after a reload every program is read whole again."""
    rig = Rig(tmp_path)
    p = spawn(["sleep", "30"])
    procs.wait_until(lambda: procs.cmdline(p.pid), 5, 0.02, "exec'd")
    rig.worker.handle(ExecEvent(p.pid))
    assert len(rig.parts.known) == 1
    rig.worker.handle(Reload())
    assert len(rig.parts.known) == 0


def test_an_exec_whose_process_is_gone_costs_a_counter_and_a_zombie_leader_with_threads_is_read(tmp_path, spawn):
    """A process reaped before its exec event is handled is counted "gone" and nothing more is read (no whole
    read, not tracked); a zombie thread-group leader whose other thread still runs is not "gone": read whole."""
    import subprocess
    import sys
    from pathlib import Path

    rig = Rig(tmp_path)
    done = spawn(["true"])
    done.wait(timeout=10)
    rig.worker.handle(ExecEvent(done.pid))
    assert rig.stats.execs == {"gone": 1} and done.pid not in rig.parts.tracker
    # The main thread exits (pthread_exit by a raw exit syscall), a second thread lives on: the leader is Z.
    code = ("import ctypes, os, threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); "
            "time.sleep(0.2); ctypes.CDLL(None).syscall(60, 0)")
    leader = spawn([sys.executable, "-c", code], stdout=subprocess.DEVNULL)
    procs.wait_until(lambda: Path(f"/proc/{leader.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
                     10, 0.02, "a zombie leader")
    rig.worker.handle(ExecEvent(leader.pid))
    assert rig.stats.execs["gone"] == 1 and rig.stats.execs["read_whole"] == 1 and leader.pid in rig.parts.tracker


def test_a_command_line_longer_than_one_read_is_glanced_whole(tmp_path, spawn):
    """The glance reads cmdline in one read when it fits, and on to its bound when it does not: a miner's
    pool URL after 6 KB of padding on a known-clean executable is still seen at the glance."""
    from agent.collectors.glance import Glance, glance

    pad = "p" * 6000
    p = spawn(["sh", "-c", "sleep 30", pad, "stratum+tcp://127.0.0.1:3333"])
    procs.wait_until(lambda: procs.cmdline(p.pid), 5, 0.02, "exec'd")
    seen = glance("/proc", p.pid)
    assert isinstance(seen, Glance) and seen.snap.cmdline[-1] == "stratum+tcp://127.0.0.1:3333" and seen.exe_key


def test_a_quiet_glance_is_remembered_only_for_the_same_facts_and_the_same_judge(tmp_path, spawn):
    """The second exec of the same known file with the same command line (same parent) reuses the first's
    quiet verdict; other arguments are judged afresh (a miner's are found); after a reload nothing is reused."""
    rig = Rig(tmp_path)

    def exec_(argv):
        p = spawn(argv)
        procs.wait_until(lambda: procs.cmdline(p.pid), 5, 0.02, "exec'd")
        rig.worker.handle(ExecEvent(p.pid))
        return p

    exec_(["sleep", "30"])  # read whole: its file becomes known
    exec_(["sleep", "30"])
    exec_(["sleep", "30"])
    assert rig.stats.execs["quiet_at_a_glance"] == 2 and rig.stats.execs["quiet_remembered"] == 1
    exec_(["sh", "-c", "sleep 30"])  # read whole: known
    exec_(["sh", "-c", "sleep 30"])  # judged quiet, remembered
    miner = exec_(["sh", "-c", "sleep 30", "xmrig", "-o", "stratum+tcp://127.0.0.1:3333", "--donate-level", "1"])
    assert rig.stats.execs["quiet_remembered"] == 1 and rig.findings_for(miner.pid)
    rig.worker.handle(Reload())
    exec_(["sleep", "30"])
    assert rig.stats.execs["quiet_remembered"] == 1


def test_the_tracker_rereads_the_young_the_suspicious_and_the_low_now_and_then():
    """Young processes are re-read in their first passes, but not one that was already old when first seen;
    medium or worse every pass; low-only every few passes."""
    t = ProcessTracker(young_rechecks=3, low_every=6)
    young, old, low, bad = (ProcessSnapshot(pid=n, start_ticks=ticks) for n, ticks in
                            ((10, 5_000), (11, 100), (12, 100), (13, 100)))
    for snap in (young, old, low, bad):
        t.seen(snap)
    t.record(12, Finding("l", Severity.LOW, 10, "r", ()))
    t.record(13, Finding("m", Severity.MEDIUM, 40, "r", ()))
    born_before = 1_000  # anything started before tick 1000 is old now
    assert t.due(10, born_before=born_before) and not t.due(11, born_before=born_before)
    assert all(t.due(13, born_before=born_before, pass_no=n) for n in range(12))
    assert sum(t.due(12, born_before=born_before, pass_no=n) for n in range(12)) == 2
