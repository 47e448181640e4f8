"""YARA rule hits on an executable or on process memory (the scanner fills ``subject.yara``)."""

from __future__ import annotations

from agent.detectors.base import Context
from agent.model import Evidence, Severity

ID = "yara"
VERSION = 1
TITLE = "Cryptominer YARA match"


def detect(subject, ctx: Context) -> list[Evidence]:
    out = []
    for hit in subject.yara:
        miner = hit.category == "miner"
        where = "process memory" if hit.source == "memory" else "executable"
        desc = f": {hit.description}" if hit.description else ""
        out.append(
            Evidence(
                signal="yara",
                detail=f"YARA rule {hit.rule} matched the {where}{desc}",
                weight=hit.weight if hit.weight else (100 if miner else 10),
                rule=f"{ID}@{VERSION}",
                floor=Severity.CRITICAL if miner else Severity.NONE,
                strong=miner,
            )
        )
    return out
