"""YARA rule hits on an executable or on process memory (the scanner fills ``subject.yara``).

Rules overlap on purpose (an xmrig rule and a generic stratum rule fire together), so per
category only the strongest hit counts: a ``miner`` rule is critical on its own,
``miner-suspect`` adds its weight, ``packer`` is weak evidence (UPX alone is no miner).

Where a memory hit lies matters (``YaraHit.region``). A miner's strings are part of its program:
in the image of a file it executes ("code") or in code it unpacked ("anon-exec"). Strings that lie
only in its heap, stack or other data are what any process holding rule text or an IOC feed holds
(a YARA or ClamAV scan, an EDR, ``minerwatch scan-image`` in CI): such a hit is weak unless the
process has miner evidence of its own (a pool on its command line or in its own config, a pool
connection it was configured for, a miner name, hash or file YARA hit).
"""

from __future__ import annotations

from agent.detectors.base import Context
from agent.detectors.pool_urls import cmdline_urls, pool_endpoints
from agent.miner_args import miner_shaped
from agent.model import Evidence, ProcessSnapshot, Severity

ID = "yara"
VERSION = 2
TITLE = "Cryptominer YARA match"

_DEFAULT_WEIGHT = {"miner": 100, "miner-suspect": 30, "packer": 10}
_DATA_REGIONS = frozenset({"heap", "stack", "data"})
_DATA_WEIGHT = 10
_LIVE = ("ESTABLISHED", "SYN_SENT")
_OWN_CONFIG = ("explicit", "exe-dir", "home")


def own_miner_evidence(proc, ctx: Context) -> bool:
    """Facts of the process itself (not of text it holds) that say miner; pure."""
    if not isinstance(proc, ProcessSnapshot):
        return False
    if any(h.source == "file" and h.category == "miner" for h in proc.yara):
        return True
    for hashes in (proc.hashes, proc.program_hashes):
        if hashes is not None and any(getattr(hashes, a) in ctx.signatures.hashes for a in ("sha256", "sha1", "md5")):
            return True
    argv0 = proc.cmdline[0].rsplit("/", 1)[-1] if proc.cmdline else ""
    if any(n and n.lower() in ctx.signatures.miner_names for n in (proc.exe_name, proc.program_name, argv0)):
        return True
    urls = cmdline_urls(proc.cmdline)
    if any("stratum" in u.lower() for u in urls) or (urls and ("-o" in proc.cmdline or miner_shaped(proc.cmdline))):
        return True
    cfg = proc.miner_config
    if cfg is not None and cfg.pools and cfg.origin in _OWN_CONFIG:
        return True
    ports = {port for _, port, _ in pool_endpoints(proc)}
    return any(c.state in _LIVE and c.remote_port in ports for c in proc.connections)


def detect(subject, ctx: Context) -> list[Evidence]:
    best: dict[str, list] = {}
    for hit in subject.yara:
        best.setdefault(hit.category, []).append(hit)
    out = []
    own: bool | None = None
    for category, hits in best.items():
        top = max(hits, key=lambda h: (h.region not in _DATA_REGIONS, h.weight))
        where = "process memory" if top.source == "memory" else "executable"
        weight = top.weight or _DEFAULT_WEIGHT.get(category, 20)
        floor = Severity.CRITICAL if category == "miner" else Severity.NONE
        strong = category != "packer"
        if top.source == "memory" and top.region:
            where = f"process memory ({top.region})"
        if top.source == "memory" and top.region in _DATA_REGIONS:
            own = own_miner_evidence(subject, ctx) if own is None else own
            if not own:  # rule text or an IOC feed in a busy process: not its own code
                where += ", only in data and with no miner evidence of the process's own"
                weight, floor, strong = min(weight, _DATA_WEIGHT), Severity.NONE, False
        others = [h.rule for h in hits if h is not top]
        also = f" (also: {', '.join(others)})" if others else ""
        desc = f": {top.description}" if top.description else ""
        out.append(
            Evidence(
                signal="yara",
                detail=f"YARA {category} rule {top.rule} matched the {where}{desc}{also}",
                weight=weight,
                rule=f"{ID}@{VERSION}",
                floor=floor,
                strong=strong,
            )
        )
    return out
