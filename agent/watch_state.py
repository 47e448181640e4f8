"""What the daemon's worker knows and does: tracked processes, containers, behaviour, alerts.

One owner: every method here runs on the worker thread, except ``start``/``stop`` (main
thread, before and after the worker) and the read-only ``metrics_snapshot``/``status_line``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import structlog

from agent import alert
from agent.collectors import docker_inventory, netns
from agent.behaviour import MSR_MODPROBE_CHILD, is_msr_modprobe
from agent.config import Config
from agent.detectors import behaviour as behaviour_detector
from agent.events import ContainerEvent, EventQueue, ExecEvent, FileEvent
from agent.inspector import Inspector
from agent.model import ContainerInfo, Evidence, Finding, ProcessSnapshot, Severity
from agent.signatures import Signatures
from agent.sinks.pipeline import SpoolError

log = structlog.get_logger("minerwatch.watch")

YOUNG_RECHECKS = 3  # periodic re-inspections of a new process (its pool connection comes after exec)
MAX_TRACKED = 50_000


@dataclass
class Tracked:
    start_ticks: int
    container_id: str
    checks: int = 0  # inspections so far
    interesting: bool = False  # had evidence: keep re-inspecting every interval
    severity: Severity = Severity.NONE


class WatchState:
    def __init__(self, config: Config, signatures: Signatures, queue: EventQueue, stats, *, clock) -> None:
        self.config = config
        self.signatures = signatures
        self.queue = queue
        self.stats = stats
        self.clock = clock
        self.inspector = Inspector(config, signatures)
        self.ready = threading.Event()
        self.own_pid = os.getpid()
        self.own_container = ""
        self.tracked: dict[int, Tracked] = {}
        self.containers: dict[str, ContainerInfo] = {}
        self.image_evidence: dict[str, list[Evidence]] = {}
        self.container_cgroups: dict[str, str] = {}  # container id -> cgroup path (from its processes)
        # TCP tables per network namespace, read at most once per periodic pass: a process seen at
        # exec has no connection yet, and its recheck in the next pass reads fresh tables.
        self.net_tables = netns.NetTables()
        self.docker = None  # a Docker client while reachable
        self.docker_watcher = None
        self.proc_connector = None
        self.connector_error = ""
        self.file_watcher = None
        self.file_inspector = None
        self.behaviour = None
        self.sampler = None
        self.alerts = None
        self.responder = None

    # ------------------------------------------------------------------ start / stop (main thread)

    def start(self) -> None:
        from agent.behaviour import BehaviourModel
        from agent.collectors.cpu_sampler import CpuSampler
        from agent.collectors.docker_events import DockerWatcher
        from agent.collectors.fswatch import FileWatcher
        from agent.collectors.proc_connector import ConnectorUnavailable, ProcConnector
        from agent.file_worker import FileInspector
        from agent.response import Responder
        from agent.sinks.pipeline import AlertPipeline

        cfg = self.config
        own = self._snapshot(self.own_pid)
        self.own_container = own.container_id if own else ""
        self.alerts = AlertPipeline(cfg)
        self.alerts.start()
        self.responder = Responder(cfg, self.docker_client, state_dir=cfg.agent.state_dir, clock=self.clock)
        self.behaviour = BehaviourModel(window_s=max(60.0, 12 * cfg.agent.interval), clock=self.clock)
        self.sampler = CpuSampler(proc_root=cfg.agent.proc_root, clock=self.clock)
        self.file_inspector = FileInspector(self.inspector.hash_cache, self.inspector.yara, self.inspector.max_bytes)
        self.file_watcher = FileWatcher(self.queue)
        self.file_watcher.watch_host_paths(cfg.watch.paths)
        self.file_watcher.start()
        # Lost exec events (overrun) are caught by the periodic poll of /proc, every interval.
        self.proc_connector = ProcConnector(self.queue.put)
        try:
            self.proc_connector.start()
        except ConnectorUnavailable as exc:
            self.proc_connector = None
            self.connector_error = str(exc)
            log.warning("proc_connector_unavailable", reason=str(exc), fallback=f"polling every {cfg.agent.interval} s")
        self.docker_watcher = DockerWatcher(cfg.docker.url, self.queue)
        self.docker_watcher.start()

    def stop(self) -> None:
        for part in (self.docker_watcher, self.proc_connector, self.file_watcher):
            if part is not None:
                part.stop()
        if self.alerts is not None:
            self.alerts.stop(timeout=5)

    def apply(self, config: Config, signatures: Signatures) -> None:
        """Swap in a reloaded config and signature bundle (worker thread)."""
        old = self.config
        self.config, self.signatures = config, signatures
        self.inspector = self.inspector.with_signatures(config, signatures)
        self.file_inspector.yara_scanner = self.inspector.yara
        if config.watch.paths != old.watch.paths:
            self.file_watcher.watch_host_paths(config.watch.paths)
        self.image_evidence = {cid: self.inspector.container_evidence(c) for cid, c in self.containers.items()}
        self.alerts.reopen()
        if self.responder is not None:
            from agent.response import Responder

            self.responder = Responder(config, self.docker_client, state_dir=config.agent.state_dir, clock=self.clock)
        for key in ("docker", "alerts", "metrics"):
            if getattr(config, key) != getattr(old, key):
                log.warning("reload_needs_restart", section=key)

    # ------------------------------------------------------------------ events (worker)

    def handle(self, event) -> None:
        self.stats.events[type(event).__name__] += 1
        if isinstance(event, ExecEvent):
            self.inspect_pid(event.pid, reason="exec")
        elif isinstance(event, ContainerEvent):
            self.on_container(event)
        elif isinstance(event, FileEvent):
            self.on_file(event)

    def on_container(self, event: ContainerEvent) -> None:
        if event.action == "resync":
            self.resync_containers()
        elif event.action in ("start", "unpause", "exec_start", "restart"):
            info = self.refresh_container(event.container_id)
            if info is not None:
                self.inspect_container_processes(info.id)
        elif event.action in ("die", "destroy", "stop", "kill"):
            if event.action in ("die", "destroy"):
                self.forget_container(event.container_id)

    def on_file(self, event: FileEvent) -> None:
        snap = self.file_inspector.inspect(event)
        if snap is None:
            return
        container = self.containers.get(event.container_id) if event.container_id else None
        finding = self.inspector.judge_file(snap, container)
        if finding:
            self.emit(finding)

    # ------------------------------------------------------------------ containers (worker)

    def docker_client(self):
        if self.docker is None:
            try:
                self.docker = docker_inventory.connect(self.config.docker.url)
            except Exception as exc:  # docker.errors.DockerException or OSError: process-only mode
                log.debug("docker_connect_failed", error=str(exc))
                return None
        return self.docker

    def refresh_container(self, container_id: str) -> ContainerInfo | None:
        client = self.docker_client()
        if client is None or not container_id:
            return None
        try:
            info = docker_inventory.container_from_inspect(client.api.inspect_container(container_id))
        except Exception as exc:  # NotFound (gone already) or the socket dropped: the resync will catch up
            log.debug("container_inspect_failed", container=container_id[:12], error=str(exc))
            if "NotFound" in type(exc).__name__:
                self.forget_container(container_id)
            else:
                self.docker = None
            return None
        if info.id == self.own_container:
            return None
        self.containers[info.id] = info
        self.image_evidence[info.id] = self.inspector.container_evidence(info)
        if info.upper_dir:
            self.file_watcher.add_layer(info.id, info.upper_dir)
        return info

    def forget_container(self, container_id: str) -> None:
        if self.containers.pop(container_id, None) is not None:
            self.file_watcher.remove_layer(container_id)
        self.image_evidence.pop(container_id, None)
        self.container_cgroups.pop(container_id, None)

    def resync_containers(self) -> None:
        client = self.docker_client()
        if client is None:
            return
        inv = docker_inventory.list_running(self.config.docker.url, client)
        if not inv.reachable:
            self.docker = None
            return
        for cid in list(self.containers):
            if cid not in inv.containers:
                self.forget_container(cid)
        for cid in inv.containers:
            if cid not in self.containers:
                if self.refresh_container(cid):
                    self.inspect_container_processes(cid)

    def inspect_container_processes(self, container_id: str) -> None:
        """Inspect every process of a container now (a start event may come before its exec events)."""
        found = False
        for pid in self.inspector.procfs.container_pids(container_id):
            snap = self._snapshot(pid)
            if snap is not None and snap.container_id == container_id:
                found = True
                self.judge(snap, reason="container")
        if not found:
            self.container_only_finding(container_id)

    def container_only_finding(self, container_id: str) -> None:
        """A container whose image is suspicious but none of whose processes is, yet: judge the container
        on its image evidence and its cgroup's CPU behaviour."""
        evidence = self.image_evidence.get(container_id)
        if evidence and (info := self.containers.get(container_id)):
            verdict = self.behaviour.cgroup_verdict(container_id) if self.behaviour is not None else None
            if verdict is not None:
                evidence = [*evidence, *behaviour_detector.container_evidence(verdict)]
            if finding := self.inspector.judge_container(info, evidence):
                self.emit(finding)

    # ------------------------------------------------------------------ processes (worker)

    def inspect_pid(self, pid: int, reason: str) -> None:
        if pid == self.own_pid:
            return
        snap = self._snapshot(pid)
        if snap is not None:
            self.judge(snap, reason=reason)

    def _snapshot(self, pid: int) -> ProcessSnapshot | None:
        return self.inspector.procfs.snapshot(pid, tables=self.net_tables)

    def judge(self, snap: ProcessSnapshot, reason: str, memory: bool = False) -> Finding | None:
        if snap.pid == self.own_pid or (self.own_container and snap.container_id == self.own_container):
            return None
        tracked = self.tracked.get(snap.pid)
        if tracked is None or tracked.start_ticks != snap.start_ticks:
            if len(self.tracked) >= MAX_TRACKED:
                return None
            tracked = self.tracked[snap.pid] = Tracked(snap.start_ticks, snap.container_id)
        tracked.checks += 1
        if snap.container_id and snap.cgroup_path:
            self.container_cgroups[snap.container_id] = snap.cgroup_path
        if tracked.checks == 1 and self.behaviour is not None and is_msr_modprobe(snap.cmdline):
            self.note_msr_modprobe(snap)
        container = self.containers.get(snap.container_id) if snap.container_id else None
        if snap.container_id and container is None and snap.container_runtime in ("docker", ""):
            container = self.refresh_container(snap.container_id)
        snap = self.inspector.scan_exe(snap)
        if memory:
            snap = self.inspector.scan_memory(snap)
        observed = self.behaviour_evidence(snap)
        finding = self.inspector.judge_process(snap, container, self.image_evidence.get(snap.container_id, ()),
                                               observed)
        if finding is None:
            return None
        tracked.interesting = True
        if finding.severity > tracked.severity:
            tracked.severity = finding.severity
        if (not memory and finding.severity >= Severity.MEDIUM and self.behaviour is not None
                and not any(e.signal == "yara" for e in finding.evidence)):
            # Suspicious but nothing in its file: a packed miner shows itself in memory once it runs.
            self.behaviour.request_scan(snap.pid, snap.start_ticks, self.clock())
        self.emit(finding)
        return finding

    def behaviour_evidence(self, snap: ProcessSnapshot) -> list[Evidence]:
        verdict = self.behaviour.verdict(snap.pid, snap.start_ticks) if self.behaviour is not None else None
        if verdict is None:
            return []
        return behaviour_detector.process_evidence(verdict)

    def note_msr_modprobe(self, snap: ProcessSnapshot) -> None:
        """xmrig runs ``sh -c "modprobe msr allow_writes=on"``: blame the miner (the shell's parent)."""
        for pid in (snap.ppid, self._parent_of(snap.ppid)):
            parent = self.tracked.get(pid) if pid else None
            if parent is not None:
                self.behaviour.note_artefact(pid, parent.start_ticks, MSR_MODPROBE_CHILD, self.clock())
                self.behaviour.request_scan(pid, parent.start_ticks, self.clock())

    def _parent_of(self, pid: int) -> int:
        snap = self._snapshot(pid) if pid else None
        return snap.ppid if snap is not None else 0

    # ------------------------------------------------------------------ periodic (worker)

    def initial_scan(self, stop: threading.Event) -> None:
        """At start: every running container and every process, like a sweep (until ``stop``)."""
        self.resync_containers()
        for pid in self.inspector.procfs.pids():
            if stop.is_set():
                return
            if pid not in self.tracked:
                self.inspect_pid(pid, reason="startup")

    def periodic(self) -> None:
        started = self.clock()
        self.net_tables.clear()
        pids = self.inspector.procfs.pids()
        alive = set(pids)
        for pid in [p for p in self.tracked if p not in alive]:
            del self.tracked[pid]
            self.behaviour.forget(pid)
        # Behaviour: one cheap stat read per process; details only for busy ones (see CpuSampler).
        for sample in self.sampler.sample([p for p in pids if p != self.own_pid]):
            self.behaviour.observe(sample)
        cgroups = {cid: path for cid, path in self.container_cgroups.items() if cid in self.containers}
        for sample in self.sampler.sample_cgroups(cgroups):
            self.behaviour.observe_cgroup(sample)
        self.behaviour.observe_host(self.sampler.host_artefacts())
        candidates = set(self.behaviour.candidates(limit=2))
        for pid in pids:
            tracked = self.tracked.get(pid)
            if tracked is None:
                self.inspect_pid(pid, reason="poll")  # missed by the connector, or no connector
            elif tracked.checks <= YOUNG_RECHECKS or tracked.interesting or pid in candidates:
                snap = self._snapshot(pid)
                if snap is not None:
                    self.judge(snap, reason="recheck", memory=pid in candidates)
        if self.file_watcher is not None:
            self.file_watcher.refresh()
        if self.docker is None and self.docker_client() is not None:
            self.resync_containers()
        elapsed = self.clock() - started
        self.stats.scans += 1
        self.stats.scan_seconds += elapsed
        self.stats.last_scan_seconds = elapsed

    # ------------------------------------------------------------------ output

    def emit(self, finding: Finding) -> None:
        self.stats.findings[finding.severity.word] += 1
        if self.responder is not None:
            finding = self.responder.respond(finding)  # never raises; a failed action is alerted (dedupe lets it through)
        if finding.severity < self.config.alert_severity and finding.response.result not in ("done", "failed"):
            return
        try:
            self.alerts.submit(alert.build(finding))
        except SpoolError as exc:  # disk full or state dir unusable: say so loudly, keep detecting
            self.stats.alert_spool_errors += 1
            log.error("alert_not_spooled", finding=finding.finding_id, severity=finding.severity.word, error=str(exc))

    def status_line(self) -> str:
        docker = "docker events" if self.docker_watcher is not None and self.docker_watcher.connected else "no docker (process-only)"
        execs = "exec events" if self.proc_connector is not None else "polling (no proc connector)"
        return (f"watching {len(self.tracked)} processes, {len(self.containers)} containers; {docker}; {execs}; "
                f"signatures {self.signatures.version}")

    def metrics_snapshot(self) -> dict:
        return {
            "processes": len(self.tracked),
            "containers": len(self.containers),
            "docker_connected": bool(self.docker_watcher is not None and self.docker_watcher.connected),
            "proc_connector": self.proc_connector is not None,
            "findings": dict(self.stats.findings),
            "events": dict(self.stats.events),
            "events_dropped": dict(self.queue.dropped),
            "queue": self.queue.qsize(),
            "scans": self.stats.scans,
            "scan_seconds": self.stats.scan_seconds,
            "last_scan_seconds": self.stats.last_scan_seconds,
            "detector_errors": sum(self.inspector.engine.errors.values()),
            "alerts": self.alerts.stats() if self.alerts is not None else {},
        }
