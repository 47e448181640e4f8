"""Least privilege on disk: state 0700, alert file 0640, quarantine 0600; refusing files other users could change."""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.collectors.docker_api import DockerHandle
from agent import trust
from agent.signatures import bundled_directory
from tests.agentproc import AgentProcess
from tests.helpers.containers import TEST_WALLET
from tests.sweeping import REPO


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_daemon_state_dir_0700_alert_file_0640_nothing_world_readable(tmp_path, spawn, helper_bins, fake_pool):
    """A state dir made 0755 by someone is tightened to 0700; the alert file is 0640; nothing under state is world-accessible."""
    agent = AgentProcess(tmp_path / "agent", interval=2.0)
    state = tmp_path / "agent" / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    agent.start()
    try:
        miner = spawn([helper_bins.fakeminer, "-o", fake_pool.url, "-u", TEST_WALLET, "-t", "0", "--seconds", "60"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        agent.wait_alert(lambda a: a.get("process", {}).get("pid") == miner.pid, 30, "alert for a host miner")
        assert mode(state) == 0o700
        assert mode(agent.alerts_path) == 0o640
        leaks = {str(p.relative_to(state)): oct(mode(p)) for p in state.rglob("*") if mode(p) & 0o007}
        assert not leaks, f"world-accessible under the state dir: {leaks}"
        spool = [p for p in (state / "alerts" / "spool").iterdir() if p.is_file()]
        assert spool and all(mode(p) == 0o600 for p in spool), {p.name: oct(mode(p)) for p in spool}
    finally:
        assert agent.stop() == 0, agent.log()[-2000:]


def test_quarantined_evidence_is_0600_in_a_0700_directory(tmp_path, docker_client, miner_in_container, helper_bins):
    """Enforce-mode response to our own miner container keeps its binary 0600 (and the record 0600) in a 0700 directory."""
    from agent.collectors import docker_inventory
    from agent.config import from_dict
    from agent.collectors.snapshots import SnapshotCollector
    from agent.judge import Judge
    from agent.response import Responder
    from agent.signatures import load_bundle

    cfg = from_dict({"agent": {"state_dir": str(tmp_path / "state")}, "response": {"mode": "enforce"}})
    collect, judge = SnapshotCollector(cfg, load_bundle(None)), Judge.from_config(cfg, load_bundle(None))
    m = miner_in_container
    info = docker_inventory.container_from_inspect(docker_client.api.inspect_container(m.id))
    found = judge.process(collect.snapshot(m.pid), info, judge.container_evidence(info))
    out = Responder(cfg, DockerHandle.of(docker_client), state_dir=cfg.agent.state_dir).respond(found)
    assert (out.response.action, out.response.result) == ("pause", "done"), out.response
    qdir = tmp_path / "state" / "quarantine"
    digest = hashlib.sha256(helper_bins.fakeminer.read_bytes()).hexdigest()
    assert mode(qdir) == 0o700
    assert {p.name: mode(p) for p in qdir.iterdir()} == {digest: 0o600, f"{digest}.json": 0o600}


def run_agent(config: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """``minerwatch run`` that is expected to refuse: it must exit by itself, quickly."""
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise AssertionError("the agent started instead of refusing") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def write_config(directory: Path, signatures: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    cfg = directory / "config.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{directory}/state"\nsignatures = "{signatures}"\n'
                   f'[alerts]\nstdout = false\nfile = ""\n[watch]\npaths = []\n')
    return cfg


def copy_bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(bundled_directory(), bundle, ignore=shutil.ignore_patterns("__pycache__"))
    return bundle


@pytest.mark.parametrize("case", ["config_0666", "config_dir_0777", "config_owned_by_user", "config_symlink_owned_by_user",
                                  "bundle_dir_0777", "bundle_file_0666", "bundle_yara_dir_owned_by_user"])
def test_run_as_root_refuses_files_other_users_could_change(case, tmp_path):
    """As root, a world-writable or foreign-owned config or signature path makes `minerwatch run` exit 2 naming it."""
    if os.geteuid() != 0:
        pytest.skip("the refusal only applies when running as root")
    bundle = copy_bundle(tmp_path)
    cfg = write_config(tmp_path / "etc", str(bundle))
    culprit: Path = cfg
    if case == "config_0666":
        os.chmod(cfg, 0o666)
    elif case == "config_dir_0777":
        os.chmod(cfg.parent, 0o777)
        culprit = cfg.parent
    elif case == "config_owned_by_user":
        os.chown(cfg, 1000, 1000)
    elif case == "config_symlink_owned_by_user":
        link = tmp_path / "link.toml"
        link.symlink_to(cfg)
        os.lchown(link, 1000, 1000)
        cfg = culprit = link
    elif case == "bundle_dir_0777":
        os.chmod(bundle, 0o777)
        culprit = bundle
    elif case == "bundle_file_0666":
        culprit = bundle / "yara" / "xmrig.yar"
        os.chmod(culprit, 0o666)
    elif case == "bundle_yara_dir_owned_by_user":
        culprit = bundle / "yara"
        os.chown(culprit, 1000, 1000)
    res = run_agent(cfg)
    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert f"refusing to run as root: {culprit}" in err and "fix:" in err, err


def test_trust_checks_pass_for_root_owned_paths_and_skip_when_not_root(tmp_path):
    """Root-owned 0644 files in a 0755 tree under sticky /tmp pass; a non-root agent is not checked at all."""
    bundle = copy_bundle(tmp_path)
    cfg = write_config(tmp_path / "etc", str(bundle))
    if os.geteuid() == 0:
        trust.check_config_file(str(cfg))
        trust.check_signature_dir(bundle)
    os.chmod(cfg, 0o666)
    trust.check_config_file(str(cfg), euid=1000)  # not root: no refusal
    with pytest.raises(trust.TrustError) as info:
        trust.check_config_file(str(cfg), euid=0)
    assert info.value.exit_code == 2 and info.value.path == str(cfg)
    with pytest.raises(trust.TrustError):
        trust.check_signature_dir("/tmp", euid=0)  # a world-writable directory as the bundle itself


@pytest.mark.parametrize("command", [["sweep"], ["scan-image", "busybox:none"], ["release", "nothing"], ["alerts", "test"]])
def test_every_command_refuses_a_config_other_users_could_change(command, tmp_path):
    """As root, sweep, scan-image, release and alerts test refuse a world-writable config like run does (exit 2)."""
    if os.geteuid() != 0:
        pytest.skip("the refusal only applies when running as root")
    cfg = write_config(tmp_path / "etc")
    os.chmod(cfg, 0o666)
    res = subprocess.run([sys.executable, "-m", "agent", *command, "--config", str(cfg)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert f"refusing to run as root: {cfg}" in res.stderr, res.stderr


@pytest.mark.parametrize("case", ["owned_by_user", "group_writable"])
def test_run_refuses_a_state_dir_other_users_could_change(case, tmp_path):
    """As root, a state directory owned by another user, or group-writable, is refused (exit 2 naming it):
    it holds pause records, dedupe memory and quarantined evidence."""
    if os.geteuid() != 0:
        pytest.skip("the refusal only applies when running as root")
    cfg = write_config(tmp_path / "etc")
    state = tmp_path / "etc" / "state"
    state.mkdir(mode=0o700)
    if case == "owned_by_user":
        os.chown(state, 1000, 1000)
    else:
        os.chmod(state, 0o770)
    res = run_agent(cfg)
    err = res.stderr.decode()
    assert res.returncode == 2 and f"refusing to run as root: {state}" in err, err


def test_reload_runs_the_trust_checks_and_keeps_the_last_good_config(tmp_path):
    """SIGHUP after the config became world-writable: the reload is refused (logged with the path), the
    daemon keeps running on what it had."""
    import signal as signals

    from tests.helpers import procs

    if os.geteuid() != 0:
        pytest.skip("the refusal only applies when running as root")
    agent = AgentProcess(tmp_path / "agent", interval=2.0).start()
    try:
        os.chmod(agent.config_path, 0o666)
        agent.proc.send_signal(signals.SIGHUP)
        failed = procs.wait_until(lambda: [e for e in agent.log_events() if e.get("event") == "reload_failed"],
                                  30, 0.1, "the reload was refused")
        assert "refusing to run as root" in failed[0]["error"] and str(agent.config_path) in failed[0]["error"]
        assert agent.proc.poll() is None
    finally:
        assert agent.stop() == 0, agent.log()[-2000:]
