"""The alert as an OCSF 1.x Detection Finding (class_uid 2004), for ``[alerts] format = "ocsf"``.

Built from the same Finding as the ECS alert, by way of that alert (``agent.alert.build``): every
value is taken from it, so both formats say the same thing and carry the same caps (the ECS
alert's ``bounded`` limits have already applied to each string; the OCSF object is bounded again by
``alert.bounded`` only when it grows past ``MAX_ALERT_BYTES``). The MITRE ATT&CK mapping (T1496
Resource Hijacking, tactic TA0040 Impact) is in ``finding_info.attacks``. What OCSF has no
attribute for (the score, the response, the image layer, the fields cut) is under
``unmapped.minerwatch``. Subjects are OCSF objects in the first ``evidences`` item (process, file,
container, dst_endpoint); each piece of evidence is one more ``evidences`` item (``name`` the signal,
``data`` its detail and weight). Profiles: ``host`` (``device``), and ``container`` when there is one.
"""

from __future__ import annotations

from datetime import datetime

from agent import alert as ecs
from agent.alert import MAX_ALERT_BYTES, bounded
from agent.model import Finding
from agent.sinks.base import encode

OCSF_VERSION = "1.5.0"
CLASS_UID = 2004  # Detection Finding
CATEGORY_UID = 2  # Findings
ACTIVITY_CREATE = 1
# OCSF severity_id: 1 Informational, 2 Low, 3 Medium, 4 High, 5 Critical.
SEVERITY_IDS = {"low": (2, "Low"), "medium": (3, "Medium"), "high": (4, "High"), "critical": (5, "Critical")}
_HASH_ALGORITHMS = (("md5", 1, "MD5"), ("sha1", 2, "SHA-1"), ("sha256", 3, "SHA-256"))


def is_ocsf(alert: dict) -> bool:
    return alert.get("class_uid") == CLASS_UID and "metadata" in alert


def build(finding: Finding, **kw) -> dict:
    """The OCSF Detection Finding for ``finding`` (``kw`` as ``alert.build``)."""
    return from_alert(ecs.build(finding, **kw))


def _millis(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1000)


def _hashes(hashes: dict | None) -> list[dict]:
    return [{"algorithm_id": uid, "algorithm": name, "value": hashes[key]}
            for key, uid, name in _HASH_ALGORITHMS if hashes and hashes.get(key)]


def _file(path: str, hashes: dict | None, size: int | None = None) -> dict:
    out: dict = {"name": path.rsplit("/", 1)[-1] or path, "path": path, "type_id": 1, "type": "Regular File"}
    if size is not None:
        out["size"] = size
    if digests := _hashes(hashes):
        out["hashes"] = digests
    return out


def _process(p: dict) -> dict:
    out: dict = {"pid": p["pid"]}
    for ecs_key, key in (("name", "name"), ("command_line", "cmd_line")):
        if p.get(ecs_key):
            out[key] = p[ecs_key]
    if p.get("executable"):
        out["file"] = _file(p["executable"], p.get("hash"))
    if "parent" in p:
        out["parent_process"] = {"pid": p["parent"]["pid"]}
    if user := p.get("user"):
        out["user"] = {k: v for k, v in (("name", user.get("name")), ("uid", user.get("id"))) if v}
    if p.get("working_directory"):
        out["working_directory"] = p["working_directory"]
    return out


def _container(c: dict) -> dict:
    out: dict = {"uid": c["id"], "name": c.get("name") or c["id"][:12], "runtime": c.get("runtime", "")}
    if image := (c.get("image") or {}).get("name"):
        out["image"] = {"name": image, "uid": image}
    return out


def _observables(a: dict) -> list[dict]:
    out = []
    for where, obj in (("process.hash", (a.get("process") or {}).get("hash")), ("file.hash", (a.get("file") or {}).get("hash"))):
        if obj and obj.get("sha256"):
            out.append({"name": f"{where}.sha256", "type_id": 8, "type": "Hash", "value": obj["sha256"]})
    dest = a.get("destination") or {}
    if dest.get("domain"):
        out.append({"name": "dst_endpoint.domain", "type_id": 1, "type": "Hostname", "value": dest["domain"]})
    if dest.get("ip"):
        out.append({"name": "dst_endpoint.ip", "type_id": 2, "type": "IP Address", "value": dest["ip"]})
    return out


def from_alert(a: dict) -> dict:
    """The OCSF Detection Finding for the ECS alert ``a`` (from ``alert.build``, or scan-image's ``alerts``)."""
    mw = a["minerwatch"]
    severity_id, severity = SEVERITY_IDS.get(mw["severity"], (0, "Unknown"))
    threat = a["threat"]
    subject: dict = {"name": "subject"}
    if "process" in a:
        subject["process"] = _process(a["process"])
    if "file" in a:
        subject["file"] = _file(a["file"]["path"], a["file"].get("hash"), a["file"].get("size"))
    if "container" in a:
        subject["container"] = _container(a["container"])
    if dest := a.get("destination"):
        subject["dst_endpoint"] = {k2: dest[k1] for k1, k2 in (("ip", "ip"), ("port", "port"), ("domain", "domain"))
                                   if k1 in dest}
    evidences = [subject] if len(subject) > 1 else []
    evidences += [{"name": e["signal"], "data": {"detail": e["detail"], "weight": e["weight"]}} for e in mw["evidence"]]
    unmapped = {k: v for k, v in mw.items() if k not in ("evidence", "finding_id")}
    out: dict = {
        "activity_id": ACTIVITY_CREATE, "activity_name": "Create",
        "category_uid": CATEGORY_UID, "category_name": "Findings",
        "class_uid": CLASS_UID, "class_name": "Detection Finding",
        "type_uid": CLASS_UID * 100 + ACTIVITY_CREATE, "type_name": "Detection Finding: Create",
        "time": _millis(a["@timestamp"]), "time_dt": a["@timestamp"],
        "severity_id": severity_id, "severity": severity,
        "status_id": 1, "status": "New",
        "message": a["message"],
        "risk_score": int(mw["score"]),
        "metadata": {
            "version": OCSF_VERSION,
            "uid": a["event"]["id"],
            "correlation_uid": mw["finding_id"],
            "product": {"name": "minerwatch", "vendor_name": "minerwatch", "version": a["agent"]["version"]},
            "profiles": ["host", "container"] if "container" in a else ["host"],
            "labels": list(a.get("tags", [])),
        },
        "finding_info": {
            "uid": mw["finding_id"],
            "title": a["rule"]["name"],
            "desc": a["message"],
            "types": list(a["event"]["category"]),
            "analytic": {"name": a["rule"]["name"], "uid": a["rule"]["ruleset"], "type_id": 1, "type": "Rule"},
            "attacks": [{
                "version": "v15",
                "tactic": {"uid": threat["tactic"]["id"], "name": threat["tactic"]["name"]},
                "technique": {"uid": threat["technique"]["id"], "name": threat["technique"]["name"]},
            }],
        },
        "device": {"hostname": a["host"]["name"], "name": a["host"]["name"], "type_id": 1, "type": "Server"},
        "evidences": evidences,
        "unmapped": {"minerwatch": unmapped},
    }
    if "container" in a:
        out["container"] = _container(a["container"])
    if observables := _observables(a):
        out["observables"] = observables
    if not out["metadata"]["labels"]:
        del out["metadata"]["labels"]
    return fit(out)


def fit(out: dict, max_bytes: int = MAX_ALERT_BYTES) -> dict:
    """``out`` if its encoding fits in ``max_bytes``, else ``alert.bounded`` of it (the same caps as the
    ECS alert's); what was cut is named in ``unmapped.minerwatch.truncated``."""
    if len(encode(out)) <= max_bytes:
        return out
    pinned = list(_pinned(out, ()))
    room = max_bytes - sum(len(encode(v)) for _, v in pinned)
    source = out
    for _ in range(6):  # bounded() of the rest, then ids, digests and the schema's captions put back uncut
        out = bounded(source, max(room, 64))
        for path, value in pinned:
            _put(out, path, value)
        over = len(encode(out)) - max_bytes
        if over <= 0:
            break
        room -= over
    cut = out.pop("minerwatch", {}).get("truncated", [])
    mw = out["unmapped"]["minerwatch"]
    mw["truncated"] = sorted(set(mw.get("truncated", ())) | set(cut))
    return out


# Values the agent sets from bounded sources (ids, digests, versions, enum captions): never cut.
_PINNED = frozenset({"uid", "correlation_uid", "value", "version", "time_dt", "algorithm", "type", "type_name",
                     "class_name", "category_name", "activity_name", "severity", "status", "runtime"})


def _pinned(value, path: tuple):
    if isinstance(value, dict):
        for k, v in value.items():
            if k in _PINNED and isinstance(v, str):
                yield (*path, k), v
            else:
                yield from _pinned(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _pinned(v, (*path, i))


def _put(obj, path: tuple, value) -> None:
    for key in path[:-1]:
        if isinstance(obj, dict) and key in obj or isinstance(obj, list) and isinstance(key, int) and key < len(obj):
            obj = obj[key]
        else:
            return  # that item was cut
    if isinstance(obj, dict) and isinstance(obj.get(path[-1]), str):
        obj[path[-1]] = value


def header(alert: dict) -> dict:
    """What a sink reads of an alert beside its line (``sinks.syslog``: time, host, severity, test;
    ``sinks.webhook`` and delivery logs: the event id), in the ECS alert's field names, for an OCSF alert."""
    mw = (alert.get("unmapped") or {}).get("minerwatch") or {}
    out: dict = {
        "@timestamp": alert.get("time_dt", ""),
        "event": {"id": (alert.get("metadata") or {}).get("uid", "")},
        "host": {"name": (alert.get("device") or {}).get("hostname", "")},
        "minerwatch": {"severity": mw.get("severity", ""), "finding_id": (alert.get("finding_info") or {}).get("uid", "")},
    }
    if mw.get("test"):
        out["minerwatch"]["test"] = True
    return out
