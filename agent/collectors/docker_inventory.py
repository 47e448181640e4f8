"""Containers as Docker describes them: ``docker inspect`` JSON -> ContainerInfo (pure)."""

from __future__ import annotations

from agent.model import ContainerInfo


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
