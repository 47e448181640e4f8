"""The bulk lane: file inspections and memory scans on a thread of their own.

Hashing a 30 MiB file, YARA over it, or a memory scan of a busy process takes tens to
hundreds of milliseconds; done on the worker thread, every exec and container event waits
behind it (a miner container started during the first walk of 1.6 GB in a watched path was
alerted 2.6-5.3 s late). So the file watcher's events and the worker's memory-scan requests
come here, through a bounded queue of their own (a full queue drops and counts: the watcher
rescans what it dropped, the behaviour model asks again), and results go back to the worker
through its queue (``FileScanned``, ``MemoryScanned``): judging stays with the worker alone.

This thread owns the file inspector (its debounce memory) and its own YARA scanner over the
same compiled rules (yara-python matches release the GIL and are safe across threads). A
reload hands it new rules through its queue (``UseRules``), in order with everything else.

When its queue runs dry after a burst (the first scan of the watched paths, a directory copied in),
it gives the heap it freed back to the kernel (``daemon/memory.trim``) instead of leaving that until
the main thread's next periodic trim: the burst's buffers were the daemon's resident memory otherwise.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

import structlog

from agent.daemon import memory
from agent.events import EventQueue, FileEvent, FileScanned, MemoryScan, MemoryScanned

log = structlog.get_logger("minerwatch.bulk")

RESULT_WAIT_S = 5.0  # how long a result may wait for room in the worker's queue
BUDGET_S = 10.0  # one file (hashes and YARA of up to max_file_mb) or one memory scan should take less
TRIM_AFTER = 32  # items handled since the last trim that make an idle moment worth a malloc_trim


@dataclass(frozen=True, slots=True)
class UseRules:
    """Scan with these from now on (a signature reload)."""

    yara: object  # collectors.yarascan.YaraScanner


class BulkLane:
    def __init__(self, inbox: EventQueue, results: EventQueue, files, yara) -> None:
        """``files``: a ``FileInspector``; ``yara``: a ``YaraScanner`` for memory scans (both owned here)."""
        self.inbox = inbox
        self.results = results
        self.files = files
        self.yara = yara
        self.counts: Counter[str] = Counter()
        self._since_trim = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name="bulk", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, request) -> bool:
        """Queue work (a FileEvent, a MemoryScan, UseRules); False when the lane is full (counted)."""
        return self.inbox.put(request)

    def run(self) -> None:
        while not self._stop.is_set():
            item = self.inbox.get(timeout=2.0)  # idle: one wakeup in 2 s (stop() waits 3 s for the lane)
            if item is None:
                if self._since_trim >= TRIM_AFTER:  # a burst ended: its buffers go back to the kernel
                    self._since_trim = 0
                    memory.trim()
                continue
            self._since_trim += 1
            started = time.monotonic()
            try:
                self.handle(item)
            except Exception as exc:  # crash barrier: one bad file or process never stops the lane
                self.counts["errors"] += 1
                log.exception("bulk_error", item=repr(item)[:200], error=repr(exc))
            if (elapsed := time.monotonic() - started) > BUDGET_S:
                self.counts["over_budget"] += 1
                log.warning("work_over_budget", unit=f"bulk {type(item).__name__}", seconds=round(elapsed, 3),
                            budget=BUDGET_S, subject=repr(item)[:200])

    def handle(self, item) -> None:
        if isinstance(item, FileEvent):
            self.counts["files"] += 1
            snap = self.files.inspect(item)
            if snap is not None:
                self._hand_back(FileScanned(item, snap))
        elif isinstance(item, MemoryScan):
            self.counts["memory_scans"] += 1
            self._hand_back(MemoryScanned(item.pid, item.start_ticks, self.yara.scan_memory(item.pid)))
        elif isinstance(item, UseRules):
            self.yara = item.yara
            self.files.yara_scanner = item.yara

    def _hand_back(self, result) -> None:
        if not self.results.put_wait(result, RESULT_WAIT_S):
            self.counts["results_dropped"] += 1
            log.warning("bulk_result_dropped", result=type(result).__name__)

    def stats(self) -> dict[str, int]:
        """For the metrics: waiting, dropped, done, and the file inspector's and memory scanner's counters."""
        return {"waiting": self.inbox.qsize(), "dropped": sum(self.inbox.dropped.values()), **self.counts}
