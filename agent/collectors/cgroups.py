"""Which container a process runs in, from the text of ``/proc/PID/cgroup``.

Pure parsing, no I/O. A container is recognised only where its runtime puts it: a path that
merely *names* a container somewhere is not one. Unprivileged users own delegated cgroup
subtrees (``user.slice/user-UID.slice/user@UID.service/...``, a service with ``Delegate=``)
and can create any name there, ``docker-<id>.scope`` included; such a path is a host process,
and the id it pretends is its *claim* (``cgroup_claim``), kept apart for the detectors.

An anchor (one segment) names the container; the segments above it must be a layout the
runtime makes. Below the anchor anything goes (the container's own sub-cgroups, Docker in
Docker): the outermost anchor is the container the host's runtime knows.

=====================================================================  ==========
anchor, and what may be above it                                       runtime
=====================================================================  ==========
``docker-<64hex>.scope``: only ``*.slice`` segments                     docker
(``/system.slice``, ``--cgroup-parent x.slice``, ``/kubepods.slice/..``)
``/docker/<64hex>`` (cgroupfs driver), ``/ecs/<task>/<64hex>``          docker
``cri-containerd-``, ``nerdctl-<64hex>.scope``: only ``*.slice``        containerd
``/kubepods[/burstable|/besteffort]/pod<uid>/<64hex>``, ``/<ns>/<64hex>``  containerd
``crio-[conmon-]<64hex>.scope``: only ``*.slice``;                       cri-o
``/kubepods/.../pod<uid>/crio-<64hex>``
``libpod-[conmon-]<64hex>.scope``: only ``*.slice``;                     podman
``/libpod_parent/libpod-<64hex>``
=====================================================================  ==========

Never above an anchor: a user slice (``user.slice``, ``user-UID.slice``), a user manager
(``user@UID.service``) or any ``*.service`` (the subtrees systemd delegates). So rootless
Docker and rootless Podman containers are host processes of their user here (with a claim).
systemd only ever creates a scope inside a slice, so a ``.scope`` below anything else was made
by hand. A ``*-conmon-*`` scope holds the runtime's monitor process, on the host, for that
container: it is reported with the container's id. Leading ``..`` segments (the agent in a
private cgroup namespace) are dropped: what is still visible above the anchor is checked.
"""

from __future__ import annotations

import functools
import re

_HEX64 = r"[0-9a-f]{64}"
# Anchors that systemd creates as scopes: (regex over one segment, runtime).
_SCOPE_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"^docker-({_HEX64})\.scope$"), "docker"),
    (re.compile(rf"^cri-containerd-({_HEX64})\.scope$"), "containerd"),
    (re.compile(rf"^nerdctl-({_HEX64})\.scope$"), "containerd"),
    (re.compile(rf"^crio-(?:conmon-)?({_HEX64})\.scope$"), "cri-o"),
    (re.compile(rf"^libpod-(?:conmon-)?({_HEX64})\.scope$"), "podman"),
)
_BARE_ID = re.compile(rf"^({_HEX64})$")
_CRIO_BARE = re.compile(rf"^crio-(?:conmon-)?({_HEX64})$")
_LIBPOD_BARE = re.compile(rf"^libpod-(?:conmon-)?({_HEX64})$")
_USERISH = re.compile(r"^(?:user\.slice|user-\d+\.slice|user@\d+\.service|.*\.service)$")
_POD = re.compile(r"^pod[0-9a-fA-F_-]+$")
_QOS = ("burstable", "besteffort")


def _kubepods(parents: list[str]) -> bool:
    """``kubepods[/burstable|/besteffort]/pod<uid>``."""
    if len(parents) == 2:
        return parents[0] == "kubepods" and bool(_POD.match(parents[1]))
    return len(parents) == 3 and parents[0] == "kubepods" and parents[1] in _QOS and bool(_POD.match(parents[2]))


def _plain(seg: str) -> bool:
    """A cgroupfs directory name a runtime uses as a parent (not a systemd unit, not hidden)."""
    return not seg.startswith(".") and not seg.endswith((".slice", ".service", ".scope", ".mount", ".socket"))


def _anchor(seg: str, parents: list[str]) -> tuple[str, str, bool]:
    """``(id, runtime, made_by_the_runtime)`` when ``seg`` names a container, else ``("", "", False)``."""
    for rx, runtime in _SCOPE_RULES:
        if m := rx.match(seg):
            return m.group(1), runtime, all(p.endswith(".slice") for p in parents)
    if m := _CRIO_BARE.match(seg):
        return m.group(1), "cri-o", _kubepods(parents)
    if m := _LIBPOD_BARE.match(seg):
        return m.group(1), "podman", parents == ["libpod_parent"]
    if m := _BARE_ID.match(seg):
        if parents == ["docker"] or (len(parents) == 2 and parents[0] == "ecs" and _plain(parents[1])):
            return m.group(1), "docker", True
        if _kubepods(parents):
            return m.group(1), "containerd", True
        # containerd's cgroupfs layout: /<namespace>/<id> (nerdctl: /default/<id>)
        return m.group(1), "containerd", len(parents) == 1 and _plain(parents[0])
    return "", "", False


def classify_path(path: str) -> tuple[str, str, str]:
    """``(container_id, runtime, claim)`` for one cgroup path.

    ``claim`` is the id a path names without being that container's cgroup ("" otherwise).
    """
    segments = [s for s in path.split("/") if s]
    while segments and segments[0] == "..":
        segments.pop(0)
    odd = ".." in segments  # not something the kernel writes: nothing in it is a container
    for i, seg in enumerate(segments):
        cid, runtime, made = _anchor(seg, segments[:i])
        if not cid:
            continue
        if made and not odd and not any(_USERISH.match(p) for p in segments[:i]):
            return cid, runtime, ""
        return "", "", cid  # the first container-like name decides: what is below it is its own
    return "", "", ""


def container_scope(path: str) -> str:
    """The part of ``path`` down to its container's anchor ("" when it is no container's): two paths
    with the same scope are in the same container, whatever sub-cgroups it made below it."""
    cid = classify_path(path)[0]
    if not cid:
        return ""
    segments = [s for s in path.split("/") if s]
    end = next(i for i, s in enumerate(segments) if s != ".." and cid in s)
    return "/" + "/".join(segments[:end + 1])


def container_from_path(path: str) -> tuple[str, str]:
    """``(container_id, runtime)`` for one cgroup path, ``("", "")`` when it is no container's."""
    cid, runtime, _claim = classify_path(path)
    return cid, runtime


def lines(text: str) -> list[tuple[str, str]]:
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
    ordered = sorted(lines(text), key=lambda cp: _preference(cp[0]))
    for _controllers, path in ordered:
        cid, runtime = container_from_path(path)
        if cid:
            return cid, runtime, path
    # A v2 line of "/" next to real v1 lines (hybrid mode) says less than the v1 ones.
    for _controllers, path in ordered:
        if path != "/":
            return "", "", path
    return ("", "", ordered[0][1]) if ordered else ("", "", "")


@functools.lru_cache(maxsize=4096)
def cgroup_claim(text: str) -> str:
    """The container id a process's cgroup paths pretend without being that container's ("" when none).

    A process in a real container claims nothing; one whose path names another id than its
    container (a hand-made cgroup on one hierarchy) claims that id.
    """
    cid = parse_cgroup(text)[0]
    for _controllers, path in sorted(lines(text), key=lambda cp: _preference(cp[0])):
        claim = classify_path(path)[2]
        if claim and claim != cid:
            return claim
    return ""
