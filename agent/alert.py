"""Turn a Finding into one self-contained ECS alert (a plain dict, JSON-ready)."""

from __future__ import annotations

import socket
import uuid
from datetime import datetime, timezone

from agent import __version__
from agent.model import Finding

ECS_VERSION = "8.11.0"


def _clean(value):
    """Make every string valid UTF-8: bytes smuggled in as surrogates (non-UTF-8 paths) become ``\\xNN``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            pass
        try:  # lone \udc80-\udcff: bytes from a surrogateescape decode
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # any other lone surrogate
            return value.encode("utf-8", "backslashreplace").decode("ascii")
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _timestamp(now: datetime | None) -> str:
    now = now or datetime.now(timezone.utc)
    return now.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _process(f: Finding) -> dict | None:
    p = f.process
    if p is None:
        return None
    out: dict = {"pid": p.pid}
    if p.name:
        out["name"] = p.name
    if p.exe:
        out["executable"] = p.exe
    if p.cmdline:
        out["command_line"] = p.command_line
        out["args"] = list(p.cmdline)
    if p.hashes:
        out["hash"] = {"sha256": p.hashes.sha256, "sha1": p.hashes.sha1, "md5": p.hashes.md5}
    if p.ppid:
        out["parent"] = {"pid": p.ppid}
    if p.user or p.uid is not None:
        out["user"] = {k: v for k, v in (("name", p.user), ("id", None if p.uid is None else str(p.uid))) if v}
    if p.cwd:
        out["working_directory"] = p.cwd
    return out


def _destination(f: Finding) -> dict | None:
    dests = [e.destination for e in f.evidence if e.destination]
    if not dests:
        return None
    # Prefer an observed connection (with an IP) over a configured one.
    ip, port, domain = max(dests, key=lambda d: (bool(d[0]), bool(d[2])))
    out: dict = {}
    if ip:
        out["ip"] = ip
    if port:
        out["port"] = port
    domain = domain or next((d[2] for d in dests if d[2]), "")
    if domain:
        out["domain"] = domain
    return out or None


def build(finding: Finding, *, host_name: str | None = None, now: datetime | None = None, test: bool = False) -> dict:
    """The alert object for ``finding`` (PRODUCT.md, "Alert")."""
    categories = list(dict.fromkeys(finding.category))
    destination = _destination(finding)
    if destination and "network" not in categories:
        categories.append("network")
    alert: dict = {
        "@timestamp": _timestamp(now),
        "ecs": {"version": ECS_VERSION},
        "message": f"{finding.severity.word} cryptominer finding: {finding.rule_name}",
        "event": {
            "kind": "alert",
            "id": str(uuid.uuid4()),
            "category": categories,
            "type": ["info"],
            "action": "cryptominer-detected",
            "severity": int(finding.severity),
            "risk_score": float(finding.score),
            "module": "minerwatch",
            "dataset": "minerwatch.alert",
        },
        "rule": {"name": finding.rule_name, "ruleset": "minerwatch"},
        "threat": {
            "framework": "MITRE ATT&CK",
            "tactic": {"id": "TA0040", "name": "Impact"},
            "technique": {"id": "T1496", "name": "Resource Hijacking"},
        },
        "host": {"name": host_name or socket.gethostname()},
        "agent": {"type": "minerwatch", "version": __version__},
        "minerwatch": {
            "severity": finding.severity.word,
            "score": finding.score,
            "finding_id": finding.finding_id,
            "evidence": [e.as_dict() for e in finding.evidence],
            "response": finding.response.as_dict(),
        },
    }
    if test:
        alert["tags"] = ["minerwatch-test"]
        alert["minerwatch"]["test"] = True
        alert["message"] = "TEST ALERT from minerwatch alerts test: " + alert["message"]
    if (process := _process(finding)) is not None:
        alert["process"] = process
    if finding.container is not None:
        c = finding.container
        container: dict = {"id": c.id, "runtime": c.runtime or "docker"}
        if c.name:
            container["name"] = c.name
        if c.image:
            container["image"] = {"name": c.image}
        alert["container"] = container
    elif finding.process is not None and finding.process.container_id:
        alert["container"] = {"id": finding.process.container_id, "runtime": finding.process.container_runtime or "unknown"}
    if destination:
        alert["destination"] = destination
    if finding.file is not None:
        fl = finding.file
        file: dict = {"path": fl.path, "size": fl.size}
        if fl.hashes:
            file["hash"] = {"sha256": fl.hashes.sha256, "sha1": fl.hashes.sha1, "md5": fl.hashes.md5}
        alert["file"] = file
    return _clean(alert)
