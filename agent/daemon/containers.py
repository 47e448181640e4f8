"""The running containers the worker knows: what Docker says of each, its image evidence,
its cgroup (learnt from its processes), and the watch on its writable layer.

One owner: the worker thread. Docker is reached only through the injected ``DockerHandle``;
while it is down the registry keeps what it knew and ``resync`` catches up once it answers.
"""

from __future__ import annotations

import structlog

from agent.collectors.docker_api import ContainerGone, DockerDown, DockerHandle, DockerRefused
from agent.judge import Judge
from agent.model import ContainerInfo, Evidence

log = structlog.get_logger("minerwatch.containers")


class ContainerRegistry:
    def __init__(self, docker: DockerHandle, judge: Judge, layers) -> None:
        """``layers``: what watches writable layers (``add_layer(id, dir)``, ``remove_layer(id)``).
        The agent's own container is a container like any other here (the worker exempts only the
        agent's own processes)."""
        self.docker = docker
        self.judge = judge
        self.layers = layers
        self._containers: dict[str, ContainerInfo] = {}
        self._image_evidence: dict[str, tuple[Evidence, ...]] = {}
        self._cgroups: dict[str, str] = {}  # container id -> cgroup path (from its processes)
        self._stale = False  # Docker went down: resync when it answers again

    def __len__(self) -> int:
        return len(self._containers)

    def __contains__(self, container_id: str) -> bool:
        return container_id in self._containers

    def get(self, container_id: str) -> ContainerInfo | None:
        return self._containers.get(container_id)

    def image_evidence(self, container_id: str) -> tuple[Evidence, ...]:
        return self._image_evidence.get(container_id, ())

    def note_cgroup(self, container_id: str, cgroup_path: str) -> None:
        if container_id and cgroup_path:
            self._cgroups[container_id] = cgroup_path

    def cgroups(self) -> dict[str, str]:
        """Cgroup paths of the known containers (for CPU sampling)."""
        return {cid: path for cid, path in self._cgroups.items() if cid in self._containers}

    def refresh(self, container_id: str) -> ContainerInfo | None:
        """Inspect a container now and remember it; None when it is gone or Docker is down."""
        if not container_id:
            return None
        try:
            info = self.docker.inspect_container(container_id)
        except ContainerGone:
            self.forget(container_id)
            return None
        except (DockerDown, DockerRefused) as exc:  # the resync catches up once Docker answers
            self._stale = True
            log.debug("container_inspect_failed", container=container_id[:12], error=str(exc))
            return None
        return self._remember(info)

    def _remember(self, info: ContainerInfo) -> ContainerInfo:
        self._containers[info.id] = info
        self._image_evidence[info.id] = tuple(self.judge.container_evidence(info))
        if info.upper_dir:
            self.layers.add_layer(info.id, info.upper_dir)
        return info

    def forget(self, container_id: str) -> None:
        if self._containers.pop(container_id, None) is not None:
            self.layers.remove_layer(container_id)
        self._image_evidence.pop(container_id, None)
        self._cgroups.pop(container_id, None)

    def resync(self) -> list[str] | None:
        """Match the registry to Docker's running containers; the ids newly known, or None when Docker is down."""
        try:
            running = self.docker.running()
        except (DockerDown, DockerRefused) as exc:
            self._stale = True
            log.debug("docker_resync_failed", error=str(exc))
            return None
        self._stale = False
        for cid in [c for c in self._containers if c not in running]:
            self.forget(cid)
        return [self._remember(info).id for cid, info in running.items() if cid not in self._containers]

    def needs_resync(self) -> bool:
        """Docker was unreachable and answers again (checked once per periodic pass)."""
        return self._stale and self.docker.available()

    def use(self, judge: Judge) -> None:
        """Judge images with a reloaded judge from now on, and re-judge the known ones."""
        self.judge = judge
        self._image_evidence = {cid: tuple(judge.container_evidence(c)) for cid, c in self._containers.items()}
