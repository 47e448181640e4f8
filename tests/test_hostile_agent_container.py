"""The agent in a container of its own: a miner `docker exec`-ed into that container is judged and alerted.

The agent runs from this checkout inside a real container (the host's /usr, python and the
checkout mounted read-only, `--pid host` so it sees every process, the Docker socket). Before,
every process of the agent's own container was skipped, so hiding there was a way out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.agentproc import AgentProcess
from tests.helpers import procs
from tests.helpers.containers import TEST_WALLET
from tests.sweeping import REPO

pytestmark = pytest.mark.docker


def _mounts(*paths: Path | str) -> list[str]:
    out = []
    for p in dict.fromkeys(str(Path(p)) for p in paths):
        out += ["-v", f"{p}:{p}:ro"]
    return out


def test_a_miner_execed_into_the_agents_own_container_is_alerted(tmp_path, docker_client, base_image, helper_bins):
    """`docker exec` of a miner into the agent's container: a critical alert naming the foreign process,
    while the agent itself (its own process tree) is never judged."""
    python = Path(os.path.realpath(sys.executable))
    prefix = Path(sys.base_prefix)
    work = tmp_path / "agent"
    agent = AgentProcess(work, interval=2.0)
    name = f"mwtest-agent-{uuid.uuid4().hex[:8]}"
    cmd = ["docker", "run", "--rm", "--name", name, "--pid", "host", "--network", "host",
           "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
           "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
           "--label", "minerwatch.test=1",
           *_mounts("/usr", "/lib", "/lib64", "/etc/ssl", prefix, python.parent.parent, REPO, helper_bins.dir),
           "-v", f"{work}:{work}", "-v", "/var/run/docker.sock:/var/run/docker.sock",
           "-e", f"NOTIFY_SOCKET={agent.notify_path}", "-e", "PYTHONUNBUFFERED=1", "-w", str(REPO),
           # The container's own init (sh) starts a sleep beside the agent: the container's workload,
           # not a process put in from outside.
           base_image, "/bin/sh", "-c", f"sleep 600 & {Path(sys.executable)} -m agent run --config {agent.config_path}; wait"]
    log = open(agent.log_path, "ab")
    try:
        agent.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        agent.wait_notify("READY=1", 90)
        cid = docker_client.api.inspect_container(name)["Id"]
        # First a plain sleep put in from outside: medium on that alone (the first finding of this
        # container's incident; later ones of the same severity are deduplicated into it).
        docker_client.api.exec_start(docker_client.api.exec_create(cid, ["sleep", "601"])["Id"], detach=True)
        execed = agent.wait_alert(lambda a: a.get("process", {}).get("args") == ["sleep", "601"], 30,
                                  "a plain sleep docker-exec'd in is alerted as put in from outside")
        assert execed["event"]["severity"] >= 47 and "from outside" in json.dumps(execed["minerwatch"]["evidence"])
        pool = ["/bin/sh", "-c", f"exec {helper_bins.dir}/fakepool 3391"]
        docker_client.api.exec_start(docker_client.api.exec_create(cid, pool)["Id"], detach=True)
        miner = [f"{helper_bins.dir}/fakeminer", "-o", "stratum+tcp://127.0.0.1:3391", "-u", TEST_WALLET,
                 "-t", "1", "--seconds", "60"]
        docker_client.api.exec_start(docker_client.api.exec_create(cid, miner)["Id"], detach=True)
        alert = agent.wait_alert(
            lambda a: a.get("container", {}).get("id") == cid and "fakeminer" in a.get("process", {}).get("executable", ""),
            60.0, "the exec'd miner alerted")
        details = " ".join(e["detail"] for e in alert["minerwatch"]["evidence"])
        assert "minerwatch's own container" in details
        assert alert["event"]["severity"] >= 73, alert["event"]
        own = [a for a in agent.alerts() if "agent" in " ".join(a.get("process", {}).get("args", []))
               and a.get("process", {}).get("name", "").startswith("python")]
        assert own == [], "the agent's own process is never judged"
        assert not [a for a in agent.alerts() if a.get("process", {}).get("args") == ["sleep", "600"]], \
            "the container's own workload (started by its init) is not foreign"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        if agent.proc is not None:
            try:
                agent.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                agent.proc.kill()
        log.close()
        procs.wait_until(lambda: name not in subprocess.run(["docker", "ps", "-aq", "--filter", f"name={name}",
                                                             "--format", "{{.Names}}"], capture_output=True,
                                                            text=True).stdout, 30, 0.2, "agent container removed")
