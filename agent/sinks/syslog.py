"""Alerts as RFC 5424 syslog messages over UDP, TCP (RFC 6587 octet counting) or a unix socket.

    <PRI>1 TIMESTAMP HOSTNAME minerwatch PROCID MSGID - {"@timestamp":...alert JSON...}

PRI = facility * 8 + severity; the facility is ``auth`` (4) unless the URL says otherwise
(``udp://127.0.0.1:514?facility=local0``); the severity comes from the alert: critical -> 2
(crit), high -> 3 (err), medium -> 4 (warning), low -> 5 (notice). MSGID is ``alert``, or
``test`` for ``minerwatch alerts test``. TIMESTAMP and HOSTNAME are the alert's.

UDP cannot confirm delivery; TCP is checked for a peer that hung up before each send.

Size: a message longer than the transport's limit is never dropped, it is shrunk to fit and
sent. The limit is ``?max_bytes=N`` in the URL (at least 480, what RFC 5424 says every
receiver must accept; 2048 is what it says they should), by default 8 KiB for udp and unix
(one datagram, rsyslog's default maxMessageSize) and 64 KiB for tcp; a UDP datagram is at
most 65507 bytes. To fit, the alert is cut further (``agent.alert.bounded``: still valid
JSON, the cut fields named in ``minerwatch.truncated``); when even that is too long, only its
identifying fields are kept (time, event id, severity, rule, host, finding id, pid, container
id, with ``"*"`` in ``minerwatch.truncated``); and below that the JSON text itself is cut at
the limit and ends in ``…``. A datagram the kernel still refuses as too long (EMSGSIZE) is
sent again at 2048, then at 480 bytes.
"""

from __future__ import annotations

import errno
import os
import re
import select
import socket
from urllib.parse import parse_qs, urlsplit

from agent.alert import bounded
from agent.sinks.base import Record, SinkError, encode

APP_NAME = "minerwatch"
MIN_MESSAGE = 480  # RFC 5424 6.1: receivers MUST accept this much
SHOULD_ACCEPT = 2048  # ... and SHOULD accept this much
DEFAULT_MAX = {"udp": 8 << 10, "unix": 8 << 10, "tcp": 64 << 10}
MAX_DATAGRAM = 65507  # UDP over IPv4: 65535 - 8 (UDP header) - 20 (IP header)
MARK = "\u2026".encode("utf-8")
# What is left of an alert that does not fit even once bounded: enough to find it elsewhere.
# (What the alert schema requires, and the process and container ids.)
_ESSENTIAL = {
    "@timestamp": None, "message": None,
    "event": ("kind", "id", "category", "action", "severity"),
    "rule": ("name",), "threat": ("framework", "technique"), "host": ("name",), "agent": None,
    "minerwatch": ("severity", "score", "finding_id", "test", "evidence", "response"),
    "process": ("pid",), "container": ("id",),
}
FACILITIES = {
    "kern": 0, "user": 1, "daemon": 3, "auth": 4, "syslog": 5, "authpriv": 10, "security": 13,
    **{f"local{i}": 16 + i for i in range(8)},
}
SEVERITIES = {"critical": 2, "high": 3, "medium": 4, "low": 5}
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)$")


def _printable(value: object, limit: int) -> str:
    text = "".join(ch for ch in str(value or "") if 33 <= ord(ch) <= 126)[:limit]
    return text or "-"


def format_message(record: Record, *, facility: int = 4, procid: int | None = None,
                   max_bytes: int | None = None) -> bytes:
    """The RFC 5424 message for one alert (without transport framing), at most ``max_bytes`` long."""
    alert = record.alert
    mw = alert.get("minerwatch") or {}
    severity = SEVERITIES.get(str(mw.get("severity")), 4)
    ts = str(alert.get("@timestamp", ""))
    ts = ts if _TIMESTAMP.match(ts) else "-"
    host = _printable((alert.get("host") or {}).get("name"), 255)
    msgid = "test" if mw.get("test") else "alert"
    header = f"<{facility * 8 + severity}>1 {ts} {host} {APP_NAME} {procid or os.getpid()} {msgid} - ".encode("ascii")
    body = record.line
    if max_bytes is not None and len(header) + len(body) > max_bytes:
        body = shrink(alert, max_bytes - len(header))
    return header + body


def _essential(alert: dict) -> dict:
    out: dict = {}
    for key, keep in _ESSENTIAL.items():
        if key not in alert:
            continue
        value = alert[key]
        out[key] = {k: value[k] for k in keep if k in value} if keep and isinstance(value, dict) else value
    mw = out.setdefault("minerwatch", {})
    mw["evidence"] = [e for e in (mw.get("evidence") or [])[:1]]  # the schema wants one at least
    mw["truncated"] = ["*"]
    return out


def shrink(alert: dict, room: int) -> bytes:
    """The alert's JSON in at most ``room`` bytes (see the module doc for how)."""
    line = encode(bounded(alert, room))
    if len(line) <= room:
        return line
    line = encode(bounded(_essential(alert), room))
    if len(line) <= room:
        return line
    cut = line[:max(0, room - len(MARK))]
    return cut.decode("utf-8", "ignore").encode("utf-8") + MARK  # never half a character


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
        self.max_bytes = _max_bytes(self.transport, query.get("max_bytes", [""])[-1])
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
        limits = [self.max_bytes] + [n for n in (SHOULD_ACCEPT, MIN_MESSAGE) if n < self.max_bytes]
        for n, limit in enumerate(limits):
            msg = format_message(record, facility=self.facility, max_bytes=limit)
            try:
                sock = self._connected()
                if self._stream:
                    sock.sendall(b"%d " % len(msg) + msg)
                else:
                    sock.send(msg)
                return
            except OSError as exc:
                self.close()
                if exc.errno == errno.EMSGSIZE and n + 1 < len(limits):
                    continue  # the path takes less than configured: smaller, same alert
                permanent = exc.errno == errno.EMSGSIZE  # refused even at 480 bytes
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


def _max_bytes(transport: str, given: str) -> int:
    """The message size limit from ``?max_bytes=`` (or the transport's default); ValueError if unusable."""
    if not given:
        return DEFAULT_MAX.get(transport, DEFAULT_MAX["udp"])
    if not given.isdigit():
        raise ValueError(f"max_bytes must be a whole number of bytes, got {given[:20]!r}")
    value = int(given)
    if value < MIN_MESSAGE:
        raise ValueError(f"max_bytes must be at least {MIN_MESSAGE} (what RFC 5424 receivers must accept), got {value}")
    if value > 1 << 20:
        raise ValueError(f"max_bytes must be at most 1048576, got {value}")
    if transport == "udp" and value > MAX_DATAGRAM:
        raise ValueError(f"max_bytes must be at most {MAX_DATAGRAM} for udp (one datagram), got {value}")
    return value


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
