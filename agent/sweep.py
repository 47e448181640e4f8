"""The one-shot sweep: every process (host and containers), running containers and watched paths."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from agent.collectors import files
from agent.collectors.crossview import CrossView, CrossViewResult
from agent.collectors.docker_api import DockerDown, DockerHandle, DockerRefused
from agent.collectors.snapshots import SnapshotCollector
from agent.config import Config
from agent.judge import Judge
from agent.model import ContainerInfo, Finding, ProcessSnapshot
from agent.signatures import Signatures

log = structlog.get_logger("minerwatch.sweep")

Progress = Callable[[str, int, int], None]  # (stage, done, total)
SWEEP_PROBE = 1 << 18  # /proc/N probed when the task census disagrees: all of a pid_max of 32768, ~1 s of 4194304


@dataclass
class SweepResult:
    findings: list[Finding]
    processes: int = 0
    containers: int = 0
    files: int = 0
    docker_reachable: bool = False
    docker_error: str = ""
    partial_processes: int = 0
    vanished: int = 0
    detector_errors: int = 0
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)


class Sweeper:
    """Runs one sweep: collect, then judge; reusable, so its caches stay warm between runs.

    ``respond``: apply the response policy to every finding (``sweep --respond``).
    """

    def __init__(self, config: Config, signatures: Signatures, *, docker: DockerHandle | None = None,
                 respond: bool = False) -> None:
        self.config = config
        self.collect = SnapshotCollector(config, signatures)
        self.judge = Judge.from_config(config, signatures)
        self.docker = docker or DockerHandle(config.docker.url)
        self.respond = respond

    def _containers(self, result: SweepResult) -> dict[str, ContainerInfo]:
        try:
            containers = self.docker.running()
        except (DockerDown, DockerRefused) as exc:
            log.warning("docker_unreachable", url=self.config.docker.url, error=str(exc))
            result.docker_error = str(exc)
            result.notes.append(f"Docker was not reachable at {self.config.docker.url}: containers are reported by cgroup id only")
            return {}
        result.docker_reachable = True
        return containers

    def run(self, progress: Progress | None = None) -> SweepResult:
        started = time.monotonic()
        collect, judge = self.collect, self.judge
        result = SweepResult(findings=[])
        containers = self._containers(result)
        result.containers = len(containers)

        view = CrossView(proc_root=self.config.agent.proc_root, probe_slice=SWEEP_PROBE, census=True)
        before = view.task_counters()
        snaps, stats = collect.procfs.snapshot_all(
            progress=(lambda done, total: progress("processes", done, total)) if progress else None
        )
        # The snapshots' thread counts are the census when no task came or went meanwhile (no second read
        # of every stat); otherwise the cross-view takes its own.
        census = (sum(s.num_threads for s in snaps), before) if before and view.task_counters() == before else None
        result.processes = len(snaps)
        result.vanished = stats.vanished
        result.partial_processes = stats.partial
        cross = self._cross_view(view, containers, result, census)
        snaps = _with_hiding(snaps, cross, collect.procfs.snapshot)

        image_evidence = {cid: judge.container_evidence(info) for cid, info in containers.items()}
        with_process_finding: set[str] = set()
        for i, proc in enumerate(snaps):
            if progress:
                progress("detect", i + 1, len(snaps))
            finding = judge.process(collect.scan_exe(proc), containers.get(proc.container_id),
                                    image_evidence.get(proc.container_id, ()))
            if finding:
                result.findings.append(finding)
                if proc.container_id:
                    with_process_finding.add(proc.container_id)

        for cid, evidence in image_evidence.items():
            if evidence and cid not in with_process_finding and (f := judge.container(containers[cid])):
                result.findings.append(f)

        for snap in cross.preloads:  # /etc/ld.so.preload on the host and in each container
            if f := judge.file(snap, containers.get(snap.container_id)):
                result.findings.append(f)

        for snap in files.scan_paths(self.config.watch.paths, collect.hash_cache, collect.max_bytes):
            result.files += 1
            if f := judge.file(collect.scan_host_file(snap)):
                result.findings.append(f)

        result.findings = _merge(result.findings)
        if self.respond:
            result.findings = self._respond(result.findings)
        result.detector_errors = judge.detector_errors
        result.duration_s = time.monotonic() - started
        return result

    def _cross_view(self, view: CrossView, containers: dict[str, ContainerInfo], result: SweepResult,
                    census: tuple[int, tuple[int, int]] | None) -> CrossViewResult:
        """Hidden processes and preload files (``collectors/crossview.py``): one run, one probe slice."""
        try:
            return view.run([(cid, info.pid) for cid, info in containers.items()], census=census)
        except Exception as exc:  # crash barrier: the sweep goes on without it
            log.exception("crossview_failed", error=repr(exc))
            result.notes.append(f"the hidden-process cross-view failed: {exc!r}"[:200])
            return CrossViewResult()

    def _respond(self, findings: list[Finding]) -> list[Finding]:
        from agent.response import Responder  # only for `sweep --respond`
        from agent.state_dir import prepare_state_dir

        prepare_state_dir(self.config.agent.state_dir, self.config.source)
        responder = Responder(self.config, self.docker, state_dir=self.config.agent.state_dir, actor="minerwatch sweep")
        return [responder.respond(f) for f in findings]


def _with_hiding(snaps: list[ProcessSnapshot], cross: CrossViewResult,
                 snapshot: Callable[[int], ProcessSnapshot | None]) -> list[ProcessSnapshot]:
    """The snapshots with what the cross-view found attached: hidden ones the listing missed read now, and
    a process covered by a mount (no snapshot to read) judged on that alone."""
    seen = {s.pid for s in snaps}
    snaps = snaps + [s for pid in sorted(cross.hidden.keys() - seen) if (s := snapshot(pid)) is not None]
    out = []
    for snap in snaps:
        hidden_from, mounted = cross.hidden.get(snap.pid, ()), snap.pid in cross.mounted
        out.append(dataclasses.replace(snap, hidden_from=hidden_from, proc_mounted=mounted)
                   if hidden_from or mounted else snap)
    seen = {s.pid for s in snaps}
    out.extend(ProcessSnapshot(pid=pid, proc_mounted=True, partial=("stat",)) for pid in sorted(cross.mounted - seen))
    return out


def _merge(findings: list[Finding]) -> list[Finding]:
    """One finding per finding_id (several processes of one binary in one container are one incident)."""
    best: dict[str, Finding] = {}
    for f in findings:
        cur = best.get(f.finding_id)
        if cur is None or (f.severity, f.score) > (cur.severity, cur.score):
            best[f.finding_id] = f
    return sorted(best.values(), key=lambda f: (-f.severity, -f.score, f.finding_id))
