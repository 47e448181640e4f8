"""A one-line status on stderr while a person watches a long command; nothing otherwise.

    with StatusLine(sys.stderr.isatty(), "scanning", lambda stats: f"{stats.files} files") as progress:
        run(progress=progress)       # progress is None when nothing is shown

``describe(value)`` turns what the command reports into the line; the line is redrawn at most
every 0.1 s (a scan reports every file).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

REDRAW_S = 0.1


class StatusLine:
    def __init__(self, enabled: bool, first: str, describe: Callable[[object], str]) -> None:
        self.describe = describe
        self.status = None
        self._last = 0.0
        if enabled:
            from rich.console import (
                Console,  # only on a terminal: rich costs a few MiB to import
            )

            self.status = Console(file=sys.stderr).status(first)

    def __enter__(self) -> Callable[[object], None] | None:
        if self.status is None:
            return None
        self.status.__enter__()
        return self.update

    def update(self, value) -> None:
        now = time.monotonic()
        if now - self._last >= REDRAW_S:
            self._last = now
            self.status.update(self.describe(value))

    def __exit__(self, *exc) -> None:
        if self.status is not None:
            self.status.__exit__(*exc)
