"""kill -9 of the real daemon with alerts pending for a webhook that is down; the restart delivers every one."""
from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import time

from tests.agentproc import AgentProcess
from tests.alerts_schema import validate
from tests.helpers.containers import TEST_WALLET
from tests.helpers.pool import FakePool
from tests.helpers.receivers import WebhookReceiver

MINERS = 6


def with_webhook(agent: AgentProcess, url: str) -> None:
    """Add ``webhook = URL`` to the [alerts] table AgentProcess wrote (a second [alerts] table is not TOML)."""
    text = agent.config_path.read_text()
    agent.config_path.write_text(text.replace("[alerts]\n", f'[alerts]\nwebhook = "{url}"\n', 1))


def kill9(agent: AgentProcess) -> None:
    os.killpg(agent.proc.pid, signal.SIGKILL)
    assert agent.proc.wait(10) == -signal.SIGKILL


def file_ids(agent: AgentProcess) -> list[str]:
    return [a["event"]["id"] for a in agent.alerts()]


def test_kill9_with_pending_alerts_then_restart_delivers_each_once(tmp_path, spawn, helper_bins, docker_client):
    """Webhook down, six miners alerted (the last just before kill -9): after the restart every alert reaches the webhook, none twice."""
    hook = WebhookReceiver().start()
    hook.stop()  # down: connections refused, the port kept for the restart
    agent = AgentProcess(tmp_path / "agent", interval=2.0)
    with_webhook(agent, hook.url)
    agent.start()
    try:
        with FakePool() as pool:
            pids = []
            for i in range(MINERS):
                binary = tmp_path / f"miner-{i}"
                shutil.copy2(helper_bins.fakeminer, binary)
                p = spawn([binary, "-o", pool.url, "-u", TEST_WALLET, "-t", "0", "--seconds", "120"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                pids.append(p.pid)
                agent.wait_alert(lambda a, pid=p.pid: a.get("process", {}).get("pid") == pid, 30, f"alert for miner {i}")
            kill9(agent)  # the last alert was spooled moments ago; the webhook never took any
            pending = file_ids(agent)
            assert len(set(pending)) >= MINERS and not hook.requests
            hook.start()
            restarted = time.monotonic()
            agent.start()
            ready_after = time.monotonic() - restarted
            hook.wait_for(lambda h: set(pending) <= set(h.event_ids()), timeout=60)
            delivered_after = time.monotonic() - restarted
            time.sleep(4)  # anything still in flight, or repeats, would arrive now
            assert agent.stop() == 0, agent.log()[-2000:]
    finally:
        hook.close()
        if agent.proc.poll() is None:
            agent.stop()
    spooled = file_ids(agent)  # every alert either run put in the spool (the file sink sees them all)
    arrived = collections.Counter(hook.event_ids())
    assert set(spooled) <= set(arrived), f"lost: {set(spooled) - set(arrived)}"
    repeats = {k: n for k, n in arrived.items() if n > 1}
    assert sum(n - 1 for n in repeats.values()) <= 1, f"duplicate storm: {repeats}"  # at most the one in flight
    for r in hook.accepted:
        validate(r.alert)
    file_repeats = sum(n - 1 for n in collections.Counter(spooled).values())
    assert file_repeats <= 1, "the file sink repeats at most the line in flight at the kill"
    print(f"\nKILL -9: {len(set(pending))} alerts pending at the kill (webhook down); all delivered "
          f"{delivered_after:.1f} s after the restart began (READY after {ready_after:.1f} s); "
          f"webhook repeats {sum(n - 1 for n in repeats.values())}, file repeats {file_repeats}; "
          f"{len(arrived)} distinct alerts in all")
