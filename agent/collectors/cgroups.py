"""Which container a process runs in, from the text of ``/proc/PID/cgroup``.

Pure parsing, no I/O. Recognised layouts (cgroup v1 and v2, cgroupfs and systemd drivers):

=========================================================  ==========
path (one segment of it)                                   runtime
=========================================================  ==========
``/docker/<64hex>``, ``docker-<64hex>.scope``               docker
``/ecs/<task>/<64hex>``                                     docker
``cri-containerd-<64hex>.scope``, ``nerdctl-<64hex>.scope`` containerd
``/kubepods[/burstable|/besteffort]/pod<uid>/<64hex>``      containerd
``crio-<64hex>.scope``, ``crio-conmon-<64hex>.scope``       cri-o
``libpod-<64hex>.scope``, ``libpod-conmon-<64hex>.scope``,  podman
``/libpod_parent/libpod-<64hex>``
=========================================================  ==========

``/kubepods...`` paths with a bare id say nothing about the runtime: containerd is by far the
most common and is what we report; the id is what matters for the Docker/CRI lookup.
A ``*-conmon-*`` scope holds the runtime's monitor process, on the host, for that
container: it is reported with the container's id so it is attributed to that container.
Paths under a nested container (Docker in Docker) give the outermost id, the one the
host's runtime knows.
"""

from __future__ import annotations

import functools
import re

_HEX64 = r"[0-9a-f]{64}"
# (regex over one path segment, runtime); first match on a segment wins.
_SEGMENT_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"^docker-({_HEX64})\.scope$"), "docker"),
    (re.compile(rf"^cri-containerd-({_HEX64})\.scope$"), "containerd"),
    (re.compile(rf"^nerdctl-({_HEX64})\.scope$"), "containerd"),
    (re.compile(rf"^crio-(?:conmon-)?({_HEX64})\.scope$"), "cri-o"),
    (re.compile(rf"^libpod-(?:conmon-)?({_HEX64})(?:\.scope)?$"), "podman"),
)
_BARE_ID = re.compile(rf"^({_HEX64})$")
_CRIO_BARE = re.compile(rf"^crio-(?:conmon-)?({_HEX64})$")


def _runtime_for_bare(parents: list[str]) -> str:
    """Runtime for a bare 64-hex segment, from the segments above it."""
    for seg in reversed(parents):
        if seg in ("docker", "ecs") or seg.startswith("docker"):
            return "docker"
        if seg.startswith("kubepods"):
            return "containerd"
        if seg.startswith("libpod"):
            return "podman"
    return "containerd"


def container_from_path(path: str) -> tuple[str, str]:
    """``(container_id, runtime)`` for one cgroup path, ``("", "")`` when it names no container."""
    segments = [s for s in path.split("/") if s and s != ".."]
    for i, seg in enumerate(segments):
        for rx, runtime in _SEGMENT_RULES:
            m = rx.match(seg)
            if m:
                return m.group(1), runtime
        m = _CRIO_BARE.match(seg)
        if m:
            return m.group(1), "cri-o"
        m = _BARE_ID.match(seg)
        if m:
            return m.group(1), _runtime_for_bare(segments[:i])
    return "", ""


def _lines(text: str) -> list[tuple[str, str]]:
    """``(controllers, path)`` for each well-formed ``id:controllers:path`` line."""
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[2]:
            out.append((parts[1], parts[2].strip()))
    return out


def _preference(controllers: str) -> int:
    """Which line's path best describes the process: v2 first, then systemd's, then cpu/memory."""
    if controllers == "":
        return 0
    names = controllers.split(",")
    if "name=systemd" in names:
        return 1
    if "memory" in names or "cpu" in names or "cpuacct" in names:
        return 2
    return 3


@functools.lru_cache(maxsize=4096)  # pure, and most processes share a handful of distinct texts
def parse_cgroup(text: str) -> tuple[str, str, str]:
    """``(container_id, runtime, cgroup_path)`` from the text of ``/proc/PID/cgroup``.

    Host processes give ``("", "", path)``; the path is the cgroup v2 one when present,
    else the v1 ``name=systemd`` one, else the first. Malformed text gives ``("", "", "")``.
    """
    lines = sorted(_lines(text), key=lambda cp: _preference(cp[0]))
    for _controllers, path in lines:
        cid, runtime = container_from_path(path)
        if cid:
            return cid, runtime, path
    # A v2 line of "/" next to real v1 lines (hybrid mode) says less than the v1 ones.
    for _controllers, path in lines:
        if path != "/":
            return "", "", path
    return ("", "", lines[0][1]) if lines else ("", "", "")
