"""The sink contract: one method, ``send(record)``, that delivers one alert or raises SinkError.

A sink is used by one thread at a time (its delivery worker, or ``minerwatch alerts test``);
it keeps no queue of its own: the spool is the queue. ``reopen()`` may be called from any
thread (SIGHUP); it only sets a flag that the next ``send`` acts on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from agent.errors import MinerwatchError


class SinkError(MinerwatchError):
    """One delivery attempt failed. ``permanent``: retrying the same record cannot help
    (it is too large for the transport); the worker then gives the record up, counted."""

    exit_code = 1

    def __init__(self, sink: str, message: str, *, permanent: bool = False) -> None:
        self.sink, self.message, self.permanent = sink, message, permanent
        super().__init__(f"{sink}: {message}")


@dataclass(frozen=True, slots=True)
class Record:
    """One alert as it travels to the sinks: the exact JSON line (no newline) and its parse."""

    line: bytes
    alert: dict


def encode(alert: dict) -> bytes:
    """The one serialisation of an alert: compact JSON, UTF-8.

    Non-UTF-8 command lines and paths reach us as lone surrogates; inside a JSON string
    ``backslashreplace`` turns them into ``\\udcXX`` escapes, so the line stays valid JSON.
    """
    text = json.dumps(alert, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "backslashreplace")


def decode(line: bytes) -> Record:
    """A Record from a spooled line; ValueError when the line is not a JSON object."""
    alert = json.loads(line)
    if not isinstance(alert, dict):
        raise ValueError("not a JSON object")
    return Record(line, alert)


def safe_url(url: str) -> str:
    """``scheme://host:port`` of ``url``: what logs and messages may show (paths and query
    strings of webhook URLs often carry tokens)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}" if host else f"{parts.scheme}://{parts.path}"


class Sink(Protocol):
    """What the delivery worker and ``alerts test`` need from a sink."""

    name: str  # "stdout", "file", "syslog", "webhook": also the spool reader's name

    def describe(self) -> str:
        """Where it delivers, safe to print and log (no secrets)."""
        ...

    def send(self, record: Record) -> None:
        """Deliver one alert or raise SinkError."""
        ...

    def reopen(self) -> None:
        """Ask for files/connections to be reopened before the next send (SIGHUP)."""
        ...

    def close(self) -> None:
        ...
