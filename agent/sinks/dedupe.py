"""Alert dedupe: one alert per ``minerwatch.finding_id`` (an incident) per window, unless it grew.

A repeat of an incident already alerted within ``window`` seconds is suppressed unless its
severity rose, its response (action, result) changed, or it gained something the SOC has not
been told: a new kind of subject (the file now runs as a process, a new process, a container),
a new signal kind (a pool connection, a memory YARA hit), a new peer, or new content of its file
(another sha256: a file inspected as it was being written, then again when it was closed, is reported
with its final hash; more than ``MAX_PROCESS_FACETS`` contents of one incident are no news). The window runs from
the last alert sent, so a miner that keeps running is reported again once per window.

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


MAX_PROCESS_FACETS = 16  # distinct PIDs of one incident alerted for; more are summed up in the next alert


class _Seen(NamedTuple):
    at: float  # wall-clock time of the last alert sent
    severity: int
    response: str
    facets: frozenset = frozenset()  # what the SOC has been told of this incident


def _key(alert: dict) -> tuple[str, int, str]:
    mw = alert["minerwatch"]
    resp = mw.get("response") or {}
    return str(mw["finding_id"]), int(alert["event"]["severity"]), f"{resp.get('action', '')}/{resp.get('result', '')}"


def facets(alert: dict) -> frozenset:
    """What an alert tells: its kinds of subject, its process, its signal kinds, its peer."""
    out = {f"signal:{e.get('signal', '')}" for e in alert.get("minerwatch", {}).get("evidence", ())}
    for kind in ("file", "process", "container"):
        if kind in alert:
            out.add(kind)
    if (pid := alert.get("process", {}).get("pid")) is not None:
        out.add(f"pid:{pid}")
    if sha256 := alert.get("file", {}).get("hash", {}).get("sha256"):
        out.add(f"sha256:{sha256}")
    if (dest := alert.get("destination")) and (dest.get("ip") or dest.get("domain")):
        out.add(f"peer:{dest.get('ip') or dest.get('domain')}:{dest.get('port', '')}")
    return frozenset(out)


def _news(new: frozenset, seen: frozenset) -> frozenset:
    """Facets not told yet; past MAX_PROCESS_FACETS PIDs (or file contents), another one alone is no news."""
    fresh = new - seen
    for prefix in ("pid:", "sha256:"):
        if sum(1 for f in seen if f.startswith(prefix)) >= MAX_PROCESS_FACETS:
            fresh = frozenset(f for f in fresh if not f.startswith(prefix))
    return fresh


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
        if (prev is not None and 0 <= self.clock() - prev.at < self.window and severity <= prev.severity
                and response == prev.response and not _news(facets(alert), prev.facets)):
            self.suppressed += 1
            return False
        return True

    def record(self, alert: dict) -> None:
        """Remember that ``alert`` was sent (call once it is safely spooled)."""
        if alert.get("minerwatch", {}).get("test"):
            return
        fid, severity, response = _key(alert)
        now = self.clock()
        prev = self._seen.get(fid)
        told = facets(alert) | (prev.facets if prev is not None and 0 <= now - prev.at < self.window else frozenset())
        self._remember(fid, _Seen(now, severity, response, told))
        if self.path is None:
            return
        try:
            if self._file is None:  # an earlier write failed: rewrite everything
                self._compact()
                return
            self._file.write(json.dumps([fid, now, severity, response, sorted(told)]) + "\n")
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
                fid, at, severity, response, *rest = json.loads(line)  # older lines have no facets
                told = frozenset(str(f) for f in rest[0]) if rest else frozenset()
                self._remember(str(fid), _Seen(float(at), int(severity), str(response), told))
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
                f.write(json.dumps([fid, s.at, s.severity, s.response, sorted(s.facets)]) + "\n")
        os.replace(tmp, self.path)
        self._lines = len(self._seen)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open, closed in close()
