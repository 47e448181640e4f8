"""Steering the pause: a process in a hand-made cgroup named like a container is never that container.

The attack (issue 12): a local user creates ``docker-<id of a database>.scope`` inside a cgroup
subtree they own (their systemd user slice), runs something that looks like a miner there, and
waits for the agent to ``docker pause`` the database. The test does it for real, as root, on
the ``name=systemd`` and ``unified`` hierarchies of this cgroup-v1 hybrid host, against a real
container it started (a sleeper standing in for the database), with a real fake miner.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from agent.collectors import docker_inventory
from agent.collectors.docker_api import DockerHandle
from agent.collectors.snapshots import SnapshotCollector
from agent.config import from_dict
from agent.judge import Judge
from agent.model import Severity
from agent.response import Responder
from agent.signatures import load_bundle
from tests.helpers import procs

CGROOT = Path("/sys/fs/cgroup")


class HandMadeCgroup:
    """``<hierarchy>/<rel>`` made by hand in the given v1/v2 hierarchies; on exit (pass or fail) its
    processes go back to the hierarchy's root and every directory it created is removed."""

    def __init__(self, rel: str, hierarchies=("systemd", "unified")) -> None:
        self.rel = rel.strip("/")
        self.mounts = [CGROOT / h for h in hierarchies if (CGROOT / h / "cgroup.procs").exists()]
        self.created: list[Path] = []

    def __enter__(self) -> "HandMadeCgroup":
        if not self.mounts:
            pytest.skip("no name=systemd or unified cgroup hierarchy mounted here")
        if not all(os.access(m, os.W_OK) for m in self.mounts):
            pytest.skip("cgroup hierarchies are not writable (needs root)")
        try:
            for mount in self.mounts:
                d = mount
                for part in self.rel.split("/"):
                    d = d / part
                    if not d.exists():
                        d.mkdir()
                        self.created.append(d)
        except BaseException:
            self.__exit__()
            raise
        return self

    def add(self, pid: int) -> None:
        for mount in self.mounts:
            (mount / self.rel / "cgroup.procs").write_text(str(pid))

    def __exit__(self, *exc) -> None:
        for d in reversed(self.created):
            deadline = time.monotonic() + 10
            while d.exists():
                procs_file = d / "cgroup.procs"
                for pid in (procs_file.read_text().split() if procs_file.exists() else ()):
                    mount = next(m for m in self.mounts if d.is_relative_to(m))
                    try:
                        (mount / "cgroup.procs").write_text(pid)
                    except OSError:  # it exited meanwhile
                        pass
                try:
                    d.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


@pytest.fixture(scope="module")
def signatures():
    return load_bundle()


@pytest.fixture
def database(docker_run, base_image):
    """A real running container the attacker wants paused."""
    return docker_run(base_image, ["sleep", "300"], name_prefix="mwtest-db")


def _config(tmp_path, **response):
    return from_dict({"agent": {"state_dir": str(tmp_path / "state")},
                      "response": {"mode": "enforce", "pause_severity": "high", **response}})


def _miner(spawn, helper_bins, fake_pool):
    p = spawn([helper_bins.fakeminer, "-o", fake_pool.hostport, "-t", "1", "--seconds", "60"])
    procs.wait_until(lambda: procs.established_to(p.pid, fake_pool.port), 10, 0.05, "fake miner connected")
    return p


def _paused(docker_client, cid: str) -> bool:
    return docker_client.api.inspect_container(cid)["State"]["Paused"]


def test_forged_docker_scope_in_a_user_slice_pauses_nothing_and_is_reported(
        tmp_path, docker_client, database, spawn, helper_bins, fake_pool, signatures):
    """A miner in ``user.slice/.../docker-<db id>.scope``: not attributed to the database, the forged
    claim is evidence of its own, and the responder in enforce mode pauses nothing."""
    cid = database.id
    uid = 60000 + int(uuid.uuid4().hex[:3], 16)
    rel = f"user.slice/user-{uid}.slice/user@{uid}.service/app.slice/docker-{cid}.scope"
    miner = _miner(spawn, helper_bins, fake_pool)
    with HandMadeCgroup(rel) as cg:
        cg.add(miner.pid)
        assert f"docker-{cid}.scope" in Path(f"/proc/{miner.pid}/cgroup").read_text()
        cfg = _config(tmp_path)
        snap = SnapshotCollector(cfg, signatures).snapshot(miner.pid)
        assert snap.container_id == "" and snap.container_runtime == ""
        assert snap.cgroup_claim == cid and snap.cgroup_path.endswith(f"docker-{cid}.scope")

        judge = Judge.from_config(cfg, signatures)
        found = judge.process(snap, None, ())
        assert found is not None and found.severity >= Severity.HIGH, found
        forged = [e for e in found.evidence if e.signal == "attribution"]
        assert forged and cid[:12] in forged[0].detail and "no container runtime made it" in forged[0].detail

        out = Responder(cfg, DockerHandle.of(docker_client), state_dir=cfg.agent.state_dir).respond(found)
        assert out.response.action != "pause" and out.response.result != "done", out.response
        assert not _paused(docker_client, cid)
        assert out.container is None or out.container.id != cid


def test_forged_claim_alone_is_medium(tmp_path, docker_client, database, spawn, signatures):
    """A harmless process in a forged container cgroup is still reported: medium on the claim alone."""
    cid = database.id
    sleeper = spawn(["sleep", "60"])
    with HandMadeCgroup(f"user.slice/docker-{cid}.scope") as cg:
        cg.add(sleeper.pid)
        cfg = _config(tmp_path)
        snap = SnapshotCollector(cfg, signatures).snapshot(sleeper.pid)
        found = Judge.from_config(cfg, signatures).process(snap, None, ())
        assert snap.container_id == "" and snap.cgroup_claim == cid
        assert found is not None and found.severity == Severity.MEDIUM, found
        assert [e.signal for e in found.evidence] == ["attribution"]


def test_a_well_formed_path_is_checked_against_the_containers_init(
        tmp_path, docker_client, database, spawn, helper_bins, fake_pool, signatures):
    """A path that passes the layout rules (``system.slice/docker-<id>.scope``, made by hand here while
    Docker uses cgroupfs) is attributed to the container, but before pausing the responder compares with
    Docker's ``State.Pid``: no shared pid namespace, no shared cgroup: refused, nothing paused."""
    cid = database.id
    miner = _miner(spawn, helper_bins, fake_pool)
    with HandMadeCgroup(f"system.slice/docker-{cid}.scope", hierarchies=("systemd",)) as cg:
        cg.add(miner.pid)
        cfg = _config(tmp_path)
        snap = SnapshotCollector(cfg, signatures).snapshot(miner.pid)
        assert snap.container_id == cid, snap.cgroup_path
        info = docker_inventory.container_from_inspect(docker_client.api.inspect_container(cid))
        judge = Judge.from_config(cfg, signatures)
        found = judge.process(snap, info, judge.container_evidence(info))
        assert found is not None and found.severity >= Severity.HIGH, found
        out = Responder(cfg, DockerHandle.of(docker_client), state_dir=cfg.agent.state_dir).respond(found)
        assert (out.response.action, out.response.result) == ("pause", "refused"), out.response
        assert "shares neither the pid namespace nor the cgroup" in out.response.reason
        assert not _paused(docker_client, cid)
