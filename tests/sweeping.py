"""Run the real ``minerwatch sweep`` CLI in a subprocess and parse what it prints."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.alerts_schema import validate

REPO = Path(__file__).resolve().parents[1]


@dataclass
class SweepRun:
    code: int
    alerts: list[dict]
    stdout: str
    stderr: str

    def for_pid(self, pid: int) -> dict | None:
        return next((a for a in self.alerts if a.get("process", {}).get("pid") == pid), None)


def write_config(tmp_path: Path, *, agent: str = "", extra: str = "", watch: Path | None = None) -> Path:
    """A config whose watched path is an empty temp dir (so test binaries elsewhere in /tmp stay out).

    ``agent`` adds lines to the [agent] table; ``extra`` appends further tables.
    """
    watch = watch or (tmp_path / "watched")
    watch.mkdir(exist_ok=True)
    path = tmp_path / "config.toml"
    path.write_text(f'[agent]\nstate_dir = "{tmp_path}/state"\n{agent}\n[watch]\npaths = ["{watch}"]\n{extra}')
    return path


def sweep(*args: str, timeout: float = 120) -> SweepRun:
    """``python -m agent sweep ARGS``; with --json, every alert is schema-validated."""
    proc = subprocess.run([sys.executable, "-m", "agent", "sweep", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    alerts: list[dict] = []
    if "--json" in args and proc.returncode in (0, 1):
        alerts = json.loads(proc.stdout)
        for a in alerts:
            validate(a)
    return SweepRun(proc.returncode, alerts, proc.stdout, proc.stderr)
