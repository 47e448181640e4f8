"""A container's processes from its cgroup subtree (collectors/cgroup_procs.py, ProcfsCollector.container_pids):
on fake cgroupfs and /proc trees, and on a real container beside the full read of every process."""

from __future__ import annotations

import pytest

from agent.collectors import cgroup_procs
from agent.collectors.procfs import ProcfsCollector

from tests.helpers import containers, procs

CID = "a" * 64
OTHER = "b" * 64


def test_container_dirs_on_v2_v1_and_hybrid_hosts():
    """One directory per hierarchy the text names, down to the container's anchor (sub-cgroups below)."""
    v2 = f"0::/system.slice/docker-{CID}.scope/init.scope\n"
    assert cgroup_procs.container_dirs(v2, CID, True) == [f"system.slice/docker-{CID}.scope"]
    assert cgroup_procs.container_dirs(v2, CID, False) == [f"unified/system.slice/docker-{CID}.scope"]
    v1 = f"12:pids:/docker/{CID}\n4:cpu,cpuacct:/docker/{CID}\n1:name=systemd:/docker/{CID}\n0::/\n"
    assert cgroup_procs.container_dirs(v1, CID, False) == [f"pids/docker/{CID}", f"cpu,cpuacct/docker/{CID}",
                                                          f"systemd/docker/{CID}"]
    assert cgroup_procs.container_dirs(v2, OTHER, True) == []  # not this container's
    assert cgroup_procs.container_dirs("0::/user.slice/x\n", CID, True) == []
    assert cgroup_procs.container_dirs(f"0::/../docker-{CID}.scope\n", CID, True) == []


def fake_host(tmp_path, members: dict[str, list[int]], cgroup_of: dict[int, str]):
    """A cgroupfs (v2) with ``members`` (relative dir -> PIDs in its cgroup.procs) and a /proc whose
    PIDs have the given cgroup line."""
    cg, proc = tmp_path / "cgroup", tmp_path / "proc"
    cg.mkdir()
    (cg / "cgroup.controllers").write_text("cpu pids\n")
    (cg / "cgroup.procs").write_text("")
    for rel, pids in members.items():
        (cg / rel).mkdir(parents=True, exist_ok=True)
        (cg / rel / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
    for pid, path in cgroup_of.items():
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(f"0::{path}\n")
    return cg, proc


class Counting(ProcfsCollector):
    """Counts the reads of ``/proc/PID/cgroup`` (what the full scan does for every process)."""

    reads = 0

    def _cgroup_text(self, pid: int):
        self.reads += 1
        return super()._cgroup_text(pid)


def test_a_containers_processes_come_from_its_subtree_and_each_is_checked(tmp_path):
    scope = f"/system.slice/docker-{CID}.scope"
    cgroup_of = {10: scope, 11: f"{scope}/inner", 12: "/system.slice/cron.service", 13: "/system.slice/x.service",
                 14: f"/system.slice/docker-{OTHER}.scope"}
    # 13 is listed in the container's cgroup.procs but its own cgroup says otherwise (moved meanwhile): left out.
    cg, proc = fake_host(tmp_path, {scope.lstrip("/"): [10, 13], f"{scope.lstrip('/')}/inner": [11],
                                    "system.slice/cron.service": [12]}, cgroup_of)
    c = Counting(proc, cgroup_root=str(cg))
    assert c.container_pids(CID, leader=10) == [10, 11]
    assert c.reads == 1 + 3  # the leader, then the three PIDs of its subtree: not every process
    full = Counting(proc, cgroup_root=str(cg))
    assert full.container_pids(CID) == [10, 11] and full.reads == len(cgroup_of)


def test_the_full_read_when_the_subtree_cannot_be_used(tmp_path):
    """No such directory (a private cgroup namespace), a leader not in it, or a leader of another
    container: every process is read, as before."""
    scope = f"/system.slice/docker-{CID}.scope"
    cgroup_of = {10: scope, 11: scope, 14: f"/system.slice/docker-{OTHER}.scope"}
    cg, proc = fake_host(tmp_path, {}, cgroup_of)
    assert Counting(proc, cgroup_root=str(cg)).container_pids(CID, leader=10) == [10, 11]  # no directory
    (cg / scope.lstrip("/")).mkdir(parents=True)
    (cg / scope.lstrip("/") / "cgroup.procs").write_text("11\n")  # the leader is not listed: not trusted
    assert Counting(proc, cgroup_root=str(cg)).container_pids(CID, leader=10) == [10, 11]
    assert Counting(proc, cgroup_root=str(cg)).container_pids(CID, leader=14) == [10, 11]


@pytest.mark.docker
def test_a_real_container_gives_the_same_processes_both_ways(docker_client, base_image):
    """On this host's real cgroupfs: the subtree and the full read find the same PIDs, with a handful
    of cgroup reads instead of one per process."""
    with containers.tracking_scope("cgroup-procs"):
        c = containers.run_container(docker_client, base_image, ["sh", "-c", "sleep 300 & sleep 300 & wait"])
        leader = c.attrs["State"]["Pid"]
        procs.wait_until(lambda: len(ProcfsCollector().container_pids(c.id)) >= 3, 10, 0.05, "three processes")
        fast, full = Counting(), Counting()
        assert fast.container_pids(c.id, leader=leader) == full.container_pids(c.id) and leader in fast.container_pids(c.id, leader)
        assert len(full.pids()) > 20 and fast.reads <= 2 * (1 + 3) < full.reads
