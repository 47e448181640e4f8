"""The response: policy on plain data, then real Docker pauses, real cgroup freezes and real evidence copies."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import stat
import time
from pathlib import Path

import pytest

from agent.collectors.docker_api import DockerHandle
from agent.collectors import docker_inventory
from agent.config import from_dict
from agent.model import ContainerInfo, Evidence, Finding, ProcessSnapshot, ResponseRecord, Severity
from agent.response import Responder, decide
from agent.response.freezer import CgroupFreezer, CgroupTarget, Mounts, cgroup_lines, parse_mountinfo
from agent.response.records import ResponseRecords
from agent.response.release import release
from tests.helpers import procs
from tests.helpers.cgroup_sandbox import FreezerSandbox

CID = "ab" * 32
FAKE_CID = "c0ffee" + "0" * 58

NO_DOCKER = "unix:///nonexistent/minerwatch-test-docker.sock"  # a handle that never connects


def config(tmp_path: Path | None = None, **response):
    data = {"response": response}
    if tmp_path is not None:
        data["agent"] = {"state_dir": str(tmp_path / "state")}
    return from_dict(data)


def finding(severity=Severity.CRITICAL, *, container: ContainerInfo | None = ContainerInfo(id=CID, name="web-1", image="thanhtudo/openjdk:latest"),
            process: ProcessSnapshot | None = None) -> Finding:
    if process is None:
        process = ProcessSnapshot(pid=4242, exe="/tmp/xmrig", start_ticks=77, container_id=container.id if container else "")
    return Finding("f" * 32, severity, 99, "test rule", (Evidence("yara", "miner", 99),), process=process,
                   container=container)


# --------------------------------------------------------------------------- policy (pure)


def test_critical_finding_is_paused_with_a_reason():
    """A critical finding at pause_severity critical is paused and the reason names the threshold."""
    d = decide(finding(), config(), "")
    assert d.act and d.action == "pause" and d.container_id == CID
    assert d.reason == "critical finding >= pause_severity critical"


def test_below_threshold_and_off_are_skipped():
    """A high finding under pause_severity critical, and anything with pause_severity off, are left alone."""
    d = decide(finding(Severity.HIGH), config(), "")
    assert (d.act, d.result, d.reason) == (False, "skipped", "high finding below pause_severity critical")
    assert decide(finding(Severity.HIGH), config(pause_severity="high"), "").act
    off = decide(finding(), config(pause_severity="off"), "")
    assert not off.act and "off" in off.reason


@pytest.mark.parametrize("entry, why", [
    ("web-*", "name web-1"), ("web-1", "name web-1"), ("thanhtudo/*", "image thanhtudo/openjdk:latest"),
    ("thanhtudo/openjdk", "image thanhtudo/openjdk:latest"), (CID[:12], "id abababababab"), (CID, "id abababababab"),
])
def test_protect_entries_match_names_images_and_ids(entry, why):
    """response.protect matches names (globs), image globs or repositories, and ids or 12+ digit prefixes."""
    d = decide(finding(), config(protect=[entry]), "")
    assert not d.act and d.result == "skipped"
    assert d.reason == f"protected by response.protect entry {entry!r} ({why})"


def test_short_hex_protect_entry_is_a_name_not_an_id_prefix():
    """A short hex entry like 'ab' protects a container named ab, not every id starting with ab."""
    assert decide(finding(), config(protect=["ab"]), "").act


def test_protect_label_is_honoured_only_when_the_operator_set_it():
    """minerwatch.protect=true protects a container when its image lacks that label; a label the image
    carries (Docker copies image labels into the container) or labels of an unknown image protect nothing."""
    label = (("minerwatch.protect", "true"),)
    set_by_operator = ContainerInfo(id=CID, name="db", labels=label, image_labels=(("maintainer", "x"),))
    d = decide(finding(container=set_by_operator), config(), "")
    assert not d.act and d.reason == "protected by label minerwatch.protect=true (set on the container)"
    inherited = ContainerInfo(id=CID, name="openjdk", labels=label, image_labels=label)
    assert decide(finding(container=inherited), config(), "").act
    unknown_image = ContainerInfo(id=CID, name="openjdk", labels=label, image_labels=None)
    assert decide(finding(container=unknown_image), config(), "").act


def test_own_container_and_released_containers_are_never_paused():
    """The agent's own container, and one an operator released, are never paused."""
    assert decide(finding(), config(), CID).reason == "the agent's own container is never paused"
    d = decide(finding(), config(), "", released={CID: "alice (uid 0) at 2024-01-01T00:00:00Z"})
    assert not d.act and d.reason.startswith("released by alice")


def test_observe_mode_says_what_it_would_do():
    """Observe mode records a dry run with the would-be action."""
    d = decide(finding(), config(mode="observe"), "")
    assert (d.act, d.action, d.result) == (False, "pause", "dry-run")
    assert d.reason == "observe mode: would pause (critical finding >= pause_severity critical)"


def test_host_processes_only_when_configured_and_never_special_ones():
    """Host processes are stopped only with stop_host_processes, never PID 1, kernel threads or the agent's own."""
    host = finding(container=None)
    assert decide(host, config(), "").reason == "host process: response.stop_host_processes is off"
    d = decide(host, config(stop_host_processes=True), "")
    assert d.act and d.action == "stop" and d.pid == 4242
    for proc, words in ((ProcessSnapshot(pid=1, start_ticks=1), "PID 1"),
                        (ProcessSnapshot(pid=2, start_ticks=1, is_kernel_thread=True), "kernel thread"),
                        (ProcessSnapshot(pid=4242, start_ticks=1), "agent or one of its ancestors")):
        d = decide(finding(container=None, process=proc), config(stop_host_processes=True), "", own_pids={4242})
        assert not d.act and words in d.reason


# --------------------------------------------------------------------------- freezer parsing (pure)


def test_mountinfo_and_cgroup_lines_are_parsed():
    """The freezer and cgroup2 mounts come from mountinfo; the freezer and 0:: lines from /proc/PID/cgroup."""
    text = ("30 25 0:26 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n"
            "31 25 0:27 /sub /mnt/with\\040space rw - cgroup2 cgroup2 rw\n")
    m = parse_mountinfo(text)
    assert m.v1_freezer == ("/sys/fs/cgroup/freezer", "/") and m.v2 == ("/mnt/with space", "/sub")
    assert cgroup_lines("6:freezer:/docker/x\n0::/system.slice/y\n") == ("/docker/x", "/system.slice/y")
    f = CgroupFreezer(Mounts(None, ("/v2", "/sub")))
    assert f.target_for("0::/sub/kubepods/x\n") == CgroupTarget(2, "/sub/kubepods/x", "/v2/kubepods/x")


def test_root_cgroup_is_never_a_target(tmp_path):
    """A process in the root cgroup gives no target: the whole machine is never frozen."""
    from agent.response.freezer import FreezeError

    f = CgroupFreezer(Mounts(("/sys/fs/cgroup/freezer", "/"), ("/sys/fs/cgroup/unified", "/")))
    with pytest.raises(FreezeError):
        f.target_for("6:freezer:/\n0::/\n")


def test_v2_freeze_on_a_fake_tree_waits_for_frozen(tmp_path):
    """v2 freezing writes cgroup.freeze and waits for 'frozen 1' in cgroup.events (a fake tree, a fake kernel)."""
    d = tmp_path / "kubepods" / "pod1"
    d.mkdir(parents=True)
    (d / "cgroup.freeze").write_text("0")
    (d / "cgroup.events").write_text("populated 1\nfrozen 0\n")

    def kernel(_delay):  # what the kernel does a moment after the write
        if (d / "cgroup.freeze").read_text().strip() == "1":
            (d / "cgroup.events").write_text("populated 1\nfrozen 1\n")

    f = CgroupFreezer(Mounts(None, (str(tmp_path), "/")), sleep=kernel)
    target = f.target_for("0::/kubepods/pod1\n")
    f.freeze(target)
    assert f.state(target) == "FROZEN"


# --------------------------------------------------------------------------- real cgroups


def _cpu_stops_and_resumes(pid: int, freezer: CgroupFreezer, target: CgroupTarget, box: FreezerSandbox) -> None:
    procs.wait_until(lambda: procs.cpu_seconds(pid) > 0.05, 10, 0.05, "burner burning")
    freezer.freeze(target)
    assert box.state() == "FROZEN"
    time.sleep(0.2)
    frozen_at = procs.cpu_seconds(pid)
    time.sleep(1.0)
    assert procs.cpu_seconds(pid) == frozen_at  # not a tick more while frozen
    freezer.thaw(target)
    assert box.state() == "THAWED"
    procs.wait_until(lambda: procs.cpu_seconds(pid) > frozen_at + 0.05, 10, 0.05, "burner burning again")


@pytest.mark.parametrize("version", [1, 2])
def test_real_cgroup_is_frozen_and_thawed(version, spawn, helper_bins):
    """A busy process in a cgroup the test creates stops using CPU when frozen and resumes when thawed."""
    burner = spawn([helper_bins.burner, "-t", "1", "--seconds", "60"])
    with (FreezerSandbox.v1() if version == 1 else FreezerSandbox.v2()) as box:
        box.add(burner.pid)
        freezer = CgroupFreezer()
        target = freezer.target_for(procs.cgroup(burner.pid))
        assert (target.version, target.path) == (version, box.path)
        _cpu_stops_and_resumes(burner.pid, freezer, target, box)


def _snapshot(pid: int, **overrides) -> ProcessSnapshot:
    from agent.collectors.procfs import ProcfsCollector

    snap = ProcfsCollector().snapshot(pid)
    return dataclasses.replace(snap, **overrides)


def _in_a_slice(box: FreezerSandbox) -> FreezerSandbox:
    """The sandbox's top made a ``*.slice``: systemd puts scopes only in slices, so a scope anywhere
    else is no runtime's container (collectors/cgroups.py)."""
    leaf = box.directory.name
    box.top = box.top.with_name(f"{box.top.name}.slice")
    box.directory = box.top / leaf
    box.path = "/" + str(box.directory.relative_to(box.mount))
    return box


def test_containerd_container_is_frozen_through_its_cgroup_and_released(tmp_path, spawn, helper_bins, docker_client):
    """A process in a containerd-style cgroup is frozen by the responder (no Docker involved) and release thaws it."""
    burner = spawn([helper_bins.burner, "-t", "1", "--seconds", "60"])
    with _in_a_slice(FreezerSandbox.v1(f"cri-containerd-{FAKE_CID}.scope")) as box:
        box.add(burner.pid)
        snap = _snapshot(burner.pid)
        assert (snap.container_id, snap.container_runtime) == (FAKE_CID, "containerd")
        cfg = config(tmp_path)
        r = Responder(cfg, DockerHandle.of(docker_client), state_dir=cfg.agent.state_dir)
        out = r.respond(finding(container=None, process=snap))
        assert (out.response.action, out.response.result) == ("freeze", "done"), out.response
        assert f"froze cgroup-v1 cgroup {box.path}" in out.response.reason
        assert box.state() == "FROZEN"
        again = r.respond(finding(container=None, process=snap))
        assert again.response.result == "done" and "already frozen" in again.response.reason
        done = release(FAKE_CID[:12], ResponseRecords(cfg.agent.state_dir), DockerHandle.of(docker_client))
        assert box.state() == "THAWED" and done.by_agent and "thawed cgroup-v1" in done.how
        assert FAKE_CID in ResponseRecords(cfg.agent.state_dir).released()


def test_host_process_is_stopped_only_when_configured(tmp_path, spawn, helper_bins):
    """With stop_host_processes a host process gets SIGSTOP (state T); release pid:N continues it."""
    burner = spawn([helper_bins.burner, "-t", "1", "--seconds", "60"])
    snap = _snapshot(burner.pid)
    cfg = config(tmp_path, stop_host_processes=True)
    out = Responder(cfg, DockerHandle(NO_DOCKER), state_dir=cfg.agent.state_dir).respond(finding(container=None, process=snap))
    assert (out.response.action, out.response.result) == ("stop", "done"), out.response
    procs.wait_until(lambda: Path(f"/proc/{burner.pid}/stat").read_text().split(") ")[1][0] == "T", 5, 0.02, "stopped")
    release(f"pid:{burner.pid}", ResponseRecords(cfg.agent.state_dir), DockerHandle(NO_DOCKER))
    procs.wait_until(lambda: Path(f"/proc/{burner.pid}/stat").read_text().split(") ")[1][0] != "T", 5, 0.02, "continued")


# --------------------------------------------------------------------------- identity guard


@pytest.mark.parametrize("change, words", [
    ({"start_ticks": 1}, "start time"), ({"exe": "/usr/bin/something-else"}, "executable"),
])
def test_identity_guard_refuses_a_changed_process(tmp_path, spawn, helper_bins, change, words):
    """A finding whose PID now has another start time or executable is refused, and nothing is stopped."""
    burner = spawn([helper_bins.burner, "-t", "0", "--seconds", "60"])
    cfg = config(tmp_path, stop_host_processes=True)
    out = Responder(cfg, DockerHandle(NO_DOCKER), state_dir=cfg.agent.state_dir).respond(
        finding(container=None, process=_snapshot(burner.pid, **change)))
    assert out.response.result == "refused" and out.response.reason.startswith("identity changed:")
    assert words in out.response.reason
    assert Path(f"/proc/{burner.pid}/stat").read_text().split(") ")[1][0] != "T"


def test_identity_guard_refuses_an_exited_process(tmp_path, spawn, helper_bins):
    """A finding about a process that has exited is refused."""
    burner = spawn([helper_bins.burner, "-t", "0", "--seconds", "60"])
    snap = _snapshot(burner.pid)
    burner.kill()
    burner.wait(10)
    cfg = config(tmp_path, stop_host_processes=True)
    out = Responder(cfg, DockerHandle(NO_DOCKER), state_dir=cfg.agent.state_dir).respond(finding(container=None, process=snap))
    assert (out.response.result, out.response.reason) == ("refused", f"identity changed: PID {snap.pid} exited")


# --------------------------------------------------------------------------- real Docker


@pytest.fixture(scope="module")
def signatures():
    from agent.signatures import load_bundle

    return load_bundle()


def verdict(cfg, signatures, docker_client, pid: int, container_id: str) -> Finding:
    """What the daemon would conclude about ``pid``: a real snapshot, scan and judgement."""
    from agent.collectors.snapshots import SnapshotCollector
    from agent.judge import Judge

    collect, judge = SnapshotCollector(cfg, signatures), Judge.from_config(cfg, signatures)
    info = docker_inventory.container_from_inspect(docker_client.api.inspect_container(container_id))
    found = judge.process(collect.snapshot(pid), info, judge.container_evidence(info))
    assert found is not None and found.severity == Severity.CRITICAL, found
    return found


def paused(docker_client, cid: str) -> bool:
    return docker_client.api.inspect_container(cid)["State"]["Paused"]


def test_miner_container_is_paused_and_evidence_kept(tmp_path, docker_client, miner_in_container, signatures, helper_bins):
    """A critical miner container is paused (State.Paused), its binary is quarantined 0600 with the right hash, untouched."""
    m = miner_in_container
    cfg = config(tmp_path)
    f = verdict(cfg, signatures, docker_client, m.pid, m.id)
    started = time.monotonic()
    out = Responder(cfg, DockerHandle.of(docker_client), state_dir=cfg.agent.state_dir).respond(f)
    took = time.monotonic() - started
    assert (out.response.action, out.response.result) == ("pause", "done"), out.response
    assert out.response.reason.startswith("critical finding >= pause_severity critical: paused")
    assert paused(docker_client, m.id)
    assert took < 5.0  # generous on a shared machine; bench/response.py measures the 0.5 s target

    digest = hashlib.sha256(helper_bins.fakeminer.read_bytes()).hexdigest()
    qdir = tmp_path / "state" / "quarantine"
    copy = qdir / digest
    assert stat.S_IMODE(qdir.stat().st_mode) == 0o700
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600 and stat.S_IMODE((qdir / f"{digest}.json").stat().st_mode) == 0o600
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest
    record = json.loads((qdir / f"{digest}.json").read_text())["sightings"][-1]
    assert record["matches_finding"] and record["alert"]["minerwatch"]["response"]["result"] == "done"
    assert record["process_tree"]["process"]["pid"] == m.pid and record["process_tree"]["ancestors"]
    assert any(c["remote"].endswith(f":{m.pool_port}") for c in record["connections"])
    inside = Path(f"/proc/{m.pid}/root/usr/local/bin/fakeminer")  # the container's own file, read from the host
    assert hashlib.sha256(inside.read_bytes()).hexdigest() == digest

    records = ResponseRecords(cfg.agent.state_dir).paused()
    assert records[m.id]["method"] == "docker" and records[m.id]["name"] == m.name


@pytest.mark.parametrize("how", ["name", "image", "label", "label-unknown-to-the-finding"])
def test_protected_containers_are_not_paused(how, tmp_path, docker_client, base_image, signatures):
    """Containers protected by name, image glob or label are not paused, and the reason says which rule."""
    from tests.helpers.containers import start_miner_container

    labels = {"minerwatch.protect": "true"} if how.startswith("label") else {}
    m = start_miner_container(docker_client, base_image, labels=labels)
    protect = {"name": [m.name], "image": ["minerwatch-test/*"]}.get(how, [])
    cfg = config(tmp_path, protect=protect)
    f = verdict(cfg, signatures, docker_client, m.pid, m.id)
    if how == "label-unknown-to-the-finding":  # Docker's fresh inspect still finds the label
        f = dataclasses.replace(f, container=ContainerInfo(id=m.id))
    out = Responder(cfg, DockerHandle.of(docker_client), state_dir=cfg.agent.state_dir).respond(f)
    assert (out.response.action, out.response.result) == ("none", "skipped"), out.response
    expected = {"name": f"protected by response.protect entry {m.name!r} (name {m.name})",
                "image": "protected by response.protect entry 'minerwatch-test/*' (image minerwatch-test/base:1)"}
    assert out.response.reason == expected.get(how, "protected by label minerwatch.protect=true (set on the container)")
    assert not paused(docker_client, m.id)


def test_an_image_cannot_opt_its_containers_out_by_label(tmp_path, docker_client, helper_bins, docker_image, signatures):
    """A miner image built with LABEL minerwatch.protect=true (the look-alike images of our threat model
    can carry any label) is paused all the same: only the operator's own labels protect."""
    from tests.helpers.containers import start_miner_container

    files = {f"/usr/local/bin/{n}": (p.read_bytes(), 0o755) for n, p in helper_bins.as_dict().items()}
    image = docker_image("mwtest-optout/openjdk:latest", files, labels={"minerwatch.protect": "true"})
    m = start_miner_container(docker_client, image)
    assert docker_client.api.inspect_container(m.id)["Config"]["Labels"]["minerwatch.protect"] == "true"
    cfg = config(tmp_path)
    f = verdict(cfg, signatures, docker_client, m.pid, m.id)
    out = Responder(cfg, DockerHandle.of(docker_client), state_dir=cfg.agent.state_dir).respond(f)
    assert (out.response.action, out.response.result) == ("pause", "done"), out.response
    assert paused(docker_client, m.id)


def test_observe_mode_does_not_pause(tmp_path, docker_client, miner_in_container, signatures):
    """In observe mode the miner container keeps running and the response says what would have been done."""
    m = miner_in_container
    cfg = config(tmp_path, mode="observe")
    out = Responder(cfg, DockerHandle.of(docker_client), state_dir=cfg.agent.state_dir).respond(
        verdict(cfg, signatures, docker_client, m.pid, m.id))
    assert out.response == ResponseRecord("pause", "dry-run", "observe mode: would pause (critical finding >= pause_severity critical)")
    assert not paused(docker_client, m.id)
    assert not (tmp_path / "state" / "quarantine").exists()


def test_replaced_container_with_the_same_name_is_not_hit(tmp_path, docker_client, base_image, signatures):
    """A finding about a removed container is refused when a new container took its name; the new one runs on."""
    from tests.helpers.containers import remove_container, start_miner_container

    old = start_miner_container(docker_client, base_image)
    cfg = config(tmp_path)
    f = verdict(cfg, signatures, docker_client, old.pid, old.id)
    name = old.name
    remove_container(docker_client, old.id)
    new = start_miner_container(docker_client, base_image, name=name)
    out = Responder(cfg, DockerHandle.of(docker_client), state_dir=cfg.agent.state_dir).respond(f)
    assert out.response.result == "refused" and out.response.reason.startswith("identity changed:"), out.response
    assert not paused(docker_client, new.id)


def test_docker_unreachable_freezes_the_cgroup_and_release_thaws(tmp_path, docker_client, miner_in_container, signatures):
    """With Docker unreachable the container's cgroup is frozen (the response says so); release thaws it."""
    m = miner_in_container
    cfg = config(tmp_path)
    f = verdict(cfg, signatures, docker_client, m.pid, m.id)
    freezer = CgroupFreezer()
    target = freezer.target_for(procs.cgroup(m.pid))
    try:
        out = Responder(cfg, DockerHandle(NO_DOCKER), state_dir=cfg.agent.state_dir).respond(f)
        assert (out.response.action, out.response.result) == ("freeze", "done"), out.response
        assert "(docker unreachable)" in out.response.reason
        assert freezer.state(target) == "FROZEN"
        done = release(m.name, ResponseRecords(cfg.agent.state_dir), DockerHandle(NO_DOCKER))
        assert freezer.state(target) == "THAWED" and done.by_agent
    finally:
        freezer.thaw(target)  # the container fixture can only remove it thawed


def test_unknown_container_with_docker_unreachable_fails_and_says_why(tmp_path, docker_client, miner_in_container, signatures):
    """Without Docker and without the container's name and labels the pause fails (a follow-up alert), nothing frozen."""
    m = miner_in_container
    cfg = config(tmp_path)
    f = dataclasses.replace(verdict(cfg, signatures, docker_client, m.pid, m.id), container=None)
    out = Responder(cfg, DockerHandle(NO_DOCKER), state_dir=cfg.agent.state_dir).respond(f)
    assert (out.response.action, out.response.result) == ("pause", "failed")
    assert "response.protect cannot be checked" in out.response.reason
    assert CgroupFreezer().state(CgroupFreezer().target_for(procs.cgroup(m.pid))) == "THAWED"


def test_a_failed_response_gets_past_alert_dedupe():
    """The follow-up alert for a failed action is not suppressed as a repeat of the first alert."""
    from agent import alert
    from agent.sinks.dedupe import Dedupe

    d = Dedupe(None, 3600)
    first = alert.build(finding(), host_name="h")
    d.record(first)
    failed = alert.build(dataclasses.replace(finding(), response=ResponseRecord("pause", "failed", "x")), host_name="h")
    assert not d.check(first) and d.check(failed)



@pytest.fixture(scope="module")
def private_engine(docker_client, base_image):
    """A private dockerd holding the test image: agents in enforce mode there cannot pause other tests' containers
    on the shared engine (those are unknown to it, so their pauses are refused)."""
    from tests.helpers.second_dockerd import SecondDockerd

    d2 = SecondDockerd()
    try:
        d2.start()
        client = d2.client()
        client.images.load(b"".join(docker_client.api.get_image(base_image)))  # by name: keeps the tag
        yield d2, client
    finally:
        for c in d2.client().containers.list(filters={"status": "paused"}) if d2.running() else []:
            c.unpause()  # frozen processes cannot be killed
        assert not d2.cleanup()


def run_private_miner(client, image: str, name: str):
    from tests.helpers.containers import TEST_WALLET

    return client.containers.run(
        image, ["sh", "-c", f"fakepool 3333 & sleep 0.3; exec fakeminer -o stratum+tcp://127.0.0.1:3333 "
                            f"-u {TEST_WALLET} -t 1 --seconds 120"],
        detach=True, network_mode="none", name=name)


def remove_private(container) -> None:
    container.reload()
    if container.status == "paused":
        container.unpause()
    container.remove(force=True)


def test_daemon_pauses_a_miner_and_its_alert_says_so(tmp_path, private_engine, base_image):
    """`minerwatch run` (enforce) pauses a miner container; its alert says pause/done."""
    from tests.agentproc import AgentProcess

    d2, client = private_engine
    agent = container = None
    try:
        agent = AgentProcess(tmp_path / "agent", interval=2.0, docker_url=d2.url, response_mode="enforce").start()
        container = run_private_miner(client, base_image, "mwtest-d2-respond")
        alert = agent.wait_alert(lambda a: a.get("container", {}).get("id") == container.id
                                 and a["minerwatch"]["response"]["result"] == "done", 30.0, "alert with a done pause")
        assert alert["minerwatch"]["response"]["action"] == "pause"
        assert "paused" in alert["minerwatch"]["response"]["reason"]
        assert client.api.inspect_container(container.id)["State"]["Paused"]
    finally:
        if agent is not None:
            assert agent.stop() == 0, agent.log()[-2000:]
        if container is not None:
            remove_private(container)


def test_sweep_respond_pauses_and_plain_sweep_does_not(tmp_path, private_engine, base_image):
    """`sweep` leaves a miner container running; `sweep --respond` pauses it and its JSON alert says so."""
    from tests.sweeping import sweep, write_config

    d2, client = private_engine
    container = run_private_miner(client, base_image, "mwtest-d2-sweep")
    try:
        procs.wait_until(lambda: any(procs.established_to(p, 3333) for p in procs.pids_in_cgroup_of(container.id)),
                         20, 0.05, "miner connected")
        cfg = write_config(tmp_path, extra=f'[docker]\nurl = "{d2.url}"\n')
        plain = sweep("--json", "--config", str(cfg))
        mine = [a for a in plain.alerts if a.get("container", {}).get("id") == container.id]
        assert mine and all(a["minerwatch"]["response"]["action"] == "none" for a in mine), plain.stderr
        assert not client.api.inspect_container(container.id)["State"]["Paused"]
        run = sweep("--json", "--respond", "--config", str(cfg))
        assert run.code == 1, run.stderr
        alert = next(a for a in run.alerts if a.get("container", {}).get("id") == container.id)
        assert alert["minerwatch"]["response"]["action"] == "pause"
        assert alert["minerwatch"]["response"]["result"] == "done", alert["minerwatch"]["response"]
        assert client.api.inspect_container(container.id)["State"]["Paused"]
        assert container.id in json.loads((tmp_path / "state" / "paused.json").read_text())
    finally:
        remove_private(container)
