"""What every detector receives, and the shape it must have.

A detector is a module with ``ID``, ``VERSION``, ``TITLE`` and a pure function
``detect(subject, ctx) -> list[Evidence]``. No I/O, no clock, no globals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.model import ContainerInfo
from agent.signatures import Signatures


@dataclass(frozen=True, slots=True)
class Context:
    """Read-only facts a detector may use beside its subject."""

    signatures: Signatures
    container: ContainerInfo | None = None
    image_allow: tuple[str, ...] = ()
    # ip -> pool domain, from the resolver cache at the edge (may be empty)
    pool_ips: dict[str, str] = field(default_factory=dict)
