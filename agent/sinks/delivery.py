"""One delivery thread per sink: spool -> sink, in order, at least once, with backoff.

The worker takes its next record from the spool, sends it, and commits it only after the
sink took it. A failed send is retried after an exponential backoff with jitter (half the
delay fixed, half random) until it passes; only a permanent error (the record can never fit
the transport) gives a record up, counted and logged.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass

import structlog

from agent.sinks.base import Record, Sink, SinkError, decode
from agent.sinks.spool import Spool

log = structlog.get_logger("minerwatch.alerts")


@dataclass(slots=True)
class SinkStats:
    delivered: int = 0  # records the sink took
    failed: int = 0  # send attempts that failed
    retried: int = 0  # sends of a record tried before (here, or by a run that was cut short)
    given_up: int = 0  # records dropped after a permanent error
    corrupt: int = 0  # spooled lines that were not a JSON object, skipped

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...)."""
    delay = min(cap, base * 2 ** min(attempt - 1, 30))
    return delay / 2 + rng.random() * delay / 2


class SinkWorker(threading.Thread):
    def __init__(self, sink: Sink, spool: Spool, *, backoff_base: float, backoff_max: float,
                 idle_wait: float = 1.0, rng: random.Random | None = None) -> None:
        super().__init__(name=f"minerwatch-alerts-{sink.name}", daemon=True)
        self.sink, self.spool, self.stats = sink, spool, SinkStats()
        self._base, self._cap, self._idle = backoff_base, backoff_max, idle_wait
        self._rng = rng or random.Random()
        self._draining = threading.Event()  # stop once the spool is empty, or at the next failure
        self._abort = threading.Event()  # stop now (after the send in progress)

    def drain(self) -> None:
        self._draining.set()
        self.spool.wake()

    def abort(self) -> None:
        self._draining.set()
        self._abort.set()
        self.spool.wake()

    def run(self) -> None:
        name, entry, record, attempt = self.sink.name, None, None, 0
        try:
            while not self._abort.is_set():
                if entry is None:
                    entry = self.spool.next(name)
                    if entry is None:
                        if self._draining.is_set():
                            break
                        self.spool.wait(name, self._idle, cancel=self._draining)
                        continue
                    attempt = 0
                    try:
                        record = decode(entry.line)
                    except ValueError as exc:
                        self.stats.corrupt += 1
                        log.error("alert_spool_record_corrupt", sink=name, segment=entry.segment, offset=entry.start, error=str(exc))
                        self.spool.commit(name, entry)
                        entry = None
                        continue
                attempt += 1
                if attempt > 1 or entry.maybe_repeat:
                    self.stats.retried += 1
                outcome = self._send(record, attempt)
                if outcome == "retry":
                    # A failing sink does not hold up a stop: its records stay spooled for the next start.
                    if self._draining.wait(backoff_delay(attempt, self._base, self._cap, self._rng)):
                        break
                    continue
                if outcome == "delivered":
                    self.stats.delivered += 1
                self.spool.commit(name, entry)
                entry = None
        finally:
            if entry is not None:
                self.spool.release(name, entry)
            self.sink.close()

    def _send(self, record: Record, attempt: int) -> str:
        """One attempt: "delivered", "retry" or "give-up"."""
        name = self.sink.name
        try:
            self.sink.send(record)
        except SinkError as exc:
            self.stats.failed += 1
            if exc.permanent:
                self.stats.given_up += 1
                log.error("alert_given_up", sink=name, target=self.sink.describe(), error=exc.message, event_id=_event_id(record))
                return "give-up"
            log.warning("alert_delivery_failed", sink=name, target=self.sink.describe(), error=exc.message, attempt=attempt)
            return "retry"

        except Exception as exc:  # crash barrier: a sink bug must not end delivery; counted, retried
            self.stats.failed += 1
            log.error("alert_sink_crashed", sink=name, error=f"{type(exc).__name__}: {exc}", attempt=attempt)
            return "retry"
        if attempt > 1:
            log.info("alert_delivery_recovered", sink=name, attempts=attempt)
        return "delivered"


def _event_id(record: Record) -> str:
    return str((record.alert.get("event") or {}).get("id", ""))
