"""Incidents that grow: a miner dropped and then run is told to the SOC twice, under one incident id."""

from __future__ import annotations

import shutil
import subprocess

from tests.agentproc import AgentProcess
from tests.helpers.containers import TEST_WALLET
from tests.helpers.pool import FakePool


def test_a_host_miner_dropped_then_run_is_alerted_as_the_file_then_as_the_process(tmp_path, helper_bins, spawn):
    """A miner copied into a watched path is alerted as a file; when it runs, the same incident is alerted
    again with its PID, parent, command line and pool peer, and still names the file (before, dedupe
    swallowed the process alert: same incident, same severity)."""
    agent = AgentProcess(tmp_path / "agent", interval=2.0).start()
    try:
        dropped = agent.watched / "kswapd-helper"
        shutil.copy2(helper_bins.fakeminer, dropped)
        as_file = agent.wait_alert(lambda a: a.get("file", {}).get("path") == str(dropped), 30, "the file alert")
        incident = as_file["minerwatch"]["finding_id"]
        assert "process" not in as_file
        with FakePool() as pool:
            miner = spawn([dropped, "-o", pool.url, "-u", TEST_WALLET, "-t", "0", "--seconds", "60"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            pool.wait_for_login(timeout=15)
            running = agent.wait_alert(
                lambda a: a["minerwatch"]["finding_id"] == incident and a.get("process", {}).get("pid") == miner.pid,
                30, "the same incident, now a running process")
            assert running["process"]["parent"]["pid"] > 0 and "-o" in running["process"]["command_line"]
            assert running["file"]["path"] == str(dropped), "the alert carries what the incident knew: the file"
            peer = agent.wait_alert(
                lambda a: a["minerwatch"]["finding_id"] == incident and a.get("destination", {}).get("port") == pool.port,
                30, "the same incident with its pool peer")
            assert peer["process"]["pid"] == miner.pid
        alerts = [a for a in agent.alerts() if a["minerwatch"]["finding_id"] == incident]
        assert len(alerts) <= 4, "an incident grows by news, not by repeats"
    finally:
        assert agent.stop() == 0
