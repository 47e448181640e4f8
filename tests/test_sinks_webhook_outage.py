"""Acceptance: alerts survive a webhook outage and agent crashes (kill -9), repeats only as counted retries."""
from __future__ import annotations

import collections
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.alerts_schema import validate
from tests.helpers.alert_factory import make_alert, write_config
from tests.helpers.receivers import WebhookReceiver

REPO = Path(__file__).resolve().parents[1]
SECRET = b"outage-test-secret-77aa"
OUTAGE_SECONDS = 30


def start_agent(spawn, cfg: Path, alerts: Path, start: int, end: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    return spawn([sys.executable, "-m", "tests.helpers.alert_agent", cfg, alerts, start, end],
                 cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=open(log, "ab"))


def read_line(proc: subprocess.Popen, prefix: str, timeout: float) -> str:
    """The first stdout line of ``proc`` starting with ``prefix`` (AssertionError on timeout/exit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline().decode()
            if not line:
                break
            if line.startswith(prefix):
                return line[len(prefix):].strip()
    raise AssertionError(f"agent pid {proc.pid} did not print {prefix!r} (exit code {proc.poll()})")


def stop_agent(proc: subprocess.Popen) -> dict:
    proc.send_signal(signal.SIGTERM)
    stats = json.loads(read_line(proc, "stats ", timeout=30))
    assert proc.wait(30) == 0
    return stats


def setup(tmp_path: Path, hook: WebhookReceiver, n: int) -> tuple[Path, Path, list[dict]]:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    os.chmod(secret, 0o600)
    cfg = write_config(tmp_path, webhook=hook.url, webhook_secret_file=str(secret))
    alerts = [make_alert(i) for i in range(n)]
    path = tmp_path / "alerts.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in alerts))
    return cfg, path, alerts


def check_arrivals(hook: WebhookReceiver, alerts: list[dict], retried: int) -> int:
    """Every alert arrived intact and signed; returns the number of repeats (checked against ``retried``)."""
    ids = hook.event_ids()
    assert set(ids) == {a["event"]["id"] for a in alerts}, "every alert arrives"
    by_id = {a["event"]["id"]: a for a in alerts}
    for r in hook.accepted:
        assert r.signature_ok and validate(r.alert) == by_id[r.alert["event"]["id"]]
    repeats = len(ids) - len(alerts)
    counts = collections.Counter(ids)
    assert repeats <= retried, f"{repeats} repeats but only {retried} counted retries: {counts.most_common(3)}"
    return repeats


def test_webhook_down_30s_and_agent_killed_meanwhile_every_alert_arrives(tmp_path, spawn):
    """Receiver down 30 s while 50 findings occur and the agent is killed -9 and restarted: all 50 arrive once it is back."""
    hook = WebhookReceiver(secret=SECRET).start()
    hook.stop()
    down_at = time.monotonic()
    log = tmp_path / "agent.log"
    try:
        cfg, alerts_file, alerts = setup(tmp_path, hook, 50)
        first = start_agent(spawn, cfg, alerts_file, 0, 25, log)
        assert read_line(first, "submitted ", timeout=60) == "25"
        time.sleep(3)  # retrying against the refused port
        first.kill()
        assert first.wait(10) == -signal.SIGKILL
        second = start_agent(spawn, cfg, alerts_file, 25, 50, log)
        assert read_line(second, "submitted ", timeout=60) == "25"
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
        outage = time.monotonic() - down_at
        assert not hook.requests
        hook.start()
        recovered_at = time.monotonic()
        hook.wait_for(lambda h: len(set(h.event_ids())) >= 50, timeout=60)
        recovery = time.monotonic() - recovered_at
        stats = stop_agent(second)
    finally:
        hook.close()
    webhook = stats["sinks"]["webhook"]
    repeats = check_arrivals(hook, alerts, webhook["retried"])
    assert webhook["delivered"] == len(hook.accepted) and webhook["failed"] > 0 and stats["dropped"] == 0
    logs = log.read_bytes()
    assert b"alert_delivery_failed" in logs and SECRET not in logs
    print(f"outage {outage:.1f}s, all 50 delivered {recovery:.2f}s after recovery, {repeats} repeats, stats {webhook}")


def test_agent_killed_mid_delivery_repeats_only_as_counted_retries(tmp_path, spawn):
    """kill -9 while alerts are being POSTed: the restarted agent delivers the rest; any repeat is a counted retry."""
    hook = WebhookReceiver(secret=SECRET, delay=0.05).start()
    log = tmp_path / "agent.log"
    try:
        cfg, alerts_file, alerts = setup(tmp_path, hook, 50)
        first = start_agent(spawn, cfg, alerts_file, 0, 50, log)
        assert read_line(first, "submitted ", timeout=60) == "50"
        hook.wait_for(lambda h: len(h.requests) >= 10, timeout=30)
        first.kill()
        first.wait(10)
        before_restart = len(hook.event_ids())
        assert before_restart < 50, "the kill must land mid-delivery"
        second = start_agent(spawn, cfg, alerts_file, 0, 0, log)
        assert read_line(second, "submitted ", timeout=60) == "0"
        hook.wait_for(lambda h: len(set(h.event_ids())) >= 50, timeout=60)
        stats = stop_agent(second)
    finally:
        hook.close()
    webhook = stats["sinks"]["webhook"]
    repeats = check_arrivals(hook, alerts, webhook["retried"])
    print(f"killed after {before_restart} deliveries; restarted agent delivered {webhook['delivered']}, "
          f"{repeats} repeats, {webhook['retried']} counted retries")
