"""The one-shot sweep: every process (host and containers), running containers and watched paths."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from agent.collectors import files
from agent.collectors.docker_api import DockerDown, DockerHandle, DockerRefused
from agent.collectors.snapshots import SnapshotCollector
from agent.config import Config
from agent.judge import Judge
from agent.model import ContainerInfo, Finding
from agent.signatures import Signatures

log = structlog.get_logger("minerwatch.sweep")

Progress = Callable[[str, int, int], None]  # (stage, done, total)


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

        snaps, stats = collect.procfs.snapshot_all(
            progress=(lambda done, total: progress("processes", done, total)) if progress else None
        )
        result.processes = len(snaps)
        result.vanished = stats.vanished
        result.partial_processes = stats.partial

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
            if evidence and cid not in with_process_finding:
                if f := judge.container(containers[cid]):
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

    def _respond(self, findings: list[Finding]) -> list[Finding]:
        from agent.response import Responder  # only for `sweep --respond`
        from agent.state_dir import prepare_state_dir

        prepare_state_dir(self.config.agent.state_dir, self.config.source)
        responder = Responder(self.config, self.docker, state_dir=self.config.agent.state_dir, actor="minerwatch sweep")
        return [responder.respond(f) for f in findings]


def _merge(findings: list[Finding]) -> list[Finding]:
    """One finding per finding_id (several processes of one binary in one container are one incident)."""
    best: dict[str, Finding] = {}
    for f in findings:
        cur = best.get(f.finding_id)
        if cur is None or (f.severity, f.score) > (cur.severity, cur.score):
            best[f.finding_id] = f
    return sorted(best.values(), key=lambda f: (-f.severity, -f.score, f.finding_id))
