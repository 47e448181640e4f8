"""Containers as Docker describes them: ``docker inspect`` JSON -> ContainerInfo (pure)."""

from __future__ import annotations

from agent.model import ContainerInfo


def labels_of(config: dict | None) -> tuple[tuple[str, str], ...]:
    """Sorted ``(key, value)`` pairs of a ``Config.Labels`` mapping (container or image)."""
    labels = (config or {}).get("Labels") or {}
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


def container_from_inspect(data: dict, image_labels: tuple[tuple[str, str], ...] | None = None) -> ContainerInfo:
    """Build a ContainerInfo from ``docker inspect`` JSON (pure; unit-testable on a dict);
    ``image_labels`` from ``docker image inspect`` of its image, when known."""
    cfg = data.get("Config") or {}
    state = data.get("State") or {}
    graph = (data.get("GraphDriver") or {}).get("Data") or {}
    return ContainerInfo(
        id=data.get("Id", ""),
        name=(data.get("Name") or "").lstrip("/"),
        image=cfg.get("Image") or "",
        image_id=data.get("Image") or "",
        runtime="docker",
        labels=labels_of(cfg),
        image_labels=image_labels,
        entrypoint=tuple(cfg.get("Entrypoint") or ()),
        command=tuple(cfg.get("Cmd") or ()),
        env=tuple(cfg.get("Env") or ()),
        pid=int(state.get("Pid") or 0),
        upper_dir=graph.get("UpperDir", ""),
        paused=bool(state.get("Paused")),
    )
