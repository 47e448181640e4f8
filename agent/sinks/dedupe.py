"""Alert dedupe: one alert per ``minerwatch.finding_id`` per window, unless it got worse.

A repeat of a finding already alerted within ``window`` seconds is suppressed unless its
severity rose or its response (action, result) changed. The window runs from the last
alert sent for the finding, so a miner that keeps running is reported again once per window.

State is kept in memory (bounded: expired entries go first, then the oldest) and in an
append-only file of admitted alerts that is compacted when it grows, so a restart does not
repeat alerts. The file is not fsynced: a lost line costs one repeated alert, no more.
"""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path
from typing import Callable, NamedTuple

import structlog

log = structlog.get_logger("minerwatch.alerts")


class _Seen(NamedTuple):
    at: float  # wall-clock time of the last alert sent
    severity: int
    response: str


def _key(alert: dict) -> tuple[str, int, str]:
    mw = alert["minerwatch"]
    resp = mw.get("response") or {}
    return str(mw["finding_id"]), int(alert["event"]["severity"]), f"{resp.get('action', '')}/{resp.get('result', '')}"


class Dedupe:
    def __init__(self, path: str | os.PathLike[str] | None, window: float, *,
                 clock: Callable[[], float] = time.time, max_entries: int = 10_000) -> None:
        self.path = Path(path) if path is not None else None
        self.window, self.clock, self.max_entries = window, clock, max_entries
        self.suppressed = 0
        self.write_errors = 0
        self._seen: collections.OrderedDict[str, _Seen] = collections.OrderedDict()
        self._lines = 0  # lines in the file
        self._file = None
        if self.path is not None:
            self._load()
            self._compact()

    def check(self, alert: dict) -> bool:
        """True when ``alert`` should be sent; False (counted in ``suppressed``) for a repeat.
        Test alerts always pass."""
        if alert.get("minerwatch", {}).get("test"):
            return True
        fid, severity, response = _key(alert)
        prev = self._seen.get(fid)
        if prev is not None and 0 <= self.clock() - prev.at < self.window and severity <= prev.severity and response == prev.response:
            self.suppressed += 1
            return False
        return True

    def record(self, alert: dict) -> None:
        """Remember that ``alert`` was sent (call once it is safely spooled)."""
        if alert.get("minerwatch", {}).get("test"):
            return
        fid, severity, response = _key(alert)
        now = self.clock()
        self._remember(fid, _Seen(now, severity, response))
        if self.path is None:
            return
        try:
            if self._file is None:  # an earlier write failed: rewrite everything
                self._compact()
                return
            self._file.write(json.dumps([fid, now, severity, response]) + "\n")
            self._file.flush()
            self._lines += 1
            if self._lines > 2 * max(len(self._seen), 1000):
                self._compact()
        except OSError as exc:  # memory still dedupes; a restart may repeat this alert once
            self.write_errors += 1
            self._drop_file()
            log.warning("alert_dedupe_state_write_failed", path=str(self.path), error=exc.strerror or str(exc))

    def __len__(self) -> int:
        return len(self._seen)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # ------------------------------------------------------------------ internals

    def _remember(self, fid: str, seen: _Seen) -> None:
        self._seen[fid] = seen
        self._seen.move_to_end(fid)
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)

    def _drop_file(self) -> None:
        """Forget a file whose write failed; the next record rewrites the whole state."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError:  # its buffer cannot be flushed either; _compact rewrites it all
                pass
            self._file = None

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        bad = 0
        for line in raw.splitlines():
            try:
                fid, at, severity, response = json.loads(line)
                self._remember(str(fid), _Seen(float(at), int(severity), str(response)))
            except (ValueError, TypeError):  # a torn last line after a crash, or damage
                bad += 1
        if bad:
            log.warning("alert_dedupe_state_damaged", path=str(self.path), bad_lines=bad)

    def _compact(self) -> None:
        """Rewrite the file with the live entries only (atomic replace)."""
        now = self.clock()
        for fid in [f for f, s in self._seen.items() if not 0 <= now - s.at < self.window]:
            del self._seen[fid]
        if self._file is not None:
            self._file.close()
            self._file = None
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            for fid, s in self._seen.items():
                f.write(json.dumps([fid, s.at, s.severity, s.response]) + "\n")
        os.replace(tmp, self.path)
        self._lines = len(self._seen)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open, closed in close()
