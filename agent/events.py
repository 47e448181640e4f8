"""Events that collectors hand to the daemon, and the bounded queue they travel through.

Collectors only enqueue; the daemon's worker does the inspection. A full queue drops the
event and counts it: collectors never block.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from dataclasses import dataclass

from agent.model import FileSnapshot, YaraHit


@dataclass(frozen=True, slots=True)
class ExecEvent:
    """A process called exec (from the kernel's process events connector)."""

    pid: int
    tgid: int = 0
    timestamp_ns: int = 0


@dataclass(frozen=True, slots=True)
class ContainerEvent:
    """A container changed state (``start``, ``unpause``, ``exec_start``, ``die``, ``destroy``...)
    or, with action ``resync``, the stream reconnected and every running container must be re-inspected."""

    action: str
    container_id: str = ""


@dataclass(frozen=True, slots=True)
class FileEvent:
    """A file was created, moved into place or closed after writing in a watched directory."""

    path: str
    container_id: str = ""
    root: str = ""  # the container's writable layer (upper dir) the path lies in, "" for host paths


@dataclass(frozen=True, slots=True)
class Reload:
    """SIGHUP: the worker loads config and signatures again (put by the main thread)."""


@dataclass(frozen=True, slots=True)
class FileScanned:
    """The bulk lane inspected a file event: its snapshot (hashes, YARA) for the worker to judge."""

    event: FileEvent
    snap: FileSnapshot


@dataclass(frozen=True, slots=True)
class MemoryScan:
    """The worker asks the bulk lane for a memory scan of one process (identified by its start time)."""

    pid: int
    start_ticks: int


@dataclass(frozen=True, slots=True)
class MemoryScanned:
    """The bulk lane's answer: the YARA hits in that process's memory (empty: nothing, or it could not be read)."""

    pid: int
    start_ticks: int
    hits: tuple[YaraHit, ...] = ()


Event = ExecEvent | ContainerEvent | FileEvent | Reload | FileScanned | MemoryScan | MemoryScanned


class EventQueue:
    """A bounded queue that never blocks producers; drops are counted per event type."""

    def __init__(self, maxsize: int = 10_000) -> None:
        self._q: queue.Queue[Event] = queue.Queue(maxsize)
        self._lock = threading.Lock()
        self.dropped: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()

    def put(self, event: Event) -> bool:
        """Collectors: never blocks; False (counted in ``dropped``) when the queue is full."""
        return self._put(event, None)

    def put_wait(self, event: Event, timeout: float) -> bool:
        """For internal producers that may wait (the bulk lane handing back results): blocks up to ``timeout``."""
        return self._put(event, timeout)

    def _put(self, event: Event, timeout: float | None) -> bool:
        kind = type(event).__name__
        try:
            if timeout is None:
                self._q.put_nowait(event)
            else:
                self._q.put(event, timeout=timeout)
        except queue.Full:
            with self._lock:
                self.dropped[kind] += 1
            return False
        with self._lock:
            self.accepted[kind] += 1
        return True

    def get(self, timeout: float | None = None) -> Event | None:
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def qsize(self) -> int:
        return self._q.qsize()
