"""Known-bad file hashes (SHA-256, SHA-1 or MD5) of a process executable (or of the program a dynamic
loader runs for it: ``ProcessSnapshot.program_hashes``) or a file."""

from __future__ import annotations

from agent.detectors.base import Context
from agent.model import Evidence, Severity

ID = "hash_ioc"
VERSION = 1
TITLE = "Known cryptominer hash"


def detect(subject, ctx: Context) -> list[Evidence]:
    program = getattr(subject, "program", "")
    for hashes, of in ((subject.hashes, ""), (getattr(subject, "program_hashes", None), f" (program {program})")):
        if hashes is None:
            continue
        found = _known(hashes, of, ctx)
        if found:
            return found
    return []


def _known(hashes, of: str, ctx: Context) -> list[Evidence]:
    for algo in ("sha256", "sha1", "md5"):
        digest = getattr(hashes, algo)
        entry = ctx.signatures.hashes.get(digest)
        if entry is not None:
            label = f" ({entry.name})" if entry.name else ""
            return [
                Evidence(
                    signal="hash",
                    detail=f"{algo} {digest}{of} is a known miner{label}; source: {entry.source}",
                    weight=100,
                    rule=f"{ID}@{VERSION}",
                    floor=Severity.CRITICAL,
                )
            ]
    return []
