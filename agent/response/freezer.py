"""The cgroup freezer, for containers Docker cannot pause (Docker unreachable, containerd, CRI-O).

* cgroup v1: ``<freezer mount>/<path>/freezer.state``: write ``FROZEN``, wait until it reads
  ``FROZEN`` (it reads ``FREEZING`` meanwhile); ``THAWED`` to thaw.
* cgroup v2: ``<cgroup2 mount>/<path>/cgroup.freeze``: write ``1``, wait for ``frozen 1`` in
  ``cgroup.events``; ``0`` to thaw.

A process's cgroup comes from its ``/proc/PID/cgroup``: the ``freezer`` line when a v1 freezer
hierarchy is mounted and the process is not in its root, else the v2 (``0::``) line. Mount
points come from ``/proc/self/mountinfo`` (a mount of a sub-tree is accounted for). The root
cgroup is never frozen, nor a cgroup that holds the agent.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.collectors.procread import read_bounded

_READ_MAX = 1 << 16  # freezer.state, cgroup.events, cgroup.freeze: a few bytes


class FreezeError(Exception):
    """Freezing or thawing failed; the message says where and why."""


@dataclass(frozen=True, slots=True)
class CgroupTarget:
    version: int  # 1 or 2
    path: str  # the cgroup's path inside its hierarchy, e.g. "/docker/<id>"
    directory: str  # where it is in the file system

    @property
    def method(self) -> str:
        return f"cgroup-v{self.version}"


@dataclass(frozen=True, slots=True)
class Mounts:
    """Where the v1 freezer and the v2 hierarchies are mounted: ``(mount point, root in hierarchy)``."""

    v1_freezer: tuple[str, str] | None = None
    v2: tuple[str, str] | None = None


def parse_mountinfo(text: str) -> Mounts:
    """The freezer (v1) and cgroup2 mounts listed in ``/proc/self/mountinfo`` text (first of each)."""
    v1 = v2 = None
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, point = _unescape(fields[3]), _unescape(fields[4])
        fstype, superopts = tail[0], tail[2].split(",")
        if fstype == "cgroup" and "freezer" in superopts and v1 is None:
            v1 = (point, root)
        elif fstype == "cgroup2" and v2 is None:
            v2 = (point, root)
    return Mounts(v1, v2)


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal ``\\040``."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def cgroup_lines(text: str) -> tuple[str | None, str | None]:
    """``(v1 freezer path, v2 path)`` from ``/proc/PID/cgroup`` text (None when absent)."""
    v1 = v2 = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2].strip()
        elif "freezer" in parts[1].split(","):
            v1 = parts[2].strip()
    return v1, v2


def _join(mount: tuple[str, str], path: str) -> str | None:
    """The directory of hierarchy path ``path`` under a mount of sub-tree ``mount[1]``."""
    point, root = mount
    root = root.rstrip("/")
    if root and path != root and not path.startswith(root + "/"):
        return None  # outside what is mounted here (another cgroup namespace)
    rel = path[len(root):].lstrip("/")
    return os.path.join(point, rel) if rel else point


class CgroupFreezer:
    """Freeze and thaw cgroups; ``mounts`` and ``sleep``/``clock`` are seams for tests."""

    def __init__(self, mounts: Mounts | None = None, *, timeout: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if mounts is None:
            mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
        self.mounts, self.timeout, self.clock, self.sleep = mounts, timeout, clock, sleep

    def target_for(self, cgroup_text: str) -> CgroupTarget:
        """The cgroup to freeze for a process whose ``/proc/PID/cgroup`` reads ``cgroup_text``."""
        v1, v2 = cgroup_lines(cgroup_text)
        if self.mounts.v1_freezer and v1 and v1 != "/":
            directory = _join(self.mounts.v1_freezer, v1)
            if directory:
                return CgroupTarget(1, v1, directory)
        if self.mounts.v2 and v2 and v2 != "/":
            directory = _join(self.mounts.v2, v2)
            if directory:
                return CgroupTarget(2, v2, directory)
        raise FreezeError("no freezable cgroup: the process is in the root cgroup or no freezer is mounted")

    def contains(self, target: CgroupTarget, cgroup_text: str) -> bool:
        """True when a process with ``cgroup_text`` is inside ``target`` (freezing it would freeze it)."""
        v1, v2 = cgroup_lines(cgroup_text)
        path = v1 if target.version == 1 else v2
        if path is None:
            return False
        return path == target.path or target.path == "/" or path.startswith(target.path.rstrip("/") + "/")

    def state(self, target: CgroupTarget) -> str:
        """``FROZEN``, ``FREEZING`` or ``THAWED`` (v2 has no FREEZING: requested but not yet frozen)."""
        if target.version == 1:
            return _read(target.directory, "freezer.state")
        events = dict(line.split(" ", 1) for line in _read(target.directory, "cgroup.events").splitlines() if " " in line)
        if events.get("frozen") == "1":
            return "FROZEN"
        return "FREEZING" if _read(target.directory, "cgroup.freeze") == "1" else "THAWED"

    def freeze(self, target: CgroupTarget) -> None:
        """Freeze ``target`` and wait until every task is frozen; on timeout thaw it and raise."""
        if target.path == "/":
            raise FreezeError("the root cgroup is never frozen")
        self._write(target, "FROZEN" if target.version == 1 else "1")
        if not self._wait(target, "FROZEN"):
            state = self.state(target)
            self._write(target, "THAWED" if target.version == 1 else "0")
            raise FreezeError(f"{target.directory} still {state} after {self.timeout} s: thawed again")

    def thaw(self, target: CgroupTarget) -> None:
        self._write(target, "THAWED" if target.version == 1 else "0")
        if not self._wait(target, "THAWED"):
            raise FreezeError(f"{target.directory} still {self.state(target)} after {self.timeout} s")

    def _write(self, target: CgroupTarget, value: str) -> None:
        name = "freezer.state" if target.version == 1 else "cgroup.freeze"
        try:
            fd = os.open(os.path.join(target.directory, name), os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise FreezeError(f"cannot open {target.directory}/{name}: {exc.strerror or exc}") from None
        try:
            os.write(fd, value.encode())
        except OSError as exc:
            raise FreezeError(f"cannot write {value} to {target.directory}/{name}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)

    def _wait(self, target: CgroupTarget, wanted: str) -> bool:
        deadline = self.clock() + self.timeout
        delay = 0.001
        while True:
            try:
                if self.state(target) == wanted:
                    return True
            except OSError as exc:
                raise FreezeError(f"cannot read the state of {target.directory}: {exc.strerror or exc}") from None
            if self.clock() >= deadline:
                return False
            self.sleep(delay)
            delay = min(delay * 2, 0.02)


def _read(directory: str, name: str) -> str:
    return read_bounded(os.path.join(directory, name), limit=_READ_MAX).decode("ascii", "replace").strip()
