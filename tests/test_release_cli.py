"""`minerwatch release`: the real CLI against a real Docker engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agent.collectors.docker_api import DockerHandle
from agent.config import load
from agent.response import Responder
from tests.sweeping import REPO


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[agent]\nstate_dir = "{tmp_path}/state"\n')
    return path


def mw_release(ref: str, cfg: Path, user: str = "alice-test", *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SUDO_USER"}
    env["USER"] = user
    env["MINERWATCH_LOG_FORMAT"] = "json"  # the audit record, as the journal would get it
    return subprocess.run([sys.executable, "-m", "agent", "release", ref, "--config", str(cfg), *extra],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


def log_events(stderr: str) -> list[dict]:
    out = []
    for line in stderr.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def paused(docker_client, cid: str) -> bool:
    return docker_client.api.inspect_container(cid)["State"]["Paused"]


def pause_with_agent(cfg_path: Path, docker_client, miner) -> Responder:
    """Pause the miner container the way the daemon does (a critical verdict, then the responder)."""
    from agent.collectors import docker_inventory
    from agent.collectors.snapshots import SnapshotCollector
    from agent.judge import Judge
    from agent.signatures import load_bundle

    cfg = load(cfg_path)
    collect, judge = SnapshotCollector(cfg, load_bundle()), Judge.from_config(cfg, load_bundle())
    info = docker_inventory.container_from_inspect(docker_client.api.inspect_container(miner.id))
    finding = judge.process(collect.snapshot(miner.pid), info, judge.container_evidence(info))
    responder = Responder(cfg, DockerHandle.of(docker_client), state_dir=cfg.agent.state_dir)
    assert responder.respond(finding).response.result == "done"
    assert paused(docker_client, miner.id)
    return responder


def test_release_unpauses_logs_who_and_is_not_repaused(tmp_path, docker_client, miner_in_container):
    """`release NAME` unpauses a container the agent paused (exit 0), logs who and when; the agent leaves it be."""
    from agent.collectors import docker_inventory
    from agent.collectors.snapshots import SnapshotCollector
    from agent.judge import Judge
    from agent.signatures import load_bundle

    cfg_path = write_config(tmp_path)
    m = miner_in_container
    responder = pause_with_agent(cfg_path, docker_client, m)
    out = mw_release(m.name, cfg_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(f"released container {m.name} ({m.id[:12]}): unpaused (paused by minerwatch at ")
    assert out.stdout.strip().endswith("; minerwatch will not pause it again while it lives")
    assert not paused(docker_client, m.id)
    event = next(e for e in log_events(out.stderr) if e.get("event") == "container_released")
    assert event["by"] == f"alice-test (uid {os.getuid()})" and event["at"] and event["paused_by_agent"] is True
    assert m.id not in json.loads((tmp_path / "state" / "paused.json").read_text())

    cfg = load(cfg_path)  # the daemon's next verdict on the same miner
    collect, judge = SnapshotCollector(cfg, load_bundle()), Judge.from_config(cfg, load_bundle())
    info = docker_inventory.container_from_inspect(docker_client.api.inspect_container(m.id))
    again = responder.respond(judge.process(collect.snapshot(m.pid), info))
    assert again.response.result == "skipped" and again.response.reason.startswith("released by alice-test")
    assert not paused(docker_client, m.id)


def test_release_of_a_missing_container_exits_2(tmp_path, docker_client):
    """Releasing a container that does not exist is an error (exit 2) that names it."""
    out = mw_release("mwtest-no-such-container-4f1c", write_config(tmp_path))
    assert out.returncode == 2
    assert "mwtest-no-such-container-4f1c" in out.stderr


def test_release_twice_second_time_says_already_released(tmp_path, docker_client, miner_in_container):
    """A second release of the same container does nothing (exit 0) and says who released it already."""
    cfg_path = write_config(tmp_path)
    pause_with_agent(cfg_path, docker_client, miner_in_container)
    assert mw_release(miner_in_container.id[:12], cfg_path).returncode == 0
    out = mw_release(miner_in_container.id[:12], cfg_path)
    assert out.returncode == 0, out.stderr
    assert "was already released by alice-test" in out.stdout and "nothing done" in out.stdout, out.stdout
    assert "will not pause it again while it lives" in out.stdout


def released_ids(tmp_path: Path) -> set[str]:
    path = tmp_path / "state" / "released.json"
    return set(json.loads(path.read_text())) if path.exists() else set()


def test_release_leaves_a_container_paused_by_someone_else_unless_forced(tmp_path, docker_client, miner_in_container):
    """A container paused by hand is not minerwatch's to release: exit 2, still paused, not recorded as
    released (before, it was unpaused and exempted from every later pause, silently). --force unpauses
    it and says the container is now exempt."""
    m = miner_in_container
    docker_client.api.pause(m.id)
    cfg = write_config(tmp_path)
    out = mw_release(m.name, cfg, "bob-test")
    assert out.returncode == 2, out.stdout
    assert "minerwatch did not pause it" in out.stderr and "--force" in out.stderr, out.stderr
    assert paused(docker_client, m.id)
    assert m.id not in released_ids(tmp_path)

    forced = mw_release(m.name, cfg, "bob-test", "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.strip() == (f"released container {m.name} ({m.id[:12]}): unpaused (not paused by minerwatch "
                                     "(--force)); minerwatch will not pause it again while it lives")
    assert not paused(docker_client, m.id)
    assert m.id in released_ids(tmp_path)


def test_release_of_a_running_container_minerwatch_never_paused_changes_nothing(tmp_path, docker_client,
                                                                                 miner_in_container):
    """Not paused and no record: exit 2, nothing recorded (the old code marked it released)."""
    out = mw_release(miner_in_container.name, write_config(tmp_path))
    assert out.returncode == 2
    assert "is not paused, and minerwatch did not pause it" in out.stderr, out.stderr
    assert miner_in_container.id not in released_ids(tmp_path)
