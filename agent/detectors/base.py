"""What every detector receives, and the shape it must have.

A detector is a module with ``ID``, ``VERSION``, ``TITLE`` and a pure function
``detect(subject, ctx) -> list[Evidence]``: no I/O, no clock, no globals. Everything it
judges is in its subject (a snapshot the collectors made, with what the daemon observed
over time attached) or in the context. The engine runs it behind a crash barrier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from agent.model import ContainerInfo, Evidence
from agent.signatures import Signatures


@dataclass(frozen=True, slots=True)
class Context:
    """Read-only facts a detector may use beside its subject."""

    signatures: Signatures
    container: ContainerInfo | None = None
    image_allow: tuple[str, ...] = ()
    agent_container: str = ""  # the container minerwatch itself runs in ("" on the host)


class Detector(Protocol):
    """A detector module (``detectors/*.py``), registered by hand in ``detectors/__init__.py``."""

    ID: str
    VERSION: int
    TITLE: str

    def detect(self, subject, ctx: Context, /) -> list[Evidence]: ...
