"""Running containers as Docker describes them (id, name, image, config, writable layer)."""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from agent.model import ContainerInfo

log = structlog.get_logger("minerwatch.docker")


def container_from_inspect(data: dict) -> ContainerInfo:
    """Build a ContainerInfo from ``docker inspect`` JSON (pure; unit-testable on a dict)."""
    cfg = data.get("Config") or {}
    state = data.get("State") or {}
    graph = (data.get("GraphDriver") or {}).get("Data") or {}
    labels = cfg.get("Labels") or {}
    return ContainerInfo(
        id=data.get("Id", ""),
        name=(data.get("Name") or "").lstrip("/"),
        image=cfg.get("Image") or "",
        image_id=data.get("Image") or "",
        runtime="docker",
        labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
        entrypoint=tuple(cfg.get("Entrypoint") or ()),
        command=tuple(cfg.get("Cmd") or ()),
        env=tuple(cfg.get("Env") or ()),
        pid=int(state.get("Pid") or 0),
        upper_dir=graph.get("UpperDir", ""),
        paused=bool(state.get("Paused")),
    )


@dataclass
class Inventory:
    containers: dict[str, ContainerInfo]
    reachable: bool
    error: str = ""


def connect(url: str, timeout: float = 5.0):
    """A Docker client for ``url``; raises docker.errors.DockerException when unreachable."""
    import docker  # imported here: the sweep must work (and start fast) on hosts without Docker

    client = docker.DockerClient(base_url=url, timeout=timeout)
    client.ping()
    return client


def list_running(url: str, client=None) -> Inventory:
    """Inspect every running container; an unreachable Docker is reported, not raised."""
    import docker

    try:
        client = client or connect(url)
        raw = client.api.containers(filters={"status": ["running", "paused"]})
        containers: dict[str, ContainerInfo] = {}
        for summary in raw:
            try:
                info = container_from_inspect(client.api.inspect_container(summary["Id"]))
            except docker.errors.NotFound:  # removed between list and inspect: normal churn
                continue
            containers[info.id] = info
        return Inventory(containers, True)
    except (docker.errors.DockerException, OSError) as exc:
        log.warning("docker_unreachable", url=url, error=str(exc))
        return Inventory({}, False, str(exc))
