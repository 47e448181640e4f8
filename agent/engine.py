"""Run detectors behind crash barriers and turn their evidence into scored findings."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable

import structlog

from agent import detectors
from agent.detectors.base import Context
from agent.model import ContainerInfo, Evidence, FileSnapshot, Finding, ProcessSnapshot, Severity

log = structlog.get_logger("minerwatch.engine")

# Score thresholds; floors (hash, YARA) and ceilings (weak-only, image-only) apply after.
_THRESHOLDS = ((90, Severity.CRITICAL), (55, Severity.HIGH), (30, Severity.MEDIUM), (1, Severity.LOW))
_TITLES = {d.ID: d.TITLE for d in detectors.ALL}


def severity_of(evidence: Iterable[Evidence]) -> tuple[Severity, int]:
    """Combine evidence into (severity, score).

    The score is the sum of weights, capped at 100. Weak evidence alone (CPU, location,
    a bare stratum port) is never above LOW; image evidence alone is never CRITICAL.
    """
    items = list(evidence)
    if not items:
        return Severity.NONE, 0
    score = min(sum(e.weight for e in items), 100)
    sev = next((s for limit, s in _THRESHOLDS if score >= limit), Severity.LOW)
    sev = max(sev, max(e.floor for e in items))
    if not any(e.strong for e in items):
        sev = min(sev, Severity.LOW)
    elif all(e.signal == "image" for e in items if e.strong):
        sev = min(sev, Severity.HIGH)
    return Severity(sev), score


def finding_id(*parts: str) -> str:
    """A stable id for one incident: the same subject gives the same id across sweeps and restarts."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "backslashreplace")).hexdigest()[:32]


def incident_id(container_id: str, host_subject: str) -> str:
    """One incident per container (its processes, files and image are one story for the SOC);
    on the host, one per executable or file (``host_subject``: its path and SHA-256)."""
    if container_id:
        return finding_id("container", container_id)
    return finding_id("host", host_subject)


def _rule_name(evidence: list[Evidence]) -> str:
    top = max(evidence, key=lambda e: (e.floor, e.weight))
    return _TITLES.get(top.rule.split("@", 1)[0], top.signal)


class Engine:
    """Runs the registered detectors; one detector's crash never hides another's evidence."""

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()

    def _run(self, registry, subject, ctx: Context) -> list[Evidence]:
        out: list[Evidence] = []
        for det in registry:
            try:
                out.extend(det.detect(subject, ctx))
            except Exception as exc:  # crash barrier: a detector bug must not stop the others
                self.errors[det.ID] += 1
                log.error("detector_failed", detector=f"{det.ID}@{det.VERSION}", error=repr(exc))
        return out

    def container_evidence(self, container: ContainerInfo, ctx: Context) -> list[Evidence]:
        return self._run(detectors.CONTAINER_DETECTORS, container, ctx)

    def evaluate_process(self, proc: ProcessSnapshot, ctx: Context, extra: Iterable[Evidence] = ()) -> Finding | None:
        """A finding for ``proc`` (its snapshot carries what was observed over time, such as behaviour).

        ``extra`` (its container's image evidence) joins only when the process has evidence of its own.
        """
        evidence = self._run(detectors.PROCESS_DETECTORS, proc, ctx)
        if not evidence:
            return None
        evidence.extend(extra)
        sev, score = severity_of(evidence)
        fid = incident_id(proc.container_id, f"{proc.exe or proc.name}\x1f{proc.hashes.sha256 if proc.hashes else ''}")
        return Finding(fid, sev, score, _rule_name(evidence), tuple(evidence), process=proc, container=ctx.container,
                       category=("malware", "process"))

    def evaluate_file(self, file: FileSnapshot, ctx: Context) -> Finding | None:
        evidence = self._run(detectors.FILE_DETECTORS, file, ctx)
        if not evidence:
            return None
        sev, score = severity_of(evidence)
        fid = incident_id(file.container_id, file.path + "\x1f" + (file.hashes.sha256 if file.hashes else ""))
        return Finding(fid, sev, score, _rule_name(evidence), tuple(evidence), file=file, container=ctx.container,
                       category=("malware", "file"))

    def evaluate_container(self, container: ContainerInfo, ctx: Context) -> Finding | None:
        evidence = self.container_evidence(container, ctx)
        if not evidence:
            return None
        sev, score = severity_of(evidence)
        fid = incident_id(container.id, "")
        return Finding(fid, sev, score, _rule_name(evidence), tuple(evidence), container=container,
                       category=("malware", "configuration"))
