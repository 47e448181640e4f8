"""Alerts as RFC 5424 syslog messages over UDP, TCP (RFC 6587 octet counting) or a unix socket.

    <PRI>1 TIMESTAMP HOSTNAME minerwatch PROCID MSGID - {"@timestamp":...alert JSON...}

PRI = facility * 8 + severity; the facility is ``auth`` (4) unless the URL says otherwise
(``udp://127.0.0.1:514?facility=local0``); the severity comes from the alert: critical -> 2
(crit), high -> 3 (err), medium -> 4 (warning), low -> 5 (notice). MSGID is ``alert``, or
``test`` for ``minerwatch alerts test``. TIMESTAMP and HOSTNAME are the alert's.

UDP cannot confirm delivery; TCP is checked for a peer that hung up before each send.
"""

from __future__ import annotations

import errno
import os
import re
import select
import socket
from urllib.parse import parse_qs, urlsplit

from agent.sinks.base import Record, SinkError

APP_NAME = "minerwatch"
FACILITIES = {
    "kern": 0, "user": 1, "daemon": 3, "auth": 4, "syslog": 5, "authpriv": 10, "security": 13,
    **{f"local{i}": 16 + i for i in range(8)},
}
SEVERITIES = {"critical": 2, "high": 3, "medium": 4, "low": 5}
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)$")


def _printable(value: object, limit: int) -> str:
    text = "".join(ch for ch in str(value or "") if 33 <= ord(ch) <= 126)[:limit]
    return text or "-"


def format_message(record: Record, *, facility: int = 4, procid: int | None = None) -> bytes:
    """The RFC 5424 message for one alert (without transport framing)."""
    alert = record.alert
    mw = alert.get("minerwatch") or {}
    severity = SEVERITIES.get(str(mw.get("severity")), 4)
    ts = str(alert.get("@timestamp", ""))
    ts = ts if _TIMESTAMP.match(ts) else "-"
    host = _printable((alert.get("host") or {}).get("name"), 255)
    msgid = "test" if mw.get("test") else "alert"
    header = f"<{facility * 8 + severity}>1 {ts} {host} {APP_NAME} {procid or os.getpid()} {msgid} - "
    return header.encode("ascii") + record.line


class SyslogSink:
    name = "syslog"

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        self.url, self.transport, self._timeout = url, parts.scheme, timeout
        query = parse_qs(parts.query)
        fac = query.get("facility", ["auth"])[-1]
        if fac not in FACILITIES:
            raise ValueError(f"unknown facility {fac!r} (known: {', '.join(FACILITIES)})")
        self.facility = FACILITIES[fac]
        if self.transport == "unix":
            self._address: object = parts.path
            if not parts.path:
                raise ValueError(f"expected unix:///PATH, got {url!r}")
        elif self.transport in ("udp", "tcp"):
            try:
                host, port = parts.hostname, parts.port or 514
            except ValueError as exc:
                raise ValueError(f"bad port in {url!r}: {exc}") from None
            if not host:
                raise ValueError(f"expected {self.transport}://HOST:PORT, got {url!r}")
            self._address = (host, port)
        else:
            raise ValueError(f"expected udp://, tcp:// or unix://, got {url!r}")
        self._sock: socket.socket | None = None
        self._stream = False  # octet-counting framing

    def describe(self) -> str:
        return f"syslog {self.url.split('?', 1)[0]}"

    def reopen(self) -> None:
        """Connections are re-established on error; nothing to do."""

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(self, record: Record) -> None:
        msg = format_message(record, facility=self.facility)
        try:
            sock = self._connected()
            if self._stream:
                sock.sendall(b"%d " % len(msg) + msg)
            else:
                sock.send(msg)
        except OSError as exc:
            self.close()
            permanent = exc.errno == errno.EMSGSIZE
            raise SinkError(self.name, str(exc.strerror or exc), permanent=permanent) from None

    def _connected(self) -> socket.socket:
        if self._sock is not None and self._stream and _peer_closed(self._sock):
            self.close()
        if self._sock is None:
            self._sock, self._stream = self._connect()
        return self._sock

    def _connect(self) -> tuple[socket.socket, bool]:
        if self.transport == "unix":
            for kind, stream in ((socket.SOCK_DGRAM, False), (socket.SOCK_STREAM, True)):
                sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
                sock.settimeout(self._timeout)
                try:
                    sock.connect(self._address)
                    return sock, stream
                except OSError as exc:
                    sock.close()
                    if exc.errno != errno.EPROTOTYPE:
                        raise
            raise OSError(errno.EPROTOTYPE, "no usable socket type")
        host, port = self._address
        kind = socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=kind)[0]
        sock = socket.socket(family, kind | socket.SOCK_CLOEXEC)
        sock.settimeout(self._timeout)
        try:
            sock.connect(addr)  # UDP too: a refused port then shows up as an error
        except OSError:
            sock.close()
            raise
        return sock, kind == socket.SOCK_STREAM


def _peer_closed(sock: socket.socket) -> bool:
    """True when a stream peer hung up (syslog receivers never send, so readable = gone)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:  # reset or other error: reconnect
        return True
