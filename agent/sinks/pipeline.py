"""The alert pipeline the daemon owns: dedupe -> durable spool -> one delivery thread per sink.

    pipeline = AlertPipeline(config)          # ConfigError on a bad [alerts] section
    pipeline.start()
    pipeline.submit(alert.build(finding))     # False: a repeat, suppressed; quick either way
    pipeline.reopen()                         # on SIGHUP (log files)
    pipeline.stats()                          # for the metrics endpoint
    pipeline.stop(timeout=5)                  # delivers what it can, keeps the rest spooled

State lives in ``<state_dir>/alerts`` (0700): ``spool/`` (segments and per-sink positions),
``dedupe.jsonl`` and ``lock`` (one pipeline per state directory).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import structlog

from agent import ocsf
from agent.config import Config
from agent.errors import MinerwatchError
from agent.sinks.base import Sink, encode
from agent.sinks.configured import build_sinks
from agent.sinks.dedupe import Dedupe
from agent.sinks.delivery import SinkWorker
from agent.sinks.spool import Spool

log = structlog.get_logger("minerwatch.alerts")


class SpoolError(MinerwatchError):
    """The alert state directory cannot be used (locked by another agent, unwritable, full)."""


class AlertPipeline:
    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        sinks: Sequence[Sink] | None = None,
        spool_max_bytes: int = 64 << 20,
        spool_segment_bytes: int = 1 << 20,
        fsync: bool = True,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        send_timeout: float = 10.0,
        idle_wait: float = 1.0,
    ) -> None:
        """``clock`` is wall-clock seconds (dedupe windows survive restarts); ``sinks``
        replaces the configured ones (tests); the rest tune the spool and the retries."""
        self.sinks = list(sinks) if sinks is not None else build_sinks(config, timeout=send_timeout)
        self._ocsf = config.alerts.format == "ocsf"
        names = [s.name for s in self.sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique, got {names}")
        state_dir = Path(config.agent.state_dir)
        self.directory = state_dir / "alerts"
        if not state_dir.exists():
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = _lock_directory(self.directory)
        try:
            self.spool = Spool(self.directory / "spool", names, max_bytes=spool_max_bytes,
                               segment_bytes=min(spool_segment_bytes, spool_max_bytes), fsync=fsync)
            self.dedupe = Dedupe(self.directory / "dedupe.jsonl", config.alerts.dedupe_minutes * 60, clock=clock)
        except OSError as exc:
            os.close(self._lock_fd)
            raise SpoolError(f"cannot use {self.directory}: {exc.strerror or exc}") from None
        self._workers = [
            SinkWorker(s, self.spool, backoff_base=backoff_base, backoff_max=backoff_max, idle_wait=idle_wait)
            for s in self.sinks
        ]
        self._submit_lock = threading.Lock()
        self.submitted = 0
        self.spool_errors = 0
        self._started = self._stopped = False

    def __enter__(self) -> "AlertPipeline":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if not self._started:
            self._started = True
            for w in self._workers:
                w.start()
            log.info("alert_pipeline_started", sinks=[s.describe() for s in self.sinks],
                     spool_bytes=self.spool.size_bytes, directory=str(self.directory))
            if not self.sinks:
                log.warning("alert_sinks_none", hint="set stdout, file, syslog or webhook in [alerts]")

    def submit(self, alert: dict) -> bool:
        """Spool ``alert`` for every sink (durably); False when dedupe suppressed it.

        Raises SpoolError when the spool cannot be written (disk full, I/O error).
        """
        # The spool stores what is sent: the ECS alert, or its OCSF Detection Finding ([alerts] format).
        line = encode(ocsf.from_alert(alert) if self._ocsf and not ocsf.is_ocsf(alert) else alert)
        with self._submit_lock:
            if self._stopped:
                raise SpoolError("the alert pipeline is stopped")
            if not self.dedupe.check(alert):
                return False
            if not self.sinks:
                return True  # nowhere to deliver; start() said so
            try:
                self.spool.append(line)
            except OSError as exc:
                self.spool_errors += 1
                log.error("alert_spool_write_failed", error=exc.strerror or str(exc), event_id=str(alert.get("event", {}).get("id")))
                raise SpoolError(f"cannot write the alert spool: {exc.strerror or exc}") from None
            self.dedupe.record(alert)
            self.submitted += 1
        return True

    def reopen(self) -> None:
        """Reopen files on the next write (logrotate's postrotate, SIGHUP)."""
        for s in self.sinks:
            s.reopen()

    def flush(self, timeout: float) -> bool:
        """Wait until every sink has taken everything spooled; False on timeout."""
        deadline = time.monotonic() + timeout
        while not self.spool.idle():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self, timeout: float = 5.0) -> bool:
        """Deliver what can be delivered within ``timeout``, then stop; what is left stays
        spooled for the next start. A sink that is failing stops at once (no retries on the
        way out). True when every sink caught up."""
        with self._submit_lock:
            if self._stopped:
                return True
            self._stopped = True
        deadline = time.monotonic() + timeout
        for w in self._workers:
            w.drain()
        for w in self._workers:
            if w.is_alive():
                w.join(max(0.0, deadline - time.monotonic()))
        for w in self._workers:
            w.abort()
        for w in self._workers:
            if w.is_alive():
                w.join(1.0)  # a send in progress ends within the sink's own timeout
        drained = self.spool.idle()
        stuck = [w.sink.name for w in self._workers if w.is_alive()]
        if stuck:
            log.warning("alert_sinks_still_sending", sinks=stuck)
        log.info("alert_pipeline_stopped", drained=drained, spool_bytes=self.spool.size_bytes)
        if not stuck:
            self.spool.close()
        self.dedupe.close()
        os.close(self._lock_fd)
        return drained

    def stats(self) -> dict:
        """Counters for metrics (since this start): submitted, suppressed, spool_bytes, dropped,
        torn_skipped, spool_errors, and per sink delivered, failed, retried, given_up, corrupt, dropped,
        lag_bytes (and rewritten for the file sink)."""
        sinks = {}
        for w in self._workers:
            name = w.sink.name
            sinks[name] = {**w.stats.as_dict(), "dropped": self.spool.reader_dropped(name), "lag_bytes": self.spool.lag_bytes(name)}
            if hasattr(w.sink, "rewritten"):  # the file sink's copytruncate repeats
                sinks[name]["rewritten"] = w.sink.rewritten
        return {
            "submitted": self.submitted,
            "suppressed": self.dedupe.suppressed,
            "spool_bytes": self.spool.size_bytes,
            "dropped": self.spool.dropped,
            "torn_skipped": self.spool.skipped,
            "spool_errors": self.spool_errors,
            "sinks": sinks,
        }


def _lock_directory(directory: Path) -> int:
    """Create ``directory`` (0700) and hold its lock; SpoolError when another agent holds it."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SpoolError(f"cannot use {directory}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolError(f"{directory} is in use by another minerwatch process") from None
    return fd
