"""Turn a Finding into one self-contained ECS alert (a plain dict, JSON-ready).

An alert is bounded: whatever a process, a container or an image puts in it (a command line
padded to 64 KiB, a huge argument list, a long path, an image Env value quoted in evidence),
the encoded alert is at most ``MAX_ALERT_BYTES`` (16 KiB), so UDP syslog (8 KiB datagrams
by default, see ``sinks.syslog``) and webhooks with a body limit take it. Every string is
capped to a size set per field (``_STRING_LIMITS``, in bytes of its JSON encoding), long
lists to a number of items; a cut string keeps its head and its tail with ``…`` between
them (a pool URL after the padding survives), a cut argument list keeps its first and its
last arguments with one ``…`` argument between them. The dotted names of the fields cut are
listed in ``minerwatch.truncated``. Identifiers and digests are never cut.
"""

from __future__ import annotations

import socket
import uuid
from datetime import datetime, timezone

from agent import __version__
from agent.model import Finding
from agent.sinks.base import encode

ECS_VERSION = "8.11.0"
MAX_ALERT_BYTES = 16 << 10
MARK = "\u2026"  # "…": where text was cut
_MARK_COST = len(MARK.encode("utf-8"))

# Bytes (of the JSON encoding, quotes excluded) one value of the field may take. Fields
# named by dotted path; list items take the list's name (process.args is one argument).
_STRING_LIMITS = {
    "message": 512,
    "rule.name": 256,
    "host.name": 255,
    "process.command_line": 2048,
    "process.args": 512,
    "process.name": 128,
    "process.executable": 512,
    "process.working_directory": 512,
    "process.user.name": 128,
    "container.name": 256,
    "container.image.name": 512,
    "file.path": 1024,
    "destination.domain": 255,
    "minerwatch.evidence.detail": 512,
    "minerwatch.response.reason": 512,
}
_DEFAULT_STRING = 256  # any other free-text field (and any field added later)
# Items a list may keep, and the bytes all of its items may take together.
_LIST_ITEMS = {"process.args": 64, "minerwatch.evidence": 16}
_LIST_BYTES = {"process.args": 2048, "minerwatch.evidence": 4096}
_DEFAULT_ITEMS = 32
# Set by the agent itself from bounded values (ids, digests, timestamps, its own keywords):
# never cut (a cut id would name something else, a cut keyword would break the schema);
# capped only as a safety net.
_EXACT = frozenset({
    "@timestamp", "event.id", "minerwatch.finding_id", "container.id", "container.runtime",
    "process.hash.sha256", "process.hash.sha1", "process.hash.md5",
    "file.hash.sha256", "file.hash.sha1", "file.hash.md5",
    "ecs.version", "tags", "event.kind", "event.category", "event.type", "event.action", "event.module",
    "event.dataset", "rule.ruleset", "agent.type", "agent.version", "minerwatch.severity",
    "minerwatch.evidence.signal", "minerwatch.response.action", "minerwatch.response.result",
    "threat.framework", "threat.tactic.id", "threat.tactic.name", "threat.technique.id", "threat.technique.name",
})
_EXACT_LIMIT = 128
_C1 = {cp: f"\\x{cp:02x}" for cp in range(0x80, 0xA0)}


def _clean(value):
    """Make every string valid UTF-8: bytes smuggled in as surrogates (non-UTF-8 paths) become ``\\xNN``.

    C1 control characters (U+0080-U+009F) become ``\\xNN`` too: JSON leaves them raw, and a
    terminal showing an alert line (the stdout sink, ``sweep --json``) would act on them.
    C0 controls need nothing here: every JSON encoder escapes them.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            try:  # lone \udc80-\udcff: bytes from a surrogateescape decode
                value = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            except UnicodeEncodeError:  # any other lone surrogate
                value = value.encode("utf-8", "backslashreplace").decode("ascii")
        return value.translate(_C1)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _cost(value) -> int:
    """Bytes ``value`` takes in an alert line as ``sinks.base.encode`` writes it (a string: quotes excluded)."""
    size = len(encode(value))
    return size - 2 if isinstance(value, str) else size


def _fitting(chars: str, budget: int) -> int:
    """How many of ``chars``, from the start, fit in ``budget`` encoded bytes."""
    used = 0
    for n, ch in enumerate(chars):
        used += _cost(ch)
        if used > budget:
            return n
    return len(chars)


def _cut(text: str, limit: int) -> str | None:
    """``text`` cut to at most ``limit`` encoded bytes, head and tail kept around ``…``; None if it fits."""
    if len(text) * 6 <= limit or _cost(text) <= limit:  # 6: the most one character takes (\u00XX)
        return None
    budget = max(0, limit - _MARK_COST)
    head_budget, tail_budget = budget - budget // 2, budget // 2
    # Each character takes at least one byte: look at no more than could fit.
    head = _fitting(text[:head_budget], head_budget)
    tail = _fitting(text[-tail_budget:][::-1], tail_budget) if tail_budget else 0
    return text[:head] + MARK + (text[len(text) - tail:] if tail else "")


def _cut_list(items: list, name: str, scale: float) -> tuple[list, bool]:
    """At most the list's item count and byte budget; args keep head and tail, others their start."""
    max_items = max(1, int(_LIST_ITEMS.get(name, _DEFAULT_ITEMS) * scale))
    max_bytes = int(_LIST_BYTES[name] * scale) if name in _LIST_BYTES else None
    costs = [_cost(v) + 3 for v in items]  # its quotes (strings) and a comma
    if len(items) <= max_items and (max_bytes is None or sum(costs) <= max_bytes):
        return items, False
    budget = max_bytes if max_bytes is not None else float("inf")
    if name == "process.args":  # argv[0] and the options at the end both matter
        half_items, half_bytes = max(1, (max_items - 1) // 2), budget / 2
        head, used = 0, 0
        while head < len(items) and head < half_items and used + costs[head] <= half_bytes:
            used, head = used + costs[head], head + 1
        head = max(head, 1)
        tail, used = 0, 0
        while (tail < len(items) - head and tail < half_items
               and used + costs[len(items) - 1 - tail] <= half_bytes):
            used, tail = used + costs[len(items) - 1 - tail], tail + 1
        return items[:head] + [MARK] + (items[len(items) - tail:] if tail else []), True
    kept, used = [], 0
    for item, cost in zip(items, costs):
        if len(kept) >= max_items or (kept and used + cost > budget):
            break
        kept.append(item)
        used += cost
    return kept, True


def _bound(value, name: str, scale: float, cut: set[str]):
    """``value`` with every string and list at ``name`` (and below) within its limits (see the module doc)."""
    if isinstance(value, str):
        if name in _EXACT:
            limit = _EXACT_LIMIT
        else:
            limit = max(16, int(_STRING_LIMITS.get(name, _DEFAULT_STRING) * scale))
        short = _cut(value, limit)
        if short is None:
            return value
        cut.add(name)
        return short
    if isinstance(value, dict):
        return {k: _bound(v, f"{name}.{k}" if name else k, scale, cut) for k, v in value.items()}
    if isinstance(value, list):
        items = [_bound(v, name, scale, cut) for v in value]
        items, shortened = _cut_list(items, name, scale)
        if shortened:
            cut.add(name)
        return items
    return value


def bounded(alert: dict, max_bytes: int = MAX_ALERT_BYTES) -> dict:
    """``alert`` with its fields capped so that its encoding fits in ``max_bytes``; what was cut
    is named in ``minerwatch.truncated``. Limits are halved until it fits (a pathological alert:
    many long fields, each of escaped control characters that take six bytes apiece)."""
    for scale in (1.0, 0.5, 0.25, 0.125, 1 / 16, 1 / 64):
        cut: set[str] = set()
        out = _bound(alert, "", scale, cut)
        if cut:
            mw = out.setdefault("minerwatch", {})
            mw["truncated"] = sorted(set(mw.get("truncated", ())) | cut)
        if len(encode(out)) <= max_bytes:
            break
    return out


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
    return bounded(_clean(alert))
