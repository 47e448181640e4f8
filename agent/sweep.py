"""The one-shot sweep: every process (host and containers), running containers and watched paths."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from agent.collectors import docker_inventory, files
from agent.collectors.hashing import HashCache
from agent.collectors.procfs import ProcfsCollector
from agent.collectors.yarascan import YaraScanner
from agent.config import Config
from agent.detectors.base import Context
from agent.engine import Engine
from agent.model import ContainerInfo, Finding, ProcessSnapshot
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
    """Wires collectors, the YARA scanner and the engine; reusable so caches stay warm."""

    def __init__(self, config: Config, signatures: Signatures, *, docker_client=None) -> None:
        self.config = config
        self.signatures = signatures
        self.hash_cache = HashCache()
        max_bytes = config.watch.max_file_mb << 20
        self.procfs = ProcfsCollector(
            proc_root=Path(config.agent.proc_root), hash_cache=self.hash_cache, max_exe_bytes=max_bytes,
            env_names=frozenset(signatures.env_vars),
        )
        self.yara = YaraScanner(signatures.yara, max_bytes=max_bytes)
        self.engine = Engine()
        self.docker_client = docker_client

    def _with_yara(self, proc: ProcessSnapshot) -> ProcessSnapshot:
        if proc.hashes is None or proc.is_kernel_thread:
            return proc
        hits = self.yara.scan_file(f"{self.config.agent.proc_root}/{proc.pid}/exe", proc.hashes.sha256)
        return dataclasses.replace(proc, yara=hits) if hits else proc

    def run(self, progress: Progress | None = None) -> SweepResult:
        started = time.monotonic()
        inv = docker_inventory.list_running(self.config.docker.url, self.docker_client)
        result = SweepResult(findings=[], docker_reachable=inv.reachable, docker_error=inv.error)
        if not inv.reachable:
            result.notes.append(f"Docker was not reachable at {self.config.docker.url}: containers are reported by cgroup id only")
        result.containers = len(inv.containers)

        snaps, stats = self.procfs.snapshot_all(
            progress=(lambda done, total: progress("processes", done, total)) if progress else None
        )
        result.processes = len(snaps)
        result.vanished = getattr(stats, "vanished", 0)
        result.partial_processes = sum(1 for s in snaps if s.partial)

        containers = dict(inv.containers)
        image_evidence: dict[str, list] = {}
        base_ctx = Context(signatures=self.signatures, image_allow=self.config.images.allow)
        for cid, info in containers.items():
            image_evidence[cid] = self.engine.container_evidence(info, dataclasses.replace(base_ctx, container=info))

        with_process_finding: set[str] = set()
        for i, proc in enumerate(snaps):
            if progress:
                progress("detect", i + 1, len(snaps))
            container = None
            if proc.container_id:
                container = containers.get(proc.container_id) or ContainerInfo(
                    id=proc.container_id, runtime=proc.container_runtime or "unknown"
                )
            ctx = dataclasses.replace(base_ctx, container=container)
            finding = self.engine.evaluate_process(
                self._with_yara(proc), ctx, extra=image_evidence.get(proc.container_id, ())
            )
            if finding:
                result.findings.append(finding)
                if proc.container_id:
                    with_process_finding.add(proc.container_id)

        for cid, evidence in image_evidence.items():
            if evidence and cid not in with_process_finding:
                info = containers[cid]
                f = self.engine.evaluate_container(info, dataclasses.replace(base_ctx, container=info), evidence)
                if f:
                    result.findings.append(f)

        for snap in files.scan_paths(self.config.watch.paths, self.hash_cache, self.config.watch.max_file_mb << 20):
            result.files += 1
            snap = dataclasses.replace(snap, yara=self.yara.scan_file(snap.path, snap.hashes.sha256 if snap.hashes else None))
            if f := self.engine.evaluate_file(snap, base_ctx):
                result.findings.append(f)

        result.findings = _merge(result.findings)
        result.detector_errors = sum(self.engine.errors.values())
        result.duration_s = time.monotonic() - started
        return result


def _merge(findings: list[Finding]) -> list[Finding]:
    """One finding per finding_id (several processes of one binary in one container are one incident)."""
    best: dict[str, Finding] = {}
    for f in findings:
        cur = best.get(f.finding_id)
        if cur is None or (f.severity, f.score) > (cur.severity, cur.score):
            best[f.finding_id] = f
    return sorted(best.values(), key=lambda f: (-f.severity, -f.score, f.finding_id))
