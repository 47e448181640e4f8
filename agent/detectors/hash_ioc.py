"""Known-bad file hashes (SHA-256, SHA-1 or MD5) of a process executable or a file."""

from __future__ import annotations

from agent.detectors.base import Context
from agent.model import Evidence, Severity

ID = "hash_ioc"
VERSION = 1
TITLE = "Known cryptominer hash"


def detect(subject, ctx: Context) -> list[Evidence]:
    hashes = subject.hashes
    if hashes is None:
        return []
    for algo in ("sha256", "sha1", "md5"):
        digest = getattr(hashes, algo)
        entry = ctx.signatures.hashes.get(digest)
        if entry is not None:
            label = f" ({entry.name})" if entry.name else ""
            return [
                Evidence(
                    signal="hash",
                    detail=f"{algo} {digest} is a known miner{label}; source: {entry.source}",
                    weight=100,
                    rule=f"{ID}@{VERSION}",
                    floor=Severity.CRITICAL,
                )
            ]
    return []
