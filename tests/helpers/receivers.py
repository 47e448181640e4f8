"""Real alert receivers on loopback for the sink tests.

    with WebhookReceiver(secret=b"s3cret") as hook:     # http://127.0.0.1:<ephemeral>/alerts
        ... POST alerts to hook.url ...
        hook.wait_for(lambda r: len(r.event_ids()) >= 50, timeout=30)
        hook.stop(); hook.start()                       # down and up again on the same port
    WebhookReceiver(tls=True)                           # HTTPS with a self-signed cert (hook.certfile)
    hook.fail_next(3, status=503)                       # answer the next 3 POSTs with 503

Every POST is recorded in ``hook.requests`` (``Received``: body, headers, status answered,
parsed alert, signature_ok, why it was refused); ``hook.accepted`` holds the ones answered
2xx. With a secret, the receiver checks as the README tells receivers to (``verify_webhook``):
``X-Minerwatch-Signature`` must be ``sha256=`` and the HMAC-SHA256 of the
``X-Minerwatch-Timestamp`` value, ``.`` and the body; the timestamp within ``max_age``
seconds of now; the signature not one already accepted (a replay). Otherwise: 401.
``WebhookReceiver(max_body=N)`` answers 413 to a larger body (a proxy's body limit).

    with SyslogReceiver("udp") as rx:                   # also "tcp" (RFC 6587 octet counting)
        ... send to rx.url ("udp://127.0.0.1:PORT") ...  # and "unix" (datagram socket in a temp dir)
        msgs = rx.wait_for_messages(2)                   # parsed SyslogMessage objects

A syslog line that is not valid RFC 5424 is kept in ``rx.errors`` with the reason, never
silently dropped. Only loopback addresses are used.
"""
from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import re
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tests.helpers.pool import make_self_signed_cert

# --------------------------------------------------------------------------- webhook

MAX_AGE = 300  # seconds a signed request stays acceptable


def verify_webhook(secret: bytes, headers, body: bytes, seen: dict[str, int], *, max_age: int = MAX_AGE,
                   now: float | None = None) -> str:
    """"" when the request is authentic and fresh, else why not. ``seen`` maps the signatures
    of requests already processed to their timestamps (pruned here; the caller adds one once
    it has processed the request); the same code as in the README."""
    timestamp = headers.get("X-Minerwatch-Timestamp", "")
    sent = headers.get("X-Minerwatch-Signature", "")
    if not timestamp.isdigit():
        return "no timestamp"
    expected = "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, sent):
        return "bad signature"
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > max_age:
        return "stale timestamp"
    for old in [s for s, ts in seen.items() if now - ts > max_age]:
        del seen[old]
    if sent in seen:
        return "replayed"
    return ""


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]
    status: int
    signature_ok: bool | None  # None: no secret configured
    alert: dict | None = None
    refused: str = ""  # why a signed request was refused ("bad signature", "stale timestamp", "replayed"...)


class _WebhookHandler(http.server.BaseHTTPRequestHandler):
    server: "_WebhookServer"

    def log_message(self, fmt: str, *args: object) -> None:  # keep test output clean
        return

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        rx = self.server.receiver
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if rx.delay:
            time.sleep(rx.delay)
        ok, refused = None, ""
        with rx._cond:  # an RLock: check, answer and remember as one step (no two requests pass as one)
            if rx.secret is not None:
                refused = verify_webhook(rx.secret, self.headers, body, rx._seen, max_age=rx.max_age)
                ok = not refused
            status = 413 if rx.max_body is not None and len(body) > rx.max_body else rx._next_status(ok)
            if ok and 200 <= status < 300:  # processed: from now on the same request is a replay
                rx._seen[self.headers["X-Minerwatch-Signature"]] = int(self.headers["X-Minerwatch-Timestamp"])
        try:
            alert = json.loads(body)
        except ValueError:
            alert = None
        rx._record(Received(body, dict(self.headers.items()), status, ok, alert, refused))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _WebhookServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    receiver: "WebhookReceiver"


class WebhookReceiver:
    def __init__(self, *, secret: bytes | None = None, port: int = 0, tls: bool = False,
                 path: str = "/alerts", delay: float = 0.0, max_body: int | None = None,
                 max_age: int = MAX_AGE) -> None:
        self.secret, self.port, self.tls, self.path, self.delay = secret, port, tls, path, delay
        self.max_body, self.max_age = max_body, max_age
        self._seen: dict[str, int] = {}  # signatures accepted (replay check)
        self.requests: list[Received] = []
        self.certfile: Path | None = None
        self._fail: list[int] = []
        self._cond = threading.Condition()
        self._server: _WebhookServer | None = None
        self._thread: threading.Thread | None = None
        self._tmpdir: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{self.path}"

    @property
    def accepted(self) -> list[Received]:
        with self._cond:
            return [r for r in self.requests if 200 <= r.status < 300]

    def event_ids(self) -> list[str]:
        """``event.id`` of every accepted alert, in arrival order (repeats included)."""
        return [r.alert["event"]["id"] for r in self.accepted if r.alert]

    def fail_next(self, n: int, status: int = 503) -> None:
        with self._cond:
            self._fail.extend([status] * n)

    def start(self) -> "WebhookReceiver":
        server = _WebhookServer(("127.0.0.1", self.port), _WebhookHandler)
        server.receiver = self
        if self.tls:
            import ssl

            if self.certfile is None:
                self._tmpdir = tempfile.TemporaryDirectory(prefix="mw-webhook-")
                self.certfile, keyfile = make_self_signed_cert(self._tmpdir.name, cn="localhost")
                self._keyfile = keyfile
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.certfile), str(self._keyfile))
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"WebhookReceiver:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (connections are refused) but keep the port number for start()."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None

    def close(self) -> None:
        self.stop()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> "WebhookReceiver":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_for(self, predicate: Callable[["WebhookReceiver"], bool], timeout: float) -> None:
        """Wait until ``predicate(self)`` holds; AssertionError with what arrived otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"webhook receiver: condition not met after {timeout}s; "
                                         f"{len(self.requests)} requests, {len(set(self.event_ids()))} distinct alerts")
                self._cond.wait(min(left, 0.2))

    def _next_status(self, signature_ok: bool | None) -> int:
        with self._cond:
            if signature_ok is False:
                return 401
            return self._fail.pop(0) if self._fail else 200

    def _record(self, received: Received) -> None:
        with self._cond:
            self.requests.append(received)
            self._cond.notify_all()


# ---------------------------------------------------------------------------- syslog

_RFC5424 = re.compile(
    rb"^<(?P<pri>\d{1,3})>(?P<version>[1-9]\d{0,2}) (?P<timestamp>\S+) (?P<hostname>\S+) "
    rb"(?P<app>\S+) (?P<procid>\S+) (?P<msgid>\S+) (?P<sd>-|(?:\[[^\]]*\])+)(?: (?P<msg>.*))?$",
    re.DOTALL,
)
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)$")
_LIMITS = {"hostname": 255, "app": 48, "procid": 128, "msgid": 32}


@dataclass
class SyslogMessage:
    pri: int
    facility: int
    severity: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    structured_data: str
    msg: bytes
    alert: dict | None = field(default=None)


def parse_rfc5424(raw: bytes) -> SyslogMessage:
    """Parse one RFC 5424 message strictly; ValueError says what is wrong."""
    m = _RFC5424.match(raw)
    if not m:
        raise ValueError(f"not RFC 5424: {raw[:80]!r}")
    pri = int(m["pri"])
    if pri > 191 or m["version"] != b"1":
        raise ValueError(f"bad PRI or VERSION in {raw[:20]!r}")
    fields = {k: m[k].decode("ascii") for k in ("timestamp", "hostname", "app", "procid", "msgid")}
    for key, limit in _LIMITS.items():
        value = fields[key]
        if len(value) > limit or any(not 33 <= ord(c) <= 126 for c in value):
            raise ValueError(f"bad {key} {value!r}")
    if fields["timestamp"] != "-" and not _TIMESTAMP.match(fields["timestamp"]):
        raise ValueError(f"bad timestamp {fields['timestamp']!r}")
    msg = m["msg"] or b""
    if msg.startswith(b"\xef\xbb\xbf"):
        msg = msg[3:]
    try:
        alert = json.loads(msg)
    except ValueError:
        alert = None
    return SyslogMessage(pri, pri // 8, pri % 8, fields["timestamp"], fields["hostname"], fields["app"],
                         fields["procid"], fields["msgid"], m["sd"].decode("utf-8", "replace"), msg, alert)


class SyslogReceiver:
    """A syslog server on loopback: "udp", "tcp" (octet counting) or "unix" (datagram)."""

    def __init__(self, transport: str = "udp", port: int = 0) -> None:
        if transport not in ("udp", "tcp", "unix"):
            raise ValueError(transport)
        self.transport, self.port = transport, port
        self.messages: list[SyslogMessage] = []
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self.path = ""

    @property
    def url(self) -> str:
        if self.transport == "unix":
            return f"unix://{self.path}"
        return f"{self.transport}://127.0.0.1:{self.port}"

    def start(self) -> "SyslogReceiver":
        self._stop.clear()
        if self.transport == "unix":
            self._tmpdir = tempfile.TemporaryDirectory(prefix="mw-syslog-")
            self.path = os.path.join(self._tmpdir.name, "log.sock")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(self.path)
        else:
            kind = socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM
            sock = socket.socket(socket.AF_INET, kind)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            self.port = sock.getsockname()[1]
            if kind == socket.SOCK_STREAM:
                sock.listen(16)
        sock.settimeout(0.1)
        self._sock = sock
        target = self._accept_loop if self.transport == "tcp" else self._datagram_loop
        self._spawn(target, sock)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self._threads.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> "SyslogReceiver":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for_messages(self, n: int, timeout: float = 10.0) -> list[SyslogMessage]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"syslog {self.transport}: {len(self.messages)} of {n} messages "
                                         f"after {timeout}s; errors: {self.errors[:3]}")
                self._cond.wait(min(left, 0.2))
            return list(self.messages)

    # -- internals -------------------------------------------------------------------

    def _spawn(self, target: Callable, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name=f"SyslogReceiver-{self.transport}")
        self._threads.append(t)
        t.start()

    def _take(self, raw: bytes) -> None:
        try:
            msg = parse_rfc5424(raw)
        except ValueError as exc:
            with self._cond:
                self.errors.append(str(exc))
            return
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def _datagram_loop(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                data = sock.recv(1 << 17)
            except TimeoutError:
                continue
            except OSError:
                return
            self._take(data)

    def _accept_loop(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(0.1)
            self._spawn(self._stream_loop, conn)

    def _stream_loop(self, conn: socket.socket) -> None:
        """RFC 6587 octet counting: ``LEN SP MSG``, repeated."""
        buf = b""
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while True:
                    head, sep, rest = buf.partition(b" ")
                    if not sep:
                        break
                    if not head.isdigit() or head.startswith(b"0"):
                        with self._cond:
                            self.errors.append(f"bad octet-counting frame {buf[:20]!r}")
                        return
                    size = int(head)
                    if len(rest) < size:
                        break
                    self._take(rest[:size])
                    buf = rest[size:]
