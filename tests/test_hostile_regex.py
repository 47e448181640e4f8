"""Blinding by regex (issue 12): a command line or an image Env that repeats the first word of a
signature pattern must not stall the agent.

The bundle's ``msr_modprobe`` pattern was ``\\bmodprobe\\s+msr\\b.*\\ballow_writes=on\\b``: with
Python's backtracking ``re``, each repetition of "modprobe msr" restarts a scan to the end of
the text, so 64 KB of it cost more than a second per search, holding the GIL, and a 96 KiB image
Env several seconds; the start-up scan ran them all before READY=1. Now every signature regex
is RE2 (linear time), the pattern is bounded, and what a matcher is given is capped.

Real daemon, real processes, a real container built from a real image, a real miner afterwards.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.agentproc import AgentProcess
from tests.helpers.containers import TEST_WALLET
from tests.helpers.pool import FakePool
from tests.helpers.procs import wait_until

# The first word of the pattern, repeated without the second. The comma ends the word for the
# regex (\b) but not for the worker's own "is this a modprobe msr child?" check, which would
# otherwise go and blame the test runner as the parent of a modprobe.
WORD = "modprobe msr,"
ARGV_BYTES = 64_000
ARG_BYTES = 4000
ENV_BYTES = 96 * 1024
PADDED_PROCESSES = 8  # one costs the old agent over a second here; eight make the stall unmistakable
WATCHDOG_USEC = 2_000_000
READY_WITHIN_S = 8.0  # the agent alone is ready in about a second on this host


def padding(size: int) -> str:
    return (WORD * (size // len(WORD) + 1))[:size]


class NotifyRecorder:
    """Drains the agent's NOTIFY_SOCKET in a thread, noting when each WATCHDOG=1 came."""

    def __init__(self, agent: AgentProcess) -> None:
        self.agent = agent
        self.pings: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "NotifyRecorder":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.agent.notify.recv(65536).decode()
            except socket.timeout:
                continue
            self.agent.messages.append(message)
            if "WATCHDOG=1" in message:
                self.pings.append(time.monotonic())


@pytest.fixture
def padded_env_container(docker_image, docker_run):
    """A running container of an image whose Env holds ~96 KiB of the pattern's first word.

    In two variables: a Dockerfile line (an ENV change of ``docker import``) is at most 64 KiB.
    """
    half = padding(ENV_BYTES // 2)
    image = docker_image("minerwatch-test/padded-env:1", {}, env={"PAD1": f'"{half}"', "PAD2": f'"{half}"'})
    container = docker_run(image, ["sleep", "300"], name_prefix="mwtest-regex-env")
    padded = [e for e in container.attrs["Config"]["Env"] if e.startswith(("PAD1=modprobe msr,", "PAD2=modprobe msr,"))]
    assert sum(map(len, padded)) >= ENV_BYTES, [e[:40] for e in container.attrs["Config"]["Env"]]
    return container


@pytest.fixture
def padded_processes(spawn):
    """Host processes whose argv is ~64 KB of the pattern's first word, in arguments of 4000
    characters (so that no per-argument cut of the collector shortens it)."""
    args = [padding(ARG_BYTES)] * (ARGV_BYTES // ARG_BYTES)
    procs = [spawn(["sh", "-c", "sleep 300; :", "padded", *args]) for _ in range(PADDED_PROCESSES)]
    for proc in procs:
        wait_until(lambda p=proc: len(Path(f"/proc/{p.pid}/cmdline").read_bytes()) > ARGV_BYTES, 10,
                   message="the padded argv is in /proc")
    return procs


def test_padded_argv_and_image_env_do_not_stall_ready_or_the_watchdog(
        tmp_path, monkeypatch, docker_client, padded_env_container, padded_processes, spawn, helper_bins):
    """With 8 processes of 64 KB padded argv and a container whose image Env is 96 KiB of padding,
    the agent sends READY=1 promptly, pings WATCHDOG=1 within WATCHDOG_USEC throughout its
    rechecks of them, and still alerts on a miner started afterwards."""
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    agent = AgentProcess(tmp_path / "agent", interval=2.0)
    started = time.monotonic()
    agent.start(ready_timeout=120)
    ready_at = time.monotonic()
    try:
        assert ready_at - started < READY_WITHIN_S, f"READY=1 after {ready_at - started:.1f} s"
        with NotifyRecorder(agent) as notify:
            # Young processes are rechecked in the next passes (interval 2 s): 10 s covers them.
            time.sleep(10)
            assert agent.proc.poll() is None and all(p.poll() is None for p in padded_processes)
            # A copy of its own (a host incident is one per executable path and hash).
            binary = tmp_path / "xmr-worker"
            shutil.copy2(helper_bins.fakeminer, binary)
            with FakePool() as pool:
                miner = spawn([binary, "-o", pool.url, "-u", TEST_WALLET, "-t", "0", "--seconds", "30"])
                alert = agent.wait_alert(lambda a: a.get("process", {}).get("pid") == miner.pid, 20.0,
                                         "alert for the miner started after the padded ones")
            ended = time.monotonic()
        details = " ".join(e["detail"] for e in alert["minerwatch"]["evidence"])
        # The command line's own evidence is still found behind the padding (the details name what
        # was seen in plain words: the stratum URL and the Monero wallet).
        assert "stratum URL" in details and "Monero wallet address" in details, details
        stamps = [ready_at, *notify.pings, ended]
        gaps = [round(b - a, 2) for a, b in zip(stamps, stamps[1:])]
        assert len(notify.pings) >= 8, gaps
        assert max(gaps) < WATCHDOG_USEC / 1e6, f"watchdog gaps {gaps}"
    finally:
        assert agent.stop() == 0, agent.log()[-3000:]
