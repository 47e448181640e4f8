"""The processes in a cgroup subtree, from the kernel's ``cgroup.procs`` files: the one walker of
cgroupfs. The cross-view walks every cgroup of a hierarchy; the daemon, one container's subtree
(``container_dirs``), to find its processes without reading every process's ``/proc/PID/cgroup``.

Each directory is opened beneath the one above it with ``O_NOFOLLOW``, at most ``MAX_CGROUP_DEPTH``
deep and ``limit`` directories in all; a cgroup removed while it is walked is skipped (its
processes are in another one now).
"""

from __future__ import annotations

import os

from agent.collectors import cgroups, proclist
from agent.collectors.procread import read_bounded

MAX_CGROUP_DEPTH = 32
MAX_PROCS_BYTES = 4 << 20  # one cgroup.procs read at most
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW


def walk(fd: int, found: set[int], limit: int, walked: list[int] | None = None, depth: int = 0) -> bool:
    """Add to ``found`` the PIDs of the cgroup open at ``fd`` and of every cgroup below it; False when
    ``limit`` directories were walked before the end (``walked``: the running count, shared)."""
    walked = walked if walked is not None else [0]
    walked[0] += 1
    if walked[0] > limit:
        return False
    try:
        raw = read_bounded("cgroup.procs", dir_fd=fd, limit=MAX_PROCS_BYTES)
        found.update(int(x) for x in raw.split() if x.isdigit())
        subdirs = [name for _ino, t, name in proclist.getdents(fd) if t in (proclist.DT_DIR, proclist.DT_UNKNOWN)]
    except OSError:  # removed while walked: its processes are in another one now
        return True
    if depth >= MAX_CGROUP_DEPTH:
        return True
    complete = True
    for name in subdirs:
        try:
            sub = os.open(name, DIR_FLAGS, dir_fd=fd)
        except OSError:  # gone, or not a directory (DT_UNKNOWN)
            continue
        try:
            complete = walk(sub, found, limit, walked, depth + 1) and complete
        finally:
            os.close(sub)
    return complete


def container_dirs(cgroup_text: str, container_id: str, v2_only: bool) -> list[str]:
    """The directories (relative to the cgroupfs mount, such as ``/sys/fs/cgroup``) of the container's
    cgroup on each hierarchy named in a process's ``/proc/PID/cgroup`` text, down to the container's
    anchor (``cgroups.container_scope``): its own sub-cgroups are below them. Pure."""
    out = []
    for controllers, path in cgroups.lines(cgroup_text):
        scope = cgroups.container_scope(path)
        if not scope or ".." in scope.split("/") or cgroups.container_from_path(path)[0] != container_id:
            continue  # not this container's, or above this reader's cgroup namespace
        if controllers == "":
            top = "" if v2_only else "unified"
        else:
            top = controllers.removeprefix("name=")
        if "/" in top or top in (".", ".."):
            continue
        out.append(f"{top}/{scope.lstrip('/')}" if top else scope.lstrip("/"))
    return out


def pids_under(cgroup_root: str, rel: str, limit: int) -> set[int] | None:
    """The PIDs in the cgroup ``rel`` (a ``container_dirs`` entry) and below it; None when it cannot be
    opened or the walk was cut short at ``limit`` directories."""
    try:
        fd = os.open(cgroup_root, DIR_FLAGS)
    except OSError:
        return None
    try:
        for part in [p for p in rel.split("/") if p]:
            if part in (".", ".."):
                return None
            nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        found: set[int] = set()
        return found if walk(fd, found, limit) else None
    except OSError:
        return None
    finally:
        os.close(fd)
