"""Webhook sink: HMAC signature over a timestamp and the body, replays refused, secrets kept out of logs
and alerts, the secret file root's alone, TLS verification, retries."""
from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import structlog.testing

from agent.errors import ConfigError
from agent.sinks.base import Record, SinkError, encode
from agent.sinks.configured import build_sinks
from agent.sinks.webhook import WebhookSink, signature
from tests.alerts_schema import validate
from tests.helpers.alert_factory import PipelineSet, make_alert, make_config
from tests.helpers.receivers import WebhookReceiver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
    """Every POST carries a current timestamp and a valid HMAC-SHA256 of it and the exact body; the secret
    (and URL token) are in no log, alert or state file."""
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
        timestamp = r.headers["X-Minerwatch-Timestamp"]
        assert timestamp.isdigit() and abs(int(timestamp) - time.time()) < 60
        assert r.headers["X-Minerwatch-Signature"] == signature(SECRET, timestamp, r.body)
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


def post(url: str, body: bytes, headers: dict) -> int:
    """POST as anyone could (an attacker replaying what they captured); the HTTP status."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def test_a_captured_request_replayed_or_re_dated_is_refused_by_the_receiver(tmp_path):
    """The receiver that checks as the README says accepts the agent's POST, and refuses the same request
    replayed verbatim, its body under a fresh timestamp, and a correctly signed but hour-old request."""
    alert = make_alert(1)
    with WebhookReceiver(secret=SECRET) as hook:
        cfg = make_config(tmp_path, webhook=hook.url, webhook_secret_file=str(secret_file(tmp_path)))
        (sink,) = build_sinks(cfg)
        sink.send(Record(encode(alert), alert))
        (first,) = hook.accepted
        captured = {k: v for k, v in first.headers.items()
                    if k.lower() in ("content-type", "x-minerwatch-timestamp", "x-minerwatch-signature")}
        verbatim = post(hook.url, first.body, captured)
        redated = post(hook.url, first.body, {**captured, "X-Minerwatch-Timestamp": str(int(time.time()) + 1)})
        old = str(int(time.time()) - 3600)
        stale = post(hook.url, first.body, {**captured, "X-Minerwatch-Timestamp": old,
                                            "X-Minerwatch-Signature": signature(SECRET, old, first.body)})
        unsigned = post(hook.url, first.body, {"Content-Type": "application/json"})
        time.sleep(1.1)  # a new second: the agent's next attempt has a new timestamp, so a new signature
        sink.send(Record(encode(alert), alert))  # the agent itself sending again (a retry) is accepted
    assert (verbatim, redated, stale, unsigned) == (401, 401, 401, 401)
    assert [r.refused for r in hook.requests] == ["", "replayed", "bad signature", "stale timestamp", "no timestamp", ""]
    assert len(hook.accepted) == 2 and validate(hook.accepted[1].alert) == alert


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o606, 0o640, 0o660, 0o620, 0o610])
def test_secret_file_open_to_group_or_others_is_refused_without_showing_it(tmp_path, mode):
    """A secret file with any group or other permission (also group-readable 0640) is a ConfigError naming
    the key and the file; the message never contains the secret."""
    path = secret_file(tmp_path, mode=mode)
    with pytest.raises(ConfigError) as err:
        build_sinks(make_config(tmp_path, webhook="https://127.0.0.1:1/x", webhook_secret_file=str(path)))
    assert err.value.key == "[alerts] webhook_secret_file" and "other users" in str(err.value)
    assert str(path) in str(err.value) and f"{mode:04o}" in str(err.value) and "chmod 600" in str(err.value)
    assert SECRET.decode() not in str(err.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_secret_file_owned_by_another_user_is_refused(tmp_path):
    """A 0600 secret file owned by another user (who could rewrite it) is refused, the owner named."""
    path = secret_file(tmp_path)
    os.chown(path, 65534, 65534)
    with pytest.raises(ConfigError) as err:
        build_sinks(make_config(tmp_path, webhook="https://127.0.0.1:1/x", webhook_secret_file=str(path)))
    assert err.value.key == "[alerts] webhook_secret_file"
    assert str(path) in str(err.value) and "uid 65534" in str(err.value) and "not root" in str(err.value)
    assert SECRET.decode() not in str(err.value)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_secret_file_of_root_alone_is_accepted(tmp_path, mode):
    """0600 and 0400, owned by the user running the agent (root here): accepted, and the POST is signed."""
    path = secret_file(tmp_path, mode=mode)
    alert = make_alert(3)
    with WebhookReceiver(secret=SECRET) as hook:
        (sink,) = build_sinks(make_config(tmp_path, webhook=hook.url, webhook_secret_file=str(path)))
        sink.send(Record(encode(alert), alert))
        assert [r.signature_ok for r in hook.requests] == [True]


def test_secret_file_that_is_a_fifo_is_refused_without_hanging(tmp_path):
    """A FIFO in place of the secret file is refused at once (it was opened blocking: the start-up hung)."""
    path = tmp_path / "webhook.secret"
    os.mkfifo(path, 0o600)
    code = ("import sys; from agent.sinks.webhook import load_secret, SecretFileError\n"
            "try:\n    load_secret(sys.argv[1])\nexcept SecretFileError as e:\n    print(e)")
    try:
        out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True,
                             timeout=20, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("load_secret blocked on a FIFO for 20 s")
    assert out.returncode == 0 and "not a regular file" in out.stdout, out.stderr


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
