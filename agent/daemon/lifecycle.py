"""The agent's own start and stop, as alerts: who stopped it, and whether the last run ended cleanly.

``<state_dir>/lifecycle.json`` (0600) records the last start and the last clean stop. At start
the agent says how the previous run ended (a clean stop and by whom, or no clean stop: killed,
crashed, the host lost power); at SIGTERM/SIGINT it says which process sent it (``si_pid`` from
the kernel, read before that process can exit). Both are findings built from
``detectors.agent_health`` and go through the alert pipeline's spool like any alert.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

import structlog

from agent.collectors import procread
from agent.detectors import agent_health
from agent.model import Finding, ResponseRecord, Severity

log = structlog.get_logger("minerwatch.lifecycle")

RECORD = "lifecycle.json"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def describe_sender(proc_root: str, pid: int, uid: int) -> str:
    """``PID 1234 (systemd, uid 0)``: read at once, while the sender may still exist."""
    if pid <= 0:
        return f"the kernel or an unknown sender (uid {uid})"
    try:
        comm = procread.read_once(f"{proc_root}/{pid}/comm", size=256).decode("utf-8", "backslashreplace").strip()
    except OSError:  # gone already, or in a pid namespace we cannot see
        comm = "exited"
    return f"PID {pid} ({comm}, uid {uid})"


class Lifecycle:
    def __init__(self, state_dir: str, proc_root: str = "/proc") -> None:
        self.path = Path(state_dir) / RECORD
        self.proc_root = proc_root

    def _read(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):  # first run, or a damaged record: nothing is known of the last run
            return {}

    def _write(self, data: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def started(self) -> Finding:
        """Record this start; a finding saying how the previous run ended."""
        last = self._read()
        if not last:
            previous, clean = "no earlier run is recorded", True
        elif last.get("stopped_at") and last.get("stopped_at", "") >= last.get("started_at", ""):
            previous, clean = f"the last run stopped cleanly at {last['stopped_at']} ({last.get('stopped_by', '?')})", True
        else:
            previous = (f"the last run, started {last.get('started_at', '?')}, never stopped cleanly "
                        "(killed, crashed or the host went down)")
            clean = False
        try:
            self._write({**last, "started_at": _now(), "pid": os.getpid()})
        except OSError as exc:
            log.warning("lifecycle_not_recorded", path=str(self.path), error=str(exc))
        return _finding(agent_health.started(previous, clean), "minerwatch agent started")

    def stopping(self, signal_name: str, pid: int, uid: int) -> Finding:
        """Record a clean stop requested by ``pid``; a finding naming the sender."""
        sender = describe_sender(self.proc_root, pid, uid)
        try:
            self._write({**self._read(), "stopped_at": _now(), "stopped_by": f"{signal_name} from {sender}"})
        except OSError as exc:
            log.warning("lifecycle_not_recorded", path=str(self.path), error=str(exc))
        return _finding(agent_health.stopping(signal_name, sender, by_init=pid == 1), "minerwatch agent stopping")


def _finding(evidence, rule_name: str) -> Finding:
    severity = max(Severity.LOW, evidence.floor)
    return Finding(uuid.uuid4().hex, severity, evidence.weight, rule_name, (evidence,),
                   response=ResponseRecord("none", "skipped", "about the agent itself"), category=("host",))
