"""Real cgroups for freezer tests, created and removed by the test.

    with FreezerSandbox.v1("cri-containerd-<64hex>.scope") as box:   # or .v2(...)
        box.add(pid)                 # echo pid > cgroup.procs
        box.directory, box.path      # where it is, and its path in the hierarchy

The cgroup is ``<mount>/minerwatch-test-<random>/<leaf>``. On exit (pass or fail) it is
thawed, its processes are moved back to the root cgroup, and both directories are removed.
``v1``/``v2`` raise ``pytest.skip`` when that hierarchy is not mounted or not writable.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from agent.response.freezer import parse_mountinfo


class FreezerSandbox:
    def __init__(self, version: int, mount: str, leaf: str) -> None:
        self.version = version
        self.mount = Path(mount)
        self.top = self.mount / f"minerwatch-test-{uuid.uuid4().hex[:8]}"
        self.directory = self.top / leaf if leaf else self.top
        self.path = "/" + str(self.directory.relative_to(self.mount))

    @classmethod
    def v1(cls, leaf: str = "") -> "FreezerSandbox":
        return cls(1, cls._mount(1), leaf)

    @classmethod
    def v2(cls, leaf: str = "") -> "FreezerSandbox":
        return cls(2, cls._mount(2), leaf)

    @staticmethod
    def _mount(version: int) -> str:
        mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
        mount = mounts.v1_freezer if version == 1 else mounts.v2
        if mount is None or mount[1] != "/":
            pytest.skip(f"no cgroup v{version} {'freezer ' if version == 1 else ''}hierarchy mounted at its root here")
        if not os.access(mount[0], os.W_OK):
            pytest.skip(f"cgroup v{version} hierarchy {mount[0]} is not writable (needs root)")
        if version == 2 and not Path(mount[0], "cgroup.procs").exists():
            pytest.skip("cgroup v2 mount has no cgroup.procs")
        return mount[0]

    def __enter__(self) -> "FreezerSandbox":
        self.directory.mkdir(parents=True)
        if self.version == 2 and not (self.directory / "cgroup.freeze").exists():
            self.__exit__()
            pytest.skip("cgroup v2 here has no cgroup.freeze (kernel < 5.2)")
        return self

    def add(self, pid: int) -> None:
        (self.directory / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        return [int(p) for p in (self.directory / "cgroup.procs").read_text().split()]

    def state(self) -> str:
        if self.version == 1:
            return (self.directory / "freezer.state").read_text().strip()
        return "FROZEN" if "frozen 1" in (self.directory / "cgroup.events").read_text() else "THAWED"

    def __exit__(self, *exc) -> None:
        if not self.directory.exists():
            return
        name, value = ("freezer.state", "THAWED") if self.version == 1 else ("cgroup.freeze", "0")
        (self.directory / name).write_text(value)
        for pid in self.pids():
            try:
                (self.mount / "cgroup.procs").write_text(str(pid))
            except OSError:  # it exited meanwhile
                pass
        deadline = time.monotonic() + 10
        for d in (self.directory, self.top):
            while d.exists():
                try:
                    d.rmdir()
                except OSError:  # EBUSY for a moment while exiting tasks leave the cgroup
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
