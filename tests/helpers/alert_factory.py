"""Schema-valid alerts, configs and pipelines for the alert-sink tests.

    alert = make_alert(7, severity=Severity.HIGH)      # agent.alert.build + schema check
    cfg = make_config(tmp_path, webhook=hook.url)      # stdout and file off unless given
    with PipelineSet() as pipes:                       # stops every pipeline, checks threads
        p = pipes.make(cfg, backoff_max=0.2)
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from agent import alert as alert_builder
from agent.config import Config, from_dict
from agent.model import ContainerInfo, Evidence, Finding, ProcessSnapshot, ResponseRecord, Severity
from agent.sinks.pipeline import AlertPipeline
from tests.alerts_schema import validate

HOST = "mw-test-host"
FAST = {"backoff_base": 0.02, "backoff_max": 0.3, "send_timeout": 3.0, "idle_wait": 0.2}


def make_finding(n: int = 0, *, severity: Severity = Severity.HIGH, action: str = "none",
                 result: str = "skipped", reason: str = "") -> Finding:
    """A finding about a fake xmrig in container n; the same n gives the same finding_id."""
    cid = f"{n:064x}"
    return Finding(
        finding_id=f"{n + 1:032x}",
        severity=severity,
        score=min(100, int(severity)),
        rule_name="Miner command line",
        evidence=(Evidence("cmdline", "stratum+tcp:// pool URL in the command line", 40),
                  Evidence("network", "connected to pool.example:3333", 30)),
        process=ProcessSnapshot(pid=1000 + n, ppid=1, name="xmrig", exe="/tmp/xmrig",
                                cmdline=("/tmp/xmrig", "-o", "stratum+tcp://pool.example:3333"),
                                uid=0, user="root", container_id=cid),
        container=ContainerInfo(id=cid, name=f"miner-{n}", image="thanhtudo/openjdk:latest"),
        response=ResponseRecord(action, result, reason),
    )


def make_alert(n: int = 0, **kw) -> dict:
    """A schema-valid alert for make_finding(n, **kw)."""
    test = kw.pop("test", False)
    return validate(alert_builder.build(make_finding(n, **kw), host_name=HOST, test=test))


def make_config(tmp_path: Path, **alerts) -> Config:
    alerts = {"stdout": False, "file": "", **alerts}
    return from_dict({"agent": {"state_dir": str(tmp_path / "state")}, "alerts": alerts}, source=str(tmp_path / "config.toml"))


def write_config(tmp_path: Path, **alerts) -> Path:
    """The same as make_config, written as TOML; returns its path."""
    alerts = {"stdout": False, "file": "", **alerts}
    lines = ["[agent]", f"state_dir = {json.dumps(str(tmp_path / 'state'))}", "[alerts]"]
    for key, value in alerts.items():
        text = str(value).lower() if isinstance(value, bool) else json.dumps(value)  # JSON strings/numbers are TOML
        lines.append(f"{key} = {text}")
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def alert_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("minerwatch-alerts-")]


class PipelineSet:
    """Makes started pipelines and stops them all at the end; fails if delivery threads leak."""

    def __init__(self) -> None:
        self.pipelines: list[AlertPipeline] = []

    def make(self, config: Config, *, start: bool = True, **kw) -> AlertPipeline:
        p = AlertPipeline(config, **{**FAST, **kw})
        self.pipelines.append(p)
        if start:
            p.start()
        return p

    def close(self) -> None:
        for p in self.pipelines:
            p.stop(timeout=2)
        deadline = time.monotonic() + 10
        while alert_threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        leaked = alert_threads()
        assert not leaked, f"delivery threads leaked: {leaked}"

    def __enter__(self) -> "PipelineSet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
