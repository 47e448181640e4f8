"""Alerts as JSON lines on standard output, where journald (or a container runtime) collects them."""

from __future__ import annotations

import sys
from typing import TextIO

from agent.sinks.base import Record, SinkError


class StdoutSink:
    name = "stdout"

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def describe(self) -> str:
        return "stdout"

    def send(self, record: Record) -> None:
        stream = self._stream or sys.stdout
        try:
            stream.write(record.line.decode("utf-8") + "\n")
            stream.flush()
        except (OSError, ValueError) as exc:  # broken pipe, closed stream
            raise SinkError(self.name, f"cannot write: {exc}") from None

    def reopen(self) -> None:
        """Nothing to reopen."""

    def close(self) -> None:
        """The stream belongs to the process."""
