"""`minerwatch alerts test`: a marked synthetic alert to every configured sink; exit 0 delivered, 1 failed, 2 bad config."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.alerts_schema import validate
from tests.helpers.alert_factory import write_config
from tests.helpers.receivers import SyslogReceiver, WebhookReceiver

REPO = Path(__file__).resolve().parents[1]
SECRET = b"cli-test-secret-0b7e"
# The lead registers the group in agent/cli/main.py; until then (and harmlessly after) add it here.
RUN = ("import sys; from agent.cli import main as m; from agent.cli.alerts_cmd import alerts; "
       "m.cli.add_command(alerts); m.main(sys.argv[1:])")


def minerwatch(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-c", RUN, *args], cwd=REPO, env=env, capture_output=True,
                          timeout=timeout, text=True)


def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    os.chmod(path, 0o600)
    return path


def test_alerts_test_reaches_every_sink_and_exits_0(tmp_path):
    """With stdout, file, syslog (TCP) and a signed webhook all up, each gets the same marked test alert; exit 0."""
    alerts_file = tmp_path / "log" / "alerts.jsonl"
    with WebhookReceiver(secret=SECRET) as hook, SyslogReceiver("tcp") as rx:
        cfg = write_config(tmp_path, stdout=True, file=str(alerts_file), syslog=rx.url, webhook=hook.url,
                           webhook_secret_file=str(secret_file(tmp_path)))
        result = minerwatch("alerts", "test", "--config", str(cfg))
        assert result.returncode == 0, result.stderr
        (msg,) = rx.wait_for_messages(1)
        hook.wait_for(lambda h: len(h.accepted) == 1, timeout=5)
    from_stdout = validate(json.loads(result.stdout))
    from_file = validate(json.loads(alerts_file.read_text()))
    received = [from_stdout, from_file, validate(msg.alert), validate(hook.accepted[0].alert)]
    assert all(a == from_stdout for a in received)
    assert from_stdout["minerwatch"]["test"] is True and from_stdout["tags"] == ["minerwatch-test"]
    assert from_stdout["message"].startswith("TEST ALERT") and msg.msgid == "test"
    assert hook.accepted[0].signature_ok
    assert result.stderr.count("ok  ") == 4 and "4 of 4 sinks" in result.stderr
    assert SECRET.decode() not in result.stderr + result.stdout


def test_alerts_test_with_the_webhook_down_exits_1_quickly(tmp_path):
    """A refused webhook makes the command say which sink failed and exit 1, within seconds."""
    hook = WebhookReceiver().start()
    hook.stop()
    alerts_file = tmp_path / "alerts.jsonl"
    cfg = write_config(tmp_path, file=str(alerts_file), webhook=hook.url)
    start = time.monotonic()
    result = minerwatch("alerts", "test", "--config", str(cfg), "--timeout", "2")
    took = time.monotonic() - start
    assert result.returncode == 1, result.stderr
    assert "FAILED  webhook http://127.0.0.1:" in result.stderr and "1 of 2 sinks" in result.stderr
    assert validate(json.loads(alerts_file.read_text()))["minerwatch"]["test"] is True
    assert took < 20
    print(f"alerts test against a down webhook: exit 1 after {took:.2f}s")


def test_alerts_test_with_no_sink_configured_exits_1(tmp_path):
    """Nothing configured means nothing delivered: exit 1 with a message naming the config."""
    cfg = write_config(tmp_path)
    result = minerwatch("alerts", "test", "--config", str(cfg))
    assert result.returncode == 1 and "no alert sink configured" in result.stderr


def test_alerts_test_refuses_a_world_readable_secret_with_exit_2(tmp_path):
    """A secret file readable by others is a config error: exit 2, key named, secret not shown."""
    path = secret_file(tmp_path)
    os.chmod(path, 0o644)
    cfg = write_config(tmp_path, webhook="http://127.0.0.1:9/x", webhook_secret_file=str(path))
    result = minerwatch("alerts", "test", "--config", str(cfg))
    assert result.returncode == 2
    assert "[alerts] webhook_secret_file" in result.stderr and SECRET.decode() not in result.stderr
