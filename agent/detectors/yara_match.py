"""YARA rule hits on an executable or on process memory (the scanner fills ``subject.yara``).

Rules overlap on purpose (an xmrig rule and a generic stratum rule fire together), so per
category only the strongest hit counts: a ``miner`` rule is critical on its own,
``miner-suspect`` adds its weight, ``packer`` is weak evidence (UPX alone is no miner).
"""

from __future__ import annotations

from agent.detectors.base import Context
from agent.model import Evidence, Severity

ID = "yara"
VERSION = 1
TITLE = "Cryptominer YARA match"

_DEFAULT_WEIGHT = {"miner": 100, "miner-suspect": 30, "packer": 10}


def detect(subject, ctx: Context) -> list[Evidence]:
    best: dict[str, list] = {}
    for hit in subject.yara:
        best.setdefault(hit.category, []).append(hit)
    out = []
    for category, hits in best.items():
        top = max(hits, key=lambda h: h.weight)
        where = "process memory" if top.source == "memory" else "executable"
        others = [h.rule for h in hits if h is not top]
        also = f" (also: {', '.join(others)})" if others else ""
        desc = f": {top.description}" if top.description else ""
        out.append(
            Evidence(
                signal="yara",
                detail=f"YARA {category} rule {top.rule} matched the {where}{desc}{also}",
                weight=top.weight or _DEFAULT_WEIGHT.get(category, 20),
                rule=f"{ID}@{VERSION}",
                floor=Severity.CRITICAL if category == "miner" else Severity.NONE,
                strong=category != "packer",
            )
        )
    return out
