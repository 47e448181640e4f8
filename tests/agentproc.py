"""Run the real ``minerwatch run`` daemon in a subprocess, with a real NOTIFY_SOCKET, and read its alerts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.alerts_schema import validate
from tests.sweeping import REPO


class AgentProcess:
    """A daemon under test: its config, alert file, notify socket and logs, all in one temp dir."""

    def __init__(self, workdir: Path, *, interval: float = 2.0, extra: str = "", agent: str = "",
                 docker_url: str = "unix:///var/run/docker.sock", watch: list[str] | None = None,
                 metrics: str = "", response_mode: str = "observe", source: Path | None = None) -> None:
        """``response_mode`` is "observe" unless a test asks for "enforce": a daemon under test must
        not pause containers that other tests on the same engine started.

        ``source``: the source tree whose ``agent`` runs (its cwd, first on ``PYTHONPATH``), for
        example another revision's worktree from bench/baseline.py; default this checkout."""
        self.workdir = workdir
        self.source = source
        workdir.mkdir(parents=True, exist_ok=True)
        self.alerts_path = workdir / "alerts.jsonl"
        self.log_path = workdir / "agent.log"
        self.watched = workdir / "watched"
        self.watched.mkdir(exist_ok=True)
        paths = watch if watch is not None else [str(self.watched)]
        self.config_path = workdir / "config.toml"
        self.config_path.write_text(
            f'[agent]\ninterval = {interval}\nstate_dir = "{workdir}/state"\n{agent}\n'
            f'[docker]\nurl = "{docker_url}"\n'
            f"[watch]\npaths = {json.dumps(paths)}\n"
            f'[alerts]\nstdout = false\nfile = "{self.alerts_path}"\n'
            f'[metrics]\nlisten = "{metrics}"\n'
            f'[response]\nmode = "{response_mode}"\n{extra}'
        )
        self.notify_path = workdir / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.2)
        self.messages: list[str] = []
        self.proc: subprocess.Popen | None = None
        self._seen = 0

    def start(self, ready_timeout: float = 60.0) -> "AgentProcess":
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), "PYTHONUNBUFFERED": "1"}
        if self.source is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(self.source), *filter(None, [env.get("PYTHONPATH")])])
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(self.config_path)],
                                     cwd=self.source or REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.wait_notify("READY=1", ready_timeout)
        return self

    # -------------------------------------------------------------- notify socket

    def read_notify(self, timeout: float = 0.2) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.notify.recv(65536).decode()
            except socket.timeout:
                continue
            self.messages.append(data)
        return self.messages

    def wait_notify(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        start = len(self.messages)
        while time.monotonic() < deadline:
            for msg in self.messages[start:]:
                if needle in msg:
                    return msg
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            self.read_notify(0.2)
        raise AssertionError(f"no {needle!r} from the agent in {timeout} s; got {self.messages}\n{self.log()}")

    # -------------------------------------------------------------- alerts and logs

    def alerts(self) -> list[dict]:
        if not self.alerts_path.exists():
            return []
        out = []
        for line in self.alerts_path.read_text().splitlines():
            if line.strip():
                out.append(validate(json.loads(line)))
        return out

    def wait_alert(self, predicate, timeout: float, what: str = "alert") -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for a in self.alerts():
                if predicate(a):
                    return a
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.1)
        raise AssertionError(f"no {what} within {timeout} s; alerts: {json.dumps(self.alerts())[:3000]}\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict]:
        events = []
        for line in self.log().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    # -------------------------------------------------------------- stop

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        self.read_notify(0.3)  # STOPPING=1 and anything else sent while it shut down
        self.notify.close()
        return self.proc.returncode
