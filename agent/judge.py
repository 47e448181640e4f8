"""Judging: a collected snapshot (process, file, container) in its context becomes a finding or nothing.

Pure: the engine and the facts it judges against (the signature bundle, the image allow
list). No I/O, no clock; the sweep, the daemon and scan-image all judge through it, so
they judge alike. Collecting is ``collectors.snapshots``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from agent.config import Config
from agent.detectors.base import Context
from agent.engine import Engine
from agent.model import ContainerInfo, Evidence, FileSnapshot, Finding, ProcessSnapshot
from agent.signatures import Signatures


class Judge:
    def __init__(self, signatures: Signatures, image_allow: tuple[str, ...] = (), *, agent_container: str = "",
                 engine: Engine | None = None) -> None:
        """``agent_container``: the container the agent itself runs in ("" on the host)."""
        self.signatures = signatures
        self.engine = engine or Engine()
        self.context = Context(signatures=signatures, image_allow=image_allow, agent_container=agent_container)

    @classmethod
    def from_config(cls, config: Config, signatures: Signatures, *, agent_container: str = "",
                    engine: Engine | None = None) -> "Judge":
        return cls(signatures, config.images.allow, agent_container=agent_container, engine=engine)

    def with_signatures(self, config: Config, signatures: Signatures) -> "Judge":
        """A judge on a reloaded bundle; the engine (and its error counters) carries over."""
        return Judge.from_config(config, signatures, agent_container=self.context.agent_container, engine=self.engine)

    @property
    def detector_errors(self) -> int:
        return sum(self.engine.errors.values())

    def _context(self, container: ContainerInfo | None) -> Context:
        return dataclasses.replace(self.context, container=container)

    def container_evidence(self, container: ContainerInfo) -> list[Evidence]:
        """What the container detectors say of a container (its image, config, behaviour)."""
        return self.engine.container_evidence(container, self._context(container))

    def process(self, proc: ProcessSnapshot, container: ContainerInfo | None = None,
                image_evidence: Iterable[Evidence] = ()) -> Finding | None:
        """A process (collected and scanned) in its container; ``image_evidence`` joins its own evidence."""
        if container is None and proc.container_id:
            container = ContainerInfo(id=proc.container_id, runtime=proc.container_runtime or "unknown")
        return self.engine.evaluate_process(proc, self._context(container), extra=image_evidence)

    def file(self, snap: FileSnapshot, container: ContainerInfo | None = None) -> Finding | None:
        return self.engine.evaluate_file(snap, self._context(container))

    def container(self, container: ContainerInfo) -> Finding | None:
        """A container judged on its own (its image, config and cgroup behaviour), no process needed."""
        return self.engine.evaluate_container(container, self._context(container))
