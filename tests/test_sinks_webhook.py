"""Webhook sink: HMAC signature, secrets kept out of logs and alerts, TLS verification, retries."""
from __future__ import annotations

import json
import os
import ssl

import pytest
import structlog.testing

from agent.errors import ConfigError
from agent.sinks.base import Record, SinkError, encode
from agent.sinks.configured import build_sinks
from agent.sinks.webhook import WebhookSink, signature
from tests.alerts_schema import validate
from tests.helpers.alert_factory import PipelineSet, make_alert, make_config
from tests.helpers.receivers import WebhookReceiver

SECRET = b"hunter2-do-not-log-me-5f1c"
URL_TOKEN = "tok-9c2e7d-secret-path"


def secret_file(tmp_path, mode: int = 0o600, content: bytes = SECRET + b"\n"):
    path = tmp_path / "webhook.secret"
    path.write_bytes(content)
    os.chmod(path, mode)
    return path


def everything_in(directory) -> bytes:
    return b"".join(p.read_bytes() for p in directory.rglob("*") if p.is_file())


def test_receiver_verifies_hmac_and_the_secret_never_appears_in_logs_alerts_or_state(tmp_path):
    """Every POST carries a valid HMAC-SHA256 of the exact body; the secret (and URL token) are in no log, alert or state file."""
    alerts = [make_alert(i) for i in range(5)]
    with WebhookReceiver(secret=SECRET, path=f"/hook/{URL_TOKEN}?token={URL_TOKEN}") as hook:
        cfg = make_config(tmp_path, webhook=hook.url, webhook_secret_file=str(secret_file(tmp_path)))
        hook.fail_next(2, status=502)  # log some failures too: they must not leak the secret either
        with structlog.testing.capture_logs() as logs, PipelineSet() as pipes:
            p = pipes.make(cfg)
            for a in alerts:
                p.submit(a)
            assert p.flush(20)
            stats = p.stats()
            shown = repr(p.sinks) + " ".join(sink.describe() for sink in p.sinks)
    assert [r.signature_ok for r in hook.requests] == [True] * len(hook.requests)
    assert len(hook.accepted) == 5 and stats["sinks"]["webhook"]["failed"] == 2
    for r in hook.accepted:
        assert r.headers["X-Minerwatch-Signature"] == signature(SECRET, r.body)
        assert r.headers["Content-Type"] == "application/json"
        assert r.headers["X-Minerwatch-Event-Id"] == r.alert["event"]["id"]
        assert validate(json.loads(r.body)) in alerts
        assert SECRET not in r.body
    text = repr(logs) + repr(stats) + shown
    assert logs and SECRET.decode() not in text and URL_TOKEN not in text
    assert SECRET not in everything_in(tmp_path / "state")


def test_wrong_secret_is_rejected_by_the_receiver_and_retried(tmp_path):
    """A receiver with another secret answers 401; the alert stays spooled and is retried, not lost."""
    with WebhookReceiver(secret=b"another-secret") as hook:
        cfg = make_config(tmp_path, webhook=hook.url, webhook_secret_file=str(secret_file(tmp_path)))
        with PipelineSet() as pipes:
            p = pipes.make(cfg)
            p.submit(make_alert(1))
            hook.wait_for(lambda h: len(h.requests) >= 2, timeout=10)
            assert not p.flush(0.2)
            assert p.stats()["sinks"]["webhook"]["delivered"] == 0
    assert all(r.status == 401 and r.signature_ok is False for r in hook.requests)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o606])
def test_secret_file_readable_by_others_is_refused_without_showing_it(tmp_path, mode):
    """A world-readable secret file is a ConfigError naming the key; the message never contains the secret."""
    path = secret_file(tmp_path, mode=mode)
    with pytest.raises(ConfigError) as err:
        build_sinks(make_config(tmp_path, webhook="https://127.0.0.1:1/x", webhook_secret_file=str(path)))
    assert err.value.key == "[alerts] webhook_secret_file" and "other users" in str(err.value)
    assert SECRET.decode() not in str(err.value)


def test_missing_or_empty_secret_file_is_a_config_error(tmp_path):
    """A secret file that is missing or empty is refused with the key named."""
    for path in (tmp_path / "absent", secret_file(tmp_path, content=b"\n")):
        with pytest.raises(ConfigError) as err:
            build_sinks(make_config(tmp_path, webhook="https://127.0.0.1:1/x", webhook_secret_file=str(path)))
        assert err.value.key == "[alerts] webhook_secret_file"


def test_tls_is_verified_by_default(tmp_path):
    """A self-signed HTTPS receiver is refused by default and accepted once its certificate is trusted."""
    alert = make_alert(1)
    with WebhookReceiver(tls=True) as hook:
        with pytest.raises(SinkError) as err:
            WebhookSink(hook.url, timeout=5).send(Record(encode(alert), alert))
        assert "certificate" in str(err.value).lower()
        assert not hook.requests
        trusting = ssl.create_default_context(cafile=str(hook.certfile))
        WebhookSink(hook.url, timeout=5, ssl_context=trusting).send(Record(encode(alert), alert))
        hook.wait_for(lambda h: len(h.accepted) == 1, timeout=5)


def test_non_2xx_answers_are_retried_and_counted(tmp_path):
    """503s are failures: the alert arrives once the receiver says 200, and the extra attempts are counted."""
    with WebhookReceiver() as hook:
        hook.fail_next(3, status=503)
        with PipelineSet() as pipes:
            p = pipes.make(make_config(tmp_path, webhook=hook.url))
            p.submit(make_alert(1))
            assert p.flush(20)
            stats = p.stats()["sinks"]["webhook"]
    assert [r.status for r in hook.requests] == [503, 503, 503, 200]
    assert stats == {**stats, "delivered": 1, "failed": 3, "retried": 3}


def test_redirects_are_failures_not_followed():
    """A 307/302 is not followed (a POST turned into a GET would look delivered): it is a failure."""
    import http.server
    import threading

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        alert = make_alert(1)
        with pytest.raises(SinkError, match="HTTP 302"):
            WebhookSink(f"http://127.0.0.1:{server.server_address[1]}/in", timeout=5).send(Record(encode(alert), alert))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_payload_too_large_is_given_up_and_counted(tmp_path):
    """413 can never succeed: the alert is given up, counted, logged, and delivery moves on."""
    with WebhookReceiver() as hook:
        hook.fail_next(1, status=413)
        with structlog.testing.capture_logs() as logs, PipelineSet() as pipes:
            p = pipes.make(make_config(tmp_path, webhook=hook.url))
            p.submit(make_alert(1))
            p.submit(make_alert(2))
            assert p.flush(20)
            stats = p.stats()["sinks"]["webhook"]
    assert stats["given_up"] == 1 and stats["delivered"] == 1
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["alert_given_up"]
