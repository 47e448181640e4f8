"""Stopping the agent is never quiet: SIGTERM is alerted with its sender, and the next start says how the last run ended."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.agentproc import AgentProcess
from tests.helpers import procs


def agent_in(workdir) -> AgentProcess:
    sock = workdir / "notify.sock"
    if sock.exists():  # the previous run's socket: this run binds its own
        sock.unlink()
    return AgentProcess(workdir, interval=2.0)


def lifecycle_alerts(agent: AgentProcess, rule: str) -> list[dict]:
    return [a for a in agent.alerts() if a["rule"]["name"] == rule]


def test_sigterm_is_alerted_with_its_sender_and_the_next_start_says_it_was_clean(tmp_path):
    """A SIGTERM from some process: an agent-stopping alert naming that PID (high: not the service manager)
    is delivered before the agent exits; the next start reports the last clean stop and who asked for it."""
    work = tmp_path / "agent"
    agent = agent_in(work).start()
    started = procs.wait_until(lambda: lifecycle_alerts(agent, "minerwatch agent started"), 30, 0.1, "start alert")
    assert "no earlier run is recorded" in started[0]["minerwatch"]["evidence"][0]["detail"]
    killer = subprocess.Popen([sys.executable, "-c", f"import os, signal, time; os.kill({agent.proc.pid}, "
                               "signal.SIGTERM); time.sleep(5)"])
    try:
        assert agent.proc.wait(30) == 0
    finally:
        killer.kill()
        killer.wait()
    (stop,) = lifecycle_alerts(agent, "minerwatch agent stopping")
    detail = stop["minerwatch"]["evidence"][0]["detail"]
    assert f"SIGTERM from PID {killer.pid} (python" in detail and "not the service manager" in detail
    assert stop["event"]["severity"] >= 73

    again = agent_in(work).start()
    try:
        starts = procs.wait_until(lambda: lifecycle_alerts(again, "minerwatch agent started")[1:], 30, 0.1,
                                  "second start alert")
        detail = starts[0]["minerwatch"]["evidence"][0]["detail"]
        assert "stopped cleanly" in detail and f"PID {killer.pid}" in detail
        assert starts[0]["event"]["severity"] < 47
    finally:
        assert again.stop() == 0


def test_a_killed_agent_is_reported_at_its_next_start(tmp_path):
    """kill -9 leaves no clean stop behind: the next start is a medium alert saying the last run never stopped cleanly."""
    work = tmp_path / "agent"
    first = agent_in(work).start()
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(30)
    time.sleep(0.1)
    again = agent_in(work).start()
    try:
        starts = procs.wait_until(lambda: lifecycle_alerts(again, "minerwatch agent started")[1:], 30, 0.1,
                                  "second start alert")
        evidence = starts[0]["minerwatch"]["evidence"][0]
        assert "never stopped cleanly" in evidence["detail"] and starts[0]["event"]["severity"] >= 47
    finally:
        assert again.stop() == 0
